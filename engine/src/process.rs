//! The programs a step runs: each in a process group of its own, registered
//! so a cancel kills the whole tree, marked so the next apply finds what a
//! killed qflow left behind, and dying with the thread that started it.
//!
//! [`run_to_end`] runs one program to completion, streaming its output line by
//! line to the step log and a callback, and fails quoting its last lines;
//! [`spawn`] starts a long-lived one (QEMU) behind a [`RunningChild`] guard.
//! `context.rs` wraps both for the kinds. Imports `step_log` and `leftovers`.

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::step_log::StepLog;

/// How many trailing output lines a failure quotes.
const TAIL_LINES: usize = 20;

/// The process groups of every child a step has running, so a cancel can kill them all.
#[derive(Default, Clone)]
pub struct ProcessGroups {
    inner: Arc<Mutex<HashSet<i32>>>,
    cancelled: Arc<AtomicBool>,
}

impl ProcessGroups {
    /// No group yet, not cancelled.
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

    /// Whether [`ProcessGroups::cancel_all`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// How many process groups are registered.
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

/// A long-lived child (QEMU) started with [`spawn`]. Dropping it kills its
/// whole process group and reaps it.
pub struct RunningChild {
    child: Child,
    groups: ProcessGroups,
    pgid: i32,
    done: bool,
}

impl RunningChild {
    /// The child's process id.
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

/// Start `cmd` in a process group of its own, registered in `groups`, with
/// `token` in its environment (see `leftovers.rs`); killed at once if the run
/// is already cancelled.
fn start(
    mut cmd: Command,
    groups: &ProcessGroups,
    token: Option<&str>,
) -> anyhow::Result<(Child, i32)> {
    cmd.process_group(0);
    die_with_parent(&mut cmd);
    if let Some(token) = token {
        cmd.env(crate::leftovers::TOKEN_VAR, token);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run `{}`", program_name(&cmd)))?;
    let pgid = child.id() as i32;
    groups.add(pgid);
    if groups.is_cancelled() {
        kill_group(pgid);
    }
    Ok((child, pgid))
}

/// Start a long-lived program; the caller chose its stdio.
pub fn spawn(
    cmd: Command,
    groups: &ProcessGroups,
    token: Option<&str>,
) -> anyhow::Result<RunningChild> {
    let (child, pgid) = start(cmd, groups, token)?;
    Ok(RunningChild {
        child,
        groups: groups.clone(),
        pgid,
        done: false,
    })
}

/// Run `cmd` to completion: every output line goes to `log` and to `on_line`
/// (stdout lines as they come, stderr lines in between); with `capture`,
/// stdout is collected there instead and only logged. Fails on a non-zero
/// exit quoting the last lines, or with `interrupted` once `groups` is cancelled.
pub fn run_to_end(
    mut cmd: Command,
    groups: &ProcessGroups,
    token: Option<&str>,
    log: &StepLog,
    on_line: &mut dyn FnMut(&str),
    capture: Option<&mut Vec<u8>>,
) -> anyhow::Result<()> {
    let shown = display_command(&cmd);
    log.line(&format!("$ {shown}"));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (mut child, pgid) = start(cmd, groups, token)?;
    let stdout = child.stdout.take().expect("piped stdout");
    let tail: Arc<Mutex<VecDeque<String>>> = Arc::default();
    let (err_thread, err_lines) = stream_stderr(child.stderr.take(), log, &tail);
    let out_result = if let Some(buf) = capture {
        let mut stdout = stdout;
        let r = stdout.read_to_end(buf);
        for line in String::from_utf8_lossy(buf).lines() {
            log.line(line);
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
                    log.line(&line);
                    push_tail(&tail, &line);
                    on_line(&line);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            err_lines.try_iter().for_each(|l| on_line(&l));
        }
        result
    };
    let _ = err_thread.join();
    err_lines.try_iter().for_each(|l| on_line(&l));
    let status = child.wait();
    // Whatever the program left running in its group dies with it.
    kill_group(pgid);
    groups.remove(pgid);
    out_result.context("cannot read program output")?;
    let status = status.context("cannot wait for program")?;
    if groups.is_cancelled() {
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

/// Stream stderr on a thread of its own: into the log and the tail, and over
/// the returned channel to the caller's line handler.
fn stream_stderr(
    stderr: Option<ChildStderr>,
    log: &StepLog,
    tail: &Arc<Mutex<VecDeque<String>>>,
) -> (JoinHandle<()>, Receiver<String>) {
    let stderr = stderr.expect("piped stderr");
    let (tx, rx) = channel::<String>();
    let log = log.clone();
    let tail = tail.clone();
    let thread = std::thread::spawn(move || {
        for line in BufReader::new(stderr).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_string();
            log.line(&line);
            push_tail(&tail, &line);
            let _ = tx.send(line);
        }
    });
    (thread, rx)
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
