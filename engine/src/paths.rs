//! Paths between the places qflow knows: a field's path against the workflow
//! directory, one cache tree seen from another, an `out/` link, and a path as the
//! user sees it. Every crate uses these instead of its own copy, so "relative"
//! means the same thing to the engine and to every step kind.
//!
//! - [`resolve_in`]: a path from a field, against the workflow directory unless absolute.
//! - [`relative_to`]: `to` seen from directory `from`, lexically (`../<hash>/image.qcow2`):
//!   references between cache trees that survive moving the cache.
//! - [`relative_to_existing`]: the same between two existing paths, resolved first
//!   (symlinks, `..`), for qcow2 backing files written next to an output.
//! - [`link_target`]: what an `out/` symlink holds: relative, unless the two share
//!   only `/`, where an absolute target reads better.
//! - [`shown`]: a path as the user will recognise it, relative to the current directory
//!   when inside it.
//! - [`lexically_clean`]: `a/./b/../c` → `a/c` without touching the disk.

use std::path::{Component, Path, PathBuf};

use anyhow::Context as _;

/// Resolve `path` against `base` unless it is absolute.
pub fn resolve_in(base: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// `to` relative to directory `from` (both absolute, already free of `..`), e.g.
/// `../<hash>/image.qcow2` from a sibling output tree: references that survive
/// moving the cache. Shared by the engine (`out/` links) and the kinds (qcow2
/// backing files, checkpoint records).
pub fn relative_to(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to_c: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to_c).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..from.len() {
        rel.push("..");
    }
    for c in &to_c[common..] {
        rel.push(c.as_os_str());
    }
    rel
}

/// The path of existing `target` relative to existing directory `from`, both
/// resolved on disk first (symlinks, `.`, `..`).
pub fn relative_to_existing(from: &Path, target: &Path) -> anyhow::Result<PathBuf> {
    let from = std::fs::canonicalize(from)
        .with_context(|| format!("cannot resolve {}", from.display()))?;
    let target = std::fs::canonicalize(target)
        .with_context(|| format!("cannot resolve {}", target.display()))?;
    Ok(relative_to(&from, &target))
}

/// What a link in `from` to `to` holds (both absolute): relative, so the link
/// survives moving the directory holding both; absolute when they share only `/`.
pub fn link_target(from: &Path, to: &Path) -> PathBuf {
    let common = from
        .components()
        .zip(to.components())
        .take_while(|(a, b)| a == b)
        .count();
    if common <= 1 {
        to.to_path_buf()
    } else {
        relative_to(from, to)
    }
}

/// A path as the user will recognise it: relative to the current directory when inside it.
pub fn shown(p: &Path) -> PathBuf {
    match std::env::current_dir() {
        Ok(cwd) => p
            .strip_prefix(&cwd)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| p.to_path_buf()),
        Err(_) => p.to_path_buf(),
    }
}

/// Lexically clean a path (`a/./b/../c` → `a/c`) without touching the disk.
pub fn lexically_clean(p: &Path) -> PathBuf {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_path_is_taken_from_the_workflow_directory_unless_absolute() {
        let base = Path::new("/work/flow");
        assert_eq!(
            resolve_in(base, "secrets/pw"),
            PathBuf::from("/work/flow/secrets/pw")
        );
        assert_eq!(resolve_in(base, "/etc/pw"), PathBuf::from("/etc/pw"));
    }

    #[test]
    fn relative_paths_climb_to_the_common_parent() {
        assert_eq!(
            relative_to(
                Path::new("/c/trees/.tmp-1"),
                Path::new("/c/trees/abc/image.raw")
            ),
            PathBuf::from("../abc/image.raw")
        );
        assert_eq!(
            relative_to(Path::new("/a"), Path::new("/a/b")),
            PathBuf::from("b")
        );
    }

    #[test]
    fn a_link_between_unrelated_trees_is_absolute() {
        assert_eq!(
            link_target(Path::new("/home/u/out"), Path::new("/var/cache/t/abc")),
            PathBuf::from("/var/cache/t/abc")
        );
        assert_eq!(
            link_target(Path::new("/c/flow/out"), Path::new("/c/cache/t/abc")),
            PathBuf::from("../../cache/t/abc")
        );
    }

    #[test]
    fn existing_paths_are_resolved_before_they_are_related() {
        let d = std::env::temp_dir().join(format!("qflow-paths-{}", std::process::id()));
        std::fs::create_dir_all(d.join("a/out")).unwrap();
        std::fs::create_dir_all(d.join("b")).unwrap();
        std::fs::write(d.join("b/image.qcow2"), "x").unwrap();
        let rel = relative_to_existing(&d.join("a/./out"), &d.join("a/../b/image.qcow2")).unwrap();
        assert_eq!(rel, PathBuf::from("../../b/image.qcow2"));
        assert!(relative_to_existing(&d, &d.join("missing")).is_err());
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn clean_paths_drop_dots_and_climb_lexically() {
        assert_eq!(
            lexically_clean(Path::new("/a/./b/../c")),
            PathBuf::from("/a/c")
        );
    }
}
