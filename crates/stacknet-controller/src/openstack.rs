//! The OpenStack backend (`--backend openstack`): a reconcile is one Neutron reconcile
//! (networks, security groups, pods' ports) and one Octavia reconcile (Services). Port pools
//! are topped up by a task of their own, so pod starts never wait for a refill; it runs only
//! while this replica leads, and its problems reach the loop as [`News`].

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use stacknet_engine::{PolicyEngine, Reason};
use stacknet_openstack::octavia::OctaviaBackend;
use stacknet_openstack::{Cloud, CloudSource, NeutronBackend, NeutronConfig, PoolNode};
use tokio::sync::{mpsc, watch};

use crate::controller::{Backend, Failure, News, Reconciled};
use crate::error::Error;

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
        Ok(OpenStackNetwork { neutron, octavia, nodes, leading, pool_problems: Some(problems), refiller })
    }

    /// Whether Services are made (the catalog has Octavia).
    pub fn has_load_balancer(&self) -> bool {
        self.octavia.is_some()
    }

    /// Each pod's `stacknet.io/network` annotation: its Neutron port's addresses with their
    /// prefix lengths, MAC, gateways, port and network, and on a nested node the VLAN and the
    /// trunk's parent port.
    fn annotations(report: &stacknet_openstack::Report) -> Vec<(stacknet_engine::ObjectKey, String)> {
        let Some(topology) = &report.topology else { return Vec::new() };
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
            let mut value = serde_json::json!({
                "ips": ips,
                "mac": port.mac,
                "gateways": gateways,
                "portId": port.port_id,
                "networkId": port.network_id,
            });
            if let (Some(vlan), Some(parent)) = (port.vlan, &port.parent_port) {
                value["vlan"] = serde_json::json!(vlan);
                value["parentPort"] = serde_json::json!(parent);
            }
            out.push((key.clone(), value.to_string()));
        }
        out
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
        }
        self.leading.send_replace(leading);
    }

    async fn reconcile(&mut self, engine: &mut PolicyEngine, annotate: bool) -> Result<Reconciled, Failure> {
        let mut net = self.neutron.reconcile(engine).await.map_err(|e| failure(e, "Neutron"))?;
        let mut problems = std::mem::take(&mut net.problems);
        let annotations = if annotate { Self::annotations(&net) } else { Vec::new() };
        if let (Some(octavia), Some(topology)) = (&self.octavia, &net.topology) {
            let lbs = octavia.reconcile(engine.index(), topology).await.map_err(|e| failure(e, "Octavia"))?;
            problems.extend(lbs.problems);
        }
        // Secondary networks are made in OVN mode only so far: say so on each pod that asks.
        for (_, pod) in engine.index().pods() {
            if pod.networks_annotation.as_deref().is_some_and(|t| !t.trim().is_empty()) && pod.is_policy_subject() {
                problems.push(stacknet_engine::Problem::new(
                    stacknet_engine::ObjectRef::pod(&pod.key),
                    Reason::AttachmentFailed,
                    format!(
                        "metadata.annotations[{}]: the OpenStack backend does not make secondary networks yet; the pod has its primary port only",
                        stacknet_engine::multinet::NETWORKS_ANNOTATION
                    ),
                ));
            }
        }
        self.nodes.send_replace(NeutronBackend::nodes_of(engine));
        tracing::debug!(created = net.created, updated = net.updated, deleted = net.deleted, "reconciled with Neutron");
        Ok(Reconciled {
            problems,
            annotations,
            ingress: Vec::new(),
            network_status: Vec::new(),
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
