//! Services as distributed L4 load balancers: every ClusterIP (and port) of a Service becomes a
//! VIP whose backends are the ready endpoints of its EndpointSlices. A Service with a selector
//! but no EndpointSlice in the input gets the endpoints the EndpointSlice controller would
//! compute (running pods matching the selector, target port resolved per pod), so plain
//! manifests work too.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use crate::index::ClusterIndex;
use crate::net::Cidr;
use crate::objects::{ObjectKey, Protocol, Service, TargetPort};
use crate::problem::{ObjectRef, Problem, Reason};

/// One load balancer: a Service's VIPs for one protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadBalancer {
    pub service: ObjectKey,
    pub protocol: Protocol,
    /// VIP:port → backends (empty: no ready endpoint; connections are rejected).
    pub vips: BTreeMap<SocketAddr, BTreeSet<SocketAddr>>,
    /// ClientIP session affinity: how long a client sticks to its backend, in seconds.
    pub affinity_timeout: Option<u32>,
    /// `internalTrafficPolicy: Local`: a client reaches only the backends on its own node.
    pub local: bool,
    /// The node each backend runs on, where known.
    pub nodes: BTreeMap<SocketAddr, String>,
}

impl LoadBalancer {
    /// The VIPs as a client on `node` reaches them: with `internalTrafficPolicy: Local` only
    /// the backends on that node (none: the VIP rejects), else all.
    pub fn vips_on(&self, node: &str) -> BTreeMap<SocketAddr, BTreeSet<SocketAddr>> {
        self.vips
            .iter()
            .map(|(vip, b)| {
                let b = b.iter().filter(|a| !self.local || self.nodes.get(a).is_some_and(|n| n == node)).copied();
                (*vip, b.collect())
            })
            .collect()
    }
}

/// The NodePort range (the API server's default `--service-node-port-range`).
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;
/// Our `spec.loadBalancerClass` (a LoadBalancer Service without a class is ours as well; one
/// of another class is left to its implementation).
pub const LOAD_BALANCER_CLASS: &str = "stacknet.io/load-balancer";

/// A Service's endpoint with the node it runs on (`Local` traffic policies need it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub addr: SocketAddr,
    pub node: Option<String>,
}

/// How a Service is reached from outside the cluster, for one protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposure {
    pub service: ObjectKey,
    pub protocol: Protocol,
    /// `nodePort` → backends: reached on every node's address.
    pub node_ports: BTreeMap<u16, BTreeSet<Backend>>,
    /// An external address (`externalIPs`, the load balancer's) and port → backends.
    pub external: BTreeMap<SocketAddr, BTreeSet<Backend>>,
    /// `externalTrafficPolicy: Local`: a node forwards only to its own backends, and the
    /// client's address is kept.
    pub local: bool,
    pub affinity_timeout: Option<u32>,
    /// `loadBalancerSourceRanges` (`None`: everyone; empty: nobody, after a bad entry).
    pub sources: Option<Vec<Cidr>>,
}

/// Whether a Service of type LoadBalancer is ours to give an address.
pub fn is_ours(svc: &Service) -> bool {
    svc.service_type == "LoadBalancer" && svc.load_balancer_class.as_deref().is_none_or(|c| c == LOAD_BALANCER_CLASS)
}

/// Addresses for our LoadBalancer Services out of `pools`: each keeps the one it had
/// (`before`, else its `status.loadBalancer.ingress`) while in a pool, unless it asks for
/// another; one that asks (`spec.loadBalancerIP` or the annotation) gets that one if it is in
/// a pool and free, else none and a problem; the others get the lowest free address.
pub fn assign_load_balancer_ips(
    index: &ClusterIndex,
    pools: &[Cidr],
    before: &BTreeMap<ObjectKey, IpAddr>,
) -> (BTreeMap<ObjectKey, IpAddr>, Vec<Problem>) {
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    let mut used: BTreeSet<IpAddr> = BTreeSet::new();
    let in_pool = |ip: &IpAddr| pools.iter().any(|p| p.contains(*ip));
    let ours: Vec<&Service> = index.services().filter(|s| is_ours(s)).collect();
    // 1. Kept: what each had, unless it now asks for something else.
    for svc in &ours {
        let had = before.get(&svc.key).copied().or_else(|| svc.ingress_ips.iter().copied().find(in_pool));
        if let Some(ip) = had.filter(|ip| in_pool(ip) && svc.load_balancer_ip.is_none_or(|want| want == *ip))
            && used.insert(ip)
        {
            out.insert(svc.key.clone(), ip);
        }
    }
    // 2. Asked for.
    let unkept: Vec<&Service> = ours.iter().copied().filter(|s| !out.contains_key(&s.key)).collect();
    for svc in &unkept {
        let Some(want) = svc.load_balancer_ip else { continue };
        if in_pool(&want) && used.insert(want) {
            out.insert(svc.key.clone(), want);
        } else {
            let why = if in_pool(&want) { "another Service has it" } else { "it is in no --lb-pool" };
            problems.push(Problem::new(
                ObjectRef::service(&svc.key),
                Reason::LoadBalancerIPUnavailable,
                format!("the load balancer address {want} it asks for cannot be given: {why}"),
            ));
        }
    }
    // 3. The lowest free address.
    for svc in unkept.iter().filter(|s| s.load_balancer_ip.is_none()) {
        match pools.iter().flat_map(Cidr::hosts).find(|ip| !used.contains(ip)) {
            Some(ip) => {
                used.insert(ip);
                out.insert(svc.key.clone(), ip);
            }
            None => problems.push(Problem::new(
                ObjectRef::service(&svc.key),
                Reason::LoadBalancerPoolExhausted,
                if pools.is_empty() {
                    "no --lb-pool is configured: the Service gets no load balancer address".to_string()
                } else {
                    let p: Vec<String> = pools.iter().map(|p| p.to_string()).collect();
                    format!("every address of --lb-pool {} is taken", p.join(", "))
                },
            )),
        }
    }
    (out, problems)
}

/// How each Service is reached from outside, given the addresses its load balancer got
/// (`lb_ips`); `inside` are the cluster and Service CIDRs, which no external address may be
/// in. What cannot be exposed is a problem on the Service, and the rest of it is exposed.
pub fn exposures(
    index: &ClusterIndex,
    lb_ips: &BTreeMap<ObjectKey, IpAddr>,
    inside: &[Cidr],
) -> (Vec<Exposure>, Vec<Problem>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let mut taken: BTreeMap<(Protocol, u16), ObjectKey> = BTreeMap::new();
    for svc in index.services() {
        if svc.service_type == "ExternalName" {
            continue;
        }
        let node_ports = matches!(svc.service_type.as_str(), "NodePort") || is_ours(svc);
        let on = ObjectRef::service(&svc.key);
        let mut addresses = Vec::new();
        for ip in &svc.external_ips {
            if let Some(c) = inside.iter().find(|c| c.contains(*ip)) {
                problems.push(Problem::new(
                    on.clone(),
                    Reason::ExternalIPInvalid,
                    format!("externalIPs address {ip} lies in {c}, inside the cluster: not exposed"),
                ));
            } else {
                addresses.push(*ip);
            }
        }
        addresses.extend(lb_ips.get(&svc.key).filter(|_| is_ours(svc)));
        if !node_ports && addresses.is_empty() {
            continue;
        }
        let mut sources = None;
        if is_ours(svc) && !svc.load_balancer_source_ranges.is_empty() {
            let mut ranges = Vec::new();
            for r in &svc.load_balancer_source_ranges {
                match r.trim().parse::<Cidr>() {
                    Ok(c) => ranges.push(c),
                    Err(e) => {
                        problems.push(Problem::new(
                            on.clone(),
                            Reason::InvalidSourceRange,
                            format!("loadBalancerSourceRanges entry {r:?}: {e}; its external addresses accept nobody until fixed"),
                        ));
                        ranges.clear();
                        sources = Some(Vec::new());
                        break;
                    }
                }
            }
            if sources.is_none() {
                sources = Some(ranges);
            }
        }
        let mut by_protocol: BTreeMap<Protocol, Exposure> = BTreeMap::new();
        for sp in &svc.ports {
            let backends = backends_of(index, svc, sp.name.as_deref(), &sp.target_port, sp.protocol);
            let e = by_protocol.entry(sp.protocol).or_insert_with(|| Exposure {
                service: svc.key.clone(),
                protocol: sp.protocol,
                node_ports: BTreeMap::new(),
                external: BTreeMap::new(),
                local: svc.external_traffic_policy.as_deref() == Some("Local"),
                affinity_timeout: svc.affinity_timeout,
                sources: sources.clone(),
            });
            if node_ports {
                let port_name = sp.name.as_deref().map_or_else(|| sp.port.to_string(), str::to_string);
                match sp.node_port {
                    None => problems.push(Problem::new(
                        on.clone(),
                        Reason::NodePortUnavailable,
                        format!(
                            "port {port_name} has no nodePort (the API server allocates one; a manifest must give it)"
                        ),
                    )),
                    Some(np) if !NODE_PORTS.contains(&np) => problems.push(Problem::new(
                        on.clone(),
                        Reason::NodePortUnavailable,
                        format!(
                            "port {port_name}: nodePort {np} is outside {}-{}",
                            NODE_PORTS.start(),
                            NODE_PORTS.end()
                        ),
                    )),
                    Some(np) => match taken.get(&(sp.protocol, np)) {
                        Some(other) if other != &svc.key => problems.push(Problem::new(
                            on.clone(),
                            Reason::NodePortUnavailable,
                            format!("port {port_name}: nodePort {np}/{} is Service {other}'s", sp.protocol),
                        )),
                        _ => {
                            taken.insert((sp.protocol, np), svc.key.clone());
                            e.node_ports.insert(np, backends.clone());
                        }
                    },
                }
            }
            for ip in &addresses {
                let same: BTreeSet<Backend> =
                    backends.iter().filter(|b| b.addr.is_ipv4() == ip.is_ipv4()).cloned().collect();
                e.external.insert(SocketAddr::new(*ip, sp.port), same);
            }
        }
        out.extend(by_protocol.into_values());
    }
    (out, problems)
}

fn backends_of(
    index: &ClusterIndex,
    svc: &Service,
    port_name: Option<&str>,
    target: &TargetPort,
    protocol: Protocol,
) -> BTreeSet<Backend> {
    endpoints_from_slices(index, svc, port_name, protocol)
        .unwrap_or_else(|| endpoints_from_selector(index, svc, target, protocol))
}

fn endpoints_from_slices(
    index: &ClusterIndex,
    svc: &Service,
    port_name: Option<&str>,
    protocol: Protocol,
) -> Option<BTreeSet<Backend>> {
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
            let node = e.node.clone().or_else(|| {
                e.pod.as_ref().and_then(|k| index.pod_id(k)).and_then(|id| index.pod(id)).and_then(|p| p.node.clone())
            });
            out.extend(e.addresses.iter().map(|a| Backend { addr: SocketAddr::new(*a, port), node: node.clone() }));
        }
    }
    Some(out)
}

fn endpoints_from_selector(
    index: &ClusterIndex,
    svc: &Service,
    target: &TargetPort,
    protocol: Protocol,
) -> BTreeSet<Backend> {
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
            port.into_iter().flat_map(move |port| {
                p.ips.iter().map(move |ip| Backend { addr: SocketAddr::new(*ip, port), node: p.node.clone() })
            })
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
        let mut nodes = BTreeMap::new();
        for sp in &svc.ports {
            let backends = backends_of(index, svc, sp.name.as_deref(), &sp.target_port, sp.protocol);
            nodes.extend(backends.iter().filter_map(|b| Some((b.addr, b.node.clone()?))));
            for vip in &svc.cluster_ips {
                let same_family: BTreeSet<SocketAddr> =
                    backends.iter().map(|b| b.addr).filter(|b| b.is_ipv4() == vip.is_ipv4()).collect();
                by_protocol.entry(sp.protocol).or_default().insert(SocketAddr::new(*vip, sp.port), same_family);
            }
        }
        for (protocol, vips) in by_protocol {
            let local = svc.internal_traffic_policy.as_deref() == Some("Local");
            let nodes = nodes.iter().filter(|(a, _)| vips.values().any(|b| b.contains(a)));
            let nodes = nodes.map(|(a, n)| (*a, n.clone())).collect();
            out.push(LoadBalancer {
                service: svc.key.clone(),
                protocol,
                vips,
                affinity_timeout: svc.affinity_timeout,
                local,
                nodes,
            });
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

    const EXPOSED: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Pod, metadata: {name: w0, namespace: x, labels: {app: web}}, spec: {nodeName: n1, containers: []}, status: {podIP: 10.244.0.3}}
- {apiVersion: v1, kind: Pod, metadata: {name: w1, namespace: x, labels: {app: web}}, spec: {nodeName: n2, containers: []}, status: {podIP: 10.244.1.3}}
- {apiVersion: v1, kind: Service, metadata: {name: np, namespace: x},
   spec: {type: NodePort, clusterIP: 10.96.0.10, selector: {app: web}, externalTrafficPolicy: Local, ports: [{port: 80, targetPort: 8080, nodePort: 30080}]}}
- {apiVersion: v1, kind: Service, metadata: {name: lb, namespace: x},
   spec: {type: LoadBalancer, clusterIP: 10.96.0.11, selector: {app: web}, sessionAffinity: ClientIP,
          loadBalancerSourceRanges: [172.30.0.0/28], externalIPs: [10.244.9.9, 198.51.100.7],
          ports: [{port: 80, targetPort: 8080, nodePort: 30081}, {name: dns, port: 53, protocol: UDP, nodePort: 30080}]}}
- {apiVersion: v1, kind: Service, metadata: {name: zclash, namespace: x},
   spec: {type: NodePort, clusterIP: 10.96.0.12, selector: {app: web}, ports: [{port: 81, nodePort: 30080}, {name: b, port: 82, nodePort: 20000}, {name: c, port: 83}]}}
- {apiVersion: v1, kind: Service, metadata: {name: metallb, namespace: x},
   spec: {type: LoadBalancer, loadBalancerClass: metallb.io/metallb, clusterIP: 10.96.0.13, ports: [{port: 80, nodePort: 30090}]}}
"#;

    #[test]
    fn load_balancer_addresses_are_kept_asked_for_or_the_lowest_free() {
        let yaml = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Service, metadata: {name: a, namespace: x}, spec: {type: LoadBalancer, ports: [{port: 80}]}}
- {apiVersion: v1, kind: Service, metadata: {name: b, namespace: x}, spec: {type: LoadBalancer, ports: [{port: 80}]},
   status: {loadBalancer: {ingress: [{ip: 172.30.0.203}]}}}
- {apiVersion: v1, kind: Service, metadata: {name: c, namespace: x}, spec: {type: LoadBalancer, loadBalancerIP: 172.30.0.203, ports: [{port: 80}]}}
- {apiVersion: v1, kind: Service, metadata: {name: d, namespace: x, annotations: {stacknet.io/load-balancer-ip: 172.30.0.206}}, spec: {type: LoadBalancer, ports: [{port: 80}]}}
- {apiVersion: v1, kind: Service, metadata: {name: e, namespace: x}, spec: {type: LoadBalancer, ports: [{port: 80}]}}
- {apiVersion: v1, kind: Service, metadata: {name: f, namespace: x}, spec: {type: LoadBalancer, ports: [{port: 80}]}}
- {apiVersion: v1, kind: Service, metadata: {name: g, namespace: x}, spec: {type: LoadBalancer, loadBalancerClass: other.io/lb, ports: [{port: 80}]}}
"#;
        let idx = index(yaml);
        let pool: Vec<Cidr> = vec!["172.30.0.200/29".parse().unwrap()];
        let (ips, problems) = assign_load_balancer_ips(&idx, &pool, &BTreeMap::new());
        let ip = |k: &str| ips.get(&ObjectKey::new("x", k)).map(|i| i.to_string());
        // b keeps the address its status shows; c asks for b's: refused; d gets the one it asks
        // for; a, e take the lowest free (.201, .202); .204, .205 remain; f gets .204.
        assert_eq!(ip("b").as_deref(), Some("172.30.0.203"));
        assert_eq!(ip("c"), None);
        assert_eq!(ip("d").as_deref(), Some("172.30.0.206"));
        assert_eq!(ip("a").as_deref(), Some("172.30.0.201"));
        assert_eq!(ip("e").as_deref(), Some("172.30.0.202"));
        assert_eq!(ip("f").as_deref(), Some("172.30.0.204"));
        assert_eq!(ip("g"), None, "another class: not ours");
        let reasons: Vec<(String, Reason)> = problems.iter().map(|p| (p.object.to_string(), p.reason)).collect();
        assert_eq!(reasons, [("Service x/c".to_string(), Reason::LoadBalancerIPUnavailable)]);
        // Stable: with the assignment as before, the same again; a pool of one: exhausted.
        assert_eq!(assign_load_balancer_ips(&idx, &pool, &ips).0, ips);
        let (_, problems) = assign_load_balancer_ips(&idx, &["172.30.0.201/32".parse().unwrap()], &BTreeMap::new());
        assert!(problems.iter().any(|p| p.reason == Reason::LoadBalancerPoolExhausted));
    }

    #[test]
    fn exposures_carry_node_ports_external_addresses_and_policies_and_report_what_cannot_be() {
        let idx = index(EXPOSED);
        let lb_ips = BTreeMap::from([(ObjectKey::new("x", "lb"), "172.30.0.201".parse::<IpAddr>().unwrap())]);
        let inside: Vec<Cidr> = vec!["10.244.0.0/16".parse().unwrap(), "10.96.0.0/12".parse().unwrap()];
        let (exposed, problems) = exposures(&idx, &lb_ips, &inside);
        let find = |svc: &str, p: Protocol| exposed.iter().find(|e| e.service.name == svc && e.protocol == p).unwrap();
        let np = find("np", Protocol::Tcp);
        assert!(np.local);
        let b: Vec<(String, Option<String>)> =
            np.node_ports[&30080].iter().map(|b| (b.addr.to_string(), b.node.clone())).collect();
        assert_eq!(b, [("10.244.0.3:8080".into(), Some("n1".into())), ("10.244.1.3:8080".into(), Some("n2".into()))]);
        let lb = find("lb", Protocol::Tcp);
        assert_eq!(lb.node_ports.keys().collect::<Vec<_>>(), [&30081]);
        let ext: Vec<String> = lb.external.keys().map(|a| a.to_string()).collect();
        assert_eq!(ext, ["172.30.0.201:80", "198.51.100.7:80"], "the in-cluster externalIP left out");
        assert_eq!(lb.affinity_timeout, Some(10800));
        assert_eq!(lb.sources, Some(vec!["172.30.0.0/28".parse().unwrap()]));
        // UDP 30080 is free: NodePorts are per protocol.
        assert!(find("lb", Protocol::Udp).node_ports.contains_key(&30080));
        // clash: 30080/TCP is np's, 20000 is out of range, c has none; another class: nothing.
        let clash = find("zclash", Protocol::Tcp);
        assert!(clash.node_ports.is_empty());
        assert!(!exposed.iter().any(|e| e.service.name == "metallb"));
        let mut reasons: Vec<(String, Reason)> = problems.iter().map(|p| (p.object.to_string(), p.reason)).collect();
        reasons.sort();
        assert_eq!(
            reasons,
            [
                ("Service x/lb".to_string(), Reason::ExternalIPInvalid),
                ("Service x/zclash".to_string(), Reason::NodePortUnavailable),
                ("Service x/zclash".to_string(), Reason::NodePortUnavailable),
                ("Service x/zclash".to_string(), Reason::NodePortUnavailable),
            ]
        );
        let bad = EXPOSED.replace("[172.30.0.0/28]", "[172.30.0.0/33]");
        let (exposed, problems) = exposures(&index(&bad), &lb_ips, &inside);
        let lb = exposed.iter().find(|e| e.service.name == "lb").unwrap();
        assert_eq!(lb.sources, Some(vec![]), "a bad range: nobody, not everybody");
        assert!(problems.iter().any(|p| p.reason == Reason::InvalidSourceRange && p.message.contains("/33")));
    }
}
