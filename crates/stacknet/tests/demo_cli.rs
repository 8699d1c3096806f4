//! `stacknet demo --output json` (without a terminal): it exits 0; its one JSON object holds
//! pod, node and outside-host probes and probes through NodePorts, the load balancer address
//! and cluster IPs, every one live as expected; the matrices (on stderr) equal the expected
//! ones before and after the policy edit, the edit changes exactly what it should, and nothing
//! is left behind.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn netns() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

#[test]
fn the_demo_shows_the_live_network_equal_to_the_policies_and_cleans_up() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_stacknet"));
    let plugin = bin.with_file_name("stacknet-cni");
    assert!(plugin.is_file(), "{} missing: build it (cargo build -p stacknet-cni)", plugin.display());
    let before = netns();
    let out = Command::new(&bin)
        .args(["demo", "--output", "json", "--cni"])
        .arg(&plugin)
        .current_dir(root())
        .output()
        .unwrap();
    let (json, text) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "demo failed:\n{text}\n{json}");
    assert_eq!(text.matches("— live equals expected").count(), 12, "6 probes, twice:\n{text}");
    assert!(text.contains("Every live verdict equals its expected one."), "{text}");
    for change in [
        "vm/postgres → leonardo/web-0 80/TCP via pod: allowed → denied",
        "vm/postgres → leonardo/web 80/TCP via clusterip: allowed → denied",
    ] {
        assert!(text.contains(change), "{change}:\n{text}");
    }
    assert!(!text.contains('\u{1b}') && !json.contains('\u{1b}'), "no terminal, no escape codes");

    // Exactly one object on stdout.
    assert_eq!(json.lines().count(), 1, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let results = v["results"].as_array().unwrap();
    for r in results {
        for key in ["from", "to", "via", "port", "protocol", "expected", "live"] {
            assert!(r.get(key).is_some(), "{key} missing in {r}");
        }
        assert_eq!(r["expected"], r["live"], "{r}");
    }
    let some = |what: &str, f: &dyn Fn(&serde_json::Value) -> bool| {
        assert!(results.iter().any(f), "no {what} probe in {json}");
    };
    let s = |r: &serde_json::Value, k: &str| r[k].as_str().unwrap_or_default().to_string();
    some("node → pod", &|r| {
        s(r, "from").starts_with("node/") && s(r, "via") == "pod" && !s(r, "to").contains("node/")
    });
    some("pod → node", &|r| s(r, "to").starts_with("node/") && !s(r, "from").starts_with("node/"));
    some("pod → external", &|r| s(r, "to").starts_with("external/") && r["expected"] == true);
    some("external → pod", &|r| s(r, "from").starts_with("external/") && s(r, "via") == "pod");
    some("nodeport from outside", &|r| {
        s(r, "from").starts_with("external/") && s(r, "via") == "nodeport" && r["node"].is_string() && r["live"] == true
    });
    some("loadbalancer", &|r| s(r, "via") == "loadbalancer" && r["live"] == true);
    some("clusterip", &|r| s(r, "via") == "clusterip");
    some("denied through a NodePort", &|r| s(r, "via") == "nodeport" && r["live"] == false);
    let leaked: Vec<String> = netns().into_iter().filter(|n| !before.contains(n)).collect();
    assert!(leaked.is_empty(), "namespaces left behind: {leaked:?}");
}

#[test]
fn a_missing_example_or_plugin_is_an_input_error() {
    let bin = env!("CARGO_BIN_EXE_stacknet");
    let out = Command::new(bin).args(["demo", "--example", "/nonexistent"]).current_dir(root()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent"));
    let out = Command::new(bin).args(["demo", "--cni", "/nonexistent/cni"]).current_dir(root()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/cni"));
}
