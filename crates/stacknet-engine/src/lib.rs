//! stacknet's pure core.
//!
//! Everything interesting is decided here, with no I/O: no tokio, no sockets, no netlink, no kube
//! client (check with `cargo tree -p stacknet-engine`). Callers read files or watch the API server
//! and hand this crate values; it hands back what the network must look like.
//!
//! - [`manifest`] turns Kubernetes YAML (multi-document, `kind: List`) into objects;
//! - [`objects`] holds the validated, normalized form of those objects;
//! - [`index`] is the cluster index, fed by `apply` / `delete`;
//! - [`semantics`] decides NetworkPolicy reachability directly from the index (the reference);
//! - [`model`] compiles policies into groups, peer sets and rules whose count grows with policies,
//!   not pods, keeps them current incrementally, and decides reachability over that model;
//! - [`reach`] runs probes over every pair of pods;
//! - [`paths`] decides probes between pods, nodes and outside hosts, directly or through a Service;
//! - [`ipam`] gives nodes their subnets and pods their addresses (direct OVN mode);
//! - [`multinet`] decides pods' secondary interfaces (NetworkAttachmentDefinitions, the Multus
//!   selection annotation, MultiNetworkPolicy);
//! - [`service`] turns Services and EndpointSlices into L4 load balancers (VIP:port → backends);
//! - [`problem`] is what could not be done, on which object and why (the Events' reasons).
#![forbid(unsafe_code)]

pub mod error;
pub mod index;
pub mod ipam;
pub mod labels;
pub mod manifest;
pub mod model;
pub mod multinet;
pub mod net;
pub mod objects;
pub mod paths;
pub mod problem;
pub mod reach;
pub mod semantics;
pub mod service;

pub use error::{Invalid, ManifestError};
pub use index::{ClusterIndex, PodId};
pub use labels::{Labels, Requirement, Selector};
pub use model::{Direction, PolicyEngine};
pub use net::Cidr;
pub use objects::{Kind, ObjectKey, Protocol};
pub use problem::{CloudKind, ObjectRef, Problem, Reason};
