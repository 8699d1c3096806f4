//! `stacknet demo` as the README runs it (without a terminal): it exits 0, the live matrices
//! equal the expected ones before and after the policy edit, the edit changes exactly the cell
//! it should, and nothing is left behind.

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
    let out = Command::new(&bin).arg("demo").arg("--cni").arg(&plugin).current_dir(root()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.matches("— live equals expected").count(), 12, "6 probes, twice:\n{text}");
    assert!(text.contains("Every live matrix equals its expected one."), "{text}");
    let change = "vm/postgres → leonardo/web-0 80/TCP: allowed → denied";
    assert!(text.contains(&format!("expected: {change}")) && text.contains(&format!("live:     {change}")), "{text}");
    assert!(!text.contains('\u{1b}'), "no terminal, no escape codes");
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
