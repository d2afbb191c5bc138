//! What a running step may touch: its fresh output directory, its kept state
//! directory, its upstream steps' outputs, and a runner for external programs.
//!
//! Every program a step runs goes through [`RunContext::run`] (or
//! [`RunContext::spawn`] for long-lived ones such as QEMU): it gets its own process
//! group so that a cancel kills the whole tree, its output streams line by line into
//! the step log and the progress line, and a failure quotes the last lines instead
//! of a bare exit code (`process.rs` does the work, `step_log.rs` keeps the log).
//! Step kinds never call `std::process::Command::spawn` themselves, so no child
//! can outlive qflow. Imports `process`, `step_log` and `paths`; `step.rs`
//! imports this module, not the other way round.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};

pub use crate::process::{
    ProcessGroups, RunningChild, describe_status, display_command, quote_arg,
};
pub use crate::step_log::StepLog;

/// Receives a running step's progress text (the last line of its output, or
/// what the kind chooses to show).
pub trait ProgressSink: Send + Sync {
    /// Show `text` as step `step`'s progress.
    fn message(&self, step: &str, text: &str);
}

/// A sink that shows nothing (tests, `--quiet`).
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn message(&self, _step: &str, _text: &str) {}
}

/// The output directories of a step's upstream steps, by step name: as a run
/// hands them, each step's output tree among the cache's trees; in a kind's
/// tests, any directory. Held as names and outputs, not paths, and shared
/// between a step's job and its context: the last step of a fan-in below
/// 10,000 steps has 10,000 of them (2.2 MB as a map of paths, 0.9 MB so).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct UpstreamDirs {
    /// The directory of output trees (`<cache>/trees`).
    trees: PathBuf,
    /// Sorted by name, each name once.
    steps: Vec<(String, UpstreamDir)>,
}

/// Where one upstream step's output is.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum UpstreamDir {
    /// Its output tree, in [`UpstreamDirs::trees`].
    Tree(qflow_cache::Hash),
    /// A directory of its own.
    Dir(PathBuf),
}

impl UpstreamDirs {
    /// The output trees `outputs` (step name, tree) in the directory `trees`.
    pub fn trees(
        trees: PathBuf,
        outputs: impl IntoIterator<Item = (String, qflow_cache::Hash)>,
    ) -> Self {
        let mut steps: Vec<(String, UpstreamDir)> = (outputs.into_iter())
            .map(|(n, t)| (n, UpstreamDir::Tree(t)))
            .collect();
        // In place: a stable sort takes a copy as large (0.6 MB for 10,000 upstream
        // steps). A name given twice keeps one of its outputs (a run gives each once).
        steps.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        steps.dedup_by(|later, kept| later.0 == kept.0);
        steps.shrink_to_fit();
        UpstreamDirs { trees, steps }
    }

    /// With step `name`'s output in directory `dir`.
    pub fn insert(&mut self, name: &str, dir: PathBuf) {
        match self.steps.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(i) => self.steps[i].1 = UpstreamDir::Dir(dir),
            Err(i) => self
                .steps
                .insert(i, (name.to_string(), UpstreamDir::Dir(dir))),
        }
    }

    /// The output directory of step `name`.
    pub fn get(&self, name: &str) -> Option<PathBuf> {
        let i = (self.steps.binary_search_by(|(n, _)| n.as_str().cmp(name))).ok()?;
        Some(match &self.steps[i].1 {
            UpstreamDir::Tree(t) => self.trees.join(t.to_hex()),
            UpstreamDir::Dir(d) => d.clone(),
        })
    }
}

/// Everything a running step may use. Built by the scheduler; kinds receive it in
/// `Step::run` (`step.rs`).
pub struct RunContext {
    step: String,
    out_dir: PathBuf,
    work_dir: PathBuf,
    state_dir: PathBuf,
    jobs: usize,
    upstream: Arc<UpstreamDirs>,
    env: BTreeMap<String, String>,
    log: StepLog,
    progress: Arc<dyn ProgressSink>,
    groups: ProcessGroups,
    jobserver: Option<jobserver::Client>,
    /// The step uses the jobserver but holds one slot: it gets none.
    make_one_slot: bool,
    notes: BTreeMap<String, String>,
    /// Marks every process of this run of the step (see `leftovers.rs`).
    run_token: Option<String>,
    /// `MAKEFLAGS` of the run's shared jobserver (see `job_slots.rs`).
    shared_slots: Option<String>,
}

impl RunContext {
    /// Build a context. `jobs` is the number of CPU slots this step holds; when
    /// the step uses the jobserver, it gets a private GNU make jobserver holding
    /// exactly those slots (make's own implicit slot included), so `make` inside
    /// the step never runs more than `jobs` recipes and qflow's total stays
    /// within `--jobs`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        step: &str,
        out_dir: PathBuf,
        work_dir: PathBuf,
        state_dir: PathBuf,
        jobs: usize,
        upstream: Arc<UpstreamDirs>,
        env: BTreeMap<String, String>,
        log: StepLog,
        progress: Arc<dyn ProgressSink>,
        groups: ProcessGroups,
        with_jobserver: bool,
    ) -> anyhow::Result<Self> {
        // One slot needs no jobserver: a make without one runs one recipe at a time.
        let jobserver = if with_jobserver && jobs > 1 {
            Some(
                jobserver::Client::new(jobs.saturating_sub(1))
                    .context("cannot create make jobserver")?,
            )
        } else {
            None
        };
        Ok(RunContext {
            step: step.to_string(),
            out_dir,
            work_dir,
            state_dir,
            jobs,
            upstream,
            env,
            log,
            progress,
            groups,
            jobserver,
            make_one_slot: with_jobserver && jobs <= 1,
            notes: BTreeMap::new(),
            run_token: None,
            shared_slots: None,
        })
    }

    /// A context for a kind's own tests: no upstream steps, no progress, log to `log`.
    pub fn standalone(
        step: &str,
        out_dir: &Path,
        work_dir: &Path,
        state_dir: &Path,
        log: &Path,
    ) -> anyhow::Result<Self> {
        for d in [out_dir, state_dir] {
            std::fs::create_dir_all(d)?;
        }
        RunContext::new(
            step,
            out_dir.to_path_buf(),
            work_dir.to_path_buf(),
            state_dir.to_path_buf(),
            1,
            Default::default(),
            BTreeMap::new(),
            StepLog::create(log)?,
            Arc::new(NoProgress),
            ProcessGroups::new(),
            false,
        )
    }

    /// Put `token` in the environment of every process this step starts, so
    /// the next apply can find the ones a killed qflow left behind.
    pub fn with_run_token(mut self, token: String) -> Self {
        self.run_token = Some(token);
        self
    }

    /// Add an upstream step's output directory (tests and the scheduler).
    pub fn with_upstream(mut self, step: &str, dir: PathBuf) -> Self {
        Arc::make_mut(&mut self.upstream).insert(step, dir);
        self
    }

    /// This step's name.
    pub fn step(&self) -> &str {
        &self.step
    }

    /// The step's fresh, empty output directory (`$QFLOW_OUT`).
    pub fn out_dir(&self) -> &Path {
        &self.out_dir
    }

    /// The workflow's directory: relative paths in fields resolve against it.
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// A directory kept between runs of this step (a kernel build tree, a partial
    /// download). Never an output: nothing downstream may read it.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// CPU slots this step holds.
    pub fn jobs(&self) -> usize {
        self.jobs
    }

    /// The make jobserver holding this step's slots, when the step uses one.
    pub fn jobserver(&self) -> Option<&jobserver::Client> {
        self.jobserver.as_ref()
    }

    /// A path from a field, resolved against the workflow directory.
    pub fn resolve(&self, path: &str) -> PathBuf {
        crate::paths::resolve_in(&self.work_dir, path)
    }

    /// The output directory of an upstream step this step references.
    pub fn upstream(&self, step: &str) -> anyhow::Result<PathBuf> {
        self.upstream.get(step).ok_or_else(|| {
            anyhow!(
                "step `{}` has no output of upstream step `{step}`",
                self.step
            )
        })
    }

    /// Whether the run is being cancelled (Ctrl-C): long loops should return.
    pub fn is_cancelled(&self) -> bool {
        self.groups.is_cancelled()
    }

    /// Show `text` on the step's progress line.
    pub fn progress(&self, text: &str) {
        self.progress.message(&self.step, text);
    }

    /// Write a line to the step log.
    pub fn log(&self, text: &str) {
        self.log.line(text);
    }

    /// The step's log file.
    pub fn log_path(&self) -> &Path {
        self.log.path()
    }

    /// Record a fact about this run in `qflow.lock` (a resolved checksum, the
    /// installed package versions). Never a secret.
    pub fn note(&mut self, key: &str, value: &str) {
        self.notes.insert(key.to_string(), value.to_string());
    }

    /// What the step noted so far ([`RunContext::note`]).
    pub fn notes(&self) -> &BTreeMap<String, String> {
        &self.notes
    }

    /// Let the step's make share the run's slots through the run's jobserver,
    /// named by `makeflags` (see `job_slots.rs`), instead of a jobserver of its own.
    pub fn with_shared_slots(mut self, makeflags: Option<String>) -> Self {
        if makeflags.is_some() {
            self.jobserver = None;
            self.make_one_slot = false;
            self.shared_slots = makeflags;
        }
        self
    }

    /// A command for `program`: runs in the workflow directory with the step's
    /// `env:` and `QFLOW_OUT`, and with the jobserver when the step uses it.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.work_dir);
        cmd.env("QFLOW_OUT", &self.out_dir);
        cmd.env("QFLOW_STATE", &self.state_dir);
        cmd.env("QFLOW_JOBS", self.jobs.to_string());
        if self.make_one_slot {
            // Not qflow's caller's jobserver either: this step holds one slot.
            for k in ["MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS"] {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(flags) = &self.shared_slots {
            for k in ["MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS"] {
                cmd.env(k, flags);
            }
        }
        if let Some(js) = &self.jobserver {
            // MAKEFLAGS carries the jobserver; a make started without -j uses it.
            js.configure_make(&mut cmd);
            // The jobserver crate writes a bare `-j`; kbuild forwards `-j` to its
            // tools/ sub-make, which then leaves the jobserver unlimited. GNU make
            // itself passes `-jN` to sub-makes: do the same.
            let slots = format!("-j{}", self.jobs.max(1));
            let fixed: Vec<(std::ffi::OsString, String)> = cmd
                .get_envs()
                .filter_map(|(k, v)| {
                    let v = v?.to_str()?;
                    let k = k.to_os_string();
                    (k == "MAKEFLAGS" || k == "MFLAGS" || k == "CARGO_MAKEFLAGS").then(|| {
                        let parts: Vec<&str> = v
                            .split(' ')
                            .map(|p| if p == "-j" { slots.as_str() } else { p })
                            .collect();
                        (k, parts.join(" "))
                    })
                })
                .collect();
            for (k, v) in fixed {
                cmd.env(k, v);
            }
        }
        cmd
    }

    /// Run a program to completion, streaming its output to the log and the
    /// progress line. Fails with the last lines of output on a non-zero exit.
    pub fn run(&mut self, cmd: Command) -> anyhow::Result<()> {
        self.run_lines(cmd, &mut |line| Some(line.to_string()))
    }

    /// Like [`RunContext::run`], but every output line goes through `on_line`,
    /// which returns the progress text to show (or `None` to keep the current one).
    pub fn run_lines(
        &mut self,
        cmd: Command,
        on_line: &mut dyn FnMut(&str) -> Option<String>,
    ) -> anyhow::Result<()> {
        self.run_inner(cmd, on_line, None).map(|_| ())
    }

    /// Run a program and return its stdout (stderr goes to the log).
    pub fn run_capture(&mut self, cmd: Command) -> anyhow::Result<String> {
        let mut out = Vec::new();
        self.run_inner(cmd, &mut |line| Some(line.to_string()), Some(&mut out))?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    fn run_inner(
        &mut self,
        cmd: Command,
        on_line: &mut dyn FnMut(&str) -> Option<String>,
        capture: Option<&mut Vec<u8>>,
    ) -> anyhow::Result<()> {
        if self.is_cancelled() {
            bail!("interrupted");
        }
        let (progress, step) = (&self.progress, self.step.as_str());
        let mut show = |line: &str| {
            if let Some(text) = on_line(line) {
                progress.message(step, &text);
            }
        };
        crate::process::run_to_end(
            cmd,
            &self.groups,
            self.run_token.as_deref(),
            &self.log,
            &mut show,
            capture,
            // The step's own jobserver hands its pipe over in a pre_exec hook.
            self.jobserver.is_some(),
        )
    }

    /// Start a long-lived program (QEMU) in its own process group. The caller
    /// chooses its stdio; the returned guard kills the group when dropped, and
    /// a cancel kills it too.
    pub fn spawn(&mut self, cmd: Command) -> anyhow::Result<RunningChild> {
        if self.is_cancelled() {
            bail!("interrupted");
        }
        self.log.line(&format!("$ {}", display_command(&cmd)));
        crate::process::spawn(cmd, &self.groups, self.run_token.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qflow_cache::Hash;

    #[test]
    fn an_upstream_steps_output_is_its_tree_or_the_directory_given_for_it() {
        let (a, b) = (Hash([1; 32]), Hash([2; 32]));
        let trees = PathBuf::from("/c/trees");
        let mut dirs = UpstreamDirs::trees(trees.clone(), [("b".into(), b), ("a".into(), a)]);
        assert_eq!(dirs.get("a"), Some(trees.join(a.to_hex())));
        assert_eq!(dirs.get("b"), Some(trees.join(b.to_hex())));
        assert_eq!(dirs.get("c"), None);
        dirs.insert("c", PathBuf::from("/elsewhere/c"));
        dirs.insert("a", PathBuf::from("/elsewhere/a"));
        assert_eq!(dirs.get("a"), Some(PathBuf::from("/elsewhere/a")));
        assert_eq!(dirs.get("c"), Some(PathBuf::from("/elsewhere/c")));
        // A job sent to another host carries them as they are.
        let sent: UpstreamDirs =
            serde_json::from_str(&serde_json::to_string(&dirs).unwrap()).unwrap();
        for name in ["a", "b", "c", "d"] {
            assert_eq!(sent.get(name), dirs.get(name), "{name}");
        }
    }
}
