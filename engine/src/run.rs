//! One `qflow apply` in progress: the run loop (n2's `Work`).
//!
//! [`Run`] owns the step states ([`Schedule`]), each step's output, the run
//! record and the lock entries the run changes, and has one small method per
//! event: [`Run::settle`] looks at waiting steps whose upstream changed (its
//! key is computed and `Run::lookup` answers "is there a usable result for
//! it"; if so the step is `cached`, else ready), [`Run::start_ready`] hands
//! ready steps that fit in the free slots to the executor, `on_executed` and
//! `on_recorded` handle a finished step, [`Run::write_live`] keeps the live
//! run record, [`Run::finish`] concludes. [`drive`] is the loop that waits for
//! events (a job done, a record written, a signal) and calls them.
//!
//! A step is marked started before it is handed to the executor, so after a
//! kill -9 of qflow the next apply sees no record and runs it again. Its
//! result is recorded (`recorder.rs`, on a thread of the run) only once the
//! executor reports its output complete; until then it holds its slots.
//! A step recorded with metrics outside their `expect:` (ran or cached) is
//! done all the same, so its outputs are kept and `qflow results` shows them;
//! the run record notes each value and the apply fails at the end.
//! Imports `schedule`, `dag`, `executor`, `recorder`, `run_record`, `session`,
//! `step_key`, `out_links`, `lockfile`, `leftovers`, `progress`, `context` and
//! `results`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::thread::Scope;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use qflow_cache::remote::{RemoteCache, RemoteRecord};
use qflow_cache::{CacheProbe, Hash, Record, TempTree};

use crate::dag::StepId;
use crate::executor::{Executor, JobId, JobResult, StepJob};
use crate::failure_report;
use crate::job_slots::JobSlots;
use crate::lock_spill::Spill;
use crate::lockfile::{EntryView, LockChanges, NewEntry};
use crate::out_links::OutLinks;
use crate::progress::Progress;
use crate::recorder::Recording;
use crate::run_record::{Reason, RunReport, StepOutcome, StepReport};
use crate::schedule::{Schedule, StepState, Triage};
use crate::session::{Prepared, Session};
use crate::step_key::KeyMaterial;
use crate::workflow::Workflow;
use ledger::Ledger;

/// The live run record is written at most this often (and at the end).
const LIVE_RECORD_EVERY: Duration = Duration::from_millis(250);

/// ... and at most this share of the run's time goes to writing it: a record of
/// 50,000 steps is megabytes of JSON, and rewriting it every 250 ms would make a
/// run's cost grow with the square of its steps.
const LIVE_RECORD_SHARE: u32 = 20;

/// What wakes the run loop.
pub enum Event {
    /// The executor may have finished jobs.
    Wake,
    /// SIGINT, SIGTERM or SIGHUP.
    Signal,
    /// A finished step was checked and recorded, or could not be.
    Recorded {
        /// The step's job.
        job: JobId,
        /// Its record.
        result: anyhow::Result<Record>,
    },
}

/// What a run works with, all opened before it starts.
pub struct RunParts<'a> {
    /// The workflow with its cache and last lock.
    pub session: &'a Session<'a>,
    /// Input digests, tool identities, extra key material.
    pub prepared: &'a Prepared,
    /// The cache, asked through open handles.
    pub probe: &'a CacheProbe,
    /// The `out/` links.
    pub out_links: &'a OutLinks,
    /// Per step: its lock entry's record, tree and link were found in place.
    pub in_place: Vec<bool>,
    /// Where step events go.
    pub progress: Arc<Progress>,
    /// Where `Recorded` events go.
    pub events: Sender<Event>,
    /// When the apply started (the run's duration counts from here).
    pub started: Instant,
    /// A remote cache, asked after the local one.
    pub remote: Option<&'a RemoteCache>,
    /// Where the keys of results to upload go (with `--remote-cache-upload`): every
    /// step done in this run, ran or cached, whose `remote_cache` allows it.
    pub uploads: Option<Sender<Hash>>,
}

/// A usable result for a step's key, and how much of it is already in place.
enum Hit {
    /// Its lock entry has this key and its record, tree and link were in place.
    InPlace(Hash),
    /// Its lock entry has this key and its record and tree are there; the link
    /// may need making.
    Locked(Hash),
    /// A record in the cache: the link and the lock entry may need making.
    Record(Record),
    /// A record fetched from the remote cache just now (then as `Record`).
    Remote(Record),
    /// A remote hit whose bytes stay on the server for now (see `remote_use.rs`): its
    /// entry, kept in the local cache. Fetched when a step that runs needs it.
    Left(RemoteRecord),
}

/// A step handed to the executor, or being recorded.
struct Active {
    step: StepId,
    key: Hash,
    /// Taken when the executor reports it done.
    staging: Option<TempTree>,
    retains: Vec<Hash>,
    /// Its inputs' stat fields when it was handed over (see `input_stamp.rs`).
    input_stamps: Vec<Hash>,
    submitted: Instant,
}

/// One apply in progress.
pub struct Run<'a> {
    parts: RunParts<'a>,
    keep_going: bool,
    schedule: Schedule<'a>,
    active: BTreeMap<JobId, Active>,
    /// Jobs the executor still runs (the others are being recorded).
    executing: Vec<JobId>,
    /// The run record's own fields; its steps are in `ledger`.
    report: RunReport,
    /// Each step's entry in the run record, compact (`run/ledger.rs`).
    ledger: Ledger,
    /// Lock entries this run changes; a no-op changes none and rewrites nothing.
    lock_changes: LockChanges,
    /// Where the changed entries' text waits for the lock to be written: made at
    /// the first change (`None` in it when it could not be, and they are held).
    spill: Option<Option<Arc<Spill>>>,
    logs_dir: PathBuf,
    runs_dir: PathBuf,
    started: Instant,
    live_dirty: bool,
    /// When the live record was last written, and how long that took.
    live_written: Option<(Instant, Duration)>,
    /// Per step: `--force` runs it whatever its record says.
    forced: Vec<bool>,
    /// Per step: whether the remote cache is asked for it, and whether it is uploaded.
    remote_reads: Vec<bool>,
    remote_writes: Vec<bool>,
    /// Per step: whether a remote hit for it is downloaded at once (else left on the
    /// server until a step that runs needs it).
    remote_downloads: Vec<bool>,
    /// Done steps whose output is on the server only.
    left: HashMap<StepId, RemoteRecord>,
    /// What the remote cache answered for steps of the current settle round and the
    /// steps below them, under the key it was asked for.
    prefetched: HashMap<StepId, (Hash, Option<Hit>)>,
    /// Whether the schedule got each step's expected duration yet.
    weighed: bool,
    /// The run's slots as a jobserver, when a step's make shares them (`job_slots.rs`).
    job_slots: Option<JobSlots>,
    /// This host's slots (`--jobs`): the jobserver's tokens.
    local_slots: usize,
    /// Per step: it runs on this host, so it takes tokens to start.
    takes_tokens: Vec<bool>,
    /// Per step: its make shares the run's slots.
    sharing: Vec<bool>,
    /// Sharing steps now running.
    sharing_running: usize,
    /// Steps whose upstream is done that wait for their inputs to be hashed
    /// (`input_digests.rs`).
    awaiting_inputs: BTreeSet<StepId>,
}

/// A run that has ended: its record (not yet written), each step's entry still
/// compact, and the lock entries it changed.
pub struct Finished {
    /// The run record's own fields (`finished: true`); its steps are in `ledger`.
    report: RunReport,
    ledger: Ledger,
    /// New lock entries by step.
    pub lock_changes: LockChanges,
}

impl Finished {
    /// Whether a signal stopped the run.
    pub fn interrupted(&self) -> bool {
        self.report.interrupted
    }

    /// Note what the run did with a remote cache.
    pub fn set_remote(&mut self, stats: Option<qflow_cache::remote::RemoteStats>) {
        self.report.remote = stats;
    }

    /// Whether every step ran or was cached.
    pub fn all_done(&self) -> bool {
        (0..self.ledger.len()).all(|i| {
            matches!(
                self.ledger.outcome(i),
                StepOutcome::Ran | StepOutcome::Cached
            )
        })
    }

    /// Write the run record of `workflow` into `runs` after `duration_ms`, each
    /// step as it comes.
    pub fn write(
        &mut self,
        workflow: &Workflow,
        runs: &std::path::Path,
        duration_ms: u64,
    ) -> anyhow::Result<()> {
        self.report.duration_ms = duration_ms;
        let steps = &workflow.steps;
        self.ledger.write(&self.report, |i| &steps[i].name, runs)
    }

    /// The run record of `workflow` with each step's entry whole, and the lock
    /// entries it changed.
    pub fn ended(self, workflow: &Workflow) -> Ended {
        let steps = &workflow.steps;
        let mut report = self.report;
        report.steps = self.ledger.into_reports(|i| &steps[i].name);
        Ended {
            report,
            lock_changes: self.lock_changes,
        }
    }
}

/// A run that has ended, its record whole.
pub struct Ended {
    /// The run record, `finished: true`.
    pub report: RunReport,
    /// New lock entries by step.
    pub lock_changes: LockChanges,
}

impl Ended {
    /// Step `name`'s new lock entry, if it has one.
    pub fn lock_change(&self, name: &str) -> Option<&NewEntry> {
        let i = self.report.steps.iter().position(|r| r.name == name)?;
        self.lock_changes.get(i)
    }
}

impl<'a> Run<'a> {
    /// A run with id `id` of `slots` CPU slots.
    pub fn new(parts: RunParts<'a>, slots: usize, keep_going: bool, id: String) -> Run<'a> {
        let session = parts.session;
        let workflow = session.workflow;
        let width = workflow
            .steps
            .iter()
            .map(|s| s.jobs().unwrap_or_else(|| s.step.default_jobs()))
            .collect();
        let n = workflow.steps.len();
        let forced = (workflow.steps.iter())
            .map(|s| workflow.selection.is_forced(&s.name))
            .collect();
        // Logs an earlier apply moved aside are removed beside this one's work.
        crate::run_record::start_removing_pruned_logs(&session.cache.dir("logs"));
        let logs_dir = session.cache.dir("logs").join(&id);
        Run {
            forced,
            keep_going,
            schedule: Schedule::new(&session.dag, width, slots),
            active: BTreeMap::new(),
            executing: Vec::new(),
            logs_dir: logs_dir.clone(),
            runs_dir: session.cache.dir("runs"),
            report: RunReport {
                id,
                workflow: workflow.path.display().to_string(),
                started_unix: crate::run_record::unix_now(),
                duration_ms: 0,
                steps: Vec::new(),
                interrupted: false,
                finished: false,
                remote: None,
                logs: Some(logs_dir.display().to_string()),
            },
            ledger: Ledger::new(n),
            lock_changes: LockChanges::default(),
            spill: None,
            started: parts.started,
            live_dirty: false,
            live_written: None,
            remote_reads: crate::remote_use::readable(workflow),
            remote_writes: crate::remote_use::uploadable(workflow, &session.dag),
            remote_downloads: crate::remote_use::downloaded(workflow, &session.dag),
            left: HashMap::new(),
            prefetched: HashMap::new(),
            weighed: false,
            job_slots: None,
            local_slots: slots,
            takes_tokens: vec![false; n],
            sharing: vec![false; n],
            sharing_running: 0,
            awaiting_inputs: BTreeSet::new(),
            parts,
        }
    }

    /// Let the make of each step on this host (`local`) whose kind allows it, that
    /// has no `jobs:` and whose kind would take every slot anyway share this
    /// host's `jobs` slots through one jobserver
    /// (`job_slots.rs`): such a step takes one slot to start. `wake` is called
    /// when a token the run waited for came back.
    pub fn share_slots(
        &mut self,
        local: Vec<bool>,
        jobs: usize,
        wake: impl Fn() + Send + 'static,
    ) -> anyhow::Result<()> {
        let steps = &self.parts.session.workflow.steps;
        let sharing: Vec<bool> = (steps.iter().zip(&local))
            .map(|(s, &here)| {
                // A kind asking for fewer slots than the run has (memory) keeps its cap.
                here && s.jobs().is_none()
                    && s.step.shares_run_slots()
                    && s.step.default_jobs() >= jobs
            })
            .collect();
        if !sharing.contains(&true) {
            return Ok(());
        }
        for (i, _) in sharing.iter().enumerate().filter(|(_, s)| **s) {
            self.schedule.set_width(StepId(i), 1);
        }
        self.job_slots = Some(
            JobSlots::new(jobs, wake)
                .map_err(|e| anyhow!("cannot create the run's make jobserver: {e}"))?,
        );
        self.local_slots = jobs.max(1);
        self.takes_tokens = local;
        self.sharing = sharing;
        Ok(())
    }

    /// Tokens step `id` takes from the run's jobserver to start.
    fn tokens(&self, id: StepId) -> usize {
        if self.takes_tokens[id.index()] {
            self.schedule.width(id).min(self.local_slots)
        } else {
            0
        }
    }

    /// Step `id` stops holding its slots (it is no longer running): its tokens go
    /// to the next step `start_ready` starts, else back to the jobserver's pipe.
    /// Call before its state changes.
    fn leave_running(&mut self, id: StepId) {
        if self.schedule.state(id) != StepState::Running {
            return;
        }
        let tokens = self.tokens(id);
        let Some(slots) = &self.job_slots else { return };
        slots.keep(tokens);
        if self.sharing[id.index()] {
            self.sharing_running -= 1;
            if self.sharing_running == 0 {
                let held: usize = (0..self.sharing.len())
                    .map(StepId)
                    .filter(|&s| s != id && self.schedule.state(s) == StepState::Running)
                    .map(|s| self.tokens(s))
                    .sum();
                slots.top_up(self.local_slots.saturating_sub(held));
            }
        }
    }

    fn name(&self, id: StepId) -> &'a str {
        &self.parts.session.workflow.steps[id.index()].name
    }

    /// Whether any step is with the executor or being recorded, or waits for its
    /// inputs to be hashed while steps may still start.
    pub fn is_active(&self) -> bool {
        !self.active.is_empty() || (!self.awaiting_inputs.is_empty() && !self.schedule.is_stopped())
    }

    /// Nothing left to start but steps waiting for their inputs: the hashing goes
    /// on however far ahead it is (`input_digests.rs`).
    fn hurry_hashing(&self) {
        if !self.awaiting_inputs.is_empty() && self.schedule.count(StepState::Ready) == 0 {
            self.parts.prepared.inputs.hurry();
        }
    }

    /// Steps that waited for their inputs and whose inputs are now hashed are looked
    /// at again.
    fn recall_hashed(&mut self) {
        if self.awaiting_inputs.is_empty() {
            return;
        }
        let inputs = &self.parts.prepared.inputs;
        let hashed: Vec<StepId> = (self.awaiting_inputs.iter().copied())
            .filter(|id| inputs.is_known(id.index()))
            .collect();
        for id in hashed {
            self.awaiting_inputs.remove(&id);
            self.schedule.look_at(id);
        }
    }

    /// Look at every waiting step whose upstream changed: skip it, settle it
    /// (cached, or ready to run), or leave it waiting.
    pub fn settle(&mut self) -> anyhow::Result<()> {
        self.recall_hashed();
        // In rounds: every step that can settle now, then those they made ready to look
        // at. A round's remote hits are fetched together (see `prefetch_remote`).
        loop {
            let mut round = Vec::new();
            while let Some(id) = self.schedule.next_to_look_at() {
                match self.schedule.triage(id) {
                    Triage::Wait => {}
                    Triage::Interrupted => self.skip(id, "run interrupted".to_string()),
                    Triage::UpstreamFailed(bad) => {
                        let names: Vec<&str> = bad.iter().map(|&u| self.name(u)).collect();
                        self.skip(id, failure_report::upstream_failed(&names));
                    }
                    Triage::Settle if self.parts.prepared.inputs.is_known(id.index()) => {
                        round.push(id)
                    }
                    // Its key needs its inputs' digests: looked at again once hashed.
                    Triage::Settle if self.schedule.is_interrupted() => {
                        self.awaiting_inputs.remove(&id);
                        self.skip(id, "run interrupted".to_string());
                    }
                    Triage::Settle => {
                        self.awaiting_inputs.insert(id);
                    }
                }
            }
            if round.is_empty() {
                break;
            }
            self.prefetch_remote(&round)?;
            for id in round {
                self.settle_one(id)?;
            }
        }
        self.adopt_left()?;
        for d in self.parts.session.cache.take_damaged() {
            self.parts.progress.event(&format!(
                "warning: a cached output changed after it was recorded (`{}` in tree {}); it was removed and the step that made it runs again",
                d.path,
                d.tree.short()
            ));
        }
        // `cached` lines wait here, so a no-op writes them all at once.
        self.parts.progress.flush();
        Ok(())
    }

    fn skip(&mut self, id: StepId, why: String) {
        self.schedule.set(id, StepState::Skipped);
        self.parts.prepared.inputs.release(id.index());
        let name = self.name(id);
        let line = format!("skipped {name} ({why})");
        let report = StepReport::new(name, StepOutcome::Skipped).because(vec![why.into()]);
        (self.parts.progress).step_ended(&report, &line);
        self.ledger.set(id.index(), report);
        self.live_dirty = true;
    }

    /// The key material of step `id`, whose upstream steps are done.
    fn material_of(&self, id: StepId) -> anyhow::Result<KeyMaterial> {
        self.material_with(id, &HashMap::new())
            .expect("every upstream step is done")
    }

    /// Step `id`'s lock entry for `rec`, written from `material`, among the run's
    /// changes unless the lock holds it already.
    fn note_lock_change(&mut self, id: StepId, material: &EntryMaterial<'_>, rec: &Record) {
        let session = self.parts.session;
        let steps = &session.workflow.steps;
        let name = &steps[id.index()].name;
        let m = &material.but_upstream;
        let partial = session.locked_step_but_digests(id.index(), m, &material.key, rec);
        let entry = EntryView::with_digests(&partial, &m.inputs, &material.upstream);
        let new = (!session.lock_entry_is(name, &entry)).then(|| {
            let spill = (self.spill)
                .get_or_insert_with(|| Spill::create(&session.cache.dir("tmp")).ok().map(Arc::new));
            match spill {
                Some(spill) => NewEntry::of_view_in(name, &entry, spill),
                None => NewEntry::of_view(name, &entry),
            }
        });
        self.lock_changes.set(id.index(), steps.len(), new);
    }

    /// What the lock entry of step `id` with key `key`, whose upstream steps are
    /// done, is written from.
    fn entry_material(&self, id: StepId, key: &Hash) -> anyhow::Result<EntryMaterial<'a>> {
        let session = self.parts.session;
        let upstream = (self.upstream_outputs(id, &HashMap::new()))
            .ok_or_else(|| anyhow!("its inputs' digests are gone"))?;
        #[cfg(debug_assertions)]
        assert_eq!(
            self.material_of(id)?.key(),
            *key,
            "step `{}`'s key material changed",
            self.name(id)
        );
        let but_upstream = (session.material(self.parts.prepared, id.index(), []))
            .map_err(|e| anyhow!("step `{}`: {e}", self.name(id)))?;
        Ok(EntryMaterial {
            key: *key,
            but_upstream,
            upstream,
        })
    }

    /// Asks the remote cache for every step of `round` the local cache lacks and, looking
    /// ahead, for the steps below them whose keys the answers already settle (a hit's entry
    /// names its output, so a downstream key follows without its bytes); then fetches every
    /// hit to be downloaded at once, the remote cache bounding the transfers in flight. So
    /// an image and the overlay on it come down side by side, not one level after the
    /// other. What it found waits in `prefetched`, under the key it answers, for
    /// `settle_one`: a step whose upstream then missed after all (wrong bytes on the
    /// server) gets another key and is asked again.
    fn prefetch_remote(&mut self, round: &[StepId]) -> anyhow::Result<()> {
        let Some(remote) = self.parts.remote else {
            return Ok(());
        };
        let session = self.parts.session;
        let mut promised: HashMap<&'a str, Hash> = HashMap::new();
        let mut asked: Vec<(StepId, Hash, Option<RemoteRecord>)> = Vec::new();
        let mut looked = std::collections::HashSet::new();
        let mut frontier: Vec<StepId> = round.to_vec();
        while !frontier.is_empty() {
            let wanted: Vec<(StepId, Hash)> = (frontier.drain(..))
                .filter(|&id| looked.insert(id))
                .filter(|id| self.remote_reads[id.index()] && !self.forced[id.index()])
                .filter_map(|id| Some((id, self.key_with(id, &promised)?.ok()?)))
                .filter(|(id, key)| self.local_lookup(*id, key).is_none())
                .collect();
            if wanted.is_empty() {
                break;
            }
            remote.check()?;
            let found =
                qflow_cache::remote::map_bounded(&wanted, remote.transfers(), |(_, key)| {
                    remote.lookup(key)
                });
            for ((id, key), entry) in wanted.into_iter().zip(found) {
                if let Some(entry) = &entry {
                    promised.insert(self.name(id), entry.record.output);
                    frontier.extend(session.dag.downstream(id));
                }
                asked.push((id, key, entry));
            }
        }
        let cache = &session.cache;
        let downloads = &self.remote_downloads;
        let hits =
            qflow_cache::remote::map_bounded(&asked, remote.transfers(), |(id, key, entry)| {
                let entry = entry.clone()?;
                settle_remote_hit(remote, cache, key, entry, downloads[id.index()])
            });
        for ((id, key, _), hit) in asked.into_iter().zip(hits) {
            self.prefetched.insert(id, (key, hit));
        }
        Ok(())
    }

    /// The output of each upstream step of `id`, sorted by name, when each is done
    /// or `promised` names it; `None` while one is neither, or while the step's
    /// inputs are being hashed.
    fn upstream_outputs(
        &self,
        id: StepId,
        promised: &HashMap<&'a str, Hash>,
    ) -> Option<Vec<(&'a str, Hash)>> {
        if !self.parts.prepared.inputs.is_known(id.index()) {
            return None;
        }
        let ups = self.parts.session.dag.upstream(id);
        let mut up = Vec::with_capacity(ups.len());
        for &u in ups {
            let name = self.name(u);
            let output = (self.ledger.output(u.index())).or_else(|| promised.get(name).copied())?;
            up.push((name, output));
        }
        up.sort_unstable_by(|a, b| a.0.cmp(b.0));
        Some(up)
    }

    /// The key of step `id` when each upstream step is done or `promised` names its
    /// output; `None` while one is neither, or while its inputs are being hashed. The
    /// key alone: a cached step never needs its material.
    fn key_with(
        &self,
        id: StepId,
        promised: &HashMap<&'a str, Hash>,
    ) -> Option<anyhow::Result<Hash>> {
        let session = self.parts.session;
        let s = &session.workflow.steps[id.index()];
        let up = self.upstream_outputs(id, promised)?;
        Some(
            session
                .key_of(self.parts.prepared, id.index(), up.into_iter())
                .map_err(|e| anyhow!("step `{}`: {e}", s.name)),
        )
    }

    /// The key material of step `id` when each upstream step is done or `promised` names
    /// its output; `None` while one is neither, or while its inputs are being hashed.
    fn material_with(
        &self,
        id: StepId,
        promised: &HashMap<&'a str, Hash>,
    ) -> Option<anyhow::Result<KeyMaterial>> {
        let session = self.parts.session;
        let s = &session.workflow.steps[id.index()];
        let up = self.upstream_outputs(id, promised)?;
        Some(
            session
                .material(self.parts.prepared, id.index(), up)
                .map_err(|e| anyhow!("step `{}`: {e}", s.name)),
        )
    }

    /// Step `id` must run: bring down the outputs of its upstream steps that were left on
    /// the server, several at once. An output that cannot be had now (the server went
    /// away since it answered) fails the step, and its entry is forgotten, so the next
    /// apply builds that upstream step here.
    fn fetch_left_upstream(&mut self, id: StepId) -> anyhow::Result<()> {
        let session = self.parts.session;
        let ups: Vec<(StepId, &'a str, RemoteRecord)> = (session.dag.upstream(id).iter())
            .filter_map(|&u| Some((u, self.name(u), self.left.remove(&u)?)))
            .collect();
        let Some(remote) = self.parts.remote.filter(|_| !ups.is_empty()) else {
            return Ok(());
        };
        let cache = &session.cache;
        let fetched = qflow_cache::remote::map_bounded(&ups, remote.transfers(), |(_, _, rr)| {
            remote.fetch_usable(rr, cache)
        });
        let mut failed = Vec::new();
        for ((u, name, rr), result) in ups.into_iter().zip(fetched) {
            match result {
                Ok(output) => {
                    self.parts.out_links.present(name, &output)?;
                    self.ledger.more_mut(u.index()).reasons = vec!["remote hit".into()];
                    self.parts
                        .progress
                        .event(&format!("downloaded {name} (`{}` needs it)", self.name(id)));
                }
                Err(e) => {
                    qflow_cache::remote::forget_entry(cache, &rr.record.key);
                    failed.push(format!("`{name}` ({e:#})"));
                }
            }
        }
        anyhow::ensure!(
            failed.is_empty(),
            "the output of {} is on the remote cache only and could not be downloaded now; \
             apply again: it is then built here",
            failed.join(", ")
        );
        Ok(())
    }

    /// Every upstream step is done and its inputs are hashed: compute the key, then
    /// cached or ready. A step whose inputs could not be hashed fails.
    fn settle_one(&mut self, id: StepId) -> anyhow::Result<()> {
        let session = self.parts.session;
        let s = &session.workflow.steps[id.index()];
        if let Some(Err(e)) = self.parts.prepared.inputs.get(id.index()).as_deref() {
            let e = anyhow!("cannot hash its inputs: {e}");
            self.fail(id, e, 0, None);
            return Ok(());
        }
        let key = (self.key_with(id, &HashMap::new())).expect("every upstream step is done")?;
        #[cfg(debug_assertions)]
        assert_eq!(
            self.material_of(id)?.key(),
            key,
            "the key is its material's key"
        );
        let mut hit = self.lookup(id, &key)?;
        // A kept entry of a step whose bytes are wanted now: fetch them, or run it.
        if let Some(Hit::Left(rr)) = &hit
            && self.remote_downloads[id.index()]
        {
            hit = self.fetch_kept(rr);
        }
        let Some(hit) = hit else {
            if let Err(e) = self.fetch_left_upstream(id) {
                self.fail(id, e, 0, None);
                return Ok(());
            }
            // Nothing of a ready step is kept, not even its key: its key material
            // and why it runs are made again from the same inputs when it starts
            // (a fan-out has 10,000 steps ready at once; their keys alone took
            // 0.7 MB, their reasons megabytes).
            self.schedule.set(id, StepState::Ready);
            return Ok(());
        };
        let output = match &hit {
            Hit::InPlace(output) | Hit::Locked(output) => *output,
            Hit::Record(rec) | Hit::Remote(rec) => rec.output,
            Hit::Left(rr) => rr.record.output,
        };
        match &hit {
            Hit::InPlace(_) => {}
            // Never a link to a tree that is not here (nor one to an older result).
            Hit::Left(_) => self.parts.out_links.remove(&s.name)?,
            _ => self.parts.out_links.present(&s.name, &output)?,
        }
        if let Hit::Record(rec) | Hit::Remote(rec) | Hit::Left(RemoteRecord { record: rec, .. }) =
            &hit
        {
            let material = self.entry_material(id, &key)?;
            self.note_lock_change(id, &material, rec);
        }
        let remote = matches!(hit, Hit::Remote(_) | Hit::Left(_));
        let left = matches!(hit, Hit::Left(_));
        if !remote {
            self.queue_upload(id, key);
            // Its key and lock entry are made: its digests are not needed again.
            self.parts.prepared.inputs.release(id.index());
        }
        let mut rep = StepReport::new(&s.name, StepOutcome::Cached);
        if left {
            rep.reasons = vec!["remote hit (left on the server)".into()];
        } else if remote {
            rep.reasons = vec!["remote hit".into()];
        }
        rep.key = Some(key);
        rep.output = Some(output);
        let line = if left {
            format!(
                "remote hit {} (left on the server; `qflow apply FILE {}` downloads it)",
                s.name, s.name
            )
        } else if remote {
            format!("remote hit {}", s.name)
        } else {
            format!("cached {}", s.name)
        };
        (self.parts.progress).step_ended(&rep, &line);
        if remote {
            self.ledger.set(id.index(), rep);
        } else {
            self.ledger.cached(id.index(), key, output);
        }
        self.schedule.set(id, StepState::Done);
        if let Hit::Left(rr) = hit {
            // Its metrics were held to their `expect:` where it ran.
            self.left.insert(id, rr);
            return Ok(());
        }
        self.check_expectations(id, &output);
        Ok(())
    }

    /// Steps left on the server whose output came down meanwhile (an overlay fetched for
    /// use brings the image it backs onto): their record is written and their `out/` link
    /// made, like any remote hit's.
    fn adopt_left(&mut self) -> anyhow::Result<()> {
        if self.left.is_empty() {
            return Ok(());
        }
        let cache = &self.parts.session.cache;
        let here: Vec<StepId> = (self.left.iter())
            .filter(|(_, rr)| cache.has_tree(&rr.record.output))
            .map(|(&id, _)| id)
            .collect();
        for id in here {
            let rr = self.left.remove(&id).expect("a step left on the server");
            cache.put_record(&rr.record.key, &rr.record)?;
            let name = self.name(id);
            self.parts.out_links.present(name, &rr.record.output)?;
            self.ledger.more_mut(id.index()).reasons = vec!["remote hit".into()];
            self.parts.progress.event(&format!(
                "downloaded {name} (an image downloaded with it backs onto it)"
            ));
        }
        Ok(())
    }

    /// The bytes of the kept entry `rr`, fetched now: a remote hit, or a miss.
    fn fetch_kept(&self, rr: &RemoteRecord) -> Option<Hit> {
        let remote = self.parts.remote?;
        let cache = &self.parts.session.cache;
        match remote.fetch_usable(rr, cache) {
            Ok(_) => Some(Hit::Remote(rr.record.clone())),
            Err(_) => {
                qflow_cache::remote::forget_entry(cache, &rr.record.key);
                None
            }
        }
    }

    /// Hold recorded step `id`'s metrics (in its output tree `output`) to their
    /// `expect:`. Each value outside is reported and noted in the run record;
    /// the step stays done (its outputs are kept and downstream steps such as
    /// figures go on), and the apply exits 1 at the end.
    fn check_expectations(&mut self, id: StepId, output: &Hash) {
        let s = &self.parts.session.workflow.steps[id.index()];
        let specs = s.step.metrics();
        if specs.is_empty() {
            return;
        }
        let tree = self.parts.session.cache.tree_path(output);
        let unmet = crate::results::unmet_in_tree(&s.name, &specs, &tree);
        for u in &unmet {
            self.parts.progress.event(&format!("UNMET {u}"));
        }
        if !unmet.is_empty() {
            self.ledger.more_mut(id.index()).unmet = unmet;
            self.live_dirty = true;
        }
    }

    fn output_of(&self, step: StepId) -> Hash {
        // A done step's entry holds its output (the run keeps no second copy).
        (self.ledger.output(step.index())).expect("an upstream step is done")
    }

    /// The one question "is there a usable result for step `id`'s `key`":
    /// its lock entry (found in place before the run, or with record and tree
    /// in the cache now), else a record in the cache. A remote cache would be
    /// asked here, last.
    /// Its only error: the remote cache refused the credentials (see
    /// [`RemoteCache::check`]).
    fn lookup(&mut self, id: StepId, key: &Hash) -> anyhow::Result<Option<Hit>> {
        if self.forced[id.index()] {
            return Ok(None);
        }
        // Asked moments ago for this very key: a remote hit (now in the local cache, or
        // its entry kept), or a miss.
        let prefetched = (self.prefetched.remove(&id)).filter(|(asked_for, _)| asked_for == key);
        let asked = prefetched.is_some();
        if let Some((_, Some(hit))) = prefetched {
            return Ok(Some(hit));
        }
        if let Some(hit) = self.local_lookup(id, key) {
            return Ok(Some(hit));
        }
        if asked {
            return Ok(None); // the remote cache was asked in this round
        }
        self.remote_lookup(id, key)
    }

    /// [`Run::lookup`] in the local cache only.
    fn local_lookup(&self, id: StepId, key: &Hash) -> Option<Hit> {
        let session = self.parts.session;
        let i = id.index();
        if self.forced[i] {
            return None;
        }
        if self.parts.in_place.get(i) == Some(&true)
            && let Some(output) = session.locked_output(i, key)
        {
            return Some(Hit::InPlace(output));
        }
        if let Some(output) = session.cached_from_lock(i, key, self.parts.probe) {
            return Some(Hit::Locked(output));
        }
        if !session.workflow.steps[i].cache {
            return None;
        }
        if let Some(rec) = session.usable_record(key) {
            return Some(Hit::Record(rec));
        }
        // Left on the server by an earlier apply: known without asking it, and fetched
        // from it when needed, so only while a remote cache is given.
        if self.parts.remote.is_some() && self.remote_reads[i] {
            return qflow_cache::remote::kept_entry(&session.cache, key).map(Hit::Left);
        }
        None
    }

    /// The remote cache's answer for step `id`'s `key`, fetched into the local cache
    /// (its output tree is linked under `out/` next). Faults and wrong bytes are misses;
    /// the remote cache gave its warning.
    fn remote_lookup(&self, id: StepId, key: &Hash) -> anyhow::Result<Option<Hit>> {
        let Some(remote) = self.parts.remote else {
            return Ok(None);
        };
        if !self.remote_reads[id.index()] {
            return Ok(None);
        }
        remote.check()?;
        let cache = &self.parts.session.cache;
        Ok(ask_remote(
            remote,
            cache,
            key,
            self.remote_downloads[id.index()],
        ))
    }

    /// Queue step `id`'s result under `key` for upload, if uploads are on and allowed.
    fn queue_upload(&self, id: StepId, key: Hash) {
        if let Some(tx) = &self.parts.uploads
            && self.remote_writes[id.index()]
        {
            let _ = tx.send(key);
        }
    }

    /// Hand every ready step that fits in the free slots to `executor`.
    pub fn start_ready(&mut self, executor: &mut dyn Executor) {
        if !self.weighed && self.schedule.count(StepState::Ready) > 0 {
            self.weigh();
        }
        let mut short = false;
        let startable = self.schedule.startable();
        if !startable.is_empty() {
            // What was found in place before scheduling is not trusted once steps run:
            // a user may touch `out/` meanwhile. Later steps check for themselves.
            self.parts.in_place.clear();
        }
        for id in startable {
            if let Some(slots) = &self.job_slots
                && !slots.take(self.tokens(id))
            {
                // A make holds them: the jobserver wakes the run when one comes back.
                short = true;
                break;
            }
            if self.sharing[id.index()] {
                self.sharing_running += 1;
            }
            self.start(id, executor);
        }
        if let Some(slots) = &self.job_slots
            && !short
        {
            slots.release_idle();
        }
    }

    /// Give the schedule every step's expected duration, once, when the first
    /// step is ready to run (a no-op never pays for it): how long the step
    /// took when it made the result its lock entry names, else its kind's
    /// guess. Steps already done weigh nothing.
    fn weigh(&mut self) {
        let session = self.parts.session;
        let lock = session.lock_index();
        let mut previous = vec![false; session.workflow.steps.len()];
        let expected: Vec<u64> = (session.workflow.steps.iter().enumerate())
            .map(|(i, s)| {
                if self.schedule.state(StepId(i)) == StepState::Done {
                    return 0;
                }
                (lock.steps.get(&s.name))
                    .and_then(|ids| ids.map(|(key, _)| key))
                    .and_then(|key| session.cache.get_record(&key).ok().flatten())
                    .map(|rec| {
                        previous[i] = true;
                        rec.duration_ms
                    })
                    .unwrap_or_else(|| s.step.expected_ms())
            })
            .collect();
        self.schedule.weigh(&expected);
        self.weighed = true;
        // The overall `[n/m]` and its estimate: the same times, where they are a
        // previous run's (see `estimate.rs`).
        let plan = (session.workflow.steps.iter().enumerate())
            .map(|(i, s)| crate::estimate::Expected {
                name: &s.name,
                ms: expected[i],
                previous: expected[i] > 0 && previous[i],
                path_ms: self.schedule.remaining(StepId(i)),
                width: self.schedule.width(StepId(i)),
            })
            .collect();
        self.parts.progress.expect(plan, self.schedule.free());
    }

    /// Why step `id`, ready to run with key `key`, runs.
    fn reasons(&self, id: StepId, key: &Hash) -> Vec<Reason> {
        let session = self.parts.session;
        let mut reasons = if self.forced[id.index()] {
            vec!["forced with --force".into()]
        } else {
            let material = || self.material_of(id).map_err(|e| format!("{e:#}"));
            session.reasons(self.parts.prepared, id.index(), key, material)
        };
        let s = &session.workflow.steps[id.index()];
        reasons.extend(
            s.step
                .run_note(&session.state_dir_of(id.index()))
                .map(Reason::from),
        );
        reasons
    }

    fn start(&mut self, id: StepId, executor: &mut dyn Executor) {
        // Running first: a failure gives back the slots it took.
        self.schedule.set(id, StepState::Running);
        let key = match self.key_with(id, &HashMap::new()) {
            Some(Ok(key)) => key,
            Some(Err(e)) => return self.fail(id, e, 0, None),
            // A ready step's upstream steps are done and its inputs hashed.
            None => return self.fail(id, anyhow!("its key is not known"), 0, None),
        };
        let reasons = self.reasons(id, &key);
        let name = self.name(id);
        (self.parts.progress).step_started(name, &reasons, &key);
        (self.ledger).set(
            id.index(),
            StepReport::new(name, StepOutcome::Running).because(reasons),
        );
        self.live_dirty = true;
        let submitted = Instant::now();
        let submit = self.job_for(id, key).and_then(|(job, staging, retains)| {
            let session = self.parts.session;
            let inputs = session.workflow.steps[id.index()].inputs();
            let input_stamps = crate::input_stamp::stamp_inputs(&session.workflow.dir, &inputs)?;
            let job_id = executor.submit(job)?;
            Ok((job_id, staging, retains, input_stamps))
        });
        match submit {
            Ok((job, staging, retains, input_stamps)) => {
                let active = Active {
                    step: id,
                    key,
                    staging: Some(staging),
                    retains,
                    input_stamps,
                    submitted,
                };
                self.active.insert(job, active);
                self.executing.push(job);
            }
            Err(e) => self.fail(id, e, 0, Some(key)),
        }
    }

    /// The job that runs step `id`: fields resolved, a fresh staging
    /// directory, the started mark written.
    fn job_for(&self, id: StepId, key: Hash) -> anyhow::Result<(StepJob, TempTree, Vec<Hash>)> {
        let session = self.parts.session;
        let (workflow, cache) = (session.workflow, &session.cache);
        let s = &workflow.steps[id.index()];
        let ups = session.dag.upstream(id);
        // Only the outputs it uses: the last step of a fan-in that waits `after:`
        // 10,000 steps would carry 1 MB of their names and trees.
        let upstream = crate::context::UpstreamDirs::trees(
            cache.dir("trees"),
            (s.used_upstream_ids().map(StepId))
                .map(|u| (self.name(u).to_string(), self.output_of(u))),
        );
        let retains = ups.iter().map(|&u| self.output_of(u)).collect();
        let fields = s.resolved_fields(&upstream)?;
        let staging = cache.new_tree()?;
        let run_token = crate::leftovers::token_for(&key);
        cache.mark_started(&key, &crate::leftovers::mark_note(&s.name, &run_token))?;
        let job = StepJob {
            step: s.name.clone(),
            kind: s.kind.to_string(),
            fields,
            key,
            work_dir: workflow.dir.clone(),
            out_dir: staging.path().to_path_buf(),
            state_dir: session.state_dir_of(id.index()),
            spare_dirs: Some(cache.spare_dirs().dir().to_path_buf()),
            upstream: Arc::new(upstream),
            env: s.env().clone(),
            jobs: if self.sharing[id.index()] {
                self.local_slots
            } else {
                self.schedule.width(id)
            },
            log: self.log_path(id),
            run_token,
            mask: s.mask(),
            shared_slots: (self.job_slots.as_ref())
                .filter(|_| self.sharing[id.index()])
                .map(|j| j.makeflags(self.local_slots)),
        };
        Ok((job, staging, retains))
    }

    fn log_path(&self, id: StepId) -> PathBuf {
        self.logs_dir.join(format!("{}.log", self.name(id)))
    }

    /// Ask `executor` about every job it runs; record the ones that succeeded
    /// on threads of `scope` (a `Recorded` event follows), fail the others.
    pub fn check_executor<'s>(&mut self, executor: &mut dyn Executor, scope: &'s Scope<'s, 'a>) {
        if self.executing.is_empty() {
            return;
        }
        for (job, result) in executor.check_active(&self.executing) {
            self.executing.retain(|j| *j != job);
            self.on_executed(job, result, scope);
        }
    }

    fn on_executed<'s>(&mut self, job: JobId, result: JobResult, scope: &'s Scope<'s, 'a>) {
        let active = self.active.get_mut(&job).expect("active job");
        let start = active.submitted.saturating_duration_since(self.started);
        self.ledger.more_mut(active.step.index()).start_ms = Some(start.as_millis() as u64);
        let output = match result {
            Ok(output) => output,
            Err(e) => {
                let (id, ms) = (active.step, active.submitted.elapsed().as_millis() as u64);
                let key = active.key;
                self.active.remove(&job);
                return self.fail(id, e, ms, Some(key));
            }
        };
        self.ledger.more_mut(active.step.index()).cpu_ms = output.cpu_ms;
        let recording = Recording {
            step: active.step,
            key: active.key,
            staging: active.staging.take().expect("staging directory"),
            retains: std::mem::take(&mut active.retains),
            input_stamps: std::mem::take(&mut active.input_stamps),
            output,
            submitted: active.submitted,
        };
        let session = self.parts.session;
        let before = self.parts.prepared.inputs.digests(active.step.index());
        let events = self.parts.events.clone();
        scope.spawn(move || {
            let result = recording.record(session, crate::input_digests::listed(&before));
            let _ = events.send(Event::Recorded { job, result });
        });
    }

    /// A step's result was recorded (or could not be).
    pub fn on_recorded(
        &mut self,
        job: JobId,
        result: anyhow::Result<Record>,
    ) -> anyhow::Result<()> {
        let active = self.active.remove(&job).expect("recorded job");
        let (id, ms) = (active.step, active.submitted.elapsed().as_millis() as u64);
        let rec = match result {
            Ok(rec) => rec,
            Err(e) => {
                self.fail(id, e, ms, Some(active.key));
                return Ok(());
            }
        };
        // The same material as when it was settled: its upstream outputs and inputs
        // are what they were.
        let material = match self.entry_material(id, &active.key) {
            Ok(material) => material,
            Err(e) => {
                self.fail(id, e, ms, Some(active.key));
                return Ok(());
            }
        };
        let name = self.name(id);
        self.parts.progress.finish(name);
        self.parts.out_links.present(name, &rec.output)?;
        self.note_lock_change(id, &material, &rec);
        self.parts.prepared.inputs.release(id.index());
        let log = self.log_path(id).display().to_string();
        let mut rep = self.ledger.report(id.index(), name);
        rep.outcome = StepOutcome::Ran;
        rep.duration_ms = ms;
        rep.log = Some(log);
        rep.key = Some(active.key);
        rep.output = Some(rec.output);
        let line = format!("ok {name} {:.1}s", ms as f64 / 1000.0);
        (self.parts.progress).step_ended(&rep, &line);
        // The record writes it from the run's log directory (`StepReport::logged`).
        rep.log = None;
        rep.logged = true;
        self.ledger.set(id.index(), rep);
        self.leave_running(id);
        self.schedule.set(id, StepState::Done);
        self.live_dirty = true;
        self.queue_upload(id, rec.key);
        self.check_expectations(id, &rec.output);
        Ok(())
    }

    /// Step `id` failed after `ms` with `e`: nothing is recorded for it. A
    /// step that failed by itself (not stopped by an interrupt) is no longer
    /// marked started, so the next run does not call it interrupted.
    fn fail(&mut self, id: StepId, e: anyhow::Error, ms: u64, key: Option<Hash>) {
        self.leave_running(id);
        self.schedule.set(id, StepState::Failed);
        self.parts.prepared.inputs.release(id.index());
        self.live_dirty = true;
        let name = self.name(id);
        let log = self.log_path(id);
        let progress = &self.parts.progress;
        progress.finish(name);
        let mut rep = self.ledger.report(id.index(), name);
        rep.duration_ms = ms;
        rep.log = Some(log.display().to_string());
        if let Some(key) = key {
            rep.key = Some(key);
        }
        if self.schedule.is_interrupted() {
            rep.outcome = StepOutcome::Interrupted;
            rep.error = Some("interrupted".into());
            progress.step_ended(&rep, &format!("interrupted {name} (nothing recorded)"));
            self.ledger.set(id.index(), rep);
            return;
        }
        rep.outcome = StepOutcome::Failed;
        let error = format!("{e:#}");
        rep.error = Some(error.clone());
        progress.step_ended(&rep, &failure_report::failed_step(name, &error, ms, &log));
        self.ledger.set(id.index(), rep);
        if let Some(key) = key {
            let _ = self.parts.session.cache.clear_started(&key);
        }
        if !self.keep_going {
            self.schedule.stop();
        }
    }

    /// A signal: stop every running step, start nothing more, skip what waits.
    pub fn interrupt(&mut self, executor: &mut dyn Executor) {
        if self.schedule.is_interrupted() {
            return;
        }
        self.parts
            .progress
            .interrupted("interrupted: stopping every step (press Ctrl-C again to exit at once)");
        self.schedule.interrupt();
        self.report.interrupted = true;
        executor.cancel(&self.executing);
    }

    /// Write the live run record `qflow status` reads if it changed and was
    /// last written long enough ago; else how long until it is due.
    pub fn write_live(&mut self) -> Option<Duration> {
        if !self.live_dirty {
            return None;
        }
        if let Some((last, took)) = self.live_written {
            let every = LIVE_RECORD_EVERY.max(took * LIVE_RECORD_SHARE);
            let since = last.elapsed();
            if since < every {
                return Some(every - since);
            }
        }
        let start = Instant::now();
        self.report.duration_ms = self.started.elapsed().as_millis() as u64;
        let steps = &self.parts.session.workflow.steps;
        let _ = (self.ledger).write(&self.report, |i| &steps[i].name, &self.runs_dir);
        give_back_free_memory();
        self.live_dirty = false;
        self.live_written = Some((Instant::now(), start.elapsed()));
        None
    }

    /// The run has ended: every step never started is `skipped`.
    pub fn finish(mut self) -> Finished {
        // Steps never started: the run was interrupted, or stopped after a failure.
        let why = if self.schedule.is_interrupted() {
            "run interrupted".to_string()
        } else {
            failure_report::stopped_after_failure(!self.keep_going)
        };
        let workflow = self.parts.session.workflow;
        for i in 0..self.ledger.len() {
            if self.ledger.outcome(i) == StepOutcome::Pending {
                (self.ledger).set(
                    i,
                    StepReport::new("", StepOutcome::Skipped).because(vec![why.clone().into()]),
                );
            }
        }
        self.report.finished = true;
        // The failure summary names the failed and the skipped steps only.
        let outcomes = (0..self.ledger.len()).map(|i| (i, self.ledger.outcome(i)));
        if outcomes.clone().any(|(_, o)| o == StepOutcome::Failed) {
            let told: Vec<StepReport> = outcomes
                .filter(|(_, o)| matches!(o, StepOutcome::Failed | StepOutcome::Skipped))
                .map(|(i, _)| self.ledger.report(i, &workflow.steps[i].name))
                .collect();
            if let Some(block) = failure_report::summary(&told) {
                self.parts.progress.event(&block);
            }
        }
        Finished {
            report: self.report,
            ledger: self.ledger,
            lock_changes: self.lock_changes,
        }
    }

    /// How long the run has taken so far.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Run until no step is active: settle, start, wait for an event, repeat.
pub fn drive<'s, 'a>(
    run: &mut Run<'a>,
    executor: &mut dyn Executor,
    events: &Receiver<Event>,
    scope: &'s Scope<'s, 'a>,
) -> anyhow::Result<()> {
    loop {
        run.settle()?;
        run.start_ready(executor);
        run.hurry_hashing();
        let live_due = run.write_live();
        if !run.is_active() {
            return Ok(());
        }
        let wait = match (live_due, executor.poll_interval()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let event = match wait {
            Some(wait) => match events.recv_timeout(wait) {
                Ok(event) => event,
                Err(RecvTimeoutError::Timeout) => Event::Wake,
                Err(RecvTimeoutError::Disconnected) => unreachable!("the run holds a sender"),
            },
            None => events.recv().expect("the run holds a sender"),
        };
        match event {
            Event::Wake => {}
            Event::Signal => run.interrupt(executor),
            Event::Recorded { job, result } => run.on_recorded(job, result)?,
        }
        run.check_executor(executor, scope);
    }
}

/// Hand the memory the run's threads freed back to the system (glibc keeps it in
/// each thread's arena: a first apply of 10,000 steps held a fifth more than it
/// used). Called with the live record, so at most as often and taking as small a
/// share of the run's time.
pub(crate) fn give_back_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Asks `remote` for step key `key`, then as [`settle_remote_hit`].
fn ask_remote(
    remote: &RemoteCache,
    cache: &qflow_cache::Cache,
    key: &Hash,
    download: bool,
) -> Option<Hit> {
    let entry = remote.lookup(key)?;
    settle_remote_hit(remote, cache, key, entry, download)
}

/// The remote cache's `entry` for step key `key`: fetched into `cache` (with the trees its
/// images back onto) when `download`, else kept there while its bytes stay on the server.
/// Faults and wrong bytes are misses (the remote cache gave its warning).
fn settle_remote_hit(
    remote: &RemoteCache,
    cache: &qflow_cache::Cache,
    key: &Hash,
    entry: RemoteRecord,
    download: bool,
) -> Option<Hit> {
    // A killed run's started mark no longer stands for this key: the result is whole.
    if download {
        remote.fetch_usable(&entry, cache).ok()?;
        cache.clear_started(key).ok()?;
        return Some(Hit::Remote(entry.record));
    }
    qflow_cache::remote::keep_entry(cache, &entry).ok()?;
    cache.clear_started(key).ok()?;
    Some(Hit::Left(entry))
}

/// Keep `entry` as step `name`'s new lock entry unless the lock already has it.
/// Its text goes to the run's spill file, made in the cache's `tmp` at the first change.
/// What a step's lock entry is written from: its key, and its key material
/// but for its upstream steps, whose names are borrowed (the material of a step
/// below 10,000 others copied each name).
struct EntryMaterial<'a> {
    key: Hash,
    but_upstream: KeyMaterial,
    /// Each upstream step and its output, sorted by name.
    upstream: Vec<(&'a str, Hash)>,
}

#[cfg(test)]
mod tests;

mod ledger;
