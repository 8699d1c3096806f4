//! The controller: stacknet's main job. It keeps the network equal to what the cluster says.
//!
//! - [`manifests`]: the cluster from a folder of manifests, watched (the embedded default);
//! - [`kube_source`]: the cluster from the Kubernetes API (watchers with bookmarks, relists);
//! - [`controller`]: changes into the cluster index, coalesced reconciles (IPAM, engine,
//!   desired rows, one minimal transaction), read-back of a previous run's allocation;
//! - [`openstack`]: the same loop with the OpenStack backend (Neutron, Octavia, port pools);
//! - [`leader`]: leader election with a coordination.k8s.io Lease (one replica writes);
//! - [`config`]: flags, environment and a TOML file;
//! - [`events`], [`metrics`], [`http`]: what users see: events on the objects concerned,
//!   Prometheus metrics, health and readiness.
#![forbid(unsafe_code)]

pub mod config;
pub mod controller;
pub mod events;
pub mod http;
pub mod kube_source;
pub mod leader;
pub mod manifests;
pub mod metrics;
pub mod openstack;

pub use config::{ControllerArgs, ControllerConfig, OpenStackOptions};
pub use controller::{Change, Controller, Observed};
