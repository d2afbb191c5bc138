//! The tree index: git's index for one declared input directory.
//!
//! After a full walk of an input tree (a kernel source: 78,000 files), qflow
//! records every directory's stat, every entry's stat and content hash, and the
//! tree's digest. A later apply proves the tree unchanged without listing a
//! directory or reading a file: adding, removing or renaming an entry changes
//! its directory's mtime and ctime, and editing a file changes the file's own
//! stat, so when every directory and every entry still has its recorded stat, the
//! recorded digest stands. That costs one `open` per directory and one `fstatat`
//! per entry, relative to the directory's descriptor, spread over the cores: no
//! `readdir`, no path resolved twice, no hashing, no allocation per file.
//!
//! Racy entries (git's racy-git problem): an entry modified within
//! [`RACY_WINDOW_NS`] of the walk could be edited again in the same timestamp
//! tick without any stat field changing. An index holding such an entry is
//! never trusted by [`check`]; the next full walk reads those files again.
//!
//! When the check fails, the full walk takes the old index as its stat cache
//! ([`known_hashes`]): only files whose stat changed are read again.
//!
//! One file per (root, excluded names) in the cache's `tree-index/`, named by
//! the blake3 of both, in a small binary format written atomically. File names
//! are stored NUL-terminated, so the check passes them to the kernel in place.
//!
//! Imports `input_entry`, `tree_walk` and `stat_cache`; not `inputs`, which imports
//! it.

use std::collections::HashMap;
use std::ffi::CStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use qflow_cache::Hash;
use rayon::prelude::*;

use crate::input_entry::InputEntry;
use crate::stat_cache::{FileStat, RACY_WINDOW_NS, take};

const MAGIC: &[u8] = b"qflow-tree-index 1\n";

/// Where the index of `root` walked without `exclude` lives in `dir`.
pub fn index_path(dir: &Path, root: &Path, exclude: &[String]) -> PathBuf {
    let mut h = blake3::Hasher::new();
    h.update(b"qflow-tree-index-name 1\0");
    h.update(root.as_os_str().as_bytes());
    for x in exclude {
        h.update(b"\0");
        h.update(x.as_bytes());
    }
    dir.join(h.finalize().to_hex().as_str())
}

/// The recorded digest of `root` if every directory and entry in the index at
/// `index` still has its recorded stat, and none was racy when recorded.
pub fn check(index: &Path, root: &Path) -> Option<Hash> {
    let bytes = std::fs::read(index).ok()?;
    let mut r = bytes.strip_prefix(MAGIC)?;
    let digest = Hash(take(&mut r, 32)?.try_into().ok()?);
    let racy = take(&mut r, 1)?[0] != 0;
    if racy {
        return None;
    }
    let n_dirs = u32_at(&mut r)? as usize;
    let mut dirs: Vec<&[u8]> = Vec::with_capacity(n_dirs);
    for _ in 0..n_dirs {
        let start = r;
        let rel_len = u32_at(&mut r)? as usize;
        take(&mut r, rel_len + FileStat::ENCODED_LEN)?;
        let body_len = u32_at(&mut r)? as usize;
        take(&mut r, body_len)?;
        dirs.push(&start[..start.len() - r.len()]);
    }
    if !r.is_empty() {
        return None;
    }
    let root = root.as_os_str().as_bytes();
    dirs.par_iter()
        .with_min_len(8)
        .all(|d| dir_unchanged(root, d).unwrap_or(false))
        .then_some(digest)
}

/// One directory record: it is still the same directory, and each entry other
/// than a subdirectory (checked by its own record) still has its stat.
fn dir_unchanged(root: &[u8], mut r: &[u8]) -> Option<bool> {
    let rel_len = u32_at(&mut r)? as usize;
    let rel = take(&mut r, rel_len)?;
    let recorded = FileStat::take(&mut r)?;
    let _body_len = u32_at(&mut r)?;
    let mut path = Vec::with_capacity(root.len() + rel_len + 1);
    path.extend_from_slice(root);
    let mut flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
    if rel.len() > 1 {
        // The root itself may be a symlink to the tree; nothing below it may.
        path.push(b'/');
        flags |= libc::O_NOFOLLOW;
    }
    path.extend_from_slice(rel);
    let path = CStr::from_bytes_with_nul(&path).ok()?;
    // SAFETY: path is NUL-terminated.
    let fd = unsafe { libc::open(path.as_ptr(), flags) };
    if fd < 0 {
        return Some(false);
    }
    let fd = Fd(fd);
    // SAFETY: fd is open; st is written by the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.0, &mut st) } != 0 || crate::tree_walk::file_stat(&st) != recorded {
        return Some(false);
    }
    let n = u32_at(&mut r)?;
    for _ in 0..n {
        let name_len = u16::from_le_bytes(take(&mut r, 2)?.try_into().ok()?) as usize;
        let name = CStr::from_bytes_with_nul(take(&mut r, name_len)?).ok()?;
        let kind = take(&mut r, 1)?[0];
        if kind == b'D' {
            continue;
        }
        let recorded = FileStat::take(&mut r)?;
        // The racy flag: none is set, or the index would not be checked.
        take(&mut r, 1)?;
        match kind {
            b'F' | b'X' => {
                take(&mut r, 32)?;
            }
            b'L' => {
                let len = u32_at(&mut r)? as usize;
                take(&mut r, len)?;
            }
            _ => return None,
        }
        // SAFETY: fd is an open directory, name is NUL-terminated.
        let rc = unsafe { libc::fstatat(fd.0, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
        if rc != 0 || crate::tree_walk::file_stat(&st) != recorded {
            return Some(false);
        }
    }
    Some(true)
}

/// A file descriptor closed on drop.
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the descriptor is open and closed once.
        unsafe {
            libc::close(self.0);
        }
    }
}

/// The files of the index at `index` whose hash can be trusted while their
/// stat is unchanged: relative path → (stat, hash). Empty when there is none.
pub fn known_hashes(index: &Path) -> HashMap<String, (FileStat, Hash)> {
    let mut known = HashMap::new();
    let Ok(bytes) = std::fs::read(index) else {
        return known;
    };
    let _ = read_known(&bytes, &mut known);
    known
}

fn read_known(bytes: &[u8], known: &mut HashMap<String, (FileStat, Hash)>) -> Option<()> {
    let mut r = bytes.strip_prefix(MAGIC)?;
    take(&mut r, 33)?;
    let n_dirs = u32_at(&mut r)?;
    for _ in 0..n_dirs {
        let rel_len = u32_at(&mut r)? as usize;
        let rel = without_nul(take(&mut r, rel_len)?);
        FileStat::take(&mut r)?;
        u32_at(&mut r)?;
        let n = u32_at(&mut r)?;
        for _ in 0..n {
            let name_len = u16::from_le_bytes(take(&mut r, 2)?.try_into().ok()?) as usize;
            let name = without_nul(take(&mut r, name_len)?);
            let kind = take(&mut r, 1)?[0];
            if kind == b'D' {
                continue;
            }
            let stat = FileStat::take(&mut r)?;
            let racy = take(&mut r, 1)?[0] != 0;
            match kind {
                b'F' | b'X' => {
                    let hash = Hash(take(&mut r, 32)?.try_into().ok()?);
                    if !racy {
                        let name = String::from_utf8_lossy(name);
                        let path = if rel.is_empty() {
                            name.into_owned()
                        } else {
                            format!("{}/{name}", String::from_utf8_lossy(rel))
                        };
                        known.insert(path, (stat, hash));
                    }
                }
                _ => {
                    let len = u32_at(&mut r)? as usize;
                    take(&mut r, len)?;
                }
            }
        }
    }
    Some(())
}

/// Record a full walk of a tree: its root's stat, its entries in walk order
/// with their stats (`stats[i]` for `entries[i]`), its digest, and when the walk
/// started. Written atomically.
pub fn write(
    index: &Path,
    root: FileStat,
    entries: &[(String, InputEntry)],
    stats: &[FileStat],
    digest: Hash,
    walked_at_ns: i64,
) -> anyhow::Result<()> {
    let is_racy = |s: &FileStat| {
        s.mtime_ns >= walked_at_ns - RACY_WINDOW_NS || s.ctime_ns >= walked_at_ns - RACY_WINDOW_NS
    };
    // Directories in walk order, the root first, each with its direct entries.
    let mut dirs: Vec<(&str, FileStat, Vec<usize>)> = vec![("", root, Vec::new())];
    let mut dir_index: HashMap<&str, usize> = HashMap::new();
    dir_index.insert("", 0);
    let mut racy = is_racy(&root);
    for (i, (rel, e)) in entries.iter().enumerate() {
        let parent = rel.rsplit_once('/').map_or("", |(p, _)| p);
        let Some(&d) = dir_index.get(parent) else {
            anyhow::bail!("internal error: `{rel}` listed before its directory");
        };
        dirs[d].2.push(i);
        racy |= is_racy(&stats[i]);
        if matches!(e, InputEntry::Dir) {
            dir_index.insert(rel, dirs.len());
            dirs.push((rel, stats[i], Vec::new()));
        }
    }
    let mut out = Vec::with_capacity(MAGIC.len() + 37 + entries.len() * 100);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&digest.0);
    out.push(u8::from(racy));
    out.extend_from_slice(&(dirs.len() as u32).to_le_bytes());
    let mut body = Vec::new();
    for (rel, stat, children) in &dirs {
        out.extend_from_slice(&(rel.len() as u32 + 1).to_le_bytes());
        out.extend_from_slice(rel.as_bytes());
        out.push(0);
        stat.put(&mut out);
        body.clear();
        body.extend_from_slice(&(children.len() as u32).to_le_bytes());
        for &i in children {
            let (rel, e) = &entries[i];
            let name = rel.rsplit_once('/').map_or(rel.as_str(), |(_, n)| n);
            body.extend_from_slice(&(name.len() as u16 + 1).to_le_bytes());
            body.extend_from_slice(name.as_bytes());
            body.push(0);
            match e {
                InputEntry::Dir => body.push(b'D'),
                InputEntry::File { executable, hash } => {
                    body.push(if *executable { b'X' } else { b'F' });
                    stats[i].put(&mut body);
                    body.push(u8::from(is_racy(&stats[i])));
                    body.extend_from_slice(&hash.0);
                }
                InputEntry::Symlink { target } => {
                    body.push(b'L');
                    stats[i].put(&mut body);
                    body.push(u8::from(is_racy(&stats[i])));
                    body.extend_from_slice(&(target.len() as u32).to_le_bytes());
                    body.extend_from_slice(target.as_bytes());
                }
            }
        }
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
    }
    if let Some(dir) = index.parent() {
        std::fs::create_dir_all(dir)?;
    }
    qflow_cache::write_atomic(index, &out)
}

fn u32_at(r: &mut &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(take(r, 4)?.try_into().ok()?))
}

fn without_nul(b: &[u8]) -> &[u8] {
    b.strip_suffix(&[0]).unwrap_or(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree_walk::WalkEntry;

    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str) -> Tree {
            let root = std::env::temp_dir().join(format!(
                "qflow-tree-index-{name}-{}-{}",
                std::process::id(),
                crate::stat_cache::now_ns()
            ));
            for d in ["src/lib", "docs", ".git"] {
                std::fs::create_dir_all(root.join(d)).unwrap();
            }
            std::fs::write(root.join("src/main.c"), "int main;\n").unwrap();
            std::fs::write(root.join("src/lib/util.c"), "int util;\n").unwrap();
            std::fs::write(root.join("docs/README"), "read me\n").unwrap();
            std::fs::write(root.join(".git/HEAD"), "ref\n").unwrap();
            std::os::unix::fs::symlink("src/main.c", root.join("main")).unwrap();
            Tree(root)
        }

        fn index(&self) -> PathBuf {
            self.0.with_extension("index")
        }

        /// Walk, hash and index the tree as a full walk does, `age_ns` after
        /// the walk (so its entries are not racy).
        fn record(&self, age_ns: i64) -> Hash {
            let walk = crate::tree_walk::walk(&self.0, &[".git".into()]).unwrap();
            let mut entries = Vec::new();
            let mut stats = Vec::new();
            for (rel, e) in walk.entries {
                let (entry, stat) = match e {
                    WalkEntry::File(p, st) => (
                        InputEntry::File {
                            executable: st.mode & 0o111 != 0,
                            hash: qflow_cache::hash_file(&p).unwrap(),
                        },
                        st,
                    ),
                    WalkEntry::Symlink(target, st) => (InputEntry::Symlink { target }, st),
                    WalkEntry::Dir(st) => (InputEntry::Dir, st),
                };
                entries.push((rel, entry));
                stats.push(stat);
            }
            let digest = crate::input_entry::digest_of(&entries);
            let walked_at = crate::stat_cache::now_ns() - age_ns;
            write(
                &self.index(),
                walk.root,
                &entries,
                &stats,
                digest,
                walked_at,
            )
            .unwrap();
            digest
        }

        fn check(&self) -> Option<Hash> {
            check(&self.index(), &self.0)
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
            let _ = std::fs::remove_file(self.index());
        }
    }

    const OLD: i64 = -2 * RACY_WINDOW_NS;

    #[test]
    fn an_untouched_tree_is_proven_by_its_index_with_the_recorded_digest() {
        let t = Tree::new("untouched");
        let digest = t.record(OLD);
        assert_eq!(t.check(), Some(digest));
        assert_eq!(known_hashes(&t.index()).len(), 3);
    }

    #[test]
    fn a_tree_indexed_right_after_an_edit_is_racy_and_never_trusted() {
        let t = Tree::new("racy");
        t.record(0);
        assert_eq!(t.check(), None);
        assert!(
            known_hashes(&t.index()).is_empty(),
            "racy files must be read again"
        );
    }

    #[test]
    fn every_kind_of_change_defeats_the_index() {
        type Change = fn(&Path);
        let changes: [(&str, Change); 9] = [
            ("same-size edit", |r| {
                std::fs::write(r.join("src/main.c"), "int mian;\n").unwrap()
            }),
            ("new file deep down", |r| {
                std::fs::write(r.join("src/lib/new.c"), "").unwrap()
            }),
            ("removed file", |r| {
                std::fs::remove_file(r.join("docs/README")).unwrap()
            }),
            ("rename", |r| {
                std::fs::rename(r.join("src/lib/util.c"), r.join("src/lib/utils.c")).unwrap()
            }),
            ("chmod +x", |r| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(
                    r.join("docs/README"),
                    std::fs::Permissions::from_mode(0o755),
                )
                .unwrap()
            }),
            ("symlink retargeted", |r| {
                std::fs::remove_file(r.join("main")).unwrap();
                std::os::unix::fs::symlink("src/lib/util.c", r.join("main")).unwrap();
            }),
            ("directory replaced by a symlink", |r| {
                std::fs::remove_dir_all(r.join("src/lib")).unwrap();
                std::os::unix::fs::symlink("/tmp", r.join("src/lib")).unwrap();
            }),
            ("new empty directory", |r| {
                std::fs::create_dir(r.join("docs/more")).unwrap()
            }),
            ("file replaced by an editor's atomic save", |r| {
                std::fs::write(r.join("src/.main.c.swp"), "int main;\n").unwrap();
                std::fs::rename(r.join("src/.main.c.swp"), r.join("src/main.c")).unwrap();
            }),
        ];
        for (what, change) in changes {
            let t = Tree::new("change");
            t.record(OLD);
            assert!(t.check().is_some(), "{what}: the fresh index must hold");
            // Past the kernel's coarse timestamp tick: within it, a same-size edit
            // is exactly the racy case that a real (unfaked) walk time covers.
            std::thread::sleep(std::time::Duration::from_millis(30));
            change(&t.0);
            assert_eq!(t.check(), None, "{what} went unnoticed");
        }
    }

    #[test]
    fn an_excluded_directory_may_change_freely() {
        let t = Tree::new("excluded");
        let digest = t.record(OLD);
        std::fs::write(t.0.join(".git/HEAD"), "other\n").unwrap();
        std::fs::write(t.0.join(".git/index"), "new\n").unwrap();
        assert_eq!(t.check(), Some(digest));
    }

    #[test]
    fn a_corrupt_or_missing_index_proves_nothing() {
        let t = Tree::new("corrupt");
        assert_eq!(t.check(), None);
        t.record(OLD);
        let bytes = std::fs::read(t.index()).unwrap();
        std::fs::write(t.index(), &bytes[..bytes.len() - 7]).unwrap();
        assert_eq!(t.check(), None);
        assert!(known_hashes(&t.index()).len() <= 3);
    }
}
