//! Node ↔ pods, live: two chassis (each node's host network is its chassis's namespace), each
//! node agent keeping its node's management port, pods attached by stacknet-cni. Under a
//! deny-all policy a node still reaches its own pods and its pods reach it (kubelet's probes),
//! while pods and other nodes stay denied; a node reaches pods elsewhere that no policy
//! isolates; pods reach a node's own address through its management port; and a management
//! port someone breaks is repaired by the agent.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use stacknet_engine::{ClusterIndex, PolicyEngine, manifest};
use stacknet_node::agent::AgentConfig;
use stacknet_ovn::{NodeNet, OvnBackend, Topology, build};
use stacknet_sandbox::{Chassis, Netns, Ovn};
use stacknet_testsupport::netns::{serve_in, unique};
use stacknet_testsupport::until;

const CLUSTER: &str = "mgmt";

const PODS: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: x, uid: uid-a}, spec: {nodeName: node-a}, status: {podIP: 10.244.0.3}}
- {apiVersion: v1, kind: Pod, metadata: {name: b, namespace: x, uid: uid-b}, spec: {nodeName: node-b}, status: {podIP: 10.244.1.3}}
- {apiVersion: v1, kind: Pod, metadata: {name: c, namespace: y, uid: uid-c}, spec: {nodeName: node-b}, status: {podIP: 10.244.1.4}}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: deny-all, namespace: x}
  spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
"#;

fn topology() -> Topology {
    let node = |name: &str, i: u8, address: &str| NodeNet {
        name: name.into(),
        subnets: vec![(format!("10.244.{i}.0/24").parse().unwrap(), format!("10.244.{i}.1").parse().unwrap())],
        management: vec![format!("10.244.{i}.2").parse().unwrap()],
        addresses: vec![address.parse().unwrap()],
        join: None,
    };
    Topology {
        cluster: CLUSTER.into(),
        nodes: vec![node("node-a", 0, "192.168.77.1"), node("node-b", 1, "192.168.77.2")],
        nested: Default::default(),
        node_routes: vec!["10.244.0.0/16".parse().unwrap(), "10.96.0.0/12".parse().unwrap()],
        gateways: None,
        exposures: Vec::new(),
        load_balancer_ips: Default::default(),
        multinet: Default::default(),
    }
}

fn agent(chassis: &Chassis, nb: &str, dir: &Path) -> PathBuf {
    let socket = dir.join(format!("{}.sock", chassis.name));
    let config = AgentConfig {
        cluster: CLUSTER.into(),
        host_netns: Some(chassis.netns().path()),
        node: Some(chassis.name.clone()),
        ..AgentConfig::default()
    };
    stacknet_testsupport::netns::spawn_agent(config, &chassis.ovs_remote(), nb, &socket);
    socket
}

fn add(socket: &Path, netns: &Netns, pod: (&str, &str, &str)) {
    let plugin = Path::new(env!("CARGO_BIN_EXE_stacknet-cni"));
    stacknet_testsupport::cni::add(plugin, socket, &unique(pod.1), &netns.path(), pod);
}

fn reaches(netns: &Path, addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().unwrap();
    stacknet_testsupport::netns::connect_from(netns, addr, Duration::from_millis(1500)).is_ok()
}

fn ip(ns: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("ip").args(["-n", ns]).args(args).output().unwrap();
    assert!(out.status.success(), "ip -n {ns} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn configured(ns: &str) -> bool {
    let addr = std::process::Command::new("ip").args(["-n", ns, "-o", "addr", "show", "dev", "sn-mgmt0"]).output();
    let routes = std::process::Command::new("ip").args(["-n", ns, "route", "show", "dev", "sn-mgmt0"]).output();
    let text = |o: std::io::Result<std::process::Output>| o.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let (addr, routes) = (text(addr).unwrap_or_default(), text(routes).unwrap_or_default());
    addr.contains("10.244.") && routes.contains("10.96.0.0/12 via") && routes.contains("10.244.0.0/16 via")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_their_pods_under_deny_all_and_a_broken_management_port_is_repaired() {
    let ovn = Ovn::with_northd().unwrap();
    let sb = ovn.sb_remote().unwrap();
    let a = Chassis::start(ovn.dir(), "node-a", &sb, "172.31.253.1").unwrap();
    let b = Chassis::start(ovn.dir(), "node-b", &sb, "172.31.253.2").unwrap();
    Chassis::connect_underlay(&a, "172.31.253.1", &b, "172.31.253.2").unwrap();
    let (ns_a, ns_b) = (a.netns().name().to_string(), b.netns().name().to_string());
    // Each node's own address, where a host-network process listens.
    ip(&ns_a, &["addr", "add", "192.168.77.1/32", "dev", "lo"]);
    ip(&ns_b, &["addr", "add", "192.168.77.2/32", "dev", "lo"]);

    let engine = PolicyEngine::from_index(ClusterIndex::from_objects(manifest::parse("c.yaml", PODS).unwrap().objects));
    let backend = OvnBackend::connect(vec![ovn.nb.remote().parse().unwrap()]);
    backend.reconcile(&build(&engine, &topology())).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (sa, sb_sock) = (agent(&a, &ovn.nb.remote(), dir.path()), agent(&b, &ovn.nb.remote(), dir.path()));
    until("both agents listening", Duration::from_secs(5), || sa.exists() && sb_sock.exists()).await;
    until("node-a's management port configured", Duration::from_secs(15), || configured(&ns_a)).await;
    until("node-b's management port configured", Duration::from_secs(15), || configured(&ns_b)).await;
    let addr = ip(&ns_a, &["-o", "addr", "show", "dev", "sn-mgmt0"]);
    assert!(addr.contains("10.244.0.2/24"), "{addr}");
    let link = ip(&ns_a, &["-o", "link", "show", "sn-mgmt0"]);
    assert!(link.contains("0a:58:0a:f4:00:02") && link.contains("mtu 1400"), "{link}");
    // The management port is bound where its node is.
    let bound = ovn.nbctl(&["--wait=hv", "lsp-get-up", "mgmt_mgmt.node-a"]);
    assert_eq!(bound.map(|s| s.trim().to_string()).ok().as_deref(), Some("up"));

    let (pa, pb, pc) = (
        Netns::create(&unique("a")).unwrap(),
        Netns::create(&unique("b")).unwrap(),
        Netns::create(&unique("c")).unwrap(),
    );
    add(&sa, &pa, ("x", "a", "uid-a"));
    add(&sb_sock, &pb, ("x", "b", "uid-b"));
    add(&sb_sock, &pc, ("y", "c", "uid-c"));
    for (p, addr) in [(&pa, "10.244.0.3:8080"), (&pb, "10.244.1.3:8080"), (&pc, "10.244.1.4:8080")] {
        serve_in(&p.path(), addr.parse().unwrap(), b"pod");
    }
    serve_in(&a.netns().path(), "10.244.0.2:9000".parse().unwrap(), b"node-a mgmt");
    serve_in(&a.netns().path(), "192.168.77.1:9100".parse().unwrap(), b"node-a");
    let host_a = a.netns().path();
    let host_b = b.netns().path();

    // x is deny-all, both ways. Its pods' own nodes still reach them (kubelet probes)...
    assert!(reaches(&host_a, "10.244.0.3:8080"), "node-a -> its pod a under deny-all");
    assert!(reaches(&host_b, "10.244.1.3:8080"), "node-b -> its pod b under deny-all");
    // ...and nothing else does: another node, another pod.
    assert!(!reaches(&host_b, "10.244.0.3:8080"), "node-b -> pod a on node-a must be denied");
    assert!(!reaches(&pc.path(), "10.244.0.3:8080"), "pod c -> pod a must be denied");
    // A node reaches a pod on another node that no policy isolates.
    assert!(reaches(&host_a, "10.244.1.4:8080"), "node-a -> pod c on node-b");
    // Pods reach their own node under egress deny-all: its management address and its own.
    assert!(reaches(&pa.path(), "10.244.0.2:9000"), "pod a -> node-a's management address");
    assert!(reaches(&pa.path(), "192.168.77.1:9100"), "pod a -> node-a's own address");
    assert!(!reaches(&pa.path(), "10.244.1.4:8080"), "pod a -> pod c must be denied (egress)");
    // Any pod reaches a node's own address through that node's management port.
    assert!(reaches(&pc.path(), "192.168.77.1:9100"), "pod c on node-b -> node-a's address");

    // Broken behind the agent's back: the OVS port deleted, then a route. Both come back.
    a.vsctl(&["del-port", "br-int", "sn-mgmt0"]).unwrap();
    until("node-a's management port re-made", Duration::from_secs(15), || configured(&ns_a)).await;
    until("node-a reaches its pod again", Duration::from_secs(15), || reaches(&host_a, "10.244.0.3:8080")).await;
    ip(&ns_a, &["route", "del", "10.96.0.0/12"]);
    until("the Service route put back", Duration::from_secs(10), || configured(&ns_a)).await;
    // Once repaired, a check changes nothing (and the controller's rows were never touched).
    let report = backend.reconcile(&build(&engine, &topology())).await.unwrap();
    assert_eq!(report.transactions, 0);
}
