//! The client against a real ovsdb-server with the OVN Northbound schema (the ovsdb tier).

use std::time::Duration;

use serde_json::json;
use stacknet_ovsdb::nb;
use stacknet_ovsdb::transact::OpResult;
use stacknet_ovsdb::*;
use stacknet_sandbox::Ovn;

const T: Duration = Duration::from_secs(10);

fn config(remote: &str) -> ClientConfig {
    let mut c = ClientConfig::new(Remote::parse_list(remote).unwrap(), nb::DATABASE);
    c.requirements = Some(nb::requirements());
    c.tables = Some(nb::monitored_tables());
    c
}

/// A Northbound database of its own, and a client connected to it.
async fn connected() -> (Ovn, Client) {
    let ovn = Ovn::nb_only().unwrap();
    let client = Client::start(config(&ovn.nb.remote()));
    client.connected(T).await.unwrap();
    (ovn, client)
}

/// Sets map column `column` of switch `s1` to the one entry `entry`.
async fn set_s1(client: &Client, column: &str, entry: (&str, &str)) {
    let mut t = Transaction::new(nb::DATABASE);
    let row = Row::from([(column.to_string(), Datum::string_map([entry]))]);
    t.update(nb::LOGICAL_SWITCH, vec![Condition::eq("name", "s1")], row);
    client.transact(&t).await.unwrap();
}

fn named_row(name: &str) -> Row {
    Row::from([("name".to_string(), Datum::Atom(name.into()))])
}

#[tokio::test]
async fn transactions_named_uuids_and_the_replica() {
    let (ovn, client) = connected().await;

    // A switch with a port, inserted together through a named uuid.
    let mut t = Transaction::new(nb::DATABASE);
    let mut port = named_row("p1");
    port.insert("addresses".into(), Datum::set(["0a:58:0a:00:00:01 10.0.0.1"]));
    port.insert("external_ids".into(), Datum::string_map([("stacknet-owner", "Pod"), ("stacknet-name", "x/a")]));
    t.insert(nb::LOGICAL_SWITCH_PORT, port, Some("p1"));
    let mut sw = named_row("node-1");
    sw.insert("ports".into(), Datum::Set([Atom::NamedUuid("p1".into())].into()));
    t.insert(nb::LOGICAL_SWITCH, sw, Some("sw"));
    t.comment("stacknet test");
    let reply = client.transact(&t).await.unwrap();
    let port_uuid = reply.uuid_of("p1").unwrap();
    let sw_uuid = reply.uuid_of("sw").unwrap();

    // ovsdb-server sends a transaction's monitor updates before its reply: the replica
    // already holds the rows when transact returns.
    {
        let guard = client.replica();
        let r = guard.as_ref().unwrap();
        let (u, row) = r.table(nb::LOGICAL_SWITCH).by_name("node-1").next().unwrap();
        assert_eq!(*u, sw_uuid);
        assert_eq!(nb::LogicalSwitch::from_row(*u, row).ports, [port_uuid].into());
        assert_eq!(r.table(nb::LOGICAL_SWITCH_PORT).by_external_id("stacknet-name", "x/a").count(), 1);
    }
    // ovn-nbctl sees what we wrote.
    let show = ovn.nbctl(&["show"]).unwrap();
    assert!(show.contains("node-1") && show.contains("p1"), "{show}");

    // Mutate: remove the port from the switch; the non-root port is collected by the server.
    let mut t = Transaction::new(nb::DATABASE);
    let i = t.mutate(
        nb::LOGICAL_SWITCH,
        vec![Condition::uuid(sw_uuid)],
        vec![Mutation::delete("ports", Datum::Set([Atom::Uuid(port_uuid)].into()))],
    );
    let reply = client.transact(&t).await.unwrap();
    assert_eq!(reply.count(i), Some(1));
    assert!(client.replica().as_ref().unwrap().table(nb::LOGICAL_SWITCH_PORT).is_empty());

    // A change by someone else reaches the replica through the monitor.
    ovn.nbctl(&["ls-add", "foreign"]).unwrap();
    client.wait_until(T, |r| r.table(nb::LOGICAL_SWITCH).by_name("foreign").count() == 1).await.unwrap();

    // Select.
    let mut t = Transaction::new(nb::DATABASE);
    t.select(nb::LOGICAL_SWITCH, vec![Condition::eq("name", "foreign")], Some(vec!["name".into()]));
    let reply = client.transact(&t).await.unwrap();
    assert!(matches!(&reply.results[0], OpResult::Rows(rows) if rows.len() == 1));
}

#[tokio::test]
async fn server_errors_are_typed_with_details() {
    let (_ovn, client) = connected().await;

    // Port_Group names are a unique index: two with one name violate a constraint.
    let mut t = Transaction::new(nb::DATABASE);
    t.insert(nb::PORT_GROUP, named_row("pg_dup"), None);
    t.insert(nb::PORT_GROUP, named_row("pg_dup"), None);
    let e = client.transact(&t).await.unwrap_err();
    let op = e.operation().expect("a server error");
    assert_eq!(op.kind(), ErrorKind::ConstraintViolation, "{e}");
    assert!(op.details.as_deref().unwrap_or_default().contains("pg_dup"), "{e}");
    assert!(client.replica().as_ref().unwrap().table(nb::PORT_GROUP).is_empty(), "nothing half-written");

    // Optimistic concurrency: wait for a row that is not there.
    let mut t = Transaction::new(nb::DATABASE);
    t.wait(
        nb::PORT_GROUP,
        vec![Condition::eq("name", "absent")],
        vec!["name".into()],
        Until::Equal,
        vec![named_row("absent")],
        Some(0),
    );
    t.insert(nb::PORT_GROUP, named_row("guarded"), None);
    let e = client.transact(&t).await.unwrap_err();
    assert_eq!(e.operation().unwrap().kind(), ErrorKind::TimedOut, "{e}");
    assert_eq!(e.operation().unwrap().index, Some(0));

    // A bad column: the operation's error names it.
    let mut t = Transaction::new(nb::DATABASE);
    t.insert(nb::PORT_GROUP, Row::from([("nope".to_string(), Datum::Atom(Atom::Integer(1)))]), None);
    let e = client.transact(&t).await.unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");

    // An unknown method is an RPC error, not a hang.
    let e = client.call("no_such_method", json!([])).await.unwrap_err();
    assert!(matches!(e, Error::Rpc { .. }), "{e}");
}

#[tokio::test]
async fn reconnects_after_the_server_is_killed_and_resyncs() {
    let mut ovn = Ovn::nb_only().unwrap();
    let mut cfg = config(&ovn.nb.remote());
    cfg.max_backoff = Duration::from_millis(200);
    let client = Client::start(cfg);
    client.connected(T).await.unwrap();
    ovn.nbctl(&["ls-add", "before"]).unwrap();
    client.wait_until(T, |r| r.table(nb::LOGICAL_SWITCH).by_name("before").count() == 1).await.unwrap();

    ovn.nb.kill();
    let mut status = client.status();
    status.wait_for(|s| s.connected.is_none()).await.unwrap();
    // Calls while down fail fast instead of hanging.
    let mut t = Transaction::new(nb::DATABASE);
    t.insert(nb::ADDRESS_SET, named_row("as_down"), None);
    let e = client.transact(&t).await.unwrap_err();
    assert!(e.is_transient(), "{e}");

    // Changed while we were away: the resync must bring it in, and drop what went away.
    ovn.nb.restart().unwrap();
    ovn.nbctl(&["ls-add", "while-away", "--", "ls-del", "before"]).unwrap();
    client.connected(T).await.unwrap();
    client
        .wait_until(T, |r| {
            r.table(nb::LOGICAL_SWITCH).by_name("while-away").count() == 1
                && r.table(nb::LOGICAL_SWITCH).by_name("before").count() == 0
        })
        .await
        .unwrap();
    assert!(client.status().borrow().sessions >= 2);
    client.transact(&t).await.unwrap();
}

#[tokio::test]
async fn fails_over_to_the_next_remote() {
    let ovn = Ovn::nb_only().unwrap();
    let dead = ovn.dir().join("nobody-listens.sock");
    let client = Client::start(config(&format!("unix:{},{}", dead.display(), ovn.nb.remote())));
    client.connected(T).await.unwrap();
    assert_eq!(client.status().borrow().connected.as_deref(), Some(ovn.nb.remote().as_str()));
}

#[tokio::test]
async fn a_schema_too_old_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string("/usr/share/ovn/ovn-nb.ovsschema").unwrap();
    let mut schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    schema["version"] = json!("6.3.0");
    schema["tables"].as_object_mut().unwrap().remove("Load_Balancer_Group");
    schema["tables"]["Logical_Switch"]["columns"].as_object_mut().unwrap().remove("load_balancer_group");
    schema["tables"]["Logical_Router"]["columns"].as_object_mut().unwrap().remove("load_balancer_group");
    let path = dir.path().join("old.ovsschema");
    std::fs::write(&path, schema.to_string()).unwrap();
    let server = stacknet_sandbox::DbServer::start(dir.path(), "old", &path.to_string_lossy()).unwrap();
    let client = Client::start(config(&server.remote()));
    let e = client.connected(Duration::from_secs(2)).await.unwrap_err().to_string();
    assert!(e.contains("6.3.0") && e.contains("7.0.0"), "{e}");
    assert!(e.contains("table Load_Balancer_Group") && e.contains("column Logical_Switch.load_balancer_group"), "{e}");
}

/// A client monitoring a few columns of a table: those are replicated, the others read as
/// their defaults, and changes to the others alone do not change the replica.
#[tokio::test]
async fn monitoring_chosen_columns_only() {
    let ovn = Ovn::nb_only().unwrap();
    let mut c = config(&ovn.nb.remote());
    c.tables = Some(vec![nb::LOGICAL_SWITCH.into()]);
    c.columns = [(nb::LOGICAL_SWITCH.to_string(), vec!["name".to_string(), "external_ids".to_string()])].into();
    let client = Client::start(c);
    client.connected(T).await.unwrap();
    let mut t = Transaction::new(nb::DATABASE);
    let mut sw = named_row("s1");
    sw.insert("other_config".into(), Datum::string_map([("subnet", "10.0.0.0/24")]));
    sw.insert("external_ids".into(), Datum::string_map([("k", "v")]));
    t.insert(nb::LOGICAL_SWITCH, sw, None);
    client.transact(&t).await.unwrap();
    client.wait_until(T, |r| r.table(nb::LOGICAL_SWITCH).by_name("s1").next().is_some()).await.unwrap();
    {
        let guard = client.replica();
        let r = guard.as_ref().unwrap();
        let (_, row) = r.table(nb::LOGICAL_SWITCH).by_name("s1").next().unwrap();
        assert_eq!(row.get("external_ids").and_then(|d| d.map_get("k")).and_then(|a| a.as_str()), Some("v"));
        assert!(row.get("other_config").is_none_or(|d| d.map_get("subnet").is_none()), "{row:?}");
    }
    // A change to an unmonitored column alone does not reach the replica.
    let version = client.status().borrow().replica_version;
    set_s1(&client, "other_config", ("subnet", "10.0.1.0/24")).await;
    // Then one to a monitored column: updates arrive in order, so once this one is in, the
    // first one would have been too.
    set_s1(&client, "external_ids", ("k", "w")).await;
    let seen = |r: &Replica| {
        r.table(nb::LOGICAL_SWITCH)
            .by_name("s1")
            .any(|(_, row)| row.get("external_ids").and_then(|d| d.map_get("k")).and_then(|a| a.as_str()) == Some("w"))
    };
    client.wait_until(T, seen).await.unwrap();
    assert_eq!(client.status().borrow().replica_version, version + 1);
}
