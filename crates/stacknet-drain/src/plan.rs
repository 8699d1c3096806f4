//! What draining a hypervisor takes next: a plain function of what Nova and the Node say now.
//! Nothing is remembered between two decisions: where a server is, which moves are under way
//! and how often one failed are read back from Nova (servers on the host, migrations out of
//! it since the drain began), whether the node is cordoned and since when from the Node. A
//! restarted controller therefore decides exactly what the one before it would have, and a
//! server that has moved is never moved again.

/// How a drain proceeds.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Moves under way at once, per host.
    pub parallel: usize,
    /// Failed moves of one server before it is given up (reported; the host stays disabled).
    pub attempts: u32,
    /// Wait after a server's first failed move; doubled after each further one.
    pub backoff: f64,
    /// The longest wait between two attempts.
    pub backoff_max: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { parallel: 2, attempts: 5, backoff: 10.0, backoff_max: 300.0 }
    }
}

/// Every reason a compute service we disabled carries starts with this: a service disabled
/// by anyone else (another reason, or none) is never enabled by us.
pub const REASON_PREFIX: &str = "stacknet compute-drain:";

/// The reason a drain disables a host's service with.
pub fn disabled_reason(node: &str, why: &str) -> String {
    format!("{REASON_PREFIX} node {node} cordoned ({why})")
}

/// Whether a service's disabled reason is ours.
pub fn ours(reason: Option<&str>) -> bool {
    reason.is_some_and(|r| r.starts_with(REASON_PREFIX))
}

/// The host's nova-compute service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub id: String,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    /// Reporting in and not forced down.
    pub up: bool,
}

/// A server on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub id: String,
    pub name: String,
    pub status: String,
    pub task_state: Option<String>,
}

/// A migration out of the host since the drain began.
#[derive(Debug, Clone, PartialEq)]
pub struct Migration {
    pub instance: String,
    pub status: String,
    /// `live-migration`, `migration`, ...
    pub kind: String,
    /// When its status last changed (seconds since the epoch).
    pub updated: f64,
}

impl Migration {
    fn failed(&self) -> bool {
        matches!(self.status.as_str(), "error" | "failed")
    }

    /// A cold migration that landed and waits for its confirmation.
    fn awaiting_confirmation(&self) -> bool {
        self.status == "finished" && matches!(self.kind.as_str(), "migration" | "resize")
    }
}

/// What is known about one node's hypervisor now.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub node: String,
    /// `Some(why)` when the node is cordoned (`spec.unschedulable`, or the taint's key).
    pub cordoned: Option<String>,
    pub service: Service,
    pub servers: Vec<Server>,
    pub migrations: Vec<Migration>,
    pub now: f64,
}

/// One call to Nova.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Disable { service: String, reason: String },
    Enable { service: String },
    LiveMigrate { server: String, name: String },
    ColdMigrate { server: String, name: String },
    Confirm { server: String },
}

/// Where the drain stands: the Node's condition (`ComputeDrained`) says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// Not cordoned: no condition (a service we disabled is enabled again).
    Idle,
    /// Instances are being moved.
    Draining,
    /// Nothing is left on the host: the condition is True.
    Drained,
    /// The service does not report in: nothing is moved (fencing and evacuation are an
    /// operator's decision).
    HostDown,
    /// Some server could not be moved, after every attempt, or is in a state no move takes.
    Stuck,
}

impl Stage {
    /// The condition's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Stage::Idle => "Uncordoned",
            Stage::Draining => "Draining",
            Stage::Drained => "Drained",
            Stage::HostDown => "HostDown",
            Stage::Stuck => "MigrationsFailed",
        }
    }
}

/// The counts the condition's message gives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Servers moved away since the drain began.
    pub moved: usize,
    /// Servers still on the host.
    pub left: usize,
    /// Moves under way now (counted among `left` while on the host).
    pub moving: usize,
    /// Waiting for another attempt after a failure.
    pub retrying: usize,
    /// Given up after every attempt, or in a state no move takes.
    pub stuck: usize,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} moved, {} left ({} moving, {} waiting to retry, {} stuck)",
            self.moved, self.left, self.moving, self.retrying, self.stuck
        )
    }
}

/// What to do now, and what to say.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub actions: Vec<Action>,
    pub stage: Stage,
    pub counts: Counts,
    /// The condition's message (empty when [`Stage::Idle`]).
    pub message: String,
    /// Servers that cannot be moved, and why (each an Event while it lasts).
    pub stuck: Vec<(String, String)>,
    /// Whether `kubectl drain` must still be held (instances remain on the host).
    pub hold: bool,
    /// The service stays disabled by someone else after an uncordon: said, not changed.
    pub left_disabled: Option<String>,
}

/// Seconds to wait after the `failures`-th failed move.
pub fn backoff(settings: &Settings, failures: u32) -> f64 {
    let doubled = settings.backoff * 2f64.powi(failures.saturating_sub(1).min(30) as i32);
    doubled.min(settings.backoff_max)
}

/// Task states in which a server is busy with something (a move among them): no new move
/// starts until it is done.
fn busy(s: &Server) -> bool {
    s.task_state.is_some()
}

/// The next calls for one node's hypervisor.
pub fn decide(o: &Observed, settings: &Settings) -> Decision {
    let mut d = Decision {
        actions: Vec::new(),
        stage: Stage::Idle,
        counts: Counts::default(),
        message: String::new(),
        stuck: Vec::new(),
        hold: !o.servers.is_empty(),
        left_disabled: None,
    };
    let Some(why) = &o.cordoned else {
        if !o.service.enabled {
            if ours(o.service.disabled_reason.as_deref()) {
                d.actions.push(Action::Enable { service: o.service.id.clone() });
            } else {
                d.left_disabled = Some(o.service.disabled_reason.clone().unwrap_or_default());
            }
        }
        return d;
    };
    if o.service.enabled {
        d.actions.push(Action::Disable { service: o.service.id.clone(), reason: disabled_reason(&o.node, why) });
    }
    // Cold migrations that landed wait for their confirmation wherever the server is now.
    let on_host: std::collections::BTreeSet<&str> = o.servers.iter().map(|s| s.id.as_str()).collect();
    let mut confirming = std::collections::BTreeSet::new();
    for m in o.migrations.iter().filter(|m| m.awaiting_confirmation() && !on_host.contains(m.instance.as_str())) {
        if confirming.insert(m.instance.as_str()) {
            d.actions.push(Action::Confirm { server: m.instance.clone() });
        }
    }
    // Moved: off the host through a migration of this drain that did not fail (whether it is
    // completed, or still `confirming` or `finished` awaiting confirmation).
    let moved: std::collections::BTreeSet<&str> = o
        .migrations
        .iter()
        .filter(|m| !m.failed() && !on_host.contains(m.instance.as_str()))
        .map(|m| m.instance.as_str())
        .collect();
    d.counts.moved = moved.len();
    d.counts.left = o.servers.len();
    if !o.service.up {
        d.stage = Stage::HostDown;
        d.message = format!(
            "the host's nova-compute service is down: {} instance(s) left on it are not moved (fencing and evacuation are not done automatically); {}",
            o.servers.len(),
            d.counts
        );
        return d;
    }
    let mut under_way = o.servers.iter().filter(|s| busy(s)).count() + confirming.len();
    d.counts.moving = o.servers.iter().filter(|s| busy(s)).count();
    for s in o.servers.iter().filter(|s| !busy(s)) {
        let failures: Vec<&Migration> = o.migrations.iter().filter(|m| m.instance == s.id && m.failed()).collect();
        let n = failures.len() as u32;
        if n >= settings.attempts {
            d.stuck.push((s.id.clone(), format!("server {} ({}): {n} moves failed; given up", s.name, s.id)));
            continue;
        }
        let kind = match s.status.as_str() {
            "ACTIVE" | "PAUSED" => Action::LiveMigrate { server: s.id.clone(), name: s.name.clone() },
            "SHUTOFF" => Action::ColdMigrate { server: s.id.clone(), name: s.name.clone() },
            other => {
                d.stuck.push((
                    s.id.clone(),
                    format!("server {} ({}): no move takes a server that is {other}", s.name, s.id),
                ));
                continue;
            }
        };
        let last = failures.iter().map(|m| m.updated).fold(f64::NEG_INFINITY, f64::max);
        if n > 0 && o.now < last + backoff(settings, n) {
            d.counts.retrying += 1;
            continue;
        }
        if under_way >= settings.parallel {
            continue;
        }
        under_way += 1;
        d.counts.moving += 1;
        d.actions.push(kind);
    }
    d.counts.stuck = d.stuck.len();
    d.stage = if o.servers.is_empty() && confirming.is_empty() {
        Stage::Drained
    } else if d.counts.stuck == d.counts.left && d.counts.stuck > 0 && confirming.is_empty() {
        Stage::Stuck
    } else {
        Stage::Draining
    };
    d.message = match d.stage {
        Stage::Drained => format!("no instance left on the host; {}", d.counts),
        Stage::Stuck => format!("instances remain that cannot be moved; {}", d.counts),
        _ => format!("moving instances away; {}", d.counts),
    };
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(id: &str, status: &str, task: Option<&str>) -> Server {
        Server { id: id.into(), name: format!("vm-{id}"), status: status.into(), task_state: task.map(str::to_string) }
    }

    fn migration(instance: &str, status: &str, kind: &str, updated: f64) -> Migration {
        Migration { instance: instance.into(), status: status.into(), kind: kind.into(), updated }
    }

    fn observed(servers: Vec<Server>, migrations: Vec<Migration>) -> Observed {
        Observed {
            node: "n1".into(),
            cordoned: Some("spec.unschedulable".into()),
            service: Service { id: "svc".into(), enabled: true, disabled_reason: None, up: true },
            servers,
            migrations,
            now: 1100.0,
        }
    }

    fn moves(d: &Decision) -> Vec<&str> {
        d.actions
            .iter()
            .filter_map(|a| match a {
                Action::LiveMigrate { server, .. } | Action::ColdMigrate { server, .. } => Some(server.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_cordon_disables_the_service_and_moves_each_server_its_way_bounded() {
        let o = observed(
            vec![server("a", "ACTIVE", None), server("b", "SHUTOFF", None), server("c", "ACTIVE", None)],
            vec![],
        );
        let d = decide(&o, &Settings::default());
        assert_eq!(
            d.actions,
            [
                Action::Disable {
                    service: "svc".into(),
                    reason: "stacknet compute-drain: node n1 cordoned (spec.unschedulable)".into()
                },
                Action::LiveMigrate { server: "a".into(), name: "vm-a".into() },
                Action::ColdMigrate { server: "b".into(), name: "vm-b".into() },
            ]
        );
        assert_eq!((d.stage.clone(), d.hold), (Stage::Draining, true));
        assert_eq!(d.message, "moving instances away; 0 moved, 3 left (2 moving, 0 waiting to retry, 0 stuck)");
    }

    #[test]
    fn moves_under_way_count_against_the_bound_and_are_not_started_twice() {
        let mut o = observed(
            vec![server("a", "MIGRATING", Some("migrating")), server("b", "ACTIVE", None), server("c", "ACTIVE", None)],
            vec![migration("a", "running", "live-migration", 1050.0)],
        );
        o.service.enabled = false;
        o.service.disabled_reason = Some(disabled_reason("n1", "spec.unschedulable"));
        assert_eq!(moves(&decide(&o, &Settings::default())), ["b"]);
        // A restarted controller sees the same and decides the same; a moved server is gone
        // from the host and is not moved again.
        o.servers.remove(0);
        o.migrations[0].status = "completed".into();
        let d = decide(&o, &Settings::default());
        assert_eq!(moves(&d), ["b", "c"]);
        assert_eq!(d.counts.moved, 1);
    }

    #[test]
    fn a_finished_cold_migration_is_confirmed_then_the_host_is_drained() {
        let mut o = observed(vec![], vec![migration("b", "finished", "migration", 1050.0)]);
        o.service.enabled = false;
        o.service.disabled_reason = Some(disabled_reason("n1", "spec.unschedulable"));
        let d = decide(&o, &Settings::default());
        assert_eq!(d.actions, [Action::Confirm { server: "b".into() }]);
        assert_eq!(d.stage, Stage::Draining, "drained once confirmed");
        assert!(!d.hold, "nothing runs on the host any more");
        // Confirming: counted as moved at once (the condition says 1 moved when it turns True).
        o.migrations[0].status = "confirming".into();
        let d = decide(&o, &Settings::default());
        assert_eq!((d.actions.len(), d.stage.clone(), d.counts.moved), (0, Stage::Drained, 1));
        o.migrations[0].status = "confirmed".into();
        let d = decide(&o, &Settings::default());
        assert_eq!((d.actions.len(), d.stage.clone()), (0, Stage::Drained));
        assert_eq!(d.message, "no instance left on the host; 1 moved, 0 left (0 moving, 0 waiting to retry, 0 stuck)");
    }

    #[test]
    fn failures_back_off_then_give_up_and_the_service_stays_disabled() {
        let s = Settings::default();
        assert_eq!([1, 2, 3, 6, 40].map(|n| backoff(&s, n)), [10.0, 20.0, 40.0, 300.0, 300.0]);
        let mut o =
            observed(vec![server("a", "ACTIVE", None)], vec![migration("a", "error", "live-migration", 1095.0)]);
        let d = decide(&o, &s);
        assert_eq!((moves(&d).len(), d.counts.retrying), (0, 1), "10 s after the failure, not 5");
        o.now = 1106.0;
        assert_eq!(moves(&decide(&o, &s)), ["a"]);
        o.migrations = (0..5).map(|i| migration("a", "failed", "live-migration", 1000.0 + f64::from(i))).collect();
        let d = decide(&o, &s);
        assert_eq!((moves(&d).len(), d.stage.clone(), d.counts.stuck), (0, Stage::Stuck, 1));
        assert_eq!(d.stuck[0].1, "server vm-a (a): 5 moves failed; given up");
        assert!(d.hold && d.actions.iter().all(|a| !matches!(a, Action::Enable { .. })));
    }

    #[test]
    fn a_server_no_move_takes_is_reported() {
        let o = observed(vec![server("e", "ERROR", None), server("a", "ACTIVE", None)], vec![]);
        let d = decide(&o, &Settings::default());
        assert_eq!(moves(&d), ["a"]);
        assert_eq!(d.stuck, [("e".to_string(), "server vm-e (e): no move takes a server that is ERROR".to_string())]);
        assert_eq!(d.stage, Stage::Draining, "the others still move");
    }

    #[test]
    fn a_host_that_is_down_is_reported_not_evacuated() {
        let mut o = observed(vec![server("a", "ACTIVE", None)], vec![]);
        o.service.up = false;
        let d = decide(&o, &Settings::default());
        assert!(matches!(d.actions[..], [Action::Disable { .. }]), "{:?}", d.actions);
        assert_eq!(d.stage, Stage::HostDown);
        assert!(d.message.starts_with("the host's nova-compute service is down: 1 instance(s) left"), "{}", d.message);
    }

    #[test]
    fn an_uncordon_enables_only_what_we_disabled() {
        let mut o = observed(vec![server("a", "ACTIVE", None)], vec![]);
        o.cordoned = None;
        o.service.enabled = false;
        o.service.disabled_reason = Some(disabled_reason("n1", "spec.unschedulable"));
        let d = decide(&o, &Settings::default());
        assert_eq!((d.actions.clone(), d.stage.clone()), (vec![Action::Enable { service: "svc".into() }], Stage::Idle));
        o.service.disabled_reason = Some("hardware maintenance, ticket 42".into());
        let d = decide(&o, &Settings::default());
        assert!(d.actions.is_empty());
        assert_eq!(d.left_disabled.as_deref(), Some("hardware maintenance, ticket 42"));
        o.service = Service { id: "svc".into(), enabled: true, disabled_reason: None, up: true };
        assert!(decide(&o, &Settings::default()).actions.is_empty());
    }

    #[test]
    fn a_service_someone_else_disabled_keeps_its_reason_during_a_drain() {
        let mut o = observed(vec![server("a", "ACTIVE", None)], vec![]);
        o.service.enabled = false;
        o.service.disabled_reason = Some("operator: bad DIMM".into());
        let d = decide(&o, &Settings::default());
        assert_eq!(moves(&d), ["a"]);
        assert!(!d.actions.iter().any(|a| matches!(a, Action::Disable { .. })));
    }
}
