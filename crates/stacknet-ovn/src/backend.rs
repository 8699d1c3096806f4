//! The OVN backend: keeps the Northbound database equal to the desired rows through a client
//! whose replica it diffs against.

use std::time::Duration;

use stacknet_ovsdb::{Client, ClientConfig, Error, Remote, TlsConfig, nb};

use crate::desired::Desired;
use crate::reconcile::{Plan, PlanSummary, plan};

/// What one reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Transactions sent (0 when nothing had to change).
    pub transactions: usize,
    pub summary: PlanSummary,
    /// Operations in the transaction that succeeded.
    pub operations: usize,
    pub warnings: Vec<String>,
}

pub struct OvnBackend {
    client: Client,
    /// How long to wait for a connection before giving up on a reconcile.
    pub connect_timeout: Duration,
    /// Attempts for transient failures (server gone mid-transaction, reconnect in progress).
    pub attempts: usize,
}

impl OvnBackend {
    /// A client for the Northbound database at `remotes`, monitoring the tables we use.
    pub fn connect(remotes: Vec<Remote>) -> OvnBackend {
        OvnBackend::connect_with(remotes, None, stacknet_ovsdb::DEFAULT_ECHO_INTERVAL)
    }

    /// Like [`OvnBackend::connect`], with certificates for `ssl:` remotes and the inactivity
    /// probe `probe` (zero: none).
    pub fn connect_with(remotes: Vec<Remote>, tls: Option<TlsConfig>, probe: Duration) -> OvnBackend {
        let mut config = ClientConfig::new(remotes, nb::DATABASE);
        config.tls = tls;
        config.echo_interval = probe;
        config.requirements = Some(nb::requirements());
        config.tables = Some(nb::monitored_tables());
        // Our rows are found by cluster and by identity; no other key is looked up.
        config.indexed_external_ids = Some(vec![crate::names::KEY_CLUSTER.into(), crate::names::KEY_ID.into()]);
        OvnBackend::with_client(Client::start(config))
    }

    pub fn with_client(client: Client) -> OvnBackend {
        OvnBackend { client, connect_timeout: Duration::from_secs(30), attempts: 8 }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The plan a reconcile would execute now (nothing is written).
    pub async fn plan(&self, desired: &Desired) -> Result<Plan, Error> {
        self.client.connected(self.connect_timeout).await?;
        let guard = self.client.replica();
        let replica = guard.as_ref().ok_or(Error::NotConnected)?;
        Ok(plan(desired, replica))
    }

    /// Makes the database equal to `desired` in one transaction (none if nothing differs).
    /// Transient failures are retried after the client reconnects and resyncs, re-planning
    /// from the fresh replica each time; server errors are returned with their details.
    pub async fn reconcile(&self, desired: &Desired) -> Result<Report, Error> {
        let mut last = Error::NotConnected;
        for attempt in 0..self.attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 << attempt.min(6))).await;
            }
            let planning = std::time::Instant::now();
            let p = match self.plan(desired).await {
                Ok(p) => p,
                Err(e) if e.is_transient() => {
                    last = e;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if p.txn.is_empty() {
                return Ok(Report { warnings: p.warnings, ..Report::default() });
            }
            let mut txn = p.txn;
            txn.comment(&format!("stacknet: reconcile cluster {}", desired.cluster));
            let operations = txn.len();
            let census = if tracing::enabled!(tracing::Level::DEBUG) { txn.census() } else { String::new() };
            let submitting = std::time::Instant::now();
            let result = self.client.submit(txn).await;
            tracing::debug!(
                plan_ms = (submitting - planning).as_millis() as u64,
                transact_ms = submitting.elapsed().as_millis() as u64,
                operations,
                census,
                "transaction"
            );
            match result {
                Ok(_) => {
                    return Ok(Report { transactions: 1, summary: p.summary, operations, warnings: p.warnings });
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, attempt, "reconcile interrupted; retrying after resync");
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }
}
