//! Tree stamps: the stat fields of every path of a committed tree, noted when it was
//! committed and compared on every use, so a cache never serves bytes it did not record.
//!
//! A committed tree's files are hard links to objects and read-only, but read-only does
//! not stop root: a step that runs `echo x >> ${{ steps.a }}/a.txt` as root changes the
//! object itself, and every tree that shares it. Hashing every file on every use would
//! make a no-op apply as slow as the first one, so each tree gets a stamp
//! (`stamps/<xx>/<tree hash>`): per manifest entry, the inode, size and modification time
//! of the path (for directories: inode and modification time). Any write through any link
//! changes the file's mtime (and usually its size); a file added, removed or renamed
//! changes its directory's mtime; a file replaced by another changes the inode. One
//! `lstat` per entry proves a tree unchanged. When a stat field differs, the tree's files
//! are hashed: a copied cache (new inodes) is stamped anew, changed bytes are damage. What a
//! stamp cannot see (a writer who puts the old mtime back by hand) the full check sees:
//! [`Cache::fsck`] hashes every object.
//!
//! Change times are not compared: linking an object into a second tree changes the
//! object's ctime (its link count), which is not damage.
//!
//! A tree with no stamp (committed by an older qflow, or its stamp lost) is hashed once
//! in full and stamped if it is intact.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::atomic::{parent_of, remove_dir_force};
use crate::tree::safe_relative;
use crate::{Cache, EntryKind, Hash, Manifest};

const MAGIC: &[u8] = b"qflow-tree-stamp 1\n";

/// What a use-time check found in a committed tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeCheck {
    /// Every path is as it was when the tree was committed.
    Intact,
    /// The tree is not in the cache (or has no manifest).
    Missing,
    /// Something under the tree changed since it was committed: the first path that did.
    Damaged(String),
}

/// A committed tree found changed since it was recorded, and removed from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedTree {
    /// The tree's hash (its manifest's).
    pub tree: Hash,
    /// The first path in it that changed (`.` for the tree's own directory).
    pub path: String,
}

/// One path's stat fields: inode, size (0 for directories), mtime seconds and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PathStat {
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl PathStat {
    fn of(meta: &std::fs::Metadata) -> PathStat {
        PathStat {
            ino: meta.ino(),
            size: if meta.is_dir() { 0 } else { meta.size() },
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ino.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.mtime.to_le_bytes());
        out.extend_from_slice(&self.mtime_nsec.to_le_bytes());
    }

    fn decode(b: &[u8]) -> PathStat {
        let u = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        PathStat {
            ino: u(0),
            size: u(8),
            mtime: u(16) as i64,
            mtime_nsec: u(24) as i64,
        }
    }
}

const STAT_LEN: usize = 32;

/// The paths a stamp covers, in order: the tree root (`""`), then every manifest entry.
fn stamped_paths(m: &Manifest) -> anyhow::Result<Vec<&str>> {
    let mut paths = vec![""];
    for e in &m.entries {
        safe_relative(&e.path)?;
        paths.push(e.path.as_str());
    }
    Ok(paths)
}

/// A stamp file: `MAGIC`, the tree hash, then per path: u32 length, the path, its stat.
fn encode_stamp(root: &Path, m: &Manifest) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(MAGIC.len() + 32 + (STAT_LEN + 40) * (m.entries.len() + 1));
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&m.hash.0);
    for rel in stamped_paths(m)? {
        let p = root.join(rel);
        let meta = std::fs::symlink_metadata(&p)
            .with_context(|| format!("cannot stat `{}`", p.display()))?;
        bytes.extend_from_slice(&(rel.len() as u32).to_le_bytes());
        bytes.extend_from_slice(rel.as_bytes());
        PathStat::of(&meta).encode(&mut bytes);
    }
    Ok(bytes)
}

/// Whether every path a stamp lists under `root` has the stat fields it notes. `None` for
/// a stamp that is not one of tree `output`.
fn stamp_matches(stamp: &[u8], root: &Path, output: &Hash) -> Option<bool> {
    let rest = stamp.strip_prefix(MAGIC)?;
    let (hash, mut rest) = rest.split_at_checked(32)?;
    if hash != output.0 {
        return None;
    }
    while !rest.is_empty() {
        let (len, r) = rest.split_at_checked(4)?;
        let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
        let (rel, r) = r.split_at_checked(len)?;
        let (stat, r) = r.split_at_checked(STAT_LEN)?;
        rest = r;
        let rel = std::str::from_utf8(rel).ok()?;
        if rel.split('/').any(|c| c == "..") || rel.starts_with('/') {
            return None;
        }
        let want = PathStat::decode(stat);
        let same =
            std::fs::symlink_metadata(root.join(rel)).is_ok_and(|meta| PathStat::of(&meta) == want);
        if !same {
            return Some(false);
        }
    }
    Some(true)
}

impl Cache {
    fn stamp_path(&self, output: &Hash) -> PathBuf {
        self.sharded("stamps", output, "")
    }

    /// Notes the stat fields of committed tree `m` (called once it is read-only).
    pub(crate) fn stamp_tree(&self, m: &Manifest) -> anyhow::Result<()> {
        let bytes = encode_stamp(&self.tree_path(&m.hash), m)?;
        let path = self.stamp_path(&m.hash);
        std::fs::create_dir_all(parent_of(&path))
            .with_context(|| format!("cannot create `{}`", parent_of(&path).display()))?;
        // No fsync: a stamp lost in a crash only costs one full check of the tree.
        let tmp = parent_of(&path).join(crate::atomic::unique_tmp_name());
        std::fs::write(&tmp, &bytes)
            .with_context(|| format!("cannot write `{}`", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("cannot rename `{}`", tmp.display()))?;
        Ok(())
    }

    /// The cheap half of [`Cache::check_tree`]: whether tree `output` has a stamp and every
    /// path it lists is unchanged (one read and one `lstat` per path; no manifest, no
    /// hashing). False means "ask `check_tree`", not "damaged".
    pub fn tree_unchanged(&self, output: &Hash) -> bool {
        std::fs::read(self.stamp_path(output))
            .ok()
            .and_then(|stamp| stamp_matches(&stamp, &self.tree_path(output), output))
            .unwrap_or(false)
    }

    /// Whether committed tree `output` is exactly what was recorded: one `lstat` per path
    /// against its stamp, or (no stamp, or a stat field differs) a full hash of its files.
    pub fn check_tree(&self, output: &Hash) -> TreeCheck {
        let Ok(Some(m)) = self.load_manifest(output) else {
            return TreeCheck::Missing;
        };
        self.check_tree_for(&m)
    }

    /// [`Cache::check_tree`] for a manifest already in hand.
    pub fn check_tree_for(&self, m: &Manifest) -> TreeCheck {
        let root = self.tree_path(&m.hash);
        if !root.is_dir() {
            return TreeCheck::Missing;
        }
        if stamped_paths(m).is_err() {
            return TreeCheck::Damaged(String::from("."));
        }
        if self.tree_unchanged(&m.hash) {
            return TreeCheck::Intact;
        }
        // No stamp, or stat fields differ: damage, or a cache copied elsewhere (new inodes
        // and times). The content decides, and an intact tree is stamped anew.
        self.check_tree_by_content(m)
    }

    /// Hashes every file of tree `m` against its manifest; stamps the tree if it is intact.
    fn check_tree_by_content(&self, m: &Manifest) -> TreeCheck {
        let root = self.tree_path(&m.hash);
        match tree_content_damage(&root, m) {
            Some(path) => TreeCheck::Damaged(path),
            None => {
                let _ = self.stamp_tree(m);
                TreeCheck::Intact
            }
        }
    }

    /// Removes a damaged tree, its stamp and the objects whose bytes no longer match their
    /// names, so the steps that made them run again. Other trees that shared a damaged
    /// object fail their own check the same way.
    pub fn discard_damaged_tree(&self, output: &Hash) -> anyhow::Result<()> {
        if let Ok(Some(m)) = self.load_manifest(output) {
            for e in &m.entries {
                if let EntryKind::File {
                    hash, executable, ..
                } = &e.kind
                {
                    let object = self.object_file(hash, *executable);
                    if object.is_file() && !crate::hash_file(&object).is_ok_and(|h| h == *hash) {
                        let _ = std::fs::remove_file(&object);
                    }
                }
            }
        }
        let _ = std::fs::remove_file(self.stamp_path(output));
        remove_dir_force(&self.tree_path(output))
    }

    /// Whether complete tree `m` is intact; a damaged one is removed (with its damaged
    /// objects) and noted for [`Cache::take_damaged`].
    pub(crate) fn usable_after_check(&self, m: &Manifest) -> bool {
        match self.check_tree_for(m) {
            TreeCheck::Intact => true,
            TreeCheck::Missing => false,
            TreeCheck::Damaged(path) => {
                let _ = self.discard_damaged_tree(&m.hash);
                self.damaged
                    .lock()
                    .unwrap()
                    .push(DamagedTree { tree: m.hash, path });
                false
            }
        }
    }

    /// The trees found damaged (and removed) since the last call, for warnings.
    pub fn take_damaged(&self) -> Vec<DamagedTree> {
        std::mem::take(&mut *self.damaged.lock().unwrap())
    }
}

/// The first path of tree `root` whose type, size or content differs from `m`, or whose
/// directory holds a name `m` does not list.
fn tree_content_damage(root: &Path, m: &Manifest) -> Option<String> {
    let listed: std::collections::HashSet<&str> =
        m.entries.iter().map(|e| e.path.as_str()).collect();
    for item in walkdir::WalkDir::new(root).min_depth(1) {
        let Ok(item) = item else {
            return Some(".".into());
        };
        let rel = item.path().strip_prefix(root).ok()?.to_string_lossy();
        if !listed.contains(rel.as_ref()) {
            return Some(rel.into_owned());
        }
    }
    for e in &m.entries {
        let p = root.join(&e.path);
        let ok = match &e.kind {
            EntryKind::Dir => p.symlink_metadata().is_ok_and(|t| t.is_dir()),
            EntryKind::Symlink { target } => {
                std::fs::read_link(&p).is_ok_and(|t| t.as_os_str() == target.as_str())
            }
            EntryKind::File { hash, size, .. } => {
                p.symlink_metadata()
                    .is_ok_and(|t| t.is_file() && t.len() == *size)
                    && crate::hash_file(&p).is_ok_and(|h| h == *hash)
            }
        };
        if !ok {
            return Some(e.path.clone());
        }
    }
    None
}

/// What [`Cache::fsck`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FsckReport {
    /// Objects hashed.
    pub objects: u64,
    /// Bytes hashed.
    pub bytes: u64,
    /// Objects whose bytes do not match their name (removed when repairing).
    pub damaged_objects: Vec<String>,
    /// Trees that differ from their manifest: (tree hash, first differing path).
    pub damaged_trees: Vec<(String, String)>,
}

impl FsckReport {
    /// Whether nothing was found damaged.
    pub fn is_clean(&self) -> bool {
        self.damaged_objects.is_empty() && self.damaged_trees.is_empty()
    }
}

impl Cache {
    /// The full check: hashes every object against its name and every committed tree
    /// against its manifest (content, not stamps). With `repair`, damaged objects and trees
    /// are removed so the steps that made them run again. Run it under the workspace lock.
    pub fn fsck(&self, repair: bool) -> anyhow::Result<FsckReport> {
        use rayon::prelude::*;
        let mut report = FsckReport::default();
        let objects = crate::gc::sharded_files(&self.dir("objects"))?;
        let checked: Vec<(String, PathBuf, u64, bool)> = objects
            .par_iter()
            .filter(|(name, _)| !crate::tree::is_tmp_name(name))
            .map(|(name, path)| {
                let stem = name.strip_suffix(".x").unwrap_or(name);
                let size = path.symlink_metadata().map(|m| m.len()).unwrap_or(0);
                let good = stem
                    .parse::<Hash>()
                    .is_ok_and(|want| crate::hash_file(path).is_ok_and(|h| h == want));
                (name.clone(), path.clone(), size, good)
            })
            .collect();
        for (name, path, size, good) in checked {
            report.objects += 1;
            report.bytes += size;
            if !good {
                report.damaged_objects.push(name);
                if repair {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        for entry in std::fs::read_dir(self.dir("trees"))
            .with_context(|| format!("cannot list `{}`", self.dir("trees").display()))?
        {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(hash) = name.parse::<Hash>() else {
                continue;
            };
            let damage = match self.load_manifest(&hash)? {
                None => Some(".".to_string()),
                Some(m) => tree_content_damage(&entry.path(), &m),
            };
            match damage {
                Some(path) => {
                    report.damaged_trees.push((name, path));
                    if repair {
                        self.discard_damaged_tree(&hash)?;
                    }
                }
                None => {
                    if let Ok(Some(m)) = self.load_manifest(&hash) {
                        let _ = self.stamp_tree(&m);
                    }
                }
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn committed(c: &Cache, files: &[(&str, &[u8])]) -> Manifest {
        let t = c.new_tree().unwrap();
        for (name, bytes) in files {
            let p = t.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        c.commit_tree(t).unwrap()
    }

    /// What root can do to a read-only file: open it for writing anyway.
    fn force_append(path: &Path, bytes: &[u8]) {
        let mut perms = std::fs::metadata(path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
        std::fs::set_permissions(path, perms).unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(bytes).unwrap();
    }

    fn make_writable(dir: &Path) {
        let mut perms = std::fs::metadata(dir).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(dir, perms).unwrap();
    }

    #[test]
    fn a_fresh_tree_is_intact() {
        let (_d, c) = crate::test_cache("stamp_fresh");
        let m = committed(&c, &[("a.txt", b"a"), ("sub/b.txt", b"b")]);
        assert_eq!(c.check_tree(&m.hash), TreeCheck::Intact);
    }

    #[test]
    fn appending_to_a_cached_file_through_any_link_is_damage() {
        let (_d, c) = crate::test_cache("stamp_append");
        let m = committed(&c, &[("a.txt", b"a")]);
        let other = committed(&c, &[("same.txt", b"a"), ("x", b"x")]);
        force_append(&c.tree_path(&m.hash).join("a.txt"), b"x\n");
        assert_eq!(c.check_tree(&m.hash), TreeCheck::Damaged("a.txt".into()));
        // The other tree links the same object: it is damaged too.
        assert_eq!(
            c.check_tree(&other.hash),
            TreeCheck::Damaged("same.txt".into())
        );
        c.discard_damaged_tree(&m.hash).unwrap();
        assert_eq!(c.check_tree(&m.hash), TreeCheck::Missing);
        assert!(
            !c.has_object(&Hash::of_bytes(b"a")),
            "the damaged object is gone"
        );
    }

    #[test]
    fn truncating_deleting_or_adding_a_file_is_damage() {
        let (_d, c) = crate::test_cache("stamp_shape");
        let m = committed(&c, &[("a.txt", b"aaaa"), ("sub/b.txt", b"b")]);
        let root = c.tree_path(&m.hash);
        // Truncate.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(root.join("a.txt"));
        let f = f.unwrap_or_else(|_| {
            let mut p = std::fs::metadata(root.join("a.txt")).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o644);
            std::fs::set_permissions(root.join("a.txt"), p).unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(root.join("a.txt"))
                .unwrap()
        });
        f.set_len(1).unwrap();
        assert_eq!(c.check_tree(&m.hash), TreeCheck::Damaged("a.txt".into()));

        let m2 = committed(&c, &[("x.txt", b"x"), ("sub/y.txt", b"y")]);
        let root2 = c.tree_path(&m2.hash);
        make_writable(&root2.join("sub"));
        std::fs::remove_file(root2.join("sub/y.txt")).unwrap();
        assert_eq!(
            c.check_tree(&m2.hash),
            TreeCheck::Damaged("sub/y.txt".into())
        );

        let m3 = committed(&c, &[("z.txt", b"z")]);
        let root3 = c.tree_path(&m3.hash);
        make_writable(&root3);
        std::fs::write(root3.join("extra"), b"new").unwrap();
        assert_eq!(c.check_tree(&m3.hash), TreeCheck::Damaged("extra".into()));
    }

    #[test]
    fn a_tree_without_a_stamp_is_checked_by_content_once() {
        let (_d, c) = crate::test_cache("stamp_none");
        let m = committed(&c, &[("a.txt", b"a")]);
        std::fs::remove_file(c.stamp_path(&m.hash)).unwrap();
        assert_eq!(c.check_tree(&m.hash), TreeCheck::Intact);
        assert!(
            c.stamp_path(&m.hash).is_file(),
            "stamped after the full check"
        );
    }

    #[test]
    fn fsck_finds_an_object_changed_behind_the_stamps_back() {
        let (_d, c) = crate::test_cache("fsck");
        let m = committed(&c, &[("a.txt", b"abc"), ("b.txt", b"keep")]);
        let file = c.tree_path(&m.hash).join("a.txt");
        let before = std::fs::symlink_metadata(&file).unwrap();
        let mut p = before.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o644);
        std::fs::set_permissions(&file, p).unwrap();
        std::fs::write(&file, b"xyz").unwrap();
        // Put the old mtime back: the stamp cannot see it, the full check can.
        let times = std::fs::FileTimes::new().set_modified(before.modified().unwrap());
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_times(times)
            .unwrap();
        assert_eq!(c.check_tree(&m.hash), TreeCheck::Intact);
        let report = c.fsck(false).unwrap();
        assert_eq!(
            report.damaged_objects,
            vec![Hash::of_bytes(b"abc").to_hex()]
        );
        assert_eq!(
            report.damaged_trees,
            vec![(m.hash.to_hex(), "a.txt".to_string())]
        );
        let report = c.fsck(true).unwrap();
        assert!(!report.is_clean());
        assert!(
            c.fsck(false).unwrap().is_clean(),
            "repaired: nothing damaged is left"
        );
        assert_eq!(c.check_tree(&m.hash), TreeCheck::Missing);
        assert!(c.has_object(&Hash::of_bytes(b"keep")));
    }
}
