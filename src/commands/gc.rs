//! `qflow gc`: delete cached results that no recent run (and not the lock) used.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use qflow_engine::Registry;
use qflow_engine::session::{Session, cache_dir};
use qflow_engine::workflow::Workflow;

use super::run_records::recent_keys;
use crate::cli::Located;

pub fn run(registry: &Registry, workflow: &Located, keep_runs: usize) -> anyhow::Result<i32> {
    let wf = super::load(workflow, registry)?;
    let dir = cache_dir(&wf, workflow.cache.as_deref());
    let session = Session::open(&wf, registry, &dir)?;
    let _lock = session.cache.lock(qflow_cache::LockWait::NoWait)?;
    let keep = recent_keys(&session, keep_runs);
    let stats = session.cache.gc(&keep.into_iter().collect::<Vec<_>>())?;
    let indexes = prune_tree_indexes(&wf, &session.cache.dir("tree-index"))?;
    qflow_engine::run_record::remove_pruned_logs(&session.cache.dir("logs"));
    eprintln!(
        "qflow: gc removed {} records, {} trees, {} objects ({}), {} tree indexes",
        stats.records,
        stats.trees,
        stats.objects,
        human_size(stats.bytes),
        indexes
    );
    Ok(0)
}

/// Removes every tree index (`tree-index/`) that no directory input of `wf` uses.
/// An index only spares a walk: one removed by mistake costs the next apply one
/// hash of that tree.
fn prune_tree_indexes(wf: &Workflow, dir: &Path) -> anyhow::Result<usize> {
    let used: HashSet<PathBuf> = (wf.steps.iter())
        .flat_map(|s| s.step.inputs())
        .map(|i| {
            let root = qflow_engine::paths::resolve_in(&wf.dir, &i.path);
            qflow_engine::tree_index::index_path(dir, &root, &i.exclude)
        })
        .collect();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("cannot list `{}`", dir.display())),
    };
    let mut removed = 0;
    for entry in entries {
        let path = entry?.path();
        if !used.contains(&path) && std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// A size as people read it: `512 B`, `1.3 MiB`, `21.0 GiB` (binary units, as
/// `ls -h` and qemu-img).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn sizes_read_in_binary_units_with_one_decimal() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(1_363_149), "1.3 MiB");
        assert_eq!(human_size(21 * 1024 * 1024 * 1024), "21.0 GiB");
    }
}
