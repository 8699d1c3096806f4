//! The node agent: serves CNI requests from the plugin over a unix socket. It keeps a replica
//! of the local Open_vSwitch database (bindings, ovn-installed) and of the Northbound ports
//! (pod networks as the controller assigned them), so an ADD is: one replica lookup, the
//! netlink plumbing, one OVSDB transaction, and a wait for ovn-controller.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stacknet_engine::objects::ObjectKey;
use stacknet_ovn::lookup::{PodNetwork, attachment_network, management, pod_network};
use stacknet_ovsdb::{Client, ClientConfig, Remote, nb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::Mutex;

use crate::mgmt;
use crate::ovs::{self, Attached, BindError, Binding};
use crate::plumb::{PlumbError, Plumbing, PodInterface, Veth};
use crate::protocol::{AddResult, CniError, Command, Iface, IpConfig, Request, Response, RouteConfig, Timings, codes};
pub use openstack::OpenStackMode;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The cluster id the controller tags its rows with.
    pub cluster: String,
    pub bridge: String,
    pub mtu: u32,
    /// How long an ADD waits for the controller's logical port to appear.
    pub lookup_timeout: Duration,
    /// How long an ADD waits for ovn-controller to install the port.
    pub install_timeout: Duration,
    /// The namespace ovs-vswitchd runs in, where host ends go (`None`: the agent's own).
    pub host_netns: Option<PathBuf>,
    /// The Kubernetes node this agent serves: it keeps the node's management port (`None`: no
    /// management port).
    pub node: Option<String>,
    /// The node's uplink bridge, shared with its gateway router (`None`: not managed).
    pub gateway_bridge: Option<String>,
    /// Certificates for `ssl:` remotes (the Open_vSwitch and the Northbound database).
    pub tls: Option<stacknet_ovsdb::TlsConfig>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            cluster: "stacknet".into(),
            bridge: "br-int".into(),
            mtu: 1400,
            lookup_timeout: Duration::from_secs(10),
            install_timeout: Duration::from_secs(30),
            host_netns: None,
            node: None,
            gateway_bridge: None,
            tls: None,
        }
    }
}

pub struct Agent {
    config: AgentConfig,
    ovs: Client,
    nb: Client,
    plumbing: Arc<dyn Plumbing>,
    /// Netlink in the host namespace, for the management port (`None`: not managed).
    host: Option<rtnetlink::Handle>,
    /// Where ovs-vswitchd's bridge sockets are (for the gateway bridge's flows).
    ovs_rundir: Option<PathBuf>,
    /// The gateway bridge's flows as last installed.
    gateway_flows: std::sync::Mutex<Option<String>>,
    binder: ovs::Binder,
    /// One request at a time per container.
    busy: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// OpenStack mode (`None`: OVN mode, pods' ports read from the Northbound database).
    openstack: Option<OpenStackMode>,
}

/// The host end's name: `sn` and a hash of the container and interface (15 characters at
/// most, stable, so DEL finds it without any state).
pub fn host_ifname(container: &str, ifname: &str) -> String {
    format!("sn{}", &stacknet_ovn::names::hash(&[container, ifname])[..11])
}

fn plumb_error(e: PlumbError) -> CniError {
    match e {
        PlumbError::IfnameTaken { .. } => CniError::new(codes::IFNAME_TAKEN, "interface name taken", e.to_string()),
        PlumbError::Netns(_) => CniError::new(codes::INVALID_ENV, "bad network namespace (CNI_NETNS)", e.to_string()),
        _ => CniError::new(codes::NETLINK, "plumbing the pod interface failed", e.to_string()),
    }
}

fn bind_error(e: BindError) -> CniError {
    match e {
        BindError::NotInstalled { .. } => {
            CniError::new(codes::TRY_AGAIN_LATER, "port not installed by ovn-controller", e.to_string())
        }
        BindError::Ovsdb(ref o) if o.is_transient() => {
            CniError::new(codes::TRY_AGAIN_LATER, "Open_vSwitch database unavailable", e.to_string())
        }
        _ => CniError::new(codes::OVS, "binding the port to OVN failed", e.to_string()),
    }
}

fn required<'a>(v: &'a Option<String>, what: &str) -> Result<&'a str, CniError> {
    v.as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| CniError::new(codes::INVALID_ENV, "missing parameter", format!("{what} is required")))
}

impl Agent {
    /// Connects to the local Open_vSwitch database and the Northbound database (call within a
    /// tokio runtime); pods get veth pairs with host ends in `config.host_netns`.
    pub fn new(config: AgentConfig, ovs_remotes: Vec<Remote>, nb_remotes: Vec<Remote>) -> std::io::Result<Agent> {
        let host = match &config.host_netns {
            Some(path) => crate::netns::netlink_in(path).map_err(std::io::Error::other)?,
            None => {
                let (conn, host, _) = rtnetlink::new_connection()?;
                tokio::spawn(conn);
                host
            }
        };
        let rundir = ovs_remotes.first().and_then(crate::gateway::rundir);
        let mut agent = Agent::with_plumbing(config, Arc::new(Veth { host: host.clone() }), ovs_remotes, nb_remotes);
        agent.host = Some(host);
        agent.ovs_rundir = rundir;
        Ok(agent)
    }

    /// An agent whose pod interfaces are made by `plumbing`.
    pub fn with_plumbing(
        config: AgentConfig,
        plumbing: Arc<dyn Plumbing>,
        ovs_remotes: Vec<Remote>,
        nb_remotes: Vec<Remote>,
    ) -> Agent {
        let mut nb_config = ClientConfig::new(nb_remotes, nb::DATABASE);
        nb_config.tls = config.tls.clone();
        nb_config.tables = Some(vec![
            nb::LOGICAL_SWITCH.into(),
            nb::LOGICAL_SWITCH_PORT.into(),
            nb::LOGICAL_ROUTER_PORT.into(),
            nb::LOGICAL_ROUTER.into(),
        ]);
        // What a pod's network is made of; not `up` and the like, which change as ports bind.
        let cols = |cs: &[&str]| cs.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        nb_config.columns = std::collections::BTreeMap::from([
            (nb::LOGICAL_SWITCH.to_string(), cols(&["name", "ports", "external_ids"])),
            (
                nb::LOGICAL_SWITCH_PORT.to_string(),
                cols(&["name", "type", "addresses", "options", "external_ids", "parent_name", "tag"]),
            ),
            (nb::LOGICAL_ROUTER_PORT.to_string(), cols(&["name", "networks", "mac"])),
            // Gateway routers: what the uplink bridge steers to them.
            (nb::LOGICAL_ROUTER.to_string(), cols(&["name", "external_ids"])),
        ]);
        let ovs = ovs::client_with(ovs_remotes, config.tls.clone());
        Agent {
            binder: ovs::Binder::start(ovs.clone(), config.bridge.clone()),
            config,
            ovs,
            nb: Client::start(nb_config),
            plumbing,
            host: None,
            ovs_rundir: None,
            gateway_flows: std::sync::Mutex::new(None),
            busy: Mutex::new(HashMap::new()),
            openstack: None,
        }
    }

    /// OpenStack mode: pods' ports are Neutron's, read from their `stacknet.io/network`
    /// annotation through `api` (see [`crate::openstack`]).
    pub fn with_openstack(
        mut self,
        node: crate::openstack::OpenStackNode,
        api: Arc<dyn crate::openstack::PodApi>,
    ) -> Agent {
        self.openstack = Some(OpenStackMode { node, api });
        self
    }

    pub fn ovs(&self) -> &Client {
        &self.ovs
    }

    /// Serves requests on `socket` (replacing a stale socket file) until the task is dropped;
    /// meanwhile keeps the node's management port. The socket is for the plugin, which the
    /// runtime runs as root: mode 0600, whatever the umask.
    pub async fn serve(self: Arc<Self>, socket: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
        let manage = self.clone();
        tokio::select! {
            r = self.accept(listener) => r,
            () = manage.manage_node() => Ok(()),
        }
    }

    async fn accept(self: Arc<Self>, listener: UnixListener) -> std::io::Result<()> {
        loop {
            let (mut stream, _) = listener.accept().await?;
            let agent = self.clone();
            let accepted = Instant::now();
            tokio::spawn(async move {
                let mut body = Vec::new();
                let response = match stream.read_to_end(&mut body).await {
                    Err(e) => Response::Error(CniError::new(codes::IO, "reading the request", e.to_string())),
                    Ok(_) => match serde_json::from_slice::<Request>(&body) {
                        Err(e) => Response::Error(CniError::new(codes::DECODE, "bad request", e.to_string())),
                        Ok(req) => agent.handle(req).await,
                    },
                };
                let bytes = serde_json::to_vec(&response).unwrap_or_default();
                let _ = stream.write_all(&bytes).await;
                tracing::trace!(elapsed_us = accepted.elapsed().as_micros() as u64, "request served");
            });
        }
    }

    /// Keeps the node's management port as its logical port says, checking every
    /// [`mgmt::REPAIR_EVERY`]; never returns (pending forever when there is no node to manage).
    pub async fn manage_node(&self) {
        if self.config.node.is_none() || (self.host.is_none() && self.config.gateway_bridge.is_none()) {
            return std::future::pending().await;
        }
        let (mut mgmt_error, mut gateway_error) = (String::new(), String::new());
        loop {
            match self.manage_once().await {
                Ok(steps) if !steps.is_empty() => {
                    tracing::info!(interface = mgmt::IFNAME, ?steps, "management port repaired");
                    mgmt_error.clear();
                }
                Ok(_) => mgmt_error.clear(),
                Err(e) => {
                    let e = e.to_string();
                    if e != mgmt_error {
                        tracing::warn!(interface = mgmt::IFNAME, "management port: {e}");
                        mgmt_error = e;
                    }
                }
            }
            match self.gateway_once().await {
                Ok(changes) if !changes.is_empty() => {
                    tracing::info!(?changes, "gateway bridge repaired");
                    gateway_error.clear();
                }
                Ok(_) => gateway_error.clear(),
                Err(e) => {
                    let e = e.to_string();
                    if e != gateway_error {
                        tracing::warn!("gateway bridge: {e}");
                        gateway_error = e;
                    }
                }
            }
            tokio::time::sleep(mgmt::REPAIR_EVERY).await;
        }
    }

    /// One check of the gateway bridge (with `gateway_bridge`): what it took to make it as the
    /// node's gateway router needs.
    pub async fn gateway_once(&self) -> Result<Vec<String>, crate::gateway::GatewayError> {
        use crate::gateway::{self, GatewayError};
        let (Some(node), Some(bridge)) = (self.config.node.as_deref(), self.config.gateway_bridge.as_deref()) else {
            return Ok(Vec::new());
        };
        let gw = self.nb.replica().as_ref().and_then(|r| gateway::lookup(r, &self.config.cluster, node));
        let Some(gw) = gw else {
            return Err(GatewayError::Other(format!(
                "the controller has made no gateway router for node {node} in cluster {} (is --external-cidr set, and the node's address in it?)",
                self.config.cluster
            )));
        };
        let mut changes = gateway::ensure_database(&self.ovs, bridge, &gw).await?;
        let ports = {
            let guard = self.ovs.replica();
            let r = guard.as_ref().ok_or_else(|| GatewayError::Other("no Open_vSwitch replica".into()))?;
            gateway::bridge_ports(r, bridge)?
        };
        let rundir = self.ovs_rundir.clone().ok_or_else(|| {
            GatewayError::Other(
                "the Open_vSwitch database is not a unix socket: no bridge sockets to program flows through".into(),
            )
        })?;
        let wanted = gateway::flows(&ports, &gw, stacknet_engine::service::NODE_PORTS);
        let last = self.gateway_flows.lock().map(|l| l.clone()).unwrap_or_default();
        let b = bridge.to_string();
        let (installed, last) = tokio::task::spawn_blocking(move || {
            let mut last = last;
            gateway::ensure_flows(&rundir, &b, &wanted, &mut last).map(|i| (i, last))
        })
        .await
        .map_err(|e| GatewayError::Other(e.to_string()))??;
        if let Ok(mut l) = self.gateway_flows.lock() {
            *l = last;
        }
        if installed {
            changes.push(format!("flows on {bridge} (uplink {}, patch {})", ports.uplink.0, ports.patch.0));
        }
        Ok(changes)
    }

    /// One check of the management port: what it took to make it as wanted.
    pub async fn manage_once(&self) -> Result<Vec<mgmt::Step>, mgmt::MgmtError> {
        let (Some(node), Some(host)) = (self.config.node.as_deref(), self.host.as_ref()) else { return Ok(Vec::new()) };
        let port = self.nb.replica().as_ref().and_then(|r| management(r, &self.config.cluster, node));
        let Some(port) = port else {
            return Err(mgmt::MgmtError::Interface(format!(
                "not made: the controller has not made the management port of node {node} in cluster {} yet",
                self.config.cluster
            )));
        };
        let wanted = mgmt::Wanted::from_port(&port, self.config.mtu);
        mgmt::ensure_port(&self.ovs, &self.config.bridge, node, &wanted.lsp).await?;
        let Some((idx, seen)) = mgmt::observe(host).await? else {
            return Err(mgmt::MgmtError::Interface("not there yet (ovs-vswitchd makes it)".into()));
        };
        let steps = mgmt::plan(&wanted, &seen);
        mgmt::apply(host, idx, &steps).await?;
        Ok(steps)
    }

    pub async fn handle(&self, req: Request) -> Response {
        let result = match req.command {
            None => Err(CniError::new(codes::INVALID_ENV, "missing parameter", "command is required")),
            Some(Command::Status) => self.status().await.map(|()| Response::Done),
            Some(Command::Gc) => self.gc(&req).await.map(|()| Response::Done),
            Some(cmd) => {
                let container = match required(&req.container_id, "CNI_CONTAINERID") {
                    Ok(c) => c.to_string(),
                    Err(e) => return Response::Error(e),
                };
                let lock = self.busy.lock().await.entry(container.clone()).or_default().clone();
                let _held = lock.lock().await;
                match cmd {
                    Command::Add => self.add(&req).await.map(Response::Added),
                    Command::Del => self.del(&req).await.map(|()| Response::Done),
                    Command::Check => self.check(&req).await.map(|()| Response::Done),
                    Command::Status | Command::Gc => unreachable!("handled above"),
                }
            }
        };
        result.unwrap_or_else(Response::Error)
    }

    async fn status(&self) -> Result<(), CniError> {
        let unavailable = |what: &str| CniError::new(codes::NOT_AVAILABLE, "stacknet is not ready", what.to_string());
        if self.ovs.status().borrow().connected.is_none() {
            return Err(unavailable("no connection to the Open_vSwitch database"));
        }
        // OpenStack mode reads pods' ports from the Kubernetes API, not the Northbound database.
        if self.openstack.is_none() && self.nb.status().borrow().connected.is_none() {
            return Err(unavailable("no connection to the OVN Northbound database"));
        }
        let bridge = self
            .ovs
            .replica()
            .as_ref()
            .is_some_and(|r| r.table(ovs::BRIDGE).by_name(&self.config.bridge).next().is_some());
        if !bridge {
            return Err(unavailable(&format!("bridge {} does not exist", self.config.bridge)));
        }
        Ok(())
    }

    async fn pod_network(&self, key: &ObjectKey, deadline: Instant) -> Result<PodNetwork, CniError> {
        let cluster = self.config.cluster.clone();
        let k = key.clone();
        let found = |r: &stacknet_ovsdb::Replica| pod_network(r, &cluster, &k).is_some_and(|n| !n.gateways.is_empty());
        let left = deadline.saturating_duration_since(Instant::now());
        if self.nb.wait_until(left, found).await.is_err() {
            return Err(CniError::new(
                codes::TRY_AGAIN_LATER,
                "no logical port for the pod yet",
                format!(
                    "pod {key}: the controller has not programmed its port in cluster {} (waited {left:?})",
                    self.config.cluster
                ),
            ));
        }
        let guard = self.nb.replica();
        let replica = guard
            .as_ref()
            .ok_or_else(|| CniError::new(codes::TRY_AGAIN_LATER, "no Northbound replica", "not connected"))?;
        pod_network(replica, &self.config.cluster, key)
            .ok_or_else(|| CniError::new(codes::TRY_AGAIN_LATER, "pod port vanished", key.to_string()))
    }

    /// The network of the pod's secondary interface `ifname`, once the controller has made it.
    async fn attachment(&self, key: &ObjectKey, ifname: &str, deadline: Instant) -> Result<PodNetwork, CniError> {
        let (cluster, k, i) = (self.config.cluster.clone(), key.clone(), ifname.to_string());
        let left = deadline.saturating_duration_since(Instant::now());
        let found = |r: &stacknet_ovsdb::Replica| attachment_network(r, &cluster, &k, &i).is_some();
        if self.nb.wait_until(left, found).await.is_err() {
            return Err(CniError::new(
                codes::TRY_AGAIN_LATER,
                "no logical port for the pod's secondary interface yet",
                format!(
                    "pod {key}: the controller has not programmed interface {ifname} in cluster {} (waited {left:?}; is the network in its k8s.v1.cni.cncf.io/networks annotation?)",
                    self.config.cluster
                ),
            ));
        }
        let guard = self.nb.replica();
        guard
            .as_ref()
            .and_then(|r| attachment_network(r, &self.config.cluster, key, ifname))
            .ok_or_else(|| CniError::new(codes::TRY_AGAIN_LATER, "secondary port vanished", format!("{key} {ifname}")))
    }

    /// What the runtime is told: for each interface made, its host end and pod end, its
    /// addresses (with the gateway of their family) and its routes.
    fn result(&self, netns: &str, made: &[Made], timings: Timings) -> AddResult {
        let mut r = AddResult { interfaces: Vec::new(), ips: Vec::new(), routes: Vec::new(), timings };
        for m in made {
            // A child of a VM NIC or a device moved in has no host end.
            if !m.iface.host.is_empty() {
                r.interfaces.push(Iface { name: m.iface.host.clone(), mac: String::new(), sandbox: None });
            }
            let pod_end = u32::try_from(r.interfaces.len()).unwrap_or(u32::MAX);
            r.interfaces.push(Iface {
                name: m.iface.ifname.clone(),
                mac: m.iface.mac.clone(),
                sandbox: Some(netns.into()),
            });
            let gateway_for = |ip: &IpAddr| {
                m.iface
                    .gateways
                    .iter()
                    .chain(m.iface.routes.iter().map(|(_, g)| g))
                    .find(|g| g.is_ipv4() == ip.is_ipv4())
                    .map(|g| g.to_string())
            };
            r.ips.extend(m.iface.addresses.iter().map(|(ip, len)| IpConfig {
                address: format!("{ip}/{len}"),
                gateway: gateway_for(ip),
                interface: pod_end,
            }));
            r.routes.extend(m.iface.gateways.iter().map(|g| RouteConfig {
                dst: if g.is_ipv4() { "0.0.0.0/0".into() } else { "::/0".into() },
                gw: g.to_string(),
            }));
            r.routes
                .extend(m.iface.routes.iter().map(|(dst, g)| RouteConfig { dst: dst.to_string(), gw: g.to_string() }));
        }
        r
    }

    fn check_uid(key: &ObjectKey, net: &PodNetwork, req: &Request) -> Result<(), CniError> {
        if let (Some(want), Some(got)) = (&net.iface_id_ver, &req.pod_uid)
            && want != got
        {
            return Err(CniError::new(
                codes::TRY_AGAIN_LATER,
                "pod UID does not match its logical port",
                format!(
                    "pod {key}: port {} expects UID {want}, CNI_ARGS says {got} (a recreated pod the controller has not seen yet?)",
                    net.lsp
                ),
            ));
        }
        Ok(())
    }

    async fn add(&self, req: &Request) -> Result<AddResult, CniError> {
        let container = required(&req.container_id, "CNI_CONTAINERID")?;
        let netns = required(&req.netns, "CNI_NETNS")?;
        let ifname = required(&req.ifname, "CNI_IFNAME")?;
        if !valid_ifname(ifname) {
            return Err(CniError::new(
                codes::INVALID_ENV,
                "bad interface name",
                format!("CNI_IFNAME {ifname:?} is not a valid interface name"),
            ));
        }
        let ns = required(&req.pod_namespace, "K8S_POD_NAMESPACE (in CNI_ARGS)")?;
        let name = required(&req.pod_name, "K8S_POD_NAME (in CNI_ARGS)")?;
        let key = ObjectKey::new(ns, name);
        crate::netns::open(Path::new(netns))
            .map_err(|e| CniError::new(codes::INVALID_ENV, "bad network namespace (CNI_NETNS)", e.to_string()))?;
        if let Some(os) = &self.openstack {
            return self.add_openstack(os, req, &key, container, netns, ifname).await;
        }
        let start = Instant::now();
        let deadline = start + self.config.lookup_timeout;
        // What to make: the interface asked for, and with it (primary, Multus-free) the pod's
        // secondary interfaces.
        let mut wanted: Vec<(String, PodNetwork, u32)> = Vec::new();
        if req.network.is_some() {
            let net = self.attachment(&key, ifname, deadline).await?;
            Self::check_uid(&key, &net, req)?;
            let mtu = net.mtu.or(req.mtu).unwrap_or(self.config.mtu);
            wanted.push((ifname.to_string(), net, mtu));
        } else {
            let net = self.pod_network(&key, deadline).await?;
            Self::check_uid(&key, &net, req)?;
            let secondary = req.attach_networks != Some(false);
            if secondary && let Some(why) = &net.attachment_error {
                return Err(CniError::new(
                    codes::INVALID_CONFIG,
                    "the pod's secondary networks cannot be attached",
                    format!("pod {key}: {why}"),
                ));
            }
            let attachments = if secondary { net.attachments.clone() } else { Vec::new() };
            wanted.push((ifname.to_string(), net, req.mtu.unwrap_or(self.config.mtu)));
            for iface in attachments {
                let n = self.attachment(&key, &iface, deadline).await?;
                let mtu = n.mtu.unwrap_or(self.config.mtu);
                wanted.push((iface, n, mtu));
            }
        }
        // An agent just started (or reconnecting) answers once its Open_vSwitch session is up,
        // within the lookup's deadline, rather than failing the first ADDs.
        let remaining = deadline.saturating_duration_since(Instant::now());
        self.ovs.connected(remaining).await.map_err(|e| {
            CniError::new(
                codes::TRY_AGAIN_LATER,
                "Open_vSwitch database unavailable",
                format!("Open_vSwitch database: {e}"),
            )
        })?;
        let lookup = start.elapsed();
        let results = futures::future::join_all(
            wanted.iter().map(|(ifname, net, mtu)| self.attach_one(container, netns, ifname, &key, net, *mtu)),
        )
        .await;
        if results.iter().any(Result::is_err) {
            // All or nothing: what was made (or found made) goes again; a failed interface
            // has removed what it made itself.
            for ((ifname, _, _), r) in wanted.iter().zip(&results) {
                if r.is_ok() {
                    let _ = self.teardown(&host_ifname(container, ifname)).await;
                }
            }
            let e = results.into_iter().find_map(Result::err).unwrap_or_else(|| unreachable!("one failed"));
            return Err(e);
        }
        let made: Vec<Made> = results.into_iter().filter_map(Result::ok).collect();
        let timings = Timings {
            lookup_us: lookup.as_micros() as u64,
            plumb_us: made.iter().map(|m| m.timings.plumb_us).max().unwrap_or_default(),
            bind_us: made.iter().map(|m| m.timings.bind_us).max().unwrap_or_default(),
            install_us: made.iter().map(|m| m.timings.install_us).max().unwrap_or_default(),
        };
        tracing::debug!(pod = %key, interfaces = made.len(), ?timings, "attached");
        Ok(self.result(netns, &made, timings))
    }

    /// Makes one interface of the pod as its port says (or finds it made by an earlier ADD):
    /// plumbed, bound to its logical port, installed by ovn-controller. On failure nothing of
    /// it is left.
    async fn attach_one(
        &self,
        container: &str,
        netns: &str,
        ifname: &str,
        key: &ObjectKey,
        net: &PodNetwork,
        mtu: u32,
    ) -> Result<Made, CniError> {
        let host = host_ifname(container, ifname);
        let (gateways, routes) = routing(net);
        let iface = PodInterface {
            host: host.clone(),
            ifname: ifname.into(),
            mac: net.mac.clone(),
            addresses: net.addresses.clone(),
            gateways,
            routes,
            mtu,
            vlan: net.vlan,
        };
        // Repeated ADD: if this attachment is already complete, answer as before.
        let existing: Option<Attached> = self
            .ovs
            .replica()
            .as_ref()
            .and_then(|r| ovs::attached(r).into_iter().find(|a| a.container == container && a.ifname == ifname));
        if let Some(a) = &existing {
            let observed = self.plumbing.observe(Path::new(netns), ifname).await.ok().flatten();
            if a.installed && a.iface_id == net.lsp && observed.is_some_and(|o| o.mac == net.mac) {
                return Ok(Made { iface, timings: Timings::default() });
            }
            // Half there (an interrupted ADD): start over.
            self.teardown(&a.port).await?;
        }
        if let Some(parent) = net.parent.as_ref().filter(|_| !self.plumbing.nested()) {
            return Err(CniError::new(
                codes::INVALID_CONFIG,
                "pod is nested in a VM's port",
                format!(
                    "pod {key}: its port {} nests in VM port {parent} (VLAN {}); this agent makes veth pairs on {}, not VLAN subinterfaces",
                    net.lsp,
                    net.vlan.map_or("not yet assigned".into(), |v| v.to_string()),
                    self.config.bridge
                ),
            ));
        }
        let binding = Binding {
            port: host.clone(),
            iface_id: net.lsp.clone(),
            iface_id_ver: net.iface_id_ver.clone(),
            container: container.into(),
            ifname: ifname.into(),
            netns: netns.into(),
        };
        // The host end is bound while the pair is made and configured (ovs-vswitchd takes
        // the device up when it appears, ovn-controller installs the port meanwhile); both
        // finish before anything is judged, so a failure leaves no binding committed behind.
        let plumb = async {
            let t = Instant::now();
            self.plumbing.create(Path::new(netns), &iface).await.map_err(|e| (false, plumb_error(e)))?;
            self.plumbing
                .configure(Path::new(netns), &iface)
                .await
                .map_err(|e| (true, plumb_error(e)))
                .map(|()| t.elapsed())
        };
        let bind = async {
            let t = Instant::now();
            self.binder.bind(binding).await.map_err(bind_error).map(|()| t.elapsed())
        };
        let (plumbed, bound) = match tokio::join!(plumb, bind) {
            (Ok(p), Ok(b)) => (p, b),
            // The pair was not made: an interface of that name is not ours to remove.
            (Err((false, e)), _) => {
                let _ = ovs::unbind(&self.ovs, &self.config.bridge, &host).await;
                return Err(e);
            }
            (Err((true, e)), _) | (_, Err(e)) => {
                let _ = self.teardown(&host).await;
                return Err(e);
            }
        };
        let t = Instant::now();
        if let Err(e) = ovs::wait_installed(&self.ovs, &host, self.config.install_timeout).await {
            let _ = self.teardown(&host).await;
            return Err(bind_error(e));
        }
        let installed = t.elapsed();
        let timings = Timings {
            lookup_us: 0,
            plumb_us: plumbed.as_micros() as u64,
            bind_us: bound.as_micros() as u64,
            install_us: installed.as_micros() as u64,
        };
        Ok(Made { iface, timings })
    }

    /// Removes the OVS port and the veth pair named `host`: both are attempted, whatever the
    /// first one does (the veth must not outlive an unreachable OVS database).
    async fn teardown(&self, host: &str) -> Result<(), CniError> {
        let ovs = ovs::unbind(&self.ovs, &self.config.bridge, host).await.map_err(bind_error);
        let link = self.plumbing.remove(host).await.map_err(plumb_error);
        ovs.and(link).map(drop)
    }

    /// Idempotent: a missing namespace, port or interface is success.
    /// The primary interface's DEL (Multus-free) removes every interface of the container.
    async fn del(&self, req: &Request) -> Result<(), CniError> {
        if self.openstack.is_some() {
            return self.del_openstack(req).await;
        }
        let container = required(&req.container_id, "CNI_CONTAINERID")?;
        let ifname = req.ifname.as_deref().unwrap_or("eth0");
        let mut hosts = vec![host_ifname(container, ifname)];
        if req.network.is_none() && req.attach_networks != Some(false) {
            let ours = self.ovs.replica().as_ref().map(ovs::attached).unwrap_or_default();
            hosts.extend(ours.into_iter().filter(|a| a.container == container).map(|a| a.port));
            hosts.sort();
            hosts.dedup();
        }
        let mut result = Ok(());
        for host in hosts {
            if let Err(e) = self.teardown(&host).await {
                result = Err(e);
            }
        }
        result
    }

    /// CHECK: the interface asked about as its port says, and with it (primary, Multus-free)
    /// every secondary interface of the pod.
    async fn check(&self, req: &Request) -> Result<(), CniError> {
        if let Some(os) = &self.openstack {
            return self.check_openstack(os, req).await;
        }
        let container = required(&req.container_id, "CNI_CONTAINERID")?;
        let netns = required(&req.netns, "CNI_NETNS")?;
        let ifname = required(&req.ifname, "CNI_IFNAME")?;
        let key = ObjectKey::new(
            required(&req.pod_namespace, "K8S_POD_NAMESPACE (in CNI_ARGS)")?,
            required(&req.pod_name, "K8S_POD_NAME (in CNI_ARGS)")?,
        );
        let deadline = Instant::now() + Duration::from_secs(1);
        if req.network.is_some() {
            let net = self.attachment(&key, ifname, deadline).await?;
            return self.check_one(container, netns, ifname, &net).await;
        }
        let net = self.pod_network(&key, deadline).await?;
        self.check_one(container, netns, ifname, &net).await?;
        if req.attach_networks != Some(false) {
            for iface in &net.attachments {
                let n = self.attachment(&key, iface, deadline).await?;
                self.check_one(container, netns, iface, &n).await?;
            }
        }
        Ok(())
    }

    async fn check_one(&self, container: &str, netns: &str, ifname: &str, net: &PodNetwork) -> Result<(), CniError> {
        let failed = |details: String| CniError::new(codes::CHECK_FAILED, "attachment is not as it should be", details);
        let observed = self
            .plumbing
            .observe(Path::new(netns), ifname)
            .await
            .map_err(plumb_error)?
            .ok_or_else(|| failed(format!("no interface {ifname} in {netns}")))?;
        if observed.mac != net.mac {
            return Err(failed(format!("{ifname} has MAC {}, the port says {}", observed.mac, net.mac)));
        }
        if !observed.up {
            return Err(failed(format!("{ifname} is down")));
        }
        for a in &net.addresses {
            if !observed.addresses.contains(a) {
                return Err(failed(format!("{ifname} lacks address {}/{}", a.0, a.1)));
            }
        }
        for g in &routing(net).0 {
            if !observed.gateways.contains(g) {
                return Err(failed(format!("no default route via {g} on {ifname}")));
            }
        }
        let host = host_ifname(container, ifname);
        let attached = self.ovs.replica().as_ref().and_then(|r| ovs::attached(r).into_iter().find(|a| a.port == host));
        match attached {
            None => Err(failed(format!("no OVS port {host} on {}", self.config.bridge))),
            Some(a) if a.iface_id != net.lsp => {
                Err(failed(format!("OVS port {host} is bound to {}, not {}", a.iface_id, net.lsp)))
            }
            Some(a) if !a.installed => Err(failed(format!("ovn-controller has not installed {host}"))),
            Some(_) => Ok(()),
        }
    }

    /// Removes our attachments the runtime no longer lists (others' ports are not ours). The
    /// runtime lists a pod's primary interface only: the secondary interfaces its ADD made go
    /// with it (without Multus), so a container it lists keeps all of them.
    async fn gc(&self, req: &Request) -> Result<(), CniError> {
        let valid: HashSet<(String, String)> = req.valid_attachments.clone().unwrap_or_default().into_iter().collect();
        let containers: HashSet<&str> = valid.iter().map(|(c, _)| c.as_str()).collect();
        let attach_networks = req.attach_networks != Some(false);
        let ours = self.ovs.replica().as_ref().map(ovs::attached).unwrap_or_default();
        for a in ours {
            let listed = valid.contains(&(a.container.clone(), a.ifname.clone()))
                || (attach_networks && containers.contains(a.container.as_str()));
            if !listed {
                self.teardown(&a.port).await?;
            }
        }
        Ok(())
    }
}

/// One interface an ADD made (or found made).
struct Made {
    iface: PodInterface,
    timings: Timings,
}

fn valid_ifname(ifname: &str) -> bool {
    ifname.len() <= 15 && !ifname.contains('/') && !ifname.contains(char::is_whitespace)
}

/// The interface's routes: a default route through each gateway, except for a family whose
/// default route is on another interface — then only the port's CIDRs of that family.
fn routing(net: &PodNetwork) -> (Vec<IpAddr>, Vec<(stacknet_engine::Cidr, IpAddr)>) {
    let mut defaults = Vec::new();
    let mut routes = Vec::new();
    // The interface's own subnets are on-link already.
    let connected: Vec<stacknet_engine::Cidr> =
        net.addresses.iter().filter_map(|(ip, len)| stacknet_engine::Cidr::new(*ip, *len)).collect();
    for g in &net.gateways {
        let specific: Vec<_> = net.routes.iter().filter(|c| c.is_ipv4() == g.is_ipv4()).collect();
        if specific.is_empty() {
            defaults.push(*g);
        } else {
            routes.extend(specific.into_iter().filter(|c| !connected.contains(c)).map(|c| (*c, *g)));
        }
    }
    (defaults, routes)
}

/// Where the agent listens by default.
pub fn default_socket() -> PathBuf {
    PathBuf::from("/run/stacknet/agent.sock")
}

mod openstack;
#[cfg(test)]
mod tests;
