//! The entrypoint scenario end to end at a small scale: the stacknet-entrypoint executable
//! waiting for a Service through a fake API server and for a unix socket, the command spawned
//! directly, and the anchor's model; the figures themselves are measured by running it.

use std::process::Command;

use serde_json::Value;

#[test]
fn entrypoint_bench_prints_the_measured_lines_and_the_model() {
    let bench = env!("CARGO_BIN_EXE_stacknet-bench");
    let binary = std::path::Path::new(bench).with_file_name("stacknet-entrypoint");
    assert!(binary.is_file(), "{} missing: build it (cargo build -p stacknet-entrypoint)", binary.display());
    let out = Command::new(bench)
        .args(["entrypoint", "--runs", "5", "--binary", binary.to_str().unwrap()])
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
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
