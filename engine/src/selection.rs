//! Which steps of a workflow one command works on: the targets named on the
//! command line (`qflow apply FILE STEP...`) and every step they need, and the
//! steps forced to run although their record is valid (`--force STEP`).
//!
//! Selecting removes the other steps from the loaded [`Workflow`] and remembers
//! their names: their lock entries are kept as they are, and `out/` is not
//! declared settled, since what the run did not look at was not checked.
//! A forced step runs once more under the same key; its dependents run only if
//! its output changes, as after any other run. Imports `workflow`, `diagnostic`
//! and `refusal`.

use std::collections::BTreeSet;

use crate::diagnostic::did_you_mean;
use crate::refusal::Refusal;
use crate::workflow::Workflow;

/// The part of a workflow one command works on.
#[derive(Debug, Default, Clone)]
pub struct Selection {
    /// The steps named on the command line (empty: none named).
    pub targets: Vec<String>,
    /// Steps of the file no target needs, left out of this run.
    pub left_out: Vec<String>,
    /// Steps that run even though their record is valid (`--force`).
    pub forced: BTreeSet<String>,
}

impl Selection {
    /// Whether step `name` runs whatever its record says.
    pub fn is_forced(&self, name: &str) -> bool {
        self.forced.contains(name)
    }

    /// Whether some steps of the file are left out.
    pub fn is_partial(&self) -> bool {
        !self.left_out.is_empty()
    }
}

/// A refusal for `name`, which names no step of `wf`; `what` says where the
/// name came from (`target`, `--force`).
pub fn unknown_step(wf: &Workflow, what: &str, name: &str) -> anyhow::Error {
    let names: Vec<&str> = wf.steps.iter().map(|s| s.name.as_str()).collect();
    let hint = did_you_mean(name, names.iter().copied());
    Refusal(format!(
        "{what} `{}`: no step of that name in {}{hint} (its steps: {})",
        crate::diagnostic::escaped(name),
        wf.path.display(),
        names.join(", ")
    ))
    .into()
}

/// Keep only `targets` and every step they need (every step when empty), and
/// mark `forced` steps. A forced step outside the targets is an error.
pub fn select(wf: &mut Workflow, targets: &[String], forced: &[String]) -> anyhow::Result<()> {
    for t in targets {
        if wf.step(t).is_none() {
            return Err(unknown_step(wf, "target", t));
        }
    }
    for f in forced {
        if wf.step(f).is_none() {
            return Err(unknown_step(wf, "--force", f));
        }
    }
    if !targets.is_empty() {
        let mut keep: BTreeSet<&str> = BTreeSet::new();
        let mut todo: Vec<&str> = targets.iter().map(String::as_str).collect();
        while let Some(name) = todo.pop() {
            if keep.insert(name)
                && let Some(s) = wf.step(name)
            {
                todo.extend(wf.upstream_names(s));
            }
        }
        for f in forced {
            if !keep.contains(f.as_str()) {
                return Err(Refusal(format!(
                    "--force `{f}`: the targets ({}) do not need it; add it as a target or drop the targets",
                    targets.join(", ")
                ))
                .into());
            }
        }
        let keep: BTreeSet<String> = keep.into_iter().map(str::to_string).collect();
        let left_out = (wf.steps.iter())
            .filter(|s| !keep.contains(&s.name))
            .map(|s| s.name.clone())
            .collect();
        wf.steps.retain(|s| keep.contains(&s.name));
        wf.selection.left_out = left_out;
    }
    wf.selection.forced = forced.iter().cloned().collect();
    wf.selection.targets = targets.to_vec();
    Ok(())
}
