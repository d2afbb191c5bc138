//! `qflow status`: each step's state (fresh, stale, running, failed, cleaned,
//! with local wall-clock times) and the last run; with `--json`, the same as
//! one JSON object (the README's reference describes it).

use qflow_engine::Registry;
use qflow_engine::plan::plan_knowing_remote_results;
use qflow_engine::session::{Session, cache_dir};

use std::collections::{BTreeMap, HashMap};

use qflow_engine::run_record::{RunReport, StepOutcome, StepReport};

use super::run_records::{describe_run, last_record};
use crate::cli::{Located, WorkflowArgs};
use crate::workflow_file::{Found, discover};

/// The status of the workflow named, else of the one found; where a directory
/// holds several workflows (and no `workflow.yaml`), of each in turn.
pub fn run(registry: &Registry, args: WorkflowArgs, json: bool) -> anyhow::Result<i32> {
    if args.path.is_some() || args.options.file.is_some() {
        return show(registry, &args.locate()?, json);
    }
    let files = match discover(std::path::Path::new("."))? {
        Found::One(f) => vec![f],
        Found::Several(all) => all,
    };
    let several = files.len() > 1;
    let mut code = 0;
    for (i, file) in files.into_iter().enumerate() {
        if i > 0 && !json {
            println!();
        }
        let located = Located {
            file,
            targets: vec![],
            force: vec![],
            cache: args.options.cache.clone(),
            set: args.options.set.clone(),
        };
        match show(registry, &located, json) {
            // One workflow that cannot be read does not hide the others.
            Err(e) if several => {
                if json {
                    let error = format!("{e:#}");
                    let file = located.file.display().to_string();
                    println!("{}", serde_json::json!({"file": file, "error": error}));
                } else {
                    println!(
                        "workflow: {} (cannot be read; see the errors)",
                        located.file.display()
                    );
                }
                code = code.max(crate::cli::report(&e));
            }
            result => code = code.max(result?),
        }
    }
    Ok(code)
}

fn show(registry: &Registry, workflow: &Located, json: bool) -> anyhow::Result<i32> {
    let wf = super::load(workflow, registry)?;
    let dir = cache_dir(&wf, workflow.cache.as_deref());
    let mut session = Session::open(&wf, registry, &dir)?;
    let busy = session.cache.lock(qflow_cache::LockWait::NoWait).is_err();
    let last = last_record(&session.cache.dir("runs"), &wf.path.display().to_string());
    let cleaned = super::clean::cleaned_at(&session, &wf);
    let steps = plan_knowing_remote_results(&mut session)?;
    // Results known whose bytes are on the remote cache only (no `out/` link).
    let remote_only: Vec<&str> = (steps.iter())
        .filter(|s| s.action == "remote hit")
        .map(|s| s.name.as_str())
        .collect();
    let in_last: HashMap<&str, &StepReport> = (last.iter())
        .flat_map(|v| &v.steps)
        .map(|s| (s.name.as_str(), s))
        .collect();
    let states: Vec<(&str, StepState)> = (steps.iter())
        .map(|s| {
            let in_last = last.as_ref().zip(in_last.get(s.name.as_str()).copied());
            let state = step_state(&s.name, s.action == "run", in_last, busy, &cleaned);
            (s.name.as_str(), state)
        })
        .collect();
    if json {
        let steps: Vec<serde_json::Value> = (states.iter())
            .map(|(name, state)| {
                let mut v = state.to_json(name);
                if remote_only.contains(name) {
                    v["remote_only"] = true.into();
                }
                v
            })
            .collect();
        let last_run = last.as_ref().map(|v| {
            serde_json::json!({
                "id": v.id,
                "started_unix": v.started_unix,
                "duration_ms": v.duration_ms,
                "finished": v.finished,
                "interrupted": v.interrupted,
            })
        });
        let out = serde_json::json!({
            "workflow": wf.name,
            "file": wf.path.display().to_string(),
            "cache": dir.display().to_string(),
            "busy": busy,
            "last_run": last_run,
            "steps": steps,
        });
        println!("{out}");
        return Ok(0);
    }
    println!("workflow: {} ({})", wf.name, wf.path.display());
    println!("cache:    {}", dir.display());
    if busy {
        println!("a qflow run is in progress on this cache");
    }
    if let Some(line) = last.as_ref().and_then(|v| describe_run(v, busy)) {
        println!("last run: {line}");
    }
    let rows: Vec<(String, &str)> = (states.iter())
        .map(|(name, state)| match state {
            StepState::Fresh if remote_only.contains(name) => {
                ("fresh (on the remote cache only)".to_string(), *name)
            }
            _ => (state.to_string(), *name),
        })
        .collect();
    let width = rows.iter().map(|(s, _)| s.len()).max().unwrap_or(0).max(7);
    for (state, name) in rows {
        println!("  {state:<width$} {name}");
    }
    let jobs = crate::slurm_plan::status_lines(&wf, &dir);
    if !jobs.is_empty() {
        println!("slurm jobs:");
        for line in jobs {
            println!("  {line}");
        }
    }
    Ok(0)
}

/// What happened to a step.
#[derive(Debug, PartialEq)]
enum StepState {
    /// Its result is in place for its current inputs.
    Fresh,
    /// It would run.
    Stale,
    /// A run in progress is running it.
    Running,
    /// The last run failed it (`exit 3`, `killed by signal 9`, or nothing known), at this time.
    Failed { how: Option<String>, at: u64 },
    /// `qflow clean` forgot its result at this time.
    Cleaned { at: u64 },
}

impl StepState {
    fn word(&self) -> &'static str {
        match self {
            StepState::Fresh => "fresh",
            StepState::Stale => "stale",
            StepState::Running => "running",
            StepState::Failed { .. } => "failed",
            StepState::Cleaned { .. } => "cleaned",
        }
    }

    /// `{"name","state"}`, with `"at_unix"` for a failure or a clean and `"exit"` for a failure.
    fn to_json(&self, name: &str) -> serde_json::Value {
        let mut v = serde_json::json!({"name": name, "state": self.word()});
        match self {
            StepState::Failed { how, at } => {
                v["at_unix"] = (*at).into();
                if let Some(how) = how {
                    v["exit"] = how.as_str().into();
                }
            }
            StepState::Cleaned { at } => v["at_unix"] = (*at).into(),
            _ => {}
        }
        v
    }
}

impl std::fmt::Display for StepState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepState::Failed { how, at } => {
                let how = how.as_ref().map(|h| format!(" ({h})")).unwrap_or_default();
                write!(f, "failed{how} at {}", crate::local_time::format(*at))
            }
            StepState::Cleaned { at } => {
                write!(f, "cleaned at {}", crate::local_time::format(*at))
            }
            other => f.write_str(other.word()),
        }
    }
}

/// What happened to a step, in words: `fresh`; `running` while a run is in
/// progress; `failed (exit 3) at 14:02` when the last run failed it and it has
/// not succeeded since; `cleaned at 14:05` after `qflow clean`; else `stale`.
fn step_state(
    name: &str,
    runs: bool,
    in_last: Option<(&RunReport, &StepReport)>,
    busy: bool,
    cleaned: &BTreeMap<String, u64>,
) -> StepState {
    if let Some((v, s)) = in_last {
        let live = busy && !v.finished;
        if live && s.outcome == StepOutcome::Running {
            return StepState::Running;
        }
        let started = v.started_unix;
        let was_cleaned_after = cleaned.get(name).is_some_and(|&t| t >= started);
        if runs && s.outcome == StepOutcome::Failed && !was_cleaned_after {
            let how = (s.error.as_deref())
                .map(qflow_engine::failure_report::exit_status)
                .unwrap_or_default();
            let at = started + s.duration_ms / 1000;
            let how = (how.starts_with("exit ") || how.starts_with("killed ")).then_some(how);
            return StepState::Failed { how, at };
        }
    }
    if runs && let Some(&t) = cleaned.get(name) {
        return StepState::Cleaned { at: t };
    }
    if runs {
        StepState::Stale
    } else {
        StepState::Fresh
    }
}
