//! `stacknet-bench drain`: the compute drain (`stacknet compute-drain`, run in-process through
//! [`stacknet_drain::run::run_with`]) emptying a hypervisor, next to the same moves issued to
//! Nova directly. One cloud (the sandbox's real Nova: nova-api, conductor, scheduler and two
//! nova-compute processes with the fake driver, `compute-1` and `compute-2`); `--instances`
//! servers booted on compute-1, every 5th (from the 3rd) stopped, so that both live migration
//! and cold migration with its confirmation are exercised.
//!
//! - Floor (Nova alone): compute-1's service disabled through the API, then the servers moved
//!   by the bench itself with the same parallelism: an ACTIVE one live-migrated, a SHUTOFF one
//!   cold-migrated and confirmed once Nova has it in VERIFY_RESIZE; `--parallel` moves under
//!   way at once, a slot free once its server is off compute-1 (a cold one's confirmation
//!   sent), as the drain counts them; each server under way read 100 ms after the last reads
//!   were answered. `floor_s`: from before the service is looked up until no server is left on
//!   compute-1 and every confirmation is sent (what the drain's condition True says);
//!   `settled_s` (its line): until every server is on compute-2 in its first state with no
//!   task. Its Nova calls until `floor_s` are counted apart: actions (the service listed and
//!   disabled, moves, confirmations) and polls (the servers read).
//! - Between the two, compute-1 is enabled again and the bench waits until the scheduler
//!   may place servers there: its Placement provider without `COMPUTE_STATUS_DISABLED`, a
//!   trait Nova's enable removes through the compute service, best effort. When that update
//!   fails (Placement refused it in 5 of 20 runs here: a 409 generation conflict, a 500),
//!   the trait stays until the compute's periodic task a minute later and every move to the
//!   host fails at once: the drain then took 77 s instead of 7, its moves failed three
//!   times and retried after its backoff. The bench sends the enable again every 2 s until
//!   the trait is gone.
//! - Ours: the servers now on compute-2; a fake Kubernetes API on loopback holding Nodes
//!   compute-1 and compute-2; the drainer (`--interval-ms` while draining, idle every second)
//!   watching them. Once it holds compute-2 (its hold pod and budget exist), T0 is the cordon of
//!   Node compute-2. `disable_s`: T0 to compute-2's service disabled in Nova (read every 50 ms);
//!   `drain_s`: T0 to the Node's `ComputeDrained` condition True; `settled_s`: T0 to every
//!   server on compute-1 in its first state with no task (read once the condition is True).
//!   `nova_calls_per_instance`: every call of the drainer's session between T0 and the
//!   condition True, its polls of Nova (servers, migrations and services every interval)
//!   included, per instance. `failed_moves`: migrations out of compute-2 Nova failed (the
//!   drainer retries them after its backoff).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde_json::{Value, json};
use stacknet_openstack::cloud::Service;
use stacknet_openstack::{Call, Cloud, CloudSource, nova};
use stacknet_sandbox::{OpenStack, OpenStackOptions};
use stacknet_testsupport::kubeapi::{ApiServer, merge_patch};

use crate::jsonline::line;

pub struct Args {
    pub instances: usize,
    pub parallel: u32,
    pub interval_ms: u64,
}

const FROM: &str = "compute-1";
const TO: &str = "compute-2";
const NS: &str = "stacknet-system";
/// How often the floor reads each server under way.
const FLOOR_POLL: Duration = Duration::from_millis(100);
/// How often the bench reads compute-2's service while waiting for the drain to disable it.
const SERVICE_POLL: Duration = Duration::from_millis(50);
/// How often the bench reads the Node's condition (in-process: cheap).
const CONDITION_POLL: Duration = Duration::from_millis(10);
/// How long the drainer may take to hold compute-2, or to disable its service.
const STEP: Duration = Duration::from_secs(90);
/// Servers booted at once.
const BOOTS_AT_ONCE: usize = 5;

/// The drainer's options, parsed as `stacknet compute-drain` parses them.
#[derive(Parser)]
struct DrainCli {
    #[command(flatten)]
    args: stacknet_drain::Args,
}

/// A spawned task, aborted when dropped (on an error path too).
struct Task(tokio::task::JoinHandle<Result<(), String>>);

impl Task {
    /// An error if the task ended (the drainer runs until aborted).
    async fn alive(&mut self) -> anyhow::Result<()> {
        if self.0.is_finished() {
            let why = match (&mut self.0).await {
                Ok(Ok(())) => "it returned".to_string(),
                Ok(Err(e)) => e,
                Err(e) => e.to_string(),
            };
            anyhow::bail!("the drainer stopped: {why}");
        }
        Ok(())
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A server booted for the bench, and the state it was in before any move.
#[derive(Clone)]
struct Booted {
    id: String,
    status: &'static str,
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn ratio(a: Duration, b: Duration) -> Value {
    json!((a.as_secs_f64() / b.as_secs_f64() * 100.0).round() / 100.0)
}

fn per(calls: u64, n: usize) -> Value {
    json!(((calls as f64 / n as f64) * 100.0).round() / 100.0)
}

/// One server as Nova's API shows it now.
async fn server(session: &Cloud, id: &str) -> anyhow::Result<nova::Server> {
    let call = Call::get(Service::Compute, format!("servers/{id}")).microversion(nova::MICROVERSION).answer("server");
    Ok(session.call(call).await?)
}

/// The nova-compute service of `host`.
async fn service(session: &Cloud, host: &str) -> anyhow::Result<nova::ComputeService> {
    let call = Call::get(Service::Compute, "os-services")
        .microversion(nova::MICROVERSION)
        .query("binary", "nova-compute")
        .query("host", host)
        .answer("services");
    let mut all: Vec<nova::ComputeService> = session.call(call).await?;
    all.pop().ok_or_else(|| anyhow::anyhow!("Nova lists no nova-compute service on {host}"))
}

/// Whether a server sits on `host` in the state it was booted into, nothing under way.
fn settled(s: &nova::Server, host: &str, status: &str) -> bool {
    s.host.as_deref() == Some(host) && s.status == status && s.task_state.is_none()
}

/// Boots `n` servers on compute-1, every 5th (from the 3rd) then stopped; a few at a time.
fn boot(cloud: &OpenStack, n: usize) -> anyhow::Result<Vec<Booted>> {
    let mut booted = Vec::with_capacity(n);
    let indices: Vec<usize> = (0..n).collect();
    for chunk in indices.chunks(BOOTS_AT_ONCE) {
        let got: Vec<anyhow::Result<Booted>> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|&i| {
                    s.spawn(move || -> anyhow::Result<Booted> {
                        let id =
                            cloud.boot(&format!("bench-{i}"), FROM).with_context(|| format!("booting bench-{i}"))?;
                        if i % 5 == 2 {
                            cloud.stop_server(&id).with_context(|| format!("stopping bench-{i}"))?;
                            return Ok(Booted { id, status: "SHUTOFF" });
                        }
                        Ok(Booted { id, status: "ACTIVE" })
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a boot panicked")))).collect()
        });
        for b in got {
            booted.push(b?);
        }
    }
    Ok(booted)
}

/// What the floor measured.
struct Floor {
    /// Until no server was left on compute-1 and every confirmation was sent: what the Node's
    /// condition True says of ours.
    emptied: Duration,
    /// Until every server was on compute-2 in its first state, nothing under way.
    settled: Duration,
    /// Calls until emptied other than reading servers: the service listed and disabled, moves,
    /// confirmations.
    action_calls: u64,
    /// Servers read until emptied.
    poll_calls: u64,
    /// The most moves under way at once.
    max_under_way: usize,
}

/// A server of the floor's, under way.
enum Move {
    /// Live-migrating, still on compute-1.
    Live,
    /// Cold-migrating, not yet waiting for its confirmation.
    Cold,
    /// Off compute-1 (a cold one's confirmation sent): its slot is free, as the drain's is;
    /// done once in its first state on compute-2 with no task.
    Landing,
}

/// The floor: compute-1 disabled and its servers moved to compute-2 by the bench, `parallel`
/// moves under way at once.
async fn floor(session: &Cloud, servers: &[Booted], parallel: usize, deadline: Duration) -> anyhow::Result<Floor> {
    let (act, poll) = (session.counted_apart(), session.counted_apart());
    let moving = |under_way: &[(&Booted, Move)]| under_way.iter().filter(|(_, m)| !matches!(m, Move::Landing)).count();
    let started = Instant::now();
    let from = service(&act, FROM).await?;
    nova::set_service(&act, &from.id, false, Some("stacknet-bench drain: the floor")).await?;
    let mut waiting: std::collections::VecDeque<&Booted> = servers.iter().collect();
    let mut under_way: Vec<(&Booted, Move)> = Vec::new();
    let (mut max_under_way, mut emptied) = (0, None);
    loop {
        for _ in moving(&under_way)..parallel {
            let Some(b) = waiting.pop_front() else { break };
            if b.status == "SHUTOFF" {
                nova::cold_migrate(&act, &b.id).await.with_context(|| format!("cold-migrating {}", b.id))?;
                under_way.push((b, Move::Cold));
            } else {
                nova::live_migrate(&act, &b.id).await.with_context(|| format!("live-migrating {}", b.id))?;
                under_way.push((b, Move::Live));
            }
        }
        max_under_way = max_under_way.max(moving(&under_way));
        if emptied.is_none() && waiting.is_empty() && moving(&under_way) == 0 {
            emptied = Some((started.elapsed(), act.calls(), poll.calls()));
        }
        if under_way.is_empty() && waiting.is_empty() {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < deadline,
            "the floor: {} server(s) not on {TO} within {deadline:?}",
            under_way.len() + waiting.len()
        );
        tokio::time::sleep(FLOOR_POLL).await;
        let now = futures::future::try_join_all(under_way.iter().map(|(b, _)| server(&poll, &b.id))).await?;
        let mut still = Vec::new();
        for ((b, m), s) in under_way.into_iter().zip(now) {
            anyhow::ensure!(s.status != "ERROR", "the floor: server {} went into ERROR", b.id);
            let m = match m {
                Move::Live | Move::Cold if settled(&s, FROM, b.status) => {
                    anyhow::bail!("the floor: the move of server {} failed (it is {} on {FROM})", b.id, s.status)
                }
                Move::Live if s.host.as_deref() == Some(TO) => Move::Landing,
                Move::Cold if s.status == "VERIFY_RESIZE" && s.task_state.is_none() => {
                    nova::confirm(&act, &b.id).await.with_context(|| format!("confirming {}", b.id))?;
                    Move::Landing
                }
                m => m,
            };
            if !(matches!(m, Move::Landing) && settled(&s, TO, b.status)) {
                still.push((b, m));
            }
        }
        under_way = still;
    }
    let (emptied, action_calls, poll_calls) = emptied.unwrap_or((started.elapsed(), act.calls(), poll.calls()));
    Ok(Floor { emptied, settled: started.elapsed(), action_calls, poll_calls, max_under_way })
}

/// A GET of Placement's (`noauth2`: the token `admin`) at `microversion`, on loopback: its
/// status and JSON body.
async fn placement(base: &str, path: &str, microversion: &str) -> anyhow::Result<(u16, Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = base.strip_prefix("http://").context("Placement's URL is not http://")?;
    let (host, prefix) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    let prefix = if prefix.is_empty() { String::new() } else { format!("/{}", prefix.trim_end_matches('/')) };
    let exchange = async {
        let mut conn = tokio::net::TcpStream::connect(host).await?;
        let request = format!(
            "GET {prefix}{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: application/json\r\n\
             X-Auth-Token: admin\r\nOpenStack-API-Version: placement {microversion}\r\n\r\n"
        );
        conn.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("Placement: no answer to GET {path} within 10 s"))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("Placement: no HTTP status")?;
    // The body is one JSON object, whether sent whole or in chunks (one, for answers this small).
    let json = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if a < b => serde_json::from_str(&body[a..=b]).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    Ok((status, json))
}

/// Whether the scheduler may place servers on `host`: its resource provider in Placement
/// without the `COMPUTE_STATUS_DISABLED` trait, which Nova's scheduler filters on.
async fn schedulable(base: &str, host: &str) -> anyhow::Result<bool> {
    // 1.22: forbidden traits.
    let (status, v) =
        placement(base, &format!("/resource_providers?name={host}&required=!COMPUTE_STATUS_DISABLED"), "1.22").await?;
    anyhow::ensure!(status == 200, "Placement: HTTP {status} listing {host}'s provider: {v}");
    Ok(v["resource_providers"].as_array().is_some_and(|p| !p.is_empty()))
}

/// Enables `host`'s service again and waits until the scheduler may place servers there: the
/// enable repeated (it syncs the trait again) while the trait stays.
async fn enable(session: &Cloud, placement_url: &str, host: &str) -> anyhow::Result<(Duration, u32)> {
    let started = Instant::now();
    let id = service(session, host).await?.id;
    let mut sent = 0;
    loop {
        nova::set_service(session, &id, true, None).await?;
        sent += 1;
        let again = Instant::now() + Duration::from_secs(2);
        while Instant::now() < again {
            if schedulable(placement_url, host).await? {
                return Ok((started.elapsed(), sent));
            }
            tokio::time::sleep(SERVICE_POLL).await;
        }
        anyhow::ensure!(
            started.elapsed() < STEP,
            "{host}'s provider still has COMPUTE_STATUS_DISABLED {STEP:?} after its service was enabled"
        );
    }
}

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {}, "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}})
}

fn cordon(api: &ApiServer, name: &str) -> anyhow::Result<()> {
    let mut n = api.get("v1", "nodes", "", name).ok_or_else(|| anyhow::anyhow!("Node {name} is gone"))?;
    merge_patch(&mut n, &json!({"spec": {"unschedulable": true}}));
    api.apply(n);
    Ok(())
}

/// The Node's ComputeDrained condition: (status, reason, message).
fn condition(api: &ApiServer, name: &str) -> Option<(String, String, String)> {
    let n = api.get("v1", "nodes", "", name)?;
    let c = n["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == stacknet_drain::CONDITION)?.clone();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}

fn held(api: &ApiServer, name: &str) -> bool {
    let object = format!("stacknet-drain-hold-{name}");
    api.get("policy/v1", "poddisruptionbudgets", NS, &object).is_some() && api.get("v1", "pods", NS, &object).is_some()
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        OpenStack::installed(),
        "the OpenStack packages with Nova's are not installed (scripts/install-test-packages)"
    );
    anyhow::ensure!((1..=200).contains(&args.instances), "--instances must be between 1 and 200");
    anyhow::ensure!(args.parallel >= 1, "--parallel must be at least 1");
    anyhow::ensure!(args.interval_ms >= 100, "--interval-ms must be at least 100 (the drainer's floor)");
    let n = args.instances;
    let parallel = args.parallel as usize;
    // Both rustls providers are linked in (the OpenStack SDK's and kube's): name the one used.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let begun = Instant::now();
    let cloud = tokio::task::spawn_blocking(|| {
        OpenStack::start(OpenStackOptions { octavia: false, nova: vec![FROM.into(), TO.into()] })
    })
    .await?
    .context("starting the cloud")?;
    let cloud = Arc::new(cloud);
    eprintln!("drain bench: cloud up in {:.1} s", cloud.started_in.as_secs_f64());
    let clouds = cloud.clouds_yaml()?;
    let source = CloudSource::Named { cloud: "stacknet-test".into(), file: Some(clouds.clone()) };
    // The drainer's session (its counter counts its calls); the bench's own reads and the
    // floor count apart.
    let session = Cloud::connect_for(&source, Service::Compute).await?;
    let probe = session.counted_apart();

    let c = cloud.clone();
    let servers = tokio::task::spawn_blocking(move || boot(&c, n)).await??;
    let shutoff = servers.iter().filter(|b| b.status == "SHUTOFF").count();
    eprintln!("drain bench: {n} servers on {FROM} ({shutoff} SHUTOFF)");
    // A move takes seconds with the fake driver; far more than any run here takes.
    let deadline = Duration::from_secs(120) + Duration::from_secs(20) * n as u32 / args.parallel;

    // The floor: compute-1 emptied by the bench itself.
    let placement_url = cloud.placement_url.clone().context("the cloud has no Placement")?;
    anyhow::ensure!(schedulable(&placement_url, TO).await?, "{TO} is not schedulable in Placement");
    let f = floor(&probe, &servers, parallel, deadline).await.context("the floor")?;
    eprintln!("drain bench: floor {:.2} s (settled {:.2} s)", f.emptied.as_secs_f64(), f.settled.as_secs_f64());
    // Before ours, compute-1 takes servers again, as the scheduler sees it.
    let (took, sent) = enable(&probe, &placement_url, FROM).await?;
    eprintln!(
        "drain bench: {FROM} schedulable again {:.2} s after enabling it ({sent} enable(s) sent)",
        took.as_secs_f64()
    );
    if sent > 1 {
        // Why the first enable did not take, as the compute service logged it.
        let log = std::fs::read_to_string(cloud.dir().join(format!("log/nova-compute-{FROM}.log"))).unwrap_or_default();
        for l in log.lines().filter(|l| l.contains("COMPUTE_STATUS_DISABLED")).take(2) {
            eprintln!("drain bench: nova-compute ({FROM}): {}", l.chars().take(600).collect::<String>());
        }
    }

    // Ours: compute-2 emptied by the drainer.
    let api = ApiServer::start().await;
    api.register("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget", true);
    api.apply(node(FROM));
    api.apply(node(TO));
    let client = kube::Client::try_from(kube::Config::new(api.url().parse()?))?;
    let interval = args.interval_ms.to_string();
    let p = args.parallel.to_string();
    let cli = DrainCli::try_parse_from([
        "stacknet-compute-drain",
        "--parallel",
        &p,
        "--interval-ms",
        &interval,
        "--idle-interval",
        "1",
        "--namespace",
        NS,
        "--os-cloud",
        "stacknet-test",
        "--clouds-yaml",
        clouds.to_str().context("the clouds.yaml path")?,
    ])?;
    let mut drainer = Task(tokio::spawn(stacknet_drain::run::run_with(client, session.clone(), cli.args)));
    // Watching: it holds compute-2 (servers on it) and not compute-1 (none).
    let watching = Instant::now();
    while !held(&api, TO) || held(&api, FROM) {
        drainer.alive().await?;
        anyhow::ensure!(watching.elapsed() < STEP, "the drainer did not hold {TO} within {STEP:?}");
        tokio::time::sleep(CONDITION_POLL).await;
    }

    let calls_before = session.calls();
    let t0 = Instant::now();
    cordon(&api, TO)?;
    loop {
        drainer.alive().await?;
        if !service(&probe, TO).await?.enabled() {
            break;
        }
        anyhow::ensure!(t0.elapsed() < STEP, "{TO}'s service not disabled within {STEP:?}");
        tokio::time::sleep(SERVICE_POLL).await;
    }
    let disable = t0.elapsed();
    loop {
        if condition(&api, TO).is_some_and(|c| c.0 == "True") {
            break;
        }
        drainer.alive().await?;
        anyhow::ensure!(
            t0.elapsed() < deadline,
            "{TO} not drained within {deadline:?}; its condition: {:?}",
            condition(&api, TO)
        );
        tokio::time::sleep(CONDITION_POLL).await;
    }
    let drain = t0.elapsed();
    let calls = session.calls() - calls_before;
    let message = condition(&api, TO).map(|c| c.2).unwrap_or_default();
    // Moves Nova failed (the drainer retries them after its backoff): counted, and said.
    let failed: Vec<nova::Migration> = nova::migrations_from(&probe, TO, None)
        .await?
        .into_iter()
        .filter(|m| matches!(m.status.as_str(), "error" | "failed"))
        .collect();
    for m in &failed {
        eprintln!(
            "drain bench: a move Nova failed: {} of server {} ({}, {} to {})",
            m.migration_type,
            m.instance,
            m.status,
            m.created_at,
            m.updated_at.as_deref().unwrap_or("?")
        );
    }
    if !failed.is_empty() {
        // Why, as Nova's conductor and scheduler logged it.
        for name in ["nova-conductor", "nova-scheduler"] {
            let log = std::fs::read_to_string(cloud.dir().join(format!("log/{name}.log"))).unwrap_or_default();
            let why = log.lines().filter(|l| l.contains(" WARNING ") || l.contains(" ERROR ")).take(3);
            for l in why {
                eprintln!("drain bench: {name}: {}", l.chars().take(600).collect::<String>());
            }
        }
    }
    for e in api.events().iter().filter(|e| e["type"] == "Warning") {
        eprintln!("drain bench: the drainer warned: {}: {}", e["reason"], e["note"]);
    }
    // Confirmations sent may still be finishing: every server on compute-1 as it was.
    let mut migrated;
    loop {
        let on = nova::servers_on(&probe, FROM).await?;
        migrated = servers.iter().filter(|b| on.iter().any(|s| s.id == b.id && settled(s, FROM, b.status))).count();
        if migrated == n || t0.elapsed() > deadline {
            break;
        }
        tokio::time::sleep(FLOOR_POLL).await;
    }
    let settle = t0.elapsed();
    drop(drainer);
    anyhow::ensure!(migrated == n, "{migrated} of {n} servers on {FROM} after the drain ({message})");

    let active = n - shutoff;
    let counted = "every call of the drainer's Nova session from the cordon to Drained, its polls (servers, migrations, services each interval) included";
    println!(
        "{}",
        line(&[
            ("bench", json!("drain")),
            ("instances", json!(n)),
            ("migrated", json!(migrated)),
            ("disable_s", json!(secs(disable))),
            ("drain_s", json!(secs(drain))),
            ("nova_calls_per_instance", per(calls, n)),
            ("floor_s", json!(secs(f.emptied))),
            ("ratio", ratio(drain, f.emptied)),
            ("floor_nova_calls_per_instance", per(f.action_calls + f.poll_calls, n)),
            ("parallel", json!(args.parallel)),
            ("interval_ms", json!(args.interval_ms)),
            ("active", json!(active)),
            ("shutoff", json!(shutoff)),
            ("settled_s", json!(secs(settle))),
            ("floor_settled_s", json!(secs(f.settled))),
            ("settled_ratio", ratio(settle, f.settled)),
            ("failed_moves", json!(failed.len())),
            ("nova_calls", json!(calls)),
            ("nova_calls_counted", json!(counted)),
            ("impl", json!("stacknet compute-drain")),
        ])
    );
    println!(
        "{}",
        line(&[
            ("bench", json!("drain")),
            ("impl", json!("nova-direct")),
            ("instances", json!(n)),
            ("active", json!(active)),
            ("shutoff", json!(shutoff)),
            ("parallel", json!(args.parallel)),
            ("max_under_way", json!(f.max_under_way)),
            ("poll_ms", json!(FLOOR_POLL.as_millis() as u64)),
            ("floor_s", json!(secs(f.emptied))),
            ("settled_s", json!(secs(f.settled))),
            ("nova_calls_per_instance", per(f.action_calls + f.poll_calls, n)),
            ("nova_action_calls_per_instance", per(f.action_calls, n)),
            ("nova_poll_calls_per_instance", per(f.poll_calls, n)),
            (
                "nova_calls_counted",
                json!(
                    "until floor_s: actions (the service listed and disabled, moves, confirmations) and polls (each server under way read poll_ms after the last reads were answered)"
                )
            ),
        ])
    );
    eprintln!("drain bench: done in {:.0} s", begun.elapsed().as_secs_f64());
    drop(api);
    // The cloud stops as it drops (every Nova daemon, RabbitMQ, Keystone, ...).
    drop(probe);
    drop(session);
    tokio::task::spawn_blocking(move || drop(cloud)).await?;
    Ok(())
}
