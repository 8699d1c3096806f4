//! The Kubernetes source against a local HTTP server that speaks the real list/watch protocol
//! (k8s-openapi JSON, resourceVersions, chunked watch streams, bookmarks, 410 Gone, dropped
//! connections), with the controller programming a real Northbound database: the index and the
//! network converge through every one of those.
//!
//! `real_cluster_from_kubeconfig_lists_every_kind` lists a real cluster; it needs one
//! (`KUBECONFIG`), so it is ignored unless asked for:
//! `KUBECONFIG=... cargo test -p stacknet-controller --test kube_watch -- --ignored real_cluster_from_kubeconfig`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use stacknet_controller::{Controller, ControllerConfig, kube_source};
use stacknet_engine::Reason;
use stacknet_sandbox::Ovn;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::broadcast;

const DEADLINE: Duration = Duration::from_secs(30);

/// Resource path → (kind, apiVersion).
const RESOURCES: [(&str, &str, &str); 8] = [
    ("/api/v1/namespaces", "Namespace", "v1"),
    ("/api/v1/nodes", "Node", "v1"),
    ("/api/v1/pods", "Pod", "v1"),
    ("/api/v1/services", "Service", "v1"),
    ("/apis/discovery.k8s.io/v1/endpointslices", "EndpointSlice", "discovery.k8s.io/v1"),
    ("/apis/networking.k8s.io/v1/networkpolicies", "NetworkPolicy", "networking.k8s.io/v1"),
    ("/apis/k8s.cni.cncf.io/v1/network-attachment-definitions", "NetworkAttachmentDefinition", "k8s.cni.cncf.io/v1"),
    ("/apis/k8s.cni.cncf.io/v1beta1/multi-networkpolicies", "MultiNetworkPolicy", "k8s.cni.cncf.io/v1beta1"),
];

/// Multus's CRDs: not served unless a test installs them.
const CRDS: [&str; 2] =
    ["/apis/k8s.cni.cncf.io/v1/network-attachment-definitions", "/apis/k8s.cni.cncf.io/v1beta1/multi-networkpolicies"];

#[derive(Default)]
struct Store {
    rv: u64,
    /// Watches from before this resourceVersion get 410 Gone.
    compacted: u64,
    objects: BTreeMap<(String, String), Value>,
    log: Vec<(u64, String, &'static str, Value)>,
    /// (resource, resourceVersion) of every watch request, and every list request.
    watches: Vec<(String, u64)>,
    lists: Vec<String>,
    /// coordination.k8s.io Leases by namespace/name.
    leases: BTreeMap<String, Value>,
    /// events.k8s.io Events posted.
    events: Vec<Value>,
    /// Merge patches received (namespace/name; `status:namespace/name` for a status).
    patches: Vec<String>,
    /// (resource, resourceVersion) of every bookmark written to a watch stream.
    bookmarks: Vec<(String, u64)>,
    /// Whether Multus's CRDs are installed (else their paths are 404 Not Found).
    crds: bool,
}

#[derive(Clone, Debug)]
enum Notice {
    Changed,
    Bookmark,
    Drop,
}

#[derive(Clone)]
struct ApiServer {
    store: Arc<Mutex<Store>>,
    notices: broadcast::Sender<Notice>,
    url: String,
}

fn resource_of(kind: &str) -> &'static str {
    RESOURCES.iter().find(|r| r.1 == kind).expect("known kind").0
}

impl ApiServer {
    async fn start() -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = ApiServer { store: Arc::default(), notices: broadcast::channel(1024).0, url };
        let s = server.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(s.clone().serve(conn));
            }
        });
        server
    }

    fn apply(&self, mut obj: Value) {
        let kind = obj["kind"].as_str().unwrap().to_string();
        let resource = resource_of(&kind).to_string();
        let key = format!(
            "{}/{}",
            obj["metadata"]["namespace"].as_str().unwrap_or(""),
            obj["metadata"]["name"].as_str().unwrap()
        );
        let mut st = self.store.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let kind_of_event =
            if st.objects.insert((resource.clone(), key), obj.clone()).is_some() { "MODIFIED" } else { "ADDED" };
        st.log.push((rv, resource, kind_of_event, obj));
        drop(st);
        let _ = self.notices.send(Notice::Changed);
    }

    fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let resource = resource_of(kind).to_string();
        let mut st = self.store.lock().unwrap();
        let mut obj = st.objects.remove(&(resource.clone(), format!("{namespace}/{name}"))).expect("exists");
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.log.push((rv, resource, "DELETED", obj));
        drop(st);
        let _ = self.notices.send(Notice::Changed);
    }

    /// Closes every watch stream (a dropped connection).
    fn drop_watches(&self) {
        let _ = self.notices.send(Notice::Drop);
    }

    /// Deletes an object without telling the open watches, and forgets history in the same
    /// step: no watch can stream the deletion, every watch (open or resumed) from an older
    /// resourceVersion gets 410 Gone, so only a relist can show the object gone.
    fn delete_and_compact(&self, kind: &str, namespace: &str, name: &str) {
        let resource = resource_of(kind).to_string();
        let mut st = self.store.lock().unwrap();
        st.objects.remove(&(resource, format!("{namespace}/{name}"))).expect("exists");
        st.rv += 1;
        st.compacted = st.rv;
    }

    fn bookmark(&self) -> u64 {
        let rv = {
            let mut st = self.store.lock().unwrap();
            st.rv += 1;
            st.rv
        };
        let _ = self.notices.send(Notice::Bookmark);
        rv
    }

    async fn serve(self, conn: tokio::net::TcpStream) {
        let (read, mut write) = conn.into_split();
        let mut read = BufReader::new(read);
        loop {
            let mut line = String::new();
            if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let mut length = 0usize;
            loop {
                let mut h = String::new();
                if read.read_line(&mut h).await.unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some((k, v)) = h.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; length];
            if tokio::io::AsyncReadExt::read_exact(&mut read, &mut body).await.is_err() {
                return;
            }
            let method = line.split_whitespace().next().unwrap_or("GET").to_string();
            let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            if method == "POST" && target.starts_with("/apis/events.k8s.io/v1/namespaces/") {
                let ev: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                self.store.lock().unwrap().events.push(ev.clone());
                let text = ev.to_string();
                if !reply(&mut write, 201, &text).await {
                    return;
                }
                continue;
            }
            if method == "PATCH" && target.starts_with("/api/v1/namespaces/") {
                // /api/v1/namespaces/{ns}/pods/{name}: a merge patch of annotations;
                // /api/v1/namespaces/{ns}/services/{name}/status: of the status.
                let parts: Vec<&str> = target.split('?').next().unwrap_or("").split('/').collect();
                let (ns, resource, name) = (parts[4].to_string(), parts[5].to_string(), parts[6].to_string());
                let status = parts.get(7) == Some(&"status");
                let patch: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let updated = {
                    let mut st = self.store.lock().unwrap();
                    st.patches.push(format!("{}{ns}/{name}", if status { "status:" } else { "" }));
                    st.objects.get(&(format!("/api/v1/{resource}"), format!("{ns}/{name}"))).cloned()
                };
                let (code, answer) = match updated {
                    None => (
                        404,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound"}),
                    ),
                    Some(mut obj) if status => {
                        obj["status"] = patch["status"].clone();
                        self.apply(obj.clone());
                        (200, obj)
                    }
                    Some(mut obj) => {
                        for (k, v) in patch["metadata"]["annotations"].as_object().cloned().unwrap_or_default() {
                            obj["metadata"]["annotations"][k] = v;
                        }
                        self.apply(obj.clone());
                        (200, obj)
                    }
                };
                let text = answer.to_string();
                if !reply(&mut write, code, &text).await {
                    return;
                }
                continue;
            }
            if target.starts_with("/apis/coordination.k8s.io/") {
                let (code, answer) = self.lease(&method, &target, &body);
                let text = answer.to_string();
                if !reply(&mut write, code, &text).await {
                    return;
                }
                continue;
            }
            let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
            let params: BTreeMap<&str, &str> = query.split('&').filter_map(|kv| kv.split_once('=')).collect();
            let served = |p: &str| !CRDS.contains(&p) || self.store.lock().unwrap().crds;
            let Some(&(resource, kind, api_version)) = RESOURCES.iter().find(|r| r.0 == path && served(path)) else {
                let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound"}).to_string();
                if !reply(&mut write, 404, &body).await {
                    return;
                }
                continue;
            };
            if params.get("watch").is_some_and(|w| *w == "true" || *w == "1") {
                let from: u64 = params.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
                self.watch(&mut write, resource, kind, api_version, from).await;
                return;
            }
            let body = {
                let mut st = self.store.lock().unwrap();
                st.lists.push(resource.to_string());
                let items: Vec<Value> =
                    st.objects.iter().filter(|((r, _), _)| r == resource).map(|(_, v)| v.clone()).collect();
                json!({"kind": format!("{kind}List"), "apiVersion": api_version, "metadata": {"resourceVersion": st.rv.to_string()}, "items": items})
                    .to_string()
            };
            if !reply(&mut write, 200, &body).await {
                return;
            }
        }
    }

    /// Leases: GET, POST (409 if it exists), PUT (409 unless the resourceVersion is current).
    fn lease(&self, method: &str, target: &str, body: &[u8]) -> (u16, Value) {
        let status = |code: u16, reason: &str| {
            (
                code,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": reason}),
            )
        };
        let parts: Vec<&str> = target.split('?').next().unwrap_or("").split('/').collect();
        // ["", "apis", "coordination.k8s.io", "v1", "namespaces", ns, "leases", name?]
        let ns = parts.get(5).copied().unwrap_or("");
        let mut st = self.store.lock().unwrap();
        match (method, parts.get(7)) {
            ("GET", Some(name)) => match st.leases.get(&format!("{ns}/{name}")) {
                Some(l) => (200, l.clone()),
                None => status(404, "NotFound"),
            },
            ("POST", None) => {
                let mut l: Value = serde_json::from_slice(body).unwrap();
                let key = format!("{ns}/{}", l["metadata"]["name"].as_str().unwrap());
                if st.leases.contains_key(&key) {
                    return status(409, "AlreadyExists");
                }
                st.rv += 1;
                l["metadata"]["resourceVersion"] = json!(st.rv.to_string());
                l["metadata"]["namespace"] = json!(ns);
                st.leases.insert(key, l.clone());
                (201, l)
            }
            ("PUT", Some(name)) => {
                let mut l: Value = serde_json::from_slice(body).unwrap();
                let key = format!("{ns}/{name}");
                let current = st.leases.get(&key).map(|c| c["metadata"]["resourceVersion"].clone());
                if current.as_ref() != Some(&l["metadata"]["resourceVersion"]) {
                    return status(409, "Conflict");
                }
                st.rv += 1;
                l["metadata"]["resourceVersion"] = json!(st.rv.to_string());
                st.leases.insert(key, l.clone());
                (200, l)
            }
            _ => status(405, "MethodNotAllowed"),
        }
    }

    async fn watch(
        &self,
        write: &mut tokio::net::tcp::OwnedWriteHalf,
        resource: &str,
        kind: &str,
        api_version: &str,
        from: u64,
    ) {
        let mut notices = self.notices.subscribe();
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        if write.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = |v: Value| {
            let line = format!("{v}\n");
            format!("{:x}\r\n{line}\r\n", line.len())
        };
        let gone = {
            let mut st = self.store.lock().unwrap();
            st.watches.push((resource.to_string(), from));
            from < st.compacted
        };
        if gone {
            let status = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired", "message": format!("too old resource version: {from}")}});
            let _ = write.write_all(chunk(status).as_bytes()).await;
            let _ = write.write_all(b"0\r\n\r\n").await;
            return;
        }
        let mut sent = from;
        loop {
            let pending: Option<Vec<(u64, Value)>> = {
                let st = self.store.lock().unwrap();
                (sent >= st.compacted).then(|| {
                    st.log
                        .iter()
                        .filter(|(rv, r, _, _)| *rv > sent && r == resource)
                        .map(|(rv, _, t, o)| (*rv, json!({"type": t, "object": o})))
                        .collect()
                })
            };
            let Some(pending) = pending else {
                // Compacted under an open watch: it ends with 410 Gone.
                let status = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired", "message": format!("too old resource version: {sent}")}});
                let _ = write.write_all(chunk(status).as_bytes()).await;
                let _ = write.write_all(b"0\r\n\r\n").await;
                return;
            };
            for (rv, ev) in pending {
                if write.write_all(chunk(ev).as_bytes()).await.is_err() {
                    return;
                }
                sent = rv;
            }
            match notices.recv().await {
                Ok(Notice::Changed) => {}
                Ok(Notice::Bookmark) => {
                    let rv = self.store.lock().unwrap().rv;
                    let bm = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv.to_string()}}});
                    if write.write_all(chunk(bm).as_bytes()).await.is_err() {
                        return;
                    }
                    self.store.lock().unwrap().bookmarks.push((resource.to_string(), rv));
                    sent = sent.max(rv);
                }
                Ok(Notice::Drop) | Err(_) => return,
            }
        }
    }
}

/// Writes one JSON response (the connection stays open for the next request); false if the
/// client has gone.
async fn reply(write: &mut tokio::net::tcp::OwnedWriteHalf, code: u16, body: &str) -> bool {
    let head = format!("HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    write.write_all(head.as_bytes()).await.is_ok() && write.write_all(body.as_bytes()).await.is_ok()
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "uid": format!("ns-{name}")}})
}

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "uid": format!("node-{name}")}, "spec": {"podCIDR": "10.44.0.0/24"}})
}

fn pod(name: &str, tier: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"), "labels": {"tier": tier}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 5432, "name": "pg"}]}]},
        "status": {"phase": "Running"}})
}

/// An API server holding namespace `shop`, node `n1` and `pods` (name, tier) on it.
async fn shop(pods: &[(&str, &str)]) -> ApiServer {
    let api = ApiServer::start().await;
    api.apply(namespace("shop"));
    api.apply(node("n1"));
    for (name, tier) in pods {
        api.apply(pod(name, tier));
    }
    api
}

fn policy() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "db", "namespace": "shop", "uid": "np-db"},
        "spec": {"podSelector": {"matchLabels": {"tier": "db"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": "web"}}}], "ports": [{"port": "pg"}]}]}})
}

fn pod_ports(ovn: &Ovn) -> Vec<String> {
    let out = ovn
        .nbctl(&["--bare", "--columns=name", "find", "Logical_Switch_Port", "external_ids:stacknet.io/owner-kind=Pod"])
        .unwrap();
    let mut v: Vec<String> = out.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect();
    v.sort();
    v
}

/// The ACLs of policies (not the nodes' own allows).
fn acls(ovn: &Ovn) -> usize {
    let not_nodes = "external_ids:stacknet.io/owner-kind!=Node";
    ovn.nbctl(&["--bare", "--columns=_uuid", "find", "ACL", "external_ids:stacknet.io/cluster=k8s", not_nodes])
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// A controller on `api` as deployed: the watch, Events posted, write-backs patched; runs until
/// the test ends.
fn run_controller(api: &ApiServer, config: &ControllerConfig) -> stacknet_controller::Observed {
    let controller = Controller::ovn(config, &kube_source::sources()).unwrap();
    let observed = controller.observed();
    stacknet_controller::kube_source::install_tls_provider();
    let client = kube::Client::try_from(kube::Config::new(api.url.parse().unwrap())).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(kube_source::run(client.clone(), tx, observed.events.clone()));
    let (sink, published) = tokio::sync::mpsc::unbounded_channel();
    observed.events.set_sink(sink);
    tokio::spawn(kube_source::publish_events(client.clone(), published, "test-replica".into(), None));
    let (annotate, annotations) = tokio::sync::mpsc::unbounded_channel();
    let controller = controller.with_annotations(annotate);
    tokio::spawn(kube_source::write_back(client, annotations));
    tokio::spawn(controller.run(rx, std::future::pending()));
    observed
}

async fn until(what: &str, ready: impl FnMut() -> bool) {
    stacknet_testsupport::until(what, DEADLINE, ready).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_follows_the_watch_through_bookmarks_drops_and_410() {
    let api = shop(&[("a", "web"), ("b", "db")]).await;
    api.apply(policy());

    let ovn = Ovn::nb_only().unwrap();
    let mut config = ControllerConfig::new("k8s", vec![ovn.nb.remote().parse().unwrap()], None);
    config.gateways = Some(stacknet_controller::GatewaySettings {
        external: "172.30.0.0/24".parse().unwrap(),
        next_hop: Some("172.30.0.1".parse().unwrap()),
        join: "100.64.0.0/16".parse().unwrap(),
        snat: true,
        physnet: "external".into(),
        lb_pools: vec!["172.30.0.200/29".parse().unwrap()],
    });
    let observed = run_controller(&api, &config);

    // The lists: the network as the cluster is.
    until("ready", || observed.health.ready.load(Ordering::SeqCst)).await;
    assert_eq!(pod_ports(&ovn), ["k8s_shop_a", "k8s_shop_b"]);
    assert!(acls(&ovn) > 0, "the policy's ACLs");
    let addresses =
        ovn.nbctl(&["--bare", "--columns=addresses", "find", "Logical_Switch_Port", "name=k8s_shop_a"]).unwrap();
    assert!(addresses.contains("10.44.0.3"), "the node's podCIDR (.1 router, .2 management): {addresses}");

    // Each pod's network is written back as its annotation, once (the echo changes nothing).
    let annotation = |name: &str| {
        let st = api.store.lock().unwrap();
        st.objects
            .get(&("/api/v1/pods".to_string(), format!("shop/{name}")))
            .and_then(|o| o["metadata"]["annotations"]["stacknet.io/network"].as_str().map(str::to_string))
    };
    until("pod a's annotation", || annotation("a").is_some()).await;
    let net: Value = serde_json::from_str(&annotation("a").unwrap()).unwrap();
    assert_eq!(net["ips"], json!(["10.44.0.3/24"]));
    assert_eq!(net["gateways"], json!(["10.44.0.1"]));
    assert_eq!(net["logicalPort"], "k8s_shop_a");
    assert_eq!(net["mac"], "0a:58:0a:2c:00:03");
    until("pod b's annotation", || annotation("b").is_some()).await;
    // The echo of a patch must not cause another: nothing to wait on, so a window in which
    // a loop would have patched again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.store.lock().unwrap().patches.len(), 2, "one patch per pod, no loop");

    // A LoadBalancer Service of ours gets an address from --lb-pool (its first host) in its
    // status, once; one
    // of another loadBalancerClass is left alone.
    let lb = |name: &str, class: Option<&str>| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop", "uid": format!("svc-{name}")},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.20", "loadBalancerClass": class, "selector": {"tier": "web"},
                     "ports": [{"port": 80, "nodePort": 30080}]}})
    };
    api.apply(lb("front", None));
    api.apply(lb("metallb", Some("metallb.io/metallb")));
    let ingress = |name: &str| {
        let st = api.store.lock().unwrap();
        st.objects
            .get(&("/api/v1/services".to_string(), format!("shop/{name}")))
            .map(|o| o["status"]["loadBalancer"]["ingress"].clone())
    };
    until("shop/front's load balancer address", || {
        ingress("front") == Some(json!([{"ip": "172.30.0.201", "ipMode": "VIP"}]))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let patches = api.store.lock().unwrap().patches.clone();
    assert_eq!(
        patches.iter().filter(|p| p.starts_with("status:")).collect::<Vec<_>>(),
        ["status:shop/front"],
        "once, ours only"
    );
    assert_eq!(ingress("metallb"), Some(Value::Null), "another class's Service is not ours to write");
    api.delete("Service", "shop", "front");
    api.delete("Service", "shop", "metallb");

    // The watch: a new pod.
    api.apply(pod("c", "web"));
    until("pod c", || pod_ports(&ovn).len() == 3).await;

    // A bookmark, then a dropped connection; a pod created meanwhile arrives on the resumed
    // watch, which starts from the bookmark, not from the start.
    let bookmark = api.bookmark();
    until("the bookmark on the pods' watch", || {
        api.store.lock().unwrap().bookmarks.iter().any(|(r, rv)| r == "/api/v1/pods" && *rv >= bookmark)
    })
    .await;
    api.drop_watches();
    api.apply(pod("d", "web"));
    until("pod d after the reconnect", || pod_ports(&ovn).len() == 4).await;
    let pod_watches: Vec<u64> =
        api.store.lock().unwrap().watches.iter().filter(|w| w.0 == "/api/v1/pods").map(|w| w.1).collect();
    assert!(
        pod_watches.len() >= 2 && *pod_watches.last().unwrap() >= bookmark,
        "resumed from {pod_watches:?}, bookmark {bookmark}"
    );
    let lists_before = api.store.lock().unwrap().lists.len();

    // History compacted while the watch was down, and a pod deleted then: the watch gets
    // 410 Gone, the watcher relists, and the relist's absence of the pod deletes its port.
    api.delete_and_compact("Pod", "shop", "a");
    api.drop_watches();
    until("pod a gone after the relist", || pod_ports(&ovn) == ["k8s_shop_b", "k8s_shop_c", "k8s_shop_d"]).await;
    assert!(api.store.lock().unwrap().lists.len() > lists_before, "a relist happened");

    // Policies follow too; an invalid object is an event, not a crash.
    api.delete("NetworkPolicy", "shop", "db");
    until("the policy's ACLs gone", || acls(&ovn) == 0).await;
    let mut bad = pod("e", "web");
    bad["metadata"]["labels"] = json!({"tier": "not a valid label value!"});
    api.apply(bad);
    until("an InvalidObject event", || !observed.events.with_reason(Reason::InvalidObject).is_empty()).await;
    let e = &observed.events.with_reason(Reason::InvalidObject)[0];
    assert_eq!(e.object.to_string(), "Pod shop/e");
    assert!(e.message.contains("metadata.labels.tier"), "{}", e.message);
    // ... posted to the API server as an Event on that pod.
    let invalid = || api.store.lock().unwrap().events.iter().find(|e| e["reason"] == "InvalidObject").cloned();
    until("the Event posted", || invalid().is_some()).await;
    let posted = invalid().unwrap();
    assert_eq!(posted["regarding"]["kind"], "Pod");
    assert_eq!(posted["regarding"]["namespace"], "shop");
    assert_eq!(posted["regarding"]["name"], "e");
    assert_eq!(posted["reason"], "InvalidObject");
    assert_eq!(posted["type"], "Warning");
    assert_eq!(posted["reportingController"], "stacknet.io/controller");
    assert_eq!(pod_ports(&ovn).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: KUBECONFIG"]
async fn real_cluster_from_kubeconfig_lists_every_kind() {
    stacknet_controller::kube_source::install_tls_provider();
    let client = kube::Client::try_default().await.expect("a client from KUBECONFIG");
    let (tx, mut rx) = tokio::sync::mpsc::channel(100_000);
    let events = Arc::new(stacknet_controller::events::Events::new());
    tokio::spawn(kube_source::run(client, tx, events));
    let mut synced = std::collections::BTreeSet::new();
    let mut namespaces = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while synced.len() < kube_source::sources().len() {
        let c = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("every kind listed within 60 s")
            .expect("source alive");
        match c {
            stacknet_controller::Change::Synced(s) => {
                synced.insert(s);
            }
            stacknet_controller::Change::Apply(stacknet_engine::objects::ClusterObject::Namespace(_)) => {
                namespaces += 1
            }
            _ => {}
        }
    }
    assert!(namespaces > 0, "a real cluster has namespaces");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_writes_and_the_standby_takes_over() {
    use stacknet_controller::leader::{self, LeaseConfig};
    let api = shop(&[("a", "web")]).await;
    let ovn = Ovn::nb_only().unwrap();

    struct Replica {
        observed: stacknet_controller::Observed,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    }
    let start = |identity: &str| {
        let config = ControllerConfig::new("k8s", vec![ovn.nb.remote().parse().unwrap()], None);
        stacknet_controller::kube_source::install_tls_provider();
        let client = kube::Client::try_from(kube::Config::new(api.url.parse().unwrap())).unwrap();
        let mut cfg = LeaseConfig::new("stacknet-system", identity);
        cfg.duration = Duration::from_secs(2);
        cfg.renew = Duration::from_millis(200);
        let (leading, rx) = tokio::sync::watch::channel(false);
        let controller = Controller::ovn(&config, &kube_source::sources()).unwrap().with_leader(rx);
        let observed = controller.observed();
        let (tx, changes) = tokio::sync::mpsc::channel(1024);
        let tasks = vec![
            tokio::spawn(kube_source::run(client.clone(), tx, observed.events.clone())),
            tokio::spawn(leader::run(client, cfg, leading)),
            tokio::spawn(controller.run(changes, std::future::pending())),
        ];
        Replica { observed, tasks }
    };
    let a = start("replica-a");
    let b = start("replica-b");
    until("one pod port", || pod_ports(&ovn).len() == 1).await;
    let leader_of = |r: &Replica| r.observed.metrics.leader.load(Ordering::Relaxed);
    until("a leader", || leader_of(&a) + leader_of(&b) > 0).await;
    // The standby must not lead nor write: a window of three of its tries at the Lease
    // (every 200 ms).
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(leader_of(&a) + leader_of(&b), 1, "exactly one leader");
    let (leader, standby) = if leader_of(&a) == 1 { (a, b) } else { (b, a) };
    assert!(leader.observed.metrics.transactions.load(Ordering::Relaxed) > 0);
    assert_eq!(standby.observed.metrics.transactions.load(Ordering::Relaxed), 0, "the standby wrote");
    assert!(standby.observed.health.ready.load(Ordering::SeqCst), "a standby is ready (it serves as soon as it leads)");

    // The leader dies without a word; within the lease's duration the standby writes.
    for t in &leader.tasks {
        t.abort();
    }
    api.apply(pod("b", "db"));
    until("pod b, written by the former standby", || pod_ports(&ovn).len() == 2).await;
    assert_eq!(leader_of(&standby), 1);
    assert!(standby.observed.metrics.transactions.load(Ordering::Relaxed) > 0);
    let lease = api.store.lock().unwrap().leases["stacknet-system/stacknet-controller"].clone();
    assert_eq!(lease["spec"]["leaseTransitions"], 1, "{lease}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_networks_from_the_api_with_their_network_status_and_events() {
    let api = shop(&[]).await;
    api.store.lock().unwrap().crds = true;
    let nad = |name: &str, config: &str| {
        json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": "shop", "uid": format!("nad-{name}")}, "spec": {"config": config}})
    };
    api.apply(nad("data", r#"{"cniVersion": "1.1.0", "name": "data", "type": "stacknet-cni", "topology": "layer2", "subnets": "10.100.0.0/24"}"#));
    api.apply(nad("bad", r#"{"name": "bad", "type": "stacknet-cni", "topology": "layer2", "vlanID": 7}"#));
    let with_networks = |name: &str, networks: &str| {
        let mut p = pod(name, "nf");
        p["metadata"]["annotations"] = json!({"k8s.v1.cni.cncf.io/networks": networks});
        p
    };
    api.apply(with_networks("nf", "data"));
    api.apply(with_networks("lost", "missing"));
    api.apply(json!({"apiVersion": "k8s.cni.cncf.io/v1beta1", "kind": "MultiNetworkPolicy",
        "metadata": {"name": "iso", "namespace": "shop", "uid": "mnp-iso", "annotations": {"k8s.v1.cni.cncf.io/policy-for": "data"}},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}));

    let ovn = Ovn::nb_only().unwrap();
    let config = ControllerConfig::new("k8s", vec![ovn.nb.remote().parse().unwrap()], None);
    run_controller(&api, &config);

    // The data network and nf's port on it; the MultiNetworkPolicy's port group holds it.
    until("nf's port on the data network", || pod_ports(&ovn).contains(&"k8s_shop_nf_net1".to_string())).await;
    let switch = ovn.nbctl(&["--bare", "--columns=name", "find", "Logical_Switch", "name=k8s_net_shop_data"]).unwrap();
    assert_eq!(switch.trim(), "k8s_net_shop_data");
    let groups = ovn
        .nbctl(&["--bare", "--columns=ports", "find", "Port_Group", "external_ids:stacknet.io/owner-kind=Namespace"])
        .unwrap();
    assert!(!groups.trim().is_empty(), "the data network's default deny holds nf's port");

    // nf's network-status, written once with the API.
    let status = || {
        let st = api.store.lock().unwrap();
        st.objects.get(&("/api/v1/pods".to_string(), "shop/nf".to_string())).and_then(|o| {
            o["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"].as_str().map(str::to_string)
        })
    };
    until("nf's network-status", || status().is_some()).await;
    let v: Value = serde_json::from_str(&status().unwrap()).unwrap();
    assert_eq!(v[0]["name"], "stacknet");
    assert_eq!((v[0]["interface"].as_str(), v[0]["default"].as_bool()), (Some("eth0"), Some(true)));
    assert_eq!(v[1]["name"], "shop/data");
    assert_eq!(v[1]["interface"], "net1");
    assert_eq!(v[1]["ips"], json!(["10.100.0.1"]));
    assert_eq!(v[1]["mac"], "0a:58:0a:64:00:01");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let patches: Vec<String> = api.store.lock().unwrap().patches.iter().filter(|p| *p == "shop/nf").cloned().collect();
    assert_eq!(patches.len(), 2, "its network annotation and its network-status, once each: {patches:?}");

    // The pod selecting a NAD that does not exist, and the NAD that does not parse: Events.
    let posted = |reason: &str| api.store.lock().unwrap().events.iter().find(|e| e["reason"] == reason).cloned();
    until("AttachmentFailed posted", || posted("AttachmentFailed").is_some()).await;
    let e = posted("AttachmentFailed").unwrap();
    assert_eq!((e["regarding"]["kind"].as_str(), e["regarding"]["name"].as_str()), (Some("Pod"), Some("lost")));
    assert!(e["note"].as_str().unwrap().contains("NetworkAttachmentDefinition shop/missing does not exist"), "{e}");
    until("InvalidNetworkAttachment posted", || posted("InvalidNetworkAttachment").is_some()).await;
    let e = posted("InvalidNetworkAttachment").unwrap();
    assert_eq!(e["regarding"]["kind"], "NetworkAttachmentDefinition");
    assert_eq!(e["regarding"]["apiVersion"], "k8s.cni.cncf.io/v1");
    assert!(e["note"].as_str().unwrap().contains("spec.config.vlanID"), "{e}");
    assert!(!pod_ports(&ovn).iter().any(|p| p.starts_with("k8s_shop_lost_")), "nothing half-made for lost");
}
