//! One entry of a declared input (a file with its content hash, a symlink, a
//! directory) and the digest of a listing of them: the form shared by the
//! input digests (`inputs.rs`) and the tree index that proves a tree
//! unchanged (`tree_index.rs`). Imports nothing of the engine.

use qflow_cache::Hash;

/// One entry of an input, relative to the input's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputEntry {
    /// A regular file.
    File {
        /// Whether any executable bit is set.
        executable: bool,
        /// The blake3 of its content.
        hash: Hash,
    },
    /// A symbolic link (not followed).
    Symlink {
        /// Where it points.
        target: String,
    },
    /// A directory.
    Dir,
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
