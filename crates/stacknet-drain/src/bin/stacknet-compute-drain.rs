//! `stacknet-compute-drain`: the compute drain alone (as `stacknet compute-drain`).

use clap::Parser;

#[derive(Parser)]
#[command(name = "stacknet-compute-drain", about = "Drains a cordoned Node's Nova hypervisor")]
struct Cli {
    #[command(flatten)]
    args: stacknet_drain::Args,
}

fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STACKNET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let filter =
        stacknet_openstack::QUIET_LOGS.iter().filter_map(|d| d.parse().ok()).fold(filter, |f, d| f.add_directive(d));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    stacknet_drain::main(Cli::parse().args)
}
