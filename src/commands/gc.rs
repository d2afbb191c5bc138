//! `qflow gc`: delete cached results that no recent run (and not the lock) used.

use qflow_engine::Registry;
use qflow_engine::session::{Session, cache_dir};

use super::run_records::recent_keys;
use crate::cli::Located;

pub fn run(registry: &Registry, workflow: &Located, keep_runs: usize) -> anyhow::Result<i32> {
    let wf = super::load(workflow, registry)?;
    let dir = cache_dir(&wf, workflow.cache.as_deref());
    let session = Session::open(&wf, registry, &dir)?;
    let _lock = session.cache.lock(qflow_cache::LockWait::NoWait)?;
    let keep = recent_keys(&session, keep_runs);
    let stats = session.cache.gc(&keep.into_iter().collect::<Vec<_>>())?;
    eprintln!(
        "qflow: gc removed {} records, {} trees, {} objects ({})",
        stats.records,
        stats.trees,
        stats.objects,
        human_size(stats.bytes)
    );
    Ok(0)
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
