//! SR-IOV: a virtual function's netdev moved into the pod as one of its interfaces.
//!
//! The CNI config names the VF by its PCI address (`deviceID`, e.g. `0000:03:00.2`); sysfs
//! says which netdev it is ([`vf_netdev`]) and which PF it hangs off ([`pf_of`], for its VLAN
//! and MAC, which only the PF can set). [`plan`] (pure) turns that and the wanted
//! [`PodInterface`] into [`Step`]s; [`execute`] carries them out, and on a failure midway puts
//! the device back in the node's namespace under the name it had (nothing half-made).
//!
//! DEL needs no state: before the move the device's alias (`IFLA_IFALIAS`) is set to
//! `stacknet:<original name>`, which travels with it; [`release`] reads it from the pod's
//! interface, renames it back and returns it to the node. A namespace that is already gone
//! needs nothing: when a network namespace dies, the kernel moves the physical netdevs in it
//! (a VF is one) back to the initial namespace, under the name they had in the pod (or `devN`
//! if that is taken) with the alias still on them; [`attach`] reads that alias, so the device's
//! original name is not lost when it is used again.
//!
//! TX checksum offload stays as it is: a VF's traffic does not go through the OVS userspace
//! datapath that [`super::configure`] turns it off for.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage, LinkVfInfo, VfInfo, VfInfoMac, VfInfoVlan};
use rtnetlink::{LinkUnspec, RouteMessageBuilder};
use stacknet_engine::Cidr;

use super::{PlumbError, PodInterface, index_of, mac_bytes, nl};
use crate::netns;

/// Where sysfs is mounted on a node.
pub const SYSFS: &str = "/sys";
/// The alias a device moved into a pod carries: this, then the name it had on the node.
pub const ALIAS_PREFIX: &str = "stacknet:";

/// The original name an alias records (`stacknet:<name>`), if it is one of ours.
pub fn origin(alias: &str) -> Option<&str> {
    alias.strip_prefix(ALIAS_PREFIX).filter(|n| !n.is_empty())
}

fn pci_error(pci: &str, message: impl Into<String>) -> PlumbError {
    PlumbError::PciDevice { pci: pci.into(), message: message.into() }
}

/// `<sysfs>/bus/pci/devices/<pci>`, which must exist.
fn pci_dir(sysfs: &Path, pci: &str) -> Result<PathBuf, PlumbError> {
    if pci.is_empty() || pci.contains('/') || pci == "." || pci == ".." {
        return Err(pci_error(pci, "not a PCI address"));
    }
    let dir = sysfs.join("bus/pci/devices").join(pci);
    match fs::metadata(&dir) {
        Ok(_) => Ok(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(pci_error(pci, format!("not found ({} does not exist)", dir.display())))
        }
        Err(e) => Err(pci_error(pci, format!("{}: {e}", dir.display()))),
    }
}

/// The single entry of `<dir>/net/`: the netdev of the PCI device at `dir`.
fn single_netdev(dir: &Path, pci: &str) -> Result<String, PlumbError> {
    let net = dir.join("net");
    let entries = match fs::read_dir(&net) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(pci_error(
                pci,
                format!(
                    "has no network interface ({} does not exist: bound to a driver without netdevs, \
                     such as vfio-pci?)",
                    net.display()
                ),
            ));
        }
        Err(e) => return Err(pci_error(pci, format!("{}: {e}", net.display()))),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| pci_error(pci, format!("{}: {e}", net.display())))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    match names.as_slice() {
        [] => Err(pci_error(
            pci,
            format!(
                "has no network interface in this network namespace ({} is empty: already in a pod?)",
                net.display()
            ),
        )),
        [one] => Ok(one.clone()),
        _ => Err(pci_error(pci, format!("has several network interfaces ({}); cannot tell which", names.join(", ")))),
    }
}

/// The netdev of PCI device `pci` (a CNI `deviceID`): the single entry of
/// `<sysfs>/bus/pci/devices/<pci>/net/`.
pub fn vf_netdev(sysfs: &Path, pci: &str) -> Result<String, PlumbError> {
    single_netdev(&pci_dir(sysfs, pci)?, pci)
}

/// The PF of virtual function `pci`, as its netdev and the VF's index on it (the `N` of the
/// PF's `virtfnN` link that leads to `pci`). `None`: `pci` has no `physfn`, it is not a VF.
///
/// A VF whose PF cannot be resolved (no netdev, no `virtfnN` for it) is an error rather than
/// `None`, which would read as "not a VF".
pub fn pf_of(sysfs: &Path, pci: &str) -> Result<Option<(String, u32)>, PlumbError> {
    let dir = pci_dir(sysfs, pci)?;
    let physfn = dir.join("physfn");
    match fs::symlink_metadata(&physfn) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(pci_error(pci, format!("{}: {e}", physfn.display()))),
    }
    let pf_dir = fs::canonicalize(&physfn).map_err(|e| pci_error(pci, format!("{}: {e}", physfn.display())))?;
    let pf_pci = pf_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let pf = single_netdev(&pf_dir, &pf_pci)
        .map_err(|e| pci_error(pci, format!("its physical function cannot set its VLAN or MAC: {e}")))?;
    let me = fs::canonicalize(&dir).map_err(|e| pci_error(pci, format!("{}: {e}", dir.display())))?;
    let entries = fs::read_dir(&pf_dir).map_err(|e| pci_error(pci, format!("{}: {e}", pf_dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(|e| pci_error(pci, format!("{}: {e}", pf_dir.display())))?;
        let name = entry.file_name();
        let Some(n) = name.to_str().and_then(|n| n.strip_prefix("virtfn")).and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if fs::canonicalize(entry.path()).is_ok_and(|p| p == me) {
            return Ok(Some((pf, n)));
        }
    }
    Err(pci_error(pci, format!("its physical function {pf_pci} ({pf}) has no virtfnN link to it")))
}

/// The device to move, as sysfs and netlink see it on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The PCI address (CNI `deviceID`).
    pub pci: String,
    /// Its netdev's name on the node now.
    pub netdev: String,
    /// Its PF's netdev and its VF index there; `None`: not a VF (no `physfn`).
    pub pf: Option<(String, u32)>,
    /// Its alias now (a device a dead pod's namespace gave back still says `stacknet:<name>`).
    pub alias: Option<String>,
}

/// One step of moving a device into a pod. The host steps come first (on the node, by the
/// device's or its PF's name), then [`Step::MoveToNetns`], then the steps inside the pod on
/// the device under its new name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The VF's VLAN, through its PF (`ip link set <pf> vf <vf> vlan <vlan>`; 0: untagged).
    SetVfVlan {
        pf: String,
        vf: u32,
        vlan: u16,
    },
    /// The VF's MAC as the PF enforces it (`ip link set <pf> vf <vf> mac <mac>`).
    SetVfMac {
        pf: String,
        vf: u32,
        mac: String,
    },
    /// Records where the device came from, in its alias (`stacknet:<original name>`).
    SetAlias {
        netdev: String,
        alias: String,
    },
    /// Moves `netdev` into the pod's namespace and renames it `ifname` there, in one request
    /// (so neither name has to be free in the other namespace).
    MoveToNetns {
        netdev: String,
        ifname: String,
    },
    SetMac(String),
    SetMtu(u32),
    Up,
    AddAddress(IpAddr, u8),
    /// A default route through this gateway.
    AddDefaultRoute(IpAddr),
    /// A route to a prefix through a gateway.
    AddRoute(Cidr, IpAddr),
}

/// The steps inside the pod on an interface that is there: MAC (if given), MTU (if not 0), up,
/// addresses, default routes, routes.
pub fn pod_steps(iface: &PodInterface) -> Vec<Step> {
    let mut steps = Vec::new();
    if !iface.mac.is_empty() {
        steps.push(Step::SetMac(iface.mac.clone()));
    }
    if iface.mtu != 0 {
        steps.push(Step::SetMtu(iface.mtu));
    }
    steps.push(Step::Up);
    steps.extend(iface.addresses.iter().map(|(ip, len)| Step::AddAddress(*ip, *len)));
    steps.extend(iface.gateways.iter().map(|g| Step::AddDefaultRoute(*g)));
    steps.extend(iface.routes.iter().map(|(dst, gw)| Step::AddRoute(*dst, *gw)));
    steps
}

pub(crate) fn check_iface(iface: &PodInterface) -> Result<(), PlumbError> {
    if iface.ifname.is_empty() || iface.ifname.len() > 15 || iface.ifname.contains(['/', ' ', ':']) {
        return Err(PlumbError::Netlink {
            what: "interface name".into(),
            message: format!("{:?} is not a valid interface name", iface.ifname),
        });
    }
    if !iface.mac.is_empty() && mac_bytes(&iface.mac).is_none() {
        return Err(PlumbError::Netlink { what: "MAC".into(), message: format!("{:?} is not a MAC", iface.mac) });
    }
    Ok(())
}

/// What moving `device` into the pod as `iface` takes. A VF always gets its VLAN set (0 when
/// none is asked for, so one a previous pod left does not stay); a VLAN asked for on a device
/// that is not a VF is an error.
pub fn plan(device: &Device, iface: &PodInterface) -> Result<Vec<Step>, PlumbError> {
    check_iface(iface)?;
    let mut steps = Vec::new();
    if let Some(vlan) = iface.vlan
        && !(1..=4094).contains(&vlan)
    {
        return Err(PlumbError::Netlink {
            what: format!("VLAN for {}", device.netdev),
            message: format!("{vlan} is not a VLAN id (1-4094)"),
        });
    }
    match (&device.pf, iface.vlan) {
        (Some((pf, vf)), vlan) => {
            steps.push(Step::SetVfVlan { pf: pf.clone(), vf: *vf, vlan: vlan.unwrap_or(0) });
            if !iface.mac.is_empty() {
                steps.push(Step::SetVfMac { pf: pf.clone(), vf: *vf, mac: iface.mac.clone() });
            }
        }
        (None, Some(vlan)) => {
            return Err(PlumbError::NotAVirtualFunction { vlan, netdev: device.netdev.clone() });
        }
        (None, None) => {}
    }
    let original = device.alias.as_deref().and_then(origin).unwrap_or(&device.netdev);
    steps.push(Step::SetAlias { netdev: device.netdev.clone(), alias: format!("{ALIAS_PREFIX}{original}") });
    steps.push(Step::MoveToNetns { netdev: device.netdev.clone(), ifname: iface.ifname.clone() });
    steps.extend(pod_steps(iface));
    Ok(steps)
}

/// The node's network namespace: a netlink handle in it, and its namespace file (devices are
/// moved back into it by file descriptor).
pub struct HostNs {
    pub handle: rtnetlink::Handle,
    pub path: PathBuf,
}

impl HostNs {
    /// The namespace at `path` (call within a tokio runtime).
    pub async fn open(path: &Path) -> Result<HostNs, PlumbError> {
        Ok(HostNs { handle: netns::netlink_in_async(path).await?, path: path.into() })
    }

    /// The agent's own namespace.
    pub async fn own() -> Result<HostNs, PlumbError> {
        HostNs::open(Path::new("/proc/self/ns/net")).await
    }
}

pub(crate) fn alias_of(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    })
}

/// Moves `pci`'s netdev into the pod's namespace as `iface` (see the module's doc): reads
/// sysfs under `sysfs` ([`SYSFS`] on a node), plans, and [`execute`]s.
pub async fn attach(
    host: &HostNs,
    sysfs: &Path,
    pci: &str,
    netns_path: &Path,
    iface: &PodInterface,
) -> Result<(), PlumbError> {
    let netdev = vf_netdev(sysfs, pci)?;
    let pf = pf_of(sysfs, pci)?;
    let link = index_of(&host.handle, &netdev)
        .await?
        .ok_or_else(|| pci_error(pci, format!("its interface {netdev} is not in the node's network namespace")))?;
    let device = Device { pci: pci.into(), netdev, pf, alias: alias_of(&link) };
    let steps = plan(&device, iface)?;
    let pod = netns::netlink_in_async(netns_path).await?;
    if index_of(&pod, &iface.ifname).await?.is_some() {
        return Err(PlumbError::IfnameTaken { name: iface.ifname.clone() });
    }
    execute(host, netns_path, &steps).await
}

/// What has been done so far, to undo it.
#[derive(Default)]
struct Done {
    /// A VF VLAN set (PF, VF), reset to 0 on undo.
    vf_vlan: Option<(String, u32)>,
    /// The device's name on the node and the alias it had before ours.
    aliased: Option<(String, Option<String>)>,
    /// The alias we set.
    alias: Option<String>,
    /// The move was asked for: the device's name on the node, its name in the pod. (The
    /// kernel can move a device and then fail to rename it: it may be in the pod under either.)
    moved: Option<(String, String)>,
}

/// Carries out `steps` (from [`plan`]); if one fails, what was done is undone (the device goes
/// back to the node under the name it had, its alias as it was, a VLAN set is cleared) and the
/// step's error returned.
pub async fn execute(host: &HostNs, netns_path: &Path, steps: &[Step]) -> Result<(), PlumbError> {
    let pod = netns::netlink_in_async(netns_path).await?;
    let mut done = Done::default();
    let Err(e) = run(host, &pod, netns_path, steps, &mut done).await else { return Ok(()) };
    match undo(host, &pod, &done).await {
        Ok(()) => Err(e),
        Err(u) => {
            tracing::warn!(error = %e, undo = %u, "undoing a failed SR-IOV attach failed");
            Err(PlumbError::Netlink { what: e.to_string(), message: format!("and undoing it failed: {u}") })
        }
    }
}

async fn run(
    host: &HostNs,
    pod: &rtnetlink::Handle,
    netns_path: &Path,
    steps: &[Step],
    done: &mut Done,
) -> Result<(), PlumbError> {
    // The device in the pod: index and name, once moved.
    let mut inside: Option<(u32, String)> = None;
    for step in steps {
        match step {
            Step::SetVfVlan { pf, vf, vlan } => {
                set_vf(&host.handle, pf, VfInfo::Vlan(VfInfoVlan::new(*vf, u32::from(*vlan), 0))).await.map_err(
                    |m| PlumbError::Netlink { what: format!("setting VF {vf} of {pf} to VLAN {vlan}"), message: m },
                )?;
                if *vlan != 0 {
                    done.vf_vlan = Some((pf.clone(), *vf));
                }
            }
            Step::SetVfMac { pf, vf, mac } => {
                let bytes = mac_bytes(mac).ok_or_else(|| PlumbError::Netlink {
                    what: "MAC".into(),
                    message: format!("{mac:?} is not a MAC"),
                })?;
                set_vf(&host.handle, pf, VfInfo::Mac(VfInfoMac::new(*vf, &bytes))).await.map_err(|m| {
                    PlumbError::Netlink { what: format!("setting VF {vf} of {pf}'s MAC to {mac}"), message: m }
                })?;
            }
            Step::SetAlias { netdev, alias } => {
                let link = on_node(&host.handle, netdev).await?;
                let before = alias_of(&link);
                set_alias(&host.handle, link.header.index, alias)
                    .await
                    .map_err(nl(format!("setting {netdev}'s alias")))?;
                done.aliased = Some((netdev.clone(), before));
                done.alias = Some(alias.clone());
            }
            Step::MoveToNetns { netdev, ifname } => {
                let link = on_node(&host.handle, netdev).await?;
                let ns = netns::open(netns_path)?;
                done.moved = Some((netdev.clone(), ifname.clone()));
                let msg = LinkUnspec::new_with_index(link.header.index)
                    .name(ifname.clone())
                    .setns_by_fd(ns.as_raw_fd())
                    .build();
                match host.handle.link().set(msg).execute().await {
                    Ok(()) => {}
                    // EEXIST: `ifname` is taken in the pod (the kernel may have moved it anyway).
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -17 => {
                        return Err(PlumbError::IfnameTaken { name: ifname.clone() });
                    }
                    Err(e) => return Err(nl(format!("moving {netdev} into the pod's namespace as {ifname}"))(e)),
                }
                let moved = index_of(pod, ifname).await?.ok_or_else(|| PlumbError::Netlink {
                    what: format!("moving {netdev} into the pod's namespace as {ifname}"),
                    message: "not found there afterwards".into(),
                })?;
                inside = Some((moved.header.index, ifname.clone()));
            }
            step => {
                let Some((idx, ifname)) = &inside else {
                    return Err(PlumbError::Netlink {
                        what: format!("{step:?}"),
                        message: "a step inside the pod before the device is moved there".into(),
                    });
                };
                apply_in_pod(pod, *idx, ifname, step).await?;
            }
        }
    }
    Ok(())
}

/// `name` on the node, which must be there.
async fn on_node(host: &rtnetlink::Handle, name: &str) -> Result<LinkMessage, PlumbError> {
    index_of(host, name).await?.ok_or_else(|| PlumbError::Netlink {
        what: format!("interface {name}"),
        message: "not found in the node's network namespace".into(),
    })
}

pub(crate) async fn set_alias(handle: &rtnetlink::Handle, idx: u32, alias: &str) -> Result<(), rtnetlink::Error> {
    handle.link().set(LinkUnspec::new_with_index(idx).alias(alias).build()).execute().await
}

/// `ip link set <pf> vf …`.
async fn set_vf(host: &rtnetlink::Handle, pf: &str, info: VfInfo) -> Result<(), String> {
    let link =
        index_of(host, pf).await.map_err(|e| e.to_string())?.ok_or("the PF is not in the node's network namespace")?;
    host.link().set(vf_message(link.header.index, info)).execute().await.map_err(|e| e.to_string())
}

/// The request that sets one VF attribute through PF `pf_idx`.
pub(crate) fn vf_message(pf_idx: u32, info: VfInfo) -> LinkMessage {
    LinkUnspec::new_with_index(pf_idx)
        .append_extra_attribute(LinkAttribute::VfInfoList(vec![LinkVfInfo(vec![info])]))
        .build()
}

/// One step inside the pod on interface `idx` (named `ifname`, for messages).
pub(crate) async fn apply_in_pod(
    pod: &rtnetlink::Handle,
    idx: u32,
    ifname: &str,
    step: &Step,
) -> Result<(), PlumbError> {
    match step {
        Step::SetMac(mac) => {
            let bytes = mac_bytes(mac)
                .ok_or_else(|| PlumbError::Netlink { what: "MAC".into(), message: format!("{mac:?} is not a MAC") })?;
            pod.link()
                .set(LinkUnspec::new_with_index(idx).address(bytes).build())
                .execute()
                .await
                .map_err(nl(format!("setting {ifname}'s MAC to {mac}")))
        }
        Step::SetMtu(mtu) => pod
            .link()
            .set(LinkUnspec::new_with_index(idx).mtu(*mtu).build())
            .execute()
            .await
            .map_err(nl(format!("setting {ifname}'s MTU to {mtu}"))),
        Step::Up => pod
            .link()
            .set(LinkUnspec::new_with_index(idx).up().build())
            .execute()
            .await
            .map_err(nl(format!("bringing {ifname} up"))),
        Step::AddAddress(ip, len) => {
            pod.address().add(idx, *ip, *len).execute().await.map_err(nl(format!("adding {ip}/{len} to {ifname}")))
        }
        Step::AddDefaultRoute(gw) => {
            let route = match gw {
                IpAddr::V4(g) => RouteMessageBuilder::<Ipv4Addr>::new().gateway(*g).output_interface(idx).build(),
                IpAddr::V6(g) => RouteMessageBuilder::<Ipv6Addr>::new().gateway(*g).output_interface(idx).build(),
            };
            pod.route().add(route).execute().await.map_err(nl(format!("default route via {gw} dev {ifname}")))
        }
        Step::AddRoute(dst, gw) => pod
            .route()
            .add(crate::mgmt::route(*dst, *gw, idx))
            .execute()
            .await
            .map_err(nl(format!("route to {dst} via {gw} dev {ifname}"))),
        Step::SetVfVlan { .. } | Step::SetVfMac { .. } | Step::SetAlias { .. } | Step::MoveToNetns { .. } => {
            Err(PlumbError::Netlink { what: format!("{step:?}"), message: "not a step inside the pod".into() })
        }
    }
}

/// Removes every address from interface `idx`.
pub(crate) async fn flush_addresses(handle: &rtnetlink::Handle, idx: u32, ifname: &str) -> Result<(), PlumbError> {
    let mut found = Vec::new();
    let mut addrs = handle.address().get().set_link_index_filter(idx).execute();
    while let Some(a) = addrs.try_next().await.map_err(nl(format!("listing {ifname}'s addresses")))? {
        if a.header.index == idx {
            found.push(a);
        }
    }
    for a in found {
        match handle.address().del(a).execute().await {
            Ok(()) => {}
            // EADDRNOTAVAIL: gone meanwhile (an IPv6 address with the link down).
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -99 => {}
            Err(e) => return Err(nl(format!("removing an address from {ifname}"))(e)),
        }
    }
    Ok(())
}

/// Flushes interface `idx` (`ifname` in the pod), sets it down, and moves it to the node's
/// namespace renamed `name` (one request, as on the way in).
async fn return_to_node(
    pod: &rtnetlink::Handle,
    host: &HostNs,
    idx: u32,
    ifname: &str,
    name: &str,
) -> Result<(), PlumbError> {
    flush_addresses(pod, idx, ifname).await?;
    pod.link()
        .set(LinkUnspec::new_with_index(idx).down().build())
        .execute()
        .await
        .map_err(nl(format!("setting {ifname} down")))?;
    let ns = netns::open(&host.path)?;
    pod.link()
        .set(LinkUnspec::new_with_index(idx).name(name.to_string()).setns_by_fd(ns.as_raw_fd()).build())
        .execute()
        .await
        .map_err(nl(format!("returning {ifname} to the node's namespace as {name}")))
}

async fn undo(host: &HostNs, pod: &rtnetlink::Handle, done: &Done) -> Result<(), PlumbError> {
    if let Some((node_name, pod_name)) = &done.moved {
        for name in [pod_name, node_name] {
            let Some(link) = index_of(pod, name).await? else { continue };
            if alias_of(&link) != done.alias {
                continue;
            }
            return_to_node(pod, host, link.header.index, name, node_name).await?;
            break;
        }
    }
    if let Some((name, before)) = &done.aliased {
        let link = on_node(&host.handle, name).await?;
        set_alias(&host.handle, link.header.index, before.as_deref().unwrap_or(""))
            .await
            .map_err(nl(format!("restoring {name}'s alias")))?;
    }
    if let Some((pf, vf)) = &done.vf_vlan {
        set_vf(&host.handle, pf, VfInfo::Vlan(VfInfoVlan::new(*vf, 0, 0)))
            .await
            .map_err(|m| PlumbError::Netlink { what: format!("clearing VF {vf} of {pf}'s VLAN"), message: m })?;
    }
    Ok(())
}

/// What [`release`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    /// Returned to the node under this, its original name.
    Returned(String),
    /// No such interface in the pod's namespace (released already).
    Absent,
    /// The namespace is gone: the kernel gave a physical device in it back to the initial
    /// namespace when it died.
    NamespaceGone,
    /// The interface is not one this module moved (its alias, if any, is not `stacknet:…`);
    /// it is left alone.
    NotOurs { alias: Option<String> },
}

/// DEL: returns the device moved in as `ifname` to the node's namespace, under the original
/// name its alias records; flushes its addresses, sets it down, clears the alias. Idempotent:
/// an absent interface or a namespace that is gone is success.
pub async fn release(host: &HostNs, netns_path: &Path, ifname: &str) -> Result<Released, PlumbError> {
    if !netns_path.exists() {
        return Ok(Released::NamespaceGone);
    }
    let pod = match netns::netlink_in_async(netns_path).await {
        Ok(p) => p,
        Err(_) if !netns_path.exists() => return Ok(Released::NamespaceGone),
        Err(e) => return Err(e.into()),
    };
    let Some(link) = index_of(&pod, ifname).await? else { return Ok(Released::Absent) };
    let alias = alias_of(&link);
    let Some(original) = alias.as_deref().and_then(origin).map(str::to_string) else {
        return Ok(Released::NotOurs { alias });
    };
    return_to_node(&pod, host, link.header.index, ifname, &original).await?;
    let back = on_node(&host.handle, &original).await?;
    set_alias(&host.handle, back.header.index, "").await.map_err(nl(format!("clearing {original}'s alias")))?;
    Ok(Released::Returned(original))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface() -> PodInterface {
        PodInterface {
            host: String::new(),
            ifname: "net1".into(),
            mac: "0a:58:0a:01:00:05".into(),
            addresses: vec![("10.1.0.5".parse().unwrap(), 24), ("fd00:1::5".parse().unwrap(), 64)],
            gateways: vec!["10.1.0.1".parse().unwrap()],
            routes: vec![("192.168.0.0/16".parse().unwrap(), "10.1.0.254".parse().unwrap())],
            mtu: 9000,
            vlan: None,
        }
    }

    fn vf() -> Device {
        Device {
            pci: "0000:03:00.2".into(),
            netdev: "enp3s0f0v2".into(),
            pf: Some(("enp3s0f0".into(), 2)),
            alias: None,
        }
    }

    fn in_pod() -> Vec<Step> {
        vec![
            Step::SetMac("0a:58:0a:01:00:05".into()),
            Step::SetMtu(9000),
            Step::Up,
            Step::AddAddress("10.1.0.5".parse().unwrap(), 24),
            Step::AddAddress("fd00:1::5".parse().unwrap(), 64),
            Step::AddDefaultRoute("10.1.0.1".parse().unwrap()),
            Step::AddRoute("192.168.0.0/16".parse().unwrap(), "10.1.0.254".parse().unwrap()),
        ]
    }

    #[test]
    fn a_vf_with_a_vlan_gets_it_and_its_mac_through_the_pf_first() {
        let mut i = iface();
        i.vlan = Some(200);
        let mut want = vec![
            Step::SetVfVlan { pf: "enp3s0f0".into(), vf: 2, vlan: 200 },
            Step::SetVfMac { pf: "enp3s0f0".into(), vf: 2, mac: "0a:58:0a:01:00:05".into() },
            Step::SetAlias { netdev: "enp3s0f0v2".into(), alias: "stacknet:enp3s0f0v2".into() },
            Step::MoveToNetns { netdev: "enp3s0f0v2".into(), ifname: "net1".into() },
        ];
        want.extend(in_pod());
        assert_eq!(plan(&vf(), &i).unwrap(), want);
    }

    #[test]
    fn a_vf_without_a_vlan_is_set_untagged_so_a_previous_pods_vlan_does_not_stay() {
        let steps = plan(&vf(), &iface()).unwrap();
        assert_eq!(steps[0], Step::SetVfVlan { pf: "enp3s0f0".into(), vf: 2, vlan: 0 });
    }

    #[test]
    fn a_device_that_is_not_a_vf_is_moved_without_pf_steps() {
        let d = Device { pci: "0000:00:05.0".into(), netdev: "dummy0".into(), pf: None, alias: None };
        let mut want = vec![
            Step::SetAlias { netdev: "dummy0".into(), alias: "stacknet:dummy0".into() },
            Step::MoveToNetns { netdev: "dummy0".into(), ifname: "net1".into() },
        ];
        want.extend(in_pod());
        assert_eq!(plan(&d, &iface()).unwrap(), want);
    }

    #[test]
    fn a_vlan_on_a_device_that_is_not_a_vf_is_an_error_naming_it() {
        let d = Device { pci: "0000:00:05.0".into(), netdev: "dummy0".into(), pf: None, alias: None };
        let mut i = iface();
        i.vlan = Some(200);
        let e = plan(&d, &i).unwrap_err();
        assert_eq!(e.to_string(), "cannot set VLAN 200: dummy0 is not a virtual function (no physfn)");
    }

    #[test]
    fn no_mac_and_no_mtu_leave_the_devices_own() {
        let mut i = iface();
        i.mac = String::new();
        i.mtu = 0;
        let steps = plan(&vf(), &i).unwrap();
        assert!(!steps.iter().any(|s| matches!(s, Step::SetMac(_) | Step::SetMtu(_) | Step::SetVfMac { .. })));
        assert!(steps.contains(&Step::Up));
    }

    #[test]
    fn a_device_a_dead_pod_gave_back_keeps_its_original_name() {
        // Back from a dead namespace under the pod's name, the alias still on it.
        let d = Device { netdev: "net1".into(), alias: Some("stacknet:enp3s0f0v2".into()), ..vf() };
        let steps = plan(&d, &iface()).unwrap();
        assert!(steps.contains(&Step::SetAlias { netdev: "net1".into(), alias: "stacknet:enp3s0f0v2".into() }));
        // Someone else's alias is not an origin.
        let d = Device { alias: Some("uplink to rack 3".into()), ..vf() };
        let steps = plan(&d, &iface()).unwrap();
        assert!(steps.contains(&Step::SetAlias { netdev: "enp3s0f0v2".into(), alias: "stacknet:enp3s0f0v2".into() }));
    }

    #[test]
    fn bad_input_is_refused_before_any_step() {
        let mut i = iface();
        i.mac = "not-a-mac".into();
        assert!(plan(&vf(), &i).unwrap_err().to_string().contains("not-a-mac"));
        let mut i = iface();
        i.ifname = "a-name-far-too-long".into();
        assert!(plan(&vf(), &i).unwrap_err().to_string().contains("a-name-far-too-long"));
        let mut i = iface();
        i.vlan = Some(4095);
        assert!(plan(&vf(), &i).unwrap_err().to_string().contains("4095"));
    }

    #[test]
    fn origins() {
        assert_eq!(origin("stacknet:eth3"), Some("eth3"));
        assert_eq!(origin("stacknet:"), None);
        assert_eq!(origin("eth3"), None);
    }

    #[test]
    fn the_vf_request_carries_the_vf_and_its_vlan() {
        let m = vf_message(7, VfInfo::Vlan(VfInfoVlan::new(2, 200, 0)));
        assert_eq!(m.header.index, 7);
        let [LinkAttribute::VfInfoList(list)] = m.attributes.as_slice() else { panic!("{m:?}") };
        assert_eq!(list, &vec![LinkVfInfo(vec![VfInfo::Vlan(VfInfoVlan::new(2, 200, 0))])]);
    }

    /// A sysfs tree shaped like the kernel's: `bus/pci/devices/<pci>` are links into
    /// `devices/pci0000:00/…`, a VF's `physfn` and its PF's `virtfnN` link to each other.
    struct FakeSysfs {
        dir: tempfile::TempDir,
    }

    impl FakeSysfs {
        fn new() -> FakeSysfs {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir_all(dir.path().join("bus/pci/devices")).unwrap();
            fs::create_dir_all(dir.path().join("devices/pci0000:00/0000:00:03.0")).unwrap();
            FakeSysfs { dir }
        }

        fn root(&self) -> &Path {
            self.dir.path()
        }

        fn device(&self, pci: &str, netdevs: &[&str]) -> PathBuf {
            let real = self.root().join("devices/pci0000:00/0000:00:03.0").join(pci);
            fs::create_dir_all(&real).unwrap();
            for n in netdevs {
                fs::create_dir_all(real.join("net").join(n)).unwrap();
            }
            std::os::unix::fs::symlink(
                format!("../../../devices/pci0000:00/0000:00:03.0/{pci}"),
                self.root().join("bus/pci/devices").join(pci),
            )
            .unwrap();
            real
        }

        fn vf(&self, pf: &str, n: u32, vf: &str) {
            let base = self.root().join("devices/pci0000:00/0000:00:03.0");
            std::os::unix::fs::symlink(format!("../{pf}"), base.join(vf).join("physfn")).unwrap();
            std::os::unix::fs::symlink(format!("../{vf}"), base.join(pf).join(format!("virtfn{n}"))).unwrap();
        }
    }

    #[test]
    fn sysfs_names_the_vfs_netdev_and_its_pf() {
        let s = FakeSysfs::new();
        s.device("0000:03:00.0", &["enp3s0f0"]);
        s.device("0000:03:00.1", &["enp3s0f0v0"]);
        s.device("0000:03:00.2", &["enp3s0f0v1"]);
        s.vf("0000:03:00.0", 0, "0000:03:00.1");
        s.vf("0000:03:00.0", 1, "0000:03:00.2");
        assert_eq!(vf_netdev(s.root(), "0000:03:00.2").unwrap(), "enp3s0f0v1");
        assert_eq!(pf_of(s.root(), "0000:03:00.2").unwrap(), Some(("enp3s0f0".into(), 1)));
        assert_eq!(pf_of(s.root(), "0000:03:00.1").unwrap(), Some(("enp3s0f0".into(), 0)));
        // The PF itself has no physfn: not a VF.
        assert_eq!(pf_of(s.root(), "0000:03:00.0").unwrap(), None);
    }

    #[test]
    fn sysfs_errors_name_the_pci_address() {
        let s = FakeSysfs::new();
        s.device("0000:03:00.4", &[]);
        s.device("0000:03:00.5", &["eth1", "eth2"]);
        let real = s.device("0000:03:00.6", &[]);
        fs::create_dir_all(real.join("net")).unwrap();
        let e = vf_netdev(s.root(), "0000:09:00.1").unwrap_err().to_string();
        assert!(e.contains("0000:09:00.1") && e.contains("not found"), "{e}");
        let e = vf_netdev(s.root(), "0000:03:00.4").unwrap_err().to_string();
        assert!(e.contains("0000:03:00.4") && e.contains("no network interface"), "{e}");
        let e = vf_netdev(s.root(), "0000:03:00.5").unwrap_err().to_string();
        assert!(e.contains("0000:03:00.5") && e.contains("eth1, eth2"), "{e}");
        let e = vf_netdev(s.root(), "0000:03:00.6").unwrap_err().to_string();
        assert!(e.contains("0000:03:00.6") && e.contains("empty"), "{e}");
        let e = vf_netdev(s.root(), "../../etc").unwrap_err().to_string();
        assert!(e.contains("not a PCI address"), "{e}");
    }

    #[test]
    fn a_vf_whose_pf_cannot_be_resolved_is_an_error_not_a_non_vf() {
        let s = FakeSysfs::new();
        s.device("0000:03:00.0", &[]);
        s.device("0000:03:00.1", &["enp3s0f0v0"]);
        s.vf("0000:03:00.0", 0, "0000:03:00.1");
        let e = pf_of(s.root(), "0000:03:00.1").unwrap_err().to_string();
        assert!(e.contains("0000:03:00.1") && e.contains("physical function"), "{e}");
        // A PF that does not list the VF.
        let s = FakeSysfs::new();
        s.device("0000:03:00.0", &["enp3s0f0"]);
        s.device("0000:03:00.1", &["enp3s0f0v0"]);
        std::os::unix::fs::symlink(
            "../0000:03:00.0",
            s.root().join("devices/pci0000:00/0000:00:03.0/0000:03:00.1/physfn"),
        )
        .unwrap();
        let e = pf_of(s.root(), "0000:03:00.1").unwrap_err().to_string();
        assert!(e.contains("no virtfnN"), "{e}");
    }
}
