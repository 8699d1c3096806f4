//! Deciding probes on real dataplanes. Today: ovn-trace. A private OVN (NB, SB, ovn-northd) is
//! programmed by the OVN backend exactly as a cluster would be, and every probe is traced
//! through the logical pipeline ovn-northd generated: the verdict is OVN's, not ours.
#![forbid(unsafe_code)]

pub mod conformance;
pub mod live;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

use stacknet_engine::PolicyEngine;
use stacknet_engine::objects::{ObjectKey, Protocol};
use stacknet_engine::reach::{Matrix, ProbeSpec};
use stacknet_ovn::trace::{CT_STAGES, TraceProbe, pod_to_pod, pod_to_vip};
use stacknet_ovn::{Desired, OvnBackend, Report, Topology, build};
use stacknet_sandbox::Ovn;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("OVN sandbox: {0}")]
    Sandbox(#[from] stacknet_sandbox::Error),
    #[error("programming OVN: {0}")]
    Backend(#[from] stacknet_ovsdb::Error),
    #[error("cannot trace {0}")]
    Probe(String),
    #[error("live dataplane: {0}")]
    Live(String),
    /// A setting of the tiers (an environment variable) that cannot be used.
    #[error("{0}")]
    Setting(String),
}

/// One pod-to-pod (or pod-to-VIP) probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub from: ObjectKey,
    pub to: ObjectKey,
    pub port: u16,
    pub protocol: Protocol,
}

/// One probe per ordered pair of distinct pods, rows in `pods` order.
pub(crate) fn pair_probes(pods: &[ObjectKey], spec: ProbeSpec) -> Vec<Probe> {
    let mut probes = Vec::new();
    for a in pods {
        for b in pods.iter().filter(|b| *b != a) {
            probes.push(Probe { from: a.clone(), to: b.clone(), port: spec.port, protocol: spec.protocol });
        }
    }
    probes
}

/// The matrix for `verdicts` given in [`pair_probes`] order.
pub(crate) fn assemble(
    pods: &[ObjectKey],
    spec: ProbeSpec,
    verdicts: Vec<Result<bool, Error>>,
) -> Result<Matrix, Error> {
    let mut verdicts = verdicts.into_iter();
    let mut allowed = Vec::new();
    for a in pods {
        let mut row = Vec::new();
        for b in pods {
            row.push(if a == b { None } else { Some(verdicts.next().expect("one per pair")?) });
        }
        allowed.push(row);
    }
    Ok(Matrix { probe: spec, pods: pods.to_vec(), allowed })
}

/// A private OVN, programmed from an engine, answering probes with ovn-trace.
pub struct OvnTrace {
    ovn: Ovn,
    backend: OvnBackend,
    desired: Desired,
    cluster: String,
    /// ovn-trace processes run at once.
    pub workers: usize,
}

impl OvnTrace {
    /// Starts NB, SB and ovn-northd (call within a tokio runtime); each database a Raft
    /// cluster when `STACKNET_DB_CLUSTER` says so (3 or 5), standalone otherwise.
    pub fn start(cluster: &str) -> Result<OvnTrace, Error> {
        let members = stacknet_sandbox::tier_members().map_err(Error::Setting)?;
        let ovn = Ovn::clustered_in(stacknet_sandbox::Workdir::temp()?, members)?;
        let remotes = stacknet_ovsdb::Remote::parse_list(&ovn.nb.remote()).map_err(Error::Backend)?;
        let backend = OvnBackend::connect(remotes);
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8);
        Ok(OvnTrace { ovn, backend, desired: Desired::default(), cluster: cluster.into(), workers })
    }

    pub fn ovn(&self) -> &Ovn {
        &self.ovn
    }

    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// Programs the network for the engine's cluster and waits until ovn-northd has
    /// translated it.
    pub async fn program(&mut self, engine: &PolicyEngine) -> Result<Report, Error> {
        let topology = Topology::from_pods(&self.cluster, engine.index());
        self.program_with(engine, &topology).await
    }

    /// [`OvnTrace::program`] on a topology of the caller's (nested nodes, ...).
    pub async fn program_with(&mut self, engine: &PolicyEngine, topology: &Topology) -> Result<Report, Error> {
        self.desired = build(engine, topology);
        let report = self.backend.reconcile(&self.desired).await?;
        self.ovn.sync_sb()?;
        Ok(report)
    }

    fn run(&self, p: &TraceProbe) -> Result<bool, Error> {
        let v = self.ovn.trace(&p.datapath, &p.microflow, &p.expect_output, CT_STAGES, p.lb_dst.as_deref())?;
        Ok(v.delivered)
    }

    /// Whether a packet from `from`'s secondary interface to `to`'s (same network) is
    /// delivered.
    pub fn decide_on_network(
        &self,
        from: (&ObjectKey, &str),
        to: (&ObjectKey, &str),
        port: u16,
        protocol: Protocol,
    ) -> Result<bool, Error> {
        let p = stacknet_ovn::trace::on_network(&self.desired, from, to, port, protocol).map_err(Error::Probe)?;
        self.run(&p)
    }

    /// Whether a packet from `from`'s provider-network interface to a host beyond the
    /// network's localnet port leaves through it; with the ovn-trace text.
    pub fn trace_to_provider(
        &self,
        from: (&ObjectKey, &str),
        dst_ip: IpAddr,
        dst_mac: &str,
        port: u16,
        protocol: Protocol,
    ) -> Result<(bool, String), Error> {
        let p = stacknet_ovn::trace::to_provider(&self.desired, from, dst_ip, dst_mac, port, protocol)
            .map_err(Error::Probe)?;
        let v = self.ovn.trace(&p.datapath, &p.microflow, &p.expect_output, CT_STAGES, None)?;
        Ok((v.delivered, v.output))
    }

    /// Whether `probe` is delivered.
    pub fn decide(&self, probe: &Probe) -> Result<bool, Error> {
        let p = pod_to_pod(&self.desired, &probe.from, &probe.to, probe.port, probe.protocol).map_err(Error::Probe)?;
        self.run(&p)
    }

    /// Whether a connection from `from` to a Service VIP, balanced to `backend` (pod
    /// `backend_pod`), is delivered to it.
    pub fn decide_vip(
        &self,
        from: &ObjectKey,
        vip: SocketAddr,
        backend: SocketAddr,
        backend_pod: &ObjectKey,
        protocol: Protocol,
    ) -> Result<bool, Error> {
        let p = pod_to_vip(&self.desired, from, vip, backend, backend_pod, protocol).map_err(Error::Probe)?;
        self.run(&p)
    }

    /// Decides many probes, `workers` ovn-trace processes at a time; results in order.
    pub fn decide_all(&self, probes: &[Probe]) -> Vec<Result<bool, Error>> {
        let next = AtomicUsize::new(0);
        let mut results: Vec<Option<Result<bool, Error>>> = (0..probes.len()).map(|_| None).collect();
        let chunks: Vec<Vec<(usize, Result<bool, Error>)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..self.workers.min(probes.len()).max(1))
                .map(|_| {
                    s.spawn(|| {
                        let mut out = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= probes.len() {
                                return out;
                            }
                            out.push((i, self.decide(&probes[i])));
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("trace worker")).collect()
        });
        for (i, r) in chunks.into_iter().flatten() {
            results[i] = Some(r);
        }
        results.into_iter().map(|r| r.expect("every probe decided")).collect()
    }

    /// `stacknet reach` matrices decided by ovn-trace, over the pods that have a logical port.
    pub fn matrices(&self, engine: &PolicyEngine, specs: &[ProbeSpec]) -> Result<Vec<Matrix>, Error> {
        let index = engine.index();
        let pods: Vec<ObjectKey> = stacknet_engine::reach::probe_pods(index)
            .into_iter()
            .filter_map(|id| index.pod(id).map(|p| p.key.clone()))
            .filter(|k| self.desired.ports.contains_key(k))
            .collect();
        let mut out = Vec::new();
        for spec in specs {
            let verdicts = self.decide_all(&pair_probes(&pods, *spec));
            out.push(assemble(&pods, *spec, verdicts)?);
        }
        Ok(out)
    }

    /// Pods that cannot be traced (hostNetwork, no address, no node): left out of matrices.
    pub fn untraceable(&self, engine: &PolicyEngine) -> Vec<ObjectKey> {
        let index = engine.index();
        stacknet_engine::reach::probe_pods(index)
            .into_iter()
            .filter_map(|id| index.pod(id).map(|p| p.key.clone()))
            .filter(|k| !self.desired.ports.contains_key(k))
            .collect()
    }
}
