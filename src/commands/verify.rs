//! `qflow verify`: rebuild from scratch in a temporary cache
//! ([`qflow_engine::verify`]) and print how every output compares with the lock.
//!
//! A differing output is explained by its role: a disk image by its first
//! differing file ([`qflow_steps::image_diff`]), anything else by its first
//! differing line when it is small text. Machine state has its own section, with
//! what was checked instead of its bytes. Metrics are printed as numbers: the
//! lock's value, the rebuild's and their ratio.

use std::path::PathBuf;

use qflow_engine::session::cache_dir;
use qflow_engine::verify::{MetricRow, Row, Verdict, VerifyOptions, first_differing_line, rebuild};
use qflow_engine::{OutputRole, Registry};

use crate::cli::Located;

/// The command line's verify options.
pub struct Options {
    pub jobs: Option<usize>,
    pub work_dir: Option<PathBuf>,
    pub steps: Vec<String>,
    pub keep: bool,
    pub twice: bool,
}

/// 0 all identical, 1 something differs or was not rebuilt, 130 interrupted.
pub fn run(registry: &Registry, args: &Located, options: Options) -> anyhow::Result<i32> {
    let wf = super::load(args, registry)?;
    let options = VerifyOptions {
        jobs: options.jobs,
        work_dir: options.work_dir,
        steps: options.steps,
        keep: options.keep,
        original_cache: cache_dir(&wf, args.cache.as_deref()),
        twice: options.twice,
    };
    let Some(rebuild) = rebuild(wf, registry, &options)? else {
        return Ok(130);
    };
    let (state, built): (Vec<&Row>, Vec<&Row>) =
        rebuild.rows.iter().partition(|r| r.is_machine_state());
    println!("compared with {}", rebuild.compared_with);
    let width = rebuild
        .rows
        .iter()
        .map(|r| r.step.len() + 1 + r.output.len())
        .max()
        .unwrap_or(6)
        .max(6);
    print_table(&built, width, |r| r.result().to_string());
    if !state.is_empty() {
        println!();
        println!("machine state (a guest's disks and memory, a console without icount):");
        print_table(&state, width, |r| rebuild.machine_state(r));
    }
    print_metrics(&rebuild.metrics);
    // Where the bytes differ, say what differs when it can be told.
    for row in built.iter().filter(|r| r.verdict == Verdict::Different) {
        let original = rebuild.recorded_file(row);
        let rebuilt = rebuild.rebuilt_file(row);
        let what = if let Some(tampered) = rebuild.lock_mismatch(row) {
            tampered
        } else if row.role == OutputRole::Image {
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
    let lock = &rebuild.compared_with;
    let expected = state
        .iter()
        .filter(|r| r.verdict == Verdict::Different)
        .count();
    let identical = total - differing - expected;
    let metrics_off = rebuild.metrics_off();
    let metrics = match rebuild.metrics.len() {
        0 => String::new(),
        n if metrics_off == 0 => format!("; all {n} metric values within tolerance"),
        n => format!("; {metrics_off} of {n} metric values outside tolerance"),
    };
    if differing == 0 && metrics_off == 0 && expected == 0 {
        let agree = if rebuild.rows.iter().all(|r| r.verdict == Verdict::Identical) {
            "identical to"
        } else {
            "agree with"
        };
        println!("qflow verify: all {total} outputs {agree} {lock}{metrics}");
        Ok(0)
    } else if differing == 0 && metrics_off == 0 {
        println!(
            "qflow verify: every image, result, artifact and log agrees with {lock} ({identical} outputs); \
             {expected} machine state outputs differ, as expected{metrics}"
        );
        Ok(0)
    } else {
        println!("qflow verify: {differing} of {total} outputs differ from {lock}{metrics}");
        Ok(1)
    }
}

/// Each metric value: the lock's, the rebuild's, their ratio and the verdict.
fn print_metrics(rows: &[MetricRow]) {
    if rows.is_empty() {
        return;
    }
    let number = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v}"));
    let names: Vec<String> = rows
        .iter()
        .map(|m| format!("{}/{}", m.step, m.name))
        .collect();
    let width = names.iter().map(|n| n.len()).max().unwrap_or(6).max(6);
    println!();
    println!(
        "{:<width$}  {:>14}  {:>14}  {:>9}  result",
        "metric", "reference", "rebuilt", "ratio"
    );
    for (m, name) in rows.iter().zip(&names) {
        let ratio = m.ratio().map_or("-".to_string(), |r| format!("{r:.6}"));
        let tolerance = if m.tolerance > 0.0 {
            format!(" (tolerance {}%)", m.tolerance * 100.0)
        } else {
            String::new()
        };
        println!(
            "{name:<width$}  {:>14}  {:>14}  {ratio:>9}  {}{tolerance}",
            number(m.reference),
            number(m.value),
            m.verdict.word()
        );
    }
}

fn print_table(rows: &[&Row], width: usize, result: impl Fn(&Row) -> String) {
    let short = |h: &Option<String>| match h {
        Some(h) => h.chars().take(16).collect::<String>(),
        None => "-".to_string(),
    };
    println!(
        "{:<width$}  {:<16}  {:<16}  result",
        "output", "recorded", "rebuilt"
    );
    for r in rows {
        let name = format!("{}/{}", r.step, r.output);
        println!(
            "{name:<width$}  {:<16}  {:<16}  {}",
            short(&r.recorded),
            short(&r.rebuilt),
            result(r)
        );
    }
}
