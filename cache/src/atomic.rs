//! Crash-safe file writes: a name in the cache either points at complete, durable bytes or
//! does not exist.
//!
//! Everything is written to a temporary name in the destination's own directory (so the final
//! `rename` never crosses a filesystem), fsynced, renamed into place, and then the directory is
//! fsynced so the new name itself survives a power cut. Temporary names start with `.tmp-` so
//! `gc` can sweep what a killed process left behind.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

/// Prefix of every temporary name the cache creates.
pub const TMP_PREFIX: &str = ".tmp-";

/// A name no other thread or process will pick: `.tmp-<pid>-<nanos>-<n>`.
pub fn unique_tmp_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{TMP_PREFIX}{}-{nanos}-{n}", std::process::id())
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory, fsync, rename,
/// fsync of the directory. Readers see the old content or the new, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_atomic_with(path, |out| out.write_all(bytes))
}

/// [`write_atomic`] of what `write` writes, through a buffer: large content made
/// piece by piece is never held whole in memory.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let dir = parent_of(path);
    let tmp = dir.join(unique_tmp_name());
    let result = (|| {
        let f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create `{}`", tmp.display()))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 16, f);
        write(&mut out).with_context(|| format!("cannot write `{}`", tmp.display()))?;
        let f = out
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write `{}`", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("cannot fsync `{}`", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| {
            format!("cannot rename `{}` to `{}`", tmp.display(), path.display())
        })?;
        fsync_dir(&dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` by temp file and rename, without fsync: readers see the old
/// content or the new, never a mix, but after a power cut the file may be missing or empty.
/// For what a reader checks and treats as absent when damaged (records, started marks):
/// losing it only means a step runs again.
pub fn write_replace(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_replace_with(path, |out| out.write_all(bytes))
}

/// [`write_replace`] of what `write` writes, through a buffer: large content made
/// piece by piece is never held whole in memory. Nothing replaces `path` when
/// `write` fails.
pub fn write_replace_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let tmp = parent_of(path).join(unique_tmp_name());
    let result = (|| {
        let f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create `{}`", tmp.display()))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 16, f);
        write(&mut out).with_context(|| format!("cannot write `{}`", tmp.display()))?;
        out.into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write `{}`", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename `{}` to `{}`", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Fsyncs a directory so the names created or removed in it are durable.
pub fn fsync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync directory `{}`", dir.display()))
}

/// The directory holding `path` (`.` for a bare name).
pub fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Removes a directory tree even when the cache made its directories read-only.
/// A missing directory is not an error.
pub fn remove_dir_force(dir: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot stat `{}`", dir.display())),
        Ok(m) if !m.is_dir() => {
            return std::fs::remove_file(dir)
                .with_context(|| format!("cannot remove `{}`", dir.display()));
        }
        Ok(_) => {}
    }
    // Directories first need their write bit back; files inside do not (unlinking needs
    // write permission on the directory only).
    for entry in walkdir::WalkDir::new(dir).into_iter().flatten() {
        if entry.file_type().is_dir() {
            let p = entry.path();
            if let Ok(m) = std::fs::symlink_metadata(p) {
                let mode = m.permissions().mode();
                if mode & 0o700 != 0o700 {
                    let _ =
                        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | 0o700));
                }
            }
        }
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r.with_context(|| format!("cannot remove `{}`", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_content_and_leaves_no_temp_file() {
        let dir = crate::test_dir("write_atomic");
        let p = dir.join("f.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "only the final file remains");
    }

    #[test]
    fn remove_dir_force_removes_read_only_trees() {
        let dir = crate::test_dir("remove_dir_force");
        let t = dir.join("t");
        std::fs::create_dir_all(t.join("sub")).unwrap();
        std::fs::write(t.join("sub/f"), b"x").unwrap();
        std::fs::set_permissions(t.join("sub"), std::fs::Permissions::from_mode(0o555)).unwrap();
        std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o555)).unwrap();
        remove_dir_force(&t).unwrap();
        assert!(!t.exists());
        remove_dir_force(&t).unwrap();
    }
}
