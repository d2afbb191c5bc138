//! `qflow status`: each step's state (fresh or stale) and the last run.

use qflow_engine::Registry;
use qflow_engine::plan::plan;
use qflow_engine::session::{Session, cache_dir};

use super::run_records::last_run;
use crate::cli::WorkflowArgs;

pub fn run(registry: &Registry, workflow: &WorkflowArgs) -> anyhow::Result<i32> {
    let wf = super::load(workflow, registry)?;
    let dir = cache_dir(&wf, workflow.cache.as_deref());
    let mut session = Session::open(&wf, registry, &dir)?;
    let busy = session.cache.lock(qflow_cache::LockWait::NoWait).is_err();
    println!("workflow: {} ({})", wf.name, wf.path.display());
    println!("cache:    {}", dir.display());
    if busy {
        println!("a qflow run is in progress on this cache");
    }
    if let Some(last) = last_run(
        &session.cache.dir("runs"),
        &wf.path.display().to_string(),
        busy,
    ) {
        println!("last run: {}", last);
    }
    let steps = plan(&mut session)?;
    for s in steps {
        println!(
            "  {:<7} {}",
            if s.action == "run" { "stale" } else { "fresh" },
            s.name
        );
    }
    Ok(0)
}
