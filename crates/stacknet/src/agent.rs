//! `stacknet agent`: the node agent daemon the CNI plugin talks to. It keeps the connections
//! to the local Open_vSwitch database and the Northbound database (and their replicas) warm,
//! so that an ADD costs a lookup in memory, the plumbing, one transaction and the wait for
//! ovn-controller.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use stacknet_node::agent::{Agent, AgentConfig};
use stacknet_ovsdb::Remote;

#[derive(clap::Args)]
pub struct AgentArgs {
    /// The cluster id the controller tags its rows with.
    #[arg(long, default_value = "stacknet")]
    cluster: String,
    /// The local Open_vSwitch database (repeat for more than one remote).
    #[arg(long = "ovs", value_name = "REMOTE", default_value = "unix:/var/run/openvswitch/db.sock")]
    ovs: Vec<Remote>,
    /// The OVN Northbound database (repeat for each member of a cluster).
    #[arg(long = "nb", value_name = "REMOTE", required = true)]
    nb: Vec<Remote>,
    /// Where to listen for the plugin.
    #[arg(long, default_value_os_t = stacknet_node::agent::default_socket())]
    socket: PathBuf,
    /// The network namespace ovs-vswitchd runs in, where host ends of veths go (default: ours).
    #[arg(long, value_name = "PATH")]
    host_netns: Option<PathBuf>,
    /// The integration bridge.
    #[arg(long, default_value = "br-int")]
    bridge: String,
    /// Pod interface MTU, unless the network configuration says otherwise.
    #[arg(long, default_value_t = 1400)]
    mtu: u32,
    /// How long an ADD waits for the pod's logical port to be programmed, in seconds.
    #[arg(long, default_value_t = 10)]
    lookup_timeout: u64,
    /// How long an ADD waits for ovn-controller to install the port, in seconds.
    #[arg(long, default_value_t = 30)]
    install_timeout: u64,
    /// The Kubernetes node this agent runs on (its chassis's system-id): the agent keeps the
    /// node's management port `sn-mgmt0` (its interface on the pod network). Without it there
    /// is no management port.
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    node: Option<String>,
    /// The node's uplink bridge (e.g. br-ex, holding the uplink and the node's address), shared
    /// with the node's gateway router: the agent maps the gateway's physical network to it
    /// (`ovn-bridge-mappings`), gives it the gateway router's MAC and keeps its flows. Needs
    /// `--node`. Without it the bridge is left alone.
    #[arg(long, value_name = "BRIDGE")]
    gateway_bridge: Option<String>,
}

/// Runs until SIGTERM or SIGINT, then removes its socket.
pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    anyhow::ensure!((576..=65535).contains(&args.mtu), "--mtu {}: not an MTU (576-65535)", args.mtu);
    crate::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        if let Some(dir) = args.socket.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let config = AgentConfig {
            cluster: args.cluster,
            bridge: args.bridge,
            mtu: args.mtu,
            lookup_timeout: Duration::from_secs(args.lookup_timeout),
            install_timeout: Duration::from_secs(args.install_timeout),
            host_netns: args.host_netns,
            node: args.node.filter(|n| !n.is_empty()),
            gateway_bridge: args.gateway_bridge.filter(|b| !b.is_empty()),
        };
        let agent = Arc::new(Agent::new(config, args.ovs, args.nb).context("starting the agent")?);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        eprintln!("stacknet agent listening on {}", args.socket.display());
        let result = tokio::select! {
            r = agent.serve(&args.socket) => r.with_context(|| format!("serving on {}", args.socket.display())),
            _ = term.recv() => Ok(()),
            _ = tokio::signal::ctrl_c() => Ok(()),
        };
        let _ = std::fs::remove_file(&args.socket);
        result
    })
}
