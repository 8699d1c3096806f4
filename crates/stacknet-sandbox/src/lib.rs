//! Real OVN in a private directory, for tests, benchmarks and `stacknet reach --dataplane
//! ovn-trace`: ovsdb-server with the Northbound (and Southbound) schema on unix sockets, and
//! ovn-northd between them. Every daemon is a child process of ours, started with explicit
//! paths (never the system's defaults), awaited with a deadline, and stopped by its PID when
//! the sandbox is dropped.
#![forbid(unsafe_code)]

mod chassis;
mod cluster;
pub mod openstack;
mod ovn;
mod require;

pub use chassis::{Chassis, Netns, Segment};
pub use cluster::{DbCluster, MemberStatus, members, tier_members};
pub use openstack::{OpenStack, OpenStackOptions};
pub use ovn::{DbServer, Ovn, ServerTls, TraceVerdict, Workdir};
pub use require::{Need, OVN_PACKAGES, require};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{program} is not installed ({hint})")]
    Missing { program: String, hint: String },
    #[error("{what}: {message}")]
    Io { what: String, message: String },
    #[error("{program} {args}: exit {status}: {stderr}")]
    Command { program: String, args: String, status: String, stderr: String },
    #[error("{what} was not ready after {seconds}s (log: {log})")]
    NotReady { what: String, seconds: u64, log: PathBuf },
}

pub type Result<T> = std::result::Result<T, Error>;

/// A loopback TCP port free right now (for daemons that must listen on TCP: raft, TLS).
pub fn free_tcp_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::Io { what: "free port".into(), message: e.to_string() })?;
    l.local_addr().map(|a| a.port()).map_err(|e| Error::Io { what: "free port".into(), message: e.to_string() })
}
