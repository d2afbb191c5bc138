//! Running steps as Slurm jobs: the client side (requests, states, the batched
//! queue, preflight checks) and the node side (`qflow __run-step`).
//!
//! The coordinator (`qflow apply` on a login node) keeps the DAG, the scheduler,
//! every record and the lock file. One step execution is one Slurm job running
//! `qflow __run-step <description>` on a node; the node writes the outputs into
//! the cache's staging area on the shared file system and reports; only the
//! coordinator checks and records them. Nothing here knows a step kind or QEMU.

pub mod client;
pub mod job_request;
pub mod job_state;
pub mod node;
pub mod placement;
pub mod preflight;
pub mod queue;
pub mod resources;
pub mod setup;
pub mod step_description;

pub use client::{QueuedJob, SlurmClient};
pub use job_request::{JobRequest, job_comment, job_name, parse_comment, part_comment};
pub use job_state::{JobOutcome, JobState, ended_message};
pub use queue::Queue;
pub use resources::{ClusterSettings, Resources};
pub use step_description::{NodeReport, StepDescription};

use std::path::{Path, PathBuf};

/// Where qflow keeps its Slurm files in a cache: descriptions, the batch script, probes.
pub fn slurm_dir(cache_root: &Path) -> PathBuf {
    cache_root.join("state").join("slurm")
}

/// Write the fixed batch script ([`job_request::BATCH_SCRIPT`]) under `dir` when it
/// is missing or differs, and return its path.
pub fn batch_script(dir: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("batch.sh");
    if std::fs::read(&path).ok().as_deref() != Some(job_request::BATCH_SCRIPT.as_bytes()) {
        std::fs::create_dir_all(dir)?;
        qflow_cache::write_atomic(&path, job_request::BATCH_SCRIPT.as_bytes())?;
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}
