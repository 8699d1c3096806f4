//! Leader election with a coordination.k8s.io Lease: of the controller's replicas, the one
//! holding the Lease writes to OVN; the others keep their watches and replicas warm and take
//! over when the holder stops renewing. Every write to the Lease is a replace at the
//! resourceVersion read, so two replicas can never both win the same turn.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Who we are (the pod's name).
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub duration: Duration,
    /// How often the holder renews (and the others look).
    pub renew: Duration,
}

impl LeaseConfig {
    pub fn new(namespace: &str, identity: &str) -> LeaseConfig {
        LeaseConfig {
            namespace: namespace.into(),
            name: "stacknet-controller".into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew: Duration::from_secs(5),
        }
    }
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// One turn: take or renew the lease if we may. `Ok(true)`: we hold it now.
async fn turn(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let secs = i32::try_from(cfg.duration.as_secs()).unwrap_or(i32::MAX).max(1);
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                namespace: Some(cfg.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(secs),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(e) if conflict(&e) => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let ours = spec.holder_identity.as_deref() == Some(cfg.identity.as_str());
    let held_for = i64::from(spec.lease_duration_seconds.unwrap_or(secs));
    let expired = match (&spec.holder_identity, &spec.renew_time) {
        (None, _) | (_, None) => true,
        (Some(_), Some(MicroTime(t))) => now.duration_since(*t) > SignedDuration::from_secs(held_for),
    };
    if !ours && !expired {
        return Ok(false);
    }
    let mut next = spec.clone();
    next.holder_identity = Some(cfg.identity.clone());
    next.lease_duration_seconds = Some(secs);
    next.renew_time = Some(MicroTime(now));
    if !ours {
        next.acquire_time = Some(MicroTime(now));
        next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    lease.spec = Some(next);
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(e) if conflict(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Takes part in the election until the task is dropped, publishing whether we lead. A holder
/// that cannot renew steps down before its lease can have run out for the others.
pub async fn run(client: Client, cfg: LeaseConfig, leading: watch::Sender<bool>) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let mut last_renewal: Option<tokio::time::Instant> = None;
    loop {
        match turn(&api, &cfg).await {
            Ok(true) => {
                last_renewal = Some(tokio::time::Instant::now());
                if !*leading.borrow() {
                    tracing::info!(identity = %cfg.identity, lease = %cfg.name, "leading: this replica writes to OVN");
                }
                leading.send_replace(true);
            }
            Ok(false) => {
                if *leading.borrow() {
                    tracing::warn!(identity = %cfg.identity, "lost the lease; standing by");
                }
                last_renewal = None;
                leading.send_replace(false);
            }
            Err(e) => {
                tracing::warn!(error = %e, lease = %cfg.name, "lease not renewed");
                // Step down well before the others may take over.
                if last_renewal.is_some_and(|t| t.elapsed() > cfg.duration * 2 / 3) {
                    last_renewal = None;
                    leading.send_replace(false);
                }
            }
        }
        tokio::time::sleep(cfg.renew).await;
    }
}

/// Gives the lease up (on a graceful stop), so that a standby takes over at once.
pub async fn release(client: Client, cfg: &LeaseConfig) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let Some(mut lease) = api.get_opt(&cfg.name).await? else { return Ok(()) };
    let mut spec = lease.spec.clone().unwrap_or_default();
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    lease.spec = Some(spec);
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(()),
        Err(e) if conflict(&e) => Ok(()),
        Err(e) => Err(e),
    }
}
