//! A step's log file: every command line a step runs and every line its
//! programs write, shared by the threads that stream their output. A failure
//! message quotes its last lines; secrets are masked (`masking.rs`).
//!
//! With `qflow apply -v` every line is also handed, masked and whole, to the
//! echo the binary installs ([`echo_lines`]), which prints it as `[step] line`:
//! one call per line, so the lines of steps running side by side never mix
//! within a line. The step is named by the log's file name (`<step>.log`).
//! Imports `masking`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context as _;

/// Where `-v` sends each log line: `(step, line)`.
pub type Echo = Arc<dyn Fn(&str, &str) + Send + Sync>;

static ECHO: RwLock<Option<Echo>> = RwLock::new(None);

/// Hand every line written to a step log from now on to `echo` as well (or stop, with `None`).
pub fn echo_lines(echo: Option<Echo>) {
    *ECHO.write().unwrap() = echo;
}

/// A step's log file, shared by the threads that stream its programs' output.
#[derive(Clone)]
pub struct StepLog {
    file: Arc<Mutex<Option<File>>>,
    path: PathBuf,
    mask: Arc<crate::masking::Mask>,
    /// The step, as its lines are echoed (the log's file name less `.log`).
    step: Arc<str>,
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
        let step = (path.file_stem())
            .map(|s| s.to_string_lossy())
            .unwrap_or_default();
        Ok(StepLog {
            file: Arc::new(Mutex::new(Some(file))),
            path: path.to_path_buf(),
            mask: Arc::default(),
            step: step.into(),
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
            step: "".into(),
        }
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one line (and echo it, under `-v`).
    pub fn line(&self, text: &str) {
        let mut file = self.file.lock().unwrap();
        let Some(f) = file.as_mut() else {
            return;
        };
        let masked = self.mask.apply(text);
        let _ = writeln!(f, "{masked}");
        // Under the file's lock: one step's lines are echoed in the order logged.
        if let Some(echo) = ECHO.read().unwrap().as_ref() {
            for line in masked.lines() {
                echo(&self.step, line);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_verbose_each_masked_line_is_echoed_with_its_step() {
        let dir = std::env::temp_dir().join(format!("qflow-step-log-{}", std::process::id()));
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let into = seen.clone();
        echo_lines(Some(Arc::new(move |step: &str, line: &str| {
            into.lock().unwrap().push((step.into(), line.into()))
        })));
        let (name, secret) = ("PASSWORD".to_string(), "hunter2".to_string());
        let mask = crate::masking::Mask::of_env([(&name, &secret)]);
        let log = (StepLog::create(&dir.join("echoed-step.log")).unwrap()).with_mask(mask);
        log.line("password hunter2 accepted");
        log.line("two\nlines");
        echo_lines(None);
        log.line("after -v is off");
        // Other tests' logs (running at the same time) are echoed too: keep this one's.
        let seen: Vec<_> = (seen.lock().unwrap().iter())
            .filter(|(s, _)| s == "echoed-step")
            .cloned()
            .collect();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(!seen[0].1.contains("hunter2"), "{seen:?}");
        assert_eq!(seen[1].1, "two");
        assert_eq!(seen[2].1, "lines");
        let logged = std::fs::read_to_string(dir.join("echoed-step.log")).unwrap();
        assert!(logged.contains("after -v is off"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
