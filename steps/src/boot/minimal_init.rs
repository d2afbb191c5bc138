//! `init: minimal`: boot the kernel straight into a root shell on the system disk,
//! skipping the distribution's init (systemd), for the edit-compile-boot loop.
//!
//! Under TCG a Debian guest spends most of its boot in systemd before the workload
//! runs; virtme-ng's answer, and this one, is to give the kernel an init of our own.
//! qflow writes a small initramfs into the step's output (`initramfs.cpio`, built
//! here byte for byte: no `cpio`, no shell, nothing from the workflow's values in
//! it): the host's static busybox and [`SCRIPT`] (`minimal_init.sh`), which mounts
//! /proc, /sys and /dev, mounts the `root=` disk, and hands the serial console to
//! root's login shell there. The kernel runs it through `rdinit=/qflow/init`;
//! `init=/qflow/init` too, so that a kernel which cannot unpack an initramfs stops
//! at once ("Requested init /qflow/init failed") instead of booting the system's
//! own init. From the shell on, a run is the same as with a login: the same typed
//! commands, `collect`, metrics, matrix and checkpoint.
//!
//! An `initrd` given with `init: minimal` is placed before qflow's archive in the
//! same file (the kernel unpacks concatenated archives in order): a distribution
//! kernel's disk and ext4 modules under `/lib/modules/RELEASE/` are loaded from it.
//!
//! The mode enters the step's key as a field; the initramfs's content enters it as
//! the blake3 of the script and the archive's layout ([`key_material`]) plus
//! busybox's identity as a tool.
//!
//! When the guest cannot get as far as the shell, the script prints one
//! `qflow-init: error:` line naming the kernel option it lacks and exits (the
//! kernel panics); [`explain`] makes that line the headline of the step's error.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use qflow_engine::{FieldError, Tool};
use schemars::JsonSchema;
use serde::Deserialize;

use super::Boot;

/// The init script, run by the kernel as `/qflow/init`.
pub const SCRIPT: &str = include_str!("minimal_init.sh");

/// The initramfs qflow writes into the step's output (and a checkpoint restores with).
pub const INITRAMFS: &str = "initramfs.cpio";

/// Where the kernel finds qflow's init, in the initramfs.
const INIT_PATH: &str = "/qflow/init";

/// What the kernel command line gets appended.
pub fn append_args() -> String {
    format!("rdinit={INIT_PATH} init={INIT_PATH}")
}

/// Which init the guest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InitChoice {
    /// The system disk's own init (systemd on Debian), with its getty and `login`.
    #[default]
    System,
    /// qflow's initramfs: mount the system disk as root and run the commands in a
    /// root shell on the console, without the system's init: seconds instead of a
    /// systemd boot under TCG. The kernel needs its disk driver, the root's file
    /// system, devtmpfs, initramfs and script support built in (or as modules in
    /// `initrd`), and no `login` is typed.
    Minimal,
}

/// busybox: its static build runs in the initramfs, where there is no libc.
pub fn busybox() -> Tool {
    Tool::new("busybox", &["--help"], "busybox-static")
}

/// The key material of qflow's initramfs: what it holds apart from busybox
/// (whose identity enters the key as a tool).
pub fn key_material() -> (String, String) {
    let mut h = blake3::Hasher::new();
    h.update(b"layout: qflow/busybox qflow/init dev/console proc sys newroot\0");
    h.update(SCRIPT.as_bytes());
    (
        "init.initramfs".to_string(),
        h.finalize().to_hex().to_string(),
    )
}

impl Boot {
    pub(super) fn minimal_init(&self) -> bool {
        self.init == Some(InitChoice::Minimal)
    }

    /// What `init: minimal` cannot be combined with.
    pub(super) fn check_init(&self) -> Result<(), FieldError> {
        if !self.minimal_init() {
            return Ok(());
        }
        let refuse = |field: &str, message: &str| Err(FieldError::new(field, message));
        if let Some(cp) = &self.from_checkpoint {
            return refuse(
                "init",
                &format!(
                    "`init` comes from the checkpoint `{cp}` (the restored machine must be the saved one); remove it here"
                ),
            );
        }
        if self.kernel.is_none() {
            return refuse(
                "kernel",
                "`init: minimal` boots a `kernel` with qflow's initramfs: give `kernel`",
            );
        }
        if self.system.is_none() {
            return refuse(
                "system",
                "`init: minimal` mounts the `system` disk as the root file system: give `system`",
            );
        }
        if self.login.is_some() {
            return refuse(
                "login",
                "`init: minimal` starts a root shell on the console without a login prompt; remove `login`",
            );
        }
        if let Some(append) = &self.append
            && let Some(word) = append
                .split_whitespace()
                .find(|w| w.starts_with("init=") || w.starts_with("rdinit="))
        {
            return refuse(
                "append",
                &format!(
                    "`init: minimal` sets the kernel's init itself; remove `{word}` from `append` (or use `init: system`)"
                ),
            );
        }
        Ok(())
    }

    /// Write qflow's initramfs (after the user's `initrd`, if any) into `out_dir`.
    pub(super) fn write_initramfs(
        &self,
        out_dir: &Path,
        user_initrd: Option<&Path>,
    ) -> anyhow::Result<PathBuf> {
        let tool = busybox();
        let Some(bin) = qflow_engine::tool_identity::which(&tool.program) else {
            bail!(
                "`init: minimal` needs busybox on the host: install the Debian package `busybox-static` (apt-get install busybox-static)"
            );
        };
        let busybox =
            std::fs::read(&bin).with_context(|| format!("cannot read {}", bin.display()))?;
        if !is_static_elf(&busybox) {
            bail!(
                "{} is not a static program, and the initramfs has no libc: install the Debian package `busybox-static` (apt-get install busybox-static)",
                bin.display()
            );
        }
        let mut bytes = Vec::new();
        if let Some(initrd) = user_initrd {
            bytes = std::fs::read(initrd)
                .with_context(|| format!("cannot read the initrd {}", initrd.display()))?;
            // Each archive starts on a 4-byte boundary; the kernel skips the zeros.
            bytes.resize(bytes.len().next_multiple_of(4), 0);
        }
        bytes.extend(archive(&busybox));
        let target = out_dir.join(INITRAMFS);
        std::fs::write(&target, &bytes)
            .with_context(|| format!("cannot write {}", target.display()))?;
        Ok(target)
    }
}

/// qflow's archive: busybox, the init script, and the directories it mounts on.
fn archive(busybox: &[u8]) -> Vec<u8> {
    let mut cpio = Cpio::default();
    cpio.dir("dev");
    cpio.char_device("dev/console", 0o600, 5, 1);
    cpio.dir("newroot");
    cpio.dir("proc");
    cpio.dir("qflow");
    cpio.file("qflow/busybox", 0o755, busybox);
    cpio.file("qflow/init", 0o755, SCRIPT.as_bytes());
    cpio.dir("sys");
    cpio.finish()
}

/// An ELF executable without a program interpreter (`PT_INTERP`): it needs no
/// dynamic loader or libc.
fn is_static_elf(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    // 64-bit little-endian ELF only: the guest is x86_64.
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..usize::from(phnum)).all(|i| {
        let at = phoff as usize + i * usize::from(phentsize);
        u32_at(at).is_some_and(|t| t != PT_INTERP)
    })
}

/// A cpio archive in the kernel's `newc` format, every entry owned by root with
/// time 0, so the same content gives the same bytes.
#[derive(Default)]
struct Cpio {
    bytes: Vec<u8>,
    inode: u32,
}

impl Cpio {
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | mode, (0, 0), data);
    }

    fn char_device(&mut self, name: &str, mode: u32, major: u32, minor: u32) {
        self.entry(name, 0o020_000 | mode, (major, minor), &[]);
    }

    fn entry(&mut self, name: &str, mode: u32, (major, minor): (u32, u32), data: &[u8]) {
        self.inode += 1;
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        let fields = [
            self.inode,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            major,
            minor,
            name.len() as u32 + 1,
            0, // check
        ];
        self.bytes.extend_from_slice(b"070701");
        for f in fields {
            self.bytes.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        let len = self.bytes.len().next_multiple_of(4);
        self.bytes.resize(len, 0);
    }

    fn finish(mut self) -> Vec<u8> {
        self.inode = 0;
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.bytes
    }
}

/// The step's error with what the guest's console says went wrong as its
/// headline: qflow's init naming what the kernel lacks, or the kernel failing to
/// run that init at all.
/// `console` is the run's whole console log: the init's line may have scrolled out
/// of the tail the error quotes (a kernel's panic trace is longer than that tail).
pub fn explain(error: anyhow::Error, console: &str) -> anyhow::Error {
    let text = format!("{error:#}");
    let headline = if let Some(line) = text.lines().chain(console.lines()).find_map(|l| {
        l.split_once("qflow-init: error: ")
            .map(|(_, why)| why.trim().to_string())
    }) {
        line
    } else if text.contains(&format!("Requested init {INIT_PATH} failed")) {
        "the kernel did not unpack qflow's initramfs (it looked for /qflow/init on the root disk): build in CONFIG_BLK_DEV_INITRD".to_string()
    } else if text.contains(&format!("Failed to execute {INIT_PATH}")) {
        "the kernel cannot run qflow's init (a busybox script): build in CONFIG_BINFMT_SCRIPT and CONFIG_BINFMT_ELF".to_string()
    } else {
        return error;
    };
    anyhow::anyhow!("{headline} (`init: minimal`)\n{text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The archive as `cpio -t` would list it: each entry's name and mode.
    fn listing(bytes: &[u8]) -> Vec<(String, u32, usize)> {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            assert_eq!(&bytes[at..at + 6], b"070701", "at {at}");
            let field = |i: usize| {
                let s = std::str::from_utf8(&bytes[at + 6 + i * 8..at + 14 + i * 8]).unwrap();
                u32::from_str_radix(s, 16).unwrap() as usize
            };
            let (mode, size, namesize) = (field(1), field(6), field(11));
            let name_at = at + 110;
            let name = String::from_utf8(bytes[name_at..name_at + namesize - 1].to_vec()).unwrap();
            let data_at = (name_at + namesize).next_multiple_of(4);
            at = (data_at + size).next_multiple_of(4);
            if name == "TRAILER!!!" {
                assert_eq!(at, bytes.len());
                return out;
            }
            out.push((name, mode as u32, size));
        }
    }

    #[test]
    fn the_initramfs_holds_busybox_and_the_init_and_is_the_same_every_time() {
        let busybox = b"\x7fELF\x02\x01 not really busybox";
        let a = archive(busybox);
        assert_eq!(a, archive(busybox), "built twice, the bytes differ");
        let entries = listing(&a);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "newroot",
                "proc",
                "qflow",
                "qflow/busybox",
                "qflow/init",
                "sys"
            ]
        );
        let init = entries.iter().find(|e| e.0 == "qflow/init").unwrap();
        assert_eq!(init.1, 0o100_755);
        assert_eq!(init.2, SCRIPT.len());
        assert!(SCRIPT.starts_with("#!/qflow/busybox sh\n"));
        let console = entries.iter().find(|e| e.0 == "dev/console").unwrap();
        assert_eq!(console.1, 0o020_600);
    }

    #[test]
    fn only_a_static_busybox_can_run_in_the_initramfs() {
        if let Some(bin) = qflow_engine::tool_identity::which("busybox") {
            let bytes = std::fs::read(&bin).unwrap();
            // Debian's busybox-static; its dynamic `busybox` package would fail here.
            assert!(is_static_elf(&bytes), "{} is dynamic", bin.display());
        }
        let sh = std::fs::read("/bin/sh").unwrap();
        assert!(!is_static_elf(&sh), "/bin/sh has a program interpreter");
        assert!(!is_static_elf(b"#!/bin/sh\n"));
    }

    fn check(yaml: &str) -> Result<(), FieldError> {
        use qflow_engine::{KindOf, StepKind};
        let fields: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        let ctx = qflow_engine::CheckContext {
            work_dir: std::env::temp_dir(),
        };
        KindOf::<Boot>::new().parse(&fields)?.check(&ctx)
    }

    #[test]
    fn a_minimal_init_boot_needs_a_kernel_and_system_and_types_no_login() {
        check("{init: minimal, system: s, kernel: k}").unwrap();
        check("{init: system, system: s, kernel: k, login: {password: {env: HOME}}}").unwrap();
        let cases = [
            ("{init: minimal, system: s}", "kernel"),
            ("{init: minimal, kernel: k}", "system"),
            (
                "{init: minimal, system: s, kernel: k, login: {password: {env: HOME}}}",
                "login",
            ),
            (
                "{init: minimal, system: s, kernel: k, append: 'root=/dev/sda init=/bin/sh'}",
                "append",
            ),
            ("{init: minimal, from_checkpoint: cp}", "init"),
            ("{init: fast, system: s, kernel: k}", "init"),
        ];
        for (yaml, field) in cases {
            let e = check(yaml).expect_err(yaml);
            assert_eq!(e.field, field, "{yaml}: {e}");
        }
    }

    #[test]
    fn the_inits_complaint_becomes_the_headline() {
        let e = anyhow::anyhow!(
            "the guest kernel panicked: `Kernel panic - not syncing: Attempted to kill init!`\n\
             the guest's last console lines:\n    \
             qflow-init: error: the kernel cannot mount the root disk: /dev/sda holds ext4, which the kernel does not know: build in CONFIG_EXT4_FS\n    \
             Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100"
        );
        let shown = format!("{:#}", explain(e, ""));
        assert!(
            shown.starts_with(
                "the kernel cannot mount the root disk: /dev/sda holds ext4, which the kernel does not know: build in CONFIG_EXT4_FS"
            ),
            "{shown}"
        );
        let e = anyhow::anyhow!(
            "the guest kernel panicked: `Kernel panic - not syncing: Requested init /qflow/init failed (error -2).`"
        );
        assert!(format!("{:#}", explain(e, "")).starts_with("the kernel did not unpack"));
        let other = format!(
            "{:#}",
            explain(anyhow::anyhow!("guest command `x` failed"), "")
        );
        assert_eq!(other, "guest command `x` failed");
        // A panic trace longer than the quoted tail: the line is found in the console.
        let e = anyhow::anyhow!(
            "the guest kernel panicked: `Kernel panic - not syncing: Attempted to kill init!`\n\
             the guest's last console lines:\n    do_group_exit+0x2d/0x80"
        );
        let console = "qflow-init: error: the kernel cannot mount the root disk: it found no /dev/sda1\n\
                       Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n";
        assert!(
            format!("{:#}", explain(e, console))
                .starts_with("the kernel cannot mount the root disk: it found no /dev/sda1")
        );
    }
}
