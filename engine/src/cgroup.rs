//! A cgroup per step run: the one container a step's processes cannot leave.
//!
//! A process group, a session and an environment variable can all be left: a
//! child that calls `setsid` has a new group and session, and one started
//! with `env -i` has no `QFLOW_RUN_TOKEN`. Membership of a cgroup v2 is
//! inherited by every fork and only root can move a process out. So where the
//! host allows it (root, a cgroup2 hierarchy with `cgroup.kill`: the hybrid
//! layout's `/sys/fs/cgroup/unified` or a pure v2 `/sys/fs/cgroup`), each run of
//! a step gets `<hierarchy>/qflow/<run token>/`; every program the step starts
//! is a member before its first instruction: born in it (`spawn.rs`, through
//! the directory's descriptor opened here) or, on a kernel without
//! `CLONE_INTO_CGROUP`, joining it before `exec` (it writes `0` to the group's
//! `cgroup.procs`), a cancel signals every member, and the
//! end of the step, or the next apply after a `kill -9` of qflow, kills what
//! is left with `cgroup.kill` and removes the directory. qflow only ever
//! creates and removes its own directories under `qflow/`.
//!
//! Imports nothing of the engine.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The cgroup2 hierarchies qflow tries, in order.
const HIERARCHIES: [&str; 2] = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"];

/// One step run's cgroup.
#[derive(Debug)]
pub struct StepCgroup {
    dir: PathBuf,
    /// The directory, for `CLONE_INTO_CGROUP`.
    dir_fd: File,
    /// Its `cgroup.procs`, opened when a program must join by writing to it.
    procs: OnceLock<std::io::Result<File>>,
}

/// Where qflow keeps its cgroups on this host, if it may create them (looked
/// up once: the hierarchies a host mounts do not change under a run).
pub fn qflow_root() -> Option<PathBuf> {
    static ROOT: OnceLock<Option<PathBuf>> = OnceLock::new();
    ROOT.get_or_init(|| {
        HIERARCHIES.iter().find_map(|h| {
            let h = Path::new(h);
            (h.join("cgroup.procs").exists() && h.join("cgroup.max.depth").exists())
                .then(|| h.join("qflow"))
        })
    })
    .clone()
}

/// Whether this kernel's cgroups have `cgroup.kill` (5.14), asked of the
/// first cgroup qflow makes.
fn has_kill(dir: &Path) -> bool {
    static KILL: OnceLock<bool> = OnceLock::new();
    *KILL.get_or_init(|| dir.join("cgroup.kill").exists())
}

impl StepCgroup {
    /// Create the cgroup of the step run `token`; `None` when the host does not
    /// allow it (not root, no cgroup2 hierarchy, a kernel without `cgroup.kill`).
    pub fn create(token: &str) -> Option<StepCgroup> {
        if token.is_empty() || token.contains('/') {
            return None;
        }
        let root = qflow_root()?;
        let dir = root.join(token);
        // `qflow/` is made when the first step needs it.
        let made = std::fs::create_dir(&dir).or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&root).and_then(|_| std::fs::create_dir(&dir))
            }
            _ => Err(e),
        });
        if made.is_err() {
            return None;
        }
        let opened = has_kill(&dir)
            .then(|| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY)
                    .open(&dir)
                    .ok()
            })
            .flatten();
        match opened {
            Some(dir_fd) => Some(StepCgroup {
                dir,
                dir_fd,
                procs: OnceLock::new(),
            }),
            None => {
                let _ = std::fs::remove_dir(&dir);
                None
            }
        }
    }

    /// The cgroup's directory, open (close-on-exec) for `CLONE_INTO_CGROUP`.
    pub fn dir_fd(&self) -> BorrowedFd<'_> {
        self.dir_fd.as_fd()
    }

    /// The descriptor a child writes `0` to, before `exec`, to join
    /// (close-on-exec; opened the first time it is asked for).
    pub fn procs_fd(&self) -> std::io::Result<RawFd> {
        let procs = self.procs.get_or_init(|| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(self.dir.join("cgroup.procs"))
        });
        match procs {
            Ok(f) => Ok(f.as_raw_fd()),
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                format!(
                    "cannot open `{}`: {e}",
                    self.dir.join("cgroup.procs").display()
                ),
            )),
        }
    }

    /// The cgroup's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Send `signal` to every member.
    pub fn signal(&self, signal: i32) {
        signal_members(&self.dir, signal);
    }

    /// Whether no process is left in it.
    pub fn is_empty(&self) -> bool {
        is_empty(&self.dir)
    }

    /// Kill every member, wait (at most a second) until they are gone and
    /// remove the directory. Returns the CPU time its members used, all of
    /// them, from `cpu.stat` (`usage_usec`, which cgroup v2 keeps whether or not
    /// the cpu controller is enabled), when it could be read.
    pub fn kill_and_remove(&self) -> Option<Duration> {
        kill_and_remove(&self.dir)
    }
}

fn signal_members(dir: &Path, signal: i32) {
    for pid in members(dir) {
        // SAFETY: kill(2) on a pid read from the cgroup; no memory is touched.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// The pids in the cgroup at `dir`.
pub fn members(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn is_empty(dir: &Path) -> bool {
    match std::fs::read_to_string(dir.join("cgroup.events")) {
        Ok(events) => events.lines().any(|l| l == "populated 0"),
        Err(_) => true,
    }
}

/// `usage_usec` of the cgroup at `dir`.
fn cpu_usage(dir: &Path) -> Option<Duration> {
    let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    let usec = stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_micros(usec))
}

fn kill_and_remove(dir: &Path) -> Option<Duration> {
    if !is_empty(dir) {
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.kill"))
            .and_then(|mut f| f.write_all(b"1"));
        let deadline = Instant::now() + Duration::from_secs(1);
        while !is_empty(dir) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let usage = cpu_usage(dir);
    let _ = std::fs::remove_dir(dir);
    usage
}

/// After a `kill -9` of qflow: kill what is left in the cgroup of the step run
/// `token` and remove it. Returns (pid, program name) of each process killed.
pub fn kill_leftover(token: &str) -> Vec<(i32, String)> {
    let Some(root) = qflow_root() else {
        return Vec::new();
    };
    let dir = root.join(token);
    if token.is_empty() || token.contains('/') || !dir.is_dir() {
        return Vec::new();
    }
    let found: Vec<(i32, String)> = members(&dir)
        .into_iter()
        .map(|pid| {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_default();
            (pid, name)
        })
        .collect();
    kill_and_remove(&dir);
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn a_setsid_child_without_environment_is_still_killed_with_its_step() {
        let token = format!("cgroup-test-{}", std::process::id());
        let Some(cg) = StepCgroup::create(&token) else {
            eprintln!("no cgroup2 hierarchy qflow may use here: nothing to test");
            return;
        };
        let fd = cg.procs_fd().unwrap();
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "setsid env -i sleep 300 & exit 0"]);
        // SAFETY: write(2) is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                libc::write(fd, b"0".as_ptr().cast(), 1);
                Ok(())
            });
        }
        cmd.status().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let left = members(cg.dir());
        assert_eq!(
            left.len(),
            1,
            "the escaped sleep is still a member: {left:?}"
        );
        cg.kill_and_remove();
        assert!(!cg.dir().exists());
        assert!(
            !Path::new(&format!("/proc/{}", left[0])).exists()
                || std::fs::read_to_string(format!("/proc/{}/stat", left[0]))
                    .is_ok_and(|s| s.contains(") Z ")),
            "the sleep outlived its cgroup"
        );
    }
}
