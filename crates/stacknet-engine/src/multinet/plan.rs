//! Which secondary interfaces each pod gets, with which addresses and MAC: the pure decision
//! both backends execute. A pod's selections are made all together or not at all: if one
//! cannot be (a missing NAD, an address outside the subnet or taken, a MAC clash), the pod gets
//! none of them and a Problem says which element and field — the CNI ADD then fails with the
//! same words, and nothing is half-made.
//!
//! Addresses are kept across reconciles and restarts (the allocator is given back what the
//! backend holds): a pod keeps its address while it is there; requested addresses are honoured
//! when free (inside `excludeSubnets` too: that is what a static range is for), the others get
//! the lowest free address of the subnet outside `excludeSubnets`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::nad::{MultiNetworkPolicy, NetConfig, NetTopology};
use super::selection::{self, NETWORKS_ANNOTATION, Selection};
use crate::index::ClusterIndex;
use crate::net::Cidr;
use crate::objects::{Kind, ObjectKey, Pod};
use crate::problem::{ObjectRef, Problem, Reason};

/// One secondary interface of a pod, as it is to be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub pod: ObjectKey,
    pub network: ObjectKey,
    /// The interface in the pod (`net1`, or as the selection named it).
    pub interface: String,
    /// The node the pod runs on.
    pub node: String,
    /// Its MAC (a Neutron network: the one asked for, empty when Neutron chooses).
    pub mac: String,
    /// Each address with its prefix length (empty: a network without addresses; a Neutron
    /// network: the ones asked for, Neutron choosing when there are none).
    pub ips: Vec<(IpAddr, u8)>,
    /// Gateways of the pod's default route through this interface (the selection's
    /// `default-route`).
    pub default_route: Vec<IpAddr>,
    pub mtu: Option<u32>,
}

/// What to do with a selection of a NAD that is not stacknet-cni's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Foreign {
    /// Multus attaches it: stacknet leaves it alone.
    LeaveToMultus,
    /// No Multus: nobody would attach it, so the pod is refused with a message saying so.
    Refuse,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Each pod's interfaces, in the annotation's order.
    pub pods: BTreeMap<ObjectKey, Vec<Attachment>>,
    /// Pods whose selections cannot all be made (none is), and why.
    pub refused: BTreeMap<ObjectKey, String>,
    /// The networks pods attach to, and their configs.
    pub networks: BTreeMap<ObjectKey, NetConfig>,
    pub problems: Vec<Problem>,
}

impl Plan {
    /// Every attachment on `network`.
    pub fn on<'a>(&'a self, network: &'a ObjectKey) -> impl Iterator<Item = &'a Attachment> + 'a {
        self.pods.values().flatten().filter(move |a| &a.network == network)
    }

    /// Whether one of the pod's secondary interfaces carries its default route of the family.
    pub fn default_route_elsewhere(&self, pod: &ObjectKey, v4: bool) -> bool {
        self.pods.get(pod).is_some_and(|l| l.iter().any(|a| a.default_route.iter().any(|g| g.is_ipv4() == v4)))
    }
}

/// The secondary networks' address allocator: what each (pod, interface) holds.
#[derive(Debug, Clone, Default)]
pub struct Allocator {
    held: BTreeMap<(ObjectKey, String), (ObjectKey, Vec<IpAddr>)>,
}

/// A MAC for an interface: from its first IPv4 address (else its first address) as the
/// primary network derives it, else from a hash of who it is.
pub fn mac_for(ips: &[(IpAddr, u8)], pod: &ObjectKey, interface: &str) -> String {
    match ips.iter().map(|(ip, _)| *ip).find(IpAddr::is_ipv4).or_else(|| ips.first().map(|(ip, _)| *ip)) {
        Some(ip) => crate::net::mac_for(ip),
        None => {
            let who = [pod.namespace.as_str(), pod.name.as_str(), interface].join("\0");
            let b = crate::net::fnv1a(who.bytes()).to_be_bytes();
            format!("0a:58:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
        }
    }
}

fn at(i: usize, field: &str) -> String {
    format!("metadata.annotations[{NETWORKS_ANNOTATION}][{i}].{field}")
}

/// A pod's selections resolved against the NADs: each with its network's config.
struct Wanted<'a> {
    pod: &'a Pod,
    node: String,
    selections: Vec<(usize, Selection, &'a NetConfig)>,
}

impl Allocator {
    /// Gives back what a previous run allocated (as the backend still holds it).
    pub fn restore(&mut self, pod: ObjectKey, interface: String, network: ObjectKey, ips: Vec<IpAddr>) {
        self.held.insert((pod, interface), (network, ips));
    }

    /// Decides every pod's secondary interfaces. `accept` says whether the backend can make a
    /// network of a topology (else why not); `foreign` what to do with other plugins' NADs.
    pub fn sync(
        &mut self,
        index: &ClusterIndex,
        foreign: Foreign,
        accept: impl Fn(&NetTopology) -> Result<(), String>,
    ) -> Plan {
        let mut plan = Plan::default();
        for nad in index.network_attachments() {
            if let Some(Err(e)) = &nad.config {
                plan.problems.push(Problem::new(
                    ObjectRef::object(Kind::NetworkAttachmentDefinition, nad.key.clone()),
                    Reason::InvalidNetworkAttachment,
                    format!("{e}; pods selecting it get none of their secondary networks"),
                ));
            }
        }
        let mut wanted = Vec::new();
        for (_, pod) in index.pods() {
            let Some(text) = pod.networks_annotation.as_deref().filter(|t| !t.trim().is_empty()) else { continue };
            let Some(node) = pod.node.clone().filter(|_| pod.is_policy_subject()) else { continue };
            match resolve(index, pod, text, foreign, &accept) {
                Ok(selections) => wanted.push(Wanted { pod, node, selections }),
                Err(e) => refuse(&mut plan, &pod.key, e),
            }
        }
        // Pods that hold addresses keep them: they go first.
        let holding: BTreeSet<&ObjectKey> = self.held.keys().map(|(p, _)| p).collect();
        wanted.sort_by_key(|w| (!holding.contains(&w.pod.key), w.pod.key.clone()));
        let mut used: BTreeMap<ObjectKey, BTreeMap<IpAddr, String>> = BTreeMap::new();
        let mut macs: BTreeMap<ObjectKey, BTreeMap<String, String>> = BTreeMap::new();
        let mut held = BTreeMap::new();
        for w in &wanted {
            match self.allocate(w, &mut used, &mut macs) {
                Ok(list) => {
                    for a in &list {
                        let ips = a.ips.iter().map(|(ip, _)| *ip).collect();
                        held.insert((a.pod.clone(), a.interface.clone()), (a.network.clone(), ips));
                        if let Some((_, _, c)) = w.selections.iter().find(|(_, s, _)| s.interface == a.interface) {
                            plan.networks.insert(a.network.clone(), (*c).clone());
                        }
                    }
                    if !list.is_empty() {
                        plan.pods.insert(w.pod.key.clone(), list);
                    }
                }
                Err(e) => refuse(&mut plan, &w.pod.key, e),
            }
        }
        self.held = held;
        plan
    }

    /// One pod's interfaces, all or none (on error, what it took is given back).
    fn allocate(
        &self,
        w: &Wanted<'_>,
        used: &mut BTreeMap<ObjectKey, BTreeMap<IpAddr, String>>,
        macs: &mut BTreeMap<ObjectKey, BTreeMap<String, String>>,
    ) -> Result<Vec<Attachment>, String> {
        let me = |iface: &str| format!("{}/{iface}", w.pod.key);
        let mut taken: Vec<(ObjectKey, IpAddr)> = Vec::new();
        let mut taken_macs: Vec<(ObjectKey, String)> = Vec::new();
        let result = (|| {
            let mut out = Vec::new();
            let mut default_families = BTreeSet::new();
            for (i, s, config) in &w.selections {
                let net = ObjectKey::new(&s.namespace, &s.name);
                let held = self
                    .held
                    .get(&(w.pod.key.clone(), s.interface.clone()))
                    .filter(|(n, _)| n == &net)
                    .map(|(_, ips)| ips.as_slice())
                    .unwrap_or_default();
                let in_use = used.entry(net.clone()).or_default();
                let mut ips = Vec::new();
                if config.subnets.is_empty() {
                    for (ip, len) in &s.ips {
                        let len = len.unwrap_or(if ip.is_ipv4() { 32 } else { 128 });
                        ips.push((*ip, len));
                    }
                } else {
                    for (ip, _) in &s.ips {
                        if !config.subnets.iter().any(|c| c.contains(*ip)) {
                            return Err(format!(
                                "{}: {ip} is outside network {net}'s subnets {}",
                                at(*i, "ips"),
                                list(&config.subnets)
                            ));
                        }
                    }
                    for subnet in &config.subnets {
                        let asked: Vec<_> = s.ips.iter().filter(|(ip, _)| subnet.contains(*ip)).collect();
                        if asked.len() > 1 {
                            return Err(format!("{}: more than one address in {subnet}", at(*i, "ips")));
                        }
                        let ip = match asked.first() {
                            Some((ip, len)) => {
                                if len.is_some_and(|l| l != subnet.prefix_len()) {
                                    return Err(format!(
                                        "{}: {ip}/{} but network {net}'s subnet is {subnet}",
                                        at(*i, "ips"),
                                        len.unwrap_or_default()
                                    ));
                                }
                                if let Some(other) = in_use.get(ip) {
                                    return Err(format!(
                                        "{}: {ip} on network {net} is taken by {other}",
                                        at(*i, "ips")
                                    ));
                                }
                                *ip
                            }
                            None => {
                                let free = |ip: &IpAddr| {
                                    !in_use.contains_key(ip) && !config.exclude.iter().any(|e| e.contains(*ip))
                                };
                                match held.iter().find(|ip| subnet.contains(**ip) && free(ip)) {
                                    Some(ip) => *ip,
                                    None => subnet.hosts().find(|ip| free(ip)).ok_or_else(|| {
                                        format!(
                                            "network {net}: subnet {subnet} has no free address for {}",
                                            s.interface
                                        )
                                    })?,
                                }
                            }
                        };
                        ips.push((ip, subnet.prefix_len()));
                    }
                }
                for (ip, _) in &ips {
                    if let Some(other) = in_use.get(ip) {
                        return Err(format!("{}: {ip} on network {net} is taken by {other}", at(*i, "ips")));
                    }
                    in_use.insert(*ip, me(&s.interface));
                    taken.push((net.clone(), *ip));
                }
                // Neutron gives a port its MAC (and addresses) unless asked for one.
                let neutron = matches!(config.topology, NetTopology::Neutron { .. });
                let mac = match &s.mac {
                    Some(m) => m.clone(),
                    None if neutron => String::new(),
                    None => mac_for(&ips, &w.pod.key, &s.interface),
                };
                let net_macs = macs.entry(net.clone()).or_default();
                if let Some(other) = net_macs.get(&mac).filter(|_| !mac.is_empty()) {
                    return Err(format!("{}: MAC {mac} on network {net} is {other}'s", at(*i, "mac")));
                }
                net_macs.insert(mac.clone(), me(&s.interface));
                taken_macs.push((net.clone(), mac.clone()));
                for g in &s.default_route {
                    if !ips.is_empty()
                        && !ips.iter().any(|(ip, len)| Cidr::new(*ip, *len).is_some_and(|c| c.contains(*g)))
                    {
                        return Err(format!(
                            "{}: gateway {g} is not on the interface's subnet",
                            at(*i, "default-route")
                        ));
                    }
                }
                let families: BTreeSet<bool> = s.default_route.iter().map(IpAddr::is_ipv4).collect();
                for v4 in families {
                    if !default_families.insert(v4) {
                        return Err(format!(
                            "{}: another interface already carries the default route for {}",
                            at(*i, "default-route"),
                            if v4 { "IPv4" } else { "IPv6" }
                        ));
                    }
                }
                out.push(Attachment {
                    pod: w.pod.key.clone(),
                    network: net,
                    interface: s.interface.clone(),
                    node: w.node.clone(),
                    mac,
                    ips,
                    default_route: s.default_route.clone(),
                    mtu: config.mtu,
                });
            }
            Ok(out)
        })();
        if result.is_err() {
            for (net, ip) in taken {
                if let Some(m) = used.get_mut(&net) {
                    m.remove(&ip);
                }
            }
            for (net, mac) in taken_macs {
                if let Some(m) = macs.get_mut(&net) {
                    m.remove(&mac);
                }
            }
        }
        result
    }
}

fn list(cidrs: &[Cidr]) -> String {
    cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

fn refuse(plan: &mut Plan, pod: &ObjectKey, message: String) {
    plan.problems.push(Problem::new(
        ObjectRef::pod(pod),
        Reason::AttachmentFailed,
        format!("{message}; none of its secondary networks is attached"),
    ));
    plan.refused.insert(pod.clone(), message);
}

/// The pod's selections, each with the config of the NAD it names.
fn resolve<'a>(
    index: &'a ClusterIndex,
    pod: &Pod,
    text: &str,
    foreign: Foreign,
    accept: &impl Fn(&NetTopology) -> Result<(), String>,
) -> Result<Vec<(usize, Selection, &'a NetConfig)>, String> {
    let selections = selection::parse(&pod.key.namespace, text)?;
    let mut out = Vec::new();
    for (i, s) in selections.into_iter().enumerate() {
        let key = ObjectKey::new(&s.namespace, &s.name);
        let nad = index
            .network_attachment(&key)
            .ok_or_else(|| format!("{}: NetworkAttachmentDefinition {key} does not exist", at(i, "name")))?;
        let config = match (&nad.config, foreign) {
            (Some(Ok(c)), _) => c,
            (Some(Err(e)), _) => {
                return Err(format!("{}: NetworkAttachmentDefinition {key} is invalid: {e}", at(i, "name")));
            }
            (None, Foreign::LeaveToMultus) => continue,
            (None, Foreign::Refuse) => {
                return Err(format!(
                    "{}: NetworkAttachmentDefinition {key} is {}, not stacknet-cni's, and no Multus attaches it (--multus)",
                    at(i, "name"),
                    nad.plugin.as_deref().map_or("without spec.config".to_string(), |p| format!("a {p} network"))
                ));
            }
        };
        accept(&config.topology).map_err(|e| format!("{}: network {key} ({}): {e}", at(i, "name"), config.topology))?;
        out.push((i, s, config));
    }
    Ok(out)
}

/// The pod's `k8s.v1.cni.cncf.io/network-status` annotation (multi-net-spec §5): the
/// primary interface on `default_network` (its addresses and MAC; `default: true`, the
/// cluster-wide default network, §5.3.5), then each attachment with the NAD's
/// `namespace/name` (`default: false`). An attachment carrying the pod's default route says
/// so with its gateways, as `default-route` (§5.3.6.4) and as Multus's `gateway`.
pub fn network_status(default_network: &str, primary: (&str, &[IpAddr], &str), attachments: &[Attachment]) -> String {
    let (ifname, ips, mac) = primary;
    let mut out = vec![serde_json::json!({
        "name": default_network,
        "interface": ifname,
        "ips": ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "mac": mac,
        "default": true,
        "dns": {},
    })];
    for a in attachments {
        let mut e = serde_json::json!({
            "name": a.network.to_string(),
            "interface": a.interface,
            "ips": a.ips.iter().map(|(ip, _)| ip.to_string()).collect::<Vec<_>>(),
            "mac": a.mac,
            "default": false,
            "dns": {},
        });
        if !a.default_route.is_empty() {
            let gateways: Vec<serde_json::Value> =
                a.default_route.iter().map(|g| serde_json::Value::String(g.to_string())).collect();
            e["default-route"] = gateways.clone().into();
            e["gateway"] = gateways.into();
        }
        out.push(e);
    }
    serde_json::to_string_pretty(&out).unwrap_or_default()
}

/// The cluster as seen on one secondary network: the pods attached to it, with their addresses
/// on it, and the MultiNetworkPolicies for it as NetworkPolicies — the input of the same policy
/// engine as the primary network's.
pub fn network_index(index: &ClusterIndex, plan: &Plan, network: &ObjectKey) -> ClusterIndex {
    let mut out = ClusterIndex::new();
    for (name, _) in index.namespaces() {
        if let Some(ns) = index.namespace_object(name) {
            out.apply_namespace(ns.clone());
        }
    }
    for (key, list) in &plan.pods {
        if !list.iter().any(|a| &a.network == network) {
            continue;
        }
        let ips: Vec<IpAddr> =
            list.iter().filter(|a| &a.network == network).flat_map(|a| a.ips.iter().map(|(ip, _)| *ip)).collect();
        if let Some(pod) = index.pod_id(key).and_then(|id| index.pod(id)) {
            let mut p = pod.clone();
            p.ips = ips;
            out.apply_pod(p);
        }
    }
    for p in index.multi_policies().filter(|p: &&MultiNetworkPolicy| p.networks.contains(network)) {
        out.apply_policy(p.policy.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::multinet::nad::{NadApi, NetworkAttachmentDefinition};
    use crate::objects::ClusterObject;

    fn nad(ns: &str, name: &str, config: &str) -> ClusterObject {
        let api: NadApi = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns}, "spec": {"config": config}
        }))
        .unwrap();
        ClusterObject::NetworkAttachmentDefinition(NetworkAttachmentDefinition::from_k8s(&api).unwrap())
    }

    fn pod(ns: &str, name: &str, node: &str, networks: &str) -> ClusterObject {
        ClusterObject::Pod(Pod {
            key: ObjectKey::new(ns, name),
            uid: None,
            labels: Default::default(),
            ips: vec![],
            status_ips: vec![],
            host_network: false,
            ports: vec![],
            node: Some(node.into()),
            terminated: false,
            network_annotation: None,
            networks_annotation: Some(networks.into()),
            network_status_annotation: None,
            sriov_devices_annotation: None,
        })
    }

    const DATA: &str = r#"{"name": "data", "type": "stacknet-cni", "topology": "layer2", "subnets": "10.100.0.0/24", "excludeSubnets": "10.100.0.0/29"}"#;
    const PROVIDER: &str = r#"{"name": "provider", "type": "stacknet-cni", "topology": "localnet", "vlanID": 200}"#;

    fn ok(_: &NetTopology) -> Result<(), String> {
        Ok(())
    }

    fn index(objects: Vec<ClusterObject>) -> ClusterIndex {
        ClusterIndex::from_objects(objects)
    }

    #[test]
    fn pods_get_the_lowest_free_address_outside_the_excluded_range_and_keep_it() {
        let mut alloc = Allocator::default();
        let idx = index(vec![
            nad("t", "data", DATA),
            pod("t", "b", "n1", "data"),
            pod("t", "a", "n2", r#"[{"name": "data", "interface": "data0", "ips": ["10.100.0.3/24"]}]"#),
        ]);
        let plan = alloc.sync(&idx, Foreign::Refuse, ok);
        assert!(plan.problems.is_empty(), "{:?}", plan.problems);
        let a = &plan.pods[&ObjectKey::new("t", "a")][0];
        assert_eq!((a.interface.as_str(), a.ips.clone()), ("data0", vec![("10.100.0.3".parse().unwrap(), 24)]));
        assert_eq!(a.mac, "0a:58:0a:64:00:03");
        let b = &plan.pods[&ObjectKey::new("t", "b")][0];
        assert_eq!(b.ips, vec![("10.100.0.8".parse().unwrap(), 24)], "the first address after the excluded /29");
        assert_eq!((b.interface.as_str(), b.node.as_str()), ("net1", "n1"));
        // A newcomer sorting before b does not take b's address.
        let idx = index(vec![
            nad("t", "data", DATA),
            pod("t", "b", "n1", "data"),
            pod("t", "a", "n2", r#"[{"name": "data", "interface": "data0", "ips": ["10.100.0.3/24"]}]"#),
            pod("t", "aa", "n1", "data"),
        ]);
        let plan = alloc.sync(&idx, Foreign::Refuse, ok);
        assert_eq!(plan.pods[&ObjectKey::new("t", "b")][0].ips[0].0.to_string(), "10.100.0.8");
        assert_eq!(plan.pods[&ObjectKey::new("t", "aa")][0].ips[0].0.to_string(), "10.100.0.9");
    }

    #[test]
    fn a_pod_gets_all_its_networks_or_none_and_the_problem_names_the_element() {
        let mut alloc = Allocator::default();
        let idx = index(vec![
            nad("t", "data", DATA),
            nad("t", "provider", PROVIDER),
            nad("t", "mv", r#"{"type": "macvlan", "master": "eth0"}"#),
            pod("t", "taken", "n1", r#"[{"name": "data", "ips": ["10.100.0.20"]}]"#),
            pod("t", "x", "n1", r#"[{"name": "provider"}, {"name": "data", "ips": ["10.100.0.20"]}]"#),
            pod("t", "y", "n1", r#"[{"name": "data", "ips": ["10.200.0.1"]}]"#),
            pod("t", "z", "n1", "missing"),
            pod("t", "w", "n1", "mv"),
            pod("t", "v", "n1", r#"[{"name": "data", "default-route": ["10.9.9.9"]}]"#),
        ]);
        let plan = alloc.sync(&idx, Foreign::Refuse, ok);
        let why = |p: &str| plan.refused[&ObjectKey::new("t", p)].clone();
        assert!(why("x").contains("[1].ips: 10.100.0.20 on network t/data is taken by t/taken/net1"), "{}", why("x"));
        assert!(!plan.pods.contains_key(&ObjectKey::new("t", "x")), "not even the provider network");
        assert!(why("y").contains("[0].ips: 10.200.0.1 is outside network t/data's subnets 10.100.0.0/24"));
        assert!(why("z").contains("[0].name: NetworkAttachmentDefinition t/missing does not exist"));
        assert!(why("w").contains("a macvlan network, not stacknet-cni's"));
        assert!(why("v").contains("[0].default-route: gateway 10.9.9.9"));
        assert_eq!(plan.problems.iter().filter(|p| p.reason == Reason::AttachmentFailed).count(), 5);
        // x's provider interface took nothing: another pod may have its MAC-less slot, and
        // with Multus the macvlan network is Multus's business.
        let plan = alloc.sync(&idx, Foreign::LeaveToMultus, ok);
        assert!(!plan.refused.contains_key(&ObjectKey::new("t", "w")));
        assert!(!plan.pods.contains_key(&ObjectKey::new("t", "w")), "nothing of ours to attach");
    }

    #[test]
    fn a_network_the_backend_cannot_make_refuses_the_pod() {
        let mut alloc = Allocator::default();
        let idx = index(vec![nad("t", "provider", PROVIDER), pod("t", "a", "n1", "provider")]);
        let plan = alloc.sync(&idx, Foreign::Refuse, |t| match t {
            NetTopology::Localnet { .. } => Err("OpenStack mode makes Neutron networks only".into()),
            _ => Ok(()),
        });
        assert!(plan.refused[&ObjectKey::new("t", "a")].contains("localnet provider VLAN 200"));
    }

    #[test]
    fn a_network_without_subnets_takes_the_addresses_asked_for_and_a_stable_mac() {
        let mut alloc = Allocator::default();
        let idx = index(vec![
            nad("t", "provider", PROVIDER),
            pod("t", "a", "n1", r#"[{"name": "provider", "ips": ["192.0.2.10/24"], "mac": "02:00:00:00:00:0a"}]"#),
            pod("t", "b", "n1", "provider"),
        ]);
        let plan = alloc.sync(&idx, Foreign::Refuse, ok);
        let a = &plan.pods[&ObjectKey::new("t", "a")][0];
        assert_eq!((a.mac.as_str(), a.ips.clone()), ("02:00:00:00:00:0a", vec![("192.0.2.10".parse().unwrap(), 24)]));
        let b = &plan.pods[&ObjectKey::new("t", "b")][0];
        assert!(b.ips.is_empty());
        assert_eq!(b.mac, mac_for(&[], &ObjectKey::new("t", "b"), "net1"));
        assert!(b.mac.starts_with("0a:58:"));
    }

    #[test]
    fn network_status_lists_every_interface_as_the_spec_shows_it() {
        let mut alloc = Allocator::default();
        let idx = index(vec![
            nad("t", "data", DATA),
            nad("t", "provider", PROVIDER),
            pod(
                "t",
                "a",
                "n1",
                r#"[{"name": "data"}, {"name": "provider", "ips": ["192.0.2.20/24"], "default-route": ["192.0.2.1"]}]"#,
            ),
        ]);
        let plan = alloc.sync(&idx, Foreign::Refuse, ok);
        let list = &plan.pods[&ObjectKey::new("t", "a")];
        let ips = ["10.1.0.5".parse().unwrap()];
        let status: serde_json::Value =
            serde_json::from_str(&network_status("stacknet", ("eth0", &ips, "0a:58:0a:01:00:05"), list)).unwrap();
        assert_eq!(
            status,
            serde_json::json!([
                {"name": "stacknet", "interface": "eth0", "ips": ["10.1.0.5"], "mac": "0a:58:0a:01:00:05", "default": true, "dns": {}},
                {"name": "t/data", "interface": "net1", "ips": ["10.100.0.8"], "mac": "0a:58:0a:64:00:08", "default": false, "dns": {}},
                {"name": "t/provider", "interface": "net2", "ips": ["192.0.2.20"], "mac": "0a:58:c0:00:02:14", "dns": {},
                 "default": false, "default-route": ["192.0.2.1"], "gateway": ["192.0.2.1"]}
            ])
        );
    }

    #[test]
    fn the_network_index_holds_the_attached_pods_with_their_addresses_on_it() {
        let mut alloc = Allocator::default();
        let mnp: super::super::nad::MultiPolicyApi = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "t", "annotations": {super::super::nad::POLICY_FOR_ANNOTATION: "data"}},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
        }))
        .unwrap();
        let mnp = MultiNetworkPolicy::from_k8s(&mnp, &mut Vec::new()).unwrap();
        let idx = index(vec![
            nad("t", "data", DATA),
            nad("t", "provider", PROVIDER),
            pod("t", "a", "n1", "data"),
            pod("t", "b", "n1", "provider"),
            ClusterObject::MultiNetworkPolicy(mnp),
        ]);
        let plan = alloc.sync(&idx, Foreign::Refuse, ok);
        let data = network_index(&idx, &plan, &ObjectKey::new("t", "data"));
        let pods: Vec<_> = data.pods().map(|(_, p)| (p.key.name.clone(), p.ips.clone())).collect();
        assert_eq!(pods, vec![("a".to_string(), vec!["10.100.0.8".parse::<IpAddr>().unwrap()])]);
        assert_eq!(data.policies().count(), 1);
        let provider = network_index(&idx, &plan, &ObjectKey::new("t", "provider"));
        assert_eq!(provider.pods().count(), 1);
        assert_eq!(provider.policies().count(), 0, "the policy is for data only");
    }
}
