//! The agent in OpenStack mode (see [`crate::openstack`]): ADD, DEL and CHECK from the pod's
//! Neutron ports as its `stacknet.io/network` annotation lists them.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use stacknet_engine::multinet::SRIOV_DEVICES_ANNOTATION;
use stacknet_engine::multinet::ports::{AttachedInterface, PodPorts};
use stacknet_engine::objects::ObjectKey;
use stacknet_ovn::lookup::PodNetwork;

use super::{Agent, Made, host_ifname, plumb_error, required};
use crate::netdata::NetworkData;
use crate::openstack::{self, OpenStackNode, PodApi};
use crate::plumb::child;
use crate::plumb::sriov::{self, HostNs};
use crate::protocol::{AddResult, CniError, Request, Timings, codes};

/// OpenStack mode: where the node's settings and the pods' ports come from.
#[derive(Clone)]
pub struct OpenStackMode {
    pub node: OpenStackNode,
    pub api: Arc<dyn PodApi>,
}

/// One interface to make.
#[derive(Debug, Clone, Copy)]
enum Item<'a> {
    /// The pod's port on the pod network.
    Primary,
    Secondary(&'a AttachedInterface),
}

/// What was made, to undo it.
enum Undo {
    /// A veth pair bound to OVS, by its host end.
    Veth(String),
    /// A child of the VM's NIC, by its name in the pod.
    Child(String),
    /// A device moved in, by its name in the pod; its PCI address, physical network.
    Device(String, String, String),
}

impl Agent {
    async fn host_ns(&self) -> Result<HostNs, CniError> {
        let r = match &self.config.host_netns {
            Some(p) => HostNs::open(p).await,
            None => HostNs::own().await,
        };
        r.map_err(plumb_error)
    }

    pub(super) async fn add_openstack(
        &self,
        os: &OpenStackMode,
        req: &Request,
        key: &ObjectKey,
        container: &str,
        netns: &str,
        ifname: &str,
    ) -> Result<AddResult, CniError> {
        let start = Instant::now();
        let deadline = start + self.config.lookup_timeout;
        let delegated = req.network.is_some();
        let secondary = delegated || req.attach_networks != Some(false);
        let (view, ports) = openstack::wait_ports(&*os.api, key, req.pod_uid.as_deref(), secondary, deadline).await?;
        if secondary && let Some(why) = &ports.attachment_error {
            return Err(CniError::new(
                codes::INVALID_CONFIG,
                "the pod's secondary networks cannot be attached",
                format!("pod {key}: {why}"),
            ));
        }
        let mut items = Vec::new();
        if delegated {
            let a = ports.attachments.iter().find(|a| a.interface == ifname).ok_or_else(|| {
                CniError::new(
                    codes::TRY_AGAIN_LATER,
                    "no Neutron port for the pod's secondary interface yet",
                    format!(
                        "pod {key}: the controller lists no port for interface {ifname} (is the network in its k8s.v1.cni.cncf.io/networks annotation?)"
                    ),
                )
            })?;
            items.push(Item::Secondary(a));
        } else {
            items.push(Item::Primary);
            if secondary {
                items.extend(ports.attachments.iter().map(Item::Secondary));
            }
        }
        let lookup = start.elapsed();
        // network_data.json, read once, when a child of a VM NIC is to be made.
        let needs_data = items.iter().any(|i| match i {
            Item::Primary => ports.vlan.is_some(),
            Item::Secondary(a) => !a.is_direct(),
        });
        let data = if needs_data { Some(os.node.network_data().await) } else { None };
        let results = futures::future::join_all(
            items.iter().map(|i| self.make_os(os, req, key, &ports, data.as_ref(), container, netns, ifname, *i)),
        )
        .await;
        let mut failed = None;
        for e in results.iter().filter_map(|r| r.as_ref().err()) {
            self.warn(os, key, &e.details).await;
            failed.get_or_insert_with(|| e.clone());
        }
        let mut made = Vec::new();
        let mut undo = Vec::new();
        for r in results.into_iter().flatten() {
            made.push(r.0);
            undo.push(r.1);
        }
        // The devices moved in, for the controller to bind their ports.
        let devices: Vec<(&str, &str, &str)> = undo
            .iter()
            .filter_map(|u| match u {
                Undo::Device(i, pci, net) => Some((i.as_str(), pci.as_str(), net.as_str())),
                _ => None,
            })
            .collect();
        if failed.is_none() && !devices.is_empty() {
            let mut value = view.sriov_devices.clone();
            let mut recorded = Ok(());
            for (i, pci, physnet) in devices {
                match openstack::vendor_info(&os.node.sysfs, pci) {
                    Ok(vendor) => value = Some(openstack::with_device(value.as_deref(), i, pci, &vendor, physnet)),
                    Err(e) => recorded = Err(format!("interface {i}: device {pci}: {e}")),
                }
            }
            if let (Ok(()), Some(v)) = (&recorded, &value) {
                recorded = os.api.annotate(key, SRIOV_DEVICES_ANNOTATION, v).await;
            }
            if let Err(e) = recorded {
                failed = Some(CniError::new(
                    codes::TRY_AGAIN_LATER,
                    "recording the pod's SR-IOV devices failed",
                    format!("pod {key}: {SRIOV_DEVICES_ANNOTATION}: {e}"),
                ));
            }
        }
        if let Some(e) = failed {
            // All or nothing.
            let host = self.host_ns().await.ok();
            for u in undo {
                self.undo(host.as_ref(), netns, u).await;
            }
            return Err(e);
        }
        let timings = Timings {
            lookup_us: lookup.as_micros() as u64,
            plumb_us: made.iter().map(|m: &Made| m.timings.plumb_us).max().unwrap_or_default(),
            bind_us: made.iter().map(|m| m.timings.bind_us).max().unwrap_or_default(),
            install_us: made.iter().map(|m| m.timings.install_us).max().unwrap_or_default(),
        };
        tracing::debug!(pod = %key, interfaces = made.len(), ?timings, "attached (OpenStack)");
        Ok(self.result(netns, &made, timings))
    }

    async fn warn(&self, os: &OpenStackMode, key: &ObjectKey, message: &str) {
        let posted = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            os.api.warn(key, stacknet_engine::Reason::AttachmentFailed.as_str(), message),
        )
        .await;
        match posted {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(pod = %key, "posting an Event: {e}"),
            Err(_) => tracing::warn!(pod = %key, "posting an Event: timed out"),
        }
    }

    async fn undo(&self, host: Option<&HostNs>, netns: &str, u: Undo) {
        let r = match &u {
            Undo::Veth(h) => self.teardown(h).await.map_err(|e| e.to_string()),
            Undo::Child(i) => child::remove_child(Path::new(netns), i).await.map(drop).map_err(|e| e.to_string()),
            Undo::Device(i, _, _) => match host {
                Some(h) => sriov::release(h, Path::new(netns), i).await.map(drop).map_err(|e| e.to_string()),
                None => Err("no handle in the node's namespace".into()),
            },
        };
        if let Err(e) = r {
            tracing::warn!("undoing a partial ADD: {e}");
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn make_os(
        &self,
        os: &OpenStackMode,
        req: &Request,
        key: &ObjectKey,
        ports: &PodPorts,
        data: Option<&Result<NetworkData, String>>,
        container: &str,
        netns: &str,
        ifname: &str,
        item: Item<'_>,
    ) -> Result<(Made, Undo), CniError> {
        let t = Instant::now();
        let done = |iface, undo| {
            let timings = Timings { plumb_us: t.elapsed().as_micros() as u64, ..Timings::default() };
            Ok((Made { iface, timings }, undo))
        };
        match item {
            Item::Primary if ports.vlan.is_none() => {
                // A bare node: a veth bound to OVS as the Neutron port.
                let net = PodNetwork {
                    lsp: ports.port_id.clone(),
                    mac: ports.mac.to_ascii_lowercase(),
                    addresses: ports.ips.iter().filter_map(|a| stacknet_engine::multinet::ports::address(a)).collect(),
                    gateways: if ports.attachments.iter().any(|a| !a.gateways.is_empty()) {
                        Vec::new()
                    } else {
                        ports.gateways.iter().filter_map(|g| g.parse().ok()).collect()
                    },
                    iface_id_ver: None,
                    parent: None,
                    vlan: None,
                    mtu: None,
                    routes: Vec::new(),
                    attachments: Vec::new(),
                    attachment_error: None,
                };
                let mtu = req.mtu.unwrap_or(self.config.mtu);
                let made = self.attach_one(container, netns, ifname, key, &net, mtu).await?;
                Ok((made, Undo::Veth(host_ifname(container, ifname))))
            }
            Item::Primary => {
                let place = |d: &NetworkData| {
                    openstack::child_place(d, &ports.network_id, ports.vlan, ports.parent_port.as_deref())
                };
                let gateways = if ports.attachments.iter().any(|a| !a.gateways.is_empty()) {
                    &[][..]
                } else {
                    &ports.gateways[..]
                };
                let iface = openstack::interface(ifname, &ports.mac, &ports.ips, gateways, None);
                let describe = |e: String| {
                    CniError::new(
                        codes::INVALID_CONFIG,
                        "the pod's port cannot be plumbed",
                        format!(
                            "pod {key}: Neutron port {} (VLAN {:?} on the VM's trunk): {e}",
                            ports.port_id, ports.vlan
                        ),
                    )
                };
                self.make_child(data, place, netns, iface, describe).await.and_then(|(i, u)| done(i, u))
            }
            Item::Secondary(a) if a.is_direct() => {
                let Some(pci) = req.device_id.as_deref().filter(|d| !d.is_empty()) else {
                    return Err(openstack::attachment_error(
                        a,
                        "an SR-IOV (vnicType direct) port needs the device the kubelet assigned: the CNI deviceID, which Multus passes from the device plugin's resource (k8s.v1.cni.cncf.io/resourceName on the NAD)",
                    ));
                };
                let Some(physnet) = a.physical_network.clone() else {
                    return Err(openstack::attachment_error(
                        a,
                        "its Neutron network has no provider:physical_network, so no virtual function can be on it",
                    ));
                };
                let mut iface = openstack::interface(&a.interface, &a.mac, &a.ips, &a.gateways, a.mtu);
                iface.vlan = a.vlan;
                if openstack::present(Path::new(netns), &a.interface, &iface.mac).await {
                    return done(iface, Undo::Device(a.interface.clone(), pci.to_string(), physnet));
                }
                let host = self.host_ns().await?;
                sriov::attach(&host, &os.node.sysfs, pci, Path::new(netns), &iface)
                    .await
                    .map_err(|e| openstack::attachment_error(a, format!("SR-IOV device {pci}: {e}")))?;
                done(iface, Undo::Device(a.interface.clone(), pci.to_string(), physnet))
            }
            Item::Secondary(a) => {
                let place =
                    |d: &NetworkData| openstack::child_place(d, &a.network_id, a.vlan, a.parent_port.as_deref());
                let iface = openstack::interface(&a.interface, &a.mac, &a.ips, &a.gateways, a.mtu);
                let describe = |e: String| openstack::attachment_error(a, e);
                self.make_child(data, place, netns, iface, describe).await.and_then(|(i, u)| done(i, u))
            }
        }
    }

    /// A child of the VM NIC `place` picks from `network_data.json` (or found made already).
    async fn make_child(
        &self,
        data: Option<&Result<NetworkData, String>>,
        place: impl Fn(&NetworkData) -> Result<(String, child::ChildKind, Option<u32>), String>,
        netns: &str,
        mut iface: crate::plumb::PodInterface,
        describe: impl Fn(String) -> CniError,
    ) -> Result<(crate::plumb::PodInterface, Undo), CniError> {
        let data = match data {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(describe(e.clone())),
            None => return Err(describe("network_data.json was not read".into())),
        };
        let (mac, kind, nic_mtu) = place(data).map_err(&describe)?;
        if iface.mtu == 0 {
            iface.mtu = nic_mtu.unwrap_or(0);
        }
        let undo = Undo::Child(iface.ifname.clone());
        if openstack::present(Path::new(netns), &iface.ifname, &iface.mac).await {
            return Ok((iface, undo));
        }
        let host = self.host_ns().await?;
        let nic = child::nic_by_mac(&host.handle, &mac).await.map_err(|e| describe(format!("the VM NIC: {e}")))?;
        child::make_child(&host.handle, &nic, kind, Path::new(netns), &iface)
            .await
            .map_err(|e| describe(format!("on {nic}: {e}")))?;
        Ok((iface, undo))
    }

    /// DEL: the primary's veth (if any), then every child and device of ours in the pod (or,
    /// delegated, the one interface).
    pub(super) async fn del_openstack(&self, req: &Request) -> Result<(), CniError> {
        let container = required(&req.container_id, "CNI_CONTAINERID")?;
        let ifname = req.ifname.as_deref().unwrap_or("eth0");
        let netns = req.netns.as_deref().filter(|n| !n.is_empty()).map(Path::new);
        let host = self.host_ns().await.ok();
        let mut result = Ok(());
        let Some(netns) = netns else {
            // No namespace: children and devices went with it.
            return if req.network.is_some() { Ok(()) } else { self.teardown(&host_ifname(container, ifname)).await };
        };
        if req.network.is_some() {
            return openstack::remove(host.as_ref(), netns, ifname).await.map_err(plumb_error);
        }
        if let Err(e) = self.teardown(&host_ifname(container, ifname)).await {
            result = Err(e);
        }
        // A nested pod's primary is a child too; without `attachNetworks` only it goes.
        let ours = openstack::ours_in(netns).await.map_err(plumb_error)?;
        for (name, _) in ours {
            if req.attach_networks == Some(false) && name != ifname {
                continue;
            }
            if let Err(e) = openstack::remove(host.as_ref(), netns, &name).await {
                result = Err(plumb_error(e));
            }
        }
        result
    }

    /// CHECK: each interface there with its port's MAC, up, with its addresses.
    pub(super) async fn check_openstack(&self, os: &OpenStackMode, req: &Request) -> Result<(), CniError> {
        let netns = required(&req.netns, "CNI_NETNS")?;
        let ifname = required(&req.ifname, "CNI_IFNAME")?;
        let key = ObjectKey::new(
            required(&req.pod_namespace, "K8S_POD_NAMESPACE (in CNI_ARGS)")?,
            required(&req.pod_name, "K8S_POD_NAME (in CNI_ARGS)")?,
        );
        let deadline = Instant::now() + std::time::Duration::from_secs(1);
        let secondary = req.network.is_some() || req.attach_networks != Some(false);
        let (_, ports) = openstack::wait_ports(&*os.api, &key, req.pod_uid.as_deref(), secondary, deadline).await?;
        let mut wanted: Vec<(&str, &str, &[String])> = Vec::new();
        if req.network.is_none() {
            wanted.push((ifname, &ports.mac, &ports.ips));
        }
        for a in &ports.attachments {
            if secondary && (req.network.is_none() || a.interface == ifname) {
                wanted.push((&a.interface, &a.mac, &a.ips));
            }
        }
        let failed = |details: String| CniError::new(codes::CHECK_FAILED, "attachment is not as it should be", details);
        for (name, mac, ips) in wanted {
            let observed = self
                .plumbing
                .observe(Path::new(netns), name)
                .await
                .map_err(plumb_error)?
                .ok_or_else(|| failed(format!("no interface {name} in {netns}")))?;
            if !observed.mac.eq_ignore_ascii_case(mac) {
                return Err(failed(format!("{name} has MAC {}, the port says {mac}", observed.mac)));
            }
            if !observed.up {
                return Err(failed(format!("{name} is down")));
            }
            for a in ips.iter().filter_map(|a| stacknet_engine::multinet::ports::address(a)) {
                if !observed.addresses.contains(&a) {
                    return Err(failed(format!("{name} lacks address {}/{}", a.0, a.1)));
                }
            }
        }
        Ok(())
    }
}
