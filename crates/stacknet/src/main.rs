//! The `stacknet` command: a thin shell. It reads files and flags, hands values to the engine,
//! and prints. Exit status: 0 done, 2 bad input (the message names the file, object and field),
//! 1 anything else.

/// The allocator of every stacknet process (the controller's reconcile and the OVSDB client's
/// JSON work allocate heavily; glibc's malloc spent a quarter of a 50k-pod converge).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod agent;
mod controller;
mod demo;
mod demo_telco;
mod input;
mod northsouth;
mod render;
mod sandbox;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use stacknet_engine::objects::Protocol;
use stacknet_engine::reach::{self, ProbeSpec};
use stacknet_engine::{ClusterIndex, PolicyEngine};

#[derive(Parser)]
#[command(name = "stacknet", version, about = "Kubernetes pods as first-class citizens of the OpenStack / OVN network")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Who can talk to whom: every probe between every ordered pair of distinct pods.
    Reach(ReachArgs),
    /// A real node on this machine (OVN, Open vSwitch, the agent), kept between commands.
    #[command(subcommand)]
    Sandbox(sandbox::SandboxCommand),
    /// The node agent the CNI plugin talks to (a daemon).
    Agent(agent::AgentArgs),
    /// Keeps the OVN network equal to the cluster (a folder of manifests, watched).
    Controller(Box<stacknet_controller::ControllerArgs>),
    /// The seed's application stack on a real node, programmed by the controller, every pair
    /// tried for real; exits 0 only if the live network equals what the policies say (root).
    Demo(demo::DemoArgs),
    /// A drop-in for kubernetes-entrypoint: waits for the pod's dependencies (its DEPENDENCY_*
    /// variables), then execs COMMAND in its place. `--timeout DURATION`, `--configmaps DIR`.
    #[command(disable_help_flag = true)]
    Entrypoint {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Drains a cordoned Node's Nova hypervisor: its nova-compute service disabled with a
    /// reason, its instances live- or cold-migrated away, progress on the Node, `kubectl drain`
    /// held until the host is empty; an uncordon enables the service again (a daemon).
    ComputeDrain(stacknet_drain::Args),
}

#[derive(clap::Args)]
struct ReachArgs {
    /// Kubernetes YAML: a file (multi-document, kind: List), a directory of them, or - for stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    files: Vec<String>,
    /// Destination port and protocol to try, e.g. 80/TCP, 53/UDP, 9000/SCTP (TCP when omitted).
    #[arg(short, long = "probe", value_name = "PORT/PROTO", required = true)]
    probes: Vec<ProbeSpec>,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// What decides each verdict: the NetworkPolicy semantics; the compiled model (groups,
    /// peer sets and rules, as a backend programs them); or ovn-trace on a private OVN that
    /// the OVN backend programmed (needs the Debian OVN packages); or live: a real node
    /// started here, pods as network namespaces wired by stacknet-cni, every probe a real
    /// connection (needs root, ovs-vswitchd and ovn-controller; SCTP needs kernel SCTP).
    #[arg(long, value_enum, default_value_t = Dataplane::Semantics)]
    dataplane: Dataplane,
    /// With --dataplane live: the stacknet-cni executable (default: next to this one).
    #[arg(long, value_name = "PATH")]
    cni: Option<std::path::PathBuf>,
    /// Every Node with an address takes part as `node/NAME` (its host network: kubelet's
    /// probes, host-network endpoints).
    #[arg(long)]
    nodes: bool,
    /// A host outside the cluster, `external/NAME` (repeatable).
    #[arg(long = "external", value_name = "NAME=IP")]
    externals: Vec<String>,
    /// Probe through this Service from every endpoint (repeatable), on its ports.
    #[arg(long = "service", value_name = "NS/NAME")]
    services: Vec<stacknet_engine::ObjectKey>,
    /// How --service probes reach it (repeatable; default clusterip): clusterip, nodeport
    /// (on every node's address), loadbalancer (its status address), externalip.
    #[arg(long = "via", value_name = "VIA")]
    via: Vec<stacknet_engine::paths::Via>,
    /// Pods' traffic leaving the cluster is translated to its node's address (as the
    /// controller's --snat): outside hosts cannot reach pods' own addresses.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    snat: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Dataplane {
    Semantics,
    Compiled,
    OvnTrace,
    Live,
}

/// Daemons log to stderr; `STACKNET_LOG` filters (default `info`).
fn init_logging() {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("STACKNET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Whatever STACKNET_LOG says: no request bodies or auth state from the OpenStack SDK.
    for d in stacknet_openstack::QUIET_LOGS {
        if let Ok(d) = d.parse() {
            filter = filter.add_directive(d);
        }
    }
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// A failure and the exit status it maps to.
enum Failure {
    /// Bad input: exit 2.
    Input(String),
    /// Anything else: exit 1.
    Other(anyhow::Error),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Reach(args) => reach_command(args),
        Command::Sandbox(cmd) => match sandbox::run(cmd) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(Failure::Other(e)),
        },
        Command::Agent(args) => agent::run(args).map_err(Failure::Other),
        Command::Entrypoint { args } => return stacknet_entrypoint::cli(&args),
        Command::ComputeDrain(args) => {
            init_logging();
            return stacknet_drain::main(args);
        }
        Command::Controller(args) => controller::run(*args),
        Command::Demo(args) => match demo::run(args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Input(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Programs a private OVN (started here, removed on return) and traces every probe.
fn ovn_trace(engine: PolicyEngine, probes: &[ProbeSpec]) -> anyhow::Result<Vec<reach::Matrix>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        eprintln!("starting a private OVN (ovsdb-server, ovn-northd) ...");
        let mut trace = stacknet_verify::OvnTrace::start("reach")?;
        let report = trace.program(&engine).await?;
        for w in trace.desired().warnings.iter().chain(&report.warnings) {
            eprintln!("warning: {w}");
        }
        let skipped = trace.untraceable(&engine);
        if !skipped.is_empty() {
            let names: Vec<String> = skipped.iter().map(|k| k.to_string()).collect();
            eprintln!("warning: left out (no logical port: hostNetwork or no address): {}", names.join(", "));
        }
        eprintln!("tracing {} probe(s) with ovn-trace ...", probes.len());
        Ok(trace.matrices(&engine, probes)?)
    })
}

/// Starts a node (removed on return, or on Ctrl-C), attaches every pod through the CNI plugin,
/// and tries every probe for real.
fn live(
    mut engine: PolicyEngine,
    probes: &[ProbeSpec],
    plugin: &std::path::Path,
) -> anyhow::Result<Vec<reach::Matrix>> {
    if probes.iter().any(|p| p.protocol == Protocol::Sctp) && !stacknet_verify::live::sctp_supported() {
        anyhow::bail!(
            "SCTP probes need SCTP in the kernel, and this one has none: leave out the SCTP probes, or use --dataplane ovn-trace"
        );
    }
    for note in stacknet_verify::live::assign_missing_addresses(&mut engine) {
        eprintln!("note: {note}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        eprintln!("starting a node (OVN, ovs-vswitchd, ovn-controller, the agent) ...");
        let mut node = stacknet_verify::live::Live::start("reach", plugin).await?;
        let work = async {
            let report = node.program(&engine).await?;
            for w in node.trace().desired().warnings.iter().chain(&report.warnings) {
                eprintln!("warning: {w}");
            }
            let skipped = node.trace().untraceable(&engine);
            if !skipped.is_empty() {
                let names: Vec<String> = skipped.iter().map(|k| k.to_string()).collect();
                eprintln!("warning: left out (no logical port: hostNetwork or no address): {}", names.join(", "));
            }
            eprintln!("probing ...");
            anyhow::Ok(node.matrices(&engine, probes).await?)
        };
        let result = tokio::select! {
            r = work => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        // Everything started here goes, whatever happened.
        let cleanup = node.shutdown().await;
        let matrices = result?;
        cleanup?;
        Ok(matrices)
    })
}

/// `reach` with nodes, outside hosts or Services: every pair of endpoints on each probe, then
/// the Service probes.
fn reach_beyond(
    index: &ClusterIndex,
    beyond: &northsouth::Beyond,
    probes: &[ProbeSpec],
    output: Output,
) -> Result<(), Failure> {
    let (index, fabric) = northsouth::fabric(index, beyond).map_err(Failure::Input)?;
    let endpoints = northsouth::endpoints(&index, &fabric, beyond);
    let grids = northsouth::grids(&index, &fabric, &endpoints, probes).map_err(Failure::Input)?;
    let services = northsouth::service_cases(&index, &fabric, &endpoints, beyond).map_err(Failure::Input)?;
    let names: Vec<String> = endpoints.iter().map(|e| e.to_string()).collect();
    let text = match output {
        Output::Json => {
            let mut cases = Vec::new();
            for g in &grids {
                for (i, row) in g.allowed.iter().enumerate() {
                    for (j, v) in row.iter().enumerate() {
                        let Some(v) = v else { continue };
                        let case = stacknet_engine::paths::Case {
                            from: endpoints[i].clone(),
                            to: stacknet_engine::paths::Target::Endpoint(endpoints[j].clone()),
                            via: stacknet_engine::paths::Via::Pod,
                            port: g.probe.port,
                            protocol: g.probe.protocol,
                            node: None,
                        };
                        cases.push((case, *v));
                    }
                }
            }
            cases.extend(services);
            render::json_cases(&cases)
        }
        Output::Table => {
            let color = render::use_color();
            let view: Vec<render::Grid<'_>> = grids
                .iter()
                .map(|g| render::Grid { title: g.probe.to_string(), names: names.clone(), allowed: &g.allowed })
                .collect();
            let mut t = render::grid_table(&view, color);
            if !services.is_empty() {
                t.push_str("Through Services:\n");
                for (c, v) in &services {
                    t.push_str(&format!("  {}  {c}\n", if *v { "✓" } else { "✗" }));
                }
            }
            t
        }
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(|e| Failure::Other(e.into()))
}

fn reach_command(args: ReachArgs) -> Result<(), Failure> {
    use stacknet_sandbox::Need;
    let (needs, dataplane): (&[Need], &str) = match args.dataplane {
        Dataplane::OvnTrace => (&[Need::Ovn], "ovn-trace"),
        Dataplane::Live => (&[Need::Root, Need::Ovn, Need::Chassis], "live"),
        _ => (&[], ""),
    };
    stacknet_sandbox::require(needs).map_err(|m| Failure::Other(anyhow::anyhow!("--dataplane {dataplane} {m}")))?;
    let plugin = match args.dataplane {
        Dataplane::Live => Some(sandbox::find_plugin(args.cni.clone()).map_err(Failure::Other)?),
        _ => None,
    };
    let loaded = input::load(&args.files).map_err(Failure::Input)?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let index = ClusterIndex::from_objects(loaded.objects);
    for w in input::address_warnings(&index) {
        eprintln!("warning: {w}");
    }
    let beyond = northsouth::Beyond {
        nodes: args.nodes,
        externals: args.externals.clone(),
        services: args.services.clone(),
        via: args.via.clone(),
        snat: args.snat,
    };
    if beyond.asked() {
        if !matches!(args.dataplane, Dataplane::Semantics) {
            return Err(Failure::Input(
                "--nodes, --external and --service are decided by the engine (--dataplane semantics); `stacknet demo` tries them live".into(),
            ));
        }
        return reach_beyond(&index, &beyond, &args.probes, args.output);
    }
    if index.pod_count() < 2 {
        eprintln!("warning: {} pod(s) in the input: reach needs at least two to compare", index.pod_count());
    }
    let matrices = match args.dataplane {
        Dataplane::Semantics => reach::direct(&index, &args.probes),
        Dataplane::Compiled => reach::compiled(&PolicyEngine::from_index(index), &args.probes),
        Dataplane::OvnTrace => ovn_trace(PolicyEngine::from_index(index), &args.probes).map_err(Failure::Other)?,
        Dataplane::Live => {
            let plugin = plugin.expect("found above");
            live(PolicyEngine::from_index(index), &args.probes, &plugin).map_err(Failure::Other)?
        }
    };
    let mut out = std::io::stdout().lock();
    let text = match args.output {
        Output::Json => render::json(&matrices),
        Output::Table => render::table(&matrices, render::use_color()),
    };
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(|e| Failure::Other(e.into()))
}
