//! The OpenStack backend (`--backend openstack`): a reconcile is one Neutron reconcile
//! (networks, security groups, pods' ports, and their secondary interfaces' ports on the
//! Neutron networks NetworkAttachmentDefinitions name) and one Octavia reconcile (Services).
//! Port pools are topped up by a task of their own, so pod starts never wait for a refill; it
//! runs only while this replica leads, and its problems reach the loop as [`News`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use stacknet_engine::multinet::{self, Allocator, AttachedInterface, Attachment, Foreign, Plan, PodPorts};
use stacknet_engine::objects::ObjectKey;
use stacknet_engine::{PolicyEngine, Reason};
use stacknet_openstack::octavia::OctaviaBackend;
use stacknet_openstack::{Cloud, CloudSource, NeutronBackend, NeutronConfig, PoolNode};
use tokio::sync::{mpsc, watch};

use crate::controller::{Backend, Failure, News, Reconciled};
use crate::error::Error;
use crate::ovn::DEFAULT_NETWORK;

/// What the OpenStack backend needs beyond the controller's common settings.
#[derive(Debug, Clone)]
pub struct OpenStackSettings {
    pub cloud: CloudSource,
    pub neutron: NeutronConfig,
}

impl OpenStackSettings {
    /// From the controller's checked configuration (`None` with the OVN backend).
    pub fn from_config(c: &crate::ControllerConfig) -> Option<OpenStackSettings> {
        let o = c.openstack.as_ref()?;
        let cloud = match (&o.os_cloud, CloudSource::from_env()) {
            (Some(name), _) => CloudSource::Named { cloud: name.clone(), file: o.clouds_yaml.clone() },
            (None, CloudSource::Named { cloud, .. }) => CloudSource::Named { cloud, file: o.clouds_yaml.clone() },
            (None, env) => env,
        };
        let neutron = NeutronConfig {
            service_cidr: o.service_cidr,
            external_network: o.external_network.clone(),
            pool_size: o.pool_size,
            network_per_namespace: o.network_per_namespace,
            namespace_prefix_len: o.namespace_prefix_len,
            foreign: if c.multus { Foreign::LeaveToMultus } else { Foreign::Refuse },
            ..NeutronConfig::new(c.cluster.clone(), c.ipam.cluster.clone())
        };
        Some(OpenStackSettings { cloud, neutron })
    }
}

pub struct OpenStackNetwork {
    neutron: Arc<NeutronBackend>,
    octavia: Option<OctaviaBackend>,
    /// The cluster's nodes, for the pools' task (after each reconcile).
    nodes: watch::Sender<Vec<PoolNode>>,
    /// Whether the pools' task may write.
    leading: watch::Sender<bool>,
    /// The pools' task's problems, until the loop takes them.
    pool_problems: Option<mpsc::UnboundedReceiver<News>>,
    refiller: Option<tokio::task::JoinHandle<()>>,
    /// Pods' secondary interfaces (OpenStack mode: Neutron networks only).
    multinet: Allocator,
    /// What to do with NADs of other plugins (`--multus`).
    foreign: Foreign,
    /// Whether the secondary ports Neutron holds have been given back to `multinet` since
    /// this replica leads (a pod keeps an address it asked for and has).
    restored: bool,
}

impl Drop for OpenStackNetwork {
    fn drop(&mut self) {
        if let Some(r) = &self.refiller {
            r.abort();
        }
    }
}

impl OpenStackNetwork {
    /// Authenticates (an error names what is wrong with the cloud's configuration or
    /// credentials, never the credentials themselves) and starts the pools' task.
    pub async fn connect(settings: OpenStackSettings) -> Result<OpenStackNetwork, Error> {
        let cloud = Cloud::connect(&settings.cloud).await?;
        let octavia = cloud.has_load_balancer.then(|| OctaviaBackend::new(cloud.clone(), settings.neutron.clone()));
        let neutron = Arc::new(NeutronBackend::new(cloud, settings.neutron.clone()));
        let (nodes, nodes_rx) = watch::channel(Vec::new());
        let (leading, leading_rx) = watch::channel(false);
        let (problems_tx, problems) = mpsc::unbounded_channel();
        let refiller = (settings.neutron.pool_size > 0)
            .then(|| tokio::spawn(refill(neutron.clone(), nodes_rx, leading_rx, problems_tx)));
        Ok(OpenStackNetwork {
            neutron,
            octavia,
            nodes,
            leading,
            pool_problems: Some(problems),
            refiller,
            multinet: Allocator::default(),
            foreign: settings.neutron.foreign,
            restored: false,
        })
    }

    /// Whether Services are made (the catalog has Octavia).
    pub fn has_load_balancer(&self) -> bool {
        self.octavia.is_some()
    }

    /// Each pod's `stacknet.io/network` annotation ([`PodPorts`]): its Neutron port's
    /// addresses with their prefix lengths, MAC, gateways, port and network, on a nested node
    /// the VLAN and the trunk's parent port; and its secondary interfaces' ports once all are
    /// made (pending until then, or why they cannot be). The node agent plumbs from it.
    fn annotations(report: &stacknet_openstack::Report, plan: &Plan) -> Vec<(ObjectKey, String)> {
        let Some(topology) = &report.topology else { return Vec::new() };
        let with_len = |addresses: &[(IpAddr, u8)]| addresses.iter().map(|(ip, l)| format!("{ip}/{l}")).collect();
        let mut out = Vec::with_capacity(report.ports.len());
        for (key, port) in &report.ports {
            let mut ips = Vec::new();
            let mut gateways = Vec::new();
            for ip in &port.ips {
                let Some(subnet) = topology.subnet_of(*ip) else { continue };
                let Some(len) = subnet.cidr.split_once('/').map(|(_, l)| l) else { continue };
                ips.push(format!("{ip}/{len}"));
                gateways.extend(subnet.gateway_ip.clone());
            }
            let mut value = PodPorts {
                ips,
                mac: port.mac.clone(),
                gateways,
                port_id: port.port_id.clone(),
                network_id: port.network_id.clone(),
                ..Default::default()
            };
            if let (Some(vlan), Some(parent)) = (port.vlan, &port.parent_port) {
                value.vlan = Some(vlan);
                value.parent_port = Some(parent.clone());
            }
            if let Some(why) = plan.refused.get(key) {
                value.attachment_error = Some(why.clone());
            } else if let Some(wanted) = plan.pods.get(key) {
                let made = report.attachments.get(key);
                let list: Option<Vec<AttachedInterface>> = wanted
                    .iter()
                    .map(|a| {
                        let m = made?.iter().find(|m| m.interface == a.interface && m.network == a.network)?;
                        Some(AttachedInterface {
                            interface: a.interface.clone(),
                            network: a.network.to_string(),
                            port_id: m.port.port_id.clone(),
                            network_id: m.port.network_id.clone(),
                            mac: m.port.mac.clone(),
                            ips: with_len(&m.addresses),
                            gateways: a.default_route.iter().map(IpAddr::to_string).collect(),
                            mtu: a.mtu.or(m.mtu),
                            vlan: m.port.vlan,
                            parent_port: m.port.parent_port.clone(),
                            vnic_type: m.vnic_type.clone(),
                            physical_network: m.physical_network.clone(),
                        })
                    })
                    .collect();
                match list {
                    Some(list) => value.attachments = list,
                    None => value.attachments_pending = true,
                }
            }
            out.push((key.clone(), serde_json::to_string(&value).unwrap_or_default()));
        }
        out
    }

    /// The network-status annotation of each pod whose secondary interfaces all have their
    /// ports: the primary port as `eth0`, then each interface with its port's MAC and
    /// addresses.
    fn network_status(report: &stacknet_openstack::Report, plan: &Plan) -> Vec<(ObjectKey, String)> {
        plan.pods
            .iter()
            .filter_map(|(key, list)| {
                let primary = report.ports.get(key)?;
                let made = report.attachments.get(key)?;
                let list: Option<Vec<Attachment>> = list
                    .iter()
                    .map(|a| {
                        let port = made.iter().find(|m| m.interface == a.interface && m.network == a.network)?;
                        Some(Attachment { mac: port.port.mac.clone(), ips: port.addresses.clone(), ..a.clone() })
                    })
                    .collect();
                let status = multinet::network_status(DEFAULT_NETWORK, ("eth0", &primary.ips, &primary.mac), &list?);
                Some((key.clone(), status))
            })
            .collect()
    }

    /// Gives the allocator back what Neutron holds, once per leadership.
    async fn restore(&mut self) -> Result<(), Failure> {
        if self.restored {
            return Ok(());
        }
        let held = self.neutron.held_attachments().await.map_err(|e| failure(e, "Neutron"))?;
        self.multinet = Allocator::default();
        for h in held {
            self.multinet.restore(h.pod, h.interface, h.network, h.ips);
        }
        self.restored = true;
        Ok(())
    }
}

fn failure(e: stacknet_openstack::Error, what: &str) -> Failure {
    let reason = if e.is_transient() { Reason::OpenStackUnreachable } else { Reason::OpenStackRejected };
    Failure::new(reason, format!("{what}: {e}; retrying"))
}

impl Backend for OpenStackNetwork {
    fn describe(&self) -> String {
        format!("OpenStack (Neutron{})", if self.has_load_balancer() { ", Octavia" } else { "" })
    }

    async fn lead(&mut self, leading: bool) {
        if leading {
            // What the previous leader wrote is read before the first reconcile.
            self.neutron.invalidate().await;
            self.restored = false;
        }
        self.leading.send_replace(leading);
    }

    async fn reconcile(&mut self, engine: &mut PolicyEngine, annotate: bool) -> Result<Reconciled, Failure> {
        // A pod's secondary interfaces: Neutron networks only; a pod selecting another kind,
        // a NAD that is missing or invalid, or addresses or MACs that clash gets none.
        self.restore().await?;
        let plan = self.multinet.sync(engine.index(), self.foreign, stacknet_openstack::accepts);
        let mut net = self.neutron.reconcile_with(engine, &plan).await.map_err(|e| failure(e, "Neutron"))?;
        let mut problems = plan.problems.clone();
        problems.append(&mut net.problems);
        let annotations = if annotate { Self::annotations(&net, &plan) } else { Vec::new() };
        let network_status = if annotate { Self::network_status(&net, &plan) } else { Vec::new() };
        if let (Some(octavia), Some(topology)) = (&self.octavia, &net.topology) {
            let lbs = octavia.reconcile(engine.index(), topology).await.map_err(|e| failure(e, "Octavia"))?;
            problems.extend(lbs.problems);
        }
        self.nodes.send_replace(NeutronBackend::nodes_with(engine, &plan));
        tracing::debug!(created = net.created, updated = net.updated, deleted = net.deleted, "reconciled with Neutron");
        Ok(Reconciled {
            problems,
            annotations,
            ingress: Vec::new(),
            network_status,
            transactions: 0,
            operations: net.calls,
        })
    }

    fn news(&mut self) -> Option<BoxStream<'static, News>> {
        let rx = self.pool_problems.take()?;
        Some(futures::stream::unfold(rx, |mut rx| async move { Some((rx.recv().await?, rx)) }).boxed())
    }
}

/// Keeps every node's pool full while this replica leads: after each change of the node list
/// and every few seconds (pods take ports between reconciles).
async fn refill(
    neutron: Arc<NeutronBackend>,
    mut nodes: watch::Receiver<Vec<PoolNode>>,
    leading: watch::Receiver<bool>,
    problems: mpsc::UnboundedSender<News>,
) {
    loop {
        let list = nodes.borrow_and_update().clone();
        if *leading.borrow() && !list.is_empty() {
            match neutron.refill_pools(&list).await {
                Ok(r) => {
                    if r.created + r.deleted > 0 {
                        tracing::info!(made = r.created, reclaimed = r.deleted, "port pools refilled");
                    }
                    if !r.problems.is_empty() {
                        let _ = problems.send(News { reconcile: false, problems: r.problems });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "refilling the port pools"),
            }
        }
        tokio::select! {
            r = nodes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use stacknet_engine::{ClusterIndex, manifest};
    use std::collections::BTreeMap;

    use stacknet_openstack::{AttachedPort, PodPort, Report};

    use super::*;

    fn port(id: &str, mac: &str, ip: &str) -> PodPort {
        PodPort {
            port_id: id.into(),
            name: id.into(),
            network_id: "net".into(),
            mac: mac.into(),
            ips: vec![ip.parse().unwrap()],
            vlan: None,
            parent_port: None,
        }
    }

    #[test]
    fn network_status_is_written_for_pods_whose_secondary_ports_are_all_made() {
        let yaml = r#"apiVersion: v1
kind: List
items:
- apiVersion: k8s.cni.cncf.io/v1
  kind: NetworkAttachmentDefinition
  metadata: {name: provider, namespace: x}
  spec: {config: '{"name": "provider", "type": "stacknet-cni", "neutronNetwork": "physnet1"}'}
- apiVersion: v1
  kind: Pod
  metadata: {name: a, namespace: x, annotations: {k8s.v1.cni.cncf.io/networks: '[{"name": "provider", "default-route": ["192.0.2.1"]}]'}}
  spec: {nodeName: n1}
- apiVersion: v1
  kind: Pod
  metadata: {name: b, namespace: x, annotations: {k8s.v1.cni.cncf.io/networks: provider}}
  spec: {nodeName: n1}
"#;
        let index = ClusterIndex::from_objects(manifest::parse("c.yaml", yaml).unwrap().objects);
        let plan = Allocator::default().sync(&index, Foreign::Refuse, stacknet_openstack::accepts);
        assert_eq!(plan.pods.len(), 2, "{:?}", plan.problems);
        let (a, b) = (ObjectKey::new("x", "a"), ObjectKey::new("x", "b"));
        let mut report = Report::default();
        report.ports.insert(a.clone(), port("pa", "fa:16:3e:00:00:01", "10.0.0.5"));
        report.ports.insert(b.clone(), port("pb", "fa:16:3e:00:00:02", "10.0.0.6"));
        let secondary = port("sa", "fa:16:3e:00:00:0a", "192.0.2.10");
        report.attachments.insert(
            a.clone(),
            vec![AttachedPort {
                interface: "net1".into(),
                network: ObjectKey::new("x", "provider"),
                port: secondary,
                addresses: vec![("192.0.2.10".parse().unwrap(), 24)],
                vnic_type: "normal".into(),
                physical_network: Some("physnet1".into()),
                mtu: Some(1500),
            }],
        );
        // b's secondary port is not made: b gets no status yet.
        let status = OpenStackNetwork::network_status(&report, &plan);
        assert_eq!(status.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), std::slice::from_ref(&a));
        // The engine's format, with the ports' MACs and addresses (Neutron chose them).
        let value: serde_json::Value = serde_json::from_str(&status[0].1).unwrap();
        let entry = |i: usize| {
            let e = &value[i];
            (e["name"].clone(), e["interface"].clone(), e["ips"].clone(), e["mac"].clone())
        };
        assert_eq!(entry(0), (json!("stacknet"), json!("eth0"), json!(["10.0.0.5"]), json!("fa:16:3e:00:00:01")));
        assert_eq!(entry(1), (json!("x/provider"), json!("net1"), json!(["192.0.2.10"]), json!("fa:16:3e:00:00:0a")));
        assert_eq!(value[1]["gateway"], json!(["192.0.2.1"]), "the selection's default route");

        // The node's annotation: a's with its secondary port, b's pending.
        let subnet: stacknet_openstack::neutron::Subnet = serde_json::from_value(
            json!({"id": "s", "network_id": "net", "cidr": "10.0.0.0/24", "gateway_ip": "10.0.0.1"}),
        )
        .unwrap();
        report.topology = Some(stacknet_openstack::Topology {
            network: None,
            subnets: [("10.0.0.0/24".parse().unwrap(), subnet)].into(),
            pools: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            router: serde_json::from_value(json!({"id": "r"})).unwrap(),
            service_subnet: None,
            external_network: None,
        });
        let notes: BTreeMap<ObjectKey, PodPorts> = OpenStackNetwork::annotations(&report, &plan)
            .into_iter()
            .map(|(k, v)| (k, multinet::ports::parse(&v).unwrap()))
            .collect();
        let na = &notes[&a];
        assert_eq!((na.port_id.as_str(), na.attachments_pending), ("pa", false));
        let net1 = &na.attachments[0];
        assert_eq!(
            (net1.interface.as_str(), net1.network.as_str(), net1.port_id.as_str(), net1.ips.clone()),
            ("net1", "x/provider", "sa", vec!["192.0.2.10/24".to_string()])
        );
        assert_eq!(net1.gateways, ["192.0.2.1"]);
        assert_eq!(
            (net1.mtu, net1.physical_network.as_deref(), net1.is_direct()),
            (Some(1500), Some("physnet1"), false)
        );
        assert!(notes[&b].attachments.is_empty() && notes[&b].attachments_pending, "{:?}", notes[&b]);
    }
}
