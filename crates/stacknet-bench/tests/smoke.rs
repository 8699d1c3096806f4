//! The benchmark programs run end to end at a small scale and print well-formed lines (the
//! figures themselves are measured by running them, not here).

mod common;

use common::bench;

#[test]
fn policy_bench_prints_its_line() {
    let lines = bench(&["policy", "--pods", "500", "--namespaces", "10", "--policies", "50", "--events", "200"]);
    assert_eq!(lines.len(), 1);
    let l = &lines[0];
    assert_eq!(l["bench"], "policy");
    for k in ["compile_ms", "rules", "groups", "peer_sets", "naive_rules", "pod_event_us"] {
        assert!(l[k].is_number(), "{k} in {l}");
    }
    assert_eq!(l["groups"], 50);
}

#[test]
fn ovsdb_bench_runs_every_workload_against_a_real_server() {
    let lines = bench(&[
        "ovsdb",
        "--ports",
        "300",
        "--events",
        "40",
        "--nbctl-events",
        "4",
        "--rounds",
        "1",
        "--clients",
        "stacknet,ovn-nbctl",
    ]);
    let mut seen = Vec::new();
    for l in &lines {
        assert_eq!(l["bench"], "ovsdb");
        assert!(l["events_per_s"].as_f64().unwrap() > 0.0, "{l}");
        seen.push(format!("{}/{}", l["workload"].as_str().unwrap(), l["client"].as_str().unwrap()));
    }
    for w in ["load", "churn"] {
        for c in ["raw", "raw+monitor", "stacknet", "stacknet+replica", "ovn-nbctl"] {
            assert!(seen.contains(&format!("{w}/{c}")), "{w}/{c} missing from {seen:?}");
        }
    }
}

/// A policy change flipping a live verdict, ours next to the same transaction written directly.
#[test]
fn policy_ready_bench_flips_the_verdict_and_prints_its_lines() {
    let plugin = std::path::Path::new(env!("CARGO_BIN_EXE_stacknet-bench")).with_file_name("stacknet-cni");
    assert!(plugin.is_file(), "{} missing: build it (cargo build -p stacknet-cni)", plugin.display());
    let lines = bench(&["policy-ready", "--pods", "20", "--changes", "2", "--cni", plugin.to_str().unwrap()]);
    assert_eq!(lines.len(), 2);
    let (l, f) = (&lines[0], &lines[1]);
    assert_eq!(
        (l["bench"].as_str(), l["pods"].as_u64(), l["changes"].as_u64()),
        (Some("policy-ready"), Some(20), Some(2))
    );
    assert!(f["client"].as_str().is_some_and(|c| c.starts_with("floor")), "{f}");
    assert_eq!(f["changes"], 2, "{f}");
    for line in [l, f] {
        for k in ["p50_ms", "p99_ms", "max_ms"] {
            assert!(line[k].as_f64().is_some_and(|v| v > 0.0), "{k} in {line}");
        }
    }
    assert!(f["p50_ratio"].as_f64().is_some_and(|v| v > 0.0), "{f}");
}

/// On a real node with a few pods (`cargo test --workspace` builds the plugin next to us).
#[test]
fn pod_ready_bench_attaches_pods_and_prints_its_line() {
    let plugin = std::path::Path::new(env!("CARGO_BIN_EXE_stacknet-bench")).with_file_name("stacknet-cni");
    assert!(plugin.is_file(), "{} missing: build it (cargo build -p stacknet-cni)", plugin.display());
    let lines = bench(&["pod-ready", "--pods", "5", "--attachments", "3", "--cni", plugin.to_str().unwrap()]);
    assert_eq!(lines.len(), 6);
    let l = &lines[0];
    assert_eq!(l["bench"], "pod-ready");
    assert_eq!(l["pods"], 5);
    for k in ["p50_ms", "p90_ms", "p99_ms", "max_ms", "pods_per_s", "del_per_s"] {
        assert!(l[k].as_f64().is_some_and(|v| v > 0.0), "{k} in {l}");
    }
    assert!(l["p50_ms"].as_f64() <= l["max_ms"].as_f64(), "{l}");
    // The floor: the same ports bound again, each timed to ovn-installed.
    let f = &lines[1];
    assert!(f["client"].as_str().is_some_and(|c| c.starts_with("floor")), "{f}");
    for k in ["installed_p50_ms", "installed_max_ms", "add_p50_ratio"] {
        assert!(f[k].as_f64().is_some_and(|v| v > 0.0), "{k} in {f}");
    }
    for k in ["ready_p50_ratio", "ready_p99_ratio"] {
        assert!(f[k].as_f64().is_some_and(|v| v > 0.0), "{k} in {f}");
    }
    // The kernel's floor: the same plumbing by one process, no OVS.
    let k = &lines[2];
    assert!(k["client"].as_str().is_some_and(|c| c.starts_with("kernel floor")), "{k}");
    for key in ["p50_ms", "p99_ms", "max_ms"] {
        assert!(k[key].as_f64().is_some_and(|v| v > 0.0), "{key} in {k}");
    }
    // The runtime's floor: the plugin started for every pod at once, no agent.
    let r = &lines[3];
    assert!(r["client"].as_str().is_some_and(|c| c.starts_with("runtime floor")), "{r}");
    for key in ["p50_ms", "p99_ms", "max_ms"] {
        assert!(r[key].as_f64().is_some_and(|v| v > 0.0), "{key} in {r}");
    }
    // Pods with three interfaces (two secondary networks), next to one in the same run.
    let m = &lines[4];
    assert_eq!((m["attachments"].as_u64(), m["pods"].as_u64()), (Some(3), Some(5)), "{m}");
    for k in ["p50_ms", "p99_ms", "one_interface_p50_ms", "p50_ratio", "p99_ratio"] {
        assert!(m[k].as_f64().is_some_and(|v| v > 0.0), "{k} in {m}");
    }
    // OVN's own floor for that round's every port (5 pods × 3), beside ours.
    let mf = &lines[5];
    assert!(mf["client"].as_str().is_some_and(|c| c.starts_with("floor")), "{mf}");
    assert_eq!(mf["ports"], 15, "{mf}");
    assert_eq!(mf["ours_p50_ratio"], m["p50_ratio"], "{mf}");
    for k in ["installed_p50_ms", "floor_p50_ratio", "floor_p99_ratio"] {
        assert!(mf[k].as_f64().is_some_and(|v| v > 0.0), "{k} in {mf}");
    }
}

#[test]
fn services_bench_prints_a_line_per_node_count_and_the_live_half() {
    let plugin = std::path::Path::new(env!("CARGO_BIN_EXE_stacknet-bench")).with_file_name("stacknet-cni");
    assert!(plugin.is_file(), "{} missing: build it (cargo build -p stacknet-cni)", plugin.display());
    let lines = bench(&[
        "services",
        "--services",
        "40",
        "--endpoints",
        "3",
        "--nodes",
        "2,4",
        "--changes",
        "3",
        "--live-changes",
        "3",
        "--cni",
        plugin.to_str().unwrap(),
    ]);
    assert_eq!(lines.len(), 3);
    let live = &lines[2];
    assert_eq!(live["bench"], "services-live");
    for k in ["vip_moved_p50_ms", "vip_moved_p99_ms", "floor_p50_ms", "floor_p99_ms"] {
        assert!(live[k].as_f64().is_some_and(|v| v > 0.0), "{k} in {live}");
    }
    for (l, nodes) in lines[..2].iter().zip([2, 4]) {
        assert_eq!(l["bench"], "services");
        assert_eq!(l["nodes"], nodes);
        for k in ["rows_per_change", "floor_rows_per_change", "change_p50_ms", "floor_p50_ms", "lb_rows"] {
            assert!(l[k].is_number(), "{k} in {l}");
        }
        // An endpoint of a NodePort Service: its ClusterIP and NodePort load balancers, and no
        // more than the rows that had to change.
        assert!(l["rows_per_change"].as_f64().unwrap() > 0.0, "the change wrote nothing: {l}");
        assert_eq!(l["rows_per_change"], l["floor_rows_per_change"], "{l}");
    }
}

/// The entrypoint scenario: the stacknet-entrypoint executable waiting for a Service through a
/// fake API server and for a unix socket, the command spawned directly, and the anchor's model.
#[test]
fn entrypoint_bench_prints_the_measured_lines_and_the_model() {
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_stacknet-bench")).with_file_name("stacknet-entrypoint");
    assert!(binary.is_file(), "{} missing: build it (cargo build -p stacknet-entrypoint)", binary.display());
    let lines = bench(&["entrypoint", "--runs", "5", "--binary", binary.to_str().unwrap()]);
    assert_eq!(lines.len(), 4, "{lines:?}");
    let what: Vec<&str> = lines.iter().map(|l| l["what"].as_str().unwrap_or_default()).collect();
    for (l, prefix) in
        lines.iter().zip(["floor:", "stacknet: DEPENDENCY_SERVICE", "stacknet: DEPENDENCY_SOCKET", "model:"])
    {
        assert_eq!(l["bench"], "entrypoint", "{l}");
        assert!(l["what"].as_str().is_some_and(|w| w.starts_with(prefix)), "{prefix} expected: {what:?}");
    }
    // Measured: the floor and both dependencies, each run once per run.
    for l in &lines[..3] {
        assert_eq!(l["measured"], true, "{l}");
        assert_eq!(l["runs"], 5, "{l}");
        for k in ["p50_ms", "p99_ms", "max_ms"] {
            assert!(l[k].as_f64().is_some_and(|v| v > 0.0), "{k} in {l}");
        }
        assert!(l["p50_ms"].as_f64() <= l["p99_ms"].as_f64(), "{l}");
    }
    for l in &lines[1..3] {
        assert!(l["p99_within_target"].is_boolean(), "{l}");
        for k in ["over_floor_p50_ms", "model_p50_ratio", "model_p99_ratio"] {
            assert!(l[k].is_number(), "{k} in {l}");
        }
    }
    // The anchor is a model, labelled so, not a measurement.
    let m = &lines[3];
    assert_eq!(m["measured"], false, "{m}");
    assert!(m["what"].as_str().unwrap().contains("not measured"), "{m}");
    assert_eq!((m["p50_ms"].as_f64(), m["p99_ms"].as_f64()), (Some(1000.0), Some(1980.0)), "{m}");
    assert_eq!(m["p99_within_target"], false, "{m}");
}

/// The drain scenario: a real Nova with two fake compute hosts, three servers (one stopped) moved
/// by Nova directly, then back by the compute drain run in-process.
#[test]
#[ignore = "needs root and the OpenStack packages with Nova's (scripts/install-test-packages)"]
fn drain_bench_prints_ours_and_the_floor() {
    let lines = bench(&["drain", "--instances", "3"]);
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
