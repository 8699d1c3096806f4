//! The OpenStack tier's cloud: Keystone, Neutron (ML2/OVN) and Octavia started on loopback by
//! `stacknet_sandbox`, a session of its admin through its `clouds.yaml`, an admin's raw calls to
//! Neutron for what is not stacknet's to make, and [`StopAtExit`] for a cloud kept in a static
//! (shared by every test of a binary), which is never dropped.

use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};

use serde_json::Value;
use stacknet_openstack::{Cloud, CloudSource};
use stacknet_sandbox::openstack::http;
use stacknet_sandbox::{OpenStack, OpenStackOptions};

/// The admin's cloud in the sandbox's `clouds.yaml`.
pub const CLOUD: &str = "stacknet-test";

/// Starts the cloud (half a minute or more); panics saying why it did not start (a missing
/// package names the packages to install).
pub fn start() -> OpenStack {
    let cloud =
        OpenStack::start(OpenStackOptions::default()).unwrap_or_else(|e| panic!("the cloud does not start: {e}"));
    eprintln!("cloud up in {:.1}s: {cloud:?}, daemons {:?}", cloud.started_in.as_secs_f64(), cloud.daemons());
    cloud
}

/// The admin's cloud, as `--clouds-yaml FILE --os-cloud stacknet-test` names it.
pub fn source(cloud: &OpenStack) -> CloudSource {
    CloudSource::Named { cloud: CLOUD.into(), file: Some(cloud.clouds_yaml().expect("clouds.yaml written")) }
}

/// A session of the admin (password auth through `clouds.yaml`).
pub async fn connect(cloud: &OpenStack) -> Cloud {
    Cloud::connect(&source(cloud)).await.expect("password auth through clouds.yaml")
}

/// An admin's call to Neutron (`path` under `/v2.0/`), for objects that are not stacknet's:
/// the JSON answered (`Null` for none); panics on an error status.
pub fn neutron(cloud: &OpenStack, method: &str, path: &str, body: Option<Value>) -> Value {
    let token = cloud.admin_token().expect("admin token");
    let body = body.map(|b| b.to_string());
    let a = http(method, &format!("{}/v2.0/{path}", cloud.neutron_url), Some(&token), body.as_deref())
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    assert!(a.status < 300, "{method} {path}: HTTP {}: {}", a.status, a.body);
    serde_json::from_str(&a.body).unwrap_or(Value::Null)
}

/// The status of an admin's GET of `path` under `/v2.0/` (404: it is gone).
pub fn neutron_status(cloud: &OpenStack, path: &str) -> u16 {
    let token = cloud.admin_token().expect("admin token");
    http("GET", &format!("{}/v2.0/{path}", cloud.neutron_url), Some(&token), None)
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .status
}

/// Stops a cloud's daemons and removes its directory when this test process ends, however it
/// ends (even killed), as dropping the cloud would: SIGTERM to every daemon's process group
/// (OVN's daemons by PID), up to 10 s for them to go, then SIGKILL. For a cloud in a static,
/// which Rust never drops (dropping this value stops the cloud, and waits for that). A watcher process of its own (not in the test's process group, so
/// that Ctrl-C leaves it be) waits for the end of a pipe only this process holds open.
#[derive(Debug)]
pub struct StopAtExit {
    /// Closed by the kernel when the process ends (or by `drop`): the watcher's cue.
    pipe: Option<ChildStdin>,
    watcher: Child,
}

/// The watcher: blocks until its stdin closes, then stops `$STOP_GROUPS` and `$STOP_PIDS`, removes `$STOP_DIR`.
const WATCHER: &str = r#"
trap '' HUP INT
read -r _ || true
for g in $STOP_GROUPS; do kill -CONT -$g; kill -TERM -$g; done 2>/dev/null
for p in $STOP_PIDS; do kill -TERM $p; done 2>/dev/null
i=0
while [ $i -lt 100 ]; do
  alive=
  for g in $STOP_GROUPS; do kill -0 -$g 2>/dev/null && alive=1; done
  for p in $STOP_PIDS; do kill -0 $p 2>/dev/null && alive=1; done
  [ -z "$alive" ] && break
  sleep 0.1
  i=$((i + 1))
done
for g in $STOP_GROUPS; do kill -KILL -$g; done 2>/dev/null
for p in $STOP_PIDS; do kill -KILL $p; done 2>/dev/null
rm -rf "$STOP_DIR"
"#;

impl StopAtExit {
    pub fn new(cloud: &OpenStack) -> StopAtExit {
        let words = |ids: Vec<u32>| ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
        let groups = words(cloud.daemons().into_iter().map(|(_, g)| g).collect());
        let pids = words(cloud.ovn.pids());
        let mut watcher = Command::new("sh")
            .args(["-c", WATCHER])
            .env("STOP_GROUPS", groups)
            .env("STOP_PIDS", pids)
            .env("STOP_DIR", cloud.dir())
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh starts");
        StopAtExit { pipe: Some(watcher.stdin.take().expect("the watcher's stdin")), watcher }
    }
}

impl Drop for StopAtExit {
    fn drop(&mut self) {
        self.pipe.take();
        let _ = self.watcher.wait();
    }
}
