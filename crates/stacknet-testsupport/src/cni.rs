//! The CNI plugin run as a container runtime runs it: `CNI_*` variables in an otherwise empty
//! environment, the network configuration on stdin, the result (or CNI error) as JSON on stdout.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

/// One invocation of the plugin.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    /// ADD, DEL, CHECK, STATUS, GC, VERSION.
    pub command: &'a str,
    pub container: &'a str,
    pub netns: &'a Path,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `CNI_ARGS` (see [`pod_args`]).
    pub args: Option<String>,
    /// The network configuration (see [`config`]).
    pub config: String,
}

/// What the plugin answered.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub code: Option<i32>,
    /// Its stdout as JSON (`Null` when it printed nothing).
    pub stdout: Value,
}

/// The network configuration the node's runtime would hand over, for the agent at `socket`.
pub fn config(socket: &Path) -> String {
    json!({"cniVersion": "1.1.0", "name": "stacknet", "type": "stacknet-cni", "agentSocket": socket, "timeoutSeconds": 30})
        .to_string()
}

/// `CNI_ARGS` naming a pod, as the kubelet passes them.
pub fn pod_args(namespace: &str, name: &str, uid: &str) -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_UID={uid}")
}

/// Runs `plugin` once and waits for it.
pub fn run(plugin: &Path, call: &Invocation<'_>) -> Outcome {
    let mut c = Command::new(plugin);
    c.env_clear()
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container)
        .env("CNI_NETNS", call.netns)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_PATH", plugin.parent().unwrap_or(Path::new("/opt/cni/bin")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(args) = &call.args {
        c.env("CNI_ARGS", args);
    }
    let mut child = c.spawn().unwrap_or_else(|e| panic!("{}: {e}", plugin.display()));
    child.stdin.take().expect("stdin").write_all(call.config.as_bytes()).expect("the plugin reads its configuration");
    let out = child.wait_with_output().expect("the plugin ends");
    let text = String::from_utf8_lossy(&out.stdout);
    let stdout = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} {}: {e}: {text}", plugin.display(), call.command))
    };
    Outcome { code: out.status.code(), stdout }
}

/// CNI ADD of pod `(namespace, name, uid)` as container `container` in `netns`, through the
/// agent at `socket`, as a runtime calls it; panics unless the plugin succeeds.
pub fn add(plugin: &Path, socket: &Path, container: &str, netns: &Path, pod: (&str, &str, &str)) {
    let call = Invocation {
        command: "ADD",
        container,
        netns,
        ifname: "eth0",
        args: Some(pod_args(pod.0, pod.1, pod.2)),
        config: config(socket),
    };
    let r = run(plugin, &call);
    assert_eq!(r.code, Some(0), "ADD {}/{}: {}", pod.0, pod.1, r.stdout);
}
