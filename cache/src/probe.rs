//! `CacheProbe`: whether records and output trees exist, asked many times in a row.
//!
//! The same answers as [`Cache::has_record`] and `tree_path(..).is_dir()`, through
//! handles on `records/` and `trees/` (see `dir_handle.rs`), so a no-op apply of
//! 1,000 steps does not walk the cache's path 2,000 times. Hold one only while
//! the workspace lock is held: nothing else may replace those directories then.
//!
//! [`CacheProbe::listing_trees`] goes further: one listing of `trees/` answers
//! for every tree it holds (a few `getdents` instead of 1,000 stats). Trees are
//! removed only under the workspace lock, so a listed tree is still there while
//! the lock is held; a tree not listed (committed since) is stat'ed.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::Path;

use crate::dir_handle::DirHandle;
use crate::{Cache, Hash};

/// Open handles on a cache's `records/` and `trees/`.
#[derive(Debug)]
pub struct CacheProbe {
    records: DirHandle,
    trees: DirHandle,
    /// Directories listed in `trees/`, when listed.
    listed_trees: HashSet<OsString>,
}

impl Cache {
    /// A probe of this cache (see [`CacheProbe`]).
    pub fn probe(&self) -> std::io::Result<CacheProbe> {
        Ok(CacheProbe {
            records: DirHandle::open(&self.dir("records"))?,
            trees: DirHandle::open(&self.dir("trees"))?,
            listed_trees: HashSet::new(),
        })
    }
}

impl CacheProbe {
    /// Whether a record for `key` exists (one stat; the record is not read).
    pub fn has_record(&self, key: &Hash) -> bool {
        let hex = key.to_hex();
        self.records
            .is_file(Path::new(&format!("{}/{hex}", &hex[..2])))
    }

    /// Whether output tree `output` is in `trees/`.
    pub fn has_tree(&self, output: &Hash) -> bool {
        let name = output.to_hex();
        self.listed_trees.contains(std::ffi::OsStr::new(&name))
            || self.trees.is_dir(Path::new(&name))
    }

    /// List `trees/` once, when a run is about to ask about `questions` trees and
    /// the listing is not much longer than that (a large shared cache is not listed).
    pub fn listing_trees(mut self, cache: &Cache, questions: usize) -> CacheProbe {
        let limit = 4 * questions + 64;
        let Ok(entries) = std::fs::read_dir(cache.dir("trees")) else {
            return self;
        };
        let mut listed = HashSet::new();
        for (n, entry) in entries.enumerate() {
            let Ok(entry) = entry else { return self };
            if n >= limit {
                return self;
            }
            // `file_type` comes from the listing itself (d_type) where the filesystem gives it.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                listed.insert(entry.file_name());
            }
        }
        self.listed_trees = listed;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_sees_records_and_trees_as_the_cache_does() {
        let root = std::env::temp_dir().join(format!("qflow-probe-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let cache = Cache::open(&root).unwrap();
        let tmp = cache.new_tree().unwrap();
        std::fs::write(tmp.path().join("f"), "x").unwrap();
        let manifest = cache.commit_tree(tmp).unwrap();
        let key = Hash::of_bytes(b"a step key");
        let probe = cache.probe().unwrap();
        assert!(probe.has_tree(&manifest.hash));
        assert!(!probe.has_tree(&key));
        let listing = cache.probe().unwrap().listing_trees(&cache, 10);
        assert!(
            listing
                .listed_trees
                .contains(std::ffi::OsStr::new(&manifest.hash.to_hex()))
        );
        assert!(listing.has_tree(&manifest.hash));
        assert!(!listing.has_tree(&key));
        // Committed after the listing: found by a stat.
        let tmp = cache.new_tree().unwrap();
        std::fs::write(tmp.path().join("g"), "y").unwrap();
        let later = cache.commit_tree(tmp).unwrap();
        assert!(listing.has_tree(&later.hash));
        assert!(!probe.has_record(&key));
        let rec = crate::Record {
            key,
            output: manifest.hash,
            manifest: manifest.clone(),
            retains: vec![],
            created_unix: 0,
            duration_ms: 0,
            meta: Default::default(),
        };
        cache.put_record(&key, &rec).unwrap();
        assert!(probe.has_record(&key));
        assert_eq!(probe.has_record(&key), cache.has_record(&key));
        crate::remove_dir_force(&root).unwrap();
    }
}
