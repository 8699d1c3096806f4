//! North–south under ovn-trace, over the rows the controller writes: a node's management port
//! reaches its own pods under deny-all and not the pods of other nodes; a pod's traffic for
//! outside the cluster leaves through its own node's gateway router, translated to that node's
//! address, out of that node's external switch's localnet port; without SNAT it leaves with
//! the pod's address; a node with no gateway router leaves its pods inside.

use stacknet_engine::{ClusterIndex, PolicyEngine, manifest};
use stacknet_ovn::topology::{Gateways, mac_for};
use stacknet_ovn::{NodeNet, Topology};
use stacknet_verify::OvnTrace;

const CLUSTER: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: x}, spec: {nodeName: node-a}, status: {podIP: 10.244.0.3}}
- {apiVersion: v1, kind: Pod, metadata: {name: c, namespace: y, labels: {app: web}}, spec: {nodeName: node-b}, status: {podIP: 10.244.1.4}}
- {apiVersion: v1, kind: Service, metadata: {name: web, namespace: y},
   spec: {type: NodePort, clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80, targetPort: 8080, nodePort: 30080}]}}
- {apiVersion: v1, kind: Service, metadata: {name: local, namespace: y},
   spec: {type: NodePort, clusterIP: 10.96.0.11, selector: {app: web}, externalTrafficPolicy: Local, ports: [{port: 80, targetPort: 8080, nodePort: 30081}]}}
- {apiVersion: v1, kind: Service, metadata: {name: lb, namespace: y},
   spec: {type: LoadBalancer, clusterIP: 10.96.0.12, selector: {app: web}, loadBalancerSourceRanges: [172.30.0.96/28],
          ports: [{port: 80, targetPort: 8080, nodePort: 30082}]}}
- {apiVersion: v1, kind: Pod, metadata: {name: d, namespace: y}, spec: {nodeName: node-c}, status: {podIP: 10.244.2.3}}
- {apiVersion: v1, kind: Pod, metadata: {name: e, namespace: y}, spec: {nodeName: node-b}, status: {podIP: 10.244.1.5}}
- {apiVersion: v1, kind: Service, metadata: {name: open, namespace: y},
   spec: {type: LoadBalancer, clusterIP: 10.96.0.16, selector: {app: web}, ports: [{port: 80, targetPort: 8080, nodePort: 30084}]}}
- {apiVersion: v1, kind: Service, metadata: {name: ext, namespace: y},
   spec: {clusterIP: 10.96.0.15, selector: {app: web}, externalIPs: [172.30.0.150], ports: [{port: 80, targetPort: 8080}]}}
- {apiVersion: v1, kind: Service, metadata: {name: itp, namespace: y},
   spec: {clusterIP: 10.96.0.13, selector: {app: web}, internalTrafficPolicy: Local, ports: [{port: 80, targetPort: 8080}]}}
- {apiVersion: v1, kind: Service, metadata: {name: sig, namespace: y},
   spec: {type: NodePort, clusterIP: 10.96.0.14, selector: {app: web}, ports: [{port: 9000, protocol: SCTP, nodePort: 30090}]}}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: deny-all, namespace: x}
  spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
"#;

fn topology(snat: bool) -> Topology {
    let mut t = bare_topology(snat);
    let engine = engine();
    let lb_ips = std::collections::BTreeMap::from([
        (stacknet_engine::ObjectKey::new("y", "lb"), "172.30.0.201".parse::<std::net::IpAddr>().unwrap()),
        (stacknet_engine::ObjectKey::new("y", "open"), "172.30.0.202".parse::<std::net::IpAddr>().unwrap()),
    ]);
    let inside = ["10.244.0.0/16".parse().unwrap(), "10.96.0.0/12".parse().unwrap()];
    let (exposures, problems) = stacknet_engine::service::exposures(engine.index(), &lb_ips, &inside);
    assert!(problems.is_empty(), "{problems:?}");
    t.exposures = exposures;
    t.load_balancer_ips = lb_ips;
    t
}

fn bare_topology(snat: bool) -> Topology {
    let node = |name: &str, i: u8, address: Option<&str>, join: Option<&str>| NodeNet {
        name: name.into(),
        subnets: vec![(format!("10.244.{i}.0/24").parse().unwrap(), format!("10.244.{i}.1").parse().unwrap())],
        management: vec![format!("10.244.{i}.2").parse().unwrap()],
        addresses: address.iter().map(|a| a.parse().unwrap()).collect(),
        join: join.map(|j| j.parse().unwrap()),
    };
    Topology {
        cluster: "ns".into(),
        nodes: vec![
            node("node-a", 0, Some("172.30.0.11"), Some("100.64.0.2")),
            node("node-b", 1, Some("172.30.0.12"), Some("100.64.0.3")),
            // No uplink: no gateway router.
            node("node-c", 2, None, None),
        ],
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

fn engine() -> PolicyEngine {
    PolicyEngine::from_index(ClusterIndex::from_objects(manifest::parse("c.yaml", CLUSTER).unwrap().objects))
}

/// A TCP SYN from `(port, ip)` on node switch `node` to `dst`, first hop `eth_dst`.
fn flow(port: &str, ip: &str, eth_dst: &str, dst: &str) -> String {
    l4_flow(port, ip, eth_dst, dst, "tcp", 80)
}

/// [`flow`] over `l4` (`tcp`, `udp`, `sctp`) to port `dport`.
fn l4_flow(port: &str, ip: &str, eth_dst: &str, dst: &str, l4: &str, dport: u16) -> String {
    let mac = mac_for(ip.parse().unwrap());
    format!(
        "inport == \"{port}\" && eth.src == {mac} && eth.dst == {eth_dst} && ip4.src == {ip} && ip4.dst == {dst} && ip.ttl == 64 && {l4} && {l4}.src == 40000 && {l4}.dst == {dport}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_their_pods_and_pods_leave_through_their_own_node_translated() {
    let engine = engine();
    let mut trace = OvnTrace::start("ns").unwrap();
    trace.program_with(&engine, &topology(true)).await.unwrap();
    let ovn = trace.ovn();
    let gw = |i: u8| mac_for(format!("10.244.{i}.1").parse().unwrap());
    let pod_mac = |ip: &str| mac_for(ip.parse().unwrap());

    // node-a's management port to its own pod a (deny-all in x): delivered; node-b's: dropped.
    let f = flow("ns_mgmt.node-a", "10.244.0.2", &pod_mac("10.244.0.3"), "10.244.0.3");
    assert!(ovn.trace("ns_node-a", &f, "ns_x_a", 2, None).unwrap().delivered, "node-a -> its pod");
    let f = flow("ns_mgmt.node-b", "10.244.1.2", &gw(1), "10.244.0.3");
    let t = ovn.trace("ns_node-b", &f, "ns_x_a", 2, None).unwrap();
    assert!(!t.delivered, "node-b -> pod a on node-a must be dropped: {}", t.output);

    // The outside host's and the next hop's MACs, as the gateway routers would learn them by
    // ARP (ovn-trace follows the packet only once the MAC is known).
    for n in ["node-a", "node-b"] {
        let port = format!("ns_gtoe.{n}");
        let dp = ovn
            .sbctl(&["--bare", "--columns=datapath", "find", "Port_Binding", &format!("logical_port={port}")])
            .unwrap();
        for (ip, mac) in [("172.30.0.100", "0a:00:00:00:00:64"), ("172.30.0.1", "0a:00:00:00:00:01")] {
            ovn.sbctl(&[
                "create",
                "MAC_Binding",
                &format!("logical_port={port}"),
                &format!("ip={ip}"),
                &format!("mac=\"{mac}\""),
                &format!("datapath={}", dp.trim()),
            ])
            .unwrap();
        }
    }
    // Pod c (node-b) to an outside host: out of node-b's localnet port, from node-b's address.
    let f = flow("ns_y_c", "10.244.1.4", &gw(1), "172.30.0.100");
    let t = ovn.trace("ns_node-b", &f, "ns_localnet.node-b", 2, None).unwrap();
    assert!(t.delivered, "{}", t.output);
    assert!(t.output.contains("ct_snat(ip4.src=172.30.0.12)"), "translated to node-b's address: {}", t.output);
    // Beyond the external network too, through the next hop.
    let f = flow("ns_y_c", "10.244.1.4", &gw(1), "198.51.100.10");
    let t = ovn.trace("ns_node-b", &f, "ns_localnet.node-b", 2, None).unwrap();
    assert!(t.delivered && t.output.contains("ct_snat(ip4.src=172.30.0.12)"), "{}", t.output);
    // Pod a (node-a) is under egress deny-all: nothing leaves.
    let f = flow("ns_x_a", "10.244.0.3", &gw(0), "172.30.0.100");
    assert!(!ovn.trace("ns_node-a", &f, "ns_localnet.node-a", 2, None).unwrap().delivered);
    // Pod d's node has no uplink: its traffic for outside goes nowhere (node-c has no gateway
    // router, and no other node's is used).
    let f = flow("ns_y_d", "10.244.2.3", &gw(2), "172.30.0.100");
    for n in ["node-a", "node-b"] {
        let t = ovn.trace("ns_node-c", &f, &format!("ns_localnet.{n}"), 2, None).unwrap();
        assert!(!t.delivered, "pod d left through {n}: {}", t.output);
    }
    // Inside the cluster nothing changed: pod c reaches pod d across nodes untranslated.
    let f = flow("ns_y_c", "10.244.1.4", &gw(1), "10.244.2.3");
    let t = ovn.trace("ns_node-b", &f, "ns_y_d", 2, None).unwrap();
    assert!(t.delivered && !t.output.contains("ct_snat"), "{}", t.output);

    // Services from outside (the outside host 172.30.0.100 on node-a's, node-b's uplink).
    let outside = |node: &str, src: &str, dst: &str, port: u16| {
        let mac = mac_for(format!("172.30.0.1{}", if node == "node-a" { 1 } else { 2 }).parse().unwrap());
        format!(
            "inport == \"ns_localnet.{node}\" && eth.src == 0a:00:00:00:00:64 && eth.dst == {mac} && ip4.src == {src} && ip4.dst == {dst} && ip.ttl == 64 && tcp && tcp.src == 40000 && tcp.dst == {port}"
        )
    };
    let from_outside = |node: &str, src: &str, dst: &str, port: u16| {
        let f = outside(node, src, dst, port);
        ovn.trace(&format!("ns_ext.{node}"), &f, "ns_y_c", 4, Some("10.244.1.4:8080")).unwrap()
    };
    // NodePort on every node's address.
    let t = from_outside("node-a", "172.30.0.100", "172.30.0.11", 30080);
    assert!(t.delivered, "NodePort on node-a: {}", t.output);
    // (ovn-trace does not carry the load balancer's force-SNAT flag into the egress stage;
    // the live test sees the join address arrive.)
    assert!(from_outside("node-b", "172.30.0.100", "172.30.0.12", 30080).delivered, "NodePort on node-b");
    // externalTrafficPolicy Local: node-a has no backend and does not forward; node-b keeps
    // the client's address.
    let t = from_outside("node-a", "172.30.0.100", "172.30.0.11", 30081);
    assert!(!t.delivered, "ETP=Local through node-a: {}", t.output);
    let t = from_outside("node-b", "172.30.0.100", "172.30.0.12", 30081);
    // (Whether the client's address is kept, ovn-trace cannot tell: it drops the load
    // balancer's skip-SNAT flag at the egress stage. The live test sees it arrive.)
    assert!(t.delivered, "ETP=Local through node-b: {}", t.output);
    // The load balancer's address, from inside loadBalancerSourceRanges and from outside them.
    assert!(from_outside("node-a", "172.30.0.100", "172.30.0.201", 80).delivered, "LB from an allowed source");
    let t = from_outside("node-a", "172.30.0.50", "172.30.0.201", 80);
    assert!(!t.delivered, "LB from outside the source ranges: {}", t.output);
    // A pod dialling a load balancer address: through its node's gateway router and back in;
    // loadBalancerSourceRanges hold for pods too (dropped on the join switch).
    let f = l4_flow("ns_y_e", "10.244.1.5", &gw(1), "172.30.0.202", "tcp", 80);
    let t = ovn.trace("ns_node-b", &f, "ns_y_c", 8, None).unwrap();
    assert!(t.delivered, "pod -> a load balancer address: {}", t.output);
    let f = l4_flow("ns_y_e", "10.244.1.5", &gw(1), "172.30.0.201", "tcp", 80);
    let t = ovn.trace("ns_node-b", &f, "ns_y_c", 8, None).unwrap();
    assert!(!t.delivered, "pod -> a load balancer address, outside its source ranges: {}", t.output);
    // (Routed onto the join switch, and dropped there.)
    let join_router = mac_for("100.64.0.1".parse().unwrap());
    assert!(t.output.contains(&format!("eth.src = {join_router}")), "{}", t.output);

    // An external IP, answered by the gateway routers like the load balancer's address.
    let t = from_outside("node-b", "172.30.0.50", "172.30.0.150", 80);
    assert!(t.delivered, "externalIPs: {}", t.output);

    // A pod dials a NodePort on a node's address: its own switch balances it (pod d on node-c,
    // which has no gateway router, through node-a's address).
    let f = l4_flow("ns_y_d", "10.244.2.3", &gw(2), "172.30.0.11", "tcp", 30080);
    let t = ovn.trace("ns_node-c", &f, "ns_y_c", 4, Some("10.244.1.4:8080")).unwrap();
    assert!(t.delivered, "pod -> NodePort on node-a: {}", t.output);
    // internalTrafficPolicy Local: only a backend on the client's own node. Pod e shares
    // node-b with the backend c; pod d (node-c) has none and is rejected.
    let f = l4_flow("ns_y_e", "10.244.1.5", &gw(1), "10.96.0.13", "tcp", 80);
    let t = ovn.trace("ns_node-b", &f, "ns_y_c", 4, Some("10.244.1.4:8080")).unwrap();
    assert!(t.delivered, "ITP=Local, a local backend: {}", t.output);
    // (No --lb-dst here: ovn-trace would pretend the VIP picked it.)
    let f = l4_flow("ns_y_d", "10.244.2.3", &gw(2), "10.96.0.13", "tcp", 80);
    let t = ovn.trace("ns_node-c", &f, "ns_y_c", 4, None).unwrap();
    assert!(!t.delivered && t.output.contains("tcp_reset"), "ITP=Local, none on node-c: rejected: {}", t.output);
    // SCTP (no kernel SCTP here: ovn-trace only): the cluster IP from a pod, and the NodePort
    // from outside.
    let f = l4_flow("ns_y_d", "10.244.2.3", &gw(2), "10.96.0.14", "sctp", 9000);
    let t = ovn.trace("ns_node-c", &f, "ns_y_c", 4, Some("10.244.1.4:9000")).unwrap();
    assert!(t.delivered, "SCTP through the cluster IP: {}", t.output);
    let f = outside("node-a", "172.30.0.100", "172.30.0.11", 30090)
        .replace("tcp && tcp.src == 40000 && tcp.dst", "sctp && sctp.src == 40000 && sctp.dst");
    let t = ovn.trace("ns_ext.node-a", &f, "ns_y_c", 4, Some("10.244.1.4:9000")).unwrap();
    assert!(t.delivered, "SCTP NodePort from outside: {}", t.output);

    // SNAT off: the pod's own address leaves.
    trace.program_with(&engine, &bare_topology(false)).await.unwrap();
    let f = flow("ns_y_c", "10.244.1.4", &gw(1), "172.30.0.100");
    let t = trace.ovn().trace("ns_node-b", &f, "ns_localnet.node-b", 2, None).unwrap();
    assert!(t.delivered && !t.output.contains("ct_snat"), "{}", t.output);
}
