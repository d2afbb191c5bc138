//! Input stamps: the stat fields of everything a step's inputs cover, taken when
//! the step is handed to its executor and again when it ends.
//!
//! The recorder re-digests a step's inputs after it ran and refuses the result if
//! a digest changed. Content alone misses an edit that is undone before the step
//! ends (A, then B while the step reads it, then A again): the output was made
//! from B, and the digests before and after both say A. Any such edit changes the
//! file's modification and change times (and a replaced file its inode), so the
//! stamps differ. A stamp reads no content: one `lstat` per file and symlink
//! (through `tree_walk`'s descriptor-relative walk). Directories are left out:
//! tools create and remove scratch files beside their inputs (kbuild's
//! `merge_config.sh` did, in the source tree), which changes a directory's times
//! but no input; a file added and kept shows in the content digest.
//! Imports `glob`, `tree_walk`, `stat_cache` and `step`.

use std::path::Path;

use anyhow::Context as _;
use qflow_cache::Hash;

use crate::stat_cache::FileStat;
use crate::step::{Input, resolve_in};
use crate::tree_walk::WalkEntry;

/// Per input, in declaration order: blake3 over its paths and their stat fields.
pub fn stamp_inputs(work_dir: &Path, inputs: &[Input]) -> anyhow::Result<Vec<Hash>> {
    inputs.iter().map(|i| stamp_input(work_dir, i)).collect()
}

/// The stamp of one input: a file, a directory (its whole tree) or a glob.
fn stamp_input(work_dir: &Path, input: &Input) -> anyhow::Result<Hash> {
    let mut h = blake3::Hasher::new();
    h.update(b"qflow-input-stamp 1\0");
    if crate::glob::is_glob(&input.path) {
        for p in crate::glob::expand(work_dir, &input.path)? {
            add_path(&mut h, &p, &input.exclude)?;
        }
    } else {
        add_path(&mut h, &resolve_in(work_dir, &input.path), &input.exclude)?;
    }
    Ok(h.finalize().into())
}

fn add_path(h: &mut blake3::Hasher, path: &Path, exclude: &[String]) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("cannot stat the input `{}`", path.display()))?;
    if !meta.is_dir() {
        add(h, path.as_os_str().as_encoded_bytes(), &FileStat::of(&meta));
        return Ok(());
    }
    let walk = crate::tree_walk::walk(path, exclude)?;
    for (rel, entry) in &walk.entries {
        match entry {
            WalkEntry::File(_, st) | WalkEntry::Symlink(_, st) => add(h, rel.as_bytes(), st),
            WalkEntry::Dir(_) => {}
        }
    }
    Ok(())
}

fn add(h: &mut blake3::Hasher, name: &[u8], st: &FileStat) {
    h.update(&(name.len() as u64).to_le_bytes());
    h.update(name);
    let mut b = Vec::with_capacity(FileStat::ENCODED_LEN);
    st.put(&mut b);
    h.update(&b);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "qflow-input-stamp-{name}-{}",
            qflow_cache::Hash::of_bytes(format!("{:?}", std::time::Instant::now()).as_bytes())
                .short()
        ));
        std::fs::create_dir_all(d.join("src")).unwrap();
        d
    }

    #[test]
    fn an_edit_undone_changes_the_stamp_though_the_content_is_back() {
        let d = dir("undo");
        std::fs::write(d.join("input.txt"), "A").unwrap();
        std::fs::write(d.join("src/main.c"), "int main;").unwrap();
        let inputs = [
            Input::new("inputs", "input.txt"),
            Input::new("inputs", "src"),
        ];
        let before = stamp_inputs(&d, &inputs).unwrap();
        assert_eq!(
            before,
            stamp_inputs(&d, &inputs).unwrap(),
            "nothing changed"
        );

        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(d.join("input.txt"), "B").unwrap();
        std::fs::write(d.join("input.txt"), "A").unwrap();
        let after = stamp_inputs(&d, &inputs).unwrap();
        assert_ne!(before[0], after[0], "A -> B -> A is seen");
        assert_eq!(before[1], after[1]);

        // A scratch file a tool makes and removes beside the inputs is not an edit.
        std::fs::write(d.join("src/tmp.o"), "x").unwrap();
        std::fs::remove_file(d.join("src/tmp.o")).unwrap();
        assert_eq!(after[1], stamp_inputs(&d, &inputs).unwrap()[1]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(d.join("src/main.c"), "int main;").unwrap();
        assert_ne!(
            after[1],
            stamp_inputs(&d, &inputs).unwrap()[1],
            "a file in a tree rewritten with the same bytes"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
