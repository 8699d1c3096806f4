//! `stacknet demo examples/telco --output json` (without a terminal): it exits 0; its one JSON
//! object holds the probes of three networks — the cluster network, the layer2 data network,
//! the localnet provider network with the PE router and what lies beyond it — each with its
//! `network`, every one live as expected, the MultiNetworkPolicy's denials among them; nothing
//! is left behind.

use std::path::PathBuf;
use std::process::Command;

fn netns() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

#[test]
fn the_telco_demo_shows_every_interface_live_as_expected() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_stacknet"));
    let plugin = bin.with_file_name("stacknet-cni");
    assert!(plugin.is_file(), "{} missing: build it (cargo build -p stacknet-cni)", plugin.display());
    let before = netns();
    let out = Command::new(&bin)
        .args(["demo", "examples/telco", "--output", "json", "--cni"])
        .arg(&plugin)
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."))
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
