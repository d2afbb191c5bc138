//! Declared inputs: host files, whole trees and globs, hashed into digests that
//! enter step keys.
//!
//! A tree's digest covers every entry below it, sorted: regular files (content
//! hash and executable bit), symlinks (their target, not followed) and
//! directories. A directory input is first checked against its tree index
//! (`tree_index.rs`), which proves an unchanged tree by stats alone; otherwise
//! it is walked, and only the files whose stat changed since the index was
//! written are read. Single files and globs go through the stat cache. Each
//! digest's file listing is kept in the cache (`inputs/<digest>`), so `qflow
//! plan` can name the files that changed.
//!
//! Imports `input_entry`, `tree_index`, `tree_walk`, `stat_cache`, `glob`, `paths`
//! and `step` (for [`Input`]); `tree_index` does not import it.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use qflow_cache::Hash;

pub use crate::input_entry::{InputEntry, digest_of};
use crate::stat_cache::{FileStat, StatCache};
use crate::step::Input;
use crate::tree_walk::WalkEntry;

/// The digest of one declared input and the entries it covers.
#[derive(Debug, Clone)]
pub struct InputDigest {
    /// The input as written in the workflow (`src/`, `input.txt`, `*.config`).
    pub label: String,
    /// The digest of the whole input.
    pub digest: Hash,
    /// Entries in walk order (each directory's entries sorted by name). Empty
    /// when the tree index proved the tree unchanged: its listing was saved
    /// when the tree was last walked (see [`listing`]).
    pub entries: Vec<(String, InputEntry)>,
    /// The tree index vouched for the digest; nothing was listed.
    pub from_index: bool,
}

enum Found {
    File(PathBuf, FileStat),
    /// A file whose hash the tree index vouches for.
    Known(Hash, bool),
    /// A file queued for hashing: (through the stat cache?, index, executable).
    Queued(bool, usize, bool),
    Symlink(String),
    Dir,
}

/// One input as found on disk.
struct Walked {
    entries: Vec<(String, Found)>,
    /// A walked tree: its stats (aligned with `entries`) and where to index it
    /// (boxed: most inputs are single files, walked by the thousand at once).
    tree: Option<Box<TreeWalk>>,
    /// The digest, when the tree index proved the tree unchanged.
    proven: Option<Hash>,
}

struct TreeWalk {
    index: Option<PathBuf>,
    root: FileStat,
    stats: Vec<FileStat>,
    walked_at_ns: i64,
}

/// Digest every step's inputs. `inputs[i]` are step i's inputs; the result has
/// the same shape. Single files and globs go through the stat cache; directory
/// inputs through their tree index in `tree_index` (the cache's `tree-index/`),
/// or are always walked and listed in full when it is `None`.
pub fn digest_all(
    work_dir: &Path,
    stat_cache: &mut StatCache,
    tree_index: Option<&Path>,
    inputs: &[Vec<Input>],
) -> anyhow::Result<Vec<Vec<InputDigest>>> {
    let never = AtomicBool::new(false);
    digest_with(work_dir, tree_index, inputs, &never, |files| {
        stat_cache.hash_all(files)
    })
}

/// [`digest_all`] with a stat cache shared with other threads (locked only to
/// look up and note hashes); once `stop` is set, it fails instead of reading on.
pub fn digest_all_until(
    work_dir: &Path,
    stat_cache: &Mutex<StatCache>,
    tree_index: Option<&Path>,
    inputs: &[&[Input]],
    stop: &AtomicBool,
) -> anyhow::Result<Vec<Vec<InputDigest>>> {
    digest_with(work_dir, tree_index, inputs, stop, |files| {
        StatCache::hash_all_shared(stat_cache, files, stop)
    })
}

fn digest_with<I: AsRef<[Input]> + Sync>(
    work_dir: &Path,
    tree_index: Option<&Path>,
    inputs: &[I],
    stop: &AtomicBool,
    hash_cached: impl FnOnce(&[(PathBuf, FileStat)]) -> anyhow::Result<Vec<Hash>>,
) -> anyhow::Result<Vec<Vec<InputDigest>>> {
    // Prove or walk every input, then hash what neither the tree index nor
    // the stat cache can vouch for.
    // Many small inputs (a step each) are stat'ed in parallel too.
    let work_dir_fd = crate::stat_cache::DirFd::open(work_dir).ok();
    let mut walked: Vec<Vec<Walked>> = {
        use rayon::prelude::*;
        inputs
            .par_iter()
            .with_min_len(32)
            .map(|step_inputs| {
                step_inputs
                    .as_ref()
                    .iter()
                    .map(|i| {
                        anyhow::ensure!(!stop.load(Ordering::Relaxed), "hashing stopped");
                        walk(work_dir, work_dir_fd.as_ref(), i, tree_index)
                    })
                    .collect::<anyhow::Result<Vec<_>>>()
            })
            .collect::<anyhow::Result<_>>()?
    };
    let mut via_cache: Vec<(PathBuf, FileStat)> = Vec::new();
    let mut direct: Vec<PathBuf> = Vec::new();
    for step in &mut walked {
        for input in step {
            let in_tree = input.tree.is_some();
            for (_, f) in input.entries.iter_mut() {
                if let Found::File(p, st) = f {
                    let executable = st.mode & 0o111 != 0;
                    let p = std::mem::take(p);
                    *f = if in_tree {
                        direct.push(p);
                        Found::Queued(false, direct.len() - 1, executable)
                    } else {
                        via_cache.push((p, *st));
                        Found::Queued(true, via_cache.len() - 1, executable)
                    };
                }
            }
        }
    }
    let cached_hashes = hash_cached(&via_cache)?;
    let direct_hashes: Vec<Hash> = {
        use rayon::prelude::*;
        direct
            .par_iter()
            .map(|p| {
                anyhow::ensure!(!stop.load(Ordering::Relaxed), "hashing stopped");
                qflow_cache::hash_file(p)
            })
            .collect::<anyhow::Result<_>>()?
    };
    // Every list is made at its exact size: the run keeps them all to its end
    // (a step's list grown by pushing held four times the room it used).
    let mut out = Vec::with_capacity(inputs.len());
    for (step_inputs, step_walked) in inputs.iter().zip(walked) {
        let mut digests = Vec::with_capacity(step_inputs.as_ref().len());
        for (input, found) in step_inputs.as_ref().iter().zip(step_walked) {
            if let Some(digest) = found.proven {
                digests.push(InputDigest {
                    label: input.path.clone(),
                    digest,
                    entries: Vec::new(),
                    from_index: true,
                });
                continue;
            }
            // Not collected in place: that would keep the walk's larger list.
            let mut entries: Vec<(String, InputEntry)> = Vec::with_capacity(found.entries.len());
            entries.extend(found.entries.into_iter().map(|(rel, f)| {
                let e = match f {
                    Found::Queued(via, i, executable) => InputEntry::File {
                        executable,
                        hash: if via {
                            cached_hashes[i]
                        } else {
                            direct_hashes[i]
                        },
                    },
                    Found::Known(hash, executable) => InputEntry::File { executable, hash },
                    Found::File(..) => unreachable!("every file was queued"),
                    Found::Symlink(t) => InputEntry::Symlink { target: t },
                    Found::Dir => InputEntry::Dir,
                };
                (rel, e)
            }));
            let digest = digest_of(&entries);
            if let Some(TreeWalk {
                index: Some(index),
                root,
                stats,
                walked_at_ns,
            }) = found.tree.as_deref()
            {
                crate::tree_index::write(index, *root, &entries, stats, digest, *walked_at_ns)?;
            }
            digests.push(InputDigest {
                label: input.path.clone(),
                digest,
                entries,
                from_index: false,
            });
        }
        out.push(digests);
    }
    Ok(out)
}

fn walk(
    work_dir: &Path,
    work_dir_fd: Option<&crate::stat_cache::DirFd>,
    input: &Input,
    tree_index: Option<&Path>,
) -> anyhow::Result<Walked> {
    let mut entries = Vec::new();
    if crate::glob::is_glob(&input.path) {
        for rel in crate::glob::expand(work_dir, &input.path)? {
            let p = work_dir.join(&rel);
            let meta = std::fs::metadata(&p)
                .with_context(|| format!("cannot read input {}", p.display()))?;
            entries.push((
                rel.to_string_lossy().into_owned(),
                Found::File(p, FileStat::of(&meta)),
            ));
        }
        return Ok(Walked {
            entries,
            tree: None,
            proven: None,
        });
    }
    let root = crate::paths::resolve_in(work_dir, &input.path);
    // A file below the work dir: stat'ed relative to it (a short path walk).
    if let Some(fd) = work_dir_fd.filter(|_| Path::new(&input.path).is_relative())
        && let Ok(st) = fd.stat(Path::new(&input.path))
        && st.mode & libc::S_IFMT != libc::S_IFDIR
    {
        // A list of one, not the room of four a push makes: a batch of
        // thousands of single-file inputs is walked at once.
        entries.reserve_exact(1);
        entries.push((String::new(), Found::File(root, st)));
        return Ok(Walked {
            entries,
            tree: None,
            proven: None,
        });
    }
    // The input itself may be a symlink to a file or tree: follow it.
    let meta = std::fs::metadata(&root)
        .with_context(|| format!("input `{}` does not exist ({})", input.path, root.display()))?;
    if !meta.is_dir() {
        entries.reserve_exact(1);
        entries.push((String::new(), Found::File(root, FileStat::of(&meta))));
        return Ok(Walked {
            entries,
            tree: None,
            proven: None,
        });
    }
    let index = tree_index.map(|dir| crate::tree_index::index_path(dir, &root, &input.exclude));
    if let Some(index) = &index
        && let Some(digest) = crate::tree_index::check(index, &root)
    {
        return Ok(Walked {
            entries,
            tree: None,
            proven: Some(digest),
        });
    }
    let known = index
        .as_deref()
        .map(crate::tree_index::known_hashes)
        .unwrap_or_default();
    let walked_at_ns = crate::stat_cache::now_ns();
    let walk = crate::tree_walk::walk(&root, &input.exclude)?;
    let mut stats = Vec::with_capacity(walk.entries.len());
    for (rel, e) in walk.entries {
        let found = match e {
            WalkEntry::File(p, st) => {
                stats.push(st);
                match known.get(&rel) {
                    Some((was, hash)) if *was == st => Found::Known(*hash, st.mode & 0o111 != 0),
                    _ => Found::File(p, st),
                }
            }
            WalkEntry::Symlink(t, st) => {
                stats.push(st);
                Found::Symlink(t)
            }
            WalkEntry::Dir(st) => {
                stats.push(st);
                Found::Dir
            }
        };
        entries.push((rel, found));
    }
    Ok(Walked {
        entries,
        tree: Some(Box::new(TreeWalk {
            index,
            root: walk.root,
            stats,
            walked_at_ns,
        })),
        proven: None,
    })
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

/// The current listing in the same comparable form; for a digest the tree
/// index vouched for, the listing saved in `dir` when the tree was walked.
pub fn listing(dir: &Path, d: &InputDigest) -> Option<BTreeMap<String, String>> {
    if d.from_index {
        return load_listing(dir, &d.digest);
    }
    Some(
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
            .collect(),
    )
}
