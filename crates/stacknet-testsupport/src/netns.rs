//! Sockets inside a pod's network namespace, opened there (by `stacknet_node::netns::run_in`'s
//! thread) and used from the test's own threads; and names for namespaces no other test
//! process or call uses.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use stacknet_node::netns::run_in;

/// A name (of a network namespace, a container) unique to this process and call, short
/// enough for an interface name derived from it.
pub fn unique(tag: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!("sn{}-{}-{tag}", std::process::id() % 100_000, COUNTER.fetch_add(1, Ordering::SeqCst))
}

/// A TCP listener on `addr` inside `netns`, answering every connection with `reply`.
pub fn serve_in(netns: &Path, addr: SocketAddr, reply: &'static [u8]) {
    let listener = run_in(netns, move || TcpListener::bind(addr))
        .expect("the namespace's thread")
        .unwrap_or_else(|e| panic!("listening on {addr} in {}: {e}", netns.display()));
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(reply);
        }
    });
}

/// Connects from inside `netns` to `addr`: what the server sent before closing, or why not
/// (refused, or nothing within `timeout`: a dropped packet).
pub fn connect_from(netns: &Path, addr: SocketAddr, timeout: Duration) -> Result<Vec<u8>, String> {
    run_in(netns, move || {
        let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
        Ok(buf)
    })
    .expect("the namespace's thread")
}

/// A node agent serving on `socket` (within a tokio runtime, until the runtime ends or the
/// returned task is aborted: a restart), on the Open_vSwitch database `ovs` and the
/// Northbound database `nb`.
pub fn spawn_agent(
    config: stacknet_node::agent::AgentConfig,
    ovs: &str,
    nb: &str,
    socket: &Path,
) -> tokio::task::JoinHandle<()> {
    let ovs = ovs.parse().unwrap_or_else(|e| panic!("{ovs}: {e}"));
    let nb = nb.parse().unwrap_or_else(|e| panic!("{nb}: {e}"));
    let agent =
        std::sync::Arc::new(stacknet_node::agent::Agent::new(config, vec![ovs], vec![nb]).expect("the agent starts"));
    let socket = socket.to_path_buf();
    tokio::spawn(async move {
        let _ = agent.serve(&socket).await;
    })
}
