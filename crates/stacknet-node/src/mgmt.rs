//! The node's management port: the node's own interface on the pod network. An OVS internal
//! port `sn-mgmt0` on br-int, bound to the logical port the controller made for the node
//! (`<cluster>_mgmt.<node>`), in the node's host network namespace, with the node's address in
//! its pod subnet and routes for the cluster and Service CIDRs through the cluster router.
//! Through it kubelet's probes reach the pods, the node reaches every pod and ClusterIP, and
//! pods reach the node.
//!
//! Level-based: [`plan`] (pure) compares what the logical port says with what the interface
//! looks like and lists the steps; the agent runs it at start and every [`REPAIR_EVERY`], so an
//! interface, address or route someone removed comes back.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::{LinkUnspec, RouteMessageBuilder};
use stacknet_engine::Cidr;
use stacknet_ovn::lookup::Management;
use stacknet_ovsdb::{Atom, Client, Condition, Datum, Mutation, Row, Transaction};

use crate::ovs::{BRIDGE, DATABASE, INTERFACE, PORT};
use crate::plumb::{self, PlumbError, nl};

/// The management interface's name (an OVS internal port, so also its Port and Interface).
pub const IFNAME: &str = "sn-mgmt0";
/// On the OVS Interface: the node whose management port it is (ours are those with this key).
pub const KEY_MANAGEMENT: &str = "stacknet.io/management";
/// How often the agent checks the management port and repairs it.
pub const REPAIR_EVERY: Duration = Duration::from_secs(1);

/// What the management interface must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The logical port (`external_ids:iface-id`).
    pub lsp: String,
    pub mac: String,
    pub mtu: u32,
    pub addresses: Vec<(IpAddr, u8)>,
    /// Destination → gateway (the router port of the node's subnet of that family).
    pub routes: BTreeMap<Cidr, IpAddr>,
}

impl Wanted {
    /// From the logical port the controller made: a route for each CIDR through the gateway
    /// of its family (a CIDR of a family the node has no subnet in is left out).
    pub fn from_port(m: &Management, mtu: u32) -> Wanted {
        let net = &m.network;
        let routes = m
            .routes
            .iter()
            .filter_map(|c| net.gateways.iter().find(|g| g.is_ipv4() == c.is_ipv4()).map(|g| (*c, *g)))
            .collect();
        Wanted { lsp: net.lsp.clone(), mac: net.mac.clone(), mtu, addresses: net.addresses.clone(), routes }
    }
}

/// What the interface looks like now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    pub mac: String,
    pub mtu: u32,
    pub up: bool,
    /// Global addresses (not IPv6 link-local ones, which the kernel makes).
    pub addresses: Vec<(IpAddr, u8)>,
    /// Routes through a gateway on this interface.
    pub routes: BTreeMap<Cidr, IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Mac(String),
    Mtu(u32),
    Up,
    AddAddress(IpAddr, u8),
    DelAddress(IpAddr, u8),
    /// Adds the route, or replaces one to the same destination through another gateway.
    Route(Cidr, IpAddr),
    DelRoute(Cidr, IpAddr),
}

/// The steps that make `seen` into `wanted`: the link first, then addresses (routes need
/// their gateway on-link), then routes.
pub fn plan(wanted: &Wanted, seen: &Seen) -> Vec<Step> {
    let mut steps = Vec::new();
    if !seen.mac.eq_ignore_ascii_case(&wanted.mac) {
        steps.push(Step::Mac(wanted.mac.clone()));
    }
    if seen.mtu != wanted.mtu {
        steps.push(Step::Mtu(wanted.mtu));
    }
    if !seen.up {
        steps.push(Step::Up);
    }
    for a in &seen.addresses {
        if !wanted.addresses.contains(a) {
            steps.push(Step::DelAddress(a.0, a.1));
        }
    }
    for a in &wanted.addresses {
        if !seen.addresses.contains(a) {
            steps.push(Step::AddAddress(a.0, a.1));
        }
    }
    for (dst, gw) in &seen.routes {
        if !wanted.routes.contains_key(dst) {
            steps.push(Step::DelRoute(*dst, *gw));
        }
    }
    for (dst, gw) in &wanted.routes {
        if seen.routes.get(dst) != Some(gw) {
            steps.push(Step::Route(*dst, *gw));
        }
    }
    steps
}

#[derive(Debug, thiserror::Error)]
pub enum MgmtError {
    #[error(transparent)]
    Plumb(#[from] PlumbError),
    #[error("Open_vSwitch database: {0}")]
    Ovsdb(#[from] stacknet_ovsdb::Error),
    #[error("bridge {0} does not exist")]
    NoBridge(String),
    #[error("interface {IFNAME} {0}")]
    Interface(String),
}

/// Makes sure the OVS internal port exists on `bridge`, bound to `lsp`. Returns whether it
/// wrote anything.
pub async fn ensure_port(ovs: &Client, bridge: &str, node: &str, lsp: &str) -> Result<bool, MgmtError> {
    let (existing, bound) = {
        let guard = ovs.replica();
        let Some(r) = guard.as_ref() else {
            return Err(MgmtError::Interface("unknown: no Open_vSwitch replica".into()));
        };
        let existing = r.table(INTERFACE).by_name(IFNAME).next().map(|(u, row)| {
            let iface_id = row.get("external_ids").and_then(|d| d.map_get("iface-id")).and_then(Atom::as_str);
            (*u, iface_id == Some(lsp))
        });
        let on_bridge = r.table(BRIDGE).by_name(bridge).next().is_some_and(|(_, b)| {
            let ports: Vec<_> = b
                .get("ports")
                .map(|d| d.elements().into_iter().filter_map(Atom::as_uuid).collect())
                .unwrap_or_default();
            r.table(PORT).by_name(IFNAME).any(|(u, _)| ports.contains(u))
        });
        (existing, on_bridge)
    };
    let ids = Datum::map([("iface-id", lsp), (KEY_MANAGEMENT, node)]);
    let mut t = Transaction::new(DATABASE);
    match existing {
        Some((_, true)) if bound => return Ok(false),
        Some((uuid, _)) if bound => {
            t.update(INTERFACE, vec![Condition::uuid(uuid)], Row::from([("external_ids".to_string(), ids)]));
            t.comment(&format!("stacknet: management port {IFNAME} bound to {lsp}"));
            ovs.transact(&t).await?;
            return Ok(true);
        }
        _ => {}
    }
    t.insert(
        INTERFACE,
        Row::from([
            ("name".to_string(), Datum::Atom(IFNAME.into())),
            ("type".to_string(), Datum::Atom("internal".into())),
            ("external_ids".to_string(), ids),
        ]),
        Some("iface"),
    );
    t.insert(
        PORT,
        Row::from([
            ("name".to_string(), Datum::Atom(IFNAME.into())),
            ("interfaces".to_string(), Datum::Set([Atom::NamedUuid("iface".into())].into())),
            ("external_ids".to_string(), Datum::map([(KEY_MANAGEMENT, node)])),
        ]),
        Some("port"),
    );
    let m = t.mutate(
        BRIDGE,
        vec![Condition::eq("name", bridge)],
        vec![Mutation::insert("ports", Datum::Set([Atom::NamedUuid("port".into())].into()))],
    );
    t.comment(&format!("stacknet: management port {IFNAME} for {lsp}"));
    let reply = ovs.transact(&t).await?;
    if reply.count(m) != Some(1) {
        return Err(MgmtError::NoBridge(bridge.into()));
    }
    Ok(true)
}

/// Reads the management interface in the namespace `host` is in (`None`: not there yet).
pub async fn observe(host: &rtnetlink::Handle) -> Result<Option<(u32, Seen)>, MgmtError> {
    let Some(link) = plumb::index_of(host, IFNAME).await? else { return Ok(None) };
    let idx = link.header.index;
    let mut seen = Seen { up: link.header.flags.contains(LinkFlags::Up), ..Seen::default() };
    for a in &link.attributes {
        match a {
            LinkAttribute::Address(b) => seen.mac = plumb::mac_string(b),
            LinkAttribute::Mtu(m) => seen.mtu = *m,
            _ => {}
        }
    }
    let link_local = |ip: &IpAddr| matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
    seen.addresses = plumb::addresses_on(host, idx).await?.into_iter().filter(|(ip, _)| !link_local(ip)).collect();
    for (dst, len, gw) in plumb::routes_on(host, idx).await? {
        if let Some(c) = Cidr::new(dst, len) {
            seen.routes.insert(c, gw);
        }
    }
    Ok(Some((idx, seen)))
}

pub(crate) fn route(dst: Cidr, gw: IpAddr, idx: u32) -> RouteMessage {
    match (dst.network(), gw) {
        (IpAddr::V4(d), IpAddr::V4(g)) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(d, dst.prefix_len())
            .gateway(g)
            .output_interface(idx)
            .build(),
        (IpAddr::V6(d), IpAddr::V6(g)) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(d, dst.prefix_len())
            .gateway(g)
            .output_interface(idx)
            .build(),
        _ => RouteMessageBuilder::<Ipv4Addr>::new().build(),
    }
}

/// Carries out `steps` on the interface with index `idx`.
pub async fn apply(host: &rtnetlink::Handle, idx: u32, steps: &[Step]) -> Result<(), MgmtError> {
    for step in steps {
        match step {
            Step::Mac(mac) => {
                let bytes = plumb::mac_bytes(mac)
                    .ok_or_else(|| MgmtError::Interface(format!("MAC {mac:?} (from the logical port) is not a MAC")))?;
                host.link()
                    .set(LinkUnspec::new_with_index(idx).address(bytes).build())
                    .execute()
                    .await
                    .map_err(nl(format!("setting {IFNAME}'s MAC to {mac}")))?;
            }
            Step::Mtu(mtu) => host
                .link()
                .set(LinkUnspec::new_with_index(idx).mtu(*mtu).build())
                .execute()
                .await
                .map_err(nl(format!("setting {IFNAME}'s MTU to {mtu}")))?,
            Step::Up => host
                .link()
                .set(LinkUnspec::new_with_index(idx).up().build())
                .execute()
                .await
                .map_err(nl(format!("bringing {IFNAME} up")))?,
            Step::AddAddress(ip, len) => match host.address().add(idx, *ip, *len).execute().await {
                Ok(()) => {}
                // EEXIST: there meanwhile.
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -17 => {}
                Err(e) => return Err(nl(format!("adding {ip}/{len} to {IFNAME}"))(e).into()),
            },
            Step::DelAddress(ip, len) => {
                let mut addrs = host.address().get().set_link_index_filter(idx).execute();
                while let Some(a) = addrs.try_next().await.map_err(nl("listing addresses"))? {
                    let is = a.header.prefix_len == *len
                        && a.attributes.iter().any(|at| matches!(at, AddressAttribute::Address(x) if x == ip));
                    if is {
                        host.address()
                            .del(a)
                            .execute()
                            .await
                            .map_err(nl(format!("removing {ip}/{len} from {IFNAME}")))?;
                        break;
                    }
                }
            }
            Step::Route(dst, gw) => host
                .route()
                .add(route(*dst, *gw, idx))
                .replace()
                .execute()
                .await
                .map_err(nl(format!("route {dst} via {gw} dev {IFNAME}")))?,
            Step::DelRoute(dst, gw) => match host.route().del(route(*dst, *gw, idx)).execute().await {
                Ok(()) => {}
                // ESRCH: gone meanwhile.
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -3 => {}
                Err(e) => return Err(nl(format!("removing route {dst} via {gw}"))(e).into()),
            },
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted() -> Wanted {
        Wanted {
            lsp: "c_mgmt.n1".into(),
            mac: "0a:58:0a:f4:00:02".into(),
            mtu: 1400,
            addresses: vec![("10.244.0.2".parse().unwrap(), 24)],
            routes: BTreeMap::from([
                ("10.244.0.0/16".parse().unwrap(), "10.244.0.1".parse().unwrap()),
                ("10.96.0.0/12".parse().unwrap(), "10.244.0.1".parse().unwrap()),
            ]),
        }
    }

    #[test]
    fn a_fresh_interface_gets_mac_mtu_link_address_then_routes() {
        let steps = plan(&wanted(), &Seen { mac: "aa:bb:cc:00:00:01".into(), mtu: 1500, ..Seen::default() });
        assert_eq!(
            steps,
            [
                Step::Mac("0a:58:0a:f4:00:02".into()),
                Step::Mtu(1400),
                Step::Up,
                Step::AddAddress("10.244.0.2".parse().unwrap(), 24),
                Step::Route("10.96.0.0/12".parse().unwrap(), "10.244.0.1".parse().unwrap()),
                Step::Route("10.244.0.0/16".parse().unwrap(), "10.244.0.1".parse().unwrap()),
            ]
        );
    }

    #[test]
    fn an_interface_as_wanted_needs_nothing() {
        let w = wanted();
        let seen = Seen {
            mac: w.mac.to_uppercase(),
            mtu: 1400,
            up: true,
            addresses: w.addresses.clone(),
            routes: w.routes.clone(),
        };
        assert_eq!(plan(&w, &seen), []);
    }

    #[test]
    fn what_someone_changed_is_put_back_and_what_they_added_removed() {
        let w = wanted();
        let mut routes = w.routes.clone();
        routes.remove(&"10.96.0.0/12".parse().unwrap());
        routes.insert("10.244.0.0/16".parse().unwrap(), "10.244.0.9".parse().unwrap());
        routes.insert("0.0.0.0/0".parse().unwrap(), "10.244.0.1".parse().unwrap());
        let seen = Seen {
            mac: w.mac.clone(),
            mtu: 1400,
            up: true,
            addresses: vec![("10.244.0.7".parse().unwrap(), 24)],
            routes,
        };
        assert_eq!(
            plan(&w, &seen),
            [
                Step::DelAddress("10.244.0.7".parse().unwrap(), 24),
                Step::AddAddress("10.244.0.2".parse().unwrap(), 24),
                Step::DelRoute("0.0.0.0/0".parse().unwrap(), "10.244.0.1".parse().unwrap()),
                Step::Route("10.96.0.0/12".parse().unwrap(), "10.244.0.1".parse().unwrap()),
                Step::Route("10.244.0.0/16".parse().unwrap(), "10.244.0.1".parse().unwrap()),
            ]
        );
    }

    #[test]
    fn routes_go_through_the_gateway_of_their_family_only() {
        let m = Management {
            network: stacknet_ovn::lookup::PodNetwork {
                lsp: "c_mgmt.n1".into(),
                mac: "0a:58:0a:f4:00:02".into(),
                addresses: vec![("10.244.0.2".parse().unwrap(), 24)],
                gateways: vec!["10.244.0.1".parse().unwrap()],
                iface_id_ver: None,
                parent: None,
                vlan: None,
                mtu: None,
                routes: Vec::new(),
                attachments: Vec::new(),
                attachment_error: None,
            },
            routes: vec!["10.244.0.0/16".parse().unwrap(), "fd00:96::/112".parse().unwrap()],
        };
        let w = Wanted::from_port(&m, 1400);
        assert_eq!(w.routes, BTreeMap::from([("10.244.0.0/16".parse().unwrap(), "10.244.0.1".parse().unwrap())]));
    }
}
