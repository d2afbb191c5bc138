//! `out/<step>`: a link beside the workflow to each step's output tree.
//!
//! Each link is relative (`../.qflow/trees/<hash>`), so moving the workspace
//! keeps them valid, and is swapped atomically (a new link renamed over the
//! old). A link already right is the no-op case: one `readlinkat` through a
//! handle on `out/`, no mkdir, no write.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use qflow_cache::{DirHandle, Hash};

use crate::scheduler::relative_path;

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
            trees: relative_path(root, trees),
        })
    }

    /// Whether `out/<step>` points at output tree `output` now.
    pub fn is_present(&self, step: &str, output: &Hash) -> bool {
        let target = self.trees.join(output.to_hex());
        self.dir.read_link(Path::new(step)).as_deref() == Some(target.as_path())
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
            relative_path(&d.join("out"), &trees.join(output.to_hex()))
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
}
