//! Events: what the controller could not do, said on the object it concerns, with a reason a
//! person can act on. With an API server they become Kubernetes Events; with a folder of
//! manifests they are log lines (and kept here for `/events` and tests). Repeats of the same
//! event are counted, not repeated, as the API server aggregates them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `Pod ns/name`, `NetworkPolicy ns/name`, `Node name`, `file path`, `Cluster id`.
    pub object: String,
    /// CamelCase, as Kubernetes Events carry (`SubnetExhausted`, `InvalidManifest`, ...).
    pub reason: String,
    pub message: String,
    pub warning: bool,
    pub count: u64,
    pub last: SystemTime,
}

#[derive(Debug, Default)]
pub struct Events {
    seen: Mutex<BTreeMap<(String, String, String), Event>>,
    /// Where new events also go (the Kubernetes API publisher).
    sink: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Event>>>,
}

impl Events {
    pub fn new() -> Events {
        Events::default()
    }

    /// Records a warning on `object` (logged the first time it is seen).
    pub fn warn(&self, object: &str, reason: &str, message: &str) {
        self.record(object, reason, message, true);
    }

    /// Sends every new event to `sink` too (repeats are counted here, not sent again).
    pub fn set_sink(&self, sink: tokio::sync::mpsc::UnboundedSender<Event>) {
        *self.sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink);
    }

    pub fn normal(&self, object: &str, reason: &str, message: &str) {
        self.record(object, reason, message, false);
    }

    fn record(&self, object: &str, reason: &str, message: &str, warning: bool) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let key = (object.to_string(), reason.to_string(), message.to_string());
        let now = SystemTime::now();
        match seen.get_mut(&key) {
            Some(e) => {
                e.count += 1;
                e.last = now;
            }
            None => {
                if warning {
                    tracing::warn!(object, reason, "{message}");
                } else {
                    tracing::info!(object, reason, "{message}");
                }
                let event = Event {
                    object: object.into(),
                    reason: reason.into(),
                    message: message.into(),
                    warning,
                    count: 1,
                    last: now,
                };
                if let Some(sink) = self.sink.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                    let _ = sink.send(event.clone());
                }
                seen.insert(key, event);
            }
        }
    }

    /// Every event so far, oldest first.
    pub fn all(&self) -> Vec<Event> {
        let mut v: Vec<Event> = self.seen.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        v.sort_by_key(|e| e.last);
        v
    }

    /// Events with this reason.
    pub fn with_reason(&self, reason: &str) -> Vec<Event> {
        self.all().into_iter().filter(|e| e.reason == reason).collect()
    }
}
