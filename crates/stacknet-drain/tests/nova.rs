//! The compute drain against a real Nova (the sandbox's: nova-api, conductor, scheduler and two
//! nova-compute processes with the fake driver, Keystone, Placement, Glance, Neutron) and a
//! local Kubernetes list/watch server holding the two Nodes. One cloud for the whole story,
//! told in order: the holds before any cordon; a cordon drains compute-1 (the service disabled
//! with the reason, ACTIVE servers live-migrated, the SHUTOFF one cold-migrated and confirmed,
//! the condition's progress, the hold until the host is empty) while the controller is killed
//! and restarted mid-drain (no server moved twice); an uncordon enables the service; the Nova
//! API stopped mid-drain (reported, resumed when it answers); moves that cannot succeed
//! (retried with backoff, then reported; the service stays disabled).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stacknet_openstack::cloud::Service;
use stacknet_openstack::{Cloud, CloudSource};
use stacknet_sandbox::{OpenStack, OpenStackOptions};
use stacknet_testsupport::kubeapi::{ApiServer, merge_patch};

const BIN: &str = env!("CARGO_BIN_EXE_stacknet-compute-drain");
const NS: &str = "stacknet-system";

struct Controller(Child);

impl Controller {
    fn start(kubeconfig: &Path, clouds: &Path, dir: &Path, extra: &[&str]) -> Controller {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("drain.log")).unwrap();
        let child = Command::new(BIN)
            .env("KUBECONFIG", kubeconfig)
            .arg("--clouds-yaml")
            .arg(clouds)
            .args(["--os-cloud", "stacknet-test"])
            .env("STACKNET_LOG", "info")
            .args(["--interval-ms", "300", "--idle-interval", "1", "--namespace", NS])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Controller(child)
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {}, "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}})
}

fn cordon(api: &ApiServer, name: &str, on: bool) {
    let mut n = api.get("v1", "nodes", "", name).unwrap();
    merge_patch(&mut n, &json!({"spec": {"unschedulable": if on { json!(true) } else { Value::Null }}}));
    api.apply(n);
}

/// The node's ComputeDrained condition: (status, reason, message).
fn condition(api: &ApiServer, name: &str) -> Option<(String, String, String)> {
    let n = api.get("v1", "nodes", "", name)?;
    let c = n["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "ComputeDrained")?.clone();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}

fn held(api: &ApiServer, name: &str) -> (bool, bool) {
    let object = format!("stacknet-drain-hold-{name}");
    (api.get("policy/v1", "poddisruptionbudgets", NS, &object).is_some(), api.get("v1", "pods", NS, &object).is_some())
}

fn reasons(api: &ApiServer, node: &str) -> Vec<String> {
    api.events()
        .iter()
        .filter(|e| e["regarding"]["name"] == node)
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn until(what: &str, within: Duration, dir: &Path, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("drain.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!("{what}: not within {within:?}; the controller's last lines:\n{}", tail.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn host(cloud: &OpenStack, id: &str) -> (String, String) {
    let s = cloud.server(id).unwrap();
    (
        s["OS-EXT-SRV-ATTR:host"].as_str().unwrap_or_default().to_string(),
        s["status"].as_str().unwrap_or_default().to_string(),
    )
}

fn service(cloud: &OpenStack, host: &str) -> (String, Option<String>) {
    let s = cloud.compute_service(host).unwrap();
    (s["status"].as_str().unwrap_or_default().to_string(), s["disabled_reason"].as_str().map(str::to_string))
}

/// The migrations out of `host` Nova recorded for a server.
async fn migrations(nova: &Cloud, host: &str, id: &str) -> Vec<stacknet_openstack::nova::Migration> {
    let all = stacknet_openstack::nova::migrations_from(nova, host, None).await.unwrap();
    all.into_iter().filter(|m| m.instance == id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the OpenStack packages with Nova's (scripts/install-test-packages)"]
async fn cordon_drains_the_hypervisor_through_nova() {
    assert!(OpenStack::installed(), "Nova's packages are missing: scripts/install-test-packages installs them");
    let started = Instant::now();
    let mut cloud = tokio::task::spawn_blocking(|| {
        OpenStack::start(OpenStackOptions { octavia: false, nova: vec!["compute-1".into(), "compute-2".into()] })
    })
    .await
    .unwrap()
    .expect("the cloud starts");
    eprintln!("cloud up in {:.1} s", started.elapsed().as_secs_f64());
    let clouds = cloud.clouds_yaml().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start().await;
    api.register("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget", true);
    api.apply(node("compute-1"));
    api.apply(node("compute-2"));
    let config = api.kubeconfig(dir.path(), None).unwrap();
    let source = CloudSource::Named { cloud: "stacknet-test".into(), file: Some(clouds.clone()) };
    let nova = Cloud::connect_for(&source, Service::Compute).await.expect("Nova through Keystone");

    let a = cloud.boot("a", "compute-1").unwrap();
    let b = cloud.boot("b", "compute-1").unwrap();
    let c = cloud.boot("c", "compute-1").unwrap();
    cloud.stop_server(&c).unwrap();
    let d = cloud.boot("d", "compute-2").unwrap();

    let mut controller = Controller::start(&config, &clouds, dir.path(), &[]);
    // Before any cordon: both hosts carry servers, so both are held.
    until("both hosts held", Duration::from_secs(90), dir.path(), || {
        held(&api, "compute-1") == (true, true) && held(&api, "compute-2") == (true, true)
    })
    .await;
    let pdb = api.get("policy/v1", "poddisruptionbudgets", NS, "stacknet-drain-hold-compute-1").unwrap();
    assert_eq!(pdb["spec"]["maxUnavailable"], 0, "{pdb}");
    let pod = api.get("v1", "pods", NS, "stacknet-drain-hold-compute-1").unwrap();
    assert_eq!(pod["spec"]["nodeName"], "compute-1");
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "Node", "kubectl drain takes it as managed, not bare");
    assert_eq!(service(&cloud, "compute-1").0, "enabled");

    // Cordon compute-1; kill the controller once the first move started, then start it again.
    let t0 = Instant::now();
    cordon(&api, "compute-1", true);
    until("compute-1's service disabled", Duration::from_secs(30), dir.path(), || {
        service(&cloud, "compute-1")
            == ("disabled".into(), Some("stacknet compute-drain: node compute-1 cordoned (spec.unschedulable)".into()))
    })
    .await;
    until("a move started", Duration::from_secs(30), dir.path(), || {
        reasons(&api, "compute-1").iter().any(|r| r == "MigrationStarted")
    })
    .await;
    // The progress is on the node while the moves run (its first pass writes it).
    let mut progress = None;
    until("the Draining condition with counts", Duration::from_secs(30), dir.path(), || {
        progress = condition(&api, "compute-1").filter(|c| c.1 == "Draining");
        progress.is_some()
    })
    .await;
    controller.kill();
    let moved_before_restart: Vec<String> =
        [&a, &b, &c].iter().filter(|id| host(&cloud, id).0 == "compute-2").map(|s| s.to_string()).collect();
    let mut controller = Controller::start(&config, &clouds, dir.path(), &[]);
    until("compute-1 drained", Duration::from_secs(120), dir.path(), || {
        condition(&api, "compute-1").is_some_and(|c| c.0 == "True")
    })
    .await;
    let drained_in = t0.elapsed();
    eprintln!(
        "compute-1 drained in {:.1} s (3 servers; {} had moved before the restart)",
        drained_in.as_secs_f64(),
        moved_before_restart.len()
    );
    let p = progress.unwrap();
    assert_eq!(p.0, "False", "{p:?}");
    assert!(p.2.starts_with("moving instances away; ") && p.2.contains(" left ("), "counts in the message: {p:?}");
    let done = condition(&api, "compute-1").unwrap();
    assert_eq!(done.1, "Drained");
    assert_eq!(done.2, "no instance left on the host; 3 moved, 0 left (0 moving, 0 waiting to retry, 0 stuck)");
    for (id, status) in [(&a, "ACTIVE"), (&b, "ACTIVE"), (&c, "SHUTOFF")] {
        assert_eq!(host(&cloud, id), ("compute-2".to_string(), status.to_string()), "server {id}");
        let m = migrations(&nova, "compute-1", id).await;
        assert_eq!(m.len(), 1, "server {id} moved exactly once, across the restart: {m:?}");
        assert!(matches!(m[0].status.as_str(), "completed" | "confirmed"), "{m:?}");
    }
    until("compute-1's hold released", Duration::from_secs(10), dir.path(), || {
        held(&api, "compute-1") == (false, false)
    })
    .await;
    assert_eq!(held(&api, "compute-2"), (true, true), "compute-2 still carries servers");
    let r = reasons(&api, "compute-1");
    for expected in ["ComputeDisabled", "DrainStarted", "MigrationStarted", "MigrationConfirmed", "ComputeDrained"] {
        assert!(r.iter().any(|x| x == expected), "{expected} among {r:?}");
    }

    // Uncordon: the service is enabled again, the condition gone.
    cordon(&api, "compute-1", false);
    until("compute-1 enabled", Duration::from_secs(30), dir.path(), || {
        service(&cloud, "compute-1") == ("enabled".into(), None) && condition(&api, "compute-1").is_none()
    })
    .await;
    assert!(reasons(&api, "compute-1").iter().any(|r| r == "ComputeEnabled"));

    // The Nova API goes away mid-drain: reported on the node, resumed once it answers.
    cordon(&api, "compute-2", true);
    until("compute-2's service disabled", Duration::from_secs(30), dir.path(), || {
        service(&cloud, "compute-2").0 == "disabled"
    })
    .await;
    cloud.stop("nova-api").unwrap();
    until("Nova reported unreachable", Duration::from_secs(60), dir.path(), || {
        condition(&api, "compute-2").is_some_and(|c| c.1 == "NovaUnreachable")
    })
    .await;
    assert!(reasons(&api, "compute-2").iter().any(|r| r == "NovaUnreachable"));
    cloud.restart("nova-api").unwrap();
    until("compute-2 drained after the outage", Duration::from_secs(120), dir.path(), || {
        condition(&api, "compute-2").is_some_and(|c| c.0 == "True")
    })
    .await;
    for id in [&a, &b, &c, &d] {
        assert_eq!(host(&cloud, id).0, "compute-1", "server {id}");
    }
    cordon(&api, "compute-2", false);
    until("compute-2 enabled", Duration::from_secs(30), dir.path(), || service(&cloud, "compute-2").0 == "enabled")
        .await;

    // Moves that cannot succeed: compute-2 disabled by an operator, compute-1 cordoned — no
    // host can take the servers. Retried with backoff, then given up; compute-1 stays disabled.
    controller.kill();
    // (With --host-label: a node naming a host Nova does not know is said, on the node.)
    let mut ghost = node("ghost");
    ghost["metadata"]["labels"]["stacknet.io/nova-host"] = json!("compute-9");
    api.apply(ghost);
    let mut controller = Controller::start(
        &config,
        &clouds,
        dir.path(),
        &["--attempts", "2", "--backoff", "0.5", "--host-label", "stacknet.io/nova-host"],
    );
    let operator = cloud.compute_service("compute-2").unwrap()["id"].as_str().unwrap().to_string();
    stacknet_openstack::nova::set_service(&nova, &operator, false, Some("operator: replacing a DIMM")).await.unwrap();
    cordon(&api, "compute-1", true);
    until("the moves given up", Duration::from_secs(120), dir.path(), || {
        condition(&api, "compute-1").is_some_and(|c| c.1 == "MigrationsFailed")
    })
    .await;
    let stuck = condition(&api, "compute-1").unwrap();
    assert_eq!(stuck.0, "False");
    assert!(stuck.2.contains("4 stuck"), "{stuck:?}");
    assert_eq!(service(&cloud, "compute-1").0, "disabled", "never re-enabled silently");
    assert_eq!(held(&api, "compute-1"), (true, true), "kubectl drain still held");
    for id in [&a, &b, &d] {
        let failed = migrations(&nova, "compute-1", id)
            .await
            .iter()
            .filter(|m| matches!(m.status.as_str(), "error" | "failed"))
            .count();
        assert_eq!(failed, 2, "server {id}: two attempts, then given up");
    }
    assert!(reasons(&api, "compute-1").iter().any(|r| r == "InstanceStuck"));
    let ghost =
        api.events().into_iter().find(|e| e["reason"] == "UnknownHypervisor").expect("an UnknownHypervisor Event");
    assert_eq!(ghost["regarding"]["name"], "ghost");
    assert_eq!(ghost["note"], "the node names Nova host \"compute-9\", and Nova has no nova-compute service on it");
    // Uncordoned: ours enabled, the operator's left as it is (and said so).
    cordon(&api, "compute-1", false);
    until("compute-1 enabled", Duration::from_secs(30), dir.path(), || service(&cloud, "compute-1").0 == "enabled")
        .await;
    assert_eq!(service(&cloud, "compute-2"), ("disabled".into(), Some("operator: replacing a DIMM".into())));
    assert!(reasons(&api, "compute-2").iter().any(|r| r == "ComputeLeftDisabled"));
    controller.kill();
}
