//! Nova's `network_data.json` (config drive or metadata service, `openstack/latest/`): the VM's
//! links (NICs, bonds, VLANs), the networks on them and the DNS services. Pure: [`parse`] reads
//! and checks the text, and [`NetworkData::nic_for_port`] / [`NetworkData::nic_for_network`]
//! say which of the VM's NICs carries a Neutron port or network, so the agent can plumb a pod's
//! secondary interface on it. A port the VM has no NIC for is an error to report, not a guess.
//!
//! Nova adds link types and keys over time: unknown ones are kept ([`LinkType::Other`]) or
//! ignored; a missing required key, a dangling reference, a bad VLAN id or MAC is an error that
//! names the entry and field (`links[2].vlan_link: names no link "tap9"`).

use serde::Deserialize;

/// The whole document.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NetworkData {
    pub links: Vec<Link>,
    pub networks: Vec<Network>,
    #[serde(default)]
    pub services: Vec<Service>,
}

/// An L2 link: a NIC (`phy`, or the VIF type the hypervisor plugged, e.g. `ovs`), a bond or a
/// VLAN on another link.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Link {
    pub id: String,
    /// Nova writes `null` for some VIF types, so it is optional.
    #[serde(rename = "type", default)]
    pub kind: Option<LinkType>,
    pub ethernet_mac_address: Option<String>,
    pub mtu: Option<u32>,
    /// The Neutron port id.
    pub vif_id: Option<String>,
    /// VLAN links: the link the VLAN is on.
    pub vlan_link: Option<String>,
    pub vlan_id: Option<u16>,
    pub vlan_mac_address: Option<String>,
    /// Bonds: the member links.
    #[serde(default)]
    pub bond_links: Vec<String>,
    pub bond_mode: Option<String>,
    pub bond_xmit_hash_policy: Option<String>,
}

/// A link's `type`; Nova passes new VIF types through, kept as [`LinkType::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkType {
    Phy,
    Bridge,
    Ovs,
    Vif,
    Tap,
    Vhostuser,
    Tun,
    HwVeb,
    Hyperv,
    Dvs,
    Vlan,
    Bond,
    #[serde(untagged)]
    Other(String),
}

/// An L3 network on a link.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Network {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: NetworkType,
    /// The link's `id`.
    pub link: String,
    /// The Neutron network id.
    pub network_id: String,
    pub ip_address: Option<String>,
    pub netmask: Option<String>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub services: Vec<Service>,
}

/// A network's `type`: static or DHCP, IPv4 or IPv6 (Nova writes `ipv6_<address mode>`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkType {
    Ipv4,
    Ipv4Dhcp,
    Ipv6,
    Ipv6Dhcp,
    Ipv6Slaac,
    #[serde(rename = "ipv6_dhcpv6-stateful")]
    Ipv6DhcpStateful,
    #[serde(rename = "ipv6_dhcpv6-stateless")]
    Ipv6DhcpStateless,
    #[serde(untagged)]
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Route {
    pub network: String,
    pub netmask: String,
    pub gateway: String,
}

/// A service such as `{"type": "dns", "address": "8.8.8.8"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Service {
    #[serde(rename = "type")]
    pub kind: String,
    pub address: String,
}

/// The VM NIC that carries a port: find the interface by `mac`, then (for a trunk subport)
/// put the pod's interface on VLAN `vlan` of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// The MAC of the NIC to find in the VM (lowercase, colon-separated): the port's own link,
    /// or for a VLAN link the link under it; for a bond, the bond's MAC, else its first member's.
    pub mac: String,
    /// The VLAN id when the port is a VLAN link on that NIC.
    pub vlan: Option<u16>,
    /// The first MTU given along the way down: the port's link, its parent, a bond's first member.
    pub mtu: Option<u32>,
    /// The `id` of the link the port (or network) is on.
    pub link_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum NetDataError {
    #[error("network_data.json is not JSON: {0}")]
    Json(String),
    /// `at` is a path into the document such as `links[2].vlan_link`.
    #[error("{at}: {msg}")]
    Invalid { at: String, msg: String },
    #[error("the VM has no NIC for Neutron port {port_id} (its ports: {})", list(ports))]
    PortNotFound { port_id: String, ports: Vec<String> },
    #[error("the VM has no NIC on Neutron network {network_id} (its networks: {})", list(networks))]
    NetworkNotFound { network_id: String, networks: Vec<String> },
    #[error("{what} is on more than one link ({}); cannot tell which NIC", links.join(", "))]
    Ambiguous { what: String, links: Vec<String> },
}

fn list(items: &[String]) -> String {
    if items.is_empty() { "none".to_owned() } else { items.join(", ") }
}

fn invalid(at: impl Into<String>, msg: impl Into<String>) -> NetDataError {
    NetDataError::Invalid { at: at.into(), msg: msg.into() }
}

/// Reads `network_data.json` and checks it: references between links and networks, VLAN ids,
/// MACs. Unknown keys and link types are accepted.
pub fn parse(text: &str) -> Result<NetworkData, NetDataError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let data: NetworkData = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let at = match e.path().to_string() {
            p if p == "." => "network_data.json".to_owned(),
            p => p,
        };
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            NetDataError::Json(inner.to_string())
        } else {
            invalid(at, inner.to_string())
        }
    })?;
    de.end().map_err(|e| NetDataError::Json(e.to_string()))?;
    data.check()?;
    Ok(data)
}

/// `aa:bb:cc:dd:ee:ff` (or with `-`, any case) → lowercase with colons; `None` if not a MAC.
pub fn normalize_mac(mac: &str) -> Option<String> {
    let parts: Vec<&str> = mac.split([':', '-']).collect();
    let ok = parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    ok.then(|| parts.join(":").to_ascii_lowercase())
}

impl Link {
    fn is_vlan(&self) -> bool {
        self.kind == Some(LinkType::Vlan) || self.vlan_link.is_some()
    }

    fn is_bond(&self) -> bool {
        self.kind == Some(LinkType::Bond) || !self.bond_links.is_empty()
    }
}

impl NetworkData {
    /// The link with this `id`.
    pub fn link(&self, id: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.id == id)
    }

    /// The Neutron port ids (`vif_id`) on the VM's links.
    pub fn ports(&self) -> Vec<String> {
        self.links.iter().filter_map(|l| l.vif_id.clone()).collect()
    }

    fn check(&self) -> Result<(), NetDataError> {
        for (i, link) in self.links.iter().enumerate() {
            let at = |field: &str| format!("links[{i}].{field}");
            if let Some(j) = self.links[..i].iter().position(|l| l.id == link.id) {
                return Err(invalid(at("id"), format!("{:?} is also the id of links[{j}]", link.id)));
            }
            for (field, mac) in
                [("ethernet_mac_address", &link.ethernet_mac_address), ("vlan_mac_address", &link.vlan_mac_address)]
            {
                if let Some(mac) = mac
                    && normalize_mac(mac).is_none()
                {
                    return Err(invalid(at(field), format!("{mac:?} is not a MAC address")));
                }
            }
            if let Some(id) = link.vlan_id
                && !(1..=4094).contains(&id)
            {
                return Err(invalid(at("vlan_id"), format!("{id} is not a VLAN id (1-4094)")));
            }
            if link.kind == Some(LinkType::Vlan) {
                if link.vlan_link.is_none() {
                    return Err(invalid(at("vlan_link"), "missing on a vlan link"));
                }
                if link.vlan_id.is_none() {
                    return Err(invalid(at("vlan_id"), "missing on a vlan link"));
                }
            }
            if let Some(parent) = &link.vlan_link {
                self.check_ref(&at("vlan_link"), parent, &link.id)?;
            }
            if link.kind == Some(LinkType::Bond) && link.bond_links.is_empty() {
                return Err(invalid(at("bond_links"), "missing or empty on a bond link"));
            }
            for (k, member) in link.bond_links.iter().enumerate() {
                self.check_ref(&at(&format!("bond_links[{k}]")), member, &link.id)?;
            }
        }
        for (i, net) in self.networks.iter().enumerate() {
            if self.link(&net.link).is_none() {
                return Err(invalid(format!("networks[{i}].link"), format!("names no link {:?}", net.link)));
            }
        }
        Ok(())
    }

    fn check_ref(&self, at: &str, target: &str, own_id: &str) -> Result<(), NetDataError> {
        if target == own_id {
            return Err(invalid(at, format!("names the link itself ({target:?})")));
        }
        match self.link(target) {
            Some(_) => Ok(()),
            None => Err(invalid(at, format!("names no link {target:?}"))),
        }
    }

    /// The NIC carrying Neutron port `port_id` (a link's `vif_id`).
    pub fn nic_for_port(&self, port_id: &str) -> Result<Nic, NetDataError> {
        let links: Vec<&Link> = self
            .links
            .iter()
            .filter(|l| l.vif_id.as_deref().is_some_and(|v| v.eq_ignore_ascii_case(port_id)))
            .collect();
        match links.as_slice() {
            [] => Err(NetDataError::PortNotFound { port_id: port_id.to_owned(), ports: self.ports() }),
            [link] => self.nic_for_link(link),
            _ => Err(NetDataError::Ambiguous {
                what: format!("Neutron port {port_id}"),
                links: links.iter().map(|l| l.id.clone()).collect(),
            }),
        }
    }

    /// The NIC carrying Neutron network `network_id` (an IPv4 and an IPv6 entry on one link are
    /// one NIC; two links on the network are ambiguous: ask by port then).
    pub fn nic_for_network(&self, network_id: &str) -> Result<Nic, NetDataError> {
        let mut links: Vec<&str> = Vec::new();
        for net in self.networks.iter().filter(|n| n.network_id.eq_ignore_ascii_case(network_id)) {
            if !links.contains(&net.link.as_str()) {
                links.push(&net.link);
            }
        }
        match links.as_slice() {
            [] => {
                let mut networks: Vec<String> = Vec::new();
                for n in &self.networks {
                    if !networks.contains(&n.network_id) {
                        networks.push(n.network_id.clone());
                    }
                }
                Err(NetDataError::NetworkNotFound { network_id: network_id.to_owned(), networks })
            }
            [id] => {
                let link = self.link(id).ok_or_else(|| invalid("networks", format!("names no link {id:?}")))?;
                self.nic_for_link(link)
            }
            _ => Err(NetDataError::Ambiguous {
                what: format!("Neutron network {network_id}"),
                links: links.iter().map(|l| l.to_string()).collect(),
            }),
        }
    }

    fn at(&self, link: &Link, field: &str) -> String {
        let i = self.links.iter().position(|l| std::ptr::eq(l, link)).unwrap_or(0);
        format!("links[{i}].{field}")
    }

    /// Resolves a link to the NIC under it: a VLAN to its parent (a NIC or a bond), a bond to
    /// its MAC or first member. A VLAN on a VLAN, or a bond of bonds, is not a NIC we can use.
    fn nic_for_link(&self, link: &Link) -> Result<Nic, NetDataError> {
        let (base, vlan) = match (&link.vlan_link, link.is_vlan()) {
            (Some(parent), true) => {
                let at = self.at(link, "vlan_link");
                let parent = self.link(parent).ok_or_else(|| invalid(&at, format!("names no link {parent:?}")))?;
                if parent.is_vlan() {
                    return Err(invalid(at, format!("a VLAN on VLAN link {:?} is not supported", parent.id)));
                }
                (parent, link.vlan_id)
            }
            (None, true) => return Err(invalid(self.at(link, "vlan_link"), "missing on a vlan link")),
            _ => (link, None),
        };
        let (mac, mtu) = self.physical(base)?;
        Ok(Nic { mac, vlan, mtu: link.mtu.or(base.mtu).or(mtu), link_id: link.id.clone() })
    }

    /// The MAC (normalized) and MTU of a NIC or bond link.
    fn physical(&self, link: &Link) -> Result<(String, Option<u32>), NetDataError> {
        let own_mac = link.ethernet_mac_address.as_deref().and_then(normalize_mac);
        if !link.is_bond() {
            let mac = own_mac.ok_or_else(|| {
                invalid(self.at(link, "ethernet_mac_address"), "missing: the NIC cannot be found without its MAC")
            })?;
            return Ok((mac, link.mtu));
        }
        let at = self.at(link, "bond_links[0]");
        let first = link.bond_links.first().ok_or_else(|| invalid(&at, "missing: a bond without members"))?;
        let member = self.link(first).ok_or_else(|| invalid(&at, format!("names no link {first:?}")))?;
        if member.is_bond() || member.is_vlan() {
            return Err(invalid(at, format!("member {first:?} is not a NIC")));
        }
        let member_mac = member.ethernet_mac_address.as_deref().and_then(normalize_mac);
        let mac = own_mac.or(member_mac).ok_or_else(|| {
            invalid(self.at(link, "ethernet_mac_address"), "missing on the bond and on its first member")
        })?;
        Ok((mac, link.mtu.or(member.mtu)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Fixtures: tests/data/network_data/README.md says where each comes from.
    /// nova/tests/unit/network/test_network_info.py, TestNetworkMetadata.test_get_network_metadata.
    const NOVA_TEST: &str = include_str!("../tests/data/network_data/nova_test_get_network_metadata.json");
    /// nova-specs liberty metadata-service-network-info.rst: bond, VLAN on the bond, IPv6.
    const NOVA_SPEC: &str = include_str!("../tests/data/network_data/nova_spec_metadata_service_network_info.json");
    /// cloud-init tests/unittests/sources/test_configdrive.py NETWORK_DATA.
    const CI_1: &str = include_str!("../tests/data/network_data/cloudinit_network_data.json");
    /// cloud-init NETWORK_DATA_2.
    const CI_2: &str = include_str!("../tests/data/network_data/cloudinit_network_data_2.json");
    /// cloud-init NETWORK_DATA_3 (tap and null link types, IPv6).
    const CI_3: &str = include_str!("../tests/data/network_data/cloudinit_network_data_3.json");
    /// cloud-init NETWORK_DATA_BOND.
    const CI_BOND: &str = include_str!("../tests/data/network_data/cloudinit_network_data_bond.json");
    /// cloud-init NETWORK_DATA_VLAN.
    const CI_VLAN: &str = include_str!("../tests/data/network_data/cloudinit_network_data_vlan.json");

    fn nic(mac: &str, vlan: Option<u16>, mtu: Option<u32>, link_id: &str) -> Nic {
        Nic { mac: mac.into(), vlan, mtu, link_id: link_id.into() }
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("parsed: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn nova_unit_test_phy_links_and_ipv6() {
        let d = parse(NOVA_TEST).unwrap();
        assert_eq!(d.links[0].kind, Some(LinkType::Phy));
        assert_eq!(d.networks[1].kind, NetworkType::Ipv6);
        assert_eq!(d.networks[1].routes[1].gateway, "fd00::1:1");
        assert_eq!(d.services.len(), 4);
        // IPv4 and IPv6 of one network on one link: one NIC.
        let n = d.nic_for_network("00000000-0000-0000-0000-000000000000").unwrap();
        assert_eq!(n, nic("aa:aa:aa:aa:aa:aa", None, Some(1500), "interface0"));
        let n = d.nic_for_network("11111111-1111-1111-1111-111111111111").unwrap();
        assert_eq!(n, nic("aa:aa:aa:aa:aa:ab", None, Some(1500), "interface1"));
        // Nova's test gives both links the same sentinel vif_id: no guessing between them.
        let e = d.nic_for_port("5b4f0c3a-9d1e-4f57-8a2b-0c6e1d2f3a4b").unwrap_err();
        assert!(matches!(e, NetDataError::Ambiguous { .. }), "{e}");
        assert!(e.to_string().contains("interface0, interface1"), "{e}");
    }

    #[test]
    fn nova_spec_vlan_on_bond() {
        let d = parse(NOVA_SPEC).unwrap();
        assert_eq!(d.link("bond0").map(|l| l.bond_mode.as_deref()), Some(Some("802.1ad")));
        let n = d.nic_for_port("e1c90e9f-eafc-4e2d-8ec9-58b91cebb53f").unwrap();
        // The bond's own MAC; the MTU of its first member (neither VLAN nor bond give one).
        assert_eq!(n, nic("a0:36:9f:2c:e8:82", Some(101), Some(9000), "vlan0"));
        let n = d.nic_for_port("e1c90e9f-eafc-4e2d-8ec9-58b91cebb53d").unwrap();
        assert_eq!(n, nic("a0:36:9f:2c:e8:70", None, Some(1500), "interface2"));
        let n = d.nic_for_network("62611d6f-66cb-4270-8b1f-503ef0dd4736").unwrap();
        assert_eq!(n.vlan, Some(101));
        let n = d.nic_for_network("da5bb487-5193-4a65-a3df-4a0055a8c0d8").unwrap();
        assert_eq!(n, nic("a0:36:9f:2c:e8:80", None, Some(9000), "interface0"));
    }

    #[test]
    fn cloud_init_ovs_links_null_mtu_extra_keys() {
        let d = parse(CI_1).unwrap();
        assert_eq!(d.links[2].kind, Some(LinkType::Ovs));
        assert_eq!(d.networks[0].kind, NetworkType::Ipv4Dhcp);
        let n = d.nic_for_port("1a5382f8-04c5-4d75-ab98-d666c1ef52cc").unwrap();
        assert_eq!(n, nic("fa:16:3e:05:30:fe", None, None, "tap1a5382f8-04"));
        let n = d.nic_for_network("d227a9b3-6960-4d94-8976-ee5788b44f54").unwrap();
        assert_eq!(n.link_id, "tap2f88d109-5b");
    }

    #[test]
    fn cloud_init_vif_links() {
        let d = parse(CI_2).unwrap();
        assert_eq!(d.nic_for_port("vif-foo2").unwrap(), nic("fa:16:3e:a8:14:69", None, Some(1500), "eth1"));
    }

    #[test]
    fn cloud_init_tap_and_null_types_ipv6() {
        let d = parse(CI_3).unwrap();
        assert_eq!(d.links[0].kind, Some(LinkType::Tap));
        assert_eq!(d.links[1].kind, None);
        assert_eq!(d.networks[1].ip_address.as_deref(), Some("fdb8:52d0:9d14:0:f816:3eff:fe9f:70d"));
        let n = d.nic_for_network("7c41450c-ba44-401a-9ab1-1604bb2da51e").unwrap();
        assert_eq!(n, nic("fa:16:3e:dd:50:9a", None, None, "tap77a0dc5b-72"));
        let n = d.nic_for_port("7d6b7bec-93e6-4c03-869a-ddc5014892d5").unwrap();
        assert_eq!(n.mac, "fa:16:3e:a8:14:69");
    }

    #[test]
    fn cloud_init_vlans_on_a_bond() {
        let d = parse(CI_BOND).unwrap();
        assert_eq!(d.link("bond0").map(|l| l.bond_links.len()), Some(2));
        let n = d.nic_for_network("4daf5ce8-38cf-4240-9f1a-04e86d7c6117").unwrap();
        assert_eq!(n, nic("fa:16:3e:b3:72:36", Some(602), Some(1500), "vlan2"));
        let n = d.nic_for_network("a9e2f47c-3c43-4782-94d0-e1eeef1c8c9d").unwrap();
        assert_eq!(n.vlan, Some(612));
        // These links carry no vif_id: asking by port finds nothing, and says what there is.
        let e = d.nic_for_port("0b9b3d5e-0000-4000-8000-000000000000").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the VM has no NIC for Neutron port 0b9b3d5e-0000-4000-8000-000000000000 (its ports: none)"
        );
    }

    #[test]
    fn cloud_init_vlan_on_phy() {
        let d = parse(CI_VLAN).unwrap();
        let n = d.nic_for_network("a9e2f47c-3c43-4782-94d0-e1eeef1c8c9d").unwrap();
        assert_eq!(n, nic("fa:16:3e:69:b0:58", Some(602), Some(1500), "vlan1"));
    }

    #[test]
    fn port_not_found_lists_the_vms_ports() {
        let d = parse(CI_2).unwrap();
        let e = d.nic_for_port("ab").unwrap_err();
        assert_eq!(e.to_string(), "the VM has no NIC for Neutron port ab (its ports: vif-foo1, vif-foo2)");
        let e = d.nic_for_network("nope").unwrap_err();
        assert!(e.to_string().contains("d94bbe94-7abc-48d4-9c82-4628ea26164a, ca447c83"), "{e}");
    }

    #[test]
    fn unknown_link_types_and_keys_are_kept_or_ignored() {
        let text = r#"{"links": [{"id": "x", "type": "whizbang_nvf", "ethernet_mac_address": "FA-16-3E-00-00-01",
            "vif_id": "p", "future_key": {"a": [1]}}], "networks": [], "services": [], "new_section": 1}"#;
        let d = parse(text).unwrap();
        assert_eq!(d.links[0].kind, Some(LinkType::Other("whizbang_nvf".into())));
        assert_eq!(d.nic_for_port("p").unwrap().mac, "fa:16:3e:00:00:01");
    }

    #[test]
    fn garbled_json_is_an_error() {
        let e = err(r#"{"links": [{"id": "x",}"#);
        assert!(e.starts_with("network_data.json is not JSON:") && e.contains("line 1"), "{e}");
        assert!(err("").contains("not JSON"));
        assert!(err(r#"{"links": [], "networks": []} x"#).contains("not JSON"));
    }

    #[test]
    fn missing_required_keys_name_the_entry() {
        let e = err(r#"{"links": [{"type": "phy"}], "networks": []}"#);
        assert!(e.starts_with("links[0]: missing field `id`"), "{e}");
        let e = err(r#"{"links": [{"id": "a"}], "networks": [{"id": "n", "type": "ipv4", "link": "a"}]}"#);
        assert!(e.starts_with("networks[0]: missing field `network_id`"), "{e}");
        let e = err(r#"{"networks": []}"#);
        assert!(e.starts_with("network_data.json: missing field `links`"), "{e}");
        let e = err(r#"{"links": [{"id": "a", "mtu": "big"}], "networks": []}"#);
        assert!(e.starts_with("links[0].mtu: invalid type"), "{e}");
    }

    #[test]
    fn dangling_references_name_the_field() {
        let e = err(r#"{"links": [{"id": "eth0", "ethernet_mac_address": "fa:16:3e:00:00:01"},
            {"id": "b", "type": "bond", "bond_links": ["eth0"]},
            {"id": "v", "type": "vlan", "vlan_link": "tap9", "vlan_id": 5}], "networks": []}"#);
        assert_eq!(e, r#"links[2].vlan_link: names no link "tap9""#);
        let e = err(
            r#"{"links": [{"id": "eth0"}, {"id": "b", "type": "bond", "bond_links": ["eth0", "eth9"]}], "networks": []}"#,
        );
        assert_eq!(e, r#"links[1].bond_links[1]: names no link "eth9""#);
        let e = err(
            r#"{"links": [{"id": "eth0"}], "networks": [{"id": "n", "type": "ipv4", "link": "eth1", "network_id": "x"}]}"#,
        );
        assert_eq!(e, r#"networks[0].link: names no link "eth1""#);
        let e = err(r#"{"links": [{"id": "v", "type": "vlan", "vlan_link": "v", "vlan_id": 5}], "networks": []}"#);
        assert_eq!(e, r#"links[0].vlan_link: names the link itself ("v")"#);
        let e = err(r#"{"links": [{"id": "a"}, {"id": "a"}], "networks": []}"#);
        assert_eq!(e, r#"links[1].id: "a" is also the id of links[0]"#);
        let e = err(r#"{"links": [{"id": "b", "type": "bond"}], "networks": []}"#);
        assert_eq!(e, "links[0].bond_links: missing or empty on a bond link");
    }

    #[test]
    fn bad_vlan_ids_name_the_field() {
        let vlan = |id: &str| {
            format!(
                r#"{{"links": [{{"id": "e"}}, {{"id": "v", "type": "vlan", "vlan_link": "e", "vlan_id": {id}}}], "networks": []}}"#
            )
        };
        assert_eq!(err(&vlan("0")), "links[1].vlan_id: 0 is not a VLAN id (1-4094)");
        assert_eq!(err(&vlan("4095")), "links[1].vlan_id: 4095 is not a VLAN id (1-4094)");
        assert!(err(&vlan("70000")).starts_with("links[1].vlan_id: invalid value"));
        assert!(err(&vlan("-1")).starts_with("links[1].vlan_id: invalid value"));
        assert!(parse(&vlan("4094")).is_ok());
        let e = err(r#"{"links": [{"id": "e"}, {"id": "v", "type": "vlan", "vlan_link": "e"}], "networks": []}"#);
        assert_eq!(e, "links[1].vlan_id: missing on a vlan link");
    }

    #[test]
    fn bad_macs_name_the_field() {
        let e = err(r#"{"links": [{"id": "e", "ethernet_mac_address": "fa:16:3e:00:00"}], "networks": []}"#);
        assert_eq!(e, r#"links[0].ethernet_mac_address: "fa:16:3e:00:00" is not a MAC address"#);
        let e = err(r#"{"links": [{"id": "e"}, {"id": "v", "type": "vlan", "vlan_link": "e", "vlan_id": 3,
            "vlan_mac_address": "fa:16:3e:00:00:zz"}], "networks": []}"#);
        assert_eq!(e, r#"links[1].vlan_mac_address: "fa:16:3e:00:00:zz" is not a MAC address"#);
    }

    #[test]
    fn normalize_mac_cases() {
        assert_eq!(normalize_mac("FA:16:3E:0a:0B:0c").as_deref(), Some("fa:16:3e:0a:0b:0c"));
        assert_eq!(normalize_mac("fa-16-3e-0a-0b-0c").as_deref(), Some("fa:16:3e:0a:0b:0c"));
        for bad in [
            "",
            "fa:16:3e:0a:0b",
            "fa:16:3e:0a:0b:0c:0d",
            "f:a16:3e:0a:0b:0c",
            "fa:16:3e:0a:0b:0g",
            "fa:16:3e:0a:0b:+c",
        ] {
            assert_eq!(normalize_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn unusable_shapes_are_errors_not_guesses() {
        // A VLAN on a VLAN (QinQ) and a NIC without a MAC.
        let d = parse(
            r#"{"links": [{"id": "e", "ethernet_mac_address": "fa:16:3e:00:00:01"},
            {"id": "v1", "type": "vlan", "vlan_link": "e", "vlan_id": 3},
            {"id": "v2", "type": "vlan", "vlan_link": "v1", "vlan_id": 4, "vif_id": "p2"},
            {"id": "m", "type": "ovs", "vif_id": "p3"}], "networks": []}"#,
        )
        .unwrap();
        assert_eq!(
            d.nic_for_port("p2").unwrap_err().to_string(),
            r#"links[2].vlan_link: a VLAN on VLAN link "v1" is not supported"#
        );
        assert_eq!(
            d.nic_for_port("p3").unwrap_err().to_string(),
            "links[3].ethernet_mac_address: missing: the NIC cannot be found without its MAC"
        );
        // A bond without a MAC of its own: its first member's.
        let d = parse(
            r#"{"links": [{"id": "a", "ethernet_mac_address": "fa:16:3e:00:00:0a", "mtu": 9000},
            {"id": "b", "ethernet_mac_address": "fa:16:3e:00:00:0b"},
            {"id": "bond", "type": "bond", "bond_links": ["a", "b"], "vif_id": "pb"}], "networks": []}"#,
        )
        .unwrap();
        assert_eq!(d.nic_for_port("PB").unwrap(), nic("fa:16:3e:00:00:0a", None, Some(9000), "bond"));
    }
}
