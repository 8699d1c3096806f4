//! The OpenStack tier: a real Keystone, Neutron (ML2/OVN) and Octavia on loopback, one cloud for
//! every test of this file (it takes half a minute or more to start: the first test to run
//! starts it, and it is stopped when the test process ends). The backend programs the
//! conformance cases as security groups and ports through Neutron's API; ML2/OVN writes its OVN
//! rows; ovn-trace then decides every probe on the logical pipeline ovn-northd built from them.
//! The verdicts must equal the expected matrices: the rows Neutron produced enforce the
//! policies. Each other behaviour is a test of its own on a cluster id of its own; they take
//! turns on the cloud (some change quotas, one freezes Neutron), and after each, no credential
//! may be in the logs so far.
//!
//! Root and the OpenStack packages (`.ci/run` installs them):
//! `cargo test -p stacknet-openstack --test openstack_tier -- --include-ignored`.

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stacknet_conformance::world::World;
use stacknet_engine::multinet::{Allocator, Foreign, Plan};
use stacknet_engine::objects::{ObjectKey, Protocol};
use stacknet_engine::{PolicyEngine, manifest};
use stacknet_openstack::{Cloud, CloudSource, NeutronBackend, NeutronConfig, PodPort, Reason, neutron};
use stacknet_sandbox::openstack::http;
use stacknet_sandbox::{OpenStack, TraceVerdict};
use stacknet_testsupport::conformance::{Replay, Verdicts, upstream_cases};
use stacknet_testsupport::openstack::{StopAtExit, neutron, neutron_status};
use stacknet_testsupport::{until, until_some};
use stacknet_verify::Probe;
use stacknet_verify::conformance::{apply, expected_probes};

#[test]
#[ignore = "needs root and the OpenStack packages (.ci/run installs them)"]
fn upstream_conformance_cases_hold_through_neutron_under_ovn_trace() {
    phase(conformance);
}

#[test]
#[ignore = "needs root and the OpenStack packages (.ci/run installs them)"]
fn an_ip_block_with_several_excepts_admits_exactly_what_is_outside_them() {
    phase(ip_block_excepts);
}

#[test]
#[ignore = "needs root and the OpenStack packages (.ci/run installs them)"]
fn a_restart_adopts_half_made_objects_deletes_orphans_and_leaves_foreign_ones() {
    phase(ownership);
}

#[test]
#[ignore = "needs root and the OpenStack packages (.ci/run installs them)"]
fn an_address_a_foreign_port_holds_is_a_conflict_on_that_pod_alone() {
    phase(conflicts);
}

#[test]
#[ignore = "needs root and the OpenStack packages (.ci/run installs them)"]
fn pools_fill_in_bulk_within_the_quota_and_a_pod_start_takes_one_call() {
    phase(pools);
}

#[test]
#[ignore = "needs root and the OpenStack packages (.ci/run installs them)"]
fn pods_of_a_nested_node_are_subports_of_its_trunk_on_vlans_nobody_has() {
    phase(nested);
}

#[test]
#[ignore = "needs root and the OpenStack packages (.ci/run installs them)"]
fn keystone_over_tls_needs_the_private_ca_and_says_why_without_it() {
    phase(|cloud, _| custom_ca(cloud));
}

#[test]
#[ignore = "needs root and the OpenStack packages (.ci/run installs them)"]
fn a_network_per_namespace_is_routed_policed_and_goes_with_its_namespace() {
    phase(per_namespace);
}

#[test]
#[ignore = "needs root and the OpenStack packages (.ci/run installs them)"]
fn a_namespace_project_holds_its_ports_networks_and_pools_within_its_quota() {
    phase(projects);
}

#[test]
#[ignore = "needs root and the OpenStack packages (.ci/run installs them)"]
fn a_hung_neutron_fails_the_reconcile_in_time_and_the_next_adopts_its_work() {
    phase(outage);
}

#[test]
#[ignore = "needs root and the OpenStack packages (.ci/run installs them)"]
fn an_application_credential_authenticates_and_a_wrong_secret_is_not_echoed() {
    phase(|cloud, _| async {
        let secret = application_credential(cloud).await;
        TIER.secrets.lock().unwrap_or_else(PoisonError::into_inner).push(secret);
    });
}

#[test]
#[ignore = "needs root and the OpenStack packages (.ci/run installs them)"]
fn services_are_octavia_load_balancers_traced_through_ovn_with_floating_ips_and_monitors() {
    phase(services);
}

#[test]
#[ignore = "needs root and the OpenStack packages (.ci/run installs them)"]
fn isolated_pods_take_their_own_nodes_probes_and_leave_through_the_routers_snat() {
    phase(node_traffic_and_egress);
}

#[test]
#[ignore = "needs root and the OpenStack packages (.ci/run installs them)"]
fn a_nad_naming_a_provider_network_gives_its_pods_ports_on_it_that_ovn_delivers() {
    phase(secondary_networks);
}

#[test]
#[ignore = "needs root and the OpenStack packages (.ci/run installs them)"]
fn secondary_ports_come_from_the_nodes_pool_of_their_network_in_one_call() {
    phase(secondary_pools);
}

#[test]
#[ignore = "needs root and the OpenStack packages (.ci/run installs them)"]
fn an_sriov_nad_makes_a_direct_port_bound_to_the_virtual_function_the_pod_was_given() {
    phase(sriov);
}

/// The cloud the tests share, and what they need around it.
struct Tier {
    cloud: OpenStack,
    /// The admin's session (password auth through clouds.yaml).
    session: Cloud,
    /// The session's connections belong to it: every test runs on it.
    runtime: tokio::runtime::Runtime,
    /// Everything logged, at `trace` with stacknet's caps, since the cloud started.
    logs: Captured,
    /// Held by the test running: one at a time.
    turn: Mutex<()>,
    /// Secrets tests made (an application credential's): no log line may hold one.
    secrets: Mutex<Vec<String>>,
    _stop: StopAtExit,
}

static TIER: LazyLock<Tier> = LazyLock::new(|| {
    let logs = Captured::default();
    let mut filter = tracing_subscriber::EnvFilter::new("trace");
    for d in stacknet_openstack::QUIET_LOGS {
        filter = filter.add_directive(d.parse().unwrap());
    }
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(logs.clone()).with_ansi(false).init();
    let cloud = stacknet_testsupport::openstack::start();
    let stop = StopAtExit::new(&cloud);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let session = runtime.block_on(stacknet_testsupport::openstack::connect(&cloud));
    Tier { cloud, session, runtime, logs, turn: Mutex::new(()), secrets: Mutex::default(), _stop: stop }
});

/// Runs one test's phase on the shared cloud when its turn comes (a test that failed before
/// does not stop the others), then checks the logs for credentials.
fn phase<F: Future<Output = ()>>(run: impl FnOnce(&'static OpenStack, &'static Cloud) -> F) {
    let tier: &'static Tier = &TIER;
    let _turn = tier.turn.lock().unwrap_or_else(PoisonError::into_inner);
    tier.runtime.block_on(run(&tier.cloud, &tier.session));
    tier.no_credentials_logged();
}

impl Tier {
    /// Logs at `trace` with the caps stacknet applies: they hold no password, no token and no
    /// secret a test made.
    fn no_credentials_logged(&self) {
        let text = String::from_utf8_lossy(&self.logs.0.lock().unwrap_or_else(PoisonError::into_inner)).to_string();
        assert!(text.contains("authenticated to Keystone"), "the capture works: {}", &text[..text.len().min(2000)]);
        let token = self.cloud.admin_token().unwrap();
        let secrets = self.secrets.lock().unwrap_or_else(PoisonError::into_inner).clone();
        for secret in [stacknet_sandbox::openstack::ADMIN_PASSWORD, &token[..12], "gAAAAA"]
            .into_iter()
            .chain(secrets.iter().map(String::as_str))
        {
            assert!(!text.contains(secret), "a credential ({secret}...) is in the logs");
        }
        eprintln!("{} bytes of trace-level logs, no credential in them", text.len());
    }
}

/// Everything logged, at every level the filter lets through, for the credential check.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
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

/// Every upstream case, step by step, programmed through Neutron; each probe traced.
async fn conformance(cloud: &OpenStack, session: &Cloud) {
    let cases = upstream_cases();
    let backend = backend(session, "conf");
    let mut verdicts = Verdicts::new("upstream cases through Neutron");
    let mut replay = Replay::new(&cases);
    while let Some((at, engine)) = replay.next_step() {
        let started = Instant::now();
        let report = backend.reconcile(engine).await.unwrap_or_else(|e| panic!("{at}: {e}"));
        assert!(report.problems.is_empty(), "{at}: {:?}", report.problems);
        cloud.ovn.sync_sb().expect("northd sync");
        eprintln!(
            "{at}: {} calls, +{} ~{} -{} in {:.1}s",
            report.calls,
            report.created,
            report.updated,
            report.deleted,
            started.elapsed().as_secs_f64()
        );
        for (probe, want) in expected_probes(at.step, |_, _| true) {
            let got = trace(cloud, &report.ports, &probe).unwrap_or_else(|e| panic!("{at}: {e}"));
            verdicts.check(got == want, || {
                format!(
                    "{at}: {} -> {} {}/{}: expected {want}, ovn-trace over Neutron's rows {got}",
                    probe.from, probe.to, probe.port, probe.protocol
                )
            });
        }
    }
    verdicts.assert_all_right();
}

fn engine_of(world: &World, extra: &str) -> PolicyEngine {
    let mut engine = PolicyEngine::new();
    for e in world.creation_events() {
        apply(&mut engine, &e);
    }
    if !extra.is_empty() {
        for o in manifest::parse("extra.yaml", extra).unwrap().objects {
            engine.apply(o);
        }
    }
    engine
}

/// A backend for cluster `cluster` (each test has its own: none sees another's objects), its
/// pod network holding [`World::full`]'s addresses, its Services on 10.96.0.0/12.
fn backend(session: &Cloud, cluster: &str) -> NeutronBackend {
    let config = NeutronConfig {
        service_cidr: Some("10.96.0.0/12".parse().unwrap()),
        ..NeutronConfig::new(cluster, vec!["10.0.0.0/12".parse().unwrap()])
    };
    NeutronBackend::new(session.clone(), config)
}

/// Several excepts in one ipBlock (kuryr-kubernetes re-allowed the excluded ranges with two or
/// more): traced from inside each except and from outside them.
async fn ip_block_excepts(cloud: &OpenStack, session: &Cloud) {
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: blk, namespace: z}\n\
                  spec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/12, except: [10.1.0.0/24, 10.2.0.2/32, 10.3.0.3/32]}}]}]}\n";
    let engine = engine_of(&World::full(), policy);
    let report = backend(session, "blk").reconcile(&engine).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    cloud.ovn.sync_sb().unwrap();
    let to = ObjectKey::new("z", "a");
    for (from, want) in
        [("x/a", false), ("x/b", false), ("y/b", false), ("z/c", false), ("y/a", true), ("y/c", true), ("z/b", true)]
    {
        let probe = Probe { from: from.parse().unwrap(), to: to.clone(), port: 80, protocol: Protocol::Tcp };
        assert_eq!(
            trace(cloud, &report.ports, &probe).unwrap(),
            want,
            "{from} -> z/a through the ipBlock with excepts"
        );
    }
}

/// A restart changes nothing; objects that are not ours are never touched; one left half-made
/// (created, not tagged) is adopted, not duplicated; one no longer wanted goes.
async fn ownership(cloud: &OpenStack, session: &Cloud) {
    let engine = engine_of(&World::full(), "");
    backend(session, "own").reconcile(&engine).await.unwrap();
    // A foreign group and port, on our very network.
    let net = neutron(cloud, "GET", "networks?name=stacknet-own-pods", None)["networks"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let sg = neutron(
        cloud,
        "POST",
        "security-groups",
        Some(json!({"security_group": {"name": "operator-sg", "description": "mine"}})),
    );
    let sg = sg["security_group"]["id"].as_str().unwrap().to_string();
    let port = neutron(
        cloud,
        "POST",
        "ports",
        Some(json!({"port": {"network_id": net, "name": "vm-port", "security_groups": [sg]}})),
    );
    let port = port["port"]["id"].as_str().unwrap().to_string();
    // A crash between create and tag: a wanted group untagged, an unwanted one too.
    let config = NeutronConfig::new("own", vec![]);
    let wanted = config.marker("allow-egress");
    let existing = neutron(cloud, "GET", &format!("security-groups?description={}", wanted), None);
    let old = existing["security_groups"][0]["id"].as_str().unwrap().to_string();
    neutron(cloud, "DELETE", &format!("security-groups/{old}/tags"), None);
    let orphan = neutron(
        cloud,
        "POST",
        "security-groups",
        Some(
            json!({"security_group": {"name": "stacknet-own-peer:gone", "description": config.marker("peer:ps_gone")}}),
        ),
    );
    let orphan = orphan["security_group"]["id"].as_str().unwrap().to_string();

    // A fresh backend: a controller restarted after a crash.
    let report = backend(session, "own").reconcile(&engine).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!((report.created, report.deleted), (0, 1), "only the unwanted orphan goes");
    let same = neutron(cloud, "GET", &format!("security-groups?description={}", wanted), None);
    assert_eq!(same["security_groups"].as_array().unwrap().len(), 1, "adopted, not made again");
    assert_eq!(same["security_groups"][0]["id"], json!(old));
    assert!(same["security_groups"][0]["tags"].as_array().unwrap().contains(&json!("stacknet.io/cluster=own")));
    assert_eq!(neutron_status(cloud, &format!("security-groups/{orphan}")), 404, "the orphan is gone");
    // The operator's objects are as they were.
    let p = neutron(cloud, "GET", &format!("ports/{port}"), None);
    assert_eq!(p["port"]["security_groups"], json!([sg]));
    assert_eq!(
        neutron(cloud, "GET", &format!("security-groups/{sg}"), None)["security_group"]["name"],
        json!("operator-sg")
    );

    // Nothing changed: a restart writes nothing.
    let again = backend(session, "own").reconcile(&engine).await.unwrap();
    assert_eq!((again.created, again.updated, again.deleted), (0, 0, 0), "{again:?}");
    neutron(cloud, "DELETE", &format!("ports/{port}"), None);
    neutron(cloud, "DELETE", &format!("security-groups/{sg}"), None);
}

/// An address a pod wants that someone else's port holds: reported on that pod, every other
/// pod still gets its port.
async fn conflicts(cloud: &OpenStack, session: &Cloud) {
    let mut engine = engine_of(&World::full(), "");
    let first = backend(session, "cfl").reconcile(&engine).await.unwrap();
    assert!(first.problems.is_empty(), "{:?}", first.problems);
    let net = neutron(cloud, "GET", "networks?name=stacknet-cfl-pods", None)["networks"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let subnet = neutron(cloud, "GET", &format!("subnets?network_id={net}"), None)["subnets"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let squatter = neutron(
        cloud,
        "POST",
        "ports",
        Some(
            json!({"port": {"network_id": net, "name": "squatter", "fixed_ips": [{"subnet_id": subnet, "ip_address": "10.3.0.9"}]}}),
        ),
    );
    let squatter = squatter["port"]["id"].as_str().unwrap().to_string();
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: late, namespace: z, labels: {pod: late}}\n\
               spec: {containers: [{name: c}]}\nstatus: {podIP: 10.3.0.9}\n";
    for o in manifest::parse("pod.yaml", pod).unwrap().objects {
        engine.apply(o);
    }
    let report = backend(session, "cfl").reconcile(&engine).await.unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].object.to_string(), "Pod z/late");
    assert_eq!(report.problems[0].reason, Reason::AddressConflict, "{:?}", report.problems);
    assert_eq!(report.ports.len(), 9, "every other pod has its port");
    neutron(cloud, "DELETE", &format!("ports/{squatter}"), None);
    let report = backend(session, "cfl").reconcile(&engine).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.ports[&ObjectKey::new("z", "late")].ips, vec!["10.3.0.9".parse::<std::net::IpAddr>().unwrap()]);
}

/// Port pools: free ports per node made in bulk, within the port quota; a pod start takes one
/// in a single call and the pod's traffic obeys its policies; a restart leaves the pool be.
async fn pools(cloud: &OpenStack, session: &Cloud) {
    let config = NeutronConfig { pool_size: 3, ..backend(session, "pool").config().clone() };
    let nodes =
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: n2}\n";
    let mut engine = engine_of(&World::full(), nodes);
    let pooled = NeutronBackend::new(session.clone(), config.clone());
    pooled.reconcile(&engine).await.unwrap();
    let filled = pooled.refill_pools(&NeutronBackend::nodes_of(&engine)).await.unwrap();
    assert!(filled.problems.is_empty(), "{:?}", filled.problems);
    assert_eq!(filled.created, 6, "{filled:?}");
    assert_eq!(filled.free.get("n1"), Some(&3));
    // Two calls for six ports: one bulk create per node; the tags follow in the background.
    assert_eq!(filled.calls, 1 + 2 + 6, "quota, a bulk create per node, a tag per port: {filled:?}");
    assert_eq!(
        pooled.refill_pools(&NeutronBackend::nodes_of(&engine)).await.unwrap().created,
        0,
        "full pools stay as they are"
    );

    // A pod starts on n1: one call.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: new, namespace: x, labels: {pod: a}}\n\
               spec: {nodeName: n1, containers: [{name: c}]}\n";
    for o in manifest::parse("pod.yaml", pod).unwrap().objects {
        engine.apply(o);
    }
    let report = pooled.reconcile(&engine).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.calls, 1, "a pod start from the pool is one Neutron call: {report:?}");
    let port = &report.ports[&ObjectKey::new("x", "new")];
    let p = neutron(cloud, "GET", &format!("ports/{}", port.port_id), None)["port"].clone();
    assert_eq!(p["name"], json!("x/new"));
    assert_eq!(p["binding:host_id"], json!("n1"));
    assert_eq!(p["description"], json!(config.marker("pod:x/new")));
    assert!(!p["security_groups"].as_array().unwrap().is_empty(), "the pod's groups: {p}");
    // The new pod is x/a's twin: what reaches x/a reaches it.
    cloud.ovn.sync_sb().unwrap();
    let mut ports = report.ports.clone();
    ports.insert(ObjectKey::new("x", "new"), port.clone());
    for from in ["y/a", "z/b"] {
        let to_twin =
            Probe { from: from.parse().unwrap(), to: ObjectKey::new("x", "new"), port: 80, protocol: Protocol::Tcp };
        let to_a =
            Probe { from: from.parse().unwrap(), to: ObjectKey::new("x", "a"), port: 80, protocol: Protocol::Tcp };
        assert_eq!(trace(cloud, &ports, &to_twin).unwrap(), trace(cloud, &ports, &to_a).unwrap(), "{from} -> x/new");
    }
    let refill = pooled.refill_pools(&NeutronBackend::nodes_of(&engine)).await.unwrap();
    assert_eq!((refill.created, refill.free.get("n1")), (1, Some(&3)), "{refill:?}");

    // A restart: the free ports are neither pods' ports to delete nor made again.
    let restarted = NeutronBackend::new(session.clone(), config.clone());
    let again = restarted.reconcile(&engine).await.unwrap();
    assert_eq!((again.created, again.updated, again.deleted), (0, 0, 0), "{again:?}");
    assert_eq!(restarted.refill_pools(&NeutronBackend::nodes_of(&engine)).await.unwrap().created, 0);

    // The quota bounds the pools: a third node's pool gets what the quota leaves, and says so.
    let project = session.project_id().unwrap();
    let used =
        neutron(cloud, "GET", &format!("quotas/{project}/details"), None)["quota"]["port"]["used"].as_i64().unwrap();
    neutron(cloud, "PUT", &format!("quotas/{project}"), Some(json!({"quota": {"port": used + 2}})));
    let nodes3 = format!("{nodes}---\napiVersion: v1\nkind: Node\nmetadata: {{name: n3}}\n");
    let engine3 = engine_of(&World::full(), &nodes3);
    let r = restarted.refill_pools(&NeutronBackend::nodes_of(&engine3)).await.unwrap();
    neutron(cloud, "PUT", &format!("quotas/{project}"), Some(json!({"quota": {"port": -1}})));
    assert_eq!(r.created, 2, "{r:?}");
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert_eq!(
        (r.problems[0].object.to_string(), r.problems[0].reason),
        ("Node n3".to_string(), Reason::QuotaExceeded)
    );
}

/// Nested nodes: a node that is a Nova VM (its providerID names the server whose port is a
/// trunk's parent) gets its pods' ports as subports of that trunk, each on a VLAN id nobody
/// else's subport has; the VLANs are Neutron's (a restart keeps them), a VLAN taken behind our
/// back is a conflict reported and resolved on the next reconcile, policies hold on the
/// subports as ovn-trace sees them, and a pod that goes leaves the trunk.
async fn nested(cloud: &OpenStack, session: &Cloud) {
    // The operator's side: a node network, the VM's port as a trunk's parent, and a subport
    // of someone else's on VLAN 1.
    let net = neutron(cloud, "POST", "networks", Some(json!({"network": {"name": "nodes"}})))["network"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    neutron(
        cloud,
        "POST",
        "subnets",
        Some(json!({"subnet": {"network_id": net, "cidr": "192.168.50.0/24", "ip_version": 4, "enable_dhcp": false}})),
    );
    let port = |name: &str| {
        neutron(cloud, "POST", "ports", Some(json!({"port": {"network_id": net, "name": name}})))["port"]["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let parent = port("vm1");
    let trunk = neutron(cloud, "POST", "trunks", Some(json!({"trunk": {"port_id": parent, "name": "vm1-trunk"}})));
    let trunk = trunk["trunk"]["id"].as_str().unwrap().to_string();
    let server = "5f0c6a1e-0000-4000-8000-00000000a001";
    neutron(
        cloud,
        "PUT",
        &format!("ports/{parent}"),
        Some(json!({"port": {"device_id": server, "device_owner": "compute:nova"}})),
    );
    let foreign = port("someone-elses");
    let add = |p: &str, vlan: u16| {
        neutron(
            cloud,
            "PUT",
            &format!("trunks/{trunk}/add_subports"),
            Some(json!({"sub_ports": [{"port_id": p, "segmentation_type": "vlan", "segmentation_id": vlan}]})),
        )
    };
    add(&foreign, 1);
    let subports = || -> BTreeMap<String, u16> {
        neutron(cloud, "GET", &format!("trunks/{trunk}"), None)["trunk"]["sub_ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["port_id"].as_str().unwrap().to_string(), s["segmentation_id"].as_u64().unwrap() as u16))
            .collect()
    };

    let cluster = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: nest}}\n---\n\
         apiVersion: v1\nkind: Node\nmetadata: {{name: vm1}}\nspec: {{providerID: 'openstack:///{server}'}}\n---\n\
         apiVersion: v1\nkind: Node\nmetadata: {{name: bm1}}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: db, namespace: nest}}\n\
         spec: {{podSelector: {{matchLabels: {{app: db}}}}, ingress: [{{from: [{{podSelector: {{matchLabels: {{app: web}}}}}}], ports: [{{port: 5432}}]}}]}}\n"
    );
    let pod = |name: &str, app: &str, node: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: nest, uid: uid-{name}, labels: {{app: {app}}}}}\n\
             spec: {{nodeName: {node}, containers: [{{name: c}}]}}\n"
        )
    };
    let manifests = |pods: &[(&str, &str, &str)]| {
        let mut m = cluster.clone();
        for (n, a, node) in pods {
            m.push_str(&pod(n, a, node));
        }
        let mut engine = PolicyEngine::new();
        for o in manifest::parse("nest.yaml", &m).unwrap().objects {
            engine.apply(o);
        }
        engine
    };
    let config = NeutronConfig { pool_size: 2, ..NeutronConfig::new("nest", vec!["10.32.0.0/16".parse().unwrap()]) };
    let b = NeutronBackend::new(session.clone(), config.clone());
    let mut pods =
        vec![("web1", "web", "vm1"), ("web2", "web", "vm1"), ("db", "db", "vm1"), ("client", "client", "bm1")];
    let engine = manifests(&pods);
    let report = b.reconcile(&engine).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let on_trunk = subports();
    assert_eq!(on_trunk.get(&foreign), Some(&1), "someone else's subport is as it was");
    let mut vlans = BTreeMap::new();
    for name in ["web1", "web2", "db"] {
        let pp = &report.ports[&ObjectKey::new("nest", name)];
        let vlan = on_trunk.get(&pp.port_id).copied().unwrap_or_else(|| panic!("{name}'s port is not on the trunk"));
        assert_eq!(pp.vlan, Some(vlan));
        assert_eq!(pp.parent_port.as_deref(), Some(parent.as_str()));
        assert!((2..=4094).contains(&vlan), "{name}: VLAN {vlan}");
        // ML2/OVN's row: a container port on the VM's port, with the VLAN as its tag.
        let row = cloud
            .ovn
            .nbctl(&[
                "--bare",
                "--columns=parent_name,tag",
                "find",
                "Logical_Switch_Port",
                &format!("name={}", pp.port_id),
            ])
            .unwrap();
        let row: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(row, [parent.as_str(), &vlan.to_string()], "{name}'s OVN row");
        vlans.insert(name, vlan);
    }
    assert_eq!(vlans.values().collect::<std::collections::BTreeSet<_>>().len(), 3, "distinct VLANs: {vlans:?}");
    let client = &report.ports[&ObjectKey::new("nest", "client")];
    assert_eq!(client.vlan, None);
    let p = neutron(cloud, "GET", &format!("ports/{}", client.port_id), None)["port"].clone();
    assert_eq!(p["binding:host_id"], json!("bm1"), "a bare-metal node's pod port is bound to it");

    // The policy holds on the subports: web reaches db on 5432, the client does not.
    cloud.ovn.sync_sb().unwrap();
    let probe = |from: &str, to: &str| Probe {
        from: ObjectKey::new("nest", from),
        to: ObjectKey::new("nest", to),
        port: 5432,
        protocol: Protocol::Tcp,
    };
    assert!(trace(cloud, &report.ports, &probe("web1", "db")).unwrap(), "web1 -> db");
    assert!(!trace(cloud, &report.ports, &probe("client", "db")).unwrap(), "client -> db");
    assert!(trace(cloud, &report.ports, &probe("db", "web2")).unwrap(), "db -> web2 (web is not isolated)");

    // The pools: vm1's free ports wait on the trunk with their VLANs; a pod start there is
    // one call.
    let filled = b.refill_pools(&NeutronBackend::nodes_of(&engine)).await.unwrap();
    assert!(filled.problems.is_empty(), "{:?}", filled.problems);
    assert_eq!((filled.free.get("vm1"), filled.free.get("bm1")), (Some(&2), Some(&2)), "{filled:?}");
    assert_eq!(filled.calls, 1 + 2 + 4 + 1, "quota, a bulk create per node, tags, one add_subports: {filled:?}");
    assert_eq!(subports().len(), 1 + 3 + 2);
    pods.push(("web3", "web", "vm1"));
    let engine = manifests(&pods);
    let report = b.reconcile(&engine).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.calls, 1, "a pod start on a nested node, from the pool: {report:?}");
    let web3 = &report.ports[&ObjectKey::new("nest", "web3")];
    assert_eq!(subports().get(&web3.port_id).copied(), web3.vlan);
    assert!(web3.vlan.is_some());
    cloud.ovn.sync_sb().unwrap();
    assert!(trace(cloud, &report.ports, &probe("web3", "db")).unwrap(), "web3 -> db");

    // A restart: VLANs are Neutron's, nothing is written.
    let restarted = NeutronBackend::new(session.clone(), config.clone());
    let again = restarted.reconcile(&engine).await.unwrap();
    assert_eq!((again.created, again.updated, again.deleted, again.problems.len()), (0, 0, 0, 0), "{again:?}");
    for (name, vlan) in &vlans {
        assert_eq!(again.ports[&ObjectKey::new("nest", *name)].vlan, Some(*vlan), "{name} kept its VLAN");
    }

    // A VLAN taken behind the backend's back: its next subport conflicts, is reported on the
    // pod, and the reconcile after (reading the trunk again) picks another; one port only.
    let unpooled = NeutronBackend::new(session.clone(), NeutronConfig { pool_size: 0, ..config.clone() });
    unpooled.reconcile(&engine).await.unwrap();
    // (The last free port of vm1's pool goes to a pod first.)
    pods.push(("filler", "web", "vm1"));
    let r = unpooled.reconcile(&manifests(&pods)).await.unwrap();
    assert_eq!((r.calls, r.problems.len()), (1, 0), "{r:?}");
    let used: std::collections::BTreeSet<u16> = subports().values().copied().collect();
    let next = (1..=4094).find(|v| !used.contains(v)).unwrap();
    let squatter = port("squatter");
    add(&squatter, next);
    pods.push(("late", "web", "vm1"));
    let engine = manifests(&pods);
    let r = unpooled.reconcile(&engine).await.unwrap();
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert_eq!(
        (r.problems[0].object.to_string(), r.problems[0].reason),
        ("Pod nest/late".to_string(), Reason::VlanConflict)
    );
    let r = unpooled.reconcile(&engine).await.unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    let late = &r.ports[&ObjectKey::new("nest", "late")];
    let vlan = subports().get(&late.port_id).copied().expect("late's port on the trunk");
    assert_ne!(vlan, next);
    assert_eq!(subports().get(&squatter), Some(&next));
    let named = neutron(cloud, "GET", "ports?name=nest/late", None)["ports"].as_array().unwrap().len();
    assert_eq!(named, 1, "the port made before the conflict is the one on the trunk");

    // A pod goes: off the trunk, and deleted.
    pods.retain(|p| p.0 != "web2");
    let engine = manifests(&pods);
    let r = unpooled.reconcile(&engine).await.unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.deleted, 1);
    let gone = &report.ports[&ObjectKey::new("nest", "web2")].port_id;
    assert!(!subports().contains_key(gone));
    assert_eq!(neutron_status(cloud, &format!("ports/{gone}")), 404, "web2's port is deleted");
    assert_eq!(subports().get(&foreign), Some(&1));
}

/// Keystone behind TLS whose certificate a private CA signed (a proxy of the test's own in
/// front of the cloud's Keystone): with the CA as `cacert` in clouds.yaml the session
/// authenticates over TLS; with another CA, or none, it is refused with an error that says why.
async fn custom_ca(cloud: &OpenStack) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    use rustls_pki_types::pem::PemObject;
    let dir = cloud.dir().join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let ca = |name: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    };
    let ours = ca("stacknet test CA");
    let other = ca("someone else's CA");
    std::fs::write(dir.join("ca.pem"), ours.pem()).unwrap();
    std::fs::write(dir.join("other-ca.pem"), other.pem()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "keystone");
    let cert = params.signed_by(&key, &ours).unwrap();
    let certs = vec![rustls_pki_types::CertificateDer::from_pem_slice(cert.pem().as_bytes()).unwrap()];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
    let config =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    let keystone = cloud.keystone_url.trim_start_matches("http://").split('/').next().unwrap().to_string();
    let server = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let (acceptor, keystone) = (acceptor.clone(), keystone.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(conn).await else { return };
                let Ok(mut plain) = tokio::net::TcpStream::connect(&keystone).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    let plain = std::fs::read_to_string(cloud.clouds_yaml().unwrap()).unwrap();
    let https = format!("https://{proxy}/v3");
    assert!(plain.contains(&cloud.keystone_url), "{plain}");
    let clouds = |cacert: Option<&str>| {
        let mut text = plain.replace(&cloud.keystone_url, &https);
        if let Some(ca) = cacert {
            text.push_str(&format!("    cacert: {}\n", dir.join(ca).display()));
        }
        let path = dir.join(format!("clouds-{}.yaml", cacert.unwrap_or("none")));
        std::fs::write(&path, text).unwrap();
        CloudSource::Named { cloud: "stacknet-test".into(), file: Some(path) }
    };
    let session = Cloud::connect(&clouds(Some("ca.pem"))).await.expect("password auth over TLS with the custom CA");
    assert!(neutron::trunks(&session).await.is_ok(), "the session works");
    for (cacert, what) in [(Some("other-ca.pem"), "another CA"), (None, "no CA")] {
        let e = Cloud::connect(&clouds(cacert)).await.err().unwrap_or_else(|| panic!("{what}: accepted"));
        let text = e.to_string();
        eprintln!("{what}: {text}");
        assert!(text.contains("invalid peer certificate"), "{what}: {text}");
        assert!(!text.contains(stacknet_sandbox::openstack::ADMIN_PASSWORD), "{text}");
    }
    server.abort();
}

/// ovn-trace's verdict on a probe between pods on different networks: the packet goes to the
/// cluster router's MAC on the source's network and is routed to the destination's.
fn routed_trace(cloud: &OpenStack, ports: &BTreeMap<ObjectKey, PodPort>, router: &str, p: &Probe) -> bool {
    let src = &ports[&p.from];
    let dst = &ports[&p.to];
    let gw_mac = router_mac(cloud, router, &src.network_id);
    let flow = format!(
        "inport == \"{}\" && eth.src == {} && eth.dst == {gw_mac} && ip4.src == {} && ip4.dst == {} && ip.ttl == 64 && tcp && tcp.src == 40000 && tcp.dst == {}",
        src.port_id, src.mac, src.ips[0], dst.ips[0], p.port
    );
    let v = cloud.ovn.trace(&src.switch(), &flow, &dst.name, 6, None).unwrap();
    if std::env::var_os("STACKNET_TRACE_DEBUG").is_some() {
        eprintln!("TRACE {flow}\n{}", v.output);
    }
    v.delivered
}

/// The MAC of `router`'s port on `network`: where a pod sends what leaves its network.
fn router_mac(cloud: &OpenStack, router: &str, network: &str) -> String {
    let gw = neutron(cloud, "GET", &format!("ports?device_id={router}&network_id={network}"), None);
    gw["ports"][0]["mac_address"].as_str().expect("the router's port on the network").to_string()
}

/// A network per namespace: each namespace's subnet is cut by Neutron from the pod CIDR's
/// subnet pool, every one is on the cluster router; policies hold across networks (traced
/// through the router); a restart writes nothing; a namespace that goes takes its network.
async fn per_namespace(cloud: &OpenStack, session: &Cloud) {
    let cluster = |with_b: bool| {
        let mut m = String::from(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: pa}\n---\n\
             apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: pa, labels: {app: web}}\nspec: {nodeName: n1, containers: [{name: c}]}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: db, namespace: pa, labels: {app: db}}\nspec: {nodeName: n1, containers: [{name: c}]}\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db, namespace: pa}\n\
             spec: {podSelector: {matchLabels: {app: db}}, ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 5432}]}]}\n",
        );
        if with_b {
            m.push_str(
                "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: pb}\n---\n\
                 apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: pb, labels: {app: client}}\nspec: {nodeName: n1, containers: [{name: c}]}\n",
            );
        }
        let mut engine = PolicyEngine::new();
        for o in manifest::parse("pns.yaml", &m).unwrap().objects {
            engine.apply(o);
        }
        engine
    };
    let config = NeutronConfig {
        network_per_namespace: true,
        ..NeutronConfig::new("pns", vec!["10.48.0.0/16".parse().unwrap()])
    };
    let b = NeutronBackend::new(session.clone(), config.clone());
    let r = b.reconcile(&cluster(true)).await.unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    let topology = r.topology.clone().unwrap();
    assert_eq!(topology.namespaces.keys().collect::<Vec<_>>(), ["pa", "pb"]);
    assert!(topology.network.is_none());
    let shared = neutron(cloud, "GET", "networks?name=stacknet-pns-pods", None);
    assert_eq!(shared["networks"], json!([]), "no shared pod network when each namespace has its own");
    let pool: stacknet_engine::Cidr = "10.48.0.0/16".parse().unwrap();
    let mut cidrs = Vec::new();
    for (ns, net) in &topology.namespaces {
        assert_eq!(net.subnets.len(), 1, "{ns}");
        let cidr: stacknet_engine::Cidr = net.subnets[0].cidr.parse().unwrap();
        assert_eq!(cidr.prefix_len(), 24, "{ns}: {cidr}");
        assert!(pool.contains(cidr.network()), "{ns}: {cidr} from the pool");
        cidrs.push(cidr);
    }
    assert_ne!(cidrs[0], cidrs[1]);
    let router = topology.router.id.clone();
    let attached: Vec<String> = neutron(cloud, "GET", &format!("ports?device_id={router}"), None)["ports"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["fixed_ips"].as_array().unwrap().iter().map(|f| f["subnet_id"].as_str().unwrap().to_string()))
        .collect();
    for net in topology.namespaces.values() {
        assert!(attached.contains(&net.subnets[0].id), "{} on the router", net.network.name);
    }
    let key = |s: &str| -> ObjectKey { s.parse().unwrap() };
    for (pod, ns) in [("pa/web", "pa"), ("pa/db", "pa"), ("pb/client", "pb")] {
        let p = &r.ports[&key(pod)];
        assert_eq!(p.network_id, topology.namespaces[ns].network.id, "{pod}");
        let cidr: stacknet_engine::Cidr = topology.namespaces[ns].subnets[0].cidr.parse().unwrap();
        assert!(cidr.contains(p.ips[0]), "{pod}: {} in {cidr}", p.ips[0]);
    }
    cloud.ovn.sync_sb().unwrap();
    let probe = |from: &str, to: &str| Probe { from: key(from), to: key(to), port: 5432, protocol: Protocol::Tcp };
    assert!(trace(cloud, &r.ports, &probe("pa/web", "pa/db")).unwrap(), "web -> db, one network");
    assert!(routed_trace(cloud, &r.ports, &router, &probe("pb/client", "pa/web")), "client -> web, routed");
    assert!(routed_trace(cloud, &r.ports, &router, &probe("pa/db", "pb/client")), "db -> client, routed");
    assert!(!routed_trace(cloud, &r.ports, &router, &probe("pb/client", "pa/db")), "client -> db: the policy");

    let again = NeutronBackend::new(session.clone(), config.clone()).reconcile(&cluster(true)).await.unwrap();
    assert_eq!((again.created, again.updated, again.deleted, again.problems.len()), (0, 0, 0, 0), "{again:?}");

    // Namespace pb goes, with its pod: its port, then its network.
    let gone = topology.namespaces["pb"].network.id.clone();
    let r = b.reconcile(&cluster(false)).await.unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.deleted, 2, "the pod's port and the namespace's network: {r:?}");
    assert_eq!(neutron_status(cloud, &format!("networks/{gone}")), 404, "pb's network is deleted");
    assert_eq!(r.topology.unwrap().namespaces.keys().collect::<Vec<_>>(), ["pa"]);

    // A pool with room for two /17s and three namespaces: the third is reported, its network
    // (made before the pool said no) is kept and finished later, never made twice.
    let three = || {
        let mut engine = PolicyEngine::new();
        let m = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n\
                 apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n---\n\
                 apiVersion: v1\nkind: Namespace\nmetadata: {name: c}\n";
        for o in manifest::parse("pnx.yaml", m).unwrap().objects {
            engine.apply(o);
        }
        engine
    };
    let small = NeutronConfig {
        network_per_namespace: true,
        namespace_prefix_len: 17,
        ..NeutronConfig::new("pnx", vec!["10.49.0.0/16".parse().unwrap()])
    };
    for round in 0..2 {
        let r = NeutronBackend::new(session.clone(), small.clone()).reconcile(&three()).await.unwrap();
        assert_eq!(r.problems.len(), 1, "round {round}: {:?}", r.problems);
        let p = &r.problems[0];
        assert_eq!(p.object.to_string(), "Namespace c", "round {round}: {p:?}");
        assert_eq!(p.reason, Reason::NamespaceSubnetExhausted, "round {round}: {p:?}");
        let nets = neutron(cloud, "GET", "networks?name=stacknet-pnx-ns-c", None);
        assert_eq!(nets["networks"].as_array().unwrap().len(), 1, "round {round}: one network for c");
        if round == 0 {
            eprintln!("namespace c, pool full: {}: {}", p.reason, p.message);
        }
    }
}

/// Neutron hung (frozen: it takes connections and never answers): a reconcile gives up after
/// the call timeout with a transient error naming the call, instead of waiting forever; once
/// Neutron answers again a reconcile finishes the work, and the port whose create was sent
/// while Neutron hung (and carried out when it woke) is adopted and tagged, never made twice.
async fn outage(cloud: &OpenStack, session: &Cloud) {
    let config = NeutronConfig::new("out", vec!["10.54.0.0/16".parse().unwrap()]);
    let b = NeutronBackend::new(session.with_timeout(Duration::from_secs(3)), config.clone());
    let pod = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: o}}\nspec: {{nodeName: n1, containers: [{{name: c}}]}}\n"
        )
    };
    let mut engine = PolicyEngine::new();
    for o in manifest::parse("out.yaml", &pod("a")).unwrap().objects {
        engine.apply(o);
    }
    let r = b.reconcile(&engine).await.unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    for o in manifest::parse("late.yaml", &pod("late")).unwrap().objects {
        engine.apply(o);
    }
    /// Thaws Neutron however the reconcile ends: the tests after this one need it.
    struct Thaw<'a>(&'a OpenStack);
    impl Drop for Thaw<'_> {
        fn drop(&mut self) {
            self.0.freeze("neutron-server", false).expect("Neutron thawed");
        }
    }
    cloud.freeze("neutron-server", true).unwrap();
    let thaw = Thaw(cloud);
    let started = Instant::now();
    let failed = b.reconcile(&engine).await;
    let took = started.elapsed();
    drop(thaw);
    let e = failed.expect_err("a reconcile against a hung Neutron fails");
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains("no answer within 3 s"), "{e}");
    assert!(took < Duration::from_secs(20), "gave up after {took:?}");
    eprintln!("Neutron hung: {e} (after {:.1}s)", took.as_secs_f64());
    let r = until_some("a reconcile once Neutron answers again", Duration::from_secs(90), async || {
        match b.reconcile(&engine).await {
            Ok(r) => Some(r),
            Err(e) if e.is_transient() => {
                eprintln!("Neutron not back yet: {e}");
                None
            }
            Err(e) => panic!("Neutron did not come back: {e}"),
        }
    })
    .await;
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert!(r.ports.contains_key(&ObjectKey::new("o", "late")), "{r:?}");
    // Made by the create Neutron woke up to (adopted, tagged: updated) or by this reconcile.
    eprintln!("Neutron back: +{} ~{} -{}", r.created, r.updated, r.deleted);
    let ours = neutron(cloud, "GET", &format!("ports?device_owner={}", config.device_owner()), None);
    let ours = ours["ports"].as_array().unwrap();
    assert_eq!(ours.iter().filter(|p| p["name"] == json!("o/late")).count(), 1, "one port for o/late: {ours:?}");
    for p in ours {
        assert!(p["tags"].as_array().unwrap().contains(&json!(config.tag())), "an untagged port of ours: {p}");
    }
}

/// A Keystone project per namespace (annotation): the namespace's network and ports are made
/// in it, and its pools too, bounded by its own port quota; a project that does not exist is
/// reported on the namespace, whose pods then get no port (rather than one in the wrong
/// project); a node that goes takes its pools' free ports with it.
async fn projects(cloud: &OpenStack, session: &Cloud) {
    // The operator makes the project: stacknet only ever reads Keystone.
    let token = cloud.admin_token().unwrap();
    let body = r#"{"project": {"name": "team-a", "domain_id": "default"}}"#;
    let a = http("POST", &format!("{}/projects", cloud.keystone_url), Some(&token), Some(body)).unwrap();
    assert!(a.status < 300, "HTTP {}: {}", a.status, a.body);
    let team = serde_json::from_str::<Value>(&a.body).unwrap()["project"]["id"].as_str().unwrap().to_string();
    let own = session.project_id().unwrap();
    let cluster = |nodes: &[&str]| {
        let mut m = String::from(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: ta, annotations: {stacknet.io/openstack-project: team-a}}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {name: tb, annotations: {stacknet.io/openstack-project: nope}}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {name: tc}\n",
        );
        for (ns, pod, node) in [("ta", "web", "n1"), ("tb", "x", "n1"), ("tc", "y", "n1"), ("tc", "z", "n2")] {
            m.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {ns}}}\nspec: {{nodeName: {node}, containers: [{{name: c}}]}}\n"
            ));
        }
        for n in nodes {
            m.push_str(&format!("---\napiVersion: v1\nkind: Node\nmetadata: {{name: {n}}}\n"));
        }
        let mut engine = PolicyEngine::new();
        for o in manifest::parse("prj.yaml", &m).unwrap().objects {
            engine.apply(o);
        }
        engine
    };
    let key = |s: &str| -> ObjectKey { s.parse().unwrap() };
    let port_project = |id: &str| neutron(cloud, "GET", &format!("ports/{id}"), None)["port"]["project_id"].clone();

    // One shared pod network: the port is the project's.
    let shared = NeutronBackend::new(session.clone(), NeutronConfig::new("prs", vec!["10.53.0.0/16".parse().unwrap()]));
    let r = shared.reconcile(&cluster(&["n1"])).await.unwrap();
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert_eq!(
        (r.problems[0].object.to_string(), r.problems[0].reason),
        ("Namespace tb".to_string(), Reason::ProjectNotFound)
    );
    eprintln!("namespace tb: {}: {}", r.problems[0].reason, r.problems[0].message);
    assert!(!r.ports.contains_key(&key("tb/x")), "no port in the wrong project");
    assert_eq!(port_project(&r.ports[&key("ta/web")].port_id), json!(team));
    assert_eq!(port_project(&r.ports[&key("tc/y")].port_id), json!(own));

    // A network per namespace, with pools: ta's network and its pool are team-a's, within
    // team-a's quota (which leaves one port).
    let config = NeutronConfig {
        network_per_namespace: true,
        pool_size: 2,
        ..NeutronConfig::new("prj", vec!["10.52.0.0/16".parse().unwrap()])
    };
    let b = NeutronBackend::new(session.clone(), config.clone());
    let engine = cluster(&["n1", "n2"]);
    let r = b.reconcile(&engine).await.unwrap();
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert_eq!(
        (r.problems[0].object.to_string(), r.problems[0].reason),
        ("Namespace tb".to_string(), Reason::ProjectNotFound)
    );
    let topology = r.topology.clone().unwrap();
    assert!(!topology.namespaces.contains_key("tb"), "no network for tb");
    assert_eq!(topology.namespaces["ta"].network.project_id, team);
    assert_eq!(topology.namespaces["tc"].network.project_id, own);
    assert_eq!(port_project(&r.ports[&key("ta/web")].port_id), json!(team));
    let used =
        neutron(cloud, "GET", &format!("quotas/{team}/details"), None)["quota"]["port"]["used"].as_i64().unwrap();
    neutron(cloud, "PUT", &format!("quotas/{team}"), Some(json!({"quota": {"port": used + 1}})));
    let filled = b.refill_pools(&NeutronBackend::nodes_of(&engine)).await.unwrap();
    neutron(cloud, "PUT", &format!("quotas/{team}"), Some(json!({"quota": {"port": -1}})));
    assert_eq!(filled.created, 5, "n1: team-a's one and tc's two; n2: tc's two: {filled:?}");
    assert_eq!(filled.problems.len(), 1, "{:?}", filled.problems);
    let p = &filled.problems[0];
    assert_eq!((p.object.to_string(), p.reason), ("Node n1".to_string(), Reason::QuotaExceeded), "{p:?}");
    assert!(p.message.contains(&team), "{}", p.message);
    let free = |host: &str| -> Vec<Value> {
        let marker = config.marker("pool");
        neutron(cloud, "GET", &format!("ports?binding:host_id={host}&device_owner={}", config.device_owner()), None)
            ["ports"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["description"] == json!(marker))
            .cloned()
            .collect()
    };
    let on_n1 = free("n1");
    assert_eq!(on_n1.len(), 3);
    let ta_net = &topology.namespaces["ta"].network.id;
    let team_free: Vec<&Value> = on_n1.iter().filter(|p| p["network_id"] == json!(ta_net)).collect();
    assert_eq!(team_free.len(), 1);
    assert_eq!(team_free[0]["project_id"], json!(team));

    // A pod of ta starts: the free port of team-a's pool, one call.
    let mut engine = cluster(&["n1", "n2"]);
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: api, namespace: ta}\nspec: {nodeName: n1, containers: [{name: c}]}\n";
    for o in manifest::parse("pod.yaml", pod).unwrap().objects {
        engine.apply(o);
    }
    let r = b.reconcile(&engine).await.unwrap();
    assert_eq!(r.ports[&key("ta/api")].port_id, team_free[0]["id"].as_str().unwrap(), "{r:?}");

    // Node n1 goes: the free ports of its pools are deleted, none other.
    assert_eq!(free("n2").len(), 2);
    let gone = b.refill_pools(&NeutronBackend::nodes_of(&cluster(&["n2"]))).await.unwrap();
    assert_eq!(gone.deleted, 2, "{gone:?}");
    assert!(free("n1").is_empty(), "free ports of a gone node stay: {:?}", free("n1"));
    assert_eq!(free("n2").len(), 2, "n2's pool stays");
}

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: x}\n\
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 8080, targetPort: 80}, {name: dns, port: 5353, protocol: UDP, targetPort: 81}]}\n";

const LB_SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: front, namespace: x}\n\
spec: {type: LoadBalancer, clusterIP: 10.96.0.20, selector: {pod: a}, ports: [{port: 443, targetPort: 80}]}\n---\n\
apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: front-1, namespace: x, labels: {kubernetes.io/service-name: front}}\n\
addressType: IPv4\nendpoints: [{addresses: [10.1.0.1], conditions: {ready: true}}]\nports: [{port: 80, protocol: TCP}]\n";

fn slice(backends: &[&str]) -> String {
    let eps: Vec<String> =
        backends.iter().map(|ip| format!("{{addresses: [{ip}], conditions: {{ready: true}}}}")).collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: x, labels: {{kubernetes.io/service-name: web}}}}\n\
         addressType: IPv4\nendpoints: [{}]\nports: [{{name: http, port: 80, protocol: TCP}}, {{name: dns, port: 81, protocol: UDP}}]\n",
        eps.join(", ")
    )
}

/// Northbound rows found by `find` (`columns`: two, the first a key), as key → the second.
fn nb_rows(cloud: &OpenStack, columns: &str, table: &str, condition: Option<&str>) -> BTreeMap<String, String> {
    let columns = format!("--columns={columns}");
    let mut args = vec!["--bare", columns.as_str(), "find", table];
    args.extend(condition);
    let out = cloud.ovn.nbctl(&args).unwrap();
    let mut rows = BTreeMap::new();
    for block in out.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut lines = block.lines();
        let key = lines.next().unwrap_or_default().trim().to_string();
        rows.insert(key, lines.collect::<Vec<_>>().join(" ").trim().to_string());
    }
    rows
}

/// The OVN Load_Balancer rows Octavia's provider wrote for load balancer `id`: protocol → vips.
fn ovn_vips(cloud: &OpenStack, id: &str) -> BTreeMap<String, String> {
    nb_rows(cloud, "protocol,vips", "Load_Balancer", Some(&format!("name={id}")))
}

/// The OVN health checks (Octavia's health monitors, as the provider writes them): vip → options.
fn health_checks(cloud: &OpenStack) -> BTreeMap<String, String> {
    nb_rows(cloud, "vip,options", "Load_Balancer_Health_Check", None)
}

/// Services through Octavia: a load balancer per Service whose OVN rows trace to the backends;
/// endpoints follow; what the provider cannot do is reported; a gone Service takes its load
/// balancer with it; nothing changed writes nothing.
async fn services(cloud: &OpenStack, session: &Cloud) {
    use stacknet_openstack::octavia::OctaviaBackend;
    // An operator's external network (not ours) for LoadBalancer Services' floating IPs.
    let public = neutron(
        cloud,
        "POST",
        "networks",
        Some(
            json!({"network": {"name": "public", "router:external": true, "provider:network_type": "flat", "provider:physical_network": "public"}}),
        ),
    );
    let public = public["network"]["id"].as_str().unwrap().to_string();
    neutron(
        cloud,
        "POST",
        "subnets",
        Some(json!({"subnet": {"network_id": public, "cidr": "172.24.4.0/24", "ip_version": 4, "enable_dhcp": false}})),
    );
    let config = NeutronConfig { external_network: Some("public".into()), ..backend(session, "svc").config().clone() };
    let octavia = OctaviaBackend::new(session.clone(), config.clone());
    let one = engine_of(&World::full(), &format!("{SERVICE}---\n{}", slice(&["10.1.0.1", "10.1.0.2"])));
    let net = NeutronBackend::new(session.clone(), config.clone()).reconcile(&one).await.unwrap();
    assert!(net.problems.is_empty(), "{:?}", net.problems);
    let topology = net.topology.clone().expect("topology");
    // A new Service: its load balancer ACTIVE, with both listeners, and in the Northbound database.
    let started = Instant::now();
    let report = octavia.reconcile(one.index(), &topology).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let id = report.load_balancers[&ObjectKey::new("x", "web")].clone();
    let vips = ovn_vips(cloud, &id);
    eprintln!(
        "Service -> Octavia load balancer ACTIVE and in the Northbound database in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // It asks for a health monitor: one per pool, as OVN health checks of its VIPs. Octavia
    // checks UDP no more often than every 3 s: the UDP port's is refused and reported, the
    // TCP port's is made.
    let monitored = |hm: &str| {
        let svc = SERVICE.replace(
            "metadata: {name: web, namespace: x}",
            &format!("metadata: {{name: web, namespace: x, annotations: {{stacknet.io/health-monitor: '{hm}'}}}}"),
        );
        engine_of(&World::full(), &format!("{svc}---\n{}---\n{LB_SERVICE}", slice(&["10.1.0.1", "10.1.0.2"])))
    };
    let report = octavia.reconcile(monitored("delay=2,timeout=1").index(), &topology).await.unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let p = &report.problems[0];
    assert_eq!(
        (p.object.to_string(), p.reason),
        ("Service x/web".to_string(), Reason::UnsupportedByLoadBalancer),
        "{p:?}"
    );
    assert!(p.message.starts_with("health monitor on 5353/UDP: "), "{}", p.message);
    eprintln!("{}: {}", p.reason, p.message);
    let checks = health_checks(cloud);
    assert!(checks.contains_key("10.96.0.10:8080"), "{checks:?}");
    assert!(!checks.contains_key("10.96.0.10:5353"), "{checks:?}");
    let engine = monitored("delay=3,timeout=1");
    let report = octavia.reconcile(engine.index(), &topology).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let checks = health_checks(cloud);
    for vip in ["10.96.0.10:8080", "10.96.0.10:5353"] {
        let c = checks.get(vip).unwrap_or_else(|| panic!("no OVN health check of {vip}: {checks:?}"));
        assert!(c.contains("interval=\"3\"") || c.contains("interval=3"), "{vip}: {c}");
        assert!(c.contains("timeout=\"1\"") || c.contains("timeout=1"), "{vip}: {c}");
    }
    assert!(vips["tcp"].contains("10.96.0.10:8080=10.1.0.1:80,10.1.0.2:80"), "{vips:?}");
    assert!(vips["udp"].contains("10.96.0.10:5353=10.1.0.1:81,10.1.0.2:81"), "{vips:?}");

    // The LoadBalancer Service: a floating IP from the external network on its VIP, which
    // the provider adds to the OVN load balancer.
    let lb_key = ObjectKey::new("x", "front");
    let fip = report.floating_ips.get(&lb_key).unwrap_or_else(|| panic!("no floating IP: {report:?}"));
    assert!(fip.to_string().starts_with("172.24.4."), "{fip}");
    let lb_id = report.load_balancers[&lb_key].clone();
    let fip_vip = format!("{fip}:443=10.1.0.1:80");
    until("the floating IP as a VIP of the OVN load balancer", Duration::from_secs(30), || {
        ovn_vips(cloud, &lb_id).get("tcp").is_some_and(|t| t.contains(&fip_vip))
    })
    .await;

    // A client's packet to the VIP, through the cluster router, lands on the chosen backend.
    cloud.ovn.sync_sb().unwrap();
    let client = &net.ports[&ObjectKey::new("z", "c")];
    let gw = router_mac(cloud, &topology.router.id, &client.network_id);
    for (backend_ip, pod) in [("10.1.0.1", "x/a"), ("10.1.0.2", "x/b")] {
        let flow = format!(
            "inport == \"{}\" && eth.src == {} && eth.dst == {} && ip4.src == {} && ip4.dst == 10.96.0.10 && ip.ttl == 64 && tcp && tcp.src == 40000 && tcp.dst == 8080",
            client.port_id, client.mac, gw, client.ips[0]
        );
        let v = cloud.ovn.trace(&client.switch(), &flow, pod, 6, Some(&format!("{backend_ip}:80"))).unwrap();
        assert!(v.delivered, "VIP -> {pod}:\n{}", v.output);
    }

    // Nothing changed: nothing written.
    let again = octavia.reconcile(engine.index(), &topology).await.unwrap();
    assert_eq!((again.created, again.updated, again.deleted), (0, 0, 0), "{again:?}");

    // An endpoint goes; an unsupported field is reported, and a bad health monitor annotation
    // (the monitors go).
    let affinity = SERVICE.replace("spec: {", "spec: {sessionAffinity: ClientIP, ").replace(
        "metadata: {name: web, namespace: x}",
        "metadata: {name: web, namespace: x, annotations: {stacknet.io/health-monitor: 'delay=1,timeout=2'}}",
    );
    let engine = engine_of(&World::full(), &format!("{affinity}---\n{}", slice(&["10.1.0.1"])));
    let report = octavia.reconcile(engine.index(), &topology).await.unwrap();
    // x/front is gone: its floating IP with it, then its load balancer.
    assert_eq!(report.deleted, 2, "{report:?}");
    let left = neutron(cloud, "GET", &format!("floatingips?tags={}", config.tag()), None);
    assert_eq!(left["floatingips"], json!([]), "the floating IP of a gone Service stays");
    let mut reasons: Vec<Reason> = report.problems.iter().map(|p| p.reason).collect();
    reasons.sort();
    assert_eq!(reasons, [Reason::InvalidAnnotation, Reason::UnsupportedByLoadBalancer], "{:?}", report.problems);
    let bad = report.problems.iter().find(|p| p.reason == Reason::InvalidAnnotation).unwrap();
    assert_eq!(bad.object.to_string(), "Service x/web");
    assert!(bad.message.contains("timeout=2 is longer than delay=1"), "{}", bad.message);
    assert_eq!(ovn_vips(cloud, &id)["tcp"], "10.96.0.10:8080=10.1.0.1:80", "x/b left the endpoints");
    let checks = health_checks(cloud);
    assert!(!checks.keys().any(|v| v.starts_with("10.96.0.10:")), "the monitors stay: {checks:?}");

    // The Service goes, and its load balancer with it.
    let engine = engine_of(&World::full(), "");
    let report = octavia.reconcile(engine.index(), &topology).await.unwrap();
    assert_eq!(report.deleted, 1);
    until("the Load_Balancer rows gone with the Service", Duration::from_secs(30), || ovn_vips(cloud, &id).is_empty())
        .await;
}

/// An application credential (made by the admin for itself) in a clouds.yaml of its own:
/// authenticates and lists; a wrong secret is refused with an error that does not echo it.
async fn application_credential(cloud: &OpenStack) -> String {
    let token = cloud.admin_token().unwrap();
    let users = http("GET", &format!("{}/users?name=admin", cloud.keystone_url), Some(&token), None).unwrap();
    let users: Value = serde_json::from_str(&users.body).unwrap();
    let user = users["users"][0]["id"].as_str().unwrap().to_string();
    let body = json!({"application_credential": {"name": "stacknet-tier", "description": "the tier's"}}).to_string();
    let made = http(
        "POST",
        &format!("{}/users/{user}/application_credentials", cloud.keystone_url),
        Some(&token),
        Some(&body),
    )
    .unwrap();
    assert_eq!(made.status, 201, "{}", made.body);
    let made: Value = serde_json::from_str(&made.body).unwrap();
    let (id, secret) = (
        made["application_credential"]["id"].as_str().unwrap().to_string(),
        made["application_credential"]["secret"].as_str().unwrap().to_string(),
    );
    let write = |secret: &str| {
        let path = cloud.dir().join(format!("appcred-{}.yaml", secret.len()));
        std::fs::write(
            &path,
            format!(
                "clouds:\n  appcred:\n    auth_type: v3applicationcredential\n    auth:\n      auth_url: {}\n      \
                 application_credential_id: {id}\n      application_credential_secret: {secret}\n    region_name: RegionOne\n",
                cloud.keystone_url
            ),
        )
        .unwrap();
        CloudSource::Named { cloud: "appcred".into(), file: Some(path) }
    };
    let session = Cloud::connect(&write(&secret)).await.expect("application credential auth");
    neutron(cloud, "POST", "networks", Some(json!({"network": {"name": "appcred-visible"}})));
    let net = stacknet_openstack::neutron::find_network(&session, "appcred-visible").await.unwrap();
    assert_eq!(net.name, "appcred-visible");
    let wrong = "not-the-secret-at-all-really";
    let e = Cloud::connect(&write(wrong)).await.expect_err("a wrong secret is refused");
    assert!(!e.to_string().contains(wrong), "the error echoes the secret: {e}");
    eprintln!("application credential: ok; a wrong one: {e}");
    secret
}

/// A Neutron port that is no pod's (a node VM's): what a trace from it needs.
struct HostPort {
    id: String,
    mac: String,
    ip: String,
    network_id: String,
}

/// An operator's port named `name` on `network` with address `ip` (not ours); `extra`: more
/// of its attributes.
fn host_port(cloud: &OpenStack, (network, subnet): (&str, &str), name: &str, ip: &str, extra: Value) -> HostPort {
    let mut port = json!({"network_id": network, "name": name, "fixed_ips": [{"subnet_id": subnet, "ip_address": ip}]});
    for (k, v) in extra.as_object().into_iter().flatten() {
        port[k] = v.clone();
    }
    let p = &neutron(cloud, "POST", "ports", Some(json!({ "port": port })))["port"];
    HostPort {
        id: p["id"].as_str().unwrap().to_string(),
        mac: p["mac_address"].as_str().unwrap().to_string(),
        ip: ip.to_string(),
        network_id: network.to_string(),
    }
}

/// An operator's network and subnet (not ours): their ids.
fn host_network(cloud: &OpenStack, network: Value, subnet: Value) -> (String, String) {
    let net = neutron(cloud, "POST", "networks", Some(json!({ "network": network })))["network"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut subnet = subnet;
    subnet["network_id"] = json!(net);
    subnet["ip_version"] = json!(4);
    subnet["enable_dhcp"] = json!(false);
    let sub = neutron(cloud, "POST", "subnets", Some(json!({ "subnet": subnet })))["subnet"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    (net, sub)
}

/// ovn-trace of a TCP packet from a node's port, through the cluster router, to a pod.
fn trace_from_node(cloud: &OpenStack, node: &HostPort, router: &str, to: &PodPort, port: u16) -> TraceVerdict {
    let gw_mac = router_mac(cloud, router, &node.network_id);
    let flow = format!(
        "inport == \"{}\" && eth.src == {} && eth.dst == {gw_mac} && ip4.src == {} && ip4.dst == {} && ip.ttl == 64 && tcp && tcp.src == 40000 && tcp.dst == {port}",
        node.id, node.mac, node.ip, to.ips[0]
    );
    let v = cloud.ovn.trace(&format!("neutron-{}", node.network_id), &flow, &to.name, 6, None).unwrap();
    if std::env::var_os("STACKNET_TRACE_DEBUG").is_some() {
        eprintln!("TRACE {flow}\n{}", v.output);
    }
    v
}

/// A port's name as ovn-trace prints it: a UUID in it cut to its first 6 hex digits.
fn trace_name(name: &str) -> String {
    let is_uuid = |s: &str| {
        s.len() == 36
            && s.char_indices()
                .all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == '-' } else { c.is_ascii_hexdigit() })
    };
    match (0..name.len().saturating_sub(35))
        .find(|&i| name.is_char_boundary(i) && name.get(i..i + 36).is_some_and(is_uuid))
    {
        Some(i) => format!("{}{}{}", &name[..i], &name[i..i + 6], &name[i + 36..]),
        None => name.to_string(),
    }
}

/// A gateway chassis registered in the Southbound database (no ovn-controller behind it):
/// ML2/OVN schedules routers' gateway ports only on one, and ovn-northd writes NAT flows only
/// for a router whose gateway port has one. Removed when dropped, however the phase ends.
struct GatewayChassis<'a>(&'a OpenStack, &'static str);

impl<'a> GatewayChassis<'a> {
    fn register(cloud: &'a OpenStack, name: &'static str, physnet: &str) -> GatewayChassis<'a> {
        cloud.ovn.sbctl(&["chassis-add", name, "geneve", "127.0.0.254"]).expect("chassis-add");
        let mappings = format!("\"{physnet}:br-ex\"");
        for column in ["external_ids", "other_config"] {
            cloud
                .ovn
                .sbctl(&[
                    "set",
                    "Chassis",
                    name,
                    &format!("{column}:ovn-cms-options=enable-chassis-as-gw"),
                    &format!("{column}:ovn-bridge-mappings={mappings}"),
                ])
                .expect("the chassis as a gateway");
        }
        GatewayChassis(cloud, name)
    }
}

impl Drop for GatewayChassis<'_> {
    fn drop(&mut self) {
        let _ = self.0.ovn.sbctl(&["--if-exists", "chassis-del", self.1]);
    }
}

/// Traffic between a pod and its own node is never isolated: under a deny-all NetworkPolicy,
/// a node VM's port (on a node network the cluster router routes) reaches the pods on that
/// node once its Node object names its address, and no other node's pods; pod to pod stays
/// dropped. Each Node is a security group of ours with a rule per address and direction,
/// which goes with the Node. And pods reach beyond the external network through the cluster
/// router's gateway, their source translated to the router's external address (SNAT).
async fn node_traffic_and_egress(cloud: &OpenStack, session: &Cloud) {
    let _gateway = GatewayChassis::register(cloud, "stacknet-gw", "outside");
    // The operator's side: an external network (flat, on a physnet of its own) whose upstream
    // router (outside OpenStack, at the subnet's gateway address) is reached through its
    // localnet port; a node network with the two node VMs' ports.
    let (outside, _) = host_network(
        cloud,
        json!({"name": "outside", "router:external": true, "provider:network_type": "flat", "provider:physical_network": "outside"}),
        json!({"cidr": "172.25.0.0/24", "gateway_ip": "172.25.0.1"}),
    );
    let (hosts, hosts_subnet) = host_network(cloud, json!({"name": "hosts"}), json!({"cidr": "192.168.70.0/24"}));
    let h1 = host_port(cloud, (&hosts, &hosts_subnet), "node-h1", "192.168.70.11", json!({}));
    let h2 = host_port(cloud, (&hosts, &hosts_subnet), "node-h2", "192.168.70.12", json!({}));

    let cluster = |addresses: bool, nodes: &[&str]| {
        let mut m = String::from(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: probe}\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: probe}\n\
             spec: {podSelector: {}, policyTypes: [Ingress]}\n",
        );
        for (pod, node) in [("web", "h1"), ("db", "h1"), ("far", "h2")] {
            m.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: probe}}\nspec: {{nodeName: {node}, containers: [{{name: c}}]}}\n"
            ));
        }
        for (node, ip) in [("h1", &h1.ip), ("h2", &h2.ip)].into_iter().filter(|(n, _)| nodes.contains(n)) {
            let status = if addresses {
                format!("\nstatus: {{addresses: [{{type: InternalIP, address: {ip}}}]}}")
            } else {
                String::new()
            };
            m.push_str(&format!("---\napiVersion: v1\nkind: Node\nmetadata: {{name: {node}}}{status}\n"));
        }
        let mut engine = PolicyEngine::new();
        for o in manifest::parse("probe.yaml", &m).unwrap().objects {
            engine.apply(o);
        }
        engine
    };
    let config = NeutronConfig {
        external_network: Some("outside".into()),
        ..NeutronConfig::new("nod", vec!["10.56.0.0/16".parse().unwrap()])
    };
    let b = NeutronBackend::new(session.clone(), config.clone());
    // The Nodes do not say their addresses yet.
    let r = b.reconcile(&cluster(false, &["h1", "h2"])).await.unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    let topology = r.topology.clone().unwrap();
    let router = topology.router.id.clone();
    // The operator routes the node network through the cluster router.
    neutron(cloud, "PUT", &format!("routers/{router}/add_router_interface"), Some(json!({"subnet_id": hosts_subnet})));
    let key = |pod: &str| ObjectKey::new("probe", pod);
    let ports = r.ports.clone();
    cloud.ovn.sync_sb().unwrap();
    let v = trace_from_node(cloud, &h1, &router, &ports[&key("web")], 8080);
    assert!(!v.delivered, "no address on Node h1: the deny-all holds for it too:\n{}", v.output);

    // Their addresses come: each node's group gains its rules, and no port changes.
    let engine = cluster(true, &["h1", "h2"]);
    let r = b.reconcile(&engine).await.unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!((r.created, r.updated, r.deleted), (4, 0, 0), "a rule per address and direction, nothing else: {r:?}");
    let group = |node: &str| {
        let found = neutron(
            cloud,
            "GET",
            &format!("security-groups?description={}", config.marker(&format!("node:{node}"))),
            None,
        );
        found["security_groups"][0].clone()
    };
    let g1 = group("h1");
    assert!(g1["tags"].as_array().unwrap().contains(&json!(config.tag())), "{g1}");
    // Every protocol (none named), to and from the node's one address.
    let mut rules: Vec<(String, String, bool)> = g1["security_group_rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["direction"].as_str().unwrap().to_string(),
                r["remote_ip_prefix"].as_str().unwrap().to_string(),
                r["protocol"].is_null(),
            )
        })
        .collect();
    rules.sort();
    let prefix = "192.168.70.11/32".to_string();
    assert_eq!(rules, [("egress".into(), prefix.clone(), true), ("ingress".into(), prefix, true)]);
    for pod in ["web", "db"] {
        let p = neutron(cloud, "GET", &format!("ports/{}", ports[&key(pod)].port_id), None);
        assert!(p["port"]["security_groups"].as_array().unwrap().contains(&g1["id"]), "{pod} is in h1's group: {p}");
    }
    cloud.ovn.sync_sb().unwrap();
    for (node, pod, want) in
        [(&h1, "web", true), (&h1, "db", true), (&h1, "far", false), (&h2, "far", true), (&h2, "web", false)]
    {
        let v = trace_from_node(cloud, node, &router, &ports[&key(pod)], 8080);
        assert_eq!(v.delivered, want, "{} -> probe/{pod}:8080 under deny-all:\n{}", node.ip, v.output);
    }
    let probe = |from: &str, to: &str| Probe { from: key(from), to: key(to), port: 8080, protocol: Protocol::Tcp };
    assert!(!trace(cloud, &ports, &probe("db", "web")).unwrap(), "db -> web: pods stay isolated from each other");
    assert!(!trace(cloud, &ports, &probe("web", "db")).unwrap(), "web -> db");
    eprintln!("under deny-all: the node's probe delivered, pod to pod dropped (ovn-trace over Neutron's rows)");

    // Egress: the router's gateway is on the outside network, with SNAT.
    let gw = neutron(cloud, "GET", &format!("routers/{router}"), None)["router"]["external_gateway_info"].clone();
    assert_eq!(gw["network_id"], json!(outside), "{gw}");
    assert_eq!(gw["enable_snat"], json!(true), "{gw}");
    let external_ip = gw["external_fixed_ips"][0]["ip_address"].as_str().unwrap().to_string();
    let gw_port =
        neutron(cloud, "GET", &format!("ports?device_id={router}&network_id={outside}"), None)["ports"][0]["id"]
            .as_str()
            .unwrap()
            .to_string();
    let lrp = format!("lrp-{gw_port}");
    until("the gateway port scheduled on the gateway chassis", Duration::from_secs(30), || {
        let c = cloud.ovn.nbctl(&[
            "--bare",
            "--columns=gateway_chassis",
            "find",
            "Logical_Router_Port",
            &format!("name={lrp}"),
        ]);
        c.is_ok_and(|c| !c.trim().is_empty())
    })
    .await;
    let snat = nb_rows(cloud, "logical_ip,external_ip", "NAT", Some("type=snat"));
    assert_eq!(snat.get("10.56.0.0/16").map(String::as_str), Some(external_ip.as_str()), "{snat:?}");
    // The upstream router's MAC, as the gateway chassis's ovn-controller learns it (ARP).
    let upstream_mac = "02:00:ac:19:00:01";
    let datapath = cloud
        .ovn
        .sbctl(&[
            "--bare",
            "--columns=_uuid",
            "find",
            "Datapath_Binding",
            &format!("external_ids:name=neutron-{router}"),
        ])
        .unwrap();
    cloud
        .ovn
        .sbctl(&[
            "create",
            "MAC_Binding",
            &format!("logical_port={lrp}"),
            "ip=172.25.0.1",
            &format!("mac=\"{upstream_mac}\""),
            &format!("datapath={}", datapath.trim()),
        ])
        .unwrap();
    let localnet = cloud
        .ovn
        .nbctl(&["lsp-list", &format!("neutron-{outside}")])
        .unwrap()
        .split_whitespace()
        .map(|w| w.trim_matches(|c| c == '(' || c == ')'))
        .find(|n| n.starts_with("provnet-"))
        .map(trace_name)
        .expect("the outside network's localnet port");
    cloud.ovn.sync_sb().unwrap();
    let web = &ports[&key("web")];
    let flow = format!(
        "inport == \"{}\" && eth.src == {} && eth.dst == {} && ip4.src == {} && ip4.dst == 203.0.113.10 && ip.ttl == 64 && tcp && tcp.src == 40000 && tcp.dst == 443",
        web.port_id,
        web.mac,
        router_mac(cloud, &router, &web.network_id),
        web.ips[0]
    );
    let v = cloud.ovn.trace(&web.switch(), &flow, &localnet, 6, None).unwrap();
    // ovn-trace shows the gateway's SNAT as `ct_snat_in_czone(ip4.src=<address>)` (spelled
    // `ct_snatin_czone` by 23.03).
    let snatted = v.output.lines().any(|l| l.contains("ct_snat") && l.contains(&format!("(ip4.src={external_ip})")));
    assert!(snatted, "the source translated to the router's gateway address {external_ip}:\n{}", v.output);
    assert!(v.output.contains(&format!("eth.dst = {upstream_mac};")), "to the upstream router:\n{}", v.output);
    assert!(v.delivered, "out on the outside network's localnet port ({localnet}):\n{}", v.output);
    eprintln!("pod -> 203.0.113.10: SNAT to {external_ip} on the router's gateway, out on the external network");

    // Node h2 goes (its pod not yet): its group goes once far's port has left it; h1's stays.
    let gone = group("h2")["id"].as_str().unwrap().to_string();
    let r = b.reconcile(&cluster(true, &["h1"])).await.unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!((r.updated, r.deleted), (1, 1), "far's port, then h2's group: {r:?}");
    assert_eq!(neutron_status(cloud, &format!("security-groups/{gone}")), 404, "h2's group is deleted");
    assert_eq!(group("h1")["id"], g1["id"]);
    let again = NeutronBackend::new(session.clone(), config.clone()).reconcile(&cluster(true, &["h1"])).await.unwrap();
    assert_eq!((again.created, again.updated, again.deleted, again.problems.len()), (0, 0, 0, 0), "{again:?}");
}

/// The operator's flat provider network on physical network `physnet1` (ML2's
/// `flat_networks = *`; a flat network per physnet, so the tests that need it share it: made
/// by the first), with subnet 192.0.2.0/24: its id and its subnet's.
fn provider_network(cloud: &OpenStack) -> (String, String) {
    let found = neutron(cloud, "GET", "networks?name=physnet1", None);
    if let Some(n) = found["networks"].as_array().and_then(|a| a.first()) {
        let id = n["id"].as_str().unwrap().to_string();
        let subnet = neutron(cloud, "GET", &format!("subnets?network_id={id}"), None)["subnets"][0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        return (id, subnet);
    }
    host_network(
        cloud,
        json!({"name": "physnet1", "provider:network_type": "flat", "provider:physical_network": "physnet1"}),
        json!({"cidr": "192.0.2.0/24", "gateway_ip": "192.0.2.1"}),
    )
}

/// A cluster of namespace `telco`, bare-metal node n1, the NADs and pods of `extra`.
fn telco(extra: &str) -> PolicyEngine {
    let m = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: telco}}\n---\napiVersion: v1\nkind: Node\nmetadata: {{name: n1}}\n{extra}"
    );
    let mut engine = PolicyEngine::new();
    for o in manifest::parse("telco.yaml", &m).unwrap().objects {
        engine.apply(o);
    }
    engine
}

/// A NAD of stacknet-cni in namespace telco with `config`'s keys.
fn nad(name: &str, config: &str) -> String {
    format!(
        "---\napiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata: {{name: {name}, namespace: telco}}\n\
         spec:\n  config: '{{\"cniVersion\": \"1.1.0\", \"name\": \"{name}\", \"type\": \"stacknet-cni\", {config}}}'\n"
    )
}

/// A pod of namespace telco on n1 selecting `networks`, with more `annotations` (YAML lines).
fn telco_pod(name: &str, networks: &str, annotations: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: telco\n  uid: uid-{name}\n  annotations:\n    \
         k8s.v1.cni.cncf.io/networks: '{networks}'\n{annotations}spec: {{nodeName: n1, containers: [{{name: c}}]}}\n"
    )
}

/// What the controller does: the multinet plan (Neutron networks only), then Neutron; the
/// plan's problems with the backend's.
async fn reconcile_multinet(
    b: &NeutronBackend,
    alloc: &mut Allocator,
    engine: &PolicyEngine,
) -> (stacknet_openstack::Report, Plan) {
    let plan = alloc.sync(engine.index(), Foreign::Refuse, stacknet_openstack::accepts);
    let mut report = b.reconcile_with(engine, &plan).await.unwrap();
    let mut problems = plan.problems.clone();
    problems.append(&mut report.problems);
    report.problems = problems;
    (report, plan)
}

/// A Logical_Switch_Port column as `ovn-nbctl --bare` prints it.
fn lsp_column(cloud: &OpenStack, port: &str, column: &str) -> String {
    let columns = format!("--columns={column}");
    cloud
        .ovn
        .nbctl(&["--bare", &columns, "find", "Logical_Switch_Port", &format!("name={port}")])
        .unwrap()
        .trim()
        .to_string()
}

/// Secondary networks in OpenStack mode: NADs naming the operator's flat provider network (by
/// name, by id) give their pods an extra Neutron port on it, ours (marker, tag, owner) and in
/// the pod's project, with the address asked for, port security and groups as the NAD says;
/// ovn-trace over the rows ML2/OVN wrote delivers its packets to another port of that network
/// (and the group's rules hold); a NAD naming a network Neutron does not have leaves its pod
/// none of its ports; a restart writes nothing; a pod that goes takes its port.
async fn secondary_networks(cloud: &OpenStack, session: &Cloud) {
    let (physnet, subnet) = provider_network(cloud);
    // The operator's side: a VM port on the provider network with no port security, and a
    // group admitting TCP 80 (no egress rule: what it holds sends nothing).
    let peer = host_port(cloud, (&physnet, &subnet), "peer", "192.0.2.200", json!({"port_security_enabled": false}));
    let web = neutron(
        cloud,
        "POST",
        "security-groups",
        Some(json!({"security_group": {"name": "mn-allow-web", "description": "operator's"}})),
    );
    let web = web["security_group"]["id"].as_str().unwrap().to_string();
    for r in web_rules(cloud, &web) {
        neutron(cloud, "DELETE", &format!("security-group-rules/{r}"), None);
    }
    neutron(
        cloud,
        "POST",
        "security-group-rules",
        Some(json!({"security_group_rule": {"security_group_id": web, "direction": "ingress", "ethertype": "IPv4",
                    "protocol": "tcp", "port_range_min": 80, "port_range_max": 80}})),
    );
    let nads = [
        nad("provider", r#""neutronNetwork": "physnet1""#),
        nad("open", &format!(r#""neutronNetwork": "{physnet}", "portSecurity": false"#)),
        nad("guarded", r#""neutronNetwork": "physnet1", "securityGroups": ["mn-allow-web"]"#),
        nad("missing", r#""neutronNetwork": "no-such-network""#),
    ]
    .concat();
    let pods = |with_a: bool| {
        let mut m = nads.clone();
        if with_a {
            m.push_str(&telco_pod("a", r#"[{"name": "provider", "ips": ["192.0.2.10"]}]"#, ""));
        }
        m.push_str(&telco_pod("b", "open", ""));
        m.push_str(&telco_pod("c", "guarded@data0", ""));
        m.push_str(&telco_pod("d", "provider, missing", ""));
        telco(&m)
    };
    let config = NeutronConfig::new("mn", vec!["10.57.0.0/16".parse().unwrap()]);
    let b = NeutronBackend::new(session.clone(), config.clone());
    let mut alloc = Allocator::default();
    let engine = pods(true);
    let (r, plan) = reconcile_multinet(&b, &mut alloc, &engine).await;
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    let p = &r.problems[0];
    assert_eq!((p.object.to_string(), p.reason), ("Pod telco/d".to_string(), Reason::AttachmentFailed), "{p:?}");
    assert!(
        p.message.starts_with(
            "interface net2: NetworkAttachmentDefinition telco/missing: spec.config.neutronNetwork: Neutron has no network with id or name \"no-such-network\""
        ),
        "{}",
        p.message
    );
    eprintln!("pod telco/d: {}: {}", p.reason, p.message);
    let key = |pod: &str| ObjectKey::new("telco", pod);
    assert_eq!(r.attachments.keys().map(|k| k.name.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
    let ours = |pod: &str| -> Vec<Value> {
        let all = neutron(cloud, "GET", &format!("ports?device_owner={}", config.device_owner()), None);
        let prefix = format!("telco/{pod}/");
        all["ports"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["name"].as_str().unwrap().starts_with(&prefix))
            .cloned()
            .collect()
    };
    assert!(ours("d").is_empty(), "no port at all for d, not even on the provider network it could have");

    // a's port: on the provider network, ours, in its primary port's project, with the address.
    let a = &r.attachments[&key("a")][0];
    assert_eq!((a.interface.as_str(), a.network.to_string()), ("net1", "telco/provider".to_string()));
    let port = neutron(cloud, "GET", &format!("ports/{}", a.port.port_id), None)["port"].clone();
    assert_eq!(port["network_id"], json!(physnet));
    assert_eq!(port["name"], json!("telco/a/net1"));
    assert_eq!(port["description"], json!("stacknet:mn:attach:telco/a/net1@telco/provider"));
    assert_eq!(port["device_owner"], json!(config.device_owner()));
    assert_eq!(port["device_id"], json!("uid-a"));
    assert!(port["tags"].as_array().unwrap().contains(&json!(config.tag())), "{port}");
    assert_eq!(port["binding:host_id"], json!("n1"), "bound to its bare-metal node like the primary port");
    let primary = neutron(cloud, "GET", &format!("ports/{}", r.ports[&key("a")].port_id), None)["port"].clone();
    assert_eq!(port["project_id"], primary["project_id"]);
    assert_eq!(port["fixed_ips"][0]["ip_address"], json!("192.0.2.10"));
    assert_eq!(a.addresses, [("192.0.2.10".parse().unwrap(), 24)]);
    // What the node needs besides (the controller writes it into the pod's annotation): the
    // network's physical network and MTU, as Neutron says.
    assert_eq!((a.physical_network.as_deref(), a.mtu), (Some("physnet1"), Some(1500)));
    // b's: no port security, in Neutron and in the Northbound database.
    let b_port = &r.attachments[&key("b")][0];
    let bp = neutron(cloud, "GET", &format!("ports/{}", b_port.port.port_id), None)["port"].clone();
    assert_eq!((bp["port_security_enabled"].clone(), bp["security_groups"].clone()), (json!(false), json!([])));
    assert_eq!(lsp_column(cloud, &b_port.port.port_id, "port_security"), "", "no port security in the NB");
    eprintln!("b's port in the NB: addresses {}", lsp_column(cloud, &b_port.port.port_id, "addresses"));
    // c's: exactly the operator's group the NAD names, on interface data0.
    let c_port = &r.attachments[&key("c")][0];
    assert_eq!(c_port.interface, "data0");
    let cp = neutron(cloud, "GET", &format!("ports/{}", c_port.port.port_id), None)["port"].clone();
    assert_eq!(cp["security_groups"], json!([web]));

    // ovn-trace over ML2/OVN's rows: a's and b's packets reach the peer; c's group admits
    // TCP 80 from it and nothing else, and lets c send nothing.
    cloud.ovn.sync_sb().unwrap();
    let peer_port = PodPort {
        port_id: peer.id.clone(),
        name: "peer".into(),
        network_id: physnet.clone(),
        mac: peer.mac.clone(),
        ips: vec![peer.ip.parse().unwrap()],
        vlan: None,
        parent_port: None,
    };
    let mut ports: BTreeMap<ObjectKey, PodPort> =
        r.attachments.iter().map(|(k, list)| (k.clone(), list[0].port.clone())).collect();
    ports.insert(ObjectKey::new("operator", "peer"), peer_port);
    let probe = |from: &str, to: &str, port: u16| Probe {
        from: from.parse().unwrap(),
        to: to.parse().unwrap(),
        port,
        protocol: Protocol::Tcp,
    };
    for (from, to, port, want) in [
        ("telco/a", "operator/peer", 80, true),
        ("telco/b", "operator/peer", 80, true),
        ("operator/peer", "telco/c", 80, true),
        ("operator/peer", "telco/c", 81, false),
        ("telco/c", "operator/peer", 80, false),
    ] {
        let got = trace(cloud, &ports, &probe(from, to, port)).unwrap();
        assert_eq!(got, want, "{from} -> {to}:{port} on the provider network, ovn-trace over Neutron's rows");
    }
    eprintln!("secondary ports on the provider network: delivered as their groups say (ovn-trace)");

    // A restart: the allocator is given back what Neutron holds; nothing is written.
    let restarted = NeutronBackend::new(session.clone(), config.clone());
    let held = restarted.held_attachments().await.unwrap();
    let a_held = held.iter().find(|h| h.pod == key("a")).expect("a's port held");
    assert_eq!((a_held.interface.as_str(), a_held.ips.clone()), ("net1", vec!["192.0.2.10".parse().unwrap()]));
    let mut again_alloc = Allocator::default();
    for h in held {
        again_alloc.restore(h.pod, h.interface, h.network, h.ips);
    }
    let (again, again_plan) = reconcile_multinet(&restarted, &mut again_alloc, &engine).await;
    assert_eq!((again.created, again.updated, again.deleted, again.problems.len()), (0, 0, 0, 1), "{again:?}");
    assert_eq!(again_plan.pods, plan.pods);
    assert_eq!(ours("a").len(), 1, "adopted, not made twice");

    // a goes: its port with it; the others stay.
    let (r, _) = reconcile_multinet(&b, &mut alloc, &pods(false)).await;
    assert_eq!(r.deleted, 2, "a's primary and secondary ports: {r:?}");
    assert_eq!(neutron_status(cloud, &format!("ports/{}", a.port.port_id)), 404, "a's secondary port is deleted");
    assert_eq!(neutron_status(cloud, &format!("ports/{}", b_port.port.port_id)), 200);
    assert_eq!(neutron_status(cloud, &format!("ports/{}", peer.id)), 200, "the operator's port stays");

    // Its NADs gone, the pods' secondary ports go; the provider network is not ours: it stays.
    let (r, _) = reconcile_multinet(&b, &mut alloc, &telco("")).await;
    assert!(r.attachments.is_empty());
    assert!(ours("b").is_empty() && ours("c").is_empty());
    assert_eq!(neutron_status(cloud, &format!("networks/{physnet}")), 200);
    neutron(cloud, "DELETE", &format!("ports/{}", peer.id), None);
    neutron(cloud, "DELETE", &format!("security-groups/{web}"), None);
}

/// Pools for secondary networks: once a pod on n1 attaches to the provider network, the
/// node's pool refill keeps free ports of that network too; the next pod's secondary port is
/// one of them, made its own in one update (its name, marker, device, port security off as its
/// NAD says, the address it asks for), and a NAD naming no groups gives a pool port the
/// project's default group, as a port made for it would have.
async fn secondary_pools(cloud: &OpenStack, session: &Cloud) {
    let (physnet, _) = provider_network(cloud);
    let nads = [
        nad("open", r#""neutronNetwork": "physnet1", "portSecurity": false"#),
        nad("plain", r#""neutronNetwork": "physnet1""#),
    ]
    .concat();
    let config = NeutronConfig { pool_size: 2, ..NeutronConfig::new("mnpool", vec!["10.58.0.0/16".parse().unwrap()]) };
    let b = NeutronBackend::new(session.clone(), config.clone());
    let mut alloc = Allocator::default();
    let first = telco(&format!("{nads}{}", telco_pod("a", "open", "")));
    let (r, plan) = reconcile_multinet(&b, &mut alloc, &first).await;
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    let refill = b.refill_pools(&NeutronBackend::nodes_with(&first, &plan)).await.unwrap();
    assert!(refill.problems.is_empty(), "{:?}", refill.problems);
    let free_on = |network: &str| -> Vec<String> {
        let all =
            neutron(cloud, "GET", &format!("ports?network_id={network}&device_owner={}", config.device_owner()), None);
        all["ports"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["description"] == json!(config.marker("pool")))
            .map(|p| p["id"].as_str().unwrap().to_string())
            .collect()
    };
    let free = free_on(&physnet);
    assert_eq!(free.len(), 2, "n1's pool of the provider network: {refill:?}");
    assert_eq!(refill.created, 4, "2 on the pod network, 2 on the provider network: {refill:?}");

    // b starts, selecting the provider network without port security, and asking an address.
    let second = telco(&format!(
        "{nads}{}{}",
        telco_pod("a", "open", ""),
        telco_pod("b", r#"[{"name": "open", "ips": ["192.0.2.60"]}]"#, "")
    ));
    let (r, _) = reconcile_multinet(&b, &mut alloc, &second).await;
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.created, 0, "the primary and the secondary port from the pools: {r:?}");
    let port = &r.attachments[&ObjectKey::new("telco", "b")][0].port;
    assert!(free.contains(&port.port_id), "{} is one of the pool's {free:?}", port.port_id);
    let p = neutron(cloud, "GET", &format!("ports/{}", port.port_id), None)["port"].clone();
    assert_eq!(p["name"], json!("telco/b/net1"));
    assert_eq!(p["device_id"], json!("uid-b"));
    assert_eq!(p["binding:host_id"], json!("n1"));
    assert_eq!(p["port_security_enabled"], json!(false));
    assert_eq!(p["security_groups"], json!([]));
    assert_eq!(p["fixed_ips"][0]["ip_address"], json!("192.0.2.60"));
    assert!(p["description"].as_str().unwrap().starts_with("stacknet:mnpool:attach:telco/b/net1@"), "{p}");
    assert_eq!(free_on(&physnet).len(), 1);

    // c, with a NAD naming no groups: the project's default group, as Neutron gives a new port.
    let third = telco(&format!(
        "{nads}{}{}{}",
        telco_pod("a", "open", ""),
        telco_pod("b", r#"[{"name": "open", "ips": ["192.0.2.60"]}]"#, ""),
        telco_pod("c", "plain", "")
    ));
    let (r, _) = reconcile_multinet(&b, &mut alloc, &third).await;
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    let port = &r.attachments[&ObjectKey::new("telco", "c")][0].port;
    assert!(free.contains(&port.port_id), "{} is one of the pool's {free:?}", port.port_id);
    let p = neutron(cloud, "GET", &format!("ports/{}", port.port_id), None)["port"].clone();
    let groups = p["security_groups"].as_array().unwrap().clone();
    assert_eq!(groups.len(), 1, "{p}");
    let group = neutron(cloud, "GET", &format!("security-groups/{}", groups[0].as_str().unwrap()), None);
    assert_eq!(group["security_group"]["name"], json!("default"));
    assert_eq!(p["port_security_enabled"], json!(true));
    assert!(free_on(&physnet).is_empty());

    // Everything goes with the pods and the node's pools.
    let (r, _) = reconcile_multinet(&b, &mut alloc, &telco("")).await;
    assert!(r.attachments.is_empty());
    b.refill_pools(&[]).await.unwrap();
}

/// The ids of a security group's rules.
fn web_rules(cloud: &OpenStack, group: &str) -> Vec<String> {
    neutron(cloud, "GET", &format!("security-groups/{group}"), None)["security_group"]["security_group_rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// SR-IOV: a `vnicType: direct` NAD gives its pod a `direct` port on the provider network,
/// unbound until the node agent writes the virtual function the kubelet gave the pod; then
/// bound to the pod's node with the device in `binding:profile`. What ML2/OVN writes into the
/// Northbound database for it is checked as observed (there is no VF on this machine and no
/// SR-IOV agent: nothing is plumbed, and Neutron's binding fails).
async fn sriov(cloud: &OpenStack, session: &Cloud) {
    let (physnet, _) = provider_network(cloud);
    // A gateway chassis (no ovn-controller behind it): ML2/OVN schedules external ports on
    // the gateway chassis of their network's HA chassis group.
    let _gateway = GatewayChassis::register(cloud, "stacknet-sriov-gw", "physnet1");
    let sriov_nad = nad("sriov", r#""neutronNetwork": "physnet1", "vnicType": "direct""#);
    let device = r#"{"net1": {"pciSlot": "0000:03:00.2", "vendorInfo": "8086:154c", "physicalNetwork": "physnet1"}}"#;
    let cluster = |annotation: Option<&str>| {
        let extra = annotation.map(|a| format!("    stacknet.io/sriov-devices: '{a}'\n")).unwrap_or_default();
        telco(&format!("{sriov_nad}{}", telco_pod("vf", "sriov", &extra)))
    };
    let config = NeutronConfig::new("sr", vec!["10.58.0.0/16".parse().unwrap()]);
    let b = NeutronBackend::new(session.clone(), config.clone());
    let mut alloc = Allocator::default();
    let (r, _) = reconcile_multinet(&b, &mut alloc, &cluster(None)).await;
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    let vf = r.attachments[&ObjectKey::new("telco", "vf")][0].clone();
    assert_eq!(vf.vnic_type, "direct");
    let get = || neutron(cloud, "GET", &format!("ports/{}", vf.port.port_id), None)["port"].clone();
    let port = get();
    assert_eq!(port["network_id"], json!(physnet));
    assert_eq!(port["binding:vnic_type"], json!("direct"));
    assert_eq!(port["binding:host_id"], json!(""), "unbound: no virtual function known yet");
    assert_eq!(port["binding:profile"], json!({}));

    // What ML2/OVN wrote for the direct port, as observed (Neutron 21 / OVN 23.03, Debian 12):
    // a Logical_Switch_Port of type `external` (the VF bypasses OVS on the node: OVN serves
    // its ARP/DHCP/metadata from a chassis of an HA chassis group instead), with options
    // `mcast_flood_reports=true` only (no `requested-chassis`: it is bound to no node's
    // chassis), its MAC and address as addresses and port_security (port security on, the
    // network's default), and ha_chassis_group the network's group `neutron-<network id>`,
    // which holds the gateway chassis. Binding it (host and VF in binding:profile) changes
    // none of that; Neutron's binding itself fails (`binding_failed`: ML2/OVN does not bind
    // a legacy SR-IOV port, and there is no SR-IOV mechanism driver or VF here: nothing is
    // plumbed).
    let lsp = &vf.port.port_id;
    let observe = |when: &str| {
        let row: Vec<String> = ["type", "options", "ha_chassis_group", "addresses", "port_security"]
            .iter()
            .map(|c| lsp_column(cloud, lsp, c))
            .collect();
        eprintln!(
            "{when}: the direct port's LSP: type {:?}, options {:?}, ha_chassis_group {:?}, addresses {:?}, port_security {:?}",
            row[0], row[1], row[2], row[3], row[4]
        );
        row
    };
    let row = observe("unbound");
    let (kind, options, group) = (row[0].clone(), row[1].clone(), row[2].clone());
    assert_eq!(kind, "external");
    assert_eq!(options, "mcast_flood_reports=true", "no requested-chassis: bound to no node's chassis");
    let address = format!("{} {}", vf.port.mac, vf.port.ips[0]);
    assert_eq!((row[3].as_str(), row[4].as_str()), (address.as_str(), address.as_str()));
    assert!(!group.is_empty(), "external ports are scheduled through an HA chassis group");
    let group_row =
        cloud.ovn.nbctl(&["--bare", "--columns=name,ha_chassis", "list", "HA_Chassis_Group", &group]).unwrap();
    assert!(group_row.contains(&format!("neutron-{physnet}")), "{group_row}");
    let chassis = cloud.ovn.nbctl(&["--bare", "--columns=chassis_name", "list", "HA_Chassis"]).unwrap();
    assert!(chassis.contains("stacknet-sriov-gw"), "the gateway chassis is in the group: {chassis}");

    // The node agent writes the pod's VF: the port is bound to n1 with it.
    let (r, _) = reconcile_multinet(&b, &mut alloc, &cluster(Some(device))).await;
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!((r.created, r.updated), (0, 1), "{r:?}");
    let port = get();
    assert_eq!(
        port["binding:profile"],
        json!({"pci_slot": "0000:03:00.2", "pci_vendor_info": "8086:154c", "physical_network": "physnet1"})
    );
    assert_eq!(port["binding:host_id"], json!("n1"));
    eprintln!("bound: binding:vif_type {} (no SR-IOV mechanism driver, no chassis n1)", port["binding:vif_type"]);
    assert_eq!(observe("bound"), row, "binding it changes nothing ML2/OVN wrote");
    // Nothing changed: nothing written.
    let (r, _) = reconcile_multinet(&b, &mut alloc, &cluster(Some(device))).await;
    assert_eq!((r.created, r.updated, r.deleted), (0, 0, 0), "{r:?}");

    // An unreadable annotation: said on the pod, naming the field; the port stays as bound.
    let bad = r#"{"net1": {"pciSlot": "03:00.2", "vendorInfo": "8086:154c", "physicalNetwork": "physnet1"}}"#;
    let (r, _) = reconcile_multinet(&b, &mut alloc, &cluster(Some(bad))).await;
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert_eq!(r.problems[0].reason, Reason::AttachmentFailed);
    assert!(
        r.problems[0].message.starts_with("metadata.annotations[stacknet.io/sriov-devices].net1.pciSlot: \"03:00.2\""),
        "{}",
        r.problems[0].message
    );
    assert_eq!(get()["binding:profile"]["pci_slot"], json!("0000:03:00.2"));

    // The pod goes: its port with it.
    let (r, _) = reconcile_multinet(&b, &mut alloc, &telco(&sriov_nad)).await;
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(neutron_status(cloud, &format!("ports/{}", vf.port.port_id)), 404);
}
