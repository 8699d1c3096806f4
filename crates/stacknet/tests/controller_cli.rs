//! `stacknet controller` as a process: killed (SIGKILL) at 100 random points of large reconciles,
//! again and again, then restarted: the Northbound database holds no orphans and no
//! duplicates, and a further restart writes nothing. Bad configuration exits 2 naming it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stacknet_sandbox::Ovn;
use stacknet_testsupport::http::get_blocking;
use stacknet_testsupport::until_blocking;

const BIN: &str = env!("CARGO_BIN_EXE_stacknet");

fn cluster(pods: usize, nodes: usize, policies: usize) -> String {
    let mut y = String::from(
        "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: big}}\n",
    );
    for n in 0..nodes {
        y.push_str(&format!("- {{apiVersion: v1, kind: Node, metadata: {{name: n{n}}}}}\n"));
    }
    for i in 0..pods {
        y.push_str(&format!(
            "- {{apiVersion: v1, kind: Pod, metadata: {{name: p{i}, namespace: big, labels: {{app: a{}, tier: t{}}}}}, spec: {{nodeName: n{}, containers: []}}}}\n",
            i % policies,
            i % 3,
            i % nodes
        ));
    }
    for j in 0..policies {
        y.push_str(&format!(
            "- {{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {{name: np{j}, namespace: big}}, spec: {{podSelector: {{matchLabels: {{app: a{j}}}}}, ingress: [{{from: [{{podSelector: {{matchLabels: {{tier: t{}}}}}}}], ports: [{{port: {}}}]}}]}}}}\n",
            j % 3,
            1000 + j
        ));
    }
    y
}

fn spawn(ovn: &Ovn, dir: &std::path::Path) -> Child {
    Command::new(BIN)
        .args([
            "controller",
            "--cluster",
            "k1",
            "--nb",
            &ovn.nb.remote(),
            "--metrics-addr",
            "127.0.0.1:0",
            "--poll-ms",
            "50",
        ])
        .arg("--manifests")
        .arg(dir)
        .env("STACKNET_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The address the controller serves on (it prints it when it starts).
fn http_addr(child: &mut Child) -> std::net::SocketAddr {
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    loop {
        let line = lines.next().expect("the controller printed its address").unwrap();
        if let Some(rest) = line.split("http://").nth(1) {
            let addr = rest.split('/').next().unwrap().parse().unwrap();
            // Keep draining stderr so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines.by_ref() {});
            return addr;
        }
    }
}

fn wait_ready(addr: std::net::SocketAddr) {
    until_blocking("the controller ready", Duration::from_secs(60), || {
        get_blocking(addr, "/readyz").is_some_and(|a| a.status == 200)
    });
}

fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let page = get_blocking(addr, "/metrics").expect("/metrics answers").body;
    stacknet_testsupport::http::metric(&page, name).unwrap_or_else(|| panic!("no {name} in:\n{page}"))
}

/// Our rows per table, and the names that occur more than once.
fn census(ovn: &Ovn) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut counts = BTreeMap::new();
    let mut dups = Vec::new();
    for table in [
        "Logical_Switch",
        "Logical_Switch_Port",
        "Logical_Router",
        "Logical_Router_Port",
        "Port_Group",
        "Address_Set",
        "ACL",
    ] {
        let out = ovn
            .nbctl(&["--bare", "--columns=external_ids", "find", table, "external_ids:stacknet.io/cluster=k1"])
            .unwrap();
        let ids: Vec<String> = out
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split_whitespace().find(|w| w.starts_with("\"stacknet.io/id=")).unwrap_or(l).to_string())
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for id in &ids {
            if !seen.insert(id.clone()) {
                dups.push(format!("{table} {id}"));
            }
        }
        counts.insert(table.to_string(), ids.len());
    }
    (counts, dups)
}

#[test]
fn killed_at_random_points_it_leaves_no_orphans_and_no_duplicates() {
    let ovn = Ovn::nb_only().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let big = cluster(1200, 6, 60);
    let small = cluster(300, 3, 20);

    // The reference: the network for `big`, made without interruption.
    std::fs::write(dir.path().join("c.yaml"), &big).unwrap();
    let mut c = spawn(&ovn, dir.path());
    let addr = http_addr(&mut c);
    let t = Instant::now();
    wait_ready(addr);
    let full = t.elapsed();
    c.kill().unwrap();
    c.wait().unwrap();
    let (expected_big, dups) = census(&ovn);
    assert!(dups.is_empty(), "{dups:?}");
    assert_eq!(expected_big["Logical_Switch_Port"], 1200 + 6 + 6, "pods, router ports and management ports");

    // Kill trials: the folder flips between the big and the small cluster, so every start has
    // a large reconcile (creating or garbage-collecting hundreds of rows) to be killed in.
    let mut seed: u64 = 0x5eed_1234;
    let span = full.as_millis().clamp(50, 3000) as u64;
    for trial in 0..100 {
        std::fs::write(dir.path().join("c.yaml"), if trial % 2 == 0 { &small } else { &big }).unwrap();
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let delay = Duration::from_millis((seed >> 33) % (span + 100));
        let mut c = spawn(&ovn, dir.path());
        // Where the kill lands is the point: a random moment, not a condition.
        std::thread::sleep(delay);
        c.kill().unwrap();
        c.wait().unwrap();
        let (now, dups) = census(&ovn);
        assert!(dups.is_empty(), "trial {trial} (killed after {delay:?}): duplicates {dups:?}");
        let state = if now == expected_big {
            "big"
        } else if now["Logical_Switch_Port"] == 300 + 3 {
            "small"
        } else {
            "other"
        };
        eprintln!("trial {trial}: killed after {delay:?} (a full start takes {full:?}): network {state}");
    }

    // After the last kill: a run converges to exactly the folder's network...
    std::fs::write(dir.path().join("c.yaml"), &big).unwrap();
    let mut c = spawn(&ovn, dir.path());
    let addr = http_addr(&mut c);
    wait_ready(addr);
    c.kill().unwrap();
    c.wait().unwrap();
    let (after, dups) = census(&ovn);
    assert!(dups.is_empty(), "{dups:?}");
    assert_eq!(after, expected_big, "orphans or missing rows after the kills");

    // ...and a restart on it writes nothing.
    let mut c = spawn(&ovn, dir.path());
    let addr = http_addr(&mut c);
    wait_ready(addr);
    assert_eq!(metric(addr, "stacknet_ovsdb_transactions_total"), 0.0);
    // SIGTERM: a graceful stop.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut exit = None;
    until_blocking("an exit after SIGTERM", Duration::from_secs(10), || {
        exit = c.try_wait().unwrap();
        exit.is_some()
    });
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}");
}

#[test]
fn bad_configuration_exits_2_naming_the_setting() {
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("controller")
            .args(args)
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("HOME", "/nonexistent")
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, err) = run(&["--manifests", d]);
    assert_eq!(code, Some(2));
    assert!(err.contains("nb:"), "{err}");
    let (code, err) = run(&["--nb", "unix:/x.sock", "--manifests", d, "--cluster-cidr", "10.0.0.0/40"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("cluster-cidr") && err.contains("10.0.0.0/40"), "{err}");
    // No folder: the Kubernetes API, and without one the error says what to do.
    let (code, err) = run(&["--nb", "unix:/x.sock"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("Kubernetes API") && err.contains("--manifests"), "{err}");
    let (code, err) = run(&["--nb", "unix:/x.sock", "--manifests", "/nonexistent/dir"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("/nonexistent/dir"), "{err}");
    // TLS: an ssl: remote needs certificates, all three; once they are given, plaintext tcp:
    // is refused; an unreadable file is named.
    let (code, err) = run(&["--nb", "ssl:127.0.0.1:6641", "--manifests", d]);
    assert_eq!(code, Some(2));
    assert!(err.contains("nb:") && err.contains("needs TLS certificates"), "{err}");
    let pki = stacknet_testsupport::pki::Pki::new("test CA");
    let c = pki.issue(dir.path(), "client", "stacknet");
    let (ca, crt, key) =
        (c.ca_cert.to_str().unwrap(), c.certificate.to_str().unwrap(), c.private_key.to_str().unwrap());
    let (code, err) = run(&["--nb", "ssl:127.0.0.1:6641", "--manifests", d, "--ca-cert", ca]);
    assert_eq!(code, Some(2));
    assert!(err.contains("certificate, private-key missing"), "{err}");
    let tls = ["--ca-cert", ca, "--certificate", crt, "--private-key", key];
    let (code, err) = run(&[&["--nb", "tcp:127.0.0.1:6641,ssl:127.0.0.1:6642", "--manifests", d], &tls[..]].concat());
    assert_eq!(code, Some(2));
    assert!(err.contains("tcp:127.0.0.1:6641 is plaintext"), "{err}");
    let (code, err) = run(&[
        "--nb",
        "ssl:127.0.0.1:6641",
        "--manifests",
        d,
        "--ca-cert",
        "/nonexistent/ca.crt",
        "--certificate",
        crt,
        "--private-key",
        key,
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("/nonexistent/ca.crt"), "{err}");

    let toml = dir.path().join("c.toml");
    std::fs::write(&toml, "node_subnet_v4 = \"big\"\n").unwrap();
    let (code, err) = run(&["--config", toml.to_str().unwrap(), "--nb", "unix:/x.sock", "--manifests", d]);
    assert_eq!(code, Some(2));
    assert!(err.contains("c.toml") && err.contains("node_subnet_v4"), "{err}");
}

/// The controller over `ssl:` with a client certificate, as the deployment runs it: it
/// converges; the database refuses a client whose certificate is not from its CA.
#[test]
fn the_controller_writes_over_tls_with_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = stacknet_testsupport::pki::Pki::new("ovn CA");
    let server = pki.issue(d, "server", "ovsdb-server");
    let client = pki.issue(d, "client", "stacknet");
    let port = stacknet_sandbox::free_tcp_port().unwrap();
    let tls = stacknet_sandbox::ServerTls {
        private_key: &server.private_key,
        certificate: &server.certificate,
        ca_cert: &server.ca_cert,
    };
    let nb = stacknet_sandbox::DbServer::start_ssl(d, "nb", "/usr/share/ovn/ovn-nb.ovsschema", port, tls).unwrap();
    let folder = d.join("manifests");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("c.yaml"), cluster(20, 2, 2)).unwrap();
    let spawn_tls = |who: &stacknet_testsupport::pki::Issued| {
        Command::new(BIN)
            .args(["controller", "--cluster", "k1", "--metrics-addr", "127.0.0.1:0", "--poll-ms", "50"])
            .args(["--nb", &format!("ssl:127.0.0.1:{port}")])
            .arg("--ca-cert")
            .arg(&who.ca_cert)
            .arg("--certificate")
            .arg(&who.certificate)
            .arg("--private-key")
            .arg(&who.private_key)
            .arg("--manifests")
            .arg(&folder)
            .env("STACKNET_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut c = spawn_tls(&client);
    let addr = http_addr(&mut c);
    wait_ready(addr);
    let ports = nb_ports(&nb.socket().to_string_lossy());
    assert_eq!(ports, 20 + 2 + 2, "pods, router ports and management ports over TLS");
    c.kill().unwrap();
    c.wait().unwrap();

    // A certificate from another CA: the database refuses it, the controller never gets ready.
    let rogue = stacknet_testsupport::pki::Pki::new("rogue CA").issue(d, "rogue", "stacknet");
    let rogue = stacknet_testsupport::pki::Issued { ca_cert: client.ca_cert.clone(), ..rogue };
    let mut c = spawn_tls(&rogue);
    let addr = http_addr(&mut c);
    // Not ready, and after a while /readyz says why (the database refused our CA).
    until_blocking("the refusal reported by /readyz", Duration::from_secs(30), || {
        get_blocking(addr, "/readyz").is_some_and(|a| {
            assert_ne!(a.status, 200, "ready without the database: {}", a.body);
            a.body.contains("last attempt") && a.body.contains("UnknownCA")
        })
    });
    c.kill().unwrap();
    c.wait().unwrap();
}

/// Logical switch ports tagged with cluster k1 (through the plaintext unix socket the
/// server also serves, for the test's own reads).
fn nb_ports(socket: &str) -> usize {
    let out = Command::new("ovn-nbctl")
        .args([
            &format!("--db=unix:{socket}"),
            "--bare",
            "--columns=name",
            "find",
            "Logical_Switch_Port",
            "external_ids:stacknet.io/cluster=k1",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).count()
}
