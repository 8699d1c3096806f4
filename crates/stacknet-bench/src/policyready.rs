//! policy-ready: how long a NetworkPolicy change takes to change what packets do. A real node
//! (NB, SB, ovn-northd, ovn-controller, ovs-vswitchd, the node agent) with `pods` pods in the
//! network, two of them attached and talking: a client sends a numbered datagram every 2 ms
//! to a server that echoes it. A policy on the server admits the client or not, by the label
//! its `from` selects; each change flips it, and is timed from the change until the verdict
//! has flipped (allowed: the first echo; denied: the first datagram after which none is
//! echoed for 150 ms).
//!
//! Ours: the change applied to the engine, the desired rows built, diffed and written in one
//! transaction — what the controller's reconcile does (without its 20 ms coalescing). The
//! floor, in the same run: the same transaction computed beforehand and written directly, so
//! only ovn-northd, ovn-controller and the datapath stand between the write and the flip.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use stacknet_engine::objects::{ClusterObject, ObjectKey};
use stacknet_engine::{ClusterIndex, PolicyEngine, manifest};
use stacknet_ovn::Topology;
use stacknet_verify::live::Live;
use tokio::net::UdpSocket;

use crate::jsonline;
use crate::podready::{ms, percentile, udp_in};

pub struct Args {
    pub pods: usize,
    pub changes: usize,
    pub plugin: Option<PathBuf>,
}

const CLUSTER: &str = "polready";
const PORT: u16 = 7778;
const EVERY: Duration = Duration::from_millis(2);
const QUIET: Duration = Duration::from_millis(150);
const DEADLINE: Duration = Duration::from_secs(30);

fn ip_of(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, (i / 250) as u8, (i % 250) as u8 + 1)
}

fn pod(name: &str, ip: Ipv4Addr, labels: &str) -> String {
    format!(
        "- {{apiVersion: v1, kind: Pod, metadata: {{name: {name}, namespace: bench, uid: uid-{name}, labels: {{{labels}}}}}, spec: {{nodeName: node-1}}, status: {{podIP: {ip}}}}}\n"
    )
}

/// The server's policy: UDP to it only from pods labelled `role: from`.
fn server_policy(from: &str) -> anyhow::Result<ClusterObject> {
    let yaml = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: server, namespace: bench}}\nspec: {{podSelector: {{matchLabels: {{app: server}}}}, ingress: [{{from: [{{podSelector: {{matchLabels: {{role: {from}}}}}}}], ports: [{{port: {PORT}, protocol: UDP}}]}}]}}\n"
    );
    let mut parsed = manifest::parse("policy-ready", &yaml)?;
    parsed.objects.pop().context("the policy")
}

/// The client `c` and server `s` (attached), `pods - 2` others (ports only), a policy per
/// tier of the others, and the server's policy admitting the client.
fn cluster(pods: usize) -> anyhow::Result<PolicyEngine> {
    let mut yaml = String::from("apiVersion: v1\nkind: List\nitems:\n");
    yaml.push_str(&pod("c", ip_of(0), "role: client"));
    yaml.push_str(&pod("s", ip_of(1), "app: server"));
    for i in 2..pods.max(2) {
        yaml.push_str(&pod(&format!("p{i}"), ip_of(i), &format!("app: other, tier: t{}", i % 10)));
    }
    for t in 0..10 {
        yaml.push_str(&format!(
            "- {{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {{name: tier{t}, namespace: bench}}, spec: {{podSelector: {{matchLabels: {{tier: t{t}}}}}, ingress: [{{from: [{{podSelector: {{matchLabels: {{tier: t{}}}}}}}]}}]}}}}\n",
            (t + 1) % 10
        ));
    }
    let mut objects = manifest::parse("policy-ready", &yaml)?.objects;
    objects.push(server_policy("client")?);
    Ok(PolicyEngine::from_index(ClusterIndex::from_objects(objects)))
}

/// The client's numbered datagrams: when each was sent, and each echo as it came.
#[derive(Default)]
struct Probes {
    sent: HashMap<u64, Instant>,
    echoes: Vec<(u64, Instant)>,
    next: u64,
}

/// Sends a numbered datagram every 2 ms and records the echoes, until dropped.
async fn probe(sock: Arc<UdpSocket>, to: SocketAddr, probes: Arc<Mutex<Probes>>) {
    let mut ticker = tokio::time::interval(EVERY);
    let mut buf = [0u8; 16];
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let n = {
                    let mut p = probes.lock().expect("not poisoned");
                    let n = p.next;
                    p.next += 1;
                    p.sent.insert(n, Instant::now());
                    n
                };
                let _ = sock.send_to(&n.to_le_bytes(), to).await;
            }
            r = sock.recv_from(&mut buf) => {
                if let Ok((8, _)) = r {
                    let n = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
                    probes.lock().expect("not poisoned").echoes.push((n, Instant::now()));
                }
            }
        }
    }
}

/// Waits until the verdict is `allowed` for good; the milliseconds from `start` to the flip.
async fn flipped(probes: &Mutex<Probes>, start: Instant, allowed: bool) -> anyhow::Result<f64> {
    let deadline = start + DEADLINE;
    loop {
        anyhow::ensure!(Instant::now() < deadline, "the verdict did not become {allowed} within {DEADLINE:?}");
        tokio::time::sleep(EVERY).await;
        let p = probes.lock().expect("not poisoned");
        if allowed {
            // The first echo of a datagram sent after the change.
            let first = p.echoes.iter().find(|(n, _)| p.sent.get(n).is_some_and(|s| *s >= start));
            if let Some((_, at)) = first {
                return Ok(at.duration_since(start).as_secs_f64() * 1e3);
            }
        } else {
            // The first datagram after the last one echoed, once nothing has come for a while.
            let last = p.echoes.iter().map(|(n, at)| (*n, *at)).max_by_key(|(n, _)| *n);
            let quiet = last.is_none_or(|(_, at)| at.elapsed() >= QUIET);
            let first_dropped = last.and_then(|(n, _)| p.sent.get(&(n + 1))).copied().unwrap_or(start).max(start);
            if quiet && first_dropped.elapsed() >= QUIET {
                return Ok(first_dropped.duration_since(start).as_secs_f64() * 1e3);
            }
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!((2..=20_000).contains(&args.pods), "--pods must be between 2 and 20000");
    anyhow::ensure!(args.changes >= 2 && args.changes.is_multiple_of(2), "--changes must be even and at least 2");
    let plugin = crate::podready::find_sibling(args.plugin, "stacknet-cni", "stacknet-cni")?;
    let mut live = Live::start(CLUSTER, &plugin).await.context("starting the node")?;
    let mut engine = cluster(2)?;
    live.program(&engine).await.context("attaching the client and the server")?;
    let (client, server) = (ObjectKey::new("bench", "c"), ObjectKey::new("bench", "s"));
    let client_ns = live.pod_netns(&client).context("the client pod")?.path();
    let server_ns = live.pod_netns(&server).context("the server pod")?.path();
    engine = cluster(args.pods)?;
    live.program_network(&engine).await.context("programming the pods' ports")?;

    let listener = udp_in(&server_ns, SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT))?;
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 16];
        while let Ok((n, from)) = listener.recv_from(&mut buf).await {
            let _ = listener.send_to(&buf[..n], from).await;
        }
    });
    let sock = Arc::new(udp_in(&client_ns, SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))?);
    let probes = Arc::new(Mutex::new(Probes::default()));
    let prober = tokio::spawn(probe(sock, SocketAddr::new(IpAddr::V4(ip_of(1)), PORT), probes.clone()));
    flipped(&probes, Instant::now(), true).await.context("the client never reached the server")?;

    // The floor's writer: a client of the same Northbound database.
    let nb = stacknet_ovsdb::Client::start(stacknet_ovsdb::ClientConfig::new(
        vec![live.trace().ovn().nb.remote().parse()?],
        stacknet_ovsdb::nb::DATABASE,
    ));
    nb.wait_until(Duration::from_secs(10), |_| true).await?;

    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    let mut allowed = true;
    // Each side flips the verdict both ways the same number of times.
    for i in 0..args.changes * 2 {
        allowed = !allowed;
        let policy = server_policy(if allowed { "client" } else { "nobody" })?;
        // Two changes (a deny, an allow) ours, then the same two for the floor.
        if (i / 2).is_multiple_of(2) {
            // Ours: the change through the engine, the desired rows, the diff, the transaction.
            let start = Instant::now();
            engine.apply(policy);
            live.program_network(&engine).await.context("writing the change")?;
            ours.push(flipped(&probes, start, allowed).await.with_context(|| format!("change {i}"))?);
        } else {
            // The floor: the same change's transaction, computed first, written directly.
            engine.apply(policy);
            let desired = stacknet_ovn::build(&engine, &Topology::from_pods(CLUSTER, engine.index()));
            let txn = {
                let guard = nb.replica();
                let replica = guard.as_ref().context("the floor's replica")?;
                stacknet_ovn::reconcile::plan(&desired, replica).txn
            };
            let start = Instant::now();
            nb.submit(txn).await.context("writing the floor's transaction")?;
            floor.push(flipped(&probes, start, allowed).await.with_context(|| format!("change {i} (floor)"))?);
        }
        // The next change starts from a settled verdict, with the floor's replica current.
        nb.wait_until(Duration::from_secs(10), |_| true).await?;
    }
    prober.abort();
    echo.abort();
    ours.sort_by(f64::total_cmp);
    floor.sort_by(f64::total_cmp);
    let (o50, o99, f50, f99) =
        (percentile(&ours, 0.5), percentile(&ours, 0.99), percentile(&floor, 0.5), percentile(&floor, 0.99));
    let ratio = |a: f64, b: f64| json!((a / b.max(0.1) * 100.0).round() / 100.0);
    println!(
        "{}",
        jsonline::line(&[
            ("bench", json!("policy-ready")),
            ("pods", json!(args.pods)),
            ("changes", json!(ours.len())),
            ("p50_ms", ms(o50)),
            ("p99_ms", ms(o99)),
            ("max_ms", ms(percentile(&ours, 1.0))),
        ])
    );
    println!(
        "{}",
        jsonline::line(&[
            ("bench", json!("policy-ready")),
            ("pods", json!(args.pods)),
            ("client", json!("floor: the same transaction computed beforehand, written directly")),
            ("changes", json!(floor.len())),
            ("p50_ms", ms(f50)),
            ("p99_ms", ms(f99)),
            ("max_ms", ms(percentile(&floor, 1.0))),
            ("p50_ratio", ratio(o50, f50)),
            ("p99_ratio", ratio(o99, f99)),
        ])
    );
    drop(nb);
    live.shutdown().await?;
    Ok(())
}
