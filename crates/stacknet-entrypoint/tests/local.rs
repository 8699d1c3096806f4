//! The entrypoint as a container runs it, with no cluster at all: dependencies on a socket and
//! a config file, the exec (the command keeps the entrypoint's PID and gets its signals), the
//! timeout's lines, bad variables, and no COMMAND.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_stacknet-entrypoint");

/// The entrypoint with only `vars` in its environment (and PATH).
fn entrypoint(vars: &[(&str, String)], args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear().env("PATH", "/usr/bin:/bin").args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in vars {
        c.env(k, v);
    }
    c
}

/// A script that records its PID, then waits for SIGTERM and records that.
fn script(dir: &Path) -> PathBuf {
    let path = dir.join("service.sh");
    let pid = dir.join("pid");
    let term = dir.join("term");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\ntrap 'echo TERM > {}; exit 0' TERM\necho $$ > {}.tmp && mv {}.tmp {}\nwhile :; do sleep 0.05; done\n",
            term.display(),
            pid.display(),
            pid.display(),
            pid.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

fn until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stderr_of(child: Child) -> (Option<i32>, String) {
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_command_runs_in_its_place_once_the_socket_and_the_config_are_there() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("run/db.sock");
    let maps = dir.path().join("configmaps");
    let conf = dir.path().join("etc/svc/svc.conf");
    let vars = [
        ("COMMAND", script(dir.path()).display().to_string()),
        ("DEPENDENCY_SOCKET", sock.display().to_string()),
        ("DEPENDENCY_CONFIG", conf.display().to_string()),
        ("INTERFACE_NAME", "lo".to_string()),
    ];
    let mut child = entrypoint(&vars, &["--configmaps", maps.to_str().unwrap()]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(child.try_wait().unwrap().is_none(), "still waiting");
    assert!(!dir.path().join("pid").exists(), "the command waits for its dependencies");
    // The ConfigMap first, then the socket.
    std::fs::create_dir_all(maps.join("svc.conf")).unwrap();
    std::fs::write(maps.join("svc.conf/svc.conf"), "listen {{ .IP }}:{{ .IP_ERLANG }}\n").unwrap();
    until("the config rendered", Duration::from_secs(5), || conf.exists());
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "listen 127.0.0.1:127,0,0,1\n");
    assert!(!dir.path().join("pid").exists(), "the socket is not there yet");
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    until("the command started", Duration::from_secs(5), || dir.path().join("pid").exists());
    // exec: the command is the entrypoint's process, and gets its signals.
    let pid: u32 = std::fs::read_to_string(dir.path().join("pid")).unwrap().trim().parse().unwrap();
    assert_eq!(pid, child.id(), "the command replaced the entrypoint (same PID)");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(dir.path().join("term")).unwrap(), "TERM\n", "the signal reached the command");
}

#[test]
fn the_timeout_names_every_unmet_dependency() {
    let dir = tempfile::tempdir().unwrap();
    let there = dir.path().join("there.sock");
    std::fs::write(&there, "").unwrap();
    let vars = [
        ("COMMAND", "true".to_string()),
        ("DEPENDENCY_SOCKET", format!("{},/nonexistent/a.sock,/nonexistent/b.sock", there.display())),
        ("DEPENDENCY_TIMEOUT", "0.3".to_string()),
    ];
    let t = Instant::now();
    let (code, err) = stderr_of(entrypoint(&vars, &[]).spawn().unwrap());
    assert_eq!(code, Some(1), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));
    let tail: Vec<&str> = err.lines().skip_while(|l| !l.contains("timed out")).collect();
    assert_eq!(
        tail,
        [
            "stacknet entrypoint: timed out after 300ms; not met:",
            "  socket /nonexistent/a.sock: does not exist",
            "  socket /nonexistent/b.sock: does not exist",
        ],
        "{err}"
    );
    // --timeout wins over the variable.
    let (code, err) = stderr_of(entrypoint(&vars[..2], &["--timeout", "100ms"]).spawn().unwrap());
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("timed out after 100ms"), "{err}");
}

#[test]
fn bad_variables_are_refused_before_waiting_and_no_command_is_an_init_container() {
    let (code, err) =
        stderr_of(entrypoint(&[("DEPENDENCY_SERVICE", "keystone,openstack:api:x".into())], &[]).spawn().unwrap());
    assert_eq!(code, Some(2));
    assert_eq!(
        err.trim(),
        "stacknet entrypoint: DEPENDENCY_SERVICE entry \"openstack:api:x\": expected name or namespace:name"
    );
    let (code, err) = stderr_of(entrypoint(&[], &["--bogus"]).spawn().unwrap());
    assert_eq!(code, Some(2));
    assert!(err.starts_with("--bogus: unknown argument"), "{err}");
    // Nothing to wait for and no COMMAND: done at once.
    let (code, err) = stderr_of(entrypoint(&[("DEPENDENCY_SERVICE", "".into())], &[]).spawn().unwrap());
    assert_eq!(code, Some(0), "{err}");
    // A command that is not there.
    let (code, err) = stderr_of(entrypoint(&[("COMMAND", "/no/such/binary --x".into())], &[]).spawn().unwrap());
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot run \"/no/such/binary\""), "{err}");
    // A dependency that needs the API, and no API to be found.
    let vars = [("DEPENDENCY_SERVICE", "keystone".into()), ("KUBECONFIG", "/nonexistent/kubeconfig".into())];
    let (code, err) = stderr_of(entrypoint(&vars, &[]).spawn().unwrap());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("connecting to the Kubernetes API"), "{err}");
}

#[test]
fn a_config_that_cannot_render_stops_the_wait_with_its_action_named() {
    let dir = tempfile::tempdir().unwrap();
    let maps = dir.path().join("configmaps");
    std::fs::create_dir_all(maps.join("a.conf")).unwrap();
    std::fs::write(maps.join("a.conf/a.conf"), "x={{ .Values.x }}\n").unwrap();
    let vars = [("DEPENDENCY_CONFIG", dir.path().join("out/a.conf").display().to_string())];
    let (code, err) = stderr_of(entrypoint(&vars, &["--configmaps", maps.to_str().unwrap()]).spawn().unwrap());
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("{{.Values.x}} is not one of .HOSTNAME, .IP, .IP_ERLANG"), "{err}");
    assert!(!dir.path().join("out/a.conf").exists(), "nothing half-written");
}

#[test]
fn sigterm_while_waiting_ends_the_wait() {
    let vars = [("DEPENDENCY_SOCKET", "/nonexistent/x.sock".to_string())];
    let child = entrypoint(&vars, &[]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&out.status), Some(15));
}
