//! NetworkPolicy conformance cases as data, for every test tier.
//!
//! - [`world`]: the upstream e2e model (namespaces x/y/z, pods a/b/c, ports and protocols) as
//!   plain Kubernetes API objects, and the events that change it;
//! - [`upstream`]: the 48 hand-transcribed upstream cases under `tests/conformance/upstream/`;
//! - [`generated`]: cyclonus-style combinations of targets x peers x ports x protocols;
//! - [`reference`]: a deliberately simple evaluator, written only for tests and sharing no code
//!   with the engine, which gives the generated cases their expectations.
//!
//! Every case becomes a [`Scenario`]: steps of events, each followed by probes with an expected
//! verdict for every ordered pair of distinct pods (loopback is ignored, as upstream does).
#![forbid(unsafe_code)]

pub mod generated;
pub mod reference;
pub mod upstream;
pub mod world;

use std::collections::BTreeMap;

pub use world::{Event, World};

/// One probe of a step and its expected verdicts, keyed by `(from, to)` as `ns/pod` strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedProbe {
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    pub expected: BTreeMap<(String, String), bool>,
}

#[derive(Debug, Clone)]
pub struct ScenarioStep {
    pub description: String,
    /// What changes, in order, before the probes.
    pub events: Vec<Event>,
    /// The cluster after the events.
    pub world: World,
    pub probes: Vec<ExpectedProbe>,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    /// The cluster before the first step (namespaces and pods, no policies).
    pub initial: World,
    pub steps: Vec<ScenarioStep>,
}

/// Why a case file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
}
