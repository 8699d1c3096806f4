//! Egress, live: two chassis, each node's uplink a veth into an "outside" namespace the test
//! makes (a bridge there, an outside host on it, and past its next hop a further address), the
//! node's address on its uplink bridge `br-ex`, shared with the node's gateway router. The
//! agents keep the bridges (mapping, MAC, flows). A pod's connection to the outside arrives
//! from its own node's address and the reply comes back; the nodes' own traffic still works
//! on the shared address; flows someone deletes come back; without SNAT the pod's address
//! arrives. Nothing leaves the machine: every address is in namespaces of the test.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use stacknet_engine::{ClusterIndex, PolicyEngine, manifest};
use stacknet_node::agent::AgentConfig;
use stacknet_node::netns::run_in;
use stacknet_ovn::topology::Gateways;
use stacknet_ovn::{NodeNet, OvnBackend, Topology, build};
use stacknet_sandbox::{Chassis, Netns, Ovn, Segment};
use stacknet_testsupport::netns::unique;
use stacknet_testsupport::until;

const CLUSTER: &str = "eg";

const PODS: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: y, uid: uid-a}, spec: {nodeName: node-a}, status: {podIP: 10.244.0.3}}
- {apiVersion: v1, kind: Pod, metadata: {name: b, namespace: y, uid: uid-b, labels: {app: web, sticky: "yes"}}, spec: {nodeName: node-b}, status: {podIP: 10.244.1.3}}
- {apiVersion: v1, kind: Pod, metadata: {name: e, namespace: y, uid: uid-e, labels: {sticky: "yes"}}, spec: {nodeName: node-a}, status: {podIP: 10.244.0.5}}
- {apiVersion: v1, kind: Service, metadata: {name: web, namespace: y},
   spec: {type: NodePort, clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80, targetPort: 8080, nodePort: 30080}]}}
- {apiVersion: v1, kind: Service, metadata: {name: local, namespace: y},
   spec: {type: NodePort, clusterIP: 10.96.0.11, selector: {app: web}, externalTrafficPolicy: Local, ports: [{port: 80, targetPort: 8080, nodePort: 30081}]}}
- {apiVersion: v1, kind: Service, metadata: {name: lb, namespace: y},
   spec: {type: LoadBalancer, clusterIP: 10.96.0.12, selector: {app: web}, loadBalancerSourceRanges: [172.30.0.96/28],
          ports: [{port: 80, targetPort: 8080, nodePort: 30082}]}}
- {apiVersion: v1, kind: Service, metadata: {name: sticky, namespace: y},
   spec: {type: NodePort, clusterIP: 10.96.0.13, selector: {sticky: "yes"}, sessionAffinity: ClientIP, ports: [{port: 80, targetPort: 9090, nodePort: 30083}]}}
- {apiVersion: v1, kind: Pod, metadata: {name: c, namespace: x, uid: uid-c}, spec: {nodeName: node-a}, status: {podIP: 10.244.0.4}}
- {apiVersion: v1, kind: Pod, metadata: {name: dns, namespace: kube-system, uid: uid-dns, labels: {k8s-app: kube-dns}}, spec: {nodeName: node-a}, status: {podIP: 10.244.0.6}}
- {apiVersion: v1, kind: Service, metadata: {name: kube-dns, namespace: kube-system},
   spec: {clusterIP: 10.96.0.53, selector: {k8s-app: kube-dns}, ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]}}
- {apiVersion: v1, kind: Service, metadata: {name: kubernetes, namespace: default}, spec: {clusterIP: 10.96.0.1, ports: [{name: https, port: 443}]}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: kubernetes, namespace: default, labels: {kubernetes.io/service-name: kubernetes}}
  addressType: IPv4
  endpoints: [{addresses: [172.30.0.11]}]
  ports: [{name: https, port: 6443, protocol: TCP}]
- {apiVersion: v1, kind: Service, metadata: {name: outside, namespace: y}, spec: {clusterIP: 10.96.0.2, ports: [{port: 80}]}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: outside, namespace: y, labels: {kubernetes.io/service-name: outside}}
  addressType: IPv4
  endpoints: [{addresses: [172.30.0.100]}]
  ports: [{port: 8080, protocol: TCP}]
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: deny-all, namespace: x}
  spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
"#;

fn topology(snat: bool) -> Topology {
    let mut t = bare_topology(snat);
    let lb_ips = std::collections::BTreeMap::from([(
        stacknet_engine::ObjectKey::new("y", "lb"),
        "172.30.0.201".parse::<std::net::IpAddr>().unwrap(),
    )]);
    let inside = ["10.244.0.0/16".parse().unwrap(), "10.96.0.0/12".parse().unwrap()];
    let (exposures, problems) = stacknet_engine::service::exposures(engine().index(), &lb_ips, &inside);
    assert!(problems.is_empty(), "{problems:?}");
    t.exposures = exposures;
    t.load_balancer_ips = lb_ips;
    t
}

fn engine() -> PolicyEngine {
    PolicyEngine::from_index(ClusterIndex::from_objects(manifest::parse("c.yaml", PODS).unwrap().objects))
}

fn bare_topology(snat: bool) -> Topology {
    let node = |name: &str, i: u8| NodeNet {
        name: name.into(),
        subnets: vec![(format!("10.244.{i}.0/24").parse().unwrap(), format!("10.244.{i}.1").parse().unwrap())],
        management: vec![format!("10.244.{i}.2").parse().unwrap()],
        addresses: vec![format!("172.30.0.1{}", i + 1).parse().unwrap()],
        join: Some(format!("100.64.0.{}", i + 2).parse().unwrap()),
    };
    Topology {
        cluster: CLUSTER.into(),
        nodes: vec![node("node-a", 0), node("node-b", 1)],
        nested: Default::default(),
        node_routes: vec!["10.244.0.0/16".parse().unwrap(), "10.96.0.0/12".parse().unwrap()],
        gateways: Some(Gateways {
            join: "100.64.0.0/16".parse().unwrap(),
            external: "172.30.0.0/24".parse().unwrap(),
            next_hop: Some("172.30.0.1".parse().unwrap()),
            physnet: "external".into(),
            snat,
            cluster: vec!["10.244.0.0/16".parse().unwrap()],
        }),
        exposures: Vec::new(),
        load_balancer_ips: Default::default(),
        multinet: Default::default(),
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn agent(chassis: &Chassis, nb: &str, dir: &Path) -> PathBuf {
    agent_task(chassis, nb, dir).0
}

/// [`agent`], and its task (aborted: the agent stops, as a killed process would).
fn agent_task(chassis: &Chassis, nb: &str, dir: &Path) -> (PathBuf, tokio::task::JoinHandle<()>) {
    let socket = dir.join(format!("{}.sock", chassis.name));
    let config = AgentConfig {
        cluster: CLUSTER.into(),
        host_netns: Some(chassis.netns().path()),
        node: Some(chassis.name.clone()),
        gateway_bridge: Some("br-ex".into()),
        ..AgentConfig::default()
    };
    let task = stacknet_testsupport::netns::spawn_agent(config, &chassis.ovs_remote(), nb, &socket);
    (socket, task)
}

fn add(socket: &Path, netns: &Netns, pod: (&str, &str, &str)) {
    let plugin = Path::new(env!("CARGO_BIN_EXE_stacknet-cni"));
    stacknet_testsupport::cni::add(plugin, socket, &unique(pod.1), &netns.path(), pod);
}

/// A listener in `netns` telling each client the address it came from.
fn tell_source(netns: &Path, addr: &str) {
    let addr: SocketAddr = addr.parse().unwrap();
    let listener = run_in(netns, move || TcpListener::bind(addr)).unwrap().unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            if let Ok(peer) = s.peer_addr() {
                let _ = s.write_all(peer.ip().to_string().as_bytes());
            }
        }
    });
}

/// What the test's DNS server answers for every name.
const ANSWER: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 96, 0, 10);

/// A DNS answer for `query` (one question): every name is `ANSWER`.
fn dns_answer(query: &[u8]) -> Option<Vec<u8>> {
    // Header 12 bytes, then the question: labels up to a zero byte, type and class.
    let mut i = 12;
    while *query.get(i)? != 0 {
        i += 1 + usize::from(query[i]);
    }
    let question = query.get(12..i + 5)?;
    let mut a = vec![query[0], query[1], 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
    a.extend_from_slice(question);
    a.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
    a.extend_from_slice(&ANSWER.octets());
    Some(a)
}

/// A DNS server on `addr` in `netns`, UDP and TCP.
fn dns_server(netns: &Path, addr: &str) {
    let addr: SocketAddr = addr.parse().unwrap();
    let (udp, tcp) = run_in(netns, move || (std::net::UdpSocket::bind(addr), TcpListener::bind(addr))).unwrap();
    let (udp, tcp) = (udp.unwrap(), tcp.unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            if let Some(a) = dns_answer(&buf[..n]) {
                let _ = udp.send_to(&a, from);
            }
        }
    });
    std::thread::spawn(move || {
        for mut s in tcp.incoming().flatten() {
            let mut len = [0u8; 2];
            if s.read_exact(&mut len).is_err() {
                continue;
            }
            let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
            if s.read_exact(&mut q).is_ok()
                && let Some(a) = dns_answer(&q)
            {
                let _ = s.write_all(&(a.len() as u16).to_be_bytes());
                let _ = s.write_all(&a);
            }
        }
    });
}

/// Asks `server` (from `netns`) for web.y.svc.cluster.local's A record.
fn dns_query(netns: &Path, server: &str, tcp: bool) -> Option<std::net::Ipv4Addr> {
    let server: SocketAddr = server.parse().unwrap();
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["web", "y", "svc", "cluster", "local"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let q = q.clone();
        let answer = run_in(netns, move || -> Option<Vec<u8>> {
            let t = Some(Duration::from_millis(1000));
            if tcp {
                let mut s = TcpStream::connect_timeout(&server, Duration::from_millis(1000)).ok()?;
                s.set_read_timeout(t).ok()?;
                s.write_all(&(q.len() as u16).to_be_bytes()).ok()?;
                s.write_all(&q).ok()?;
                let mut len = [0u8; 2];
                s.read_exact(&mut len).ok()?;
                let mut a = vec![0u8; usize::from(u16::from_be_bytes(len))];
                s.read_exact(&mut a).ok()?;
                Some(a)
            } else {
                let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
                s.set_read_timeout(t).ok()?;
                s.connect(server).ok()?;
                s.send(&q).ok()?;
                let mut buf = [0u8; 512];
                let n = s.recv(&mut buf).ok()?;
                Some(buf[..n].to_vec())
            }
        })
        .unwrap();
        if let Some(a) = answer.filter(|a| a.len() >= 4 && a[..2] == [0x12, 0x34]) {
            let ip = &a[a.len() - 4..];
            return Some(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]));
        }
    }
    None
}

/// [`seen_from`] once it answers `want` (the first packets of a flow may wait for ARP and a
/// retransmission), within a deadline.
fn answers(netns: &Path, addr: &str, want: &str, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = seen_from(netns, addr);
        if got.as_deref() == Some(want) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {addr} answered {got:?}, not {want:?}");
    }
}

/// The address `addr` saw this connection come from (`None`: no connection).
fn seen_from(netns: &Path, addr: &str) -> Option<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    run_in(netns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(1500)).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(1500))).ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        Some(buf)
    })
    .unwrap()
}

/// The ifindex of `dev` in namespace `ns`.
fn ip_link_index(ns: &str, dev: &str) -> String {
    let out = Command::new("ip").args(["-n", ns, "-o", "link", "show", dev]).output().unwrap();
    assert!(out.status.success(), "{dev} in {ns}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).split(':').next().unwrap_or_default().to_string()
}

/// The agent's flows on node `c`'s uplink bridge (without their counters) and their ages.
fn flow_ages(c: &Chassis) -> std::collections::BTreeMap<String, f64> {
    let mgmt = format!("unix:{}", c.dir().join("br-ex.mgmt").display());
    let out = Command::new("ovs-ofctl").args(["dump-flows", &mgmt]).output().unwrap();
    let mut ages = std::collections::BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("cookie=0x5e5e0001")) {
        let mut age = 0.0;
        let rest: Vec<&str> = line
            .split(", ")
            .filter(|f| {
                if let Some(d) = f.trim().strip_prefix("duration=") {
                    age = d.trim_end_matches('s').parse().unwrap_or(0.0);
                }
                !["duration=", "n_packets=", "n_bytes=", "idle_age=", "hard_age="]
                    .iter()
                    .any(|k| f.trim().starts_with(k))
            })
            .collect();
        ages.insert(rest.join(", "), age);
    }
    ages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_the_outside_from_their_own_nodes_address_and_the_replies_come_back() {
    let ovn = Ovn::with_northd().unwrap();
    let sb = ovn.sb_remote().unwrap();
    let a = Chassis::start(ovn.dir(), "node-a", &sb, "172.31.252.1").unwrap();
    let b = Chassis::start(ovn.dir(), "node-b", &sb, "172.31.252.2").unwrap();
    Chassis::connect_underlay(&a, "172.31.252.1", &b, "172.31.252.2").unwrap();
    // The outside: a bridge, the outside host (172.30.0.100), the next hop (172.30.0.1) and a
    // host beyond it (198.51.100.10, reached through the next hop).
    let segment = Segment::create(&unique("out")).unwrap();
    for addr in ["172.30.0.100/24", "172.30.0.1/24"] {
        segment.add_address(addr, false).unwrap();
    }
    segment.add_address("198.51.100.10/32", true).unwrap();
    let (outside, o) = (segment.netns(), segment.netns().name().to_string());
    a.uplink(&segment, "172.30.0.11", 24).unwrap();
    b.uplink(&segment, "172.30.0.12", 24).unwrap();
    for addr in ["172.30.0.100:8080", "198.51.100.10:8080"] {
        tell_source(&outside.path(), addr);
    }

    let engine = engine();
    let backend = OvnBackend::connect(vec![ovn.nb.remote().parse().unwrap()]);
    backend.reconcile(&build(&engine, &topology(true))).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ((sa, agent_a), sb_sock) =
        (agent_task(&a, &ovn.nb.remote(), dir.path()), agent(&b, &ovn.nb.remote(), dir.path()));
    until("both agents listening", Duration::from_secs(5), || sa.exists() && sb_sock.exists()).await;
    let (pa, pb, pc) = (
        Netns::create(&unique("a")).unwrap(),
        Netns::create(&unique("b")).unwrap(),
        Netns::create(&unique("c")).unwrap(),
    );
    add(&sa, &pa, ("y", "a", "uid-a"));
    add(&sb_sock, &pb, ("y", "b", "uid-b"));
    add(&sa, &pc, ("x", "c", "uid-c"));
    let pe = Netns::create(&unique("e")).unwrap();
    add(&sa, &pe, ("y", "e", "uid-e"));
    let pdns = Netns::create(&unique("dns")).unwrap();
    add(&sa, &pdns, ("kube-system", "dns", "uid-dns"));
    dns_server(&pdns.path(), "10.244.0.6:53");
    // Backends: b tells who came; b and e say who they are (affinity).
    tell_source(&pb.path(), "10.244.1.3:8080");
    stacknet_testsupport::netns::serve_in(&pb.path(), "10.244.1.3:9090".parse().unwrap(), b"b");
    stacknet_testsupport::netns::serve_in(&pe.path(), "10.244.0.5:9090".parse().unwrap(), b"e");

    // The agents mapped the physical network to br-ex; ovn-controller made the patch port;
    // the flows are in: pod a's connection arrives from node-a's address.
    until("pods on both nodes reach the outside host", Duration::from_secs(20), || {
        seen_from(&pa.path(), "172.30.0.100:8080").is_some() && seen_from(&pb.path(), "172.30.0.100:8080").is_some()
    })
    .await;
    let mappings = a.vsctl(&["get", "open_vswitch", ".", "external_ids:ovn-bridge-mappings"]).unwrap();
    assert_eq!(mappings.trim().trim_matches('"'), "external:br-ex");
    answers(&pa.path(), "172.30.0.100:8080", "172.30.0.11", "pod a, from node-a");
    answers(&pb.path(), "172.30.0.100:8080", "172.30.0.12", "pod b, from node-b");
    answers(&pb.path(), "198.51.100.10:8080", "172.30.0.12", "past the next hop");
    assert_eq!(seen_from(&pc.path(), "172.30.0.100:8080"), None, "pod c is under egress deny-all");
    // The node itself still uses its address, both ways.
    answers(&a.netns().path(), "172.30.0.100:8080", "172.30.0.11", "node-a's own");
    tell_source(&a.netns().path(), "172.30.0.11:2222");
    answers(&outside.path(), "172.30.0.11:2222", "172.30.0.100", "outside -> node-a");

    // Services from outside. A NodePort on each node's address reaches the backend (on
    // node-b), which sees the gateway router's join address of the node it came through.
    answers(&outside.path(), "172.30.0.11:30080", "100.64.0.2", "NodePort via node-a");
    answers(&outside.path(), "172.30.0.12:30080", "100.64.0.3", "NodePort via node-b");
    // externalTrafficPolicy Local: node-b (the backend's) keeps the client's address; node-a
    // does not forward.
    answers(&outside.path(), "172.30.0.12:30081", "172.30.0.100", "ETP=Local");
    assert_eq!(seen_from(&outside.path(), "172.30.0.11:30081"), None, "ETP=Local, no local endpoint");
    // The load balancer's address, from inside loadBalancerSourceRanges and from outside them.
    until("the LoadBalancer address answers", Duration::from_secs(15), || {
        seen_from(&outside.path(), "172.30.0.201:80").is_some()
    })
    .await;
    // Another outside host, 172.30.0.50, on the same outside bridge.
    let far = segment.host(&unique("far"), "172.30.0.50/24", None).unwrap();
    answers(&far.path(), "172.30.0.11:30080", "100.64.0.2", "NodePort: no ranges");
    assert_eq!(seen_from(&far.path(), "172.30.0.201:80"), None, "outside the source ranges");
    // ClientIP affinity: 20 connections, one backend.
    let backends: std::collections::BTreeSet<Option<String>> =
        (0..20).map(|_| seen_from(&outside.path(), "172.30.0.11:30083")).collect();
    assert_eq!(backends.len(), 1, "{backends:?}");
    assert!(backends.iter().all(Option::is_some), "{backends:?}");

    // Inside the cluster, through Services: a DNS query over UDP and TCP to the DNS Service;
    // the `kubernetes` Service to an API server on node-a's host network; a selector-less
    // Service to a host outside the cluster; a pod through its own Service (hairpin).
    assert_eq!(dns_query(&pb.path(), "10.96.0.53:53", false), Some(ANSWER), "DNS over UDP through the Service");
    assert_eq!(dns_query(&pb.path(), "10.96.0.53:53", true), Some(ANSWER), "DNS over TCP through the Service");
    tell_source(&a.netns().path(), "172.30.0.11:6443");
    answers(&pb.path(), "10.96.0.1:443", "10.244.1.3", "pod b -> kubernetes Service -> node-a's host");
    answers(&pa.path(), "10.96.0.2:80", "172.30.0.11", "pod a -> a Service whose endpoint is outside");
    answers(&pb.path(), "10.96.0.10:80", "10.96.0.10", "pod b -> its own Service (hairpin)");
    // A pod dials a NodePort on another node's address: balanced by its own switch, from its
    // own address.
    answers(&pa.path(), "172.30.0.12:30080", "10.244.0.3", "pod a -> NodePort on node-b");

    // The agent restarts (killed, started again): nothing is made again, nothing flaps. The
    // management port keeps its interface, the uplink bridge its flows (their age goes on),
    // and a pod's connections to the outside keep working throughout.
    let mgmt_index = ip_link_index(a.netns().name(), "sn-mgmt0");
    let flows_before = flow_ages(&a);
    let restarted = std::time::Instant::now();
    agent_a.abort();
    let _ = agent_a.await;
    let (sa2, _agent_a) = agent_task(&a, &ovn.nb.remote(), dir.path());
    assert_eq!(sa2, sa);
    for i in 0..10 {
        assert_eq!(
            seen_from(&pa.path(), "172.30.0.100:8080").as_deref(),
            Some("172.30.0.11"),
            "try {i} across the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(ip_link_index(a.netns().name(), "sn-mgmt0"), mgmt_index, "the management port was made again");
    let flows_after = flow_ages(&a);
    assert_eq!(flows_after.len(), flows_before.len(), "{flows_after:?}");
    let waited = restarted.elapsed().as_secs_f64();
    for (flow, age) in &flows_after {
        let before = flows_before.get(flow).unwrap_or_else(|| panic!("a new flow after the restart: {flow}"));
        assert!(*age + 0.5 >= before + waited, "{flow} was replaced: {before} s before, {age} s {waited:.1} s later");
    }

    // Flows deleted behind the agent's back come back.
    let mgmt = format!("unix:{}", a.dir().join("br-ex.mgmt").display());
    sh(&["ovs-ofctl", "del-flows", &mgmt]);
    until("the flows back, pod a out again", Duration::from_secs(15), || {
        seen_from(&pa.path(), "172.30.0.100:8080").as_deref() == Some("172.30.0.11")
    })
    .await;

    // SNAT off: the pod's own address arrives (the outside routes the pod subnets to the nodes).
    sh(&["ip", "-n", &o, "route", "add", "10.244.0.0/24", "via", "172.30.0.11"]);
    sh(&["ip", "-n", &o, "route", "add", "10.244.1.0/24", "via", "172.30.0.12"]);
    backend.reconcile(&build(&engine, &bare_topology(false))).await.unwrap();
    ovn.nbctl(&["--wait=hv", "sync"]).unwrap();
    a.appctl(&["dpctl/flush-conntrack"]).unwrap();
    answers(&pa.path(), "172.30.0.100:8080", "10.244.0.3", "routed, not translated");
    answers(&pb.path(), "172.30.0.100:8080", "10.244.1.3", "routed, not translated (b)");
}
