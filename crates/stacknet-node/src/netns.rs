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

/// The file system namespace files live on.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Opens a namespace file (`/var/run/netns/x`, `/proc/<pid>/ns/net`), checking that it is one
/// (a namespace of another kind fails on entering it).
pub fn open(path: &Path) -> Result<File, NetnsError> {
    let f = File::open(path).map_err(|e| NetnsError::Open { path: path.into(), message: e.to_string() })?;
    let fs =
        nix::sys::statfs::fstatfs(&f).map_err(|e| NetnsError::Open { path: path.into(), message: e.to_string() })?;
    if fs.filesystem_type().0 as i64 != NSFS_MAGIC {
        return Err(NetnsError::Open { path: path.into(), message: "not a network namespace".into() });
    }
    Ok(f)
}

fn spawn_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T, String>>, NetnsError> {
    let ns = open(path)?;
    let runtime = tokio::runtime::Handle::try_current().ok();
    Ok(std::thread::spawn(move || {
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
        let _guard = runtime.as_ref().map(|r| r.enter());
        Ok(f())
    }))
}

/// Runs `f` on a fresh OS thread inside the namespace at `path` (entered within the tokio
/// runtime's context, so async resources created by `f` register with it), and waits for it.
pub fn run_in<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> Result<T, NetnsError> {
    let p = path.to_path_buf();
    spawn_in(path, f)?
        .join()
        .map_err(|_| NetnsError::Enter { path: p.clone(), message: "thread panicked".into() })?
        .map_err(|message| NetnsError::Enter { path: p, message })
}

/// [`run_in`] for async callers, for short jobs (creating a socket, one netlink request): it
/// runs on one of a few long-lived threads that enter the namespace for the job and return to
/// their own afterwards, so a pod start does not pay for a new thread (its stack, its
/// allocator's fresh pages) each time. The runtime's workers are not held while `f` runs.
pub async fn run_in_async<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let ns = open(path)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let p = path.to_path_buf();
    let runtime = tokio::runtime::Handle::try_current().ok();
    let job: Job = Box::new(move || {
        let _guard = runtime.as_ref().map(|r| r.enter());
        let _ = tx.send(f());
    });
    workers::submit(ns, job);
    rx.await.map_err(|_| NetnsError::Enter { path: p, message: "could not enter the namespace".into() })
}

type Job = Box<dyn FnOnce() + Send>;

mod workers {
    use std::fs::File;
    use std::os::fd::AsFd;
    use std::sync::mpsc::{Receiver, Sender, channel};
    use std::sync::{Arc, Mutex, OnceLock};

    use nix::sched::{CloneFlags, setns};

    use super::Job;

    /// Namespace jobs run two at a time (each is a few syscalls).
    const THREADS: usize = 2;

    struct Pool {
        tx: Mutex<Sender<(File, Job)>>,
        rx: Arc<Mutex<Receiver<(File, Job)>>>,
    }

    fn pool() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| {
            let (tx, rx) = channel();
            let pool = Pool { tx: Mutex::new(tx), rx: Arc::new(Mutex::new(rx)) };
            for _ in 0..THREADS {
                spawn(pool.rx.clone());
            }
            pool
        })
    }

    fn spawn(rx: Arc<Mutex<Receiver<(File, Job)>>>) {
        let _ = std::thread::Builder::new().name("stacknet-netns".into()).spawn(move || {
            // The namespace this thread returns to after each job.
            let Ok(home) = File::open("/proc/thread-self/ns/net") else { return };
            loop {
                let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                let Ok((ns, job)) = next else { return };
                if setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).is_err() {
                    // The job's sender is dropped with it: the caller sees the failure.
                    drop(job);
                    continue;
                }
                // A job that panics has dropped its sender: its caller sees the failure.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                if setns(home.as_fd(), CloneFlags::CLONE_NEWNET).is_err() {
                    // Stranded in a pod's namespace: this thread must not take another job.
                    spawn(rx);
                    return;
                }
            }
        });
    }

    pub(super) fn submit(ns: File, job: Job) {
        let tx = pool().tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Err(std::sync::mpsc::SendError((ns, job))) = tx.send((ns, job)) {
            // No worker left (they could not start): a thread of its own for this job.
            std::thread::spawn(move || {
                if setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).is_ok() {
                    job();
                }
            });
        }
    }
}

/// An rtnetlink handle whose socket lives in the namespace at `path` (call within a runtime).
pub fn netlink_in(path: &Path) -> Result<rtnetlink::Handle, NetnsError> {
    let (conn, handle, _) = run_in(path, rtnetlink::new_connection)?
        .map_err(|e| NetnsError::Enter { path: path.into(), message: format!("netlink socket: {e}") })?;
    tokio::spawn(conn);
    Ok(handle)
}

/// [`netlink_in`] for async callers.
pub async fn netlink_in_async(path: &Path) -> Result<rtnetlink::Handle, NetnsError> {
    let (conn, handle, _) = run_in_async(path, rtnetlink::new_connection)
        .await?
        .map_err(|e| NetnsError::Enter { path: path.into(), message: format!("netlink socket: {e}") })?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The sockets a pod interface is configured through, made in one visit to the namespace at
/// `path`: an rtnetlink handle and a generic netlink socket for ethtool requests.
pub async fn pod_sockets(path: &Path) -> Result<(rtnetlink::Handle, netlink_sys::Socket), NetnsError> {
    let made = run_in_async(path, || {
        let rt = rtnetlink::new_connection().map_err(|e| format!("netlink socket: {e}"))?;
        let genl = crate::ethtool::socket()?;
        Ok::<_, String>((rt, genl))
    })
    .await?;
    let ((conn, handle, _), genl) = made.map_err(|message| NetnsError::Enter { path: path.into(), message })?;
    tokio::spawn(conn);
    Ok((handle, genl))
}
