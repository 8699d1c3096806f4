//! What the node crate's root tests read back with `ip`: each helper written once.
#![allow(dead_code)]

use std::process::Command;

use serde_json::Value;
use stacknet_sandbox::Netns;

/// `ip -n <ns> <args>`; panics with ip's error unless it succeeds.
pub fn ip(ns: &Netns, args: &[&str]) {
    let out = Command::new("ip").arg("-n").arg(ns.name()).args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `ip -j -d addr show dev <dev>` in `ns`; `None` if there is no such device.
pub fn link(ns: &Netns, dev: &str) -> Option<Value> {
    let out = Command::new("ip").args(["-n", ns.name(), "-j", "-d", "addr", "show", "dev", dev]).output().unwrap();
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().and_then(|a| a.first()).cloned()
}

/// The interface names in `ns`.
pub fn names(ns: &Netns) -> Vec<String> {
    let out = Command::new("ip").args(["-n", ns.name(), "-j", "link", "show"]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().unwrap().iter().map(|l| l["ifname"].as_str().unwrap().to_string()).collect()
}

/// A link's global addresses, `address/prefix`.
pub fn addresses(l: &Value) -> Vec<String> {
    l["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] == "global")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

pub fn up(l: &Value) -> bool {
    l["flags"].as_array().unwrap().iter().any(|f| f == "UP")
}

/// None of `devs` is in the real host namespace (what a test made stays in its namespaces).
pub fn none_on_the_real_host(devs: &[&str]) {
    for dev in devs {
        let out = Command::new("ip").args(["link", "show", "dev", dev]).output().unwrap();
        assert!(!out.status.success(), "{dev} is in the real host namespace");
    }
}
