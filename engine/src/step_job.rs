//! One step's execution, described on its own: everything a worker needs to
//! run the step and fill its output directory, and nothing of the run around it.
//!
//! The run loop makes a [`StepJob`] when a step starts (fields resolved
//! against the upstream output trees, a fresh staging directory, the started
//! mark written) and hands it to an executor (`executor.rs`). The executor
//! runs [`StepJob::run`], here or elsewhere: the job is plain data and
//! serializable, so a batch executor can write it to a file and run it with
//! the same registry of kinds on another host that sees the same paths. The
//! run loop, not the worker, then checks and records the output tree
//! (`recorder.rs`). Note that `env` may hold secrets: a job written to disk
//! must be readable by its owner only. Imports `context` and `step`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail};
use qflow_cache::Hash;
use serde::{Deserialize, Serialize};

use crate::context::{ProcessGroups, ProgressSink, RunContext, StepLog};
use crate::masking::Mask;
use crate::process::Ended;
use crate::state_dir::StateDir;
use crate::step::Registry;

/// Everything needed to run one step once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepJob {
    /// The step's name.
    pub step: String,
    /// Its `kind:`.
    pub kind: String,
    /// The kind's fields with every `${{ steps.X }}` resolved to a path.
    pub fields: serde_yaml::Value,
    /// The step key this run will be recorded under.
    pub key: Hash,
    /// The workflow's directory (the working directory of its programs).
    pub work_dir: PathBuf,
    /// The fresh staging directory the step writes its outputs into (`$QFLOW_OUT`).
    pub out_dir: PathBuf,
    /// The step's kept state directory (`$QFLOW_STATE`).
    pub state_dir: PathBuf,
    /// The cache's spare empty directories, moved into place as a new state
    /// directory and given an empty one back (see `state_dir.rs`).
    #[serde(default)]
    pub spare_dirs: Option<PathBuf>,
    /// Output trees of the upstream steps, by step name.
    pub upstream: Arc<crate::context::UpstreamDirs>,
    /// The step's `env:` (may hold secrets).
    pub env: BTreeMap<String, String>,
    /// CPU slots the step holds.
    pub jobs: usize,
    /// The step's log file.
    pub log: PathBuf,
    /// Marks every process of this run (see `leftovers.rs`).
    pub run_token: String,
    /// Hides the step's `${{ env.X }}` values and URL credentials in its log,
    /// its progress and its error (see `masking.rs`).
    #[serde(default)]
    pub mask: Mask,
    /// `MAKEFLAGS` naming the run's shared jobserver, for a step whose make shares
    /// the run's slots (see `job_slots.rs`); never sent elsewhere.
    #[serde(skip)]
    pub shared_slots: Option<String>,
}

/// What a successful run of a step hands back besides its output directory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepOutput {
    /// Facts the step noted for the lock file ([`RunContext::note`]).
    pub notes: BTreeMap<String, String>,
    /// The CPU time (user and system, ms) of the step: of its programs
    /// ([`ProcessGroups::cpu`]) and of the thread that ran it; unknown for a
    /// step run elsewhere (Slurm).
    #[serde(default)]
    pub cpu_ms: Option<u64>,
}

impl StepJob {
    /// Run the step: parse its fields with `registry`, run it with a fresh
    /// [`RunContext`] and check that it wrote every declared output into
    /// `out_dir`. `groups` holds its processes (cancelling them interrupts it).
    pub fn run(
        &self,
        registry: &Registry,
        progress: Arc<dyn ProgressSink>,
        groups: ProcessGroups,
    ) -> anyhow::Result<StepOutput> {
        let step = self.parse(registry)?;
        let log = self.open_log()?;
        let progress = self.masked_progress(progress);
        let thread_cpu = crate::process::thread_cpu();
        let (state, emptied) = StateDir::enter(&self.state_dir, self.spares().as_ref())?;
        if emptied {
            let warning = format!(
                "warning: the state directory of `{}` was left by a killed run and may hold \
                 half-written files: emptied, this run starts afresh",
                self.step
            );
            log.line(&warning);
            eprintln!("qflow: {warning}");
        }
        groups.contain(&self.run_token);
        let result = self.run_in(step.as_ref(), log, progress, groups.clone());
        // A step ended by SIGKILL may have left its state half-written: the mark stays.
        if groups.finish() == Ended::Cleanly {
            state.leave_clean(self.spares().as_ref());
        }
        let cpu = groups.cpu() + crate::process::thread_cpu().saturating_sub(thread_cpu);
        (result.map(|out| StepOutput {
            cpu_ms: Some(cpu.as_millis() as u64),
            ..out
        }))
        .map_err(|e| self.masked(e))
    }

    /// Run part `index` of the step ([`crate::step::Step::parts`]) into `out_dir`,
    /// which every part of this execution shares; `log` is the part's own. The
    /// parts share the step's state directory side by side, so none of them marks
    /// it in use (a step with parts keeps nothing there a later run builds on).
    pub fn run_part(
        &self,
        registry: &Registry,
        progress: Arc<dyn ProgressSink>,
        groups: ProcessGroups,
        index: usize,
    ) -> anyhow::Result<StepOutput> {
        let step = self.parse(registry)?;
        let log = self.open_log()?;
        let progress = self.masked_progress(progress);
        std::fs::create_dir_all(&self.state_dir)?;
        groups.contain(&self.run_token);
        let mut ctx = self.context(step.as_ref(), log, progress, groups.clone())?;
        let ran = step.run_part(&mut ctx, index);
        groups.finish();
        ran.map_err(|e| self.masked(e))?;
        Ok(StepOutput {
            notes: ctx.notes().clone(),
            cpu_ms: None,
        })
    }

    /// After every part succeeded: the step log gets each part's log in order
    /// (`(label, path)`), then the step writes what spans the parts
    /// ([`crate::step::Step::finish_parts`]), and every declared output must exist.
    pub fn finish_parts(
        &self,
        registry: &Registry,
        part_logs: &[(String, std::path::PathBuf)],
    ) -> anyhow::Result<StepOutput> {
        let step = self.parse(registry)?;
        let log = self.open_log()?;
        for (label, path) in part_logs {
            log.line(&format!("qflow: run {label} ({})", path.display()));
            for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
                log.line(&format!("[{label}] {line}"));
            }
        }
        let progress: Arc<dyn ProgressSink> = Arc::new(crate::context::NoProgress);
        let mut ctx = self.context(step.as_ref(), log, progress, ProcessGroups::new())?;
        step.finish_parts(&mut ctx).map_err(|e| self.masked(e))?;
        self.check_outputs(step.as_ref())?;
        Ok(StepOutput {
            notes: ctx.notes().clone(),
            cpu_ms: None,
        })
    }

    fn context(
        &self,
        step: &dyn crate::step::Step,
        log: StepLog,
        progress: Arc<dyn ProgressSink>,
        groups: ProcessGroups,
    ) -> anyhow::Result<RunContext> {
        Ok(RunContext::new(
            &self.step,
            self.out_dir.clone(),
            self.work_dir.clone(),
            self.state_dir.clone(),
            self.jobs,
            self.upstream.clone(),
            self.env.clone(),
            log,
            progress,
            groups,
            step.uses_jobserver(),
        )?
        .with_run_token(self.run_token.clone())
        .with_shared_slots(self.shared_slots.clone()))
    }

    fn spares(&self) -> Option<qflow_cache::SpareDirs> {
        self.spare_dirs.clone().map(qflow_cache::SpareDirs::at)
    }

    /// The step, its fields parsed by its kind in `registry`.
    fn parse(&self, registry: &Registry) -> anyhow::Result<Box<dyn crate::step::Step>> {
        let kind = registry
            .get(&self.kind)
            .ok_or_else(|| anyhow!("unknown kind `{}`", self.kind))?;
        kind.parse(&self.fields).map_err(|e| anyhow!("{e}"))
    }

    /// The step's log, its secrets masked.
    fn open_log(&self) -> anyhow::Result<StepLog> {
        Ok(StepLog::create(&self.log)?.with_mask(self.mask.clone()))
    }

    /// `progress` with the step's secrets masked.
    fn masked_progress(&self, progress: Arc<dyn ProgressSink>) -> Arc<dyn ProgressSink> {
        Arc::new(Masked {
            inner: progress,
            mask: self.mask.clone(),
        })
    }

    fn masked(&self, e: anyhow::Error) -> anyhow::Error {
        let text = format!("{e:#}");
        let masked = self.mask.apply(&text);
        if masked == text { e } else { anyhow!(masked) }
    }

    fn check_outputs(&self, step: &dyn crate::step::Step) -> anyhow::Result<()> {
        for out in step.outputs() {
            if std::fs::symlink_metadata(self.out_dir.join(&out)).is_err() {
                bail!(
                    "the step succeeded but did not create its declared output `{out}` (in $QFLOW_OUT)"
                );
            }
        }
        Ok(())
    }

    fn run_in(
        &self,
        step: &dyn crate::step::Step,
        log: StepLog,
        progress: Arc<dyn ProgressSink>,
        groups: ProcessGroups,
    ) -> anyhow::Result<StepOutput> {
        let mut ctx = self.context(step, log, progress, groups)?;
        step.run(&mut ctx)?;
        self.check_outputs(step)?;
        Ok(StepOutput {
            notes: ctx.notes().clone(),
            cpu_ms: None,
        })
    }
}

/// A step's progress with its secrets hidden.
struct Masked {
    inner: Arc<dyn ProgressSink>,
    mask: Mask,
}

impl ProgressSink for Masked {
    fn message(&self, step: &str, text: &str) {
        self.inner.message(step, &self.mask.apply(text));
    }
}
