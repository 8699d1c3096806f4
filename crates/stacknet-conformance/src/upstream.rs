//! The 48 upstream cases, read from `tests/conformance/upstream/*.yaml` (format: the README in
//! that folder). The expectations are the upstream `Reachability` calls, replayed here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::networking::v1 as networking;
use serde::Deserialize;

use crate::world::{Event, World, pod_ip};
use crate::{CaseError, ExpectedProbe, Scenario, ScenarioStep};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    name: String,
    context: String,
    pods: Vec<String>,
    ports: Vec<u16>,
    protocols: Vec<String>,
    steps: Vec<StepFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    description: String,
    #[serde(default)]
    apply: Vec<String>,
    #[serde(default)]
    delete: Vec<String>,
    #[serde(default)]
    delete_all_policies: bool,
    #[serde(default)]
    namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    pod_labels: BTreeMap<String, BTreeMap<String, String>>,
    probes: Vec<ProbeFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeFile {
    port: u16,
    protocol: String,
    default: bool,
    #[serde(default)]
    expect: Vec<Expect>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerMatch {
    namespace: Option<String>,
    pod: Option<String>,
}

impl PeerMatch {
    fn matches(&self, pod: &str) -> bool {
        let (ns, name) = pod.split_once('/').expect("ns/name");
        self.namespace.as_deref().is_none_or(|n| n == ns) && self.pod.as_deref().is_none_or(|p| p == name)
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Expect {
    /// `ExpectPeer(from, to, allowed)`
    Peer { from: PeerMatch, to: PeerMatch, allowed: bool },
    /// `ExpectAllIngress(pod, allowed)`
    AllIngress { pod: String, allowed: bool },
    /// `ExpectAllEgress(pod, allowed)`
    AllEgress { pod: String, allowed: bool },
    /// `Expect(from, to, allowed)`
    Pair { from: String, to: String, allowed: bool },
}

/// The folder holding the upstream cases.
pub fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance/upstream")
}

/// Every upstream case, in file order.
pub fn load_all() -> Result<Vec<Scenario>, CaseError> {
    let dir = cases_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| CaseError::Invalid { file: dir.display().to_string(), message: e.to_string() })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files.iter().map(|f| load(f)).collect()
}

pub fn load(path: &Path) -> Result<Scenario, CaseError> {
    let file = path.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
    let bad = |message: String| CaseError::Invalid { file: file.clone(), message };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let case: CaseFile = serde_saphyr::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let initial = World::standard(&case.pods, &case.ports, &case.protocols);
    let mut world = initial.clone();
    let mut steps = Vec::new();
    for (i, step) in case.steps.iter().enumerate() {
        let mut events = Vec::new();
        if step.delete_all_policies {
            for p in world.policies.values() {
                events.push(Event::DeletePolicy {
                    namespace: p.metadata.namespace.clone().unwrap_or_default(),
                    name: p.metadata.name.clone().unwrap_or_default(),
                });
            }
        }
        for d in &step.delete {
            let (namespace, name) =
                d.split_once('/').ok_or_else(|| bad(format!("step {}: delete {d:?} is not ns/name", i + 1)))?;
            events.push(Event::DeletePolicy { namespace: namespace.into(), name: name.into() });
        }
        for (j, text) in step.apply.iter().enumerate() {
            let text = substitute(text).map_err(|m| bad(format!("step {}: apply[{j}]: {m}", i + 1)))?;
            let policy: networking::NetworkPolicy =
                serde_saphyr::from_str(&text).map_err(|e| bad(format!("step {}: apply[{j}]: {e}", i + 1)))?;
            events.push(Event::Policy(policy));
        }
        for (ns, labels) in &step.namespace_labels {
            let mut obj = world.namespaces.get(ns).cloned().ok_or_else(|| bad(format!("no namespace {ns}")))?;
            obj.metadata.labels.get_or_insert_default().extend(labels.clone());
            events.push(Event::Namespace(obj));
        }
        for (pod, labels) in &step.pod_labels {
            let mut obj = world.pods.get(pod).cloned().ok_or_else(|| bad(format!("no pod {pod}")))?;
            obj.metadata.labels.get_or_insert_default().extend(labels.clone());
            events.push(Event::Pod(Box::new(obj)));
        }
        for e in &events {
            world.apply(e);
        }
        let probes = step
            .probes
            .iter()
            .map(|p| ExpectedProbe {
                port: p.port,
                protocol: p.protocol.clone(),
                expected: expectations(&case.pods, p.default, &p.expect),
            })
            .collect();
        steps.push(ScenarioStep { description: step.description.clone(), events, world: world.clone(), probes });
    }
    Ok(Scenario { name: format!("{} [{}] ({file})", case.name, case.context), initial, steps })
}

/// Replays the upstream Reachability calls into a truth table, loopback left out.
fn expectations(pods: &[String], default: bool, ops: &[Expect]) -> BTreeMap<(String, String), bool> {
    let mut table: BTreeMap<(String, String), bool> = BTreeMap::new();
    for a in pods {
        for b in pods {
            table.insert((a.clone(), b.clone()), default);
        }
    }
    for op in ops {
        for ((from, to), v) in table.iter_mut() {
            let hit = match op {
                Expect::Peer { from: f, to: t, .. } => f.matches(from) && t.matches(to),
                Expect::AllIngress { pod, .. } => to == pod,
                Expect::AllEgress { pod, .. } => from == pod,
                Expect::Pair { from: f, to: t, .. } => f == from && t == to,
            };
            if hit {
                *v = match op {
                    Expect::Peer { allowed, .. }
                    | Expect::AllIngress { allowed, .. }
                    | Expect::AllEgress { allowed, .. }
                    | Expect::Pair { allowed, .. } => *allowed,
                };
            }
        }
    }
    table.retain(|(a, b), _| a != b);
    table
}

/// Replaces `{{ip ns/pod}}` and `{{large_cidr ns/pod}}` (upstream `makeLargeCIDRForIP`: the /4
/// holding the pod's address).
fn substitute(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").ok_or("unclosed {{")? + start;
        let inner = rest[start + 2..end].trim();
        let (what, pod) = inner.split_once(' ').ok_or_else(|| format!("bad placeholder {inner:?}"))?;
        let (ns, name) = pod.split_once('/').ok_or_else(|| format!("bad pod {pod:?}"))?;
        let ip = pod_ip(ns, name);
        match what {
            "ip" => out.push_str(&ip.to_string()),
            "large_cidr" => {
                let base = u32::from(ip) & 0xf000_0000;
                out.push_str(&format!("{}/4", std::net::Ipv4Addr::from(base)));
            }
            other => return Err(format!("unknown placeholder {other:?}")),
        }
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders() {
        assert_eq!(substitute("cidr: {{ip y/b}}/32").unwrap(), "cidr: 10.2.0.2/32");
        assert_eq!(substitute("{{large_cidr x/b}}").unwrap(), "0.0.0.0/4");
        assert!(substitute("{{mac x/b}}").is_err());
    }

    #[test]
    fn reachability_calls_replay_in_order() {
        let pods: Vec<String> = ["x/a", "x/b", "y/a"].map(String::from).to_vec();
        let ops = vec![
            Expect::AllIngress { pod: "x/a".into(), allowed: false },
            Expect::Pair { from: "x/b".into(), to: "x/a".into(), allowed: true },
        ];
        let t = expectations(&pods, true, &ops);
        assert_eq!(t.len(), 6, "loopback is left out");
        assert!(!t[&("y/a".into(), "x/a".into())]);
        assert!(t[&("x/b".into(), "x/a".into())]);
        assert!(t[&("x/a".into(), "y/a".into())]);
    }

    #[test]
    fn all_48_upstream_cases_load() {
        let cases = load_all().unwrap();
        assert_eq!(cases.len(), 48);
        let probes: usize = cases.iter().flat_map(|c| &c.steps).map(|s| s.probes.len()).sum();
        assert!(probes >= 60, "{probes} probes");
    }
}
