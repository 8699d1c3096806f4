//! The reference evaluator must reproduce all 48 hand-written upstream expectations before its
//! verdicts are trusted as the expectations of generated cases.

use stacknet_conformance::{reference, upstream};

#[test]
fn reference_evaluator_agrees_with_every_upstream_case() {
    let cases = upstream::load_all().expect("upstream cases load");
    assert_eq!(cases.len(), 48);
    let mut failures = Vec::new();
    for case in &cases {
        for (i, step) in case.steps.iter().enumerate() {
            for probe in &step.probes {
                let got = reference::table(&step.world, probe.port, &probe.protocol);
                let got: std::collections::BTreeMap<_, _> =
                    got.into_iter().filter(|(k, _)| probe.expected.contains_key(k)).collect();
                for ((from, to), want) in &probe.expected {
                    if got.get(&(from.clone(), to.clone())) != Some(want) {
                        failures.push(format!(
                            "{} step {} probe {}/{}: {from} -> {to}: expected {want}",
                            case.name,
                            i + 1,
                            probe.port,
                            probe.protocol
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}
