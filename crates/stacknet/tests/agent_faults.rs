//! The node agent (`stacknet agent`, the process) SIGKILLed at a random moment of 100
//! concurrent CNI ADDs and DELs, round after round, on a real node (ovs-vswitchd, userspace
//! datapath, and ovn-controller in a namespace of its own). After each kill the agent is
//! started again and the runtime does what a runtime does: DEL for every ADD that failed or
//! DEL that did not finish, then GC with the attachments it keeps. Then nothing leaks — no
//! veth, no Open_vSwitch port, no binding of a logical port — beyond the attachments kept,
//! and every one of them reaches a server pod.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use stacknet_engine::{ClusterIndex, PolicyEngine, manifest};
use stacknet_node::protocol::{self, Request, Response};
use stacknet_ovn::{OvnBackend, Topology, build};
use stacknet_sandbox::{Chassis, Netns, Ovn};
use stacknet_testsupport::cni::{Invocation, Outcome, config, pod_args};
use stacknet_testsupport::netns::{connect_from, serve_in, unique};
use stacknet_testsupport::until_blocking;

const CLUSTER: &str = "faults";
const PODS: usize = 100;
const ROUNDS: usize = 5;

fn plugin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stacknet")).with_file_name("stacknet-cni")
}

fn pods() -> String {
    let mut y = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for i in 0..=PODS {
        y.push_str(&format!(
            "- {{apiVersion: v1, kind: Pod, metadata: {{name: p{i}, namespace: f, uid: u{i}}}, status: {{podIP: 10.1.0.{}}}}}\n",
            i + 1
        ));
    }
    y
}

fn spawn_agent(ovn: &Ovn, chassis: &Chassis, socket: &Path) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_stacknet"))
        .args(["agent", "--cluster", CLUSTER, "--ovs", &chassis.ovs_remote(), "--nb", &ovn.nb.remote()])
        .arg("--socket")
        .arg(socket)
        .arg("--host-netns")
        .arg(chassis.netns().path())
        .env("STACKNET_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    until_blocking("the agent ready", Duration::from_secs(30), || {
        let req = Request { command: Some(protocol::Command::Status), ..Request::default() };
        matches!(protocol::call(socket, &req, Duration::from_secs(2)), Ok(r) if !matches!(r, Response::Error(_)))
    });
    child
}

fn cni(command: &str, container: &str, netns: &Path, pod: usize, socket: &Path) -> Outcome {
    let call = Invocation {
        command,
        container,
        netns,
        ifname: "eth0",
        args: Some(pod_args("f", &format!("p{pod}"), &format!("u{pod}"))),
        config: config(socket),
    };
    stacknet_testsupport::cni::run(&plugin(), &call)
}

fn lines(out: &str) -> BTreeSet<String> {
    out.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
}

/// Host ends of veths in the node's namespace, and ports on br-int.
fn node_state(chassis: &Chassis) -> (BTreeSet<String>, BTreeSet<String>) {
    let out =
        Command::new("ip").args(["-n", chassis.netns().name(), "-o", "link", "show", "type", "veth"]).output().unwrap();
    let veths = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().split('@').next().unwrap_or_default().to_string()))
        .collect();
    (veths, lines(&chassis.vsctl(&["list-ports", "br-int"]).unwrap()))
}

#[test]
fn agent_killed_during_concurrent_adds_and_dels_leaks_nothing() {
    let ovn = Ovn::with_northd().unwrap();
    let chassis = Chassis::start(ovn.dir(), "node-1", &ovn.sb_remote().unwrap(), "127.0.0.1").unwrap();
    let engine =
        PolicyEngine::from_index(ClusterIndex::from_objects(manifest::parse("p.yaml", &pods()).unwrap().objects));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let desired = build(&engine, &Topology::from_pods(CLUSTER, engine.index()));
    runtime
        .block_on(async { OvnBackend::connect(vec![ovn.nb.remote().parse().unwrap()]).reconcile(&desired).await })
        .unwrap();
    ovn.sync_sb().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let mut agent = spawn_agent(&ovn, &chassis, &socket);

    // Pod p0 serves; the others come and go.
    let netns: Vec<Netns> = (0..=PODS).map(|i| Netns::create(&unique(&format!("f{i}"))).unwrap()).collect();
    let r = cni("ADD", "server", &netns[0].path(), 0, &socket);
    assert_eq!(r.code, Some(0), "{}", r.stdout);
    serve_in(&netns[0].path(), "10.1.0.1:8080".parse().unwrap(), b"p0");
    // What the runtime believes: the container attached for each pod.
    let mut alive: Vec<Option<String>> = vec![None; PODS + 1];
    alive[0] = Some("server".into());
    let mut seed: u64 = 0x0a6e_47f0;
    let mut kill_points = Vec::new();

    for round in 0..ROUNDS {
        // Every pod without an attachment is added; a third of those with one are deleted.
        let work: Vec<(usize, &'static str, String)> = (1..=PODS)
            .map(|i| match &alive[i] {
                None => (i, "ADD", format!("p{i}-r{round}")),
                Some(c) if i % 3 == round % 3 => (i, "DEL", c.clone()),
                Some(c) => (i, "CHECK", c.clone()),
            })
            .collect();
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let kill_after = Duration::from_millis((seed >> 33) % 1500);
        let started = Instant::now();
        let outcomes: Vec<(usize, &'static str, String, Option<i32>)> = std::thread::scope(|s| {
            let calls: Vec<_> = work
                .iter()
                .map(|(i, command, cid)| {
                    let (ns, socket) = (netns[*i].path(), socket.clone());
                    s.spawn(move || (*i, *command, cid.clone(), cni(command, cid, &ns, *i, &socket).code))
                })
                .collect();
            // The kill lands at a random moment: its point, not a condition.
            std::thread::sleep(kill_after);
            agent.kill().unwrap();
            agent.wait().unwrap();
            calls.into_iter().map(|c| c.join().unwrap()).collect()
        });
        let (ok, failed) =
            outcomes.iter().fold((0, 0), |(o, f), x| if x.3 == Some(0) { (o + 1, f) } else { (o, f + 1) });
        kill_points.push(format!(
            "round {round}: killed after {kill_after:?}, {ok} calls done, {failed} cut ({:?})",
            started.elapsed()
        ));

        // Back up, the runtime tidies: a failed ADD and an unfinished DEL are deleted (again).
        agent = spawn_agent(&ovn, &chassis, &socket);
        for (i, command, cid, code) in &outcomes {
            match (*command, code) {
                ("ADD", Some(0)) => alive[*i] = Some(cid.clone()),
                ("DEL", Some(0)) => alive[*i] = None,
                ("CHECK", _) => {}
                _ => {
                    let r = cni("DEL", cid, &netns[*i].path(), *i, &socket);
                    assert_eq!(r.code, Some(0), "round {round}: DEL {cid} after the kill: {}", r.stdout);
                    alive[*i] = None;
                }
            }
        }
        let valid: Vec<_> = alive.iter().flatten().map(|c| json!({"containerID": c, "ifname": "eth0"})).collect();
        let gc = json!({"cniVersion": "1.1.0", "name": "stacknet", "type": "stacknet-cni", "agentSocket": socket, "cni.dev/valid-attachments": valid});
        let call = Invocation {
            command: "GC",
            container: "",
            netns: Path::new(""),
            ifname: "",
            args: None,
            config: gc.to_string(),
        };
        let r = stacknet_testsupport::cni::run(&plugin(), &call);
        assert_eq!(r.code, Some(0), "round {round}: GC: {}", r.stdout);

        // Nothing beyond what the runtime keeps.
        let kept: BTreeSet<String> =
            alive.iter().flatten().map(|c| stacknet_node::agent::host_ifname(c, "eth0")).collect();
        let (veths, ports) = node_state(&chassis);
        assert_eq!(veths, kept, "round {round}: veths in the node's namespace");
        assert_eq!(ports, kept, "round {round}: ports on br-int");
        // Every pod kept is bound to the node. (A port whose interface came and went within
        // ovn-controller's claim can keep a stale chassis with up=false: ovn-controller's own
        // state, counted and shown, not ours to write.)
        let want: BTreeSet<String> =
            alive.iter().enumerate().filter(|(_, c)| c.is_some()).map(|(i, _)| format!("{CLUSTER}_f_p{i}")).collect();
        let mut bound = BTreeSet::new();
        until_blocking(&format!("round {round}: every pod kept bound"), Duration::from_secs(30), || {
            bound = lines(
                &ovn.sbctl(&["--bare", "--columns=logical_port", "find", "Port_Binding", "chassis!=[]", "up=true"])
                    .unwrap_or_default(),
            );
            want.is_subset(&bound)
        });
        let stale: Vec<_> = bound.difference(&want).collect();
        assert!(stale.is_empty(), "round {round}: bound and up without an attachment: {stale:?}");
        let stale_down = lines(
            &ovn.sbctl(&["--bare", "--columns=logical_port", "find", "Port_Binding", "chassis!=[]", "up=false"])
                .unwrap_or_default(),
        );
        if !stale_down.is_empty() {
            eprintln!("round {round}: ovn-controller left a chassis on {stale_down:?} (up=false, no interface)");
        }
        // The agent writes no logical port: the controller's are all there, and no other.
        let lsps = lines(&ovn.nbctl(&["--bare", "--columns=name", "list", "Logical_Switch_Port"]).unwrap());
        assert_eq!(lsps.iter().filter(|l| l.starts_with("faults_f_p")).count(), PODS + 1, "round {round}: {lsps:?}");
        // Every pod kept works.
        for (i, c) in alive.iter().enumerate().skip(1) {
            if c.is_some() {
                until_blocking(&format!("round {round}: p{i} reaching p0"), Duration::from_secs(20), || {
                    connect_from(&netns[i].path(), "10.1.0.1:8080".parse().unwrap(), Duration::from_secs(2))
                        .is_ok_and(|b| b == b"p0")
                });
            }
        }
    }
    for k in &kill_points {
        eprintln!("{k}");
    }
    agent.kill().unwrap();
    agent.wait().unwrap();
}
