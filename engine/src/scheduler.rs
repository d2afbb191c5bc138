//! `qflow apply`: run the steps whose keys have no usable record, in parallel
//! within the CPU budget, and record each result only once it is complete.
//!
//! The main thread owns the schedule: when a step's upstream steps are done its
//! key can be computed (their output hashes are part of it); a key with a
//! record is `cached`, otherwise the step waits for CPU slots and runs on its
//! own thread. Steps are blocking work (make, QEMU), so they get threads, not
//! rayon tasks. Results come back over a channel. On Ctrl-C / SIGTERM / SIGHUP
//! every process group is killed, unfinished steps drop their temporary
//! output (nothing is recorded for them) and qflow exits 130; a second signal
//! exits at once. A step is marked started before it runs, so after a kill -9
//! of qflow the next apply sees no record and runs it again.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context as _, anyhow, bail};
use qflow_cache::{CacheProbe, Hash, LockWait, Record};
use serde::Serialize;

use crate::context::{ProcessGroups, ProgressSink, RunContext, StepLog};
use crate::lockfile::{LockFile, LockedStep};
use crate::out_links::OutLinks;
use crate::progress::Progress;
use crate::session::{Prepared, Session};
use crate::step::CheckContext;
use crate::step_key::KeyMaterial;

/// How to apply.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// CPU slots for all steps together (`--jobs`).
    pub jobs: usize,
    /// Let independent branches finish after a failure.
    pub keep_going: bool,
    /// Fail at once if another run holds the cache.
    pub no_wait: bool,
    /// Where `out/<step>` links go (default: beside the workflow).
    pub out_dir: Option<PathBuf>,
}

/// What happened to one step in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StepOutcome {
    Ran,
    Cached,
    Failed,
    Skipped,
    Interrupted,
    /// Only in the record of a run still in progress.
    Running,
    /// Only in the record of a run still in progress.
    Pending,
}

/// One step in the run record.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub name: String,
    pub outcome: StepOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
}

/// The run record (`<cache>/runs/<id>.json`).
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub id: String,
    pub workflow: String,
    pub started_unix: u64,
    pub duration_ms: u64,
    pub steps: Vec<StepReport>,
    pub interrupted: bool,
    /// False while the run is in progress (`qflow status` shows it live).
    pub finished: bool,
}

impl RunReport {
    pub fn count(&self, o: StepOutcome) -> usize {
        self.steps.iter().filter(|s| s.outcome == o).count()
    }
}

#[derive(Debug, Clone)]
enum State {
    Waiting,
    Ready {
        material: KeyMaterial,
        reasons: Vec<String>,
    },
    Running,
    Done,
    Failed,
    Skipped,
}

enum Msg {
    Finished {
        index: usize,
        result: Box<anyhow::Result<Record>>,
        material: KeyMaterial,
        duration_ms: u64,
    },
    Signal,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn run_id() -> String {
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

/// Apply the workflow of `session`.
pub fn apply(
    session: &mut Session,
    options: &ApplyOptions,
    progress: Arc<Progress>,
) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    let waited = std::cell::Cell::new(false);
    let wait_msg = || {
        waited.set(true);
        progress.event(&format!(
            "waiting for another qflow run that holds the cache at {} (pass --no-wait to fail instead)",
            session.cache.root().display()
        ))
    };
    let _lock = session.cache.lock(if options.no_wait {
        LockWait::NoWait
    } else {
        LockWait::Wait(&wait_msg)
    })?;
    if waited.get() {
        // The run we waited for may have rewritten the lock file and the cache.
        session.reload_lock();
        session.reload_interrupted();
    }
    session.stop_leftovers(&progress);
    crate::timings::mark("lock cache");
    let prepared = session.prepare()?;
    crate::timings::mark("digest inputs, identify tools");
    let workflow = session.workflow;
    let n = workflow.steps.len();
    let total_slots = options.jobs.max(1);
    let id = run_id();
    let logs_dir = session.cache.dir("logs").join(&id);
    let out_root = options
        .out_dir
        .clone()
        .unwrap_or_else(|| workflow.dir.join("out"));

    preflight(session, &prepared)?;
    // Under the workspace lock: record, tree and link checks through open handles.
    let probe = session
        .cache
        .probe()?
        .listing_trees(&session.cache, session.lock_index().steps.len());
    let out_links = OutLinks::open(&out_root, &session.cache.dir("trees"))?;
    crate::timings::mark("preflight");
    let mut in_place = lock_entries_in_place(session, &probe, &out_links);
    crate::timings::mark("check lock entries");

    let groups = ProcessGroups::new();
    let (tx, rx) = mpsc::channel::<Msg>();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .context("cannot install signal handlers")?;
    let signal_handle = signals.handle();
    {
        let groups = groups.clone();
        let tx = tx.clone();
        let progress = progress.clone();
        std::thread::spawn(move || {
            let mut count = 0;
            for _ in signals.forever() {
                count += 1;
                groups.cancel_all();
                if count == 1 {
                    progress.event(
                        "interrupted: stopping every step (press Ctrl-C again to exit at once)",
                    );
                    let _ = tx.send(Msg::Signal);
                } else {
                    std::process::exit(130);
                }
            }
        });
    }

    let mut states: Vec<State> = vec![State::Waiting; n];
    let started_unix = unix_now();
    let runs_dir = session.cache.dir("runs");
    let mut live_pending = false;
    let mut live_written = false;
    let mut reports: Vec<Option<StepReport>> = vec![None; n];
    let mut outputs: BTreeMap<String, Hash> = BTreeMap::new();
    let mut free = total_slots;
    let mut running = 0usize;
    let mut stop_new = false;
    let mut interrupted = false;
    // Lock entries this run changes; a no-op changes none and rewrites nothing.
    let mut lock_changes: BTreeMap<String, LockedStep> = BTreeMap::new();
    let order = session.dag.order();
    let registry = session.registry;
    let cache = &session.cache;
    let session_ref: &Session = session;

    let scheduled = std::thread::scope(|scope| -> anyhow::Result<()> {
        loop {
            // Resolve every waiting step whose upstream is settled.
            let mut changed = true;
            while changed {
                changed = false;
                for &i in &order {
                    if !matches!(states[i], State::Waiting) {
                        continue;
                    }
                    let ups = session_ref.dag.upstream(i);
                    if ups
                        .iter()
                        .any(|&u| matches!(states[u], State::Failed | State::Skipped))
                        || (stop_new
                            && !ups.is_empty()
                            && ups.iter().any(|&u| !matches!(states[u], State::Done)))
                    {
                        let bad: Vec<&str> = ups
                            .iter()
                            .filter(|&&u| matches!(states[u], State::Failed | State::Skipped))
                            .map(|&u| workflow.steps[u].name.as_str())
                            .collect();
                        if bad.is_empty() && !interrupted {
                            continue;
                        }
                        states[i] = State::Skipped;
                        let why = if interrupted {
                            "run interrupted".to_string()
                        } else {
                            format!("upstream `{}` failed", bad.join("`, `"))
                        };
                        progress.event(&format!("skipped {} ({why})", workflow.steps[i].name));
                        reports[i] = Some(report(
                            &workflow.steps[i].name,
                            StepOutcome::Skipped,
                            None,
                            0,
                            vec![why],
                            None,
                        ));
                        changed = true;
                        continue;
                    }
                    if !ups.iter().all(|&u| matches!(states[u], State::Done)) {
                        continue;
                    }
                    let s = &workflow.steps[i];
                    let up: BTreeMap<String, Hash> = s
                        .upstream_names()
                        .map(|u| (u.to_string(), outputs[u]))
                        .collect();
                    let material = session_ref
                        .material(&prepared, i, &up)
                        .map_err(|e| anyhow!("step `{}`: {e}", s.name))?;
                    let key = material.key();
                    // Its lock entry has this key, and its record, tree and link were
                    // just found in place; or its record and tree are there and only
                    // the link may need making. Either way the lock stays as it is.
                    let in_lock = match in_place[i]
                        .then(|| session_ref.locked_output(i, &key))
                        .flatten()
                    {
                        Some(output) => Some(output),
                        None => match session_ref.cached_from_lock(i, &key, &probe) {
                            Some(output) => {
                                out_links.present(&s.name, &output)?;
                                Some(output)
                            }
                            None => None,
                        },
                    };
                    if let Some(output) = in_lock {
                        outputs.insert(s.name.clone(), output);
                        progress.event_held(&format!("cached {}", s.name));
                        reports[i] = Some(report(
                            &s.name,
                            StepOutcome::Cached,
                            Some((&key, &output)),
                            0,
                            vec![],
                            None,
                        ));
                        states[i] = State::Done;
                        changed = true;
                    } else if s.cache
                        && let Some(rec) = session_ref.usable_record(&key)
                    {
                        out_links.present(&s.name, &rec.output)?;
                        outputs.insert(s.name.clone(), rec.output);
                        note_lock_change(
                            &mut lock_changes,
                            session_ref.lock(),
                            &s.name,
                            session_ref.locked_step(i, &material, &rec),
                        );
                        progress.event_held(&format!("cached {}", s.name));
                        reports[i] = Some(report(
                            &s.name,
                            StepOutcome::Cached,
                            Some((&key, &rec.output)),
                            0,
                            vec![],
                            None,
                        ));
                        states[i] = State::Done;
                        changed = true;
                    } else {
                        let reasons = session_ref.reasons(&prepared, i, &material);
                        states[i] = State::Ready { material, reasons };
                        changed = true;
                    }
                }
            }
            // `cached` lines wait here, so a no-op writes them all at once.
            progress.flush();
            // What was found in place before scheduling is not trusted once steps run:
            // a user may touch `out/` meanwhile. Later steps check for themselves.
            in_place.fill(false);
            // Start ready steps, in schedule order, while slots allow.
            if !stop_new {
                for &i in &order {
                    let State::Ready { .. } = &states[i] else {
                        continue;
                    };
                    let s = &workflow.steps[i];
                    let want = s
                        .jobs
                        .unwrap_or_else(|| s.step.default_jobs())
                        .clamp(1, total_slots);
                    if want > free {
                        // Backfill: narrower steps behind a wide one may use the free
                        // slots; the DAG is finite, so the wide step runs eventually.
                        continue;
                    }
                    let State::Ready { material, reasons } =
                        std::mem::replace(&mut states[i], State::Running)
                    else {
                        unreachable!()
                    };
                    free -= want;
                    running += 1;
                    progress.event(&format!("run {} ({})", s.name, reasons.join("; ")));
                    progress.start(&s.name);
                    reports[i] = Some(report(&s.name, StepOutcome::Ran, None, 0, reasons, None));
                    let tx = tx.clone();
                    let groups = groups.clone();
                    let upstream_dirs: BTreeMap<String, PathBuf> = s
                        .upstream_names()
                        .map(|u| (u.to_string(), cache.tree_path(&outputs[u])))
                        .collect();
                    let retains: Vec<Hash> = s.upstream_names().map(|u| outputs[u]).collect();
                    let log_path = logs_dir.join(format!("{}.log", s.name));
                    let progress_sink: Arc<dyn ProgressSink> = progress.clone();
                    let prepared_ref = &prepared;
                    scope.spawn(move || {
                        let t0 = Instant::now();
                        let result = run_step(
                            session_ref,
                            registry,
                            prepared_ref,
                            i,
                            &material,
                            want,
                            upstream_dirs,
                            retains,
                            &log_path,
                            progress_sink,
                            groups,
                        );
                        let _ = tx.send(Msg::Finished {
                            index: i,
                            result: Box::new(result),
                            material,
                            duration_ms: t0.elapsed().as_millis() as u64,
                        });
                    });
                }
            }
            if live_pending || (running > 0 && !live_written) {
                // The live record `qflow status` reads (no fsync: a report, not a result).
                let live = RunReport {
                    id: id.clone(),
                    workflow: workflow.path.display().to_string(),
                    started_unix,
                    duration_ms: started.elapsed().as_millis() as u64,
                    steps: workflow
                        .steps
                        .iter()
                        .enumerate()
                        .map(|(i, st)| match (&reports[i], &states[i]) {
                            (Some(r), State::Running) => StepReport {
                                outcome: StepOutcome::Running,
                                ..r.clone()
                            },
                            (Some(r), _) => r.clone(),
                            (None, _) => {
                                report(&st.name, StepOutcome::Pending, None, 0, vec![], None)
                            }
                        })
                        .collect(),
                    interrupted,
                    finished: false,
                };
                let _ = write_run_record(&runs_dir, &live);
                live_pending = false;
                live_written = true;
            }
            if running == 0 {
                break;
            }
            match rx.recv().expect("scheduler channel") {
                Msg::Signal => {
                    interrupted = true;
                    stop_new = true;
                }
                Msg::Finished {
                    index,
                    result,
                    material,
                    duration_ms,
                } => {
                    live_pending = true;
                    let s = &workflow.steps[index];
                    running -= 1;
                    free += s
                        .jobs
                        .unwrap_or_else(|| s.step.default_jobs())
                        .clamp(1, total_slots);
                    progress.finish(&s.name);
                    let rep = reports[index].as_mut().unwrap();
                    rep.duration_ms = duration_ms;
                    rep.log = Some(
                        logs_dir
                            .join(format!("{}.log", s.name))
                            .display()
                            .to_string(),
                    );
                    match *result {
                        Ok(rec) => {
                            out_links.present(&s.name, &rec.output)?;
                            outputs.insert(s.name.clone(), rec.output);
                            note_lock_change(
                                &mut lock_changes,
                                session_ref.lock(),
                                &s.name,
                                session_ref.locked_step(index, &material, &rec),
                            );
                            rep.key = Some(material.key().to_hex());
                            rep.output = Some(rec.output.to_hex());
                            progress.event(&format!(
                                "ok {} {:.1}s",
                                s.name,
                                duration_ms as f64 / 1000.0
                            ));
                            states[index] = State::Done;
                        }
                        Err(e) => {
                            states[index] = State::Failed;
                            if interrupted || groups.is_cancelled() {
                                rep.outcome = StepOutcome::Interrupted;
                                rep.error = Some("interrupted".into());
                                progress
                                    .event(&format!("interrupted {} (nothing recorded)", s.name));
                            } else {
                                rep.outcome = StepOutcome::Failed;
                                rep.error = Some(format!("{e:#}"));
                                let log = logs_dir.join(format!("{}.log", s.name));
                                let tail = StepLog::tail_of(&log, 20);
                                let mut msg = format!(
                                    "FAILED {} after {:.1}s: {e:#}",
                                    s.name,
                                    duration_ms as f64 / 1000.0
                                );
                                msg.push_str(&format!("\n  log: {}", log.display()));
                                if !tail.is_empty() {
                                    msg.push_str("\n  last lines of the log:");
                                    for l in tail {
                                        msg.push_str("\n    ");
                                        msg.push_str(&l);
                                    }
                                }
                                progress.event(&msg);
                                if !options.keep_going {
                                    stop_new = true;
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    });
    progress.flush();
    scheduled?;
    signal_handle.close();
    crate::timings::mark("schedule");
    // Steps never started: the run was interrupted, or stopped after a failure.
    let why = if interrupted {
        "run interrupted"
    } else {
        "not started after a failure"
    };
    for (i, s) in workflow.steps.iter().enumerate() {
        if reports[i].is_none() {
            reports[i] = Some(report(
                &s.name,
                StepOutcome::Skipped,
                None,
                0,
                vec![why.into()],
                None,
            ));
        }
    }
    session.save_caches()?;
    crate::timings::mark("save caches");
    let declared: HashSet<&str> = workflow.steps.iter().map(|s| s.name.as_str()).collect();
    // Decided on the lock's index: a no-op never parses the whole lock.
    let old = session.lock_index();
    let lock_stale = !lock_changes.is_empty()
        || old.version != crate::lockfile::LOCK_VERSION
        || old.workflow != workflow.name
        || old.steps.keys().any(|k| !declared.contains(k.as_str()))
        || !session.lock_path.exists();
    if lock_stale {
        let mut new_lock = session.lock().clone();
        new_lock.version = crate::lockfile::LOCK_VERSION;
        new_lock.workflow = workflow.name.clone();
        new_lock.steps.retain(|k, _| declared.contains(k.as_str()));
        new_lock.steps.extend(lock_changes);
        new_lock.write(&session.lock_path)?;
    }
    // Every lock entry's record and link are in place after a run in which
    // every step ran or was cached: note it for the next run.
    let all_done = !interrupted
        && reports.iter().all(|r| {
            r.as_ref()
                .is_some_and(|r| matches!(r.outcome, StepOutcome::Ran | StepOutcome::Cached))
        });
    let stamp = settled_stamp(session);
    let lock_now = if lock_stale {
        std::fs::read(&session.lock_path)
            .ok()
            .map(|b| Hash::of_bytes(&b))
    } else {
        session.lock_digest()
    };
    match lock_now {
        Some(lock) if all_done => {
            out_links.settle(&stamp, &lock, session.cache.records_generation())?
        }
        _ => OutLinks::unsettle(&stamp)?,
    }
    crate::timings::mark("write lock");
    let run = RunReport {
        id: id.clone(),
        workflow: workflow.path.display().to_string(),
        started_unix,
        duration_ms: started.elapsed().as_millis() as u64,
        steps: reports.into_iter().map(|r| r.unwrap()).collect(),
        interrupted,
        finished: true,
    };
    write_run_record(&session.cache.dir("runs"), &run)?;
    crate::timings::mark("write run record");
    progress.event(&format!(
        "{} ran, {} cached, {} failed, {} skipped in {:.2}s",
        run.count(StepOutcome::Ran),
        run.count(StepOutcome::Cached),
        run.count(StepOutcome::Failed),
        run.count(StepOutcome::Skipped) + run.count(StepOutcome::Interrupted),
        run.duration_ms as f64 / 1000.0
    ));
    Ok(run)
}

/// Write a run record (temp file and rename, no fsync: it is a report, not a result).
fn write_run_record(runs: &Path, run: &RunReport) -> anyhow::Result<()> {
    let tmp = runs.join(format!(".{}.tmp", run.id));
    std::fs::write(&tmp, serde_json::to_vec(run)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, runs.join(format!("{}.json", run.id)))?;
    Ok(())
}

/// Per step: whether its lock entry's record, output tree and `out/` link are all
/// in place. A no-op apply is mostly these checks (three syscalls a step), so they
/// run at once before scheduling, split across the cores; only the first pass of
/// the schedule (before any step runs, under the workspace lock) uses the answers.
fn lock_entries_in_place(session: &Session, probe: &CacheProbe, out: &OutLinks) -> Vec<bool> {
    let index = session.lock_index();
    let entries: Vec<Option<(&str, Hash, Hash)>> = session
        .workflow
        .steps
        .iter()
        .map(|s| {
            let (key, output) = index.steps.get(&s.name)?;
            Some((s.name.as_str(), key.parse().ok()?, output.parse().ok()?))
        })
        .collect();
    // A settled stamp vouches for every record and link of this lock.
    let settled = session.lock_digest().is_some_and(|lock| {
        out.settled(
            &settled_stamp(session),
            &lock,
            session.cache.records_generation(),
        )
    });
    let check = |e: &Option<(&str, Hash, Hash)>| {
        e.as_ref().is_some_and(|(step, key, output)| {
            probe.has_tree(output)
                && (settled || (probe.has_record(key) && out.is_present(step, output)))
        })
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    if threads < 2 || entries.len() < 64 {
        return entries.iter().map(check).collect();
    }
    let chunk = entries.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = entries
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(check).collect::<Vec<bool>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().expect("lock entry check"))
            .collect()
    })
}

/// Where the settled stamp of this workflow's `out/` links lives (see `out_links.rs`).
fn settled_stamp(session: &Session) -> PathBuf {
    let name = Hash::of_bytes(session.lock_path.as_os_str().as_encoded_bytes());
    session
        .cache
        .dir("state")
        .join("settled")
        .join(name.to_hex())
}

/// Keep `entry` as step `name`'s new lock entry unless the lock already has it.
fn note_lock_change(
    changes: &mut BTreeMap<String, LockedStep>,
    lock: &LockFile,
    name: &str,
    entry: LockedStep,
) {
    if lock.steps.get(name) != Some(&entry) {
        changes.insert(name.to_string(), entry);
    } else {
        changes.remove(name);
    }
}

fn report(
    name: &str,
    outcome: StepOutcome,
    kh: Option<(&Hash, &Hash)>,
    ms: u64,
    reasons: Vec<String>,
    error: Option<String>,
) -> StepReport {
    StepReport {
        name: name.to_string(),
        outcome,
        key: kh.map(|(k, _)| k.to_hex()),
        output: kh.map(|(_, o)| o.to_hex()),
        duration_ms: ms,
        reasons,
        error,
        log: None,
    }
}

/// Host checks for every step that may run: tools, secrets, requirements.
/// Failing here means nothing has run.
fn preflight(session: &Session, prepared: &Prepared) -> anyhow::Result<()> {
    let ctx = CheckContext {
        work_dir: session.workflow.dir.clone(),
    };
    let mut problems = Vec::new();
    for (i, s) in session.workflow.steps.iter().enumerate() {
        if let Err(e) = &prepared.tools[i] {
            problems.push(format!("step `{}` cannot run: {e}", s.name));
        }
        if let Err(e) = &prepared.extra[i] {
            problems.push(format!("step `{}` cannot run: {e}", s.name));
        }
        for r in s.step.requirements(&ctx) {
            if !r.present {
                problems.push(format!("step `{}` needs {}: {}", s.name, r.what, r.fix));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(anyhow::Error::new(crate::HostNotReady { problems }))
    }
}

#[allow(clippy::too_many_arguments)]
fn run_step(
    session: &Session,
    registry: &crate::step::Registry,
    prepared: &Prepared,
    i: usize,
    material: &KeyMaterial,
    jobs: usize,
    upstream_dirs: BTreeMap<String, PathBuf>,
    retains: Vec<Hash>,
    log_path: &Path,
    progress: Arc<dyn ProgressSink>,
    groups: ProcessGroups,
) -> anyhow::Result<Record> {
    let workflow = session.workflow;
    let decl = &workflow.steps[i];
    let cache = &session.cache;
    let key = material.key();
    let kind = registry
        .get(&decl.kind)
        .ok_or_else(|| anyhow!("unknown kind `{}`", decl.kind))?;
    let fields = decl.resolved_fields(&upstream_dirs)?;
    let step = kind.parse(&fields).map_err(|e| anyhow!("{e}"))?;
    let tmp = cache.new_tree()?;
    let state_dir = cache.dir("state").join(&workflow.name).join(&decl.name);
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    let log = StepLog::create(log_path)?;
    let token = crate::leftovers::token_for(&key);
    cache.mark_started(&key, &crate::leftovers::mark_note(&decl.name, &token))?;
    let t0 = Instant::now();
    let mut ctx = RunContext::new(
        &decl.name,
        tmp.path().to_path_buf(),
        workflow.dir.clone(),
        state_dir,
        jobs,
        upstream_dirs,
        decl.env.clone(),
        log.clone(),
        progress,
        groups,
        step.uses_jobserver(),
    )?
    .with_run_token(token);
    step.run(&mut ctx)?;
    for out in step.outputs() {
        let p = tmp.path().join(&out);
        if std::fs::symlink_metadata(&p).is_err() {
            bail!(
                "the step succeeded but did not create its declared output `{out}` (in $QFLOW_OUT)"
            );
        }
    }
    // An input edited while the step ran makes its result untrustworthy.
    let inputs = decl.step.inputs();
    if !inputs.is_empty() {
        // The session's stat cache: files unchanged since the digest are only stat'ed.
        let mut stat = session.stat_cache.lock().unwrap();
        let now = crate::inputs::digest_all(
            &workflow.dir,
            &mut stat,
            Some(&cache.dir("tree-index")),
            &[inputs],
        )?;
        drop(stat);
        for (before, after) in prepared.inputs[i].iter().zip(&now[0]) {
            if before.digest != after.digest {
                bail!(
                    "input `{}` changed while the step ran; its result is not recorded: apply again",
                    before.label
                );
            }
        }
    }
    let manifest = cache.commit_tree(tmp)?;
    let mut meta = BTreeMap::new();
    meta.insert(
        "step".to_string(),
        serde_json::Value::String(decl.name.clone()),
    );
    meta.insert(
        "kind".to_string(),
        serde_json::Value::String(decl.kind.clone()),
    );
    meta.insert("notes".to_string(), serde_json::to_value(ctx.notes())?);
    let rec = Record {
        key,
        output: manifest.hash,
        manifest,
        retains,
        created_unix: unix_now(),
        duration_ms: t0.elapsed().as_millis() as u64,
        meta,
    };
    cache.put_record(&key, &rec)?;
    cache.clear_started(&key)?;
    Ok(rec)
}
