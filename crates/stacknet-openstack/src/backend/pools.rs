//! Port pools: free ports kept ready per node, network and Keystone project, so that a pod
//! start is one call (the pod takes a free port). A refill tops every pool up to `pool_size`
//! in bulk, within each project's port quota (a pool never takes the last ports a pod start
//! would need: it stops at the quota, and a pod takes a free port before making one). A
//! nested node's free ports go on its trunk, each with its VLAN, so that a pod start there is
//! one call too. The free ports of nodes that left the cluster are deleted. Refills run in the
//! background: the backend's state is held only to read it, and to add what was made.

use std::collections::{BTreeMap, BTreeSet};

use stacknet_engine::multinet::{NetTopology, Plan, VnicType};
use stacknet_engine::{CloudKind, ObjectRef, PolicyEngine, Problem, Reason};

use crate::cloud::Error;
use crate::neutron::{self, NewPort, Port};

use super::config::{NeutronConfig, POOL_ID};
use super::exec::{Failures, concurrently};
use super::state::{PoolKey, State, pool_key, trunk_pool};
use super::{NeutronBackend, Report};

/// Ports created by one call, at most.
const POOL_BATCH: usize = 32;

/// A node whose pool [`NeutronBackend::refill_pools`] keeps full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolNode {
    pub name: String,
    /// The Nova server it is, if it is one (its trunk gets the pool's ports as subports).
    pub server: Option<String>,
    /// The namespaces with pods on it, with their `stacknet.io/openstack-project`
    /// annotation: a pool per network and project the node has pods of.
    pub namespaces: BTreeMap<String, Option<String>>,
    /// Secondary networks its pods attach to: (namespace, the NAD's `neutronNetwork`, a name
    /// or id): a pool of that network per project too, once a reconcile has looked it up.
    pub secondary: BTreeSet<(String, String)>,
}

/// What a refill of the pools did.
#[derive(Debug, Clone, Default)]
pub struct PoolReport {
    pub created: usize,
    /// Free ports of nodes that are gone, deleted.
    pub deleted: usize,
    /// Neutron calls the refill sent.
    pub calls: u64,
    /// Free ports per node after the refill.
    pub free: BTreeMap<String, usize>,
    pub problems: Vec<Problem>,
}

/// A pool short of free ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Wanted {
    pub node: String,
    pub network: String,
    pub project: Option<String>,
    /// The node's trunk, if it is nested.
    pub trunk: Option<String>,
    /// Ports to make.
    pub missing: usize,
    /// Free ports it lacks (a nested node's may come from loose ones).
    pub short: usize,
}

/// What a refill must do.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct RefillPlan {
    /// Pools of nodes no longer in the cluster: their free ports go.
    pub gone: Vec<PoolKey>,
    pub wanted: Vec<Wanted>,
}

/// The pools `nodes` need against what `state` holds. `known`: a project annotation's id, if
/// it was looked up (a pool waits for the reconcile to look it up); `own`: the session's
/// project.
pub(super) fn plan(
    nodes: &[PoolNode],
    state: &State,
    c: &NeutronConfig,
    known: impl Fn(&str) -> Option<String>,
    own: Option<&str>,
) -> RefillPlan {
    let places: BTreeSet<String> = nodes
        .iter()
        .flat_map(|n| {
            let trunk = n.server.as_ref().and_then(|s| state.trunks.get(s)).map(trunk_pool);
            std::iter::once(n.name.clone()).chain(trunk)
        })
        .collect();
    let gone: Vec<PoolKey> = state
        .pool
        .keys()
        .filter(|(place, _, _)| place.as_ref().is_some_and(|p| !places.contains(p)))
        .cloned()
        .collect();
    // Free ports that should have gone on a trunk and did not: used before new ones.
    let mut loose: BTreeMap<(String, Option<String>), usize> = state
        .pool
        .iter()
        .filter(|((place, _, _), _)| place.is_none())
        .map(|((_, n, p), free)| ((n.clone(), p.clone()), free.len()))
        .collect();
    let mut wanted = Vec::new();
    for node in nodes {
        // (network, project) of the node's pods, as far as they are known.
        let mut pools: BTreeSet<(String, Option<String>)> = BTreeSet::new();
        // A namespace's project: `None` the session's; `Err` not looked up yet.
        let project_of = |ns: &str| -> Result<Option<String>, ()> {
            match node.namespaces.get(ns).cloned().flatten() {
                None => Ok(None),
                Some(a) => known(&a).map(|id| Some(id).filter(|id| Some(id.as_str()) != own)).ok_or(()),
            }
        };
        for (ns, name) in &node.secondary {
            let (Ok(project), Some(info)) = (project_of(ns), state.lookups.networks.get(name)) else { continue };
            pools.insert((info.id.clone(), project));
        }
        for ns in node.namespaces.keys() {
            let Ok(project) = project_of(ns) else { continue };
            let network = if c.network_per_namespace {
                state.topology.namespaces.get(ns).map(|n| n.network.id.clone())
            } else {
                state.topology.network.as_ref().map(|n| n.id.clone())
            };
            if let Some(network) = network {
                pools.insert((network, project));
            }
        }
        if let Some(n) = state.topology.network.as_ref().filter(|_| !c.network_per_namespace) {
            pools.insert((n.id.clone(), None));
        }
        let trunk = node.server.as_ref().and_then(|s| state.trunks.get(s));
        for (network, project) in pools {
            let place = match trunk {
                Some(t) => trunk_pool(t),
                None => node.name.clone(),
            };
            let free = state.pool.get(&(Some(place), network.clone(), project.clone())).map_or(0, Vec::len);
            if free >= c.pool_size {
                continue;
            }
            let short = c.pool_size - free;
            let mut missing = short;
            if trunk.is_some() {
                let l = loose.entry((network.clone(), project.clone())).or_default();
                let reused = (*l).min(missing);
                *l -= reused;
                missing -= reused;
            }
            wanted.push(Wanted {
                node: node.name.clone(),
                network,
                project,
                trunk: trunk.map(|t| t.id.clone()),
                missing,
                short,
            });
        }
    }
    RefillPlan { gone, wanted }
}

/// How many ports `w` may make with `headroom` ports left in its project's quota (`None`: no
/// limit), and the problem when the quota cuts it short.
pub(super) fn within_quota(w: &Wanted, headroom: Option<u64>) -> (usize, Option<Problem>) {
    match headroom {
        Some(h) if h < w.missing as u64 => {
            let of = w.project.as_ref().map_or("the project".to_string(), |p| format!("project {p}"));
            let problem = Problem::new(
                ObjectRef::node(&w.node),
                Reason::QuotaExceeded,
                format!(
                    "the port pool of node {} wants {} more free ports; the port quota of {of} leaves {h}",
                    w.node, w.missing
                ),
            );
            (h as usize, Some(problem))
        }
        _ => (w.missing, None),
    }
}

/// Free ports per node (a nested node's are on its trunk).
pub(super) fn free_per_node(state: &State, nodes: &[PoolNode]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for ((place, _, _), free) in &state.pool {
        let Some(place) = place else { continue };
        let node = match place.strip_prefix("trunk:") {
            Some(id) => nodes
                .iter()
                .find(|n| n.server.as_ref().and_then(|s| state.trunks.get(s)).is_some_and(|t| t.id == id))
                .map(|n| n.name.clone()),
            None => Some(place.clone()),
        };
        if let Some(node) = node {
            *out.entry(node).or_default() += free.len();
        }
    }
    out
}

impl NeutronBackend {
    /// The nodes whose pools [`Self::refill_pools`] keeps: the cluster's.
    pub fn nodes_of(engine: &PolicyEngine) -> Vec<PoolNode> {
        Self::nodes_with(engine, &Plan::default())
    }

    /// The same, with pools of the secondary networks the `multinet` plan's pods attach to
    /// (their normal ports; an SR-IOV port is made for its device).
    pub fn nodes_with(engine: &PolicyEngine, multinet: &Plan) -> Vec<PoolNode> {
        let mut secondary: BTreeMap<&str, BTreeSet<(String, String)>> = BTreeMap::new();
        for a in multinet.pods.values().flatten() {
            if let Some(NetTopology::Neutron { network, vnic: VnicType::Normal, .. }) =
                multinet.networks.get(&a.network).map(|n| &n.topology)
            {
                secondary.entry(a.node.as_str()).or_default().insert((a.pod.namespace.clone(), network.clone()));
            }
        }
        let index = engine.index();
        let mut namespaces: BTreeMap<&str, BTreeMap<String, Option<String>>> = BTreeMap::new();
        for (_, p) in index.pods() {
            if let Some(n) = &p.node {
                let ns = &p.key.namespace;
                let project = index.namespace_object(ns).and_then(|o| o.project.clone());
                namespaces.entry(n.as_str()).or_default().insert(ns.clone(), project);
            }
        }
        index
            .nodes()
            .map(|n| PoolNode {
                name: n.name.clone(),
                server: n.openstack_server().map(str::to_string),
                namespaces: namespaces.get(n.name.as_str()).cloned().unwrap_or_default(),
                secondary: secondary.get(n.name.as_str()).cloned().unwrap_or_default(),
            })
            .collect()
    }

    /// Tops up every node's pools (see the module's documentation); `nodes` is the cluster's
    /// every node.
    pub async fn refill_pools(&self, nodes: &[PoolNode]) -> Result<PoolReport, Error> {
        let c = &self.config;
        let cloud = &self.refill_cloud;
        let start_calls = cloud.calls();
        let mut report = PoolReport::default();
        if c.pool_size == 0 {
            return Ok(report);
        }
        let mut failures = Failures::default();
        let own = cloud.project_id();
        let wanted = {
            let mut guard = self.state.lock().await;
            if guard.is_none() {
                *guard = Some(self.read(&mut Report::default()).await?);
            }
            let state = guard.as_mut().expect("state was just read");
            let plan = plan(nodes, state, c, |a| self.known_project(a), own.as_deref());
            // One that cannot be deleted is found in its pool again by the next read.
            let taken: Vec<Port> = plan.gone.iter().flat_map(|k| state.pool.remove(k).unwrap_or_default()).collect();
            for (p, r) in self.delete_ports(cloud, state, taken).await {
                match r {
                    Ok(()) => report.deleted += 1,
                    Err(e) => failures.note(ObjectRef::Cloud(CloudKind::Port, p.id.clone()), &e),
                }
            }
            plan.wanted
        };
        // Each project's quota headroom, asked once.
        let mut headroom: BTreeMap<Option<String>, Option<u64>> = BTreeMap::new();
        let (owner, marker, name) = (c.device_owner(), c.marker(POOL_ID), c.name(POOL_ID));
        let mut made: Vec<Port> = Vec::new();
        // Nested nodes: (node, trunk, network, project, how many free ports it wants on the trunk).
        let mut nested: Vec<(String, String, String, Option<String>, usize)> = Vec::new();
        for w in wanted {
            // Pod starts first: each call of the refill waits for a quiet moment.
            self.starts.quiet(super::REFILL_QUIET).await;
            if !headroom.contains_key(&w.project) {
                let h = match w.project.as_ref().or(own.as_ref()) {
                    Some(p) => neutron::port_headroom(cloud, p).await?,
                    None => None,
                };
                headroom.insert(w.project.clone(), h);
            }
            let room = headroom.get_mut(&w.project).expect("just inserted");
            let (mut missing, cut) = within_quota(&w, *room);
            failures.problems.extend(cut);
            if let Some(t) = &w.trunk {
                nested.push((w.node.clone(), t.clone(), w.network.clone(), w.project.clone(), w.short));
            }
            while missing > 0 {
                self.starts.quiet(super::REFILL_QUIET).await;
                let n = missing.min(POOL_BATCH);
                let new: Vec<NewPort> = (0..n)
                    .map(|_| NewPort {
                        network_id: &w.network,
                        name: &name,
                        description: &marker,
                        device_owner: &owner,
                        device_id: "",
                        // A subport is bound where its VM is, by Neutron.
                        host: if w.trunk.is_some() { None } else { Some(&w.node) },
                        security_groups: Vec::new(),
                        fixed_ip: None,
                        project_id: w.project.as_deref(),
                    })
                    .collect();
                match neutron::create_ports(cloud, &new).await {
                    Ok(ports) => {
                        missing -= n;
                        *room = room.map(|h| h.saturating_sub(n as u64));
                        report.created += ports.len();
                        made.extend(ports);
                    }
                    Err(e) => {
                        failures.note(ObjectRef::node(&w.node), &e);
                        break;
                    }
                }
            }
        }
        // Tags are for listing (and for finding subports, whose owner the trunk rewrites):
        // set before any port goes on a trunk.
        let tags = [c.tag()];
        let tags_ref = &tags;
        let ids: Vec<String> = made.iter().map(|p| p.id.clone()).collect();
        let tagged = concurrently(ids, |id| async move {
            self.starts.quiet(super::REFILL_QUIET).await;
            let r = neutron::set_tags(cloud, "ports", &id, tags_ref).await;
            (id, r)
        })
        .await;
        let all_tagged = tagged.iter().all(|(_, r)| r.is_ok());
        if let Some((id, Err(e))) = tagged.into_iter().find(|(_, r)| r.is_err()) {
            failures.note(ObjectRef::Cloud(CloudKind::Port, id), &e);
        }
        let mut guard = self.state.lock().await;
        if let Some(state) = guard.as_mut() {
            for p in made {
                let free = state.pool.entry(pool_key(&p, &state.trunks, own.as_deref())).or_default();
                if !free.iter().any(|f| f.id == p.id) {
                    free.push(Port { tags: tags.to_vec(), ..p });
                }
            }
            // Under the state's lock: VLAN ids are chosen by one writer at a time.
            if all_tagged {
                for (node, trunk, network, project, n) in nested {
                    let loose = state.pool.entry((None, network, project)).or_default();
                    let take = n.min(loose.len());
                    let ports: Vec<Port> = loose.split_off(loose.len() - take);
                    let list = ports.iter().map(|p| (p.id.clone(), ObjectRef::node(&node))).collect();
                    if let Err(e) = self.attach(cloud, state, &trunk, list, &mut failures).await {
                        failures.note(ObjectRef::node(&node), &e);
                    }
                    // Each where it now is: on the trunk, or loose for the next refill.
                    for p in ports {
                        let key = pool_key(&p, &state.trunks, own.as_deref());
                        state.pool.entry(key).or_default().push(p);
                    }
                }
            }
            report.free = free_per_node(state, nodes);
        }
        if failures.stale {
            // A call whose outcome is unknown: Neutron is read again before it is trusted.
            *guard = None;
        }
        report.problems = failures.problems;
        report.calls = cloud.calls() - start_calls;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::backend::fixtures::{self, from};

    fn config(pool_size: usize) -> NeutronConfig {
        NeutronConfig { pool_size, ..NeutronConfig::new("t", vec!["10.0.0.0/16".parse().unwrap()]) }
    }

    fn free(id: &str) -> Port {
        from(json!({"id": id, "description": "stacknet:t:pool", "network_id": "net", "mac_address": "m"}))
    }

    fn state() -> State {
        fixtures::state(fixtures::topology(Some("net")))
    }

    fn node(name: &str, server: Option<&str>, namespaces: &[(&str, Option<&str>)]) -> PoolNode {
        PoolNode {
            name: name.into(),
            server: server.map(String::from),
            namespaces: namespaces.iter().map(|(n, p)| (n.to_string(), p.map(String::from))).collect(),
            secondary: BTreeSet::new(),
        }
    }

    /// Each wanted pool as `node project trunk missing/short`.
    fn summary(plan: &RefillPlan) -> Vec<String> {
        plan.wanted
            .iter()
            .map(|w| {
                let (p, t) = (w.project.as_deref().unwrap_or("-"), w.trunk.as_deref().unwrap_or("-"));
                format!("{} {p} {t} {}/{}", w.node, w.missing, w.short)
            })
            .collect()
    }

    #[test]
    fn each_node_is_topped_up_to_the_pool_size_per_project() {
        let mut s = state();
        s.pool.insert((Some("n1".into()), "net".into(), None), vec![free("f1")]);
        let nodes = [node("n1", None, &[("x", None), ("a", Some("team-a")), ("b", Some("unknown"))])];
        let known = |a: &str| (a == "team-a").then(|| "id-a".to_string());
        let plan = plan(&nodes, &s, &config(3), known, Some("own"));
        // The shared network's default pool lacks 2; team-a's lacks 3; an annotation not
        // looked up yet waits for the reconcile.
        assert_eq!(summary(&plan), ["n1 - - 2/2", "n1 id-a - 3/3"]);
        assert!(plan.gone.is_empty());
    }

    #[test]
    fn a_secondary_network_gets_a_pool_once_looked_up_in_the_pods_project() {
        let mut s = state();
        let mut n = node("n1", None, &[("x", None), ("a", Some("team-a"))]);
        n.secondary = [("x".to_string(), "physnet1".to_string()), ("a".to_string(), "physnet1".to_string())].into();
        let known = |a: &str| (a == "team-a").then(|| "id-a".to_string());
        // Not looked up by a reconcile yet: only the pod network's pools.
        let wanted = |s: &State| -> Vec<String> {
            plan(std::slice::from_ref(&n), s, &config(2), known, Some("own"))
                .wanted
                .iter()
                .map(|w| format!("{} {}", w.network, w.project.as_deref().unwrap_or("-")))
                .collect()
        };
        assert_eq!(wanted(&s), ["net -", "net id-a"]);
        s.lookups.networks.insert(
            "physnet1".into(),
            crate::backend::state::NetworkInfo {
                id: "net-phys".into(),
                subnets: BTreeMap::new(),
                physical_network: Some("physnet1".into()),
                mtu: None,
            },
        );
        assert_eq!(wanted(&s), ["net -", "net id-a", "net-phys -", "net-phys id-a"]);
    }

    #[test]
    fn a_nested_node_reuses_loose_free_ports_before_making_new_ones() {
        let mut s = state();
        s.pool.insert((None, "net".into(), None), vec![free("loose-1")]);
        let plan = plan(&[node("n2", Some("vm-2"), &[])], &s, &config(2), |_| None, None);
        assert_eq!(summary(&plan), ["n2 - t2 1/2"]);
    }

    #[test]
    fn the_pools_of_gone_nodes_are_emptied_and_a_full_pool_wants_nothing() {
        let mut s = state();
        s.pool.insert((Some("n1".into()), "net".into(), None), vec![free("f1")]);
        s.pool.insert((Some("old".into()), "net".into(), None), vec![free("f2")]);
        let plan = plan(&[node("n1", None, &[])], &s, &config(1), |_| None, None);
        assert_eq!(plan.gone, [(Some("old".to_string()), "net".to_string(), None)]);
        assert!(plan.wanted.is_empty());
    }

    #[test]
    fn the_quota_caps_a_refill_and_says_so_on_the_node() {
        let w = Wanted {
            node: "n1".into(),
            network: "net".into(),
            project: Some("p".into()),
            trunk: None,
            missing: 5,
            short: 5,
        };
        assert_eq!(within_quota(&w, None), (5, None));
        assert_eq!(within_quota(&w, Some(9)), (5, None));
        let (n, problem) = within_quota(&w, Some(2));
        let problem = problem.expect("cut short");
        assert_eq!(n, 2);
        assert_eq!((problem.object.to_string(), problem.reason), ("Node n1".to_string(), Reason::QuotaExceeded));
        assert!(problem.message.ends_with("the port quota of project p leaves 2"), "{}", problem.message);
    }

    #[test]
    fn free_ports_are_counted_per_node_trunks_included() {
        let mut s = state();
        s.pool.insert((Some("n1".into()), "net".into(), None), vec![free("a"), free("b")]);
        s.pool.insert((Some("trunk:t2".into()), "net".into(), None), vec![free("c")]);
        s.pool.insert((None, "net".into(), None), vec![free("loose")]);
        let nodes = [node("n1", None, &[]), node("n2", Some("vm-2"), &[])];
        assert_eq!(free_per_node(&s, &nodes), BTreeMap::from([("n1".to_string(), 2), ("n2".to_string(), 1)]));
    }
}
