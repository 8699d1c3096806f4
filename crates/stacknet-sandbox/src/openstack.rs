//! A real OpenStack on loopback, from Debian's packages, for the OpenStack tier and its
//! benchmark: Keystone v3 (uwsgi, fernet tokens, real password auth), neutron-server with
//! ML2/OVN writing into a private OVN (our [`Ovn`]: NB, SB, ovn-northd on unix sockets), and
//! the Octavia API with its driver agent and the `ovn` provider. MariaDB holds their databases
//! on a unix socket only. Neutron and Octavia need no RabbitMQ (oslo.messaging's in-process
//! `fake://` driver: ML2/OVN needs no agents), and there is no systemd. Every daemon is a child of
//! ours in a process group of its own, listening on a loopback port chosen here, and is stopped
//! by that group (and whatever of its tree left the group) when the value is dropped. Everything
//! lives in one temporary directory.
//!
//! Optionally ([`OpenStackOptions::nova`]) a real Nova control plane with fake compute hosts
//! (`nova.virt.fake`: no hypervisor, servers without networks), for the compute drain's tests:
//! nova-api, -conductor and -scheduler, a nova-compute per host, Placement and a Glance API for
//! the image servers boot from, and the RabbitMQ Nova's services talk through (with its own epmd,
//! on loopback ports of ours). See the `nova` module.
//!
//! Octavia's driver library insists on sockets under `/run/octavia`: its two processes run in a
//! private mount namespace each (`unshare --mount`), where that path is a bind mount of our
//! directory, so the host's `/run` is never touched.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod nova;
pub use nova::{FLAVOR, IMAGE, NOVA_MICROVERSION, NOVA_PASSWORD, NOVA_USER};

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
    "rabbitmq-server",
    "python3-nova",
    "nova-api",
    "nova-conductor",
    "nova-scheduler",
    "placement-api",
    "glance-api",
    "uwsgi-plugin-python3",
];

const HINT: &str = "apt-get install mariadb-server keystone neutron-server octavia-api octavia-driver-agent \
                    python3-ovn-octavia-provider rabbitmq-server python3-nova nova-api nova-conductor \
                    nova-scheduler placement-api glance-api uwsgi-plugin-python3 \
                    (scripts/install-test-packages does, without starting their services)";

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
    /// Nova's fake compute hosts, by name (`compute-1`, ...): a nova-compute each, next to
    /// Nova's control plane, Placement, Glance and RabbitMQ. None: no Nova at all.
    pub nova: Vec<String>,
}

impl Default for OpenStackOptions {
    fn default() -> Self {
        OpenStackOptions { octavia: true, nova: Vec::new() }
    }
}

/// How to start a daemon, again too ([`OpenStack::restart`]): its command's parts and its log.
#[derive(Debug, Clone)]
struct Spec {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, Option<OsString>)>,
    log: PathBuf,
}

impl Spec {
    fn of(cmd: &Command, log: &Path) -> Spec {
        Spec {
            program: cmd.get_program().to_owned(),
            args: cmd.get_args().map(OsStr::to_owned).collect(),
            envs: cmd.get_envs().map(|(k, v)| (k.to_owned(), v.map(OsStr::to_owned))).collect(),
            log: log.to_owned(),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        for (k, v) in &self.envs {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd
    }
}

/// One daemon: its process group, stopped on drop.
#[derive(Debug)]
struct Daemon {
    name: String,
    child: Child,
    /// How long it may take to stop after SIGTERM.
    grace: Duration,
    spec: Spec,
    /// A URL that answers once it serves, and the log that says why it does not (the API
    /// servers): what [`OpenStack::restart`] waits for.
    ready: Option<(String, PathBuf)>,
    /// Stopped by [`OpenStack::stop`]: its child is reaped, so its PID may be anyone's now.
    stopped: bool,
    /// Stopped only once the others are gone (epmd: a RabbitMQ without it would look for another).
    last: bool,
    /// Its tree as it was told to stop (PID, start time): Erlang's helpers (erl_child_setup,
    /// inet_gethost) make sessions of their own, out of reach of a signal to the group.
    tree: Vec<(i32, u64)>,
}

impl Daemon {
    fn spawn(name: impl Into<String>, cmd: Command, log: &Path) -> Result<Daemon> {
        let name = name.into();
        let spec = Spec::of(&cmd, log);
        let child = Daemon::launch(&name, cmd, log)?;
        Ok(Daemon {
            name,
            child,
            grace: Duration::from_secs(10),
            spec,
            ready: None,
            stopped: false,
            last: false,
            tree: Vec::new(),
        })
    }

    /// Starts `cmd` in a group of its own, its output appended to `log` (a restarted daemon's
    /// log keeps what the first one wrote).
    fn launch(name: &str, mut cmd: Command, log: &Path) -> Result<Child> {
        use std::os::unix::process::CommandExt;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io(format!("{}", log.display())))?;
        let err = out.try_clone().map_err(io(format!("{}", log.display())))?;
        let program = cmd.get_program().to_string_lossy().into_owned();
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| missing(&program, &e).unwrap_or_else(|| io(name)(e)))
    }

    /// The same command again, once it is stopped.
    fn respawn(&mut self) -> Result<()> {
        self.child = Daemon::launch(&self.name, self.spec.command(), &self.spec.log)?;
        self.stopped = false;
        self.tree.clear();
        Ok(())
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn group(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// SIGTERM to the whole group (API workers are its children).
    fn terminate(&mut self) {
        if self.stopped {
            return;
        }
        self.tree = tree(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(self.group(), nix::sys::signal::Signal::SIGTERM);
        // A frozen daemon (see `OpenStack::freeze`) acts on it once it runs again.
        let _ = nix::sys::signal::killpg(self.group(), nix::sys::signal::Signal::SIGCONT);
    }

    /// Waits for the leader until `deadline`, then SIGKILLs whatever is left of the group
    /// (workers outliving their parent go too) and of the tree it had when told to stop.
    fn finish(&mut self, deadline: Instant) {
        if self.stopped {
            return;
        }
        while Instant::now() < deadline && self.running() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = nix::sys::signal::killpg(self.group(), nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
        for &(pid, started) in &self.tree {
            // The same process only if it started when that one did: PIDs are reused.
            if stat(pid).is_some_and(|(_, _, s)| s == started) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        self.stopped = true;
    }
}

/// The processes of `leader`'s group and all their descendants, in whatever group or session
/// (PID, start time).
fn tree(leader: i32) -> Vec<(i32, u64)> {
    let all: Vec<(i32, i32, i32, u64)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let (ppid, group, started) = stat(pid)?;
            Some((pid, ppid, group, started))
        })
        .collect();
    let mut keep: Vec<(i32, u64)> = all.iter().filter(|p| p.0 == leader || p.2 == leader).map(|p| (p.0, p.3)).collect();
    loop {
        let more: Vec<(i32, u64)> = all
            .iter()
            .filter(|p| !keep.iter().any(|k| k.0 == p.0) && keep.iter().any(|k| k.0 == p.1))
            .map(|p| (p.0, p.3))
            .collect();
        if more.is_empty() {
            return keep;
        }
        keep.extend(more);
    }
}

/// A process's parent, process group and start time (`/proc/PID/stat`); none once it is gone.
fn stat(pid: i32) -> Option<(i32, i32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's name: state, ppid, pgrp, ..., starttime (the 22nd field).
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    Some((fields.get(1)?.parse().ok()?, fields.get(2)?.parse().ok()?, fields.get(19)?.parse().ok()?))
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
    let mut headers = Vec::new();
    if let Some(t) = token {
        headers.push(("X-Auth-Token", t));
    }
    headers.push(("Content-Type", "application/json"));
    request(method, url, &headers, body.unwrap_or_default().as_bytes())
}

/// [`http`] with any headers (Nova's microversion) and a body of any bytes (Glance's image data).
fn request(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Answer> {
    let fail = |message: String| Error::Io { what: format!("{method} {url}"), message };
    let rest = url.strip_prefix("http://").ok_or_else(|| fail("only http:// URLs".into()))?;
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let addr: SocketAddr = host.parse().map_err(|_| fail(format!("{host} is not an address:port")))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| fail(e.to_string()))?;
    s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| fail(e.to_string()))?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: application/json\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut raw = req.into_bytes();
    raw.extend_from_slice(body);
    s.write_all(&raw).map_err(|e| fail(e.to_string()))?;
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
                what: daemon.name.clone(),
                message: format!("exited while starting (log: {})", log.display()),
            });
        }
        if http("GET", url, None, None).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(Error::NotReady { what: daemon.name.clone(), seconds: STARTUP.as_secs(), log: log.into() })
}

/// Waits until something accepts connections on the loopback `port`, while `daemon` runs.
fn wait_tcp(daemon: &mut Daemon, port: u16, log: &Path) -> Result<()> {
    let start = Instant::now();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while start.elapsed() < STARTUP {
        if !daemon.running() {
            return Err(Error::Io {
                what: daemon.name.clone(),
                message: format!("exited while starting (log: {})", log.display()),
            });
        }
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(Error::NotReady { what: daemon.name.clone(), seconds: STARTUP.as_secs(), log: log.into() })
}

/// A running cloud. Dropping it stops every daemon (Nova, Octavia, Neutron, Keystone, RabbitMQ,
/// MariaDB, epmd, then OVN) and removes its directory.
pub struct OpenStack {
    /// The OVN Neutron writes into.
    pub ovn: Ovn,
    pub keystone_url: String,
    pub neutron_url: String,
    pub octavia_url: Option<String>,
    /// Nova's compute API, versioned (`http://127.0.0.1:PORT/v2.1`), with Nova.
    pub nova_url: Option<String>,
    /// Placement (`noauth2`: the token `admin` is the admin), with Nova.
    pub placement_url: Option<String>,
    /// Glance's API (no auth), with Nova.
    pub glance_url: Option<String>,
    nova: Option<nova::Nova>,
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
            .field("nova", &self.nova_url)
            .finish()
    }
}

struct Ports {
    keystone: u16,
    neutron: u16,
    octavia: u16,
    nova: Option<nova::Ports>,
}

impl OpenStack {
    /// Whether the packages are installed (the tier is skipped, or fails, without them).
    pub fn installed() -> bool {
        [
            "mariadbd",
            "keystone-manage",
            "uwsgi",
            "neutron-server",
            "octavia-api",
            "octavia-driver-agent",
            "rabbitmq-server",
            "epmd",
            "nova-api",
            "nova-conductor",
            "nova-scheduler",
            "nova-manage",
            "placement-api",
            "placement-manage",
            "glance-api",
            "glance-manage",
        ]
        .iter()
        .all(|p| ["/usr/sbin", "/usr/bin"].iter().any(|d| Path::new(d).join(p).exists()))
    }

    /// Starts everything and waits until each service answers (and Keystone's catalog lists
    /// Neutron and Octavia; with Nova, until every compute host is in its cell, in Placement
    /// and up).
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
        let mut ports =
            Ports { keystone: free_tcp_port()?, neutron: free_tcp_port()?, octavia: free_tcp_port()?, nova: None };
        if !options.nova.is_empty() {
            nova::check_hosts(&options.nova)?;
            ports.nova = Some(nova::Ports::new(&[ports.keystone, ports.neutron, ports.octavia])?);
        }
        let url = |port: u16| format!("http://127.0.0.1:{port}");
        let mut cloud = OpenStack {
            keystone_url: format!("http://127.0.0.1:{}/v3", ports.keystone),
            neutron_url: format!("http://127.0.0.1:{}", ports.neutron),
            octavia_url: options.octavia.then(|| format!("http://127.0.0.1:{}", ports.octavia)),
            nova_url: ports.nova.as_ref().map(|n| format!("{}/v2.1", url(n.api))),
            placement_url: ports.nova.as_ref().map(|n| url(n.placement)),
            glance_url: ports.nova.as_ref().map(|n| url(n.glance)),
            nova: ports.nova.as_ref().map(|_| nova::Nova::new(options.nova.clone())),
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
        if let Some(n) = &ports.nova {
            cloud.write_nova_configs(n)?;
            // RabbitMQ takes seconds to boot, and needs no schema: it starts while they migrate.
            cloud.spawn_rabbitmq(n)?;
        }
        // The schema migrations are independent (Nova's steps are one chain): run them side by side.
        let migrations: Vec<Vec<(&str, Vec<String>)>> = {
            let c = |f: &str| cloud.path(f).display().to_string();
            let mut m = vec![
                vec![("keystone-manage", vec!["--config-file".into(), c("etc/keystone.conf"), "db_sync".into()])],
                vec![(
                    "neutron-db-manage",
                    vec![
                        "--config-file".into(),
                        c("etc/neutron.conf"),
                        "--config-file".into(),
                        c("etc/ml2_conf.ini"),
                        "upgrade".into(),
                        "heads".into(),
                    ],
                )],
            ];
            if options.octavia {
                m.push(vec![(
                    "octavia-db-manage",
                    vec!["--config-file".into(), c("etc/octavia.conf"), "upgrade".into(), "head".into()],
                )]);
            }
            if cloud.nova.is_some() {
                m.extend(cloud.nova_migrations());
            }
            m
        };
        let results: Vec<Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = migrations
                .iter()
                .map(|steps| {
                    s.spawn(move || {
                        steps.iter().try_for_each(|(program, args)| {
                            run(program, &args.iter().map(String::as_str).collect::<Vec<_>>()).map(drop)
                        })
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(Ok(()))).collect()
        });
        for r in results {
            r.map_err(with_hint)?;
        }
        cloud.start_keystone()?;
        if let Some(n) = &ports.nova {
            // Started now, awaited after Neutron: their starts overlap its.
            cloud.spawn_nova_control(n)?;
        }
        cloud.start_neutron()?;
        if options.octavia {
            cloud.start_octavia()?;
        }
        if cloud.nova.is_some() {
            cloud.start_nova_computes()?;
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
        self.db_url_as(db, db)
    }

    /// As `user` (Nova's three databases are the user `nova`'s).
    fn db_url_as(&self, user: &str, db: &str) -> String {
        format!(
            "mysql+pymysql://{user}:{user}@localhost/{db}?unix_socket={}&charset=utf8",
            self.mysql_socket().display()
        )
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
        if d.stopped {
            return Err(Error::Io { what: format!("freezing {daemon}"), message: "it is stopped".into() });
        }
        let signal = if frozen { nix::sys::signal::Signal::SIGSTOP } else { nix::sys::signal::Signal::SIGCONT };
        nix::sys::signal::killpg(d.group(), signal)
            .map_err(|e| Error::Io { what: format!("{signal} to {daemon}"), message: e.to_string() })
    }

    /// Stops a daemon now, by the name [`Self::daemons`] gives it (SIGTERM to its group, SIGKILL
    /// after its grace): a service that is gone refuses connections. [`Self::restart`] starts it
    /// again. Stopping a stopped daemon does nothing.
    pub fn stop(&mut self, daemon: &str) -> Result<()> {
        let d = self.daemon_mut(daemon, "stopping")?;
        d.terminate();
        let deadline = Instant::now() + d.grace;
        d.finish(deadline);
        Ok(())
    }

    /// Starts a daemon again (stopping it first if it runs), with the same command and
    /// configuration, and waits until it answers (the API servers; the others only start).
    /// Its process group is a new one: [`Self::daemons`] lists it.
    pub fn restart(&mut self, daemon: &str) -> Result<()> {
        let d = self.daemon_mut(daemon, "restarting")?;
        d.terminate();
        let deadline = Instant::now() + d.grace;
        d.finish(deadline);
        d.respawn()?;
        match d.ready.clone() {
            Some((url, log)) => wait_http(d, &url, &log),
            None => Ok(()),
        }
    }

    fn daemon_mut(&mut self, daemon: &str, doing: &str) -> Result<&mut Daemon> {
        self.daemons.iter_mut().find(|d| d.name == daemon).ok_or_else(|| Error::Io {
            what: format!("{doing} {daemon}"),
            message: "no such daemon in this cloud".into(),
        })
    }

    /// Waits until a daemon started without waiting answers at its `ready` URL.
    fn wait_ready(&mut self, daemon: &str) -> Result<()> {
        let d = self.daemon_mut(daemon, "waiting for")?;
        match d.ready.clone() {
            Some((url, log)) => wait_http(d, &url, &log),
            None => Ok(()),
        }
    }

    /// The running daemons and their process groups, in the order they are stopped.
    pub fn daemons(&self) -> Vec<(&str, u32)> {
        self.daemons.iter().rev().filter(|d| !d.stopped).map(|d| (d.name.as_str(), d.child.id())).collect()
    }

    fn start_mariadb(&mut self) -> Result<()> {
        std::fs::create_dir_all(self.path("mysql")).map_err(io("mysql"))?;
        let cnf = self.path("etc/my.cnf");
        let text = format!(
            "[mysqld]\ndatadir={data}\nsocket={sock}\npid-file={dir}/mysqld.pid\nlog-error={log}\nskip-networking\nuser=root\n\
             skip-log-bin\ninnodb_buffer_pool_size=64M\ninnodb_log_file_size=16M\ninnodb_flush_log_at_trx_commit=0\n\
             innodb_doublewrite=0\ncharacter-set-server=utf8mb4\ncollation-server=utf8mb4_general_ci\nmax_connections=500\n",
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
        let mut dbs = vec!["keystone", "neutron", "octavia"];
        if self.nova.is_some() {
            dbs.extend(["placement", "glance"]);
            // Nova's API database, its cell0 and cell1: one user's.
            sql.push_str("CREATE USER 'nova'@'localhost' IDENTIFIED BY 'nova'; ");
            for db in ["nova_api", "nova_cell0", "nova"] {
                sql.push_str(&format!("CREATE DATABASE {db}; GRANT ALL ON {db}.* TO 'nova'@'localhost'; "));
            }
        }
        for db in dbs {
            sql.push_str(&format!(
                "CREATE DATABASE {db}; CREATE USER '{db}'@'localhost' IDENTIFIED BY '{db}'; GRANT ALL ON {db}.* TO '{db}'@'localhost'; "
            ));
        }
        sql.push_str("FLUSH PRIVILEGES;");
        run("mariadb", &[&sock, "-uroot", "-e", &sql]).map(drop)
    }

    fn authtoken(&self, section: &str) -> String {
        self.authtoken_as(section, ADMIN_USER, ADMIN_PASSWORD)
    }

    fn authtoken_as(&self, section: &str, user: &str, password: &str) -> String {
        format!(
            "[{section}]\nwww_authenticate_uri = {ks}\nauth_url = {ks}\nauth_type = password\nusername = {user}\n\
             password = {password}\nproject_name = {ADMIN_PROJECT}\nuser_domain_name = Default\n\
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
        daemon.ready = Some((url.clone(), log.clone()));
        wait_http(&mut daemon, &url, &log)?;
        self.daemons.push(daemon);
        let token = self.admin_token()?;
        self.register("neutron", "network", &self.neutron_url.clone(), &token)?;
        if let Some(o) = self.octavia_url.clone() {
            self.register("octavia", "load-balancer", &o, &token)?;
        }
        for (name, kind, endpoint) in [
            ("nova", "compute", &self.nova_url),
            ("placement", "placement", &self.placement_url),
            ("glance", "image", &self.glance_url),
        ] {
            if let Some(e) = endpoint {
                self.register(name, kind, e, &token)?;
            }
        }
        // Roles that services and clients expect to exist.
        for role in ["service", "load-balancer_member", "load-balancer_admin"] {
            let body = format!(r#"{{"role":{{"name":"{role}"}}}}"#);
            http("POST", &format!("{url}/roles"), Some(&token), Some(&body))?;
        }
        if self.nova.is_some() {
            self.add_nova_user(&token)?;
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
        daemon.ready = Some((url.clone(), self.path("log/neutron-server.log")));
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
        api.ready = Some((format!("{url}/"), api_log.clone()));
        wait_http(&mut api, &format!("{url}/"), &api_log)?;
        self.daemons.push(api);
        Ok(())
    }
}

impl Drop for OpenStack {
    fn drop(&mut self) {
        // All at once: nothing needs another to stop cleanly, and each takes a while. Then
        // epmd, once RabbitMQ is gone.
        for last in [false, true] {
            for d in self.daemons.iter_mut().rev().filter(|d| d.last == last) {
                d.terminate();
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            for d in self.daemons.iter_mut().rev().filter(|d| d.last == last) {
                d.finish(deadline.min(Instant::now() + d.grace));
            }
        }
        self.daemons.clear();
    }
}
