//! A deliberately simple NetworkPolicy evaluator, written only for tests.
//!
//! It reads the API objects as they are (no normalization, no index, no compilation) and follows
//! the networking.k8s.io/v1 documentation line by line. It shares no code with the engine, so
//! that an error in one is not repeated in the other. It is checked against the 48 hand-written
//! upstream cases before it is trusted with generated ones.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::World;

type Labels = BTreeMap<String, String>;

fn labels_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Labels {
    meta.labels.clone().unwrap_or_default()
}

fn selector_matches(sel: &LabelSelector, labels: &Labels) -> bool {
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default();
        let have = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

fn namespace_labels(world: &World, ns: &str) -> Labels {
    let mut l = world.namespaces.get(ns).map(|n| labels_of(&n.metadata)).unwrap_or_default();
    l.insert("kubernetes.io/metadata.name".into(), ns.into());
    l
}

fn pod_namespace(p: &core::Pod) -> String {
    p.metadata.namespace.clone().unwrap_or_else(|| "default".into())
}

fn host_network(p: &core::Pod) -> bool {
    p.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false)
}

fn pod_ipv4(p: &core::Pod) -> Option<Ipv4Addr> {
    p.status.as_ref().and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok())
}

fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
    let Some((addr, len)) = cidr.split_once('/') else { return false };
    let (Ok(addr), Ok(len)) = (addr.parse::<Ipv4Addr>(), len.parse::<u32>()) else { return false };
    if len == 0 {
        return true;
    }
    let mask = u32::MAX << (32 - len);
    (u32::from(ip) & mask) == (u32::from(addr) & mask)
}

/// policyTypes as the API server defaults them.
fn types(p: &networking::NetworkPolicy) -> (bool, bool) {
    let spec = p.spec.clone().unwrap_or_default();
    match spec.policy_types {
        Some(t) if !t.is_empty() => (t.iter().any(|x| x == "Ingress"), t.iter().any(|x| x == "Egress")),
        _ => (true, spec.egress.is_some_and(|e| !e.is_empty())),
    }
}

fn selects(p: &networking::NetworkPolicy, pod: &core::Pod) -> bool {
    if host_network(pod) || p.metadata.namespace != pod.metadata.namespace {
        return false;
    }
    let sel = p.spec.as_ref().and_then(|s| s.pod_selector.clone()).unwrap_or_default();
    selector_matches(&sel, &labels_of(&pod.metadata))
}

fn peer_matches(world: &World, policy_ns: &str, peer: &networking::NetworkPolicyPeer, other: &core::Pod) -> bool {
    if let Some(block) = &peer.ip_block {
        let Some(ip) = pod_ipv4(other) else { return false };
        return in_cidr(ip, &block.cidr) && !block.except.iter().flatten().any(|e| in_cidr(ip, e));
    }
    if host_network(other) {
        return false;
    }
    let other_ns = pod_namespace(other);
    let ns_ok = match &peer.namespace_selector {
        Some(sel) => selector_matches(sel, &namespace_labels(world, &other_ns)),
        None => other_ns == policy_ns,
    };
    let pod_ok = match &peer.pod_selector {
        Some(sel) => selector_matches(sel, &labels_of(&other.metadata)),
        None => true,
    };
    ns_ok && pod_ok
}

fn port_matches(ports: &[networking::NetworkPolicyPort], port: u16, protocol: &str, dest: &core::Pod) -> bool {
    if ports.is_empty() {
        return true;
    }
    ports.iter().any(|p| {
        if p.protocol.as_deref().unwrap_or("TCP") != protocol {
            return false;
        }
        match &p.port {
            None => true,
            Some(IntOrString::Int(n)) => {
                let end = p.end_port.unwrap_or(*n);
                i32::from(port) >= *n && i32::from(port) <= end
            }
            Some(IntOrString::String(name)) => {
                dest.spec.iter().flat_map(|s| &s.containers).flat_map(|c| c.ports.iter().flatten()).any(|cp| {
                    cp.name.as_deref() == Some(name)
                        && cp.protocol.as_deref().unwrap_or("TCP") == protocol
                        && cp.container_port == i32::from(port)
                })
            }
        }
    })
}

/// Whether `from` may send to `to` on `port`/`protocol` (pods named `ns/name`).
pub fn allowed(world: &World, from: &str, to: &str, port: u16, protocol: &str) -> bool {
    let (src, dst) = (&world.pods[from], &world.pods[to]);

    // Egress of the sender.
    let egress: Vec<&networking::NetworkPolicy> =
        world.policies.values().filter(|p| types(p).1 && selects(p, src)).collect();
    let egress_ok = egress.is_empty()
        || egress.iter().any(|p| {
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            p.spec.iter().flat_map(|s| s.egress.iter().flatten()).any(|rule| {
                let to_ok = match &rule.to {
                    None => true,
                    Some(peers) if peers.is_empty() => true,
                    Some(peers) => peers.iter().any(|peer| peer_matches(world, &ns, peer, dst)),
                };
                to_ok && port_matches(rule.ports.as_deref().unwrap_or_default(), port, protocol, dst)
            })
        });

    // Ingress of the receiver.
    let ingress: Vec<&networking::NetworkPolicy> =
        world.policies.values().filter(|p| types(p).0 && selects(p, dst)).collect();
    let ingress_ok = ingress.is_empty()
        || ingress.iter().any(|p| {
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            p.spec.iter().flat_map(|s| s.ingress.iter().flatten()).any(|rule| {
                let from_ok = match &rule.from {
                    None => true,
                    Some(peers) if peers.is_empty() => true,
                    Some(peers) => peers.iter().any(|peer| peer_matches(world, &ns, peer, src)),
                };
                from_ok && port_matches(rule.ports.as_deref().unwrap_or_default(), port, protocol, dst)
            })
        });

    egress_ok && ingress_ok
}

/// The whole truth table of one probe, loopback left out.
pub fn table(world: &World, port: u16, protocol: &str) -> BTreeMap<(String, String), bool> {
    let pods = world.pod_names();
    let mut out = BTreeMap::new();
    for a in &pods {
        for b in &pods {
            if a != b {
                out.insert((a.clone(), b.clone()), allowed(world, a, b, port, protocol));
            }
        }
    }
    out
}
