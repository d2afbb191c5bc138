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
//! The node's report is checked here: its tool identities must be those of the
//! step key. The run loop then records the output as for every executor.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;

use super::{Executor, JobId, JobResult, StepJob, StepOutput};
use crate::progress::Progress;
use crate::slurm::client::SlurmClient;
use crate::slurm::job_request::{JobRequest, job_comment, parse_comment};
use crate::slurm::job_state::{JobOutcome, ended_message};
use crate::slurm::queue::Queue;
use crate::slurm::resources::{ClusterSettings, Resources};
use crate::slurm::step_description::{
    DESCRIPTION_VERSION, NodeReport, StepDescription, passed_env,
};

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
}

/// Everything the Slurm executor needs, made before the run.
pub struct SlurmSetup {
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

struct Submitted {
    job: StepJob,
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

/// Runs step jobs as Slurm jobs.
pub struct SlurmExecutor {
    setup: SlurmSetup,
    progress: Arc<Progress>,
    queue: Queue,
    next: u64,
    jobs: HashMap<JobId, Submitted>,
    /// Jobs a killed coordinator left running, by step key: (Slurm id, comment).
    orphans: HashMap<String, (String, String)>,
}

impl SlurmExecutor {
    /// An executor for `setup`; lists the workflow's jobs once to find orphans.
    pub fn new(setup: SlurmSetup, progress: Arc<Progress>) -> anyhow::Result<SlurmExecutor> {
        let mut queue = Queue::new(&setup.name);
        queue.refresh(&setup.client)?;
        let orphans: HashMap<String, (String, String)> = queue
            .active()
            .into_iter()
            .filter_map(|j| {
                let (_, key) = parse_comment(&j.comment)?;
                Some((key.to_string(), (j.id.clone(), j.comment.clone())))
            })
            .collect();
        if !orphans.is_empty() {
            let mut ids: Vec<&str> = orphans.values().map(|(id, _)| id.as_str()).collect();
            ids.sort();
            progress.event(&format!(
                "found Slurm jobs {} of an earlier run still running: adopting those this run needs",
                ids.join(", ")
            ));
        }
        Ok(SlurmExecutor {
            setup,
            progress,
            queue,
            next: 0,
            jobs: HashMap::new(),
            orphans,
        })
    }

    /// How many `squeue` calls this executor made.
    pub fn squeue_calls(&self) -> u64 {
        self.queue.calls()
    }

    fn request(&self, job: &StepJob, step: &SlurmStep, desc: &Path) -> JobRequest {
        JobRequest {
            name: self.setup.name.clone(),
            comment: job_comment(&job.step, &job.key.to_hex()),
            cpus: step.resources.cpus.unwrap_or(job.jobs).max(1),
            resources: step.resources.clone(),
            cluster: self.setup.cluster.clone(),
            slurm_log: job.log.with_extension("slurm.log"),
            work_dir: job.work_dir.clone(),
            command: vec![
                self.setup.qflow.clone().into(),
                "__run-step".into(),
                desc.into(),
            ],
        }
    }

    /// Submit (or submit again) `s`: write its description and start its job.
    fn launch(&self, s: &mut Submitted) -> anyhow::Result<()> {
        let desc_path = self.setup.dir.join(format!("{}.json", s.job.key.to_hex()));
        let step = self
            .setup
            .steps
            .get(&s.job.step)
            .cloned()
            .unwrap_or_default();
        let mut job = s.job.clone();
        job.run_token = String::new();
        StepDescription {
            version: DESCRIPTION_VERSION,
            job,
            host_env: passed_env(std::env::vars()),
            tools: step.tools.clone(),
            report: s.report.clone(),
        }
        .write(&desc_path)?;
        let _ = std::fs::remove_file(&s.report);
        if let Some(logs) = s.job.log.parent() {
            std::fs::create_dir_all(logs)?;
        }
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

    /// Where job `s` stands: `None` while it runs.
    fn conclude(&mut self, id: JobId) -> Option<JobResult> {
        let s = self.jobs.get_mut(&id)?;
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
                    let _ = crate::slurm::step_description::clear_dir(&s.job.out_dir);
                    let mut s = self.jobs.remove(&id).expect("job");
                    let relaunched = self.launch(&mut s);
                    self.jobs.insert(id, s);
                    return relaunched.err().map(Err);
                }
                Some(Err(anyhow!(message)))
            }
        }
    }

    fn finish_with_report(&self, id: JobId, report: NodeReport, state: &str) -> JobResult {
        let s = &self.jobs[&id];
        let job_id = s.slurm_id.as_deref().unwrap_or("?");
        let step = self
            .setup
            .steps
            .get(&s.job.step)
            .cloned()
            .unwrap_or_default();
        if !report.ok {
            return Err(anyhow!(
                "{} (Slurm job {job_id} on node `{}`, {state})",
                report.error.as_deref().unwrap_or("the step failed"),
                report.host
            ));
        }
        report.check_tools(&step.tools).map_err(|e| anyhow!(e))?;
        if let Some((old, _)) = &s.adopted {
            crate::slurm::step_description::move_entries(old, &s.job.out_dir)?;
        }
        Ok(StepOutput {
            notes: report.notes,
        })
    }
}

impl Executor for SlurmExecutor {
    fn submit(&mut self, job: StepJob) -> anyhow::Result<JobId> {
        let step = self.setup.steps.get(&job.step).cloned().unwrap_or_default();
        let desc_path = self.setup.dir.join(format!("{}.json", job.key.to_hex()));
        let req = self.request(&job, &step, &desc_path);
        let mut s = Submitted {
            report: StepDescription::report_path(&job.out_dir),
            messages: job.log.with_extension("srun.log"),
            req,
            job,
            slurm_id: None,
            srun: None,
            srun_exit: None,
            tries: 0,
            adopted: None,
            cancelled: false,
            before: Vec::new(),
        };
        if let Some((sid, _)) = self.orphans.remove(&s.job.key.to_hex())
            && let Ok(old) = StepDescription::read(&desc_path)
        {
            self.progress.event(&format!(
                "adopting Slurm job {sid} for step {} (same key, still running)",
                s.job.step
            ));
            s.slurm_id = Some(sid);
            s.adopted = Some((old.job.out_dir, old.report));
        } else {
            self.launch(&mut s)?;
        }
        let id = JobId(self.next);
        self.next += 1;
        self.jobs.insert(id, s);
        Ok(id)
    }

    fn check_active(&mut self, active: &[JobId]) -> Vec<(JobId, JobResult)> {
        // The queue is asked only when some job needs Slurm's word, at most once a second.
        let needs_queue = active.iter().any(|id| {
            self.jobs.get(id).is_some_and(|s| {
                s.srun.is_none() || s.srun_exit.is_some() || s.slurm_id.is_none() && !s.cancelled
            })
        });
        if needs_queue && let Err(e) = self.queue.refresh(&self.setup.client) {
            self.progress
                .event(&format!("cannot ask Slurm for job states: {e:#}"));
        }
        let mut done = Vec::new();
        for &id in active {
            if let Some(result) = self.conclude(id) {
                if let Some(mut s) = self.jobs.remove(&id)
                    && let Some(child) = &mut s.srun
                {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                done.push((id, result));
            }
        }
        done
    }

    fn cancel(&mut self, active: &[JobId]) {
        // srun jobs learn their ids from the queue: ask once, now.
        if active
            .iter()
            .any(|id| self.jobs.get(id).is_some_and(|s| s.slurm_id.is_none()))
        {
            let _ = self.queue.refresh_now(&self.setup.client);
        }
        let mut ids = Vec::new();
        let mut named = Vec::new();
        for id in active {
            let Some(s) = self.jobs.get_mut(id) else {
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
                    named.push(format!("{sid} ({})", s.job.step));
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

    fn poll_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(if self.setup.detached {
            250
        } else {
            50
        }))
    }
}

impl Drop for SlurmExecutor {
    /// Orphaned jobs this run did not adopt would compute what nobody records: cancel them.
    fn drop(&mut self) {
        if self.orphans.is_empty() {
            return;
        }
        let (ids, named): (Vec<String>, Vec<String>) = self
            .orphans
            .values()
            .map(|(id, comment)| (id.clone(), format!("{id} ({comment})")))
            .unzip();
        if self.setup.client.cancel(&ids).is_ok() {
            self.progress.event(&format!(
                "cancelled Slurm jobs of an earlier run that this run did not need: {}",
                named.join(", ")
            ));
        }
    }
}
