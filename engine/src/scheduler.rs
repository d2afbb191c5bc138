//! `qflow apply`: take the cache lock, digest inputs, check the host, run the
//! steps whose keys have no usable result (`run.rs`, on the in-process
//! executor), then write the lock, the settled stamp and the run record.
//!
//! On Ctrl-C / SIGTERM / SIGHUP the run loop cancels every running step,
//! unfinished steps drop their temporary output (nothing is recorded for
//! them) and qflow exits 130; a second signal exits at once. Imports `run`,
//! `executor`, `session`, `out_links`, `lockfile`, `run_record`, `progress`,
//! `context`, `step` and `timings`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::Context as _;
use qflow_cache::remote::{RemoteCache, UploadOutcome};
use qflow_cache::{Cache, CacheProbe, Hash, LockWait};

use crate::context::ProgressSink;
use crate::executor::Wake;
use crate::executor::local::LocalExecutor;
use crate::executor::routed::Routed;
use crate::executor::slurm::SlurmExecutor;
use crate::lockfile::{LockChanges, LockText, is_changed};
use crate::out_links::OutLinks;
use crate::progress::Progress;
use crate::run::{Event, Finished, Run, RunParts};
pub use crate::run_record::{RunReport, StepOutcome, StepReport};
use crate::session::{Prepared, Session};
use crate::stat_cache::BuildPathHasher;
use crate::step::CheckContext;

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
    /// `--executor`: where steps without their own `executor:` run.
    pub executor: Option<crate::slurm::placement::ExecutorChoice>,
    /// Submit Slurm jobs with sbatch, so they outlive this process (`--detach`).
    pub slurm_batch: bool,
    /// A remote cache asked after the local one (and written when it uploads).
    pub remote: Option<Arc<RemoteCache>>,
}

/// Apply the workflow of `session`.
pub fn apply(
    session: &mut Session,
    options: &ApplyOptions,
    progress: Arc<Progress>,
) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    // Before waiting for the lock: a signal until the steps start exits 130 at once.
    let (tx, rx) = mpsc::channel::<Event>();
    let running = Arc::new(AtomicBool::new(false));
    let signals = watch_signals(tx.clone(), running.clone())?;
    let _lock = lock_cache(session, options, &progress)?;
    session.stop_leftovers(&progress);
    crate::timings::mark("lock cache");
    let prepared = session.prepare_keys();
    crate::timings::mark("identify tools");
    // Inputs are hashed on a thread while the steps that have theirs run
    // (`input_digests.rs`); whether each exists was checked when loading.
    let stop = AtomicBool::new(false);
    let steps = std::thread::scope(|hashing| {
        let shared: &Session = session;
        let has_inputs: Vec<bool> = (0..prepared.inputs.len())
            .map(|i| !prepared.inputs.is_known(i))
            .collect();
        let expected: Vec<u64> = (shared.workflow.steps.iter())
            .map(|s| s.step.expected_ms())
            .collect();
        let order = crate::input_digests::hashing_order(&shared.dag, &expected, &has_inputs);
        let (inputs, stop, woken) = (&prepared.inputs, &stop, tx.clone());
        hashing.spawn(move || {
            let began = Instant::now();
            crate::input_digests::hash_in_order(
                &order,
                inputs,
                crate::input_digests::AHEAD,
                stop,
                |ids| shared.digest_inputs(ids, stop),
                || {
                    let _ = woken.send(Event::Wake);
                },
            );
            crate::timings::took("digest inputs (beside the run)", began.elapsed());
            // A cache: a failed save leaves every entry in memory, saved again at the end.
            let _ = shared.trim_stat_cache();
            crate::timings::mark("trim stat cache");
        });
        let steps = run_steps(
            shared, &prepared, options, &progress, tx, &rx, &running, started,
        );
        stop.store(true, Ordering::SeqCst);
        steps
    });
    signals.close();
    // Each step's tools and digests: their room goes to writing the lock.
    drop(prepared);
    let (finished, out_links) = steps?;
    let concluded = conclude(session, finished, &out_links, &progress, started);
    // Still under the lock: this run's started marks of steps that ended go with
    // their journal. After the lock is written, so that the lock's changes are gone
    // by then; a compaction that fails leaves the journals for the next run.
    // The run's memory is free by now; given back first, the compaction's table
    // (3.7 MB at 50,000 steps) does not add to the peak.
    crate::run::give_back_free_memory();
    let _ = session.cache.compact_started();
    concluded
}

/// The run itself: host checks, the lock entries in place, then the run loop until
/// no step is active; its result and the `out/` links.
#[allow(clippy::too_many_arguments)]
fn run_steps(
    session: &Session,
    prepared: &Prepared,
    options: &ApplyOptions,
    progress: &Arc<Progress>,
    tx: mpsc::Sender<Event>,
    rx: &mpsc::Receiver<Event>,
    running: &AtomicBool,
    started: Instant,
) -> anyhow::Result<(Finished, OutLinks)> {
    let out_root = (options.out_dir.clone()).unwrap_or_else(|| session.workflow.dir.join("out"));
    preflight(session, prepared)?;
    // Under the workspace lock: record, tree and link checks through open handles.
    let probe = session
        .cache
        .probe()?
        .listing_trees(&session.cache, session.lock_index().steps.len());
    let out_links = OutLinks::open(&out_root, &session.cache.dir("trees"))?;
    crate::timings::mark("preflight");
    let in_place = lock_entries_in_place(session, &probe, &out_links);
    crate::run::give_back_free_memory();
    crate::timings::mark("check lock entries");
    let slurm = crate::slurm::setup::prepare(
        session,
        prepared,
        options.executor,
        options.slurm_batch,
        &in_place,
        progress,
    )?;
    // Cluster jobs hold no CPU slot of this host: the queue limits them.
    let slots = options.jobs
        + slurm.as_ref().map_or(0, |(_, names)| {
            (session.workflow.steps.iter())
                .filter(|s| names.contains(&s.name))
                .map(|s| s.jobs().unwrap_or_else(|| s.step.default_jobs()))
                .sum()
        });
    running.store(true, Ordering::SeqCst);
    let remote = options.remote.clone();
    let (uploads, uploader) = match remote.as_ref().filter(|r| r.uploads()) {
        Some(r) => {
            let (up_tx, up_rx) = mpsc::channel::<Hash>();
            let thread = spawn_uploader(r.clone(), session.cache.clone(), up_rx, progress.clone());
            (Some(up_tx), Some(thread))
        }
        None => (None, None),
    };
    let parts = RunParts {
        session,
        prepared,
        probe: &probe,
        out_links: &out_links,
        in_place,
        progress: progress.clone(),
        events: tx.clone(),
        started,
        remote: remote.as_deref(),
        uploads,
    };
    // Slurm steps take their CPUs from the cluster, not from `--jobs`.
    let on_cluster = |name: &String| slurm.as_ref().is_some_and(|(_, n)| n.contains(name));
    for s in (session.workflow.steps.iter()).filter(|s| !on_cluster(&s.name)) {
        if let Some(want) = s.jobs().filter(|&j| j > options.jobs) {
            progress.event(&format!(
                "warning: step `{}` asks for {want} job slots (`jobs: {want}`) but this apply has {} (`--jobs`): it runs with {}",
                s.name, options.jobs, options.jobs
            ));
        }
    }
    let id = crate::run_record::run_id();
    let mut run = Run::new(parts, slots, options.keep_going, id);
    crate::timings::mark("new run");
    let local: Vec<bool> = (session.workflow.steps.iter())
        .map(|s| !on_cluster(&s.name))
        .collect();
    let token_tx = tx.clone();
    run.share_slots(local, options.jobs, move || {
        let _ = token_tx.send(Event::Wake);
    })?;
    let registry = session.registry;
    let scheduled = std::thread::scope(|scope| {
        let sink: Arc<dyn ProgressSink> = progress.clone();
        let wake = Wake::new(move || {
            let _ = tx.send(Event::Wake);
        });
        let local = LocalExecutor::new(scope, registry, sink, wake);
        match slurm {
            None => {
                let mut executor = local;
                crate::run::drive(&mut run, &mut executor, rx, scope)
            }
            Some((setup, names)) => {
                let remote = SlurmExecutor::new(setup, progress.clone())?;
                let mut executor = Routed::new(local, remote, names);
                crate::run::drive(&mut run, &mut executor, rx, scope)
            }
        }
    });
    progress.flush();
    scheduled?;
    crate::timings::mark("schedule");
    let mut finished = run.finish();
    // The run's sender is gone with it: the uploader ends after the last queued result.
    if let Some(thread) = uploader {
        let _ = thread.join();
    }
    finished.set_remote(remote.as_ref().map(|r| r.stats()));
    Ok((finished, out_links))
}

/// A thread that uploads the results whose keys arrive on `keys` (content first, the
/// action entry last; see the remote cache), until the run drops its sender. It hands them
/// to as many workers as the remote cache runs transfers, so a push of many small cached
/// results is not one round trip after another. Runs while the workspace lock is held, so
/// `qflow gc` cannot remove what it reads.
fn spawn_uploader(
    remote: Arc<RemoteCache>,
    cache: Cache,
    keys: mpsc::Receiver<Hash>,
    progress: Arc<Progress>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::sync::atomic::{AtomicU64, Ordering};
        let keys = std::sync::Mutex::new(keys);
        let (steps, bytes) = (AtomicU64::new(0), AtomicU64::new(0));
        std::thread::scope(|s| {
            for _ in 0..remote.transfers() {
                s.spawn(|| {
                    loop {
                        let next = keys.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok(key) = next else { break };
                        let Ok(Some(record)) = cache.get_record(&key) else {
                            continue;
                        };
                        if let UploadOutcome::Uploaded { bytes: b, .. } =
                            remote.upload(&record, &cache)
                        {
                            steps.fetch_add(1, Ordering::Relaxed);
                            bytes.fetch_add(b, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let (steps, bytes) = (steps.into_inner(), bytes.into_inner());
        if steps > 0 {
            progress.event(&format!(
                "uploaded {steps} results ({:.1} MB) to the remote cache {}",
                bytes as f64 / 1e6,
                remote.shown_url()
            ));
        }
    })
}

/// Take the cache's workspace lock, saying so while waiting for another run.
fn lock_cache(
    session: &mut Session,
    options: &ApplyOptions,
    progress: &Progress,
) -> anyhow::Result<qflow_cache::WorkspaceLock> {
    let waited = std::cell::Cell::new(false);
    let wait_msg = || {
        waited.set(true);
        progress.event(&format!(
            "waiting for another qflow run that holds the cache at {} (pass --no-wait to fail instead)",
            session.cache.root().display()
        ))
    };
    let lock = session
        .cache
        .lock(if options.no_wait {
            LockWait::NoWait
        } else {
            LockWait::Wait(&wait_msg)
        })
        .map_err(|e| {
            // `--no-wait` on a busy cache: a refused request, nothing ran (exit 2).
            if options.no_wait && e.to_string().contains("holds the cache lock") {
                anyhow::Error::new(crate::Refusal(format!(
                    "{e} (or without `--no-wait`, which waits for it)"
                )))
            } else {
                e
            }
        })?;
    if waited.get() {
        // The run we waited for may have rewritten the lock file and the cache.
        session.reload_lock();
        session.reload_interrupted();
    }
    Ok(lock)
}

/// Send [`Event::Signal`] on the first SIGINT, SIGTERM or SIGHUP once `running`
/// (steps may be running); exit 130 on the second, or on the first before then
/// (waiting for the workspace lock, digesting inputs: nothing to stop).
fn watch_signals(
    tx: mpsc::Sender<Event>,
    running: Arc<AtomicBool>,
) -> anyhow::Result<signal_hook::iterator::Handle> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .context("cannot install signal handlers")?;
    let handle = signals.handle();
    std::thread::spawn(move || {
        for (count, _) in signals.forever().enumerate() {
            if count == 0 && running.load(Ordering::SeqCst) {
                let _ = tx.send(Event::Signal);
            } else {
                // No step's program outlives qflow (they have no death signal).
                crate::process::kill_every_step();
                crate::progress::clear_terminal();
                std::process::exit(130);
            }
        }
    });
    Ok(handle)
}

/// Write the lock if the run changed it, the settled stamp, and the final run record.
fn conclude(
    session: &mut Session,
    finished: Finished,
    out_links: &OutLinks,
    progress: &Progress,
    started: Instant,
) -> anyhow::Result<RunReport> {
    let mut finished = finished;
    session.save_caches_and_forget()?;
    crate::timings::mark("save caches");
    let lock_changes = std::mem::take(&mut finished.lock_changes);
    crate::timings::mark("take lock changes");
    let LockWrite {
        stale: lock_stale,
        digest: written,
        committing,
    } = write_lock(session, lock_changes)?;
    // Every lock entry's record and link are in place after a run in which
    // every step ran or was cached: note it for the next run.
    // (Not after a run of some targets only: the others were not looked at.)
    let all_done =
        !finished.interrupted() && !session.workflow.selection.is_partial() && finished.all_done();
    let stamp = session.settled_stamp();
    let lock_now = if written.is_some() {
        written
    } else if lock_stale {
        std::fs::read(&session.lock_path)
            .ok()
            .map(|b| Hash::of_bytes(&b))
    } else {
        session.lock_digest()
    };
    // The stamp names the lock by its digest: written before the new lock is in
    // place, it vouches for nothing if that lock never lands.
    match lock_now {
        Some(lock) if all_done => {
            out_links.settle(&stamp, &lock, session.cache.records_generation())?
        }
        _ => OutLinks::unsettle(&stamp)?,
    }
    crate::timings::mark("write lock");
    let runs = session.cache.dir("runs");
    let took = started.elapsed().as_millis() as u64;
    finished.write(session.workflow, &runs, took)?;
    crate::run_record::prune(
        &runs,
        &session.cache.dir("logs"),
        crate::run_record::KEPT_RUNS,
        crate::run_record::kept_bytes(session.workflow.steps.len()),
    );
    crate::run_record::start_removing_pruned_logs(&session.cache.dir("logs"));
    crate::timings::mark("write run record");
    crate::run::give_back_free_memory();
    let report = finished.ended(session.workflow).report;
    committing.finish()?;
    crate::timings::mark("lock in place");
    progress.run_finished(&report);
    let unmet: Vec<&String> = report.steps.iter().flat_map(|s| &s.unmet).collect();
    if !unmet.is_empty() {
        let mut msg = format!(
            "apply failed: {} metric value{} outside {} expectation (recorded: `qflow results` shows them):",
            unmet.len(),
            if unmet.len() == 1 { " is" } else { "s are" },
            if unmet.len() == 1 { "its" } else { "their" },
        );
        for u in unmet {
            msg.push_str("\n  ");
            msg.push_str(u);
        }
        progress.event(&msg);
    }
    Ok(report)
}

/// What [`write_lock`] did.
struct LockWrite {
    /// The lock was rewritten (or is being).
    stale: bool,
    /// The blake3 of the new lock, when known without reading it back.
    digest: Option<Hash>,
    /// The new lock being made durable and put in place.
    committing: Committing,
}

/// A lock written in full being fsynced and renamed into place on its own thread:
/// the fsync of megabytes is most of a one-step run's end, and the index memo,
/// the settled stamp and the run record, none of which vouch for a lock not in
/// place, are written meanwhile. Joined by [`Committing::finish`], or when
/// dropped on an error path, so no run ends with its lock half done.
struct Committing(Option<std::thread::JoinHandle<anyhow::Result<()>>>);

impl Committing {
    fn none() -> Committing {
        Committing(None)
    }

    fn start(staged: qflow_cache::Staged) -> anyhow::Result<Committing> {
        let handle = std::thread::Builder::new()
            .name("lock commit".into())
            .spawn(move || staged.commit())
            .context("cannot start a thread to write the lock file")?;
        Ok(Committing(Some(handle)))
    }

    fn finish(mut self) -> anyhow::Result<()> {
        match self.0.take() {
            Some(handle) => handle
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("writing the lock file panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for Committing {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            let _ = handle.join();
        }
    }
}

/// Write the lock file if this run changed it: whether it did, and the blake3 of
/// what it wrote when that is known without reading it back.
fn write_lock(session: &Session, changes: LockChanges) -> anyhow::Result<LockWrite> {
    let workflow = session.workflow;
    let changes = changes.sorted(|i| &workflow.steps[i].name);
    // Steps the targets left out keep their entries.
    // FNV, not SipHash: built and asked once a step even in a no-op (SipHash
    // was 2 ms of a one-step apply at 10,000 steps), over names the user wrote.
    let declared: HashSet<&str, BuildPathHasher> = (workflow.steps.iter())
        .map(|s| s.name.as_str())
        .chain(workflow.selection.left_out.iter().map(String::as_str))
        .collect();
    // Decided on the lock's index: a no-op never parses the whole lock.
    let old = session.lock_index();
    // Asked once: most often every entry is of a declared step, and then the
    // splice and the index below need not ask of each (at 10,000 steps each
    // pass was 1.5 ms, most of it the cache misses of reaching the names).
    let undeclared = old.steps.iter().any(|(k, _)| !declared.contains(k));
    let stale = !changes.is_empty()
        || old.version != crate::lockfile::LOCK_VERSION
        || old.workflow != workflow.name
        || undeclared
        || !session.lock_path.exists();
    if stale {
        // A few changed entries of a large lock: spliced into its bytes (`lockfile.rs`).
        let keep = |k: &str| !undeclared || declared.contains(k);
        // No old entry to keep (a first apply): the changes alone, spliced the same way.
        let empty = LockText::empty();
        let text = session
            .lock_text()
            .or(old.steps.is_empty().then_some(&empty));
        if let Some(text) = text
            && text.splice_has_steps(keep, &changes)
        {
            // Streamed to the file and hashed on the way: the new lock is not held whole.
            let mut hasher = blake3::Hasher::new();
            let staged = qflow_cache::Staged::write_with(&session.lock_path, |out| {
                let mut out = HashingWriter {
                    out,
                    hasher: &mut hasher,
                };
                let version = crate::lockfile::LOCK_VERSION;
                text.splice_into(version, &workflow.name, keep, &changes, &mut out)
            })?;
            let digest = Hash::from(hasher.finalize());
            let committing = Committing::start(staged)?;
            crate::timings::mark("write lock text");
            // The new lock's index: the old one's kept steps and the changes.
            let kept = (old.steps.iter())
                .filter(|(k, _)| keep(k) && !is_changed(&changes, k))
                .map(|(n, ids)| (n, *ids));
            let changed = (changes.iter())
                .map(|(n, e)| Ok((*n, crate::lockfile::locked_ids(&e.key()?, &e.output()?))));
            session.remember_lock_index(
                digest,
                crate::lockfile::LOCK_VERSION,
                &workflow.name,
                kept.map(Ok).chain(changed),
            )?;
            crate::timings::mark("write lock index memo");
            return Ok(LockWrite {
                stale: true,
                digest: Some(digest),
                committing,
            });
        }
        let mut new_lock = session.lock().clone();
        new_lock.version = crate::lockfile::LOCK_VERSION;
        new_lock.workflow = workflow.name.clone();
        new_lock.steps.retain(|k, _| declared.contains(k.as_str()));
        for (name, entry) in changes {
            new_lock.steps.insert(name.to_string(), entry.parsed()?);
        }
        new_lock.write(&session.lock_path)?;
    }
    Ok(LockWrite {
        stale,
        digest: None,
        committing: Committing::none(),
    })
}

/// Writes through to `out` and hashes what it writes.
struct HashingWriter<'a> {
    out: &'a mut dyn std::io::Write,
    hasher: &'a mut blake3::Hasher,
}

impl std::io::Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Per step: whether its lock entry's record, output tree and `out/` link are all
/// in place. A no-op apply is mostly these checks (three syscalls a step), so they
/// run at once before scheduling, split across the cores; only the first pass of
/// the schedule (before any step runs, under the workspace lock) uses the answers.
fn lock_entries_in_place(session: &Session, probe: &CacheProbe, out: &OutLinks) -> Vec<bool> {
    let index = session.lock_index();
    let steps = &session.workflow.steps;
    // Looked up where needed, not gathered: a list of 10,000 entries was 0.9 MB
    // at the run's peak.
    let entry = |i: usize| *index.steps.get(&steps[i].name)?;
    // A settled stamp vouches for every record and link of this lock.
    let settled = session.lock_digest().is_some_and(|lock| {
        out.settled(
            &session.settled_stamp(),
            &lock,
            session.cache.records_generation(),
        )
    });
    // Each distinct output tree is checked once (steps may share one); those
    // whole are kept, sorted.
    let mut trees: Vec<Hash> = (0..steps.len()).filter_map(|i| Some(entry(i)?.1)).collect();
    trees.sort_unstable();
    trees.dedup();
    let ok = in_parallel(&trees, |t| {
        probe.has_tree(t) && session.cache.tree_unchanged(t)
    });
    let mut ok = ok.into_iter();
    trees.retain(|_| ok.next().unwrap_or(false));
    let whole = trees;
    let check = |&i: &usize| {
        entry(i).is_some_and(|(key, output)| {
            whole.binary_search(&output).is_ok()
                && (settled
                    || (session.cache.record_names(&key, &output)
                        && out.is_present(&steps[i].name, &output)))
        })
    };
    let all: Vec<usize> = (0..steps.len()).collect();
    if settled {
        return all.iter().map(check).collect();
    }
    in_parallel(&all, check)
}

/// `check` of every item, split across the cores when there are many.
fn in_parallel<T: Sync>(items: &[T], check: impl Fn(&T) -> bool + Sync) -> Vec<bool> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    if threads < 2 || items.len() < 64 {
        return items.iter().map(&check).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let check = &check;
    std::thread::scope(|scope| {
        let parts: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(check).collect::<Vec<bool>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().expect("lock entry check"))
            .collect()
    })
}

/// Host checks for every step that may run: tools, secrets, requirements.
/// Failing here means nothing has run.
fn preflight(session: &Session, prepared: &Prepared) -> anyhow::Result<()> {
    let ctx = CheckContext {
        work_dir: session.workflow.dir.clone(),
    };
    let mut problems = Vec::new();
    for (i, s) in session.workflow.steps.iter().enumerate() {
        if let Err(e) = prepared.tools.get(i) {
            problems.push(format!("step `{}` cannot run: {e}", s.name));
        }
        if let Err(e) = prepared.extra.get(i) {
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
