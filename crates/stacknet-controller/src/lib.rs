//! The controller: stacknet's main job. It keeps the network equal to what the cluster says.
//!
//! - [`manifests`]: the cluster from a folder of manifests, watched (the embedded default);
//! - [`kube_source`]: the cluster from the Kubernetes API (watchers with bookmarks, relists);
//! - [`controller`]: the reconcile loop, one for every backend: changes into the cluster index,
//!   coalesced reconciles, retries, leadership, readiness;
//! - [`ovn`]: the OVN backend (IPAM, desired rows, one minimal transaction, read-back of a
//!   previous run's allocation);
//! - [`openstack`]: the OpenStack backend (Neutron, Octavia, port pools);
//! - [`leader`]: leader election with a coordination.k8s.io Lease (one replica writes);
//! - [`config`]: flags, environment and a TOML file; [`error`]: what stops it from starting;
//! - [`events`], [`metrics`], [`http`]: what users see: events on the objects concerned,
//!   Prometheus metrics, health and readiness.
#![forbid(unsafe_code)]

pub mod config;
pub mod controller;
pub mod error;
pub mod events;
pub mod http;
pub mod kube_source;
pub mod leader;
pub mod manifests;
pub mod metrics;
pub mod openstack;
pub mod ovn;

pub use config::{ControllerArgs, ControllerConfig, GatewaySettings, OpenStackOptions, Pace};
pub use controller::{Backend, Change, Controller, Observed, WriteBack};
pub use error::Error;
pub use openstack::OpenStackNetwork;
pub use ovn::OvnNetwork;

impl Controller<OvnNetwork> {
    /// A controller with the OVN backend (the configured Northbound database).
    pub fn ovn(config: &ControllerConfig, sources: &[impl AsRef<str>]) -> Result<Self, Error> {
        Ok(Controller::new(config, OvnNetwork::new(config)?, sources))
    }
}

impl Controller<OpenStackNetwork> {
    /// A controller with the OpenStack backend (authenticated to the configured cloud).
    pub async fn openstack(
        config: &ControllerConfig,
        settings: openstack::OpenStackSettings,
        sources: &[impl AsRef<str>],
    ) -> Result<Self, Error> {
        Ok(Controller::new(config, OpenStackNetwork::connect(settings).await?, sources))
    }
}
