//! qflow's cache: bytes, keys and locks, and nothing about workflows or QEMU.
//!
//! - [`Hash`] / [`hash_file`]: blake3 content hashes.
//! - [`Cache`]: one directory (layout in `cache.rs`) holding the object store, committed
//!   output trees with their [`Manifest`]s, action [`Record`]s (step key → output), started
//!   marks for crash detection, and the [`WorkspaceLock`].
//! - [`write_atomic`] and [`link_or_copy`]: the two primitives every write goes through.
//!
//! Invariant: a crash at any point leaves either no record or a complete one whose tree and
//! objects are durable, because every name appears by `rename` after its content is fsynced,
//! and the engine writes a record only after `commit_tree` returned.

mod atomic;
mod cache;
mod gc;
mod hash;
mod link;
mod lock;
mod object_store;
mod record;
mod tree;

pub use atomic::{fsync_dir, remove_dir_force, write_atomic};
pub use cache::{CACHE_VERSION, Cache};
pub use gc::{GcStats, STALE_TMP_AGE};
pub use hash::{Hash, MMAP_THRESHOLD, hash_file};
pub use link::{LinkKind, link_or_copy};
pub use lock::{LockWait, WorkspaceLock};
pub use record::Record;
pub use tree::{Entry, EntryKind, MANIFEST_VERSION, Manifest, TempTree};

/// A fresh, empty directory for one test under the system temp dir.
#[cfg(test)]
pub(crate) fn test_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "qflow-cache-test-{}-{name}-{}",
        std::process::id(),
        atomic::unique_tmp_name()
    ));
    let _ = remove_dir_force(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
