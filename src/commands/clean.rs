//! `qflow clean`: forget the results of one step (or every step) so they run again.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use qflow_engine::Registry;
use qflow_engine::session::{Session, cache_dir};
use qflow_engine::workflow::Workflow;

use crate::cli::Located;

pub fn run(registry: &Registry, workflow: &Located, step: Option<&str>) -> anyhow::Result<i32> {
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
        note_cleaned(&session, &wf, n)?;
        eprintln!("qflow: cleaned {n}");
    }
    lock.write(&session.lock_path)?;
    session.set_lock(lock);
    Ok(0)
}

/// Where `clean` notes when it cleaned the steps of workflow `wf`: one file a
/// step, holding the unix time (read by `status`).
fn cleaned_dir(session: &Session, wf: &Workflow) -> PathBuf {
    session.cache.dir("state").join("cleaned").join(&wf.name)
}

fn note_cleaned(session: &Session, wf: &Workflow, step: &str) -> anyhow::Result<()> {
    let dir = cleaned_dir(session, wf);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    std::fs::write(dir.join(step), now.to_string())
        .with_context(|| format!("cannot write {}", dir.join(step).display()))
}

/// When `clean` last cleaned each step of `wf`, by step name.
pub fn cleaned_at(session: &Session, wf: &Workflow) -> BTreeMap<String, u64> {
    std::fs::read_dir(cleaned_dir(session, wf))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let t = std::fs::read_to_string(e.path())
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), t))
        })
        .collect()
}
