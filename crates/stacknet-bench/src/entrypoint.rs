//! entrypoint: how soon `stacknet entrypoint` (the `stacknet-entrypoint` binary) starts its
//! command once the last dependency is met. Each run is one entrypoint process waiting for one
//! dependency; once it is seen waiting, T0 is the moment the bench meets the dependency, T1
//! the moment the command has started.
//!
//! - API: `DEPENDENCY_SERVICE`, against a fake Kubernetes API server on loopback (KUBECONFIG
//!   pointing there, this run's pod applied). Waiting means the pod's `stacknet.io/waiting-for`
//!   annotation lists the Service and the entrypoint's EndpointSlice watch is open; T0 is the
//!   EndpointSlice applied, pointing at a loopback listener that accepts.
//! - Local: `DEPENDENCY_SOCKET`, no API. Waiting means its stderr says so; T0 is the bench
//!   binding the unix socket at that path.
//! - Floor: the same command spawned directly by the bench (T0 the spawn): what starting a
//!   process costs here.
//!
//! The command is `/bin/sh -c :>FIFO` (dash opening a FIFO for writing, nothing else): a
//! thread of the bench is blocked opening that FIFO for reading, and notes T1 the moment the
//! open returns, i.e. when the command's open happened. Of the signals tried (dash or `touch`
//! opening a FIFO, bash connecting to a TCP listener through `/dev/tcp`), the cheapest.
//!
//! Once the entrypoint is seen waiting, the dependency is met after a random delay (uniform
//! below 100 ms), so that T0 falls at any phase of what the entrypoint polls. The three are
//! interleaved run by run, so that the machine's noise falls on all alike. The
//! anchor, kubernetes-entrypoint, looks at every dependency every 2 s: its latency is printed
//! as a model (uniform on [0, 2 s)), not measured.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use stacknet_testsupport::kubeapi::ApiServer;

use crate::jsonline;

pub struct Args {
    pub runs: usize,
    /// The stacknet-entrypoint executable (default: next to this one).
    pub binary: Option<PathBuf>,
}

const NS: &str = "bench";
const SERVICE: &str = "svc";
const SLICE: &str = "svc-bench";
const SLICES: &str = "discovery.k8s.io/v1/endpointslices";
const PATH: &str = "/usr/bin:/bin";
/// How long any one step may take before the run is an error.
const DEADLINE: Duration = Duration::from_secs(30);
/// Once the entrypoint is seen waiting, the dependency is met after a random delay below this:
/// at any phase of whatever it polls (files every 25 ms), as a real dependency would be, not
/// just after the look that said it was waiting.
const DEPHASE: Duration = Duration::from_millis(100);
/// kubernetes-entrypoint looks at every dependency this often.
const ANCHOR_PERIOD_MS: f64 = 2000.0;
/// The target: the command started within this long of the last dependency met.
const TARGET_MS: f64 = 100.0;

/// The command's signal: a FIFO, and a thread blocked opening it for reading that sends the
/// instant each open returns (a writer has opened it: the command has started), then holds it
/// until the writer closes it (`:>` writes nothing).
struct Signal {
    fifo: PathBuf,
    rx: tokio::sync::mpsc::UnboundedReceiver<Instant>,
    /// The reader is (about to be) blocked opening the FIFO, and does not hold it open: a
    /// writer's open now meets that open, not the one before.
    armed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Signal {
    fn new(dir: &Path) -> anyhow::Result<Signal> {
        let fifo = dir.join("started.fifo");
        anyhow::ensure!(
            !fifo.to_string_lossy().contains(char::is_whitespace),
            "{}: COMMAND is split on whitespace; set TMPDIR to a path without any",
            fifo.display()
        );
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU)
            .with_context(|| format!("mkfifo {}", fifo.display()))?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (armed, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (path, is_armed, stopped) = (fifo.clone(), armed.clone(), stop.clone());
        let thread = std::thread::Builder::new().name("fifo-reader".into()).spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                is_armed.store(true, Ordering::SeqCst);
                let opened = std::fs::File::open(&path);
                let at = Instant::now();
                is_armed.store(false, Ordering::SeqCst);
                match opened {
                    Ok(mut f) => {
                        if stopped.load(Ordering::SeqCst) || tx.send(at).is_err() {
                            return;
                        }
                        let _ = f.read_to_end(&mut Vec::new());
                    }
                    Err(e) => {
                        eprintln!("opening {}: {e}", path.display());
                        return;
                    }
                }
            }
        })?;
        Ok(Signal { fifo, rx, armed, stop, thread: Some(thread) })
    }

    /// Forgets any signal left over (none are expected) and waits until the reader is ready
    /// for the next.
    async fn ready(&mut self) -> anyhow::Result<()> {
        while self.rx.try_recv().is_ok() {}
        let deadline = Instant::now() + DEADLINE;
        while !self.armed.load(Ordering::SeqCst) {
            anyhow::ensure!(Instant::now() < deadline, "the FIFO's reader is not back within {DEADLINE:?}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// The command, as `COMMAND` says it (split on whitespace).
    fn command(&self) -> String {
        format!("/bin/sh -c :>{}", self.fifo.display())
    }

    /// The instant `child` (or the command it became) opened the FIFO; an error if it exits or
    /// takes too long first.
    async fn wait(&mut self, child: &mut Proc, what: &str) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match tokio::time::timeout(Duration::from_millis(50), self.rx.recv()).await {
                Ok(Some(at)) => return Ok(at),
                Ok(None) => anyhow::bail!("the FIFO's reader ended"),
                Err(_) => {}
            }
            if let Some(status) = child.0.try_wait()? {
                // The signal may be on its way still.
                if let Ok(Some(at)) = tokio::time::timeout(Duration::from_secs(1), self.rx.recv()).await {
                    return Ok(at);
                }
                anyhow::bail!("{what}: exited ({status}) without starting the command{}", child.stderr());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{what}: the command not started within {DEADLINE:?}{}",
                child.stderr()
            );
        }
    }
}

impl Drop for Signal {
    fn drop(&mut self) {
        // Wake the reader (blocked in open) so that it sees the stop: a writer's open that
        // does not block (it fails while no reader is there yet).
        use std::os::unix::fs::OpenOptionsExt;
        self.stop.store(true, Ordering::SeqCst);
        let Some(t) = self.thread.take() else { return };
        let deadline = Instant::now() + Duration::from_secs(1);
        while !t.is_finished() && Instant::now() < deadline {
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
                .open(&self.fifo);
            std::thread::sleep(Duration::from_millis(1));
        }
        if t.is_finished() {
            let _ = t.join();
        }
    }
}

/// A child process, killed if still running when dropped; its stderr in a file.
struct Proc(Child, Option<PathBuf>);

impl Proc {
    /// Its stderr, to show with an error.
    fn stderr(&self) -> String {
        self.1
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|s| format!("; its stderr:\n{s}"))
            .unwrap_or_default()
    }

    /// Waits for it to exit, successfully.
    async fn exited(&mut self, what: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.0.try_wait()? {
                anyhow::ensure!(status.success(), "{what}: the command exited with {status}{}", self.stderr());
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "{what}: the command still runs after {DEADLINE:?}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Polls `ok` every 2 ms until it holds; an error if `child` exits first, or after [`DEADLINE`].
async fn until(what: &str, child: &mut Proc, mut ok: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if ok() {
            return Ok(());
        }
        if let Some(status) = child.0.try_wait()? {
            anyhow::bail!("{what}: the entrypoint exited ({status}) first{}", child.stderr());
        }
        anyhow::ensure!(Instant::now() < deadline, "{what}: not within {DEADLINE:?}{}", child.stderr());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The entrypoint with only `vars` in its environment (and PATH), its stderr into `stderr`.
fn entrypoint(binary: &Path, vars: &[(&str, String)], stderr: &Path) -> anyhow::Result<Proc> {
    let mut c = Command::new(binary);
    c.env_clear().env("PATH", PATH).stdin(Stdio::null()).stdout(Stdio::null());
    c.stderr(std::fs::File::create(stderr)?);
    for (k, v) in vars {
        c.env(k, v);
    }
    Ok(Proc(c.spawn().with_context(|| format!("running {}", binary.display()))?, Some(stderr.to_path_buf())))
}

/// What pod `name` says it waits for (its annotation), if it says.
fn waiting_for(api: &ApiServer, name: &str) -> Option<Vec<String>> {
    let pod = api.get("v1", "pods", NS, name)?;
    serde_json::from_str(pod["metadata"]["annotations"]["stacknet.io/waiting-for"].as_str()?).ok()
}

fn slice_watches(api: &ApiServer) -> usize {
    api.watches().iter().filter(|w| w.resource == SLICES).count()
}

/// The floor: the command spawned directly.
async fn floor_run(signal: &mut Signal) -> anyhow::Result<f64> {
    signal.ready().await?;
    let command = signal.command();
    let argv: Vec<&str> = command.split_whitespace().collect();
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..]).env_clear().env("PATH", PATH).stdin(Stdio::null()).stdout(Stdio::null());
    let t0 = Instant::now();
    let mut child = Proc(c.spawn()?, None);
    let t1 = signal.wait(&mut child, "the command spawned directly").await?;
    child.exited("the command spawned directly").await?;
    Ok(t1.duration_since(t0).as_secs_f64() * 1e3)
}

/// What the API runs share.
#[derive(Clone, Copy)]
struct Cluster<'a> {
    binary: &'a Path,
    api: &'a ApiServer,
    config: &'a Path,
    /// The loopback port the Service's endpoint accepts on.
    endpoint: u16,
    dir: &'a Path,
}

/// Run `i` with the API: the entrypoint waits for Service `svc`; T0 its EndpointSlice.
async fn api_run(i: usize, at: &Cluster<'_>, signal: &mut Signal, dephase: Duration) -> anyhow::Result<f64> {
    let Cluster { binary, api, config, endpoint, dir } = *at;
    signal.ready().await?;
    let pod = format!("bench-{i}");
    api.apply(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "namespace": NS, "uid": format!("uid-{pod}")},
        "spec": {"nodeName": "n1", "containers": [{"name": "main"}]}}));
    let watches = slice_watches(api);
    let vars = [
        ("KUBECONFIG", config.display().to_string()),
        ("POD_NAME", pod.clone()),
        ("NAMESPACE", NS.to_string()),
        ("DEPENDENCY_SERVICE", SERVICE.to_string()),
        ("COMMAND", signal.command()),
    ];
    let what = format!("API run {i}");
    let mut child = entrypoint(binary, &vars, &dir.join(format!("api-{i}.stderr")))?;
    let service = format!("Service {NS}/{SERVICE}:");
    until(&format!("{what}: waiting for the Service, its EndpointSlices watched"), &mut child, || {
        waiting_for(api, &pod).is_some_and(|w| w.iter().any(|l| l.starts_with(&service)))
            && slice_watches(api) > watches
    })
    .await?;
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": SLICE, "namespace": NS, "labels": {"kubernetes.io/service-name": SERVICE}},
        "addressType": "IPv4", "ports": [{"port": endpoint, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]});
    tokio::time::sleep(dephase).await;
    let t0 = Instant::now();
    api.apply(slice);
    let t1 = signal.wait(&mut child, &what).await?;
    child.exited(&what).await?;
    api.delete("discovery.k8s.io/v1", "endpointslices", NS, SLICE);
    Ok(t1.duration_since(t0).as_secs_f64() * 1e3)
}

/// Run `i` without the API: the entrypoint waits for a unix socket; T0 the bench binds it.
async fn local_run(i: usize, binary: &Path, dir: &Path, signal: &mut Signal, dephase: Duration) -> anyhow::Result<f64> {
    signal.ready().await?;
    let socket = dir.join(format!("dep-{i}.sock"));
    let stderr = dir.join(format!("local-{i}.stderr"));
    let vars = [("DEPENDENCY_SOCKET", socket.display().to_string()), ("COMMAND", signal.command())];
    let what = format!("local run {i}");
    let mut child = entrypoint(binary, &vars, &stderr)?;
    let line = format!("waiting for socket {}", socket.display());
    until(&format!("{what}: waiting for the socket"), &mut child, || {
        std::fs::read_to_string(&stderr).is_ok_and(|s| s.contains(&line))
    })
    .await?;
    tokio::time::sleep(dephase).await;
    let t0 = Instant::now();
    let listener = std::os::unix::net::UnixListener::bind(&socket)?;
    let t1 = signal.wait(&mut child, &what).await?;
    child.exited(&what).await?;
    drop(listener);
    std::fs::remove_file(&socket)?;
    Ok(t1.duration_since(t0).as_secs_f64() * 1e3)
}

fn ms(v: f64) -> Value {
    json!((v * 100.0).round() / 100.0)
}

fn ratio(a: f64, b: f64) -> Value {
    json!((a / b * 10_000.0).round() / 10_000.0)
}

/// p50, p99, max, mean of `v` (sorted here).
fn stats(v: &mut [f64]) -> (f64, f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let mean = if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
    (crate::percentile(v, 0.5), crate::percentile(v, 0.99), crate::percentile(v, 1.0), mean)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!((1..=100_000).contains(&args.runs), "--runs must be between 1 and 100000");
    let binary = crate::podready::find_sibling(args.binary, "stacknet-entrypoint", "stacknet-entrypoint")?;
    let dir = tempfile::tempdir()?;
    let mut signal = Signal::new(dir.path())?;
    let api = ApiServer::start().await;
    let config = api.kubeconfig(dir.path(), Some(NS))?;
    // The Service's endpoint: accepts every connection (the entrypoint dials it once a run).
    let endpoint = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = endpoint.local_addr()?.port();
    let acceptor = tokio::spawn(async move {
        while let Ok((conn, _)) = endpoint.accept().await {
            drop(conn);
        }
    });

    let (mut floor, mut api_ms, mut local_ms) = (Vec::new(), Vec::new(), Vec::new());
    let cluster = Cluster { binary: &binary, api: &api, config: &config, endpoint: port, dir: dir.path() };
    let mut rng = crate::generator::Rng::new(1);
    let mut dephase = || Duration::from_micros(rng.below(DEPHASE.as_micros() as usize) as u64);
    for i in 0..args.runs {
        floor.push(floor_run(&mut signal).await.context("the floor")?);
        let d = dephase();
        api_ms.push(api_run(i, &cluster, &mut signal, d).await.context("the API dependency")?);
        let d = dephase();
        local_ms.push(local_run(i, &binary, dir.path(), &mut signal, d).await.context("the socket dependency")?);
    }
    acceptor.abort();

    let (f50, f99, fmax, fmean) = stats(&mut floor);
    println!(
        "{}",
        jsonline::line(&[
            ("bench", json!("entrypoint")),
            ("what", json!("floor: the command spawned directly")),
            ("measured", json!(true)),
            ("command", json!("/bin/sh -c :>FIFO")),
            ("runs", json!(args.runs)),
            ("p50_ms", ms(f50)),
            ("p99_ms", ms(f99)),
            ("max_ms", ms(fmax)),
            ("mean_ms", ms(fmean)),
        ])
    );
    let (model_p50, model_p99) = (ANCHOR_PERIOD_MS * 0.5, ANCHOR_PERIOD_MS * 0.99);
    for (what, v) in [
        ("stacknet: DEPENDENCY_SERVICE, watched through the API", &mut api_ms),
        ("stacknet: DEPENDENCY_SOCKET, no API", &mut local_ms),
    ] {
        let (p50, p99, max, mean) = stats(v);
        println!(
            "{}",
            jsonline::line(&[
                ("bench", json!("entrypoint")),
                ("what", json!(what)),
                ("measured", json!(true)),
                ("runs", json!(args.runs)),
                ("p50_ms", ms(p50)),
                ("p99_ms", ms(p99)),
                ("max_ms", ms(max)),
                ("mean_ms", ms(mean)),
                ("over_floor_p50_ms", ms(p50 - f50)),
                ("over_floor_p99_ms", ms(p99 - f99)),
                ("model_p50_ratio", ratio(p50, model_p50)),
                ("model_p99_ratio", ratio(p99, model_p99)),
                ("target_p99_ms", json!(TARGET_MS)),
                ("p99_within_target", json!(p99 <= TARGET_MS)),
            ])
        );
    }
    println!(
        "{}",
        jsonline::line(&[
            ("bench", json!("entrypoint")),
            ("what", json!("model: kubernetes-entrypoint, every dependency polled every 2 s (not measured)")),
            ("measured", json!(false)),
            ("model", json!("uniform on [0, 2000) ms")),
            ("p50_ms", ms(model_p50)),
            ("p99_ms", ms(model_p99)),
            ("max_ms", ms(ANCHOR_PERIOD_MS)),
            ("mean_ms", ms(ANCHOR_PERIOD_MS * 0.5)),
            ("target_p99_ms", json!(TARGET_MS)),
            ("p99_within_target", json!(model_p99 <= TARGET_MS)),
        ])
    );
    Ok(())
}
