//! Where a boot's image, kernel and initrd fields point: another step's output
//! (a bare step name) or a host path (anything with a `/`), and which file in a
//! step's output is the kernel or the initrd.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// An image/kernel field: another step's output, or a host path.
pub(super) enum Source<'a> {
    Step(&'a str),
    Path(&'a str),
}

pub(super) fn source(value: &str) -> Source<'_> {
    if value.contains('/') {
        Source::Path(value)
    } else {
        Source::Step(value)
    }
}

/// The kernel in a kernel step's output: `bzImage`, `arch/x86/boot/bzImage`, or its only file.
pub(super) fn kernel_in(dir: &Path) -> anyhow::Result<PathBuf> {
    for candidate in ["bzImage", "arch/x86/boot/bzImage", "vmlinuz"] {
        let p = dir.join(candidate);
        if p.is_file() {
            return Ok(p);
        }
    }
    only_file_in(dir).with_context(|| format!("{} holds no `bzImage`", dir.display()))
}

/// The initrd in a step's output: `initrd.img` (the debootstrap kind's), `initrd`, or its only file.
pub(super) fn initrd_in(dir: &Path) -> anyhow::Result<PathBuf> {
    for candidate in ["initrd.img", "initrd", "initramfs.img"] {
        let p = dir.join(candidate);
        if p.is_file() {
            return Ok(p);
        }
    }
    only_file_in(dir).with_context(|| format!("{} holds no `initrd.img`", dir.display()))
}

fn only_file_in(dir: &Path) -> anyhow::Result<PathBuf> {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    match files.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "{} holds {} files, expected one",
            dir.display(),
            files.len()
        ),
    }
}
