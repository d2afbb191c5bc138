//! `qflow stop`: stop the detached run (`qflow apply --detach`) on a workflow's
//! cache as Ctrl-C would stop an attached one: SIGTERM to the coordinator, which
//! stops every running step (SIGTERM, 2 s, SIGKILL), records nothing for them and
//! exits. The pid comes from the cache's `detached.pid`; it is signalled only
//! while that process is still the one recorded (same start time, still a
//! `qflow apply`): a pid the system gave to another process is left alone.

use std::path::Path;
use std::time::{Duration, Instant};

use qflow_engine::Registry;
use qflow_engine::session::cache_dir;

use crate::cli::Located;
use crate::detach::PID_FILE;

/// How long the coordinator gets to stop its steps before `stop` says so.
const WAIT: Duration = Duration::from_secs(30);

pub fn run(registry: &Registry, workflow: &Located) -> anyhow::Result<i32> {
    let wf = super::load(workflow, registry)?;
    let dir = cache_dir(&wf, workflow.cache.as_deref());
    let record = dir.join(PID_FILE);
    let text = std::fs::read_to_string(&record).unwrap_or_default();
    let mut lines = text.lines();
    let pid = lines.next().and_then(|p| p.trim().parse::<i32>().ok());
    let started = lines.next().and_then(|t| t.trim().parse::<u64>().ok());
    let log = lines.next().unwrap_or("").to_string();
    let recorded = |p: i32| p > 0 && start_time(p) == started && is_detached_apply(p);
    let Some(pid) = pid.filter(|&p| recorded(p)) else {
        let _ = std::fs::remove_file(&record);
        println!(
            "qflow: no detached run of `{}` is running; nothing to stop",
            wf.name
        );
        return Ok(0);
    };
    // SAFETY: kill(2) with a checked positive pid.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        let e = std::io::Error::last_os_error();
        anyhow::bail!("cannot stop the detached run (pid {pid}): {e}");
    }
    let start = Instant::now();
    while alive(pid) {
        if start.elapsed() > WAIT {
            println!(
                "qflow: sent SIGTERM to the detached run of `{}` (pid {pid}); it is still stopping its steps (log: {log})",
                wf.name
            );
            return Ok(1);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(&record);
    println!(
        "qflow: stopped the detached run of `{}` (pid {pid}) in {:.1}s; its running steps were stopped and recorded nothing; log: {log}",
        wf.name,
        start.elapsed().as_secs_f64()
    );
    Ok(0)
}

/// Whether `pid` is a live `qflow apply` (the detached coordinator).
fn is_detached_apply(pid: i32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let ours = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_owned()));
    let program = args
        .first()
        .map(|a| Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(a)))
        .and_then(|p| p.file_name().map(|n| n.to_owned()));
    alive(pid) && program.is_some() && program == ours && args.iter().any(|a| *a == b"apply")
}

/// When `pid` started (clock ticks since boot, `/proc/PID/stat` field 22).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3.
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}
