//! The text of a run's new lock entries, kept in a temporary file until the
//! lock is written at the end of the run.
//!
//! A run keeps the entry of every step that ran until it writes the lock; held
//! in memory, 10,000 of them were 7 MB at the run's peak. Each is appended here
//! as it is made, and read back as the lock is streamed out. The file is
//! removed as soon as it is opened, so a run that is killed leaves nothing
//! behind, and its pages stay in the page cache for the short time between
//! the write and the read.

use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// An unnamed file that entries' texts are appended to and read back from.
#[derive(Debug)]
pub struct Spill {
    file: std::fs::File,
    /// Where the next text goes.
    end: AtomicU64,
    /// Held while a text is appended piece by piece ([`Spill::append`]).
    appending: std::sync::Mutex<()>,
}

/// A text being appended to a [`Spill`] as it is made: one too big to be held
/// whole first (the lock entry of a step below 50,000 others is 5 MB).
/// Nothing else is put in the spill meanwhile.
pub struct Appending<'s> {
    spill: &'s Spill,
    _alone: std::sync::MutexGuard<'s, ()>,
    at: u64,
    len: u64,
}

impl Appending<'_> {
    /// Append `bytes` to the text.
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.spill.file.write_all_at(bytes, self.at + self.len)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// The text is whole: where it is and how long, for [`Spill::read`].
    pub fn finish(self) -> (u64, u64) {
        self.spill.end.store(self.at + self.len, Ordering::SeqCst);
        (self.at, self.len)
    }
}

impl Spill {
    /// A new spill file in `dir`, removed from it at once.
    pub fn create(dir: &Path) -> std::io::Result<Spill> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!(
            "lock-entries-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        std::fs::remove_file(&path)?;
        Ok(Spill {
            file,
            end: AtomicU64::new(0),
            appending: std::sync::Mutex::new(()),
        })
    }

    /// Appends `text`; where it is, for [`Spill::read`].
    pub fn put(&self, text: &str) -> std::io::Result<u64> {
        let _alone = self.appending.lock().unwrap_or_else(|e| e.into_inner());
        let at = self.end.fetch_add(text.len() as u64, Ordering::SeqCst);
        self.file.write_all_at(text.as_bytes(), at)?;
        Ok(at)
    }

    /// Start appending a text piece by piece; [`Appending::finish`] says where it is.
    pub fn append(&self) -> Appending<'_> {
        let alone = self.appending.lock().unwrap_or_else(|e| e.into_inner());
        Appending {
            spill: self,
            at: self.end.load(Ordering::SeqCst),
            len: 0,
            _alone: alone,
        }
    }

    /// Where `needle` first is in the `len` bytes at `at`, from their start; read
    /// a piece at a time.
    pub fn find(&self, at: u64, len: u64, needle: &[u8]) -> std::io::Result<Option<u64>> {
        const PIECE: usize = 1 << 16;
        let mut buf = Vec::with_capacity(PIECE + needle.len());
        let mut from = 0u64;
        while from < len {
            let keep = buf.len();
            let n = (PIECE as u64).min(len - from) as usize;
            buf.resize(keep + n, 0);
            self.file.read_exact_at(&mut buf[keep..], at + from)?;
            if let Some(i) = buf.windows(needle.len()).position(|w| w == needle) {
                return Ok(Some(from - keep as u64 + i as u64));
            }
            from += n as u64;
            // Keep a needle's length less one: a match may span two pieces.
            let tail = buf.len().saturating_sub(needle.len().saturating_sub(1));
            buf.drain(..tail);
        }
        Ok(None)
    }

    /// The `len` bytes put at `at`.
    pub fn read(&self, at: u64, len: usize) -> std::io::Result<String> {
        let mut bytes = vec![0; len];
        self.file.read_exact_at(&mut bytes, at)?;
        String::from_utf8(bytes).map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_put_read_back_the_same_and_the_file_has_no_name() {
        let dir = std::env::temp_dir().join(format!("qflow-spill-{}", std::process::id()));
        let spill = Spill::create(&dir).unwrap();
        let a = spill.put("first → entry").unwrap();
        let b = spill.put("second").unwrap();
        assert_eq!(spill.read(b, 6).unwrap(), "second");
        assert_eq!(
            spill.read(a, "first → entry".len()).unwrap(),
            "first → entry"
        );
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_text_appended_in_pieces_is_found_across_the_pieces_it_is_read_in() {
        let dir = std::env::temp_dir().join(format!("qflow-spill-find-{}", std::process::id()));
        let spill = Spill::create(&dir).unwrap();
        spill.put("before").unwrap();
        let mut text = vec![b'.'; 200_000];
        // Across the first 64 KiB read, and at the very end.
        text[65_530..65_540].copy_from_slice(b"\"key\": \"ab");
        text[199_996..].copy_from_slice(b"tail");
        let mut appending = spill.append();
        for piece in text.chunks(30_000) {
            appending.write(piece).unwrap();
        }
        let (at, len) = appending.finish();
        assert_eq!((at, len), (6, 200_000));
        assert_eq!(spill.find(at, len, b"\"key\": \"ab").unwrap(), Some(65_530));
        assert_eq!(spill.find(at, len, b"tail").unwrap(), Some(199_996));
        assert_eq!(
            spill.find(at, len, b"before").unwrap(),
            None,
            "only its own bytes"
        );
        assert_eq!(
            spill.put("after").unwrap(),
            200_006,
            "the next text follows it"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
