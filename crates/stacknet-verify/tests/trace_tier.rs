//! The trace tier: conformance cases programmed into a live NB by the OVN backend, synced by
//! ovn-northd, every probe decided by ovn-trace on the Southbound logical flows. Verdicts must
//! equal the expected matrix and the engine's.

use stacknet_conformance::{Scenario, generated};
use stacknet_testsupport::conformance::{Replay, Verdicts, upstream_cases};
use stacknet_verify::OvnTrace;
use stacknet_verify::conformance::{engine_verdict, expected_probes};

/// Runs scenarios on one shared OVN (each reconcile replaces the previous case's rows, so
/// garbage collection is exercised too); every probe's ovn-trace and engine verdicts.
async fn run(what: String, trace: &mut OvnTrace, scenarios: &[Scenario]) -> Verdicts {
    let mut verdicts = Verdicts::new(what);
    let mut replay = Replay::new(scenarios);
    while let Some((at, engine)) = replay.next_step() {
        trace.program(engine).await.expect("programmed");
        let (probes, expected): (Vec<_>, Vec<_>) = expected_probes(at.step, |_, _| true).into_iter().unzip();
        let decided = trace.decide_all(&probes);
        for ((probe, want), got) in probes.iter().zip(expected).zip(decided) {
            let got = got.unwrap_or_else(|e| panic!("{at}: {e}"));
            let engine_says = engine_verdict(engine, probe);
            verdicts.check(got == want && engine_says == want, || {
                format!(
                    "{at}: {} -> {} {}/{}: expected {want}, ovn-trace {got}, engine {engine_says}",
                    probe.from, probe.to, probe.port, probe.protocol
                )
            });
        }
    }
    verdicts.assert_all_right();
    verdicts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_upstream_cases_under_ovn_trace() {
    let cases = upstream_cases();
    let mut trace = OvnTrace::start("conformance").unwrap();
    let verdicts = run("upstream under ovn-trace".into(), &mut trace, &cases).await;
    assert!(verdicts.checked() >= 500, "{} probes", verdicts.checked());
}

/// Every generated single-policy case (targets x peers x ports x directions) would be
/// 1,620 cases x 432 probes: at ~10 ms per ovn-trace process that is hours. The tier takes
/// a deterministic, evenly spread sample of cases, each with its full probe set; set
/// STACKNET_TRACE_ALL=1 to trace every case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_cases_under_ovn_trace() {
    let all = std::env::var("STACKNET_TRACE_ALL").is_ok_and(|v| v == "1");
    let singles = generated::single_policy_cases();
    let step = if all { 1 } else { 61 };
    let mut cases: Vec<Scenario> = singles.into_iter().step_by(step).collect();
    cases.extend(generated::mixed_cases(if all { 300 } else { 6 }, 0x5eed_2026));
    let mut trace = OvnTrace::start("generated").unwrap();
    run(format!("generated ({} cases) under ovn-trace", cases.len()), &mut trace, &cases).await;
}
