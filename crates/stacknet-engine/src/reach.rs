//! "Who can talk to whom": every probe for every ordered pair of distinct pods.

use std::fmt;
use std::str::FromStr;

use crate::index::{ClusterIndex, PodId};
use crate::model::PolicyEngine;
use crate::objects::{ObjectKey, Protocol};
use crate::semantics;

/// A destination port and protocol to try: `80/TCP`, `53/udp`, `8080` (TCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProbeSpec {
    pub port: u16,
    pub protocol: Protocol,
}

impl FromStr for ProbeSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (port, proto) = match s.split_once('/') {
            Some((p, proto)) => (p, proto),
            None => (s, "TCP"),
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("probe {s:?}: {port:?} is not a port number (1-65535)"))?;
        let protocol = proto.to_ascii_uppercase().parse().map_err(|e| format!("probe {s:?}: {e}"))?;
        Ok(ProbeSpec { port, protocol })
    }
}

impl fmt::Display for ProbeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)
    }
}

/// The verdicts of one probe over every ordered pair of pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    pub probe: ProbeSpec,
    /// Row and column order.
    pub pods: Vec<ObjectKey>,
    /// `allowed[from][to]`; `None` on the diagonal (a pod is not probed against itself).
    pub allowed: Vec<Vec<Option<bool>>>,
}

impl Matrix {
    /// Ordered pairs with their verdict, row by row.
    pub fn pairs(&self) -> impl Iterator<Item = (&ObjectKey, &ObjectKey, bool)> {
        self.allowed.iter().enumerate().flat_map(move |(i, row)| {
            row.iter().enumerate().filter_map(move |(j, v)| v.map(|a| (&self.pods[i], &self.pods[j], a)))
        })
    }
}

/// The pods a probe matrix covers: every pod that has not terminated, in namespace/name order.
pub fn probe_pods(index: &ClusterIndex) -> Vec<PodId> {
    index.pods().filter(|(_, p)| !p.terminated).map(|(id, _)| id).collect()
}

fn matrix(index: &ClusterIndex, probe: ProbeSpec, decide: impl Fn(PodId, PodId) -> bool) -> Matrix {
    let ids = probe_pods(index);
    let pods = ids.iter().map(|id| index.pod(*id).expect("listed").key.clone()).collect();
    let allowed =
        ids.iter().map(|&from| ids.iter().map(|&to| (from != to).then(|| decide(from, to))).collect()).collect();
    Matrix { probe, pods, allowed }
}

/// Verdicts from the direct semantics.
pub fn direct(index: &ClusterIndex, probes: &[ProbeSpec]) -> Vec<Matrix> {
    probes
        .iter()
        .map(|&probe| {
            matrix(index, probe, |from, to| {
                let (a, b) = (index.pod(from).expect("listed"), index.pod(to).expect("listed"));
                semantics::evaluate(index, a, b, probe.port, probe.protocol).allowed()
            })
        })
        .collect()
}

/// Verdicts from the compiled model.
pub fn compiled(engine: &PolicyEngine, probes: &[ProbeSpec]) -> Vec<Matrix> {
    probes
        .iter()
        .map(|&probe| {
            matrix(engine.index(), probe, |from, to| engine.allowed_by_model(from, to, probe.port, probe.protocol))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_syntax() {
        assert_eq!("80/TCP".parse::<ProbeSpec>().unwrap(), ProbeSpec { port: 80, protocol: Protocol::Tcp });
        assert_eq!("53/udp".parse::<ProbeSpec>().unwrap(), ProbeSpec { port: 53, protocol: Protocol::Udp });
        assert_eq!("8080".parse::<ProbeSpec>().unwrap().protocol, Protocol::Tcp);
        assert!("0/TCP".parse::<ProbeSpec>().is_err());
        assert!("70000/TCP".parse::<ProbeSpec>().unwrap_err().contains("not a port number"));
        assert!("80/ICMP".parse::<ProbeSpec>().unwrap_err().contains("unsupported protocol"));
    }
}
