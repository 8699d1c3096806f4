//! `stacknet entrypoint`: a drop-in for airship's kubernetes-entrypoint (what openstack-helm
//! puts in front of every service): the same environment ([`spec`]), and then the command
//! exec'd in place of this process once every dependency is met.
//!
//! Better than the anchor: dependencies are watched, not polled every 2 s ([`run`]); a
//! Service is ready when an endpoint accepts a TCP connection, a Job by its latest run, a
//! DaemonSet only with a ready pod on this node; `DEPENDENCY_TIMEOUT` / `--timeout` ends the
//! wait with one line per unmet dependency (exit 1); the pod says what it waits for
//! (`stacknet.io/waiting-for`, Events); socket and config dependencies need no cluster at all;
//! a malformed variable is an error naming it and the entry (exit 2), not a skipped entry.
//!
//! - [`spec`]: the variables; [`ready`]: the pure decisions; [`local`]: files and templates;
//!   [`run`]: the watches and the wait; [`main`]: the command line and the exec.

#![forbid(unsafe_code)]

pub mod local;
pub mod ready;
pub mod run;
pub mod spec;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use spec::Spec;

/// The reporting controller of the Events it posts.
pub const REPORTER: &str = "stacknet.io/entrypoint";

/// The usage line.
pub const USAGE: &str = "usage: stacknet entrypoint [--timeout DURATION] [--configmaps DIR]   \
(kubernetes-entrypoint's variables: COMMAND, POD_NAME, NAMESPACE, INTERFACE_NAME, DEPENDENCY_SERVICE, \
DEPENDENCY_DAEMONSET, DEPENDENCY_CONTAINER, DEPENDENCY_POD_JSON, DEPENDENCY_JOBS, DEPENDENCY_JOBS_JSON, \
DEPENDENCY_CONFIG, DEPENDENCY_SOCKET, DEPENDENCY_CUSTOM_RESOURCE, DEPENDENCY_TIMEOUT)";

/// The command line: `--timeout` (wins over `DEPENDENCY_TIMEOUT`), `--configmaps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub timeout: Option<Duration>,
    pub configmaps: PathBuf,
}

/// Reads the arguments after the command's name.
pub fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut out = Args { timeout: None, configmaps: PathBuf::from(local::CONFIGMAPS) };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value =
            |name: &str| inline.clone().or_else(|| it.next().cloned()).ok_or(format!("{name} needs a value"));
        match flag {
            "--timeout" => {
                let v = value("--timeout")?;
                out.timeout = Some(
                    spec::parse_duration(&v)
                        .ok_or(format!("--timeout {v:?}: expected seconds, or a number with s, m or h"))?,
                );
            }
            "--configmaps" => out.configmaps = value("--configmaps")?.into(),
            other => return Err(format!("{other}: unknown argument\n{USAGE}")),
        }
    }
    Ok(out)
}

/// The command line as both binaries run it: `--help` prints the usage (exit 0), bad
/// arguments exit 2, else [`main`] with the process environment.
pub fn cli(args: &[String]) -> ExitCode {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match parse_args(args) {
        Ok(a) => main(&environment(), &a),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// Tells the pod (when there is an API and a POD_NAME) what it waits for: the annotation, and
/// Events as the unmet set changes.
fn reporter(
    spec: &Spec,
    client: Option<kube::Client>,
) -> impl FnMut(&[(usize, String)]) -> futures::future::BoxFuture<'static, ()> + use<> {
    let names: Vec<String> = spec.dependencies.iter().map(|d| d.to_string()).collect();
    let pod = spec.pod.clone().map(|p| (spec.namespace.clone(), p));
    let before: Arc<Mutex<Option<BTreeSet<usize>>>> = Arc::default();
    move |unmet: &[(usize, String)]| {
        let lines: Vec<String> = unmet.iter().map(|(i, why)| format!("{}: {why}", names[*i])).collect();
        for l in &lines {
            eprintln!("waiting for {l}");
        }
        let now: BTreeSet<usize> = unmet.iter().map(|(i, _)| *i).collect();
        let prev = before.lock().ok().and_then(|mut b| b.replace(now.clone()));
        let met: Vec<String> = match &prev {
            Some(p) => p.difference(&now).map(|i| names[*i].clone()).collect(),
            None => Vec::new(),
        };
        for m in &met {
            eprintln!("met: {m}");
        }
        let (Some(client), Some((ns, name))) = (client.clone(), pod.clone()) else { return async {}.boxed() };
        // A slow API delays neither the wait nor the command for long: the annotation and the
        // Events go out together, bounded (1 s for the last one, which the command waits for).
        let bound = if lines.is_empty() { Duration::from_secs(1) } else { Duration::from_secs(5) };
        let update = async move {
            let value = serde_json::to_string(&lines).unwrap_or_default();
            let patch = serde_json::json!({"metadata": {"annotations": {run::WAITING_ANNOTATION: value}}});
            let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client.clone(), &ns);
            let annotate = async {
                if let Err(e) =
                    pods.patch(&name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await
                {
                    eprintln!("annotating pod {ns}/{name}: {e}");
                }
            };
            let mut events = Vec::new();
            if prev.is_none() && !lines.is_empty() {
                events.push(("Normal", "DependenciesPending", format!("waiting for {}", lines.join("; "))));
            }
            events.extend(met.into_iter().map(|m| ("Normal", "DependencyMet", m)));
            if lines.is_empty() {
                events.push(("Normal", "DependenciesMet", "every dependency is met".to_string()));
            }
            let tell = async {
                for (kind, reason, note) in events {
                    post(&client, &ns, &name, kind, reason, &note).await;
                }
            };
            futures::join!(annotate, tell);
        };
        async move {
            if tokio::time::timeout(bound, update).await.is_err() {
                eprintln!("the pod's annotation and Events took over {} s: going on without them", bound.as_secs());
            }
        }
        .boxed()
    }
}

/// An Event on pod `ns/name`.
pub async fn post(client: &kube::Client, ns: &str, name: &str, kind: &str, reason: &str, note: &str) {
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::events::v1::Event;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}.")),
            namespace: Some(ns.into()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
        action: Some("Wait".into()),
        reason: Some(reason.into()),
        note: Some(note.chars().take(1024).collect()),
        regarding: Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..ObjectReference::default()
        }),
        reporting_controller: Some(REPORTER.into()),
        reporting_instance: Some(name.into()),
        type_: Some(kind.into()),
        ..Event::default()
    };
    let api: kube::Api<Event> = kube::Api::namespaced(client.clone(), ns);
    if let Err(e) = api.create(&kube::api::PostParams::default(), &event).await {
        eprintln!("posting an Event on pod {ns}/{name}: {e}");
    }
}

/// The process environment.
pub fn environment() -> BTreeMap<String, String> {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect()
}

/// Makes ring the process's TLS provider before the first client (idempotent).
fn tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Waits as `vars` and `args` say, then execs the command (never returning on success) or
/// exits: 0 met with no command, 1 timed out or the command cannot run, 2 bad input.
pub fn main(vars: &BTreeMap<String, String>, args: &Args) -> ExitCode {
    let mut spec = match Spec::from_vars(vars) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("stacknet entrypoint: {e}");
            return ExitCode::from(2);
        }
    };
    if args.timeout.is_some() {
        spec.timeout = args.timeout;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("stacknet entrypoint: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(async {
        let client = if spec.needs_api() {
            tls();
            match kube::Client::try_default().await {
                Ok(c) => Some(c),
                Err(e) => {
                    return Err((2, format!("connecting to the Kubernetes API (in-cluster, or KUBECONFIG): {e}")));
                }
            }
        } else {
            None
        };
        let opts = run::Options { timeout: spec.timeout, configmaps: args.configmaps.clone(), client: client.clone() };
        let outcome = run::wait(&spec, &opts, reporter(&spec, client.clone())).await.map_err(|e| (1, e.0))?;
        if let (run::Outcome::TimedOut(lines), Some(c), Some(pod)) = (&outcome, &client, &spec.pod) {
            post(c, &spec.namespace, pod, "Warning", "DependencyTimeout", &lines.join("; ")).await;
        }
        Ok(outcome)
    });
    drop(runtime);
    match outcome {
        Err((code, e)) => {
            eprintln!("stacknet entrypoint: {e}");
            ExitCode::from(code)
        }
        Ok(run::Outcome::TimedOut(lines)) => {
            let t = spec.timeout.unwrap_or_default();
            eprintln!("stacknet entrypoint: timed out after {t:?}; not met:");
            for l in lines {
                eprintln!("  {l}");
            }
            ExitCode::from(1)
        }
        Ok(run::Outcome::Met) if spec.command.is_empty() => {
            eprintln!("stacknet entrypoint: every dependency is met; no COMMAND: done");
            ExitCode::SUCCESS
        }
        Ok(run::Outcome::Met) => {
            let e = exec(&spec.command);
            eprintln!("stacknet entrypoint: cannot run {:?}: {e}", spec.command[0]);
            ExitCode::from(1)
        }
    }
}

/// Replaces this process with `command` (found on PATH): it keeps this PID (PID 1 of the
/// container) and gets its signals. Returns only on failure.
pub fn exec(command: &[String]) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    std::process::Command::new(&command[0]).args(&command[1..]).exec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let a = |v: &[&str]| parse_args(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(a(&[]).unwrap(), Args { timeout: None, configmaps: "/configmaps".into() });
        let got = a(&["--timeout", "2m", "--configmaps=/tmp/c"]).unwrap();
        assert_eq!(got, Args { timeout: Some(Duration::from_secs(120)), configmaps: "/tmp/c".into() });
        assert!(a(&["--timeout"]).unwrap_err().contains("needs a value"));
        assert!(a(&["--timeout", "x"]).unwrap_err().contains("--timeout \"x\""));
        assert!(a(&["--what"]).unwrap_err().starts_with("--what: unknown argument"));
    }
}
