//! Neutron's state built in memory, for the plans' tests.

use std::time::Instant;

use serde_json::{Value, json};

use super::state::State;
use super::topology::Topology;

/// Namespace `x`, node `n1` (bare metal) and node `n2` (Nova server `vm-2`, whose trunk
/// [`state`] holds), then the objects of `items` (YAML list items).
pub(super) fn cluster(items: &str) -> stacknet_engine::ClusterIndex {
    let yaml = format!(
        "apiVersion: v1
kind: List
items:
- {{apiVersion: v1, kind: Namespace, metadata: {{name: x}}}}
- {{apiVersion: v1, kind: Node, metadata: {{name: n1}}}}
- {{apiVersion: v1, kind: Node, metadata: {{name: n2}}, spec: {{providerID: 'openstack:///vm-2'}}}}
{items}"
    );
    stacknet_engine::ClusterIndex::from_objects(stacknet_engine::manifest::parse("c.yaml", &yaml).unwrap().objects)
}

/// A Neutron object from its JSON.
pub(super) fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

/// A topology with router `r`, the shared pod network `network` if given, and nothing else.
pub(super) fn topology(network: Option<&str>) -> Topology {
    Topology {
        network: network.map(|id| from(json!({"id": id}))),
        subnets: Default::default(),
        pools: Default::default(),
        namespaces: Default::default(),
        router: from(json!({"id": "r"})),
        service_subnet: None,
        external_network: None,
    }
}

/// What Neutron holds with `topology`, trunk `t2` on Nova server `vm-2`, and nothing of ours.
pub(super) fn state(topology: Topology) -> State {
    State {
        read_at: Instant::now(),
        topology,
        groups: Default::default(),
        ports: Default::default(),
        pool: Default::default(),
        trunks: [("vm-2".to_string(), from(json!({"id": "t2", "port_id": "vm-2-port", "sub_ports": []})))].into(),
        attachments: Default::default(),
        lookups: Default::default(),
    }
}
