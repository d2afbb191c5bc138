//! The rebuild's temporary directory: under `$TMPDIR` (or `--work-dir`), never
//! inside the workflow's directory, where a step's directory input would see it.
//! Removed when dropped (read-only cache trees included) unless kept.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// A `.qflow-verify-*` directory.
pub struct Scratch {
    /// The directory.
    pub path: PathBuf,
    keep: bool,
}

impl Scratch {
    /// A new directory under `parent`, removed on drop unless `keep`.
    pub fn new(parent: &Path, keep: bool) -> anyhow::Result<Scratch> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = parent.join(format!(".qflow-verify-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let path = std::path::absolute(&path)?;
        Ok(Scratch { path, keep })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("qflow: verify: kept the rebuild in {}", self.path.display());
            return;
        }
        make_writable(&self.path);
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Give the owner write permission on every directory, so the tree can be removed.
fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(m) = std::fs::symlink_metadata(&d)
            && m.is_dir()
        {
            let mut perm = m.permissions();
            perm.set_mode(perm.mode() | 0o700);
            let _ = std::fs::set_permissions(&d, perm);
            if let Ok(rd) = std::fs::read_dir(&d) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
}
