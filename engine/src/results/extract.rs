//! Taking a metric's number out of a finished run's files.
//!
//! A metric that finds nothing fails its step, and says why in terms the user can
//! act on: the regex, the file and the file's last lines (the usual cause is a
//! workload that printed something else, or printed nothing because it failed).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use super::metric_spec::{MetricSpec, Source};

/// How many of a file's last lines an unmatched regex quotes.
const TAIL_LINES: usize = 10;

/// A metric that could not be taken from a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricError {
    /// The metric's name.
    pub metric: String,
    /// What went wrong, with the file and what it holds.
    pub message: String,
}

impl fmt::Display for MetricError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "metric `{}`: {}", self.metric, self.message)
    }
}

impl std::error::Error for MetricError {}

/// The value of metric `name` in the run whose output directory is `run_dir`.
pub fn extract(name: &str, spec: &MetricSpec, run_dir: &Path) -> Result<f64, MetricError> {
    let fail = |message: String| MetricError {
        metric: name.to_string(),
        message,
    };
    let source = spec.source().map_err(|e| fail(e.message))?;
    let path = run_dir.join(&spec.from);
    let bytes = std::fs::read(&path).map_err(|e| {
        fail(if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "the run has no file `{}`; collect it (`collect:`), write it in the step, or read `console.log`",
                spec.from
            )
        } else {
            format!("cannot read `{}`: {e}", path.display())
        })
    })?;
    let text = String::from_utf8_lossy(&bytes);
    match source {
        Source::Regex(re) => {
            let Some(caps) = re.captures_iter(&text).last() else {
                return Err(fail(format!(
                    "regex `{}` matched nothing in {}; {}",
                    re.as_str(),
                    spec.from,
                    last_lines(&text)
                )));
            };
            let Some(m) = caps.get(1) else {
                return Err(fail(format!(
                    "regex `{}` matched in {} but its capture group took no part in the match: \
                     make the group around the number non-optional",
                    re.as_str(),
                    spec.from
                )));
            };
            number(m.as_str()).ok_or_else(|| {
                fail(format!(
                    "regex `{}` captured `{}` in {}, which is not a number; narrow the group to the digits",
                    re.as_str(),
                    m.as_str(),
                    spec.from
                ))
            })
        }
        Source::Json(pointer) => {
            let doc: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| fail(format!("{} is not JSON ({e})", spec.from)))?;
            let found = doc.pointer(&pointer).ok_or_else(|| {
                let keys = match &doc {
                    serde_json::Value::Object(m) => {
                        format!("; its top-level keys: {}", join(m.keys()))
                    }
                    _ => String::new(),
                };
                fail(format!(
                    "json pointer `{pointer}` found nothing in {}{keys}",
                    spec.from
                ))
            })?;
            let value = match found {
                serde_json::Value::Number(n) => n.as_f64(),
                serde_json::Value::String(s) => number(s),
                _ => None,
            };
            value.ok_or_else(|| {
                fail(format!(
                    "json pointer `{pointer}` in {} is `{found}`, not a number",
                    spec.from
                ))
            })
        }
        Source::Csv(column) => {
            let records = super::csv::parse(&text)
                .map_err(|e| fail(format!("{} is not CSV: {e}", spec.from)))?;
            let Some((header, rows)) = records.split_first() else {
                return Err(fail(format!("{} is empty", spec.from)));
            };
            let index = header
                .iter()
                .position(|h| h.trim() == column)
                .ok_or_else(|| {
                    fail(format!(
                        "{} has no column `{column}`; its columns: {}",
                        spec.from,
                        join(header.iter())
                    ))
                })?;
            let row = rows
                .iter()
                .rev()
                .find(|r| r.iter().any(|c| !c.trim().is_empty()))
                .ok_or_else(|| fail(format!("{} has a header but no rows", spec.from)))?;
            let cell = row.get(index).map(String::as_str).unwrap_or("");
            number(cell).ok_or_else(|| {
                fail(format!(
                    "column `{column}` of {}'s last row is `{cell}`, not a number",
                    spec.from
                ))
            })
        }
    }
}

/// Every metric of a run, by name; the first one that fails is the error.
pub fn extract_all(
    metrics: &BTreeMap<String, MetricSpec>,
    run_dir: &Path,
) -> Result<BTreeMap<String, f64>, MetricError> {
    metrics
        .iter()
        .map(|(name, spec)| Ok((name.clone(), extract(name, spec, run_dir)?)))
        .collect()
}

/// A finite number written in decimal or scientific notation, spaces around allowed.
fn number(s: &str) -> Option<f64> {
    let v: f64 = s.trim().parse().ok()?;
    v.is_finite().then_some(v)
}

fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.iter().all(|l| l.trim().is_empty()) {
        return "the file is empty".to_string();
    }
    let tail = &lines[lines.len().saturating_sub(TAIL_LINES)..];
    let mut out = String::from("its last lines:");
    for l in tail {
        out.push_str("\n    ");
        out.push_str(l);
    }
    out
}

fn join<S: AsRef<str>>(items: impl Iterator<Item = S>) -> String {
    items
        .map(|s| format!("`{}`", s.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> MetricSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn run_with(files: &[(&str, &str)]) -> tempdir::Dir {
        let d = tempdir::Dir::new();
        for (name, text) in files {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        d
    }

    /// A scratch directory removed on drop (the engine has no tempfile dependency).
    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let p =
                    std::env::temp_dir().join(format!("qflow-extract-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn a_regex_takes_its_last_match() {
        let d = run_with(&[("run.txt", "warmup\nops/s: 10.5\nops/s: 1.25e3\ndone\n")]);
        let s = spec("{ from: run.txt, regex: 'ops/s: ([0-9.e]+)' }");
        assert_eq!(extract("ops", &s, d.path()).unwrap(), 1250.0);
    }

    #[test]
    fn an_unmatched_regex_shows_the_regex_the_file_and_its_last_lines() {
        let body: String = (1..=15).map(|i| format!("line {i}\n")).collect();
        let d = run_with(&[("run.txt", &body)]);
        let s = spec("{ from: run.txt, regex: 'ops/s: ([0-9.]+)' }");
        let e = extract("ops", &s, d.path()).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "metric `ops`: regex `ops/s: ([0-9.]+)` matched nothing in run.txt; its last lines:\n    line 6\n"
            ),
            "{e}"
        );
        assert!(e.ends_with("    line 15"), "{e}");
        assert!(!e.contains("line 5\n"), "{e}");
    }

    #[test]
    fn a_missing_file_says_how_to_get_it() {
        let d = run_with(&[]);
        let s = spec("{ from: run.txt, regex: '([0-9]+)' }");
        let e = extract("ops", &s, d.path()).unwrap_err().to_string();
        assert!(
            e.contains("no file `run.txt`") && e.contains("collect"),
            "{e}"
        );
    }

    #[test]
    fn a_capture_that_is_not_a_number_is_refused() {
        let d = run_with(&[("run.txt", "ops/s: fast\n")]);
        let s = spec("{ from: run.txt, regex: 'ops/s: (\\w+)' }");
        let e = extract("ops", &s, d.path()).unwrap_err().to_string();
        assert!(e.contains("captured `fast`"), "{e}");
    }

    #[test]
    fn json_pointers_read_numbers_and_numeric_strings() {
        let d = run_with(&[(
            "s.json",
            r#"{"latency": {"p99": 12.5, "p50": "3"}, "name": "x"}"#,
        )]);
        let p99 = spec("{ from: s.json, json: /latency/p99 }");
        assert_eq!(extract("p99", &p99, d.path()).unwrap(), 12.5);
        let p50 = spec("{ from: s.json, json: /latency/p50 }");
        assert_eq!(extract("p50", &p50, d.path()).unwrap(), 3.0);
        let missing = spec("{ from: s.json, json: /lat/p99 }");
        let e = extract("p99", &missing, d.path()).unwrap_err().to_string();
        assert!(
            e.contains("found nothing") && e.contains("`latency`, `name`"),
            "{e}"
        );
        let text = spec("{ from: s.json, json: /name }");
        let e = extract("n", &text, d.path()).unwrap_err().to_string();
        assert!(e.contains("not a number"), "{e}");
    }

    #[test]
    fn a_csv_column_is_read_from_the_last_row() {
        let d = run_with(&[(
            "perf.csv",
            "size,cycles\n16,100\n\"32\",\"2,5\"\n64,400\n\n",
        )]);
        let s = spec("{ from: perf.csv, csv: cycles }");
        assert_eq!(extract("cycles", &s, d.path()).unwrap(), 400.0);
        let bad = spec("{ from: perf.csv, csv: cycle }");
        let e = extract("c", &bad, d.path()).unwrap_err().to_string();
        assert!(
            e.contains("no column `cycle`") && e.contains("`size`, `cycles`"),
            "{e}"
        );
    }

    #[test]
    fn every_metric_of_a_run_is_extracted_by_name() {
        let d = run_with(&[("run.txt", "a=1\nb=2\n")]);
        let metrics: BTreeMap<String, MetricSpec> = serde_yaml::from_str(
            "a: { from: run.txt, regex: 'a=(\\d+)' }\nb: { from: run.txt, regex: 'b=(\\d+)' }",
        )
        .unwrap();
        let values = extract_all(&metrics, d.path()).unwrap();
        assert_eq!(
            values,
            BTreeMap::from([("a".into(), 1.0), ("b".into(), 2.0)])
        );
    }
}
