//! A boot's disk overlays: with writes kept, each run writes to qcow2 overlays in
//! its output whose backing files are the upstream images, named by a relative path
//! so they survive moving the cache.

use std::path::Path;

use qflow_engine::RunContext;

use super::Boot;
use super::command_line::DISK_OPTIONS;
use crate::qemu_img;

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
            let overlay = qemu_img::create_overlay(ctx, dir, &name, Path::new(disk))?;
            out.push(overlay.to_string_lossy().into_owned());
        }
        Ok(out)
    }
}
