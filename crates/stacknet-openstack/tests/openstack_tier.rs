//! The OpenStack tier: a real Keystone, Neutron (ML2/OVN) and Octavia on loopback (one cloud for
//! the whole file: it takes half a minute to start). The backend programs the conformance cases
//! as security groups and ports through Neutron's API; ML2/OVN writes its OVN rows; ovn-trace
//! then decides every probe on the logical pipeline ovn-northd built from them. The verdicts
//! must equal the expected matrices: the rows Neutron produced enforce the policies.

use std::collections::BTreeMap;
use std::time::Instant;

use stacknet_conformance::{Scenario, upstream};
use stacknet_engine::PolicyEngine;
use stacknet_engine::objects::{ObjectKey, Protocol};
use stacknet_openstack::{Cloud, CloudSource, NeutronBackend, NeutronConfig, PodPort};
use stacknet_sandbox::{OpenStack, OpenStackOptions};
use stacknet_verify::Probe;
use stacknet_verify::conformance::{apply, expected_probes};

fn require() -> bool {
    if OpenStack::installed() {
        return true;
    }
    assert!(
        std::env::var_os("STACKNET_REQUIRE_OPENSTACK").is_none(),
        "STACKNET_REQUIRE_OPENSTACK is set but the OpenStack packages are not installed (see .ci/run)"
    );
    eprintln!("skipped: the OpenStack packages are not installed (see .ci/run)");
    false
}

/// ovn-trace's verdict on one probe between two pods' Neutron ports (one network: same switch).
fn trace(cloud: &OpenStack, ports: &BTreeMap<ObjectKey, PodPort>, p: &Probe) -> Result<bool, String> {
    let src = ports.get(&p.from).ok_or_else(|| format!("{} has no port", p.from))?;
    let dst = ports.get(&p.to).ok_or_else(|| format!("{} has no port", p.to))?;
    let (sip, dip) = (src.ips[0], dst.ips[0]);
    let l4 = match p.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    };
    let flow = format!(
        "inport == \"{}\" && eth.src == {} && eth.dst == {} && ip4.src == {sip} && ip4.dst == {dip} && ip.ttl == 64 && {l4} && {l4}.src == 40000 && {l4}.dst == {}",
        src.port_id, src.mac, dst.mac, p.port
    );
    // ovn-trace names ports by their Neutron name when they have one.
    let v = cloud.ovn.trace(&src.switch(), &flow, &dst.name, 6, None).map_err(|e| e.to_string())?;
    if std::env::var_os("STACKNET_TRACE_DEBUG").is_some() && !v.delivered {
        eprintln!("TRACE {flow}\n{}", v.output);
    }
    Ok(v.delivered)
}

/// Programs each scenario step through Neutron and traces its probes; (probes, failures).
async fn conformance(cloud: &OpenStack, backend: &NeutronBackend, scenarios: &[Scenario]) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    let mut traced = 0;
    for s in scenarios {
        let mut engine = PolicyEngine::new();
        for e in s.initial.creation_events() {
            apply(&mut engine, &e);
        }
        for (i, step) in s.steps.iter().enumerate() {
            for e in &step.events {
                apply(&mut engine, e);
            }
            let started = Instant::now();
            let report = backend.reconcile(&engine).await.unwrap_or_else(|e| panic!("{} step {}: {e}", s.name, i + 1));
            assert!(report.problems.is_empty(), "{} step {}: {:?}", s.name, i + 1, report.problems);
            cloud.ovn.sync_sb().expect("northd sync");
            eprintln!(
                "{} step {}: {} calls, +{} ~{} -{} in {:.1}s",
                s.name,
                i + 1,
                report.calls,
                report.created,
                report.updated,
                report.deleted,
                started.elapsed().as_secs_f64()
            );
            for (probe, want) in expected_probes(step, |_, _| true) {
                traced += 1;
                let got =
                    trace(cloud, &report.ports, &probe).unwrap_or_else(|e| panic!("{} step {}: {e}", s.name, i + 1));
                if got != want {
                    failures.push(format!(
                        "{} step {} ({}): {} -> {} {}/{}: expected {want}, ovn-trace over Neutron's rows {got}",
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
    (traced, failures)
}

#[test]
fn openstack_tier() {
    if !require() {
        return;
    }
    let cloud = OpenStack::start(OpenStackOptions::default()).expect("the cloud starts");
    eprintln!("cloud up in {:.1}s", cloud.started_in.as_secs_f64());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let source = CloudSource::Named { cloud: "stacknet-test".into(), file: Some(cloud.clouds_yaml().unwrap()) };
        let session = Cloud::connect(&source).await.expect("password auth through clouds.yaml");
        let config = NeutronConfig { cluster: "t1".into(), pod_cidrs: vec!["10.0.0.0/12".parse().unwrap()] };
        let backend = NeutronBackend::new(session, config);

        let cases = upstream::load_all().unwrap();
        let started = Instant::now();
        let (traced, failures) = conformance(&cloud, &backend, &cases).await;
        eprintln!("upstream cases through Neutron: {traced} probes in {:.1}s", started.elapsed().as_secs_f64());
        assert!(
            failures.is_empty(),
            "{} wrong verdicts of {traced}:\n{}",
            failures.len(),
            failures[..failures.len().min(30)].join("\n")
        );
    });
}
