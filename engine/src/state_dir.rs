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
//! The proof is a mark, `.qflow-running` inside the directory, written before
//! the step runs and removed only when it ended cleanly. Imports nothing of the engine.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The mark's file name inside the state directory.
pub const RUNNING_MARK: &str = ".qflow-running";

/// A state directory held by one run of its step.
pub struct StateDir {
    mark: PathBuf,
}

impl StateDir {
    /// Create `dir` if needed and mark it in use. A mark already there means a
    /// run was killed in it: the directory is emptied first, and `Ok(true)`
    /// says so (the caller warns).
    pub fn enter(dir: &Path) -> anyhow::Result<(StateDir, bool)> {
        let mark = dir.join(RUNNING_MARK);
        let emptied = mark.exists();
        if emptied {
            for entry in std::fs::read_dir(dir)
                .with_context(|| format!("cannot read `{}`", dir.display()))?
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
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create `{}`", dir.display()))?;
        std::fs::write(&mark, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write `{}`", mark.display()))?;
        Ok((StateDir { mark }, emptied))
    }

    /// The step ended cleanly (succeeded, failed, or stopped by SIGTERM in time):
    /// its programs' own checks hold, and the next run may build on the directory.
    pub fn leave_clean(self) {
        let _ = std::fs::remove_file(&self.mark);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_directory_left_by_a_killed_run_is_emptied_and_a_clean_one_kept() {
        let dir = std::env::temp_dir().join(format!("qflow-state-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (state, emptied) = StateDir::enter(&dir).unwrap();
        assert!(!emptied);
        std::fs::write(dir.join("vmlinux.o"), "whole").unwrap();
        state.leave_clean();
        let (state, emptied) = StateDir::enter(&dir).unwrap();
        assert!(!emptied, "a clean end keeps the directory");
        assert!(dir.join("vmlinux.o").exists());
        std::fs::create_dir_all(dir.join("build/sub")).unwrap();
        std::fs::write(dir.join("build/sub/half.o"), "hal").unwrap();
        drop(state); // killed: the mark stays
        let (_state, emptied) = StateDir::enter(&dir).unwrap();
        assert!(emptied);
        assert!(!dir.join("vmlinux.o").exists() && !dir.join("build").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
