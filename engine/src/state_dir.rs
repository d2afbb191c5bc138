//! A step's kept state directory (`$QFLOW_STATE`), trusted only after a clean end.
//!
//! A kind keeps what makes its next run fast there (the kernel's `O=` build
//! tree); the directory survives runs and is never part of a result. A
//! program's own check keeps it sound across failures and Ctrl-C: make
//! deletes the target it was writing when it gets SIGTERM or fails. Nothing
//! can run after SIGKILL, so a state directory whose step was killed that way
//! (the grace period after SIGTERM ran out, or qflow itself was killed) may
//! hold a half-written file that looks newer than its sources. Such a
//! directory is emptied before the step's next run: the run starts afresh
//! instead of building on it.
//!
//! The proof is a mark on the directory, set before the step runs and removed
//! only when it ended cleanly: the extended attribute `user.qflow.running`, or
//! where the filesystem has no user attributes, a file `.qflow-running` inside
//! (either one found means a killed run). The attribute creates no file: a run
//! of thousands of small steps would otherwise create and delete a mark file
//! per step, which on ext4 without a journal slows every later create. A
//! directory the step left empty is removed at a clean end, or kept as a spare
//! of the cache for the next one that needs a new directory (`SpareDirs`).
//! Imports nothing of the engine.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use qflow_cache::SpareDirs;

/// The mark file's name inside the state directory, where attributes are not supported.
pub const RUNNING_MARK: &str = ".qflow-running";

/// The mark's extended attribute on the state directory.
const RUNNING_ATTR: &str = "user.qflow.running";

/// A state directory held by one run of its step.
pub struct StateDir {
    dir: PathBuf,
    /// The mark is a file (the filesystem refused the attribute).
    mark_file: bool,
}

fn c_path(path: &Path) -> Option<CString> {
    CString::new(path.as_os_str().as_bytes()).ok()
}

fn attr_name() -> CString {
    CString::new(RUNNING_ATTR).expect("no NUL")
}

/// Whether `dir` carries the attribute mark.
fn has_attr(dir: &Path) -> bool {
    let Some(p) = c_path(dir) else { return false };
    // SAFETY: valid C strings; a zero-sized query writes nothing.
    unsafe { libc::getxattr(p.as_ptr(), attr_name().as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

/// Set the attribute mark on `dir`; false when the filesystem refuses it.
fn set_attr(dir: &Path) -> bool {
    let Some(p) = c_path(dir) else { return false };
    let value = std::process::id().to_string();
    // SAFETY: valid C strings and a buffer of the length given.
    unsafe {
        libc::setxattr(
            p.as_ptr(),
            attr_name().as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        ) == 0
    }
}

fn remove_attr(dir: &Path) {
    if let Some(p) = c_path(dir) {
        // SAFETY: valid C strings.
        unsafe { libc::removexattr(p.as_ptr(), attr_name().as_ptr()) };
    }
}

impl StateDir {
    /// Whether `dir` is marked in use: a run in it was killed (or is running now).
    pub fn is_marked(dir: &Path) -> bool {
        has_attr(dir) || dir.join(RUNNING_MARK).exists()
    }

    /// Create `dir` if needed and mark it in use. A mark already there means a
    /// run was killed in it: the directory is emptied first, and `Ok(true)`
    /// says so (the caller warns).
    /// A new directory is a spare of `spares` moved there when there is one.
    pub fn enter(dir: &Path, spares: Option<&SpareDirs>) -> anyhow::Result<(StateDir, bool)> {
        // A directory made here is fresh: no mark to look for.
        let made = match spares {
            Some(spares) if !dir.exists() && spares.take(dir) => Ok(()),
            _ => std::fs::create_dir(dir),
        };
        let emptied = match made {
            Ok(()) => false,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let marked = StateDir::is_marked(dir);
                if marked {
                    empty(dir)?;
                }
                marked
            }
            Err(_) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create `{}`", dir.display()))?;
                false
            }
        };
        let mark_file = !set_attr(dir);
        if mark_file {
            let mark = dir.join(RUNNING_MARK);
            std::fs::write(&mark, format!("{}\n", std::process::id()))
                .with_context(|| format!("cannot write `{}`", mark.display()))?;
        }
        Ok((
            StateDir {
                dir: dir.to_path_buf(),
                mark_file,
            },
            emptied,
        ))
    }

    /// The step ended cleanly (succeeded, failed, or stopped by SIGTERM in time):
    /// its programs' own checks hold, and the next run may build on the directory.
    /// A directory the step left empty is not kept: thousands of steps would leave
    /// thousands of empty directories (4 KB each) behind.
    /// An empty one goes to `spares` when there is room.
    pub fn leave_clean(self, spares: Option<&SpareDirs>) {
        if self.mark_file {
            let _ = std::fs::remove_file(self.dir.join(RUNNING_MARK));
        } else {
            remove_attr(&self.dir);
        }
        if !spares.is_some_and(|s| s.give(&self.dir)) {
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// Remove everything in `dir`, left by a killed run, and its mark.
fn empty(dir: &Path) -> anyhow::Result<()> {
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("cannot read `{}`", dir.display()))?
    {
        let path = entry?.path();
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| {
            format!(
                "cannot empty the state directory `{}` left by a killed run; remove it by hand",
                dir.display()
            )
        })?;
    }
    remove_attr(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_kept_and_emptied(dir: &Path) {
        let _ = std::fs::remove_dir_all(dir);
        let (state, emptied) = StateDir::enter(dir, None).unwrap();
        assert!(!emptied);
        assert!(StateDir::is_marked(dir));
        std::fs::write(dir.join("vmlinux.o"), "whole").unwrap();
        state.leave_clean(None);
        assert!(!StateDir::is_marked(dir), "a clean end removes the mark");
        let (state, emptied) = StateDir::enter(dir, None).unwrap();
        assert!(!emptied, "a clean end keeps the directory");
        assert!(dir.join("vmlinux.o").exists());
        std::fs::create_dir_all(dir.join("build/sub")).unwrap();
        std::fs::write(dir.join("build/sub/half.o"), "hal").unwrap();
        drop(state); // killed: the mark stays
        assert!(StateDir::is_marked(dir));
        let (state, emptied) = StateDir::enter(dir, None).unwrap();
        assert!(emptied);
        assert!(!dir.join("vmlinux.o").exists() && !dir.join("build").exists());
        state.leave_clean(None);
        assert!(!dir.exists(), "a directory left empty is removed");
    }

    #[test]
    fn a_state_directory_left_by_a_killed_run_is_emptied_and_a_clean_one_kept() {
        let dir = std::env::temp_dir().join(format!("qflow-state-test-{}", std::process::id()));
        check_kept_and_emptied(&dir);
    }

    #[test]
    fn a_state_directory_on_tmpfs_is_marked_and_emptied_the_same() {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            check_kept_and_emptied(&shm.join(format!("qflow-state-test-{}", std::process::id())));
        }
    }

    #[test]
    fn an_empty_state_directory_becomes_a_spare_and_a_new_one_is_a_spare_moved_in() {
        let root = std::env::temp_dir().join(format!("qflow-state-spare-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let spares = SpareDirs::at(root.join("spare"));
        std::fs::create_dir_all(spares.dir()).unwrap();
        let count = || std::fs::read_dir(spares.dir()).unwrap().count();
        let dir = root.join("step");
        let (state, _) = StateDir::enter(&dir, Some(&spares)).unwrap();
        state.leave_clean(Some(&spares));
        assert!(!dir.exists());
        assert_eq!(count(), 1);
        let (state, emptied) = StateDir::enter(&dir, Some(&spares)).unwrap();
        assert!(!emptied && dir.is_dir() && StateDir::is_marked(&dir));
        assert_eq!(count(), 0, "the spare was moved in");
        std::fs::write(dir.join("kept"), "x").unwrap();
        state.leave_clean(Some(&spares));
        assert!(dir.join("kept").exists() && !StateDir::is_marked(&dir));
        assert_eq!(count(), 0);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_mark_file_left_by_a_killed_run_is_seen() {
        let dir = std::env::temp_dir().join(format!("qflow-state-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("half.o"), "hal").unwrap();
        std::fs::write(dir.join(RUNNING_MARK), "1\n").unwrap();
        let (state, emptied) = StateDir::enter(&dir, None).unwrap();
        assert!(emptied && !dir.join("half.o").exists());
        state.leave_clean(None);
        assert!(!dir.exists());
    }
}
