//! Waiting: every dependency that needs the API is watched (a reflector per kind, scoped by
//! namespace and selectors), every change re-decides them all ([`crate::ready`]), and the
//! wait ends the moment all are met at once — or at the timeout, with one line per unmet
//! dependency. Files are looked at every 25 ms (a `stat`); a Service whose endpoints do not
//! accept a connection yet is dialled again every 50 ms. While waiting, the pod says what it
//! waits for (the `stacknet.io/waiting-for` annotation, Events as dependencies are met).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;

use crate::local::{self, Params};
use crate::ready;
use crate::spec::{Dependency, Spec};

/// The annotation that says what the pod still waits for (a JSON list of lines).
pub const WAITING_ANNOTATION: &str = "stacknet.io/waiting-for";
/// How often files are looked at.
const FILE_TICK: Duration = Duration::from_millis(25);
/// How often a Service whose endpoints refuse is dialled again.
const DIAL_TICK: Duration = Duration::from_millis(50);
/// How long one dial may take.
const DIAL_TIMEOUT: Duration = Duration::from_millis(500);

/// How a wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Everything met.
    Met,
    /// The timeout passed: each unmet dependency and why.
    TimedOut(Vec<String>),
}

/// A fatal problem: the wait cannot go on (a template that cannot render).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Fatal(pub String);

/// Where things are, besides the environment.
#[derive(Clone)]
pub struct Options {
    pub timeout: Option<Duration>,
    /// Where ConfigMaps are mounted (`/configmaps`).
    pub configmaps: PathBuf,
    /// The Kubernetes API (`None`: dependencies that need it are refused before waiting).
    pub client: Option<kube::Client>,
}

/// One watch: what it holds, and its last error.
enum Watched {
    Slices(Store<EndpointSlice>),
    DaemonSets(Store<DaemonSet>),
    Pods(Store<Pod>),
    Jobs(Store<Job>),
    Custom(Store<DynamicObject>),
    /// A custom resource kind the API does not serve.
    Unknown(String),
}

struct Watches {
    changed: Arc<Notify>,
    /// Errors the watches hit, by watch.
    errors: Arc<Mutex<BTreeMap<String, String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Watches {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Watches {
    fn spawn<K>(&mut self, id: String, api: Api<K>, config: watcher::Config, dyntype: K::DynamicType) -> Store<K>
    where
        K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
    {
        let writer = reflector::store::Writer::new(dyntype);
        let store = writer.as_reader();
        let (changed, errors) = (self.changed.clone(), self.errors.clone());
        self.tasks.push(tokio::spawn(async move {
            let mut stream = reflector::reflector(writer, watcher(api, config).default_backoff()).boxed();
            while let Some(event) = stream.next().await {
                match event {
                    Ok(_) => {
                        errors.lock().map(|mut e| e.remove(&id)).ok();
                    }
                    Err(e) => {
                        errors.lock().map(|mut m| m.insert(id.clone(), e.to_string())).ok();
                    }
                }
                changed.notify_one();
            }
        }));
        store
    }
}

fn watch_error(errors: &Mutex<BTreeMap<String, String>>, id: &str) -> Option<String> {
    errors.lock().ok().and_then(|e| e.get(id).cloned())
}

/// The watches each dependency reads, and this pod's own.
struct Plan {
    watches: Watches,
    per_dep: Vec<Vec<(String, Watched)>>,
    me: Option<(String, Store<Pod>)>,
}

async fn plan(spec: &Spec, client: kube::Client) -> Plan {
    let mut w = Watches { changed: Arc::new(Notify::new()), errors: Arc::default(), tasks: Vec::new() };
    let by_name = |n: &str| watcher::Config::default().fields(&format!("metadata.name={n}"));
    let labels = |l: &BTreeMap<String, String>| l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let me = spec.pod.as_ref().map(|p| {
        let id = format!("pod {}/{p}", spec.namespace);
        let store = w.spawn(id.clone(), Api::<Pod>::namespaced(client.clone(), &spec.namespace), by_name(p), ());
        (id, store)
    });
    let mut per_dep = Vec::new();
    for d in &spec.dependencies {
        let mut list = Vec::new();
        match d {
            Dependency::Service { namespace, name } => {
                let id = format!("endpointslices of Service {namespace}/{name}");
                let api = Api::<EndpointSlice>::namespaced(client.clone(), namespace);
                let cfg = watcher::Config::default().labels(&format!("kubernetes.io/service-name={name}"));
                list.push((id.clone(), Watched::Slices(w.spawn(id, api, cfg, ()))));
            }
            Dependency::DaemonSet { namespace, name } => {
                let id = format!("DaemonSet {namespace}/{name}");
                let api = Api::<DaemonSet>::namespaced(client.clone(), namespace);
                list.push((id.clone(), Watched::DaemonSets(w.spawn(id, api, by_name(name), ()))));
                let id = format!("pods in {namespace}");
                let api = Api::<Pod>::namespaced(client.clone(), namespace);
                list.push((id.clone(), Watched::Pods(w.spawn(id, api, watcher::Config::default(), ()))));
            }
            Dependency::Pod { namespace, labels: l, .. } => {
                let id = format!("pods in {namespace} with {}", labels(l));
                let api = Api::<Pod>::namespaced(client.clone(), namespace);
                list.push((
                    id.clone(),
                    Watched::Pods(w.spawn(id, api, watcher::Config::default().labels(&labels(l)), ())),
                ));
            }
            Dependency::Job { namespace, name, labels: l } => {
                let api = Api::<Job>::namespaced(client.clone(), namespace);
                let (id, cfg) = match name {
                    Some(n) => (format!("Job {namespace}/{n}"), by_name(n)),
                    None => (
                        format!("Jobs in {namespace} with {}", labels(l)),
                        watcher::Config::default().labels(&labels(l)),
                    ),
                };
                list.push((id.clone(), Watched::Jobs(w.spawn(id, api, cfg, ()))));
            }
            Dependency::CustomResource(c) => list.push(custom(&mut w, &client, c).await),
            Dependency::Container { .. } | Dependency::Config { .. } | Dependency::Socket { .. } => {}
        }
        per_dep.push(list);
    }
    Plan { watches: w, per_dep, me }
}

/// A custom resource's watch, once discovery finds its kind (else why not: the CRD may be
/// installed later, and is looked for again).
async fn custom(w: &mut Watches, client: &kube::Client, c: &crate::spec::CustomResource) -> (String, Watched) {
    let (group, version) = match c.api_version.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), c.api_version.clone()),
    };
    let gvk = GroupVersionKind::gvk(&group, &version, &c.kind);
    let id = format!("{} {}/{}", c.kind, c.namespace, c.name);
    match kube::discovery::pinned_kind(client, &gvk).await {
        Ok((resource, _)) => {
            let api = Api::<DynamicObject>::namespaced_with(client.clone(), &c.namespace, &resource);
            let cfg = watcher::Config::default().fields(&format!("metadata.name={}", c.name));
            (id.clone(), Watched::Custom(w.spawn(id, api, cfg, resource)))
        }
        Err(e) => {
            // A group or kind the API does not serve (yet) is the usual answer: no need for
            // the client's error then.
            let absent = matches!(&e, kube::Error::Api(s) if s.is_not_found())
                || matches!(&e, kube::Error::Discovery(kube::error::DiscoveryError::MissingKind(_)));
            let why = if absent { String::new() } else { format!(": {e}") };
            (id, Watched::Unknown(format!("the API serves no kind {} in {}{why}", c.kind, c.api_version)))
        }
    }
}

/// Looks again for the custom resource kinds discovery did not find.
async fn rediscover(plan: &mut Plan, spec: &Spec, client: &kube::Client) {
    for (i, d) in spec.dependencies.iter().enumerate() {
        let Dependency::CustomResource(c) = d else { continue };
        if matches!(plan.per_dep[i].as_slice(), [(_, Watched::Unknown(_))]) {
            let found = custom(&mut plan.watches, client, c).await;
            plan.per_dep[i] = vec![found];
        }
    }
}

/// What this pod's node is (from its own object).
fn my_node(me: Option<&(String, Store<Pod>)>) -> Option<String> {
    let (_, store) = me?;
    store.state().first().and_then(|p| p.spec.as_ref()?.node_name.clone())
}

/// Dials `addrs` (all at once): the first that accepts, or why none did.
async fn dial(addrs: &[SocketAddr]) -> Result<SocketAddr, String> {
    if addrs.is_empty() {
        return Err("no ready endpoint".into());
    }
    let tries = addrs.iter().map(|a| async move {
        match tokio::time::timeout(DIAL_TIMEOUT, tokio::net::TcpStream::connect(a)).await {
            Ok(Ok(_)) => Ok(*a),
            Ok(Err(e)) => Err(format!("{a}: {e}")),
            Err(_) => Err(format!("{a}: no answer in {DIAL_TIMEOUT:?}")),
        }
    });
    let results = futures::future::join_all(tries).await;
    let mut why = Vec::new();
    for r in results {
        match r {
            Ok(a) => return Ok(a),
            Err(e) => why.push(e),
        }
    }
    Err(format!("{} ready endpoint(s), none accepts a TCP connection ({})", addrs.len(), why.join("; ")))
}

/// Waits for `spec`'s dependencies; `report` is told the unmet lines whenever they change.
pub async fn wait(
    spec: &Spec,
    opts: &Options,
    mut report: impl FnMut(&[(usize, String)]) -> futures::future::BoxFuture<'static, ()>,
) -> Result<Outcome, Fatal> {
    let deadline = opts.timeout.map(|t| Instant::now() + t);
    let needs_api = spec.needs_api();
    let mut plan = match (&opts.client, needs_api) {
        (Some(c), true) => Some(plan(spec, c.clone()).await),
        (None, true) => {
            return Err(Fatal(format!(
                "{} needs the Kubernetes API, and there is none (in-cluster, or KUBECONFIG)",
                spec.dependencies.iter().find(|d| d.needs_api()).map(|d| d.to_string()).unwrap_or_default()
            )));
        }
        _ => None,
    };
    let changed = plan.as_ref().map(|p| p.watches.changed.clone()).unwrap_or_default();
    let params = Params::of_host(spec.interface.as_deref());
    // A Service found answering at these addresses stays met while they are its endpoints.
    let mut answered: BTreeMap<usize, Vec<SocketAddr>> = BTreeMap::new();
    let mut last: Option<Vec<(usize, String)>> = None;
    let mut discovered = Instant::now();
    loop {
        if let (Some(p), Some(client)) = (plan.as_mut(), &opts.client)
            && discovered.elapsed() >= Duration::from_secs(1)
        {
            rediscover(p, spec, client).await;
            discovered = Instant::now();
        }
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let node = plan.as_ref().and_then(|p| my_node(p.me.as_ref()));
        let mut unmet: Vec<(usize, String)> = Vec::new();
        let mut dialling = false;
        for (i, d) in spec.dependencies.iter().enumerate() {
            let verdict = match d {
                Dependency::Socket { path } => local::socket(path),
                Dependency::Config { path } => {
                    local::config(&opts.configmaps, path, &params, spec.interface.as_deref()).map_err(Fatal)?
                }
                _ => {
                    let p = plan.as_ref().expect("planned when the API is needed");
                    let errors = &p.watches.errors;
                    decide(d, &p.per_dep[i], p.me.as_ref(), node.as_deref(), errors, i, &mut answered, &mut dialling)
                        .await
                }
            };
            if let Err(why) = verdict {
                unmet.push((i, why));
            }
        }
        if last.as_ref() != Some(&unmet) {
            report(&unmet).await;
            last = Some(unmet.clone());
        }
        if unmet.is_empty() {
            return Ok(Outcome::Met);
        }
        let local = unmet.iter().any(|(i, _)| !spec.dependencies[*i].needs_api());
        let undiscovered =
            plan.as_ref().is_some_and(|p| p.per_dep.iter().any(|l| matches!(l.as_slice(), [(_, Watched::Unknown(_))])));
        let tick = if dialling {
            DIAL_TICK
        } else if local {
            FILE_TICK
        } else if undiscovered {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        };
        let until = deadline.map_or(tick, |d| d.saturating_duration_since(Instant::now()).min(tick));
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(Outcome::TimedOut(
                unmet.into_iter().map(|(i, why)| format!("{}: {why}", spec.dependencies[i])).collect(),
            ));
        }
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep(until) => {}
        }
    }
}

/// One dependency that needs the API, over what its watches hold.
#[allow(clippy::too_many_arguments)]
async fn decide(
    d: &Dependency,
    watched: &[(String, Watched)],
    me: Option<&(String, Store<Pod>)>,
    node: Option<&str>,
    errors: &Mutex<BTreeMap<String, String>>,
    index: usize,
    answered: &mut BTreeMap<usize, Vec<SocketAddr>>,
    dialling: &mut bool,
) -> ready::Verdict {
    // A watch that fails (forbidden, not served) says so instead of "not there".
    let uses_me = matches!(
        d,
        Dependency::Container { .. } | Dependency::DaemonSet { .. } | Dependency::Pod { same_node: true, .. }
    );
    let mine = me.filter(|_| uses_me).map(|(id, _)| id);
    for id in watched.iter().map(|(id, _)| id).chain(mine) {
        if let Some(e) = watch_error(errors, id) {
            return Err(format!("watching {id}: {e}"));
        }
    }
    let me_pod = me.and_then(|(_, s)| s.state().first().cloned());
    match (d, watched) {
        (Dependency::Service { .. }, [(_, Watched::Slices(s))]) => {
            let slices: Vec<EndpointSlice> = s.state().iter().map(|x| (**x).clone()).collect();
            let addrs = ready::service_addresses(&slices);
            if answered.get(&index).is_some_and(|a| *a == addrs) {
                return Ok(());
            }
            match dial(&addrs).await {
                Ok(_) => {
                    answered.insert(index, addrs);
                    Ok(())
                }
                Err(e) => {
                    answered.remove(&index);
                    *dialling |= !addrs.is_empty();
                    Err(e)
                }
            }
        }
        (Dependency::DaemonSet { .. }, [(_, Watched::DaemonSets(ds)), (_, Watched::Pods(pods))]) => {
            let ds = ds.state().first().cloned();
            let pods: Vec<Pod> = pods.state().iter().map(|p| (**p).clone()).collect();
            ready::daemonset(ds.as_deref(), &pods, node)
        }
        (Dependency::Pod { labels, same_node, .. }, [(_, Watched::Pods(pods))]) => {
            let pods: Vec<Pod> = pods.state().iter().map(|p| (**p).clone()).collect();
            ready::pods(&pods, labels, *same_node, node)
        }
        (Dependency::Container { name }, []) => ready::container(me_pod.as_deref(), name),
        (Dependency::Job { name, labels, .. }, [(_, Watched::Jobs(jobs))]) => {
            let jobs: Vec<Job> = jobs.state().iter().map(|j| (**j).clone()).collect();
            ready::job(&jobs, name.as_deref(), labels)
        }
        (Dependency::CustomResource(c), [(_, Watched::Custom(s))]) => {
            let obj = s.state().first().map(|o| serde_json::to_value(&**o).unwrap_or_default());
            ready::custom_resource(obj.as_ref(), c)
        }
        (Dependency::CustomResource(_), [(_, Watched::Unknown(why))]) => Err(why.clone()),
        _ => Err("not watched (a bug)".into()),
    }
}
