//! What a failed apply tells the user: for the step that failed, one headline
//! (what failed, how, after how long), the log's path and the log's last lines
//! once; and at the end of the run a block naming each failed step with its
//! exit status and log, and each step not started with why.
//!
//! The tail comes from the step log, where stdout and stderr arrive in the
//! order the program wrote them; lines qflow itself typed on a guest's serial
//! console to frame commands (`qflow-b-…`, `echo qf''low-…`) are left out so
//! the guest's own output shows. Imports `run_record` and `step_log`.

use std::path::Path;

use crate::run_record::{StepOutcome, StepReport};
use crate::step_log::StepLog;

/// How many lines of a failed step's log are quoted.
const TAIL_LINES: usize = 20;

/// The message for step `name`, failed after `ms` with `error`, whose log is `log`.
pub fn failed_step(name: &str, error: &str, ms: u64, log: &Path) -> String {
    let mut msg = format!(
        "FAILED {name} after {:.1}s: {}",
        ms as f64 / 1000.0,
        without_quoted_tail(error)
    );
    msg.push_str(&format!("\n  log: {}", log.display()));
    let tail = guest_tail(&StepLog::tail_of(log, TAIL_LINES * 4));
    if !tail.is_empty() {
        msg.push_str("\n  last lines of the log:");
        for l in tail {
            msg.push_str("\n    ");
            msg.push_str(&l);
        }
    }
    msg
}

/// The block at the end of a run with failures: each failed step (exit
/// status, log), each step not started and why. `None` when nothing failed.
pub fn summary(steps: &[StepReport]) -> Option<String> {
    let failed: Vec<_> = (steps.iter())
        .filter(|s| s.outcome == StepOutcome::Failed)
        .collect();
    if failed.is_empty() {
        return None;
    }
    let width = (steps.iter()).map(|s| s.name.len()).max().unwrap_or(0);
    let mut out = String::from("failed:");
    for s in &failed {
        let how = s.error.as_deref().map(exit_status).unwrap_or_default();
        out.push_str(&format!("\n  {:<width$}  {how}", s.name));
        if let Some(log) = &s.log {
            out.push_str(&format!("  log: {log}"));
        }
    }
    let skipped: Vec<_> = (steps.iter())
        .filter(|s| s.outcome == StepOutcome::Skipped)
        .collect();
    if !skipped.is_empty() {
        out.push_str("\nnot started:");
        for s in skipped {
            let why = s.reasons.first().map(|r| r.as_ref()).unwrap_or("");
            out.push_str(&format!("\n  {:<width$}  {why}", s.name));
        }
    }
    Some(out)
}

/// Why a step not started was: one of its upstream steps failed.
pub fn upstream_failed(names: &[&str]) -> String {
    format!("upstream `{}` failed", names.join("`, `"))
}

/// Why a step independent of the failure was not started.
pub fn stopped_after_failure(keep_going_would_run: bool) -> String {
    if keep_going_would_run {
        "not started: the run stopped at the first failure; `--keep-going` would run it".into()
    } else {
        "not started: the run stopped at the first failure".into()
    }
}

/// `exit 3`, `killed by signal 9`, else the error's first line.
pub fn exit_status(error: &str) -> String {
    for marker in ["(exit ", "(killed by signal "] {
        if let Some(at) = error.find(marker)
            && let Some(end) = error[at..].find(')')
        {
            return error[at + 1..at + end].to_string();
        }
    }
    let first = error.lines().next().unwrap_or("");
    first
        .strip_suffix("; its last lines:")
        .unwrap_or(first)
        .to_string()
}

/// `error` without the last lines a program's failure quotes (the log's tail is
/// printed below it, once).
fn without_quoted_tail(error: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut in_tail = false;
    for line in error.lines() {
        if in_tail && line.starts_with("    ") {
            continue;
        }
        in_tail = false;
        match line.strip_suffix("; its last lines:") {
            Some(head) => {
                out.push(head);
                in_tail = true;
            }
            None => out.push(line),
        }
    }
    out.join("\n")
}

/// The last lines of `lines` without qflow's console framing.
fn guest_tail(lines: &[String]) -> Vec<String> {
    let kept: Vec<&String> = lines.iter().filter(|l| !is_console_marker(l)).collect();
    kept[kept.len().saturating_sub(TAIL_LINES)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// A line qflow typed on a guest console to frame or probe a command.
fn is_console_marker(line: &str) -> bool {
    let line = line.trim();
    line.contains("qf''low-")
        || ["qflow-r-", "qflow-b-", "qflow-e-"]
            .iter()
            .any(|m| line.starts_with(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quoted_tail_leaves_the_headline_and_what_follows() {
        let e = "`sh -c x` failed (exit 3); its last lines:\n    a\n    b\nhint: install y";
        assert_eq!(
            without_quoted_tail(e),
            "`sh -c x` failed (exit 3)\nhint: install y"
        );
        assert_eq!(exit_status(e), "exit 3");
        assert_eq!(exit_status("no shell answered"), "no shell answered");
    }

    #[test]
    fn console_framing_is_left_out_of_a_boot_tail() {
        let lines: Vec<String> = [
            "qflow> echo qf''low-r-ab1",
            "qflow-r-ab1",
            "echo qf''low-b-ab2; eval \"$(echo dHJ1ZQ== | base64 -d)\"; echo qf''low-e-ab2-$?",
            "qflow-b-ab2",
            "bench: segfault at 0x0",
            "qflow-e-ab2-139",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(guest_tail(&lines), ["bench: segfault at 0x0"]);
    }
}
