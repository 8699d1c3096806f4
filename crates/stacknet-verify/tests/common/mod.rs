//! Feeding conformance events (API objects) to the engine, as a watch would.

use stacknet_conformance::Event;
use stacknet_engine::PolicyEngine;
use stacknet_engine::index::Kind;
use stacknet_engine::objects::{ClusterObject, Namespace, NetworkPolicy, ObjectKey, Pod};

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
