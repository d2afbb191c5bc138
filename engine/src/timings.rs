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
        "qflow-timing: {name}: {:.2} ms",
        (now - since).as_secs_f64() * 1000.0
    );
    *start = Some(now);
}

/// Note that phase `name`, which ran beside the others, took `took`.
pub fn took(name: &str, took: std::time::Duration) {
    if enabled() {
        eprintln!(
            "qflow-timing: {name}: {:.2} ms",
            took.as_secs_f64() * 1000.0
        );
    }
}
