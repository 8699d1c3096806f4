//! The OVN backend (the default): the network made in the OVN Northbound database. A
//! reconcile is IPAM (nodes' subnets, pods' addresses), the engine, the desired rows and one
//! minimal transaction against the monitored replica. Before the first reconcile, and again
//! when this replica takes over as leader, the allocation a previous run left in the database
//! is read back, so a restart reassigns nothing and writes nothing.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use stacknet_engine::ipam::Ipam;
use stacknet_engine::objects::{ClusterObject, Kind, ObjectKey};
use stacknet_engine::{Cidr, ClusterIndex, PolicyEngine, Reason};
use stacknet_ovn::{NodeNet, OvnBackend, Topology};
use stacknet_ovsdb::nb;
use tokio::time::Instant;

use crate::config::ControllerConfig;
use crate::controller::{Backend, Change, Failure, News, Reconciled};
use crate::error::Error;

pub struct OvnNetwork {
    cluster: String,
    /// The cluster and Service CIDRs: what nodes route through their management ports, and
    /// what no external address of a Service may be in.
    node_routes: Vec<Cidr>,
    /// North–south settings, with the pods' CIDRs (`None`: no gateway routers).
    gateways: Option<stacknet_ovn::topology::Gateways>,
    /// Each node's gateway router address on the join switch, as last assigned.
    join: BTreeMap<String, IpAddr>,
    /// Addresses for LoadBalancer Services, and each one's as last assigned.
    lb_pools: Vec<Cidr>,
    lb_ips: BTreeMap<ObjectKey, IpAddr>,
    remotes: String,
    backend: OvnBackend,
    ipam: Ipam,
    /// Whether the allocation in the database has been read back since this replica leads.
    restored: bool,
    /// Pods seen and not yet reported up by OVN: since when.
    pending_up: HashMap<ObjectKey, Instant>,
    /// Each pod's logical port, as last programmed.
    ports: BTreeMap<ObjectKey, String>,
    /// Pods' secondary interfaces' addresses.
    multinet: stacknet_engine::multinet::Allocator,
    /// What to do with NADs of other plugins (`--multus`).
    foreign: stacknet_engine::multinet::Foreign,
}

impl OvnNetwork {
    /// Connects (in the background, retrying) to the configured Northbound database.
    pub fn new(config: &ControllerConfig) -> Result<OvnNetwork, Error> {
        let ipam = Ipam::new(config.ipam.clone()).map_err(|e| Error::setting(e.setting, e.message))?;
        Ok(OvnNetwork {
            cluster: config.cluster.clone(),
            node_routes: config.ipam.cluster.iter().copied().chain([config.service_cidr]).collect(),
            gateways: config.gateways.as_ref().map(|g| stacknet_ovn::topology::Gateways {
                join: g.join,
                external: g.external,
                next_hop: g.next_hop,
                physnet: g.physnet.clone(),
                snat: g.snat,
                cluster: config.ipam.cluster.clone(),
            }),
            join: BTreeMap::new(),
            lb_pools: config.gateways.as_ref().map(|g| g.lb_pools.clone()).unwrap_or_default(),
            lb_ips: BTreeMap::new(),
            remotes: config.nb.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", "),
            backend: OvnBackend::connect_with(config.nb.clone(), config.tls.clone(), config.inactivity_probe),
            ipam,
            restored: false,
            pending_up: HashMap::new(),
            ports: BTreeMap::new(),
            multinet: Default::default(),
            foreign: if config.multus {
                stacknet_engine::multinet::Foreign::LeaveToMultus
            } else {
                stacknet_engine::multinet::Foreign::Refuse
            },
        })
    }

    /// Reads back what a previous run allocated, once the Northbound replica is there.
    fn restore(&mut self) -> bool {
        let guard = self.backend.client().replica();
        let Some(replica) = guard.as_ref() else { return false };
        let a = stacknet_ovn::lookup::allocated(replica, &self.cluster);
        for (node, subnet) in &a.nodes {
            self.ipam.restore_node(node, *subnet);
        }
        for (pod, node, ips) in a.pods {
            self.ipam.restore_pod(pod, &node, ips);
        }
        for (node, ips) in a.management {
            for ip in ips {
                self.ipam.restore_management(&node, ip);
            }
        }
        self.multinet = Default::default();
        for (pod, iface, network, ips) in a.attachments {
            self.multinet.restore(pod, iface, network, ips);
        }
        self.join = a.join.into_iter().collect();
        self.lb_ips = a.load_balancer_ips.into_iter().collect();
        true
    }

    /// Join switch addresses for the nodes with an address on the external network (kept
    /// from before where possible); the others are reported.
    fn assign_join(
        &mut self,
        index: &ClusterIndex,
        problems: &mut Vec<stacknet_engine::Problem>,
    ) -> BTreeMap<String, IpAddr> {
        let Some(g) = &self.gateways else { return BTreeMap::new() };
        let mut with_uplink = Vec::new();
        for node in index.nodes() {
            if node.addresses.iter().any(|a| g.external.contains(*a)) {
                with_uplink.push(node.name.as_str());
            } else {
                problems.push(stacknet_engine::Problem {
                    object: stacknet_engine::ObjectRef::node(&node.name),
                    reason: Reason::NoGateway,
                    message: format!(
                        "no address in external-cidr {} among status.addresses {:?}: no gateway router; its pods reach the cluster but nothing beyond it",
                        g.external, node.addresses
                    ),
                });
            }
        }
        let join = stacknet_ovn::topology::join_addresses(g.join, &with_uplink, &self.join);
        for n in with_uplink.iter().filter(|n| !join.contains_key(**n)) {
            problems.push(stacknet_engine::Problem {
                object: stacknet_engine::ObjectRef::node(n),
                reason: Reason::NoGateway,
                message: format!("join-cidr {} has no free address: no gateway router; enlarge the join CIDR", g.join),
            });
        }
        self.join = join.clone();
        join
    }

    /// Each pod's `stacknet.io/network` annotation: its addresses with the prefix length of
    /// its node's subnet, MAC, gateways, logical port and node.
    fn annotations(
        desired: &stacknet_ovn::Desired,
        nodes: &BTreeMap<String, Vec<(Cidr, IpAddr)>>,
    ) -> Vec<(ObjectKey, String)> {
        let mut out = Vec::with_capacity(desired.ports.len());
        for (key, port) in &desired.ports {
            let Some(subnets) = nodes.get(&port.node) else { continue };
            let ips = port.ips.iter().filter_map(|ip| {
                subnets.iter().find(|(c, _)| c.contains(*ip)).map(|(c, _)| format!("{ip}/{}", c.prefix_len()))
            });
            let value = serde_json::json!({
                "ips": ips.collect::<Vec<_>>(),
                "mac": port.mac,
                "gateways": subnets.iter().map(|(_, g)| g.to_string()).collect::<Vec<_>>(),
                "logicalPort": port.lsp,
                "node": port.node,
            });
            out.push((key.clone(), value.to_string()));
        }
        out
    }
}

impl OvnNetwork {
    /// The network-status annotation of each pod with secondary interfaces made.
    fn network_status(
        desired: &stacknet_ovn::Desired,
        plan: &stacknet_engine::multinet::Plan,
    ) -> Vec<(ObjectKey, String)> {
        plan.pods
            .iter()
            .filter_map(|(key, list)| {
                let port = desired.ports.get(key)?;
                let made: Vec<_> = list
                    .iter()
                    .filter(|a| desired.attachments.contains_key(&(key.clone(), a.interface.clone())))
                    .cloned()
                    .collect();
                let status =
                    stacknet_engine::multinet::network_status(DEFAULT_NETWORK, ("eth0", &port.ips, &port.mac), &made);
                Some((key.clone(), status))
            })
            .collect()
    }
}

/// The primary network's name in pods' network-status (the CNI network name of
/// `deploy/node.yaml`'s configuration).
pub const DEFAULT_NETWORK: &str = "stacknet";

impl Backend for OvnNetwork {
    fn describe(&self) -> String {
        format!("the OVN Northbound database ({})", self.remotes)
    }

    fn observe(&mut self, change: &Change, index: &ClusterIndex) {
        match change {
            Change::Apply(ClusterObject::Pod(p)) if index.pod_id(&p.key).is_none() => {
                self.pending_up.insert(p.key.clone(), Instant::now());
            }
            Change::Delete(Kind::Pod, key) => {
                self.pending_up.remove(key);
            }
            _ => {}
        }
    }

    fn prepare(&mut self) -> Result<(), Failure> {
        if !self.restored && self.backend.client().status().borrow().connected.is_some() {
            self.restored = self.restore();
        }
        if self.restored {
            return Ok(());
        }
        let last = self.backend.client().status().borrow().last_error.clone();
        let message = match last {
            Some(e) => format!("no connection to {} yet; still trying (last attempt: {e})", self.describe()),
            None => format!("no connection to {} yet; still trying", self.describe()),
        };
        Err(Failure::new(Reason::OvnUnreachable, message))
    }

    async fn lead(&mut self, leading: bool) {
        if leading {
            // The previous leader's allocation is read back before the first write.
            self.restored = false;
        }
    }

    async fn reconcile(&mut self, engine: &mut PolicyEngine, annotate: bool) -> Result<Reconciled, Failure> {
        let started = Instant::now();
        let reserved = self
            .backend
            .client()
            .replica()
            .as_ref()
            .map(|r| stacknet_ovn::lookup::foreign_addresses(r, &self.cluster))
            .unwrap_or_default();
        self.ipam.set_reserved(reserved);
        let assignment = self.ipam.sync(engine.index());
        // The engine sees each pod with the addresses the network gives it (none: no port yet);
        // only pods whose addresses differ are touched, in place (after a restart that is
        // every pod: no second copy of them all, no membership recomputed).
        let index = engine.index();
        let moved: Vec<_> = index
            .pods()
            .filter_map(|(id, p)| {
                let ips = assignment.pods.get(&p.key).map(|(_, ips)| ips.as_slice()).unwrap_or_default();
                (p.ips != ips).then(|| (id, ips.to_vec()))
            })
            .collect();
        for (id, ips) in moved {
            engine.set_pod_ips(id, ips);
        }
        let addressed = started.elapsed();
        let mut problems = assignment.problems;
        let join = self.assign_join(engine.index(), &mut problems);
        let exposures = if self.gateways.is_some() {
            let (lb_ips, p) =
                stacknet_engine::service::assign_load_balancer_ips(engine.index(), &self.lb_pools, &self.lb_ips);
            problems.extend(p);
            let (exposures, p) = stacknet_engine::service::exposures(engine.index(), &lb_ips, &self.node_routes);
            problems.extend(p);
            self.lb_ips = lb_ips;
            exposures
        } else {
            Vec::new()
        };
        let plan = self.multinet.sync(engine.index(), self.foreign, stacknet_ovn::secondary::accepts);
        problems.extend(plan.problems.iter().cloned());
        let topology = Topology {
            cluster: self.cluster.clone(),
            nodes: assignment
                .nodes
                .iter()
                .map(|(name, subnets)| NodeNet {
                    name: name.clone(),
                    subnets: subnets.clone(),
                    management: assignment.management.get(name).cloned().unwrap_or_default(),
                    addresses: engine.index().node(name).map(|n| n.addresses.clone()).unwrap_or_default(),
                    join: join.get(name).copied(),
                })
                .collect(),
            nested: BTreeMap::new(),
            node_routes: self.node_routes.clone(),
            gateways: self.gateways.clone(),
            exposures,
            load_balancer_ips: self.lb_ips.clone(),
            multinet: plan,
        };
        let desired = stacknet_ovn::build(engine, &topology);
        let built = started.elapsed();
        for w in &desired.warnings {
            tracing::debug!("{w}");
        }
        let result = self.backend.reconcile(&desired).await;
        tracing::debug!(
            addresses_ms = addressed.as_millis() as u64,
            desired_ms = (built - addressed).as_millis() as u64,
            write_ms = (started.elapsed() - built).as_millis() as u64,
            "reconcile phases"
        );
        match result {
            Ok(report) => {
                self.ports = desired.ports.iter().map(|(k, p)| (k.clone(), p.lsp.clone())).collect();
                let annotations = if annotate { Self::annotations(&desired, &assignment.nodes) } else { Vec::new() };
                // Our LoadBalancer Services' addresses, for their status (with gateways only:
                // without, there are none to give).
                let ingress = if annotate && self.gateways.is_some() {
                    let ours = engine.index().services().filter(|s| stacknet_engine::service::is_ours(s));
                    ours.map(|s| (s.key.clone(), self.lb_ips.get(&s.key).copied().into_iter().collect())).collect()
                } else {
                    Vec::new()
                };
                let network_status =
                    if annotate { Self::network_status(&desired, &topology.multinet) } else { Vec::new() };
                Ok(Reconciled {
                    problems,
                    annotations,
                    ingress,
                    network_status,
                    transactions: report.transactions as u64,
                    operations: report.operations as u64,
                })
            }
            Err(e) => {
                let (reason, what) = if e.is_transient() {
                    (Reason::OvnUnreachable, "is unreachable")
                } else {
                    (Reason::OvnRejected, "refused the change")
                };
                let message = format!("{} {what}: {e}; retrying", self.describe());
                Err(Failure { reason, message, failed_transactions: 1 })
            }
        }
    }

    /// The database connection's status: a reconnect means the database may have changed
    /// behind our back.
    fn news(&mut self) -> Option<BoxStream<'static, News>> {
        let status = self.backend.client().status();
        let sessions = status.borrow().sessions;
        let stream = futures::stream::unfold((status, sessions), |(mut status, sessions)| async move {
            status.changed().await.ok()?;
            let now = status.borrow_and_update().sessions;
            let news = News { reconcile: now > sessions && sessions > 0, problems: Vec::new() };
            Some((news, (status, now)))
        });
        Some(stream.boxed())
    }

    fn ports_up(&mut self) -> Vec<Duration> {
        let mut took = Vec::new();
        if self.pending_up.is_empty() {
            return took;
        }
        let guard = self.backend.client().replica();
        let Some(replica) = guard.as_ref() else { return took };
        let lsps = replica.table(nb::LOGICAL_SWITCH_PORT);
        let ports = &self.ports;
        self.pending_up.retain(|key, since| {
            let up = ports.get(key).is_some_and(|name| {
                lsps.by_name(name).any(|(_, r)| {
                    r.get("up").is_some_and(|d| d.elements().first().and_then(|a| a.as_bool()) == Some(true))
                })
            });
            if up {
                took.push(since.elapsed());
            }
            !up
        });
        took
    }
}
