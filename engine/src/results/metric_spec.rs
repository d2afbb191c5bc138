//! A metric's declaration: where its number comes from, its unit and what it is
//! expected to be.
//!
//! ```yaml
//! metrics:
//!   ops:     { from: run.txt, regex: 'ops/s: ([0-9.]+)', unit: ops/s, expect: { min: 1000 } }
//!   p99:     { from: stats.json, json: /latency/p99, unit: us }
//!   cycles:  { from: perf.csv, csv: cycles }
//!   boot_ms: { from: console.log, regex: 'booted in ([0-9]+) ms', unit: ms }
//! ```
//!
//! `from` is a file of the run's output directory: a collected file, a file a
//! command wrote, or `console.log`. Everything that can be checked without the run
//! (one source, a regex that compiles with exactly one capture group, a JSON
//! pointer, a plain relative file name, a sane `expect` and `tolerance`) is checked when the
//! workflow loads, so a typo is a `file:line` error before anything boots.

use std::collections::BTreeMap;

use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::expectation::Expectation;
use crate::field_error::FieldError;

/// One metric of a step.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    /// The run's file to read: a collected file (`run.txt`), a file the command
    /// wrote, or `console.log`.
    pub from: String,
    /// A regex with exactly one capture group: the number (the last match counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// A JSON pointer into `from` (`/latency/p99`): a number, or a string holding one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<String>,
    /// A column of the CSV file `from` (header row first): its value in the last row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv: Option<String>,
    /// The unit, shown in tables and on figure axes (`ops/s`, `ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// What the value must be: `{min, max}` or `{value, rel_tol}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expectation>,
    /// The relative difference `qflow verify` accepts between a rebuild's value
    /// and the lock's (`0.05`: within 5%). Default 0: exactly, as a deterministic
    /// run (`icount`) gives; a measured time needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<f64>,
}

/// Where in its file a metric's number is.
#[derive(Debug, Clone)]
pub enum Source {
    /// The one capture group of the last match in a text file.
    Regex(Regex),
    /// A JSON pointer (`/a/0/b`) into a JSON file.
    Json(String),
    /// A column of a CSV file (its last row).
    Csv(String),
}

impl MetricSpec {
    /// The parsed source; call [`check_metrics`] first (a bad regex is an error here).
    pub fn source(&self) -> Result<Source, FieldError> {
        match (&self.regex, &self.json, &self.csv) {
            (Some(r), None, None) => {
                let re = Regex::new(r).map_err(|e| {
                    FieldError::new("regex", format!("regex `{r}` does not compile: {e}"))
                })?;
                let groups = re.captures_len() - 1;
                if groups != 1 {
                    return Err(FieldError::new(
                        "regex",
                        format!(
                            "regex `{r}` has {groups} capture groups; a metric takes exactly one \
                             around the number, e.g. `ops/s: ([0-9.]+)` (write other groups as `(?:...)`)"
                        ),
                    ));
                }
                Ok(Source::Regex(re))
            }
            (None, Some(p), None) => {
                if !p.is_empty() && !p.starts_with('/') {
                    return Err(FieldError::new(
                        "json",
                        format!(
                            "`{p}` is not a JSON pointer: start it with `/`, e.g. `/{}`",
                            p.replace('.', "/")
                        ),
                    ));
                }
                Ok(Source::Json(p.clone()))
            }
            (None, None, Some(c)) => {
                if c.is_empty() {
                    return Err(FieldError::new("csv", "name the CSV column to read"));
                }
                Ok(Source::Csv(c.clone()))
            }
            (None, None, None) => Err(FieldError::new(
                "",
                "say where the number is: `regex` (one capture group), `json` (a pointer) or `csv` (a column)",
            )),
            _ => Err(FieldError::new(
                "",
                "give only one of `regex`, `json` and `csv`",
            )),
        }
    }

    /// Check everything but the run's files; field paths are relative to this metric.
    pub fn check(&self) -> Result<(), FieldError> {
        check_from(&self.from)?;
        self.source()?;
        if let Some(unit) = &self.unit
            && (unit.is_empty() || unit.contains(['\n', '\r']))
        {
            return Err(FieldError::new(
                "unit",
                "a unit is one line of text, e.g. `ops/s`",
            ));
        }
        if let Some(e) = &self.expect {
            e.check("expect")?;
        }
        if let Some(t) = self.tolerance
            && !(t.is_finite() && t >= 0.0)
        {
            return Err(FieldError::new(
                "tolerance",
                format!("`tolerance` is a fraction (0.05 for 5%), not `{t}`"),
            ));
        }
        Ok(())
    }
}

fn check_from(from: &str) -> Result<(), FieldError> {
    let bad = from.is_empty()
        || from.starts_with('/')
        || from
            .split('/')
            .any(|c| c == ".." || c == "." || c.is_empty());
    if bad {
        return Err(FieldError::new(
            "from",
            format!(
                "`{from}` must name a file of the run's output (a collected file's name, a file \
                 the step wrote, or `console.log`), relative and without `..`"
            ),
        ));
    }
    Ok(())
}

/// Whether `name` can be a metric's name: it is a column of tables and CSV files
/// and a key of `metrics.json`.
pub fn is_metric_name(name: &str) -> bool {
    !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Check a step's `metrics:`; errors carry the full field path (`metrics.ops.regex`).
pub fn check_metrics(metrics: &BTreeMap<String, MetricSpec>) -> Result<(), FieldError> {
    for (name, spec) in metrics {
        let base = format!("metrics.{name}");
        if !is_metric_name(name) {
            return Err(FieldError::new(
                base,
                format!(
                    "`{name}` cannot name a metric: use letters, digits, `_` and `-`, starting with a letter"
                ),
            ));
        }
        spec.check().map_err(|e| {
            let field = if e.field.is_empty() {
                base.clone()
            } else {
                format!("{base}.{}", e.field)
            };
            FieldError::new(field, format!("metric `{name}`: {}", e.message))
        })?;
    }
    Ok(())
}

/// Each metric's `from` must be one of `files` (a run's outputs, relative to the
/// run's directory) or lie inside one of them (a directory output).
pub fn check_metrics_read(
    metrics: &BTreeMap<String, MetricSpec>,
    files: &[String],
    how_to_add: &str,
) -> Result<(), FieldError> {
    for (name, spec) in metrics {
        let inside = files.iter().any(|f| {
            let f = f.trim_end_matches('/');
            spec.from == f || spec.from.starts_with(&format!("{f}/"))
        });
        if !inside {
            return Err(FieldError::new(
                format!("metrics.{name}.from"),
                format!(
                    "metric `{name}`: `{}` is not a file of the run ({}); {how_to_add}",
                    spec.from,
                    files.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(yaml: &str) -> BTreeMap<String, MetricSpec> {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn a_regex_with_one_capture_group_is_accepted() {
        let m =
            metrics("ops: { from: run.txt, regex: 'ops/s: ([0-9.]+)(?: total)?', unit: ops/s }");
        check_metrics(&m).unwrap();
        assert!(matches!(m["ops"].source().unwrap(), Source::Regex(_)));
    }

    #[test]
    fn a_regex_without_or_with_two_capture_groups_is_refused_at_its_field() {
        let e =
            check_metrics(&metrics("ops: { from: run.txt, regex: 'ops/s: [0-9.]+' }")).unwrap_err();
        assert_eq!(e.field, "metrics.ops.regex");
        assert!(e.message.contains("has 0 capture groups"), "{}", e.message);
        let e = check_metrics(&metrics("ops: { from: run.txt, regex: '(a)(b)' }")).unwrap_err();
        assert!(e.message.contains("has 2 capture groups"), "{}", e.message);
        assert!(e.message.contains("(?:...)"), "{}", e.message);
    }

    #[test]
    fn a_regex_that_does_not_compile_is_refused() {
        let e = check_metrics(&metrics("ops: { from: run.txt, regex: '([0-9' }")).unwrap_err();
        assert_eq!(e.field, "metrics.ops.regex");
        assert!(e.message.contains("does not compile"), "{}", e.message);
    }

    #[test]
    fn a_metric_needs_exactly_one_source() {
        let e = check_metrics(&metrics("ops: { from: run.txt }")).unwrap_err();
        assert_eq!(e.field, "metrics.ops");
        assert!(e.message.contains("`regex`"));
        let e = check_metrics(&metrics("ops: { from: a.json, json: /a, csv: b }")).unwrap_err();
        assert!(e.message.contains("only one"));
    }

    #[test]
    fn json_pointers_start_with_a_slash() {
        let e = check_metrics(&metrics("p99: { from: s.json, json: latency.p99 }")).unwrap_err();
        assert_eq!(e.field, "metrics.p99.json");
        assert!(e.message.contains("`/latency/p99`"), "{}", e.message);
    }

    #[test]
    fn from_names_a_file_inside_the_run() {
        for bad in ["/etc/passwd", "../x", "a/../b", ""] {
            let yaml = format!("m: {{ from: '{bad}', regex: '(1)' }}");
            let e = check_metrics(&metrics(&yaml)).unwrap_err();
            assert_eq!(e.field, "metrics.m.from", "{bad}");
        }
        check_metrics(&metrics("m: { from: sub/run.txt, regex: '(1)' }")).unwrap();
    }

    #[test]
    fn a_metric_reads_a_file_the_run_has() {
        let m =
            metrics("ops: { from: run.txt, regex: '(1)' }\nb: { from: out/x.txt, regex: '(1)' }");
        let files = vec!["console.log".to_string(), "run.txt".into(), "out/".into()];
        check_metrics_read(&m, &files, "collect it").unwrap();
        let m = metrics("ops: { from: rum.txt, regex: '(1)' }");
        let e = check_metrics_read(&m, &files, "collect it").unwrap_err();
        assert_eq!(e.field, "metrics.ops.from");
        assert!(
            e.message.contains(
                "`rum.txt` is not a file of the run (console.log, run.txt, out/); collect it"
            ),
            "{}",
            e.message
        );
    }

    #[test]
    fn metric_names_are_column_names() {
        let e = check_metrics(&metrics("'ops per s': { from: a, regex: '(1)' }")).unwrap_err();
        assert!(e.message.contains("cannot name a metric"));
    }

    #[test]
    fn unknown_fields_are_refused_by_the_type() {
        let r: Result<BTreeMap<String, MetricSpec>, _> =
            serde_yaml::from_str("ops: { from: a, regx: '(1)' }");
        assert!(r.unwrap_err().to_string().contains("regx"));
    }
}
