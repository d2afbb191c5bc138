//! `qflow verify`: rebuild a workflow from nothing and compare with its lock.
//!
//! An artifact evaluator's question is "do I get the same bytes?". Verify answers it
//! without touching the user's cache, lock or `out/`: it opens the workflow on a
//! fresh cache in a temporary directory ([`scratch`]), with an empty lock and its
//! own `out/`, applies every step (`keep_going`, so one failure does not hide the
//! rest), and compares each step's output hashes with the workflow's lock.
//!
//! Machine state ([`OutputRole::MachineState`]: a disk the guest wrote, a memory
//! snapshot, the console log of a run whose timing is the host's) cannot come out
//! identical, so it is not judged by its bytes: verify lists it in its own section
//! and checks what matters in it instead, that the steps which use it (the runs
//! restored from a checkpoint) rebuilt identical outputs ([`Rebuild::machine_state`]).
//! Verify passes when every image, result, artifact and log is identical. Logs
//! are judged like results: a boot's console under `icount` repeats byte for byte
//! (the guest's clock counts instructions and qflow types only at its prompt), and
//! so do `commands.json` and `qemu.log`; a console without `icount` is machine state.
//!
//! `--twice` ([`VerifyOptions::twice`]) needs no earlier apply: it makes two clean
//! builds and compares the second with the first.
//!
//! A [`Rebuild`] is the comparison, with both files of every differing output at
//! hand while it lives: the caller explains a differing output by its
//! [`OutputRole`] (a disk image file by file, which needs the image kinds' tools;
//! a small text by its first differing line, [`first_differing_line`]). When the
//! lock's key for a step differs from the rebuild's (a tool version, an input, a
//! field), [`Rebuild::key_notes`] says which, because "different tool, same bytes"
//! and "same inputs, different bytes" mean different things to an evaluator.
//!
//! A step's `metrics:` are compared as numbers too ([`MetricRow`]): each value
//! of the rebuild against the one the lock keeps, with their ratio, exactly
//! unless the metric has a `tolerance`. When every metric of a step is within
//! tolerance, its differing `metrics.json` and `metrics.csv` count as agreeing
//! ([`Verdict::WithinTolerance`]): the numbers are what the paper claims, which
//! is the question those files answer.

pub mod scratch;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::Refusal;
use crate::lockfile::{LockFile, LockedStep};
use crate::progress::Progress;
use crate::scheduler::{ApplyOptions, apply};
use crate::session::{Session, lock_path};
use crate::step::{OutputRole, Registry};
use crate::workflow::Workflow;
use scratch::Scratch;

/// How to verify.
pub struct VerifyOptions {
    /// CPU slots for the rebuild (default: the number of cores).
    pub jobs: Option<usize>,
    /// Parent of the temporary directory (default: `$TMPDIR`, else `/tmp`).
    pub work_dir: Option<PathBuf>,
    /// Only these steps and their upstream (empty: every step).
    pub steps: Vec<String>,
    /// Keep the temporary directory.
    pub keep: bool,
    /// The cache the lock was made with, where recorded images may still be.
    pub original_cache: PathBuf,
    /// Compare two clean builds with each other instead of a rebuild with the lock.
    pub twice: bool,
}

/// How one output compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Rebuilt bit for bit.
    Identical,
    /// Rebuilt with other bytes.
    Different,
    /// Recorded, but the rebuild did not produce it.
    NotRebuilt,
    /// Produced by the rebuild, absent from the lock.
    NotInLock,
    /// A step's metrics file with other bytes, every metric of which is within
    /// its tolerance of the lock's value.
    WithinTolerance,
}

impl Verdict {
    /// The word the report shows.
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Identical => "identical",
            Verdict::Different => "DIFFERENT",
            Verdict::NotRebuilt => "NOT REBUILT",
            Verdict::NotInLock => "NOT IN LOCK",
            Verdict::WithinTolerance => "within tolerance",
        }
    }

    /// Whether the output agrees with the lock.
    pub fn agrees(self) -> bool {
        matches!(self, Verdict::Identical | Verdict::WithinTolerance)
    }
}

/// How one metric value of one run compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricVerdict {
    /// The same number.
    Same,
    /// Another number, within the metric's tolerance.
    Within,
    /// Farther from the lock's value than the metric's tolerance.
    Outside,
    /// In the lock, but the rebuild has no such value.
    NotRebuilt,
    /// Rebuilt, but the lock has no such value.
    NotInLock,
}

impl MetricVerdict {
    /// The word the report shows.
    pub fn word(self) -> &'static str {
        match self {
            MetricVerdict::Same => "same",
            MetricVerdict::Within => "within tolerance",
            MetricVerdict::Outside => "OUTSIDE TOLERANCE",
            MetricVerdict::NotRebuilt => "NOT REBUILT",
            MetricVerdict::NotInLock => "NOT IN LOCK",
        }
    }

    /// Whether the value agrees with the lock's.
    pub fn agrees(self) -> bool {
        matches!(self, MetricVerdict::Same | MetricVerdict::Within)
    }
}

/// One metric value of one run, the lock's against the rebuild's.
#[derive(Debug, Clone)]
pub struct MetricRow {
    /// The step.
    pub step: String,
    /// `metric`, or `run/metric` for a run of a matrix.
    pub name: String,
    /// The value the lock keeps.
    pub reference: Option<f64>,
    /// The rebuild's value.
    pub value: Option<f64>,
    /// The relative difference accepted (0: exactly).
    pub tolerance: f64,
    /// How the two compare.
    pub verdict: MetricVerdict,
}

impl MetricRow {
    /// The rebuild's value over the lock's, when both are there and the lock's is not 0.
    pub fn ratio(&self) -> Option<f64> {
        match (self.value, self.reference) {
            (Some(v), Some(r)) if r != 0.0 => Some(v / r),
            (Some(v), Some(r)) if v == r => Some(1.0),
            _ => None,
        }
    }
}

/// One output of one step, recorded against rebuilt.
#[derive(Debug)]
pub struct Row {
    /// The step.
    pub step: String,
    /// The output, relative to the step's output directory.
    pub output: String,
    /// What the step says this output is.
    pub role: OutputRole,
    /// Its hash in the user's lock.
    pub recorded: Option<String>,
    /// Its hash in the rebuild.
    pub rebuilt: Option<String>,
    /// How the two compare.
    pub verdict: Verdict,
}

impl Row {
    /// Machine state, which is not expected to rebuild bit for bit.
    pub fn is_machine_state(&self) -> bool {
        self.role == OutputRole::MachineState
    }

    /// Whether this row fails the verification: anything not identical, except
    /// machine state rebuilt with other bytes (verify vouches for images, results,
    /// artifacts and logs).
    pub fn fails(&self) -> bool {
        match self.verdict {
            Verdict::Identical | Verdict::WithinTolerance => false,
            Verdict::Different => !self.is_machine_state(),
            Verdict::NotRebuilt | Verdict::NotInLock => true,
        }
    }

    /// The result column of the main table.
    pub fn result(&self) -> &'static str {
        self.verdict.word()
    }
}

/// A finished rebuild and its comparison with the lock. Dropping it removes the
/// rebuild's directory (unless kept).
pub struct Rebuild {
    /// The user's lock the rebuild was compared with (with `twice`, the first build's).
    pub recorded_path: PathBuf,
    /// What the rebuild was compared with, for the report.
    pub compared_with: String,
    /// Every output compared, by step.
    pub rows: Vec<Row>,
    /// Every metric value compared, by step.
    pub metrics: Vec<MetricRow>,
    steps: Vec<String>,
    recorded: LockFile,
    rebuilt: LockFile,
    rebuilt_cache: qflow_cache::Cache,
    original_cache: PathBuf,
    /// Each step's name → the steps that use its outputs.
    downstream: std::collections::BTreeMap<String, Vec<String>>,
    scratch: Scratch,
    /// With `twice`, the first build (its cache is the "recorded" one).
    _first: Option<Scratch>,
}

/// Rebuild `wf` in a temporary cache and compare with its lock; `None` when the
/// rebuild was interrupted.
pub fn rebuild(
    mut wf: Workflow,
    registry: &Registry,
    options: &VerifyOptions,
) -> anyhow::Result<Option<Rebuild>> {
    select_steps(&mut wf, &options.steps)?;
    let wf = &wf;
    let jobs = options.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if jobs == 0 {
        return Err(Refusal("--jobs must be at least 1".into()).into());
    }
    let parent = options.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let (recorded_path, compared_with, original_cache, first) = if options.twice {
        let scratch = Scratch::new(&parent, options.keep)?;
        eprintln!(
            "qflow: verify: first clean build in {}",
            scratch.path.display()
        );
        if build(wf, registry, &scratch, jobs)?.is_none() {
            return Ok(None);
        }
        let lock = scratch.path.join(REBUILT_LOCK);
        let cache = scratch.path.join("cache");
        (
            lock,
            "the first clean build".to_string(),
            cache,
            Some(scratch),
        )
    } else {
        let path = lock_path(wf);
        let shown = path.display().to_string();
        (path, shown, options.original_cache.clone(), None)
    };
    let recorded = LockFile::read(&recorded_path);
    if recorded.steps.is_empty() {
        return Err(Refusal(format!(
            "no lock file with results at `{}`; run `qflow apply {}` first (verify compares a rebuild with it), \
             or pass `--twice` to compare two clean builds",
            recorded_path.display(),
            wf.path.display()
        ))
        .into());
    }
    let scratch = Scratch::new(&parent, options.keep)?;
    eprintln!(
        "qflow: verify: rebuilding every step from scratch in {}",
        scratch.path.display()
    );
    let Some(rebuilt_cache) = build(wf, registry, &scratch, jobs)? else {
        return Ok(None);
    };
    let rebuilt = LockFile::read(&scratch.path.join(REBUILT_LOCK));
    let metrics = compare_metrics(wf, &recorded, &rebuilt);
    let mut rows = compare(wf, &recorded, &rebuilt);
    accept_metrics_within_tolerance(&mut rows, &metrics);
    let mut downstream: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for s in &wf.steps {
        for u in wf.upstream_names(s) {
            downstream
                .entry(u.to_string())
                .or_default()
                .push(s.name.clone());
        }
    }
    Ok(Some(Rebuild {
        recorded_path,
        compared_with,
        rows,
        metrics,
        steps: wf.steps.iter().map(|s| s.name.clone()).collect(),
        recorded,
        rebuilt,
        rebuilt_cache,
        original_cache,
        downstream,
        scratch,
        _first: first,
    }))
}

/// The lock of a build in a scratch directory.
const REBUILT_LOCK: &str = "rebuilt.lock";

/// Apply every step of `wf` on a fresh cache in `scratch`, with its own empty lock
/// and `out/`; the cache, or `None` when interrupted.
fn build(
    wf: &Workflow,
    registry: &Registry,
    scratch: &Scratch,
    jobs: usize,
) -> anyhow::Result<Option<qflow_cache::Cache>> {
    let mut session = Session::open(wf, registry, &scratch.path.join("cache"))?;
    // Never read or write the user's lock: the build has its own, empty one.
    session.lock_path = scratch.path.join(REBUILT_LOCK);
    session.set_lock(LockFile::default());
    let apply_options = ApplyOptions {
        jobs,
        keep_going: true,
        no_wait: false,
        out_dir: Some(scratch.path.join("out")),
        executor: Some(crate::slurm::placement::ExecutorChoice::Local),
        slurm_batch: false,
        remote: None,
    };
    let report = apply(&mut session, &apply_options, Arc::new(Progress::new()))?;
    if report.interrupted {
        return Ok(None);
    }
    Ok(Some(session.cache.clone()))
}

impl Rebuild {
    /// The recorded output file, if the original cache still holds its tree.
    pub fn recorded_file(&self, row: &Row) -> Option<PathBuf> {
        if !self.original_cache.is_dir() {
            return None;
        }
        let hash: qflow_cache::Hash = self.recorded.steps.get(&row.step)?.output.parse().ok()?;
        let cache = qflow_cache::Cache::open(&self.original_cache).ok()?;
        let p = cache.tree_path(&hash).join(&row.output);
        p.is_file().then_some(p)
    }

    /// When the lock, not the output, is what differs: the recorded file (still in
    /// the original cache) does not have the hash the lock gives it, so the lock
    /// was edited or damaged after the run. Says so, and whether the rebuild
    /// matches the recorded file.
    pub fn lock_mismatch(&self, row: &Row) -> Option<String> {
        let recorded = row.recorded.as_deref()?;
        let file = self.recorded_file(row)?;
        let actual = qflow_cache::hash_file(&file).ok()?.to_hex();
        if actual == recorded {
            return None;
        }
        let rebuild = if row.rebuilt.as_deref() == Some(actual.as_str()) {
            "the rebuild is identical to the file the run recorded"
        } else {
            "the rebuild differs from the recorded file too"
        };
        Some(format!(
            "the lock does not match the run it records: `{}` gives blake3 `{}`, but the file \
             that run recorded hashes to `{}` (the lock was edited or damaged after the run); {rebuild}. \
             `qflow apply` rewrites the lock from the cache",
            self.recorded_path.display(),
            &recorded[..16.min(recorded.len())],
            &actual[..16]
        ))
    }

    /// The rebuilt output file.
    pub fn rebuilt_file(&self, row: &Row) -> Option<PathBuf> {
        let hash: qflow_cache::Hash = self.rebuilt.steps.get(&row.step)?.output.parse().ok()?;
        Some(self.rebuilt_cache.tree_path(&hash).join(&row.output))
    }

    /// The cache the lock was made with.
    pub fn original_cache(&self) -> &Path {
        &self.original_cache
    }

    /// A directory for the caller's own scratch files, removed with the rebuild.
    pub fn work_dir(&self) -> PathBuf {
        self.scratch.path.join("diff")
    }

    /// (step, what differs) for every step rebuilt from other key material than
    /// the lock records, in the workflow's order.
    pub fn key_notes(&self) -> Vec<(String, Vec<String>)> {
        self.steps
            .iter()
            .filter_map(|name| {
                let (a, b) = (
                    self.recorded.steps.get(name)?,
                    self.rebuilt.steps.get(name)?,
                );
                (a.key != b.key).then(|| (name.clone(), key_differences(a, b)))
            })
            .collect()
    }

    /// How many outputs fail the verification ([`Row::fails`]).
    pub fn differing(&self) -> usize {
        self.rows.iter().filter(|r| r.fails()).count()
    }

    /// What verify says of a machine state row, having checked what matters in it:
    /// whether the steps that use it rebuilt identical outputs.
    pub fn machine_state(&self, row: &Row) -> String {
        let first = match row.verdict {
            Verdict::Identical => "identical",
            Verdict::Different => "differs, expected",
            v => v.word(),
        };
        let users = self.downstream.get(&row.step).cloned().unwrap_or_default();
        if users.is_empty() {
            return first.to_string();
        }
        let theirs: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| users.contains(&r.step) && !r.is_machine_state())
            .collect();
        let names = users
            .iter()
            .map(|u| format!("`{u}`"))
            .collect::<Vec<_>>()
            .join(", ");
        if theirs.iter().all(|r| r.verdict == Verdict::Identical) {
            format!("{first}; what uses it ({names}) rebuilt identical")
        } else {
            format!("{first}; what uses it ({names}) did NOT rebuild identical")
        }
    }

    /// How many metric values do not agree with the lock's.
    pub fn metrics_off(&self) -> usize {
        self.metrics.iter().filter(|m| !m.verdict.agrees()).count()
    }
}

/// Keep only `wanted` and every step they depend on (all steps when empty).
fn select_steps(wf: &mut Workflow, wanted: &[String]) -> anyhow::Result<()> {
    if wanted.is_empty() {
        return Ok(());
    }
    let mut keep: BTreeSet<String> = BTreeSet::new();
    let mut todo: Vec<String> = Vec::new();
    for w in wanted {
        if wf.step(w).is_none() {
            let names: Vec<&str> = wf.steps.iter().map(|s| s.name.as_str()).collect();
            return Err(Refusal(format!(
                "--step `{}`: no step of that name in {}; its steps: {}",
                crate::diagnostic::escaped(w),
                wf.path.display(),
                names.join(", ")
            ))
            .into());
        }
        todo.push(w.clone());
    }
    while let Some(name) = todo.pop() {
        if keep.insert(name.clone())
            && let Some(s) = wf.step(&name)
        {
            todo.extend(wf.upstream_names(s).map(str::to_string));
        }
    }
    wf.keep_steps(|s| keep.contains(&s.name));
    Ok(())
}

/// Every output of every step of the workflow, recorded against rebuilt.
fn compare(wf: &Workflow, recorded: &LockFile, rebuilt: &LockFile) -> Vec<Row> {
    let mut rows = Vec::new();
    for s in &wf.steps {
        let a = recorded.steps.get(&s.name);
        let b = rebuilt.steps.get(&s.name);
        let paths: BTreeSet<&String> = a
            .iter()
            .flat_map(|e| e.outputs.keys())
            .chain(b.iter().flat_map(|e| e.outputs.keys()))
            .collect();
        for p in paths {
            let ra = a.and_then(|e| e.outputs.get(p)).cloned();
            let rb = b.and_then(|e| e.outputs.get(p)).cloned();
            let verdict = match (&ra, &rb) {
                (Some(x), Some(y)) if x == y => Verdict::Identical,
                (Some(_), Some(_)) => Verdict::Different,
                (Some(_), None) => Verdict::NotRebuilt,
                (None, _) => Verdict::NotInLock,
            };
            rows.push(Row {
                step: s.name.clone(),
                output: p.clone(),
                role: s.step.output_role(p),
                recorded: ra,
                rebuilt: rb,
                verdict,
            });
        }
    }
    rows
}

/// Every metric value of every step with `metrics:`, the lock's against the rebuild's.
fn compare_metrics(wf: &Workflow, recorded: &LockFile, rebuilt: &LockFile) -> Vec<MetricRow> {
    let mut rows = Vec::new();
    for s in &wf.steps {
        let specs = s.step.metrics();
        if specs.is_empty() {
            continue;
        }
        let empty = Default::default();
        let a = recorded.steps.get(&s.name).map_or(&empty, |e| &e.metrics);
        let b = rebuilt.steps.get(&s.name).map_or(&empty, |e| &e.metrics);
        let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for name in names {
            let tolerance = specs
                .get(crate::results::metric_of_flat(name))
                .and_then(|m| m.tolerance)
                .unwrap_or(0.0);
            let (reference, value) = (a.get(name).copied(), b.get(name).copied());
            let verdict = match (reference, value) {
                (Some(r), Some(v)) if r == v => MetricVerdict::Same,
                (Some(r), Some(v)) if crate::results::expectation::within(v, r, tolerance) => {
                    MetricVerdict::Within
                }
                (Some(_), Some(_)) => MetricVerdict::Outside,
                (Some(_), None) => MetricVerdict::NotRebuilt,
                (None, _) => MetricVerdict::NotInLock,
            };
            rows.push(MetricRow {
                step: s.name.clone(),
                name: name.clone(),
                reference,
                value,
                tolerance,
                verdict,
            });
        }
    }
    rows
}

/// A step's differing `metrics.json` and `metrics.csv` agree when every one of
/// its metric values agrees with the lock's.
fn accept_metrics_within_tolerance(rows: &mut [Row], metrics: &[MetricRow]) {
    use crate::results::StepMetrics;
    for row in rows.iter_mut() {
        let is_metrics_file = row.output == StepMetrics::JSON || row.output == StepMetrics::CSV;
        if row.verdict != Verdict::Different || !is_metrics_file {
            continue;
        }
        let mut of_step = metrics.iter().filter(|m| m.step == row.step).peekable();
        if of_step.peek().is_some() && of_step.all(|m| m.verdict.agrees()) {
            row.verdict = Verdict::WithinTolerance;
        }
    }
}

/// The first line that differs between two small text files, shown old → new;
/// `None` for binary or large files.
pub fn first_differing_line(a: &Path, b: &Path) -> Option<String> {
    const LIMIT: u64 = 1024 * 1024;
    if std::fs::metadata(a).ok()?.len() > LIMIT || std::fs::metadata(b).ok()?.len() > LIMIT {
        return None;
    }
    let ta = String::from_utf8(std::fs::read(a).ok()?).ok()?;
    let tb = String::from_utf8(std::fs::read(b).ok()?).ok()?;
    let short = |l: Option<&str>| match l {
        None => "(end of file)".to_string(),
        Some(l) if l.chars().count() > 60 => {
            format!("{:?}…", l.chars().take(60).collect::<String>())
        }
        Some(l) => format!("{l:?}"),
    };
    let (mut la, mut lb) = (ta.lines(), tb.lines());
    for n in 1.. {
        let (x, y) = (la.next(), lb.next());
        if x.is_none() && y.is_none() {
            return Some("the lines are equal; they differ in line endings".to_string());
        }
        if x != y {
            return Some(format!(
                "first differing line {n}: {} → {}",
                short(x),
                short(y)
            ));
        }
    }
    None
}

/// What differs in the key material of one step, in the user's words.
fn key_differences(a: &LockedStep, b: &LockedStep) -> Vec<String> {
    let mut out = Vec::new();
    if a.kind != b.kind || a.schema_version != b.schema_version {
        out.push(format!(
            "kind {} v{} → {} v{}",
            a.kind, a.schema_version, b.kind, b.schema_version
        ));
    }
    if a.fields != b.fields {
        out.push("its fields".to_string());
    }
    if a.vars != b.vars {
        out.push("vars".to_string());
    }
    if a.env != b.env {
        out.push("env".to_string());
    }
    let labels: BTreeSet<&String> = a.inputs.keys().chain(b.inputs.keys()).collect();
    for l in labels {
        if a.inputs.get(l) != b.inputs.get(l) {
            out.push(format!("input `{l}`"));
        }
    }
    let tools: BTreeSet<&String> = a.tools.keys().chain(b.tools.keys()).collect();
    for t in tools {
        match (a.tools.get(t), b.tools.get(t)) {
            (Some(x), Some(y)) if x != y => out.push(format!("tool `{t}` ({x} → {y})")),
            (x, y) if x != y => out.push(format!("tool `{t}`")),
            _ => {}
        }
    }
    let ups: BTreeSet<&String> = a.upstream.keys().chain(b.upstream.keys()).collect();
    for u in ups {
        if a.upstream.get(u) != b.upstream.get(u) {
            out.push(format!("the output of upstream `{u}`"));
        }
    }
    if a.extra != b.extra {
        out.push("a secret or derived value (e.g. a password file)".to_string());
    }
    if out.is_empty() {
        out.push("qflow's key encoding".to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_machine_state_does_not_fail_but_images_results_and_logs_do() {
        let row = |role, verdict| Row {
            step: "s".into(),
            output: "o".into(),
            role,
            recorded: Some("a".into()),
            rebuilt: Some("b".into()),
            verdict,
        };
        use OutputRole::*;
        for role in [Image, Result, Artifact, Log] {
            assert!(row(role, Verdict::Different).fails(), "{role:?}");
        }
        assert!(!row(MachineState, Verdict::Different).fails());
        assert!(row(MachineState, Verdict::NotRebuilt).fails());
        assert_eq!(row(Log, Verdict::Different).result(), "DIFFERENT");
    }

    #[test]
    fn the_first_differing_line_of_two_tables_is_shown_old_to_new() {
        let dir = std::env::temp_dir().join(format!("qflow-verify-lines-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, "size,ns\n1,10\n2,20\n").unwrap();
        std::fs::write(&b, "size,ns\n1,10\n2,21\n").unwrap();
        assert_eq!(
            first_differing_line(&a, &b).unwrap(),
            "first differing line 3: \"2,20\" → \"2,21\""
        );
        std::fs::write(&b, "size,ns\r\n1,10\r\n2,20\r\n").unwrap();
        assert!(
            first_differing_line(&a, &b)
                .unwrap()
                .contains("line endings")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
