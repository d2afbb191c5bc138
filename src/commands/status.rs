//! `qflow status`: each step's state (fresh, stale, running, failed, cleaned,
//! with local wall-clock times) and the last run.

use qflow_engine::Registry;
use qflow_engine::plan::plan_knowing_remote_results;
use qflow_engine::session::{Session, cache_dir};

use std::collections::BTreeMap;

use super::run_records::{describe_run, last_record};
use crate::cli::{Located, WorkflowArgs};
use crate::workflow_file::{Found, discover};

/// The status of the workflow named, else of the one found; where a directory
/// holds several workflows (and no `workflow.yaml`), of each in turn.
pub fn run(registry: &Registry, args: WorkflowArgs) -> anyhow::Result<i32> {
    if args.path.is_some() || args.options.file.is_some() {
        return show(registry, &args.locate()?);
    }
    let files = match discover(std::path::Path::new("."))? {
        Found::One(f) => vec![f],
        Found::Several(all) => all,
    };
    let several = files.len() > 1;
    let mut code = 0;
    for (i, file) in files.into_iter().enumerate() {
        if i > 0 {
            println!();
        }
        let located = Located {
            file,
            targets: vec![],
            force: vec![],
            cache: args.options.cache.clone(),
            set: args.options.set.clone(),
        };
        match show(registry, &located) {
            // One workflow that cannot be read does not hide the others.
            Err(e) if several => {
                println!(
                    "workflow: {} (cannot be read; see the errors)",
                    located.file.display()
                );
                code = code.max(crate::cli::report(&e));
            }
            result => code = code.max(result?),
        }
    }
    Ok(code)
}

fn show(registry: &Registry, workflow: &Located) -> anyhow::Result<i32> {
    let wf = super::load(workflow, registry)?;
    let dir = cache_dir(&wf, workflow.cache.as_deref());
    let mut session = Session::open(&wf, registry, &dir)?;
    let busy = session.cache.lock(qflow_cache::LockWait::NoWait).is_err();
    println!("workflow: {} ({})", wf.name, wf.path.display());
    println!("cache:    {}", dir.display());
    if busy {
        println!("a qflow run is in progress on this cache");
    }
    let last = last_record(&session.cache.dir("runs"), &wf.path.display().to_string());
    if let Some(line) = last.as_ref().and_then(|v| describe_run(v, busy)) {
        println!("last run: {line}");
    }
    let cleaned = super::clean::cleaned_at(&session, &wf);
    let steps = plan_knowing_remote_results(&mut session)?;
    let rows: Vec<(String, &str)> = (steps.iter())
        .map(|s| {
            let mut state = step_state(&s.name, s.action == "run", last.as_ref(), busy, &cleaned);
            // Its result is known, its bytes are on the remote cache only (no `out/` link).
            if s.action == "remote hit" && state == "fresh" {
                state = "fresh (on the remote cache only)".into();
            }
            (state, s.name.as_str())
        })
        .collect();
    let width = rows.iter().map(|(s, _)| s.len()).max().unwrap_or(0).max(7);
    for (state, name) in rows {
        println!("  {state:<width$} {name}");
    }
    Ok(0)
}

/// What happened to a step, in words: `fresh`; `running` while a run is in
/// progress; `failed (exit 3) at 14:02` when the last run failed it and it has
/// not succeeded since; `cleaned at 14:05` after `qflow clean`; else `stale`.
fn step_state(
    name: &str,
    runs: bool,
    last: Option<&serde_json::Value>,
    busy: bool,
    cleaned: &BTreeMap<String, u64>,
) -> String {
    let in_last = last.and_then(|v| {
        v["steps"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| (v, s))
    });
    if let Some((v, s)) = in_last {
        let live = busy && v["finished"] == false;
        if live && s["outcome"] == "running" {
            return "running".into();
        }
        let started = v["started_unix"].as_u64().unwrap_or(0);
        let was_cleaned_after = cleaned.get(name).is_some_and(|&t| t >= started);
        if runs && s["outcome"] == "failed" && !was_cleaned_after {
            let how = s["error"]
                .as_str()
                .map(qflow_engine::failure_report::exit_status)
                .unwrap_or_default();
            let ended = started + s["duration_ms"].as_u64().unwrap_or(0) / 1000;
            let how = if how.starts_with("exit ") || how.starts_with("killed ") {
                format!(" ({how})")
            } else {
                String::new()
            };
            return format!("failed{how} at {}", crate::local_time::format(ended));
        }
    }
    if runs && let Some(&t) = cleaned.get(name) {
        return format!("cleaned at {}", crate::local_time::format(t));
    }
    if runs { "stale" } else { "fresh" }.into()
}
