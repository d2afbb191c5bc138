//! Remote hits left on the server: their action entries, kept in the local cache.
//!
//! `apply` brings down only what must exist locally (see `engine/src/remote_use.rs`); a
//! hit it does not download still settles its step (its output hash is in the entry, so
//! the steps after it get their keys). The entry is kept under
//! `<cache>/remote/entries/<ab>/<step key>.json`, so a later apply with the same remote
//! cache knows the result without asking the server, and a later step that needs the
//! output fetches it from the entry then. An entry is checked against its key every time
//! it is read, like one fresh from the server; it names bytes, it never stands for them:
//! without a remote cache to fetch from, a kept entry is no result.

use anyhow::Context as _;

use super::RemoteRecord;
use crate::atomic::{parent_of, write_atomic};
use crate::{Cache, Hash};

fn path(cache: &Cache, key: &Hash) -> std::path::PathBuf {
    cache.sharded("remote/entries", key, ".json")
}

/// Keeps `rr` for its step key.
pub fn keep_entry(cache: &Cache, rr: &RemoteRecord) -> anyhow::Result<()> {
    let p = path(cache, &rr.record.key);
    if p.is_file() {
        return Ok(());
    }
    std::fs::create_dir_all(parent_of(&p))
        .with_context(|| format!("cannot create `{}`", parent_of(&p).display()))?;
    write_atomic(&p, &serde_json::to_vec(rr)?)
}

/// The entry kept for step key `key`, if there is a sound one.
pub fn kept_entry(cache: &Cache, key: &Hash) -> Option<RemoteRecord> {
    let bytes = std::fs::read(path(cache, key)).ok()?;
    let rr: RemoteRecord = serde_json::from_slice(&bytes).ok()?;
    match rr.check(key) {
        Ok(()) => Some(rr),
        Err(_) => {
            forget_entry(cache, key);
            None
        }
    }
}

/// Drops the entry kept for `key` (its output could not be had from the server).
pub fn forget_entry(cache: &Cache, key: &Hash) {
    let _ = std::fs::remove_file(path(cache, key));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::{REMOTE_RECORD_FORMAT, Sha256};

    #[test]
    fn a_kept_entry_comes_back_for_its_key_only_and_a_damaged_one_is_dropped() {
        let (_dir, cache) = crate::test_cache("kept_entry");
        let key = Hash::of_bytes(b"step key");
        let record = crate::record::tests::record_for(&cache, &key, &[("x", b"x")], &[]);
        let rr = RemoteRecord {
            format: REMOTE_RECORD_FORMAT.into(),
            record,
            trees: vec![],
            sha256: [(Hash::of_bytes(b"x"), Sha256::of_bytes(b"x"))].into(),
        };
        rr.check(&key).unwrap();
        keep_entry(&cache, &rr).unwrap();
        assert_eq!(kept_entry(&cache, &key), Some(rr.clone()));
        assert_eq!(kept_entry(&cache, &Hash::of_bytes(b"another key")), None);
        std::fs::write(path(&cache, &key), b"{ not json").unwrap();
        assert_eq!(kept_entry(&cache, &key), None);
        keep_entry(&cache, &rr).unwrap();
        forget_entry(&cache, &key);
        assert_eq!(kept_entry(&cache, &key), None);
    }
}
