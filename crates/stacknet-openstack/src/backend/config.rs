//! The backend's settings, and how it names and marks what it makes: every object of ours
//! carries the description marker `stacknet:<cluster>:<identity>` (written with the object,
//! so it proves ownership even before tags are set) and the tag `stacknet.io/cluster=<cluster>`
//! (which makes our objects cheap to list).

use stacknet_engine::Cidr;

use crate::secgroups::Family;

#[derive(Debug, Clone)]
pub struct NeutronConfig {
    /// Tags and descriptions name it; two clusters can share a project.
    pub cluster: String,
    /// The pod network's subnets (one per address family in use).
    pub pod_cidrs: Vec<Cidr>,
    /// The cluster's Service CIDR: a network of its own on the cluster router, where Octavia
    /// puts the VIPs (the ClusterIPs). Its gateway is its last address: the first is usually
    /// the `kubernetes` Service's.
    pub service_cidr: Option<Cidr>,
    /// Free ports kept ready per node (and network), so that a pod start is one call: the
    /// port is taken and given its name, owner and groups. 0: no pools.
    pub pool_size: usize,
    /// The external network (name or id) LoadBalancer Services take floating IPs from; the
    /// cluster router's gateway is put on it.
    pub external_network: Option<String>,
    /// How long what the backend knows of Neutron is trusted before it is read again (it is
    /// read again at once after a call whose outcome is unknown).
    pub resync: std::time::Duration,
    /// A network per namespace (its subnets cut by Neutron from subnet pools of the pod
    /// CIDRs, all on the cluster router) instead of one shared pod network.
    pub network_per_namespace: bool,
    /// The IPv4 prefix length of a namespace's subnet (IPv6: /64).
    pub namespace_prefix_len: u8,
    /// What pods selecting other plugins' NetworkAttachmentDefinitions get (`--multus`:
    /// Multus attaches those; without, such a pod is refused its secondary networks).
    pub foreign: stacknet_engine::multinet::Foreign,
}

/// Identities of the objects that stand for no Kubernetes object (a subnet's is its CIDR's).
pub(super) const NETWORK_ID: &str = "network:pods";
pub(super) const SERVICE_NETWORK_ID: &str = "network:services";
/// A namespace's network (`network:ns:<name>`), and the subnet pools (`subnetpool:<cidr>`).
pub(super) const NAMESPACE_NETWORK_PREFIX: &str = "network:ns:";
pub(super) const SUBNET_POOL_PREFIX: &str = "subnetpool:";
pub(super) const ROUTER_ID: &str = "router:cluster";
/// Free ports' identity.
pub(super) const POOL_ID: &str = "pool";
/// A pod's secondary interface's port: `attach:<ns>/<pod>/<interface>@<nad ns>/<nad name>`.
pub(super) const ATTACHMENT_PREFIX: &str = "attach:";

impl NeutronConfig {
    pub fn new(cluster: impl Into<String>, pod_cidrs: Vec<Cidr>) -> NeutronConfig {
        NeutronConfig {
            cluster: cluster.into(),
            pod_cidrs,
            service_cidr: None,
            pool_size: 0,
            external_network: None,
            resync: std::time::Duration::from_secs(300),
            network_per_namespace: false,
            namespace_prefix_len: 24,
            foreign: stacknet_engine::multinet::Foreign::Refuse,
        }
    }

    pub fn families(&self) -> Vec<Family> {
        let mut f: Vec<Family> = self.pod_cidrs.iter().map(|c| Family::of(c.network())).collect();
        f.sort();
        f.dedup();
        f
    }

    /// The tag on every object of ours.
    pub fn tag(&self) -> String {
        format!("stacknet.io/cluster={}", self.cluster)
    }

    /// Pods' ports carry it: they are found by it, tagged or not.
    pub fn device_owner(&self) -> String {
        format!("compute:stacknet-{}", self.cluster)
    }

    /// The description that makes an object ours (`stacknet:<cluster>:<id>`); identities too
    /// long for Neutron's 255 characters end in a hash of the whole.
    pub fn marker(&self, id: &str) -> String {
        let full = format!("stacknet:{}:{id}", self.cluster);
        if full.len() <= 255 {
            return full;
        }
        let h = stacknet_engine::net::fnv1a(full.bytes());
        let mut cut = 200;
        while !full.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}~{h:016x}", &full[..cut])
    }

    pub(crate) fn is_ours(&self, description: &str) -> bool {
        description.starts_with(&format!("stacknet:{}:", self.cluster))
    }

    /// A pod's port's marker.
    pub(super) fn pod_marker(&self, pod: &stacknet_engine::ObjectKey) -> String {
        self.marker(&format!("pod:{pod}"))
    }

    /// The marker of pod `pod`'s port for its interface `interface` on the network of NAD
    /// `nad` (another NAD for the interface is another port).
    pub(super) fn attachment_marker(
        &self,
        pod: &stacknet_engine::ObjectKey,
        interface: &str,
        nad: &stacknet_engine::ObjectKey,
    ) -> String {
        self.marker(&format!("{ATTACHMENT_PREFIX}{pod}/{interface}@{nad}"))
    }

    /// Whether `description` is the marker of a secondary interface's port of ours.
    pub(super) fn is_attachment(&self, description: &str) -> bool {
        description.starts_with(&format!("stacknet:{}:{ATTACHMENT_PREFIX}", self.cluster))
    }

    /// The pod, interface and NAD an attachment marker names (`None` for a marker cut short
    /// by the hash of a long identity).
    pub(super) fn parse_attachment(
        &self,
        description: &str,
    ) -> Option<(stacknet_engine::ObjectKey, String, stacknet_engine::ObjectKey)> {
        let rest = description.strip_prefix(&format!("stacknet:{}:{ATTACHMENT_PREFIX}", self.cluster))?;
        let (who, nad) = rest.split_once('@')?;
        let mut parts = who.splitn(3, '/');
        let (ns, pod, interface) = (parts.next()?, parts.next()?, parts.next()?);
        let (nad_ns, nad_name) = nad.split_once('/')?;
        if [ns, pod, interface, nad_ns, nad_name].iter().any(|p| p.is_empty() || p.contains(['/', '@', '~'])) {
            return None;
        }
        Some((
            stacknet_engine::ObjectKey::new(ns, pod),
            interface.to_string(),
            stacknet_engine::ObjectKey::new(nad_ns, nad_name),
        ))
    }

    /// The marker of namespace `ns`'s network.
    pub(super) fn namespace_network_marker(&self, ns: &str) -> String {
        self.marker(&format!("{NAMESPACE_NETWORK_PREFIX}{ns}"))
    }

    /// The identity of namespace `ns`'s subnet cut from the pool of `cidr`.
    pub(super) fn namespace_subnet_marker(&self, ns: &str, cidr: &Cidr) -> String {
        self.marker(&format!("subnet:ns:{ns}:{cidr}"))
    }

    /// A readable name (Neutron does not need it unique).
    pub(crate) fn name(&self, id: &str) -> String {
        let n = format!("stacknet-{}-{id}", self.cluster);
        let mut cut = n.len().min(255);
        while !n.is_char_boundary(cut) {
            cut -= 1;
        }
        n[..cut].to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_fit_neutron_and_stay_unique() {
        let c = NeutronConfig::new("c1", Vec::new());
        assert_eq!(c.marker("pod:x/a"), "stacknet:c1:pod:x/a");
        assert!(c.is_ours(&c.marker("anything")));
        assert!(!NeutronConfig::new("c2", Vec::new()).is_ours(&c.marker("anything")));
        let long_a = c.marker(&"a".repeat(300));
        let long_b = c.marker(&format!("{}b", "a".repeat(299)));
        assert!(long_a.len() <= 255 && long_b.len() <= 255);
        assert_ne!(long_a, long_b);
        assert!(c.is_ours(&long_a));
    }

    #[test]
    fn an_attachment_marker_names_its_pod_interface_and_network() {
        use stacknet_engine::ObjectKey;
        let c = NeutronConfig::new("c1", Vec::new());
        let (pod, nad) = (ObjectKey::new("x", "a"), ObjectKey::new("net", "provider"));
        let m = c.attachment_marker(&pod, "net1", &nad);
        assert_eq!(m, "stacknet:c1:attach:x/a/net1@net/provider");
        assert!(c.is_attachment(&m) && c.is_ours(&m));
        assert!(!c.is_attachment(&c.pod_marker(&pod)));
        assert_eq!(c.parse_attachment(&m), Some((pod, "net1".to_string(), nad)));
        let long = c.attachment_marker(&ObjectKey::new("x", "a".repeat(250)), "net1", &ObjectKey::new("n", "p"));
        assert!(c.is_attachment(&long), "a hashed marker is still an attachment's");
        assert_eq!(c.parse_attachment(&long), None);
    }
}
