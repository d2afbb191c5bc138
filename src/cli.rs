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
    /// Change to DIR before doing anything (as `make -C`, `cargo -C`).
    #[arg(short = 'C', global = true, value_name = "DIR")]
    pub directory: Option<PathBuf>,
    /// Print only errors and warnings (a failed step, its report), no progress.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print every line of every step's output as it comes, as `[step] line`
    /// (what the step's log gets).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Colour `ok`, `cached` and `FAILED`: `auto` (on a terminal, unless `NO_COLOR`
    /// is set), `always` or `never`. `NO_COLOR` removes colour only, never the
    /// progress lines.
    #[arg(long, global = true, value_name = "WHEN", default_value = "auto", value_parser = parse_color)]
    pub color: qflow_engine::progress::ColorChoice,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every workflow command shares.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct WorkflowOptions {
    /// The workflow file (default: `workflow.yaml`, or the one `*.yaml` holding
    /// `version:` and `steps:`, in this directory or the nearest parent with one).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// The cache directory (default: `.qflow/` beside the workflow).
    #[arg(long, env = "QFLOW_CACHE", hide_env_values = true)]
    pub cache: Option<PathBuf>,
    /// Override a var: `--set VAR=VALUE` (repeatable).
    #[arg(long = "set", value_name = "VAR=VALUE")]
    pub set: Vec<String>,
}

/// A command on one workflow: `[FILE]` and the shared options.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkflowArgs {
    /// The workflow file (default: found as for `-f`).
    #[arg(value_name = "FILE")]
    pub path: Option<PathBuf>,
    #[command(flatten)]
    pub options: WorkflowOptions,
}

/// A command on some steps of one workflow: `[FILE] [STEP]...`.
#[derive(clap::Args, Debug, Clone)]
pub struct TargetArgs {
    /// The workflow file (optional: found as for `-f`), then the steps to work on
    /// (default: every step); each target brings the steps it needs.
    #[arg(value_name = "FILE|STEP")]
    pub words: Vec<String>,
    #[command(flatten)]
    pub options: WorkflowOptions,
}

/// A workflow file found, the targets named, and the shared options.
#[derive(Debug, Clone)]
pub struct Located {
    /// The workflow file.
    pub file: PathBuf,
    /// The steps named on the command line (empty: every step).
    pub targets: Vec<String>,
    /// `--force STEP`: steps to run whatever their record says.
    pub force: Vec<String>,
    /// The cache directory flag.
    pub cache: Option<PathBuf>,
    /// `--set` overrides.
    pub set: Vec<String>,
}

impl WorkflowArgs {
    /// The workflow file: the one named, else the one found.
    pub fn locate(self) -> anyhow::Result<Located> {
        let o = self.options;
        let file = match (self.path, o.file) {
            (Some(_), Some(_)) => {
                return Err(UsageError(
                    "a workflow file both as an argument and with `-f`: give one".into(),
                )
                .into());
            }
            (Some(f), None) | (None, Some(f)) => f,
            (None, None) => crate::workflow_file::discover_one(std::path::Path::new("."))?,
        };
        Ok(Located {
            file,
            targets: vec![],
            force: vec![],
            cache: o.cache,
            set: o.set,
        })
    }
}

impl TargetArgs {
    /// The workflow file (the first word when it names a file, else `-f`, else
    /// the one found) and the targets (the other words).
    pub fn locate(self) -> anyhow::Result<Located> {
        let o = self.options;
        let mut words = self.words;
        let file = match o.file {
            Some(f) => f,
            None if words
                .first()
                .is_some_and(|w| crate::workflow_file::looks_like_file(w)) =>
            {
                PathBuf::from(words.remove(0))
            }
            None => match crate::workflow_file::discover_one(std::path::Path::new(".")) {
                Ok(f) => f,
                Err(e) if !words.is_empty() => {
                    return Err(UsageError(format!(
                        "`{}` is not a file, and it cannot name a step: {e}",
                        words[0]
                    ))
                    .into());
                }
                Err(e) => return Err(e),
            },
        };
        Ok(Located {
            file,
            targets: words,
            force: vec![],
            cache: o.cache,
            set: o.set,
        })
    }
}

/// A remote cache shared over HTTP (Bazel's remote-cache protocol).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RemoteArgs {
    /// Read results this cache lacks from a remote cache at URL (`/ac/` and `/cas/`, as
    /// bazel-remote or nginx with WebDAV serve them). Credentials: ~/.netrc,
    /// QFLOW_REMOTE_CACHE_TOKEN or QFLOW_REMOTE_CACHE_HEADER.
    #[arg(
        long,
        env = "QFLOW_REMOTE_CACHE",
        value_name = "URL",
        hide_env_values = true
    )]
    pub remote_cache: Option<String>,
    /// Also upload results to the remote cache (a CI job pushes, laptops pull).
    #[arg(long, env = "QFLOW_REMOTE_CACHE_UPLOAD")]
    pub remote_cache_upload: bool,
    /// Upload to this URL instead of the read URL.
    #[arg(
        long,
        env = "QFLOW_REMOTE_CACHE_WRITE",
        value_name = "URL",
        hide_env_values = true
    )]
    pub remote_cache_write: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the steps whose inputs changed.
    Apply {
        #[command(flatten)]
        workflow: TargetArgs,
        /// Run STEP even though its record is valid (repeatable); what depends on
        /// it runs again only if its output changes.
        #[arg(long = "force", value_name = "STEP")]
        force: Vec<String>,
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
        /// Where steps without their own `executor:` run: `local` or `slurm`
        /// (default: the workflow's `executor:`, else local).
        #[arg(long, value_name = "local|slurm", value_parser = parse_executor)]
        executor: Option<qflow_engine::slurm::placement::ExecutorChoice>,
        /// (Internal) submit Slurm jobs with sbatch: set by `--detach`.
        #[arg(long, hide = true)]
        slurm_batch: bool,
        /// Also write one JSON event per line on stdout: a step `started`, a step
        /// `finished` (with its state), the `run_finished` counts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Show what `apply` would run, and why.
    Plan {
        #[command(flatten)]
        workflow: TargetArgs,
        /// Plan as `apply --force STEP` would (repeatable).
        #[arg(long = "force", value_name = "STEP")]
        force: Vec<String>,
        /// Where steps without their own `executor:` would run: `local` or `slurm`.
        #[arg(long, value_name = "local|slurm", value_parser = parse_executor)]
        executor: Option<qflow_engine::slurm::placement::ExecutorChoice>,
        /// Print JSON: {"steps":[{"name","kind","action","reasons","commands","key"}]};
        /// each command is {"argv":[...]} (never a shell string), with a "note"
        /// for what the shown line adds.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Print the step graph as Graphviz DOT, coloured by status.
    Graph {
        #[command(flatten)]
        workflow: TargetArgs,
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
    /// Validate the workflow and report every problem in one pass; run nothing.
    Check {
        #[command(flatten)]
        workflow: WorkflowArgs,
    },
    /// Show each step's state and the last run.
    Status {
        #[command(flatten)]
        workflow: WorkflowArgs,
        /// Print JSON: {"workflow","cache","busy","last_run","steps":[{"name","state",...}]}
        /// (one object per line when several workflows are shown).
        #[arg(long)]
        json: bool,
    },
    /// Stop the detached run (`apply --detach`) as Ctrl-C would.
    ///
    /// Sends SIGTERM to the detached qflow (its pid is recorded in the cache) and
    /// waits until it has stopped its running steps.
    Stop {
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
    /// Hash every object and output tree of the cache against its name and manifest
    /// (the full check behind the per-use stat check); exit 1 when something is damaged.
    Fsck {
        #[command(flatten)]
        workflow: WorkflowArgs,
        /// Remove what is damaged, so the steps that made it run again.
        #[arg(long)]
        repair: bool,
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
        /// Also check the Slurm cluster steps would run on (`--executor slurm`).
        #[arg(long, value_name = "local|slurm", value_parser = parse_executor)]
        executor: Option<qflow_engine::slurm::placement::ExecutorChoice>,
        /// The cache directory the cluster's nodes must see (for `--executor slurm`).
        #[arg(long, env = "QFLOW_CACHE", hide_env_values = true)]
        cache: Option<PathBuf>,
    },
    /// Print the results table (one row per run) from the records; runs nothing.
    Results {
        #[command(flatten)]
        workflow: WorkflowArgs,
        /// Only this step's metrics.
        #[arg(long)]
        step: Option<String>,
        /// `table` (default), `csv`, `json` or `markdown`.
        #[arg(long, default_value = "table")]
        format: String,
        /// One row per matrix point: the mean, standard deviation and 95%
        /// confidence interval (Student's t) of its repeats.
        #[arg(long)]
        summary: bool,
    },
    /// Rebuild the workflow from scratch in a temporary cache and compare every
    /// output hash with its lock file.
    Verify {
        /// The workflow file (default: found as for `apply`).
        file: Option<PathBuf>,
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
    /// Print the reference of every step kind (fields, types, defaults, outputs)
    /// as Markdown: `docs/kinds.md`.
    Reference,
    /// (Internal) run one step execution inside a Slurm job, from its description file.
    #[command(name = "__run-step", hide = true)]
    RunStep {
        /// The step description the coordinator wrote on the shared file system.
        description: PathBuf,
    },
    /// (Internal) prove from a Slurm job that the node sees FILE and runs this qflow.
    #[command(name = "__probe-node", hide = true)]
    ProbeNode { file: PathBuf },
    /// Print the manual page (roff), as installed to `man1/qflow.1`: `qflow man | man -l -`.
    Man,
    /// (Internal) the step names to offer at the end of a command line, for the
    /// completion scripts.
    #[command(name = "__complete-steps", hide = true)]
    CompleteSteps {
        /// The words after `qflow`, the last one being completed.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        words: Vec<String>,
    },
    /// Print shell completions that offer subcommands, options and the step
    /// names of the workflow found where you type.
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
    if let Some(dir) = &cli.directory
        && let Err(e) = std::env::set_current_dir(dir)
    {
        eprintln!(
            "error: -C `{}`: {e}; name an existing directory",
            dir.display()
        );
        return 2;
    }
    match crate::commands::run(cli) {
        Ok(code) => code,
        Err(e) => report(&e),
    }
}

/// Print `e` as the binary does and return its exit code: 2 for a bad
/// workflow, bad usage, a refusal or a host not ready (nothing ran), else 1.
pub fn report(e: &anyhow::Error) -> i32 {
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
        || e.downcast_ref::<qflow_cache::remote::CredentialsError>()
            .is_some()
    {
        eprintln!("error: {e}");
        return 2;
    }
    eprintln!("error: {e:#}");
    1
}

fn parse_executor(text: &str) -> Result<qflow_engine::slurm::placement::ExecutorChoice, String> {
    qflow_engine::slurm::placement::ExecutorChoice::parse(text)
        .ok_or_else(|| format!("`{text}` is not an executor; use `local` or `slurm`"))
}

fn parse_color(text: &str) -> Result<qflow_engine::progress::ColorChoice, String> {
    use qflow_engine::progress::ColorChoice;
    match text {
        "auto" => Ok(ColorChoice::Auto),
        "always" => Ok(ColorChoice::Always),
        "never" => Ok(ColorChoice::Never),
        _ => Err(format!(
            "`{text}` is not a colour choice; use `auto`, `always` or `never`"
        )),
    }
}
