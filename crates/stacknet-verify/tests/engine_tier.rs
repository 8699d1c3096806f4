//! Every conformance case against the engine: the direct semantics, the compiled model built
//! incrementally event by event, and the compiled model rebuilt from scratch, at every step.

use std::collections::BTreeMap;

use stacknet_conformance::{Scenario, generated};
use stacknet_engine::{PolicyEngine, semantics};
use stacknet_testsupport::conformance::{Replay, Verdicts, upstream_cases};
use stacknet_verify::conformance::expected_probes;

/// Every step of every case: the compiled model equals a full compile, and each probe's
/// verdict (direct semantics, incremental model, full compile) the expected one.
fn run_all(scenarios: &[Scenario]) {
    let mut verdicts = Verdicts::new(format!("{} cases on the engine", scenarios.len()));
    let mut replay = Replay::new(scenarios);
    while let Some((at, engine)) = replay.next_step() {
        let index = engine.index();
        let rebuilt = PolicyEngine::from_index(index.clone());
        if rebuilt.model() != engine.model() {
            verdicts.fail(format!(
                "{at}: incremental model differs from a full compile:\nincremental {:#?}\nfull {:#?}",
                engine.model(),
                rebuilt.model()
            ));
        }
        for (probe, want) in expected_probes(at.step, |_, _| true) {
            let id = |k| index.pod_id(k).expect("pod indexed");
            let (a, b) = (id(&probe.from), id(&probe.to));
            let (port, protocol) = (probe.port, probe.protocol);
            let direct =
                semantics::evaluate(index, index.pod(a).unwrap(), index.pod(b).unwrap(), port, protocol).allowed();
            let compiled = engine.allowed_by_model(a, b, port, protocol);
            let full = rebuilt.allowed_by_model(a, b, port, protocol);
            verdicts.check((direct, compiled, full) == (want, want, want), || {
                format!(
                    "{at} probe {port}/{protocol}: {} -> {}: expected {want}, direct {direct}, compiled {compiled}, full compile {full}",
                    probe.from, probe.to
                )
            });
        }
    }
    verdicts.assert_all_right();
}

#[test]
fn upstream_cases_pass_on_semantics_and_compiled_model() {
    run_all(&upstream_cases());
}

#[test]
fn generated_single_policy_cases_pass() {
    let cases = generated::single_policy_cases();
    assert!(cases.len() >= 1000, "{} cases", cases.len());
    run_all(&cases);
}

#[test]
fn generated_mixed_cases_pass() {
    let cases = generated::mixed_cases(300, 0x5eed_2026);
    run_all(&cases);
}

/// The generated cases are not trivial: both verdicts occur plenty, and cases disagree.
#[test]
fn generated_cases_exercise_both_verdicts() {
    let cases = generated::single_policy_cases();
    let mut counts: BTreeMap<bool, usize> = BTreeMap::new();
    let mut distinct = std::collections::BTreeSet::new();
    for c in &cases {
        let mut sig = Vec::new();
        for p in &c.steps[0].probes {
            for v in p.expected.values() {
                *counts.entry(*v).or_default() += 1;
                sig.push(*v);
            }
        }
        distinct.insert(sig);
    }
    assert!(counts[&true] > 10_000 && counts[&false] > 10_000, "{counts:?}");
    assert!(distinct.len() > 200, "only {} distinct truth tables", distinct.len());
}
