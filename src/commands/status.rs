//! `qflow status`: each step's state (fresh or stale) and the last run.

use qflow_engine::Registry;
use qflow_engine::plan::plan;
use qflow_engine::session::{Session, cache_dir};

use super::run_records::last_run;
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
