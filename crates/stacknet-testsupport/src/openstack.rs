//! The OpenStack tier's cloud: Keystone, Neutron (ML2/OVN) and Octavia started on loopback by
//! `stacknet_sandbox`, a session of its admin through its `clouds.yaml`, an admin's raw calls to
//! Neutron for what is not stacknet's to make, and [`StopAtExit`] for a cloud kept in a static
//! (shared by every test of a binary), which is never dropped.

use std::os::unix::process::CommandExt;
use std::path::Path;
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
/// ends (even killed): for a cloud in a static, which Rust never drops (dropping this value
/// stops the cloud too, and waits for that). A watcher process of its own (not in the test's
/// process group, so that Ctrl-C leaves it be) waits for the end of a pipe only this process
/// holds open, then SIGKILLs every daemon's process group (OVN's daemons by PID) at once:
/// nothing of the cloud is kept, so none needs a clean stop.
#[derive(Debug)]
pub struct StopAtExit {
    /// Closed by the kernel when the process ends (or by `drop`): the watcher's cue.
    pipe: Option<ChildStdin>,
    watcher: Child,
}

/// The watcher: blocks until its stdin closes, kills `$STOP_GROUPS` and `$STOP_PIDS`, waits
/// (10 s at most) for them to be gone, removes `$STOP_DIR`.
const WATCHER: &str = r#"
trap '' HUP INT
read -r _ || true
for g in $STOP_GROUPS; do kill -KILL -$g; done 2>/dev/null
for p in $STOP_PIDS; do kill -KILL $p; done 2>/dev/null
i=0
while [ $i -lt 100 ]; do
  alive=
  for g in $STOP_GROUPS; do kill -0 -$g 2>/dev/null && alive=1; done
  for p in $STOP_PIDS; do kill -0 $p 2>/dev/null && alive=1; done
  [ -z "$alive" ] && break
  sleep 0.1
  i=$((i + 1))
done
rm -rf "$STOP_DIR"
"#;

impl StopAtExit {
    /// For `cloud`'s daemons and directory.
    pub fn new(cloud: &OpenStack) -> StopAtExit {
        let groups: Vec<u32> = cloud.daemons().into_iter().map(|(_, g)| g).collect();
        StopAtExit::of(&groups, &cloud.ovn.pids(), cloud.dir())
    }

    /// For the process groups `groups`, the processes `pids` and the directory `dir`.
    pub fn of(groups: &[u32], pids: &[u32], dir: &Path) -> StopAtExit {
        let words = |ids: &[u32]| ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
        let mut watcher = Command::new("sh")
            .args(["-c", WATCHER])
            .env("STOP_GROUPS", words(groups))
            .env("STOP_PIDS", words(pids))
            .env("STOP_DIR", dir)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Alive: present and not a zombie (an orphan's reaper may be late).
    fn running(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')))
            .unwrap_or(false)
    }

    #[test]
    fn the_watcher_kills_the_groups_and_removes_the_directory_once_its_pipe_closes() {
        let dir = tempfile::tempdir().unwrap().keep();
        std::fs::write(dir.join("state"), "x").unwrap();
        // A daemon as the sandbox starts one: a process group of its own, not our child.
        let out = Command::new("setsid").args(["sh", "-c", "sleep 600 >/dev/null 2>&1 & echo $!"]).output().unwrap();
        let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let group = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let group: u32 = group.rsplit_once(')').unwrap().1.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert!(running(pid));
        let stop = StopAtExit::of(&[group], &[], &dir);
        // A window for the negative: nothing may happen while the pipe is open.
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(running(pid) && dir.exists(), "the watcher waits for the pipe to close");
        drop(stop);
        assert!(!running(pid), "the daemon outlived the watcher");
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}
