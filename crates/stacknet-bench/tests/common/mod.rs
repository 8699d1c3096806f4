//! Running the bench program from the tests.

use std::process::Command;

use serde_json::Value;

/// The scenarios start daemons (OVN, a node, a whole cloud) and measure: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The bench's JSON lines for `args`, run alone.
pub fn bench(args: &[&str]) -> Vec<Value> {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(env!("CARGO_BIN_EXE_stacknet-bench")).args(args).output().expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}
