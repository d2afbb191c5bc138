//! `qflow verify`: rebuild from scratch in a temporary cache
//! ([`qflow_engine::verify`]) and print how every output compares with the lock.
//!
//! A differing output is explained by its role: a disk image by its first
//! differing file ([`qflow_steps::image_diff`]), anything else by its first
//! differing line when it is small text.

use std::path::{Path, PathBuf};

use qflow_engine::session::cache_dir;
use qflow_engine::verify::{Row, Verdict, VerifyOptions, first_differing_line, rebuild};
use qflow_engine::{OutputRole, Registry};

use crate::cli::WorkflowArgs;

/// The command line's verify options.
pub struct Options {
    pub jobs: Option<usize>,
    pub work_dir: Option<PathBuf>,
    pub steps: Vec<String>,
    pub keep: bool,
}

/// 0 all identical, 1 something differs or was not rebuilt, 130 interrupted.
pub fn run(registry: &Registry, args: &WorkflowArgs, options: Options) -> anyhow::Result<i32> {
    let wf = super::load(args, registry)?;
    let options = VerifyOptions {
        jobs: options.jobs,
        work_dir: options.work_dir,
        steps: options.steps,
        keep: options.keep,
        original_cache: cache_dir(&wf, args.cache.as_deref()),
    };
    let Some(rebuild) = rebuild(wf, registry, &options)? else {
        return Ok(130);
    };
    print_table(&rebuild.recorded_path, &rebuild.rows);
    // Where the bytes differ, say what differs when it can be told.
    for row in rebuild
        .rows
        .iter()
        .filter(|r| r.verdict == Verdict::Different)
    {
        let original = rebuild.recorded_file(row);
        let rebuilt = rebuild.rebuilt_file(row);
        let what = if row.role == OutputRole::Image {
            match (original, rebuilt) {
                (Some(a), Some(b)) => {
                    match qflow_steps::image_diff::first_differing_file(&a, &b, &rebuild.work_dir())
                    {
                        Ok(d) => d,
                        Err(e) => format!("cannot tell ({e:#})"),
                    }
                }
                (None, _) => format!(
                    "cannot tell: the recorded image is no longer in the cache {} (pass --cache DIR)",
                    rebuild.original_cache().display()
                ),
                (_, None) => "cannot tell: the rebuilt image is missing".to_string(),
            }
        } else {
            // Text outputs (tables, logs): the first differing line, when both are at hand.
            match (original, rebuilt) {
                (Some(a), Some(b)) => match first_differing_line(&a, &b) {
                    Some(d) => d,
                    None => continue,
                },
                _ => continue,
            }
        };
        println!("{}/{}: {what}", row.step, row.output);
    }
    for (name, differences) in rebuild.key_notes() {
        println!(
            "note: step `{name}` was rebuilt from other key material than the lock records: {}",
            differences.join("; ")
        );
    }
    let differing = rebuild.differing();
    let total = rebuild.rows.len();
    let lock = rebuild.recorded_path.display();
    if differing == 0 {
        println!("qflow verify: all {total} outputs identical to {lock}");
        Ok(0)
    } else {
        println!("qflow verify: {differing} of {total} outputs differ from {lock}");
        Ok(1)
    }
}

fn print_table(lock: &Path, rows: &[Row]) {
    let short = |h: &Option<String>| match h {
        Some(h) => h.chars().take(16).collect::<String>(),
        None => "-".to_string(),
    };
    let names: Vec<String> = rows
        .iter()
        .map(|r| format!("{}/{}", r.step, r.output))
        .collect();
    let width = names.iter().map(|n| n.len()).max().unwrap_or(6).max(6);
    println!("compared with {}", lock.display());
    println!(
        "{:<width$}  {:<16}  {:<16}  result",
        "output", "recorded", "rebuilt"
    );
    for (r, name) in rows.iter().zip(&names) {
        println!(
            "{name:<width$}  {:<16}  {:<16}  {}",
            short(&r.recorded),
            short(&r.rebuilt),
            r.verdict.word()
        );
    }
}
