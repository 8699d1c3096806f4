//! A real OpenStack on loopback, from Debian's packages, for the OpenStack tier and its
//! benchmark: Keystone v3 (uwsgi, fernet tokens, real password auth), neutron-server with
//! ML2/OVN writing into a private OVN (our [`Ovn`]: NB, SB, ovn-northd on unix sockets), and
//! the Octavia API with its driver agent and the `ovn` provider. MariaDB holds their databases
//! on a unix socket only. No RabbitMQ (oslo.messaging's in-process `fake://` driver: ML2/OVN
//! needs no agents) and no systemd. Every daemon is a child of ours in a process group of its
//! own, listening on a loopback port chosen here, and is stopped by that group when the value is
//! dropped. Everything lives in one temporary directory.
//!
//! Octavia's driver library insists on sockets under `/run/octavia`: its two processes run in a
//! private mount namespace each (`unshare --mount`), where that path is a bind mount of our
//! directory, so the host's `/run` is never touched.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ovn::{io, run};
use crate::{Error, Ovn, Result, Workdir, free_tcp_port};

/// The Debian packages the tier needs (besides OVN's).
pub const PACKAGES: &[&str] = &[
    "mariadb-server",
    "keystone",
    "neutron-server",
    "octavia-api",
    "octavia-driver-agent",
    "python3-ovn-octavia-provider",
];

const HINT: &str = "apt-get install mariadb-server keystone neutron-server octavia-api octavia-driver-agent \
                    python3-ovn-octavia-provider (.ci/run shows how, without starting their services)";

/// How long a daemon may take to answer.
const STARTUP: Duration = Duration::from_secs(120);

/// The admin user Keystone is bootstrapped with (a test cloud's: never a real credential).
pub const ADMIN_USER: &str = "admin";
pub const ADMIN_PASSWORD: &str = "stacknet-admin";
pub const ADMIN_PROJECT: &str = "admin";
pub const REGION: &str = "RegionOne";

/// What to start.
#[derive(Debug, Clone)]
pub struct OpenStackOptions {
    /// The Octavia API and driver agent (provider `ovn`).
    pub octavia: bool,
}

impl Default for OpenStackOptions {
    fn default() -> Self {
        OpenStackOptions { octavia: true }
    }
}

/// One daemon: its process group, stopped on drop.
#[derive(Debug)]
struct Daemon {
    name: &'static str,
    child: Child,
    /// How long it may take to stop after SIGTERM.
    grace: Duration,
}

impl Daemon {
    fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Result<Daemon> {
        use std::os::unix::process::CommandExt;
        let out = std::fs::File::create(log).map_err(io(format!("{}", log.display())))?;
        let err = out.try_clone().map_err(io(format!("{}", log.display())))?;
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| missing(&program, &e).unwrap_or_else(|| io(name)(e)))?;
        Ok(Daemon { name, child, grace: Duration::from_secs(10) })
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn group(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// SIGTERM to the whole group (API workers are its children).
    fn terminate(&self) {
        let _ = nix::sys::signal::killpg(self.group(), nix::sys::signal::Signal::SIGTERM);
        // A frozen daemon (see `OpenStack::freeze`) acts on it once it runs again.
        let _ = nix::sys::signal::killpg(self.group(), nix::sys::signal::Signal::SIGCONT);
    }

    /// Waits for the leader until `deadline`, then SIGKILLs whatever is left of the group
    /// (workers outliving their parent go too).
    fn finish(&mut self, deadline: Instant) {
        while Instant::now() < deadline && self.running() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = nix::sys::signal::killpg(self.group(), nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A missing program names the packages to install.
fn with_hint(e: Error) -> Error {
    match e {
        Error::Missing { program, .. } => Error::Missing { program, hint: HINT.into() },
        other => other,
    }
}

fn missing(program: &str, e: &std::io::Error) -> Option<Error> {
    (e.kind() == std::io::ErrorKind::NotFound).then(|| Error::Missing { program: program.into(), hint: HINT.into() })
}

/// An HTTP answer: status, the `X-Subject-Token` header (Keystone), body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub subject_token: Option<String>,
    pub body: String,
}

/// A minimal HTTP/1.1 exchange with a loopback service (`Connection: close`), for setting the
/// cloud up and for readiness checks. The product's client is elsewhere.
pub fn http(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> Result<Answer> {
    let fail = |message: String| Error::Io { what: format!("{method} {url}"), message };
    let rest = url.strip_prefix("http://").ok_or_else(|| fail("only http:// URLs".into()))?;
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let addr: SocketAddr = host.parse().map_err(|_| fail(format!("{host} is not an address:port")))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| fail(e.to_string()))?;
    s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| fail(e.to_string()))?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: application/json\r\n");
    if let Some(t) = token {
        req.push_str(&format!("X-Auth-Token: {t}\r\n"));
    }
    let body = body.unwrap_or_default();
    req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).map_err(|e| fail(e.to_string()))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| fail(e.to_string()))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| fail(format!("no HTTP status in {:?}", head.lines().next())))?;
    let subject_token = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("x-subject-token").then(|| v.trim().to_string())
    });
    let chunked =
        head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_string() };
    Ok(Answer { status, subject_token, body })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Waits until `url` answers at all (any HTTP status), while `daemon` runs.
fn wait_http(daemon: &mut Daemon, url: &str, log: &Path) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < STARTUP {
        if !daemon.running() {
            return Err(Error::Io {
                what: daemon.name.into(),
                message: format!("exited while starting (log: {})", log.display()),
            });
        }
        if http("GET", url, None, None).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(Error::NotReady { what: daemon.name.into(), seconds: STARTUP.as_secs(), log: log.into() })
}

/// A running cloud. Dropping it stops every daemon (Octavia, Neutron, Keystone, MariaDB,
/// then OVN) and removes its directory.
pub struct OpenStack {
    /// The OVN Neutron writes into.
    pub ovn: Ovn,
    pub keystone_url: String,
    pub neutron_url: String,
    pub octavia_url: Option<String>,
    /// Started last, stopped first.
    daemons: Vec<Daemon>,
    dir: Workdir,
    /// How long `start` took.
    pub started_in: Duration,
}

impl std::fmt::Debug for OpenStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenStack")
            .field("dir", &self.dir.path())
            .field("keystone", &self.keystone_url)
            .field("neutron", &self.neutron_url)
            .field("octavia", &self.octavia_url)
            .finish()
    }
}

struct Ports {
    keystone: u16,
    neutron: u16,
    octavia: u16,
}

impl OpenStack {
    /// Whether the packages are installed (the tier is skipped, or fails, without them).
    pub fn installed() -> bool {
        ["mariadbd", "keystone-manage", "uwsgi", "neutron-server", "octavia-api", "octavia-driver-agent"]
            .iter()
            .all(|p| ["/usr/sbin", "/usr/bin"].iter().any(|d| Path::new(d).join(p).exists()))
    }

    /// Starts everything and waits until each service answers (and Keystone's catalog lists
    /// Neutron and Octavia).
    pub fn start(options: OpenStackOptions) -> Result<OpenStack> {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("stacknet-openstack-")
            .tempdir()
            .map(Workdir::Temp)
            .map_err(io("temporary directory"))?;
        let ovn_dir = dir.path().join("ovn");
        std::fs::create_dir_all(&ovn_dir).map_err(io("ovn"))?;
        let ovn = Ovn::with_northd_in(Workdir::Kept(ovn_dir))?;
        let ports = Ports { keystone: free_tcp_port()?, neutron: free_tcp_port()?, octavia: free_tcp_port()? };
        let mut cloud = OpenStack {
            keystone_url: format!("http://127.0.0.1:{}/v3", ports.keystone),
            neutron_url: format!("http://127.0.0.1:{}", ports.neutron),
            octavia_url: options.octavia.then(|| format!("http://127.0.0.1:{}", ports.octavia)),
            ovn,
            daemons: Vec::new(),
            dir,
            started_in: Duration::ZERO,
        };
        for sub in ["etc", "log", "state", "lock", "keystone/fernet-keys", "keystone/credential-keys", "octavia"] {
            std::fs::create_dir_all(cloud.path(sub)).map_err(io(sub))?;
        }
        cloud.start_mariadb()?;
        cloud.write_configs(&ports, options.octavia)?;
        // The three schema migrations are independent: run them side by side.
        let migrations: Vec<(&str, Vec<String>)> = {
            let c = |f: &str| cloud.path(f).display().to_string();
            let mut m = vec![
                ("keystone-manage", vec!["--config-file".into(), c("etc/keystone.conf"), "db_sync".into()]),
                (
                    "neutron-db-manage",
                    vec![
                        "--config-file".into(),
                        c("etc/neutron.conf"),
                        "--config-file".into(),
                        c("etc/ml2_conf.ini"),
                        "upgrade".into(),
                        "heads".into(),
                    ],
                ),
            ];
            if options.octavia {
                m.push((
                    "octavia-db-manage",
                    vec!["--config-file".into(), c("etc/octavia.conf"), "upgrade".into(), "head".into()],
                ));
            }
            m
        };
        let results: Vec<Result<String>> = std::thread::scope(|s| {
            let handles: Vec<_> = migrations
                .iter()
                .map(|(program, args)| {
                    s.spawn(move || run(program, &args.iter().map(String::as_str).collect::<Vec<_>>()))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Ok(String::new()))).collect()
        });
        for r in results {
            r.map_err(with_hint)?;
        }
        cloud.start_keystone()?;
        cloud.start_neutron()?;
        if options.octavia {
            cloud.start_octavia()?;
        }
        cloud.started_in = started.elapsed();
        Ok(cloud)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    fn mysql_socket(&self) -> PathBuf {
        self.path("mysql/mysqld.sock")
    }

    fn db_url(&self, db: &str) -> String {
        format!("mysql+pymysql://{db}:{db}@localhost/{db}?unix_socket={}&charset=utf8", self.mysql_socket().display())
    }

    /// A `clouds.yaml` for the admin user (cloud name `stacknet-test`), in the cloud's directory.
    pub fn clouds_yaml(&self) -> Result<PathBuf> {
        let path = self.path("etc/clouds.yaml");
        let text = format!(
            "clouds:\n  stacknet-test:\n    auth:\n      auth_url: {}\n      username: {ADMIN_USER}\n      password: {ADMIN_PASSWORD}\n      project_name: {ADMIN_PROJECT}\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: {REGION}\n    identity_api_version: 3\n",
            self.keystone_url
        );
        std::fs::write(&path, text).map_err(io(path.display().to_string()))?;
        Ok(path)
    }

    /// A project-scoped admin token (password auth), for the harness's own checks.
    pub fn admin_token(&self) -> Result<String> {
        let body = format!(
            r#"{{"auth":{{"identity":{{"methods":["password"],"password":{{"user":{{"name":"{ADMIN_USER}","domain":{{"name":"Default"}},"password":"{ADMIN_PASSWORD}"}}}}}},"scope":{{"project":{{"name":"{ADMIN_PROJECT}","domain":{{"name":"Default"}}}}}}}}}}"#
        );
        let a = http("POST", &format!("{}/auth/tokens", self.keystone_url), None, Some(&body))?;
        a.subject_token.filter(|_| a.status == 201).ok_or_else(|| Error::Io {
            what: "keystone password auth".into(),
            message: format!("HTTP {}: {}", a.status, a.body),
        })
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) a daemon's whole process group, by the name
    /// [`Self::daemons`] gives it: a frozen service accepts connections and never answers,
    /// as a hung one does.
    pub fn freeze(&self, daemon: &str, frozen: bool) -> Result<()> {
        let d = self.daemons.iter().find(|d| d.name == daemon).ok_or_else(|| Error::Io {
            what: format!("freezing {daemon}"),
            message: "no such daemon in this cloud".into(),
        })?;
        let signal = if frozen { nix::sys::signal::Signal::SIGSTOP } else { nix::sys::signal::Signal::SIGCONT };
        nix::sys::signal::killpg(d.group(), signal)
            .map_err(|e| Error::Io { what: format!("{signal} to {daemon}"), message: e.to_string() })
    }

    /// The daemons and their process groups, in the order they are stopped.
    pub fn daemons(&self) -> Vec<(&'static str, u32)> {
        self.daemons.iter().rev().map(|d| (d.name, d.child.id())).collect()
    }

    fn start_mariadb(&mut self) -> Result<()> {
        std::fs::create_dir_all(self.path("mysql")).map_err(io("mysql"))?;
        let cnf = self.path("etc/my.cnf");
        let text = format!(
            "[mysqld]\ndatadir={data}\nsocket={sock}\npid-file={dir}/mysqld.pid\nlog-error={log}\nskip-networking\nuser=root\n\
             skip-log-bin\ninnodb_buffer_pool_size=64M\ninnodb_log_file_size=16M\ninnodb_flush_log_at_trx_commit=0\n\
             innodb_doublewrite=0\ncharacter-set-server=utf8mb4\ncollation-server=utf8mb4_general_ci\nmax_connections=300\n",
            data = self.path("mysql/data").display(),
            sock = self.mysql_socket().display(),
            dir = self.path("mysql").display(),
            log = self.path("log/mysqld.err").display(),
        );
        std::fs::write(&cnf, text).map_err(io("my.cnf"))?;
        let defaults = format!("--defaults-file={}", cnf.display());
        run("mariadb-install-db", &[&defaults, "--auth-root-authentication-method=normal", "--skip-test-db"])
            .map_err(with_hint)?;
        let mut cmd = Command::new("mariadbd");
        cmd.arg(&defaults);
        let log = self.path("log/mysqld.out");
        let mut daemon = Daemon::spawn("mariadbd", cmd, &log)?;
        let sock = format!("--socket={}", self.mysql_socket().display());
        let start = Instant::now();
        while run("mariadb-admin", &[&sock, "-uroot", "ping"]).is_err() {
            if !daemon.running() || start.elapsed() > STARTUP {
                return Err(Error::NotReady {
                    what: "mariadbd".into(),
                    seconds: STARTUP.as_secs(),
                    log: self.path("log/mysqld.err"),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.daemons.push(daemon);
        let mut sql = String::new();
        for db in ["keystone", "neutron", "octavia"] {
            sql.push_str(&format!(
                "CREATE DATABASE {db}; CREATE USER '{db}'@'localhost' IDENTIFIED BY '{db}'; GRANT ALL ON {db}.* TO '{db}'@'localhost'; "
            ));
        }
        sql.push_str("FLUSH PRIVILEGES;");
        run("mariadb", &[&sock, "-uroot", "-e", &sql]).map(drop)
    }

    fn authtoken(&self, section: &str) -> String {
        format!(
            "[{section}]\nwww_authenticate_uri = {ks}\nauth_url = {ks}\nauth_type = password\nusername = {ADMIN_USER}\n\
             password = {ADMIN_PASSWORD}\nproject_name = {ADMIN_PROJECT}\nuser_domain_name = Default\n\
             project_domain_name = Default\nregion_name = {REGION}\nservice_token_roles_required = true\n",
            ks = self.keystone_url.trim_end_matches("/v3"),
        )
    }

    fn write_configs(&self, ports: &Ports, octavia: bool) -> Result<()> {
        let d = |s: &str| self.path(s).display().to_string();
        let write = |name: &str, text: String| std::fs::write(self.path(name), text).map_err(io(name.to_string()));
        write("etc/policy.yaml", "{}\n".into())?;
        for sub in ["etc/keystone-policy.d", "etc/neutron-policy.d", "etc/octavia-policy.d"] {
            std::fs::create_dir_all(self.path(sub)).map_err(io(sub))?;
        }
        write(
            "etc/keystone.conf",
            format!(
                "[DEFAULT]\nlog_dir = {log}\nlog_file = keystone.log\n[database]\nconnection = {db}\n[identity]\n\
                 # bcrypt cost 4, not 12: a password check in ~10 ms (a test cloud only)\npassword_hash_rounds = 4\n\
                 [token]\nprovider = fernet\n[fernet_tokens]\nkey_repository = {keys}\n[fernet_receipts]\nkey_repository = {keys}\n\
                 [credential]\nkey_repository = {creds}\n[oslo_policy]\npolicy_file = {policy}\npolicy_dirs = {pdir}\n",
                log = d("log"),
                db = self.db_url("keystone"),
                keys = d("keystone/fernet-keys"),
                creds = d("keystone/credential-keys"),
                policy = d("etc/policy.yaml"),
                pdir = d("etc/keystone-policy.d"),
            ),
        )?;
        let mut neutron = format!(
            "[DEFAULT]\ncore_plugin = ml2\nservice_plugins = ovn-router,trunk,segments\nauth_strategy = keystone\n\
             bind_host = 127.0.0.1\nbind_port = {port}\napi_workers = 1\nrpc_workers = 0\nrpc_state_report_workers = 0\n\
             transport_url = fake://\nstate_path = {state}\napi_paste_config = /etc/neutron/api-paste.ini\n\
             notify_nova_on_port_status_changes = false\nnotify_nova_on_port_data_changes = false\n\
             allow_overlapping_ips = true\ndebug = false\nlog_dir = {log}\nlog_file = neutron-server.log\n\
             [database]\nconnection = {db}\n[oslo_concurrency]\nlock_path = {lock}\n[oslo_policy]\npolicy_file = {policy}\n\
             policy_dirs = {pdir}\n[agent]\nroot_helper =\n[quotas]\ndefault_quota = -1\nquota_network = -1\n\
             quota_subnet = -1\nquota_port = -1\nquota_router = -1\nquota_floatingip = -1\nquota_security_group = -1\n\
             quota_security_group_rule = -1\nquota_rbac_policy = -1\n",
            port = ports.neutron,
            state = d("state"),
            log = d("log"),
            db = self.db_url("neutron"),
            lock = d("lock"),
            policy = d("etc/policy.yaml"),
            pdir = d("etc/neutron-policy.d"),
        );
        neutron.push_str(&self.authtoken("keystone_authtoken"));
        write("etc/neutron.conf", neutron)?;
        write(
            "etc/ml2_conf.ini",
            format!(
                "[ml2]\ntype_drivers = geneve,flat,vlan\ntenant_network_types = geneve\nmechanism_drivers = ovn\n\
                 extension_drivers = port_security\noverlay_ip_version = 4\n[ml2_type_geneve]\nvni_ranges = 1:65536\n\
                 max_header_size = 38\n[ml2_type_flat]\nflat_networks = *\n[ml2_type_vlan]\nnetwork_vlan_ranges = physnet1:100:200\n\
                 [securitygroup]\nenable_security_group = true\n[ovn]\novn_nb_connection = {nb}\novn_sb_connection = {sb}\n\
                 ovn_l3_scheduler = leastloaded\novn_metadata_enabled = {metadata}\nenable_distributed_floating_ip = false\n\
                 neutron_sync_mode = off\n",
                nb = self.ovn.nb.remote(),
                sb = self.ovn.sb_remote().unwrap_or_default(),
                // The ovn provider's health monitors need the per-network metadata port.
                metadata = octavia,
            ),
        )?;
        if octavia {
            let mut text = format!(
                "[DEFAULT]\ntransport_url = fake://\nlog_dir = {log}\ndebug = false\n[api_settings]\nbind_host = 127.0.0.1\n\
                 bind_port = {port}\nauth_strategy = keystone\nenabled_provider_drivers = ovn:OVN provider driver\n\
                 default_provider_driver = ovn\n[database]\nconnection = {db}\n[driver_agent]\n\
                 status_socket_path = /run/octavia/status.sock\nstats_socket_path = /run/octavia/stats.sock\n\
                 get_socket_path = /run/octavia/get.sock\nenabled_provider_agents = ovn\n[controller_worker]\n\
                 network_driver = allowed_address_pairs_driver\n[networking]\nallow_invisible_resource_usage = true\n\
                 [ovn]\novn_nb_connection = {nb}\novn_sb_connection = {sb}\n[neutron]\nendpoint = {neutron}\n\
                 [oslo_policy]\npolicy_file = {policy}\npolicy_dirs = {pdir}\n[oslo_concurrency]\nlock_path = {lock}\n\
                 [quotas]\ndefault_load_balancer_quota = -1\ndefault_listener_quota = -1\ndefault_member_quota = -1\n\
                 default_pool_quota = -1\ndefault_health_monitor_quota = -1\n",
                log = d("log"),
                port = ports.octavia,
                db = self.db_url("octavia"),
                nb = self.ovn.nb.remote(),
                sb = self.ovn.sb_remote().unwrap_or_default(),
                neutron = self.neutron_url,
                policy = d("etc/policy.yaml"),
                pdir = d("etc/octavia-policy.d"),
                lock = d("lock"),
            );
            text.push_str(&self.authtoken("keystone_authtoken"));
            text.push_str(&self.authtoken("service_auth"));
            write("etc/octavia.conf", text)?;
        }
        Ok(())
    }

    fn start_keystone(&mut self) -> Result<()> {
        let conf = self.path("etc/keystone.conf").display().to_string();
        let km = |args: &[&str]| {
            let mut all = vec!["--config-file", conf.as_str()];
            all.extend_from_slice(args);
            run("keystone-manage", &all)
        };
        km(&["fernet_setup", "--keystone-user", "root", "--keystone-group", "root"])?;
        km(&["credential_setup", "--keystone-user", "root", "--keystone-group", "root"])?;
        let url = self.keystone_url.clone();
        km(&[
            "bootstrap",
            "--bootstrap-password",
            ADMIN_PASSWORD,
            "--bootstrap-username",
            ADMIN_USER,
            "--bootstrap-project-name",
            ADMIN_PROJECT,
            "--bootstrap-role-name",
            "admin",
            "--bootstrap-service-name",
            "keystone",
            "--bootstrap-region-id",
            REGION,
            "--bootstrap-admin-url",
            &url,
            "--bootstrap-public-url",
            &url,
            "--bootstrap-internal-url",
            &url,
        ])?;
        let port = url.trim_start_matches("http://").split('/').next().unwrap_or_default().to_string();
        let mut cmd = Command::new("uwsgi");
        cmd.env("OS_KEYSTONE_CONFIG_FILES", &conf)
            .args(["--plugins", "python3", "--http-socket", &port])
            .args(["--wsgi-file", "/usr/bin/keystone-wsgi-public"])
            .args([
                "--master",
                "--processes",
                "1",
                "--threads",
                "8",
                "--enable-threads",
                "--die-on-term",
                "--lazy-apps",
            ])
            .args(["--buffer-size", "65535", "--add-header", "Connection: close"]);
        let log = self.path("log/keystone-uwsgi.log");
        let mut daemon = Daemon::spawn("keystone (uwsgi)", cmd, &log)?;
        wait_http(&mut daemon, &url, &log)?;
        self.daemons.push(daemon);
        let token = self.admin_token()?;
        self.register("neutron", "network", &self.neutron_url.clone(), &token)?;
        if let Some(o) = self.octavia_url.clone() {
            self.register("octavia", "load-balancer", &o, &token)?;
        }
        // Roles that services and clients expect to exist.
        for role in ["service", "load-balancer_member", "load-balancer_admin"] {
            let body = format!(r#"{{"role":{{"name":"{role}"}}}}"#);
            http("POST", &format!("{url}/roles"), Some(&token), Some(&body))?;
        }
        Ok(())
    }

    /// A service and its three endpoints in Keystone's catalog.
    fn register(&self, name: &str, kind: &str, endpoint: &str, token: &str) -> Result<()> {
        let url = &self.keystone_url;
        let body = format!(r#"{{"service":{{"name":"{name}","type":"{kind}","enabled":true}}}}"#);
        let a = http("POST", &format!("{url}/services"), Some(token), Some(&body))?;
        let id = serde_json::from_str::<serde_json::Value>(&a.body)
            .ok()
            .and_then(|v| v["service"]["id"].as_str().map(str::to_string))
            .filter(|_| a.status == 201)
            .ok_or_else(|| Error::Io {
                what: format!("registering {kind} in Keystone"),
                message: format!("HTTP {}: {}", a.status, a.body),
            })?;
        for iface in ["public", "internal", "admin"] {
            let body = format!(
                r#"{{"endpoint":{{"service_id":"{id}","interface":"{iface}","url":"{endpoint}","region_id":"{REGION}"}}}}"#
            );
            let a = http("POST", &format!("{url}/endpoints"), Some(token), Some(&body))?;
            if a.status != 201 {
                return Err(Error::Io {
                    what: format!("{kind} {iface} endpoint in Keystone"),
                    message: format!("HTTP {}: {}", a.status, a.body),
                });
            }
        }
        Ok(())
    }

    fn start_neutron(&mut self) -> Result<()> {
        let mut cmd = Command::new("neutron-server");
        cmd.arg("--config-file").arg(self.path("etc/neutron.conf"));
        cmd.arg("--config-file").arg(self.path("etc/ml2_conf.ini"));
        let log = self.path("log/neutron-server.out");
        let mut daemon = Daemon::spawn("neutron-server", cmd, &log)?;
        let url = format!("{}/v2.0/networks", self.neutron_url);
        wait_http(&mut daemon, &url, &self.path("log/neutron-server.log"))?;
        self.daemons.push(daemon);
        // ML2/OVN creates its drop group on start: until then ports would not be isolated.
        let start = Instant::now();
        loop {
            let out = self.ovn.nbctl(&["--bare", "--columns=name", "find", "Port_Group", "name=neutron_pg_drop"])?;
            if !out.trim().is_empty() {
                return Ok(());
            }
            if start.elapsed() > STARTUP {
                return Err(Error::NotReady {
                    what: "neutron_pg_drop (ML2/OVN's start)".into(),
                    seconds: STARTUP.as_secs(),
                    log: self.path("log/neutron-server.log"),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn start_octavia(&mut self) -> Result<()> {
        let Some(url) = self.octavia_url.clone() else { return Ok(()) };
        let sockets = self.path("octavia");
        let conf = self.path("etc/octavia.conf");
        let wrapped = |program: &str, log: &Path| {
            let mut cmd = Command::new("unshare");
            cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
                .arg(r#"mkdir -p /run/octavia && mount --bind "$0" /run/octavia && exec "$@""#)
                .arg(&sockets)
                .arg(program)
                .arg("--config-file")
                .arg(&conf)
                .arg("--log-file")
                .arg(log);
            cmd
        };
        let agent_log = self.path("log/octavia-driver-agent.log");
        let mut agent = Daemon::spawn(
            "octavia-driver-agent",
            wrapped("octavia-driver-agent", &agent_log),
            &self.path("log/octavia-driver-agent.out"),
        )?;
        // It sits out SIGTERM for ten seconds, and keeps no state of its own.
        agent.grace = Duration::from_millis(500);
        self.daemons.push(agent);
        let api_log = self.path("log/octavia-api.log");
        let mut api =
            Daemon::spawn("octavia-api", wrapped("octavia-api", &api_log), &self.path("log/octavia-api.out"))?;
        wait_http(&mut api, &format!("{url}/"), &api_log)?;
        self.daemons.push(api);
        Ok(())
    }
}

impl Drop for OpenStack {
    fn drop(&mut self) {
        // All at once: nothing needs another to stop cleanly, and each takes a while.
        for d in self.daemons.iter().rev() {
            d.terminate();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(mut d) = self.daemons.pop() {
            d.finish(deadline.min(Instant::now() + d.grace));
        }
    }
}
