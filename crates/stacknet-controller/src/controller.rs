//! The reconcile loop, one for every backend. Changes from the sources go into the cluster
//! index (the engine); once every source has delivered its initial state (never before: an
//! empty index would mean "delete everything"), bursts of changes are coalesced and each burst
//! becomes one reconcile by the [`Backend`]. Level-based: a reconcile recomputes everything
//! from the index, and one runs at least every [`Pace::resync`], so a missed or repeated change
//! cannot leave the network wrong. A failed reconcile is retried with backoff; only the
//! replica that leads writes; readiness says which of these states the loop is in.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use stacknet_engine::objects::{ClusterObject, Kind, ObjectKey};
use stacknet_engine::{ClusterIndex, ObjectRef, PolicyEngine, Problem, Reason};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::{ControllerConfig, Pace};
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

/// Where the network is made: what the loop needs of a backend.
pub trait Backend: Send {
    /// Where the network is made, for logs and readiness (`the OVN Northbound database (...)`).
    fn describe(&self) -> String;

    /// A change from the sources, just before it goes into the engine.
    fn observe(&mut self, _change: &Change, _index: &ClusterIndex) {}

    /// Whether a reconcile may start; `Err`: why not yet (reported once it has lasted
    /// [`NOT_PREPARED_REPORT`]).
    fn prepare(&mut self) -> Result<(), Failure> {
        Ok(())
    }

    /// Makes the network equal to the cluster in `engine` (the backend may give pods their
    /// addresses there). `annotate`: return each pod's `stacknet.io/network` annotation.
    fn reconcile(
        &mut self,
        engine: &mut PolicyEngine,
        annotate: bool,
    ) -> impl Future<Output = Result<Reconciled, Failure>> + Send;

    /// Whether this replica writes. Called at start and on every change; a replica that takes
    /// over forgets what it knew of the network (the previous leader wrote since).
    fn lead(&mut self, leading: bool) -> impl Future<Output = ()> + Send;

    /// What the backend learns by itself between reconciles (taken once, when the loop
    /// starts).
    fn news(&mut self) -> Option<BoxStream<'static, News>> {
        None
    }

    /// How long each pod whose port came up since the last call took, from first sight.
    fn ports_up(&mut self) -> Vec<Duration> {
        Vec::new()
    }
}

/// A reconcile that was carried out (problems with single objects included).
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Objects the network could not be made for; the rest was.
    pub problems: Vec<Problem>,
    /// Each pod's `stacknet.io/network` annotation (when asked for).
    pub annotations: Vec<(ObjectKey, String)>,
    /// Each of our LoadBalancer Services' `status.loadBalancer.ingress` addresses (empty:
    /// none); Services not listed are not ours to write.
    pub ingress: Vec<(ObjectKey, Vec<IpAddr>)>,
    /// The `k8s.v1.cni.cncf.io/network-status` annotation of each pod with secondary
    /// networks (when asked for).
    pub network_status: Vec<(ObjectKey, String)>,
    /// Transactions (or API calls) sent, and the operations in them.
    pub transactions: u64,
    pub operations: u64,
}

/// A reconcile that could not be carried out: an Event on the cluster, and a retry.
#[derive(Debug, Clone)]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
    /// OVSDB transactions that failed on the way.
    pub failed_transactions: u64,
}

impl Failure {
    pub fn new(reason: Reason, message: impl Into<String>) -> Failure {
        Failure { reason, message: message.into(), failed_transactions: 0 }
    }
}

/// Something the backend learnt between reconciles.
#[derive(Debug, Default)]
pub struct News {
    /// The network may have changed behind our back (a reconnect): reconcile.
    pub reconcile: bool,
    /// Found by the backend's own tasks (pools).
    pub problems: Vec<Problem>,
}

/// How long a backend may be unprepared before it is reported.
pub const NOT_PREPARED_REPORT: Duration = Duration::from_secs(10);

/// What can be watched from outside while the controller runs.
#[derive(Clone)]
pub struct Observed {
    pub events: Arc<Events>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

/// What the controller writes back with the Kubernetes API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteBack {
    /// A pod's `stacknet.io/network` annotation (a merge patch of that one annotation).
    PodNetwork(ObjectKey, String),
    /// A LoadBalancer Service's `status.loadBalancer.ingress`: its addresses (empty: none).
    LoadBalancerIngress(ObjectKey, Vec<IpAddr>),
    /// A pod's `k8s.v1.cni.cncf.io/network-status` annotation (a merge patch of that one).
    NetworkStatus(ObjectKey, String),
}

/// Write-backs on their way to the API server: each sent once per value, until the object is
/// seen carrying it.
#[derive(Debug)]
struct Annotations {
    tx: mpsc::UnboundedSender<WriteBack>,
    /// Sent and not yet seen back on the pod.
    sent: HashMap<ObjectKey, String>,
    /// Sent and not yet seen back on the Service.
    sent_ingress: HashMap<ObjectKey, Vec<IpAddr>>,
    /// Sent and not yet seen back on the pod (network-status).
    sent_status: HashMap<ObjectKey, String>,
}

impl Annotations {
    /// Sends each value unless its pod carries it already or it was sent; forgets pods that
    /// have none any more.
    fn offer(&mut self, index: &ClusterIndex, values: Vec<(ObjectKey, String)>) {
        let keys: BTreeSet<&ObjectKey> = values.iter().map(|(k, _)| k).collect();
        self.sent.retain(|k, _| keys.contains(k));
        for (key, value) in values {
            let current = index.pod_id(&key).and_then(|id| index.pod(id)).and_then(|p| p.network_annotation.as_deref());
            if current == Some(value.as_str()) {
                self.sent.remove(&key);
            } else if self.sent.get(&key) != Some(&value)
                && self.tx.send(WriteBack::PodNetwork(key.clone(), value.clone())).is_ok()
            {
                self.sent.insert(key, value);
            }
        }
    }

    /// The same for pods' network-status annotations.
    fn offer_status(&mut self, index: &ClusterIndex, values: Vec<(ObjectKey, String)>) {
        let keys: BTreeSet<&ObjectKey> = values.iter().map(|(k, _)| k).collect();
        self.sent_status.retain(|k, _| keys.contains(k));
        for (key, value) in values {
            let current =
                index.pod_id(&key).and_then(|id| index.pod(id)).and_then(|p| p.network_status_annotation.as_deref());
            if current == Some(value.as_str()) {
                self.sent_status.remove(&key);
            } else if self.sent_status.get(&key) != Some(&value)
                && self.tx.send(WriteBack::NetworkStatus(key.clone(), value.clone())).is_ok()
            {
                self.sent_status.insert(key, value);
            }
        }
    }

    /// The same for Services' load balancer addresses.
    fn offer_ingress(&mut self, index: &ClusterIndex, values: Vec<(ObjectKey, Vec<IpAddr>)>) {
        let keys: BTreeSet<&ObjectKey> = values.iter().map(|(k, _)| k).collect();
        self.sent_ingress.retain(|k, _| keys.contains(k));
        for (key, value) in values {
            let Some(svc) = index.services().find(|s| s.key == key) else { continue };
            if svc.ingress_ips == value {
                self.sent_ingress.remove(&key);
            } else if self.sent_ingress.get(&key) != Some(&value)
                && self.tx.send(WriteBack::LoadBalancerIngress(key.clone(), value.clone())).is_ok()
            {
                self.sent_ingress.insert(key, value);
            }
        }
    }
}

/// A burst of changes: its first and last change.
#[derive(Debug, Clone, Copy)]
struct Burst {
    first: Instant,
    last: Instant,
}

fn extend(burst: Option<Burst>) -> Option<Burst> {
    let now = Instant::now();
    Some(burst.map_or(Burst { first: now, last: now }, |b| Burst { last: now, ..b }))
}

pub struct Controller<B: Backend> {
    backend: B,
    /// The cluster index with the compiled policy model, kept up to date change by change
    /// (never rebuilt).
    engine: PolicyEngine,
    cluster: ObjectRef,
    pace: Pace,
    metrics_addr: SocketAddr,
    observed: Observed,
    sources: BTreeSet<String>,
    synced: BTreeSet<String>,
    /// Whether this replica may write (`None`: no election, always).
    leading: Option<watch::Receiver<bool>>,
    /// Pods' network annotations, written back with the Kubernetes API.
    annotations: Option<Annotations>,
}

impl<B: Backend> Controller<B> {
    /// A controller making the network in `backend`, fed by the named `sources` (each must
    /// send [`Change::Synced`]).
    pub fn new(config: &ControllerConfig, backend: B, sources: &[impl AsRef<str>]) -> Controller<B> {
        Controller {
            backend,
            // Every reconcile builds from the model; nothing reads deltas.
            engine: PolicyEngine::without_deltas(),
            cluster: ObjectRef::Cluster(config.cluster.clone()),
            pace: config.pace,
            metrics_addr: config.metrics_addr,
            observed: Observed {
                events: Arc::new(Events::new()),
                metrics: Arc::new(Metrics::default()),
                health: Arc::new(Health::default()),
            },
            sources: sources.iter().map(|s| s.as_ref().to_string()).collect(),
            synced: BTreeSet::new(),
            leading: None,
            annotations: None,
        }
    }

    /// Writes each pod's network back as its `stacknet.io/network` annotation through
    /// `annotate` (what the backend says of the pod's port, as JSON), and our LoadBalancer
    /// Services' addresses as their `status.loadBalancer.ingress`.
    pub fn with_annotations(mut self, annotate: mpsc::UnboundedSender<WriteBack>) -> Self {
        self.annotations = Some(Annotations {
            tx: annotate,
            sent: HashMap::new(),
            sent_ingress: HashMap::new(),
            sent_status: HashMap::new(),
        });
        self
    }

    /// Writes only while `leading` says so (see [`crate::leader`]): a follower keeps the
    /// cluster's index and is ready, and writes nothing.
    pub fn with_leader(mut self, leading: watch::Receiver<bool>) -> Self {
        self.leading = Some(leading);
        self
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn observed(&self) -> Observed {
        self.observed.clone()
    }

    /// Serves `/metrics`, `/healthz`, `/readyz` and `/events` on the configured address, from
    /// a thread of its own (see [`crate::http::serve_thread`]).
    pub fn serve_http_thread(&self) -> std::io::Result<SocketAddr> {
        let o = &self.observed;
        crate::http::serve_thread(self.metrics_addr, o.health.clone(), o.metrics.clone(), o.events.clone())
    }

    /// Serves `/metrics`, `/healthz`, `/readyz` and `/events` on the configured address.
    pub async fn serve_http(&self) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let o = &self.observed;
        crate::http::serve(self.metrics_addr, o.health.clone(), o.metrics.clone(), o.events.clone()).await
    }

    fn is_leader(&self) -> bool {
        self.leading.as_ref().is_none_or(|l| *l.borrow())
    }

    fn synced(&self) -> bool {
        self.sources.is_subset(&self.synced)
    }

    fn apply(&mut self, change: Change) {
        self.backend.observe(&change, self.engine.index());
        match change {
            Change::Apply(object) => {
                self.engine.apply(object);
            }
            Change::Delete(kind, key) => {
                self.engine.delete(kind, &key);
            }
            Change::Synced(source) => {
                tracing::debug!(source = %source, "source synced (its whole current state is in the index)");
                self.synced.insert(source);
            }
        }
    }

    fn record_ports_up(&mut self) {
        for took in self.backend.ports_up() {
            self.observed.metrics.programming.observe(took);
        }
    }

    /// One reconcile, its outcome reported (problems as Events, figures as metrics, a
    /// failure as an Event on the cluster).
    async fn reconcile(&mut self) -> Result<(), Failure> {
        let started = Instant::now();
        let metrics = self.observed.metrics.clone();
        let index = self.engine.index();
        metrics.pods.store(index.pod_count() as i64, Ordering::Relaxed);
        metrics.policies.store(index.policies().count() as i64, Ordering::Relaxed);
        match self.backend.reconcile(&mut self.engine, self.annotations.is_some()).await {
            Ok(done) => {
                self.observed.events.report(&done.problems);
                if let Some(a) = self.annotations.as_mut() {
                    a.offer(self.engine.index(), done.annotations);
                    a.offer_ingress(self.engine.index(), done.ingress);
                    a.offer_status(self.engine.index(), done.network_status);
                }
                metrics.reconciles_ok.fetch_add(1, Ordering::Relaxed);
                metrics.transactions.fetch_add(done.transactions, Ordering::Relaxed);
                metrics.operations.fetch_add(done.operations, Ordering::Relaxed);
                metrics.reconcile.observe(started.elapsed());
                tracing::debug!(
                    transactions = done.transactions,
                    operations = done.operations,
                    problems = done.problems.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "reconciled"
                );
                Ok(())
            }
            Err(failure) => {
                metrics.reconciles_failed.fetch_add(1, Ordering::Relaxed);
                metrics.transaction_errors.fetch_add(failure.failed_transactions, Ordering::Relaxed);
                self.observed.events.warn(&self.cluster, failure.reason, &failure.message);
                Err(failure)
            }
        }
    }

    /// Runs until `shutdown` completes (a reconcile under way is finished first) or every
    /// source has gone before delivering the cluster.
    pub async fn run(mut self, changes: mpsc::Receiver<Change>, shutdown: impl Future<Output = ()>) {
        let health = self.observed.health.clone();
        let metrics = self.observed.metrics.clone();
        health.alive.store(true, Ordering::SeqCst);
        let waiting = format!("waiting for the cluster's initial state and {}", self.backend.describe());
        health.set_ready(false, &waiting);
        let pace = self.pace;
        let mut changes = Some(changes);
        let mut news = self.backend.news();
        // A first reconcile is due even with no change at all: it garbage-collects what the
        // cluster no longer has.
        let mut burst = extend(None);
        let mut retry_at: Option<Instant> = None;
        let mut backoff = pace.retry_min;
        let started = Instant::now();
        let mut last_reconcile = Instant::now();
        let mut unprepared_reported = false;
        let mut leading = self.leading.clone();
        let mut was_leader = None;
        tokio::pin!(shutdown);
        loop {
            let leader = self.is_leader();
            metrics.leader.store(i64::from(leader), Ordering::Relaxed);
            if was_leader != Some(leader) {
                self.backend.lead(leader).await;
                if leader && was_leader.is_some() {
                    // Taking over: everything is reconciled against what the previous leader
                    // left, and annotations that differ are sent again.
                    if let Some(a) = self.annotations.as_mut() {
                        a.sent.clear();
                        a.sent_ingress.clear();
                        a.sent_status.clear();
                    }
                    burst = extend(burst);
                }
                was_leader = Some(leader);
            }
            let prepared = match self.backend.prepare() {
                Ok(()) => true,
                Err(f) => {
                    if !unprepared_reported && started.elapsed() > NOT_PREPARED_REPORT {
                        self.observed.events.warn(&self.cluster, f.reason, &f.message);
                        unprepared_reported = true;
                        // /readyz says why too (the last attempt's error).
                        if !health.ready.load(Ordering::SeqCst) {
                            health.set_ready(false, &format!("{waiting}: {}", f.message));
                        }
                    }
                    false
                }
            };
            let synced = self.synced();
            if !leader && synced && !health.ready.load(Ordering::SeqCst) {
                // A follower is ready once it holds the cluster: it can take over at once.
                health.set_ready(true, "");
            }
            let can = synced && prepared && leader;
            let deadline = match burst {
                _ if !can && !prepared && !unprepared_reported => started + NOT_PREPARED_REPORT,
                _ if !can => Instant::now() + Duration::from_secs(3600),
                Some(b) => {
                    let at = (b.last + pace.coalesce).min(b.first + pace.coalesce_max);
                    retry_at.map_or(at, |r| at.max(r))
                }
                None => last_reconcile + pace.resync,
            };
            tokio::select! {
                _ = &mut shutdown => break,
                change = async { changes.as_mut().expect("guarded").recv().await }, if changes.is_some() => {
                    match change {
                        Some(c) => {
                            burst = extend(burst);
                            metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
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
                n = async { news.as_mut().expect("guarded").next().await }, if news.is_some() => {
                    let Some(n) = n else {
                        news = None;
                        continue;
                    };
                    self.observed.events.report(&n.problems);
                    if n.reconcile {
                        burst = extend(burst);
                    }
                    self.record_ports_up();
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if !can {
                        continue;
                    }
                    metrics.queue_depth.store(0, Ordering::Relaxed);
                    last_reconcile = Instant::now();
                    match self.reconcile().await {
                        Ok(()) => {
                            burst = None;
                            retry_at = None;
                            backoff = pace.retry_min;
                            health.set_ready(true, "");
                            self.record_ports_up();
                        }
                        Err(failure) => {
                            health.set_ready(false, &failure.message);
                            burst = burst.or_else(|| extend(None));
                            retry_at = Some(Instant::now() + backoff);
                            backoff = (backoff * 2).min(pace.retry_max);
                        }
                    }
                }
            }
        }
        health.alive.store(false, Ordering::SeqCst);
        health.set_ready(false, "shutting down");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use stacknet_engine::manifest;

    use super::*;

    /// A backend that records what the loop asks of it, when (in paused time, from the start),
    /// and fails as many reconciles as it is told to.
    #[derive(Clone, Default)]
    struct Recording {
        log: Arc<Mutex<Vec<(u128, String)>>>,
        failures: Arc<Mutex<usize>>,
        started: Option<Instant>,
    }

    impl Recording {
        fn note(&self, what: String) {
            let at = self.started.map_or(0, |s| s.elapsed().as_millis());
            self.log.lock().unwrap().push((at, what));
        }

        fn log(&self) -> Vec<(u128, String)> {
            self.log.lock().unwrap().clone()
        }
    }

    impl Backend for Recording {
        fn describe(&self) -> String {
            "a recording backend".into()
        }

        async fn reconcile(&mut self, engine: &mut PolicyEngine, _annotate: bool) -> Result<Reconciled, Failure> {
            self.note(format!("reconcile {} pods", engine.index().pod_count()));
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return Err(Failure::new(Reason::OvnUnreachable, "down"));
            }
            Ok(Reconciled::default())
        }

        async fn lead(&mut self, leading: bool) {
            self.note(format!("lead {leading}"));
        }
    }

    fn pods(n: usize) -> Vec<Change> {
        (0..n)
            .map(|i| {
                let yaml = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: x}}\n");
                Change::Apply(manifest::parse("p.yaml", &yaml).unwrap().objects.remove(0))
            })
            .collect()
    }

    struct Running {
        backend: Recording,
        observed: Observed,
        tx: mpsc::Sender<Change>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Running {
        async fn stop(mut self) {
            let _ = self.stop.take().expect("running").send(());
            self.task.await.unwrap();
        }
    }

    fn start(leading: Option<watch::Receiver<bool>>) -> Running {
        let backend = Recording { started: Some(Instant::now()), ..Recording::default() };
        let config = ControllerConfig::new("t", Vec::new(), None);
        let mut controller = Controller::new(&config, backend.clone(), &["test"]);
        if let Some(l) = leading {
            controller = controller.with_leader(l);
        }
        let observed = controller.observed();
        let (tx, rx) = mpsc::channel(1024);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(controller.run(rx, async move {
            let _ = stopped.await;
        }));
        Running { backend, observed, tx, stop: Some(stop), task }
    }

    async fn send(tx: &mpsc::Sender<Change>, changes: Vec<Change>) {
        for c in changes {
            tx.send(c).await.unwrap();
        }
    }

    fn ready(o: &Observed) -> bool {
        o.health.ready.load(Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_written_before_the_sources_are_synced_and_a_burst_is_one_reconcile() {
        let r = start(None);
        send(&r.tx, pods(100)).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(r.backend.log(), [(0, "lead true".to_string())], "nothing before Synced");
        assert!(!ready(&r.observed));
        send(&r.tx, vec![Change::Synced("test".into())]).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let log = r.backend.log();
        assert_eq!(log.len(), 2, "{log:?}");
        // The burst began 5 s ago, longer than `coalesce_max`: due at once.
        assert_eq!(log[1], (5000, "reconcile 100 pods".to_string()));
        assert!(ready(&r.observed));
        r.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_reconcile_is_an_event_and_is_retried_with_doubling_backoff() {
        let r = start(None);
        *r.backend.failures.lock().unwrap() = 3;
        send(&r.tx, vec![Change::Synced("test".into())]).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let at: Vec<u128> =
            r.backend.log().iter().filter(|(_, w)| w.starts_with("reconcile")).map(|(t, _)| *t).collect();
        // Due at 20 ms, then 200, 400 and 800 ms after each failure.
        assert_eq!(at, [20, 220, 620, 1420]);
        let events = r.observed.events.with_reason(Reason::OvnUnreachable);
        assert_eq!((events.len(), events[0].count, events[0].object.to_string()), (1, 3, "Cluster t".to_string()));
        assert!(ready(&r.observed), "ready once a reconcile succeeded");
        r.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_is_ready_and_writes_nothing_and_a_new_leader_reconciles_at_once() {
        let (lead, leading) = watch::channel(false);
        let r = start(Some(leading));
        send(&r.tx, pods(3)).await;
        send(&r.tx, vec![Change::Synced("test".into())]).await;
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(r.backend.log(), [(0, "lead false".to_string())]);
        assert!(ready(&r.observed), "a follower holding the cluster is ready");
        lead.send(true).unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let log = r.backend.log();
        assert_eq!(log[1..], [(120_000, "lead true".to_string()), (120_000, "reconcile 3 pods".to_string())]);
        r.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_network_is_reconciled_every_resync_and_a_change_within_a_coalesce() {
        let r = start(None);
        send(&r.tx, vec![Change::Synced("test".into())]).await;
        tokio::time::sleep(Duration::from_secs(130)).await;
        send(&r.tx, pods(1)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let at: Vec<u128> =
            r.backend.log().iter().filter(|(_, w)| w.starts_with("reconcile")).map(|(t, _)| *t).collect();
        assert_eq!(at, [20, 60_020, 120_020, 130_020]);
        r.stop().await;
    }
}
