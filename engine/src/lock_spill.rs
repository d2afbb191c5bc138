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
        })
    }

    /// Appends `text`; where it is, for [`Spill::read`].
    pub fn put(&self, text: &str) -> std::io::Result<u64> {
        let at = self.end.fetch_add(text.len() as u64, Ordering::SeqCst);
        self.file.write_all_at(text.as_bytes(), at)?;
        Ok(at)
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
}
