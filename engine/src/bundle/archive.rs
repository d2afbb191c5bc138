//! The bundle's archive: a gzip'd tar that is the same bytes for the same run.
//!
//! Entries are written in sorted order under one top directory, parents before
//! children, with a fixed owner and timestamp (2000-01-01) and modes kept only as
//! far as the engine keys them (executable or not), so bundling a run twice gives
//! the same archive. The file appears only when complete (written beside it, then
//! renamed).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The timestamp of every archive entry (2000-01-01T00:00:00Z).
const FIXED_MTIME: u64 = 946_684_800;

/// One archive entry, by its path inside the bundle directory.
pub enum Entry {
    /// A host file's bytes.
    File {
        /// The file on the host.
        source: PathBuf,
        /// Archived with mode 0755 instead of 0644.
        executable: bool,
    },
    /// Bytes made by qflow (the lock, the README).
    Bytes(Vec<u8>),
    /// A symlink with this target.
    Symlink(String),
    /// A directory.
    Dir,
}

/// Write `entries` under `top/` as a gzip'd tar at `out`, atomically.
pub fn write(out: &Path, top: &str, entries: &BTreeMap<String, Entry>) -> anyhow::Result<()> {
    let tmp = out.with_file_name(format!(
        ".{}.{}.tmp",
        out.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    if let Err(e) = write_to(&tmp, top, entries) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))
}

fn write_to(tmp: &Path, top: &str, entries: &BTreeMap<String, Entry>) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(FIXED_MTIME);
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    for (path, entry) in entries {
        // Parent directories first, so every extractor makes them 0755.
        let mut parent = Path::new(path).parent();
        let mut missing = Vec::new();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            let p = p.to_string_lossy().into_owned();
            if dirs.contains(&p) {
                break;
            }
            missing.push(p);
            parent = Path::new(missing.last().unwrap()).parent();
        }
        for d in missing.into_iter().rev() {
            let mut h = header(tar::EntryType::Directory, 0o755, 0);
            tar.append_data(&mut h, format!("{top}/{d}/"), std::io::empty())?;
            dirs.insert(d);
        }
        let name = format!("{top}/{path}");
        match entry {
            Entry::File { source, executable } => {
                let f = std::fs::File::open(source)
                    .with_context(|| format!("cannot read {}", source.display()))?;
                let len = f.metadata()?.len();
                let mode = if *executable { 0o755 } else { 0o644 };
                let mut h = header(tar::EntryType::Regular, mode, len);
                tar.append_data(&mut h, &name, f)?;
            }
            Entry::Bytes(b) => {
                let mut h = header(tar::EntryType::Regular, 0o644, b.len() as u64);
                tar.append_data(&mut h, &name, b.as_slice())?;
            }
            Entry::Symlink(target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                tar.append_link(&mut h, &name, target)?;
            }
            Entry::Dir => {
                if dirs.insert(path.clone()) {
                    let mut h = header(tar::EntryType::Directory, 0o755, 0);
                    tar.append_data(&mut h, format!("{name}/"), std::io::empty())?;
                }
            }
        }
    }
    let mut gz = tar.into_inner()?;
    gz.flush()?;
    let file = gz.finish()?;
    file.sync_all()?;
    Ok(())
}
