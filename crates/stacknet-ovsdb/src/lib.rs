//! An OVSDB client: RFC 7047 and the ovsdb-server(7) extensions.
//!
//! - [`datum`], [`schema`], [`transact`]: the data model, schemas, transactions (pure);
//! - [`codec`], [`rpc`]: framing of concatenated JSON and JSON-RPC messages (pure);
//! - [`replica`]: monitored tables in memory, indexed by name and external_ids;
//! - [`client`]: the connection on tokio: `unix:`, `tcp:`, `ssl:` remotes with failover,
//!   monitor_cond_since / update3 (falling back to monitor_cond / update2 and monitor /
//!   update), echo both ways, reconnect with backoff and resync, leader-only for clusters;
//! - [`nb`]: the OVN Northbound tables and columns stacknet uses.
#![forbid(unsafe_code)]

pub mod client;
pub mod codec;
pub mod datum;
pub mod error;
pub mod nb;
pub mod replica;
pub mod rpc;
pub mod schema;
pub mod transact;

pub use client::{Client, ClientConfig, DEFAULT_ECHO_INTERVAL, Remote, TlsConfig, check_transport};
pub use datum::{Atom, AtomMap, AtomSet, Datum, Uuid};
pub use error::{Error, ErrorKind, OperationError};
pub use replica::{Replica, RowData, TableReplica};
pub use schema::{DatabaseSchema, Version};
pub use transact::{Condition, Function, Mutation, Mutator, ReplyShape, Row, Transaction, TxnReply, Until};
