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

pub fn last_run(dir: &std::path::Path, workflow: &str, busy: bool) -> Option<String> {
    for p in run_files(dir).into_iter().rev() {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
        if v["workflow"] != workflow {
            continue;
        }
        let steps = v["steps"].as_array()?;
        let named = |o: &str| -> Vec<&str> {
            steps
                .iter()
                .filter(|s| s["outcome"] == o)
                .filter_map(|s| s["name"].as_str())
                .collect()
        };
        let count = |o: &str| named(o).len();
        let id = v["id"].as_str().unwrap_or("");
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
        return Some(format!(
            "{id} — {} ran, {} cached, {} failed{}",
            count("ran"),
            count("cached"),
            count("failed"),
            if v["interrupted"] == true {
                ", interrupted"
            } else {
                ""
            }
        ));
    }
    None
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
