//! The coordinator's view of its jobs: one `squeue` call for all of them, at most
//! once a second, whatever their number.
//!
//! A matrix of hundreds of jobs polled one `squeue` each would cost the shared
//! controller hundreds of RPCs a second; here the whole workflow's jobs come back
//! from one call (they share one job name), and a caller asking sooner than a
//! second after the last call gets the last answer. `calls` counts the calls, so
//! a benchmark can report the rate.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::client::{QueuedJob, SlurmClient};

/// The least time between two `squeue` calls.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The jobs of one workflow (one job name), as last listed.
pub struct Queue {
    name: String,
    interval: Duration,
    last: Option<Instant>,
    jobs: BTreeMap<String, QueuedJob>,
    calls: u64,
}

impl Queue {
    /// A queue of the jobs named `name`, nothing known yet.
    pub fn new(name: &str) -> Queue {
        Queue::with_interval(name, POLL_INTERVAL)
    }

    /// A queue polled at most once per `interval` (tests; never below a second on a real cluster).
    pub fn with_interval(name: &str, interval: Duration) -> Queue {
        Queue {
            name: name.to_string(),
            interval,
            last: None,
            jobs: BTreeMap::new(),
            calls: 0,
        }
    }

    /// The job name every job of this workflow carries.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// When the next `squeue` call is allowed.
    pub fn next_poll(&self) -> Instant {
        self.last.map_or_else(Instant::now, |l| l + self.interval)
    }

    /// List the jobs again if a poll is due; returns whether it called `squeue`.
    pub fn refresh(&mut self, client: &SlurmClient) -> anyhow::Result<bool> {
        if self.last.is_some_and(|l| l.elapsed() < self.interval) {
            return Ok(false);
        }
        self.last = Some(Instant::now());
        self.calls += 1;
        let jobs = client.list(&self.name)?;
        // Slurm forgets finished jobs after MinJobAge: keep their last known state.
        for j in jobs {
            self.jobs.insert(j.id.clone(), j);
        }
        Ok(true)
    }

    /// List the jobs now, whatever the time since the last call (a cancel).
    pub fn refresh_now(&mut self, client: &SlurmClient) -> anyhow::Result<()> {
        self.last = None;
        self.refresh(client).map(|_| ())
    }

    /// The last known state of job `id`.
    pub fn job(&self, id: &str) -> Option<&QueuedJob> {
        self.jobs.get(id)
    }

    /// The newest job whose comment is `comment` and whose id is not in `before`
    /// (the jobs listed with that comment before this one was submitted): an srun
    /// job, whose id qflow learns only from the queue.
    pub fn by_comment(&self, comment: &str, before: &[String]) -> Option<&QueuedJob> {
        self.jobs
            .values()
            .filter(|j| j.comment == comment && !before.contains(&j.id))
            .max_by_key(|j| j.id.parse::<u64>().unwrap_or(0))
    }

    /// The ids of every job listed with `comment`.
    pub fn ids_with_comment(&self, comment: &str) -> Vec<String> {
        self.jobs
            .values()
            .filter(|j| j.comment == comment)
            .map(|j| j.id.clone())
            .collect()
    }

    /// Every job listed that has not ended.
    pub fn active(&self) -> Vec<&QueuedJob> {
        self.jobs.values().filter(|j| j.state.is_active()).collect()
    }

    /// Every job the last `squeue` listed.
    pub fn all(&self) -> impl Iterator<Item = &QueuedJob> {
        self.jobs.values()
    }

    /// How many times `squeue` was called.
    pub fn calls(&self) -> u64 {
        self.calls
    }
}
