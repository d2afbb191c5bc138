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
                    todo.extend(self.backing_trees(&m));
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

impl Cache {
    /// The trees the qcow2 images of tree `m` are backed by, wherever their backing
    /// paths lead: straight into `trees/<hash>/`, or through `out/` links and other
    /// symlinks (a step given `from: ./out/system/image.qcow2`). A kept overlay
    /// keeps its base alive, however it names it.
    fn backing_trees(&self, m: &crate::Manifest) -> Vec<Hash> {
        let root = self.tree_path(&m.hash);
        let Ok(trees) = self.dir("trees").canonicalize() else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for e in &m.entries {
            if !matches!(e.kind, EntryKind::File { .. }) {
                continue;
            }
            let file = root.join(&e.path);
            let mut seen = 0;
            let mut at = file;
            // Follow the chain: an overlay of an overlay names the next file down.
            while let Some(backing) = qcow2_backing_file(&at) {
                let dir = at.parent().map(Path::to_path_buf).unwrap_or_default();
                let Ok(real) = dir.join(&backing).canonicalize() else {
                    break;
                };
                let Ok(rel) = real.strip_prefix(&trees) else {
                    break;
                };
                if let Some(h) = rel
                    .components()
                    .next()
                    .and_then(|c| c.as_os_str().to_str())
                    .and_then(|s| s.parse::<Hash>().ok())
                {
                    found.push(h);
                }
                seen += 1;
                if seen > 16 {
                    break;
                }
                at = real;
            }
        }
        found
    }
}

/// The backing file name in the header of qcow2 image `path`, if it has one.
fn qcow2_backing_file(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let mut header = [0u8; 20];
    f.read_exact(&mut header).ok()?;
    if &header[..4] != b"QFI\xfb" {
        return None;
    }
    let offset = u64::from_be_bytes(header[8..16].try_into().ok()?);
    let size = u32::from_be_bytes(header[16..20].try_into().ok()?) as usize;
    if offset == 0 || size == 0 || size > 4096 {
        return None;
    }
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut name = vec![0u8; size];
    f.read_exact(&mut name).ok()?;
    String::from_utf8(name).ok()
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
    fn gc_keeps_the_base_an_overlay_names_through_an_out_link() {
        let (dir, c) = crate::test_cache("gc_backing");
        let base = c.new_tree().unwrap();
        let made = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(base.path().join("image.qcow2"))
            .arg("1M")
            .status()
            .expect("qemu-img runs");
        assert!(made.success());
        let base = c.commit_tree(base).unwrap();
        let kbase = Hash::of_bytes(b"base");
        record_for(&c, &kbase, &[], &[]);
        // `out/system` -> the base tree, as qflow links it beside a workflow.
        let out = dir.join("out");
        std::fs::create_dir_all(&out).unwrap();
        std::os::unix::fs::symlink(c.tree_path(&base.hash), out.join("system")).unwrap();

        let overlay = c.new_tree().unwrap();
        let made = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg("../../../out/system/image.qcow2")
            .arg(overlay.path().join("image.qcow2"))
            .status()
            .expect("qemu-img runs");
        assert!(made.success());
        let overlay = c.commit_tree(overlay).unwrap();
        let koverlay = Hash::of_bytes(b"overlay");
        let rec = crate::Record {
            key: koverlay,
            output: overlay.hash,
            manifest: overlay.clone(),
            retains: vec![],
            created_unix: 0,
            duration_ms: 0,
            meta: Default::default(),
        };
        c.put_record(&koverlay, &rec).unwrap();

        c.gc(&[koverlay]).unwrap();
        assert!(c.has_tree(&overlay.hash));
        assert!(
            c.has_tree(&base.hash),
            "the base named through out/ lives on"
        );
        let info = std::process::Command::new("qemu-img")
            .args(["info", "-U", "--backing-chain"])
            .arg(c.tree_path(&overlay.hash).join("image.qcow2"))
            .output()
            .unwrap();
        assert!(
            info.status.success(),
            "{}",
            String::from_utf8_lossy(&info.stderr)
        );
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
