//! The node path on a real node (the datapath tier): NB/SB/ovn-northd, an Open_vSwitch
//! database, ovs-vswitchd (userspace datapath) and ovn-controller; pods are network
//! namespaces wired by `stacknet-cni`, invoked exactly as a container runtime invokes it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use stacknet_engine::{ClusterIndex, PolicyEngine, manifest};
use stacknet_node::agent::{Agent, AgentConfig};
use stacknet_ovn::{OvnBackend, Topology, build};
use stacknet_sandbox::{Chassis, Netns, Ovn};
use stacknet_testsupport::cni::{Invocation, Outcome, pod_args};
use stacknet_testsupport::netns::{serve_in, unique};
use stacknet_testsupport::{until, until_some};

const CLUSTER: &str = "cnitest";

struct Node {
    ovn: Ovn,
    chassis: Chassis,
    socket: PathBuf,
    _dir: tempfile::TempDir,
    agent: tokio::task::JoinHandle<()>,
}

const PODS: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: x, uid: uid-a, labels: {app: a}}, status: {podIP: 10.1.0.1}}
- {apiVersion: v1, kind: Pod, metadata: {name: b, namespace: x, uid: uid-b, labels: {app: b}}, status: {podIP: 10.1.0.2}}
- {apiVersion: v1, kind: Pod, metadata: {name: c, namespace: y, uid: uid-c, labels: {app: c}}, status: {podIP: 10.2.0.3}}
"#;

async fn node(pods_yaml: &str) -> Node {
    node_with(pods_yaml, |t| t).await
}

async fn node_with(pods_yaml: &str, topology: impl FnOnce(Topology) -> Topology) -> Node {
    let ovn = Ovn::with_northd().unwrap();
    let chassis = Chassis::start(ovn.dir(), "node-1", &ovn.sb_remote().unwrap(), "127.0.0.1").unwrap();
    let engine =
        PolicyEngine::from_index(ClusterIndex::from_objects(manifest::parse("pods.yaml", pods_yaml).unwrap().objects));
    let backend = OvnBackend::connect(vec![ovn.nb.remote().parse().unwrap()]);
    backend.reconcile(&build(&engine, &topology(Topology::from_pods(CLUSTER, engine.index())))).await.unwrap();
    ovn.sync_sb().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let config = AgentConfig {
        cluster: CLUSTER.into(),
        lookup_timeout: Duration::from_secs(2),
        host_netns: Some(chassis.netns().path()),
        ..AgentConfig::default()
    };
    let agent = Arc::new(
        Agent::new(config, vec![chassis.ovs_remote().parse().unwrap()], vec![ovn.nb.remote().parse().unwrap()])
            .unwrap(),
    );
    let s = socket.clone();
    let agent = tokio::spawn(async move {
        let _ = agent.serve(&s).await;
    });
    until("the agent listening", Duration::from_secs(5), || socket.exists()).await;
    Node { ovn, chassis, socket, _dir: dir, agent }
}

/// Runs the plugin as a runtime does, for `pod` (namespace, name, UID) with the agent at
/// `socket`, or with network configuration `stdin`.
fn cni(
    command: &str,
    container: &str,
    netns: &Path,
    pod: Option<(&str, &str, &str)>,
    socket: &Path,
    stdin: Option<&str>,
) -> Outcome {
    let args = pod.map(|(ns, name, uid)| pod_args(ns, name, uid));
    let config = stdin.map_or_else(|| stacknet_testsupport::cni::config(socket), str::to_string);
    let call = Invocation { command, container, netns, ifname: "eth0", args, config };
    stacknet_testsupport::cni::run(Path::new(env!("CARGO_BIN_EXE_stacknet-cni")), &call)
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Connects from inside `netns`; the bytes read, or the error.
fn connect_from(netns: &Path, addr: SocketAddr) -> Result<Vec<u8>, String> {
    stacknet_testsupport::netns::connect_from(netns, addr, Duration::from_secs(3))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_check_del_and_real_packets() {
    let n = node(PODS).await;
    let (na, nb, nc) = (
        Netns::create(&unique("a")).unwrap(),
        Netns::create(&unique("b")).unwrap(),
        Netns::create(&unique("c")).unwrap(),
    );
    let (ca, cb, cc) = (unique("ctr-a"), unique("ctr-b"), unique("ctr-c"));
    let (ca, cb, cc) = (ca.as_str(), cb.as_str(), cc.as_str());
    // Pod c's ADD comes second in a chain: the runtime hands over the result so far.
    let chained = json!({
        "cniVersion": "1.1.0", "name": "stacknet", "type": "stacknet-cni", "agentSocket": n.socket,
        "prevResult": {
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "lo", "sandbox": nc.path()}],
            "ips": [{"interface": 0, "address": "127.0.0.1/8"}],
            "dns": {"nameservers": ["10.96.0.10"]}
        }
    })
    .to_string();
    let mut results = Vec::new();
    for (ns, pod, cid, stdin) in [
        (&na, ("x", "a", "uid-a"), ca, None),
        (&nb, ("x", "b", "uid-b"), cb, None),
        (&nc, ("y", "c", "uid-c"), cc, Some(chained.as_str())),
    ] {
        let r = cni("ADD", cid, &ns.path(), Some(pod), &n.socket, stdin);
        assert_eq!(r.code, Some(0), "{}", r.stdout);
        results.push(r.stdout);
    }
    // In the chain, the earlier result comes first and is kept; ours follows, indexes shifted.
    let c = &results[2];
    assert_eq!(c["interfaces"][0]["name"], "lo", "{c}");
    assert_eq!(c["interfaces"][2]["name"], "eth0", "{c}");
    assert_eq!(c["ips"][0]["address"], "127.0.0.1/8", "{c}");
    assert_eq!(
        (c["ips"][1]["address"].as_str(), c["ips"][1]["interface"].as_u64()),
        (Some("10.2.0.3/24"), Some(2)),
        "{c}"
    );
    assert_eq!(c["dns"]["nameservers"][0], "10.96.0.10", "{c}");
    // The CNI 1.1 result: both ends, the address with its gateway, the default route.
    let a = &results[0];
    assert_eq!(a["cniVersion"], "1.1.0");
    assert_eq!(a["interfaces"][1]["name"], "eth0");
    assert_eq!(a["interfaces"][1]["mac"], "0a:58:0a:01:00:01");
    assert_eq!(a["interfaces"][1]["sandbox"], na.path().display().to_string());
    assert_eq!(a["ips"][0]["address"], "10.1.0.1/24");
    assert_eq!(a["ips"][0]["gateway"], "10.1.0.254");
    assert_eq!(a["routes"][0]["dst"], "0.0.0.0/0");
    // The kernel agrees.
    let addr = ip(&["-n", na.name(), "-o", "addr", "show", "dev", "eth0"]);
    assert!(addr.contains("10.1.0.1/24"), "{addr}");
    assert!(ip(&["-n", na.name(), "route"]).contains("default via 10.1.0.254 dev eth0"));

    // Real packets: same switch, and across the router to another node's subnet.
    serve_in(&nb.path(), "10.1.0.2:8080".parse().unwrap(), b"from b");
    serve_in(&nc.path(), "10.2.0.3:8080".parse().unwrap(), b"from c");
    assert_eq!(connect_from(&na.path(), "10.1.0.2:8080".parse().unwrap()).unwrap(), b"from b");
    assert_eq!(connect_from(&na.path(), "10.2.0.3:8080".parse().unwrap()).unwrap(), b"from c");

    // CHECK passes, then fails once the interface is tampered with.
    assert_eq!(cni("CHECK", ca, &na.path(), Some(("x", "a", "uid-a")), &n.socket, None).code, Some(0));
    ip(&["-n", na.name(), "addr", "flush", "dev", "eth0"]);
    let r = cni("CHECK", ca, &na.path(), Some(("x", "a", "uid-a")), &n.socket, None);
    assert_eq!(r.code, Some(1));
    assert_eq!(r.stdout["code"], 110, "{}", r.stdout);
    assert!(r.stdout["details"].as_str().unwrap().contains("lacks address 10.1.0.1/24"), "{}", r.stdout);

    // A repeated ADD of a complete attachment answers the same; of a broken one, repairs it.
    let again = cni("ADD", cb, &nb.path(), Some(("x", "b", "uid-b")), &n.socket, None);
    assert_eq!(again.code, Some(0), "{}", again.stdout);
    assert_eq!(again.stdout["ips"], results[1]["ips"]);

    // DEL: the veth and the OVS port are gone; a second DEL, or one for a vanished
    // namespace, is success.
    let host = stacknet_node::agent::host_ifname(cb, "eth0");
    let chassis_ns = n.chassis.netns().name().to_string();
    assert!(ip(&["-n", &chassis_ns, "link", "show", &host]).contains(&host));
    assert_eq!(cni("DEL", cb, &nb.path(), Some(("x", "b", "uid-b")), &n.socket, None).code, Some(0));
    assert!(ip(&["-n", &chassis_ns, "link", "show", &host]).is_empty(), "veth left behind");
    assert!(!n.chassis.vsctl(&["list-ports", "br-int"]).unwrap().contains(&host), "OVS port left behind");
    assert_eq!(cni("DEL", cb, &nb.path(), None, &n.socket, None).code, Some(0));
    drop(nc);
    assert_eq!(cni("DEL", cc, Path::new("/var/run/netns/gone"), None, &n.socket, None).code, Some(0));
    n.agent.abort();
    let _ = &n.ovn;
}

/// ovs-vswitchd, then ovn-controller, killed and started again while a pod keeps dialling two
/// others (same switch, across the router): the pods work again once each is back, and the
/// agent still attaches a pod afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_work_again_after_ovs_vswitchd_and_ovn_controller_restart_under_traffic() {
    let mut n = node(PODS).await;
    let (na, nb, nc) = (
        Netns::create(&unique("a")).unwrap(),
        Netns::create(&unique("b")).unwrap(),
        Netns::create(&unique("c")).unwrap(),
    );
    let (ca, cb, cc) = (unique("ctr-a"), unique("ctr-b"), unique("ctr-c"));
    for (ns, pod, cid) in
        [(&na, ("x", "a", "uid-a"), &ca), (&nb, ("x", "b", "uid-b"), &cb), (&nc, ("y", "c", "uid-c"), &cc)]
    {
        let r = cni("ADD", cid, &ns.path(), Some(pod), &n.socket, None);
        assert_eq!(r.code, Some(0), "{}", r.stdout);
    }
    serve_in(&nb.path(), "10.1.0.2:8080".parse().unwrap(), b"from b");
    serve_in(&nc.path(), "10.2.0.3:8080".parse().unwrap(), b"from c");
    let peers: [(SocketAddr, &[u8]); 2] =
        [("10.1.0.2:8080".parse().unwrap(), b"from b"), ("10.2.0.3:8080".parse().unwrap(), b"from c")];
    let works =
        |ns: &Netns| peers.iter().all(|(addr, want)| connect_from(&ns.path(), *addr).is_ok_and(|got| got == *want));
    assert!(works(&na), "before the restarts");

    // Traffic all along: pod a dials b and c every 50 ms, and notes what answered.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered = Arc::new(std::sync::Mutex::new(Vec::<(std::time::Instant, bool)>::new()));
    let traffic = {
        let (stop, answered, path) = (stop.clone(), answered.clone(), na.path());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let ok = peers.iter().all(|(addr, want)| {
                    stacknet_testsupport::netns::connect_from(&path, *addr, Duration::from_millis(500))
                        .is_ok_and(|got| got == *want)
                });
                answered.lock().unwrap().push((std::time::Instant::now(), ok));
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    for daemon in ["ovs-vswitchd", "ovn-controller"] {
        let at = std::time::Instant::now();
        match daemon {
            "ovs-vswitchd" => n.chassis.restart_vswitchd().unwrap(),
            _ => n.chassis.restart_controller().unwrap(),
        }
        until(&format!("the pods answering again after {daemon} restarted"), Duration::from_secs(60), || {
            answered.lock().unwrap().iter().rev().take(3).filter(|(t, ok)| *t > at && *ok).count() == 3
        })
        .await;
        eprintln!("{daemon}: pods answer again {:?} after the restart began", at.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    traffic.join().unwrap();
    assert!(works(&na), "after the restarts");

    // The agent still attaches: pod b detached and attached again answers.
    assert_eq!(cni("DEL", &cb, &nb.path(), Some(("x", "b", "uid-b")), &n.socket, None).code, Some(0));
    let r = cni("ADD", &cb, &nb.path(), Some(("x", "b", "uid-b")), &n.socket, None);
    assert_eq!(r.code, Some(0), "{}", r.stdout);
    until("pod b answering after its new ADD", Duration::from_secs(20), || works(&na)).await;
    n.agent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_cni_errors_and_leaves_nothing() {
    let n = node(PODS).await;
    let ns = Netns::create(&unique("bad")).unwrap();
    let pod = Some(("x", "a", "uid-a"));
    let ports_before = n.chassis.vsctl(&["list-ports", "br-int"]).unwrap();
    // Host interfaces are shared by every test running: container ids are unique to this one.
    let c1 = unique("bad-c1");
    let c1 = c1.as_str();

    // Garbage on stdin.
    let r = cni("ADD", c1, &ns.path(), pod, &n.socket, Some("{not json"));
    assert_eq!((r.code, r.stdout["code"].as_u64()), (Some(1), Some(6)), "{}", r.stdout);
    // An unknown CNI version.
    let r =
        cni("ADD", c1, &ns.path(), pod, &n.socket, Some(r#"{"cniVersion":"9.9.9","name":"s","type":"stacknet-cni"}"#));
    assert_eq!(r.stdout["code"], 1, "{}", r.stdout);
    // A namespace that does not exist.
    let r = cni("ADD", c1, Path::new("/var/run/netns/no-such-ns"), pod, &n.socket, None);
    assert_eq!(r.stdout["code"], 4, "{}", r.stdout);
    assert!(r.stdout["details"].as_str().unwrap().contains("no-such-ns"), "{}", r.stdout);
    // A pod the controller never programmed.
    let r = cni(
        "ADD",
        c1,
        &ns.path(),
        Some(("x", "ghost", "u")),
        &n.socket,
        Some(&json!({"cniVersion":"1.1.0","name":"s","type":"stacknet-cni","agentSocket": n.socket}).to_string()),
    );
    assert_eq!(r.stdout["code"], 11, "{}", r.stdout);
    // The interface name is already taken in the pod.
    ip(&["-n", ns.name(), "link", "add", "eth0", "type", "veth", "peer", "name", "other0"]);
    assert!(ip(&["-n", ns.name(), "-o", "link"]).contains("eth0"));
    let r = cni("ADD", c1, &ns.path(), pod, &n.socket, None);
    assert_eq!(r.stdout["code"], 101, "{}", r.stdout);
    ip(&["-n", ns.name(), "link", "del", "eth0"]);
    // The agent is not there: ADD says try again later, STATUS says not available.
    let nowhere = n.socket.with_file_name("nobody.sock");
    let r = cni("ADD", c1, &ns.path(), pod, &nowhere, None);
    assert_eq!(r.stdout["code"], 11, "{}", r.stdout);
    let r = cni("STATUS", "", Path::new(""), None, &nowhere, None);
    assert_eq!(r.stdout["code"], 50, "{}", r.stdout);
    assert_eq!(cni("STATUS", "", Path::new(""), None, &n.socket, None).code, Some(0));

    // Nothing was left behind by any of these.
    assert_eq!(n.chassis.vsctl(&["list-ports", "br-int"]).unwrap(), ports_before);
    let chassis_ns = n.chassis.netns().name().to_string();
    assert!(ip(&["-n", &chassis_ns, "link", "show", &stacknet_node::agent::host_ifname(c1, "eth0")]).is_empty());
    assert!(ip(&["-n", ns.name(), "-o", "link"]).lines().all(|l| !l.contains("eth0")));
    n.agent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ovs_down_fails_cleanly_and_gc_removes_only_ours() {
    let mut n = node(PODS).await;
    let ns = Netns::create(&unique("gc")).unwrap();
    let c1 = unique("gc-c1");
    let c1 = c1.as_str();
    let host = stacknet_node::agent::host_ifname(c1, "eth0");
    // Someone else's port on br-int (an internal port: a tap device on the host).
    let foreign = unique("f");
    n.chassis.vsctl(&["add-port", "br-int", &foreign, "--", "set", "interface", &foreign, "type=internal"]).unwrap();

    // OVS database down: ADD fails with an error naming it, and takes its veth back.
    n.chassis.ovs.kill();
    let r = cni("ADD", c1, &ns.path(), Some(("x", "a", "uid-a")), &n.socket, None);
    assert_eq!(r.code, Some(1));
    assert!(r.stdout["code"] == 11 || r.stdout["code"] == 103, "{}", r.stdout);
    let chassis_ns = n.chassis.netns().name().to_string();
    assert!(ip(&["-n", &chassis_ns, "link", "show", &host]).is_empty(), "veth left behind");
    n.chassis.ovs.restart().unwrap();

    // Back up: ADD works; GC with an empty list removes our attachment, not the foreign port.
    until_some("ADD working after OVS came back", Duration::from_secs(5), async || {
        Some(cni("ADD", c1, &ns.path(), Some(("x", "a", "uid-a")), &n.socket, None)).filter(|r| r.code == Some(0))
    })
    .await;
    let gc = json!({"cniVersion": "1.1.0", "name": "stacknet", "type": "stacknet-cni", "agentSocket": n.socket, "cni.dev/valid-attachments": []}).to_string();
    let r = cni("GC", "", Path::new(""), None, &n.socket, Some(&gc));
    assert_eq!(r.code, Some(0), "{}", r.stdout);
    let ports = n.chassis.vsctl(&["list-ports", "br-int"]).unwrap();
    assert!(ports.contains(&foreign), "{ports}");
    assert!(!ports.contains(&host), "{ports}");
    assert!(ip(&["-n", &chassis_ns, "link", "show", &host]).is_empty(), "veth left behind");
    n.agent.abort();
}

/// A pod nested in a VM's port cannot be given a veth on br-int: the ADD says so, and nothing
/// is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_pod_is_refused_by_a_veth_agent() {
    const NESTED: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Pod, metadata: {name: n, namespace: x, uid: uid-n}, spec: {nodeName: vm-1}, status: {podIP: 10.9.0.1}}
"#;
    let n = node_with(NESTED, |t| t.with_nested("vm-1", "vm-1-port")).await;
    n.ovn.nbctl(&["ls-add", "vm-net", "--", "lsp-add", "vm-net", "vm-1-port"]).unwrap();
    let ns = Netns::create(&unique("nested")).unwrap();
    let c = unique("nested-c");
    let r = cni("ADD", &c, &ns.path(), Some(("x", "n", "uid-n")), &n.socket, None);
    assert_eq!(r.stdout["code"], 7, "{}", r.stdout);
    let details = r.stdout["details"].as_str().unwrap();
    assert!(details.contains("nests in VM port vm-1-port") && details.contains("VLAN"), "{details}");
    assert!(ip(&["-n", ns.name(), "-o", "link"]).lines().all(|l| !l.contains("eth0")));
    n.agent.abort();
}

/// Multus's way: the primary interface with `attachNetworks: false` (Multus attaches the
/// others), then Multus delegating the NAD with its own config (it has a `topology`) for
/// `net1`; its DEL removes that interface only. A bad `attachNetworks` is a configuration
/// error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multus_delegates_a_network_attachment_with_its_config() {
    let pods = r#"
apiVersion: v1
kind: List
items:
- apiVersion: k8s.cni.cncf.io/v1
  kind: NetworkAttachmentDefinition
  metadata: {name: data, namespace: x}
  spec: {config: '{"cniVersion": "1.1.0", "name": "data", "type": "stacknet-cni", "topology": "layer2", "subnets": "10.100.0.0/24"}'}
- apiVersion: v1
  kind: Pod
  metadata: {name: m, namespace: x, uid: uid-m, annotations: {k8s.v1.cni.cncf.io/networks: data}}
  spec: {nodeName: node-1}
  status: {podIP: 10.1.0.9}
"#;
    let n = node(pods).await;
    let ns = Netns::create(&unique("m")).unwrap();
    let container = unique("ctr-m");
    let path = ns.path();
    let plugin = Path::new(env!("CARGO_BIN_EXE_stacknet-cni"));
    let args = Some(pod_args("x", "m", "uid-m"));
    let primary = |command: &'static str, attach: serde_json::Value| {
        Invocation {
        command,
        container: &container,
        netns: &path,
        ifname: "eth0",
        args: args.clone(),
        config: json!({"cniVersion": "1.1.0", "name": "stacknet", "type": "stacknet-cni", "agentSocket": n.socket, "attachNetworks": attach})
            .to_string(),
    }
    };
    let bad = stacknet_testsupport::cni::run(plugin, &primary("ADD", json!("yes")));
    assert_eq!(bad.stdout["code"], 7, "{}", bad.stdout);
    assert!(bad.stdout["details"].as_str().unwrap_or_default().contains("attachNetworks"), "{}", bad.stdout);
    let r = stacknet_testsupport::cni::run(plugin, &primary("ADD", json!(false)));
    assert_eq!(r.code, Some(0), "{}", r.stdout);
    let links = ip(&["-n", ns.name(), "-o", "link"]);
    assert!(links.contains("eth0") && !links.contains("net1"), "only the primary: {links}");
    let delegated = |command: &'static str| Invocation {
        command,
        container: &container,
        netns: &path,
        ifname: "net1",
        args: args.clone(),
        config: json!({"cniVersion": "1.1.0", "name": "data", "type": "stacknet-cni", "topology": "layer2",
            "subnets": "10.100.0.0/24", "agentSocket": n.socket})
        .to_string(),
    };
    let r = stacknet_testsupport::cni::run(plugin, &delegated("ADD"));
    assert_eq!(r.code, Some(0), "{}", r.stdout);
    let names: Vec<&str> =
        r.stdout["interfaces"].as_array().unwrap().iter().filter_map(|i| i["name"].as_str()).collect();
    assert!(names.contains(&"net1") && !names.contains(&"eth0"), "{names:?}");
    assert_eq!(r.stdout["ips"][0]["address"], "10.100.0.1/24");
    let addrs = ip(&["-n", ns.name(), "-o", "addr", "show", "dev", "net1"]);
    assert!(addrs.contains("10.100.0.1/24"), "{addrs}");
    let r = stacknet_testsupport::cni::run(plugin, &delegated("DEL"));
    assert_eq!(r.code, Some(0), "{}", r.stdout);
    let links = ip(&["-n", ns.name(), "-o", "link"]);
    assert!(links.contains("eth0") && !links.contains("net1"), "net1 gone, eth0 kept: {links}");
    let r = stacknet_testsupport::cni::run(plugin, &primary("DEL", json!(false)));
    assert_eq!(r.code, Some(0), "{}", r.stdout);
    n.agent.abort();
}
