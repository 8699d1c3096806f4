//! The `stacknet` command: a thin shell. It reads files and flags, hands values to the engine,
//! and prints. Exit status: 0 done, 2 bad input (the message names the file, object and field),
//! 1 anything else.

/// mimalloc: the OVSDB client and the engine allocate a lot of small objects.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod input;
mod render;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
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
    /// the OVN backend programmed (needs the Debian OVN packages).
    #[arg(long, value_enum, default_value_t = Dataplane::Semantics)]
    dataplane: Dataplane,
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

fn reach_command(args: ReachArgs) -> Result<(), Failure> {
    let loaded = input::load(&args.files).map_err(Failure::Input)?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let index = ClusterIndex::from_objects(loaded.objects);
    for w in input::address_warnings(&index) {
        eprintln!("warning: {w}");
    }
    if index.pod_count() < 2 {
        eprintln!("warning: {} pod(s) in the input: reach needs at least two to compare", index.pod_count());
    }
    let matrices = match args.dataplane {
        Dataplane::Semantics => reach::direct(&index, &args.probes),
        Dataplane::Compiled => reach::compiled(&PolicyEngine::from_index(index), &args.probes),
        Dataplane::OvnTrace => ovn_trace(PolicyEngine::from_index(index), &args.probes).map_err(Failure::Other)?,
    };
    let mut out = std::io::stdout().lock();
    let text = match args.output {
        Output::Json => render::json(&matrices),
        Output::Table => render::table(&matrices, render::use_color()),
    };
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(|e| Failure::Other(e.into()))
}
