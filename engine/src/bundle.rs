//! `qflow bundle`: one archive an artifact evaluator can take away.
//!
//! The archive (`<name>-artifact/` inside a `.tar.gz`, see [`archive`]) holds the
//! workflow and its lock; the local inputs every step declares (exactly the files
//! the engine digests for the step keys, so an apply of the unpacked bundle computes
//! the same keys); the collected results; and a generated `README.md` ([`readme`])
//! with the exact commands that check the host, reproduce and verify.
//!
//! Decisions, each taken from the step contract, never from a kind's name:
//! - Results are the outputs whose [`OutputRole`] is `Result` or `Log` (what a
//!   guest run collected, its console logs), whatever their size, plus every
//!   `Artifact` of at most [`SMALL_OUTPUT`]: configs, small tables. Never machine
//!   state (`Image`, `MachineState`): `qflow apply` rebuilds it, and its hashes are
//!   in the lock and the README.
//! - Every relative input is packed, at its place relative to the workflow: the
//!   bundle's root is the workflow's directory, or the nearest directory above it
//!   that holds every relative input too (`../tests/fixtures/x.config`). Absolute
//!   paths (a kernel tarball in `/usr/src`) are host files: the README lists them
//!   with their lock digests.
//! - Secrets are never packed. The files a step declares as secrets
//!   ([`Step::secrets`]) are not inputs; if an input would carry one, or anything
//!   under a conventional `secrets/` directory (beside the workflow, or at the top
//!   of an input directory; not a deeper one such as a kernel tree's
//!   `Documentation/security/secrets/`), bundle refuses and says what to move. The
//!   README tells the evaluator which secret files or variables to provide.
//! - The bundle must match its lock: an input that changed since the last apply is
//!   refused (the evaluator would get other outputs than the lock promises).
//!
//! [`Step::secrets`]: crate::Step::secrets

pub mod archive;
pub mod readme;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use crate::paths::lexically_clean as normalize;

use anyhow::Context as _;

use crate::inputs::InputEntry;
use crate::lockfile::LockFile;
use crate::session::lock_path;
use crate::stat_cache::StatCache;
use crate::step::{OutputRole, SecretSource, SecretUse, resolve_in};
use crate::workflow::Workflow;
use crate::{Input, Refusal};
use archive::Entry;

/// Artifacts up to this size go into `results/`.
pub const SMALL_OUTPUT: u64 = 1024 * 1024;

/// What a written bundle holds, for the command's closing line.
#[derive(Debug)]
pub struct Written {
    /// Where the archive was written.
    pub path: PathBuf,
    /// Files in the archive (directories not counted).
    pub files: usize,
    /// Results under `results/`.
    pub results: usize,
}

/// Write the bundle of `wf` (whose cache is `cache_dir`) to `output`, or to
/// `<workflow name>-artifact.tar.gz` in the current directory.
pub fn write(wf: &Workflow, cache_dir: &Path, output: Option<&Path>) -> anyhow::Result<Written> {
    let lock_file = lock_path(wf);
    let lock = LockFile::read(&lock_file);
    let apply_first = |why: String| -> anyhow::Error {
        Refusal(format!(
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

    let all_inputs: Vec<Vec<Input>> = wf.steps.iter().map(|s| s.step.inputs()).collect();
    let root = bundle_root(wf, &all_inputs);
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

    // Secrets, as each step declares them.
    let secrets: Vec<(String, SecretUse)> = wf
        .steps
        .iter()
        .flat_map(|s| s.step.secrets().into_iter().map(|u| (s.name.clone(), u)))
        .collect();
    let secret_files: Vec<PathBuf> = secrets
        .iter()
        .filter_map(|(_, u)| match &u.source {
            SecretSource::File(f) => Some(normalize(&resolve_in(&wf.dir, f))),
            SecretSource::Env(_) => None,
        })
        .collect();

    // Inputs: the very files the engine digests.
    let wf_dir = normalize(&wf.dir);
    let mut stat = StatCache::load(&cache_dir.join("statcache"));
    // No tree index: the bundle needs every entry listed.
    let digests = crate::inputs::digest_all(&wf.dir, &mut stat, None, &all_inputs)?;
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
            let glob = crate::glob::is_glob(&input.path);
            let input_root = resolve_in(&wf.dir, &input.path);
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
                let is_dir = matches!(e, InputEntry::Dir);
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
                    InputEntry::File { executable, .. } => Entry::File {
                        source: path.clone(),
                        executable: *executable,
                    },
                    InputEntry::Symlink { target } => Entry::Symlink(target.clone()),
                    InputEntry::Dir => Entry::Dir,
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
        return Err(Refusal(format!(
            "a bundle never carries secrets, and these inputs hold {n} (under a `secrets/` \
             directory or a step's password file): {}; move them out of the inputs",
            refused.join(", ")
        ))
        .into());
    }

    // Results, by the role each step gives its outputs.
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
            let role = s.step.output_role(out);
            let always = matches!(role, OutputRole::Result | OutputRole::Log);
            let Some(tree) = &tree else {
                if always {
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
            if !role.is_machine_state() && (always || meta.len() <= SMALL_OUTPUT) {
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

    // Secret files as the evaluator will see them: relative to the bundle's root.
    let secrets = secrets
        .into_iter()
        .map(|(step, mut u)| {
            if let SecretSource::File(f) = &u.source
                && let Some(r) = in_root(&resolve_in(&wf.dir, f))
            {
                u.source = SecretSource::File(r);
            }
            (step, u)
        })
        .collect();
    let result_count = results.len();
    let text = readme::text(
        wf,
        &lock,
        &readme::Listing {
            workflow: workflow_rel,
            lock: lock_rel,
            secrets,
            host_inputs,
            results,
            left_out,
            small_output: SMALL_OUTPUT,
            overrides: overrides(wf, &lock),
        },
    );
    entries.insert("README.md".into(), Entry::Bytes(text.into_bytes()));

    let top = format!("{}-artifact", wf.name);
    let path = match output {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from(format!("{top}.tar.gz")),
    };
    archive::write(&path, &top, &entries)?;
    Ok(Written {
        path,
        files: entries
            .values()
            .filter(|e| !matches!(e, Entry::Dir))
            .count(),
        results: result_count,
    })
}

/// The `--set` overrides of the recorded run: each var a step used whose locked
/// value differs from the one the workflow file declares.
fn overrides(wf: &Workflow, lock: &LockFile) -> Vec<(String, String)> {
    let declared: BTreeMap<String, String> = std::fs::read_to_string(&wf.path)
        .ok()
        .and_then(|t| serde_yaml::from_str::<serde_yaml::Value>(&t).ok())
        .and_then(|v| v.get("vars").and_then(|v| v.as_mapping()).cloned())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| {
                    let text = match v {
                        serde_yaml::Value::String(s) => s.clone(),
                        serde_yaml::Value::Number(n) => n.to_string(),
                        serde_yaml::Value::Bool(b) => b.to_string(),
                        _ => return None,
                    };
                    Some((k.as_str()?.to_string(), text))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut used: BTreeMap<String, String> = BTreeMap::new();
    for s in lock.steps.values() {
        used.extend(s.vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    used.into_iter()
        .filter(|(k, v)| declared.get(k) != Some(v))
        .collect()
}

/// The workflow's directory, or the nearest directory above it that also holds
/// every relative input (`../tests/fixtures/x.config`).
fn bundle_root(wf: &Workflow, all_inputs: &[Vec<Input>]) -> PathBuf {
    let wf_dir = normalize(&wf.dir);
    let mut root = wf_dir.clone();
    for input in all_inputs.iter().flatten() {
        if Path::new(&input.path).is_absolute() {
            continue;
        }
        let fixed: PathBuf = input
            .path
            .split('/')
            .take_while(|c| !crate::glob::is_glob(c))
            .collect();
        let p = normalize(&wf_dir.join(fixed));
        while !p.starts_with(&root) && root.pop() {}
    }
    root
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::step::{HostNeed, KindOf, Registry, Step, StepFields, Tool};

    /// A kind that reads a password file and copies a directory input into its
    /// output. Its secret is declared by the contract alone: no field type says so.
    #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Pack {
        tree: String,
        password_file: String,
    }

    impl Step for Pack {
        fn inputs(&self) -> Vec<Input> {
            vec![Input::new("tree", self.tree.clone())]
        }
        fn output_roles(&self) -> Vec<(String, OutputRole)> {
            vec![("listing.txt".into(), OutputRole::Result)]
        }
        fn secrets(&self) -> Vec<SecretUse> {
            vec![SecretUse {
                field: "password_file".into(),
                source: SecretSource::File(self.password_file.clone()),
            }]
        }
        fn run(&self, ctx: &mut crate::RunContext) -> anyhow::Result<()> {
            std::fs::write(ctx.out_dir().join("listing.txt"), "packed\n")?;
            Ok(())
        }
    }

    impl StepFields for Pack {
        const KIND: &'static str = "pack";
        const SCHEMA_VERSION: u32 = 1;
        fn kind_tools() -> Vec<Tool> {
            Vec::new()
        }
        fn kind_needs() -> Vec<HostNeed> {
            Vec::new()
        }
    }

    #[test]
    fn a_file_a_step_declares_as_its_secret_is_never_bundled_even_inside_an_input() {
        let dir = std::env::temp_dir().join(format!(
            "qflow-bundle-secret-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(dir.join("tree")).unwrap();
        std::fs::write(dir.join("tree/data.txt"), "1 2 3\n").unwrap();
        std::fs::write(dir.join("tree/pw.txt"), "hunter2\n").unwrap();
        std::fs::write(
            dir.join("workflow.yaml"),
            "version: 1\nname: secret\nsteps:\n  pack:\n    kind: pack\n    tree: ./tree\n    password_file: tree/pw.txt\n",
        )
        .unwrap();
        let mut registry = Registry::new();
        registry.add(KindOf::<Pack>::new());
        let wf = Workflow::load(
            &dir.join("workflow.yaml"),
            &registry,
            &crate::workflow::LoadOptions::default(),
        )
        .unwrap();
        let cache = dir.join(".qflow");
        let mut session = crate::session::Session::open(&wf, &registry, &cache).unwrap();
        let options = crate::scheduler::ApplyOptions {
            jobs: 1,
            keep_going: false,
            no_wait: false,
            out_dir: None,
            executor: None,
            slurm_batch: false,
            remote: None,
        };
        let progress = std::sync::Arc::new(crate::progress::Progress::new());
        let run = crate::scheduler::apply(&mut session, &options, progress).unwrap();
        assert!(!run.interrupted);
        drop(session);

        let archive = dir.join("secret.tar.gz");
        let err = write(&wf, &cache, Some(&archive)).unwrap_err();
        let refusal = err.downcast_ref::<Refusal>().expect("a refusal (exit 2)");
        assert!(refusal.0.contains("`tree/pw.txt`"), "{refusal}");
        assert!(!refusal.0.contains("hunter2"));
        assert!(!archive.exists(), "no archive written");

        // Moved out of the input, the secret stays home and the README asks for it.
        std::fs::rename(dir.join("tree/pw.txt"), dir.join("pw.txt")).unwrap();
        let text = std::fs::read_to_string(dir.join("workflow.yaml")).unwrap();
        std::fs::write(
            dir.join("workflow.yaml"),
            text.replace("tree/pw.txt", "pw.txt"),
        )
        .unwrap();
        let wf = Workflow::load(
            &dir.join("workflow.yaml"),
            &registry,
            &crate::workflow::LoadOptions::default(),
        )
        .unwrap();
        let mut session = crate::session::Session::open(&wf, &registry, &cache).unwrap();
        let progress = std::sync::Arc::new(crate::progress::Progress::new());
        crate::scheduler::apply(&mut session, &options, progress).unwrap();
        drop(session);
        let written = write(&wf, &cache, Some(&archive)).unwrap();
        assert_eq!(written.results, 1);
        let listing = std::process::Command::new("tar")
            .arg("-tzf")
            .arg(&archive)
            .output()
            .unwrap();
        let listing = String::from_utf8(listing.stdout).unwrap();
        assert!(
            listing.contains("secret-artifact/tree/data.txt"),
            "{listing}"
        );
        assert!(!listing.contains("pw.txt"), "{listing}");
        let readme = std::process::Command::new("tar")
            .arg("-xzOf")
            .arg(&archive)
            .arg("secret-artifact/README.md")
            .output()
            .unwrap();
        let readme = String::from_utf8(readme.stdout).unwrap();
        assert!(
            readme.contains("- `pw.txt` (step `pack` field `password_file`)"),
            "{readme}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_secrets_directory_counts_beside_the_workflow_or_atop_an_input_but_not_deeper() {
        let wf = Path::new("/w");
        let input = Path::new("/w/linux");
        assert!(in_secrets_dir(
            Path::new("/w/secrets/pw"),
            wf,
            Path::new("/w/x")
        ));
        assert!(in_secrets_dir(
            Path::new("/w/linux/secrets/token"),
            wf,
            input
        ));
        assert!(!in_secrets_dir(
            Path::new("/w/linux/Documentation/security/secrets/a.rst"),
            wf,
            input
        ));
    }

    #[test]
    fn paths_are_cleaned_without_touching_the_disk() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
    }
}
