//! North–south and through-Service reachability: probes whose ends are not only pods but
//! nodes (`node/NAME`, the node's host network) and hosts outside the cluster
//! (`external/NAME`), directly or through a Service (`via` ClusterIP, NodePort, load balancer
//! address, external IP). Pure: the caller says what the network around the pods looks like
//! ([`Fabric`]: each node's addresses, the address its traffic reaches pods from, the address
//! traffic entering at its gateway reaches pods from; the outside hosts; SNAT); this module
//! follows each probe along the path the direct OVN backend builds and asks the NetworkPolicy
//! semantics at the pod ends, with the addresses the pods actually see.
//!
//! The paths, as built (see docs/design.md, "North–south"):
//! - a node reaches pods through its management port, from its management address; a pod and
//!   its own node always talk (an allow above every policy drop), other nodes are policed
//!   like any host (ipBlock on the management address);
//! - a pod reaches a node's own address through that node's management port (its egress
//!   policy applies, except towards its own node), and the outside through its own node's
//!   gateway router (translated to the node's address unless SNAT is off);
//! - nothing outside reaches a pod's address while SNAT is on (the outside has no route);
//! - through a Service every backend must admit the client (the load balancer may pick any):
//!   pods see the client pod's address (ClusterIP, and a NodePort dialled from a pod, which
//!   the pod's own switch balances), the management address (a node dialling a ClusterIP),
//!   or, from outside through a gateway router, that router's join address — the client's
//!   own address with `externalTrafficPolicy: Local`, where a node without a local backend
//!   does not forward; `loadBalancerSourceRanges` admit only their sources to the load
//!   balancer's address, whoever sends (a pod from its own address).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use crate::index::ClusterIndex;
use crate::net::Cidr;
use crate::objects::{ObjectKey, Pod, Protocol};
use crate::semantics;
use crate::service::{self, Backend, Exposure};

/// One end of a probe.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    /// `namespace/name`.
    Pod(ObjectKey),
    /// `node/NAME`: the node's host network.
    Node(String),
    /// `external/NAME`: a host outside the cluster.
    External(String),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Pod(k) => write!(f, "{k}"),
            Endpoint::Node(n) => write!(f, "node/{n}"),
            Endpoint::External(n) => write!(f, "external/{n}"),
        }
    }
}

impl FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some(("node", n)) if !n.is_empty() => Ok(Endpoint::Node(n.into())),
            Some(("external", n)) if !n.is_empty() => Ok(Endpoint::External(n.into())),
            Some((ns, n)) if !ns.is_empty() && !n.is_empty() && !n.contains('/') => {
                Ok(Endpoint::Pod(ObjectKey::new(ns, n)))
            }
            _ => Err(format!("{s:?}: not NAMESPACE/POD, node/NAME or external/NAME")),
        }
    }
}

/// How a probe reaches its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Via {
    /// Straight to the destination's own address.
    Pod,
    /// The Service's cluster IP and port.
    ClusterIp,
    /// A node's address and the Service's `nodePort`.
    NodePort,
    /// The Service's load balancer address and port.
    LoadBalancer,
    /// One of the Service's `externalIPs` and its port.
    ExternalIp,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Pod => "pod",
            Via::ClusterIp => "clusterip",
            Via::NodePort => "nodeport",
            Via::LoadBalancer => "loadbalancer",
            Via::ExternalIp => "externalip",
        }
    }
}

impl FromStr for Via {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "pod" => Via::Pod,
            "clusterip" => Via::ClusterIp,
            "nodeport" => Via::NodePort,
            "loadbalancer" => Via::LoadBalancer,
            "externalip" => Via::ExternalIp,
            _ => return Err(format!("via {s:?}: not pod, clusterip, nodeport, loadbalancer or externalip")),
        })
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One probe: `from` sends to `to` (an endpoint with `via` = pod, else a Service) on `port`
/// (the Service's port, or its `nodePort` with `via` = nodeport, dialled on `node`'s address).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Case {
    pub from: Endpoint,
    pub to: Target,
    pub via: Via,
    pub port: u16,
    pub protocol: Protocol,
    /// With `via` = nodeport: whose address is dialled.
    pub node: Option<String>,
}

/// What a probe is sent to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    Endpoint(Endpoint),
    Service(ObjectKey),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Endpoint(e) => write!(f, "{e}"),
            Target::Service(k) => write!(f, "{k}"),
        }
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} → {} {}/{} via {}", self.from, self.to, self.port, self.protocol, self.via)?;
        if let Some(n) = &self.node {
            write!(f, " on {n}")?;
        }
        Ok(())
    }
}

/// A node as the paths around the pods see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeSide {
    /// Its own addresses (`status.addresses`).
    pub addresses: Vec<IpAddr>,
    /// Its management address: what its traffic reaches pods from (`None`: no management
    /// port, it cannot reach the pod network).
    pub management: Option<IpAddr>,
    /// Its gateway router's join address: what traffic entering there reaches pods from
    /// (`None`: no gateway router, no egress and no NodePort there).
    pub join: Option<IpAddr>,
}

/// The network around the pods.
#[derive(Debug, Clone, Default)]
pub struct Fabric {
    pub nodes: BTreeMap<String, NodeSide>,
    /// Hosts outside the cluster, by name.
    pub externals: BTreeMap<String, Vec<IpAddr>>,
    /// Pod traffic to the outside leaves translated to its node's address.
    pub snat: bool,
    /// How Services are reached from outside (see [`service::exposures`]).
    pub exposures: Vec<Exposure>,
}

/// Why a probe cannot be decided (it names something that is not there).
pub type Unknown = String;

/// A stand-in for a host (a node or an outside host) at `ip`: never selected by a policy,
/// matched by ipBlocks only (as a hostNetwork pod is).
pub(crate) fn host(name: &str, ip: IpAddr) -> Pod {
    Pod {
        key: ObjectKey::new("", name),
        uid: None,
        labels: Default::default(),
        ips: vec![ip],
        status_ips: vec![],
        host_network: true,
        ports: vec![],
        node: None,
        terminated: false,
        network_annotation: None,
        networks_annotation: None,
        network_status_annotation: None,
        sriov_devices_annotation: None,
    }
}

/// A pod as it appears to a peer at `ip` (the address the peer sees it from).
fn seen_as(pod: &Pod, ip: IpAddr) -> Pod {
    let mut p = pod.clone();
    p.ips = vec![ip];
    p
}

impl Fabric {
    fn node(&self, name: &str) -> Result<&NodeSide, Unknown> {
        self.nodes.get(name).ok_or_else(|| format!("no node {name}"))
    }

    fn external(&self, name: &str) -> Result<IpAddr, Unknown> {
        self.externals.get(name).and_then(|ips| ips.first().copied()).ok_or_else(|| format!("no external host {name}"))
    }

    fn exposure(&self, svc: &ObjectKey, protocol: Protocol) -> Option<&Exposure> {
        self.exposures.iter().find(|e| &e.service == svc && e.protocol == protocol)
    }
}

fn pod<'a>(index: &'a ClusterIndex, key: &ObjectKey) -> Result<&'a Pod, Unknown> {
    index
        .pod_id(key)
        .and_then(|id| index.pod(id))
        .filter(|p| !p.terminated && !p.ips.is_empty())
        .ok_or_else(|| format!("no running pod {key} with an address"))
}

/// Whether the probe gets through, following the path the network builds (see the module
/// documentation); `Err` when it names a pod, node, host or Service that is not there.
pub fn decide(index: &ClusterIndex, fabric: &Fabric, case: &Case) -> Result<bool, Unknown> {
    match (&case.to, case.via) {
        (Target::Endpoint(to), Via::Pod) => direct(index, fabric, &case.from, to, case.port, case.protocol),
        (Target::Service(svc), Via::Pod) => {
            Err(format!("Service {svc}: reached via clusterip, nodeport, loadbalancer or externalip, not via pod"))
        }
        (Target::Service(svc), via) => through_service(index, fabric, case, svc, via),
        (Target::Endpoint(_), via) => Err(format!("via {via} goes to a Service, not to {}", case.to)),
    }
}

/// Straight to the destination's address.
fn direct(
    index: &ClusterIndex,
    fabric: &Fabric,
    from: &Endpoint,
    to: &Endpoint,
    port: u16,
    protocol: Protocol,
) -> Result<bool, Unknown> {
    Ok(match (from, to) {
        (Endpoint::Pod(a), Endpoint::Pod(b)) => {
            semantics::evaluate(index, pod(index, a)?, pod(index, b)?, port, protocol).allowed()
        }
        (Endpoint::Node(n), Endpoint::Pod(b)) => {
            let (node, b) = (fabric.node(n)?, pod(index, b)?);
            match node.management {
                None => false,
                Some(_) if b.node.as_deref() == Some(n) => true,
                Some(m) => semantics::evaluate(index, &host(n, m), b, port, protocol).allowed(),
            }
        }
        (Endpoint::Pod(a), Endpoint::Node(n)) => {
            let (a, node) = (pod(index, a)?, fabric.node(n)?);
            let Some(dst) = node.addresses.iter().find(|ip| a.ips.iter().any(|s| s.is_ipv4() == ip.is_ipv4())) else {
                return Ok(false);
            };
            // The node's own address is behind its management port.
            node.management.is_some()
                && (a.node.as_deref() == Some(n)
                    || semantics::evaluate(index, a, &host(n, *dst), port, protocol).allowed())
        }
        (Endpoint::Pod(a), Endpoint::External(x)) => {
            let (a, ip) = (pod(index, a)?, fabric.external(x)?);
            let gateway = a.node.as_deref().and_then(|n| fabric.nodes.get(n)).and_then(|n| n.join);
            gateway.is_some() && semantics::evaluate(index, a, &host(x, ip), port, protocol).allowed()
        }
        (Endpoint::External(x), Endpoint::Pod(b)) => {
            let (ip, b) = (fabric.external(x)?, pod(index, b)?);
            // Routable pod addresses only without SNAT, through the pod's node's gateway.
            let gateway = b.node.as_deref().and_then(|n| fabric.nodes.get(n)).and_then(|n| n.join);
            !fabric.snat && gateway.is_some() && semantics::evaluate(index, &host(x, ip), b, port, protocol).allowed()
        }
        // Host to host: outside the pod network, no policy of the cluster's applies.
        (Endpoint::Node(n), _) | (_, Endpoint::Node(n)) => {
            fabric.node(n)?;
            for e in [from, to] {
                if let Endpoint::External(x) = e {
                    fabric.external(x)?;
                }
            }
            true
        }
        (Endpoint::External(a), Endpoint::External(b)) => {
            fabric.external(a)?;
            fabric.external(b)?;
            true
        }
    })
}

/// Whether `backend` admits `client` (as it appears there, from `seen`), the client's own
/// egress allowing it (a pod client's; hosts have none), `same_node` when the two share a
/// node (then nothing is policed).
fn admits(
    index: &ClusterIndex,
    client: Option<&Pod>,
    seen: &Pod,
    backend: &Backend,
    protocol: Protocol,
    same_node: bool,
) -> bool {
    let port = backend.addr.port();
    let target = index.pods().map(|(_, p)| p).find(|p| !p.terminated && p.ips.contains(&backend.addr.ip()));
    let egress = |to: &Pod| client.is_none_or(|c| semantics::evaluate(index, c, to, port, protocol).egress.permits());
    match target {
        // A host-network or outside endpoint: only the client's egress.
        None => egress(&host("endpoint", backend.addr.ip())),
        Some(t) if !t.is_policy_subject() => egress(t),
        Some(_) if same_node => true,
        Some(t) => egress(t) && semantics::evaluate(index, seen, t, port, protocol).ingress.permits(),
    }
}

fn through_service(
    index: &ClusterIndex,
    fabric: &Fabric,
    case: &Case,
    svc: &ObjectKey,
    via: Via,
) -> Result<bool, Unknown> {
    let service = index.services().find(|s| &s.key == svc).ok_or_else(|| format!("no Service {svc}"))?;
    let protocol = case.protocol;
    // Who sends, and from which address pods see it.
    let (client_pod, client_node, client_ip): (Option<&Pod>, Option<&str>, IpAddr) = match &case.from {
        Endpoint::Pod(k) => {
            let p = pod(index, k)?;
            (Some(p), p.node.as_deref(), p.ips[0])
        }
        Endpoint::Node(n) => {
            let side = fabric.node(n)?;
            let ip = match via {
                Via::ClusterIp => match side.management {
                    Some(m) => m,
                    None => return Ok(false),
                },
                _ => *side.addresses.first().ok_or_else(|| format!("node {n} has no address"))?,
            };
            (None, Some(n.as_str()), ip)
        }
        Endpoint::External(x) => (None, None, fabric.external(x)?),
    };
    let all_admit = |backends: &BTreeSet<Backend>, seen: &dyn Fn(&Backend) -> Pod, same: &dyn Fn(&Backend) -> bool| {
        !backends.is_empty() && backends.iter().all(|b| admits(index, client_pod, &seen(b), b, protocol, same(b)))
    };
    let as_client = |ip: IpAddr| match client_pod {
        Some(p) => seen_as(p, ip),
        None => host("client", ip),
    };
    match via {
        Via::Pod => Err(format!("Service {svc}: not reached via pod")),
        Via::ClusterIp => {
            let ip = service.cluster_ips.first().ok_or_else(|| format!("Service {svc} has no cluster IP"))?;
            let lbs = service::load_balancers(index);
            let Some(lb) = lbs.iter().find(|lb| &lb.service == svc && lb.protocol == protocol) else {
                return Ok(false);
            };
            let vips = lb.vips_on(client_node.unwrap_or_default());
            let Some(addrs) = vips.get(&SocketAddr::new(*ip, case.port)) else { return Ok(false) };
            if matches!(case.from, Endpoint::External(_)) {
                return Ok(false);
            }
            let backends: BTreeSet<Backend> =
                addrs.iter().map(|a| Backend { addr: *a, node: lb.nodes.get(a).cloned() }).collect();
            // Hairpin: a pod reaching itself through the VIP is seen from the VIP.
            let seen = |b: &Backend| {
                if client_pod.is_some_and(|p| p.ips.contains(&b.addr.ip())) {
                    as_client(*ip)
                } else {
                    as_client(client_ip)
                }
            };
            let same = |b: &Backend| client_pod.is_none() && b.node.is_some() && b.node.as_deref() == client_node;
            Ok(all_admit(&backends, &seen, &same))
        }
        Via::NodePort => {
            let n = case.node.as_deref().ok_or("via nodeport needs the node whose address is dialled")?;
            let side = fabric.node(n)?;
            let Some(e) = fabric.exposure(svc, protocol) else { return Ok(false) };
            let Some(backends) = e.node_ports.get(&case.port) else { return Ok(false) };
            match &case.from {
                // A pod's own switch balances a NodePort on any node's address, to every
                // backend, from the pod's address.
                Endpoint::Pod(_) => Ok(all_admit(backends, &|_| as_client(client_ip), &|_| false)),
                // A node's own NodePort is its host's (no proxy there).
                Endpoint::Node(m) if m == n => Ok(false),
                _ => {
                    let Some(join) = side.join else { return Ok(false) };
                    if e.local {
                        let local: BTreeSet<Backend> =
                            backends.iter().filter(|b| b.node.as_deref() == Some(n)).cloned().collect();
                        Ok(all_admit(&local, &|_| as_client(client_ip), &|_| false))
                    } else {
                        Ok(all_admit(backends, &|_| as_client(join), &|_| false))
                    }
                }
            }
        }
        Via::LoadBalancer | Via::ExternalIp => {
            // The load balancer's address is the external one that is not in externalIPs.
            let wanted = |ip: &IpAddr| service.external_ips.contains(ip) == (via == Via::ExternalIp);
            let Some(e) = fabric.exposure(svc, protocol) else { return Ok(false) };
            let Some((_, backends)) = e.external.iter().find(|(a, _)| a.port() == case.port && wanted(&a.ip())) else {
                return Ok(false);
            };
            // loadBalancerSourceRanges: the load balancer's address only, from anywhere (pods
            // included, from their own address).
            if let Some(sources) = &e.sources
                && via == Via::LoadBalancer
                && !sources.iter().any(|c| c.contains(client_ip))
            {
                return Ok(false);
            }
            // Entered at a gateway router: every node's that answers for the address may
            // get it, so each must admit; from a pod, its own node's.
            let entries: Vec<(&String, IpAddr)> = match (&case.from, client_node) {
                (Endpoint::Pod(_), Some(n)) => {
                    fabric.nodes.get_key_value(n).and_then(|(k, s)| Some((k, s.join?))).into_iter().collect()
                }
                _ => fabric.nodes.iter().filter_map(|(k, s)| Some((k, s.join?))).collect(),
            };
            if e.local {
                let answering: Vec<_> =
                    entries.iter().filter(|(n, _)| backends.iter().any(|b| b.node.as_ref() == Some(*n))).collect();
                Ok(!answering.is_empty()
                    && answering.iter().all(|(n, _)| {
                        let local: BTreeSet<Backend> =
                            backends.iter().filter(|b| b.node.as_ref() == Some(*n)).cloned().collect();
                        all_admit(&local, &|_| as_client(client_ip), &|_| false)
                    }))
            } else {
                Ok(!entries.is_empty()
                    && entries.iter().all(|(_, join)| all_admit(backends, &|_| as_client(*join), &|_| false)))
            }
        }
    }
}

/// The fabric the direct OVN backend builds for `index`: each Node's addresses with its
/// `management` and `join` addresses (from the caller's IPAM and join allocation), the outside
/// hosts, SNAT, and the Services' exposures for `lb_ips` (`inside`: cluster and Service CIDRs).
pub fn fabric(
    index: &ClusterIndex,
    management: &BTreeMap<String, IpAddr>,
    join: &BTreeMap<String, IpAddr>,
    externals: BTreeMap<String, Vec<IpAddr>>,
    snat: bool,
    lb_ips: &BTreeMap<ObjectKey, IpAddr>,
    inside: &[Cidr],
) -> Fabric {
    let nodes = index
        .nodes()
        .map(|n| {
            (
                n.name.clone(),
                NodeSide {
                    addresses: n.addresses.clone(),
                    management: management.get(&n.name).copied(),
                    join: join.get(&n.name).copied(),
                },
            )
        })
        .collect();
    let (exposures, _) = service::exposures(index, lb_ips, inside);
    Fabric { nodes, externals, snat, exposures }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest;

    const CLUSTER: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Node, metadata: {name: n1}, spec: {podCIDR: 10.244.1.0/24}, status: {addresses: [{type: InternalIP, address: 172.30.0.11}]}}
- {apiVersion: v1, kind: Node, metadata: {name: n2}, spec: {podCIDR: 10.244.2.0/24}, status: {addresses: [{type: InternalIP, address: 172.30.0.12}]}}
- {apiVersion: v1, kind: Pod, metadata: {name: web, namespace: x, labels: {app: web}}, spec: {nodeName: n1}, status: {podIP: 10.244.1.10}}
- {apiVersion: v1, kind: Pod, metadata: {name: db, namespace: x, labels: {app: db}}, spec: {nodeName: n2}, status: {podIP: 10.244.2.10}}
- {apiVersion: v1, kind: Pod, metadata: {name: c, namespace: y}, spec: {nodeName: n2}, status: {podIP: 10.244.2.20}}
- {apiVersion: v1, kind: Service, metadata: {name: web, namespace: x},
   spec: {type: LoadBalancer, clusterIP: 10.96.0.10, selector: {app: web}, loadBalancerSourceRanges: [172.30.0.96/28],
          ports: [{port: 80, nodePort: 30080}]}, status: {loadBalancer: {ingress: [{ip: 172.30.0.200}]}}}
- {apiVersion: v1, kind: Service, metadata: {name: local, namespace: x},
   spec: {type: NodePort, clusterIP: 10.96.0.11, selector: {app: web}, externalTrafficPolicy: Local, internalTrafficPolicy: Local,
          ports: [{port: 80, nodePort: 30081}]}}
- {apiVersion: v1, kind: Service, metadata: {name: db, namespace: x}, spec: {clusterIP: 10.96.0.12, selector: {app: db}, ports: [{port: 5432}]}}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: deny, namespace: x}
  spec: {podSelector: {}, policyTypes: [Ingress]}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: web-from-outside, namespace: x}
  spec:
    podSelector: {matchLabels: {app: web}}
    ingress: [{from: [{ipBlock: {cidr: 172.30.0.0/24}}, {ipBlock: {cidr: 100.64.0.0/16}}]}]
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: db-from-web, namespace: x}
  spec:
    podSelector: {matchLabels: {app: db}}
    ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
"#;

    fn world(snat: bool) -> (ClusterIndex, Fabric) {
        let index = ClusterIndex::from_objects(manifest::parse("c.yaml", CLUSTER).unwrap().objects);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let management = BTreeMap::from([("n1".into(), ip("10.244.1.2")), ("n2".into(), ip("10.244.2.2"))]);
        let join = BTreeMap::from([("n1".into(), ip("100.64.0.2")), ("n2".into(), ip("100.64.0.3"))]);
        let externals = BTreeMap::from([
            ("near".to_string(), vec![ip("172.30.0.100")]),
            ("far".to_string(), vec![ip("198.51.100.7")]),
        ]);
        let lb_ips = BTreeMap::from([(ObjectKey::new("x", "web"), ip("172.30.0.200"))]);
        let inside = ["10.244.0.0/16".parse().unwrap(), "10.96.0.0/12".parse().unwrap()];
        let f = fabric(&index, &management, &join, externals, snat, &lb_ips, &inside);
        (index, f)
    }

    fn case(from: &str, to: &str, via: Via, port: u16, node: Option<&str>) -> Case {
        let to =
            if via == Via::Pod { Target::Endpoint(to.parse().unwrap()) } else { Target::Service(to.parse().unwrap()) };
        Case { from: from.parse().unwrap(), to, via, port, protocol: Protocol::Tcp, node: node.map(str::to_string) }
    }

    impl Case {
        fn with_via(mut self, via: Via) -> Case {
            self.via = via;
            self
        }
    }

    fn yes(i: &ClusterIndex, f: &Fabric, c: Case) -> bool {
        decide(i, f, &c).unwrap_or_else(|e| panic!("{c}: {e}"))
    }

    #[test]
    fn endpoints_and_via_read_and_print_back() {
        for s in ["x/web", "node/n1", "external/near"] {
            assert_eq!(s.parse::<Endpoint>().unwrap().to_string(), s);
        }
        assert!("web".parse::<Endpoint>().unwrap_err().contains("NAMESPACE/POD"));
        assert!("node/".parse::<Endpoint>().is_err());
        for v in ["pod", "clusterip", "nodeport", "loadbalancer", "externalip"] {
            assert_eq!(v.parse::<Via>().unwrap().as_str(), v);
        }
        assert!("ingress".parse::<Via>().is_err());
    }

    #[test]
    fn a_node_always_reaches_its_own_pods_and_other_nodes_are_policed_by_address() {
        let (i, f) = world(true);
        // db (n2) admits only web: its own node still gets in, n1 does not.
        assert!(yes(&i, &f, case("node/n2", "x/db", Via::Pod, 5432, None)));
        assert!(!yes(&i, &f, case("node/n1", "x/db", Via::Pod, 5432, None)));
        // web admits 172.30.0.0/24 and the join network, not n2's management address.
        assert!(yes(&i, &f, case("node/n1", "x/web", Via::Pod, 80, None)));
        assert!(!yes(&i, &f, case("node/n2", "x/web", Via::Pod, 80, None)));
        // Pods reach nodes (no egress policy here).
        assert!(yes(&i, &f, case("x/db", "node/n1", Via::Pod, 22, None)));
    }

    #[test]
    fn the_outside_is_reached_through_the_gateway_and_reaches_back_only_without_snat() {
        let (i, f) = world(true);
        assert!(yes(&i, &f, case("y/c", "external/far", Via::Pod, 443, None)));
        assert!(!yes(&i, &f, case("external/near", "x/web", Via::Pod, 80, None)));
        let (i, f) = world(false);
        assert!(yes(&i, &f, case("external/near", "x/web", Via::Pod, 80, None)));
        assert!(!yes(&i, &f, case("external/far", "x/web", Via::Pod, 80, None)), "outside the ipBlocks");
        // Without a gateway router, no way out.
        let (i, mut f) = world(true);
        f.nodes.get_mut("n2").unwrap().join = None;
        assert!(!yes(&i, &f, case("y/c", "external/far", Via::Pod, 443, None)));
    }

    #[test]
    fn services_admit_what_every_backend_admits_as_it_sees_the_client() {
        let (i, f) = world(true);
        // ClusterIP: db admits web, not c.
        assert!(yes(&i, &f, case("x/web", "x/db", Via::ClusterIp, 5432, None)));
        assert!(!yes(&i, &f, case("y/c", "x/db", Via::ClusterIp, 5432, None)));
        assert!(!yes(&i, &f, case("x/web", "x/db", Via::ClusterIp, 5433, None)), "no such port");
        // NodePort from outside: seen from the join address (admitted by web's ipBlock) on
        // every node.
        assert!(yes(&i, &f, case("external/far", "x/web", Via::NodePort, 30080, Some("n1"))));
        assert!(yes(&i, &f, case("external/far", "x/web", Via::NodePort, 30080, Some("n2"))));
        // ETP=Local: the client's own address (far is outside the ipBlocks; near is in) and
        // only where a backend runs.
        assert!(!yes(&i, &f, case("external/far", "x/local", Via::NodePort, 30081, Some("n1"))));
        assert!(yes(&i, &f, case("external/near", "x/local", Via::NodePort, 30081, Some("n1"))));
        assert!(!yes(&i, &f, case("external/near", "x/local", Via::NodePort, 30081, Some("n2"))));
        // From another node; a node's own NodePort is not proxied.
        assert!(yes(&i, &f, case("node/n2", "x/web", Via::NodePort, 30080, Some("n1"))));
        assert!(!yes(&i, &f, case("node/n1", "x/web", Via::NodePort, 30080, Some("n1"))));
        // From a pod: seen from the pod (c is outside web's ipBlocks).
        assert!(!yes(&i, &f, case("y/c", "x/web", Via::NodePort, 30080, Some("n1"))));
        // The load balancer's address: only from loadBalancerSourceRanges (near is in them).
        assert!(yes(&i, &f, case("external/near", "x/web", Via::LoadBalancer, 80, None)));
        assert!(!yes(&i, &f, case("external/far", "x/web", Via::LoadBalancer, 80, None)));
        assert!(!yes(&i, &f, case("external/near", "x/web", Via::ExternalIp, 80, None)), "it has no externalIPs");
        // Pods too, from their own address (c is outside the ranges).
        assert!(!yes(&i, &f, case("y/c", "x/web", Via::LoadBalancer, 80, None)));
        let (i, mut f) = world(true);
        f.exposures.iter_mut().for_each(|e| e.sources = None);
        assert!(yes(&i, &f, case("external/far", "x/web", Via::LoadBalancer, 80, None)));
        // Without ranges a pod gets in, seen from its node's join address.
        assert!(yes(&i, &f, case("y/c", "x/web", Via::LoadBalancer, 80, None)));
        // internalTrafficPolicy Local: only a backend on the client's node.
        assert!(!yes(&i, &f, case("y/c", "x/local", Via::ClusterIp, 80, None)), "c's node has none");
        // Unknown names, and a Service "via pod", are errors, not verdicts (nor panics).
        assert!(decide(&i, &f, &case("x/web", "x/db", Via::ClusterIp, 5432, None).with_via(Via::Pod)).is_err());
        assert!(decide(&i, &f, &case("x/web", "x/nope", Via::ClusterIp, 80, None)).is_err());
        assert!(decide(&i, &f, &case("external/nope", "x/web", Via::Pod, 80, None)).is_err());
    }
}
