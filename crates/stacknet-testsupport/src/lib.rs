//! What stacknet's integration tests share, so that each helper is written once: waiting on a
//! condition with a deadline ([`wait`]), the controller's HTTP endpoints ([`http`]), the CNI
//! plugin run as a container runtime runs it ([`cni`]), sockets inside network namespaces
//! ([`netns`]), replaying conformance cases step by step ([`conformance`]), the OpenStack
//! tier's cloud ([`openstack`]), a fake Kubernetes API server ([`kubeapi`]) and a private CA
//! ([`pki`]). Used only as a
//! dev-dependency; the parts that need other stacknet crates, and the API server, are behind
//! features of the same names.

pub mod cni;
pub mod http;
pub mod wait;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "kubeapi")]
pub mod kubeapi;
#[cfg(feature = "netns")]
pub mod netns;
#[cfg(feature = "openstack")]
pub mod openstack;
#[cfg(feature = "pki")]
pub mod pki;

pub use wait::{until, until_blocking, until_some};
