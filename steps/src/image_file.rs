//! The convention by which image-producing steps hand an image to the next step.
//!
//! Every kind that produces a disk image (download, image, disk, customize,
//! debootstrap) writes exactly one output named `image.<ext>` (`image.qcow2`,
//! `image.raw`). A downstream step finds it with [`upstream_image`] and never
//! trusts the extension for the format: it asks `qemu-img info`.
//!
//! A step that derives a qcow2 overlay from an upstream image names its backing
//! file with [`backing_reference`]: a path relative to the overlay's directory
//! (`../<upstream tree>/image.qcow2`), which resolves while the step runs in
//! `<cache>/trees/.tmp-XXX/`, after the rename to `<cache>/trees/<hash>/`, and
//! after the whole cache directory moves.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context as _, bail};
use qflow_engine::RunContext;

/// The output name of an image-producing step whose image is qcow2.
pub const QCOW2_IMAGE: &str = "image.qcow2";

/// The image in `dir`, an image-producing step's output directory.
pub fn image_in(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("image.") && !name.ends_with(".json") {
            found.push(entry.path());
        }
    }
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("{} holds no image (an `image.*` output)", dir.display()),
        _ => bail!("{} holds several images: {:?}", dir.display(), found),
    }
}

/// The image produced by upstream step `step`.
pub fn upstream_image(ctx: &RunContext, step: &str) -> anyhow::Result<PathBuf> {
    let dir = ctx.upstream(step)?;
    image_in(dir).with_context(|| format!("step `{step}` does not produce a disk image"))
}

/// The backing-file reference for an overlay created in `out_dir` over `image`:
/// `image` relative to `out_dir` (both must exist), for `qemu-img create -b REF -F FMT`.
///
/// ```ignore
/// let base = upstream_image(ctx, "base")?;
/// let reference = backing_reference(ctx.out_dir(), &base)?; // ../<hash>/image.qcow2
/// ```
pub fn backing_reference(out_dir: &Path, image: &Path) -> anyhow::Result<PathBuf> {
    let dir = out_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", out_dir.display()))?;
    let target = image
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", image.display()))?;
    let d: Vec<Component> = dir.components().collect();
    let t: Vec<Component> = target.components().collect();
    let common = d.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..d.len() {
        rel.push("..");
    }
    for c in &t[common..] {
        rel.push(c.as_os_str());
    }
    Ok(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sibling_tree_is_reached_through_its_parent() {
        let root = std::env::temp_dir().join(format!("qflow-image-file-{}", std::process::id()));
        let base = root.join("trees/abc");
        let out = root.join("trees/.tmp-1");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(base.join("image.qcow2"), "").unwrap();
        let reference = backing_reference(&out, &base.join("image.qcow2")).unwrap();
        assert_eq!(reference, Path::new("../abc/image.qcow2"));
        assert_eq!(image_in(&base).unwrap(), base.join("image.qcow2"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
