//! `ssl:` remotes against ovsdb-server with OVN-style certificates: a CA signs both ends.

use std::path::Path;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use stacknet_ovsdb::*;
use stacknet_sandbox::DbServer;

struct Pki<'a> {
    ca: CertifiedIssuer<'a, KeyPair>,
}

impl Pki<'_> {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Pki { ca: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    /// Writes `<stem>.crt` / `<stem>.key` signed by this CA, and `<stem>-ca.crt`.
    fn issue(&self, dir: &Path, stem: &str, cn: &str) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        std::fs::write(dir.join(format!("{stem}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
        std::fs::write(dir.join(format!("{stem}-ca.crt")), self.ca.pem()).unwrap();
    }
}

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
    let server = DbServer::start_with(
        d,
        "nb",
        "/usr/share/ovn/ovn-nb.ovsschema",
        vec![format!("pssl:{port}:127.0.0.1")],
        vec![
            format!("--private-key={}", d.join("server.key").display()),
            format!("--certificate={}", d.join("server.crt").display()),
            format!("--ca-cert={}", d.join("server-ca.crt").display()),
        ],
    )
    .unwrap();

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
