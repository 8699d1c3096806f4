//! Conformance cases replayed on any dataplane: each case's cluster fed to a fresh engine as a
//! watch would, then each step's events; at every step the test programs its dataplane and
//! decides the step's probes, and [`Verdicts`] collects what was wrong so that one run shows
//! every wrong verdict, not just the first.

use std::time::Instant;

use stacknet_conformance::{Scenario, ScenarioStep};
use stacknet_engine::PolicyEngine;
use stacknet_verify::conformance::apply;

/// The 48 upstream cases (Kubernetes' e2e NetworkPolicy tests, as data).
pub fn upstream_cases() -> Vec<Scenario> {
    let cases = stacknet_conformance::upstream::load_all().expect("the upstream cases load");
    assert_eq!(cases.len(), 48, "upstream cases");
    cases
}

/// One step of one case: `upstream-foo step 3 (deny ingress from x)`.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    pub scenario: &'a Scenario,
    /// From 0; shown from 1.
    pub index: usize,
    pub step: &'a ScenarioStep,
}

impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} step {} ({})", self.scenario.name, self.index + 1, self.step.description)
    }
}

/// The cases, step by step, with the engine as the cluster is at each step.
pub struct Replay<'a> {
    scenarios: std::slice::Iter<'a, Scenario>,
    /// The case being replayed and its next step.
    current: Option<(&'a Scenario, usize)>,
    engine: PolicyEngine,
}

impl<'a> Replay<'a> {
    pub fn new(scenarios: &'a [Scenario]) -> Replay<'a> {
        Replay { scenarios: scenarios.iter(), current: None, engine: PolicyEngine::new() }
    }

    /// The next step with its events applied (a new case starts from a fresh engine holding
    /// its initial cluster); `None` after the last.
    pub fn next_step(&mut self) -> Option<(At<'a>, &PolicyEngine)> {
        loop {
            if let Some((scenario, index)) = self.current
                && let Some(step) = scenario.steps.get(index)
            {
                for e in &step.events {
                    apply(&mut self.engine, e);
                }
                self.current = Some((scenario, index + 1));
                return Some((At { scenario, index, step }, &self.engine));
            }
            let scenario = self.scenarios.next()?;
            self.engine = PolicyEngine::new();
            for e in scenario.initial.creation_events() {
                apply(&mut self.engine, &e);
            }
            self.current = Some((scenario, 0));
        }
    }
}

/// How many verdicts were checked, and the wrong ones.
#[derive(Debug)]
pub struct Verdicts {
    what: String,
    started: Instant,
    checked: usize,
    wrong: Vec<String>,
}

impl Verdicts {
    /// Verdicts of `what` (`upstream cases through Neutron`), timed from now.
    pub fn new(what: impl Into<String>) -> Verdicts {
        Verdicts { what: what.into(), started: Instant::now(), checked: 0, wrong: Vec::new() }
    }

    /// One verdict; `describe` says what was wrong when it is not `right`.
    pub fn check(&mut self, right: bool, describe: impl FnOnce() -> String) {
        self.checked += 1;
        if !right {
            self.wrong.push(describe());
        }
    }

    /// Something wrong that is not a probe's verdict (a model that differs, say).
    pub fn fail(&mut self, message: String) {
        self.wrong.push(message);
    }

    pub fn checked(&self) -> usize {
        self.checked
    }

    /// Prints how many verdicts were checked and in how long; fails listing the first 30 wrong,
    /// and when there was none to check (cases without probes prove nothing).
    pub fn assert_all_right(&self) {
        eprintln!("{}: {} verdicts in {:.1}s", self.what, self.checked, self.started.elapsed().as_secs_f64());
        assert!(self.checked > 0, "{}: no verdict to check", self.what);
        let shown: Vec<&str> = self.wrong.iter().take(30).map(String::as_str).collect();
        assert!(
            self.wrong.is_empty(),
            "{}: {} wrong of {}:\n{}",
            self.what,
            self.wrong.len(),
            self.checked,
            shown.join("\n")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_of_every_case_is_replayed_in_order() {
        let cases = upstream_cases();
        let mut replay = Replay::new(&cases[..2]);
        let mut seen = Vec::new();
        while let Some((at, engine)) = replay.next_step() {
            assert!(engine.index().pods().count() > 0, "{at}: the initial cluster");
            seen.push((at.scenario.name.clone(), at.index));
        }
        let want: Vec<(String, usize)> =
            cases[..2].iter().flat_map(|s| (0..s.steps.len()).map(|i| (s.name.clone(), i))).collect();
        assert_eq!(seen, want);
    }

    #[test]
    #[should_panic(expected = "no verdict to check")]
    fn no_verdict_at_all_fails() {
        Verdicts::new("test").assert_all_right();
    }

    #[test]
    #[should_panic(expected = "2 wrong of 3")]
    fn wrong_verdicts_fail_together() {
        let mut v = Verdicts::new("test");
        v.check(true, || unreachable!());
        v.check(false, || "first".into());
        v.check(false, || "second".into());
        v.assert_all_right();
    }
}
