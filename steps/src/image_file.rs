//! The convention by which image-producing steps hand an image to the next step.
//!
//! Every kind that produces a disk image (download, image, disk, customize,
//! debootstrap) writes exactly one output named `image.<ext>` (`image.qcow2`,
//! `image.raw`). A downstream step finds it with [`upstream_image`] and never
//! trusts the extension for the format: it asks `qemu-img info`.
//!
//! A step that derives a qcow2 overlay from an upstream image makes it with
//! [`crate::qemu_img::create_overlay`], which names the backing file relatively.

use std::path::{Path, PathBuf};

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
    image_in(&dir).with_context(|| format!("step `{step}` does not produce a disk image"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_of_a_step_is_its_one_image_output() {
        let root = std::env::temp_dir().join(format!("qflow-image-file-{}", std::process::id()));
        let base = root.join("trees/abc");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::write(base.join("image.qcow2"), "").unwrap();
        assert_eq!(image_in(&base).unwrap(), base.join("image.qcow2"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
