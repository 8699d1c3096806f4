//! db-failover: the controller (`stacknet controller`, the real binary) writes a churn of pods
//! into a Northbound database run as a Raft cluster, and one member fails in the middle of it:
//! the leader killed (SIGKILL), a follower killed, or the leader frozen (SIGSTOP) and thawed
//! after the rest converged. The database is then compared row by row with the one the same
//! controller makes from the final manifests without any failure (uuids replaced by what the
//! rows are): rows missing or different are lost updates, rows too many are orphans. Each
//! member is compared too, once the failed one is back.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use stacknet_sandbox::{DbCluster, Ovn};

use crate::controller::{Running, metric, spawn, stop, wait_ready};
use crate::jsonline;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    KillLeader,
    KillFollower,
    FreezeLeader,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill-leader",
            Fault::KillFollower => "kill-follower",
            Fault::FreezeLeader => "freeze-leader",
        }
    }
}

pub struct Args {
    pub pods: usize,
    pub members: usize,
    pub faults: Vec<Fault>,
    pub stacknet: Option<PathBuf>,
}

const NODES: usize = 6;
const POLICIES: usize = 20;
/// The pods arrive in this many files, one every [`STEP`].
const FILES: usize = 20;
const STEP: Duration = Duration::from_millis(100);
const DEADLINE: Duration = Duration::from_secs(120);

/// Nodes with their own pod CIDRs, policies, and pods `first..first+count` with their
/// addresses in `status.podIP` (so the network does not depend on the order they arrived in).
fn base() -> String {
    let mut y = String::from(
        "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: churn}}\n",
    );
    for n in 0..NODES {
        let _ = writeln!(
            y,
            "- {{apiVersion: v1, kind: Node, metadata: {{name: n{n}}}, spec: {{podCIDR: 10.128.{n}.0/24}}}}"
        );
    }
    for j in 0..POLICIES {
        let _ = writeln!(
            y,
            "- {{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {{name: np{j}, namespace: churn}}, spec: {{podSelector: {{matchLabels: {{app: a{j}}}}}, ingress: [{{from: [{{podSelector: {{matchLabels: {{tier: t{}}}}}}}], ports: [{{port: {}}}]}}]}}}}",
            j % 3,
            1000 + j
        );
    }
    y
}

fn pods(first: usize, count: usize, relabel: bool) -> String {
    let mut y = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for i in first..first + count {
        let tier = if relabel { (i + 1) % 3 } else { i % 3 };
        let _ = writeln!(
            y,
            "- {{apiVersion: v1, kind: Pod, metadata: {{name: p{i}, namespace: churn, uid: u{i}, labels: {{app: a{}, tier: t{tier}}}}}, spec: {{nodeName: n{}, containers: []}}, status: {{podIP: 10.128.{}.{}}}}}",
            i % POLICIES,
            i % NODES,
            i % NODES,
            10 + i / NODES
        );
    }
    y
}

/// The churn: `pods` pods arrive in [`FILES`] files; then the first quarter goes and the
/// second quarter's pods change tier. `step` is called before each write with its number.
fn churn(
    dir: &Path,
    total: usize,
    pause: Duration,
    mut step: impl FnMut(usize) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let per = total.div_ceil(FILES);
    let files: Vec<(usize, usize)> = (0..FILES).map(|f| (f * per, per.min(total.saturating_sub(f * per)))).collect();
    let mut n = 0;
    for (f, &(first, count)) in files.iter().enumerate() {
        step(n)?;
        n += 1;
        std::fs::write(dir.join(format!("pods-{f:02}.yaml")), pods(first, count, false))?;
        std::thread::sleep(pause);
    }
    for (f, &(first, count)) in files.iter().enumerate().take(FILES / 2) {
        step(n)?;
        n += 1;
        if f < FILES / 4 {
            std::fs::remove_file(dir.join(format!("pods-{f:02}.yaml")))?;
        } else {
            std::fs::write(dir.join(format!("pods-{f:02}.yaml")), pods(first, count, true))?;
        }
        std::thread::sleep(pause);
    }
    Ok(())
}

/// The final manifests of [`churn`], written at once.
fn final_state(dir: &Path, total: usize) -> anyhow::Result<()> {
    std::fs::write(dir.join("00-base.yaml"), base())?;
    let per = total.div_ceil(FILES);
    for f in FILES / 4..FILES {
        let (first, count) = (f * per, per.min(total.saturating_sub(f * per)));
        std::fs::write(dir.join(format!("pods-{f:02}.yaml")), pods(first, count, f < FILES / 2))?;
    }
    Ok(())
}

/// A database's rows, table by table, keyed by what they are (their `stacknet.io/id`, or
/// name, or their content), with every uuid replaced by the key of the row it names.
type Dump = BTreeMap<String, BTreeMap<String, BTreeMap<String, Value>>>;

/// Tables whose rows are the server's or ovn-northd's, not the controller's.
const NOT_OURS: [&str; 3] = ["NB_Global", "Connection", "SSL"];

fn dump(remote: &str) -> anyhow::Result<Dump> {
    let out = std::process::Command::new("ovsdb-client")
        .args(["--timeout=10", "dump", "--format=json", remote, "OVN_Northbound"])
        .output()
        .context("running ovsdb-client")?;
    anyhow::ensure!(
        out.status.success(),
        "ovsdb-client dump {remote}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let mut raw: Vec<(String, Vec<BTreeMap<String, Value>>)> = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()) {
        let t: Value = serde_json::from_str(line)?;
        let table = t["caption"].as_str().unwrap_or_default().trim_end_matches(" table").to_string();
        if NOT_OURS.contains(&table.as_str()) {
            continue;
        }
        let headings: Vec<String> =
            t["headings"].as_array().into_iter().flatten().filter_map(|h| h.as_str().map(String::from)).collect();
        let rows = t["data"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| headings.iter().cloned().zip(r.as_array().cloned().unwrap_or_default()).collect())
            .collect();
        raw.push((table, rows));
    }
    // Keys: the id we tag rows with, else the name, else the row's own content (refs last).
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    for (table, rows) in &raw {
        for row in rows {
            let uuid = row.get("_uuid").and_then(|u| u[1].as_str()).unwrap_or_default().to_string();
            let id = map_get(row.get("external_ids"), "stacknet.io/id");
            let name = row.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()).map(String::from);
            let own = id.or(name).unwrap_or_else(|| {
                let mut r = row.clone();
                r.remove("_uuid");
                serde_json::to_string(&r).unwrap_or_default()
            });
            keys.insert(uuid, format!("{table}:{own}"));
        }
    }
    let mut dump = Dump::new();
    for (table, rows) in raw {
        let t = dump.entry(table).or_default();
        for mut row in rows {
            let uuid = row.remove("_uuid").and_then(|u| u[1].as_str().map(String::from)).unwrap_or_default();
            let row: BTreeMap<String, Value> = row.into_iter().map(|(c, v)| (c, resolve(v, &keys))).collect();
            t.insert(keys[&uuid].clone(), row);
        }
    }
    Ok(dump)
}

fn map_get(v: Option<&Value>, key: &str) -> Option<String> {
    v?.get(1)?.as_array()?.iter().find_map(|kv| (kv[0] == key).then(|| kv[1].as_str().map(String::from)).flatten())
}

/// `["uuid", U]` → `["ref", key]`; sets sorted (their order is the server's).
fn resolve(v: Value, keys: &BTreeMap<String, String>) -> Value {
    match v {
        Value::Array(a) if a.len() == 2 && a[0] == "uuid" => {
            let u = a[1].as_str().unwrap_or_default();
            json!(["ref", keys.get(u).cloned().unwrap_or_else(|| format!("dangling {u}"))])
        }
        Value::Array(a) if a.len() == 2 && a[0] == "set" => {
            let mut items: Vec<Value> =
                a[1].as_array().cloned().unwrap_or_default().into_iter().map(|x| resolve(x, keys)).collect();
            items.sort_by_key(Value::to_string);
            json!(["set", items])
        }
        Value::Array(a) => Value::Array(a.into_iter().map(|x| resolve(x, keys)).collect()),
        other => other,
    }
}

/// How a database differs from the reference.
#[derive(Debug, Default, PartialEq, Eq)]
struct Difference {
    /// Rows of the reference missing or different.
    lost: usize,
    /// Rows not in the reference.
    extra: usize,
    /// A few of them.
    examples: Vec<String>,
}

impl Difference {
    fn none(&self) -> bool {
        self.lost == 0 && self.extra == 0
    }
}

fn compare(want: &Dump, got: &Dump) -> Difference {
    let (mut lost, mut extra, mut examples) = (0, 0, Vec::new());
    let empty = BTreeMap::new();
    for (table, rows) in want {
        let g = got.get(table).unwrap_or(&empty);
        for (key, row) in rows {
            if g.get(key) != Some(row) {
                lost += 1;
                if examples.len() < 5 {
                    examples.push(format!("{} {key}", if g.contains_key(key) { "different" } else { "missing" }));
                }
            }
        }
    }
    for (table, rows) in got {
        let w = want.get(table).unwrap_or(&empty);
        for key in rows.keys().filter(|k| !w.contains_key(*k)) {
            extra += 1;
            if examples.len() < 5 {
                examples.push(format!("extra {key}"));
            }
        }
    }
    Difference { lost, extra, examples }
}

fn reference(stacknet: &Path, pods: usize) -> anyhow::Result<Dump> {
    let ovn = Ovn::nb_only().context("starting the reference Northbound database")?;
    let dir = tempfile::Builder::new().prefix("stacknet-bench-failover-ref-").tempdir()?;
    final_state(dir.path(), pods)?;
    let mut r = spawn(stacknet, &ovn.nb.remote(), dir.path(), &["--poll-ms", "50"])?;
    wait_ready(&mut r)?;
    stop(r)?;
    dump(&ovn.nb.remote())
}

/// Polls until `remote`'s rows equal `want` (or the deadline): the last comparison.
fn until_equal(remote: &str, want: &Dump) -> Difference {
    let t = Instant::now();
    loop {
        let cmp = match dump(remote) {
            Ok(got) => compare(want, &got),
            Err(e) => {
                Difference { lost: want.values().map(BTreeMap::len).sum(), extra: 0, examples: vec![e.to_string()] }
            }
        };
        if cmp.none() || t.elapsed() > DEADLINE {
            return cmp;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn one(stacknet: &Path, args: &Args, fault: Fault, want: &Dump) -> anyhow::Result<()> {
    let mut ovn = Ovn::nb_cluster(args.members).context("starting the Northbound cluster")?;
    let dir = tempfile::Builder::new().prefix("stacknet-bench-failover-").tempdir()?;
    std::fs::write(dir.path().join("00-base.yaml"), base())?;
    let remotes = ovn.nb.remote();
    let mut r: Running = spawn(stacknet, &remotes, dir.path(), &["--poll-ms", "50"])?;
    wait_ready(&mut r)?;
    let leader_before = ovn.nb.wait_leader(None)?;

    // The fault lands in the middle of the arrivals.
    let mut failed: Option<(usize, Instant)> = None;
    let t = Instant::now();
    churn(dir.path(), args.pods, STEP, |n| {
        if n == FILES / 2 {
            let nb: &mut DbCluster = &mut ovn.nb;
            let leader = nb.wait_leader(None)?;
            let victim = match fault {
                Fault::KillLeader | Fault::FreezeLeader => leader,
                Fault::KillFollower => (leader + 1) % nb.len(),
            };
            match fault {
                Fault::FreezeLeader => nb.freeze(victim)?,
                _ => nb.kill_member(victim),
            }
            failed = Some((victim, Instant::now()));
        }
        Ok(())
    })?;
    let churn_s = t.elapsed();
    let (victim, at) = failed.context("the fault was not injected")?;
    // The members that answer: every one but the victim.
    let live: Vec<String> = (0..ovn.nb.len()).filter(|&i| i != victim).map(|i| ovn.nb.member(i).remote()).collect();
    let cmp = until_equal(&live.join(","), want);
    let converged = at.elapsed();
    let leader_after = ovn.nb.leader();
    let errors = metric(r.addr, "stacknet_ovsdb_transaction_errors_total")?;
    let written = metric(r.addr, "stacknet_ovsdb_transactions_total")?;

    // The failed member comes back: it must catch up, and nothing of its own come back.
    match fault {
        Fault::FreezeLeader => ovn.nb.thaw(victim),
        _ => ovn.nb.restart_member(victim)?,
    }
    let back = until_equal(&ovn.nb.member(victim).remote(), want);
    let victim_role = ovn.nb.status(victim).map(|s| s.role);
    // A while after its return, the controller has written nothing more and every member
    // still equals the reference.
    std::thread::sleep(Duration::from_secs(1));
    let written_after_return = metric(r.addr, "stacknet_ovsdb_transactions_total")? - written;
    let mut members_equal = 0;
    for i in 0..ovn.nb.len() {
        members_equal += usize::from(compare(want, &dump(&ovn.nb.member(i).remote())?).none());
    }
    stop(r)?;

    println!(
        "{}",
        jsonline::line(&[
            ("bench", json!("db-failover")),
            ("fault", json!(fault.name())),
            ("pods", json!(args.pods)),
            ("members", json!(args.members)),
            ("churn_s", json!(secs(churn_s))),
            ("lost", json!(cmp.lost)),
            ("extra", json!(cmp.extra)),
            ("differences", json!(cmp.examples)),
            ("converge_after_kill_s", json!(secs(converged))),
            ("leader_before", json!(leader_before)),
            ("victim", json!(victim)),
            ("leader_after", json!(leader_after)),
            ("transaction_errors", json!(errors)),
            ("transactions", json!(written)),
            ("victim_caught_up", json!(back.none())),
            ("victim_role_after", json!(victim_role)),
            ("written_after_return", json!(written_after_return)),
            ("members_equal", json!(members_equal)),
        ])
    );
    Ok(())
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 100.0).round() / 100.0
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.members >= 3, "--members must be at least 3 (a cluster that survives a failure)");
    anyhow::ensure!(
        args.pods >= FILES && args.pods <= NODES * 240,
        "--pods must lie between {FILES} and {}",
        NODES * 240
    );
    let stacknet = crate::podready::find_sibling(args.stacknet.clone(), "stacknet", "stacknet")?;
    let want = reference(&stacknet, args.pods)?;
    let faults = if args.faults.is_empty() {
        vec![Fault::KillLeader, Fault::KillFollower, Fault::FreezeLeader]
    } else {
        args.faults.clone()
    };
    for fault in faults {
        one(&stacknet, &args, fault, &want)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_compare_by_what_they_are_not_by_uuid() {
        let keys = BTreeMap::from([("u1".to_string(), "Logical_Switch_Port:p1".to_string())]);
        let v = resolve(json!(["set", [["uuid", "u1"], ["uuid", "u9"]]]), &keys);
        assert_eq!(v, json!(["set", [["ref", "Logical_Switch_Port:p1"], ["ref", "dangling u9"]]]));
        let row = |x: &str| BTreeMap::from([("name".to_string(), json!(x))]);
        let a: Dump = BTreeMap::from([("T".into(), BTreeMap::from([("k".into(), row("a")), ("l".into(), row("l"))]))]);
        let b: Dump = BTreeMap::from([("T".into(), BTreeMap::from([("k".into(), row("b")), ("m".into(), row("m"))]))]);
        let d = compare(&a, &b);
        assert_eq!((d.lost, d.extra), (2, 1));
        assert_eq!(d.examples, ["different k", "missing l", "extra m"]);
        assert!(compare(&a, &a).none());
    }

    #[test]
    fn the_churn_ends_where_the_final_state_is() {
        let churned = tempfile::tempdir().unwrap();
        std::fs::write(churned.path().join("00-base.yaml"), base()).unwrap();
        let mut steps = 0;
        churn(churned.path(), 100, Duration::ZERO, |_| {
            steps += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(steps, FILES + FILES / 2);
        let direct = tempfile::tempdir().unwrap();
        final_state(direct.path(), 100).unwrap();
        let read = |d: &Path| {
            let mut files: Vec<(String, String)> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().path())
                .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(p).unwrap()))
                .collect();
            files.sort();
            files
        };
        assert_eq!(read(churned.path()), read(direct.path()));
    }
}
