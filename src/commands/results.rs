//! `qflow results`: the results table of a workflow, printed from its records.
//!
//! Nothing runs: the lock file names each step's recorded output tree, and every
//! step with `metrics:` has `metrics.json` in it. The table has one row per run
//! (matrix values as columns); `--summary` gives one row per matrix point with
//! the mean, standard deviation and 95% confidence interval of its repeats.

use qflow_engine::Registry;
use qflow_engine::results::{Format, ResultsTable, StepMetrics};
use qflow_engine::session::{Session, cache_dir};
use qflow_engine::workflow::Workflow;

use crate::cli::Located;
use crate::usage_error::UsageError;

/// What to print.
pub struct ResultsOptions {
    pub step: Option<String>,
    pub format: Format,
    pub summary: bool,
}

/// Every metrics step's recorded `metrics.json`, in workflow order.
pub fn recorded_metrics(
    wf: &Workflow,
    session: &Session,
    only: Option<&str>,
) -> anyhow::Result<Vec<StepMetrics>> {
    let mut found = Vec::new();
    for decl in &wf.steps {
        if only.is_some_and(|s| s != decl.name) {
            continue;
        }
        if decl.step.metrics().is_empty() {
            if only.is_some() {
                return Err(UsageError(format!(
                    "step `{}` declares no `metrics:`; add them to the step, then `qflow apply`",
                    decl.name
                ))
                .into());
            }
            continue;
        }
        let Some(entry) = session.lock().steps.get(&decl.name) else {
            if only.is_some() {
                anyhow::bail!(
                    "step `{}` has not run yet: `qflow apply {}` records its metrics",
                    decl.name,
                    wf.path.display()
                );
            }
            continue;
        };
        let Ok(output) = entry.output.parse() else {
            continue;
        };
        let tree = session.cache.tree_path(&output);
        found.push(StepMetrics::read(&tree).map_err(|e| {
            anyhow::anyhow!(
                "step `{}`: {e:#}; `qflow apply` records it again",
                decl.name
            )
        })?);
    }
    Ok(found)
}

pub fn run(
    registry: &Registry,
    workflow: &Located,
    options: &ResultsOptions,
) -> anyhow::Result<i32> {
    let wf = super::load(workflow, registry)?;
    if let Some(s) = &options.step
        && wf.step(s).is_none()
    {
        return Err(super::no_such_step(&wf, s));
    }
    let dir = cache_dir(&wf, workflow.cache.as_deref());
    let session = Session::open(&wf, registry, &dir)?;
    let steps = recorded_metrics(&wf, &session, options.step.as_deref())?;
    if steps.is_empty() {
        anyhow::bail!(
            "no step of {} has recorded metrics: declare `metrics:` on a step and `qflow apply` it",
            wf.path.display()
        );
    }
    let table = ResultsTable::of(steps);
    let grid = if options.summary {
        table.summary()
    } else {
        table.runs()
    };
    print!("{}", grid.render(options.format));
    Ok(0)
}
