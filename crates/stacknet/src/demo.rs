//! `stacknet demo`: the seed's application stack on a real node, programmed by the controller
//! from `examples/three-tier/`, next to a VM that Kubernetes does not manage — and proof that
//! the network does what the policies say: every pair of endpoints is tried for real and the
//! live matrix is printed next to the expected one. Then a policy file is edited and the
//! matrices are shown again. Exits 0 only if every live matrix equals its expected one.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use stacknet_controller::manifests::{ManifestSource, SOURCE};
use stacknet_controller::{Controller, ControllerConfig};
use stacknet_engine::objects::{ClusterObject, ContainerPort, ObjectKey, Pod, Protocol};
use stacknet_engine::reach::{self, Matrix, ProbeSpec};
use stacknet_engine::{ClusterIndex, PolicyEngine, manifest};
use stacknet_verify::live::Live;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// The manifests to run (copied to a scratch folder the controller watches).
    #[arg(long, default_value = "examples/three-tier")]
    example: PathBuf,
    /// The CNI plugin (default: `stacknet-cni` next to this executable).
    #[arg(long, value_name = "PATH")]
    cni: Option<PathBuf>,
    /// Stay up after the demo (the node, the controller, the pods) until interrupted.
    #[arg(long)]
    keep: bool,
}

const CLUSTER: &str = "demo";
/// The VM: PostgreSQL outside Kubernetes, on the database node's network.
const VM_KEY: (&str, &str) = ("vm", "postgres");
const VM_PORT: &str = "vm-postgres";
const VM_IP: &str = "10.244.3.200";
const VM_NODE: &str = "node-3";

/// The edit: the web tier stops taking connections from the PostgreSQL VM.
const EDIT_FILE: &str = "policies.yaml";
const EDIT_FROM: &str = "from: [{ipBlock: {cidr: 0.0.0.0/0}}]";
const EDIT_TO: &str = "from: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.244.3.200/32]}}]";

fn probes() -> Vec<ProbeSpec> {
    ["80/TCP", "8000/TCP", "11211/TCP", "5432/TCP", "9100/TCP", "53/UDP"]
        .iter()
        .map(|p| p.parse().expect("valid probe"))
        .collect()
}

fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// Runs `what`, printing its progress line and how long it took.
async fn step<T>(what: &str, f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    {
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

fn read_folder(dir: &Path) -> anyhow::Result<Vec<ClusterObject>> {
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

/// The cluster as the expectation sees it: the manifests plus the VM, which no policy selects
/// and which ipBlocks match by its address (exactly what a hostNetwork pod is to NetworkPolicy).
fn expected_engine(objects: Vec<ClusterObject>) -> PolicyEngine {
    let mut index = ClusterIndex::from_objects(objects);
    index.apply_pod(Pod {
        key: ObjectKey::new(VM_KEY.0, VM_KEY.1),
        uid: None,
        labels: Default::default(),
        ips: vec![VM_IP.parse().expect("valid")],
        status_ips: vec![],
        host_network: true,
        ports: vec![ContainerPort { name: Some("postgres".into()), port: 5432, protocol: Protocol::Tcp }],
        node: None,
        terminated: false,
        network_annotation: None,
    });
    PolicyEngine::from_index(index)
}

/// Expected and live side by side, one block per probe; whether every cell agrees.
fn show(expected: &[Matrix], live: &[Matrix]) -> bool {
    let mut all = true;
    let names: Vec<String> =
        expected.first().map(|m| m.pods.iter().map(|k| k.to_string()).collect()).unwrap_or_default();
    let width = names.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut out = String::from("Rows send, columns receive. ✓ answered, ✗ no answer (OVN dropped it), · self.\n");
    for (i, n) in names.iter().enumerate() {
        out.push_str(&format!("  {:>2} {n}\n", i + 1));
    }
    let cells = |m: &Matrix, i: usize| -> String {
        m.allowed[i]
            .iter()
            .map(|c| match c {
                None => "·",
                Some(true) => "✓",
                Some(false) => "✗",
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    for (e, l) in expected.iter().zip(live) {
        let same = e.pods == l.pods && e.allowed == l.allowed;
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
            let mark = if e.allowed[i] == l.allowed.get(i).cloned().unwrap_or_default() { ' ' } else { '!' };
            out.push_str(&format!("{mark} {:>2} {name:<width$}  {}   {}\n", i + 1, cells(e, i), cells(l, i)));
        }
    }
    say(&out);
    all
}

/// The cells that differ between two rounds: `from → to port: before → after`.
fn changes(before: &[Matrix], after: &[Matrix]) -> Vec<String> {
    let mut out = Vec::new();
    for (b, a) in before.iter().zip(after) {
        let bm: BTreeMap<_, _> = b.pairs().map(|(f, t, v)| ((f.clone(), t.clone()), v)).collect();
        for (f, t, v) in a.pairs() {
            if let Some(old) = bm.get(&(f.clone(), t.clone()))
                && *old != v
            {
                let word = |x: bool| if x { "allowed" } else { "denied" };
                out.push(format!("{f} → {t} {}: {} → {}", a.probe, word(*old), word(v)));
            }
        }
    }
    out
}

pub fn run(args: DemoArgs) -> Result<bool, crate::Failure> {
    if !args.example.is_dir() {
        return Err(crate::Failure::Input(format!(
            "--example {}: not a folder (run the demo from the repository root, or pass --example DIR)",
            args.example.display()
        )));
    }
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

async fn demo(args: DemoArgs, plugin: PathBuf) -> anyhow::Result<bool> {
    say("stacknet demo: the seed's application stack (nginx → Django app + memcached → PostgreSQL),\n\
         programmed into OVN by the controller, next to a PostgreSQL VM Kubernetes does not manage.\n");
    let work = tempfile::Builder::new().prefix("stacknet-demo-").tempdir()?;
    let manifests = work.path().join("manifests");
    std::fs::create_dir(&manifests)?;
    for entry in std::fs::read_dir(&args.example)? {
        let p = entry?.path();
        if p.is_file() {
            std::fs::copy(&p, manifests.join(p.file_name().context("a file name")?))?;
        }
    }

    let mut live = step(
        "starting OVN (Northbound, Southbound, ovn-northd), node-1 (ovs-vswitchd userspace datapath, ovn-controller) and the node agent",
        async { Ok(Live::start(CLUSTER, &plugin).await?) },
    )
    .await?;
    live.timeout = Duration::from_millis(800);
    let nb = live.trace().ovn().nb.remote();

    let mut config = ControllerConfig::new(CLUSTER, vec![nb.parse()?], Some(&manifests));
    config.poll = Duration::from_millis(100);
    let controller = Controller::ovn(&config, &[SOURCE])?;
    let observed = controller.observed();
    let (addr, _http) = controller.serve_http().await?;
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let source = ManifestSource::new(&manifests, Duration::from_millis(100), observed.events.clone())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller_task = tokio::spawn(controller.run(rx, async move {
        let _ = stopped.await;
    }));
    tokio::spawn(source.run(tx));
    let wait_reconciled = |after: u64| {
        let observed = observed.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !(observed.health.ready.load(Ordering::SeqCst)
                && observed.metrics.reconciles_ok.load(Ordering::Relaxed) > after)
            {
                anyhow::ensure!(Instant::now() < deadline, "the controller did not converge within 60 s");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(())
        }
    };
    step(
        &format!("starting the controller on {} (metrics: http://{addr}/metrics)", args.example.display()),
        wait_reconciled(0),
    )
    .await?;

    let objects = read_folder(&manifests)?;
    let pods_only = PolicyEngine::from_index(ClusterIndex::from_objects(objects.clone()));
    let missing = step(
        &format!(
            "starting {} pods: a network namespace each, wired by stacknet-cni as a container runtime calls it",
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

    let probes = probes();
    let engine = expected_engine(objects);
    let expected = reach::direct(engine.index(), &probes);
    let live_before =
        step("trying every pair for real on every probe", async { Ok(live.matrices(&engine, &probes).await?) }).await?;
    let first = show(&expected, &live_before);

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
    step("waiting for the controller to follow the file", wait_reconciled(reconciles)).await?;
    live.settle()?;
    let engine = expected_engine(read_folder(&manifests)?);
    let expected_after = reach::direct(engine.index(), &probes);
    let live_after = step("trying every pair again", async { Ok(live.matrices(&engine, &probes).await?) }).await?;
    let second = show(&expected_after, &live_after);
    let expected_changes = changes(&expected, &expected_after);
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
    say(&format!(
        "\n{}",
        if ok {
            "Every live matrix equals its expected one."
        } else {
            "MISMATCH: the live network differs from what the policies say (see the rows marked !)."
        }
    ));
    let warnings = observed.events.all();
    if !warnings.is_empty() {
        say("Events:");
        for e in warnings {
            say(&format!("  {} {}: {}", e.reason, e.object, e.message));
        }
    }
    if args.keep {
        say(&format!(
            "\nKept up: Northbound {nb}, controller http://{addr}/metrics, manifests in {} (edit them: the network follows).\nCtrl-C or SIGTERM tears everything down.",
            manifests.display()
        ));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), controller_task).await;
    step("tearing down (pods, VM, agent, daemons)", async { Ok(live.shutdown().await?) }).await?;
    drop(work);
    Ok(ok)
}
