//! The remote cache the command line names (`--remote-cache`, `QFLOW_REMOTE_CACHE`), for
//! `apply` and `plan`.

use std::sync::Arc;

use qflow_cache::remote::{RemoteCache, RemoteConfig};
use qflow_engine::context::ProgressSink as _;
use qflow_engine::progress::Progress;

use crate::cli::RemoteArgs;
use crate::usage_error::UsageError;

/// The remote cache the options name, its access check started. Refused credentials for
/// the read URL stop `apply` and `plan` at their first lookup, before any step runs (exit
/// 2). Warnings go to `warn`, bytes moved to `moved`.
pub fn open(
    args: &RemoteArgs,
    warn: impl Fn(&str) + Send + Sync + 'static,
    moved: Option<qflow_cache::remote::Progress>,
) -> anyhow::Result<Option<Arc<RemoteCache>>> {
    let Some(url) = args.remote_cache.as_deref().filter(|u| !u.is_empty()) else {
        if args.remote_cache_upload || args.remote_cache_write.is_some() {
            return Err(UsageError(
                "uploading to a remote cache needs its URL: pass --remote-cache URL (or set QFLOW_REMOTE_CACHE)".into(),
            )
            .into());
        }
        return Ok(None);
    };
    let mut config = RemoteConfig::new(url);
    config.upload = args.remote_cache_upload || args.remote_cache_write.is_some();
    config.write_url = args.remote_cache_write.clone().filter(|u| !u.is_empty());
    config.on_warning = Some(Arc::new(warn));
    config.on_progress = moved;
    let remote = RemoteCache::from_config(config).map_err(|e| UsageError(format!("{e:#}")))?;
    let remote = Arc::new(remote);
    remote.check_in_background();
    Ok(Some(remote))
}

/// The name of the progress line of the remote cache's transfers.
pub const LINE: &str = "remote cache";

/// The progress line [`LINE`] (on a terminal): bytes moved so far, both ways.
pub fn bytes_moved_line(progress: Arc<Progress>) -> qflow_cache::remote::Progress {
    use std::sync::atomic::{AtomicU64, Ordering};
    let total = AtomicU64::new(0);
    let started = std::sync::Once::new();
    Arc::new(move |n: u64| {
        started.call_once(|| progress.start(LINE));
        let before = total.fetch_add(n, Ordering::Relaxed);
        // A new text every MiB or so is plenty for a human.
        if (before >> 20) != ((before + n) >> 20) {
            progress.message(LINE, &format!("{:.1} MB moved", (before + n) as f64 / 1e6));
        }
    })
}
