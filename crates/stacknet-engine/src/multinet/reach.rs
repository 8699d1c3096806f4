//! Reachability on one secondary network (pure): between the pods attached to it and the
//! hosts on it (a provider network's PE router, and what lies beyond it), decided by the
//! NetworkPolicy semantics over the network's own index (its pods with their addresses on it,
//! its MultiNetworkPolicies) — the same engine as the cluster network's.
//!
//! A host on the network's subnet is on-link for every pod; one beyond it is reached only by
//! pods whose default route is on this network (the selection's `default-route`), and its
//! packets reach only those pods back.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::plan::Plan;
use crate::index::ClusterIndex;
use crate::objects::{ObjectKey, Protocol};
use crate::paths::{Endpoint, host};
use crate::semantics;

/// A host on (or beyond) a secondary network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    pub address: IpAddr,
    /// On the network's subnet (else beyond a router on it).
    pub on_link: bool,
}

/// Whether `from` reaches `to` on `network` (`net`: [`super::network_index`] of it); `None`
/// for two hosts (outside the cluster, nothing of ours decides).
#[allow(clippy::too_many_arguments)]
pub fn decide(
    net: &ClusterIndex,
    plan: &Plan,
    network: &ObjectKey,
    hosts: &BTreeMap<String, Host>,
    from: &Endpoint,
    to: &Endpoint,
    port: u16,
    protocol: Protocol,
) -> Result<Option<bool>, String> {
    let pod = |k: &ObjectKey| {
        net.pod_id(k).and_then(|id| net.pod(id)).ok_or_else(|| format!("pod {k} is not on network {network}"))
    };
    let host_of = |x: &String| hosts.get(x).copied().ok_or_else(|| format!("no host {x} on network {network}"));
    // A pod reaches a host beyond the network only through its default route.
    let routed = |k: &ObjectKey, h: Host| {
        h.on_link
            || plan.pods.get(k).is_some_and(|l| {
                l.iter().any(|a| {
                    &a.network == network && a.default_route.iter().any(|g| g.is_ipv4() == h.address.is_ipv4())
                })
            })
    };
    Ok(match (from, to) {
        (Endpoint::Pod(a), Endpoint::Pod(b)) => {
            Some(semantics::evaluate(net, pod(a)?, pod(b)?, port, protocol).allowed())
        }
        (Endpoint::Pod(a), Endpoint::External(x)) => {
            let h = host_of(x)?;
            Some(routed(a, h) && semantics::evaluate(net, pod(a)?, &host(x, h.address), port, protocol).allowed())
        }
        (Endpoint::External(x), Endpoint::Pod(b)) => {
            let h = host_of(x)?;
            Some(routed(b, h) && semantics::evaluate(net, &host(x, h.address), pod(b)?, port, protocol).allowed())
        }
        (Endpoint::External(_), Endpoint::External(_)) => None,
        (Endpoint::Node(n), _) | (_, Endpoint::Node(n)) => {
            return Err(format!("node/{n}: nodes are not on secondary networks"));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest;
    use crate::multinet::{Allocator, Foreign, network_index};

    const TELCO: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: k8s.cni.cncf.io/v1
  kind: NetworkAttachmentDefinition
  metadata: {name: provider, namespace: t}
  spec: {config: '{"name": "provider", "type": "stacknet-cni", "topology": "localnet", "subnets": "192.0.2.0/24", "excludeSubnets": "192.0.2.0/28"}'}
- apiVersion: v1
  kind: Pod
  metadata: {name: nf, namespace: t, labels: {app: nf}, annotations: {k8s.v1.cni.cncf.io/networks: '[{"name": "provider", "default-route": ["192.0.2.1"]}]'}}
  spec: {nodeName: n1}
- apiVersion: v1
  kind: Pod
  metadata: {name: lb, namespace: t, labels: {app: lb}, annotations: {k8s.v1.cni.cncf.io/networks: provider}}
  spec: {nodeName: n2}
- apiVersion: k8s.cni.cncf.io/v1beta1
  kind: MultiNetworkPolicy
  metadata: {name: lb-from-pe, namespace: t, annotations: {k8s.v1.cni.cncf.io/policy-for: provider}}
  spec:
    podSelector: {matchLabels: {app: lb}}
    policyTypes: [Ingress]
    ingress: [{from: [{ipBlock: {cidr: 192.0.2.1/32}}]}]
"#;

    #[test]
    fn hosts_beyond_the_network_are_reached_through_the_default_route_only() {
        let index = ClusterIndex::from_objects(manifest::parse("t.yaml", TELCO).unwrap().objects);
        let plan = Allocator::default().sync(&index, Foreign::Refuse, |_| Ok(()));
        let network = ObjectKey::new("t", "provider");
        let net = network_index(&index, &plan, &network);
        let hosts = BTreeMap::from([
            ("pe".to_string(), Host { address: "192.0.2.1".parse().unwrap(), on_link: true }),
            ("beyond".to_string(), Host { address: "198.51.100.1".parse().unwrap(), on_link: false }),
        ]);
        let d = |a: &str, b: &str| {
            decide(&net, &plan, &network, &hosts, &a.parse().unwrap(), &b.parse().unwrap(), 80, Protocol::Tcp).unwrap()
        };
        assert_eq!(d("t/nf", "external/pe"), Some(true));
        assert_eq!(d("t/nf", "external/beyond"), Some(true), "nf's default route is here");
        assert_eq!(d("t/lb", "external/beyond"), Some(false), "lb's is not");
        assert_eq!(d("external/pe", "t/lb"), Some(true), "the policy admits the PE router");
        assert_eq!(d("t/nf", "t/lb"), Some(false), "and only it");
        assert_eq!(d("t/lb", "t/nf"), Some(true));
        assert_eq!(d("external/pe", "external/beyond"), None);
        assert!(
            decide(
                &net,
                &plan,
                &network,
                &hosts,
                &"node/n1".parse().unwrap(),
                &"t/nf".parse().unwrap(),
                80,
                Protocol::Tcp
            )
            .is_err()
        );
    }
}
