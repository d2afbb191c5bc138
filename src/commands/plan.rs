//! `qflow plan`: show what `apply` would run, and why.

use qflow_engine::Registry;
use qflow_engine::plan::plan;
use qflow_engine::session::{Session, cache_dir};
use qflow_engine::slurm::placement::ExecutorChoice;

use crate::cli::Located;

pub fn run(
    registry: &Registry,
    workflow: &Located,
    json: bool,
    executor: Option<ExecutorChoice>,
) -> anyhow::Result<i32> {
    let wf = super::load(workflow, registry)?;
    let mut session = Session::open(&wf, registry, &cache_dir(&wf, workflow.cache.as_deref()))?;
    let steps = plan(&mut session)?;
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
    for s in &steps {
        println!("{:<7} {} ({})", s.action, s.name, s.kind);
        if s.action == "run" {
            println!("          on {}", placed[&s.name].describe());
        }
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
