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
use stacknet_engine::paths::Endpoint;
use stacknet_engine::reach::{Matrix, ProbeSpec};
use stacknet_node::agent::{Agent, AgentConfig};
use stacknet_node::netns::run_in;
use stacknet_ovn::Report;
use stacknet_sandbox::{Chassis, Netns, Segment};
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
    /// Its secondary interfaces' addresses, by interface (as the ADD answered).
    attachments: BTreeMap<String, Vec<IpAddr>>,
    listening: BTreeSet<(u16, Protocol)>,
    tasks: Vec<JoinHandle<()>>,
    /// A VM's port plugged by hand (no CNI): removed with the node, not by CNI DEL.
    vm: bool,
    /// The node (index into `Live::nodes`) whose agent wired it.
    node: usize,
}

impl Drop for LivePod {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A node of the live cluster: its chassis and its agent.
struct LiveNode {
    name: String,
    chassis: Chassis,
    agent: AgentThread,
    socket: PathBuf,
    /// Its address on the outside network, with an uplink.
    address: Option<IpAddr>,
    listeners: Vec<JoinHandle<()>>,
    listening: BTreeSet<(u16, Protocol)>,
}

/// A node of a [`Live::start_cluster`] cluster.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    /// Its address on the outside network (with [`OutsideSpec`]): an uplink bridge `br-ex`
    /// holding it, shared with the node's gateway router.
    pub uplink: Option<IpAddr>,
}

/// The outside network of a [`Live::start_cluster`] cluster: one segment the nodes' uplinks
/// plug into, holding `hosts` (name, address) and `next_hop` itself, all with `prefix`.
#[derive(Debug, Clone)]
pub struct OutsideSpec {
    pub prefix: u8,
    pub hosts: Vec<(String, IpAddr)>,
    pub next_hop: Option<IpAddr>,
}

pub struct Live {
    trace: OvnTrace,
    /// The first node takes the pods of no (known) node.
    nodes: Vec<LiveNode>,
    plugin: PathBuf,
    pods: BTreeMap<ObjectKey, LivePod>,
    /// Outside hosts by name: where they are and their address.
    hosts: BTreeMap<String, (PathBuf, IpAddr)>,
    host_listeners: Vec<JoinHandle<()>>,
    host_listening: BTreeSet<(String, u16, Protocol)>,
    /// Hosts on provider networks (dropped before their segments).
    _provider_hosts: Vec<Netns>,
    /// The underlay and the outside network (dropped after the nodes).
    _segments: Vec<Segment>,
    _dir: tempfile::TempDir,
    /// How long a probe waits for an answer (a denied probe costs this much).
    pub timeout: Duration,
    /// Probes in flight at once.
    pub parallel: usize,
}

/// Starts an agent for `config` on its own thread and runtime; returns once it listens on
/// `socket`.
async fn start_agent(
    config: AgentConfig,
    ovs_remote: &str,
    nb_remote: &str,
    socket: &Path,
) -> Result<AgentThread, Error> {
    let ovs_remote = ovs_remote.parse().map_err(Error::Backend)?;
    let nb_remotes = stacknet_ovsdb::Remote::parse_list(nb_remote).map_err(Error::Backend)?;
    // The agent is a daemon of its own on a node: it gets its own runtime and threads, so
    // that what the harness does (listeners, probes) does not hold up its requests.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let s = socket.to_path_buf();
    let agent = std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
                return;
            }
        };
        runtime.block_on(async move {
            let agent = match Agent::new(config, vec![ovs_remote], nb_remotes) {
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
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !socket.exists() {
        if std::time::Instant::now() > deadline {
            return Err(live(format!("the agent did not listen on {} within 5 s", socket.display())));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(agent)
}

impl Live {
    /// Starts the node and its agent (within a tokio runtime). `plugin` is the
    /// `stacknet-cni` executable.
    pub async fn start(cluster: &str, plugin: &Path) -> Result<Live, Error> {
        Live::start_cluster(cluster, plugin, &[NodeSpec { name: "node-1".into(), uplink: None }], None).await
    }

    /// Starts a cluster of `nodes` (each a chassis with its agent, joined by an underlay when
    /// there are several; a single node keeps the agent's management port off, as `start`),
    /// and with `outside` an outside network their uplinks plug into.
    pub async fn start_cluster(
        cluster: &str,
        plugin: &Path,
        nodes: &[NodeSpec],
        outside: Option<&OutsideSpec>,
    ) -> Result<Live, Error> {
        if !plugin.is_file() {
            return Err(live(format!("CNI plugin {} not found", plugin.display())));
        }
        if nodes.is_empty() || nodes.len() > 200 {
            return Err(live("a live cluster has 1 to 200 nodes"));
        }
        let trace = OvnTrace::start(cluster)?;
        let sb = trace.ovn().sb_remote().ok_or_else(|| live("no Southbound database"))?;
        let dir = tempfile::Builder::new().prefix("stacknet-agent-").tempdir().map_err(live)?;
        let tag = &stacknet_ovn::names::hash(&[&dir.path().display().to_string()])[..6];
        let mut segments = Vec::new();
        let underlay = if nodes.len() > 1 { Some(Segment::create(&format!("snul-{tag}"))?) } else { None };
        let out = match outside {
            Some(o) => {
                let seg = Segment::create(&format!("snout-{tag}"))?;
                for (_, ip) in &o.hosts {
                    seg.add_address(&format!("{ip}/{}", o.prefix), false)?;
                }
                if let Some(h) = o.next_hop {
                    seg.add_address(&format!("{h}/{}", o.prefix), false)?;
                }
                Some(seg)
            }
            None => None,
        };
        let mut hosts = BTreeMap::new();
        if let (Some(o), Some(seg)) = (outside, &out) {
            for (name, ip) in &o.hosts {
                hosts.insert(name.clone(), (seg.netns().path(), *ip));
            }
        }
        let mut live_nodes = Vec::new();
        for (i, spec) in nodes.iter().enumerate() {
            let encap = if underlay.is_some() { format!("172.31.252.{}", i + 1) } else { "127.0.0.1".into() };
            let chassis = Chassis::start(trace.ovn().dir(), &spec.name, &sb, &encap)?;
            if let Some(u) = &underlay {
                chassis.join_underlay(u, &encap)?;
            }
            let uplink = match (spec.uplink, &out, outside) {
                (Some(ip), Some(seg), Some(o)) => {
                    chassis.uplink(seg, &ip.to_string(), o.prefix)?;
                    true
                }
                _ => false,
            };
            let socket = dir.path().join(format!("{}.sock", spec.name));
            let config = AgentConfig {
                cluster: cluster.into(),
                host_netns: Some(chassis.netns().path()),
                node: (nodes.len() > 1 || uplink).then(|| spec.name.clone()),
                gateway_bridge: uplink.then(|| "br-ex".to_string()),
                ..AgentConfig::default()
            };
            let agent = start_agent(config, &chassis.ovs_remote(), &trace.ovn().nb.remote(), &socket).await?;
            live_nodes.push(LiveNode {
                name: spec.name.clone(),
                chassis,
                agent,
                socket,
                address: uplink.then_some(spec.uplink).flatten(),
                listeners: Vec::new(),
                listening: BTreeSet::new(),
            });
        }
        segments.extend(underlay);
        segments.extend(out);
        Ok(Live {
            trace,
            nodes: live_nodes,
            plugin: plugin.into(),
            pods: BTreeMap::new(),
            hosts,
            host_listeners: Vec::new(),
            host_listening: BTreeSet::new(),
            _provider_hosts: Vec::new(),
            _segments: segments,
            _dir: dir,
            timeout: Duration::from_millis(1500),
            parallel: 128,
        })
    }

    pub fn trace(&self) -> &OvnTrace {
        &self.trace
    }

    /// The first node's chassis.
    pub fn chassis(&self) -> &Chassis {
        &self.nodes[0].chassis
    }

    /// The chassis of node `name`.
    pub fn node_chassis(&self, name: &str) -> Option<&Chassis> {
        self.nodes.iter().find(|n| n.name == name).map(|n| &n.chassis)
    }

    /// The first node's agent socket.
    pub fn agent_socket(&self) -> &Path {
        &self.nodes[0].socket
    }

    /// The node a pod on `node` (if known here) is wired on: that one, else the first.
    fn node_index(&self, node: Option<&str>) -> usize {
        node.and_then(|n| self.nodes.iter().position(|x| x.name == n)).unwrap_or(0)
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
        self.cni_on(0, command, container, netns, pod).await
    }

    /// [`Live::cni`] through the agent of node `node` (index).
    async fn cni_on(
        &self,
        node: usize,
        command: &str,
        container: &str,
        netns: &Path,
        pod: Option<(&ObjectKey, &str)>,
    ) -> Result<serde_json::Value, Error> {
        let socket = &self.nodes[node].socket;
        let conf = serde_json::json!({"cniVersion": "1.1.0", "name": "stacknet", "type": "stacknet-cni", "agentSocket": socket});
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
        let wanted: BTreeMap<ObjectKey, Wanted> = desired
            .ports
            .iter()
            .map(|(k, p)| {
                let pod = index.pod_id(k).and_then(|id| index.pod(id));
                let uid = pod.and_then(|p| p.uid.clone()).unwrap_or_default();
                (k.clone(), (uid, p.ips.clone(), self.node_index(pod.and_then(|p| p.node.as_deref()))))
            })
            .collect();
        self.converge_pods(wanted).await?;
        self.settle()?;
        Ok(report)
    }

    /// Brings the attached pods to `wanted` (pod → UID, addresses, node): a CNI DEL for each
    /// pod gone or changed, a namespace and a CNI ADD (through its node's agent) for each new
    /// one. VMs stay as they are.
    async fn converge_pods(&mut self, wanted: BTreeMap<ObjectKey, Wanted>) -> Result<(), Error> {
        let stale: Vec<ObjectKey> = self
            .pods
            .iter()
            .filter(|(k, p)| {
                !p.vm && wanted.get(*k).is_none_or(|(uid, ips, node)| *uid != p.uid || *ips != p.ips || *node != p.node)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            if let Some(p) = self.pods.remove(&k) {
                self.cni_on(p.node, "DEL", &p.container, &p.netns.path(), None).await?;
            }
        }
        for (k, (uid, ips, node)) in wanted {
            if self.pods.contains_key(&k) {
                continue;
            }
            let (netns, container) = Live::new_sandbox()?;
            let added = self.cni_on(node, "ADD", &container, &netns.path(), Some((&k, &uid))).await?;
            // The secondary interfaces: every pod-side one but the first.
            let attachments = interface_addresses(&added).into_iter().skip(1).collect();
            let tasks = Vec::new();
            self.pods.insert(
                k,
                LivePod { netns, container, uid, ips, attachments, listening: BTreeSet::new(), tasks, vm: false, node },
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
        for n in &self.nodes {
            n.chassis.appctl(&["dpctl/flush-conntrack"])?;
            n.chassis.appctl(&["dpctl/del-flows"])?;
        }
        Ok(())
    }

    /// Attaches (CNI ADD) the engine's pods whose ports someone else — a running controller —
    /// has made in the Northbound database, each with the address its port says; pods already
    /// attached stay, pods gone are detached (CNI DEL). Returns the pods that have no port.
    pub async fn attach(&mut self, engine: &PolicyEngine, cluster: &str) -> Result<Vec<ObjectKey>, Error> {
        let nb = stacknet_ovsdb::Client::start(stacknet_ovsdb::ClientConfig::new(
            stacknet_ovsdb::Remote::parse_list(&self.trace.ovn().nb.remote()).map_err(Error::Backend)?,
            stacknet_ovsdb::nb::DATABASE,
        ));
        nb.connected(Duration::from_secs(10)).await.map_err(live)?;
        let index = engine.index();
        let mut wanted = BTreeMap::new();
        let mut missing = Vec::new();
        // The node the controller put each pod on.
        let placed: BTreeMap<ObjectKey, String> = nb
            .replica()
            .as_ref()
            .map(|r| stacknet_ovn::lookup::allocated(r, cluster).pods.into_iter().map(|(k, n, _)| (k, n)).collect())
            .unwrap_or_default();
        for (_, pod) in index.pods() {
            let net = nb.replica().as_ref().and_then(|r| stacknet_ovn::lookup::pod_network(r, cluster, &pod.key));
            match net {
                Some(n) => {
                    let node = self.node_index(placed.get(&pod.key).map(String::as_str));
                    let ips = n.addresses.iter().map(|a| a.0).collect::<Vec<_>>();
                    wanted.insert(pod.key.clone(), (pod.uid.clone().unwrap_or_default(), ips, node));
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
    /// VM with that address (`prefix`) and a default route via `gateway`, bound on the node
    /// whose switch it is (`<cluster>_<node>`; else the first). It takes part in probes as
    /// `key`.
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
            routes: Vec::new(),
            mtu: 1400,
            vlan: None,
        };
        let node = self.nodes.iter().position(|n| switch.ends_with(&format!("_{}", n.name))).unwrap_or(0);
        let chassis = &self.nodes[node].chassis;
        let handle = stacknet_node::netns::netlink_in_async(&chassis.netns().path()).await.map_err(live)?;
        stacknet_node::plumb::plumb(&handle, &netns.path(), &iface).await.map_err(live)?;
        let ovs = stacknet_node::ovs::client(vec![chassis.ovs_remote().parse().map_err(Error::Backend)?]);
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
                attachments: BTreeMap::new(),
                vm: true,
                node,
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
                let all: Vec<IpAddr> = pod.ips.iter().chain(pod.attachments.values().flatten()).copied().collect();
                for ip in all {
                    let task =
                        listener(&pod.netns.path(), SocketAddr::new(ip, spec.port), spec.protocol, key.to_string())?;
                    pod.tasks.push(task);
                }
            }
        }
        Ok(())
    }

    /// [`Live::listen`], and on every node with an uplink (on its address, in its host
    /// network) and every outside host: each answers with its endpoint name (`node/NAME`,
    /// `external/NAME`).
    pub async fn listen_everywhere(&mut self, specs: &[ProbeSpec]) -> Result<(), Error> {
        self.listen(specs).await?;
        for n in &mut self.nodes {
            let Some(ip) = n.address else { continue };
            let path = n.chassis.netns().path();
            for spec in specs.iter().filter(|s| n.listening.insert((s.port, s.protocol))) {
                let name = Endpoint::Node(n.name.clone()).to_string();
                n.listeners.push(listener(&path, SocketAddr::new(ip, spec.port), spec.protocol, name)?);
            }
        }
        for (name, (path, ip)) in &self.hosts {
            for spec in specs {
                if !self.host_listening.insert((name.clone(), spec.port, spec.protocol)) {
                    continue;
                }
                let reply = Endpoint::External(name.clone()).to_string();
                self.host_listeners.push(listener(path, SocketAddr::new(*ip, spec.port), spec.protocol, reply)?);
            }
        }
        Ok(())
    }

    /// A provider network `physnet` (what a NAD's localnet topology names): a segment every
    /// node's chassis bridges to through `ovn-bridge-mappings`, holding `hosts` (name, address,
    /// prefix) — outside hosts (a PE router) probes can dial and be dialled from — each with
    /// `routes` (extra addresses on its loopback, so that it stands for what lies beyond it).
    pub fn provider_network(
        &mut self,
        physnet: &str,
        hosts: &[(String, IpAddr, u8, Vec<IpAddr>)],
    ) -> Result<(), Error> {
        let tag = &stacknet_ovn::names::hash(&[&self._dir.path().display().to_string(), physnet])[..6];
        let seg = Segment::create(&format!("snpv-{tag}"))?;
        for n in &self.nodes {
            n.chassis.provider(&seg, physnet)?;
        }
        for (name, ip, prefix, beyond) in hosts {
            let netns =
                seg.host(&format!("snh-{tag}-{}", self._provider_hosts.len()), &format!("{ip}/{prefix}"), None)?;
            for b in beyond {
                let len = if b.is_ipv4() { 32 } else { 128 };
                let out = std::process::Command::new("ip")
                    .args(["-n", netns.name(), "addr", "add", &format!("{b}/{len}"), "dev", "lo"])
                    .output()
                    .map_err(live)?;
                if !out.status.success() {
                    return Err(live(String::from_utf8_lossy(&out.stderr)));
                }
            }
            self.hosts.insert(name.clone(), (netns.path(), *ip));
            self._provider_hosts.push(netns);
        }
        self._segments.push(seg);
        Ok(())
    }

    /// Listeners in outside host `host`'s namespace on another of its addresses (one standing
    /// for what lies beyond it), answering with the host's endpoint name.
    pub async fn listen_beyond(&mut self, host: &str, addr: IpAddr, specs: &[ProbeSpec]) -> Result<(), Error> {
        let (path, _) = self.hosts.get(host).cloned().ok_or_else(|| live(format!("no outside host {host}")))?;
        let reply = Endpoint::External(host.to_string()).to_string();
        for spec in specs {
            self.host_listeners.push(listener(&path, SocketAddr::new(addr, spec.port), spec.protocol, reply.clone())?);
        }
        Ok(())
    }

    /// Pod `pod`'s (first) address on its secondary interface `iface`, as the ADD answered.
    pub fn attachment_address(&self, pod: &ObjectKey, iface: &str) -> Option<IpAddr> {
        self.pods.get(pod)?.attachments.get(iface)?.first().copied()
    }

    /// The host end (its OVS port on br-int) of pod `pod`'s interface `ifname`, and the node
    /// (its chassis) it is on.
    pub fn host_end(&self, pod: &ObjectKey, ifname: &str) -> Option<(String, &Chassis)> {
        let p = self.pods.get(pod)?;
        Some((stacknet_node::agent::host_ifname(&p.container, ifname), &self.nodes[p.node].chassis))
    }

    /// The network namespace path of an attached pod.
    pub fn pod_netns_path(&self, pod: &ObjectKey) -> Option<PathBuf> {
        self.pods.get(pod).map(|p| p.netns.path())
    }

    /// The endpoints a probe can start from or go to here: the pods (and VMs), the nodes with
    /// an uplink, the outside hosts.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let pods = self.pods.keys().map(|k| Endpoint::Pod(k.clone()));
        let nodes = self.nodes.iter().filter(|n| n.address.is_some()).map(|n| Endpoint::Node(n.name.clone()));
        let hosts = self.hosts.keys().map(|h| Endpoint::External(h.clone()));
        pods.chain(nodes).chain(hosts).collect()
    }

    /// Where `e` is: its namespace and its address (a pod's primary one, a node's uplink one).
    fn place(&self, e: &Endpoint) -> Result<(PathBuf, IpAddr), Error> {
        let missing = || live(format!("{e} is not here"));
        match e {
            Endpoint::Pod(k) => {
                let p = self.pods.get(k).ok_or_else(missing)?;
                Ok((p.netns.path(), *p.ips.first().ok_or_else(missing)?))
            }
            Endpoint::Node(n) => {
                let n = self.nodes.iter().find(|x| &x.name == n).ok_or_else(missing)?;
                Ok((n.chassis.netns().path(), n.address.ok_or_else(missing)?))
            }
            Endpoint::External(h) => self.hosts.get(h).cloned().ok_or_else(missing),
        }
    }

    /// Whether `from` reaches `to`'s own address on `spec` (its listener answers with its
    /// name); the listeners must be there ([`Self::listen_everywhere`]).
    pub async fn reaches(&self, from: &Endpoint, to: &Endpoint, spec: ProbeSpec) -> Result<bool, Error> {
        let (_, ip) = self.place(to)?;
        let got = self.dial(from, SocketAddr::new(ip, spec.port), spec.protocol).await?;
        Ok(got.as_deref() == Some(to.to_string().as_str()))
    }

    /// What `from` gets back dialling `addr` (our listeners answer with their endpoint's
    /// name); `None`: no answer within the timeout.
    pub async fn dial(&self, from: &Endpoint, addr: SocketAddr, protocol: Protocol) -> Result<Option<String>, Error> {
        let (path, _) = self.place(from)?;
        answer(&path, addr, protocol, self.timeout).await
    }

    /// Every ordered pair of distinct `endpoints` on each spec, for real: `allowed[from][to]`
    /// (the destination's own address), rows in `endpoints` order.
    pub async fn endpoint_matrices(
        &mut self,
        endpoints: &[Endpoint],
        specs: &[ProbeSpec],
    ) -> Result<Vec<Vec<Vec<Option<bool>>>>, Error> {
        self.listen_everywhere(specs).await?;
        let mut out = Vec::new();
        for spec in specs {
            let mut pairs = Vec::new();
            for a in endpoints {
                for b in endpoints.iter().filter(|b| *b != a) {
                    pairs.push((a, b));
                }
            }
            let sem = Semaphore::new(self.parallel.max(1));
            let futs = pairs.iter().map(|(a, b)| async {
                let _permit = sem.acquire().await.expect("semaphore lives");
                let (_, ip) = self.place(b)?;
                let got = self.dial(a, SocketAddr::new(ip, spec.port), spec.protocol).await?;
                Ok::<bool, Error>(got.as_deref() == Some(b.to_string().as_str()))
            });
            let mut verdicts = futures_join_all(futs).await.into_iter();
            let mut m = Vec::new();
            for a in endpoints {
                let mut row = Vec::new();
                for b in endpoints {
                    row.push(if a == b { None } else { Some(verdicts.next().expect("one per pair")?) });
                }
                m.push(row);
            }
            out.push(m);
        }
        Ok(out)
    }

    async fn probe_one(&self, p: &Probe) -> Result<bool, Error> {
        let src = self.pods.get(&p.from).ok_or_else(|| live(format!("pod {} is not on the node", p.from)))?;
        let dst = self.pods.get(&p.to).ok_or_else(|| live(format!("pod {} is not on the node", p.to)))?;
        let ip = *dst.ips.first().ok_or_else(|| live(format!("pod {} has no address", p.to)))?;
        let got = answer(&src.netns.path(), SocketAddr::new(ip, p.port), p.protocol, self.timeout).await?;
        Ok(got.as_deref() == Some(p.to.to_string().as_str()))
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
            if let Err(e) = self.cni_on(p.node, "DEL", &p.container, &p.netns.path(), None).await {
                first_error.get_or_insert(e);
            }
        }
        for n in &mut self.nodes {
            n.agent.stop();
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Each pod-side interface of a CNI result (those with a `sandbox`, in order) with its
/// addresses.
pub fn interface_addresses(result: &serde_json::Value) -> Vec<(String, Vec<IpAddr>)> {
    let interfaces = result["interfaces"].as_array().cloned().unwrap_or_default();
    let ips = result["ips"].as_array().cloned().unwrap_or_default();
    interfaces
        .iter()
        .enumerate()
        .filter(|(_, i)| i.get("sandbox").is_some_and(|s| !s.is_null()))
        .filter_map(|(n, i)| {
            let mine = ips
                .iter()
                .filter(|ip| ip["interface"].as_u64() == Some(n as u64))
                .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse::<IpAddr>().ok());
            Some((i["name"].as_str()?.to_string(), mine.collect()))
        })
        .collect()
}

/// A listener on `addr` in `netns` answering every connection (or datagram) with `reply`.
/// SCTP is refused when the kernel has no SCTP.
fn listener(netns: &Path, addr: SocketAddr, protocol: Protocol, reply: String) -> Result<JoinHandle<()>, Error> {
    Ok(match protocol {
        Protocol::Tcp => {
            let l = run_in(netns, move || std::net::TcpListener::bind(addr))
                .map_err(live)?
                .map_err(|e| live(format!("{reply} listen {addr}: {e}")))?;
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
            let u = run_in(netns, move || std::net::UdpSocket::bind(addr))
                .map_err(live)?
                .map_err(|e| live(format!("{reply} listen {addr}/udp: {e}")))?;
            u.set_nonblocking(true).map_err(live)?;
            let u = tokio::net::UdpSocket::from_std(u).map_err(live)?;
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                while let Ok((_, from)) = u.recv_from(&mut buf).await {
                    let _ = u.send_to(reply.as_bytes(), from).await;
                }
            })
        }
        Protocol::Sctp => return Err(live("SCTP probes need a kernel with SCTP, and this one has none")),
    })
}

/// What a connection (or a datagram) from `netns` to `addr` gets back within `timeout`.
async fn answer(
    netns: &Path,
    addr: SocketAddr,
    protocol: Protocol,
    timeout: Duration,
) -> Result<Option<String>, Error> {
    let got = match protocol {
        Protocol::Tcp => {
            let v6 = addr.is_ipv6();
            let sock =
                run_in(
                    netns,
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
            tokio::time::timeout(timeout, attempt).await.ok().flatten()
        }
        Protocol::Udp => {
            let any: IpAddr = if addr.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
            let u = run_in(netns, move || std::net::UdpSocket::bind(SocketAddr::new(any, 0)))
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
            attempt.await
        }
        Protocol::Sctp => return Err(live("SCTP probes need a kernel with SCTP, and this one has none")),
    };
    Ok(got.filter(|b| !b.is_empty()).map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// What a pod should be: its UID, addresses, and the node (index) whose agent wires it.
type Wanted = (String, Vec<IpAddr>, usize);

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
