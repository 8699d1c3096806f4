//! The Neutron backend: the cluster's pods, policies and pod networks made equal in Neutron.
//!
//! A reconcile reads what is ours (by tag; the first one also sweeps for objects carrying our
//! description but no tags, left by a crash between create and tag), then changes only the
//! difference, in an order that never leaves a port less protected than either its old or new
//! state would: security groups are created and given their rules first, ports then move to
//! their new groups, and only then do groups nobody uses go. Objects that are not ours are
//! never changed or deleted. A failure on one object (an address taken, a quota) is reported
//! against it and the rest goes on.
//!
//! One module per concern, each a pure plan (what Neutron must do, given what the engine wants
//! and what Neutron holds) and a thin executor:
//! [`config`] (names and ownership markers), [`state`] (what Neutron holds of ours),
//! [`exec`] (calls run concurrently; failures sorted into outages and per-object problems),
//! [`topology`] (the pod and Service networks, the cluster router), [`projects`] (namespaces'
//! Keystone projects), [`groups`] (security groups and rules), [`namespaces`] (a network per
//! namespace), [`ports`] (pods' ports), [`attachments`] (pods' secondary interfaces on
//! Neutron networks the NetworkAttachmentDefinitions name), [`trunks`] (nested nodes' subports
//! and VLANs) and [`pools`] (free ports per node, within quota).

mod attachments;
mod config;
mod exec;
#[cfg(test)]
mod fixtures;
mod groups;
mod namespaces;
mod pools;
mod ports;
mod projects;
mod state;
mod topology;
mod trunks;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use stacknet_engine::multinet::Plan;
use stacknet_engine::objects::ObjectKey;
use stacknet_engine::{PolicyEngine, Problem};

use crate::cloud::{Cloud, Error};
use crate::secgroups::{self, SecurityPlan};

pub use attachments::{AttachedPort, HeldAttachment, SriovDevice, accepts, sriov_devices};
pub use config::NeutronConfig;
pub(crate) use exec::problem_of;
pub use pools::{PoolNode, PoolReport};
pub use topology::{NamespaceNetwork, Topology};

use exec::Failures;
use state::State;

/// A pod's port, as the node path and tracing need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPort {
    pub port_id: String,
    /// The Neutron port's name (`ns/pod`): what OVN shows as the port's name (ovn-trace too).
    pub name: String,
    pub network_id: String,
    pub mac: String,
    pub ips: Vec<IpAddr>,
    /// On a nested node (a Nova VM): the pod's VLAN on the VM's trunk, and the trunk's
    /// parent port (the VM's own).
    pub vlan: Option<u16>,
    pub parent_port: Option<String>,
}

impl PodPort {
    /// OVN's logical switch for the port's network (ML2/OVN's naming).
    pub fn switch(&self) -> String {
        format!("neutron-{}", self.network_id)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub created: usize,
    pub updated: usize,
    pub deleted: usize,
    /// Neutron calls sent by this reconcile.
    pub calls: u64,
    pub problems: Vec<Problem>,
    /// The networks, subnets and router the pods and VIPs are on.
    pub topology: Option<Topology>,
    /// Every pod with a port.
    pub ports: BTreeMap<ObjectKey, PodPort>,
    /// The pods whose secondary interfaces all have their ports: each one's, in the
    /// selection's order.
    pub attachments: BTreeMap<ObjectKey, Vec<AttachedPort>>,
    pub plan: SecurityPlan,
}

pub struct NeutronBackend {
    cloud: Cloud,
    /// The pools' refills, counted apart from the reconciles' calls.
    refill_cloud: Cloud,
    config: NeutronConfig,
    /// Whether the sweep for untagged objects of ours has been done.
    swept: AtomicBool,
    /// What Neutron holds of ours, as last read and since written; `None`: read it again.
    state: tokio::sync::Mutex<Option<State>>,
    /// Keystone projects as namespaces' annotations name them (name or id → id, and when it
    /// was looked up: trusted as long as the state is).
    projects: std::sync::Mutex<BTreeMap<String, (String, Instant)>>,
    /// Reconciles (pod starts) under way and when the last one ended: pool refills wait for
    /// a quiet moment, so that a start never queues behind them at Neutron.
    starts: Starts,
}

/// How long after the last reconcile a pool refill may call Neutron.
pub const REFILL_QUIET: std::time::Duration = std::time::Duration::from_millis(100);

/// Reconciles under way, and when the last one ended.
#[derive(Default)]
struct Starts {
    busy: std::sync::atomic::AtomicUsize,
    last: std::sync::Mutex<Option<Instant>>,
}

/// One reconcile under way (ended when dropped).
struct Busy<'a>(&'a Starts);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        *self.0.last.lock().expect("not poisoned") = Some(Instant::now());
        self.0.busy.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Starts {
    fn enter(&self) -> Busy<'_> {
        self.busy.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Busy(self)
    }

    /// Returns once no reconcile is under way and none ended in the last `quiet`.
    async fn quiet(&self, quiet: std::time::Duration) {
        loop {
            let busy = self.busy.load(std::sync::atomic::Ordering::SeqCst) > 0;
            let since = self.last.lock().expect("not poisoned").map(|t| t.elapsed());
            let wait = match (busy, since) {
                (true, _) => quiet,
                (false, Some(s)) if s < quiet => quiet - s,
                _ => return,
            };
            tokio::time::sleep(wait.max(std::time::Duration::from_millis(5))).await;
        }
    }
}

impl NeutronBackend {
    pub fn new(cloud: Cloud, config: NeutronConfig) -> NeutronBackend {
        NeutronBackend {
            refill_cloud: cloud.counted_apart(),
            cloud,
            config,
            swept: AtomicBool::new(false),
            state: tokio::sync::Mutex::new(None),
            projects: Default::default(),
            starts: Starts::default(),
        }
    }

    pub fn cloud(&self) -> &Cloud {
        &self.cloud
    }

    pub fn config(&self) -> &NeutronConfig {
        &self.config
    }

    /// Forgets what is known of Neutron: the next reconcile reads it all again.
    pub async fn invalidate(&self) {
        *self.state.lock().await = None;
        self.projects.lock().expect("not poisoned").clear();
    }

    /// Makes Neutron equal to what `engine` says, with no secondary networks (a port of ours
    /// for one goes): [`Self::reconcile_with`] an empty multinet plan.
    pub async fn reconcile(&self, engine: &PolicyEngine) -> Result<Report, Error> {
        self.reconcile_with(engine, &Plan::default()).await
    }

    /// Makes Neutron equal to what `engine` says, the pods' secondary interfaces as `multinet`
    /// (the engine's multinet plan, made with [`accepts`]) decides. `Err` only when nothing
    /// could be read or Neutron or Keystone is unreachable; per-object failures are in the
    /// report's problems (the plan's own problems are not repeated there).
    pub async fn reconcile_with(&self, engine: &PolicyEngine, multinet: &Plan) -> Result<Report, Error> {
        let _busy = self.starts.enter();
        let start_calls = self.cloud.calls();
        let mut report = Report { plan: secgroups::plan(engine, &self.config.families()), ..Report::default() };
        let mut guard = self.state.lock().await;
        let mut state = match guard.take() {
            Some(s) if s.read_at.elapsed() < self.config.resync => s,
            _ => self.read(&mut report).await?,
        };
        let mut failures = Failures::default();
        let result = self.apply(engine, multinet, &mut state, &mut report, &mut failures).await;
        report.calls = self.cloud.calls() - start_calls;
        match result {
            Ok(lookups) => {
                // Kept unless a failure leaves what we know of Neutron in doubt.
                if !failures.stale {
                    *guard = Some(state);
                }
                report.problems = failures.problems;
                report.problems.extend(lookups);
                Ok(report)
            }
            Err(e) => {
                // A create whose answer never came may still be carried out: the next read
                // sweeps for untagged objects of ours again.
                self.swept.store(false, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Neutron's problems go in `failures`; Keystone's are returned.
    async fn apply(
        &self,
        engine: &PolicyEngine,
        multinet: &Plan,
        state: &mut State,
        report: &mut Report,
        failures: &mut Failures,
    ) -> Result<Vec<Problem>, Error> {
        let index = engine.index();
        let plan = std::mem::take(&mut report.plan);
        let groups = self.security_groups(&plan, &mut state.groups, report, failures).await?;
        let (projects, lookups) = self.projects(index).await?;
        if self.config.network_per_namespace {
            self.namespace_networks(index, &projects, state, report, failures).await?;
        }
        let ports = ports::plan(index, &plan, &groups, &projects, state, &self.config);
        self.ports(ports, state, report, failures).await?;
        // Secondary interfaces, once their pods' primary ports are there.
        let own = self.cloud.project_id();
        let needed = attachments::needed(index, multinet, state, &self.config, own.as_deref());
        let names = self.resolve_attachment_names(needed, state, own.as_deref()).await?;
        let attach = attachments::plan(index, multinet, &names, state, &self.config, own.as_deref());
        self.attachments(attach, state, report, failures).await?;
        if self.config.network_per_namespace {
            self.gone_namespace_networks(index, state, report, failures).await?;
        }
        report.topology = Some(state.topology.clone());
        // Groups nobody needs, now that no port of ours is in them and no rule names them.
        self.remove_unused_groups(&plan, &mut state.groups, report, failures).await?;
        report.plan = plan;
        Ok(lookups)
    }
}

#[cfg(test)]
mod starts_tests {
    use std::time::Duration;

    use super::Starts;

    /// A refill's call waits while a reconcile is under way and for the quiet time after it.
    #[tokio::test]
    async fn a_refill_waits_for_the_reconciles_and_a_quiet_moment_after_them() {
        let starts = Starts::default();
        let quiet = Duration::from_millis(50);
        // Nothing under way, nothing before: at once.
        tokio::time::timeout(Duration::from_millis(20), starts.quiet(quiet)).await.expect("at once");
        let busy = starts.enter();
        assert!(
            tokio::time::timeout(Duration::from_millis(150), starts.quiet(quiet)).await.is_err(),
            "must wait while a reconcile is under way"
        );
        drop(busy);
        let ended = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(2), starts.quiet(quiet)).await.expect("quiet after it");
        assert!(ended.elapsed() >= quiet, "waited the quiet time after the reconcile: {:?}", ended.elapsed());
    }
}
