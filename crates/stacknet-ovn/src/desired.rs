//! The desired Northbound rows, computed from the engine alone (pure): what the network must
//! look like, with identities stable across restarts so that a reconcile diffs, not rebuilds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use stacknet_engine::model::{Members, NamedPortKey, PeerSetId, Rule, RulePeer};
use stacknet_engine::objects::{Direction, ObjectKey, Pod, Protocol};
use stacknet_engine::service::{self, LoadBalancer};
use stacknet_engine::{Cidr, ClusterIndex, PolicyEngine};
use stacknet_ovsdb::Datum;
use stacknet_ovsdb::nb::{
    ACL, ADDRESS_SET, LOAD_BALANCER, LOAD_BALANCER_GROUP, LOGICAL_ROUTER, LOGICAL_ROUTER_PORT,
    LOGICAL_ROUTER_STATIC_ROUTE, LOGICAL_SWITCH, LOGICAL_SWITCH_PORT, NAT, PORT_GROUP,
};

use crate::names::{
    KEY_CLUSTER, KEY_ID, KEY_LB_IP, KEY_OWNER, KEY_OWNER_KIND, KEY_POD_UID, KEY_ROUTES, KEY_STEER, ident,
};
use crate::topology::{Gateways, NodeNet, Topology, mac_for};

/// ACL priorities: default deny below the allows. Traffic between a pod and its own node is
/// allowed at the allows' priority, on the node's switch: above every drop.
pub const PRIORITY_DENY: i64 = 1000;
pub const PRIORITY_ALLOW: i64 = 1001;

/// One row as it must be. References to other rows are by their identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRow {
    pub table: &'static str,
    pub id: String,
    pub columns: BTreeMap<&'static str, Datum>,
    pub refs: BTreeMap<&'static str, BTreeSet<String>>,
}

/// Where a pod's port is, for the node path and for tracing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPort {
    pub lsp: String,
    pub switch: String,
    pub node: String,
    pub mac: String,
    pub ips: Vec<IpAddr>,
    /// The VM port this one nests in (nested pods).
    pub parent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchInfo {
    pub name: String,
    /// The router port's MAC: the gateway pods send off-subnet traffic to.
    pub router_mac: Option<String>,
    pub gateways: Vec<IpAddr>,
    /// The node's management port (its logical port name and addresses), if it has one.
    pub management: Option<(String, Vec<IpAddr>)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub cluster: String,
    pub rows: BTreeMap<(&'static str, String), DesiredRow>,
    pub ports: BTreeMap<ObjectKey, PodPort>,
    pub switches: BTreeMap<String, SwitchInfo>,
    pub load_balancers: Vec<LoadBalancer>,
    /// Pods' secondary interfaces: (pod, interface) → the port on its network's switch.
    pub attachments: BTreeMap<(ObjectKey, String), PodPort>,
    /// What could not be expressed (a pod with no node to sit on, ...).
    pub warnings: Vec<String>,
}

impl Desired {
    pub fn row(&self, table: &'static str, id: &str) -> Option<&DesiredRow> {
        self.rows.get(&(table, id.to_string()))
    }

    pub fn count(&self, table: &str) -> usize {
        self.rows.keys().filter(|(t, _)| *t == table).count()
    }

    pub(crate) fn add(&mut self, row: DesiredRow) {
        self.rows.insert((row.table, row.id.clone()), row);
    }
}

pub(crate) struct RowBuilder {
    row: DesiredRow,
}

impl RowBuilder {
    pub(crate) fn new(cluster: &str, table: &'static str, id: String, owner_kind: &str, owner: &str) -> Self {
        let ids = Datum::string_map([
            (KEY_CLUSTER, cluster),
            (KEY_ID, id.as_str()),
            (KEY_OWNER_KIND, owner_kind),
            (KEY_OWNER, owner),
        ]);
        let mut columns = BTreeMap::new();
        if table != LOAD_BALANCER_GROUP {
            columns.insert("external_ids", ids);
        }
        RowBuilder { row: DesiredRow { table, id, columns, refs: BTreeMap::new() } }
    }

    pub(crate) fn col(mut self, c: &'static str, d: Datum) -> Self {
        self.row.columns.insert(c, d);
        self
    }

    pub(crate) fn str(self, c: &'static str, s: &str) -> Self {
        self.col(c, Datum::Atom(s.into()))
    }

    pub(crate) fn external(mut self, k: &str, v: &str) -> Self {
        if let Some(Datum::Map(m)) = self.row.columns.get_mut("external_ids") {
            m.insert(k.into(), v.into());
        }
        self
    }

    pub(crate) fn refs(mut self, c: &'static str, ids: impl IntoIterator<Item = String>) -> Self {
        self.row.refs.entry(c).or_default().extend(ids);
        self
    }

    pub(crate) fn build(self) -> DesiredRow {
        self.row
    }
}

fn socket(a: &SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => format!("{}:{}", v.ip(), v.port()),
        SocketAddr::V6(v) => format!("[{}]:{}", v.ip(), v.port()),
    }
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// Which address families the cluster uses (address sets are made per family).
#[derive(Debug, Clone, Copy)]
struct Families {
    v4: bool,
    v6: bool,
}

impl Families {
    /// The families of the pods' addresses (IPv4 when there are none).
    fn of(index: &ClusterIndex) -> Families {
        let (mut v4, mut v6) = (false, false);
        for ip in index.pods().flat_map(|(_, p)| p.ips.iter()) {
            v4 |= ip.is_ipv4();
            v6 |= ip.is_ipv6();
        }
        Families { v4: v4 || !v6, v6 }
    }

    fn list(self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.v4 {
            v.push("ip4");
        }
        if self.v6 {
            v.push("ip6");
        }
        v
    }
}

/// Whose policy rows: the primary network's (NetworkPolicies) or one secondary network's
/// (MultiNetworkPolicies). The primary network's row ids and names have no prefix.
struct Scope<'a> {
    /// Prefixes row ids and the identities names are hashed from (`""`, or `net:ns/nad|`).
    prefix: String,
    /// The kind that owns the policy rows.
    owner_kind: &'static str,
    /// The identities of a pod's ports in this scope (none: it has none).
    ports: &'a dyn Fn(&ObjectKey) -> Vec<String>,
}

/// Names of the address sets a rule refers to.
struct SetNames<'a> {
    cluster: &'a str,
    families: Families,
    engine: &'a PolicyEngine,
    prefix: &'a str,
}

impl SetNames<'_> {
    fn peer_set(&self, id: &PeerSetId, family: &str) -> String {
        format!("{}_{family}", ident(self.cluster, "as", &format!("{}{}", self.prefix, id.as_str())))
    }

    fn named_port(&self, key: &NamedPortKey, port: u16, family: &str) -> String {
        format!("{}_{family}", ident(self.cluster, "np", &format!("{}{}", self.prefix, named_port_id(key, port))))
    }

    /// `(ip4.F == $a_ip4 || ip6.F == $a_ip6)` for the families in use.
    fn any_of(&self, field: &str, name: impl Fn(&str) -> String) -> String {
        let alts: Vec<String> = self.families.list().iter().map(|f| format!("{f}.{field} == ${}", name(f))).collect();
        if alts.len() == 1 { alts[0].clone() } else { format!("({})", alts.join(" || ")) }
    }
}

fn named_port_id(key: &NamedPortKey, port: u16) -> String {
    format!("{}/{}/{port}", proto(key.protocol), key.name)
}

/// The OVN match of one rule on port group `pg`.
fn rule_match(rule: &Rule, pg: &str, names: &SetNames<'_>) -> String {
    let mut parts = Vec::new();
    let (subject, peer_field) = match rule.direction {
        Direction::Ingress => (format!("outport == @{pg}"), "src"),
        Direction::Egress => (format!("inport == @{pg}"), "dst"),
    };
    parts.push(subject);
    match &rule.peer {
        RulePeer::Any => {}
        RulePeer::Set(id) => parts.push(names.any_of(peer_field, |f| names.peer_set(id, f))),
        RulePeer::Block(b) => {
            let fam = if b.cidr.is_ipv4() { "ip4" } else { "ip6" };
            let mut s = format!("{fam}.{peer_field} == {}", b.cidr);
            if !b.except.is_empty() {
                let ex: Vec<String> = b.except.iter().map(|e| e.to_string()).collect();
                s.push_str(&format!(" && {fam}.{peer_field} != {{{}}}", ex.join(", ")));
            }
            parts.push(s);
        }
    }
    if let Some(p) = rule.protocol {
        let l4 = proto(p);
        if rule.ports.is_any() {
            parts.push(l4.to_string());
        } else {
            let mut alts: Vec<String> =
                rule.ports
                    .ranges
                    .iter()
                    .map(|(a, b)| {
                        if a == b {
                            format!("{l4}.dst == {a}")
                        } else {
                            format!("({l4}.dst >= {a} && {l4}.dst <= {b})")
                        }
                    })
                    .collect();
            for n in &rule.ports.named {
                let key = NamedPortKey { protocol: p, name: n.clone() };
                for port in names.engine.named_port_numbers(&key) {
                    let dst = names.any_of("dst", |f| names.named_port(&key, port, f));
                    alts.push(format!("({dst} && {l4}.dst == {port})"));
                }
            }
            // A named port no pod resolves matches nothing (yet).
            let alt = if alts.is_empty() { "0".to_string() } else { alts.join(" || ") };
            parts.push(format!("{l4} && ({alt})"));
        }
    }
    parts.join(" && ")
}

fn dir_str(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "to-lport",
        Direction::Egress => "from-lport",
    }
}

fn acl_options(d: Direction) -> Datum {
    match d {
        // Egress sees the backend of a Service, not its VIP.
        Direction::Egress => Datum::string_map([("apply-after-lb", "true")]),
        Direction::Ingress => Datum::Map(Default::default()),
    }
}

/// ACL names are at most 63 characters.
fn acl_name(s: &str) -> Datum {
    let cut: String = s.chars().take(63).collect();
    Datum::set([cut])
}

/// Computes every row the cluster needs.
pub fn build(engine: &PolicyEngine, topo: &Topology) -> Desired {
    let index = engine.index();
    let cluster = topo.cluster.as_str();
    let mut d = Desired { cluster: cluster.to_string(), ..Desired::default() };
    // Pods first: switches and port groups hold only the pods that got a port.
    let pods_by_node = pod_ports(&mut d, index, topo);
    let lbs = load_balancers(&mut d, topo, index);
    let mut router = node_switches(&mut d, topo, pods_by_node, lbs);
    if let Some(g) = &topo.gateways {
        gateway_routers(&mut d, topo, g, &mut router);
    }
    cluster_router(&mut d, cluster, router);
    let families = Families::of(index);
    let primary: BTreeSet<ObjectKey> = d.ports.keys().cloned().collect();
    let ports = |k: &ObjectKey| if primary.contains(k) { vec![format!("pod:{k}")] } else { Vec::new() };
    policies(&mut d, engine, &Scope { prefix: String::new(), owner_kind: "NetworkPolicy", ports: &ports }, families);
    crate::secondary::networks(&mut d, engine, topo);
    d
}

/// The rows of one network's policies: address sets, a port group per policy, default deny.
fn policies(d: &mut Desired, engine: &PolicyEngine, scope: &Scope<'_>, families: Families) {
    let cluster = d.cluster.clone();
    address_sets(d, &cluster, engine, families, scope);
    policy_port_groups(d, &SetNames { cluster: &cluster, families, engine, prefix: &scope.prefix }, scope);
    default_deny_port_groups(d, &cluster, engine, scope);
}

/// The policy rows of a secondary network (pure): its MultiNetworkPolicies over the pods
/// attached to it, with `ports` giving each pod's ports on it.
pub(crate) fn network_policies(
    d: &mut Desired,
    engine: &PolicyEngine,
    network: &ObjectKey,
    ports: &dyn Fn(&ObjectKey) -> Vec<String>,
) {
    let families = Families::of(engine.index());
    policies(
        d,
        engine,
        &Scope { prefix: format!("net:{network}|"), owner_kind: "MultiNetworkPolicy", ports },
        families,
    );
}

/// Pods: one port each, on their node's switch. Returns the port identities per node.
fn pod_ports(d: &mut Desired, index: &ClusterIndex, topo: &Topology) -> BTreeMap<String, Vec<String>> {
    let cluster = topo.cluster.as_str();
    let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, pod) in index.pods() {
        if !pod.is_policy_subject() {
            continue;
        }
        if pod.ips.is_empty() {
            d.warnings.push(format!("pod {}: no address yet, no port", pod.key));
            continue;
        }
        let Some(node) = topo.node_for(pod) else {
            d.warnings.push(format!("pod {}: no node with a subnet holding {}", pod.key, pod.ips[0]));
            continue;
        };
        let port = PodPort {
            lsp: format!("{cluster}_{}_{}", pod.key.namespace, pod.key.name),
            switch: format!("{cluster}_{}", node.name),
            node: node.name.clone(),
            mac: mac_for(pod.ips[0]),
            ips: pod.ips.clone(),
            parent: topo.parent_for(pod).map(str::to_string),
        };
        d.add(pod_port_row(cluster, pod, &port));
        by_node.entry(node.name.clone()).or_default().push(format!("pod:{}", pod.key));
        d.ports.insert(pod.key.clone(), port);
    }
    by_node
}

/// The logical switch port of `pod`, placed as `port` says.
fn pod_port_row(cluster: &str, pod: &Pod, port: &PodPort) -> DesiredRow {
    let address =
        std::iter::once(port.mac.clone()).chain(pod.ips.iter().map(|i| i.to_string())).collect::<Vec<_>>().join(" ");
    let mut options = BTreeMap::new();
    // A nested port is bound wherever its VM's port is.
    if let Some(n) = pod.node.as_ref().filter(|_| port.parent.is_none()) {
        options.insert("requested-chassis".to_string(), n.clone());
    }
    if let Some(uid) = &pod.uid {
        options.insert("iface-id-ver".to_string(), uid.clone());
    }
    let mut b = RowBuilder::new(cluster, LOGICAL_SWITCH_PORT, format!("pod:{}", pod.key), "Pod", &pod.key.to_string())
        .str("name", &port.lsp)
        .col("addresses", Datum::set([address.clone()]))
        .col("port_security", Datum::set([address]))
        .col("options", Datum::map(options));
    if let Some(uid) = &pod.uid {
        b = b.external(KEY_POD_UID, uid);
    }
    if let Some(parent) = &port.parent {
        // tag_request 0: ovn-northd picks a VLAN id unique under the parent (into `tag`).
        b = b.str("parent_name", parent).col("tag_request", Datum::Atom(0i64.into()));
    }
    b.build()
}

/// Services: a load balancer per service and protocol, all in one group for every switch.
/// Returns whether there is a group (no services, no group).
fn load_balancers(d: &mut Desired, topo: &Topology, index: &ClusterIndex) -> SwitchLoadBalancers {
    let cluster = topo.cluster.as_str();
    let load_balancers = service::load_balancers(index);
    let mut lb_ids = Vec::new();
    let mut per_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for lb in &load_balancers {
        let p = proto(lb.protocol);
        let id = format!("lb:{}:{p}", lb.service);
        let text = |vips: &BTreeMap<SocketAddr, BTreeSet<SocketAddr>>| -> BTreeMap<String, String> {
            vips.iter().map(|(vip, b)| (socket(vip), b.iter().map(socket).collect::<Vec<_>>().join(","))).collect()
        };
        // internalTrafficPolicy Local: the cluster IPs are per node (below); what stays
        // cluster-wide is the NodePorts.
        let mut vips = if lb.local { BTreeMap::new() } else { text(&lb.vips) };
        vips.extend(node_port_vips(topo, lb));
        let mut b = RowBuilder::new(cluster, LOAD_BALANCER, id.clone(), "Service", &lb.service.to_string())
            .str("name", &format!("{cluster}_{}_{}_{p}", lb.service.namespace, lb.service.name))
            .col("vips", Datum::map(vips))
            .col("protocol", Datum::set([p]))
            // A VIP without endpoints answers with a reject, not silence.
            .col("options", lb_options(true, lb.affinity_timeout, &[]));
        if let Some(ip) = topo.load_balancer_ips.get(&lb.service) {
            b = b.external(KEY_LB_IP, &ip.to_string());
        }
        d.add(b.build());
        lb_ids.push(id);
        if lb.local {
            for node in &topo.nodes {
                let id = format!("lb:itp:{}:{p}:{}", lb.service, node.name);
                d.add(
                    RowBuilder::new(cluster, LOAD_BALANCER, id.clone(), "Service", &lb.service.to_string())
                        .str(
                            "name",
                            &format!("{cluster}_{}_{}_{p}.{}", lb.service.namespace, lb.service.name, node.name),
                        )
                        .col("vips", Datum::map(text(&lb.vips_on(&node.name))))
                        .col("protocol", Datum::set([p]))
                        .col("options", lb_options(true, lb.affinity_timeout, &[]))
                        .build(),
                );
                per_node.entry(node.name.clone()).or_default().push(id);
            }
        }
    }
    d.load_balancers = load_balancers;
    if lb_ids.is_empty() {
        return SwitchLoadBalancers { group: false, per_node };
    }
    d.add(
        RowBuilder::new(cluster, LOAD_BALANCER_GROUP, "lbg".into(), "Cluster", cluster)
            .str("name", &ident(cluster, "lbg", "lbg"))
            .refs("load_balancer", lb_ids)
            .build(),
    );
    SwitchLoadBalancers { group: true, per_node }
}

/// What the node switches balance: the cluster-wide group (`lbg`), and per node the
/// `internalTrafficPolicy: Local` Services' own load balancers.
struct SwitchLoadBalancers {
    group: bool,
    per_node: BTreeMap<String, Vec<String>>,
}

/// A Service's NodePorts as pods dial them (on any node's address): balanced by the pod's
/// own switch to every backend, whatever `externalTrafficPolicy` says (that is for traffic
/// from outside).
fn node_port_vips(topo: &Topology, lb: &service::LoadBalancer) -> BTreeMap<String, String> {
    let Some(g) = &topo.gateways else { return BTreeMap::new() };
    let Some(e) = topo.exposures.iter().find(|e| e.service == lb.service && e.protocol == lb.protocol) else {
        return BTreeMap::new();
    };
    let mut vips = BTreeMap::new();
    for (np, backends) in &e.node_ports {
        for (_, ip) in gateway_nodes(topo, g) {
            let of = backends.iter().filter(|b| b.addr.is_ipv4() == ip.is_ipv4()).map(|b| b.addr);
            vips.insert(socket(&SocketAddr::new(ip, *np)), backends_text(of));
        }
    }
    vips
}

/// A load balancer's options: `reject` for VIPs without endpoints, ClientIP affinity, and
/// `extra` ones.
fn lb_options(reject: bool, affinity: Option<u32>, extra: &[(&str, &str)]) -> Datum {
    let mut m: BTreeMap<String, String> = extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    if reject {
        m.insert("reject".into(), "true".into());
    }
    if let Some(t) = affinity {
        // OVN's maximum.
        m.insert("affinity_timeout".into(), t.clamp(1, 65535).to_string());
    }
    Datum::map(m)
}

/// The cluster router's ports and static routes (identities), as the parts of the network
/// attached to it need them.
#[derive(Default)]
struct ClusterRouter {
    ports: Vec<String>,
    routes: Vec<String>,
}

/// Nodes: a switch each holding its pods' ports (`pods_by_node`) and the node's management
/// port, and a router port each for the cluster router.
fn node_switches(
    d: &mut Desired,
    topo: &Topology,
    mut pods_by_node: BTreeMap<String, Vec<String>>,
    mut lbs: SwitchLoadBalancers,
) -> ClusterRouter {
    let cluster = topo.cluster.as_str();
    let mut router = ClusterRouter::default();
    for node in &topo.nodes {
        let switch = format!("{cluster}_{}", node.name);
        let gateways: Vec<IpAddr> = node.subnets.iter().map(|(_, g)| *g).collect();
        let router_mac = gateways.first().map(|g| mac_for(*g));
        let mut ports = pods_by_node.remove(&node.name).unwrap_or_default();
        if router_mac.is_some() {
            let (router_port, switch_port) = router_link(d, cluster, node);
            router.ports.push(router_port);
            ports.push(switch_port);
        }
        let mut acls = Vec::new();
        let management = management_port(d, topo, node).map(|(port, lsp)| {
            ports.push(port);
            acls = own_node_acls(d, cluster, node);
            router.routes.extend(node_routes(d, cluster, node));
            (lsp, node.management.clone())
        });
        let b = RowBuilder::new(cluster, LOGICAL_SWITCH, format!("node:{}", node.name), "Node", &node.name)
            .str("name", &switch)
            .refs("ports", ports)
            .refs("acls", acls)
            .refs("load_balancer", lbs.per_node.remove(&node.name).unwrap_or_default())
            // Always named, so that the group going away is taken out of the switch too.
            .refs("load_balancer_group", lbs.group.then(|| "lbg".to_string()));
        d.add(b.build());
        d.switches.insert(node.name.clone(), SwitchInfo { name: switch, router_mac, gateways, management });
    }
    for (node, _) in pods_by_node {
        d.warnings.push(format!("node {node}: not in the topology"));
    }
    router
}

/// The cluster router, joining the node switches (and the join switch).
fn cluster_router(d: &mut Desired, cluster: &str, router: ClusterRouter) {
    if router.ports.is_empty() {
        return;
    }
    d.add(
        RowBuilder::new(cluster, LOGICAL_ROUTER, "router".into(), "Cluster", cluster)
            .str("name", &format!("{cluster}_router"))
            .refs("ports", router.ports)
            .refs("static_routes", router.routes)
            .build(),
    );
}

/// A router port (identity `id`, name `name`) holding `networks`, with the MAC of its first
/// address, and the switch port (identity `switch_id`) facing it.
fn router_pair(
    d: &mut Desired,
    cluster: &str,
    owner: (&str, &str),
    (id, name): (&str, &str),
    (switch_id, switch_name): (&str, &str),
    networks: &[(IpAddr, u8)],
) {
    let Some((first, _)) = networks.first() else { return };
    d.add(
        RowBuilder::new(cluster, LOGICAL_ROUTER_PORT, id.into(), owner.0, owner.1)
            .str("name", name)
            .str("mac", &mac_for(*first))
            .col("networks", Datum::set(networks.iter().map(|(ip, len)| format!("{ip}/{len}"))))
            .build(),
    );
    d.add(
        RowBuilder::new(cluster, LOGICAL_SWITCH_PORT, switch_id.into(), owner.0, owner.1)
            .str("name", switch_name)
            .str("type", "router")
            .col("addresses", Datum::set(["router"]))
            .col("options", Datum::string_map([("router-port", name)]))
            .build(),
    );
}

/// A static route (identity `id`) to `prefix` via `nexthop`, `src-ip` routes by source.
fn static_route(
    d: &mut Desired,
    cluster: &str,
    owner: (&str, &str),
    id: &str,
    prefix: &str,
    nexthop: IpAddr,
    by_source: bool,
) {
    let mut b = RowBuilder::new(cluster, LOGICAL_ROUTER_STATIC_ROUTE, id.into(), owner.0, owner.1)
        .str("ip_prefix", prefix)
        .str("nexthop", &nexthop.to_string());
    if by_source {
        b = b.col("policy", Datum::set(["src-ip"]));
    }
    d.add(b.build());
}

/// North–south: the join switch on the cluster router, and per node with an address on the
/// external network a gateway router bound to its chassis. The gateway router joins the join
/// switch and the node's external switch (whose `localnet` port reaches the uplink), routes
/// the cluster's CIDRs back to the cluster router and the rest to the next hop, and translates
/// the pods' addresses to the node's (unless SNAT is off). Pods leave through their own node's
/// gateway router: a source route per node subnet on the cluster router. IPv4 only.
fn gateway_routers(d: &mut Desired, topo: &Topology, g: &Gateways, router: &mut ClusterRouter) {
    let cluster = topo.cluster.as_str();
    let owner = ("Cluster", cluster);
    let join_router = g.router_address();
    let join_len = g.join.prefix_len();
    let rtoj = format!("{cluster}_rtoj");
    router_pair(d, cluster, owner, ("rtoj", &rtoj), ("jtor", &format!("{cluster}_jtor")), &[(join_router, join_len)]);
    router.ports.push("rtoj".into());
    let mut join_ports = vec!["jtor".to_string()];
    d.add(
        RowBuilder::new(cluster, ADDRESS_SET, "as:cluster-cidrs".into(), "Cluster", cluster)
            .str("name", &ident(cluster, "as", "cluster-cidrs"))
            .col("addresses", Datum::set(g.cluster.iter().filter(|c| c.is_ipv4()).map(|c| c.to_string())))
            .build(),
    );
    let gr_group = gateway_load_balancers(d, topo, g);
    let join_acls = source_range_acls(d, topo, g);
    let steer = steered(topo);
    for node in &topo.nodes {
        let (Some(join), Some(external)) = (node.join, g.external_address(node)) else { continue };
        let n = node.name.as_str();
        let owner = ("Node", n);
        let (gtoj, gtoe) = (format!("{cluster}_gtoj.{n}"), format!("{cluster}_gtoe.{n}"));
        router_pair(
            d,
            cluster,
            owner,
            (&format!("gtoj:{n}"), &gtoj),
            (&format!("jtog:{n}"), &format!("{cluster}_jtog.{n}")),
            &[(join, join_len)],
        );
        join_ports.push(format!("jtog:{n}"));
        router_pair(
            d,
            cluster,
            owner,
            (&format!("gtoe:{n}"), &gtoe),
            (&format!("etog:{n}"), &format!("{cluster}_etog.{n}")),
            &[(external, g.external.prefix_len())],
        );
        let localnet = format!("localnet:{n}");
        d.add(
            RowBuilder::new(cluster, LOGICAL_SWITCH_PORT, localnet.clone(), "Node", n)
                .str("name", &format!("{cluster}_localnet.{n}"))
                .str("type", "localnet")
                .col("addresses", Datum::set(["unknown"]))
                .col("options", Datum::string_map([("network_name", g.physnet.as_str())]))
                .build(),
        );
        d.add(
            RowBuilder::new(cluster, LOGICAL_SWITCH, format!("ext:{n}"), "Node", n)
                .str("name", &format!("{cluster}_ext.{n}"))
                .refs("ports", [format!("etog:{n}"), localnet])
                .build(),
        );
        let mut routes = Vec::new();
        let mut nat = Vec::new();
        for c in g.cluster.iter().filter(|c| c.is_ipv4()) {
            let id = format!("route:gr:{n}:{c}");
            static_route(d, cluster, owner, &id, &c.to_string(), join_router, false);
            routes.push(id);
            if g.snat {
                let id = format!("nat:{n}:{c}");
                d.add(
                    RowBuilder::new(cluster, NAT, id.clone(), "Node", n)
                        .str("type", "snat")
                        .str("external_ip", &external.to_string())
                        .str("logical_ip", &c.to_string())
                        .build(),
                );
                nat.push(id);
            }
        }
        // What a load balancer sends on into the cluster from outside leaves as the router's
        // join address, so that replies come back through here. Only towards the cluster (the
        // backends): pods' own traffic out is left to the rules above (or untranslated with
        // SNAT off). Load balancers of `externalTrafficPolicy: Local` skip it and keep the
        // client's address. A NAT rule, not the router's `lb_force_snat_ip`: with OVN 23.03
        // that one leaves a connection's first packet untranslated.
        {
            let id = format!("nat:{n}:lb");
            d.add(
                RowBuilder::new(cluster, NAT, id.clone(), "Node", n)
                    .str("type", "snat")
                    .str("external_ip", &join.to_string())
                    .str("logical_ip", "0.0.0.0/0")
                    .refs("allowed_ext_ips", ["as:cluster-cidrs".to_string()])
                    .build(),
            );
            nat.push(id);
        }
        if let Some(hop) = g.next_hop.filter(|h| h.is_ipv4()) {
            let id = format!("route:gr:{n}:default");
            static_route(d, cluster, owner, &id, "0.0.0.0/0", hop, false);
            routes.push(id);
        }
        let gr = RowBuilder::new(cluster, LOGICAL_ROUTER, format!("gr:{n}"), "Node", n)
            .str("name", &format!("{cluster}_gr.{n}"))
            .col("options", Datum::string_map([("chassis", n)]))
            .refs("ports", [format!("gtoj:{n}"), format!("gtoe:{n}")])
            .refs("static_routes", routes)
            .refs("nat", nat)
            .refs("load_balancer", local_external_lbs(d, topo, n))
            .external(KEY_STEER, &steer);
        // Always named, so that a group going away is taken out of the router too.
        d.add(gr.refs("load_balancer_group", gr_group.then(|| "lbg-gr".to_string())).build());

        for (subnet, _) in node.subnets.iter().filter(|(c, _)| c.is_ipv4()) {
            let id = format!("route:egress:{n}:{subnet}");
            static_route(d, cluster, owner, &id, &subnet.to_string(), join, true);
            router.routes.push(id);
        }
        // Replies to the router's own join address (a load balancer translated the client to
        // it) go straight to it, not by their source to the pod's own node's router: a host
        // route outranks the source routes, the join subnet's connected route does not.
        let id = format!("route:join:{n}");
        static_route(d, cluster, owner, &id, &format!("{join}/32"), join, false);
        router.routes.push(id);
    }
    d.add(
        RowBuilder::new(cluster, LOGICAL_SWITCH, "join".into(), "Cluster", cluster)
            .str("name", &format!("{cluster}_join"))
            .refs("ports", join_ports)
            .refs("acls", join_acls)
            .build(),
    );
}

/// The node's management port: its host network's interface on the pod network (made by the
/// node agent, an OVS internal port bound to this logical port). No port security: the node
/// may send from any of its addresses. `stacknet.io/routes` tells the agent what to route
/// through it. Returns its identity and name.
fn management_port(d: &mut Desired, topo: &Topology, node: &NodeNet) -> Option<(String, String)> {
    let first = *node.management.first()?;
    let cluster = topo.cluster.as_str();
    let lsp = Topology::management_port(cluster, &node.name);
    let address = std::iter::once(mac_for(first))
        .chain(node.management.iter().map(|i| i.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let routes = topo.node_routes.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",");
    let id = format!("mgmt:{}", node.name);
    d.add(
        RowBuilder::new(cluster, LOGICAL_SWITCH_PORT, id.clone(), "Node", &node.name)
            .str("name", &lsp)
            .col("addresses", Datum::set([address]))
            .col("options", Datum::string_map([("requested-chassis", node.name.as_str())]))
            .external(KEY_ROUTES, &routes)
            .build(),
    );
    Some((id, lsp))
}

/// `ip4.F == {a, b} || ip6.F == {c}` over `ips`.
fn addresses_match(field: &str, ips: &[IpAddr]) -> String {
    let mut alts = Vec::new();
    for (fam, v4) in [("ip4", true), ("ip6", false)] {
        let of: Vec<String> = ips.iter().filter(|i| i.is_ipv4() == v4).map(|i| i.to_string()).collect();
        match of.len() {
            0 => {}
            1 => alts.push(format!("{fam}.{field} == {}", of[0])),
            _ => alts.push(format!("{fam}.{field} == {{{}}}", of.join(", "))),
        }
    }
    alts.join(" || ")
}

/// Traffic between a pod and its own node is never blocked by policy (kubelet's probes come
/// from the node): on the node's switch, an allow for the node's addresses (management and
/// its own) in each direction, at the allows' priority, so above every drop. Returns the
/// ACLs' identities.
fn own_node_acls(d: &mut Desired, cluster: &str, node: &NodeNet) -> Vec<String> {
    let ips: Vec<IpAddr> = node.management.iter().chain(&node.addresses).copied().collect();
    let mut ids = Vec::new();
    for (dir, field, what) in [(Direction::Ingress, "src", "from"), (Direction::Egress, "dst", "to")] {
        let id = format!("acl:node:{}:{what}", node.name);
        d.add(
            RowBuilder::new(cluster, ACL, id.clone(), "Node", &node.name)
                .col("name", acl_name(&format!("{what} node {}", node.name)))
                .col("priority", Datum::Atom(PRIORITY_ALLOW.into()))
                .str("direction", dir_str(dir))
                .str("match", &addresses_match(field, &ips))
                .str("action", "allow-related")
                .col("options", acl_options(dir))
                .build(),
        );
        ids.push(id);
    }
    ids
}

/// Pods' traffic for the node's own addresses goes to its management port (where the host
/// network that holds them is): a host route each on the cluster router. Returns their
/// identities.
fn node_routes(d: &mut Desired, cluster: &str, node: &NodeNet) -> Vec<String> {
    let mut ids = Vec::new();
    for ip in &node.addresses {
        let Some(hop) = node.management.iter().find(|m| m.is_ipv4() == ip.is_ipv4()) else { continue };
        let id = format!("route:node:{}:{ip}", node.name);
        static_route(d, cluster, ("Node", &node.name), &id, &Cidr::host(*ip).to_string(), *hop, false);
        ids.push(id);
    }
    ids
}

/// The nodes with a gateway router, and their external addresses.
fn gateway_nodes<'a>(topo: &'a Topology, g: &'a Gateways) -> impl Iterator<Item = (&'a str, IpAddr)> + 'a {
    topo.nodes.iter().filter(|n| n.join.is_some()).filter_map(|n| Some((n.name.as_str(), g.external_address(n)?)))
}

fn backends_text(backends: impl Iterator<Item = SocketAddr>) -> String {
    backends.map(|b| socket(&b)).collect::<Vec<_>>().join(",")
}

/// Services reached from outside, on every gateway router: per Service and protocol a
/// NodePort load balancer (each node's address and the `nodePort`; with `Local`, each
/// node's VIP only its own backends, and a node without one has no VIP) and one for its
/// external addresses (`externalIPs`, the load balancer's; `Local` ones are per node, see
/// [`local_external_lbs`]), all in one group on every gateway router. Returns whether there
/// is a group.
fn gateway_load_balancers(d: &mut Desired, topo: &Topology, g: &Gateways) -> bool {
    let cluster = topo.cluster.as_str();
    let nodes: Vec<(&str, IpAddr)> = gateway_nodes(topo, g).collect();
    let mut ids = Vec::new();
    for e in &topo.exposures {
        let owner = e.service.to_string();
        let p = proto(e.protocol);
        let mut vips = BTreeMap::new();
        for (np, backends) in &e.node_ports {
            for (n, ip) in &nodes {
                let of = backends
                    .iter()
                    .filter(|b| b.addr.is_ipv4() == ip.is_ipv4() && (!e.local || b.node.as_deref() == Some(n)));
                let text = backends_text(of.map(|b| b.addr));
                if e.local && text.is_empty() {
                    // Not forwarded here: no local endpoint.
                    continue;
                }
                vips.insert(socket(&SocketAddr::new(*ip, *np)), text);
            }
        }
        if !vips.is_empty() {
            let id = format!("lb:np:{}:{p}", e.service);
            // The node addresses are the routers' own: answered already, not as VIPs.
            let extra: &[(&str, &str)] = if e.local {
                &[("neighbor_responder", "none"), ("skip_snat", "true")]
            } else {
                &[("neighbor_responder", "none")]
            };
            d.add(
                RowBuilder::new(cluster, LOAD_BALANCER, id.clone(), "Service", &owner)
                    .str("name", &format!("{cluster}_np_{}_{}_{p}", e.service.namespace, e.service.name))
                    .col("vips", Datum::map(vips))
                    .col("protocol", Datum::set([p]))
                    .col("options", lb_options(!e.local, e.affinity_timeout, extra))
                    .build(),
            );
            ids.push(id);
        }
        if !e.local && !e.external.is_empty() {
            let id = format!("lb:ext:{}:{p}", e.service);
            let vips = e.external.iter().map(|(vip, b)| (socket(vip), backends_text(b.iter().map(|b| b.addr))));
            d.add(
                RowBuilder::new(cluster, LOAD_BALANCER, id.clone(), "Service", &owner)
                    .str("name", &format!("{cluster}_ext_{}_{}_{p}", e.service.namespace, e.service.name))
                    .col("vips", Datum::map(vips))
                    .col("protocol", Datum::set([p]))
                    .col("options", lb_options(true, e.affinity_timeout, &[]))
                    .build(),
            );
            ids.push(id);
        }
    }
    if ids.is_empty() {
        return false;
    }
    d.add(
        RowBuilder::new(cluster, LOAD_BALANCER_GROUP, "lbg-gr".into(), "Cluster", cluster)
            .str("name", &ident(cluster, "lbg", "gr"))
            .refs("load_balancer", ids)
            .build(),
    );
    true
}

/// `externalTrafficPolicy: Local` Services' external addresses on node `n`'s gateway router:
/// only where it has a backend (elsewhere the address is neither answered nor forwarded), to
/// its own backends, keeping the client's address. Returns their identities.
fn local_external_lbs(d: &mut Desired, topo: &Topology, n: &str) -> Vec<String> {
    let cluster = topo.cluster.as_str();
    let mut ids = Vec::new();
    for e in topo.exposures.iter().filter(|e| e.local) {
        let vips: BTreeMap<String, String> = e
            .external
            .iter()
            .filter_map(|(vip, b)| {
                let text = backends_text(b.iter().filter(|b| b.node.as_deref() == Some(n)).map(|b| b.addr));
                (!text.is_empty()).then(|| (socket(vip), text))
            })
            .collect();
        if vips.is_empty() {
            continue;
        }
        let p = proto(e.protocol);
        let id = format!("lb:ext-local:{}:{p}:{n}", e.service);
        d.add(
            RowBuilder::new(cluster, LOAD_BALANCER, id.clone(), "Service", &e.service.to_string())
                .str("name", &format!("{cluster}_ext_{}_{}_{p}.{n}", e.service.namespace, e.service.name))
                .col("vips", Datum::map(vips))
                .col("protocol", Datum::set([p]))
                .col("options", lb_options(false, e.affinity_timeout, &[("skip_snat", "true")]))
                .build(),
        );
        ids.push(id);
    }
    ids
}

/// The addresses traffic from the uplink must reach the gateway router at rather than the
/// node (external addresses), for the agent's flows on the uplink bridge; comma-separated
/// CIDRs.
fn steered(topo: &Topology) -> String {
    let mut ips: BTreeSet<IpAddr> = BTreeSet::new();
    for e in &topo.exposures {
        ips.extend(e.external.keys().map(|a| a.ip()));
    }
    ips.iter().map(|ip| format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 })).collect::<Vec<_>>().join(",")
}

/// `loadBalancerSourceRanges`: traffic for a Service's load balancer address from anywhere
/// else is dropped where it enters a gateway router — from the outside, on a port group of
/// every external switch's localnet port, and from the cluster (pods, through the cluster
/// router), on the join switch. Returns the join switch's ACLs.
fn source_range_acls(d: &mut Desired, topo: &Topology, g: &Gateways) -> Vec<String> {
    let cluster = topo.cluster.as_str();
    let (mut uplink_acls, mut join_acls) = (Vec::new(), Vec::new());
    for e in &topo.exposures {
        let Some(sources) = &e.sources else { continue };
        let Some(lb_ip) = topo.load_balancer_ips.get(&e.service).filter(|ip| ip.is_ipv4()) else { continue };
        let p = proto(e.protocol);
        let ports: BTreeSet<String> =
            e.external.keys().filter(|a| a.ip() == *lb_ip).map(|a| a.port().to_string()).collect();
        if ports.is_empty() {
            continue;
        }
        let mut m =
            format!("ip4.dst == {lb_ip} && {p}.dst == {{{}}}", ports.into_iter().collect::<Vec<_>>().join(", "));
        let allowed: Vec<String> = sources.iter().filter(|c| c.is_ipv4()).map(|c| c.to_string()).collect();
        if !allowed.is_empty() {
            m.push_str(&format!(" && ip4.src != {{{}}}", allowed.join(", ")));
        }
        let from = [
            ("src", format!("inport == @{} && {m}", ident(cluster, "pg", "uplinks")), &mut uplink_acls),
            ("src-in", format!("inport == \"{cluster}_jtor\" && {m}"), &mut join_acls),
        ];
        for (kind, m, acls) in from {
            let id = format!("acl:{kind}:{}:{p}", e.service);
            d.add(
                RowBuilder::new(cluster, ACL, id.clone(), "Service", &e.service.to_string())
                    .col("name", acl_name(&format!("source ranges {}", e.service)))
                    .col("priority", Datum::Atom(PRIORITY_ALLOW.into()))
                    .str("direction", "from-lport")
                    .str("match", &m)
                    .str("action", "drop")
                    .build(),
            );
            acls.push(id);
        }
    }
    if !uplink_acls.is_empty() {
        let ports: Vec<String> = gateway_nodes(topo, g).map(|(n, _)| format!("localnet:{n}")).collect();
        d.add(
            RowBuilder::new(cluster, PORT_GROUP, "pg:uplinks".into(), "Cluster", cluster)
                .str("name", &ident(cluster, "pg", "uplinks"))
                .refs("ports", ports)
                .refs("acls", uplink_acls)
                .build(),
        );
    }
    join_acls
}

/// A node's link to the cluster router: the router port (with the node's gateways) and the
/// switch port facing it. Returns their identities.
fn router_link(d: &mut Desired, cluster: &str, node: &NodeNet) -> (String, String) {
    let (router_port, switch_port) = (format!("rtos:{}", node.name), format!("stor:{}", node.name));
    let networks: Vec<(IpAddr, u8)> = node.subnets.iter().map(|(c, g)| (*g, c.prefix_len())).collect();
    router_pair(
        d,
        cluster,
        ("Node", &node.name),
        (&router_port, &format!("{cluster}_rtos_{}", node.name)),
        (&switch_port, &format!("{cluster}_stor_{}", node.name)),
        &networks,
    );
    (router_port, switch_port)
}

/// The identities of the ports of `members` (those that have one).
fn member_ports(members: Members<'_>, scope: &Scope<'_>) -> Vec<String> {
    members.pods().flat_map(|p| (scope.ports)(&p.key)).collect()
}

/// The addresses of `members` of one family.
fn member_addresses(members: Members<'_>, v4: bool) -> Datum {
    Datum::set(
        members
            .pods()
            .flat_map(|p| p.ips.iter().filter(|ip| ip.is_ipv4() == v4).map(|ip| ip.to_string()))
            .collect::<Vec<_>>(),
    )
}

/// Peer sets and named-port sets: address sets, one per family.
fn address_sets(d: &mut Desired, cluster: &str, engine: &PolicyEngine, families: Families, scope: &Scope<'_>) {
    let prefix = scope.prefix.as_str();
    for (id, selector, members) in engine.peer_sets() {
        for fam in families.list() {
            let row_id = format!("{prefix}as:{id}:{fam}");
            d.add(
                RowBuilder::new(cluster, ADDRESS_SET, row_id, "PeerSet", &selector.to_string())
                    .str("name", &format!("{}_{fam}", ident(cluster, "as", &format!("{prefix}{}", id.as_str()))))
                    .col("addresses", member_addresses(members, fam == "ip4"))
                    .build(),
            );
        }
    }
    for (key, by_port) in engine.named_ports() {
        for (port, members) in by_port {
            for fam in families.list() {
                let npid = named_port_id(key, port);
                d.add(
                    RowBuilder::new(cluster, ADDRESS_SET, format!("{prefix}np:{npid}:{fam}"), "NamedPort", &npid)
                        .str("name", &format!("{}_{fam}", ident(cluster, "np", &format!("{prefix}{npid}"))))
                        .col("addresses", member_addresses(members, fam == "ip4"))
                        .build(),
                );
            }
        }
    }
}

/// Policies: a port group each, holding its rules' ACLs.
fn policy_port_groups(d: &mut Desired, names: &SetNames<'_>, scope: &Scope<'_>) {
    let (cluster, engine, prefix) = (names.cluster, names.engine, names.prefix);
    let mut rules_by_policy: BTreeMap<&ObjectKey, Vec<&Rule>> = BTreeMap::new();
    for r in engine.rules() {
        rules_by_policy.entry(&r.policy).or_default().push(r);
    }
    for (key, group) in engine.groups() {
        let pg = ident(cluster, "pg", &format!("{prefix}{key}"));
        let mut acl_ids = Vec::new();
        for (i, rule) in rules_by_policy.get(key).into_iter().flatten().enumerate() {
            let id = format!("{prefix}acl:{key}:{i}");
            d.add(
                RowBuilder::new(cluster, ACL, id.clone(), scope.owner_kind, &key.to_string())
                    .col("name", acl_name(&key.to_string()))
                    .col("priority", Datum::Atom(PRIORITY_ALLOW.into()))
                    .str("direction", dir_str(rule.direction))
                    .str("match", &rule_match(rule, &pg, names))
                    .str("action", "allow-related")
                    .col("options", acl_options(rule.direction))
                    .build(),
            );
            acl_ids.push(id);
        }
        let ports = member_ports(group.members, scope);
        d.add(
            RowBuilder::new(cluster, PORT_GROUP, format!("{prefix}pg:{key}"), scope.owner_kind, &key.to_string())
                .str("name", &pg)
                .refs("ports", ports)
                .refs("acls", acl_ids)
                .build(),
        );
    }
}

/// Default deny per namespace and direction: drop, but let ARP and ND through.
fn default_deny_port_groups(d: &mut Desired, cluster: &str, engine: &PolicyEngine, scope: &Scope<'_>) {
    for (ns, dir, members) in engine.default_deny() {
        let (dname, port) = match dir {
            Direction::Ingress => ("ingress", "outport"),
            Direction::Egress => ("egress", "inport"),
        };
        let id = format!("{}deny:{ns}:{dname}", scope.prefix);
        let pg = ident(cluster, "deny", &id);
        let owner = format!("{ns}/default-deny-{dname}");
        let drop_id = format!("{id}:drop");
        let arp_id = format!("{id}:arp-nd");
        for (acl_id, prio, m, action) in [
            (&drop_id, PRIORITY_DENY, format!("{port} == @{pg}"), "drop"),
            // allow-related, not allow: a stateful ACL makes ovn-northd send the switch's
            // traffic through conntrack and commit new connections, so that replies to
            // connections the pod was allowed to make (or accept) are recognised as
            // established and pass this group's drop. With only stateless ACLs, a reply
            // into an ingress-isolated pod would be dropped.
            (&arp_id, PRIORITY_ALLOW, format!("{port} == @{pg} && (arp || nd)"), "allow-related"),
        ] {
            d.add(
                RowBuilder::new(cluster, ACL, acl_id.clone(), "Namespace", ns)
                    .col("name", acl_name(&owner))
                    .col("priority", Datum::Atom(prio.into()))
                    .str("direction", dir_str(dir))
                    .str("match", &m)
                    .str("action", action)
                    .col("options", acl_options(dir))
                    .build(),
            );
        }
        let ports = member_ports(members, scope);
        d.add(
            RowBuilder::new(cluster, PORT_GROUP, id.clone(), "Namespace", ns)
                .str("name", &pg)
                .refs("ports", ports)
                .refs("acls", [drop_id, arp_id])
                .build(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stacknet_engine::ClusterIndex;
    use stacknet_engine::manifest;

    fn desired(yaml: &str) -> Desired {
        let index = ClusterIndex::from_objects(manifest::parse("t.yaml", yaml).unwrap().objects);
        let topo = Topology::from_pods("c1", &index);
        build(&PolicyEngine::from_index(index), &topo)
    }

    const CLUSTER: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Pod, metadata: {name: web, namespace: x, labels: {app: web}, uid: u-web},
   spec: {nodeName: n1, containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]}, status: {podIP: 10.1.0.1}}
- {apiVersion: v1, kind: Pod, metadata: {name: db, namespace: y, labels: {app: db}},
   spec: {containers: [{name: c, image: i}]}, status: {podIP: 10.2.0.1}}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: web, namespace: x}
  spec:
    podSelector: {matchLabels: {app: web}}
    ingress:
    - from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}, {ipBlock: {cidr: 10.0.0.0/8, except: [10.2.0.0/16, 10.3.0.0/16]}}]
      ports: [{port: http}, {port: 9000, endPort: 9010}]
"#;

    #[test]
    fn rows_for_pods_nodes_and_policies() {
        let d = desired(CLUSTER);
        assert_eq!(d.count(LOGICAL_SWITCH), 2, "one switch per /24");
        assert_eq!(d.count(LOGICAL_ROUTER), 1);
        // Two pod ports, and on each switch a router port and the node's management port.
        assert_eq!(d.count(LOGICAL_SWITCH_PORT), 6);
        let web = d.row(LOGICAL_SWITCH_PORT, "pod:x/web").unwrap();
        assert_eq!(web.columns["addresses"], Datum::set(["0a:58:0a:01:00:01 10.1.0.1"]));
        assert_eq!(web.columns["port_security"], web.columns["addresses"]);
        assert_eq!(web.columns["options"], Datum::string_map([("requested-chassis", "n1"), ("iface-id-ver", "u-web")]));
        let ids = &web.columns["external_ids"];
        assert_eq!(ids.map_get(KEY_CLUSTER).and_then(|a| a.as_str()), Some("c1"));
        assert_eq!(ids.map_get(KEY_OWNER).and_then(|a| a.as_str()), Some("x/web"));
        // The policy: one port group with the pod, two ACLs (pod peer, ipBlock peer).
        let pg = d.row(PORT_GROUP, "pg:x/web").unwrap();
        assert_eq!(pg.refs["ports"], BTreeSet::from(["pod:x/web".to_string()]));
        assert_eq!(pg.refs["acls"].len(), 2);
        let acl = |i| d.row(ACL, &format!("acl:x/web:{i}")).unwrap().columns["match"].as_str().unwrap().to_string();
        let (a0, a1) = (acl(0), acl(1));
        let pgname = pg.columns["name"].as_str().unwrap();
        assert!(a0.starts_with(&format!("outport == @{pgname} && ip4.src == $sn_as_")), "{a0}");
        // Named port resolved through its set, the range as a range.
        assert!(a0.contains("tcp && ((tcp.dst >= 9000 && tcp.dst <= 9010) || (ip4.dst == $sn_np_"), "{a0}");
        assert!(a0.ends_with("_ip4 && tcp.dst == 8080))"), "{a0}");
        // Excepts inlined.
        assert!(a1.contains("ip4.src == 10.0.0.0/8 && ip4.src != {10.2.0.0/16, 10.3.0.0/16}"), "{a1}");
        // Default deny for x ingress, with ARP/ND allowed.
        let deny = d.row(PORT_GROUP, "deny:x:ingress").unwrap();
        assert_eq!(deny.refs["ports"], BTreeSet::from(["pod:x/web".to_string()]));
        let arp = d.row(ACL, "deny:x:ingress:arp-nd").unwrap();
        assert!(arp.columns["match"].as_str().unwrap().ends_with("&& (arp || nd)"));
        assert_eq!(d.row(ACL, "deny:x:ingress:drop").unwrap().columns["action"], Datum::Atom("drop".into()));
        // The peer set holds db's address.
        let sets: Vec<&DesiredRow> = d.rows.values().filter(|r| r.id.starts_with("as:")).collect();
        assert_eq!(sets.len(), 1);
        assert_eq!(sets[0].columns["addresses"], Datum::set(["10.2.0.1"]));
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    }

    #[test]
    fn every_row_is_tagged_and_every_reference_resolves() {
        let index = ClusterIndex::from_objects(manifest::parse("t.yaml", CLUSTER).unwrap().objects);
        let mut topo = Topology::from_pods("c1", &index);
        for (i, n) in topo.nodes.iter_mut().enumerate() {
            n.addresses = vec![format!("172.30.0.{}", 11 + i).parse().unwrap()];
            n.join = Some(format!("100.64.0.{}", 2 + i).parse().unwrap());
        }
        topo.gateways = Some(Gateways {
            join: "100.64.0.0/16".parse().unwrap(),
            external: "172.30.0.0/24".parse().unwrap(),
            next_hop: Some("172.30.0.1".parse().unwrap()),
            physnet: "external".into(),
            snat: true,
            cluster: vec!["10.0.0.0/8".parse().unwrap()],
        });
        let d = build(&PolicyEngine::from_index(index), &topo);
        // Per node a gateway router bound to it, its external switch with a localnet port, a
        // translation to its address, its routes; the cluster router sends each node's pods
        // out through it.
        assert_eq!(d.count(LOGICAL_ROUTER), 3);
        // Per gateway router: pods out as the node, load-balanced traffic in as the router.
        assert_eq!(d.count(NAT), 4);
        let gr = d.row(LOGICAL_ROUTER, "gr:net-10.1.0.0_24").unwrap();
        assert_eq!(gr.columns["options"], Datum::string_map([("chassis", "net-10.1.0.0_24")]));
        let nat = d.row(NAT, "nat:net-10.1.0.0_24:10.0.0.0/8").unwrap();
        assert_eq!(nat.columns["external_ip"], Datum::Atom("172.30.0.11".into()));
        let egress = d.row(LOGICAL_ROUTER_STATIC_ROUTE, "route:egress:net-10.1.0.0_24:10.1.0.0/24").unwrap();
        assert_eq!(egress.columns["policy"], Datum::set(["src-ip"]));
        assert_eq!(egress.columns["nexthop"], Datum::Atom("100.64.0.2".into()));
        let localnet = d.row(LOGICAL_SWITCH_PORT, "localnet:net-10.1.0.0_24").unwrap();
        assert_eq!(localnet.columns["options"], Datum::string_map([("network_name", "external")]));
        for ((table, id), row) in &d.rows {
            if *table != LOAD_BALANCER_GROUP {
                let ids = &row.columns["external_ids"];
                assert_eq!(ids.map_get(KEY_ID).and_then(|a| a.as_str()), Some(id.as_str()));
            }
            for (col, targets) in &row.refs {
                let target_table = match (*table, *col) {
                    (LOGICAL_SWITCH, "ports") | (PORT_GROUP, "ports") => LOGICAL_SWITCH_PORT,
                    (PORT_GROUP, "acls") | (LOGICAL_SWITCH, "acls") => ACL,
                    (LOGICAL_ROUTER, "ports") => LOGICAL_ROUTER_PORT,
                    (LOGICAL_ROUTER, "static_routes") => LOGICAL_ROUTER_STATIC_ROUTE,
                    (LOGICAL_ROUTER, "nat") => NAT,
                    (NAT, "allowed_ext_ips") => ADDRESS_SET,
                    (LOGICAL_ROUTER, "load_balancer") | (LOGICAL_SWITCH, "load_balancer") => LOAD_BALANCER,
                    (LOGICAL_ROUTER, "load_balancer_group") => LOAD_BALANCER_GROUP,
                    (LOGICAL_SWITCH, "load_balancer_group") => LOAD_BALANCER_GROUP,
                    (LOAD_BALANCER_GROUP, "load_balancer") => LOAD_BALANCER,
                    other => panic!("unexpected reference {other:?}"),
                };
                for t in targets {
                    assert!(d.row(target_table, t).is_some(), "{table} {id}.{col} -> {target_table} {t}");
                }
            }
        }
    }

    #[test]
    fn a_node_has_a_management_port_and_its_pods_always_accept_it() {
        let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {nodeName: n1, containers: []}\nstatus: {podIP: 10.244.0.3}\n";
        let engine =
            PolicyEngine::from_index(ClusterIndex::from_objects(manifest::parse("t.yaml", yaml).unwrap().objects));
        let topo = Topology {
            cluster: "c1".into(),
            nodes: vec![NodeNet {
                name: "n1".into(),
                subnets: vec![("10.244.0.0/24".parse().unwrap(), "10.244.0.1".parse().unwrap())],
                management: vec!["10.244.0.2".parse().unwrap()],
                addresses: vec!["192.168.50.11".parse().unwrap(), "fd00:50::11".parse().unwrap()],
                join: None,
            }],
            nested: BTreeMap::new(),
            node_routes: vec!["10.244.0.0/16".parse().unwrap(), "10.96.0.0/12".parse().unwrap()],
            gateways: None,
            exposures: Vec::new(),
            load_balancer_ips: Default::default(),
            multinet: Default::default(),
        };
        let d = build(&engine, &topo);
        let mgmt = d.row(LOGICAL_SWITCH_PORT, "mgmt:n1").unwrap();
        assert_eq!(mgmt.columns["name"], Datum::Atom("c1_mgmt.n1".into()));
        assert_eq!(mgmt.columns["addresses"], Datum::set(["0a:58:0a:f4:00:02 10.244.0.2"]));
        assert!(!mgmt.columns.contains_key("port_security"), "the node sends from any of its addresses");
        assert_eq!(mgmt.columns["options"], Datum::string_map([("requested-chassis", "n1")]));
        let ids = &mgmt.columns["external_ids"];
        assert_eq!(ids.map_get(KEY_ROUTES).and_then(|a| a.as_str()), Some("10.244.0.0/16,10.96.0.0/12"));
        let switch = d.row(LOGICAL_SWITCH, "node:n1").unwrap();
        assert!(switch.refs["ports"].contains("mgmt:n1"));
        assert_eq!(switch.refs["acls"], BTreeSet::from(["acl:node:n1:from".to_string(), "acl:node:n1:to".to_string()]));
        let from = d.row(ACL, "acl:node:n1:from").unwrap();
        assert_eq!(
            from.columns["match"],
            Datum::Atom("ip4.src == {10.244.0.2, 192.168.50.11} || ip6.src == fd00:50::11".into())
        );
        assert_eq!(from.columns["direction"], Datum::Atom("to-lport".into()));
        assert_eq!(from.columns["priority"], Datum::Atom(PRIORITY_ALLOW.into()));
        assert_eq!(from.columns["action"], Datum::Atom("allow-related".into()));
        let to = d.row(ACL, "acl:node:n1:to").unwrap();
        assert_eq!(to.columns["direction"], Datum::Atom("from-lport".into()));
        assert!(to.columns["match"].as_str().unwrap().starts_with("ip4.dst == {10.244.0.2, 192.168.50.11}"));
        assert_eq!(to.columns["options"], Datum::string_map([("apply-after-lb", "true")]));
        // Pods reach the node's own IPv4 address through the management port; IPv6 has no
        // management address here, so no route for it.
        let router = d.row(LOGICAL_ROUTER, "router").unwrap();
        assert_eq!(router.refs["static_routes"], BTreeSet::from(["route:node:n1:192.168.50.11".to_string()]));
        let r = d.row(LOGICAL_ROUTER_STATIC_ROUTE, "route:node:n1:192.168.50.11").unwrap();
        assert_eq!(r.columns["ip_prefix"], Datum::Atom("192.168.50.11/32".into()));
        assert_eq!(r.columns["nexthop"], Datum::Atom("10.244.0.2".into()));
        assert_eq!(d.switches["n1"].management, Some(("c1_mgmt.n1".to_string(), vec!["10.244.0.2".parse().unwrap()])));
    }
}
