//! Where pods sit on the logical network: one logical switch per node, joined by the cluster
//! router. A node has one or more subnets and, in each, a gateway address for its router port
//! and an address for its management port (the node's own interface on the pod network).

use std::collections::BTreeMap;
use std::net::IpAddr;

use stacknet_engine::objects::Pod;
use stacknet_engine::{Cidr, ClusterIndex};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNet {
    pub name: String,
    /// The node's pod subnets, each with the router port's address in it.
    pub subnets: Vec<(Cidr, IpAddr)>,
    /// The management port's addresses, one per subnet (none: the node gets no management
    /// port).
    pub management: Vec<IpAddr>,
    /// The node's own addresses (`status.addresses`): pods reach them through its management
    /// port.
    pub addresses: Vec<IpAddr>,
    /// The node's gateway router's address on the join switch (`None`: no gateway router).
    pub join: Option<IpAddr>,
}

/// North–south: per node a gateway router bound to its chassis, between the join switch
/// (towards the cluster router) and an external switch whose `localnet` port reaches the
/// node's uplink; pods' traffic leaving the cluster goes out through their own node's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateways {
    /// The join switch's subnet; the cluster router holds its first address, gateway routers
    /// the others.
    pub join: Cidr,
    /// The network the nodes' uplinks are on: a node's address in it is its gateway router's
    /// external address (shared with the node, as ovn-kubernetes' shared gateway does).
    pub external: Cidr,
    /// Where traffic for beyond the external network goes (`None`: only the external network
    /// itself is reached).
    pub next_hop: Option<IpAddr>,
    /// The `localnet` ports' `network_name`: what `ovn-bridge-mappings` maps to the uplink's
    /// bridge on each node.
    pub physnet: String,
    /// Whether pods' traffic leaving the cluster is translated to the node's address (else pod
    /// addresses are routed as they are).
    pub snat: bool,
    /// The pods' CIDRs: what is translated, and what the gateway routers route back inside.
    pub cluster: Vec<Cidr>,
}

impl Gateways {
    /// The cluster router's address on the join switch.
    pub fn router_address(&self) -> IpAddr {
        stacknet_engine::ipam::gateway(&self.join)
    }

    /// The node's address on the external network, if it has one.
    pub fn external_address(&self, node: &NodeNet) -> Option<IpAddr> {
        node.addresses.iter().copied().find(|a| self.external.contains(*a))
    }
}

/// Join switch addresses for the nodes that get a gateway router: each keeps the one it had
/// (`before`, read back from the network) while still in `join`; new ones get the lowest free
/// address (not the network's, the broadcast or the cluster router's).
pub fn join_addresses(join: Cidr, nodes: &[&str], before: &BTreeMap<String, IpAddr>) -> BTreeMap<String, IpAddr> {
    let router = stacknet_engine::ipam::gateway(&join);
    let mut out = BTreeMap::new();
    let mut used: std::collections::BTreeSet<IpAddr> = [router, join.network()].into();
    for n in nodes {
        if let Some(ip) = before.get(*n).filter(|ip| join.contains(**ip) && !used.contains(*ip)) {
            used.insert(*ip);
            out.insert(n.to_string(), *ip);
        }
    }
    let mut candidates = join.hosts();
    for n in nodes {
        if out.contains_key(*n) {
            continue;
        }
        if let Some(ip) = candidates.by_ref().find(|ip| !used.contains(ip)) {
            used.insert(ip);
            out.insert(n.to_string(), ip);
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The cluster id every row is tagged with.
    pub cluster: String,
    pub nodes: Vec<NodeNet>,
    /// Nested nodes: Kubernetes node name → the logical port of the VM that is that node (its
    /// trunk parent). Pods on such a node get ports nested in the VM's (`parent_name`, a VLAN
    /// tag ovn-northd allocates): their traffic arrives on the VM's port, tagged.
    pub nested: BTreeMap<String, String>,
    /// What a node routes through its management port: the cluster and Service CIDRs.
    pub node_routes: Vec<Cidr>,
    /// North–south (`None`: pods reach nothing past the cluster router).
    pub gateways: Option<Gateways>,
    /// How Services are reached from outside (on the gateway routers; nothing without
    /// `gateways`).
    pub exposures: Vec<stacknet_engine::service::Exposure>,
    /// The address each LoadBalancer Service got (kept on its rows, read back on restart).
    pub load_balancer_ips: BTreeMap<stacknet_engine::ObjectKey, IpAddr>,
    /// Pods' secondary interfaces, as the engine decided them.
    pub multinet: stacknet_engine::multinet::Plan,
}

/// The MAC a pod or router port gets from its (first) address (the engine's derivation).
pub use stacknet_engine::net::mac_for;

impl Topology {
    /// A topology for pods whose addresses were given (manifests, tests): one "node" per /24
    /// (IPv4) or /64 (IPv6) prefix the pods use, its router port on the highest free address
    /// and its management port on the next one down.
    pub fn from_pods(cluster: &str, index: &ClusterIndex) -> Topology {
        let mut groups: BTreeMap<Vec<Cidr>, Vec<IpAddr>> = BTreeMap::new();
        for (_, p) in index.pods() {
            if !p.is_policy_subject() || p.ips.is_empty() {
                continue;
            }
            let prefixes: Vec<Cidr> = p.ips.iter().map(|ip| prefix_of(*ip)).collect();
            groups.entry(prefixes).or_default().extend(p.ips.iter().copied());
        }
        let mut nodes: Vec<NodeNet> = Vec::new();
        for (prefixes, used) in groups {
            // A prefix already served (by a pod of another address combination) is not served twice.
            if prefixes.iter().any(|c| nodes.iter().any(|n| n.subnets.iter().any(|(s, _)| s == c))) {
                continue;
            }
            let subnets: Vec<(Cidr, IpAddr)> = prefixes.iter().map(|c| (*c, gateway_in(*c, &used))).collect();
            let management = subnets
                .iter()
                .map(|(c, g)| {
                    let taken: Vec<IpAddr> = used.iter().copied().chain([*g]).collect();
                    gateway_in(*c, &taken)
                })
                .collect();
            let name = format!("net-{}", prefixes.iter().map(|c| c.to_string()).collect::<Vec<_>>().join("+"));
            nodes.push(NodeNet {
                name: name.replace(['/', ':'], "_"),
                subnets,
                management,
                addresses: Vec::new(),
                join: None,
            });
        }
        let node_routes = nodes.iter().flat_map(|n| n.subnets.iter().map(|(c, _)| *c)).collect();
        Topology {
            cluster: cluster.to_string(),
            nodes,
            nested: BTreeMap::new(),
            node_routes,
            gateways: None,
            exposures: Vec::new(),
            load_balancer_ips: BTreeMap::new(),
            multinet: stacknet_engine::multinet::Allocator::default().sync(
                index,
                stacknet_engine::multinet::Foreign::Refuse,
                crate::secondary::accepts,
            ),
        }
    }

    /// The management port of node `node`: its logical port, where the node's host network
    /// meets the pod network.
    pub fn management_port(cluster: &str, node: &str) -> String {
        // `_mgmt.` cannot occur in a pod's port name (`<cluster>_<ns>_<pod>`: names hold no `_`).
        format!("{cluster}_mgmt.{node}")
    }

    /// Marks Kubernetes node `node` as a VM whose logical port is `parent`.
    pub fn with_nested(mut self, node: &str, parent: &str) -> Topology {
        self.nested.insert(node.to_string(), parent.to_string());
        self
    }

    /// The VM port a pod's port nests in, if its node is nested.
    pub fn parent_for(&self, pod: &Pod) -> Option<&str> {
        pod.node.as_deref().and_then(|n| self.nested.get(n)).map(String::as_str)
    }

    /// The node a pod is placed on: its `spec.nodeName` if that node is known, else the node
    /// whose subnet holds its address.
    pub fn node_for(&self, pod: &Pod) -> Option<&NodeNet> {
        if let Some(n) = pod.node.as_deref().and_then(|name| self.nodes.iter().find(|n| n.name == name)) {
            return Some(n);
        }
        let ip = pod.ips.first()?;
        self.nodes.iter().find(|n| n.subnets.iter().any(|(c, _)| c.contains(*ip)))
    }
}

fn prefix_of(ip: IpAddr) -> Cidr {
    let len = if ip.is_ipv4() { 24 } else { 64 };
    Cidr::new(ip, len).expect("valid length")
}

/// The highest address of `c` not used by a pod (and not the broadcast address for IPv4).
fn gateway_in(c: Cidr, used: &[IpAddr]) -> IpAddr {
    match c.network() {
        IpAddr::V4(n) => {
            let base = u32::from(n);
            let size = 1u32 << (32 - u32::from(c.prefix_len()));
            (1..size - 1)
                .rev()
                .map(|i| IpAddr::V4((base + i).into()))
                .find(|ip| !used.contains(ip))
                .unwrap_or(IpAddr::V4((base + 1).into()))
        }
        IpAddr::V6(n) => {
            let base = u128::from(n);
            (1..0xffffu128)
                .rev()
                .map(|i| IpAddr::V6((base + i).into()))
                .find(|ip| !used.contains(ip))
                .unwrap_or(IpAddr::V6((base + 1).into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_addresses_are_kept_and_new_nodes_get_the_lowest_free() {
        let join: Cidr = "100.64.0.0/29".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let first = join_addresses(join, &["a", "b"], &BTreeMap::new());
        assert_eq!(first, BTreeMap::from([("a".into(), ip("100.64.0.2")), ("b".into(), ip("100.64.0.3"))]));
        // a goes, c comes: b keeps its address, c takes a's.
        let second = join_addresses(join, &["b", "c"], &first);
        assert_eq!(second, BTreeMap::from([("b".into(), ip("100.64.0.3")), ("c".into(), ip("100.64.0.2"))]));
        // Full: .2 to .6 (the broadcast .7 is not a host's); a sixth node gets none.
        let all = join_addresses(join, &["a", "b", "c", "d", "e", "f"], &BTreeMap::new());
        assert_eq!(all.len(), 5);
        assert!(!all.contains_key("f"));
        // An address outside the join CIDR (it changed) is not kept.
        let moved = join_addresses(join, &["a"], &BTreeMap::from([("a".into(), ip("100.65.0.9"))]));
        assert_eq!(moved["a"], ip("100.64.0.2"));
    }

    #[test]
    fn macs_follow_addresses() {
        assert_eq!(mac_for("10.244.1.5".parse().unwrap()), "0a:58:0a:f4:01:05");
        assert_eq!(mac_for("fd00::a:b".parse().unwrap()), "0a:58:00:0a:00:0b");
    }

    #[test]
    fn gateways_avoid_pod_addresses() {
        let c: Cidr = "10.1.0.0/24".parse().unwrap();
        assert_eq!(gateway_in(c, &[]), "10.1.0.254".parse::<IpAddr>().unwrap());
        assert_eq!(gateway_in(c, &["10.1.0.254".parse().unwrap()]), "10.1.0.253".parse::<IpAddr>().unwrap());
    }
}
