//! What a running step may touch: its fresh output directory, its kept state
//! directory, its upstream steps' outputs, and a runner for external programs.
//!
//! Every program a step runs goes through [`RunContext::run`] (or
//! [`RunContext::spawn`] for long-lived ones such as QEMU): it gets its own process
//! group so that Ctrl-C kills the whole tree, its output streams line by line into
//! the step log and the progress line, and a failure quotes the last lines instead
//! of a bare exit code. Step kinds never call `std::process::Command::spawn`
//! themselves, so no child can outlive qflow.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};

/// How many trailing output lines a failure quotes.
const TAIL_LINES: usize = 20;

/// Receives a running step's progress text (the last line of its output, or
/// what the kind chooses to show).
pub trait ProgressSink: Send + Sync {
    fn message(&self, step: &str, text: &str);
}

/// A sink that shows nothing (tests, `--quiet`).
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn message(&self, _step: &str, _text: &str) {}
}

/// The process groups of every child qflow has running, so a signal can kill them all.
#[derive(Default, Clone)]
pub struct ProcessGroups {
    inner: Arc<Mutex<HashSet<i32>>>,
    cancelled: Arc<AtomicBool>,
}

impl ProcessGroups {
    pub fn new() -> Self {
        ProcessGroups::default()
    }

    fn add(&self, pgid: i32) {
        self.inner.lock().unwrap().insert(pgid);
    }

    fn remove(&self, pgid: i32) {
        self.inner.lock().unwrap().remove(&pgid);
    }

    /// Mark the run cancelled and SIGKILL every registered process group.
    pub fn cancel_all(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        let groups: Vec<i32> = self.inner.lock().unwrap().iter().copied().collect();
        for pgid in groups {
            kill_group(pgid);
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    pub fn running(&self) -> usize {
        self.inner.lock().unwrap().len()
    }
}

fn kill_group(pgid: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// A step's log file, shared by the threads that stream its programs' output.
#[derive(Clone)]
pub struct StepLog {
    file: Arc<Mutex<Option<File>>>,
    path: PathBuf,
}

impl StepLog {
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create log directory {}", parent.display()))?;
        }
        let file =
            File::create(path).with_context(|| format!("cannot create log {}", path.display()))?;
        Ok(StepLog {
            file: Arc::new(Mutex::new(Some(file))),
            path: path.to_path_buf(),
        })
    }

    /// A log that discards everything.
    pub fn discard() -> Self {
        StepLog {
            file: Arc::new(Mutex::new(None)),
            path: PathBuf::from("/dev/null"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn line(&self, text: &str) {
        if let Some(f) = self.file.lock().unwrap().as_mut() {
            let _ = writeln!(f, "{text}");
        }
    }

    /// The last `n` lines of the log, for failure messages.
    pub fn tail(&self, n: usize) -> Vec<String> {
        StepLog::tail_of(&self.path, n)
    }

    /// The last `n` lines of the log file at `path`.
    pub fn tail_of(path: &Path, n: usize) -> Vec<String> {
        let Ok(bytes) = std::fs::read(path) else {
            return Vec::new();
        };
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

/// A long-lived child (QEMU) started with [`RunContext::spawn`]. Dropping it kills
/// its whole process group and reaps it.
pub struct RunningChild {
    child: Child,
    groups: ProcessGroups,
    pgid: i32,
    done: bool,
}

impl RunningChild {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Exit status if it has exited.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        let status = self.child.try_wait()?;
        if status.is_some() {
            self.finish();
        }
        Ok(status)
    }

    /// Wait for exit, at most `timeout`; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            if std::time::Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill the process group now and reap the child.
    pub fn kill(&mut self) {
        if !self.done {
            kill_group(self.pgid);
            let _ = self.child.wait();
            self.finish();
        }
    }

    /// The child's piped stdin, stdout and stderr, if any were requested.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    fn finish(&mut self) {
        if !self.done {
            // The group may still hold grandchildren; they die with it.
            kill_group(self.pgid);
            self.groups.remove(self.pgid);
            self.done = true;
        }
    }
}

impl Drop for RunningChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Everything a running step may use. Built by the scheduler; kinds receive it in
/// [`crate::step::Step::run`].
pub struct RunContext {
    step: String,
    out_dir: PathBuf,
    work_dir: PathBuf,
    state_dir: PathBuf,
    jobs: usize,
    upstream: BTreeMap<String, PathBuf>,
    env: BTreeMap<String, String>,
    log: StepLog,
    progress: Arc<dyn ProgressSink>,
    groups: ProcessGroups,
    jobserver: Option<jobserver::Client>,
    notes: BTreeMap<String, String>,
    /// Marks every process of this run of the step (see `leftovers.rs`).
    run_token: Option<String>,
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
        upstream: BTreeMap<String, PathBuf>,
        env: BTreeMap<String, String>,
        log: StepLog,
        progress: Arc<dyn ProgressSink>,
        groups: ProcessGroups,
        with_jobserver: bool,
    ) -> anyhow::Result<Self> {
        let jobserver = if with_jobserver {
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
            notes: BTreeMap::new(),
            run_token: None,
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
            BTreeMap::new(),
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
        self.upstream.insert(step.to_string(), dir);
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
        crate::step::resolve_in(&self.work_dir, path)
    }

    /// The output directory of an upstream step this step references.
    pub fn upstream(&self, step: &str) -> anyhow::Result<&Path> {
        self.upstream.get(step).map(|p| p.as_path()).ok_or_else(|| {
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

    pub fn log_path(&self) -> &Path {
        self.log.path()
    }

    /// Record a fact about this run in `qflow.lock` (a resolved checksum, the
    /// installed package versions). Never a secret.
    pub fn note(&mut self, key: &str, value: &str) {
        self.notes.insert(key.to_string(), value.to_string());
    }

    pub fn notes(&self) -> &BTreeMap<String, String> {
        &self.notes
    }

    /// A command for `program`: runs in the workflow directory with the step's
    /// `env:` and `QFLOW_OUT`, and with the jobserver when the step uses it.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.work_dir);
        cmd.env("QFLOW_OUT", &self.out_dir);
        cmd.env("QFLOW_STATE", &self.state_dir);
        cmd.env("QFLOW_JOBS", self.jobs.to_string());
        for (k, v) in &self.env {
            cmd.env(k, v);
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
        mut cmd: Command,
        on_line: &mut dyn FnMut(&str) -> Option<String>,
        capture: Option<&mut Vec<u8>>,
    ) -> anyhow::Result<()> {
        if self.is_cancelled() {
            bail!("interrupted");
        }
        let shown = display_command(&cmd);
        self.log.line(&format!("$ {shown}"));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.process_group(0);
        die_with_parent(&mut cmd);
        self.mark(&mut cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run `{}`", program_name(&cmd)))?;
        let pgid = child.id() as i32;
        self.groups.add(pgid);
        if self.is_cancelled() {
            kill_group(pgid);
        }
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let tail: Arc<Mutex<VecDeque<String>>> = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let err_thread = {
            let log = self.log.clone();
            let tail = tail.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).split(b'\n') {
                    let Ok(line) = line else { break };
                    let line = String::from_utf8_lossy(&line)
                        .trim_end_matches('\r')
                        .to_string();
                    log.line(&line);
                    push_tail(&tail, &line);
                    let _ = tx.send(line);
                }
            })
        };
        drop(tx);
        let out_result = if let Some(buf) = capture {
            let mut stdout = stdout;
            let r = stdout.read_to_end(buf);
            for line in String::from_utf8_lossy(buf).lines() {
                self.log.line(line);
            }
            r.map(|_| ())
        } else {
            let mut result = Ok(());
            for line in BufReader::new(stdout).split(b'\n') {
                match line {
                    Ok(line) => {
                        let line = String::from_utf8_lossy(&line)
                            .trim_end_matches('\r')
                            .to_string();
                        self.log.line(&line);
                        push_tail(&tail, &line);
                        if let Some(text) = on_line(&line) {
                            self.progress(&text);
                        }
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
                while let Ok(l) = rx.try_recv() {
                    if let Some(text) = on_line(&l) {
                        self.progress(&text);
                    }
                }
            }
            result
        };
        let _ = err_thread.join();
        while let Ok(l) = rx.try_recv() {
            if let Some(text) = on_line(&l) {
                self.progress(&text);
            }
        }
        let status = child.wait();
        // Whatever the program left running in its group dies with it.
        kill_group(pgid);
        self.groups.remove(pgid);
        out_result.context("cannot read program output")?;
        let status = status.context("cannot wait for program")?;
        if self.is_cancelled() {
            bail!("interrupted");
        }
        if !status.success() {
            let tail = tail.lock().unwrap();
            let mut msg = format!("`{shown}` failed ({})", describe_status(status));
            if !tail.is_empty() {
                msg.push_str("; its last lines:");
                for l in tail.iter() {
                    msg.push_str("\n    ");
                    msg.push_str(l);
                }
            }
            bail!(msg);
        }
        Ok(())
    }

    /// Start a long-lived program (QEMU) in its own process group. The caller
    /// chooses its stdio; the returned guard kills the group when dropped, and
    /// Ctrl-C kills it too.
    pub fn spawn(&mut self, mut cmd: Command) -> anyhow::Result<RunningChild> {
        if self.is_cancelled() {
            bail!("interrupted");
        }
        self.log.line(&format!("$ {}", display_command(&cmd)));
        cmd.process_group(0);
        die_with_parent(&mut cmd);
        self.mark(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot run `{}`", program_name(&cmd)))?;
        let pgid = child.id() as i32;
        self.groups.add(pgid);
        if self.is_cancelled() {
            kill_group(pgid);
        }
        Ok(RunningChild {
            child,
            groups: self.groups.clone(),
            pgid,
            done: false,
        })
    }
}

impl RunContext {
    fn mark(&self, cmd: &mut Command) {
        if let Some(token) = &self.run_token {
            cmd.env(crate::leftovers::TOKEN_VAR, token);
        }
    }
}

/// The child gets SIGKILL if the qflow thread that started it dies (kill -9 of
/// qflow); its own children are found by their run token (`leftovers.rs`).
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn push_tail(tail: &Mutex<VecDeque<String>>, line: &str) {
    let mut t = tail.lock().unwrap();
    if t.len() == TAIL_LINES {
        t.pop_front();
    }
    t.push_back(line.to_string());
}

fn program_name(cmd: &Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

/// A command line for logs and `qflow plan`: argv with shell-style quoting for display only.
pub fn display_command(cmd: &Command) -> String {
    let mut parts = vec![quote_arg(&cmd.get_program().to_string_lossy())];
    parts.extend(cmd.get_args().map(|a| quote_arg(&a.to_string_lossy())));
    parts.join(" ")
}

/// Quote one argument for display (never executed by a shell).
pub fn quote_arg(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// `exit 2`, `killed by signal 9`.
pub fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "unknown status".to_string(),
    }
}
