//! The Northbound database as a Raft cluster of three, one member failing in the middle of a
//! churn of 1,000 pods written by the controller (`stacknet-bench db-failover`): no update is
//! lost and no row is left over (row by row against the same controller's network made without
//! a failure), the network converges within 10 s of a kill, a follower's death changes
//! nothing, and a frozen leader's stale state never comes back when it thaws.

mod common;

use common::bench;
use serde_json::Value;

fn num(l: &Value, k: &str) -> f64 {
    l[k].as_f64().unwrap_or_else(|| panic!("{k} in {l}"))
}

#[test]
fn a_member_fails_during_a_thousand_pod_churn_and_nothing_is_lost() {
    let lines = bench(&["db-failover", "--pods", "1000"]);
    assert_eq!(lines.len(), 3, "{lines:?}");
    for l in &lines {
        assert_eq!(l["bench"], "db-failover");
        // The network equals the cluster's, row by row, on the members that stayed...
        assert_eq!((num(l, "lost"), num(l, "extra")), (0.0, 0.0), "{l}");
        // ...and on the failed one once it is back, with nothing more written by the controller.
        assert_eq!(l["victim_caught_up"], true, "{l}");
        assert_eq!(l["victim_role_after"], "follower", "{l}");
        assert_eq!(num(l, "members_equal"), 3.0, "{l}");
        assert_eq!(num(l, "written_after_return"), 0.0, "{l}");
    }
    let fault = |name: &str| lines.iter().find(|l| l["fault"] == name).unwrap_or_else(|| panic!("{name}: {lines:?}"));

    let kill = fault("kill-leader");
    assert_eq!(kill["victim"], kill["leader_before"], "{kill}");
    assert!(kill["leader_after"].is_number() && kill["leader_after"] != kill["victim"], "{kill}");
    assert!(num(kill, "converge_after_kill_s") <= 10.0, "{kill}");

    // A follower's death: the leader stays, the controller sees no error.
    let follower = fault("kill-follower");
    assert_ne!(follower["victim"], follower["leader_before"], "{follower}");
    assert_eq!(follower["leader_after"], follower["leader_before"], "{follower}");
    assert_eq!(num(follower, "transaction_errors"), 0.0, "{follower}");
    assert!(num(follower, "converge_after_kill_s") <= 10.0, "{follower}");

    // A frozen leader: another is elected and takes the writes (the network converged on the
    // members that answer while it was still frozen); when it thaws it follows.
    let frozen = fault("freeze-leader");
    assert_eq!(frozen["victim"], frozen["leader_before"], "{frozen}");
    assert!(frozen["leader_after"].is_number() && frozen["leader_after"] != frozen["victim"], "{frozen}");
}
