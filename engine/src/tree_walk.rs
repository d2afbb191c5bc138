//! A parallel walk of an input tree that stats each file relative to its
//! directory's descriptor.
//!
//! A no-op apply over a 78,000-file kernel tree is dominated by `lstat`: with
//! absolute paths the kernel resolves every component of every path again, so
//! files are stat'ed with `fstatat(dirfd, name)` instead, and subdirectories are
//! read in parallel (rayon). The order is deterministic: each directory's entries
//! sorted by name bytes, a directory followed by its contents (as walkdir's
//! `sort_by_file_name`). Directories and symlinks come with their own stat too:
//! the tree index (`tree_index.rs`) records them to prove a tree unchanged later.
//!
//! Imports `stat_cache`.

use std::ffi::{CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use rayon::prelude::*;

use crate::stat_cache::FileStat;

/// One entry below the walked root.
#[derive(Debug)]
pub enum WalkEntry {
    /// A regular file: its path and stat.
    File(PathBuf, FileStat),
    /// The link's target and the link's own stat.
    Symlink(String, FileStat),
    /// The directory's stat, taken on its open descriptor.
    Dir(FileStat),
}

/// A walked tree: the root directory's stat and every entry below it.
pub struct Walk {
    /// The root directory's stat.
    pub root: FileStat,
    /// (path relative to the root, entry) in walk order.
    pub entries: Vec<(String, WalkEntry)>,
}

/// Walk `root` (a directory), skipping entries named in `exclude` at any depth.
pub fn walk(root: &Path, exclude: &[String]) -> anyhow::Result<Walk> {
    let (root, entries) = walk_dir(root, "", exclude)?;
    Ok(Walk { root, entries })
}

/// An open directory stream, closed on drop.
struct Dir(*mut libc::DIR);

impl Drop for Dir {
    fn drop(&mut self) {
        // SAFETY: the pointer came from a successful opendir and is closed once.
        unsafe {
            libc::closedir(self.0);
        }
    }
}

/// This directory's stat and its entries in walk order.
type Listed = (FileStat, Vec<(String, WalkEntry)>);

fn walk_dir(abs: &Path, rel: &str, exclude: &[String]) -> anyhow::Result<Listed> {
    let cpath = CString::new(abs.as_os_str().as_bytes())?;
    // SAFETY: cpath is a valid NUL-terminated string.
    let dirp = unsafe { libc::opendir(cpath.as_ptr()) };
    if dirp.is_null() {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot read directory {}", abs.display()));
    }
    let dir = Dir(dirp);
    // SAFETY: dir.0 is an open stream.
    let fd = unsafe { libc::dirfd(dir.0) };
    // SAFETY: fd is open; buf is written by the call.
    let mut buf: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut buf) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot stat directory {}", abs.display()));
    }
    let dir_stat = file_stat(&buf);
    let mut names: Vec<(Vec<u8>, u8)> = Vec::new();
    loop {
        // SAFETY: readdir on an open stream; the entry is copied before the next call.
        let ent = unsafe { libc::readdir(dir.0) };
        if ent.is_null() {
            break;
        }
        // SAFETY: d_name is NUL-terminated within the entry.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        // SAFETY: ent is valid until the next readdir.
        let d_type = unsafe { (*ent).d_type };
        names.push((name.to_vec(), d_type));
    }
    names.sort_unstable_by(|a, b| a.0.cmp(&b.0));

    let mut out: Vec<(String, WalkEntry)> = Vec::with_capacity(names.len());
    // (index in `out` of the directory entry, its absolute path, its relative path)
    let mut subdirs: Vec<(usize, PathBuf, String)> = Vec::new();
    for (name, mut d_type) in names {
        let name_os = OsStr::from_bytes(&name);
        if exclude.iter().any(|x| x.as_bytes() == name.as_slice()) {
            continue;
        }
        let child_rel = if rel.is_empty() {
            String::from_utf8_lossy(&name).into_owned()
        } else {
            format!("{rel}/{}", String::from_utf8_lossy(&name))
        };
        let cname = CString::new(name.clone())?;
        let mut st: Option<libc::stat> = None;
        if d_type == libc::DT_UNKNOWN || d_type == libc::DT_REG || d_type == libc::DT_LNK {
            // SAFETY: fd is the open directory's descriptor; st is written by the call.
            let mut buf: libc::stat = unsafe { std::mem::zeroed() };
            let r =
                unsafe { libc::fstatat(fd, cname.as_ptr(), &mut buf, libc::AT_SYMLINK_NOFOLLOW) };
            if r != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("cannot stat {}", abs.join(name_os).display()));
            }
            d_type = match buf.st_mode & libc::S_IFMT {
                libc::S_IFDIR => libc::DT_DIR,
                libc::S_IFLNK => libc::DT_LNK,
                libc::S_IFREG => libc::DT_REG,
                _ => libc::DT_UNKNOWN,
            };
            st = Some(buf);
        }
        match d_type {
            libc::DT_DIR => {
                subdirs.push((out.len(), abs.join(name_os), child_rel.clone()));
                // The stat is filled in from the directory's own walk.
                out.push((child_rel, WalkEntry::Dir(FileStat::default())));
            }
            libc::DT_LNK => {
                let mut buf = vec![0u8; 4096];
                // SAFETY: buf has buf.len() writable bytes.
                let n = unsafe {
                    libc::readlinkat(fd, cname.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
                };
                if n < 0 {
                    return Err(std::io::Error::last_os_error()).with_context(|| {
                        format!("cannot read link {}", abs.join(name_os).display())
                    });
                }
                buf.truncate(n as usize);
                let st = st.expect("symlinks are stat'ed");
                out.push((
                    child_rel,
                    WalkEntry::Symlink(String::from_utf8_lossy(&buf).into_owned(), file_stat(&st)),
                ));
            }
            libc::DT_REG => {
                let st = st.expect("regular files are stat'ed");
                out.push((
                    child_rel,
                    WalkEntry::File(abs.join(name_os), file_stat(&st)),
                ));
            }
            // Sockets, fifos and devices are not inputs.
            _ => {}
        }
    }
    drop(dir);
    if subdirs.is_empty() {
        return Ok((dir_stat, out));
    }
    let children: Vec<anyhow::Result<Listed>> = subdirs
        .par_iter()
        .map(|(_, p, r)| walk_dir(p, r, exclude))
        .collect();
    // Splice each directory's contents right after its own entry.
    let mut result = Vec::with_capacity(out.len());
    let mut next_sub = 0;
    let mut children = children.into_iter();
    for (i, mut e) in out.into_iter().enumerate() {
        if next_sub < subdirs.len() && subdirs[next_sub].0 == i {
            next_sub += 1;
            match children.next() {
                Some(Ok((stat, c))) => {
                    e.1 = WalkEntry::Dir(stat);
                    result.push(e);
                    result.extend(c);
                }
                Some(Err(e)) => return Err(e),
                None => bail!("internal error: walk lost a directory"),
            }
        } else {
            result.push(e);
        }
    }
    Ok((dir_stat, result))
}

pub(crate) fn file_stat(st: &libc::stat) -> FileStat {
    FileStat {
        dev: st.st_dev,
        ino: st.st_ino,
        size: st.st_size as u64,
        mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
        ctime_ns: st.st_ctime * 1_000_000_000 + st.st_ctime_nsec,
        mode: st.st_mode,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_in_walkdirs_sorted_order_with_the_same_stats() {
        let root = std::env::temp_dir().join(format!("qflow-walk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["b/x", "a", "a.c", ".git"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("b/x/f"), "1").unwrap();
        std::fs::write(root.join("a/f"), "2").unwrap();
        std::fs::write(root.join("z"), "3").unwrap();
        std::fs::write(root.join(".git/HEAD"), "x").unwrap();
        std::os::unix::fs::symlink("../z", root.join("b/link")).unwrap();
        let ours: Vec<String> = walk(&root, &[".git".into()])
            .unwrap()
            .entries
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        let theirs: Vec<String> = walkdir::WalkDir::new(&root)
            .min_depth(1)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| e.file_name() != ".git")
            .map(|e| {
                e.unwrap()
                    .path()
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(ours, theirs);
        let walked = walk(&root, &[]).unwrap();
        assert_eq!(
            walked.root,
            FileStat::of(&std::fs::symlink_metadata(&root).unwrap())
        );
        let entries = walked.entries;
        let (_, WalkEntry::Dir(b)) = entries.iter().find(|(r, _)| r == "b").unwrap() else {
            panic!()
        };
        assert_eq!(
            *b,
            FileStat::of(&std::fs::symlink_metadata(root.join("b")).unwrap())
        );
        let (_, WalkEntry::File(p, st)) = entries.iter().find(|(r, _)| r == "z").unwrap() else {
            panic!()
        };
        assert_eq!(*st, FileStat::of(&std::fs::symlink_metadata(p).unwrap()));
        let (_, WalkEntry::Symlink(t, _)) = entries.iter().find(|(r, _)| r == "b/link").unwrap()
        else {
            panic!()
        };
        assert_eq!(t, "../z");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
