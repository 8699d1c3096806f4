//! OpenStack mode on the node: the pod's ports are Neutron's, and what the agent plumbs comes
//! from the pod's `stacknet.io/network` annotation ([`PodPorts`], written by the controller),
//! read through the Kubernetes API ([`PodApi`]) — a node that is a Nova VM reaches neither
//! Neutron nor OVN's databases.
//!
//! - The pod's port on the pod network: on a bare node a veth bound to OVS as the Neutron port
//!   (`iface-id` = the port id, which is ML2/OVN's logical port name); on a nested node (the
//!   port is a trunk subport) a VLAN child of the VM's NIC that carries the trunk's parent.
//! - A secondary interface's port: a child of the VM NIC that Nova's `network_data.json` puts
//!   on the port's network (a macvlan), or for a trunk subport a VLAN child of the parent's NIC;
//!   a network the VM has no NIC for is an error and an Event on the pod, never a guess.
//! - SR-IOV (`vnicType: direct`): the virtual function the kubelet gave the pod (the CNI
//!   `deviceID`) is moved in ([`crate::plumb::sriov`]), and the agent records it in the pod's
//!   `stacknet.io/sriov-devices` annotation, from which the controller binds the port.
//!
//! Every interface is marked as ours (a veth's host end by name, a child by its alias, a
//! virtual function by its `stacknet:<name>` alias), so DEL needs no state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo};
use stacknet_engine::multinet::ports::{self, AttachedInterface, PodPorts};
use stacknet_engine::objects::ObjectKey;

use crate::configdrive::{self, Source};
use crate::netdata::NetworkData;
use crate::plumb::child::{self, CHILD_ALIAS, ChildKind};
use crate::plumb::sriov::{self, HostNs};
use crate::plumb::{Fut, PlumbError, PodInterface, index_of, nl};
use crate::protocol::{CniError, codes};

/// A pod as the agent needs to see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodView {
    pub uid: String,
    /// `stacknet.io/network`.
    pub network: Option<String>,
    /// Whether its `k8s.v1.cni.cncf.io/networks` annotation selects any network.
    pub selects_networks: bool,
    /// `stacknet.io/sriov-devices`.
    pub sriov_devices: Option<String>,
}

/// The Kubernetes API as the agent uses it (the `stacknet agent` binary implements it with the
/// API server; tests with what they hold).
pub trait PodApi: Send + Sync {
    /// The pod, `None` if it does not exist.
    fn pod<'a>(&'a self, key: &'a ObjectKey) -> Fut<'a, Result<Option<PodView>, String>>;
    /// Sets one annotation of the pod (a merge patch).
    fn annotate<'a>(&'a self, key: &'a ObjectKey, name: &'a str, value: &'a str) -> Fut<'a, Result<(), String>>;
    /// A Warning Event on the pod.
    fn warn<'a>(&'a self, key: &'a ObjectKey, reason: &'a str, message: &'a str) -> Fut<'a, Result<(), String>>;
}

/// The node's OpenStack settings.
#[derive(Debug, Clone)]
pub struct OpenStackNode {
    /// Where `network_data.json` is (`None`: the config drive labelled `config-2` if there is
    /// one, else the metadata service).
    pub network_data: Option<Source>,
    /// Where sysfs is (SR-IOV devices by PCI address).
    pub sysfs: PathBuf,
}

impl Default for OpenStackNode {
    fn default() -> Self {
        OpenStackNode { network_data: None, sysfs: PathBuf::from(sriov::SYSFS) }
    }
}

impl OpenStackNode {
    /// The source `network_data.json` is read from.
    pub fn source(&self) -> Source {
        self.network_data.clone().unwrap_or_else(|| match configdrive::find_config_drive() {
            Some(path) => Source::ConfigDrive(path),
            None => Source::MetadataUrl(configdrive::DEFAULT_METADATA_URL.into()),
        })
    }

    /// Reads `network_data.json` (off the runtime's threads: a device or the network).
    pub async fn network_data(&self) -> Result<NetworkData, String> {
        let source = self.source();
        let shown = match &source {
            Source::ConfigDrive(p) => format!("config drive {}", p.display()),
            Source::MetadataUrl(u) => format!("metadata service {u}"),
        };
        tokio::task::spawn_blocking(move || configdrive::read_network_data(&source))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("network_data.json from the {shown}: {e}"))
    }
}

/// Waits (until `deadline`) for pod `key` to carry its ports: the annotation there, the pod the
/// one the runtime starts (`uid`, when given), and, when `secondary`, its secondary ports all
/// made or refused.
pub async fn wait_ports(
    api: &dyn PodApi,
    key: &ObjectKey,
    uid: Option<&str>,
    secondary: bool,
    deadline: Instant,
) -> Result<(PodView, PodPorts), CniError> {
    let mut pause = Duration::from_millis(20);
    let mut last;
    loop {
        match api.pod(key).await {
            Err(e) => last = format!("the Kubernetes API: {e}"),
            Ok(None) => last = "the pod does not exist".into(),
            Ok(Some(view)) if uid.is_some_and(|u| !u.is_empty() && u != view.uid) => {
                last = format!("the pod has UID {}, CNI_ARGS says {} (recreated?)", view.uid, uid.unwrap_or_default())
            }
            Ok(Some(view)) => match view.network.as_deref().map(ports::parse) {
                None => last = "the controller has not written its stacknet.io/network annotation".into(),
                Some(Err(e)) => {
                    return Err(CniError::new(
                        codes::INVALID_CONFIG,
                        "bad pod network annotation",
                        format!("pod {key}: {e}"),
                    ));
                }
                Some(Ok(p)) if secondary && view.selects_networks && p.attachments_pending => {
                    last = "the controller has not made all of its secondary ports".into()
                }
                Some(Ok(p)) => return Ok((view, p)),
            },
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(CniError::new(
                codes::TRY_AGAIN_LATER,
                "the pod's Neutron ports are not known yet",
                format!("pod {key}: {last}"),
            ));
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// The CNI error (and the Event's message) for an interface of the pod that cannot be made.
pub fn attachment_error(a: &AttachedInterface, what: impl std::fmt::Display) -> CniError {
    CniError::new(
        codes::INVALID_CONFIG,
        "a secondary interface cannot be attached",
        format!(
            "interface {} (NetworkAttachmentDefinition {}, Neutron port {} on network {}): {what}",
            a.interface, a.network, a.port_id, a.network_id
        ),
    )
}

/// Where a child interface goes: the VM NIC (by MAC, as `network_data.json` says) and the kind.
pub fn child_place(
    data: &NetworkData,
    network_id: &str,
    vlan: Option<u16>,
    parent_port: Option<&str>,
) -> Result<(String, ChildKind, Option<u32>), String> {
    // A trunk subport rides on the parent's NIC; any other port on the NIC of its network.
    let nic = match (vlan, parent_port) {
        (Some(_), Some(parent)) => data.nic_for_port(parent),
        _ => data.nic_for_network(network_id),
    }
    .map_err(|e| format!("network_data.json: {e}"))?;
    let kind = child::child_kind(&nic, vlan);
    Ok((nic.mac, kind, nic.mtu))
}

/// One PCI device's `vendor:device` from sysfs (`8086:154c`).
pub fn vendor_info(sysfs: &Path, pci: &str) -> Result<String, String> {
    let read = |f: &str| -> Result<String, String> {
        let path = sysfs.join("bus/pci/devices").join(pci).join(f);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let t = text.trim().trim_start_matches("0x").to_ascii_lowercase();
        if t.len() == 4 && t.chars().all(|c| c.is_ascii_hexdigit()) {
            Ok(t)
        } else {
            Err(format!("{}: {:?} is not a 16-bit hex id", path.display(), text.trim()))
        }
    };
    Ok(format!("{}:{}", read("vendor")?, read("device")?))
}

/// The `stacknet.io/sriov-devices` value with `interface`'s device set (the others kept).
pub fn with_device(current: Option<&str>, interface: &str, pci: &str, vendor: &str, physnet: &str) -> String {
    let mut all: BTreeMap<String, serde_json::Value> =
        current.and_then(|c| serde_json::from_str(c).ok()).unwrap_or_default();
    all.insert(
        interface.to_string(),
        serde_json::json!({"pciSlot": pci, "vendorInfo": vendor, "physicalNetwork": physnet}),
    );
    serde_json::to_string(&all).unwrap_or_default()
}

/// What of ours is in a pod's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ours {
    /// A child of the VM's NIC.
    Child,
    /// A device moved in (SR-IOV).
    Device,
}

/// The interfaces of ours in the pod's namespace (none when it is gone).
pub async fn ours_in(netns_path: &Path) -> Result<Vec<(String, Ours)>, PlumbError> {
    if !netns_path.exists() {
        return Ok(Vec::new());
    }
    let pod = crate::netns::netlink_in_async(netns_path).await?;
    let mut out = Vec::new();
    let mut links = pod.link().get().execute();
    while let Some(link) = links.try_next().await.map_err(nl("listing the pod's interfaces"))? {
        let name = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        });
        let Some(name) = name else { continue };
        let alias = sriov::alias_of(&link);
        let child_kind = link.attributes.iter().any(|a| {
            matches!(a, LinkAttribute::LinkInfo(i) if i.iter().any(|k| matches!(k, LinkInfo::Kind(InfoKind::MacVlan | InfoKind::Vlan))))
        });
        match alias.as_deref() {
            Some(CHILD_ALIAS) if child_kind => out.push((name, Ours::Child)),
            Some(a) if sriov::origin(a).is_some() => out.push((name, Ours::Device)),
            _ => {}
        }
    }
    Ok(out)
}

/// Removes `ifname` from the pod if it is ours: a child is deleted, a device returned.
pub async fn remove(host: Option<&HostNs>, netns_path: &Path, ifname: &str) -> Result<(), PlumbError> {
    let ours = ours_in(netns_path).await?;
    match ours.iter().find(|(n, _)| n == ifname).map(|(_, o)| o) {
        Some(Ours::Child) => child::remove_child(netns_path, ifname).await.map(drop),
        Some(Ours::Device) => match host {
            Some(h) => sriov::release(h, netns_path, ifname).await.map(drop),
            None => Err(PlumbError::Netlink {
                what: format!("returning {ifname} to the node"),
                message: "the agent has no handle in the node's namespace".into(),
            }),
        },
        None => Ok(()),
    }
}

/// Whether `ifname` is there in the pod already with this MAC (a repeated ADD).
pub async fn present(netns_path: &Path, ifname: &str, mac: &str) -> bool {
    let Ok(pod) = crate::netns::netlink_in_async(netns_path).await else { return false };
    let Ok(Some(link)) = index_of(&pod, ifname).await else { return false };
    link.attributes.iter().any(|a| matches!(a, LinkAttribute::Address(b) if crate::plumb::mac_string(b) == mac))
}

/// The pod interface for a port: addresses, gateways, MTU (0: the parent's).
pub fn interface(ifname: &str, mac: &str, ips: &[String], gateways: &[String], mtu: Option<u32>) -> PodInterface {
    PodInterface {
        host: String::new(),
        ifname: ifname.into(),
        mac: mac.to_ascii_lowercase(),
        addresses: ips.iter().filter_map(|a| ports::address(a)).collect(),
        gateways: gateways.iter().filter_map(|g| g.parse().ok()).collect(),
        routes: Vec::new(),
        mtu: mtu.unwrap_or(0),
        vlan: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NETDATA: &str = r#"{
      "links": [
        {"id": "tap-a", "type": "ovs", "ethernet_mac_address": "fa:16:3e:00:00:01", "vif_id": "vm-port", "mtu": 1450},
        {"id": "tap-b", "type": "ovs", "ethernet_mac_address": "fa:16:3e:00:00:02", "vif_id": "provider-port", "mtu": 1500}
      ],
      "networks": [
        {"id": "n0", "type": "ipv4_dhcp", "link": "tap-a", "network_id": "pod-net"},
        {"id": "n1", "type": "ipv4_dhcp", "link": "tap-b", "network_id": "phys-net"}
      ],
      "services": []
    }"#;

    #[test]
    fn a_port_goes_on_its_networks_nic_a_subport_on_its_parents() {
        let data = crate::netdata::parse(NETDATA).unwrap();
        assert_eq!(
            child_place(&data, "phys-net", None, None).unwrap(),
            ("fa:16:3e:00:00:02".into(), ChildKind::Macvlan, Some(1500))
        );
        assert_eq!(
            child_place(&data, "other-net", Some(12), Some("vm-port")).unwrap(),
            ("fa:16:3e:00:00:01".into(), ChildKind::Vlan(12), Some(1450))
        );
        let e = child_place(&data, "nowhere", None, None).unwrap_err();
        assert!(e.starts_with("network_data.json: the VM has no NIC on Neutron network nowhere"), "{e}");
        assert!(e.contains("pod-net") && e.contains("phys-net"), "{e}");
    }

    #[test]
    fn sriov_devices_keep_the_other_interfaces() {
        let one = with_device(None, "net1", "0000:03:00.2", "8086:154c", "physnet1");
        let two = with_device(Some(&one), "net2", "0000:03:00.3", "8086:154c", "physnet2");
        let v: serde_json::Value = serde_json::from_str(&two).unwrap();
        assert_eq!(v["net1"]["pciSlot"], "0000:03:00.2");
        assert_eq!(v["net2"]["physicalNetwork"], "physnet2");
        // Garbage there is replaced, not kept.
        let v: serde_json::Value =
            serde_json::from_str(&with_device(Some("{"), "net1", "0000:03:00.2", "8086:154c", "p")).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 1);
    }

    #[test]
    fn vendor_info_reads_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("bus/pci/devices/0000:03:00.2");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("vendor"), "0x8086\n").unwrap();
        std::fs::write(dev.join("device"), "0x154C\n").unwrap();
        assert_eq!(vendor_info(dir.path(), "0000:03:00.2").unwrap(), "8086:154c");
        std::fs::write(dev.join("device"), "junk\n").unwrap();
        assert!(vendor_info(dir.path(), "0000:03:00.2").unwrap_err().contains("not a 16-bit hex id"));
        assert!(vendor_info(dir.path(), "0000:09:00.0").is_err());
    }

    #[test]
    fn the_interface_takes_the_ports_addresses() {
        let i = interface("net1", "FA:16:3E:00:00:09", &["192.0.2.5/24".into()], &["192.0.2.1".into()], None);
        assert_eq!(i.mac, "fa:16:3e:00:00:09");
        assert_eq!(i.addresses, [("192.0.2.5".parse().unwrap(), 24)]);
        assert_eq!((i.gateways.len(), i.mtu), (1, 0));
    }
}
