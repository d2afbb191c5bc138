//! What differs inside two disk images: the first file whose presence, type, mode,
//! link target or content differs, for `qflow verify` when an image's hash does.
//!
//! Both images are converted to raw (`qemu-img convert`), the ext2/3/4 filesystem
//! is found (at the start of the disk, or at the first MBR partition, where
//! `debootstrap` puts it) and dumped with `debugfs rdump`, and the two trees are
//! walked in sorted order. Only ext filesystems are read: they are what qflow's
//! image kinds make (`disk`, `debootstrap`).

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Context as _;

/// Name the first file that differs between two disk images with an ext2/3/4
/// filesystem (whole disk or first MBR partition), or say the files are equal.
pub fn first_differing_file(a: &Path, b: &Path, work: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(work)?;
    let mut trees = Vec::new();
    for (i, image) in [a, b].into_iter().enumerate() {
        let raw = work.join(format!("{i}.raw"));
        run_tool(
            std::process::Command::new("qemu-img")
                .args(["convert", "-O", "raw"])
                .arg(image)
                .arg(&raw),
        )?;
        let offset = ext_offset(&raw)?.ok_or_else(|| {
            anyhow::anyhow!("no ext2/3/4 filesystem found in `{}`", image.display())
        })?;
        let tree = work.join(format!("{i}.files"));
        std::fs::create_dir_all(&tree)?;
        let source = format!("{}?offset={offset}", raw.display());
        run_tool(
            std::process::Command::new("debugfs")
                .arg("-R")
                .arg(format!("rdump / {}", tree.display()))
                .arg(source),
        )?;
        let _ = std::fs::remove_file(&raw);
        trees.push(tree);
    }
    Ok(match first_difference(&trees[0], &trees[1])? {
        Some(d) => format!("first differing file: {d}"),
        None => "every file's type, mode and content are equal: the difference is in \
                 filesystem metadata (timestamps, layout, UUID)"
            .to_string(),
    })
}

fn run_tool(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The byte offset of an ext2/3/4 superblock's filesystem in a raw image:
/// 0, or the start of the first MBR partition.
fn ext_offset(raw: &Path) -> anyhow::Result<Option<u64>> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut f = std::fs::File::open(raw)?;
    let mut is_ext = |offset: u64| -> bool {
        let mut magic = [0u8; 2];
        f.seek(SeekFrom::Start(offset + 1024 + 56)).is_ok()
            && f.read_exact(&mut magic).is_ok()
            && magic == [0x53, 0xef]
    };
    if is_ext(0) {
        return Ok(Some(0));
    }
    let mut mbr = [0u8; 512];
    let mut f2 = std::fs::File::open(raw)?;
    if f2.read_exact(&mut mbr).is_ok() && mbr[510..512] == [0x55, 0xaa] {
        let lba = u32::from_le_bytes(mbr[454..458].try_into().unwrap()) as u64;
        if lba > 0 && is_ext(lba * 512) {
            return Ok(Some(lba * 512));
        }
    }
    Ok(None)
}

/// The first path (in sorted walk order) whose presence, type, mode, link target
/// or content differs between two trees.
fn first_difference(a: &Path, b: &Path) -> anyhow::Result<Option<String>> {
    use std::os::unix::fs::PermissionsExt as _;
    let list = |root: &Path| -> anyhow::Result<Vec<String>> {
        let mut v = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir)? {
                let e = e?;
                let p = e.path();
                v.push(p.strip_prefix(root)?.to_string_lossy().into_owned());
                if e.file_type()?.is_dir() {
                    stack.push(p);
                }
            }
        }
        v.sort();
        Ok(v)
    };
    let la = list(a)?;
    let lb = list(b)?;
    let all: BTreeSet<&String> = la.iter().chain(lb.iter()).collect();
    let sa: BTreeSet<&String> = la.iter().collect();
    let sb: BTreeSet<&String> = lb.iter().collect();
    for rel in all {
        let shown = format!("/{rel}");
        match (sa.contains(rel), sb.contains(rel)) {
            (true, false) => return Ok(Some(format!("{shown} (only in the recorded image)"))),
            (false, true) => return Ok(Some(format!("{shown} (only in the rebuilt image)"))),
            _ => {}
        }
        let (pa, pb) = (a.join(rel), b.join(rel));
        let (ma, mb) = (
            std::fs::symlink_metadata(&pa)?,
            std::fs::symlink_metadata(&pb)?,
        );
        if ma.file_type() != mb.file_type() {
            return Ok(Some(format!("{shown} (file type)")));
        }
        if ma.permissions().mode() & 0o7777 != mb.permissions().mode() & 0o7777 {
            return Ok(Some(format!(
                "{shown} (mode {:o} → {:o})",
                ma.permissions().mode() & 0o7777,
                mb.permissions().mode() & 0o7777
            )));
        }
        if ma.file_type().is_symlink() {
            if std::fs::read_link(&pa)? != std::fs::read_link(&pb)? {
                return Ok(Some(format!("{shown} (link target)")));
            }
        } else if ma.is_file()
            && (ma.len() != mb.len() || std::fs::read(&pa)? != std::fs::read(&pb)?)
        {
            return Ok(Some(format!("{shown} (content)")));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("qflow-image-diff-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn an_ext_superblock_is_found_at_the_start_or_at_the_first_mbr_partition() {
        let d = scratch("offset");
        let whole = d.join("whole.raw");
        let mut bytes = vec![0u8; 4096];
        bytes[1024 + 56..1024 + 58].copy_from_slice(&[0x53, 0xef]);
        std::fs::write(&whole, &bytes).unwrap();
        assert_eq!(ext_offset(&whole).unwrap(), Some(0));

        let parted = d.join("parted.raw");
        let mut bytes = vec![0u8; 2048 * 512 + 4096];
        bytes[510..512].copy_from_slice(&[0x55, 0xaa]);
        bytes[454..458].copy_from_slice(&2048u32.to_le_bytes());
        let sb = 2048 * 512 + 1024 + 56;
        bytes[sb..sb + 2].copy_from_slice(&[0x53, 0xef]);
        std::fs::write(&parted, &bytes).unwrap();
        assert_eq!(ext_offset(&parted).unwrap(), Some(2048 * 512));

        let none = d.join("none.raw");
        std::fs::write(&none, vec![0u8; 4096]).unwrap();
        assert_eq!(ext_offset(&none).unwrap(), None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_first_difference_of_two_trees_names_the_path_and_what_differs() {
        let d = scratch("trees");
        let (a, b) = (d.join("a"), d.join("b"));
        for t in [&a, &b] {
            std::fs::create_dir_all(t.join("etc")).unwrap();
            std::fs::write(t.join("etc/hostname"), "guest\n").unwrap();
        }
        assert_eq!(first_difference(&a, &b).unwrap(), None);
        std::fs::write(b.join("etc/hostname"), "other\n").unwrap();
        assert_eq!(
            first_difference(&a, &b).unwrap().as_deref(),
            Some("/etc/hostname (content)")
        );
        std::fs::write(b.join("extra"), "").unwrap();
        assert_eq!(
            first_difference(&a, &b).unwrap().as_deref(),
            Some("/etc/hostname (content)")
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
