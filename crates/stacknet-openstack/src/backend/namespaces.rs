//! A network per namespace (`--network-per-namespace`): each namespace has a network of its
//! own, in its project, with a subnet cut by Neutron from each pod CIDR's subnet pool, on the
//! cluster router. What was made is kept even when a later step fails, so the next reconcile
//! finishes that network rather than making a second one. A namespace that goes takes its
//! network (its pods' ports went before; its pools' free ports go with it).

use std::collections::BTreeSet;

use stacknet_engine::{Cidr, ClusterIndex, ObjectRef};

use crate::cloud::Error;
use crate::neutron::{self, Port};

use super::config::NeutronConfig;
use super::exec::Failures;
use super::projects::Projects;
use super::state::State;
use super::topology::{NamespaceNetwork, Topology};
use super::{NeutronBackend, Report};

/// What one namespace's network lacks.
#[derive(Debug, Clone)]
pub(super) struct Unfinished {
    pub namespace: String,
    /// The project to make it in (`None`: the session's).
    pub project: Option<String>,
    /// The network, if it exists.
    pub network: Option<NamespaceNetwork>,
    /// The pools (by pod CIDR) it has no subnet from yet.
    pub subnets: Vec<(Cidr, neutron::SubnetPool)>,
}

/// The namespaces of `index` whose network is missing or unfinished. A namespace whose project
/// cannot be had is left out (that is reported on it).
pub(super) fn unfinished(
    index: &ClusterIndex,
    projects: &Projects,
    topology: &Topology,
    c: &NeutronConfig,
) -> Vec<Unfinished> {
    let mut out = Vec::new();
    for (ns, _) in index.namespaces() {
        let Some(project) = projects.get(ns) else { continue };
        let have = topology.namespaces.get(ns);
        let subnets: Vec<(Cidr, neutron::SubnetPool)> = topology
            .pools
            .iter()
            .filter(|(cidr, _)| {
                let marker = c.namespace_subnet_marker(ns, cidr);
                !have.is_some_and(|h| h.subnets.iter().any(|s| s.description == marker))
            })
            .map(|(cidr, p)| (*cidr, p.clone()))
            .collect();
        if have.is_none() || !subnets.is_empty() {
            out.push(Unfinished {
                namespace: ns.to_string(),
                project: project.clone(),
                network: have.cloned(),
                subnets,
            });
        }
    }
    out
}

/// The networks of namespaces no longer in `index`.
pub(super) fn gone(index: &ClusterIndex, topology: &Topology) -> Vec<(String, NamespaceNetwork)> {
    let names: BTreeSet<&str> = index.namespaces().map(|(n, _)| n).collect();
    topology
        .namespaces
        .iter()
        .filter(|(ns, _)| !names.contains(ns.as_str()))
        .map(|(ns, n)| (ns.clone(), n.clone()))
        .collect()
}

impl NeutronBackend {
    /// Every namespace has its network, a subnet from each pool, on the cluster router.
    pub(super) async fn namespace_networks(
        &self,
        index: &ClusterIndex,
        projects: &Projects,
        state: &mut State,
        report: &mut Report,
        failures: &mut Failures,
    ) -> Result<(), Error> {
        let c = &self.config;
        let tag = c.tag();
        for work in unfinished(index, projects, &state.topology, c) {
            let ns = work.namespace;
            let object = ObjectRef::namespace(&ns);
            let mut failed = None;
            let mut net = match work.network {
                Some(n) => n,
                None => {
                    let (marker, name) = (c.namespace_network_marker(&ns), c.name(&format!("ns-{ns}")));
                    match neutron::create_network(&self.cloud, &name, &marker, work.project.as_deref()).await {
                        Ok(n) => {
                            report.created += 1;
                            failed = neutron::set_tags(&self.cloud, "networks", &n.id, std::slice::from_ref(&tag))
                                .await
                                .err();
                            NamespaceNetwork { network: n, subnets: Vec::new() }
                        }
                        Err(e) => {
                            failures.sort(object, e)?;
                            continue;
                        }
                    }
                }
            };
            for (cidr, pool) in work.subnets {
                if failed.is_some() {
                    break;
                }
                match self.namespace_subnet(&net.network, &state.topology.router.id, &ns, cidr, &pool).await {
                    Ok(s) => {
                        report.created += 1;
                        net.subnets.push(s);
                    }
                    Err(e) => failed = Some(e),
                }
            }
            // Kept even half-made (an untagged one is adopted by its marker when Neutron is
            // read again): its pods get no port until it is finished.
            state.topology.namespaces.insert(ns, net);
            if let Some(e) = failed {
                failures.sort(object, e)?;
            }
        }
        Ok(())
    }

    /// A subnet cut from `pool` for namespace `ns`'s network, tagged and on the router; if it
    /// cannot be finished it is deleted (a subnet off the router would look done to the next
    /// reconcile).
    async fn namespace_subnet(
        &self,
        network: &neutron::Network,
        router: &str,
        ns: &str,
        cidr: Cidr,
        pool: &neutron::SubnetPool,
    ) -> Result<neutron::Subnet, Error> {
        let c = &self.config;
        let (len, version) = if cidr.network().is_ipv4() { (c.namespace_prefix_len, 4) } else { (64, 6) };
        let marker = c.namespace_subnet_marker(ns, &cidr);
        let name = c.name(&format!("ns-{ns}-v{version}"));
        let s = neutron::create_subnet_from_pool(&self.cloud, network, &name, &pool.id, len, version, &marker).await?;
        let finished = async {
            neutron::set_tags(&self.cloud, "subnets", &s.id, std::slice::from_ref(&c.tag())).await?;
            neutron::add_router_interface(&self.cloud, router, &s.id).await
        }
        .await;
        if let Err(e) = finished {
            if let Err(d) = neutron::delete(&self.cloud, "subnets", &s.id).await {
                tracing::warn!(subnet = %s.id, error = %d, "could not delete a half-made subnet");
            }
            return Err(e);
        }
        Ok(s)
    }

    /// The networks of namespaces that are gone (their pods' ports went before): their free
    /// ports deleted, off the router, then deleted with their subnets.
    pub(super) async fn gone_namespace_networks(
        &self,
        index: &ClusterIndex,
        state: &mut State,
        report: &mut Report,
        failures: &mut Failures,
    ) -> Result<(), Error> {
        for (ns, net) in gone(index, &state.topology) {
            let free: Vec<Port> = state
                .pool
                .iter_mut()
                .filter(|((_, n, _), _)| *n == net.network.id)
                .flat_map(|(_, f)| std::mem::take(f))
                .collect();
            for (_, r) in self.delete_ports(&self.cloud, state, free).await {
                r?;
                report.deleted += 1;
            }
            let r: Result<(), Error> = async {
                for s in &net.subnets {
                    neutron::remove_router_interface(&self.cloud, &state.topology.router.id, &s.id).await?;
                }
                neutron::delete(&self.cloud, "networks", &net.network.id).await
            }
            .await;
            match r {
                Ok(()) => {
                    report.deleted += 1;
                    state.topology.namespaces.remove(&ns);
                }
                Err(e) => failures.sort(ObjectRef::namespace(&ns), e)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::fixtures::{self, from};
    use serde_json::json;
    use stacknet_engine::manifest;

    fn index(names: &[&str]) -> ClusterIndex {
        let docs: Vec<String> =
            names.iter().map(|n| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {n}}}\n")).collect();
        ClusterIndex::from_objects(manifest::parse("ns.yaml", &docs.join("---\n")).unwrap().objects)
    }

    fn topology(c: &NeutronConfig, namespaces: &[(&str, &[&str])]) -> Topology {
        let cidr: Cidr = "10.0.0.0/16".parse().unwrap();
        Topology {
            pools: [(cidr, from(json!({"id": "pool4", "prefixes": ["10.0.0.0/16"]})))].into(),
            namespaces: namespaces
                .iter()
                .map(|(ns, subnets)| {
                    let subnets = subnets
                        .iter()
                        .map(|s| {
                            let marker = c.namespace_subnet_marker(ns, &s.parse().unwrap());
                            from(json!({"id": format!("sub-{ns}"), "network_id": format!("net-{ns}"), "cidr": "10.0.1.0/24", "description": marker}))
                        })
                        .collect();
                    let network = from(json!({"id": format!("net-{ns}"), "description": c.namespace_network_marker(ns)}));
                    (ns.to_string(), NamespaceNetwork { network, subnets })
                })
                .collect(),
            ..fixtures::topology(None)
        }
    }

    #[test]
    fn a_namespace_without_a_network_or_a_subnet_is_unfinished_and_a_finished_one_is_not() {
        let c = NeutronConfig::new("t", vec!["10.0.0.0/16".parse().unwrap()]);
        let topo = topology(&c, &[("done", &["10.0.0.0/16"]), ("half", &[])]);
        let projects: Projects =
            [("done".into(), None), ("half".into(), None), ("new".into(), Some("p-new".into()))].into();
        let work = unfinished(&index(&["done", "half", "new", "noproject"]), &projects, &topo, &c);
        let summary: Vec<(&str, bool, usize, Option<&str>)> = work
            .iter()
            .map(|w| (w.namespace.as_str(), w.network.is_some(), w.subnets.len(), w.project.as_deref()))
            .collect();
        // `noproject` has no usable project: left out (reported elsewhere).
        assert_eq!(summary, [("half", true, 1, None), ("new", false, 1, Some("p-new"))]);
    }

    #[test]
    fn a_gone_namespace_takes_its_network() {
        let c = NeutronConfig::new("t", vec!["10.0.0.0/16".parse().unwrap()]);
        let topo = topology(&c, &[("kept", &["10.0.0.0/16"]), ("left", &["10.0.0.0/16"])]);
        let gone: Vec<String> = gone(&index(&["kept"]), &topo).into_iter().map(|(ns, _)| ns).collect();
        assert_eq!(gone, ["left"]);
    }
}
