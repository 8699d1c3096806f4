//! Compute drain (`stacknet compute-drain`): when a Node that is a Nova hypervisor is cordoned
//! (`spec.unschedulable`, or a configured taint), its nova-compute service is disabled with a
//! reason, its ACTIVE (and PAUSED) servers are live-migrated and its SHUTOFF ones cold-migrated
//! and confirmed, a few at a time; a move that keeps failing is retried with backoff, then
//! reported. Progress is the Node's `ComputeDrained` condition (with counts) and Events. While
//! servers remain on a host, a hold pod on that node with a PodDisruptionBudget keeps
//! `kubectl drain` from finishing. An uncordon enables the service again, if we disabled it.
//! A host whose service is down is reported, never evacuated.
//!
//! Nothing lives only in memory: where servers are, which moves run and how often one failed
//! come from Nova; whether and since when a node drains from the Node. [`plan`] decides,
//! [`run`] reads and executes.
#![forbid(unsafe_code)]

pub mod plan;
pub mod run;

use std::path::PathBuf;
use std::time::Duration;

/// The reporting controller of the Events posted.
pub const REPORTER: &str = "stacknet.io/compute-drain";
/// The Node condition that says where a drain stands.
pub const CONDITION: &str = "ComputeDrained";
/// The Node annotation holding when the drain began (seconds since the epoch).
pub const SINCE: &str = "stacknet.io/compute-drain-since";
/// The label of the hold pods and budgets (value: the node's hold id).
pub const HOLD_LABEL: &str = "stacknet.io/drain-hold";

/// `stacknet compute-drain` options.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// A taint key that also counts as cordoned (any effect); repeatable.
    #[arg(long = "taint", value_name = "KEY")]
    pub taints: Vec<String>,
    /// Read the Nova host name from this Node label (default: the Node's name).
    #[arg(long, value_name = "KEY")]
    pub host_label: Option<String>,
    /// Moves under way at once per host.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub parallel: u32,
    /// Failed moves of one server before it is given up and reported.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub attempts: u32,
    /// Seconds to wait after a server's first failed move (doubled after each further one).
    #[arg(long, default_value_t = 10.0)]
    pub backoff: f64,
    /// The longest wait between two attempts, in seconds.
    #[arg(long, default_value_t = 300.0)]
    pub backoff_max: f64,
    /// How often Nova is read while a host drains, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub interval_ms: u64,
    /// How often Nova is read otherwise (servers per host, for the holds), in seconds.
    #[arg(long, default_value_t = 30)]
    pub idle_interval: u64,
    /// Where the hold pods and their PodDisruptionBudgets live.
    #[arg(long, env = "POD_NAMESPACE", default_value = "stacknet-system")]
    pub namespace: String,
    /// The hold pods' image (it must be pullable on every hypervisor node: a pod that never
    /// starts holds nothing).
    #[arg(long, default_value = "registry.k8s.io/pause:3.10")]
    pub hold_image: String,
    /// Do not hold `kubectl drain` (no hold pods, no budgets).
    #[arg(long)]
    pub no_hold: bool,
    /// The cloud's name in clouds.yaml (else `OS_CLOUD`, else the `OS_*` variables).
    #[arg(long)]
    pub os_cloud: Option<String>,
    /// A clouds.yaml besides the usual search path.
    #[arg(long)]
    pub clouds_yaml: Option<PathBuf>,
}

impl Args {
    pub fn settings(&self) -> Result<plan::Settings, String> {
        for (flag, v) in [("--backoff", self.backoff), ("--backoff-max", self.backoff_max)] {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("{flag} {v}: seconds, zero or more"));
            }
        }
        Ok(plan::Settings {
            parallel: self.parallel as usize,
            attempts: self.attempts,
            backoff: self.backoff,
            backoff_max: self.backoff_max.max(self.backoff),
        })
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.max(100))
    }

    pub fn idle_interval(&self) -> Duration {
        Duration::from_secs(self.idle_interval.max(1))
    }

    pub fn cloud(&self) -> stacknet_openstack::CloudSource {
        use stacknet_openstack::CloudSource;
        match (&self.os_cloud, CloudSource::from_env()) {
            (Some(name), _) => CloudSource::Named { cloud: name.clone(), file: self.clouds_yaml.clone() },
            (None, CloudSource::Named { cloud, .. }) => CloudSource::Named { cloud, file: self.clouds_yaml.clone() },
            (None, other) => other,
        }
    }
}

/// Runs the controller until it is killed: exit 2 for bad options, 1 when the Kubernetes API
/// or Nova cannot be reached at the start (it keeps going through later outages).
pub fn main(args: Args) -> std::process::ExitCode {
    if let Err(e) = args.settings() {
        eprintln!("error: {e}");
        return std::process::ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(run::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
