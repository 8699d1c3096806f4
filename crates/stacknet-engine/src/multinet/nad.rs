//! NetworkAttachmentDefinitions (`k8s.cni.cncf.io/v1`) and MultiNetworkPolicies
//! (`k8s.cni.cncf.io/v1beta1`), read into validated objects. A NAD is stacknet's when its
//! `spec.config` names the `stacknet-cni` plugin; its config then says what the network is:
//!
//! ```json
//! {"cniVersion": "1.1.0", "name": "data", "type": "stacknet-cni",
//!  "topology": "layer2", "subnets": "10.100.0.0/24", "excludeSubnets": "10.100.0.0/29", "mtu": 1400}
//! {"cniVersion": "1.1.0", "name": "provider", "type": "stacknet-cni",
//!  "topology": "localnet", "physicalNetworkName": "physnet1", "vlanID": 200, "subnets": "192.0.2.0/24"}
//! {"cniVersion": "1.1.0", "name": "sriov", "type": "stacknet-cni",
//!  "neutronNetwork": "provider-net", "vnicType": "direct", "portSecurity": false}
//! ```
//!
//! The keys follow ovn-kubernetes' secondary networks where they exist (`topology`,
//! `subnets`, `excludeSubnets`, `vlanID`, `physicalNetworkName`, `mtu`). A config that
//! does not parse is kept as its error: the NAD gets an Event, and a pod selecting it gets
//! one too, naming the field.

use std::fmt;

use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Invalid;
use crate::net::Cidr;
use crate::objects::{NetworkPolicy, ObjectKey};

/// The CNI plugin type that makes a NAD stacknet's.
pub const PLUGIN: &str = "stacknet-cni";
pub const NAD_API_VERSION: &str = "k8s.cni.cncf.io/v1";
pub const MULTI_POLICY_API_VERSION: &str = "k8s.cni.cncf.io/v1beta1";
/// On a MultiNetworkPolicy: the networks it applies to (`[namespace/]name`, comma-separated).
pub const POLICY_FOR_ANNOTATION: &str = "k8s.v1.cni.cncf.io/policy-for";
/// On a NAD: the device plugin resource its pods request (SR-IOV).
pub const RESOURCE_NAME_ANNOTATION: &str = "k8s.v1.cni.cncf.io/resourceName";
/// On a pod: the SR-IOV virtual function the node agent handed each interface, as JSON
/// `{"net1": {"pciSlot": "0000:03:00.2", "vendorInfo": "8086:154c", "physicalNetwork": "physnet2"}}`
/// (written by the agent once the kubelet's device is in the pod; the OpenStack backend puts
/// it in the Neutron port's `binding:profile`).
pub const SRIOV_DEVICES_ANNOTATION: &str = "stacknet.io/sriov-devices";
/// On a pod: what each of its interfaces got (written by the controller).
pub const NETWORK_STATUS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/network-status";

/// What kind of network a NAD makes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NetTopology {
    /// OVN: one logical switch spanning the nodes; pods on it share one L2 domain.
    Layer2,
    /// OVN: a provider network: a switch with a localnet port bridged by each chassis's
    /// `ovn-bridge-mappings` to `physnet`, untagged or with `vlan`.
    Localnet { physnet: String, vlan: Option<u16> },
    /// OpenStack: a port on an existing Neutron network (by name or id).
    Neutron { network: String, vnic: VnicType, port_security: Option<bool>, security_groups: Vec<String> },
}

impl NetTopology {
    pub fn name(&self) -> &'static str {
        match self {
            NetTopology::Layer2 => "layer2",
            NetTopology::Localnet { .. } => "localnet",
            NetTopology::Neutron { .. } => "neutron",
        }
    }
}

/// Neutron's `binding:vnic_type` for the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VnicType {
    Normal,
    /// SR-IOV: the port is a virtual function handed to the pod.
    Direct,
}

/// stacknet's reading of a NAD's config.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetConfig {
    /// The CNI network name (`name`).
    pub name: String,
    pub topology: NetTopology,
    /// Where addresses come from (at most one per family); none: the network gives no
    /// addresses (a pod may still ask for its own).
    pub subnets: Vec<Cidr>,
    /// Addresses never handed out (a router's, a static range).
    pub exclude: Vec<Cidr>,
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetworkAttachmentDefinition {
    pub key: ObjectKey,
    /// The CNI plugin the config names (`type`, or the first plugin's of a list); `None`
    /// without `spec.config`.
    pub plugin: Option<String>,
    /// stacknet's reading of the config (only when `plugin` is [`PLUGIN`]): the error names
    /// the field.
    pub config: Option<Result<NetConfig, String>>,
    /// The `k8s.v1.cni.cncf.io/resourceName` annotation.
    pub resource_name: Option<String>,
}

impl NetworkAttachmentDefinition {
    /// Whether the NAD is stacknet's to make.
    pub fn is_ours(&self) -> bool {
        self.plugin.as_deref() == Some(PLUGIN)
    }
}

/// A custom resource as the API serves it (Multus's CRDs have no k8s-openapi type): its
/// metadata and its `spec` of type `S`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CustomResource<S> {
    #[serde(rename = "apiVersion", default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<S>,
}

/// The NetworkAttachmentDefinition as the API serves it.
pub type NadApi = CustomResource<NadSpecApi>;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NadSpecApi {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

/// The MultiNetworkPolicy as the API serves it: a NetworkPolicy's spec.
pub type MultiPolicyApi = CustomResource<networking::NetworkPolicySpec>;

/// Keys of a plugin config the CNI runtime or Multus puts there, or stacknet-cni's own.
const STANDARD_KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "args",
    "capabilities",
    "runtimeConfig",
    "prevResult",
    "ipam",
    "dns",
    "agentSocket",
    "timeoutSeconds",
    "attachNetworks",
];
const NETWORK_KEYS: &[&str] = &[
    "topology",
    "subnets",
    "excludeSubnets",
    "mtu",
    "vlanID",
    "physicalNetworkName",
    "netAttachDefName",
    "neutronNetwork",
    "vnicType",
    "portSecurity",
    "securityGroups",
];

fn field(name: &str) -> String {
    format!("spec.config.{name}")
}

/// `"a, b"` or `["a", "b"]`.
fn list(v: &Value, name: &str) -> Result<Vec<String>, String> {
    match v {
        Value::String(s) => Ok(s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string).ok_or_else(|| format!("{}: a list of strings", field(name))))
            .collect(),
        _ => Err(format!("{}: a comma-separated string or a list of strings", field(name))),
    }
}

fn cidrs(v: &Value, name: &str) -> Result<Vec<Cidr>, String> {
    list(v, name)?
        .iter()
        .map(|s| {
            let c: Cidr = s.parse().map_err(|_| format!("{}: {s:?} is not a CIDR", field(name)))?;
            if c.to_string() != *s && s.contains('/') {
                // 10.1.1.5/24: host bits set; say what was meant.
                return Err(format!("{}: {s:?} has host bits set (the network is {c})", field(name)));
            }
            Ok(c)
        })
        .collect()
}

/// Reads a NAD's `spec.config` (a plugin config or a plugin list): the plugin it names and,
/// when that is stacknet-cni, the network. `key` is the NAD's, for `netAttachDefName`.
pub fn parse_config(key: &ObjectKey, text: &str) -> Result<(String, Option<Result<NetConfig, String>>), String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("spec.config: not valid JSON: {e}"))?;
    let Value::Object(top) = v else { return Err("spec.config: a JSON object".into()) };
    let (conf, name) = match top.get("plugins") {
        Some(Value::Array(plugins)) => {
            let first = plugins.first().and_then(Value::as_object).ok_or("spec.config.plugins: a list of objects")?;
            (first.clone(), top.get("name").cloned())
        }
        Some(_) => return Err("spec.config.plugins: a list of plugin configs".into()),
        None => (top.clone(), top.get("name").cloned()),
    };
    let plugin = conf.get("type").and_then(Value::as_str).ok_or("spec.config.type: required (the CNI plugin)")?;
    if plugin != PLUGIN {
        return Ok((plugin.to_string(), None));
    }
    Ok((plugin.to_string(), Some(network(key, &conf, name.as_ref()))))
}

fn network(key: &ObjectKey, conf: &serde_json::Map<String, Value>, name: Option<&Value>) -> Result<NetConfig, String> {
    for k in conf.keys() {
        if !STANDARD_KEYS.contains(&k.as_str()) && !NETWORK_KEYS.contains(&k.as_str()) {
            return Err(format!("{}: not a stacknet-cni key", field(k)));
        }
    }
    let name =
        name.and_then(Value::as_str).filter(|s| !s.is_empty()).ok_or_else(|| format!("{}: required", field("name")))?;
    if let Some(ipam) = conf.get("ipam").filter(|v| v.as_object().is_none_or(|m| !m.is_empty())) {
        return Err(format!(
            "{}: {ipam} — stacknet-cni gives addresses itself: say `subnets` (and `excludeSubnets`) instead",
            field("ipam")
        ));
    }
    if let Some(n) = conf.get("netAttachDefName") {
        let want = key.to_string();
        if n.as_str() != Some(want.as_str()) {
            return Err(format!("{}: {n} but the NAD is {want}", field("netAttachDefName")));
        }
    }
    let string = |k: &str| -> Result<Option<String>, String> {
        match conf.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(other) => Err(format!("{}: {other} is not a non-empty string", field(k))),
        }
    };
    let number = |k: &str, lo: u64, hi: u64| -> Result<Option<u64>, String> {
        match conf.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .filter(|n| (lo..=hi).contains(n))
                .map(Some)
                .ok_or_else(|| format!("{}: {v} is not a number from {lo} to {hi}", field(k))),
        }
    };
    let mtu = number("mtu", 576, 65535)?.map(|m| m as u32);
    let vlan = number("vlanID", 1, 4094)?.map(|v| v as u16);
    let subnets = conf.get("subnets").map(|v| cidrs(v, "subnets")).transpose()?.unwrap_or_default();
    let exclude = conf.get("excludeSubnets").map(|v| cidrs(v, "excludeSubnets")).transpose()?.unwrap_or_default();
    for fam in [true, false] {
        if subnets.iter().filter(|c| c.is_ipv4() == fam).count() > 1 {
            return Err(format!("{}: at most one subnet per address family", field("subnets")));
        }
    }
    for e in &exclude {
        if !subnets.iter().any(|s| s.covers(e)) {
            return Err(format!("{}: {e} is not inside any of `subnets`", field("excludeSubnets")));
        }
    }
    let topology = match (string("topology")?.as_deref(), string("neutronNetwork")?) {
        (Some("layer2"), None) => {
            for k in ["vlanID", "physicalNetworkName"] {
                if conf.contains_key(k) {
                    return Err(format!("{}: only a localnet network has one", field(k)));
                }
            }
            NetTopology::Layer2
        }
        (Some("localnet"), None) => {
            NetTopology::Localnet { physnet: string("physicalNetworkName")?.unwrap_or_else(|| name.to_string()), vlan }
        }
        (Some(t @ ("layer2" | "localnet")), Some(_)) => {
            return Err(format!(
                "{}: a {t} network is made in OVN; `neutronNetwork` names an OpenStack one — say one of them",
                field("neutronNetwork")
            ));
        }
        (Some(other), _) => {
            return Err(format!("{}: {other:?} is not layer2 or localnet", field("topology")));
        }
        (None, Some(network)) => {
            let vnic = match string("vnicType")?.as_deref() {
                None | Some("normal") => VnicType::Normal,
                Some("direct") => VnicType::Direct,
                Some(other) => return Err(format!("{}: {other:?} is not normal or direct", field("vnicType"))),
            };
            let port_security = match conf.get("portSecurity") {
                None | Some(Value::Null) => None,
                Some(Value::Bool(b)) => Some(*b),
                Some(v) => return Err(format!("{}: {v} is not true or false", field("portSecurity"))),
            };
            let security_groups =
                conf.get("securityGroups").map(|v| list(v, "securityGroups")).transpose()?.unwrap_or_default();
            if port_security == Some(false) && !security_groups.is_empty() {
                return Err(format!("{}: port security is off, so no security group applies", field("securityGroups")));
            }
            NetTopology::Neutron { network, vnic, port_security, security_groups }
        }
        (None, None) => {
            return Err(format!(
                "{}: required — layer2 or localnet (OVN), or `neutronNetwork` (OpenStack)",
                field("topology")
            ));
        }
    };
    if !matches!(topology, NetTopology::Localnet { .. }) && conf.contains_key("vlanID") {
        return Err(format!("{}: only a localnet network has one", field("vlanID")));
    }
    if matches!(topology, NetTopology::Neutron { .. }) && !subnets.is_empty() {
        return Err(format!("{}: a Neutron network's subnets are Neutron's", field("subnets")));
    }
    for k in ["vnicType", "portSecurity", "securityGroups"] {
        if !matches!(topology, NetTopology::Neutron { .. }) && conf.contains_key(k) {
            return Err(format!("{}: only with `neutronNetwork`", field(k)));
        }
    }
    Ok(NetConfig { name: name.to_string(), topology, subnets, exclude, mtu })
}

impl NetworkAttachmentDefinition {
    /// Reads a NAD. Only the metadata can make it invalid; a bad config is kept as its error.
    pub fn from_k8s(nad: &NadApi) -> Result<NetworkAttachmentDefinition, Invalid> {
        let (key, object) = crate::objects::namespaced("NetworkAttachmentDefinition", &nad.metadata)?;
        let annotations = nad.metadata.annotations.as_ref();
        let resource_name = annotations.and_then(|a| a.get(RESOURCE_NAME_ANNOTATION)).cloned();
        let text = nad.spec.as_ref().and_then(|s| s.config.as_deref()).filter(|c| !c.trim().is_empty());
        let (plugin, config) = match text {
            None => (None, None),
            Some(t) => match parse_config(&key, t) {
                Ok((p, c)) => (Some(p), c),
                // Not even the plugin can be told: it cannot be anyone's.
                Err(e) => return Err(Invalid::new(&object, "spec.config", e.trim_start_matches("spec.config: "))),
            },
        };
        Ok(NetworkAttachmentDefinition { key, plugin, config, resource_name })
    }
}

/// A NetworkPolicy for secondary networks: the same semantics, on the pods' interfaces on the
/// networks it names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MultiNetworkPolicy {
    pub policy: NetworkPolicy,
    /// The NADs named by `k8s.v1.cni.cncf.io/policy-for` (empty: none, so it applies nowhere).
    pub networks: Vec<ObjectKey>,
}

impl MultiNetworkPolicy {
    pub fn from_k8s(mnp: &MultiPolicyApi, warnings: &mut Vec<String>) -> Result<MultiNetworkPolicy, Invalid> {
        let (key, object) = crate::objects::namespaced("MultiNetworkPolicy", &mnp.metadata)?;
        let np = networking::NetworkPolicy { metadata: mnp.metadata.clone(), spec: mnp.spec.clone() };
        let rename = |s: String| s.replacen("NetworkPolicy ", "MultiNetworkPolicy ", 1);
        let mut w = Vec::new();
        let policy = NetworkPolicy::from_k8s(&np, &mut w).map_err(|e| Invalid {
            object: rename(e.object),
            field: e.field,
            message: e.message,
        })?;
        warnings.extend(w.into_iter().map(rename));
        let text = mnp.metadata.annotations.as_ref().and_then(|a| a.get(POLICY_FOR_ANNOTATION));
        let networks = match text {
            None => {
                warnings.push(format!("{object}: no {POLICY_FOR_ANNOTATION} annotation: it applies to no network"));
                Vec::new()
            }
            Some(t) => policy_for(&key.namespace, t)
                .map_err(|m| Invalid::new(&object, format!("metadata.annotations[{POLICY_FOR_ANNOTATION}]"), m))?,
        };
        Ok(MultiNetworkPolicy { policy, networks })
    }
}

/// `[namespace/]name` entries, comma-separated (a missing namespace is the policy's).
pub fn policy_for(namespace: &str, text: &str) -> Result<Vec<ObjectKey>, String> {
    let mut out = Vec::new();
    for (i, part) in text.split(',').map(str::trim).enumerate() {
        let (ns, name) = part.split_once('/').unwrap_or((namespace, part));
        if !super::selection::valid_name(ns) || !super::selection::valid_name(name) {
            return Err(format!("entry {i}: {part:?} is not [namespace/]name"));
        }
        let key = ObjectKey::new(ns, name);
        if !out.contains(&key) {
            out.push(key);
        }
    }
    Ok(out)
}

impl fmt::Display for NetTopology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetTopology::Layer2 => f.write_str("layer2"),
            NetTopology::Localnet { physnet, vlan: None } => write!(f, "localnet {physnet}"),
            NetTopology::Localnet { physnet, vlan: Some(v) } => write!(f, "localnet {physnet} VLAN {v}"),
            NetTopology::Neutron { network, .. } => write!(f, "Neutron network {network}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ObjectKey {
        ObjectKey::new("telco", "data")
    }

    fn conf(text: &str) -> Result<NetConfig, String> {
        parse_config(&key(), text).unwrap().1.expect("ours")
    }

    #[test]
    fn layer2_and_localnet_configs_read_as_ovn_kubernetes_writes_them() {
        let c = conf(
            r#"{"cniVersion": "1.1.0", "name": "data", "type": "stacknet-cni", "topology": "layer2",
                "subnets": "10.100.0.0/24, fd10::/64", "excludeSubnets": ["10.100.0.0/29"], "mtu": 1300,
                "netAttachDefName": "telco/data"}"#,
        )
        .unwrap();
        assert_eq!(c.topology, NetTopology::Layer2);
        assert_eq!(c.subnets.len(), 2);
        assert_eq!(c.exclude, vec!["10.100.0.0/29".parse().unwrap()]);
        assert_eq!(c.mtu, Some(1300));
        let c = conf(r#"{"name": "provider", "type": "stacknet-cni", "topology": "localnet", "vlanID": 200}"#).unwrap();
        assert_eq!(c.topology, NetTopology::Localnet { physnet: "provider".into(), vlan: Some(200) });
        assert!(c.subnets.is_empty(), "no IPAM");
        // A plugin list: the first plugin is the network.
        let c = conf(
            r#"{"name": "p", "plugins": [{"type": "stacknet-cni", "topology": "localnet", "physicalNetworkName": "physnet1"}, {"type": "tuning"}]}"#,
        )
        .unwrap();
        assert_eq!(c.topology, NetTopology::Localnet { physnet: "physnet1".into(), vlan: None });
        let c = conf(r#"{"name": "s", "type": "stacknet-cni", "neutronNetwork": "provider-net", "vnicType": "direct", "portSecurity": false}"#)
            .unwrap();
        assert!(matches!(c.topology, NetTopology::Neutron { vnic: VnicType::Direct, port_security: Some(false), .. }));
    }

    #[test]
    fn other_plugins_nads_are_not_ours_and_not_read() {
        // The multi-net-spec's own example.
        let (plugin, config) = parse_config(
            &key(),
            r#"{"cniVersion": "0.3.0", "type": "macvlan", "master": "eth0", "mode": "bridge",
                "ipam": {"type": "host-local", "subnet": "192.168.1.0/24"}}"#,
        )
        .unwrap();
        assert_eq!((plugin.as_str(), config), ("macvlan", None));
    }

    #[test]
    fn bad_configs_are_errors_naming_the_field() {
        let err = |t: &str| conf(t).unwrap_err();
        let base = r#""name": "d", "type": "stacknet-cni""#;
        assert!(err(&format!("{{{base}}}")).contains("spec.config.topology: required"));
        assert!(err(&format!(r#"{{{base}, "topology": "layer3"}}"#)).contains("spec.config.topology: \"layer3\""));
        assert!(
            err(&format!(r#"{{{base}, "topology": "layer2", "subnets": "10.1.0.0/33"}}"#))
                .contains("spec.config.subnets")
        );
        assert!(err(&format!(r#"{{{base}, "topology": "layer2", "subnets": "10.1.0.5/24"}}"#)).contains("host bits"));
        assert!(
            err(&format!(
                r#"{{{base}, "topology": "layer2", "subnets": "10.1.0.0/24", "excludeSubnets": "10.2.0.0/29"}}"#
            ))
            .contains("spec.config.excludeSubnets: 10.2.0.0/29 is not inside")
        );
        assert!(err(&format!(r#"{{{base}, "topology": "localnet", "vlanID": 4095}}"#)).contains("spec.config.vlanID"));
        assert!(err(&format!(r#"{{{base}, "topology": "layer2", "vlanID": 10}}"#)).contains("only a localnet"));
        assert!(err(&format!(r#"{{{base}, "topology": "layer2", "mtu": 100}}"#)).contains("spec.config.mtu"));
        assert!(
            err(&format!(r#"{{{base}, "topology": "layer2", "topolgy": "x"}}"#)).contains("spec.config.topolgy: not")
        );
        assert!(
            err(&format!(r#"{{{base}, "topology": "layer2", "ipam": {{"type": "host-local"}}}}"#))
                .contains("spec.config.ipam")
        );
        assert!(
            err(&format!(r#"{{{base}, "topology": "layer2", "netAttachDefName": "x/y"}}"#))
                .contains("netAttachDefName")
        );
        assert!(err(r#"{"type": "stacknet-cni", "topology": "layer2"}"#).contains("spec.config.name: required"));
        assert!(parse_config(&key(), "{").unwrap_err().contains("not valid JSON"));
        assert!(parse_config(&key(), r#"{"name": "x"}"#).unwrap_err().contains("spec.config.type: required"));
    }

    #[test]
    fn a_multi_network_policy_names_its_networks() {
        assert_eq!(
            policy_for("x", "data, other/provider").unwrap(),
            vec![ObjectKey::new("x", "data"), ObjectKey::new("other", "provider")]
        );
        assert!(policy_for("x", "data, Bad_Name").unwrap_err().contains("entry 1"));
        let api: MultiPolicyApi = serde_json::from_value(serde_json::json!({
            "apiVersion": MULTI_POLICY_API_VERSION, "kind": "MultiNetworkPolicy",
            "metadata": {"name": "p", "namespace": "x", "annotations": {POLICY_FOR_ANNOTATION: "data"}},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": [{"ipBlock": {"cidr": "10.1.0.0/33"}}]}]}
        }))
        .unwrap();
        let e = MultiNetworkPolicy::from_k8s(&api, &mut Vec::new()).unwrap_err();
        assert!(e.object.starts_with("MultiNetworkPolicy x/p"), "{e:?}");
        assert!(e.field.contains("ipBlock.cidr"), "{e:?}");
    }
}
