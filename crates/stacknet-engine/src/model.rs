//! The compiled, backend-neutral model of NetworkPolicy, kept current incrementally.
//!
//! Policies become:
//! - a **group** per policy: the pods it selects (an OVN port group, a Neutron security group);
//! - **peer sets**: the pods a `(namespaceSelector, podSelector)` pair names, shared by every rule
//!   that names the same pair and reference-counted (OVN address sets, remote groups);
//! - **named-port sets**: for each named port used by a rule, which pods resolve it to which
//!   number (so a named port is one rule whatever the pods say);
//! - **rules**: direction, peer (any, a peer set, or an ipBlock with its excepts), protocol and
//!   ports; allow only;
//! - per-namespace **default-deny groups** per direction: the pods some policy isolates.
//!
//! Rules depend on policies only. A pod added, removed or relabelled changes set membership and
//! nothing else: [`PolicyEngine::apply_pod`] returns that membership delta.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::index::{ClusterIndex, PodId};
use crate::labels::Labels;
pub use crate::objects::Direction;
use crate::objects::{
    ClusterObject, IpBlock, Kind, Namespace, NamespaceScope, NetworkPolicy, ObjectKey, Peer, PeerSelector, Pod,
    PolicyPortSpec, PolicyRule, PortMatch, Protocol,
};
use crate::semantics::probe_addresses;

/// A peer set's identity: derived from its selector alone, so it is the same across restarts
/// and for every policy that names the same pods.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerSetId(Arc<str>);

impl PeerSetId {
    fn of(selector: &PeerSelector) -> PeerSetId {
        // FNV-1a over the canonical text of the selector: stable across builds and platforms.
        let h = crate::net::fnv1a(selector.to_string().bytes());
        PeerSetId(format!("ps_{h:016x}").into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeerSetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A named port, per protocol.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamedPortKey {
    pub protocol: Protocol,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RulePeer {
    /// `from` / `to` missing or empty: every address.
    Any,
    Set(PeerSetId),
    Block(IpBlock),
}

/// The ports of one protocol a rule allows. Both lists empty: every port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSet {
    /// Inclusive ranges, sorted and merged.
    pub ranges: Vec<(u16, u16)>,
    /// Named ports, resolved through the named-port sets on the destination pod.
    pub named: Vec<String>,
}

impl PortSet {
    pub fn is_any(&self) -> bool {
        self.ranges.is_empty() && self.named.is_empty()
    }
}

/// One allow rule. Its identity is its content plus the policy and rule index it came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rule {
    pub policy: ObjectKey,
    pub direction: Direction,
    /// Index of the ingress/egress rule in the policy.
    pub rule_index: usize,
    pub peer: RulePeer,
    /// `None`: the rule has no ports, every protocol and port is allowed.
    pub protocol: Option<Protocol>,
    pub ports: PortSet,
}

/// A set whose membership the model maintains.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetRef {
    /// The pods a policy selects.
    Group(ObjectKey),
    /// The pods of a namespace isolated in a direction.
    DefaultDeny {
        namespace: String,
        direction: Direction,
    },
    PeerSet(PeerSetId),
    /// The pods whose named port `key` resolves to `port`.
    NamedPort {
        key: NamedPortKey,
        port: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MembershipChange {
    pub set: SetRef,
    pub pod: ObjectKey,
    /// The pod's addresses (the ones it had, for a removal).
    pub addresses: Vec<IpAddr>,
    pub added: bool,
}

/// What one event changed in the model, net: a change undone within the event is not reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// Sets that now exist (before their first members are added).
    pub sets_created: Vec<SetRef>,
    pub membership: Vec<MembershipChange>,
    pub rules_added: Vec<Rule>,
    pub rules_removed: Vec<Rule>,
    /// Sets that no longer exist (after the rules using them are removed).
    pub sets_dropped: Vec<SetRef>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.sets_created.is_empty()
            && self.membership.is_empty()
            && self.rules_added.is_empty()
            && self.rules_removed.is_empty()
            && self.sets_dropped.is_empty()
    }

    /// Cancels what was undone within the event (a set dropped and created again, a member
    /// removed and added again with the same addresses, a rule removed and added again).
    fn normalize(&mut self) {
        let created: BTreeSet<SetRef> = self.sets_created.iter().cloned().collect();
        let dropped: BTreeSet<SetRef> = self.sets_dropped.iter().cloned().collect();
        self.sets_created.retain(|s| !dropped.contains(s));
        self.sets_dropped.retain(|s| !created.contains(s));
        let added: BTreeSet<&Rule> = self.rules_added.iter().collect();
        let removed: BTreeSet<&Rule> = self.rules_removed.iter().collect();
        let both: BTreeSet<Rule> = added.intersection(&removed).map(|r| (*r).clone()).collect();
        self.rules_added.retain(|r| !both.contains(r));
        self.rules_removed.retain(|r| !both.contains(r));
        // Net membership per (set, pod): keep the first removal and the last addition unless
        // they cancel out.
        let mut net: BTreeMap<(SetRef, ObjectKey), (Option<MembershipChange>, Option<MembershipChange>)> =
            BTreeMap::new();
        for c in self.membership.drain(..) {
            let e = net.entry((c.set.clone(), c.pod.clone())).or_default();
            if c.added {
                e.1 = Some(c);
            } else if e.1.is_some() {
                e.1 = None; // added, then removed again within the event
            } else if e.0.is_none() {
                e.0 = Some(c);
            }
        }
        for (_, (removed, added)) in net {
            match (removed, added) {
                (Some(r), Some(a)) if r.addresses == a.addresses => {}
                (r, a) => self.membership.extend(r.into_iter().chain(a)),
            }
        }
    }
}

#[derive(Debug, Clone)]
struct GroupState {
    policy: NetworkPolicy,
    members: BTreeSet<PodId>,
    rules: Vec<Rule>,
    peer_sets: Vec<PeerSetId>,
    named_ports: Vec<NamedPortKey>,
}

impl GroupState {
    fn governs(&self, d: Direction) -> bool {
        self.policy.rules(d).is_some()
    }

    fn directions(&self) -> Vec<Direction> {
        [Direction::Ingress, Direction::Egress].into_iter().filter(|d| self.governs(*d)).collect()
    }
}

#[derive(Debug, Clone)]
struct PeerSetState {
    selector: Arc<PeerSelector>,
    refs: usize,
    members: BTreeSet<PodId>,
}

#[derive(Debug, Clone, Default)]
struct NamedPortState {
    refs: usize,
    by_port: BTreeMap<u16, BTreeSet<PodId>>,
}

/// The cluster index together with the compiled model, updated together.
#[derive(Debug, Clone, Default)]
pub struct PolicyEngine {
    index: ClusterIndex,
    groups: BTreeMap<ObjectKey, GroupState>,
    peer_sets: HashMap<PeerSetId, PeerSetState>,
    /// For each namespace, the peer sets whose namespace scope includes it (named sets are
    /// listed under their namespace whether or not it exists yet).
    ns_peer_sets: HashMap<String, Vec<(PeerSetId, Arc<PeerSelector>)>>,
    /// The namespace labels `ns_peer_sets` was computed with (absent: namespace unknown).
    ns_labels: HashMap<String, Labels>,
    named_ports: HashMap<NamedPortKey, NamedPortState>,
    /// How many of a pod's groups isolate it, per namespace and direction.
    default_deny: BTreeMap<(String, Direction), BTreeMap<PodId, u32>>,
    /// Whether changes are being recorded (off for a bulk compile).
    recording: bool,
    /// Whether changes return their [`Delta`] (off: [`PolicyEngine::without_deltas`]).
    silent: bool,
    delta: Delta,
}

impl PolicyEngine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Compiles a whole index at once.
    pub fn from_index(index: ClusterIndex) -> Self {
        let mut engine = PolicyEngine::new();
        let policies: Vec<NetworkPolicy> = index.policies().cloned().collect();
        engine.index = index;
        let namespaces: Vec<String> = engine.index.namespaces().map(|(n, _)| n.to_string()).collect();
        for ns in &namespaces {
            engine.sync_namespace(ns);
        }
        for p in policies {
            engine.add_policy(p);
        }
        engine
    }

    /// An engine whose changes return no [`Delta`] (empty ones): for callers that rebuild what
    /// they need from the model after changes and never read deltas (the controller), which
    /// spares recording and normalising every membership change.
    pub fn without_deltas() -> Self {
        PolicyEngine { silent: true, ..Self::default() }
    }

    pub fn index(&self) -> &ClusterIndex {
        &self.index
    }

    /// Gives pod `id` the addresses `ips` (what the network assigned it). Memberships depend
    /// on labels, never on addresses, so nothing is recomputed; with deltas, every set the pod
    /// is in sees it leave with its old addresses and come back with the new ones (as
    /// [`PolicyEngine::apply_pod`] would say).
    pub fn set_pod_ips(&mut self, id: PodId, ips: Vec<IpAddr>) -> Delta {
        let Some(pod) = self.index.pod(id) else { return Delta::default() };
        if pod.ips == ips {
            return Delta::default();
        }
        if !self.silent {
            let mut pod = pod.clone();
            pod.ips = ips;
            return self.apply_pod(pod);
        }
        self.index.set_pod_ips(id, ips);
        Delta::default()
    }

    fn begin(&mut self) {
        self.recording = !self.silent;
        self.delta = Delta::default();
    }

    fn finish(&mut self) -> Delta {
        self.recording = false;
        let mut d = std::mem::take(&mut self.delta);
        d.normalize();
        d
    }

    /// Applies any object; returns what changed in the model.
    pub fn apply(&mut self, object: ClusterObject) -> Delta {
        match object {
            ClusterObject::Namespace(ns) => self.apply_namespace(ns),
            ClusterObject::Pod(p) => self.apply_pod(p),
            ClusterObject::NetworkPolicy(p) => self.apply_policy(p),
            other => {
                self.index.apply(other);
                Delta::default()
            }
        }
    }

    pub fn delete(&mut self, kind: Kind, key: &ObjectKey) -> Delta {
        match kind {
            Kind::Namespace => self.delete_namespace(&key.name),
            Kind::Pod => self.delete_pod(key),
            Kind::NetworkPolicy => self.delete_policy(key),
            Kind::Service
            | Kind::EndpointSlice
            | Kind::Node
            | Kind::NetworkAttachmentDefinition
            | Kind::MultiNetworkPolicy => {
                self.index.delete(kind, key);
                Delta::default()
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Pods: membership only.

    pub fn apply_pod(&mut self, pod: Pod) -> Delta {
        self.begin();
        let ns = pod.key.namespace.clone();
        let (id, old) = self.index.apply_pod(pod);
        self.sync_namespace(&ns);
        let new = self.index.pod(id).cloned().expect("just applied");
        let before = old.as_ref().map(|o| self.memberships(o)).unwrap_or_default();
        let after = self.memberships(&new);
        let old_ips = old.as_ref().map(|o| o.ips.clone()).unwrap_or_default();
        for s in before.iter().filter(|s| !after.contains(s)) {
            self.leave(s, id, &new.key, &old_ips);
        }
        for s in after.iter().filter(|s| !before.contains(s)) {
            self.join(s, id, &new.key, &new.ips);
        }
        if old.is_some() && old_ips != new.ips && self.recording {
            // Same sets, new addresses: every set it stays in sees it leave with the old
            // addresses and come back with the new ones.
            let mut stayed: Vec<SetRef> = before.iter().filter(|s| after.contains(s)).cloned().collect();
            let isolates = |sets: &[SetRef], d: Direction| {
                sets.iter().any(|s| matches!(s, SetRef::Group(k) if self.groups.get(k).is_some_and(|g| g.governs(d))))
            };
            for d in [Direction::Ingress, Direction::Egress] {
                if isolates(&before, d) && isolates(&after, d) {
                    stayed.push(SetRef::DefaultDeny { namespace: ns.clone(), direction: d });
                }
            }
            for s in stayed {
                self.record(s.clone(), &new.key, &old_ips, false);
                self.record(s, &new.key, &new.ips, true);
            }
        }
        self.finish()
    }

    pub fn delete_pod(&mut self, key: &ObjectKey) -> Delta {
        self.begin();
        if let Some((id, old)) = self.index.delete_pod(key) {
            for s in self.memberships(&old) {
                self.leave(&s, id, key, &old.ips);
            }
            self.sync_namespace(&key.namespace);
        }
        self.finish()
    }

    /// The sets a pod belongs to under the current policies, namespaces and its own labels
    /// (default-deny groups follow from the groups and are maintained by [`Self::join`]).
    fn memberships(&self, pod: &Pod) -> Vec<SetRef> {
        let mut out = Vec::new();
        if pod.terminated {
            return out;
        }
        if pod.is_policy_subject() {
            for (key, g) in self.groups.range(ObjectKey::new(pod.key.namespace.as_str(), "")..) {
                if key.namespace != pod.key.namespace {
                    break;
                }
                if g.policy.pod_selector.matches(&pod.labels) {
                    out.push(SetRef::Group(key.clone()));
                }
            }
            // The list holds exactly the sets whose namespace scope includes this namespace.
            if let Some(sets) = self.ns_peer_sets.get(&pod.key.namespace) {
                for (id, sel) in sets {
                    if sel.pods.matches(&pod.labels) {
                        out.push(SetRef::PeerSet(id.clone()));
                    }
                }
            }
        }
        for p in &pod.ports {
            if let Some(name) = &p.name {
                let key = NamedPortKey { protocol: p.protocol, name: name.clone() };
                // A name used twice resolves to its first port, as Kubernetes resolves it.
                if self.named_ports.contains_key(&key) && pod.named_port(name, p.protocol) == Some(p.port) {
                    out.push(SetRef::NamedPort { key, port: p.port });
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    fn record(&mut self, set: SetRef, pod: &ObjectKey, addresses: &[IpAddr], added: bool) {
        if self.recording {
            self.delta.membership.push(MembershipChange {
                set,
                pod: pod.clone(),
                addresses: addresses.to_vec(),
                added,
            });
        }
    }

    fn join(&mut self, set: &SetRef, id: PodId, key: &ObjectKey, ips: &[IpAddr]) {
        let inserted = match set {
            SetRef::Group(k) => {
                let Some(g) = self.groups.get_mut(k) else { return };
                let inserted = g.members.insert(id);
                if inserted {
                    let dirs = g.directions();
                    self.deny_adjust(&dirs, id, key, ips, true);
                }
                inserted
            }
            SetRef::PeerSet(psid) => self.peer_sets.get_mut(psid).is_some_and(|ps| ps.members.insert(id)),
            SetRef::NamedPort { key: npk, port } => match self.named_ports.get_mut(npk) {
                Some(np) => {
                    let pods = np.by_port.entry(*port).or_default();
                    let first = pods.is_empty();
                    let inserted = pods.insert(id);
                    if first && self.recording {
                        self.delta.sets_created.push(set.clone());
                    }
                    inserted
                }
                None => false,
            },
            SetRef::DefaultDeny { .. } => unreachable!("default-deny membership follows the groups"),
        };
        if inserted {
            self.record(set.clone(), key, ips, true);
        }
    }

    /// A pod joined (or left) a group isolating it in `dirs`: its namespace's default-deny
    /// groups count it, and report it when the count leaves (or returns to) zero.
    fn deny_adjust(&mut self, dirs: &[Direction], id: PodId, key: &ObjectKey, ips: &[IpAddr], joined: bool) {
        for &d in dirs {
            let dk = (key.namespace.clone(), d);
            let set = SetRef::DefaultDeny { namespace: key.namespace.clone(), direction: d };
            if joined && !self.default_deny.contains_key(&dk) && self.recording {
                self.delta.sets_created.push(set.clone());
            }
            let counts = self.default_deny.entry(dk.clone()).or_default();
            let changed = if joined {
                let c = counts.entry(id).or_insert(0);
                *c += 1;
                *c == 1
            } else {
                match counts.get_mut(&id) {
                    Some(c) if *c > 1 => {
                        *c -= 1;
                        false
                    }
                    Some(_) => {
                        counts.remove(&id);
                        true
                    }
                    None => false,
                }
            };
            let emptied = counts.is_empty();
            if changed {
                self.record(set.clone(), key, ips, joined);
            }
            if emptied {
                self.default_deny.remove(&dk);
                if self.recording {
                    self.delta.sets_dropped.push(set);
                }
            }
        }
    }

    fn leave(&mut self, set: &SetRef, id: PodId, key: &ObjectKey, ips: &[IpAddr]) {
        let removed = match set {
            SetRef::Group(k) => {
                let Some(g) = self.groups.get_mut(k) else { return };
                let removed = g.members.remove(&id);
                if removed {
                    let dirs = g.directions();
                    self.deny_adjust(&dirs, id, key, ips, false);
                }
                removed
            }
            SetRef::PeerSet(psid) => self.peer_sets.get_mut(psid).is_some_and(|ps| ps.members.remove(&id)),
            SetRef::NamedPort { key: npk, port } => match self.named_ports.get_mut(npk) {
                Some(np) => {
                    let removed = np.by_port.get_mut(port).is_some_and(|pods| pods.remove(&id));
                    if np.by_port.get(port).is_some_and(BTreeSet::is_empty) {
                        np.by_port.remove(port);
                        if self.recording {
                            self.delta.sets_dropped.push(set.clone());
                        }
                    }
                    removed
                }
                None => false,
            },
            SetRef::DefaultDeny { .. } => unreachable!("default-deny membership follows the groups"),
        };
        if removed {
            self.record(set.clone(), key, ips, false);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Namespaces: labels decide which namespace-selector peer sets include their pods.

    pub fn apply_namespace(&mut self, ns: Namespace) -> Delta {
        self.begin();
        let name = ns.name.clone();
        self.index.apply_namespace(ns);
        self.sync_namespace(&name);
        self.finish()
    }

    pub fn delete_namespace(&mut self, name: &str) -> Delta {
        self.begin();
        self.index.delete_namespace(name);
        self.sync_namespace(name);
        self.finish()
    }

    /// Brings `ns_peer_sets[ns]` and the members of namespace-selector sets in line with the
    /// namespace's current labels.
    fn sync_namespace(&mut self, ns: &str) {
        let current = self.index.namespace_labels(ns).cloned();
        if self.ns_labels.get(ns) == current.as_ref() {
            return;
        }
        let selected: Vec<(PeerSetId, Arc<PeerSelector>)> = self
            .peer_sets
            .iter()
            .filter(|(_, s)| matches!(s.selector.namespaces, NamespaceScope::Selected(_)))
            .map(|(id, s)| (id.clone(), s.selector.clone()))
            .collect();
        for (id, sel) in selected {
            let NamespaceScope::Selected(nsel) = &sel.namespaces else { continue };
            let was = self.ns_labels.get(ns).is_some_and(|l| nsel.matches(l));
            let now = current.as_ref().is_some_and(|l| nsel.matches(l));
            if was == now {
                continue;
            }
            let list = self.ns_peer_sets.entry(ns.to_string()).or_default();
            if now {
                list.push((id.clone(), sel.clone()));
            } else {
                list.retain(|(i, _)| *i != id);
            }
            let pods: Vec<(PodId, ObjectKey, Vec<IpAddr>, bool)> = self
                .index
                .pods_in(ns)
                .map(|(pid, p)| {
                    (pid, p.key.clone(), p.ips.clone(), p.is_policy_subject() && sel.pods.matches(&p.labels))
                })
                .collect();
            let set = SetRef::PeerSet(id.clone());
            for (pid, key, ips, matches) in pods {
                if now && matches {
                    self.join(&set, pid, &key, &ips);
                } else if !now {
                    self.leave(&set, pid, &key, &ips);
                }
            }
        }
        match current {
            Some(l) => {
                self.ns_labels.insert(ns.to_string(), l);
            }
            None => {
                self.ns_labels.remove(ns);
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Policies: rules, groups and the sets their rules use.

    pub fn apply_policy(&mut self, policy: NetworkPolicy) -> Delta {
        self.begin();
        self.index.apply_policy(policy.clone());
        let old = self.groups.remove(&policy.key);
        // Take the new references first so that sets shared by the old and new versions are
        // kept, not dropped and rebuilt.
        self.add_policy(policy);
        if let Some(old) = old {
            self.release_policy(old);
        }
        self.finish()
    }

    pub fn delete_policy(&mut self, key: &ObjectKey) -> Delta {
        self.begin();
        self.index.delete_policy(key);
        if let Some(old) = self.groups.remove(key) {
            self.release_policy(old);
        }
        self.finish()
    }

    fn add_policy(&mut self, policy: NetworkPolicy) {
        let key = policy.key.clone();
        let (rules, peer_sets, named_ports) = compile_rules(&policy);
        for sel in &peer_sets {
            self.acquire_peer_set(sel);
        }
        let peer_set_ids: Vec<PeerSetId> = peer_sets.iter().map(PeerSetId::of).collect();
        for np in &named_ports {
            self.acquire_named_port(np);
        }
        if self.recording {
            self.delta.sets_created.push(SetRef::Group(key.clone()));
            self.delta.rules_added.extend(rules.iter().cloned());
        }
        let selector = policy.pod_selector.clone();
        self.groups.insert(
            key.clone(),
            GroupState { policy, members: BTreeSet::new(), rules, peer_sets: peer_set_ids, named_ports },
        );
        let members: Vec<(PodId, ObjectKey, Vec<IpAddr>)> = self
            .index
            .pods_in(&key.namespace)
            .filter(|(_, p)| p.is_policy_subject() && selector.matches(&p.labels))
            .map(|(id, p)| (id, p.key.clone(), p.ips.clone()))
            .collect();
        let set = SetRef::Group(key);
        for (id, k, ips) in members {
            self.join(&set, id, &k, &ips);
        }
    }

    fn release_policy(&mut self, old: GroupState) {
        let key = old.policy.key.clone();
        let dirs = old.directions();
        let set = SetRef::Group(key.clone());
        for id in &old.members {
            let Some(p) = self.index.pod(*id) else { continue };
            let (k, ips) = (p.key.clone(), p.ips.clone());
            self.record(set.clone(), &k, &ips, false);
            self.deny_adjust(&dirs, *id, &k, &ips, false);
        }
        if self.recording {
            self.delta.rules_removed.extend(old.rules);
            self.delta.sets_dropped.push(set);
        }
        for id in &old.peer_sets {
            self.release_peer_set(id);
        }
        for np in &old.named_ports {
            self.release_named_port(np);
        }
    }

    fn acquire_peer_set(&mut self, selector: &PeerSelector) {
        let id = PeerSetId::of(selector);
        if let Some(s) = self.peer_sets.get_mut(&id) {
            debug_assert_eq!(*s.selector, *selector, "peer set id collision");
            s.refs += 1;
            return;
        }
        let sel = Arc::new(selector.clone());
        if self.recording {
            self.delta.sets_created.push(SetRef::PeerSet(id.clone()));
        }
        self.peer_sets.insert(id.clone(), PeerSetState { selector: sel.clone(), refs: 1, members: BTreeSet::new() });
        let namespaces: Vec<String> = match &sel.namespaces {
            NamespaceScope::Named(ns) => vec![ns.clone()],
            NamespaceScope::Selected(nsel) => {
                self.ns_labels.iter().filter(|(_, l)| nsel.matches(l)).map(|(n, _)| n.clone()).collect()
            }
        };
        let set = SetRef::PeerSet(id.clone());
        for ns in namespaces {
            self.ns_peer_sets.entry(ns.clone()).or_default().push((id.clone(), sel.clone()));
            let pods: Vec<(PodId, ObjectKey, Vec<IpAddr>)> = self
                .index
                .pods_in(&ns)
                .filter(|(_, p)| p.is_policy_subject() && sel.pods.matches(&p.labels))
                .map(|(pid, p)| (pid, p.key.clone(), p.ips.clone()))
                .collect();
            for (pid, k, ips) in pods {
                self.join(&set, pid, &k, &ips);
            }
        }
    }

    fn release_peer_set(&mut self, id: &PeerSetId) {
        let Some(s) = self.peer_sets.get_mut(id) else { return };
        s.refs -= 1;
        if s.refs > 0 {
            return;
        }
        let s = self.peer_sets.remove(id).expect("present");
        for list in self.ns_peer_sets.values_mut() {
            list.retain(|(i, _)| i != id);
        }
        self.ns_peer_sets.retain(|_, l| !l.is_empty());
        if self.recording {
            for pid in &s.members {
                if let Some(p) = self.index.pod(*pid) {
                    let (k, ips) = (p.key.clone(), p.ips.clone());
                    self.record(SetRef::PeerSet(id.clone()), &k, &ips, false);
                }
            }
            self.delta.sets_dropped.push(SetRef::PeerSet(id.clone()));
        }
    }

    fn acquire_named_port(&mut self, key: &NamedPortKey) {
        if let Some(np) = self.named_ports.get_mut(key) {
            np.refs += 1;
            return;
        }
        self.named_ports.insert(key.clone(), NamedPortState { refs: 1, by_port: BTreeMap::new() });
        let pods: Vec<(PodId, ObjectKey, Vec<IpAddr>, u16)> = self
            .index
            .pods()
            .filter(|(_, p)| !p.terminated)
            .filter_map(|(id, p)| {
                p.named_port(&key.name, key.protocol).map(|port| (id, p.key.clone(), p.ips.clone(), port))
            })
            .collect();
        for (id, k, ips, port) in pods {
            self.join(&SetRef::NamedPort { key: key.clone(), port }, id, &k, &ips);
        }
    }

    fn release_named_port(&mut self, key: &NamedPortKey) {
        let Some(np) = self.named_ports.get_mut(key) else { return };
        np.refs -= 1;
        if np.refs > 0 {
            return;
        }
        let np = self.named_ports.remove(key).expect("present");
        if self.recording {
            for (port, pods) in np.by_port {
                let set = SetRef::NamedPort { key: key.clone(), port };
                for pid in pods {
                    if let Some(p) = self.index.pod(pid) {
                        let (k, ips) = (p.key.clone(), p.ips.clone());
                        self.record(set.clone(), &k, &ips, false);
                    }
                }
                self.delta.sets_dropped.push(set);
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Reading the model.

    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.groups.values().flat_map(|g| g.rules.iter())
    }

    pub fn rule_count(&self) -> usize {
        self.groups.values().map(|g| g.rules.len()).sum()
    }

    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    pub fn peer_set_count(&self) -> usize {
        self.peer_sets.len()
    }

    /// What a translation with one rule per peer pod address per port (kuryr-kubernetes's)
    /// would write for the same policies: each rule times the addresses of its peer set (an
    /// ipBlock or "any" counts one) times its port entries (a range counts one, a named port
    /// one per number it resolves to).
    pub fn naive_rule_count(&self) -> usize {
        let mut total = 0;
        for r in self.rules() {
            let peers = match &r.peer {
                RulePeer::Any | RulePeer::Block(_) => 1,
                RulePeer::Set(id) => {
                    self.peer_sets[id].members.iter().filter_map(|m| self.index.pod(*m)).map(|p| p.ips.len()).sum()
                }
            };
            let ports = if r.ports.is_any() {
                1
            } else {
                let named: usize = match r.protocol {
                    Some(protocol) => r
                        .ports
                        .named
                        .iter()
                        .map(|n| {
                            self.named_ports
                                .get(&NamedPortKey { protocol, name: n.clone() })
                                .map_or(0, |np| np.by_port.len())
                        })
                        .sum(),
                    None => 0,
                };
                r.ports.ranges.len() + named
            };
            total += peers * ports;
        }
        total
    }

    /// The policy groups in key order, borrowed: members are the indexed pods themselves.
    pub fn groups(&self) -> impl Iterator<Item = (&ObjectKey, GroupRef<'_>)> {
        self.groups.iter().map(|(k, g)| {
            let members = Members { index: &self.index, ids: MemberIds::Set(&g.members) };
            (k, GroupRef { ingress: g.policy.ingress.is_some(), egress: g.policy.egress.is_some(), members })
        })
    }

    /// The peer sets (in no particular order): id, selector, members.
    pub fn peer_sets(&self) -> impl Iterator<Item = (&PeerSetId, &PeerSelector, Members<'_>)> {
        self.peer_sets
            .iter()
            .map(|(id, s)| (id, &*s.selector, Members { index: &self.index, ids: MemberIds::Set(&s.members) }))
    }

    /// The named ports in use (in no particular order): for each, the port numbers it resolves
    /// to and the pods that resolve it so.
    pub fn named_ports(&self) -> impl Iterator<Item = (&NamedPortKey, impl Iterator<Item = (u16, Members<'_>)>)> {
        self.named_ports.iter().map(|(k, np)| {
            let ports =
                np.by_port.iter().map(|(p, ids)| (*p, Members { index: &self.index, ids: MemberIds::Set(ids) }));
            (k, ports)
        })
    }

    /// The port numbers a named port resolves to on some pod, ascending.
    pub fn named_port_numbers(&self, key: &NamedPortKey) -> impl Iterator<Item = u16> + '_ {
        self.named_ports.get(key).into_iter().flat_map(|np| np.by_port.keys().copied())
    }

    /// Per namespace and direction, the pods some policy isolates.
    pub fn default_deny(&self) -> impl Iterator<Item = (&str, Direction, Members<'_>)> {
        self.default_deny
            .iter()
            .map(|((ns, d), counts)| (ns.as_str(), *d, Members { index: &self.index, ids: MemberIds::Counted(counts) }))
    }

    /// The whole model with pods named by key, for comparison and display.
    pub fn model(&self) -> PolicyModel {
        let key = |id: &PodId| self.index.pod(*id).map(|p| p.key.clone()).expect("members are indexed pods");
        PolicyModel {
            groups: self
                .groups
                .iter()
                .map(|(k, g)| {
                    let view = GroupView {
                        ingress: g.policy.ingress.is_some(),
                        egress: g.policy.egress.is_some(),
                        members: g.members.iter().map(key).collect(),
                    };
                    (k.clone(), view)
                })
                .collect(),
            peer_sets: self
                .peer_sets
                .iter()
                .map(|(id, s)| {
                    let view = PeerSetView {
                        selector: (*s.selector).clone(),
                        refs: s.refs,
                        members: s.members.iter().map(key).collect(),
                    };
                    (id.clone(), view)
                })
                .collect(),
            named_ports: self
                .named_ports
                .iter()
                .map(|(k, np)| {
                    let ports = np.by_port.iter().map(|(port, pods)| (*port, pods.iter().map(key).collect())).collect();
                    (k.clone(), ports)
                })
                .collect(),
            default_deny: self
                .default_deny
                .iter()
                .map(|(k, counts)| (k.clone(), counts.keys().map(key).collect()))
                .collect(),
            rules: self.rules().cloned().collect(),
        }
    }

    // ---------------------------------------------------------------------------------------
    // Reachability over the compiled model, matching addresses the way a dataplane does.

    /// Decides a probe using only groups, sets and rules (addresses matched by IP when the pods
    /// have IPs, by membership otherwise).
    pub fn allowed_by_model(&self, from: PodId, to: PodId, port: u16, protocol: Protocol) -> bool {
        let (Some(src), Some(dst)) = (self.index.pod(from), self.index.pod(to)) else { return false };
        let (src_ip, dst_ip) = probe_addresses(src, dst);
        self.direction_allows(Direction::Egress, from, src, to, dst, dst_ip, port, protocol)
            && self.direction_allows(Direction::Ingress, to, dst, from, src, src_ip, port, protocol)
    }

    fn isolated(&self, d: Direction, id: PodId, pod: &Pod) -> bool {
        self.default_deny.get(&(pod.key.namespace.clone(), d)).is_some_and(|c| c.contains_key(&id))
    }

    /// `subject` is the isolated side (sender for egress, receiver for ingress), `other` the
    /// peer, `other_ip` the peer's address in the packet.
    #[allow(clippy::too_many_arguments)]
    fn direction_allows(
        &self,
        d: Direction,
        subject_id: PodId,
        subject: &Pod,
        other_id: PodId,
        other: &Pod,
        other_ip: Option<IpAddr>,
        port: u16,
        protocol: Protocol,
    ) -> bool {
        if !self.isolated(d, subject_id, subject) {
            return true;
        }
        let dst_id = match d {
            Direction::Egress => other_id,
            Direction::Ingress => subject_id,
        };
        let dst_ip = match d {
            Direction::Egress => other_ip,
            Direction::Ingress => probe_addresses(other, subject).1,
        };
        let in_set = |members: &BTreeSet<PodId>, id: PodId, ip: Option<IpAddr>| match ip {
            Some(ip) => members.iter().any(|m| self.index.pod(*m).is_some_and(|p| p.ips.contains(&ip))),
            None => members.contains(&id),
        };
        self.groups
            .range(ObjectKey::new(subject.key.namespace.as_str(), "")..)
            .take_while(|(k, _)| k.namespace == subject.key.namespace)
            .filter(|(_, g)| g.governs(d) && g.members.contains(&subject_id))
            .flat_map(|(_, g)| g.rules.iter())
            .filter(|r| r.direction == d)
            .any(|r| {
                let peer_ok = match &r.peer {
                    RulePeer::Any => true,
                    RulePeer::Set(id) => self.peer_sets.get(id).is_some_and(|s| in_set(&s.members, other_id, other_ip)),
                    RulePeer::Block(b) => other_ip.is_some_and(|ip| b.contains(ip)),
                };
                let port_ok = match r.protocol {
                    None => true,
                    Some(p) if p != protocol => false,
                    Some(_) if r.ports.is_any() => true,
                    Some(p) => {
                        r.ports.ranges.iter().any(|(a, b)| (*a..=*b).contains(&port))
                            || r.ports.named.iter().any(|n| {
                                self.named_ports
                                    .get(&NamedPortKey { protocol: p, name: n.clone() })
                                    .and_then(|np| np.by_port.get(&port))
                                    .is_some_and(|pods| in_set(pods, dst_id, dst_ip))
                            })
                    }
                };
                peer_ok && port_ok
            })
    }
}

/// Rules of one policy, and the peer sets and named ports they use.
fn compile_rules(policy: &NetworkPolicy) -> (Vec<Rule>, Vec<PeerSelector>, Vec<NamedPortKey>) {
    let mut rules = Vec::new();
    let mut peer_sets = BTreeSet::new();
    let mut named = BTreeSet::new();
    let dirs = [(Direction::Ingress, &policy.ingress), (Direction::Egress, &policy.egress)];
    for (direction, list) in dirs {
        for (rule_index, rule) in list.iter().flatten().enumerate() {
            let peers: Vec<RulePeer> = if rule.peers.is_empty() {
                vec![RulePeer::Any]
            } else {
                rule.peers
                    .iter()
                    .map(|p| match p {
                        Peer::Pods(sel) => {
                            peer_sets.insert(sel.clone());
                            RulePeer::Set(PeerSetId::of(sel))
                        }
                        Peer::IpBlock(b) => RulePeer::Block(b.clone()),
                    })
                    .collect()
            };
            for (protocol, ports) in port_groups(rule) {
                if let Some(p) = protocol {
                    for n in &ports.named {
                        named.insert(NamedPortKey { protocol: p, name: n.clone() });
                    }
                }
                for peer in &peers {
                    rules.push(Rule {
                        policy: policy.key.clone(),
                        direction,
                        rule_index,
                        peer: peer.clone(),
                        protocol,
                        ports: ports.clone(),
                    });
                }
            }
        }
    }
    (rules, peer_sets.into_iter().collect(), named.into_iter().collect())
}

/// A rule's ports grouped by protocol; no ports at all is one group for every protocol.
fn port_groups(rule: &PolicyRule) -> Vec<(Option<Protocol>, PortSet)> {
    if rule.ports.is_empty() {
        return vec![(None, PortSet::default())];
    }
    let mut out = Vec::new();
    for protocol in Protocol::ALL {
        let specs: Vec<&PolicyPortSpec> =
            rule.ports.iter().filter(|p| p.protocol == protocol).map(|p| &p.port).collect();
        if specs.is_empty() {
            continue;
        }
        if specs.iter().any(|s| matches!(s, PolicyPortSpec::Numbers(PortMatch::Any))) {
            out.push((Some(protocol), PortSet::default()));
            continue;
        }
        let mut ranges: Vec<(u16, u16)> = specs
            .iter()
            .filter_map(|s| match s {
                PolicyPortSpec::Numbers(PortMatch::Range { from, to }) => Some((*from, *to)),
                _ => None,
            })
            .collect();
        ranges.sort();
        let mut merged: Vec<(u16, u16)> = Vec::new();
        for (a, b) in ranges {
            match merged.last_mut() {
                Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        let mut named: Vec<String> = specs
            .iter()
            .filter_map(|s| match s {
                PolicyPortSpec::Named(n) => Some(n.clone()),
                _ => None,
            })
            .collect();
        named.sort();
        named.dedup();
        out.push((Some(protocol), PortSet { ranges: merged, named }));
    }
    out
}

/// Pods of a group or set, borrowed from the engine (nothing copied).
#[derive(Debug, Clone, Copy)]
pub struct Members<'a> {
    index: &'a ClusterIndex,
    ids: MemberIds<'a>,
}

#[derive(Debug, Clone, Copy)]
enum MemberIds<'a> {
    Set(&'a BTreeSet<PodId>),
    /// Pods with a count of the groups putting them there.
    Counted(&'a BTreeMap<PodId, u32>),
}

impl<'a> Members<'a> {
    pub fn pods(self) -> impl Iterator<Item = &'a Pod> + 'a {
        let ids: Box<dyn Iterator<Item = &'a PodId> + 'a> = match self.ids {
            MemberIds::Set(s) => Box::new(s.iter()),
            MemberIds::Counted(m) => Box::new(m.keys()),
        };
        let index = self.index;
        ids.filter_map(move |id| index.pod(*id))
    }

    pub fn len(self) -> usize {
        match self.ids {
            MemberIds::Set(s) => s.len(),
            MemberIds::Counted(m) => m.len(),
        }
    }

    pub fn is_empty(self) -> bool {
        self.len() == 0
    }
}

/// A policy's group, borrowed from the engine.
#[derive(Debug, Clone, Copy)]
pub struct GroupRef<'a> {
    pub ingress: bool,
    pub egress: bool,
    pub members: Members<'a>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    pub ingress: bool,
    pub egress: bool,
    pub members: BTreeSet<ObjectKey>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSetView {
    pub selector: PeerSelector,
    pub refs: usize,
    pub members: BTreeSet<ObjectKey>,
}

/// The compiled model with pods named by key: comparable, printable, independent of ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyModel {
    pub groups: BTreeMap<ObjectKey, GroupView>,
    pub peer_sets: BTreeMap<PeerSetId, PeerSetView>,
    pub named_ports: BTreeMap<NamedPortKey, BTreeMap<u16, BTreeSet<ObjectKey>>>,
    pub default_deny: BTreeMap<(String, Direction), BTreeSet<ObjectKey>>,
    pub rules: Vec<Rule>,
}
