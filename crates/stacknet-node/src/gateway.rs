//! The node's uplink bridge (`--gateway-bridge`, e.g. `br-ex`): shared between the node's
//! host network and its gateway router, as ovn-kubernetes' shared gateway mode does. The node
//! keeps its address on the bridge; the gateway router's external port uses the same address
//! and, set by the agent, the same MAC. OpenFlow on the bridge sends the gateway router's
//! traffic out of the uplink (committed to a conntrack zone of its own), replies to it back to
//! the gateway router, ARP to both, and everything else to the host:
//!
//! ```text
//!   patch (gateway router) ── ip: ct(commit, zone, mark 1) ──> uplink
//!   uplink ── ip: ct(zone) ─┬─ reply to a marked connection ──> patch
//!                           └─ anything else ──> host (LOCAL)
//!   uplink ── arp ──> host and patch;   host ──> uplink
//! ```
//!
//! The agent also maps the gateway router's physical network to the bridge
//! (`ovn-bridge-mappings`, next to whatever else is mapped; a mapping of that name to another
//! bridge is the operator's and is reported, not replaced). Level-based like the management
//! port: checked every second, repaired when something is missing.

use std::path::PathBuf;

use stacknet_ovsdb::nb::string_map;
use stacknet_ovsdb::{Atom, Client, Condition, Datum, Mutation, Replica, Transaction};

use crate::ovs::{BRIDGE, DATABASE, INTERFACE, OPEN_VSWITCH, PORT};

/// The conntrack zone of the gateway router's connections on the uplink bridge (as
/// ovn-kubernetes').
pub const ZONE: u16 = 64000;
/// Every flow of ours on the bridge carries this cookie.
pub const COOKIE: u64 = 0x5e5e_0001;

/// What the controller made for this node's gateway: the physical network name of its
/// external switch's localnet port, its gateway router's external MAC and address, and the
/// addresses traffic from the uplink must reach the router at (Services' external ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayPort {
    pub physnet: String,
    pub mac: String,
    pub address: Option<std::net::IpAddr>,
    pub steer: Vec<stacknet_engine::Cidr>,
}

/// The node's gateway in the Northbound replica, if the controller made one.
pub fn lookup(nb: &Replica, cluster: &str, node: &str) -> Option<GatewayPort> {
    let localnet = format!("{cluster}_localnet.{node}");
    let (_, lsp) = nb.table(stacknet_ovsdb::nb::LOGICAL_SWITCH_PORT).by_name(&localnet).next()?;
    let physnet = string_map(lsp, "options").get("network_name")?.clone();
    let (_, lrp) =
        nb.table(stacknet_ovsdb::nb::LOGICAL_ROUTER_PORT).by_name(&format!("{cluster}_gtoe.{node}")).next()?;
    let mac = lrp.get("mac").and_then(Datum::as_str)?.to_string();
    let address = lrp
        .get("networks")
        .map(|d| d.elements())
        .unwrap_or_default()
        .iter()
        .filter_map(|a| a.as_str())
        .find_map(|n| n.split_once('/').and_then(|(ip, _)| ip.parse().ok()));
    let steer = nb
        .table(stacknet_ovsdb::nb::LOGICAL_ROUTER)
        .by_name(&format!("{cluster}_gr.{node}"))
        .next()
        .and_then(|(_, r)| string_map(r, "external_ids").get(stacknet_ovn::names::KEY_STEER).cloned())
        .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_default();
    Some(GatewayPort { physnet, mac, address, steer })
}

/// The bridge's ports as the flows need them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgePorts {
    pub uplink: (String, i64),
    pub patch: (String, i64),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("bridge {0} does not exist")]
    NoBridge(String),
    #[error("bridge {bridge}: {message}")]
    Ports { bridge: String, message: String },
    #[error(
        "ovn-bridge-mappings maps {physnet} to {other}, not {bridge}: that mapping is the operator's; fix it or name another physical network (--physnet)"
    )]
    Mapped { physnet: String, other: String, bridge: String },
    #[error("{0}")]
    Other(String),
}

/// The uplink (the one port that is neither the bridge's own nor a patch port) and the patch
/// port ovn-controller made towards br-int, with their OpenFlow port numbers.
pub fn bridge_ports(ovs: &Replica, bridge: &str) -> Result<BridgePorts, GatewayError> {
    let (_, b) = ovs.table(BRIDGE).by_name(bridge).next().ok_or_else(|| GatewayError::NoBridge(bridge.into()))?;
    let bad = |message: String| GatewayError::Ports { bridge: bridge.into(), message };
    let (mut uplinks, mut patches) = (Vec::new(), Vec::new());
    for p in b.get("ports").map(|d| d.elements()).unwrap_or_default().iter().filter_map(|a| a.as_uuid()) {
        let Some(port) = ovs.table(PORT).get(&p) else { continue };
        for i in port.get("interfaces").map(|d| d.elements()).unwrap_or_default().iter().filter_map(|a| a.as_uuid()) {
            let Some(iface) = ovs.table(INTERFACE).get(&i) else { continue };
            let name = iface.get("name").and_then(Datum::as_str).unwrap_or_default().to_string();
            let kind = iface.get("type").and_then(Datum::as_str).unwrap_or_default();
            let ofport = iface.get("ofport").and_then(|d| d.elements().first().and_then(|a| a.as_i64())).unwrap_or(-1);
            match kind {
                "internal" if name == bridge => {}
                "patch" => patches.push((name, ofport)),
                _ => uplinks.push((name, ofport)),
            }
        }
    }
    let one = |mut v: Vec<(String, i64)>, what: &str| -> Result<(String, i64), GatewayError> {
        match v.len() {
            1 if v[0].1 > 0 => Ok(v.remove(0)),
            1 => Err(bad(format!("{what} {} has no OpenFlow port number yet", v[0].0))),
            0 => Err(bad(format!("no {what}"))),
            _ => Err(bad(format!(
                "more than one {what}: {}",
                v.iter().map(|p| p.0.as_str()).collect::<Vec<_>>().join(", ")
            ))),
        }
    };
    Ok(BridgePorts {
        uplink: one(uplinks, "uplink port")?,
        patch: one(patches, "patch port to br-int (ovn-controller makes it once the gateway router is bound here)")?,
    })
}

/// `lo..=hi` as value/mask pairs (what OpenFlow matches a port range with).
pub fn port_masks(lo: u16, hi: u16) -> Vec<(u16, u16)> {
    let (mut at, hi) = (u32::from(lo), u32::from(hi));
    let mut out = Vec::new();
    while at <= hi {
        let mut size = 1u32;
        while at % (size * 2) == 0 && at + size * 2 - 1 <= hi && size < 0x10000 {
            size *= 2;
        }
        out.push((at as u16, (!(size - 1) & 0xffff) as u16));
        at += size;
    }
    out
}

/// The flows, as `ovs-ofctl add-flows` reads them (pure). From the uplink, the node's
/// NodePorts (`node_ports` on `address`) and the `steer`ed addresses go to the gateway router
/// straight away, before any connection tracking here: the packet still has the gateway
/// router, the cluster router and the pod's switch ahead, and a userspace datapath drops a
/// packet after six recirculations in one pass (a new connection to a pod on this same node
/// would lose its first packet). Other traffic from the uplink is the host's, unless it
/// answers a connection the gateway router started (tracked in our zone, marked).
pub fn flows(ports: &BridgePorts, gw: &GatewayPort, node_ports: std::ops::RangeInclusive<u16>) -> String {
    let (u, p) = (ports.uplink.1, ports.patch.1);
    let c = format!("cookie={COOKIE:#x},");
    let mut steering = Vec::new();
    if let Some(std::net::IpAddr::V4(a)) = gw.address {
        for l4 in ["tcp", "udp"] {
            for (v, m) in port_masks(*node_ports.start(), *node_ports.end()) {
                steering.push(format!(
                    "{c}table=0,priority=110,in_port={u},{l4},nw_dst={a},tp_dst={v:#x}/{m:#x},actions=output:{p}"
                ));
            }
        }
    }
    for cidr in gw.steer.iter().filter(|c| c.is_ipv4()) {
        steering.push(format!("{c}table=0,priority=110,in_port={u},ip,nw_dst={cidr},actions=output:{p}"));
    }
    steering.extend([
        format!("{c}table=0,priority=100,in_port={p},ip,actions=ct(commit,zone={ZONE},exec(load:0x1->NXM_NX_CT_MARK[])),output:{u}"),
        format!("{c}table=0,priority=10,in_port={p},actions=output:{u}"),
        format!("{c}table=0,priority=100,in_port={u},ip,actions=ct(table=1,zone={ZONE})"),
        format!("{c}table=0,priority=10,in_port={u},arp,actions=LOCAL,output:{p}"),
        format!("{c}table=0,priority=5,in_port={u},actions=LOCAL"),
        format!("{c}table=0,priority=10,in_port=LOCAL,actions=output:{u}"),
        format!("{c}table=1,priority=100,ct_state=+trk+est,ct_mark=0x1,ip,actions=output:{p}"),
        format!("{c}table=1,priority=100,ct_state=+trk+rel,ct_mark=0x1,ip,actions=output:{p}"),
        format!("{c}table=1,priority=0,actions=LOCAL"),
    ]);
    steering.join("\n") + "\n"
}

/// `ovn-bridge-mappings` with `physnet:bridge` in it (others' mappings kept): `Ok(None)` if it
/// is there already.
pub fn mappings_with(current: Option<&str>, physnet: &str, bridge: &str) -> Result<Option<String>, GatewayError> {
    let mut pairs: Vec<(String, String)> = current
        .unwrap_or_default()
        .split(',')
        .filter_map(|m| m.trim().split_once(':').map(|(a, b)| (a.trim().to_string(), b.trim().to_string())))
        .collect();
    match pairs.iter().find(|(p, _)| p == physnet) {
        Some((_, b)) if b == bridge => Ok(None),
        Some((_, other)) => {
            Err(GatewayError::Mapped { physnet: physnet.into(), other: other.clone(), bridge: bridge.into() })
        }
        None => {
            pairs.push((physnet.into(), bridge.into()));
            Ok(Some(pairs.iter().map(|(p, b)| format!("{p}:{b}")).collect::<Vec<_>>().join(",")))
        }
    }
}

/// Makes the Open_vSwitch database say what the gateway needs: the mapping, and the bridge's
/// MAC = the gateway router's. Returns what it changed.
pub async fn ensure_database(ovs: &Client, bridge: &str, gw: &GatewayPort) -> Result<Vec<String>, GatewayError> {
    let (mappings, hwaddr) = {
        let guard = ovs.replica();
        let r = guard.as_ref().ok_or_else(|| GatewayError::Other("no Open_vSwitch replica".into()))?;
        let root = r.table(OPEN_VSWITCH).rows().next().map(|(_, row)| string_map(row, "external_ids"));
        let (_, b) = r.table(BRIDGE).by_name(bridge).next().ok_or_else(|| GatewayError::NoBridge(bridge.into()))?;
        let hwaddr = string_map(b, "other_config").get("hwaddr").cloned();
        (root.and_then(|m| m.get("ovn-bridge-mappings").cloned()), hwaddr)
    };
    let mut t = Transaction::new(DATABASE);
    let mut changed = Vec::new();
    if let Some(new) = mappings_with(mappings.as_deref(), &gw.physnet, bridge)? {
        let key = Datum::Set([Atom::from("ovn-bridge-mappings")].into());
        t.mutate(
            OPEN_VSWITCH,
            vec![],
            vec![
                Mutation::delete("external_ids", key),
                Mutation::insert("external_ids", Datum::map([("ovn-bridge-mappings", new.as_str())])),
            ],
        );
        changed.push(format!("ovn-bridge-mappings={new}"));
    }
    if !hwaddr.as_deref().is_some_and(|h| h.eq_ignore_ascii_case(&gw.mac)) {
        t.mutate(
            BRIDGE,
            vec![Condition::eq("name", bridge)],
            vec![
                Mutation::delete("other_config", Datum::Set([Atom::from("hwaddr")].into())),
                Mutation::insert("other_config", Datum::map([("hwaddr", gw.mac.as_str())])),
            ],
        );
        changed.push(format!("{bridge} hwaddr={}", gw.mac));
    }
    if !changed.is_empty() {
        t.comment(&format!("stacknet: gateway bridge {bridge}"));
        ovs.transact(&t).await.map_err(|e| GatewayError::Other(format!("Open_vSwitch database: {e}")))?;
    }
    Ok(changed)
}

/// `ovs-ofctl` against `bridge` through its management socket in `rundir`.
fn ofctl(rundir: &std::path::Path, bridge: &str, args: &[&str], stdin: Option<&str>) -> Result<String, GatewayError> {
    use std::io::Write;
    let target = format!("unix:{}", rundir.join(format!("{bridge}.mgmt")).display());
    let mut cmd = std::process::Command::new("ovs-ofctl");
    cmd.args(["-O", "OpenFlow13"]).args(args.iter().map(|a| if *a == "TARGET" { target.as_str() } else { a }));
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| GatewayError::Other(format!("ovs-ofctl: {e}")))?;
    if let (Some(text), Some(mut i)) = (stdin, child.stdin.take()) {
        i.write_all(text.as_bytes()).map_err(|e| GatewayError::Other(format!("ovs-ofctl: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| GatewayError::Other(format!("ovs-ofctl: {e}")))?;
    if !out.status.success() {
        return Err(GatewayError::Other(format!(
            "ovs-ofctl {}: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where ovs-vswitchd's bridge management sockets are: next to the database socket.
pub fn rundir(ovs_remote: &stacknet_ovsdb::Remote) -> Option<PathBuf> {
    match ovs_remote {
        stacknet_ovsdb::Remote::Unix(p) => p.parent().map(|d| d.to_path_buf()),
        _ => None,
    }
}

/// Installs `wanted` (the whole flow table of the bridge, atomically) unless the bridge
/// already holds exactly that many flows of ours and `wanted` is what was installed last.
/// Returns whether it installed.
pub fn ensure_flows(
    rundir: &std::path::Path,
    bridge: &str,
    wanted: &str,
    last: &mut Option<String>,
) -> Result<bool, GatewayError> {
    let ours = ofctl(rundir, bridge, &["dump-flows", "TARGET", &format!("cookie={COOKIE:#x}/-1")], None)?;
    let count = ours.lines().filter(|l| l.contains("cookie=")).count();
    if last.as_deref() == Some(wanted) && count == wanted.lines().count() {
        return Ok(false);
    }
    ofctl(rundir, bridge, &["--bundle", "replace-flows", "TARGET", "-"], Some(wanted))?;
    *last = Some(wanted.to_string());
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mapping_is_added_next_to_others_and_an_operators_other_mapping_is_refused() {
        assert_eq!(mappings_with(None, "external", "br-ex").unwrap().as_deref(), Some("external:br-ex"));
        assert_eq!(
            mappings_with(Some("tenant:br-vlan"), "external", "br-ex").unwrap().as_deref(),
            Some("tenant:br-vlan,external:br-ex")
        );
        assert_eq!(mappings_with(Some("tenant:br-vlan,external:br-ex"), "external", "br-ex").unwrap(), None);
        let e = mappings_with(Some("external:br-phys"), "external", "br-ex").unwrap_err();
        assert!(e.to_string().contains("maps external to br-phys"), "{e}");
    }

    #[test]
    fn port_ranges_become_masks_that_cover_exactly_the_range() {
        let masks = port_masks(30000, 32767);
        let covered: Vec<u32> = (0..=65535u32).filter(|p| masks.iter().any(|(v, m)| (*p as u16) & m == *v)).collect();
        assert_eq!(covered.first(), Some(&30000));
        assert_eq!(covered.last(), Some(&32767));
        assert_eq!(covered.len(), 2768);
        assert_eq!(masks.len(), 5, "{masks:?}");
        assert_eq!(port_masks(80, 80), [(80, 0xffff)]);
    }

    #[test]
    fn flows_steer_replies_to_the_gateway_router_and_the_rest_to_the_host() {
        let gw = GatewayPort {
            physnet: "external".into(),
            mac: "0a:58:ac:1e:00:0b".into(),
            address: Some("172.30.0.11".parse().unwrap()),
            steer: vec!["172.30.0.201/32".parse().unwrap()],
        };
        let f = flows(&BridgePorts { uplink: ("eth1".into(), 1), patch: ("patch-x".into(), 2) }, &gw, 30000..=32767);
        assert_eq!(f.lines().count(), 9 + 2 * 5 + 1);
        assert!(
            f.contains("table=0,priority=110,in_port=1,tcp,nw_dst=172.30.0.11,tp_dst=0x7530/0xfff0,actions=output:2"),
            "{f}"
        );
        assert!(f.contains("table=0,priority=110,in_port=1,ip,nw_dst=172.30.0.201/32,actions=output:2"));
        assert!(f.contains("in_port=2,ip,actions=ct(commit,zone=64000,exec(load:0x1->NXM_NX_CT_MARK[])),output:1"));
        assert!(f.contains("ct_state=+trk+est,ct_mark=0x1,ip,actions=output:2"));
        assert!(f.contains("in_port=1,arp,actions=LOCAL,output:2"));
        assert!(f.contains("table=1,priority=0,actions=LOCAL"));
        assert!(f.lines().all(|l| l.starts_with("cookie=0x5e5e0001,")));
    }
}
