//! `stacknet controller --backend openstack`'s loop against a real Keystone, Neutron and
//! Octavia on loopback: a follower writes nothing until it leads; the cluster's changes become
//! ports and security groups, each pod's port is written back as its network annotation,
//! pools are kept full, what Octavia's provider cannot do is an Event, a pod that goes takes
//! its port, and a wrong password is an error that does not repeat it.

use std::time::Duration;

use serde_json::Value;
use stacknet_controller::openstack::OpenStackSettings;
use stacknet_controller::{Change, Controller, ControllerConfig, Pace};
use stacknet_engine::Reason;
use stacknet_engine::manifest;
use stacknet_engine::objects::Kind;
use stacknet_engine::objects::ObjectKey;
use stacknet_openstack::{CloudSource, NeutronConfig};
use stacknet_sandbox::OpenStack;
use stacknet_testsupport::openstack::{CLOUD, neutron};

const CLUSTER: &str = "
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: shop, labels: {team: shop}}}
- {apiVersion: v1, kind: Node, metadata: {name: n1}}
- apiVersion: v1
  kind: Pod
  metadata: {name: db, namespace: shop, labels: {app: db}}
  spec: {nodeName: n1, containers: [{name: c, ports: [{containerPort: 5432, name: pg}]}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: app, namespace: shop, labels: {app: app}}
  spec: {nodeName: n1, containers: [{name: c}]}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: db, namespace: shop}
  spec:
    podSelector: {matchLabels: {app: db}}
    ingress: [{from: [{podSelector: {matchLabels: {app: app}}}], ports: [{port: pg}]}]
- apiVersion: v1
  kind: Service
  metadata: {name: db, namespace: shop}
  spec: {clusterIP: 10.96.0.30, sessionAffinity: ClientIP, ports: [{port: 5432}]}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: db-1, namespace: shop, labels: {kubernetes.io/service-name: db}}
  addressType: IPv4
  endpoints: [{addresses: [10.1.0.7], conditions: {ready: true}}]
  ports: [{port: 5432, protocol: TCP}]
";

/// The controller's pods' ports (its cluster's device owner).
fn ports(cloud: &OpenStack) -> Vec<Value> {
    neutron(cloud, "GET", "ports?device_owner=compute:stacknet-ctl", None)["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits for `ready` (Neutron and Octavia take their time).
async fn until(what: &str, ready: impl FnMut() -> bool) {
    stacknet_testsupport::until(what, Duration::from_secs(90), ready).await
}

#[test]
#[ignore = "needs root and the OpenStack packages (.ci/run installs them)"]
fn the_openstack_controller_follows_the_cluster() {
    let cloud = stacknet_testsupport::openstack::start();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        // A wrong password: refused, and not repeated in the error.
        let bad = cloud.dir().join("bad-clouds.yaml");
        let good = std::fs::read_to_string(cloud.clouds_yaml().unwrap()).unwrap();
        std::fs::write(&bad, good.replace(stacknet_sandbox::openstack::ADMIN_PASSWORD, "wrong-horse-battery")).unwrap();
        let settings = |file| OpenStackSettings {
            cloud: CloudSource::Named { cloud: CLOUD.into(), file: Some(file) },
            neutron: NeutronConfig {
                service_cidr: Some("10.96.0.0/12".parse().unwrap()),
                pool_size: 2,
                ..NeutronConfig::new("ctl", vec!["10.0.0.0/12".parse().unwrap()])
            },
        };
        let mut config = ControllerConfig::new("ctl", Vec::new(), None);
        config.pace = Pace::new(Duration::from_millis(50));
        let e =
            Controller::openstack(&config, settings(bad), &["test"]).await.err().expect("a wrong password is refused");
        assert!(!e.to_string().contains("wrong-horse-battery"), "{e}");

        let (lead, leading) = tokio::sync::watch::channel(false);
        let (annotate, mut annotations) = tokio::sync::mpsc::unbounded_channel();
        let controller = Controller::openstack(&config, settings(cloud.clouds_yaml().unwrap()), &["test"])
            .await
            .unwrap()
            .with_leader(leading)
            .with_annotations(annotate);
        let observed = controller.observed();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(controller.run(rx, async move {
            let _ = stopped.await;
        }));
        for o in manifest::parse("cluster.yaml", CLUSTER).unwrap().objects {
            tx.send(Change::Apply(o)).await.unwrap();
        }
        tx.send(Change::Synced("test".into())).await.unwrap();

        // A follower: ready (it holds the cluster), and writes nothing. A leader would have
        // started its reconcile 50 ms after the cluster was synced; a second is the window.
        until("the follower ready", || observed.health.ready.load(std::sync::atomic::Ordering::SeqCst)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(ports(&cloud).is_empty(), "a follower wrote to Neutron");
        assert_eq!(observed.metrics.leader.load(std::sync::atomic::Ordering::Relaxed), 0);
        lead.send(true).unwrap();

        let named = |name: &str| ports(&cloud).iter().any(|p| p["name"] == name);
        until("the pods' ports", || named("shop/db") && named("shop/app")).await;
        let db = ports(&cloud).into_iter().find(|p| p["name"] == "shop/db").unwrap();
        assert_eq!(db["binding:host_id"], "n1");
        assert_eq!(observed.metrics.leader.load(std::sync::atomic::Ordering::Relaxed), 1);
        // The pod's network annotation: its Neutron port's address (with the subnet's prefix
        // length), MAC, gateway and port.
        let mut written: std::collections::BTreeMap<ObjectKey, String> = std::collections::BTreeMap::new();
        until("shop/db's network annotation", || {
            while let Ok(w) = annotations.try_recv() {
                if let stacknet_controller::WriteBack::PodNetwork(key, value) = w {
                    written.insert(key, value);
                }
            }
            written.contains_key(&ObjectKey::new("shop", "db"))
        })
        .await;
        let a: Value = serde_json::from_str(&written[&ObjectKey::new("shop", "db")]).unwrap();
        let ip = db["fixed_ips"][0]["ip_address"].as_str().unwrap();
        assert_eq!(a["ips"], serde_json::json!([format!("{ip}/12")]), "{a}");
        assert_eq!(a["mac"], db["mac_address"], "{a}");
        assert_eq!(a["portId"], db["id"], "{a}");
        assert_eq!(a["gateways"], serde_json::json!(["10.0.0.1"]), "{a}");
        assert!(!db["security_groups"].as_array().unwrap().is_empty(), "{db}");
        until("the Service's unsupported field as an Event", || {
            let db = stacknet_engine::ObjectRef::service(&ObjectKey::new("shop", "db"));
            observed.events.with_reason(Reason::UnsupportedByLoadBalancer).iter().any(|e| e.object == db)
        })
        .await;
        until("node n1's pool full", || ports(&cloud).iter().filter(|p| p["name"] == "stacknet-ctl-pool").count() == 2)
            .await;
        assert!(observed.health.ready.load(std::sync::atomic::Ordering::SeqCst));

        // The app pod goes: its port with it.
        tx.send(Change::Delete(Kind::Pod, ObjectKey::new("shop", "app"))).await.unwrap();
        until("the gone pod's port deleted", || !named("shop/app")).await;
        assert!(named("shop/db"));
        stop.send(()).unwrap();
        run.await.unwrap();
        assert!(!observed.health.alive.load(std::sync::atomic::Ordering::SeqCst));
    });
}
