//! What the user sees while steps run.
//!
//! On a terminal: one indicatif line per running step (name, elapsed time, last
//! line of its output). Elsewhere (CI logs, pipes) and under `NO_COLOR`: plain
//! one-line-per-event output. Events are the same text in both modes
//! (`qflow: ok STEP 1.2s`), so logs and tests read one format.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::context::ProgressSink;

/// The run's display.
pub struct Progress {
    fancy: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Progress {
    /// Bars on a terminal unless `NO_COLOR` is set or `TERM=dumb`; plain lines otherwise.
    pub fn new() -> Progress {
        let terminal = std::io::stderr().is_terminal()
            && std::env::var_os("NO_COLOR").is_none()
            && std::env::var("TERM").map(|t| t != "dumb").unwrap_or(true);
        let fancy = terminal
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)));
        Progress {
            fancy,
            bars: Mutex::new(HashMap::new()),
        }
    }

    /// Plain output only.
    pub fn plain() -> Progress {
        Progress {
            fancy: None,
            bars: Mutex::new(HashMap::new()),
        }
    }

    /// Print one event line (`qflow: ...`).
    pub fn event(&self, text: &str) {
        let line = format!("qflow: {text}");
        match &self.fancy {
            Some(mp) => {
                let _ = mp.println(line);
            }
            None => {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "{line}");
            }
        }
    }

    /// A step started: show its line.
    pub fn start(&self, step: &str) {
        if let Some(mp) = &self.fancy {
            let bar = mp.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix:.bold} {elapsed:>4} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(step.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            self.bars.lock().unwrap().insert(step.to_string(), bar);
        }
    }

    /// A step ended: remove its line.
    pub fn finish(&self, step: &str) {
        if let Some(bar) = self.bars.lock().unwrap().remove(step) {
            bar.finish_and_clear();
            if let Some(mp) = &self.fancy {
                mp.remove(&bar);
            }
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl ProgressSink for Progress {
    fn message(&self, step: &str, text: &str) {
        if let Some(bar) = self.bars.lock().unwrap().get(step) {
            let text: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
            bar.set_message(text);
        }
    }
}
