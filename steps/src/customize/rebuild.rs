//! A customized image rebuilt from its file tree, so two builds give the same bytes.
//!
//! virt-customize cannot be made deterministic in place: its appliance's kernel
//! stamps its own clock into inode times and the superblock, writes a journal, and
//! allocates blocks as its allocator sees fit; the tools it runs leave logs and caches
//! and it plants a random seed for the guest. So qflow customizes a scratch overlay,
//! exports the result's file tree (`guestfish tar-out`, numeric owners and extended
//! attributes kept), sets root's password with a derived salt
//! ([`super::root_password`]), normalizes the tree ([`crate::root_tree`], plus
//! the random seed removed), and writes it back with `mke2fs -d` into a copy of the
//! upstream disk, keeping its partition table, file system UUID, label, hash seed
//! and block count. The output is then made an overlay of the upstream image again:
//! an empty qcow2 backed by the rebuilt raw disk is rebased (`qemu-img rebase`, safe
//! mode) onto the upstream image, which writes exactly the clusters that differ.
//! Since inode numbers and blocks follow the sorted tree, most of the file system
//! moves when a package is added: the overlay is about as large as the image.
//!
//! It applies when the upstream disk has one partition holding ext4 with 4 KiB
//! blocks (what `debootstrap` builds) and qflow runs as root (extracting the tree
//! keeps its owners); otherwise the step customizes in place and says why.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use qflow_engine::RunContext;

use crate::root_tree;

/// Files a customized tree holds that are random per run, removed before the rebuild.
const RANDOM_FILES: [&str; 3] = [
    "var/lib/systemd/random-seed",
    "var/lib/urandom/random-seed",
    "var/lib/random-seed",
];

/// The file system of a disk that can be rebuilt, read from its superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Byte offset of partition 1.
    pub offset: u64,
    pub blocks: u64,
    pub uuid: String,
    pub label: String,
    pub hash_seed: String,
    /// The file system's creation time: the upstream image's `SOURCE_DATE_EPOCH`.
    pub created: u64,
}

/// Scratch files of one rebuild in the step's state directory, removed on drop.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(state_dir: &Path) -> anyhow::Result<Scratch> {
        let dir = state_dir.join("rebuild");
        remove_dir(&dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Scratch { dir })
    }

    pub fn raw(&self) -> PathBuf {
        self.dir.join("disk.raw")
    }

    pub fn overlay(&self) -> PathBuf {
        self.dir.join("work.qcow2")
    }

    pub fn tar(&self) -> PathBuf {
        self.dir.join("tree.tar")
    }

    pub fn tree(&self) -> PathBuf {
        self.dir.join("tree")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        remove_dir(&self.dir);
    }
}

fn remove_dir(dir: &Path) {
    if dir.exists() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Copy `upstream` into `raw` and read its layout; `Err` says why it cannot be rebuilt.
pub fn probe(ctx: &mut RunContext, upstream: &Path, raw: &Path) -> anyhow::Result<Layout> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("qflow is not root, so the customized tree cannot be extracted with its owners");
    }
    let mut cmd = ctx.command("qemu-img");
    cmd.args(["convert", "-O", "raw"]).arg(upstream).arg(raw);
    ctx.run(cmd)?;
    let mut cmd = ctx.command("sfdisk");
    cmd.arg("--json").arg(raw);
    let table = ctx
        .run_capture(cmd)
        .map_err(|_| anyhow::anyhow!("the disk has no partition table"))?;
    let table: serde_json::Value =
        serde_json::from_str(&table).context("cannot read sfdisk's JSON")?;
    let parts = table["partitiontable"]["partitions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let sector = table["partitiontable"]["sectorsize"]
        .as_u64()
        .unwrap_or(512);
    let [part] = parts.as_slice() else {
        bail!("the disk has {} partitions, not one", parts.len());
    };
    let offset = part["start"]
        .as_u64()
        .context("a partition without start")?
        * sector;
    let mut cmd = ctx.command("dumpe2fs");
    cmd.env("TZ", "UTC");
    cmd.arg("-h")
        .arg(format!("{}?offset={offset}", raw.display()));
    let superblock = ctx
        .run_capture(cmd)
        .map_err(|_| anyhow::anyhow!("partition 1 holds no ext file system"))?;
    layout_of(&superblock, offset)
}

/// The layout from `dumpe2fs -h` output, if it is ext4 with 4 KiB blocks.
fn layout_of(superblock: &str, offset: u64) -> anyhow::Result<Layout> {
    let field = |name: &str| {
        superblock
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let features = field("Filesystem features:").unwrap_or_default();
    if !features.split_whitespace().any(|f| f == "extent") {
        bail!("partition 1 is not ext4");
    }
    if field("Block size:").as_deref() != Some("4096") {
        bail!("partition 1 does not have 4 KiB blocks");
    }
    let created = field("Filesystem created:").context("no creation time")?;
    Ok(Layout {
        offset,
        blocks: field("Block count:")
            .and_then(|b| b.parse().ok())
            .context("no block count")?,
        uuid: field("Filesystem UUID:").context("no UUID")?,
        label: field("Filesystem volume name:")
            .filter(|l| l != "<none>")
            .unwrap_or_default(),
        hash_seed: field("Directory Hash Seed:").context("no hash seed")?,
        created: parse_ctime(&created).context("an unreadable creation time")?,
    })
}

/// `Mon Jan  1 00:00:00 2024` (dumpe2fs's time, in UTC under `TZ=UTC`) as seconds.
fn parse_ctime(text: &str) -> Option<u64> {
    let w: Vec<&str> = text.split_whitespace().collect();
    let [_, month, day, hms, year] = w.as_slice() else {
        return None;
    };
    crate::debootstrap::parse_release_date(&format!("{day} {month} {year} {hms} UTC"))
}

/// Export the customized file system of `overlay` into `scratch.tree()`.
pub fn export_tree(
    ctx: &mut RunContext,
    overlay: &Path,
    scratch: &Scratch,
    libguestfs_env: &dyn Fn(&mut std::process::Command),
) -> anyhow::Result<()> {
    let mut cmd = ctx.command("guestfish");
    libguestfs_env(&mut cmd);
    cmd.args(["--ro", "--format=qcow2", "-a"]).arg(overlay);
    cmd.args(["-m", "/dev/sda1", "tar-out", "/"]);
    cmd.arg(scratch.tar());
    cmd.args(["numericowner:true", "xattrs:true"]);
    ctx.run(cmd)?;
    let tree = scratch.tree();
    std::fs::create_dir_all(&tree).with_context(|| format!("cannot create {}", tree.display()))?;
    let mut cmd = ctx.command("tar");
    cmd.args([
        "--numeric-owner",
        "--xattrs",
        "--xattrs-include=*",
        "--same-permissions",
        "--same-owner",
        "-xf",
    ]);
    cmd.arg(scratch.tar()).arg("-C").arg(&tree);
    ctx.run(cmd)?;
    let _ = std::fs::remove_file(scratch.tar());
    Ok(())
}

/// Normalize the exported tree and write it over partition 1 of `scratch.raw()`.
pub fn write_back(ctx: &mut RunContext, scratch: &Scratch, layout: &Layout) -> anyhow::Result<()> {
    let tree = scratch.tree();
    for rel in RANDOM_FILES {
        let p = tree.join(rel);
        if p.symlink_metadata().is_ok_and(|m| m.is_file()) {
            std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
        }
    }
    root_tree::normalize(&tree, layout.created)?;
    let fs = root_tree::Ext4 {
        offset: layout.offset,
        blocks: layout.blocks,
        uuid: layout.uuid.clone(),
        hash_seed: layout.hash_seed.clone(),
        label: layout.label.clone(),
        epoch: layout.created,
    };
    root_tree::write_ext4(ctx, &tree, &scratch.raw(), &fs)
}

/// Make `out` (in the step's output directory) an overlay of the upstream image
/// `backing` (relative to `out`'s directory) holding what differs in `raw`.
pub fn overlay_onto_upstream(
    ctx: &mut RunContext,
    raw: &Path,
    out: &Path,
    backing: &Path,
    backing_format: &str,
) -> anyhow::Result<()> {
    let mut cmd = ctx.command("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(raw)
        .arg(out);
    ctx.run(cmd)?;
    // Safe mode: every cluster the rebuilt disk and the upstream image disagree on is
    // written into `out`, in offset order; the rest stays the upstream's.
    let mut cmd = ctx.command("qemu-img");
    cmd.args(["rebase", "-q", "-f", "qcow2", "-F", backing_format, "-b"])
        .arg(backing)
        .arg(out);
    if let Some(dir) = out.parent() {
        cmd.current_dir(dir);
    }
    ctx.run(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ext4_superblock_gives_the_layout() {
        let text = "Filesystem volume name:   root\nFilesystem UUID:          0a1b\n\
                    Filesystem features:      has_journal ext_attr resize_inode dir_index filetype extent 64bit\n\
                    Block count:              261888\nBlock size:               4096\n\
                    Filesystem created:       Sat Jul 11 10:16:37 2026\nDirectory Hash Seed:      0a1b\n";
        let l = layout_of(text, 1 << 20).unwrap();
        assert_eq!(l.blocks, 261_888);
        assert_eq!(l.label, "root");
        assert_eq!(l.created, 1_783_764_997);
        let ext2 = text.replace(" extent", "");
        assert!(layout_of(&ext2, 0).is_err());
    }
}
