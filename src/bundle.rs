//! `qflow bundle`: one archive an artifact evaluator can take away.
//!
//! The archive (`<name>-artifact/` inside a `.tar.gz`) holds the workflow and its
//! lock; the local inputs every step declares (exactly the files the engine digests
//! for the step keys, so an apply of the unpacked bundle computes the same keys);
//! the collected results; and a generated `README.md` with the exact commands that
//! check the host, reproduce and verify.
//!
//! Decisions:
//! - Results are the outputs of `boot` steps (what `collect:` copied out of the
//!   guest: the paper's data, and its console logs), whatever their size, plus every
//!   other step's output file of at most [`SMALL_OUTPUT`]: configs, logs, small
//!   tables. Never machine state — disk images (`image.*`, `*.qcow2`, `*.raw`,
//!   `*.img`) and memory snapshots (`*.snapshot`): `qflow apply` rebuilds them, and
//!   their hashes are in the lock and the README.
//! - Every relative input is packed, at its place relative to the workflow: the
//!   bundle's root is the workflow's directory, or the nearest directory above it
//!   that holds every relative input too (`../tests/fixtures/x.config`). Absolute
//!   paths (a kernel tarball in `/usr/src`) are host files: the README lists them
//!   with their lock digests.
//! - Secrets are never packed. A secret field (`root_password`, `login.password`,
//!   found through the kinds' schemas: any field of the `Secret` type) names a file
//!   that is not an input; if an input would carry that file, or anything under a
//!   conventional `secrets/` directory (beside the workflow, or at the top of an
//!   input directory; not a deeper one such as a kernel tree's
//!   `Documentation/security/secrets/`), bundle refuses and says what to move. The README tells
//!   the evaluator which secret files or variables to provide.
//! - The bundle must match its lock: an input that changed since the last apply is
//!   refused (the evaluator would get other outputs than the lock promises).
//! - The archive is reproducible: entries sorted, fixed owner and timestamp
//!   (2000-01-01), modes kept only as far as the engine keys them.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};

use anyhow::Context as _;
use qflow_engine::Registry;
use qflow_engine::lockfile::LockFile;
use qflow_engine::session::lock_path;
use qflow_engine::stat_cache::StatCache;
use qflow_engine::workflow::Workflow;
use serde_json::Value;

use crate::cli::UsageError;

/// Outputs of non-`boot` steps up to this size go into `results/`.
pub const SMALL_OUTPUT: u64 = 1024 * 1024;

/// The timestamp of every archive entry (2000-01-01T00:00:00Z).
const FIXED_MTIME: u64 = 946_684_800;

/// One archive entry, by its path inside the bundle directory.
enum Entry {
    File { source: PathBuf, executable: bool },
    Bytes(Vec<u8>),
    Symlink(String),
    Dir,
}

/// A secret a step reads, for the README and the refusal check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretUse {
    pub step: String,
    /// The field path (`root_password`, `login.password`).
    pub field: String,
    /// `file` or `env`.
    pub source: String,
    /// The file (relative to the workflow) or the variable name.
    pub value: String,
}

/// Write the bundle of `wf`; returns the exit code.
pub fn run(
    wf: &Workflow,
    registry: &Registry,
    cache_dir: &Path,
    output: Option<&Path>,
) -> anyhow::Result<i32> {
    let lock_file = lock_path(wf);
    let lock = LockFile::read(&lock_file);
    let apply_first = |why: String| -> anyhow::Error {
        UsageError(format!(
            "{why}; run `qflow apply {}` first: a bundle carries the lock of a complete run",
            wf.path.display()
        ))
        .into()
    };
    if lock.steps.is_empty() {
        return Err(apply_first(format!(
            "no lock file with results at `{}`",
            lock_file.display()
        )));
    }
    for s in &wf.steps {
        if !lock.steps.contains_key(&s.name) {
            return Err(apply_first(format!(
                "step `{}` has no result in `{}`",
                s.name,
                lock_file.display()
            )));
        }
    }

    // The bundle's root: the workflow's directory, or the nearest directory above it
    // that also holds every relative input (`../tests/fixtures/x.config`).
    let wf_dir = normalize(&wf.dir);
    let mut root = wf_dir.clone();
    for s in &wf.steps {
        for input in s.step.inputs() {
            if Path::new(&input.path).is_absolute() {
                continue;
            }
            let fixed: PathBuf = input
                .path
                .split('/')
                .take_while(|c| !qflow_engine::glob::is_glob(c))
                .collect();
            let p = normalize(&wf_dir.join(fixed));
            while !p.starts_with(&root) && root.pop() {}
        }
    }
    let in_root = |p: &Path| -> Option<String> {
        normalize(p)
            .strip_prefix(&root)
            .ok()
            .map(|r| r.to_string_lossy().into_owned())
    };
    let workflow_rel = in_root(&wf.path).unwrap_or_default();
    let lock_rel = in_root(&lock_file).unwrap_or_default();

    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    entries.insert(
        workflow_rel.clone(),
        Entry::File {
            source: wf.path.clone(),
            executable: false,
        },
    );
    entries.insert(
        lock_rel.clone(),
        Entry::File {
            source: lock_file.clone(),
            executable: false,
        },
    );

    // Secrets, from each kind's schema.
    let mut secrets = Vec::new();
    for s in &wf.steps {
        if let Some(kind) = registry.get(&s.kind) {
            let fields = serde_json::to_value(&s.fields).unwrap_or(Value::Null);
            secrets.extend(secret_uses(&s.name, &kind.schema(), &fields));
        }
    }
    let secret_files: Vec<PathBuf> = secrets
        .iter()
        .filter(|u| u.source == "file")
        .map(|u| normalize(&qflow_engine::step::resolve_in(&wf.dir, &u.value)))
        .collect();

    // Inputs: the very files the engine digests.
    let all_inputs: Vec<Vec<qflow_engine::Input>> =
        wf.steps.iter().map(|s| s.step.inputs()).collect();
    let mut stat = StatCache::load(&cache_dir.join("statcache"));
    // No tree index: the bundle needs every entry listed.
    let digests = qflow_engine::inputs::digest_all(&wf.dir, &mut stat, None, &all_inputs)?;
    let mut host_inputs: Vec<(String, String, String)> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    for ((s, inputs), step_digests) in wf.steps.iter().zip(&all_inputs).zip(&digests) {
        let locked = &lock.steps[&s.name];
        for (input, d) in inputs.iter().zip(step_digests) {
            if locked.inputs.get(&d.label) != Some(&d.digest.to_hex()) {
                return Err(apply_first(format!(
                    "input `{}` of step `{}` changed since the lock was written",
                    d.label, s.name
                )));
            }
            let glob = qflow_engine::glob::is_glob(&input.path);
            let input_root = qflow_engine::step::resolve_in(&wf.dir, &input.path);
            if Path::new(&input.path).is_absolute() {
                host_inputs.push((s.name.clone(), d.label.clone(), d.digest.to_hex()));
                continue;
            }
            for (rel, e) in &d.entries {
                let path = if glob {
                    wf.dir.join(rel)
                } else if rel.is_empty() {
                    input_root.clone()
                } else {
                    input_root.join(rel)
                };
                let path = normalize(&path);
                let in_bundle = in_root(&path).ok_or_else(|| {
                    anyhow::anyhow!("input `{}` is outside the bundle's root", d.label)
                })?;
                let is_dir = matches!(e, qflow_engine::inputs::InputEntry::Dir);
                if in_secrets_dir(&path, &wf_dir, &input_root) || secret_files.contains(&path) {
                    // A file names the problem best; a bare directory only if it is empty.
                    if !is_dir
                        || !d
                            .entries
                            .iter()
                            .any(|(r, _)| r.starts_with(&format!("{rel}/")))
                    {
                        refused.push(format!(
                            "`{in_bundle}` (input `{}` of step `{}`)",
                            d.label, s.name
                        ));
                    }
                    continue;
                }
                let entry = match e {
                    qflow_engine::inputs::InputEntry::File { executable, .. } => Entry::File {
                        source: path.clone(),
                        executable: *executable,
                    },
                    qflow_engine::inputs::InputEntry::Symlink { target } => {
                        Entry::Symlink(target.clone())
                    }
                    qflow_engine::inputs::InputEntry::Dir => Entry::Dir,
                };
                entries.insert(in_bundle, entry);
            }
            if !glob && input_root.is_dir() {
                let rel = in_root(&input_root).unwrap_or_default();
                if !rel.is_empty() {
                    entries.entry(rel).or_insert(Entry::Dir);
                }
            }
        }
    }

    if !refused.is_empty() {
        let n = refused.len();
        refused.truncate(5);
        return Err(UsageError(format!(
            "a bundle never carries secrets, and these inputs hold {n} (under a `secrets/` \
             directory or a step's password file): {}; move them out of the inputs",
            refused.join(", ")
        ))
        .into());
    }

    // Results.
    let cache = if cache_dir.is_dir() {
        Some(qflow_cache::Cache::open(cache_dir)?)
    } else {
        None
    };
    let mut results: Vec<(String, String, u64)> = Vec::new();
    let mut left_out: Vec<(String, String, Option<u64>, String)> = Vec::new();
    for s in &wf.steps {
        let locked = &lock.steps[&s.name];
        let tree = locked
            .output
            .parse::<qflow_cache::Hash>()
            .ok()
            .and_then(|h| cache.as_ref().map(|c| c.tree_path(&h)))
            .filter(|t| t.is_dir());
        for (out, hash) in &locked.outputs {
            let Some(tree) = &tree else {
                if s.kind == "boot" {
                    return Err(apply_first(format!(
                        "the results of step `{}` are not in the cache `{}`",
                        s.name,
                        cache_dir.display()
                    )));
                }
                left_out.push((s.name.clone(), out.clone(), None, hash.clone()));
                continue;
            };
            let source = tree.join(out);
            let meta = std::fs::metadata(&source)
                .with_context(|| format!("cannot read result {}", source.display()))?;
            if !is_machine_state(out) && (s.kind == "boot" || meta.len() <= SMALL_OUTPUT) {
                entries.insert(
                    format!("results/{}/{out}", s.name),
                    Entry::File {
                        source,
                        executable: meta.permissions().mode() & 0o111 != 0,
                    },
                );
                results.push((s.name.clone(), out.clone(), meta.len()));
            } else {
                left_out.push((s.name.clone(), out.clone(), Some(meta.len()), hash.clone()));
            }
        }
    }

    let secrets: Vec<SecretUse> = secrets
        .into_iter()
        .map(|mut u| {
            if u.source == "file" {
                let p = qflow_engine::step::resolve_in(&wf.dir, &u.value);
                if let Some(r) = in_root(&p) {
                    u.value = r;
                }
            }
            u
        })
        .collect();
    let readme = readme(
        wf,
        &lock,
        &Listing {
            workflow: workflow_rel,
            lock: lock_rel,
            secrets,
            host_inputs,
            results: results.clone(),
            left_out,
        },
    );
    entries.insert("README.md".into(), Entry::Bytes(readme.into_bytes()));

    let top = format!("{}-artifact", wf.name);
    let out_path = match output {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from(format!("{top}.tar.gz")),
    };
    write_archive(&out_path, &top, &entries)?;
    let files = entries
        .values()
        .filter(|e| !matches!(e, Entry::Dir))
        .count();
    eprintln!(
        "qflow: bundle: wrote {} ({files} files: workflow, lock, inputs, {} results, README.md)",
        out_path.display(),
        results.len()
    );
    Ok(0)
}

/// Whether `path` is under a conventional `secrets/` directory: the workflow's own
/// (`secrets/root-password` beside it), or one at the top of an input directory
/// (`workload/secrets/token`). Deeper `secrets` directories are ordinary content
/// (a kernel tree has `Documentation/security/secrets/`).
fn in_secrets_dir(path: &Path, wf_dir: &Path, input_root: &Path) -> bool {
    let input_root = normalize(input_root);
    [wf_dir.join("secrets"), input_root.join("secrets")]
        .iter()
        .any(|d| path.starts_with(d))
        || input_root.file_name().is_some_and(|n| n == "secrets")
}

/// Disk images and memory snapshots: rebuilt by `qflow apply`, never results.
fn is_machine_state(output: &str) -> bool {
    let name = Path::new(output)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.starts_with("image.")
        || [".qcow2", ".raw", ".img", ".snapshot"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

/// Lexically clean a path (`a/./b/../c` → `a/c`) without touching the disk.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Every value of a step's fields whose schema is the `Secret` type.
pub fn secret_uses(step: &str, schema: &Value, fields: &Value) -> Vec<SecretUse> {
    let defs = schema
        .get("definitions")
        .or_else(|| schema.get("$defs"))
        .cloned()
        .unwrap_or(Value::Null);
    let mut out = Vec::new();
    walk_secrets(step, schema, &defs, fields, String::new(), &mut out, 0);
    out
}

fn walk_secrets(
    step: &str,
    node: &Value,
    defs: &Value,
    value: &Value,
    path: String,
    out: &mut Vec<SecretUse>,
    depth: usize,
) {
    if depth > 32 {
        return;
    }
    if let Some(r) = node.get("$ref").and_then(|r| r.as_str()) {
        let name = r.rsplit('/').next().unwrap_or("");
        if name == "Secret" {
            if let Value::Object(m) = value {
                for source in ["file", "env"] {
                    if let Some(Value::String(v)) = m.get(source) {
                        out.push(SecretUse {
                            step: step.to_string(),
                            field: path.clone(),
                            source: source.to_string(),
                            value: v.clone(),
                        });
                    }
                }
            }
            return;
        }
        if let Some(def) = defs.get(name) {
            walk_secrets(step, def, defs, value, path, out, depth + 1);
        }
        return;
    }
    for alt in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(alts)) = node.get(alt) {
            for a in alts {
                walk_secrets(step, a, defs, value, path.clone(), out, depth + 1);
            }
        }
    }
    match value {
        Value::Object(m) => {
            if let Some(Value::Object(props)) = node.get("properties") {
                for (k, v) in m {
                    if let Some(p) = props.get(k) {
                        let sub = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        walk_secrets(step, p, defs, v, sub, out, depth + 1);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = node.get("items") {
                for (i, v) in items.iter().enumerate() {
                    walk_secrets(step, item, defs, v, format!("{path}[{i}]"), out, depth + 1);
                }
            }
        }
        _ => {}
    }
}

/// What went into the bundle (and what did not), for its README.
struct Listing {
    /// The workflow and lock paths inside the bundle.
    workflow: String,
    lock: String,
    secrets: Vec<SecretUse>,
    /// (step, input label, digest) of inputs outside the bundle.
    host_inputs: Vec<(String, String, String)>,
    /// (step, output, size) of bundled results.
    results: Vec<(String, String, u64)>,
    /// (step, output, size, hash) of outputs left to `qflow apply`.
    left_out: Vec<(String, String, Option<u64>, String)>,
}

/// The bundle's README: what it holds and the exact commands.
fn readme(wf: &Workflow, lock: &LockFile, listing: &Listing) -> String {
    let file = &listing.workflow;
    let lock_name = &listing.lock;
    let secrets = &listing.secrets;
    let host_inputs = &listing.host_inputs;
    let results = &listing.results;
    let left_out = &listing.left_out;
    let mut r = String::new();
    let mut line = |s: &str| {
        r.push_str(s);
        r.push('\n');
    };
    line(&format!("# Artifact: `{}`", wf.name));
    line("");
    line(&format!(
        "This directory was written by `qflow bundle`. It holds the qflow workflow `{file}`, \
         its lock `{lock_name}` (the key, tool versions, input digests and output hashes of \
         every step of the run that produced the results), the workflow's local inputs, and \
         the collected results in `results/`."
    ));
    line("");
    line("## Reproduce");
    line("");
    line("With qflow installed (and, on Debian, the packages `qflow doctor` names):");
    line("");
    line("```sh");
    line(&format!(
        "qflow doctor {file}   # check the host; prints what to install"
    ));
    line(&format!(
        "qflow apply {file}    # run every step; outputs appear under out/<step>/"
    ));
    line(&format!(
        "qflow verify {file}   # rebuild from scratch and compare every output hash with {lock_name}"
    ));
    if listing
        .results
        .iter()
        .any(|(_, out, _)| out == "metrics.json")
    {
        line(&format!(
            "qflow results {file} --summary   # the metrics table from the records (apply redraws out/figures/)"
        ));
    }
    line("```");
    line("");
    line(&format!(
        "`qflow verify` leaves `{lock_name}` alone; `qflow apply` rewrites it with this \
         machine's run, so keep a copy to compare with. After an apply, `out/<step>/` holds \
         what `results/<step>/` holds here."
    ));
    if !secrets.is_empty() {
        line("");
        line("## Secrets to provide");
        line("");
        line("Secrets are never bundled. Before applying, provide:");
        line("");
        let mut seen = std::collections::BTreeSet::new();
        for s in secrets
            .iter()
            .filter(|s| seen.insert((&s.source, &s.value)))
        {
            let users: Vec<String> = secrets
                .iter()
                .filter(|u| u.source == s.source && u.value == s.value)
                .map(|u| format!("step `{}` field `{}`", u.step, u.field))
                .collect();
            let users = users.join(", ");
            match s.source.as_str() {
                "file" => line(&format!(
                    "- `{}` ({users}): a file whose first line is the password",
                    s.value
                )),
                _ => line(&format!("- environment variable `{}` ({users})", s.value)),
            }
        }
        line("");
        line(
            "A different password gives a different step key, so those steps' keys (not \
             necessarily their outputs) differ from the lock's.",
        );
    }
    if !host_inputs.is_empty() {
        line("");
        line("## Host files the workflow reads (not bundled)");
        line("");
        line(
            "Install them (the same content: it enters the step keys) before applying; \
             `qflow plan` names any that differ.",
        );
        line("");
        for (step, label, digest) in host_inputs {
            if digest.is_empty() {
                line(&format!("- `{label}` (step `{step}`)"));
            } else {
                line(&format!("- `{label}` (step `{step}`), digest `{digest}`"));
            }
        }
    }
    line("");
    line("## Results in this bundle");
    line("");
    if results.is_empty() {
        line("None: every output is rebuilt by `qflow apply`.");
    }
    for (step, out, size) in results {
        let hash = &lock.steps[step].outputs[out];
        line(&format!(
            "- `results/{step}/{out}` ({size} bytes, blake3 `{hash}`)"
        ));
    }
    if !left_out.is_empty() {
        line("");
        line(&format!(
            "Not bundled (disk images and outputs over {} KiB: `qflow apply` rebuilds them; their \
             hashes are in `{lock_name}`):",
            SMALL_OUTPUT / 1024
        ));
        line("");
        for (step, out, size, hash) in left_out {
            let size = match size {
                Some(n) => format!("{n} bytes"),
                None => "not in the cache".to_string(),
            };
            line(&format!("- `{step}/{out}` ({size}, blake3 `{hash}`)"));
        }
    }
    let mut tools: BTreeMap<&String, &String> = BTreeMap::new();
    for s in lock.steps.values() {
        tools.extend(s.tools.iter());
    }
    if !tools.is_empty() {
        line("");
        line("## Tools the recorded run used");
        line("");
        for (t, v) in tools {
            line(&format!("- `{t}`: {v}"));
        }
    }
    r
}

/// Write `entries` under `top/` as a gzip'd tar, atomically.
fn write_archive(out: &Path, top: &str, entries: &BTreeMap<String, Entry>) -> anyhow::Result<()> {
    let tmp = out.with_file_name(format!(
        ".{}.{}.tmp",
        out.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> anyhow::Result<()> {
        let file = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        tar.mode(tar::HeaderMode::Deterministic);
        let header = |kind: tar::EntryType, mode: u32, size: u64| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(size);
            h.set_mtime(FIXED_MTIME);
            h.set_uid(0);
            h.set_gid(0);
            h
        };
        let mut dirs: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        for (path, entry) in entries {
            // Parent directories first, so every extractor makes them 0755.
            let mut parent = Path::new(path).parent();
            let mut missing = Vec::new();
            while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                let p = p.to_string_lossy().into_owned();
                if dirs.contains(&p) {
                    break;
                }
                missing.push(p);
                parent = Path::new(missing.last().unwrap()).parent();
            }
            for d in missing.into_iter().rev() {
                let mut h = header(tar::EntryType::Directory, 0o755, 0);
                tar.append_data(&mut h, format!("{top}/{d}/"), std::io::empty())?;
                dirs.insert(d);
            }
            let name = format!("{top}/{path}");
            match entry {
                Entry::File { source, executable } => {
                    let f = std::fs::File::open(source)
                        .with_context(|| format!("cannot read {}", source.display()))?;
                    let len = f.metadata()?.len();
                    let mode = if *executable { 0o755 } else { 0o644 };
                    let mut h = header(tar::EntryType::Regular, mode, len);
                    tar.append_data(&mut h, &name, f)?;
                }
                Entry::Bytes(b) => {
                    let mut h = header(tar::EntryType::Regular, 0o644, b.len() as u64);
                    tar.append_data(&mut h, &name, b.as_slice())?;
                }
                Entry::Symlink(target) => {
                    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                    tar.append_link(&mut h, &name, target)?;
                }
                Entry::Dir => {
                    if dirs.insert(path.clone()) {
                        let mut h = header(tar::EntryType::Directory, 0o755, 0);
                        tar.append_data(&mut h, format!("{name}/"), std::io::empty())?;
                    }
                }
            }
        }
        let mut gz = tar.into_inner()?;
        gz.flush()?;
        let file = gz.finish()?;
        file.sync_all()?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_customize_root_password_file_is_found_as_a_secret_but_a_kernel_config_file_is_not() {
        let registry = qflow_steps::registry();
        let customize = registry.get("customize").unwrap().schema();
        let fields = serde_json::json!({
            "image": "base",
            "root_password": { "file": "rootpw.txt" },
            "copy_in": [ { "from": "files", "to": "/root" } ]
        });
        let uses = secret_uses("custom", &customize, &fields);
        assert_eq!(
            uses,
            vec![SecretUse {
                step: "custom".into(),
                field: "root_password".into(),
                source: "file".into(),
                value: "rootpw.txt".into(),
            }]
        );
        let boot = registry.get("boot").unwrap().schema();
        let fields = serde_json::json!({
            "disks": ["base"],
            "login": { "user": "root", "password": { "env": "ROOT_PW" } }
        });
        let uses = secret_uses("run", &boot, &fields);
        assert_eq!(uses.len(), 1);
        assert_eq!(uses[0].field, "login.password");
        assert_eq!(uses[0].source, "env");
        let kernel = registry.get("kernel").unwrap().schema();
        let fields = serde_json::json!({
            "source": "/usr/src/linux-source-6.1.tar.xz",
            "config": { "file": "guest.config" }
        });
        assert!(secret_uses("kernel", &kernel, &fields).is_empty());
    }
}
