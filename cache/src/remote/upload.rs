//! Putting a step's result on the server: content first, the action entry last.
//!
//! The entry names every object it needs (the output tree and every tree it retains); each
//! object the server lacks (HEAD) is PUT, streamed from the local store, at most the transfer
//! count at a time. Only when all of them are stored is the entry PUT, so a reader that sees an
//! entry can fetch everything it names. An entry already on the server is left as it is (the
//! protocol's servers are write-once or last-writer-wins; either way nothing is gained).
//! Uploading is best effort: a fault is one warning and the run goes on.

use std::collections::BTreeSet;

use super::http_store::{Failure, Kind};
use super::names::{Sha256Map, action_name};
use super::remote_record::{REMOTE_RECORD_FORMAT, RetainedTree};
use super::{Fault, ObjectRef, RemoteCache, RemoteRecord, for_each_bounded};
use crate::{Cache, EntryKind, Hash, Record};

/// What [`RemoteCache::upload`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UploadOutcome {
    /// The entry and every object it names are on the server now.
    Uploaded {
        /// Objects the server lacked and got.
        objects: u64,
        /// Their bytes.
        bytes: u64,
    },
    /// The server had the entry already.
    AlreadyThere,
    /// Nothing was uploaded; the reason (a warning was given when it was a fault).
    Skipped(String),
}

impl RemoteCache {
    /// Uploads `record` (whose tree and retained trees are in `cache`) when uploads are on.
    pub fn upload(&self, record: &Record, cache: &Cache) -> UploadOutcome {
        let Some(write) = &self.write else {
            return UploadOutcome::Skipped("uploads are off".into());
        };
        if !write.health.usable() {
            return UploadOutcome::Skipped(format!(
                "the remote cache `{}` is not used for the rest of this run",
                write.shown()
            ));
        }
        let name = action_name(&record.key);
        match self.http.head(write, Kind::Ac, &name) {
            Ok(true) => {
                write.health.ok();
                return UploadOutcome::AlreadyThere;
            }
            Ok(false) => write.health.ok(),
            Err(fault) => return self.write_fault(&fault),
        }
        let entry = match remote_record_of(record, cache) {
            Ok(rr) => rr,
            Err(e) => {
                let msg = format!(
                    "not uploading step key `{}` to the remote cache: {e:#}",
                    record.key.short()
                );
                self.warn(&msg);
                return UploadOutcome::Skipped(msg);
            }
        };
        let objects = entry.objects();
        let moved = std::sync::atomic::AtomicU64::new(0);
        let stored = std::sync::atomic::AtomicU64::new(0);
        let result = for_each_bounded(&objects, self.transfers, |o| {
            if !write.health.usable() {
                return Err(Failure::Fault(Fault::Unreachable(
                    "left alone after earlier faults".into(),
                )));
            }
            if self.http.head(write, Kind::Cas, &o.sha256)? {
                write.health.ok();
                return Ok(());
            }
            let path = object_path(cache, o);
            let _slot = self.slots.take();
            self.http.put_file(write, Kind::Cas, &o.sha256, &path)?;
            write.health.ok();
            self.add_up(o.size);
            moved.fetch_add(o.size, std::sync::atomic::Ordering::Relaxed);
            stored.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.counters
                .objects_up
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        });
        match result {
            Ok(()) => {}
            Err(Failure::Fault(fault)) => return self.write_fault(&fault),
            Err(Failure::Local(e)) => {
                let msg = format!(
                    "not uploading step key `{}` to the remote cache: {e:#}",
                    record.key.short()
                );
                self.warn(&msg);
                return UploadOutcome::Skipped(msg);
            }
        }
        let json = match serde_json::to_vec(&entry) {
            Ok(j) => j,
            Err(e) => return UploadOutcome::Skipped(e.to_string()),
        };
        if let Err(fault) = self.http.put_bytes(write, Kind::Ac, &name, &json) {
            return self.write_fault(&fault);
        }
        write.health.ok();
        self.add_up(json.len() as u64);
        self.counters
            .records_up
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        UploadOutcome::Uploaded {
            objects: stored.into_inner(),
            bytes: moved.into_inner(),
        }
    }

    fn write_fault(&self, fault: &Fault) -> UploadOutcome {
        let write = self.write.as_ref().expect("uploads are on");
        self.fault(write, fault);
        UploadOutcome::Skipped(format!(
            "the remote cache `{}` {}",
            write.shown(),
            fault.describe()
        ))
    }
}

/// The local path of object `o` (whichever variant the store holds).
fn object_path(cache: &Cache, o: &ObjectRef) -> std::path::PathBuf {
    let plain = cache.object_file(&o.blake3, false);
    if plain.is_file() {
        plain
    } else {
        cache.object_file(&o.blake3, true)
    }
}

/// The entry for `record`: its retained trees (transitively) and the sha256 of every object.
fn remote_record_of(record: &Record, cache: &Cache) -> anyhow::Result<RemoteRecord> {
    let mut trees = Vec::new();
    let mut seen = BTreeSet::new();
    let mut todo: Vec<Hash> = record.retains.clone();
    while let Some(h) = todo.pop() {
        if !seen.insert(h) {
            continue;
        }
        let manifest = cache.load_manifest(&h)?.ok_or_else(|| {
            anyhow::anyhow!(
                "tree `{}`, which it retains, is not in the local cache",
                h.short()
            )
        })?;
        let retains: Vec<Hash> = cache.tree_retains(&h).into_iter().collect();
        todo.extend(retains.iter().copied());
        trees.push(RetainedTree { manifest, retains });
    }
    let map = Sha256Map::new(cache);
    let mut sha256 = std::collections::BTreeMap::new();
    let manifests = std::iter::once(&record.manifest).chain(trees.iter().map(|t| &t.manifest));
    for m in manifests {
        for e in &m.entries {
            if let EntryKind::File { hash, .. } = &e.kind
                && !sha256.contains_key(hash)
            {
                if !cache.has_object(hash) {
                    anyhow::bail!("the object of `{}` is not in the local cache", e.path);
                }
                sha256.insert(*hash, map.of_object(hash)?);
            }
        }
    }
    let rr = RemoteRecord {
        format: REMOTE_RECORD_FORMAT.into(),
        record: record.clone(),
        trees,
        sha256,
    };
    rr.check(&record.key)?;
    Ok(rr)
}
