//! The machine a boot's fields describe: its QEMU command line with images and
//! kernel given as plan placeholders or resolved paths, rebuilt from a checkpoint
//! for `from_checkpoint`, and the checkpoint record a `checkpoint: true` boot saves.

use std::path::{Path, PathBuf};

use qflow_engine::RunContext;
use qflow_engine::paths::relative_to;

use super::checkpoint::{CheckpointRecord, MEMORY_SNAPSHOT};
use super::command_line::{AccelName, PluginArg, QemuCommandLine};
use super::fields::{AccelChoice, PluginArgs};
use super::source::{Source, initrd_in, kernel_in, source};
use super::{Boot, DEFAULT_APPEND, accel, minimal_init};

/// A run's machine: its command line, the memory snapshot it restores (from a
/// checkpoint), and the checkpoint record it saves (`checkpoint: true`).
pub(super) struct MachineSpec {
    pub line: QemuCommandLine,
    pub snapshot_file: Option<PathBuf>,
    pub record: Option<CheckpointRecord>,
}

impl Boot {
    pub(super) fn needs_tcg(&self) -> Option<&'static str> {
        if self.icount.is_some() {
            Some("icount")
        } else if !self.plugins.is_empty() {
            Some("plugins")
        } else {
            None
        }
    }

    /// Warnings for plugin arguments QEMU will not hand over as written.
    pub(super) fn plugin_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, p) in self.plugins.iter().enumerate() {
            for v in p.args.bare_values() {
                out.push(format!(
                    "warning: `plugins[{i}].args`: the plugin receives `{v}` as `{v}=on` \
                     (QEMU 7.2 reads `arg={v}` as the option `{v}`); \
                     write `args: {{ NAME: {v} }}` to pass `NAME={v}`"
                ));
            }
        }
        out
    }

    pub(super) fn plugin_args(&self) -> Vec<PluginArg> {
        self.plugins
            .iter()
            .map(|p| match &p.args {
                PluginArgs::List(l) => PluginArg {
                    path: p.path.clone(),
                    args: l.iter().map(|a| a.to_string()).collect(),
                    named: Vec::new(),
                },
                PluginArgs::Named(m) => PluginArg {
                    path: p.path.clone(),
                    args: Vec::new(),
                    named: m.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
                },
            })
            .collect()
    }

    /// The command line with images and kernel given by `resolve` (paths or placeholders).
    pub(super) fn command_line(
        &self,
        resolve: &mut dyn FnMut(&str, &str) -> anyhow::Result<String>,
    ) -> anyhow::Result<QemuCommandLine> {
        let mut disks = Vec::new();
        if let Some(system) = &self.system {
            disks.push(resolve("system", system)?);
        }
        for (i, d) in self.disks.iter().enumerate() {
            disks.push(resolve(&format!("disks[{i}]"), d)?);
        }
        let kernel = self
            .kernel
            .as_ref()
            .map(|k| resolve("kernel", k))
            .transpose()?;
        // With `init: minimal` the initrd is qflow's initramfs in the step's output
        // (holding the user's `initrd` first), written by `machine`.
        let initrd = if self.minimal_init() {
            Some(minimal_init::INITRAMFS.to_string())
        } else {
            self.initrd
                .as_ref()
                .map(|k| resolve("initrd", k))
                .transpose()?
        };
        let mut append = match (&self.append, &kernel) {
            (Some(a), _) => Some(a.clone()),
            (None, Some(_)) => Some(DEFAULT_APPEND.to_string()),
            (None, None) => None,
        };
        if let Some(a) = append.as_mut().filter(|_| self.minimal_init()) {
            a.push(' ');
            a.push_str(&minimal_init::append_args());
        }
        let accel = match self.accel {
            Some(AccelChoice::Kvm) => Some(AccelName::Kvm),
            Some(AccelChoice::Tcg) => Some(AccelName::Tcg),
            _ => None,
        };
        Ok(QemuCommandLine {
            smp: self.smp.unwrap_or(1),
            memory: self.memory(),
            disks,
            kernel,
            initrd,
            append,
            icount: self.icount,
            snapshot: !self.writes_kept(),
            plugins: self.plugin_args(),
            accel,
            cpu: self.cpu.clone(),
            control: None,
            incoming: None,
            extra_args: self.extra_args.clone(),
        })
    }

    /// The machine: rebuilt from a checkpoint, or from this step's fields.
    pub(super) fn machine(
        &self,
        ctx: &mut RunContext,
        out_dir: &Path,
    ) -> anyhow::Result<MachineSpec> {
        Ok(if let Some(cp) = &self.from_checkpoint {
            let dir = ctx.upstream(cp)?;
            let record = CheckpointRecord::load(&dir)?;
            let mut line = record.command_line(&dir)?;
            line.plugins = self.plugin_args();
            line.extra_args.extend(self.extra_args.iter().cloned());
            ctx.log(&format!(
                "qflow: restoring checkpoint `{cp}` (accel {} as saved)",
                record.accel
            ));
            MachineSpec {
                line,
                snapshot_file: Some(dir.join(MEMORY_SNAPSHOT)),
                record: None,
            }
        } else {
            let mut resolve = |field: &str, v: &str| -> anyhow::Result<String> {
                let path = match source(v) {
                    Source::Path(p) => ctx.resolve(p),
                    Source::Step(s) if field == "kernel" => kernel_in(&ctx.upstream(s)?)?,
                    Source::Step(s) if field == "initrd" => initrd_in(&ctx.upstream(s)?)?,
                    Source::Step(s) => crate::image_file::upstream_image(ctx, s)?,
                };
                Ok(path.to_string_lossy().into_owned())
            };
            let mut line = self.command_line(&mut resolve)?;
            if self.minimal_init() {
                let user = self
                    .initrd
                    .as_ref()
                    .map(|i| resolve("initrd", i))
                    .transpose()?;
                let initramfs = self.write_initramfs(out_dir, user.as_deref().map(Path::new))?;
                ctx.log("qflow: init minimal: qflow's initramfs boots the system disk into a root shell");
                line.initrd = Some(initramfs.to_string_lossy().into_owned());
            }
            if line.accel.is_none() {
                let (accel, why) = accel::choose(self.needs_tcg());
                ctx.log(&format!("qflow: accel auto -> {why}"));
                ctx.progress(&format!("accelerator: {why}"));
                line.accel = Some(accel);
            }
            let accel = line.accel.expect("accel chosen");
            ctx.note("accel", accel.as_str());
            let record = self.checkpoint.then(|| CheckpointRecord {
                smp: line.smp,
                memory: line.memory.clone(),
                disks: self.overlay_names(),
                kernel: line.kernel.as_ref().map(|k| {
                    relative_to(out_dir, Path::new(k))
                        .to_string_lossy()
                        .into_owned()
                }),
                initrd: line.initrd.as_ref().map(|k| {
                    relative_to(out_dir, Path::new(k))
                        .to_string_lossy()
                        .into_owned()
                }),
                append: line.append.clone(),
                icount: line.icount,
                accel: accel.as_str().to_string(),
                cpu: line.cpu.clone(),
                extra_args: self.extra_args.clone(),
            });
            MachineSpec {
                line,
                snapshot_file: None,
                record,
            }
        })
    }
}
