//! The cluster from a folder of manifests (the embedded default, no API server): every
//! `*.yaml`, `*.yml` and `*.json` file under the folder, read as `kubectl apply -f DIR -R`
//! would (files in path order, a later object of the same kind and name replacing an earlier
//! one). The folder is watched: an edited, added or removed file becomes the changes it
//! implies, nothing more. A file that does not parse is reported (an event naming the file,
//! the document and the field) and its previous content stays in force: a half-written file
//! never tears down the network it described.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use stacknet_engine::manifest;
use stacknet_engine::objects::{ClusterObject, Kind, ObjectKey};
use stacknet_engine::{ObjectRef, Reason};
use tokio::sync::mpsc;

use crate::Change;
use crate::error::Error;
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
    /// Its objects when it last parsed, in file order, each by identity and fingerprint: the
    /// objects themselves live in the controller's index only.
    objects: Vec<(ObjectId, u64)>,
}

type ObjectId = (Kind, ObjectKey);

fn fingerprint(value: &(impl std::hash::Hash + ?Sized)) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

fn stamp(path: &Path) -> Option<(Option<std::time::SystemTime>, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok(), meta.len()))
}

pub struct ManifestSource {
    dir: PathBuf,
    poll: Duration,
    files: BTreeMap<PathBuf, FileState>,
    /// The merged view last sent: each object's fingerprint.
    sent: HashMap<ObjectId, u64>,
    /// Which files hold each identity, with the object's fingerprint and position there.
    holders: HashMap<ObjectId, BTreeMap<Arc<Path>, (u64, usize)>>,
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
    pub fn new(dir: &Path, poll: Duration, events: Arc<Events>) -> Result<ManifestSource, Error> {
        let bad = |message: String| Error::ManifestFolder { path: dir.to_path_buf(), message };
        let meta = std::fs::metadata(dir).map_err(|e| bad(e.to_string()))?;
        if !meta.is_dir() {
            return Err(bad("not a directory".into()));
        }
        Ok(ManifestSource {
            dir: dir.into(),
            poll,
            files: BTreeMap::new(),
            sent: HashMap::new(),
            holders: HashMap::new(),
            events,
        })
    }

    /// Reads the folder: the changes since the last scan.
    pub fn scan(&mut self) -> Vec<Change> {
        let mut paths = Vec::new();
        if let Err(e) = walk(&self.dir, &mut paths) {
            // An unreadable folder changes nothing (the network stays as it is).
            self.events.warn(
                &ObjectRef::Folder(self.dir.display().to_string()),
                Reason::ManifestFolderUnreadable,
                &format!("cannot read the manifest folder: {e}; the network stays as it was"),
            );
            return Vec::new();
        }
        paths.sort();
        // Identities whose holders changed in this scan: only they are looked at again, so a
        // scan costs what changed, not what the folder holds.
        let mut touched: BTreeSet<ObjectId> = BTreeSet::new();
        let gone: Vec<PathBuf> = self.files.keys().filter(|p| paths.binary_search(p).is_err()).cloned().collect();
        for path in gone {
            if let Some(f) = self.files.remove(&path) {
                self.release(&path, &f.objects, &mut touched);
            }
        }
        // The objects of the files parsed by this scan, by position in their file.
        let mut parsed: BTreeMap<PathBuf, Vec<Option<ClusterObject>>> = BTreeMap::new();
        for path in &paths {
            let Some(now) = stamp(path) else { continue };
            if self.files.get(path).is_some_and(|f| f.stamp == now) {
                continue;
            }
            let Ok(bytes) = std::fs::read(path) else { continue };
            let content = fingerprint(bytes.as_slice());
            if let Some(f) = self.files.get_mut(path).filter(|f| f.content == content) {
                f.stamp = now;
                continue;
            }
            match self.parse(path, &bytes) {
                Ok(objects) => {
                    let ids: Vec<(ObjectId, u64)> = objects.iter().map(|o| (o.id(), fingerprint(o))).collect();
                    if let Some(before) = self.files.remove(path) {
                        self.release(path, &before.objects, &mut touched);
                    }
                    let shared: Arc<Path> = Arc::from(path.as_path());
                    for (i, (id, print)) in ids.iter().enumerate() {
                        // A later object of the same identity in the file replaces an earlier one.
                        self.holders.entry(id.clone()).or_default().insert(shared.clone(), (*print, i));
                        touched.insert(id.clone());
                    }
                    self.files.insert(path.clone(), FileState { stamp: now, content, objects: ids });
                    parsed.insert(path.clone(), objects.into_iter().map(Some).collect());
                }
                Err(e) => {
                    let keeps = if self.files.contains_key(path) {
                        "its previous content stays in force"
                    } else {
                        "nothing from it is applied"
                    };
                    let name = self.name(path);
                    self.events.warn(&ObjectRef::File(name), Reason::InvalidManifest, &format!("{e}; {keeps}"));
                    // Remember the bad content (so it is reported once), keep the objects.
                    let objects = self.files.remove(path).map(|f| f.objects).unwrap_or_default();
                    self.files.insert(path.clone(), FileState { stamp: now, content, objects });
                }
            }
        }
        // Later files win, as with `kubectl apply`: each touched identity's object is the one
        // of the last file holding it.
        let mut deletes = Vec::new();
        let mut applies = Vec::new();
        for id in touched {
            let winner = self.holders.get(&id).and_then(|h| h.last_key_value()).map(|(p, v)| (p.clone(), *v));
            let Some((path, (print, i))) = winner else {
                self.holders.remove(&id);
                if self.sent.remove(&id).is_some() {
                    deletes.push(Change::Delete(id.0, id.1));
                }
                continue;
            };
            if self.sent.get(&id) == Some(&print) {
                continue;
            }
            // Taken from this scan's parse; an object of an unchanged file is wanted only when
            // a duplicate of it elsewhere went away: that file is read again.
            if !parsed.contains_key(path.as_ref()) {
                let again = std::fs::read(&path).ok().and_then(|b| self.parse(&path, &b).ok()).unwrap_or_default();
                parsed.insert(path.to_path_buf(), again.into_iter().map(Some).collect());
            }
            match parsed.get_mut(path.as_ref()).and_then(|objects| objects.get_mut(i)).and_then(Option::take) {
                Some(o) if o.id() == id => {
                    self.sent.insert(id, print);
                    applies.push(Change::Apply(o));
                }
                // Changed since it was read: the next scan sees the file as changed.
                _ => continue,
            }
        }
        deletes.extend(applies);
        deletes
    }

    /// Forgets that `path` holds `objects`; their identities are `touched`.
    fn release(&mut self, path: &Path, objects: &[(ObjectId, u64)], touched: &mut BTreeSet<ObjectId>) {
        for (id, _) in objects {
            if let Some(h) = self.holders.get_mut(id) {
                h.remove(path);
            }
            touched.insert(id.clone());
        }
    }

    fn name(&self, path: &Path) -> String {
        path.strip_prefix(&self.dir).unwrap_or(path).display().to_string()
    }

    fn parse(&self, path: &Path, bytes: &[u8]) -> Result<Vec<ClusterObject>, stacknet_engine::ManifestError> {
        let name = self.name(path);
        let parsed = manifest::parse(&name, &String::from_utf8_lossy(bytes))?;
        for w in &parsed.warnings {
            tracing::warn!(file = %name, "{w}");
        }
        Ok(parsed.objects)
    }

    /// Sends the folder's objects, then [`Change::Synced`], then the changes as files change,
    /// until the receiver is gone.
    pub async fn run(mut self, tx: mpsc::Sender<Change>) {
        for c in self.scan() {
            if tx.send(c).await.is_err() {
                return;
            }
        }
        if tx.send(Change::Synced(SOURCE.into())).await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(self.poll).await;
            for c in self.scan() {
                if tx.send(c).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, tier: &str) -> String {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{tier: {tier}}}}}\n---\n")
    }

    /// What each change says, briefly: `+x/a:web` (applied, with its tier), `-x/a` (deleted).
    fn summary(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Apply(ClusterObject::Pod(p)) => format!("+{}:{}", p.key, p.labels["tier"]),
                Change::Apply(o) => format!("+{:?}", o.id()),
                Change::Delete(_, key) => format!("-{key}"),
                Change::Synced(s) => format!("synced {s}"),
            })
            .collect()
    }

    /// Writes `text` so that the next scan sees a new stamp even within the same second.
    fn write(path: &Path, text: &str) {
        let before = stamp(path);
        std::fs::write(path, text).unwrap();
        if before.is_some() && stamp(path) == before {
            let f = std::fs::File::options().write(true).open(path).unwrap();
            f.set_modified(std::time::SystemTime::now() + Duration::from_secs(1)).unwrap();
        }
    }

    #[test]
    fn edits_send_only_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let events = Arc::new(Events::new());
        let mut source = ManifestSource::new(dir.path(), Duration::from_secs(1), events.clone()).unwrap();
        let f = dir.path().join("pods.yaml");
        write(&f, &(pod("a", "web") + &pod("b", "db")));
        assert_eq!(summary(&source.scan()), ["+x/a:web", "+x/b:db"]);
        assert!(source.scan().is_empty(), "nothing changed");
        write(&f, &(pod("a", "web") + &pod("b", "web") + &pod("c", "db")));
        assert_eq!(summary(&source.scan()), ["+x/b:web", "+x/c:db"]);
        // A file that does not parse keeps its previous content in force.
        write(&f, "apiVersion: v1\nkind: Pod\nmetadata: {name: [\n");
        assert!(source.scan().is_empty());
        assert!(!events.with_reason(Reason::InvalidManifest).is_empty(), "{:?}", events.all());
        write(&f, &pod("a", "web"));
        assert_eq!(summary(&source.scan()), ["-x/b", "-x/c"]);
        std::fs::remove_file(&f).unwrap();
        assert_eq!(summary(&source.scan()), ["-x/a"]);
    }

    #[test]
    fn a_later_file_wins_and_the_earlier_one_returns_when_it_goes() {
        let dir = tempfile::tempdir().unwrap();
        let mut source = ManifestSource::new(dir.path(), Duration::from_secs(1), Arc::new(Events::new())).unwrap();
        write(&dir.path().join("10-a.yaml"), &(pod("a", "web") + &pod("z", "db")));
        write(&dir.path().join("20-b.yaml"), &pod("a", "cache"));
        assert_eq!(summary(&source.scan()), ["+x/a:cache", "+x/z:db"]);
        // The file that won goes: the unchanged earlier file's version is sent (read again).
        std::fs::remove_file(dir.path().join("20-b.yaml")).unwrap();
        assert_eq!(summary(&source.scan()), ["+x/a:web"]);
        assert!(source.scan().is_empty());
    }
}
