//! The run records under the cache's `runs/` (one JSON file per `qflow apply`), as
//! `qflow status` and `qflow gc` read them: the last run of a workflow, and the
//! step keys recent runs used.

use std::collections::BTreeSet;

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
pub fn last_record(dir: &std::path::Path, workflow: &str) -> Option<serde_json::Value> {
    for p in run_files(dir).into_iter().rev() {
        let Ok(bytes) = std::fs::read(&p) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        if v["workflow"] == workflow {
            return Some(v);
        }
    }
    None
}

/// One line on the run record `v`: when, and what happened to its steps.
pub fn describe_run(v: &serde_json::Value, busy: bool) -> Option<String> {
    let steps = v["steps"].as_array()?;
    let named = |o: &str| -> Vec<&str> {
        steps
            .iter()
            .filter(|s| s["outcome"] == o)
            .filter_map(|s| s["name"].as_str())
            .collect()
    };
    let count = |o: &str| named(o).len();
    let id = format!(
        "{} (run {})",
        crate::local_time::format(v["started_unix"].as_u64().unwrap_or(0)),
        v["id"].as_str().unwrap_or("")
    );
    if v["finished"] == false {
        let started = v["started_unix"].as_u64().unwrap_or(0);
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
            if named("running").is_empty() {
                "none".to_string()
            } else {
                named("running").join(", ")
            },
            count("ran"),
            count("cached"),
            count("failed"),
            count("pending")
        ));
    }
    let remote = match v.get("remote") {
        Some(r) if r.is_object() => {
            let n = |k: &str| r[k].as_u64().unwrap_or(0);
            format!(
                "; remote cache: {} hits, {} misses, {:.1} MB down, {:.1} MB up{}",
                n("hits"),
                n("misses"),
                n("bytes_down") as f64 / 1e6,
                n("bytes_up") as f64 / 1e6,
                match n("warnings") {
                    0 => String::new(),
                    w => format!(", {w} warnings"),
                }
            )
        }
        _ => String::new(),
    };
    Some(format!(
        "{id} — {} ran, {} cached, {} failed{}{remote}",
        count("ran"),
        count("cached"),
        count("failed"),
        if v["interrupted"] == true {
            ", interrupted"
        } else {
            ""
        }
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
        let Ok(bytes) = std::fs::read(&p) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        for s in v["steps"].as_array().into_iter().flatten() {
            if let Some(k) = s["key"].as_str().and_then(|k| k.parse().ok()) {
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
