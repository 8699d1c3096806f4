//! Services as Octavia load balancers with the `ovn` provider: one load balancer per Service
//! and address family, its VIP the ClusterIP on the Service subnet, a listener and a pool
//! (`SOURCE_IP_PORT`, the only algorithm the provider has) per port and protocol, the ready
//! endpoints as members. The provider writes OVN Load_Balancer rows, one per protocol, named
//! by the Octavia load balancer's id.
//!
//! What the provider cannot honour is reported on the Service, never dropped silently:
//! `sessionAffinity: ClientIP` (Octavia accepts session persistence and the provider ignores
//! it), `loadBalancerSourceRanges` (refused), `externalTrafficPolicy: Local`,
//! `internalTrafficPolicy: Local`, a health monitor on an SCTP port.
//!
//! Health monitors: a Service has no health check of its own (Kubernetes takes unready pods
//! out of the endpoints), so one is asked for with the `stacknet.io/health-monitor`
//! annotation: `true` (checks every 5 s, 3 s timeout, 3 successes up, 3 failures down) or any
//! of `delay=S,timeout=S,retries=N,retries-down=N`. Each pool gets a monitor of its
//! listener's protocol (`TCP`, `UDP-CONNECT`: the provider's two), which the provider
//! writes as OVN Load_Balancer_Health_Check rows; a backend that fails it stops getting new
//! connections before Kubernetes notices.
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

use stacknet_engine::{CloudKind, ObjectRef, Problem, Reason};

use crate::backend::{NeutronConfig, Topology};
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
    /// A health monitor on each TCP and UDP pool.
    pub health: Option<HealthMonitor>,
}

/// A pool's health monitor, as the annotation asks for it (seconds and counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthMonitor {
    pub delay: u32,
    pub timeout: u32,
    /// Successes that bring a member up.
    pub retries: u32,
    /// Failures that take it down.
    pub retries_down: u32,
}

impl Default for HealthMonitor {
    fn default() -> HealthMonitor {
        HealthMonitor { delay: 5, timeout: 3, retries: 3, retries_down: 3 }
    }
}

impl HealthMonitor {
    /// The `stacknet.io/health-monitor` annotation: `None` for `false`; an error names the
    /// part that is wrong.
    pub fn parse(text: &str) -> Result<Option<HealthMonitor>, String> {
        let text = text.trim();
        match text.to_ascii_lowercase().as_str() {
            "" | "true" | "on" | "yes" => return Ok(Some(HealthMonitor::default())),
            "false" | "off" | "no" => return Ok(None),
            _ => {}
        }
        let mut hm = HealthMonitor::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((key, value)) = part.split_once('=') else {
                return Err(format!("{part:?} is not key=value (keys: delay, timeout, retries, retries-down)"));
            };
            let (key, value) = (key.trim(), value.trim());
            let (field, low, high) = match key {
                "delay" => (&mut hm.delay, 1, 86_400),
                "timeout" => (&mut hm.timeout, 1, 86_400),
                "retries" => (&mut hm.retries, 1, 10),
                "retries-down" => (&mut hm.retries_down, 1, 10),
                other => {
                    return Err(format!("unknown key {other:?} (keys: delay, timeout, retries, retries-down)"));
                }
            };
            let unit = if key.starts_with("retries") { "" } else { " seconds" };
            *field = value
                .trim_end_matches('s')
                .parse::<u32>()
                .ok()
                .filter(|v| (low..=high).contains(v))
                .ok_or_else(|| format!("{key}={value}: must be a whole number from {low} to {high}{unit}"))?;
        }
        if hm.timeout > hm.delay {
            return Err(format!(
                "timeout={} is longer than delay={} (a check must end before the next starts)",
                hm.timeout, hm.delay
            ));
        }
        Ok(Some(hm))
    }

    /// Octavia's monitor type for a listener's protocol (`None`: the provider has none).
    fn kind(p: Protocol) -> Option<&'static str> {
        match p {
            Protocol::Tcp => Some("TCP"),
            Protocol::Udp => Some("UDP-CONNECT"),
            Protocol::Sctp => None,
        }
    }
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
                health: None,
            });
            spec.listeners.entry((lb.protocol, vip.port())).or_default().extend(backends);
        }
    }
    let mut problems = Vec::new();
    let mut health: BTreeMap<&ObjectKey, HealthMonitor> = BTreeMap::new();
    for svc in index.services() {
        let Some(text) = &svc.health_monitor else { continue };
        match HealthMonitor::parse(text) {
            Ok(Some(hm)) => {
                health.insert(&svc.key, hm);
            }
            Ok(None) => {}
            Err(why) => problems.push(Problem {
                object: ObjectRef::service(&svc.key),
                reason: Reason::InvalidAnnotation,
                message: format!(
                    "annotation {}: {why}; the Service is load-balanced without a health monitor",
                    stacknet_engine::objects::HEALTH_MONITOR_ANNOTATION
                ),
            }),
        }
    }
    for spec in specs.values_mut() {
        spec.floating =
            spec.vip.is_ipv4() && index.services().any(|s| s.key == spec.service && s.service_type == "LoadBalancer");
        spec.health = health.get(&spec.service).copied();
    }
    for svc in index.services() {
        let object = ObjectRef::service(&svc.key);
        if health.contains_key(&svc.key) {
            for p in svc.ports.iter().filter(|p| HealthMonitor::kind(p.protocol).is_none()) {
                problems.push(Problem {
                    object: object.clone(),
                    reason: Reason::UnsupportedByLoadBalancer,
                    message: format!(
                        "health monitor on {}/{}: the ovn provider checks TCP and UDP only; the port is load-balanced without one",
                        p.port,
                        protocol(p.protocol)
                    ),
                });
            }
        }
        let mut unsupported = |field: &str, why: &str| {
            problems.push(Problem {
                object: object.clone(),
                reason: Reason::UnsupportedByLoadBalancer,
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
        if svc.internal_traffic_policy.as_deref() == Some("Local") {
            unsupported(
                "spec.internalTrafficPolicy Local",
                "one Octavia load balancer serves every node, each client reaching any member",
            );
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
pub struct Pool {
    pub id: String,
    #[serde(default)]
    pub healthmonitor_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Monitor {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub delay: u32,
    pub timeout: u32,
    pub max_retries: u32,
    pub max_retries_down: u32,
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

/// A load balancer made equal to its Service: its id, its VIP port, how many changes that
/// took, and what Octavia refused of it (the rest was done).
type Ensured = Result<(String, Option<String>, usize, Vec<Problem>), Error>;

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
                    object: ObjectRef::Cluster(c.cluster.clone()),
                    reason: Reason::NoServiceSubnet,
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
                Err(e) => report.problems.push(crate::backend::problem_of(
                    ObjectRef::Cloud(CloudKind::FloatingIp, f.floating_ip_address.clone()),
                    &e,
                )),
            }
        }
        // Load balancers of Services that are gone: cascade.
        for lb in existing.iter().filter(|l| c.is_ours(&l.description) && !wanted.contains(&l.description)) {
            match self.delete(&lb.id).await {
                Ok(()) => report.deleted += 1,
                Err(e) => report
                    .problems
                    .push(crate::backend::problem_of(ObjectRef::Cloud(CloudKind::LoadBalancer, lb.name.clone()), &e)),
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
                Ok((id, vip_port, changes, refused)) => {
                    report.updated += changes;
                    report.problems.extend(refused);
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
                Err(e) => report.problems.push(crate::backend::problem_of(ObjectRef::service(&spec.service), &e)),
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
        let object = ObjectRef::service(&spec.service);
        let Some(external) = topology.external_network.as_ref() else {
            return Err(Problem {
                object,
                reason: Reason::NoExternalNetwork,
                message: "type LoadBalancer needs a floating IP and no external network is configured; the Service is reachable on its ClusterIP only".into(),
            });
        };
        let Some(port) = vip_port else {
            return Err(Problem {
                object,
                reason: Reason::NeutronRejected,
                message: "the load balancer has no VIP port".into(),
            });
        };
        let fail = |e: Error| crate::backend::problem_of(object.clone(), &e);
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
            object: ObjectRef::service(&spec.service),
            reason: Reason::NeutronRejected,
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

    /// Pool `pool`'s health monitor made equal to `want`; the changes made (0 or 1).
    async fn monitor(
        &self,
        lb: &str,
        pool: &str,
        want: Option<HealthMonitor>,
        proto: Protocol,
    ) -> Result<usize, Error> {
        let have: Pool = self.cloud.call(Call::get(O, format!("lbaas/pools/{pool}")).answer("pool")).await?;
        let current: Option<Monitor> = match &have.healthmonitor_id {
            Some(id) if !id.is_empty() => {
                Some(self.cloud.call(Call::get(O, format!("lbaas/healthmonitors/{id}")).answer("healthmonitor")).await?)
            }
            _ => None,
        };
        let fields = |hm: &HealthMonitor| {
            json!({"delay": hm.delay, "timeout": hm.timeout, "max_retries": hm.retries,
                   "max_retries_down": hm.retries_down})
        };
        match (want, current) {
            (None, None) => return Ok(0),
            (Some(hm), Some(m))
                if HealthMonitor::kind(proto) == Some(m.kind.as_str())
                    && (m.delay, m.timeout, m.max_retries, m.max_retries_down)
                        == (hm.delay, hm.timeout, hm.retries, hm.retries_down) =>
            {
                return Ok(0);
            }
            (Some(hm), Some(m)) if HealthMonitor::kind(proto) == Some(m.kind.as_str()) => {
                self.cloud
                    .call_empty(
                        Call::put(O, format!("lbaas/healthmonitors/{}", m.id)).body("healthmonitor", fields(&hm)),
                    )
                    .await?;
            }
            (want, current) => {
                if let Some(m) = current {
                    self.cloud.call_empty(Call::delete(O, format!("lbaas/healthmonitors/{}", m.id))).await?;
                    self.settle(lb).await?;
                }
                if let (Some(hm), Some(kind)) = (want, HealthMonitor::kind(proto)) {
                    let mut body = fields(&hm);
                    body["pool_id"] = json!(pool);
                    body["type"] = json!(kind);
                    body["tags"] = json!([self.config.tag()]);
                    self.cloud.call_empty(Call::post(O, "lbaas/healthmonitors").body("healthmonitor", body)).await?;
                }
            }
        }
        self.settle(lb).await?;
        Ok(1)
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
        let mut refused = Vec::new();
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
            // A monitor Octavia refuses (its own limits, such as UDP checks no more often than
            // every few seconds) is reported; the port is load-balanced without it.
            match self.monitor(&id, &pool, HealthMonitor::kind(*proto).and(spec.health), *proto).await {
                Ok(n) => changes += n,
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => refused.push(Problem {
                    object: ObjectRef::service(&spec.service),
                    reason: Reason::UnsupportedByLoadBalancer,
                    message: format!(
                        "health monitor on {port}/{}: {}; the port is load-balanced without one",
                        protocol(*proto),
                        e.to_string().trim_end_matches('.')
                    ),
                }),
            }
        }
        Ok((id, vip_port, changes, refused))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_policies_the_provider_cannot_keep_are_reported_on_the_service() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: x}\n\
                    spec: {clusterIP: 10.96.0.5, internalTrafficPolicy: Local, externalTrafficPolicy: Local, ports: [{port: 80}]}\n";
        let objects = stacknet_engine::manifest::parse("s.yaml", yaml).unwrap().objects;
        let (specs, problems) = plan(&ClusterIndex::from_objects(objects));
        assert_eq!(specs.len(), 1, "still load-balanced");
        let said: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(problems.len(), 2, "{said:?}");
        assert!(problems.iter().all(|p| p.reason == Reason::UnsupportedByLoadBalancer));
        assert!(said.iter().any(|m| m.starts_with("spec.internalTrafficPolicy Local")), "{said:?}");
        assert!(said.iter().any(|m| m.starts_with("spec.externalTrafficPolicy Local")), "{said:?}");
    }

    #[test]
    fn health_monitor_annotation() {
        let d = HealthMonitor::default();
        assert_eq!(HealthMonitor::parse("true"), Ok(Some(d)));
        assert_eq!(HealthMonitor::parse(" "), Ok(Some(d)));
        assert_eq!(HealthMonitor::parse("off"), Ok(None));
        assert_eq!(
            HealthMonitor::parse("delay=10, timeout=4s,retries-down=2"),
            Ok(Some(HealthMonitor { delay: 10, timeout: 4, retries: 3, retries_down: 2 }))
        );
        let err = |t: &str| HealthMonitor::parse(t).unwrap_err();
        assert!(
            err("delay=0").contains("delay=0: must be a whole number from 1 to 86400 seconds"),
            "{}",
            err("delay=0")
        );
        assert!(err("retries=11").contains("from 1 to 10"));
        assert!(err("interval=5").contains("unknown key \"interval\""));
        assert!(err("delay").contains("is not key=value"));
        assert!(err("delay=2,timeout=3").contains("timeout=3 is longer than delay=2"));
        assert!(err("delay=-1").contains("delay=-1"));
    }
}
