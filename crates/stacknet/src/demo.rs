//! `stacknet demo`: the seed's application stack on a real cluster of three nodes, programmed
//! by the controller from `examples/three-tier/`, next to a VM that Kubernetes does not manage,
//! with an outside network the nodes' uplinks plug into and a host on it — and proof that the
//! network does what the policies say: every pair of endpoints (pods, the VM, the nodes, the
//! outside host) is tried for real, and the Services are tried through their cluster IPs,
//! NodePorts and load balancer address; the live verdicts are printed next to the expected
//! ones. Then a policy file is edited and everything is tried again. Exits 0 only if every
//! live verdict equals its expected one.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use stacknet_controller::manifests::{ManifestSource, SOURCE};
use stacknet_controller::{Controller, ControllerConfig, GatewaySettings};
use stacknet_engine::objects::{ClusterObject, ContainerPort, ObjectKey, Pod, Protocol};
use stacknet_engine::paths::{self, Case, Endpoint, Fabric, Target, Via};
use stacknet_engine::reach::ProbeSpec;
use stacknet_engine::{Cidr, ClusterIndex, manifest};
use stacknet_verify::live::{Live, NodeSpec, OutsideSpec};

use crate::northsouth::Grid;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// The example folder to run (copied to a scratch folder the controller watches):
    /// `examples/three-tier` (the default) or `examples/telco` (secondary networks: a folder
    /// with NetworkAttachmentDefinitions runs the multi-network demo).
    #[arg(value_name = "EXAMPLE", conflicts_with = "example")]
    pub(crate) folder: Option<PathBuf>,
    /// The same, as an option.
    #[arg(long, default_value = "examples/three-tier")]
    pub(crate) example: PathBuf,
    /// The CNI plugin (default: `stacknet-cni` next to this executable).
    #[arg(long, value_name = "PATH")]
    pub(crate) cni: Option<PathBuf>,
    /// Stay up after the demo (the nodes, the controller, the pods) until interrupted.
    #[arg(long)]
    pub(crate) keep: bool,
    /// `table`: the matrices for people; `json`: exactly one JSON object on stdout,
    /// `{"results":[{"from","to","via","port","protocol","expected","live"}, ...]}` (a
    /// NodePort probe also says the `node` whose address it dials), with the progress on
    /// stderr.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub(crate) output: Output,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

pub(crate) const CLUSTER: &str = "demo";
/// The VM: PostgreSQL outside Kubernetes, on the database node's network.
const VM_KEY: (&str, &str) = ("vm", "postgres");
const VM_PORT: &str = "vm-postgres";
const VM_IP: &str = "10.244.3.200";
const VM_NODE: &str = "node-3";

/// The network outside the cluster: the nodes' uplinks (their addresses in it, from the
/// manifests' Nodes), a host on it, its router, and the load balancer addresses.
const OUTSIDE_CIDR: &str = "172.30.0.0/24";
const OUTSIDE_HOST: (&str, &str) = ("outside", "172.30.0.100");
const NEXT_HOP: &str = "172.30.0.1";
const LB_POOL: &str = "172.30.0.200/29";
const CLUSTER_CIDR: &str = "10.244.0.0/16";
const SERVICE_CIDR: &str = "10.96.0.0/12";

/// The edit: the web tier stops taking connections from the PostgreSQL VM.
const EDIT_FILE: &str = "policies.yaml";
const EDIT_FROM: &str = "from: [{ipBlock: {cidr: 0.0.0.0/0}}]";
const EDIT_TO: &str = "from: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.244.3.200/32]}}]";

/// One of the constants above.
fn cidr(s: &str) -> Cidr {
    s.parse().expect("a valid CIDR constant")
}

fn probes() -> Vec<ProbeSpec> {
    ["80/TCP", "8000/TCP", "11211/TCP", "5432/TCP", "9100/TCP", "53/UDP"]
        .iter()
        .map(|p| p.parse().expect("valid probe"))
        .collect()
}

/// Probes through Services: (from, Service, via, port, node whose address a NodePort is
/// dialled on).
const SERVICE_PROBES: &[(&str, &str, &str, u16, Option<&str>)] = &[
    ("external/outside", "leonardo/web", "nodeport", 30080, Some("node-1")),
    ("external/outside", "leonardo/web", "nodeport", 30080, Some("node-2")),
    ("external/outside", "leonardo/web", "nodeport", 30080, Some("node-3")),
    ("external/outside", "leonardo/web", "loadbalancer", 80, None),
    ("external/outside", "leonardo/app", "nodeport", 30800, Some("node-2")),
    ("node/node-2", "leonardo/web", "nodeport", 30080, Some("node-1")),
    ("leonardo/app-1", "leonardo/web", "nodeport", 30080, Some("node-3")),
    ("leonardo/app-0", "leonardo/db", "clusterip", 5432, None),
    ("leonardo/cache-0", "leonardo/db", "clusterip", 5432, None),
    ("node/node-3", "leonardo/db", "clusterip", 5432, None),
    ("node/node-1", "leonardo/db", "clusterip", 5432, None),
    ("vm/postgres", "leonardo/web", "clusterip", 80, None),
];

fn service_cases() -> Vec<Case> {
    SERVICE_PROBES
        .iter()
        .map(|(from, svc, via, port, node)| Case {
            from: from.parse().expect("valid endpoint"),
            to: Target::Service(svc.parse().expect("valid service")),
            via: via.parse().expect("valid via"),
            port: *port,
            protocol: Protocol::Tcp,
            node: node.map(str::to_string),
        })
        .collect()
}

/// Whether progress goes to stderr (JSON on stdout).
pub(crate) static QUIET: AtomicBool = AtomicBool::new(false);

pub(crate) fn say(text: &str) {
    if QUIET.load(Ordering::Relaxed) {
        eprintln!("{text}");
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// Runs `what`, printing its progress line and how long it took.
pub(crate) async fn step<T>(what: &str, f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    if QUIET.load(Ordering::Relaxed) {
        eprint!("• {what} ... ");
    } else {
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "• {what} ... ");
        let _ = out.flush();
    }
    let t = Instant::now();
    let r = f.await;
    match &r {
        Ok(_) => say(&format!("done ({:.1} s)", t.elapsed().as_secs_f64())),
        Err(e) => say(&format!("FAILED: {e:#}")),
    }
    r
}

pub(crate) fn read_folder(dir: &Path) -> anyhow::Result<Vec<ClusterObject>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")))
        .collect();
    files.sort();
    let mut objects = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        objects.extend(manifest::parse(&f.display().to_string(), &text)?.objects);
    }
    Ok(objects)
}

/// A demo's controller on the scratch manifest folder, until [`Running::finish`].
pub(crate) struct Running {
    pub(crate) observed: stacknet_controller::Observed,
    pub(crate) addr: SocketAddr,
    _http: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts the controller (OVN, `config`) watching `manifests`, and waits for its first
    /// reconcile.
    pub(crate) async fn start(config: &ControllerConfig, manifests: &Path, example: &Path) -> anyhow::Result<Running> {
        let controller = Controller::ovn(config, &[SOURCE])?;
        let observed = controller.observed();
        let (addr, http) = controller.serve_http().await?;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let source = ManifestSource::new(manifests, Duration::from_millis(100), observed.events.clone())?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(controller.run(rx, async move {
            let _ = stopped.await;
        }));
        tokio::spawn(source.run(tx));
        let running = Running { observed, addr, _http: http, stop, task };
        step(
            &format!("starting the controller on {} (metrics: http://{addr}/metrics)", example.display()),
            running.reconciled(0),
        )
        .await?;
        Ok(running)
    }

    /// Waits (60 s at most) until the controller is ready with more than `after` reconciles.
    pub(crate) async fn reconciled(&self, after: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(self.observed.health.ready.load(Ordering::SeqCst)
            && self.observed.metrics.reconciles_ok.load(Ordering::Relaxed) > after)
        {
            anyhow::ensure!(Instant::now() < deadline, "the controller did not converge within 60 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// The end of a demo: the verdict, the controller's Events, the JSON object on stdout
    /// (`--output json`), with `--keep` staying up until interrupted, then everything torn
    /// down. Returns `ok`.
    pub(crate) async fn finish(
        self,
        args: &DemoArgs,
        ok: bool,
        json: String,
        live: Live,
        manifests: &Path,
        what: &str,
    ) -> anyhow::Result<bool> {
        say(&format!(
            "\n{}",
            if ok {
                "Every live verdict equals its expected one."
            } else {
                "MISMATCH: the live network differs from what the policies say (see the rows marked !)."
            }
        ));
        let warnings = self.observed.events.all();
        if !warnings.is_empty() {
            say("Events:");
            for e in warnings {
                say(&format!("  {} {}: {}", e.reason, e.object, e.message));
            }
        }
        if args.output == Output::Json {
            let mut out = std::io::stdout().lock();
            out.write_all(json.as_bytes())?;
            out.flush()?;
        }
        if args.keep {
            say(&format!(
                "\nKept up: Northbound {}, controller http://{}/metrics, manifests in {} (edit them: the network follows).\nCtrl-C or SIGTERM tears everything down.",
                live.trace().ovn().nb.remote(),
                self.addr,
                manifests.display()
            ));
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        step(&format!("tearing down ({what})"), async { Ok(live.shutdown().await?) }).await?;
        Ok(ok)
    }
}

/// What the network around the pods is, as the controller made it (read back from the
/// Northbound database): each pod's node, the nodes' management and join addresses, the
/// load balancer addresses.
struct Made {
    allocated: stacknet_ovn::lookup::Allocated,
}

impl Made {
    async fn read(nb: &str) -> anyhow::Result<Made> {
        let client = stacknet_ovsdb::Client::start(stacknet_ovsdb::ClientConfig::new(
            vec![nb.parse()?],
            stacknet_ovsdb::nb::DATABASE,
        ));
        client.connected(Duration::from_secs(10)).await?;
        let allocated = client
            .replica()
            .as_ref()
            .map(|r| stacknet_ovn::lookup::allocated(r, CLUSTER))
            .context("the Northbound database's contents")?;
        Ok(Made { allocated })
    }

    /// The cluster as the expectation sees it: the manifests, each pod on the node the
    /// controller put it on, plus the VM, which no policy selects and which ipBlocks match
    /// by its address (exactly what a hostNetwork pod is to NetworkPolicy); and the fabric.
    fn expectation(&self, objects: Vec<ClusterObject>) -> (ClusterIndex, Fabric) {
        let mut index = ClusterIndex::from_objects(objects);
        let placed: BTreeMap<&ObjectKey, &String> = self.allocated.pods.iter().map(|(k, n, _)| (k, n)).collect();
        let pods: Vec<Pod> = index.pods().map(|(_, p)| p.clone()).collect();
        for mut p in pods {
            if let Some(n) = placed.get(&p.key) {
                p.node = Some(n.to_string());
                index.apply_pod(p);
            }
        }
        index.apply_pod(Pod {
            key: ObjectKey::new(VM_KEY.0, VM_KEY.1),
            uid: None,
            labels: Default::default(),
            ips: vec![VM_IP.parse().expect("valid")],
            status_ips: vec![],
            host_network: true,
            ports: vec![ContainerPort { name: Some("postgres".into()), port: 5432, protocol: Protocol::Tcp }],
            node: Some(VM_NODE.into()),
            terminated: false,
            network_annotation: None,
            networks_annotation: None,
            network_status_annotation: None,
            sriov_devices_annotation: None,
        });
        let management =
            self.allocated.management.iter().filter_map(|(n, ips)| Some((n.clone(), *ips.first()?))).collect();
        let join = self.allocated.join.iter().cloned().collect();
        let externals = BTreeMap::from([(OUTSIDE_HOST.0.to_string(), vec![OUTSIDE_HOST.1.parse().expect("valid")])]);
        let lb_ips = self.allocated.load_balancer_ips.iter().cloned().collect();
        let inside = [cidr(CLUSTER_CIDR), cidr(SERVICE_CIDR)];
        let fabric = paths::fabric(&index, &management, &join, externals, true, &lb_ips, &inside);
        (index, fabric)
    }
}

/// The verdicts of one round: the grids over `endpoints`, and the Service probes.
struct Round {
    endpoints: Vec<Endpoint>,
    grids: Vec<Grid>,
    services: Vec<(Case, bool)>,
}

impl Round {
    /// Every verdict as (case, allowed), grids first.
    fn cases(&self) -> Vec<(Case, bool)> {
        let mut out = Vec::new();
        for g in &self.grids {
            for (i, row) in g.allowed.iter().enumerate() {
                for (j, v) in row.iter().enumerate() {
                    let Some(v) = v else { continue };
                    let case = Case {
                        from: self.endpoints[i].clone(),
                        to: Target::Endpoint(self.endpoints[j].clone()),
                        via: Via::Pod,
                        port: g.probe.port,
                        protocol: g.probe.protocol,
                        node: None,
                    };
                    out.push((case, *v));
                }
            }
        }
        out.extend(self.services.iter().cloned());
        out
    }
}

/// What the policies say: every case decided by the engine.
fn expected(index: &ClusterIndex, fabric: &Fabric, endpoints: &[Endpoint], services: &[Case]) -> anyhow::Result<Round> {
    let grids = crate::northsouth::grids(index, fabric, endpoints, &probes()).map_err(|e| anyhow::anyhow!(e))?;
    let mut out = Vec::new();
    for c in services {
        out.push((c.clone(), paths::decide(index, fabric, c).map_err(|e| anyhow::anyhow!("{c}: {e}"))?));
    }
    Ok(Round { endpoints: endpoints.to_vec(), grids, services: out })
}

/// The address a Service probe dials.
fn service_address(index: &ClusterIndex, fabric: &Fabric, made: &Made, c: &Case) -> anyhow::Result<SocketAddr> {
    let Target::Service(key) = &c.to else { anyhow::bail!("{c}: not a Service probe") };
    let svc = index.services().find(|s| &s.key == key).with_context(|| format!("no Service {key}"))?;
    let ip: IpAddr = match c.via {
        Via::ClusterIp => *svc.cluster_ips.first().context("no cluster IP")?,
        Via::NodePort => {
            let n = c.node.as_deref().context("a NodePort probe names its node")?;
            *fabric
                .nodes
                .get(n)
                .and_then(|n| n.addresses.first())
                .with_context(|| format!("node {n} has no address"))?
        }
        Via::LoadBalancer => made
            .allocated
            .load_balancer_ips
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, ip)| *ip)
            .with_context(|| format!("Service {key} has no load balancer address"))?,
        Via::ExternalIp => *svc.external_ips.first().context("no externalIPs")?,
        Via::Pod => anyhow::bail!("{c}: not through a Service"),
    };
    Ok(SocketAddr::new(ip, c.port))
}

/// What the network does: every case tried for real. A Service probe passes when a pod
/// answers (our listeners answer with their pod's name).
async fn tried(
    live: &mut Live,
    index: &ClusterIndex,
    fabric: &Fabric,
    made: &Made,
    endpoints: &[Endpoint],
    services: &[Case],
) -> anyhow::Result<Round> {
    let probes = probes();
    let grids = live.endpoint_matrices(endpoints, &probes).await?;
    let grids = probes.iter().zip(grids).map(|(p, allowed)| Grid { probe: *p, allowed }).collect();
    let mut out = Vec::new();
    for c in services {
        let addr = service_address(index, fabric, made, c)?;
        let got = live.dial(&c.from, addr, c.protocol).await?;
        let pod =
            got.as_deref().and_then(|g| g.parse::<Endpoint>().ok()).is_some_and(|e| matches!(e, Endpoint::Pod(_)));
        out.push((c.clone(), pod));
    }
    Ok(Round { endpoints: endpoints.to_vec(), grids, services: out })
}

/// The pairs `expected` allows that do not answer (yet).
async fn unanswered(live: &Live, expected: &Round) -> anyhow::Result<Vec<String>> {
    let mut allowed = Vec::new();
    for g in &expected.grids {
        for (i, row) in g.allowed.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                if *v == Some(true) {
                    allowed.push((&expected.endpoints[i], &expected.endpoints[j], g.probe));
                }
            }
        }
    }
    let mut out = Vec::new();
    for (a, b, p) in allowed {
        if !live.reaches(a, b, p).await? {
            out.push(format!("{a} -> {b} {}/{:?}", p.port, p.protocol));
        }
    }
    Ok(out)
}

pub(crate) fn mark(v: Option<bool>) -> &'static str {
    match v {
        None => "·",
        Some(true) => "✓",
        Some(false) => "✗",
    }
}

/// Expected and live side by side, one block per probe, then the Service probes; whether
/// every verdict agrees.
fn show(expected: &Round, live: &Round) -> bool {
    let mut all = true;
    let names: Vec<String> = expected.endpoints.iter().map(|k| k.to_string()).collect();
    let width = names.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut out = String::from("Rows send, columns receive. ✓ answered, ✗ no answer, · self.\n");
    for (i, n) in names.iter().enumerate() {
        out.push_str(&format!("  {:>2} {n}\n", i + 1));
    }
    let cells = |g: &Grid, i: usize| -> String { g.allowed[i].iter().map(|c| mark(*c)).collect::<Vec<_>>().join(" ") };
    for (e, l) in expected.grids.iter().zip(&live.grids) {
        let same = e.allowed == l.allowed;
        all &= same;
        let head: String = (1..=names.len()).map(|i| format!("{}", i % 10)).collect::<Vec<_>>().join(" ");
        out.push_str(&format!(
            "\n{}  — live {} expected\n  {:w$}  expected{}live\n  {:w$}  {head}   {head}\n",
            e.probe,
            if same { "equals" } else { "DIFFERS FROM" },
            "",
            " ".repeat(head.len() - 5),
            "",
            w = width + 3
        ));
        for (i, name) in names.iter().enumerate() {
            let m = if e.allowed[i] == l.allowed.get(i).cloned().unwrap_or_default() { ' ' } else { '!' };
            out.push_str(&format!("{m} {:>2} {name:<width$}  {}   {}\n", i + 1, cells(e, i), cells(l, i)));
        }
    }
    out.push_str("\nThrough Services (expected, live):\n");
    for ((c, e), (_, l)) in expected.services.iter().zip(&live.services) {
        all &= e == l;
        out.push_str(&format!("{} {} {}  {c}\n", if e == l { ' ' } else { '!' }, mark(Some(*e)), mark(Some(*l))));
    }
    say(&out);
    all
}

/// The verdicts that differ between two rounds: `case: before → after`.
fn changes(before: &Round, after: &Round) -> Vec<String> {
    let old: BTreeMap<Case, bool> = before.cases().into_iter().collect();
    let word = |x: bool| if x { "allowed" } else { "denied" };
    after
        .cases()
        .into_iter()
        .filter_map(|(c, v)| old.get(&c).filter(|o| **o != v).map(|o| format!("{c}: {} → {}", word(*o), word(v))))
        .collect()
}

#[derive(Serialize)]
struct JsonResults {
    results: Vec<JsonResult>,
}

#[derive(Serialize)]
struct JsonResult {
    from: String,
    to: String,
    via: &'static str,
    port: u16,
    protocol: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    expected: bool,
    live: bool,
}

/// Exactly one JSON object: every verdict of the round, expected next to live.
fn json(expected: &Round, live: &Round) -> String {
    let results = expected
        .cases()
        .into_iter()
        .zip(live.cases())
        .map(|((c, e), (_, l))| JsonResult {
            from: c.from.to_string(),
            to: c.to.to_string(),
            via: c.via.as_str(),
            port: c.port,
            protocol: c.protocol.as_str(),
            node: c.node.clone(),
            expected: e,
            live: l,
        })
        .collect();
    let mut s = serde_json::to_string(&JsonResults { results }).expect("plain data serializes");
    s.push('\n');
    s
}

pub fn run(mut args: DemoArgs) -> Result<bool, crate::Failure> {
    if let Some(f) = args.folder.take() {
        args.example = f;
    }
    if !args.example.is_dir() {
        return Err(crate::Failure::Input(format!(
            "--example {}: not a folder (run the demo from the repository root, or pass --example DIR)",
            args.example.display()
        )));
    }
    QUIET.store(args.output == Output::Json, Ordering::Relaxed);
    use stacknet_sandbox::Need;
    // Before anything starts: what the machine lacks, and the command that installs it.
    stacknet_sandbox::require(&[Need::Root, Need::Ovn, Need::Chassis])
        .map_err(|m| crate::Failure::Other(anyhow::anyhow!("stacknet demo {m}")))?;
    let plugin = crate::sandbox::find_plugin(args.cni.clone()).map_err(|e| crate::Failure::Input(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| crate::Failure::Other(e.into()))?;
    runtime.block_on(demo(args, plugin)).map_err(crate::Failure::Other)
}

/// The nodes of the manifests, each with its address on the outside network.
fn node_specs(objects: &[ClusterObject]) -> anyhow::Result<Vec<NodeSpec>> {
    let outside = cidr(OUTSIDE_CIDR);
    let nodes: Vec<NodeSpec> = objects
        .iter()
        .filter_map(|o| match o {
            ClusterObject::Node(n) => Some(NodeSpec {
                name: n.name.clone(),
                uplink: n.addresses.iter().copied().find(|a| outside.contains(*a)),
            }),
            _ => None,
        })
        .collect();
    anyhow::ensure!(
        nodes.len() >= 2 && nodes.iter().all(|n| n.uplink.is_some()),
        "the demo needs at least two Nodes, each with an address in {OUTSIDE_CIDR} (status.addresses)"
    );
    Ok(nodes)
}

async fn demo(args: DemoArgs, plugin: PathBuf) -> anyhow::Result<bool> {
    let work = tempfile::Builder::new().prefix("stacknet-demo-").tempdir()?;
    let manifests = work.path().join("manifests");
    std::fs::create_dir(&manifests)?;
    for entry in std::fs::read_dir(&args.example)? {
        let p = entry?.path();
        if p.is_file() {
            std::fs::copy(&p, manifests.join(p.file_name().context("a file name")?))?;
        }
    }
    let objects = read_folder(&manifests)?;
    if objects.iter().any(|o| matches!(o, ClusterObject::NetworkAttachmentDefinition(_))) {
        return crate::demo_telco::run(&args, &plugin, objects, &manifests).await;
    }
    say("stacknet demo: the seed's application stack (nginx → Django app + memcached → PostgreSQL) on three\n\
     nodes, programmed into OVN by the controller, next to a PostgreSQL VM Kubernetes does not manage, with\n\
     an outside network and a host on it; tried pod to pod, node to pod, to and from the outside, and\n\
     through the Services' cluster IPs, NodePorts and load balancer address.\n");
    let nodes = node_specs(&objects)?;
    let outside = OutsideSpec {
        prefix: cidr(OUTSIDE_CIDR).prefix_len(),
        hosts: vec![(OUTSIDE_HOST.0.into(), OUTSIDE_HOST.1.parse()?)],
        next_hop: Some(NEXT_HOP.parse()?),
    };
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    let mut live = step(
        &format!(
            "starting OVN (Northbound, Southbound, ovn-northd), {} (each ovs-vswitchd userspace datapath, ovn-controller, the node agent), the outside network with {} at {}",
            names.join(", "),
            OUTSIDE_HOST.0,
            OUTSIDE_HOST.1
        ),
        async { Ok(Live::start_cluster(CLUSTER, &plugin, &nodes, Some(&outside)).await?) },
    )
    .await?;
    live.timeout = Duration::from_millis(800);
    let nb = live.trace().ovn().nb.remote();

    let mut config = ControllerConfig::new(CLUSTER, vec![nb.parse()?], Some(&manifests));
    config.poll = Duration::from_millis(100);
    config.ipam.cluster = vec![cidr(CLUSTER_CIDR)];
    config.service_cidr = cidr(SERVICE_CIDR);
    config.gateways = Some(GatewaySettings {
        external: cidr(OUTSIDE_CIDR),
        next_hop: Some(NEXT_HOP.parse()?),
        join: cidr(stacknet_controller::config::DEFAULT_JOIN_CIDR),
        snat: true,
        physnet: "external".into(),
        lb_pools: vec![cidr(LB_POOL)],
    });
    let running = Running::start(&config, &manifests, &args.example).await?;
    let observed = running.observed.clone();

    let pods_only = stacknet_engine::PolicyEngine::from_index(ClusterIndex::from_objects(objects.clone()));
    let missing = step(
        &format!(
            "starting {} pods: a network namespace each, wired by stacknet-cni through its node's agent as a container runtime calls it",
            pods_only.index().pod_count()
        ),
        async { Ok(live.attach(&pods_only, CLUSTER).await?) },
    )
    .await?;
    anyhow::ensure!(missing.is_empty(), "pods without a port: {missing:?} (events: {:?})", observed.events.all());
    let vm_ip: IpAddr = VM_IP.parse()?;
    step(
        &format!("plugging in the PostgreSQL VM at {VM_IP} on {VM_NODE}'s network (a port stacknet does not own)"),
        async {
            Ok(live
                .add_vm(
                    ObjectKey::new(VM_KEY.0, VM_KEY.1),
                    &format!("{CLUSTER}_{VM_NODE}"),
                    VM_PORT,
                    vm_ip,
                    24,
                    "10.244.3.1".parse()?,
                )
                .await?)
        },
    )
    .await?;

    let made = Made::read(&nb).await?;
    let (index, fabric) = made.expectation(objects);
    let endpoints = live.endpoints();
    let services = service_cases();
    let expected_before = expected(&index, &fabric, &endpoints, &services)?;
    // The gateways' flows and the management ports are the agents' to make, and the routers'
    // neighbours theirs to learn: wait until every path that should answer does (a deadline,
    // not a sleep), then try everything afresh.
    step("waiting for every path that should answer (pairs, gateways, Service probes)", async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let round = tried(&mut live, &index, &fabric, &made, &[], &services).await?;
            let mut pending: Vec<String> = round
                .services
                .iter()
                .zip(&expected_before.services)
                .filter(|((_, l), (_, e))| *e && !*l)
                .map(|((c, _), _)| c.to_string())
                .collect();
            pending.extend(unanswered(&live, &expected_before).await?);
            if pending.is_empty() {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "not answering after 60 s: {}", pending.join("; "));
        }
    })
    .await?;
    live.settle()?;
    let live_before = step("trying every pair and every Service probe for real", async {
        tried(&mut live, &index, &fabric, &made, &endpoints, &services).await
    })
    .await?;
    let first = show(&expected_before, &live_before);

    // The edit, as a user would make it; the controller sees the file change.
    let path = manifests.join(EDIT_FILE);
    let text = std::fs::read_to_string(&path)?;
    anyhow::ensure!(
        text.contains(EDIT_FROM),
        "{} no longer holds the policy the demo edits",
        args.example.join(EDIT_FILE).display()
    );
    let reconciles = observed.metrics.reconciles_ok.load(Ordering::Relaxed);
    say(&format!(
        "Editing {EDIT_FILE}: the web tier keeps taking connections from anywhere, except from the PostgreSQL VM:\n  - {EDIT_FROM}\n  + {EDIT_TO}\n"
    ));
    std::fs::write(&path, text.replace(EDIT_FROM, EDIT_TO))?;
    step("waiting for the controller to follow the file", running.reconciled(reconciles)).await?;
    live.settle()?;
    let (index, fabric) = made.expectation(read_folder(&manifests)?);
    let expected_after = expected(&index, &fabric, &endpoints, &services)?;
    let live_after = step("trying everything again", async {
        tried(&mut live, &index, &fabric, &made, &endpoints, &services).await
    })
    .await?;
    let second = show(&expected_after, &live_after);
    let expected_changes = changes(&expected_before, &expected_after);
    let live_changes = changes(&live_before, &live_after);
    say(&format!(
        "What the edit changed, expected: {}",
        if expected_changes.is_empty() { "nothing".into() } else { expected_changes.join("; ") }
    ));
    say(&format!(
        "What the edit changed, live:     {}",
        if live_changes.is_empty() { "nothing".into() } else { live_changes.join("; ") }
    ));

    let ok = first && second && expected_changes == live_changes;
    let ok = running
        .finish(&args, ok, json(&expected_before, &live_before), live, &manifests, "pods, VM, agents, daemons")
        .await?;
    drop(work);
    Ok(ok)
}
