//! Faults a real server does not produce on demand: a peer that stops answering, a peer that
//! sends garbage, a server that asks us for echoes. A scripted fake server speaks just enough
//! OVSDB (the real NB schema, empty monitors) to get the client past its handshake.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use stacknet_ovsdb::codec::Framer;
use stacknet_ovsdb::rpc::Message;
use stacknet_ovsdb::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::mpsc;

#[derive(Clone, Copy)]
enum AfterHandshake {
    /// Answer nothing more, not even echoes.
    GoSilent,
    /// Send bytes that are not JSON.
    SendGarbage,
    /// Ask the client for an echo and report its answer.
    AskEcho,
    /// Work on each transaction this long, answering nothing meanwhile (echoes included), as
    /// ovsdb-server does while it commits a large one.
    SlowTransact(Duration),
}

/// Serves connections on a socket; the first connection behaves as `first`, later ones
/// normally. Returns the socket path, a connection counter and the echo answers received.
async fn fake_server(
    dir: &std::path::Path,
    first: AfterHandshake,
) -> (String, Arc<AtomicUsize>, mpsc::UnboundedReceiver<Value>) {
    let path = dir.join("fake.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string("/usr/share/ovn/ovn-nb.ovsschema").unwrap()).unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let (echo_tx, echo_rx) = mpsc::unbounded_channel();
    let counter = count.clone();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let behaviour = if n == 0 { Some(first) } else { None };
            let schema = schema.clone();
            let echo_tx = echo_tx.clone();
            tokio::spawn(async move {
                let mut framer = Framer::default();
                let mut buf = vec![0u8; 65536];
                let mut synced = false;
                loop {
                    let Ok(n) = sock.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    framer.push(&buf[..n]);
                    let mut msgs = Vec::new();
                    while let Ok(Some(m)) = framer.next_message() {
                        msgs.push(Message::from_json(serde_json::from_slice(m).unwrap()).unwrap());
                    }
                    for m in msgs {
                        let reply = match m {
                            Message::Request { id, method, params } => {
                                match (synced, behaviour) {
                                    (true, Some(AfterHandshake::GoSilent)) => continue,
                                    (true, Some(AfterHandshake::SendGarbage)) => {
                                        // The first request after the handshake (the
                                        // client's echo) gets garbage for an answer.
                                        let _ = sock.write_all(b"}}}{not json at all").await;
                                        continue;
                                    }
                                    (true, Some(AfterHandshake::SlowTransact(busy))) if method == "transact" => {
                                        tokio::time::sleep(busy).await;
                                    }
                                    _ => {}
                                }
                                let result = match method.as_str() {
                                    "get_schema" => schema.clone(),
                                    // The _Server check: a standalone database.
                                    "monitor_cond" => {
                                        json!({"Database": {"6f0f5dc5-4b2b-4b7a-9c53-2f4b3f1f0e01": {"initial": {
                                        "name": "OVN_Northbound", "model": "standalone", "connected": true, "leader": true}}}})
                                    }
                                    "monitor_cond_since" => {
                                        synced = true;
                                        json!([false, "00000000-0000-0000-0000-000000000000", {}])
                                    }
                                    "echo" => json!([]),
                                    // An empty result per operation (the first param is the
                                    // database).
                                    "transact" => {
                                        let ops = params.as_array().map_or(0, |p| p.len().saturating_sub(1));
                                        Value::Array(vec![json!({}); ops])
                                    }
                                    _ => Value::Null,
                                };
                                Some(json!({"id": id, "result": result, "error": null}))
                            }
                            Message::Response { result, .. } => {
                                let _ = echo_tx.send(result);
                                None
                            }
                            Message::Notification { .. } => None,
                        };
                        if let Some(r) = reply {
                            sock.write_all(r.to_string().as_bytes()).await.unwrap();
                        }
                        if synced && matches!(behaviour, Some(AfterHandshake::AskEcho)) {
                            let ask = json!({"id": "ping-1", "method": "echo", "params": ["hello"]});
                            let _ = sock.write_all(ask.to_string().as_bytes()).await;
                        }
                    }
                }
            });
        }
    });
    (format!("unix:{}", path.display()), count, echo_rx)
}

fn config(remote: &str) -> ClientConfig {
    let mut c = ClientConfig::new(Remote::parse_list(remote).unwrap(), nb::DATABASE);
    c.echo_interval = Duration::from_millis(200);
    c.max_backoff = Duration::from_millis(100);
    c
}

/// Waits (5 s at most) for a second session, connected; the status watch as it is then.
async fn reconnected(client: &Client, what: &str) -> tokio::sync::watch::Receiver<client::Status> {
    let mut status = client.status();
    tokio::time::timeout(Duration::from_secs(5), status.wait_for(|s| s.sessions >= 2 && s.connected.is_some()))
        .await
        .unwrap_or_else(|_| panic!("not reconnected {what} within 5 s"))
        .unwrap();
    status
}

#[tokio::test]
async fn a_silent_peer_is_detected_by_echo_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let (remote, count, _) = fake_server(dir.path(), AfterHandshake::GoSilent).await;
    let client = Client::start(config(&remote));
    client.connected(Duration::from_secs(5)).await.unwrap();
    let status = reconnected(&client, "after the silent peer").await;
    assert!(count.load(Ordering::SeqCst) >= 2);
    let last = status.borrow().last_error.clone();
    assert!(last.is_none(), "the new session is healthy: {last:?}");
}

/// With the probe off (OVN's `inactivity_probe=0`), a server silent for many times what the
/// probe would allow (as one busy committing a huge transaction is) keeps its session.
#[tokio::test]
async fn with_the_probe_off_a_silent_server_keeps_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let (remote, count, _) = fake_server(dir.path(), AfterHandshake::GoSilent).await;
    let mut c = config(&remote);
    c.echo_interval = Duration::ZERO;
    let client = Client::start(c);
    client.connected(Duration::from_secs(5)).await.unwrap();
    // Ten times the 200 ms probe of the other tests, silent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count.load(Ordering::SeqCst), 1, "one session only");
    let status = client.status();
    let s = status.borrow();
    assert!(s.connected.is_some() && s.sessions == 1 && s.last_error.is_none(), "{s:?}");
}

/// A server silent while it commits a large transaction keeps its session (its silence is
/// allowed for in proportion to the transaction's size); a small one does not buy it that time.
#[tokio::test]
async fn a_server_busy_with_a_large_transaction_keeps_its_session_but_not_with_a_small_one() {
    let dir = tempfile::tempdir().unwrap();
    // Four times the 200 ms probe: without an allowance, the session would be dropped.
    let (remote, count, _) = fake_server(dir.path(), AfterHandshake::SlowTransact(Duration::from_millis(800))).await;
    let client = Client::start(config(&remote));
    client.connected(Duration::from_secs(5)).await.unwrap();
    let mut large = Transaction::new(nb::DATABASE);
    // 2 MB: two seconds of allowance at 1 s per MB.
    large.comment(&"x".repeat(2 << 20));
    client.transact(&large).await.expect("the large transaction is answered on the same session");
    assert_eq!(count.load(Ordering::SeqCst), 1, "one session only");

    let dir = tempfile::tempdir().unwrap();
    let (remote, count, _) = fake_server(dir.path(), AfterHandshake::SlowTransact(Duration::from_secs(3))).await;
    let client = Client::start(config(&remote));
    client.connected(Duration::from_secs(5)).await.unwrap();
    let small = Transaction::new(nb::DATABASE);
    let started = std::time::Instant::now();
    let e = client.transact(&small).await.expect_err("a small transaction does not excuse 3 s of silence");
    assert!(e.to_string().contains("echo"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2), "dropped after {:?}", started.elapsed());
    reconnected(&client, "after the silence").await;
    assert!(count.load(Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn garbage_from_the_server_drops_the_connection_and_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let (remote, count, _) = fake_server(dir.path(), AfterHandshake::SendGarbage).await;
    let client = Client::start(config(&remote));
    reconnected(&client, "after garbage").await;
    assert!(count.load(Ordering::SeqCst) >= 2);
    // The client is usable on the new connection.
    let t = Transaction::new(nb::DATABASE);
    client.transact(&t).await.unwrap();
}

#[tokio::test]
async fn the_servers_echo_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (remote, _, mut echoes) = fake_server(dir.path(), AfterHandshake::AskEcho).await;
    let client = Client::start(config(&remote));
    client.connected(Duration::from_secs(5)).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), echoes.recv()).await.unwrap().unwrap();
    assert_eq!(answer, json!(["hello"]));
}
