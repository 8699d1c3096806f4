//! The cluster from a folder of manifests (the embedded default, no API server): every
//! `*.yaml`, `*.yml` and `*.json` file under the folder, read as `kubectl apply -f DIR -R`
//! would (files in path order, a later object of the same kind and name replacing an earlier
//! one). The folder is watched: an edited, added or removed file becomes the changes it
//! implies, nothing more. A file that does not parse is reported (an event naming the file,
//! the document and the field) and its previous content stays in force: a half-written file
//! never tears down the network it described.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use stacknet_engine::index::Kind;
use stacknet_engine::manifest;
use stacknet_engine::objects::{ClusterObject, ObjectKey};
use tokio::sync::mpsc;

use crate::Change;
use crate::events::Events;

/// The source's name in [`Change::Synced`].
pub const SOURCE: &str = "manifests";

struct FileState {
    /// The file's modification time and size when last read: a poll reads only files whose
    /// metadata changed.
    stamp: (Option<std::time::SystemTime>, u64),
    /// A fingerprint of what the file held when last read (a rewrite with the same bytes
    /// changes nothing).
    content: u64,
    /// Its objects when it last parsed (shared with the merged view: one copy of each).
    objects: Vec<Arc<ClusterObject>>,
}

fn fingerprint(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// A change found by a scan; objects are copied out only as they are sent.
enum Found {
    Apply(Arc<ClusterObject>),
    Delete(Kind, ObjectKey),
}

impl Found {
    fn into_change(self) -> Change {
        match self {
            Found::Apply(o) => Change::Apply(Arc::unwrap_or_clone(o)),
            Found::Delete(kind, key) => Change::Delete(kind, key),
        }
    }
}

fn stamp(path: &Path) -> Option<(Option<std::time::SystemTime>, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok(), meta.len()))
}

pub struct ManifestSource {
    dir: PathBuf,
    poll: Duration,
    files: BTreeMap<PathBuf, FileState>,
    /// The merged view last sent.
    sent: BTreeMap<(Kind, ObjectKey), Arc<ClusterObject>>,
    events: Arc<Events>,
}

fn wanted(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
        && !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if !path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
                walk(&path, out)?;
            }
        } else if wanted(&path) {
            out.push(path);
        }
    }
    Ok(())
}

impl ManifestSource {
    /// A source for `dir`, rescanned every `poll`. The folder must exist.
    pub fn new(dir: &Path, poll: Duration, events: Arc<Events>) -> Result<ManifestSource, String> {
        let meta = std::fs::metadata(dir).map_err(|e| format!("manifest folder {}: {e}", dir.display()))?;
        if !meta.is_dir() {
            return Err(format!("manifest folder {}: not a directory", dir.display()));
        }
        Ok(ManifestSource { dir: dir.into(), poll, files: BTreeMap::new(), sent: BTreeMap::new(), events })
    }

    /// Reads the folder: the changes since the last scan.
    pub fn scan(&mut self) -> Vec<Change> {
        self.scan_found().into_iter().map(Found::into_change).collect()
    }

    fn scan_found(&mut self) -> Vec<Found> {
        let mut paths = Vec::new();
        if let Err(e) = walk(&self.dir, &mut paths) {
            // An unreadable folder changes nothing (the network stays as it is).
            self.events.warn(
                &format!("folder {}", self.dir.display()),
                "ManifestFolderUnreadable",
                &format!("cannot read the manifest folder: {e}; the network stays as it was"),
            );
            return Vec::new();
        }
        paths.sort();
        self.files.retain(|p, _| paths.contains(p));
        for path in &paths {
            let Some(now) = stamp(path) else { continue };
            if self.files.get(path).is_some_and(|f| f.stamp == now) {
                continue;
            }
            let Ok(bytes) = std::fs::read(path) else { continue };
            let content = fingerprint(&bytes);
            if let Some(f) = self.files.get_mut(path).filter(|f| f.content == content) {
                f.stamp = now;
                continue;
            }
            let name = path.strip_prefix(&self.dir).unwrap_or(path).display().to_string();
            let text = String::from_utf8_lossy(&bytes);
            match manifest::parse(&name, &text) {
                Ok(parsed) => {
                    for w in &parsed.warnings {
                        tracing::warn!(file = %name, "{w}");
                    }
                    let objects = parsed.objects.into_iter().map(Arc::new).collect();
                    self.files.insert(path.clone(), FileState { stamp: now, content, objects });
                }
                Err(e) => {
                    let keeps = if self.files.contains_key(path) {
                        "its previous content stays in force"
                    } else {
                        "nothing from it is applied"
                    };
                    self.events.warn(&format!("file {name}"), "InvalidManifest", &format!("{e}; {keeps}"));
                    // Remember the bad content (so it is reported once), keep the objects.
                    let objects = self.files.remove(path).map(|f| f.objects).unwrap_or_default();
                    self.files.insert(path.clone(), FileState { stamp: now, content, objects });
                }
            }
        }
        let mut merged: BTreeMap<(Kind, ObjectKey), Arc<ClusterObject>> = BTreeMap::new();
        for f in self.files.values() {
            for o in &f.objects {
                merged.insert(o.id(), o.clone());
            }
        }
        let mut changes = Vec::new();
        for (id, _) in self.sent.iter().filter(|(id, _)| !merged.contains_key(*id)) {
            changes.push(Found::Delete(id.0, id.1.clone()));
        }
        for (id, o) in &merged {
            // The same object (unchanged file) is not compared field by field.
            if self.sent.get(id).is_none_or(|s| !Arc::ptr_eq(s, o) && s != o) {
                changes.push(Found::Apply(o.clone()));
            }
        }
        self.sent = merged;
        changes
    }

    /// Sends the folder's objects, then [`Change::Synced`], then the changes as files change,
    /// until the receiver is gone.
    pub async fn run(mut self, tx: mpsc::Sender<Change>) {
        for c in self.scan_found() {
            if tx.send(c.into_change()).await.is_err() {
                return;
            }
        }
        if tx.send(Change::Synced(SOURCE.into())).await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(self.poll).await;
            for c in self.scan_found() {
                if tx.send(c.into_change()).await.is_err() {
                    return;
                }
            }
        }
    }
}
