//! Services as Octavia load balancers with the `ovn` provider: one load balancer per Service
//! and address family, its VIP the ClusterIP on the Service subnet, a listener and a pool
//! (`SOURCE_IP_PORT`, the only algorithm the provider has) per port and protocol, the ready
//! endpoints as members. The provider writes OVN Load_Balancer rows, one per protocol, named
//! by the Octavia load balancer's id.
//!
//! What the provider cannot honour is reported on the Service, never dropped silently:
//! `sessionAffinity: ClientIP` (Octavia accepts session persistence and the provider ignores
//! it), `loadBalancerSourceRanges` (refused), `externalTrafficPolicy: Local`.
//!
//! Octavia refuses any change to a load balancer while it is `PENDING_*`: changes to one load
//! balancer are made one at a time, each awaited until it is `ACTIVE` again (with backoff);
//! `ERROR` is reported, and the load balancer is made again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use stacknet_engine::ClusterIndex;
use stacknet_engine::objects::{ObjectKey, Protocol};
use stacknet_engine::service;

use crate::backend::{NeutronConfig, Problem, Topology};
use crate::cloud::{Call, Cloud, Error, Service as Svc};
use crate::neutron;

const O: Svc = Svc::LoadBalancer;
const CONCURRENCY: usize = 8;
/// How long a load balancer may stay `PENDING_*`.
const SETTLE: Duration = Duration::from_secs(120);

/// One load balancer as the cluster needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbSpec {
    /// `svc:<ns>/<name>:ipv4`
    pub id: String,
    pub service: ObjectKey,
    pub vip: IpAddr,
    /// (protocol, port) → backends.
    pub listeners: BTreeMap<(Protocol, u16), BTreeSet<SocketAddr>>,
    /// A LoadBalancer Service's IPv4 load balancer: a floating IP on its VIP.
    pub floating: bool,
}

/// The load balancers the cluster's Services need, and what they ask for that the `ovn`
/// provider cannot do.
pub fn plan(index: &ClusterIndex) -> (Vec<LbSpec>, Vec<Problem>) {
    let mut specs: BTreeMap<String, LbSpec> = BTreeMap::new();
    for lb in service::load_balancers(index) {
        for (vip, backends) in lb.vips {
            let family = if vip.is_ipv4() { "ipv4" } else { "ipv6" };
            let id = format!("svc:{}:{family}", lb.service);
            let spec = specs.entry(id.clone()).or_insert_with(|| LbSpec {
                id,
                service: lb.service.clone(),
                vip: vip.ip(),
                listeners: BTreeMap::new(),
                floating: false,
            });
            spec.listeners.entry((lb.protocol, vip.port())).or_default().extend(backends);
        }
    }
    for spec in specs.values_mut() {
        spec.floating =
            spec.vip.is_ipv4() && index.services().any(|s| s.key == spec.service && s.service_type == "LoadBalancer");
    }
    let mut problems = Vec::new();
    for svc in index.services() {
        let object = format!("Service {}", svc.key);
        let mut unsupported = |field: &str, why: &str| {
            problems.push(Problem {
                object: object.clone(),
                reason: "UnsupportedByLoadBalancer",
                message: format!("{field}: {why}; the Service is load-balanced without it"),
            })
        };
        if svc.session_affinity.as_deref() == Some("ClientIP") {
            unsupported(
                "spec.sessionAffinity ClientIP",
                "the ovn provider has no session persistence (connections are spread by source address and port)",
            );
        }
        if !svc.load_balancer_source_ranges.is_empty() {
            unsupported("spec.loadBalancerSourceRanges", "the ovn provider does not support allowed_cidrs");
        }
        if svc.external_traffic_policy.as_deref() == Some("Local") {
            unsupported("spec.externalTrafficPolicy Local", "Octavia members are pods on any node");
        }
    }
    (specs.into_values().collect(), problems)
}

#[derive(Debug, Clone, Deserialize)]
pub struct LoadBalancer {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub vip_address: Option<String>,
    #[serde(default)]
    pub vip_port_id: Option<String>,
    pub provisioning_status: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Listener {
    pub id: String,
    pub protocol: String,
    pub protocol_port: u16,
    #[serde(default)]
    pub default_pool_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Member {
    pub id: String,
    pub address: String,
    pub protocol_port: u16,
}

fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

/// What a reconcile of the load balancers did.
#[derive(Debug, Clone, Default)]
pub struct LbReport {
    pub created: usize,
    pub updated: usize,
    pub deleted: usize,
    pub problems: Vec<Problem>,
    /// Each Service's load balancer id (as OVN names its Load_Balancer rows).
    pub load_balancers: BTreeMap<ObjectKey, String>,
    /// LoadBalancer Services' floating IPs (the address for `status.loadBalancer.ingress`).
    pub floating_ips: BTreeMap<ObjectKey, IpAddr>,
}

/// A load balancer made equal to its Service: its id, its VIP port and how many changes that
/// took.
type Ensured = Result<(String, Option<String>, usize), Error>;

pub struct OctaviaBackend {
    cloud: Cloud,
    config: NeutronConfig,
}

impl OctaviaBackend {
    pub fn new(cloud: Cloud, config: NeutronConfig) -> OctaviaBackend {
        OctaviaBackend { cloud, config }
    }

    /// Makes Octavia's load balancers of ours equal to the Services in `index`, on the
    /// networks of `topology` (from the Neutron backend's reconcile).
    pub async fn reconcile(&self, index: &ClusterIndex, topology: &Topology) -> Result<LbReport, Error> {
        let c = &self.config;
        let (specs, problems) = plan(index);
        let mut report = LbReport { problems, ..LbReport::default() };
        let Some(vip_subnet) = topology.service_subnet.as_ref() else {
            if !specs.is_empty() {
                report.problems.push(Problem {
                    object: format!("Cluster {}", c.cluster),
                    reason: "NoServiceSubnet",
                    message: "Services need a Service CIDR (the VIP subnet); none is configured".into(),
                });
            }
            return Ok(report);
        };
        let existing: Vec<LoadBalancer> = self
            .cloud
            .list(Call::get(O, "lbaas/loadbalancers").query("tags", c.tag()).answer("loadbalancers"), 500)
            .await?;
        let by_marker: BTreeMap<&str, &LoadBalancer> =
            existing.iter().filter(|l| c.is_ours(&l.description)).map(|l| (l.description.as_str(), l)).collect();
        let wanted: BTreeSet<String> = specs.iter().map(|s| c.marker(&s.id)).collect();
        // Floating IPs: ours, by marker; the ones no Service wants go before their load
        // balancers do (a floating IP is never left behind on a port that is gone).
        let fip_marker = |spec_id: &str| c.marker(&format!("fip:{spec_id}"));
        let fips: Vec<neutron::FloatingIp> = neutron::floating_ips(&self.cloud, &c.tag()).await?;
        let wanted_fips: BTreeSet<String> = specs.iter().filter(|s| s.floating).map(|s| fip_marker(&s.id)).collect();
        for f in fips.iter().filter(|f| c.is_ours(&f.description) && !wanted_fips.contains(&f.description)) {
            match neutron::delete(&self.cloud, "floatingips", &f.id).await {
                Ok(()) => report.deleted += 1,
                Err(e) => report
                    .problems
                    .push(crate::backend::problem_of(&format!("FloatingIP {}", f.floating_ip_address), &e)),
            }
        }
        // Load balancers of Services that are gone: cascade.
        for lb in existing.iter().filter(|l| c.is_ours(&l.description) && !wanted.contains(&l.description)) {
            match self.delete(&lb.id).await {
                Ok(()) => report.deleted += 1,
                Err(e) => report.problems.push(crate::backend::problem_of(&format!("LoadBalancer {}", lb.name), &e)),
            }
        }
        let results: Vec<(LbSpec, Ensured)> = futures::stream::iter(specs)
            .map(|spec| {
                let current = by_marker.get(c.marker(&spec.id).as_str()).map(|l| (*l).clone());
                async move {
                    let r = self.ensure(&spec, current, &vip_subnet.id, topology).await;
                    (spec, r)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (spec, r) in results {
            match r {
                Ok((id, vip_port, changes)) => {
                    report.updated += changes;
                    report.load_balancers.insert(spec.service.clone(), id);
                    if spec.floating {
                        let marker = fip_marker(&spec.id);
                        let current = fips.iter().find(|f| f.description == marker);
                        match self.floating_ip(&spec, current, vip_port.as_deref(), &marker, topology).await {
                            Ok((ip, changed)) => {
                                report.created += usize::from(changed);
                                report.floating_ips.insert(spec.service.clone(), ip);
                            }
                            Err(p) => report.problems.push(p),
                        }
                    }
                }
                Err(e) => report.problems.push(crate::backend::problem_of(&format!("Service {}", spec.service), &e)),
            }
        }
        Ok(report)
    }

    /// The floating IP on a LoadBalancer Service's VIP; (its address, whether it was made or
    /// moved).
    async fn floating_ip(
        &self,
        spec: &LbSpec,
        current: Option<&neutron::FloatingIp>,
        vip_port: Option<&str>,
        marker: &str,
        topology: &Topology,
    ) -> Result<(IpAddr, bool), Problem> {
        let object = format!("Service {}", spec.service);
        let Some(external) = topology.external_network.as_ref() else {
            return Err(Problem {
                object,
                reason: "NoExternalNetwork",
                message: "type LoadBalancer needs a floating IP and no external network is configured; the Service is reachable on its ClusterIP only".into(),
            });
        };
        let Some(port) = vip_port else {
            return Err(Problem {
                object,
                reason: "NeutronRejected",
                message: "the load balancer has no VIP port".into(),
            });
        };
        let fail = |e: Error| crate::backend::problem_of(&object, &e);
        let (fip, changed) = match current {
            Some(f) if f.port_id.as_deref() == Some(port) => (f.clone(), false),
            Some(f) => (neutron::associate_floating_ip(&self.cloud, &f.id, port).await.map_err(fail)?, true),
            None => {
                let f = neutron::create_floating_ip(&self.cloud, &external.id, port, marker).await.map_err(fail)?;
                neutron::set_tags(&self.cloud, "floatingips", &f.id, &[self.config.tag()]).await.map_err(fail)?;
                (f, true)
            }
        };
        let ip = fip.floating_ip_address.parse().map_err(|_| Problem {
            object: format!("Service {}", spec.service),
            reason: "NeutronRejected",
            message: format!("floating IP {:?} is not an address", fip.floating_ip_address),
        })?;
        Ok((ip, changed))
    }

    async fn get(&self, id: &str) -> Result<LoadBalancer, Error> {
        self.cloud.call(Call::get(O, format!("lbaas/loadbalancers/{id}")).answer("loadbalancer")).await
    }

    async fn delete(&self, id: &str) -> Result<(), Error> {
        match self.cloud.call_empty(Call::delete(O, format!("lbaas/loadbalancers/{id}")).query("cascade", "true")).await
        {
            Err(e) if e.is_not_found() => Ok(()),
            r => r,
        }
    }

    /// Waits until the load balancer takes changes again.
    async fn settle(&self, id: &str) -> Result<(), Error> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            let lb = self.get(id).await?;
            match lb.provisioning_status.as_str() {
                "ACTIVE" => return Ok(()),
                "ERROR" => {
                    return Err(Error::Api {
                        what: format!("load balancer {id}"),
                        status: 500,
                        kind: Some("ProvisioningError".into()),
                        message: "Octavia put it in ERROR".into(),
                    });
                }
                _ if start.elapsed() > SETTLE => {
                    return Err(Error::Transport {
                        what: format!("load balancer {id}"),
                        message: format!("still {} after {}s", lb.provisioning_status, SETTLE.as_secs()),
                    });
                }
                _ => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// One Service's load balancer made equal to `spec`; (its id, changes made).
    async fn ensure(
        &self,
        spec: &LbSpec,
        current: Option<LoadBalancer>,
        vip_subnet: &str,
        topology: &Topology,
    ) -> Ensured {
        let c = &self.config;
        let mut changes = 0;
        let lb = match current {
            // ERROR (or a VIP that moved): made again.
            Some(lb)
                if lb.provisioning_status == "ERROR" || lb.vip_address.as_deref() != Some(&spec.vip.to_string()) =>
            {
                self.delete(&lb.id).await?;
                None
            }
            other => other,
        };
        let (id, vip_port) = match lb {
            Some(lb) => {
                if lb.provisioning_status != "ACTIVE" {
                    self.settle(&lb.id).await?;
                }
                (lb.id, lb.vip_port_id)
            }
            None => {
                let body = json!({
                    "name": c.name(&spec.service.to_string()),
                    "description": c.marker(&spec.id),
                    "vip_subnet_id": vip_subnet,
                    "vip_address": spec.vip.to_string(),
                    "provider": "ovn",
                    "tags": [c.tag()],
                });
                let lb: LoadBalancer = self
                    .cloud
                    .call(Call::post(O, "lbaas/loadbalancers").body("loadbalancer", body).answer("loadbalancer"))
                    .await?;
                changes += 1;
                self.settle(&lb.id).await?;
                (lb.id, lb.vip_port_id)
            }
        };
        let listeners: Vec<Listener> = self
            .cloud
            .list(Call::get(O, "lbaas/listeners").query("loadbalancer_id", &id).answer("listeners"), 500)
            .await?;
        // Listeners no longer wanted (and their pools) go first: a port may change protocol.
        for l in &listeners {
            let wanted = spec.listeners.keys().any(|(p, port)| protocol(*p) == l.protocol && *port == l.protocol_port);
            if !wanted {
                if let Some(pool) = &l.default_pool_id {
                    self.cloud.call_empty(Call::delete(O, format!("lbaas/pools/{pool}"))).await?;
                    self.settle(&id).await?;
                }
                self.cloud.call_empty(Call::delete(O, format!("lbaas/listeners/{}", l.id))).await?;
                self.settle(&id).await?;
                changes += 1;
            }
        }
        for ((proto, port), backends) in &spec.listeners {
            let found = listeners.iter().find(|l| l.protocol == protocol(*proto) && l.protocol_port == *port);
            let pool = match found {
                Some(l) if l.default_pool_id.is_some() => l.default_pool_id.clone().unwrap_or_default(),
                found => {
                    let listener = match found {
                        Some(l) => l.id.clone(),
                        None => {
                            let body = json!({"loadbalancer_id": id, "protocol": protocol(*proto),
                                              "protocol_port": port, "tags": [c.tag()]});
                            let l: Listener = self
                                .cloud
                                .call(Call::post(O, "lbaas/listeners").body("listener", body).answer("listener"))
                                .await?;
                            self.settle(&id).await?;
                            changes += 1;
                            l.id
                        }
                    };
                    let body = json!({"listener_id": listener, "protocol": protocol(*proto),
                                      "lb_algorithm": "SOURCE_IP_PORT", "tags": [c.tag()]});
                    let p: Value =
                        self.cloud.call(Call::post(O, "lbaas/pools").body("pool", body).answer("pool")).await?;
                    self.settle(&id).await?;
                    changes += 1;
                    p["id"].as_str().unwrap_or_default().to_string()
                }
            };
            let members: Vec<Member> =
                self.cloud.list(Call::get(O, format!("lbaas/pools/{pool}/members")).answer("members"), 500).await?;
            let have: BTreeSet<SocketAddr> = members
                .iter()
                .filter_map(|m| m.address.parse::<IpAddr>().ok().map(|a| SocketAddr::new(a, m.protocol_port)))
                .collect();
            if &have != backends {
                // One batch call: Octavia keeps the members that stay, adds and removes the rest.
                let list: Vec<Value> = backends
                    .iter()
                    .map(|b| {
                        let mut m = json!({"address": b.ip().to_string(), "protocol_port": b.port()});
                        if let Some(s) = topology.subnet_of(b.ip()) {
                            m["subnet_id"] = json!(s.id);
                        }
                        m
                    })
                    .collect();
                self.cloud
                    .call_empty(Call::put(O, format!("lbaas/pools/{pool}/members")).body("members", json!(list)))
                    .await?;
                self.settle(&id).await?;
                changes += 1;
            }
        }
        Ok((id, vip_port, changes))
    }
}
