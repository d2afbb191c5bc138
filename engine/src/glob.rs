//! Input globs (`src/**/*.c`, `configs/*.config`), relative to the workflow directory.
//!
//! `*` and `?` match within one path component, `**` matches any number of
//! components. Small on purpose: inputs need matching, not a glob language.
//!
//! Imports nothing of the engine.

use std::path::{Path, PathBuf};

/// Whether `pattern` is a glob rather than a plain path.
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// Files matching `pattern` under `base`, sorted, as paths relative to `base`.
pub fn expand(base: &Path, pattern: &str) -> anyhow::Result<Vec<PathBuf>> {
    let parts: Vec<&str> = pattern
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let fixed: Vec<&str> = parts.iter().take_while(|p| !is_glob(p)).copied().collect();
    let root_rel: PathBuf = fixed.iter().collect();
    let absolute = pattern.starts_with('/');
    let root = if absolute {
        Path::new("/").join(&root_rel)
    } else {
        base.join(&root_rel)
    };
    let rest = &parts[fixed.len()..];
    let mut found = Vec::new();
    if !root.is_dir() {
        return Ok(found);
    }
    for entry in walkdir::WalkDir::new(&root)
        .min_depth(1)
        .sort_by_file_name()
    {
        let entry = entry?;
        if entry.file_type().is_dir() {
            continue;
        }
        let rel = entry.path().strip_prefix(&root)?;
        let comps: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let comps: Vec<&str> = comps.iter().map(|s| s.as_str()).collect();
        if match_components(rest, &comps) {
            let shown = if absolute {
                entry.path().to_path_buf()
            } else {
                root_rel.join(rel)
            };
            found.push(shown);
        }
    }
    Ok(found)
}

fn match_components(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.first() {
        None => path.is_empty(),
        Some(&"**") => (0..=path.len()).any(|i| match_components(&pattern[1..], &path[i..])),
        Some(p) => {
            !path.is_empty()
                && match_name(p.as_bytes(), path[0].as_bytes())
                && match_components(&pattern[1..], &path[1..])
        }
    }
}

fn match_name(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => match_name(&p[1..], s) || (!s.is_empty() && match_name(p, &s[1..])),
        (Some(b'?'), Some(_)) => match_name(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => match_name(&p[1..], &s[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_stays_in_one_component_and_double_star_crosses() {
        assert!(match_components(&["*.c"], &["a.c"]));
        assert!(!match_components(&["*.c"], &["d", "a.c"]));
        assert!(match_components(&["**", "*.c"], &["d", "e", "a.c"]));
        assert!(match_components(&["**", "*.c"], &["a.c"]));
        assert!(!match_components(&["a?"], &["abc"]));
    }
}
