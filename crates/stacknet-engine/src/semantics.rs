//! NetworkPolicy semantics, decided directly from the cluster index: the reference that the
//! compiled model, ovn-trace and real packets are all checked against.
//!
//! Traffic from pod A to pod B on port/protocol is allowed iff A's egress allows it and B's
//! ingress allows it. A pod is isolated for a direction when a policy of its namespace selects it
//! and governs that direction; an isolated pod accepts (or sends) only what some such policy's
//! rules allow. Pods that no policy isolates are open. hostNetwork pods are never selected.

use std::net::IpAddr;

use crate::index::ClusterIndex;
use crate::objects::{
    Direction, NamespaceScope, NetworkPolicy, ObjectKey, Peer, PeerSelector, Pod, PolicyRule, Protocol,
};

/// The outcome for one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No policy isolates the pod in this direction.
    NotIsolated,
    /// Isolated, and these policies allow the traffic.
    Allowed(Vec<ObjectKey>),
    /// Isolated by these policies, none of which allows the traffic.
    Denied(Vec<ObjectKey>),
}

impl Decision {
    pub fn permits(&self) -> bool {
        !matches!(self, Decision::Denied(_))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The sender's egress.
    pub egress: Decision,
    /// The receiver's ingress.
    pub ingress: Decision,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.egress.permits() && self.ingress.permits()
    }
}

/// The addresses a probe from `from` to `to` uses: the receiver's primary address, and the
/// sender's address of the same family (either may be missing when a pod has no IP yet).
pub fn probe_addresses(from: &Pod, to: &Pod) -> (Option<IpAddr>, Option<IpAddr>) {
    match to.ips.first().copied() {
        Some(dst) => (from.ip_like(dst), Some(dst)),
        None => (from.ips.first().copied(), None),
    }
}

/// Whether `pod` is one of the pods `peer` names (namespace scope and pod selector).
pub fn peer_selects(index: &ClusterIndex, peer: &PeerSelector, pod: &Pod) -> bool {
    if !pod.is_policy_subject() {
        return false;
    }
    let namespace_ok = match &peer.namespaces {
        NamespaceScope::Named(ns) => *ns == pod.key.namespace,
        NamespaceScope::Selected(sel) => index.namespace_labels(&pod.key.namespace).is_some_and(|l| sel.matches(l)),
    };
    namespace_ok && peer.pods.matches(&pod.labels)
}

/// Whether `policy` selects `pod` as a target.
pub fn policy_selects(policy: &NetworkPolicy, pod: &Pod) -> bool {
    pod.is_policy_subject() && policy.key.namespace == pod.key.namespace && policy.pod_selector.matches(&pod.labels)
}

fn rule_allows(
    index: &ClusterIndex,
    rule: &PolicyRule,
    other: &Pod,
    other_ip: Option<IpAddr>,
    port: u16,
    protocol: Protocol,
    destination: &Pod,
) -> bool {
    let peer_ok = rule.peers.is_empty()
        || rule.peers.iter().any(|peer| match peer {
            Peer::Pods(sel) => peer_selects(index, sel, other),
            Peer::IpBlock(block) => other_ip.is_some_and(|ip| block.contains(ip)),
        });
    peer_ok && rule.ports_match(port, protocol, Some(destination))
}

/// Decides one probe: `from` sends to `to` on `port`/`protocol`.
pub fn evaluate(index: &ClusterIndex, from: &Pod, to: &Pod, port: u16, protocol: Protocol) -> Verdict {
    let (src_ip, dst_ip) = probe_addresses(from, to);
    Verdict {
        egress: direction(index, Direction::Egress, from, to, dst_ip, port, protocol, to),
        ingress: direction(index, Direction::Ingress, to, from, src_ip, port, protocol, to),
    }
}

/// The decision of `subject`'s policies in direction `d` about traffic with `other` (whose
/// address in the packet is `other_ip`); named ports resolve on `destination`.
#[allow(clippy::too_many_arguments)]
fn direction(
    index: &ClusterIndex,
    d: Direction,
    subject: &Pod,
    other: &Pod,
    other_ip: Option<IpAddr>,
    port: u16,
    protocol: Protocol,
    destination: &Pod,
) -> Decision {
    let mut isolating = Vec::new();
    let mut allowing = Vec::new();
    if subject.is_policy_subject() {
        for policy in index.policies_in(&subject.key.namespace) {
            let Some(rules) = policy.rules(d) else { continue };
            if !policy.pod_selector.matches(&subject.labels) {
                continue;
            }
            isolating.push(policy.key.clone());
            if rules.iter().any(|r| rule_allows(index, r, other, other_ip, port, protocol, destination)) {
                allowing.push(policy.key.clone());
            }
        }
    }
    decide(isolating, allowing)
}

fn decide(isolating: Vec<ObjectKey>, allowing: Vec<ObjectKey>) -> Decision {
    if isolating.is_empty() {
        Decision::NotIsolated
    } else if allowing.is_empty() {
        Decision::Denied(isolating)
    } else {
        Decision::Allowed(allowing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest;

    fn index(yaml: &str) -> ClusterIndex {
        ClusterIndex::from_objects(manifest::parse("t.yaml", yaml).expect("valid").objects)
    }

    fn verdict(index: &ClusterIndex, from: &str, to: &str, port: u16, protocol: Protocol) -> Verdict {
        let pod = |k: &str| index.pod(index.pod_id(&k.parse().unwrap()).unwrap()).unwrap();
        evaluate(index, pod(from), pod(to), port, protocol)
    }

    const PODS: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: x, labels: {app: a}}, status: {podIP: 10.0.0.1}}
- {apiVersion: v1, kind: Pod, metadata: {name: b, namespace: y, labels: {app: b}}, status: {podIP: 10.0.0.2}}
- {apiVersion: v1, kind: Pod, metadata: {name: node-agent, namespace: x, labels: {app: a}},
   spec: {hostNetwork: true, containers: [{name: c, image: i}]}, status: {podIP: 192.168.1.10}}
"#;

    #[test]
    fn host_network_pods_are_never_selected_but_ip_blocks_see_them() {
        let deny_all = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress, Egress]}\n";
        let i = index(&format!("{PODS}{deny_all}"));
        // The hostNetwork pod is not isolated in either direction ...
        let v = verdict(&i, "x/node-agent", "y/b", 80, Protocol::Tcp);
        assert_eq!(v.egress, Decision::NotIsolated);
        assert!(v.allowed());
        // ... while x/a is, by the policy named in the verdict.
        let v = verdict(&i, "y/b", "x/a", 80, Protocol::Tcp);
        assert_eq!(v.ingress, Decision::Denied(vec![ObjectKey::new("x", "deny")]));

        let allow = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from: [{podSelector: {}}]\n  - from: [{ipBlock: {cidr: 192.168.0.0/16}}]\n    ports: [{port: 22}]\n";
        let i = index(&format!("{PODS}{allow}"));
        // podSelector {} does not name the hostNetwork pod; the ipBlock does, on its port only.
        assert!(!verdict(&i, "x/node-agent", "x/a", 80, Protocol::Tcp).allowed());
        assert!(verdict(&i, "x/node-agent", "x/a", 22, Protocol::Tcp).allowed());
    }

    #[test]
    fn a_namespace_without_an_object_is_selectable_by_its_name_label_only() {
        let p = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]\n";
        let i = index(&format!("{PODS}{p}"));
        assert!(verdict(&i, "y/b", "x/a", 80, Protocol::Tcp).allowed());
        let p = p.replace("kubernetes.io/metadata.name: y", "team: blue");
        let i = index(&format!("{PODS}{p}"));
        assert!(!verdict(&i, "y/b", "x/a", 80, Protocol::Tcp).allowed());
        let ns = "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: y, labels: {team: blue}}\n";
        let i = index(&format!("{PODS}{p}{ns}"));
        assert!(verdict(&i, "y/b", "x/a", 80, Protocol::Tcp).allowed());
    }

    #[test]
    fn protocol_defaults_to_tcp_and_must_match() {
        let p = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: 53}]\n";
        let i = index(&format!("{PODS}{p}"));
        assert!(verdict(&i, "y/b", "x/a", 53, Protocol::Tcp).allowed());
        assert!(!verdict(&i, "y/b", "x/a", 53, Protocol::Udp).allowed());
        assert!(!verdict(&i, "y/b", "x/a", 53, Protocol::Sctp).allowed());
    }
}
