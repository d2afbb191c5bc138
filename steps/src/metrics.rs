//! `metrics:` of a step kind: after the runs, take each metric from each run's
//! files and write the step's `metrics.json` and `metrics.csv`.
//!
//! A metric that finds nothing fails the step: its outputs are then not
//! recorded, so no later apply or figure can take a table with a hole as valid;
//! the log keeps every value found. Values outside their `expect:` do not fail
//! the step: the run loop holds the recorded values to them and fails the apply
//! (see `qflow_engine::results::unmet`), so the numbers stay for `qflow results`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::bail;
use qflow_engine::results::{
    Format, MetricColumn, MetricSpec, ResultsTable, Row, StepMetrics, extract_all,
};
use qflow_engine::{OutputRole, RunContext};

/// One finished run, as the metrics see it.
pub struct RunDir {
    /// The run's name (its directory under the step's output), empty for a single run.
    pub run: String,
    pub params: BTreeMap<String, String>,
    pub repeat: Option<u32>,
    pub dir: PathBuf,
}

/// The output files a step with metrics adds at the top of its output: results,
/// bundled whatever their size.
pub fn outputs(specs: &BTreeMap<String, MetricSpec>) -> Vec<(String, OutputRole)> {
    if specs.is_empty() {
        Vec::new()
    } else {
        vec![
            (StepMetrics::JSON.to_string(), OutputRole::Result),
            (StepMetrics::CSV.to_string(), OutputRole::Result),
        ]
    }
}

/// Extract, write and check the metrics of `runs` into `ctx`'s output directory.
pub fn record(
    ctx: &mut RunContext,
    specs: &BTreeMap<String, MetricSpec>,
    runs: &[RunDir],
) -> anyhow::Result<()> {
    if specs.is_empty() {
        return Ok(());
    }
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for r in runs {
        match extract_all(specs, &r.dir) {
            Ok(values) => rows.push(Row {
                run: r.run.clone(),
                params: r.params.clone(),
                repeat: r.repeat,
                values,
            }),
            Err(e) => failures.push(if r.run.is_empty() {
                e.to_string()
            } else {
                format!("run `{}`: {e}", r.run)
            }),
        }
    }
    if let Some(first) = failures.first() {
        for f in &failures {
            ctx.log(&format!("qflow: {f}"));
        }
        let more = match failures.len() {
            1 => String::new(),
            n => format!("\n(and {} more; see the step log)", n - 1),
        };
        bail!("{first}{more}");
    }
    let metrics = StepMetrics {
        step: ctx.step().to_string(),
        metrics: specs
            .iter()
            .map(|(name, s)| MetricColumn {
                name: name.clone(),
                unit: s.unit.clone(),
            })
            .collect(),
        rows,
    };
    metrics.write(ctx.out_dir())?;
    let table = ResultsTable::of(vec![metrics.clone()]).runs();
    for line in table.render(Format::Table).lines() {
        ctx.log(&format!("qflow: {line}"));
    }
    Ok(())
}
