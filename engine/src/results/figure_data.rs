//! What a figure shows, taken from a step's metrics: its series, and in each the
//! mean of every x value's repeats with the error bar the spec asks for.
//!
//! Kept apart from the drawing so tests can check the data a figure carries and
//! the drawing code only places it.

use super::figure_spec::{ErrorBars, FigureSpec};
use super::metrics_file::StepMetrics;
use super::statistics::Summary;

/// One point: an x value, the mean of its repeats and the error bar's half-height.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The x value as the matrix wrote it.
    pub x: String,
    /// The mean of the point's runs.
    pub mean: f64,
    /// The error bar's half-height; none without repeats or with `error_bars: none`.
    pub error: Option<f64>,
    /// How many runs the mean is over.
    pub n: usize,
}

/// One line (or one colour of bars).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// `mode=a`, or none for a figure without `series`.
    pub name: Option<String>,
    /// Its points, in axis order.
    pub points: Vec<Point>,
}

/// Everything a figure draws.
#[derive(Debug, Clone, PartialEq)]
pub struct FigureData {
    /// The title above the plot.
    pub title: String,
    /// The x axis label.
    pub x_label: String,
    /// The y axis label.
    pub y_label: String,
    /// The x values in axis order: numeric order when every one is a number,
    /// else the matrix's order.
    pub categories: Vec<String>,
    /// Whether every x value is a number (a continuous axis).
    pub numeric_x: bool,
    /// The series, one per value of the `series` variable (one without it).
    pub series: Vec<Series>,
}

impl FigureData {
    /// The data of figure `spec` from its step's metrics.
    pub fn of(spec: &FigureSpec, metrics: &StepMetrics) -> Result<FigureData, String> {
        let mut categories: Vec<String> = Vec::new();
        let mut series_names: Vec<Option<String>> = Vec::new();
        for row in &metrics.rows {
            let x = row.params.get(&spec.x).ok_or_else(|| {
                format!(
                    "run `{}` of step `{}` has no matrix value `{}`",
                    row.run, metrics.step, spec.x
                )
            })?;
            if !categories.contains(x) {
                categories.push(x.clone());
            }
            let s = series_of(spec, row)?;
            if !series_names.contains(&s) {
                series_names.push(s);
            }
        }
        if categories.is_empty() {
            return Err(format!("step `{}` recorded no runs to draw", metrics.step));
        }
        let numeric_x = categories.iter().all(|c| c.parse::<f64>().is_ok());
        if numeric_x {
            categories.sort_by(|a, b| a.parse::<f64>().unwrap().total_cmp(&b.parse().unwrap()));
        }
        if spec.log_x && !numeric_x {
            return Err(format!(
                "`log_x` needs numeric x values; `{}` has {}",
                spec.x,
                categories.join(", ")
            ));
        }
        let mut series = Vec::new();
        for name in series_names {
            let mut points = Vec::new();
            for x in &categories {
                let values: Vec<f64> = metrics
                    .rows
                    .iter()
                    .filter(|r| r.params.get(&spec.x) == Some(x))
                    .filter(|r| series_of(spec, r).ok().as_ref() == Some(&name))
                    .filter_map(|r| r.values.get(&spec.y).copied())
                    .collect();
                if values.is_empty() {
                    continue;
                }
                let sum = Summary::of(&values);
                let error = match spec.error_bars {
                    ErrorBars::Ci95 => sum.ci95,
                    ErrorBars::Sd => sum.std_dev,
                    ErrorBars::None => None,
                };
                points.push(Point {
                    x: x.clone(),
                    mean: sum.mean,
                    error,
                    n: sum.n,
                });
            }
            if !points.is_empty() {
                series.push(Series { name, points });
            }
        }
        if series.is_empty() {
            return Err(format!(
                "step `{}` recorded no value of metric `{}`",
                metrics.step, spec.y
            ));
        }
        if spec.log_y
            && let Some(p) = series
                .iter()
                .flat_map(|s| &s.points)
                .find(|p| p.mean <= 0.0)
        {
            return Err(format!(
                "`log_y` needs positive values; `{}` is {} at {} = {}",
                spec.y, p.mean, spec.x, p.x
            ));
        }
        let unit = metrics.unit(&spec.y);
        let y_label = spec.y_label.clone().unwrap_or_else(|| match unit {
            Some(u) => format!("{} ({u})", spec.y),
            None => spec.y.clone(),
        });
        Ok(FigureData {
            title: spec
                .title
                .clone()
                .unwrap_or_else(|| format!("{} by {}", spec.y, spec.x)),
            x_label: spec.x_label.clone().unwrap_or_else(|| spec.x.clone()),
            y_label,
            categories,
            numeric_x,
            series,
        })
    }
}

fn series_of(spec: &FigureSpec, row: &super::metrics_file::Row) -> Result<Option<String>, String> {
    match &spec.series {
        None => Ok(None),
        Some(var) => row
            .params
            .get(var)
            .map(|v| Some(format!("{var}={v}")))
            .ok_or_else(|| format!("run `{}` has no matrix value `{var}`", row.run)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::results::metrics_file::{MetricColumn, Row};

    fn metrics() -> StepMetrics {
        let mut rows = Vec::new();
        for mode in ["b", "a"] {
            for size in ["64", "8", "16"] {
                for rep in 1..=2u32 {
                    let v = size.parse::<f64>().unwrap() * if mode == "a" { 1.0 } else { 2.0 }
                        + rep as f64;
                    rows.push(Row {
                        run: format!("mode={mode},size={size}/repeat={rep}"),
                        params: BTreeMap::from([
                            ("mode".to_string(), mode.to_string()),
                            ("size".to_string(), size.to_string()),
                        ]),
                        repeat: Some(rep),
                        values: BTreeMap::from([("ops".to_string(), v)]),
                    });
                }
            }
        }
        StepMetrics {
            step: "runs".into(),
            metrics: vec![MetricColumn {
                name: "ops".into(),
                unit: Some("ops/s".into()),
            }],
            rows,
        }
    }

    fn spec(yaml: &str) -> FigureSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn each_series_has_one_point_per_x_value_in_numeric_order() {
        let d = FigureData::of(
            &spec("{ step: runs, x: size, y: ops, series: mode }"),
            &metrics(),
        )
        .unwrap();
        assert!(d.numeric_x);
        assert_eq!(d.categories, ["8", "16", "64"]);
        assert_eq!(d.series.len(), 2);
        assert_eq!(d.series[0].name.as_deref(), Some("mode=b"));
        let b = &d.series[0].points;
        assert_eq!(
            b.iter().map(|p| p.x.as_str()).collect::<Vec<_>>(),
            ["8", "16", "64"]
        );
        // mode=b, size=8: repeats 17 and 18.
        assert_eq!(b[0].mean, 17.5);
        assert_eq!(b[0].n, 2);
        let ci = b[0].error.unwrap();
        assert!(
            (ci - 12.7062 * 0.5f64.sqrt() / 2f64.sqrt()).abs() < 1e-9,
            "{ci}"
        );
        assert_eq!(d.y_label, "ops (ops/s)");
        assert_eq!(d.title, "ops by size");
    }

    #[test]
    fn without_series_all_runs_of_an_x_value_are_one_point() {
        let d = FigureData::of(
            &spec("{ step: runs, x: size, y: ops, error_bars: sd, title: T }"),
            &metrics(),
        )
        .unwrap();
        assert_eq!(d.series.len(), 1);
        assert_eq!(d.series[0].points[0].n, 4);
        assert_eq!(d.title, "T");
    }

    #[test]
    fn a_log_axis_refuses_values_it_cannot_draw() {
        let e = FigureData::of(
            &spec("{ step: runs, x: mode, y: ops, log_x: true }"),
            &metrics(),
        )
        .unwrap_err();
        assert!(e.contains("numeric x values"), "{e}");
    }
}
