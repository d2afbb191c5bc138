//! Where a step runs: `executor: local | slurm` (workflow level and per step),
//! the workflow's `slurm:` block, and per step `resources:` and `retries:`.
//!
//! None of it enters the step key: it changes where a step runs, not what it
//! computes, so a result computed on the cluster is a cache hit for a local apply
//! on the same cache and the other way round. Parsed here so that the workflow
//! loader only hands over the mappings and collects the diagnostics.

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use super::resources::{ClusterSettings, Resources};
use crate::diagnostic::Diagnostics;

/// Where steps run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorChoice {
    /// Threads of the `qflow apply` process.
    #[default]
    Local,
    /// Slurm jobs.
    Slurm,
}

impl ExecutorChoice {
    /// `local` or `slurm`.
    pub fn parse(text: &str) -> Option<ExecutorChoice> {
        match text {
            "local" => Some(ExecutorChoice::Local),
            "slurm" => Some(ExecutorChoice::Slurm),
            _ => None,
        }
    }

    /// The word users write.
    pub fn name(self) -> &'static str {
        match self {
            ExecutorChoice::Local => "local",
            ExecutorChoice::Slurm => "slurm",
        }
    }
}

/// The workflow-level `executor:` and `slurm:`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkflowPlacement {
    /// `executor:` as written (default local).
    pub executor: Option<ExecutorChoice>,
    /// The `slurm:` block.
    pub slurm: ClusterSettings,
}

/// A step's `executor:`, `resources:` and `retries:`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepPlacement {
    /// `executor:` as written (None: the workflow's, or `--executor`).
    pub executor: Option<ExecutorChoice>,
    /// What the step asks of the cluster.
    pub resources: Resources,
    /// Submit again this many times after `NODE_FAIL` or `PREEMPTED`.
    pub retries: u32,
}

impl StepPlacement {
    /// Boxed, unless all at their defaults (a step keeps none then).
    pub fn boxed(self) -> Option<Box<StepPlacement>> {
        (self != StepPlacement::default()).then(|| Box::new(self))
    }
}

/// Where step `placement` runs, given the workflow's and the command line's choice:
/// the step's own `executor:` first, then `--executor`, then the workflow's.
pub fn executor_for(
    step: &StepPlacement,
    workflow: &WorkflowPlacement,
    flag: Option<ExecutorChoice>,
) -> ExecutorChoice {
    step.executor
        .or(flag)
        .or(workflow.executor)
        .unwrap_or_default()
}

fn parse_executor(v: &Value, at: &str, diags: &mut Diagnostics) -> Option<ExecutorChoice> {
    match v {
        Value::String(s) if ExecutorChoice::parse(s).is_some() => ExecutorChoice::parse(s),
        other => {
            diags.at(
                at,
                format!(
                    "`executor` is `local` or `slurm`, not {}",
                    serde_yaml::to_string(other).unwrap_or_default().trim()
                ),
            );
            None
        }
    }
}

/// Read `executor:` and `slurm:` from the workflow's top-level mapping.
pub fn parse_workflow(top: &serde_yaml::Mapping, diags: &mut Diagnostics) -> WorkflowPlacement {
    let mut p = WorkflowPlacement::default();
    if let Some(v) = top.get("executor") {
        p.executor = parse_executor(v, "executor", diags);
    }
    if let Some(v) = top.get("slurm") {
        match serde_path_to_error::deserialize::<_, ClusterSettings>(v) {
            Ok(s) => match s.check() {
                Ok(()) => p.slurm = s,
                Err((field, msg)) => diags.at(&format!("slurm.{field}"), msg),
            },
            Err(e) => {
                let path = e.path().to_string();
                let at = if path == "." {
                    "slurm".to_string()
                } else {
                    format!("slurm.{path}")
                };
                diags.at(
                    &at,
                    format!(
                        "{}; the `slurm:` block takes `partition`, `account`, `qos` and `extra_args`",
                        e.into_inner()
                    ),
                );
            }
        }
    }
    p
}

/// Read `executor:`, `resources:` and `retries:` from a step's mapping (at `base`).
pub fn parse_step(
    fields: &serde_yaml::Mapping,
    base: &str,
    diags: &mut Diagnostics,
) -> StepPlacement {
    let mut p = StepPlacement::default();
    if let Some(v) = fields.get("executor") {
        p.executor = parse_executor(v, &format!("{base}.executor"), diags);
    }
    if let Some(v) = fields.get("resources") {
        match serde_path_to_error::deserialize::<_, Resources>(v) {
            Ok(r) => match r.check() {
                Ok(()) => p.resources = r,
                Err((field, msg)) => diags.at(&format!("{base}.resources.{field}"), msg),
            },
            Err(e) => {
                let path = e.path().to_string();
                let at = if path == "." {
                    format!("{base}.resources")
                } else {
                    format!("{base}.resources.{path}")
                };
                diags.at(
                    &at,
                    format!(
                        "{}; `resources` takes `cpus`, `memory`, `time`, `gpus`, `constraint` and `partition`",
                        e.into_inner()
                    ),
                );
            }
        }
    }
    match fields.get("retries") {
        None => {}
        Some(Value::Number(n)) if n.as_u64().is_some_and(|r| r <= 100) => {
            p.retries = n.as_u64().unwrap() as u32;
        }
        Some(_) => diags.at(
            &format!("{base}.retries"),
            "`retries` is a whole number from 0 to 100: how often to submit again after a node \
             failure or preemption",
        ),
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steps_choice_wins_then_the_flag_then_the_workflows() {
        let wf = WorkflowPlacement {
            executor: Some(ExecutorChoice::Slurm),
            ..Default::default()
        };
        let mut step = StepPlacement::default();
        assert_eq!(executor_for(&step, &wf, None), ExecutorChoice::Slurm);
        assert_eq!(
            executor_for(&step, &wf, Some(ExecutorChoice::Local)),
            ExecutorChoice::Local
        );
        step.executor = Some(ExecutorChoice::Slurm);
        assert_eq!(
            executor_for(&step, &wf, Some(ExecutorChoice::Local)),
            ExecutorChoice::Slurm
        );
        assert_eq!(
            executor_for(
                &StepPlacement::default(),
                &WorkflowPlacement::default(),
                None
            ),
            ExecutorChoice::Local
        );
    }
}
