//! `CacheProbe`: whether records and output trees exist, asked many times in a row.
//!
//! The same answers as [`Cache::has_record`] and `tree_path(..).is_dir()`, through
//! handles on `records/` and `trees/` (see `dir_handle.rs`), so a no-op apply of
//! 1,000 steps does not walk the cache's path 2,000 times. Hold one only while
//! the workspace lock is held: nothing else may replace those directories then.

use std::path::Path;

use crate::dir_handle::DirHandle;
use crate::{Cache, Hash};

/// Open handles on a cache's `records/` and `trees/`.
#[derive(Debug)]
pub struct CacheProbe {
    records: DirHandle,
    trees: DirHandle,
}

impl Cache {
    /// A probe of this cache (see [`CacheProbe`]).
    pub fn probe(&self) -> std::io::Result<CacheProbe> {
        Ok(CacheProbe {
            records: DirHandle::open(&self.dir("records"))?,
            trees: DirHandle::open(&self.dir("trees"))?,
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
        self.trees.is_dir(Path::new(&output.to_hex()))
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
