//! stacknet benchmark programs. Each prints one JSON line per figure, so runs can be compared
//! side by side; targets live in the issues, not in tests.

/// The allocator stacknet ships with: the client's JSON work is allocation-heavy.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod controller;
mod drain;
mod entrypoint;
mod failover;
mod generator;
mod jsonline;
mod openstack;
mod ovsdb;
mod podready;
mod policyready;
mod services;
mod services_live;

use std::time::Instant;

use clap::{Parser, Subcommand};
use serde_json::json;
use stacknet_engine::objects::ClusterObject;
use stacknet_engine::objects::Kind;
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
    /// Our OVSDB client against ovn-nbctl, Python ovsdbapp and the raw server floor (starts its
    /// own ovsdb-server with the OVN Northbound schema).
    Ovsdb {
        /// Rounds of the pipelined clients' workloads (the median counts).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Ports in the database (loaded by the load workload, present for the churn).
        #[arg(long, default_value_t = 10_000)]
        ports: usize,
        /// Single-pod churn events (half additions, half removals).
        #[arg(long, default_value_t = 1_000)]
        events: usize,
        /// Pods per transaction in the load workload.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Transactions in flight for the pipelining clients (raw, stacknet).
        #[arg(long, default_value_t = 32)]
        window: usize,
        /// Churn events for ovn-nbctl (one process each; slow on a full database).
        #[arg(long, default_value_t = 40)]
        nbctl_events: usize,
        /// Clients to run besides the raw floor: stacknet, ovn-nbctl, ovsdbapp or all.
        #[arg(long, value_delimiter = ',', default_value = "all")]
        clients: Vec<String>,
        /// Where ovsdbapp's venv lives (created on first use).
        #[arg(long, default_value = "target/bench-venv")]
        venv: std::path::PathBuf,
    },
    /// Services on OVN load balancers (NodePort and LoadBalancer among them, gateway routers on
    /// every node) into a live Northbound database: what one endpoint change writes and takes,
    /// next to writing the changed load balancer rows directly; at each node count.
    Services {
        #[arg(long, default_value_t = 1_000)]
        services: usize,
        #[arg(long, default_value_t = 10)]
        endpoints: usize,
        /// Node counts to run at (the rows written must not grow with them).
        #[arg(long, value_delimiter = ',', default_value = "10,100")]
        nodes: Vec<usize>,
        #[arg(long, default_value_t = 50)]
        changes: usize,
        /// Endpoint moves timed live on a real node (root; 0: none): until the VIP answers
        /// from the new backend, next to the load balancer row written directly.
        #[arg(long, default_value_t = 20)]
        live_changes: usize,
        /// With --live-changes: the stacknet-cni executable (default: next to this one).
        #[arg(long)]
        cni: Option<std::path::PathBuf>,
    },
    /// The whole controller (`stacknet controller`, the binary next to this one) on generated
    /// manifests into a live Northbound database: converge, peak RSS, restart, a 1,000-pod burst,
    /// each next to the database server's own CPU time. Without any of --pods, --policies,
    /// --services, --nodes: 10k/1k/1k/100 and 50k/5k/5k/500; with some, the others default to
    /// the first point.
    Controller {
        #[arg(long)]
        pods: Option<usize>,
        #[arg(long)]
        policies: Option<usize>,
        #[arg(long)]
        services: Option<usize>,
        #[arg(long)]
        nodes: Option<usize>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The stacknet executable (default: next to this one).
        #[arg(long)]
        stacknet: Option<std::path::PathBuf>,
    },
    /// The controller writing a churn of pods into a Northbound Raft cluster while one member
    /// fails (the leader killed, a follower killed, the leader frozen): updates lost, rows too
    /// many, time to converge after the failure, row by row against a run without failure.
    DbFailover {
        #[arg(long, default_value_t = 1_000)]
        pods: usize,
        /// Members of the Northbound cluster.
        #[arg(long, default_value_t = 3)]
        members: usize,
        /// The failures to run (default: all three), comma-separated.
        #[arg(long, value_enum, value_delimiter = ',')]
        fault: Vec<failover::Fault>,
        /// The stacknet executable (default: next to this one).
        #[arg(long)]
        stacknet: Option<std::path::PathBuf>,
    },
    /// Starts Keystone and Neutron (ML2/OVN) on loopback: pod starts through the OpenStack
    /// backend with and without port pools (Neutron calls and time per pod), and the
    /// security-group rules the policies take next to one rule per peer address.
    Openstack {
        #[arg(long, default_value_t = 200)]
        pods: usize,
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// Free ports kept per node in the pooled run.
        #[arg(long, default_value_t = 16)]
        pool_size: usize,
        /// Pods for the security-group rule count.
        #[arg(long, default_value_t = 500)]
        sg_pods: usize,
        #[arg(long, default_value_t = 50)]
        policies: usize,
        #[arg(long, default_value_t = 5)]
        namespaces: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// New Services made one at a time through Octavia (0: no Octavia).
        #[arg(long, default_value_t = 5)]
        services: usize,
    },
    /// A real node: fire `pods` CNI ADDs at once; time each from ADD start to the first
    /// datagram a peer pod gets answered. Needs root and the `stacknet-cni` executable.
    PodReady {
        #[arg(long, default_value_t = 100)]
        pods: usize,
        /// The stacknet-cni executable (default: next to this one).
        #[arg(long)]
        cni: Option<std::path::PathBuf>,
        /// Interfaces per pod: with N > 1 a second round of pods has the cluster network and
        /// N-1 layer2 secondary networks (one ADD attaches them all), reported next to the
        /// one-interface round of the same run.
        #[arg(long, default_value_t = 1)]
        attachments: usize,
    },
    /// A NetworkPolicy change until the live verdict flips, with `pods` pods in the network
    /// (two attached and talking), next to the same transaction written directly (the floor).
    PolicyReady {
        #[arg(long, default_value_t = 1_000)]
        pods: usize,
        /// Changes timed for ours and as many for the floor (each flips the verdict; half deny,
        /// half allow; even).
        #[arg(long, default_value_t = 20)]
        changes: usize,
        /// The stacknet-cni executable (default: next to this one).
        #[arg(long)]
        cni: Option<std::path::PathBuf>,
    },
    /// `stacknet entrypoint` (the stacknet-entrypoint executable): from the last dependency met
    /// to the command started, a Service through a local fake API server and a unix socket
    /// without one, next to the command spawned directly and kubernetes-entrypoint's 2 s polling
    /// (a model line).
    Entrypoint {
        #[arg(long, default_value_t = 100)]
        runs: usize,
        /// The stacknet-entrypoint executable (default: next to this one).
        #[arg(long)]
        binary: Option<std::path::PathBuf>,
    },
    /// The compute drain (`stacknet compute-drain`, in-process) emptying a hypervisor of a real
    /// Nova with two fake compute hosts (root; the OpenStack packages with Nova's), next to the
    /// same moves issued to Nova directly with the same parallelism.
    Drain {
        /// Servers booted on the host (every 5th, from the 3rd, stopped: cold-migrated).
        #[arg(long, default_value_t = 10)]
        instances: usize,
        /// Moves under way at once (the drainer's --parallel, and the floor's).
        #[arg(long, default_value_t = 2)]
        parallel: u32,
        /// How often the drainer reads Nova while a host drains (its --interval-ms).
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
    },
}

fn main() -> anyhow::Result<()> {
    // Diagnostics (off unless STACKNET_LOG is set) go to stderr; the figures to stdout.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("STACKNET_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    }
    // The async scenarios run on two workers, as many as the machine has cores.
    let runtime = || tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    match Cli::parse().scenario {
        Scenario::Policy { pods, namespaces, policies, seed, events } => {
            anyhow::ensure!(namespaces > 0, "--namespaces must be at least 1");
            policy(pods, namespaces, policies, seed, events)
        }
        Scenario::Controller { pods, policies, services, nodes, seed, stacknet } => {
            let points = if pods.is_none() && policies.is_none() && services.is_none() && nodes.is_none() {
                controller::DEFAULT_POINTS.to_vec()
            } else {
                let (p, n, s, d) = controller::DEFAULT_POINTS[0];
                vec![(pods.unwrap_or(p), policies.unwrap_or(n), services.unwrap_or(s), nodes.unwrap_or(d))]
            };
            for (pods, policies, services, nodes) in points {
                let stacknet = stacknet.clone();
                controller::run(controller::Args { pods, policies, services, nodes, seed, stacknet })?;
            }
            Ok(())
        }
        Scenario::DbFailover { pods, members, fault, stacknet } => {
            failover::run(failover::Args { pods, members, faults: fault, stacknet })
        }
        Scenario::Openstack { pods, nodes, pool_size, sg_pods, policies, namespaces, seed, services } => {
            let args = openstack::Args { pods, nodes, pool_size, sg_pods, policies, namespaces, seed, services };
            runtime()?.block_on(openstack::run(args))
        }
        Scenario::Services { services, endpoints, nodes, changes, live_changes, cni } => {
            let args = services::Args { services, endpoints, nodes, changes, live_changes, plugin: cni };
            runtime()?.block_on(services::run(args))
        }
        Scenario::PodReady { pods, cni, attachments } => {
            runtime()?.block_on(podready::run(podready::Args { pods, plugin: cni, attachments }))
        }
        Scenario::PolicyReady { pods, changes, cni } => {
            runtime()?.block_on(policyready::run(policyready::Args { pods, changes, plugin: cni }))
        }
        Scenario::Entrypoint { runs, binary } => {
            runtime()?.block_on(entrypoint::run(entrypoint::Args { runs, binary }))
        }
        Scenario::Drain { instances, parallel, interval_ms } => {
            runtime()?.block_on(drain::run(drain::Args { instances, parallel, interval_ms }))
        }
        Scenario::Ovsdb { rounds, ports, events, batch, window, nbctl_events, clients, venv } => {
            let args = ovsdb::Args { rounds, ports, events, batch, window, nbctl_events, clients, venv };
            runtime()?.block_on(ovsdb::run(args))
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

    let line = jsonline::line(&[
        ("bench", json!("policy")),
        ("pods", json!(pods)),
        ("namespaces", json!(namespaces)),
        ("policies", json!(policies)),
        ("seed", json!(seed)),
        ("compile_ms", json!((compile_ms * 100.0).round() / 100.0)),
        ("rules", json!(rules)),
        ("groups", json!(engine.group_count())),
        ("peer_sets", json!(engine.peer_set_count())),
        ("naive_rules", json!(naive)),
        ("naive_ratio", json!(if rules == 0 { 0.0 } else { ((naive as f64 / rules as f64) * 10.0).round() / 10.0 })),
        ("pod_event_us", json!((percentile(&times, 0.5) * 100.0).round() / 100.0)),
        ("pod_event_p99_us", json!((percentile(&times, 0.99) * 100.0).round() / 100.0)),
        ("pod_events", json!(times.len())),
        (
            "membership_changes_per_event",
            json!(if times.is_empty() {
                0.0
            } else {
                ((members_changed as f64 / times.len() as f64) * 10.0).round() / 10.0
            }),
        ),
    ]);
    println!("{line}");
    Ok(())
}
