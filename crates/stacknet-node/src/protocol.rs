//! What the CNI plugin and the node agent say to each other over the agent's unix socket: one
//! JSON request, one JSON response, per connection.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub command: Option<Command>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    pub mtu: Option<u32>,
    /// GC: the attachments the runtime still knows, as (container id, ifname).
    pub valid_attachments: Option<Vec<(String, String)>>,
    /// Multus delegating one secondary network (the NAD's config has a `topology` or a
    /// `neutronNetwork`): its CNI network name. The ADD makes that one interface.
    pub network: Option<String>,
    /// The primary interface's ADD also attaches the pod's secondary networks, and its DEL
    /// removes them (the config's `attachNetworks`, default true).
    pub attach_networks: Option<bool>,
    /// The device the kubelet assigned for this interface (the CNI `deviceID`, which Multus
    /// passes from the device plugin: an SR-IOV virtual function's PCI address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Iface {
    pub name: String,
    pub mac: String,
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// `address/prefix`.
    pub address: String,
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    pub interface: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteConfig {
    pub dst: String,
    pub gw: String,
}

/// Where an ADD spent its time, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    pub lookup_us: u64,
    pub plumb_us: u64,
    pub bind_us: u64,
    pub install_us: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddResult {
    pub interfaces: Vec<Iface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<RouteConfig>,
    pub timings: Timings,
}

/// A CNI error: `code` as the CNI specification numbers them (100 and up: ours).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: &str, details: impl Into<String>) -> CniError {
        CniError { code, msg: msg.into(), details: details.into() }
    }
}

/// CNI error codes used here.
pub mod codes {
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// The interface name asked for is already in use in the pod's namespace.
    pub const IFNAME_TAKEN: u32 = 101;
    /// Netlink refused a step of the plumbing.
    pub const NETLINK: u32 = 102;
    /// The Open_vSwitch database refused the binding.
    pub const OVS: u32 = 103;
    /// CHECK found the attachment not as it should be.
    pub const CHECK_FAILED: u32 = 110;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Added(AddResult),
    Done,
    Error(CniError),
}

/// Sends one request to the agent at `socket` and waits (at most `timeout`) for its answer.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, CniError> {
    let unavailable = |e: std::io::Error| {
        CniError::new(codes::TRY_AGAIN_LATER, "stacknet agent not reachable", format!("{}: {e}", socket.display()))
    };
    let mut s = UnixStream::connect(socket).map_err(unavailable)?;
    s.set_read_timeout(Some(timeout)).map_err(unavailable)?;
    s.set_write_timeout(Some(timeout)).map_err(unavailable)?;
    let body =
        serde_json::to_vec(request).map_err(|e| CniError::new(codes::DECODE, "encoding the request", e.to_string()))?;
    s.write_all(&body).map_err(unavailable)?;
    s.shutdown(std::net::Shutdown::Write).map_err(unavailable)?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).map_err(|e| {
        CniError::new(codes::TRY_AGAIN_LATER, "no answer from the stacknet agent", format!("{}: {e}", socket.display()))
    })?;
    serde_json::from_slice(&answer)
        .map_err(|e| CniError::new(codes::DECODE, "bad answer from the stacknet agent", e.to_string()))
}
