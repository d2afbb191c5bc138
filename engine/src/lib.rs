//! qflow's engine: the workflow model, its validation, the DAG of steps, step keys,
//! the stat cache, the run loop and its executors, progress, logs and the run record.
//!
//! It knows no step kind and nothing about QEMU: kinds implement [`step::Step`]
//! in the `qflow-steps` crate and are registered by the binary.
//!
//! Modules import each other without cycles, lowest first (each module's
//! `//!` header says what it imports):
//! - leaves (import nothing of the engine): `dag`, `paths`, `step_log`, `field_error`,
//!   `cgroup`, `leftovers` (→ `cgroup`), `masking`, `glob`, `interpolate`, `source_map`, `stat_cache`, `step_key`,
//!   `timings`, `lockfile`, `input_entry`, `run_record`, `estimate`, `control_echo`;
//! - results (metrics, tables, figures' data; → `field_error`): `results`;
//! - a step's programs and the kinds' contract: `process` → `context` → `step`
//!   (→ `results` for a step's metrics);
//! - workflows: `diagnostic`, `yaml_error`, `workflow` (→ `dag`), `workflow_memo` (→ `workflow`,
//!   holds `Workflow::load`), `selection` (targets, `--force`; → `workflow`);
//! - inputs: `tree_walk`, `tree_index`, `inputs` (→ `tree_index`), `input_digests`, `tool_identity`;
//! - a workflow opened on its cache: `progress`, `session`, `out_links`, `plan`;
//! - a run: `schedule` (step states, → `dag`), `step_job` and `executor` (the
//!   seam), `recorder`, `failure_report`, `remote_use` (→ `workflow`: what a remote
//!   cache is asked and given), `run` (the loop), `scheduler` (`apply`).

#![warn(missing_docs)]

pub mod context;
pub mod control_echo;
// The kinds' contract documents its own items as it grows; until every one
// has its doc comment, missing ones are not warned about here.
#[allow(missing_docs)]
pub mod step;

pub use context::RunContext;
pub use refusal::Refusal;
pub use step::{
    CheckContext, FieldError, HostNeed, Input, KindOf, KvmUse, OutputRole, Registry, Requirement,
    SecretSource, SecretUse, Step, StepFields, StepKind, StepRef, Tool,
};
pub mod bundle;
pub mod cgroup;
pub mod dag;
pub mod diagnostic;
pub mod estimate;
pub mod executor;
pub mod failure_report;
pub mod field_error;
pub mod glob;
pub mod input_digests;
pub mod input_entry;
pub mod input_stamp;
pub mod inputs;
pub mod interpolate;
pub mod job_slots;
pub mod leftovers;
pub mod lock_source;
pub mod lock_spill;
pub mod lockfile;
pub mod masking;
pub mod out_links;
pub mod paths;
pub mod plan;
pub mod process;
pub mod progress;
pub mod recorder;
pub mod refusal;
pub mod remote_use;
pub mod results;
pub mod run;
pub mod run_record;
pub mod schedule;
pub mod scheduler;
pub mod selection;
pub mod session;
pub mod slurm;
pub mod source_map;
pub mod spawn;
pub mod stat_cache;
pub mod state_dir;
pub mod step_job;
pub mod step_key;
pub mod step_log;
pub mod str_list;
pub mod timings;
pub mod tool_identity;
pub mod tree_index;
pub mod tree_walk;
pub mod verify;
pub mod workflow;
pub mod workflow_memo;
pub mod workflow_schema;
pub mod yaml_error;
pub mod yaml_pieces;

/// The host lacks what some step needs (a tool, a secret file, root, a module).
/// Found before anything runs; the binary exits 2 on it.
#[derive(Debug)]
pub struct HostNotReady {
    /// Each problem, in the user's words, saying what to do.
    pub problems: Vec<String>,
}

impl std::fmt::Display for HostNotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the host is not ready; nothing was run:")?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for HostNotReady {}
