//! What travels to the node for one step execution, and what comes back.
//!
//! The coordinator writes a [`StepDescription`] on the shared file system and
//! submits one job running `qflow __run-step <description>`. The description is
//! self-contained: the kind and its fields with every `${{ steps.X }}` already
//! resolved to an output directory in the shared cache, the step key and the tool
//! identities that entered it, the staging directory (in the cache's staging area)
//! the node writes the outputs into, the log path, the step's `env:` and the few
//! variables of the submitter's environment that programs need to be found and
//! to speak (see [`PASSED_ENV`]). No secret is in it: a step that reads a password
//! reads it on the node from its file (see `node.rs`).
//!
//! The node answers with a [`NodeReport`] beside the staging directory: whether
//! the step succeeded, its notes, and the identities of the tools the node ran.
//! The coordinator alone checks the outputs and records them, and refuses a result
//! whose tools differ from those in the key (a cluster with mixed QEMU versions
//! must not poison the cache).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::step_job::StepJob;

/// Bumped when the description's meaning changes; a node with another qflow refuses it.
pub const DESCRIPTION_VERSION: u32 = 1;

/// The submitter's environment variables a step gets on the node (when set): the
/// program search path, the home directory and user, the locale and time zone,
/// the temporary directory, and libguestfs's backend settings. Nothing else:
/// `--export=NONE` keeps the rest off the node and out of the controller's state.
pub const PASSED_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
];

/// Prefixes of further variables passed the same way.
pub const PASSED_ENV_PREFIXES: &[&str] = &["LIBGUESTFS_", "SUPERMIN_"];

/// The variables of `env` (the submitter's) that a step gets on the node.
pub fn passed_env(env: impl Iterator<Item = (String, String)>) -> BTreeMap<String, String> {
    env.filter(|(k, _)| {
        PASSED_ENV.contains(&k.as_str()) || PASSED_ENV_PREFIXES.iter().any(|p| k.starts_with(p))
    })
    .collect()
}

/// One step execution, as the node receives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepDescription {
    /// The description format's version.
    pub version: u32,
    /// The step's job, as the run loop made it: kind, fields with every
    /// `${{ steps.X }}` resolved to a path in the shared cache, key, staging
    /// directory (`out_dir`), log, `env:`, CPU slots. Its run token is empty: on
    /// the node, Slurm tracks the step's processes, and the coordinator's next
    /// apply must not take a running job's processes for a killed run's leftovers.
    pub job: StepJob,
    /// The submitter's variables from [`PASSED_ENV`].
    pub host_env: BTreeMap<String, String>,
    /// Tool program → identity, as they entered the step key.
    pub tools: BTreeMap<String, String>,
    /// Where the node writes its [`NodeReport`].
    pub report: PathBuf,
}

impl StepDescription {
    /// Write the description (temp file and rename) to `path`. Not fsynced: it
    /// lives as long as its job, and a node reads it whole or not at all.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create `{}`", dir.display()))?;
        }
        replace_file(path, &serde_json::to_vec_pretty(self)?)
    }

    /// Read a description the coordinator wrote.
    pub fn read(path: &Path) -> anyhow::Result<StepDescription> {
        let bytes = std::fs::read(path).with_context(|| {
            format!(
                "cannot read the step description `{}`; is the cache on a file system this node shares?",
                path.display()
            )
        })?;
        let d: StepDescription = serde_json::from_slice(&bytes)
            .with_context(|| format!("`{}` is not a step description", path.display()))?;
        anyhow::ensure!(
            d.version == DESCRIPTION_VERSION,
            "`{}` is a version {} step description; this qflow reads version {DESCRIPTION_VERSION}: \
             use the same qflow on the nodes as on the login node",
            path.display(),
            d.version
        );
        Ok(d)
    }

    /// Where the report of the execution staged in `out_dir` goes: beside it, so it
    /// is never part of the output tree, and swept with it by `gc` when abandoned.
    pub fn report_path(out_dir: &Path) -> PathBuf {
        let mut name = out_dir.file_name().unwrap_or_default().to_os_string();
        name.push(".node.json");
        out_dir.with_file_name(name)
    }

    /// Where the report of part `index` of the execution staged in `out_dir` goes.
    pub fn part_report_path(out_dir: &Path, index: usize) -> PathBuf {
        let mut name = out_dir.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".part{index}.node.json"));
        out_dir.with_file_name(name)
    }

    /// The log of part `index` of a step whose log is `log`: `<step>.part<index>.log`
    /// beside it (the coordinator gathers the parts' logs into `log` at the end).
    pub fn part_log(log: &Path, index: usize) -> PathBuf {
        log.with_extension(format!("part{index}.log"))
    }
}

/// What the node says about one step execution.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The step ran and created its declared outputs.
    pub ok: bool,
    /// Why not, when not.
    pub error: Option<String>,
    /// The node's host name.
    pub host: String,
    /// The CPU slots the step had (from the job's allocation).
    pub jobs: usize,
    /// Tool program → identity, as the node found them.
    pub tools: BTreeMap<String, String>,
    /// The step's notes for `qflow.lock`.
    pub notes: BTreeMap<String, String>,
    /// How long the step ran on the node.
    pub duration_ms: u64,
}

impl NodeReport {
    /// Write the report (temp file and rename; not fsynced: the coordinator reads it
    /// once, and a report lost to a crash only means the step runs again).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        replace_file(path, &serde_json::to_vec_pretty(self)?)
    }

    /// The report at `path`, or `None` when the node never wrote one (the job died first).
    pub fn read(path: &Path) -> anyhow::Result<Option<NodeReport>> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
                format!("`{}` is not a node report", path.display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read `{}`", path.display())),
        }
    }

    /// `Err` naming the tool and both identities when the node's tools are not
    /// those the step key was computed with.
    pub fn check_tools(&self, expected: &BTreeMap<String, String>) -> Result<(), String> {
        tools_differ(&self.host, expected, &self.tools)
    }
}

/// Write `bytes` to `path` by a temporary file beside it and a rename, without
/// fsync: a reader sees the old content or the new, never a mix.
fn replace_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(name);
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write `{}`", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot rename `{}` to `{}`", tmp.display(), path.display())
    })
}

/// `Err` naming every tool whose identity on node `host` differs from the key's.
pub fn tools_differ(
    host: &str,
    expected: &BTreeMap<String, String>,
    found: &BTreeMap<String, String>,
) -> Result<(), String> {
    let mut problems = Vec::new();
    for (tool, want) in expected {
        match found.get(tool) {
            Some(got) if got == want => {}
            Some(got) => problems.push(format!(
                "`{tool}` on node `{host}` is `{got}`, but the step key was computed with `{want}`"
            )),
            None => problems.push(format!(
                "node `{host}` did not report `{tool}` (the step key has `{want}`)"
            )),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}; the result is not recorded: install the same versions on the nodes as on this \
             host, or run the step here with `executor: local`",
            problems.join("; ")
        ))
    }
}

/// Empty directory `dir` (a staging directory a failed try wrote into), keeping it.
pub fn clear_dir(dir: &Path) -> anyhow::Result<()> {
    qflow_cache::remove_dir_force(dir)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))
}

/// Move every entry of `from` into `to` (same file system), then remove `from`:
/// an adopted job's outputs, staged by the run that submitted it, become this run's.
pub fn move_entries(from: &Path, to: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(from).with_context(|| {
        format!(
            "cannot read the adopted job's staging directory `{}`",
            from.display()
        )
    })? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        std::fs::rename(entry.path(), &dest).with_context(|| {
            format!(
                "cannot move `{}` to `{}`",
                entry.path().display(),
                dest.display()
            )
        })?;
    }
    let _ = std::fs::remove_dir(from);
    Ok(())
}

/// Like [`move_entries`], but an entry `to` already has stays (a part this run
/// submitted again wrote it) and `from`'s copy is removed.
pub fn merge_entries(from: &Path, to: &Path) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(from) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if std::fs::symlink_metadata(&dest).is_ok() {
            let _ = qflow_cache::remove_dir_force(&entry.path());
            continue;
        }
        std::fs::rename(entry.path(), &dest).with_context(|| {
            format!(
                "cannot move `{}` to `{}`",
                entry.path().display(),
                dest.display()
            )
        })?;
    }
    let _ = std::fs::remove_dir(from);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listed_variables_travel() {
        let env = [
            ("PATH", "/usr/bin"),
            ("HOME", "/home/u"),
            ("LIBGUESTFS_BACKEND", "direct"),
            ("ROOT_PASSWORD", "hunter2"),
            ("SSH_AUTH_SOCK", "/tmp/agent"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let passed = passed_env(env.into_iter());
        assert_eq!(
            passed.keys().collect::<Vec<_>>(),
            ["HOME", "LIBGUESTFS_BACKEND", "PATH"]
        );
    }

    #[test]
    fn another_tool_version_on_the_node_is_named_with_both_versions() {
        let want = BTreeMap::from([(
            "qemu-system-x86_64".to_string(),
            "QEMU emulator version 7.2.15".to_string(),
        )]);
        let mut got = want.clone();
        assert!(tools_differ("node1", &want, &got).is_ok());
        got.insert(
            "qemu-system-x86_64".into(),
            "QEMU emulator version 9.9.9".into(),
        );
        let e = tools_differ("node1", &want, &got).unwrap_err();
        assert!(e.contains("`qemu-system-x86_64`"), "{e}");
        assert!(e.contains("9.9.9") && e.contains("7.2.15"), "{e}");
        assert!(e.contains("node1"), "{e}");
        assert!(tools_differ("node1", &want, &BTreeMap::new()).is_err());
    }

    #[test]
    fn the_report_sits_beside_the_staging_directory() {
        assert_eq!(
            StepDescription::report_path(Path::new("/c/trees/.tmp-abc")),
            Path::new("/c/trees/.tmp-abc.node.json")
        );
    }
}
