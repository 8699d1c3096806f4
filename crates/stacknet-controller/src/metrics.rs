//! Prometheus metrics, rendered in the text exposition format.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// A histogram with fixed buckets (seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<(Vec<u64>, f64, u64)>,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, inner: Mutex::new((vec![0; bounds.len()], 0.0, 0)) }
    }

    pub fn observe(&self, d: Duration) {
        let v = d.as_secs_f64();
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                g.0[i] += 1;
            }
        }
        g.1 += v;
        g.2 += 1;
    }

    pub fn count(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).2
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
        for (b, c) in self.bounds.iter().zip(&g.0) {
            out.push_str(&format!("{name}_bucket{{le=\"{b}\"}} {c}\n"));
        }
        out.push_str(&format!("{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}\n", g.2, g.1, g.2));
    }
}

const SECONDS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Debug)]
pub struct Metrics {
    pub reconcile: Histogram,
    pub programming: Histogram,
    pub reconciles_ok: AtomicU64,
    pub reconciles_failed: AtomicU64,
    pub transactions: AtomicU64,
    pub transaction_errors: AtomicU64,
    pub operations: AtomicU64,
    pub queue_depth: AtomicI64,
    pub pods: AtomicI64,
    pub policies: AtomicI64,
    /// 1 while this replica holds the lease (or runs without an election).
    pub leader: AtomicI64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconcile: Histogram::new(SECONDS),
            programming: Histogram::new(SECONDS),
            reconciles_ok: AtomicU64::new(0),
            reconciles_failed: AtomicU64::new(0),
            transactions: AtomicU64::new(0),
            transaction_errors: AtomicU64::new(0),
            operations: AtomicU64::new(0),
            queue_depth: AtomicI64::new(0),
            pods: AtomicI64::new(0),
            policies: AtomicI64::new(0),
            leader: AtomicI64::new(0),
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.reconcile.render(
            "stacknet_reconcile_duration_seconds",
            "Time from the cluster state to the network equal to it (one reconcile).",
            &mut out,
        );
        self.programming.render(
            "stacknet_network_programming_latency_seconds",
            "From a pod appearing in the cluster to its OVN port reported up.",
            &mut out,
        );
        let counter = |out: &mut String, name: &str, help: &str, samples: &[(&str, u64)]| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
            for (labels, v) in samples {
                out.push_str(&format!("{name}{labels} {v}\n"));
            }
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut out,
            "stacknet_reconciles_total",
            "Reconciles, by result.",
            &[("{result=\"ok\"}", load(&self.reconciles_ok)), ("{result=\"error\"}", load(&self.reconciles_failed))],
        );
        counter(
            &mut out,
            "stacknet_ovsdb_transactions_total",
            "OVSDB transactions sent to the Northbound database.",
            &[("", load(&self.transactions))],
        );
        counter(
            &mut out,
            "stacknet_ovsdb_transaction_errors_total",
            "OVSDB transactions that failed.",
            &[("", load(&self.transaction_errors))],
        );
        counter(
            &mut out,
            "stacknet_ovsdb_operations_total",
            "Operations in committed transactions.",
            &[("", load(&self.operations))],
        );
        for (name, help, v) in [
            ("stacknet_queue_depth", "Cluster changes received and not yet reconciled.", &self.queue_depth),
            ("stacknet_pods", "Pods in the cluster index.", &self.pods),
            ("stacknet_network_policies", "NetworkPolicies in the cluster index.", &self.policies),
            ("stacknet_leader", "1 while this replica writes to OVN (holds the lease).", &self.leader),
        ] {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}\n", v.load(Ordering::Relaxed)));
        }
        out
    }
}
