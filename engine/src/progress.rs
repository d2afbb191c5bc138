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
//! The run's overall `[n/m]` (steps finished of steps in the run) and its
//! estimate of the time left (`estimate.rs`) head the bars on a terminal and end
//! each `ok STEP 1.2s [3/10, about 45s left]` line in both modes, so a log read
//! later has it too; the words before the bracket are unchanged.
//!
//! `--json` (apply) writes one JSON object per line on stdout as steps start and
//! finish and when the run ends (the README's reference describes them); the
//! lines above still go to stderr. `-v` prints every line of every step's log as
//! `[step] line` (`step_log.rs` hands them over), each line in one write, so the
//! lines of steps running side by side never mix within a line.
//!
//! On Ctrl-C the bars are cleared at once ([`Progress::interrupted`]), and
//! [`clear_terminal`] clears them when qflow exits on a second signal, so the
//! terminal is left clean; while bars are drawn the terminal does not echo
//! `^C` (`control_echo.rs` says why).
//!
//! Lines about steps that did nothing (`cached STEP`) may be held and written
//! together at the next [`Progress::flush`] or event: a no-op apply of 1,000
//! steps then costs one write, not 1,000. Order is kept: any other event writes
//! the held lines first.
//!
//! Imports `context` (for the progress sink it implements), `estimate`, `control_echo`,
//! `step_log` (for `-v`) and `run_record` (what a finished step's JSON says).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use qflow_cache::Hash;
use serde_json::json;

use crate::context::ProgressSink;
use crate::estimate::{Expected, Tally};
use crate::run_record::{RunReport, StepOutcome, StepReport};

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
    /// `-v`: every line of every step's log, as `[step] line`.
    pub verbose: bool,
    /// `--json`: one JSON event per line on stdout.
    pub json: bool,
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
    json: bool,
    verbose: bool,
    bars: Mutex<HashMap<String, ProgressBar>>,
    /// The `[n/m]` line above the step bars (on a terminal, once the run's size is known).
    overall: Mutex<Option<ProgressBar>>,
    tally: Arc<Mutex<Tally>>,
    /// Plain-mode lines waiting for the next flush, each ending in a newline.
    held: Mutex<String>,
}

/// The bars of the run on the terminal, for [`clear_terminal`].
static ON_TERMINAL: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// Clear the progress lines from the terminal: qflow is about to exit (a second
/// Ctrl-C) and must not leave a half-drawn bar behind.
pub fn clear_terminal() {
    if let Some(mp) = ON_TERMINAL.lock().unwrap().take() {
        let _ = mp.clear();
        mp.set_draw_target(ProgressDrawTarget::hidden());
    }
    crate::control_echo::restore();
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
        let fancy = bars.then(|| {
            crate::control_echo::quiet();
            let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
            *ON_TERMINAL.lock().unwrap() = Some(mp.clone());
            mp
        });
        Progress::made(fancy, display, color)
    }

    /// Plain output only.
    pub fn plain() -> Progress {
        Progress::made(None, Display::default(), false)
    }

    /// Bars drawn to `target` (a terminal stand-in for tests).
    pub fn drawn_to(target: ProgressDrawTarget) -> Progress {
        Progress::made(
            Some(MultiProgress::with_draw_target(target)),
            Display::default(),
            false,
        )
    }

    fn made(fancy: Option<MultiProgress>, display: Display, color: bool) -> Progress {
        Progress {
            fancy,
            quiet: display.quiet,
            color,
            json: display.json,
            verbose: display.verbose,
            bars: Mutex::new(HashMap::new()),
            overall: Mutex::new(None),
            tally: Arc::default(),
            held: Mutex::new(String::new()),
        }
    }

    /// Under `-v`, print every line of every step log from now on as `[step] line`.
    pub fn echo_step_lines(self: &Arc<Self>) {
        if !self.verbose {
            return;
        }
        let me = Arc::downgrade(self);
        crate::step_log::echo_lines(Some(Arc::new(move |step: &str, line: &str| {
            if let Some(p) = me.upgrade() {
                p.step_line(step, line);
            }
        })));
    }

    /// One line of step `step`'s output, whole, after any held lines.
    fn step_line(&self, step: &str, line: &str) {
        let line: String = line
            .chars()
            .filter(|&c| c == '\t' || !c.is_control())
            .collect();
        let text = format!("[{step}] {line}");
        match &self.fancy {
            Some(mp) => {
                let _ = mp.println(text);
            }
            None => {
                let mut held = self.held.lock().unwrap();
                held.push_str(&text);
                held.push('\n');
                write_out(&mut held);
            }
        }
    }

    /// One `--json` event line on stdout, made only under `--json`.
    fn json_with(&self, value: impl FnOnce() -> serde_json::Value) {
        if self.json {
            self.json(value());
        }
    }

    /// One `--json` event line on stdout.
    fn json(&self, value: serde_json::Value) {
        if !self.json {
            return;
        }
        let mut line = value.to_string();
        line.push('\n');
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }

    /// The run's steps and CPU slots, once, when the first step is ready to run:
    /// from here on the display counts `[n/m]` and estimates the time left.
    pub fn expect(&self, steps: Vec<Expected>, slots: usize) {
        self.tally.lock().unwrap().expect(steps, slots);
        let Some(mp) = &self.fancy else {
            return;
        };
        let tally = self.tally.clone();
        let overall = move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let text = tally.lock().unwrap().describe(Instant::now());
            let _ = w.write_str(&text.unwrap_or_default());
        };
        let style = ProgressStyle::with_template("{overall:.bold}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner())
            .with_key("overall", overall);
        let bar = mp.insert(0, ProgressBar::new_spinner().with_style(style));
        bar.enable_steady_tick(Duration::from_millis(500));
        *self.overall.lock().unwrap() = Some(bar);
    }

    /// Step `step` starts, with key `key`, for `reasons`: its event line, its bar
    /// and its `started` event.
    pub fn step_started(&self, step: &str, reasons: &[crate::run_record::Reason], key: &Hash) {
        self.event(&format!("run {step} ({})", reasons.join("; ")));
        self.tally.lock().unwrap().started(step, Instant::now());
        self.start(step);
        self.json_with(|| {
            json!({
                "event": "started",
                "step": step,
                "key": key.to_hex(),
                "reasons": reasons,
            })
        });
    }

    /// A step ended as its run record says (ran, cached, failed, skipped or
    /// interrupted): its bar goes, it counts toward `[n/m]`, `line` is printed
    /// (an `ok` line with the count and estimate after it) and its `finished`
    /// event is written.
    pub fn step_ended(&self, report: &StepReport, line: &str) {
        self.finish(&report.name);
        let counter = {
            let mut tally = self.tally.lock().unwrap();
            tally.finished(&report.name);
            // Only the line of a step that ran shows the counter.
            (report.outcome == StepOutcome::Ran)
                .then(|| tally.describe(Instant::now()))
                .flatten()
        };
        if let Some(bar) = self.overall.lock().unwrap().as_ref() {
            bar.tick();
        }
        match (report.outcome, counter) {
            (StepOutcome::Ran, Some(counter)) => self.event(&format!("{line} {counter}")),
            (StepOutcome::Cached, _) if line.starts_with("cached ") => self.event_held(line),
            _ => self.event(line),
        }
        self.json_with(|| finished_event(report));
    }

    /// The run ended: a `finished` event for each step never announced (not
    /// started), its counts line and the `run_finished` event.
    pub fn run_finished(&self, report: &RunReport) {
        if let Some(bar) = self.overall.lock().unwrap().take() {
            bar.finish_and_clear();
        }
        if self.json {
            let tally = self.tally.lock().unwrap();
            for s in (report.steps.iter()).filter(|s| !tally.is_finished(&s.name)) {
                self.json(finished_event(s));
            }
        }
        let skipped = report.count(StepOutcome::Skipped) + report.count(StepOutcome::Interrupted);
        self.event(&format!(
            "{} ran, {} cached, {} failed, {} skipped in {:.2}s",
            report.count(StepOutcome::Ran),
            report.count(StepOutcome::Cached),
            report.count(StepOutcome::Failed),
            skipped,
            report.duration_ms as f64 / 1000.0
        ));
        self.json(json!({
            "event": "run_finished",
            "run": report.id,
            "ran": report.count(StepOutcome::Ran),
            "cached": report.count(StepOutcome::Cached),
            "failed": report.count(StepOutcome::Failed),
            "skipped": skipped,
            "unmet": report.unmet_count(),
            "interrupted": report.interrupted,
            "duration_ms": report.duration_ms,
        }));
    }

    /// The run was interrupted (Ctrl-C): clear every bar at once, then say so.
    pub fn interrupted(&self, text: &str) {
        let bars: Vec<ProgressBar> = self.bars.lock().unwrap().drain().map(|(_, b)| b).collect();
        let overall = self.overall.lock().unwrap().take();
        for bar in bars.iter().chain(overall.iter()) {
            bar.finish_and_clear();
            if let Some(mp) = &self.fancy {
                mp.remove(bar);
            }
        }
        self.event(text);
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

/// A step's `finished` event: the fields of its run record entry.
fn finished_event(s: &StepReport) -> serde_json::Value {
    let mut v = json!({
        "event": "finished",
        "step": s.name,
        "state": s.outcome,
        "duration_ms": s.duration_ms,
        "key": s.key,
    });
    let fields = [
        ("output", json!(s.output)),
        ("cpu_ms", json!(s.cpu_ms)),
        ("log", json!(s.log)),
        ("error", json!(s.error)),
    ];
    for (name, value) in fields.into_iter().filter(|(_, v)| !v.is_null()) {
        v[name] = value;
    }
    if !s.reasons.is_empty() {
        v["reasons"] = json!(s.reasons);
    }
    if !s.unmet.is_empty() {
        v["unmet"] = json!(s.unmet);
    }
    v
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
        if self.fancy.is_some() {
            crate::control_echo::restore();
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

#[cfg(test)]
mod tests {
    use super::{ColorChoice, Display, Progress, paint};
    use crate::context::ProgressSink;
    use crate::estimate::Expected;
    use indicatif::{ProgressDrawTarget, TermLike};
    use std::sync::{Arc, Mutex};

    /// A terminal's screen, as indicatif's cursor moves and clears leave it.
    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<Mutex<(Vec<String>, usize)>>);

    impl Screen {
        fn with(&self, f: impl FnOnce(&mut Vec<String>, &mut usize)) {
            let mut s = self.0.lock().unwrap();
            let (rows, row) = &mut *s;
            f(rows, row);
            if rows.len() <= *row {
                rows.resize(*row + 1, String::new());
            }
        }

        /// The lines with something on them, top to bottom.
        fn visible(&self) -> Vec<String> {
            let s = self.0.lock().unwrap();
            s.0.iter()
                .filter(|l| !l.trim().is_empty())
                .cloned()
                .collect()
        }
    }

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            100
        }
        fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
            self.with(|_, row| *row = row.saturating_sub(n));
            Ok(())
        }
        fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
            self.with(|_, row| *row += n);
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(s)?;
            self.with(|_, row| *row += 1);
            Ok(())
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.with(|rows, row| {
                if rows.len() <= *row {
                    rows.resize(*row + 1, String::new());
                }
                rows[*row].push_str(s)
            });
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            self.with(|rows, row| {
                if let Some(r) = rows.get_mut(*row) {
                    r.clear()
                }
            });
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn ctrl_c_clears_the_progress_lines_from_the_terminal() {
        let screen = Screen::default();
        let progress = Progress::drawn_to(ProgressDrawTarget::term_like(Box::new(screen.clone())));
        let step = |name: &'static str| Expected {
            name,
            ms: 30_000,
            previous: true,
            path_ms: 30_000,
            width: 1,
        };
        progress.expect(vec![step("boot"), step("other")], 2);
        let key = qflow_cache::Hash::of_bytes(b"boot");
        progress.step_started("boot", &["never ran".into()], &key);
        progress.message("boot", "Booting Linux on physical CPU 0x0");
        let drawn = |want: &str| {
            (0..100).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                screen.visible().iter().any(|l| l.contains(want))
            })
        };
        assert!(drawn("Booting Linux"), "{:?}", screen.visible());
        assert!(drawn("[0/2, about "), "{:?}", screen.visible());
        progress.interrupted("interrupted: stopping every step");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let left = screen.visible();
        assert!(
            left.iter()
                .all(|l| !l.contains("Booting") && !l.contains("[0/2")),
            "the progress lines stay on the terminal: {left:?}"
        );
        assert!(
            left.iter()
                .any(|l| l.contains("interrupted: stopping every step")),
            "{left:?}"
        );
    }

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
