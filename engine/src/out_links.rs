//! `out/<step>`: a link beside the workflow to each step's output tree.
//!
//! Each link is relative (`../.qflow/trees/<hash>`), so moving the workspace
//! keeps them valid, and is swapped atomically (a new link renamed over the
//! old). A link already right is the no-op case: one `readlinkat` through a
//! handle on `out/`, no mkdir, no write.
//!
//! After a run that left every step's link right, a settled stamp notes it
//! (the lock file's blake3, the cache's records generation, `out/`'s own stat):
//! while all three are unchanged, no link can have changed either (replacing,
//! adding or removing a link changes `out/`'s mtime and ctime), so the next
//! apply skips the per-step `readlinkat` and record check. A stamp taken within
//! [`RACY_WINDOW_NS`] of `out/`'s last change is never written, for the same
//! reason as a racy stat-cache entry.
//!
//! Imports `paths` and `stat_cache`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use qflow_cache::{DirHandle, Hash};

use crate::stat_cache::RACY_WINDOW_NS;

const STAMP_MAGIC: &str = "qflow-out-settled 1";

/// The `out/` directory of one run.
pub struct OutLinks {
    root: PathBuf,
    dir: DirHandle,
    /// The cache's `trees/` as links from `root` name it.
    trees: PathBuf,
}

impl OutLinks {
    /// Open (creating) `root`, for links into the cache's `trees` directory.
    pub fn open(root: &Path, trees: &Path) -> anyhow::Result<OutLinks> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("cannot create {}", root.display()))?;
        Ok(OutLinks {
            root: root.to_path_buf(),
            dir: DirHandle::open(root)
                .with_context(|| format!("cannot open {}", root.display()))?,
            trees: crate::paths::link_target(root, trees),
        })
    }

    /// Whether `out/<step>` points at output tree `output` now.
    pub fn is_present(&self, step: &str, output: &Hash) -> bool {
        let target = self.trees.join(output.to_hex());
        self.dir.read_link(Path::new(step)).as_deref() == Some(target.as_path())
    }

    /// Whether the stamp at `stamp` says every link was right when the lock
    /// file had blake3 `lock` and the cache's records were at `generation`, and
    /// `out/` has not changed since.
    pub fn settled(&self, stamp: &Path, lock: &Hash, generation: u64) -> bool {
        let Ok(text) = std::fs::read_to_string(stamp) else {
            return false;
        };
        self.stamp_text(lock, generation)
            .is_some_and(|(now, _)| now == text)
    }

    /// [`OutLinks::settled`] of `out/` at `root`, without creating it (`qflow
    /// plan` changes nothing): false when it does not exist.
    pub fn settled_at(root: &Path, stamp: &Path, lock: &Hash, generation: u64) -> bool {
        DirHandle::open(root).is_ok_and(|dir| {
            let links = OutLinks {
                root: root.to_path_buf(),
                dir,
                trees: PathBuf::new(),
            };
            links.settled(stamp, lock, generation)
        })
    }

    /// Note that every link is right now, for the lock with blake3 `lock` and
    /// records generation `generation`; or remove the stamp when `out/`
    /// changed too recently to be sure a later change would show.
    pub fn settle(&self, stamp: &Path, lock: &Hash, generation: u64) -> anyhow::Result<()> {
        match self.stamp_text(lock, generation) {
            Some((text, changed_ns))
                if changed_ns < crate::stat_cache::now_ns() - RACY_WINDOW_NS =>
            {
                if std::fs::read_to_string(stamp).ok().as_deref() == Some(text.as_str()) {
                    return Ok(());
                }
                if let Some(dir) = stamp.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                // Not fsynced: a stamp a power cut loses only costs the next apply
                // its per-step checks, and one it tears does not match.
                qflow_cache::write_hint_with(stamp, |out| out.write_all(text.as_bytes()))
            }
            _ => Self::unsettle(stamp),
        }
    }

    /// Forget the stamp at `stamp`.
    pub fn unsettle(stamp: &Path) -> anyhow::Result<()> {
        match std::fs::remove_file(stamp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", stamp.display()))
            }
            _ => Ok(()),
        }
    }

    /// The stamp's text now, and when `out/` last changed.
    fn stamp_text(&self, lock: &Hash, generation: u64) -> Option<(String, i64)> {
        let (dev, ino, mtime, ctime) = self.dir.change_stamp()?;
        Some((
            format!(
                "{STAMP_MAGIC}\nlock {lock}\nrecords {generation}\nout {dev} {ino} {mtime} {ctime}\n",
                lock = lock.to_hex()
            ),
            mtime.max(ctime),
        ))
    }

    /// Remove `out/<step>` if it is a link (a step whose output is not here has none).
    pub fn remove(&self, step: &str) -> anyhow::Result<()> {
        let link = self.root.join(step);
        if link.is_symlink() {
            std::fs::remove_file(&link)
                .with_context(|| format!("cannot remove {}", link.display()))?;
        }
        Ok(())
    }

    /// Point `out/<step>` at output tree `output`.
    pub fn present(&self, step: &str, output: &Hash) -> anyhow::Result<()> {
        if self.is_present(step, output) {
            return Ok(());
        }
        let target = self.trees.join(output.to_hex());
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("cannot create {}", self.root.display()))?;
        let link = self.root.join(step);
        let tmp = self
            .root
            .join(format!(".{step}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp)
            .with_context(|| format!("cannot create link {}", tmp.display()))?;
        if link.is_dir() && !link.is_symlink() {
            std::fs::remove_dir_all(&link)?;
        }
        std::fs::rename(&tmp, &link)
            .with_context(|| format!("cannot update {}", link.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_points_where_a_relative_path_to_the_tree_leads() {
        let d = std::env::temp_dir().join(format!("qflow-outlinks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let trees = d.join(".qflow/trees");
        let output = Hash::of_bytes(b"tree");
        std::fs::create_dir_all(trees.join(output.to_hex())).unwrap();
        let links = OutLinks::open(&d.join("out"), &trees).unwrap();
        links.present("gen", &output).unwrap();
        let target = std::fs::read_link(d.join("out/gen")).unwrap();
        assert_eq!(
            target,
            crate::paths::link_target(&d.join("out"), &trees.join(output.to_hex()))
        );
        assert!(d.join("out/gen").is_dir());
        // A deleted link is made again; a wrong one is replaced.
        std::fs::remove_file(d.join("out/gen")).unwrap();
        links.present("gen", &output).unwrap();
        assert_eq!(std::fs::read_link(d.join("out/gen")).unwrap(), target);
        std::os::unix::fs::symlink("elsewhere", d.join("out/other")).unwrap();
        links.present("other", &output).unwrap();
        assert_eq!(std::fs::read_link(d.join("out/other")).unwrap(), target);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_settled_stamp_holds_until_a_link_the_lock_or_the_records_change() {
        let d = std::env::temp_dir().join(format!("qflow-settled-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let trees = d.join(".qflow/trees");
        let output = Hash::of_bytes(b"tree");
        std::fs::create_dir_all(trees.join(output.to_hex())).unwrap();
        let stamp = d.join(".qflow/state/settled");
        let lock = Hash::of_bytes(b"lock");
        let links = OutLinks::open(&d.join("out"), &trees).unwrap();
        links.present("gen", &output).unwrap();
        links.settle(&stamp, &lock, 0).unwrap();
        assert!(!stamp.exists(), "out/ just changed: no stamp");
        assert!(!links.settled(&stamp, &lock, 0));

        // Pretend out/ changed long ago: write the stamp as settle would.
        let (text, _) = links.stamp_text(&lock, 0).unwrap();
        std::fs::create_dir_all(stamp.parent().unwrap()).unwrap();
        std::fs::write(&stamp, text).unwrap();
        assert!(links.settled(&stamp, &lock, 0));
        assert!(!links.settled(&stamp, &Hash::of_bytes(b"other lock"), 0));
        assert!(
            !links.settled(&stamp, &lock, 1),
            "a record was removed since"
        );
        std::thread::sleep(std::time::Duration::from_millis(30));
        std::fs::remove_file(d.join("out/gen")).unwrap();
        std::os::unix::fs::symlink("elsewhere", d.join("out/gen")).unwrap();
        assert!(
            !links.settled(&stamp, &lock, 0),
            "a replaced link went unnoticed"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
