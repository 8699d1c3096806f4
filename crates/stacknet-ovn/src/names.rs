//! Names and ownership. Every row stacknet writes carries in `external_ids` the cluster it
//! belongs to and a stable identity; garbage collection only ever considers rows that carry
//! our cluster id. Names that OVN match expressions refer to (`@port_group`, `$address_set`)
//! must be identifiers, so they are derived from a hash of the identity.

/// The cluster a row belongs to.
pub const KEY_CLUSTER: &str = "stacknet.io/cluster";
/// The row's identity within the cluster (e.g. `pod:x/a`, `acl:x/allow-web:ingress:0:1`).
pub const KEY_ID: &str = "stacknet.io/id";
/// The Kubernetes (or stacknet) kind the row was made for.
pub const KEY_OWNER_KIND: &str = "stacknet.io/owner-kind";
/// The owner's namespace/name (or name).
pub const KEY_OWNER: &str = "stacknet.io/owner";
/// The pod's UID on its port.
pub const KEY_POD_UID: &str = "stacknet.io/pod-uid";
/// On a node's management port: the CIDRs the node routes through it (comma-separated).
pub const KEY_ROUTES: &str = "stacknet.io/routes";
/// On a gateway router: the addresses (CIDRs, comma-separated) traffic from the uplink must
/// reach the router at, not the node: the node agent steers them on the uplink bridge.
pub const KEY_STEER: &str = "stacknet.io/steer";
/// On a Service's load balancers: the address its LoadBalancer got from `--lb-pool`.
pub const KEY_LB_IP: &str = "stacknet.io/lb-ip";

/// On a secondary interface's port: the NetworkAttachmentDefinition (`namespace/name`).
pub const KEY_NETWORK: &str = "stacknet.io/network";
/// On a secondary interface's port: the interface name in the pod.
pub const KEY_INTERFACE: &str = "stacknet.io/interface";
/// On a secondary interface's port: its addresses with prefix lengths (comma-separated).
pub const KEY_IPS: &str = "stacknet.io/ips";
/// On a secondary interface's port: its MTU, when the network sets one.
pub const KEY_MTU: &str = "stacknet.io/mtu";
/// On a secondary interface's port: the gateways of the pod's default route through it.
pub const KEY_DEFAULT_ROUTE: &str = "stacknet.io/default-route";
/// On a pod's primary port: its secondary interfaces (comma-separated), which the CNI ADD
/// attaches with the primary one.
pub const KEY_ATTACHMENTS: &str = "stacknet.io/attachments";
/// On a pod's primary port: why its secondary networks cannot be attached (the ADD fails).
pub const KEY_ATTACHMENT_ERROR: &str = "stacknet.io/attachment-error";

/// FNV-1a 64 over the parts, as 16 hex digits: stable across builds and platforms.
pub fn hash(parts: &[&str]) -> String {
    format!("{:016x}", stacknet_engine::net::fnv1a(parts.iter().flat_map(|p| p.bytes().chain([0u8]))))
}

/// An OVN identifier (`[a-zA-Z_.][a-zA-Z_.0-9]*`) for a row of `kind` with identity `id`.
pub fn ident(cluster: &str, kind: &str, id: &str) -> String {
    format!("sn_{kind}_{}", hash(&[cluster, kind, id]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_stable_and_valid() {
        let a = ident("c1", "pg", "x/allow-web");
        assert_eq!(a, ident("c1", "pg", "x/allow-web"));
        assert_ne!(a, ident("c2", "pg", "x/allow-web"));
        assert_ne!(hash(&["ab", "c"]), hash(&["a", "bc"]));
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        assert!(a.starts_with("sn_pg_"));
    }
}
