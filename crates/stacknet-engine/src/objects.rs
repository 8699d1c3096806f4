//! The validated, normalized form of the Kubernetes objects stacknet reads, and the conversion
//! from the `k8s-openapi` types. Conversion is where bad input is caught: every error names the
//! object and the field. Defaulting follows the API server (policyTypes, protocol TCP, the
//! `kubernetes.io/metadata.name` namespace label), so a manifest means what it would mean in a
//! cluster.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::error::Invalid;
use crate::labels::{Labels, Selector, validate_label_key, validate_label_value};
use crate::net::Cidr;

/// The label the API server puts on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The kinds of Kubernetes object the cluster index holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    NetworkPolicy,
    Service,
    EndpointSlice,
    NetworkAttachmentDefinition,
    MultiNetworkPolicy,
}

impl Kind {
    /// The Kubernetes kind's name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::NetworkAttachmentDefinition => "NetworkAttachmentDefinition",
            Kind::MultiNetworkPolicy => "MultiNetworkPolicy",
        }
    }

    /// The API group and version objects of this kind are served at.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Node | Kind::Pod | Kind::Service => "v1",
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::NetworkAttachmentDefinition => crate::multinet::NAD_API_VERSION,
            Kind::MultiNetworkPolicy => crate::multinet::MULTI_POLICY_API_VERSION,
        }
    }

    /// Namespaces and Nodes: their keys have an empty namespace.
    pub fn is_cluster_scoped(self) -> bool {
        matches!(self, Kind::Namespace | Kind::Node)
    }
}

/// `namespace/name` of a namespaced object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Parses `namespace/name`.
impl FromStr for ObjectKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(ObjectKey::new(ns, name))
            }
            _ => Err(format!("{s:?} is not namespace/name")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// Reads an API protocol field: absent means TCP, as the API server defaults it.
    fn from_api(value: Option<&str>, object: &str, field: &str) -> Result<Protocol, Invalid> {
        match value {
            None => Ok(Protocol::Tcp),
            Some(v) => v.parse().map_err(|e: String| Invalid::new(object, field, e)),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses `TCP`, `UDP` or `SCTP` (the API's spelling; lower case is accepted on the CLI side).
impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(format!("unsupported protocol {other:?} (expected TCP, UDP or SCTP)")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace {
    pub name: String,
    /// Always holds `kubernetes.io/metadata.name: <name>`.
    pub labels: Labels,
    /// The `stacknet.io/openstack-project` annotation: the Keystone project (name or id) the
    /// namespace's ports and network are made in (OpenStack mode).
    pub project: Option<String>,
}

impl Namespace {
    /// A namespace known only by name (no Namespace object): it carries the name label alone.
    pub fn implied(name: &str) -> Namespace {
        Namespace {
            name: name.to_string(),
            labels: Labels::from([(NAMESPACE_NAME_LABEL.into(), name.into())]),
            project: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pod {
    pub key: ObjectKey,
    pub uid: Option<String>,
    pub labels: Labels,
    /// The pod's addresses on the network, primary first: `status.podIPs` (or `status.podIP`)
    /// as read, or what the controller's IPAM gave it. Empty until the pod has an address.
    pub ips: Vec<IpAddr>,
    /// What the pod's status reports (`status.podIPs`), whatever the network gave it: an input
    /// to IPAM (an address the API server remembers is kept if it still fits).
    pub status_ips: Vec<IpAddr>,
    pub host_network: bool,
    pub ports: Vec<ContainerPort>,
    pub node: Option<String>,
    /// Phase Succeeded or Failed: the pod holds no address any more and takes no traffic.
    pub terminated: bool,
    /// The `stacknet.io/network` annotation as the API server has it (what the controller
    /// wrote back: the pod's addresses, MAC, gateways and logical port).
    pub network_annotation: Option<String>,
    /// The `k8s.v1.cni.cncf.io/networks` annotation: the secondary networks it selects (read
    /// by [`crate::multinet`]).
    pub networks_annotation: Option<String>,
    /// The `k8s.v1.cni.cncf.io/network-status` annotation as the API server has it (what the
    /// controller wrote back).
    pub network_status_annotation: Option<String>,
    /// The `stacknet.io/sriov-devices` annotation: the SR-IOV devices the node agent handed
    /// the pod's interfaces (written by the agent; the OpenStack backend binds their ports).
    pub sriov_devices_annotation: Option<String>,
}

/// The annotation the controller writes the pod's network into.
pub const NETWORK_ANNOTATION: &str = "stacknet.io/network";
/// A namespace's Keystone project (OpenStack mode).
pub const PROJECT_ANNOTATION: &str = "stacknet.io/openstack-project";
/// A Service's load balancer health monitor (OpenStack mode): `true`, or
/// `delay=5,timeout=3,retries=3,retries-down=3` (any of them; seconds and counts).
pub const HEALTH_MONITOR_ANNOTATION: &str = "stacknet.io/health-monitor";
/// On a Service of type LoadBalancer: the address it asks for (as `spec.loadBalancerIP`,
/// which is deprecated upstream).
pub const LOAD_BALANCER_IP_ANNOTATION: &str = "stacknet.io/load-balancer-ip";
/// `spec.sessionAffinityConfig.clientIP.timeoutSeconds` when unset (the API's default).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

impl Pod {
    /// Whether NetworkPolicy applies to the pod at all: hostNetwork pods are never selected
    /// (as targets or as peers), nor are pods that have terminated.
    pub fn is_policy_subject(&self) -> bool {
        !self.host_network && !self.terminated
    }

    /// The container port named `name` for `protocol`, as a named NetworkPolicy port resolves.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports.iter().find(|p| p.protocol == protocol && p.name.as_deref() == Some(name)).map(|p| p.port)
    }

    /// The pod's address of the same family as `other`, if it has one.
    pub fn ip_like(&self, other: IpAddr) -> Option<IpAddr> {
        self.ips.iter().copied().find(|ip| ip.is_ipv4() == other.is_ipv4())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortMatch {
    /// Every port of the protocol (`port` omitted).
    Any,
    /// `port` .. `endPort` inclusive (a single port has `from == to`).
    Range { from: u16, to: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyPortSpec {
    Numbers(PortMatch),
    /// A named port, resolved on the destination pod's container ports.
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyPort {
    pub protocol: Protocol,
    pub port: PolicyPortSpec,
}

impl PolicyPort {
    /// Whether traffic to `port`/`protocol` on pod `dest` (when the destination is a pod) matches.
    pub fn matches(&self, port: u16, protocol: Protocol, dest: Option<&Pod>) -> bool {
        if self.protocol != protocol {
            return false;
        }
        match &self.port {
            PolicyPortSpec::Numbers(PortMatch::Any) => true,
            PolicyPortSpec::Numbers(PortMatch::Range { from, to }) => (*from..=*to).contains(&port),
            PolicyPortSpec::Named(name) => dest.and_then(|d| d.named_port(name, protocol)) == Some(port),
        }
    }
}

/// Where the pods of a pod peer may live.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NamespaceScope {
    /// The policy's own namespace (a peer with `podSelector` alone).
    Named(String),
    /// Namespaces matching `namespaceSelector`.
    Selected(Selector),
}

/// A set of pods defined by a pair of selectors: the unit the compiled model shares between rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerSelector {
    pub namespaces: NamespaceScope,
    pub pods: Selector,
}

impl fmt::Display for PeerSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespaces {
            NamespaceScope::Named(ns) => write!(f, "namespace {ns}")?,
            NamespaceScope::Selected(s) => write!(f, "namespaces {s}")?,
        }
        write!(f, ", pods {}", self.pods)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpBlock {
    pub cidr: Cidr,
    pub except: Vec<Cidr>,
}

impl IpBlock {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }
}

impl fmt::Display for IpBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cidr)?;
        for e in &self.except {
            write!(f, " except {e}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    Pods(PeerSelector),
    IpBlock(IpBlock),
}

/// One ingress or egress rule. Empty `peers` means every source/destination (the list was
/// missing or empty); empty `ports` means every port and protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PolicyRule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PolicyPort>,
}

impl PolicyRule {
    pub fn ports_match(&self, port: u16, protocol: Protocol, dest: Option<&Pod>) -> bool {
        self.ports.is_empty() || self.ports.iter().any(|p| p.matches(port, protocol, dest))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetworkPolicy {
    pub key: ObjectKey,
    pub uid: Option<String>,
    pub pod_selector: Selector,
    /// `None` when the policy does not govern ingress (policyTypes lacks Ingress).
    pub ingress: Option<Vec<PolicyRule>>,
    /// `None` when the policy does not govern egress (policyTypes lacks Egress, after defaulting).
    pub egress: Option<Vec<PolicyRule>>,
}

impl NetworkPolicy {
    /// The rules for a direction, `None` when the policy does not govern it.
    pub fn rules(&self, d: Direction) -> Option<&[PolicyRule]> {
        match d {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServicePort {
    pub name: Option<String>,
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: TargetPort,
    /// `nodePort` (NodePort and LoadBalancer Services; the API server allocates it).
    pub node_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Service {
    pub key: ObjectKey,
    pub uid: Option<String>,
    /// `spec.type`, defaulted to ClusterIP.
    pub service_type: String,
    /// ClusterIPs; empty for headless services and services not yet allocated.
    pub cluster_ips: Vec<IpAddr>,
    pub selector: Option<Labels>,
    pub ports: Vec<ServicePort>,
    /// Fields a load balancer may or may not honour, as set (absent: unset): backends report
    /// the ones they cannot, never drop them silently.
    pub session_affinity: Option<String>,
    pub external_traffic_policy: Option<String>,
    pub load_balancer_source_ranges: Vec<String>,
    /// The `stacknet.io/health-monitor` annotation, as written (the backend that honours it
    /// parses it, and reports a bad one on the Service).
    pub health_monitor: Option<String>,
    /// `spec.sessionAffinityConfig.clientIP.timeoutSeconds` with ClientIP affinity.
    pub affinity_timeout: Option<u32>,
    /// `spec.internalTrafficPolicy` when not Cluster.
    pub internal_traffic_policy: Option<String>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// The address a LoadBalancer Service asks for: `spec.loadBalancerIP`, else the
    /// `stacknet.io/load-balancer-ip` annotation.
    pub load_balancer_ip: Option<IpAddr>,
    /// `spec.loadBalancerClass` (another class: another implementation's Service).
    pub load_balancer_class: Option<String>,
    /// `status.loadBalancer.ingress[].ip`: what was given to it before.
    pub ingress_ips: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addresses: Vec<IpAddr>,
    /// Unset readiness means ready, as the API documents.
    pub ready: bool,
    pub pod: Option<ObjectKey>,
    /// `nodeName`: where the endpoint runs (traffic policies `Local` need it).
    pub node: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointPort {
    pub name: Option<String>,
    pub protocol: Protocol,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointSlice {
    pub key: ObjectKey,
    pub service: Option<String>,
    pub address_type: String,
    pub endpoints: Vec<Endpoint>,
    pub ports: Vec<EndpointPort>,
}

/// A node pods run on: a logical switch of its own in OVN mode, its pod subnets from
/// `spec.podCIDRs` when the cluster allocates them (else from stacknet's IPAM).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Node {
    pub name: String,
    pub uid: Option<String>,
    pub labels: Labels,
    /// `spec.podCIDRs` (or `spec.podCIDR`), as the API server holds them.
    pub pod_cidrs: Vec<Cidr>,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    /// `spec.providerID`: for a Nova VM, `openstack:///<server id>` (the OpenStack backend
    /// finds the VM's trunk by it).
    pub provider_id: Option<String>,
    /// The node's own addresses (`status.addresses`: every `InternalIP`, then every
    /// `ExternalIP`), where host-network endpoints listen, and
    /// what pod traffic leaving the cluster is translated to.
    pub addresses: Vec<IpAddr>,
}

impl Node {
    /// The Nova server the node is, from an `openstack://[region]/<server id>` provider ID.
    pub fn openstack_server(&self) -> Option<&str> {
        let rest = self.provider_id.as_deref()?.strip_prefix("openstack://")?;
        let id = rest.rsplit('/').next()?;
        (!id.is_empty()).then_some(id)
    }
}

/// An object of a kind the index holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClusterObject {
    Namespace(Namespace),
    Node(Node),
    Pod(Pod),
    NetworkPolicy(NetworkPolicy),
    Service(Service),
    EndpointSlice(EndpointSlice),
    NetworkAttachmentDefinition(crate::multinet::NetworkAttachmentDefinition),
    MultiNetworkPolicy(crate::multinet::MultiNetworkPolicy),
}

impl ClusterObject {
    /// What a delete of this object names (Namespaces and Nodes: the name, no namespace).
    pub fn id(&self) -> (Kind, ObjectKey) {
        match self {
            ClusterObject::Namespace(n) => (Kind::Namespace, ObjectKey::new("", n.name.clone())),
            ClusterObject::Node(n) => (Kind::Node, ObjectKey::new("", n.name.clone())),
            ClusterObject::Pod(p) => (Kind::Pod, p.key.clone()),
            ClusterObject::NetworkPolicy(p) => (Kind::NetworkPolicy, p.key.clone()),
            ClusterObject::Service(s) => (Kind::Service, s.key.clone()),
            ClusterObject::EndpointSlice(e) => (Kind::EndpointSlice, e.key.clone()),
            ClusterObject::NetworkAttachmentDefinition(n) => (Kind::NetworkAttachmentDefinition, n.key.clone()),
            ClusterObject::MultiNetworkPolicy(p) => (Kind::MultiNetworkPolicy, p.policy.key.clone()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Conversion from the API types.

/// Reads `metadata`: the name is required; a missing namespace means `default`, as kubectl does.
pub(crate) fn namespaced(kind: &str, meta: &ObjectMeta) -> Result<(ObjectKey, String), Invalid> {
    let name = meta.name.clone().filter(|n| !n.is_empty());
    let namespace = meta.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into());
    let Some(name) = name else {
        return Err(Invalid::new(format!("{kind} in namespace {namespace}"), "metadata.name", "is required"));
    };
    let key = ObjectKey::new(namespace, name);
    let object = format!("{kind} {key}");
    validate_dns_label(&key.namespace).map_err(|m| Invalid::new(&object, "metadata.namespace", m))?;
    validate_object_name(&key.name).map_err(|m| Invalid::new(&object, "metadata.name", m))?;
    Ok((key, object))
}

fn validate_dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok { Ok(()) } else { Err(format!("{s:?} is not a DNS label (lowercase letters, digits, '-', at most 63)")) }
}

fn validate_object_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!("{s:?} is not a valid name (lowercase letters, digits, '-' and '.', at most 253)"))
    }
}

fn labels_of(meta: &ObjectMeta, object: &str) -> Result<Labels, Invalid> {
    let labels = meta.labels.clone().unwrap_or_default();
    for (k, v) in &labels {
        validate_label_key(k).map_err(|m| Invalid::new(object, "metadata.labels", format!("key {k:?}: {m}")))?;
        validate_label_value(v)
            .map_err(|m| Invalid::new(object, format!("metadata.labels.{k}"), format!("value {v:?}: {m}")))?;
    }
    Ok(labels)
}

fn port_number(value: i32, object: &str, field: &str) -> Result<u16, Invalid> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| Invalid::new(object, field, format!("{value} is not a port number (1-65535)")))
}

/// An IANA service name, the syntax of named ports: 1-15 characters of lowercase letters, digits
/// and '-', at least one letter, no leading, trailing or doubled '-'.
pub fn validate_port_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && s.bytes().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--");
    if ok {
        Ok(())
    } else if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) {
        Err(format!("{s:?} is a quoted number: write the port without quotes, or use a port name"))
    } else {
        Err(format!("{s:?} is not a port name (1-15 lowercase letters, digits and '-', with at least one letter)"))
    }
}

fn annotation(meta: &ObjectMeta, key: &str) -> Option<String> {
    meta.annotations.as_ref().and_then(|a| a.get(key)).map(|v| v.trim().to_string())
}

fn parse_ip(s: &str, object: &str, field: &str) -> Result<IpAddr, Invalid> {
    s.parse().map_err(|_| Invalid::new(object, field, format!("{s:?} is not an IP address")))
}

impl Namespace {
    pub fn from_k8s(ns: &core::Namespace) -> Result<Namespace, Invalid> {
        let name = ns.metadata.name.clone().unwrap_or_default();
        let object = format!("Namespace {name}");
        if name.is_empty() {
            return Err(Invalid::new("Namespace", "metadata.name", "is required"));
        }
        validate_dns_label(&name).map_err(|m| Invalid::new(&object, "metadata.name", m))?;
        let mut labels = labels_of(&ns.metadata, &object)?;
        // The API server sets this label on every namespace and keeps it equal to the name.
        labels.insert(NAMESPACE_NAME_LABEL.into(), name.clone());
        let project = annotation(&ns.metadata, PROJECT_ANNOTATION);
        if let Some(p) = &project
            && (p.is_empty() || p.len() > 64)
        {
            return Err(Invalid::new(
                &object,
                format!("metadata.annotations[\"{PROJECT_ANNOTATION}\"]"),
                format!("{p:?} is not a Keystone project name or id (1 to 64 characters)"),
            ));
        }
        Ok(Namespace { name, labels, project })
    }
}

impl Node {
    pub fn from_k8s(node: &core::Node) -> Result<Node, Invalid> {
        let name = node.metadata.name.clone().unwrap_or_default();
        if name.is_empty() {
            return Err(Invalid::new("Node", "metadata.name", "is required"));
        }
        let object = format!("Node {name}");
        validate_object_name(&name).map_err(|m| Invalid::new(&object, "metadata.name", m))?;
        let labels = labels_of(&node.metadata, &object)?;
        let spec = node.spec.as_ref();
        let mut pod_cidrs = Vec::new();
        let listed = spec.and_then(|s| s.pod_cidrs.clone()).filter(|l| !l.is_empty());
        let (texts, field) = match listed {
            Some(l) => (l, "spec.podCIDRs"),
            None => (spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect(), "spec.podCIDR"),
        };
        for (i, t) in texts.iter().enumerate() {
            let c: Cidr =
                t.parse().map_err(|e| Invalid::new(&object, format!("{field}[{i}]"), format!("{t:?}: {e}")))?;
            if pod_cidrs.iter().any(|o: &Cidr| o.network().is_ipv4() == c.network().is_ipv4()) {
                return Err(Invalid::new(&object, format!("{field}[{i}]"), "at most one CIDR per IP family"));
            }
            pod_cidrs.push(c);
        }
        Ok(Node {
            name,
            uid: node.metadata.uid.clone(),
            labels,
            pod_cidrs,
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            provider_id: spec.and_then(|s| s.provider_id.clone()).filter(|p| !p.is_empty()),
            addresses: node_addresses(node, &object)?,
        })
    }
}

/// A Node's `InternalIP` addresses, then its `ExternalIP` ones, each once.
fn node_addresses(node: &core::Node, object: &str) -> Result<Vec<IpAddr>, Invalid> {
    let listed = node.status.as_ref().and_then(|s| s.addresses.as_ref()).map(Vec::as_slice).unwrap_or_default();
    let mut out: Vec<IpAddr> = Vec::new();
    for kind in ["InternalIP", "ExternalIP"] {
        for (i, a) in listed.iter().enumerate().filter(|(_, a)| a.type_ == kind) {
            let ip: IpAddr = a.address.parse().map_err(|_| {
                Invalid::new(
                    object,
                    format!("status.addresses[{i}].address"),
                    format!("{:?} is not an IP address", a.address),
                )
            })?;
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    Ok(out)
}

impl Pod {
    pub fn from_k8s(pod: &core::Pod) -> Result<Pod, Invalid> {
        let (key, object) = namespaced("Pod", &pod.metadata)?;
        let labels = labels_of(&pod.metadata, &object)?;
        let spec = pod.spec.as_ref();
        let mut ports = Vec::new();
        for (ci, c) in spec.map(|s| s.containers.as_slice()).unwrap_or_default().iter().enumerate() {
            for (pi, p) in c.ports.iter().flatten().enumerate() {
                let field = format!("spec.containers[{ci}].ports[{pi}]");
                let port = port_number(p.container_port, &object, &format!("{field}.containerPort"))?;
                let protocol = Protocol::from_api(p.protocol.as_deref(), &object, &format!("{field}.protocol"))?;
                if let Some(name) = &p.name {
                    validate_port_name(name).map_err(|m| Invalid::new(&object, format!("{field}.name"), m))?;
                }
                ports.push(ContainerPort { name: p.name.clone(), port, protocol });
            }
        }
        let status = pod.status.as_ref();
        let mut ips = Vec::new();
        match status.and_then(|s| s.pod_ips.as_ref()).filter(|l| !l.is_empty()) {
            Some(list) => {
                for (i, ip) in list.iter().enumerate() {
                    ips.push(parse_ip(&ip.ip, &object, &format!("status.podIPs[{i}].ip"))?);
                }
            }
            None => {
                if let Some(ip) = status.and_then(|s| s.pod_ip.as_deref()).filter(|s| !s.is_empty()) {
                    ips.push(parse_ip(ip, &object, "status.podIP")?);
                }
            }
        }
        let phase = status.and_then(|s| s.phase.as_deref());
        Ok(Pod {
            key,
            uid: pod.metadata.uid.clone(),
            labels,
            status_ips: ips.clone(),
            ips,
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            ports,
            node: spec.and_then(|s| s.node_name.clone()),
            terminated: matches!(phase, Some("Succeeded" | "Failed")),
            network_annotation: pod.metadata.annotations.as_ref().and_then(|a| a.get(NETWORK_ANNOTATION).cloned()),
            networks_annotation: pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(crate::multinet::NETWORKS_ANNOTATION).cloned()),
            network_status_annotation: pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(crate::multinet::NETWORK_STATUS_ANNOTATION).cloned()),
            sriov_devices_annotation: pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(crate::multinet::SRIOV_DEVICES_ANNOTATION).cloned()),
        })
    }
}

impl NetworkPolicy {
    /// Validates and normalizes a policy. `warnings` receives what is legal but probably not
    /// what the author meant (rules that policyTypes makes inert).
    pub fn from_k8s(np: &networking::NetworkPolicy, warnings: &mut Vec<String>) -> Result<NetworkPolicy, Invalid> {
        let (key, object) = namespaced("NetworkPolicy", &np.metadata)?;
        let Some(spec) = np.spec.as_ref() else {
            return Err(Invalid::new(&object, "spec", "is required"));
        };
        let pod_selector = match &spec.pod_selector {
            Some(s) => Selector::from_k8s(s, &object, "spec.podSelector")?,
            None => Selector::everything(),
        };
        let (mut ingress_type, mut egress_type) = (false, false);
        match spec.policy_types.as_deref() {
            // The API server's defaulting: Ingress always, Egress when egress rules exist.
            None | Some([]) => {
                ingress_type = true;
                egress_type = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
            }
            Some(types) => {
                for (i, t) in types.iter().enumerate() {
                    match t.as_str() {
                        "Ingress" => ingress_type = true,
                        "Egress" => egress_type = true,
                        other => {
                            return Err(Invalid::new(
                                &object,
                                format!("spec.policyTypes[{i}]"),
                                format!("unknown policy type {other:?} (expected Ingress or Egress)"),
                            ));
                        }
                    }
                }
            }
        }
        let mut ingress = Vec::new();
        for (i, r) in spec.ingress.iter().flatten().enumerate() {
            let field = format!("spec.ingress[{i}]");
            ingress.push(convert_rule(&key.namespace, r.from.as_deref(), r.ports.as_deref(), &object, &field, "from")?);
        }
        let mut egress = Vec::new();
        for (i, r) in spec.egress.iter().flatten().enumerate() {
            let field = format!("spec.egress[{i}]");
            egress.push(convert_rule(&key.namespace, r.to.as_deref(), r.ports.as_deref(), &object, &field, "to")?);
        }
        if !ingress_type && !ingress.is_empty() {
            warnings.push(format!("{object}: spec.ingress: ignored, spec.policyTypes does not list Ingress"));
        }
        if !egress_type && !egress.is_empty() {
            warnings.push(format!("{object}: spec.egress: ignored, spec.policyTypes does not list Egress"));
        }
        Ok(NetworkPolicy {
            key,
            uid: np.metadata.uid.clone(),
            pod_selector,
            ingress: ingress_type.then_some(ingress),
            egress: egress_type.then_some(egress),
        })
    }
}

fn convert_rule(
    namespace: &str,
    peers: Option<&[networking::NetworkPolicyPeer]>,
    ports: Option<&[networking::NetworkPolicyPort]>,
    object: &str,
    field: &str,
    peers_name: &str,
) -> Result<PolicyRule, Invalid> {
    let mut rule = PolicyRule::default();
    for (i, p) in peers.unwrap_or_default().iter().enumerate() {
        let field = format!("{field}.{peers_name}[{i}]");
        rule.peers.push(convert_peer(namespace, p, object, &field)?);
    }
    for (i, p) in ports.unwrap_or_default().iter().enumerate() {
        let field = format!("{field}.ports[{i}]");
        rule.ports.push(convert_port(p, object, &field)?);
    }
    Ok(rule)
}

fn convert_peer(
    namespace: &str,
    peer: &networking::NetworkPolicyPeer,
    object: &str,
    field: &str,
) -> Result<Peer, Invalid> {
    match (&peer.ip_block, &peer.namespace_selector, &peer.pod_selector) {
        (Some(block), None, None) => convert_ip_block(block, object, &format!("{field}.ipBlock")).map(Peer::IpBlock),
        (Some(_), _, _) => Err(Invalid::new(
            object,
            field,
            "ipBlock cannot be combined with podSelector or namespaceSelector in one peer",
        )),
        (None, None, None) => {
            Err(Invalid::new(object, field, "a peer needs podSelector, namespaceSelector or ipBlock"))
        }
        (None, ns, pods) => {
            let namespaces = match ns {
                Some(s) => {
                    NamespaceScope::Selected(Selector::from_k8s(s, object, &format!("{field}.namespaceSelector"))?)
                }
                None => NamespaceScope::Named(namespace.to_string()),
            };
            let pods = match pods {
                Some(s) => Selector::from_k8s(s, object, &format!("{field}.podSelector"))?,
                None => Selector::everything(),
            };
            Ok(Peer::Pods(PeerSelector { namespaces, pods }))
        }
    }
}

fn convert_ip_block(block: &networking::IPBlock, object: &str, field: &str) -> Result<IpBlock, Invalid> {
    let cidr: Cidr = block.cidr.parse().map_err(|e| Invalid::new(object, format!("{field}.cidr"), format!("{e}")))?;
    let mut except = Vec::new();
    for (i, e) in block.except.iter().flatten().enumerate() {
        let f = format!("{field}.except[{i}]");
        let e: Cidr = e.parse().map_err(|err| Invalid::new(object, &f, format!("{err}")))?;
        if !cidr.covers(&e) || e.prefix_len() == cidr.prefix_len() {
            return Err(Invalid::new(object, &f, format!("{e} must be a strict subset of cidr {cidr}")));
        }
        except.push(e);
    }
    except.sort();
    except.dedup();
    Ok(IpBlock { cidr, except })
}

fn convert_port(p: &networking::NetworkPolicyPort, object: &str, field: &str) -> Result<PolicyPort, Invalid> {
    let protocol = Protocol::from_api(p.protocol.as_deref(), object, &format!("{field}.protocol"))?;
    let port = match (&p.port, p.end_port) {
        (None, None) => PolicyPortSpec::Numbers(PortMatch::Any),
        (None, Some(_)) => return Err(Invalid::new(object, format!("{field}.endPort"), "endPort requires port")),
        (Some(IntOrString::Int(n)), end) => {
            let from = port_number(*n, object, &format!("{field}.port"))?;
            let to = match end {
                None => from,
                Some(e) => {
                    let to = port_number(e, object, &format!("{field}.endPort"))?;
                    if to < from {
                        return Err(Invalid::new(
                            object,
                            format!("{field}.endPort"),
                            format!("endPort {to} is lower than port {from}"),
                        ));
                    }
                    to
                }
            };
            PolicyPortSpec::Numbers(PortMatch::Range { from, to })
        }
        (Some(IntOrString::String(_)), Some(_)) => {
            return Err(Invalid::new(object, format!("{field}.endPort"), "endPort requires a numeric port"));
        }
        (Some(IntOrString::String(name)), None) => {
            validate_port_name(name).map_err(|m| Invalid::new(object, format!("{field}.port"), m))?;
            PolicyPortSpec::Named(name.clone())
        }
    };
    Ok(PolicyPort { protocol, port })
}

impl Service {
    pub fn from_k8s(svc: &core::Service) -> Result<Service, Invalid> {
        let (key, object) = namespaced("Service", &svc.metadata)?;
        let spec = svc.spec.clone().unwrap_or_default();
        let mut cluster_ips = Vec::new();
        let ips = spec.cluster_ips.clone().unwrap_or_default();
        let ips = if ips.is_empty() { spec.cluster_ip.clone().into_iter().collect() } else { ips };
        for (i, ip) in ips.iter().enumerate() {
            if ip.is_empty() || ip == "None" {
                continue;
            }
            cluster_ips.push(parse_ip(ip, &object, &format!("spec.clusterIPs[{i}]"))?);
        }
        let mut ports = Vec::new();
        for (i, p) in spec.ports.iter().flatten().enumerate() {
            let field = format!("spec.ports[{i}]");
            let port = port_number(p.port, &object, &format!("{field}.port"))?;
            let protocol = Protocol::from_api(p.protocol.as_deref(), &object, &format!("{field}.protocol"))?;
            let target_port = match &p.target_port {
                None => TargetPort::Number(port),
                Some(IntOrString::Int(n)) => {
                    TargetPort::Number(port_number(*n, &object, &format!("{field}.targetPort"))?)
                }
                Some(IntOrString::String(s)) => {
                    validate_port_name(s).map_err(|m| Invalid::new(&object, format!("{field}.targetPort"), m))?;
                    TargetPort::Name(s.clone())
                }
            };
            let node_port = p.node_port.map(|n| port_number(n, &object, &format!("{field}.nodePort"))).transpose()?;
            ports.push(ServicePort { name: p.name.clone(), protocol, port, target_port, node_port });
        }
        let mut external_ips = Vec::new();
        for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
            external_ips.push(parse_ip(ip, &object, &format!("spec.externalIPs[{i}]"))?);
        }
        let load_balancer_ip = match spec.load_balancer_ip.as_deref().filter(|s| !s.is_empty()) {
            Some(ip) => Some(parse_ip(ip, &object, "spec.loadBalancerIP")?),
            None => annotation(&svc.metadata, LOAD_BALANCER_IP_ANNOTATION)
                .map(|ip| parse_ip(&ip, &object, &format!("metadata.annotations[\"{LOAD_BALANCER_IP_ANNOTATION}\"]")))
                .transpose()?,
        };
        let ingress_ips = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .map(|i| i.iter().filter_map(|g| g.ip.as_deref().and_then(|ip| ip.parse().ok())).collect())
            .unwrap_or_default();
        let session_affinity = spec.session_affinity.clone().filter(|a| a != "None");
        let affinity_timeout = session_affinity.as_ref().map(|_| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
        });
        Ok(Service {
            key,
            uid: svc.metadata.uid.clone(),
            service_type: spec.type_.unwrap_or_else(|| "ClusterIP".into()),
            cluster_ips,
            selector: spec.selector,
            ports,
            session_affinity,
            external_traffic_policy: spec.external_traffic_policy.filter(|p| p != "Cluster"),
            load_balancer_source_ranges: spec.load_balancer_source_ranges.unwrap_or_default(),
            health_monitor: annotation(&svc.metadata, HEALTH_MONITOR_ANNOTATION),
            affinity_timeout,
            internal_traffic_policy: spec.internal_traffic_policy.filter(|p| p != "Cluster"),
            external_ips,
            load_balancer_ip,
            load_balancer_class: spec.load_balancer_class.filter(|c| !c.is_empty()),
            ingress_ips,
        })
    }
}

impl EndpointSlice {
    pub fn from_k8s(slice: &discovery::EndpointSlice) -> Result<EndpointSlice, Invalid> {
        let (key, object) = namespaced("EndpointSlice", &slice.metadata)?;
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6" | "FQDN") {
            return Err(Invalid::new(
                &object,
                "addressType",
                format!("{:?} is not IPv4, IPv6 or FQDN", slice.address_type),
            ));
        }
        let mut endpoints = Vec::new();
        for (i, e) in slice.endpoints.iter().enumerate() {
            let mut addresses = Vec::new();
            if slice.address_type != "FQDN" {
                for (j, a) in e.addresses.iter().enumerate() {
                    addresses.push(parse_ip(a, &object, &format!("endpoints[{i}].addresses[{j}]"))?);
                }
            }
            let pod = e.target_ref.as_ref().filter(|r| r.kind.as_deref() == Some("Pod")).and_then(|r| {
                Some(ObjectKey::new(r.namespace.clone().unwrap_or_else(|| key.namespace.clone()), r.name.clone()?))
            });
            endpoints.push(Endpoint {
                addresses,
                ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
                pod,
                node: e.node_name.clone().filter(|n| !n.is_empty()),
            });
        }
        let mut ports = Vec::new();
        for (i, p) in slice.ports.iter().flatten().enumerate() {
            let field = format!("ports[{i}]");
            let port = p.port.map(|n| port_number(n, &object, &format!("{field}.port"))).transpose()?;
            let protocol = Protocol::from_api(p.protocol.as_deref(), &object, &format!("{field}.protocol"))?;
            ports.push(EndpointPort { name: p.name.clone(), protocol, port });
        }
        Ok(EndpointSlice {
            service: slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL).cloned()),
            key,
            address_type: slice.address_type.clone(),
            endpoints,
            ports,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(provider_id: Option<&str>) -> Node {
        Node {
            name: "n".into(),
            uid: None,
            labels: Labels::default(),
            pod_cidrs: Vec::new(),
            unschedulable: false,
            provider_id: provider_id.map(str::to_string),
            addresses: Vec::new(),
        }
    }

    #[test]
    fn a_nodes_addresses_are_its_internal_then_external_ips() {
        let yaml = r#"{"metadata":{"name":"n1"},"status":{"addresses":[
            {"type":"Hostname","address":"n1"},{"type":"ExternalIP","address":"203.0.113.7"},
            {"type":"InternalIP","address":"192.168.10.11"},{"type":"InternalIP","address":"fd00::11"},
            {"type":"ExternalIP","address":"192.168.10.11"}]}}"#;
        let n = Node::from_k8s(&serde_json::from_str(yaml).unwrap()).unwrap();
        let want: Vec<IpAddr> =
            ["192.168.10.11", "fd00::11", "203.0.113.7"].iter().map(|a| a.parse().unwrap()).collect();
        assert_eq!(n.addresses, want);
        let bad = r#"{"metadata":{"name":"n1"},"status":{"addresses":[{"type":"InternalIP","address":"node-1"}]}}"#;
        let e = Node::from_k8s(&serde_json::from_str(bad).unwrap()).unwrap_err().to_string();
        assert!(e.contains("Node n1") && e.contains("status.addresses[0].address"), "{e}");
    }

    #[test]
    fn the_nova_server_of_a_node_comes_from_its_provider_id() {
        assert_eq!(node(Some("openstack:///6f1c0b7e")).openstack_server(), Some("6f1c0b7e"));
        assert_eq!(node(Some("openstack://RegionOne/6f1c0b7e")).openstack_server(), Some("6f1c0b7e"));
        assert_eq!(node(Some("openstack:///")).openstack_server(), None);
        assert_eq!(node(Some("aws:///eu-west-1a/i-0abc")).openstack_server(), None);
        assert_eq!(node(None).openstack_server(), None);
        let parsed: core::Node = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "n"}, "spec": {"providerID": "openstack:///abc"}}),
        )
        .unwrap();
        assert_eq!(Node::from_k8s(&parsed).unwrap().openstack_server(), Some("abc"));
    }

    #[test]
    fn annotations_for_openstack_mode() {
        let ns = |annotations: serde_json::Value| -> Result<Namespace, Invalid> {
            let k: core::Namespace =
                serde_json::from_value(serde_json::json!({"metadata": {"name": "ta", "annotations": annotations}}))
                    .unwrap();
            Namespace::from_k8s(&k)
        };
        assert_eq!(ns(serde_json::json!({})).unwrap().project, None);
        assert_eq!(ns(serde_json::json!({PROJECT_ANNOTATION: " team-a "})).unwrap().project.as_deref(), Some("team-a"));
        let e = ns(serde_json::json!({PROJECT_ANNOTATION: ""})).unwrap_err().to_string();
        assert!(e.contains("Namespace ta"), "{e}");
        assert!(e.contains("metadata.annotations[\"stacknet.io/openstack-project\"]"), "{e}");
        let long = "p".repeat(65);
        assert!(ns(serde_json::json!({PROJECT_ANNOTATION: long})).is_err());
        let svc: core::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "x", "annotations": {HEALTH_MONITOR_ANNOTATION: "delay=3"}},
            "spec": {"ports": [{"port": 80}]}
        }))
        .unwrap();
        assert_eq!(Service::from_k8s(&svc).unwrap().health_monitor.as_deref(), Some("delay=3"));
    }
}
