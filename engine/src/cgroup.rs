//! A cgroup per step run: the one container a step's processes cannot leave.
//!
//! A process group, a session and an environment variable can all be left: a
//! child that calls `setsid` has a new group and session, and one started
//! with `env -i` has no `QFLOW_RUN_TOKEN`. Membership of a cgroup v2 is
//! inherited by every fork and only root can move a process out. So where the
//! host allows it (root, a cgroup2 hierarchy with `cgroup.kill`: the hybrid
//! layout's `/sys/fs/cgroup/unified` or a pure v2 `/sys/fs/cgroup`), each run of
//! a step gets `<hierarchy>/qflow/<run token>/`; every program the step starts
//! joins it before `exec` (it writes `0` to the group's `cgroup.procs`
//! through a descriptor opened here), a cancel signals every member, and the
//! end of the step, or the next apply after a `kill -9` of qflow, kills what
//! is left with `cgroup.kill` and removes the directory. qflow only ever
//! creates and removes its own directories under `qflow/`.
//!
//! Imports nothing of the engine.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The cgroup2 hierarchies qflow tries, in order.
const HIERARCHIES: [&str; 2] = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"];

/// One step run's cgroup.
#[derive(Debug)]
pub struct StepCgroup {
    dir: PathBuf,
    procs: File,
}

/// Where qflow keeps its cgroups on this host, if it may create them.
pub fn qflow_root() -> Option<PathBuf> {
    HIERARCHIES.iter().find_map(|h| {
        let h = Path::new(h);
        (h.join("cgroup.procs").exists() && h.join("cgroup.max.depth").exists())
            .then(|| h.join("qflow"))
    })
}

impl StepCgroup {
    /// Create the cgroup of the step run `token`; `None` when the host does not
    /// allow it (not root, no cgroup2 hierarchy, a kernel without `cgroup.kill`).
    pub fn create(token: &str) -> Option<StepCgroup> {
        if token.is_empty() || token.contains('/') {
            return None;
        }
        let root = qflow_root()?;
        if std::fs::create_dir_all(&root).is_err() {
            return None;
        }
        let dir = root.join(token);
        if std::fs::create_dir(&dir).is_err() || !dir.join("cgroup.kill").exists() {
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
        {
            Ok(procs) => Some(StepCgroup { dir, procs }),
            Err(_) => {
                let _ = std::fs::remove_dir(&dir);
                None
            }
        }
    }

    /// The descriptor a child writes `0` to, before `exec`, to join (close-on-exec).
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
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
        let fd = cg.procs_fd();
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
