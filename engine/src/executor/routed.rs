//! Two executors behind one: each step goes to the one its `executor:` names
//! (`local` threads or `slurm` jobs), and the run loop sees a single executor.
//!
//! Job ids are this executor's own; each maps to the inner executor and its id.
//! `check_active` asks each inner executor once about all of its jobs, so the
//! Slurm side still makes one batched query.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::{Executor, JobId, JobResult, StepJob};

/// Routes step jobs to `local` or `remote` by step name.
pub struct Routed<L, R> {
    local: L,
    remote: R,
    /// Steps that run on `remote`.
    remote_steps: HashSet<String>,
    next: u64,
    /// Our id → (on remote, inner id).
    inner: HashMap<JobId, (bool, JobId)>,
}

impl<L: Executor, R: Executor> Routed<L, R> {
    /// An executor that hands `remote_steps` to `remote` and every other step to `local`.
    pub fn new(local: L, remote: R, remote_steps: HashSet<String>) -> Self {
        Routed {
            local,
            remote,
            remote_steps,
            next: 0,
            inner: HashMap::new(),
        }
    }

    /// The executor that runs remote steps.
    pub fn remote(&self) -> &R {
        &self.remote
    }

    fn split(&self, active: &[JobId]) -> (Vec<JobId>, Vec<JobId>) {
        let (mut l, mut r) = (Vec::new(), Vec::new());
        for id in active {
            match self.inner.get(id) {
                Some((true, inner)) => r.push(*inner),
                Some((false, inner)) => l.push(*inner),
                None => {}
            }
        }
        (l, r)
    }

    fn outer(&self, remote: bool, inner: JobId) -> Option<JobId> {
        self.inner
            .iter()
            .find(|(_, (r, i))| *r == remote && *i == inner)
            .map(|(o, _)| *o)
    }
}

impl<L: Executor, R: Executor> Executor for Routed<L, R> {
    fn submit(&mut self, job: StepJob) -> anyhow::Result<JobId> {
        let remote = self.remote_steps.contains(&job.step);
        let inner = if remote {
            self.remote.submit(job)?
        } else {
            self.local.submit(job)?
        };
        let id = JobId(self.next);
        self.next += 1;
        self.inner.insert(id, (remote, inner));
        Ok(id)
    }

    fn check_active(&mut self, active: &[JobId]) -> Vec<(JobId, JobResult)> {
        let (l, r) = self.split(active);
        let mut done = Vec::new();
        for (remote, finished) in [
            (
                false,
                if l.is_empty() {
                    Vec::new()
                } else {
                    self.local.check_active(&l)
                },
            ),
            (
                true,
                if r.is_empty() {
                    Vec::new()
                } else {
                    self.remote.check_active(&r)
                },
            ),
        ] {
            for (inner, result) in finished {
                if let Some(outer) = self.outer(remote, inner) {
                    self.inner.remove(&outer);
                    done.push((outer, result));
                }
            }
        }
        done
    }

    fn cancel(&mut self, active: &[JobId]) {
        let (l, r) = self.split(active);
        if !l.is_empty() {
            self.local.cancel(&l);
        }
        if !r.is_empty() {
            self.remote.cancel(&r);
        }
    }

    fn poll_interval(&self) -> Option<Duration> {
        let has_remote = self.inner.values().any(|(r, _)| *r);
        match (
            self.local.poll_interval(),
            has_remote.then(|| self.remote.poll_interval()).flatten(),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
