//! deploy/: the manifests parse as the API types they claim to be, hold together (selectors,
//! service accounts, config maps, the controller's TOML, the CNI configuration), the RBAC
//! grants what the controller watches and the Lease it holds, and the Helm chart rendered with
//! its defaults is exactly the plain manifests.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::rbac::v1 as rbac;
use serde_json::Value;
use stacknet_controller::kube_source::WATCHED;
use stacknet_controller::{ControllerArgs, ControllerConfig};

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn docs(text: &str, what: &str) -> Vec<Value> {
    let values: Vec<Value> = serde_saphyr::from_multiple(text).unwrap_or_else(|e| panic!("{what}: {e}"));
    values.into_iter().filter(|v| !v.is_null()).collect()
}

fn plain() -> Vec<Value> {
    ["rbac.yaml", "controller.yaml", "node.yaml"]
        .iter()
        .flat_map(|f| docs(&std::fs::read_to_string(deploy().join(f)).unwrap(), f))
        .collect()
}

fn id(v: &Value) -> String {
    format!(
        "{} {}/{}",
        v["kind"].as_str().unwrap_or("?"),
        v["metadata"]["namespace"].as_str().unwrap_or(""),
        v["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> T {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{}: {e}", id(v)))
}

fn find<'a>(all: &'a [Value], kind: &str, name: &str) -> &'a Value {
    all.iter()
        .find(|v| v["kind"] == kind && v["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn manifests_are_valid_objects_that_hold_together() {
    let all = plain();
    assert!(all.len() >= 10, "{} objects", all.len());
    for v in &all {
        match v["kind"].as_str().unwrap() {
            "Namespace" => drop(typed::<core::Namespace>(v)),
            "ServiceAccount" => drop(typed::<core::ServiceAccount>(v)),
            "ConfigMap" => drop(typed::<core::ConfigMap>(v)),
            "ClusterRole" => drop(typed::<rbac::ClusterRole>(v)),
            "ClusterRoleBinding" => drop(typed::<rbac::ClusterRoleBinding>(v)),
            "Role" => drop(typed::<rbac::Role>(v)),
            "RoleBinding" => drop(typed::<rbac::RoleBinding>(v)),
            "Deployment" => drop(typed::<apps::Deployment>(v)),
            "DaemonSet" => drop(typed::<apps::DaemonSet>(v)),
            other => panic!("unexpected kind {other}"),
        }
        assert!(v["metadata"]["name"].as_str().is_some_and(|n| !n.is_empty()), "{}", id(v));
    }

    let deployment: apps::Deployment = typed(find(&all, "Deployment", "stacknet-controller"));
    let daemonset: apps::DaemonSet = typed(find(&all, "DaemonSet", "stacknet-node"));
    let spec = deployment.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2), "two controller replicas (one holds the Lease)");
    let pods = [
        (spec.selector.match_labels.clone(), spec.template.clone()),
        (
            daemonset.spec.as_ref().unwrap().selector.match_labels.clone(),
            daemonset.spec.as_ref().unwrap().template.clone(),
        ),
    ];
    for (selector, template) in pods {
        let labels = template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
        for (k, v) in selector.unwrap_or_default() {
            assert_eq!(labels.get(&k), Some(&v), "the selector matches the pod template");
        }
        let pod = template.spec.unwrap();
        let sa = pod.service_account_name.clone().unwrap();
        find(&all, "ServiceAccount", &sa);
        for c in pod.containers.iter().chain(pod.init_containers.iter().flatten()) {
            assert!(c.image.as_deref().is_some_and(|i| i.contains(':')), "{} has a tagged image", c.name);
        }
        for vol in pod.volumes.iter().flatten() {
            if let Some(cm) = &vol.config_map {
                find(&all, "ConfigMap", &cm.name);
            }
        }
    }

    // The controller's TOML is a configuration the controller accepts.
    let cm: core::ConfigMap = typed(find(&all, "ConfigMap", "stacknet-controller"));
    let toml = cm.data.unwrap()["stacknet.toml"].clone();
    let dir = tempfile::tempdir().unwrap();
    // The Secret's files, where the pods mount it, are made here by a CA of the test's.
    let tls = dir.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    let issued = stacknet_testsupport::pki::Pki::new("test CA").issue(&tls, "tls", "stacknet");
    std::fs::rename(&issued.ca_cert, tls.join("ca.crt")).unwrap();
    assert!(toml.contains("/etc/stacknet/tls/"), "{toml}");
    let toml = toml.replace("/etc/stacknet/tls/", &format!("{}/", tls.display()));
    let file = dir.path().join("stacknet.toml");
    std::fs::write(&file, toml).unwrap();
    let config =
        ControllerConfig::from_args(&ControllerArgs { config: Some(file), ..ControllerArgs::default() }).unwrap();
    assert_eq!(config.metrics_addr.port(), 9478);
    // The production layout: the three members of a clustered Northbound database.
    assert_eq!(config.nb.len(), 3, "{:?}", config.nb);
    assert!(config.tls.is_some(), "over TLS");
    for volumes in [
        &spec.template.spec.as_ref().unwrap().volumes,
        &daemonset.spec.as_ref().unwrap().template.spec.as_ref().unwrap().volumes,
    ] {
        let secret = volumes.iter().flatten().find_map(|v| v.secret.clone()).expect("the TLS Secret mounted");
        assert_eq!(secret.secret_name.as_deref(), Some("stacknet-ovn-tls"));
        assert_eq!(secret.default_mode.map(|m| m & 0o007), Some(0), "not readable by other users");
    }
    let probes = spec.template.spec.as_ref().unwrap().containers[0].clone();
    assert_eq!(probes.readiness_probe.unwrap().http_get.unwrap().path.as_deref(), Some("/readyz"));
    assert_eq!(probes.liveness_probe.unwrap().http_get.unwrap().path.as_deref(), Some("/healthz"));

    // The CNI configuration names our plugin and the socket the agent listens on.
    let cm: core::ConfigMap = typed(find(&all, "ConfigMap", "stacknet-node"));
    let conflist: Value = serde_json::from_str(&cm.data.unwrap()["10-stacknet.conflist"]).unwrap();
    assert_eq!(conflist["plugins"][0]["type"], "stacknet-cni");
    let socket = conflist["plugins"][0]["agentSocket"].as_str().unwrap().to_string();
    let agent = daemonset.spec.unwrap().template.spec.unwrap().containers[0].clone();
    let args = agent.args.unwrap();
    assert!(
        args.windows(2).any(|w| w[0] == "--socket" && w[1] == socket),
        "agent listens where the plugin calls: {args:?}"
    );
    let nb = args.windows(2).find(|w| w[0] == "--nb").map(|w| w[1].clone()).expect("--nb");
    for flag in ["--ca-cert", "--certificate", "--private-key"] {
        let path = args.windows(2).find(|w| w[0] == flag).map(|w| w[1].clone()).expect(flag);
        assert!(path.starts_with("/etc/stacknet/tls/"), "{flag} {path}: from the mounted Secret");
    }
    assert_eq!(
        stacknet_ovsdb::Remote::parse_list(&nb).unwrap(),
        config.nb,
        "the agent and the controller: one database"
    );
}

#[test]
fn rbac_grants_every_watched_kind_and_the_lease() {
    let all = plain();
    let binding: rbac::ClusterRoleBinding = typed(find(&all, "ClusterRoleBinding", "stacknet-controller"));
    assert!(binding.subjects.unwrap().iter().any(|s| s.kind == "ServiceAccount" && s.name == "stacknet-controller"));
    let role: rbac::ClusterRole = typed(find(&all, "ClusterRole", &binding.role_ref.name));
    let grants = |rules: &[rbac::PolicyRule], group: &str, resource: &str, verb: &str| {
        rules.iter().any(|r| {
            r.api_groups.iter().flatten().any(|g| g == group)
                && r.resources.iter().flatten().any(|x| x == resource)
                && r.verbs.iter().any(|v| v == verb)
        })
    };
    let rules = role.rules.unwrap();
    for (group, resource) in WATCHED {
        for verb in ["list", "watch"] {
            assert!(grants(&rules, group, resource, verb), "{verb} {group}/{resource} not granted");
        }
    }
    let rb: rbac::RoleBinding = typed(find(&all, "RoleBinding", "stacknet-controller-leader"));
    let lease_role: rbac::Role = typed(find(&all, "Role", &rb.role_ref.name));
    for verb in ["get", "create", "update"] {
        assert!(grants(lease_role.rules.as_deref().unwrap(), "coordination.k8s.io", "leases", verb), "{verb} leases");
    }
    assert!(grants(&rules, "events.k8s.io", "events", "create"), "events");
    assert!(grants(&rules, "", "pods", "patch"), "the network annotation");
    assert!(grants(&rules, "", "services/status", "patch"), "load balancer addresses");
    // The only writes: events, patching pods' annotations and Services' status.
    for r in &rules {
        let resources: Vec<&str> = r.resources.iter().flatten().map(String::as_str).collect();
        for v in &r.verbs {
            let ok = ["get", "list", "watch"].contains(&v.as_str())
                || (v == "create" && resources == ["events"])
                || (v == "patch" && (resources == ["pods"] || resources == ["services/status"]));
            assert!(ok, "the cluster role may {v} {resources:?}");
        }
    }
    // The node agent (OpenStack mode): reads and annotates pods, posts Events; nothing else.
    let binding: rbac::ClusterRoleBinding = typed(find(&all, "ClusterRoleBinding", "stacknet-node"));
    assert!(binding.subjects.unwrap().iter().any(|s| s.kind == "ServiceAccount" && s.name == "stacknet-node"));
    let node: rbac::ClusterRole = typed(find(&all, "ClusterRole", &binding.role_ref.name));
    let rules = node.rules.unwrap();
    for (group, resource, verb) in [("", "pods", "get"), ("", "pods", "patch"), ("events.k8s.io", "events", "create")] {
        assert!(grants(&rules, group, resource, verb), "node agent: {verb} {group}/{resource}");
    }
    let verbs: usize = rules.iter().map(|r| r.verbs.len() * r.resources.iter().flatten().count()).sum();
    assert_eq!(verbs, 3, "the node agent may do nothing else: {rules:?}");
}

/// `helm template` for templates that only substitute values.
/// A template's text with its values substituted; a template wrapped in
/// `{{- if .Values.KEY }}` ... `{{- end }}` renders empty unless KEY is true.
fn render(template: &str, values: &BTreeMap<String, Value>) -> String {
    if let Some(first) = template.lines().next()
        && let Some(key) = first.strip_prefix("{{- if .Values.").and_then(|k| k.strip_suffix(" }}"))
    {
        let body = template[first.len() + 1..].trim_end().strip_suffix("{{- end }}").expect("closed by {{- end }}");
        return if values[key] == Value::Bool(true) { render(body, values) } else { String::new() };
    }
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").expect("closed") + start;
        let expr = rest[start + 2..end].trim();
        let value = if expr == ".Release.Namespace" {
            "stacknet-system".to_string()
        } else {
            let key = expr.strip_prefix(".Values.").unwrap_or_else(|| panic!("only value substitutions: {expr}"));
            match &values[key] {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            }
        };
        out.push_str(&value);
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

#[test]
fn the_chart_with_its_defaults_renders_the_plain_manifests() {
    let chart = deploy().join("helm/stacknet");
    let meta: Value = serde_saphyr::from_str(&std::fs::read_to_string(chart.join("Chart.yaml")).unwrap()).unwrap();
    assert_eq!(meta["apiVersion"], "v2");
    assert_eq!(meta["name"], "stacknet");
    assert!(meta["version"].as_str().is_some());
    let values: BTreeMap<String, Value> =
        serde_saphyr::from_str(&std::fs::read_to_string(chart.join("values.yaml")).unwrap()).unwrap();
    let mut rendered = Vec::new();
    for f in ["rbac.yaml", "controller.yaml", "node.yaml"] {
        let text = render(&std::fs::read_to_string(chart.join("templates").join(f)).unwrap(), &values);
        rendered.extend(docs(&text, f));
    }
    // The chart installs into the release's namespace; it does not create it.
    let expected: BTreeMap<String, Value> =
        plain().into_iter().filter(|v| v["kind"] != "Namespace").map(|v| (id(&v), v)).collect();
    let got: BTreeMap<String, Value> = rendered.into_iter().map(|v| (id(&v), v)).collect();
    assert_eq!(got.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
    for (k, v) in &expected {
        assert_eq!(&got[k], v, "{k} differs between the chart and deploy/");
    }
}

#[test]
fn the_compute_drain_manifests_hold_together_and_the_chart_renders_them_when_asked() {
    let file = std::fs::read_to_string(deploy().join("compute-drain.yaml")).unwrap();
    let all = docs(&file, "compute-drain.yaml");
    let deployment: apps::Deployment = typed(find(&all, "Deployment", "stacknet-compute-drain"));
    let spec = deployment.spec.unwrap();
    assert_eq!(spec.replicas, Some(1), "one replica: its state is Nova's and the Nodes'");
    let pod = spec.template.spec.unwrap();
    find(&all, "ServiceAccount", pod.service_account_name.as_deref().unwrap());
    let args = pod.containers[0].args.clone().unwrap();
    assert_eq!(args[0], "compute-drain");
    // The arguments are ones the command takes.
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: stacknet_drain::Args,
    }
    let parsed = Cli::try_parse_from(std::iter::once("x").chain(args[1..].iter().map(String::as_str))).unwrap();
    assert_eq!(parsed.args.os_cloud.as_deref(), Some("openstack"));
    // What it calls is granted: nodes (watch, patch, status), Events, hold pods and budgets.
    let role: rbac::ClusterRole = typed(find(&all, "ClusterRole", "stacknet-compute-drain"));
    let ns_role: rbac::Role = typed(find(&all, "Role", "stacknet-compute-drain"));
    let grants = |rules: &[rbac::PolicyRule], group: &str, resource: &str, verb: &str| {
        rules.iter().any(|r| {
            r.api_groups.iter().flatten().any(|g| g == group)
                && r.resources.iter().flatten().any(|x| x == resource)
                && r.verbs.iter().any(|v| v == verb)
        })
    };
    let cluster = role.rules.unwrap();
    let local = ns_role.rules.unwrap();
    for verb in ["get", "list", "watch", "patch"] {
        assert!(grants(&cluster, "", "nodes", verb), "nodes {verb}");
    }
    assert!(grants(&cluster, "", "nodes/status", "patch"));
    assert!(grants(&cluster, "events.k8s.io", "events", "create"));
    for verb in ["get", "create", "delete"] {
        assert!(grants(&local, "", "pods", verb) && grants(&local, "policy", "poddisruptionbudgets", verb), "{verb}");
    }

    let chart = deploy().join("helm/stacknet");
    let mut values: BTreeMap<String, Value> =
        serde_saphyr::from_str(&std::fs::read_to_string(chart.join("values.yaml")).unwrap()).unwrap();
    let template = std::fs::read_to_string(chart.join("templates/compute-drain.yaml")).unwrap();
    assert_eq!(render(&template, &values).trim(), "", "off by default");
    values.insert("computeDrain".into(), Value::Bool(true));
    let got = docs(&render(&template, &values), "the chart's compute-drain.yaml");
    assert_eq!(got, all, "the chart renders deploy/compute-drain.yaml");
}
