//! qflow's engine: the workflow model, its validation, the DAG of steps, step keys,
//! the stat cache, the scheduler, progress, logs and the run record.
//!
//! It knows no step kind and nothing about QEMU: kinds implement [`step::Step`]
//! in the `qflow-steps` crate and are registered by the binary.

pub mod context;
pub mod step;

pub use context::RunContext;
pub use step::{CheckContext, FieldError, Input, KindOf, Registry, Requirement, Step, StepFields, StepKind, StepRef, Tool};
