//! The CNI plugin's input: the network configuration on stdin (with its `prevResult` and
//! stacknet's keys: `mtu`, `attachNetworks`, `deviceID`, `topology`...) and `CNI_ARGS`, read
//! as the plugin reads them (rscni-plugin's `NetConf`, then `request` in
//! `crates/stacknet-cni/src/main.rs`); the agent's answer turned into the CNI result
//! (`to_result`) and chained after `prevResult` (`chain`).
//!
//! Input: the stdin configuration, optionally preceded by `CNI_ARGS` and a NUL byte. The
//! same bytes are also read as the agent's answer.
//! Properties: every request the plugin would send survives the agent's JSON decoding
//! unchanged; a chained result keeps the previous plugins' interfaces first and points our
//! addresses at our interface.
#![no_main]

// The plugin is a binary: its source is compiled here as a module.
#[allow(dead_code)]
#[path = "../../crates/stacknet-cni/src/main.rs"]
mod plugin;

use libfuzzer_sys::fuzz_target;
use rscni_plugin::test_util::ArgsBuilder;
use rscni_plugin::types::CNIResultWithVersion;
use stacknet_node::protocol::{AddResult, Command, Iface, IpConfig, Request, Response, RouteConfig, Timings};

fn ours() -> AddResult {
    AddResult {
        interfaces: vec![Iface {
            name: "eth0".into(),
            mac: "0a:58:0a:01:00:05".into(),
            sandbox: Some("/run/netns/x".into()),
        }],
        ips: vec![IpConfig { address: "10.1.0.5/24".into(), gateway: Some("10.1.0.1".into()), interface: 0 }],
        routes: vec![RouteConfig { dst: "0.0.0.0/0".into(), gw: "10.1.0.1".into() }],
        timings: Timings::default(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (cni_args, stdin) = text.split_once('\0').unwrap_or(("K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0", text));

    // The agent's answer (the same bytes read as one).
    if let Ok(Response::Added(r)) = serde_json::from_str::<Response>(stdin)
        && let Ok(result) = plugin::to_result(r)
    {
        let _ = serde_json::to_string(&result);
    }

    let Ok(builder) = ArgsBuilder::new().container_id("c0ffee").and_then(|b| b.ifname("eth0")) else {
        unreachable!("fixed, valid container id and interface name")
    };
    let Ok(args) =
        builder.netns("/run/netns/x").args(cni_args).path("/opt/cni/bin").config(stdin).and_then(|b| b.build())
    else {
        return;
    };
    for command in [Command::Add, Command::Del, Command::Check, Command::Status, Command::Gc] {
        if let Ok(req) = plugin::request(command, &args) {
            let json = serde_json::to_vec(&req).expect("a request serializes");
            let back: Request = serde_json::from_slice(&json).expect("the agent reads the request");
            assert_eq!(back, req);
        }
    }
    let prev = args.config().prev_result.clone();
    let before = prev.as_ref().map_or(0, |p| p.interfaces.len());
    let result = plugin::chain(prev, plugin::to_result(ours()).expect("a valid result"));
    assert_eq!(result.interfaces.len(), before + 1);
    assert_eq!(result.interfaces[before].name, "eth0");
    let ip = result.ips.last().expect("our address");
    assert_eq!(ip.interface, Some(u32::try_from(before).unwrap_or(u32::MAX)));
    if let Ok(version) = args.config().version() {
        let _ = serde_json::to_string(&CNIResultWithVersion::new(version, result));
    }
});
