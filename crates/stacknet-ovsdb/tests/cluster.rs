//! Clustered databases: writes go to the leader only, found through `_Server`, and follow it
//! when leadership moves.

use std::process::Command;
use std::time::Duration;

use stacknet_ovsdb::*;
use stacknet_sandbox::DbServer;

const SCHEMA: &str = "/usr/share/ovn/ovn-nb.ovsschema";

fn tool(args: &[&str]) {
    let out = Command::new("ovsdb-tool").args(args).output().unwrap();
    assert!(out.status.success(), "ovsdb-tool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_only_writes_follow_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ports: Vec<u16> = (0..3).map(|_| stacknet_sandbox::free_tcp_port().unwrap()).collect();
    let addr = |i: usize| format!("tcp:127.0.0.1:{}", ports[i]);
    let file = |i: usize| d.join(format!("s{i}.db")).to_string_lossy().into_owned();
    tool(&["create-cluster", &file(0), SCHEMA, &addr(0)]);
    let mut servers = vec![DbServer::start(d, "s0", SCHEMA).unwrap()];
    for i in 1..3 {
        tool(&["join-cluster", &file(i), nb::DATABASE, &addr(i), &addr(0)]);
        servers.push(DbServer::start(d, &format!("s{i}"), SCHEMA).unwrap());
    }

    // Followers first in the list: the client must skip them.
    let remotes: Vec<Remote> = [1, 2, 0].iter().map(|&i| servers[i].remote().parse().unwrap()).collect();
    let mut config = ClientConfig::new(remotes, nb::DATABASE);
    config.max_backoff = Duration::from_millis(200);
    let client = Client::start(config);
    client.connected(Duration::from_secs(20)).await.unwrap();
    assert_eq!(client.status().borrow().connected.as_deref(), Some(servers[0].remote().as_str()));

    let insert = |name: &str| {
        let mut t = Transaction::new(nb::DATABASE);
        t.insert(nb::ADDRESS_SET, Row::from([("name".to_string(), Datum::Atom(name.into()))]), None);
        t
    };
    client.transact(&insert("on_first_leader")).await.unwrap();

    // A dropped connection resumes from the last transaction it saw: clustered servers keep a
    // transaction history, so only what was missed is sent (monitor_cond_since found it).
    client.disconnect();
    let mut status = client.status();
    tokio::time::timeout(Duration::from_secs(20), status.wait_for(|s| s.sessions >= 2 && s.connected.is_some()))
        .await
        .expect("reconnected")
        .unwrap();
    assert_eq!(status.borrow().incremental_resyncs, 1);
    assert_eq!(client.replica().as_ref().unwrap().table(nb::ADDRESS_SET).by_name("on_first_leader").count(), 1);

    // The leader dies; one of the others is elected and the client moves to it.
    servers[0].kill();
    let mut status = client.status();
    tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| s.connected.as_deref().is_some_and(|c| c != servers[0].remote())),
    )
    .await
    .expect("connected to the new leader")
    .unwrap();
    // Right after an election a write may race a leadership change; retry transient errors.
    let mut done = false;
    for _ in 0..50 {
        match client.transact(&insert("on_second_leader")).await {
            Ok(_) => {
                done = true;
                break;
            }
            Err(e) if e.is_transient() => {
                let _ = client.connected(Duration::from_secs(5)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(done);
    let r = client.replica();
    let t = r.as_ref().unwrap().table(nb::ADDRESS_SET);
    assert_eq!(t.by_name("on_first_leader").count(), 1, "the replica survived the move");
    assert_eq!(t.by_name("on_second_leader").count(), 1);
}
