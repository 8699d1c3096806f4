//! controller: the whole controller (`stacknet controller`, the real binary, as a process) on
//! generated manifests — `nodes` nodes, `pods` pods over 100 namespaces, `policies` policies,
//! `services` Services with their EndpointSlices — into a live Northbound database (its own
//! ovsdb-server). Figures: time to converge from a cold start, the process's peak RSS, a
//! restart with nothing changed (time to converge, transactions written), and a burst of 1,000
//! new pods in one file (time until all their ports are in the Northbound database, as a
//! client monitoring it sees them). Next to each, the floor: the CPU time the Northbound
//! ovsdb-server itself spent on the same writes (one thread: nothing converges faster).
//! Without `--pods` etc., two points: 10k pods / 1k policies / 1k Services / 100 nodes and
//! 50k / 5k / 5k / 500.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use stacknet_sandbox::Ovn;

use crate::generator::Rng;
use crate::jsonline;

pub struct Args {
    pub pods: usize,
    pub policies: usize,
    pub services: usize,
    pub nodes: usize,
    pub seed: u64,
    pub stacknet: Option<PathBuf>,
}

/// The points run when none is given: (pods, policies, services, nodes).
pub const DEFAULT_POINTS: [(usize, usize, usize, usize); 2] =
    [(10_000, 1_000, 1_000, 100), (50_000, 5_000, 5_000, 500)];

/// CPU seconds (user + system) process `pid` has used.
fn cpu_s(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').context("/proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse::<f64>().ok()).context("utime")?
        + fields.get(12).and_then(|v| v.parse::<f64>().ok()).context("stime")?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.context("CLK_TCK")? as f64;
    Ok(ticks / hz)
}

fn round2(v: f64) -> serde_json::Value {
    json!((v * 100.0).round() / 100.0)
}

const NAMESPACES: usize = 100;
const TIERS: [&str; 5] = ["web", "api", "db", "cache", "worker"];
const PORTS: [(u16, &str); 5] =
    [(8080, "http"), (9000, "grpc"), (5432, "postgres"), (6379, "redis"), (9100, "metrics")];
const DEADLINE: Duration = Duration::from_secs(600);

fn ns(i: usize) -> String {
    format!("team{}-app{}", i % 17, i)
}

/// Namespaces, nodes and pods: pod `i` is in namespace `i % 100`, tier `(i / 100) % 5`.
fn cluster(pods: usize, nodes: usize, namespace_prefix: &str, first: usize) -> String {
    let mut y = String::from("apiVersion: v1\nkind: List\nitems:\n");
    if first == 0 {
        for n in 0..NAMESPACES {
            let _ = writeln!(
                y,
                "- {{apiVersion: v1, kind: Namespace, metadata: {{name: {}, labels: {{team: team{}, env: {}}}}}}}",
                ns(n),
                n % 17,
                ["prod", "staging", "dev"][n % 3]
            );
        }
        for n in 0..nodes {
            let _ = writeln!(y, "- {{apiVersion: v1, kind: Node, metadata: {{name: node{n}}}}}");
        }
    }
    for i in first..first + pods {
        let tier = TIERS[(i / NAMESPACES) % TIERS.len()];
        let (port, name) = PORTS[(i / NAMESPACES) % PORTS.len()];
        let _ = writeln!(
            y,
            "- {{apiVersion: v1, kind: Pod, metadata: {{name: {namespace_prefix}p{i}, namespace: {}, uid: uid-{namespace_prefix}{i}, labels: {{app: app{}, tier: {tier}}}}}, spec: {{nodeName: node{}, containers: [{{name: c, ports: [{{containerPort: {port}, name: {name}}}, {{containerPort: 9100, name: metrics}}]}}]}}}}",
            ns(i % NAMESPACES),
            i % 3,
            i % nodes
        );
    }
    y
}

/// Realistic policies: per namespace a default deny, tier-to-tier allows (named ports),
/// cross-namespace allows by namespace label, monitoring scrapes, ipBlock egress with excepts.
fn policies(count: usize, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut y = String::new();
    for j in 0..count {
        let namespace = ns(j % NAMESPACES);
        let kind = j / NAMESPACES % 5;
        let tier = TIERS[rng.below(TIERS.len())];
        let from = TIERS[rng.below(TIERS.len())];
        let spec = match kind {
            0 => "{podSelector: {}, policyTypes: [Ingress]}".to_string(),
            1 => format!(
                "{{podSelector: {{matchLabels: {{tier: {tier}}}}}, ingress: [{{from: [{{podSelector: {{matchLabels: {{tier: {from}}}}}}}], ports: [{{port: {}}}]}}]}}",
                PORTS[rng.below(4)].1
            ),
            2 => format!(
                "{{podSelector: {{matchLabels: {{tier: {tier}}}}}, ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{team: team{}}}}}, podSelector: {{matchExpressions: [{{key: tier, operator: In, values: [{from}, web]}}]}}}}], ports: [{{port: 8000, endPort: 8100}}]}}]}}",
                rng.below(17)
            ),
            3 => "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}], ports: [{port: metrics}]}]}".to_string(),
            _ => format!(
                "{{podSelector: {{matchLabels: {{tier: {tier}}}}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: 0.0.0.0/0, except: [10.0.0.0/8, 172.16.0.0/12, 192.168.{}.0/24]}}}}], ports: [{{port: 443}}]}}, {{to: [{{namespaceSelector: {{}}, podSelector: {{matchLabels: {{tier: {from}}}}}}}]}}]}}",
                rng.below(256)
            ),
        };
        let _ = writeln!(
            y,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np{j}, namespace: {namespace}}}\nspec: {spec}"
        );
    }
    y
}

/// Services with an EndpointSlice each, 10 endpoints drawn from the service's namespace.
fn services(count: usize, pods: usize) -> String {
    let mut y = String::new();
    for s in 0..count {
        let n = s % NAMESPACES;
        let namespace = ns(n);
        let vip = format!("10.96.{}.{}", s / 250, s % 250 + 1);
        let _ = writeln!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc{s}, namespace: {namespace}}}\nspec: {{clusterIP: {vip}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}"
        );
        let mut eps = String::new();
        let in_ns: Vec<usize> = (0..pods).filter(|i| i % NAMESPACES == n).collect();
        for k in 0..10.min(in_ns.len()) {
            let i = in_ns[(s / NAMESPACES * 10 + k) % in_ns.len()];
            let _ = write!(
                eps,
                "{{addresses: [10.{}.{}.{}], conditions: {{ready: true}}}},",
                200 + i % 50,
                i / 250 % 250,
                i % 250 + 2
            );
        }
        let _ = writeln!(
            y,
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc{s}-1, namespace: {namespace}, labels: {{kubernetes.io/service-name: svc{s}}}}}\naddressType: IPv4\nendpoints: [{}]\nports: [{{name: http, port: 8080, protocol: TCP}}]",
            eps.trim_end_matches(',')
        );
    }
    y
}

pub(crate) struct Running {
    pub child: Child,
    pub addr: SocketAddr,
}

/// `stacknet controller` on the folder `dir`, with `extra` arguments.
pub(crate) fn spawn(stacknet: &Path, nb: &str, dir: &Path, extra: &[&str]) -> anyhow::Result<Running> {
    let mut child = Command::new(stacknet)
        .args([
            "controller",
            "--cluster",
            "bench",
            "--nb",
            nb,
            "--metrics-addr",
            "127.0.0.1:0",
            "--cluster-cidr",
            "10.128.0.0/9",
        ])
        .args(extra)
        .arg("--manifests")
        .arg(dir)
        // The controller's log is the bench's only when asked for (`STACKNET_LOG` set).
        .env("STACKNET_LOG", std::env::var("STACKNET_LOG").unwrap_or_else(|_| "error".into()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", stacknet.display()))?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().context("the controller ended before printing its address")??;
        if let Some(rest) = line.split("http://").nth(1) {
            break rest.split('/').next().context("address")?.parse()?;
        }
    };
    let show = std::env::var_os("STACKNET_LOG").is_some();
    std::thread::spawn(move || {
        for line in lines.by_ref().map_while(Result::ok) {
            if show {
                eprintln!("{line}");
            }
        }
    });
    Ok(Running { child, addr })
}

fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some((text.split_whitespace().nth(1)?.parse().ok()?, text.split("\r\n\r\n").nth(1).unwrap_or_default().into()))
}

pub(crate) fn metric(addr: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let (_, text) = get(addr, "/metrics").context("no /metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {name} in /metrics"))
}

pub(crate) fn wait_ready(r: &mut Running) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    while get(r.addr, "/readyz").map(|x| x.0) != Some(200) {
        if let Some(status) = r.child.try_wait()? {
            anyhow::bail!("the controller exited ({status}) before converging");
        }
        anyhow::ensure!(Instant::now() < deadline, "the controller did not converge within {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn peak_rss_mb(pid: u32) -> anyhow::Result<f64> {
    status_mb(pid, "VmHWM:")
}

fn status_mb(pid: u32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmHWM")?;
    Ok(kb / 1024.0)
}

pub(crate) fn stop(mut r: Running) -> anyhow::Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(r.child.id() as i32), nix::sys::signal::Signal::SIGTERM)?;
    r.child.wait()?;
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.nodes > 0 && args.pods > 0, "--nodes and --pods must be at least 1");
    let stacknet = crate::podready::find_sibling(args.stacknet, "stacknet", "stacknet")?;
    let ovn = Ovn::nb_only().context("starting ovsdb-server")?;
    let dir = tempfile::Builder::new().prefix("stacknet-bench-controller-").tempdir()?;
    std::fs::write(dir.path().join("10-cluster.yaml"), cluster(args.pods, args.nodes, "", 0))?;
    std::fs::write(dir.path().join("20-policies.yaml"), policies(args.policies, args.seed))?;
    std::fs::write(dir.path().join("30-services.yaml"), services(args.services, args.pods))?;
    let nb = ovn.nb.remote();
    let server = *ovn.nb.pids().first().context("the database's pid")?;

    let server_before = cpu_s(server)?;
    let t = Instant::now();
    let mut r = spawn(&stacknet, &nb, dir.path(), &[])?;
    wait_ready(&mut r)?;
    let converge = t.elapsed();
    let converge_server = cpu_s(server)? - server_before;
    let converged_rss = status_mb(r.child.id(), "VmRSS:")?;
    let first_peak = peak_rss_mb(r.child.id())?;

    // A burst: 1,000 new pods in one new file, seen arriving by a client monitoring the
    // database's ports (polling with ovn-nbctl would load the server the bench measures).
    let burst = 1000;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let mut config = stacknet_ovsdb::ClientConfig::new(vec![nb.parse()?], stacknet_ovsdb::nb::DATABASE);
    config.tables = Some(vec![stacknet_ovsdb::nb::LOGICAL_SWITCH_PORT.to_string()]);
    let watcher = runtime.block_on(async { stacknet_ovsdb::Client::start(config) });
    let count = |r: &stacknet_ovsdb::Replica, prefix: &str| {
        r.table(stacknet_ovsdb::nb::LOGICAL_SWITCH_PORT)
            .rows()
            .filter(|(_, row)| row.get("name").and_then(|d| d.as_str()).is_some_and(|n| n.contains(prefix)))
            .count()
    };
    runtime
        .block_on(watcher.wait_until(Duration::from_secs(60), |r| count(r, "_p") == args.pods))
        .with_context(|| format!("not {} pod ports in the Northbound database after converging", args.pods))?;
    let server_before = cpu_s(server)?;
    let t = Instant::now();
    std::fs::write(dir.path().join("40-burst.yaml"), cluster(burst, args.nodes, "burst", args.pods))?;
    runtime
        .block_on(watcher.wait_until(DEADLINE, |r| count(r, "_burstp") == burst))
        .context("the burst did not reach the Northbound database")?;
    let burst_s = t.elapsed();
    let burst_server = cpu_s(server)? - server_before;
    drop(watcher);
    drop(runtime);
    let peak = peak_rss_mb(r.child.id())?;
    stop(r)?;

    // Restart with nothing changed.
    let t = Instant::now();
    let mut r = spawn(&stacknet, &nb, dir.path(), &[])?;
    wait_ready(&mut r)?;
    let restart = t.elapsed();
    let writes = metric(r.addr, "stacknet_ovsdb_transactions_total")?;
    let restart_peak = peak_rss_mb(r.child.id())?;
    stop(r)?;

    let point = [
        ("bench", json!("controller")),
        ("pods", json!(args.pods)),
        ("policies", json!(args.policies)),
        ("services", json!(args.services)),
        ("nodes", json!(args.nodes)),
    ];
    println!(
        "{}",
        jsonline::line(
            &[
                &point[..],
                &[
                    ("converge_s", json!((converge.as_secs_f64() * 100.0).round() / 100.0)),
                    ("peak_rss_mb", json!(peak.max(restart_peak).round())),
                    ("first_converge_peak_rss_mb", json!(first_peak.round())),
                    ("converged_rss_mb", json!(converged_rss.round())),
                    ("restart_peak_rss_mb", json!(restart_peak.round())),
                    ("restart_converge_s", json!((restart.as_secs_f64() * 100.0).round() / 100.0)),
                    ("restart_nb_writes", json!(writes)),
                    ("burst_1000_s", json!((burst_s.as_secs_f64() * 100.0).round() / 100.0)),
                ],
            ]
            .concat()
        )
    );
    println!(
        "{}",
        jsonline::line(
            &[
                &point[..],
                &[
                    ("client", json!("floor: the Northbound ovsdb-server's own CPU time for the same writes")),
                    ("converge_s", round2(converge_server)),
                    ("burst_1000_s", round2(burst_server)),
                    ("converge_ratio", round2(converge.as_secs_f64() / converge_server.max(0.01))),
                    ("burst_ratio", round2(burst_s.as_secs_f64() / burst_server.max(0.01))),
                ],
            ]
            .concat()
        )
    );
    Ok(())
}
