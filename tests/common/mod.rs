//! The end-to-end test harness: a temporary workspace in which tests write a
//! workflow and its inputs, run the real `qflow` binary, and read what it did.
#![allow(dead_code)]

pub mod guest_disk;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A path for a scratch file named after `what`, unique across the tests of
/// this binary, which run in parallel threads of one process: a name made only
/// of the pid and a size or offset let two tests write and remove each other's
/// file (seen on CI as a wrong checksum).
pub fn scratch_file(what: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "scratch-{}-{n}-{}-{what}",
        std::process::id(),
        nanos()
    ))
}

/// A scratch directory holding one workflow. Removed on drop unless the test failed.
pub struct Space {
    dir: PathBuf,
    cache: Option<PathBuf>,
}

impl Default for Space {
    fn default() -> Self {
        Self::new()
    }
}

impl Space {
    pub fn new() -> Space {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let dir = base.join(format!("space-{}-{}-{}", std::process::id(), n, nanos()));
        std::fs::create_dir_all(&dir).unwrap();
        Space { dir, cache: None }
    }

    /// Use `dir` as the qflow cache (`--cache`) instead of `.qflow/` in the space.
    pub fn with_cache(mut self, dir: &Path) -> Space {
        self.cache = Some(dir.to_path_buf());
        self
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Write a file (parents created).
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> &Space {
        let p = self.dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        self
    }

    /// Write `workflow.yaml`.
    pub fn workflow(&self, yaml: &str) -> &Space {
        self.write("workflow.yaml", yaml)
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.dir.join(rel))
            .unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
    }

    /// A `qflow` command in this space (cache flag added when set).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_qflow"));
        cmd.current_dir(&self.dir);
        cmd.args(args);
        if let Some(cache) = &self.cache {
            cmd.env("QFLOW_CACHE", cache);
        }
        cmd.env("NO_COLOR", "1");
        cmd
    }

    /// Run `qflow ARGS` to completion.
    pub fn qflow(&self, args: &[&str]) -> Run {
        let out = self.command(args).output().expect("cannot run qflow");
        Run::from(out)
    }

    /// `qflow apply`, which must succeed.
    pub fn apply(&self) -> Run {
        self.qflow(&["apply"]).success()
    }
}

impl Drop for Space {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = make_writable_and_remove(&self.dir);
        }
    }
}

/// Remove a tree even where qflow made files read-only.
pub fn make_writable_and_remove(dir: &Path) -> std::io::Result<()> {
    let _ = Command::new("chmod").args(["-R", "u+w"]).arg(dir).status();
    std::fs::remove_dir_all(dir)
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A cache directory shared by every slow test of this build, so heavy artifacts
/// (a kernel, a base image) are built once per test run and hit the cache after.
/// `QFLOW_TEST_SHARED_CACHE` points it elsewhere, so several checkouts of the
/// project on one machine share one kernel build and one base image.
pub fn shared_cache() -> PathBuf {
    let p = match std::env::var_os("QFLOW_TEST_SHARED_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("shared-cache"),
    };
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Debian's kernel source tarball, which the slow tier builds.
pub const LINUX_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";

/// The slow tier's guest kernel step: the quickstart's kernel (tinyconfig, its
/// `qemu-guest.config` and `systemd.config`, an LZ4 bzImage) built from Debian's tarball
/// instead of a user's tree. Every slow test that builds the tarball uses these exact
/// fields, so one test run builds it once; the quickstart's own build of the unpacked
/// tree must come out byte-identical to it.
pub fn shared_kernel_step() -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/workflows/quickstart");
    format!(
        "  kernel:\n    kind: kernel\n    source: {{ tarball: {LINUX_TARBALL} }}\n    config: tinyconfig\n    fragments: [{dir}/qemu-guest.config, {dir}/systemd.config]\n    options: {{ KERNEL_LZ4: y, KERNEL_XZ: n }}\n"
    )
}

/// The bzImage of `shared_kernel_step`, built on the shared cache the first time a
/// test asks (later ones hit it), returned by its path in the shared cache's
/// read-only trees. Tests boot it from a cache of their own: one run at a time holds
/// a cache, so booting on the shared cache would make every boot test wait for the
/// others.
pub fn shared_kernel() -> PathBuf {
    static KERNEL: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    KERNEL
        .get_or_init(|| {
            assert!(
                Path::new(LINUX_TARBALL).is_file(),
                "the slow tier needs {LINUX_TARBALL}: apt-get install linux-source-6.1"
            );
            let s = Space::new().with_cache(&shared_cache());
            s.workflow(&format!(
                "version: 1\nname: kernel-shared\nsteps:\n{}",
                shared_kernel_step()
            ));
            s.apply();
            std::fs::canonicalize(s.join("out/kernel/bzImage")).unwrap()
        })
        .clone()
}

/// The newest log of `step` in the cache at `cache` (`<cache>/logs/<run>/<step>.log`).
pub fn newest_log(cache: &Path, step: &str) -> String {
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for run in std::fs::read_dir(cache.join("logs")).unwrap().flatten() {
        let p = run.path().join(format!("{step}.log"));
        if let Ok(meta) = std::fs::metadata(&p) {
            let t = meta.modified().unwrap();
            if newest.as_ref().is_none_or(|(nt, _)| t > *nt) {
                newest = Some((t, p));
            }
        }
    }
    std::fs::read_to_string(newest.expect("no step log").1).unwrap()
}

/// The objects make compiled according to a kernel step's log (`  CC      x.o` lines).
pub fn compiled(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.strip_prefix("  CC      "))
        .map(|t| t.trim().to_string())
        .collect()
}

/// What one qflow invocation did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Run {
    pub fn success(self) -> Run {
        assert_eq!(
            self.code, 0,
            "qflow failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn failure(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "expected exit {code}\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// The steps that ran, in completion order (plain output: `qflow: ok STEP ...`).
    pub fn ran(&self) -> Vec<String> {
        self.events("ok")
    }

    /// The steps that were cached (`qflow: cached STEP`).
    pub fn cached(&self) -> Vec<String> {
        self.events("cached")
    }

    /// The steps that failed (`qflow: FAILED STEP`).
    pub fn failed(&self) -> Vec<String> {
        self.events("FAILED")
    }

    fn events(&self, word: &str) -> Vec<String> {
        self.stderr
            .lines()
            .filter_map(|l| l.strip_prefix("qflow: "))
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                (it.next() == Some(word)).then(|| it.next().unwrap_or("").to_string())
            })
            .collect()
    }

    /// Sorted names of the steps that ran.
    pub fn ran_sorted(&self) -> Vec<String> {
        let mut v = self.ran();
        v.sort();
        v
    }

    pub fn stderr_contains(&self, needle: &str) -> bool {
        self.stderr.contains(needle)
    }
}

/// The host's own kernel, the newest `/boot/vmlinuz-*` (Debian's has the serial
/// console built in): the tests that boot a guest in seconds boot it with a busybox
/// initramfs. They cannot run without one.
pub fn host_kernel() -> String {
    let mut kernels: Vec<String> = std::fs::read_dir("/boot")
        .expect("cannot list /boot: this test boots the host's kernel")
        .flatten()
        .map(|e| e.path().to_string_lossy().into_owned())
        .filter(|p| p.starts_with("/boot/vmlinuz-"))
        .collect();
    kernels.sort();
    kernels
        .pop()
        .expect("no /boot/vmlinuz-*: install a kernel (apt-get install linux-image-amd64)")
}
