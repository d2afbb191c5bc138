//! qflow's cache: bytes, keys and locks, and nothing about workflows or QEMU.
//!
//! - [`Hash`](struct@Hash) / [`hash_file`]: blake3 content hashes.
//! - [`Cache`]: one directory (layout in `cache.rs`) holding the object store, committed
//!   output trees with their [`Manifest`]s, action [`Record`]s (step key → output), started
//!   marks for crash detection, and the [`WorkspaceLock`].
//! - [`remote::RemoteCache`]: the same cache shared over HTTP (Bazel's remote-cache protocol).
//! - [`write_atomic`] and [`link_or_copy`]: the two primitives every write goes through.
//!
//! A step's life in the cache: `new_tree` → the step writes into `TempTree::path` →
//! `commit_tree` (objects in, tree renamed to `trees/<hash>`, all fsynced) → `put_record`.
//! Later: `get_record` + `has_tree_for(&record.manifest)` (or `restore_tree`) is a cache hit.
//!
//! Invariant: a crash at any point leaves either no record or a complete one whose tree and
//! objects are durable, because every name appears by `rename` after its content is fsynced,
//! and the engine writes a record only after `commit_tree` returned.

#![warn(missing_docs)]

mod atomic;
mod cache;
mod dir_handle;
mod gc;
mod hash;
mod link;
mod lock;
mod object_store;
mod probe;
mod record;
pub mod remote;
mod spare_dirs;
mod started;
mod tree;
mod tree_stamp;

pub use atomic::{
    Staged, fsync_dir, remove_dir_force, write_atomic, write_atomic_with, write_hint_with,
    write_replace, write_replace_with,
};
pub use cache::{CACHE_VERSION, Cache};
pub use dir_handle::DirHandle;
pub use gc::{GcStats, STALE_TMP_AGE};
pub use hash::{Hash, MMAP_THRESHOLD, hash_file};
pub use link::{LinkKind, link_or_copy};
pub use lock::{LockWait, WorkspaceLock};
pub use probe::CacheProbe;
pub use record::Record;
pub use spare_dirs::{SPARE_DIRS, SpareDirs};
pub use tree::{Entry, EntryKind, MANIFEST_VERSION, Manifest, TempTree};
pub use tree_stamp::{DamagedTree, FsckReport, TreeCheck};

/// A fresh, empty directory for one test under the system temp dir, removed on drop.
#[cfg(test)]
pub(crate) struct TestDir(std::path::PathBuf);

#[cfg(test)]
impl std::ops::Deref for TestDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

#[cfg(test)]
impl AsRef<std::path::Path> for TestDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

#[cfg(test)]
impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = remove_dir_force(&self.0);
    }
}

#[cfg(test)]
pub(crate) fn test_dir(name: &str) -> TestDir {
    let dir = std::env::temp_dir().join(format!(
        "qflow-cache-test-{name}-{}",
        atomic::unique_tmp_name()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    TestDir(dir)
}

/// A new cache in a fresh test directory (keep the `TestDir` alive while using it).
#[cfg(test)]
pub(crate) fn test_cache(name: &str) -> (TestDir, Cache) {
    let dir = test_dir(name);
    let cache = Cache::open(&dir.join("cache")).unwrap();
    (dir, cache)
}
