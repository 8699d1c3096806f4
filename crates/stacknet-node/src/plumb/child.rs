//! A pod's secondary interface as a child of the VM's NIC, for nested nodes (the node is an
//! OpenStack VM). Nova's `network_data.json` says which NIC carries a Neutron port
//! ([`crate::netdata::NetworkData::nic_for_port`] → [`Nic`]); [`nic_by_mac`] finds that NIC
//! in the node's namespace, [`child_kind`] says what to hang off it (a VLAN subinterface for a
//! trunk subport, else a macvlan in bridge mode), and [`make_child`] creates it directly in
//! the pod's namespace (so its name never clashes with one on the node) and configures it.
//! [`remove_child`] deletes it again. A child carries the alias [`CHILD_ALIAS`] (so a DEL with
//! no state knows it is ours).

use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage, MacVlanMode};
use rtnetlink::{LinkMacVlan, LinkMessageBuilder, LinkVlan};

use super::sriov::{Step, apply_in_pod, check_iface, set_alias};
use super::{PlumbError, PodInterface, index_of, mac_bytes, mac_string, nl};
use crate::netdata::{Nic, normalize_mac};
use crate::netns;

/// The alias a child made here carries (so DEL, with no state, knows it is ours).
pub const CHILD_ALIAS: &str = "stacknet-child";

/// What to hang off the VM's NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildKind {
    /// A macvlan in bridge mode: the port is the NIC's own network (its own MAC on the wire).
    Macvlan,
    /// A VLAN subinterface with this id: the port is a trunk subport, tagged on the trunk
    /// parent's NIC.
    Vlan(u16),
}

/// The kind of child for a port carried by `nic`: a trunk subport (a VLAN the controller knows
/// from Neutron, `port_vlan`, or one `network_data.json` gives for the port's link) is a VLAN
/// subinterface of the trunk parent's NIC; any other port a macvlan on the NIC that carries it.
/// Neutron's segmentation id wins over the one Nova wrote at boot.
pub fn child_kind(nic: &Nic, port_vlan: Option<u16>) -> ChildKind {
    match port_vlan.or(nic.vlan).filter(|v| *v != 0) {
        Some(vid) => ChildKind::Vlan(vid),
        None => ChildKind::Macvlan,
    }
}

fn kind_of(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

fn name_of(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_else(|| format!("#{}", link.header.index))
}

/// The interface in the node's namespace with MAC `mac` (any case, `:` or `-`). Interfaces
/// stacked on another one share its MAC (VLANs, macvlans, bond and bridge members); when more
/// than one has it, those are passed over for the one under them.
pub async fn nic_by_mac(host: &rtnetlink::Handle, mac: &str) -> Result<String, PlumbError> {
    let want = normalize_mac(mac)
        .ok_or_else(|| PlumbError::Netlink { what: "MAC".into(), message: format!("{mac:?} is not a MAC") })?;
    let mut seen = Vec::new();
    let mut matches = Vec::new();
    let mut links = host.link().get().execute();
    while let Some(link) = links.try_next().await.map_err(nl("listing the node's interfaces"))? {
        let Some(have) = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(b) if b.len() == 6 => Some(mac_string(b)),
            _ => None,
        }) else {
            continue;
        };
        let name = name_of(&link);
        if have == "00:00:00:00:00:00" {
            continue;
        }
        seen.push(format!("{name} {have}"));
        if have == want {
            let stacked = link.attributes.iter().any(|a| matches!(a, LinkAttribute::Controller(_)))
                || matches!(
                    kind_of(&link),
                    Some(InfoKind::Vlan | InfoKind::MacVlan | InfoKind::MacVtap | InfoKind::IpVlan | InfoKind::IpVtap)
                );
            matches.push((name, stacked));
        }
    }
    if matches.len() > 1 {
        let under: Vec<_> = matches.iter().filter(|(_, stacked)| !*stacked).cloned().collect();
        if under.len() == 1 {
            matches = under;
        }
    }
    match matches.as_slice() {
        [] => Err(PlumbError::NoNic { mac: want, seen }),
        [(name, _)] => Ok(name.clone()),
        _ => Err(PlumbError::Netlink {
            what: format!("finding the NIC with MAC {want}"),
            message: format!(
                "several interfaces have it ({}); cannot tell which",
                matches.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
            ),
        }),
    }
}

/// Errno values.
const EEXIST: i32 = -17;
const EOPNOTSUPP: i32 = -95;

/// MAC, MTU and namespace of a child about to be created.
fn finish<T>(b: LinkMessageBuilder<T>, iface: &PodInterface, fd: i32) -> LinkMessage {
    let mut b = b.setns_by_fd(fd);
    if let Some(mac) = mac_bytes(&iface.mac) {
        b = b.address(mac);
    }
    if iface.mtu != 0 {
        b = b.mtu(iface.mtu);
    }
    b.build()
}

/// Creates a `kind` child of `parent` (an interface in the node's namespace, which `host` is
/// a handle in) directly in the pod's namespace as `iface.ifname`, with `iface`'s MAC (if
/// given) and MTU (if not 0), then brings it up and adds its addresses and routes. On failure
/// nothing stays.
pub async fn make_child(
    host: &rtnetlink::Handle,
    parent: &str,
    kind: ChildKind,
    netns_path: &Path,
    iface: &PodInterface,
) -> Result<(), PlumbError> {
    check_iface(iface)?;
    let ifname = &iface.ifname;
    let pod = netns::netlink_in_async(netns_path).await?;
    if index_of(&pod, ifname).await?.is_some() {
        return Err(PlumbError::IfnameTaken { name: ifname.clone() });
    }
    let parent_idx = index_of(host, parent)
        .await?
        .ok_or_else(|| PlumbError::Netlink {
            what: format!("parent NIC {parent}"),
            message: "not found in the node's network namespace".into(),
        })?
        .header
        .index;
    let ns = netns::open(netns_path)?;
    let (msg, what) = match kind {
        ChildKind::Macvlan => (
            finish(LinkMacVlan::new(ifname, parent_idx, MacVlanMode::Bridge), iface, ns.as_raw_fd()),
            format!("creating macvlan {ifname} on {parent} in the pod's namespace"),
        ),
        ChildKind::Vlan(vid) => (
            finish(LinkVlan::new(ifname, parent_idx, vid), iface, ns.as_raw_fd()),
            format!("creating VLAN {vid} on {parent} as {ifname} in the pod's namespace"),
        ),
    };
    match host.link().add(msg).execute().await {
        Ok(()) => {}
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == EEXIST => {
            return Err(PlumbError::IfnameTaken { name: ifname.clone() });
        }
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == EOPNOTSUPP => {
            let which = match kind {
                ChildKind::Macvlan => "macvlan interfaces (the macvlan module is not loaded?)",
                ChildKind::Vlan(_) => "VLAN interfaces (the 8021q module is not loaded?)",
            };
            return Err(PlumbError::Netlink { what, message: format!("this kernel cannot make {which}: {e}") });
        }
        Err(e) => return Err(nl(what)(e)),
    }
    let result = async {
        let idx = index_of(&pod, ifname)
            .await?
            .ok_or_else(|| PlumbError::Netlink {
                what: format!("child {ifname}"),
                message: "not found in the pod's namespace after creating it".into(),
            })?
            .header
            .index;
        set_alias(&pod, idx, CHILD_ALIAS).await.map_err(nl(format!("marking {ifname} as ours")))?;
        let mut steps = vec![Step::Up];
        steps.extend(iface.addresses.iter().map(|(ip, len)| Step::AddAddress(*ip, *len)));
        steps.extend(iface.gateways.iter().map(|g| Step::AddDefaultRoute(*g)));
        steps.extend(iface.routes.iter().map(|(dst, gw)| Step::AddRoute(*dst, *gw)));
        for step in &steps {
            apply_in_pod(&pod, idx, ifname, step).await?;
        }
        Ok(())
    }
    .await;
    if result.is_err()
        && let Err(e) = delete(&pod, ifname).await
    {
        tracing::warn!(error = %e, "removing child {ifname} after a failed configuration");
    }
    result
}

async fn delete(pod: &rtnetlink::Handle, ifname: &str) -> Result<bool, PlumbError> {
    let Some(link) = index_of(pod, ifname).await? else { return Ok(false) };
    match pod.link().del(link.header.index).execute().await {
        Ok(()) => Ok(true),
        // ENODEV: gone meanwhile.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(false),
        Err(e) => Err(nl(format!("deleting {ifname}"))(e)),
    }
}

/// Deletes the child `ifname` from the pod's namespace. Absent, or the namespace gone (a child
/// dies with its namespace), is success (`false`). An interface of that name that is not a
/// macvlan or VLAN interface is not deleted (an error).
pub async fn remove_child(netns_path: &Path, ifname: &str) -> Result<bool, PlumbError> {
    if !netns_path.exists() {
        return Ok(false);
    }
    let pod = match netns::netlink_in_async(netns_path).await {
        Ok(p) => p,
        Err(_) if !netns_path.exists() => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let Some(link) = index_of(&pod, ifname).await? else { return Ok(false) };
    match kind_of(&link) {
        Some(InfoKind::MacVlan | InfoKind::Vlan) => delete(&pod, ifname).await,
        other => Err(PlumbError::Netlink {
            what: format!("removing {ifname}"),
            message: format!(
                "it is not a macvlan or VLAN interface (kind {}); left alone",
                other.map(|k| k.to_string()).unwrap_or_else(|| "none".into())
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(vlan: Option<u16>) -> Nic {
        Nic { mac: "fa:16:3e:00:00:01".into(), vlan, mtu: Some(1450), link_id: "tap1".into() }
    }

    #[test]
    fn a_port_on_the_nics_own_network_is_a_macvlan() {
        assert_eq!(child_kind(&nic(None), None), ChildKind::Macvlan);
    }

    #[test]
    fn a_trunk_subport_is_a_vlan_on_the_parents_nic() {
        // Known from Neutron (a subport added after boot is not in network_data.json).
        assert_eq!(child_kind(&nic(None), Some(200)), ChildKind::Vlan(200));
        // Written by Nova at boot as a VLAN link on the NIC.
        assert_eq!(child_kind(&nic(Some(300)), None), ChildKind::Vlan(300));
        // Neutron's segmentation id wins.
        assert_eq!(child_kind(&nic(Some(300)), Some(200)), ChildKind::Vlan(200));
    }

    #[test]
    fn vlan_zero_is_untagged() {
        assert_eq!(child_kind(&nic(None), Some(0)), ChildKind::Macvlan);
    }
}
