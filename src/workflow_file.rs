//! Which workflow file a command means, found the way `cargo` and `just` find
//! theirs: the file named (`qflow apply FILE`, `-f FILE`), else `workflow.yaml`
//! in the current directory, else the one `*.yaml` there that is a workflow
//! (holds `version:` and `steps:` at the top level), else the same in each
//! parent directory in turn.
//!
//! A directory with several workflows and no `workflow.yaml` is ambiguous:
//! commands that change something refuse and list them; `status` shows each.

use std::path::{Path, PathBuf};

use crate::usage_error::UsageError;

/// The default workflow file name.
pub const DEFAULT: &str = "workflow.yaml";

/// What a search from one directory found.
pub enum Found {
    /// One workflow file.
    One(PathBuf),
    /// Several candidate workflow files in the same directory.
    Several(Vec<PathBuf>),
}

/// Look for a workflow in `start` and then its parents.
pub fn discover(start: &Path) -> anyhow::Result<Found> {
    let start = std::path::absolute(start).unwrap_or_else(|_| start.to_path_buf());
    for dir in start.ancestors() {
        let default = dir.join(DEFAULT);
        if default.is_file() {
            return Ok(Found::One(relative_to(&default, &start)));
        }
        let mut candidates: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| is_workflow(p))
            .map(|p| relative_to(&p, &start))
            .collect();
        candidates.sort();
        match candidates.len() {
            0 => continue,
            1 => return Ok(Found::One(candidates.remove(0))),
            _ => return Ok(Found::Several(candidates)),
        }
    }
    Err(UsageError(format!(
        "no workflow found: no `{DEFAULT}` (or other `*.yaml` with `version:` and `steps:`) in {} or its parents; name the file (`qflow apply FILE`) or pass `-f FILE`",
        start.display()
    ))
    .into())
}

/// The one workflow of a search, or a usage error listing the candidates.
pub fn discover_one(start: &Path) -> anyhow::Result<PathBuf> {
    match discover(start)? {
        Found::One(p) => Ok(p),
        Found::Several(all) => Err(several(&all)),
    }
}

/// The error for a directory holding several workflows.
pub fn several(all: &[PathBuf]) -> anyhow::Error {
    let names: Vec<String> = all.iter().map(|p| format!("`{}`", p.display())).collect();
    UsageError(format!(
        "several workflows here and no `{DEFAULT}`: {}; name one (`qflow apply {}`) or pass `-f FILE`",
        names.join(", "),
        all[0].display()
    ))
    .into()
}

/// Whether `p` is a `*.yaml` (or `*.yml`) file with top-level `version:` and `steps:`.
pub fn is_workflow(p: &Path) -> bool {
    let yaml = matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
    if !yaml || !p.is_file() {
        return false;
    }
    let Ok(text) = std::fs::read_to_string(p) else {
        return false;
    };
    let has = |key: &str| text.lines().any(|l| l.starts_with(key));
    has("version:") && has("steps:")
}

/// Whether a command-line word is meant as a workflow file rather than a step
/// name: a `*.yaml` name or a path (whether or not it exists, so a mistyped
/// file is reported as unreadable), or an existing workflow file.
pub fn looks_like_file(word: &str) -> bool {
    word.ends_with(".yaml")
        || word.ends_with(".yml")
        || word.contains(std::path::MAIN_SEPARATOR)
        || is_workflow(Path::new(word))
}

/// `path` relative to `base` when it lies below it (shorter messages), else as is.
fn relative_to(path: &Path, base: &Path) -> PathBuf {
    path.strip_prefix(base)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "qflow-discover-{}-{name}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const WF: &str = "version: 1\nsteps:\n  a:\n    kind: command\n";

    #[test]
    fn a_lone_yaml_workflow_is_found_from_a_subdirectory() {
        let d = scratch("lone");
        std::fs::write(d.join("paper.yaml"), WF).unwrap();
        std::fs::write(d.join("other.yaml"), "just: data\n").unwrap();
        std::fs::create_dir_all(d.join("src/deep")).unwrap();
        let Found::One(p) = discover(&d.join("src/deep")).unwrap() else {
            panic!("expected one workflow");
        };
        assert_eq!(p, d.join("paper.yaml"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn workflow_yaml_wins_over_other_workflows_and_several_are_listed() {
        let d = scratch("several");
        std::fs::write(d.join("a.yaml"), WF).unwrap();
        std::fs::write(d.join("b.yml"), WF).unwrap();
        let Found::Several(all) = discover(&d).unwrap() else {
            panic!("expected several");
        };
        assert_eq!(all, vec![PathBuf::from("a.yaml"), PathBuf::from("b.yml")]);
        std::fs::write(d.join(DEFAULT), WF).unwrap();
        let Found::One(p) = discover(&d).unwrap() else {
            panic!("expected one");
        };
        assert_eq!(p, PathBuf::from(DEFAULT));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
