//! The last lock file, kept open after it was read so its bytes can be read again
//! when an apply needs them instead of being held for the whole run.
//!
//! A lock of 10,000 steps is 6 MB and one of 50,000 is 30 MB. Held through a first
//! apply that has a lock (a clone of someone's workflow, or a cache that was
//! cleared), they were 6 of the 36 MB at its peak, while the run reads only the
//! entries of the steps it records, and the lock writer copies the unchanged ones.
//! Nor is it read whole to begin with, unless it must be parsed: it is hashed and
//! its entries are found a piece at a time ([`LockSource::hash`],
//! [`LockSource::reader`]); read whole, it was a third of a no-op's peak.
//!
//! The open handle keeps reading the same file even after another apply replaced the
//! lock (qflow replaces it by a rename); a lock changed in place since it was read (by
//! something else than qflow) is told by its size and modification time and is not
//! read as the old one.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

/// An open lock file and what it was when read.
#[derive(Debug)]
pub struct LockSource {
    file: File,
    was: Stamp,
}

/// What tells a file changed in place: its size and modification time (not its
/// change time: replacing the lock by a rename unlinks this file, which changes that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: (i64, i64),
}

impl Stamp {
    fn of(file: &File) -> std::io::Result<Stamp> {
        let m = file.metadata()?;
        Ok(Stamp {
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
        })
    }
}

/// The size of the pieces copied from the file (no whole entry range is held).
const PIECE: usize = 256 << 10;

/// The size of the pieces a lock is hashed in: large enough for every core.
const HASH_PIECE: usize = 1 << 20;

impl LockSource {
    /// Open the lock at `path`; nothing is read yet.
    pub fn open(path: &Path) -> std::io::Result<LockSource> {
        let file = File::open(path)?;
        let was = Stamp::of(&file)?;
        Ok(LockSource { file, was })
    }

    /// The blake3 digest of the file as it was opened, read a piece at a time
    /// (the same digest as of its bytes whole).
    pub fn hash(&self) -> std::io::Result<qflow_cache::Hash> {
        let len = self.was.len as usize;
        let mut hasher = blake3::Hasher::new();
        let mut piece = vec![0; HASH_PIECE.min(len)];
        let mut at = 0;
        while at < len {
            let n = HASH_PIECE.min(len - at);
            self.file.read_exact_at(&mut piece[..n], at as u64)?;
            hasher.update_rayon(&piece[..n]);
            at += n;
        }
        self.unchanged()?;
        Ok(qflow_cache::Hash(*hasher.finalize().as_bytes()))
    }

    /// The file from its start, as a reader (the handle's position is not used, so
    /// other reads of this source may go on meanwhile); check [`Self::unchanged`]
    /// after.
    pub fn reader(&self) -> impl Read + '_ {
        struct At<'f> {
            file: &'f File,
            pos: u64,
            end: u64,
        }
        impl Read for At<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let left = self.end.saturating_sub(self.pos) as usize;
                let want = buf.len().min(left);
                let n = self.file.read_at(&mut buf[..want], self.pos)?;
                self.pos += n as u64;
                Ok(n)
            }
        }
        At {
            file: &self.file,
            pos: 0,
            end: self.was.len,
        }
    }

    /// Open the lock at `path` and read it whole, once.
    pub fn read(path: &Path) -> std::io::Result<(LockSource, Vec<u8>)> {
        let mut file = File::open(path)?;
        let was = Stamp::of(&file)?;
        let mut bytes = Vec::with_capacity(was.len as usize);
        file.read_to_end(&mut bytes)?;
        if bytes.len() as u64 != was.len {
            return Err(changed());
        }
        Ok((LockSource { file, was }, bytes))
    }

    /// The file's size when it was read.
    pub fn size(&self) -> u64 {
        self.was.len
    }

    /// Whether the file is still as it was read.
    pub fn unchanged(&self) -> std::io::Result<()> {
        match Stamp::of(&self.file)? == self.was {
            true => Ok(()),
            false => Err(changed()),
        }
    }

    /// The whole file again, as it was read.
    pub fn read_all(&self) -> std::io::Result<Vec<u8>> {
        self.unchanged()?;
        self.read_range(0..self.was.len as usize)
    }

    /// The file's bytes now, whatever they are.
    pub fn read_current(&self) -> std::io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        let mut file = &self.file;
        file.seek(std::io::SeekFrom::Start(0))?;
        file.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// The bytes in `range`.
    pub fn read_range(&self, range: Range<usize>) -> std::io::Result<Vec<u8>> {
        let mut bytes = vec![0; range.len()];
        self.file.read_exact_at(&mut bytes, range.start as u64)?;
        Ok(bytes)
    }

    /// Copy the bytes in `range` to `out`, a piece at a time.
    pub fn copy_range(&self, range: Range<usize>, out: &mut dyn Write) -> std::io::Result<()> {
        let mut piece = vec![0; PIECE.min(range.len())];
        let mut at = range.start;
        while at < range.end {
            let n = PIECE.min(range.end - at);
            self.file.read_exact_at(&mut piece[..n], at as u64)?;
            out.write_all(&piece[..n])?;
            at += n;
        }
        Ok(())
    }
}

fn changed() -> std::io::Error {
    std::io::Error::other(
        "the lock file changed on disk while this apply ran (not by qflow, which replaces it whole); it is left as it is: run the apply again",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lock holding `text` in a directory of its own, read: the directory, the
    /// lock's path and its source.
    fn read_lock(name: &str, text: &[u8]) -> (std::path::PathBuf, std::path::PathBuf, LockSource) {
        let d =
            std::env::temp_dir().join(format!("qflow-lock-source-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let path = d.join("qflow.lock");
        std::fs::write(&path, text).unwrap();
        let (source, bytes) = LockSource::read(&path).unwrap();
        assert_eq!(bytes, text);
        (d, path, source)
    }

    #[test]
    fn a_lock_replaced_by_a_rename_is_still_read_as_it_was() {
        let (d, path, source) = read_lock("renamed", b"old lock text");
        std::fs::write(d.join("new"), "the new lock, longer").unwrap();
        std::fs::rename(d.join("new"), &path).unwrap();
        assert_eq!(source.read_all().unwrap(), b"old lock text");
        assert_eq!(source.read_range(4..8).unwrap(), b"lock");
        let mut out = Vec::new();
        source.copy_range(0..3, &mut out).unwrap();
        assert_eq!(out, b"old");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_lock_changed_in_place_is_not_read_as_the_old_one() {
        let (d, path, source) = read_lock("in-place", b"old lock text");
        // Same size, other bytes: the times tell.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all(b"new")
            .unwrap();
        let e = source.read_all().unwrap_err();
        assert!(e.to_string().contains("changed on disk"), "{e}");
        assert!(source.unchanged().is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_lock_hashed_and_read_a_piece_at_a_time_is_the_lock_read_whole() {
        let text: Vec<u8> = (0..(2 * HASH_PIECE + 5)).map(|i| (i % 253) as u8).collect();
        let (d, _, source) = read_lock("pieces", &text);
        assert_eq!(source.hash().unwrap(), qflow_cache::Hash::of_bytes(&text));
        let mut read = Vec::new();
        source.reader().read_to_end(&mut read).unwrap();
        assert_eq!(read, text);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn pieces_of_a_large_range_are_copied_whole() {
        let text: Vec<u8> = (0..(3 * PIECE + 17)).map(|i| (i % 251) as u8).collect();
        let (d, _, source) = read_lock("large", &text);
        let mut out = Vec::new();
        source.copy_range(5..text.len(), &mut out).unwrap();
        assert_eq!(out, &text[5..]);
        let _ = std::fs::remove_dir_all(&d);
    }
}
