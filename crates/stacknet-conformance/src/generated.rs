//! Generated cases in the manner of cyclonus: every combination of a target selector, a peer
//! list, a port list and a direction, as one policy in namespace x; then random mixtures of
//! several such policies across namespaces with a label change or a deletion afterwards.
//! Expectations come from [`crate::reference`].

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::world::{Event, World, pod_ip};
use crate::{ExpectedProbe, Scenario, ScenarioStep, reference};

/// The probes every generated case runs: ports 80 and 81 over TCP, UDP and SCTP.
pub const PROBES: [(u16, &str); 6] = [(80, "TCP"), (81, "TCP"), (80, "UDP"), (81, "UDP"), (80, "SCTP"), (81, "SCTP")];

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn match_labels(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector { match_labels: Some(labels(pairs)), ..Default::default() }
}

fn expression(key: &str, op: &str, values: &[&str]) -> LabelSelector {
    LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: if values.is_empty() { None } else { Some(values.iter().map(|v| v.to_string()).collect()) },
        }]),
        ..Default::default()
    }
}

/// Target selectors, with a short name for the case title.
pub fn targets() -> Vec<(&'static str, LabelSelector)> {
    vec![
        ("all", LabelSelector::default()),
        ("pod=a", match_labels(&[("pod", "a")])),
        ("pod-in-a-b", expression("pod", "In", &["a", "b"])),
        ("pod-notin-a", expression("pod", "NotIn", &["a"])),
    ]
}

fn pods_peer(ns: Option<LabelSelector>, pods: Option<LabelSelector>) -> networking::NetworkPolicyPeer {
    networking::NetworkPolicyPeer { namespace_selector: ns, pod_selector: pods, ip_block: None }
}

fn block(cidr: &str, except: &[&str]) -> networking::NetworkPolicyPeer {
    networking::NetworkPolicyPeer {
        ip_block: Some(networking::IPBlock {
            cidr: cidr.into(),
            except: if except.is_empty() { None } else { Some(except.iter().map(|e| e.to_string()).collect()) },
        }),
        ..Default::default()
    }
}

/// Peer lists (`from` / `to`): missing, empty, pod / namespace selectors alone and together,
/// several peers, ipBlocks with none, one and two excepts.
pub fn peers() -> Vec<(&'static str, Option<Vec<networking::NetworkPolicyPeer>>)> {
    let yb = format!("{}/32", pod_ip("y", "b"));
    let xb = format!("{}/32", pod_ip("x", "b"));
    vec![
        ("missing", None),
        ("empty", Some(vec![])),
        ("pods-all", Some(vec![pods_peer(None, Some(LabelSelector::default()))])),
        ("pod=b", Some(vec![pods_peer(None, Some(match_labels(&[("pod", "b")])))])),
        ("ns-all", Some(vec![pods_peer(Some(LabelSelector::default()), None)])),
        ("ns=y", Some(vec![pods_peer(Some(match_labels(&[("ns", "y")])), None)])),
        (
            "ns=y-and-pod=b",
            Some(vec![pods_peer(Some(match_labels(&[("ns", "y")])), Some(match_labels(&[("pod", "b")])))]),
        ),
        ("ns-notin-x", Some(vec![pods_peer(Some(expression("ns", "NotIn", &["x"])), None)])),
        ("pod-exists", Some(vec![pods_peer(None, Some(expression("pod", "Exists", &[])))])),
        (
            "pod-doesnotexist",
            Some(vec![pods_peer(Some(LabelSelector::default()), Some(expression("pod", "DoesNotExist", &[])))]),
        ),
        ("ip-y/b", Some(vec![block(&yb, &[])])),
        ("cidr-except-1", Some(vec![block("10.0.0.0/8", &["10.2.0.0/16"])])),
        ("cidr-except-2", Some(vec![block("10.0.0.0/8", &["10.2.0.0/16", &xb])])),
        (
            "pod=b-or-ns=z",
            Some(vec![
                pods_peer(None, Some(match_labels(&[("pod", "b")]))),
                pods_peer(Some(match_labels(&[("ns", "z")])), None),
            ]),
        ),
        (
            "ns=y-and-pod-in-b-c",
            Some(vec![pods_peer(Some(match_labels(&[("ns", "y")])), Some(expression("pod", "In", &["b", "c"])))]),
        ),
    ]
}

fn port(p: Option<IntOrString>, protocol: Option<&str>, end: Option<i32>) -> networking::NetworkPolicyPort {
    networking::NetworkPolicyPort { port: p, protocol: protocol.map(str::to_string), end_port: end }
}

/// Port lists: missing, numbers (with and without protocol), named (matching the protocol or
/// not), a range, protocol alone, several.
pub fn ports() -> Vec<(&'static str, Option<Vec<networking::NetworkPolicyPort>>)> {
    let n = |v: i32| Some(IntOrString::Int(v));
    let s = |v: &str| Some(IntOrString::String(v.into()));
    vec![
        ("any", None),
        ("80", Some(vec![port(n(80), None, None)])),
        ("81/UDP", Some(vec![port(n(81), Some("UDP"), None)])),
        ("serve-80-tcp", Some(vec![port(s("serve-80-tcp"), None, None)])),
        ("serve-81-udp/UDP", Some(vec![port(s("serve-81-udp"), Some("UDP"), None)])),
        ("80-81/TCP", Some(vec![port(n(80), Some("TCP"), Some(81))])),
        ("SCTP", Some(vec![port(None, Some("SCTP"), None)])),
        ("80/TCP+81/SCTP", Some(vec![port(n(80), Some("TCP"), None), port(n(81), Some("SCTP"), None)])),
        ("serve-80-tcp/UDP", Some(vec![port(s("serve-80-tcp"), Some("UDP"), None)])),
    ]
}

/// One ingress/egress rule's peer list and port list (`None`: the field is missing).
pub type RuleParts = (Option<Vec<networking::NetworkPolicyPeer>>, Option<Vec<networking::NetworkPolicyPort>>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
    Both,
}

fn policy(
    ns: &str,
    name: &str,
    target: &LabelSelector,
    direction: Direction,
    rules: &[RuleParts],
) -> networking::NetworkPolicy {
    let mut spec = networking::NetworkPolicySpec { pod_selector: Some(target.clone()), ..Default::default() };
    let mut types = Vec::new();
    if direction != Direction::Egress {
        types.push("Ingress".to_string());
        spec.ingress = Some(
            rules
                .iter()
                .map(|(peers, ports)| networking::NetworkPolicyIngressRule {
                    from: peers.clone(),
                    ports: ports.clone(),
                })
                .collect(),
        );
    }
    if direction != Direction::Ingress {
        types.push("Egress".to_string());
        spec.egress = Some(
            rules
                .iter()
                .map(|(peers, ports)| networking::NetworkPolicyEgressRule { to: peers.clone(), ports: ports.clone() })
                .collect(),
        );
    }
    spec.policy_types = Some(types);
    networking::NetworkPolicy {
        metadata: ObjectMeta { name: Some(name.into()), namespace: Some(ns.into()), ..Default::default() },
        spec: Some(spec),
    }
}

fn probes(world: &World) -> Vec<ExpectedProbe> {
    PROBES
        .iter()
        .map(|(port, proto)| ExpectedProbe {
            port: *port,
            protocol: proto.to_string(),
            expected: reference::table(world, *port, proto),
        })
        .collect()
}

fn step(world: &mut World, description: String, events: Vec<Event>) -> ScenarioStep {
    for e in &events {
        world.apply(e);
    }
    ScenarioStep { description, events, world: world.clone(), probes: probes(world) }
}

/// One policy in x per combination of target x peers x ports x direction.
pub fn single_policy_cases() -> Vec<Scenario> {
    let initial = World::full();
    let mut out = Vec::new();
    for (tname, target) in targets() {
        for (pname, peer_list) in peers() {
            for (portname, port_list) in ports() {
                for direction in [Direction::Ingress, Direction::Egress, Direction::Both] {
                    let name = format!("gen {direction:?} target={tname} peers={pname} ports={portname}");
                    let p = policy("x", "gen", &target, direction, &[(peer_list.clone(), port_list.clone())]);
                    let mut world = initial.clone();
                    let s = step(&mut world, "create the policy".into(), vec![Event::Policy(p)]);
                    out.push(Scenario { name, initial: initial.clone(), steps: vec![s] });
                }
            }
        }
    }
    out
}

/// A small deterministic generator (xorshift64*), so generated cases repeat run to run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// `count` cases, each with two to four policies in random namespaces, then a change (a pod or
/// namespace relabelled, or a policy deleted) and the probes again.
pub fn mixed_cases(count: usize, seed: u64) -> Vec<Scenario> {
    let (targets, peers, ports) = (targets(), peers(), ports());
    let mut rng = Rng(seed | 1);
    let initial = World::full();
    let mut out = Vec::new();
    for case in 0..count {
        let mut world = initial.clone();
        let mut events = Vec::new();
        let mut names = Vec::new();
        let mut summary = Vec::new();
        for i in 0..2 + rng.below(3) {
            let ns = *rng.pick(&["x", "y", "z"]);
            let (tname, target) = rng.pick(&targets);
            let direction = *rng.pick(&[Direction::Ingress, Direction::Egress, Direction::Both]);
            let mut rules = Vec::new();
            let mut desc = Vec::new();
            for _ in 0..1 + rng.below(2) {
                let (pn, pl) = rng.pick(&peers);
                let (qn, ql) = rng.pick(&ports);
                rules.push((pl.clone(), ql.clone()));
                desc.push(format!("{pn}:{qn}"));
            }
            let name = format!("p{i}");
            names.push((ns, name.clone()));
            events.push(Event::Policy(policy(ns, &name, target, direction, &rules)));
            summary.push(format!("{ns}/{name} {direction:?} target={tname} [{}]", desc.join(", ")));
        }
        let first = step(&mut world, format!("create {}", summary.join("; ")), events);
        let change = match rng.below(4) {
            0 => {
                let key = format!("{}/{}", rng.pick(&["x", "y", "z"]), rng.pick(&["a", "b", "c"]));
                let mut pod = world.pods[&key].clone();
                let new = *rng.pick(&["a", "b", "c"]);
                pod.metadata.labels.get_or_insert_default().insert("pod".into(), new.into());
                (format!("relabel pod {key} to pod={new}"), vec![Event::Pod(Box::new(pod))])
            }
            1 => {
                let ns = *rng.pick(&["x", "y", "z"]);
                let mut obj = world.namespaces[ns].clone();
                let new = *rng.pick(&["x", "y", "z"]);
                obj.metadata.labels.get_or_insert_default().insert("ns".into(), new.into());
                (format!("relabel namespace {ns} to ns={new}"), vec![Event::Namespace(obj)])
            }
            2 => {
                let (ns, name) = rng.pick(&names).clone();
                (format!("delete policy {ns}/{name}"), vec![Event::DeletePolicy { namespace: ns.into(), name }])
            }
            _ => {
                let key = format!("{}/{}", rng.pick(&["x", "y", "z"]), rng.pick(&["a", "b", "c"]));
                let mut pod = world.pods[&key].clone();
                pod.metadata.labels.get_or_insert_default().remove("pod");
                (format!("remove label pod from {key}"), vec![Event::Pod(Box::new(pod))])
            }
        };
        let second = step(&mut world, change.0, change.1);
        out.push(Scenario {
            name: format!("gen mixed #{case} (seed {seed})"),
            initial: initial.clone(),
            steps: vec![first, second],
        });
    }
    out
}
