//! Secondary networks, live on two nodes: a network function with three interfaces — the
//! cluster network, a `layer2` data network shared with pods on the other node, and a
//! `localnet` provider network reaching a "PE router" (a namespace on a segment both nodes
//! bridge through `ovn-bridge-mappings`) that carries its default route — all attached by one
//! CNI ADD per pod (no Multus). A MultiNetworkPolicy isolates a pod on the data network only:
//! real connections, the engine's verdicts and ovn-trace's agree; the primary network is
//! untouched by it.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use stacknet_engine::multinet::{self, Foreign};
use stacknet_engine::objects::{ObjectKey, Protocol};
use stacknet_engine::paths::Endpoint;
use stacknet_engine::reach::{self, ProbeSpec};
use stacknet_engine::{ClusterIndex, PolicyEngine, manifest};
use stacknet_verify::live::{Live, NodeSpec};

const TELCO: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: k8s.cni.cncf.io/v1
  kind: NetworkAttachmentDefinition
  metadata: {name: data, namespace: telco}
  spec: {config: '{"cniVersion": "1.1.0", "name": "data", "type": "stacknet-cni", "topology": "layer2", "subnets": "10.100.0.0/24", "excludeSubnets": "10.100.0.0/29", "mtu": 1300}'}
- apiVersion: k8s.cni.cncf.io/v1
  kind: NetworkAttachmentDefinition
  metadata: {name: provider, namespace: telco}
  spec: {config: '{"cniVersion": "1.1.0", "name": "provider", "type": "stacknet-cni", "topology": "localnet", "physicalNetworkName": "physnet1", "subnets": "192.0.2.0/24", "excludeSubnets": "192.0.2.0/28"}'}
- apiVersion: v1
  kind: Pod
  metadata:
    name: nf
    namespace: telco
    uid: uid-nf
    labels: {app: nf}
    annotations:
      k8s.v1.cni.cncf.io/networks: '[{"name": "data", "interface": "data0"}, {"name": "provider", "interface": "ext0", "ips": ["192.0.2.20/24"], "default-route": ["192.0.2.1"]}]'
  spec: {nodeName: n1, containers: [{name: c, image: i}]}
  status: {podIP: 10.1.0.5}
- apiVersion: v1
  kind: Pod
  metadata: {name: peer, namespace: telco, uid: uid-peer, labels: {app: peer}, annotations: {k8s.v1.cni.cncf.io/networks: data}}
  spec: {nodeName: n2, containers: [{name: c, image: i, ports: [{name: sig, containerPort: 3868}]}]}
  status: {podIP: 10.1.0.6}
- apiVersion: v1
  kind: Pod
  metadata: {name: other, namespace: telco, uid: uid-other, labels: {app: other}, annotations: {k8s.v1.cni.cncf.io/networks: data}}
  spec: {nodeName: n2, containers: [{name: c, image: i}]}
  status: {podIP: 10.1.0.7}
- apiVersion: k8s.cni.cncf.io/v1
  kind: NetworkAttachmentDefinition
  metadata: {name: provider-vlan, namespace: telco}
  spec: {config: '{"cniVersion": "1.1.0", "name": "provider-vlan", "type": "stacknet-cni", "topology": "localnet", "physicalNetworkName": "physnet1", "vlanID": 201, "subnets": "192.0.2.0/24", "excludeSubnets": "192.0.2.0/26"}'}
- apiVersion: v1
  kind: Pod
  metadata: {name: tagged, namespace: telco, uid: uid-tagged, labels: {app: tagged}, annotations: {k8s.v1.cni.cncf.io/networks: provider-vlan@vlan0}}
  spec: {nodeName: n1, containers: [{name: c, image: i}]}
  status: {podIP: 10.1.0.8}
- apiVersion: k8s.cni.cncf.io/v1beta1
  kind: MultiNetworkPolicy
  metadata:
    name: sig-from-nf
    namespace: telco
    annotations: {k8s.v1.cni.cncf.io/policy-for: data}
  spec:
    podSelector: {matchLabels: {app: peer}}
    policyTypes: [Ingress]
    ingress:
    - from: [{podSelector: {matchLabels: {app: nf}}}]
      ports: [{port: sig}]
"#;

const PE: &str = "192.0.2.1";
/// What lies beyond the PE router (an address on its loopback).
const BEYOND: &str = "198.51.100.1";

fn key(name: &str) -> ObjectKey {
    ObjectKey::new("telco", name)
}

fn pod(name: &str) -> Endpoint {
    Endpoint::Pod(key(name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_interfaces_on_two_nodes_with_a_multi_network_policy_on_the_data_network() {
    let index = ClusterIndex::from_objects(manifest::parse("telco.yaml", TELCO).unwrap().objects);
    let engine = PolicyEngine::from_index(index);
    let plugin = Path::new(env!("CARGO_BIN_EXE_stacknet-cni"));
    let nodes = [NodeSpec { name: "n1".into(), uplink: None }, NodeSpec { name: "n2".into(), uplink: None }];
    let mut live = Live::start_cluster("mn", plugin, &nodes, None).await.unwrap();
    let pe: IpAddr = PE.parse().unwrap();
    live.provider_network("physnet1", &[("pe".into(), pe, 24, vec![BEYOND.parse().unwrap()])]).unwrap();
    live.program(&engine).await.unwrap();
    let specs = [ProbeSpec { port: 3868, protocol: Protocol::Tcp }, ProbeSpec { port: 80, protocol: Protocol::Tcp }];
    live.listen_everywhere(&specs).await.unwrap();
    live.listen_beyond("pe", BEYOND.parse().unwrap(), &specs[1..]).await.unwrap();

    // Every interface is there with what the network gave it.
    let data = |p: &str, i: &str| live.attachment_address(&key(p), i).unwrap_or_else(|| panic!("{p} has no {i}"));
    assert_eq!(data("nf", "data0").to_string(), "10.100.0.8", "past the excluded /29");
    assert_eq!(data("nf", "ext0").to_string(), "192.0.2.20", "as asked");
    let mtu = std::process::Command::new("ip")
        .args(["netns", "exec", &netns_name(&live, "nf"), "cat", "/sys/class/net/data0/mtu"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&mtu.stdout).trim(), "1300", "the data network's MTU");

    // The data network: live next to the engine, on both ports, for every pair.
    let net = ObjectKey::new("telco", "data");
    let plan = multinet::Allocator::default().sync(engine.index(), Foreign::Refuse, stacknet_ovn::secondary::accepts);
    let on_data = multinet::network_index(engine.index(), &plan, &net);
    let expected = reach::direct(&on_data, &specs);
    let iface = |p: &str| if p == "nf" { "data0" } else { "net1" };
    let mut checked = 0;
    for (spec, matrix) in specs.iter().zip(&expected) {
        for (from, to, allowed) in matrix.pairs() {
            let addr = SocketAddr::new(data(&to.name, iface(&to.name)), spec.port);
            let got = live.dial(&pod(&from.name), addr, spec.protocol).await.unwrap();
            let live_allowed = got.as_deref() == Some(to.to_string().as_str());
            assert_eq!(live_allowed, allowed, "{from} -> {to} on data:{}: live {got:?}, engine {allowed}", spec.port);
            let traced = live
                .trace()
                .decide_on_network((from, iface(&from.name)), (to, iface(&to.name)), spec.port, spec.protocol)
                .unwrap();
            assert_eq!(traced, allowed, "{from} -> {to} on data:{}: ovn-trace {traced}, engine {allowed}", spec.port);
            checked += 1;
        }
    }
    assert_eq!(checked, 12, "3 pods, both ways, 2 ports");
    let m = &expected[0];
    let verdict = |a: &str, b: &str| m.pairs().find(|(f, t, _)| f.name == a && t.name == b).map(|(_, _, v)| v);
    assert_eq!(verdict("nf", "peer"), Some(true), "the policy admits nf");
    assert_eq!(verdict("other", "peer"), Some(false), "and nobody else");

    // The policy is for the data network only: on the cluster network other reaches peer.
    let peer_primary = SocketAddr::new("10.1.0.6".parse().unwrap(), 3868);
    assert_eq!(live.dial(&pod("other"), peer_primary, Protocol::Tcp).await.unwrap().as_deref(), Some("telco/peer"));

    // The provider network: nf and the PE router reach each other, and nf's default route
    // goes through the PE router to what lies beyond it.
    let pe_name = Endpoint::External("pe".into()).to_string();
    let to_pe = live.dial(&pod("nf"), SocketAddr::new(pe, 80), Protocol::Tcp).await.unwrap();
    assert_eq!(to_pe.as_deref(), Some(pe_name.as_str()));
    let from_pe = live
        .dial(&Endpoint::External("pe".into()), SocketAddr::new(data("nf", "ext0"), 80), Protocol::Tcp)
        .await
        .unwrap();
    assert_eq!(from_pe.as_deref(), Some("telco/nf"));
    let (traced, output) =
        live.trace().trace_to_provider((&key("nf"), "ext0"), pe, "0a:00:00:00:02:01", 80, Protocol::Tcp).unwrap();
    assert!(traced, "ovn-trace: out of the localnet port: {output}");
    // Beyond the PE router: a listener on its loopback address (started above).
    let beyond = live.dial(&pod("nf"), SocketAddr::new(BEYOND.parse().unwrap(), 80), Protocol::Tcp).await.unwrap();
    assert_eq!(beyond.as_deref(), Some(pe_name.as_str()), "nf's default route is ext0, via the PE router");
    // peer has no provider interface: the PE router is not on its network.
    assert_eq!(live.dial(&pod("peer"), SocketAddr::new(pe, 80), Protocol::Tcp).await.unwrap(), None);

    // A VLAN provider network on the same physical network. This kernel has no 8021q, so no
    // namespace here can terminate the tag: ovn-trace delivers to the localnet port, the
    // Southbound port binding carries the tag, and ovs-vswitchd's own trace of a real packet
    // on the node pushes it on the way to the provider bridge; the untagged PE router, on
    // another VLAN, is not reached.
    let tagged = ("tagged", "vlan0");
    let vlan0 = live.attachment_address(&key(tagged.0), tagged.1).unwrap();
    assert_eq!(vlan0.to_string(), "192.0.2.64", "past the excluded /26");
    let (traced, output) =
        live.trace().trace_to_provider((&key("tagged"), "vlan0"), pe, "0a:00:00:00:02:01", 80, Protocol::Tcp).unwrap();
    assert!(traced, "ovn-trace: out of the localnet port: {output}");
    let tag = live
        .trace()
        .ovn()
        .sbctl(&["--bare", "--columns=tag", "find", "Port_Binding", "logical_port=mn_net_telco_provider-vlan_localnet"])
        .unwrap();
    assert_eq!(tag.trim(), "201", "the localnet port's tag in the Southbound database");
    let (port, chassis) = live.host_end(&key("tagged"), "vlan0").unwrap();
    let flow = format!(
        "in_port={port},tcp,dl_src=0a:58:c0:00:02:40,dl_dst=0a:00:00:00:02:01,nw_src=192.0.2.64,nw_dst={PE},nw_ttl=64,tp_src=40000,tp_dst=80"
    );
    let actions = chassis.appctl(&["ofproto/trace", "br-int", &flow]).unwrap();
    let last = actions.lines().rev().find(|l| l.starts_with("Datapath actions")).unwrap_or_default().to_string();
    assert!(last.contains("push_vlan(vid=201"), "the datapath pushes VLAN 201: {last}\n{actions}");
    assert_eq!(live.dial(&pod("tagged"), SocketAddr::new(pe, 80), Protocol::Tcp).await.unwrap(), None);

    live.shutdown().await.unwrap();
}

fn netns_name(live: &Live, pod: &str) -> String {
    let path = live.pod_netns_path(&key(pod)).unwrap();
    path.file_name().unwrap().to_string_lossy().into_owned()
}
