//! The stacknet CNI plugin, CNI 1.1 (ADD, DEL, CHECK, STATUS, GC, VERSION). It is a thin
//! client: it turns the runtime's environment and network configuration into one request to
//! the node agent (which keeps the OVSDB connections warm) and the agent's answer into the
//! CNI result or error JSON on stdout. Logs, if any, go to stderr, never stdout.
//!
//! Network configuration keys (besides the standard ones):
//! - `agentSocket`: the agent's unix socket (default `/run/stacknet/agent.sock`);
//! - `mtu`: the pod interface's MTU (default: the agent's);
//! - `timeoutSeconds`: how long to wait for the agent (default 60);
//! - `attachNetworks`: whether the primary interface's ADD also attaches the pod's secondary
//!   networks (its `k8s.v1.cni.cncf.io/networks` annotation) and its DEL removes them
//!   (default true; with Multus set it to false and let Multus delegate each one).
//!
//! A NetworkAttachmentDefinition's config (what Multus delegates with) has a `topology` (or a
//! `neutronNetwork`): that ADD makes the one secondary interface CNI_IFNAME names.

use std::path::PathBuf;
use std::time::Duration;

use rscni_plugin::cni::{Cni, Plugin};
use rscni_plugin::error::Error;
use rscni_plugin::types::{Args, CNIResult, Interface, IpConfig, Route};
use stacknet_node::protocol::{self, AddResult, CniError, Command, Request, Response};

struct Stacknet;

fn custom_str(args: &Args, key: &str) -> Option<String> {
    args.config().custom.get(key).and_then(|v| v.as_str()).map(str::to_string)
}

fn to_error(e: CniError) -> Error {
    match e.code {
        3 => Error::NotExist(e.details),
        4 => Error::InvalidEnvValue(format!("{}: {}", e.msg, e.details)),
        5 => Error::IOFailure(format!("{}: {}", e.msg, e.details)),
        6 => Error::FailedToDecode(format!("{}: {}", e.msg, e.details)),
        7 => Error::InvalidNetworkConfig(format!("{}: {}", e.msg, e.details)),
        11 => Error::TryAgainLater(format!("{}: {}", e.msg, e.details)),
        50 => Error::PluginNotAvailable(format!("{}: {}", e.msg, e.details)),
        code => Error::Custom(code, e.msg, e.details),
    }
}

/// `K8S_POD_NAMESPACE=x;K8S_POD_NAME=y;...` from CNI_ARGS.
fn cni_arg(args: &Args, key: &str) -> Option<String> {
    args.args()?.split(';').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v.to_string()))
}

/// (`pub(crate)`, as `to_result` and `chain`: the fuzz target `fuzz/fuzz_targets/cni_config.rs`
/// includes this file and calls them.)
pub(crate) fn request(command: Command, args: &Args) -> Result<Request, Error> {
    let mtu = match args.config().custom.get("mtu") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|m| u32::try_from(m).ok())
                .filter(|m| (576..=65535).contains(m))
                .ok_or_else(|| Error::InvalidNetworkConfig(format!("mtu: {v} is not an MTU (576-65535)")))?,
        ),
    };
    let custom = &args.config().custom;
    let secondary = custom.contains_key("topology") || custom.contains_key("neutronNetwork");
    let network = secondary.then(|| args.config().name.clone());
    let attach_networks = match custom.get("attachNetworks") {
        None => None,
        Some(v) => Some(
            v.as_bool()
                .ok_or_else(|| Error::InvalidNetworkConfig(format!("attachNetworks: {v} is not true or false")))?,
        ),
    };
    // Multus puts the device plugin's device in the delegate's config (`deviceID`), some
    // runtimes in its runtime configuration.
    let device_id = custom
        .get("deviceID")
        .or_else(|| custom.get("runtimeConfig").and_then(|r| r.get("deviceID")))
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| Error::InvalidNetworkConfig(format!("deviceID: {v} is not a string")))
        })
        .transpose()?;
    Ok(Request {
        network,
        attach_networks,
        device_id,
        command: Some(command),
        container_id: args.container_id().map(|c| c.to_string()),
        netns: args.netns().map(|p| p.display().to_string()),
        ifname: args.ifname().map(|i| i.to_string()),
        pod_namespace: cni_arg(args, "K8S_POD_NAMESPACE"),
        pod_name: cni_arg(args, "K8S_POD_NAME"),
        pod_uid: cni_arg(args, "K8S_POD_UID"),
        mtu,
        valid_attachments: args
            .config()
            .valid_attachments
            .as_ref()
            .map(|v| v.iter().map(|a| (a.container_id.clone(), a.ifname.clone())).collect()),
    })
}

fn call(command: Command, args: &Args) -> Result<Response, Error> {
    let socket =
        custom_str(args, "agentSocket").map(PathBuf::from).unwrap_or_else(stacknet_node::agent::default_socket);
    let timeout = args.config().custom.get("timeoutSeconds").and_then(|v| v.as_u64()).unwrap_or(60);
    let req = request(command, args)?;
    match protocol::call(&socket, &req, Duration::from_secs(timeout)) {
        Ok(Response::Error(e)) | Err(e) => Err(to_error(e)),
        Ok(r) => Ok(r),
    }
}

pub(crate) fn to_result(r: AddResult) -> Result<CNIResult, Error> {
    let bad = |what: &str, v: &str| Error::FailedToDecode(format!("agent answered {what} {v:?}"));
    Ok(CNIResult {
        interfaces: r
            .interfaces
            .into_iter()
            .map(|i| Interface {
                name: i.name,
                mac: i.mac,
                mtu: None,
                sandbox: i.sandbox,
                socket_path: None,
                pci_id: None,
            })
            .collect(),
        ips: r
            .ips
            .into_iter()
            .map(|ip| {
                Ok(IpConfig {
                    interface: Some(ip.interface),
                    address: ip.address.parse().map_err(|_| bad("address", &ip.address))?,
                    gateway: ip.gateway.as_deref().map(|g| g.parse().map_err(|_| bad("gateway", g))).transpose()?,
                })
            })
            .collect::<Result<_, Error>>()?,
        routes: r
            .routes
            .into_iter()
            .map(|rt| {
                Ok(Route {
                    dst: rt.dst.parse::<ipnet::IpNet>().map_err(|_| bad("route", &rt.dst))?,
                    gw: Some(rt.gw.parse().map_err(|_| bad("gateway", &rt.gw))?),
                    mtu: None,
                    advmss: None,
                    priority: None,
                    table: None,
                    scope: None,
                })
            })
            .collect::<Result<_, Error>>()?,
        dns: None,
    })
}

/// In a chain, the result so far comes first: our interfaces are appended after the previous
/// plugins' (our addresses' interface indexes shift with them), and so are our addresses and
/// routes; what earlier plugins reported (DNS too) is kept as it was.
pub(crate) fn chain(prev: Option<CNIResult>, ours: CNIResult) -> CNIResult {
    let Some(mut out) = prev else { return ours };
    let offset = u32::try_from(out.interfaces.len()).unwrap_or(u32::MAX);
    out.interfaces.extend(ours.interfaces);
    out.ips.extend(ours.ips.into_iter().map(|mut ip| {
        ip.interface = ip.interface.map(|i| i.saturating_add(offset));
        ip
    }));
    out.routes.extend(ours.routes);
    out.dns = out.dns.or(ours.dns);
    out
}

impl Cni for Stacknet {
    fn add(&self, args: Args) -> Result<CNIResult, Error> {
        let prev = args.config().prev_result.clone();
        match call(Command::Add, &args)? {
            Response::Added(r) => Ok(chain(prev, to_result(r)?)),
            other => Err(Error::FailedToDecode(format!("unexpected answer to ADD: {other:?}"))),
        }
    }

    fn del(&self, args: Args) -> Result<(), Error> {
        call(Command::Del, &args).map(drop)
    }

    fn check(&self, args: Args) -> Result<(), Error> {
        call(Command::Check, &args).map(drop)
    }

    fn status(&self, args: Args) -> Result<(), Error> {
        match call(Command::Status, &args) {
            // An agent that cannot be reached is a plugin that cannot serve ADDs.
            Err(Error::TryAgainLater(d)) => Err(Error::PluginNotAvailable(d)),
            r => r.map(drop),
        }
    }

    fn gc(&self, args: Args) -> Result<(), Error> {
        call(Command::Gc, &args).map(drop)
    }
}

fn main() {
    let plugin = Plugin::default().msg(concat!(
        "stacknet-cni ",
        env!("CARGO_PKG_VERSION"),
        ": pods on the OpenStack / OVN network"
    ));
    if plugin.run(&Stacknet).is_err() {
        // The error JSON is on stdout already.
        std::process::exit(1);
    }
}
