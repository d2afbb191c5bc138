//! Spare empty directories, moved into place instead of created and deleted.
//!
//! Every step that runs needs two directories that often end empty: its output
//! staging directory (discarded when an identical tree is committed already,
//! e.g. a step with no outputs) and its state directory (removed when the step
//! left it empty). Creating and deleting a directory per step costs most of a
//! run of small steps on a filesystem where each create steps past every inode
//! deleted lately (ext4 without a journal). So an empty directory that would be
//! deleted is renamed into `tmp/spare/` instead (at most [`SPARE_DIRS`] of them),
//! and one is renamed out of there when a new directory is needed. A rename
//! creates and deletes no inode. A spare is taken only if it is still empty,
//! with its mode reset; any failure (none left, another process took it, another
//! filesystem) falls back to creating a directory.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// At most this many spare directories are kept.
pub const SPARE_DIRS: usize = 16;

/// The pool of spare empty directories of one cache (`<root>/tmp/spare`).
#[derive(Clone, Debug)]
pub struct SpareDirs {
    dir: PathBuf,
}

fn is_empty_dir(path: &Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_none())
}

impl SpareDirs {
    /// The pool kept in `dir`.
    pub fn at(dir: PathBuf) -> SpareDirs {
        SpareDirs { dir }
    }

    /// Where the pool is.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Move a spare empty directory to `dest` (which must not exist). False when
    /// there is none to take: the caller creates the directory.
    pub fn take(&self, dest: &Path) -> bool {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return false;
        };
        for entry in entries.flatten() {
            let spare = entry.path();
            if !is_empty_dir(&spare) {
                continue;
            }
            if std::fs::rename(&spare, dest).is_ok() {
                // As `mkdir` would have made it (the umask applies to that one only).
                let mode = 0o777 & !current_umask();
                let _ = std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode));
                return true;
            }
        }
        false
    }

    /// Keep the empty directory `path` as a spare instead of removing it. False
    /// (the directory stays where it is) when it is not empty or the pool is full.
    pub fn give(&self, path: &Path) -> bool {
        if !is_empty_dir(path) {
            return false;
        }
        let count = std::fs::read_dir(&self.dir).map_or(usize::MAX, |d| d.count());
        if count >= SPARE_DIRS {
            return false;
        }
        let name = self.dir.join(crate::atomic::unique_tmp_name());
        std::fs::rename(path, name).is_ok()
    }

    /// Keep `path` as a spare if it is empty and there is room; else remove it.
    pub fn give_or_remove(&self, path: &Path) {
        if !self.give(path) {
            let _ = std::fs::remove_dir(path);
        }
    }
}

/// The process's umask, from `/proc/self/status` (022 if it cannot be read).
fn current_umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("Umask:"))?;
                u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
            })
            .unwrap_or(0o022)
    })
}

impl crate::Cache {
    /// This cache's spare directories.
    pub fn spare_dirs(&self) -> SpareDirs {
        SpareDirs::at(self.dir("tmp").join("spare"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_directory_given_back_is_taken_again_instead_of_created() {
        let (_dir, c) = crate::test_cache("spare");
        let pool = c.spare_dirs();
        let a = c.dir("state").join("a");
        std::fs::create_dir(&a).unwrap();
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o500)).unwrap();
        assert!(pool.give(&a));
        assert!(!a.exists());
        let b = c.dir("trees").join("b");
        assert!(pool.take(&b));
        assert!(b.is_dir());
        let mode = std::fs::metadata(&b).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o777 & !current_umask());
        assert!(!pool.take(&c.dir("trees").join("c")), "the pool is empty");
    }

    #[test]
    fn a_directory_with_anything_in_it_is_never_a_spare() {
        let (_dir, c) = crate::test_cache("spare_full");
        let pool = c.spare_dirs();
        let a = c.dir("state").join("a");
        std::fs::create_dir(&a).unwrap();
        std::fs::write(a.join("f"), "x").unwrap();
        assert!(!pool.give(&a));
        // One that got a file after it was given is not taken.
        std::fs::remove_file(a.join("f")).unwrap();
        assert!(pool.give(&a));
        let spare = std::fs::read_dir(pool.dir())
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        std::fs::write(spare.path().join("late"), "x").unwrap();
        assert!(!pool.take(&c.dir("trees").join("b")));
    }

    #[test]
    fn the_pool_keeps_a_bounded_number_of_spares() {
        let (_dir, c) = crate::test_cache("spare_bound");
        let pool = c.spare_dirs();
        for i in 0..SPARE_DIRS + 3 {
            let d = c.dir("state").join(format!("d{i}"));
            std::fs::create_dir(&d).unwrap();
            pool.give_or_remove(&d);
            assert!(!d.exists());
        }
        assert_eq!(std::fs::read_dir(pool.dir()).unwrap().count(), SPARE_DIRS);
    }
}
