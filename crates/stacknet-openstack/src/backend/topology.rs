//! The cluster's networks in Neutron: the shared pod network and its subnets (or, with a
//! network per namespace, the subnet pools namespaces' subnets are cut from), the Service
//! network, and the cluster router joining them, with its gateway on the external network.
//! Made (each if missing) when Neutron is read, before anything else: every later step needs
//! their ids.

use std::collections::BTreeMap;
use std::net::IpAddr;

use stacknet_engine::Cidr;

use crate::cloud::Error;
use crate::neutron;

use super::config::{NAMESPACE_NETWORK_PREFIX, NETWORK_ID, ROUTER_ID, SERVICE_NETWORK_ID, SUBNET_POOL_PREFIX};
use super::{NeutronBackend, Report};

/// The cluster's networks in Neutron.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The shared pod network (`None` when every namespace has its own).
    pub network: Option<neutron::Network>,
    pub subnets: BTreeMap<Cidr, neutron::Subnet>,
    /// Network per namespace: the subnet pools (one per pod CIDR), and each namespace's
    /// network and subnets.
    pub pools: BTreeMap<Cidr, neutron::SubnetPool>,
    pub namespaces: BTreeMap<String, NamespaceNetwork>,
    pub router: neutron::Router,
    /// The Service network's subnet (VIPs).
    pub service_subnet: Option<neutron::Subnet>,
    /// Where floating IPs come from (not ours: never changed).
    pub external_network: Option<neutron::Network>,
}

/// A namespace's own network.
#[derive(Debug, Clone)]
pub struct NamespaceNetwork {
    pub network: neutron::Network,
    pub subnets: Vec<neutron::Subnet>,
}

impl Topology {
    /// The subnet of ours holding `ip`.
    pub fn subnet_of(&self, ip: IpAddr) -> Option<&neutron::Subnet> {
        self.subnets.iter().find(|(c, _)| c.contains(ip)).map(|(_, s)| s).or_else(|| {
            self.namespaces
                .values()
                .flat_map(|n| n.subnets.iter())
                .find(|s| s.cidr.parse::<Cidr>().is_ok_and(|c| c.contains(ip)))
        })
    }

    /// The network a pod of `namespace` gets its port on, with its subnets by prefix
    /// (`None`: its namespace's network is not there).
    pub(super) fn pod_network(&self, per_namespace: bool, namespace: &str) -> Option<(String, Vec<(Cidr, String)>)> {
        if !per_namespace {
            let n = self.network.as_ref()?;
            return Some((n.id.clone(), self.subnets.iter().map(|(c, s)| (*c, s.id.clone())).collect()));
        }
        let n = self.namespaces.get(namespace)?;
        let subnets = n.subnets.iter().filter_map(|s| Some((s.cidr.parse::<Cidr>().ok()?, s.id.clone()))).collect();
        Some((n.network.id.clone(), subnets))
    }
}

/// The last address of a prefix (IPv4: the last before broadcast).
fn last_address(c: &Cidr) -> Option<IpAddr> {
    let (_, high) = c.halves()?;
    let mut last = high;
    while let Some((_, h)) = last.halves() {
        last = h;
    }
    match last.network() {
        IpAddr::V4(a) => Some(IpAddr::V4((u32::from(a) - 1).into())),
        v6 => Some(v6),
    }
}

fn subnet_id(c: &Cidr) -> String {
    format!("subnet:{c}")
}

impl NeutronBackend {
    /// A network of ours by identity (made if missing, tagged).
    async fn network(
        &self,
        id: &str,
        name: &str,
        existing: &[neutron::Network],
        report: &mut Report,
    ) -> Result<neutron::Network, Error> {
        let c = &self.config;
        let marker = c.marker(id);
        if let Some(n) = existing.iter().find(|n| n.description == marker) {
            return Ok(n.clone());
        }
        let n = neutron::create_network(&self.cloud, &c.name(name), &marker, None).await?;
        neutron::set_tags(&self.cloud, "networks", &n.id, &[c.tag()]).await?;
        report.created += 1;
        Ok(n)
    }

    /// A subnet of ours on `network` (made if missing, tagged).
    async fn subnet(
        &self,
        network: &neutron::Network,
        cidr: &Cidr,
        gateway: Option<IpAddr>,
        existing: &[neutron::Subnet],
        report: &mut Report,
    ) -> Result<neutron::Subnet, Error> {
        let c = &self.config;
        let marker = c.marker(&subnet_id(cidr));
        if let Some(s) = existing.iter().find(|s| s.description == marker && s.network_id == network.id) {
            return Ok(s.clone());
        }
        let gateway = gateway.map(|g| g.to_string());
        let name = c.name(&format!("{}-{cidr}", network.name.rsplit('-').next().unwrap_or("net")));
        let s = neutron::create_subnet(&self.cloud, &network.id, &name, &cidr.to_string(), gateway.as_deref(), &marker)
            .await?;
        neutron::set_tags(&self.cloud, "subnets", &s.id, &[c.tag()]).await?;
        report.created += 1;
        Ok(s)
    }

    /// The pod network and its subnets, the Service network, and the cluster router joining
    /// them (each made if missing).
    pub(super) async fn topology(&self, report: &mut Report) -> Result<Topology, Error> {
        let c = &self.config;
        let tag = c.tag();
        let networks = neutron::networks(&self.cloud, &tag).await?;
        let existing = neutron::subnets(&self.cloud, &tag).await?;
        let mut network = None;
        let mut subnets = BTreeMap::new();
        let mut pools = BTreeMap::new();
        let mut namespaces = BTreeMap::new();
        if c.network_per_namespace {
            let have = neutron::subnet_pools(&self.cloud, &tag).await?;
            for cidr in &c.pod_cidrs {
                let marker = c.marker(&format!("{SUBNET_POOL_PREFIX}{cidr}"));
                let pool = match have.iter().find(|p| p.description == marker) {
                    Some(p) => p.clone(),
                    None => {
                        let len = if cidr.network().is_ipv4() { c.namespace_prefix_len } else { 64 };
                        let name = c.name(&format!("pods-{cidr}"));
                        let p =
                            neutron::create_subnet_pool(&self.cloud, &name, &cidr.to_string(), len, &marker).await?;
                        neutron::set_tags(&self.cloud, "subnetpools", &p.id, std::slice::from_ref(&tag)).await?;
                        report.created += 1;
                        p
                    }
                };
                pools.insert(*cidr, pool);
            }
            let prefix = c.marker(NAMESPACE_NETWORK_PREFIX);
            for n in networks.iter().filter(|n| n.description.starts_with(&prefix)) {
                let ns = n.description[prefix.len()..].to_string();
                let subnets = existing.iter().filter(|s| s.network_id == n.id).cloned().collect();
                namespaces.insert(ns, NamespaceNetwork { network: n.clone(), subnets });
            }
        } else {
            let n = self.network(NETWORK_ID, "pods", &networks, report).await?;
            for cidr in &c.pod_cidrs {
                subnets.insert(*cidr, self.subnet(&n, cidr, None, &existing, report).await?);
            }
            network = Some(n);
        }
        let service_subnet = match &c.service_cidr {
            Some(cidr) => {
                let n = self.network(SERVICE_NETWORK_ID, "services", &networks, report).await?;
                Some(self.subnet(&n, cidr, last_address(cidr), &existing, report).await?)
            }
            None => None,
        };
        let marker = c.marker(ROUTER_ID);
        let router = match neutron::routers(&self.cloud, &tag).await?.into_iter().find(|r| r.description == marker) {
            Some(r) => r,
            None => {
                let r = neutron::create_router(&self.cloud, &c.name("router"), &marker).await?;
                neutron::set_tags(&self.cloud, "routers", &r.id, std::slice::from_ref(&tag)).await?;
                report.created += 1;
                r
            }
        };
        let external_network = match &c.external_network {
            Some(name) => Some(neutron::find_network(&self.cloud, name).await?),
            None => None,
        };
        let router = match &external_network {
            Some(ext) if router.gateway_network() != Some(ext.id.as_str()) => {
                report.updated += 1;
                neutron::set_router_gateway(&self.cloud, &router.id, &ext.id).await?
            }
            _ => router,
        };
        let attached = neutron::router_subnets(&self.cloud, &router.id).await?;
        let ns_subnets = namespaces.values().flat_map(|n: &NamespaceNetwork| n.subnets.iter());
        for s in subnets.values().chain(service_subnet.iter()).chain(ns_subnets) {
            if !attached.contains(&s.id) {
                neutron::add_router_interface(&self.cloud, &router.id, &s.id).await?;
                report.created += 1;
            }
        }
        Ok(Topology { network, subnets, pools, namespaces, router, service_subnet, external_network })
    }
}
