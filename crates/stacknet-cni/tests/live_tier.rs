//! The datapath tier: conformance cases on a real node. Pods are network namespaces wired by
//! `stacknet-cni` (through the node agent), the policies programmed by the OVN backend, every
//! probe a real TCP connection or UDP exchange. Each verdict must equal the expected matrix,
//! the engine's, and ovn-trace's on the same Southbound database. This kernel has no SCTP, so
//! SCTP probes are left out (counted, not decided).

use std::path::Path;
use std::time::Instant;

use stacknet_conformance::{Scenario, generated, upstream};
use stacknet_engine::PolicyEngine;
use stacknet_engine::objects::Protocol;
use stacknet_engine::reach::ProbeSpec;
use stacknet_verify::conformance::{apply, engine_verdict, expected_probes};
use stacknet_verify::live::Live;

/// Runs scenarios on one node; returns (probes decided live, SCTP probes left out, failures).
async fn run(live: &mut Live, scenarios: &[Scenario]) -> (usize, usize, Vec<String>) {
    let (mut decided, mut skipped, mut failures) = (0, 0, Vec::new());
    for s in scenarios {
        let mut engine = PolicyEngine::new();
        for e in s.initial.creation_events() {
            apply(&mut engine, &e);
        }
        for (i, step) in s.steps.iter().enumerate() {
            for e in &step.events {
                apply(&mut engine, e);
            }
            live.program(&engine).await.unwrap_or_else(|e| panic!("{} step {}: {e}", s.name, i + 1));
            // This kernel has no SCTP: those probes are counted, not decided.
            let all = expected_probes(step, |_, _| true);
            skipped += all.iter().filter(|(p, _)| p.protocol == Protocol::Sctp).count();
            let (probes, expected): (Vec<_>, Vec<_>) =
                all.into_iter().filter(|(p, _)| p.protocol != Protocol::Sctp).unzip();
            if probes.is_empty() {
                continue;
            }
            let mut specs: Vec<ProbeSpec> =
                probes.iter().map(|p| ProbeSpec { port: p.port, protocol: p.protocol }).collect();
            specs.dedup();
            live.listen(&specs).await.unwrap();
            let verdicts = live.decide_all(&probes).await;
            let traced = live.trace().decide_all(&probes);
            decided += probes.len();
            for (((probe, want), got), trace) in probes.iter().zip(expected).zip(verdicts).zip(traced) {
                let got = got.unwrap_or_else(|e| panic!("{} step {}: {e}", s.name, i + 1));
                let trace = trace.unwrap_or_else(|e| panic!("{} step {}: {e}", s.name, i + 1));
                let engine_says = engine_verdict(&engine, probe);
                if (got, trace, engine_says) != (want, want, want) {
                    failures.push(format!(
                        "{} step {} ({}): {} -> {} {}/{}: expected {want}, live {got}, ovn-trace {trace}, engine {engine_says}",
                        s.name,
                        i + 1,
                        step.description,
                        probe.from,
                        probe.to,
                        probe.port,
                        probe.protocol
                    ));
                }
            }
        }
    }
    (decided, skipped, failures)
}

fn plugin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_stacknet-cni"))
}

fn report(what: &str, started: Instant, decided: usize, skipped: usize, failures: &[String]) {
    eprintln!(
        "{what}: {decided} probes decided live ({skipped} SCTP left out) in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let shown: Vec<&str> = failures.iter().take(30).map(String::as_str).collect();
    assert!(failures.is_empty(), "{what}: {} wrong verdicts of {decided}:\n{}", failures.len(), shown.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tcp_and_udp_cases_on_a_real_node() {
    let cases = upstream::load_all().unwrap();
    let started = Instant::now();
    let mut live = Live::start("live", plugin()).await.unwrap();
    let (decided, skipped, failures) = run(&mut live, &cases).await;
    report("upstream", started, decided, skipped, &failures);
    assert!(decided >= 400, "{decided}");
    live.shutdown().await.unwrap();
}

/// A spread of the generated cases (STACKNET_LIVE_ALL=1: all of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_cases_on_a_real_node() {
    let all = std::env::var("STACKNET_LIVE_ALL").is_ok_and(|v| v == "1");
    let mut cases: Vec<Scenario> =
        generated::single_policy_cases().into_iter().step_by(if all { 1 } else { 97 }).collect();
    cases.extend(generated::mixed_cases(if all { 300 } else { 3 }, 0x5eed_2026));
    if let Ok(only) = std::env::var("STACKNET_LIVE_CASE") {
        cases = generated::single_policy_cases().into_iter().filter(|c| c.name.contains(&only)).collect();
    }
    let started = Instant::now();
    let mut live = Live::start("livegen", plugin()).await.unwrap();
    let (decided, skipped, failures) = run(&mut live, &cases).await;
    report(&format!("generated ({} cases)", cases.len()), started, decided, skipped, &failures);
    live.shutdown().await.unwrap();
}
