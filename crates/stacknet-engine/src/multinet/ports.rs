//! OpenStack mode's `stacknet.io/network` annotation: the Neutron ports the controller made
//! for a pod (its port on the pod network, and one per secondary interface), as the node agent
//! reads them to plumb the pod. The agent on a node that is a Nova VM can reach neither Neutron
//! nor OVN's databases; the Kubernetes API is the one channel both ends have.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::objects::NETWORK_ANNOTATION;

/// A pod's ports. `ips` are `address/prefix`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodPorts {
    pub ips: Vec<String>,
    pub mac: String,
    #[serde(default)]
    pub gateways: Vec<String>,
    pub port_id: String,
    pub network_id: String,
    /// On a nested node: the pod's VLAN on the VM's trunk and the trunk's parent port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_port: Option<String>,
    /// The secondary interfaces, in the selection's order, once every one has its port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<AttachedInterface>,
    /// The pod selects secondary networks whose ports are not all made yet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attachments_pending: bool,
    /// Why the pod's secondary networks cannot be attached (none is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment_error: Option<String>,
}

/// One secondary interface's port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachedInterface {
    /// The interface in the pod (`net1`).
    pub interface: String,
    /// The NetworkAttachmentDefinition, `namespace/name`.
    pub network: String,
    pub port_id: String,
    pub network_id: String,
    pub mac: String,
    pub ips: Vec<String>,
    /// The pod's default route through this interface (the selection's `default-route`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// On a nested node: the port's VLAN on the VM's trunk and the trunk's parent port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_port: Option<String>,
    /// `normal`, or `direct` (SR-IOV: the node moves the kubelet's virtual function in).
    #[serde(default = "normal")]
    pub vnic_type: String,
    /// The network's physical network (`provider:physical_network`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical_network: Option<String>,
}

fn normal() -> String {
    "normal".into()
}

impl AttachedInterface {
    pub fn is_direct(&self) -> bool {
        self.vnic_type == "direct"
    }
}

/// Reads the annotation; an error names the field
/// (`metadata.annotations[stacknet.io/network].attachments[0].ips[1]: ...`).
pub fn parse(text: &str) -> Result<PodPorts, String> {
    let field = |path: &str| format!("metadata.annotations[{NETWORK_ANNOTATION}]{path}");
    let de = &mut serde_json::Deserializer::from_str(text);
    let ports: PodPorts = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." { String::new() } else { format!(".{path}") };
        format!("{}: {}", field(&at), e.inner())
    })?;
    let check_ips = |ips: &[String], at: &str| -> Result<(), String> {
        for (i, a) in ips.iter().enumerate() {
            if address(a).is_none() {
                return Err(format!("{}: {a:?} is not address/prefix", field(&format!("{at}ips[{i}]"))));
            }
        }
        Ok(())
    };
    let check_gateways = |gws: &[String], at: &str| -> Result<(), String> {
        for (i, g) in gws.iter().enumerate() {
            if g.parse::<IpAddr>().is_err() {
                return Err(format!("{}: {g:?} is not an address", field(&format!("{at}gateways[{i}]"))));
            }
        }
        Ok(())
    };
    let check_mac = |mac: &str, at: &str| -> Result<(), String> {
        let ok = mac.split(':').filter(|h| h.len() == 2 && u8::from_str_radix(h, 16).is_ok()).count() == 6
            && mac.len() == 17;
        if ok { Ok(()) } else { Err(format!("{}: {mac:?} is not a MAC", field(&format!("{at}mac")))) }
    };
    check_ips(&ports.ips, ".")?;
    check_gateways(&ports.gateways, ".")?;
    check_mac(&ports.mac, ".")?;
    for (i, a) in ports.attachments.iter().enumerate() {
        let at = format!(".attachments[{i}].");
        check_ips(&a.ips, &at)?;
        check_gateways(&a.gateways, &at)?;
        check_mac(&a.mac, &at)?;
        if !matches!(a.vnic_type.as_str(), "normal" | "direct") {
            return Err(format!("{}: {:?} is not normal or direct", field(&format!("{at}vnicType")), a.vnic_type));
        }
        if a.interface.is_empty() {
            return Err(format!("{}: empty", field(&format!("{at}interface"))));
        }
    }
    Ok(ports)
}

/// `address/prefix` as an address and a prefix length.
pub fn address(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = s.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    (len <= if ip.is_ipv4() { 32 } else { 128 }).then_some((ip, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PodPorts {
        PodPorts {
            ips: vec!["10.0.0.5/24".into()],
            mac: "fa:16:3e:00:00:05".into(),
            gateways: vec!["10.0.0.1".into()],
            port_id: "p1".into(),
            network_id: "n1".into(),
            attachments: vec![AttachedInterface {
                interface: "net1".into(),
                network: "telco/data".into(),
                port_id: "p2".into(),
                network_id: "n2".into(),
                mac: "fa:16:3e:00:00:06".into(),
                ips: vec!["192.168.50.5/24".into()],
                vnic_type: "direct".into(),
                physical_network: Some("physnet1".into()),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn round_trips_and_omits_what_is_not_there() {
        let text = serde_json::to_string(&sample()).unwrap();
        assert!(!text.contains("vlan") && !text.contains("attachmentsPending") && !text.contains("attachmentError"));
        assert_eq!(parse(&text).unwrap(), sample());
        assert!(parse(&text).unwrap().attachments[0].is_direct());
    }

    #[test]
    fn the_primary_only_annotation_of_earlier_controllers_reads() {
        let old = r#"{"ips":["10.0.0.5/24"],"mac":"fa:16:3e:00:00:05","gateways":["10.0.0.1"],"portId":"p1","networkId":"n1","vlan":7,"parentPort":"vm"}"#;
        let p = parse(old).unwrap();
        assert_eq!((p.vlan, p.parent_port.as_deref(), p.attachments.len()), (Some(7), Some("vm"), 0));
    }

    #[test]
    fn errors_name_the_field() {
        let mut s = serde_json::to_value(sample()).unwrap();
        s["attachments"][0]["ips"][0] = "192.168.50.5".into();
        let e = parse(&s.to_string()).unwrap_err();
        assert_eq!(
            e,
            "metadata.annotations[stacknet.io/network].attachments[0].ips[0]: \"192.168.50.5\" is not address/prefix"
        );
        let mut s = serde_json::to_value(sample()).unwrap();
        s["attachments"][0]["mac"] = "fa:16:3e:00:00".into();
        assert!(parse(&s.to_string()).unwrap_err().contains("attachments[0].mac"));
        let mut s = serde_json::to_value(sample()).unwrap();
        s["attachments"][0]["vlan"] = 70000.into();
        assert!(
            parse(&s.to_string()).unwrap_err().contains("attachments[0].vlan"),
            "{}",
            parse(&s.to_string()).unwrap_err()
        );
        assert!(parse("{").unwrap_err().starts_with("metadata.annotations[stacknet.io/network]"));
        let e = parse(r#"{"ips":[],"mac":"fa:16:3e:00:00:05"}"#).unwrap_err();
        assert!(e.contains("portId"), "{e}");
    }
}
