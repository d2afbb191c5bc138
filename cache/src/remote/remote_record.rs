//! What qflow stores under `/ac/<action name>`: a [`RemoteRecord`], JSON.
//!
//! The server is a dumb store, so the entry need not be Bazel's protobuf `ActionResult`; it is
//! qflow's own [`Record`] (step key → output manifest), plus what a reader needs to rebuild
//! the output on another machine:
//!
//! - `trees`: every tree the record retains, transitively, with its manifest and its own
//!   retains. A qcow2 overlay names its backing image inside its header
//!   (`../<upstream tree>/image.qcow2`), where the cache cannot see it, so a reader must
//!   bring every retained tree to make the output usable;
//! - `sha256`: the server name of every file object the manifests list (blake3 → sha256).
//!
//! Nothing in it is trusted: [`RemoteRecord::check`] refuses an entry that answers another key,
//! whose manifests do not hash to their names, whose retained trees are incomplete or that
//! lacks a sha256 for an object; and every object is verified against both its sha256 and
//! its blake3 when it is downloaded.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, ensure};
use serde::{Deserialize, Serialize};

use super::names::Sha256;
use crate::{EntryKind, Hash, Manifest, Record};

/// The `format` line this code writes and understands.
pub const REMOTE_RECORD_FORMAT: &str = "qflow-remote-record 1";

/// Largest action entry accepted from a server.
pub const MAX_REMOTE_RECORD_BYTES: u64 = 64 << 20;

/// An action entry on the server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RemoteRecord {
    /// [`REMOTE_RECORD_FORMAT`].
    pub format: String,
    /// The record exactly as the uploader's cache held it.
    pub record: Record,
    /// The retained trees (transitively), for a reader that lacks them.
    pub trees: Vec<RetainedTree>,
    /// The sha256 (server name) of every file object listed by `record.manifest` and `trees`.
    pub sha256: BTreeMap<Hash, Sha256>,
}

/// A tree another tree needs alive (a backing image), with what it needs in turn.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RetainedTree {
    /// The tree's manifest (its hash names it).
    pub manifest: Manifest,
    /// The trees it needs alive in turn.
    pub retains: Vec<Hash>,
}

/// One object to download: its blake3 (local name), sha256 (server name) and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectRef {
    /// The name in the local cache.
    pub blake3: Hash,
    /// The name on the server.
    pub sha256: Sha256,
    /// Its length in bytes.
    pub size: u64,
}

impl RemoteRecord {
    /// Every manifest: the output's first, then the retained trees'.
    pub fn manifests(&self) -> impl Iterator<Item = &Manifest> {
        std::iter::once(&self.record.manifest).chain(self.trees.iter().map(|t| &t.manifest))
    }

    /// The distinct objects the manifests list.
    pub fn objects(&self) -> Vec<ObjectRef> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for m in self.manifests() {
            for e in &m.entries {
                if let EntryKind::File { hash, size, .. } = e.kind
                    && seen.insert(hash)
                    && let Some(sha256) = self.sha256.get(&hash)
                {
                    out.push(ObjectRef {
                        blake3: hash,
                        sha256: *sha256,
                        size,
                    });
                }
            }
        }
        out
    }

    /// Total bytes of the distinct objects.
    pub fn total_size(&self) -> u64 {
        self.objects().iter().map(|o| o.size).sum()
    }

    /// Refuses an entry that is not a sound answer for step key `key`.
    pub fn check(&self, key: &Hash) -> anyhow::Result<()> {
        ensure!(
            self.format == REMOTE_RECORD_FORMAT,
            "it has format `{}`, not `{REMOTE_RECORD_FORMAT}`",
            self.format
        );
        let r = &self.record;
        ensure!(r.key == *key, "it answers step key `{}`", r.key.short());
        ensure!(
            r.output == r.manifest.hash && r.manifest.verify(),
            "its output manifest does not hash to its name"
        );
        let mut trees = BTreeSet::new();
        for t in &self.trees {
            ensure!(
                t.manifest.verify(),
                "the manifest of retained tree `{}` does not hash to its name",
                t.manifest.hash.short()
            );
            trees.insert(t.manifest.hash);
        }
        let needed = r
            .retains
            .iter()
            .chain(self.trees.iter().flat_map(|t| t.retains.iter()));
        for h in needed {
            if !trees.contains(h) {
                bail!("it retains tree `{}` but does not describe it", h.short());
            }
        }
        for m in self.manifests() {
            for e in &m.entries {
                if let EntryKind::File { hash, .. } = &e.kind
                    && !self.sha256.contains_key(hash)
                {
                    bail!("it names no sha256 for `{}`", e.path);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(c: &crate::Cache) -> (Hash, RemoteRecord) {
        let base_key = Hash::of_bytes(b"base");
        let base = crate::record::tests::record_for(c, &base_key, &[("image", b"base")], &[]);
        let key = Hash::of_bytes(b"overlay");
        let r = crate::record::tests::record_for(c, &key, &[("image", b"ov")], &[base.output]);
        let rr = RemoteRecord {
            format: REMOTE_RECORD_FORMAT.into(),
            trees: vec![RetainedTree {
                manifest: base.manifest.clone(),
                retains: vec![],
            }],
            sha256: [
                (Hash::of_bytes(b"base"), Sha256::of_bytes(b"base")),
                (Hash::of_bytes(b"ov"), Sha256::of_bytes(b"ov")),
            ]
            .into(),
            record: r,
        };
        (key, rr)
    }

    #[test]
    fn a_sound_entry_passes_and_lists_each_object_once() {
        let (_dir, c) = crate::test_cache("rr_sound");
        let (key, rr) = entry(&c);
        rr.check(&key).unwrap();
        assert_eq!(rr.objects().len(), 2);
        assert_eq!(rr.total_size(), 6);
        let json = serde_json::to_vec(&rr).unwrap();
        assert_eq!(serde_json::from_slice::<RemoteRecord>(&json).unwrap(), rr);
    }

    #[test]
    fn entries_that_do_not_add_up_are_refused() {
        let (_dir, c) = crate::test_cache("rr_refused");
        let (key, rr) = entry(&c);
        let refused = |rr: &RemoteRecord| rr.check(&key).unwrap_err().to_string();

        let err = rr.check(&Hash::of_bytes(b"other")).unwrap_err().to_string();
        assert!(err.contains("answers step key"), "{err}");

        let mut bad = rr.clone();
        bad.record.manifest.entries[0].path = "elsewhere".into();
        assert!(refused(&bad).contains("output manifest"));

        let mut bad = rr.clone();
        bad.trees.clear();
        assert!(refused(&bad).contains("does not describe"));

        let mut bad = rr.clone();
        bad.sha256.remove(&Hash::of_bytes(b"base"));
        assert!(refused(&bad).contains("no sha256 for `image`"));

        let mut bad = rr.clone();
        bad.format = "qflow-remote-record 9".into();
        assert!(refused(&bad).contains("format"));
    }
}
