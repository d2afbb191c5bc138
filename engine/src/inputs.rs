//! Declared inputs: host files, whole trees and globs, hashed into digests that
//! enter step keys.
//!
//! A tree's digest covers every entry below it, sorted: regular files (content
//! hash and executable bit), symlinks (their target, not followed) and
//! directories. Files are stat'ed in parallel and read only when the stat cache
//! cannot vouch for them. Each digest's file listing is kept in the cache
//! (`inputs/<digest>`), so `qflow plan` can name the files that changed.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use qflow_cache::Hash;

use crate::stat_cache::{FileStat, StatCache};
use crate::step::Input;
use crate::tree_walk::WalkEntry;

/// One entry of an input, relative to the input's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputEntry {
    File { executable: bool, hash: Hash },
    Symlink { target: String },
    Dir,
}

/// The digest of one declared input and the entries it covers.
#[derive(Debug, Clone)]
pub struct InputDigest {
    /// The input as written in the workflow (`src/`, `input.txt`, `*.config`).
    pub label: String,
    /// The field that declared it.
    pub field: String,
    pub digest: Hash,
    /// Entries in walk order (each directory's entries sorted by name).
    pub entries: Vec<(String, InputEntry)>,
}

enum Found {
    File(PathBuf, FileStat),
    /// A file already queued for hashing at this index.
    Queued(usize, bool),
    Symlink(String),
    Dir,
}

/// Digest every step's inputs. `inputs[i]` are step i's inputs; the result has the same shape.
pub fn digest_all(
    work_dir: &Path,
    stat_cache: &mut StatCache,
    inputs: &[Vec<Input>],
) -> anyhow::Result<Vec<Vec<InputDigest>>> {
    // Walk every input (readdir, then lstat in parallel), then hash what the
    // stat cache cannot vouch for.
    let mut walked: Vec<Vec<Vec<(String, Found)>>> = inputs
        .iter()
        .map(|step_inputs| {
            step_inputs
                .iter()
                .map(|i| walk(work_dir, i))
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .collect::<anyhow::Result<_>>()?;
    let mut files: Vec<(PathBuf, FileStat)> = Vec::new();
    for step in &mut walked {
        for input in step {
            for (_, f) in input.iter_mut() {
                if let Found::File(p, st) = f {
                    let executable = st.mode & 0o111 != 0;
                    files.push((std::mem::take(p), *st));
                    *f = Found::Queued(files.len() - 1, executable);
                }
            }
        }
    }
    let hashes = stat_cache.hash_all(&files)?;
    let mut out = Vec::with_capacity(inputs.len());
    for (step_inputs, step_walked) in inputs.iter().zip(walked) {
        let mut digests = Vec::new();
        for (input, found) in step_inputs.iter().zip(step_walked) {
            let entries: Vec<(String, InputEntry)> = found
                .into_iter()
                .map(|(rel, f)| {
                    let e = match f {
                        Found::Queued(i, executable) => InputEntry::File {
                            executable,
                            hash: hashes[i],
                        },
                        Found::File(..) => unreachable!("every file was queued"),
                        Found::Symlink(t) => InputEntry::Symlink { target: t },
                        Found::Dir => InputEntry::Dir,
                    };
                    (rel, e)
                })
                .collect();
            digests.push(InputDigest {
                label: input.path.clone(),
                field: input.field.clone(),
                digest: digest_of(&entries),
                entries,
            });
        }
        out.push(digests);
    }
    Ok(out)
}

fn walk(work_dir: &Path, input: &Input) -> anyhow::Result<Vec<(String, Found)>> {
    let mut out = Vec::new();
    if crate::glob::is_glob(&input.path) {
        for rel in crate::glob::expand(work_dir, &input.path)? {
            let p = work_dir.join(&rel);
            let meta = std::fs::metadata(&p)
                .with_context(|| format!("cannot read input {}", p.display()))?;
            out.push((
                rel.to_string_lossy().into_owned(),
                Found::File(p, FileStat::of(&meta)),
            ));
        }
        return Ok(out);
    }
    let root = crate::step::resolve_in(work_dir, &input.path);
    // The input itself may be a symlink to a file or tree: follow it.
    let meta = std::fs::metadata(&root)
        .with_context(|| format!("input `{}` does not exist ({})", input.path, root.display()))?;
    if !meta.is_dir() {
        out.push((String::new(), Found::File(root, FileStat::of(&meta))));
        return Ok(out);
    }
    for (rel, e) in crate::tree_walk::walk(&root, &input.exclude)? {
        out.push((
            rel,
            match e {
                WalkEntry::File(p, st) => Found::File(p, st),
                WalkEntry::Symlink(t) => Found::Symlink(t),
                WalkEntry::Dir => Found::Dir,
            },
        ));
    }
    Ok(out)
}

/// A versioned, unambiguous encoding of a listing, hashed.
pub fn digest_of(entries: &[(String, InputEntry)]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(b"qflow-input-digest 1\0");
    for (rel, e) in entries {
        h.update(&(rel.len() as u64).to_le_bytes());
        h.update(rel.as_bytes());
        match e {
            InputEntry::File { executable, hash } => {
                h.update(if *executable { b"X" } else { b"F" });
                h.update(&hash.0);
            }
            InputEntry::Symlink { target } => {
                h.update(b"L");
                h.update(&(target.len() as u64).to_le_bytes());
                h.update(target.as_bytes());
            }
            InputEntry::Dir => {
                h.update(b"D");
            }
        }
    }
    Hash(*h.finalize().as_bytes())
}

/// Store a digest's listing in `dir` (once), for later diffs.
pub fn save_listing(dir: &Path, d: &InputDigest) -> anyhow::Result<()> {
    let path = dir.join(d.digest.to_hex());
    if path.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let mut text = String::new();
    for (rel, e) in &d.entries {
        match e {
            InputEntry::File { executable, hash } => text.push_str(&format!(
                "{} {} {rel}\n",
                if *executable { "X" } else { "F" },
                hash
            )),
            InputEntry::Symlink { target } => text.push_str(&format!("L {target} {rel}\n")),
            InputEntry::Dir => text.push_str(&format!("D - {rel}\n")),
        }
    }
    qflow_cache::write_atomic(&path, text.as_bytes())?;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444));
    Ok(())
}

/// A listing saved by [`save_listing`]: rel → a comparable description.
pub fn load_listing(dir: &Path, digest: &Hash) -> Option<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(dir.join(digest.to_hex())).ok()?;
    Some(
        text.lines()
            .filter_map(|l| {
                let mut it = l.splitn(3, ' ');
                let (k, v, rel) = (it.next()?, it.next()?, it.next()?);
                Some((rel.to_string(), format!("{k} {v}")))
            })
            .collect(),
    )
}

/// The current listing in the same comparable form.
pub fn listing(d: &InputDigest) -> BTreeMap<String, String> {
    d.entries
        .iter()
        .map(|(rel, e)| {
            let v = match e {
                InputEntry::File { executable, hash } => {
                    format!("{} {hash}", if *executable { "X" } else { "F" })
                }
                InputEntry::Symlink { target } => format!("L {target}"),
                InputEntry::Dir => "D -".to_string(),
            };
            (rel.clone(), v)
        })
        .collect()
}
