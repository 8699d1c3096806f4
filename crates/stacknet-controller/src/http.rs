//! `/metrics`, `/healthz`, `/readyz` (and `/events`) over a minimal HTTP/1.1 server: one
//! request per connection, GET only, small bounded reads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::events::Events;
use crate::metrics::Metrics;

/// What the endpoints report.
#[derive(Debug, Default)]
pub struct Health {
    /// The controller loop is running.
    pub alive: AtomicBool,
    /// Every source has delivered the cluster and the network has been made equal to it.
    pub ready: AtomicBool,
    /// Why it is not ready (when it is not).
    pub reason: std::sync::Mutex<String>,
}

impl Health {
    pub fn set_ready(&self, ready: bool, reason: &str) {
        self.ready.store(ready, Ordering::SeqCst);
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = reason.to_string();
    }
}

/// Binds `addr` (port 0: any free port) and serves from a thread of its own for the life of
/// the process: probes are answered at once even while the controller's loop is busy with a
/// long reconcile or a big manifest file.
pub fn serve_thread(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    events: Arc<Events>,
) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("stacknet-http".into()).spawn(move || {
        runtime.block_on(async move {
            let Ok(listener) = TcpListener::from_std(listener) else { return };
            let _ = serve_on(listener, health, metrics, events).await;
        })
    })?;
    Ok(bound)
}

/// Binds `addr` (port 0: any free port) and serves until the task is dropped; returns the
/// bound address and the serving task.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    events: Arc<Events>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((bound, serve_on(listener, health, metrics, events)))
}

fn serve_on(
    listener: TcpListener,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    events: Arc<Events>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            let (health, metrics, events) = (health.clone(), metrics.clone(), events.clone());
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(512);
                let read = tokio::time::timeout(Duration::from_secs(5), async {
                    let mut chunk = [0u8; 512];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                        let n = stream.read(&mut chunk).await?;
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    std::io::Result::Ok(())
                })
                .await;
                if !matches!(read, Ok(Ok(()))) {
                    return;
                }
                let line = String::from_utf8_lossy(&buf).lines().next().unwrap_or_default().to_string();
                let mut parts = line.split_whitespace();
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let (status, ctype, body) = respond(method, path, &health, &metrics, &events);
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    })
}

fn respond(
    method: &str,
    path: &str,
    health: &Health,
    metrics: &Metrics,
    events: &Events,
) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" {
        return ("405 Method Not Allowed", TEXT, "GET only\n".into());
    }
    match path.split('?').next().unwrap_or("") {
        "/metrics" => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", metrics.render()),
        "/healthz" if health.alive.load(Ordering::SeqCst) => ("200 OK", TEXT, "ok\n".into()),
        "/healthz" => ("503 Service Unavailable", TEXT, "the controller loop is not running\n".into()),
        "/readyz" if health.ready.load(Ordering::SeqCst) => ("200 OK", TEXT, "ok\n".into()),
        "/readyz" => {
            let reason = health.reason.lock().unwrap_or_else(|e| e.into_inner()).clone();
            ("503 Service Unavailable", TEXT, format!("not ready: {reason}\n"))
        }
        "/events" => {
            let body = events
                .all()
                .iter()
                .map(|e| format!("Warning {} {}: {} (x{})\n", e.reason, e.object, e.message, e.count))
                .collect();
            ("200 OK", TEXT, body)
        }
        _ => ("404 Not Found", TEXT, "try /metrics, /healthz, /readyz or /events\n".into()),
    }
}
