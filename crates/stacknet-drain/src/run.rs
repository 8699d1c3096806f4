//! The drain's adapter: Nodes are watched, Nova is read (it has no watch: every `--interval-ms`
//! while a host drains, every `--idle-interval` otherwise, and at once when a Node's cordon,
//! taints or host label change); [`plan::decide`]'s calls are made; the Node's condition,
//! Events and the holds are written.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use stacknet_openstack::cloud::Service;
use stacknet_openstack::{Cloud, Error as NovaError, nova};

use crate::plan::{self, Action, Decision, Observed, Settings, Stage};
use crate::{Args, CONDITION, HOLD_LABEL, REPORTER, SINCE};

/// The label (and value) on everything this controller creates.
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "stacknet-compute-drain");

/// Connects to the Kubernetes API and Nova, then drains for as long as it runs.
pub async fn run(args: Args) -> Result<(), String> {
    args.settings()?;
    // Both rustls providers are linked in (through the OpenStack SDK): name the one we use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default().await.map_err(|e| format!("the Kubernetes API: {e}"))?;
    let cloud = tokio::time::timeout(CONNECT, Cloud::connect_for(&args.cloud(), Service::Compute))
        .await
        .map_err(|_| format!("Nova: no answer from Keystone or Nova within {} s", CONNECT.as_secs()))?
        .map_err(|e| format!("Nova: {e}"))?;
    tracing::info!("authenticated with Keystone; Nova's endpoint found");
    run_with(client, cloud, args).await
}

/// Drains with the given Kubernetes client and Nova session (whose call counter then counts
/// the drain's calls) for as long as it runs.
pub async fn run_with(client: kube::Client, cloud: Cloud, args: Args) -> Result<(), String> {
    let settings = args.settings()?;
    Drainer { client, cloud, args, settings, posted: Mutex::default() }.run().await
}

/// How long the start may wait for Keystone, Nova and the first list of Nodes.
const CONNECT: std::time::Duration = std::time::Duration::from_secs(60);

/// Seconds since the epoch, now.
fn now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

/// Why a node counts as cordoned, if it does.
pub fn cordoned(node: &Node, taints: &[String]) -> Option<String> {
    let spec = node.spec.as_ref()?;
    if spec.unschedulable == Some(true) {
        return Some("spec.unschedulable".into());
    }
    spec.taints.iter().flatten().find(|t| taints.contains(&t.key)).map(|t| format!("taint {}", t.key))
}

/// The Nova host a node is.
pub fn host_of<'n>(node: &'n Node, label: Option<&str>) -> &'n str {
    label
        .and_then(|l| node.labels().get(l))
        .map(String::as_str)
        .unwrap_or_else(|| node.meta().name.as_deref().unwrap_or_default())
}

/// A node's hold id: its name when that is a valid label value, else a hash of it.
pub fn hold_id(node: &str) -> String {
    let valid = node.len() <= 63 && node.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if valid {
        return node.to_string();
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("h-{h:016x}")
}

struct Drainer {
    client: kube::Client,
    cloud: Cloud,
    args: Args,
    settings: Settings,
    /// Events posted (node, reason, note): each said once per run, as the API server would
    /// count repeats anyway.
    posted: Mutex<BTreeSet<(String, String, String)>>,
}

/// What a reconcile of one node found.
enum Outcome {
    /// Not draining (or drained): Nova is read at the idle pace.
    Quiet,
    /// Draining: read again soon.
    Busy,
}

impl Drainer {
    async fn run(self) -> Result<(), String> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let (store, writer) = reflector::store();
        let wake = Arc::new(tokio::sync::Notify::new());
        let (taints, label) = (self.args.taints.clone(), self.args.host_label.clone());
        let w = wake.clone();
        // A Node's heartbeats change nothing here: only its cordon, taints and host do.
        let seen: Mutex<BTreeMap<String, (Option<String>, String)>> = Mutex::default();
        tokio::spawn(
            watcher(nodes, watcher::Config::default()).default_backoff().reflect(writer).applied_objects().for_each(
                move |n| {
                    if let Ok(n) = n {
                        let key = (cordoned(&n, &taints), host_of(&n, label.as_deref()).to_string());
                        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                        if seen.insert(n.name_any(), key.clone()).as_ref() != Some(&key) {
                            w.notify_one();
                        }
                    }
                    futures::future::ready(())
                },
            ),
        );
        tokio::time::timeout(CONNECT, store.wait_until_ready())
            .await
            .map_err(|_| format!("listing Nodes: no answer within {} s", CONNECT.as_secs()))?
            .map_err(|e| format!("watching Nodes: {e}"))?;
        tracing::info!("watching Nodes");
        loop {
            let busy = self.tick(&store).await;
            let wait = if busy { self.args.interval() } else { self.args.idle_interval() };
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One pass over every hypervisor node; whether any drains.
    async fn tick(&self, store: &Store<Node>) -> bool {
        let nodes = store.state();
        let services = match nova::compute_services(&self.cloud).await {
            Ok(s) => s,
            Err(e) => {
                for n in nodes.iter().filter(|n| cordoned(n, &self.args.taints).is_some()) {
                    self.unreachable(n, &e).await;
                }
                return true;
            }
        };
        let by_host: BTreeMap<&str, &nova::ComputeService> = services.iter().map(|s| (s.host.as_str(), s)).collect();
        let mut busy = false;
        for node in nodes.iter() {
            let host = host_of(node, self.args.host_label.as_deref());
            let Some(service) = by_host.get(host) else {
                // A node whose label names a hypervisor is meant to be one: Nova not knowing
                // it is a mistake worth saying (a node without the label is simply no
                // hypervisor).
                let labelled = self.args.host_label.as_ref().is_some_and(|l| node.labels().contains_key(l));
                if labelled {
                    let note = format!("the node names Nova host {host:?}, and Nova has no nova-compute service on it");
                    self.event(node, "Warning", "UnknownHypervisor", &note).await;
                }
                continue;
            };
            match self.reconcile(node, service).await {
                Ok(Outcome::Quiet) => {}
                Ok(Outcome::Busy) => busy = true,
                Err(e) => {
                    busy = true;
                    if cordoned(node, &self.args.taints).is_some() {
                        self.unreachable(node, &e).await;
                    } else {
                        tracing::warn!(node = node.name_any(), error = %e, "reading Nova");
                    }
                }
            }
        }
        busy
    }

    async fn reconcile(&self, node: &Node, service: &nova::ComputeService) -> Result<Outcome, NovaError> {
        let name = node.name_any();
        let host = host_of(node, self.args.host_label.as_deref());
        let why = cordoned(node, &self.args.taints);
        let now = now();
        let since = node.annotations().get(SINCE).and_then(|s| s.parse::<f64>().ok()).filter(|s| s.is_finite());
        if why.is_some() && since.is_none() {
            // Recorded before any move: a controller restarted from here on counts the moves
            // made since then (and confirms the cold ones) whatever happened to this one.
            let marked = self.mark(node, Some(now)).await.map_err(|e| NovaError::Transport {
                what: format!("recording the drain's start on Node {name}"),
                message: e.to_string(),
            })?;
            // The condition is written over this version of the Node, not the stale one.
            return Box::pin(self.reconcile(&marked, service)).await;
        }
        let servers = nova::servers_on(&self.cloud, host).await?;
        let migrations = match &why {
            // Moves made since the drain began, a second of clock skew allowed.
            Some(_) => {
                let from = nova::nova_time(since.unwrap_or(now) - 1.0);
                nova::migrations_from(&self.cloud, host, Some(&from)).await?
            }
            None => Vec::new(),
        };
        let observed = Observed {
            node: name.clone(),
            cordoned: why.clone(),
            service: plan::Service {
                id: service.id.clone(),
                enabled: service.enabled(),
                disabled_reason: service.disabled_reason.clone(),
                up: service.up(),
            },
            servers: servers
                .into_iter()
                .map(|s| plan::Server { id: s.id, name: s.name, status: s.status, task_state: s.task_state })
                .collect(),
            migrations: migrations
                .into_iter()
                .map(|m| plan::Migration {
                    updated: m
                        .updated_at
                        .as_deref()
                        .or(Some(m.created_at.as_str()))
                        .and_then(nova::epoch_seconds)
                        .unwrap_or(0.0),
                    instance: m.instance,
                    status: m.status,
                    kind: m.migration_type,
                })
                .collect(),
            now,
        };
        let d = plan::decide(&observed, &self.settings);
        for a in &d.actions {
            self.execute(node, host, a).await?;
        }
        for (_, why) in &d.stuck {
            self.event(node, "Warning", "InstanceStuck", why).await;
        }
        if let Some(reason) = &d.left_disabled {
            let note = format!(
                "nova-compute on {host} stays disabled: someone else disabled it ({reason:?}), so stacknet does not enable it"
            );
            self.event(node, "Warning", "ComputeLeftDisabled", &note).await;
        }
        self.report(node, why.is_some().then_some(since.unwrap_or(now)), &d).await;
        if !self.args.no_hold
            && let Err(e) = self.hold(node, d.hold).await
        {
            tracing::warn!(node = name, error = %e, "the drain hold");
            self.event(node, "Warning", "HoldFailed", &format!("holding kubectl drain: {e}")).await;
        }
        Ok(match d.stage {
            Stage::Draining | Stage::HostDown | Stage::Stuck => Outcome::Busy,
            Stage::Idle | Stage::Drained => Outcome::Quiet,
        })
    }

    /// One call to Nova. A refusal because the server changed meanwhile (409) is no error:
    /// the next pass sees the new state. An outage ends the pass.
    async fn execute(&self, node: &Node, host: &str, action: &Action) -> Result<(), NovaError> {
        let (result, reason, note) = match action {
            Action::Disable { service, reason } => (
                nova::set_service(&self.cloud, service, false, Some(reason)).await.map(drop),
                "ComputeDisabled",
                format!("nova-compute on {host} disabled: {reason}"),
            ),
            Action::Enable { service } => (
                nova::set_service(&self.cloud, service, true, None).await.map(drop),
                "ComputeEnabled",
                format!("nova-compute on {host} enabled again: the node is schedulable"),
            ),
            Action::LiveMigrate { server, name } => (
                nova::live_migrate(&self.cloud, server).await,
                "MigrationStarted",
                format!("live-migrating server {name} ({server}) away from {host}"),
            ),
            Action::ColdMigrate { server, name } => (
                nova::cold_migrate(&self.cloud, server).await,
                "MigrationStarted",
                format!("cold-migrating stopped server {name} ({server}) away from {host}"),
            ),
            Action::Confirm { server } => (
                nova::confirm(&self.cloud, server).await,
                "MigrationConfirmed",
                format!("confirmed the cold migration of server {server} away from {host}"),
            ),
        };
        match result {
            Ok(()) => {
                tracing::info!(node = node.name_any(), "{note}");
                self.event(node, "Normal", reason, &note).await;
                Ok(())
            }
            Err(e) if e.is_conflict() => {
                tracing::debug!(node = node.name_any(), error = %e, "{note}: the server changed meanwhile");
                Ok(())
            }
            Err(e) if e.is_transient() => Err(e),
            Err(e) => {
                let note = format!("{note}: {e}");
                tracing::warn!(node = node.name_any(), "{note}");
                self.event(node, "Warning", "MigrationFailed", &note).await;
                Ok(())
            }
        }
    }

    /// Nova could not be read or written: said on the node, the drain resumes when it answers.
    async fn unreachable(&self, node: &Node, e: &NovaError) {
        let message = format!("Nova cannot be reached ({e}); the drain resumes when it answers");
        let since = node.annotations().get(SINCE).and_then(|s| s.parse().ok()).unwrap_or_else(now);
        self.write(node, Some(since), Some(("False", "NovaUnreachable", message.clone()))).await;
    }

    /// The Node's condition and drain-start annotation as the decision says, and an Event
    /// when the stage changes.
    async fn report(&self, node: &Node, since: Option<f64>, d: &Decision) {
        let condition = match d.stage {
            Stage::Idle => None,
            Stage::Drained => Some(("True", d.stage.reason(), d.message.clone())),
            _ => Some(("False", d.stage.reason(), d.message.clone())),
        };
        self.write(node, since, condition).await;
    }

    async fn write(&self, node: &Node, since: Option<f64>, condition: Option<(&str, &str, String)>) {
        let name = node.name_any();
        let api: Api<Node> = Api::all(self.client.clone());
        let conditions = node.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
        let current = conditions.iter().find(|c| c.type_ == CONDITION);
        let same = match (&condition, current) {
            (None, None) => true,
            (Some((status, reason, message)), Some(c)) => {
                c.status == *status && c.reason.as_deref() == Some(*reason) && c.message.as_deref() == Some(message)
            }
            _ => false,
        };
        if since.is_none()
            && node.annotations().contains_key(SINCE)
            && let Err(e) = self.mark(node, None).await
        {
            tracing::warn!(node = name, error = %e, "removing the drain's start from the Node");
        }
        if same {
            return;
        }
        let stamp = k8s_openapi::jiff::Timestamp::now().to_string();
        let mut list: Vec<Value> =
            conditions.iter().filter(|c| c.type_ != CONDITION).filter_map(|c| serde_json::to_value(c).ok()).collect();
        if let Some((status, reason, message)) = &condition {
            let transition = match current {
                Some(c) if c.status == *status => serde_json::to_value(&c.last_transition_time).unwrap_or(Value::Null),
                _ => Value::String(stamp.clone()),
            };
            list.push(json!({"type": CONDITION, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": stamp, "lastTransitionTime": transition}));
        }
        // The Event of a stage change goes out before the condition that records the stage: a
        // controller killed between the two would otherwise find the stage written on restart
        // and never say it (at least once, never lost; a retried write may say it twice).
        let previous = current.and_then(|c| c.reason.clone());
        let event = match &condition {
            None => Some(("Normal", "DrainStopped", "the node is schedulable again: the drain stopped".to_string())),
            Some((_, reason, _)) if previous.as_deref() == Some(*reason) => None,
            Some((_, reason, message)) => {
                let kind = if matches!(*reason, "HostDown" | "MigrationsFailed" | "NovaUnreachable") {
                    "Warning"
                } else {
                    "Normal"
                };
                let reason = match *reason {
                    "Draining" => "DrainStarted",
                    "Drained" => "ComputeDrained",
                    other => other,
                };
                Some((kind, reason, message.clone()))
            }
        };
        if let Some((kind, reason, note)) = event {
            self.event(node, kind, reason, &note).await;
        }
        // Read-modify-write of the whole list, guarded by the version read: a conflicting
        // write (the kubelet's heartbeat) makes this one fail, and the next pass redoes it.
        let patch = json!({"metadata": {"resourceVersion": node.resource_version()}, "status": {"conditions": list}});
        if let Err(e) = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            tracing::debug!(node = name, error = %e, "writing the condition; the next pass does");
        }
    }

    /// Records when the drain began on the Node (`None`: removes it).
    async fn mark(&self, node: &Node, since: Option<f64>) -> Result<Node, kube::Error> {
        let api: Api<Node> = Api::all(self.client.clone());
        let value = since.map_or(Value::Null, |s| Value::String(format!("{s:.3}")));
        let patch = json!({"metadata": {"annotations": {SINCE: value}}});
        api.patch(&node.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await
    }

    /// A hold pod on the node and a budget allowing none of it to be evicted while `hold`;
    /// both gone once the host is empty (`kubectl drain` then evicts the pod and finishes).
    async fn hold(&self, node: &Node, hold: bool) -> Result<(), kube::Error> {
        let name = node.name_any();
        let id = hold_id(&name);
        let object = format!("stacknet-drain-hold-{id}");
        let ns = &self.args.namespace;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let budgets: Api<PodDisruptionBudget> = Api::namespaced(self.client.clone(), ns);
        let labels = json!({MANAGED_BY.0: MANAGED_BY.1, HOLD_LABEL: id});
        let ours = |l: &BTreeMap<String, String>| l.get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1);
        if hold {
            if budgets.get_opt(&object).await?.is_none() {
                let budget: PodDisruptionBudget = serde_json::from_value(json!({
                    "metadata": {"name": object, "labels": labels, "annotations": {"stacknet.io/node": name}},
                    "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {HOLD_LABEL: id}}}
                }))
                .map_err(kube::Error::SerdeError)?;
                budgets.create(&PostParams::default(), &budget).await?;
            }
            if pods.get_opt(&object).await?.is_none() {
                let owner = json!({"apiVersion": "v1", "kind": "Node", "name": name,
                    "uid": node.uid().unwrap_or_default(), "controller": true});
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": object, "labels": labels, "ownerReferences": [owner],
                        "annotations": {"stacknet.io/node": name,
                            "stacknet.io/why": "holds kubectl drain of this node until its hypervisor has no instance left"}},
                    "spec": {"nodeName": name, "tolerations": [{"operator": "Exists"}],
                        "automountServiceAccountToken": false, "terminationGracePeriodSeconds": 0,
                        "priorityClassName": "system-node-critical",
                        "securityContext": {"runAsNonRoot": true, "runAsUser": 65535},
                        "containers": [{"name": "hold", "image": self.args.hold_image,
                            "resources": {"requests": {"cpu": "1m", "memory": "8Mi"}, "limits": {"memory": "16Mi"}},
                            "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                "capabilities": {"drop": ["ALL"]}}}]}
                }))
                .map_err(kube::Error::SerdeError)?;
                pods.create(&PostParams::default(), &pod).await?;
            }
        } else {
            if let Some(b) = budgets.get_opt(&object).await?
                && ours(b.labels())
            {
                budgets.delete(&object, &DeleteParams::default()).await?;
            }
            if let Some(p) = pods.get_opt(&object).await?
                && ours(p.labels())
            {
                pods.delete(&object, &DeleteParams::default()).await?;
            }
        }
        Ok(())
    }

    /// An Event on the node (in `default`, where Node events go), once per run per note.
    async fn event(&self, node: &Node, kind: &str, reason: &str, note: &str) {
        use k8s_openapi::api::core::v1::ObjectReference;
        use k8s_openapi::api::events::v1::Event;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
        let name = node.name_any();
        let key = (name.clone(), reason.to_string(), note.to_string());
        if !self.posted.lock().unwrap_or_else(|e| e.into_inner()).insert(key) {
            return;
        }
        let event = Event {
            metadata: ObjectMeta { generate_name: Some(format!("{name}.")), ..ObjectMeta::default() },
            event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            action: Some("Drain".into()),
            reason: Some(reason.into()),
            note: Some(note.chars().take(1024).collect()),
            regarding: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(name.clone()),
                uid: node.uid(),
                ..ObjectReference::default()
            }),
            reporting_controller: Some(REPORTER.into()),
            reporting_instance: Some(std::env::var("POD_NAME").unwrap_or_else(|_| "stacknet-compute-drain".into())),
            type_: Some(kind.into()),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), "default");
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            tracing::warn!(node = name, error = %e, "posting an Event");
        }
    }
}
