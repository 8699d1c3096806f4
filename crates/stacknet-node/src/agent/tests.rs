//! The agent's ADD / DEL / CHECK / GC logic without root: pod interfaces are made by a
//! [`RecordingPlumbing`], the Open_vSwitch and Northbound databases are ovsdb-servers on unix
//! sockets in a temporary directory (no ovs-vswitchd, no ovn-controller: the tests play
//! ovn-controller by marking ports installed), and the pod's namespace is the test's own.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use stacknet_engine::{ClusterIndex, PolicyEngine, manifest};
use stacknet_ovn::{OvnBackend, Topology, build};
use stacknet_ovsdb::transact::OpResult;
use stacknet_ovsdb::{Atom, Client, Condition, Datum, Mutation, Replica, Row, Transaction};
use stacknet_sandbox::{DbServer, Ovn};

use super::*;
use crate::plumb::recording::{Call, RecordingPlumbing, Step};

const CLUSTER: &str = "agenttest";
/// A namespace file any process may open: the agent checks it is one and hands it on.
const NETNS: &str = "/proc/self/ns/net";
/// Another path to one, standing for a second pod's namespace.
const NETNS_B: &str = "/proc/thread-self/ns/net";
const VSWITCH_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
const PODS: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: x, uid: uid-a}, status: {podIP: 10.1.0.1}}
- {apiVersion: v1, kind: Pod, metadata: {name: b, namespace: x, uid: uid-b}, status: {podIP: 10.1.0.2}}
- {apiVersion: v1, kind: Pod, metadata: {name: n, namespace: z, uid: uid-n}, spec: {nodeName: vm-1}, status: {podIP: 10.1.0.7}}
"#;
/// A pod as the runtime names it: namespace, name, UID, network namespace.
type PodRef<'a> = (&'a str, &'a str, &'a str, &'a str);
const POD_A: PodRef = ("x", "a", "uid-a", NETNS);
const POD_B: PodRef = ("x", "b", "uid-b", NETNS_B);
/// Waits on conditions that hold within milliseconds when all is well.
const DEADLINE: Duration = Duration::from_secs(10);

/// A node: the agent over the two databases, and the test's own view of Open_vSwitch.
struct Node {
    agent: Agent,
    plumbing: Arc<RecordingPlumbing>,
    /// The test's connection to the Open_vSwitch database (as ovn-controller's would be).
    ovs: Client,
    ovs_db: DbServer,
    _nb: Ovn,
    /// With TLS: the Northbound database the agent talks to over `ssl:`.
    _nb_tls: Option<DbServer>,
    _dir: tempfile::TempDir,
}

impl Node {
    /// A node with br-int and pods a, b (and nested n) programmed in the Northbound database.
    async fn start(config: impl FnOnce(AgentConfig) -> AgentConfig) -> Node {
        Node::start_with(PODS, config).await
    }

    /// A node with br-int and the pods of `pods` programmed.
    async fn start_with(pods: &str, config: impl FnOnce(AgentConfig) -> AgentConfig) -> Node {
        let n = Node::without_bridge_with(pods, config, RecordingPlumbing::default()).await;
        n.create_bridge("br-int").await;
        n
    }

    async fn without_bridge(config: impl FnOnce(AgentConfig) -> AgentConfig, plumbing: RecordingPlumbing) -> Node {
        Node::without_bridge_with(PODS, config, plumbing).await
    }

    async fn without_bridge_with(
        pods: &str,
        config: impl FnOnce(AgentConfig) -> AgentConfig,
        plumbing: RecordingPlumbing,
    ) -> Node {
        let nb = Ovn::nb_only().unwrap();
        let engine =
            PolicyEngine::from_index(ClusterIndex::from_objects(manifest::parse("pods.yaml", pods).unwrap().objects));
        let topology = Topology::from_pods(CLUSTER, engine.index()).with_nested("vm-1", "vm-1-port");
        let backend = OvnBackend::connect(vec![nb.nb.remote().parse().unwrap()]);
        backend.reconcile(&build(&engine, &topology)).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ovs_db = DbServer::start(dir.path(), "conf", VSWITCH_SCHEMA).unwrap();
        let config = config(AgentConfig {
            cluster: CLUSTER.into(),
            lookup_timeout: Duration::from_secs(5),
            install_timeout: Duration::from_secs(10),
            ..AgentConfig::default()
        });
        let plumbing = Arc::new(plumbing);
        let agent = Agent::with_plumbing(
            config,
            plumbing.clone(),
            vec![ovs_db.remote().parse().unwrap()],
            vec![nb.nb.remote().parse().unwrap()],
        );
        let ovs = ovs::client(vec![ovs_db.remote().parse().unwrap()]);
        ovs.connected(DEADLINE).await.unwrap();
        Node { agent, plumbing, ovs, ovs_db, _nb: nb, _nb_tls: None, _dir: dir }
    }

    /// A node whose agent reaches both databases over `ssl:` only, with a client certificate
    /// from a CA of the test's (the servers demand one); the test's own view stays on unix.
    async fn over_tls() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let pki = stacknet_testsupport::pki::Pki::new("node test CA");
        let server = pki.issue(d, "server", "ovsdb-server");
        let client = pki.issue(d, "client", "stacknet-agent");
        let ssl = |name: &str, schema: &str| {
            let port = stacknet_sandbox::free_tcp_port().unwrap();
            let tls = stacknet_sandbox::ServerTls {
                private_key: &server.private_key,
                certificate: &server.certificate,
                ca_cert: &server.ca_cert,
            };
            let db = DbServer::start_ssl(d, name, schema, port, tls).unwrap();
            (db, format!("ssl:127.0.0.1:{port}").parse::<Remote>().unwrap())
        };
        let (nb_db, nb_ssl) = ssl("nb", "/usr/share/ovn/ovn-nb.ovsschema");
        let (ovs_db, ovs_ssl) = ssl("conf", VSWITCH_SCHEMA);
        let engine =
            PolicyEngine::from_index(ClusterIndex::from_objects(manifest::parse("pods.yaml", PODS).unwrap().objects));
        let topology = Topology::from_pods(CLUSTER, engine.index());
        OvnBackend::connect(vec![nb_db.remote().parse().unwrap()]).reconcile(&build(&engine, &topology)).await.unwrap();
        let tls = stacknet_ovsdb::TlsConfig {
            ca_cert: client.ca_cert.clone(),
            certificate: client.certificate.clone(),
            private_key: client.private_key.clone(),
        };
        let config = AgentConfig { cluster: CLUSTER.into(), tls: Some(tls), ..AgentConfig::default() };
        let plumbing = Arc::new(RecordingPlumbing::default());
        let agent = Agent::with_plumbing(config, plumbing.clone(), vec![ovs_ssl], vec![nb_ssl]);
        let ovs = ovs::client(vec![ovs_db.remote().parse().unwrap()]);
        ovs.connected(DEADLINE).await.unwrap();
        let nb = Ovn::nb_only().unwrap();
        let n = Node { agent, plumbing, ovs, ovs_db, _nb: nb, _nb_tls: Some(nb_db), _dir: dir };
        n.create_bridge("br-int").await;
        n
    }

    async fn create_bridge(&self, name: &str) {
        let mut t = Transaction::new(ovs::DATABASE);
        t.insert(ovs::BRIDGE, Row::from([("name".to_string(), Datum::Atom(name.into()))]), Some("br"));
        t.insert(
            "Open_vSwitch",
            Row::from([("bridges".to_string(), Datum::Set([Atom::NamedUuid("br".into())].into()))]),
            None,
        );
        self.ovs.transact(&t).await.unwrap();
    }

    /// The interfaces in the Open_vSwitch database now (asked of the server): name →
    /// external_ids.
    async fn interfaces(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut t = Transaction::new(ovs::DATABASE);
        t.select(ovs::INTERFACE, vec![], Some(vec!["name".into(), "external_ids".into()]));
        let reply = self.ovs.transact(&t).await.unwrap();
        let Some(OpResult::Rows(rows)) = reply.results.first() else { panic!("no rows in {reply:?}") };
        rows.iter()
            .map(|r| {
                let ids = Datum::from_json_untyped(&r["external_ids"]).unwrap();
                let ids = ids.string_pairs().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                (r["name"].as_str().unwrap().to_string(), ids)
            })
            .collect()
    }

    /// Binds someone else's port on br-int (a VM's tap): no container of ours on it.
    async fn bind_foreign(&self, port: &str) {
        let name = || ("name".to_string(), Datum::Atom(port.into()));
        let mut t = Transaction::new(ovs::DATABASE);
        let ids = ("external_ids".to_string(), Datum::string_map([("iface-id", "vm-port")]));
        t.insert(ovs::INTERFACE, Row::from([name(), ids]), Some("iface"));
        let interfaces = ("interfaces".to_string(), Datum::Set([Atom::NamedUuid("iface".into())].into()));
        t.insert(ovs::PORT, Row::from([name(), interfaces]), Some("port"));
        let port = Datum::Set([Atom::NamedUuid("port".into())].into());
        t.mutate(ovs::BRIDGE, vec![Condition::eq("name", "br-int")], vec![Mutation::insert("ports", port)]);
        self.ovs.transact(&t).await.unwrap();
    }

    async fn wait_bound(&self, port: &str) {
        let bound = |r: &Replica| r.table(ovs::INTERFACE).by_name(port).next().is_some();
        self.ovs.wait_until(DEADLINE, bound).await.unwrap_or_else(|e| panic!("{port} never bound: {e}"));
    }

    /// What ovn-controller does once the port's flows are in place.
    async fn mark_installed(&self, port: &str) {
        mark_installed(&self.ovs, port).await;
    }

    /// Plays ovn-controller until the test ends: every port of ours bound is marked installed.
    fn run_ovn_controller(&self) {
        let ovs = self.ovs.clone();
        tokio::spawn(async move {
            let pending =
                |r: &Replica| ovs::attached(r).into_iter().filter(|a| !a.installed).map(|a| a.port).collect::<Vec<_>>();
            while ovs.wait_until(Duration::from_secs(3600), |r| !pending(r).is_empty()).await.is_ok() {
                let ports = ovs.replica().as_ref().map(pending).unwrap_or_default();
                for p in ports {
                    mark_installed(&ovs, &p).await;
                }
            }
        });
    }

    async fn handle(&self, req: Request) -> Response {
        self.agent.handle(req).await
    }

    /// A first ADD of `pod` in `container`, its port marked installed once bound; it must
    /// succeed.
    async fn attach(&self, container: &str, pod: PodRef<'_>) -> AddResult {
        let host = host_ifname(container, "eth0");
        let add = self.handle(request(Command::Add, container, pod));
        tokio::pin!(add);
        tokio::select! {
            r = &mut add => panic!("ADD answered before its port was installed: {r:?}"),
            () = self.wait_bound(&host) => {}
        }
        self.mark_installed(&host).await;
        added(add.await)
    }
}

async fn mark_installed(ovs: &Client, port: &str) {
    let mut t = Transaction::new(ovs::DATABASE);
    t.mutate(
        ovs::INTERFACE,
        vec![Condition::eq("name", port)],
        vec![Mutation::insert("external_ids", Datum::string_map([("ovn-installed", "true")]))],
    );
    // A port removed meanwhile matches nothing: fine.
    let _ = ovs.transact(&t).await;
}

fn request(command: Command, container: &str, (namespace, name, uid, netns): PodRef) -> Request {
    Request {
        command: Some(command),
        container_id: Some(container.into()),
        netns: Some(netns.into()),
        ifname: Some("eth0".into()),
        pod_namespace: Some(namespace.into()),
        pod_name: Some(name.into()),
        pod_uid: Some(uid.into()),
        ..Request::default()
    }
}

fn added(r: Response) -> AddResult {
    match r {
        Response::Added(a) => a,
        other => panic!("expected an attachment, got {other:?}"),
    }
}

fn failed(r: Response) -> CniError {
    match r {
        Response::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Pod x/a's interface as its logical port says: MAC and address from the port, gateway and
/// prefix from its switch's router port.
fn pod_a_interface(host: &str, mtu: u32) -> PodInterface {
    PodInterface {
        host: host.into(),
        ifname: "eth0".into(),
        mac: "0a:58:0a:01:00:01".into(),
        addresses: vec![(ip("10.1.0.1"), 24)],
        gateways: vec![ip("10.1.0.254")],
        routes: Vec::new(),
        mtu,
        vlan: None,
    }
}

fn created(host: &str, mtu: u32) -> Call {
    Call::Create { netns: NETNS.into(), iface: pod_a_interface(host, mtu) }
}

fn netlink_error() -> PlumbError {
    PlumbError::Netlink { what: "adding 10.1.0.1/24 to eth0".into(), message: "File exists (os error 17)".into() }
}

#[tokio::test]
async fn add_binds_while_it_makes_the_interface_and_answers_once_ovn_controller_installed_it() {
    let n = Node::start(|c| c).await;
    let host = host_ifname("ctr-a", "eth0");
    let create = n.plumbing.hold_next(Step::Create);
    let answered = AtomicBool::new(false);
    let add = async {
        let r = n.handle(request(Command::Add, "ctr-a", POD_A)).await;
        answered.store(true, Ordering::SeqCst);
        r
    };
    let ovn_controller = async {
        create.reached.await.unwrap();
        // The binding does not wait for the pair: OVS takes the device up when it appears.
        n.wait_bound(&host).await;
        assert!(!n.plumbing.links().contains_key(&host), "the pair is still being made");
        create.release.send(()).unwrap();
        n.mark_installed(&host).await;
    };
    let (response, ()) = tokio::join!(add, ovn_controller);
    added(response);
    assert!(answered.load(Ordering::SeqCst));
    assert_eq!(n.plumbing.calls(), [created(&host, 1400), Call::Configure { host: host.clone() }]);
    assert!(n.plumbing.links()[&host].observed.up);
}

#[tokio::test]
async fn add_answers_only_once_ovn_controller_installed_the_port() {
    let n = Node::start(|c| c).await;
    let host = host_ifname("ctr-a", "eth0");
    let answered = AtomicBool::new(false);
    let add = async {
        let r = n.handle(request(Command::Add, "ctr-a", POD_A)).await;
        answered.store(true, Ordering::SeqCst);
        r
    };
    let ovn_controller = async {
        n.wait_bound(&host).await;
        // Plumbed and bound, not installed: no answer yet.
        for _ in 0..50 {
            if n.plumbing.calls().len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(n.plumbing.calls().len(), 2, "created and configured");
        assert!(!answered.load(Ordering::SeqCst), "answered before ovn-controller installed the port");
        n.mark_installed(&host).await;
    };
    let (response, ()) = tokio::join!(add, ovn_controller);
    added(response);
}

/// The agent over `ssl:` to both databases (mutual TLS): an ADD reads the pod's port from the
/// Northbound database and binds it in Open_vSwitch as over unix sockets.
#[tokio::test]
async fn over_tls_an_add_reads_the_northbound_and_binds_in_open_vswitch() {
    let n = Node::over_tls().await;
    n.run_ovn_controller();
    let result = added(n.handle(request(Command::Add, "ctr-a", POD_A)).await);
    assert_eq!(result.ips[0].address, "10.1.0.1/24", "{result:?}");
    let host = host_ifname("ctr-a", "eth0");
    assert_eq!(n.interfaces().await[&host]["iface-id"], "agenttest_x_a");
}

#[tokio::test]
async fn add_answers_with_the_pods_address_gateway_and_route_and_binds_its_logical_port() {
    let n = Node::start(|c| c).await;
    n.run_ovn_controller();
    let host = host_ifname("ctr-a", "eth0");
    let mut req = request(Command::Add, "ctr-a", POD_A);
    req.mtu = Some(8900);
    let mut result = added(n.handle(req).await);
    result.timings = Timings::default();
    assert_eq!(
        result,
        AddResult {
            interfaces: vec![
                Iface { name: host.clone(), mac: String::new(), sandbox: None },
                Iface { name: "eth0".into(), mac: "0a:58:0a:01:00:01".into(), sandbox: Some(NETNS.into()) },
            ],
            ips: vec![IpConfig { address: "10.1.0.1/24".into(), gateway: Some("10.1.0.254".into()), interface: 1 }],
            routes: vec![RouteConfig { dst: "0.0.0.0/0".into(), gw: "10.1.0.254".into() }],
            timings: Timings::default(),
        }
    );
    assert_eq!(n.plumbing.calls()[0], created(&host, 8900), "the runtime's MTU wins");
    let ids = &n.interfaces().await[&host];
    assert_eq!(ids["iface-id"], "agenttest_x_a");
    assert_eq!(ids["iface-id-ver"], "uid-a");
    assert_eq!((ids[ovs::KEY_CONTAINER].as_str(), ids[ovs::KEY_IFNAME].as_str()), ("ctr-a", "eth0"));
    assert_eq!(ids[ovs::KEY_NETNS], NETNS);
}

#[tokio::test]
async fn a_failed_create_leaves_no_binding_and_removes_no_interface_it_did_not_make() {
    let n = Node::start(|c| c).await;
    let host = host_ifname("ctr-a", "eth0");
    for (error, code) in
        [(PlumbError::IfnameTaken { name: "eth0".into() }, codes::IFNAME_TAKEN), (netlink_error(), codes::NETLINK)]
    {
        n.plumbing.fail_next(Step::Create, error.clone());
        let e = failed(n.handle(request(Command::Add, "ctr-a", POD_A)).await);
        assert_eq!(e.code, code, "{e}");
        assert!(e.details.contains(&error.to_string()), "{e}");
    }
    assert_eq!(n.plumbing.calls(), [created(&host, 1400), created(&host, 1400)]);
    assert!(n.plumbing.links().is_empty());
    assert!(n.interfaces().await.is_empty());
}

#[tokio::test]
async fn a_failed_configure_removes_the_interface_and_its_ovs_port() {
    let n = Node::start(|c| c).await;
    n.run_ovn_controller();
    let host = host_ifname("ctr-a", "eth0");
    n.plumbing.fail_next(Step::Configure, netlink_error());
    let e = failed(n.handle(request(Command::Add, "ctr-a", POD_A)).await);
    assert_eq!(e.code, codes::NETLINK, "{e}");
    assert!(e.details.contains("adding 10.1.0.1/24 to eth0"), "{e}");
    assert_eq!(
        n.plumbing.calls(),
        [created(&host, 1400), Call::Configure { host: host.clone() }, Call::Remove { host: host.clone() }]
    );
    assert!(n.plumbing.links().is_empty());
    assert!(n.interfaces().await.is_empty(), "the OVS port is gone too");
}

#[tokio::test]
async fn a_port_ovn_controller_never_installs_is_removed_and_the_add_retried_later() {
    let n = Node::start(|c| AgentConfig { install_timeout: Duration::from_millis(300), ..c }).await;
    let host = host_ifname("ctr-a", "eth0");
    let e = failed(n.handle(request(Command::Add, "ctr-a", POD_A)).await);
    assert_eq!(e.code, codes::TRY_AGAIN_LATER, "{e}");
    assert!(e.details.contains(&format!("did not install port {host}")), "{e}");
    assert_eq!(n.plumbing.calls().last(), Some(&Call::Remove { host }));
    assert!(n.plumbing.links().is_empty());
    assert!(n.interfaces().await.is_empty());
}

#[tokio::test]
async fn a_missing_bridge_fails_the_add_and_removes_the_interface() {
    let n = Node::start(|c| AgentConfig { bridge: "br-missing".into(), ..c }).await;
    let host = host_ifname("ctr-a", "eth0");
    let e = failed(n.handle(request(Command::Add, "ctr-a", POD_A)).await);
    assert_eq!(e.code, codes::OVS, "{e}");
    assert!(e.details.contains("bridge br-missing does not exist"), "{e}");
    assert_eq!(n.plumbing.calls().last(), Some(&Call::Remove { host }));
    assert!(n.plumbing.links().is_empty());
    assert!(n.interfaces().await.is_empty());
}

#[tokio::test]
async fn a_pod_without_a_logical_port_yet_is_retried_later_and_nothing_is_made() {
    let n = Node::start(|c| AgentConfig { lookup_timeout: Duration::from_millis(300), ..c }).await;
    let e = failed(n.handle(request(Command::Add, "ctr-g", ("x", "ghost", "uid-g", NETNS))).await);
    assert_eq!(e.code, codes::TRY_AGAIN_LATER, "{e}");
    assert!(e.details.contains("pod x/ghost: the controller has not programmed its port"), "{e}");
    assert!(n.plumbing.calls().is_empty());
    assert!(n.interfaces().await.is_empty());
}

#[tokio::test]
async fn a_recreated_pod_whose_uid_its_port_does_not_expect_is_retried_later() {
    let n = Node::start(|c| c).await;
    let e = failed(n.handle(request(Command::Add, "ctr-a", ("x", "a", "uid-of-a-new-a", NETNS))).await);
    assert_eq!(e.code, codes::TRY_AGAIN_LATER, "{e}");
    assert!(e.details.contains("expects UID uid-a, CNI_ARGS says uid-of-a-new-a"), "{e}");
    assert!(n.plumbing.calls().is_empty());
}

#[tokio::test]
async fn a_nested_pod_is_refused_by_plumbing_that_makes_veth_pairs() {
    let n = Node::start(|c| c).await;
    let e = failed(n.handle(request(Command::Add, "ctr-n", ("z", "n", "uid-n", NETNS))).await);
    assert_eq!(e.code, codes::INVALID_CONFIG, "{e}");
    assert!(e.details.contains("nests in VM port vm-1-port"), "{e}");
    assert!(n.plumbing.calls().is_empty());
    assert!(n.interfaces().await.is_empty());
}

#[tokio::test]
async fn a_nested_pod_is_plumbed_by_plumbing_that_makes_vlan_interfaces() {
    let n = Node::without_bridge(|c| c, RecordingPlumbing::nested()).await;
    n.create_bridge("br-int").await;
    n.attach("ctr-n", ("z", "n", "uid-n", NETNS)).await;
    let Call::Create { iface, .. } = &n.plumbing.calls()[0] else { panic!("{:?}", n.plumbing.calls()) };
    // No ovn-northd here to assign the VLAN tag.
    assert_eq!((iface.mac.as_str(), iface.vlan), ("0a:58:0a:01:00:07", None));
}

#[tokio::test]
async fn requests_missing_what_add_needs_make_nothing() {
    let n = Node::start(|c| c).await;
    type Spoil = fn(&mut Request);
    let cases: [(&str, Spoil); 5] = [
        ("CNI_CONTAINERID is required", |r| r.container_id = None),
        ("CNI_NETNS is required", |r| r.netns = Some(String::new())),
        ("is not a valid interface name", |r| r.ifname = Some("a-name-far-too-long".into())),
        ("K8S_POD_NAME (in CNI_ARGS) is required", |r| r.pod_name = None),
        ("not a network namespace", |r| r.netns = Some("/tmp".into())),
    ];
    for (details, spoil) in cases {
        let mut req = request(Command::Add, "ctr-a", POD_A);
        spoil(&mut req);
        let e = failed(n.handle(req).await);
        assert_eq!(e.code, codes::INVALID_ENV, "{e}");
        assert!(e.details.contains(details), "{e}");
    }
    assert!(n.plumbing.calls().is_empty());
}

#[tokio::test]
async fn a_repeated_add_of_a_complete_attachment_answers_again_without_plumbing() {
    let n = Node::start(|c| c).await;
    let first = n.attach("ctr-a", POD_A).await;
    let calls = n.plumbing.calls().len();
    let again = added(n.handle(request(Command::Add, "ctr-a", POD_A)).await);
    assert_eq!((&again.interfaces, &again.ips, &again.routes), (&first.interfaces, &first.ips, &first.routes));
    assert_eq!(n.plumbing.calls()[calls..], [Call::Observe { netns: NETNS.into(), ifname: "eth0".into() }]);
}

#[tokio::test]
async fn a_repeated_add_after_the_interface_vanished_starts_over() {
    let n = Node::start(|c| c).await;
    let host = host_ifname("ctr-a", "eth0");
    n.attach("ctr-a", POD_A).await;
    n.plumbing.vanish(&host);
    n.run_ovn_controller();
    let calls = n.plumbing.calls().len();
    added(n.handle(request(Command::Add, "ctr-a", POD_A)).await);
    assert_eq!(
        n.plumbing.calls()[calls..],
        [
            Call::Observe { netns: NETNS.into(), ifname: "eth0".into() },
            Call::Remove { host: host.clone() },
            created(&host, 1400),
            Call::Configure { host: host.clone() },
        ]
    );
    assert!(n.interfaces().await[&host].get("ovn-installed").is_some_and(|v| v == "true"));
}

#[tokio::test]
async fn del_removes_the_ovs_port_and_the_interface_and_again_is_success() {
    let n = Node::start(|c| c).await;
    let host = host_ifname("ctr-a", "eth0");
    n.attach("ctr-a", POD_A).await;
    n.attach("ctr-b", POD_B).await;
    for _ in 0..2 {
        let mut req = request(Command::Del, "ctr-a", POD_A);
        // DEL may come without the pod's details (they are best effort in the spec).
        (req.netns, req.pod_namespace, req.pod_name, req.pod_uid) = (None, None, None, None);
        assert_eq!(n.handle(req).await, Response::Done);
        assert_eq!(n.plumbing.calls().last(), Some(&Call::Remove { host: host.clone() }));
        assert!(!n.plumbing.links().contains_key(&host));
        let left: Vec<String> = n.interfaces().await.into_keys().collect();
        assert_eq!(left, [host_ifname("ctr-b", "eth0")], "only b's port is left");
    }
}

#[tokio::test]
async fn del_removes_the_interface_even_with_the_ovs_database_down_and_finishes_once_it_is_back() {
    let mut n = Node::start(|c| c).await;
    let host = host_ifname("ctr-a", "eth0");
    n.attach("ctr-a", POD_A).await;
    n.ovs_db.kill();
    let mut status = n.agent.ovs().status();
    tokio::time::timeout(DEADLINE, status.wait_for(|s| s.connected.is_none())).await.unwrap().unwrap();
    let e = failed(n.handle(request(Command::Del, "ctr-a", POD_A)).await);
    assert_eq!(e.code, codes::TRY_AGAIN_LATER, "{e}");
    assert_eq!(n.plumbing.calls().last(), Some(&Call::Remove { host: host.clone() }));
    assert!(n.plumbing.links().is_empty(), "the interface does not outlive an unreachable database");

    n.ovs_db.restart().unwrap();
    n.agent.ovs().connected(DEADLINE).await.unwrap();
    n.ovs.connected(DEADLINE).await.unwrap();
    assert!(n.interfaces().await.contains_key(&host), "the port stayed while the database was down");
    assert_eq!(n.handle(request(Command::Del, "ctr-a", POD_A)).await, Response::Done);
    assert!(n.interfaces().await.is_empty());
}

#[tokio::test]
async fn a_failed_remove_fails_the_del_but_the_ovs_port_goes() {
    let n = Node::start(|c| c).await;
    let host = host_ifname("ctr-a", "eth0");
    n.attach("ctr-a", POD_A).await;
    n.plumbing.fail_next(Step::Remove, netlink_error());
    let e = failed(n.handle(request(Command::Del, "ctr-a", POD_A)).await);
    assert_eq!(e.code, codes::NETLINK, "{e}");
    assert!(n.interfaces().await.is_empty());
    // The runtime retries; the interface goes then.
    assert_eq!(n.handle(request(Command::Del, "ctr-a", POD_A)).await, Response::Done);
    assert!(!n.plumbing.links().contains_key(&host));
}

/// CHECK of pod a's attachment after `spoil` changed it behind the agent's back.
async fn check_after(spoil: impl AsyncFnOnce(&Node, &str)) -> Response {
    let n = Node::start(|c| c).await;
    let host = host_ifname("ctr-a", "eth0");
    n.attach("ctr-a", POD_A).await;
    spoil(&n, &host).await;
    n.handle(request(Command::Check, "ctr-a", POD_A)).await
}

fn check_failed(r: Response, details: &str) {
    let e = failed(r);
    assert_eq!(e.code, codes::CHECK_FAILED, "{e}");
    assert!(e.details.contains(details), "{e}");
}

#[tokio::test]
async fn check_passes_for_a_complete_attachment() {
    assert_eq!(check_after(async |_, _| {}).await, Response::Done);
}

#[tokio::test]
async fn check_names_a_changed_mac() {
    let r = check_after(async |n, host| n.plumbing.tamper(host, |o| o.mac = "02:00:00:00:00:01".into())).await;
    check_failed(r, "eth0 has MAC 02:00:00:00:00:01, the port says 0a:58:0a:01:00:01");
}

#[tokio::test]
async fn check_names_an_interface_that_is_down() {
    check_failed(check_after(async |n, host| n.plumbing.tamper(host, |o| o.up = false)).await, "eth0 is down");
}

#[tokio::test]
async fn check_names_a_lost_address_or_default_route() {
    let r = check_after(async |n, host| n.plumbing.tamper(host, |o| o.addresses.clear())).await;
    check_failed(r, "eth0 lacks address 10.1.0.1/24");
    let r = check_after(async |n, host| n.plumbing.tamper(host, |o| o.gateways.clear())).await;
    check_failed(r, "no default route via 10.1.0.254 on eth0");
}

#[tokio::test]
async fn check_names_a_missing_interface() {
    check_failed(check_after(async |n, host| n.plumbing.vanish(host)).await, "no interface eth0 in /proc/self/ns/net");
}

#[tokio::test]
async fn check_names_an_ovs_port_gone_or_no_longer_installed() {
    let r = check_after(async |n, host| {
        let mut t = Transaction::new(ovs::DATABASE);
        t.mutate(
            ovs::INTERFACE,
            vec![Condition::eq("name", host)],
            vec![Mutation::delete("external_ids", Datum::set(["ovn-installed"]))],
        );
        n.ovs.transact(&t).await.unwrap();
        let agent_sees = |r: &Replica| ovs::attached(r).iter().any(|a| a.port == host && !a.installed);
        n.agent.ovs().wait_until(DEADLINE, agent_sees).await.unwrap();
    })
    .await;
    check_failed(r, "ovn-controller has not installed");
    let r = check_after(async |n, host| {
        ovs::unbind(&n.ovs, "br-int", host).await.unwrap();
        n.agent.ovs().wait_until(DEADLINE, |r| ovs::attached(r).is_empty()).await.unwrap();
    })
    .await;
    check_failed(r, "no OVS port");
}

#[tokio::test]
async fn gc_removes_only_the_attachments_the_runtime_no_longer_lists() {
    let n = Node::start(|c| c).await;
    n.attach("ctr-a", POD_A).await;
    n.attach("ctr-b", POD_B).await;
    // A port someone else bound on br-int (a VM's tap): not ours to collect.
    n.bind_foreign("tap-vm").await;

    let req = Request {
        command: Some(Command::Gc),
        valid_attachments: Some(vec![("ctr-a".into(), "eth0".into())]),
        ..Request::default()
    };
    assert_eq!(n.handle(req).await, Response::Done);
    let (a, b) = (host_ifname("ctr-a", "eth0"), host_ifname("ctr-b", "eth0"));
    assert_eq!(n.plumbing.links().into_keys().collect::<Vec<_>>(), std::slice::from_ref(&a));
    assert_eq!(n.interfaces().await.into_keys().collect::<Vec<_>>(), [a, "tap-vm".to_string()]);
    assert_eq!(n.plumbing.calls().last(), Some(&Call::Remove { host: b }));
}

#[tokio::test]
async fn status_is_not_available_until_the_bridge_exists() {
    let n = Node::without_bridge(|c| c, RecordingPlumbing::default()).await;
    n.agent.ovs.connected(DEADLINE).await.unwrap();
    n.agent.nb.connected(DEADLINE).await.unwrap();
    let status = || Request { command: Some(Command::Status), ..Request::default() };
    let e = failed(n.handle(status()).await);
    assert_eq!(e.code, codes::NOT_AVAILABLE, "{e}");
    assert!(e.details.contains("bridge br-int does not exist"), "{e}");
    n.create_bridge("br-int").await;
    let has_bridge = |r: &Replica| r.table(ovs::BRIDGE).by_name("br-int").next().is_some();
    n.agent.ovs().wait_until(DEADLINE, has_bridge).await.unwrap();
    assert_eq!(n.handle(status()).await, Response::Done);
}

// --- secondary networks

/// A pod with a layer2 data network and a provider network that carries its default route,
/// a pod whose selection names a NAD that does not exist, and a pod for Multus to delegate to.
const TELCO: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: k8s.cni.cncf.io/v1
  kind: NetworkAttachmentDefinition
  metadata: {name: data, namespace: t}
  spec: {config: '{"name": "data", "type": "stacknet-cni", "topology": "layer2", "subnets": "10.100.0.0/24", "mtu": 1300}'}
- apiVersion: k8s.cni.cncf.io/v1
  kind: NetworkAttachmentDefinition
  metadata: {name: provider, namespace: t}
  spec: {config: '{"name": "provider", "type": "stacknet-cni", "topology": "localnet", "subnets": "192.0.2.0/24"}'}
- apiVersion: v1
  kind: Pod
  metadata:
    name: nf
    namespace: t
    uid: uid-nf
    annotations:
      k8s.v1.cni.cncf.io/networks: '[{"name": "data", "interface": "data0"}, {"name": "provider", "interface": "ext0", "ips": ["192.0.2.20/24"], "default-route": ["192.0.2.1"]}]'
  spec: {nodeName: n1}
  status: {podIP: 10.1.0.5}
- apiVersion: v1
  kind: Pod
  metadata: {name: broken, namespace: t, uid: uid-broken, annotations: {k8s.v1.cni.cncf.io/networks: 'data, nowhere'}}
  spec: {nodeName: n1}
  status: {podIP: 10.1.0.6}
"#;
const POD_NF: PodRef = ("t", "nf", "uid-nf", NETNS);

fn created_calls(n: &Node) -> BTreeMap<String, PodInterface> {
    n.plumbing
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Create { iface, .. } => Some((iface.ifname.clone(), iface)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn one_add_attaches_every_secondary_network_of_the_pod() {
    let n = Node::start_with(TELCO, |c| c).await;
    n.run_ovn_controller();
    let r = added(n.handle(request(Command::Add, "ctr-nf", POD_NF)).await);
    let names: Vec<_> = r.interfaces.iter().filter(|i| i.sandbox.is_some()).map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["eth0", "data0", "ext0"]);
    let ips: Vec<_> = r.ips.iter().map(|i| (i.address.as_str(), i.interface)).collect();
    assert_eq!(ips, [("10.1.0.5/24", 1), ("10.100.0.1/24", 3), ("192.0.2.20/24", 5)]);
    // The default route is ext0's; eth0 keeps the cluster's prefixes.
    let routes: Vec<_> = r.routes.iter().map(|r| (r.dst.as_str(), r.gw.as_str())).collect();
    assert_eq!(routes, [("0.0.0.0/0", "192.0.2.1")], "the cluster's only prefix is eth0's own subnet: on-link");
    let made = created_calls(&n);
    assert_eq!(made["eth0"].gateways, Vec::<IpAddr>::new());
    assert!(made["eth0"].routes.is_empty());
    assert_eq!((made["data0"].mtu, made["ext0"].mtu), (1300, 1400), "the network's MTU, else the agent's");
    assert_eq!(made["data0"].mac, "0a:58:0a:64:00:01");
    let bound: BTreeMap<String, String> =
        n.interfaces().await.into_values().map(|ids| (ids[ovs::KEY_IFNAME].clone(), ids["iface-id"].clone())).collect();
    assert_eq!(bound["data0"], "agenttest_t_nf_data0");
    assert_eq!(bound["ext0"], "agenttest_t_nf_ext0");
    assert_eq!(bound["eth0"], "agenttest_t_nf");
    // CHECK covers every interface: a secondary one gone is named.
    assert_eq!(n.handle(request(Command::Check, "ctr-nf", POD_NF)).await, Response::Done);
    let data0 = host_ifname("ctr-nf", "data0");
    n.plumbing.remove(&data0).await.unwrap();
    let e = failed(n.handle(request(Command::Check, "ctr-nf", POD_NF)).await);
    assert_eq!(e.code, codes::CHECK_FAILED, "{e}");
    assert!(e.details.contains("no interface data0"), "{e}");
    // DEL of the primary interface removes them all.
    assert_eq!(n.handle(request(Command::Del, "ctr-nf", POD_NF)).await, Response::Done);
    assert!(n.plumbing.links().is_empty());
    assert!(n.interfaces().await.is_empty());
}

#[tokio::test]
async fn a_failing_secondary_interface_fails_the_add_and_leaves_nothing() {
    let n = Node::start_with(TELCO, |c| c).await;
    n.run_ovn_controller();
    n.plumbing.fail_next(Step::Configure, netlink_error());
    let e = failed(n.handle(request(Command::Add, "ctr-nf", POD_NF)).await);
    assert_eq!(e.code, codes::NETLINK, "{e}");
    assert!(n.plumbing.links().is_empty(), "{:?}", n.plumbing.links());
    assert!(n.interfaces().await.is_empty());
}

#[tokio::test]
async fn a_pod_whose_networks_cannot_be_made_fails_with_the_reason_and_nothing_is_made() {
    let n = Node::start_with(TELCO, |c| c).await;
    let e = failed(n.handle(request(Command::Add, "ctr-b", ("t", "broken", "uid-broken", NETNS))).await);
    assert_eq!(e.code, codes::INVALID_CONFIG, "{e}");
    assert!(e.details.contains("[1].name: NetworkAttachmentDefinition t/nowhere does not exist"), "{e}");
    assert!(n.plumbing.calls().is_empty());
}

#[tokio::test]
async fn multus_delegating_one_network_gets_that_interface_only_and_its_del_removes_only_it() {
    let n = Node::start_with(TELCO, |c| c).await;
    n.run_ovn_controller();
    let delegated = |command| Request {
        ifname: Some("data0".into()),
        network: Some("data".into()),
        ..request(command, "ctr-nf", POD_NF)
    };
    let r = added(n.handle(delegated(Command::Add)).await);
    let names: Vec<_> = r.interfaces.iter().filter(|i| i.sandbox.is_some()).map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["data0"]);
    assert!(r.routes.is_empty(), "no default route on the data network");
    // The primary with attachNetworks false (Multus attaches the others): eth0 alone.
    let primary = |command| Request { attach_networks: Some(false), ..request(command, "ctr-nf", POD_NF) };
    let r = added(n.handle(primary(Command::Add)).await);
    assert_eq!(r.interfaces.iter().filter(|i| i.sandbox.is_some()).count(), 1);
    assert_eq!(n.interfaces().await.len(), 2);
    assert_eq!(n.handle(delegated(Command::Del)).await, Response::Done);
    let left: Vec<_> = n.interfaces().await.into_values().map(|ids| ids[ovs::KEY_IFNAME].clone()).collect();
    assert_eq!(left, ["eth0"]);
}

#[test]
fn a_primary_interface_without_the_default_route_routes_the_cluster_through_its_gateway() {
    let net = |routes: &[&str]| PodNetwork {
        lsp: "p".into(),
        mac: "0a:58:0a:f4:00:05".into(),
        addresses: vec![(ip("10.244.0.5"), 24), (ip("fd00::5"), 64)],
        gateways: vec![ip("10.244.0.1"), ip("fd00::1")],
        iface_id_ver: None,
        parent: None,
        vlan: None,
        mtu: None,
        routes: routes.iter().map(|c| c.parse().unwrap()).collect(),
        attachments: Vec::new(),
        attachment_error: None,
    };
    assert_eq!(routing(&net(&[])), (vec![ip("10.244.0.1"), ip("fd00::1")], vec![]));
    // IPv4's default route is elsewhere: the cluster and Service CIDRs (not the on-link
    // subnet) through the gateway; IPv6 keeps its default route.
    let (defaults, routes) = routing(&net(&["10.244.0.0/16", "10.96.0.0/12", "10.244.0.0/24"]));
    assert_eq!(defaults, vec![ip("fd00::1")]);
    assert_eq!(
        routes,
        vec![("10.244.0.0/16".parse().unwrap(), ip("10.244.0.1")), ("10.96.0.0/12".parse().unwrap(), ip("10.244.0.1"))]
    );
}

#[tokio::test]
async fn gc_keeps_the_secondary_interfaces_of_a_container_the_runtime_lists() {
    let n = Node::start_with(TELCO, |c| c).await;
    n.run_ovn_controller();
    added(n.handle(request(Command::Add, "ctr-nf", POD_NF)).await);
    assert_eq!(n.interfaces().await.len(), 3);
    // The runtime knows (ctr-nf, eth0) only: data0 and ext0 came with it.
    let gc = |valid: Vec<(String, String)>| Request {
        command: Some(Command::Gc),
        valid_attachments: Some(valid),
        ..Request::default()
    };
    assert_eq!(n.handle(gc(vec![("ctr-nf".into(), "eth0".into())])).await, Response::Done);
    assert_eq!(n.interfaces().await.len(), 3, "all three kept");
    assert_eq!(n.handle(gc(vec![])).await, Response::Done);
    assert!(n.interfaces().await.is_empty(), "all three gone with their container");
}
