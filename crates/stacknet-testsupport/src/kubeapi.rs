//! A fake Kubernetes API server for tests, speaking the real list/watch protocol over HTTP/1.1
//! on 127.0.0.1: JSON objects each with a `resourceVersion`, lists with label and field
//! selectors, chunked watch streams (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`, `ERROR`, one
//! JSON a line) that follow selectors as the real server does, 410 Gone for compacted
//! resourceVersions, create, replace, merge patch and delete with optimistic concurrency, and
//! resources registered while it runs, as CRDs are installed.
//!
//! [`ApiServer::start`] serves the common built-in resources; [`ApiServer::register`] adds a
//! custom one (until then its paths answer 404, as an uninstalled CRD's do). A test sets the
//! cluster's state with [`ApiServer::apply`] and [`ApiServer::delete`], and reads what clients
//! did in the logs: [`ApiServer::events`], [`ApiServer::patches`], [`ApiServer::lists`],
//! [`ApiServer::watches`], [`ApiServer::bookmarks`]. A `kube::Client` is made from its URL:
//! `kube::Client::try_from(kube::Config::new(server.url().parse().unwrap()))`.
//!
//! What it answers, on `/api/v1/...` and `/apis/{group}/{version}/...`, for a collection
//! (`{plural}`, `namespaces/{ns}/{plural}`) or an object (`[namespaces/{ns}/]{plural}/{name}`,
//! and its `/status`):
//!
//! - GET an object (404 if absent); GET a collection: a `{Kind}List` at the current
//!   resourceVersion, filtered by `labelSelector` (`a=b`, `a==b`, `a!=b`, `a`, `!a`,
//!   `a in (b,c)`, `a notin (b,c)`) and `fieldSelector` (`path=value`, `path!=value` on any
//!   dotted path: `metadata.name`, `metadata.namespace`, `spec.nodeName`, ...);
//! - a watch (`watch=true`) from `resourceVersion` (absent or `0`: the objects there first, as
//!   ADDED), with the same selectors; `allowWatchBookmarks`, `sendInitialEvents` and
//!   `timeoutSeconds` as the real server takes them;
//! - POST a new object (201; 409 AlreadyExists; `generateName`; a uid and creationTimestamp if
//!   none are given); PUT over one (409 Conflict if a `metadata.resourceVersion` is given and
//!   stale, unconditional without one; 404 if absent; the status subresource takes only the
//!   status); PATCH `application/merge-patch+json` (RFC 7386, see [`merge_patch`]; the status
//!   subresource takes only the status; 409 on a stale `metadata.resourceVersion`); DELETE (200
//!   with the object's last state; 409 on failed preconditions). A write that changes nothing
//!   keeps the resourceVersion, as on the real server.
//! - discovery (`/api`, `/apis`, `/api/v1`, `/apis/{group}/{version}`) and `/version`.
//!
//! Errors are Kubernetes `Status` objects (400, 404, 405, 409, 410, 413, 415, 422). A connection
//! carries any number of requests (`Content-Length` or chunked bodies) until a watch, which it
//! carries alone to the end.
//!
//! Left out: admission (a namespace need not exist to hold objects), finalizers and graceful
//! deletion, defaulting and validation beyond the shape of `metadata`, patches other than merge
//! patches (415), pagination (`limit` is ignored: one page holds everything), deleting
//! collections, and protobuf.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// The resources [`ApiServer::start`] serves: (apiVersion, plural, kind, namespaced).
pub const BUILT_INS: [(&str, &str, &str, bool); 14] = [
    ("v1", "namespaces", "Namespace", false),
    ("v1", "nodes", "Node", false),
    ("v1", "pods", "Pod", true),
    ("v1", "services", "Service", true),
    ("v1", "endpoints", "Endpoints", true),
    ("v1", "events", "Event", true),
    ("v1", "configmaps", "ConfigMap", true),
    ("discovery.k8s.io/v1", "endpointslices", "EndpointSlice", true),
    ("networking.k8s.io/v1", "networkpolicies", "NetworkPolicy", true),
    ("apps/v1", "daemonsets", "DaemonSet", true),
    ("apps/v1", "deployments", "Deployment", true),
    ("batch/v1", "jobs", "Job", true),
    ("events.k8s.io/v1", "events", "Event", true),
    ("coordination.k8s.io/v1", "leases", "Lease", true),
];

/// The resources whose creations also go to the events log.
const EVENT_RESOURCES: [&str; 2] = ["v1/events", "events.k8s.io/v1/events"];
/// The resource [`ApiServer::leases`] reads.
const LEASES: &str = "coordination.k8s.io/v1/leases";
/// The longest request line or header line.
const MAX_LINE: u64 = 64 * 1024;
/// The most headers a request may have.
const MAX_HEADERS: usize = 256;
/// The largest request body.
const MAX_BODY: usize = 64 * 1024 * 1024;
/// The annotation of the bookmark that ends a watch's initial events (`sendInitialEvents`).
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// A fake Kubernetes API server, listening on 127.0.0.1 until the runtime that started it ends.
/// Clones share the one server.
#[derive(Clone)]
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    url: String,
}

/// What the connections and the test share.
struct Shared {
    store: Mutex<Store>,
    /// Bumped on every change a watch may have to act on (an object, a bookmark, a drop).
    changes: watch::Sender<u64>,
}

/// A list or a watch request, as the server received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRequest {
    /// `{apiVersion}/{plural}`: `v1/pods`, `apps/v1/deployments`.
    pub resource: String,
    /// The namespace of the path; `None` for a request across namespaces or of a cluster-scoped
    /// resource.
    pub namespace: Option<String>,
    /// The `resourceVersion` asked for; `None` when absent or empty.
    pub resource_version: Option<u64>,
    /// `labelSelector`, decoded.
    pub label_selector: Option<String>,
    /// `fieldSelector`, decoded.
    pub field_selector: Option<String>,
}

/// A kind of object served.
#[derive(Clone, Debug)]
struct Resource {
    api_version: String,
    plural: String,
    kind: String,
    namespaced: bool,
}

impl Resource {
    /// `{apiVersion}/{plural}`: how objects, changes and logs name it.
    fn key(&self) -> String {
        format!("{}/{}", self.api_version, self.plural)
    }

    /// The API group; empty for the core group.
    fn group(&self) -> &str {
        self.api_version.split_once('/').map_or("", |(group, _)| group)
    }

    /// `pods`, `deployments.apps`: as the real server's messages name it.
    fn qualified(&self) -> String {
        match self.group() {
            "" => self.plural.clone(),
            group => format!("{}.{group}", self.plural),
        }
    }

    /// 404 for object `name`.
    fn not_found(&self, name: &str) -> Reply {
        self.about(name, failure(404, "NotFound", format!("{} \"{name}\" not found", self.qualified())))
    }

    /// 409 for creating `name` again.
    fn already_exists(&self, name: &str) -> Reply {
        self.about(name, failure(409, "AlreadyExists", format!("{} \"{name}\" already exists", self.qualified())))
    }

    /// 409 for writing `name` from a stale version.
    fn conflict(&self, name: &str, why: &str) -> Reply {
        let message = format!("Operation cannot be fulfilled on {} \"{name}\": {why}", self.qualified());
        self.about(name, failure(409, "Conflict", message))
    }

    /// `reply` with the details naming the object.
    fn about(&self, name: &str, mut reply: Reply) -> Reply {
        if let Some(body) = reply.body.as_object_mut() {
            body.insert("details".into(), json!({"name": name, "group": self.group(), "kind": self.plural}));
        }
        reply
    }
}

/// (resource key, namespace or "" for cluster-scoped, name).
type ObjectKey = (String, String, String);

/// One change of an object, as watches replay it.
struct Change {
    rv: u64,
    resource: String,
    deleted: bool,
    /// The object after the change (for a deletion: the last state, with the deletion's
    /// resourceVersion).
    object: Value,
    /// The object before the change.
    previous: Option<Value>,
}

impl Change {
    /// The watch event that a watch with `filter` sees, if any: as the real API server's watch
    /// cache does, an object that starts matching is ADDED, one that stops is DELETED (its
    /// previous state at this change's resourceVersion).
    fn as_seen_by(&self, filter: &Filter) -> Option<Value> {
        let now = !self.deleted && filter.matches(&self.object);
        let before = self.previous.as_ref().is_some_and(|p| filter.matches(p));
        let (kind, object) = match (now, before) {
            (true, false) => ("ADDED", self.object.clone()),
            (true, true) => ("MODIFIED", self.object.clone()),
            (false, true) => {
                let mut object = self.previous.clone()?;
                set_meta(&mut object, "resourceVersion", json!(self.rv.to_string()));
                ("DELETED", object)
            }
            (false, false) => return None,
        };
        Some(json!({"type": kind, "object": object}))
    }
}

/// The cluster's state and what the clients did.
#[derive(Default)]
struct Store {
    /// By [`Resource::key`].
    resources: BTreeMap<String, Resource>,
    /// The current resourceVersion.
    rv: u64,
    /// Watches from before this resourceVersion get 410 Gone.
    compacted: u64,
    /// For uids and generated names.
    serial: u64,
    objects: BTreeMap<ObjectKey, Value>,
    /// Every change since the compaction, in resourceVersion order.
    log: Vec<Change>,
    /// How many times the watches were dropped.
    drops: u64,
    /// How many bookmarks were asked for.
    bookmark_requests: u64,
    lists: Vec<LoggedRequest>,
    watches: Vec<LoggedRequest>,
    bookmarks: Vec<(String, u64)>,
    events: Vec<Value>,
    patches: Vec<String>,
}

impl Store {
    fn resource(&self, api_version: &str, plural: &str) -> Option<&Resource> {
        self.resources.get(&format!("{api_version}/{plural}"))
    }

    fn resource_of_kind(&self, api_version: &str, kind: &str) -> Option<&Resource> {
        self.resources.values().find(|r| r.api_version == api_version && r.kind == kind)
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Stores `object` (created or replaced) at a new resourceVersion, for the watches too;
    /// returns it as stored.
    fn put(&mut self, resource: &str, namespace: &str, name: &str, mut object: Value) -> Value {
        let rv = self.next_rv();
        set_meta(&mut object, "resourceVersion", json!(rv.to_string()));
        let key = (resource.to_string(), namespace.to_string(), name.to_string());
        let previous = self.objects.insert(key, object.clone());
        self.log.push(Change { rv, resource: resource.to_string(), deleted: false, object: object.clone(), previous });
        object
    }

    /// Deletes an object at a new resourceVersion, for the watches too; returns its last state
    /// at that resourceVersion.
    fn take(&mut self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let previous = self.objects.remove(&(resource.to_string(), namespace.to_string(), name.to_string()))?;
        let rv = self.next_rv();
        let mut object = previous.clone();
        set_meta(&mut object, "resourceVersion", json!(rv.to_string()));
        let change = Change {
            rv,
            resource: resource.to_string(),
            deleted: true,
            object: object.clone(),
            previous: Some(previous),
        };
        self.log.push(change);
        Some(object)
    }

    /// Gives `object` the uid and creationTimestamp it lacks: `existing`'s, else new ones.
    fn fill_system_fields(&mut self, object: &mut Value, existing: Option<&Value>) {
        for field in ["uid", "creationTimestamp"] {
            if meta(object, field).is_some_and(|v| !v.is_empty()) {
                continue;
            }
            let value = match existing.and_then(|e| meta(e, field)) {
                Some(v) => v.to_string(),
                None if field == "uid" => {
                    self.serial += 1;
                    format!("5eed0000-0000-4000-8000-{:012x}", self.serial)
                }
                None => now_rfc3339(),
            };
            set_meta(object, field, json!(value));
        }
    }

    /// `prefix` and five characters, as the real server's generateName gives: a name not yet
    /// taken, or `None` after many tries.
    fn generated_name(&mut self, resource: &str, namespace: &str, prefix: &str) -> Option<String> {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        for _ in 0..64 {
            self.serial += 1;
            let mut n = self.serial.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20;
            let suffix: String = (0..5)
                .map(|_| {
                    let c = ALPHABET[(n % ALPHABET.len() as u64) as usize];
                    n /= ALPHABET.len() as u64;
                    char::from(c)
                })
                .collect();
            let name = format!("{prefix}{suffix}");
            if !self.objects.contains_key(&(resource.to_string(), namespace.to_string(), name.clone())) {
                return Some(name);
            }
        }
        None
    }
}

impl ApiServer {
    /// Starts a server on a free port of 127.0.0.1 serving [`BUILT_INS`]; it runs until the
    /// runtime ends.
    ///
    /// # Panics
    ///
    /// If no port can be bound.
    pub async fn start() -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port on 127.0.0.1");
        let addr = listener.local_addr().expect("the listener's address");
        let shared = Shared { store: Mutex::default(), changes: watch::channel(0).0 };
        let server = ApiServer { shared: Arc::new(shared), addr, url: format!("http://{addr}") };
        for (api_version, plural, kind, namespaced) in BUILT_INS {
            server.register(api_version, plural, kind, namespaced);
        }
        let accepting = server.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((conn, _)) => {
                        tokio::spawn(accepting.clone().serve(conn));
                    }
                    // Out of descriptors, say: try again shortly.
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        });
        server
    }

    /// Serves resource `plural` of `api_version` (`v1`, `apps/v1`, `example.com/v1alpha1`)
    /// holding objects of `kind`, in namespaces or cluster-scoped: as installing a CRD does.
    /// Registering it again changes its kind and scope.
    pub fn register(&self, api_version: &str, plural: &str, kind: &str, namespaced: bool) {
        let resource = Resource {
            api_version: api_version.to_string(),
            plural: plural.to_string(),
            kind: kind.to_string(),
            namespaced,
        };
        self.store().resources.insert(resource.key(), resource);
    }

    /// `http://127.0.0.1:{port}`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Writes `dir/kubeconfig` pointing at this server (no credentials; `namespace` as the
    /// context's default) for a program run as a process (`KUBECONFIG`); returns its path.
    ///
    /// # Errors
    ///
    /// If the file cannot be written.
    pub fn kubeconfig(&self, dir: &std::path::Path, namespace: Option<&str>) -> std::io::Result<std::path::PathBuf> {
        let path = dir.join("kubeconfig");
        let ns = namespace.map(|n| format!(", namespace: {n}")).unwrap_or_default();
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: t, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: t, user: {{}}}}]\ncontexts: [{{name: t, context: {{cluster: t, user: t{ns}}}}}]\n\
             current-context: t\n",
            self.url
        );
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The current resourceVersion (of the last change, bookmark or compaction).
    pub fn resource_version(&self) -> u64 {
        self.store().rv
    }

    /// Creates or replaces `object`, found by its `apiVersion` and `kind`, at a new
    /// resourceVersion (always, even when nothing changed), as ADDED or MODIFIED for the
    /// watches; returns it as stored. A namespaced object without a namespace goes to
    /// `default`; a missing uid or creationTimestamp is kept from the object replaced, else
    /// made up.
    ///
    /// # Panics
    ///
    /// If `object` has no `apiVersion`, `kind` or `metadata.name`, or its kind is not
    /// registered.
    pub fn apply(&self, mut object: Value) -> Value {
        let api_version = object["apiVersion"].as_str().expect("the object's apiVersion").to_string();
        let kind = object["kind"].as_str().expect("the object's kind").to_string();
        let name = meta(&object, "name").expect("the object's metadata.name").to_string();
        let mut st = self.store();
        let resource = st
            .resource_of_kind(&api_version, &kind)
            .unwrap_or_else(|| panic!("no resource of kind {kind} in {api_version} is registered"))
            .clone();
        let namespace = if resource.namespaced {
            let namespace = meta(&object, "namespace").filter(|ns| !ns.is_empty()).unwrap_or("default").to_string();
            set_meta(&mut object, "namespace", json!(namespace));
            namespace
        } else {
            remove_meta(&mut object, "namespace");
            String::new()
        };
        let key = resource.key();
        let existing = st.objects.get(&(key.clone(), namespace.clone(), name.clone())).cloned();
        st.fill_system_fields(&mut object, existing.as_ref());
        let stored = st.put(&key, &namespace, &name, object);
        drop(st);
        self.notify();
        stored
    }

    /// The object `name` of resource `plural` in `api_version`, in `namespace` ("" for a
    /// cluster-scoped one).
    pub fn get(&self, api_version: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (format!("{api_version}/{plural}"), namespace.to_string(), name.to_string());
        self.store().objects.get(&key).cloned()
    }

    /// Every object of resource `plural` in `api_version`, by namespace and name.
    pub fn objects(&self, api_version: &str, plural: &str) -> Vec<Value> {
        let resource = format!("{api_version}/{plural}");
        self.store().objects.iter().filter(|((r, _, _), _)| *r == resource).map(|(_, o)| o.clone()).collect()
    }

    /// Deletes an object (as [`ApiServer::get`] names it) at a new resourceVersion, as DELETED
    /// for the watches; returns its last state, `None` if there was no such object.
    pub fn delete(&self, api_version: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let deleted = self.store().take(&format!("{api_version}/{plural}"), namespace, name);
        self.notify();
        deleted
    }

    /// Deletes an object without telling the watches, and forgets history in the same step:
    /// no watch can stream the deletion, and every watch (open or resumed) from an older
    /// resourceVersion gets 410 Gone, so only a relist shows the object gone. Compacts even
    /// when there was no such object; returns what was deleted.
    pub fn delete_and_compact(&self, api_version: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let deleted = {
            let mut st = self.store();
            let key = (format!("{api_version}/{plural}"), namespace.to_string(), name.to_string());
            let deleted = st.objects.remove(&key);
            st.compacted = st.next_rv();
            st.log.clear();
            deleted
        };
        self.notify();
        deleted
    }

    /// Closes every open watch stream, as a dropped connection does.
    pub fn drop_watches(&self) {
        self.store().drops += 1;
        self.notify();
    }

    /// Moves the resourceVersion on and has every open watch that allows bookmarks
    /// (`allowWatchBookmarks=true`) write a BOOKMARK at the then current resourceVersion (at
    /// least the one returned); each one written is logged ([`ApiServer::bookmarks`]).
    pub fn bookmark(&self) -> u64 {
        let rv = {
            let mut st = self.store();
            st.bookmark_requests += 1;
            st.next_rv()
        };
        self.notify();
        rv
    }

    /// The Events created through the API (either `v1` or `events.k8s.io/v1`), in order, as
    /// stored.
    pub fn events(&self) -> Vec<Value> {
        self.store().events.clone()
    }

    /// Every PATCH received, in order, whether it succeeded or not: `{plural} {namespace}/{name}`
    /// (`{plural} {name}` for a cluster-scoped object), prefixed `status:` for the status
    /// subresource: `pods shop/a`, `status:services shop/front`.
    pub fn patches(&self) -> Vec<String> {
        self.store().patches.clone()
    }

    /// Every list request, in order.
    pub fn lists(&self) -> Vec<LoggedRequest> {
        self.store().lists.clone()
    }

    /// Every watch request, in order.
    pub fn watches(&self) -> Vec<LoggedRequest> {
        self.store().watches.clone()
    }

    /// (resource as in [`LoggedRequest::resource`], resourceVersion) of every BOOKMARK written
    /// to a watch stream, once written.
    pub fn bookmarks(&self) -> Vec<(String, u64)> {
        self.store().bookmarks.clone()
    }

    /// The coordination.k8s.io Leases, by `namespace/name`.
    pub fn leases(&self) -> BTreeMap<String, Value> {
        let st = self.store();
        st.objects
            .iter()
            .filter(|((r, _, _), _)| r == LEASES)
            .map(|((_, ns, name), o)| (format!("{ns}/{name}"), o.clone()))
            .collect()
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.shared.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the watches.
    fn notify(&self) {
        self.shared.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Answers the requests of one connection until it closes or turns into a watch stream.
    async fn serve(self, conn: TcpStream) {
        let _ = conn.set_nodelay(true);
        let (read, mut write) = conn.into_split();
        let mut read = BufReader::new(read);
        loop {
            let request = match read_request(&mut read).await {
                Ok(request) => request,
                Err(ReadError::Closed) => return,
                Err(ReadError::Bad(reply)) => {
                    let _ = write_reply(&mut write, &reply, true).await;
                    return;
                }
            };
            match self.handle(&request) {
                Outcome::Reply(reply) => {
                    if write_reply(&mut write, &reply, request.close).await.is_err() || request.close {
                        return;
                    }
                }
                Outcome::Watch(spec) => {
                    self.watch(&mut read, &mut write, *spec).await;
                    return;
                }
            }
        }
    }

    fn handle(&self, request: &Request) -> Outcome {
        let target = match self.route(&request.segments) {
            Ok(Route::Fixed(body)) if request.method == "GET" => return Outcome::Reply(Reply { code: 200, body }),
            Ok(Route::Fixed(_)) => return Outcome::Reply(method_not_allowed()),
            Ok(Route::Object(target)) => target,
            Err(reply) => return Outcome::Reply(reply),
        };
        let reply = match (request.method.as_str(), &target.name) {
            ("GET", _) if matches!(request.query.get("watch").map(String::as_str), Some("true" | "1")) => {
                return match self.watch_spec(&target, &request.query) {
                    Ok(spec) => Outcome::Watch(Box::new(spec)),
                    Err(reply) => Outcome::Reply(reply),
                };
            }
            ("GET", None) => self.list(&target, &request.query),
            ("GET", Some(name)) => self.get_one(&target, name),
            ("POST", None) => self.create(&target, &request.body),
            ("PUT", Some(name)) => self.replace(&target, name, &request.body),
            ("PATCH", Some(name)) => self.patch(&target, name, request),
            ("DELETE", Some(name)) if !target.status => self.delete_one(&target, name, &request.body),
            _ => method_not_allowed(),
        };
        Outcome::Reply(reply)
    }

    /// What a path names: a resource's objects, or a discovery document.
    fn route(&self, segments: &[String]) -> Result<Route, Reply> {
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let st = self.store();
        let (api_version, rest) = match segments.as_slice() {
            ["version"] => return Ok(Route::Fixed(version_info())),
            ["api"] => {
                let address = self.addr.to_string();
                return Ok(Route::Fixed(json!({"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}]})));
            }
            ["apis"] => return Ok(Route::Fixed(group_list(&st.resources, None))),
            ["apis", group] => {
                let list = group_list(&st.resources, Some(group));
                return match list["groups"].get(0) {
                    Some(group) => {
                        let mut group = group.clone();
                        if let Some(g) = group.as_object_mut() {
                            g.insert("kind".into(), json!("APIGroup"));
                            g.insert("apiVersion".into(), json!("v1"));
                        }
                        Ok(Route::Fixed(group))
                    }
                    None => Err(no_such_resource()),
                };
            }
            ["api", version] => return resource_list(&st.resources, version).map(Route::Fixed),
            ["apis", group, version] => {
                return resource_list(&st.resources, &format!("{group}/{version}")).map(Route::Fixed);
            }
            ["api", version, rest @ ..] => (version.to_string(), rest),
            ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
            _ => return Err(no_such_resource()),
        };
        let (namespace, plural, tail) = match rest {
            ["namespaces", namespace, plural, tail @ ..] if !matches!(*plural, "status" | "finalize") => {
                (Some(namespace.to_string()), *plural, tail)
            }
            [plural, tail @ ..] => (None, *plural, tail),
            [] => return Err(no_such_resource()),
        };
        let (name, status) = match tail {
            [] => (None, false),
            [name] => (Some(name.to_string()), false),
            [name, "status"] => (Some(name.to_string()), true),
            _ => return Err(no_such_resource()),
        };
        let Some(resource) = st.resource(&api_version, plural) else { return Err(no_such_resource()) };
        let scoped_right = match (&namespace, &name) {
            (Some(_), _) => resource.namespaced,
            (None, Some(_)) => !resource.namespaced,
            (None, None) => true,
        };
        if !scoped_right {
            return Err(no_such_resource());
        }
        Ok(Route::Object(Target { resource: resource.clone(), namespace, name, status }))
    }

    fn get_one(&self, target: &Target, name: &str) -> Reply {
        let key = target.key(name);
        match self.store().objects.get(&key) {
            Some(object) => Reply { code: 200, body: object.clone() },
            None => target.resource.not_found(name),
        }
    }

    fn list(&self, target: &Target, query: &Query) -> Reply {
        let (filter, logged) = match read_query(target, query) {
            Ok(read) => read,
            Err(reply) => return reply,
        };
        let mut st = self.store();
        st.lists.push(logged);
        let resource = target.resource.key();
        let items: Vec<Value> = st
            .objects
            .iter()
            .filter(|((r, _, _), o)| *r == resource && filter.matches(o))
            .map(|(_, o)| o.clone())
            .collect();
        let body = json!({"kind": format!("{}List", target.resource.kind), "apiVersion": target.resource.api_version,
            "metadata": {"resourceVersion": st.rv.to_string()}, "items": items});
        Reply { code: 200, body }
    }

    fn create(&self, target: &Target, body: &[u8]) -> Reply {
        let resource = &target.resource;
        if resource.namespaced && target.namespace.is_none() {
            return method_not_allowed();
        }
        let mut object = match parse_object(body, resource) {
            Ok(object) => object,
            Err(reply) => return reply,
        };
        let namespace = target.namespace.clone().unwrap_or_default();
        if let Err(reply) = place_in(&mut object, target, &namespace) {
            return reply;
        }
        let key = resource.key();
        let mut st = self.store();
        let name = match (meta(&object, "name").filter(|n| !n.is_empty()), meta(&object, "generateName")) {
            (Some(name), _) => name.to_string(),
            (None, Some(prefix)) if !prefix.is_empty() => {
                let prefix = prefix.to_string();
                match st.generated_name(&key, &namespace, &prefix) {
                    Some(name) => name,
                    None => return resource.already_exists(&prefix),
                }
            }
            _ => return invalid("metadata.name: Required value: name or generateName is required"),
        };
        if st.objects.contains_key(&(key.clone(), namespace.clone(), name.clone())) {
            return resource.already_exists(&name);
        }
        set_meta(&mut object, "name", json!(name));
        st.fill_system_fields(&mut object, None);
        let stored = st.put(&key, &namespace, &name, object);
        if EVENT_RESOURCES.contains(&key.as_str()) {
            st.events.push(stored.clone());
        }
        drop(st);
        self.notify();
        Reply { code: 201, body: stored }
    }

    fn replace(&self, target: &Target, name: &str, body: &[u8]) -> Reply {
        let resource = &target.resource;
        let mut object = match parse_object(body, resource) {
            Ok(object) => object,
            Err(reply) => return reply,
        };
        if meta(&object, "name").is_some_and(|n| !n.is_empty() && n != name) {
            return bad_request(format!("the name of the object does not match the name on the URL ({name})"));
        }
        let namespace = target.namespace.clone().unwrap_or_default();
        if let Err(reply) = place_in(&mut object, target, &namespace) {
            return reply;
        }
        let key = target.key(name);
        let mut st = self.store();
        let Some(existing) = st.objects.get(&key).cloned() else { return resource.not_found(name) };
        if let Some(rv) = meta(&object, "resourceVersion").filter(|rv| !rv.is_empty())
            && Some(rv) != meta(&existing, "resourceVersion")
        {
            return resource.conflict(name, STALE);
        }
        let mut new = if target.status {
            let mut new = existing.clone();
            if let Some(fields) = new.as_object_mut() {
                match object.get("status") {
                    Some(status) => fields.insert("status".into(), status.clone()),
                    None => fields.remove("status"),
                };
            }
            new
        } else {
            object
        };
        keep_identity(&existing, &mut new);
        if new == existing {
            return Reply { code: 200, body: existing };
        }
        let stored = st.put(&key.0, &key.1, &key.2, new);
        drop(st);
        self.notify();
        Reply { code: 200, body: stored }
    }

    fn patch(&self, target: &Target, name: &str, request: &Request) -> Reply {
        let resource = &target.resource;
        let namespace = target.namespace.clone().unwrap_or_default();
        let what = if namespace.is_empty() { name.to_string() } else { format!("{namespace}/{name}") };
        let status = if target.status { "status:" } else { "" };
        self.store().patches.push(format!("{status}{} {what}", resource.plural));
        let content_type = request.headers.get("content-type").map(String::as_str).unwrap_or("");
        let media = content_type.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/merge-patch+json") {
            let message = format!("the media type {media:?} is not supported: only application/merge-patch+json is");
            return failure(415, "UnsupportedMediaType", message);
        }
        let patch: Value = match serde_json::from_slice(&request.body) {
            Ok(patch @ Value::Object(_)) => patch,
            Ok(_) => return bad_request("a merge patch must be a JSON object"),
            Err(e) => return bad_request(format!("the body is not JSON: {e}")),
        };
        let key = target.key(name);
        let mut st = self.store();
        let Some(existing) = st.objects.get(&key).cloned() else { return resource.not_found(name) };
        if let Some(rv) = patch.get("metadata").and_then(|m| m.get("resourceVersion")).and_then(Value::as_str)
            && Some(rv) != meta(&existing, "resourceVersion")
        {
            return resource.conflict(name, STALE);
        }
        let mut new = existing.clone();
        if target.status {
            if let Some(status) = patch.get("status") {
                merge_patch(&mut new, &json!({"status": status}));
            }
        } else {
            merge_patch(&mut new, &patch);
        }
        if let Err(why) = check_object(&new) {
            return bad_request(why);
        }
        keep_identity(&existing, &mut new);
        if new == existing {
            return Reply { code: 200, body: existing };
        }
        let stored = st.put(&key.0, &key.1, &key.2, new);
        drop(st);
        self.notify();
        Reply { code: 200, body: stored }
    }

    fn delete_one(&self, target: &Target, name: &str, body: &[u8]) -> Reply {
        let resource = &target.resource;
        let options: Value = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            match serde_json::from_slice(body) {
                Ok(options) => options,
                Err(e) => return bad_request(format!("the body is not JSON: {e}")),
            }
        };
        let key = target.key(name);
        let mut st = self.store();
        let Some(existing) = st.objects.get(&key) else { return resource.not_found(name) };
        for field in ["resourceVersion", "uid"] {
            if let Some(wanted) = options["preconditions"][field].as_str()
                && Some(wanted) != meta(existing, field)
            {
                let why = format!("precondition failed: {field} {wanted}, the object's {:?}", meta(existing, field));
                return resource.conflict(name, &why);
            }
        }
        let deleted = st.take(&key.0, &key.1, &key.2);
        drop(st);
        self.notify();
        match deleted {
            Some(object) => Reply { code: 200, body: object },
            None => resource.not_found(name),
        }
    }

    fn watch_spec(&self, target: &Target, query: &Query) -> Result<WatchSpec, Reply> {
        let (filter, logged) = read_query(target, query)?;
        let timeout = match query.get("timeoutSeconds").map(String::as_str) {
            None | Some("") => None,
            Some(secs) => Some(Duration::from_secs(
                secs.parse().map_err(|_| bad_request(format!("invalid timeoutSeconds {secs:?}")))?,
            )),
        };
        let flag = |name: &str| query.get(name).is_some_and(|v| v == "true" || v == "1");
        Ok(WatchSpec {
            resource: target.resource.clone(),
            from: logged.resource_version,
            logged,
            filter,
            initial_events: flag("sendInitialEvents"),
            bookmarks: flag("allowWatchBookmarks"),
            timeout,
        })
    }

    /// Streams the changes `spec` asks for until the watches are dropped, the client goes, the
    /// timeout passes (a clean end) or its resourceVersion is compacted (410 Gone).
    async fn watch(&self, read: &mut BufReader<OwnedReadHalf>, write: &mut OwnedWriteHalf, spec: WatchSpec) {
        let mut changes = self.shared.changes.subscribe();
        changes.borrow_and_update();
        let key = spec.resource.key();
        let from_now = spec.initial_events || spec.from.is_none_or(|rv| rv == 0);
        let (initial, mut sent, compacted, drops, mut bookmarks_seen) = {
            let mut st = self.store();
            st.watches.push(spec.logged.clone());
            let initial: Vec<Value> = if from_now {
                st.objects
                    .iter()
                    .filter(|((r, _, _), o)| *r == key && spec.filter.matches(o))
                    .map(|(_, o)| json!({"type": "ADDED", "object": o}))
                    .collect()
            } else {
                Vec::new()
            };
            let sent = if from_now { st.rv } else { spec.from.unwrap_or(0) };
            (initial, sent, st.compacted, st.drops, st.bookmark_requests)
        };
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        if write.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        if sent < compacted {
            let _ = write_event(write, &expired(sent, compacted)).await;
            let _ = write.write_all(b"0\r\n\r\n").await;
            return;
        }
        for event in &initial {
            if write_event(write, event).await.is_err() {
                return;
            }
        }
        if spec.initial_events {
            let end = bookmark_event(&spec.resource, sent, true);
            if write_event(write, &end).await.is_err() {
                return;
            }
        }
        let deadline = spec.timeout.map(|t| Instant::now() + t);
        let mut scratch = [0u8; 512];
        loop {
            changes.borrow_and_update();
            let step = {
                let st = self.store();
                if st.drops != drops {
                    return;
                }
                if sent < st.compacted {
                    Step::Gone(st.compacted)
                } else {
                    let start = st.log.partition_point(|c| c.rv <= sent);
                    let events = st.log[start..]
                        .iter()
                        .filter(|c| c.resource == key)
                        .filter_map(|c| c.as_seen_by(&spec.filter))
                        .collect();
                    Step::Send { events, bookmark_requests: st.bookmark_requests, now: st.rv }
                }
            };
            match step {
                Step::Gone(compacted) => {
                    let _ = write_event(write, &expired(sent, compacted)).await;
                    let _ = write.write_all(b"0\r\n\r\n").await;
                    return;
                }
                Step::Send { events, bookmark_requests, now } => {
                    for event in &events {
                        if write_event(write, event).await.is_err() {
                            return;
                        }
                    }
                    sent = sent.max(now);
                    if bookmark_requests != bookmarks_seen {
                        bookmarks_seen = bookmark_requests;
                        if spec.bookmarks {
                            if write_event(write, &bookmark_event(&spec.resource, sent, false)).await.is_err() {
                                return;
                            }
                            self.store().bookmarks.push((key.clone(), sent));
                        }
                    }
                }
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = sleep_until(deadline) => {
                    let _ = write.write_all(b"0\r\n\r\n").await;
                    return;
                }
                n = read.read(&mut scratch) => {
                    // The client closed its side (or broke the connection): nobody is reading.
                    if !matches!(n, Ok(n) if n > 0) {
                        return;
                    }
                }
            }
        }
    }
}

/// The reason of a 409 for a stale resourceVersion, as the real server words it.
const STALE: &str = "the object has been modified; please apply your changes to the latest version and try again";

/// A watch's next step.
enum Step {
    Gone(u64),
    Send { events: Vec<Value>, bookmark_requests: u64, now: u64 },
}

/// What a request asks for.
enum Route {
    /// A document of its own (discovery, version).
    Fixed(Value),
    Object(Target),
}

/// A resource's objects, in a namespace or all, or one of them (or its status).
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

impl Target {
    fn key(&self, name: &str) -> ObjectKey {
        (self.resource.key(), self.namespace.clone().unwrap_or_default(), name.to_string())
    }
}

/// What to answer.
enum Outcome {
    Reply(Reply),
    Watch(Box<WatchSpec>),
}

/// A status code and a JSON body.
struct Reply {
    code: u16,
    body: Value,
}

/// A watch request, checked.
struct WatchSpec {
    resource: Resource,
    filter: Filter,
    from: Option<u64>,
    logged: LoggedRequest,
    initial_events: bool,
    bookmarks: bool,
    timeout: Option<Duration>,
}

/// Which objects a list or a watch sees.
struct Filter {
    namespace: Option<String>,
    name: Option<String>,
    labels: Vec<LabelTerm>,
    fields: Vec<FieldTerm>,
}

impl Filter {
    fn matches(&self, object: &Value) -> bool {
        let labels = object.get("metadata").and_then(|m| m.get("labels")).and_then(Value::as_object);
        self.namespace.as_deref().is_none_or(|ns| meta(object, "namespace").unwrap_or("") == ns)
            && self.name.as_deref().is_none_or(|name| meta(object, "name") == Some(name))
            && self.labels.iter().all(|t| t.matches(labels))
            && self.fields.iter().all(|t| (field_value(object, &t.path) == t.value) == t.equal)
    }
}

/// One requirement of a label selector.
#[derive(Debug, PartialEq)]
enum LabelTerm {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl LabelTerm {
    fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        match self {
            LabelTerm::Equals(key, value) => label(key) == Some(value.as_str()),
            LabelTerm::NotEquals(key, value) => label(key) != Some(value.as_str()),
            LabelTerm::Exists(key) => label(key).is_some(),
            LabelTerm::Absent(key) => label(key).is_none(),
            LabelTerm::In(key, values) => label(key).is_some_and(|l| values.iter().any(|v| v == l)),
            LabelTerm::NotIn(key, values) => label(key).is_none_or(|l| values.iter().all(|v| v != l)),
        }
    }
}

/// One requirement of a field selector: the field at a dotted path (missing: "") equals the
/// value, or does not.
#[derive(Debug, PartialEq)]
struct FieldTerm {
    path: String,
    value: String,
    equal: bool,
}

/// The requirements of a label selector: `a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (b,c)`,
/// `a notin (b,c)`, comma-joined.
fn parse_label_selector(selector: &str) -> Result<Vec<LabelTerm>, String> {
    let mut terms = Vec::new();
    for term in split_outside_parentheses(selector) {
        let term = term.trim();
        if term.is_empty() {
            continue;
        }
        let parsed = if let Some(key) = term.strip_prefix('!') {
            LabelTerm::Absent(label_key(key.trim())?)
        } else if let Some((head, values)) = term.split_once('(') {
            let values =
                values.trim_end().strip_suffix(')').ok_or_else(|| format!("{term:?}: no closing parenthesis"))?;
            let values = values.split(',').map(|v| label_value(v.trim())).collect::<Result<Vec<_>, _>>()?;
            let mut words = head.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some(key), Some("in"), None) => LabelTerm::In(label_key(key)?, values),
                (Some(key), Some("notin"), None) => LabelTerm::NotIn(label_key(key)?, values),
                _ => return Err(format!("{term:?}: not `key in (...)` nor `key notin (...)`")),
            }
        } else if let Some((key, value)) = term.split_once("!=") {
            LabelTerm::NotEquals(label_key(key.trim())?, label_value(value.trim())?)
        } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            LabelTerm::Equals(label_key(key.trim())?, label_value(value.trim())?)
        } else {
            LabelTerm::Exists(label_key(term)?)
        };
        terms.push(parsed);
    }
    Ok(terms)
}

/// The requirements of a field selector: `path=value`, `path==value`, `path!=value`,
/// comma-joined.
fn parse_field_selector(selector: &str) -> Result<Vec<FieldTerm>, String> {
    let mut terms = Vec::new();
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (path, value, equal) = if let Some((path, value)) = term.split_once("!=") {
            (path, value, false)
        } else if let Some((path, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (path, value, true)
        } else {
            return Err(format!("{term:?}: not `field=value` nor `field!=value`"));
        };
        let path = path.trim();
        if path.is_empty() || !path.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
            return Err(format!("{term:?}: {path:?} is not a field"));
        }
        terms.push(FieldTerm { path: path.to_string(), value: value.trim().to_string(), equal });
    }
    Ok(terms)
}

/// `s` split at the commas outside parentheses.
fn split_outside_parentheses(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn label_key(key: &str) -> Result<String, String> {
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')) {
        return Err(format!("{key:?} is not a label key"));
    }
    Ok(key.to_string())
}

fn label_value(value: &str) -> Result<String, String> {
    if !value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(format!("{value:?} is not a label value"));
    }
    Ok(value.to_string())
}

/// The field at dotted `path` of `object` as text; "" if there is none.
fn field_value(object: &Value, path: &str) -> String {
    let mut value = object;
    for part in path.split('.') {
        match value.get(part) {
            Some(next) => value = next,
            None => return String::new(),
        }
    }
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

/// The selectors and resourceVersion of a list or watch request.
fn read_query(target: &Target, query: &Query) -> Result<(Filter, LoggedRequest), Reply> {
    let labels = match query.get("labelSelector") {
        Some(selector) => parse_label_selector(selector).map_err(|e| bad_request(format!("labelSelector: {e}")))?,
        None => Vec::new(),
    };
    let fields = match query.get("fieldSelector") {
        Some(selector) => parse_field_selector(selector).map_err(|e| bad_request(format!("fieldSelector: {e}")))?,
        None => Vec::new(),
    };
    let resource_version = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") => None,
        Some(rv) => Some(rv.parse().map_err(|_| bad_request(format!("invalid resource version {rv:?}")))?),
    };
    let logged = LoggedRequest {
        resource: target.resource.key(),
        namespace: target.namespace.clone(),
        resource_version,
        label_selector: query.get("labelSelector").cloned(),
        field_selector: query.get("fieldSelector").cloned(),
    };
    let filter = Filter { namespace: target.namespace.clone(), name: target.name.clone(), labels, fields };
    Ok((filter, logged))
}

/// Applies `patch` to `target` as an RFC 7386 JSON merge patch: objects merge recursively, a
/// `null` removes the member, anything else (arrays included) replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(changes) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(fields) = target else { return };
    for (key, change) in changes {
        if change.is_null() {
            fields.remove(key);
        } else {
            merge_patch(fields.entry(key.clone()).or_insert(Value::Null), change);
        }
    }
}

/// `metadata.{field}` of `object`, if a string.
fn meta<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}

/// Sets `metadata.{field}` (making `metadata` an object if it is not); nothing if `object` is
/// not an object.
fn set_meta(object: &mut Value, field: &str, value: Value) {
    let Some(fields) = object.as_object_mut() else { return };
    let metadata = fields.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if !metadata.is_object() {
        *metadata = Value::Object(Map::new());
    }
    if let Some(metadata) = metadata.as_object_mut() {
        metadata.insert(field.to_string(), value);
    }
}

fn remove_meta(object: &mut Value, field: &str) {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove(field);
    }
}

/// Whether `object` is shaped as a Kubernetes object: a JSON object whose metadata (if any) is
/// an object with string names and string-to-string labels and annotations.
fn check_object(object: &Value) -> Result<(), String> {
    let Some(fields) = object.as_object() else { return Err("the object is not a JSON object".into()) };
    let metadata = match fields.get("metadata") {
        None => return Ok(()),
        Some(Value::Object(metadata)) => metadata,
        Some(_) => return Err("metadata is not an object".into()),
    };
    for field in ["name", "generateName", "namespace", "resourceVersion", "uid", "creationTimestamp"] {
        if metadata.get(field).is_some_and(|v| !v.is_string() && !v.is_null()) {
            return Err(format!("metadata.{field} is not a string"));
        }
    }
    for field in ["labels", "annotations"] {
        match metadata.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) if map.values().all(Value::is_string) => {}
            Some(_) => return Err(format!("metadata.{field} does not map strings to strings")),
        }
    }
    Ok(())
}

/// A request body as an object of `resource`: 400 unless it is one; a missing apiVersion or
/// kind is filled in.
fn parse_object(body: &[u8], resource: &Resource) -> Result<Value, Reply> {
    let mut object: Value =
        serde_json::from_slice(body).map_err(|e| bad_request(format!("the body is not JSON: {e}")))?;
    check_object(&object).map_err(bad_request)?;
    for (field, expected) in [("apiVersion", &resource.api_version), ("kind", &resource.kind)] {
        match object.get(field) {
            None | Some(Value::Null) => {
                if let Some(fields) = object.as_object_mut() {
                    fields.insert(field.into(), json!(expected));
                }
            }
            Some(Value::String(given)) if given == expected => {}
            Some(given) => return Err(bad_request(format!("{field} {given} is not the path's {expected}"))),
        }
    }
    Ok(object)
}

/// Puts `object` in the path's `namespace` (none for a cluster-scoped resource); 400 if it
/// names another.
fn place_in(object: &mut Value, target: &Target, namespace: &str) -> Result<(), Reply> {
    if !target.resource.namespaced {
        remove_meta(object, "namespace");
        return Ok(());
    }
    if meta(object, "namespace").is_some_and(|ns| !ns.is_empty() && ns != namespace) {
        return Err(bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    set_meta(object, "namespace", json!(namespace));
    Ok(())
}

/// Gives `new` the identity of `existing`, which no update may change: apiVersion, kind, name,
/// namespace, uid, creationTimestamp and resourceVersion.
fn keep_identity(existing: &Value, new: &mut Value) {
    for field in ["apiVersion", "kind"] {
        if let (Some(value), Some(fields)) = (existing.get(field), new.as_object_mut()) {
            fields.insert(field.into(), value.clone());
        }
    }
    for field in ["name", "namespace", "uid", "creationTimestamp", "resourceVersion"] {
        match existing.get("metadata").and_then(|m| m.get(field)) {
            Some(value) => set_meta(new, field, value.clone()),
            None => remove_meta(new, field),
        }
    }
}

/// A Status of failure.
fn failure(code: u16, reason: &str, message: impl Into<String>) -> Reply {
    let message = message.into();
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    Reply { code, body }
}

fn bad_request(message: impl Into<String>) -> Reply {
    failure(400, "BadRequest", message)
}

fn invalid(message: impl Into<String>) -> Reply {
    failure(422, "Invalid", message)
}

fn method_not_allowed() -> Reply {
    failure(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
}

fn no_such_resource() -> Reply {
    failure(404, "NotFound", "the server could not find the requested resource")
}

/// The ERROR event that ends a watch from before the compaction.
fn expired(from: u64, compacted: u64) -> Value {
    let status = failure(410, "Expired", format!("too old resource version: {from} ({compacted})"));
    json!({"type": "ERROR", "object": status.body})
}

/// A BOOKMARK at `rv`; `initial_end` marks the end of the initial events.
fn bookmark_event(resource: &Resource, rv: u64, initial_end: bool) -> Value {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        metadata["annotations"] = json!({INITIAL_EVENTS_END: "true"});
    }
    let object = json!({"kind": resource.kind, "apiVersion": resource.api_version, "metadata": metadata});
    json!({"type": "BOOKMARK", "object": object})
}

/// `/version`.
fn version_info() -> Value {
    json!({"major": "1", "minor": "31", "gitVersion": "v1.31.0-stacknet-fake", "gitCommit": "", "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z", "goVersion": "go1.22", "compiler": "gc", "platform": "linux/amd64"})
}

/// `/apis`: the groups served (only `group`, if given).
fn group_list(resources: &BTreeMap<String, Resource>, only: Option<&str>) -> Value {
    let mut groups: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for resource in resources.values() {
        if let Some((group, version)) = resource.api_version.split_once('/')
            && only.is_none_or(|g| g == group)
        {
            groups.entry(group).or_default().insert(version);
        }
    }
    let groups: Vec<Value> = groups
        .iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> =
                versions.iter().map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect();
            json!({"name": group, "preferredVersion": versions.first(), "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/api/{version}`, `/apis/{group}/{version}`: the resources served there; 404 if none.
fn resource_list(resources: &BTreeMap<String, Resource>, api_version: &str) -> Result<Value, Reply> {
    let verbs = ["create", "delete", "get", "list", "patch", "update", "watch"];
    let mut listed = Vec::new();
    for r in resources.values().filter(|r| r.api_version == api_version) {
        let singular = r.kind.to_lowercase();
        listed.push(json!({"name": r.plural, "singularName": singular, "namespaced": r.namespaced,
            "kind": r.kind, "verbs": verbs}));
        listed.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
            "kind": r.kind, "verbs": ["get", "patch", "update"]}));
    }
    if listed.is_empty() {
        return Err(no_such_resource());
    }
    Ok(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": api_version, "resources": listed}))
}

/// Now, as RFC 3339 in UTC to the second.
fn now_rfc3339() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// `secs` after the epoch as RFC 3339 in UTC.
fn rfc3339(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (H. Hinnant's algorithm), for days after the epoch.
    let z = days + 719_468;
    let (era, day_of_era) = (z / 146_097, z % 146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// Query parameters, decoded; the last of a repeated name wins.
type Query = BTreeMap<String, String>;

/// One HTTP request.
struct Request {
    method: String,
    /// The path's segments, decoded, without empty ones.
    segments: Vec<String>,
    query: Query,
    /// By lower-case name.
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    /// Whether the connection ends after the answer.
    close: bool,
}

/// Why no request was read.
enum ReadError {
    /// The connection ended (or broke).
    Closed,
    /// Not a request we can read: answered, then the connection is closed.
    Bad(Reply),
}

/// Reads one request: its line, headers (names in any case) and a `Content-Length` or chunked
/// body.
async fn read_request<R: AsyncBufRead + Unpin>(read: &mut R) -> Result<Request, ReadError> {
    let bad = |message: &str| ReadError::Bad(bad_request(message));
    let mut line = String::new();
    // Empty lines between requests are allowed.
    while line.trim().is_empty() {
        line.clear();
        if read_line(read, &mut line).await? == 0 {
            return Err(ReadError::Closed);
        }
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad("not HTTP/1"));
    }
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let mut header = String::new();
        if read_line(read, &mut header).await? == 0 {
            return Err(ReadError::Closed);
        }
        let header = header.trim_end_matches(['\r', '\n']);
        if header.is_empty() {
            break;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(bad("too many headers"));
        }
        let Some((name, value)) = header.split_once(':') else { return Err(bad("malformed header")) };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        headers.entry(name).and_modify(|v| *v = format!("{v}, {value}")).or_insert_with(|| value.to_string());
    }
    let chunked = headers.get("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        read_chunked(read).await?
    } else {
        let length = match headers.get("content-length") {
            None => 0,
            Some(length) => length.parse::<usize>().map_err(|_| bad("malformed Content-Length"))?,
        };
        if length > MAX_BODY {
            return Err(ReadError::Bad(failure(413, "RequestEntityTooLarge", "the body is too large")));
        }
        let mut body = vec![0u8; length];
        read.read_exact(&mut body).await.map_err(|_| ReadError::Closed)?;
        body
    };
    let connection = headers.get("connection").map(|c| c.to_ascii_lowercase()).unwrap_or_default();
    let close = connection.contains("close") || (version == "HTTP/1.0" && !connection.contains("keep-alive"));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if !path.starts_with('/') {
        return Err(bad("the request target is not a path"));
    }
    let mut segments = Vec::new();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        segments.push(percent_decode(segment, false).ok_or_else(|| bad("the path is not UTF-8"))?);
    }
    let mut params = Query::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode(name, true).ok_or_else(|| bad("the query is not UTF-8"))?;
        let value = percent_decode(value, true).ok_or_else(|| bad("the query is not UTF-8"))?;
        params.insert(name, value);
    }
    Ok(Request { method: method.to_string(), segments, query: params, headers, body, close })
}

/// One line (at most [`MAX_LINE`] bytes) into `line`; its length, 0 at the end.
async fn read_line<R: AsyncBufRead + Unpin>(read: &mut R, line: &mut String) -> Result<usize, ReadError> {
    let n = (&mut *read).take(MAX_LINE).read_line(line).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => ReadError::Bad(bad_request("a line is not UTF-8")),
        _ => ReadError::Closed,
    })?;
    if n as u64 == MAX_LINE && !line.ends_with('\n') {
        return Err(ReadError::Bad(bad_request("a line is too long")));
    }
    Ok(n)
}

/// A chunked body, its trailers skipped.
async fn read_chunked<R: AsyncBufRead + Unpin>(read: &mut R) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        if read_line(read, &mut line).await? == 0 {
            return Err(ReadError::Closed);
        }
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| ReadError::Bad(bad_request("malformed chunk size")))?;
        if size == 0 {
            loop {
                let mut trailer = String::new();
                if read_line(read, &mut trailer).await? == 0 || trailer.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len().saturating_add(size) > MAX_BODY {
            return Err(ReadError::Bad(failure(413, "RequestEntityTooLarge", "the body is too large")));
        }
        let start = body.len();
        body.resize(start + size, 0);
        read.read_exact(&mut body[start..]).await.map_err(|_| ReadError::Closed)?;
        let mut end = String::new();
        read_line(read, &mut end).await?;
    }
}

/// `s` with its `%XX` escapes decoded (and `+` as a space in a query); a malformed escape stays
/// as it is; `None` if the result is not UTF-8.
fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let hex = |i: usize| bytes.get(i).and_then(|b| char::from(*b).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                // Two hex digits: at most 255.
                out.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
                i += 3;
                continue;
            }
            (b'+', _, _) if plus_is_space => out.push(b' '),
            (b, _, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Writes one answer with a `Content-Length` body.
async fn write_reply(write: &mut OwnedWriteHalf, reply: &Reply, close: bool) -> std::io::Result<()> {
    let body = reply.body.to_string();
    let connection = if close { "Connection: close\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{connection}\r\n",
        reply.code,
        reason_phrase(reply.code),
        body.len()
    );
    let mut message = head.into_bytes();
    message.extend_from_slice(body.as_bytes());
    write.write_all(&message).await
}

/// Writes one watch event as a chunk: its JSON and a newline.
async fn write_event(write: &mut OwnedWriteHalf, event: &Value) -> std::io::Result<()> {
    let line = format!("{event}\n");
    write.write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes()).await
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    /// A hand-written HTTP/1.1 client on one connection.
    struct Conn {
        io: BufReader<TcpStream>,
    }

    impl Conn {
        async fn open(api: &ApiServer) -> Conn {
            Conn { io: BufReader::new(TcpStream::connect(api.addr()).await.unwrap()) }
        }

        async fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) {
            let mut head = format!("{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {}\r\n", body.len());
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            head.push_str(body);
            self.io.get_mut().write_all(head.as_bytes()).await.unwrap();
        }

        /// Status code and headers (lower-case names).
        async fn head(&mut self) -> (u16, BTreeMap<String, String>) {
            let mut line = String::new();
            tokio::time::timeout(WAIT, self.io.read_line(&mut line)).await.unwrap().unwrap();
            let code = line.split_whitespace().nth(1).unwrap().parse().unwrap();
            let mut headers = BTreeMap::new();
            loop {
                let mut h = String::new();
                self.io.read_line(&mut h).await.unwrap();
                if h.trim().is_empty() {
                    return (code, headers);
                }
                let (k, v) = h.split_once(':').unwrap();
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }

        async fn response(&mut self) -> (u16, Value) {
            let (code, headers) = self.head().await;
            let mut body = vec![0; headers["content-length"].parse().unwrap()];
            self.io.read_exact(&mut body).await.unwrap();
            (code, serde_json::from_slice(&body).unwrap())
        }

        async fn call(&mut self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
            let body = body.map(|b| b.to_string()).unwrap_or_default();
            let content_type = if method == "PATCH" { "application/merge-patch+json" } else { "application/json" };
            self.send(method, path, &[("Content-Type", content_type)], &body).await;
            self.response().await
        }

        /// Whether the server closed the connection.
        async fn closed(&mut self) -> bool {
            let mut rest = Vec::new();
            matches!(tokio::time::timeout(WAIT, self.io.read_to_end(&mut rest)).await, Ok(Ok(0)))
        }
    }

    /// One request on a connection of its own.
    async fn call(api: &ApiServer, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        Conn::open(api).await.call(method, path, body).await
    }

    /// A watch stream being read.
    struct Stream {
        conn: Conn,
    }

    impl Stream {
        async fn open(api: &ApiServer, path: &str) -> Stream {
            let mut conn = Conn::open(api).await;
            conn.send("GET", path, &[], "").await;
            let (code, headers) = conn.head().await;
            assert_eq!(code, 200);
            assert_eq!(headers["transfer-encoding"], "chunked");
            Stream { conn }
        }

        /// The next event; `None` once the stream has ended (cleanly or not).
        async fn next(&mut self) -> Option<Value> {
            let io = &mut self.conn.io;
            let mut size = String::new();
            if tokio::time::timeout(WAIT, io.read_line(&mut size)).await.expect("an event in time").ok()? == 0 {
                return None;
            }
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            if size == 0 {
                return None;
            }
            let mut chunk = vec![0; size + 2];
            io.read_exact(&mut chunk).await.ok()?;
            assert!(chunk.ends_with(b"\n\r\n"), "one JSON a line");
            Some(serde_json::from_slice(&chunk[..size]).unwrap())
        }

        /// The next event as (type, name).
        async fn event(&mut self) -> (String, String) {
            let e = self.next().await.expect("an event");
            let name = e["object"]["metadata"]["name"].as_str().unwrap_or("").to_string();
            (e["type"].as_str().unwrap().to_string(), name)
        }
    }

    fn pod(namespace: &str, name: &str, labels: Value, node: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}, "status": {"phase": "Running"}})
    }

    fn names(list: &Value) -> Vec<String> {
        list["items"].as_array().unwrap().iter().map(|o| o["metadata"]["name"].as_str().unwrap().to_string()).collect()
    }

    async fn shop() -> ApiServer {
        let api = ApiServer::start().await;
        api.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}));
        api.apply(pod("shop", "a", json!({"tier": "web"}), "n1"));
        api.apply(pod("shop", "b", json!({"tier": "db"}), "n2"));
        api.apply(pod("other", "c", json!({"tier": "web", "canary": "yes"}), "n1"));
        api
    }

    #[tokio::test]
    async fn lists_filter_by_namespace_labels_and_fields() {
        let api = shop().await;
        let (code, all) = call(&api, "GET", "/api/v1/pods", None).await;
        assert_eq!(code, 200);
        assert_eq!((all["kind"].as_str(), all["apiVersion"].as_str()), (Some("PodList"), Some("v1")));
        assert_eq!(all["metadata"]["resourceVersion"], api.resource_version().to_string());
        assert_eq!(names(&all), ["c", "a", "b"], "by namespace, then name");
        assert!(all["items"][0]["metadata"]["resourceVersion"].is_string());

        let list = |query: &str| {
            let api = api.clone();
            let path = format!("/api/v1/{query}");
            async move {
                let (code, list) = call(&api, "GET", &path, None).await;
                assert_eq!(code, 200, "{path}: {list}");
                names(&list)
            }
        };
        assert_eq!(list("namespaces/shop/pods").await, ["a", "b"]);
        assert_eq!(list("pods?labelSelector=tier%3Dweb").await, ["c", "a"]);
        assert_eq!(list("pods?labelSelector=tier%3D%3Dweb%2Ccanary").await, ["c"]);
        assert_eq!(list("pods?labelSelector=tier!%3Dweb").await, ["b"]);
        assert_eq!(list("pods?labelSelector=%21canary").await, ["a", "b"]);
        assert_eq!(list("pods?labelSelector=tier+in+%28web%2Cdb%29").await, ["c", "a", "b"]);
        assert_eq!(list("pods?labelSelector=tier%20notin%20(web),canary%3Dno").await, Vec::<String>::new());
        assert_eq!(list("pods?labelSelector=tier%20notin%20(web)").await, ["b"]);
        assert_eq!(list("pods?fieldSelector=spec.nodeName%3Dn1").await, ["c", "a"]);
        assert_eq!(list("pods?fieldSelector=metadata.name%3Da%2Cmetadata.namespace%3Dshop").await, ["a"]);
        assert_eq!(list("pods?fieldSelector=metadata.namespace!%3Dshop").await, ["c"]);
        assert_eq!(
            list("namespaces/shop/pods?labelSelector=tier%3Dweb&fieldSelector=spec.nodeName%3Dn2").await,
            [""; 0]
        );
        assert_eq!(list("nodes").await, ["n1"], "cluster-scoped");

        let (code, status) = call(&api, "GET", "/api/v1/pods?labelSelector=tier%3D%3D%3Dx", None).await;
        assert_eq!(
            (code, status["kind"].as_str(), status["reason"].as_str()),
            (400, Some("Status"), Some("BadRequest"))
        );
        let (code, _) = call(&api, "GET", "/api/v1/pods?fieldSelector=spec.nodeName", None).await;
        assert_eq!(code, 400);
        let (code, _) = call(&api, "GET", "/api/v1/namespaces/shop/nodes", None).await;
        assert_eq!(code, 404, "a cluster-scoped resource has no namespaces");

        let logged = api.lists();
        assert_eq!(logged[0].resource, "v1/pods");
        assert_eq!(logged[0].namespace, None);
        assert_eq!(logged[1].namespace.as_deref(), Some("shop"));
        assert_eq!(logged[2].label_selector.as_deref(), Some("tier=web"));
    }

    #[tokio::test]
    async fn one_object_or_not_found() {
        let api = shop().await;
        let (code, a) = call(&api, "GET", "/api/v1/namespaces/shop/pods/a", None).await;
        assert_eq!(
            (code, a["metadata"]["name"].as_str(), a["spec"]["nodeName"].as_str()),
            (200, Some("a"), Some("n1"))
        );
        assert_eq!(Some(a), api.get("v1", "pods", "shop", "a"));
        let (code, status) = call(&api, "GET", "/api/v1/namespaces/shop/pods/a/status", None).await;
        assert_eq!((code, status["status"]["phase"].as_str()), (200, Some("Running")));
        let (code, node) = call(&api, "GET", "/api/v1/nodes/n1", None).await;
        assert_eq!((code, node["kind"].as_str()), (200, Some("Node")));
        assert!(node["metadata"].get("namespace").is_none());

        let (code, status) = call(&api, "GET", "/api/v1/namespaces/shop/pods/zz", None).await;
        assert_eq!(code, 404);
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["status"], "Failure");
        assert_eq!(status["reason"], "NotFound");
        assert_eq!(status["code"], 404);
        assert_eq!(status["message"], "pods \"zz\" not found");
        let (code, status) = call(&api, "GET", "/apis/apps/v1/namespaces/shop/deployments/web", None).await;
        assert_eq!((code, status["message"].as_str()), (404, Some("deployments.apps \"web\" not found")));
        for path in ["/api/v1/pods/a", "/nothing", "/api/v1/namespaces/shop/pods/a/exec", "/apis/x.io/v1/things"] {
            let (code, status) = call(&api, "GET", path, None).await;
            assert_eq!((code, status["reason"].as_str()), (404, Some("NotFound")), "{path}");
        }
        let (code, _) = call(&api, "DELETE", "/api/v1/namespaces/shop/pods", None).await;
        assert_eq!(code, 405, "no deleting collections");
    }

    #[tokio::test]
    async fn post_creates_names_and_refuses_duplicates() {
        let api = ApiServer::start().await;
        let cm = json!({"metadata": {"generateName": "cfg-"}, "data": {"k": "v"}});
        let (code, made) = call(&api, "POST", "/api/v1/namespaces/shop/configmaps", Some(cm.clone())).await;
        assert_eq!(code, 201, "{made}");
        let name = made["metadata"]["name"].as_str().unwrap().to_string();
        assert!(name.starts_with("cfg-") && name.len() == 9, "{name}");
        assert_eq!(made["metadata"]["namespace"], "shop");
        assert_eq!((made["apiVersion"].as_str(), made["kind"].as_str()), (Some("v1"), Some("ConfigMap")));
        assert!(!made["metadata"]["uid"].as_str().unwrap().is_empty());
        let created = made["metadata"]["creationTimestamp"].as_str().unwrap();
        assert!(created.len() == 20 && created.ends_with('Z') && created.as_bytes()[10] == b'T', "{created}");
        assert_eq!(made["metadata"]["resourceVersion"], api.resource_version().to_string());
        assert_eq!(api.get("v1", "configmaps", "shop", &name), Some(made.clone()));
        let (_, again) = call(&api, "POST", "/api/v1/namespaces/shop/configmaps", Some(cm)).await;
        assert_ne!(again["metadata"]["name"], made["metadata"]["name"]);

        let given = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "uid": "mine"}});
        let (code, x) = call(&api, "POST", "/api/v1/namespaces/shop/configmaps", Some(given.clone())).await;
        assert_eq!((code, x["metadata"]["uid"].as_str()), (201, Some("mine")));
        let (code, status) = call(&api, "POST", "/api/v1/namespaces/shop/configmaps", Some(given)).await;
        assert_eq!((code, status["reason"].as_str()), (409, Some("AlreadyExists")));

        let elsewhere = json!({"metadata": {"name": "y", "namespace": "other"}});
        let (code, _) = call(&api, "POST", "/api/v1/namespaces/shop/configmaps", Some(elsewhere)).await;
        assert_eq!(code, 400, "the path's namespace and the object's differ");
        let wrong_kind = json!({"kind": "Pod", "metadata": {"name": "y"}});
        let (code, _) = call(&api, "POST", "/api/v1/namespaces/shop/configmaps", Some(wrong_kind)).await;
        assert_eq!(code, 400);
        let (code, status) = call(&api, "POST", "/api/v1/namespaces/shop/configmaps", Some(json!({"data": {}}))).await;
        assert_eq!((code, status["reason"].as_str()), (422, Some("Invalid")));
        let (code, _) = call(&api, "POST", "/api/v1/namespaces/shop/configmaps", Some(json!([1]))).await;
        assert_eq!(code, 400);
        let bad_labels = json!({"metadata": {"name": "y", "labels": {"a": 1}}});
        let (code, _) = call(&api, "POST", "/api/v1/namespaces/shop/configmaps", Some(bad_labels)).await;
        assert_eq!(code, 400);
        let (code, _) = call(&api, "POST", "/api/v1/configmaps", Some(json!({"metadata": {"name": "y"}}))).await;
        assert_eq!(code, 405, "a namespaced object is created in a namespace");
        let (code, _) = call(&api, "POST", "/api/v1/namespaces/shop/configmaps/x", Some(json!({}))).await;
        assert_eq!(code, 405);
        let mut conn = Conn::open(&api).await;
        conn.send("POST", "/api/v1/namespaces/shop/configmaps", &[], "{not json").await;
        assert_eq!(conn.response().await.0, 400);

        // A cluster-scoped object.
        let (code, ns) = call(&api, "POST", "/api/v1/namespaces", Some(json!({"metadata": {"name": "shop"}}))).await;
        assert_eq!((code, ns["kind"].as_str()), (201, Some("Namespace")));
        assert!(api.get("v1", "namespaces", "", "shop").is_some());
    }

    #[tokio::test]
    async fn merge_patches_merge_nested_maps_and_delete_nulls() {
        let api = shop().await;
        let mut a = pod("shop", "a", json!({"tier": "web", "old": "x"}), "n1");
        a["metadata"]["annotations"] = json!({"keep": "1"});
        a["spec"]["dns"] = json!({"nameservers": ["1.1.1.1"], "search": {"a": 1, "b": 2}});
        let before = api.apply(a);
        let patch = json!({"metadata": {"labels": {"old": null, "new": "y"}, "annotations": {"net": "{}"}},
            "spec": {"dns": {"search": {"a": null, "c": {"d": 3}}, "nameservers": ["8.8.8.8"]}},
            "status": {"phase": "Failed"}});
        let (code, after) = call(&api, "PATCH", "/api/v1/namespaces/shop/pods/a", Some(patch)).await;
        assert_eq!(code, 200, "{after}");
        assert_eq!(after["metadata"]["labels"], json!({"tier": "web", "new": "y"}));
        assert_eq!(after["metadata"]["annotations"], json!({"keep": "1", "net": "{}"}));
        assert_eq!(after["spec"]["dns"], json!({"nameservers": ["8.8.8.8"], "search": {"b": 2, "c": {"d": 3}}}));
        assert_eq!(after["spec"]["nodeName"], "n1");
        assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
        assert_ne!(after["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"]);
        assert_eq!(api.get("v1", "pods", "shop", "a"), Some(after.clone()));

        // The status subresource takes only the status.
        let patch = json!({"status": {"phase": "Succeeded", "podIP": "10.0.0.9"}, "metadata": {"labels": {"x": "y"}}});
        let (code, status) = call(&api, "PATCH", "/api/v1/namespaces/shop/pods/a/status", Some(patch)).await;
        assert_eq!(code, 200);
        assert_eq!(status["status"], json!({"phase": "Succeeded", "podIP": "10.0.0.9"}));
        assert_eq!(status["metadata"]["labels"], after["metadata"]["labels"]);

        // Nothing changed: nor does the resourceVersion.
        let (_, same) =
            call(&api, "PATCH", "/api/v1/namespaces/shop/pods/a", Some(json!({"spec": {"nodeName": "n1"}}))).await;
        assert_eq!(same["metadata"]["resourceVersion"], status["metadata"]["resourceVersion"]);
        // Identity stays.
        let rename = json!({"metadata": {"name": "z", "uid": "other"}, "kind": "Node"});
        let (_, kept) = call(&api, "PATCH", "/api/v1/namespaces/shop/pods/a", Some(rename)).await;
        assert_eq!((kept["metadata"]["name"].as_str(), kept["kind"].as_str()), (Some("a"), Some("Pod")));
        assert_eq!(kept["metadata"]["uid"], before["metadata"]["uid"]);

        let stale = json!({"metadata": {"resourceVersion": "1", "labels": {"z": "z"}}});
        let (code, status) = call(&api, "PATCH", "/api/v1/namespaces/shop/pods/a", Some(stale)).await;
        assert_eq!((code, status["reason"].as_str()), (409, Some("Conflict")));
        let (code, status) = call(&api, "PATCH", "/api/v1/namespaces/shop/pods/zz", Some(json!({}))).await;
        assert_eq!((code, status["reason"].as_str()), (404, Some("NotFound")));
        let (code, _) = call(&api, "PATCH", "/api/v1/namespaces/shop/pods/a", Some(json!({"metadata": 3}))).await;
        assert_eq!(code, 400);
        let mut conn = Conn::open(&api).await;
        conn.send("PATCH", "/api/v1/namespaces/shop/pods/a", &[("Content-Type", "application/json-patch+json")], "[]")
            .await;
        let (code, status) = conn.response().await;
        assert_eq!((code, status["reason"].as_str()), (415, Some("UnsupportedMediaType")));
        let (code, _) =
            call(&api, "PATCH", "/api/v1/nodes/n1", Some(json!({"metadata": {"labels": {"z": "1"}}}))).await;
        assert_eq!(code, 200);

        assert_eq!(
            api.patches(),
            [
                "pods shop/a",
                "status:pods shop/a",
                "pods shop/a",
                "pods shop/a",
                "pods shop/a",
                "pods shop/zz",
                "pods shop/a",
                "pods shop/a",
                "nodes n1"
            ]
        );
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // The examples of RFC 7386, appendix A.
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "b"}), json!({"b": "c"}), json!({"a": "b", "b": "c"})),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (json!({"a": "b", "b": "c"}), json!({"a": null}), json!({"b": "c"})),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (json!({"a": {"b": "c"}}), json!({"a": {"b": "d", "c": null}}), json!({"a": {"b": "d"}})),
            (json!({"a": [{"b": "c"}]}), json!({"a": [1]}), json!({"a": [1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (json!({"e": null}), json!({"a": 1}), json!({"e": null, "a": 1})),
            (json!([1, 2]), json!({"a": "b", "c": null}), json!({"a": "b"})),
            (json!({}), json!({"a": {"bb": {"ccc": null}}}), json!({"a": {"bb": {}}})),
        ];
        for (mut target, patch, expected) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, expected, "{patch}");
        }
    }

    #[tokio::test]
    async fn watches_stream_changes_and_follow_selectors() {
        let api = shop().await;
        let from = api.resource_version();
        let mut web = Stream::open(
            &api,
            &format!("/api/v1/namespaces/shop/pods?watch=true&resourceVersion={from}&labelSelector=tier%3Dweb"),
        )
        .await;
        let mut all = Stream::open(&api, &format!("/api/v1/pods?watch=1&resourceVersion={from}")).await;

        api.apply(pod("shop", "d", json!({"tier": "web"}), "n1"));
        assert_eq!(web.event().await, ("ADDED".into(), "d".into()));
        // a stops matching: DELETED, its last matching state at the change's resourceVersion.
        api.apply(pod("shop", "a", json!({"tier": "db"}), "n1"));
        let gone = web.next().await.unwrap();
        assert_eq!(gone["type"], "DELETED");
        assert_eq!(gone["object"]["metadata"]["labels"]["tier"], "web");
        assert_eq!(gone["object"]["metadata"]["resourceVersion"], api.resource_version().to_string());
        // b starts matching: ADDED; then it changes: MODIFIED.
        api.apply(pod("shop", "b", json!({"tier": "web"}), "n2"));
        assert_eq!(web.event().await, ("ADDED".into(), "b".into()));
        api.apply(pod("shop", "b", json!({"tier": "web", "v": "2"}), "n2"));
        let modified = web.next().await.unwrap();
        assert_eq!(
            (modified["type"].as_str(), modified["object"]["metadata"]["labels"]["v"].as_str()),
            (Some("MODIFIED"), Some("2"))
        );
        // Not matching, or in another namespace: not seen.
        api.apply(pod("shop", "e", json!({"tier": "db"}), "n1"));
        api.apply(pod("other", "f", json!({"tier": "web"}), "n1"));
        api.delete("v1", "pods", "shop", "d");
        assert_eq!(web.event().await, ("DELETED".into(), "d".into()));
        // Through the API as well.
        let (code, _) = call(&api, "DELETE", "/api/v1/namespaces/shop/pods/b", None).await;
        assert_eq!(code, 200);
        assert_eq!(web.event().await, ("DELETED".into(), "b".into()));

        let mut seen = Vec::new();
        for _ in 0..8 {
            seen.push(all.event().await);
        }
        let seen: Vec<(&str, &str)> = seen.iter().map(|(t, n)| (t.as_str(), n.as_str())).collect();
        assert_eq!(
            seen,
            [
                ("ADDED", "d"),
                ("MODIFIED", "a"),
                ("MODIFIED", "b"),
                ("MODIFIED", "b"),
                ("ADDED", "e"),
                ("ADDED", "f"),
                ("DELETED", "d"),
                ("DELETED", "b")
            ]
        );

        let watches = api.watches();
        assert_eq!(watches[0].resource_version, Some(from));
        assert_eq!(watches[0].label_selector.as_deref(), Some("tier=web"));
        assert_eq!(watches[1].namespace, None);
    }

    #[tokio::test]
    async fn watches_from_nothing_start_with_the_objects_there() {
        let api = shop().await;
        let mut web = Stream::open(&api, "/api/v1/pods?watch=true&labelSelector=tier%3Dweb").await;
        assert_eq!(web.event().await, ("ADDED".into(), "c".into()));
        assert_eq!(web.event().await, ("ADDED".into(), "a".into()));
        api.apply(pod("shop", "g", json!({"tier": "web"}), "n1"));
        assert_eq!(web.event().await, ("ADDED".into(), "g".into()));

        // A watch of one object.
        let mut one = Stream::open(&api, "/api/v1/namespaces/shop/pods/b?watch=true&resourceVersion=0").await;
        assert_eq!(one.event().await, ("ADDED".into(), "b".into()));
        api.apply(pod("shop", "a", json!({}), "n1"));
        api.apply(pod("shop", "b", json!({}), "n1"));
        assert_eq!(one.event().await, ("MODIFIED".into(), "b".into()));

        // Streaming lists: the objects, then a bookmark marking their end.
        let mut nodes = Stream::open(&api, "/api/v1/nodes?watch=true&sendInitialEvents=true").await;
        assert_eq!(nodes.event().await, ("ADDED".into(), "n1".into()));
        let end = nodes.next().await.unwrap();
        assert_eq!(end["type"], "BOOKMARK");
        assert_eq!(end["object"]["metadata"]["annotations"][INITIAL_EVENTS_END], "true");

        // A watch with a timeout ends cleanly.
        let rv = api.resource_version();
        let mut short =
            Stream::open(&api, &format!("/api/v1/nodes?watch=true&timeoutSeconds=1&resourceVersion={rv}")).await;
        api.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2"}}));
        assert_eq!(short.event().await, ("ADDED".into(), "n2".into()));
        assert_eq!(short.next().await, None);
    }

    #[tokio::test]
    async fn a_compacted_resource_version_is_gone() {
        let api = shop().await;
        let old = api.resource_version();
        let mut open = Stream::open(&api, &format!("/api/v1/pods?watch=true&resourceVersion={old}")).await;
        api.apply(pod("shop", "d", json!({}), "n1"));
        assert_eq!(open.event().await, ("ADDED".into(), "d".into()));
        let deleted = api.delete_and_compact("v1", "pods", "shop", "a");
        assert_eq!(deleted.unwrap()["metadata"]["name"], "a");
        assert!(api.get("v1", "pods", "shop", "a").is_none());

        // The open watch ends with 410, the deletion never streamed.
        let error = open.next().await.unwrap();
        assert_eq!(error["type"], "ERROR");
        assert_eq!(
            (error["object"]["code"].as_i64(), error["object"]["reason"].as_str()),
            (Some(410), Some("Expired"))
        );
        assert_eq!(open.next().await, None);
        // So does one resumed from before the compaction.
        let mut resumed = Stream::open(&api, &format!("/api/v1/pods?watch=true&resourceVersion={old}")).await;
        assert_eq!(resumed.next().await.unwrap()["object"]["code"], 410);
        assert_eq!(resumed.next().await, None);
        // A relist shows it gone, and a watch from there works.
        let (_, list) = call(&api, "GET", "/api/v1/pods", None).await;
        assert_eq!(names(&list), ["c", "b", "d"]);
        let rv = list["metadata"]["resourceVersion"].as_str().unwrap();
        let mut fresh = Stream::open(&api, &format!("/api/v1/pods?watch=true&resourceVersion={rv}")).await;
        api.apply(pod("shop", "e", json!({}), "n1"));
        assert_eq!(fresh.event().await, ("ADDED".into(), "e".into()));
    }

    #[tokio::test]
    async fn bookmarks_and_dropped_watches() {
        let api = shop().await;
        let rv = api.resource_version();
        let mut with =
            Stream::open(&api, &format!("/api/v1/pods?watch=true&allowWatchBookmarks=true&resourceVersion={rv}")).await;
        let mut without = Stream::open(&api, &format!("/api/v1/pods?watch=true&resourceVersion={rv}")).await;
        // Both streams are open once both are logged.
        crate::until("both watches", WAIT, || api.watches().len() == 2).await;
        let bookmark = api.bookmark();
        let event = with.next().await.unwrap();
        assert_eq!(event["type"], "BOOKMARK");
        assert_eq!(event["object"]["kind"], "Pod");
        let at: u64 = event["object"]["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
        assert!(at >= bookmark);
        crate::until("the bookmark logged", WAIT, || api.bookmarks() == [("v1/pods".to_string(), at)]).await;
        api.apply(pod("shop", "d", json!({}), "n1"));
        assert_eq!(without.event().await, ("ADDED".into(), "d".into()), "no bookmark unless allowed");
        assert_eq!(with.event().await, ("ADDED".into(), "d".into()));

        api.drop_watches();
        assert_eq!(with.next().await, None);
        assert_eq!(without.next().await, None);
        // A new watch is not dropped by the old drop.
        let mut again = Stream::open(&api, &format!("/api/v1/pods?watch=true&resourceVersion={at}")).await;
        assert_eq!(again.event().await, ("ADDED".into(), "d".into()));
    }

    #[tokio::test]
    async fn custom_resources_are_served_once_registered() {
        let api = ApiServer::start().await;
        let widget =
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 3}});
        for (method, path) in [
            ("GET", "/apis/example.com/v1/namespaces/shop/widgets"),
            ("GET", "/apis/example.com/v1/widgets?watch=true"),
            ("POST", "/apis/example.com/v1/namespaces/shop/widgets"),
            ("GET", "/apis/example.com/v1"),
        ] {
            let (code, status) = call(&api, method, path, Some(widget.clone())).await;
            assert_eq!(
                (code, status["kind"].as_str(), status["reason"].as_str()),
                (404, Some("Status"), Some("NotFound"))
            );
        }

        api.register("example.com/v1", "widgets", "Widget", true);
        let (code, made) =
            call(&api, "POST", "/apis/example.com/v1/namespaces/shop/widgets", Some(widget.clone())).await;
        assert_eq!(code, 201, "{made}");
        api.apply(
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "v", "namespace": "shop"}}),
        );
        let (code, list) = call(&api, "GET", "/apis/example.com/v1/widgets", None).await;
        assert_eq!((code, list["kind"].as_str()), (200, Some("WidgetList")));
        assert_eq!(names(&list), ["v", "w"]);
        let (_, one) = call(&api, "GET", "/apis/example.com/v1/namespaces/shop/widgets/w", None).await;
        assert_eq!(one["spec"]["size"], 3);

        api.register("example.com/v1", "gadgets", "Gadget", false);
        api.apply(
            json!({"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g", "namespace": "x"}}),
        );
        let (code, gadget) = call(&api, "GET", "/apis/example.com/v1/gadgets/g", None).await;
        assert_eq!(code, 200);
        assert!(gadget["metadata"].get("namespace").is_none(), "cluster-scoped");
        assert!(api.get("example.com/v1", "gadgets", "", "g").is_some());

        let (code, resources) = call(&api, "GET", "/apis/example.com/v1", None).await;
        assert_eq!(code, 200);
        let served: Vec<&str> =
            resources["resources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(served, ["gadgets", "gadgets/status", "widgets", "widgets/status"]);
        let (_, groups) = call(&api, "GET", "/apis", None).await;
        assert!(groups["groups"].as_array().unwrap().iter().any(|g| g["name"] == "example.com"));
        let (_, core) = call(&api, "GET", "/api/v1", None).await;
        assert!(core["resources"].as_array().unwrap().iter().any(|r| r["name"] == "pods" && r["namespaced"] == true));
    }

    #[tokio::test]
    async fn one_connection_carries_many_requests() {
        let api = shop().await;
        let mut conn = Conn::open(&api).await;
        let (code, a) = conn.call("GET", "/api/v1/namespaces/shop/pods/a", None).await;
        assert_eq!((code, a["metadata"]["name"].as_str()), (200, Some("a")));
        let (code, _) = conn.call("GET", "/api/v1/namespaces/shop/pods/zz", None).await;
        assert_eq!(code, 404, "an error keeps the connection");
        let (code, _) =
            conn.call("POST", "/api/v1/namespaces/shop/configmaps", Some(json!({"metadata": {"name": "m"}}))).await;
        assert_eq!(code, 201);
        // Two requests sent at once, and header names in any case.
        let body = json!({"metadata": {"labels": {"p": "q"}}}).to_string();
        let pipelined = format!(
            "PATCH /api/v1/namespaces/shop/pods/a HTTP/1.1\r\nCONTENT-TYPE: application/merge-patch+json\r\n\
             Content-LENGTH: {}\r\n\r\n{body}\
             GET /api/v1/namespaces/shop/pods?labelSelector=p%3Dq HTTP/1.1\r\n\r\n",
            body.len()
        );
        conn.io.get_mut().write_all(pipelined.as_bytes()).await.unwrap();
        assert_eq!(conn.response().await.0, 200);
        let (_, list) = conn.response().await;
        assert_eq!(names(&list), ["a"]);
        // A chunked body.
        let body = r#"{"metadata": {"name": "chunky"}}"#;
        let (first, second) = body.split_at(10);
        let chunked = format!(
            "POST /api/v1/namespaces/shop/configmaps HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
             {:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
            first.len(),
            second.len()
        );
        conn.io.get_mut().write_all(chunked.as_bytes()).await.unwrap();
        assert_eq!(conn.response().await.0, 201);
        assert!(api.get("v1", "configmaps", "shop", "chunky").is_some());
        // Connection: close ends it.
        conn.send("GET", "/api/v1/nodes", &[("Connection", "close")], "").await;
        assert_eq!(conn.response().await.0, 200);
        assert!(conn.closed().await);
    }

    #[tokio::test]
    async fn replace_and_leases_conflict_on_stale_versions() {
        let api = ApiServer::start().await;
        let path = "/apis/coordination.k8s.io/v1/namespaces/sys/leases";
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"},
            "spec": {"holderIdentity": "a", "leaseTransitions": 0}});
        let (code, _) = call(&api, "GET", &format!("{path}/l"), None).await;
        assert_eq!(code, 404);
        let (code, made) = call(&api, "POST", path, Some(lease.clone())).await;
        assert_eq!((code, made["metadata"]["namespace"].as_str()), (201, Some("sys")));
        let (code, status) = call(&api, "POST", path, Some(lease)).await;
        assert_eq!((code, status["reason"].as_str()), (409, Some("AlreadyExists")));
        let (code, got) = call(&api, "GET", &format!("{path}/l"), None).await;
        assert_eq!((code, &got), (200, &made));

        let mut next = got.clone();
        next["spec"]["holderIdentity"] = json!("b");
        next["spec"]["leaseTransitions"] = json!(1);
        let (code, renewed) = call(&api, "PUT", &format!("{path}/l"), Some(next.clone())).await;
        assert_eq!(code, 200);
        assert_ne!(renewed["metadata"]["resourceVersion"], got["metadata"]["resourceVersion"]);
        assert_eq!(renewed["metadata"]["uid"], got["metadata"]["uid"]);
        // The same write again comes from a stale version now.
        let (code, status) = call(&api, "PUT", &format!("{path}/l"), Some(next)).await;
        assert_eq!((code, status["reason"].as_str()), (409, Some("Conflict")));
        assert_eq!(api.leases()["sys/l"]["spec"]["holderIdentity"], "b");
        let (code, _) = call(&api, "PUT", &format!("{path}/m"), Some(json!({"metadata": {"name": "m"}}))).await;
        assert_eq!(code, 404, "no creating by PUT");
        let (code, _) = call(&api, "PUT", &format!("{path}/l"), Some(json!({"metadata": {"name": "m"}}))).await;
        assert_eq!(code, 400, "the name of the path and the object's differ");

        // Without a resourceVersion, an update is unconditional; the status subresource
        // replaces only the status.
        api.apply(pod("shop", "a", json!({}), "n1"));
        let mut unconditional = pod("shop", "a", json!({"x": "y"}), "n1");
        unconditional["status"] = json!({"phase": "Pending"});
        let (code, replaced) = call(&api, "PUT", "/api/v1/namespaces/shop/pods/a", Some(unconditional)).await;
        assert_eq!((code, replaced["metadata"]["labels"]["x"].as_str()), (200, Some("y")));
        let status = json!({"metadata": {"name": "a", "labels": {}}, "status": {"phase": "Failed"}});
        let (_, replaced) = call(&api, "PUT", "/api/v1/namespaces/shop/pods/a/status", Some(status)).await;
        assert_eq!(
            (replaced["status"]["phase"].as_str(), replaced["metadata"]["labels"]["x"].as_str()),
            (Some("Failed"), Some("y"))
        );

        // Deletion: preconditions, then gone.
        let stale = json!({"preconditions": {"resourceVersion": "1"}});
        let (code, _) = call(&api, "DELETE", "/api/v1/namespaces/shop/pods/a", Some(stale)).await;
        assert_eq!(code, 409);
        let (code, deleted) = call(&api, "DELETE", "/api/v1/namespaces/shop/pods/a", None).await;
        assert_eq!((code, deleted["metadata"]["name"].as_str()), (200, Some("a")));
        let (code, _) = call(&api, "DELETE", "/api/v1/namespaces/shop/pods/a", None).await;
        assert_eq!(code, 404);
    }

    #[tokio::test]
    async fn posted_events_are_stored_and_logged() {
        let api = ApiServer::start().await;
        let event = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "a.1", "namespace": "shop"}, "reason": "InvalidObject", "type": "Warning",
            "regarding": {"kind": "Pod", "namespace": "shop", "name": "a"}});
        let (code, _) = call(&api, "POST", "/apis/events.k8s.io/v1/namespaces/shop/events", Some(event)).await;
        assert_eq!(code, 201);
        let regarding = json!({"kind": "Pod", "name": "a"});
        let core = json!({"metadata": {"generateName": "a."}, "reason": "Old", "involvedObject": regarding});
        let (code, _) = call(&api, "POST", "/api/v1/namespaces/shop/events", Some(core)).await;
        assert_eq!(code, 201);
        let events = api.events();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["regarding"]["name"], "a");
        assert_eq!((events[1]["reason"].as_str(), events[1]["apiVersion"].as_str()), (Some("Old"), Some("v1")));
        assert!(api.get("events.k8s.io/v1", "events", "shop", "a.1").is_some());
        assert_eq!(api.objects("v1", "events").len(), 1);
        // Applied by the test, an Event is an object but no posted event.
        api.apply(json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"}}));
        assert_eq!(api.events().len(), 2);
        assert!(api.get("v1", "events", "default", "e").is_some(), "namespaced objects default to `default`");
    }

    #[tokio::test]
    async fn malformed_requests_get_a_status() {
        let api = ApiServer::start().await;
        for garbage in
            ["NONSENSE\r\n\r\n", "GET /api/v1/pods HTTP/1.1\r\ncontent-length: x\r\n\r\n", "GET /\u{0}\r\n\r\n"]
        {
            let mut conn = Conn::open(&api).await;
            conn.io.get_mut().write_all(garbage.as_bytes()).await.unwrap();
            let (code, status) = conn.response().await;
            assert_eq!((code, status["reason"].as_str()), (400, Some("BadRequest")), "{garbage:?}");
            assert!(conn.closed().await);
        }
        let mut conn = Conn::open(&api).await;
        conn.io.get_mut().write_all(b"GET /api/v1/pods HTTP/1.1\r\nbad header\r\n\r\n").await.unwrap();
        assert_eq!(conn.response().await.0, 400);
        let mut conn = Conn::open(&api).await;
        conn.io.get_mut().write_all(b"GET /api/v1/pods\xff HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(conn.response().await.0, 400);
        for path in [
            "/api/v1/pods?resourceVersion=abc",
            "/api/v1/pods?watch=true&resourceVersion=abc",
            "/api/v1/pods?watch=true&timeoutSeconds=soon",
            "/api/v1/pods?labelSelector=a%20in%20(b",
            "/api/v1/pods?labelSelector=%3Db",
            "/api/v1/pods?labelSelector=%FF",
        ] {
            let (code, status) = call(&api, "GET", path, None).await;
            assert_eq!((code, status["reason"].as_str()), (400, Some("BadRequest")), "{path}");
        }
        let (code, _) = call(&api, "PUT", "/api", None).await;
        assert_eq!(code, 405);
        let (code, version) = call(&api, "GET", "/version", None).await;
        assert_eq!((code, version["major"].as_str()), (200, Some("1")));
    }

    #[test]
    fn selectors_parse() {
        assert_eq!(
            parse_label_selector("a=b, c==d,e!=f,g,!h,i in (j, k),l notin (m)").unwrap(),
            [
                LabelTerm::Equals("a".into(), "b".into()),
                LabelTerm::Equals("c".into(), "d".into()),
                LabelTerm::NotEquals("e".into(), "f".into()),
                LabelTerm::Exists("g".into()),
                LabelTerm::Absent("h".into()),
                LabelTerm::In("i".into(), vec!["j".into(), "k".into()]),
                LabelTerm::NotIn("l".into(), vec!["m".into()]),
            ]
        );
        assert_eq!(parse_label_selector("").unwrap(), []);
        assert!(parse_label_selector("a=b=c").is_err());
        assert!(parse_label_selector("a within (b)").is_err());
        assert_eq!(
            parse_field_selector("spec.nodeName=n,metadata.name!=x").unwrap(),
            [
                FieldTerm { path: "spec.nodeName".into(), value: "n".into(), equal: true },
                FieldTerm { path: "metadata.name".into(), value: "x".into(), equal: false },
            ]
        );
        assert!(parse_field_selector("spec nodeName=n").is_err());
        assert_eq!(percent_decode("a%3Db%2Cc+d%zz%4", true).as_deref(), Some("a=b,c d%zz%4"));
        assert_eq!(percent_decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%FF", false), None);
    }

    #[test]
    fn timestamps_are_rfc_3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
