//! The security-group plan against every conformance case: Neutron's semantics (a union of
//! allow rules per port and direction, peers by remote group or prefix) evaluated on the plan
//! must give the expected verdict for every probe, at every step. The OpenStack tier then
//! checks that Neutron and OVN really behave so (ovn-trace over what ML2/OVN wrote).

use std::net::IpAddr;

use stacknet_conformance::{Scenario, generated, upstream};
use stacknet_engine::PolicyEngine;
use stacknet_engine::objects::{ObjectKey, Protocol};
use stacknet_openstack::secgroups::{Family, SecurityPlan, plan};
use stacknet_verify::conformance::apply;

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
        let plan: SecurityPlan = plan(&engine, &[Family::V4]);
        let index = engine.index();
        let ip = |k: &ObjectKey| -> IpAddr {
            index
                .pod_id(k)
                .and_then(|id| index.pod(id))
                .and_then(|p| p.ips.first().copied())
                .expect("pod has an address")
        };
        for probe in &step.probes {
            let protocol: Protocol = probe.protocol.parse().expect("protocol");
            for ((from, to), want) in &probe.expected {
                let (a, b): (ObjectKey, ObjectKey) = (from.parse().unwrap(), to.parse().unwrap());
                let got = plan.allows((&a, ip(&a)), (&b, ip(&b)), probe.port, protocol);
                if got != *want {
                    failures.push(format!(
                        "{} step {} ({}) {}/{}: {from} -> {to}: expected {want}, security groups say {got}",
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

fn run_all(scenarios: &[Scenario]) {
    let failures: Vec<String> = scenarios.iter().flat_map(check).collect();
    assert!(
        failures.is_empty(),
        "{} wrong verdicts:\n{}",
        failures.len(),
        failures[..failures.len().min(40)].join("\n")
    );
}

#[test]
fn upstream_cases_hold_as_security_groups() {
    let cases = upstream::load_all().expect("upstream cases load");
    assert_eq!(cases.len(), 48);
    run_all(&cases);
}

#[test]
fn generated_single_policy_cases_hold_as_security_groups() {
    run_all(&generated::single_policy_cases());
}

#[test]
fn generated_mixed_cases_hold_as_security_groups() {
    run_all(&generated::mixed_cases(300, 0x5eed_2026));
}
