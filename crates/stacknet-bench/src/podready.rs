//! pod-ready: how long a pod waits for its network. A real node (NB, SB, ovn-northd, an
//! Open_vSwitch database, ovs-vswitchd with the userspace datapath, ovn-controller, the node
//! agent); the controller has created the pods' ports, as it does when pods are scheduled; then
//! `pods` CNI ADDs are fired at once, each one the `stacknet-cni` executable run as a container
//! runtime runs it. For each pod: CNI ADD start → the first datagram from a peer pod answered
//! by the new pod. Then every pod is deleted at once (CNI DEL) for `del_per_s`.
//!
//! The floor, on the same node afterwards: what OVN itself needs for as many ports. The same
//! logical ports are bound to veths made beforehand, all in one Open_vSwitch transaction
//! (no CNI, no plumbing, no batching delay), and each is timed from that transaction to
//! ovn-controller's `ovn-installed`. A second line reports it, with the ratio of our ADD
//! (which also ends at `ovn-installed`) to it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use stacknet_engine::objects::ObjectKey;
use stacknet_engine::{ClusterIndex, PolicyEngine, manifest};
use stacknet_node::netns::run_in;
use stacknet_sandbox::Netns;
use stacknet_verify::live::Live;
use tokio::net::UdpSocket;

use crate::jsonline;

pub struct Args {
    pub pods: usize,
    pub plugin: Option<PathBuf>,
}

const PORT: u16 = 7777;
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// The executable `name` given, or next to this one (`cargo build --release -p PACKAGE` puts
/// it there).
pub fn find_sibling(given: Option<PathBuf>, name: &str, package: &str) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name(name),
    };
    anyhow::ensure!(
        path.is_file(),
        "{} is not there: build it first (cargo build --release -p {package}) or pass its path",
        path.display()
    );
    Ok(path)
}

fn ip_of(i: usize) -> Ipv4Addr {
    // The peer is pod 0; 250 pods per /24 (one logical switch each).
    Ipv4Addr::new(10, 200, (i / 250) as u8, (i % 250) as u8 + 1)
}

fn cluster(pods: usize) -> anyhow::Result<PolicyEngine> {
    let mut yaml = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for i in 0..pods {
        yaml.push_str(&format!(
            "- {{apiVersion: v1, kind: Pod, metadata: {{name: p{i}, namespace: bench, uid: uid-{i}}}, status: {{podIP: {}}}}}\n",
            ip_of(i)
        ));
    }
    let parsed = manifest::parse("pod-ready", &yaml)?;
    Ok(PolicyEngine::from_index(ClusterIndex::from_objects(parsed.objects)))
}

/// Binds a UDP socket inside `netns` (before the pod has its interface, as a container would
/// start listening right after ADD).
fn udp_in(netns: &Path, addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    let s = run_in(netns, move || std::net::UdpSocket::bind(addr))??;
    s.set_nonblocking(true)?;
    Ok(UdpSocket::from_std(s)?)
}

async fn answer(sock: UdpSocket) {
    let mut buf = [0u8; 64];
    while let Ok((n, from)) = sock.recv_from(&mut buf).await {
        let _ = sock.send_to(&buf[..n], from).await;
    }
}

/// Sends to `to` (from the peer's socket) every few milliseconds until a datagram comes back.
async fn first_answer(s: UdpSocket, to: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_DEADLINE;
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        s.send_to(b"ready?", to).await?;
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(5), s.recv_from(&mut buf)).await {
            r?;
            return Ok(());
        }
    }
    anyhow::bail!("no answer from {to} within {READY_DEADLINE:?}")
}

struct Added {
    key: ObjectKey,
    netns: Netns,
    container: String,
    add_ms: f64,
    ready_ms: f64,
    started: Instant,
    ready_at: Instant,
}

/// Binds the pods' logical ports (1..=pods, now free again) to fresh veths in one transaction
/// and times each until ovn-controller has installed it: sorted milliseconds.
async fn floor(live: &Live, pods: usize) -> anyhow::Result<Vec<f64>> {
    let chassis = live.chassis();
    let batch: String =
        (1..=pods).map(|i| format!("link add sf{i} type veth peer name sg{i}\nlink set sf{i} up\n")).collect();
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), batch)?;
    let out =
        std::process::Command::new("ip").args(["-n", chassis.netns().name(), "-batch"]).arg(file.path()).output()?;
    anyhow::ensure!(out.status.success(), "making the floor's veths: {}", String::from_utf8_lossy(&out.stderr));
    let ovs = stacknet_node::ovs::client(vec![chassis.ovs_remote().parse()?]);
    ovs.wait_until(Duration::from_secs(10), |_| true).await?;
    // The logical ports' names, as the agent finds them.
    let nb = stacknet_ovsdb::Client::start(stacknet_ovsdb::ClientConfig::new(
        vec![live.trace().ovn().nb.remote().parse()?],
        stacknet_ovsdb::nb::DATABASE,
    ));
    nb.wait_until(Duration::from_secs(10), |_| true).await?;
    let mut bindings = Vec::new();
    for i in 1..=pods {
        let key = ObjectKey::new("bench", format!("p{i}"));
        let net = nb
            .replica()
            .as_ref()
            .and_then(|r| stacknet_ovn::lookup::pod_network(r, "podready", &key))
            .with_context(|| format!("no logical port for {key}"))?;
        bindings.push(stacknet_node::ovs::Binding {
            port: format!("sf{i}"),
            iface_id: net.lsp,
            iface_id_ver: net.iface_id_ver,
            container: format!("floor-{i}"),
            ifname: "eth0".into(),
            netns: String::new(),
        });
    }
    let start = Instant::now();
    stacknet_node::ovs::bind_all(&ovs, "br-int", &bindings).await?;
    let waits = bindings.iter().map(|b| {
        let ovs = ovs.clone();
        async move {
            stacknet_node::ovs::wait_installed(&ovs, &b.port, READY_DEADLINE).await?;
            anyhow::Ok(start.elapsed().as_secs_f64() * 1e3)
        }
    });
    let mut times = futures::future::try_join_all(waits).await?;
    times.sort_by(f64::total_cmp);
    Ok(times)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() { 0.0 } else { sorted[((sorted.len() - 1) as f64 * p).round() as usize] }
}

fn ms(v: f64) -> serde_json::Value {
    json!((v * 10.0).round() / 10.0)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!((1..=10_000).contains(&args.pods), "--pods must be between 1 and 10000");
    let plugin = find_sibling(args.plugin, "stacknet-cni", "stacknet-cni")?;
    let mut live = Live::start("podready", &plugin).await.context("starting the node")?;

    // The peer first, attached and answering; then the controller's ports for the others.
    let peer_key = ObjectKey::new("bench", "p0");
    live.program(&cluster(1)?).await.context("attaching the peer pod")?;
    let peer = live.pod_netns(&peer_key).context("the peer pod")?.path();
    live.program_network(&cluster(args.pods + 1)?).await.context("programming the ports")?;

    // A plugin run that does nothing (VERSION): the price of the process alone.
    let t = Instant::now();
    let out = tokio::process::Command::new(&plugin).env_clear().env("CNI_COMMAND", "VERSION").output().await?;
    anyhow::ensure!(out.status.success(), "stacknet-cni VERSION failed: {}", String::from_utf8_lossy(&out.stdout));
    let process_ms = t.elapsed().as_secs_f64() * 1e3;

    // The runtime has made each pod's sandbox (and the pod listens) before it calls ADD.
    let mut sandboxes = Vec::new();
    for i in 1..=args.pods {
        let (netns, container) = Live::new_sandbox()?;
        let listener = udp_in(&netns.path(), SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT))?;
        let probe = udp_in(&peer, SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))?;
        sandboxes.push((i, netns, container, listener, probe));
    }

    let live = Arc::new(live);
    let mut tasks = Vec::new();
    for (i, netns, container, listener, probe) in sandboxes {
        let live = live.clone();
        tasks.push(tokio::spawn(async move {
            let key = ObjectKey::new("bench", format!("p{i}"));
            let responder = tokio::spawn(answer(listener));
            let started = Instant::now();
            live.cni("ADD", &container, &netns.path(), Some((&key, &format!("uid-{i}"))))
                .await
                .with_context(|| format!("ADD {key}"))?;
            let add_ms = started.elapsed().as_secs_f64() * 1e3;
            first_answer(probe, SocketAddr::new(IpAddr::V4(ip_of(i)), PORT))
                .await
                .with_context(|| format!("pod {key}"))?;
            let ready_at = Instant::now();
            responder.abort();
            let ready_ms = ready_at.duration_since(started).as_secs_f64() * 1e3;
            anyhow::Ok(Added { key, netns, container, add_ms, ready_ms, started, ready_at })
        }));
    }
    let mut added = Vec::new();
    for t in tasks {
        added.push(t.await??);
    }
    let first = added.iter().map(|a| a.started).min().context("no pods")?;
    let last = added.iter().map(|a| a.ready_at).max().context("no pods")?;
    let pods_per_s = added.len() as f64 / last.duration_since(first).as_secs_f64();
    let mut ready: Vec<f64> = added.iter().map(|a| a.ready_ms).collect();
    ready.sort_by(f64::total_cmp);
    let mut add: Vec<f64> = added.iter().map(|a| a.add_ms).collect();
    add.sort_by(f64::total_cmp);

    // Every pod deleted at once.
    let t = Instant::now();
    let mut dels = Vec::new();
    for a in &added {
        let live = live.clone();
        let (container, path, key) = (a.container.clone(), a.netns.path(), a.key.clone());
        dels.push(tokio::spawn(async move {
            live.cni("DEL", &container, &path, None).await.with_context(|| format!("DEL {key}"))
        }));
    }
    for d in dels {
        d.await??;
    }
    let del_per_s = added.len() as f64 / t.elapsed().as_secs_f64();
    drop(added);
    let floor = floor(&live, args.pods).await.context("the floor")?;

    println!(
        "{}",
        jsonline::line(&[
            ("bench", json!("pod-ready")),
            ("pods", json!(args.pods)),
            ("p50_ms", ms(percentile(&ready, 0.5))),
            ("p90_ms", ms(percentile(&ready, 0.9))),
            ("p99_ms", ms(percentile(&ready, 0.99))),
            ("max_ms", ms(percentile(&ready, 1.0))),
            ("pods_per_s", json!(pods_per_s.round())),
            ("del_per_s", json!(del_per_s.round())),
            ("add_p50_ms", ms(percentile(&add, 0.5))),
            ("add_p99_ms", ms(percentile(&add, 0.99))),
            ("plugin_process_ms", ms(process_ms)),
        ])
    );
    let (f50, f99) = (percentile(&floor, 0.5), percentile(&floor, 0.99));
    println!(
        "{}",
        jsonline::line(&[
            ("bench", json!("pod-ready")),
            ("pods", json!(args.pods)),
            ("client", json!("floor: one OVS transaction, veths made beforehand")),
            ("installed_p50_ms", ms(f50)),
            ("installed_p99_ms", ms(f99)),
            ("installed_max_ms", ms(percentile(&floor, 1.0))),
            ("add_p50_ratio", json!((percentile(&add, 0.5) / f50 * 100.0).round() / 100.0)),
            ("add_p99_ratio", json!((percentile(&add, 0.99) / f99 * 100.0).round() / 100.0)),
        ])
    );
    if let Ok(live) = Arc::try_unwrap(live) {
        live.shutdown().await?;
    }
    Ok(())
}
