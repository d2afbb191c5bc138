//! The Slurm executor: each step job is one Slurm job running
//! `qflow __run-step <description>` on a node (see `slurm/node.rs`).
//!
//! Attached (`srun`, the default): the job lives as long as its srun, a child
//! of this process that dies with it, so a coordinator killed with -9 takes its
//! jobs with it. A job whose srun exits 0 with a good node report is done at
//! once; any other end is looked up in the queue for Slurm's state.
//! Detached (`sbatch`, `qflow apply --detach --executor slurm`): jobs survive the
//! coordinator; their states come from the queue.
//!
//! The queue is one `squeue` for every job of the workflow (they share one job
//! name), at most once a second. A cancel is one `scancel` for the batch, and
//! prints the job ids. A job Slurm ended with `NODE_FAIL` or `PREEMPTED` is
//! submitted again while the step's `retries:` last. Jobs a killed coordinator
//! left running (found by their name when this executor starts, under the cache
//! lock, so no live run owns them) are adopted when this run submits the same
//! step key, never submitted a second time, and cancelled at the end otherwise.
//! A job that completed while no coordinator watched it is adopted too when its
//! node's good report still waits beside the killed run's staging directory (a
//! coordinator removes each report it has read, whatever it made of it).
//! The node's report is checked here: its tool identities must be those of the
//! step key. The run loop then records the output as for every executor.
//!
//! A step with parts (`Step::parts`: a boot matrix's runs) is one job per part,
//! each running `qflow __run-step <description> --part N` into the step's one
//! staging directory, with its own log and report. The step is done when every
//! part is: then this process gathers the parts' logs into the step's log and
//! runs the step's `finish_parts` (the metrics spanning the runs) before the run
//! loop records it. A part that fails names its run and its Slurm job, and the
//! step's other parts are cancelled at once (one `scancel`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;

use super::{Executor, JobId, JobResult, StepJob, StepOutput};
use crate::progress::Progress;
use crate::slurm::client::SlurmClient;
use crate::slurm::job_request::{JobRequest, job_comment, parse_comment, part_comment};
use crate::slurm::job_state::{JobOutcome, JobState, ended_message};
use crate::slurm::queue::Queue;
use crate::slurm::resources::{ClusterSettings, Resources};
use crate::slurm::step_description::{
    DESCRIPTION_VERSION, NodeReport, StepDescription, merge_entries, passed_env,
};
use crate::step::Registry;

/// How long a finished srun may go unlisted before qflow stops waiting for its state.
const UNLISTED_GRACE: Duration = Duration::from_secs(5);

/// What the executor knows of one step it may submit.
#[derive(Debug, Clone, Default)]
pub struct SlurmStep {
    /// What the step asks of the cluster.
    pub resources: Resources,
    /// Submit again this many times after `NODE_FAIL` or `PREEMPTED`.
    pub retries: u32,
    /// Tool identities in the step's key.
    pub tools: BTreeMap<String, String>,
    /// The labels of the step's parts, each submitted as a job of its own
    /// (`Step::parts`); empty: the step is one job.
    pub parts: Vec<String>,
}

/// Everything the Slurm executor needs, made before the run.
pub struct SlurmSetup<'r> {
    /// The step kinds: a step with parts is finished here (`Step::finish_parts`).
    pub registry: &'r Registry,
    /// Submits, lists and cancels jobs.
    pub client: SlurmClient,
    /// The job name of this workflow on this cache (`job_request::job_name`).
    pub name: String,
    /// The workflow's `slurm:` block.
    pub cluster: ClusterSettings,
    /// The qflow binary the nodes run (on the shared file system).
    pub qflow: PathBuf,
    /// The batch script (`slurm::batch_script`).
    pub script: PathBuf,
    /// Where descriptions go (`slurm::slurm_dir`).
    pub dir: PathBuf,
    /// sbatch (true) or srun (false).
    pub detached: bool,
    /// By step name.
    pub steps: HashMap<String, SlurmStep>,
}

/// One Slurm job: a whole step execution, or one part of it.
struct Submitted {
    /// The step's job; for a part, its log is the part's.
    job: StepJob,
    /// The part (index, label), or `None` for a whole step.
    part: Option<(usize, String)>,
    req: JobRequest,
    report: PathBuf,
    /// srun's own messages (attached).
    messages: PathBuf,
    slurm_id: Option<String>,
    srun: Option<Child>,
    srun_exit: Option<(ExitStatus, Instant)>,
    tries: u32,
    /// An adopted job's staging directory and report, from the run that submitted it.
    adopted: Option<(PathBuf, PathBuf)>,
    cancelled: bool,
    /// Jobs listed with this job's comment before it was submitted (earlier tries, earlier runs).
    before: Vec<String>,
}

/// One step execution as the run loop sees it: one job, or one per part.
struct Execution {
    job: StepJob,
    /// Part labels (empty: one job for the whole step).
    parts: Vec<String>,
    /// Jobs not concluded yet (ids into `SlurmExecutor::subs`).
    pending: Vec<u64>,
    /// Each part's log, as its job writes it.
    logs: Vec<PathBuf>,
    notes: BTreeMap<String, String>,
    failures: Vec<anyhow::Error>,
    /// Slurm jobs of this execution that ended cancelled.
    interrupted: Vec<String>,
    /// Staging directories of an earlier run whose parts were adopted.
    adopted_from: Vec<PathBuf>,
}

/// Runs step jobs as Slurm jobs.
pub struct SlurmExecutor<'r> {
    setup: SlurmSetup<'r>,
    progress: Arc<Progress>,
    queue: Queue,
    next: u64,
    executions: HashMap<JobId, Execution>,
    subs: HashMap<u64, Submitted>,
    next_sub: u64,
    /// Jobs a killed coordinator left, by comment (step, key and part).
    orphans: HashMap<String, Orphan>,
}

/// A job of an earlier run that no coordinator watches any more.
struct Orphan {
    id: String,
    comment: String,
    /// It completed: its output waits, with its node's report, in the earlier
    /// run's staging directory (adopted only if that report is there and good).
    finished: bool,
}

impl<'r> SlurmExecutor<'r> {
    /// An executor for `setup`; lists the workflow's jobs once to find orphans.
    pub fn new(setup: SlurmSetup<'r>, progress: Arc<Progress>) -> anyhow::Result<Self> {
        let mut queue = Queue::new(&setup.name);
        queue.refresh(&setup.client)?;
        // Running (or queued) jobs first; a job that completed while no qflow watched
        // it is adopted only when no running one does the same work.
        let mut orphans: HashMap<String, Orphan> = HashMap::new();
        for j in queue.all() {
            let finished = match j.state {
                ref st if st.is_active() => false,
                JobState::Completed => true,
                _ => continue,
            };
            if parse_comment(&j.comment).is_none() {
                continue;
            }
            let execution = j.comment.as_str();
            let orphan = Orphan {
                id: j.id.clone(),
                comment: j.comment.clone(),
                finished,
            };
            match orphans.get(execution) {
                Some(o) if !o.finished => {}
                _ => {
                    orphans.insert(execution.to_string(), orphan);
                }
            }
        }
        let running: Vec<&str> = {
            let mut ids: Vec<&str> = (orphans.values())
                .filter(|o| !o.finished)
                .map(|o| o.id.as_str())
                .collect();
            ids.sort();
            ids
        };
        if !running.is_empty() {
            progress.event(&format!(
                "found Slurm jobs {} of an earlier run still running: adopting those this run needs",
                running.join(", ")
            ));
        }
        Ok(SlurmExecutor {
            setup,
            progress,
            queue,
            next: 0,
            executions: HashMap::new(),
            subs: HashMap::new(),
            next_sub: 0,
            orphans,
        })
    }

    /// How many `squeue` calls this executor made.
    pub fn squeue_calls(&self) -> u64 {
        self.queue.calls()
    }

    /// One description per step and key: two steps of one workflow may share a key
    /// (the same command twice) and run side by side, each into its own staging
    /// directory.
    fn description_path(&self, job: &StepJob) -> PathBuf {
        let step = blake3::hash(job.step.as_bytes()).to_hex();
        self.setup
            .dir
            .join(format!("{}-{}.json", job.key.to_hex(), &step[..16]))
    }

    /// The request for `job`, or for its part `part`.
    fn request(
        &self,
        job: &StepJob,
        step: &SlurmStep,
        desc: &Path,
        part: Option<usize>,
    ) -> JobRequest {
        let key = job.key.to_hex();
        let mut command: Vec<std::ffi::OsString> = vec![
            self.setup.qflow.clone().into(),
            "__run-step".into(),
            desc.into(),
        ];
        let (comment, cpus, slurm_log) = match part {
            None => (
                job_comment(&job.step, &key),
                step.resources.cpus.unwrap_or(job.jobs),
                job.log.with_extension("slurm.log"),
            ),
            Some(i) => {
                command.push("--part".into());
                command.push(i.to_string().into());
                (
                    part_comment(&job.step, &key, i),
                    // A part is one run: one CPU unless the step asks for more.
                    step.resources.cpus.unwrap_or(1),
                    job.log.with_extension(format!("part{i}.slurm.log")),
                )
            }
        };
        JobRequest {
            name: self.setup.name.clone(),
            comment,
            cpus: cpus.max(1),
            resources: step.resources.clone(),
            cluster: self.setup.cluster.clone(),
            slurm_log,
            work_dir: job.work_dir.clone(),
            command,
        }
    }

    /// Write the description of `job` for the nodes (every part reads the same one).
    fn describe(&self, job: &StepJob, step: &SlurmStep) -> anyhow::Result<()> {
        let mut node_job = job.clone();
        node_job.run_token = String::new();
        StepDescription {
            version: DESCRIPTION_VERSION,
            report: StepDescription::report_path(&job.out_dir),
            job: node_job,
            host_env: passed_env(std::env::vars()),
            tools: step.tools.clone(),
        }
        .write(&self.description_path(job))?;
        if let Some(logs) = job.log.parent() {
            std::fs::create_dir_all(logs)?;
        }
        Ok(())
    }

    /// Submit (or submit again) `s`: start its job (its description is written).
    fn launch(&self, s: &mut Submitted) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(&s.report);
        s.before = self.queue.ids_with_comment(&s.req.comment);
        s.slurm_id = None;
        s.srun_exit = None;
        if self.setup.detached {
            s.slurm_id = Some(self.setup.client.submit_batch(&s.req, &self.setup.script)?);
        } else {
            s.srun = Some(self.setup.client.spawn_srun(&s.req, &s.messages)?);
        }
        Ok(())
    }

    /// Where job `id` stands: `None` while it runs.
    fn conclude(&mut self, id: u64) -> Option<JobResult> {
        let s = self.subs.get_mut(&id)?;
        if let Some(child) = &mut s.srun
            && s.srun_exit.is_none()
            && let Ok(Some(status)) = child.try_wait()
        {
            s.srun_exit = Some((status, Instant::now()));
        }
        let report_path = s.adopted.as_ref().map_or(&s.report, |(_, r)| r).clone();
        // Attached, srun exited 0: Slurm says the job completed; the node's report says the rest.
        if let Some((status, _)) = s.srun_exit
            && status.success()
            && let Ok(Some(report)) = NodeReport::read(&report_path)
        {
            return Some(self.finish_with_report(id, report, "COMPLETED"));
        }
        if s.slurm_id.is_none()
            && let Some(j) = self.queue.by_comment(&s.req.comment, &s.before)
        {
            s.slurm_id = Some(j.id.clone());
        }
        let listed = s
            .slurm_id
            .as_ref()
            .and_then(|sid| self.queue.job(sid))
            .cloned();
        if s.cancelled && (s.srun.is_none() || s.srun_exit.is_some()) {
            let what = s
                .slurm_id
                .as_ref()
                .map_or("its job".to_string(), |i| format!("Slurm job {i}"));
            return Some(Err(anyhow!("interrupted: {what} cancelled")));
        }
        let Some(listed) = listed else {
            if let Some((_, at)) = s.srun_exit
                && at.elapsed() > UNLISTED_GRACE
            {
                let said = std::fs::read_to_string(&s.messages).unwrap_or_default();
                return Some(Err(anyhow!(
                    "`srun` ended without a job Slurm lists: {}",
                    said.trim()
                )));
            }
            return None;
        };
        match listed.state.outcome() {
            JobOutcome::Running => None,
            JobOutcome::StepFinished => {
                // The srun of a finished job may still be reporting: let it.
                if s.srun.is_some() && s.srun_exit.is_none() {
                    return None;
                }
                match NodeReport::read(&report_path) {
                    Ok(Some(report)) => {
                        Some(self.finish_with_report(id, report, listed.state.name()))
                    }
                    Ok(None) => Some(Err(anyhow!(
                        "{} without a report from the node",
                        ended_message(&listed.id, &listed.state, &s.job.log, &s.req.slurm_log)
                    ))),
                    Err(e) => Some(Err(e)),
                }
            }
            JobOutcome::SlurmEnded { retry } => {
                let message =
                    ended_message(&listed.id, &listed.state, &s.job.log, &s.req.slurm_log);
                let retries = self.setup.steps.get(&s.job.step).map_or(0, |st| st.retries);
                if retry && s.tries < retries && s.adopted.is_none() {
                    s.tries += 1;
                    self.progress.event(&format!(
                        "{message}; submitting step {} again (retry {} of {retries})",
                        s.job.step, s.tries
                    ));
                    if s.part.is_none() {
                        let _ = crate::slurm::step_description::clear_dir(&s.job.out_dir);
                    }
                    let mut s = self.subs.remove(&id).expect("job");
                    let relaunched = self.launch(&mut s);
                    self.subs.insert(id, s);
                    return relaunched.err().map(Err);
                }
                Some(Err(anyhow!(message)))
            }
        }
    }

    fn finish_with_report(&self, id: u64, report: NodeReport, state: &str) -> JobResult {
        let s = &self.subs[&id];
        let job_id = s.slurm_id.as_deref().unwrap_or("?");
        let step = self
            .setup
            .steps
            .get(&s.job.step)
            .cloned()
            .unwrap_or_default();
        if !report.ok {
            return Err(anyhow!(
                "{} (Slurm job {job_id} on node `{}`, {state}; log: {})",
                report.error.as_deref().unwrap_or("the step failed"),
                report.host,
                s.job.log.display()
            ));
        }
        report.check_tools(&step.tools).map_err(|e| anyhow!(e))?;
        if s.part.is_none()
            && let Some((old, _)) = &s.adopted
        {
            crate::slurm::step_description::move_entries(old, &s.job.out_dir)?;
        }
        Ok(StepOutput {
            notes: report.notes,
            cpu_ms: None,
        })
    }

    /// All jobs of execution `id` concluded: its result. A step with parts gets
    /// the parts' logs gathered and its `finish_parts` run here.
    fn complete(&mut self, id: JobId) -> JobResult {
        let e = self.executions.remove(&id).expect("execution");
        // Every job of it has read it and ended.
        let _ = std::fs::remove_file(self.description_path(&e.job));
        let total = e.parts.len().max(1);
        let mut failures = e.failures.into_iter();
        if let Some(first) = failures.next() {
            let others = failures.count();
            if e.parts.is_empty() || others == 0 && total == 1 {
                return Err(first);
            }
            return Err(anyhow!(
                "{} of {total} matrix runs failed; the first: {first:#}",
                others + 1
            ));
        }
        if !e.interrupted.is_empty() {
            return Err(anyhow!(
                "interrupted: Slurm job{} {} cancelled",
                if e.interrupted.len() > 1 { "s" } else { "" },
                e.interrupted.join(", ")
            ));
        }
        if e.parts.is_empty() {
            return Ok(StepOutput {
                notes: e.notes,
                cpu_ms: None,
            });
        }
        for old in &e.adopted_from {
            merge_entries(old, &e.job.out_dir)?;
        }
        let logs: Vec<(String, PathBuf)> = e.parts.iter().cloned().zip(e.logs).collect();
        let finished = e.job.finish_parts(self.setup.registry, &logs)?;
        let mut notes = e.notes;
        notes.extend(finished.notes);
        Ok(StepOutput {
            notes,
            cpu_ms: None,
        })
    }

    /// Cancel the jobs `subs` (one `scancel`) and print their ids.
    fn cancel_subs(&mut self, subs: &[u64]) {
        // srun jobs learn their ids from the queue: ask once, now.
        if subs
            .iter()
            .any(|id| self.subs.get(id).is_some_and(|s| s.slurm_id.is_none()))
        {
            let _ = self.queue.refresh_now(&self.setup.client);
        }
        let mut ids = Vec::new();
        let mut named = Vec::new();
        for id in subs {
            let Some(s) = self.subs.get_mut(id) else {
                continue;
            };
            s.cancelled = true;
            if s.slurm_id.is_none()
                && let Some(j) = self.queue.by_comment(&s.req.comment, &s.before)
            {
                s.slurm_id = Some(j.id.clone());
            }
            match &s.slurm_id {
                Some(sid) => {
                    ids.push(sid.clone());
                    named.push(match &s.part {
                        None => format!("{sid} ({})", s.job.step),
                        Some((_, label)) => format!("{sid} ({} {label})", s.job.step),
                    });
                }
                // Not queued yet: killing its srun withdraws it.
                None => {
                    if let Some(child) = &mut s.srun {
                        let _ = child.kill();
                    }
                }
            }
        }
        if !ids.is_empty() {
            match self.setup.client.cancel(&ids) {
                Ok(()) => self
                    .progress
                    .event(&format!("cancelled Slurm jobs {}", named.join(", "))),
                Err(e) => self.progress.event(&format!(
                    "could not cancel Slurm jobs {}: {e:#}; cancel them with `scancel {}`",
                    named.join(", "),
                    ids.join(" ")
                )),
            }
        }
    }
}

impl Executor for SlurmExecutor<'_> {
    fn submit(&mut self, job: StepJob) -> anyhow::Result<JobId> {
        let step = self.setup.steps.get(&job.step).cloned().unwrap_or_default();
        let desc_path = self.description_path(&job);
        // The earlier run's description, read before this run's replaces it.
        let earlier = StepDescription::read(&desc_path).ok();
        let portions: Vec<Option<(usize, String)>> = if step.parts.is_empty() {
            vec![None]
        } else {
            step.parts.iter().cloned().enumerate().map(Some).collect()
        };
        let mut subs = Vec::new();
        let mut logs = Vec::new();
        let mut adopted_from = Vec::new();
        let mut described = false;
        for portion in portions {
            let index = portion.as_ref().map(|(i, _)| *i);
            let mut part_job = job.clone();
            let report = match index {
                None => StepDescription::report_path(&job.out_dir),
                Some(i) => {
                    part_job.log = StepDescription::part_log(&job.log, i);
                    StepDescription::part_report_path(&job.out_dir, i)
                }
            };
            let mut s = Submitted {
                report,
                messages: part_job.log.with_extension("srun.log"),
                req: self.request(&job, &step, &desc_path, index),
                job: part_job,
                part: portion,
                slurm_id: None,
                srun: None,
                srun_exit: None,
                tries: 0,
                adopted: None,
                cancelled: false,
                before: Vec::new(),
            };
            let old_report = earlier.as_ref().map(|old| match index {
                None => StepDescription::report_path(&old.job.out_dir),
                Some(i) => StepDescription::part_report_path(&old.job.out_dir, i),
            });
            let execution = s.req.comment.clone();
            let adoptable = match (self.orphans.get(&execution), &old_report) {
                (Some(o), Some(report)) if o.finished => {
                    matches!(NodeReport::read(report), Ok(Some(r)) if r.ok)
                        && earlier.as_ref().is_some_and(|d| d.job.out_dir.is_dir())
                }
                (Some(_), Some(_)) => true,
                _ => false,
            };
            if adoptable
                && let Some(old) = &earlier
                && let Some(orphan) = self.orphans.remove(&execution)
            {
                let what = match &s.part {
                    None => format!("step {}", job.step),
                    Some((_, label)) => format!("step {} run {label}", job.step),
                };
                let how = if orphan.finished {
                    "same key, completed while no qflow watched it"
                } else {
                    "same key, still running"
                };
                self.progress.event(&format!(
                    "adopting Slurm job {} for {what} ({how})",
                    orphan.id
                ));
                s.slurm_id = Some(orphan.id);
                if let Some(i) = index {
                    s.job.log = StepDescription::part_log(&old.job.log, i);
                }
                s.adopted = Some((old.job.out_dir.clone(), old_report.expect("report path")));
                if !adopted_from.contains(&old.job.out_dir) {
                    adopted_from.push(old.job.out_dir.clone());
                }
            } else {
                if !described {
                    self.describe(&job, &step)?;
                    described = true;
                }
                if let Err(e) = self.launch(&mut s) {
                    // Nothing half-submitted stays behind: cancel the parts already out.
                    self.cancel_subs(&subs);
                    for id in subs {
                        if let Some(mut s) = self.subs.remove(&id)
                            && let Some(child) = &mut s.srun
                        {
                            let _ = child.kill();
                            let _ = child.wait();
                        }
                    }
                    return Err(e);
                }
            }
            logs.push(s.job.log.clone());
            let sub = self.next_sub;
            self.next_sub += 1;
            self.subs.insert(sub, s);
            subs.push(sub);
        }
        let id = JobId(self.next);
        self.next += 1;
        self.executions.insert(
            id,
            Execution {
                parts: step.parts.clone(),
                job,
                pending: subs,
                logs,
                notes: BTreeMap::new(),
                failures: Vec::new(),
                interrupted: Vec::new(),
                adopted_from,
            },
        );
        Ok(id)
    }

    fn check_active(&mut self, active: &[JobId]) -> Vec<(JobId, JobResult)> {
        // The queue is asked only when some job needs Slurm's word, at most once a second.
        let needs_queue = active
            .iter()
            .filter_map(|id| self.executions.get(id))
            .flat_map(|e| e.pending.iter())
            .filter_map(|sub| self.subs.get(sub))
            .any(|s| {
                s.srun.is_none() || s.srun_exit.is_some() || s.slurm_id.is_none() && !s.cancelled
            });
        if needs_queue && let Err(e) = self.queue.refresh(&self.setup.client) {
            self.progress
                .event(&format!("cannot ask Slurm for job states: {e:#}"));
        }
        let mut done = Vec::new();
        for &id in active {
            let Some(pending) = self.executions.get(&id).map(|e| e.pending.clone()) else {
                continue;
            };
            let mut siblings_to_cancel = false;
            for sub in pending {
                let Some(result) = self.conclude(sub) else {
                    continue;
                };
                let Some(mut s) = self.subs.remove(&sub) else {
                    continue;
                };
                if let Some(child) = &mut s.srun {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                // Read: a later run must never adopt this job's result again.
                let _ = std::fs::remove_file(&s.report);
                if let Some((_, report)) = &s.adopted {
                    let _ = std::fs::remove_file(report);
                }
                let e = self.executions.get_mut(&id).expect("execution");
                e.pending.retain(|p| *p != sub);
                match result {
                    Ok(out) => e.notes.extend(out.notes),
                    Err(_) if s.cancelled => e
                        .interrupted
                        .push(s.slurm_id.clone().unwrap_or_else(|| "?".into())),
                    Err(err) => {
                        siblings_to_cancel = e.failures.is_empty() && !e.pending.is_empty();
                        e.failures.push(match &s.part {
                            None => err,
                            Some((_, label)) => anyhow!("run {label}: {err:#}"),
                        });
                    }
                }
            }
            if siblings_to_cancel {
                // One run failed: the step has failed, and its other runs would compute
                // what nobody records.
                let rest = self.executions[&id].pending.clone();
                self.cancel_subs(&rest);
            }
            if self.executions[&id].pending.is_empty() {
                let result = self.complete(id);
                done.push((id, result));
            }
        }
        done
    }

    fn cancel(&mut self, active: &[JobId]) {
        let subs: Vec<u64> = active
            .iter()
            .filter_map(|id| self.executions.get(id))
            .flat_map(|e| e.pending.iter().copied())
            .collect();
        self.cancel_subs(&subs);
    }

    fn poll_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(if self.setup.detached {
            250
        } else {
            50
        }))
    }
}

impl Drop for SlurmExecutor<'_> {
    /// Orphaned jobs this run did not adopt would compute what nobody records: cancel them.
    fn drop(&mut self) {
        let (ids, named): (Vec<String>, Vec<String>) = self
            .orphans
            .values()
            .filter(|o| !o.finished)
            .map(|o| (o.id.clone(), format!("{} ({})", o.id, o.comment)))
            .unzip();
        if ids.is_empty() {
            return;
        }
        if self.setup.client.cancel(&ids).is_ok() {
            self.progress.event(&format!(
                "cancelled Slurm jobs of an earlier run that this run did not need: {}",
                named.join(", ")
            ));
        }
    }
}
