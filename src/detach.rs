//! `qflow apply --detach`: the hand recipe's "Preserving Jobs Across Sessions" without
//! `screen`. qflow starts itself again in a new session (setsid), so the SIGHUP
//! sent when an ssh login ends never reaches it; its output goes to a log file in
//! the cache and `qflow status` reads the live run record.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::Context as _;

/// Start the same `qflow apply` without `--detach` in the background.
pub fn detach(cache_dir: &Path) -> anyhow::Result<i32> {
    let logs = cache_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let log_path = logs.join(format!("detached-{stamp}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the qflow executable")?;
    // Slurm jobs of a detached run are batch jobs, which outlive any process.
    // `-C DIR` was already applied: the child starts in this directory.
    let mut raw = std::env::args().skip(1);
    let mut kept = Vec::new();
    while let Some(a) = raw.next() {
        if a == "-C" {
            raw.next();
        } else if !a.starts_with("-C") {
            kept.push(a);
        }
    }
    let args: Vec<String> = kept
        .into_iter()
        .map(|a| {
            if a == "--detach" {
                "--slurm-batch".to_string()
            } else {
                a
            }
        })
        .collect();
    let mut cmd = Command::new(exe);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .context("cannot start qflow in the background")?;
    eprintln!(
        "qflow: detached (pid {}); log: {}\nqflow: `qflow status` shows its progress; it survives the end of this login",
        child.id(),
        log_path.display()
    );
    Ok(0)
}
