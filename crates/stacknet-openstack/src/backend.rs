//! The Neutron backend: the cluster's pods, policies and pod network made equal in Neutron.
//!
//! A reconcile reads what is ours (by tag; the first one also sweeps for objects carrying our
//! description but no tags, left by a crash between create and tag), then changes only the
//! difference, in an order that never leaves a port less protected than either its old or new
//! state would: security groups are created and given their rules first, ports then move to
//! their new groups, and only then do groups nobody uses go. Objects that are not ours are
//! never changed or deleted. A failure on one object (an address taken, a quota) is reported
//! against it and the rest goes on.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use futures::StreamExt;
use serde_json::json;
use stacknet_engine::objects::{Direction, ObjectKey, Protocol};
use stacknet_engine::{Cidr, CloudKind, ObjectRef, PolicyEngine, Problem, Reason};

use crate::cloud::{Cloud, Error};
use crate::keystone::{self, Lookup};
use crate::neutron::{self, NewPort, NewRule, Port, SecurityGroup};
use crate::secgroups::{self, Family, Remote, SecurityPlan};

/// Calls in flight at once.
const CONCURRENCY: usize = 8;

#[derive(Debug, Clone)]
pub struct NeutronConfig {
    /// Tags and descriptions name it; two clusters can share a project.
    pub cluster: String,
    /// The pod network's subnets (one per address family in use).
    pub pod_cidrs: Vec<Cidr>,
    /// The cluster's Service CIDR: a network of its own on the cluster router, where Octavia
    /// puts the VIPs (the ClusterIPs). Its gateway is its last address: the first is usually
    /// the `kubernetes` Service's.
    pub service_cidr: Option<Cidr>,
    /// Free ports kept ready per node (and network), so that a pod start is one call: the
    /// port is taken and given its name, owner and groups. 0: no pools.
    pub pool_size: usize,
    /// The external network (name or id) LoadBalancer Services take floating IPs from; the
    /// cluster router's gateway is put on it.
    pub external_network: Option<String>,
    /// How long what the backend knows of Neutron is trusted before it is read again (it is
    /// read again at once after any failure).
    pub resync: std::time::Duration,
    /// A network per namespace (its subnets cut by Neutron from subnet pools of the pod
    /// CIDRs, all on the cluster router) instead of one shared pod network.
    pub network_per_namespace: bool,
    /// The IPv4 prefix length of a namespace's subnet (IPv6: /64).
    pub namespace_prefix_len: u8,
}

impl NeutronConfig {
    pub fn new(cluster: impl Into<String>, pod_cidrs: Vec<Cidr>) -> NeutronConfig {
        NeutronConfig {
            cluster: cluster.into(),
            pod_cidrs,
            service_cidr: None,
            pool_size: 0,
            external_network: None,
            resync: std::time::Duration::from_secs(300),
            network_per_namespace: false,
            namespace_prefix_len: 24,
        }
    }
}

impl NeutronConfig {
    pub fn families(&self) -> Vec<Family> {
        let mut f: Vec<Family> = self.pod_cidrs.iter().map(|c| Family::of(c.network())).collect();
        f.sort();
        f.dedup();
        f
    }

    /// The tag on every object of ours.
    pub fn tag(&self) -> String {
        format!("stacknet.io/cluster={}", self.cluster)
    }

    /// Pods' ports carry it: they are found by it, tagged or not.
    pub fn device_owner(&self) -> String {
        format!("compute:stacknet-{}", self.cluster)
    }

    /// The description that makes an object ours (`stacknet:<cluster>:<id>`); identities too
    /// long for Neutron's 255 characters end in a hash of the whole.
    pub fn marker(&self, id: &str) -> String {
        let full = format!("stacknet:{}:{id}", self.cluster);
        if full.len() <= 255 {
            return full;
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in full.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let mut cut = 200;
        while !full.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}~{h:016x}", &full[..cut])
    }

    pub(crate) fn is_ours(&self, description: &str) -> bool {
        description.starts_with(&format!("stacknet:{}:", self.cluster))
    }

    /// The identity of namespace `ns`'s subnet cut from the pool of `cidr`.
    fn namespace_subnet_marker(&self, ns: &str, cidr: &Cidr) -> String {
        self.marker(&format!("subnet:ns:{ns}:{cidr}"))
    }

    /// A readable name (Neutron does not need it unique).
    pub(crate) fn name(&self, id: &str) -> String {
        let n = format!("stacknet-{}-{id}", self.cluster);
        let mut cut = n.len().min(255);
        while !n.is_char_boundary(cut) {
            cut -= 1;
        }
        n[..cut].to_string()
    }
}

/// A pod's port, as the node path and tracing need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPort {
    pub port_id: String,
    /// The Neutron port's name (`ns/pod`): what OVN shows as the port's name (ovn-trace too).
    pub name: String,
    pub network_id: String,
    pub mac: String,
    pub ips: Vec<IpAddr>,
    /// On a nested node (a Nova VM): the pod's VLAN on the VM's trunk, and the trunk's
    /// parent port (the VM's own).
    pub vlan: Option<u16>,
    pub parent_port: Option<String>,
}

impl PodPort {
    /// OVN's logical switch for the port's network (ML2/OVN's naming).
    pub fn switch(&self) -> String {
        format!("neutron-{}", self.network_id)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub created: usize,
    pub updated: usize,
    pub deleted: usize,
    /// Neutron calls sent by this reconcile.
    pub calls: u64,
    pub problems: Vec<Problem>,
    /// The networks, subnets and router the pods and VIPs are on.
    pub topology: Option<Topology>,
    /// Every pod with a port.
    pub ports: BTreeMap<ObjectKey, PodPort>,
    pub plan: SecurityPlan,
}

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
    fn pod_network(&self, per_namespace: bool, namespace: &str) -> Option<(String, Vec<(Cidr, String)>)> {
        if !per_namespace {
            let n = self.network.as_ref()?;
            return Some((n.id.clone(), self.subnets.iter().map(|(c, s)| (*c, s.id.clone())).collect()));
        }
        let n = self.namespaces.get(namespace)?;
        let subnets = n.subnets.iter().filter_map(|s| Some((s.cidr.parse::<Cidr>().ok()?, s.id.clone()))).collect();
        Some((n.network.id.clone(), subnets))
    }
}

pub struct NeutronBackend {
    cloud: Cloud,
    /// The pools' refills, counted apart from the reconciles' calls.
    refill_cloud: Cloud,
    config: NeutronConfig,
    /// Whether the sweep for untagged objects of ours has been done.
    swept: AtomicBool,
    /// What Neutron holds of ours, as last read and since written; `None`: read it again.
    state: tokio::sync::Mutex<Option<State>>,
    /// Keystone projects as namespaces' annotations name them (name or id → id, and when it
    /// was looked up: trusted as long as the state is).
    projects: std::sync::Mutex<BTreeMap<String, (String, Instant)>>,
}

/// What the backend knows of its objects in Neutron: a reconcile starting from it sends only
/// the writes (a pod start is one call), and updates it with what Neutron answered.
#[derive(Debug, Clone)]
struct State {
    read_at: Instant,
    topology: Topology,
    /// Our security groups, with their rules, by marker.
    groups: BTreeMap<String, SecurityGroup>,
    /// Pods' ports by marker.
    ports: BTreeMap<String, Port>,
    /// Free ports by (where, network).
    pool: BTreeMap<PoolKey, Vec<Port>>,
    /// The nested nodes' trunks, by the Nova server whose port is the trunk's parent.
    trunks: BTreeMap<String, neutron::Trunk>,
}

impl State {
    /// The trunk a port is a subport of.
    fn trunk_holding(&self, port: &str) -> Option<&neutron::Trunk> {
        self.trunks.values().find(|t| t.vlan_of(port).is_some())
    }

    /// A trunk as Neutron last answered.
    fn replace_trunk(&mut self, trunk: neutron::Trunk) {
        if let Some(t) = self.trunks.values_mut().find(|t| t.id == trunk.id) {
            *t = trunk;
        }
    }
}

/// A pool: where its ports are (the host they are bound to, `trunk:<id>` for subports of a
/// nested node's trunk, `None`: unbound), their network, and their Keystone project (`None`:
/// the session's own).
type PoolKey = (Option<String>, String, Option<String>);

/// Each namespace's Keystone project: `None` the session's own, `Some` the one its annotation
/// names. A namespace whose annotation names no usable project is absent: its pods get no
/// port until it does (never one in the wrong project).
type Projects = BTreeMap<String, Option<String>>;

fn trunk_pool(trunk: &neutron::Trunk) -> String {
    format!("trunk:{}", trunk.id)
}

/// A node whose pool [`NeutronBackend::refill_pools`] keeps full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolNode {
    pub name: String,
    /// The Nova server it is, if it is one (its trunk gets the pool's ports as subports).
    pub server: Option<String>,
    /// The namespaces with pods on it, with their `stacknet.io/openstack-project`
    /// annotation: a pool per network and project the node has pods of.
    pub namespaces: BTreeMap<String, Option<String>>,
}

/// What a refill of the pools did.
#[derive(Debug, Clone, Default)]
pub struct PoolReport {
    pub created: usize,
    /// Free ports of nodes that are gone, deleted.
    pub deleted: usize,
    /// Neutron calls the refill sent.
    pub calls: u64,
    /// Free ports per node after the refill.
    pub free: BTreeMap<String, usize>,
    pub problems: Vec<Problem>,
}

/// The networks' and router's identities (each subnet's is its CIDR's).
const NETWORK_ID: &str = "network:pods";
const SERVICE_NETWORK_ID: &str = "network:services";
/// A namespace's network (`network:ns:<name>`), and the subnet pools (`subnetpool:<cidr>`).
const NAMESPACE_NETWORK_PREFIX: &str = "network:ns:";
const SUBNET_POOL_PREFIX: &str = "subnetpool:";
const ROUTER_ID: &str = "router:cluster";
/// Free ports' identity.
const POOL_ID: &str = "pool";
/// Ports created by one refill call, at most.
const POOL_BATCH: usize = 32;

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

pub(crate) fn problem_of(object: ObjectRef, e: &Error) -> Problem {
    let reason = if e.is_quota() {
        Reason::QuotaExceeded
    } else if matches!(e.kind(), Some("IpAddressAlreadyAllocated" | "MacAddressInUse" | "IpAddressInUse")) {
        Reason::AddressConflict
    } else if matches!(e.kind(), Some("SubnetAllocationError")) {
        // A subnet pool (the cluster CIDR, network per namespace) has no prefix left.
        Reason::NamespaceSubnetExhausted
    } else if e.is_transient() {
        Reason::NeutronUnreachable
    } else {
        Reason::NeutronRejected
    };
    Problem { object, reason, message: e.to_string() }
}

fn direction(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// The pool a free port is in; `own`: the session's project.
fn pool_key(p: &Port, trunks: &BTreeMap<String, neutron::Trunk>, own: Option<&str>) -> PoolKey {
    let project = Some(p.project_id.clone()).filter(|id| !id.is_empty() && Some(id.as_str()) != own);
    match trunks.values().find(|t| t.vlan_of(&p.id).is_some()) {
        Some(t) => (Some(trunk_pool(t)), p.network_id.clone(), project),
        None => (p.host.clone().filter(|h| !h.is_empty()), p.network_id.clone(), project),
    }
}

impl NeutronBackend {
    pub fn new(cloud: Cloud, config: NeutronConfig) -> NeutronBackend {
        NeutronBackend {
            refill_cloud: cloud.counted_apart(),
            cloud,
            config,
            swept: AtomicBool::new(false),
            state: tokio::sync::Mutex::new(None),
            projects: Default::default(),
        }
    }

    pub fn cloud(&self) -> &Cloud {
        &self.cloud
    }

    pub fn config(&self) -> &NeutronConfig {
        &self.config
    }

    /// Forgets what is known of Neutron: the next reconcile reads it all again.
    pub async fn invalidate(&self) {
        *self.state.lock().await = None;
        self.projects.lock().expect("not poisoned").clear();
    }

    /// The id of the project an annotation names, if it was looked up lately.
    fn known_project(&self, annotation: &str) -> Option<String> {
        let known = self.projects.lock().expect("not poisoned");
        known.get(annotation).filter(|(_, at)| at.elapsed() < self.config.resync).map(|(id, _)| id.clone())
    }

    /// Makes Neutron equal to what `engine` says. `Err` only when nothing could be read or
    /// the pod network cannot be had; per-object failures are in the report's problems.
    pub async fn reconcile(&self, engine: &PolicyEngine) -> Result<Report, Error> {
        let start_calls = self.cloud.calls();
        let mut report = Report { plan: secgroups::plan(engine, &self.config.families()), ..Report::default() };
        let mut guard = self.state.lock().await;
        let mut state = match guard.take() {
            Some(s) if s.read_at.elapsed() < self.config.resync => s,
            _ => self.read(&mut report).await?,
        };
        let result = self.apply(engine, &mut state, &mut report).await;
        report.calls = self.cloud.calls() - start_calls;
        match result {
            // After a failure, what Neutron holds is read again rather than guessed (a project
            // Keystone has not is no sign of that).
            Ok(lookups) => {
                if report.problems.is_empty() {
                    *guard = Some(state);
                }
                report.problems.extend(lookups);
            }
            Err(e) => {
                // A create whose answer never came may still be carried out: the next read
                // sweeps for untagged objects of ours again.
                self.swept.store(false, Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(report)
    }

    /// Neutron's problems go in the report; Keystone's are returned.
    async fn apply(
        &self,
        engine: &PolicyEngine,
        state: &mut State,
        report: &mut Report,
    ) -> Result<Vec<Problem>, Error> {
        let plan = std::mem::take(&mut report.plan);
        let groups = self.security_groups(&plan, state, report).await;
        report.plan = plan;
        let groups = groups?;
        let (projects, lookups) = self.projects(engine).await?;
        if self.config.network_per_namespace {
            self.namespace_networks(engine, &projects, state, report).await?;
        }
        self.ports(engine, &projects, state, &groups, report).await?;
        if self.config.network_per_namespace {
            self.gone_namespace_networks(engine, state, report).await?;
        }
        report.topology = Some(state.topology.clone());
        // Groups nobody needs, now that no port of ours is in them and no rule names them.
        let wanted: BTreeSet<String> = report.plan.groups.keys().map(|id| self.config.marker(id)).collect();
        let doomed: Vec<SecurityGroup> =
            state.groups.iter().filter(|(m, _)| !wanted.contains(*m)).map(|(_, g)| g.clone()).collect();
        // Rules in doomed groups may name other doomed groups: empty them all first.
        for g in &doomed {
            for r in &g.security_group_rules {
                if let Err(e) = neutron::delete(&self.cloud, "security-group-rules", &r.id).await {
                    report.problems.push(problem_of(ObjectRef::Cloud(CloudKind::SecurityGroup, g.name.clone()), &e));
                }
            }
        }
        for g in &doomed {
            match neutron::delete(&self.cloud, "security-groups", &g.id).await {
                Ok(()) => {
                    report.deleted += 1;
                    state.groups.remove(&g.description);
                }
                Err(e) => {
                    report.problems.push(problem_of(ObjectRef::Cloud(CloudKind::SecurityGroup, g.name.clone()), &e))
                }
            }
        }
        Ok(lookups)
    }

    /// Reads everything of ours (sweeping for untagged objects the first time), making the
    /// networks and router if missing.
    async fn read(&self, report: &mut Report) -> Result<State, Error> {
        if !self.swept.load(Ordering::Relaxed) {
            self.sweep(report).await?;
            self.swept.store(true, Ordering::Relaxed);
        }
        let c = &self.config;
        let topology = self.topology(report).await?;
        let groups = neutron::security_groups(&self.cloud, &c.tag())
            .await?
            .into_iter()
            .filter(|g| c.is_ours(&g.description))
            .map(|g| (g.description.clone(), g))
            .collect();
        let trunks = self.trunks().await?;
        let pool_marker = c.marker(POOL_ID);
        let mut ports = BTreeMap::new();
        let mut pool: BTreeMap<PoolKey, Vec<Port>> = BTreeMap::new();
        let own = self.cloud.project_id();
        // Ours: by our owner (tagged or not), and by tag (subports, whose owner Neutron's
        // trunk driver rewrites; a port is tagged before it goes on a trunk).
        let mut seen = BTreeSet::new();
        let by_owner = neutron::ports_owned_by(&self.cloud, &c.device_owner()).await?;
        let by_tag = neutron::tagged_ports(&self.cloud, &c.tag()).await?;
        let tag = c.tag();
        for mut p in by_owner.into_iter().chain(by_tag) {
            if !seen.insert(p.id.clone()) {
                continue;
            }
            let ours = p.description == pool_marker || c.is_ours(&p.description);
            if ours && !p.tags.contains(&tag) {
                // Made by a call whose answer never came, or before a crash.
                neutron::set_tags(&self.cloud, "ports", &p.id, std::slice::from_ref(&tag)).await?;
                p.tags.push(tag.clone());
                report.updated += 1;
            }
            if p.description == pool_marker {
                pool.entry(pool_key(&p, &trunks, own.as_deref())).or_default().push(p);
            } else if c.is_ours(&p.description) {
                ports.insert(p.description.clone(), p);
            }
        }
        Ok(State { read_at: Instant::now(), topology, groups, ports, pool, trunks })
    }

    /// The trunks whose parent port is a Nova server's (the nested nodes'), by server; trunks
    /// are never ours: only their subports are changed, and only ours.
    async fn trunks(&self) -> Result<BTreeMap<String, neutron::Trunk>, Error> {
        let trunks = neutron::trunks(&self.cloud).await?;
        let parents: Vec<String> = trunks.iter().map(|t| t.port_id.clone()).collect();
        let servers: BTreeMap<String, String> = neutron::ports_by_id(&self.cloud, &parents)
            .await?
            .into_iter()
            .filter(|p| !p.device_id.is_empty())
            .map(|p| (p.id, p.device_id))
            .collect();
        Ok(trunks.into_iter().filter_map(|t| servers.get(&t.port_id).map(|s| (s.clone(), t))).collect())
    }

    /// Objects with our description but no tag (a crash between create and tag, or a create
    /// carried out after its answer was given up on): tagged now; whatever is not wanted any
    /// more goes in the normal course of the reconcile. Ports are found by owner in every read,
    /// and tagged there.
    async fn sweep(&self, report: &mut Report) -> Result<(), Error> {
        let tags = [self.config.tag()];
        for (collection, key) in neutron::TAGGED_COLLECTIONS {
            for o in neutron::untagged(&self.cloud, collection, key, &tags[0]).await? {
                if self.config.is_ours(&o.description) {
                    tracing::info!(collection, id = %o.id, "adopting an untagged object of ours");
                    neutron::set_tags(&self.cloud, collection, &o.id, &tags).await?;
                    report.updated += 1;
                }
            }
        }
        Ok(())
    }

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
    async fn topology(&self, report: &mut Report) -> Result<Topology, Error> {
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

    /// Each namespace's Keystone project, as its `stacknet.io/openstack-project` annotation
    /// names it (looked up again after `resync`). A project that cannot be found, or a
    /// name several domains have, is a problem on the namespace, which is then left out.
    async fn projects(&self, engine: &PolicyEngine) -> Result<(Projects, Vec<Problem>), Error> {
        let index = engine.index();
        let mut projects = Projects::new();
        let mut problems = Vec::new();
        // The session's own project is no project of its own (its pools are the default's).
        let own = self.cloud.project_id();
        let of = |id: &String| Some(id.clone()).filter(|id| Some(id) != own.as_ref());
        for (ns, _) in index.namespaces() {
            let Some(wanted) = index.namespace_object(ns).and_then(|n| n.project.clone()) else {
                projects.insert(ns.to_string(), None);
                continue;
            };
            if let Some(id) = self.known_project(&wanted) {
                projects.insert(ns.to_string(), of(&id));
                continue;
            }
            let object = ObjectRef::namespace(ns);
            let annotation = stacknet_engine::objects::PROJECT_ANNOTATION;
            match keystone::project(&self.cloud, &wanted).await {
                Ok(Lookup::Found(p)) => {
                    projects.insert(ns.to_string(), of(&p.id));
                    self.projects.lock().expect("not poisoned").insert(wanted, (p.id, Instant::now()));
                }
                Ok(Lookup::Missing) => problems.push(Problem {
                    object,
                    reason: Reason::ProjectNotFound,
                    message: format!(
                        "annotation {annotation}: Keystone has no project with id or name {wanted:?}; the namespace's pods get no port until it has"
                    ),
                }),
                Ok(Lookup::Ambiguous(found)) => {
                    let domains: Vec<String> = found.iter().map(|p| format!("{} (domain {})", p.id, p.domain_id)).collect();
                    problems.push(Problem {
                        object,
                        reason: Reason::ProjectAmbiguous,
                        message: format!(
                            "annotation {annotation}: {} projects are named {wanted:?}: {}; name one by its id",
                            found.len(),
                            domains.join(", ")
                        ),
                    });
                }
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => problems.push(Problem {
                    object,
                    reason: Reason::KeystoneRejected,
                    message: format!("annotation {annotation}: looking up project {wanted:?}: {e}"),
                }),
            }
        }
        Ok((projects, problems))
    }

    /// Every planned group exists with exactly its rules; returns each planned group's.
    async fn security_groups(
        &self,
        plan: &SecurityPlan,
        state: &mut State,
        report: &mut Report,
    ) -> Result<BTreeMap<String, SecurityGroup>, Error> {
        let c = &self.config;
        let mut groups: BTreeMap<String, SecurityGroup> = BTreeMap::new();
        let mut missing = Vec::new();
        for id in plan.groups.keys() {
            match state.groups.get(&c.marker(id)) {
                Some(g) => {
                    groups.insert(id.clone(), g.clone());
                }
                None => missing.push(id.clone()),
            }
        }
        // New groups: made, stripped of Neutron's default egress rules, tagged.
        let made: Vec<(String, Result<SecurityGroup, Error>)> = futures::stream::iter(missing)
            .map(|id| async move {
                let r = async {
                    let g = neutron::create_security_group(&self.cloud, &c.name(&id), &c.marker(&id)).await?;
                    for r in &g.security_group_rules {
                        neutron::delete(&self.cloud, "security-group-rules", &r.id).await?;
                    }
                    neutron::set_tags(&self.cloud, "security-groups", &g.id, &[c.tag()]).await?;
                    Ok(SecurityGroup { security_group_rules: Vec::new(), tags: vec![c.tag()], ..g })
                }
                .await;
                (id, r)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (id, r) in made {
            match r {
                Ok(g) => {
                    report.created += 1;
                    state.groups.insert(g.description.clone(), g.clone());
                    groups.insert(id, g);
                }
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => report.problems.push(problem_of(owner_of(plan, &id), &e)),
            }
        }
        // Rules: what each group lacks is added in one call, what it has too much goes.
        let mut work = Vec::new();
        for (id, spec) in &plan.groups {
            let Some(g) = groups.get(id) else { continue };
            let mut want: Vec<(NewRule, String)> = Vec::new();
            for r in &spec.rules {
                let remote_group_id = match &r.remote {
                    Remote::Group(other) => match groups.get(other) {
                        Some(o) => Some(o.id.clone()),
                        // Its group could not be made: the rule waits (it would allow more).
                        None => continue,
                    },
                    _ => None,
                };
                let rule = NewRule {
                    direction: direction(r.direction),
                    ethertype: r.family.ethertype(),
                    protocol: r.protocol.map(protocol),
                    ports: r.ports.filter(|p| *p != (1, 65535)),
                    remote_group_id,
                    remote_ip_prefix: match &r.remote {
                        Remote::Prefix(c) => Some(c.to_string()),
                        _ => None,
                    },
                };
                want.push((rule, r.to_string()));
            }
            let extra: Vec<String> = g
                .security_group_rules
                .iter()
                .filter(|have| !want.iter().any(|(w, _)| w.matches(have)))
                .map(|r| r.id.clone())
                .collect();
            let add: Vec<(NewRule, String)> =
                want.into_iter().filter(|(w, _)| !g.security_group_rules.iter().any(|have| w.matches(have))).collect();
            if !extra.is_empty() || !add.is_empty() {
                work.push((id.clone(), g.description.clone(), g.id.clone(), add, extra));
            }
        }
        // (group, its marker, rules added, rules removed)
        type Done = (String, String, Result<(Vec<neutron::Rule>, Vec<String>), Error>);
        let done: Vec<Done> = futures::stream::iter(work)
            .map(|(id, marker, gid, add, extra)| async move {
                let r = async {
                    // Additions first: a group is never narrower than both its old and new self.
                    let added = neutron::create_rules(&self.cloud, &gid, &add).await?;
                    for r in &extra {
                        neutron::delete(&self.cloud, "security-group-rules", r).await?;
                    }
                    Ok((added, extra))
                }
                .await;
                (id, marker, r)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (id, marker, r) in done {
            match r {
                Ok((added, removed)) => {
                    report.created += added.len();
                    report.deleted += removed.len();
                    for g in state.groups.get_mut(&marker).into_iter().chain(groups.get_mut(&id)) {
                        g.security_group_rules.retain(|r| !removed.contains(&r.id));
                        g.security_group_rules.extend(added.iter().cloned());
                    }
                }
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => report.problems.push(problem_of(owner_of(plan, &id), &e)),
            }
        }
        Ok(groups)
    }

    /// Every namespace has its network, a subnet from each pool, on the cluster router.
    async fn namespace_networks(
        &self,
        engine: &PolicyEngine,
        projects: &Projects,
        state: &mut State,
        report: &mut Report,
    ) -> Result<(), Error> {
        let c = &self.config;
        let tag = c.tag();
        let names: Vec<String> = engine.index().namespaces().map(|(n, _)| n.to_string()).collect();
        for ns in names {
            // Its project cannot be had: reported on the namespace.
            let Some(project) = projects.get(&ns) else { continue };
            let have = state.topology.namespaces.get(&ns).cloned();
            let missing: Vec<(Cidr, neutron::SubnetPool)> = state
                .topology
                .pools
                .iter()
                .filter(|(cidr, _)| {
                    let marker = c.namespace_subnet_marker(&ns, cidr);
                    !have.as_ref().is_some_and(|h| h.subnets.iter().any(|s| s.description == marker))
                })
                .map(|(cidr, p)| (*cidr, p.clone()))
                .collect();
            if have.is_some() && missing.is_empty() {
                continue;
            }
            // What was made is kept in the state even when a later step fails, so the next
            // reconcile finishes this network rather than making a second one (an untagged one
            // is adopted by its marker when Neutron is read again).
            let mut failed = None;
            let mut net = match have {
                Some(h) => h,
                None => {
                    let marker = c.marker(&format!("{NAMESPACE_NETWORK_PREFIX}{ns}"));
                    let name = c.name(&format!("ns-{ns}"));
                    match neutron::create_network(&self.cloud, &name, &marker, project.as_deref()).await {
                        Ok(n) => {
                            report.created += 1;
                            failed = neutron::set_tags(&self.cloud, "networks", &n.id, std::slice::from_ref(&tag))
                                .await
                                .err();
                            NamespaceNetwork { network: n, subnets: Vec::new() }
                        }
                        Err(e) if e.is_transient() => return Err(e),
                        Err(e) => {
                            report.problems.push(problem_of(ObjectRef::namespace(&ns), &e));
                            continue;
                        }
                    }
                }
            };
            for (cidr, pool) in missing {
                if failed.is_some() {
                    break;
                }
                match self.namespace_subnet(&net.network, &state.topology.router.id, &ns, cidr, &pool).await {
                    Ok(s) => {
                        report.created += 1;
                        net.subnets.push(s);
                    }
                    Err(e) => failed = Some(e),
                }
            }
            state.topology.namespaces.insert(ns.clone(), net);
            match failed {
                None => {}
                Some(e) if e.is_transient() => return Err(e),
                // Its pods get no port until it can be made.
                Some(e) => report.problems.push(problem_of(ObjectRef::namespace(&ns), &e)),
            }
        }
        Ok(())
    }

    /// A subnet cut from `pool` for namespace `ns`'s network, tagged and on the router; if it
    /// cannot be finished it is deleted (a subnet off the router would look done to the next
    /// reconcile).
    async fn namespace_subnet(
        &self,
        network: &neutron::Network,
        router: &str,
        ns: &str,
        cidr: Cidr,
        pool: &neutron::SubnetPool,
    ) -> Result<neutron::Subnet, Error> {
        let c = &self.config;
        let (len, version) = if cidr.network().is_ipv4() { (c.namespace_prefix_len, 4) } else { (64, 6) };
        let marker = c.namespace_subnet_marker(ns, &cidr);
        let name = c.name(&format!("ns-{ns}-v{version}"));
        let s = neutron::create_subnet_from_pool(&self.cloud, network, &name, &pool.id, len, version, &marker).await?;
        let finished = async {
            neutron::set_tags(&self.cloud, "subnets", &s.id, std::slice::from_ref(&c.tag())).await?;
            neutron::add_router_interface(&self.cloud, router, &s.id).await
        }
        .await;
        if let Err(e) = finished {
            if let Err(d) = neutron::delete(&self.cloud, "subnets", &s.id).await {
                tracing::warn!(subnet = %s.id, error = %d, "could not delete a half-made subnet");
            }
            return Err(e);
        }
        Ok(s)
    }

    /// The networks of namespaces that are gone (their pods' ports went before): off the
    /// router, then deleted with their subnets.
    async fn gone_namespace_networks(
        &self,
        engine: &PolicyEngine,
        state: &mut State,
        report: &mut Report,
    ) -> Result<(), Error> {
        let names: BTreeSet<String> = engine.index().namespaces().map(|(n, _)| n.to_string()).collect();
        let gone: Vec<(String, NamespaceNetwork)> = state
            .topology
            .namespaces
            .iter()
            .filter(|(ns, _)| !names.contains(*ns))
            .map(|(ns, n)| (ns.clone(), n.clone()))
            .collect();
        for (ns, net) in gone {
            // Free ports of the pools on it go with it.
            let free: Vec<Port> = state
                .pool
                .iter_mut()
                .filter(|((_, n, _), _)| *n == net.network.id)
                .flat_map(|(_, f)| std::mem::take(f))
                .collect();
            for (_, r) in self.delete_ports(&self.cloud, state, free).await {
                r?;
                report.deleted += 1;
            }
            let r: Result<(), Error> = async {
                for s in &net.subnets {
                    neutron::remove_router_interface(&self.cloud, &state.topology.router.id, &s.id).await?;
                }
                neutron::delete(&self.cloud, "networks", &net.network.id).await
            }
            .await;
            match r {
                Ok(()) => {
                    report.deleted += 1;
                    state.topology.namespaces.remove(&ns);
                }
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => report.problems.push(problem_of(ObjectRef::namespace(&ns), &e)),
            }
        }
        Ok(())
    }

    async fn ports(
        &self,
        engine: &PolicyEngine,
        projects: &Projects,
        state: &mut State,
        groups: &BTreeMap<String, SecurityGroup>,
        report: &mut Report,
    ) -> Result<(), Error> {
        let c = &self.config;
        let owner = c.device_owner();
        let index = engine.index();
        // Nested nodes (Nova VMs with a trunk): their pods' ports go on the trunk.
        let trunk_of_node: BTreeMap<String, neutron::Trunk> = index
            .nodes()
            .filter_map(|n| Some((n.name.clone(), state.trunks.get(n.openstack_server()?)?.clone())))
            .collect();
        let mut wanted: BTreeSet<String> = BTreeSet::new();
        let mut creates = Vec::new();
        let mut updates = Vec::new();
        // (trunk, port, pod): ports to put on their node's trunk. Neutron takes only a port
        // with no device_id as a subport: the pod's UID is written once it is on the trunk.
        let mut to_trunk: Vec<(String, String, ObjectKey)> = Vec::new();
        let mut uids: BTreeMap<ObjectKey, String> = BTreeMap::new();
        for (_, pod) in index.pods() {
            if !pod.is_policy_subject() {
                continue;
            }
            let marker = c.marker(&format!("pod:{}", pod.key));
            wanted.insert(marker.clone());
            // Its namespace's network could not be made: reported on the namespace.
            let Some((network, subnets)) = state.topology.pod_network(c.network_per_namespace, &pod.key.namespace)
            else {
                continue;
            };
            // Its namespace's project cannot be had: reported on the namespace. (A pod that
            // has a port keeps it, in the project it was made in: Neutron cannot move a port.)
            let Some(project) = projects.get(&pod.key.namespace).cloned() else { continue };
            let sgs: BTreeSet<String> = report
                .plan
                .ports
                .get(&pod.key)
                .into_iter()
                .flatten()
                .filter_map(|g| groups.get(g).map(|s| s.id.clone()))
                .collect();
            let trunk = pod.node.as_ref().and_then(|n| trunk_of_node.get(n));
            // A subport is bound where its VM is, by Neutron: only bare-metal nodes' ports
            // are bound to the node's host.
            let host = if trunk.is_some() { None } else { pod.node.clone() };
            let uid = pod.uid.clone().unwrap_or_default();
            uids.insert(pod.key.clone(), uid.clone());
            // An address the pod already has is kept, if one of our subnets holds it.
            let fixed = pod.ips.iter().find_map(|ip| {
                subnets.iter().find(|(cidr, _)| cidr.contains(*ip)).map(|(_, s)| (s.clone(), ip.to_string()))
            });
            match state.ports.get(&marker) {
                Some(p) => {
                    let have: BTreeSet<String> = p.security_groups.iter().cloned().collect();
                    let mut changes = serde_json::Map::new();
                    if have != sgs {
                        changes.insert("security_groups".into(), json!(sgs));
                    }
                    if host.is_some() && p.host.as_deref() != host.as_deref() {
                        changes.insert("binding:host_id".into(), json!(host));
                    }
                    let attach = trunk.filter(|_| state.trunk_holding(&p.id).is_none());
                    let device_id = if attach.is_some() { "" } else { uid.as_str() };
                    if p.device_id != device_id {
                        changes.insert("device_id".into(), json!(device_id));
                    }
                    if !changes.is_empty() {
                        updates.push((pod.key.clone(), p.id.clone(), serde_json::Value::Object(changes)));
                    }
                    if let Some(t) = attach {
                        to_trunk.push((t.id.clone(), p.id.clone(), pod.key.clone()));
                    }
                    report.ports.insert(pod.key.clone(), pod_port(p));
                }
                None => {
                    // A free port of the pod's node, if the pool has one: one call makes it the
                    // pod's (name, owner, groups, and the pod's address if it has one). On a
                    // nested node the free port is already on the node's trunk.
                    let key = match trunk {
                        Some(t) => (Some(trunk_pool(t)), network.clone(), project.clone()),
                        None => (host.clone(), network.clone(), project.clone()),
                    };
                    match state.pool.get_mut(&key).and_then(|free| free.pop()) {
                        Some(free) => {
                            let mut changes = json!({
                                "name": pod.key.to_string(),
                                "description": marker,
                                "device_id": uid,
                                "security_groups": sgs,
                            });
                            if let Some((subnet, ip)) = &fixed
                                && !free.fixed_ips.iter().any(|f| &f.ip_address == ip)
                            {
                                changes["fixed_ips"] = json!([{"subnet_id": subnet, "ip_address": ip}]);
                            }
                            updates.push((pod.key.clone(), free.id.clone(), changes));
                        }
                        None => creates.push((
                            pod.key.clone(),
                            network,
                            marker,
                            sgs,
                            host,
                            uid,
                            fixed,
                            trunk.map(|t| t.id.clone()),
                            project,
                        )),
                    }
                }
            }
        }
        type Made = (ObjectKey, Option<String>, Result<Port, Error>);
        let made: Vec<Made> = futures::stream::iter(creates)
            .map(|(key, network, marker, sgs, host, uid, fixed, trunk, project)| {
                let owner = owner.clone();
                async move {
                    let name = key.to_string();
                    let r = async {
                        let p = neutron::create_port(
                            &self.cloud,
                            &NewPort {
                                network_id: &network,
                                name: &name,
                                description: &marker,
                                device_owner: &owner,
                                device_id: if trunk.is_some() { "" } else { &uid },
                                host: host.as_deref(),
                                security_groups: sgs.into_iter().collect(),
                                fixed_ip: fixed.as_ref().map(|(s, ip)| (s.as_str(), ip.clone())),
                                project_id: project.as_deref(),
                            },
                        )
                        .await?;
                        // Tagged before it goes on a trunk (its owner is rewritten there).
                        neutron::set_tags(&self.cloud, "ports", &p.id, &[c.tag()]).await?;
                        Ok(Port { tags: vec![c.tag()], ..p })
                    }
                    .await;
                    (key, trunk, r)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (key, trunk, r) in made {
            match r {
                Ok(p) => {
                    report.created += 1;
                    report.ports.insert(key.clone(), pod_port(&p));
                    if let Some(t) = trunk {
                        to_trunk.push((t, p.id.clone(), key));
                    }
                    state.ports.insert(p.description.clone(), p);
                }
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => report.problems.push(problem_of(ObjectRef::pod(&key), &e)),
            }
        }
        let changed: Vec<(ObjectKey, Result<Port, Error>)> = futures::stream::iter(updates)
            .map(|(key, id, changes)| async move { (key, neutron::update_port(&self.cloud, &id, changes).await) })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (key, r) in changed {
            match r {
                Ok(p) => {
                    report.updated += 1;
                    report.ports.insert(key, pod_port(&p));
                    state.ports.insert(p.description.clone(), p);
                }
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => report.problems.push(problem_of(ObjectRef::pod(&key), &e)),
            }
        }
        let mut by_trunk: BTreeMap<String, Vec<(String, ObjectRef)>> = BTreeMap::new();
        let mut attached = Vec::new();
        for (trunk, port, key) in to_trunk {
            by_trunk.entry(trunk).or_default().push((port.clone(), ObjectRef::pod(&key)));
            attached.push((key, port));
        }
        for (trunk, ports) in by_trunk {
            self.attach(&self.cloud, state, &trunk, ports, &mut report.problems, &mut report.updated).await?;
        }
        // On the trunk now: the pod's UID as the port's device.
        let owned: Vec<(ObjectKey, String, String)> = attached
            .into_iter()
            .filter(|(_, port)| state.trunk_holding(port).is_some())
            .filter_map(|(key, port)| Some((uids.get(&key)?.clone(), key, port)))
            .filter(|(uid, _, _)| !uid.is_empty())
            .map(|(uid, key, port)| (key, port, uid))
            .collect();
        let changed: Vec<(ObjectKey, Result<Port, Error>)> = futures::stream::iter(owned)
            .map(|(key, id, uid)| async move {
                (key, neutron::update_port(&self.cloud, &id, json!({"device_id": uid})).await)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (key, r) in changed {
            match r {
                Ok(p) => {
                    report.ports.insert(key, pod_port(&p));
                    state.ports.insert(p.description.clone(), p);
                }
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => report.problems.push(problem_of(ObjectRef::pod(&key), &e)),
            }
        }
        // Ports of pods that are gone (ours only: found by our device_owner or tag, and
        // marker); a subport comes off its trunk first (Neutron refuses to delete it before).
        let gone: Vec<Port> =
            state.ports.iter().filter(|(m, _)| !wanted.contains(*m)).map(|(_, p)| p.clone()).collect();
        for (p, r) in self.delete_ports(&self.cloud, state, gone).await {
            match r {
                Ok(()) => {
                    report.deleted += 1;
                    state.ports.remove(&p.description);
                }
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => report.problems.push(problem_of(ObjectRef::Cloud(CloudKind::Port, p.name.clone()), &e)),
            }
        }
        for pp in report.ports.values_mut() {
            if let Some(t) = state.trunk_holding(&pp.port_id) {
                pp.vlan = t.vlan_of(&pp.port_id);
                pp.parent_port = Some(t.port_id.clone());
            }
        }
        Ok(())
    }

    /// Puts `ports` (port, the object it is for) on `trunk`, each with the lowest VLAN id no
    /// subport of the trunk has (anyone's), in one call. No free VLAN id, or one taken
    /// meanwhile by someone else (Neutron refuses the call): a problem, and the next
    /// reconcile reads the trunk again and tries again.
    async fn attach(
        &self,
        cloud: &Cloud,
        state: &mut State,
        trunk: &str,
        ports: Vec<(String, ObjectRef)>,
        problems: &mut Vec<Problem>,
        updated: &mut usize,
    ) -> Result<(), Error> {
        let Some(t) = state.trunks.values().find(|t| t.id == trunk) else { return Ok(()) };
        let mut taken = BTreeSet::new();
        let mut subports = Vec::new();
        let mut objects = Vec::new();
        for (port, object) in ports {
            match t.free_vlan(&taken) {
                Some(v) => {
                    taken.insert(v);
                    subports.push((port, v));
                    objects.push(object);
                }
                None => problems.push(Problem {
                    object,
                    reason: Reason::VlanExhausted,
                    message: format!(
                        "trunk {trunk} (parent port {}) has every VLAN id from 1 to 4094 in use: no subport for the pod",
                        t.port_id
                    ),
                }),
            }
        }
        if subports.is_empty() {
            return Ok(());
        }
        match neutron::add_subports(cloud, trunk, &subports).await {
            Ok(t) => {
                *updated += subports.len();
                state.replace_trunk(t);
            }
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                for object in objects {
                    let mut p = problem_of(object, &e);
                    if e.kind() == Some("DuplicateSubPort") {
                        p.reason = Reason::VlanConflict;
                    }
                    problems.push(p);
                }
            }
        }
        Ok(())
    }

    /// The nodes whose pools [`Self::refill_pools`] keeps: the cluster's.
    pub fn nodes_of(engine: &PolicyEngine) -> Vec<PoolNode> {
        let index = engine.index();
        let mut namespaces: BTreeMap<&str, BTreeMap<String, Option<String>>> = BTreeMap::new();
        for (_, p) in index.pods() {
            if let Some(n) = &p.node {
                let ns = &p.key.namespace;
                let project = index.namespace_object(ns).and_then(|o| o.project.clone());
                namespaces.entry(n.as_str()).or_default().insert(ns.clone(), project);
            }
        }
        index
            .nodes()
            .map(|n| PoolNode {
                name: n.name.clone(),
                server: n.openstack_server().map(str::to_string),
                namespaces: namespaces.get(n.name.as_str()).cloned().unwrap_or_default(),
            })
            .collect()
    }

    /// Tops up every node's pools (one per network and Keystone project it has pods of) to
    /// `pool_size` free ports, in bulk, within each project's port quota (a pool never takes
    /// the last ports a pod start would need: it stops at the quota, and a pod takes a free
    /// port before making one). A nested node's free ports are put on its trunk, each with its
    /// VLAN, so that a pod start there is one call too. The free ports of nodes that are no
    /// longer in `nodes` (the cluster's every node) are deleted. Meant to run in the
    /// background: it holds the backend's state only to read it (and delete those), and to add
    /// what it made (and put on trunks).
    pub async fn refill_pools(&self, nodes: &[PoolNode]) -> Result<PoolReport, Error> {
        let c = &self.config;
        let cloud = &self.refill_cloud;
        let start_calls = cloud.calls();
        let mut report = PoolReport::default();
        if c.pool_size == 0 {
            return Ok(report);
        }
        let own = cloud.project_id();
        let wanted = {
            let mut guard = self.state.lock().await;
            if guard.is_none() {
                let mut r = Report::default();
                *guard = Some(self.read(&mut r).await?);
            }
            let state = guard.as_mut().expect("state was just read");
            // Pools of nodes that are gone: their free ports deleted (one that cannot be is
            // found in its pool again by the next read of Neutron, and tried again).
            let places: BTreeSet<String> = nodes
                .iter()
                .flat_map(|n| {
                    let trunk = n.server.as_ref().and_then(|s| state.trunks.get(s)).map(trunk_pool);
                    std::iter::once(n.name.clone()).chain(trunk)
                })
                .collect();
            let gone: Vec<PoolKey> = state
                .pool
                .keys()
                .filter(|(place, _, _)| place.as_ref().is_some_and(|p| !places.contains(p)))
                .cloned()
                .collect();
            let taken: Vec<Port> = gone.iter().flat_map(|k| state.pool.remove(k).unwrap_or_default()).collect();
            for (p, r) in self.delete_ports(cloud, state, taken).await {
                match r {
                    Ok(()) => report.deleted += 1,
                    Err(e) => report.problems.push(problem_of(ObjectRef::Cloud(CloudKind::Port, p.id.clone()), &e)),
                }
            }
            // Free ports that should have gone on a trunk and did not: used before new ones.
            let mut loose: BTreeMap<(String, Option<String>), usize> = state
                .pool
                .iter()
                .filter(|((place, _, _), _)| place.is_none())
                .map(|((_, n, p), free)| ((n.clone(), p.clone()), free.len()))
                .collect();
            let mut wanted: Vec<Wanted> = Vec::new();
            for node in nodes {
                // (network, project) of the node's pods, as far as they are known.
                let mut pools: BTreeSet<(String, Option<String>)> = BTreeSet::new();
                for (ns, annotation) in &node.namespaces {
                    let project = match annotation {
                        None => None,
                        Some(a) => match self.known_project(a) {
                            Some(id) => Some(id).filter(|id| Some(id) != own.as_ref()),
                            // Not looked up yet, or not found: the reconcile sees to it.
                            None => continue,
                        },
                    };
                    let network = if c.network_per_namespace {
                        match state.topology.namespaces.get(ns) {
                            Some(n) => n.network.id.clone(),
                            None => continue,
                        }
                    } else {
                        match &state.topology.network {
                            Some(n) => n.id.clone(),
                            None => continue,
                        }
                    };
                    pools.insert((network, project));
                }
                if let Some(n) = state.topology.network.as_ref().filter(|_| !c.network_per_namespace) {
                    pools.insert((n.id.clone(), None));
                }
                let trunk = node.server.as_ref().and_then(|s| state.trunks.get(s));
                for (network, project) in pools {
                    let place = match trunk {
                        Some(t) => trunk_pool(t),
                        None => node.name.clone(),
                    };
                    let free = state.pool.get(&(Some(place), network.clone(), project.clone())).map_or(0, Vec::len);
                    if free < c.pool_size {
                        let short = c.pool_size - free;
                        let mut missing = short;
                        if trunk.is_some() {
                            let l = loose.entry((network.clone(), project.clone())).or_default();
                            let reused = (*l).min(missing);
                            *l -= reused;
                            missing -= reused;
                        }
                        wanted.push(Wanted {
                            node: node.name.clone(),
                            network,
                            project,
                            trunk: trunk.map(|t| t.id.clone()),
                            missing,
                            short,
                        });
                    }
                }
            }
            wanted
        };
        // Each project's quota headroom, asked once.
        let mut headroom: BTreeMap<Option<String>, Option<u64>> = BTreeMap::new();
        let owner = c.device_owner();
        let marker = c.marker(POOL_ID);
        let name = c.name(POOL_ID);
        let mut made: Vec<Port> = Vec::new();
        // Nested nodes: (node, trunk, network, project, how many free ports it wants on the trunk).
        let mut nested: Vec<(String, String, String, Option<String>, usize)> = Vec::new();
        for w in wanted {
            let Wanted { node, network, project, trunk, mut missing, short } = w;
            if !headroom.contains_key(&project) {
                let h = match project.as_ref().or(own.as_ref()) {
                    Some(p) => neutron::port_headroom(cloud, p).await?,
                    None => None,
                };
                headroom.insert(project.clone(), h);
            }
            let room = headroom.get_mut(&project).expect("just inserted");
            if let Some(h) = *room {
                if h < missing as u64 {
                    let of = project.as_ref().map_or("the project".to_string(), |p| format!("project {p}"));
                    report.problems.push(Problem {
                        object: ObjectRef::node(&node),
                        reason: Reason::QuotaExceeded,
                        message: format!(
                            "the port pool of node {node} wants {missing} more free ports; the port quota of {of} leaves {h}"
                        ),
                    });
                }
                missing = missing.min(h as usize);
            }
            if let Some(t) = &trunk {
                nested.push((node.clone(), t.clone(), network.clone(), project.clone(), short));
            }
            while missing > 0 {
                let n = missing.min(POOL_BATCH);
                let new: Vec<NewPort> = (0..n)
                    .map(|_| NewPort {
                        network_id: &network,
                        name: &name,
                        description: &marker,
                        device_owner: &owner,
                        device_id: "",
                        // A subport is bound where its VM is, by Neutron.
                        host: if trunk.is_some() { None } else { Some(&node) },
                        security_groups: Vec::new(),
                        fixed_ip: None,
                        project_id: project.as_deref(),
                    })
                    .collect();
                match neutron::create_ports(cloud, &new).await {
                    Ok(ports) => {
                        missing -= n;
                        *room = room.map(|h| h.saturating_sub(n as u64));
                        report.created += ports.len();
                        made.extend(ports);
                    }
                    Err(e) => {
                        report.problems.push(problem_of(ObjectRef::node(&node), &e));
                        break;
                    }
                }
            }
        }
        // Tags are for listing (and for finding subports, whose owner the trunk rewrites):
        // set before any port goes on a trunk.
        let tags = [c.tag()];
        let ids: Vec<String> = made.iter().map(|p| p.id.clone()).collect();
        let tags_ref = &tags;
        let tagged: Vec<Result<(), Error>> = futures::stream::iter(ids)
            .map(|id| async move { neutron::set_tags(cloud, "ports", &id, tags_ref).await })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let all_tagged = tagged.iter().all(Result::is_ok);
        if let Some(Err(e)) = tagged.into_iter().find(Result::is_err) {
            report.problems.push(problem_of(ObjectRef::Cloud(CloudKind::Port, "pool".into()), &e));
        }
        let mut guard = self.state.lock().await;
        if let Some(state) = guard.as_mut() {
            for p in made {
                let free = state.pool.entry(pool_key(&p, &state.trunks, own.as_deref())).or_default();
                if !free.iter().any(|f| f.id == p.id) {
                    free.push(Port { tags: tags.to_vec(), ..p });
                }
            }
            // Under the state's lock: VLAN ids are chosen by one writer at a time.
            if all_tagged {
                for (node, trunk, network, project, n) in nested {
                    let loose = state.pool.entry((None, network.clone(), project)).or_default();
                    let take = n.min(loose.len());
                    let ports: Vec<Port> = loose.split_off(loose.len() - take);
                    let list = ports.iter().map(|p| (p.id.clone(), ObjectRef::node(&node))).collect();
                    let mut updated = 0;
                    if let Err(e) = self.attach(cloud, state, &trunk, list, &mut report.problems, &mut updated).await {
                        report.problems.push(problem_of(ObjectRef::node(&node), &e));
                    }
                    // Each where it now is: on the trunk, or loose for the next refill.
                    for p in ports {
                        let key = pool_key(&p, &state.trunks, own.as_deref());
                        state.pool.entry(key).or_default().push(p);
                    }
                }
            }
            for ((place, _, _), free) in &state.pool {
                let Some(place) = place else { continue };
                let node = match place.strip_prefix("trunk:") {
                    Some(id) => nodes
                        .iter()
                        .find(|n| n.server.as_ref().and_then(|s| state.trunks.get(s)).is_some_and(|t| t.id == id))
                        .map(|n| n.name.clone()),
                    None => Some(place.clone()),
                };
                if let Some(node) = node {
                    *report.free.entry(node).or_default() += free.len();
                }
            }
        }
        report.calls = cloud.calls() - start_calls;
        Ok(report)
    }

    /// Deletes `ports` of ours, concurrently, each off its trunk first (Neutron refuses to
    /// delete a subport); each port's outcome (a trunk that refuses is its ports' failure).
    async fn delete_ports(&self, cloud: &Cloud, state: &mut State, ports: Vec<Port>) -> Vec<(Port, Result<(), Error>)> {
        let mut off: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in &ports {
            if let Some(t) = state.trunk_holding(&p.id) {
                off.entry(t.id.clone()).or_default().push(p.id.clone());
            }
        }
        let mut stuck: BTreeMap<String, Error> = BTreeMap::new();
        for (trunk, ids) in off {
            match neutron::remove_subports(cloud, &trunk, &ids).await {
                Ok(t) => state.replace_trunk(t),
                Err(e) => stuck.extend(ids.into_iter().map(|id| (id, e.clone()))),
            }
        }
        let (failed, doomed): (Vec<Port>, Vec<Port>) = ports.into_iter().partition(|p| stuck.contains_key(&p.id));
        let mut outcome: Vec<(Port, Result<(), Error>)> = failed
            .into_iter()
            .map(|p| {
                let e = stuck[&p.id].clone();
                (p, Err(e))
            })
            .collect();
        let deleted: Vec<(Port, Result<(), Error>)> = futures::stream::iter(doomed)
            .map(|p| async move {
                let r = neutron::delete(cloud, "ports", &p.id).await;
                (p, r)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        outcome.extend(deleted);
        outcome
    }
}

/// A pool short of free ports.
struct Wanted {
    node: String,
    network: String,
    project: Option<String>,
    /// The node's trunk, if it is nested.
    trunk: Option<String>,
    /// Ports to make.
    missing: usize,
    /// Free ports it lacks (a nested node's may come from loose ones).
    short: usize,
}

fn pod_port(p: &Port) -> PodPort {
    PodPort {
        port_id: p.id.clone(),
        name: p.name.clone(),
        network_id: p.network_id.clone(),
        mac: p.mac_address.clone(),
        ips: p.fixed_ips.iter().filter_map(|f| f.ip_address.parse().ok()).collect(),
        vlan: None,
        parent_port: None,
    }
}

/// The Kubernetes object a group stands for, for problems (else the group itself).
fn owner_of(plan: &SecurityPlan, id: &str) -> ObjectRef {
    plan.groups
        .get(id)
        .and_then(|g| g.kind.owner())
        .unwrap_or_else(|| ObjectRef::Cloud(CloudKind::SecurityGroup, id.to_string()))
}
