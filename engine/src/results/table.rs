//! The results table of a workflow: one row per run of every metrics step, the
//! matrix values as columns, and a summary with one row per matrix point giving
//! the mean, standard deviation and 95% confidence interval of its repeats.

use super::grid::{Cell, Grid};
use super::metrics_file::{MetricColumn, StepMetrics};
use super::statistics::Summary;

/// The metrics of one or more steps, ready to print.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultsTable {
    /// Each step's recorded metrics.
    pub steps: Vec<StepMetrics>,
}

impl ResultsTable {
    /// The table of these steps' metrics.
    pub fn of(steps: Vec<StepMetrics>) -> ResultsTable {
        ResultsTable { steps }
    }

    /// Every matrix variable of every step, sorted.
    fn params(&self) -> Vec<String> {
        let mut names: Vec<String> = self.steps.iter().flat_map(|s| s.params()).collect();
        names.sort();
        names.dedup();
        names
    }

    /// Every metric, in first-declared order (a name declared by two steps with
    /// different units is two columns).
    fn metrics(&self) -> Vec<MetricColumn> {
        let mut cols: Vec<MetricColumn> = Vec::new();
        for s in &self.steps {
            for m in &s.metrics {
                if !cols.contains(m) {
                    cols.push(m.clone());
                }
            }
        }
        cols
    }

    fn repeats(&self) -> bool {
        self.steps
            .iter()
            .any(|s| s.rows.iter().any(|r| r.repeat.is_some()))
    }

    /// One row per run: `step, run, <matrix variables>, [repeat], <metrics>`.
    pub fn runs(&self) -> Grid {
        let params = self.params();
        let metrics = self.metrics();
        let repeats = self.repeats();
        let mut headers = vec!["step".to_string(), "run".to_string()];
        headers.extend(params.iter().cloned());
        if repeats {
            headers.push("repeat".into());
        }
        headers.extend(metrics.iter().map(MetricColumn::header));
        let mut rows = Vec::new();
        for s in &self.steps {
            for r in &s.rows {
                let mut cells: Vec<Cell> = vec![s.step.as_str().into(), r.run.as_str().into()];
                cells.extend(params.iter().map(|p| {
                    r.params
                        .get(p)
                        .map_or(Cell::Empty, |v| Cell::Text(v.clone()))
                }));
                if repeats {
                    cells.push(r.repeat.map_or(Cell::Empty, |n| Cell::Number(n.into())));
                }
                cells.extend(metrics.iter().map(|m| {
                    if s.metrics.contains(m) {
                        Cell::from(r.values.get(&m.name).copied())
                    } else {
                        Cell::Empty
                    }
                }));
                rows.push(cells);
            }
        }
        Grid { headers, rows }
    }

    /// One row per matrix point: `step, <matrix variables>, n`, then per metric its
    /// mean, sample standard deviation and 95% confidence interval (Student's t).
    pub fn summary(&self) -> Grid {
        let params = self.params();
        let metrics = self.metrics();
        let mut headers = vec!["step".to_string()];
        headers.extend(params.iter().cloned());
        headers.push("n".into());
        for m in &metrics {
            let unit = m
                .unit
                .as_ref()
                .map(|u| format!(" ({u})"))
                .unwrap_or_default();
            headers.push(format!("{} mean{unit}", m.name));
            headers.push(format!("{} sd", m.name));
            headers.push(format!("{} ci95 low", m.name));
            headers.push(format!("{} ci95 high", m.name));
        }
        let mut rows = Vec::new();
        for s in &self.steps {
            for (point, runs) in s.points() {
                let mut cells: Vec<Cell> = vec![s.step.as_str().into()];
                cells.extend(
                    params
                        .iter()
                        .map(|p| point.get(p).map_or(Cell::Empty, |v| Cell::Text(v.clone()))),
                );
                cells.push(Cell::Number(runs.len() as f64));
                for m in &metrics {
                    let values: Vec<f64> = if s.metrics.contains(m) {
                        runs.iter()
                            .filter_map(|r| r.values.get(&m.name).copied())
                            .collect()
                    } else {
                        Vec::new()
                    };
                    if values.is_empty() {
                        cells.extend([Cell::Empty, Cell::Empty, Cell::Empty, Cell::Empty]);
                        continue;
                    }
                    let sum = Summary::of(&values);
                    let (lo, hi) = sum.interval().unzip();
                    cells.extend([sum.mean.into(), sum.std_dev.into(), lo.into(), hi.into()]);
                }
                rows.push(cells);
            }
        }
        Grid { headers, rows }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::results::metrics_file::Row;

    fn step(name: &str, rows: &[(&str, &str, Option<u32>, f64)]) -> StepMetrics {
        StepMetrics {
            step: name.into(),
            metrics: vec![MetricColumn {
                name: "ops".into(),
                unit: Some("ops/s".into()),
            }],
            rows: rows
                .iter()
                .map(|(mode, size, rep, v)| Row {
                    run: format!("mode={mode},size={size}"),
                    params: BTreeMap::from([
                        ("mode".to_string(), mode.to_string()),
                        ("size".to_string(), size.to_string()),
                    ]),
                    repeat: *rep,
                    values: BTreeMap::from([("ops".to_string(), *v)]),
                })
                .collect(),
        }
    }

    #[test]
    fn one_row_per_run_with_matrix_values_as_columns() {
        let t = ResultsTable::of(vec![step(
            "runs",
            &[
                ("a", "16", Some(1), 10.0),
                ("a", "16", Some(2), 12.0),
                ("b", "16", Some(1), 20.0),
                ("b", "16", Some(2), 22.0),
            ],
        )]);
        let g = t.runs();
        assert_eq!(
            g.headers,
            ["step", "run", "mode", "size", "repeat", "ops (ops/s)"]
        );
        assert_eq!(g.rows.len(), 4);
        assert_eq!(
            g.rows[3],
            vec![
                "runs".into(),
                "mode=b,size=16".into(),
                "b".into(),
                "16".into(),
                Cell::Number(2.0),
                Cell::Number(22.0)
            ]
        );
    }

    #[test]
    fn the_summary_gives_mean_sd_and_a_t_interval_per_matrix_point() {
        let t = ResultsTable::of(vec![step(
            "runs",
            &[("a", "16", Some(1), 10.0), ("a", "16", Some(2), 12.0)],
        )]);
        let g = t.summary();
        assert_eq!(
            g.headers,
            [
                "step",
                "mode",
                "size",
                "n",
                "ops mean (ops/s)",
                "ops sd",
                "ops ci95 low",
                "ops ci95 high"
            ]
        );
        assert_eq!(g.rows.len(), 1);
        let num = |c: &Cell| match c {
            Cell::Number(v) => *v,
            other => panic!("{other:?}"),
        };
        assert_eq!(num(&g.rows[0][3]), 2.0);
        assert_eq!(num(&g.rows[0][4]), 11.0);
        assert!((num(&g.rows[0][5]) - 2f64.sqrt()).abs() < 1e-12);
        assert!((num(&g.rows[0][6]) - (11.0 - 12.7062)).abs() < 1e-9);
    }

    #[test]
    fn steps_without_a_metric_leave_its_cells_empty() {
        let mut other = step("single", &[("a", "1", None, 5.0)]);
        other.metrics[0].unit = None;
        let t = ResultsTable::of(vec![step("runs", &[("a", "16", None, 1.0)]), other]);
        let g = t.runs();
        assert_eq!(
            g.headers,
            ["step", "run", "mode", "size", "ops (ops/s)", "ops"]
        );
        assert_eq!(g.rows[0][5], Cell::Empty);
        assert_eq!(g.rows[1][4], Cell::Empty);
    }

    #[test]
    fn the_runs_csv_round_trips_cell_for_cell() {
        let t = ResultsTable::of(vec![step(
            "runs",
            &[
                ("x,y", "16", Some(1), 0.1 + 0.2),
                ("\"q\"", "64", Some(1), 1e-9),
            ],
        )]);
        let g = t.runs();
        let back = crate::results::csv::parse(&g.csv()).unwrap();
        assert_eq!(back[0], g.headers);
        for (read, row) in back[1..].iter().zip(&g.rows) {
            let exact: Vec<String> = row.iter().map(Cell::exact).collect();
            assert_eq!(read, &exact);
        }
        assert_eq!(back[1][5].parse::<f64>().unwrap(), 0.1 + 0.2);
    }
}
