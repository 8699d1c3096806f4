//! Services on a real node: ClusterIP VIPs are OVN load balancers; connections from pods
//! (wired by stacknet-cni) land on the Service's ready endpoints, all of them get traffic, an
//! endpoint that goes away stops getting new connections, and a VIP without endpoints refuses
//! at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use stacknet_engine::objects::{ClusterObject, ObjectKey, Pod, Protocol};
use stacknet_engine::reach::ProbeSpec;
use stacknet_engine::{ClusterIndex, PolicyEngine, manifest};
use stacknet_verify::live::{Connection, Live};

const CLUSTER: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Pod, metadata: {name: client, namespace: shop, uid: u-c, labels: {app: client}}, status: {podIP: 10.1.0.1}}
- {apiVersion: v1, kind: Pod, metadata: {name: far-client, namespace: shop, uid: u-f, labels: {app: client}}, status: {podIP: 10.2.0.1}}
- {apiVersion: v1, kind: Pod, metadata: {name: web-1, namespace: shop, uid: u-1, labels: {app: web}}, status: {podIP: 10.1.0.11}}
- {apiVersion: v1, kind: Pod, metadata: {name: web-2, namespace: shop, uid: u-2, labels: {app: web}}, status: {podIP: 10.1.0.12}}
- {apiVersion: v1, kind: Pod, metadata: {name: web-3, namespace: shop, uid: u-3, labels: {app: web}}, status: {podIP: 10.2.0.13}}
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: shop}
  spec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
- apiVersion: v1
  kind: Service
  metadata: {name: nobody, namespace: shop}
  spec: {clusterIP: 10.96.0.11, selector: {app: nothing-has-this}, ports: [{port: 80, targetPort: 8080}]}
"#;

const CONNECTIONS: usize = 60;

fn plugin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_stacknet-cni"))
}

/// Which pod answered each of `n` connections to `vip` from `from`.
async fn spread(live: &Live, from: &ObjectKey, vip: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut answered = BTreeMap::new();
    for _ in 0..n {
        match live.connect(from, vip, Duration::from_secs(2)).await.unwrap() {
            Connection::Answered(who) => *answered.entry(who).or_insert(0) += 1,
            other => panic!("{from} -> {vip}: {other:?}"),
        }
    }
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ip_balances_over_ready_endpoints_and_rejects_when_there_are_none() {
    let mut engine =
        PolicyEngine::from_index(ClusterIndex::from_objects(manifest::parse("c.yaml", CLUSTER).unwrap().objects));
    let mut live = Live::start("svclive", plugin()).await.unwrap();
    live.program(&engine).await.unwrap();
    live.listen(&[ProbeSpec { port: 8080, protocol: Protocol::Tcp }]).await.unwrap();
    let vip: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let client = ObjectKey::new("shop", "client");
    let far = ObjectKey::new("shop", "far-client");

    // Every connection lands on a backend, and every backend gets some (from the client's own
    // switch and from across the router).
    for from in [&client, &far] {
        let got = spread(&live, from, vip, CONNECTIONS).await;
        let backends: Vec<&str> = got.keys().map(String::as_str).collect();
        assert_eq!(backends, ["shop/web-1", "shop/web-2", "shop/web-3"], "{from}: {got:?}");
    }

    // web-3 stops being an endpoint (relabelled: still running, no longer selected): new
    // connections go to the other two only.
    let index = engine.index();
    let mut web3: Pod = index.pod(index.pod_id(&ObjectKey::new("shop", "web-3")).unwrap()).unwrap().clone();
    web3.labels = [("app".to_string(), "retired".to_string())].into_iter().collect();
    engine.apply(ClusterObject::Pod(web3));
    live.program(&engine).await.unwrap();
    let got = spread(&live, &client, vip, CONNECTIONS).await;
    assert_eq!(got.keys().map(String::as_str).collect::<Vec<_>>(), ["shop/web-1", "shop/web-2"], "{got:?}");
    // It is still there, directly.
    let direct = live.connect(&client, "10.2.0.13:8080".parse().unwrap(), Duration::from_secs(2)).await.unwrap();
    assert_eq!(direct, Connection::Answered("shop/web-3".into()));

    // A VIP without endpoints refuses at once (a reset), it does not leave the client waiting.
    for from in [&client, &far] {
        match live.connect(from, "10.96.0.11:80".parse().unwrap(), Duration::from_secs(3)).await.unwrap() {
            Connection::Refused(after) => {
                assert!(after < Duration::from_millis(500), "{from}: refused after {after:?}")
            }
            other => panic!("{from} -> VIP without endpoints: {other:?}"),
        }
    }
    live.shutdown().await.unwrap();
}
