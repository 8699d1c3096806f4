//! Events: what the controller could not do, said on the object it concerns, with a reason a
//! person can act on. With an API server they become Kubernetes Events; with a folder of
//! manifests they are log lines (and kept here for `/events` and tests). Repeats of the same
//! event are counted, not repeated, as the API server aggregates them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use stacknet_engine::{ObjectRef, Problem, Reason};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub object: ObjectRef,
    pub reason: Reason,
    pub message: String,
    pub count: u64,
    pub last: SystemTime,
}

#[derive(Debug, Default)]
pub struct Events {
    seen: Mutex<BTreeMap<(ObjectRef, Reason, String), Event>>,
    /// Where new events also go (the Kubernetes API publisher).
    sink: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Event>>>,
}

impl Events {
    pub fn new() -> Events {
        Events::default()
    }

    /// Sends every new event to `sink` too (repeats are counted here, not sent again).
    pub fn set_sink(&self, sink: tokio::sync::mpsc::UnboundedSender<Event>) {
        *self.sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink);
    }

    /// Records a warning on `object` (logged the first time it is seen).
    pub fn warn(&self, object: &ObjectRef, reason: Reason, message: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let key = (object.clone(), reason, message.to_string());
        let now = SystemTime::now();
        if let Some(e) = seen.get_mut(&key) {
            e.count += 1;
            e.last = now;
            return;
        }
        tracing::warn!(object = %object, reason = reason.as_str(), "{message}");
        let event = Event { object: object.clone(), reason, message: message.into(), count: 1, last: now };
        if let Some(sink) = self.sink.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = sink.send(event.clone());
        }
        seen.insert(key, event);
    }

    /// Records each problem as a warning on its object.
    pub fn report(&self, problems: &[Problem]) {
        for p in problems {
            self.warn(&p.object, p.reason, &p.message);
        }
    }

    /// Every event so far, oldest first.
    pub fn all(&self) -> Vec<Event> {
        let mut v: Vec<Event> = self.seen.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        v.sort_by_key(|e| e.last);
        v
    }

    /// Events with this reason.
    pub fn with_reason(&self, reason: Reason) -> Vec<Event> {
        self.all().into_iter().filter(|e| e.reason == reason).collect()
    }
}
