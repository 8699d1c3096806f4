//! The benchmark programs run end to end at a small scale and print well-formed lines (the
//! figures themselves are measured by running them, not here).

use std::process::Command;

use serde_json::Value;

fn bench(args: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_stacknet-bench")).args(args).output().expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

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

/// On a real node with a few pods (`cargo test --workspace` builds the plugin next to us).
#[test]
fn pod_ready_bench_attaches_pods_and_prints_its_line() {
    let plugin = std::path::Path::new(env!("CARGO_BIN_EXE_stacknet-bench")).with_file_name("stacknet-cni");
    assert!(plugin.is_file(), "{} missing: build it (cargo build -p stacknet-cni)", plugin.display());
    let lines = bench(&["pod-ready", "--pods", "5", "--attachments", "3", "--cni", plugin.to_str().unwrap()]);
    assert_eq!(lines.len(), 4);
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
    // Pods with three interfaces (two secondary networks), next to one in the same run.
    let m = &lines[2];
    assert_eq!((m["attachments"].as_u64(), m["pods"].as_u64()), (Some(3), Some(5)), "{m}");
    for k in ["p50_ms", "p99_ms", "one_interface_p50_ms", "p50_ratio", "p99_ratio"] {
        assert!(m[k].as_f64().is_some_and(|v| v > 0.0), "{k} in {m}");
    }
    // OVN's own floor for that round's every port (5 pods × 3), beside ours.
    let mf = &lines[3];
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
