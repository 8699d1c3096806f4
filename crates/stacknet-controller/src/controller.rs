//! The reconcile loop: changes from the sources go into the cluster index; once every source
//! has delivered its initial state (never before: an empty index would mean "delete
//! everything") and the allocation a previous run left in the Northbound database has been
//! read back, bursts of changes are coalesced and each burst becomes one reconcile: IPAM, the
//! engine, the desired rows, one minimal transaction. Level-based: a reconcile recomputes
//! everything from the index, so a missed or repeated change cannot leave the network wrong.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use stacknet_engine::index::Kind;
use stacknet_engine::ipam::Ipam;
use stacknet_engine::objects::{ClusterObject, ObjectKey};
use stacknet_engine::{Cidr, PolicyEngine};
use stacknet_ovn::{NodeNet, OvnBackend, Topology};
use stacknet_ovsdb::nb;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::ControllerConfig;
use crate::events::Events;
use crate::http::Health;
use crate::metrics::Metrics;

/// What a source tells the controller.
// Nearly every change is an Apply: boxing it would cost an allocation per change for the
// rare small variants' sake.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Apply(ClusterObject),
    Delete(Kind, ObjectKey),
    /// The named source has delivered its whole current state.
    Synced(String),
}

/// What can be watched from outside while the controller runs.
#[derive(Clone)]
pub struct Observed {
    pub events: Arc<Events>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

pub struct Controller {
    config: ControllerConfig,
    backend: OvnBackend,
    ipam: Ipam,
    /// The cluster index with the compiled policy model, kept up to date change by change
    /// (never rebuilt): pods carry the addresses IPAM gave them.
    engine: PolicyEngine,
    observed: Observed,
    sources: BTreeSet<String>,
    synced: BTreeSet<String>,
    restored: bool,
    /// Pods seen and not yet reported up by OVN: since when.
    pending_up: HashMap<ObjectKey, Instant>,
    /// Each pod's logical port, as last programmed.
    ports: BTreeMap<ObjectKey, String>,
    /// Whether this replica may write (`None`: no election, always).
    leading: Option<tokio::sync::watch::Receiver<bool>>,
    /// Pods' network annotations, written back with the Kubernetes API.
    annotations: Option<Annotations>,
}

/// Pods' `stacknet.io/network` annotations on their way to the API server: each sent once
/// per value, until the pod is seen carrying it.
#[derive(Debug)]
pub(crate) struct Annotations {
    tx: mpsc::UnboundedSender<(ObjectKey, String)>,
    /// Sent and not yet seen back on the pod.
    sent: HashMap<ObjectKey, String>,
}

impl Annotations {
    pub(crate) fn new(tx: mpsc::UnboundedSender<(ObjectKey, String)>) -> Annotations {
        Annotations { tx, sent: HashMap::new() }
    }

    /// Forgets pods `keep` says no to.
    pub(crate) fn retain(&mut self, keep: impl Fn(&ObjectKey) -> bool) {
        self.sent.retain(|k, _| keep(k));
    }

    /// Forgets everything sent (a new leader sends what differs again).
    pub(crate) fn clear(&mut self) {
        self.sent.clear();
    }

    /// Sends `value` for pod `key` unless the pod carries it already or it was sent.
    pub(crate) fn offer(&mut self, index: &stacknet_engine::ClusterIndex, key: &ObjectKey, value: String) {
        let current = index.pod_id(key).and_then(|id| index.pod(id)).and_then(|p| p.network_annotation.as_deref());
        if current == Some(value.as_str()) {
            self.sent.remove(key);
            return;
        }
        if self.sent.get(key) == Some(&value) {
            return;
        }
        if self.tx.send((key.clone(), value.clone())).is_ok() {
            self.sent.insert(key.clone(), value);
        }
    }
}

impl Controller {
    /// A controller fed by the named `sources` (each must send [`Change::Synced`]).
    pub fn new(config: ControllerConfig, sources: &[impl AsRef<str>]) -> Result<Controller, String> {
        let ipam = Ipam::new(config.ipam.clone())?;
        let backend = OvnBackend::connect(config.nb.clone());
        Ok(Controller {
            config,
            backend,
            ipam,
            engine: PolicyEngine::new(),
            observed: Observed {
                events: Arc::new(Events::new()),
                metrics: Arc::new(Metrics::default()),
                health: Arc::new(Health::default()),
            },
            sources: sources.iter().map(|s| s.as_ref().to_string()).collect(),
            synced: BTreeSet::new(),
            restored: false,
            pending_up: HashMap::new(),
            ports: BTreeMap::new(),
            leading: None,
            annotations: None,
        })
    }

    /// Writes each pod's network back as its `stacknet.io/network` annotation through
    /// `annotate` (a pod's address, MAC, gateways and logical port, as JSON).
    pub fn with_annotations(mut self, annotate: mpsc::UnboundedSender<(ObjectKey, String)>) -> Controller {
        self.annotations = Some(Annotations::new(annotate));
        self
    }

    /// Sends the annotations that differ from what the pods carry (after a reconcile); a
    /// pod's prefix lengths and gateways are those of its node's subnets in `nodes`.
    fn annotate(&mut self, desired: &stacknet_ovn::Desired, nodes: &BTreeMap<String, Vec<(Cidr, IpAddr)>>) {
        let Some(annotations) = self.annotations.as_mut() else { return };
        annotations.retain(|k| desired.ports.contains_key(k));
        for (key, port) in &desired.ports {
            let Some(subnets) = nodes.get(&port.node) else { continue };
            let ips = port.ips.iter().filter_map(|ip| {
                subnets.iter().find(|(c, _)| c.contains(*ip)).map(|(c, _)| format!("{ip}/{}", c.prefix_len()))
            });
            let value = serde_json::json!({
                "ips": ips.collect::<Vec<_>>(),
                "mac": port.mac,
                "gateways": subnets.iter().map(|(_, g)| g.to_string()).collect::<Vec<_>>(),
                "logicalPort": port.lsp,
                "node": port.node,
            })
            .to_string();
            annotations.offer(self.engine.index(), key, value);
        }
    }

    /// Writes only while `leading` says so (see [`crate::leader`]); a replica that becomes
    /// leader re-reads the allocation from the Northbound database before its first write.
    pub fn with_leader(mut self, leading: tokio::sync::watch::Receiver<bool>) -> Controller {
        self.leading = Some(leading);
        self
    }

    fn is_leader(&self) -> bool {
        self.leading.as_ref().is_none_or(|l| *l.borrow())
    }

    pub fn observed(&self) -> Observed {
        self.observed.clone()
    }

    /// Serves `/metrics`, `/healthz`, `/readyz` and `/events` on the configured address, from
    /// a thread of its own (see [`crate::http::serve_thread`]).
    pub fn serve_http_thread(&self) -> std::io::Result<SocketAddr> {
        let o = &self.observed;
        crate::http::serve_thread(self.config.metrics_addr, o.health.clone(), o.metrics.clone(), o.events.clone())
    }

    /// Serves `/metrics`, `/healthz`, `/readyz` and `/events` on the configured address.
    pub async fn serve_http(&self) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let o = &self.observed;
        crate::http::serve(self.config.metrics_addr, o.health.clone(), o.metrics.clone(), o.events.clone()).await
    }

    fn cluster_object(&self) -> String {
        format!("Cluster {}", self.config.cluster)
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Apply(object) => {
                if let ClusterObject::Pod(p) = &object
                    && self.engine.index().pod_id(&p.key).is_none()
                {
                    self.pending_up.insert(p.key.clone(), Instant::now());
                }
                self.engine.apply(object);
            }
            Change::Delete(kind, key) => {
                if kind == Kind::Pod {
                    self.pending_up.remove(&key);
                }
                self.engine.delete(kind, &key);
            }
            Change::Synced(source) => {
                self.synced.insert(source);
            }
        }
    }

    fn synced(&self) -> bool {
        self.sources.is_subset(&self.synced)
    }

    /// Reads back what a previous run allocated, once the Northbound replica is there.
    fn restore(&mut self) -> bool {
        let guard = self.backend.client().replica();
        let Some(replica) = guard.as_ref() else { return false };
        let a = stacknet_ovn::lookup::allocated(replica, &self.config.cluster);
        for (node, subnet) in &a.nodes {
            self.ipam.restore_node(node, *subnet);
        }
        for (pod, node, ips) in a.pods {
            self.ipam.restore_pod(pod, &node, ips);
        }
        true
    }

    /// Records the programming latency of pods whose ports OVN now reports up.
    fn check_up(&mut self) {
        if self.pending_up.is_empty() {
            return;
        }
        let guard = self.backend.client().replica();
        let Some(replica) = guard.as_ref() else { return };
        let lsps = replica.table(nb::LOGICAL_SWITCH_PORT);
        let metrics = &self.observed.metrics;
        let ports = &self.ports;
        self.pending_up.retain(|key, since| {
            let up = ports.get(key).is_some_and(|name| {
                lsps.by_name(name).any(|(_, r)| {
                    r.get("up").is_some_and(|d| d.elements().first().and_then(|a| a.as_bool()) == Some(true))
                })
            });
            if up {
                metrics.programming.observe(since.elapsed());
            }
            !up
        });
    }

    async fn reconcile(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let metrics = self.observed.metrics.clone();
        let reserved = self
            .backend
            .client()
            .replica()
            .as_ref()
            .map(|r| stacknet_ovn::lookup::foreign_addresses(r, &self.config.cluster))
            .unwrap_or_default();
        self.ipam.set_reserved(reserved);
        let assignment = self.ipam.sync(self.engine.index());
        for p in &assignment.problems {
            self.observed.events.warn(&p.object, p.reason, &p.message);
        }
        // The engine sees each pod with the addresses the network gives it (none: no port yet);
        // only pods whose addresses differ are touched, one at a time (after a restart that is
        // every pod: no second copy of them all).
        let index = self.engine.index();
        let moved: Vec<_> = index
            .pods()
            .filter(|(_, p)| p.ips != assignment.pods.get(&p.key).map(|(_, ips)| ips.as_slice()).unwrap_or_default())
            .map(|(id, _)| id)
            .collect();
        for id in moved {
            let Some(mut pod) = self.engine.index().pod(id).cloned() else { continue };
            pod.ips = assignment.pods.get(&pod.key).map(|(_, ips)| ips.clone()).unwrap_or_default();
            self.engine.apply_pod(pod);
        }
        let index = self.engine.index();
        metrics.pods.store(index.pod_count() as i64, Ordering::Relaxed);
        metrics.policies.store(index.policies().count() as i64, Ordering::Relaxed);
        let engine = &self.engine;
        let topology = Topology {
            cluster: self.config.cluster.clone(),
            nodes: assignment
                .nodes
                .iter()
                .map(|(name, subnets)| NodeNet { name: name.clone(), subnets: subnets.clone() })
                .collect(),
            nested: BTreeMap::new(),
        };
        let desired = stacknet_ovn::build(engine, &topology);
        for w in &desired.warnings {
            tracing::debug!("{w}");
        }
        match self.backend.reconcile(&desired).await {
            Ok(report) => {
                metrics.reconciles_ok.fetch_add(1, Ordering::Relaxed);
                metrics.transactions.fetch_add(report.transactions as u64, Ordering::Relaxed);
                metrics.operations.fetch_add(report.operations as u64, Ordering::Relaxed);
                metrics.reconcile.observe(started.elapsed());
                self.ports = desired.ports.iter().map(|(k, p)| (k.clone(), p.lsp.clone())).collect();
                self.annotate(&desired, &assignment.nodes);
                tracing::debug!(
                    transactions = report.transactions,
                    operations = report.operations,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "reconciled"
                );
                Ok(())
            }
            Err(e) => {
                metrics.reconciles_failed.fetch_add(1, Ordering::Relaxed);
                metrics.transaction_errors.fetch_add(1, Ordering::Relaxed);
                let remotes = self.config.nb.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ");
                let (reason, message) = if e.is_transient() {
                    ("OvnUnreachable", format!("the OVN Northbound database ({remotes}) is unreachable: {e}; retrying"))
                } else {
                    (
                        "OvnRejected",
                        format!("the OVN Northbound database ({remotes}) refused the change: {e}; retrying"),
                    )
                };
                self.observed.events.warn(&self.cluster_object(), reason, &message);
                Err(message)
            }
        }
    }

    /// Runs until `shutdown` completes (a reconcile under way is finished first) or every
    /// source has gone.
    pub async fn run(mut self, changes: mpsc::Receiver<Change>, shutdown: impl Future<Output = ()>) {
        let health = self.observed.health.clone();
        health.alive.store(true, Ordering::SeqCst);
        health.set_ready(false, "waiting for the cluster's initial state and the Northbound database");
        let mut changes = Some(changes);
        let mut status = self.backend.client().status();
        // (first change, last change). A first reconcile is due even with no change at all:
        // it garbage-collects what the cluster no longer has.
        let mut dirty: Option<(Instant, Instant)> = Some((Instant::now(), Instant::now()));
        let mut retry_at: Option<Instant> = None;
        let mut backoff = Duration::from_millis(200);
        let started = Instant::now();
        let mut unreachable_reported = false;
        let mut sessions = status.borrow().sessions;
        let mut leading = self.leading.clone();
        let mut was_leader = self.is_leader();
        tokio::pin!(shutdown);
        loop {
            if !self.restored && status.borrow().connected.is_some() {
                self.restored = self.restore();
            }
            if !self.restored && !unreachable_reported && started.elapsed() > Duration::from_secs(10) {
                let remotes = self.config.nb.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ");
                self.observed.events.warn(
                    &self.cluster_object(),
                    "OvnUnreachable",
                    &format!("no connection to the OVN Northbound database ({remotes}) yet; still trying"),
                );
                unreachable_reported = true;
            }
            let leader = self.is_leader();
            self.observed.metrics.leader.store(i64::from(leader), Ordering::Relaxed);
            if leader && !was_leader {
                // Taking over: the previous leader's allocation is read back, then a full reconcile.
                self.restored = false;
                if status.borrow().connected.is_some() {
                    self.restored = self.restore();
                }
                let now = Instant::now();
                dirty = Some(dirty.map_or((now, now), |(first, _)| (first, now)));
            }
            was_leader = leader;
            let can = self.synced() && self.restored && leader;
            let deadline = match dirty {
                Some((first, last)) if can => {
                    let at = (last + self.config.coalesce).min(first + self.config.coalesce_max);
                    retry_at.map_or(at, |r| at.max(r))
                }
                _ => Instant::now() + Duration::from_secs(3600),
            };
            tokio::select! {
                _ = &mut shutdown => break,
                change = async { changes.as_mut().expect("guarded").recv().await }, if changes.is_some() => {
                    match change {
                        Some(c) => {
                            let now = Instant::now();
                            dirty = Some(dirty.map_or((now, now), |(first, _)| (first, now)));
                            self.observed.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
                            self.apply(c);
                        }
                        None => {
                            changes = None;
                            if !self.synced() {
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
                r = status.changed() => {
                    if r.is_err() {
                        break;
                    }
                    self.check_up();
                    let now_sessions = status.borrow_and_update().sessions;
                    if now_sessions > sessions && sessions > 0 && self.restored {
                        // A reconnect: the database may have changed behind our back.
                        let now = Instant::now();
                        dirty = Some(dirty.map_or((now, now), |(first, _)| (first, now)));
                    }
                    sessions = now_sessions;
                }
                _ = tokio::time::sleep_until(deadline), if can && dirty.is_some() => {
                    self.observed.metrics.queue_depth.store(0, Ordering::Relaxed);
                    match self.reconcile().await {
                        Ok(()) => {
                            dirty = None;
                            retry_at = None;
                            backoff = Duration::from_millis(200);
                            health.set_ready(true, "");
                            self.check_up();
                        }
                        Err(message) => {
                            health.set_ready(false, &message);
                            retry_at = Some(Instant::now() + backoff);
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                        }
                    }
                }
            }
            if !leader && self.synced() && !health.ready.load(Ordering::SeqCst) {
                health.set_ready(true, "");
            }
        }
        health.alive.store(false, Ordering::SeqCst);
        health.set_ready(false, "shutting down");
    }
}
