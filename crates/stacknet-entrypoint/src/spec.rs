//! What the environment asks for, in kubernetes-entrypoint's variables and formats (so that the
//! pod specs openstack-helm's helm-toolkit renders work unchanged): `COMMAND`, `POD_NAME`,
//! `NAMESPACE`, `INTERFACE_NAME`, and the `DEPENDENCY_*` lists. Pure: a map of variables in,
//! a [`Spec`] or an error naming the variable and the entry out.
//!
//! Differences from the anchor, all on bad input: it logs a malformed entry and skips it (so a
//! typo means a dependency silently not waited for); here it is an error (exit 2). A namespace
//! on a container, config or socket entry is refused the same way (the anchor meant to, but
//! tests the variable's name instead of its value).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// One thing to wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dependency {
    /// A Service, ready when one of its endpoints accepts a TCP connection.
    Service { namespace: String, name: String },
    /// A DaemonSet, ready when its pod on this pod's node is ready.
    DaemonSet { namespace: String, name: String },
    /// A container of this pod, ready when its status says so.
    Container { name: String },
    /// Pods by labels, ready when one is (on this pod's node, with `same_node`).
    Pod { namespace: String, labels: BTreeMap<String, String>, same_node: bool },
    /// A Job by name, or the newest Job with these labels: ready when it completed.
    Job { namespace: String, name: Option<String>, labels: BTreeMap<String, String> },
    /// A file rendered from `/configmaps/<file>/<file>` (HOSTNAME, IP, IP_ERLANG).
    Config { path: PathBuf },
    /// A path that must exist (a unix socket, typically).
    Socket { path: PathBuf },
    /// A custom resource whose fields and conditions must say so.
    CustomResource(CustomResource),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CustomResource {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    /// Dotted paths into the object and the value each must have.
    #[serde(default)]
    pub fields: Vec<Field>,
    /// `status.conditions[type]` and the status it must have (`True` when not given).
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Field {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub status: String,
}

impl Dependency {
    /// Whether the Kubernetes API is needed to tell.
    pub fn needs_api(&self) -> bool {
        !matches!(self, Dependency::Config { .. } | Dependency::Socket { .. })
    }
}

impl std::fmt::Display for Dependency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let labels =
            |l: &BTreeMap<String, String>| l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        match self {
            Dependency::Service { namespace, name } => write!(f, "Service {namespace}/{name}"),
            Dependency::DaemonSet { namespace, name } => write!(f, "DaemonSet {namespace}/{name}"),
            Dependency::Container { name } => write!(f, "container {name}"),
            Dependency::Pod { namespace, labels: l, same_node } => {
                write!(
                    f,
                    "pod in {namespace} with labels {}{}",
                    labels(l),
                    if *same_node { " on this node" } else { "" }
                )
            }
            Dependency::Job { namespace, name: Some(n), .. } => write!(f, "Job {namespace}/{n}"),
            Dependency::Job { namespace, labels: l, .. } => write!(f, "Job in {namespace} with labels {}", labels(l)),
            Dependency::Config { path } => write!(f, "config {}", path.display()),
            Dependency::Socket { path } => write!(f, "socket {}", path.display()),
            Dependency::CustomResource(c) => write!(f, "{} {}/{} ({})", c.kind, c.namespace, c.name, c.api_version),
        }
    }
}

/// Everything the environment says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// What to exec once everything is there (empty: just exit 0, as an init container).
    pub command: Vec<String>,
    /// This pod (`POD_NAME` in `NAMESPACE`), if known.
    pub pod: Option<String>,
    pub namespace: String,
    /// The interface whose address a config template gets (`INTERFACE_NAME`).
    pub interface: Option<String>,
    pub dependencies: Vec<Dependency>,
    /// `DEPENDENCY_TIMEOUT`: give up after this long.
    pub timeout: Option<Duration>,
}

/// A variable that does not say what it should: its name, the entry, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}{}: {message}", entry.as_ref().map(|e| format!(" entry {e:?}")).unwrap_or_default())]
pub struct SpecError {
    pub variable: String,
    pub entry: Option<String>,
    pub message: String,
}

fn error(variable: &str, entry: Option<&str>, message: impl Into<String>) -> SpecError {
    SpecError { variable: variable.into(), entry: entry.map(str::to_string), message: message.into() }
}

/// `namespace:name` or `name` (in `namespace`), comma-separated; blanks between entries are
/// allowed (helm-toolkit renders empty lists as "").
fn names(vars: &BTreeMap<String, String>, var: &str, namespace: &str) -> Result<Vec<(String, String)>, SpecError> {
    let Some(v) = vars.get(var) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for entry in v.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (ns, name) = match entry.split(':').collect::<Vec<_>>().as_slice() {
            [name] => (namespace, *name),
            [ns, name] => (*ns, *name),
            _ => return Err(error(var, Some(entry), "expected name or namespace:name")),
        };
        if ns.is_empty() {
            return Err(error(var, Some(entry), "the namespace before ':' is empty"));
        }
        if name.is_empty() {
            return Err(error(var, Some(entry), "the name after ':' is empty"));
        }
        out.push((ns.to_string(), name.to_string()));
    }
    Ok(out)
}

/// Entries that take no namespace (containers, configs, sockets).
fn plain(vars: &BTreeMap<String, String>, var: &str) -> Result<Vec<String>, SpecError> {
    let Some(v) = vars.get(var) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for entry in v.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if entry.contains(':') {
            return Err(error(var, Some(entry), "takes no namespace"));
        }
        out.push(entry.to_string());
    }
    Ok(out)
}

/// A JSON list variable (empty or absent: none); an error names the entry's index.
fn json_list<T: serde::de::DeserializeOwned>(vars: &BTreeMap<String, String>, var: &str) -> Result<Vec<T>, SpecError> {
    let Some(v) = vars.get(var).filter(|v| !v.trim().is_empty()) else { return Ok(Vec::new()) };
    let items: Vec<serde_json::Value> =
        serde_json::from_str(v).map_err(|e| error(var, None, format!("not a JSON list: {e}")))?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let shown = item.to_string();
            serde_json::from_value(item).map_err(|e| error(var, Some(&format!("[{i}] {shown}")), e.to_string()))
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PodEntry {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    namespace: String,
    #[serde(default, rename = "requireSameNode")]
    require_same_node: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobEntry {
    #[serde(default)]
    name: String,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    namespace: String,
}

/// `DEPENDENCY_TIMEOUT`: seconds, or a number with `s`, `m` or `h`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit() && *c != '.') {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().ok().filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "ms" => n / 1000.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

impl Spec {
    /// Reads the variables (as the process environment has them).
    pub fn from_vars(vars: &BTreeMap<String, String>) -> Result<Spec, SpecError> {
        let namespace =
            vars.get("NAMESPACE").map(|n| n.trim()).filter(|n| !n.is_empty()).unwrap_or("default").to_string();
        let mut deps = Vec::new();
        for (ns, name) in names(vars, "DEPENDENCY_SERVICE", &namespace)? {
            deps.push(Dependency::Service { namespace: ns, name });
        }
        for (ns, name) in names(vars, "DEPENDENCY_DAEMONSET", &namespace)? {
            deps.push(Dependency::DaemonSet { namespace: ns, name });
        }
        for name in plain(vars, "DEPENDENCY_CONTAINER")? {
            deps.push(Dependency::Container { name });
        }
        for p in json_list::<PodEntry>(vars, "DEPENDENCY_POD_JSON")? {
            deps.push(Dependency::Pod {
                namespace: if p.namespace.is_empty() { namespace.clone() } else { p.namespace },
                labels: p.labels,
                same_node: p.require_same_node,
            });
        }
        // The JSON form wins (the anchor says so in a warning).
        let jobs_json = vars.get("DEPENDENCY_JOBS_JSON").is_some_and(|v| !v.trim().is_empty());
        if jobs_json {
            for (i, j) in json_list::<JobEntry>(vars, "DEPENDENCY_JOBS_JSON")?.into_iter().enumerate() {
                let at = |m: &str| error("DEPENDENCY_JOBS_JSON", Some(&format!("[{i}]")), m);
                let name = Some(j.name).filter(|n| !n.is_empty());
                match (&name, &j.labels) {
                    (Some(_), Some(_)) => return Err(at("name and labels: give one")),
                    (None, None) => return Err(at("neither name nor labels")),
                    (None, Some(l)) if l.is_empty() => return Err(at("empty labels would match every Job")),
                    _ => {}
                }
                deps.push(Dependency::Job {
                    namespace: if j.namespace.is_empty() { namespace.clone() } else { j.namespace },
                    name,
                    labels: j.labels.unwrap_or_default(),
                });
            }
        } else {
            for (ns, name) in names(vars, "DEPENDENCY_JOBS", &namespace)? {
                deps.push(Dependency::Job { namespace: ns, name: Some(name), labels: BTreeMap::new() });
            }
        }
        for path in plain(vars, "DEPENDENCY_CONFIG")? {
            deps.push(Dependency::Config { path: path.into() });
        }
        for path in plain(vars, "DEPENDENCY_SOCKET")? {
            deps.push(Dependency::Socket { path: path.into() });
        }
        for (i, mut c) in json_list::<CustomResource>(vars, "DEPENDENCY_CUSTOM_RESOURCE")?.into_iter().enumerate() {
            let at = |m: &str| error("DEPENDENCY_CUSTOM_RESOURCE", Some(&format!("[{i}]")), m);
            if c.api_version.is_empty() || c.kind.is_empty() || c.name.is_empty() {
                return Err(at("apiVersion, kind and name are required"));
            }
            if let Some(f) = c.fields.iter().find(|f| f.key.is_empty() || f.key.split('.').any(str::is_empty)) {
                return Err(at(&format!("fields: {:?} is not a dotted path", f.key)));
            }
            if c.conditions.iter().any(|c| c.type_.is_empty()) {
                return Err(at("conditions: a condition needs a type"));
            }
            if c.namespace.is_empty() {
                c.namespace = namespace.clone();
            }
            deps.push(Dependency::CustomResource(c));
        }
        let pod = vars.get("POD_NAME").map(|p| p.trim()).filter(|p| !p.is_empty()).map(str::to_string);
        let needs_pod = deps.iter().any(|d| {
            matches!(
                d,
                Dependency::DaemonSet { .. } | Dependency::Container { .. } | Dependency::Pod { same_node: true, .. }
            )
        });
        if needs_pod && pod.is_none() {
            let what = deps.iter().find(|d| {
                matches!(d, Dependency::DaemonSet { .. } | Dependency::Container { .. } | Dependency::Pod { .. })
            });
            return Err(error(
                "POD_NAME",
                None,
                format!("required for {} (which node, which pod)", what.map(|d| d.to_string()).unwrap_or_default()),
            ));
        }
        let timeout = match vars.get("DEPENDENCY_TIMEOUT").map(|t| t.trim()).filter(|t| !t.is_empty()) {
            None => None,
            Some(t) => Some(parse_duration(t).ok_or_else(|| {
                error("DEPENDENCY_TIMEOUT", Some(t), "expected seconds, or a number with s, m or h (90, 2m)")
            })?),
        };
        let command =
            vars.get("COMMAND").map(|c| c.split_whitespace().map(str::to_string).collect()).unwrap_or_default();
        Ok(Spec {
            command,
            pod,
            namespace,
            interface: vars.get("INTERFACE_NAME").map(|i| i.trim()).filter(|i| !i.is_empty()).map(str::to_string),
            dependencies: deps,
            timeout,
        })
    }

    /// Whether any dependency needs the Kubernetes API.
    pub fn needs_api(&self) -> bool {
        self.dependencies.iter().any(Dependency::needs_api)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// helm-toolkit's own rendered example (snippets/_kubernetes_entrypoint_init_container.tpl,
    /// openstack-helm 2026), as the pod's environment has it.
    fn helm_toolkit_example() -> BTreeMap<String, String> {
        vars(&[
            ("POD_NAME", "calico-node-x7k2p"),
            ("NAMESPACE", "kube-system"),
            ("INTERFACE_NAME", "eth0"),
            ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/"),
            ("DEPENDENCY_SERVICE", "default:etcd,docker-registry:localhost"),
            ("DEPENDENCY_JOBS", "calico-image-repo-sync"),
            ("DEPENDENCY_DAEMONSET", ""),
            ("DEPENDENCY_CONTAINER", ""),
            ("DEPENDENCY_POD_JSON", ""),
            (
                "DEPENDENCY_CUSTOM_RESOURCE",
                r#"[{"apiVersion":"argoproj.io/v1alpha1","kind":"Workflow","namespace":"default","name":"wf-example","fields":[{"key":"status.phase","value":"Succeeded"}]}]"#,
            ),
        ])
    }

    #[test]
    fn helm_toolkits_rendering_reads_as_the_anchor_reads_it() {
        let s = Spec::from_vars(&helm_toolkit_example()).unwrap();
        assert_eq!(s.command, Vec::<String>::new(), "an init container: no COMMAND, exit 0 when met");
        assert_eq!((s.pod.as_deref(), s.namespace.as_str()), (Some("calico-node-x7k2p"), "kube-system"));
        assert_eq!(
            s.dependencies,
            [
                Dependency::Service { namespace: "default".into(), name: "etcd".into() },
                Dependency::Service { namespace: "docker-registry".into(), name: "localhost".into() },
                Dependency::Job {
                    namespace: "kube-system".into(),
                    name: Some("calico-image-repo-sync".into()),
                    labels: BTreeMap::new()
                },
                Dependency::CustomResource(CustomResource {
                    api_version: "argoproj.io/v1alpha1".into(),
                    kind: "Workflow".into(),
                    name: "wf-example".into(),
                    namespace: "default".into(),
                    fields: vec![Field { key: "status.phase".into(), value: "Succeeded".into() }],
                    conditions: vec![],
                }),
            ]
        );
        assert!(s.needs_api());
    }

    /// nova-compute's init container with OVN (values.yaml dependencies.dynamic.targeted.ovn)
    /// and the JSON job form.
    #[test]
    fn pods_on_the_same_node_jobs_by_labels_and_the_rest() {
        let s = Spec::from_vars(&vars(&[
            ("POD_NAME", "nova-compute-default-abcde"),
            ("NAMESPACE", "openstack"),
            ("COMMAND", "  /tmp/nova-compute.sh   --debug "),
            ("DEPENDENCY_POD_JSON", r#"[{"requireSameNode":true,"labels":{"application":"ovn","component":"ovn-controller"}}]"#),
            ("DEPENDENCY_JOBS_JSON", r#"[{"labels":{"application":"nova","component":"db-sync"}},{"name":"nova-ks-user","namespace":"other"}]"#),
            ("DEPENDENCY_JOBS", "ignored-when-json-is-given"),
            ("DEPENDENCY_DAEMONSET", "openstack:libvirt-libvirt-default , ovs"),
            ("DEPENDENCY_CONTAINER", "nova-compute-init"),
            ("DEPENDENCY_SOCKET", "/run/openvswitch/db.sock"),
            ("DEPENDENCY_CONFIG", "/etc/nova/nova.conf"),
            ("DEPENDENCY_TIMEOUT", "2m"),
        ]))
        .unwrap();
        assert_eq!(s.command, ["/tmp/nova-compute.sh", "--debug"]);
        assert_eq!(s.timeout, Some(Duration::from_secs(120)));
        let shown: Vec<String> = s.dependencies.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            shown,
            [
                "DaemonSet openstack/libvirt-libvirt-default",
                "DaemonSet openstack/ovs",
                "container nova-compute-init",
                "pod in openstack with labels application=ovn,component=ovn-controller on this node",
                "Job in openstack with labels application=nova,component=db-sync",
                "Job other/nova-ks-user",
                "config /etc/nova/nova.conf",
                "socket /run/openvswitch/db.sock",
            ]
        );
    }

    #[test]
    fn local_dependencies_need_no_api() {
        let s = Spec::from_vars(&vars(&[("DEPENDENCY_SOCKET", "/run/a.sock"), ("COMMAND", "echo hi")])).unwrap();
        assert!(!s.needs_api());
        assert_eq!(s.namespace, "default");
    }

    #[test]
    fn bad_entries_name_the_variable_and_the_entry() {
        let e = |pairs: &[(&str, &str)]| Spec::from_vars(&vars(pairs)).unwrap_err().to_string();
        assert_eq!(
            e(&[("DEPENDENCY_SERVICE", "a,b:c:d")]),
            "DEPENDENCY_SERVICE entry \"b:c:d\": expected name or namespace:name"
        );
        assert_eq!(
            e(&[("DEPENDENCY_SERVICE", ":keystone")]),
            "DEPENDENCY_SERVICE entry \":keystone\": the namespace before ':' is empty"
        );
        assert_eq!(
            e(&[("DEPENDENCY_SOCKET", "ns:/run/x")]),
            "DEPENDENCY_SOCKET entry \"ns:/run/x\": takes no namespace"
        );
        assert!(e(&[("DEPENDENCY_POD_JSON", "{")]).starts_with("DEPENDENCY_POD_JSON: not a JSON list"));
        let pod =
            e(&[("POD_NAME", "p"), ("DEPENDENCY_POD_JSON", r#"[{"labels": {"a": "b"}, "requireSamenode": true}]"#)]);
        assert!(pod.starts_with("DEPENDENCY_POD_JSON entry \"[0] {") && pod.contains("requireSamenode"), "{pod}");
        assert_eq!(
            e(&[("DEPENDENCY_JOBS_JSON", r#"[{"name": "a", "labels": {"x": "y"}}]"#)]),
            "DEPENDENCY_JOBS_JSON entry \"[0]\": name and labels: give one"
        );
        assert_eq!(
            e(&[(
                "DEPENDENCY_CUSTOM_RESOURCE",
                r#"[{"apiVersion": "v1", "kind": "X", "name": "y", "fields": [{"key": "status..phase", "value": "a"}]}]"#
            )]),
            "DEPENDENCY_CUSTOM_RESOURCE entry \"[0]\": fields: \"status..phase\" is not a dotted path"
        );
        assert_eq!(e(&[("DEPENDENCY_CONTAINER", "c")]), "POD_NAME: required for container c (which node, which pod)");
        assert!(e(&[("DEPENDENCY_TIMEOUT", "soon")]).starts_with("DEPENDENCY_TIMEOUT entry \"soon\""));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5m"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("-1"), None);
        assert_eq!(parse_duration("1d"), None);
    }
}
