//! `stacknet sandbox up|status|down` as a user runs it: a node left running between
//! commands, a pod attached by hand with the plugin, everything gone after `down`.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;
use stacknet_testsupport::cni::Invocation;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn stacknet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stacknet")).args(args).current_dir(root()).output().expect("stacknet runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Alive: present and not a zombie (the daemons outlive `up`, so whoever adopts them reaps them,
/// possibly late).
fn running(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .is_some_and(|zombie| !zombie)
}

#[test]
fn up_attach_status_down() {
    up_attach_status_down_with(1);
}

/// NB and SB as Raft clusters of three (`--db-cluster 3`): the agent, ovn-northd and
/// ovn-controller find their leaders and a pod attached by hand works.
#[test]
fn clustered_databases_up_attach_status_down() {
    up_attach_status_down_with(3);
}

fn up_attach_status_down_with(members: usize) {
    let plugin = PathBuf::from(env!("CARGO_BIN_EXE_stacknet")).with_file_name("stacknet-cni");
    assert!(plugin.is_file(), "{} missing (cargo test --workspace builds it)", plugin.display());
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("sb");
    let d = dir.to_str().unwrap();
    let cni = plugin.to_str().unwrap();

    // Nothing there yet.
    let s = stacknet(&["sandbox", "status", "--dir", d]);
    assert_eq!(s.status.code(), Some(1), "{}", text(&s));
    assert!(text(&s).contains("no sandbox"), "{}", text(&s));

    let n = members.to_string();
    let up = stacknet(&["sandbox", "up", "--dir", d, "-f", "examples/three-tier", "--cni", cni, "--db-cluster", &n]);
    assert_eq!(up.status.code(), Some(0), "{}", text(&up));
    assert!(text(&up).contains("programmed 7 pod port(s)"), "{}", text(&up));
    // A second `up` on the same directory refuses.
    let again = stacknet(&["sandbox", "up", "--dir", d, "--cni", cni]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(text(&again).contains("a sandbox is up"), "{}", text(&again));

    let s = stacknet(&["sandbox", "status", "--dir", d, "--json"]);
    assert_eq!(s.status.code(), Some(0), "{}", text(&s));
    let status: Value = serde_json::from_slice(&s.stdout).unwrap();
    assert_eq!(status["up"], true, "{status}");
    assert_eq!(status["agent_ready"], true, "{status}");
    let daemons = status["daemons"].as_array().unwrap();
    // The agent, the node's three daemons, ovn-northd, and each database's members.
    assert_eq!(daemons.len(), 5 + 2 * members, "{status}");
    assert_eq!(status["nb"].as_str().unwrap().split(',').count(), members, "{status}");
    let pids: Vec<u64> = daemons.iter().map(|d| d["pid"].as_u64().unwrap()).collect();
    // Only root (the runtime, running the plugin) may talk to the agent.
    let socket = std::fs::metadata(status["agent_socket"].as_str().unwrap()).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!((socket.uid(), socket.permissions().mode() & 0o777), (0, 0o600), "the agent's socket");

    // Attach a pod by hand, as the printed instructions say.
    let netns = format!("sbx{}-{members}", std::process::id());
    assert!(Command::new("ip").args(["netns", "add", &netns]).status().unwrap().success());
    let netns_path = PathBuf::from(format!("/var/run/netns/{netns}"));
    let call = Invocation {
        command: "ADD",
        container: "by-hand",
        netns: &netns_path,
        ifname: "eth0",
        args: Some("K8S_POD_NAMESPACE=leonardo;K8S_POD_NAME=app-0".into()),
        config: std::fs::read_to_string(status["cni_config"].as_str().unwrap()).unwrap(),
    };
    let added = stacknet_testsupport::cni::run(&plugin, &call);
    let result = added.stdout;
    assert_eq!(added.code, Some(0), "{result}");
    assert_eq!(result["ips"][0]["address"], "10.244.1.20/24", "{result}");
    let addr = Command::new("ip").args(["-n", &netns, "-o", "addr", "show", "dev", "eth0"]).output().unwrap();
    assert!(String::from_utf8_lossy(&addr.stdout).contains("10.244.1.20/24"));

    let down = stacknet(&["sandbox", "down", "--dir", d]);
    assert_eq!(down.status.code(), Some(0), "{}", text(&down));
    assert!(!dir.exists(), "directory left behind");
    for pid in pids {
        assert!(!running(pid), "pid {pid} still running");
    }
    // The pod's interface went with the node (its veth's host end was in the node's namespace).
    let links = Command::new("ip").args(["-n", &netns, "-o", "link"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("eth0"), "{}", String::from_utf8_lossy(&links.stdout));
    let _ = Command::new("ip").args(["netns", "del", &netns]).status();
    // Down again: nothing to do, not an error.
    let down = stacknet(&["sandbox", "down", "--dir", d]);
    assert_eq!(down.status.code(), Some(0), "{}", text(&down));
}
