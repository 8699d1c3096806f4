//! The OVN backend: the engine's desired state as OVN Northbound rows.
//!
//! - [`topology`]: nodes, their subnets and router ports;
//! - [`desired`]: every row the cluster needs, computed purely from the engine (per-node
//!   switches on a cluster router, pod ports, a port group per policy with its ACLs, default-deny
//!   port groups per namespace, address sets for peer sets and named ports, load balancers);
//! - [`reconcile`]: the minimal transaction from the replica to the desired rows, touching
//!   only rows tagged as ours;
//! - [`backend`]: the loop around a live client;
//! - [`trace`]: microflows for ovn-trace that decide a probe on the logical pipeline.
#![forbid(unsafe_code)]

pub mod backend;
pub mod desired;
pub mod lookup;
pub mod names;
pub mod reconcile;
pub mod secondary;
pub mod topology;
pub mod trace;

pub use backend::{OvnBackend, Report};
pub use desired::{Desired, build};
pub use topology::{NodeNet, Topology};
