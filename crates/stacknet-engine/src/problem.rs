//! What could not be done, said on the object it concerns: the object reference, the reason
//! (one closed list, each with its wire name as Kubernetes Events carry it) and a message a
//! person can act on. The engine's IPAM, both backends and the controller all report through
//! [`Problem`]; the controller turns problems into Events.

use std::fmt;

use crate::objects::{Kind, ObjectKey};

/// What a problem or an Event is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectRef {
    /// A Kubernetes object (a cluster-scoped one has an empty namespace in its key).
    Object(Kind, ObjectKey),
    /// The network as a whole, by cluster id (with an API server its Events go on the
    /// controller's own pod).
    Cluster(String),
    /// A manifest file, by its path in the manifest folder.
    File(String),
    /// The manifest folder.
    Folder(String),
    /// An OpenStack object of ours that no Kubernetes object stands for (a peer set's security
    /// group, a pool's free port, a gone Service's load balancer), by its name or id.
    Cloud(CloudKind, String),
}

/// The kinds of OpenStack object a problem can be about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CloudKind {
    SecurityGroup,
    Port,
    FloatingIp,
    LoadBalancer,
}

impl CloudKind {
    pub fn name(self) -> &'static str {
        match self {
            CloudKind::SecurityGroup => "SecurityGroup",
            CloudKind::Port => "Port",
            CloudKind::FloatingIp => "FloatingIP",
            CloudKind::LoadBalancer => "LoadBalancer",
        }
    }
}

impl ObjectRef {
    pub fn object(kind: Kind, key: ObjectKey) -> ObjectRef {
        ObjectRef::Object(kind, key)
    }

    pub fn pod(key: &ObjectKey) -> ObjectRef {
        ObjectRef::Object(Kind::Pod, key.clone())
    }

    pub fn service(key: &ObjectKey) -> ObjectRef {
        ObjectRef::Object(Kind::Service, key.clone())
    }

    pub fn policy(key: &ObjectKey) -> ObjectRef {
        ObjectRef::Object(Kind::NetworkPolicy, key.clone())
    }

    pub fn node(name: &str) -> ObjectRef {
        ObjectRef::Object(Kind::Node, ObjectKey::new("", name))
    }

    pub fn namespace(name: &str) -> ObjectRef {
        ObjectRef::Object(Kind::Namespace, ObjectKey::new("", name))
    }

    /// The Kubernetes object, if it is one.
    pub fn as_object(&self) -> Option<(Kind, &ObjectKey)> {
        match self {
            ObjectRef::Object(kind, key) => Some((*kind, key)),
            _ => None,
        }
    }
}

/// `Pod ns/name`, `Node name`, `file path`, `Cluster id`, ...: how logs and `/events` show it.
impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectRef::Object(kind, key) if kind.is_cluster_scoped() || key.namespace.is_empty() => {
                write!(f, "{} {}", kind.name(), key.name)
            }
            ObjectRef::Object(kind, key) => write!(f, "{} {key}", kind.name()),
            ObjectRef::Cluster(id) => write!(f, "Cluster {id}"),
            ObjectRef::File(path) => write!(f, "file {path}"),
            ObjectRef::Folder(path) => write!(f, "folder {path}"),
            ObjectRef::Cloud(kind, name) => write!(f, "{} {name}", kind.name()),
        }
    }
}

/// Declares [`Reason`] with each reason's wire name, what it is said on, and what it means.
macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident: $on:literal, $meaning:literal;)*) => {
        /// Why something could not be done: the closed list of reasons stacknet's Events carry.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Reason {
            $($(#[$doc])* $name,)*
        }

        impl Reason {
            /// Every reason, in the order of the README's table.
            pub const ALL: &[Reason] = &[$(Reason::$name),*];

            /// The CamelCase name Events carry.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => stringify!($name),)*
                }
            }

            /// What it is said on.
            pub fn on(self) -> &'static str {
                match self {
                    $(Reason::$name => $on,)*
                }
            }

            /// What it means, and what stacknet does meanwhile.
            pub fn meaning(self) -> &'static str {
                match self {
                    $(Reason::$name => $meaning,)*
                }
            }
        }
    };
}

reasons! {
    InvalidManifest: "file",
        "a manifest file does not parse; its previous content stays in force";
    ManifestFolderUnreadable: "folder",
        "the manifest folder cannot be read; the network stays as it was";
    InvalidObject: "any watched object",
        "the API server served an object stacknet cannot use; it is ignored";
    InvalidNetworkPolicy: "NetworkPolicy",
        "the policy is invalid and is not enforced";
    PolicyWarning: "NetworkPolicy, MultiNetworkPolicy",
        "the policy is enforced, but a part of it is ignored as the API says (rules of a direction `policyTypes` does not list); a MultiNetworkPolicy without `k8s.v1.cni.cncf.io/policy-for` applies to no network";
    SubnetExhausted: "Pod",
        "its node's subnet has no free address; the pod gets no network until another pod on the node goes";
    ClusterCIDRExhausted: "Node",
        "no node subnet is left in the cluster CIDR; pods on the node get no network";
    NoGateway: "Node",
        "with `--external-cidr`: the node has no address in it (or the join CIDR is full), so it gets no gateway router; its pods reach the cluster, not beyond it";
    NodeUnknown: "Pod",
        "`spec.nodeName` names no Node the controller knows; the pod gets no network until it exists";
    NoNodeForAddress: "Pod",
        "unscheduled, and no Node's subnet holds the address its status shows";
    AddressConflict: "Pod",
        "its address is also used by a port stacknet does not manage (a VM's)";
    OvnUnreachable: "Cluster",
        "the OVN Northbound database cannot be reached; retried with backoff";
    OvnRejected: "Cluster",
        "the OVN Northbound database refused the transaction; retried with backoff";
    OpenStackUnreachable: "Cluster",
        "Keystone, Neutron or Octavia cannot be reached or did not answer in time; retried with backoff";
    OpenStackRejected: "Cluster",
        "OpenStack refused what the whole network needs (the pod network, the router); retried with backoff";
    NeutronUnreachable: "Pod, Node",
        "Neutron did not answer a call for this object; tried again";
    NeutronRejected: "the object concerned",
        "Neutron refused a call for this object; the rest of the network is made";
    QuotaExceeded: "Pod, Node",
        "the project's Neutron quota leaves no room for the port (or the pool's free ports)";
    NamespaceSubnetExhausted: "Namespace",
        "network per namespace: the cluster CIDR's subnet pool has no prefix left for the namespace";
    ProjectNotFound: "Namespace",
        "`stacknet.io/openstack-project` names no Keystone project; the namespace's pods get no port";
    ProjectAmbiguous: "Namespace",
        "`stacknet.io/openstack-project` names a project several domains have; name it by id";
    KeystoneRejected: "Namespace",
        "Keystone refused the lookup of the namespace's project";
    VlanExhausted: "Pod, Node",
        "nested node: every VLAN id of the node's trunk is in use";
    VlanConflict: "Pod, Node",
        "nested node: the VLAN id chosen was taken meanwhile; the next reconcile picks another";
    InvalidAnnotation: "Service",
        "a `stacknet.io/` annotation does not parse; the Service is load-balanced without it";
    UnsupportedByLoadBalancer: "Service",
        "Octavia's ovn provider cannot honour a field (session affinity, source ranges, `externalTrafficPolicy: Local`, an SCTP health check)";
    NodePortUnavailable: "Service",
        "a NodePort or LoadBalancer Service's `nodePort` is missing, outside 30000-32767, or taken by another Service: that port is not exposed";
    ExternalIPInvalid: "Service",
        "an `externalIPs` address (or the load balancer address asked for) lies in the cluster or Service CIDR: it is not exposed";
    LoadBalancerPoolExhausted: "Service",
        "no address of `--lb-pool` is free for a LoadBalancer Service: it gets none until one is";
    LoadBalancerIPUnavailable: "Service",
        "the address a LoadBalancer Service asks for (`spec.loadBalancerIP` or `stacknet.io/load-balancer-ip`) is outside `--lb-pool` or another Service's";
    InvalidSourceRange: "Service",
        "a `loadBalancerSourceRanges` entry is not a CIDR: the Service's external addresses accept nobody until it is fixed";
    NoServiceSubnet: "Cluster",
        "OpenStack mode without `--service-cidr`: Services get no load balancer";
    NoExternalNetwork: "Service",
        "a LoadBalancer Service, but no `--external-network` to take a floating IP from";
    InvalidNetworkAttachment: "NetworkAttachmentDefinition",
        "a `stacknet-cni` NAD's `spec.config` does not parse (the message names the field); pods selecting it get none of their secondary networks";
    AttachmentFailed: "Pod",
        "the pod's secondary networks (`k8s.v1.cni.cncf.io/networks`) cannot all be made — a missing or foreign NAD, an address outside the subnet or taken, a MAC clash; it gets none of them and its CNI ADD fails with the same message. In OpenStack mode the node agent posts it too (reporting controller `stacknet.io/agent`): no VM NIC on the port's network, a garbled or absent `network_data.json`, an SR-IOV port without the kubelet's `deviceID`";
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What could not be done for one object; the rest was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub object: ObjectRef,
    pub reason: Reason,
    pub message: String,
}

impl Problem {
    pub fn new(object: ObjectRef, reason: Reason, message: impl Into<String>) -> Problem {
        Problem { object, reason, message: message.into() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.reason, self.object, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_read_as_kubectl_names_them() {
        let shown: Vec<String> = [
            ObjectRef::pod(&ObjectKey::new("x", "a")),
            ObjectRef::node("n1"),
            ObjectRef::namespace("x"),
            ObjectRef::Cluster("c".into()),
            ObjectRef::File("pods.yaml".into()),
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(shown, ["Pod x/a", "Node n1", "Namespace x", "Cluster c", "file pods.yaml"]);
    }

    #[test]
    fn every_reason_has_a_distinct_camel_case_wire_name() {
        let mut names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert!(names.iter().all(|n| n.starts_with(|c: char| c.is_ascii_uppercase()) && !n.contains('_')));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
    }
}
