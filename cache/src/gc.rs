//! Garbage collection: drop everything no kept step key leads to.
//!
//! The caller (`qflow gc`, under the workspace lock) names the step keys whose records
//! survive. Kept trees are their outputs plus, transitively, every tree they retain (a qcow2
//! overlay's backing image lives in another step's tree). Objects survive when a kept tree's
//! manifest lists them. Temporary names older than an hour are leftovers of killed runs;
//! younger ones may belong to a run in progress elsewhere and are left alone.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context;

use crate::atomic::remove_dir_force;
use crate::tree::is_tmp_name;
use crate::{Cache, EntryKind, Hash};

/// Temporary files and trees older than this are removed by `gc`.
pub const STALE_TMP_AGE: Duration = Duration::from_secs(3600);

/// What `gc` removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Records removed.
    pub records: u64,
    /// Output trees removed.
    pub trees: u64,
    /// Objects removed.
    pub objects: u64,
    /// Bytes of the removed objects (the data; tree files are links to objects).
    pub bytes: u64,
}

impl Cache {
    /// Deletes every record not in `keep`, every tree no kept record leads to, and every
    /// object no kept tree lists. Run it under the workspace lock.
    pub fn gc(&self, keep: &[Hash]) -> anyhow::Result<GcStats> {
        let keep: BTreeSet<Hash> = keep.iter().copied().collect();
        let mut stats = GcStats::default();

        // Trees to keep, and the manifests that say which objects they need.
        let mut kept_trees = BTreeSet::new();
        let mut manifests = Vec::new();
        let mut todo: Vec<Hash> = Vec::new();
        for key in &keep {
            if let Some(r) = self.get_record(key)? {
                todo.push(r.output);
                todo.extend(r.retains.iter().copied());
                manifests.push(r.manifest);
            }
        }
        while let Some(h) = todo.pop() {
            if kept_trees.insert(h) {
                todo.extend(self.tree_retains(&h));
                if let Some(m) = self.load_manifest(&h)? {
                    manifests.push(m);
                }
            }
        }
        let mut kept_objects = BTreeSet::new();
        for m in &manifests {
            for e in &m.entries {
                if let EntryKind::File {
                    hash, executable, ..
                } = e.kind
                {
                    kept_objects.insert((hash, executable));
                }
            }
        }

        self.bump_records_generation()?;
        for (name, path) in sharded_files(&self.dir("records"))? {
            if is_tmp_name(&name) {
                remove_if_stale(&path)?;
            } else if !name.parse().is_ok_and(|h: Hash| keep.contains(&h)) {
                remove_file(&path)?;
                stats.records += 1;
            }
        }

        for entry in read_dir(&self.dir("trees"))? {
            let (name, path) = entry;
            if is_tmp_name(&name) {
                if is_stale(&path) {
                    remove_dir_force(&path)?;
                }
            } else if !name.parse().is_ok_and(|h: Hash| kept_trees.contains(&h)) {
                remove_dir_force(&path)?;
                stats.trees += 1;
            }
        }

        for (name, path) in sharded_files(&self.dir("stamps"))? {
            if is_tmp_name(&name) {
                remove_if_stale(&path)?;
            } else if !name.parse().is_ok_and(|h: Hash| kept_trees.contains(&h)) {
                remove_file(&path)?;
            }
        }

        for (name, path) in sharded_files(&self.dir("manifests"))? {
            if is_tmp_name(&name) {
                remove_if_stale(&path)?;
                continue;
            }
            let stem = name.split('.').next().unwrap_or("");
            if !stem.parse().is_ok_and(|h: Hash| kept_trees.contains(&h)) {
                remove_file(&path)?;
            }
        }

        for (name, path) in sharded_files(&self.dir("objects"))? {
            if is_tmp_name(&name) {
                remove_if_stale(&path)?;
                continue;
            }
            let (stem, executable) = match name.strip_suffix(".x") {
                Some(s) => (s, true),
                None => (name.as_str(), false),
            };
            if !stem
                .parse()
                .is_ok_and(|h: Hash| kept_objects.contains(&(h, executable)))
            {
                let len = std::fs::symlink_metadata(&path)
                    .map(|m| m.len())
                    .unwrap_or(0);
                remove_file(&path)?;
                stats.objects += 1;
                stats.bytes += len;
            }
        }
        Ok(stats)
    }
}

/// (name, path) of each entry of `dir`; a missing `dir` is empty.
fn read_dir(dir: &Path) -> anyhow::Result<Vec<(String, std::path::PathBuf)>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list `{}`", dir.display())),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.with_context(|| format!("cannot list `{}`", dir.display()))?;
        out.push((e.file_name().to_string_lossy().into_owned(), e.path()));
    }
    Ok(out)
}

/// The files of a sharded directory (`<dir>/<xx>/<name>`).
pub(crate) fn sharded_files(dir: &Path) -> anyhow::Result<Vec<(String, std::path::PathBuf)>> {
    let mut out = Vec::new();
    for (_, shard) in read_dir(dir)? {
        if shard.is_dir() {
            out.extend(read_dir(&shard)?);
        }
    }
    Ok(out)
}

fn is_stale(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age > STALE_TMP_AGE)
}

fn remove_if_stale(path: &Path) -> anyhow::Result<()> {
    if is_stale(path) {
        remove_file(path)?;
    }
    Ok(())
}

fn remove_file(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove `{}`", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::record_for;

    #[test]
    fn gc_keeps_retained_trees_of_kept_records_and_deletes_the_rest() {
        let (_dir, c) = crate::test_cache("gc");
        let (kbase, koverlay, kother) = (
            Hash::of_bytes(b"base"),
            Hash::of_bytes(b"overlay"),
            Hash::of_bytes(b"other"),
        );
        let base = record_for(&c, &kbase, &[("image.qcow2", b"base image")], &[]);
        let overlay = record_for(
            &c,
            &koverlay,
            &[("image.qcow2", b"overlay image")],
            &[base.output],
        );
        let other = record_for(&c, &kother, &[("x", b"unrelated bytes")], &[]);

        let stats = c.gc(&[koverlay]).unwrap();
        assert_eq!((stats.records, stats.trees, stats.objects), (2, 1, 1));
        assert_eq!(stats.bytes, b"unrelated bytes".len() as u64);
        assert!(c.get_record(&koverlay).unwrap().is_some());
        assert!(c.get_record(&kbase).unwrap().is_none());
        assert!(c.has_tree(&overlay.output));
        assert!(
            c.has_tree(&base.output),
            "the overlay's backing tree lives on"
        );
        assert!(!c.tree_path(&other.output).exists());
        assert!(!c.has_object(&Hash::of_bytes(b"unrelated bytes")));

        // Once the base's record is gone, the overlay alone still keeps it alive.
        assert_eq!(c.gc(&[koverlay]).unwrap(), GcStats::default());
        assert!(c.has_tree(&base.output));

        // Nothing kept: everything goes.
        let stats = c.gc(&[]).unwrap();
        assert_eq!((stats.records, stats.trees, stats.objects), (1, 2, 2));
        assert!(!c.has_tree(&base.output));
    }

    #[test]
    fn a_tree_committed_without_a_record_is_no_cache_hit_and_gc_removes_it() {
        // A run killed between commit_tree and put_record.
        let (_dir, c) = crate::test_cache("gc_orphan");
        let key = Hash::of_bytes(b"step");
        let t = c.new_tree().unwrap();
        std::fs::write(t.path().join("out"), b"orphan").unwrap();
        let m = c.commit_tree(t).unwrap();
        assert_eq!(c.get_record(&key).unwrap(), None);
        let stats = c.gc(&[key]).unwrap();
        assert_eq!((stats.records, stats.trees, stats.objects), (0, 1, 1));
        assert!(!c.tree_path(&m.hash).exists());
        assert!(c.load_manifest(&m.hash).unwrap().is_none());
    }

    #[test]
    fn gc_removes_stale_temp_trees_but_not_fresh_ones() {
        let (_dir, c) = crate::test_cache("gc_tmp");
        let fresh = c.new_tree().unwrap();
        let stale = c.new_tree().unwrap();
        let old = std::fs::FileTimes::new()
            .set_modified(SystemTime::now() - STALE_TMP_AGE - Duration::from_secs(60));
        std::fs::File::open(stale.path())
            .unwrap()
            .set_times(old)
            .unwrap();
        c.gc(&[]).unwrap();
        assert!(fresh.path().exists());
        assert!(!stale.path().exists());
    }
}
