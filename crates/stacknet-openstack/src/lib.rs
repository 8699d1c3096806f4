//! The OpenStack backend. Kubernetes on OpenStack with pods as first-class Neutron ports on the
//! VMs' own SDN: a namespace's pods on a Neutron network, each pod a port; each NetworkPolicy
//! a security group whose rules name their peers as remote groups (never one rule per pod
//! address), so a pod starting or stopping changes group membership, not rules; each Node a
//! security group admitting its own addresses to and from the pods on it (kubelet's probes
//! pass whatever the policies say); Services as Octavia load balancers with the `ovn`
//! provider. Neutron's ML2/OVN driver turns all of it into the same OVN port groups, address
//! sets and load balancers the OVN backend writes.
//!
//! [`secgroups`] is pure: the engine's compiled model in, the security groups and each pod's
//! memberships out.
#![forbid(unsafe_code)]

pub mod backend;
pub mod cloud;
pub mod keystone;
pub mod neutron;
pub mod nova;
pub mod octavia;
pub mod secgroups;

/// Log directives every program using this crate adds to its filter, whatever the user asks
/// for: below `warn`, the SDK and HTTP stack log request bodies and authentication state, and
/// no credential may ever reach a log line.
pub const QUIET_LOGS: &[&str] = &[
    "openstack_sdk=warn",
    "openstack_sdk_core=warn",
    "openstack_sdk_auth_core=warn",
    "openstack_sdk_auth_password=warn",
    "openstack_sdk_auth_applicationcredential=warn",
    "openstack_sdk_auth_token=warn",
    "reqwest=warn",
    "hyper=warn",
    "hyper_util=warn",
    "h2=warn",
    "rustls=warn",
];

pub use backend::{
    AttachedPort, HeldAttachment, NeutronBackend, NeutronConfig, PodPort, PoolNode, PoolReport, Report, SriovDevice,
    Topology, accepts, sriov_devices,
};
pub use cloud::{Call, Cloud, CloudSource, Error};
pub use stacknet_engine::{ObjectRef, Problem, Reason};
