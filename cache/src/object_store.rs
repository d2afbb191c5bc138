//! The object store: every output file's bytes, once, named by their blake3 hash.
//!
//! `objects/<hex[0..2]>/<hex>` holds a non-executable file (mode 0444), `<hex>.x` the same
//! bytes as an executable (0555): a hard-linked inode has one mode, so the two cannot share a
//! name. Objects are never modified in place; an object name appears (by a hard link or a
//! `rename`, both atomic) only after its bytes are fsynced, so a crash leaves either no object
//! or a complete one. When two runs store the same bytes at once, the hard link decides: it
//! never replaces an existing name, so exactly one wins and the other links to the winner.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::atomic::{parent_of, unique_tmp_name};
use crate::link::{LinkKind, link_or_copy};
use crate::{Cache, Hash, hash_file};

/// A file taken into the store.
pub(crate) struct Ingested {
    pub hash: Hash,
    pub size: u64,
    pub executable: bool,
    /// The directory that got a new name (the object's shard, or the tree file's directory).
    pub new_name_in: PathBuf,
}

/// The mode of an object and of a committed tree file.
pub(crate) fn read_only_mode(executable: bool) -> u32 {
    if executable { 0o555 } else { 0o444 }
}

impl Cache {
    /// Where the non-executable object with hash `h` lives.
    pub fn object_path(&self, h: &Hash) -> PathBuf {
        self.object_file(h, false)
    }

    /// Where the object with hash `h` lives, in its executable or plain variant.
    pub fn object_file(&self, h: &Hash, executable: bool) -> PathBuf {
        self.sharded("objects", h, if executable { ".x" } else { "" })
    }

    /// Whether the store holds the bytes `h` (in either variant).
    pub fn has_object(&self, h: &Hash) -> bool {
        self.object_file(h, false).is_file() || self.object_file(h, true).is_file()
    }

    /// Takes the regular file `file` (inside a temporary tree) into the store.
    ///
    /// Afterwards `file` is read-only and shares its bytes with the object: if the object was
    /// absent, `file` itself is linked in; if present, `file` is replaced by a link to it (so
    /// identical outputs take the space once). The caller must fsync `Ingested::new_name_in` (after all files, once per directory).
    pub(crate) fn ingest_file(&self, file: &Path) -> anyhow::Result<Ingested> {
        let meta = std::fs::symlink_metadata(file)
            .with_context(|| format!("cannot stat `{}`", file.display()))?;
        let size = meta.len();
        let executable = meta.mode() & 0o111 != 0;
        let mode = read_only_mode(executable);
        let hash = hash_file(file)?;
        let object = self.object_file(&hash, executable);

        let existing = std::fs::symlink_metadata(&object).ok();
        let present = existing
            .as_ref()
            .is_some_and(|om| om.is_file() && om.len() == size);
        let damaged = existing.is_some() && !present;
        // Absent (or a damaged object of the wrong size): store this file's bytes. Losing a
        // race to another thread storing the same bytes makes it present after all.
        let won = !present && self.publish(file, &object, mode, damaged)?;
        if !won {
            let om = std::fs::metadata(&object)
                .with_context(|| format!("cannot stat `{}`", object.display()))?;
            if (om.dev(), om.ino()) != (meta.dev(), meta.ino()) {
                // Present: point the tree at the stored bytes and drop this copy.
                let tmp = parent_of(file).join(unique_tmp_name());
                let kind = link_or_copy(&object, &tmp)?;
                if kind != LinkKind::Hardlink {
                    seal(&tmp, mode)?;
                }
                std::fs::rename(&tmp, file).with_context(|| {
                    format!("cannot replace `{}` by its stored object", file.display())
                })?;
            }
        }
        Ok(Ingested {
            hash,
            size,
            executable,
            new_name_in: parent_of(if won { &object } else { file }),
        })
    }

    /// Puts the bytes of `file` at `object`. Returns false if another thread or process put
    /// them there first (then `object` is left as it is), unless `replace` (the existing
    /// object is damaged).
    fn publish(
        &self,
        file: &Path,
        object: &Path,
        mode: u32,
        replace: bool,
    ) -> anyhow::Result<bool> {
        seal(file, mode)?;
        let shard = parent_of(object);
        std::fs::create_dir_all(&shard)
            .with_context(|| format!("cannot create `{}`", shard.display()))?;
        let moved = |e: std::io::Error| {
            anyhow::Error::new(e).context(format!(
                "cannot move `{}` into the object store",
                file.display()
            ))
        };
        // Where reflinks are known not to work (ext4), link the file in directly: one
        // syscall, and a hard link never replaces an existing name, so one writer wins.
        if !replace && crate::link::reflink_unsupported(file) {
            match std::fs::hard_link(file, object) {
                Ok(()) => return Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
                Err(_) => {} // EMLINK, EXDEV...: the general way below copies
            }
        }
        let tmp = shard.join(unique_tmp_name());
        let kind = link_or_copy(file, &tmp)?;
        if kind != LinkKind::Hardlink {
            seal(&tmp, mode)?;
        }
        let won = if replace {
            std::fs::rename(&tmp, object).map(|_| true)
        } else {
            match std::fs::hard_link(&tmp, object) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                // No hard links on this filesystem: rename (identical bytes either way).
                Err(_) => std::fs::rename(&tmp, object).map(|_| true),
            }
        };
        let _ = std::fs::remove_file(&tmp);
        won.map_err(moved)
    }
}

/// Gives `path` the read-only `mode` (bytes already durable).
pub(crate) fn make_read_only(path: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot make `{}` read-only", path.display()))
}

/// Makes `path` read-only with `mode` and fsyncs its bytes.
pub(crate) fn seal(path: &Path, mode: u32) -> anyhow::Result<()> {
    make_read_only(path, mode)?;
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot fsync `{}`", path.display()))
}
