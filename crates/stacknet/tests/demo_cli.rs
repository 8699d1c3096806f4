//! `stacknet demo --output json` (without a terminal): it exits 0; its one JSON object holds
//! pod, node and outside-host probes and probes through NodePorts, the load balancer address
//! and cluster IPs, every one live as expected; the matrices (on stderr) equal the expected
//! ones before and after the policy edit, the edit changes exactly what it should, and nothing
//! is left behind. The same for `stacknet demo examples/telco`: three networks — the cluster
//! network, the layer2 data network, the localnet provider network with the PE router and
//! what lies beyond it — each result with its `network`, the MultiNetworkPolicy's denials
//! among them. The demos take turns: each checks that it leaves no namespace behind.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// One demo at a time (their namespace checks would see each other's).
static DEMO: Mutex<()> = Mutex::new(());

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
    let _one_demo_at_a_time = DEMO.lock().unwrap_or_else(|e| e.into_inner());
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

#[test]
fn the_telco_demo_shows_every_interface_live_as_expected() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_stacknet"));
    let plugin = bin.with_file_name("stacknet-cni");
    assert!(plugin.is_file(), "{} missing: build it (cargo build -p stacknet-cni)", plugin.display());
    let _one_demo_at_a_time = DEMO.lock().unwrap_or_else(|e| e.into_inner());
    let before = netns();
    let out = Command::new(&bin)
        .args(["demo", "examples/telco", "--output", "json", "--cni"])
        .arg(&plugin)
        .current_dir(root())
        .output()
        .unwrap();
    let (json, text) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "demo failed:\n{text}\n{json}");
    assert!(text.contains("Every live verdict equals its expected one."), "{text}");
    assert_eq!(text.matches("— live equals expected").count(), 6, "3 networks, 2 probes:\n{text}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let results = v["results"].as_array().unwrap();
    let s = |r: &serde_json::Value, k: &str| r[k].as_str().unwrap_or_default().to_string();
    for r in results {
        assert_eq!(r["expected"], r["live"], "{r}");
    }
    let networks: std::collections::BTreeSet<String> = results.iter().map(|r| s(r, "network")).collect();
    assert_eq!(networks.into_iter().collect::<Vec<_>>(), ["cluster", "telco/data", "telco/provider"]);
    let find = |net: &str, from: &str, to: &str, port: u64| {
        results
            .iter()
            .find(|r| s(r, "network") == net && s(r, "from") == from && s(r, "to") == to && r["port"] == port)
            .unwrap_or_else(|| panic!("no {net} {from} -> {to} {port} in {json}"))["live"]
            .as_bool()
            .unwrap()
    };
    // The MultiNetworkPolicy: on the data network the peer takes signalling from nf only ...
    assert!(find("telco/data", "telco/nf", "telco/peer", 3868));
    assert!(!find("telco/data", "telco/other", "telco/peer", 3868));
    // ... and on the cluster network it does not apply.
    assert!(find("cluster", "telco/other", "telco/peer", 3868));
    // The provider network: the PE router both ways, and beyond it through nf's default route.
    assert!(find("telco/provider", "telco/nf", "external/pe-provider", 80));
    assert!(find("telco/provider", "external/pe-provider", "telco/nf", 80));
    assert!(find("telco/provider", "telco/nf", "external/beyond", 80));
    let leaked: Vec<String> = netns().into_iter().filter(|n| !before.contains(n)).collect();
    assert!(leaked.is_empty(), "namespaces left behind: {leaked:?}");
}
