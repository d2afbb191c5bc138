//! Phase timings for profiling qflow itself: `QFLOW_TIMINGS=1 qflow apply`
//! prints how long loading, hashing, scheduling and recording took.
//!
//! Imports nothing of the engine.

use std::sync::Mutex;
use std::time::Instant;

static START: Mutex<Option<Instant>> = Mutex::new(None);

fn enabled() -> bool {
    std::env::var_os("QFLOW_TIMINGS").is_some()
}

/// Note that phase `name` ended now.
pub fn mark(name: &str) {
    if !enabled() {
        return;
    }
    let mut start = START.lock().unwrap();
    let now = Instant::now();
    let since = start.unwrap_or(now);
    eprintln!(
        "qflow-timing: {name}: {:.2} ms{}",
        (now - since).as_secs_f64() * 1000.0,
        memory()
    );
    *start = Some(now);
}

/// Note that phase `name`, which ran beside the others, took `took`.
pub fn took(name: &str, took: std::time::Duration) {
    if enabled() {
        eprintln!(
            "qflow-timing: {name}: {:.2} ms{}",
            took.as_secs_f64() * 1000.0,
            memory()
        );
    }
}

/// `, rss N MB (anon A, peak M MB)` from `/proc/self/status`, where there is one,
/// and the allocator's heap in use and free.
fn memory() -> String {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return String::new();
    };
    let kb = |field: &str| {
        (status.lines())
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    match (kb("VmRSS:"), kb("VmHWM:")) {
        (Some(rss), Some(peak)) => {
            // SAFETY: mallinfo2 only reads the allocator's counters.
            let m = unsafe { libc::mallinfo2() };
            format!(
                ", rss {:.1} MB (anon {:.1}, peak {:.1} MB), heap in use {:.1} MB, free {:.1} MB",
                rss as f64 / 1024.0,
                kb("RssAnon:").unwrap_or(0) as f64 / 1024.0,
                peak as f64 / 1024.0,
                (m.uordblks + m.hblkhd) as f64 / 1048576.0,
                m.fordblks as f64 / 1048576.0
            )
        }
        _ => String::new(),
    }
}
