//! Pods' ports. Each pod that policies may select has one port on its namespace's network (or
//! the shared pod network), in its namespace's project, in the security groups the plan gives
//! it, bound to its node (a bare-metal node) or a subport of its node's trunk (a nested node).
//! A new pod takes a free port of its node's pool when there is one (one call), or gets a new
//! port. Ports of pods that are gone go. Only ports of ours are touched.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use stacknet_engine::objects::ObjectKey;
use stacknet_engine::{CloudKind, ClusterIndex, ObjectRef};

use crate::cloud::Error;
use crate::neutron::{self, NewPort, Port, SecurityGroup};
use crate::secgroups::SecurityPlan;

use super::config::NeutronConfig;
use super::exec::Failures;
use super::projects::Projects;
use super::state::{PoolKey, State, trunk_pool};
use super::{NeutronBackend, PodPort, Report};

/// A port to make for a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NewPodPort {
    pub pod: ObjectKey,
    pub network: String,
    pub marker: String,
    pub security_groups: BTreeSet<String>,
    /// The node it is bound to (bare-metal nodes only: a subport is bound where its VM is).
    pub host: Option<String>,
    pub uid: String,
    /// An address the pod already has, kept: (subnet id, address).
    pub fixed: Option<(String, String)>,
    /// The trunk it goes on once made (a nested node's).
    pub trunk: Option<String>,
    pub project: Option<String>,
}

/// A change to an existing port (a pod's, or a free one a pod takes).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PortUpdate {
    pub pod: ObjectKey,
    pub port: String,
    pub changes: Value,
    /// The pool the port is taken from, if it is a free one.
    pub from_pool: Option<PoolKey>,
}

/// What Neutron must do for the pods' ports.
#[derive(Debug, Default)]
pub(super) struct PortPlan {
    pub creates: Vec<NewPodPort>,
    pub updates: Vec<PortUpdate>,
    /// Existing ports to put on their node's trunk: (trunk, port, pod).
    pub to_trunk: Vec<(String, String, ObjectKey)>,
    /// Ports of pods that are gone.
    pub gone: Vec<Port>,
    /// Pods' ports as they are now (before the plan is carried out).
    pub current: BTreeMap<ObjectKey, Port>,
    /// Each planned pod's UID (its port's device once on a trunk).
    pub uids: BTreeMap<ObjectKey, String>,
}

/// The ports the pods of `index` need, against what `state` holds. `groups`: the planned
/// security groups Neutron has, by plan id; pods of namespaces without a network or project
/// are left out (that is reported on the namespace).
pub(super) fn plan(
    index: &ClusterIndex,
    security: &SecurityPlan,
    groups: &BTreeMap<String, SecurityGroup>,
    projects: &Projects,
    state: &State,
    c: &NeutronConfig,
) -> PortPlan {
    // Nested nodes (Nova VMs with a trunk): their pods' ports go on the trunk.
    let trunk_of_node: BTreeMap<&str, &neutron::Trunk> =
        index.nodes().filter_map(|n| Some((n.name.as_str(), state.trunks.get(n.openstack_server()?)?))).collect();
    let mut out = PortPlan::default();
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    // Free ports already promised to a pod, per pool.
    let mut promised: BTreeMap<PoolKey, usize> = BTreeMap::new();
    for (_, pod) in index.pods() {
        if !pod.is_policy_subject() {
            continue;
        }
        let marker = c.pod_marker(&pod.key);
        wanted.insert(marker.clone());
        let Some((network, subnets)) = state.topology.pod_network(c.network_per_namespace, &pod.key.namespace) else {
            continue;
        };
        // A pod that has a port keeps it, in the project it was made in: Neutron cannot move
        // a port.
        let Some(project) = projects.get(&pod.key.namespace).cloned() else { continue };
        let sgs: BTreeSet<String> = security
            .ports
            .get(&pod.key)
            .into_iter()
            .flatten()
            .filter_map(|g| groups.get(g).map(|s| s.id.clone()))
            .collect();
        let trunk = pod.node.as_deref().and_then(|n| trunk_of_node.get(n));
        let host = if trunk.is_some() { None } else { pod.node.clone() };
        let uid = pod.uid.clone().unwrap_or_default();
        out.uids.insert(pod.key.clone(), uid.clone());
        // An address the pod already has is kept, if one of our subnets holds it.
        let fixed = pod.ips.iter().find_map(|ip| {
            subnets.iter().find(|(cidr, _)| cidr.contains(*ip)).map(|(_, s)| (s.clone(), ip.to_string()))
        });
        if let Some(p) = state.ports.get(&marker) {
            let have: BTreeSet<String> = p.security_groups.iter().cloned().collect();
            let mut changes = serde_json::Map::new();
            if have != sgs {
                changes.insert("security_groups".into(), json!(sgs));
            }
            if host.is_some() && p.host.as_deref() != host.as_deref() {
                changes.insert("binding:host_id".into(), json!(host));
            }
            // Neutron takes only a port with no device as a subport: the pod's UID is written
            // once it is on the trunk.
            let attach = trunk.filter(|_| state.trunk_holding(&p.id).is_none());
            let device_id = if attach.is_some() { "" } else { uid.as_str() };
            if p.device_id != device_id {
                changes.insert("device_id".into(), json!(device_id));
            }
            if !changes.is_empty() {
                out.updates.push(PortUpdate {
                    pod: pod.key.clone(),
                    port: p.id.clone(),
                    changes: Value::Object(changes),
                    from_pool: None,
                });
            }
            if let Some(t) = attach {
                out.to_trunk.push((t.id.clone(), p.id.clone(), pod.key.clone()));
            }
            out.current.insert(pod.key.clone(), p.clone());
            continue;
        }
        // A free port of the pod's node, if the pool has one: one call makes it the pod's
        // (name, owner, groups, and the pod's address if it has one). On a nested node the
        // free port is already on the node's trunk.
        let key: PoolKey = match trunk {
            Some(t) => (Some(trunk_pool(t)), network.clone(), project.clone()),
            None => (host.clone(), network.clone(), project.clone()),
        };
        let taken = promised.entry(key.clone()).or_default();
        let free = state.pool.get(&key).and_then(|free| free.len().checked_sub(*taken + 1).map(|i| &free[i]));
        match free {
            Some(free) => {
                *taken += 1;
                let mut changes = json!({
                    "name": pod.key.to_string(),
                    "description": marker,
                    "device_id": uid,
                    "security_groups": sgs,
                });
                if let Some((subnet, ip)) = &fixed
                    && !free.fixed_ips.iter().any(|f| &f.ip_address == ip)
                {
                    changes["fixed_ips"] = json!([{"subnet_id": subnet, "ip_address": ip}]);
                }
                out.updates.push(PortUpdate {
                    pod: pod.key.clone(),
                    port: free.id.clone(),
                    changes,
                    from_pool: Some(key),
                });
            }
            None => out.creates.push(NewPodPort {
                pod: pod.key.clone(),
                network,
                marker,
                security_groups: sgs,
                host,
                uid,
                fixed,
                trunk: trunk.map(|t| t.id.clone()),
                project,
            }),
        }
    }
    out.gone = state.ports.iter().filter(|(m, _)| !wanted.contains(*m)).map(|(_, p)| p.clone()).collect();
    out
}

pub(super) fn pod_port(p: &Port) -> PodPort {
    PodPort {
        port_id: p.id.clone(),
        name: p.name.clone(),
        network_id: p.network_id.clone(),
        mac: p.mac_address.clone(),
        ips: p.fixed_ips.iter().filter_map(|f| f.ip_address.parse().ok()).collect(),
        vlan: None,
        parent_port: None,
    }
}

impl NeutronBackend {
    /// Carries out the ports' plan: new ports (tagged before any goes on a trunk), updates
    /// and free ports taken, subports put on trunks and given their pod's UID, ports of gone
    /// pods deleted.
    pub(super) async fn ports(
        &self,
        plan: PortPlan,
        state: &mut State,
        report: &mut Report,
        failures: &mut Failures,
    ) -> Result<(), Error> {
        let c = &self.config;
        let owner = c.device_owner();
        for (key, p) in &plan.current {
            report.ports.insert(key.clone(), pod_port(p));
        }
        let mut to_trunk = plan.to_trunk;
        let pod = |p: &ObjectKey| ObjectRef::pod(p);
        let made = failures
            .each(
                plan.creates,
                |new| pod(&new.pod),
                |new| {
                    let owner = owner.clone();
                    async move {
                        let name = new.pod.to_string();
                        let r = async {
                            let p = neutron::create_port(
                                &self.cloud,
                                &NewPort {
                                    network_id: &new.network,
                                    name: &name,
                                    description: &new.marker,
                                    device_owner: &owner,
                                    device_id: if new.trunk.is_some() { "" } else { &new.uid },
                                    host: new.host.as_deref(),
                                    security_groups: new.security_groups.iter().cloned().collect(),
                                    fixed_ip: new.fixed.as_ref().map(|(s, ip)| (s.as_str(), ip.clone())),
                                    project_id: new.project.as_deref(),
                                },
                            )
                            .await?;
                            // Tagged before it goes on a trunk (its owner is rewritten there).
                            neutron::set_tags(&self.cloud, "ports", &p.id, &[c.tag()]).await?;
                            Ok(Port { tags: vec![c.tag()], ..p })
                        }
                        .await;
                        (new, r)
                    }
                },
            )
            .await?;
        for (new, p) in made {
            report.created += 1;
            report.ports.insert(new.pod.clone(), pod_port(&p));
            if let Some(t) = new.trunk {
                to_trunk.push((t, p.id.clone(), new.pod));
            }
            state.ports.insert(p.description.clone(), p);
        }
        let changed = failures
            .each(
                plan.updates,
                |u| pod(&u.pod),
                |u| async move {
                    let r = neutron::update_port(&self.cloud, &u.port, u.changes.clone()).await;
                    (u, r)
                },
            )
            .await?;
        for (u, p) in changed {
            report.updated += 1;
            if let Some(key) = &u.from_pool {
                state.take_free(key, &p.id);
            }
            report.ports.insert(u.pod, pod_port(&p));
            state.ports.insert(p.description.clone(), p);
        }
        let mut by_trunk: BTreeMap<String, Vec<(String, ObjectRef)>> = BTreeMap::new();
        for (trunk, port, key) in &to_trunk {
            by_trunk.entry(trunk.clone()).or_default().push((port.clone(), ObjectRef::pod(key)));
        }
        for (trunk, ports) in by_trunk {
            report.updated += self.attach(&self.cloud, state, &trunk, ports, failures).await?;
        }
        // On the trunk now: the pod's UID as the port's device.
        let owned: Vec<(ObjectKey, String, String)> = to_trunk
            .into_iter()
            .filter(|(_, port, _)| state.trunk_holding(port).is_some())
            .filter_map(|(_, port, key)| Some((plan.uids.get(&key)?.clone(), key, port)))
            .filter(|(uid, _, _)| !uid.is_empty())
            .map(|(uid, key, port)| (key, port, uid))
            .collect();
        let changed = failures
            .each(
                owned,
                |(key, _, _)| pod(key),
                |(key, id, uid)| async move {
                    let r = neutron::update_port(&self.cloud, &id, json!({"device_id": uid})).await;
                    ((key, id, uid), r)
                },
            )
            .await?;
        for ((key, _, _), p) in changed {
            report.ports.insert(key, pod_port(&p));
            state.ports.insert(p.description.clone(), p);
        }
        for (p, r) in self.delete_ports(&self.cloud, state, plan.gone).await {
            match r {
                Ok(()) => {
                    report.deleted += 1;
                    state.ports.remove(&p.description);
                }
                Err(e) => failures.sort(ObjectRef::Cloud(CloudKind::Port, p.name.clone()), e)?,
            }
        }
        for pp in report.ports.values_mut() {
            if let Some(t) = state.trunk_holding(&pp.port_id) {
                pp.vlan = t.vlan_of(&pp.port_id);
                pp.parent_port = Some(t.port_id.clone());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
