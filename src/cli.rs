//! The command line (clap) and exit codes.
//!
//! Exit codes: 0 success; 1 a step failed (or an unexpected error); 2 a bad
//! workflow, bad usage, a refused request (a bundle without a lock) or a host
//! missing what the workflow needs (nothing ran);
//! 130 interrupted by a signal.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::usage_error::UsageError;

/// Declarative, incremental, reproducible QEMU full-system simulation setups.
#[derive(Parser, Debug)]
#[command(name = "qflow", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Options every workflow command shares.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkflowArgs {
    /// The workflow file.
    #[arg(default_value = "workflow.yaml")]
    pub file: PathBuf,
    /// The cache directory (default: `.qflow/` beside the workflow).
    #[arg(long, env = "QFLOW_CACHE", hide_env_values = true)]
    pub cache: Option<PathBuf>,
    /// Override a var: `--set VAR=VALUE` (repeatable).
    #[arg(long = "set", value_name = "VAR=VALUE")]
    pub set: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the steps whose inputs changed.
    Apply {
        #[command(flatten)]
        workflow: WorkflowArgs,
        /// CPU slots for all steps together (default: the number of cores).
        #[arg(short, long)]
        jobs: Option<usize>,
        /// Let independent steps finish after a step fails.
        #[arg(long)]
        keep_going: bool,
        /// Fail at once if another run holds the cache, instead of waiting.
        #[arg(long)]
        no_wait: bool,
        /// Run in the background, in a new session that survives the end of your
        /// ssh login (instead of `screen`); the log goes to a file and
        /// `qflow status` shows progress.
        #[arg(long)]
        detach: bool,
    },
    /// Show what `apply` would run, and why.
    Plan {
        #[command(flatten)]
        workflow: WorkflowArgs,
        /// Print JSON: {"steps":[{"name","action","reasons"}]}.
        #[arg(long)]
        json: bool,
    },
    /// Print the step graph as Graphviz DOT, coloured by status.
    Graph {
        #[command(flatten)]
        workflow: WorkflowArgs,
        /// `dot` (default) or `svg` (needs Graphviz's `dot`).
        #[arg(long, default_value = "dot")]
        format: String,
    },
    /// Connect your terminal to a running boot step's serial console (Ctrl-] detaches).
    Attach {
        /// The boot step.
        step: String,
        /// The matrix run (`iterations=1000`) when the step runs several.
        #[arg(long)]
        run: Option<String>,
        #[command(flatten)]
        workflow: WorkflowArgs,
    },
    /// Show each step's state and the last run.
    Status {
        #[command(flatten)]
        workflow: WorkflowArgs,
    },
    /// Delete cached results that no recent run used.
    Gc {
        #[command(flatten)]
        workflow: WorkflowArgs,
        /// How many recent runs' results to keep.
        #[arg(long, default_value_t = 10)]
        keep_runs: usize,
    },
    /// Forget the results of STEP (or of every step) so they run again.
    Clean {
        #[command(flatten)]
        workflow: WorkflowArgs,
        /// The step to clean (default: all steps of the workflow).
        #[arg(long)]
        step: Option<String>,
    },
    /// Check that the host has what the workflow's steps need (or, with no
    /// workflow, everything qflow's kinds can use), and say what to install.
    Doctor {
        /// The workflow file (default: `workflow.yaml` if present, else check every kind's tools).
        file: Option<PathBuf>,
        /// Override a var: `--set VAR=VALUE` (repeatable).
        #[arg(long = "set", value_name = "VAR=VALUE")]
        set: Vec<String>,
        /// Skip the KVM boot probe (it takes up to 10 s when KVM cannot boot a guest).
        #[arg(long)]
        no_kvm_probe: bool,
    },
    /// Rebuild the workflow from scratch in a temporary cache and compare every
    /// output hash with its lock file.
    Verify {
        /// The workflow file.
        #[arg(default_value = "workflow.yaml")]
        file: PathBuf,
        /// Override a var: `--set VAR=VALUE` (repeatable).
        #[arg(long = "set", value_name = "VAR=VALUE")]
        set: Vec<String>,
        /// CPU slots for all steps together (default: the number of cores).
        #[arg(short, long)]
        jobs: Option<usize>,
        /// Where the rebuild's temporary `.qflow-verify-*` directory goes (default:
        /// `$TMPDIR`, else `/tmp`); it is removed afterwards unless `--keep`.
        #[arg(long, value_name = "DIR")]
        work_dir: Option<PathBuf>,
        /// Verify only STEP and the steps it depends on (repeatable).
        #[arg(long = "step", value_name = "STEP")]
        steps: Vec<String>,
        /// Keep the rebuild's cache and outputs for inspection.
        #[arg(long)]
        keep: bool,
        /// Make two clean builds and compare them, instead of a rebuild with the
        /// lock: no earlier `qflow apply` needed.
        #[arg(long)]
        twice: bool,
        /// The cache of the original run, to name the first differing file of a
        /// differing image (default: as for `apply`).
        #[arg(long, env = "QFLOW_CACHE", hide_env_values = true)]
        cache: Option<PathBuf>,
    },
    /// Write one archive for an artifact evaluation: the workflow, its lock, its
    /// local inputs, the collected results and a README on how to reproduce them.
    Bundle {
        #[command(flatten)]
        workflow: WorkflowArgs,
        /// The archive to write (default: `<workflow name>-artifact.tar.gz` in the
        /// current directory).
        #[arg(short, long, value_name = "OUT.tar.gz")]
        output: Option<PathBuf>,
    },
    /// Print the JSON Schema (draft-07) of workflow files, for editors.
    Schema,
    /// Print shell completions.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// Run the command line; returns the process exit code.
pub fn run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    match crate::commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            if let Some(inv) = e.downcast_ref::<qflow_engine::diagnostic::InvalidWorkflow>() {
                for d in &inv.diagnostics {
                    eprintln!("error: {d}");
                }
                eprintln!("qflow: the workflow is invalid; nothing was run");
                return 2;
            }
            if e.downcast_ref::<qflow_engine::HostNotReady>().is_some()
                || e.downcast_ref::<UsageError>().is_some()
                || e.downcast_ref::<qflow_engine::Refusal>().is_some()
            {
                eprintln!("error: {e}");
                return 2;
            }
            eprintln!("error: {e:#}");
            1
        }
    }
}
