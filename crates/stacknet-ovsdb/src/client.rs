//! The connection: one background task per client owns the socket, multiplexes calls by id,
//! applies monitor updates to the replica, answers and sends echoes, and on any failure
//! reconnects (next remote, exponential backoff) and resyncs with `monitor_cond_since`.
//!
//! Calls made while no connection is up fail at once with [`Error::NotConnected`]; a call in
//! flight when the connection drops fails with [`Error::Disconnected`]. Transactions are never
//! resent behind the caller's back: the caller re-reads the replica and decides.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

use crate::codec::Framer;
use crate::error::Error;
use crate::replica::Replica;
use crate::rpc::{Incoming, Received, to_value};
use crate::schema::{DatabaseSchema, Version};
use crate::transact::{TransactParams, Transaction, TxnReply};

/// Where an ovsdb-server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
    Ssl { host: String, port: u16 },
}

impl Remote {
    /// A comma-separated list, as OVN's `ovn-remote` and `--db` options take it.
    pub fn parse_list(s: &str) -> Result<Vec<Remote>, Error> {
        s.split(',').map(str::trim).filter(|r| !r.is_empty()).map(str::parse).collect()
    }
}

fn host_port(s: &str, whole: &str) -> Result<(String, u16), Error> {
    let bad = || Error::Remote(whole.to_string());
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(bad)?;
        (h.to_string(), p)
    } else {
        let (h, p) = s.rsplit_once(':').ok_or_else(bad)?;
        (h.to_string(), p)
    };
    let port = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host, port))
}

impl FromStr for Remote {
    type Err = Error;
    fn from_str(s: &str) -> Result<Remote, Error> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(Error::Remote(s.into()));
            }
            return Ok(Remote::Unix(p.into()));
        }
        if let Some(hp) = s.strip_prefix("tcp:") {
            let (host, port) = host_port(hp, s)?;
            return Ok(Remote::Tcp { host, port });
        }
        if let Some(hp) = s.strip_prefix("ssl:") {
            let (host, port) = host_port(hp, s)?;
            return Ok(Remote::Ssl { host, port });
        }
        Err(Error::Remote(s.into()))
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bracket = |h: &str| if h.contains(':') { format!("[{h}]") } else { h.to_string() };
        match self {
            Remote::Unix(p) => write!(f, "unix:{}", p.display()),
            Remote::Tcp { host, port } => write!(f, "tcp:{}:{port}", bracket(host)),
            Remote::Ssl { host, port } => write!(f, "ssl:{}:{port}", bracket(host)),
        }
    }
}

/// PEM files for `ssl:` remotes, as OVN deployments configure them: the server must present a
/// certificate signed by `ca_cert` (its name is not checked, as OVS does not check it), and we
/// present `certificate` with `private_key`.
///
/// The files are read at every connection: certificates rotated on disk are used from the next
/// one on, without a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub ca_cert: PathBuf,
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

impl TlsConfig {
    /// The three files as settings name them (`ca-cert`, `certificate`, `private-key`): all or
    /// none.
    pub fn from_files(
        ca_cert: Option<PathBuf>,
        certificate: Option<PathBuf>,
        private_key: Option<PathBuf>,
    ) -> Result<Option<TlsConfig>, String> {
        match (ca_cert, certificate, private_key) {
            (None, None, None) => Ok(None),
            (Some(ca_cert), Some(certificate), Some(private_key)) => {
                Ok(Some(TlsConfig { ca_cert, certificate, private_key }))
            }
            (a, b, c) => {
                let missing: Vec<&str> =
                    [(a.is_none(), "ca-cert"), (b.is_none(), "certificate"), (c.is_none(), "private-key")]
                        .into_iter()
                        .filter_map(|(m, n)| m.then_some(n))
                        .collect();
                Err(format!(
                    "TLS needs all three of ca-cert, certificate and private-key ({} missing)",
                    missing.join(", ")
                ))
            }
        }
    }

    /// Reads the files now, as a connection would: an unreadable or mismatched file is named.
    pub fn check(&self) -> Result<(), Error> {
        tls::config(self).map(drop)
    }
}

/// Whether `remotes` may be used with `tls`: an `ssl:` remote needs certificates, and once
/// certificates are configured a `tcp:` remote (plaintext across the network) is refused.
/// `unix:` sockets stay allowed (local, guarded by file permissions).
pub fn check_transport(remotes: &[Remote], tls: Option<&TlsConfig>) -> Result<(), String> {
    for r in remotes {
        match (r, tls) {
            (Remote::Ssl { .. }, None) => {
                return Err(format!("{r} needs TLS certificates (ca-cert, certificate and private-key)"));
            }
            (Remote::Tcp { .. }, Some(_)) => {
                return Err(format!(
                    "{r} is plaintext across the network while TLS is configured: use ssl:{}",
                    r.to_string().trim_start_matches("tcp:")
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The schema a client needs from the server.
#[derive(Debug, Clone)]
pub struct Requirements {
    pub version: Version,
    pub tables: Vec<(String, Vec<String>)>,
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub remotes: Vec<Remote>,
    pub database: String,
    pub tls: Option<TlsConfig>,
    /// Tables to monitor into the replica: `None` all of them, an empty list none.
    pub tables: Option<Vec<String>>,
    /// Columns to monitor, per table (a table not named here: all its columns). Other columns
    /// read as their defaults in the replica. Leaving out columns the server rewrites often
    /// (statistics, status) saves decoding every such update.
    pub columns: BTreeMap<String, Vec<String>>,
    /// The `external_ids` keys the replica indexes for [`crate::TableReplica::by_external_id`]
    /// (`None`: every key; lookups by a key not listed scan the table).
    pub indexed_external_ids: Option<Vec<String>>,
    /// For clustered databases, only talk to the leader (found through `_Server`).
    pub leader_only: bool,
    /// Send an echo after this long without traffic; drop the connection after twice as long
    /// (OVN's inactivity probe; zero: never probe, as OVN's `inactivity_probe=0`).
    pub echo_interval: Duration,
    pub connect_timeout: Duration,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub requirements: Option<Requirements>,
}

/// OVN's default inactivity probe for its clients (5 s).
pub const DEFAULT_ECHO_INTERVAL: Duration = Duration::from_secs(5);

impl ClientConfig {
    pub fn new(remotes: Vec<Remote>, database: &str) -> Self {
        ClientConfig {
            remotes,
            database: database.into(),
            tls: None,
            tables: None,
            columns: BTreeMap::new(),
            indexed_external_ids: None,
            leader_only: true,
            echo_interval: DEFAULT_ECHO_INTERVAL,
            connect_timeout: Duration::from_secs(5),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(8),
            requirements: None,
        }
    }
}

/// Where the client stands, observable with [`Client::status`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// The remote of the live connection, once its replica is synced.
    pub connected: Option<String>,
    /// Connections made so far (a reconnect increments it).
    pub sessions: u64,
    /// Incremented whenever the replica changes.
    pub replica_version: u64,
    /// Reconnects where the server still had our last transaction: only what we missed was
    /// sent (monitor_cond_since found it), not the whole database.
    pub incremental_resyncs: u64,
    /// Why the last connection attempt or session ended.
    pub last_error: Option<String>,
}

/// A call's params: a JSON value, or JSON text serialized by the caller (transactions are
/// written straight from their builder, off the connection task).
enum Params {
    Value(Value),
    Json(Vec<u8>),
}

enum Command {
    Call { method: String, params: Params, reply: oneshot::Sender<Result<Value, Error>> },
    Disconnect,
}

/// How long the server may take over a transaction of this many bytes before its silence
/// counts against it: ovsdb-server answers nothing, echoes included, while it commits one
/// (a 69,000-operation first reconcile took it 16-20 s here and kept its session with this
/// allowance; the transaction's size in bytes, hence the margin, was not measured).
const BUSY_PER_MB: Duration = Duration::from_secs(1);

impl Command {
    /// Until when the server may be silent working on this command (a transaction only).
    fn busy_until(&self, now: Instant) -> Option<Instant> {
        match self {
            Command::Call { method, params: Params::Json(bytes), .. } if method == "transact" => {
                Some(now + BUSY_PER_MB.mul_f64(bytes.len() as f64 / (1024.0 * 1024.0)))
            }
            _ => None,
        }
    }
}

struct Shared {
    replica: RwLock<Option<Replica>>,
    status: watch::Sender<Status>,
}

/// A handle on the background connection. Cloning shares it; dropping the last handle stops it.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    database: Arc<str>,
}

impl Client {
    /// Starts connecting in the background (needs a tokio runtime).
    pub fn start(config: ClientConfig) -> Client {
        let (tx, rx) = mpsc::unbounded_channel();
        let (status, _) = watch::channel(Status::default());
        let shared = Arc::new(Shared { replica: RwLock::new(None), status });
        let database: Arc<str> = config.database.as_str().into();
        tokio::spawn(run(config, shared.clone(), rx));
        Client { commands: tx, shared, database }
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    pub fn status(&self) -> watch::Receiver<Status> {
        self.shared.status.subscribe()
    }

    /// Waits until a connection is up and its replica synced.
    pub async fn connected(&self, timeout: Duration) -> Result<(), Error> {
        let mut rx = self.status();
        let wait = rx.wait_for(|s| s.connected.is_some());
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => {
                let last = self.shared.status.borrow().last_error.clone();
                Err(match last {
                    Some(message) => Error::Connect { remote: "the database".into(), message },
                    None => Error::Timeout(timeout),
                })
            }
        }
    }

    /// Read access to the replica (`None` before the first sync).
    pub fn replica(&self) -> RwLockReadGuard<'_, Option<Replica>> {
        self.shared.replica.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `pred` holds on the replica.
    pub async fn wait_until(&self, timeout: Duration, pred: impl Fn(&Replica) -> bool) -> Result<(), Error> {
        let mut rx = self.status();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.replica().as_ref().is_some_and(&pred) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::Closed),
                Err(_) => return Err(Error::Timeout(timeout)),
            }
        }
    }

    async fn send(&self, method: &str, params: Params) -> Result<Value, Error> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Call { method: method.into(), params, reply }).map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// A raw JSON-RPC call on the current connection.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, Error> {
        self.send(method, Params::Value(params)).await
    }

    pub async fn transact(&self, txn: &Transaction) -> Result<TxnReply, Error> {
        // Serialized here, in the caller's task, straight from the builder.
        let params = serde_json::to_vec(&TransactParams(txn)).map_err(|e| Error::Protocol(e.to_string()))?;
        let result = self.send("transact", Params::Json(params)).await?;
        txn.parse_reply(&result)
    }

    /// [`Client::transact`], taking the transaction: its rows are freed once serialized, not
    /// held while the server works (a first reconcile's transaction is the whole network).
    pub async fn submit(&self, txn: Transaction) -> Result<TxnReply, Error> {
        let params = serde_json::to_vec(&TransactParams(&txn)).map_err(|e| Error::Protocol(e.to_string()))?;
        let shape = txn.shape();
        drop(txn);
        let result = self.send("transact", Params::Json(params)).await?;
        shape.parse_reply(&result)
    }

    /// Drops the current connection (it is re-established as after any failure).
    pub fn disconnect(&self) {
        let _ = self.commands.send(Command::Disconnect);
    }
}

// ---------------------------------------------------------------------------------------------
// The background task.

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn connect(remote: &Remote, config: &ClientConfig) -> Result<Box<dyn Io>, Error> {
    let err = |e: std::io::Error| Error::Connect { remote: remote.to_string(), message: e.to_string() };
    let fut = async {
        Ok::<Box<dyn Io>, Error>(match remote {
            Remote::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await.map_err(err)?),
            Remote::Tcp { host, port } => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await.map_err(err)?;
                s.set_nodelay(true).map_err(err)?;
                Box::new(s)
            }
            Remote::Ssl { host, port } => {
                let tls = config
                    .tls
                    .as_ref()
                    .ok_or_else(|| Error::Tls(format!("{remote}: no TLS certificates configured")))?;
                let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await.map_err(err)?;
                s.set_nodelay(true).map_err(err)?;
                Box::new(tls::connect(tls, host, s).await?)
            }
        })
    };
    tokio::time::timeout(config.connect_timeout, fut)
        .await
        .map_err(|_| Error::Connect { remote: remote.to_string(), message: "timed out".into() })?
}

async fn run(config: ClientConfig, shared: Arc<Shared>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut index = 0usize;
    let mut failures = 0u32;
    loop {
        if config.remotes.is_empty() {
            shared.status.send_modify(|s| s.last_error = Some("no remotes configured".into()));
            return;
        }
        let remote = config.remotes[index % config.remotes.len()].clone();
        let mut session = Session::new(&config, &shared, &remote);
        let end = session.run(&mut commands).await;
        let synced = session.synced;
        shared.status.send_modify(|s| s.connected = None);
        match end {
            End::Closed => return,
            End::Dropped(e) => {
                tracing::warn!(remote = %remote, error = %e, "ovsdb connection ended");
                for (_, p) in session.pending.drain() {
                    if let Pending::Call(reply, _) = p {
                        let _ = reply.send(Err(Error::Disconnected(e.to_string())));
                    }
                }
                shared.status.send_modify(|s| s.last_error = Some(e.to_string()));
            }
        }
        if synced {
            failures = 0;
        }
        index += 1;
        // Back off after a failure, more with each one in a row (but not after a good session
        // simply ended: reconnect at once to the next remote).
        let delay = if synced {
            Duration::ZERO
        } else {
            let d = backoff(&config, failures);
            failures += 1;
            d
        };
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                cmd = commands.recv() => match cmd {
                    None => return,
                    Some(Command::Call { reply, .. }) => { let _ = reply.send(Err(Error::NotConnected)); }
                    Some(Command::Disconnect) => {}
                },
            }
        }
    }
}

/// The pause after the `failures`-th failed attempt in a row. It doubles once per round over
/// every remote, not per attempt: while a cluster elects a leader, each member is asked again
/// within a short while (doubling per attempt left the new leader unasked for seconds after
/// the election, behind the dead member and the followers).
fn backoff(config: &ClientConfig, failures: u32) -> Duration {
    let rounds = failures / u32::try_from(config.remotes.len().max(1)).unwrap_or(u32::MAX);
    config.min_backoff.saturating_mul(1u32 << rounds.min(16)).min(config.max_backoff)
}

enum End {
    /// Every handle was dropped.
    Closed,
    Dropped(Error),
}

enum Pending {
    Call(oneshot::Sender<Result<Value, Error>>, String),
    /// A call whose reply is kept as JSON text (the handshake's monitor replies, decoded row by
    /// row into the replica).
    Raw(oneshot::Sender<Result<Box<RawValue>, Error>>, String),
    Echo,
}

const MAIN_MONITOR: &str = "db";
const SERVER_MONITOR: &str = "_Server";

struct Session<'a> {
    config: &'a ClientConfig,
    shared: &'a Shared,
    remote: &'a Remote,
    framer: Framer,
    next_id: u64,
    pending: HashMap<u64, Pending>,
    /// Notifications that arrived while the handshake waited for a reply.
    early: Vec<(String, Option<Box<RawValue>>)>,
    synced: bool,
    /// Which update format the main monitor uses: 3, 2 or 1.
    monitor_version: u8,
    server_db: ServerDb,
}

impl<'a> Session<'a> {
    fn new(config: &'a ClientConfig, shared: &'a Shared, remote: &'a Remote) -> Self {
        Session {
            config,
            shared,
            remote,
            framer: Framer::default(),
            next_id: 1,
            pending: HashMap::new(),
            early: Vec::new(),
            synced: false,
            monitor_version: 3,
            server_db: ServerDb::default(),
        }
    }

    async fn run(&mut self, commands: &mut mpsc::UnboundedReceiver<Command>) -> End {
        let started = Instant::now();
        let io = match connect(self.remote, self.config).await {
            Ok(io) => io,
            Err(e) => return End::Dropped(e),
        };
        let (mut rd, mut wr) = tokio::io::split(io);
        if let Err(e) = self.handshake(&mut rd, &mut wr).await {
            return End::Dropped(e);
        }
        self.synced = true;
        let remote = self.remote.to_string();
        tracing::debug!(
            remote = %remote,
            database = %self.config.database,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "connected and monitoring (the replica holds the database)"
        );
        self.shared.status.send_modify(|s| {
            s.connected = Some(remote);
            s.sessions += 1;
            s.replica_version += 1;
            s.last_error = None;
        });
        for (method, params) in std::mem::take(&mut self.early) {
            if let Err(e) = self.notification(&method, params.as_deref()) {
                return End::Dropped(e);
            }
        }
        match self.serve(&mut rd, wr, commands).await {
            Ok(()) => End::Closed,
            Err(e) => End::Dropped(e),
        }
    }

    fn request(&mut self, method: &str, params: Params, pending: Pending) -> Vec<u8> {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, pending);
        let params = match params {
            Params::Json(bytes) => bytes,
            Params::Value(v) => serde_json::to_vec(&v).expect("json values serialize"),
        };
        let mut bytes = Vec::with_capacity(params.len() + method.len() + 40);
        bytes.extend_from_slice(format!("{{\"id\":{id},\"method\":").as_bytes());
        serde_json::to_writer(&mut bytes, method).expect("strings serialize");
        bytes.extend_from_slice(b",\"params\":");
        bytes.extend_from_slice(&params);
        bytes.extend_from_slice(b"}\n");
        bytes
    }

    /// A call during the handshake: write it and read until its reply comes (as JSON text).
    async fn call_direct<R, W>(
        &mut self,
        rd: &mut R,
        wr: &mut W,
        method: &str,
        params: Value,
    ) -> Result<Box<RawValue>, Error>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        // The framer is lent out while messages borrowed from it are handled.
        let mut framer = std::mem::take(&mut self.framer);
        let r = async {
            let (tx, mut rx) = oneshot::channel();
            let bytes = self.request(method, Params::Value(params), Pending::Raw(tx, method.into()));
            write(wr, &bytes).await?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                if let Ok(r) = rx.try_recv() {
                    return r;
                }
                let n = tokio::time::timeout(self.patience(), rd.read(&mut buf))
                    .await
                    .map_err(|_| Error::Disconnected(format!("no reply to {method}")))?
                    .map_err(|e| Error::Disconnected(e.to_string()))?;
                if n == 0 {
                    return Err(Error::Disconnected("closed by the server".into()));
                }
                framer.push(&buf[..n]);
                while let Some(m) = framer.next_message().map_err(|e| Error::Protocol(e.0))? {
                    match Incoming::parse(m).map_err(Error::Protocol)? {
                        Received::Notification { method, params } => {
                            self.early.push((method, params.map(ToOwned::to_owned)));
                        }
                        Received::Request { id, method, params } => {
                            let params = to_value(params).map_err(Error::Protocol)?;
                            write(wr, &reply_to(id, &method, params)).await?;
                        }
                        Received::Response { id, result, error } => self.response(id, result, error)?,
                    }
                }
            }
        }
        .await;
        self.framer = framer;
        r
    }

    async fn handshake<R, W>(&mut self, rd: &mut R, wr: &mut W) -> Result<(), Error>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let db = self.config.database.clone();
        if self.config.leader_only {
            self.check_leader(rd, wr).await?;
        }
        let schema_json =
            to_value(Some(&self.call_direct(rd, wr, "get_schema", json!([db])).await?)).map_err(Error::Protocol)?;
        let schema = Arc::new(DatabaseSchema::from_json(&schema_json)?);
        if let Some(req) = &self.config.requirements {
            let needs: Vec<(&str, Vec<&str>)> =
                req.tables.iter().map(|(t, cs)| (t.as_str(), cs.iter().map(String::as_str).collect())).collect();
            let needs: Vec<(&str, &[&str])> = needs.iter().map(|(t, cs)| (*t, cs.as_slice())).collect();
            schema.require(req.version, &needs)?;
        }
        let tables: Vec<String> = match &self.config.tables {
            Some(t) => t.clone(),
            None => schema.tables.keys().cloned().collect(),
        };
        for t in &tables {
            if !schema.tables.contains_key(t) {
                return Err(Error::Schema {
                    database: db.clone(),
                    version: schema.version.to_string(),
                    needed: "a schema with that table".into(),
                    missing: vec![format!("table {t}")],
                });
            }
        }
        // The replica appears only once the monitor's first answer is in it: before that,
        // readers see `None` (not an empty database).
        let indexed = self.config.indexed_external_ids.clone();
        let fresh = || Replica::new(schema.clone()).with_indexed_keys(indexed.clone());
        let last_txn = {
            let mut guard = self.shared.replica.write().unwrap_or_else(|e| e.into_inner());
            if tables.is_empty() {
                guard.get_or_insert_with(fresh).set_schema(schema.clone());
                return Ok(());
            }
            guard.as_mut().and_then(|replica| {
                replica.set_schema(schema.clone());
                replica.last_txn_id.clone()
            })
        };
        let requests: serde_json::Map<String, Value> = tables
            .iter()
            .map(|t| match self.config.columns.get(t) {
                Some(cs) => (t.clone(), json!([{"columns": cs}])),
                None => (t.clone(), json!([{}])),
            })
            .collect();
        let zero = "00000000-0000-0000-0000-000000000000".to_string();
        let since = json!([db, MAIN_MONITOR, requests, last_txn.unwrap_or(zero)]);
        match self.call_direct(rd, wr, "monitor_cond_since", since).await {
            Ok(result) => {
                let (found, txn, updates): (bool, Option<String>, &RawValue) = serde_json::from_str(result.get())
                    .map_err(|e| Error::Protocol(format!("bad monitor_cond_since reply: {e}")))?;
                self.monitor_version = 3;
                if found {
                    self.shared.status.send_modify(|s| s.incremental_resyncs += 1);
                }
                let mut guard = self.shared.replica.write().unwrap_or_else(|e| e.into_inner());
                let replica = guard.get_or_insert_with(fresh);
                if !found {
                    replica.clear();
                }
                replica.apply_update2_json(updates)?;
                replica.last_txn_id = txn;
            }
            Err(Error::Rpc { message, .. }) if message.contains("unknown method") => {
                let result = match self.call_direct(rd, wr, "monitor_cond", json!([db, MAIN_MONITOR, requests])).await {
                    Ok(r) => {
                        self.monitor_version = 2;
                        r
                    }
                    Err(Error::Rpc { message, .. }) if message.contains("unknown method") => {
                        let v1: serde_json::Map<String, Value> =
                            tables.iter().map(|t| (t.clone(), json!({}))).collect();
                        self.monitor_version = 1;
                        self.call_direct(rd, wr, "monitor", json!([db, MAIN_MONITOR, v1])).await?
                    }
                    Err(e) => return Err(e),
                };
                let mut guard = self.shared.replica.write().unwrap_or_else(|e| e.into_inner());
                let replica = guard.get_or_insert_with(fresh);
                replica.clear();
                if self.monitor_version == 2 {
                    replica.apply_update2_json(&result)?;
                } else {
                    replica.apply_update1(&to_value(Some(&result)).map_err(Error::Protocol)?)?;
                }
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// For a clustered database, refuses a server that is not the connected leader, and
    /// monitors `_Server` to notice when it stops being one.
    async fn check_leader<R, W>(&mut self, rd: &mut R, wr: &mut W) -> Result<(), Error>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let db = self.config.database.clone();
        let req = json!(["_Server", SERVER_MONITOR, {"Database": [{"where": [["name", "==", db]], "columns": ["name", "model", "connected", "leader"]}]}]);
        let result = match self.call_direct(rd, wr, "monitor_cond", req).await {
            Ok(r) => to_value(Some(&r)).map_err(Error::Protocol)?,
            // A server without _Server (very old) cannot be clustered.
            Err(Error::Rpc { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.server_db.apply(&result);
        self.server_db.check(&db)
    }

    fn response(&mut self, id: Value, result: Option<&RawValue>, error: Option<&RawValue>) -> Result<(), Error> {
        let Some(id) = id.as_u64() else { return Ok(()) };
        let error = to_value(error).map_err(Error::Protocol)?;
        let failed = |method: String| {
            let message = match (&error, error.get("error"), error.get("details")) {
                (_, Some(e), Some(d)) => {
                    format!("{}: {}", e.as_str().unwrap_or_default(), d.as_str().unwrap_or_default())
                }
                (_, Some(e), None) => e.as_str().unwrap_or_default().to_string(),
                (Value::String(s), _, _) => s.clone(),
                (e, _, _) => e.to_string(),
            };
            Error::Rpc { method, message }
        };
        match self.pending.remove(&id) {
            Some(Pending::Call(reply, method)) => {
                let r = if error.is_null() { to_value(result).map_err(Error::Protocol) } else { Err(failed(method)) };
                let _ = reply.send(r);
            }
            Some(Pending::Raw(reply, method)) => {
                let r = if error.is_null() {
                    Ok(result
                        .map(ToOwned::to_owned)
                        .unwrap_or_else(|| RawValue::from_string("null".into()).expect("json")))
                } else {
                    Err(failed(method))
                };
                let _ = reply.send(r);
            }
            Some(Pending::Echo) | None => {}
        }
        Ok(())
    }

    fn notification(&mut self, method: &str, params: Option<&RawValue>) -> Result<(), Error> {
        let Some(params) = params else { return Ok(()) };
        let bad = |e: serde_json::Error| Error::Protocol(format!("bad {method} params: {e}"));
        let p: Vec<&RawValue> = serde_json::from_str(params.get()).map_err(bad)?;
        let monitor: Value = match p.first() {
            Some(m) => serde_json::from_str(m.get()).map_err(bad)?,
            None => return Ok(()),
        };
        let monitor = monitor.as_str().unwrap_or_default();
        if monitor == SERVER_MONITOR {
            if let Some(updates) = p.get(1) {
                let updates = to_value(Some(updates)).map_err(Error::Protocol)?;
                self.server_db.apply(&updates);
                return self.server_db.check(&self.config.database);
            }
            return Ok(());
        }
        if monitor != MAIN_MONITOR {
            return Ok(());
        }
        let mut guard = self.shared.replica.write().unwrap_or_else(|e| e.into_inner());
        let Some(replica) = guard.as_mut() else { return Ok(()) };
        match (method, p.as_slice()) {
            ("update3", [_, txn, updates]) => {
                replica.apply_update2_json(updates)?;
                replica.last_txn_id = serde_json::from_str::<Option<String>>(txn.get()).ok().flatten();
            }
            ("update2", [_, updates]) => {
                replica.apply_update2_json(updates)?;
            }
            ("update", [_, updates]) => {
                replica.apply_update1(&to_value(Some(updates)).map_err(Error::Protocol)?)?;
            }
            _ => return Ok(()),
        }
        drop(guard);
        self.shared.status.send_modify(|s| s.replica_version += 1);
        Ok(())
    }

    /// The session's main loop. Writes go through their own task so that reading never waits
    /// on a full socket: a server that stops reading until we drain its replies (ovsdb-server's
    /// backlog flow control) must never find us blocked in a write.
    async fn serve<R, W>(
        &mut self,
        rd: &mut R,
        wr: W,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Result<(), Error>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let writer = tokio::spawn(async move {
            let mut wr = wr;
            while let Some(mut buf) = out_rx.recv().await {
                while let Ok(more) = out_rx.try_recv() {
                    buf.extend(more);
                }
                write(&mut wr, &buf).await?;
            }
            Ok::<(), Error>(())
        });
        let mut writer = AbortOnDrop(writer);
        let send = |bytes: Vec<u8>| out_tx.send(bytes).map_err(|_| Error::Disconnected("writer stopped".into()));
        let interval = self.config.echo_interval;
        let probing = !interval.is_zero();
        let mut ticker = tokio::time::interval(if probing { interval / 2 } else { Duration::from_secs(30) });
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_rx = Instant::now();
        let mut echo_sent: Option<Instant> = None;
        // While the server works on a transaction we sent, its silence is not judged (it
        // answers nothing while it commits; a large first write took longer than the probe).
        let mut busy_until: Option<Instant> = None;
        let mut buf = vec![0u8; 256 * 1024];
        let mut out = Vec::new();
        // Messages borrow from the framer while they are handled; the session has no other use
        // for it from here on.
        let mut framer = std::mem::take(&mut self.framer);
        loop {
            tokio::select! {
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return Ok(()) };
                    busy_until = busy_until.max(cmd.busy_until(Instant::now()));
                    self.command(cmd, &mut out)?;
                    // Batch whatever else is queued into one write.
                    while let Ok(cmd) = commands.try_recv() {
                        busy_until = busy_until.max(cmd.busy_until(Instant::now()));
                        self.command(cmd, &mut out)?;
                    }
                    send(std::mem::take(&mut out))?;
                }
                n = rd.read(&mut buf) => {
                    let n = n.map_err(|e| Error::Disconnected(e.to_string()))?;
                    if n == 0 {
                        return Err(Error::Disconnected("closed by the server".into()));
                    }
                    last_rx = Instant::now();
                    echo_sent = None;
                    framer.push(&buf[..n]);
                    loop {
                        let msg = match framer.next_message() {
                            Ok(Some(m)) => m,
                            Ok(None) => break,
                            Err(e) => return Err(Error::Protocol(e.0)),
                        };
                        match Incoming::parse(msg).map_err(Error::Protocol)? {
                            Received::Response { id, result, error } => self.response(id, result, error)?,
                            Received::Notification { method, params } => self.notification(&method, params)?,
                            Received::Request { id, method, params } => {
                                out.extend(reply_to(id, &method, to_value(params).map_err(Error::Protocol)?));
                            }
                        }
                    }
                    if !out.is_empty() {
                        send(std::mem::take(&mut out))?;
                    }
                    if busy_until.is_some() && !self.transacting() {
                        busy_until = None;
                    }
                }
                done = &mut writer.0 => {
                    return Err(match done {
                        Ok(Ok(())) => Error::Disconnected("writer stopped".into()),
                        Ok(Err(e)) => e,
                        Err(e) => Error::Disconnected(format!("writer failed: {e}")),
                    });
                }
                _ = ticker.tick(), if probing => {
                    if let Some(sent) = echo_sent
                        && sent.elapsed() >= interval
                    {
                        return Err(Error::Disconnected(format!("no reply to echo within {interval:?}")));
                    }
                    let quiet_since = busy_until.map_or(last_rx, |b| b.max(last_rx));
                    if echo_sent.is_none() && quiet_since.elapsed() >= interval {
                        send(self.request("echo", Params::Value(json!([])), Pending::Echo))?;
                        echo_sent = Some(Instant::now());
                    }
                }
            }
        }
    }

    /// Whether a transaction we sent is still unanswered.
    fn transacting(&self) -> bool {
        self.pending.values().any(|p| matches!(p, Pending::Call(_, m) if m == "transact"))
    }

    /// How long a reply may take during the handshake: twice the probe interval (an hour
    /// without probes).
    fn patience(&self) -> Duration {
        if self.config.echo_interval.is_zero() { Duration::from_secs(3600) } else { self.config.echo_interval * 2 }
    }

    fn command(&mut self, cmd: Command, out: &mut Vec<u8>) -> Result<(), Error> {
        match cmd {
            Command::Call { method, params, reply } => {
                let bytes = self.request(&method.clone(), params, Pending::Call(reply, method));
                out.extend(bytes);
                Ok(())
            }
            Command::Disconnect => Err(Error::Disconnected("disconnect requested".into())),
        }
    }
}

/// Aborts a task when dropped (a session's writer must not outlive the session).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The server answers our echo; we answer the server's echo; anything else it asks is refused.
fn reply_to(id: Value, method: &str, params: Value) -> Vec<u8> {
    let msg = if method == "echo" {
        json!({"id": id, "result": params, "error": null})
    } else {
        json!({"id": id, "result": null, "error": format!("unknown method {method}")})
    };
    let mut bytes = serde_json::to_vec(&msg).expect("json");
    bytes.push(b'\n');
    bytes
}

async fn write<W: AsyncWrite + Unpin>(wr: &mut W, bytes: &[u8]) -> Result<(), Error> {
    wr.write_all(bytes).await.map_err(|e| Error::Disconnected(e.to_string()))?;
    wr.flush().await.map_err(|e| Error::Disconnected(e.to_string()))
}

/// What `_Server.Database` says about our database on this server.
#[derive(Debug, Clone, Default)]
struct ServerDb {
    model: String,
    connected: bool,
    leader: bool,
}

impl ServerDb {
    /// Applies a monitor reply or update2 for `_Server.Database` (rows other than `db`'s are
    /// filtered by the monitor condition). In "initial"/"insert" rows, columns at their
    /// default (false) are omitted; in "modify" rows, unchanged ones are.
    fn apply(&mut self, updates: &Value) {
        let rows = updates.get("Database").and_then(Value::as_object);
        for row in rows.into_iter().flat_map(|r| r.values()) {
            let (body, fresh) = match (row.get("initial").or_else(|| row.get("insert")), row.get("modify")) {
                (Some(b), _) => (b, true),
                (None, Some(b)) => (b, false),
                _ => continue,
            };
            if fresh {
                *self = ServerDb::default();
            }
            if let Some(m) = body.get("model").and_then(Value::as_str) {
                self.model = m.to_string();
            }
            // A modify of a boolean carries its new value.
            if let Some(c) = body.get("connected").and_then(Value::as_bool) {
                self.connected = c;
            }
            if let Some(l) = body.get("leader").and_then(Value::as_bool) {
                self.leader = l;
            }
        }
    }

    /// A clustered database must be connected and led by this server.
    fn check(&self, db: &str) -> Result<(), Error> {
        if self.model.is_empty() {
            // A joining cluster member serves _Server before it has the database.
            return Err(Error::Disconnected(format!("this server does not serve {db} (yet)")));
        }
        if self.model == "clustered" && !(self.connected && self.leader) {
            return Err(Error::Disconnected(format!("this server is not the connected leader of clustered {db}")));
        }
        Ok(())
    }
}

mod tls {
    //! `ssl:` remotes with rustls: a chain to the configured CA is required, the server name is
    //! not checked (OVN certificates are per-host, often without matching names, and OVS itself
    //! verifies only the CA).
    use std::sync::Arc;

    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use tokio::net::TcpStream;
    use tokio_rustls::client::TlsStream;

    use super::TlsConfig;
    use crate::error::Error;

    #[derive(Debug)]
    struct CaOnly(Arc<WebPkiServerVerifier>);

    impl ServerCertVerifier for CaOnly {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    }

    pub(super) fn config(tls: &TlsConfig) -> Result<rustls::ClientConfig, Error> {
        let read_err = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
            Error::Tls(format!("{what} {}: {e}", path.display()))
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let cas =
            CertificateDer::pem_file_iter(&tls.ca_cert).map_err(|e| read_err("CA certificate", &tls.ca_cert, &e))?;
        for ca in cas {
            let ca = ca.map_err(|e| read_err("CA certificate", &tls.ca_cert, &e))?;
            roots.add(ca).map_err(|e| read_err("CA certificate", &tls.ca_cert, &e))?;
        }
        if roots.is_empty() {
            return Err(Error::Tls(format!("CA certificate {}: no certificate in the file", tls.ca_cert.display())));
        }
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.certificate)
            .map_err(|e| read_err("certificate", &tls.certificate, &e))?
            .collect::<Result<_, _>>()
            .map_err(|e| read_err("certificate", &tls.certificate, &e))?;
        let key = PrivateKeyDer::from_pem_file(&tls.private_key)
            .map_err(|e| read_err("private key", &tls.private_key, &e))?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| Error::Tls(e.to_string()))?;
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(CaOnly(verifier)))
            .with_client_auth_cert(certs, key)
            .map_err(|e| {
                Error::Tls(format!(
                    "certificate {} and key {}: {e}",
                    tls.certificate.display(),
                    tls.private_key.display()
                ))
            })
    }

    pub async fn connect(tls: &TlsConfig, host: &str, tcp: TcpStream) -> Result<TlsStream<TcpStream>, Error> {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config(tls)?));
        let name = ServerName::try_from(host.to_string()).map_err(|e| Error::Tls(format!("{host}: {e}")))?;
        connector.connect(name, tcp).await.map_err(|e| Error::Tls(format!("handshake with {host}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes() {
        assert_eq!("unix:/run/ovn/nb.sock".parse::<Remote>().unwrap(), Remote::Unix("/run/ovn/nb.sock".into()));
        assert_eq!(
            "tcp:127.0.0.1:6641".parse::<Remote>().unwrap(),
            Remote::Tcp { host: "127.0.0.1".into(), port: 6641 }
        );
        assert_eq!("ssl:[::1]:6641".parse::<Remote>().unwrap(), Remote::Ssl { host: "::1".into(), port: 6641 });
        assert_eq!("ssl:[::1]:6641".parse::<Remote>().unwrap().to_string(), "ssl:[::1]:6641");
        for bad in ["ptcp:6641", "tcp:6641", "tcp::6641", "unix:", "tcp:h:99999", "/path"] {
            assert!(bad.parse::<Remote>().is_err(), "{bad}");
        }
        assert_eq!(Remote::parse_list("tcp:a:1, tcp:b:2").unwrap().len(), 2);
    }

    #[test]
    fn tls_settings_come_whole_and_plaintext_is_refused_once_configured() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(TlsConfig::from_files(None, None, None), Ok(None));
        assert!(TlsConfig::from_files(p("ca"), p("crt"), p("key")).unwrap().is_some());
        assert_eq!(
            TlsConfig::from_files(p("ca"), None, None).unwrap_err(),
            "TLS needs all three of ca-cert, certificate and private-key (certificate, private-key missing)"
        );
        let tls = TlsConfig { ca_cert: "ca".into(), certificate: "crt".into(), private_key: "key".into() };
        let remotes = |s: &str| Remote::parse_list(s).unwrap();
        assert_eq!(check_transport(&remotes("ssl:a:1,unix:/s"), Some(&tls)), Ok(()));
        assert_eq!(check_transport(&remotes("tcp:a:1,unix:/s"), None), Ok(()));
        assert_eq!(
            check_transport(&remotes("ssl:a:1,tcp:b:2"), Some(&tls)).unwrap_err(),
            "tcp:b:2 is plaintext across the network while TLS is configured: use ssl:b:2"
        );
        assert!(check_transport(&remotes("ssl:a:1"), None).unwrap_err().starts_with("ssl:a:1 needs TLS"));
    }

    #[test]
    fn backoff_doubles_once_every_remote_was_tried() {
        let remotes = Remote::parse_list("unix:/a,unix:/b,unix:/c").unwrap();
        let config = ClientConfig::new(remotes, "OVN_Northbound");
        let ms = |f| backoff(&config, f).as_millis();
        assert_eq!([ms(0), ms(1), ms(2), ms(3), ms(5), ms(6)], [50, 50, 50, 100, 100, 200]);
        assert_eq!(ms(1000), 8000, "capped");
        let one = ClientConfig::new(Remote::parse_list("unix:/a").unwrap(), "OVN_Northbound");
        assert_eq!([backoff(&one, 0).as_millis(), backoff(&one, 1).as_millis()], [50, 100]);
    }
}
