//! `stacknet reach` as a user runs it: the real binary, the example manifests, bad input.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn stacknet(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stacknet"))
        .args(args)
        .current_dir(root())
        .env_remove("NO_COLOR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("stacknet runs");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.unwrap_or_default().as_bytes()).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("stacknet finishes")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const PROBES: [&str; 8] = ["-p", "80/TCP", "-p", "8000/TCP", "-p", "5432/TCP", "-p", "9100/TCP"];

fn three_tier_json(dataplane: &str) -> Value {
    let mut args = vec!["reach", "-f", "examples/three-tier", "--output", "json", "--dataplane", dataplane];
    args.extend(PROBES);
    let out = stacknet(&args, None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    // Exactly one JSON object on stdout.
    let mut stream = serde_json::Deserializer::from_str(&text).into_iter::<Value>();
    let v = stream.next().expect("one value").expect("valid JSON");
    assert!(stream.next().is_none(), "more than one JSON value on stdout");
    v
}

fn verdict(v: &Value, from: &str, to: &str, port: u64) -> bool {
    let hits: Vec<&Value> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["from"] == from && r["to"] == to && r["port"] == port)
        .collect();
    assert_eq!(hits.len(), 1, "{from} -> {to}:{port}");
    hits[0]["allowed"].as_bool().unwrap()
}

#[test]
fn json_contract_and_the_three_tier_verdicts() {
    let v = three_tier_json("semantics");
    let results = v["results"].as_array().unwrap();
    // 7 pods: 42 ordered pairs of distinct pods, 4 probes.
    assert_eq!(results.len(), 42 * 4);
    for r in results {
        let keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 5, "{r}");
        for k in ["from", "to", "port", "protocol", "allowed"] {
            assert!(keys.contains(&k), "{r}");
        }
        assert_eq!(r["protocol"], "TCP");
        assert_ne!(r["from"], r["to"]);
    }
    // The seed's DB_SG: only the application tier reaches the database.
    assert!(verdict(&v, "leonardo/app-0", "leonardo/db-0", 5432));
    assert!(!verdict(&v, "leonardo/web-0", "leonardo/db-0", 5432));
    assert!(!verdict(&v, "leonardo/cache-0", "leonardo/db-0", 5432));
    // The web tier may only call the application tier.
    assert!(verdict(&v, "leonardo/web-0", "leonardo/app-1", 8000));
    assert!(!verdict(&v, "leonardo/web-0", "kube-system/coredns-0", 80));
    // Named port "metrics" is 9100 on app pods but 9150 on memcached.
    assert!(verdict(&v, "monitoring/prometheus-0", "leonardo/app-0", 9100));
    assert!(!verdict(&v, "monitoring/prometheus-0", "leonardo/cache-0", 9100));
    // Namespaces without policies are open.
    assert!(verdict(&v, "leonardo/db-0", "monitoring/prometheus-0", 9100));
}

#[test]
fn compiled_model_gives_the_same_answers() {
    assert_eq!(three_tier_json("semantics"), three_tier_json("compiled"));
}

/// The same question answered by OVN itself: a private NB/SB/ovn-northd programmed by the
/// backend, every probe traced by ovn-trace.
#[test]
fn ovn_trace_gives_the_same_answers() {
    assert_eq!(three_tier_json("semantics"), three_tier_json("ovn-trace"));
}

/// And by real packets: a node started for the run, every pod a network namespace wired by
/// stacknet-cni, every probe a real connection. Nothing it started is left afterwards.
#[test]
fn live_dataplane_gives_the_same_answers_and_cleans_up() {
    let plugin = PathBuf::from(env!("CARGO_BIN_EXE_stacknet")).with_file_name("stacknet-cni");
    assert!(plugin.is_file(), "{} missing (cargo test --workspace builds it)", plugin.display());
    let mut args = vec!["reach", "-f", "examples/three-tier", "--output", "json", "--dataplane", "live", "--cni"];
    args.push(plugin.to_str().unwrap());
    args.extend(PROBES);
    let child = Command::new(env!("CARGO_BIN_EXE_stacknet"))
        .args(&args)
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let live: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(three_tier_json("semantics"), live);
    // The pods' namespaces (named after the run's PID) are gone.
    let netns = String::from_utf8(Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).unwrap();
    for n in 0..7usize {
        let name = format!("snp-{:x}", pid as usize * 100_000 + n);
        assert!(!netns.contains(&name), "{name} left behind");
    }
    // SCTP on a kernel without it: an error, not a verdict.
    let sctp = stacknet(
        &[
            "reach",
            "-f",
            "examples/three-tier",
            "-p",
            "80/SCTP",
            "--dataplane",
            "live",
            "--cni",
            plugin.to_str().unwrap(),
        ],
        None,
    );
    if !std::path::Path::new("/proc/sys/net/sctp").exists() {
        assert_eq!(sctp.status.code(), Some(1), "{}", stderr(&sctp));
        assert!(stderr(&sctp).contains("SCTP"), "{}", stderr(&sctp));
        assert!(sctp.stdout.is_empty());
    }
}

#[test]
fn table_is_plain_text_when_not_a_terminal() {
    let out = stacknet(
        &[
            "reach",
            "-f",
            "examples/three-tier/cluster.yaml",
            "-f",
            "examples/three-tier/policies.yaml",
            "-p",
            "5432/TCP",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("5432/TCP"), "{text}");
    assert!(text.contains('✓') && text.contains('✗'));
    assert!(!text.contains('\x1b'), "no color codes in a pipe");
    assert!(text.contains("leonardo/db-0"));
}

#[test]
fn invalid_policy_exits_2_naming_file_object_and_field() {
    let bad = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-web, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    - port: 80\n    - port: http\n      endPort: 90\n";
    let out = stacknet(&["reach", "-f", "-", "-p", "80"], Some(bad));
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "nothing half-written on stdout");
    assert_eq!(
        stderr(&out).trim(),
        "error: <stdin>: NetworkPolicy x/allow-web: spec.ingress[0].ports[1].endPort: endPort requires a numeric port"
    );
}

#[test]
fn garbage_and_missing_files_exit_2_without_a_panic() {
    for garbage in ["\u{0}\u{1}\u{2}", "{{{{", "- - - :\n  ]", "kind: [", "42\n"] {
        let out = stacknet(&["reach", "-f", "-", "-p", "80"], Some(garbage));
        assert_eq!(out.status.code(), Some(2), "input {garbage:?}: {}", stderr(&out));
        assert!(stderr(&out).starts_with("error: <stdin>:"), "{}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"));
    }
    let out = stacknet(&["reach", "-f", "does/not/exist.yaml", "-p", "80"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("does/not/exist.yaml: cannot read"), "{}", stderr(&out));
    let out = stacknet(&["reach", "-f", "crates", "-p", "80"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no .yaml"), "{}", stderr(&out));
}

#[test]
fn bad_probes_and_flags_exit_2() {
    for probe in ["0/TCP", "80/ICMP", "http", "70000"] {
        let out = stacknet(&["reach", "-f", "examples/three-tier", "-p", probe], None);
        assert_eq!(out.status.code(), Some(2), "probe {probe}");
        assert!(stderr(&out).contains(probe), "{}", stderr(&out));
    }
    let out = stacknet(&["reach", "-f", "examples/three-tier"], None);
    assert_eq!(out.status.code(), Some(2), "a probe is required");
}

#[test]
fn skipped_kinds_and_unknown_fields_are_warnings() {
    let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: x}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c, image: i}], hostNetwrk: true}\n";
    let out = stacknet(&["reach", "-f", "-", "-p", "80", "-o", "json"], Some(text));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("warning: <stdin>: document 1: skipped Deployment x/web"), "{err}");
    assert!(err.contains("unknown field spec.hostNetwrk"), "{err}");
}

#[test]
fn nodes_outside_hosts_and_services_take_part_with_the_engine() {
    let json = |extra: &[&str]| {
        let mut args = vec!["reach", "-f", "examples/three-tier", "-o", "json", "-p", "80/TCP", "-p", "8000/TCP"];
        args.extend(["--nodes", "--external", "outside=172.30.0.100", "--service", "leonardo/web", "--service"]);
        args.extend(["leonardo/app", "--via", "nodeport", "--via", "clusterip"]);
        args.extend(extra);
        let out = stacknet(&args, None);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let v = json(&[]);
    let find = |v: &Value, from: &str, to: &str, port: u64, via: Option<&str>, node: Option<&str>| -> bool {
        let hits: Vec<&Value> = v["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["from"] == from
                    && r["to"] == to
                    && r["port"] == port
                    && r["via"].as_str() == via
                    && r["node"].as_str() == node
            })
            .collect();
        assert_eq!(hits.len(), 1, "{from} -> {to}:{port} via {via:?} on {node:?}");
        hits[0]["allowed"].as_bool().unwrap()
    };
    // A pod and its own node always talk; another node is policed by its address.
    assert!(find(&v, "node/node-2", "leonardo/app-1", 8000, None, None), "own node, under app's policy");
    assert!(!find(&v, "node/node-1", "leonardo/app-1", 8000, None, None), "another node");
    assert!(find(&v, "leonardo/app-0", "external/outside", 80, None, None));
    assert!(!find(&v, "leonardo/web-0", "external/outside", 80, None, None), "web-egress");
    assert!(!find(&v, "external/outside", "leonardo/web-0", 80, None, None), "SNAT: no route in");
    // Through Services: web is open from outside on every node's NodePort, app is not.
    for n in ["node-1", "node-2", "node-3"] {
        assert!(find(&v, "external/outside", "leonardo/web", 30080, Some("nodeport"), Some(n)), "{n}");
        assert!(!find(&v, "external/outside", "leonardo/app", 30800, Some("nodeport"), Some(n)), "{n}");
    }
    assert!(find(&v, "leonardo/web-0", "leonardo/app", 8000, Some("clusterip"), None));
    assert!(!find(&v, "leonardo/cache-0", "leonardo/app", 8000, Some("clusterip"), None));
    // Without SNAT the outside reaches pods' own addresses, as their policies say.
    let v = json(&["--snat", "false"]);
    assert!(find(&v, "external/outside", "leonardo/web-0", 80, None, None));
    assert!(!find(&v, "external/outside", "leonardo/app-0", 8000, None, None));
    // Bad input names the flag; the other dataplanes do not take these endpoints.
    let out = stacknet(&["reach", "-f", "examples/three-tier", "-p", "80", "--external", "outside"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--external \"outside\": not NAME=IP"), "{}", stderr(&out));
    let out = stacknet(&["reach", "-f", "examples/three-tier", "-p", "80", "--service", "leonardo/nope"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("leonardo/nope"), "{}", stderr(&out));
    let out =
        stacknet(&["reach", "-f", "examples/three-tier", "-p", "80", "--nodes", "--dataplane", "ovn-trace"], None);
    assert_eq!(out.status.code(), Some(2));
}
