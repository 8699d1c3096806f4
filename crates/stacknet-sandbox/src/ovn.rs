//! NB / SB ovsdb-servers and ovn-northd.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::DbCluster;
use crate::{Error, Result};

const NB_SCHEMA: &str = "/usr/share/ovn/ovn-nb.ovsschema";
const SB_SCHEMA: &str = "/usr/share/ovn/ovn-sb.ovsschema";
const NB_DATABASE: &str = "OVN_Northbound";
const SB_DATABASE: &str = "OVN_Southbound";
const READY: Duration = Duration::from_secs(15);

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |e| Error::Io { what, message: e.to_string() }
}

pub(crate) fn missing(program: &str, e: &std::io::Error) -> Option<Error> {
    (e.kind() == std::io::ErrorKind::NotFound).then(|| Error::Missing {
        program: program.into(),
        hint: format!("apt-get install -y {}", crate::OVN_PACKAGES),
    })
}

/// A short stable tag for a path (to name things unique to one sandbox).
pub(crate) fn hash_path(p: &Path) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in p.as_os_str().as_encoded_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// Runs a program to completion; a non-zero exit is an error carrying its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).stdin(Stdio::null()).output().map_err(|e| {
        missing(program, &e).unwrap_or_else(|| Error::Io { what: program.into(), message: e.to_string() })
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            program: program.into(),
            args: args.join(" "),
            status: out.status.code().map_or("signal".into(), |c| c.to_string()),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits for `ready` with a deadline, polling.
pub(crate) fn wait_for(what: &str, log: &Path, mut ready: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    while start.elapsed() < READY {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    Err(Error::NotReady { what: what.into(), seconds: READY.as_secs(), log: log.to_path_buf() })
}

/// The PEM files of an ovsdb-server serving `pssl:` ([`DbServer::start_ssl`]).
#[derive(Debug, Clone, Copy)]
pub struct ServerTls<'a> {
    pub private_key: &'a Path,
    pub certificate: &'a Path,
    pub ca_cert: &'a Path,
}

/// One ovsdb-server process serving one database file on a unix socket.
#[derive(Debug)]
pub struct DbServer {
    name: String,
    dir: PathBuf,
    db: PathBuf,
    sock: PathBuf,
    child: Option<Child>,
    /// Extra `--remote` options (e.g. `ptcp:PORT:127.0.0.1`, `pssl:...`).
    extra_remotes: Vec<String>,
    extra_args: Vec<String>,
}

impl DbServer {
    /// Creates `<dir>/<name>.db` from `schema` (if absent) and serves it.
    pub fn start(dir: &Path, name: &str, schema: &str) -> Result<DbServer> {
        DbServer::start_with(dir, name, schema, Vec::new(), Vec::new())
    }

    /// Like [`DbServer::start`] with extra `--remote`s and other ovsdb-server arguments.
    pub fn start_with(
        dir: &Path,
        name: &str,
        schema: &str,
        remotes: Vec<String>,
        args: Vec<String>,
    ) -> Result<DbServer> {
        let db = dir.join(format!("{name}.db"));
        if !db.exists() {
            run("ovsdb-tool", &["create", &db.to_string_lossy(), schema])?;
        }
        let mut s = DbServer {
            name: name.into(),
            dir: dir.into(),
            db,
            sock: dir.join(format!("{name}.sock")),
            child: None,
            extra_remotes: remotes,
            extra_args: args,
        };
        s.spawn()?;
        Ok(s)
    }

    /// Like [`DbServer::start`], also serving `pssl:<port>:127.0.0.1` with mutual TLS: it
    /// presents `tls`'s certificate and accepts clients whose certificates its CA signed.
    pub fn start_ssl(dir: &Path, name: &str, schema: &str, port: u16, tls: ServerTls<'_>) -> Result<DbServer> {
        DbServer::start_with(
            dir,
            name,
            schema,
            vec![format!("pssl:{port}:127.0.0.1")],
            vec![
                format!("--private-key={}", tls.private_key.display()),
                format!("--certificate={}", tls.certificate.display()),
                format!("--ca-cert={}", tls.ca_cert.display()),
            ],
        )
    }

    fn spawn(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(&self.sock);
        let log = self.log();
        let mut cmd = Command::new("ovsdb-server");
        cmd.arg(&self.db)
            .arg(format!("--remote=punix:{}", self.sock.display()))
            .arg(format!("--unixctl={}", self.ctl().display()))
            .arg(format!("--log-file={}", log.display()))
            .arg("--no-chdir")
            .arg("-vconsole:off");
        for r in &self.extra_remotes {
            cmd.arg(format!("--remote={r}"));
        }
        cmd.args(&self.extra_args);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| missing("ovsdb-server", &e).unwrap_or_else(|| io("ovsdb-server")(e)))?;
        self.child = Some(child);
        let sock = self.sock.clone();
        wait_for(&format!("ovsdb-server {}", self.name), &log, || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        })
    }

    /// `unix:<socket>`.
    pub fn remote(&self) -> String {
        format!("unix:{}", self.sock.display())
    }

    pub fn socket(&self) -> &Path {
        &self.sock
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.name))
    }

    /// The unixctl socket (`ovs-appctl -t`).
    pub fn ctl(&self) -> PathBuf {
        self.dir.join(format!("{}.ctl", self.name))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL, by PID) and reaps it; the database file stays.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same file and socket.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Forgets the process: it keeps running after this value is dropped.
    pub fn detach(&mut self) {
        self.child.take();
    }
}

impl Drop for DbServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What ovn-trace decided for one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceVerdict {
    pub delivered: bool,
    /// ovn-trace's `--minimal` output, for messages.
    pub output: String,
}

/// NB (+ SB and ovn-northd) in a temporary directory, removed on drop.
#[derive(Debug)]
pub struct Ovn {
    pub nb: DbCluster,
    pub sb: Option<DbCluster>,
    northd: Option<Child>,
    // Declared last: dropped after the daemons are stopped.
    dir: Workdir,
}

/// Where daemons keep their files: a temporary directory removed afterwards, or one given by
/// the user that stays.
#[derive(Debug)]
pub enum Workdir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl Workdir {
    pub fn temp() -> Result<Workdir> {
        tempfile::Builder::new().prefix("stacknet-ovn-").tempdir().map(Workdir::Temp).map_err(io("temporary directory"))
    }

    pub fn path(&self) -> &Path {
        match self {
            Workdir::Temp(t) => t.path(),
            Workdir::Kept(p) => p,
        }
    }
}

impl Ovn {
    /// A Northbound database alone.
    pub fn nb_only() -> Result<Ovn> {
        let dir = Workdir::temp()?;
        let nb = DbCluster::start(dir.path(), "nb", NB_SCHEMA, NB_DATABASE, 1)?;
        Ok(Ovn { nb, sb: None, northd: None, dir })
    }

    /// A Northbound database alone, as a Raft cluster of `members`.
    pub fn nb_cluster(members: usize) -> Result<Ovn> {
        let dir = Workdir::temp()?;
        let nb = DbCluster::start(dir.path(), "nb", NB_SCHEMA, NB_DATABASE, members)?;
        Ok(Ovn { nb, sb: None, northd: None, dir })
    }

    /// Northbound and Southbound databases with ovn-northd translating between them.
    pub fn with_northd() -> Result<Ovn> {
        Ovn::with_northd_in(Workdir::temp()?)
    }

    /// Like [`Ovn::with_northd`], in `dir`.
    pub fn with_northd_in(dir: Workdir) -> Result<Ovn> {
        Ovn::clustered_in(dir, 1)
    }

    /// Like [`Ovn::with_northd_in`], NB and SB each a Raft cluster of `members` (1: standalone).
    pub fn clustered_in(dir: Workdir, members: usize) -> Result<Ovn> {
        let nb = DbCluster::start(dir.path(), "nb", NB_SCHEMA, NB_DATABASE, members)?;
        let sb = DbCluster::start(dir.path(), "sb", SB_SCHEMA, SB_DATABASE, members)?;
        let log = dir.path().join("northd.log");
        let northd = Command::new("ovn-northd")
            .arg(format!("--ovnnb-db={}", nb.remote()))
            .arg(format!("--ovnsb-db={}", sb.remote()))
            .arg(format!("--unixctl={}", dir.path().join("northd.ctl").display()))
            .arg(format!("--log-file={}", log.display()))
            .arg("--no-chdir")
            .arg("-vconsole:off")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| missing("ovn-northd", &e).unwrap_or_else(|| io("ovn-northd")(e)))?;
        let ovn = Ovn { nb, sb: Some(sb), northd: Some(northd), dir };
        ovn.sync_sb()?;
        Ok(ovn)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The Southbound remote (`unix:...`), for chassis to connect to.
    pub fn sb_remote(&self) -> Option<String> {
        self.sb.as_ref().map(DbCluster::remote)
    }

    /// Runs `ovn-sbctl --db=<sb>` with `args`.
    pub fn sbctl(&self, args: &[&str]) -> Result<String> {
        let sb = self
            .sb_remote()
            .ok_or_else(|| Error::Io { what: "ovn-sbctl".into(), message: "no Southbound database".into() })?;
        let db = format!("--db={sb}");
        let mut all = vec![db.as_str(), "--timeout=20"];
        all.extend_from_slice(args);
        run("ovn-sbctl", &all)
    }

    /// The daemons and their PIDs, in the order to stop them.
    pub fn daemons(&self) -> Vec<(String, u32)> {
        let mut d = Vec::new();
        d.extend(self.northd.as_ref().map(|c| ("ovn-northd".to_string(), c.id())));
        d.extend(self.sb.iter().flat_map(DbCluster::daemons));
        d.extend(self.nb.daemons());
        d
    }

    /// PIDs of every daemon (for a sandbox that outlives its starter).
    pub fn pids(&self) -> Vec<u32> {
        let mut p: Vec<u32> = self.northd.iter().map(Child::id).collect();
        p.extend(self.sb.iter().flat_map(DbCluster::pids));
        p.extend(self.nb.pids());
        p
    }

    /// Leaves the daemons running and the directory in place when this value is dropped
    /// (`stacknet sandbox up`); `stacknet sandbox down` stops them by PID.
    pub fn detach(mut self) -> PathBuf {
        let dir = match std::mem::replace(&mut self.dir, Workdir::Kept(PathBuf::new())) {
            Workdir::Temp(t) => t.keep(),
            Workdir::Kept(p) => p,
        };
        self.northd.take();
        if let Some(sb) = self.sb.as_mut() {
            sb.detach();
        }
        self.nb.detach();
        dir
    }

    /// Runs `ovn-nbctl --db=<nb>` with `args`.
    pub fn nbctl(&self, args: &[&str]) -> Result<String> {
        let db = format!("--db={}", self.nb.remote());
        let mut all = vec![db.as_str(), "--timeout=20"];
        all.extend_from_slice(args);
        run("ovn-nbctl", &all)
    }

    /// Waits until ovn-northd has brought the Southbound database up to date.
    pub fn sync_sb(&self) -> Result<()> {
        self.nbctl(&["--wait=sb", "sync"]).map(drop)
    }

    /// Traces one microflow on `datapath` through the Southbound logical flows; `ct_stages`
    /// `--ct=new` options, `lb_dst` for a VIP's chosen backend. Delivered iff the output
    /// reaches `output("<dst_port>")`.
    pub fn trace(
        &self,
        datapath: &str,
        microflow: &str,
        dst_port: &str,
        ct_stages: usize,
        lb_dst: Option<&str>,
    ) -> Result<TraceVerdict> {
        let sb = self
            .sb
            .as_ref()
            .ok_or_else(|| Error::Io { what: "ovn-trace".into(), message: "no Southbound database".into() })?;
        let db = format!("--db={}", sb.remote());
        let mut args = vec![db.as_str(), "--minimal"];
        args.extend(std::iter::repeat_n("--ct=new", ct_stages));
        let lb;
        if let Some(l) = lb_dst {
            lb = format!("--lb-dst={l}");
            args.push(&lb);
        }
        args.push(datapath);
        args.push(microflow);
        let output = run("ovn-trace", &args)?;
        let delivered = output.contains(&format!("output(\"{dst_port}\")"));
        Ok(TraceVerdict { delivered, output })
    }
}

impl Drop for Ovn {
    fn drop(&mut self) {
        if let Some(mut c) = self.northd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(sb) = self.sb.as_mut() {
            sb.kill();
        }
        self.nb.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn northbound_alone_starts_and_stops_by_pid() {
        let mut ovn = Ovn::nb_only().unwrap();
        assert!(ovn.nb.is_running());
        ovn.nbctl(&["ls-add", "s1"]).unwrap();
        assert!(ovn.nbctl(&["ls-list"]).unwrap().trim().ends_with("(s1)"));
        let dir = ovn.dir().to_path_buf();
        ovn.nb.restart().unwrap();
        assert!(ovn.nbctl(&["ls-list"]).unwrap().contains("(s1)"), "data survives a restart");
        drop(ovn);
        assert!(!dir.exists(), "the directory is removed");
    }

    #[test]
    fn northd_and_trace() {
        northd_translates_and_trace_reads(&Ovn::with_northd().unwrap());
    }

    #[test]
    fn clustered_northd_and_trace() {
        let ovn = Ovn::clustered_in(Workdir::temp().unwrap(), 3).unwrap();
        assert!(ovn.nb.is_clustered() && ovn.sb.as_ref().unwrap().is_clustered());
        assert_eq!(ovn.daemons().len(), 7, "northd and three members of each database");
        northd_translates_and_trace_reads(&ovn);
    }

    fn northd_translates_and_trace_reads(ovn: &Ovn) {
        ovn.nbctl(&[
            "ls-add",
            "s",
            "--",
            "lsp-add",
            "s",
            "a",
            "--",
            "lsp-set-addresses",
            "a",
            "0a:58:0a:00:00:01 10.0.0.1",
            "--",
            "lsp-add",
            "s",
            "b",
            "--",
            "lsp-set-addresses",
            "b",
            "0a:58:0a:00:00:02 10.0.0.2",
        ])
        .unwrap();
        ovn.nbctl(&[
            "pg-add",
            "pg",
            "b",
            "--",
            "--type=port-group",
            "acl-add",
            "pg",
            "to-lport",
            "1000",
            "outport == @pg && tcp.dst == 81",
            "drop",
        ])
        .unwrap();
        ovn.sync_sb().unwrap();
        let flow = |port: u16| {
            format!(
                "inport == \"a\" && eth.src == 0a:58:0a:00:00:01 && eth.dst == 0a:58:0a:00:00:02 && ip4.src == 10.0.0.1 && ip4.dst == 10.0.0.2 && ip.ttl == 64 && tcp && tcp.src == 40000 && tcp.dst == {port}"
            )
        };
        assert!(ovn.trace("s", &flow(80), "b", 2, None).unwrap().delivered);
        assert!(!ovn.trace("s", &flow(81), "b", 2, None).unwrap().delivered);
    }
}
