//! The run record: what happened to each step in one `qflow apply`, kept as
//! `<cache>/runs/<id>.json`.
//!
//! Written while the run goes on (`finished: false`, steps `running` or
//! `pending`) so `qflow status` can show it live, and once more at the end.
//! `qflow gc --keep-runs` reads the step keys of recent records. The JSON form is
//! a contract with those readers: fields are only ever added. A record is a
//! report, not a result, so it is written by temp file and rename without fsync.
//! Imports nothing of the engine.

use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// What happened to one step in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepOutcome {
    /// It ran and its result was recorded.
    Ran,
    /// Its result was already in the cache.
    Cached,
    /// It ran and failed; nothing was recorded.
    Failed,
    /// It did not run: an upstream step failed, or the run stopped first.
    Skipped,
    /// It was running when the run was interrupted; nothing was recorded.
    Interrupted,
    /// Only in the record of a run still in progress.
    Running,
    /// Only in the record of a run still in progress.
    Pending,
}

/// One step in the run record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    /// The step's name.
    pub name: String,
    /// What happened to it.
    pub outcome: StepOutcome,
    /// Its key (hex), once known: the step ran, was cached, or failed or was
    /// interrupted running with that key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Its output tree (hex), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// How long it ran (0 unless it ran).
    pub duration_ms: u64,
    /// Why it ran, or why it was skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its log file, once it has run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// Its metrics outside their `expect:` (it ran or was cached, and is
    /// recorded, but the apply fails), one message each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmet: Vec<String>,
}

impl StepReport {
    /// A report of step `name` with `outcome` and nothing else yet.
    pub fn new(name: &str, outcome: StepOutcome) -> StepReport {
        StepReport {
            name: name.to_string(),
            outcome,
            key: None,
            output: None,
            duration_ms: 0,
            reasons: Vec::new(),
            error: None,
            log: None,
            unmet: Vec::new(),
        }
    }

    /// With these reasons.
    pub fn because(mut self, reasons: Vec<String>) -> StepReport {
        self.reasons = reasons;
        self
    }
}

/// The run record (`<cache>/runs/<id>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// The run's id: start time and process id (see [`run_id`]).
    pub id: String,
    /// The workflow file.
    pub workflow: String,
    /// When the run started (seconds since the epoch).
    pub started_unix: u64,
    /// How long it has run.
    pub duration_ms: u64,
    /// One report per step, in file order.
    pub steps: Vec<StepReport>,
    /// Whether a signal stopped it.
    pub interrupted: bool,
    /// False while the run is in progress (`qflow status` shows it live).
    pub finished: bool,
    /// What the run did with a remote cache, when it used one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<qflow_cache::remote::RemoteStats>,
}

impl RunReport {
    /// How many steps had outcome `o`.
    pub fn count(&self, o: StepOutcome) -> usize {
        self.steps.iter().filter(|s| s.outcome == o).count()
    }

    /// How many metric values of all steps are outside their expectations.
    pub fn unmet_count(&self) -> usize {
        self.steps.iter().map(|s| s.unmet.len()).sum()
    }

    /// Write this record into `runs` as `<id>.json` (temp file and rename, no fsync).
    pub fn write(&self, runs: &Path) -> anyhow::Result<()> {
        let tmp = runs.join(format!(".{}.tmp", self.id));
        std::fs::write(&tmp, serde_json::to_vec(self)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, runs.join(format!("{}.json", self.id)))?;
        Ok(())
    }

    /// Read the record at `path`.
    pub fn read(path: &Path) -> anyhow::Result<RunReport> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a run record", path.display()))
    }
}

/// How many run records (and their step logs) a cache keeps: twice the runs
/// `qflow gc` keeps results of by default. Older ones are removed when a run ends,
/// so `runs/` and `logs/` stop growing with every apply.
pub const KEPT_RUNS: usize = 20;

/// Remove all but the `keep` most recent run records in `runs` (by modification
/// time, as `qflow status` orders them) and their log directories in `logs`.
pub fn prune(runs: &Path, logs: &Path, keep: usize) {
    let Ok(dir) = std::fs::read_dir(runs) else {
        return;
    };
    let mut records: Vec<(std::time::SystemTime, std::path::PathBuf)> = dir
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    if records.len() <= keep {
        return;
    }
    records.sort();
    for (_, p) in &records[..records.len() - keep] {
        if let Some(id) = p.file_stem() {
            let _ = std::fs::remove_dir_all(logs.join(id));
        }
        let _ = std::fs::remove_file(p);
    }
}

/// A new run's id: `<seconds>-<millis>-<pid>`, sorting by start time.
pub fn run_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}-{:03}-{}",
        now.as_secs(),
        now.subsec_millis(),
        std::process::id()
    )
}

/// Seconds since the epoch, now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_most_recent_run_records_and_their_logs_are_kept() {
        let dir = std::env::temp_dir().join(format!("qflow-run-prune-{}", run_id()));
        let (runs, logs) = (dir.join("runs"), dir.join("logs"));
        std::fs::create_dir_all(&runs).unwrap();
        for i in 0..5 {
            let id = format!("{i}-000-1");
            std::fs::write(runs.join(format!("{id}.json")), "{}").unwrap();
            std::fs::create_dir_all(logs.join(&id)).unwrap();
            std::fs::write(logs.join(&id).join("s.log"), "x").unwrap();
            let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i);
            std::fs::File::options()
                .write(true)
                .open(runs.join(format!("{id}.json")))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        prune(&runs, &logs, 2);
        let mut left: Vec<String> = std::fs::read_dir(&runs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["3-000-1.json", "4-000-1.json"]);
        assert!(!logs.join("2-000-1").exists() && logs.join("3-000-1").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_run_record_keeps_its_json_form_and_reads_back() {
        let mut cached = StepReport::new("base", StepOutcome::Cached);
        cached.key = Some("ab".into());
        cached.output = Some("cd".into());
        let run = RunReport {
            id: "1-000-1".into(),
            workflow: "w.yaml".into(),
            started_unix: 1,
            duration_ms: 2,
            steps: vec![
                cached,
                StepReport::new("boot", StepOutcome::Skipped)
                    .because(vec!["run interrupted".into()]),
            ],
            interrupted: true,
            finished: true,
            remote: None,
        };
        let json = serde_json::to_string(&run).unwrap();
        assert_eq!(
            json,
            r#"{"id":"1-000-1","workflow":"w.yaml","started_unix":1,"duration_ms":2,"steps":[{"name":"base","outcome":"cached","key":"ab","output":"cd","duration_ms":0},{"name":"boot","outcome":"skipped","duration_ms":0,"reasons":["run interrupted"]}],"interrupted":true,"finished":true}"#
        );
        let dir = std::env::temp_dir().join(format!("qflow-run-record-{}", run_id()));
        std::fs::create_dir_all(&dir).unwrap();
        run.write(&dir).unwrap();
        let back = RunReport::read(&dir.join("1-000-1.json")).unwrap();
        assert_eq!(back.count(StepOutcome::Skipped), 1);
        assert_eq!(back.steps[0].key.as_deref(), Some("ab"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
