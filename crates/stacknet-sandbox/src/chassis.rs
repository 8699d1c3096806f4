//! A chassis: an Open_vSwitch database, ovs-vswitchd with the userspace (netdev) datapath and
//! ovn-controller, in a directory of their own, bound to a Southbound database. Network
//! namespaces stand in for pods.
//!
//! ovs-vswitchd and ovn-controller run in a network namespace of the chassis's own (its "host"
//! namespace): two netdev datapaths in one namespace collide on their tap devices
//! (`ovs-netdev`, the bridge's), so this is what lets several chassis, and several tests, run
//! side by side. Pod interfaces' host ends go into that namespace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::Result;
use crate::ovn::{DbServer, io, missing, run, wait_for};

const VSWITCH_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

#[derive(Debug)]
pub struct Chassis {
    pub name: String,
    dir: PathBuf,
    pub ovs: DbServer,
    vswitchd: Option<Child>,
    controller: Option<Child>,
    // Dropped after the daemons in it.
    netns: Option<Netns>,
}

/// Every OVS/OVN default path points into `dir` (sockets such as `br-int.mgmt` included).
fn env_for(cmd: &mut Command, dir: &Path) {
    for var in [
        "OVS_RUNDIR",
        "OVS_LOGDIR",
        "OVS_DBDIR",
        "OVS_SYSCONFDIR",
        "OVN_RUNDIR",
        "OVN_LOGDIR",
        "OVN_DBDIR",
        "OVN_SYSCONFDIR",
    ] {
        cmd.env(var, dir);
    }
}

/// Spawns `program` inside the network namespace `netns` (through `ip netns exec`, which
/// execs it: the child is the daemon itself, so its PID is the daemon's).
fn spawn(program: &str, args: &[String], dir: &Path, netns: &str) -> Result<Child> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, program])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    env_for(&mut cmd, dir);
    cmd.spawn().map_err(|e| missing("ip", &e).unwrap_or_else(|| io(program)(e)))
}

impl Chassis {
    /// Starts a chassis called `name` in `<base>/<name>`, encapsulating with Geneve from
    /// `encap_ip`, with `br-int` ready and the chassis registered in the Southbound database.
    pub fn start(base: &Path, name: &str, sb_remote: &str, encap_ip: &str) -> Result<Chassis> {
        let dir = base.join(name);
        std::fs::create_dir_all(&dir).map_err(io(format!("{}", dir.display())))?;
        // Unique per sandbox directory, so that concurrent sandboxes do not meet.
        let tag = crate::ovn::hash_path(base);
        let netns = Netns::create(&format!("snc-{tag}-{name}"))?;
        let ns = netns.name().to_string();
        // With the userspace datapath the host ends of pod veths stay ordinary kernel
        // interfaces here, so the kernel would answer a pod's ARP for the node's management
        // address on the pod's own veth and take its packets past OVN. Answer ARP only on
        // the interface holding the address (a kernel datapath node needs nothing of this).
        run("ip", &["netns", "exec", &ns, "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1"])?;
        let ovs = DbServer::start(&dir, "conf", VSWITCH_SCHEMA)?;
        let mut c =
            Chassis { name: name.into(), dir: dir.clone(), ovs, vswitchd: None, controller: None, netns: Some(netns) };
        c.vsctl_no_wait(&["init"])?;
        c.vsctl_no_wait(&[
            "set",
            "open_vswitch",
            ".",
            &format!("external_ids:system-id={name}"),
            &format!("external_ids:ovn-remote={sb_remote}"),
            "external_ids:ovn-encap-type=geneve",
            &format!("external_ids:ovn-encap-ip={encap_ip}"),
            "external_ids:ovn-bridge-datapath-type=netdev",
            "external_ids:ovn-monitor-all=true",
        ])?;
        c.spawn_vswitchd()?;
        // Without --no-wait: returns once ovs-vswitchd has made the bridge.
        c.vsctl(&[
            "--may-exist",
            "add-br",
            "br-int",
            "--",
            "set",
            "bridge",
            "br-int",
            "datapath_type=netdev",
            "fail-mode=secure",
            "other-config:disable-in-band=true",
        ])?;
        c.spawn_controller()?;
        let clog = dir.join("controller.log");
        let sb = format!("--db={sb_remote}");
        wait_for(&format!("ovn-controller {name} to register"), &clog, || {
            run("ovn-sbctl", &[&sb, "--bare", "--columns=name", "find", "Chassis", &format!("name={name}")])
                .is_ok_and(|out| out.trim() == name)
        })?;
        Ok(c)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Wires an underlay between two chassis for Geneve: a veth pair from one chassis's
    /// namespace to the other's, each end on a userspace bridge `br-phy` that carries the
    /// chassis's encapsulation address (`a_ip`, `b_ip`: the `encap_ip`s the chassis were
    /// started with, in one /24). The userspace datapath sends tunnel packets out through
    /// `br-phy`, resolving the remote end by ARP there.
    pub fn connect_underlay(a: &Chassis, a_ip: &str, b: &Chassis, b_ip: &str) -> Result<()> {
        let (na, nb) = (a.netns().name().to_string(), b.netns().name().to_string());
        let v = "underlay0";
        let tmp = format!("snu{}", std::process::id() % 1_000_000);
        run("ip", &["link", "add", &tmp, "netns", &na, "type", "veth", "peer", "name", v, "netns", &nb])?;
        run("ip", &["-n", &na, "link", "set", &tmp, "name", v])?;
        a.bridge_port("br-phy", v, &format!("{a_ip}/24"))?;
        b.bridge_port("br-phy", v, &format!("{b_ip}/24"))
    }

    /// Puts the chassis on `segment` (a shared underlay for any number of chassis): a veth
    /// from its namespace's userspace bridge `br-phy`, which carries `ip` (its `encap_ip`,
    /// /24), to the segment's bridge.
    pub fn join_underlay(&self, segment: &Segment, ip: &str) -> Result<()> {
        let v = "underlay0";
        segment.plug(self.netns().name(), v, &format!("u-{}", self.short()))?;
        self.bridge_port("br-phy", v, &format!("{ip}/24"))
    }

    /// The node's uplink on `segment` (its "physical network"): a veth from the chassis's
    /// namespace into a userspace bridge `br-ex` that holds the node's `address/prefix` (the
    /// node's own traffic uses it; the node agent shares the bridge with the node's gateway
    /// router).
    pub fn uplink(&self, segment: &Segment, address: &str, prefix: u8) -> Result<()> {
        let v = "uplink0";
        segment.plug(self.netns().name(), v, &format!("o-{}", self.short()))?;
        self.bridge_port("br-ex", v, &format!("{address}/{prefix}"))
    }

    /// The node's link to provider network `physnet` on `segment` (flat, or carrying the VLAN
    /// tags OVN's localnet ports push): a veth from the chassis's namespace into a userspace
    /// bridge `br-<physnet>` holding no address (pure L2), and `physnet:br-<physnet>` added to
    /// the chassis's `ovn-bridge-mappings` (others kept), as an operator configures a node.
    pub fn provider(&self, segment: &Segment, physnet: &str) -> Result<()> {
        let bridge: String = format!("br-{physnet}").chars().take(15).collect();
        let v: String = format!("pv-{physnet}").chars().take(15).collect();
        let outer = format!("p{}", &crate::ovn::hash_path(&self.dir.join(physnet))[..8]);
        segment.plug(self.netns().name(), &v, &outer)?;
        self.bridge_port_bare(&bridge, &v)?;
        let ns = self.netns().name().to_string();
        run("ip", &["-n", &ns, "link", "set", &bridge, "up"])?;
        let current = self
            .vsctl(&["--if-exists", "get", "Open_vSwitch", ".", "external_ids:ovn-bridge-mappings"])
            .unwrap_or_default();
        let current = current.trim().trim_matches('"');
        let mut mappings: Vec<String> = current
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty() && !m.starts_with(&format!("{physnet}:")))
            .map(str::to_string)
            .collect();
        mappings.push(format!("{physnet}:{bridge}"));
        self.vsctl(&[
            "set",
            "Open_vSwitch",
            ".",
            &format!("external_ids:ovn-bridge-mappings=\"{}\"", mappings.join(",")),
        ])?;
        Ok(())
    }

    /// Interface `port` on userspace bridge `bridge` (made if missing), the port up with TX
    /// checksum offload off; no address anywhere.
    fn bridge_port_bare(&self, bridge: &str, port: &str) -> Result<()> {
        let ns = self.netns().name().to_string();
        self.vsctl(&[
            "--may-exist",
            "add-br",
            bridge,
            "--",
            "set",
            "bridge",
            bridge,
            "datapath_type=netdev",
            "--",
            "--may-exist",
            "add-port",
            bridge,
            port,
        ])?;
        run("ip", &["-n", &ns, "link", "set", port, "up"])?;
        run("ip", &["netns", "exec", &ns, "ethtool", "-K", port, "tx", "off"])?;
        Ok(())
    }

    /// Interface `port` (in the chassis's namespace) on userspace bridge `bridge` (made if
    /// missing), both up, the bridge holding `cidr`; TX checksum offload off on the port, as
    /// the userspace datapath needs.
    fn bridge_port(&self, bridge: &str, port: &str, cidr: &str) -> Result<()> {
        self.bridge_port_bare(bridge, port)?;
        let ns = self.netns().name().to_string();
        run("ip", &["-n", &ns, "addr", "add", cidr, "dev", bridge])?;
        run("ip", &["-n", &ns, "link", "set", bridge, "up"])?;
        Ok(())
    }

    /// A short tag for interface names, unique among the chassis of one sandbox.
    fn short(&self) -> String {
        crate::ovn::hash_path(&self.dir)[..8].to_string()
    }

    fn spawn_vswitchd(&mut self) -> Result<()> {
        let log = self.dir.join("vswitchd.log");
        let ctl = self.dir.join("vswitchd.ctl");
        let _ = std::fs::remove_file(&ctl);
        let ns = self.netns().name().to_string();
        let args = [
            self.ovs.remote(),
            format!("--unixctl={}", ctl.display()),
            format!("--log-file={}", log.display()),
            "--no-chdir".into(),
            "-vconsole:off".into(),
        ];
        self.vswitchd = Some(spawn("ovs-vswitchd", &args, &self.dir, &ns)?);
        wait_for("ovs-vswitchd", &log, || ctl.exists())
    }

    fn spawn_controller(&mut self) -> Result<()> {
        let log = self.dir.join("controller.log");
        let ns = self.netns().name().to_string();
        let args =
            [self.ovs.remote(), format!("--log-file={}", log.display()), "--no-chdir".into(), "-vconsole:off".into()];
        self.controller = Some(spawn("ovn-controller", &args, &self.dir, &ns)?);
        Ok(())
    }

    /// ovs-vswitchd killed (SIGKILL, by PID) and started again on the same database: it
    /// rebuilds its bridges and ports from it (returns once its control socket is back).
    pub fn restart_vswitchd(&mut self) -> Result<()> {
        if let Some(mut c) = self.vswitchd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn_vswitchd()
    }

    /// ovn-controller killed (SIGKILL, by PID) and started again: it reads the Southbound
    /// database afresh and reinstalls the flows.
    pub fn restart_controller(&mut self) -> Result<()> {
        if let Some(mut c) = self.controller.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn_controller()
    }

    /// The chassis's own network namespace, where pod interfaces' host ends belong.
    pub fn netns(&self) -> &Netns {
        self.netns.as_ref().expect("present until drop")
    }

    /// `unix:` remote of this chassis's Open_vSwitch database.
    pub fn ovs_remote(&self) -> String {
        self.ovs.remote()
    }

    fn vsctl_no_wait(&self, args: &[&str]) -> Result<String> {
        let db = format!("--db={}", self.ovs.remote());
        let mut all = vec![db.as_str(), "--no-wait", "--timeout=20"];
        all.extend_from_slice(args);
        run("ovs-vsctl", &all)
    }

    /// Runs `ovs-vsctl` against this chassis (waiting for ovs-vswitchd to apply changes).
    pub fn vsctl(&self, args: &[&str]) -> Result<String> {
        let db = format!("--db={}", self.ovs.remote());
        let mut all = vec![db.as_str(), "--timeout=20"];
        all.extend_from_slice(args);
        run("ovs-vsctl", &all)
    }

    /// Runs `ovs-appctl` against this chassis's ovs-vswitchd.
    pub fn appctl(&self, args: &[&str]) -> Result<String> {
        let target = self.dir.join("vswitchd.ctl");
        let t = target.to_string_lossy();
        let mut all = vec!["-t", &t];
        all.extend_from_slice(args);
        run("ovs-appctl", &all)
    }

    /// The daemons and their PIDs, in the order to stop them.
    pub fn daemons(&self) -> Vec<(String, u32)> {
        let mut d = Vec::new();
        d.extend(self.controller.as_ref().map(|c| (format!("ovn-controller ({})", self.name), c.id())));
        d.extend(self.vswitchd.as_ref().map(|c| (format!("ovs-vswitchd ({})", self.name), c.id())));
        d.extend(self.ovs.pid().map(|p| (format!("ovsdb-server Open_vSwitch ({})", self.name), p)));
        d
    }

    pub fn pids(&self) -> Vec<u32> {
        let mut p: Vec<u32> = self.controller.iter().chain(self.vswitchd.iter()).map(Child::id).collect();
        p.extend(self.ovs.pid());
        p
    }

    /// Leaves the daemons (and their namespace) in place when this value is dropped.
    pub fn detach(&mut self) -> Option<String> {
        self.controller.take();
        self.vswitchd.take();
        self.ovs.detach();
        self.netns.take().map(Netns::keep)
    }
}

impl Drop for Chassis {
    fn drop(&mut self) {
        for c in [self.controller.take(), self.vswitchd.take()].into_iter().flatten() {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
        self.ovs.kill();
        // The namespace (and the tap devices ovs-vswitchd made in it) go last.
        self.netns.take();
    }
}

/// A layer-2 segment: a network namespace holding a bridge (`seg0`) that namespaces plug
/// into with veths; the segment's own namespace may hold addresses too (hosts "on the
/// wire"). Stands in for an underlay or an outside network; gone on drop.
#[derive(Debug)]
pub struct Segment {
    netns: Netns,
}

impl Segment {
    pub const BRIDGE: &str = "seg0";

    /// A new segment in a namespace called `name`.
    pub fn create(name: &str) -> Result<Segment> {
        let netns = Netns::create(name)?;
        let ns = netns.name().to_string();
        run("ip", &["-n", &ns, "link", "add", Self::BRIDGE, "type", "bridge"])?;
        run("ip", &["-n", &ns, "link", "set", Self::BRIDGE, "up"])?;
        run("ip", &["netns", "exec", &ns, "ethtool", "-K", Self::BRIDGE, "tx", "off"])?;
        Ok(Segment { netns })
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// An address on the segment's own namespace (`cidr` as `ip addr add` takes it; on the
    /// bridge, or on `lo` for an address beyond it).
    pub fn add_address(&self, cidr: &str, on_lo: bool) -> Result<()> {
        let dev = if on_lo { "lo" } else { Self::BRIDGE };
        run("ip", &["-n", self.netns.name(), "addr", "add", cidr, "dev", dev])?;
        Ok(())
    }

    /// A veth from namespace `ns` (end `inner`, left down) to this segment's bridge (end
    /// `outer`, up).
    pub fn plug(&self, ns: &str, inner: &str, outer: &str) -> Result<()> {
        let me = self.netns.name();
        run("ip", &["link", "add", inner, "netns", ns, "type", "veth", "peer", "name", outer, "netns", me])?;
        run("ip", &["-n", me, "link", "set", outer, "master", Self::BRIDGE, "up"])?;
        run("ip", &["netns", "exec", me, "ethtool", "-K", outer, "tx", "off"])?;
        Ok(())
    }

    /// A host on the segment: a namespace of its own holding `cidr` on `v0`, plugged in.
    pub fn host(&self, name: &str, cidr: &str, gateway: Option<&str>) -> Result<Netns> {
        let netns = Netns::create(name)?;
        let outer = format!("h-{}", &crate::ovn::hash_path(std::path::Path::new(name))[..8]);
        self.plug(netns.name(), "v0", &outer)?;
        run("ip", &["-n", netns.name(), "addr", "add", cidr, "dev", "v0"])?;
        run("ip", &["-n", netns.name(), "link", "set", "v0", "up"])?;
        run("ip", &["netns", "exec", netns.name(), "ethtool", "-K", "v0", "tx", "off"])?;
        if let Some(g) = gateway {
            run("ip", &["-n", netns.name(), "route", "add", "default", "via", g])?;
        }
        Ok(netns)
    }
}

/// A network namespace standing in for a pod, made with `ip netns add` and deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    keep: bool,
}

impl Netns {
    /// Creates `name` (which must not exist).
    pub fn create(name: &str) -> Result<Netns> {
        run("ip", &["netns", "add", name])?;
        let ns = Netns { name: name.into(), keep: false };
        run("ip", &["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The path a CNI runtime passes as CNI_NETNS.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// Keeps the namespace when this value is dropped.
    pub fn keep(mut self) -> String {
        self.keep = true;
        self.name.clone()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.keep {
            let _ = run("ip", &["netns", "del", &self.name]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ovn;

    #[test]
    fn a_chassis_registers_and_binds_a_port() {
        let ovn = Ovn::with_northd().unwrap();
        let c = Chassis::start(ovn.dir(), "chassis-1", &ovn.sb_remote().unwrap(), "127.0.0.1").unwrap();
        assert!(c.vsctl(&["br-exists", "br-int"]).is_ok());
        ovn.nbctl(&["ls-add", "s", "--", "lsp-add", "s", "p1"]).unwrap();
        ovn.nbctl(&["lsp-set-addresses", "p1", "0a:58:0a:00:00:01 10.0.0.1"]).unwrap();
        // An internal port stands for a pod interface here (no namespace needed).
        c.vsctl(&[
            "add-port",
            "br-int",
            "p1-if",
            "--",
            "set",
            "interface",
            "p1-if",
            "type=internal",
            "external_ids:iface-id=p1",
        ])
        .unwrap();
        ovn.nbctl(&["--wait=hv", "sync"]).unwrap();
        let up = ovn.nbctl(&["lsp-get-up", "p1"]).unwrap();
        assert_eq!(up.trim(), "up");
    }
}
