//! The datapath tier: conformance cases on a real node. Pods are network namespaces wired by
//! `stacknet-cni` (through the node agent), the policies programmed by the OVN backend, every
//! probe a real TCP connection or UDP exchange. Each verdict must equal the expected matrix,
//! the engine's, and ovn-trace's on the same Southbound database. This kernel has no SCTP, so
//! SCTP probes are left out (counted, not decided).

use std::path::Path;

use stacknet_conformance::{Scenario, generated};
use stacknet_engine::objects::Protocol;
use stacknet_engine::reach::ProbeSpec;
use stacknet_testsupport::conformance::{Replay, Verdicts, upstream_cases};
use stacknet_verify::conformance::{engine_verdict, expected_probes};
use stacknet_verify::live::Live;

/// Runs scenarios on one node: every probe decided live, by ovn-trace and by the engine
/// (SCTP probes are counted, not decided); fails on any wrong verdict.
async fn run(what: String, live: &mut Live, scenarios: &[Scenario]) -> Verdicts {
    let mut verdicts = Verdicts::new(what);
    let mut sctp = 0;
    let mut replay = Replay::new(scenarios);
    while let Some((at, engine)) = replay.next_step() {
        live.program(engine).await.unwrap_or_else(|e| panic!("{at}: {e}"));
        // This kernel has no SCTP: those probes are counted, not decided.
        let all = expected_probes(at.step, |_, _| true);
        sctp += all.iter().filter(|(p, _)| p.protocol == Protocol::Sctp).count();
        let (probes, expected): (Vec<_>, Vec<_>) =
            all.into_iter().filter(|(p, _)| p.protocol != Protocol::Sctp).unzip();
        if probes.is_empty() {
            continue;
        }
        let mut specs: Vec<ProbeSpec> =
            probes.iter().map(|p| ProbeSpec { port: p.port, protocol: p.protocol }).collect();
        specs.dedup();
        live.listen(&specs).await.unwrap();
        let decided = live.decide_all(&probes).await;
        let traced = live.trace().decide_all(&probes);
        for (((probe, want), got), trace) in probes.iter().zip(expected).zip(decided).zip(traced) {
            let got = got.unwrap_or_else(|e| panic!("{at}: {e}"));
            let trace = trace.unwrap_or_else(|e| panic!("{at}: {e}"));
            let engine_says = engine_verdict(engine, probe);
            verdicts.check((got, trace, engine_says) == (want, want, want), || {
                format!(
                    "{at}: {} -> {} {}/{}: expected {want}, live {got}, ovn-trace {trace}, engine {engine_says}",
                    probe.from, probe.to, probe.port, probe.protocol
                )
            });
        }
    }
    eprintln!("{sctp} SCTP probes left out");
    verdicts.assert_all_right();
    verdicts
}

fn plugin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_stacknet-cni"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tcp_and_udp_cases_on_a_real_node() {
    let cases = upstream_cases();
    let mut live = Live::start("live", plugin()).await.unwrap();
    let verdicts = run("upstream, decided live".into(), &mut live, &cases).await;
    assert!(verdicts.checked() >= 400, "{} probes decided", verdicts.checked());
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
    let mut live = Live::start("livegen", plugin()).await.unwrap();
    run(format!("generated ({} cases), decided live", cases.len()), &mut live, &cases).await;
    live.shutdown().await.unwrap();
}
