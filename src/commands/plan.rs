//! `qflow plan`: show what `apply` would run, and why.

use std::fmt::Write as _;

use qflow_engine::Registry;
use qflow_engine::plan::plan_with_remote;
use qflow_engine::session::{Session, cache_dir};
use qflow_engine::slurm::placement::ExecutorChoice;

use crate::cli::{Located, RemoteArgs};

pub fn run(
    registry: &Registry,
    workflow: &Located,
    json: bool,
    executor: Option<ExecutorChoice>,
    remote: &RemoteArgs,
) -> anyhow::Result<i32> {
    let wf = super::load(workflow, registry)?;
    let mut session = Session::open(&wf, registry, &cache_dir(&wf, workflow.cache.as_deref()))?;
    let remote = super::remote::open(remote, |w| eprintln!("qflow: warning: {w}"), None)?;
    let steps = plan_with_remote(&mut session, remote.as_deref())?;
    let placed = crate::slurm_plan::placements(&wf, executor);
    if json {
        let steps: Vec<serde_json::Value> = steps
            .iter()
            .map(|s| crate::slurm_plan::with_placement(s, &placed[&s.name]))
            .collect::<anyhow::Result<_>>()?;
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "steps": steps }))?
        );
        return Ok(0);
    }
    // One write for the whole plan, not a flush per line: a plan of 10,000 steps.
    let mut out = String::new();
    for s in &steps {
        let _ = writeln!(out, "{:<7} {} ({})", s.action, s.name, s.kind);
        if s.action == "run" {
            let _ = writeln!(out, "          on {}", placed[&s.name].describe());
        }
        for r in &s.reasons {
            let _ = writeln!(out, "          because {r}");
        }
        if s.action == "run" {
            for c in &s.commands {
                let _ = writeln!(out, "          $ {c}");
            }
        }
    }
    let runs = steps.iter().filter(|s| s.action == "run").count();
    let remote_hits = steps.iter().filter(|s| s.action == "remote hit").count();
    if remote.is_some() {
        let _ = writeln!(
            out,
            "{} to run, {} cached, {} remote hits",
            runs,
            steps.len() - runs - remote_hits,
            remote_hits
        );
    } else {
        let _ = writeln!(out, "{} to run, {} cached", runs, steps.len() - runs);
    }
    print!("{out}");
    Ok(0)
}
