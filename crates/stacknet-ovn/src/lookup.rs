//! Reading a pod's network back from the Northbound database: the port the controller made for
//! it (MAC, addresses) and the router port of its switch (gateway, prefix length). This is what
//! the node agent plumbs into the pod.

use std::net::IpAddr;

use stacknet_engine::objects::ObjectKey;
use stacknet_ovsdb::nb::{self, LogicalSwitch, LogicalSwitchPort, string_map};
use stacknet_ovsdb::{Datum, Replica};

use crate::names::{KEY_CLUSTER, KEY_ID};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    /// The logical port: what the OVS interface's `external_ids:iface-id` must say.
    pub lsp: String,
    pub mac: String,
    /// Each address with its subnet's prefix length.
    pub addresses: Vec<(IpAddr, u8)>,
    /// The router port's address of each family present.
    pub gateways: Vec<IpAddr>,
    /// The pod UID the port expects (`options:iface-id-ver`), if any.
    pub iface_id_ver: Option<String>,
    /// Nested pods: the VM port this one nests in, and the VLAN tag ovn-northd gave it (`None`
    /// until it has).
    pub parent: Option<String>,
    pub vlan: Option<u16>,
    /// The interface's MTU, when its network sets one (secondary networks).
    pub mtu: Option<u32>,
    /// When set, the gateways are not the default route: only these CIDRs go through them
    /// (a primary interface whose default route is on a secondary one, by family).
    pub routes: Vec<stacknet_engine::Cidr>,
    /// A primary port: the pod's secondary interfaces its ADD attaches too.
    pub attachments: Vec<String>,
    /// A primary port: why the pod's secondary networks cannot be attached.
    pub attachment_error: Option<String>,
}

/// The network of pod `key` in `cluster`, if the controller has made its port (and the port's
/// switch is on the cluster router).
pub fn pod_network(replica: &Replica, cluster: &str, key: &ObjectKey) -> Option<PodNetwork> {
    port_network(replica, cluster, &format!("pod:{key}"))
}

/// The network of pod `key`'s secondary interface `interface`, if the controller has made its
/// port: addresses with their prefix lengths, MAC, MTU and default-route gateways.
pub fn attachment_network(replica: &Replica, cluster: &str, key: &ObjectKey, interface: &str) -> Option<PodNetwork> {
    let id = format!("attach:{key}/{interface}");
    let (uuid, row) = replica.table(nb::LOGICAL_SWITCH_PORT).by_external_id(KEY_ID, &id).find(|(_, r)| {
        r.get("external_ids").and_then(|d| d.map_get(KEY_CLUSTER)).and_then(|a| a.as_str()) == Some(cluster)
    })?;
    let ids = string_map(row, "external_ids");
    let lsp = LogicalSwitchPort::from_row(*uuid, row);
    let mac = lsp.addresses.iter().next()?.split_whitespace().next()?.to_string();
    Some(PodNetwork {
        lsp: lsp.name,
        mac,
        addresses: comma_list(&ids, crate::names::KEY_IPS).into_iter().filter_map(parse_network).collect(),
        gateways: comma_list(&ids, crate::names::KEY_DEFAULT_ROUTE)
            .into_iter()
            .filter_map(|g| g.parse().ok())
            .collect(),
        iface_id_ver: lsp.options.get("iface-id-ver").cloned(),
        parent: None,
        vlan: None,
        mtu: ids.get(crate::names::KEY_MTU).and_then(|m| m.parse().ok()),
        routes: Vec::new(),
        attachments: Vec::new(),
        attachment_error: None,
    })
}

/// A node's management port as the controller made it: the network of the node's own
/// interface on the pod network, and what the node routes through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Management {
    pub network: PodNetwork,
    pub routes: Vec<stacknet_engine::Cidr>,
}

/// The management port of node `node` in `cluster`, if the controller has made it.
pub fn management(replica: &Replica, cluster: &str, node: &str) -> Option<Management> {
    let network = port_network(replica, cluster, &format!("mgmt:{node}"))?;
    let routes = network.routes.clone();
    Some(Management { network, routes })
}

/// The network of our logical port with identity `id`.
fn port_network(replica: &Replica, cluster: &str, id: &str) -> Option<PodNetwork> {
    let lsps = replica.table(nb::LOGICAL_SWITCH_PORT);
    let (uuid, row) = lsps.by_external_id(KEY_ID, id).find(|(_, r)| {
        r.get("external_ids").and_then(|d| d.map_get(KEY_CLUSTER)).and_then(|a| a.as_str()) == Some(cluster)
    })?;
    let lsp = LogicalSwitchPort::from_row(*uuid, row);
    let mut words = lsp.addresses.iter().next()?.split_whitespace();
    let mac = words.next()?.to_string();
    let ips: Vec<IpAddr> = words.filter_map(|w| w.parse().ok()).collect();
    // The switch holding the port, and on it the router's port.
    let switch = replica
        .table(nb::LOGICAL_SWITCH)
        .rows()
        .map(|(u, r)| LogicalSwitch::from_row(*u, r))
        .find(|s| s.ports.contains(uuid))?;
    let router_port_name = switch.ports.iter().find_map(|p| {
        let r = lsps.get(p)?;
        (r.get("type").and_then(Datum::as_str) == Some("router"))
            .then(|| string_map(r, "options").get("router-port").cloned())?
    });
    let networks: Vec<(IpAddr, u8)> = router_port_name
        .and_then(|name| replica.table(nb::LOGICAL_ROUTER_PORT).by_name(&name).next().map(|(_, r)| r.clone()))
        .map(|r| {
            r.get("networks")
                .map(|d| d.elements().into_iter().filter_map(|a| a.as_str()).filter_map(parse_network).collect())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let addresses = ips
        .iter()
        .map(|ip| {
            let len = networks
                .iter()
                .find(|(g, _)| g.is_ipv4() == ip.is_ipv4())
                .map_or(if ip.is_ipv4() { 32 } else { 128 }, |(_, l)| *l);
            (*ip, len)
        })
        .collect();
    let gateways = networks.iter().map(|(g, _)| *g).collect();
    let parent = row.get("parent_name").and_then(Datum::as_str).filter(|p| !p.is_empty()).map(str::to_string);
    let vlan = row.get("tag").and_then(Datum::as_i64).and_then(|t| u16::try_from(t).ok());
    let ids = string_map(row, "external_ids");
    let routes = comma_list(&ids, crate::names::KEY_ROUTES).into_iter().filter_map(|c| c.parse().ok()).collect();
    Some(PodNetwork {
        lsp: lsp.name,
        mac,
        addresses,
        gateways,
        iface_id_ver: lsp.options.get("iface-id-ver").cloned(),
        parent,
        vlan,
        mtu: None,
        routes,
        attachments: comma_list(&ids, crate::names::KEY_ATTACHMENTS).into_iter().map(str::to_string).collect(),
        attachment_error: ids.get(crate::names::KEY_ATTACHMENT_ERROR).cloned(),
    })
}

/// The comma-separated values of `external_ids:key` (none when it is absent).
fn comma_list<'a>(ids: &'a std::collections::BTreeMap<String, String>, key: &str) -> Vec<&'a str> {
    ids.get(key).map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).collect()).unwrap_or_default()
}

fn parse_network(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = s.split_once('/')?;
    Some((ip.parse().ok()?, len.parse().ok()?))
}

/// What a previous controller allocated, as the Northbound database still holds it: each
/// node's subnets (from its router port) and each pod's node and addresses (from its port).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocated {
    pub nodes: Vec<(String, stacknet_engine::Cidr)>,
    pub pods: Vec<(ObjectKey, String, Vec<IpAddr>)>,
    /// Each node's management port's addresses.
    pub management: Vec<(String, Vec<IpAddr>)>,
    /// Each node's gateway router address on the join switch.
    pub join: Vec<(String, IpAddr)>,
    /// Each LoadBalancer Service's address.
    pub load_balancer_ips: Vec<(ObjectKey, IpAddr)>,
    /// Each secondary interface's addresses: (pod, interface, network, addresses).
    pub attachments: Vec<(ObjectKey, String, ObjectKey, Vec<IpAddr>)>,
}

/// Reads back the allocation of `cluster` (our rows only).
pub fn allocated(replica: &Replica, cluster: &str) -> Allocated {
    let ours = |r: &stacknet_ovsdb::RowData| {
        r.get("external_ids").and_then(|d| d.map_get(KEY_CLUSTER)).and_then(|a| a.as_str()) == Some(cluster)
    };
    let id_of = |r: &stacknet_ovsdb::RowData| {
        r.get("external_ids").and_then(|d| d.map_get(KEY_ID)).and_then(|a| a.as_str()).map(str::to_string)
    };
    let mut out = Allocated::default();
    for (_, r) in replica.table(nb::LOGICAL_ROUTER_PORT).rows().filter(|(_, r)| ours(r)) {
        if let Some(node) = id_of(r).and_then(|id| id.strip_prefix("gtoj:").map(str::to_string)) {
            let networks = r.get("networks").map(|d| d.elements()).unwrap_or_default();
            if let Some((ip, _)) = networks.iter().filter_map(|a| a.as_str()).find_map(parse_network) {
                out.join.push((node, ip));
            }
            continue;
        }
        let Some(node) = id_of(r).and_then(|id| id.strip_prefix("rtos:").map(str::to_string)) else { continue };
        for (gw, len) in r
            .get("networks")
            .map(|d| d.elements())
            .unwrap_or_default()
            .iter()
            .filter_map(|a| a.as_str())
            .filter_map(parse_network)
        {
            if let Some(c) = stacknet_engine::Cidr::new(gw, len) {
                out.nodes.push((node.clone(), c));
            }
        }
    }
    for (_, r) in replica.table(nb::LOAD_BALANCER).rows().filter(|(_, r)| ours(r)) {
        let ids = string_map(r, "external_ids");
        let ip = ids.get(crate::names::KEY_LB_IP).and_then(|v| v.parse::<IpAddr>().ok());
        let svc = ids.get(crate::names::KEY_OWNER).and_then(|k| k.split_once('/')).map(|(n, s)| ObjectKey::new(n, s));
        if let (Some(ip), Some(svc)) = (ip, svc) {
            out.load_balancer_ips.push((svc, ip));
        }
    }
    // Port → node, through the node switches.
    let mut node_of = std::collections::HashMap::new();
    for (_, r) in replica.table(nb::LOGICAL_SWITCH).rows().filter(|(_, r)| ours(r)) {
        let Some(node) = id_of(r).and_then(|id| id.strip_prefix("node:").map(str::to_string)) else { continue };
        for p in r.get("ports").map(|d| d.elements()).unwrap_or_default() {
            if let Some(u) = p.as_uuid() {
                node_of.insert(u, node.clone());
            }
        }
    }
    let addresses_of = |r: &stacknet_ovsdb::RowData| -> Vec<IpAddr> {
        r.get("addresses")
            .map(|d| d.elements())
            .unwrap_or_default()
            .iter()
            .filter_map(|a| a.as_str())
            .flat_map(|a| a.split_whitespace().skip(1).filter_map(|w| w.parse().ok()).collect::<Vec<_>>())
            .collect()
    };
    for (_, r) in replica.table(nb::LOGICAL_SWITCH_PORT).rows().filter(|(_, r)| ours(r)) {
        if let Some(node) = id_of(r).and_then(|id| id.strip_prefix("mgmt:").map(str::to_string)) {
            out.management.push((node, addresses_of(r)));
        }
    }
    for (_, r) in replica.table(nb::LOGICAL_SWITCH_PORT).rows().filter(|(_, r)| ours(r)) {
        let ids = string_map(r, "external_ids");
        let (Some(id), Some(net)) = (id_of(r), ids.get(crate::names::KEY_NETWORK)) else { continue };
        let Some((pod, iface)) = id.strip_prefix("attach:").and_then(|k| k.rsplit_once('/')) else { continue };
        let (Some((pns, pname)), Some((nns, nname))) = (pod.split_once('/'), net.split_once('/')) else { continue };
        out.attachments.push((
            ObjectKey::new(pns, pname),
            iface.to_string(),
            ObjectKey::new(nns, nname),
            addresses_of(r),
        ));
    }
    for (uuid, r) in replica.table(nb::LOGICAL_SWITCH_PORT).rows().filter(|(_, r)| ours(r)) {
        let Some(key) = id_of(r)
            .and_then(|id| id.strip_prefix("pod:").and_then(|k| k.split_once('/')).map(|(n, p)| ObjectKey::new(n, p)))
        else {
            continue;
        };
        let Some(node) = node_of.get(uuid) else { continue };
        let ips = addresses_of(r);
        if !ips.is_empty() {
            out.pods.push((key, node.clone(), ips));
        }
    }
    out
}

/// Addresses of ports on our switches that are not ours (a VM's port on a node switch), with
/// who holds them: IPAM must not hand them to pods.
pub fn foreign_addresses(replica: &Replica, cluster: &str) -> std::collections::BTreeMap<IpAddr, String> {
    let ours = |r: &stacknet_ovsdb::RowData| {
        r.get("external_ids").and_then(|d| d.map_get(KEY_CLUSTER)).and_then(|a| a.as_str()) == Some(cluster)
    };
    let lsps = replica.table(nb::LOGICAL_SWITCH_PORT);
    let mut out = std::collections::BTreeMap::new();
    for (_, sw) in replica.table(nb::LOGICAL_SWITCH).rows().filter(|(_, r)| ours(r)) {
        for p in sw.get("ports").map(|d| d.elements()).unwrap_or_default() {
            let Some(row) = p.as_uuid().and_then(|u| lsps.get(&u)) else { continue };
            if ours(row) {
                continue;
            }
            let name = row.get("name").and_then(Datum::as_str).unwrap_or_default();
            for a in row.get("addresses").map(|d| d.elements()).unwrap_or_default().iter().filter_map(|a| a.as_str()) {
                for ip in a.split_whitespace().skip(1).filter_map(|w| w.parse::<IpAddr>().ok()) {
                    out.insert(ip, format!("port {name}"));
                }
            }
        }
    }
    out
}
