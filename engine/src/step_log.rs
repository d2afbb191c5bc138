//! A step's log file: every command line a step runs and every line its
//! programs write, shared by the threads that stream their output. A failure
//! message quotes its last lines; secrets are masked (`masking.rs`). Imports `masking`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;

/// A step's log file, shared by the threads that stream its programs' output.
#[derive(Clone)]
pub struct StepLog {
    file: Arc<Mutex<Option<File>>>,
    path: PathBuf,
    mask: Arc<crate::masking::Mask>,
}

impl StepLog {
    /// Create (or truncate) the log at `path`, and its directory.
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create log directory {}", parent.display()))?;
        }
        let file =
            File::create(path).with_context(|| format!("cannot create log {}", path.display()))?;
        Ok(StepLog {
            file: Arc::new(Mutex::new(Some(file))),
            path: path.to_path_buf(),
            mask: Arc::default(),
        })
    }

    /// Hide the step's secrets in every line written from now on (see `masking.rs`).
    pub fn with_mask(mut self, mask: crate::masking::Mask) -> Self {
        self.mask = Arc::new(mask);
        self
    }

    /// A log that discards everything.
    pub fn discard() -> Self {
        StepLog {
            file: Arc::new(Mutex::new(None)),
            path: PathBuf::from("/dev/null"),
            mask: Arc::default(),
        }
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one line.
    pub fn line(&self, text: &str) {
        if let Some(f) = self.file.lock().unwrap().as_mut() {
            let _ = writeln!(f, "{}", self.mask.apply(text));
        }
    }

    /// The last `n` lines of the log, for failure messages.
    pub fn tail(&self, n: usize) -> Vec<String> {
        StepLog::tail_of(&self.path, n)
    }

    /// The last `n` lines of the log file at `path`.
    pub fn tail_of(path: &Path, n: usize) -> Vec<String> {
        let Ok(bytes) = std::fs::read(path) else {
            return Vec::new();
        };
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}
