//! `qflow gc`: delete cached results that no recent run (and not the lock) used.

use qflow_engine::Registry;
use qflow_engine::session::{Session, cache_dir};

use super::run_records::recent_keys;
use crate::cli::WorkflowArgs;

pub fn run(registry: &Registry, workflow: &WorkflowArgs, keep_runs: usize) -> anyhow::Result<i32> {
    let wf = super::load(workflow, registry)?;
    let dir = cache_dir(&wf, workflow.cache.as_deref());
    let session = Session::open(&wf, registry, &dir)?;
    let _lock = session.cache.lock(qflow_cache::LockWait::NoWait)?;
    let keep = recent_keys(&session, keep_runs);
    let stats = session.cache.gc(&keep.into_iter().collect::<Vec<_>>())?;
    eprintln!(
        "qflow: gc removed {} records, {} trees, {} objects ({} bytes)",
        stats.records, stats.trees, stats.objects, stats.bytes
    );
    Ok(0)
}
