//! The Kubernetes source against a fake API server that speaks the real list/watch protocol
//! ([`stacknet_testsupport::kubeapi`]: k8s-openapi JSON, resourceVersions, chunked watch
//! streams, bookmarks, 410 Gone, dropped connections), with the controller programming a real
//! Northbound database: the index and the network converge through every one of those.
//!
//! `real_cluster_from_kubeconfig_lists_every_kind` lists a real cluster; it needs one
//! (`KUBECONFIG`), so it is ignored unless asked for:
//! `KUBECONFIG=... cargo test -p stacknet-controller --test kube_watch -- --ignored real_cluster_from_kubeconfig`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use stacknet_controller::{Controller, ControllerConfig, kube_source};
use stacknet_engine::Reason;
use stacknet_sandbox::Ovn;
use stacknet_testsupport::kubeapi::ApiServer;

const DEADLINE: Duration = Duration::from_secs(30);

/// Installs Multus's CRDs: until then their paths are 404 Not Found.
fn install_crds(api: &ApiServer) {
    api.register("k8s.cni.cncf.io/v1", "network-attachment-definitions", "NetworkAttachmentDefinition", true);
    api.register("k8s.cni.cncf.io/v1beta1", "multi-networkpolicies", "MultiNetworkPolicy", true);
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "uid": format!("ns-{name}")}})
}

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "uid": format!("node-{name}")}, "spec": {"podCIDR": "10.44.0.0/24"}})
}

fn pod(name: &str, tier: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"), "labels": {"tier": tier}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 5432, "name": "pg"}]}]},
        "status": {"phase": "Running"}})
}

/// An API server holding namespace `shop`, node `n1` and `pods` (name, tier) on it.
async fn shop(pods: &[(&str, &str)]) -> ApiServer {
    let api = ApiServer::start().await;
    api.apply(namespace("shop"));
    api.apply(node("n1"));
    for (name, tier) in pods {
        api.apply(pod(name, tier));
    }
    api
}

fn policy() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "db", "namespace": "shop", "uid": "np-db"},
        "spec": {"podSelector": {"matchLabels": {"tier": "db"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": "web"}}}], "ports": [{"port": "pg"}]}]}})
}

fn pod_ports(ovn: &Ovn) -> Vec<String> {
    let out = ovn
        .nbctl(&["--bare", "--columns=name", "find", "Logical_Switch_Port", "external_ids:stacknet.io/owner-kind=Pod"])
        .unwrap();
    let mut v: Vec<String> = out.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect();
    v.sort();
    v
}

/// The ACLs of policies (not the nodes' own allows).
fn acls(ovn: &Ovn) -> usize {
    let not_nodes = "external_ids:stacknet.io/owner-kind!=Node";
    ovn.nbctl(&["--bare", "--columns=_uuid", "find", "ACL", "external_ids:stacknet.io/cluster=k8s", not_nodes])
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// A controller on `api` as deployed: the watch, Events posted, write-backs patched; runs until
/// the test ends.
fn run_controller(api: &ApiServer, config: &ControllerConfig) -> stacknet_controller::Observed {
    let controller = Controller::ovn(config, &kube_source::sources()).unwrap();
    let observed = controller.observed();
    stacknet_controller::kube_source::install_tls_provider();
    let client = kube::Client::try_from(kube::Config::new(api.url().parse().unwrap())).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(kube_source::run(client.clone(), tx, observed.events.clone()));
    let (sink, published) = tokio::sync::mpsc::unbounded_channel();
    observed.events.set_sink(sink);
    tokio::spawn(kube_source::publish_events(client.clone(), published, "test-replica".into(), None));
    let (annotate, annotations) = tokio::sync::mpsc::unbounded_channel();
    let controller = controller.with_annotations(annotate);
    tokio::spawn(kube_source::write_back(client, annotations));
    tokio::spawn(controller.run(rx, std::future::pending()));
    observed
}

async fn until(what: &str, ready: impl FnMut() -> bool) {
    stacknet_testsupport::until(what, DEADLINE, ready).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_follows_the_watch_through_bookmarks_drops_and_410() {
    let api = shop(&[("a", "web"), ("b", "db")]).await;
    api.apply(policy());

    let ovn = Ovn::nb_only().unwrap();
    let mut config = ControllerConfig::new("k8s", vec![ovn.nb.remote().parse().unwrap()], None);
    config.gateways = Some(stacknet_controller::GatewaySettings {
        external: "172.30.0.0/24".parse().unwrap(),
        next_hop: Some("172.30.0.1".parse().unwrap()),
        join: "100.64.0.0/16".parse().unwrap(),
        snat: true,
        physnet: "external".into(),
        lb_pools: vec!["172.30.0.200/29".parse().unwrap()],
    });
    let observed = run_controller(&api, &config);

    // The lists: the network as the cluster is.
    until("ready", || observed.health.ready.load(Ordering::SeqCst)).await;
    assert_eq!(pod_ports(&ovn), ["k8s_shop_a", "k8s_shop_b"]);
    assert!(acls(&ovn) > 0, "the policy's ACLs");
    let addresses =
        ovn.nbctl(&["--bare", "--columns=addresses", "find", "Logical_Switch_Port", "name=k8s_shop_a"]).unwrap();
    assert!(addresses.contains("10.44.0.3"), "the node's podCIDR (.1 router, .2 management): {addresses}");

    // Each pod's network is written back as its annotation, once (the echo changes nothing).
    let annotation = |name: &str| {
        api.get("v1", "pods", "shop", name)
            .and_then(|o| o["metadata"]["annotations"]["stacknet.io/network"].as_str().map(str::to_string))
    };
    until("pod a's annotation", || annotation("a").is_some()).await;
    let net: Value = serde_json::from_str(&annotation("a").unwrap()).unwrap();
    assert_eq!(net["ips"], json!(["10.44.0.3/24"]));
    assert_eq!(net["gateways"], json!(["10.44.0.1"]));
    assert_eq!(net["logicalPort"], "k8s_shop_a");
    assert_eq!(net["mac"], "0a:58:0a:2c:00:03");
    until("pod b's annotation", || annotation("b").is_some()).await;
    // The echo of a patch must not cause another: nothing to wait on, so a window in which
    // a loop would have patched again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut patches = api.patches();
    patches.sort();
    assert_eq!(patches, ["pods shop/a", "pods shop/b"], "one patch per pod, no loop");

    // A LoadBalancer Service of ours gets an address from --lb-pool (its first host) in its
    // status, once; one
    // of another loadBalancerClass is left alone.
    let lb = |name: &str, class: Option<&str>| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop", "uid": format!("svc-{name}")},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.20", "loadBalancerClass": class, "selector": {"tier": "web"},
                     "ports": [{"port": 80, "nodePort": 30080}]}})
    };
    api.apply(lb("front", None));
    api.apply(lb("metallb", Some("metallb.io/metallb")));
    let ingress =
        |name: &str| api.get("v1", "services", "shop", name).map(|o| o["status"]["loadBalancer"]["ingress"].clone());
    until("shop/front's load balancer address", || {
        ingress("front") == Some(json!([{"ip": "172.30.0.201", "ipMode": "VIP"}]))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let patches = api.patches();
    assert_eq!(
        patches.iter().filter(|p| p.starts_with("status:")).collect::<Vec<_>>(),
        ["status:services shop/front"],
        "once, ours only"
    );
    assert_eq!(ingress("metallb"), Some(Value::Null), "another class's Service is not ours to write");
    api.delete("v1", "services", "shop", "front").expect("shop/front");
    api.delete("v1", "services", "shop", "metallb").expect("shop/metallb");

    // The watch: a new pod.
    api.apply(pod("c", "web"));
    until("pod c", || pod_ports(&ovn).len() == 3).await;

    // A bookmark, then a dropped connection; a pod created meanwhile arrives on the resumed
    // watch, which starts from the bookmark, not from the start.
    let bookmark = api.bookmark();
    until("the bookmark on the pods' watch", || {
        api.bookmarks().iter().any(|(r, rv)| r == "v1/pods" && *rv >= bookmark)
    })
    .await;
    api.drop_watches();
    api.apply(pod("d", "web"));
    until("pod d after the reconnect", || pod_ports(&ovn).len() == 4).await;
    let pod_watches: Vec<u64> =
        api.watches().iter().filter(|w| w.resource == "v1/pods").map(|w| w.resource_version.unwrap_or(0)).collect();
    assert!(
        pod_watches.len() >= 2 && *pod_watches.last().unwrap() >= bookmark,
        "resumed from {pod_watches:?}, bookmark {bookmark}"
    );
    let lists_before = api.lists().len();

    // History compacted while the watch was down, and a pod deleted then: the watch gets
    // 410 Gone, the watcher relists, and the relist's absence of the pod deletes its port.
    api.delete_and_compact("v1", "pods", "shop", "a").expect("pod a");
    api.drop_watches();
    until("pod a gone after the relist", || pod_ports(&ovn) == ["k8s_shop_b", "k8s_shop_c", "k8s_shop_d"]).await;
    assert!(api.lists().len() > lists_before, "a relist happened");

    // Policies follow too; an invalid object is an event, not a crash.
    api.delete("networking.k8s.io/v1", "networkpolicies", "shop", "db").expect("policy shop/db");
    until("the policy's ACLs gone", || acls(&ovn) == 0).await;
    let mut bad = pod("e", "web");
    bad["metadata"]["labels"] = json!({"tier": "not a valid label value!"});
    api.apply(bad);
    until("an InvalidObject event", || !observed.events.with_reason(Reason::InvalidObject).is_empty()).await;
    let e = &observed.events.with_reason(Reason::InvalidObject)[0];
    assert_eq!(e.object.to_string(), "Pod shop/e");
    assert!(e.message.contains("metadata.labels.tier"), "{}", e.message);
    // ... posted to the API server as an Event on that pod.
    let invalid = || api.events().into_iter().find(|e| e["reason"] == "InvalidObject");
    until("the Event posted", || invalid().is_some()).await;
    let posted = invalid().unwrap();
    assert_eq!(posted["regarding"]["kind"], "Pod");
    assert_eq!(posted["regarding"]["namespace"], "shop");
    assert_eq!(posted["regarding"]["name"], "e");
    assert_eq!(posted["reason"], "InvalidObject");
    assert_eq!(posted["type"], "Warning");
    assert_eq!(posted["reportingController"], "stacknet.io/controller");
    assert_eq!(pod_ports(&ovn).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: KUBECONFIG"]
async fn real_cluster_from_kubeconfig_lists_every_kind() {
    stacknet_controller::kube_source::install_tls_provider();
    let client = kube::Client::try_default().await.expect("a client from KUBECONFIG");
    let (tx, mut rx) = tokio::sync::mpsc::channel(100_000);
    let events = Arc::new(stacknet_controller::events::Events::new());
    tokio::spawn(kube_source::run(client, tx, events));
    let mut synced = std::collections::BTreeSet::new();
    let mut namespaces = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while synced.len() < kube_source::sources().len() {
        let c = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("every kind listed within 60 s")
            .expect("source alive");
        match c {
            stacknet_controller::Change::Synced(s) => {
                synced.insert(s);
            }
            stacknet_controller::Change::Apply(stacknet_engine::objects::ClusterObject::Namespace(_)) => {
                namespaces += 1
            }
            _ => {}
        }
    }
    assert!(namespaces > 0, "a real cluster has namespaces");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_writes_and_the_standby_takes_over() {
    use stacknet_controller::leader::{self, LeaseConfig};
    let api = shop(&[("a", "web")]).await;
    let ovn = Ovn::nb_only().unwrap();

    struct Replica {
        observed: stacknet_controller::Observed,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    }
    let start = |identity: &str| {
        let config = ControllerConfig::new("k8s", vec![ovn.nb.remote().parse().unwrap()], None);
        stacknet_controller::kube_source::install_tls_provider();
        let client = kube::Client::try_from(kube::Config::new(api.url().parse().unwrap())).unwrap();
        let mut cfg = LeaseConfig::new("stacknet-system", identity);
        cfg.duration = Duration::from_secs(2);
        cfg.renew = Duration::from_millis(200);
        let (leading, rx) = tokio::sync::watch::channel(false);
        let controller = Controller::ovn(&config, &kube_source::sources()).unwrap().with_leader(rx);
        let observed = controller.observed();
        let (tx, changes) = tokio::sync::mpsc::channel(1024);
        let tasks = vec![
            tokio::spawn(kube_source::run(client.clone(), tx, observed.events.clone())),
            tokio::spawn(leader::run(client, cfg, leading)),
            tokio::spawn(controller.run(changes, std::future::pending())),
        ];
        Replica { observed, tasks }
    };
    let a = start("replica-a");
    let b = start("replica-b");
    until("one pod port", || pod_ports(&ovn).len() == 1).await;
    let leader_of = |r: &Replica| r.observed.metrics.leader.load(Ordering::Relaxed);
    until("a leader", || leader_of(&a) + leader_of(&b) > 0).await;
    // The standby must not lead nor write: a window of three of its tries at the Lease
    // (every 200 ms).
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(leader_of(&a) + leader_of(&b), 1, "exactly one leader");
    let (leader, standby) = if leader_of(&a) == 1 { (a, b) } else { (b, a) };
    assert!(leader.observed.metrics.transactions.load(Ordering::Relaxed) > 0);
    assert_eq!(standby.observed.metrics.transactions.load(Ordering::Relaxed), 0, "the standby wrote");
    assert!(standby.observed.health.ready.load(Ordering::SeqCst), "a standby is ready (it serves as soon as it leads)");

    // The leader dies without a word; within the lease's duration the standby writes.
    for t in &leader.tasks {
        t.abort();
    }
    api.apply(pod("b", "db"));
    until("pod b, written by the former standby", || pod_ports(&ovn).len() == 2).await;
    assert_eq!(leader_of(&standby), 1);
    assert!(standby.observed.metrics.transactions.load(Ordering::Relaxed) > 0);
    let lease = api.leases()["stacknet-system/stacknet-controller"].clone();
    assert_eq!(lease["spec"]["leaseTransitions"], 1, "{lease}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_networks_from_the_api_with_their_network_status_and_events() {
    let api = shop(&[]).await;
    install_crds(&api);
    let nad = |name: &str, config: &str| {
        json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": "shop", "uid": format!("nad-{name}")}, "spec": {"config": config}})
    };
    api.apply(nad("data", r#"{"cniVersion": "1.1.0", "name": "data", "type": "stacknet-cni", "topology": "layer2", "subnets": "10.100.0.0/24"}"#));
    api.apply(nad("bad", r#"{"name": "bad", "type": "stacknet-cni", "topology": "layer2", "vlanID": 7}"#));
    let with_networks = |name: &str, networks: &str| {
        let mut p = pod(name, "nf");
        p["metadata"]["annotations"] = json!({"k8s.v1.cni.cncf.io/networks": networks});
        p
    };
    api.apply(with_networks("nf", "data"));
    api.apply(with_networks("lost", "missing"));
    api.apply(json!({"apiVersion": "k8s.cni.cncf.io/v1beta1", "kind": "MultiNetworkPolicy",
        "metadata": {"name": "iso", "namespace": "shop", "uid": "mnp-iso", "annotations": {"k8s.v1.cni.cncf.io/policy-for": "data"}},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}));

    let ovn = Ovn::nb_only().unwrap();
    let config = ControllerConfig::new("k8s", vec![ovn.nb.remote().parse().unwrap()], None);
    run_controller(&api, &config);

    // The data network and nf's port on it; the MultiNetworkPolicy's port group holds it.
    until("nf's port on the data network", || pod_ports(&ovn).contains(&"k8s_shop_nf_net1".to_string())).await;
    let switch = ovn.nbctl(&["--bare", "--columns=name", "find", "Logical_Switch", "name=k8s_net_shop_data"]).unwrap();
    assert_eq!(switch.trim(), "k8s_net_shop_data");
    let groups = ovn
        .nbctl(&["--bare", "--columns=ports", "find", "Port_Group", "external_ids:stacknet.io/owner-kind=Namespace"])
        .unwrap();
    assert!(!groups.trim().is_empty(), "the data network's default deny holds nf's port");

    // nf's network-status, written once with the API.
    let status = || {
        api.get("v1", "pods", "shop", "nf").and_then(|o| {
            o["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"].as_str().map(str::to_string)
        })
    };
    until("nf's network-status", || status().is_some()).await;
    let v: Value = serde_json::from_str(&status().unwrap()).unwrap();
    assert_eq!(v[0]["name"], "stacknet");
    assert_eq!((v[0]["interface"].as_str(), v[0]["default"].as_bool()), (Some("eth0"), Some(true)));
    assert_eq!(v[1]["name"], "shop/data");
    assert_eq!(v[1]["interface"], "net1");
    assert_eq!(v[1]["ips"], json!(["10.100.0.1"]));
    assert_eq!(v[1]["mac"], "0a:58:0a:64:00:01");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let patches: Vec<String> = api.patches().into_iter().filter(|p| p == "pods shop/nf").collect();
    assert_eq!(patches.len(), 2, "its network annotation and its network-status, once each: {patches:?}");

    // The pod selecting a NAD that does not exist, and the NAD that does not parse: Events.
    let posted = |reason: &str| api.events().into_iter().find(|e| e["reason"] == reason);
    until("AttachmentFailed posted", || posted("AttachmentFailed").is_some()).await;
    let e = posted("AttachmentFailed").unwrap();
    assert_eq!((e["regarding"]["kind"].as_str(), e["regarding"]["name"].as_str()), (Some("Pod"), Some("lost")));
    assert!(e["note"].as_str().unwrap().contains("NetworkAttachmentDefinition shop/missing does not exist"), "{e}");
    until("InvalidNetworkAttachment posted", || posted("InvalidNetworkAttachment").is_some()).await;
    let e = posted("InvalidNetworkAttachment").unwrap();
    assert_eq!(e["regarding"]["kind"], "NetworkAttachmentDefinition");
    assert_eq!(e["regarding"]["apiVersion"], "k8s.cni.cncf.io/v1");
    assert!(e["note"].as_str().unwrap().contains("spec.config.vlanID"), "{e}");
    assert!(!pod_ports(&ovn).iter().any(|p| p.starts_with("k8s_shop_lost_")), "nothing half-made for lost");
}
