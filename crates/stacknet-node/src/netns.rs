//! Working inside a pod's network namespace without moving any tokio worker: a short-lived
//! OS thread enters the namespace (`setns`), creates what must live there (a netlink socket,
//! a listening socket), and ends. Sockets keep the namespace they were created in, so the
//! async side uses them from its own threads afterwards.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

#[derive(Debug, Clone, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("entering network namespace {path}: {message}")]
    Enter { path: PathBuf, message: String },
}

/// Opens a network namespace file (`/var/run/netns/x`, `/proc/<pid>/ns/net`), checking that it
/// is one.
pub fn open(path: &Path) -> Result<File, NetnsError> {
    let f = File::open(path).map_err(|e| NetnsError::Open { path: path.into(), message: e.to_string() })?;
    // Entering it on a scratch thread is the reliable check that it is a network namespace.
    let probe = f.try_clone().map_err(|e| NetnsError::Open { path: path.into(), message: e.to_string() })?;
    let p = path.to_path_buf();
    std::thread::spawn(move || setns(probe.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string()))
        .join()
        .map_err(|_| NetnsError::Enter { path: p.clone(), message: "thread panicked".into() })?
        .map_err(|message| NetnsError::Open { path: p, message: format!("not a network namespace ({message})") })?;
    Ok(f)
}

/// Runs `f` on a fresh OS thread inside the namespace at `path` (entered within the tokio
/// runtime's context, so async resources created by `f` register with it).
pub fn run_in<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> Result<T, NetnsError> {
    let ns = open(path)?;
    let runtime = tokio::runtime::Handle::try_current().ok();
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
        let _guard = runtime.as_ref().map(|r| r.enter());
        Ok(f())
    })
    .join()
    .map_err(|_| NetnsError::Enter { path: p.clone(), message: "thread panicked".into() })?
    .map_err(|message| NetnsError::Enter { path: p, message })
}

/// An rtnetlink handle whose socket lives in the namespace at `path` (call within a runtime).
pub fn netlink_in(path: &Path) -> Result<rtnetlink::Handle, NetnsError> {
    let (conn, handle, _) = run_in(path, rtnetlink::new_connection)?
        .map_err(|e| NetnsError::Enter { path: path.into(), message: format!("netlink socket: {e}") })?;
    tokio::spawn(conn);
    Ok(handle)
}
