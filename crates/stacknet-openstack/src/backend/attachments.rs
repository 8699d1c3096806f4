//! Pods' secondary interfaces on Neutron networks. A NetworkAttachmentDefinition whose config
//! names a `neutronNetwork` (by id or name) gives each pod selecting it a port of ours on that
//! network: in the Keystone project of the pod's primary port, owned and tagged like it (the
//! description marker `attach:<ns>/<pod>/<interface>@<nad ns>/<nad name>`, the pods' device
//! owner and device id, the cluster's tag), with the addresses and MAC the selection asks for
//! (else Neutron's), port security and security groups as the NAD says (groups by id or by
//! name in that project; a NAD that says nothing gets the network's and the project's
//! defaults), bound to the pod's node on a bare-metal node or a subport of its trunk, on the
//! lowest free VLAN, on a nested one. An SR-IOV NAD (`vnicType: direct`) makes a `direct`
//! port; it is bound (`binding:host_id` the node, `binding:profile` with Nova's keys
//! `pci_slot`, `pci_vendor_info` and `physical_network`) once the node agent has written the
//! virtual function the kubelet gave the pod (`stacknet.io/sriov-devices`).
//!
//! The engine's multinet plan is made all or nothing per pod: a network or group Neutron
//! cannot name, or a call Neutron refuses, leaves the pod none of its secondary ports, and a
//! problem on the pod says which interface, which NAD and why. A port that cannot become what
//! its NAD now says (another network, MAC or vnic type) is replaced; the others change only
//! where they differ. A pod's secondary ports wait for its primary port (a pod without one
//! gets none, and keeps what it has). They are not pooled: each is made by one create and one
//! tag call. Only ports of ours are ever touched.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde_json::{Map, Value, json};
use stacknet_engine::multinet::{NetTopology, Plan, SRIOV_DEVICES_ANNOTATION, VnicType};
use stacknet_engine::objects::{ObjectKey, Pod};
use stacknet_engine::{Cidr, CloudKind, ClusterIndex, ObjectRef, Problem, Reason};

use crate::cloud::Error;
use crate::neutron::{self, Port, Trunk};

use super::config::NeutronConfig;
use super::exec::{Failures, concurrently};
use super::projects::project_of;
use super::state::{NetworkInfo, PoolKey, State, trunk_pool};
use super::{NeutronBackend, PodPort, Report};

/// The secondary networks OpenStack mode makes: Neutron networks (the multinet allocator's
/// `accept`).
pub fn accepts(topology: &NetTopology) -> Result<(), String> {
    match topology {
        NetTopology::Neutron { .. } => Ok(()),
        other => Err(format!(
            "spec.config.topology: a {} network is made by OVN mode (--backend ovn); in OpenStack mode a NAD names a Neutron network in spec.config.neutronNetwork",
            other.name()
        )),
    }
}

/// The SR-IOV virtual function the kubelet handed one of a pod's interfaces, as the node agent
/// writes it on the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SriovDevice {
    /// `domain:bus:device.function`, lower case (`0000:03:00.2`).
    pub pci_slot: String,
    /// `vendor:product`, lower case (`8086:154c`).
    pub vendor_info: String,
    pub physical_network: String,
}

impl SriovDevice {
    /// The port's `binding:profile`: the keys Nova writes for an SR-IOV port, which ML2 reads.
    pub fn profile(&self) -> Value {
        json!({
            "pci_slot": self.pci_slot,
            "pci_vendor_info": self.vendor_info,
            "physical_network": self.physical_network,
        })
    }
}

fn hex(s: &str, digits: usize) -> bool {
    s.len() == digits && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `0000:03:00.2`: domain, bus, device (below 0x20) and function (0–7).
fn is_pci_slot(s: &str) -> bool {
    let Some((address, function)) = s.rsplit_once('.') else { return false };
    let parts: Vec<&str> = address.split(':').collect();
    parts.len() == 3
        && hex(parts[0], 4)
        && hex(parts[1], 2)
        && hex(parts[2], 2)
        && u8::from_str_radix(parts[2], 16).is_ok_and(|d| d < 0x20)
        && matches!(function.as_bytes(), [b'0'..=b'7'])
}

/// Reads the `stacknet.io/sriov-devices` annotation: each interface's virtual function. An
/// error names the field (`metadata.annotations[stacknet.io/sriov-devices].net1.pciSlot: ...`).
pub fn sriov_devices(text: &str) -> Result<BTreeMap<String, SriovDevice>, String> {
    let field = |path: &str| format!("metadata.annotations[{SRIOV_DEVICES_ANNOTATION}]{path}");
    let v: Value = serde_json::from_str(text).map_err(|e| format!("{}: not valid JSON: {e}", field("")))?;
    let Value::Object(top) = v else {
        return Err(format!("{}: a JSON object of interfaces and their devices", field("")));
    };
    let mut out = BTreeMap::new();
    for (interface, device) in top {
        let at = |key: &str| field(&format!(".{interface}{}{key}", if key.is_empty() { "" } else { "." }));
        let Value::Object(m) = device else {
            return Err(format!("{}: an object with pciSlot, vendorInfo and physicalNetwork", at("")));
        };
        const KEYS: [&str; 3] = ["pciSlot", "vendorInfo", "physicalNetwork"];
        if let Some(k) = m.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(format!("{}: not a key of a device (pciSlot, vendorInfo, physicalNetwork)", at(k)));
        }
        let get = |key: &str| -> Result<String, String> {
            match m.get(key) {
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
                None => Err(format!("{}: required", at(key))),
                Some(other) => Err(format!("{}: {other} is not a non-empty string", at(key))),
            }
        };
        let slot = get("pciSlot")?;
        if !is_pci_slot(&slot.to_ascii_lowercase()) {
            return Err(format!(
                "{}: {slot:?} is not a PCI address (domain:bus:device.function, as 0000:03:00.2)",
                at("pciSlot")
            ));
        }
        let vendor = get("vendorInfo")?;
        if !vendor.split_once(':').is_some_and(|(v, p)| hex(v, 4) && hex(p, 4)) {
            return Err(format!("{}: {vendor:?} is not vendor:product (as 8086:154c)", at("vendorInfo")));
        }
        let physical_network = get("physicalNetwork")?;
        out.insert(
            interface,
            SriovDevice {
                pci_slot: slot.to_ascii_lowercase(),
                vendor_info: vendor.to_ascii_lowercase(),
                physical_network,
            },
        );
    }
    Ok(out)
}

/// A pod's secondary interface as made: its Neutron port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedPort {
    pub interface: String,
    /// The NetworkAttachmentDefinition.
    pub network: ObjectKey,
    /// The port (its name is `<ns>/<pod>/<interface>`; on a nested node its VLAN and parent).
    pub port: PodPort,
    /// Each address with its subnet's prefix length.
    pub addresses: Vec<(IpAddr, u8)>,
    /// `normal` or `direct`.
    pub vnic_type: String,
    /// The network's `provider:physical_network` and MTU, as Neutron says.
    pub physical_network: Option<String>,
    pub mtu: Option<u32>,
}

/// A secondary interface's port Neutron holds, as a restarted controller gives it back to the
/// multinet allocator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldAttachment {
    pub pod: ObjectKey,
    pub interface: String,
    /// The NetworkAttachmentDefinition.
    pub network: ObjectKey,
    pub ips: Vec<IpAddr>,
}

fn vnic_name(v: VnicType) -> &'static str {
    match v {
        VnicType::Normal => "normal",
        VnicType::Direct => "direct",
    }
}

/// A secondary interface's port as it should be.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Wanted {
    pub pod: ObjectKey,
    pub interface: String,
    /// The NetworkAttachmentDefinition.
    pub nad: ObjectKey,
    pub marker: String,
    /// The Neutron network's id.
    pub network: String,
    /// The primary port's project (`None`: the session's).
    pub project: Option<String>,
    pub uid: String,
    /// Addresses the selection asks for (none: Neutron chooses).
    pub ips: Vec<IpAddr>,
    /// The MAC the selection asks for (none: Neutron chooses).
    pub mac: Option<String>,
    /// As the NAD says (`None`: the network's default).
    pub port_security: Option<bool>,
    /// The NAD's groups' ids (`None`: it names none; the project's default group at creation).
    pub security_groups: Option<BTreeSet<String>>,
    pub vnic: VnicType,
    /// The node it is bound to (`None`: a subport, or an SR-IOV port whose device is not known:
    /// left as it is).
    pub host: Option<String>,
    /// An SR-IOV port's `binding:profile`, once its device is known (`None`: left as it is).
    pub profile: Option<Value>,
    /// The node's trunk (a nested node's).
    pub trunk: Option<String>,
}

impl Wanted {
    pub fn name(&self) -> String {
        format!("{}/{}", self.pod, self.interface)
    }

    /// The groups the port must be in exactly (`None`: whatever it has).
    fn groups(&self) -> Option<BTreeSet<String>> {
        if self.port_security == Some(false) { Some(BTreeSet::new()) } else { self.security_groups.clone() }
    }

    /// The body of the port's create.
    pub fn body(&self, c: &NeutronConfig) -> Value {
        let mut body = json!({
            "network_id": self.network,
            "name": self.name(),
            "description": self.marker,
            "device_owner": c.device_owner(),
            // Neutron takes only a port with no device as a subport.
            "device_id": if self.trunk.is_some() { "" } else { self.uid.as_str() },
            "binding:vnic_type": vnic_name(self.vnic),
        });
        if let Some(h) = &self.host {
            body["binding:host_id"] = json!(h);
        }
        if let Some(p) = &self.profile {
            body["binding:profile"] = p.clone();
        }
        if !self.ips.is_empty() {
            let ips: Vec<Value> = self.ips.iter().map(|ip| json!({"ip_address": ip.to_string()})).collect();
            body["fixed_ips"] = json!(ips);
        }
        if let Some(m) = &self.mac {
            body["mac_address"] = json!(m);
        }
        if let Some(ps) = self.port_security {
            body["port_security_enabled"] = json!(ps);
        }
        if let Some(g) = self.groups() {
            body["security_groups"] = json!(g);
        }
        if let Some(p) = &self.project {
            body["project_id"] = json!(p);
        }
        body
    }

    /// What port `p` must change to be this one (`None`: it cannot, being on another network,
    /// with another MAC or another vnic type: it is replaced). `to_trunk`: it is about to go
    /// on its node's trunk (its device stays empty until it is on).
    pub fn changes(&self, p: &Port, to_trunk: bool) -> Option<Map<String, Value>> {
        if p.network_id != self.network
            || self.mac.as_ref().is_some_and(|m| !m.eq_ignore_ascii_case(&p.mac_address))
            || p.vnic() != vnic_name(self.vnic)
        {
            return None;
        }
        let mut changes = Map::new();
        let have: BTreeSet<IpAddr> = p.fixed_ips.iter().filter_map(|f| f.ip_address.parse().ok()).collect();
        let want: BTreeSet<IpAddr> = self.ips.iter().copied().collect();
        if !want.is_empty() && have != want {
            let ips: Vec<Value> = self.ips.iter().map(|ip| json!({"ip_address": ip.to_string()})).collect();
            changes.insert("fixed_ips".into(), json!(ips));
        }
        if let Some(ps) = self.port_security
            && p.port_security_enabled != Some(ps)
        {
            changes.insert("port_security_enabled".into(), json!(ps));
        }
        if let Some(g) = self.groups()
            && p.security_groups.iter().cloned().collect::<BTreeSet<String>>() != g
        {
            changes.insert("security_groups".into(), json!(g));
        }
        if let Some(h) = &self.host
            && p.bound_host() != Some(h.as_str())
        {
            changes.insert("binding:host_id".into(), json!(h));
        }
        if let Some(profile) = &self.profile
            && p.binding_profile() != Some(profile)
        {
            changes.insert("binding:profile".into(), profile.clone());
        }
        let device_id = if to_trunk { "" } else { self.uid.as_str() };
        if p.device_id != device_id {
            changes.insert("device_id".into(), json!(device_id));
        }
        Some(changes)
    }
}

/// What Neutron must do for the pods' secondary interfaces.
#[derive(Debug, Default)]
pub(super) struct AttachPlan {
    pub creates: Vec<Wanted>,
    /// Ports that cannot become what they should (each with its pod): deleted before their
    /// successors are made.
    pub replaced: Vec<(ObjectKey, Port)>,
    /// (what the port should be, its id, the changes).
    pub updates: Vec<(Wanted, String, Value)>,
    /// Free ports of the node's pool taken: (what the port should be, its pool, its id, the
    /// one update that makes it so).
    pub taken: Vec<(Wanted, PoolKey, String, Value)>,
    /// Existing ports to put on their node's trunk: (trunk, port, pod).
    pub to_trunk: Vec<(String, String, ObjectKey)>,
    /// Ports of ours no pod wants.
    pub gone: Vec<Port>,
    /// Each pod's ports, for the pods whose ports can all be made.
    pub pods: BTreeMap<ObjectKey, Vec<Wanted>>,
    pub problems: Vec<Problem>,
}

/// What the NADs name, as Neutron resolved it for this reconcile.
#[derive(Debug, Clone, Default)]
pub(super) struct Resolved {
    /// By the NAD's `neutronNetwork`: the network, or why none can be used.
    pub networks: BTreeMap<String, Result<NetworkInfo, String>>,
    /// By (project, `None`: the session's; the NAD's group): the group's id, or why none.
    pub groups: BTreeMap<(Option<String>, String), Result<String, String>>,
}

/// The security group Neutron gives a port made without groups (each project has one).
const DEFAULT_GROUP: &str = "default";

/// A free port of the pool of `w`'s node and network for `w` (not a direct port, nor one
/// asking for a MAC: a pool port has its own), and the one update that makes it `w`; `taken`
/// counts what this plan took already, per pool.
fn from_pool(
    w: &Wanted,
    state: &State,
    resolved: &Resolved,
    trunk: Option<&Trunk>,
    taken: &mut BTreeMap<PoolKey, usize>,
) -> Option<(PoolKey, String, Value)> {
    if w.vnic != VnicType::Normal || w.mac.is_some() {
        return None;
    }
    let place = match trunk {
        Some(t) => trunk_pool(t),
        None => w.host.clone()?,
    };
    let groups = match w.groups() {
        Some(g) => g,
        None => match resolved.groups.get(&(w.project.clone(), DEFAULT_GROUP.into())) {
            Some(Ok(id)) => BTreeSet::from([id.clone()]),
            _ => return None,
        },
    };
    let key: PoolKey = (Some(place), w.network.clone(), w.project.clone());
    let n = taken.entry(key.clone()).or_default();
    let free = state.pool.get(&key)?;
    let port = &free[free.len().checked_sub(*n + 1)?];
    *n += 1;
    let mut changes = json!({
        "name": w.name(),
        "description": w.marker,
        "device_id": w.uid,
        "security_groups": groups,
    });
    if let Some(ps) = w.port_security {
        changes["port_security_enabled"] = json!(ps);
    }
    let have: BTreeSet<IpAddr> = port.fixed_ips.iter().filter_map(|f| f.ip_address.parse().ok()).collect();
    if !w.ips.is_empty() && have != w.ips.iter().copied().collect() {
        let ips: Vec<Value> = w.ips.iter().map(|ip| json!({"ip_address": ip.to_string()})).collect();
        changes["fixed_ips"] = json!(ips);
    }
    Some((key, port.id.clone(), changes))
}

/// What must be looked up: the networks and (project, group) names.
pub(super) type Needed = (BTreeSet<String>, BTreeSet<(Option<String>, String)>);

/// A pod of the plan, and the project its secondary ports are made in (its primary port's),
/// if it has its primary port.
fn pod_context<'a>(
    index: &'a ClusterIndex,
    key: &ObjectKey,
    state: &State,
    c: &NeutronConfig,
    own: Option<&str>,
) -> Option<(&'a Pod, Option<String>)> {
    let pod = index.pod_id(key).and_then(|id| index.pod(id))?;
    let primary = state.ports.get(&c.pod_marker(key))?;
    let project = Some(primary.project_id.as_str()).filter(|p| !p.is_empty()).and_then(|p| project_of(p, own));
    Some((pod, project))
}

/// The names the plan's pods need resolved.
pub(super) fn needed(
    index: &ClusterIndex,
    multinet: &Plan,
    state: &State,
    c: &NeutronConfig,
    own: Option<&str>,
) -> Needed {
    let (mut networks, mut groups) = Needed::default();
    for (key, list) in &multinet.pods {
        let Some((_, project)) = pod_context(index, key, state, c, own) else { continue };
        for a in list {
            let Some(config) = multinet.networks.get(&a.network) else { continue };
            if let NetTopology::Neutron { network, security_groups, vnic, port_security } = &config.topology {
                networks.insert(network.clone());
                groups.extend(security_groups.iter().map(|g| (project.clone(), g.clone())));
                // A port taken from a pool (made with no groups) gets the group Neutron would
                // have given it: the project's default.
                if c.pool_size > 0
                    && security_groups.is_empty()
                    && *vnic == VnicType::Normal
                    && *port_security != Some(false)
                {
                    groups.insert((project.clone(), DEFAULT_GROUP.into()));
                }
            }
        }
    }
    (networks, groups)
}

/// The ports the multinet plan's pods need, against what `state` holds.
pub(super) fn plan(
    index: &ClusterIndex,
    multinet: &Plan,
    resolved: &Resolved,
    state: &State,
    c: &NeutronConfig,
    own: Option<&str>,
) -> AttachPlan {
    let trunk_of_node: BTreeMap<&str, &Trunk> =
        index.nodes().filter_map(|n| Some((n.name.as_str(), state.trunks.get(n.openstack_server()?)?))).collect();
    let mut out = AttachPlan::default();
    let mut taken: BTreeMap<PoolKey, usize> = BTreeMap::new();
    // Ports of pods whose ports are neither made nor undone now.
    let mut kept: BTreeSet<String> = BTreeSet::new();
    for (key, list) in &multinet.pods {
        let Some((pod, project)) = pod_context(index, key, state, c, own) else {
            // No primary port (yet): nothing is made for it, and nothing of it goes.
            kept.extend(list.iter().map(|a| c.attachment_marker(key, &a.interface, &a.network)));
            continue;
        };
        let trunk = pod.node.as_deref().and_then(|n| trunk_of_node.get(n)).copied();
        // `None`: the annotation is unreadable, and the SR-IOV ports' binding stays as it is.
        let devices = match pod.sriov_devices_annotation.as_deref().filter(|t| !t.trim().is_empty()) {
            None => Some(BTreeMap::new()),
            Some(text) => match sriov_devices(text) {
                Ok(d) => Some(d),
                Err(e) => {
                    let message = format!("{e}; its SR-IOV ports stay bound as they are until it reads");
                    out.problems.push(Problem::new(ObjectRef::pod(key), Reason::AttachmentFailed, message));
                    None
                }
            },
        };
        let wanted = match pod_ports(pod, list, multinet, resolved, project, trunk, devices.as_ref(), c) {
            Ok(w) => w,
            Err(message) => {
                out.problems.push(Problem::new(
                    ObjectRef::pod(key),
                    Reason::AttachmentFailed,
                    format!("{message}; none of its secondary networks is attached"),
                ));
                continue;
            }
        };
        for w in &wanted {
            let Some(p) = state.attachments.get(&w.marker) else {
                match from_pool(w, state, resolved, trunk, &mut taken) {
                    Some((key, id, changes)) => out.taken.push((w.clone(), key, id, changes)),
                    None => out.creates.push(w.clone()),
                }
                continue;
            };
            let to_trunk = w.trunk.as_ref().filter(|_| state.trunk_holding(&p.id).is_none());
            match w.changes(p, to_trunk.is_some()) {
                None => {
                    out.replaced.push((key.clone(), p.clone()));
                    out.creates.push(w.clone());
                }
                Some(changes) => {
                    if !changes.is_empty() {
                        out.updates.push((w.clone(), p.id.clone(), Value::Object(changes)));
                    }
                    if let Some(t) = to_trunk {
                        out.to_trunk.push((t.clone(), p.id.clone(), key.clone()));
                    }
                }
            }
        }
        out.pods.insert(key.clone(), wanted);
    }
    let wanted: BTreeSet<&String> = out.pods.values().flatten().map(|w| &w.marker).chain(&kept).collect();
    out.gone = state.attachments.iter().filter(|(m, _)| !wanted.contains(m)).map(|(_, p)| p.clone()).collect();
    out
}

/// One pod's ports, or why it can have none.
#[allow(clippy::too_many_arguments)]
fn pod_ports(
    pod: &Pod,
    list: &[stacknet_engine::multinet::Attachment],
    multinet: &Plan,
    resolved: &Resolved,
    project: Option<String>,
    trunk: Option<&Trunk>,
    devices: Option<&BTreeMap<String, SriovDevice>>,
    c: &NeutronConfig,
) -> Result<Vec<Wanted>, String> {
    let mut out = Vec::with_capacity(list.len());
    for a in list {
        let what = format!("interface {}: NetworkAttachmentDefinition {}", a.interface, a.network);
        let topology = multinet.networks.get(&a.network).map(|n| &n.topology);
        let Some(NetTopology::Neutron { network, vnic, port_security, security_groups }) = topology else {
            return Err(format!("{what}: spec.config.topology: not a Neutron network"));
        };
        let info = match resolved.networks.get(network) {
            Some(Ok(info)) => info,
            Some(Err(e)) => return Err(format!("{what}: spec.config.neutronNetwork: {e}")),
            None => return Err(format!("{what}: spec.config.neutronNetwork: {network:?} was not looked up")),
        };
        let groups = if security_groups.is_empty() {
            None
        } else {
            let mut ids = BTreeSet::new();
            for g in security_groups {
                match resolved.groups.get(&(project.clone(), g.clone())) {
                    Some(Ok(id)) => ids.insert(id.clone()),
                    Some(Err(e)) => return Err(format!("{what}: spec.config.securityGroups: {e}")),
                    None => return Err(format!("{what}: spec.config.securityGroups: {g:?} was not looked up")),
                };
            }
            Some(ids)
        };
        let (host, profile) = match (vnic, trunk) {
            (VnicType::Direct, Some(t)) => {
                return Err(format!(
                    "{what}: spec.config.vnicType: a direct (SR-IOV) port cannot be a subport of trunk {} of nested node {}: SR-IOV networks are for bare-metal nodes",
                    t.id, a.node
                ));
            }
            (VnicType::Direct, None) => match devices.and_then(|d| d.get(&a.interface)) {
                Some(d) => (Some(a.node.clone()), Some(d.profile())),
                // No virtual function known yet (or an unreadable annotation): as it is.
                None => (None, None),
            },
            (VnicType::Normal, Some(_)) => (None, None),
            (VnicType::Normal, None) => (Some(a.node.clone()), None),
        };
        out.push(Wanted {
            pod: a.pod.clone(),
            interface: a.interface.clone(),
            nad: a.network.clone(),
            marker: c.attachment_marker(&a.pod, &a.interface, &a.network),
            network: info.id.clone(),
            project: project.clone(),
            uid: pod.uid.clone().unwrap_or_default(),
            ips: a.ips.iter().map(|(ip, _)| *ip).collect(),
            mac: Some(a.mac.clone()).filter(|m| !m.is_empty()),
            port_security: *port_security,
            security_groups: groups,
            vnic: *vnic,
            host,
            profile,
            trunk: trunk.map(|t| t.id.clone()),
        });
    }
    Ok(out)
}

/// The port as the pod's interface, with its addresses' prefix lengths (from the subnets of
/// the networks looked up; a host prefix when unknown).
fn attached(w: &Wanted, p: &Port, state: &State) -> AttachedPort {
    let network = state.lookups.networks.values().find(|n| n.id == p.network_id);
    let subnets = network.map(|n| &n.subnets);
    let addresses = p
        .fixed_ips
        .iter()
        .filter_map(|f| {
            let ip: IpAddr = f.ip_address.parse().ok()?;
            let host = if ip.is_ipv4() { 32 } else { 128 };
            Some((ip, subnets.and_then(|s| s.get(&f.subnet_id)).copied().unwrap_or(host)))
        })
        .collect();
    let mut port = super::ports::pod_port(p);
    if let Some(t) = state.trunk_holding(&p.id) {
        port.vlan = t.vlan_of(&p.id);
        port.parent_port = Some(t.port_id.clone());
    }
    AttachedPort {
        interface: w.interface.clone(),
        network: w.nad.clone(),
        port,
        addresses,
        vnic_type: p.vnic().to_string(),
        physical_network: network.and_then(|n| n.physical_network.clone()),
        mtu: network.and_then(|n| n.mtu),
    }
}

/// The problem of a pod one of whose ports Neutron refused.
fn refused(pod: &ObjectKey, interface: &str, nad: &ObjectKey, e: &Error) -> Problem {
    Problem::new(
        ObjectRef::pod(pod),
        Reason::AttachmentFailed,
        format!(
            "interface {interface}: NetworkAttachmentDefinition {nad}: Neutron refused its port: {e}; none of its secondary networks is attached"
        ),
    )
}

impl NeutronBackend {
    /// Resolves the names `needed`: what the state knows, else Neutron (found ones are kept in
    /// the state; a name not found is looked up again next time). Outages are errors.
    pub(super) async fn resolve_attachment_names(
        &self,
        needed: Needed,
        state: &mut State,
        own: Option<&str>,
    ) -> Result<Resolved, Error> {
        let mut out = Resolved::default();
        let (networks, groups) = needed;
        for name in networks {
            if let Some(info) = state.lookups.networks.get(&name) {
                out.networks.insert(name, Ok(info.clone()));
                continue;
            }
            let found: Result<Result<NetworkInfo, String>, Error> = async {
                let found = neutron::networks_named(&self.cloud, &name).await?;
                match found.as_slice() {
                    [n] => {
                        let subnets = neutron::subnets_of(&self.cloud, &n.id).await?;
                        let subnets = subnets
                            .iter()
                            .filter_map(|s| Some((s.id.clone(), s.cidr.parse::<Cidr>().ok()?.prefix_len())))
                            .collect();
                        Ok(Ok(NetworkInfo {
                            id: n.id.clone(),
                            subnets,
                            physical_network: n.physical_network.clone().filter(|p| !p.is_empty()),
                            mtu: n.mtu.filter(|m| *m > 0),
                        }))
                    }
                    [] => Ok(Err(format!("Neutron has no network with id or name {name:?}"))),
                    many => {
                        let ids: Vec<&str> = many.iter().map(|n| n.id.as_str()).collect();
                        Ok(Err(format!(
                            "{} networks have the name {name:?} ({}); name one by its id",
                            many.len(),
                            ids.join(", ")
                        )))
                    }
                }
            }
            .await;
            let r = match found {
                Ok(r) => r,
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => Err(format!("looking up {name:?}: {e}")),
            };
            if let Ok(info) = &r {
                state.lookups.networks.insert(name.clone(), info.clone());
            }
            out.networks.insert(name, r);
        }
        for (project, name) in groups {
            let key = (project.clone(), name.clone());
            if let Some(id) = state.lookups.groups.get(&key) {
                out.groups.insert(key, Ok(id.clone()));
                continue;
            }
            let scope = project.as_deref().or(own);
            let of = scope.map_or("the cluster's project".to_string(), |p| format!("project {p}"));
            let r = match neutron::security_groups_named(&self.cloud, &name, scope).await {
                Ok(found) => match found.as_slice() {
                    [g] => Ok(g.id.clone()),
                    [] => Err(format!("{of} has no security group with id or name {name:?}")),
                    many => Err(format!("{of} has {} security groups named {name:?}; name one by its id", many.len())),
                },
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => Err(format!("looking up {name:?} in {of}: {e}")),
            };
            if let Ok(id) = &r {
                state.lookups.groups.insert(key.clone(), id.clone());
            }
            out.groups.insert(key, r);
        }
        Ok(out)
    }

    /// Carries out the plan: replaced ports deleted, new ones made and tagged, changes made,
    /// subports put on their trunks and given their pod's UID; then every port of a pod one
    /// of whose ports could not be made is deleted, with the ports no pod wants.
    pub(super) async fn attachments(
        &self,
        plan: AttachPlan,
        state: &mut State,
        report: &mut Report,
        failures: &mut Failures,
    ) -> Result<(), Error> {
        let c = &self.config;
        for p in plan.problems {
            failures.push(p);
        }
        let mut failed: BTreeSet<ObjectKey> = BTreeSet::new();
        // Replaced ports first: their successors may take their addresses.
        let wanted: BTreeMap<&String, &Wanted> = plan.pods.values().flatten().map(|w| (&w.marker, w)).collect();
        let replaced: Vec<Port> = plan.replaced.iter().map(|(_, p)| p.clone()).collect();
        for (p, r) in self.delete_ports(&self.cloud, state, replaced).await {
            match r {
                Ok(()) => {
                    report.deleted += 1;
                    state.attachments.remove(&p.description);
                }
                Err(e) => {
                    let Some(w) = wanted.get(&p.description) else { continue };
                    failures.sort_as(refused(&w.pod, &w.interface, &w.nad, &e), e)?;
                    failed.insert(w.pod.clone());
                }
            }
        }
        let creates: Vec<Wanted> = plan.creates.into_iter().filter(|w| !failed.contains(&w.pod)).collect();
        let made = concurrently(creates, |w| async move {
            let r = match neutron::create_port_with(&self.cloud, w.body(c)).await {
                Err(e) => Err((e, false)),
                // Tagged before it goes on a trunk (its owner is rewritten there).
                Ok(p) => match neutron::set_tags(&self.cloud, "ports", &p.id, &[c.tag()]).await {
                    Ok(()) => Ok(Port { tags: vec![c.tag()], ..p }),
                    Err(e) => Err((e, true)),
                },
            };
            (w, r)
        })
        .await;
        let mut to_trunk = plan.to_trunk;
        for (w, r) in made {
            match r {
                Ok(p) => {
                    report.created += 1;
                    if let Some(t) = &w.trunk {
                        to_trunk.push((t.clone(), p.id.clone(), w.pod.clone()));
                    }
                    state.attachments.insert(p.description.clone(), p);
                }
                Err((e, made)) => {
                    // A port made and not tagged: the next read adopts it (found by owner).
                    failures.stale |= made;
                    failures.sort_as(refused(&w.pod, &w.interface, &w.nad, &e), e)?;
                    failed.insert(w.pod.clone());
                }
            }
        }
        // Free ports taken: one update each makes a pool's port the pod's.
        let taken: Vec<(Wanted, PoolKey, String, Value)> =
            plan.taken.into_iter().filter(|(w, _, _, _)| !failed.contains(&w.pod)).collect();
        let changed = concurrently(taken, |(w, key, id, changes)| async move {
            let r = neutron::update_port(&self.cloud, &id, changes).await;
            (w, key, id, r)
        })
        .await;
        for (w, key, id, r) in changed {
            match r {
                Ok(p) => {
                    report.updated += 1;
                    state.take_free(&key, &id);
                    state.attachments.insert(p.description.clone(), p);
                }
                Err(e) => {
                    failures.sort_as(refused(&w.pod, &w.interface, &w.nad, &e), e)?;
                    failed.insert(w.pod.clone());
                }
            }
        }
        let updates: Vec<(Wanted, String, Value)> =
            plan.updates.into_iter().filter(|(w, _, _)| !failed.contains(&w.pod)).collect();
        let changed = concurrently(updates, |(w, id, changes)| async move {
            let r = neutron::update_port(&self.cloud, &id, changes).await;
            (w, r)
        })
        .await;
        for (w, r) in changed {
            match r {
                Ok(p) => {
                    report.updated += 1;
                    state.attachments.insert(p.description.clone(), p);
                }
                Err(e) => {
                    failures.sort_as(refused(&w.pod, &w.interface, &w.nad, &e), e)?;
                    failed.insert(w.pod.clone());
                }
            }
        }
        // Subports: on their trunks (a VLAN taken meanwhile is the pod's problem), then given
        // their pod's UID.
        to_trunk.retain(|(_, _, pod)| !failed.contains(pod));
        let mut by_trunk: BTreeMap<String, Vec<(String, ObjectRef)>> = BTreeMap::new();
        for (trunk, port, pod) in &to_trunk {
            by_trunk.entry(trunk.clone()).or_default().push((port.clone(), ObjectRef::pod(pod)));
        }
        for (trunk, ports) in by_trunk {
            report.updated += self.attach(&self.cloud, state, &trunk, ports, failures).await?;
        }
        let mut owned = Vec::new();
        for (_, port, pod) in to_trunk {
            if state.trunk_holding(&port).is_none() {
                failed.insert(pod);
                continue;
            }
            let uid = plan.pods.get(&pod).and_then(|l| l.first()).map(|w| w.uid.clone()).unwrap_or_default();
            if !uid.is_empty() {
                owned.push((pod, port, uid));
            }
        }
        let given = concurrently(owned, |(pod, id, uid)| async move {
            let r = neutron::update_port(&self.cloud, &id, json!({"device_id": uid})).await;
            (pod, r)
        })
        .await;
        for (pod, r) in given {
            match r {
                Ok(p) => {
                    state.attachments.insert(p.description.clone(), p);
                }
                Err(e) => {
                    failures.sort(ObjectRef::pod(&pod), e)?;
                    failed.insert(pod);
                }
            }
        }
        // All or nothing: a pod one of whose ports failed keeps none; and ports no pod wants go.
        let mut doomed: Vec<Port> = failed
            .iter()
            .flat_map(|pod| plan.pods.get(pod).into_iter().flatten())
            .filter_map(|w| state.attachments.get(&w.marker).cloned())
            .collect();
        doomed.extend(plan.gone);
        for (p, r) in self.delete_ports(&self.cloud, state, doomed).await {
            match r {
                Ok(()) => {
                    report.deleted += 1;
                    state.attachments.remove(&p.description);
                }
                Err(e) => failures.sort(ObjectRef::Cloud(CloudKind::Port, p.name.clone()), e)?,
            }
        }
        for (pod, list) in &plan.pods {
            if failed.contains(pod) {
                continue;
            }
            let made: Option<Vec<AttachedPort>> =
                list.iter().map(|w| state.attachments.get(&w.marker).map(|p| attached(w, p, state))).collect();
            if let Some(made) = made.filter(|m| !m.is_empty()) {
                report.attachments.insert(pod.clone(), made);
            }
        }
        Ok(())
    }

    /// The secondary interfaces' ports Neutron holds (read now if they are not known), for a
    /// multinet allocator to be given back after a restart or a change of leader.
    pub async fn held_attachments(&self) -> Result<Vec<HeldAttachment>, Error> {
        let mut guard = self.state.lock().await;
        if guard.is_none() {
            *guard = Some(self.read(&mut Report::default()).await?);
        }
        let state = guard.as_ref().expect("state was just read");
        Ok(state
            .attachments
            .values()
            .filter_map(|p| {
                let (pod, interface, network) = self.config.parse_attachment(&p.description)?;
                let ips = p.fixed_ips.iter().filter_map(|f| f.ip_address.parse().ok()).collect();
                Some(HeldAttachment { pod, interface, network, ips })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests;
