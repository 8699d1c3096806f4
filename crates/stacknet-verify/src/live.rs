//! The live dataplane: a real node (NB, SB, ovn-northd, an Open_vSwitch database,
//! ovs-vswitchd with the userspace datapath, ovn-controller), pods as network namespaces
//! wired by the `stacknet-cni` plugin through the node agent exactly as a container runtime
//! would, small listeners in every pod, and every probe a real connection attempt.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use stacknet_engine::PolicyEngine;
use stacknet_engine::objects::{ClusterObject, ObjectKey, Protocol};
use stacknet_engine::reach::{Matrix, ProbeSpec};
use stacknet_node::agent::{Agent, AgentConfig};
use stacknet_node::netns::run_in;
use stacknet_ovn::Report;
use stacknet_sandbox::{Chassis, Netns};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::{Error, OvnTrace, Probe};

static PODS: AtomicUsize = AtomicUsize::new(0);

fn live(e: impl std::fmt::Display) -> Error {
    Error::Live(e.to_string())
}

/// A pod on the node: its namespace, the container id the runtime used, its listeners.
struct LivePod {
    netns: Netns,
    container: String,
    uid: String,
    ips: Vec<IpAddr>,
    listening: BTreeSet<(u16, Protocol)>,
    tasks: Vec<JoinHandle<()>>,
    /// A VM's port plugged by hand (no CNI): removed with the node, not by CNI DEL.
    vm: bool,
}

impl Drop for LivePod {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub struct Live {
    trace: OvnTrace,
    chassis: Chassis,
    agent: AgentThread,
    socket: PathBuf,
    plugin: PathBuf,
    pods: BTreeMap<ObjectKey, LivePod>,
    _dir: tempfile::TempDir,
    /// How long a probe waits for an answer (a denied probe costs this much).
    pub timeout: Duration,
    /// Probes in flight at once.
    pub parallel: usize,
}

impl Live {
    /// Starts the node and its agent (within a tokio runtime). `plugin` is the
    /// `stacknet-cni` executable.
    pub async fn start(cluster: &str, plugin: &Path) -> Result<Live, Error> {
        if !plugin.is_file() {
            return Err(live(format!("CNI plugin {} not found", plugin.display())));
        }
        let trace = OvnTrace::start(cluster)?;
        let sb = trace.ovn().sb_remote().ok_or_else(|| live("no Southbound database"))?;
        let chassis = Chassis::start(trace.ovn().dir(), "node-1", &sb, "127.0.0.1")?;
        let dir = tempfile::Builder::new().prefix("stacknet-agent-").tempdir().map_err(live)?;
        let socket = dir.path().join("agent.sock");
        let config =
            AgentConfig { cluster: cluster.into(), host_netns: Some(chassis.netns().path()), ..AgentConfig::default() };
        let ovs_remote = chassis.ovs_remote().parse().map_err(Error::Backend)?;
        let nb_remote = trace.ovn().nb.remote().parse().map_err(Error::Backend)?;
        // The agent is a daemon of its own on a node: it gets its own runtime and threads, so
        // that what the harness does (listeners, probes) does not hold up its requests.
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let s = socket.clone();
        let agent = std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            runtime.block_on(async move {
                let agent = match Agent::new(config, vec![ovs_remote], vec![nb_remote]) {
                    Ok(a) => Arc::new(a),
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                tokio::select! {
                    _ = agent.serve(&s) => {}
                    _ = stopped => {}
                }
            });
        });
        ready_rx.recv().map_err(|_| live("the agent thread ended"))?.map_err(live)?;
        let agent = AgentThread { stop: Some(stop), thread: Some(agent) };
        for _ in 0..1000 {
            if socket.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Live {
            trace,
            chassis,
            agent,
            socket,
            plugin: plugin.into(),
            pods: BTreeMap::new(),
            _dir: dir,
            timeout: Duration::from_millis(1500),
            parallel: 128,
        })
    }

    pub fn trace(&self) -> &OvnTrace {
        &self.trace
    }

    pub fn chassis(&self) -> &Chassis {
        &self.chassis
    }

    pub fn agent_socket(&self) -> &Path {
        &self.socket
    }

    /// Runs the plugin as a runtime does (`CNI_*` environment, network configuration on stdin,
    /// `pod` as K8S_POD_NAMESPACE/NAME/UID in CNI_ARGS); its JSON answer, or the CNI error.
    pub async fn cni(
        &self,
        command: &str,
        container: &str,
        netns: &Path,
        pod: Option<(&ObjectKey, &str)>,
    ) -> Result<serde_json::Value, Error> {
        let conf = serde_json::json!({"cniVersion": "1.1.0", "name": "stacknet", "type": "stacknet-cni", "agentSocket": self.socket});
        let mut cmd = tokio::process::Command::new(&self.plugin);
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", self.plugin.parent().unwrap_or(Path::new("/")))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if let Some((key, uid)) = pod {
            cmd.env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={uid}",
                    key.namespace, key.name
                ),
            );
        }
        let mut child = cmd.spawn().map_err(|e| live(format!("{}: {e}", self.plugin.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(conf.to_string().as_bytes()).await.map_err(live)?;
        }
        let out = child.wait_with_output().await.map_err(live)?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value =
            if text.trim().is_empty() { serde_json::Value::Null } else { serde_json::from_str(&text).map_err(live)? };
        if out.status.success() { Ok(v) } else { Err(live(format!("CNI {command} for {container}: {v}"))) }
    }

    /// Programs the network (the Northbound database) for the engine's cluster and waits until
    /// ovn-northd has compiled it; attaches no pods.
    pub async fn program_network(&mut self, engine: &PolicyEngine) -> Result<Report, Error> {
        self.trace.program(engine).await
    }

    /// A new network namespace for a pod, with the container id a runtime would give it.
    pub fn new_sandbox() -> Result<(Netns, String), Error> {
        let n = PODS.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{:x}", std::process::id() as usize * 100_000 + n);
        Ok((Netns::create(&format!("snp-{tag}"))?, format!("live-{tag}")))
    }

    /// The namespace of an attached pod.
    pub fn pod_netns(&self, key: &ObjectKey) -> Option<&Netns> {
        self.pods.get(key).map(|p| &p.netns)
    }

    /// Programs the network for the engine's cluster, then brings the pods to match: new pods
    /// get a namespace and a CNI ADD, gone (or changed) ones a CNI DEL; returns once
    /// ovn-controller has installed everything.
    pub async fn program(&mut self, engine: &PolicyEngine) -> Result<Report, Error> {
        let report = self.trace.program(engine).await?;
        let desired = self.trace.desired().clone();
        let index = engine.index();
        let wanted: BTreeMap<ObjectKey, (String, Vec<IpAddr>)> = desired
            .ports
            .iter()
            .map(|(k, p)| {
                let uid = index.pod_id(k).and_then(|id| index.pod(id)).and_then(|p| p.uid.clone()).unwrap_or_default();
                (k.clone(), (uid, p.ips.clone()))
            })
            .collect();
        self.converge_pods(wanted).await?;
        self.settle()?;
        Ok(report)
    }

    /// Brings the attached pods to `wanted` (pod → UID and addresses): a CNI DEL for each pod
    /// gone or changed, a namespace and a CNI ADD for each new one. VMs stay as they are.
    async fn converge_pods(&mut self, wanted: BTreeMap<ObjectKey, (String, Vec<IpAddr>)>) -> Result<(), Error> {
        let stale: Vec<ObjectKey> = self
            .pods
            .iter()
            .filter(|(k, p)| !p.vm && wanted.get(*k).is_none_or(|(uid, ips)| *uid != p.uid || *ips != p.ips))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            if let Some(p) = self.pods.remove(&k) {
                self.cni("DEL", &p.container, &p.netns.path(), None).await?;
            }
        }
        for (k, (uid, ips)) in wanted {
            if self.pods.contains_key(&k) {
                continue;
            }
            let (netns, container) = Live::new_sandbox()?;
            self.cni("ADD", &container, &netns.path(), Some((&k, &uid))).await?;
            self.pods.insert(
                k,
                LivePod { netns, container, uid, ips, listening: BTreeSet::new(), tasks: Vec::new(), vm: false },
            );
        }
        Ok(())
    }

    /// Waits until ovn-controller has caught up with the Northbound database, then clears
    /// conntrack and the datapath's cached flows, so that probes judge the policies now
    /// programmed on new connections.
    pub fn settle(&self) -> Result<(), Error> {
        self.trace.ovn().nbctl(&["--wait=hv", "sync"])?;
        // Probes judge the policies just programmed, on new connections. Conntrack entries of
        // earlier probes would let a probe that reuses an old 5-tuple (ephemeral ports do repeat
        // over thousands of probes) ride on a connection the previous policies allowed, and
        // datapath flows cached under the previous policies live until the revalidators get to
        // them (asynchronously, after ovn-controller's flows are in): clear both.
        self.chassis.appctl(&["dpctl/flush-conntrack"])?;
        self.chassis.appctl(&["dpctl/del-flows"])?;
        Ok(())
    }

    /// Attaches (CNI ADD) the engine's pods whose ports someone else — a running controller —
    /// has made in the Northbound database, each with the address its port says; pods already
    /// attached stay, pods gone are detached (CNI DEL). Returns the pods that have no port.
    pub async fn attach(&mut self, engine: &PolicyEngine, cluster: &str) -> Result<Vec<ObjectKey>, Error> {
        let nb = stacknet_ovsdb::Client::start(stacknet_ovsdb::ClientConfig::new(
            vec![self.trace.ovn().nb.remote().parse().map_err(Error::Backend)?],
            stacknet_ovsdb::nb::DATABASE,
        ));
        nb.connected(Duration::from_secs(10)).await.map_err(live)?;
        let index = engine.index();
        let mut wanted = BTreeMap::new();
        let mut missing = Vec::new();
        for (_, pod) in index.pods() {
            let net = nb.replica().as_ref().and_then(|r| stacknet_ovn::lookup::pod_network(r, cluster, &pod.key));
            match net {
                Some(n) => {
                    wanted.insert(
                        pod.key.clone(),
                        (pod.uid.clone().unwrap_or_default(), n.addresses.iter().map(|a| a.0).collect::<Vec<_>>()),
                    );
                }
                None => missing.push(pod.key.clone()),
            }
        }
        self.converge_pods(wanted).await?;
        self.settle()?;
        Ok(missing)
    }

    /// Plugs a VM into logical switch `switch` as an operator would, outside stacknet: a
    /// Logical_Switch_Port `port` (no stacknet tags) with `mac ip`, a namespace standing for the
    /// VM with that address (`prefix`) and a default route via `gateway`, bound on this node.
    /// It takes part in probes as `key`.
    pub async fn add_vm(
        &mut self,
        key: ObjectKey,
        switch: &str,
        port: &str,
        ip: IpAddr,
        prefix: u8,
        gateway: IpAddr,
    ) -> Result<(), Error> {
        let mac = stacknet_ovn::topology::mac_for(ip).replacen("0a:58", "0a:5e", 1);
        self.trace.ovn().nbctl(&["lsp-add", switch, port, "--", "lsp-set-addresses", port, &format!("{mac} {ip}")])?;
        let (netns, _) = Live::new_sandbox()?;
        let host = format!("vm{}", &stacknet_ovn::names::hash(&[port])[..10]);
        let iface = stacknet_node::plumb::PodInterface {
            host: host.clone(),
            ifname: "eth0".into(),
            mac,
            addresses: vec![(ip, prefix)],
            gateways: vec![gateway],
            mtu: 1400,
            vlan: None,
        };
        let handle = stacknet_node::netns::netlink_in_async(&self.chassis.netns().path()).await.map_err(live)?;
        stacknet_node::plumb::plumb(&handle, &netns.path(), &iface).await.map_err(live)?;
        let ovs = stacknet_node::ovs::client(vec![self.chassis.ovs_remote().parse().map_err(Error::Backend)?]);
        ovs.connected(Duration::from_secs(10)).await.map_err(live)?;
        let binding = stacknet_node::ovs::Binding {
            port: host.clone(),
            iface_id: port.into(),
            iface_id_ver: None,
            container: format!("vm-{port}"),
            ifname: "eth0".into(),
            netns: netns.path().display().to_string(),
        };
        stacknet_node::ovs::bind(&ovs, "br-int", &binding).await.map_err(live)?;
        stacknet_node::ovs::wait_installed(&ovs, &host, Duration::from_secs(30)).await.map_err(live)?;
        self.pods.insert(
            key,
            LivePod {
                netns,
                container: String::new(),
                uid: String::new(),
                ips: vec![ip],
                listening: BTreeSet::new(),
                tasks: Vec::new(),
                vm: true,
            },
        );
        Ok(())
    }

    /// Starts a listener for every spec in every pod (on the pod's addresses); each answers
    /// with the pod's name. SCTP is refused when the kernel has no SCTP.
    pub async fn listen(&mut self, specs: &[ProbeSpec]) -> Result<(), Error> {
        for (key, pod) in &mut self.pods {
            for spec in specs {
                if !pod.listening.insert((spec.port, spec.protocol)) {
                    continue;
                }
                let name = key.to_string();
                for ip in pod.ips.clone() {
                    let addr = SocketAddr::new(ip, spec.port);
                    let path = pod.netns.path();
                    let reply = name.clone();
                    let task = match spec.protocol {
                        Protocol::Tcp => {
                            let l = run_in(&path, move || std::net::TcpListener::bind(addr))
                                .map_err(live)?
                                .map_err(|e| live(format!("{name} listen {addr}: {e}")))?;
                            l.set_nonblocking(true).map_err(live)?;
                            let l = tokio::net::TcpListener::from_std(l).map_err(live)?;
                            tokio::spawn(async move {
                                while let Ok((mut s, _)) = l.accept().await {
                                    let r = reply.clone();
                                    tokio::spawn(async move {
                                        let _ = s.write_all(r.as_bytes()).await;
                                    });
                                }
                            })
                        }
                        Protocol::Udp => {
                            let u = run_in(&path, move || std::net::UdpSocket::bind(addr))
                                .map_err(live)?
                                .map_err(|e| live(format!("{name} listen {addr}/udp: {e}")))?;
                            u.set_nonblocking(true).map_err(live)?;
                            let u = tokio::net::UdpSocket::from_std(u).map_err(live)?;
                            tokio::spawn(async move {
                                let mut buf = [0u8; 512];
                                while let Ok((_, from)) = u.recv_from(&mut buf).await {
                                    let _ = u.send_to(reply.as_bytes(), from).await;
                                }
                            })
                        }
                        Protocol::Sctp => {
                            return Err(live("SCTP probes need a kernel with SCTP, and this one has none"));
                        }
                    };
                    pod.tasks.push(task);
                }
            }
        }
        Ok(())
    }

    async fn probe_one(&self, p: &Probe) -> Result<bool, Error> {
        let src = self.pods.get(&p.from).ok_or_else(|| live(format!("pod {} is not on the node", p.from)))?;
        let dst = self.pods.get(&p.to).ok_or_else(|| live(format!("pod {} is not on the node", p.to)))?;
        let ip = *dst.ips.first().ok_or_else(|| live(format!("pod {} has no address", p.to)))?;
        let addr = SocketAddr::new(ip, p.port);
        let expect = p.to.to_string();
        let path = src.netns.path();
        let timeout = self.timeout;
        match p.protocol {
            Protocol::Tcp => {
                let v6 = ip.is_ipv6();
                let sock =
                    run_in(
                        &path,
                        move || if v6 { tokio::net::TcpSocket::new_v6() } else { tokio::net::TcpSocket::new_v4() },
                    )
                    .map_err(live)?
                    .map_err(live)?;
                let attempt = async {
                    let mut s = sock.connect(addr).await.ok()?;
                    let mut buf = Vec::new();
                    s.read_to_end(&mut buf).await.ok()?;
                    Some(buf)
                };
                Ok(tokio::time::timeout(timeout, attempt).await.ok().flatten().is_some_and(|b| b == expect.as_bytes()))
            }
            Protocol::Udp => {
                let any: IpAddr =
                    if ip.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
                let u = run_in(&path, move || std::net::UdpSocket::bind(SocketAddr::new(any, 0)))
                    .map_err(live)?
                    .map_err(live)?;
                u.set_nonblocking(true).map_err(live)?;
                let u = tokio::net::UdpSocket::from_std(u).map_err(live)?;
                let attempt = async {
                    let mut buf = [0u8; 512];
                    // A few datagrams in case the first meets a cold path.
                    for _ in 0..3 {
                        u.send_to(b"probe", addr).await.ok()?;
                        if let Ok(Ok((n, _))) = tokio::time::timeout(timeout / 3, u.recv_from(&mut buf)).await {
                            return Some(buf[..n].to_vec());
                        }
                    }
                    None
                };
                Ok(attempt.await.is_some_and(|b| b == expect.as_bytes()))
            }
            Protocol::Sctp => Err(live("SCTP probes need a kernel with SCTP, and this one has none")),
        }
    }

    /// One TCP connection from pod `from` to `addr` (a pod, a Service VIP, anything): what
    /// answered, refused (a reset came back), or nothing within `timeout`.
    pub async fn connect(&self, from: &ObjectKey, addr: SocketAddr, timeout: Duration) -> Result<Connection, Error> {
        let src = self.pods.get(from).ok_or_else(|| live(format!("pod {from} is not on the node")))?;
        let v6 = addr.is_ipv6();
        let sock = run_in(&src.netns.path(), move || {
            if v6 { tokio::net::TcpSocket::new_v6() } else { tokio::net::TcpSocket::new_v4() }
        })
        .map_err(live)?
        .map_err(live)?;
        let started = std::time::Instant::now();
        let attempt = async {
            let mut s = match sock.connect(addr).await {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Connection::Refused(started.elapsed());
                }
                Err(e) => return Connection::Failed(e.to_string()),
            };
            let mut buf = Vec::new();
            match s.read_to_end(&mut buf).await {
                Ok(_) => Connection::Answered(String::from_utf8_lossy(&buf).into_owned()),
                Err(e) => Connection::Failed(e.to_string()),
            }
        };
        Ok(tokio::time::timeout(timeout, attempt).await.unwrap_or(Connection::TimedOut))
    }

    /// Tries every probe for real, `parallel` at a time; results in order.
    pub async fn decide_all(&self, probes: &[Probe]) -> Vec<Result<bool, Error>> {
        let sem = Semaphore::new(self.parallel.max(1));
        let futs = probes.iter().map(|p| async {
            let _permit = sem.acquire().await.expect("semaphore lives");
            self.probe_one(p).await
        });
        futures_join_all(futs).await
    }

    /// `stacknet reach` matrices decided by real connections.
    pub async fn matrices(&mut self, engine: &PolicyEngine, specs: &[ProbeSpec]) -> Result<Vec<Matrix>, Error> {
        self.listen(specs).await?;
        let index = engine.index();
        let pods: Vec<ObjectKey> = stacknet_engine::reach::probe_pods(index)
            .into_iter()
            .filter_map(|id| index.pod(id).map(|p| p.key.clone()))
            .filter(|k| self.pods.contains_key(k))
            .collect();
        let mut out = Vec::new();
        for spec in specs {
            let verdicts = self.decide_all(&crate::pair_probes(&pods, *spec)).await;
            out.push(crate::assemble(&pods, *spec, verdicts)?);
        }
        Ok(out)
    }

    /// CNI DEL for every pod, then everything stops (namespaces, agent, daemons).
    pub async fn shutdown(mut self) -> Result<(), Error> {
        let pods = std::mem::take(&mut self.pods);
        let mut first_error = None;
        for (_, p) in pods.into_iter().filter(|(_, p)| !p.vm) {
            if let Err(e) = self.cni("DEL", &p.container, &p.netns.path(), None).await {
                first_error.get_or_insert(e);
            }
        }
        self.agent.stop();
        first_error.map_or(Ok(()), Err)
    }
}

/// How a connection attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    /// Connected; what the other end sent before closing (our listeners send their pod's name).
    Answered(String),
    /// A reset came back, after this long.
    Refused(Duration),
    /// Nothing came back in time.
    TimedOut,
    Failed(String),
}

/// The agent's thread and runtime; stopped on drop.
struct AgentThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AgentThread {
    fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AgentThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs futures concurrently (a small join_all, to keep dependencies down).
async fn futures_join_all<F: std::future::Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = (0..futs.len()).map(|_| None).collect();
    let mut pending: Vec<(usize, std::pin::Pin<Box<F>>)> = futs.into_iter().enumerate().collect();
    std::future::poll_fn(|cx| {
        pending.retain_mut(|(i, f)| match f.as_mut().poll(cx) {
            std::task::Poll::Ready(v) => {
                results[*i] = Some(v);
                false
            }
            std::task::Poll::Pending => true,
        });
        if pending.is_empty() { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
    })
    .await;
    results.into_iter().map(|r| r.expect("all ready")).collect()
}

/// Whether this kernel can make SCTP sockets.
pub fn sctp_supported() -> bool {
    use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
    socket(AddressFamily::Inet, SockType::Stream, SockFlag::empty(), SockProtocol::Sctp).is_ok()
}

/// Gives every pod without an address one from 10.250.0.0/16 (as the controller's IPAM would),
/// so that manifests without `status.podIP` can run live; pods with one keep it.
pub fn assign_missing_addresses(engine: &mut PolicyEngine) -> Vec<String> {
    let index = engine.index();
    let used: BTreeSet<IpAddr> = index.pods().flat_map(|(_, p)| p.ips.clone()).collect();
    let needing: Vec<_> =
        index.pods().filter(|(_, p)| p.ips.is_empty() && p.is_policy_subject()).map(|(_, p)| p.clone()).collect();
    let mut next = 1u32;
    let mut notes = Vec::new();
    for mut pod in needing {
        let ip = loop {
            let candidate = IpAddr::V4(Ipv4Addr::from(0x0afa_0000 + next));
            next += 1;
            if !used.contains(&candidate) {
                break candidate;
            }
        };
        notes.push(format!("pod {} has no status.podIP: using {ip}", pod.key));
        pod.ips = vec![ip];
        engine.apply(ClusterObject::Pod(pod));
    }
    notes
}
