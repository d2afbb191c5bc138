//! The seam between the run loop and whatever runs a step's body: a thread of
//! this process today ([`local::LocalExecutor`]), a batch system or another
//! host tomorrow, each in a file of its own.
//!
//! The contract (modelled on Snakemake's executor plugins):
//! - [`Executor::submit`] takes a self-contained [`StepJob`] and returns a
//!   [`JobId`] at once; the step runs in the background.
//! - [`Executor::check_active`] is asked about ALL active jobs together (a
//!   batch executor makes one status query for the batch) and returns those
//!   that finished, each with its [`JobResult`]. A job reported `Ok` has left
//!   its complete output tree in the job's `out_dir`, visible to this process
//!   (an executor on another host copies it back first). The run loop then
//!   checks and records that tree itself, the same way for every executor
//!   (`recorder.rs`): no executor commits trees or writes records.
//! - [`Executor::cancel`] stops a batch of active jobs (an interrupt); they
//!   are still reported by `check_active` later, as failed.
//! - An executor that learns of finished jobs by itself calls the [`Wake`] it
//!   was built with, so the run loop asks at once; one that must poll says how
//!   often through [`Executor::poll_interval`].
//!
//! The run loop never learns whether a job is a thread or a batch job. Where a
//! remote *cache* enters is elsewhere: `Run::lookup` in `run.rs` is the one
//! question "is there a usable result for this key". Imports `step_job`
//! (and, for the local executor, `context` and `step`).

pub mod local;
pub mod routed;
pub mod slurm;

use std::sync::Arc;
use std::time::Duration;

pub use crate::step_job::{StepJob, StepOutput};

/// An executor's handle on one submitted job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub u64);

/// How a job ended: its output, or why it failed.
pub type JobResult = anyhow::Result<StepOutput>;

/// Runs step jobs somewhere and reports when they finish.
pub trait Executor {
    /// Start `job`; return at once.
    fn submit(&mut self, job: StepJob) -> anyhow::Result<JobId>;

    /// Of the `active` jobs, those that have finished, with their results.
    fn check_active(&mut self, active: &[JobId]) -> Vec<(JobId, JobResult)>;

    /// Stop the `active` jobs (an interrupt); they finish as failed.
    fn cancel(&mut self, active: &[JobId]);

    /// How often the run loop should call [`Executor::check_active`] when the
    /// executor does not [`Wake`] it (`None`: it always does).
    fn poll_interval(&self) -> Option<Duration> {
        None
    }
}

/// Tells the run loop that some job may have finished.
#[derive(Clone)]
pub struct Wake(Arc<dyn Fn() + Send + Sync>);

impl Wake {
    /// A wake that calls `f`.
    pub fn new(f: impl Fn() + Send + Sync + 'static) -> Wake {
        Wake(Arc::new(f))
    }

    /// Wake the run loop.
    pub fn wake(&self) {
        (self.0)()
    }
}
