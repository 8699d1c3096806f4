//! GET against the controller's endpoints (`/healthz`, `/readyz`, `/metrics`, `/events`), as a
//! probe or a scraper would: one request per connection, with timeouts.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A status code and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// GET `path`; `None` if nothing answers (no listener yet, a timeout, not HTTP).
pub fn get_blocking(addr: SocketAddr, path: &str) -> Option<Answer> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some(Answer { status, body })
}

/// [`get_blocking`] off the runtime's threads (the server under test may share them).
pub async fn get(addr: SocketAddr, path: &str) -> Option<Answer> {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || get_blocking(addr, &path)).await.expect("the GET thread panicked")
}

/// The value of metric `name` (a plain counter or gauge line) in a Prometheus text page.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_is_found_by_its_whole_name() {
        let page = "# TYPE x counter\nstacknet_ovsdb_transactions_total_x 9\nstacknet_ovsdb_transactions_total 3\n";
        assert_eq!(metric(page, "stacknet_ovsdb_transactions_total"), Some(3.0));
        assert_eq!(metric(page, "stacknet_missing"), None);
    }

    #[test]
    fn nothing_listening_is_no_answer() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        assert_eq!(get_blocking(port, "/healthz"), None);
    }
}
