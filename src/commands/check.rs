//! `qflow check`: validate a workflow and report every problem found in one
//! pass (unknown fields of every step, unknown vars, missing inputs, bad
//! references), sorted by line; nothing is run and no cache is opened.

use qflow_engine::Registry;

use crate::cli::Located;

pub fn run(registry: &Registry, workflow: &Located) -> anyhow::Result<i32> {
    let wf = super::load(workflow, registry)?;
    println!(
        "{}: ok ({} step{})",
        wf.path.display(),
        wf.steps.len(),
        if wf.steps.len() == 1 { "" } else { "s" }
    );
    Ok(0)
}
