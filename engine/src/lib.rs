//! qflow's engine: the workflow model, its validation, the DAG of steps, step keys,
//! the stat cache, the scheduler, progress, logs and the run record.
//!
//! It knows no step kind and nothing about QEMU: kinds implement [`step::Step`]
//! in the `qflow-steps` crate and are registered by the binary.

pub mod context;
pub mod step;

pub use context::RunContext;
pub use step::{
    CheckContext, FieldError, Input, KindOf, Registry, Requirement, Step, StepFields, StepKind,
    StepRef, Tool,
};
pub mod dag;
pub mod diagnostic;
pub mod glob;
pub mod inputs;
pub mod interpolate;
pub mod leftovers;
pub mod lockfile;
pub mod out_links;
pub mod progress;
pub mod results;
pub mod scheduler;
pub mod session;
pub mod source_map;
pub mod stat_cache;
pub mod step_key;
pub mod tool_identity;
pub mod workflow;
pub mod workflow_memo;

/// The host lacks what some step needs (a tool, a secret file, root, a module).
/// Found before anything runs; the binary exits 2 on it.
#[derive(Debug)]
pub struct HostNotReady {
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
pub mod plan;
pub mod timings;
pub mod tree_index;
pub mod tree_walk;
