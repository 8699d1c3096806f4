//! Two chassis: two ovs-vswitchd + ovn-controller pairs (each in a namespace of its own) on
//! one SB, Geneve between them over an underlay the test wires (a veth pair between the two
//! chassis namespaces, on userspace `br-phy` bridges). A pod on each node, attached by
//! stacknet-cni through each node's agent; real TCP across the tunnel, and a NetworkPolicy
//! that holds across it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use stacknet_engine::{ClusterIndex, PolicyEngine, manifest};
use stacknet_node::agent::AgentConfig;
use stacknet_ovn::{OvnBackend, Topology, build};
use stacknet_sandbox::{Chassis, Netns, Ovn};
use stacknet_testsupport::netns::{serve_in, unique};
use stacknet_testsupport::until;

const CLUSTER: &str = "two";

const PODS: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: x, uid: uid-a, labels: {app: a}}, spec: {nodeName: node-a}, status: {podIP: 10.1.0.1}}
- {apiVersion: v1, kind: Pod, metadata: {name: b, namespace: x, uid: uid-b, labels: {app: b}}, spec: {nodeName: node-b}, status: {podIP: 10.1.0.2}}
- {apiVersion: v1, kind: Pod, metadata: {name: c, namespace: y, uid: uid-c, labels: {app: c}}, spec: {nodeName: node-b}, status: {podIP: 10.2.0.3}}
"#;

const DENY_TO_B: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-from-nowhere, namespace: x}
spec: {podSelector: {matchLabels: {app: b}}, policyTypes: [Ingress]}
"#;

fn engine(extra: &str) -> PolicyEngine {
    let mut objects = manifest::parse("pods.yaml", PODS).unwrap().objects;
    if !extra.is_empty() {
        objects.extend(manifest::parse("policy.yaml", extra).unwrap().objects);
    }
    PolicyEngine::from_index(ClusterIndex::from_objects(objects))
}

fn agent(chassis: &Chassis, nb: &str, dir: &Path) -> PathBuf {
    let socket = dir.join(format!("{}.sock", chassis.name));
    let config =
        AgentConfig { cluster: CLUSTER.into(), host_netns: Some(chassis.netns().path()), ..AgentConfig::default() };
    stacknet_testsupport::netns::spawn_agent(config, &chassis.ovs_remote(), nb, &socket);
    socket
}

/// CNI ADD of `pod` (namespace, name, UID) in `netns`, through the agent at `socket`.
fn add(socket: &Path, container: &str, netns: &Netns, pod: (&str, &str, &str)) {
    stacknet_testsupport::cni::add(
        Path::new(env!("CARGO_BIN_EXE_stacknet-cni")),
        socket,
        container,
        &netns.path(),
        pod,
    );
}

fn connect_from(netns: &Path, addr: SocketAddr) -> Result<Vec<u8>, String> {
    stacknet_testsupport::netns::connect_from(netns, addr, Duration::from_millis(1500))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_two_chassis_talk_over_geneve_and_policy_holds() {
    let ovn = Ovn::with_northd().unwrap();
    let sb = ovn.sb_remote().unwrap();
    let a = Chassis::start(ovn.dir(), "node-a", &sb, "172.31.254.1").unwrap();
    let b = Chassis::start(ovn.dir(), "node-b", &sb, "172.31.254.2").unwrap();
    Chassis::connect_underlay(&a, "172.31.254.1", &b, "172.31.254.2").unwrap();

    let backend = OvnBackend::connect(vec![ovn.nb.remote().parse().unwrap()]);
    backend.reconcile(&build(&engine(""), &Topology::from_pods(CLUSTER, engine("").index()))).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (sa, sb_sock) = (agent(&a, &ovn.nb.remote(), dir.path()), agent(&b, &ovn.nb.remote(), dir.path()));
    until("both agents listening", Duration::from_secs(5), || sa.exists() && sb_sock.exists()).await;
    let (na, nb, nc) = (
        Netns::create(&unique("a")).unwrap(),
        Netns::create(&unique("b")).unwrap(),
        Netns::create(&unique("c")).unwrap(),
    );
    add(&sa, &unique("two-a"), &na, ("x", "a", "uid-a"));
    add(&sb_sock, &unique("two-b"), &nb, ("x", "b", "uid-b"));
    add(&sb_sock, &unique("two-c"), &nc, ("y", "c", "uid-c"));
    // The ports are bound where their pods are.
    let where_bound = |lsp_hint: &str| {
        ovn.sbctl(&["--bare", "--columns=chassis", "find", "Port_Binding", &format!("logical_port={lsp_hint}")])
            .unwrap()
    };
    let chassis_uuid =
        |name: &str| ovn.sbctl(&["--bare", "--columns=_uuid", "find", "Chassis", &format!("name={name}")]).unwrap();
    let desired = build(&engine(""), &Topology::from_pods(CLUSTER, engine("").index()));
    let lsp = |ns: &str, n: &str| desired.ports[&stacknet_engine::objects::ObjectKey::new(ns, n)].lsp.clone();
    assert_eq!(where_bound(&lsp("x", "a")).trim(), chassis_uuid("node-a").trim());
    assert_eq!(where_bound(&lsp("x", "b")).trim(), chassis_uuid("node-b").trim());

    serve_in(&nb.path(), "10.1.0.2:8080".parse().unwrap(), b"from b");
    serve_in(&nc.path(), "10.2.0.3:8080".parse().unwrap(), b"from c");
    // Same logical switch, different chassis; and across the router to the other node.
    assert_eq!(connect_from(&na.path(), "10.1.0.2:8080".parse().unwrap()), Ok(b"from b".to_vec()));
    assert_eq!(connect_from(&na.path(), "10.2.0.3:8080".parse().unwrap()), Ok(b"from c".to_vec()));

    // That went through a Geneve port ovn-controller made towards the other chassis (the
    // underlay is the only way between the two namespaces).
    let tunnel = a.vsctl(&["--bare", "--columns=options", "find", "Interface", "type=geneve"]).unwrap();
    assert!(tunnel.contains("remote_ip=172.31.254.2"), "{tunnel}");

    // A policy isolating b holds across the tunnel; c (same node as b) is unaffected.
    let with_policy = engine(DENY_TO_B);
    backend.reconcile(&build(&with_policy, &Topology::from_pods(CLUSTER, with_policy.index()))).await.unwrap();
    ovn.nbctl(&["--wait=hv", "sync"]).unwrap();
    assert!(connect_from(&na.path(), "10.1.0.2:8080".parse().unwrap()).is_err(), "policy not enforced across chassis");
    assert_eq!(connect_from(&na.path(), "10.2.0.3:8080".parse().unwrap()), Ok(b"from c".to_vec()));
}
