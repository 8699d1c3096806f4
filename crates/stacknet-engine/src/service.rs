//! Services as distributed L4 load balancers: every ClusterIP (and port) of a Service becomes a
//! VIP whose backends are the ready endpoints of its EndpointSlices. A Service with a selector
//! but no EndpointSlice in the input gets the endpoints the EndpointSlice controller would
//! compute (running pods matching the selector, target port resolved per pod), so plain
//! manifests work too.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use crate::index::ClusterIndex;
use crate::objects::{ObjectKey, Protocol, Service, TargetPort};

/// One load balancer: a Service's VIPs for one protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadBalancer {
    pub service: ObjectKey,
    pub protocol: Protocol,
    /// VIP:port → backends (empty: no ready endpoint; connections are rejected).
    pub vips: BTreeMap<SocketAddr, BTreeSet<SocketAddr>>,
}

fn endpoints_from_slices(
    index: &ClusterIndex,
    svc: &Service,
    port_name: Option<&str>,
    protocol: Protocol,
) -> Option<BTreeSet<SocketAddr>> {
    let slices: Vec<_> = index
        .endpoint_slices()
        .filter(|s| s.key.namespace == svc.key.namespace && s.service.as_deref() == Some(svc.key.name.as_str()))
        .collect();
    if slices.is_empty() {
        return None;
    }
    let mut out = BTreeSet::new();
    for s in slices {
        let Some(port) = s
            .ports
            .iter()
            .find(|p| p.protocol == protocol && p.name.as_deref().unwrap_or("") == port_name.unwrap_or(""))
            .and_then(|p| p.port)
        else {
            continue;
        };
        for e in s.endpoints.iter().filter(|e| e.ready) {
            out.extend(e.addresses.iter().map(|a| SocketAddr::new(*a, port)));
        }
    }
    Some(out)
}

fn endpoints_from_selector(
    index: &ClusterIndex,
    svc: &Service,
    target: &TargetPort,
    protocol: Protocol,
) -> BTreeSet<SocketAddr> {
    let Some(selector) = svc.selector.as_ref().filter(|s| !s.is_empty()) else { return BTreeSet::new() };
    index
        .pods_in(&svc.key.namespace)
        .map(|(_, p)| p)
        .filter(|p| !p.terminated && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
        .flat_map(|p| {
            let port = match target {
                TargetPort::Number(n) => Some(*n),
                TargetPort::Name(name) => p.named_port(name, protocol),
            };
            port.into_iter().flat_map(move |port| p.ips.iter().map(move |ip| SocketAddr::new(*ip, port)))
        })
        .collect()
}

/// The load balancers of every Service with a cluster IP, one per protocol used.
pub fn load_balancers(index: &ClusterIndex) -> Vec<LoadBalancer> {
    let mut out = Vec::new();
    for svc in index.services() {
        if svc.cluster_ips.is_empty() || svc.service_type == "ExternalName" {
            continue;
        }
        let mut by_protocol: BTreeMap<Protocol, BTreeMap<SocketAddr, BTreeSet<SocketAddr>>> = BTreeMap::new();
        for sp in &svc.ports {
            let backends = endpoints_from_slices(index, svc, sp.name.as_deref(), sp.protocol)
                .unwrap_or_else(|| endpoints_from_selector(index, svc, &sp.target_port, sp.protocol));
            for vip in &svc.cluster_ips {
                let same_family: BTreeSet<SocketAddr> =
                    backends.iter().filter(|b| b.is_ipv4() == vip.is_ipv4()).copied().collect();
                by_protocol.entry(sp.protocol).or_default().insert(SocketAddr::new(*vip, sp.port), same_family);
            }
        }
        for (protocol, vips) in by_protocol {
            out.push(LoadBalancer { service: svc.key.clone(), protocol, vips });
        }
    }
    out
}

/// The Service VIP a pod would dial for `ip:port`, if it is one.
pub fn find_vip(lbs: &[LoadBalancer], ip: IpAddr, port: u16, protocol: Protocol) -> Option<&LoadBalancer> {
    lbs.iter().find(|lb| lb.protocol == protocol && lb.vips.contains_key(&SocketAddr::new(ip, port)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest;

    fn index(yaml: &str) -> ClusterIndex {
        ClusterIndex::from_objects(manifest::parse("t.yaml", yaml).unwrap().objects)
    }

    const PODS: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Pod, metadata: {name: db-0, namespace: x, labels: {app: db}},
   spec: {containers: [{name: c, image: i, ports: [{name: pg, containerPort: 5432}]}]}, status: {podIP: 10.0.0.1}}
- {apiVersion: v1, kind: Pod, metadata: {name: db-1, namespace: x, labels: {app: db}},
   spec: {containers: [{name: c, image: i, ports: [{name: pg, containerPort: 5433}]}]}, status: {podIP: 10.0.0.2}}
- {apiVersion: v1, kind: Service, metadata: {name: db, namespace: x},
   spec: {clusterIP: 10.96.0.10, selector: {app: db}, ports: [{name: pg, port: 5432, targetPort: pg}, {name: dns, port: 53, protocol: UDP}]}}
"#;

    #[test]
    fn selector_endpoints_resolve_named_target_ports_per_pod() {
        let lbs = load_balancers(&index(PODS));
        assert_eq!(lbs.len(), 2, "one per protocol");
        let tcp = lbs.iter().find(|l| l.protocol == Protocol::Tcp).unwrap();
        let vip: SocketAddr = "10.96.0.10:5432".parse().unwrap();
        let backends: Vec<String> = tcp.vips[&vip].iter().map(|b| b.to_string()).collect();
        assert_eq!(backends, ["10.0.0.1:5432", "10.0.0.2:5433"]);
        let udp = lbs.iter().find(|l| l.protocol == Protocol::Udp).unwrap();
        // Port 53 with targetPort defaulting to 53, but the pods do not care: both listed.
        assert_eq!(udp.vips[&"10.96.0.10:53".parse().unwrap()].len(), 2);
    }

    #[test]
    fn endpoint_slices_win_and_unready_endpoints_are_left_out() {
        let slice = r#"---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: x, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
endpoints:
- addresses: [10.0.0.1]
- addresses: [10.0.0.2]
  conditions: {ready: false}
ports: [{name: pg, port: 5432}]
"#;
        let lbs = load_balancers(&index(&format!("{PODS}{slice}")));
        let tcp = lbs.iter().find(|l| l.protocol == Protocol::Tcp).unwrap();
        let vip: SocketAddr = "10.96.0.10:5432".parse().unwrap();
        assert_eq!(tcp.vips[&vip].iter().map(|b| b.to_string()).collect::<Vec<_>>(), ["10.0.0.1:5432"]);
        // The slice has no "dns" port: that VIP has no backends (and will reject).
        let udp = lbs.iter().find(|l| l.protocol == Protocol::Udp).unwrap();
        assert!(udp.vips[&"10.96.0.10:53".parse().unwrap()].is_empty());
        assert!(find_vip(&lbs, "10.96.0.10".parse().unwrap(), 5432, Protocol::Tcp).is_some());
        assert!(find_vip(&lbs, "10.96.0.10".parse().unwrap(), 5432, Protocol::Udp).is_none());
    }

    #[test]
    fn headless_and_external_name_services_have_no_vip() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: h, namespace: x}\nspec: {clusterIP: None, ports: [{port: 80}]}\n";
        assert!(load_balancers(&index(text)).is_empty());
    }
}
