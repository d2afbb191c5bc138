//! Bringing a remote hit into the local cache, verified, or not at all.
//!
//! 1. Every object the entry's trees need and the local store lacks is downloaded into a
//!    staging directory (a temporary tree under `trees/`, on the objects' file system, swept
//!    by `gc` if qflow is killed), [`RemoteCache`]'s transfer count at a time. Each is hashed
//!    while it streams in (sha256 and blake3) and must match the sha256 of its name, the
//!    blake3 and the size of the manifest.
//! 2. Only when every object passed are they linked into the object store (one hard link
//!    each: no copy), then the trees are built from the store (`restore_tree`, which renames a
//!    complete tree into place), then the retained trees' notes are written, and the record
//!    last. A kill at any point leaves either no record or a complete, usable one.
//!
//! A missing object or wrong bytes make the whole entry a miss with one warning naming the
//! object; nothing of it enters the local cache.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow};
use rayon::prelude::*;
use sha2::Digest;

use super::http_store::{CHUNK, Failure, Kind};
use super::names::{Sha256, Sha256Map};
use super::{Fault, ObjectRef, RemoteCache, RemoteRecord, for_each_bounded};
use crate::atomic::{fsync_dir, parent_of, unique_tmp_name, write_atomic};
use crate::object_store::{make_read_only, read_only_mode, seal};
use crate::{Cache, EntryKind, Hash, Manifest};

/// The marker of a body longer than the record says.
const WRONG_SIZE: &str = "the server sent more bytes than the record names";

/// The marker of a transfer stopped because its file could not be written.
const WRITE_FAILED: &str = "the object's file could not be written";

/// Why one object could not be had.
enum ObjectFailure {
    Missing,
    WrongBytes(String),
    Fault(Fault),
    Local(anyhow::Error),
}

impl RemoteCache {
    /// Downloads, verifies and commits the output tree of `rr` (and every tree it retains)
    /// into `cache`, then writes its record there; returns the output tree's hash. On any
    /// failure nothing of the entry is committed, the hit counts as a miss, and the error
    /// says why (a warning was given already when the server was at fault).
    pub fn fetch_tree(&self, rr: &RemoteRecord, cache: &Cache) -> anyhow::Result<Hash> {
        let result = self.fetch(rr, cache);
        if result.is_err() {
            self.hit_became_miss();
        }
        result
    }

    /// Downloads, verifies and commits the output tree of `rr` and the trees its disk images
    /// back onto (transitively: `backing.rs`), then writes its record; returns the output
    /// tree's hash. What a step needs to use the output, or a user to open it under `out/`;
    /// the other trees the record retains (upstream outputs kept alive for `gc`) stay on the
    /// server. On failure as [`RemoteCache::fetch_tree`]: no record, every committed tree
    /// whole.
    pub fn fetch_usable(&self, rr: &RemoteRecord, cache: &Cache) -> anyhow::Result<Hash> {
        let result = self.fetch_reaching(rr, cache);
        if result.is_err() {
            self.hit_became_miss();
        }
        result
    }

    fn fetch_reaching(&self, rr: &RemoteRecord, cache: &Cache) -> anyhow::Result<Hash> {
        let by_hash: BTreeMap<Hash, &Manifest> = rr.manifests().map(|m| (m.hash, m)).collect();
        let retained: BTreeSet<Hash> = rr.trees.iter().map(|t| t.manifest.hash).collect();
        let mut seen = BTreeSet::new();
        let mut round = vec![&rr.record.manifest];
        while !round.is_empty() {
            round.retain(|m| seen.insert(m.hash));
            self.fetch_trees(rr, cache, &round)?;
            let mut next = Vec::new();
            for m in &round {
                let dir = cache.tree_path(&m.hash);
                for h in super::backing::backing_trees(&dir, m, &retained) {
                    next.extend(by_hash.get(&h).copied());
                }
            }
            round = next;
        }
        self.finish_fetch(rr, cache)
    }

    fn fetch(&self, rr: &RemoteRecord, cache: &Cache) -> anyhow::Result<Hash> {
        let all: Vec<&Manifest> = rr.manifests().collect();
        self.fetch_trees(rr, cache, &all)?;
        self.finish_fetch(rr, cache)
    }

    /// The retained trees' notes, then the record last.
    fn finish_fetch(&self, rr: &RemoteRecord, cache: &Cache) -> anyhow::Result<Hash> {
        for t in &rr.trees {
            note_retains(cache, &t.manifest.hash, &t.retains)?;
        }
        cache.put_record(&rr.record.key, &rr.record)?;
        Ok(rr.record.output)
    }

    /// Brings the trees `trees` (manifests of `rr`) into `cache`: every object verified
    /// before any enters the store, each tree whole or not at all.
    fn fetch_trees(
        &self,
        rr: &RemoteRecord,
        cache: &Cache,
        trees: &[&Manifest],
    ) -> anyhow::Result<()> {
        let key = rr.record.key;
        // Another fetch bringing one of these trees now (an overlay's step and the base
        // image's own) is waited for; the tree is then here, not downloaded twice.
        let _claimed = self.claims.claim(trees.iter().map(|m| m.hash));
        let missing_trees: Vec<&Manifest> = trees
            .iter()
            .copied()
            .filter(|m| !cache.has_tree_for(m))
            .collect();
        // Objects to place: (blake3, executable) pairs the store lacks.
        let mut wanted: BTreeSet<(Hash, bool)> = BTreeSet::new();
        let mut path_of: BTreeMap<Hash, &str> = BTreeMap::new();
        for m in &missing_trees {
            for e in &m.entries {
                if let EntryKind::File {
                    hash, executable, ..
                } = e.kind
                {
                    path_of.entry(hash).or_insert(&e.path);
                    if !cache.object_file(&hash, executable).is_file() {
                        wanted.insert((hash, executable));
                    }
                }
            }
        }
        let wanted_hashes: BTreeSet<Hash> = wanted.iter().map(|(h, _)| *h).collect();
        let to_download: Vec<ObjectRef> = rr
            .objects()
            .into_iter()
            .filter(|o| wanted_hashes.contains(&o.blake3) && !cache.has_object(&o.blake3))
            .collect();
        if !to_download.is_empty() && !self.read.health.usable() {
            return Err(anyhow!(
                "the remote cache `{}` is not used for the rest of this run",
                self.read.shown()
            ));
        }

        let staging = cache.new_tree()?;
        let downloaded = for_each_bounded(&to_download, self.transfers, |o| {
            self.download(o, staging.path())
                .map_err(|failure| (*o, failure))
        });
        if let Err((o, failure)) = downloaded {
            let what = format!(
                "object `{}` of step key `{}` (`cas/{}`)",
                path_of.get(&o.blake3).copied().unwrap_or("?"),
                key.short(),
                o.sha256
            );
            return Err(match failure {
                ObjectFailure::Missing => {
                    let msg = format!(
                        "remote cache `{}`: {what} is missing on the server; building the step locally",
                        self.read.shown()
                    );
                    self.warn(&msg);
                    anyhow!(msg)
                }
                ObjectFailure::WrongBytes(why) => {
                    let msg = format!(
                        "remote cache `{}`: {what} has wrong bytes on the server ({why}); \
                         ignoring them and building the step locally",
                        self.read.shown()
                    );
                    self.warn(&msg);
                    anyhow!(msg)
                }
                ObjectFailure::Fault(fault) => {
                    self.fault(&self.read, &fault);
                    anyhow!(
                        "remote cache `{}`: {what}: {}",
                        self.read.shown(),
                        fault.describe()
                    )
                }
                ObjectFailure::Local(e) => e.context(format!("cannot download {what}")),
            });
        }

        // Every byte verified: into the store, then the trees, the notes, the record.
        let map = Sha256Map::new(cache);
        let mut shards = BTreeSet::new();
        for (hash, executable) in &wanted {
            let staged = staging.path().join(hash.to_hex());
            shards.insert(place_object(cache, hash, *executable, &staged)?);
        }
        for o in &to_download {
            map.put(&o.blake3, &o.sha256)?;
        }
        let downloaded_now: BTreeSet<Hash> = to_download.iter().map(|o| o.blake3).collect();
        shards.par_iter().try_for_each(|shard| fsync_dir(shard))?;
        drop(staging);
        for m in missing_trees {
            cache
                .restore_tree_from(m, &downloaded_now)
                .with_context(|| {
                    format!(
                        "cannot build tree `{}` from the downloaded objects",
                        m.hash.short()
                    )
                })?;
        }
        Ok(())
    }

    /// GETs one object into `dir/<blake3>`, verifying size, sha256 and blake3.
    fn download(&self, o: &ObjectRef, dir: &Path) -> Result<(), ObjectFailure> {
        if !self.read.health.usable() {
            return Err(ObjectFailure::Fault(Fault::Unreachable(
                "left alone after earlier faults".into(),
            )));
        }
        let _slot = self.slots.take();
        let path = dir.join(o.blake3.to_hex());
        let file = std::fs::File::create(&path)
            .with_context(|| format!("cannot create `{}`", path.display()))
            .map_err(ObjectFailure::Local)?;
        // Up to one chunk, threads would cost more than they save.
        let (got, file, sha, b3) = if o.size <= CHUNK as u64 {
            self.receive_small(o, file)
        } else {
            self.receive_streamed(o, file)
        };
        let file = file
            .with_context(|| format!("cannot write `{}`", path.display()))
            .map_err(ObjectFailure::Local)?;
        let size = match got {
            Ok(Some(size)) => size,
            Ok(None) => {
                self.read.health.ok();
                return Err(ObjectFailure::Missing);
            }
            Err(Failure::Fault(f)) => return Err(ObjectFailure::Fault(f)),
            Err(Failure::Local(e)) if e.to_string() == WRONG_SIZE => {
                self.read.health.ok();
                return Err(ObjectFailure::WrongBytes(format!(
                    "more than the {} bytes the record says",
                    o.size
                )));
            }
            Err(Failure::Local(e)) => return Err(ObjectFailure::Local(e)),
        };
        self.read.health.ok();
        if size != o.size {
            return Err(ObjectFailure::WrongBytes(format!(
                "{size} bytes, the record says {}",
                o.size
            )));
        }
        if sha != o.sha256 {
            return Err(ObjectFailure::WrongBytes(format!(
                "their sha256 is `{sha}`"
            )));
        }
        if b3 != o.blake3 {
            return Err(ObjectFailure::WrongBytes(format!(
                "their blake3 is `{b3}`, the record says `{}`",
                o.blake3
            )));
        }
        // Verified: durable before it may enter the store (its writeback began as it came).
        file.sync_data()
            .with_context(|| format!("cannot fsync `{}`", path.display()))
            .map_err(ObjectFailure::Local)?;
        self.counters
            .objects_down
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// GETs object `o`, counting each chunk before `on_chunk` has it; a body longer than
    /// the record says stops the transfer ([`WRONG_SIZE`]).
    fn get_object(
        &self,
        o: &ObjectRef,
        on_chunk: &mut dyn FnMut(Arc<Vec<u8>>) -> anyhow::Result<()>,
    ) -> Result<Option<u64>, Failure> {
        let mut received = 0u64;
        self.http
            .get_into(&self.read, Kind::Cas, &o.sha256, &mut |chunk| {
                received += chunk.len() as u64;
                if received > o.size {
                    // More bytes than the record names: wrong, and maybe endless.
                    anyhow::bail!("{WRONG_SIZE}");
                }
                self.add_down(chunk.len() as u64);
                on_chunk(chunk)
            })
    }

    /// An object of one chunk or less: received, written and hashed on this thread.
    fn receive_small(&self, o: &ObjectRef, mut file: std::fs::File) -> Received {
        let mut sha = sha2::Sha256::new();
        let mut b3 = blake3::Hasher::new();
        let mut write_error = None;
        let got = self.get_object(o, &mut |chunk| {
            if let Err(e) = file.write_all(&chunk) {
                write_error = Some(e);
                anyhow::bail!("{WRITE_FAILED}");
            }
            sha.update(&chunk[..]);
            b3.update(&chunk);
            Ok(())
        });
        let file = match write_error {
            Some(e) => Err(e),
            None => Ok(file),
        };
        let sha = Sha256(sha.finalize().into());
        (got, file, sha, Hash::from(b3.finalize()))
    }

    /// A larger object, through a pipeline: this thread receives, three others write
    /// (starting each chunk's writeback to disk at once, so the final fdatasync waits for
    /// little), hash sha256 and hash blake3 the same chunks, shared without copying,
    /// through short queues so memory stays constant. On two cores the transfer, the disk
    /// and both hashes move together.
    fn receive_streamed(&self, o: &ObjectRef, file: std::fs::File) -> Received {
        type Queue = std::sync::mpsc::SyncSender<Arc<Vec<u8>>>;
        let queue = || std::sync::mpsc::sync_channel::<Arc<Vec<u8>>>(4);
        let ((write_tx, write_rx), (sha_tx, sha_rx), (b3_tx, b3_rx)) = (queue(), queue(), queue());
        std::thread::scope(|s| {
            let writer = s.spawn(move || -> std::io::Result<std::fs::File> {
                let mut file = file;
                let mut at = 0u64;
                for chunk in write_rx {
                    file.write_all(&chunk)?;
                    start_writeback(&file, at, chunk.len());
                    at += chunk.len() as u64;
                }
                Ok(file)
            });
            let sha_thread = s.spawn(move || {
                let mut sha = sha2::Sha256::new();
                for chunk in sha_rx {
                    sha.update(&chunk[..]);
                }
                Sha256(sha.finalize().into())
            });
            let b3_thread = s.spawn(move || {
                let mut b3 = blake3::Hasher::new();
                for chunk in b3_rx {
                    b3.update(&chunk);
                }
                Hash::from(b3.finalize())
            });
            let queues: [&Queue; 3] = [&write_tx, &sha_tx, &b3_tx];
            let got = self.get_object(o, &mut |chunk| {
                for q in queues {
                    // A closed queue: the writer failed; its error is reported below.
                    q.send(Arc::clone(&chunk))
                        .map_err(|_| anyhow!("{WRITE_FAILED}"))?;
                }
                Ok(())
            });
            drop((write_tx, sha_tx, b3_tx));
            let joined = "the download's threads do not panic";
            (
                got,
                writer.join().expect(joined),
                sha_thread.join().expect(joined),
                b3_thread.join().expect(joined),
            )
        })
    }
}

/// What receiving an object gave: the transfer's outcome (its size, or absent), the file
/// written (or why it could not be), the sha256 and the blake3 of the bytes received.
type Received = (
    Result<Option<u64>, Failure>,
    std::io::Result<std::fs::File>,
    Sha256,
    Hash,
);

/// Puts the object `hash` (variant `executable`) into the store from `staged` (just verified)
/// or, when nothing was downloaded for it, from the other variant already in the store.
/// Returns the shard directory to fsync.
fn place_object(
    cache: &Cache,
    hash: &Hash,
    executable: bool,
    staged: &Path,
) -> anyhow::Result<PathBuf> {
    let object = cache.object_file(hash, executable);
    let shard = parent_of(&object);
    if object.is_file() {
        return Ok(shard);
    }
    std::fs::create_dir_all(&shard)
        .with_context(|| format!("cannot create `{}`", shard.display()))?;
    let tmp = shard.join(unique_tmp_name());
    let from_stage = staged.is_file() && std::fs::symlink_metadata(staged)?.nlink() == 1;
    let placed = if from_stage {
        // The first variant takes the downloaded inode itself.
        std::fs::hard_link(staged, &tmp)
    } else {
        // The other variant needs its own inode (its own mode): a copy.
        let source = if staged.is_file() {
            staged.to_path_buf()
        } else {
            cache.object_file(hash, !executable)
        };
        std::fs::copy(source, &tmp).map(|_| ())
    }
    .with_context(|| format!("cannot place `{}` in the object store", object.display()));
    let result = placed.and_then(|()| {
        if from_stage {
            // Its bytes were fsynced when they passed verification.
            make_read_only(&tmp, read_only_mode(executable))?;
        } else {
            seal(&tmp, read_only_mode(executable))?;
        }
        match std::fs::hard_link(&tmp, &object) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot create `{}`", object.display())),
        }
    });
    let _ = std::fs::remove_file(&tmp);
    result.map(|()| shard)
}

/// Notes that tree `output` retains `retains` (merged with what is noted already), as
/// `put_record` does for a record's own output.
fn note_retains(cache: &Cache, output: &Hash, retains: &[Hash]) -> anyhow::Result<()> {
    if retains.is_empty() {
        return Ok(());
    }
    let mut all = cache.tree_retains(output);
    let before = all.len();
    all.extend(retains.iter().copied());
    if all.len() == before {
        return Ok(());
    }
    let path = cache.retains_path(output);
    std::fs::create_dir_all(parent_of(&path))?;
    write_atomic(&path, &serde_json::to_vec(&all)?)
}

/// Starts writing `len` bytes of `file` at `offset` back to disk without waiting for them
/// (advisory: the fdatasync after verification is what makes the object durable).
fn start_writeback(file: &std::fs::File, offset: u64, len: usize) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a plain system call on an open descriptor; it reads no memory of ours.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}
