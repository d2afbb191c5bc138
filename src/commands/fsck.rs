//! `qflow fsck`: hash the whole cache. Every use of a cached tree already checks
//! its stat fields (one `lstat` per path); this is the full check for what stat
//! fields cannot show: every object hashed against its name, every tree against
//! its manifest.

use qflow_engine::Registry;
use qflow_engine::session::cache_dir;

use crate::cli::Located;

pub fn run(registry: &Registry, workflow: &Located, repair: bool) -> anyhow::Result<i32> {
    let wf = super::load(workflow, registry)?;
    let cache = qflow_cache::Cache::open(&cache_dir(&wf, workflow.cache.as_deref()))?;
    let _lock = cache.lock(qflow_cache::LockWait::NoWait)?;
    let report = cache.fsck(repair)?;
    for name in &report.damaged_objects {
        println!("damaged object {name}: its bytes do not match its name");
    }
    for (tree, path) in &report.damaged_trees {
        println!("damaged tree {tree}: `{path}` differs from its manifest");
    }
    println!(
        "qflow fsck: {} objects ({:.1} MB) hashed; {} damaged objects, {} damaged trees{}",
        report.objects,
        report.bytes as f64 / 1e6,
        report.damaged_objects.len(),
        report.damaged_trees.len(),
        match (report.is_clean(), repair) {
            (true, _) => "",
            (false, true) => "; removed: the steps that made them run again",
            (false, false) => "; run `qflow fsck --repair` to remove them",
        }
    );
    Ok(if report.is_clean() { 0 } else { 1 })
}
