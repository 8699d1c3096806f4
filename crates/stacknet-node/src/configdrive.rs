//! Where the agent gets Nova's `network_data.json` (see [`crate::netdata`]): the config drive,
//! an ISO9660 volume labelled `config-2`, read here without mounting it, or the metadata
//! service over plain HTTP.
//!
//! The ISO9660 reader is minimal and read-only: volume descriptors from sector 16, the Joliet
//! tree when there is one (Nova's `genisoimage -J -r` makes one), else Rock Ridge `NM` names,
//! else primary names (`;1` stripped, any case). Every offset and length is checked and the
//! path depth, directory sizes and records read are bounded: a corrupt image is an error.
//! Not handled: Rock Ridge `CE` continuation areas (long names), multi-extent files, and
//! Nova's `vfat` config drives (reported as not ISO9660).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::netdata::{self, NetDataError, NetworkData};

/// The config drive's volume label.
pub const LABEL: &str = "config-2";
/// The file on the config drive.
pub const NETWORK_DATA_PATH: &str = "openstack/latest/network_data.json";
/// The metadata service's copy.
pub const DEFAULT_METADATA_URL: &str = "http://169.254.169.254/openstack/latest/network_data.json";
/// Connect, send and receive, all told.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

const SECTOR: u64 = 2048;
const MAX_DESCRIPTORS: u64 = 64;
const MAX_DEPTH: usize = 32;
const MAX_RECORDS: usize = 1 << 16;
const MAX_DIR: u32 = 1 << 20;
const MAX_FILE: u32 = 16 << 20;
const MAX_DEVICES: usize = 1024;
const MAX_HEAD: usize = 64 << 10;

/// Where to read `network_data.json` from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A config-drive device or image file.
    ConfigDrive(PathBuf),
    /// The full URL of `network_data.json` (http only), e.g. [`DEFAULT_METADATA_URL`].
    MetadataUrl(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigDriveError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not an ISO9660 volume: {what}", path.display())]
    NotIso { path: PathBuf, what: String },
    #[error("{}: corrupt ISO9660 image: {what}", path.display())]
    Corrupt { path: PathBuf, what: String },
    #[error("{}: the volume label is {label:?}, not \"config-2\"", path.display())]
    WrongLabel { path: PathBuf, label: String },
    #[error("{}: no file {file} ({why})", path.display())]
    NoFile { path: PathBuf, file: String, why: String },
    #[error("GET {url}: {what}")]
    Http { url: String, what: String },
    #[error("GET {url}: HTTP {status} {reason}")]
    HttpStatus { url: String, status: u16, reason: String },
    #[error("{from}: {source}")]
    NetData { from: String, source: NetDataError },
}

/// Reads and parses `network_data.json` from a config drive or the metadata service.
pub fn read_network_data(source: &Source) -> Result<NetworkData, ConfigDriveError> {
    let (from, bytes) = match source {
        Source::ConfigDrive(path) => {
            let iso = IsoImage::open(path)?;
            if iso.volume_id() != LABEL {
                return Err(ConfigDriveError::WrongLabel { path: path.clone(), label: iso.volume_id().to_owned() });
            }
            (format!("{}:{NETWORK_DATA_PATH}", path.display()), iso.read_file(NETWORK_DATA_PATH)?)
        }
        Source::MetadataUrl(url) => (url.clone(), http_get(url, HTTP_TIMEOUT)?),
    };
    let text = String::from_utf8(bytes).map_err(|_| ConfigDriveError::NetData {
        from: from.clone(),
        source: NetDataError::Json("not UTF-8".into()),
    })?;
    netdata::parse(&text).map_err(|source| ConfigDriveError::NetData { from, source })
}

/// The config drive on this machine: `/dev/disk/by-label/config-2`, else the first block
/// device whose ISO9660 volume label is `config-2`.
pub fn find_config_drive() -> Option<PathBuf> {
    find_config_drive_in(Path::new("/dev/disk/by-label"), Path::new("/sys/class/block"), Path::new("/dev"))
}

/// [`find_config_drive`] with its roots given: `by_label/config-2` if it exists, else each
/// `dev/<name>` for the names in `sys_block` (sorted), opened read-only and its label checked.
pub fn find_config_drive_in(by_label: &Path, sys_block: &Path, dev: &Path) -> Option<PathBuf> {
    let labelled = by_label.join(LABEL);
    if labelled.exists() {
        return Some(labelled);
    }
    let mut names: Vec<_> = std::fs::read_dir(sys_block).ok()?.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    names.sort();
    names
        .into_iter()
        .take(MAX_DEVICES)
        .map(|name| dev.join(name))
        .find(|p| IsoImage::open(p).is_ok_and(|iso| iso.volume_id() == LABEL))
}

/// A directory or file: where it starts (in logical blocks) and how many bytes it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extent {
    lba: u32,
    size: u32,
}

/// A read-only ISO9660 volume (a device or an image file).
#[derive(Debug)]
pub struct IsoImage {
    path: PathBuf,
    file: File,
    block: u64,
    volume_id: String,
    root: Extent,
    joliet_root: Option<Extent>,
}

/// What a volume descriptor says.
#[derive(Debug, PartialEq, Eq)]
enum Descriptor {
    Primary { volume_id: String, block: u64, root: Extent },
    Joliet { root: Extent },
    End,
    Other,
}

/// Parses one 2048-byte volume descriptor; `Err` if it is not one.
fn parse_descriptor(d: &[u8]) -> Result<Descriptor, String> {
    if d.len() < SECTOR as usize || &d[1..6] != b"CD001" {
        return Err("no CD001 signature".into());
    }
    let root = |d: &[u8]| -> Result<Extent, String> {
        let rec = parse_record(&d[156..190])?.ok_or("no root directory record")?;
        if !rec.is_dir {
            return Err("the root directory record is not a directory".into());
        }
        Ok(rec.extent)
    };
    match d[0] {
        1 => {
            let block = u64::from(u16::from_le_bytes([d[128], d[129]]));
            if ![512, 1024, 2048].contains(&block) {
                return Err(format!("logical block size {block}"));
            }
            let volume_id = String::from_utf8_lossy(&d[40..72]).trim_end_matches([' ', '\0']).to_owned();
            Ok(Descriptor::Primary { volume_id, block, root: root(d)? })
        }
        2 if matches!(&d[88..91], b"%/@" | b"%/C" | b"%/E") => Ok(Descriptor::Joliet { root: root(d)? }),
        255 => Ok(Descriptor::End),
        _ => Ok(Descriptor::Other),
    }
}

/// One directory record, name decoded later (it depends on the tree).
#[derive(Debug, PartialEq, Eq)]
struct Record<'a> {
    len: usize,
    extent: Extent,
    is_dir: bool,
    multi_extent: bool,
    name: &'a [u8],
    system_use: &'a [u8],
}

/// Parses the directory record at the start of `b`: `Ok(None)` for a zero length byte (the
/// rest of the block is padding).
fn parse_record(b: &[u8]) -> Result<Option<Record<'_>>, String> {
    let Some(&len) = b.first() else { return Ok(None) };
    let len = usize::from(len);
    if len == 0 {
        return Ok(None);
    }
    if len < 34 || len > b.len() {
        return Err(format!("a directory record of {len} bytes"));
    }
    let name_len = usize::from(b[32]);
    let name_end = 33 + name_len;
    if name_end > len {
        return Err(format!("a name of {name_len} bytes in a record of {len}"));
    }
    let su_start = (name_end + (name_len + 1) % 2).min(len);
    let u32le = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    Ok(Some(Record {
        len,
        extent: Extent { lba: u32le(2), size: u32le(10) },
        is_dir: b[25] & 0x02 != 0,
        multi_extent: b[25] & 0x80 != 0,
        name: &b[33..name_end],
        system_use: &b[su_start..len],
    }))
}

/// The Rock Ridge `NM` name in a record's system use area, if any (`.`/`..` give `None`).
fn rock_ridge_name(mut su: &[u8]) -> Option<String> {
    let mut name = Vec::new();
    let mut found = false;
    while su.len() >= 4 {
        let len = usize::from(su[2]);
        if len < 4 || len > su.len() {
            break;
        }
        match &su[..2] {
            b"NM" if len >= 5 => {
                let flags = su[4];
                if flags & 0x06 != 0 {
                    return None;
                }
                found = true;
                name.extend_from_slice(&su[5..len]);
                if flags & 0x01 == 0 {
                    break;
                }
            }
            b"ST" => break,
            _ => {}
        }
        su = &su[len..];
    }
    found.then(|| String::from_utf8_lossy(&name).into_owned())
}

/// Strips a `;1` version and, for primary names, the `.` left by a file without extension.
fn strip_version(name: &str) -> &str {
    let name = name.rsplit_once(';').map_or(name, |(n, _)| n);
    name.strip_suffix('.').filter(|n| !n.is_empty()).unwrap_or(name)
}

/// A record's name in its tree and whether it compares ignoring case (primary names only).
fn record_name(rec: &Record<'_>, joliet: bool) -> Option<(String, bool)> {
    if matches!(rec.name, [0] | [1]) {
        return None;
    }
    if joliet {
        let units = rec.name.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]]));
        let name: String = char::decode_utf16(units).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)).collect();
        return Some((strip_version(&name).to_owned(), false));
    }
    if let Some(name) = rock_ridge_name(rec.system_use) {
        return Some((name, false));
    }
    Some((strip_version(&String::from_utf8_lossy(rec.name)).to_owned(), true))
}

/// Finds `want` in a directory's bytes; `budget` counts the records read in the whole lookup.
fn find_in_dir(
    dir: &[u8],
    block: usize,
    joliet: bool,
    want: &str,
    budget: &mut usize,
) -> Result<Option<Entry>, String> {
    let mut pos = 0;
    while pos < dir.len() {
        let Some(rec) = parse_record(&dir[pos..])? else {
            pos = (pos / block + 1) * block;
            continue;
        };
        *budget = budget.checked_sub(1).ok_or("too many directory records")?;
        pos += rec.len;
        let Some((name, any_case)) = record_name(&rec, joliet) else { continue };
        if name == want || (any_case && name.eq_ignore_ascii_case(want)) {
            if rec.multi_extent {
                return Err(format!("{want} is a multi-extent file"));
            }
            return Ok(Some(Entry { extent: rec.extent, is_dir: rec.is_dir }));
        }
    }
    Ok(None)
}

/// A directory entry found by name.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    extent: Extent,
    is_dir: bool,
}

impl IsoImage {
    /// Opens a device or image read-only and reads its volume descriptors.
    pub fn open(path: &Path) -> Result<IsoImage, ConfigDriveError> {
        let file = File::open(path).map_err(|source| ConfigDriveError::Io { path: path.to_owned(), source })?;
        let mut iso = IsoImage {
            path: path.to_owned(),
            file,
            block: SECTOR,
            volume_id: String::new(),
            root: Extent { lba: 0, size: 0 },
            joliet_root: None,
        };
        let mut primary = false;
        let mut d = vec![0; SECTOR as usize];
        for i in 0..MAX_DESCRIPTORS {
            if let Err(e) = iso.read_exact_at(&mut d, (16 + i) * SECTOR) {
                return Err(if i == 0 { iso.not_iso("too short") } else { e });
            }
            match parse_descriptor(&d) {
                Err(what) if i == 0 => return Err(iso.not_iso(&what)),
                Err(what) => return Err(iso.corrupt(format!("volume descriptor {i}: {what}"))),
                Ok(Descriptor::Primary { volume_id, block, root }) if !primary => {
                    primary = true;
                    (iso.volume_id, iso.block, iso.root) = (volume_id, block, root);
                }
                Ok(Descriptor::Joliet { root }) if iso.joliet_root.is_none() => iso.joliet_root = Some(root),
                Ok(Descriptor::End) => break,
                Ok(_) => {}
            }
        }
        if !primary {
            return Err(iso.not_iso("no primary volume descriptor"));
        }
        Ok(iso)
    }

    /// The volume identifier (label), trailing spaces trimmed.
    pub fn volume_id(&self) -> &str {
        &self.volume_id
    }

    /// Whether a Joliet tree is there (and used for names).
    pub fn has_joliet(&self) -> bool {
        self.joliet_root.is_some()
    }

    /// Reads the file at `file` (`/`-separated, from the root).
    pub fn read_file(&self, file: &str) -> Result<Vec<u8>, ConfigDriveError> {
        let no_file =
            |why: &str| ConfigDriveError::NoFile { path: self.path.clone(), file: file.to_owned(), why: why.into() };
        let parts: Vec<&str> = file.split('/').filter(|p| !p.is_empty()).collect();
        if parts.is_empty() || parts.len() > MAX_DEPTH {
            return Err(no_file("not a file path"));
        }
        let (mut dir, joliet) = match self.joliet_root {
            Some(root) => (root, true),
            None => (self.root, false),
        };
        let mut budget = MAX_RECORDS;
        for (i, part) in parts.iter().enumerate() {
            let data = self.read_extent(dir, MAX_DIR)?;
            let found = find_in_dir(&data, self.block as usize, joliet, part, &mut budget)
                .map_err(|what| self.corrupt(format!("directory at block {}: {what}", dir.lba)))?;
            let last = i + 1 == parts.len();
            match found {
                None => return Err(no_file(&format!("no {part:?}"))),
                Some(e) if last && e.is_dir => return Err(no_file("it is a directory")),
                Some(e) if last => return self.read_extent(e.extent, MAX_FILE),
                Some(e) if !e.is_dir => return Err(no_file(&format!("{part:?} is not a directory"))),
                Some(e) => dir = e.extent,
            }
        }
        Err(no_file("not a file path"))
    }

    fn read_extent(&self, e: Extent, max: u32) -> Result<Vec<u8>, ConfigDriveError> {
        if e.size > max {
            return Err(self.corrupt(format!("an extent of {} bytes at block {} (at most {max})", e.size, e.lba)));
        }
        let mut buf = vec![0; e.size as usize];
        self.read_exact_at(&mut buf, u64::from(e.lba) * self.block)?;
        Ok(buf)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ConfigDriveError> {
        self.file.read_exact_at(buf, offset).map_err(|source| match source.kind() {
            io::ErrorKind::UnexpectedEof => self.corrupt(format!("{} bytes at {offset} lie past the end", buf.len())),
            _ => ConfigDriveError::Io { path: self.path.clone(), source },
        })
    }

    fn corrupt(&self, what: String) -> ConfigDriveError {
        ConfigDriveError::Corrupt { path: self.path.clone(), what }
    }

    fn not_iso(&self, what: &str) -> ConfigDriveError {
        ConfigDriveError::NotIso { path: self.path.clone(), what: what.into() }
    }
}

/// `http://host[:port]/path` → the `host:port` to connect to, the Host header and the path.
fn parse_http_url(url: &str) -> Result<(String, String, String), String> {
    let rest = url
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"))
        .map(|_| &url[7..])
        .ok_or("only http:// URLs are supported")?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    let host_end = if authority.starts_with('[') { authority.find(']').map(|i| i + 1) } else { authority.find(':') };
    let host_end = host_end.unwrap_or(authority.len());
    let (host, port) = authority.split_at(host_end);
    let port = match port.strip_prefix(':') {
        None if port.is_empty() => 80,
        Some(p) => p.parse::<u16>().map_err(|_| format!("bad port {p:?}"))?,
        None => return Err(format!("bad host {authority:?}")),
    };
    if host.is_empty() || host.contains(['@', ' ']) {
        return Err(format!("bad host {host:?}"));
    }
    let host_header = if port == 80 { host.to_owned() } else { format!("{host}:{port}") };
    Ok((format!("{host}:{port}"), host_header, path.to_owned()))
}

/// A complete response: status, reason, body.
#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: u16,
    reason: String,
    body: Vec<u8>,
}

/// Parses what was received so far: `Ok(None)` while more is needed (`eof`: no more comes).
/// Framing by `Content-Length`, `chunked`, or the end of the stream.
fn parse_response(buf: &[u8], eof: bool) -> Result<Option<Response>, String> {
    let Some(head_len) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err("response header too long".into());
        }
        return if eof { Err("connection closed before the response header ended".into()) } else { Ok(None) };
    };
    let head = std::str::from_utf8(&buf[..head_len]).map_err(|_| "response header is not text")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut words = status_line.splitn(3, ' ');
    let (version, status, reason) = (words.next(), words.next(), words.next().unwrap_or_default());
    let status = status.and_then(|s| s.parse::<u16>().ok()).filter(|s| (100..1000).contains(s));
    let status = match (version, status) {
        (Some(v), Some(s)) if v.starts_with("HTTP/1.") => s,
        _ => return Err(format!("bad status line {status_line:?}")),
    };
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| format!("bad Content-Length {value:?}"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = &buf[head_len + 4..];
    let done = |body: Vec<u8>| Ok(Some(Response { status, reason: reason.to_owned(), body }));
    if chunked {
        return match dechunk(body)? {
            Some(b) => done(b),
            None if eof => Err("connection closed inside a chunked body".into()),
            None => Ok(None),
        };
    }
    match length {
        Some(n) if n > MAX_FILE as usize => Err(format!("a body of {n} bytes")),
        Some(n) if body.len() >= n => done(body[..n].to_vec()),
        Some(n) if eof => Err(format!("connection closed after {} of {n} body bytes", body.len())),
        Some(_) => Ok(None),
        None if eof => done(body.to_vec()),
        None => Ok(None),
    }
}

/// Decodes a chunked body: `Ok(None)` until the last (empty) chunk is in.
fn dechunk(mut b: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
        let size_text = std::str::from_utf8(&b[..eol]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| format!("bad chunk size {size_text:?}"))?;
        if size > MAX_FILE as usize || out.len() + size > MAX_FILE as usize {
            return Err("chunked body too large".into());
        }
        let data = eol + 2;
        if size == 0 {
            return Ok(Some(out));
        }
        if b.len() < data + size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&b[data..data + size]);
        b = &b[data + size + 2..];
    }
}

/// A blocking HTTP/1.1 GET; the body of a 200, else an error with the status. `timeout`
/// bounds the whole exchange.
fn http_get(url: &str, timeout: Duration) -> Result<Vec<u8>, ConfigDriveError> {
    let fail = |what: String| ConfigDriveError::Http { url: url.to_owned(), what };
    let (addr, host, path) = parse_http_url(url).map_err(fail)?;
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let addrs: Vec<_> = addr.to_socket_addrs().map_err(|e| fail(format!("resolving {addr}: {e}")))?.collect();
    let mut last = format!("{addr} resolves to no address");
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, left()) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("connecting to {a}: {e}"),
        }
    }
    let mut stream = stream.ok_or_else(|| fail(last))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nUser-Agent: stacknet-node\r\nConnection: close\r\n\r\n"
    );
    stream.set_write_timeout(Some(left())).map_err(|e| fail(e.to_string()))?;
    stream.write_all(request.as_bytes()).map_err(|e| fail(format!("sending: {e}")))?;
    let mut buf = Vec::new();
    let mut chunk = vec![0; 64 << 10];
    let response = loop {
        if Instant::now() >= deadline {
            return Err(fail(format!("no complete response within {timeout:?}")));
        }
        stream.set_read_timeout(Some(left())).map_err(|e| fail(e.to_string()))?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(fail(format!("no complete response within {timeout:?}")));
            }
            Err(e) => return Err(fail(format!("receiving: {e}"))),
        };
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_HEAD + MAX_FILE as usize {
            return Err(fail("response too large".into()));
        }
        if let Some(r) = parse_response(&buf, n == 0).map_err(fail)? {
            break r;
        }
    };
    if response.status != 200 {
        return Err(ConfigDriveError::HttpStatus {
            url: url.to_owned(),
            status: response.status,
            reason: response.reason,
        });
    }
    Ok(response.body)
}

/// The metadata service's HTTP parsers, for the fuzz targets in `fuzz/`: not an API.
#[doc(hidden)]
pub mod fuzzing {
    /// What was received so far read as a response: its status, reason and body once whole.
    pub fn parse_response(buf: &[u8], eof: bool) -> Result<Option<(u16, String, Vec<u8>)>, String> {
        super::parse_response(buf, eof).map(|r| r.map(|r| (r.status, r.reason, r.body)))
    }

    /// A metadata URL: the address to connect to, the Host header and the path.
    pub fn parse_http_url(url: &str) -> Result<(String, String, String), String> {
        super::parse_http_url(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::process::Command;

    const NETWORK_DATA: &str = include_str!("../tests/data/network_data/cloudinit_network_data_vlan.json");
    const META_DATA: &str = r#"{"uuid": "b0fa911b-69d4-4476-bbe2-1c92bff6535c", "hostname": "node-1"}"#;

    /// A config-drive tree like Nova's.
    fn drive_tree(dir: &Path) {
        let latest = dir.join("openstack/latest");
        std::fs::create_dir_all(&latest).unwrap();
        std::fs::write(latest.join("network_data.json"), NETWORK_DATA).unwrap();
        std::fs::write(latest.join("meta_data.json"), META_DATA).unwrap();
        std::fs::write(latest.join("user_data"), "#!/bin/sh\n").unwrap();
        std::fs::create_dir_all(dir.join("conf")).unwrap();
        std::fs::write(dir.join("conf/net.txt"), "short name\n").unwrap();
    }

    /// Runs genisoimage with `flags` on a fresh tree; fails the test if it is not installed.
    fn genisoimage(tmp: &Path, name: &str, flags: &[&str]) -> PathBuf {
        let tree = tmp.join(format!("{name}-tree"));
        drive_tree(&tree);
        let image = tmp.join(format!("{name}.iso"));
        let out =
            Command::new("genisoimage").arg("-o").arg(&image).args(flags).arg(&tree).output().unwrap_or_else(|e| {
                panic!("genisoimage could not run ({e}): install it (apt-get install -y genisoimage; CI installs it)")
            });
        assert!(out.status.success(), "genisoimage failed: {}", String::from_utf8_lossy(&out.stderr));
        image
    }

    /// Nova's own command line (nova/virt/configdrive.py).
    const NOVA_FLAGS: &[&str] = &[
        "-ldots",
        "-allow-lowercase",
        "-allow-multidot",
        "-l",
        "-publisher",
        "OpenStack Compute 31.0.0",
        "-quiet",
        "-J",
        "-r",
        "-V",
        "config-2",
    ];

    #[test]
    fn configdrive_nova_image_joliet() {
        let tmp = tempfile::tempdir().unwrap();
        let image = genisoimage(tmp.path(), "nova", NOVA_FLAGS);
        let iso = IsoImage::open(&image).unwrap();
        assert_eq!(iso.volume_id(), "config-2");
        assert!(iso.has_joliet());
        assert_eq!(iso.read_file("openstack/latest/meta_data.json").unwrap(), META_DATA.as_bytes());
        assert_eq!(iso.read_file("/openstack/latest/user_data").unwrap(), b"#!/bin/sh\n");
        let data = read_network_data(&Source::ConfigDrive(image.clone())).unwrap();
        assert_eq!(data.nic_for_network("a9e2f47c-3c43-4782-94d0-e1eeef1c8c9d").unwrap().vlan, Some(602));
        // Joliet names keep their case.
        let e = iso.read_file("OPENSTACK/latest/meta_data.json").unwrap_err();
        assert!(matches!(e, ConfigDriveError::NoFile { .. }), "{e}");
        let e = iso.read_file("openstack/latest/vendor_data.json").unwrap_err().to_string();
        assert!(e.ends_with("no file openstack/latest/vendor_data.json (no \"vendor_data.json\")"), "{e}");
        assert!(iso.read_file("openstack/latest").unwrap_err().to_string().contains("it is a directory"));
        assert!(iso.read_file("openstack/latest/user_data/x").unwrap_err().to_string().contains("is not a directory"));
    }

    #[test]
    fn configdrive_rock_ridge_only() {
        let tmp = tempfile::tempdir().unwrap();
        let image = genisoimage(tmp.path(), "rr", &["-quiet", "-r", "-V", "config-2"]);
        let iso = IsoImage::open(&image).unwrap();
        assert!(!iso.has_joliet());
        // Without -l the primary names are 8.3; only the Rock Ridge names are whole.
        assert_eq!(iso.read_file("openstack/latest/meta_data.json").unwrap(), META_DATA.as_bytes());
        assert!(read_network_data(&Source::ConfigDrive(image)).is_ok());
    }

    #[test]
    fn configdrive_primary_names_only() {
        let tmp = tempfile::tempdir().unwrap();
        // Nova's flags without -J and -r: long lowercase primary names.
        let flags = ["-ldots", "-allow-lowercase", "-allow-multidot", "-l", "-quiet", "-V", "config-2"];
        let image = genisoimage(tmp.path(), "plain", &flags);
        let iso = IsoImage::open(&image).unwrap();
        assert_eq!(iso.read_file("openstack/latest/network_data.json").unwrap(), NETWORK_DATA.as_bytes());
        assert_eq!(iso.read_file("openstack/latest/user_data").unwrap(), b"#!/bin/sh\n");
        // Plain level 1: upper-case 8.3 names, matched in any case; long names are not there.
        let image = genisoimage(tmp.path(), "level1", &["-quiet", "-V", "config-2"]);
        let iso = IsoImage::open(&image).unwrap();
        assert_eq!(iso.read_file("conf/net.txt").unwrap(), b"short name\n");
        assert_eq!(iso.read_file("CONF/NET.TXT").unwrap(), b"short name\n");
        let e = read_network_data(&Source::ConfigDrive(image)).unwrap_err();
        assert!(matches!(e, ConfigDriveError::NoFile { .. }), "{e}");
    }

    #[test]
    fn configdrive_wrong_label() {
        let tmp = tempfile::tempdir().unwrap();
        let image = genisoimage(tmp.path(), "label", &["-quiet", "-J", "-r", "-V", "cidata"]);
        let e = read_network_data(&Source::ConfigDrive(image)).unwrap_err();
        assert!(e.to_string().ends_with("the volume label is \"cidata\", not \"config-2\""), "{e}");
    }

    #[test]
    fn configdrive_truncated_or_corrupt_images_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let image = genisoimage(tmp.path(), "good", NOVA_FLAGS);
        let good = std::fs::read(&image).unwrap();
        let read = || IsoImage::open(&image)?.read_file(NETWORK_DATA_PATH);
        let file = std::fs::OpenOptions::new().write(true).open(&image).unwrap();
        // Cut anywhere before the end of network_data.json's bytes: an error.
        let data_end =
            good.windows(NETWORK_DATA.len()).position(|w| w == NETWORK_DATA.as_bytes()).unwrap() + NETWORK_DATA.len();
        for len in (0..data_end).step_by(512).rev() {
            file.set_len(len as u64).unwrap();
            assert!(read().is_err(), "truncated to {len}");
        }
        assert!(matches!(read(), Err(ConfigDriveError::NotIso { .. })));
        file.write_all_at(&good, 0).unwrap();
        assert!(read().is_ok());
        // Patch bytes of the descriptors and directories: errors or data, never a panic or a hang.
        let end = (40 * SECTOR as usize).min(good.len());
        for i in (16 * SECTOR as usize..end).step_by(3) {
            for v in [0x00, 0xff, 0x22, good[i] ^ 0x80] {
                file.write_all_at(&[v], i as u64).unwrap();
                let _ = read();
            }
            file.write_all_at(&good[i..i + 1], i as u64).unwrap();
        }
        // Sector 17 (Joliet) made the terminator, so the primary tree is used.
        let pvd = 16 * SECTOR;
        file.write_all_at(&[255], 17 * SECTOR).unwrap();
        // A root directory claiming 4 GiB, then one far past the end.
        file.write_all_at(&u32::MAX.to_le_bytes(), pvd + 166).unwrap();
        let e = read().unwrap_err().to_string();
        assert!(e.contains("corrupt ISO9660 image: an extent of 4294967295 bytes"), "{e}");
        file.write_all_at(&good[pvd as usize + 166..][..4], pvd + 166).unwrap();
        file.write_all_at(&0x00ff_ffffu32.to_le_bytes(), pvd + 158).unwrap();
        let e = read().unwrap_err().to_string();
        assert!(e.contains("past the end"), "{e}");
        assert!(matches!(IsoImage::open(Path::new("/nonexistent")), Err(ConfigDriveError::Io { .. })));
        let zeros = tmp.path().join("zeros");
        std::fs::write(&zeros, [0; 40000]).unwrap();
        assert!(matches!(IsoImage::open(&zeros), Err(ConfigDriveError::NotIso { .. })));
    }

    #[test]
    fn configdrive_parse_record_bounds() {
        assert_eq!(parse_record(&[]), Ok(None));
        assert_eq!(parse_record(&[0; 40]), Ok(None));
        assert!(parse_record(&[10; 40]).is_err());
        let mut r = vec![0u8; 40];
        r[0] = 40;
        r[32] = 10;
        assert!(parse_record(&r[..39]).is_err());
        r[32] = 5;
        let rec = parse_record(&r).unwrap().unwrap();
        // 33 + 5 name bytes, no padding after an odd-length name, 2 bytes of system use.
        assert_eq!((rec.name.len(), rec.system_use.len()), (5, 2));
        r[32] = 6;
        assert_eq!(parse_record(&r).unwrap().unwrap().system_use.len(), 0);
    }

    #[test]
    fn configdrive_names() {
        assert_eq!(strip_version("NETWORK_DATA.JSON;1"), "NETWORK_DATA.JSON");
        assert_eq!(strip_version("user_data.;1"), "user_data");
        assert_eq!(strip_version("openstack"), "openstack");
        assert_eq!(strip_version("."), ".");
        let nm = |flags: u8, name: &[u8]| [&[b'N', b'M', 5 + name.len() as u8, 1, flags][..], name].concat();
        let su = [&b"PX\x05\x01\x00"[..], &nm(1, b"network_"), &nm(0, b"data.json")].concat();
        assert_eq!(rock_ridge_name(&su).as_deref(), Some("network_data.json"));
        assert_eq!(rock_ridge_name(&nm(2, b"")), None);
        assert_eq!(rock_ridge_name(b"NM\x02\x01"), None);
        assert_eq!(rock_ridge_name(b"NM\xff\x01\x00abc"), None);
    }

    #[test]
    fn configdrive_find_by_label_or_scan() {
        let tmp = tempfile::tempdir().unwrap();
        let image = genisoimage(tmp.path(), "nova", NOVA_FLAGS);
        let (by_label, sys, dev) = (tmp.path().join("by-label"), tmp.path().join("sys"), tmp.path().join("dev"));
        for d in [&by_label, &sys, &dev] {
            std::fs::create_dir_all(d).unwrap();
        }
        assert_eq!(find_config_drive_in(&by_label, &sys, &dev), None);
        for name in ["sda", "sr0", "vda"] {
            std::fs::create_dir(sys.join(name)).unwrap();
        }
        std::fs::write(dev.join("sda"), vec![0u8; 64 << 10]).unwrap();
        std::fs::copy(&image, dev.join("sr0")).unwrap();
        std::fs::copy(&image, dev.join("vda")).unwrap();
        assert_eq!(find_config_drive_in(&by_label, &sys, &dev), Some(dev.join("sr0")));
        std::fs::write(by_label.join("config-2"), b"").unwrap();
        assert_eq!(find_config_drive_in(&by_label, &sys, &dev), Some(by_label.join("config-2")));
    }

    /// Serves each of `responses` to one connection, on 127.0.0.1 at a port the OS picks.
    fn serve(responses: Vec<Vec<u8>>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for response in responses {
                let Ok((mut s, _)) = listener.accept() else { return };
                let mut req = Vec::new();
                let mut b = [0; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&b[..n]),
                    }
                }
                assert!(req.starts_with(b"GET /openstack/latest/network_data.json HTTP/1.1\r\n"));
                let _ = s.write_all(&response);
            }
        });
        format!("http://127.0.0.1:{port}/openstack/latest/network_data.json")
    }

    #[test]
    fn configdrive_metadata_url() {
        let ok = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{NETWORK_DATA}", NETWORK_DATA.len());
        let chunked = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{NETWORK_DATA}\r\n0\r\n\r\n",
            NETWORK_DATA.len()
        );
        let to_end = format!("HTTP/1.0 200 OK\r\n\r\n{NETWORK_DATA}");
        let url = serve(vec![
            ok.into(),
            chunked.into(),
            to_end.into(),
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ]);
        for _ in 0..3 {
            let data = read_network_data(&Source::MetadataUrl(url.clone())).unwrap();
            assert_eq!(data.links.len(), 2);
        }
        let e = read_network_data(&Source::MetadataUrl(url.clone())).unwrap_err();
        assert!(matches!(e, ConfigDriveError::HttpStatus { status: 404, .. }), "{e}");
        assert_eq!(e.to_string(), format!("GET {url}: HTTP 404 Not Found"));
    }

    #[test]
    fn configdrive_metadata_url_errors() {
        // A server that accepts and never answers: the timeout ends it.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/x", listener.local_addr().unwrap());
        let e = http_get(&url, Duration::from_millis(200)).unwrap_err().to_string();
        assert!(e.contains("no complete response within"), "{e}");
        drop(listener);
        let short =
            serve(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec(), b"garbage\r\n\r\n".to_vec()]);
        let e = http_get(&short, HTTP_TIMEOUT).unwrap_err().to_string();
        assert!(e.contains("connection closed after 3 of 10 body bytes"), "{e}");
        let e = http_get(&short, HTTP_TIMEOUT).unwrap_err().to_string();
        assert!(e.contains("bad status line"), "{e}");
        let e = read_network_data(&Source::MetadataUrl("https://169.254.169.254/".into())).unwrap_err();
        assert!(e.to_string().contains("only http:// URLs"), "{e}");
    }

    #[test]
    fn configdrive_parse_http_url() {
        let p = |u: &str| parse_http_url(u);
        let s = |a: &str, h: &str, p: &str| Ok((a.to_owned(), h.to_owned(), p.to_owned()));
        assert_eq!(
            p(DEFAULT_METADATA_URL),
            s("169.254.169.254:80", "169.254.169.254", "/openstack/latest/network_data.json")
        );
        assert_eq!(p("HTTP://127.0.0.1:8775"), s("127.0.0.1:8775", "127.0.0.1:8775", "/"));
        assert_eq!(p("http://[fe80::a9fe:a9fe]/a"), s("[fe80::a9fe:a9fe]:80", "[fe80::a9fe:a9fe]", "/a"));
        assert_eq!(p("http://[::1]:81/a"), s("[::1]:81", "[::1]:81", "/a"));
        for bad in
            ["ftp://x/", "http://", "http://:80/", "http://h:x/", "http://h:99999/", "http://u@h/", "http://[::1]x/"]
        {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn configdrive_parse_response_framing() {
        let r = |b: &[u8], eof| parse_response(b, eof);
        assert_eq!(r(b"HTTP/1.1 200 OK\r\nContent-Len", false), Ok(None));
        assert_eq!(r(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nab", false), Ok(None));
        let done = r(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabcdef", false).unwrap().unwrap();
        assert_eq!((done.status, done.reason.as_str(), done.body.as_slice()), (200, "OK", &b"abc"[..]));
        let c = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(r(c, false).unwrap().unwrap().body, b"abcde");
        assert_eq!(r(&c[..c.len() - 8], false), Ok(None));
        assert!(r(&c[..c.len() - 8], true).is_err());
        assert!(r(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", false).is_err());
        assert!(r(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false).is_err());
        assert!(r(b"HTTP/1.1 2000 OK\r\n\r\n", true).is_err());
        assert!(r(&vec![b'a'; MAX_HEAD + 1], false).is_err());
        assert_eq!(
            r(b"HTTP/1.1 500 Internal Server Error\r\n\r\n", true).unwrap().unwrap().reason,
            "Internal Server Error"
        );
    }

    #[test]
    fn configdrive_descriptor() {
        let mut d = vec![0u8; 2048];
        assert!(parse_descriptor(&d).is_err());
        d[1..6].copy_from_slice(b"CD001");
        d[0] = 255;
        assert_eq!(parse_descriptor(&d), Ok(Descriptor::End));
        d[0] = 1;
        assert!(parse_descriptor(&d).unwrap_err().contains("logical block size 0"));
        d[128..130].copy_from_slice(&2048u16.to_le_bytes());
        assert!(parse_descriptor(&d).unwrap_err().contains("no root directory record"));
        d[156] = 34;
        assert!(parse_descriptor(&d).unwrap_err().contains("not a directory"));
        d[156 + 25] = 2;
        d[156 + 2] = 20;
        d[40..72].copy_from_slice(b"config-2                        ");
        let want = Descriptor::Primary { volume_id: "config-2".into(), block: 2048, root: Extent { lba: 20, size: 0 } };
        assert_eq!(parse_descriptor(&d), Ok(want));
    }
}
