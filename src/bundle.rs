//! `qflow bundle` (placeholder while being written).
use qflow_engine::Registry;
use qflow_engine::workflow::Workflow;
pub fn run(
    _wf: &Workflow,
    _r: &Registry,
    _c: &std::path::Path,
    _o: Option<&std::path::Path>,
) -> anyhow::Result<i32> {
    anyhow::bail!("todo")
}
