//! `qflow attach`: connect the terminal to a running boot step's serial console.

use qflow_engine::Registry;
use qflow_engine::session::cache_dir;

use crate::cli::Located;
use crate::usage_error::UsageError;

pub fn run(
    registry: &Registry,
    workflow: &Located,
    step: &str,
    run: Option<&str>,
) -> anyhow::Result<i32> {
    let wf = super::load(workflow, registry)?;
    if wf.step(step).is_none() {
        return Err(super::no_such_step(&wf, step));
    }
    let state = cache_dir(&wf, workflow.cache.as_deref())
        .join("state")
        .join(&wf.name)
        .join(step);
    let consoles = qflow_steps::boot::attach::running_consoles(&state);
    let chosen = match (run, consoles.len()) {
        (_, 0) => {
            return Err(UsageError(format!(
                "step `{step}` has no running console; attach while `qflow apply` runs it"
            ))
            .into());
        }
        (None, 1) => consoles[0].1.clone(),
        (None, _) => {
            let runs: Vec<&str> = consoles.iter().map(|(r, _)| r.as_str()).collect();
            return Err(UsageError(format!(
                "step `{step}` runs several guests; pick one with --run: {}",
                runs.join(", ")
            ))
            .into());
        }
        (Some(r), _) => match consoles.iter().find(|(name, _)| name == r) {
            Some((_, sock)) => sock.clone(),
            None => {
                return Err(UsageError(format!("step `{step}` has no running run `{r}`")).into());
            }
        },
    };
    qflow_steps::boot::attach::attach_terminal(&chosen)?;
    Ok(0)
}
