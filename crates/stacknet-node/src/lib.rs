//! The node path.
//!
//! - [`netns`]: doing things inside a pod's network namespace from a scratch thread;
//! - [`ethtool`]: TX checksum offload off through ethtool's netlink family;
//! - [`plumb`]: the pod interface (veth, MAC, addresses, MTU, routes) through netlink;
//! - [`ovs`]: binding the host end to OVN on br-int and waiting for ovn-controller;
//! - [`agent`]: the node agent serving CNI requests over a unix socket (it keeps the OVSDB
//!   connections and replicas warm, so a pod start costs netlink calls and one transaction);
//! - [`protocol`]: what the plugin and the agent say to each other;
//! - [`netdata`]: Nova's `network_data.json`, and which VM NIC carries a Neutron port;
//! - [`configdrive`]: reading it from the config drive (ISO9660, unmounted) or the metadata service;
//! - [`openstack`]: OpenStack mode on the node (the pod's Neutron ports from its annotation,
//!   children of the VM's NICs, SR-IOV devices).
#![forbid(unsafe_code)]

pub mod agent;
pub mod configdrive;
pub mod ethtool;
pub mod gateway;
pub mod mgmt;
pub mod netdata;
pub mod netns;
pub mod openstack;
pub mod ovs;
pub mod plumb;
pub mod protocol;
