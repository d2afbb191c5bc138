//! A boot's disk overlays: with writes kept, each run writes to qcow2 overlays in
//! its output whose backing files are the upstream images, named by a relative path
//! so they survive moving the cache.

use std::path::Path;

use anyhow::Context as _;
use qflow_engine::RunContext;

use super::Boot;
use super::command_line::{DISK_OPTIONS, relative_path};

impl Boot {
    /// The qcow2 overlays a run writes to when writes are kept: the system disk's is
    /// `image.qcow2`, so the step hands it on like any image-producing step; data
    /// disks' are named by their option (`hdb.qcow2`, ...).
    pub(super) fn overlay_names(&self) -> Vec<String> {
        DISK_OPTIONS
            .iter()
            .take(self.disk_count())
            .enumerate()
            .map(|(i, o)| {
                if i == 0 && self.system.is_some() {
                    crate::image_file::QCOW2_IMAGE.to_string()
                } else {
                    format!("{}.qcow2", o.trim_start_matches('-'))
                }
            })
            .collect()
    }

    /// qcow2 overlays in `dir` over `disks`, backing files named relatively.
    pub(super) fn overlays(
        &self,
        ctx: &mut RunContext,
        disks: &[String],
        dir: &Path,
    ) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        for (disk, name) in disks.iter().zip(self.overlay_names()) {
            let format = image_format(ctx, Path::new(disk))?;
            let backing = relative_path(dir, Path::new(disk));
            let overlay = dir.join(&name);
            let mut cmd = ctx.command("qemu-img");
            cmd.args(["create", "-q", "-f", "qcow2", "-F", &format, "-b"])
                .arg(&backing)
                .arg(&overlay);
            ctx.run(cmd)?;
            out.push(overlay.to_string_lossy().into_owned());
        }
        Ok(out)
    }
}

/// `qemu-img info` format of an image (never trust the extension).
fn image_format(ctx: &mut RunContext, image: &Path) -> anyhow::Result<String> {
    let mut cmd = ctx.command("qemu-img");
    cmd.args(["info", "--output=json", "-U"]).arg(image);
    let json: serde_json::Value =
        serde_json::from_str(&ctx.run_capture(cmd)?).context("bad `qemu-img info` output")?;
    Ok(json
        .get("format")
        .and_then(|f| f.as_str())
        .unwrap_or("raw")
        .to_string())
}
