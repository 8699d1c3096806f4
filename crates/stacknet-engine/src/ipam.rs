//! Address management for OVN mode: a subnet per node out of the cluster CIDR (or the node's
//! own `spec.podCIDRs` when the cluster allocates them), and an address per pod out of its
//! node's subnet. Level-based: [`Ipam::sync`] brings the allocation in line with the cluster
//! index and can be called as often as one likes; what a previous run assigned (read back from
//! the network with [`Ipam::restore_node`] / [`Ipam::restore_pod`]) is kept while it is still
//! valid, so a restarted controller reassigns nothing.
//!
//! In each node subnet the first address is the router port (the pods' gateway), the second
//! the node's management port (the node's own address on the pod network, as ovn-kubernetes
//! places it); pods get the lowest free address after those. A pod that already held the
//! second address before management ports existed keeps it, and the management port takes the
//! lowest free one instead: nothing running moves.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::ClusterIndex;
use crate::net::Cidr;
use crate::objects::{ObjectKey, Pod};
pub use crate::problem::Problem;
use crate::problem::{ObjectRef, Reason};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    /// The cluster's pod CIDRs, at most one per IP family.
    pub cluster: Vec<Cidr>,
    /// The prefix length of a node's IPv4 subnet (default 24).
    pub node_prefix_v4: u8,
    /// The prefix length of a node's IPv6 subnet (default 64).
    pub node_prefix_v6: u8,
}

impl IpamConfig {
    pub fn new(cluster: Vec<Cidr>) -> IpamConfig {
        IpamConfig { cluster, node_prefix_v4: 24, node_prefix_v6: 64 }
    }

    /// Checks the configuration; the error names the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let cidr = |message: String| ConfigError { setting: "cluster CIDR", message };
        if self.cluster.is_empty() {
            return Err(cidr("at least one is required".into()));
        }
        for family in [true, false] {
            let of: Vec<&Cidr> = self.cluster.iter().filter(|c| c.is_ipv4() == family).collect();
            if of.len() > 1 {
                return Err(cidr(format!("at most one per IP family ({} and {})", of[0], of[1])));
            }
            let Some(c) = of.first() else { continue };
            let (node, max) = if family { (self.node_prefix_v4, 29) } else { (self.node_prefix_v6, 125) };
            if node < c.prefix_len() || node > max {
                return Err(ConfigError {
                    setting: "node subnet size",
                    message: format!("/{node} must lie between the cluster CIDR's /{} and /{max}", c.prefix_len()),
                });
            }
        }
        Ok(())
    }

    fn node_prefix(&self, v4: bool) -> u8 {
        if v4 { self.node_prefix_v4 } else { self.node_prefix_v6 }
    }
}

/// A configuration that cannot work: the setting, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub message: String,
}

/// The allocation after a [`Ipam::sync`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// Node → its subnets, each with the router port's (gateway) address.
    pub nodes: BTreeMap<String, Vec<(Cidr, IpAddr)>>,
    /// Pod → its node and addresses (one per family the node has).
    pub pods: BTreeMap<ObjectKey, (String, Vec<IpAddr>)>,
    /// Node → its management port's addresses, one per subnet, in the order of `nodes`.
    pub management: BTreeMap<String, Vec<IpAddr>>,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, Default)]
pub struct Ipam {
    config: Option<IpamConfig>,
    nodes: BTreeMap<String, Vec<Cidr>>,
    pods: BTreeMap<ObjectKey, (String, Vec<IpAddr>)>,
    management: BTreeMap<String, Vec<IpAddr>>,
    /// Addresses others use on our networks (a VM's port on a node switch): never given out.
    reserved: BTreeMap<IpAddr, String>,
}

fn offset(c: &Cidr, i: u128) -> Option<IpAddr> {
    let size_bits = if c.is_ipv4() { 32 } else { 128 } - u32::from(c.prefix_len());
    if size_bits < 128 && i >= (1u128 << size_bits) {
        return None;
    }
    Some(match c.network() {
        IpAddr::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n).checked_add(u32::try_from(i).ok()?)?)),
        IpAddr::V6(n) => IpAddr::V6(Ipv6Addr::from(u128::from(n).checked_add(i)?)),
    })
}

/// The router port's address in a node subnet.
pub fn gateway(c: &Cidr) -> IpAddr {
    offset(c, 1).unwrap_or(c.network())
}

/// Whether `ip` may be a pod's in subnet `c`: inside, not the network address, not the
/// gateway, not the IPv4 broadcast address.
fn assignable(c: &Cidr, ip: IpAddr) -> bool {
    if !c.contains(ip) || ip == c.network() || ip == gateway(c) {
        return false;
    }
    let last = if c.is_ipv4() { offset(c, (1u128 << (32 - u32::from(c.prefix_len()))) - 1) } else { None };
    Some(ip) != last
}

fn overlaps(a: &Cidr, b: &Cidr) -> bool {
    a.covers(b) || b.covers(a)
}

impl Ipam {
    pub fn new(config: IpamConfig) -> Result<Ipam, ConfigError> {
        config.validate()?;
        Ok(Ipam { config: Some(config), ..Ipam::default() })
    }

    /// A node subnet a previous run allocated.
    pub fn restore_node(&mut self, node: &str, subnet: Cidr) {
        let subnets = self.nodes.entry(node.to_string()).or_default();
        if !subnets.iter().any(|s| s.is_ipv4() == subnet.is_ipv4()) {
            subnets.push(subnet);
        }
    }

    /// A node's management address a previous run allocated.
    pub fn restore_management(&mut self, node: &str, ip: IpAddr) {
        let ips = self.management.entry(node.to_string()).or_default();
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }

    /// A pod address a previous run allocated.
    pub fn restore_pod(&mut self, pod: ObjectKey, node: &str, ips: Vec<IpAddr>) {
        self.pods.insert(pod, (node.to_string(), ips));
    }

    /// Addresses used by ports stacknet does not own (address → who uses it): new pods never
    /// get them, and a pod that already has one is reported.
    pub fn set_reserved(&mut self, reserved: BTreeMap<IpAddr, String>) {
        self.reserved = reserved;
    }

    /// Allocates what the cluster needs now, releases what it no longer has.
    pub fn sync(&mut self, index: &ClusterIndex) -> Assignment {
        let mut out = Assignment::default();
        self.sync_nodes(index, &mut out);
        self.sync_pods(index, &mut out);
        out
    }

    fn sync_nodes(&mut self, index: &ClusterIndex, out: &mut Assignment) {
        let wanted: BTreeSet<&str> = index.nodes().map(|n| n.name.as_str()).collect();
        self.nodes.retain(|n, _| wanted.contains(n.as_str()));
        // Subnets the cluster assigned (spec.podCIDRs) win over ours.
        for node in index.nodes().filter(|n| !n.pod_cidrs.is_empty()) {
            self.nodes.insert(node.name.clone(), node.pod_cidrs.clone());
        }
        let cluster = self.config.as_ref().map(|c| c.cluster.clone()).unwrap_or_default();
        // Restored subnets outside the cluster CIDR or clashing with another node's are dropped.
        let mut taken: Vec<(String, Cidr)> = Vec::new();
        for node in index.nodes() {
            let Some(subnets) = self.nodes.get_mut(&node.name) else { continue };
            let own = !node.pod_cidrs.is_empty();
            subnets.retain(|s| {
                own || (cluster.iter().any(|c| c.covers(s))
                    && !taken.iter().any(|(other, t)| other != &node.name && overlaps(t, s)))
            });
            taken.extend(subnets.iter().map(|s| (node.name.clone(), *s)));
        }
        for node in index.nodes().filter(|n| n.pod_cidrs.is_empty()) {
            for c in &cluster {
                let has = self.nodes.get(&node.name).is_some_and(|s| s.iter().any(|s| s.is_ipv4() == c.is_ipv4()));
                if has {
                    continue;
                }
                match self.free_subnet(c, &taken) {
                    Some(s) => {
                        self.nodes.entry(node.name.clone()).or_default().push(s);
                        taken.push((node.name.clone(), s));
                    }
                    None => out.problems.push(Problem {
                        object: ObjectRef::node(&node.name),
                        reason: Reason::ClusterCIDRExhausted,
                        message: format!(
                            "no free /{} left in cluster CIDR {c} for node {}: pods on it get no network; enlarge the cluster CIDR or shrink the node subnet size",
                            self.config.as_ref().map_or(0, |k| k.node_prefix(c.is_ipv4())),
                            node.name
                        ),
                    }),
                }
            }
        }
        for (name, subnets) in &self.nodes {
            let mut v: Vec<(Cidr, IpAddr)> = subnets.iter().map(|s| (*s, gateway(s))).collect();
            v.sort_by_key(|(s, _)| !s.is_ipv4());
            out.nodes.insert(name.clone(), v);
        }
    }

    fn free_subnet(&self, cluster: &Cidr, taken: &[(String, Cidr)]) -> Option<Cidr> {
        let prefix = self.config.as_ref()?.node_prefix(cluster.is_ipv4());
        let bits = if cluster.is_ipv4() { 32 } else { 128 };
        let count_bits = u32::from(prefix - cluster.prefix_len());
        let step_bits = bits - u32::from(prefix);
        let base = u128_of(cluster.network());
        // In order; at most 2^20 candidates (a /8 into /24s is 2^16).
        let count = 1u128 << count_bits.min(20);
        (0..count).find_map(|i| {
            let s = Cidr::new(ip_of(base + (i << step_bits), cluster.is_ipv4())?, prefix)?;
            (!taken.iter().any(|(_, t)| overlaps(t, &s))).then_some(s)
        })
    }

    fn sync_pods(&mut self, index: &ClusterIndex, out: &mut Assignment) {
        let eligible = |p: &Pod| p.is_policy_subject();
        // The node a pod is on: its spec.nodeName, or (manifests without scheduling) the node
        // whose subnet holds the address its status shows.
        let node_of = |p: &Pod, nodes: &BTreeMap<String, Vec<(Cidr, IpAddr)>>| -> Option<String> {
            match &p.node {
                Some(n) => nodes.contains_key(n).then(|| n.clone()),
                None => {
                    let ip = p.status_ips.first()?;
                    nodes.iter().find(|(_, s)| s.iter().any(|(c, _)| c.contains(*ip))).map(|(n, _)| n.clone())
                }
            }
        };
        let mut pods: Vec<(&ObjectKey, &Pod, String)> = Vec::new();
        for (_, p) in index.pods().filter(|(_, p)| eligible(p)) {
            match node_of(p, &out.nodes) {
                Some(n) => pods.push((&p.key, p, n)),
                // Scheduled on a node we have no subnet for (unknown, or its subnet exhausted).
                None if p.node.as_ref().is_some_and(|n| index.node(n).is_none()) => out.problems.push(Problem {
                    object: ObjectRef::pod(&p.key),
                    reason: Reason::NodeUnknown,
                    message: format!(
                        "spec.nodeName {:?} names no Node the controller knows: the pod gets no network until the Node exists",
                        p.node.as_deref().unwrap_or_default()
                    ),
                }),
                // Not scheduled, but showing an address no node's subnet holds (manifests).
                None if p.node.is_none() && !p.status_ips.is_empty() => out.problems.push(Problem {
                    object: ObjectRef::pod(&p.key),
                    reason: Reason::NoNodeForAddress,
                    message: format!(
                        "no spec.nodeName, and no Node's subnet holds its address {}: give the pod a nodeName, or add the Node whose podCIDR holds it",
                        p.status_ips[0]
                    ),
                }),
                // Unscheduled and without an address: pending, nothing to say yet.
                None => {}
            }
        }
        let live: BTreeSet<&ObjectKey> = pods.iter().map(|(k, _, _)| *k).collect();
        self.pods.retain(|k, _| live.contains(k));

        let mut used: BTreeSet<IpAddr> = BTreeSet::new();
        let mut done: BTreeMap<ObjectKey, (String, Vec<IpAddr>)> = BTreeMap::new();
        let valid = |node: &str, ips: &[IpAddr], used: &BTreeSet<IpAddr>| -> bool {
            let Some(subnets) = out.nodes.get(node) else { return false };
            !ips.is_empty()
                && subnets.len() == ips.len()
                && subnets.iter().all(|(c, _)| ips.iter().filter(|ip| assignable(c, **ip)).count() == 1)
                && ips.iter().all(|ip| !used.contains(ip))
        };
        // 1. What was allocated before and still fits.
        for (key, _, node) in &pods {
            if let Some((n, ips)) = self.pods.get(*key)
                && n == node
                && valid(node, ips, &used)
            {
                used.extend(ips.iter().copied());
                done.insert((*key).clone(), (n.clone(), ips.clone()));
            }
        }
        for (key, (_, ips)) in &done {
            for ip in ips {
                if let Some(user) = self.reserved.get(ip) {
                    out.problems.push(Problem {
                        object: ObjectRef::pod(key),
                        reason: Reason::AddressConflict,
                        message: format!("address {ip} is also used by {user}, which stacknet does not manage: one of the two must move"),
                    });
                }
            }
        }
        used.extend(self.reserved.keys().copied());
        let management = self.sync_management(&out.nodes, &mut used);
        // 2. What the pod's status already shows (the API server remembers it), if it fits.
        for (key, pod, node) in &pods {
            if done.contains_key(*key) {
                continue;
            }
            if valid(node, &pod.status_ips, &used) {
                used.extend(pod.status_ips.iter().copied());
                done.insert((*key).clone(), (node.clone(), pod.status_ips.clone()));
            }
        }
        // 3. The lowest free address in each of the node's subnets.
        for (key, _, node) in &pods {
            if done.contains_key(*key) {
                continue;
            }
            let subnets = &out.nodes[node.as_str()];
            let mut ips = Vec::new();
            for (c, _) in subnets {
                match free_address(c, &used) {
                    Some(ip) => ips.push(ip),
                    None => {
                        out.problems.push(Problem {
                            object: ObjectRef::pod(key),
                            reason: Reason::SubnetExhausted,
                            message: format!(
                                "node {node}'s subnet {c} has no free address: the pod gets no network until another pod on the node goes"
                            ),
                        });
                        ips.clear();
                        break;
                    }
                }
            }
            if !ips.is_empty() {
                used.extend(ips.iter().copied());
                done.insert((*key).clone(), (node.clone(), ips));
            }
        }
        self.pods = done.clone();
        out.pods = done;
        out.management = management;
    }
}

fn u128_of(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn ip_of(v: u128, v4: bool) -> Option<IpAddr> {
    if v4 { u32::try_from(v).ok().map(|v| IpAddr::V4(Ipv4Addr::from(v))) } else { Some(IpAddr::V6(Ipv6Addr::from(v))) }
}

impl Ipam {
    /// Each node's management address per subnet: the one a previous run gave it while still
    /// valid, else the subnet's second address, else (a pod of an earlier version holds that
    /// one) the lowest free one. Marks them used.
    fn sync_management(
        &mut self,
        nodes: &BTreeMap<String, Vec<(Cidr, IpAddr)>>,
        used: &mut BTreeSet<IpAddr>,
    ) -> BTreeMap<String, Vec<IpAddr>> {
        let mut out = BTreeMap::new();
        for (node, subnets) in nodes {
            let before = self.management.get(node).cloned().unwrap_or_default();
            let mut ips = Vec::new();
            for (c, _) in subnets {
                let kept = before.iter().find(|ip| assignable(c, **ip) && !used.contains(*ip)).copied();
                let second = offset(c, 2).filter(|ip| assignable(c, *ip) && !used.contains(ip));
                if let Some(ip) = kept.or(second).or_else(|| free_address(c, used)) {
                    used.insert(ip);
                    ips.push(ip);
                }
            }
            out.insert(node.clone(), ips);
        }
        self.management = out.clone();
        out
    }
}

fn free_address(c: &Cidr, used: &BTreeSet<IpAddr>) -> Option<IpAddr> {
    let bits = if c.is_ipv4() { 32 } else { 128 } - u32::from(c.prefix_len());
    let size: u128 = if bits >= 32 { 1 << 32 } else { 1 << bits };
    (2..size).filter_map(|i| offset(c, i)).find(|ip| assignable(c, *ip) && !used.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest;

    fn index(yaml: &str) -> ClusterIndex {
        ClusterIndex::from_objects(manifest::parse("test", yaml).unwrap().objects)
    }

    fn node(name: &str) -> String {
        format!("- {{apiVersion: v1, kind: Node, metadata: {{name: {name}}}}}\n")
    }

    fn pod(name: &str, node: &str, extra: &str) -> String {
        format!(
            "- {{apiVersion: v1, kind: Pod, metadata: {{name: {name}, namespace: x}}, spec: {{nodeName: {node}, containers: []{extra}}}}}\n"
        )
    }

    fn list(items: &[String]) -> String {
        format!("apiVersion: v1\nkind: List\nitems:\n{}", items.concat())
    }

    fn ipam(cidrs: &[&str]) -> Ipam {
        Ipam::new(IpamConfig::new(cidrs.iter().map(|c| c.parse().unwrap()).collect())).unwrap()
    }

    fn ips(a: &Assignment, pod: &str) -> Vec<String> {
        a.pods
            .get(&ObjectKey::new("x", pod))
            .map(|(_, ips)| ips.iter().map(|i| i.to_string()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn nodes_get_subnets_in_order_and_pods_the_lowest_free_address() {
        let idx = index(&list(&[node("n1"), node("n2"), pod("a", "n1", ""), pod("b", "n1", ""), pod("c", "n2", "")]));
        let mut ipam = ipam(&["10.244.0.0/16"]);
        let a = ipam.sync(&idx);
        assert_eq!(a.nodes["n1"], vec![("10.244.0.0/24".parse().unwrap(), "10.244.0.1".parse().unwrap())]);
        assert_eq!(a.nodes["n2"][0].0.to_string(), "10.244.1.0/24");
        // .1 is the router port, .2 the node's management port.
        assert_eq!(a.management["n1"], ["10.244.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(a.management["n2"], ["10.244.1.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(ips(&a, "a"), ["10.244.0.3"]);
        assert_eq!(ips(&a, "b"), ["10.244.0.4"]);
        assert_eq!(ips(&a, "c"), ["10.244.1.3"]);
        assert!(a.problems.is_empty());
        // Level-based: a second sync changes nothing.
        assert_eq!(ipam.sync(&idx), a);
    }

    #[test]
    fn a_restart_restored_from_the_network_reassigns_nothing() {
        let idx = index(&list(&[node("n1"), node("n2"), pod("a", "n1", ""), pod("b", "n2", ""), pod("c", "n2", "")]));
        // The first run saw the nodes in another order, and a pod that has gone since.
        let mut first = ipam(&["10.244.0.0/16"]);
        first.restore_node("n2", "10.244.7.0/24".parse().unwrap());
        first.restore_pod(ObjectKey::new("x", "c"), "n2", vec!["10.244.7.9".parse().unwrap()]);
        let before = first.sync(&idx);
        assert_eq!(ips(&before, "c"), ["10.244.7.9"]);
        assert_eq!(ips(&before, "b"), ["10.244.7.3"]);
        let mut second = ipam(&["10.244.0.0/16"]);
        for (n, subnets) in &before.nodes {
            for (s, _) in subnets {
                second.restore_node(n, *s);
            }
        }
        for (k, (n, ips)) in &before.pods {
            second.restore_pod(k.clone(), n, ips.clone());
        }
        for (n, ips) in &before.management {
            for ip in ips {
                second.restore_management(n, *ip);
            }
        }
        assert_eq!(second.sync(&idx), before);
    }

    #[test]
    fn a_pod_holding_the_management_address_from_an_earlier_version_keeps_it() {
        let idx = index(&list(&[node("n1"), pod("a", "n1", ""), pod("b", "n1", "")]));
        let mut ipam = ipam(&["10.244.0.0/16"]);
        ipam.restore_node("n1", "10.244.0.0/24".parse().unwrap());
        ipam.restore_pod(ObjectKey::new("x", "a"), "n1", vec!["10.244.0.2".parse().unwrap()]);
        let a = ipam.sync(&idx);
        assert_eq!(ips(&a, "a"), ["10.244.0.2"]);
        assert_eq!(a.management["n1"], ["10.244.0.3".parse::<IpAddr>().unwrap()]);
        assert_eq!(ips(&a, "b"), ["10.244.0.4"]);
        // Stable: the management port does not move back when the pod goes.
        let idx = index(&list(&[node("n1"), pod("b", "n1", "")]));
        let a = ipam.sync(&idx);
        assert_eq!(a.management["n1"], ["10.244.0.3".parse::<IpAddr>().unwrap()]);
        assert_eq!(ips(&a, "b"), ["10.244.0.4"]);
    }

    #[test]
    fn status_addresses_are_honoured_when_they_fit_and_released_addresses_reused() {
        let idx = index(&list(&[
            node("n1"),
            pod("a", "n1", "}, status: {podIP: 10.244.0.50"),
            pod("b", "n1", "}, status: {podIP: 10.99.0.5"),
            pod("c", "n1", "}, status: {podIP: 10.244.0.1"),
        ]));
        let mut ipam = ipam(&["10.244.0.0/16"]);
        let a = ipam.sync(&idx);
        assert_eq!(ips(&a, "a"), ["10.244.0.50"]);
        // Outside the node's subnet, or the gateway: allocated afresh.
        assert_eq!(ips(&a, "b"), ["10.244.0.3"]);
        assert_eq!(ips(&a, "c"), ["10.244.0.4"]);
        let idx = index(&list(&[node("n1"), pod("a", "n1", ""), pod("c", "n1", ""), pod("d", "n1", "")]));
        let a = ipam.sync(&idx);
        assert_eq!(ips(&a, "c"), ["10.244.0.4"], "kept");
        assert_eq!(ips(&a, "d"), ["10.244.0.3"], "b's address, free again");
    }

    #[test]
    fn node_pod_cidrs_win_and_foreign_kinds_of_pods_get_nothing() {
        let yaml = list(&[
            "- {apiVersion: v1, kind: Node, metadata: {name: n1}, spec: {podCIDR: 10.9.3.0/24}}\n".to_string(),
            node("n2"),
            pod("a", "n1", ""),
            pod("h", "n1", ", hostNetwork: true"),
            pod("u", "gone", ""),
            "- {apiVersion: v1, kind: Pod, metadata: {name: p, namespace: x}, spec: {containers: []}}\n".to_string(),
        ]);
        let mut ipam = ipam(&["10.244.0.0/16"]);
        let a = ipam.sync(&index(&yaml));
        assert_eq!(a.nodes["n1"][0].0.to_string(), "10.9.3.0/24");
        assert_eq!(a.nodes["n2"][0].0.to_string(), "10.244.0.0/24");
        assert_eq!(ips(&a, "a"), ["10.9.3.3"]);
        for p in ["h", "u", "p"] {
            assert!(ips(&a, p).is_empty(), "{p}");
        }
        // The pod on an unknown node is reported; the unscheduled one without an address is pending.
        let reasons: Vec<(String, Reason)> = a.problems.iter().map(|p| (p.object.to_string(), p.reason)).collect();
        assert_eq!(reasons, [("Pod x/u".to_string(), Reason::NodeUnknown)]);
    }

    #[test]
    fn exhaustion_is_a_problem_on_the_object_not_a_wrong_address() {
        let mut cfg = IpamConfig::new(vec!["10.0.0.0/28".parse().unwrap()]);
        cfg.node_prefix_v4 = 29;
        let mut ipam = Ipam::new(cfg).unwrap();
        // /28 into /29s: two nodes; a /29 has four addresses for pods (.1 router, .2 management).
        let pods: Vec<String> = ["a", "b", "c", "d", "e"].iter().map(|p| pod(p, "n1", "")).collect();
        let idx = index(&list(&[&[node("n1"), node("n2"), node("n3")][..], &pods[..]].concat()));
        let a = ipam.sync(&idx);
        assert_eq!(ips(&a, "a"), ["10.0.0.3"]);
        assert_eq!(ips(&a, "d"), ["10.0.0.6"]);
        assert!(ips(&a, "e").is_empty());
        let reasons: Vec<(String, Reason)> = a.problems.iter().map(|p| (p.object.to_string(), p.reason)).collect();
        assert_eq!(
            reasons,
            [("Node n3".to_string(), Reason::ClusterCIDRExhausted), ("Pod x/e".to_string(), Reason::SubnetExhausted)]
        );
        assert!(a.problems[1].message.contains("10.0.0.0/29"), "{}", a.problems[1].message);
    }

    #[test]
    fn addresses_of_foreign_ports_are_never_given_out() {
        let idx = index(&list(&[node("n1"), pod("a", "n1", ""), pod("b", "n1", "")]));
        let mut ipam = ipam(&["10.244.0.0/16"]);
        ipam.set_reserved(BTreeMap::from([("10.244.0.3".parse().unwrap(), "port vm-1".to_string())]));
        let a = ipam.sync(&idx);
        assert_eq!(ips(&a, "a"), ["10.244.0.4"]);
        assert_eq!(ips(&a, "b"), ["10.244.0.5"]);
        assert!(a.problems.is_empty());
        // A VM that turns up on a pod's address: the pod keeps it, and the conflict is reported.
        ipam.set_reserved(BTreeMap::from([("10.244.0.5".parse().unwrap(), "port vm-2".to_string())]));
        let a = ipam.sync(&idx);
        assert_eq!(ips(&a, "b"), ["10.244.0.5"]);
        assert_eq!(a.problems[0].reason, Reason::AddressConflict);
        assert!(a.problems[0].message.contains("vm-2"));
    }

    #[test]
    fn an_address_no_node_holds_is_reported() {
        let idx = index(&list(&[
            node("n1"),
            "- {apiVersion: v1, kind: Pod, metadata: {name: s, namespace: x}, spec: {containers: []}, status: {podIP: 192.168.9.9}}\n".to_string(),
        ]));
        let a = ipam(&["10.244.0.0/16"]).sync(&idx);
        assert!(ips(&a, "s").is_empty());
        assert_eq!(a.problems.len(), 1);
        assert_eq!(a.problems[0].reason, Reason::NoNodeForAddress);
        assert!(a.problems[0].message.contains("192.168.9.9"));
    }

    #[test]
    fn dual_stack_pods_get_one_address_per_family() {
        let mut ipam = ipam(&["10.244.0.0/16", "fd00:10:244::/48"]);
        let a = ipam.sync(&index(&list(&[node("n1"), pod("a", "n1", "")])));
        assert_eq!(a.nodes["n1"][1].0.to_string(), "fd00:10:244::/64");
        assert_eq!(ips(&a, "a"), ["10.244.0.3", "fd00:10:244::3"]);
        assert_eq!(a.management["n1"].len(), 2);
    }

    #[test]
    fn a_bad_node_cidr_names_the_node_and_field() {
        let yaml = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nspec: {podCIDRs: [10.0.0.0/33]}\n";
        let e = manifest::parse("nodes.yaml", yaml).unwrap_err().to_string();
        assert!(e.contains("Node n1") && e.contains("spec.podCIDRs[0]"), "{e}");
    }

    #[test]
    fn bad_configuration_is_named() {
        let e = |c: &[&str], p: u8| {
            let mut cfg = IpamConfig::new(c.iter().map(|c| c.parse().unwrap()).collect());
            cfg.node_prefix_v4 = p;
            Ipam::new(cfg).unwrap_err().to_string()
        };
        assert!(e(&[], 24).contains("at least one"));
        assert!(e(&["10.0.0.0/16", "10.1.0.0/16"], 24).contains("one per IP family"));
        assert!(e(&["10.0.0.0/16"], 8).contains("node subnet size: /8"));
        // A /30 would hold the router and management ports and no pod.
        assert!(e(&["10.0.0.0/16"], 30).contains("/29"));
    }
}
