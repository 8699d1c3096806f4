//! Every conformance case against the engine: the direct semantics, the compiled model built
//! incrementally event by event, and the compiled model rebuilt from scratch, at every step.

use std::collections::BTreeMap;

use stacknet_conformance::{Scenario, generated, upstream};
use stacknet_engine::objects::Protocol;
use stacknet_engine::{ClusterIndex, PolicyEngine, semantics};
use stacknet_verify::conformance::apply;

/// Runs a scenario; returns one line per wrong verdict.
fn check(scenario: &Scenario) -> Vec<String> {
    let mut failures = Vec::new();
    let mut engine = PolicyEngine::new();
    for e in scenario.initial.creation_events() {
        apply(&mut engine, &e);
    }
    for (i, step) in scenario.steps.iter().enumerate() {
        for e in &step.events {
            apply(&mut engine, e);
        }
        let index = engine.index();
        let rebuilt = PolicyEngine::from_index(index.clone());
        if rebuilt.model() != engine.model() {
            failures.push(format!(
                "{} step {}: incremental model differs from a full compile:\nincremental {:#?}\nfull {:#?}",
                scenario.name,
                i + 1,
                engine.model(),
                rebuilt.model()
            ));
        }
        for probe in &step.probes {
            let protocol: Protocol = probe.protocol.parse().expect("protocol");
            for ((from, to), want) in &probe.expected {
                let id = |k: &str| index.pod_id(&k.parse().expect("ns/name")).expect("pod indexed");
                let (a, b) = (id(from), id(to));
                let direct = direct(index, a, b, probe.port, protocol);
                let compiled = engine.allowed_by_model(a, b, probe.port, protocol);
                let full = rebuilt.allowed_by_model(a, b, probe.port, protocol);
                if (direct, compiled, full) != (*want, *want, *want) {
                    failures.push(format!(
                        "{} step {} ({}) probe {}/{}: {from} -> {to}: expected {want}, direct {direct}, compiled {compiled}, full compile {full}",
                        scenario.name,
                        i + 1,
                        step.description,
                        probe.port,
                        probe.protocol
                    ));
                }
            }
        }
    }
    failures
}

fn direct(index: &ClusterIndex, a: stacknet_engine::PodId, b: stacknet_engine::PodId, port: u16, p: Protocol) -> bool {
    semantics::evaluate(index, index.pod(a).unwrap(), index.pod(b).unwrap(), port, p).allowed()
}

fn run_all(scenarios: &[Scenario]) {
    let mut failures = Vec::new();
    let mut probes = 0;
    for s in scenarios {
        probes += s.steps.iter().map(|st| st.probes.iter().map(|p| p.expected.len()).sum::<usize>()).sum::<usize>();
        failures.extend(check(s));
    }
    assert!(probes > 0);
    let shown: Vec<&String> = failures.iter().take(40).collect();
    assert!(
        failures.is_empty(),
        "{} wrong verdicts of {probes}:\n{}",
        failures.len(),
        shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn upstream_cases_pass_on_semantics_and_compiled_model() {
    let cases = upstream::load_all().expect("upstream cases load");
    assert_eq!(cases.len(), 48);
    run_all(&cases);
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
