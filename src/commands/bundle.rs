//! `qflow bundle`: write one archive for an artifact evaluation
//! ([`qflow_engine::bundle`] decides what goes in).

use std::path::Path;

use qflow_engine::Registry;
use qflow_engine::session::cache_dir;

use crate::cli::Located;

pub fn run(registry: &Registry, workflow: &Located, output: Option<&Path>) -> anyhow::Result<i32> {
    let wf = super::load(workflow, registry)?;
    let cache = cache_dir(&wf, workflow.cache.as_deref());
    let written = qflow_engine::bundle::write(&wf, &cache, output)?;
    eprintln!(
        "qflow: bundle: wrote {} ({} files: workflow, lock, inputs, {} results, README.md)",
        written.path.display(),
        written.files,
        written.results
    );
    Ok(0)
}
