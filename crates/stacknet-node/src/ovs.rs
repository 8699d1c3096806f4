//! Binding a pod's host interface to OVN: a Port and Interface on br-int in the local
//! Open_vSwitch database with `external_ids:iface-id` naming the logical port (and
//! `iface-id-ver` the pod UID), then waiting for ovn-controller to report
//! `external_ids:ovn-installed=true` (its flows for the port are in place).

use std::collections::BTreeMap;
use std::time::Duration;

use stacknet_ovsdb::{
    Atom, Client, ClientConfig, Condition, Datum, Error, Mutation, Remote, Replica, Row, Transaction,
};

pub const DATABASE: &str = "Open_vSwitch";
/// The root table (one row): `external_ids:ovn-bridge-mappings` lives there.
pub const OPEN_VSWITCH: &str = "Open_vSwitch";
pub const BRIDGE: &str = "Bridge";
pub const PORT: &str = "Port";
pub const INTERFACE: &str = "Interface";
/// The container an interface was made for (ours are those with this key).
pub const KEY_CONTAINER: &str = "stacknet.io/container";
pub const KEY_IFNAME: &str = "stacknet.io/ifname";
pub const KEY_NETNS: &str = "stacknet.io/netns";

/// A client of the local Open_vSwitch database, monitoring what the agent reads.
pub fn client(remotes: Vec<Remote>) -> Client {
    client_with(remotes, None)
}

/// Like [`client`], with certificates for `ssl:` remotes.
pub fn client_with(remotes: Vec<Remote>, tls: Option<stacknet_ovsdb::TlsConfig>) -> Client {
    let mut c = ClientConfig::new(remotes, DATABASE);
    c.tls = tls;
    c.tables = Some(vec![OPEN_VSWITCH.into(), BRIDGE.into(), PORT.into(), INTERFACE.into()]);
    // Not the columns ovs-vswitchd keeps rewriting (statistics, status, link state...).
    let cols = |cs: &[&str]| cs.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    c.columns = BTreeMap::from([
        (OPEN_VSWITCH.to_string(), cols(&["external_ids"])),
        (BRIDGE.to_string(), cols(&["name", "ports", "other_config"])),
        (PORT.to_string(), cols(&["name", "interfaces", "external_ids"])),
        (INTERFACE.to_string(), cols(&["name", "type", "ofport", "external_ids"])),
    ]);
    c.leader_only = false;
    Client::start(c)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The host interface, also the OVS Port and Interface name.
    pub port: String,
    pub iface_id: String,
    pub iface_id_ver: Option<String>,
    pub container: String,
    pub ifname: String,
    pub netns: String,
}

impl Binding {
    fn external_ids(&self) -> Datum {
        let mut m = BTreeMap::from([
            ("iface-id".to_string(), self.iface_id.clone()),
            (KEY_CONTAINER.to_string(), self.container.clone()),
            (KEY_IFNAME.to_string(), self.ifname.clone()),
            (KEY_NETNS.to_string(), self.netns.clone()),
        ]);
        if let Some(v) = &self.iface_id_ver {
            m.insert("iface-id-ver".into(), v.clone());
        }
        Datum::map(m)
    }
}

/// A port of ours found in the replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub port: String,
    pub container: String,
    pub ifname: String,
    pub netns: String,
    pub iface_id: String,
    pub installed: bool,
}

/// Our interfaces (those carrying a container id).
pub fn attached(replica: &Replica) -> Vec<Attached> {
    replica
        .table(INTERFACE)
        .rows()
        .filter_map(|(_, r)| {
            let ids: BTreeMap<String, String> =
                r.get("external_ids")?.string_pairs().map(|(k, v)| (k.into(), v.into())).collect();
            Some(Attached {
                port: r.get("name")?.as_str()?.to_string(),
                container: ids.get(KEY_CONTAINER)?.clone(),
                ifname: ids.get(KEY_IFNAME).cloned().unwrap_or_default(),
                netns: ids.get(KEY_NETNS).cloned().unwrap_or_default(),
                iface_id: ids.get("iface-id").cloned().unwrap_or_default(),
                installed: ids.get("ovn-installed").map(String::as_str) == Some("true"),
            })
        })
        .collect()
}

/// Adds the port to `bridge`. Fails (writing nothing) if the bridge does not exist.
pub async fn bind(client: &Client, bridge: &str, b: &Binding) -> Result<(), BindError> {
    bind_all(client, bridge, std::slice::from_ref(b)).await
}

/// Adds all the ports to `bridge` in one transaction (all or none). ovs-vswitchd and
/// ovn-controller then reconfigure once for the lot instead of once per port.
pub async fn bind_all(client: &Client, bridge: &str, bindings: &[Binding]) -> Result<(), BindError> {
    if bindings.is_empty() {
        return Ok(());
    }
    let mut t = Transaction::new(DATABASE);
    let mut ports = stacknet_ovsdb::AtomSet::new();
    for (i, b) in bindings.iter().enumerate() {
        let (iface, port) = (format!("iface{i}"), format!("port{i}"));
        t.insert(
            INTERFACE,
            Row::from([
                ("name".to_string(), Datum::Atom(b.port.as_str().into())),
                ("external_ids".to_string(), b.external_ids()),
            ]),
            Some(&iface),
        );
        t.insert(
            PORT,
            Row::from([
                ("name".to_string(), Datum::Atom(b.port.as_str().into())),
                ("interfaces".to_string(), Datum::Set([Atom::NamedUuid(iface)].into())),
                (
                    "external_ids".to_string(),
                    Datum::map([(KEY_CONTAINER, b.container.as_str()), (KEY_IFNAME, b.ifname.as_str())]),
                ),
            ]),
            Some(&port),
        );
        ports.insert(Atom::NamedUuid(port));
    }
    let m = t.mutate(BRIDGE, vec![Condition::eq("name", bridge)], vec![Mutation::insert("ports", Datum::Set(ports))]);
    let names: Vec<&str> = bindings.iter().map(|b| b.port.as_str()).collect();
    t.comment(&format!("stacknet: attach {}", names.join(" ")));
    let reply = client.transact(&t).await?;
    if reply.count(m) != Some(1) {
        // The ports and interfaces, held by nothing, are gone with the transaction's end.
        return Err(BindError::NoBridge(bridge.to_string()));
    }
    Ok(())
}

/// How long the binder waits for another request before committing, and at most; it waits
/// only within a burst (a request came less than `LINGER_MAX` before), so a lone ADD commits
/// at once.
const LINGER_QUIET: std::time::Duration = std::time::Duration::from_millis(2);
const LINGER_MAX: std::time::Duration = std::time::Duration::from_millis(20);

/// Whether a request arriving `since_previous` after the one before it is part of a burst
/// (and the binder should wait a moment for the rest of it).
fn in_burst(since_previous: Option<std::time::Duration>) -> bool {
    since_previous.is_some_and(|d| d < LINGER_MAX)
}

type BindRequest = (Binding, tokio::sync::oneshot::Sender<Result<(), BindError>>);

/// Binds concurrent requests together: while one transaction is in flight, the requests that
/// arrive meanwhile wait and go in the next one (group commit). A failed batch is retried one
/// binding at a time, so that one bad binding fails alone.
#[derive(Clone)]
pub struct Binder {
    tx: tokio::sync::mpsc::UnboundedSender<BindRequest>,
}

impl Binder {
    /// Starts the batching task (within a tokio runtime).
    pub fn start(client: Client, bridge: String) -> Binder {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<BindRequest>();
        tokio::spawn(async move {
            let mut previous: Option<tokio::time::Instant> = None;
            while let Some(first) = rx.recv().await {
                let arrived = tokio::time::Instant::now();
                let burst = in_burst(previous.map(|p| arrived.duration_since(p)));
                let mut batch = vec![first];
                // Linger while requests keep coming (a burst of ADDs), up to a bound.
                let until = arrived + LINGER_MAX;
                while burst && batch.len() < 256 {
                    let quiet = (tokio::time::Instant::now() + LINGER_QUIET).min(until);
                    match tokio::time::timeout_at(quiet, rx.recv()).await {
                        Ok(Some(r)) => batch.push(r),
                        _ => break,
                    }
                }
                // When this batch closed: a request within LINGER_MAX of it (one that came
                // during the commit, say) is part of the same burst.
                previous = Some(tokio::time::Instant::now());
                let bindings: Vec<Binding> = batch.iter().map(|(b, _)| b.clone()).collect();
                let t = std::time::Instant::now();
                let result = bind_all(&client, &bridge, &bindings).await;
                tracing::debug!(
                    ports = bindings.len(),
                    commit_us = t.elapsed().as_micros() as u64,
                    ok = result.is_ok(),
                    "bound"
                );
                match result {
                    Ok(()) => {
                        for (_, reply) in batch {
                            let _ = reply.send(Ok(()));
                        }
                    }
                    Err(e) if batch.len() == 1 => {
                        let (_, reply) = batch.pop().expect("one");
                        let _ = reply.send(Err(e));
                    }
                    Err(_) => {
                        for (b, reply) in batch {
                            let _ = reply.send(bind(&client, &bridge, &b).await);
                        }
                    }
                }
            }
        });
        Binder { tx }
    }

    pub async fn bind(&self, b: Binding) -> Result<(), BindError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx.send((b, tx)).map_err(|_| BindError::Stopped)?;
        rx.await.map_err(|_| BindError::Stopped)?
    }
}

/// Takes `port` off `bridge` (its Port and Interface go with it). Absent: success.
pub async fn unbind(client: &Client, bridge: &str, port: &str) -> Result<bool, BindError> {
    let uuid = client.replica().as_ref().and_then(|r| r.table(PORT).by_name(port).next().map(|(u, _)| *u));
    let Some(uuid) = uuid else { return Ok(false) };
    let mut t = Transaction::new(DATABASE);
    t.mutate(
        BRIDGE,
        vec![Condition::eq("name", bridge)],
        vec![Mutation::delete("ports", Datum::Set([Atom::Uuid(uuid)].into()))],
    );
    t.comment(&format!("stacknet: detach {port}"));
    client.transact(&t).await?;
    Ok(true)
}

/// Waits until ovn-controller has installed the port's flows.
pub async fn wait_installed(client: &Client, port: &str, timeout: Duration) -> Result<(), BindError> {
    // Every waiter looks at every update: by name, not by a scan.
    let installed = |r: &Replica| {
        r.table(INTERFACE).by_name(port).any(|(_, row)| {
            row.get("external_ids").and_then(|ids| ids.map_get("ovn-installed")).and_then(|v| v.as_str())
                == Some("true")
        })
    };
    client.wait_until(timeout, installed).await.map_err(|e| match e {
        Error::Timeout(t) => BindError::NotInstalled { port: port.into(), after: t },
        e => BindError::Ovsdb(e),
    })
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BindError {
    #[error("Open_vSwitch database: {0}")]
    Ovsdb(#[from] Error),
    #[error("the agent's binding task has stopped")]
    Stopped,
    #[error("bridge {0} does not exist in the Open_vSwitch database")]
    NoBridge(String),
    #[error(
        "ovn-controller did not install port {port} within {after:?} (is ovn-controller running, and does the logical port exist?)"
    )]
    NotInstalled { port: String, after: Duration },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_request_commits_at_once_and_a_burst_lingers() {
        assert!(!in_burst(None), "the first request ever");
        assert!(!in_burst(Some(Duration::from_millis(500))), "a request after a quiet spell");
        assert!(in_burst(Some(Duration::from_millis(1))), "a request right after a commit");
        assert!(!in_burst(Some(LINGER_MAX)));
    }
}
