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
//! (which also ends at `ovn-installed`) to it, and of pod-ready to it (the target: p50 1.3×,
//! p99 1.5×). A third line is the kernel's floor: the same plumbing (veth pairs into fresh
//! namespaces, addresses, routes, links up) made at once by this one process with the agent's
//! netlink calls, no OVS. A fourth is the runtime's: the plugin executable started at once
//! for every pod (answering VERSION), what the processes alone cost before any ADD reaches the
//! agent.

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
    /// Interfaces per pod (1: the cluster network only; N: and N-1 layer2 secondary
    /// networks, all attached by the one ADD), measured next to one in the same run.
    pub attachments: usize,
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

/// The secondary networks of the multi-interface round: `net1`..: layer2, a /16 each.
fn networks(secondary: usize) -> String {
    (1..=secondary)
        .map(|j| {
            format!(
                "- {{apiVersion: k8s.cni.cncf.io/v1, kind: NetworkAttachmentDefinition, metadata: {{name: net{j}, namespace: bench}}, spec: {{config: '{{\"name\": \"net{j}\", \"type\": \"stacknet-cni\", \"topology\": \"layer2\", \"subnets\": \"10.{}.0.0/16\"}}'}}}}\n",
                210 + j
            )
        })
        .collect()
}

/// Pod `name` at `ip`, attached to the first `secondary` networks.
fn pod_yaml(name: &str, ip: Ipv4Addr, secondary: usize) -> String {
    let nets: Vec<String> = (1..=secondary).map(|j| format!("net{j}")).collect();
    let annotations = if nets.is_empty() {
        String::new()
    } else {
        format!(", annotations: {{k8s.v1.cni.cncf.io/networks: '{}'}}", nets.join(","))
    };
    format!(
        "- {{apiVersion: v1, kind: Pod, metadata: {{name: {name}, namespace: bench, uid: uid-{name}{annotations}}}, spec: {{nodeName: node-1}}, status: {{podIP: {ip}}}}}\n"
    )
}

/// The peer `p0` (on every secondary network) and `pods` pods of each round: `p1`.. with one
/// interface, and with `secondary` networks `q1`.. (addresses after the p's).
fn cluster_rounds(pods: usize, secondary: usize, with_q: bool) -> anyhow::Result<PolicyEngine> {
    let mut yaml = String::from("apiVersion: v1\nkind: List\nitems:\n");
    yaml.push_str(&networks(secondary));
    yaml.push_str(&pod_yaml("p0", ip_of(0), secondary));
    for i in 1..=pods {
        yaml.push_str(&pod_yaml(&format!("p{i}"), ip_of(i), 0));
        if with_q {
            yaml.push_str(&pod_yaml(&format!("q{i}"), ip_of(pods + i), secondary));
        }
    }
    let parsed = manifest::parse("pod-ready", &yaml)?;
    Ok(PolicyEngine::from_index(ClusterIndex::from_objects(parsed.objects)))
}

/// Binds a UDP socket inside `netns` (before the pod has its interface, as a container would
/// start listening right after ADD).
pub(crate) fn udp_in(netns: &Path, addr: SocketAddr) -> anyhow::Result<UdpSocket> {
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
async fn first_answer(s: &UdpSocket, to: SocketAddr) -> anyhow::Result<()> {
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

/// Binds logical ports (free again: `(pod, None)` a pod's primary, `(pod, Some(interface))` a
/// secondary one) to fresh veths (named `<tag>f<i>`) in one transaction and times each until
/// ovn-controller has installed it: sorted milliseconds.
async fn floor_of(live: &Live, ports: &[(ObjectKey, Option<String>)], tag: &str) -> anyhow::Result<Vec<f64>> {
    let chassis = live.chassis();
    let batch: String = (1..=ports.len())
        .map(|i| format!("link add {tag}f{i} type veth peer name {tag}g{i}\nlink set {tag}f{i} up\n"))
        .collect();
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
    for (i, (key, interface)) in ports.iter().enumerate() {
        let i = i + 1;
        let net = nb
            .replica()
            .as_ref()
            .and_then(|r| match interface {
                None => stacknet_ovn::lookup::pod_network(r, "podready", key),
                Some(iface) => stacknet_ovn::lookup::attachment_network(r, "podready", key, iface),
            })
            .with_context(|| format!("no logical port for {key} {interface:?}"))?;
        bindings.push(stacknet_node::ovs::Binding {
            port: format!("{tag}f{i}"),
            iface_id: net.lsp,
            iface_id_ver: net.iface_id_ver,
            container: format!("floor-{tag}-{i}"),
            ifname: interface.clone().unwrap_or_else(|| "eth0".into()),
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

/// The kernel's floor for `pods` pods: what the plumbing alone costs, with no OVS, OVN, CNI
/// or agent. In the node's namespace, one process (this one) makes for each pod at once what
/// an ADD makes — a veth pair with the pod end in a fresh namespace, its MAC, MTU, address,
/// loopback, default route, offload setting, both ends up — through the agent's own netlink
/// calls; each timed from the common start: sorted milliseconds.
async fn kernel_floor(live: &Live, pods: usize) -> anyhow::Result<Vec<f64>> {
    let node = live.chassis().netns().path();
    let host = stacknet_node::netns::netlink_in_async(&node).await?;
    let mut sandboxes = Vec::new();
    for _ in 0..pods {
        sandboxes.push(Live::new_sandbox()?.0);
    }
    let interface = |i: usize| stacknet_node::plumb::PodInterface {
        host: format!("kfl{i}"),
        ifname: "eth0".into(),
        mac: format!("0a:58:0a:ca:{:02x}:{:02x}", i / 256, i % 256),
        addresses: vec![(IpAddr::V4(Ipv4Addr::new(10, 202, (i / 250) as u8, (i % 250) as u8 + 2)), 16)],
        gateways: vec![IpAddr::V4(Ipv4Addr::new(10, 202, 0, 1))],
        routes: Vec::new(),
        mtu: 1400,
        vlan: None,
    };
    let start = Instant::now();
    let made = sandboxes.iter().enumerate().map(|(i, netns)| {
        let (host, path, iface) = (host.clone(), netns.path(), interface(i));
        async move {
            stacknet_node::plumb::plumb(&host, &path, &iface)
                .await
                .with_context(|| format!("plumbing {}", iface.host))?;
            anyhow::Ok(start.elapsed().as_secs_f64() * 1e3)
        }
    });
    let result = futures::future::try_join_all(made).await;
    for i in 0..pods {
        let _ = stacknet_node::plumb::unplumb(&host, &interface(i).host).await;
    }
    let mut times = result?;
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// The runtime's floor for `pods` pods: the plugin executable run that many times at once as
/// a runtime runs it for ADD, but answering VERSION (no agent, no plumbing): what starting the
/// processes alone costs on this node, each timed from the common start; sorted ms.
async fn runtime_floor(plugin: &Path, pods: usize) -> anyhow::Result<Vec<f64>> {
    let start = Instant::now();
    let runs = (0..pods).map(|_| async {
        let out = tokio::process::Command::new(plugin).env_clear().env("CNI_COMMAND", "VERSION").output().await?;
        anyhow::ensure!(out.status.success(), "stacknet-cni VERSION failed: {}", String::from_utf8_lossy(&out.stdout));
        anyhow::Ok(start.elapsed().as_secs_f64() * 1e3)
    });
    let mut times = futures::future::try_join_all(runs).await?;
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// A floor's line: its sorted times' p50, p99 and max.
fn times_line(pods: usize, client: &str, sorted: &[f64]) {
    println!(
        "{}",
        jsonline::line(&[
            ("bench", json!("pod-ready")),
            ("pods", json!(pods)),
            ("client", json!(client)),
            ("p50_ms", ms(percentile(sorted, 0.5))),
            ("p99_ms", ms(percentile(sorted, 0.99))),
            ("max_ms", ms(percentile(sorted, 1.0))),
        ])
    );
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() { 0.0 } else { sorted[((sorted.len() - 1) as f64 * p).round() as usize] }
}

pub(crate) fn ms(v: f64) -> serde_json::Value {
    json!((v * 10.0).round() / 10.0)
}

/// What one round of pods measured.
struct Round {
    /// ADD start to every interface answering, sorted (ms).
    ready: Vec<f64>,
    /// ADD alone, sorted (ms).
    add: Vec<f64>,
    pods_per_s: f64,
    del_per_s: f64,
}

/// `pods` pods named `prefix1`.. fired at once (each a CNI ADD as a runtime runs it), each
/// timed until the peer gets an answer on every address the ADD gave it; then all deleted at
/// once.
async fn round(live: &Arc<Live>, peer: &Path, prefix: &str, pods: usize) -> anyhow::Result<Round> {
    // The runtime has made each pod's sandbox (and the pod listens) before it calls ADD.
    let mut sandboxes = Vec::new();
    for i in 1..=pods {
        let (netns, container) = Live::new_sandbox()?;
        let listener = udp_in(&netns.path(), SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT))?;
        let probe = udp_in(peer, SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))?;
        sandboxes.push((i, netns, container, listener, probe));
    }
    let mut tasks = Vec::new();
    for (i, netns, container, listener, probe) in sandboxes {
        let live = live.clone();
        let name = format!("{prefix}{i}");
        tasks.push(tokio::spawn(async move {
            let key = ObjectKey::new("bench", name.clone());
            let responder = tokio::spawn(answer(listener));
            let started = Instant::now();
            let result = live
                .cni("ADD", &container, &netns.path(), Some((&key, &format!("uid-{name}"))))
                .await
                .with_context(|| format!("ADD {key}"))?;
            let add_ms = started.elapsed().as_secs_f64() * 1e3;
            let addresses: Vec<IpAddr> =
                stacknet_verify::live::interface_addresses(&result).into_iter().flat_map(|(_, ips)| ips).collect();
            anyhow::ensure!(!addresses.is_empty(), "ADD {key} answered no address: {result}");
            for ip in addresses {
                first_answer(&probe, SocketAddr::new(ip, PORT)).await.with_context(|| format!("pod {key} at {ip}"))?;
            }
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
    Ok(Round { ready, add, pods_per_s, del_per_s })
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!((1..=10_000).contains(&args.pods), "--pods must be between 1 and 10000");
    anyhow::ensure!((1..=8).contains(&args.attachments), "--attachments must be between 1 and 8");
    let secondary = args.attachments - 1;
    let plugin = find_sibling(args.plugin, "stacknet-cni", "stacknet-cni")?;
    let mut live = Live::start("podready", &plugin).await.context("starting the node")?;

    // The peer first (on every secondary network too), attached and answering; then the
    // controller's ports for the others.
    let peer_key = ObjectKey::new("bench", "p0");
    live.program(&cluster_rounds(0, secondary, false)?).await.context("attaching the peer pod")?;
    let peer = live.pod_netns(&peer_key).context("the peer pod")?.path();
    live.program_network(&cluster_rounds(args.pods, secondary, secondary > 0)?)
        .await
        .context("programming the ports")?;

    // A plugin run that does nothing (VERSION): the price of the process alone.
    let t = Instant::now();
    let out = tokio::process::Command::new(&plugin).env_clear().env("CNI_COMMAND", "VERSION").output().await?;
    anyhow::ensure!(out.status.success(), "stacknet-cni VERSION failed: {}", String::from_utf8_lossy(&out.stdout));
    let process_ms = t.elapsed().as_secs_f64() * 1e3;

    let live = Arc::new(live);
    let one = round(&live, &peer, "p", args.pods).await.context("pods with one interface")?;
    let many = if secondary > 0 {
        Some(
            round(&live, &peer, "q", args.pods)
                .await
                .with_context(|| format!("pods with {} interfaces", args.attachments))?,
        )
    } else {
        None
    };
    let primaries: Vec<(ObjectKey, Option<String>)> =
        (1..=args.pods).map(|i| (ObjectKey::new("bench", format!("p{i}")), None)).collect();
    let floor = floor_of(&live, &primaries, "s").await.context("the floor")?;
    let kernel = kernel_floor(&live, args.pods).await.context("the kernel's floor")?;
    let runtime = runtime_floor(&plugin, args.pods).await.context("the runtime's floor")?;
    // The same floor for the multi-interface round's ports: every pod's every interface.
    let many_floor = if secondary > 0 {
        let mut ports = Vec::new();
        for i in 1..=args.pods {
            let key = ObjectKey::new("bench", format!("q{i}"));
            ports.push((key.clone(), None));
            ports.extend((1..=secondary).map(|j| (key.clone(), Some(format!("net{j}")))));
        }
        Some(floor_of(&live, &ports, "t").await.context("the floor of the multi-interface round")?)
    } else {
        None
    };

    println!(
        "{}",
        jsonline::line(&[
            ("bench", json!("pod-ready")),
            ("pods", json!(args.pods)),
            ("p50_ms", ms(percentile(&one.ready, 0.5))),
            ("p90_ms", ms(percentile(&one.ready, 0.9))),
            ("p99_ms", ms(percentile(&one.ready, 0.99))),
            ("max_ms", ms(percentile(&one.ready, 1.0))),
            ("pods_per_s", json!(one.pods_per_s.round())),
            ("del_per_s", json!(one.del_per_s.round())),
            ("add_p50_ms", ms(percentile(&one.add, 0.5))),
            ("add_p99_ms", ms(percentile(&one.add, 0.99))),
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
            ("add_p50_ratio", json!((percentile(&one.add, 0.5) / f50 * 100.0).round() / 100.0)),
            ("add_p99_ratio", json!((percentile(&one.add, 0.99) / f99 * 100.0).round() / 100.0)),
            ("ready_p50_ratio", json!((percentile(&one.ready, 0.5) / f50 * 100.0).round() / 100.0)),
            ("ready_p99_ratio", json!((percentile(&one.ready, 0.99) / f99 * 100.0).round() / 100.0)),
            ("target_p50_ratio", json!(1.3)),
            ("target_p99_ratio", json!(1.5)),
        ])
    );
    times_line(
        args.pods,
        "kernel floor: the same veths, addresses, routes and links made at once by one process, no OVS",
        &kernel,
    );
    times_line(
        args.pods,
        "runtime floor: the plugin executable run at once for every pod, answering VERSION",
        &runtime,
    );
    if let Some(m) = many {
        let ratio = |a: f64, b: f64| json!((a / b * 100.0).round() / 100.0);
        let (m50, m99) = (percentile(&m.ready, 0.5), percentile(&m.ready, 0.99));
        let (o50, o99) = (percentile(&one.ready, 0.5), percentile(&one.ready, 0.99));
        println!(
            "{}",
            jsonline::line(&[
                ("bench", json!("pod-ready")),
                ("pods", json!(args.pods)),
                ("attachments", json!(args.attachments)),
                ("p50_ms", ms(m50)),
                ("p99_ms", ms(m99)),
                ("max_ms", ms(percentile(&m.ready, 1.0))),
                ("pods_per_s", json!(m.pods_per_s.round())),
                ("del_per_s", json!(m.del_per_s.round())),
                ("add_p50_ms", ms(percentile(&m.add, 0.5))),
                ("one_interface_p50_ms", ms(o50)),
                ("one_interface_p99_ms", ms(o99)),
                ("p50_ratio", ratio(m50, o50)),
                ("p99_ratio", ratio(m99, o99)),
                ("target_ratio", json!(1.5)),
            ])
        );
        // What OVN itself needs for the pods' every port, next to its need for one port each:
        // the part of the ratio that is OVN's.
        if let Some(mf) = many_floor {
            let (mf50, mf99) = (percentile(&mf, 0.5), percentile(&mf, 0.99));
            println!(
                "{}",
                jsonline::line(&[
                    ("bench", json!("pod-ready")),
                    ("pods", json!(args.pods)),
                    ("attachments", json!(args.attachments)),
                    ("client", json!("floor: one OVS transaction, veths made beforehand")),
                    ("ports", json!(mf.len())),
                    ("installed_p50_ms", ms(mf50)),
                    ("installed_p99_ms", ms(mf99)),
                    ("floor_p50_ratio", ratio(mf50, f50)),
                    ("floor_p99_ratio", ratio(mf99, f99)),
                    ("ours_p50_ratio", ratio(m50, o50)),
                    ("ours_p99_ratio", ratio(m99, o99)),
                ])
            );
        }
    }
    if let Ok(live) = Arc::try_unwrap(live) {
        live.shutdown().await?;
    }
    Ok(())
}
