//! A checkpoint: a booted, ready guest saved as a cached artifact.
//!
//! A boot step with `checkpoint: true` runs its machine on qcow2 overlays kept in
//! its output (so the disk state matches the memory state), and at the end saves the
//! memory and device state by migration to `memory.snapshot` next to
//! `checkpoint.json`, which records everything a restore's command line must repeat
//! (QEMU refuses a stream from a different machine). A boot with
//! `from_checkpoint: STEP` rebuilds that command line, adds `-snapshot` so that any
//! number of runs share the overlays copy-on-write (the recipe's point about write
//! locks), and feeds the stream to `-incoming`. Paths are stored relative to the
//! checkpoint's own directory, so they survive moving the cache.

use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::command_line::{AccelName, QemuCommandLine};

/// The memory and device state, a QEMU migration stream.
pub const MEMORY_SNAPSHOT: &str = "memory.snapshot";
/// The machine a restore must rebuild.
pub const RECORD: &str = "checkpoint.json";

/// What a restore needs to repeat, paths relative to the checkpoint directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub smp: u32,
    pub memory: String,
    pub disks: Vec<String>,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub append: Option<String>,
    pub icount: Option<u32>,
    pub accel: String,
    /// `-cpu`: a restore runs the CPU model the guest was saved on.
    #[serde(default)]
    pub cpu: Option<String>,
    pub extra_args: Vec<String>,
}

impl CheckpointRecord {
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn load(dir: &Path) -> anyhow::Result<CheckpointRecord> {
        let path = dir.join(RECORD);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{} is not a checkpoint: no {RECORD} (set `checkpoint: true` on it)",
                dir.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("cannot read {}", path.display()))
    }

    /// The command line of a restore from the checkpoint in `dir`.
    pub fn command_line(&self, dir: &Path) -> anyhow::Result<QemuCommandLine> {
        let abs = |p: &String| dir.join(p).to_string_lossy().into_owned();
        let accel = AccelName::parse(&self.accel).with_context(|| {
            format!(
                "{} names an unknown accelerator `{}`",
                dir.join(RECORD).display(),
                self.accel
            )
        })?;
        Ok(QemuCommandLine {
            smp: self.smp,
            memory: self.memory.clone(),
            disks: self.disks.iter().map(abs).collect(),
            kernel: self.kernel.as_ref().map(abs),
            initrd: self.initrd.as_ref().map(abs),
            append: self.append.clone(),
            icount: self.icount,
            snapshot: true,
            plugins: Vec::new(),
            accel: Some(accel),
            cpu: self.cpu.clone(),
            control: None,
            incoming: Some(super::command_line::Incoming::Stdin),
            extra_args: self.extra_args.clone(),
        })
    }
}
