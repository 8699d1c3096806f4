//! The controller with the OpenStack backend (`--backend openstack`): the same sources and
//! cluster index; each coalesced burst of changes becomes one Neutron reconcile (security
//! groups, pods' ports) and one Octavia reconcile (Services), every problem an Event on the
//! object concerned. Port pools are topped up by a task of their own, so pod starts never wait
//! for a refill. Level-based: a reconcile recomputes everything from the index, and one runs at
//! least every `resync` even without changes, so drift in Neutron is repaired.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use stacknet_engine::PolicyEngine;
use stacknet_engine::objects::ObjectKey;
use stacknet_openstack::octavia::OctaviaBackend;
use stacknet_openstack::{Cloud, CloudSource, NeutronBackend, NeutronConfig, PoolNode, Problem};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::controller::{Annotations, Change, Observed};
use crate::events::Events;
use crate::http::Health;
use crate::metrics::Metrics;

/// What the OpenStack backend needs beyond the controller's common settings.
#[derive(Debug, Clone)]
pub struct OpenStackSettings {
    pub cloud: CloudSource,
    pub neutron: NeutronConfig,
    /// Quiet time that ends a burst of changes.
    pub coalesce: Duration,
    /// A reconcile at least this often.
    pub resync: Duration,
}

impl OpenStackSettings {
    /// From the controller's checked configuration (`None` with the OVN backend).
    pub fn from_config(c: &crate::ControllerConfig) -> Option<OpenStackSettings> {
        let o = c.openstack.as_ref()?;
        let cloud = match (&o.os_cloud, CloudSource::from_env()) {
            (Some(name), _) => CloudSource::Named { cloud: name.clone(), file: o.clouds_yaml.clone() },
            (None, CloudSource::Named { cloud, .. }) => CloudSource::Named { cloud, file: o.clouds_yaml.clone() },
            (None, env) => env,
        };
        let neutron = NeutronConfig {
            service_cidr: o.service_cidr,
            external_network: o.external_network.clone(),
            pool_size: o.pool_size,
            network_per_namespace: o.network_per_namespace,
            namespace_prefix_len: o.namespace_prefix_len,
            ..NeutronConfig::new(c.cluster.clone(), c.ipam.cluster.clone())
        };
        Some(OpenStackSettings { cloud, neutron, coalesce: c.coalesce, resync: Duration::from_secs(60) })
    }
}

pub struct OpenStackController {
    neutron: Arc<NeutronBackend>,
    octavia: Option<OctaviaBackend>,
    engine: PolicyEngine,
    observed: Observed,
    sources: BTreeSet<String>,
    synced: BTreeSet<String>,
    settings: OpenStackSettings,
    /// Whether this replica leads (`None`: it is the only one).
    leading: Option<watch::Receiver<bool>>,
    /// Pods' network annotations, written back with the Kubernetes API.
    annotations: Option<Annotations>,
}

fn report(events: &Events, problems: &[Problem]) {
    for p in problems {
        events.warn(&p.object, p.reason, &p.message);
    }
}

impl OpenStackController {
    /// Authenticates (an error names what is wrong with the cloud's configuration or
    /// credentials, never the credentials themselves).
    pub async fn connect(settings: OpenStackSettings, sources: &[impl AsRef<str>]) -> Result<Self, String> {
        let cloud = Cloud::connect(&settings.cloud).await.map_err(|e| format!("OpenStack: {e}"))?;
        let octavia = cloud.has_load_balancer.then(|| OctaviaBackend::new(cloud.clone(), settings.neutron.clone()));
        Ok(OpenStackController {
            neutron: Arc::new(NeutronBackend::new(cloud, settings.neutron.clone())),
            octavia,
            engine: PolicyEngine::new(),
            observed: Observed {
                events: Arc::new(Events::new()),
                metrics: Arc::new(Metrics::default()),
                health: Arc::new(Health::default()),
            },
            sources: sources.iter().map(|s| s.as_ref().to_string()).collect(),
            synced: BTreeSet::new(),
            settings,
            leading: None,
            annotations: None,
        })
    }

    /// Writes only while `leading` says so (see [`crate::leader`]): a follower keeps the
    /// cluster's index and is ready, and neither reconciles nor fills pools. A replica that
    /// takes over reads Neutron afresh (the previous leader wrote since) before its first
    /// reconcile.
    pub fn with_leader(mut self, leading: watch::Receiver<bool>) -> Self {
        self.leading = Some(leading);
        self
    }

    fn is_leader(&self) -> bool {
        self.leading.as_ref().is_none_or(|l| *l.borrow())
    }

    /// Writes each pod's network back as its `stacknet.io/network` annotation through
    /// `annotate` (its Neutron port's addresses with their prefix lengths, MAC, gateways, port
    /// and network, and on a nested node the VLAN and the trunk's parent port), as JSON.
    pub fn with_annotations(mut self, annotate: mpsc::UnboundedSender<(ObjectKey, String)>) -> Self {
        self.annotations = Some(Annotations::new(annotate));
        self
    }

    /// Sends the annotations that differ from what the pods carry.
    fn annotate(&mut self, report: &stacknet_openstack::Report) {
        let Some(annotations) = self.annotations.as_mut() else { return };
        let Some(topology) = &report.topology else { return };
        annotations.retain(|k| report.ports.contains_key(k));
        for (key, port) in &report.ports {
            let mut ips = Vec::new();
            let mut gateways = Vec::new();
            for ip in &port.ips {
                let Some(subnet) = topology.subnet_of(*ip) else { continue };
                let Some(len) = subnet.cidr.split_once('/').map(|(_, l)| l) else { continue };
                ips.push(format!("{ip}/{len}"));
                gateways.extend(subnet.gateway_ip.clone());
            }
            let mut value = serde_json::json!({
                "ips": ips,
                "mac": port.mac,
                "gateways": gateways,
                "portId": port.port_id,
                "networkId": port.network_id,
            });
            if let (Some(vlan), Some(parent)) = (port.vlan, &port.parent_port) {
                value["vlan"] = serde_json::json!(vlan);
                value["parentPort"] = serde_json::json!(parent);
            }
            annotations.offer(self.engine.index(), key, value.to_string());
        }
    }

    pub fn observed(&self) -> Observed {
        self.observed.clone()
    }

    /// Whether Services are made (the catalog has Octavia).
    pub fn has_load_balancer(&self) -> bool {
        self.octavia.is_some()
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Apply(object) => {
                self.engine.apply(object);
            }
            Change::Delete(kind, key) => {
                self.engine.delete(kind, &key);
            }
            Change::Synced(source) => {
                self.synced.insert(source);
            }
        }
    }

    async fn reconcile(&mut self) -> Result<(), String> {
        let started = std::time::Instant::now();
        let metrics = &self.observed.metrics.clone();
        let events = &self.observed.events.clone();
        let index = self.engine.index();
        metrics.pods.store(index.pod_count() as i64, Ordering::Relaxed);
        metrics.policies.store(index.policies().count() as i64, Ordering::Relaxed);
        let cluster = format!("Cluster {}", self.settings.neutron.cluster);
        let fail = |e: stacknet_openstack::Error, what: &str| {
            let reason = if e.is_transient() { "OpenStackUnreachable" } else { "OpenStackRejected" };
            let message = format!("{what}: {e}; retrying");
            events.warn(&cluster, reason, &message);
            metrics.reconciles_failed.fetch_add(1, Ordering::Relaxed);
            message
        };
        let net = self.neutron.reconcile(&self.engine).await.map_err(|e| fail(e, "Neutron"))?;
        report(events, &net.problems);
        self.annotate(&net);
        metrics.operations.fetch_add(net.calls, Ordering::Relaxed);
        if let (Some(octavia), Some(topology)) = (&self.octavia, &net.topology) {
            let lbs = octavia.reconcile(self.engine.index(), topology).await.map_err(|e| fail(e, "Octavia"))?;
            report(events, &lbs.problems);
        }
        metrics.reconciles_ok.fetch_add(1, Ordering::Relaxed);
        metrics.reconcile.observe(started.elapsed());
        tracing::debug!(
            calls = net.calls,
            created = net.created,
            updated = net.updated,
            deleted = net.deleted,
            problems = net.problems.len(),
            "reconciled with Neutron"
        );
        Ok(())
    }

    /// Runs until `shutdown` completes (a reconcile under way is finished first) or every
    /// source has gone.
    pub async fn run(mut self, changes: mpsc::Receiver<Change>, shutdown: impl Future<Output = ()>) {
        let health = self.observed.health.clone();
        health.alive.store(true, Ordering::SeqCst);
        health.set_ready(false, "waiting for the cluster's initial state");
        // The pools' own task, fed the cluster's nodes after each reconcile.
        let (nodes_tx, nodes_rx) = watch::channel(Vec::<PoolNode>::new());
        let refiller = (self.settings.neutron.pool_size > 0).then(|| {
            tokio::spawn(refill(self.neutron.clone(), nodes_rx, self.observed.events.clone(), self.leading.clone()))
        });
        let mut changes = Some(changes);
        let mut dirty: Option<(Instant, Instant)> = Some((Instant::now(), Instant::now()));
        let mut retry_at: Option<Instant> = None;
        let mut backoff = Duration::from_millis(500);
        let coalesce = self.settings.coalesce;
        let mut last_reconcile = Instant::now();
        let mut leading = self.leading.clone();
        let mut was_leader = self.is_leader();
        tokio::pin!(shutdown);
        loop {
            let leader = self.is_leader();
            self.observed.metrics.leader.store(i64::from(leader), Ordering::Relaxed);
            if leader && !was_leader {
                // Taking over: what the previous leader wrote is read, then a full reconcile.
                self.neutron.invalidate().await;
                if let Some(a) = self.annotations.as_mut() {
                    a.clear();
                }
                let now = Instant::now();
                dirty = Some(dirty.map_or((now, now), |(first, _)| (first, now)));
            }
            was_leader = leader;
            let synced = self.sources.is_subset(&self.synced);
            if !leader && synced && !health.ready.load(Ordering::SeqCst) {
                // A follower is ready once it holds the cluster: it can take over at once.
                health.set_ready(true, "");
            }
            let can = synced && leader;
            let deadline = match dirty {
                Some((first, last)) if can => {
                    let at = (last + coalesce).min(first + coalesce * 10);
                    retry_at.map_or(at, |r| at.max(r))
                }
                _ => last_reconcile + self.settings.resync,
            };
            tokio::select! {
                _ = &mut shutdown => break,
                change = async { changes.as_mut().expect("guarded").recv().await }, if changes.is_some() => {
                    match change {
                        Some(c) => {
                            let now = Instant::now();
                            dirty = Some(dirty.map_or((now, now), |(first, _)| (first, now)));
                            self.apply(c);
                        }
                        None => {
                            changes = None;
                            if !self.sources.is_subset(&self.synced) {
                                tracing::error!("the cluster sources ended before delivering the cluster");
                                break;
                            }
                        }
                    }
                }
                r = async { leading.as_mut().expect("guarded").changed().await }, if leading.is_some() => {
                    if r.is_err() {
                        leading = None;
                    }
                }
                _ = tokio::time::sleep_until(deadline), if can => {
                    last_reconcile = Instant::now();
                    match self.reconcile().await {
                        Ok(()) => {
                            dirty = None;
                            retry_at = None;
                            backoff = Duration::from_millis(500);
                            health.set_ready(true, "");
                            let _ = nodes_tx.send(NeutronBackend::nodes_of(&self.engine));
                        }
                        Err(message) => {
                            health.set_ready(false, &message);
                            let now = Instant::now();
                            dirty = Some(dirty.unwrap_or((now, now)));
                            retry_at = Some(now + backoff);
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                        }
                    }
                }
            }
        }
        if let Some(r) = refiller {
            r.abort();
        }
        health.alive.store(false, Ordering::SeqCst);
        health.set_ready(false, "shutting down");
    }
}

/// Keeps every node's pool full: after each change of the node list and every few seconds
/// (pods take ports between reconciles' reports).
async fn refill(
    neutron: Arc<NeutronBackend>,
    mut nodes: watch::Receiver<Vec<PoolNode>>,
    events: Arc<Events>,
    leading: Option<watch::Receiver<bool>>,
) {
    loop {
        let list = nodes.borrow_and_update().clone();
        let leader = leading.as_ref().is_none_or(|l| *l.borrow());
        if leader && !list.is_empty() {
            match neutron.refill_pools(&list).await {
                Ok(r) => {
                    if r.created + r.deleted > 0 {
                        tracing::info!(made = r.created, reclaimed = r.deleted, "port pools refilled");
                    }
                    report(&events, &r.problems)
                }
                Err(e) => tracing::warn!(error = %e, "refilling the port pools"),
            }
        }
        tokio::select! {
            r = nodes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}
