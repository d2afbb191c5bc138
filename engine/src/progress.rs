//! What the user sees while steps run.
//!
//! On a terminal: one indicatif line per running step (name, elapsed time, last
//! line of its output). Elsewhere (CI logs, pipes) and under `NO_COLOR`: plain
//! one-line-per-event output. Events are the same text in both modes
//! (`qflow: ok STEP 1.2s`), so logs and tests read one format.
//!
//! Lines about steps that did nothing (`cached STEP`) may be held and written
//! together at the next [`Progress::flush`] or event: a no-op apply of 1,000
//! steps then costs one write, not 1,000. Order is kept: any other event writes
//! the held lines first.
//!
//! Imports `context` (for the progress sink it implements).

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
    /// Plain-mode lines waiting for the next flush, each ending in a newline.
    held: Mutex<String>,
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
            held: Mutex::new(String::new()),
        }
    }

    /// Plain output only.
    pub fn plain() -> Progress {
        Progress {
            fancy: None,
            bars: Mutex::new(HashMap::new()),
            held: Mutex::new(String::new()),
        }
    }

    /// Print one event line (`qflow: ...`), after any held lines.
    pub fn event(&self, text: &str) {
        match &self.fancy {
            Some(mp) => {
                let _ = mp.println(format!("qflow: {text}"));
            }
            None => {
                let mut held = self.held.lock().unwrap();
                push_line(&mut held, text);
                write_out(&mut held);
            }
        }
    }

    /// An event line that may wait for the next [`Progress::flush`] or event.
    pub fn event_held(&self, text: &str) {
        if self.fancy.is_some() {
            return self.event(text);
        }
        let mut held = self.held.lock().unwrap();
        push_line(&mut held, text);
        if held.len() >= HELD_LIMIT {
            write_out(&mut held);
        }
    }

    /// Write the held lines now.
    pub fn flush(&self) {
        let mut held = self.held.lock().unwrap();
        if !held.is_empty() {
            write_out(&mut held);
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

/// Held output past this size is written at once (a pipe's buffer is 64 KiB).
const HELD_LIMIT: usize = 32 * 1024;

fn push_line(buf: &mut String, text: &str) {
    buf.push_str("qflow: ");
    buf.push_str(text);
    buf.push('\n');
}

/// One write of everything held (stderr is unbuffered: a `writeln!` is two writes).
fn write_out(held: &mut String) {
    let _ = std::io::stderr().lock().write_all(held.as_bytes());
    held.clear();
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.flush();
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
