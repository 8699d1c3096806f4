//! stacknet benchmark programs. Each prints one JSON line per figure, so runs can be compared
//! side by side; targets live in the issues, not in tests.

mod generator;

use std::time::Instant;

use clap::{Parser, Subcommand};
use serde_json::json;
use stacknet_engine::index::Kind;
use stacknet_engine::objects::ClusterObject;
use stacknet_engine::{ClusterIndex, PolicyEngine};

#[derive(Parser)]
#[command(name = "stacknet-bench", about = "stacknet benchmarks (JSON lines on stdout)")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Compile generated policies over generated pods; time incremental pod events.
    Policy {
        #[arg(long, default_value_t = 10_000)]
        pods: usize,
        #[arg(long, default_value_t = 100)]
        namespaces: usize,
        #[arg(long, default_value_t = 1_000)]
        policies: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Incremental pod events to time (half removals, half additions).
        #[arg(long, default_value_t = 4_000)]
        events: usize,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Policy { pods, namespaces, policies, seed, events } => {
            anyhow::ensure!(namespaces > 0, "--namespaces must be at least 1");
            policy(pods, namespaces, policies, seed, events)
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn percentile(v: &[f64], p: f64) -> f64 {
    // `v` sorted.
    if v.is_empty() { 0.0 } else { v[((v.len() - 1) as f64 * p).round() as usize] }
}

fn policy(pods: usize, namespaces: usize, policies: usize, seed: u64, events: usize) -> anyhow::Result<()> {
    let objects: Vec<ClusterObject> = generator::namespaces(namespaces)
        .into_iter()
        .map(ClusterObject::Namespace)
        .chain(generator::pods(pods, namespaces, seed).into_iter().map(ClusterObject::Pod))
        .chain(generator::policies(policies, namespaces, seed).into_iter().map(ClusterObject::NetworkPolicy))
        .collect();
    let index = ClusterIndex::from_objects(objects);

    // Compile three times; report the median (the machine is noisy).
    let mut compile_ms = Vec::new();
    let mut engine = PolicyEngine::new();
    for _ in 0..3 {
        let copy = index.clone();
        let t = Instant::now();
        engine = PolicyEngine::from_index(copy);
        compile_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let compile_ms = median(&mut compile_ms);
    let rules = engine.rule_count();
    let naive = engine.naive_rule_count();

    // Incremental pod events: remove a pod, then add it back, timing each.
    let mut rng = generator::Rng::new(seed ^ 0x6576_656e);
    let keys: Vec<_> = engine.index().pods().map(|(_, p)| p.key.clone()).collect();
    let mut times = Vec::with_capacity(events);
    let mut members_changed = 0usize;
    for _ in 0..events / 2 {
        if keys.is_empty() {
            break;
        }
        let key = &keys[rng.below(keys.len())];
        let pod = engine.index().pod(engine.index().pod_id(key).expect("present")).expect("present").clone();
        let t = Instant::now();
        let d = engine.delete(Kind::Pod, key);
        times.push(t.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(d.rules_added.is_empty() && d.rules_removed.is_empty(), "a pod event changed rules");
        members_changed += d.membership.len();
        let t = Instant::now();
        let d = engine.apply(ClusterObject::Pod(pod));
        times.push(t.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(d.rules_added.is_empty() && d.rules_removed.is_empty(), "a pod event changed rules");
        members_changed += d.membership.len();
    }
    times.sort_by(f64::total_cmp);
    anyhow::ensure!(engine.rule_count() == rules, "pod events changed the rule count");

    let line = json!({
        "bench": "policy",
        "pods": pods,
        "namespaces": namespaces,
        "policies": policies,
        "seed": seed,
        "compile_ms": (compile_ms * 100.0).round() / 100.0,
        "rules": rules,
        "groups": engine.group_count(),
        "peer_sets": engine.peer_set_count(),
        "naive_rules": naive,
        "naive_ratio": if rules == 0 { 0.0 } else { ((naive as f64 / rules as f64) * 10.0).round() / 10.0 },
        "pod_event_us": (percentile(&times, 0.5) * 100.0).round() / 100.0,
        "pod_event_p99_us": (percentile(&times, 0.99) * 100.0).round() / 100.0,
        "pod_events": times.len(),
        "membership_changes_per_event": if times.is_empty() { 0.0 } else { ((members_changed as f64 / times.len() as f64) * 10.0).round() / 10.0 },
    });
    println!("{line}");
    Ok(())
}
