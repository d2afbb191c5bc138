//! What the user sees while steps run.
//!
//! On a terminal: one indicatif line per running step (name, elapsed time, last
//! line of its output). Elsewhere (CI logs, pipes, `TERM=dumb`): plain
//! one-line-per-event output. Events are the same text in both modes
//! (`qflow: ok STEP 1.2s`), so logs and tests read one format.
//!
//! [`Display`] holds the user's choices: `-q` keeps only errors and warnings (a
//! failed step, its report, `warning: ...`) and no bars; `--color auto|always|never`
//! colours the event's first word (`ok`, `cached`, `FAILED`). `auto` colours on a
//! terminal unless `NO_COLOR` is set; `NO_COLOR` removes colour only, never the
//! progress lines.
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

/// When to colour: `--color auto|always|never`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ColorChoice {
    /// On a terminal, unless `NO_COLOR` is set.
    #[default]
    Auto,
    /// Always, even into a pipe or under `NO_COLOR`.
    Always,
    /// Never.
    Never,
}

/// What the user asked the display to be.
#[derive(Debug, Clone, Copy, Default)]
pub struct Display {
    /// `-q`: errors and warnings only, no progress lines.
    pub quiet: bool,
    /// `--color`.
    pub color: ColorChoice,
}

impl Display {
    /// Whether to draw progress lines and whether to colour, for stderr being a
    /// terminal (and `TERM` not `dumb`) or not, and `NO_COLOR` set or not.
    fn modes(self, terminal: bool, no_color: bool) -> (bool, bool) {
        let color = match self.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => terminal && !no_color,
        };
        (terminal && !self.quiet, color)
    }
}

/// The run's display.
pub struct Progress {
    fancy: Option<MultiProgress>,
    quiet: bool,
    color: bool,
    bars: Mutex<HashMap<String, ProgressBar>>,
    /// Plain-mode lines waiting for the next flush, each ending in a newline.
    held: Mutex<String>,
}

impl Progress {
    /// Bars on a terminal unless `TERM=dumb`; plain lines otherwise; colour as `auto`.
    pub fn new() -> Progress {
        Progress::with(Display::default())
    }

    /// The display the user asked for (`-q`, `--color`).
    pub fn with(display: Display) -> Progress {
        let terminal = std::io::stderr().is_terminal()
            && std::env::var("TERM").map(|t| t != "dumb").unwrap_or(true);
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let (bars, color) = display.modes(terminal, no_color);
        let fancy =
            bars.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)));
        Progress {
            fancy,
            quiet: display.quiet,
            color,
            bars: Mutex::new(HashMap::new()),
            held: Mutex::new(String::new()),
        }
    }

    /// Plain output only.
    pub fn plain() -> Progress {
        Progress {
            fancy: None,
            quiet: false,
            color: false,
            bars: Mutex::new(HashMap::new()),
            held: Mutex::new(String::new()),
        }
    }

    /// Print one event line (`qflow: ...`), after any held lines.
    pub fn event(&self, text: &str) {
        if self.quiet && !is_error(text) {
            return;
        }
        let painted;
        let text = if self.color {
            painted = paint(text);
            &painted
        } else {
            text
        };
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
        if self.fancy.is_some() || self.quiet {
            return self.event(text);
        }
        let mut held = self.held.lock().unwrap();
        if self.color {
            push_line(&mut held, &paint(text));
        } else {
            push_line(&mut held, text);
        }
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

/// What `-q` keeps: a failure, the failure report, a warning, an interruption.
fn is_error(text: &str) -> bool {
    ["FAILED", "failed:", "warning", "error", "interrupted"]
        .iter()
        .any(|p| text.starts_with(p))
}

/// The event with its first word coloured: `ok` green, `cached` cyan, `FAILED`
/// and `failed:` bold red, `warning` yellow.
fn paint(text: &str) -> String {
    let (word, rest) = text.split_at(text.find([' ', '\n']).unwrap_or(text.len()));
    let code = match word {
        "ok" => "32",
        "cached" => "36",
        "FAILED" | "failed:" => "1;31",
        "warning:" => "33",
        _ => return text.to_string(),
    };
    format!("\x1b[{code}m{word}\x1b[0m{rest}")
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

#[cfg(test)]
mod tests {
    use super::{ColorChoice, Display, paint};

    #[test]
    fn no_color_removes_colour_but_keeps_the_progress_lines() {
        let auto = Display::default();
        assert_eq!(auto.modes(true, false), (true, true));
        assert_eq!(auto.modes(true, true), (true, false));
        assert_eq!(auto.modes(false, false), (false, false));
        let always = Display {
            color: ColorChoice::Always,
            ..auto
        };
        assert_eq!(always.modes(false, true), (false, true));
        let never = Display {
            color: ColorChoice::Never,
            ..auto
        };
        assert_eq!(never.modes(true, false), (true, false));
        let quiet = Display {
            quiet: true,
            ..auto
        };
        assert_eq!(quiet.modes(true, false), (false, true));
    }

    #[test]
    fn only_the_state_word_is_coloured() {
        assert_eq!(paint("ok gen 1.2s"), "\x1b[32mok\x1b[0m gen 1.2s");
        assert_eq!(paint("cached gen"), "\x1b[36mcached\x1b[0m gen");
        assert_eq!(
            paint("FAILED gen after 0.1s"),
            "\x1b[1;31mFAILED\x1b[0m gen after 0.1s"
        );
        assert_eq!(paint("run gen (never ran)"), "run gen (never ran)");
    }
}
