//! Probes as ovn-trace microflows: a packet from one pod's port to another pod (or to a
//! Service VIP, with the backend ovn-trace's load balancer should pick), decided on OVN's own
//! logical pipeline. Delivered iff the trace ends in `output("<destination port>")`.

use std::net::{IpAddr, SocketAddr};

use stacknet_engine::objects::{ObjectKey, Protocol};

use crate::desired::{Desired, PodPort};

/// Conntrack stages a probe may cross (two switches and the router between them): each gets
/// `--ct=new`, so the first packet of a connection is what ACLs judge.
pub const CT_STAGES: usize = 6;
const SOURCE_PORT: u16 = 40000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceProbe {
    /// The logical switch the packet enters.
    pub datapath: String,
    pub microflow: String,
    /// The logical port that must receive it.
    pub expect_output: String,
    /// For a VIP: the backend (`ip:port`) the load balancer is told to choose.
    pub lb_dst: Option<String>,
}

fn port_of<'a>(d: &'a Desired, pod: &ObjectKey) -> Result<&'a PodPort, String> {
    d.ports.get(pod).ok_or_else(|| format!("pod {pod} has no logical port"))
}

fn l4(protocol: Protocol, dst: u16) -> String {
    let p = match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    };
    format!("{p} && {p}.src == {SOURCE_PORT} && {p}.dst == {dst}")
}

fn flow(src: &PodPort, eth_dst: &str, src_ip: IpAddr, dst_ip: IpAddr, protocol: Protocol, port: u16) -> String {
    let fam = if dst_ip.is_ipv4() { "ip4" } else { "ip6" };
    format!(
        "inport == \"{}\" && eth.src == {} && eth.dst == {eth_dst} && {fam}.src == {src_ip} && {fam}.dst == {dst_ip} && ip.ttl == 64 && {}",
        src.lsp,
        src.mac,
        l4(protocol, port)
    )
}

/// The gateway MAC of the source's switch (off-subnet destinations go there).
fn gateway_mac(d: &Desired, src: &PodPort) -> Result<String, String> {
    d.switches
        .get(&src.node)
        .and_then(|s| s.router_mac.clone())
        .ok_or_else(|| format!("switch {} has no router port", src.switch))
}

/// A packet from pod `from` to pod `to`'s primary address.
pub fn pod_to_pod(
    d: &Desired,
    from: &ObjectKey,
    to: &ObjectKey,
    port: u16,
    protocol: Protocol,
) -> Result<TraceProbe, String> {
    let (src, dst) = (port_of(d, from)?, port_of(d, to)?);
    let dst_ip = dst.ips[0];
    let src_ip = src
        .ips
        .iter()
        .copied()
        .find(|i| i.is_ipv4() == dst_ip.is_ipv4())
        .ok_or_else(|| format!("pod {from} has no address of {to}'s family"))?;
    let eth_dst = if src.switch == dst.switch { dst.mac.clone() } else { gateway_mac(d, src)? };
    Ok(TraceProbe {
        datapath: src.switch.clone(),
        microflow: flow(src, &eth_dst, src_ip, dst_ip, protocol, port),
        expect_output: dst.lsp.clone(),
        lb_dst: None,
    })
}

/// A packet from pod `from` to a Service VIP, the load balancer choosing `backend` (a pod's
/// address and port), which must receive it.
pub fn pod_to_vip(
    d: &Desired,
    from: &ObjectKey,
    vip: SocketAddr,
    backend: SocketAddr,
    backend_pod: &ObjectKey,
    protocol: Protocol,
) -> Result<TraceProbe, String> {
    let (src, dst) = (port_of(d, from)?, port_of(d, backend_pod)?);
    let src_ip = src
        .ips
        .iter()
        .copied()
        .find(|i| i.is_ipv4() == vip.is_ipv4())
        .ok_or_else(|| format!("pod {from} has no address of the VIP's family"))?;
    let lb = match backend {
        SocketAddr::V4(b) => format!("{}:{}", b.ip(), b.port()),
        SocketAddr::V6(b) => format!("[{}]:{}", b.ip(), b.port()),
    };
    Ok(TraceProbe {
        datapath: src.switch.clone(),
        microflow: flow(src, &gateway_mac(d, src)?, src_ip, vip.ip(), protocol, vip.port()),
        expect_output: dst.lsp.clone(),
        lb_dst: Some(lb),
    })
}

/// The port of pod `pod`'s secondary interface `iface`.
fn attachment_of<'a>(d: &'a Desired, pod: &ObjectKey, iface: &str) -> Result<&'a PodPort, String> {
    d.attachments.get(&(pod.clone(), iface.to_string())).ok_or_else(|| format!("pod {pod} has no interface {iface}"))
}

/// The address of `src` (pod `from`'s interface) a packet to `dst` leaves from.
fn source_address(src: &PodPort, from: (&ObjectKey, &str), dst: IpAddr) -> Result<IpAddr, String> {
    src.ips
        .iter()
        .copied()
        .find(|i| i.is_ipv4() == dst.is_ipv4())
        .ok_or_else(|| format!("{}/{} has no address of {dst}'s family", from.0, from.1))
}

/// A packet from pod `from`'s secondary interface to pod `to`'s on the same network (one
/// switch: straight to the destination's MAC).
pub fn on_network(
    d: &Desired,
    from: (&ObjectKey, &str),
    to: (&ObjectKey, &str),
    port: u16,
    protocol: Protocol,
) -> Result<TraceProbe, String> {
    let (src, dst) = (attachment_of(d, from.0, from.1)?, attachment_of(d, to.0, to.1)?);
    if src.switch != dst.switch {
        return Err(format!("{}/{} and {}/{} are on different networks", from.0, from.1, to.0, to.1));
    }
    let dst_ip = *dst.ips.first().ok_or_else(|| format!("{}/{} has no address", to.0, to.1))?;
    let src_ip = source_address(src, from, dst_ip)?;
    Ok(TraceProbe {
        datapath: src.switch.clone(),
        microflow: flow(src, &dst.mac, src_ip, dst_ip, protocol, port),
        expect_output: dst.lsp.clone(),
        lb_dst: None,
    })
}

/// A packet from pod `from`'s interface on a provider network to a host beyond its localnet
/// port (`dst_ip`, `dst_mac`: not OVN's, so the switch floods it to the localnet port).
pub fn to_provider(
    d: &Desired,
    from: (&ObjectKey, &str),
    dst_ip: IpAddr,
    dst_mac: &str,
    port: u16,
    protocol: Protocol,
) -> Result<TraceProbe, String> {
    let src = attachment_of(d, from.0, from.1)?;
    let src_ip = source_address(src, from, dst_ip)?;
    Ok(TraceProbe {
        datapath: src.switch.clone(),
        microflow: flow(src, dst_mac, src_ip, dst_ip, protocol, port),
        expect_output: format!("{}_localnet", src.switch),
        lb_dst: None,
    })
}
