//! NetworkPolicy as Neutron security groups (pure).
//!
//! Neutron's model is a union of allows per port and direction, everything else dropped, and
//! stateful (ML2/OVN writes `allow-related` ACLs): a port's traffic in a direction is allowed iff
//! a rule of one of its groups allows it. Kubernetes' model is that too once isolation is
//! accounted for, so:
//!
//! - every policy is a group (`policy:<ns>/<name>`) holding the rules of the directions it
//!   governs, on the ports of the pods it selects;
//! - a pod no policy isolates in a direction gets the cluster's `allow-ingress` /
//!   `allow-egress` group (one rule per address family);
//! - traffic between a pod and its own node is never isolated (kubelet's probes come from the
//!   node): each Node is a group (`node:<name>`) holding an ingress and an egress rule per
//!   address of the node (`/32`, `/128`), which the pods on that node join, so the rules grow
//!   with the nodes' addresses, never with pods, and a node coming or going changes its own
//!   group only;
//! - a peer selector is a group with no rules (`peer:<set>`) that its pods join, and rules name
//!   it as their `remote_group_id`: a pod coming or going changes memberships only, never a
//!   rule, and the rule count is the same at 10 pods as at 10,000;
//! - an `ipBlock` with excepts is the exact set of prefixes left once the excepts are taken out
//!   (`remote_ip_prefix` cannot say "except"; kuryr-kubernetes got this wrong with two or more);
//! - a named port is resolved on the destination pod: for ingress, the policy's pods are split
//!   by the number the name resolves to (`policy-np:...`, one group per number, holding a rule
//!   for that number); for egress, the destination set is narrowed to the pods on which the
//!   name resolves to that number (`peer-np:...`, `any-np:...`, `block-np:...`, membership
//!   only).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;

use stacknet_engine::model::{NamedPortKey, PeerSetId, Rule, RulePeer};
use stacknet_engine::objects::{Direction, IpBlock, ObjectKey, Pod, Protocol};
use stacknet_engine::{Cidr, ObjectRef, PolicyEngine};

/// An address family (a rule's `ethertype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    /// Neutron's `ethertype`.
    pub fn ethertype(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The prefix holding every address of the family.
    fn any(self) -> Cidr {
        match self {
            Family::V4 => Cidr::new(IpAddr::V4(0.into()), 0).expect("valid"),
            Family::V6 => Cidr::new(IpAddr::V6(0.into()), 0).expect("valid"),
        }
    }
}

/// What a rule's peer is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Remote {
    /// Every address of the rule's family.
    Any,
    /// The addresses of the ports in a group of ours (`remote_group_id`), by group id.
    Group(String),
    /// `remote_ip_prefix`.
    Prefix(Cidr),
}

/// One security group rule, as Neutron holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SgRule {
    pub direction: Direction,
    pub family: Family,
    /// `None`: every protocol (and then no ports).
    pub protocol: Option<Protocol>,
    /// Inclusive; `None`: every port of the protocol.
    pub ports: Option<(u16, u16)>,
    pub remote: Remote,
}

impl fmt::Display for SgRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = self.protocol.map_or("any".to_string(), |p| p.to_string().to_lowercase());
        write!(f, "{} {} {proto}", self.direction, self.family.ethertype())?;
        if let Some((a, b)) = self.ports {
            if a == b { write!(f, ":{a}")? } else { write!(f, ":{a}-{b}")? }
        }
        match &self.remote {
            Remote::Any => write!(f, " any"),
            Remote::Group(g) => write!(f, " group {g}"),
            Remote::Prefix(c) => write!(f, " {c}"),
        }
    }
}

/// What a group stands for, for people reading Neutron (its description) and for ownership.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupKind {
    /// `allow-ingress` / `allow-egress`: pods no policy isolates in that direction.
    AllowAll(Direction),
    /// The pods on a node, with the node's own addresses allowed both ways, by Node name.
    Node(String),
    /// The pods a policy selects, with its rules.
    Policy(ObjectKey),
    /// The pods of a policy on which a named port resolves to one number, with the policy's
    /// ingress rules for that number.
    PolicyNamedPort { policy: ObjectKey, key: NamedPortKey, port: u16 },
    /// A peer selector's pods (membership only).
    Peer(PeerSetId),
    /// A peer selector's pods on which a named port resolves to one number (membership only).
    PeerNamedPort { set: PeerSetId, key: NamedPortKey, port: u16 },
    /// Every pod on which a named port resolves to one number (membership only).
    AnyNamedPort { key: NamedPortKey, port: u16 },
    /// The pods inside an ipBlock on which a named port resolves to one number.
    BlockNamedPort { block: IpBlock, key: NamedPortKey, port: u16 },
}

fn np(key: &NamedPortKey, port: u16) -> String {
    format!("{}/{}/{port}", key.protocol.to_string().to_lowercase(), key.name)
}

fn block_text(b: &IpBlock) -> String {
    let mut s = b.cidr.to_string();
    for e in &b.except {
        s.push_str(&format!("!{e}"));
    }
    s
}

impl GroupKind {
    /// The group's identity: stable across restarts, unique in the cluster.
    pub fn id(&self) -> String {
        match self {
            GroupKind::AllowAll(Direction::Ingress) => "allow-ingress".into(),
            GroupKind::AllowAll(Direction::Egress) => "allow-egress".into(),
            GroupKind::Node(name) => format!("node:{name}"),
            GroupKind::Policy(p) => format!("policy:{p}"),
            GroupKind::PolicyNamedPort { policy, key, port } => format!("policy-np:{policy}:{}", np(key, *port)),
            GroupKind::Peer(s) => format!("peer:{s}"),
            GroupKind::PeerNamedPort { set, key, port } => format!("peer-np:{set}:{}", np(key, *port)),
            GroupKind::AnyNamedPort { key, port } => format!("any-np:{}", np(key, *port)),
            GroupKind::BlockNamedPort { block, key, port } => {
                format!("block-np:{}:{}", block_text(block), np(key, *port))
            }
        }
    }

    /// The Kubernetes object the group stands for, if one does.
    pub fn owner(&self) -> Option<ObjectRef> {
        match self {
            GroupKind::Policy(p) | GroupKind::PolicyNamedPort { policy: p, .. } => Some(ObjectRef::policy(p)),
            GroupKind::Node(name) => Some(ObjectRef::node(name)),
            _ => None,
        }
    }
}

/// One security group: what it stands for and its rules (none: membership only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    pub kind: GroupKind,
    pub rules: BTreeSet<SgRule>,
}

/// Every group the cluster's policies need, and the groups each pod's port belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityPlan {
    pub groups: BTreeMap<String, GroupSpec>,
    pub ports: BTreeMap<ObjectKey, BTreeSet<String>>,
}

impl SecurityPlan {
    pub fn rule_count(&self) -> usize {
        self.groups.values().map(|g| g.rules.len()).sum()
    }

    /// Whether Neutron, holding this plan, lets `from` (address `src`) open a connection to
    /// `to` (address `dst`) on `port`: `from`'s egress and `to`'s ingress must each be allowed
    /// by a rule of one of the port's groups (a reference evaluation of Neutron's semantics,
    /// for tests).
    pub fn allows(&self, from: (&ObjectKey, IpAddr), to: (&ObjectKey, IpAddr), port: u16, protocol: Protocol) -> bool {
        self.side_allows(from.0, Direction::Egress, (Some(to.0), to.1), port, protocol)
            && self.side_allows(to.0, Direction::Ingress, (Some(from.0), from.1), port, protocol)
    }

    /// Whether `pod`'s groups let a connection through in `dir` with `address`, an address no
    /// pod of ours has (a node's, the outside's): `Ingress` from it, `Egress` to it.
    pub fn allows_address(
        &self,
        pod: &ObjectKey,
        dir: Direction,
        address: IpAddr,
        port: u16,
        protocol: Protocol,
    ) -> bool {
        self.side_allows(pod, dir, (None, address), port, protocol)
    }

    /// Whether a rule of `pod`'s groups lets traffic with `peer` (a pod of ours, or none)
    /// through in `dir`.
    fn side_allows(
        &self,
        pod: &ObjectKey,
        dir: Direction,
        (peer, peer_ip): (Option<&ObjectKey>, IpAddr),
        port: u16,
        protocol: Protocol,
    ) -> bool {
        let member = |group: &str| peer.and_then(|p| self.ports.get(p)).is_some_and(|g| g.contains(group));
        self.ports.get(pod).into_iter().flatten().filter_map(|g| self.groups.get(g)).any(|g| {
            g.rules.iter().any(|r| {
                r.direction == dir
                    && r.family == Family::of(peer_ip)
                    && r.protocol.is_none_or(|p| p == protocol)
                    && r.ports.is_none_or(|(a, b)| (a..=b).contains(&port))
                    && match &r.remote {
                        Remote::Any => true,
                        Remote::Group(g) => member(g),
                        Remote::Prefix(c) => c.contains(peer_ip),
                    }
            })
        })
    }

    fn group(&mut self, kind: GroupKind) -> &mut GroupSpec {
        self.groups.entry(kind.id()).or_insert_with(|| GroupSpec { kind, rules: BTreeSet::new() })
    }

    fn join(&mut self, pod: &ObjectKey, group: &str) {
        self.ports.entry(pod.clone()).or_default().insert(group.to_string());
    }
}

/// The rules' port ranges for a protocol: `None` for every port.
fn ranges(rule: &Rule) -> Vec<Option<(u16, u16)>> {
    if rule.ports.is_any() { vec![None] } else { rule.ports.ranges.iter().map(|r| Some(*r)).collect() }
}

/// Builds the plan. `families`: the address families pods have (rules for "every address" and
/// for remote groups are made once per family).
pub fn plan(engine: &PolicyEngine, families: &[Family]) -> SecurityPlan {
    let mut p = Planner {
        engine,
        families,
        peer_members: engine.peer_sets().map(|(id, _, members)| (id, members.pods().collect())).collect(),
        named_members: engine
            .named_ports()
            .flat_map(|(key, ports)| ports.map(move |(port, members)| ((key, port), members.pods().collect())))
            .collect(),
        out: SecurityPlan::default(),
    };
    p.allow_all();
    p.own_nodes();
    let mut rules_by_policy: BTreeMap<&ObjectKey, Vec<&Rule>> = BTreeMap::new();
    for r in engine.rules() {
        rules_by_policy.entry(&r.policy).or_default().push(r);
    }
    for (key, group) in engine.groups() {
        let id = p.out.group(GroupKind::Policy(key.clone())).kind.id();
        let members: Vec<&Pod> = group.members.pods().collect();
        for pod in &members {
            p.out.join(&pod.key, &id);
        }
        for rule in rules_by_policy.get(key).into_iter().flatten() {
            p.rule(rule, &id, &members);
        }
    }
    p.out
}

struct Planner<'a> {
    engine: &'a PolicyEngine,
    families: &'a [Family],
    peer_members: HashMap<&'a PeerSetId, Vec<&'a Pod>>,
    /// The pods on which a named port resolves to a number.
    named_members: HashMap<(&'a NamedPortKey, u16), Vec<&'a Pod>>,
    out: SecurityPlan,
}

impl<'a> Planner<'a> {
    /// Pods no policy isolates in a direction may send / receive anything.
    fn allow_all(&mut self) {
        let mut isolated: BTreeSet<(&ObjectKey, Direction)> = BTreeSet::new();
        for (_, dir, members) in self.engine.default_deny() {
            for p in members.pods() {
                isolated.insert((&p.key, dir));
            }
        }
        for dir in [Direction::Ingress, Direction::Egress] {
            let kind = GroupKind::AllowAll(dir);
            let id = kind.id();
            let g = self.out.group(kind);
            for f in self.families {
                g.rules.insert(SgRule { direction: dir, family: *f, protocol: None, ports: None, remote: Remote::Any });
            }
            let open = self.engine.index().pods().map(|(_, p)| p);
            for p in open.filter(|p| p.is_policy_subject() && !isolated.contains(&(&p.key, dir))) {
                self.out.join(&p.key, &id);
            }
        }
    }

    /// Each node's pods may always exchange traffic with the node's own addresses (of the
    /// families pods have), whatever policies say: a group per Node, its rules the node's
    /// addresses. Every Node has its group, pods or not, so that a pod starting on it only
    /// joins it.
    fn own_nodes(&mut self) {
        let index = self.engine.index();
        for node in index.nodes() {
            let g = self.out.group(GroupKind::Node(node.name.clone()));
            for ip in node.addresses.iter().filter(|ip| self.families.contains(&Family::of(**ip))) {
                for direction in [Direction::Ingress, Direction::Egress] {
                    let remote = Remote::Prefix(Cidr::host(*ip));
                    g.rules.insert(SgRule { direction, family: Family::of(*ip), protocol: None, ports: None, remote });
                }
            }
        }
        for (_, p) in index.pods().filter(|(_, p)| p.is_policy_subject()) {
            if let Some(node) = p.node.as_deref().and_then(|n| index.node(n)) {
                self.out.join(&p.key, &GroupKind::Node(node.name.clone()).id());
            }
        }
    }

    /// The remotes of a rule's peer for one family; `named`: the destination's named port and
    /// number, when the peer is the destination.
    fn remotes(&mut self, peer: &RulePeer, family: Family, named: Option<(&'a NamedPortKey, u16)>) -> Vec<Remote> {
        let kind = match (peer, named) {
            (RulePeer::Any, None) => return vec![Remote::Any],
            (RulePeer::Block(b), None) => {
                if Family::of(b.cidr.network()) != family {
                    return Vec::new();
                }
                let rest = b.cidr.minus(&b.except);
                return if rest == [family.any()] {
                    vec![Remote::Any]
                } else {
                    rest.into_iter().map(Remote::Prefix).collect()
                };
            }
            (RulePeer::Set(s), None) => GroupKind::Peer(s.clone()),
            (RulePeer::Any, Some((key, port))) => GroupKind::AnyNamedPort { key: key.clone(), port },
            (RulePeer::Set(s), Some((key, port))) => {
                GroupKind::PeerNamedPort { set: s.clone(), key: key.clone(), port }
            }
            (RulePeer::Block(b), Some((key, port))) => {
                GroupKind::BlockNamedPort { block: b.clone(), key: key.clone(), port }
            }
        };
        let members: Vec<&Pod> = match &kind {
            GroupKind::Peer(s) => self.peer_members.get(s).cloned().unwrap_or_default(),
            _ => {
                let (key, port) = named.expect("named-port kinds");
                let with_port = self.named_members.get(&(key, port)).map(Vec::as_slice).unwrap_or_default();
                match peer {
                    RulePeer::Set(s) => {
                        let set: BTreeSet<&ObjectKey> =
                            self.peer_members.get(s).into_iter().flatten().map(|p| &p.key).collect();
                        with_port.iter().copied().filter(|p| set.contains(&p.key)).collect()
                    }
                    RulePeer::Block(b) => {
                        with_port.iter().copied().filter(|p| p.ips.iter().any(|ip| b.contains(*ip))).collect()
                    }
                    RulePeer::Any => with_port.to_vec(),
                }
            }
        };
        let id = kind.id();
        self.out.group(kind);
        for p in members {
            self.out.join(&p.key, &id);
        }
        vec![Remote::Group(id)]
    }

    fn add(&mut self, group: &str, rule: SgRule) {
        self.out.groups.get_mut(group).expect("groups are made before their rules").rules.insert(rule);
    }

    fn rule(&mut self, rule: &Rule, policy_group: &str, members: &[&'a Pod]) {
        let dir = rule.direction;
        // No ports, every port of a protocol, or numbered ports: on the policy's own group.
        if rule.protocol.is_none() || rule.ports.is_any() || !rule.ports.ranges.is_empty() {
            for &family in self.families {
                for remote in self.remotes(&rule.peer, family, None) {
                    for ports in ranges(rule) {
                        let r =
                            SgRule { direction: dir, family, protocol: rule.protocol, ports, remote: remote.clone() };
                        self.add(policy_group, r);
                    }
                }
            }
        }
        let Some(protocol) = rule.protocol else { return };
        // Named ports, resolved on the destination.
        for name in &rule.ports.named {
            let key = NamedPortKey { protocol, name: name.clone() };
            let Some((key, _)) = self.named_members.keys().find(|(k, _)| **k == key).copied() else { continue };
            let numbers: BTreeSet<u16> = match dir {
                Direction::Ingress => members.iter().filter_map(|p| p.named_port(name, protocol)).collect(),
                Direction::Egress => self.engine.named_port_numbers(key).collect(),
            };
            for port in numbers {
                let group = match dir {
                    // The policy's pods on which the name is this number.
                    Direction::Ingress => {
                        let kind = GroupKind::PolicyNamedPort { policy: rule.policy.clone(), key: key.clone(), port };
                        let id = kind.id();
                        self.out.group(kind);
                        for p in members.iter().filter(|p| p.named_port(name, protocol) == Some(port)) {
                            self.out.join(&p.key, &id);
                        }
                        id
                    }
                    Direction::Egress => policy_group.to_string(),
                };
                let destination = (dir == Direction::Egress).then_some((key, port));
                for &family in self.families {
                    for remote in self.remotes(&rule.peer, family, destination) {
                        let r = SgRule {
                            direction: dir,
                            family,
                            protocol: Some(protocol),
                            ports: Some((port, port)),
                            remote,
                        };
                        self.add(&group, r);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stacknet_engine::{ClusterIndex, manifest, semantics};

    /// Pods whose named port `http` is 80 on one, 8080 on another, absent on a third that
    /// still listens on 80; a client; an outsider in another namespace.
    const PODS: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: x}}
- {apiVersion: v1, kind: Namespace, metadata: {name: y}}
- apiVersion: v1
  kind: Pod
  metadata: {name: a, namespace: x, labels: {app: srv}}
  spec: {containers: [{name: c, ports: [{containerPort: 80, name: http}]}]}
  status: {podIP: 10.0.0.1}
- apiVersion: v1
  kind: Pod
  metadata: {name: b, namespace: x, labels: {app: srv}}
  spec: {containers: [{name: c, ports: [{containerPort: 8080, name: http}, {containerPort: 80, name: other}]}]}
  status: {podIP: 10.0.0.2}
- apiVersion: v1
  kind: Pod
  metadata: {name: c, namespace: x, labels: {app: srv}}
  spec: {containers: [{name: c, ports: [{containerPort: 80, name: web}]}]}
  status: {podIP: 10.0.0.3}
- apiVersion: v1
  kind: Pod
  metadata: {name: d, namespace: x, labels: {app: client}}
  spec: {containers: [{name: c}]}
  status: {podIP: 10.0.0.4}
- apiVersion: v1
  kind: Pod
  metadata: {name: e, namespace: y, labels: {app: client}}
  spec: {containers: [{name: c, ports: [{containerPort: 8080, name: http}]}]}
  status: {podIP: 10.1.0.5}
"#;

    fn engine(policies: &str) -> PolicyEngine {
        let mut objects = manifest::parse("pods.yaml", PODS).unwrap().objects;
        objects.extend(manifest::parse("policies.yaml", policies).unwrap().objects);
        PolicyEngine::from_index(ClusterIndex::from_objects(objects))
    }

    /// Every ordered pair and port: the plan under Neutron's semantics agrees with the
    /// Kubernetes semantics; returns how many probes were allowed.
    fn agrees(engine: &PolicyEngine) -> usize {
        let plan = plan(engine, &[Family::V4]);
        let index = engine.index();
        let pods: Vec<&Pod> = index.pods().map(|(_, p)| p).collect();
        let mut allowed = 0;
        for a in &pods {
            for b in pods.iter().filter(|b| b.key != a.key) {
                for port in [80, 8080, 443] {
                    let want = semantics::evaluate(index, a, b, port, Protocol::Tcp).allowed();
                    let got = plan.allows((&a.key, a.ips[0]), (&b.key, b.ips[0]), port, Protocol::Tcp);
                    assert_eq!(got, want, "{} -> {} :{port}\n{plan:#?}", a.key, b.key);
                    allowed += usize::from(got);
                }
            }
        }
        allowed
    }

    fn key(s: &str) -> ObjectKey {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ingress_named_ports_split_the_policy_by_number() {
        let e = engine(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: x}\n\
             spec: {podSelector: {matchLabels: {app: srv}}, ingress: [{ports: [{port: http}]}]}\n",
        );
        agrees(&e);
        let p = plan(&e, &[Family::V4]);
        let d = (&key("x/d"), ip("10.0.0.4"));
        assert!(p.allows(d, (&key("x/a"), ip("10.0.0.1")), 80, Protocol::Tcp));
        assert!(!p.allows(d, (&key("x/b"), ip("10.0.0.2")), 80, Protocol::Tcp), "b's http is 8080");
        assert!(p.allows(d, (&key("x/b"), ip("10.0.0.2")), 8080, Protocol::Tcp));
        assert!(!p.allows(d, (&key("x/c"), ip("10.0.0.3")), 80, Protocol::Tcp), "c has no http");
        // One group per number, each with one rule; the policy's own group has none.
        assert_eq!(p.groups["policy-np:x/web:tcp/http/80"].rules.len(), 1);
        assert_eq!(p.groups["policy-np:x/web:tcp/http/8080"].rules.len(), 1);
        assert!(p.groups["policy:x/web"].rules.is_empty());
    }

    #[test]
    fn egress_named_ports_narrow_the_destination() {
        for peers in ["[{podSelector: {}}]", "[]", "[{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.1/32]}}]"] {
            let e = engine(&format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: out, namespace: x}}\n\
                 spec: {{podSelector: {{matchLabels: {{app: client}}}}, policyTypes: [Egress], egress: [{{to: {peers}, ports: [{{port: http}}]}}]}}\n"
            ));
            assert!(agrees(&e) > 0, "{peers}");
        }
    }

    #[test]
    fn ip_blocks_with_excepts_are_exact_prefixes() {
        let e = engine(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: blk, namespace: x}\n\
             spec: {podSelector: {matchLabels: {app: srv}}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.4/32, 10.1.0.0/16]}}]}]}\n",
        );
        agrees(&e);
        let p = plan(&e, &[Family::V4]);
        let prefixes: Vec<String> = p.groups["policy:x/blk"].rules.iter().map(|r| r.to_string()).collect();
        assert!(!prefixes.iter().any(|r| r.contains("10.0.0.4/") || r.ends_with("10.0.0.0/8")), "{prefixes:?}");
    }

    #[test]
    fn pod_churn_changes_membership_not_rules() {
        let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db, namespace: x}\n\
                      spec: {podSelector: {matchLabels: {app: srv}}, ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 80}]}]}\n";
        let small = plan(&engine(policy), &[Family::V4]);
        let mut bigger = engine(policy);
        for i in 0..50 {
            let pod = format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: n{i}, namespace: x, labels: {{app: client}}}}\nspec: {{containers: [{{name: c}}]}}\nstatus: {{podIP: 10.0.1.{i}}}\n"
            );
            for o in manifest::parse("pod.yaml", &pod).unwrap().objects {
                bigger.apply(o);
            }
        }
        let big = plan(&bigger, &[Family::V4]);
        let rules = |p: &SecurityPlan| p.groups.iter().map(|(k, g)| (k.clone(), g.rules.clone())).collect::<Vec<_>>();
        assert_eq!(rules(&small), rules(&big));
        assert_eq!(big.ports.len(), small.ports.len() + 50);
    }

    /// Nodes n1 (an IPv4 and an IPv6 address) and n2; pods a, b on n1 and c on n2; `extra`
    /// added (policies, pods), and `nodes` filtering which Nodes exist.
    fn on_nodes(extra: &str, nodes: &[&str]) -> PolicyEngine {
        let mut yaml = String::from(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {nodeName: n1, containers: [{name: c}]}\nstatus: {podIP: 10.0.0.1}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x}\nspec: {nodeName: n1, containers: [{name: c}]}\nstatus: {podIP: 10.0.0.2}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: x}\nspec: {nodeName: n2, containers: [{name: c}]}\nstatus: {podIP: 10.0.0.3}\n",
        );
        let addresses = [
            ("n1", "[{type: InternalIP, address: 192.168.1.11}, {type: InternalIP, address: 'fd00::11'}]"),
            ("n2", "[{type: InternalIP, address: 192.168.1.12}]"),
        ];
        for (name, a) in addresses.iter().filter(|(n, _)| nodes.contains(n)) {
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\nstatus: {{addresses: {a}}}\n"
            ));
        }
        if !extra.is_empty() {
            yaml.push_str("---\n");
            yaml.push_str(extra);
        }
        PolicyEngine::from_index(ClusterIndex::from_objects(manifest::parse("nodes.yaml", &yaml).unwrap().objects))
    }

    const DENY_ALL: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\n\
                            spec: {podSelector: {}, policyTypes: [Ingress, Egress]}\n";

    #[test]
    fn isolated_pods_still_exchange_traffic_with_their_own_node_and_no_other() {
        let p = plan(&on_nodes(DENY_ALL, &["n1", "n2"]), &[Family::V4]);
        let (n1, n2) = (ip("192.168.1.11"), ip("192.168.1.12"));
        let (a, c) = (key("x/a"), key("x/c"));
        for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
            assert!(p.allows_address(&a, Direction::Ingress, n1, 8080, proto), "kubelet on n1 probes a");
            assert!(p.allows_address(&a, Direction::Egress, n1, 10250, proto), "a reaches its node");
        }
        assert!(p.allows_address(&c, Direction::Ingress, n2, 8080, Protocol::Tcp), "n2 probes c");
        assert!(!p.allows_address(&c, Direction::Ingress, n1, 8080, Protocol::Tcp), "n1 is not c's node");
        assert!(!p.allows_address(&a, Direction::Ingress, n2, 8080, Protocol::Tcp), "n2 is not a's node");
        assert!(!p.allows_address(&a, Direction::Ingress, ip("192.168.1.99"), 8080, Protocol::Tcp));
        // Pods stay isolated from each other, on one node or across.
        assert!(!p.allows((&key("x/b"), ip("10.0.0.2")), (&a, ip("10.0.0.1")), 80, Protocol::Tcp));
        assert!(!p.allows((&c, ip("10.0.0.3")), (&a, ip("10.0.0.1")), 80, Protocol::Tcp));
        // The node's group: its IPv4 address both ways (pods have no IPv6 here), nothing else.
        let rules: Vec<String> = p.groups["node:n1"].rules.iter().map(|r| r.to_string()).collect();
        assert_eq!(rules, ["ingress IPv4 any 192.168.1.11/32", "egress IPv4 any 192.168.1.11/32"]);
        assert_eq!(p.groups["node:n1"].kind.owner().map(|o| o.to_string()).as_deref(), Some("Node n1"));
        let dual = plan(&on_nodes(DENY_ALL, &["n1"]), &[Family::V4, Family::V6]);
        assert!(dual.allows_address(&a, Direction::Ingress, ip("fd00::11"), 8080, Protocol::Tcp));
        assert_eq!(dual.groups["node:n1"].rules.len(), 4);
    }

    #[test]
    fn a_node_is_a_group_its_pods_join_and_a_gone_node_takes_only_its_group() {
        let both = plan(&on_nodes("", &["n1", "n2"]), &[Family::V4]);
        let groups_of = |p: &SecurityPlan, pod: &str| p.ports[&key(pod)].iter().cloned().collect::<Vec<_>>();
        assert_eq!(groups_of(&both, "x/a"), ["allow-egress", "allow-ingress", "node:n1"]);
        assert_eq!(groups_of(&both, "x/c"), ["allow-egress", "allow-ingress", "node:n2"]);
        // n2 goes: its group with it, and its pod is in no node's group; n1's is as it was.
        let one = plan(&on_nodes("", &["n1"]), &[Family::V4]);
        assert!(!one.groups.contains_key("node:n2"));
        assert_eq!(groups_of(&one, "x/c"), ["allow-egress", "allow-ingress"]);
        assert_eq!(one.groups["node:n1"], both.groups["node:n1"]);
        // A node with no pod has its group all the same: a pod starting there only joins it.
        let empty = on_nodes("apiVersion: v1\nkind: Node\nmetadata: {name: n3}\n", &[]);
        assert!(plan(&empty, &[Family::V4]).groups["node:n3"].rules.is_empty());
    }

    #[test]
    fn node_rules_grow_with_node_addresses_not_with_pods() {
        let mut pods = String::new();
        for i in 0..200 {
            let node = if i % 2 == 0 { "n1" } else { "n2" };
            pods.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: x}}\n\
                 spec: {{nodeName: {node}, containers: [{{name: c}}]}}\nstatus: {{podIP: 10.0.1.{i}}}\n"
            ));
        }
        let small = plan(&on_nodes(DENY_ALL, &["n1", "n2"]), &[Family::V4]);
        let big = plan(&on_nodes(&format!("{DENY_ALL}{pods}"), &["n1", "n2"]), &[Family::V4]);
        assert_eq!(small.groups, big.groups, "the same groups and rules");
        assert_eq!(big.rule_count(), small.rule_count());
        assert_eq!(big.ports.len(), small.ports.len() + 200);
    }

    /// The issue's check: the same policies over 10 and over 500 pods (a named port among
    /// them) take the same groups and rules; only memberships grow.
    #[test]
    fn rules_at_10_and_at_500_pods_are_the_same() {
        let policies = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db, namespace: x}\n\
                        spec: {podSelector: {matchLabels: {app: srv}}, ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: http}]}]}\n\
                        ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: out, namespace: x}\n\
                        spec: {podSelector: {matchLabels: {app: client}}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: srv}}}]}]}\n";
        let with_pods = |n: usize| {
            let mut e = engine(policies);
            for i in 0..n {
                let (app, port) =
                    if i % 2 == 0 { ("client", "") } else { ("srv", ", ports: [{containerPort: 80, name: http}]") };
                let pod = format!(
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: x, labels: {{app: {app}}}}}\n\
                     spec: {{containers: [{{name: c{port}}}]}}\nstatus: {{podIP: 10.2.{}.{}}}\n",
                    i / 250,
                    i % 250 + 1
                );
                for o in manifest::parse("pod.yaml", &pod).unwrap().objects {
                    e.apply(o);
                }
            }
            plan(&e, &[Family::V4])
        };
        let (small, big) = (with_pods(10), with_pods(500));
        let rules = |p: &SecurityPlan| p.groups.iter().map(|(k, g)| (k.clone(), g.rules.clone())).collect::<Vec<_>>();
        assert_eq!(small.rule_count(), big.rule_count());
        assert_eq!(rules(&small), rules(&big));
        assert_eq!(big.ports.len(), small.ports.len() + 490);
    }
}
