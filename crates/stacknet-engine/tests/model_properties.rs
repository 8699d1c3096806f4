//! Property tests over random clusters and policies:
//! - verdicts over the compiled model equal the direct semantics, pair by pair;
//! - the model kept current event by event equals a full compile of the same index;
//! - pod events change set membership only, never rules;
//! - rules do not depend on pods at all.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;
use stacknet_engine::labels::{Labels, Requirement, Selector};
use stacknet_engine::model::{Delta, SetRef};
use stacknet_engine::objects::Kind;
use stacknet_engine::objects::{
    ClusterObject, ContainerPort, IpBlock, Namespace, NamespaceScope, NetworkPolicy, ObjectKey, Peer, PeerSelector,
    Pod, PolicyPort, PolicyPortSpec, PolicyRule, PortMatch, Protocol,
};
use stacknet_engine::{Cidr, ClusterIndex, PolicyEngine, semantics};

/// Every set that exists and its members with their addresses: what a backend mirrors.
type SetsView = BTreeMap<SetRef, BTreeMap<ObjectKey, Vec<IpAddr>>>;

fn sets_view(engine: &PolicyEngine) -> SetsView {
    let index = engine.index();
    let addresses = |k: &ObjectKey| index.pod(index.pod_id(k).unwrap()).unwrap().ips.clone();
    let members = |m: &BTreeSet<ObjectKey>| m.iter().map(|k| (k.clone(), addresses(k))).collect::<BTreeMap<_, _>>();
    let model = engine.model();
    let mut view = SetsView::new();
    for (k, g) in &model.groups {
        view.insert(SetRef::Group(k.clone()), members(&g.members));
    }
    for (id, s) in &model.peer_sets {
        view.insert(SetRef::PeerSet(id.clone()), members(&s.members));
    }
    for (key, ports) in &model.named_ports {
        for (port, pods) in ports {
            view.insert(SetRef::NamedPort { key: key.clone(), port: *port }, members(pods));
        }
    }
    for ((namespace, direction), pods) in &model.default_deny {
        view.insert(SetRef::DefaultDeny { namespace: namespace.clone(), direction: *direction }, members(pods));
    }
    view
}

/// Applies a delta the way a backend would: create sets, change members, drop sets.
fn replay(view: &mut SetsView, delta: &Delta) -> Result<(), TestCaseError> {
    for s in &delta.sets_created {
        prop_assert!(view.insert(s.clone(), BTreeMap::new()).is_none(), "created twice: {:?}", s);
    }
    for c in &delta.membership {
        let members = view.get_mut(&c.set);
        prop_assert!(members.is_some(), "change to a set that does not exist: {:?}", c);
        let members = members.unwrap();
        if c.added {
            prop_assert!(members.insert(c.pod.clone(), c.addresses.clone()).is_none(), "added twice: {:?}", c);
        } else {
            prop_assert_eq!(members.remove(&c.pod), Some(c.addresses.clone()), "{:?}", c);
        }
    }
    for s in &delta.sets_dropped {
        let gone = view.remove(s);
        prop_assert!(gone.is_some_and(|m| m.is_empty()), "dropped a missing or non-empty set: {:?}", s);
    }
    Ok(())
}

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const KEYS: [&str; 3] = ["app", "tier", "env"];
const VALUES: [&str; 3] = ["a", "b", "c"];
const PORT_NAMES: [&str; 2] = ["http", "metrics"];
const PROBE_PORTS: [u16; 4] = [80, 81, 443, 8080];
const PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

fn labels() -> impl Strategy<Value = Labels> {
    proptest::collection::btree_map(
        proptest::sample::select(&KEYS[..]).prop_map(String::from),
        proptest::sample::select(&VALUES[..]).prop_map(String::from),
        0..3,
    )
}

fn requirement() -> impl Strategy<Value = Requirement> {
    let key = proptest::sample::select(&KEYS[..]).prop_map(String::from);
    let values = proptest::collection::vec(proptest::sample::select(&VALUES[..]).prop_map(String::from), 1..3);
    prop_oneof![
        (key.clone(), values.clone()).prop_map(|(k, v)| Requirement::In(k, v)),
        (key.clone(), values).prop_map(|(k, v)| Requirement::NotIn(k, v)),
        key.clone().prop_map(Requirement::Exists),
        key.prop_map(Requirement::DoesNotExist),
    ]
}

fn selector() -> impl Strategy<Value = Selector> {
    proptest::collection::vec(requirement(), 0..3).prop_map(Selector::new)
}

fn ns_selector() -> impl Strategy<Value = Selector> {
    prop_oneof![
        selector(),
        proptest::sample::select(&NAMESPACES[..])
            .prop_map(|n| Selector::from_labels([("kubernetes.io/metadata.name", n)])),
    ]
}

fn cidr() -> impl Strategy<Value = Cidr> {
    (0u8..4, 0u8..4, prop_oneof![Just(8u8), Just(16), Just(24), Just(32)])
        .prop_map(|(a, b, len)| Cidr::new(IpAddr::V4(Ipv4Addr::new(10, a, b, 1)), len).unwrap())
}

fn peer(ns: &'static str) -> impl Strategy<Value = Peer> {
    prop_oneof![
        selector()
            .prop_map(move |s| Peer::Pods(PeerSelector { namespaces: NamespaceScope::Named(ns.into()), pods: s })),
        (ns_selector(), selector())
            .prop_map(|(n, s)| Peer::Pods(PeerSelector { namespaces: NamespaceScope::Selected(n), pods: s })),
        (cidr(), proptest::collection::vec(cidr(), 0..3)).prop_map(|(c, ex)| {
            let except = ex.into_iter().filter(|e| c.covers(e) && e.prefix_len() > c.prefix_len()).collect();
            Peer::IpBlock(IpBlock { cidr: c, except })
        }),
    ]
}

fn policy_port() -> impl Strategy<Value = PolicyPort> {
    let protocol = proptest::sample::select(&PROTOCOLS[..]);
    let spec = prop_oneof![
        Just(PolicyPortSpec::Numbers(PortMatch::Any)),
        proptest::sample::select(&PROBE_PORTS[..])
            .prop_map(|p| PolicyPortSpec::Numbers(PortMatch::Range { from: p, to: p })),
        (80u16..90, 0u16..500).prop_map(|(a, w)| PolicyPortSpec::Numbers(PortMatch::Range { from: a, to: a + w })),
        proptest::sample::select(&PORT_NAMES[..]).prop_map(|n| PolicyPortSpec::Named(n.into())),
    ];
    (protocol, spec).prop_map(|(protocol, port)| PolicyPort { protocol, port })
}

fn rule(ns: &'static str) -> impl Strategy<Value = PolicyRule> {
    (proptest::collection::vec(peer(ns), 0..3), proptest::collection::vec(policy_port(), 0..3))
        .prop_map(|(peers, ports)| PolicyRule { peers, ports })
}

fn rules(ns: &'static str) -> impl Strategy<Value = Option<Vec<PolicyRule>>> {
    proptest::option::of(proptest::collection::vec(rule(ns), 0..3))
}

fn policy(i: usize) -> impl Strategy<Value = NetworkPolicy> {
    proptest::sample::select(&NAMESPACES[..]).prop_flat_map(move |ns| {
        (selector(), rules(ns), rules(ns)).prop_map(move |(pod_selector, ingress, egress)| NetworkPolicy {
            key: ObjectKey::new(ns, format!("p{i}")),
            uid: None,
            pod_selector,
            ingress,
            egress,
        })
    })
}

fn container_ports() -> impl Strategy<Value = Vec<ContainerPort>> {
    proptest::collection::vec(
        (
            proptest::option::of(proptest::sample::select(&PORT_NAMES[..]).prop_map(String::from)),
            proptest::sample::select(&PROBE_PORTS[..]),
            proptest::sample::select(&PROTOCOLS[..]),
        )
            .prop_map(|(name, port, protocol)| ContainerPort { name, port, protocol }),
        0..3,
    )
}

/// Pod i lives in namespace i mod 3 (pods never move) and gets address 10.<i/4>.<i%4>.1 when it
/// has one: unique, and spread over the CIDRs above.
fn pod(i: usize) -> impl Strategy<Value = Pod> {
    let ns = NAMESPACES[i % 3];
    (labels(), container_ports(), 0u8..10).prop_map(move |(labels, ports, kind)| Pod {
        key: ObjectKey::new(ns, format!("pod{i}")),
        uid: None,
        labels,
        ips: if kind == 0 { vec![] } else { vec![IpAddr::V4(Ipv4Addr::new(10, (i / 4) as u8, (i % 4) as u8, 1))] },
        status_ips: vec![],
        host_network: kind == 1,
        ports,
        node: None,
        terminated: kind == 2,
        network_annotation: None,
        networks_annotation: None,
        network_status_annotation: None,
        sriov_devices_annotation: None,
    })
}

fn namespace() -> impl Strategy<Value = Namespace> {
    (proptest::sample::select(&NAMESPACES[..]), labels()).prop_map(|(n, l)| {
        let mut ns = Namespace::implied(n);
        ns.labels.extend(l);
        ns.labels.insert("kubernetes.io/metadata.name".into(), n.into());
        ns
    })
}

#[derive(Debug, Clone)]
struct Cluster {
    namespaces: Vec<Namespace>,
    pods: Vec<Pod>,
    policies: Vec<NetworkPolicy>,
}

fn cluster() -> impl Strategy<Value = Cluster> {
    (0usize..8, 0usize..5).prop_flat_map(|(npods, npol)| {
        let pods: Vec<_> = (0..npods).map(pod).collect();
        let policies: Vec<_> = (0..npol).map(policy).collect();
        (proptest::collection::vec(namespace(), 0..3), pods, policies)
            .prop_map(|(namespaces, pods, policies)| Cluster { namespaces, pods, policies })
    })
}

fn index_of(c: &Cluster) -> ClusterIndex {
    let objects = c
        .namespaces
        .iter()
        .cloned()
        .map(ClusterObject::Namespace)
        .chain(c.pods.iter().cloned().map(ClusterObject::Pod))
        .chain(c.policies.iter().cloned().map(ClusterObject::NetworkPolicy));
    ClusterIndex::from_objects(objects)
}

/// Every pair, port and protocol: the compiled model must agree with the semantics (pods that
/// have terminated take no traffic and are not probed, as in `stacknet reach`).
fn assert_model_agrees(engine: &PolicyEngine) -> Result<(), TestCaseError> {
    let index = engine.index();
    let pods = stacknet_engine::reach::probe_pods(index);
    for &a in &pods {
        for &b in &pods {
            if a == b {
                continue;
            }
            for port in PROBE_PORTS {
                for protocol in PROTOCOLS {
                    let (pa, pb) = (index.pod(a).unwrap(), index.pod(b).unwrap());
                    let direct = semantics::evaluate(index, pa, pb, port, protocol).allowed();
                    let compiled = engine.allowed_by_model(a, b, port, protocol);
                    prop_assert_eq!(direct, compiled, "{} -> {} {}/{}", pa.key, pb.key, port, protocol);
                }
            }
        }
    }
    Ok(())
}

/// A change a watch could deliver.
#[derive(Debug, Clone)]
enum Change {
    Pod(Pod),
    DeletePod(usize),
    Namespace(Namespace),
    DeleteNamespace(usize),
    Policy(NetworkPolicy),
    DeletePolicy(usize),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        3 => (0usize..8).prop_flat_map(pod).prop_map(Change::Pod),
        1 => (0usize..8).prop_map(Change::DeletePod),
        1 => namespace().prop_map(Change::Namespace),
        1 => (0usize..3).prop_map(Change::DeleteNamespace),
        2 => (0usize..5).prop_flat_map(policy).prop_map(Change::Policy),
        1 => (0usize..5).prop_map(Change::DeletePolicy),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn compiled_model_equals_semantics(c in cluster()) {
        let engine = PolicyEngine::from_index(index_of(&c));
        assert_model_agrees(&engine)?;
    }

    #[test]
    fn incremental_updates_equal_a_full_compile(c in cluster(), changes in proptest::collection::vec(change(), 0..25)) {
        let mut engine = PolicyEngine::from_index(index_of(&c));
        let mut mirror = sets_view(&engine);
        for ch in changes {
            let rules_before: BTreeSet<_> = engine.rules().cloned().collect();
            let (delta, pod_event) = match ch {
                Change::Pod(p) => (engine.apply(ClusterObject::Pod(p)), true),
                Change::DeletePod(i) => {
                    let key = engine.index().pods().map(|(_, p)| p.key.clone()).find(|k| k.name == format!("pod{i}"));
                    match key {
                        Some(k) => (engine.delete(Kind::Pod, &k), true),
                        None => continue,
                    }
                }
                Change::Namespace(ns) => (engine.apply(ClusterObject::Namespace(ns)), false),
                Change::DeleteNamespace(i) => (engine.delete(Kind::Namespace, &ObjectKey::new("", NAMESPACES[i])), false),
                Change::Policy(p) => (engine.apply(ClusterObject::NetworkPolicy(p)), false),
                Change::DeletePolicy(i) => {
                    let key = engine.index().policies().map(|p| p.key.clone()).find(|k| k.name == format!("p{i}"));
                    match key {
                        Some(k) => (engine.delete(Kind::NetworkPolicy, &k), false),
                        None => continue,
                    }
                }
            };
            let rules_after: BTreeSet<_> = engine.rules().cloned().collect();
            if pod_event {
                prop_assert!(delta.rules_added.is_empty() && delta.rules_removed.is_empty(), "{:?}", delta);
                prop_assert_eq!(&rules_before, &rules_after);
            } else {
                // The delta describes exactly how the rules changed.
                let added: BTreeSet<_> = rules_after.difference(&rules_before).cloned().collect();
                let removed: BTreeSet<_> = rules_before.difference(&rules_after).cloned().collect();
                prop_assert_eq!(added, delta.rules_added.iter().cloned().collect::<BTreeSet<_>>());
                prop_assert_eq!(removed, delta.rules_removed.iter().cloned().collect::<BTreeSet<_>>());
            }
            let full = PolicyEngine::from_index(engine.index().clone());
            prop_assert_eq!(engine.model(), full.model());
            // The delta alone carries a mirror of the sets from the last state to this one.
            replay(&mut mirror, &delta)?;
            prop_assert_eq!(&mirror, &sets_view(&engine));
        }
        assert_model_agrees(&engine)?;
    }

    #[test]
    fn rules_do_not_depend_on_pods(c in cluster()) {
        let with_pods = PolicyEngine::from_index(index_of(&c));
        let without = PolicyEngine::from_index(index_of(&Cluster { pods: vec![], ..c.clone() }));
        prop_assert_eq!(with_pods.model().rules, without.model().rules);
    }
}

/// The membership delta of a pod event, replayed onto the model before it, gives the model
/// after it: deltas are complete, not just "something changed".
#[test]
fn pod_deltas_replay_to_the_next_model() {
    let ns = |n: &str| Namespace::implied(n);
    let mut engine = PolicyEngine::new();
    engine.apply(ClusterObject::Namespace(ns("x")));
    let policy = NetworkPolicy {
        key: ObjectKey::new("x", "db"),
        uid: None,
        pod_selector: Selector::from_labels([("tier", "db")]),
        ingress: Some(vec![PolicyRule {
            peers: vec![Peer::Pods(PeerSelector {
                namespaces: NamespaceScope::Named("x".into()),
                pods: Selector::from_labels([("tier", "app")]),
            })],
            ports: vec![PolicyPort { protocol: Protocol::Tcp, port: PolicyPortSpec::Named("postgres".into()) }],
        }]),
        egress: None,
    };
    let d = engine.apply(ClusterObject::NetworkPolicy(policy));
    assert_eq!(d.rules_added.len(), 1);
    let pod = |name: &str, tier: &str, ip: u8| Pod {
        key: ObjectKey::new("x", name),
        uid: None,
        labels: Labels::from([("tier".into(), tier.into())]),
        ips: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, ip))],
        status_ips: vec![],
        host_network: false,
        ports: vec![ContainerPort { name: Some("postgres".into()), port: 5432, protocol: Protocol::Tcp }],
        node: None,
        terminated: false,
        network_annotation: None,
        networks_annotation: None,
        network_status_annotation: None,
        sriov_devices_annotation: None,
    };
    let d = engine.apply(ClusterObject::Pod(pod("db-0", "db", 1)));
    let sets: BTreeSet<String> = d.membership.iter().map(|c| format!("{:?} {} {}", c.set, c.pod, c.added)).collect();
    assert_eq!(d.membership.len(), 3, "{sets:#?}"); // group, default-deny ingress, named port
    assert!(d.membership.iter().all(|c| c.added && c.addresses == vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))]));
    assert!(d.rules_added.is_empty() && d.rules_removed.is_empty());
    // The namespace's ingress default-deny group and the (postgres, 5432) set come into being.
    let ingress_deny = SetRef::DefaultDeny { namespace: "x".into(), direction: stacknet_engine::Direction::Ingress };
    assert!(d.sets_created.contains(&ingress_deny), "{:?}", d.sets_created);
    assert_eq!(d.sets_created.len(), 2, "{:?}", d.sets_created);
    let d = engine.apply(ClusterObject::Pod(pod("app-0", "app", 2)));
    assert_eq!(d.membership.len(), 2, "{d:#?}"); // peer set, named port
    // Relabel app-0 to db: it leaves the peer set, joins the group and default-deny.
    let d = engine.apply(ClusterObject::Pod(pod("app-0", "db", 2)));
    let added: Vec<_> = d.membership.iter().filter(|c| c.added).collect();
    let removed: Vec<_> = d.membership.iter().filter(|c| !c.added).collect();
    assert_eq!((added.len(), removed.len()), (2, 1), "{d:#?}");
    // New address, same sets: address-bearing sets see the old address go and the new come.
    let d = engine.apply(ClusterObject::Pod(pod("app-0", "db", 9)));
    assert!(d.membership.iter().any(|c| !c.added && c.addresses == vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))]));
    assert!(d.membership.iter().any(|c| c.added && c.addresses == vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9))]));
    // Deleting and deleting again: the second is a no-op.
    let d = engine.delete(Kind::Pod, &ObjectKey::new("x", "app-0"));
    assert!(!d.is_empty());
    assert!(engine.delete(Kind::Pod, &ObjectKey::new("x", "app-0")).is_empty());
    // A repeated apply of the same pod changes nothing.
    assert!(engine.apply(ClusterObject::Pod(pod("db-0", "db", 1))).is_empty());

    // New addresses given in place: the same delta as applying the pod with them; without
    // deltas, none, and the same model and index either way.
    let mut silent = PolicyEngine::without_deltas();
    for object in [
        ClusterObject::Namespace(ns("x")),
        ClusterObject::NetworkPolicy(engine.index().policies().next().unwrap().clone()),
    ] {
        silent.apply(object);
    }
    assert!(silent.apply(ClusterObject::Pod(pod("db-0", "db", 1))).is_empty(), "no deltas");
    let id = engine.index().pod_id(&ObjectKey::new("x", "db-0")).unwrap();
    let mut applied = engine.clone();
    let by_apply = applied.apply(ClusterObject::Pod(pod("db-0", "db", 7)));
    let by_ips = engine.set_pod_ips(id, pod("db-0", "db", 7).ips);
    assert!(!by_ips.is_empty());
    assert_eq!(format!("{by_ips:?}"), format!("{by_apply:?}"));
    let silent_id = silent.index().pod_id(&ObjectKey::new("x", "db-0")).unwrap();
    assert!(silent.set_pod_ips(silent_id, pod("db-0", "db", 7).ips).is_empty());
    assert_eq!(silent.model(), engine.model());
    assert_eq!(silent.index().pod(silent_id).unwrap().ips, pod("db-0", "db", 7).ips);
    assert!(engine.set_pod_ips(id, pod("db-0", "db", 7).ips).is_empty(), "the same addresses: no change");
}
