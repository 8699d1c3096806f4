//! The security-group plan against every conformance case: Neutron's semantics (a union of
//! allow rules per port and direction, peers by remote group or prefix) evaluated on the plan
//! must give the expected verdict for every probe, at every step. The OpenStack tier then
//! checks that Neutron and OVN really behave so (ovn-trace over what ML2/OVN wrote).

use std::net::IpAddr;

use stacknet_conformance::{Scenario, generated};
use stacknet_engine::objects::ObjectKey;
use stacknet_openstack::secgroups::{Family, SecurityPlan, plan};
use stacknet_testsupport::conformance::{Replay, Verdicts, upstream_cases};
use stacknet_verify::conformance::expected_probes;

/// Every probe of every step, decided by the security groups the plan makes.
fn run_all(scenarios: &[Scenario]) {
    let mut verdicts = Verdicts::new(format!("{} cases as security groups", scenarios.len()));
    let mut replay = Replay::new(scenarios);
    while let Some((at, engine)) = replay.next_step() {
        let plan: SecurityPlan = plan(engine, &[Family::V4]);
        let index = engine.index();
        let ip = |k: &ObjectKey| -> IpAddr {
            index
                .pod_id(k)
                .and_then(|id| index.pod(id))
                .and_then(|p| p.ips.first().copied())
                .expect("pod has an address")
        };
        for (probe, want) in expected_probes(at.step, |_, _| true) {
            let (a, b) = (&probe.from, &probe.to);
            let got = plan.allows((a, ip(a)), (b, ip(b)), probe.port, probe.protocol);
            verdicts.check(got == want, || {
                format!(
                    "{at} {}/{}: {a} -> {b}: expected {want}, security groups say {got}",
                    probe.port, probe.protocol
                )
            });
        }
    }
    verdicts.assert_all_right();
}

#[test]
fn upstream_cases_hold_as_security_groups() {
    run_all(&upstream_cases());
}

#[test]
fn generated_single_policy_cases_hold_as_security_groups() {
    run_all(&generated::single_policy_cases());
}

#[test]
fn generated_mixed_cases_hold_as_security_groups() {
    run_all(&generated::mixed_cases(300, 0x5eed_2026));
}
