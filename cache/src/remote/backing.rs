//! Which other trees a tree's disk images need to open: a qcow2 file names its backing
//! file in its header, and qflow's steps write it as a path into a sibling tree of the
//! cache (`../<tree hash>/image.qcow2`). A remote hit brought down to be used needs those
//! trees too, and only those: the other trees its record retains (every upstream output,
//! kept alive for `gc`) may stay on the server.
//!
//! Only the header is read (at most a few KiB per file); a file that is not qcow2, or
//! whose backing name names no tree, needs nothing.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

use crate::{EntryKind, Hash, Manifest};

/// The qcow2 magic, `QFI\xfb`.
const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
/// Longest backing file name qemu accepts (1023 bytes).
const MAX_BACKING_NAME: u32 = 1023;

/// The trees among `candidates` that the qcow2 images of the tree at `dir` (listed by
/// `manifest`) name as backing files.
pub fn backing_trees(dir: &Path, manifest: &Manifest, candidates: &BTreeSet<Hash>) -> Vec<Hash> {
    let mut found = BTreeSet::new();
    for e in &manifest.entries {
        if !matches!(e.kind, EntryKind::File { size, .. } if size >= 72) {
            continue;
        }
        let Some(name) = backing_name(&dir.join(&e.path)) else {
            continue;
        };
        found.extend(
            Path::new(&name)
                .components()
                .filter_map(|c| c.as_os_str().to_str()?.parse::<Hash>().ok())
                .filter(|h| candidates.contains(h)),
        );
    }
    found.into_iter().collect()
}

/// The backing file name in the header of the qcow2 image at `path`, if it is one and
/// has one.
pub fn backing_name(path: &Path) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut header = [0u8; 20];
    file.read_exact(&mut header).ok()?;
    if header[..4] != QCOW2_MAGIC {
        return None;
    }
    let offset = u64::from_be_bytes(header[8..16].try_into().ok()?);
    let size = u32::from_be_bytes(header[16..20].try_into().ok()?);
    if offset == 0 || size == 0 || size > MAX_BACKING_NAME {
        return None;
    }
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(offset)).ok()?;
    let mut name = vec![0u8; size as usize];
    file.read_exact(&mut name).ok()?;
    String::from_utf8(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A qcow2 header as `qemu-img create -b NAME` writes it: the name right after the
    /// header, its offset and length in the header.
    fn qcow2_with_backing(name: &str) -> Vec<u8> {
        let mut h = vec![0u8; 104];
        h[..4].copy_from_slice(&QCOW2_MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[8..16].copy_from_slice(&104u64.to_be_bytes());
        h[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        h.extend_from_slice(name.as_bytes());
        h.resize(4096, 0);
        h
    }

    #[test]
    fn an_overlay_needs_the_tree_its_backing_file_names_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("qflow-backing-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let base = Hash::of_bytes(b"base tree");
        let kernel = Hash::of_bytes(b"kernel tree");
        let image = qcow2_with_backing(&format!("../{}/image.qcow2", base.to_hex()));
        std::fs::write(dir.join("image.qcow2"), &image).unwrap();
        std::fs::write(dir.join("notes.txt"), vec![b'x'; 200]).unwrap();
        let file = |path: &str, size: u64| crate::Entry {
            path: path.to_string(),
            kind: EntryKind::File {
                hash: Hash::of_bytes(path.as_bytes()),
                size,
                executable: false,
            },
        };
        let manifest = Manifest {
            entries: vec![
                file("image.qcow2", image.len() as u64),
                file("notes.txt", 200),
            ],
            hash: Hash::of_bytes(b"a tree"),
        };
        let candidates: BTreeSet<Hash> = [base, kernel].into_iter().collect();
        assert_eq!(backing_trees(&dir, &manifest, &candidates), [base]);
        // A standalone image (no backing file) and a plain file need nothing.
        std::fs::write(dir.join("image.qcow2"), qcow2_with_backing("")).unwrap();
        assert!(backing_trees(&dir, &manifest, &candidates).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
