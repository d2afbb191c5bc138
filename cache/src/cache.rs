//! `Cache`: one directory holding everything qflow keeps between runs.
//!
//! ```text
//! <root>/VERSION                 "qflow-cache 1"
//! <root>/lock                    the workspace lock (see lock.rs)
//! <root>/objects/ab/abcd…[.x]    file contents by blake3, read-only (`.x`: the executable copy)
//! <root>/trees/<hash>/           committed output trees, read-only, files hard-linked to objects
//! <root>/trees/.tmp-…/           output trees being written by a running step
//! <root>/manifests/ab/<hash>.json     each tree's manifest; `.retains` the trees it needs alive
//! <root>/stamps/ab/<hash>        each tree's stat fields, checked on every use (tree_stamp.rs)
//! <root>/records/ab/<step key>   action records: step key → output manifest (JSON)
//! <root>/tmp/started/j-…         journals of "this step started and has not ended" marks (started.rs)
//! <root>/tmp/spare/              empty directories kept to be moved into place (spare_dirs.rs)
//! <root>/runs, logs, state       owned by the engine
//! ```
//!
//! Nothing in the cache stores an absolute path, so the whole directory can be moved or
//! shared (`--cache DIR`) without invalidating anything.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The version line this code writes and understands.
pub const CACHE_VERSION: &str = "qflow-cache 1";

/// Directories `Cache::open` creates under the root.
const DIRS: &[&str] = &[
    "objects",
    "trees",
    "manifests",
    "records",
    "runs",
    "logs",
    "state",
    "tmp",
    "tmp/started",
    "tmp/spare",
];

/// A qflow cache directory.
#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
    /// Trees found changed since they were committed, and removed (see `tree_stamp.rs`).
    pub(crate) damaged: std::sync::Arc<std::sync::Mutex<Vec<crate::DamagedTree>>>,
    /// This handle's started-mark journal (see `started.rs`).
    pub(crate) started: crate::started::SharedJournal,
}

impl Cache {
    /// Opens (creating if needed) the cache at `root`. Refuses a cache written by an
    /// incompatible qflow.
    pub fn open(root: &Path) -> anyhow::Result<Cache> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("cannot create the cache directory `{}`", root.display()))?;
        let version_file = root.join("VERSION");
        match std::fs::read_to_string(&version_file) {
            Ok(v) => {
                if v.trim() != CACHE_VERSION {
                    bail!(
                        "the cache at `{}` has version `{}` but this qflow understands `{CACHE_VERSION}`; \
                         use another cache directory (`--cache DIR`) or delete this one",
                        root.display(),
                        v.trim()
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                crate::write_atomic(&version_file, format!("{CACHE_VERSION}\n").as_bytes())?;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read `{}`", version_file.display()));
            }
        }
        for d in DIRS {
            let p = root.join(d);
            std::fs::create_dir_all(&p)
                .with_context(|| format!("cannot create `{}`", p.display()))?;
        }
        Ok(Cache {
            root: root.to_path_buf(),
            damaged: Default::default(),
            started: Default::default(),
        })
    }

    /// The cache's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A directory directly under the root, e.g. `logs`, `state`, `runs`.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// `<root>/<top>/<hex[0..2]>/<hex><suffix>`: the sharded layout of objects, manifests and records.
    pub(crate) fn sharded(&self, top: &str, h: &crate::Hash, suffix: &str) -> PathBuf {
        let hex = h.to_hex();
        self.root
            .join(top)
            .join(&hex[..2])
            .join(format!("{hex}{suffix}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_creates_the_layout_and_refuses_an_unknown_version() {
        let dir = crate::test_dir("open");
        let root = dir.join("c");
        let c = Cache::open(&root).unwrap();
        for d in [
            "objects", "trees", "records", "runs", "logs", "state", "tmp",
        ] {
            assert!(c.dir(d).is_dir(), "{d}");
        }
        Cache::open(&root).unwrap();
        std::fs::write(root.join("VERSION"), "qflow-cache 99\n").unwrap();
        let err = Cache::open(&root).unwrap_err().to_string();
        assert!(err.contains("qflow-cache 99"), "{err}");
    }
}
