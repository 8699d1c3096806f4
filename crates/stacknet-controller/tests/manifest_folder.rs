//! The controller on a folder of manifests against a real Northbound database: the network
//! follows the files, a restart writes nothing and reassigns nothing, bad files are reported
//! and change nothing, and the HTTP endpoints tell the truth.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use stacknet_controller::manifests::{ManifestSource, SOURCE};
use stacknet_controller::{Controller, ControllerConfig, GatewaySettings, Observed};
use stacknet_engine::{ObjectRef, Reason};
use stacknet_sandbox::Ovn;
use stacknet_testsupport::http::{get, get_blocking};
use tokio::sync::oneshot;

const DEADLINE: Duration = Duration::from_secs(20);

fn nodes_and_pods(pods: usize) -> String {
    spread(pods, 2)
}

/// `pods` pods round-robin over `nodes` nodes, even ones `tier: web`, odd ones `tier: db`.
fn spread(pods: usize, nodes: usize) -> String {
    let mut y = String::from(
        "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: shop}}\n",
    );
    for n in 1..=nodes {
        y.push_str(&format!("- {{apiVersion: v1, kind: Node, metadata: {{name: node-{n}}}}}\n"));
    }
    for i in 0..pods {
        let tier = if i % 2 == 0 { "web" } else { "db" };
        let node = format!("node-{}", i % nodes + 1);
        y.push_str(&format!(
            "- {{apiVersion: v1, kind: Pod, metadata: {{name: p{i}, namespace: shop, uid: u{i}, labels: {{tier: {tier}}}}}, spec: {{nodeName: {node}, containers: [{{name: c, ports: [{{containerPort: 5432, name: pg}}]}}]}}}}\n"
        ));
    }
    y
}

const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db, namespace: shop}\n\
spec:\n  podSelector: {matchLabels: {tier: db}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {tier: web}}}]\n    ports: [{port: pg}]\n";

struct Running {
    observed: Observed,
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(DEADLINE, self.task).await;
    }
}

async fn start(ovn: &Ovn, dir: &Path) -> Running {
    start_with(ovn, dir, |_| {}).await
}

async fn start_with(ovn: &Ovn, dir: &Path, configure: impl FnOnce(&mut ControllerConfig)) -> Running {
    let mut config = ControllerConfig::new("t1", vec![ovn.nb.remote().parse().unwrap()], Some(dir));
    configure(&mut config);
    let controller = Controller::ovn(&config, &[SOURCE]).unwrap();
    let observed = controller.observed();
    let (addr, _http) = controller.serve_http().await.unwrap();
    let source = ManifestSource::new(dir, Duration::from_millis(50), observed.events.clone()).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(source.run(tx));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(controller.run(rx, async move {
        let _ = stopped.await;
    }));
    Running { observed, addr, stop: Some(stop), task }
}

/// A folder holding `files` (name, content) and a controller on it, ready.
async fn ready_on(ovn: &Ovn, files: &[(&str, &str)]) -> (tempfile::TempDir, Running) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let c = start(ovn, dir.path()).await;
    until("ready", || c.observed.health.ready.load(Ordering::SeqCst)).await;
    (dir, c)
}

/// `ovn-nbctl` rows of `table` carrying our cluster id, as name → (column → value).
fn rows(ovn: &Ovn, table: &str, columns: &str) -> BTreeMap<String, Vec<String>> {
    let out = ovn
        .nbctl(&[
            "--format=csv",
            "--data=bare",
            "--no-headings",
            &format!("--columns=name,{columns}"),
            "find",
            table,
            "external_ids:stacknet.io/cluster=t1",
        ])
        .unwrap();
    out.lines()
        .map(|l| {
            let mut f = l.split(',').map(|s| s.trim_matches('"').to_string());
            (f.next().unwrap_or_default(), f.collect())
        })
        .collect()
}

async fn until(what: &str, ready: impl FnMut() -> bool) {
    stacknet_testsupport::until(what, DEADLINE, ready).await
}

/// The status and body of a GET of one of the controller's endpoints.
async fn endpoint(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let a = get(addr, path).await.unwrap_or_else(|| panic!("no answer from {addr}{path}"));
    (a.status, a.body)
}

fn pod_addresses(ovn: &Ovn) -> BTreeMap<String, String> {
    rows(ovn, "Logical_Switch_Port", "addresses")
        .into_iter()
        .filter(|(n, _)| n.contains("_shop_"))
        .map(|(n, v)| (n, v.join(",")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_follows_the_folder_and_a_restart_writes_nothing() {
    let ovn = Ovn::with_northd().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), nodes_and_pods(6)).unwrap();
    let c = start(&ovn, dir.path()).await;
    // The endpoints serve before the loop runs; /healthz turns 200 once it does.
    until("alive", || c.observed.health.alive.load(Ordering::SeqCst)).await;
    assert_eq!(endpoint(c.addr, "/healthz").await.0, 200);

    until("six pod ports", || pod_addresses(&ovn).len() == 6).await;
    until("ready", || c.observed.health.ready.load(Ordering::SeqCst)).await;
    assert_eq!(endpoint(c.addr, "/readyz").await.0, 200);
    // IPAM: node-1 got the first /24, node-2 the second; pods the lowest addresses after the
    // gateway (.1) and the node's management port (.2).
    let addrs = pod_addresses(&ovn);
    assert_eq!(addrs["t1_shop_p0"], "0a:58:0a:f4:00:03 10.244.0.3", "{addrs:?}");
    assert_eq!(addrs["t1_shop_p1"], "0a:58:0a:f4:01:03 10.244.1.3", "{addrs:?}");
    let mgmt =
        ovn.nbctl(&["--bare", "--columns=addresses", "find", "Logical_Switch_Port", "name=t1_mgmt.node-1"]).unwrap();
    assert_eq!(mgmt.trim(), "0a:58:0a:f4:00:02 10.244.0.2");
    let routers = rows(&ovn, "Logical_Router_Port", "networks");
    assert_eq!(routers["t1_rtos_node-1"], ["10.244.0.1/24"]);
    // Each node's switch allows its node both ways; no policy, no other ACL.
    assert_eq!(rows(&ovn, "ACL", "action").len(), 4, "two per node");
    let policy_acls = || {
        let not_nodes = "external_ids:stacknet.io/owner-kind!=Node";
        ovn.nbctl(&["--bare", "--columns=match", "find", "ACL", "external_ids:stacknet.io/cluster=t1", not_nodes])
            .unwrap()
    };
    assert_eq!(policy_acls().trim(), "", "no policy, no ACL");

    // A policy file appears: ACLs follow; removing a pod changes membership, not ACLs.
    std::fs::write(dir.path().join("policy.yaml"), POLICY).unwrap();
    until("the policy's ACLs", || !policy_acls().trim().is_empty()).await;
    let acls = ovn.nbctl(&["--bare", "--columns=_uuid", "find", "ACL"]).unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), nodes_and_pods(4)).unwrap();
    until("four pod ports", || pod_addresses(&ovn).len() == 4).await;
    assert_eq!(ovn.nbctl(&["--bare", "--columns=_uuid", "find", "ACL"]).unwrap(), acls, "ACLs untouched by pod churn");

    // Restart: same folder, nothing to write, nothing reassigned.
    let before = pod_addresses(&ovn);
    c.stop().await;
    let c = start(&ovn, dir.path()).await;
    until("ready after restart", || c.observed.health.ready.load(Ordering::SeqCst)).await;
    let m = &c.observed.metrics;
    assert_eq!(m.transactions.load(Ordering::Relaxed), 0, "a restart with nothing changed writes nothing");
    assert!(m.reconciles_ok.load(Ordering::Relaxed) >= 1);
    assert_eq!(pod_addresses(&ovn), before);
    let (code, text) = endpoint(c.addr, "/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "stacknet_reconcile_duration_seconds_count",
        "stacknet_ovsdb_transactions_total 0",
        "stacknet_queue_depth",
        "stacknet_network_programming_latency_seconds",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }

    // A new pod after the restart gets a fresh address, not one in use.
    std::fs::write(dir.path().join("cluster.yaml"), nodes_and_pods(6)).unwrap();
    until("six pod ports again", || pod_addresses(&ovn).len() == 6).await;
    let after = pod_addresses(&ovn);
    let ips: std::collections::BTreeSet<_> = after.values().collect();
    assert_eq!(ips.len(), 6, "distinct addresses: {after:?}");
    for (k, v) in &before {
        assert_eq!(&after[k], v, "kept");
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_is_reported_and_changes_nothing() {
    let ovn = Ovn::with_northd().unwrap();
    let (dir, c) = ready_on(&ovn, &[("cluster.yaml", &nodes_and_pods(2)), ("policy.yaml", POLICY)]).await;
    let acls = ovn.nbctl(&["--bare", "--columns=_uuid,match", "find", "ACL"]).unwrap();
    let ports = pod_addresses(&ovn);
    let txns = c.observed.metrics.transactions.load(Ordering::Relaxed);

    // Half-written: the policy loses its closing structure; the cluster file gets garbage.
    std::fs::write(dir.path().join("policy.yaml"), &POLICY[..POLICY.len() - 4]).unwrap();
    std::fs::write(
        dir.path().join("cluster.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name, namespace: shop}\n",
    )
    .unwrap();
    until("two InvalidManifest events", || c.observed.events.with_reason(Reason::InvalidManifest).len() == 2).await;
    let ev = c.observed.events.with_reason(Reason::InvalidManifest);
    let cluster =
        ev.iter().find(|e| e.object == ObjectRef::File("cluster.yaml".into())).expect("event on cluster.yaml");
    assert!(
        cluster.message.contains("metadata.name") && cluster.message.contains("previous content stays"),
        "{}",
        cluster.message
    );
    // Nothing may be written for them: no condition to wait on, so a window (the folder is
    // polled every 50 ms, a write would show well within 300 ms).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ovn.nbctl(&["--bare", "--columns=_uuid,match", "find", "ACL"]).unwrap(), acls);
    assert_eq!(pod_addresses(&ovn), ports);
    assert_eq!(c.observed.metrics.transactions.load(Ordering::Relaxed), txns, "nothing written");
    let (_, events) = endpoint(c.addr, "/events").await;
    assert!(events.contains("Warning InvalidManifest file policy.yaml"), "{events}");

    // Fixed: the network follows again.
    std::fs::write(dir.path().join("cluster.yaml"), nodes_and_pods(3)).unwrap();
    std::fs::write(dir.path().join("policy.yaml"), POLICY).unwrap();
    until("three pod ports", || pod_addresses(&ovn).len() == 3).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_coalesce_and_exhaustion_is_an_event() {
    let ovn = Ovn::nb_only().unwrap();
    let (_dir, c) = ready_on(&ovn, &[("cluster.yaml", &nodes_and_pods(1000))]).await;
    // 1,000 pods arrive as 1,000 changes: a handful of transactions.
    let txns = c.observed.metrics.transactions.load(Ordering::Relaxed);
    assert!((1..=3).contains(&txns), "{txns} transactions for a burst of 1,000 pods");
    // 500 pods per node do not fit a /24: the rest are reported, not mis-addressed.
    let ev = c.observed.events.with_reason(Reason::SubnetExhausted);
    assert!(!ev.is_empty());
    assert!(ev[0].message.contains("10.244."), "{}", ev[0].message);
    // A /24 holds 253 addresses past the gateway; one is the node's management port.
    assert_eq!(pod_addresses(&ovn).len(), 2 * 252);
    c.stop().await;

    // The Northbound database unreachable: readiness says so, and so does an event.
    let dir2 = tempfile::tempdir().unwrap();
    std::fs::write(dir2.path().join("cluster.yaml"), nodes_and_pods(2)).unwrap();
    let mut config = ControllerConfig::new("t1", vec!["unix:/nonexistent/nb.sock".parse().unwrap()], Some(dir2.path()));
    config.metrics_addr = "127.0.0.1:0".parse().unwrap();
    let controller = Controller::ovn(&config, &[SOURCE]).unwrap();
    let observed = controller.observed();
    let (addr, _http) = controller.serve_http().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(ManifestSource::new(dir2.path(), Duration::from_millis(50), observed.events.clone()).unwrap().run(tx));
    let task = tokio::spawn(controller.run(rx, std::future::pending()));
    until("an OvnUnreachable event", || !observed.events.with_reason(Reason::OvnUnreachable).is_empty()).await;
    until("/readyz: 503, naming the Northbound database", || {
        get_blocking(addr, "/readyz").is_some_and(|a| a.status == 503 && a.body.contains("Northbound"))
    })
    .await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_a_thousand_pods_writes_nothing_and_deletes_no_acl() {
    let ovn = Ovn::nb_only().unwrap();
    let (dir, c) = ready_on(&ovn, &[("cluster.yaml", &spread(1000, 5)), ("policy.yaml", POLICY)]).await;
    assert!(c.observed.events.all().is_empty(), "{:?}", c.observed.events.all());
    let ports = pod_addresses(&ovn);
    assert_eq!(ports.len(), 1000);
    let acls = ovn.nbctl(&["--bare", "--columns=_uuid", "find", "ACL"]).unwrap();
    assert!(!acls.trim().is_empty());
    c.stop().await;

    let c = start(&ovn, dir.path()).await;
    until("ready after restart", || c.observed.health.ready.load(Ordering::SeqCst)).await;
    assert_eq!(c.observed.metrics.transactions.load(Ordering::Relaxed), 0, "NB writes after a restart");
    assert_eq!(ovn.nbctl(&["--bare", "--columns=_uuid", "find", "ACL"]).unwrap(), acls, "ACLs deleted or re-created");
    assert_eq!(pod_addresses(&ovn), ports);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_on_a_node_switch_keeps_its_address_and_its_port() {
    let ovn = Ovn::nb_only().unwrap();
    let (dir, c) = ready_on(&ovn, &[("cluster.yaml", &nodes_and_pods(0))]).await;
    // An operator plugs a VM into node-1's switch, on the address IPAM would hand out next.
    ovn.nbctl(&["lsp-add", "t1_node-1", "vm-db", "--", "lsp-set-addresses", "vm-db", "0a:00:00:00:00:99 10.244.0.3"])
        .unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), nodes_and_pods(2)).unwrap();
    until("two pod ports", || pod_addresses(&ovn).len() == 2).await;
    assert_eq!(pod_addresses(&ovn)["t1_shop_p0"], "0a:58:0a:f4:00:04 10.244.0.4");
    let ports = ovn.nbctl(&["--bare", "--columns=ports", "find", "Logical_Switch", "name=t1_node-1"]).unwrap();
    let vm = ovn.nbctl(&["--bare", "--columns=_uuid", "find", "Logical_Switch_Port", "name=vm-db"]).unwrap();
    assert!(ports.contains(vm.trim()), "the VM's port left the switch");
    c.stop().await;
}

const UPLINKS: &str = "apiVersion: v1\nkind: List\nitems:\n\
- {apiVersion: v1, kind: Node, metadata: {name: node-1}, status: {addresses: [{type: InternalIP, address: 172.30.0.11}]}}\n\
- {apiVersion: v1, kind: Node, metadata: {name: node-2}, status: {addresses: [{type: InternalIP, address: 192.168.5.5}]}}\n\
- {apiVersion: v1, kind: Node, metadata: {name: node-3}, status: {addresses: [{type: InternalIP, address: 172.30.0.13}]}}\n\
- {apiVersion: v1, kind: Service, metadata: {name: web, namespace: shop}, spec: {type: LoadBalancer, clusterIP: 10.96.0.50, ports: [{port: 80, nodePort: 30080}]}}\n\
- {apiVersion: v1, kind: Pod, metadata: {name: w, namespace: shop, uid: uid-w, labels: {app: web}}, spec: {nodeName: node-1}}\n\
- {apiVersion: v1, kind: Service, metadata: {name: local, namespace: shop}, spec: {type: NodePort, clusterIP: 10.96.0.51, selector: {app: web},\n\
   externalTrafficPolicy: Local, internalTrafficPolicy: Local, sessionAffinity: ClientIP, ports: [{port: 81, targetPort: 8080, nodePort: 30081}]}}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_routers_follow_the_nodes_uplinks_and_keep_their_join_addresses() {
    let ovn = Ovn::nb_only().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("nodes.yaml"), UPLINKS).unwrap();
    let gateways = |c: &mut ControllerConfig| {
        c.gateways = Some(GatewaySettings {
            external: "172.30.0.0/24".parse().unwrap(),
            next_hop: Some("172.30.0.1".parse().unwrap()),
            join: "100.64.0.0/16".parse().unwrap(),
            snat: true,
            physnet: "external".into(),
            lb_pools: vec!["172.30.0.200/29".parse().unwrap()],
        })
    };
    let c = start_with(&ovn, dir.path(), gateways).await;
    until("ready", || c.observed.health.ready.load(Ordering::SeqCst)).await;
    let routers = rows(&ovn, "Logical_Router", "options");
    assert_eq!(routers.keys().collect::<Vec<_>>(), ["t1_gr.node-1", "t1_gr.node-3", "t1_router"]);
    assert_eq!(routers["t1_gr.node-1"], ["chassis=node-1"]);
    let joins = rows(&ovn, "Logical_Router_Port", "networks");
    assert_eq!(joins["t1_gtoj.node-1"], ["100.64.0.2/16"]);
    assert_eq!(joins["t1_gtoj.node-3"], ["100.64.0.3/16"]);
    assert_eq!(joins["t1_gtoe.node-1"], ["172.30.0.11/24"]);
    assert_eq!(joins["t1_rtoj"], ["100.64.0.1/16"]);
    let nat = ovn.nbctl(&["--bare", "--columns=external_ip", "find", "NAT", "logical_ip=\"10.244.0.0/16\""]).unwrap();
    let mut nat: Vec<&str> = nat.split_whitespace().collect();
    nat.sort();
    assert_eq!(nat, ["172.30.0.11", "172.30.0.13"], "pods leave as their node's address");
    // node-2 has no address on the external network: an Event, no gateway router.
    let ev = c.observed.events.with_reason(Reason::NoGateway);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].object, ObjectRef::node("node-2"));
    assert!(ev[0].message.contains("192.168.5.5"), "{}", ev[0].message);
    // The LoadBalancer Service: the pool's first address, and a NodePort on each node's address.
    let lbs = rows(&ovn, "Load_Balancer", "vips");
    assert_eq!(lbs["t1_ext_shop_web_tcp"], ["172.30.0.201:80="], "{lbs:?}");
    assert_eq!(lbs["t1_np_shop_web_tcp"], ["172.30.0.11:30080= 172.30.0.13:30080="], "{lbs:?}");
    // externalTrafficPolicy Local: only node-1 (w's) forwards; internalTrafficPolicy Local:
    // the cluster IP per node, w on node-1's only; pods dial the NodePorts on any node.
    assert_eq!(lbs["t1_np_shop_local_tcp"], ["172.30.0.11:30081=10.244.0.3:8080"], "{lbs:?}");
    assert_eq!(lbs["t1_shop_local_tcp.node-1"], ["10.96.0.51:81=10.244.0.3:8080"], "{lbs:?}");
    assert_eq!(lbs["t1_shop_local_tcp.node-3"], ["10.96.0.51:81="], "{lbs:?}");
    assert_eq!(
        lbs["t1_shop_local_tcp"],
        ["172.30.0.11:30081=10.244.0.3:8080 172.30.0.13:30081=10.244.0.3:8080"],
        "{lbs:?}"
    );
    c.stop().await;

    // A restart writes nothing; then node-1 goes: its router goes, node-3 keeps its address.
    let c = start_with(&ovn, dir.path(), gateways).await;
    until("ready after restart", || c.observed.health.ready.load(Ordering::SeqCst)).await;
    assert_eq!(c.observed.metrics.transactions.load(Ordering::Relaxed), 0, "NB writes after a restart");
    let without_1: String = UPLINKS.lines().filter(|l| !l.contains("node-1")).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.path().join("nodes.yaml"), without_1).unwrap();
    until("node-1's gateway router gone", || !rows(&ovn, "Logical_Router", "options").contains_key("t1_gr.node-1"))
        .await;
    assert_eq!(rows(&ovn, "Logical_Router_Port", "networks")["t1_gtoj.node-3"], ["100.64.0.3/16"]);
    let nat = ovn.nbctl(&["--bare", "--columns=external_ip", "find", "NAT", "logical_ip=\"10.244.0.0/16\""]).unwrap();
    assert_eq!(nat.trim(), "172.30.0.13");
    c.stop().await;
}
