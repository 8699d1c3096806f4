//! One OVN database as a standalone ovsdb-server or a Raft cluster of several: members talk
//! Raft over loopback TCP on ports chosen now, and each serves clients on its own unix socket.
//! A member can be killed, restarted, frozen (SIGSTOP) and thawed, to test what OVN's clients
//! do when leadership moves.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::ovn::{DbServer, run};
use crate::{Error, Result};

/// How long a cluster may take to elect its first leader.
const ELECTION: Duration = Duration::from_secs(30);

/// A database served by one ovsdb-server (standalone) or by a Raft cluster of several.
#[derive(Debug)]
pub struct DbCluster {
    database: String,
    members: Vec<DbServer>,
    frozen: Vec<bool>,
}

/// What one member says of itself (`cluster/status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// `leader`, `follower` or `candidate`.
    pub role: String,
    pub term: u64,
    /// `cluster member`, `joining cluster`, `leaving cluster`, ...
    pub status: String,
}

/// A database size as given by a user (`--db-cluster`, `STACKNET_DB_CLUSTER`): 1 (standalone),
/// or a Raft cluster of 3 or 5 members.
pub fn members(s: &str) -> std::result::Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n @ (1 | 3 | 5)) => Ok(n),
        _ => Err(format!(
            "{s}: 1 (standalone), 3 or 5 members (a Raft cluster of an even size tolerates no more failures than one member less)"
        )),
    }
}

/// The environment variable that runs the test tiers' databases as Raft clusters.
const TIER_MEMBERS_ENV: &str = "STACKNET_DB_CLUSTER";

/// Members of each database the test tiers start: `STACKNET_DB_CLUSTER` (1 when unset).
pub fn tier_members() -> std::result::Result<usize, String> {
    match std::env::var(TIER_MEMBERS_ENV) {
        Err(_) => Ok(1),
        Ok(v) => members(&v).map_err(|e| format!("{TIER_MEMBERS_ENV}={e}")),
    }
}

impl DbCluster {
    /// `members == 1`: a standalone database `<dir>/<name>.db` served on `<name>.sock`.
    /// More: a Raft cluster whose member `i` keeps `<name>-<i>.db` and serves `<name>-<i>.sock`;
    /// returns once every member has joined and one of them leads.
    pub fn start(dir: &Path, name: &str, schema: &str, database: &str, members: usize) -> Result<DbCluster> {
        let members = members.max(1);
        if members == 1 {
            let server = DbServer::start(dir, name, schema)?;
            return Ok(DbCluster { database: database.into(), members: vec![server], frozen: vec![false] });
        }
        let mut ports = Vec::new();
        for _ in 0..members {
            ports.push(crate::free_tcp_port()?);
        }
        let raft = |i: usize| format!("tcp:127.0.0.1:{}", ports[i]);
        let file = |i: usize| dir.join(format!("{name}-{i}.db")).to_string_lossy().into_owned();
        let mut servers = Vec::new();
        for i in 0..members {
            if !Path::new(&file(i)).exists() {
                if i == 0 {
                    run("ovsdb-tool", &["create-cluster", &file(0), schema, &raft(0)])?;
                } else {
                    run("ovsdb-tool", &["join-cluster", &file(i), database, &raft(i), &raft(0)])?;
                }
            }
            servers.push(DbServer::start(dir, &format!("{name}-{i}"), schema)?);
        }
        let cluster = DbCluster { database: database.into(), frozen: vec![false; members], members: servers };
        cluster.wait_joined()?;
        Ok(cluster)
    }

    /// The database's name (`OVN_Northbound`, ...).
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Every member's `unix:` remote, comma-separated (OVN's `--db` and `ovn-remote` form).
    pub fn remote(&self) -> String {
        self.members.iter().map(DbServer::remote).collect::<Vec<_>>().join(",")
    }

    /// The first member's socket (the only one of a standalone database).
    pub fn socket(&self) -> &Path {
        self.members[0].socket()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn is_clustered(&self) -> bool {
        self.members.len() > 1
    }

    pub fn member(&self, i: usize) -> &DbServer {
        &self.members[i]
    }

    /// The first member's PID.
    pub fn pid(&self) -> Option<u32> {
        self.members[0].pid()
    }

    /// Every running member's PID.
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().filter_map(DbServer::pid).collect()
    }

    /// `ovsdb-server <database>` (with `member <i>` in a cluster) and its PID, for each running
    /// member.
    pub fn daemons(&self) -> Vec<(String, u32)> {
        let clustered = self.is_clustered();
        (self.members.iter().enumerate())
            .filter_map(|(i, m)| {
                let name = if clustered {
                    format!("ovsdb-server {} member {i}", self.database)
                } else {
                    format!("ovsdb-server {}", self.database)
                };
                m.pid().map(|p| (name, p))
            })
            .collect()
    }

    /// Kills every member (SIGKILL, by PID); the files stay.
    pub fn kill(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }

    /// Starts every member again on its file and socket.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        for m in &mut self.members {
            m.restart()?;
        }
        if self.is_clustered() { self.wait_joined() } else { Ok(()) }
    }

    /// Whether every member runs.
    pub fn is_running(&mut self) -> bool {
        self.members.iter_mut().all(DbServer::is_running)
    }

    /// Leaves every member running after this value is dropped.
    pub fn detach(&mut self) {
        self.members.iter_mut().for_each(DbServer::detach);
    }

    /// Member `i` killed (SIGKILL); its file stays for [`DbCluster::restart_member`].
    pub fn kill_member(&mut self, i: usize) {
        if self.frozen[i] {
            self.thaw(i);
        }
        self.members[i].kill();
    }

    /// Member `i` started again on its file: it rejoins and catches up.
    pub fn restart_member(&mut self, i: usize) -> Result<()> {
        self.kill_member(i);
        self.members[i].restart()
    }

    /// Member `i` stopped (SIGSTOP): its sockets stay open but nothing answers.
    pub fn freeze(&mut self, i: usize) -> Result<()> {
        self.signal(i, Signal::SIGSTOP)?;
        self.frozen[i] = true;
        Ok(())
    }

    /// Member `i` continued (SIGCONT) after [`DbCluster::freeze`].
    pub fn thaw(&mut self, i: usize) {
        if self.signal(i, Signal::SIGCONT).is_ok() {
            self.frozen[i] = false;
        }
    }

    fn signal(&self, i: usize, signal: Signal) -> Result<()> {
        let pid = self.members[i].pid().ok_or_else(|| Error::Io {
            what: format!("{} member {i}", self.database),
            message: "not running".into(),
        })?;
        kill(Pid::from_raw(pid as i32), signal).map_err(|e| Error::Io {
            what: format!("{signal} to {} member {i}", self.database),
            message: e.to_string(),
        })
    }

    /// What member `i` says of itself; `None` when it is stopped, frozen or does not answer.
    pub fn status(&self, i: usize) -> Option<MemberStatus> {
        if self.frozen[i] || self.members[i].pid().is_none() {
            return None;
        }
        let ctl = self.members[i].ctl();
        let out =
            run("ovs-appctl", &["--timeout=2", "-t", &ctl.to_string_lossy(), "cluster/status", &self.database]).ok()?;
        parse_status(&out)
    }

    /// The member that leads now (among those that answer), if any.
    pub fn leader(&self) -> Option<usize> {
        (0..self.members.len()).find(|&i| self.status(i).is_some_and(|s| s.role == "leader"))
    }

    /// Waits (with a deadline) until a member other than `not` leads, and returns it.
    pub fn wait_leader(&self, not: Option<usize>) -> Result<usize> {
        self.poll(&format!("a leader of {}", self.database), || self.leader().filter(|&l| Some(l) != not))
    }

    fn wait_joined(&self) -> Result<()> {
        self.poll(&format!("the {} cluster", self.database), || {
            let joined = (0..self.members.len()).all(|i| self.status(i).is_some_and(|s| s.status == "cluster member"));
            (joined && self.leader().is_some()).then_some(())
        })
    }

    /// `found` polled until it finds something, within [`ELECTION`].
    fn poll<T>(&self, what: &str, mut found: impl FnMut() -> Option<T>) -> Result<T> {
        let start = Instant::now();
        loop {
            if let Some(t) = found() {
                return Ok(t);
            }
            if start.elapsed() > ELECTION {
                return Err(Error::NotReady {
                    what: what.into(),
                    seconds: ELECTION.as_secs(),
                    log: self.members[0].log(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The role, term and status lines of `ovs-appctl cluster/status`.
fn parse_status(text: &str) -> Option<MemberStatus> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name).and_then(|r| r.strip_prefix(':')).map(|v| v.trim().to_string()))
    };
    Some(MemberStatus {
        role: field("Role")?,
        term: field("Term")?.parse().ok()?,
        status: field("Status").unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_one_three_or_five() {
        assert_eq!(members("3"), Ok(3));
        assert_eq!(members(" 5 "), Ok(5));
        for bad in ["0", "2", "4", "7", "three", ""] {
            let e = members(bad).unwrap_err();
            assert!(e.starts_with(&format!("{bad}: 1 (standalone), 3 or 5")), "{e}");
        }
    }

    #[test]
    fn status_lines() {
        let text = "8f0e\nName: OVN_Northbound\nCluster ID: 1a2b (1a2b-...)\nServer ID: 8f0e (8f0e-...)\n\
                    Address: tcp:127.0.0.1:40001\nStatus: cluster member\nRole: leader\nTerm: 3\nLeader: self\n";
        assert_eq!(
            parse_status(text),
            Some(MemberStatus { role: "leader".into(), term: 3, status: "cluster member".into() })
        );
        assert_eq!(parse_status("nothing"), None);
    }

    #[test]
    fn three_members_elect_a_new_leader_when_theirs_dies_or_freezes() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = DbCluster::start(dir.path(), "nb", "/usr/share/ovn/ovn-nb.ovsschema", "OVN_Northbound", 3).unwrap();
        assert_eq!(c.remote().split(',').count(), 3);
        let first = c.wait_leader(None).unwrap();
        c.freeze(first).unwrap();
        let second = c.wait_leader(Some(first)).unwrap();
        c.thaw(first);
        c.kill_member(second);
        let third = c.wait_leader(Some(second)).unwrap();
        assert_ne!(third, second);
        c.restart_member(second).unwrap();
        c.restart().unwrap();
        assert!(c.is_running());
    }
}
