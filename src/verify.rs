//! `qflow verify`: rebuild a workflow from nothing and compare with its lock.
//!
//! An artifact evaluator's question is "do I get the same bytes?". Verify answers it
//! without touching the user's cache, lock or `out/`: it opens the workflow on a
//! fresh cache in a temporary directory (under `$TMPDIR`, never inside the workflow's
//! directory, where a step's directory input would see it; `--work-dir` moves it to
//! a bigger disk for a kernel tree and images), with an empty lock
//! and its own `out/`, applies every step (`keep_going`, so one failure does not
//! hide the rest), and compares each step's output hashes with the workflow's lock.
//!
//! For a differing disk image it goes one step further where it can: when the
//! recorded image is still in the original cache, both are converted to raw, the
//! ext2/3/4 filesystem is found (whole disk, or the first MBR partition) and dumped
//! with `debugfs rdump`, and the first differing file is named. For a differing
//! small text output (a results table) it shows the first differing line. When the lock's key
//! for a step differs from the rebuild's (a tool version, an input, a field), the
//! report says which, because "different tool, same bytes" and "same inputs,
//! different bytes" mean different things to an evaluator.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use qflow_engine::Registry;
use qflow_engine::lockfile::{LockFile, LockedStep};
use qflow_engine::progress::Progress;
use qflow_engine::scheduler::{ApplyOptions, apply};
use qflow_engine::session::{Session, lock_path};
use qflow_engine::workflow::Workflow;

use crate::cli::UsageError;

/// How to verify.
pub struct VerifyOptions {
    /// CPU slots for the rebuild (default: the number of cores).
    pub jobs: Option<usize>,
    /// Parent of the temporary directory (default: `$TMPDIR`, else `/tmp`).
    pub work_dir: Option<PathBuf>,
    /// Only these steps and their upstream (empty: every step).
    pub steps: Vec<String>,
    /// Keep the temporary directory.
    pub keep: bool,
    /// The cache the lock was made with, where recorded images may still be.
    pub original_cache: PathBuf,
}

/// How one output compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Identical,
    Different,
    /// Recorded, but the rebuild did not produce it.
    NotRebuilt,
    /// Produced by the rebuild, absent from the lock.
    NotInLock,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Verdict::Identical => "identical",
            Verdict::Different => "DIFFERENT",
            Verdict::NotRebuilt => "NOT REBUILT",
            Verdict::NotInLock => "NOT IN LOCK",
        }
    }
}

/// One row of the table.
struct Row {
    step: String,
    output: String,
    recorded: Option<String>,
    rebuilt: Option<String>,
    verdict: Verdict,
}

/// Rebuild `wf` in a temporary cache and compare; returns the exit code:
/// 0 all identical, 1 something differs or was not rebuilt, 130 interrupted.
pub fn run(mut wf: Workflow, registry: &Registry, options: &VerifyOptions) -> anyhow::Result<i32> {
    select_steps(&mut wf, &options.steps)?;
    let wf = &wf;
    let recorded_path = lock_path(wf);
    let recorded = LockFile::read(&recorded_path);
    if recorded.steps.is_empty() {
        return Err(UsageError(format!(
            "no lock file with results at `{}`; run `qflow apply {}` first: verify compares a rebuild with it",
            recorded_path.display(),
            wf.path.display()
        ))
        .into());
    }
    let jobs = options.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if jobs == 0 {
        return Err(UsageError("--jobs must be at least 1".into()).into());
    }
    let scratch = Scratch::new(
        &options.work_dir.clone().unwrap_or_else(std::env::temp_dir),
        options.keep,
    )?;
    eprintln!(
        "qflow: verify: rebuilding every step from scratch in {}",
        scratch.path.display()
    );
    let mut session = Session::open(wf, registry, &scratch.path.join("cache"))?;
    // Never read or write the user's lock: the rebuild has its own, empty one.
    session.lock_path = scratch.path.join("rebuilt.lock");
    session.set_lock(LockFile::default());
    let apply_options = ApplyOptions {
        jobs,
        keep_going: true,
        no_wait: false,
        out_dir: Some(scratch.path.join("out")),
        remote: None,
    };
    let report = apply(&mut session, &apply_options, Arc::new(Progress::new()))?;
    if report.interrupted {
        return Ok(130);
    }
    let rebuilt = LockFile::read(&session.lock_path);

    let rows = compare(wf, &recorded, &rebuilt);
    print_table(&recorded_path, &rows);

    // Where the bytes differ, say what differs when it can be told.
    for row in rows.iter().filter(|r| r.verdict == Verdict::Different) {
        let original = recorded_file(&options.original_cache, &recorded, &row.step, &row.output);
        let rebuilt_file = rebuilt
            .steps
            .get(&row.step)
            .and_then(|s| s.output.parse::<qflow_cache::Hash>().ok())
            .map(|h| session.cache.tree_path(&h).join(&row.output));
        let what = if is_image(&row.output) {
            match (original, rebuilt_file) {
                (Some(a), Some(b)) => {
                    match first_differing_file(&a, &b, &scratch.path.join("diff")) {
                        Ok(d) => d,
                        Err(e) => format!("cannot tell ({e:#})"),
                    }
                }
                (None, _) => format!(
                    "cannot tell: the recorded image is no longer in the cache {} (pass --cache DIR)",
                    options.original_cache.display()
                ),
                (_, None) => "cannot tell: the rebuilt image is missing".to_string(),
            }
        } else {
            // Text outputs (tables, logs): the first differing line, when both are at hand.
            match (original, rebuilt_file) {
                (Some(a), Some(b)) => match first_differing_line(&a, &b) {
                    Some(d) => d,
                    None => continue,
                },
                _ => continue,
            }
        };
        println!("{}/{}: {what}", row.step, row.output);
    }
    for name in wf.steps.iter().map(|s| &s.name) {
        if let (Some(a), Some(b)) = (recorded.steps.get(name), rebuilt.steps.get(name))
            && a.key != b.key
        {
            println!(
                "note: step `{name}` was rebuilt from other key material than the lock records: {}",
                key_differences(a, b).join("; ")
            );
        }
    }
    let differing = rows
        .iter()
        .filter(|r| r.verdict != Verdict::Identical)
        .count();
    if differing == 0 {
        println!(
            "qflow verify: all {} outputs identical to {}",
            rows.len(),
            recorded_path.display()
        );
        Ok(0)
    } else {
        println!(
            "qflow verify: {differing} of {} outputs differ from {}",
            rows.len(),
            recorded_path.display()
        );
        Ok(1)
    }
}

/// Keep only `wanted` and every step they depend on (all steps when empty).
fn select_steps(wf: &mut Workflow, wanted: &[String]) -> anyhow::Result<()> {
    if wanted.is_empty() {
        return Ok(());
    }
    let mut keep: BTreeSet<String> = BTreeSet::new();
    let mut todo: Vec<String> = Vec::new();
    for w in wanted {
        if wf.step(w).is_none() {
            let names: Vec<&str> = wf.steps.iter().map(|s| s.name.as_str()).collect();
            return Err(UsageError(format!(
                "--step `{w}`: no step of that name in {}; its steps: {}",
                wf.path.display(),
                names.join(", ")
            ))
            .into());
        }
        todo.push(w.clone());
    }
    while let Some(name) = todo.pop() {
        if keep.insert(name.clone())
            && let Some(s) = wf.step(&name)
        {
            todo.extend(s.upstream_names().map(str::to_string));
        }
    }
    wf.steps.retain(|s| keep.contains(&s.name));
    Ok(())
}

/// Every output of every step of the workflow, recorded against rebuilt.
fn compare(wf: &Workflow, recorded: &LockFile, rebuilt: &LockFile) -> Vec<Row> {
    let mut rows = Vec::new();
    for s in &wf.steps {
        let a = recorded.steps.get(&s.name);
        let b = rebuilt.steps.get(&s.name);
        let paths: BTreeSet<&String> = a
            .iter()
            .flat_map(|e| e.outputs.keys())
            .chain(b.iter().flat_map(|e| e.outputs.keys()))
            .collect();
        for p in paths {
            let ra = a.and_then(|e| e.outputs.get(p)).cloned();
            let rb = b.and_then(|e| e.outputs.get(p)).cloned();
            let verdict = match (&ra, &rb) {
                (Some(x), Some(y)) if x == y => Verdict::Identical,
                (Some(_), Some(_)) => Verdict::Different,
                (Some(_), None) => Verdict::NotRebuilt,
                (None, _) => Verdict::NotInLock,
            };
            rows.push(Row {
                step: s.name.clone(),
                output: p.clone(),
                recorded: ra,
                rebuilt: rb,
                verdict,
            });
        }
    }
    rows
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

/// Disk images: `image.<ext>` (how image steps hand themselves downstream, see
/// `image_file`) and a boot's kept overlays (`hdb.qcow2`).
fn is_image(output: &str) -> bool {
    let name = Path::new(output)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.starts_with("image.")
        || [".qcow2", ".raw", ".img"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

/// The first line that differs between two small text files, shown old → new;
/// `None` for binary or large files.
fn first_differing_line(a: &Path, b: &Path) -> Option<String> {
    const LIMIT: u64 = 1024 * 1024;
    if std::fs::metadata(a).ok()?.len() > LIMIT || std::fs::metadata(b).ok()?.len() > LIMIT {
        return None;
    }
    let ta = String::from_utf8(std::fs::read(a).ok()?).ok()?;
    let tb = String::from_utf8(std::fs::read(b).ok()?).ok()?;
    let short = |l: Option<&str>| match l {
        None => "(end of file)".to_string(),
        Some(l) if l.chars().count() > 60 => {
            format!("{:?}…", l.chars().take(60).collect::<String>())
        }
        Some(l) => format!("{l:?}"),
    };
    let (mut la, mut lb) = (ta.lines(), tb.lines());
    for n in 1.. {
        let (x, y) = (la.next(), lb.next());
        if x.is_none() && y.is_none() {
            return Some("the lines are equal; they differ in line endings".to_string());
        }
        if x != y {
            return Some(format!(
                "first differing line {n}: {} → {}",
                short(x),
                short(y)
            ));
        }
    }
    None
}

/// The recorded output file, if the original cache still holds its tree.
fn recorded_file(cache_dir: &Path, lock: &LockFile, step: &str, output: &str) -> Option<PathBuf> {
    if !cache_dir.is_dir() {
        return None;
    }
    let hash: qflow_cache::Hash = lock.steps.get(step)?.output.parse().ok()?;
    let cache = qflow_cache::Cache::open(cache_dir).ok()?;
    let p = cache.tree_path(&hash).join(output);
    p.is_file().then_some(p)
}

/// What differs in the key material of one step, in the user's words.
fn key_differences(a: &LockedStep, b: &LockedStep) -> Vec<String> {
    let mut out = Vec::new();
    if a.kind != b.kind || a.schema_version != b.schema_version {
        out.push(format!(
            "kind {} v{} → {} v{}",
            a.kind, a.schema_version, b.kind, b.schema_version
        ));
    }
    if a.fields != b.fields {
        out.push("its fields".to_string());
    }
    if a.vars != b.vars {
        out.push("vars".to_string());
    }
    if a.env != b.env {
        out.push("env".to_string());
    }
    let labels: BTreeSet<&String> = a.inputs.keys().chain(b.inputs.keys()).collect();
    for l in labels {
        if a.inputs.get(l) != b.inputs.get(l) {
            out.push(format!("input `{l}`"));
        }
    }
    let tools: BTreeSet<&String> = a.tools.keys().chain(b.tools.keys()).collect();
    for t in tools {
        match (a.tools.get(t), b.tools.get(t)) {
            (Some(x), Some(y)) if x != y => out.push(format!("tool `{t}` ({x} → {y})")),
            (x, y) if x != y => out.push(format!("tool `{t}`")),
            _ => {}
        }
    }
    let ups: BTreeSet<&String> = a.upstream.keys().chain(b.upstream.keys()).collect();
    for u in ups {
        if a.upstream.get(u) != b.upstream.get(u) {
            out.push(format!("the output of upstream `{u}`"));
        }
    }
    if a.extra != b.extra {
        out.push("a secret or derived value (e.g. a password file)".to_string());
    }
    if out.is_empty() {
        out.push("qflow's key encoding".to_string());
    }
    out
}

/// Name the first file that differs between two disk images with an ext2/3/4
/// filesystem (whole disk or first MBR partition), or say the files are equal.
pub fn first_differing_file(a: &Path, b: &Path, work: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(work)?;
    let mut trees = Vec::new();
    for (i, image) in [a, b].into_iter().enumerate() {
        let raw = work.join(format!("{i}.raw"));
        run_tool(
            std::process::Command::new("qemu-img")
                .args(["convert", "-O", "raw"])
                .arg(image)
                .arg(&raw),
        )?;
        let offset = ext_offset(&raw)?.ok_or_else(|| {
            anyhow::anyhow!("no ext2/3/4 filesystem found in `{}`", image.display())
        })?;
        let tree = work.join(format!("{i}.files"));
        std::fs::create_dir_all(&tree)?;
        let source = format!("{}?offset={offset}", raw.display());
        run_tool(
            std::process::Command::new("debugfs")
                .arg("-R")
                .arg(format!("rdump / {}", tree.display()))
                .arg(source),
        )?;
        let _ = std::fs::remove_file(&raw);
        trees.push(tree);
    }
    Ok(match first_difference(&trees[0], &trees[1])? {
        Some(d) => format!("first differing file: {d}"),
        None => "every file's type, mode and content are equal: the difference is in \
                 filesystem metadata (timestamps, layout, UUID)"
            .to_string(),
    })
}

fn run_tool(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The byte offset of an ext2/3/4 superblock's filesystem in a raw image:
/// 0, or the start of the first MBR partition.
fn ext_offset(raw: &Path) -> anyhow::Result<Option<u64>> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut f = std::fs::File::open(raw)?;
    let mut is_ext = |offset: u64| -> bool {
        let mut magic = [0u8; 2];
        f.seek(SeekFrom::Start(offset + 1024 + 56)).is_ok()
            && f.read_exact(&mut magic).is_ok()
            && magic == [0x53, 0xef]
    };
    if is_ext(0) {
        return Ok(Some(0));
    }
    let mut mbr = [0u8; 512];
    let mut f2 = std::fs::File::open(raw)?;
    if f2.read_exact(&mut mbr).is_ok() && mbr[510..512] == [0x55, 0xaa] {
        let lba = u32::from_le_bytes(mbr[454..458].try_into().unwrap()) as u64;
        if lba > 0 && is_ext(lba * 512) {
            return Ok(Some(lba * 512));
        }
    }
    Ok(None)
}

/// The first path (in sorted walk order) whose presence, type, mode, link target
/// or content differs between two trees.
fn first_difference(a: &Path, b: &Path) -> anyhow::Result<Option<String>> {
    use std::os::unix::fs::PermissionsExt as _;
    let list = |root: &Path| -> anyhow::Result<Vec<String>> {
        let mut v = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir)? {
                let e = e?;
                let p = e.path();
                v.push(p.strip_prefix(root)?.to_string_lossy().into_owned());
                if e.file_type()?.is_dir() {
                    stack.push(p);
                }
            }
        }
        v.sort();
        Ok(v)
    };
    let la = list(a)?;
    let lb = list(b)?;
    let all: BTreeSet<&String> = la.iter().chain(lb.iter()).collect();
    let sa: BTreeSet<&String> = la.iter().collect();
    let sb: BTreeSet<&String> = lb.iter().collect();
    for rel in all {
        let shown = format!("/{rel}");
        match (sa.contains(rel), sb.contains(rel)) {
            (true, false) => return Ok(Some(format!("{shown} (only in the recorded image)"))),
            (false, true) => return Ok(Some(format!("{shown} (only in the rebuilt image)"))),
            _ => {}
        }
        let (pa, pb) = (a.join(rel), b.join(rel));
        let (ma, mb) = (
            std::fs::symlink_metadata(&pa)?,
            std::fs::symlink_metadata(&pb)?,
        );
        if ma.file_type() != mb.file_type() {
            return Ok(Some(format!("{shown} (file type)")));
        }
        if ma.permissions().mode() & 0o7777 != mb.permissions().mode() & 0o7777 {
            return Ok(Some(format!(
                "{shown} (mode {:o} → {:o})",
                ma.permissions().mode() & 0o7777,
                mb.permissions().mode() & 0o7777
            )));
        }
        if ma.file_type().is_symlink() {
            if std::fs::read_link(&pa)? != std::fs::read_link(&pb)? {
                return Ok(Some(format!("{shown} (link target)")));
            }
        } else if ma.is_file()
            && (ma.len() != mb.len() || std::fs::read(&pa)? != std::fs::read(&pb)?)
        {
            return Ok(Some(format!("{shown} (content)")));
        }
    }
    Ok(None)
}

/// The rebuild's directory: removed afterwards (read-only cache trees included)
/// unless kept.
struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Scratch {
    fn new(parent: &Path, keep: bool) -> anyhow::Result<Scratch> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = parent.join(format!(".qflow-verify-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let path = std::path::absolute(&path)?;
        Ok(Scratch { path, keep })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("qflow: verify: kept the rebuild in {}", self.path.display());
            return;
        }
        make_writable(&self.path);
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Give the owner write permission on every directory, so the tree can be removed.
fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(m) = std::fs::symlink_metadata(&d)
            && m.is_dir()
        {
            let mut perm = m.permissions();
            perm.set_mode(perm.mode() | 0o700);
            let _ = std::fs::set_permissions(&d, perm);
            if let Ok(rd) = std::fs::read_dir(&d) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
}
