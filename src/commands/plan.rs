//! `qflow plan`: show what `apply` would run, and why.

use qflow_engine::Registry;
use qflow_engine::plan::plan;
use qflow_engine::session::{Session, cache_dir};

use crate::cli::WorkflowArgs;

pub fn run(registry: &Registry, workflow: &WorkflowArgs, json: bool) -> anyhow::Result<i32> {
    let wf = super::load(workflow, registry)?;
    let mut session = Session::open(&wf, registry, &cache_dir(&wf, workflow.cache.as_deref()))?;
    let steps = plan(&mut session)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "steps": steps }))?
        );
        return Ok(0);
    }
    for s in &steps {
        println!("{:<7} {} ({})", s.action, s.name, s.kind);
        for r in &s.reasons {
            println!("          because {r}");
        }
        if s.action == "run" {
            for c in &s.commands {
                println!("          $ {c}");
            }
        }
    }
    let runs = steps.iter().filter(|s| s.action == "run").count();
    println!("{} to run, {} cached", runs, steps.len() - runs);
    Ok(0)
}
