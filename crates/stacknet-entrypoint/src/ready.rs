//! Whether a dependency is met, decided over the objects as the API has them (pure: the
//! watchers hand the objects in). Each answer is `Ok(())` or why not, in words an operator
//! reads on the pod.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

use crate::spec::CustomResource;

/// Why a dependency is not met yet.
pub type Verdict = Result<(), String>;

/// Whether `labels` satisfy `selector` (matchLabels and matchExpressions; an empty selector
/// matches everything).
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    by_labels && by_expressions
}

fn labels_of(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.labels.clone().unwrap_or_default()
}

/// The pod's Ready condition.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty())
}

/// The TCP addresses a Service's ready endpoints serve on (its slices' TCP ports; an endpoint
/// whose `ready` is unset counts as ready, as the API documents).
pub fn service_addresses(slices: &[EndpointSlice]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for s in slices {
        let ports: Vec<u16> = s
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| p.port.and_then(|n| u16::try_from(n).ok()))
            .collect();
        for e in &s.endpoints {
            if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for a in &e.addresses {
                let Ok(ip) = a.parse::<IpAddr>() else { continue };
                out.extend(ports.iter().map(|p| SocketAddr::new(ip, *p)));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A DaemonSet's pod on `node` is ready. A DaemonSet with no pod on this node is not met: the
/// anchor counts it as met, and starts a service whose local agent is not there.
pub fn daemonset(ds: Option<&DaemonSet>, pods: &[Pod], node: Option<&str>) -> Verdict {
    let ds = ds.ok_or("it does not exist")?;
    let node = node.ok_or("this pod is not on a node yet")?;
    let selector = ds.spec.as_ref().map(|s| &s.selector).ok_or("it has no selector")?;
    let mine: Vec<&Pod> =
        pods.iter().filter(|p| selects(selector, &labels_of(p)) && node_of(p) == Some(node)).collect();
    match mine.as_slice() {
        [] => Err(format!("no pod of it on node {node}")),
        pods if pods.iter().any(|p| pod_ready(p)) => Ok(()),
        [p, ..] => Err(format!("its pod {} on node {node} is not ready", p.metadata.name.as_deref().unwrap_or("?"))),
    }
}

/// A container of this pod is ready.
pub fn container(pod: Option<&Pod>, name: &str) -> Verdict {
    let pod = pod.ok_or("this pod is not there")?;
    let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.as_ref());
    match statuses.and_then(|s| s.iter().find(|c| c.name == name)) {
        Some(c) if c.ready => Ok(()),
        Some(_) => Err("not ready".into()),
        None => Err("no status for it yet".into()),
    }
}

/// A pod with the labels is ready (on `node`, when `same_node`).
pub fn pods(pods: &[Pod], labels: &BTreeMap<String, String>, same_node: bool, node: Option<&str>) -> Verdict {
    if same_node && node.is_none() {
        return Err("this pod is not on a node yet".into());
    }
    let matching: Vec<&Pod> = pods
        .iter()
        .filter(|p| labels.iter().all(|(k, v)| labels_of(p).get(k) == Some(v)))
        .filter(|p| !same_node || node_of(p) == node)
        .collect();
    let here = if same_node { format!(" on node {}", node.unwrap_or_default()) } else { String::new() };
    match matching.len() {
        0 => Err(format!("no such pod{here}")),
        _ if matching.iter().any(|p| pod_ready(p)) => Ok(()),
        n => Err(format!("{n} such pods{here}, none ready")),
    }
}

fn job_done(job: &Job) -> Verdict {
    let status = job.status.as_ref();
    let condition = |t: &str| {
        status.and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == t && c.status == "True"))
    };
    let name = job.metadata.name.as_deref().unwrap_or("?");
    if condition("Complete") || condition("SuccessCriteriaMet") {
        return Ok(());
    }
    if condition("Failed") {
        return Err(format!("Job {name} failed"));
    }
    // Without conditions (an older API server): its successes against its completions.
    let succeeded = status.and_then(|s| s.succeeded).unwrap_or(0);
    let completions = job.spec.as_ref().and_then(|s| s.completions).unwrap_or(1);
    if status.and_then(|s| s.conditions.as_ref()).is_none_or(|c| c.is_empty()) && succeeded >= completions.max(1) {
        return Ok(());
    }
    Err(format!("Job {name} has not completed ({succeeded}/{completions} succeeded)"))
}

/// A Job by name, or by labels the newest matching one: its latest run completed. A Job
/// deleted and made again is judged by the new one (the anchor keeps a success it once saw).
pub fn job(jobs: &[Job], name: Option<&str>, labels: &BTreeMap<String, String>) -> Verdict {
    let matching = jobs.iter().filter(|j| match name {
        Some(n) => j.metadata.name.as_deref() == Some(n),
        None => labels.iter().all(|(k, v)| j.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v)),
    });
    let newest = matching.max_by(|a, b| {
        a.metadata.creation_timestamp.as_ref().map(|t| t.0).cmp(&b.metadata.creation_timestamp.as_ref().map(|t| t.0))
    });
    match newest {
        None => Err("no such Job".into()),
        Some(j) => job_done(j),
    }
}

/// The value at a dotted path, as text (a string as it is, anything else as JSON).
fn field<'a>(obj: &'a Value, path: &str) -> Option<std::borrow::Cow<'a, str>> {
    let mut v = obj;
    for part in path.split('.') {
        v = v.get(part)?;
    }
    Some(match v {
        Value::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
        other => std::borrow::Cow::Owned(other.to_string()),
    })
}

/// A custom resource: every field as asked, every condition with its status (`True` unless
/// given).
pub fn custom_resource(obj: Option<&Value>, cr: &CustomResource) -> Verdict {
    let obj = obj.ok_or("it does not exist")?;
    for f in &cr.fields {
        match field(obj, &f.key) {
            None => return Err(format!("it has no {}", f.key)),
            Some(v) if v != f.value => return Err(format!("{} is {v:?}, not {:?}", f.key, f.value)),
            Some(_) => {}
        }
    }
    for c in &cr.conditions {
        let want = if c.status.is_empty() { "True" } else { c.status.as_str() };
        let conditions = obj.pointer("/status/conditions").and_then(Value::as_array);
        let got = conditions
            .and_then(|cs| cs.iter().find(|x| x.get("type").and_then(Value::as_str) == Some(c.type_.as_str())))
            .and_then(|x| x.get("status").and_then(Value::as_str));
        match got {
            None => return Err(format!("no condition {}", c.type_)),
            Some(s) if s != want => return Err(format!("condition {} is {s}, not {want}", c.type_)),
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::spec::{Condition, Field};

    fn pod(name: &str, node: &str, labels: Value, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": node, "containers": []},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_daemonset_needs_a_ready_pod_on_this_node() {
        let ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "ovs"},
            "spec": {"selector": {"matchLabels": {"app": "ovs"}}, "template": {}}
        }))
        .unwrap();
        let pods = [pod("ovs-a", "n1", json!({"app": "ovs"}), false), pod("ovs-b", "n2", json!({"app": "ovs"}), true)];
        assert_eq!(daemonset(Some(&ds), &pods, Some("n1")), Err("its pod ovs-a on node n1 is not ready".into()));
        assert_eq!(daemonset(Some(&ds), &pods, Some("n2")), Ok(()));
        assert_eq!(
            daemonset(Some(&ds), &pods, Some("n3")),
            Err("no pod of it on node n3".into()),
            "not the anchor's yes"
        );
        assert_eq!(daemonset(None, &pods, Some("n1")), Err("it does not exist".into()));
    }

    #[test]
    fn pods_by_labels_and_node() {
        let l = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        let ps = [pod("a", "n1", json!({"c": "ovn"}), false), pod("b", "n2", json!({"c": "ovn"}), true)];
        assert_eq!(pods(&ps, &l("c", "ovn"), false, Some("n1")), Ok(()));
        assert_eq!(pods(&ps, &l("c", "ovn"), true, Some("n1")), Err("1 such pods on node n1, none ready".into()));
        assert_eq!(pods(&ps, &l("c", "x"), false, None), Err("no such pod".into()));
    }

    #[test]
    fn a_job_by_its_latest_run() {
        let job = |name: &str, at: &str, status: Value| -> Job {
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"c": "db-sync"}, "creationTimestamp": at}, "status": status}))
                .unwrap()
        };
        let done = json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]});
        let failed = json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True"}]});
        let l = BTreeMap::from([("c".to_string(), "db-sync".to_string())]);
        // An old run succeeded, the new one is running: not met (the anchor would say met).
        let jobs = [
            job("db-sync-1", "2026-01-01T00:00:00Z", done.clone()),
            job("db-sync-2", "2026-02-01T00:00:00Z", json!({"active": 1})),
        ];
        assert_eq!(job_by(&jobs, None, &l), Err("Job db-sync-2 has not completed (0/1 succeeded)".into()));
        let jobs =
            [job("db-sync-1", "2026-01-01T00:00:00Z", failed), job("db-sync-2", "2026-02-01T00:00:00Z", done.clone())];
        assert_eq!(job_by(&jobs, None, &l), Ok(()), "an older failed run does not block");
        assert_eq!(job_by(&jobs, Some("db-sync-1"), &BTreeMap::new()), Err("Job db-sync-1 failed".into()));
        assert_eq!(job_by(&[], Some("x"), &BTreeMap::new()), Err("no such Job".into()));
        // No conditions (an older API server): successes against completions.
        assert_eq!(
            job_by(&[job("j", "2026-01-01T00:00:00Z", json!({"succeeded": 1}))], Some("j"), &BTreeMap::new()),
            Ok(())
        );
    }

    fn job_by(jobs: &[Job], name: Option<&str>, labels: &BTreeMap<String, String>) -> Verdict {
        job(jobs, name, labels)
    }

    #[test]
    fn service_addresses_are_the_ready_endpoints_tcp_ports() {
        let s: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "keystone-abc"},
            "addressType": "IPv4",
            "ports": [{"port": 5000, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}],
            "endpoints": [
                {"addresses": ["10.1.0.5"], "conditions": {"ready": true}},
                {"addresses": ["10.1.0.6"], "conditions": {"ready": false}},
                {"addresses": ["10.1.0.7"]}
            ]
        }))
        .unwrap();
        let got: Vec<String> = service_addresses(&[s]).iter().map(|a| a.to_string()).collect();
        assert_eq!(got, ["10.1.0.5:5000", "10.1.0.7:5000"]);
    }

    #[test]
    fn containers_of_this_pod() {
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": "me"}, "status": {"containerStatuses": [
            {"name": "a", "ready": true, "restartCount": 0, "image": "i", "imageID": ""},
            {"name": "b", "ready": false, "restartCount": 0, "image": "i", "imageID": ""}]}}))
        .unwrap();
        assert_eq!(container(Some(&p), "a"), Ok(()));
        assert_eq!(container(Some(&p), "b"), Err("not ready".into()));
        assert_eq!(container(Some(&p), "c"), Err("no status for it yet".into()));
    }

    #[test]
    fn custom_resources_by_fields_and_conditions() {
        let cr = CustomResource {
            api_version: "mariadb.mmontes.io/v1alpha1".into(),
            kind: "Connection".into(),
            name: "nova".into(),
            namespace: "openstack".into(),
            fields: vec![
                Field { key: "status.phase".into(), value: "Ready".into() },
                Field { key: "spec.port".into(), value: "3306".into() },
            ],
            conditions: vec![Condition { type_: "Ready".into(), status: String::new() }],
        };
        let obj = |phase: &str, ready: &str| json!({"spec": {"port": 3306}, "status": {"phase": phase, "conditions": [{"type": "Ready", "status": ready}]}});
        assert_eq!(custom_resource(Some(&obj("Ready", "True")), &cr), Ok(()));
        assert_eq!(
            custom_resource(Some(&obj("Pending", "True")), &cr),
            Err("status.phase is \"Pending\", not \"Ready\"".into())
        );
        assert_eq!(
            custom_resource(Some(&obj("Ready", "False")), &cr),
            Err("condition Ready is False, not True".into())
        );
        assert_eq!(custom_resource(Some(&json!({"spec": {}})), &cr), Err("it has no status.phase".into()));
        assert_eq!(custom_resource(None, &cr), Err("it does not exist".into()));
    }

    #[test]
    fn selectors() {
        let sel: LabelSelector = serde_json::from_value(json!({"matchLabels": {"a": "1"},
            "matchExpressions": [{"key": "b", "operator": "In", "values": ["x", "y"]}, {"key": "c", "operator": "DoesNotExist"}]}))
        .unwrap();
        let l = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(selects(&sel, &l(&[("a", "1"), ("b", "y")])));
        assert!(!selects(&sel, &l(&[("a", "1"), ("b", "z")])));
        assert!(!selects(&sel, &l(&[("a", "1"), ("b", "x"), ("c", "")])));
    }
}
