//! The entrypoint against a local server speaking the Kubernetes list/watch protocol
//! (`stacknet_testsupport::kubeapi`), run as a container runs it (KUBECONFIG pointing there):
//! every kind of dependency met one after another, the pod's annotation and Events on the way,
//! the command started once the last is met; a Job judged by its latest run; a DaemonSet with
//! no pod on this node not met; a custom resource whose CRD comes later; the timeout.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stacknet_testsupport::kubeapi::ApiServer;

const BIN: &str = env!("CARGO_BIN_EXE_stacknet-entrypoint");
const NS: &str = "openstack";

fn entrypoint(kubeconfig: &Path, vars: &[(&str, String)]) -> Child {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAME", "me")
        .env("NAMESPACE", NS)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in vars {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

/// This pod, on node n1, its sidecar not ready yet.
fn me(sidecar_ready: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "me", "namespace": NS, "uid": "uid-me"},
        "spec": {"nodeName": "n1", "containers": [{"name": "main"}, {"name": "sidecar"}]},
        "status": {"containerStatuses": [{"name": "sidecar", "ready": sidecar_ready, "restartCount": 0, "image": "i", "imageID": ""}]}})
}

fn pod(name: &str, node: &str, labels: Value, ready: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c"}]},
        "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
}

fn job(name: &str, at: &str, complete: bool) -> Value {
    let status = if complete {
        json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
    } else {
        json!({"active": 1})
    };
    json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": NS, "labels": {"component": "db-sync"}, "creationTimestamp": at},
        "spec": {"template": {"spec": {"containers": []}}}, "status": status})
}

/// What the pod's annotation says it waits for (`None`: no annotation yet).
fn waiting(api: &ApiServer) -> Option<Vec<String>> {
    let me = api.get("v1", "pods", NS, "me")?;
    let text = me["metadata"]["annotations"]["stacknet.io/waiting-for"].as_str()?.to_string();
    Some(serde_json::from_str(&text).unwrap())
}

async fn until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the annotation lists exactly `n` lines, the one containing `still` among them.
async fn still_waiting(api: &ApiServer, n: usize, still: &str) {
    until(&format!("{n} unmet, {still} among them"), Duration::from_secs(10), || {
        waiting(api).is_some_and(|w| w.len() == n && w.iter().any(|l| l.contains(still)))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_met_in_turn_then_the_command_starts() {
    let api = ApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = api.kubeconfig(dir.path(), Some(NS)).unwrap();
    api.apply(me(false));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let started = dir.path().join("started");
    let vars = [
        ("COMMAND", format!("touch {}", started.display())),
        ("DEPENDENCY_SERVICE", "keystone-api".into()),
        ("DEPENDENCY_JOBS_JSON", r#"[{"labels": {"component": "db-sync"}}]"#.into()),
        ("DEPENDENCY_DAEMONSET", "ovs".into()),
        ("DEPENDENCY_POD_JSON", r#"[{"labels": {"app": "ovn"}, "requireSameNode": true}]"#.into()),
        ("DEPENDENCY_CONTAINER", "sidecar".into()),
        (
            "DEPENDENCY_CUSTOM_RESOURCE",
            r#"[{"apiVersion": "k8s.mariadb.com/v1alpha1", "kind": "Connection", "name": "nova", "conditions": [{"type": "Ready"}]}]"#.into(),
        ),
    ];
    let mut child = entrypoint(&config, &vars);
    still_waiting(&api, 6, "Service openstack/keystone-api: no ready endpoint").await;
    let lines = waiting(&api).unwrap();
    assert!(lines.iter().any(|l| l == "Connection openstack/nova (k8s.mariadb.com/v1alpha1): the API serves no kind Connection in k8s.mariadb.com/v1alpha1"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "container sidecar: not ready"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "DaemonSet openstack/ovs: it does not exist"), "{lines:?}");

    // The Service: an endpoint that does not answer yet, then does.
    api.apply(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "keystone-api-x", "namespace": NS, "labels": {"kubernetes.io/service-name": "keystone-api"}},
        "addressType": "IPv4", "ports": [{"port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]}));
    still_waiting(&api, 6, "none accepts a TCP connection").await;
    let _keystone = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    still_waiting(&api, 5, "Job").await;

    // The Job: an old run succeeded, the latest still runs; then it completes.
    // (The latest first: the old one alone would be met, for a moment.)
    api.apply(job("db-sync-2", "2026-02-01T00:00:00Z", false));
    api.apply(job("db-sync-1", "2026-01-01T00:00:00Z", true));
    still_waiting(&api, 5, "Job db-sync-2 has not completed").await;
    api.apply(job("db-sync-2", "2026-02-01T00:00:00Z", true));
    still_waiting(&api, 4, "DaemonSet").await;

    // The DaemonSet: its pod elsewhere is not this node's.
    api.apply(json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "ovs", "namespace": NS},
        "spec": {"selector": {"matchLabels": {"app": "ovs"}}, "template": {"spec": {"containers": []}}}}));
    api.apply(pod("ovs-b", "n2", json!({"app": "ovs"}), true));
    still_waiting(&api, 4, "DaemonSet openstack/ovs: no pod of it on node n1").await;
    api.apply(pod("ovs-a", "n1", json!({"app": "ovs"}), true));
    still_waiting(&api, 3, "pod in openstack with labels app=ovn on this node").await;

    // The pod on this node, the container, and the custom resource whose CRD comes now.
    api.apply(pod("ovn-a", "n1", json!({"app": "ovn"}), true));
    still_waiting(&api, 2, "container sidecar").await;
    api.apply(me(true));
    still_waiting(&api, 1, "Connection").await;
    api.register("k8s.mariadb.com/v1alpha1", "connections", "Connection", true);
    api.apply(json!({"apiVersion": "k8s.mariadb.com/v1alpha1", "kind": "Connection", "metadata": {"name": "nova", "namespace": NS},
        "status": {"conditions": [{"type": "Ready", "status": "False"}]}}));
    still_waiting(&api, 1, "condition Ready is False, not True").await;
    assert!(!started.exists(), "the command waits for the last one");
    api.apply(json!({"apiVersion": "k8s.mariadb.com/v1alpha1", "kind": "Connection", "metadata": {"name": "nova", "namespace": NS},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}}));
    until("the command ran", Duration::from_secs(10), || started.exists()).await;
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");

    assert_eq!(waiting(&api), Some(vec![]), "nothing left to wait for");
    let reasons: Vec<String> =
        api.events().iter().map(|e| e["reason"].as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(reasons.first().map(String::as_str), Some("DependenciesPending"), "{reasons:?}");
    let notes: Vec<String> = api.events().iter().map(|e| e["note"].as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(reasons.iter().filter(|r| *r == "DependencyMet").count(), 6, "{notes:?}");
    assert_eq!(reasons.last().map(String::as_str), Some("DependenciesMet"), "{reasons:?}");
    let e = &api.events()[0];
    assert_eq!(
        (e["regarding"]["name"].as_str(), e["reportingController"].as_str()),
        (Some("me"), Some("stacknet.io/entrypoint"))
    );
    // Watched, not listed over and over: one list per watch, however long it waited.
    assert!(api.lists().len() <= 12, "{:?}", api.lists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_says_what_is_missing_on_the_pod_too() {
    let api = ApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = api.kubeconfig(dir.path(), Some(NS)).unwrap();
    api.apply(me(true));
    let vars = [
        ("COMMAND", "true".to_string()),
        ("DEPENDENCY_SERVICE", "rabbitmq".into()),
        ("DEPENDENCY_JOBS", "nova-db-sync".into()),
        ("DEPENDENCY_TIMEOUT", "1".into()),
    ];
    let out = entrypoint(&config, &vars).wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let tail: Vec<&str> = err.lines().skip_while(|l| !l.contains("timed out")).collect();
    assert_eq!(
        tail,
        [
            "stacknet entrypoint: timed out after 1s; not met:",
            "  Service openstack/rabbitmq: no ready endpoint",
            "  Job openstack/nova-db-sync: no such Job",
        ]
    );
    let warning = api.events().into_iter().find(|e| e["reason"] == "DependencyTimeout").expect("a timeout Event");
    assert_eq!(warning["type"], "Warning");
    assert!(warning["note"].as_str().unwrap().contains("Service openstack/rabbitmq: no ready endpoint"), "{warning}");
}
