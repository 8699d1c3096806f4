//! The drain scenario end to end at a small scale: a real Nova with two fake compute hosts,
//! three servers (one of them stopped) moved by Nova directly, then back by the compute drain
//! run in-process; the figures themselves are measured by running it.

use std::process::Command;

use serde_json::Value;

#[test]
#[ignore = "needs root and the OpenStack packages with Nova's (scripts/install-test-packages)"]
fn drain_bench_prints_ours_and_the_floor() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_stacknet-bench")).args(["drain", "--instances", "3"]).output().expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let (ours, floor) = (&lines[0], &lines[1]);
    assert_eq!(ours["bench"], "drain", "{ours}");
    assert_eq!((ours["instances"].as_u64(), ours["migrated"].as_u64()), (Some(3), Some(3)), "{ours}");
    // The third server is stopped: one cold migration among the live ones.
    assert_eq!((ours["active"].as_u64(), ours["shutoff"].as_u64()), (Some(2), Some(1)), "{ours}");
    for k in ["disable_s", "drain_s", "floor_s", "ratio", "nova_calls_per_instance", "floor_nova_calls_per_instance"] {
        assert!(ours[k].as_f64().is_some_and(|v| v > 0.0), "{k} in {ours}");
    }
    assert!(ours["disable_s"].as_f64() < ours["drain_s"].as_f64(), "{ours}");
    // Settled (every server in its first state, no task) no sooner than drained or emptied.
    assert!(ours["settled_s"].as_f64() >= ours["drain_s"].as_f64(), "{ours}");
    assert!(floor["settled_s"].as_f64() >= floor["floor_s"].as_f64(), "{floor}");
    assert_eq!(floor["settled_s"], ours["floor_settled_s"], "{floor}");
    assert_eq!((ours["parallel"].as_u64(), ours["interval_ms"].as_u64()), (Some(2), Some(200)), "{ours}");
    assert_eq!(floor["bench"], "drain", "{floor}");
    assert_eq!(floor["impl"], "nova-direct", "{floor}");
    assert_eq!(floor["instances"], 3, "{floor}");
    assert_eq!(floor["floor_s"], ours["floor_s"], "{floor}");
    assert_eq!(floor["nova_calls_per_instance"], ours["floor_nova_calls_per_instance"], "{floor}");
    // At least a move and its polls per server: live-migrate (or migrate and confirm), reads.
    for k in ["nova_action_calls_per_instance", "nova_poll_calls_per_instance"] {
        assert!(floor[k].as_f64().is_some_and(|v| v >= 1.0), "{k} in {floor}");
    }
    assert!(floor["max_under_way"].as_u64().is_some_and(|m| (1..=2).contains(&m)), "{floor}");
}
