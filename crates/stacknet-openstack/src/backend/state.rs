//! What the backend knows of its objects in Neutron: read in full when it has to be (at
//! start, after a failure that leaves it in doubt, every `resync`), then kept and updated
//! with what Neutron answers, so that a reconcile sends only its writes (a pod start is one
//! call). The first read also sweeps for objects carrying our marker but no tag.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::cloud::Error;
use crate::neutron::{self, Port, SecurityGroup};

use super::config::POOL_ID;
use super::topology::Topology;
use super::{NeutronBackend, Report};

#[derive(Debug, Clone)]
pub(super) struct State {
    pub read_at: Instant,
    pub topology: Topology,
    /// Our security groups, with their rules, by marker.
    pub groups: BTreeMap<String, SecurityGroup>,
    /// Pods' ports by marker.
    pub ports: BTreeMap<String, Port>,
    /// Free ports by pool.
    pub pool: BTreeMap<PoolKey, Vec<Port>>,
    /// The nested nodes' trunks, by the Nova server whose port is the trunk's parent.
    pub trunks: BTreeMap<String, neutron::Trunk>,
    /// Pods' secondary interfaces' ports by marker.
    pub attachments: BTreeMap<String, Port>,
    /// What NADs' network and security group names were found to be (trusted as long as the
    /// rest: a port create on a network that went fails, and Neutron is read again).
    pub lookups: Lookups,
}

/// Names found in Neutron (a name not found is looked up again by the next reconcile).
#[derive(Debug, Clone, Default)]
pub(super) struct Lookups {
    /// By the NAD's `neutronNetwork`.
    pub networks: BTreeMap<String, NetworkInfo>,
    /// By (project, `None`: the session's; the NAD's group name or id): the group's id.
    pub groups: BTreeMap<(Option<String>, String), String>,
}

/// A network a NAD names, with its subnets (for addresses' prefix lengths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NetworkInfo {
    pub id: String,
    /// Subnet id → prefix length.
    pub subnets: BTreeMap<String, u8>,
    /// `provider:physical_network`, when it has one.
    pub physical_network: Option<String>,
    pub mtu: Option<u32>,
}

/// A pool: where its ports are (the host they are bound to, `trunk:<id>` for subports of a
/// nested node's trunk, `None`: unbound), their network, and their Keystone project (`None`:
/// the session's own).
pub(super) type PoolKey = (Option<String>, String, Option<String>);

/// A trunk's pool place.
pub(super) fn trunk_pool(trunk: &neutron::Trunk) -> String {
    format!("trunk:{}", trunk.id)
}

/// The pool a free port is in; `own`: the session's project.
pub(super) fn pool_key(p: &Port, trunks: &BTreeMap<String, neutron::Trunk>, own: Option<&str>) -> PoolKey {
    let project = Some(p.project_id.clone()).filter(|id| !id.is_empty() && Some(id.as_str()) != own);
    match trunks.values().find(|t| t.vlan_of(&p.id).is_some()) {
        Some(t) => (Some(trunk_pool(t)), p.network_id.clone(), project),
        None => (p.host.clone().filter(|h| !h.is_empty()), p.network_id.clone(), project),
    }
}

impl State {
    /// The trunk a port is a subport of.
    pub fn trunk_holding(&self, port: &str) -> Option<&neutron::Trunk> {
        self.trunks.values().find(|t| t.vlan_of(port).is_some())
    }

    /// A trunk as Neutron last answered.
    pub fn replace_trunk(&mut self, trunk: neutron::Trunk) {
        if let Some(t) = self.trunks.values_mut().find(|t| t.id == trunk.id) {
            *t = trunk;
        }
    }

    /// Takes the free port `id` out of pool `key` (it is a pod's now).
    pub fn take_free(&mut self, key: &PoolKey, id: &str) {
        if let Some(free) = self.pool.get_mut(key) {
            free.retain(|p| p.id != id);
        }
    }
}

impl NeutronBackend {
    /// Reads everything of ours (sweeping for untagged objects the first time), making the
    /// networks and router if missing.
    pub(super) async fn read(&self, report: &mut Report) -> Result<State, Error> {
        if !self.swept.load(Ordering::Relaxed) {
            self.sweep(report).await?;
            self.swept.store(true, Ordering::Relaxed);
        }
        let c = &self.config;
        let topology = self.topology(report).await?;
        let groups = neutron::security_groups(&self.cloud, &c.tag())
            .await?
            .into_iter()
            .filter(|g| c.is_ours(&g.description))
            .map(|g| (g.description.clone(), g))
            .collect();
        let trunks = self.trunks().await?;
        let pool_marker = c.marker(POOL_ID);
        let mut ports = BTreeMap::new();
        let mut attachments = BTreeMap::new();
        let mut pool: BTreeMap<PoolKey, Vec<Port>> = BTreeMap::new();
        let own = self.cloud.project_id();
        // Ours: by our owner (tagged or not), and by tag (subports, whose owner Neutron's
        // trunk driver rewrites; a port is tagged before it goes on a trunk).
        let mut seen = BTreeSet::new();
        let by_owner = neutron::ports_owned_by(&self.cloud, &c.device_owner()).await?;
        let by_tag = neutron::tagged_ports(&self.cloud, &c.tag()).await?;
        let tag = c.tag();
        for mut p in by_owner.into_iter().chain(by_tag) {
            if !seen.insert(p.id.clone()) {
                continue;
            }
            let ours = p.description == pool_marker || c.is_ours(&p.description);
            if ours && !p.tags.contains(&tag) {
                // Made by a call whose answer never came, or before a crash.
                neutron::set_tags(&self.cloud, "ports", &p.id, std::slice::from_ref(&tag)).await?;
                p.tags.push(tag.clone());
                report.updated += 1;
            }
            if p.description == pool_marker {
                pool.entry(pool_key(&p, &trunks, own.as_deref())).or_default().push(p);
            } else if c.is_attachment(&p.description) {
                attachments.insert(p.description.clone(), p);
            } else if c.is_ours(&p.description) {
                ports.insert(p.description.clone(), p);
            }
        }
        Ok(State {
            read_at: Instant::now(),
            topology,
            groups,
            ports,
            pool,
            trunks,
            attachments,
            lookups: Lookups::default(),
        })
    }

    /// The trunks whose parent port is a Nova server's (the nested nodes'), by server; trunks
    /// are never ours: only their subports are changed, and only ours.
    async fn trunks(&self) -> Result<BTreeMap<String, neutron::Trunk>, Error> {
        let trunks = neutron::trunks(&self.cloud).await?;
        let parents: Vec<String> = trunks.iter().map(|t| t.port_id.clone()).collect();
        let servers: BTreeMap<String, String> = neutron::ports_by_id(&self.cloud, &parents)
            .await?
            .into_iter()
            .filter(|p| !p.device_id.is_empty())
            .map(|p| (p.id, p.device_id))
            .collect();
        Ok(trunks.into_iter().filter_map(|t| servers.get(&t.port_id).map(|s| (s.clone(), t))).collect())
    }

    /// Objects with our description but no tag (a crash between create and tag, or a create
    /// carried out after its answer was given up on): tagged now; whatever is not wanted any
    /// more goes in the normal course of the reconcile. Ports are found by owner in every read,
    /// and tagged there.
    async fn sweep(&self, report: &mut Report) -> Result<(), Error> {
        let tags = [self.config.tag()];
        for (collection, key) in neutron::TAGGED_COLLECTIONS {
            for o in neutron::untagged(&self.cloud, collection, key, &tags[0]).await? {
                if self.config.is_ours(&o.description) {
                    tracing::info!(collection, id = %o.id, "adopting an untagged object of ours");
                    neutron::set_tags(&self.cloud, collection, &o.id, &tags).await?;
                    report.updated += 1;
                }
            }
        }
        Ok(())
    }
}
