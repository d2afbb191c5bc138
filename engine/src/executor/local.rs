//! The in-process executor: each job runs [`StepJob::run`] on a thread of its
//! own. Steps are blocking work (make, QEMU), so they get threads, not rayon
//! tasks. Threads are scoped to the run, so they may borrow the registry of
//! kinds; each job has its own process groups, so a cancel kills exactly the
//! processes of the jobs it names.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::Scope;

use super::{Executor, JobId, JobResult, StepJob, Wake};
use crate::context::{ProcessGroups, ProgressSink};
use crate::step::Registry;

/// Runs each step on a thread of this process.
pub struct LocalExecutor<'scope, 'env> {
    scope: &'scope Scope<'scope, 'env>,
    registry: &'env Registry,
    progress: Arc<dyn ProgressSink>,
    wake: Wake,
    next: u64,
    groups: HashMap<JobId, ProcessGroups>,
    finished: Arc<Mutex<HashMap<JobId, JobResult>>>,
}

impl<'scope, 'env> LocalExecutor<'scope, 'env> {
    /// An executor whose threads live in `scope`; steps' progress text goes to
    /// `progress`, and `wake` is called whenever a job finishes.
    pub fn new(
        scope: &'scope Scope<'scope, 'env>,
        registry: &'env Registry,
        progress: Arc<dyn ProgressSink>,
        wake: Wake,
    ) -> Self {
        LocalExecutor {
            scope,
            registry,
            progress,
            wake,
            next: 0,
            groups: HashMap::new(),
            finished: Arc::default(),
        }
    }
}

impl Executor for LocalExecutor<'_, '_> {
    fn submit(&mut self, job: StepJob) -> anyhow::Result<JobId> {
        let id = JobId(self.next);
        self.next += 1;
        let groups = ProcessGroups::new();
        self.groups.insert(id, groups.clone());
        let registry = self.registry;
        let progress = self.progress.clone();
        let finished = self.finished.clone();
        let wake = self.wake.clone();
        std::thread::Builder::new()
            .name(format!("step {}", job.step))
            .spawn_scoped(self.scope, move || {
                let result = job.run(registry, progress, groups);
                finished.lock().unwrap().insert(id, result);
                wake.wake();
            })?;
        Ok(id)
    }

    fn check_active(&mut self, active: &[JobId]) -> Vec<(JobId, JobResult)> {
        let mut finished = self.finished.lock().unwrap();
        let done: Vec<(JobId, JobResult)> = active
            .iter()
            .filter_map(|id| finished.remove(id).map(|r| (*id, r)))
            .collect();
        for (id, _) in &done {
            self.groups.remove(id);
        }
        done
    }

    fn cancel(&mut self, active: &[JobId]) {
        for id in active {
            if let Some(groups) = self.groups.get(id) {
                groups.cancel_all();
            }
        }
    }
}
