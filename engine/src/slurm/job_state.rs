//! Slurm's job states, as `squeue -t all -o %T` prints them, and what each means
//! for the step the job runs.
//!
//! A job is active until it reaches a final state. `COMPLETED` and `FAILED` are
//! the step's own doing (the node's report says what happened); every other final
//! state is something Slurm did to it (a time limit, a node failure, preemption,
//! an admin's `scancel`, the memory limit), and the step fails with a message
//! naming the job, the state and the log. Only `NODE_FAIL` and `PREEMPTED` are
//! worth submitting again: the same step on a healthy node may well succeed,
//! while a step that timed out or failed on its own would do it again.

use std::path::Path;

/// One job's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Waiting, starting, running, finishing, suspended or requeued: not final.
    Active(String),
    /// Ended with exit status 0.
    Completed,
    /// The job's command exited non-zero.
    Failed,
    /// Ran past its time limit.
    Timeout,
    /// Its node failed.
    NodeFail,
    /// Preempted by a job of higher priority.
    Preempted,
    /// Cancelled (`scancel`, by qflow or an admin).
    Cancelled,
    /// Killed for using more memory than it asked for.
    OutOfMemory,
    /// Any other final state (`BOOT_FAIL`, `DEADLINE`, ...), as Slurm names it.
    OtherEnd(String),
}

/// The states squeue shows for jobs that have not ended.
const ACTIVE: &[&str] = &[
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
    "RESV_DEL_HOLD",
];

impl JobState {
    /// Parse squeue's `%T` (`RUNNING`, `TIMEOUT`, ...); sacct-style suffixes
    /// (`CANCELLED by 0`, `CANCELLED+`) are accepted too.
    pub fn parse(text: &str) -> JobState {
        let word = text
            .split_whitespace()
            .next()
            .unwrap_or("")
            .trim_end_matches('+')
            .to_ascii_uppercase();
        match word.as_str() {
            "COMPLETED" => JobState::Completed,
            "FAILED" => JobState::Failed,
            "TIMEOUT" => JobState::Timeout,
            "NODE_FAIL" => JobState::NodeFail,
            "PREEMPTED" => JobState::Preempted,
            "CANCELLED" => JobState::Cancelled,
            "OUT_OF_MEMORY" => JobState::OutOfMemory,
            w if ACTIVE.contains(&w) => JobState::Active(word),
            _ => JobState::OtherEnd(word),
        }
    }

    /// Whether the job is queued or running (not ended).
    pub fn is_active(&self) -> bool {
        matches!(self, JobState::Active(_))
    }

    /// Slurm's name for the state.
    pub fn name(&self) -> &str {
        match self {
            JobState::Active(s) | JobState::OtherEnd(s) => s,
            JobState::Completed => "COMPLETED",
            JobState::Failed => "FAILED",
            JobState::Timeout => "TIMEOUT",
            JobState::NodeFail => "NODE_FAIL",
            JobState::Preempted => "PREEMPTED",
            JobState::Cancelled => "CANCELLED",
            JobState::OutOfMemory => "OUT_OF_MEMORY",
        }
    }

    /// What the end of a job means for its step.
    pub fn outcome(&self) -> JobOutcome {
        match self {
            JobState::Active(_) => JobOutcome::Running,
            JobState::Completed | JobState::Failed => JobOutcome::StepFinished,
            JobState::NodeFail | JobState::Preempted => JobOutcome::SlurmEnded { retry: true },
            _ => JobOutcome::SlurmEnded { retry: false },
        }
    }
}

/// What a job's state means for the step it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    /// Not final yet.
    Running,
    /// The step ran to its end (success or its own failure): read the node's report.
    StepFinished,
    /// Slurm ended the job; `retry` when submitting again may succeed.
    SlurmEnded {
        /// A new submission may succeed.
        retry: bool,
    },
}

/// The failure message for a job Slurm ended: job id, state, what it means and
/// where the logs are.
pub fn ended_message(job: &str, state: &JobState, log: &Path, slurm_log: &Path) -> String {
    let why = match state {
        JobState::Timeout => "it ran past its time limit (`resources.time`); raise the limit",
        JobState::NodeFail => "its node failed; `retries:` submits such a step again",
        JobState::Preempted => {
            "a job of higher priority preempted it; `retries:` submits such a step again"
        }
        JobState::Cancelled => "it was cancelled (`scancel` by a user or an administrator)",
        JobState::OutOfMemory => "it ran out of memory; raise `resources.memory`",
        JobState::Failed => "its command failed",
        _ => "Slurm ended it",
    };
    format!(
        "Slurm job {job} ended {}: {why}; log: {} (Slurm's own output: {})",
        state.name(),
        log.display(),
        slurm_log.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_states_map_to_what_happened_to_the_step() {
        assert_eq!(JobState::parse("RUNNING").outcome(), JobOutcome::Running);
        assert_eq!(JobState::parse("PENDING").outcome(), JobOutcome::Running);
        assert_eq!(JobState::parse("COMPLETING").outcome(), JobOutcome::Running);
        assert_eq!(
            JobState::parse("COMPLETED").outcome(),
            JobOutcome::StepFinished
        );
        assert_eq!(
            JobState::parse("FAILED").outcome(),
            JobOutcome::StepFinished
        );
        for (state, retry) in [
            ("NODE_FAIL", true),
            ("PREEMPTED", true),
            ("TIMEOUT", false),
            ("CANCELLED", false),
            ("OUT_OF_MEMORY", false),
            ("BOOT_FAIL", false),
            ("DEADLINE", false),
        ] {
            assert_eq!(
                JobState::parse(state).outcome(),
                JobOutcome::SlurmEnded { retry },
                "{state}"
            );
            assert_eq!(JobState::parse(state).name(), state);
        }
    }

    #[test]
    fn sacct_spellings_parse_too() {
        assert_eq!(JobState::parse("CANCELLED by 0"), JobState::Cancelled);
        assert_eq!(JobState::parse("CANCELLED+"), JobState::Cancelled);
        assert_eq!(JobState::parse("timeout"), JobState::Timeout);
    }

    #[test]
    fn messages_name_job_state_and_logs() {
        let m = ended_message(
            "42",
            &JobState::Timeout,
            Path::new("/c/logs/r/k.log"),
            Path::new("/c/logs/r/k.slurm.log"),
        );
        assert!(m.contains("Slurm job 42 ended TIMEOUT"), "{m}");
        assert!(m.contains("/c/logs/r/k.log"), "{m}");
        assert!(m.contains("resources.time"), "{m}");
    }
}
