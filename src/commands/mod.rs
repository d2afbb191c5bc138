//! One file per subcommand: each loads the workflow, calls the library and prints.
//! This file dispatches the parsed command line and loads workflows the same way
//! for every command.

mod apply;
mod attach;
mod bundle;
mod check;
mod clean;
mod completions;
mod doctor;
mod fsck;
mod gc;
mod graph;
mod man;
mod plan;
mod reference;
mod remote;
mod results;
mod run_records;
mod schema;
mod status;
pub mod stop;
mod verify;

use qflow_engine::Registry;
use qflow_engine::session::cache_dir_beside;
use qflow_engine::workflow::{LoadOptions, Workflow};

use crate::cli::{Cli, Command, Located, WorkflowArgs, WorkflowOptions};
use crate::usage_error::UsageError;

/// Run one parsed command line; returns the exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    let registry = qflow_steps::registry();
    let display = qflow_engine::progress::Display {
        quiet: cli.quiet,
        color: cli.color,
        verbose: cli.verbose,
        json: false,
    };
    match cli.command {
        Command::Apply {
            workflow,
            force,
            jobs,
            keep_going,
            no_wait,
            detach,
            executor,
            slurm_batch,
            json,
            remote,
        } => apply::run(
            &registry,
            &Located {
                force,
                ..workflow.locate()?
            },
            apply::Options {
                jobs,
                keep_going,
                no_wait,
                detach,
                executor,
                slurm_batch,
                remote,
                display: qflow_engine::progress::Display { json, ..display },
            },
        ),
        Command::Plan {
            workflow,
            force,
            json,
            executor,
            remote,
        } => plan::run(
            &registry,
            &Located {
                force,
                ..workflow.locate()?
            },
            json,
            executor,
            &remote,
        ),
        Command::Graph { workflow, format } => graph::run(&registry, &workflow.locate()?, &format),
        Command::Attach {
            step,
            run,
            workflow,
        } => attach::run(&registry, &workflow.locate()?, &step, run.as_deref()),
        Command::Check { workflow } => check::run(&registry, &workflow.locate()?),
        Command::Status { workflow, json } => status::run(&registry, workflow, json),
        Command::Stop { workflow } => stop::run(&registry, &workflow.locate()?),
        Command::Gc {
            workflow,
            keep_runs,
        } => gc::run(&registry, &workflow.locate()?, keep_runs),
        Command::Fsck { workflow, repair } => fsck::run(&registry, &workflow.locate()?, repair),
        Command::Clean { workflow, step } => {
            clean::run(&registry, &workflow.locate()?, step.as_deref())
        }
        Command::Doctor {
            file,
            set,
            no_kvm_probe,
            executor,
            cache,
        } => doctor::run(&registry, file, set, !no_kvm_probe, executor, cache),
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
            &WorkflowArgs {
                path: file,
                options: WorkflowOptions {
                    file: None,
                    cache,
                    set,
                },
            }
            .locate()?,
            verify::Options {
                jobs,
                work_dir,
                steps,
                keep,
                twice,
            },
        ),
        Command::Results {
            workflow,
            step,
            format,
            summary,
        } => {
            let format = format.parse().map_err(UsageError)?;
            let options = results::ResultsOptions {
                step,
                format,
                summary,
            };
            results::run(&registry, &workflow.locate()?, &options)
        }
        Command::Bundle { workflow, output } => {
            bundle::run(&registry, &workflow.locate()?, output.as_deref())
        }
        Command::Schema => schema::run(&registry),
        Command::Reference => reference::run(&registry),
        Command::RunStep { description } => {
            qflow_engine::slurm::node::run_described_step(&description, &registry)
        }
        Command::ProbeNode { file } => qflow_engine::slurm::node::probe(&file),
        Command::Man => man::print(),
        Command::Completions { shell } => completions::print(shell),
        Command::CompleteSteps { words } => completions::complete_steps(&registry, &words),
    }
}

/// Load the workflow `args` names, with its `--set` overrides, keeping only
/// its targets and what they need, with its `--force` steps marked.
fn load(args: &Located, registry: &Registry) -> anyhow::Result<Workflow> {
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
    let mut wf = Workflow::load(&args.file, registry, &LoadOptions { set, memo_cache })?;
    qflow_engine::selection::select(&mut wf, &args.targets, &args.force)?;
    Ok(wf)
}

/// A usage error for a step name the workflow lacks, with a "did you mean".
fn no_such_step(wf: &Workflow, step: &str) -> anyhow::Error {
    qflow_engine::selection::unknown_step(wf, "step", step)
}
