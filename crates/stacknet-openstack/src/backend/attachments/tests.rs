//! The secondary interfaces' plan against a Neutron state built in memory: no cloud.

use serde_json::json;
use stacknet_engine::multinet::{Allocator, Foreign};

use super::*;
use crate::backend::fixtures::{self, from};

const OWN: &str = "own-project";

fn config() -> NeutronConfig {
    NeutronConfig::new("t", vec!["10.0.0.0/16".parse().unwrap()])
}

/// NADs `provider` (a Neutron network, port security off), `web` (groups `web`), `sriov`
/// (direct), `missing` (a network Neutron does not have), `plain` (the network, nothing
/// else) and `data` (an OVN layer2 one);
/// node n1 is bare metal, n2 a Nova server (`vm-2`) with trunk `t2`; then `pods`.
fn index(pods: &str) -> ClusterIndex {
    let nad = |name: &str, config: &str| {
        format!(
            "- {{apiVersion: k8s.cni.cncf.io/v1, kind: NetworkAttachmentDefinition, metadata: {{name: {name}, namespace: x}}, spec: {{config: '{config}'}}}}\n"
        )
    };
    let items = format!(
        "{}{}{}{}{}{}{pods}",
        nad(
            "provider",
            r#"{"name": "provider", "type": "stacknet-cni", "neutronNetwork": "physnet1", "portSecurity": false}"#
        ),
        nad(
            "web",
            r#"{"name": "web", "type": "stacknet-cni", "neutronNetwork": "physnet1", "securityGroups": ["web"]}"#
        ),
        nad(
            "sriov",
            r#"{"name": "sriov", "type": "stacknet-cni", "neutronNetwork": "physnet1", "vnicType": "direct"}"#
        ),
        nad("missing", r#"{"name": "missing", "type": "stacknet-cni", "neutronNetwork": "nope"}"#),
        nad("plain", r#"{"name": "plain", "type": "stacknet-cni", "neutronNetwork": "physnet1"}"#),
        nad("data", r#"{"name": "data", "type": "stacknet-cni", "topology": "layer2", "subnets": "10.100.0.0/24"}"#),
    );
    fixtures::cluster(&items)
}

/// A pod on `node` selecting `networks` (the annotation's text), with `sriov` as its
/// `stacknet.io/sriov-devices` annotation if given.
fn pod(name: &str, node: &str, networks: &str, sriov: Option<&str>) -> String {
    let mut annotations = format!("k8s.v1.cni.cncf.io/networks: '{networks}'");
    if let Some(s) = sriov {
        annotations.push_str(&format!(", stacknet.io/sriov-devices: '{s}'"));
    }
    format!(
        "- {{apiVersion: v1, kind: Pod, metadata: {{name: {name}, namespace: x, uid: uid-{name}, annotations: {{{annotations}}}}}, spec: {{nodeName: {node}}}}}\n"
    )
}

fn multinet(index: &ClusterIndex) -> Plan {
    Allocator::default().sync(index, Foreign::Refuse, accepts)
}

/// Neutron with the pods' primary ports (`pods`, each in `project`).
fn state(pods: &[&str], project: &str) -> State {
    let mut s = fixtures::state(fixtures::topology(Some("net-pods")));
    for name in pods {
        let key = ObjectKey::new("x", *name);
        let marker = config().pod_marker(&key);
        let p = from(json!({"id": format!("p-{name}"), "description": marker, "network_id": "net-pods",
                            "mac_address": "fa:16:3e:00:00:01", "project_id": project}));
        s.ports.insert(marker, p);
    }
    s
}

fn resolved() -> Resolved {
    let info = NetworkInfo {
        id: "net-phys".into(),
        subnets: [("sub-phys".to_string(), 24)].into(),
        physical_network: Some("physnet1".into()),
        mtu: Some(1500),
    };
    Resolved {
        networks: [
            ("physnet1".to_string(), Ok(info)),
            ("nope".to_string(), Err("Neutron has no network with id or name \"nope\"".to_string())),
        ]
        .into(),
        groups: [
            ((None, "web".to_string()), Ok("sg-web".to_string())),
            (
                (Some("team".to_string()), "web".to_string()),
                Err("project team has no security group with id or name \"web\"".to_string()),
            ),
        ]
        .into(),
    }
}

fn planned(index: &ClusterIndex, state: &State) -> AttachPlan {
    plan(index, &multinet(index), &resolved(), state, &config(), Some(OWN))
}

/// An existing secondary port of pod `pod`'s `interface` on NAD `nad`.
fn existing(pod: &str, interface: &str, nad: &str, extra: Value) -> (String, Port) {
    let marker = config().attachment_marker(&ObjectKey::new("x", pod), interface, &ObjectKey::new("x", nad));
    let mut v = json!({"id": format!("a-{pod}-{interface}"), "name": format!("x/{pod}/{interface}"), "description": marker,
                       "network_id": "net-phys", "mac_address": "fa:16:3e:00:00:02", "device_id": format!("uid-{pod}"),
                       "binding:host_id": "n1", "binding:vnic_type": "normal", "port_security_enabled": false,
                       "security_groups": []});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    (marker, from(v))
}

#[test]
fn openstack_mode_accepts_neutron_networks_and_names_the_field_of_the_others() {
    let idx = index(&pod("a", "n1", "data", None));
    let plan = multinet(&idx);
    let why = &plan.refused[&ObjectKey::new("x", "a")];
    assert!(
        why.contains("network x/data (layer2): spec.config.topology: a layer2 network is made by OVN mode"),
        "{why}"
    );
    assert!(
        accepts(&NetTopology::Neutron {
            network: "n".into(),
            vnic: VnicType::Normal,
            port_security: None,
            security_groups: vec![]
        })
        .is_ok()
    );
}

#[test]
fn the_sriov_annotation_gives_each_interface_its_device_and_a_bad_one_names_the_field() {
    let d = sriov_devices(
        r#"{"net1": {"pciSlot": "0000:03:00.2", "vendorInfo": "8086:154C", "physicalNetwork": "physnet2"}}"#,
    )
    .unwrap();
    let dev = &d["net1"];
    assert_eq!(
        dev.profile(),
        json!({"pci_slot": "0000:03:00.2", "pci_vendor_info": "8086:154c", "physical_network": "physnet2"})
    );
    let err = |t: &str| sriov_devices(t).unwrap_err();
    let at = "metadata.annotations[stacknet.io/sriov-devices]";
    assert!(err("{").starts_with(&format!("{at}: not valid JSON")));
    assert_eq!(err("[]"), format!("{at}: a JSON object of interfaces and their devices"));
    assert!(err(r#"{"net1": "0000:03:00.2"}"#).starts_with(&format!("{at}.net1: an object")));
    let device = |slot: &str, vendor: &str| {
        format!(r#"{{"net1": {{"pciSlot": "{slot}", "vendorInfo": "{vendor}", "physicalNetwork": "p"}}}}"#)
    };
    for slot in ["03:00.2", "0000:03:00.8", "0000:03:20.1", "0000:3:00.1", "0000:03:00", "zzzz:03:00.1"] {
        let e = err(&device(slot, "8086:154c"));
        assert!(e.starts_with(&format!("{at}.net1.pciSlot: \"{slot}\" is not a PCI address")), "{slot}: {e}");
    }
    assert!(err(&device("0000:03:00.2", "8086")).starts_with(&format!("{at}.net1.vendorInfo: \"8086\"")));
    assert_eq!(
        err(r#"{"net1": {"pciSlot": "0000:03:00.2", "vendorInfo": "8086:154c"}}"#),
        format!("{at}.net1.physicalNetwork: required")
    );
    assert!(
        err(r#"{"net1": {"pci_slot": "0000:03:00.2"}}"#).starts_with(&format!("{at}.net1.pci_slot: not a key")),
        "a typo is named, not ignored"
    );
    assert!(
        err(r#"{"net1": {"pciSlot": 3, "vendorInfo": "8086:154c", "physicalNetwork": "p"}}"#)
            .starts_with(&format!("{at}.net1.pciSlot: 3 is not"))
    );
}

#[test]
fn a_pod_gets_a_port_on_the_named_network_in_its_primary_ports_project_bound_to_its_node() {
    let networks = r#"[{"name": "provider", "ips": ["192.0.2.10/24"], "mac": "02:00:00:00:00:0a"}, {"name": "web", "interface": "web0"}]"#;
    let idx = index(&pod("a", "n1", networks, None));
    let p = planned(&idx, &state(&["a"], "team"));
    assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
    // Group `web` is looked up in the primary port's project, team, which has none.
    assert!(
        p.problems[0].message.starts_with(
            "interface web0: NetworkAttachmentDefinition x/web: spec.config.securityGroups: project team has no security group"
        ),
        "{}",
        p.problems[0].message
    );
    assert!(p.creates.is_empty(), "all or nothing: not even the provider port");

    // In the session's own project (its primary port's), both are made.
    let p = planned(&idx, &state(&["a"], OWN));
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    assert_eq!(p.creates.len(), 2);
    let body = p.creates[0].body(&config());
    assert_eq!(
        body,
        json!({
            "network_id": "net-phys", "name": "x/a/net1",
            "description": config().attachment_marker(&ObjectKey::new("x", "a"), "net1", &ObjectKey::new("x", "provider")),
            "device_owner": "compute:stacknet-t", "device_id": "uid-a", "binding:vnic_type": "normal",
            "binding:host_id": "n1", "fixed_ips": [{"ip_address": "192.0.2.10"}], "mac_address": "02:00:00:00:00:0a",
            "port_security_enabled": false, "security_groups": [],
        }),
        "no project_id: the session's own"
    );
    let web = p.creates[1].body(&config());
    assert_eq!(web["security_groups"], json!(["sg-web"]));
    assert!(
        web.get("port_security_enabled").is_none()
            && web.get("fixed_ips").is_none()
            && web.get("mac_address").is_none()
    );
    assert_eq!(p.pods[&ObjectKey::new("x", "a")].len(), 2);
    assert!(p.gone.is_empty() && p.updates.is_empty());

    // Another project: the port is made in it.
    let idx = index(&pod("b", "n1", "provider", None));
    let p = planned(&idx, &state(&["b"], "team"));
    assert_eq!(p.creates[0].body(&config())["project_id"], json!("team"));
}

#[test]
fn a_network_neutron_cannot_name_leaves_the_pod_none_of_its_ports() {
    let idx = index(&pod("a", "n1", "provider, missing", None));
    let mut s = state(&["a"], OWN);
    let (marker, port) = existing("a", "net1", "provider", json!({}));
    s.attachments.insert(marker, port);
    let p = planned(&idx, &s);
    assert_eq!(p.problems.len(), 1);
    let problem = &p.problems[0];
    assert_eq!((problem.object.to_string(), problem.reason), ("Pod x/a".to_string(), Reason::AttachmentFailed));
    assert_eq!(
        problem.message,
        "interface net2: NetworkAttachmentDefinition x/missing: spec.config.neutronNetwork: Neutron has no network with id or name \"nope\"; none of its secondary networks is attached"
    );
    assert!(p.creates.is_empty() && p.updates.is_empty() && !p.pods.contains_key(&ObjectKey::new("x", "a")));
    assert_eq!(p.gone.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["a-a-net1"], "its made port goes too");
}

#[test]
fn an_existing_port_changes_only_where_it_differs_and_is_replaced_when_it_cannot_change() {
    let networks = |ip: &str| format!(r#"[{{"name": "provider", "ips": ["{ip}"]}}]"#);
    let mut s = state(&["a"], OWN);
    let fixed = json!({"fixed_ips": [{"subnet_id": "sub-phys", "ip_address": "192.0.2.10"}]});
    let (marker, port) = existing("a", "net1", "provider", fixed);
    s.attachments.insert(marker.clone(), port);
    let p = planned(&index(&pod("a", "n1", &networks("192.0.2.10"), None)), &s);
    assert!(p.creates.is_empty() && p.updates.is_empty() && p.gone.is_empty() && p.replaced.is_empty(), "{p:?}");
    // Another address asked for: changed in place.
    let p = planned(&index(&pod("a", "n1", &networks("192.0.2.11"), None)), &s);
    assert_eq!(p.updates.len(), 1);
    assert_eq!(
        (p.updates[0].1.as_str(), &p.updates[0].2),
        ("a-a-net1", &json!({"fixed_ips": [{"ip_address": "192.0.2.11"}]}))
    );
    // Rebound elsewhere and given groups behind our back: put back.
    s.attachments.get_mut(&marker).unwrap().host = Some("n9".into());
    s.attachments.get_mut(&marker).unwrap().security_groups = vec!["sg-x".into()];
    let p = planned(&index(&pod("a", "n1", &networks("192.0.2.10"), None)), &s);
    assert_eq!(p.updates[0].2, json!({"binding:host_id": "n1", "security_groups": []}));
    // On another network (the NAD now names another one): replaced.
    s.attachments.get_mut(&marker).unwrap().network_id = "net-old".into();
    let p = planned(&index(&pod("a", "n1", &networks("192.0.2.10"), None)), &s);
    assert_eq!(
        p.replaced.iter().map(|(k, p)| (k.to_string(), p.id.as_str())).collect::<Vec<_>>(),
        [("x/a".to_string(), "a-a-net1")]
    );
    assert_eq!(p.creates.len(), 1);
    assert!(p.gone.is_empty());
}

#[test]
fn a_pod_without_its_primary_port_gets_nothing_yet_and_a_gone_pods_ports_go() {
    let mut s = state(&[], OWN);
    for pod in ["a", "gone"] {
        let (marker, port) = existing(pod, "net1", "provider", json!({}));
        s.attachments.insert(marker, port);
    }
    let p = planned(&index(&(pod("a", "n1", "provider", None) + &pod("b", "n1", "provider", None))), &s);
    assert!(p.creates.is_empty() && p.problems.is_empty(), "{p:?}");
    assert_eq!(p.gone.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["a-gone-net1"], "a keeps its port");
    // A pod that no longer selects the network: its port goes.
    let p =
        planned(&index("- {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: x}, spec: {nodeName: n1}}\n"), &s);
    assert_eq!(p.gone.len(), 2);
    // What the names resolve to is needed only for pods with a primary port.
    let idx = index(&(pod("a", "n1", "web", None) + &pod("b", "n1", "missing", None)));
    let (networks, groups) = needed(&idx, &multinet(&idx), &state(&["a"], "team"), &config(), Some(OWN));
    assert_eq!(networks.into_iter().collect::<Vec<_>>(), ["physnet1"]);
    assert_eq!(groups.into_iter().collect::<Vec<_>>(), [(Some("team".to_string()), "web".to_string())]);
}

#[test]
fn an_sriov_port_is_direct_and_bound_once_the_pods_device_is_known() {
    let device = r#"{"net1": {"pciSlot": "0000:03:00.2", "vendorInfo": "8086:154c", "physicalNetwork": "physnet1"}}"#;
    // Not known yet: a direct port, unbound.
    let p = planned(&index(&pod("a", "n1", "sriov", None)), &state(&["a"], OWN));
    let body = p.creates[0].body(&config());
    assert_eq!(body["binding:vnic_type"], json!("direct"));
    assert!(body.get("binding:host_id").is_none() && body.get("binding:profile").is_none(), "{body}");
    // Known: bound to the node with the device.
    let mut s = state(&["a"], OWN);
    let unbound = json!({"binding:vnic_type": "direct", "binding:host_id": "", "binding:profile": {}, "port_security_enabled": true});
    let (marker, port) = existing("a", "net1", "sriov", unbound);
    s.attachments.insert(marker.clone(), port);
    let p = planned(&index(&pod("a", "n1", "sriov", Some(device))), &s);
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    let profile = json!({"pci_slot": "0000:03:00.2", "pci_vendor_info": "8086:154c", "physical_network": "physnet1"});
    assert_eq!(p.updates[0].2, json!({"binding:host_id": "n1", "binding:profile": profile}));
    // Bound as it says: nothing to do.
    let port = s.attachments.get_mut(&marker).unwrap();
    port.host = Some("n1".into());
    port.profile = Some(profile.clone());
    let p = planned(&index(&pod("a", "n1", "sriov", Some(device))), &s);
    assert!(p.updates.is_empty() && p.creates.is_empty() && p.gone.is_empty(), "{p:?}");
    // An unreadable annotation: said on the pod; the port stays, bound as it is.
    let bad = r#"{"net1": {"pciSlot": "03:00.2", "vendorInfo": "8086:154c", "physicalNetwork": "physnet1"}}"#;
    let p = planned(&index(&pod("a", "n1", "sriov", Some(bad))), &s);
    assert_eq!(p.problems.len(), 1);
    assert!(p.problems[0].message.starts_with("metadata.annotations[stacknet.io/sriov-devices].net1.pciSlot: "));
    assert_eq!(p.problems[0].reason, Reason::AttachmentFailed);
    assert!(p.updates.is_empty() && p.gone.is_empty() && p.creates.is_empty(), "{p:?}");
    // A normal port where a direct one is wanted cannot become one: replaced.
    s.attachments.get_mut(&marker).unwrap().vnic_type = Some("normal".into());
    let p = planned(&index(&pod("a", "n1", "sriov", Some(device))), &s);
    assert_eq!((p.replaced.len(), p.creates.len()), (1, 1));
    assert_eq!(p.creates[0].body(&config())["binding:profile"], profile);
}

#[test]
fn a_nested_pods_port_is_a_subport_of_its_nodes_trunk_and_an_sriov_one_is_refused() {
    let p = planned(&index(&pod("a", "n2", "provider", None)), &state(&["a"], OWN));
    let w = &p.creates[0];
    assert_eq!((w.trunk.as_deref(), w.host.as_deref()), (Some("t2"), None), "bound where its VM is, by Neutron");
    assert_eq!(w.body(&config())["device_id"], json!(""), "Neutron takes only a port with no device as a subport");
    // Made, not yet on the trunk: it goes on, without a device until then.
    let mut s = state(&["a"], OWN);
    let (marker, port) = existing("a", "net1", "provider", json!({"binding:host_id": ""}));
    s.attachments.insert(marker, port);
    let p = planned(&index(&pod("a", "n2", "provider", None)), &s);
    assert_eq!(p.to_trunk, [("t2".to_string(), "a-a-net1".to_string(), ObjectKey::new("x", "a"))]);
    assert_eq!(p.updates[0].2, json!({"device_id": ""}));
    let p = planned(&index(&pod("a", "n2", "sriov", None)), &state(&["a"], OWN));
    assert_eq!(p.problems.len(), 1);
    assert!(
        p.problems[0].message.contains("spec.config.vnicType: a direct (SR-IOV) port cannot be a subport"),
        "{}",
        p.problems[0].message
    );
    assert!(p.creates.is_empty());
}

#[test]
fn a_pool_port_of_the_node_and_network_is_taken_in_one_update() {
    // Pools on: p (port security off) and w (groups) take free ports; m asks for a MAC and
    // s is SR-IOV: made.
    let pods = [
        pod("p", "n1", "provider", None),
        pod("w", "n1", r#"[{"name": "web", "ips": ["192.0.2.40"]}]"#, None),
        pod("m", "n1", r#"[{"name": "provider", "mac": "fa:16:3e:00:00:77"}]"#, None),
        pod("s", "n1", "sriov", None),
        pod("n", "n2", "provider", None),
    ]
    .concat();
    let idx = index(&pods);
    let mut s = state(&["p", "w", "m", "s", "n"], "");
    let free = |id: &str| {
        from(json!({"id": id, "description": "stacknet:t:pool", "network_id": "net-phys",
                    "mac_address": "fa:16:3e:00:00:aa", "binding:host_id": "n1",
                    "fixed_ips": [{"subnet_id": "sub-phys", "ip_address": "192.0.2.99"}]}))
    };
    s.pool.insert((Some("n1".into()), "net-phys".into(), None), vec![free("f1"), free("f2"), free("f3")]);
    let c = NeutronConfig { pool_size: 3, ..config() };
    let p = plan(&idx, &multinet(&idx), &resolved(), &s, &c, Some(OWN));
    let taken: BTreeMap<String, (String, Value)> =
        p.taken.iter().map(|(w, _, id, ch)| (w.pod.name.clone(), (id.clone(), ch.clone()))).collect();
    assert_eq!(taken.keys().collect::<Vec<_>>(), ["p", "w"], "{:?}", p.creates);
    // Each its own free port, the last ones first.
    assert_eq!((taken["p"].0.as_str(), taken["w"].0.as_str()), ("f3", "f2"));
    let ch = &taken["p"].1;
    assert_eq!(ch["name"], "x/p/net1");
    assert_eq!(ch["device_id"], "uid-p");
    assert_eq!((ch["port_security_enabled"].clone(), ch["security_groups"].clone()), (json!(false), json!([])));
    assert!(ch["description"].as_str().unwrap().starts_with("stacknet:t:attach:x/p/net1@"), "{ch}");
    let ch = &taken["w"].1;
    assert_eq!(ch["security_groups"], json!(["sg-web"]));
    assert_eq!(ch["fixed_ips"], json!([{"ip_address": "192.0.2.40"}]), "the address the selection asks for");
    let made: Vec<&str> = p.creates.iter().map(|w| w.pod.name.as_str()).collect();
    assert_eq!(made, ["m", "n", "s"], "a MAC asked for, a node with no pool, SR-IOV");

    // A NAD naming no groups (port security on): the port Neutron would make gets the
    // project's default group, so a pool port is taken once that group is looked up.
    let idx = index(&pod("d", "n1", "plain", None));
    let mut s = state(&["d"], "");
    s.pool.insert((Some("n1".into()), "net-phys".into(), None), vec![free("f1")]);
    let (_, groups) = needed(&idx, &multinet(&idx), &s, &c, Some(OWN));
    assert!(groups.contains(&(None, "default".to_string())), "{groups:?}");
    let p = plan(&idx, &multinet(&idx), &resolved(), &s, &c, Some(OWN));
    assert_eq!((p.taken.len(), p.creates.len()), (0, 1), "not looked up: made");
    let mut r = resolved();
    r.groups.insert((None, "default".into()), Ok("sg-default".into()));
    let p = plan(&idx, &multinet(&idx), &r, &s, &c, Some(OWN));
    assert_eq!(p.taken.len(), 1);
    assert_eq!(p.taken[0].3["security_groups"], json!(["sg-default"]));
    assert!(p.taken[0].3.get("port_security_enabled").is_none());
    // Without pools nothing is looked up for it.
    let (_, groups) = needed(&idx, &multinet(&idx), &s, &config(), Some(OWN));
    assert!(groups.is_empty(), "{groups:?}");
}
