//! One file per subcommand: each loads the workflow, calls the library and prints.
//! This file dispatches the parsed command line and loads workflows the same way
//! for every command.

mod apply;
mod attach;
mod bundle;
mod clean;
mod doctor;
mod gc;
mod graph;
mod plan;
mod run_records;
mod schema;
mod status;
mod verify;

use qflow_engine::Registry;
use qflow_engine::session::cache_dir_beside;
use qflow_engine::workflow::{LoadOptions, Workflow};

use crate::cli::{Cli, Command, WorkflowArgs};
use crate::usage_error::UsageError;

/// Run one parsed command line; returns the exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    let registry = qflow_steps::registry();
    match cli.command {
        Command::Apply {
            workflow,
            jobs,
            keep_going,
            no_wait,
            detach,
        } => apply::run(&registry, &workflow, jobs, keep_going, no_wait, detach),
        Command::Plan { workflow, json } => plan::run(&registry, &workflow, json),
        Command::Graph { workflow, format } => graph::run(&registry, &workflow, &format),
        Command::Attach {
            step,
            run,
            workflow,
        } => attach::run(&registry, &workflow, &step, run.as_deref()),
        Command::Status { workflow } => status::run(&registry, &workflow),
        Command::Gc {
            workflow,
            keep_runs,
        } => gc::run(&registry, &workflow, keep_runs),
        Command::Clean { workflow, step } => clean::run(&registry, &workflow, step.as_deref()),
        Command::Doctor {
            file,
            set,
            no_kvm_probe,
        } => doctor::run(&registry, file, set, !no_kvm_probe),
        Command::Verify {
            file,
            set,
            jobs,
            work_dir,
            steps,
            keep,
            twice,
            cache,
        } => verify::run(
            &registry,
            &WorkflowArgs { file, cache, set },
            verify::Options {
                jobs,
                work_dir,
                steps,
                keep,
                twice,
            },
        ),
        Command::Bundle { workflow, output } => {
            bundle::run(&registry, &workflow, output.as_deref())
        }
        Command::Schema => schema::run(&registry),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "qflow", &mut std::io::stdout());
            Ok(0)
        }
    }
}

/// Load the workflow `args` names, with its `--set` overrides.
fn load(args: &WorkflowArgs, registry: &Registry) -> anyhow::Result<Workflow> {
    let mut set = Vec::new();
    for s in &args.set {
        let Some((k, v)) = s.split_once('=') else {
            return Err(UsageError(format!("--set `{s}`: write --set VAR=VALUE")).into());
        };
        set.push((k.to_string(), v.to_string()));
    }
    // The cache that may hold a memo of this load: where the session will open it.
    let path = std::path::absolute(&args.file).unwrap_or_else(|_| args.file.clone());
    let memo_cache = path
        .parent()
        .map(|dir| cache_dir_beside(dir, args.cache.as_deref()));
    Workflow::load(&args.file, registry, &LoadOptions { set, memo_cache })
}

/// A usage error for a step name the workflow lacks.
fn no_such_step(wf: &Workflow, step: &str) -> anyhow::Error {
    UsageError(format!("no step named `{step}` in {}", wf.path.display())).into()
}
