//! The run record: what happened to each step in one `qflow apply`, kept as
//! `<cache>/runs/<id>.json`.
//!
//! Written while the run goes on (`finished: false`, steps `running` or
//! `pending`) so `qflow status` can show it live, and once more at the end.
//! Its readers: `qflow status` (the last run, each step's outcome, a failure's
//! exit and time), `qflow gc --keep-runs` (the step keys recent runs used) and
//! `bench/critical-path.sh` (each step's wall and CPU time). A record is a
//! report, not a result: the lock file holds what reproduces a workflow's
//! outputs. So it is written by temp file and rename without fsync.
//!
//! A step that ran, failed, was interrupted, is running or was skipped is kept
//! in full under `steps`. A step taken from the cache with nothing to say but
//! its key is kept as `"name": "key"` under `cached`, and a step not started yet
//! in a live record as its name under `pending`: a run that runs one step of
//! 10,000 writes about 80 bytes per cached step instead of 200 (its output tree
//! is the action record's of that key). `runs/` keeps the last [`KEPT_RUNS`]
//! records, fewer when they are large ([`prune`]). The JSON form is a contract
//! with those readers: fields are only ever added, and a record of the older
//! form (every step under `steps`) reads the same. Imports nothing of the engine.

use std::path::Path;

use anyhow::Context as _;
use qflow_cache::Hash;
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

/// Why a step ran or was skipped: most often one of a few fixed texts
/// ("never ran (no entry in the lock file)" for every step of a first apply),
/// kept without a copy each.
pub type Reason = std::borrow::Cow<'static, str>;

/// One step in the run record.
#[derive(Debug, Clone, Deserialize)]
pub struct StepReport {
    /// The step's name.
    pub name: String,
    /// What happened to it.
    pub outcome: StepOutcome,
    /// Its key (hex in the record), once known: the step ran, was cached, or
    /// failed or was interrupted running with that key.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "hash_or_none"
    )]
    pub key: Option<Hash>,
    /// Its output tree (hex in the record), when it has one.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "hash_or_none"
    )]
    pub output: Option<Hash>,
    /// How long it ran (0 unless it ran).
    pub duration_ms: u64,
    /// When it was handed to its executor, after the run's start (a step
    /// that ran or failed running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ms: Option<u64>,
    /// The CPU time (user and system) of what it ran, its children's children
    /// included, when known: its cgroup's usage where it had one, else what
    /// `wait4` reports of each program it started, plus the time of the qflow
    /// thread that ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    /// Why it ran, or why it was skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<Reason>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its log file, once it has run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// In a run in progress: its log is `<RunReport::logs>/<name>.log`, written in
    /// the record as `log` but not held (53 bytes a step that ran).
    #[serde(skip)]
    pub logged: bool,
    /// Its metrics outside their `expect:` (it ran or was cached, and is
    /// recorded, but the apply fails), one message each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmet: Vec<String>,
}

/// A hash written as hex; a value that is not one reads as none (a record is
/// a report: a key it cannot tell is left out, not the whole record).
fn hash_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Hash>, D::Error> {
    let text = Option::<std::borrow::Cow<'de, str>>::deserialize(d)?;
    Ok(text.and_then(|t| t.parse().ok()))
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
            start_ms: None,
            cpu_ms: None,
            reasons: Vec::new(),
            error: None,
            log: None,
            logged: false,
            unmet: Vec::new(),
        }
    }

    /// With these reasons (kept without spare room: a run's report holds them
    /// for each of its steps until its end).
    pub fn because(mut self, mut reasons: Vec<Reason>) -> StepReport {
        reasons.shrink_to_fit();
        self.reasons = reasons;
        self
    }

    /// Its key, when it came from the cache and there is nothing else to say
    /// about it: then the record keeps only its name and key.
    fn cached_key(&self) -> Option<&Hash> {
        let plain = self.outcome == StepOutcome::Cached
            && self.duration_ms == 0
            && self.start_ms.is_none()
            && self.cpu_ms.is_none()
            && self.reasons.is_empty()
            && self.error.is_none()
            && self.log.is_none()
            && !self.logged
            && self.unmet.is_empty();
        self.key.as_ref().filter(|_| plain)
    }

    /// Whether it is pending with nothing else to say: kept as its name alone.
    fn plain_pending(&self) -> bool {
        self.outcome == StepOutcome::Pending
            && self.key.is_none()
            && self.reasons.is_empty()
            && self.error.is_none()
    }
}

/// The run record (`<cache>/runs/<id>.json`).
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The run's id: start time and process id (see [`run_id`]).
    pub id: String,
    /// The workflow file.
    pub workflow: String,
    /// When the run started (seconds since the epoch).
    pub started_unix: u64,
    /// How long it has run.
    pub duration_ms: u64,
    /// One report per step: in file order in a run; read back from a record,
    /// the steps kept in full first, then the cached ones, then the pending ones.
    pub steps: Vec<StepReport>,
    /// Whether a signal stopped it.
    pub interrupted: bool,
    /// False while the run is in progress (`qflow status` shows it live).
    pub finished: bool,
    /// What the run did with a remote cache, when it used one.
    pub remote: Option<qflow_cache::remote::RemoteStats>,
    /// In a run in progress: the directory of its steps' logs (see
    /// [`StepReport::logged`]); not a field of the record.
    pub logs: Option<String>,
}

/// One step's entry in the record, borrowed from wherever it is kept: a
/// [`StepReport`], or the compact table a run in progress keeps. The one form
/// both are written in.
#[derive(Serialize)]
pub(crate) struct StepView<'a> {
    pub name: &'a str,
    pub outcome: StepOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<&'a Hash>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<&'a Hash>,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub reasons: &'a [Reason],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<std::borrow::Cow<'a, str>>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub unmet: &'a [String],
}

impl StepReport {
    /// This report as the record writes it; a step whose log is not held
    /// ([`StepReport::logged`]) has it under `logs`, the run's log directory.
    pub(crate) fn view<'a>(&'a self, logs: Option<&str>) -> StepView<'a> {
        let log = log_path(self.log.as_deref(), self.logged, logs, &self.name);
        StepView {
            name: &self.name,
            outcome: self.outcome,
            key: self.key.as_ref(),
            output: self.output.as_ref(),
            duration_ms: self.duration_ms,
            start_ms: self.start_ms,
            cpu_ms: self.cpu_ms,
            reasons: &self.reasons,
            error: self.error.as_deref(),
            log,
            unmet: &self.unmet,
        }
    }

    /// How the record writes it: in full, by name and key, or by name alone.
    fn line<'a>(&'a self, logs: Option<&str>) -> Line<'a> {
        if let Some(key) = self.cached_key() {
            Line::Cached(&self.name, key)
        } else if self.plain_pending() {
            Line::Pending(&self.name)
        } else {
            Line::Full(self.view(logs))
        }
    }
}

/// A step's log in the record: the one it holds, else, when it has one not held
/// ([`StepReport::logged`]), `<logs>/<name>.log` under the run's log directory.
pub(crate) fn log_path<'a>(
    held: Option<&'a str>,
    logged: bool,
    logs: Option<&str>,
    name: &str,
) -> Option<std::borrow::Cow<'a, str>> {
    match (held, logs) {
        (Some(log), _) => Some(std::borrow::Cow::Borrowed(log)),
        (None, Some(logs)) if logged => Some(std::borrow::Cow::Owned(format!("{logs}/{name}.log"))),
        _ => None,
    }
}

impl Serialize for StepReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.view(None).serialize(s)
    }
}

/// One step as a record writes it.
pub(crate) enum Line<'a> {
    /// A step with something to say: in full under `steps`.
    Full(StepView<'a>),
    /// Taken from the cache with nothing else to say: `"name": "key"` under `cached`.
    Cached(&'a str, &'a Hash),
    /// Not started yet, in a live record: its name under `pending`.
    Pending(&'a str),
}

/// The steps written in full, as `lines` gives them.
struct Full<'f, F>(&'f F);
/// `{"name": "key", ...}` in file order.
struct Cached<'f, F>(&'f F);
/// The names of the steps not started yet.
struct Pending<'f, F>(&'f F);

impl<'a, F: Fn() -> I, I: Iterator<Item = Line<'a>>> Serialize for Full<'_, F> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq((self.0)().filter_map(|l| match l {
            Line::Full(view) => Some(view),
            _ => None,
        }))
    }
}

impl<'a, F: Fn() -> I, I: Iterator<Item = Line<'a>>> Serialize for Cached<'_, F> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map((self.0)().filter_map(|l| match l {
            Line::Cached(name, key) => Some((name, key)),
            _ => None,
        }))
    }
}

impl<'a, F: Fn() -> I, I: Iterator<Item = Line<'a>>> Serialize for Pending<'_, F> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq((self.0)().filter_map(|l| match l {
            Line::Pending(name) => Some(name),
            _ => None,
        }))
    }
}

/// A record as written: the run's fields from `meta` (its steps are not read),
/// each step from `lines`, asked once for each part of the record (the steps
/// are written as they come, no list of them is made).
struct Written<'m, F> {
    meta: &'m RunReport,
    lines: F,
}

impl<'m, 'a, F, I> Serialize for Written<'m, F>
where
    F: Fn() -> I,
    I: Iterator<Item = Line<'a>>,
{
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let has = |f: fn(&Line<'_>) -> bool| (self.lines)().any(|l| f(&l));
        let meta = self.meta;
        let mut st = s.serialize_struct("RunReport", 10)?;
        st.serialize_field("id", &meta.id)?;
        st.serialize_field("workflow", &meta.workflow)?;
        st.serialize_field("started_unix", &meta.started_unix)?;
        st.serialize_field("duration_ms", &meta.duration_ms)?;
        st.serialize_field("steps", &Full(&self.lines))?;
        if has(|l| matches!(l, Line::Cached(..))) {
            st.serialize_field("cached", &Cached(&self.lines))?;
        }
        if has(|l| matches!(l, Line::Pending(_))) {
            st.serialize_field("pending", &Pending(&self.lines))?;
        }
        st.serialize_field("interrupted", &meta.interrupted)?;
        st.serialize_field("finished", &meta.finished)?;
        if let Some(remote) = &meta.remote {
            st.serialize_field("remote", remote)?;
        }
        st.end()
    }
}

/// The record as read: any record this or an older qflow wrote.
#[derive(Deserialize)]
struct Read {
    id: String,
    workflow: String,
    started_unix: u64,
    duration_ms: u64,
    steps: Vec<StepReport>,
    #[serde(default)]
    cached: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pending: Vec<String>,
    interrupted: bool,
    finished: bool,
    #[serde(default)]
    remote: Option<qflow_cache::remote::RemoteStats>,
}

impl Serialize for RunReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let logs = self.logs.as_deref();
        Written {
            meta: self,
            lines: || self.steps.iter().map(move |step| step.line(logs)),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for RunReport {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RunReport, D::Error> {
        let read = Read::deserialize(d)?;
        let mut steps = read.steps;
        steps.extend(read.cached.into_iter().map(|(name, key)| {
            let mut step = StepReport::new(&name, StepOutcome::Cached);
            step.key = key.parse().ok();
            step
        }));
        steps.extend((read.pending.iter()).map(|name| StepReport::new(name, StepOutcome::Pending)));
        Ok(RunReport {
            id: read.id,
            workflow: read.workflow,
            started_unix: read.started_unix,
            duration_ms: read.duration_ms,
            steps,
            interrupted: read.interrupted,
            finished: read.finished,
            remote: read.remote,
            logs: None,
        })
    }
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
    /// The JSON goes to the file as it is made: a record of 50,000 steps is
    /// megabytes, and no copy of it is held in memory.
    pub fn write(&self, runs: &Path) -> anyhow::Result<()> {
        self.write_to(runs, self)
    }

    /// Write the record of this run whose steps are `lines()` (its own are not
    /// read): how a run in progress, which keeps its steps compact, writes it.
    pub(crate) fn write_lines<'a, I: Iterator<Item = Line<'a>>>(
        &self,
        runs: &Path,
        lines: impl Fn() -> I,
    ) -> anyhow::Result<()> {
        self.write_to(runs, &Written { meta: self, lines })
    }

    fn write_to(&self, runs: &Path, record: &impl Serialize) -> anyhow::Result<()> {
        use std::io::Write as _;
        let tmp = runs.join(format!(".{}.tmp", self.id));
        let written = std::fs::File::create(&tmp)
            .map_err(anyhow::Error::from)
            .and_then(|file| {
                let mut out = std::io::BufWriter::with_capacity(64 << 10, file);
                serde_json::to_writer(&mut out, record)?;
                out.flush()?;
                Ok(())
            });
        written.with_context(|| format!("cannot write {}", tmp.display()))?;
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

/// The bytes of run records `runs/` may hold per step of the run just ended:
/// a workflow whose every apply runs every step (about 330 bytes per step in
/// each record) keeps six records, not [`KEPT_RUNS`]; one whose applies run a
/// few steps (about 80 bytes per cached step) keeps them all.
pub const KEPT_RUN_BYTES_PER_STEP: u64 = 2048;

/// `runs/` may always hold this many bytes, however few the steps.
pub const KEPT_RUN_BYTES: u64 = 8 << 20;

/// The bytes `runs/` may hold after a run of `steps` steps.
pub fn kept_bytes(steps: usize) -> u64 {
    (steps as u64 * KEPT_RUN_BYTES_PER_STEP).max(KEPT_RUN_BYTES)
}

/// Remove all but the `keep` most recent run records in `runs` (by modification
/// time, as `qflow status` orders them) and their log directories in `logs`;
/// fewer when the records kept would hold more than `max_bytes` ([`kept_bytes`]).
/// The most recent record is always kept.
pub fn prune(runs: &Path, logs: &Path, keep: usize, max_bytes: u64) {
    let Ok(dir) = std::fs::read_dir(runs) else {
        return;
    };
    let mut records: Vec<(std::time::SystemTime, u64, std::path::PathBuf)> = dir
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| {
            let meta = std::fs::metadata(&p).ok()?;
            Some((meta.modified().ok()?, meta.len(), p))
        })
        .collect();
    let total: u64 = records.iter().map(|r| r.1).sum();
    if records.len() <= keep && total <= max_bytes {
        return;
    }
    // Newest first: keep while both the count and the bytes allow.
    records.sort_by(|a, b| b.cmp(a));
    let mut bytes = 0;
    let kept = (records.iter())
        .take(keep.max(1))
        .take_while(|r| {
            bytes += r.1;
            bytes <= max_bytes
        })
        .count()
        .max(1);
    let pruned = logs.join(PRUNED_LOGS);
    for (_, _, p) in &records[kept..] {
        if let Some(id) = p.file_stem() {
            // One rename now; the files go in the background (see `remove_pruned_logs`).
            let _ = std::fs::create_dir_all(&pruned);
            if std::fs::rename(logs.join(id), pruned.join(id)).is_err() {
                let _ = std::fs::remove_dir_all(logs.join(id));
            }
        }
        let _ = std::fs::remove_file(p);
    }
}

/// Where [`prune`] moves the log directories of the run records it removes,
/// below the logs directory. Nothing reads it: its contents are removed by
/// [`remove_pruned_logs`] in the background of applies that run longer than
/// [`PRUNED_LOGS_AFTER`], and whole by `qflow gc`.
pub const PRUNED_LOGS: &str = ".pruned";

/// Remove the log directories [`prune`] moved aside, one at a time, until none
/// is left. A run of 10,000 steps leaves 10,000 logs: removing them takes about
/// a second on ext4, which the apply that rolls its record off would otherwise
/// wait for. Called on a thread of its own ([`start_removing_pruned_logs`]) it
/// may be cut off by the process's exit: what is left is removed by a later
/// apply's, and a half-removed directory below [`PRUNED_LOGS`] is never read.
pub fn remove_pruned_logs(logs: &Path) {
    let pruned = logs.join(PRUNED_LOGS);
    loop {
        let Ok(mut dir) = std::fs::read_dir(&pruned) else {
            return;
        };
        let Some(Ok(entry)) = dir.next() else {
            let _ = std::fs::remove_dir(&pruned);
            return;
        };
        if std::fs::remove_dir_all(entry.path()).is_err()
            && std::fs::symlink_metadata(entry.path()).is_ok()
        {
            return;
        }
    }
}

/// How long an apply runs before its thread starts removing pruned logs: an
/// apply that ends sooner (a no-op, a quick step) is not slowed by the removal,
/// which competes for the disk and the cores; a longer one does it beside its
/// steps, where no one waits for it.
pub const PRUNED_LOGS_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Start [`remove_pruned_logs`] on a thread of its own, after
/// [`PRUNED_LOGS_AFTER`], unless there is nothing to remove or this process
/// already has such a thread. The thread is not waited for.
pub fn start_removing_pruned_logs(logs: &Path) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static REMOVING: AtomicBool = AtomicBool::new(false);
    if !logs.join(PRUNED_LOGS).exists() || REMOVING.swap(true, Ordering::AcqRel) {
        return;
    }
    let logs = logs.to_path_buf();
    let started = std::thread::Builder::new()
        .name("remove pruned logs".into())
        .spawn(move || {
            std::thread::sleep(PRUNED_LOGS_AFTER);
            remove_pruned_logs(&logs);
            REMOVING.store(false, Ordering::Release);
        });
    if started.is_err() {
        REMOVING.store(false, Ordering::Release);
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

    /// The names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

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
        prune(&runs, &logs, 2, kept_bytes(1));
        assert_eq!(names(&runs), ["3-000-1.json", "4-000-1.json"]);
        assert!(!logs.join("2-000-1").exists() && logs.join("3-000-1").exists());
        // The pruned runs' logs were moved aside in one rename each, to be
        // removed beside the apply's work; nothing of them is left after that.
        let pruned = logs.join(PRUNED_LOGS);
        assert!(pruned.join("2-000-1/s.log").exists());
        remove_pruned_logs(&logs);
        assert!(!pruned.exists());
        assert_eq!(names(&logs), ["3-000-1", "4-000-1"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pruned_logs_are_removed_by_a_thread_the_apply_does_not_wait_for() {
        let dir = std::env::temp_dir().join(format!("qflow-run-pruned-{}", run_id()));
        let logs = dir.join("logs");
        for run in 0..3 {
            let d = logs.join(PRUNED_LOGS).join(format!("{run}-000-1"));
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..50 {
                std::fs::write(d.join(format!("s{i}.log")), "x").unwrap();
            }
        }
        start_removing_pruned_logs(&logs);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while logs.join(PRUNED_LOGS).exists() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!logs.join(PRUNED_LOGS).exists());
        assert!(logs.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_run_record_keeps_its_json_form_and_reads_back() {
        let (ab, cd, ef) = (Hash([0xab; 32]), Hash([0xcd; 32]), Hash([0xef; 32]));
        let mut cached = StepReport::new("base", StepOutcome::Cached);
        cached.key = Some(ab);
        cached.output = Some(cd);
        let mut ran = StepReport::new("kernel", StepOutcome::Ran);
        ran.key = Some(ef);
        ran.duration_ms = 1500;
        ran.cpu_ms = Some(2900);
        let run = RunReport {
            id: "1-000-1".into(),
            workflow: "w.yaml".into(),
            started_unix: 1,
            duration_ms: 2,
            steps: vec![
                cached,
                ran,
                StepReport::new("boot", StepOutcome::Skipped)
                    .because(vec!["run interrupted".into()]),
                StepReport::new("runs", StepOutcome::Pending),
            ],
            interrupted: true,
            finished: true,
            remote: None,
            logs: None,
        };
        let json = serde_json::to_string(&run).unwrap();
        assert_eq!(
            json,
            r#"{"id":"1-000-1","workflow":"w.yaml","started_unix":1,"duration_ms":2,"steps":[{"name":"kernel","outcome":"ran","key":"EF","duration_ms":1500,"cpu_ms":2900},{"name":"boot","outcome":"skipped","duration_ms":0,"reasons":["run interrupted"]}],"cached":{"base":"AB"},"pending":["runs"],"interrupted":true,"finished":true}"#
                .replace("EF", &ef.to_hex())
                .replace("AB", &ab.to_hex())
        );
        let dir = std::env::temp_dir().join(format!("qflow-run-record-{}", run_id()));
        std::fs::create_dir_all(&dir).unwrap();
        run.write(&dir).unwrap();
        let back = RunReport::read(&dir.join("1-000-1.json")).unwrap();
        let outcomes: Vec<(&str, StepOutcome, Option<Hash>)> = (back.steps.iter())
            .map(|s| (s.name.as_str(), s.outcome, s.key))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("kernel", StepOutcome::Ran, Some(ef)),
                ("boot", StepOutcome::Skipped, None),
                ("base", StepOutcome::Cached, Some(ab)),
                ("runs", StepOutcome::Pending, None),
            ]
        );
        assert_eq!(back.steps[0].cpu_ms, Some(2900));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_step_that_ran_has_its_log_in_the_record_though_the_run_holds_none() {
        let mut ran = StepReport::new("kernel", StepOutcome::Ran);
        ran.logged = true;
        let mut failed = StepReport::new("boot", StepOutcome::Failed);
        failed.log = Some("/elsewhere/boot.log".into());
        let run = RunReport {
            id: "1-000-1".into(),
            workflow: "w.yaml".into(),
            started_unix: 1,
            duration_ms: 2,
            steps: vec![ran, failed],
            interrupted: false,
            finished: true,
            remote: None,
            logs: Some("/c/logs/1-000-1".into()),
        };
        let back: RunReport = serde_json::from_slice(&serde_json::to_vec(&run).unwrap()).unwrap();
        let logs: Vec<Option<&str>> = back.steps.iter().map(|s| s.log.as_deref()).collect();
        assert_eq!(
            logs,
            [
                Some("/c/logs/1-000-1/kernel.log"),
                Some("/elsewhere/boot.log")
            ]
        );
    }

    #[test]
    fn a_record_written_before_cached_steps_were_kept_by_key_reads_the_same() {
        let old = r#"{"id":"1-000-1","workflow":"w.yaml","started_unix":1,"duration_ms":2,"steps":[{"name":"base","outcome":"cached","key":"AB","output":"CD","duration_ms":0},{"name":"boot","outcome":"failed","key":"ef","duration_ms":7,"error":"exit 3"}],"interrupted":false,"finished":true}"#
            .replace("AB", &Hash([0xab; 32]).to_hex())
            .replace("CD", &Hash([0xcd; 32]).to_hex());
        let back: RunReport = serde_json::from_str(&old).unwrap();
        assert_eq!(back.count(StepOutcome::Cached), 1);
        assert_eq!(back.steps[0].output, Some(Hash([0xcd; 32])));
        assert_eq!(
            back.steps[1].key, None,
            "a key that is not a hash is left out"
        );
        assert_eq!(back.steps[1].error.as_deref(), Some("exit 3"));
    }

    #[test]
    fn a_run_that_ran_one_step_of_ten_thousand_writes_under_100_bytes_per_cached_step() {
        let key = |i: usize| format!("{i:064x}").parse::<Hash>().unwrap();
        let mut steps: Vec<StepReport> = (0..10_000)
            .map(|i| {
                let mut s = StepReport::new(&format!("step{i}"), StepOutcome::Cached);
                s.key = Some(key(i));
                s.output = Some(key(i + 1));
                s
            })
            .collect();
        steps[17].outcome = StepOutcome::Ran;
        steps[17].duration_ms = 3;
        steps[17].log = Some("logs/1/step17.log".into());
        let run = RunReport {
            id: "1-000-1".into(),
            workflow: "w.yaml".into(),
            started_unix: 1,
            duration_ms: 2,
            steps,
            interrupted: false,
            finished: true,
            remote: None,
            logs: None,
        };
        let bytes = serde_json::to_vec(&run).unwrap().len();
        assert!(bytes < 100 * 10_000, "{bytes} bytes");
        let back: RunReport = serde_json::from_slice(&serde_json::to_vec(&run).unwrap()).unwrap();
        assert_eq!(back.count(StepOutcome::Cached), 9_999);
        assert!(back.steps.iter().any(|s| s.key == Some(key(9_999))));
    }

    #[test]
    fn large_run_records_are_kept_fewer_than_small_ones() {
        let dir = std::env::temp_dir().join(format!("qflow-run-bytes-{}", run_id()));
        let (runs, logs) = (dir.join("runs"), dir.join("logs"));
        std::fs::create_dir_all(&runs).unwrap();
        // A run of 10,000 steps: twelve records of 3.3 MB (every step ran), then
        // three of 0.8 MB (one step ran), newest last.
        let sizes: Vec<usize> = [vec![3_300_000; 12], vec![800_000; 3]].concat();
        for (i, size) in sizes.iter().enumerate() {
            let p = runs.join(format!("{i:02}-000-1.json"));
            std::fs::write(&p, vec![b' '; *size]).unwrap();
            let t =
                std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i as u64);
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        let left = || names(&runs);
        prune(&runs, &logs, KEPT_RUNS, kept_bytes(10_000));
        // 2 KB per step, 20.5 MB: the three small ones and the five newest large ones.
        let kept = left();
        assert_eq!(kept.len(), 8, "{kept:?}");
        assert_eq!(kept[0], "07-000-1.json");
        // Small records alone are kept up to the count.
        for i in 15..40 {
            std::fs::write(runs.join(format!("{i:02}-000-1.json")), vec![b' '; 800_000]).unwrap();
        }
        prune(&runs, &logs, KEPT_RUNS, kept_bytes(10_000));
        assert_eq!(left().len(), KEPT_RUNS);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
