//! Secondary networks (multi-net-spec v1.3): which NetworkAttachmentDefinitions a pod selects
//! ([`selection`]), what stacknet's NADs and MultiNetworkPolicies say ([`nad`]), and the pure
//! decision of every pod's secondary interfaces — addresses, MACs, default routes — and of the
//! policy on each network ([`plan`]).

pub mod nad;
pub mod plan;
pub mod ports;
pub mod reach;
pub mod selection;

pub use nad::{
    MULTI_POLICY_API_VERSION, MultiNetworkPolicy, NAD_API_VERSION, NETWORK_STATUS_ANNOTATION, NetConfig, NetTopology,
    NetworkAttachmentDefinition, PLUGIN, POLICY_FOR_ANNOTATION, SRIOV_DEVICES_ANNOTATION, VnicType,
};
pub use plan::{Allocator, Attachment, Foreign, Plan, network_index, network_status};
pub use ports::{AttachedInterface, PodPorts};
pub use selection::{NETWORKS_ANNOTATION, Selection, parse};
