//! Collecting files from a data disk after QEMU has ended: the `{ disk, path }`
//! entries of `collect`, read with debugfs from the disk's overlay (no mount, no root).

use anyhow::{Context as _, bail};
use qflow_engine::RunContext;

use super::command_line::QemuCommandLine;
use super::fields::Collect;
use super::guest_run::{RunPlan, collected_name};
use super::{Boot, machine};

impl Boot {
    /// After a run's QEMU has ended: copy the `{ disk, path }` entries of `collect`
    /// out of the data disks' overlays (converted to raw in a private scratch dir,
    /// read with debugfs: no mount, no root).
    pub(super) fn collect_from_disks(
        &self,
        ctx: &mut RunContext,
        plan: &RunPlan,
        line: &QemuCommandLine,
    ) -> anyhow::Result<()> {
        let offset = usize::from(self.system.is_some());
        for entry in &self.collect {
            let Collect::Disk(file) = entry else { continue };
            let index = offset
                + self
                    .disks
                    .iter()
                    .position(|d| d == &file.disk)
                    .expect("checked");
            let overlay = &line.disks[index];
            let scratch = machine::SocketDir::new()?;
            let raw = scratch.path().join("disk.raw");
            let mut cmd = ctx.command("qemu-img");
            cmd.args(["convert", "-O", "raw"]).arg(overlay).arg(&raw);
            ctx.run(cmd)?;
            // debugfs parses its own command line: dump to a plain name in the scratch
            // dir, then copy to the output (whose path may hold anything).
            let dumped = scratch.path().join("collected");
            let mut cmd = ctx.command("debugfs");
            cmd.current_dir(scratch.path());
            cmd.arg("-R")
                .arg(format!("dump -p {} collected", file.path))
                .arg("disk.raw");
            ctx.run(cmd)?;
            // debugfs exits 0 even when the file is missing; its complaint is in the log.
            if !dumped.is_file() {
                bail!(
                    "cannot collect `{}` from disk `{}`: debugfs found no such file (see the step log)",
                    file.path,
                    file.disk
                );
            }
            let target = plan.dir.join(collected_name(&file.path));
            std::fs::copy(&dumped, &target)
                .with_context(|| format!("cannot write {}", target.display()))?;
            ctx.log(&format!(
                "qflow: collected {} from disk `{}`",
                file.path, file.disk
            ));
        }
        Ok(())
    }
}
