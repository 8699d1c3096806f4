//! Running conformance cases on any dataplane: the events fed to the engine as a watch would,
//! and each step's expectations as probes.

use stacknet_conformance::{Event, ScenarioStep};
use stacknet_engine::objects::Kind;
use stacknet_engine::objects::{ClusterObject, Namespace, NetworkPolicy, ObjectKey, Pod, Protocol};
use stacknet_engine::{PolicyEngine, semantics};

use crate::Probe;

/// Applies one case event (an API object, or a policy deletion) to the engine.
pub fn apply(engine: &mut PolicyEngine, event: &Event) {
    match event {
        Event::Namespace(ns) => {
            engine.apply(ClusterObject::Namespace(Namespace::from_k8s(ns).expect("valid namespace")));
        }
        Event::Pod(p) => {
            engine.apply(ClusterObject::Pod(Pod::from_k8s(p).expect("valid pod")));
        }
        Event::Policy(p) => {
            let policy = NetworkPolicy::from_k8s(p, &mut Vec::new()).expect("valid policy");
            engine.apply(ClusterObject::NetworkPolicy(policy));
        }
        Event::DeletePolicy { namespace, name } => {
            engine.delete(Kind::NetworkPolicy, &ObjectKey::new(namespace.as_str(), name.as_str()));
        }
    }
}

/// The step's expectations as probes with their expected verdicts, for the probes `keep`
/// accepts (by port and protocol).
pub fn expected_probes(step: &ScenarioStep, keep: impl Fn(u16, Protocol) -> bool) -> Vec<(Probe, bool)> {
    let mut out = Vec::new();
    for p in &step.probes {
        let protocol: Protocol = p.protocol.parse().expect("protocol");
        if !keep(p.port, protocol) {
            continue;
        }
        for ((from, to), want) in &p.expected {
            let probe = Probe {
                from: from.parse().expect("ns/name"),
                to: to.parse().expect("ns/name"),
                port: p.port,
                protocol,
            };
            out.push((probe, *want));
        }
    }
    out
}

/// The engine's verdict (direct semantics) on a probe between two indexed pods.
pub fn engine_verdict(engine: &PolicyEngine, probe: &Probe) -> bool {
    let index = engine.index();
    let pod = |k: &ObjectKey| index.pod_id(k).and_then(|id| index.pod(id)).expect("pod indexed");
    semantics::evaluate(index, pod(&probe.from), pod(&probe.to), probe.port, probe.protocol).allowed()
}
