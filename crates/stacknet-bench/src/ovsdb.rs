//! `stacknet-bench ovsdb`: our OVSDB client against ovn-nbctl, Python ovsdbapp and the raw
//! server floor, on the same ovsdb-server (real OVN NB schema) and the same workloads:
//!
//! - load: insert N pod ports with their port-group and address-set memberships, B pods per
//!   transaction;
//! - churn: against a database already holding N ports, single-pod events (add: port + switch
//!   + port group + address set; remove: port + address set), one transaction each.
//!
//! Pods sit on 100 node switches, in 100 port groups and 100 address sets (a per-node
//! topology: one switch holding every port caps every client far lower). Each client gets a
//! fresh database. The raw floor writes pre-built JSON-RPC messages, pipelined; stacknet
//! pipelines the same transactions through its client (monitoring the tables, as the backend
//! does); ovn-nbctl runs one process per event (per batch for the load); ovsdbapp runs in its
//! own venv, one transaction at a time as its API does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use stacknet_ovsdb::codec::Framer;
use stacknet_ovsdb::{Atom, Client, ClientConfig, Condition, Datum, Mutation, Row, Transaction, TxnReply, Uuid, nb};
use stacknet_sandbox::Ovn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

const NODES: usize = 100;
const PYTHON_BENCH: &str = include_str!("ovsdbapp_bench.py");

#[derive(Debug, Clone)]
pub struct Args {
    pub rounds: usize,
    pub ports: usize,
    pub events: usize,
    pub batch: usize,
    pub window: usize,
    pub nbctl_events: usize,
    pub clients: Vec<String>,
    pub venv: PathBuf,
}

/// One pod of the workload; naming must match `ovsdbapp_bench.py`.
struct PodSpec {
    name: String,
    switch: String,
    pg: String,
    aset: String,
    ip: String,
    mac: String,
}

fn pod(prefix: &str, i: usize) -> PodSpec {
    let n = i + 256;
    let (a, b, c) = ((n >> 16) & 255, (n >> 8) & 255, n & 255);
    let k = i % NODES;
    PodSpec {
        name: format!("{prefix}-{i}"),
        switch: format!("bench-node-{k}"),
        pg: format!("bench_pg_{k}"),
        aset: format!("bench_as_{k}"),
        ip: format!("10.{a}.{b}.{c}"),
        mac: format!("0a:58:0a:{a:02x}:{b:02x}:{c:02x}"),
    }
}

fn add_txn(pods: &[PodSpec]) -> Transaction {
    let mut t = Transaction::new(nb::DATABASE);
    for (k, p) in pods.iter().enumerate() {
        let named = format!("p{k}");
        let address = format!("{} {}", p.mac, p.ip);
        t.insert(
            nb::LOGICAL_SWITCH_PORT,
            Row::from([
                ("name".to_string(), Datum::Atom(p.name.as_str().into())),
                ("addresses".to_string(), Datum::set([address])),
            ]),
            Some(&named),
        );
        let port = Datum::Set([Atom::NamedUuid(named)].into());
        t.mutate(
            nb::LOGICAL_SWITCH,
            vec![Condition::eq("name", p.switch.as_str())],
            vec![Mutation::insert("ports", port.clone())],
        );
        t.mutate(nb::PORT_GROUP, vec![Condition::eq("name", p.pg.as_str())], vec![Mutation::insert("ports", port)]);
        t.mutate(
            nb::ADDRESS_SET,
            vec![Condition::eq("name", p.aset.as_str())],
            vec![Mutation::insert("addresses", Datum::set([p.ip.as_str()]))],
        );
    }
    t
}

/// Removing a port: out of its switch (the port group's reference is weak and follows) and its
/// address out of the set.
fn remove_txn(p: &PodSpec, port: Uuid) -> Transaction {
    let mut t = Transaction::new(nb::DATABASE);
    t.mutate(
        nb::LOGICAL_SWITCH,
        vec![Condition::eq("name", p.switch.as_str())],
        vec![Mutation::delete("ports", Datum::Set([Atom::Uuid(port)].into()))],
    );
    t.mutate(
        nb::ADDRESS_SET,
        vec![Condition::eq("name", p.aset.as_str())],
        vec![Mutation::delete("addresses", Datum::set([p.ip.as_str()]))],
    );
    t
}

fn setup_txn() -> Transaction {
    let mut t = Transaction::new(nb::DATABASE);
    for k in 0..NODES {
        t.insert(
            nb::LOGICAL_SWITCH,
            Row::from([("name".to_string(), Datum::Atom(format!("bench-node-{k}").into()))]),
            None,
        );
        t.insert(nb::PORT_GROUP, Row::from([("name".to_string(), Datum::Atom(format!("bench_pg_{k}").into()))]), None);
        t.insert(nb::ADDRESS_SET, Row::from([("name".to_string(), Datum::Atom(format!("bench_as_{k}").into()))]), None);
    }
    t
}

/// The raw floor: pre-built messages on one connection, `window` in flight.
async fn raw(socket: &Path, messages: Vec<Vec<u8>>, window: usize) -> anyhow::Result<(Duration, Vec<Value>)> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (mut rd, mut wr) = stream.into_split();
    let total = messages.len();
    let permits = Arc::new(Semaphore::new(window));
    let reader_permits = permits.clone();
    let reader = tokio::spawn(async move {
        let mut framer = Framer::default();
        let mut buf = vec![0u8; 1 << 20];
        let mut results = vec![Value::Null; total];
        let mut done = 0;
        while done < total {
            let n = rd.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "server closed the connection");
            framer.push(&buf[..n]);
            while let Some(m) = framer.next_message().map_err(|e| anyhow::anyhow!(e.0))? {
                let v: Value = serde_json::from_slice(m)?;
                let id = v["id"].as_u64().context("response id")? as usize;
                if !v["error"].is_null() {
                    bail!("raw request {id}: {}", v["error"]);
                }
                results[id] = v["result"].clone();
                done += 1;
                reader_permits.add_permits(1);
            }
        }
        Ok::<_, anyhow::Error>(results)
    });
    let start = Instant::now();
    // Write as many pre-built messages as the window allows in one go.
    let mut pending = messages.into_iter().peekable();
    let mut out = Vec::new();
    while pending.peek().is_some() {
        permits.acquire().await?.forget();
        out.extend(pending.next().expect("peeked"));
        while pending.peek().is_some() {
            match permits.try_acquire() {
                Ok(p) => {
                    p.forget();
                    out.extend(pending.next().expect("peeked"));
                }
                Err(_) => break,
            }
        }
        wr.write_all(&out).await?;
        out.clear();
    }
    let results = reader.await??;
    Ok((start.elapsed(), results))
}

fn raw_messages(txns: &[Transaction]) -> Vec<Vec<u8>> {
    txns.iter()
        .enumerate()
        .map(|(id, t)| {
            serde_json::to_vec(&json!({"id": id, "method": "transact", "params": t.params()})).expect("json")
        })
        .collect()
}

fn check_raw(results: &[Value]) -> anyhow::Result<()> {
    for r in results {
        if let Some(e) = r.as_array().and_then(|ops| ops.iter().find(|o| o.get("error").is_some_and(|e| !e.is_null())))
        {
            bail!("transaction failed: {e}");
        }
    }
    Ok(())
}

/// Port uuids from the replies of add transactions (inserted as `p0`, `p1`, ...).
fn inserted_ports(replies: &[TxnReply]) -> Vec<Uuid> {
    let mut out = Vec::new();
    for reply in replies {
        for k in 0.. {
            match reply.uuid_of(&format!("p{k}")) {
                Some(u) => out.push(u),
                None => break,
            }
        }
    }
    out
}

fn parse_raw(txns: &[Transaction], results: &[Value]) -> anyhow::Result<Vec<TxnReply>> {
    txns.iter().zip(results).map(|(t, r)| t.parse_reply(r).map_err(Into::into)).collect()
}

/// Our client: the same transactions, `window` in flight.
async fn stacknet(client: &Client, txns: Vec<Transaction>, window: usize) -> anyhow::Result<(Duration, Vec<TxnReply>)> {
    let start = Instant::now();
    let txns = Arc::new(txns);
    let mut results: Vec<Option<TxnReply>> = (0..txns.len()).map(|_| None).collect();
    let mut set = tokio::task::JoinSet::new();
    let mut next = 0;
    let spawn = |set: &mut tokio::task::JoinSet<_>, i: usize| {
        let (c, t) = (client.clone(), txns.clone());
        set.spawn(async move { (i, c.transact(&t[i]).await) });
    };
    while next < txns.len().min(window) {
        spawn(&mut set, next);
        next += 1;
    }
    while let Some(done) = set.join_next().await {
        let (i, r) = done?;
        results[i] = Some(r?);
        if next < txns.len() {
            spawn(&mut set, next);
            next += 1;
        }
    }
    let elapsed = start.elapsed();
    Ok((elapsed, results.into_iter().map(|r| r.expect("every transaction answered")).collect()))
}

async fn fresh_db(preload: usize, batch: usize, window: usize) -> anyhow::Result<Ovn> {
    let ovn = Ovn::nb_only()?;
    let (_, r) = raw(ovn.nb.socket(), raw_messages(&[setup_txn()]), 1).await?;
    check_raw(&r)?;
    if preload > 0 {
        let pods: Vec<PodSpec> = (0..preload).map(|i| pod("base", i)).collect();
        let txns: Vec<Transaction> = pods.chunks(batch).map(add_txn).collect();
        let (_, r) = raw(ovn.nb.socket(), raw_messages(&txns), window).await?;
        check_raw(&r)?;
    }
    Ok(ovn)
}

/// Our client, monitoring the workload's tables into its replica (as the backend runs) or
/// not at all (as the raw floor runs).
fn client_for(ovn: &Ovn, monitor: bool) -> Client {
    let mut config = ClientConfig::new(vec![ovn.nb.remote().parse().expect("unix remote")], nb::DATABASE);
    config.tables = Some(if monitor {
        vec![nb::LOGICAL_SWITCH.into(), nb::LOGICAL_SWITCH_PORT.into(), nb::PORT_GROUP.into(), nb::ADDRESS_SET.into()]
    } else {
        vec![]
    });
    Client::start(config)
}

fn nbctl(ovn: &Ovn, args: &[String]) -> anyhow::Result<()> {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ovn.nbctl(&refs).map(drop).map_err(Into::into)
}

fn nbctl_add_args(pods: &[PodSpec]) -> Vec<String> {
    let mut a = Vec::new();
    for (k, p) in pods.iter().enumerate() {
        a.extend([
            "--".into(),
            format!("--id=@p{k}"),
            "create".into(),
            "Logical_Switch_Port".into(),
            format!("name={}", p.name),
            format!("addresses=\"{} {}\"", p.mac, p.ip),
            "--".into(),
            "add".into(),
            "Logical_Switch".into(),
            p.switch.clone(),
            "ports".into(),
            format!("@p{k}"),
            "--".into(),
            "add".into(),
            "Port_Group".into(),
            p.pg.clone(),
            "ports".into(),
            format!("@p{k}"),
            "--".into(),
        ]);
        a.extend(address_set("add", p));
    }
    a
}

fn nbctl_remove_args(p: &PodSpec) -> Vec<String> {
    let mut a = vec!["lsp-del".into(), p.name.clone(), "--".into()];
    a.extend(address_set("remove", p));
    a
}

/// `add` or `remove` of the pod's address in its peer set's address set.
fn address_set(verb: &str, p: &PodSpec) -> [String; 5] {
    [verb.into(), "Address_Set".into(), p.aset.clone(), "addresses".into(), format!("\"{}\"", p.ip)]
}

/// The bench's own venv: ovsdbapp from PyPI over Debian's python3-openvswitch (which carries
/// the C JSON parser deployments use); without it, ovsdbapp's pure-Python dependencies.
fn venv(dir: &Path) -> anyhow::Result<(PathBuf, bool)> {
    let python = dir.join("bin/python");
    let c_ext =
        Command::new("/usr/bin/python3").args(["-c", "import ovs._json"]).output().is_ok_and(|o| o.status.success());
    if !python.exists() {
        let mut venv = Command::new("/usr/bin/python3");
        venv.args(["-m", "venv"]);
        if c_ext {
            venv.arg("--system-site-packages");
        }
        let out = venv.arg(dir).output().context("python3 -m venv")?;
        anyhow::ensure!(out.status.success(), "python3 -m venv: {}", String::from_utf8_lossy(&out.stderr));
        let pip = dir.join("bin/pip");
        let mut install = Command::new(&pip);
        install.args(["install", "-q"]);
        if c_ext {
            install.args(["--no-deps", "ovsdbapp", "pbr", "netaddr"]);
        } else {
            install.arg("ovsdbapp");
        }
        let out = install.output().context("pip install ovsdbapp")?;
        anyhow::ensure!(out.status.success(), "pip install ovsdbapp: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::write(dir.join("ovsdbapp_bench.py"), PYTHON_BENCH)?;
    Ok((python, c_ext))
}

fn ovsdbapp(
    venv: &Path,
    ovn: &Ovn,
    workload: &str,
    prefix: &str,
    count: usize,
    batch: usize,
) -> anyhow::Result<(usize, f64)> {
    let out = Command::new(venv.join("bin/python"))
        .arg(venv.join("ovsdbapp_bench.py"))
        .args([ovn.nb.remote(), workload.into(), prefix.into(), "0".into(), count.to_string(), batch.to_string()])
        .output()
        .context("running ovsdbapp")?;
    anyhow::ensure!(out.status.success(), "ovsdbapp: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).context("ovsdbapp output")?;
    Ok((v["events"].as_u64().unwrap_or(0) as usize, v["seconds"].as_f64().unwrap_or(f64::NAN)))
}

struct Line {
    client: &'static str,
    events: usize,
    seconds: f64,
    extra: BTreeMap<&'static str, Value>,
}

fn print(workload: &str, lines: &[Line], args: &Args) {
    let rate = |name: &str| lines.iter().find(|l| l.client == name).map(|l| l.events as f64 / l.seconds);
    let (raw, raw_monitor) = (rate("raw"), rate("raw+monitor"));
    let ratio = |eps: f64, floor: Option<f64>| json!(floor.map(|r| (eps / r * 1000.0).round() / 1000.0));
    for l in lines {
        let eps = l.events as f64 / l.seconds;
        let mut fields = vec![
            ("bench", json!("ovsdb")),
            ("workload", json!(workload)),
            ("client", json!(l.client)),
            ("events_per_s", json!(eps.round())),
            ("ratio_to_raw", ratio(eps, raw)),
            // A client keeping a replica is compared with the floor that also monitors.
            (
                "ratio_to_raw_monitor",
                if l.client == "stacknet+replica" { ratio(eps, raw_monitor) } else { Value::Null },
            ),
            ("events", json!(l.events)),
            ("seconds", json!((l.seconds * 1000.0).round() / 1000.0)),
            ("db_ports", json!(args.ports)),
        ];
        fields.extend(l.extra.iter().map(|(k, v)| (*k, v.clone())));
        println!("{}", crate::jsonline::line(&fields));
    }
}

fn wants(args: &Args, client: &str) -> bool {
    args.clients.iter().any(|c| c == client || c == "all")
}

/// Runs one churn (half adds, half removes of `prefix` pods) with a pipelining client.
async fn churn_pipelined(
    ovn: &Ovn,
    client: Option<&Client>,
    prefix: &str,
    half: usize,
    window: usize,
) -> anyhow::Result<f64> {
    let pods: Vec<PodSpec> = (0..half).map(|i| pod(prefix, i)).collect();
    let adds: Vec<Transaction> = pods.iter().map(|p| add_txn(std::slice::from_ref(p))).collect();
    let (t1, replies) = match client {
        None => {
            let (t, r) = raw(ovn.nb.socket(), raw_messages(&adds), window).await?;
            (t, parse_raw(&adds, &r)?)
        }
        Some(c) => stacknet(c, adds.clone(), window).await?,
    };
    let ports = inserted_ports(&replies);
    let removes: Vec<Transaction> = pods.iter().zip(&ports).map(|(p, u)| remove_txn(p, *u)).collect();
    let t2 = match client {
        None => {
            let (t, r) = raw(ovn.nb.socket(), raw_messages(&removes), window).await?;
            parse_raw(&removes, &r)?;
            t
        }
        Some(c) => stacknet(c, removes, window).await?.0,
    };
    Ok((t1 + t2).as_secs_f64())
}

/// The least a monitoring client can do: subscribe to the workload's tables over raw
/// JSON-RPC and read (and drop) whatever the server sends. Stops when dropped.
struct Watcher(tokio::task::JoinHandle<()>);

impl Watcher {
    async fn start(ovn: &Ovn) -> anyhow::Result<Watcher> {
        let mut stream = tokio::net::UnixStream::connect(ovn.nb.socket()).await?;
        let tables: serde_json::Map<String, Value> =
            [nb::LOGICAL_SWITCH, nb::LOGICAL_SWITCH_PORT, nb::PORT_GROUP, nb::ADDRESS_SET]
                .iter()
                .map(|t| (t.to_string(), json!([{}])))
                .collect();
        let req = json!({"id": 0, "method": "monitor_cond_since",
            "params": [nb::DATABASE, "watch", tables, "00000000-0000-0000-0000-000000000000"]});
        stream.write_all(req.to_string().as_bytes()).await?;
        // Wait for the initial reply so that the clock starts with the monitor in place.
        let mut framer = Framer::default();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = stream.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "server closed the watcher");
            framer.push(&buf[..n]);
            if framer.next_message().map_err(|e| anyhow::anyhow!(e.0))?.is_some() {
                break;
            }
        }
        Ok(Watcher(tokio::spawn(async move {
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })))
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let batch = args.batch.max(1);
    let window = args.window.max(1);
    let rounds = args.rounds.max(1);
    // "raw+monitor": the raw floor with a bare monitor on the same connection's server (a
    // reader that drops every update): the floor for a client that keeps a replica.
    let pipelined: Vec<(&'static str, Option<bool>)> = if wants(&args, "stacknet") {
        vec![("raw", None), ("raw+monitor", None), ("stacknet", Some(false)), ("stacknet+replica", Some(true))]
    } else {
        vec![("raw", None)]
    };

    // (a) load: N ports, `batch` pods per transaction, into a fresh database per client and
    // round; the median round counts (the machine is noisy).
    let load_pods: Vec<PodSpec> = (0..args.ports).map(|i| pod("load", i)).collect();
    let load_txns: Vec<Transaction> = load_pods.chunks(batch).map(add_txn).collect();
    let mut times: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        for k in 0..pipelined.len() {
            // Rotate the order each round so that no client always runs first.
            let (name, monitor) = pipelined[(k + round) % pipelined.len()];
            let ovn = fresh_db(0, batch, window).await?;
            let _watcher = if name == "raw+monitor" { Some(Watcher::start(&ovn).await?) } else { None };
            let t = match monitor {
                None => {
                    let (t, r) = raw(ovn.nb.socket(), raw_messages(&load_txns), window).await?;
                    check_raw(&r)?;
                    t
                }
                Some(m) => {
                    let client = client_for(&ovn, m);
                    client.connected(Duration::from_secs(10)).await?;
                    stacknet(&client, load_txns.clone(), window).await?.0
                }
            };
            times.entry(name).or_default().push(t.as_secs_f64());
        }
    }
    let mut lines: Vec<Line> = pipelined
        .iter()
        .map(|(name, _)| Line {
            client: name,
            events: args.ports,
            seconds: median(times[name].clone()),
            extra: [("batch", json!(batch)), ("rounds", json!(rounds))].into(),
        })
        .collect();
    if wants(&args, "ovn-nbctl") {
        let ovn = fresh_db(0, batch, window).await?;
        let start = Instant::now();
        for chunk in load_pods.chunks(batch) {
            nbctl(&ovn, &nbctl_add_args(chunk))?;
        }
        lines.push(Line {
            client: "ovn-nbctl",
            events: args.ports,
            seconds: start.elapsed().as_secs_f64(),
            extra: [("batch", json!(batch))].into(),
        });
    }
    let mut py = None;
    if wants(&args, "ovsdbapp") {
        match venv(&args.venv) {
            Ok(v) => py = Some(v),
            Err(e) => println!("{}", json!({"bench": "ovsdb", "client": "ovsdbapp", "error": e.to_string()})),
        }
    }
    if let Some((_, c_ext)) = &py {
        let ovn = fresh_db(0, batch, window).await?;
        let (events, seconds) = ovsdbapp(&args.venv, &ovn, "load", "load", args.ports, batch)?;
        lines.push(Line {
            client: "ovsdbapp",
            events,
            seconds,
            extra: [("batch", json!(batch)), ("ovs_c_json", json!(c_ext))].into(),
        });
    }
    print("load", &lines, &args);

    // (b) churn: single-pod transactions against a database holding N ports; half the events
    // add a pod, the other half remove them again, so every client meets the same database.
    let half = args.events / 2;
    let mut times: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        let ovn = fresh_db(args.ports, batch, window).await?;
        for k in 0..pipelined.len() {
            let (name, monitor) = pipelined[(k + round) % pipelined.len()];
            // Each client connects for its own run only: a monitoring client left connected
            // would make the server send updates during the others' runs.
            let client = match monitor {
                Some(m) => {
                    let c = client_for(&ovn, m);
                    c.connected(Duration::from_secs(30)).await?;
                    Some(c)
                }
                None => None,
            };
            let _watcher = if name == "raw+monitor" { Some(Watcher::start(&ovn).await?) } else { None };
            let prefix = format!("churn-{}-{round}", name.replace('+', "-"));
            let t = churn_pipelined(&ovn, client.as_ref(), &prefix, half, window).await?;
            times.entry(name).or_default().push(t);
            drop(client);
            // Let the server notice the closed session before the next run.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut lines: Vec<Line> = pipelined
        .iter()
        .map(|(name, _)| Line {
            client: name,
            events: 2 * half,
            seconds: median(times[name].clone()),
            extra: [("window", json!(window)), ("rounds", json!(rounds))].into(),
        })
        .collect();
    if wants(&args, "ovn-nbctl") {
        let ovn = fresh_db(args.ports, batch, window).await?;
        let n = (args.nbctl_events / 2).max(1);
        let pods: Vec<PodSpec> = (0..n).map(|i| pod("churn-nbctl", i)).collect();
        let start = Instant::now();
        for p in &pods {
            nbctl(&ovn, &nbctl_add_args(std::slice::from_ref(p)))?;
        }
        for p in &pods {
            nbctl(&ovn, &nbctl_remove_args(p))?;
        }
        lines.push(Line {
            client: "ovn-nbctl",
            events: 2 * n,
            seconds: start.elapsed().as_secs_f64(),
            extra: BTreeMap::new(),
        });
    }
    if let Some((_, c_ext)) = &py {
        let ovn = fresh_db(args.ports, batch, window).await?;
        let (events, seconds) = ovsdbapp(&args.venv, &ovn, "churn", "churn-ovsdbapp", 2 * half, 1)?;
        lines.push(Line { client: "ovsdbapp", events, seconds, extra: [("ovs_c_json", json!(c_ext))].into() });
    }
    print("churn", &lines, &args);
    Ok(())
}
