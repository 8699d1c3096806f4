//! Nova in the sandbox ([`OpenStackOptions::nova`](super::OpenStackOptions::nova)): a real
//! control plane (nova-api with Keystone auth, nova-conductor, nova-scheduler; cells v2 with
//! cell0 and cell1) and a nova-compute per fake host (`fake.FakeDriver`: no hypervisor, a live
//! migration completes at once), so that draining a compute host (disabling its service, live-
//! and cold-migrating its servers away) runs against Nova itself.
//!
//! What Nova needs around it: RabbitMQ (its services talk by RPC; oslo.messaging's `fake://`
//! does not cross processes), with an epmd of its own started first (an Erlang VM that finds
//! none spawns a detached one, out of our process groups: `-start_epmd false` forbids it), both
//! on loopback ports of ours; Placement (uwsgi, `noauth2`: Nova sends it the token `admin`);
//! a Glance API with a file store and no auth, for the 1 KiB image servers boot from; Keystone,
//! because with Nova's `noauth2` a request carries no token and nova-api cannot call Glance on
//! create; Neutron, which Nova asks for ports during migration and delete even for servers
//! booted with `"networks": "none"`, through our Keystone. Nova's services authenticate as a
//! service user of their own, [`NOVA_USER`], with the `service` role: Nova passes its service
//! token along with the user's on its calls to Neutron (keystonemiddleware's user plugin does),
//! and Neutron refuses a service token without that role. The nova-compute package would pull
//! in libvirt and QEMU: the fake driver is in python3-nova, and each compute host runs
//! `nova.cmd.compute` from a four-line script.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{ADMIN_PROJECT, Answer, Daemon, OpenStack, REGION, STARTUP, http, request, wait_tcp};
use crate::ovn::{io, run};
use crate::{Error, Result, free_tcp_port};

/// The compute API's microversion the helpers speak (2.37+: servers without networks; 2.53+:
/// services by id; 2.74+: a server's host at create; 2.90: what Zed's Nova has).
pub const NOVA_MICROVERSION: &str = "2.90";

/// The flavor [`OpenStack::boot`] uses: 64 MB, one vCPU, a 1 GB disk.
pub const FLAVOR: &str = "fake-tiny";
/// The image [`OpenStack::boot`] uses, by name: 1 KiB of zeros, raw.
pub const IMAGE: &str = "stacknet-fake-image";

/// Nova's service user (admin and service in the admin's project; a test cloud's credential).
pub const NOVA_USER: &str = "nova";
pub const NOVA_PASSWORD: &str = "stacknet-nova";

/// How long a server may take to reach a state (a fake boot or migration takes a second or two).
const SERVER_WAIT: Duration = Duration::from_secs(120);

/// Nova's loopback ports, and RabbitMQ's (AMQP, Erlang distribution, epmd).
pub(super) struct Ports {
    pub api: u16,
    pub placement: u16,
    pub glance: u16,
    amqp: u16,
    dist: u16,
    epmd: u16,
}

impl Ports {
    /// Free ports, none of `taken` nor twice the same.
    pub fn new(taken: &[u16]) -> Result<Ports> {
        let mut got: Vec<u16> = taken.to_vec();
        let mut next = || -> Result<u16> {
            loop {
                let p = free_tcp_port()?;
                if !got.contains(&p) {
                    got.push(p);
                    return Ok(p);
                }
            }
        };
        Ok(Ports { api: next()?, placement: next()?, glance: next()?, amqp: next()?, dist: next()?, epmd: next()? })
    }
}

/// Compute host names go into file names, SQL and URLs: letters, digits, `-` and `.` only.
pub(super) fn check_hosts(hosts: &[String]) -> Result<()> {
    for (i, h) in hosts.iter().enumerate() {
        let fine = !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !fine || hosts[..i].contains(h) || h == "control" {
            return Err(Error::Io {
                what: format!("compute host {h:?}"),
                message: "names must be distinct, not \"control\", of letters, digits, '-' and '.'".into(),
            });
        }
    }
    Ok(())
}

/// Nova's part of a cloud.
#[derive(Debug)]
pub(super) struct Nova {
    hosts: Vec<String>,
    /// The image's id once [`OpenStack::boot`] made it (and the flavor): held while making them.
    image: Mutex<Option<String>>,
    /// An admin token for the helpers' calls, and when it was issued.
    token: Mutex<Option<(String, Instant)>>,
}

impl Nova {
    pub fn new(hosts: Vec<String>) -> Nova {
        Nova { hosts, image: Mutex::new(None), token: Mutex::new(None) }
    }
}

fn no_nova() -> Error {
    Error::Io { what: "Nova".into(), message: "this cloud runs no Nova (OpenStackOptions::nova)".into() }
}

/// The daemon's name of a compute host's nova-compute.
fn compute_daemon(host: &str) -> String {
    format!("nova-compute ({host})")
}

impl OpenStack {
    /// The configuration of Placement, Glance, Nova's control services (`etc/nova.conf`, also
    /// nova-manage's) and each compute host (`etc/nova-HOST.conf`: no database, as on a real
    /// compute node, whose services go through nova-conductor), and RabbitMQ's files.
    pub(super) fn write_nova_configs(&self, ports: &Ports) -> Result<()> {
        let nova = self.nova.as_ref().ok_or_else(no_nova)?;
        let d = |s: &str| self.path(s).display().to_string();
        let write = |name: &str, text: String| std::fs::write(self.path(name), text).map_err(io(name.to_string()));
        let mut dirs = vec![
            "etc/placement",
            "etc/glance-policy.d",
            "etc/nova-policy.d",
            "glance/images",
            "glance/staging",
            "glance/tasks",
            "glance/cache",
            "nova/control/lock",
            "bin",
            "rabbitmq/mnesia",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        dirs.extend(nova.hosts.iter().flat_map(|h| [format!("nova/{h}/instances"), format!("nova/{h}/lock")]));
        for sub in &dirs {
            std::fs::create_dir_all(self.path(sub)).map_err(io(sub.clone()))?;
        }
        let placement_url = self.placement_url.clone().unwrap_or_default();
        let glance_url = self.glance_url.clone().unwrap_or_default();
        write(
            "etc/placement/placement.conf",
            format!(
                "[DEFAULT]\nlog_dir = {log}\nlog_file = placement.log\n[api]\n\
                 # Nova authenticates with the token \"admin\" (noauth2's admin)\nauth_strategy = noauth2\n\
                 [placement_database]\nconnection = {db}\n[oslo_policy]\npolicy_file = {policy}\n",
                log = d("log"),
                db = self.db_url("placement"),
                policy = d("etc/policy.yaml"),
            ),
        )?;

        // Glance: no Keystone (the paste pipeline without a flavor is `unauthenticated-context`,
        // whose requests have no roles: the policy lets it publish the image).
        write("etc/glance-policy.yaml", "---\n\"publicize_image\": \"@\"\n".into())?;
        let paste = std::fs::read_to_string("/usr/share/glance-common/glance-api-paste.ini")
            .map_err(io("/usr/share/glance-common/glance-api-paste.ini (glance-api)"))?;
        write("etc/glance-api-paste.ini", paste)?;
        write(
            "etc/glance-api.conf",
            format!(
                "[DEFAULT]\nbind_host = 127.0.0.1\nbind_port = {port}\nworkers = 0\nlog_dir = {log}\n\
                 log_file = glance-api.log\nenabled_backends = fs:file\nimage_cache_dir = {dir}/cache\n\
                 [database]\nconnection = {db}\n[paste_deploy]\nflavor =\nconfig_file = {paste}\n\
                 [glance_store]\ndefault_backend = fs\n[fs]\nfilesystem_store_datadir = {dir}/images\n\
                 [os_glance_staging_store]\nfilesystem_store_datadir = {dir}/staging\n\
                 [os_glance_tasks_store]\nfilesystem_store_datadir = {dir}/tasks\n\
                 [oslo_policy]\npolicy_file = {policy}\npolicy_dirs = {pdir}\n[oslo_concurrency]\nlock_path = {lock}\n",
                port = ports.glance,
                log = d("log"),
                dir = d("glance"),
                db = self.db_url("glance"),
                paste = d("etc/glance-api-paste.ini"),
                policy = d("etc/glance-policy.yaml"),
                pdir = d("etc/glance-policy.d"),
                lock = d("lock"),
            ),
        )?;

        // Nova's paste file, but for the healthcheck's file under /etc.
        let paste = std::fs::read_to_string("/usr/share/nova-common/api-paste.ini")
            .map_err(io("/usr/share/nova-common/api-paste.ini (nova-api)"))?;
        let paste = paste
            .lines()
            .map(|l| {
                if l.starts_with("disable_by_file_path") {
                    format!("disable_by_file_path = {}", d("nova/healthcheck_disable"))
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        write("etc/nova-api-paste.ini", paste + "\n")?;
        let ks = &self.keystone_url;
        // `extra`: more of [DEFAULT].
        let common = |host: &str, extra: &str| {
            format!(
                "[DEFAULT]\nhost = {host}\nmy_ip = 127.0.0.1\ntransport_url = rabbit://guest:guest@127.0.0.1:{amqp}/\n\
                 log_dir = {log}\nstate_path = {state}\nenabled_apis = osapi_compute\nosapi_compute_listen = 127.0.0.1\n\
                 osapi_compute_listen_port = {api}\nosapi_compute_workers = 1\ncompute_driver = fake.FakeDriver\n\
                 use_rootwrap_daemon = false\ndebug = false\n{extra}\
                 # a stopped service goes quickly\ngraceful_shutdown_timeout = 5\n\
                 [api]\nauth_strategy = keystone\n[wsgi]\napi_paste_config = {paste}\n\
                 [conductor]\nworkers = 1\n[scheduler]\nworkers = 1\n\
                 # hosts are mapped once, by \"nova-manage cell_v2 discover_hosts\" in start\n\
                 discover_hosts_in_cells_interval = -1\n\
                 [placement]\nauth_type = admin_token\nendpoint = {placement_url}\ntoken = admin\n\
                 [glance]\nendpoint_override = {glance_url}\n\
                 [neutron]\nauth_type = password\nauth_url = {ks}\nusername = {NOVA_USER}\npassword = {NOVA_PASSWORD}\n\
                 project_name = {ADMIN_PROJECT}\nuser_domain_name = Default\nproject_domain_name = Default\n\
                 region_name = {REGION}\nendpoint_override = {neutron}\n\
                 [vnc]\nenabled = false\n[oslo_policy]\npolicy_file = {policy}\npolicy_dirs = {pdir}\n\
                 [oslo_messaging_notifications]\ndriver = noop\n[oslo_concurrency]\nlock_path = {state}/lock\n",
                amqp = ports.amqp,
                log = d("log"),
                state = d(&format!("nova/{host}")),
                api = ports.api,
                paste = d("etc/nova-api-paste.ini"),
                neutron = self.neutron_url,
                policy = d("etc/policy.yaml"),
                pdir = d("etc/nova-policy.d"),
            )
        };
        let mut control = common("control", "");
        control.push_str(&self.authtoken_as("keystone_authtoken", NOVA_USER, NOVA_PASSWORD));
        control.push_str(&format!(
            "[api_database]\nconnection = {}\n[database]\nconnection = {}\n",
            self.db_url_as("nova", "nova_api"),
            self.db_url_as("nova", "nova"),
        ));
        write("etc/nova.conf", control)?;
        for h in &nova.hosts {
            let extra = format!("instances_path = {}\n", d(&format!("nova/{h}/instances")));
            write(&format!("etc/nova-{h}.conf"), common(h, &extra))?;
        }
        write("bin/nova-compute", "import sys\nfrom nova.cmd.compute import main\nsys.exit(main())\n".into())?;

        // RabbitMQ: no plugins, AMQP on loopback only, guest only from loopback.
        write(
            "rabbitmq/rabbitmq.conf",
            format!(
                "listeners.tcp.default = 127.0.0.1:{}\nloopback_users.guest = true\nlog.file.level = warning\n\
                 log.console = false\ndisk_free_limit.absolute = 50MB\n",
                ports.amqp
            ),
        )?;
        write("rabbitmq/enabled_plugins", "[].\n".into())?;
        write("rabbitmq/advanced.config", "[].\n".into())?;
        write("rabbitmq/rabbitmq-env.conf", String::new())?;
        let mut random = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
            .map_err(io("/dev/urandom"))?;
        let cookie: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let cookie_path = self.path("rabbitmq/.erlang.cookie");
        write("rabbitmq/.erlang.cookie", cookie)?;
        // Erlang refuses a cookie others may read.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cookie_path, std::fs::Permissions::from_mode(0o600))
            .map_err(io(cookie_path.display().to_string()))
    }

    /// Nova's service user, [`NOVA_USER`], admin and service in the admin's project.
    pub(super) fn add_nova_user(&self, token: &str) -> Result<()> {
        let url = &self.keystone_url;
        let fail = |what: &str, a: &Answer| Error::Io {
            what: format!("Keystone: {what}"),
            message: format!("HTTP {}: {}", a.status, a.body),
        };
        let first_id = |path: &str, key: &str| -> Result<String> {
            let a = http("GET", &format!("{url}/{path}"), Some(token), None)?;
            serde_json::from_str::<Value>(&a.body)
                .ok()
                .and_then(|v| v[key][0]["id"].as_str().map(str::to_string))
                .ok_or_else(|| fail(path, &a))
        };
        let project = first_id(&format!("projects?name={ADMIN_PROJECT}"), "projects")?;
        let body = json!({"user": {"name": NOVA_USER, "password": NOVA_PASSWORD, "domain_id": "default",
                                   "default_project_id": project}});
        let a = http("POST", &format!("{url}/users"), Some(token), Some(&body.to_string()))?;
        let user = serde_json::from_str::<Value>(&a.body)
            .ok()
            .and_then(|v| v["user"]["id"].as_str().map(str::to_string))
            .filter(|_| a.status == 201)
            .ok_or_else(|| fail("making Nova's user", &a))?;
        for role in ["admin", "service"] {
            let id = first_id(&format!("roles?name={role}"), "roles")?;
            let a = http("PUT", &format!("{url}/projects/{project}/users/{user}/roles/{id}"), Some(token), None)?;
            if a.status != 204 {
                return Err(fail(&format!("the role {role} for Nova's user"), &a));
            }
        }
        Ok(())
    }

    /// Starts epmd (awaited: it is quick) and RabbitMQ (awaited by [`Self::spawn_nova_control`]).
    pub(super) fn spawn_rabbitmq(&mut self, ports: &Ports) -> Result<()> {
        let log = self.path("log/epmd.out");
        let mut cmd = std::process::Command::new("epmd");
        cmd.args(["-address", "127.0.0.1", "-port", &ports.epmd.to_string()]);
        let mut epmd = Daemon::spawn("epmd", cmd, &log)?;
        epmd.last = true;
        epmd.grace = Duration::from_secs(1);
        self.daemons.push(epmd);
        let n = self.daemons.len() - 1;
        wait_tcp(&mut self.daemons[n], ports.epmd, &log)?;

        let r = |s: &str| self.path(&format!("rabbitmq/{s}"));
        let mut cmd = std::process::Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
        cmd.env("HOME", r(""))
            .env("RABBITMQ_CONF_ENV_FILE", r("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", r("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", r("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", r("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", r("mnesia"))
            .env("RABBITMQ_PID_FILE", r("rabbit.pid"))
            .env("RABBITMQ_LOG_BASE", self.path("log"))
            .env("RABBITMQ_LOGS", self.path("log/rabbitmq.log"))
            .env("RABBITMQ_NODENAME", "stacknet@localhost")
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", ports.amqp.to_string())
            .env("RABBITMQ_DIST_PORT", ports.dist.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("ERL_EPMD_PORT", ports.epmd.to_string())
            .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}")
            // Every Erlang VM of RabbitMQ's (its own, and the one it runs to check on epmd)
            // uses our epmd and never starts one.
            .env("ERL_FLAGS", "-start_epmd false");
        let rabbit = Daemon::spawn("rabbitmq", cmd, &self.path("log/rabbitmq.out"))?;
        self.daemons.push(rabbit);
        Ok(())
    }

    /// Nova's schemas, one chain (cell0 is mapped in the API database, cell1 made, then both
    /// cells' schemas), then Placement's and Glance's, each beside the others.
    pub(super) fn nova_migrations(&self) -> Vec<Vec<(&'static str, Vec<String>)>> {
        let c = |f: &str| self.path(f).display().to_string();
        let nm = |args: &[&str]| {
            let mut all =
                vec!["--config-file".into(), c("etc/nova.conf"), "--log-file".into(), c("log/nova-manage.log")];
            all.extend(args.iter().map(|a| a.to_string()));
            ("nova-manage", all)
        };
        let cell0 = self.db_url_as("nova", "nova_cell0");
        vec![
            vec![
                nm(&["api_db", "sync"]),
                nm(&["cell_v2", "map_cell0", "--database_connection", &cell0]),
                nm(&["cell_v2", "create_cell", "--name", "cell1"]),
                nm(&["db", "sync"]),
            ],
            vec![(
                "placement-manage",
                vec!["--config-file".into(), c("etc/placement/placement.conf"), "db".into(), "sync".into()],
            )],
            vec![("glance-manage", vec!["--config-file".into(), c("etc/glance-api.conf"), "db_sync".into()])],
        ]
    }

    /// Once RabbitMQ listens: starts Placement, Glance and Nova's control services without
    /// waiting for them ([`Self::start_nova_computes`] does).
    pub(super) fn spawn_nova_control(&mut self, ports: &Ports) -> Result<()> {
        let n = self.daemons.iter().position(|d| d.name == "rabbitmq").ok_or_else(no_nova)?;
        let log = self.path("log/rabbitmq.log");
        wait_tcp(&mut self.daemons[n], ports.amqp, &log)?;

        let placement = self.placement_url.clone().ok_or_else(no_nova)?;
        let mut cmd = std::process::Command::new("uwsgi");
        cmd.env("OS_PLACEMENT_CONFIG_DIR", self.path("etc/placement"))
            .args(["--plugins", "python3", "--http-socket", &format!("127.0.0.1:{}", ports.placement)])
            .args(["--wsgi-file", "/usr/bin/placement-api"])
            .args([
                "--master",
                "--processes",
                "1",
                "--threads",
                "4",
                "--enable-threads",
                "--die-on-term",
                "--lazy-apps",
            ])
            .args(["--buffer-size", "65535", "--add-header", "Connection: close"]);
        let log = self.path("log/placement-uwsgi.log");
        let mut daemon = Daemon::spawn("placement-api (uwsgi)", cmd, &log)?;
        daemon.ready = Some((format!("{placement}/"), log));
        self.daemons.push(daemon);

        let glance = self.glance_url.clone().ok_or_else(no_nova)?;
        let mut cmd = std::process::Command::new("glance-api");
        cmd.arg("--config-file").arg(self.path("etc/glance-api.conf"));
        let mut daemon = Daemon::spawn("glance-api", cmd, &self.path("log/glance-api.out"))?;
        daemon.ready = Some((format!("{glance}/v2/images"), self.path("log/glance-api.log")));
        self.daemons.push(daemon);

        for service in ["nova-conductor", "nova-scheduler", "nova-api"] {
            let log = self.path(&format!("log/{service}.log"));
            let mut cmd = std::process::Command::new(service);
            cmd.arg("--config-file").arg(self.path("etc/nova.conf")).arg("--log-file").arg(&log);
            let mut daemon = Daemon::spawn(service, cmd, &self.path(&format!("log/{service}.out")))?;
            if service == "nova-api" {
                daemon.ready = Some((format!("{}/", self.nova_url.clone().ok_or_else(no_nova)?), log));
            }
            self.daemons.push(daemon);
        }
        Ok(())
    }

    /// Once Placement answers (a compute host reports its resources there as it starts):
    /// starts the compute hosts, waits until each has its compute node, maps them into cell1,
    /// and waits until Placement has their resources and the API lists their services up.
    pub(super) fn start_nova_computes(&mut self) -> Result<()> {
        self.wait_ready("placement-api (uwsgi)")?;
        self.wait_ready("glance-api")?;
        let hosts = self.nova.as_ref().ok_or_else(no_nova)?.hosts.clone();
        for h in &hosts {
            // /usr/bin/python3, as Debian's own scripts: never a venv's earlier in PATH.
            let mut cmd = std::process::Command::new("/usr/bin/python3");
            cmd.arg(self.path("bin/nova-compute"))
                .arg("--config-file")
                .arg(self.path(&format!("etc/nova-{h}.conf")))
                .arg("--log-file")
                .arg(self.path(&format!("log/nova-compute-{h}.log")));
            let daemon = Daemon::spawn(compute_daemon(h), cmd, &self.path(&format!("log/nova-compute-{h}.out")))?;
            self.daemons.push(daemon);
        }
        self.wait_ready("nova-api")?;

        let sock = format!("--socket={}", self.mysql_socket().display());
        let start = Instant::now();
        loop {
            let rows =
                run("mariadb", &[&sock, "-uroot", "-N", "-e", "SELECT host FROM nova.compute_nodes WHERE deleted=0"])
                    .unwrap_or_default();
            let missing: Vec<&String> =
                hosts.iter().filter(|h| !rows.lines().any(|l| l.trim() == h.as_str())).collect();
            let Some(first) = missing.first() else { break };
            let name = compute_daemon(first);
            if let Some(d) = self.daemons.iter_mut().find(|d| d.name == name)
                && !d.running()
            {
                return Err(Error::Io {
                    what: name,
                    message: format!(
                        "exited while starting (log: {})",
                        self.path(&format!("log/nova-compute-{first}.log")).display()
                    ),
                });
            }
            if start.elapsed() > STARTUP {
                return Err(Error::NotReady {
                    what: format!("the compute node of {name}"),
                    seconds: STARTUP.as_secs(),
                    log: self.path(&format!("log/nova-compute-{first}.log")),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let c = self.path("etc/nova.conf").display().to_string();
        let l = self.path("log/nova-manage.log").display().to_string();
        run("nova-manage", &["--config-file", &c, "--log-file", &l, "cell_v2", "discover_hosts", "--verbose"])?;

        // Placement: every host's provider with its inventory (1.4: the `resources` filter).
        let placement = self.placement_url.clone().ok_or_else(no_nova)?;
        let url = format!("{placement}/resource_providers?resources=VCPU:1");
        let headers = [("X-Auth-Token", "admin"), ("OpenStack-API-Version", "placement 1.4")];
        self.until("every compute host's resources in Placement", "log/placement.log", || {
            let a = request("GET", &url, &headers, b"")?;
            let names: Vec<String> = serde_json::from_str::<Value>(&a.body)
                .ok()
                .and_then(|v| v["resource_providers"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|p| p["name"].as_str().map(str::to_string))
                .collect();
            Ok(hosts.iter().all(|h| names.contains(h)))
        })?;
        self.until("every nova-compute service up in Nova's API", "log/nova-api.log", || {
            let v = self.nova_json("GET", "/os-services?binary=nova-compute", None, &[200])?;
            let up = v["services"].as_array().cloned().unwrap_or_default();
            Ok(hosts.iter().all(|h| up.iter().any(|s| s["host"] == h.as_str() && s["state"] == "up")))
        })
    }

    /// Polls `ready` (an error counts as not yet) until it holds, for [`STARTUP`] at most.
    fn until(&self, what: &str, log: &str, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < STARTUP {
            if ready().unwrap_or(false) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(Error::NotReady { what: what.into(), seconds: STARTUP.as_secs(), log: self.path(log) })
    }

    /// The fake compute hosts (the daemons `nova-compute (HOST)`); none without Nova.
    pub fn compute_hosts(&self) -> &[String] {
        self.nova.as_ref().map_or(&[], |n| &n.hosts)
    }

    /// An admin's call to the compute API (`path` under `/v2.1`), at [`NOVA_MICROVERSION`].
    pub fn nova(&self, method: &str, path: &str, body: Option<&str>) -> Result<Answer> {
        let url = self.nova_url.as_deref().ok_or_else(no_nova)?;
        let token = self.nova_token()?;
        let headers = [
            ("X-Auth-Token", token.as_str()),
            ("X-OpenStack-Nova-API-Version", NOVA_MICROVERSION),
            ("Content-Type", "application/json"),
        ];
        request(method, &format!("{url}{path}"), &headers, body.unwrap_or_default().as_bytes())
    }

    /// [`Self::nova`], its answer's JSON (`Null` for none) if its status is one of `ok`.
    fn nova_json(&self, method: &str, path: &str, body: Option<&Value>, ok: &[u16]) -> Result<Value> {
        let body = body.map(Value::to_string);
        let a = self.nova(method, path, body.as_deref())?;
        if !ok.contains(&a.status) {
            return Err(Error::Io {
                what: format!("Nova: {method} {path}"),
                message: format!("HTTP {}: {}", a.status, a.body),
            });
        }
        Ok(serde_json::from_str(&a.body).unwrap_or(Value::Null))
    }

    /// The admin's token, reused for half an hour (Keystone's last one).
    fn nova_token(&self) -> Result<String> {
        let nova = self.nova.as_ref().ok_or_else(no_nova)?;
        let mut token = nova.token.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((t, issued)) = token.as_ref()
            && issued.elapsed() < Duration::from_secs(1800)
        {
            return Ok(t.clone());
        }
        let t = self.admin_token()?;
        *token = Some((t.clone(), Instant::now()));
        Ok(t)
    }

    /// The flavor [`FLAVOR`] and the image [`IMAGE`], made if missing; the image's id.
    fn flavor_and_image(&self) -> Result<String> {
        let nova = self.nova.as_ref().ok_or_else(no_nova)?;
        let glance = self.glance_url.as_deref().ok_or_else(no_nova)?;
        let mut image = nova.image.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(id) = image.as_ref() {
            return Ok(id.clone());
        }
        if self.nova("GET", &format!("/flavors/{FLAVOR}"), None)?.status == 404 {
            let flavor = json!({"flavor": {"name": FLAVOR, "id": FLAVOR, "ram": 64, "vcpus": 1, "disk": 1}});
            // 409: made meanwhile by another process's call.
            self.nova_json("POST", "/flavors", Some(&flavor), &[200, 409])?;
        }
        let a = http("GET", &format!("{glance}/v2/images?name={IMAGE}&status=active"), None, None)?;
        let found =
            serde_json::from_str::<Value>(&a.body).ok().and_then(|v| v["images"][0]["id"].as_str().map(str::to_string));
        let id = match found {
            Some(id) => id,
            None => {
                let body =
                    json!({"name": IMAGE, "disk_format": "raw", "container_format": "bare", "visibility": "public"});
                let a = http("POST", &format!("{glance}/v2/images"), None, Some(&body.to_string()))?;
                let id = serde_json::from_str::<Value>(&a.body)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_string))
                    .filter(|_| a.status == 201)
                    .ok_or_else(|| Error::Io {
                        what: "Glance: making the image".into(),
                        message: format!("HTTP {}: {}", a.status, a.body),
                    })?;
                let url = format!("{glance}/v2/images/{id}/file");
                let a = request("PUT", &url, &[("Content-Type", "application/octet-stream")], &[0u8; 1024])?;
                if a.status != 204 {
                    return Err(Error::Io {
                        what: "Glance: the image's data".into(),
                        message: format!("HTTP {}: {}", a.status, a.body),
                    });
                }
                id
            }
        };
        *image = Some(id.clone());
        Ok(id)
    }

    /// Boots a server named `name` on the compute host `host` (no network; the flavor and image
    /// are made by the first call), waits until it is `ACTIVE`, and returns its id.
    pub fn boot(&self, name: &str, host: &str) -> Result<String> {
        let image = self.flavor_and_image()?;
        let body =
            json!({"server": {"name": name, "imageRef": image, "flavorRef": FLAVOR, "networks": "none", "host": host}});
        let v = self.nova_json("POST", "/servers", Some(&body), &[202])?;
        let id = v["server"]["id"].as_str().map(str::to_string).ok_or_else(|| Error::Io {
            what: format!("Nova: booting {name}"),
            message: format!("no server id in {v}"),
        })?;
        self.wait_server(&id, "ACTIVE")?;
        Ok(id)
    }

    /// Stops a server (`os-stop`) and waits until it is `SHUTOFF`.
    pub fn stop_server(&self, id: &str) -> Result<()> {
        self.nova_json("POST", &format!("/servers/{id}/action"), Some(&json!({"os-stop": null})), &[202])?;
        self.wait_server(id, "SHUTOFF").map(drop)
    }

    /// The server's `server` object (at [`NOVA_MICROVERSION`]: `OS-EXT-SRV-ATTR:host`,
    /// `OS-EXT-STS:task_state`, ...).
    pub fn server(&self, id: &str) -> Result<Value> {
        Ok(self.nova_json("GET", &format!("/servers/{id}"), None, &[200])?["server"].take())
    }

    /// Waits until the server's status is `status` with no task under way (a migration's
    /// status may be the one it started from), and returns it; `ERROR` fails with its fault.
    pub fn wait_server(&self, id: &str, status: &str) -> Result<Value> {
        let start = Instant::now();
        loop {
            let s = self.server(id)?;
            if s["status"] == status && s["OS-EXT-STS:task_state"].is_null() {
                return Ok(s);
            }
            if s["status"] == "ERROR" {
                return Err(Error::Io { what: format!("server {id}"), message: format!("ERROR: {}", s["fault"]) });
            }
            if start.elapsed() > SERVER_WAIT {
                return Err(Error::NotReady {
                    what: format!(
                        "server {id} {status} (it is {} with task {} on {})",
                        s["status"], s["OS-EXT-STS:task_state"], s["OS-EXT-SRV-ATTR:host"]
                    ),
                    seconds: SERVER_WAIT.as_secs(),
                    log: self.path("log"),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The `os-services` entry of the compute host's nova-compute (`id`, `status`, `state`,
    /// `disabled_reason`, ...).
    pub fn compute_service(&self, host: &str) -> Result<Value> {
        let mut v = self.nova_json("GET", &format!("/os-services?binary=nova-compute&host={host}"), None, &[200])?;
        match v["services"].as_array_mut().and_then(|s| s.pop()) {
            Some(s) => Ok(s),
            None => {
                Err(Error::Io { what: format!("Nova: the service of {host}"), message: format!("none listed: {v}") })
            }
        }
    }
}
