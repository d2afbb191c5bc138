//! Output trees and their manifests.
//!
//! A step writes into a `TempTree` (`trees/.tmp-<pid>-<nanos>-<n>/`). `Cache::commit_tree`
//! hashes every file (in parallel), moves the bytes into the object store, and renames the
//! directory to `trees/<manifest hash>/`, made read-only. Files in a committed tree are links
//! to objects, so a tree costs no space beyond its objects. Symlinks are kept as symlinks
//! (their target text is recorded), which is how a qcow2 overlay names its backing file in
//! another tree (`../<hash>/image.qcow2`) and keeps working when the cache moves.
//!
//! # The manifest hash
//! A tree's identity is blake3 over this byte encoding (integers little-endian), not over
//! the JSON text, so it does not depend on serde's formatting:
//! ```text
//! "qflow-manifest\0"  u32 version (=1)  u64 entry count
//! per entry, sorted by path (bytewise):
//!   u64 len, path bytes ('/'-separated, relative)
//!   u8 tag: 0 = dir | 1 = file, then [32] hash, u64 size, u8 executable
//!           | 2 = symlink, then u64 len, target bytes
//! ```

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::atomic::{TMP_PREFIX, fsync_dir, remove_dir_force, unique_tmp_name, write_atomic};
use crate::link::{LinkKind, link_or_copy};
use crate::object_store::{read_only_mode, seal};
use crate::{Cache, Hash};

/// The version written into the manifest hash encoding.
pub const MANIFEST_VERSION: u32 = 1;

/// What a tree holds: every path in it, and the hash that names the tree.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Manifest {
    /// Every file, symlink and directory below the tree root, sorted by path.
    pub entries: Vec<Entry>,
    /// blake3 over the canonical encoding of `entries` (see the module docs).
    pub hash: Hash,
}

/// One path in a tree.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Entry {
    /// Relative to the tree root, `/`-separated.
    pub path: String,
    /// What sits there.
    pub kind: EntryKind,
}

/// What sits at a path in a tree.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum EntryKind {
    /// A regular file, stored as an object.
    File {
        /// Its content hash (the object's name).
        hash: Hash,
        /// Its size in bytes.
        size: u64,
        /// Whether it is executable.
        executable: bool,
    },
    /// A symbolic link.
    Symlink {
        /// Where it points.
        target: String,
    },
    /// A directory.
    Dir,
}

impl Manifest {
    /// A manifest of `entries` (sorted here) with its hash computed.
    pub fn from_entries(mut entries: Vec<Entry>) -> Manifest {
        entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        let hash = Manifest::hash_of(&entries);
        Manifest { entries, hash }
    }

    /// The canonical hash of (already sorted) `entries`.
    pub fn hash_of(entries: &[Entry]) -> Hash {
        let mut h = blake3::Hasher::new();
        h.update(b"qflow-manifest\0");
        h.update(&MANIFEST_VERSION.to_le_bytes());
        h.update(&(entries.len() as u64).to_le_bytes());
        for e in entries {
            h.update(&(e.path.len() as u64).to_le_bytes());
            h.update(e.path.as_bytes());
            match &e.kind {
                EntryKind::Dir => {
                    h.update(&[0]);
                }
                EntryKind::File {
                    hash,
                    size,
                    executable,
                } => {
                    h.update(&[1]);
                    h.update(&hash.0);
                    h.update(&size.to_le_bytes());
                    h.update(&[*executable as u8]);
                }
                EntryKind::Symlink { target } => {
                    h.update(&[2]);
                    h.update(&(target.len() as u64).to_le_bytes());
                    h.update(target.as_bytes());
                }
            }
        }
        h.finalize().into()
    }

    /// Whether `hash` matches `entries` (and they are sorted): false for a tampered manifest.
    pub fn verify(&self) -> bool {
        self.entries
            .windows(2)
            .all(|w| w[0].path.as_bytes() < w[1].path.as_bytes())
            && Manifest::hash_of(&self.entries) == self.hash
    }

    /// The entry at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.path.as_bytes().cmp(path.as_bytes()))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// The total size of the tree's files.
    pub fn total_size(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match e.kind {
                EntryKind::File { size, .. } => size,
                _ => 0,
            })
            .sum()
    }
}

/// An output directory being written; removed on drop unless committed.
#[derive(Debug)]
pub struct TempTree {
    path: PathBuf,
    committed: bool,
}

impl TempTree {
    /// The directory to write outputs into (`$QFLOW_OUT`).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        if !self.committed {
            let _ = remove_dir_force(&self.path);
        }
    }
}

impl Cache {
    /// A fresh, empty output directory under `trees/`, on the same filesystem as the objects.
    /// A spare directory is moved there when there is one (see `spare_dirs.rs`).
    pub fn new_tree(&self) -> anyhow::Result<TempTree> {
        let path = self.dir("trees").join(unique_tmp_name());
        if !self.spare_dirs().take(&path) {
            std::fs::create_dir(&path).with_context(|| {
                format!("cannot create the output directory `{}`", path.display())
            })?;
        }
        Ok(TempTree {
            path,
            committed: false,
        })
    }

    /// Where the committed tree `output` lives: `trees/<hex>`.
    pub fn tree_path(&self, output: &Hash) -> PathBuf {
        self.dir("trees").join(output.to_hex())
    }

    pub(crate) fn manifest_path(&self, output: &Hash) -> PathBuf {
        self.sharded("manifests", output, ".json")
    }

    /// The stored manifest of tree `output`; `None` if absent or damaged.
    pub fn load_manifest(&self, output: &Hash) -> anyhow::Result<Option<Manifest>> {
        let path = self.manifest_path(output);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read `{}`", path.display())),
        };
        match serde_json::from_slice::<Manifest>(&bytes) {
            Ok(m) if m.hash == *output && m.verify() => Ok(Some(m)),
            _ => Ok(None),
        }
    }

    fn store_manifest(&self, m: &Manifest) -> anyhow::Result<()> {
        if self.load_manifest(&m.hash)?.as_ref() == Some(m) {
            return Ok(());
        }
        let path = self.manifest_path(&m.hash);
        let dir = crate::atomic::parent_of(&path);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create `{}`", dir.display()))?;
        write_atomic(&path, &serde_json::to_vec(m)?)
    }

    /// Whether tree `output` is usable: its directory exists with every entry of its
    /// manifest, and every object it lists is in the store.
    /// A tree changed since it was committed (see `tree_stamp.rs`) is removed here, with
    /// its damaged objects, and noted for [`Cache::take_damaged`]: it is not usable.
    pub fn has_tree(&self, output: &Hash) -> bool {
        match self.load_manifest(output) {
            Ok(Some(m)) => self.has_tree_for(&m),
            _ => false,
        }
    }

    /// `has_tree` for a manifest already in hand (e.g. a record's): saves reading it again.
    pub fn has_tree_for(&self, m: &Manifest) -> bool {
        // The damage check first: a file truncated or removed by hand is damage to
        // report (and a damaged object to drop), not merely an incomplete tree.
        self.tree_path(&m.hash).is_dir()
            && self.usable_after_check(m)
            && self.tree_is_complete(m)
            && self.objects_present(m)
    }

    fn objects_present(&self, m: &Manifest) -> bool {
        m.entries.iter().all(|e| match &e.kind {
            EntryKind::File {
                hash, executable, ..
            } => self.object_file(hash, *executable).is_file(),
            _ => true,
        })
    }

    /// The tree directory exists and holds every entry of `m` with the right type and size.
    fn tree_is_complete(&self, m: &Manifest) -> bool {
        let root = self.tree_path(&m.hash);
        if !root.is_dir() {
            return false;
        }
        m.entries.iter().all(|e| {
            let Ok(meta) = std::fs::symlink_metadata(root.join(&e.path)) else {
                return false;
            };
            match &e.kind {
                EntryKind::Dir => meta.is_dir(),
                EntryKind::Symlink { .. } => meta.file_type().is_symlink(),
                EntryKind::File { size, .. } => meta.is_file() && meta.len() == *size,
            }
        })
    }

    /// Turns a finished output directory into a committed, read-only tree and returns its
    /// manifest. Files move into the object store (linked, never copied on one filesystem);
    /// if an identical tree is already committed, `tmp` is discarded.
    pub fn commit_tree(&self, tmp: TempTree) -> anyhow::Result<Manifest> {
        let root = tmp.path.clone();
        ensure_owner_can(&root, 0o700)?;
        let mut entries = Vec::new();
        let mut files = Vec::new();
        let mut dirs = vec![root.clone()];
        for item in walkdir::WalkDir::new(&root)
            .min_depth(1)
            .follow_links(false)
            .sort_by_file_name()
        {
            let item = item.with_context(|| format!("cannot walk `{}`", root.display()))?;
            let rel = relative_path(&root, item.path())?;
            let ft = item.file_type();
            if ft.is_dir() {
                // A step may leave a directory read-only; files in it get replaced by links.
                ensure_owner_can(item.path(), 0o700)?;
                dirs.push(item.path().to_path_buf());
                entries.push(Entry {
                    path: rel,
                    kind: EntryKind::Dir,
                });
            } else if ft.is_symlink() {
                let target = std::fs::read_link(item.path()).with_context(|| {
                    format!("cannot read the symlink `{}`", item.path().display())
                })?;
                let Some(target) = target.to_str() else {
                    bail!(
                        "the symlink `{}` points at a path that is not UTF-8; use a UTF-8 name",
                        item.path().display()
                    );
                };
                check_output_symlink(&root, &rel, target)?;
                entries.push(Entry {
                    path: rel,
                    kind: EntryKind::Symlink {
                        target: target.to_string(),
                    },
                });
            } else if ft.is_file() {
                ensure_owner_can(item.path(), 0o400)?;
                files.push((rel, item.path().to_path_buf()));
            } else {
                bail!(
                    "`{}` is neither a file, a directory nor a symlink; a step may only leave those in its output directory",
                    item.path().display()
                );
            }
        }
        let stored: Vec<crate::object_store::Ingested> = files
            .par_iter()
            .map(|(_, path)| self.ingest_file(path))
            .collect::<anyhow::Result<_>>()?;
        // Every directory that got a new name (tree directories, object shards) is fsynced
        // once, so the tree's and the objects' names are durable before the tree's name is.
        let mut to_sync: std::collections::BTreeSet<PathBuf> = dirs.into_iter().collect();
        for ((rel, _), s) in files.into_iter().zip(stored) {
            to_sync.insert(s.new_name_in);
            entries.push(Entry {
                path: rel,
                kind: EntryKind::File {
                    hash: s.hash,
                    size: s.size,
                    executable: s.executable,
                },
            });
        }
        let manifest = Manifest::from_entries(entries);
        // The directories of `tmp` are fsynced only if it is to become the tree: an
        // output identical to a tree committed before (every step without outputs,
        // a rebuild that made the same bytes) is discarded, and its fsync was a
        // few milliseconds of a one-step apply. Objects stored anew are made
        // durable either way.
        let (in_tmp, others): (Vec<PathBuf>, Vec<PathBuf>) =
            to_sync.into_iter().partition(|d| d.starts_with(&root));
        others.par_iter().try_for_each(|d| fsync_dir(d))?;
        let sync_tmp = || in_tmp.par_iter().try_for_each(|d| fsync_dir(d));
        self.place_tree(tmp, &manifest, sync_tmp)?;
        Ok(manifest)
    }

    /// Stores the manifest and renames `tmp` to `trees/<hash>` (or discards it when a complete
    /// identical tree is there already), then makes the tree read-only. `sync_tmp` makes
    /// the names in `tmp` durable, and is called before it is renamed, only then.
    fn place_tree(
        &self,
        mut tmp: TempTree,
        m: &Manifest,
        sync_tmp: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.store_manifest(m)?;
        let dest = self.tree_path(&m.hash);
        if dest.exists() {
            if self.tree_is_complete(m) {
                // An empty output (a step with no outputs) is kept for the next step.
                if m.entries.is_empty() && self.spare_dirs().give(&tmp.path) {
                    tmp.committed = true;
                }
                return Ok(()); // else tmp dropped: removed
            }
            remove_dir_force(&dest)?;
        }
        sync_tmp()?;
        if let Err(e) = std::fs::rename(&tmp.path, &dest) {
            // Another run committed the same tree a moment ago.
            if self.tree_is_complete(m) {
                return Ok(());
            }
            return Err(e).with_context(|| {
                format!(
                    "cannot rename `{}` to `{}`",
                    tmp.path.display(),
                    dest.display()
                )
            });
        }
        tmp.committed = true;
        fsync_dir(&self.dir("trees"))?;
        make_dirs_read_only(&dest)?;
        self.stamp_tree(m)
    }

    /// Re-creates tree `m` from the object store if its directory is gone or damaged, and
    /// returns the tree's path.
    pub fn restore_tree(&self, m: &Manifest) -> anyhow::Result<PathBuf> {
        self.restore_tree_from(m, &BTreeSet::new())
    }

    /// [`Cache::restore_tree`], where the objects named in `verified` were hashed on their
    /// way into the store by the caller just now (a download): their bytes are not read
    /// again. Every other object is checked against its name first.
    pub fn restore_tree_from(
        &self,
        m: &Manifest,
        verified: &BTreeSet<Hash>,
    ) -> anyhow::Result<PathBuf> {
        if !m.verify() {
            bail!(
                "the manifest of tree `{}` is damaged; run the step again",
                m.hash.short()
            );
        }
        let dest = self.tree_path(&m.hash);
        if self.tree_is_complete(m) {
            // Objects deleted by hand: the tree's own files still hold the bytes.
            self.restore_objects_from_tree(m)?;
            if self.objects_present(m) {
                self.store_manifest(m)?;
                return Ok(dest);
            }
        }
        let tmp = self.new_tree()?;
        let mut dirs = vec![tmp.path.clone()];
        for e in &m.entries {
            let rel = safe_relative(&e.path)
                .with_context(|| format!("in the manifest of tree `{}`", m.hash.short()))?;
            let at = tmp.path.join(rel);
            match &e.kind {
                EntryKind::Dir => {
                    std::fs::create_dir(&at)
                        .with_context(|| format!("cannot create `{}`", at.display()))?;
                    dirs.push(at);
                }
                EntryKind::Symlink { target } => std::os::unix::fs::symlink(target, &at)
                    .with_context(|| format!("cannot create the symlink `{}`", at.display()))?,
                EntryKind::File {
                    hash, executable, ..
                } => {
                    let object = self.object_file(hash, *executable);
                    if !object.is_file() {
                        bail!(
                            "cannot restore tree `{}`: the object for `{}` is missing from the cache; run the step again (`qflow clean`)",
                            m.hash.short(),
                            e.path
                        );
                    }
                    // Objects are links a writer may have reached: restore only bytes
                    // that still match their name.
                    if !verified.contains(hash) && crate::hash_file(&object).ok() != Some(*hash) {
                        let _ = std::fs::remove_file(&object);
                        bail!(
                            "cannot restore tree `{}`: the object for `{}` was changed after it was stored; the step runs again",
                            m.hash.short(),
                            e.path
                        );
                    }
                    if link_or_copy(&object, &at)? != LinkKind::Hardlink {
                        seal(&at, read_only_mode(*executable))?;
                    }
                }
            }
        }
        self.place_tree(tmp, m, || dirs.par_iter().try_for_each(|d| fsync_dir(d)))?;
        Ok(dest)
    }
}

impl Cache {
    /// Puts back missing objects of tree `m` from the tree's files whose content still
    /// hashes right.
    fn restore_objects_from_tree(&self, m: &Manifest) -> anyhow::Result<()> {
        let root = self.tree_path(&m.hash);
        for e in &m.entries {
            let EntryKind::File {
                hash, executable, ..
            } = &e.kind
            else {
                continue;
            };
            let object = self.object_file(hash, *executable);
            if object.is_file() {
                continue;
            }
            let file = root.join(safe_relative(&e.path)?);
            if crate::hash_file(&file).ok() != Some(*hash) {
                continue;
            }
            let shard = crate::atomic::parent_of(&object);
            std::fs::create_dir_all(&shard)
                .with_context(|| format!("cannot create `{}`", shard.display()))?;
            let tmp = shard.join(unique_tmp_name());
            if link_or_copy(&file, &tmp)? != LinkKind::Hardlink {
                seal(&tmp, read_only_mode(*executable))?;
            }
            let renamed = std::fs::rename(&tmp, &object);
            let _ = std::fs::remove_file(&tmp);
            renamed.with_context(|| format!("cannot restore `{}`", object.display()))?;
            fsync_dir(&shard)?;
        }
        Ok(())
    }
}

/// `path` relative to `root`, '/'-separated; an error for a non-UTF-8 name.
fn relative_path(root: &Path, path: &Path) -> anyhow::Result<String> {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let mut out = String::new();
    for c in rel.components() {
        let Some(s) = c.as_os_str().to_str() else {
            bail!(
                "the output `{}` has a name that is not UTF-8; rename it",
                path.display()
            );
        };
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(s);
    }
    Ok(out)
}

/// Refuses manifest paths that could escape the tree.
pub(crate) fn safe_relative(path: &str) -> anyhow::Result<&Path> {
    let p = Path::new(path);
    if path.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        bail!("the path `{path}` is not a plain relative path");
    }
    Ok(p)
}

/// Adds the owner permission bits `bits` to `path` if it lacks them.
fn ensure_owner_can(path: &Path, bits: u32) -> anyhow::Result<()> {
    let mode = std::fs::symlink_metadata(path)
        .with_context(|| format!("cannot stat `{}`", path.display()))?
        .permissions()
        .mode();
    if mode & bits != bits {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | bits))
            .with_context(|| format!("cannot chmod `{}`", path.display()))?;
    }
    Ok(())
}

/// Read-only directories keep users and steps from editing a committed tree by accident.
fn make_dirs_read_only(root: &Path) -> anyhow::Result<()> {
    // Children before parents is not required for chmod, but keeps the walk from needing
    // write permission it just removed.
    let mut dirs: Vec<PathBuf> = walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_dir())
        .map(|e| e.into_path())
        .collect();
    dirs.reverse();
    for d in dirs {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o555))
            .with_context(|| format!("cannot make `{}` read-only", d.display()))?;
    }
    Ok(())
}

/// Whether a name in `trees/` (or a shard) is a temporary one.
pub(crate) fn is_tmp_name(name: &str) -> bool {
    name.starts_with(TMP_PREFIX)
}

/// An output may be a symlink only to a path inside its own output directory, or to a file
/// of another committed tree (`../<tree hash>/...`, how an overlay names its base), and only
/// to something that exists: a link to `/etc/hostname` would make the cached result depend
/// on the host, and a dangling one records nothing.
fn check_output_symlink(root: &Path, rel: &str, target: &str) -> anyhow::Result<()> {
    let refuse = |why: &str| -> anyhow::Result<()> {
        bail!(
            "the output `{rel}` is a symlink to `{target}`, {why}; copy the file into $QFLOW_OUT instead of linking to it"
        )
    };
    if Path::new(target).is_absolute() {
        return refuse("an absolute path outside the step's output directory");
    }
    // Resolve lexically from the link's directory, inside `trees/`.
    let mut at: Vec<String> = vec![String::new()]; // the tree root, one level below trees/
    at.extend(rel.split('/').map(str::to_string));
    at.pop(); // the link's own name
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if at.pop().is_none() {
                    return refuse("a path outside the step's output directory");
                }
            }
            c => at.push(c.to_string()),
        }
    }
    let inside_own = at.first().is_some_and(|f| f.is_empty());
    let into_tree = !inside_own
        && at
            .first()
            .is_some_and(|f| f.len() == 64 && f.bytes().all(|b| b.is_ascii_hexdigit()));
    if !inside_own && !into_tree {
        return refuse("a path outside the step's output directory");
    }
    let link = root.join(rel);
    if std::fs::metadata(&link).is_err() {
        return refuse("which does not exist (a dangling link)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn cache(name: &str) -> (crate::TestDir, Cache) {
        crate::test_cache(name)
    }

    fn write(dir: &Path, rel: &str, bytes: &[u8]) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    fn objects(c: &Cache) -> Vec<PathBuf> {
        walkdir::WalkDir::new(c.dir("objects"))
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .map(|e| e.into_path())
            .collect()
    }

    fn temp_names(c: &Cache) -> Vec<String> {
        std::fs::read_dir(c.dir("trees"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| is_tmp_name(n))
            .collect()
    }

    #[test]
    fn identical_outputs_dedupe_to_one_object() {
        let (_dir, c) = cache("dedupe");
        let t = c.new_tree().unwrap();
        write(t.path(), "a.txt", b"same bytes");
        write(t.path(), "sub/b.txt", b"same bytes");
        let m = c.commit_tree(t).unwrap();
        assert_eq!(objects(&c).len(), 1, "two identical files, one object");
        let tree = c.tree_path(&m.hash);
        let obj = c.object_path(&Hash::of_bytes(b"same bytes"));
        let ino = std::fs::metadata(&obj).unwrap().ino();
        assert_eq!(std::fs::metadata(tree.join("a.txt")).unwrap().ino(), ino);
        assert_eq!(
            std::fs::metadata(tree.join("sub/b.txt")).unwrap().ino(),
            ino
        );

        // A second step producing the same output: same manifest, same single object,
        // and its temporary directory is gone.
        let t2 = c.new_tree().unwrap();
        write(t2.path(), "a.txt", b"same bytes");
        write(t2.path(), "sub/b.txt", b"same bytes");
        let m2 = c.commit_tree(t2).unwrap();
        assert_eq!(m2, m);
        assert_eq!(objects(&c).len(), 1);
        assert!(temp_names(&c).is_empty());
        assert!(c.has_tree(&m.hash));
    }

    #[test]
    fn executable_and_plain_copies_of_the_same_bytes_keep_their_modes() {
        let (_dir, c) = cache("modes");
        let t = c.new_tree().unwrap();
        write(t.path(), "plain", b"#!/bin/sh\n");
        write(t.path(), "tool", b"#!/bin/sh\n");
        std::fs::set_permissions(
            t.path().join("tool"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let m = c.commit_tree(t).unwrap();
        let tree = c.tree_path(&m.hash);
        let mode = |p: &str| std::fs::metadata(tree.join(p)).unwrap().mode() & 0o777;
        assert_eq!(mode("plain"), 0o444);
        assert_eq!(mode("tool"), 0o555);
        assert_eq!(objects(&c).len(), 2);
        assert!(matches!(
            m.get("tool").unwrap().kind,
            EntryKind::File {
                executable: true,
                ..
            }
        ));
    }

    #[test]
    fn committed_trees_are_read_only() {
        let (_dir, c) = cache("read_only");
        let t = c.new_tree().unwrap();
        write(t.path(), "d/f", b"x");
        let m = c.commit_tree(t).unwrap();
        let tree = c.tree_path(&m.hash);
        for p in [tree.clone(), tree.join("d")] {
            assert_eq!(
                std::fs::metadata(&p).unwrap().mode() & 0o222,
                0,
                "{}",
                p.display()
            );
        }
        assert_eq!(
            std::fs::metadata(tree.join("d/f")).unwrap().mode() & 0o222,
            0
        );
        let obj = c.object_path(&Hash::of_bytes(b"x"));
        assert_eq!(std::fs::metadata(obj).unwrap().mode() & 0o777, 0o444);
    }

    #[test]
    fn a_dropped_temp_tree_leaves_nothing() {
        let (_dir, c) = cache("dropped");
        let t = c.new_tree().unwrap();
        let path = t.path().to_path_buf();
        write(&path, "half/written.img", b"partial");
        std::fs::set_permissions(path.join("half"), std::fs::Permissions::from_mode(0o555))
            .unwrap();
        drop(t);
        assert!(!path.exists());
        assert!(temp_names(&c).is_empty());
        assert!(objects(&c).is_empty());
    }

    #[test]
    fn outputs_a_step_left_read_only_or_unreadable_are_committed() {
        let (_dir, c) = cache("step_modes");
        let t = c.new_tree().unwrap();
        write(t.path(), "locked/f", b"dup");
        write(t.path(), "g", b"dup");
        write(t.path(), "secret", b"s");
        let chmod = |p: &str, m: u32| {
            std::fs::set_permissions(t.path().join(p), std::fs::Permissions::from_mode(m)).unwrap()
        };
        chmod("secret", 0o000);
        chmod("locked", 0o500);
        let m = c.commit_tree(t).unwrap();
        assert!(c.has_tree(&m.hash));
        let tree = c.tree_path(&m.hash);
        assert_eq!(std::fs::read(tree.join("locked/f")).unwrap(), b"dup");
        assert_eq!(
            std::fs::metadata(tree.join("secret")).unwrap().mode() & 0o777,
            0o444
        );
        assert_eq!(objects(&c).len(), 2);
    }

    #[test]
    fn an_empty_output_is_a_valid_tree() {
        let (_dir, c) = cache("empty");
        let m = c.commit_tree(c.new_tree().unwrap()).unwrap();
        assert!(m.entries.is_empty());
        assert!(c.has_tree(&m.hash));
        let m2 = c.commit_tree(c.new_tree().unwrap()).unwrap();
        assert_eq!(m, m2);
    }

    #[test]
    fn a_symlink_to_another_tree_survives_moving_the_cache() {
        let dir = crate::test_dir("move");
        let c = Cache::open(&dir.join("cache")).unwrap();
        let base = c.new_tree().unwrap();
        write(base.path(), "image.qcow2", b"base image");
        let base = c.commit_tree(base).unwrap();

        let overlay = c.new_tree().unwrap();
        write(overlay.path(), "image.qcow2", b"overlay");
        let target = format!("../{}/image.qcow2", base.hash);
        std::os::unix::fs::symlink(&target, overlay.path().join("backing")).unwrap();
        let overlay = c.commit_tree(overlay).unwrap();
        assert_eq!(
            overlay.get("backing").unwrap().kind,
            EntryKind::Symlink {
                target: target.clone()
            }
        );
        std::fs::rename(dir.join("cache"), dir.join("moved")).unwrap();
        let c = Cache::open(&dir.join("moved")).unwrap();
        assert!(c.has_tree(&base.hash));
        assert!(c.has_tree(&overlay.hash));
        let via_link = std::fs::read(c.tree_path(&overlay.hash).join("backing")).unwrap();
        assert_eq!(via_link, b"base image");
    }

    #[test]
    fn an_output_symlink_out_of_the_output_directory_or_dangling_is_refused() {
        let (_dir, c) = cache("links_out");
        for (name, target, why) in [
            ("hostname", "/etc/hostname", "absolute path"),
            (
                "up",
                "../../../etc/passwd",
                "outside the step's output directory",
            ),
            (
                "cache_file",
                "../../VERSION",
                "outside the step's output directory",
            ),
            ("nothing", "missing.txt", "dangling"),
        ] {
            let t = c.new_tree().unwrap();
            write(t.path(), "data", b"data");
            std::os::unix::fs::symlink(target, t.path().join(name)).unwrap();
            let err = format!("{:#}", c.commit_tree(t).unwrap_err());
            assert!(err.contains(&format!("`{name}`")), "{err}");
            assert!(err.contains(target), "{err}");
            assert!(err.contains(why), "{err}");
        }
        // Inside the output directory: kept.
        let t = c.new_tree().unwrap();
        write(t.path(), "sub/data", b"data");
        std::os::unix::fs::symlink("sub/data", t.path().join("link")).unwrap();
        std::os::unix::fs::symlink("../sub/data", t.path().join("sub/again")).unwrap();
        assert!(c.commit_tree(t).is_ok());
    }

    #[test]
    fn a_deleted_tree_is_restored_from_the_objects() {
        let (_dir, c) = cache("restore");
        let t = c.new_tree().unwrap();
        write(t.path(), "bin/tool", b"tool");
        std::fs::set_permissions(
            t.path().join("bin/tool"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        write(t.path(), "data", b"data");
        std::os::unix::fs::symlink("data", t.path().join("link")).unwrap();
        let m = c.commit_tree(t).unwrap();
        remove_dir_force(&c.tree_path(&m.hash)).unwrap();
        assert!(!c.has_tree(&m.hash));

        let path = c.restore_tree(&m).unwrap();
        assert!(c.has_tree(&m.hash));
        assert_eq!(std::fs::read(path.join("link")).unwrap(), b"data");
        assert_eq!(
            std::fs::metadata(path.join("bin/tool")).unwrap().mode() & 0o777,
            0o555
        );

        // Objects deleted by hand come back from an intact tree.
        std::fs::remove_file(c.object_path(&Hash::of_bytes(b"data"))).unwrap();
        assert!(!c.has_tree(&m.hash));
        c.restore_tree(&m).unwrap();
        assert!(c.has_tree(&m.hash));

        // Tree and object gone: restoring says so instead of building a partial tree.
        remove_dir_force(&c.tree_path(&m.hash)).unwrap();
        std::fs::remove_file(c.object_path(&Hash::of_bytes(b"data"))).unwrap();
        let err = c.restore_tree(&m).unwrap_err().to_string();
        assert!(err.contains("`data`"), "{err}");
        assert!(!c.tree_path(&m.hash).exists());
        assert!(temp_names(&c).is_empty());
    }

    #[test]
    fn a_large_image_is_linked_into_the_store_not_copied() {
        let (_dir, c) = cache("large");
        let t = c.new_tree().unwrap();
        let img = t.path().join("image.raw");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(64 << 20).unwrap(); // sparse: cheap to create, hashed as real bytes
        drop(f);
        let ino = std::fs::metadata(&img).unwrap().ino();
        let m = c.commit_tree(t).unwrap();
        let EntryKind::File { hash, size, .. } = m.get("image.raw").unwrap().kind else {
            panic!("not a file");
        };
        assert_eq!(size, 64 << 20);
        assert_eq!(std::fs::metadata(c.object_path(&hash)).unwrap().ino(), ino);
        let committed = c.tree_path(&m.hash).join("image.raw");
        assert_eq!(std::fs::metadata(committed).unwrap().ino(), ino);
    }

    #[test]
    #[ignore = "slow: hashes a 2 GiB sparse image"]
    fn a_two_gib_image_commits_by_hard_link() {
        let (_dir, c) = cache("two_gib");
        let t = c.new_tree().unwrap();
        let img = t.path().join("disk.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(2 << 30)
            .unwrap();
        let ino = std::fs::metadata(&img).unwrap().ino();
        let started = std::time::Instant::now();
        let m = c.commit_tree(t).unwrap();
        eprintln!("commit of a 2 GiB image: {:?}", started.elapsed());
        let committed = c.tree_path(&m.hash).join("disk.img");
        assert_eq!(std::fs::metadata(committed).unwrap().ino(), ino);
    }

    #[test]
    #[ignore = "slow: measures committing 2,000 small files"]
    fn committing_two_thousand_small_files() {
        let (_dir, c) = cache("small_files");
        let t = c.new_tree().unwrap();
        for i in 0..2000 {
            write(
                t.path(),
                &format!("d{}/f{i}", i % 40),
                format!("file {i}").as_bytes(),
            );
        }
        let started = std::time::Instant::now();
        let m = c.commit_tree(t).unwrap();
        eprintln!("commit of 2,000 small files: {:?}", started.elapsed());
        assert_eq!(m.entries.len(), 2040);
    }

    #[test]
    fn two_threads_committing_identical_trees_both_succeed() {
        let (_dir, c) = cache("concurrent");
        for round in 0..5 {
            let manifests: Vec<Manifest> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..2)
                    .map(|_| {
                        s.spawn(|| {
                            let t = c.new_tree().unwrap();
                            for i in 0..20 {
                                write(
                                    t.path(),
                                    &format!("d{}/f{i}", i % 3),
                                    format!("{round}-{i}").as_bytes(),
                                );
                            }
                            c.commit_tree(t).unwrap()
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert_eq!(manifests[0], manifests[1]);
            assert!(c.has_tree(&manifests[0].hash));
        }
        assert!(temp_names(&c).is_empty());
        assert_eq!(objects(&c).len(), 100);
    }

    #[test]
    fn the_manifest_hash_depends_on_every_field() {
        let file = |path: &str, byte: u8, exec: bool| Entry {
            path: path.into(),
            kind: EntryKind::File {
                hash: Hash([byte; 32]),
                size: 1,
                executable: exec,
            },
        };
        let base = Manifest::from_entries(vec![file("a", 1, false)]);
        for other in [
            Manifest::from_entries(vec![file("b", 1, false)]),
            Manifest::from_entries(vec![file("a", 2, false)]),
            Manifest::from_entries(vec![file("a", 1, true)]),
            Manifest::from_entries(vec![Entry {
                path: "a".into(),
                kind: EntryKind::Symlink { target: "x".into() },
            }]),
            Manifest::from_entries(vec![Entry {
                path: "a".into(),
                kind: EntryKind::Dir,
            }]),
        ] {
            assert_ne!(base.hash, other.hash, "{other:?}");
        }
        assert!(base.verify());
        let mut tampered = base.clone();
        tampered.entries[0].path = "z".into();
        assert!(!tampered.verify());
    }
}
