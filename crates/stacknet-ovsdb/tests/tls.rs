//! `ssl:` remotes against ovsdb-server with OVN-style certificates: a CA signs both ends.

use std::path::Path;
use std::time::Duration;

use stacknet_ovsdb::*;
use stacknet_sandbox::{DbServer, ServerTls};
use stacknet_testsupport::pki::Pki;

fn tls(dir: &Path, stem: &str) -> TlsConfig {
    TlsConfig {
        ca_cert: dir.join(format!("{stem}-ca.crt")),
        certificate: dir.join(format!("{stem}.crt")),
        private_key: dir.join(format!("{stem}.key")),
    }
}

#[tokio::test]
async fn ssl_remote_with_ca_and_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = Pki::new("stacknet test CA");
    pki.issue(d, "server", "ovsdb-server");
    pki.issue(d, "client", "stacknet");
    let rogue = Pki::new("someone else's CA");
    rogue.issue(d, "rogue", "stacknet");

    let port = stacknet_sandbox::free_tcp_port().unwrap();
    let server = ssl_server(d, port, "server");

    let remote = format!("ssl:127.0.0.1:{port}");
    let mut config = ClientConfig::new(Remote::parse_list(&remote).unwrap(), nb::DATABASE);
    config.tls = Some(tls(d, "client"));
    let client = Client::start(config.clone());
    client.connected(Duration::from_secs(10)).await.unwrap();
    let mut t = Transaction::new(nb::DATABASE);
    t.insert(nb::ADDRESS_SET, Row::from([("name".to_string(), Datum::Atom("over_tls".into()))]), None);
    client.transact(&t).await.unwrap();
    assert_eq!(client.replica().as_ref().unwrap().table(nb::ADDRESS_SET).by_name("over_tls").count(), 1);

    // A client certificate from another CA is refused by the server.
    config.tls = Some(TlsConfig { ca_cert: d.join("client-ca.crt"), ..tls(d, "rogue") });
    config.max_backoff = Duration::from_millis(100);
    let refused = Client::start(config.clone());
    assert!(refused.connected(Duration::from_secs(2)).await.is_err());

    // A server whose certificate is not from our CA is refused by us.
    config.tls = Some(TlsConfig { ca_cert: d.join("rogue-ca.crt"), ..tls(d, "client") });
    let distrustful = Client::start(config.clone());
    let e = distrustful.connected(Duration::from_secs(2)).await.unwrap_err().to_string();
    assert!(e.contains("TLS") || e.contains("certificate"), "{e}");

    // Unreadable certificate files are named in the error.
    config.tls = Some(TlsConfig { ca_cert: d.join("missing-ca.crt"), ..tls(d, "client") });
    let e = Client::start(config).connected(Duration::from_secs(2)).await.unwrap_err().to_string();
    assert!(e.contains("missing-ca.crt"), "{e}");
    drop(server);
}

/// ovsdb-server serving `nb.db` on `pssl:` with `<stem>.crt`, `.key` and `-ca.crt` from `d`.
fn ssl_server(d: &Path, port: u16, stem: &str) -> DbServer {
    let (key, crt, ca) =
        (d.join(format!("{stem}.key")), d.join(format!("{stem}.crt")), d.join(format!("{stem}-ca.crt")));
    let tls = ServerTls { private_key: &key, certificate: &crt, ca_cert: &ca };
    DbServer::start_ssl(d, "nb", "/usr/share/ovn/ovn-nb.ovsschema", port, tls).unwrap()
}

fn client_config(port: u16, tls: TlsConfig) -> ClientConfig {
    let mut config = ClientConfig::new(Remote::parse_list(&format!("ssl:127.0.0.1:{port}")).unwrap(), nb::DATABASE);
    config.tls = Some(tls);
    config.max_backoff = Duration::from_millis(200);
    config
}

#[tokio::test]
async fn expired_certificates_are_refused_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = Pki::new("stacknet test CA");
    pki.issue(d, "server", "ovsdb-server");
    pki.issue(d, "client", "stacknet");
    pki.issue_expired(d, "old-server", "ovsdb-server");
    pki.issue_expired(d, "old-client", "stacknet");

    // Our certificate expired: the server refuses it.
    let port = stacknet_sandbox::free_tcp_port().unwrap();
    let server = ssl_server(d, port, "server");
    let expired = Client::start(client_config(port, tls(d, "old-client")));
    assert!(expired.connected(Duration::from_secs(2)).await.is_err(), "an expired client certificate was accepted");
    let good = Client::start(client_config(port, tls(d, "client")));
    good.connected(Duration::from_secs(10)).await.unwrap();
    drop((server, expired, good));

    // The server's expired: we refuse it, and say why.
    let port = stacknet_sandbox::free_tcp_port().unwrap();
    let _server = ssl_server(d, port, "old-server");
    let client = Client::start(client_config(port, tls(d, "client")));
    let e = client.connected(Duration::from_secs(2)).await.unwrap_err().to_string();
    let last = client.status().borrow().last_error.clone().unwrap_or_default();
    assert!(last.to_lowercase().contains("expired"), "{e} / {last}");
}

/// Certificates are read from their files at every connection: rotated on disk (here to a new
/// CA's, as the server switches to it), they are used without restarting the client.
#[tokio::test]
async fn certificates_rotated_on_disk_are_used_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let first = Pki::new("first CA");
    first.issue(d, "server", "ovsdb-server");
    first.issue(d, "client", "stacknet");
    let port = stacknet_sandbox::free_tcp_port().unwrap();
    let mut server = ssl_server(d, port, "server");
    let client = Client::start(client_config(port, tls(d, "client")));
    client.connected(Duration::from_secs(10)).await.unwrap();
    let insert = |name: &str| {
        let mut t = Transaction::new(nb::DATABASE);
        t.insert(nb::ADDRESS_SET, Row::from([("name".to_string(), Datum::Atom(name.into()))]), None);
        t
    };
    client.transact(&insert("before_rotation")).await.unwrap();

    // Both ends move to a new CA; the server restarts with its new files.
    let second = Pki::new("second CA");
    second.issue(d, "server", "ovsdb-server");
    second.issue(d, "client", "stacknet");
    server.kill();
    let mut server = ssl_server(d, port, "server");
    let mut status = client.status();
    tokio::time::timeout(Duration::from_secs(20), status.wait_for(|s| s.sessions >= 2 && s.connected.is_some()))
        .await
        .expect("reconnected with the rotated certificates")
        .unwrap();
    client.transact(&insert("after_rotation")).await.unwrap();
    assert_eq!(client.replica().as_ref().unwrap().table(nb::ADDRESS_SET).by_name("before_rotation").count(), 1);

    // Only the new CA's client certificate is accepted now.
    let old = Pki::new("first CA again");
    old.issue(d, "stale", "stacknet");
    let stale = Client::start(client_config(port, tls(d, "stale")));
    assert!(stale.connected(Duration::from_secs(2)).await.is_err());
    server.kill();
}
