//! `stacknet reach` beyond pods: nodes (`--nodes`), outside hosts (`--external NAME=IP`) and
//! probes through Services (`--service NS/NAME --via ...`), decided by the engine over the
//! network the direct OVN backend would build from the same manifests (the controller's
//! address management, join addresses and defaults).

use std::collections::BTreeMap;
use std::net::IpAddr;

use stacknet_engine::ipam::{Ipam, IpamConfig};
use stacknet_engine::objects::ObjectKey;
use stacknet_engine::paths::{self, Case, Endpoint, Fabric, Target, Via};
use stacknet_engine::reach::ProbeSpec;
use stacknet_engine::{Cidr, ClusterIndex};

/// What `reach` was asked beyond pods.
pub struct Beyond {
    pub nodes: bool,
    /// Outside hosts, `NAME=IP`.
    pub externals: Vec<String>,
    pub services: Vec<ObjectKey>,
    pub via: Vec<Via>,
    pub snat: bool,
}

impl Beyond {
    pub fn asked(&self) -> bool {
        self.nodes || !self.externals.is_empty() || !self.services.is_empty()
    }
}

/// `NAME=IP` → (name, address).
pub fn parse_external(s: &str) -> Result<(String, IpAddr), String> {
    let (name, ip) = s.split_once('=').ok_or_else(|| format!("--external {s:?}: not NAME=IP"))?;
    if name.is_empty() || name.contains('/') {
        return Err(format!("--external {s:?}: the name must be non-empty and without '/'"));
    }
    let ip = ip.parse().map_err(|_| format!("--external {s:?}: {ip:?} is not an IP address"))?;
    Ok((name.to_string(), ip))
}

/// The index with each pod on the node the controller's address management puts it on, and
/// the fabric the backend builds around it (management addresses from the same IPAM, join
/// addresses as the controller gives them, every Node with an address having a gateway
/// router, load balancer addresses from the Services' status).
pub fn fabric(index: &ClusterIndex, beyond: &Beyond) -> Result<(ClusterIndex, Fabric), String> {
    let cluster: Cidr = stacknet_controller::config::DEFAULT_CLUSTER_CIDR.parse().expect("valid");
    let services: Cidr = stacknet_controller::config::DEFAULT_SERVICE_CIDR.parse().expect("valid");
    let join_cidr: Cidr = stacknet_controller::config::DEFAULT_JOIN_CIDR.parse().expect("valid");
    let mut ipam = Ipam::new(IpamConfig::new(vec![cluster])).map_err(|e| e.to_string())?;
    let assignment = ipam.sync(index);
    let mut placed = index.clone();
    let pods: Vec<_> = index.pods().map(|(_, p)| p.clone()).collect();
    for mut p in pods {
        if p.node.is_none()
            && let Some((node, _)) = assignment.pods.get(&p.key)
        {
            p.node = Some(node.clone());
            placed.apply_pod(p);
        }
    }
    let management = assignment.management.iter().filter_map(|(n, ips)| Some((n.clone(), *ips.first()?))).collect();
    let with_address: Vec<&str> = index.nodes().filter(|n| !n.addresses.is_empty()).map(|n| n.name.as_str()).collect();
    let join = stacknet_ovn::topology::join_addresses(join_cidr, &with_address, &BTreeMap::new());
    let mut externals = BTreeMap::new();
    for e in &beyond.externals {
        let (name, ip) = parse_external(e)?;
        externals.entry(name).or_insert_with(Vec::new).push(ip);
    }
    let lb_ips: BTreeMap<ObjectKey, IpAddr> = index
        .services()
        .filter(|s| stacknet_engine::service::is_ours(s))
        .filter_map(|s| Some((s.key.clone(), *s.ingress_ips.first()?)))
        .collect();
    let fabric = paths::fabric(&placed, &management, &join, externals, beyond.snat, &lb_ips, &[cluster, services]);
    Ok((placed, fabric))
}

/// The endpoints: the pods a matrix covers, then the nodes (with `--nodes`), then the outside
/// hosts.
pub fn endpoints(index: &ClusterIndex, fabric: &Fabric, beyond: &Beyond) -> Vec<Endpoint> {
    let pods = stacknet_engine::reach::probe_pods(index)
        .into_iter()
        .filter_map(|id| index.pod(id))
        .filter(|p| !p.ips.is_empty())
        .map(|p| Endpoint::Pod(p.key.clone()));
    let nodes = fabric
        .nodes
        .iter()
        .filter(|(_, n)| beyond.nodes && !n.addresses.is_empty())
        .map(|(name, _)| Endpoint::Node(name.clone()));
    let hosts = fabric.externals.keys().map(|h| Endpoint::External(h.clone()));
    pods.chain(nodes).chain(hosts).collect()
}

/// One probe's verdicts over every ordered pair of endpoints (`None`: itself).
pub struct Grid {
    pub probe: ProbeSpec,
    pub allowed: Vec<Vec<Option<bool>>>,
}

/// Every pair on every probe.
pub fn grids(
    index: &ClusterIndex,
    fabric: &Fabric,
    endpoints: &[Endpoint],
    probes: &[ProbeSpec],
) -> Result<Vec<Grid>, String> {
    let mut out = Vec::new();
    for probe in probes {
        let mut allowed = Vec::new();
        for a in endpoints {
            let mut row = Vec::new();
            for b in endpoints {
                if a == b {
                    row.push(None);
                    continue;
                }
                let case = Case {
                    from: a.clone(),
                    to: Target::Endpoint(b.clone()),
                    via: Via::Pod,
                    port: probe.port,
                    protocol: probe.protocol,
                    node: None,
                };
                row.push(Some(paths::decide(index, fabric, &case)?));
            }
            allowed.push(row);
        }
        out.push(Grid { probe: *probe, allowed });
    }
    Ok(out)
}

/// The probes through each `--service`: from every endpoint, each `--via` (a NodePort on
/// every node's address), on each of the Service's ports; with their verdicts.
pub fn service_cases(
    index: &ClusterIndex,
    fabric: &Fabric,
    endpoints: &[Endpoint],
    beyond: &Beyond,
) -> Result<Vec<(Case, bool)>, String> {
    let vias = if beyond.via.is_empty() { vec![Via::ClusterIp] } else { beyond.via.clone() };
    let mut out = Vec::new();
    for key in &beyond.services {
        let svc =
            index.services().find(|s| &s.key == key).ok_or_else(|| format!("--service {key}: no such Service"))?;
        for via in &vias {
            let missing = match via {
                Via::LoadBalancer if svc.ingress_ips.is_empty() => Some("no status.loadBalancer.ingress address"),
                Via::ExternalIp if svc.external_ips.is_empty() => Some("no externalIPs"),
                Via::NodePort if svc.ports.iter().all(|p| p.node_port.is_none()) => Some("no nodePort"),
                _ => None,
            };
            if let Some(what) = missing {
                eprintln!("warning: Service {key} has {what}: nothing reaches it via {via}");
            }
            for sp in &svc.ports {
                let targets: Vec<(u16, Option<String>)> =
                    match via {
                        Via::NodePort => match sp.node_port {
                            Some(np) => fabric
                                .nodes
                                .iter()
                                .filter(|(_, n)| !n.addresses.is_empty())
                                .map(|(n, _)| (np, Some(n.clone())))
                                .collect(),
                            None => Vec::new(),
                        },
                        Via::Pod => return Err(
                            "--via pod: a Service is reached through clusterip, nodeport, loadbalancer or externalip"
                                .into(),
                        ),
                        _ => vec![(sp.port, None)],
                    };
                for (port, node) in targets {
                    for from in endpoints {
                        let case = Case {
                            from: from.clone(),
                            to: Target::Service(key.clone()),
                            via: *via,
                            port,
                            protocol: sp.protocol,
                            node: node.clone(),
                        };
                        let v = paths::decide(index, fabric, &case)?;
                        out.push((case, v));
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_hosts_are_name_equals_address() {
        assert_eq!(parse_external("gw=172.30.0.1").unwrap(), ("gw".to_string(), "172.30.0.1".parse().unwrap()));
        assert!(parse_external("gw").unwrap_err().contains("NAME=IP"));
        assert!(parse_external("=1.2.3.4").is_err());
        assert!(parse_external("gw=nope").unwrap_err().contains("not an IP address"));
    }
}
