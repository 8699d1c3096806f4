//! Nested pods (the node is a VM, pods are VLAN subinterfaces of its NIC) at the OVN level:
//! their ports nest in the VM's port (`parent_name`) with a VLAN tag ovn-northd allocates,
//! policies hold for them like for any pod (ovn-trace), and the tag northd wrote does not make
//! the backend rewrite anything. This kernel has no 8021q, so the VLAN devices themselves
//! cannot be made here.

use std::collections::BTreeSet;

use stacknet_engine::objects::{ObjectKey, Protocol};
use stacknet_engine::{ClusterIndex, PolicyEngine, manifest};
use stacknet_ovn::Topology;
use stacknet_verify::{OvnTrace, Probe};

const CLUSTER: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: x, uid: u-a, labels: {app: a}}, spec: {nodeName: vm-worker}, status: {podIP: 10.1.0.1}}
- {apiVersion: v1, kind: Pod, metadata: {name: b, namespace: x, uid: u-b, labels: {app: b}}, spec: {nodeName: vm-worker}, status: {podIP: 10.1.0.2}}
- {apiVersion: v1, kind: Pod, metadata: {name: c, namespace: x, uid: u-c, labels: {app: c}}, spec: {nodeName: bare-metal}, status: {podIP: 10.1.0.3}}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: b-from-a, namespace: x}
  spec:
    podSelector: {matchLabels: {app: b}}
    ingress: [{from: [{podSelector: {matchLabels: {app: a}}}], ports: [{port: 80}]}]
"#;

fn probe(from: &str, to: &str, port: u16) -> Probe {
    Probe { from: ObjectKey::new("x", from), to: ObjectKey::new("x", to), port, protocol: Protocol::Tcp }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_ports_get_parent_and_tag_and_policies_hold() {
    let engine =
        PolicyEngine::from_index(ClusterIndex::from_objects(manifest::parse("c.yaml", CLUSTER).unwrap().objects));
    let mut trace = OvnTrace::start("nested").unwrap();
    // The VM's own port, on a network of the cloud's (not ours: Neutron made it).
    trace.ovn().nbctl(&["ls-add", "vm-net", "--", "lsp-add", "vm-net", "vm-worker-port"]).unwrap();
    let topology = Topology::from_pods("nested", engine.index()).with_nested("vm-worker", "vm-worker-port");
    trace.program_with(&engine, &topology).await.unwrap();

    let lsp = |name: &str| trace.desired().ports[&ObjectKey::new("x", name)].lsp.clone();
    let column = |name: &str, col: &str| {
        trace
            .ovn()
            .nbctl(&["--bare", "--columns", col, "find", "Logical_Switch_Port", &format!("name={}", lsp(name))])
            .unwrap()
            .trim()
            .to_string()
    };
    // Pods on the VM nest in its port, each with its own VLAN tag; the bare-metal pod does not.
    let mut tags = BTreeSet::new();
    for p in ["a", "b"] {
        assert_eq!(column(p, "parent_name"), "vm-worker-port");
        let tag: u16 = column(p, "tag").parse().unwrap_or_else(|e| panic!("{p}: tag {:?}: {e}", column(p, "tag")));
        assert!((1..=4095).contains(&tag), "{p}: tag {tag}");
        tags.insert(tag);
        assert_eq!(column(p, "options"), "iface-id-ver=u-".to_string() + p, "a nested port is bound where its VM is");
    }
    assert_eq!(tags.len(), 2, "tags collide: {tags:?}");
    assert_eq!(column("c", "parent_name"), "");
    assert_eq!(column("c", "tag"), "");
    // The VM's port is someone else's: untouched.
    assert_eq!(
        trace
            .ovn()
            .nbctl(&["--bare", "--columns=external_ids", "list", "Logical_Switch_Port", "vm-worker-port"])
            .unwrap()
            .trim(),
        ""
    );

    // Policies hold for nested pods as for any other.
    let verdicts: Vec<bool> = trace
        .decide_all(&[
            probe("a", "b", 80),
            probe("c", "b", 80),
            probe("a", "b", 81),
            probe("b", "a", 80),
            probe("b", "c", 80),
        ])
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(verdicts, [true, false, false, true, true]);

    // The tags northd chose are not ours to fight over: programming again changes nothing.
    let again = trace.program_with(&engine, &topology).await.unwrap();
    assert_eq!(again.transactions, 0, "{:?}", again.summary);
}
