//! A step's `metrics.json` and `metrics.csv`: every run's metric values, with the
//! run's matrix values and repeat number.
//!
//! The step writes them among its outputs, so they are cached, linked under
//! `out/<step>/` and hashed into the lock like any output. `qflow results`, the
//! figures and `qflow verify` read `metrics.json`; `metrics.csv` is the same
//! table for a spreadsheet.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// A metric's name and unit: a column of the tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricColumn {
    /// The metric's name.
    pub name: String,
    /// Its unit, as the step declared it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

impl MetricColumn {
    /// `ops (ops/s)`, or `ops` without a unit.
    pub fn header(&self) -> String {
        match &self.unit {
            Some(u) => format!("{} ({u})", self.name),
            None => self.name.clone(),
        }
    }
}

/// One run's values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The run's name: its output directory under the step (`size=16`,
    /// `size=16/repeat=2`), empty for a step that runs once.
    pub run: String,
    /// The run's matrix values by variable name.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Which repeat of its matrix point this run is (1-based), when the step repeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<u32>,
    /// Metric values by name.
    pub values: BTreeMap<String, f64>,
}

/// A value's name in [`StepMetrics::flat`]: `metric`, or `run/metric`.
pub fn flat_name(run: &str, metric: &str) -> String {
    if run.is_empty() {
        metric.to_string()
    } else {
        format!("{run}/{metric}")
    }
}

/// The metric of a name in [`StepMetrics::flat`].
pub fn metric_of_flat(name: &str) -> &str {
    name.rsplit_once('/').map_or(name, |(_, m)| m)
}

/// Every run's metrics of one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// The step's name.
    pub step: String,
    /// Its metrics, in the order of the columns.
    pub metrics: Vec<MetricColumn>,
    /// One row per run.
    pub rows: Vec<Row>,
}

impl StepMetrics {
    /// The file name of the JSON form among a step's outputs.
    pub const JSON: &'static str = "metrics.json";
    /// The file name of the CSV form among a step's outputs.
    pub const CSV: &'static str = "metrics.csv";

    /// The `metrics.json` text.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("metrics serialize");
        s.push('\n');
        s
    }

    /// Parse a `metrics.json` text.
    pub fn from_json(text: &str) -> anyhow::Result<StepMetrics> {
        Ok(serde_json::from_str(text)?)
    }

    /// Write `metrics.json` and `metrics.csv` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let json = dir.join(Self::JSON);
        std::fs::write(&json, self.to_json())
            .with_context(|| format!("cannot write {}", json.display()))?;
        let csv = dir.join(Self::CSV);
        std::fs::write(
            &csv,
            super::table::ResultsTable::of(vec![self.clone()])
                .runs()
                .csv(),
        )
        .with_context(|| format!("cannot write {}", csv.display()))?;
        Ok(())
    }

    /// Read `metrics.json` from a step's output directory.
    pub fn read(dir: &Path) -> anyhow::Result<StepMetrics> {
        let path = dir.join(Self::JSON);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("{} is not a metrics file", path.display()))
    }

    /// The matrix variables of the runs, sorted.
    pub fn params(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .rows
            .iter()
            .flat_map(|r| r.params.keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Every value by `metric` (a step that runs once) or `run/metric`, the form
    /// the lock keeps.
    pub fn flat(&self) -> BTreeMap<String, f64> {
        let mut flat = BTreeMap::new();
        for row in &self.rows {
            for (name, v) in &row.values {
                flat.insert(flat_name(&row.run, name), *v);
            }
        }
        flat
    }

    /// The unit of `metric`, when it has one.
    pub fn unit(&self, metric: &str) -> Option<&str> {
        self.metrics
            .iter()
            .find(|m| m.name == metric)
            .and_then(|m| m.unit.as_deref())
    }

    /// The runs grouped by matrix point (their params), in first-run order: the
    /// repeats of one point together.
    pub fn points(&self) -> Vec<(&BTreeMap<String, String>, Vec<&Row>)> {
        let mut points: Vec<(&BTreeMap<String, String>, Vec<&Row>)> = Vec::new();
        for row in &self.rows {
            match points.iter_mut().find(|(p, _)| **p == row.params) {
                Some((_, rows)) => rows.push(row),
                None => points.push((&row.params, vec![row])),
            }
        }
        points
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample() -> StepMetrics {
        let row = |size: &str, rep: u32, ops: f64| Row {
            run: format!("size={size}/repeat={rep}"),
            params: BTreeMap::from([("size".to_string(), size.to_string())]),
            repeat: Some(rep),
            values: BTreeMap::from([("ops".to_string(), ops)]),
        };
        StepMetrics {
            step: "runs".into(),
            metrics: vec![MetricColumn {
                name: "ops".into(),
                unit: Some("ops/s".into()),
            }],
            rows: vec![row("16", 1, 10.0), row("16", 2, 12.0), row("64", 1, 40.0)],
        }
    }

    #[test]
    fn metrics_json_reads_back_as_written() {
        let m = sample();
        assert_eq!(StepMetrics::from_json(&m.to_json()).unwrap(), m);
    }

    #[test]
    fn repeats_of_a_matrix_point_are_grouped() {
        let m = sample();
        let points = m.points();
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].1.len(), 2);
        assert_eq!(points[1].0["size"], "64");
    }

    #[test]
    fn writing_puts_both_forms_in_the_directory() {
        let d = std::env::temp_dir().join(format!("qflow-metrics-file-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let m = sample();
        m.write(&d).unwrap();
        assert_eq!(StepMetrics::read(&d).unwrap(), m);
        let csv = std::fs::read_to_string(d.join(StepMetrics::CSV)).unwrap();
        assert!(
            csv.starts_with("step,run,size,repeat,ops (ops/s)\n"),
            "{csv}"
        );
        assert_eq!(csv.lines().count(), 4);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
