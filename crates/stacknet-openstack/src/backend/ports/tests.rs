//! The ports' plan against a Neutron state built in memory: no cloud.

use serde_json::json;
use stacknet_engine::{PolicyEngine, manifest};

use super::*;
use crate::backend::fixtures::{self, from};
use crate::secgroups::Family;

const NET: &str = "net-pods";

fn config() -> NeutronConfig {
    NeutronConfig::new("t", vec!["10.0.0.0/16".parse().unwrap()])
}

/// Node n1 is bare metal, n2 a Nova server (`vm-2`) with trunk `t2`.
fn cluster(pods: &str) -> PolicyEngine {
    PolicyEngine::from_index(fixtures::cluster(pods))
}

fn pod(name: &str, node: &str) -> String {
    format!(
        "- {{apiVersion: v1, kind: Pod, metadata: {{name: {name}, namespace: x, uid: uid-{name}}}, spec: {{nodeName: {node}}}}}\n"
    )
}

fn port(id: &str, description: &str, extra: Value) -> Port {
    let mut v = json!({"id": id, "name": id, "description": description, "network_id": NET, "mac_address": "fa:16:3e:00:00:01"});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    from(v)
}

fn state() -> State {
    let mut s = fixtures::state(fixtures::topology(Some(NET)));
    let subnet = from(json!({"id": "sub4", "network_id": NET, "cidr": "10.0.0.0/16"}));
    s.topology.subnets.insert("10.0.0.0/16".parse().unwrap(), subnet);
    s
}

fn shared() -> Projects {
    [("x".to_string(), None)].into()
}

fn planned(engine: &PolicyEngine, state: &State, projects: &Projects) -> PortPlan {
    let security = crate::secgroups::plan(engine, &[Family::V4]);
    plan(engine.index(), &security, &BTreeMap::new(), projects, state, &config())
}

#[test]
fn a_new_pod_on_a_bare_metal_node_gets_a_port_bound_to_the_node() {
    let p = planned(&cluster(&pod("a", "n1")), &state(), &shared());
    assert_eq!(p.creates.len(), 1);
    let new = &p.creates[0];
    assert_eq!((new.pod.to_string(), new.network.as_str()), ("x/a".to_string(), NET));
    assert_eq!((new.host.as_deref(), new.trunk.as_deref(), new.uid.as_str()), (Some("n1"), None, "uid-a"));
    assert_eq!(new.marker, config().marker("pod:x/a"));
    assert!(p.updates.is_empty() && p.gone.is_empty() && p.to_trunk.is_empty());
}

#[test]
fn new_pods_take_free_ports_of_their_nodes_pool_before_new_ones_are_made() {
    let mut s = state();
    let key: PoolKey = (Some("n1".into()), NET.into(), None);
    s.pool.insert(key.clone(), vec![port("free-1", "stacknet:t:pool", json!({"binding:host_id": "n1"}))]);
    let p = planned(&cluster(&(pod("a", "n1") + &pod("b", "n1"))), &s, &shared());
    assert_eq!(p.updates.len(), 1, "one free port for two pods");
    let u = &p.updates[0];
    assert_eq!((u.port.as_str(), u.from_pool.as_ref()), ("free-1", Some(&key)));
    assert_eq!(u.changes["name"], json!(u.pod.to_string()));
    assert_eq!(u.changes["description"], json!(config().marker(&format!("pod:{}", u.pod))));
    assert_eq!(u.changes["device_id"], json!(format!("uid-{}", u.pod.name)));
    assert_eq!(p.creates.len(), 1, "the other pod gets a new port");
    assert_ne!(p.creates[0].pod, u.pod);
}

#[test]
fn a_pod_on_a_nested_node_takes_a_subport_of_its_trunk_or_a_new_port_for_it() {
    let mut s = state();
    let p = planned(&cluster(&pod("a", "n2")), &s, &shared());
    let new = &p.creates[0];
    assert_eq!((new.host.as_deref(), new.trunk.as_deref()), (None, Some("t2")), "bound where its VM is, by Neutron");
    // A free subport of the trunk: taken in one call.
    let key: PoolKey = (Some("trunk:t2".into()), NET.into(), None);
    s.pool.insert(key.clone(), vec![port("sub-1", "stacknet:t:pool", json!({}))]);
    let p = planned(&cluster(&pod("a", "n2")), &s, &shared());
    assert!(p.creates.is_empty());
    assert_eq!(p.updates[0].from_pool, Some(key));
    assert!(p.to_trunk.is_empty(), "already on the trunk");
}

#[test]
fn an_existing_port_changes_only_where_it_differs() {
    let mut s = state();
    let marker = config().marker("pod:x/a");
    s.ports.insert(
        marker.clone(),
        port("pa", &marker, json!({"binding:host_id": "n1", "device_id": "uid-a", "security_groups": []})),
    );
    let engine = cluster(&pod("a", "n1"));
    let p = planned(&engine, &s, &shared());
    assert!(p.creates.is_empty() && p.updates.is_empty() && p.gone.is_empty(), "{:?}", p.updates);
    assert_eq!(p.current.keys().map(|k| k.to_string()).collect::<Vec<_>>(), ["x/a"]);
    // Rebound elsewhere behind our back: one update of the binding.
    s.ports.get_mut(&marker).unwrap().host = Some("n9".into());
    let p = planned(&engine, &s, &shared());
    assert_eq!(p.updates.len(), 1);
    assert_eq!(p.updates[0].changes, json!({"binding:host_id": "n1"}));
}

#[test]
fn a_port_of_a_nested_pod_not_yet_on_the_trunk_goes_on_it_without_a_device() {
    let mut s = state();
    let marker = config().marker("pod:x/a");
    s.ports.insert(marker.clone(), port("pa", &marker, json!({"device_id": "uid-a"})));
    let p = planned(&cluster(&pod("a", "n2")), &s, &shared());
    assert_eq!(p.to_trunk, [("t2".to_string(), "pa".to_string(), ObjectKey::new("x", "a"))]);
    assert_eq!(p.updates[0].changes, json!({"device_id": ""}), "Neutron takes only a port with no device");
    assert_eq!(p.uids[&ObjectKey::new("x", "a")], "uid-a");
}

#[test]
fn ports_of_gone_pods_go_and_a_pod_without_a_project_keeps_its_port() {
    let mut s = state();
    for name in ["a", "gone"] {
        let marker = config().marker(&format!("pod:x/{name}"));
        s.ports.insert(marker.clone(), port(&format!("p-{name}"), &marker, json!({"binding:host_id": "n1"})));
    }
    let engine = cluster(&pod("a", "n1"));
    let p = planned(&engine, &s, &shared());
    assert_eq!(p.gone.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["p-gone"]);
    // Its namespace's project cannot be had: no new port, and the old one is not deleted.
    let p = planned(&engine, &s, &Projects::new());
    assert!(p.creates.is_empty() && p.updates.is_empty());
    assert_eq!(p.gone.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["p-gone"]);
}

#[test]
fn a_pod_keeps_the_address_it_has_when_one_of_our_subnets_holds_it() {
    let yaml = "- {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: x}, spec: {nodeName: n1}, status: {podIP: 10.0.3.4}}\n\
                - {apiVersion: v1, kind: Pod, metadata: {name: b, namespace: x}, spec: {nodeName: n1}, status: {podIP: 192.168.0.4}}\n";
    let p = planned(&cluster(yaml), &state(), &shared());
    let fixed: BTreeMap<String, Option<(String, String)>> =
        p.creates.iter().map(|c| (c.pod.name.clone(), c.fixed.clone())).collect();
    assert_eq!(fixed["a"], Some(("sub4".to_string(), "10.0.3.4".to_string())));
    assert_eq!(fixed["b"], None, "an address outside our subnets is not kept");
}

#[test]
fn a_pods_port_is_in_its_own_nodes_group_and_leaves_it_when_the_node_goes() {
    let engine = cluster(&(pod("a", "n1") + &pod("b", "n2")));
    let security = crate::secgroups::plan(&engine, &[Family::V4]);
    let groups: BTreeMap<String, SecurityGroup> =
        security.groups.keys().map(|id| (id.clone(), from(json!({"id": format!("sg-{id}")})))).collect();
    let p = plan(engine.index(), &security, &groups, &shared(), &state(), &config());
    let sgs: BTreeMap<String, BTreeSet<String>> =
        p.creates.iter().map(|c| (c.pod.name.clone(), c.security_groups.clone())).collect();
    assert!(sgs["a"].contains("sg-node:n1") && !sgs["a"].contains("sg-node:n2"), "{sgs:?}");
    assert!(sgs["b"].contains("sg-node:n2") && !sgs["b"].contains("sg-node:n1"), "{sgs:?}");
    // Node n1 goes (its pod not yet): a's port is updated out of n1's group, nothing else.
    let mut s = state();
    let marker = config().marker("pod:x/a");
    let have: Vec<&String> = sgs["a"].iter().collect();
    let existing = json!({"binding:host_id": "n1", "device_id": "uid-a", "security_groups": have});
    s.ports.insert(marker.clone(), port("pa", &marker, existing));
    let yaml = format!(
        "apiVersion: v1\nkind: List\nitems:\n- {{apiVersion: v1, kind: Namespace, metadata: {{name: x}}}}\n{}",
        pod("a", "n1")
    );
    let without =
        PolicyEngine::from_index(ClusterIndex::from_objects(manifest::parse("c.yaml", &yaml).unwrap().objects));
    let security = crate::secgroups::plan(&without, &[Family::V4]);
    let p = plan(without.index(), &security, &groups, &shared(), &s, &config());
    assert_eq!(p.updates.len(), 1, "{:?}", p.updates);
    let left: BTreeSet<String> = serde_json::from_value(p.updates[0].changes["security_groups"].clone()).unwrap();
    let want: BTreeSet<String> = sgs["a"].iter().filter(|g| *g != "sg-node:n1").cloned().collect();
    assert_eq!(left, want);
}
