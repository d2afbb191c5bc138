//! Action records: what a step with a given key produced.
//!
//! `records/<hex[0..2]>/<step key>` holds a JSON `Record`. The engine writes it only after
//! `commit_tree` returned (every object and the tree fsynced and in place), by temp file and
//! rename but without fsync, so after a crash a record is absent, complete, or empty. A record
//! that does not parse or whose manifest does not match its hash is treated as absent and
//! removed: the step simply runs again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::atomic::{parent_of, write_atomic, write_replace};
use crate::{Cache, Hash, Manifest};

/// What one run of a step produced, under its step key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Record {
    /// The step key this record answers.
    pub key: Hash,
    /// The output tree (= `manifest.hash`).
    pub output: Hash,
    /// Every path of the output tree.
    pub manifest: Manifest,
    /// Output trees of other steps that must live as long as this one (e.g. a qcow2 overlay's
    /// backing file, which the overlay names by a relative path into that tree).
    pub retains: Vec<Hash>,
    /// When the record was written (seconds since the epoch).
    pub created_unix: u64,
    /// How long the step took to produce it.
    pub duration_ms: u64,
    /// Free-form data the engine keeps with the record (input hashes, tool versions...).
    pub meta: BTreeMap<String, serde_json::Value>,
}

impl Cache {
    fn record_path(&self, key: &Hash) -> PathBuf {
        self.sharded("records", key, "")
    }

    /// Whether a record for `key` exists (one stat; the record is not read).
    pub fn has_record(&self, key: &Hash) -> bool {
        self.record_path(key).is_file()
    }

    /// Whether the record for `key` names `output` as its output: what a lock entry
    /// claims is believed only when the record it points at says the same. Reads the
    /// record's key and output, not its manifest.
    pub fn record_names(&self, key: &Hash, output: &Hash) -> bool {
        #[derive(serde::Deserialize)]
        struct Head {
            key: Hash,
            output: Hash,
        }
        std::fs::read(self.record_path(key))
            .ok()
            .and_then(|b| serde_json::from_slice::<Head>(&b).ok())
            .is_some_and(|h| h.key == *key && h.output == *output)
    }

    pub(crate) fn retains_path(&self, output: &Hash) -> PathBuf {
        self.sharded("manifests", output, ".retains")
    }

    /// The record for step key `key`, or `None` if there is none or it is damaged (a damaged
    /// record file is removed).
    pub fn get_record(&self, key: &Hash) -> anyhow::Result<Option<Record>> {
        let path = self.record_path(key);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read `{}`", path.display())),
        };
        match serde_json::from_slice::<Record>(&bytes) {
            Ok(r) if r.key == *key && r.output == r.manifest.hash && r.manifest.verify() => {
                Ok(Some(r))
            }
            _ => {
                let _ = std::fs::remove_file(&path);
                Ok(None)
            }
        }
    }

    /// Writes the record for `key` atomically. Call only after `commit_tree` returned its
    /// manifest. Also notes `r.retains` beside the output tree, so `gc` keeps those trees
    /// alive even after this record is gone but the tree is still kept by another.
    pub fn put_record(&self, key: &Hash, r: &Record) -> anyhow::Result<()> {
        anyhow::ensure!(
            r.key == *key && r.output == r.manifest.hash,
            "record for `{}` names key `{}` and output `{}` (manifest `{}`); they must agree",
            key.short(),
            r.key.short(),
            r.output.short(),
            r.manifest.hash.short()
        );
        if !r.retains.is_empty() {
            let mut all = self.tree_retains(&r.output);
            let before = all.len();
            all.extend(r.retains.iter().copied());
            if all.len() != before {
                let path = self.retains_path(&r.output);
                std::fs::create_dir_all(parent_of(&path))?;
                write_atomic(&path, &serde_json::to_vec(&all)?)?;
            }
        }
        let path = self.record_path(key);
        let dir = parent_of(&path);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create `{}`", dir.display()))?;
        // Not fsynced: the tree it names is durable already (`commit_tree`), and a record
        // a power cut left empty or torn fails `get_record`'s checks and counts as absent.
        write_replace(&path, &serde_json::to_vec(r)?)
    }

    /// The trees that tree `output` needs alive, as noted by `put_record`.
    pub fn tree_retains(&self, output: &Hash) -> BTreeSet<Hash> {
        std::fs::read(self.retains_path(output))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Removes the record for `key` (no error if there is none).
    pub fn remove_record(&self, key: &Hash) -> anyhow::Result<()> {
        self.bump_records_generation()?;
        let path = self.record_path(key);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove `{}`", path.display()))
            }
            _ => Ok(()),
        }
    }

    /// A number that changes whenever qflow removes a record (`qflow clean`,
    /// `qflow gc`): a fact "these records were present" noted under an older
    /// generation must be checked again.
    pub fn records_generation(&self) -> u64 {
        let path = self.dir("records-generation");
        // A symlink whose target is the number (a file in caches of older qflows).
        std::fs::read_link(&path)
            .ok()
            .and_then(|t| t.to_str().and_then(|s| s.parse().ok()))
            .or_else(|| {
                std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Moves to a new records generation; called before any record is removed.
    ///
    /// The number is the target of a symlink, replaced by `rename`: a short symlink lives
    /// in its inode and takes no data block, so `qflow gc` can bump it on a full disk,
    /// the moment gc is needed most.
    pub(crate) fn bump_records_generation(&self) -> anyhow::Result<()> {
        let next = self.records_generation().wrapping_add(1);
        let path = self.dir("records-generation");
        let tmp = self.dir("tmp").join(crate::atomic::unique_tmp_name());
        std::os::unix::fs::symlink(next.to_string(), &tmp)
            .with_context(|| format!("cannot create `{}`", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot replace `{}`", path.display())
        })?;
        crate::atomic::fsync_dir(self.root())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record_for(
        c: &Cache,
        key: &Hash,
        files: &[(&str, &[u8])],
        retains: &[Hash],
    ) -> Record {
        let t = c.new_tree().unwrap();
        for (name, bytes) in files {
            std::fs::write(t.path().join(name), bytes).unwrap();
        }
        let manifest = c.commit_tree(t).unwrap();
        let r = Record {
            key: *key,
            output: manifest.hash,
            manifest,
            retains: retains.to_vec(),
            created_unix: 1,
            duration_ms: 2,
            meta: BTreeMap::from([("tool".to_string(), serde_json::json!("qemu-img 10.0"))]),
        };
        c.put_record(key, &r).unwrap();
        r
    }

    #[test]
    fn a_record_round_trips() {
        let (_dir, c) = crate::test_cache("record");
        let key = Hash::of_bytes(b"step key");
        assert_eq!(c.get_record(&key).unwrap(), None);
        let r = record_for(&c, &key, &[("out.txt", b"hi")], &[]);
        assert_eq!(c.get_record(&key).unwrap(), Some(r));
        c.remove_record(&key).unwrap();
        assert_eq!(c.get_record(&key).unwrap(), None);
        c.remove_record(&key).unwrap();
    }

    #[test]
    fn a_partial_record_file_is_ignored_and_removed() {
        let (_dir, c) = crate::test_cache("partial");
        let key = Hash::of_bytes(b"k");
        record_for(&c, &key, &[("out.txt", b"hi")], &[]);
        let path = c.record_path(&key);
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() / 2]).unwrap();
        assert_eq!(c.get_record(&key).unwrap(), None);
        assert!(!path.exists());

        // A record filed under the wrong key is not trusted either.
        let r = record_for(&c, &key, &[("out.txt", b"hi")], &[]);
        let other = Hash::of_bytes(b"other");
        std::fs::create_dir_all(parent_of(&c.record_path(&other))).unwrap();
        std::fs::write(c.record_path(&other), serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(c.get_record(&other).unwrap(), None);
        assert!(c.put_record(&other, &r).is_err());
    }

    #[test]
    #[ignore = "slow: measures looking up 1,000 records and their trees"]
    fn looking_up_a_thousand_cached_steps() {
        let (_dir, c) = crate::test_cache("thousand");
        let keys: Vec<Hash> = (0..1000u32)
            .map(|i| Hash::of_bytes(&i.to_le_bytes()))
            .collect();
        for (i, k) in keys.iter().enumerate() {
            record_for(&c, k, &[("out.txt", format!("{i}").as_bytes())], &[]);
        }
        let started = std::time::Instant::now();
        for k in &keys {
            let r = c.get_record(k).unwrap().unwrap();
            assert!(c.has_tree(&r.output));
        }
        let by_hash = started.elapsed();
        let started = std::time::Instant::now();
        for k in &keys {
            let r = c.get_record(k).unwrap().unwrap();
            assert!(c.has_tree_for(&r.manifest));
        }
        eprintln!(
            "1,000 x (get_record + has_tree): {by_hash:?}; with has_tree_for: {:?}",
            started.elapsed()
        );
    }
}
