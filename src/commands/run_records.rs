//! The run records under the cache's `runs/` (one JSON file per `qflow apply`), as
//! `qflow status` and `qflow gc` read them: the last run of a workflow, and the
//! step keys recent runs used.

use std::collections::BTreeSet;

use qflow_engine::run_record::{RunReport, StepOutcome};
use qflow_engine::session::Session;

fn run_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    v
}

/// The record of the last run of `workflow` (finished or not) on this cache.
pub fn last_record(dir: &std::path::Path, workflow: &str) -> Option<RunReport> {
    for p in run_files(dir).into_iter().rev() {
        let Ok(v) = RunReport::read(&p) else {
            continue;
        };
        if v.workflow == workflow {
            return Some(v);
        }
    }
    None
}

/// One line on the run record `v`: when, and what happened to its steps.
pub fn describe_run(v: &RunReport, busy: bool) -> Option<String> {
    let named = |o: StepOutcome| -> Vec<&str> {
        (v.steps.iter())
            .filter(|s| s.outcome == o)
            .map(|s| s.name.as_str())
            .collect()
    };
    let count = |o: StepOutcome| v.count(o);
    let id = format!(
        "{} (run {})",
        crate::local_time::format(v.started_unix),
        v.id
    );
    if !v.finished {
        let started = v.started_unix;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let state = if busy {
            "in progress"
        } else {
            "did not finish (qflow was killed?)"
        };
        return Some(format!(
            "{id} — {state}, started {}s ago: running: {}; {} ran, {} cached, {} failed, {} pending",
            now.saturating_sub(started),
            if named(StepOutcome::Running).is_empty() {
                "none".to_string()
            } else {
                named(StepOutcome::Running).join(", ")
            },
            count(StepOutcome::Ran),
            count(StepOutcome::Cached),
            count(StepOutcome::Failed),
            count(StepOutcome::Pending)
        ));
    }
    let remote = match &v.remote {
        Some(r) => format!(
            "; remote cache: {} hits, {} misses, {:.1} MB down, {:.1} MB up{}",
            r.hits,
            r.misses,
            r.bytes_down as f64 / 1e6,
            r.bytes_up as f64 / 1e6,
            match r.warnings {
                0 => String::new(),
                w => format!(", {w} warnings"),
            }
        ),
        None => String::new(),
    };
    Some(format!(
        "{id} — {} ran, {} cached, {} failed{}{remote}",
        count(StepOutcome::Ran),
        count(StepOutcome::Cached),
        count(StepOutcome::Failed),
        if v.interrupted { ", interrupted" } else { "" }
    ))
}

/// Step keys used by the `n` most recent runs (of any workflow on this cache),
/// plus the current lock file's.
pub fn recent_keys(session: &Session, n: usize) -> BTreeSet<qflow_cache::Hash> {
    let mut keep = BTreeSet::new();
    for p in run_files(&session.cache.dir("runs"))
        .into_iter()
        .rev()
        .take(n)
    {
        let Ok(v) = RunReport::read(&p) else {
            continue;
        };
        for s in &v.steps {
            if let Some(k) = s.key {
                keep.insert(k);
            }
        }
    }
    for s in session.lock().steps.values() {
        if let Ok(k) = s.key.parse() {
            keep.insert(k);
        }
    }
    keep
}
