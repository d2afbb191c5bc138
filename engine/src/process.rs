//! The programs a step runs: each in a process group of its own, registered
//! so a cancel kills the whole tree, marked so the next apply finds what a
//! killed qflow left behind.
//!
//! No program is started with a `fork` of qflow, whose cost grows with
//! qflow's memory (a run of 50,000 steps): a program of a step without a
//! cgroup is started by the standard library with `posix_spawn` (a `vfork`;
//! its process group is a spawn attribute), and one of a step with a cgroup
//! (`cgroup.rs`) is born in the cgroup by `clone3` (`spawn.rs`), so that not
//! even a shell that backgrounds `setsid env -i …` and exits at once can
//! leave a child outside, beyond the reach of both cgroup and token. Where
//! the kernel cannot do that, and for a long-lived program whose stdio the
//! caller chose, the standard library forks with a hook that writes `0` to
//! the cgroup's `cgroup.procs` before `exec`.
//! No program gets a death signal: the end of the step kills its cgroup and
//! groups, an exit on a second Ctrl-C kills every step's
//! ([`kill_every_step`]), and after a `kill -9` of qflow the next apply finds
//! its programs by their cgroup or token (`leftovers.rs`).
//!
//! [`run_to_end`] runs one program to completion, streaming its output line by
//! line to the step log and a callback, and fails quoting its last lines;
//! [`spawn`] starts a long-lived one (QEMU) behind a [`RunningChild`] guard.
//! `context.rs` wraps both for the kinds.
//!
//! The CPU time of a step ([`ProcessGroups::cpu`]) is its cgroup's usage where
//! it has one (every process it started, reaped or not); otherwise each program
//! is reaped with `wait4`, whose usage holds the program's time and that of the
//! descendants it reaped, and the step's time is their sum. Imports `step_log`,
//! `leftovers`, `cgroup` and `spawn`.

use std::collections::{HashSet, VecDeque};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::cgroup::StepCgroup;
use crate::step_log::StepLog;

/// How many trailing output lines a failure quotes.
const TAIL_LINES: usize = 20;

/// How long a cancelled step's processes get between SIGTERM and SIGKILL: long
/// enough for make to delete the target it was writing, short enough for Ctrl-C.
pub const GRACE: Duration = Duration::from_secs(2);

/// Every process a step has running, so a cancel can stop them all: the
/// process group of each program it started (each starts a group of its own),
/// its run token (see `leftovers.rs`) and, where the host allows it, its
/// cgroup (see `cgroup.rs`), which catches the ones that left both (`setsid`,
/// then `env -i`).
#[derive(Default, Clone)]
pub struct ProcessGroups {
    inner: Arc<Mutex<HashSet<i32>>>,
    cancelled: Arc<AtomicBool>,
    contained: Arc<OnceLock<(String, Option<StepCgroup>)>>,
    reaper: Arc<Mutex<Option<JoinHandle<bool>>>>,
    cpu: Arc<Mutex<CpuTime>>,
}

/// The CPU time a step's programs used, as far as it is known yet.
#[derive(Default, Debug, Clone, Copy)]
struct CpuTime {
    /// What `wait4` reported of the programs reaped so far.
    reaped: Duration,
    /// The step's cgroup's usage, read when the step ended.
    cgroup: Option<Duration>,
}

/// How a step's processes ended ([`ProcessGroups::finish`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Each one ended on its own or on SIGTERM: a program's own clean-up ran.
    Cleanly,
    /// Some had to be killed with SIGKILL: what they were writing may be half-written.
    Killed,
}

impl ProcessGroups {
    /// No group yet, not cancelled.
    pub fn new() -> Self {
        ProcessGroups::default()
    }

    /// Put every program started from now on in a cgroup of the step run
    /// `token`, where the host allows it. Returns whether it does.
    pub fn contain(&self, token: &str) -> bool {
        let (_, cgroup) = self.contained.get_or_init(|| {
            live_steps().lock().unwrap().push(self.clone());
            (token.to_string(), StepCgroup::create(token))
        });
        cgroup.is_some()
    }

    fn cgroup(&self) -> Option<&StepCgroup> {
        self.contained.get().and_then(|(_, c)| c.as_ref())
    }

    /// The run token, if the step has one: a Slurm job's is blank (so that the
    /// next apply may adopt it), and a blank token matches every such job.
    fn token(&self) -> Option<&str> {
        (self.contained.get())
            .map(|(t, _)| t.as_str())
            .filter(|t| !t.is_empty())
    }

    fn add(&self, pgid: i32) {
        self.inner.lock().unwrap().insert(pgid);
    }

    fn remove(&self, pgid: i32) {
        self.inner.lock().unwrap().remove(&pgid);
    }

    /// Mark the run cancelled, send SIGTERM to every process of the step and,
    /// after [`GRACE`], SIGKILL to those still there (on a thread of its own;
    /// [`ProcessGroups::finish`] waits for it).
    pub fn cancel_all(&self) {
        // The reaper is in its place before anything is signalled: a step whose
        // program dies of the SIGTERM at once reaches `finish` while the signals
        // still go out (a `/proc` scan for its token), and must wait for it there.
        let mut slot = self.reaper.lock().unwrap();
        if self.cancelled.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = self.clone();
        let reaper = std::thread::spawn(move || {
            me.signal_all(libc::SIGTERM);
            let deadline = Instant::now() + GRACE;
            while Instant::now() < deadline {
                if !me.any_left() {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let left = me.any_left();
            me.signal_all(libc::SIGKILL);
            left
        });
        *slot = Some(reaper);
    }

    /// Whether [`ProcessGroups::cancel_all`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// How many process groups are registered.
    pub fn running(&self) -> usize {
        self.inner.lock().unwrap().len()
    }

    /// The step is over: wait for a cancel's grace period to end, then kill
    /// whatever the step left running (its cgroup, its groups, its token)
    /// and remove its cgroup. Says whether anything needed SIGKILL during a cancel.
    ///
    /// With a cgroup, the cgroup holds every process the step left (`cgroup.kill`
    /// reaches them all), so `/proc` is not scanned for the token: a scan reads
    /// two files of every process on the host, which at thousands of short
    /// steps would cost more than the steps.
    pub fn finish(&self) -> Ended {
        let reaper = self.reaper.lock().unwrap().take();
        let killed = reaper.is_some_and(|r| r.join().unwrap_or(true));
        let groups: Vec<i32> = self.inner.lock().unwrap().drain().collect();
        for pgid in groups {
            signal_group(pgid, libc::SIGKILL);
        }
        match self.cgroup() {
            Some(cgroup) => {
                let usage = cgroup.kill_and_remove();
                if usage.is_some() {
                    self.cpu.lock().unwrap().cgroup = usage;
                }
            }
            None => {
                if let Some(token) = self.token() {
                    crate::leftovers::signal_matching(&[token], libc::SIGKILL);
                }
            }
        }
        live_steps()
            .lock()
            .unwrap()
            .retain(|g| !Arc::ptr_eq(&g.inner, &self.inner));
        if killed {
            Ended::Killed
        } else {
            Ended::Cleanly
        }
    }

    fn signal_all(&self, signal: i32) {
        let groups: Vec<i32> = self.inner.lock().unwrap().iter().copied().collect();
        for pgid in groups {
            signal_group(pgid, signal);
        }
        if let Some(cgroup) = self.cgroup() {
            cgroup.signal(signal);
        }
        if let Some(token) = self.token() {
            crate::leftovers::signal_matching(&[token], signal);
        }
    }

    /// The CPU time (user and system) the step's programs used: its cgroup's
    /// usage once [`ProcessGroups::finish`] has read it, else the sum of what
    /// `wait4` reported of every program reaped (each with the descendants it reaped).
    pub fn cpu(&self) -> Duration {
        let cpu = *self.cpu.lock().unwrap();
        cpu.cgroup.unwrap_or(cpu.reaped)
    }

    fn add_reaped(&self, t: Duration) {
        self.cpu.lock().unwrap().reaped += t;
    }

    fn any_left(&self) -> bool {
        // A cgroup holds every process the step started, and counts only live ones;
        // a group still answers `kill(-pgid, 0)` for a zombie whose parent died
        // before it, until some init reaps it (which may take a while).
        if let Some(cgroup) = self.cgroup() {
            return !cgroup.is_empty();
        }
        let in_groups = self.inner.lock().unwrap().iter().any(|&pgid| {
            // SAFETY: kill(2) with signal 0 only checks that the group exists.
            unsafe { libc::kill(-pgid, 0) == 0 }
        });
        if in_groups {
            return true;
        }
        (self.token()).is_some_and(|t| !crate::leftovers::signal_matching(&[t], 0).is_empty())
    }
}

/// The process groups of every step now running in this qflow, for [`kill_every_step`].
fn live_steps() -> &'static Mutex<Vec<ProcessGroups>> {
    static LIVE: OnceLock<Mutex<Vec<ProcessGroups>>> = OnceLock::new();
    LIVE.get_or_init(Mutex::default)
}

/// qflow exits at once (a second Ctrl-C): SIGKILL every process of every running
/// step, their cgroups included, so none outlives it. (A `kill -9` of qflow leaves
/// them to the next apply, `leftovers.rs`.)
pub fn kill_every_step() {
    let live: Vec<ProcessGroups> = live_steps()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for g in live {
        let groups: Vec<i32> = g
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        for pgid in groups {
            signal_group(pgid, libc::SIGKILL);
        }
        if let Some(cgroup) = g.cgroup() {
            cgroup.kill_and_remove();
        }
    }
}

fn kill_group(pgid: i32) {
    signal_group(pgid, libc::SIGKILL);
}

fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// A long-lived child (QEMU) started with [`spawn`]. Dropping it kills its
/// whole process group and reaps it.
pub struct RunningChild {
    child: Child,
    groups: ProcessGroups,
    pgid: i32,
    done: bool,
    /// Its exit status, once reaped (asked again, it is the answer).
    exited: Option<ExitStatus>,
}

impl RunningChild {
    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Exit status if it has exited.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.exited.is_some() {
            return Ok(self.exited);
        }
        if self.done {
            bail!(
                "cannot wait for `{}`: it was killed and not reaped",
                self.id()
            );
        }
        let status = reap(self.pgid, &self.groups, false)?;
        if status.is_some() {
            self.exited = status;
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
            self.exited = reap(self.pgid, &self.groups, true).ok().flatten();
            self.finish();
        }
    }

    /// The child's piped stdin, stdout and stderr, if any were requested (it
    /// is reaped here: never wait for it through this).
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

/// Start `cmd` in a process group of its own, in the step's cgroup when it
/// has one, registered in `groups`, with `token` in its environment (see
/// `leftovers.rs`); stopped at once if the run is already cancelled. Through
/// the standard library: a cgroup needs a hook between fork and exec, and so a
/// `fork` (`run_to_end` avoids it where it can).
fn start(
    mut cmd: Command,
    groups: &ProcessGroups,
    token: Option<&str>,
) -> anyhow::Result<(Child, i32)> {
    if let Some(token) = token {
        groups.contain(token);
        cmd.env(crate::leftovers::TOKEN_VAR, token);
    }
    // A group of its own: a spawn attribute, so without a cgroup no hook runs
    // between fork and exec.
    cmd.process_group(0);
    if let Some(cgroup) = groups.cgroup() {
        let procs = cgroup
            .procs_fd()
            .with_context(|| format!("cannot run `{}`", program_name(&cmd)))?;
        join_before_exec(&mut cmd, procs);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run `{}`", program_name(&cmd)))?;
    let pgid = child.id() as i32;
    registered(groups, pgid);
    Ok((child, pgid))
}

/// Start `cmd`, which carries no `pre_exec` hook unless `has_hook`, as
/// [`start`] does, with stdin from `/dev/null` and stdout and stderr to the
/// given descriptors (`stderr` `None`: to stdout's). In a cgroup it is born
/// there (`spawn.rs`) without a copy of qflow's memory where the kernel
/// allows it. Returns its pid, which is its process group's id.
fn start_with_output(
    mut cmd: Command,
    groups: &ProcessGroups,
    token: Option<&str>,
    stdout: OwnedFd,
    stderr: Option<OwnedFd>,
    has_hook: bool,
) -> anyhow::Result<i32> {
    if let Some(token) = token {
        groups.contain(token);
        cmd.env(crate::leftovers::TOKEN_VAR, token);
    }
    if !has_hook && let Some(cgroup) = groups.cgroup() {
        let null = dev_null().context("cannot open `/dev/null`")?;
        let err = stderr.as_ref().map_or(stdout.as_fd(), |e| e.as_fd());
        match crate::spawn::spawn_in_cgroup(&cmd, [null, stdout.as_fd(), err], cgroup.dir_fd()) {
            Ok(Some(pid)) => {
                registered(groups, pid);
                return Ok(pid);
            }
            Ok(None) => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot run `{}`", program_name(&cmd)));
            }
        }
    }
    let stderr = match stderr {
        Some(e) => e,
        None => stdout.try_clone().context("cannot make a pipe")?,
    };
    cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    // The token is in `cmd` already.
    let (_child, pgid) = start(cmd, groups, None)?;
    Ok(pgid)
}

/// Register the group of a program just started; stop it if the run is
/// already cancelled.
fn registered(groups: &ProcessGroups, pgid: i32) {
    groups.add(pgid);
    if groups.is_cancelled() {
        kill_group(pgid);
    }
}

/// `/dev/null`, opened once (close-on-exec), a program's stdin.
fn dev_null() -> std::io::Result<BorrowedFd<'static>> {
    static NULL: OnceLock<std::io::Result<std::fs::File>> = OnceLock::new();
    match NULL.get_or_init(|| std::fs::File::open("/dev/null")) {
        Ok(f) => Ok(f.as_fd()),
        Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
    }
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
        exited: None,
    })
}

/// Run `cmd` to completion: every output line goes to `log` and to `on_line`,
/// stdout and stderr through one pipe so the log keeps the order the program
/// wrote them in; with `capture`, stdout is collected there instead (on a pipe
/// of its own) and only logged. Fails on a non-zero exit quoting the last
/// lines, or with `interrupted` once `groups` is cancelled: then it returns as
/// soon as the program itself has ended, even while a process it left behind
/// still holds its output open.
#[allow(clippy::too_many_arguments)]
pub fn run_to_end(
    cmd: Command,
    groups: &ProcessGroups,
    token: Option<&str>,
    log: &StepLog,
    on_line: &mut dyn FnMut(&str),
    mut capture: Option<&mut Vec<u8>>,
    has_hook: bool,
) -> anyhow::Result<()> {
    let shown = display_command(&cmd);
    log.line(&format!("$ {shown}"));
    // Captured stdout needs a pipe of its own; otherwise stdout and stderr share one.
    let (reader, writer) = std::io::pipe().context("cannot make a pipe")?;
    let mut outputs = vec![reader];
    let stderr = if capture.is_some() {
        let (err_reader, err_writer) = std::io::pipe().context("cannot make a pipe")?;
        outputs.push(err_reader);
        Some(err_writer.into())
    } else {
        None
    };
    // The write ends are consumed: once started, they are the child's alone.
    let pgid = start_with_output(cmd, groups, token, writer.into(), stderr, has_hook)?;
    let pid = pgid;
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut status = None;
    let mut streams: Vec<Stream> = outputs.iter().map(|o| Stream::new(o.as_raw_fd())).collect();
    let mut out_result = Ok(());
    while streams.iter().any(|s| s.open) {
        if groups.is_cancelled() {
            if status.is_none() {
                status = reap(pid, groups, false).ok().flatten();
            }
            if status.is_some() {
                break;
            }
        }
        let mut lines: Vec<(usize, Vec<u8>)> = Vec::new();
        if let Err(e) = poll_streams(&mut streams, &mut lines) {
            out_result = Err(e);
            break;
        }
        for (which, line) in lines {
            if which == 0
                && let Some(buf) = capture.as_deref_mut()
            {
                buf.extend_from_slice(&line);
                let text = String::from_utf8_lossy(&line);
                log.line(text.trim_end_matches('\n'));
                continue;
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches('\n').trim_end_matches('\r');
            log.line(text);
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(text.to_string());
            on_line(text);
        }
    }
    if groups.is_cancelled() && out_result.is_ok() && streams.iter().any(|s| s.open) {
        drain_into_log(streams, outputs, log.clone());
    } else {
        drop(outputs);
    }
    let status = match status {
        Some(s) => Ok(s),
        None => reap(pid, groups, true).map(|s| s.expect("a blocking wait returns a status")),
    };
    // Whatever the program left running in its group dies with it; after a
    // cancel, at the end of its grace period: a shell that ran make dies of
    // SIGTERM at once, while make is still deleting the target it was writing.
    if !groups.is_cancelled() {
        kill_group(pgid);
        groups.remove(pgid);
    }
    out_result.context("cannot read program output")?;
    let status = status.context("cannot wait for program")?;
    if groups.is_cancelled() {
        bail!("interrupted");
    }
    if !status.success() {
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

/// Reap the child `pid` with `wait4` (at once with `block`, else only if it has
/// exited) and add its CPU time, with that of the descendants it reaped, to
/// `groups`. A `Child` of it must never be waited for through the standard
/// library after this: the pid may be another process by then.
fn reap(pid: i32, groups: &ProcessGroups, block: bool) -> std::io::Result<Option<ExitStatus>> {
    use std::os::unix::process::ExitStatusExt;
    let flags = if block { 0 } else { libc::WNOHANG };
    loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value of this plain C struct.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4(2) writes only into the two locals passed.
        let got = unsafe { libc::wait4(pid, &mut status, flags, &mut usage) };
        if got < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if got == 0 {
            return Ok(None);
        }
        groups.add_reaped(timeval(usage.ru_utime) + timeval(usage.ru_stime));
        return Ok(Some(ExitStatus::from_raw(status)));
    }
}

fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
}

/// The CPU time (user and system) the calling thread has used.
pub fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes only into `t`.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// One output stream of a program: its descriptor and the bytes of a line not ended yet.
struct Stream {
    fd: RawFd,
    open: bool,
    partial: Vec<u8>,
}

impl Stream {
    fn new(fd: RawFd) -> Stream {
        Stream {
            fd,
            open: true,
            partial: Vec::new(),
        }
    }
}

/// After a cancel, what the program started may still write while it cleans up
/// (make says which target it deletes, then deletes it): its output is read into
/// the log on a thread of its own until every writer is gone, instead of closing
/// the pipe under them, which would kill them with SIGPIPE halfway through.
fn drain_into_log(mut streams: Vec<Stream>, outputs: Vec<std::io::PipeReader>, log: StepLog) {
    std::thread::spawn(move || {
        let _open = outputs;
        while streams.iter().any(|s| s.open) {
            let mut lines = Vec::new();
            if poll_streams(&mut streams, &mut lines).is_err() {
                return;
            }
            for (_, line) in lines {
                let text = String::from_utf8_lossy(&line);
                log.line(text.trim_end_matches('\n').trim_end_matches('\r'));
            }
        }
    });
}

/// Wait at most 100 ms for output, read what came and append each complete
/// line (with its newline; the last one at end of file without) to `lines`,
/// tagged with its stream's index.
fn poll_streams(streams: &mut [Stream], lines: &mut Vec<(usize, Vec<u8>)>) -> std::io::Result<()> {
    let mut fds: Vec<libc::pollfd> = streams
        .iter()
        .map(|s| libc::pollfd {
            fd: if s.open { s.fd } else { -1 },
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return if e.kind() == std::io::ErrorKind::Interrupted {
            Ok(())
        } else {
            Err(e)
        };
    }
    let mut buf = [0u8; 16 * 1024];
    for (i, (s, p)) in streams.iter_mut().zip(&fds).enumerate() {
        if !s.open || p.revents == 0 {
            continue;
        }
        // SAFETY: reading into a stack buffer of the given length.
        let got = unsafe { libc::read(s.fd, buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if got == 0 {
            s.open = false;
            if !s.partial.is_empty() {
                lines.push((i, std::mem::take(&mut s.partial)));
            }
            continue;
        }
        s.partial.extend_from_slice(&buf[..got as usize]);
        while let Some(end) = s.partial.iter().position(|b| *b == b'\n') {
            let rest = s.partial.split_off(end + 1);
            lines.push((i, std::mem::replace(&mut s.partial, rest)));
        }
    }
    Ok(())
}

/// Make the child join the step's cgroup through `procs_fd` before it runs its
/// program, so that even its first instruction runs inside.
fn join_before_exec(cmd: &mut Command, procs_fd: RawFd) {
    // SAFETY: write(2) is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell script whose two programs (one in the background) each burn
    /// 300 ms of CPU, measured by themselves from `/proc` in clock ticks.
    fn two_burners() -> Command {
        let burn = "while :; do read -r _ _ _ _ _ _ _ _ _ _ _ _ _ u s _ < /proc/$$/stat; \
                    [ $((u + s)) -ge 30 ] && exit 0; done";
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sh -c \"$0\" & sh -c \"$0\"; wait", burn]);
        cmd
    }

    fn run_burners(groups: &ProcessGroups, token: Option<&str>) {
        let dir = std::env::temp_dir().join(format!(
            "qflow-cpu-test-{}-{}",
            std::process::id(),
            token.unwrap_or("none")
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let log = StepLog::create(&dir.join("step.log")).unwrap();
        run_to_end(two_burners(), groups, token, &log, &mut |_| {}, None, false).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_step_is_charged_the_cpu_time_of_its_programs_and_of_the_children_they_waited_for() {
        let groups = ProcessGroups::new();
        run_burners(&groups, None);
        assert_eq!(groups.finish(), Ended::Cleanly);
        let cpu = groups.cpu();
        assert!(cpu >= Duration::from_millis(590), "{cpu:?}");
    }

    #[test]
    fn a_long_lived_program_such_as_qemu_is_charged_when_it_is_reaped_and_answers_again() {
        let groups = ProcessGroups::new();
        let mut child = spawn(two_burners(), &groups, None).unwrap();
        let status = child.wait_timeout(Duration::from_secs(60)).unwrap();
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
        assert_eq!(child.try_wait().unwrap(), status, "asked again");
        drop(child);
        groups.finish();
        let cpu = groups.cpu();
        assert!(cpu >= Duration::from_millis(590), "{cpu:?}");
    }

    #[test]
    fn a_step_in_a_cgroup_is_charged_its_cgroups_cpu_time() {
        let token = format!("cpu-test-{}", std::process::id());
        let groups = ProcessGroups::new();
        if !groups.contain(&token) {
            eprintln!("no cgroup2 hierarchy qflow may use here: nothing to test");
            return;
        }
        run_burners(&groups, Some(&token));
        groups.finish();
        let cpu = groups.cpu();
        assert!(groups.cpu.lock().unwrap().cgroup.is_some());
        assert!(cpu >= Duration::from_millis(590), "{cpu:?}");
    }

    /// Run `cmd` to its end for the step run `token`, its stdout captured.
    fn captured(
        cmd: Command,
        groups: &ProcessGroups,
        token: &str,
        hook: bool,
    ) -> anyhow::Result<String> {
        let dir = std::env::temp_dir().join(format!("qflow-capture-test-{token}"));
        std::fs::create_dir_all(&dir).unwrap();
        let log = StepLog::create(&dir.join("step.log")).unwrap();
        let mut out = Vec::new();
        let result = run_to_end(
            cmd,
            groups,
            Some(token),
            &log,
            &mut |_| {},
            Some(&mut out),
            hook,
        );
        std::fs::remove_dir_all(&dir).unwrap();
        result.map(|_| String::from_utf8_lossy(&out).into_owned())
    }

    #[test]
    fn a_steps_program_is_in_its_cgroup_from_the_start_with_or_without_a_hook() {
        for hook in [false, true] {
            let token = format!("cgroup-start-test-{}-{hook}", std::process::id());
            let groups = ProcessGroups::new();
            if !groups.contain(&token) {
                eprintln!("no cgroup2 hierarchy qflow may use here: nothing to test");
                return;
            }
            // `cat` reads its own cgroup before it does anything else.
            let mut cmd = Command::new("cat");
            cmd.arg("/proc/self/cgroup");
            let out = captured(cmd, &groups, &token, hook).unwrap();
            assert_eq!(
                groups.running(),
                0,
                "its group is unregistered once it ended"
            );
            groups.finish();
            let v2 = out
                .lines()
                .find(|l| l.starts_with("0::"))
                .unwrap_or_default();
            assert!(
                v2.ends_with(&format!("/qflow/{token}")),
                "hook {hook}: {out}"
            );
        }
    }

    #[test]
    fn a_missing_program_fails_naming_it_with_or_without_a_cgroup() {
        for token in [
            format!("missing-test-{}", std::process::id()),
            String::new(),
        ] {
            let groups = ProcessGroups::new();
            let err = captured(
                Command::new("qflow-no-such-program"),
                &groups,
                &token,
                false,
            )
            .unwrap_err();
            groups.finish();
            let msg = format!("{err:#}");
            assert!(
                msg.starts_with("cannot run `qflow-no-such-program`: No such file"),
                "{msg}"
            );
        }
    }

    #[test]
    fn a_steps_program_leads_a_process_group_of_its_own_and_sees_its_token() {
        let token = format!("group-test-{}", std::process::id());
        let groups = ProcessGroups::new();
        let contained = groups.contain(&token);
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "read -r pid _ _ _ pgrp _ < /proc/$$/stat; echo \"$pid $pgrp $QFLOW_RUN_TOKEN\"; echo to-log >&2",
        ]);
        let out = captured(cmd, &groups, &token, false).unwrap();
        groups.finish();
        let fields: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(
            fields.len(),
            3,
            "stderr goes to the log only: {out} (cgroup: {contained})"
        );
        assert_eq!(fields[0], fields[1], "{out}");
        assert_eq!(fields[2], token);
    }
}
