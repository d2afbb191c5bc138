//! Expectations a recorded step's metrics do not meet.
//!
//! A step with `expect:` on a metric is recorded first, whatever its values:
//! its `metrics.json` stays in the cache and under `out/`, so `qflow results`
//! and the figures show the values that broke the paper's claim. The run loop
//! then asks here which values are outside their expectations, and the apply
//! fails (exit 1) naming each metric, run, value and bound. A cached step is
//! asked again on every apply, so a second apply fails the same way.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use super::metric_spec::MetricSpec;
use super::metrics_file::StepMetrics;

/// One metric value of one run outside its expectation.
#[derive(Debug, Clone, PartialEq)]
pub struct Unmet {
    /// The step's name.
    pub step: String,
    /// The metric's name.
    pub metric: String,
    /// The run's name; empty for a step that runs once.
    pub run: String,
    /// The value the run gave.
    pub value: f64,
    /// The metric's unit, when it has one.
    pub unit: Option<String>,
    /// The expectation in words (`at least 2000`, `5 ± 5%`).
    pub bound: String,
}

impl fmt::Display for Unmet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step `{}`: metric `{}`", self.step, self.metric)?;
        if !self.run.is_empty() {
            write!(f, " of run `{}`", self.run)?;
        }
        write!(f, " is {}", self.value)?;
        if let Some(u) = &self.unit {
            write!(f, " {u}")?;
        }
        write!(f, ", outside its expectation: {}", self.bound)
    }
}

/// Every value of `metrics` outside the expectation `specs` gives its metric,
/// in row order.
pub fn unmet(specs: &BTreeMap<String, MetricSpec>, metrics: &StepMetrics) -> Vec<Unmet> {
    let mut found = Vec::new();
    for row in &metrics.rows {
        for (name, spec) in specs {
            let (Some(expect), Some(&value)) = (&spec.expect, row.values.get(name)) else {
                continue;
            };
            if !expect.holds(value) {
                found.push(Unmet {
                    step: metrics.step.clone(),
                    metric: name.clone(),
                    run: row.run.clone(),
                    value,
                    unit: spec.unit.clone(),
                    bound: expect.describe(),
                });
            }
        }
    }
    found
}

/// What step `step`'s recorded output `tree` fails of `specs`' expectations, as
/// messages; empty when `specs` expects nothing. A `metrics.json` that cannot be
/// read is itself one message (the step's record is then not what it claims).
pub fn unmet_in_tree(step: &str, specs: &BTreeMap<String, MetricSpec>, tree: &Path) -> Vec<String> {
    if specs.values().all(|s| s.expect.is_none()) {
        return Vec::new();
    }
    match StepMetrics::read(tree) {
        Ok(metrics) => unmet(specs, &metrics)
            .iter()
            .map(|u| u.to_string())
            .collect(),
        Err(e) => vec![format!(
            "step `{step}`: its expectations cannot be checked: {e:#}; `qflow clean {step}` and apply again"
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::metrics_file::{MetricColumn, Row};

    fn specs(yaml: &str) -> BTreeMap<String, MetricSpec> {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn metrics(values: &[(&str, f64)]) -> StepMetrics {
        StepMetrics {
            step: "bench".into(),
            metrics: vec![MetricColumn {
                name: "ops".into(),
                unit: Some("ops/s".into()),
            }],
            rows: values
                .iter()
                .map(|(run, v)| Row {
                    run: run.to_string(),
                    params: BTreeMap::new(),
                    repeat: None,
                    values: BTreeMap::from([("ops".to_string(), *v)]),
                })
                .collect(),
        }
    }

    #[test]
    fn each_value_outside_its_bound_is_named_with_its_run_value_and_bound() {
        let specs = specs(
            "ops: { from: run.txt, regex: 'ops ([0-9]+)', unit: ops/s, expect: { min: 100 } }",
        );
        let found = unmet(&specs, &metrics(&[("size=16", 150.0), ("size=64", 90.0)]));
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].to_string(),
            "step `bench`: metric `ops` of run `size=64` is 90 ops/s, outside its expectation: at least 100"
        );
        let once = unmet(&specs, &metrics(&[("", 12.5)]));
        assert_eq!(
            once[0].to_string(),
            "step `bench`: metric `ops` is 12.5 ops/s, outside its expectation: at least 100"
        );
    }

    #[test]
    fn a_tree_is_not_read_when_nothing_is_expected() {
        let specs = specs("ops: { from: run.txt, regex: 'ops ([0-9]+)' }");
        assert!(unmet_in_tree("bench", &specs, Path::new("/nonexistent")).is_empty());
        let expecting =
            self::specs("ops: { from: run.txt, regex: 'ops ([0-9]+)', expect: { value: 1 } }");
        let lost = unmet_in_tree("bench", &expecting, Path::new("/nonexistent"));
        assert!(lost[0].contains("cannot be checked"), "{lost:?}");
    }
}
