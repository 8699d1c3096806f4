//! `stacknet sandbox up|down|status`: a real node on this machine, left running between
//! commands. NB + SB + ovn-northd, an Open_vSwitch database, ovs-vswitchd (userspace
//! datapath) and ovn-controller in a network namespace of the node's own, and the node agent;
//! everything under one directory, stopped by PID (only processes whose command line names
//! that directory) and removed by `down`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use stacknet_engine::{ClusterIndex, PolicyEngine};
use stacknet_node::protocol::{self, Request, Response};
use stacknet_ovn::{OvnBackend, Topology, build};
use stacknet_ovsdb::Remote;
use stacknet_sandbox::{Chassis, Ovn, Workdir};

const STATE: &str = "sandbox.json";

#[derive(clap::Subcommand)]
pub enum SandboxCommand {
    /// Start a node; with -f, program the network for those manifests (pods keep
    /// status.podIP; pods without one get an address).
    Up(UpArgs),
    /// Stop everything the sandbox started and remove its directory.
    Down(DirArg),
    /// What runs, and whether the agent is ready.
    Status(StatusArgs),
}

#[derive(clap::Args)]
pub struct DirArg {
    /// Where the sandbox lives.
    #[arg(long, default_value_os_t = default_dir())]
    dir: PathBuf,
}

#[derive(clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    dir: DirArg,
    /// Kubernetes YAML whose pods, policies and services to program.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    files: Vec<String>,
    /// The cluster id rows are tagged with.
    #[arg(long, default_value = "sandbox")]
    cluster: String,
    /// The stacknet-cni executable (default: next to this one).
    #[arg(long, value_name = "PATH")]
    cni: Option<PathBuf>,
    /// Members of the Northbound and of the Southbound database: 1 (standalone) or a Raft
    /// cluster of 3 or 5, as production runs them.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = db_cluster_size)]
    db_cluster: usize,
}

fn db_cluster_size(s: &str) -> Result<usize, String> {
    stacknet_sandbox::members(s)
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    dir: DirArg,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn default_dir() -> PathBuf {
    std::env::temp_dir().join("stacknet-sandbox")
}

#[derive(Debug, Serialize, Deserialize)]
struct Daemon {
    name: String,
    pid: u32,
}

/// What `up` leaves for `status` and `down`.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    cluster: String,
    nb: String,
    sb: String,
    ovs: String,
    agent_socket: PathBuf,
    chassis_netns: String,
    cni_plugin: PathBuf,
    cni_config: PathBuf,
    /// In the order to stop them.
    daemons: Vec<Daemon>,
}

fn read_state(dir: &Path) -> anyhow::Result<Option<State>> {
    let path = dir.join(STATE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            Ok(Some(serde_json::from_str(&text).with_context(|| format!("{}: not a sandbox state", path.display()))?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Whether `pid` runs and is ours: its command line names the sandbox directory (a PID reused
/// by someone else's process is left alone).
fn ours(pid: u32, dir: &Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(&*dir.to_string_lossy()))
        .unwrap_or(false)
}

/// The plugin: given, or next to this executable.
pub fn find_plugin(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("stacknet-cni"),
    };
    if !path.is_file() {
        bail!(
            "the CNI plugin {} is not there: build it (cargo build -p stacknet-cni, --release for a release build of stacknet) or pass --cni PATH",
            path.display()
        );
    }
    Ok(path)
}

pub fn run(cmd: SandboxCommand) -> anyhow::Result<bool> {
    match cmd {
        SandboxCommand::Up(args) => up(args).map(|()| true),
        SandboxCommand::Down(args) => down(&args.dir).map(|()| true),
        SandboxCommand::Status(args) => status(&args.dir.dir, args.json),
    }
}

fn up(args: UpArgs) -> anyhow::Result<()> {
    use stacknet_sandbox::Need;
    stacknet_sandbox::require(&[Need::Root, Need::Ovn, Need::Chassis])
        .map_err(|m| anyhow::anyhow!("stacknet sandbox up {m}"))?;
    let dir = std::path::absolute(&args.dir.dir)?;
    if let Some(state) = read_state(&dir)? {
        let running: Vec<String> =
            state.daemons.iter().filter(|d| ours(d.pid, &dir)).map(|d| format!("{} ({})", d.name, d.pid)).collect();
        if !running.is_empty() {
            bail!("a sandbox is up in {}: {} (stacknet sandbox down first)", dir.display(), running.join(", "));
        }
        // What is left of a sandbox whose daemons are gone.
        down(&dir)?;
    } else if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{} exists and is not a sandbox: choose another --dir", dir.display());
    }
    let plugin = std::path::absolute(find_plugin(args.cni)?)?;
    let engine = if args.files.is_empty() {
        None
    } else {
        let loaded = crate::input::load(&args.files).map_err(|e| anyhow::anyhow!(e))?;
        for w in &loaded.warnings {
            eprintln!("warning: {w}");
        }
        let mut engine = PolicyEngine::from_index(ClusterIndex::from_objects(loaded.objects));
        for note in stacknet_verify::live::assign_missing_addresses(&mut engine) {
            eprintln!("note: {note}");
        }
        Some(engine)
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Until everything is up, a failure stops what started and removes the directory.
    let started = start(&dir, &args.cluster, &plugin, engine.as_ref(), args.db_cluster);
    match started {
        Ok(state) => {
            print_up(&dir, &state);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

fn start(
    dir: &Path,
    cluster: &str,
    plugin: &Path,
    engine: Option<&PolicyEngine>,
    db_members: usize,
) -> anyhow::Result<State> {
    if db_members > 1 {
        eprintln!("starting NB and SB as Raft clusters of {db_members}, and ovn-northd ...");
    } else {
        eprintln!("starting NB, SB and ovn-northd ...");
    }
    std::fs::create_dir_all(dir.join("ovn"))?;
    let ovn = Ovn::clustered_in(Workdir::Kept(dir.join("ovn")), db_members)?;
    let sb = ovn.sb_remote().context("no Southbound database")?;
    eprintln!("starting the node (Open_vSwitch database, ovs-vswitchd, ovn-controller) ...");
    let mut chassis = Chassis::start(&dir.join("ovn"), "node-1", &sb, "127.0.0.1")?;
    let socket = dir.join("agent.sock");
    let log = std::fs::File::create(dir.join("agent.log"))?;
    let mut agent = Command::new(std::env::current_exe()?);
    agent
        .arg("agent")
        .args(["--cluster", cluster])
        .args(["--ovs", &chassis.ovs_remote()])
        .args(["--nb", &ovn.nb.remote()])
        .arg("--socket")
        .arg(&socket)
        .arg("--host-netns")
        .arg(chassis.netns().path())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut agent, 0);
    let mut agent = agent.spawn().context("starting the agent")?;
    let stop_agent = |agent: &mut std::process::Child| {
        let _ = agent.kill();
        let _ = agent.wait();
    };
    if let Err(e) = wait_ready(&socket, &mut agent) {
        stop_agent(&mut agent);
        return Err(e.context(format!("the agent did not become ready (see {})", dir.join("agent.log").display())));
    }
    if let Some(engine) = engine {
        let programmed = program(&ovn, cluster, engine);
        if let Err(e) = programmed {
            stop_agent(&mut agent);
            return Err(e);
        }
    }
    let cni_config = dir.join("stacknet.conf");
    let conf =
        serde_json::json!({"cniVersion": "1.1.0", "name": "stacknet", "type": "stacknet-cni", "agentSocket": socket});
    std::fs::write(&cni_config, serde_json::to_string_pretty(&conf)?)?;
    let mut daemons = vec![Daemon { name: "stacknet agent".into(), pid: agent.id() }];
    daemons.extend(chassis.daemons().into_iter().map(|(name, pid)| Daemon { name, pid }));
    daemons.extend(ovn.daemons().into_iter().map(|(name, pid)| Daemon { name, pid }));
    let state = State {
        cluster: cluster.into(),
        nb: ovn.nb.remote(),
        sb,
        ovs: chassis.ovs_remote(),
        agent_socket: socket,
        chassis_netns: chassis.netns().name().to_string(),
        cni_plugin: plugin.into(),
        cni_config,
        daemons,
    };
    std::fs::write(dir.join(STATE), serde_json::to_string_pretty(&state)?)?;
    // From here on they outlive this command.
    chassis.detach();
    ovn.detach();
    Ok(state)
}

fn wait_ready(socket: &Path, agent: &mut std::process::Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        if let Some(status) = agent.try_wait()? {
            bail!("the agent exited ({status})");
        }
        if socket.exists() {
            let req = Request { command: Some(protocol::Command::Status), ..Request::default() };
            match protocol::call(socket, &req, Duration::from_secs(2)) {
                Ok(Response::Error(e)) | Err(e) => last = e.to_string(),
                Ok(_) => return Ok(()),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{last}")
}

fn program(ovn: &Ovn, cluster: &str, engine: &PolicyEngine) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let nb = Remote::parse_list(&ovn.nb.remote()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let desired = build(engine, &Topology::from_pods(cluster, engine.index()));
    for w in &desired.warnings {
        eprintln!("warning: {w}");
    }
    let report = runtime.block_on(async { OvnBackend::connect(nb).reconcile(&desired).await })?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    eprintln!("programmed {} pod port(s) and {} load balancer(s)", desired.ports.len(), desired.load_balancers.len());
    Ok(())
}

fn print_up(dir: &Path, s: &State) {
    println!("sandbox up in {}", dir.display());
    println!("  Northbound      {}", s.nb);
    println!("  Southbound      {}", s.sb);
    println!("  Open_vSwitch    {} (node namespace {})", s.ovs, s.chassis_netns);
    println!("  agent           {}", s.agent_socket.display());
    println!("  CNI config      {}", s.cni_config.display());
    println!();
    println!("attach a pod the way a container runtime does:");
    println!("  ip netns add demo");
    println!(
        "  CNI_COMMAND=ADD CNI_CONTAINERID=demo CNI_NETNS=/var/run/netns/demo CNI_IFNAME=eth0 CNI_PATH={} \\",
        s.cni_plugin.parent().map(|p| p.display().to_string()).unwrap_or_default()
    );
    println!(
        "    CNI_ARGS='K8S_POD_NAMESPACE=<ns>;K8S_POD_NAME=<name>' {} < {}",
        s.cni_plugin.display(),
        s.cni_config.display()
    );
    println!("stop it: stacknet sandbox down --dir {}", dir.display());
}

fn down(dir: &Path) -> anyhow::Result<()> {
    let dir = std::path::absolute(dir)?;
    let Some(state) = read_state(&dir)? else {
        if dir.exists() {
            bail!("{} is not a sandbox (no {STATE}): left alone", dir.display());
        }
        println!("no sandbox in {}", dir.display());
        return Ok(());
    };
    for d in &state.daemons {
        if !ours(d.pid, &dir) {
            continue;
        }
        stop(d.pid, &dir);
        println!("stopped {} ({})", d.name, d.pid);
    }
    // The node's namespace (and with it the host ends of every pod's veth).
    let netns = Path::new("/var/run/netns").join(&state.chassis_netns);
    if state.chassis_netns.starts_with("snc-") && netns.exists() {
        let out = Command::new("ip").args(["netns", "del", &state.chassis_netns]).output()?;
        if !out.status.success() {
            eprintln!("warning: ip netns del {}: {}", state.chassis_netns, String::from_utf8_lossy(&out.stderr).trim());
        }
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    println!("sandbox in {} removed", dir.display());
    Ok(())
}

/// SIGTERM, then SIGKILL if it is still there after a few seconds.
fn stop(pid: u32, dir: &Path) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let Ok(raw) = i32::try_from(pid) else { return };
    let pid = Pid::from_raw(raw);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !ours(raw as u32, dir) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(pid, Signal::SIGKILL);
}

/// Prints what runs; true when everything does and the agent is ready.
fn status(dir: &Path, json: bool) -> anyhow::Result<bool> {
    let dir = std::path::absolute(dir)?;
    let Some(state) = read_state(&dir)? else {
        if json {
            println!("{}", serde_json::json!({"dir": dir, "up": false}));
        } else {
            println!("no sandbox in {}", dir.display());
        }
        return Ok(false);
    };
    let daemons: Vec<(&Daemon, bool)> = state.daemons.iter().map(|d| (d, ours(d.pid, &dir))).collect();
    let req = Request { command: Some(protocol::Command::Status), ..Request::default() };
    let agent = match protocol::call(&state.agent_socket, &req, Duration::from_secs(2)) {
        Ok(Response::Error(e)) | Err(e) => Err(e.to_string()),
        Ok(_) => Ok(()),
    };
    let up = daemons.iter().all(|(_, running)| *running) && agent.is_ok();
    if json {
        let v = serde_json::json!({
            "dir": dir,
            "up": up,
            "cluster": state.cluster,
            "nb": state.nb,
            "sb": state.sb,
            "ovs": state.ovs,
            "agent_socket": state.agent_socket,
            "agent_ready": agent.is_ok(),
            "agent_error": agent.as_ref().err(),
            "cni_config": state.cni_config,
            "daemons": daemons.iter().map(|(d, r)| serde_json::json!({"name": d.name, "pid": d.pid, "running": r})).collect::<Vec<_>>(),
        });
        println!("{v}");
    } else {
        println!("sandbox in {}: {}", dir.display(), if up { "up" } else { "degraded" });
        for (d, running) in &daemons {
            println!("  {:<38} {:>8}  {}", d.name, d.pid, if *running { "running" } else { "not running" });
        }
        match &agent {
            Ok(()) => println!("  agent ready on {}", state.agent_socket.display()),
            Err(e) => println!("  agent not ready: {e}"),
        }
        println!("  CNI config {}", state.cni_config.display());
    }
    Ok(up)
}
