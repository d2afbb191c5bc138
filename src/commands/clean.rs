//! `qflow clean`: forget the results of one step (or every step) so they run again.

use anyhow::Context as _;
use qflow_engine::Registry;
use qflow_engine::session::{Session, cache_dir};

use crate::cli::WorkflowArgs;

pub fn run(
    registry: &Registry,
    workflow: &WorkflowArgs,
    step: Option<&str>,
) -> anyhow::Result<i32> {
    let wf = super::load(workflow, registry)?;
    if let Some(s) = step
        && wf.step(s).is_none()
    {
        return Err(super::no_such_step(&wf, s));
    }
    let dir = cache_dir(&wf, workflow.cache.as_deref());
    let mut session = Session::open(&wf, registry, &dir)?;
    let _lock = session.cache.lock(qflow_cache::LockWait::NoWait)?;
    let names: Vec<String> = match step {
        Some(s) => vec![s.to_string()],
        None => wf.steps.iter().map(|s| s.name.clone()).collect(),
    };
    let mut lock = session.lock().clone();
    for n in &names {
        if let Some(entry) = lock.steps.remove(n)
            && let Ok(key) = entry.key.parse()
        {
            session.cache.remove_record(&key)?;
        }
        let _ = std::fs::remove_file(wf.dir.join("out").join(n));
        let state = session.cache.dir("state").join(&wf.name).join(n);
        if state.exists() {
            std::fs::remove_dir_all(&state)
                .with_context(|| format!("cannot remove {}", state.display()))?;
        }
        eprintln!("qflow: cleaned {n}");
    }
    lock.write(&session.lock_path)?;
    session.set_lock(lock);
    Ok(0)
}
