//! Pod interfaces: a veth pair, one end in the pod's namespace as `ifname` with the pod's MAC,
//! addresses, MTU and default route, the other on the host for br-int. Everything through
//! netlink; what is created is removed again if a later step fails.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::RouteAttribute;
use rtnetlink::{LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::netns::{self, NetnsError};

pub mod child;
#[cfg(test)]
pub mod recording;
pub mod sriov;

#[derive(Debug, Clone, thiserror::Error)]
pub enum PlumbError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("interface {name} already exists in the pod's network namespace")]
    IfnameTaken { name: String },
    #[error("{what}: {message}")]
    Netlink { what: String, message: String },
    #[error("disabling TX checksum offload on {name}: {message}")]
    Offload { name: String, message: String },
    /// An SR-IOV device named by its PCI address (a CNI `deviceID`) that is not there or not
    /// usable.
    #[error("PCI device {pci}: {message}")]
    PciDevice { pci: String, message: String },
    /// A VLAN asked for on a device that is not an SR-IOV virtual function (only a VF's PF
    /// can tag its traffic).
    #[error("cannot set VLAN {vlan}: {netdev} is not a virtual function (no physfn)")]
    NotAVirtualFunction { vlan: u16, netdev: String },
    /// No interface in the node's namespace has the MAC of the VM NIC that carries a port.
    #[error("no interface in the node's network namespace has MAC {mac} (seen: {})", seen_list(seen))]
    NoNic { mac: String, seen: Vec<String> },
}

fn seen_list(seen: &[String]) -> String {
    if seen.is_empty() { "none".into() } else { seen.join(", ") }
}

pub(crate) fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> PlumbError {
    let what = what.into();
    move |e| PlumbError::Netlink { what, message: e.to_string() }
}

/// What to plumb.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    /// The host end (at most 15 characters).
    pub host: String,
    /// The pod end, as the runtime asked (CNI_IFNAME).
    pub ifname: String,
    pub mac: String,
    pub addresses: Vec<(IpAddr, u8)>,
    /// Default routes, one per family at most.
    pub gateways: Vec<IpAddr>,
    /// Routes to prefixes (a primary interface whose default route is on another one).
    pub routes: Vec<(stacknet_engine::Cidr, IpAddr)>,
    pub mtu: u32,
    /// Nested pods: the VLAN tag the pod's traffic carries on the VM's NIC.
    pub vlan: Option<u16>,
}

pub(crate) fn mac_bytes(mac: &str) -> Option<Vec<u8>> {
    let b: Vec<u8> = mac.split(':').filter_map(|h| u8::from_str_radix(h, 16).ok()).collect();
    (b.len() == 6).then_some(b)
}

pub(crate) fn mac_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub(crate) async fn index_of(handle: &rtnetlink::Handle, name: &str) -> Result<Option<LinkMessage>, PlumbError> {
    match handle.link().get().match_name(name.to_string()).execute().try_next().await {
        Ok(m) => Ok(m),
        // ENODEV: no such interface.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(None),
        Err(e) => Err(nl(format!("looking up {name}"))(e)),
    }
}

/// Boxed futures, so that [`Plumbing`] can be used as a trait object.
pub type Fut<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// How a pod's interface is made: the one step that differs between a pod on a bare node
/// (a veth pair, host end on br-int: [`Veth`]) and a nested pod (a VLAN subinterface of the
/// node VM's NIC, its traffic tagged onto a trunk subport). The agent runs `create`, then
/// `configure` while it binds the host end to OVN.
pub trait Plumbing: Send + Sync {
    /// Whether this plumbing makes interfaces for nested pods (VLAN subinterfaces of the VM's
    /// NIC); one that does not refuses them rather than wiring them wrong.
    fn nested(&self) -> bool {
        false
    }
    /// Makes the interface. When this returns, the host end named `iface.host` exists (and can
    /// be bound); on failure nothing is left.
    fn create<'a>(&'a self, netns: &'a Path, iface: &'a PodInterface) -> Fut<'a, Result<(), PlumbError>>;
    /// Configures the pod end: addresses, routes, offloads.
    fn configure<'a>(&'a self, netns: &'a Path, iface: &'a PodInterface) -> Fut<'a, Result<(), PlumbError>>;
    /// Removes the interface by its host end; absent is success (`false`).
    fn remove<'a>(&'a self, host: &'a str) -> Fut<'a, Result<bool, PlumbError>>;
    /// What the pod's interface looks like now (`None`: not there).
    fn observe<'a>(&'a self, netns: &'a Path, ifname: &'a str) -> Fut<'a, Result<Option<Observed>, PlumbError>>;
}

/// Veth pairs: the pod end in the pod's namespace, the host end in `host`'s (where
/// ovs-vswitchd runs).
pub struct Veth {
    pub host: rtnetlink::Handle,
}

impl Plumbing for Veth {
    fn create<'a>(&'a self, netns: &'a Path, iface: &'a PodInterface) -> Fut<'a, Result<(), PlumbError>> {
        Box::pin(create(&self.host, netns, iface))
    }

    fn configure<'a>(&'a self, netns: &'a Path, iface: &'a PodInterface) -> Fut<'a, Result<(), PlumbError>> {
        Box::pin(configure_in(netns, iface))
    }

    fn remove<'a>(&'a self, host: &'a str) -> Fut<'a, Result<bool, PlumbError>> {
        Box::pin(unplumb(&self.host, host))
    }

    fn observe<'a>(&'a self, netns: &'a Path, ifname: &'a str) -> Fut<'a, Result<Option<Observed>, PlumbError>> {
        Box::pin(observe(netns, ifname))
    }
}

/// Creates the pair (the host end up) with the pod end directly in the pod's namespace, so
/// `ifname` never clashes with a host interface. Made from the node's namespace alone: the
/// pod's is entered only to say which name was taken when the kernel refuses one.
pub async fn create(host: &rtnetlink::Handle, netns_path: &Path, iface: &PodInterface) -> Result<(), PlumbError> {
    let ns = netns::open(netns_path)?;
    let mac = mac_bytes(&iface.mac)
        .ok_or_else(|| PlumbError::Netlink { what: "MAC".into(), message: format!("{:?} is not a MAC", iface.mac) })?;
    // The pod end cannot be created up (the kernel links the pair only after creating the peer).
    let peer = LinkUnspec::new_with_name(&iface.ifname).address(mac).mtu(iface.mtu).setns_by_fd(ns.as_raw_fd()).build();
    let veth = LinkVeth::new(&iface.host, &iface.ifname)
        .mtu(iface.mtu)
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    match host.link().add(veth).execute().await {
        Ok(()) => Ok(()),
        // EEXIST: the host end's name, or the pod end's in the pod's namespace.
        Err(rtnetlink::Error::NetlinkError(ref m)) if m.raw_code() == -17 => {
            let pod = netns::netlink_in_async(netns_path).await?;
            if index_of(&pod, &iface.ifname).await?.is_some() {
                return Err(PlumbError::IfnameTaken { name: iface.ifname.clone() });
            }
            Err(PlumbError::Netlink {
                what: format!("creating {}", iface.host),
                message: "an interface of that name exists on the node".into(),
            })
        }
        Err(e) => Err(nl(format!("creating veth {} / {}", iface.host, iface.ifname))(e)),
    }
}

/// [`create`] then [`configure_in`]; on failure the pair is deleted again.
pub async fn plumb(host: &rtnetlink::Handle, netns_path: &Path, iface: &PodInterface) -> Result<(), PlumbError> {
    create(host, netns_path, iface).await?;
    let result = configure_in(netns_path, iface).await;
    if result.is_err() {
        // Nothing half-made stays: deleting the host end deletes the pair.
        let _ = unplumb(host, &iface.host).await;
    }
    result
}

/// [`configure`] through sockets made in one visit to the pod's namespace.
pub async fn configure_in(netns_path: &Path, iface: &PodInterface) -> Result<(), PlumbError> {
    let (pod, ethtool) = netns::pod_sockets(netns_path).await?;
    configure(&pod, &ethtool, iface).await
}

/// The pod end's addresses, loopback, default routes, and TX checksum offload off (the
/// userspace datapath does not complete partial checksums).
pub async fn configure(
    pod: &rtnetlink::Handle,
    ethtool: &netlink_sys::Socket,
    iface: &PodInterface,
) -> Result<(), PlumbError> {
    let link = index_of(pod, &iface.ifname).await?.ok_or_else(|| PlumbError::Netlink {
        what: format!("pod end {}", iface.ifname),
        message: "not found in the pod's namespace".into(),
    })?;
    let idx = link.header.index;
    for (ip, len) in &iface.addresses {
        pod.address()
            .add(idx, *ip, *len)
            .execute()
            .await
            .map_err(nl(format!("adding {ip}/{len} to {}", iface.ifname)))?;
    }
    pod.link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(nl(format!("bringing {} up", iface.ifname)))?;
    if let Some(lo) = index_of(pod, "lo").await? {
        pod.link()
            .set(LinkUnspec::new_with_index(lo.header.index).up().build())
            .execute()
            .await
            .map_err(nl("bringing lo up"))?;
    }
    for gw in &iface.gateways {
        let route = match gw {
            IpAddr::V4(g) => RouteMessageBuilder::<Ipv4Addr>::new().gateway(*g).output_interface(idx).build(),
            IpAddr::V6(g) => RouteMessageBuilder::<Ipv6Addr>::new().gateway(*g).output_interface(idx).build(),
        };
        pod.route().add(route).execute().await.map_err(nl(format!("default route via {gw}")))?;
    }
    for (dst, gw) in &iface.routes {
        pod.route()
            .add(crate::mgmt::route(*dst, *gw, idx))
            .execute()
            .await
            .map_err(nl(format!("route to {dst} via {gw}")))?;
    }
    crate::ethtool::disable_tx_checksum_with(ethtool, &iface.ifname)
        .map_err(|message| PlumbError::Offload { name: iface.ifname.clone(), message })
}

/// Deletes the pair by its host end; an absent interface is success (DEL is idempotent).
pub async fn unplumb(host: &rtnetlink::Handle, host_name: &str) -> Result<bool, PlumbError> {
    let Some(link) = index_of(host, host_name).await? else { return Ok(false) };
    match host.link().del(link.header.index).execute().await {
        Ok(()) => Ok(true),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(false),
        Err(e) => Err(nl(format!("deleting {host_name}"))(e)),
    }
}

/// The addresses on interface `idx` (with prefix lengths).
pub(crate) async fn addresses_on(handle: &rtnetlink::Handle, idx: u32) -> Result<Vec<(IpAddr, u8)>, PlumbError> {
    let mut addresses = Vec::new();
    let mut addrs = handle.address().get().set_link_index_filter(idx).execute();
    while let Some(a) = addrs.try_next().await.map_err(nl("listing addresses"))? {
        for attr in &a.attributes {
            if let rtnetlink::packet_route::address::AddressAttribute::Address(ip) = attr {
                addresses.push((*ip, a.header.prefix_len));
            }
        }
    }
    Ok(addresses)
}

/// The routes through a gateway out of interface `idx`: destination, prefix length, gateway
/// (a default route's destination is the unspecified address).
pub(crate) async fn routes_on(handle: &rtnetlink::Handle, idx: u32) -> Result<Vec<(IpAddr, u8, IpAddr)>, PlumbError> {
    let address = |a: &rtnetlink::packet_route::route::RouteAddress| match a {
        rtnetlink::packet_route::route::RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        rtnetlink::packet_route::route::RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    };
    let mut out = Vec::new();
    for v4 in [true, false] {
        let msg = if v4 {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        };
        let mut routes = handle.route().get(msg).execute();
        while let Some(r) = routes.try_next().await.map_err(nl("listing routes"))? {
            if !r.attributes.iter().any(|a| matches!(a, RouteAttribute::Oif(i) if *i == idx)) {
                continue;
            }
            let unspecified = if v4 { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
            let (mut dst, mut gw) = (unspecified, None);
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(d) => dst = address(d).unwrap_or(dst),
                    RouteAttribute::Gateway(g) => gw = address(g),
                    _ => {}
                }
            }
            if let Some(g) = gw {
                out.push((dst, r.header.destination_prefix_length, g));
            }
        }
    }
    Ok(out)
}

/// What a pod's interface looks like now (for CHECK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub mac: String,
    pub up: bool,
    pub addresses: Vec<(IpAddr, u8)>,
    pub gateways: Vec<IpAddr>,
}

/// Reads `ifname` in the namespace at `netns_path`; `None` if it is not there.
pub async fn observe(netns_path: &Path, ifname: &str) -> Result<Option<Observed>, PlumbError> {
    let pod = netns::netlink_in_async(netns_path).await?;
    let Some(link) = index_of(&pod, ifname).await? else { return Ok(None) };
    let idx = link.header.index;
    let mac = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(b) => Some(mac_string(b)),
            _ => None,
        })
        .unwrap_or_default();
    let up = link.header.flags.contains(rtnetlink::packet_route::link::LinkFlags::Up);
    let addresses = addresses_on(&pod, idx).await?;
    let gateways = routes_on(&pod, idx).await?.into_iter().filter(|(_, len, _)| *len == 0).map(|(_, _, g)| g).collect();
    Ok(Some(Observed { mac, up, addresses, gateways }))
}
