//! The `disk` kind: the seed's data disk — an image of a given size with a fresh
//! filesystem, filled from a host directory and handed to the owner the guest
//! expects. The output is always `image.qcow2`.
//!
//! Three ways to fill it (`via:`), all ending in the same kind of image:
//! - `mkfs` (default): no root, no mount. `mke2fs -d DIR` fills the filesystem as it
//!   creates it; `debugfs` then sets every inode's owner and timestamps; `qemu-img
//!   convert` makes the qcow2. With a fixed filesystem UUID and hash seed derived
//!   from the step's fields and `E2FSPROGS_FAKE_TIME`, two clean runs with the same
//!   contents give byte-identical images. This is why it is the default even as
//!   root: it is the only reproducible `via`.
//! - `loop` (root): a raw image, `mkfs.<fs>`, `mount -o loop`, `cp -a`, `chown -R`,
//!   `umount`, then `qemu-img convert`. Not reproducible: the kernel stamps mount
//!   times, journal contents and ctimes.
//! - `nbd` (root and the nbd module): the seed's sequence exactly — `qemu-nbd
//!   --connect` to the first free `/dev/nbdN` (on "Failed to open /dev/nbdN" it runs
//!   `modprobe nbd max_part=8` and retries once), `mkfs.<fs>`, `mount`, `cp -a`,
//!   `chown -R`, `umount`, `qemu-nbd --disconnect`. After a failure the device is
//!   unmounted and disconnected. Not reproducible, for the same reasons as `loop`.
//!
//! `QFLOW_NBD_DEVICE_DIR` (test only) names a directory that stands in for `/dev`
//! when looking for `nbdN` devices; when set, the nbd-module precheck is skipped so
//! the sequence can be tested with stand-in programs on a host without nbd.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use qflow_engine::context::quote_arg;
use qflow_engine::{
    CheckContext, FieldError, Input, Requirement, RunContext, Step, StepFields, Tool,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::qemu_img::{self, Size};

/// The fixed time every inode and the superblock get under `via: mkfs`
/// (2000-01-01T00:00:00Z), so the image does not depend on when it was built.
pub const FIXED_TIME: u64 = 946_684_800;

/// Test-only: a directory standing in for `/dev` when looking for nbd devices.
pub const NBD_DEVICE_DIR_ENV: &str = "QFLOW_NBD_DEVICE_DIR";

/// A data disk with a filesystem, optionally filled from a host directory.
///
/// ```yaml
/// data:
///   kind: disk
///   size: 8G
///   fs: ext4
///   contents: ./workload
///   owner: 1000:1000
///   via: mkfs
/// ```
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// Size in qemu-img units (`512M`, `8G`).
    pub size: String,
    /// Filesystem: `ext4` (default), `ext2`, or `xfs` (needs xfsprogs and `via: loop|nbd`
    /// to be filled).
    #[serde(default)]
    pub fs: Filesystem,
    /// A host directory copied into the filesystem's root; its whole tree enters the key.
    #[serde(default)]
    pub contents: Option<String>,
    /// `uid:gid` (numbers) that owns every file and directory, the seed's `chown -R`.
    /// Default `0:0`.
    #[serde(default)]
    pub owner: Option<String>,
    /// How the filesystem is filled: `mkfs` (default, rootless, reproducible),
    /// `loop` (root) or `nbd` (root and the nbd kernel module, the seed's recipe).
    #[serde(default)]
    pub via: Via,
    /// The filesystem UUID; by default one derived from this step's fields, so it
    /// is stable across runs and across edits of `contents`.
    #[serde(default)]
    pub uuid: Option<String>,
}

/// The filesystems a `disk` step can make.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    #[default]
    Ext4,
    Ext2,
    Xfs,
}

impl Filesystem {
    fn name(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Ext2 => "ext2",
            Filesystem::Xfs => "xfs",
        }
    }

    fn is_ext(self) -> bool {
        matches!(self, Filesystem::Ext4 | Filesystem::Ext2)
    }

    fn mkfs_program(self) -> String {
        format!("mkfs.{}", self.name())
    }
}

/// How a `disk` step fills its filesystem.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    #[default]
    Mkfs,
    Loop,
    Nbd,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Mkfs => "mkfs",
            Via::Loop => "loop",
            Via::Nbd => "nbd",
        }
    }
}

/// A numeric `uid:gid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    pub fn parse(text: &str) -> Result<Owner, String> {
        let bad = || format!("`{text}` is not an owner; write numeric `uid:gid`, e.g. `1000:1000`");
        let (u, g) = text.split_once(':').ok_or_else(bad)?;
        let num = |s: &str| {
            (!s.is_empty() && s.chars().all(|c| c.is_ascii_digit()))
                .then(|| s.parse::<u32>().ok())
                .flatten()
        };
        Ok(Owner {
            uid: num(u).ok_or_else(bad)?,
            gid: num(g).ok_or_else(bad)?,
        })
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

/// Names of the files a run uses inside its output and state directories.
const RAW: &str = "disk.raw";
const OUT: &str = "image.qcow2";

impl Disk {
    fn owner(&self) -> Owner {
        self.owner
            .as_deref()
            .and_then(|o| Owner::parse(o).ok())
            .unwrap_or(Owner { uid: 0, gid: 0 })
    }

    fn size(&self) -> Size {
        Size::parse(&self.size).unwrap_or(Size(0))
    }

    /// The filesystem UUID: the `uuid` field, or one derived from the fields.
    pub fn fs_uuid(&self) -> String {
        match &self.uuid {
            Some(u) => u.clone(),
            None => derived_uuid(&format!("uuid {}", self.key_text())),
        }
    }

    /// The ext hash seed: derived like the UUID, so directory hashes are stable.
    fn hash_seed(&self) -> String {
        derived_uuid(&format!("hash_seed {}", self.fs_uuid()))
    }

    fn key_text(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.size,
            self.fs.name(),
            self.contents.as_deref().unwrap_or(""),
            self.owner(),
            self.via.name()
        )
    }

    /// `mkfs.<fs>` argv for a device or file, with the fixed UUID (and hash seed for ext).
    fn mkfs_argv(&self, target: &str) -> Vec<String> {
        let mut a = vec![self.fs.mkfs_program()];
        if self.fs.is_ext() {
            a.extend([
                "-U".into(),
                self.fs_uuid(),
                "-E".into(),
                format!("hash_seed={}", self.hash_seed()),
            ]);
        } else {
            a.extend(["-m".into(), format!("uuid={}", self.fs_uuid())]);
        }
        a.push(target.to_string());
        a
    }

    /// `mke2fs -d` argv: create and fill in one go (via mkfs).
    fn mke2fs_argv(&self, contents: Option<&str>, raw: &str) -> Vec<String> {
        let owner = self.owner();
        let mut a: Vec<String> = ["mke2fs", "-q", "-F", "-t", self.fs.name(), "-U"]
            .map(String::from)
            .to_vec();
        a.push(self.fs_uuid());
        a.push("-E".into());
        a.push(format!("hash_seed={},root_owner={owner}", self.hash_seed()));
        if let Some(c) = contents {
            a.extend(["-d".into(), c.to_string()]);
        }
        a.push(raw.to_string());
        a
    }

    fn create_raw_argv(&self, raw: &str) -> Vec<String> {
        ["qemu-img", "create", "-f", "raw", raw]
            .map(String::from)
            .into_iter()
            .chain([self.size().arg()])
            .collect()
    }

    fn convert_argv(raw: &str, out: &str) -> Vec<String> {
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, out]
            .map(String::from)
            .to_vec()
    }

    fn copy_argv(contents: &str, mnt: &str) -> Vec<String> {
        vec![
            "cp".into(),
            "-a".into(),
            format!("{contents}/."),
            format!("{mnt}/"),
        ]
    }

    fn chown_argv(&self, mnt: &str) -> Vec<String> {
        vec![
            "chown".into(),
            "-R".into(),
            self.owner().to_string(),
            mnt.to_string(),
        ]
    }

    /// The command lines of a run, in order (nbd: on the first device, without
    /// the modprobe retry that runs only when the connect fails).
    pub fn commands(&self, contents: Option<&str>, mnt: &str) -> Vec<Vec<String>> {
        let s = |x: &str| x.to_string();
        let mut cmds = Vec::new();
        match self.via {
            Via::Mkfs => {
                cmds.push(self.create_raw_argv(RAW));
                if self.fs.is_ext() {
                    cmds.push(self.mke2fs_argv(contents, RAW));
                    cmds.push(vec![
                        s("debugfs"),
                        s("-w"),
                        s("-f"),
                        s("<owner and time of every inode>"),
                        s(RAW),
                    ]);
                } else {
                    cmds.push(self.mkfs_argv(RAW));
                }
                cmds.push(Self::convert_argv(RAW, OUT));
            }
            Via::Loop => {
                cmds.push(self.create_raw_argv(RAW));
                let mut mkfs = self.mkfs_argv(RAW);
                if self.fs.is_ext() {
                    mkfs.insert(1, s("-F"));
                }
                cmds.push(mkfs);
                cmds.push(vec![s("mount"), s("-o"), s("loop"), s(RAW), s(mnt)]);
                if let Some(c) = contents {
                    cmds.push(Self::copy_argv(c, mnt));
                }
                cmds.push(self.chown_argv(mnt));
                cmds.push(vec![s("umount"), s(mnt)]);
                cmds.push(Self::convert_argv(RAW, OUT));
            }
            Via::Nbd => {
                let dev = "/dev/nbd0";
                cmds.push(vec![
                    s("qemu-img"),
                    s("create"),
                    s("-f"),
                    s("qcow2"),
                    s(OUT),
                    self.size().arg(),
                ]);
                cmds.push(nbd_connect_argv(dev, OUT));
                cmds.push(self.mkfs_argv(dev));
                cmds.push(vec![s("mount"), s(dev), s(mnt)]);
                if let Some(c) = contents {
                    cmds.push(Self::copy_argv(c, mnt));
                }
                cmds.push(self.chown_argv(mnt));
                cmds.push(vec![s("umount"), s(dev)]);
                cmds.push(vec![s("qemu-nbd"), s("--disconnect"), s(dev)]);
            }
        }
        cmds
    }

    fn contents_path(&self, ctx: &RunContext) -> Option<String> {
        self.contents.as_deref().map(|c| clean(&ctx.resolve(c)))
    }

    fn run_mkfs(&self, ctx: &mut RunContext) -> anyhow::Result<()> {
        let contents = self.contents_path(ctx);
        let out_dir = ctx.out_dir().to_path_buf();
        let raw = out_dir.join(RAW);
        let result = (|| {
            run_argv(ctx, &self.create_raw_argv(RAW), &out_dir, &[])?;
            if !self.fs.is_ext() {
                run_argv(ctx, &self.mkfs_argv(RAW), &out_dir, &[])?;
            } else {
                let fake_time = FIXED_TIME.to_string();
                // mke2fs -d adds each directory's entries in `alphasort` order, which
                // follows LC_COLLATE: pin it so every host lays out the same inodes.
                let env = [("E2FSPROGS_FAKE_TIME", fake_time.as_str()), ("LC_ALL", "C")];
                run_argv(
                    ctx,
                    &self.mke2fs_argv(contents.as_deref(), RAW),
                    &out_dir,
                    &env,
                )?;
                let script = ctx.state_dir().join("debugfs-commands");
                let paths = match &contents {
                    Some(c) => tree_paths(Path::new(c))?,
                    None => Vec::new(),
                };
                std::fs::write(&script, debugfs_script(&paths, self.owner()))
                    .with_context(|| format!("cannot write {}", script.display()))?;
                run_debugfs(ctx, &script, &out_dir, &fake_time)?;
            }
            run_argv(ctx, &Self::convert_argv(RAW, OUT), &out_dir, &[])
        })();
        let _ = std::fs::remove_file(&raw);
        result
    }

    fn run_loop(&self, ctx: &mut RunContext) -> anyhow::Result<()> {
        let contents = self.contents_path(ctx);
        let out_dir = ctx.out_dir().to_path_buf();
        let mnt = ctx.state_dir().join("mnt");
        std::fs::create_dir_all(&mnt)
            .with_context(|| format!("cannot create mount point {}", mnt.display()))?;
        let mnt_s = mnt.to_string_lossy().into_owned();
        let cmds = self.commands(contents.as_deref(), &mnt_s);
        let mut mounted = false;
        let mut result = Ok(());
        for argv in &cmds {
            result = run_argv(ctx, argv, &out_dir, &[]);
            if result.is_err() {
                break;
            }
            match argv[0].as_str() {
                "mount" => mounted = true,
                "umount" => mounted = false,
                _ => {}
            }
        }
        // A Ctrl-C can land after the kernel mounted but before `mount` returned.
        if mounted || (result.is_err() && is_mount_point(&mnt)) {
            cleanup(ctx, &["umount".into(), mnt_s.clone()]);
        }
        let _ = std::fs::remove_file(out_dir.join(RAW));
        result
    }

    fn run_nbd(&self, ctx: &mut RunContext, devices: &NbdDevices) -> anyhow::Result<()> {
        let contents = self.contents_path(ctx);
        let out_dir = ctx.out_dir().to_path_buf();
        let mnt = ctx.state_dir().join("mnt");
        std::fs::create_dir_all(&mnt)
            .with_context(|| format!("cannot create mount point {}", mnt.display()))?;
        let mnt = mnt.to_string_lossy().into_owned();
        let s = |x: &str| x.to_string();
        run_argv(
            ctx,
            &[
                s("qemu-img"),
                s("create"),
                s("-f"),
                s("qcow2"),
                s(OUT),
                self.size().arg(),
            ],
            &out_dir,
            &[],
        )?;
        let out = out_dir.join(OUT).to_string_lossy().into_owned();

        // `qemu-nbd --connect` daemonizes into its own session (daemon(3)), so the
        // server outlives the process-group kill that follows every `ctx.run`;
        // `qemu-nbd --disconnect` below (or in the cleanup) ends it.
        let mut dev = devices.first_free()?;
        if let Err(e) = run_argv(ctx, &nbd_connect_argv(&dev, &out), &out_dir, &[]) {
            if !format!("{e:#}").contains("Failed to open") {
                return Err(e);
            }
            // The seed: "If this command reports error 'Failed to open /dev/nbd0' ... run modprobe first".
            ctx.log("qemu-nbd could not open the device: loading the nbd module and retrying once");
            run_argv(
                ctx,
                &[s("modprobe"), s("nbd"), s("max_part=8")],
                &out_dir,
                &[],
            )?;
            dev = devices.first_free()?;
            run_argv(ctx, &nbd_connect_argv(&dev, &out), &out_dir, &[])?;
        }
        let mut mounted = false;
        let result = (|| {
            run_argv(ctx, &self.mkfs_argv(&dev), &out_dir, &[])?;
            run_argv(ctx, &[s("mount"), dev.clone(), mnt.clone()], &out_dir, &[])?;
            mounted = true;
            if let Some(c) = &contents {
                run_argv(ctx, &Self::copy_argv(c, &mnt), &out_dir, &[])?;
            }
            run_argv(ctx, &self.chown_argv(&mnt), &out_dir, &[])?;
            run_argv(ctx, &[s("umount"), dev.clone()], &out_dir, &[])?;
            mounted = false;
            Ok(())
        })();
        if mounted {
            cleanup(ctx, &[s("umount"), dev.clone()]);
        }
        let disconnect = [s("qemu-nbd"), s("--disconnect"), dev.clone()];
        match result {
            Ok(()) => run_argv(ctx, &disconnect, &out_dir, &[]),
            Err(e) => {
                cleanup(ctx, &disconnect);
                Err(e)
            }
        }
    }
}

/// A path with its `.` components dropped, as text for argv.
fn clean(path: &Path) -> String {
    path.components()
        .collect::<PathBuf>()
        .to_string_lossy()
        .into_owned()
}

fn nbd_connect_argv(dev: &str, image: &str) -> Vec<String> {
    vec![
        "qemu-nbd".into(),
        format!("--connect={dev}"),
        "--format=qcow2".into(),
        image.to_string(),
    ]
}

/// A UUID (version 4 layout) from the blake3 of `text`.
fn derived_uuid(text: &str) -> String {
    let h = blake3::hash(text.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.as_bytes()[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Every path inside `root`, relative, with a leading `/`, sorted.
fn tree_paths(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut paths = Vec::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let entry = entry.with_context(|| format!("cannot read `contents` {}", root.display()))?;
        let rel = entry
            .path()
            .strip_prefix(root)
            .expect("walkdir stays under its root");
        let Some(rel) = rel.to_str() else {
            bail!(
                "file name {} is not UTF-8; rename it",
                entry.path().display()
            )
        };
        if rel.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
            bail!(
                "`contents` file {} has a quote, backslash or control character in its name, which debugfs \
                 cannot address; rename it or use `via: loop`",
                entry.path().display()
            );
        }
        paths.push(format!("/{rel}"));
    }
    Ok(paths)
}

/// debugfs commands that give every inode (the root, lost+found and each copied
/// path) the owner and the fixed timestamps.
fn debugfs_script(paths: &[String], owner: Owner) -> String {
    let mut script = String::new();
    let all = ["/".to_string(), "/lost+found".to_string()]
        .into_iter()
        .chain(paths.iter().cloned());
    for p in all {
        let p = format!("\"{p}\"");
        script.push_str(&format!(
            "sif {p} uid {}\nsif {p} gid {}\n",
            owner.uid, owner.gid
        ));
        for field in ["atime", "mtime", "ctime", "crtime"] {
            script.push_str(&format!("sif {p} {field} @{FIXED_TIME}\n"));
        }
    }
    script
}

/// Run `debugfs -w -f SCRIPT disk.raw`. debugfs exits 0 even when a command fails,
/// so any line that is not its banner or a command echo is an error.
fn run_debugfs(
    ctx: &mut RunContext,
    script: &Path,
    dir: &Path,
    fake_time: &str,
) -> anyhow::Result<()> {
    let mut cmd = ctx.command("debugfs");
    cmd.args(["-w", "-f"])
        .arg(script)
        .arg(RAW)
        .current_dir(dir)
        .env("E2FSPROGS_FAKE_TIME", fake_time);
    let mut errors = Vec::new();
    ctx.run_lines(cmd, &mut |line| {
        if !(line.starts_with("debugfs ") || line.starts_with("debugfs:") || line.trim().is_empty())
        {
            errors.push(line.to_string());
        }
        None
    })?;
    if !errors.is_empty() {
        bail!(
            "debugfs could not set owners and times: {}",
            errors.join("; ")
        );
    }
    Ok(())
}

fn run_argv(
    ctx: &mut RunContext,
    argv: &[String],
    dir: &Path,
    env: &[(&str, &str)],
) -> anyhow::Result<()> {
    let mut cmd = ctx.command(&argv[0]);
    cmd.args(&argv[1..]).current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    ctx.run(cmd)
}

/// Undo a mount or an nbd connection after a failure. Runs even when the run is
/// being cancelled: `RunContext::run` refuses to start programs then, so this
/// falls back to running the program directly (it is short and waited for).
fn cleanup(ctx: &mut RunContext, argv: &[String]) {
    let shown = argv
        .iter()
        .map(|a| quote_arg(a))
        .collect::<Vec<_>>()
        .join(" ");
    ctx.log(&format!("cleanup after failure: {shown}"));
    if !ctx.is_cancelled() {
        let mut cmd = ctx.command(&argv[0]);
        cmd.args(&argv[1..]);
        if let Err(e) = ctx.run(cmd) {
            ctx.log(&format!("cleanup failed: {e:#}"));
        }
        return;
    }
    let mut cmd = ctx.command(&argv[0]);
    cmd.args(&argv[1..]).stdin(std::process::Stdio::null());
    match cmd.output() {
        Ok(out) => ctx.log(&format!(
            "$ {shown} ({})",
            qflow_engine::context::describe_status(out.status)
        )),
        Err(e) => ctx.log(&format!("cleanup `{shown}` could not run: {e}")),
    }
}

/// Where nbd devices are looked for: `/dev` and `/sys/block`, or a test's stand-in.
#[derive(Debug, Clone)]
pub struct NbdDevices {
    pub dev_dir: PathBuf,
    pub sys_block: PathBuf,
}

impl NbdDevices {
    /// `/dev`, or `$QFLOW_NBD_DEVICE_DIR` (test only).
    pub fn from_env() -> NbdDevices {
        match std::env::var_os(NBD_DEVICE_DIR_ENV) {
            Some(d) => NbdDevices {
                sys_block: PathBuf::from(&d).join("sys-block"),
                dev_dir: PathBuf::from(d),
            },
            None => NbdDevices {
                dev_dir: PathBuf::from("/dev"),
                sys_block: PathBuf::from("/sys/block"),
            },
        }
    }

    /// The first `nbdN` with no connected process (`/sys/block/nbdN/pid` absent).
    /// With no nbd device at all it returns `nbd0`, whose connect then fails with
    /// the seed's "Failed to open" and triggers the modprobe retry.
    pub fn first_free(&self) -> anyhow::Result<String> {
        let mut numbers: Vec<u32> = std::fs::read_dir(&self.dev_dir)
            .with_context(|| format!("cannot list {}", self.dev_dir.display()))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("nbd")?.parse().ok())
            .collect();
        numbers.sort();
        if numbers.is_empty() {
            return Ok(self.dev_dir.join("nbd0").to_string_lossy().into_owned());
        }
        numbers
            .into_iter()
            .find(|n| !self.sys_block.join(format!("nbd{n}")).join("pid").exists())
            .map(|n| {
                self.dev_dir
                    .join(format!("nbd{n}"))
                    .to_string_lossy()
                    .into_owned()
            })
            .context(
                "every /dev/nbdN is connected; disconnect one (`qemu-nbd --disconnect /dev/nbdN`)",
            )
    }
}

/// Whether `dir` is a mount point now (`/proc/self/mounts`).
fn is_mount_point(dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    // Spaces in mount points are written as `\040`.
    let wanted = dir.to_string_lossy().replace(' ', "\\040");
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(wanted.as_str()))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// Whether the nbd module is loaded, has devices, or can be loaded.
fn nbd_module_available() -> bool {
    if std::env::var_os(NBD_DEVICE_DIR_ENV).is_some() {
        return true;
    }
    if Path::new("/sys/module/nbd").exists() || Path::new("/dev/nbd0").exists() {
        return true;
    }
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname fills the struct we own.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return false;
    }
    let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    std::fs::read_to_string(format!("/lib/modules/{release}/modules.dep"))
        .map(|dep| {
            dep.lines()
                .any(|l| l.split(':').next().is_some_and(|m| m.contains("/nbd.ko")))
        })
        .unwrap_or(false)
}

impl StepFields for Disk {
    const KIND: &'static str = "disk";
    const SCHEMA_VERSION: u32 = 1;
}

impl Step for Disk {
    fn inputs(&self) -> Vec<Input> {
        self.contents
            .iter()
            .map(|c| Input::new("contents", c.clone()))
            .collect()
    }

    fn outputs(&self) -> Vec<String> {
        vec![OUT.to_string()]
    }

    fn tools(&self) -> Vec<Tool> {
        let mut tools = vec![qemu_img::tool()];
        let mkfs = Tool::new(
            &self.fs.mkfs_program(),
            &["-V"],
            if self.fs.is_ext() {
                "e2fsprogs"
            } else {
                "xfsprogs"
            },
        );
        match self.via {
            Via::Mkfs if self.fs.is_ext() => {
                tools.push(Tool::new("mke2fs", &["-V"], "e2fsprogs"));
                tools.push(Tool::new("debugfs", &["-V"], "e2fsprogs"));
            }
            Via::Mkfs => tools.push(mkfs),
            Via::Loop | Via::Nbd => {
                tools.push(mkfs);
                tools.push(Tool::new("mount", &["--version"], "mount"));
                tools.push(Tool::new("umount", &["--version"], "mount"));
                tools.push(Tool::new("cp", &["--version"], "coreutils"));
                tools.push(Tool::new("chown", &["--version"], "coreutils"));
                if self.via == Via::Nbd {
                    tools.push(Tool::new("qemu-nbd", &["--version"], "qemu-utils"));
                    tools.push(Tool::new("modprobe", &["--version"], "kmod"));
                }
            }
        }
        tools
    }

    fn requirements(&self, _ctx: &CheckContext) -> Vec<Requirement> {
        let mut reqs = Vec::new();
        if matches!(self.via, Via::Loop | Via::Nbd) {
            reqs.push(Requirement {
                what: format!("root (`via: {}` mounts the image)", self.via.name()),
                present: is_root(),
                fix: "run qflow as root, or use `via: mkfs`, which needs no root and no mount"
                    .to_string(),
            });
        }
        if self.via == Via::Nbd {
            reqs.push(Requirement {
                what: "the nbd kernel module (`via: nbd` connects the image with `qemu-nbd --connect`)".to_string(),
                present: nbd_module_available(),
                fix: "install the kernel's nbd module so `modprobe nbd max_part=8` works, or use `via: loop` \
                      (root, loop mount) or `via: mkfs` (no root, no mount)"
                    .to_string(),
            });
        }
        reqs
    }

    fn check(&self, ctx: &CheckContext) -> Result<(), FieldError> {
        Size::parse(&self.size).map_err(|e| FieldError::new("size", e))?;
        if let Some(o) = &self.owner {
            Owner::parse(o).map_err(|e| FieldError::new("owner", e))?;
        }
        if let Some(c) = &self.contents {
            let path = ctx.resolve(c);
            if !path.is_dir() {
                let what = if path.exists() {
                    "is not a directory"
                } else {
                    "does not exist"
                };
                return Err(FieldError::new(
                    "contents",
                    format!(
                        "`{c}` ({}) {what}; `contents` names a host directory to copy into the disk",
                        path.display()
                    ),
                ));
            }
        }
        if let Some(u) = &self.uuid {
            let ok = u.len() == 36
                && u.char_indices().all(|(i, c)| {
                    if [8, 13, 18, 23].contains(&i) {
                        c == '-'
                    } else {
                        c.is_ascii_hexdigit()
                    }
                });
            if !ok {
                return Err(FieldError::new(
                    "uuid",
                    format!("`{u}` is not a UUID like `3c8e6f5a-1b2c-4d3e-8f90-123456789abc`"),
                ));
            }
        }
        if self.fs == Filesystem::Xfs && self.via == Via::Mkfs && self.contents.is_some() {
            return Err(FieldError::new(
                "via",
                "mkfs.xfs cannot fill a filesystem without mounting it; use `via: loop` (root) for an xfs disk \
                 with `contents`, or `fs: ext4`",
            ));
        }
        Ok(())
    }

    fn plan(&self, ctx: &CheckContext) -> Vec<String> {
        let contents = self.contents.as_deref().map(|c| clean(&ctx.resolve(c)));
        let mut lines: Vec<String> = self
            .commands(contents.as_deref(), "<state>/mnt")
            .iter()
            .map(|c| c.iter().map(|a| quote_arg(a)).collect::<Vec<_>>().join(" "))
            .collect();
        if self.via == Via::Mkfs && self.fs.is_ext() {
            lines.insert(
                0,
                format!("# E2FSPROGS_FAKE_TIME={FIXED_TIME} LC_ALL=C for mke2fs and debugfs"),
            );
        }
        if self.via == Via::Nbd {
            lines.push(
                "# on `Failed to open /dev/nbdN`: modprobe nbd max_part=8, then connect again"
                    .into(),
            );
        }
        lines
    }

    fn run(&self, ctx: &mut RunContext) -> anyhow::Result<()> {
        ctx.note("uuid", &self.fs_uuid());
        ctx.note("via", self.via.name());
        match self.via {
            Via::Mkfs => self.run_mkfs(ctx),
            Via::Loop => {
                if !is_root() {
                    bail!(
                        "`via: loop` needs root to mount the image; run as root or use `via: mkfs`"
                    );
                }
                self.run_loop(ctx)
            }
            Via::Nbd => {
                if !is_root() || !nbd_module_available() {
                    bail!(
                        "`via: nbd` needs root and the nbd kernel module; use `via: loop` (root) or `via: mkfs` (no root)"
                    );
                }
                self.run_nbd(ctx, &NbdDevices::from_env())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command as Proc;
    use std::sync::Arc;

    fn parse(yaml: &str) -> Disk {
        serde_yaml::from_str(yaml).unwrap()
    }

    struct Scratch {
        root: PathBuf,
    }

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let root =
                std::env::temp_dir().join(format!("qflow-disk-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).unwrap();
            Scratch { root }
        }

        fn write(&self, rel: &str, content: &[u8]) {
            let p = self.root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }

        fn ctx(&self, run: &str, env: BTreeMap<String, String>) -> RunContext {
            let out = self.root.join(run).join("out");
            let state = self.root.join(run).join("state");
            for d in [&out, &state] {
                std::fs::create_dir_all(d).unwrap();
            }
            RunContext::new(
                run,
                out,
                self.root.clone(),
                state,
                1,
                BTreeMap::new(),
                env,
                qflow_engine::context::StepLog::create(&self.root.join(run).join("log")).unwrap(),
                Arc::new(qflow_engine::context::NoProgress),
                qflow_engine::context::ProcessGroups::new(),
                false,
            )
            .unwrap()
        }

        /// Convert a run's qcow2 back to raw for debugfs.
        fn raw_of(&self, run: &str) -> PathBuf {
            let raw = self.root.join(run).join("readback.raw");
            let st = Proc::new("qemu-img")
                .args(["convert", "-f", "qcow2", "-O", "raw"])
                .arg(self.root.join(run).join("out").join(OUT))
                .arg(&raw)
                .status()
                .unwrap();
            assert!(st.success());
            raw
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                let _ = std::fs::remove_dir_all(&self.root);
            }
        }
    }

    /// (uid, gid, content) of `path` on an ext image, read with debugfs.
    fn read_back(raw: &Path, path: &str) -> (u32, u32, Vec<u8>) {
        let stat = Proc::new("debugfs")
            .arg("-R")
            .arg(format!("stat \"{path}\""))
            .arg(raw)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&stat.stdout).into_owned();
        let field = |name: &str| -> u32 {
            let rest = text
                .split(name)
                .nth(1)
                .unwrap_or_else(|| panic!("no {name} for {path}: {text}"));
            rest.split_whitespace().next().unwrap().parse().unwrap()
        };
        let cat = Proc::new("debugfs")
            .arg("-R")
            .arg(format!("cat \"{path}\""))
            .arg(raw)
            .output()
            .unwrap();
        (field("User:"), field("Group:"), cat.stdout)
    }

    fn workload(s: &Scratch, dir: &str) {
        s.write(&format!("{dir}/run.sh"), b"#!/bin/sh\necho run\n");
        s.write(&format!("{dir}/data/input one.txt"), b"first input\n");
        s.write(
            &format!("{dir}/data/deep/blob.bin"),
            &(0..=255u8).cycle().take(70_000).collect::<Vec<_>>(),
        );
        std::fs::set_permissions(
            s.root.join(dir).join("run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }

    fn assert_workload_on(raw: &Path, uid: u32, gid: u32) {
        let expect: [(&str, Vec<u8>); 3] = [
            ("/run.sh", b"#!/bin/sh\necho run\n".to_vec()),
            ("/data/input one.txt", b"first input\n".to_vec()),
            (
                "/data/deep/blob.bin",
                (0..=255u8).cycle().take(70_000).collect(),
            ),
        ];
        for (path, content) in expect {
            let (u, g, bytes) = read_back(raw, path);
            assert_eq!((u, g), (uid, gid), "owner of {path}");
            assert!(
                bytes == content,
                "content of {path} differs ({} bytes read)",
                bytes.len()
            );
        }
        for dir in ["/", "/data", "/data/deep"] {
            let (u, g, _) = read_back(raw, dir);
            assert_eq!((u, g), (uid, gid), "owner of {dir}");
        }
    }

    #[test]
    fn mkfs_disk_holds_every_file_with_its_owner_and_content() {
        let s = Scratch::new("mkfs");
        workload(&s, "workload");
        let disk = parse("size: 64M\ncontents: workload\nowner: 1000:1001");
        let mut ctx = s.ctx("a", BTreeMap::new());
        disk.run(&mut ctx).unwrap();
        let files: Vec<_> = std::fs::read_dir(s.root.join("a/out"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            files,
            vec![std::ffi::OsString::from(OUT)],
            "only the image is left in the output"
        );
        assert_workload_on(&s.raw_of("a"), 1000, 1001);
    }

    #[test]
    fn an_ext2_mkfs_disk_holds_every_file_with_its_owner_and_content() {
        let s = Scratch::new("ext2");
        workload(&s, "workload");
        let disk = parse("size: 16M\nfs: ext2\ncontents: workload\nowner: 7:8");
        let mut ctx = s.ctx("a", BTreeMap::new());
        disk.run(&mut ctx).unwrap();
        let raw = s.raw_of("a");
        assert_workload_on(&raw, 7, 8);
        let out = Proc::new("dumpe2fs").arg("-h").arg(&raw).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("has_journal"), "ext2 has no journal: {text}");
    }

    #[test]
    fn two_clean_mkfs_runs_give_byte_identical_images() {
        let s = Scratch::new("repro");
        workload(&s, "workload");
        let disk = parse("size: 32M\ncontents: workload\nowner: 1000:1000");
        let mut a = s.ctx("a", BTreeMap::new());
        disk.run(&mut a).unwrap();
        // The same contents written again a second later (a fresh checkout):
        // other mtimes, ctimes and inode numbers on the host.
        std::fs::remove_dir_all(s.root.join("workload")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        workload(&s, "workload");
        let mut b = s.ctx("b", BTreeMap::new());
        disk.run(&mut b).unwrap();
        let img = |run: &str| std::fs::read(s.root.join(run).join("out").join(OUT)).unwrap();
        assert!(
            img("a") == img("b"),
            "two clean runs of the same contents differ"
        );
    }

    #[test]
    fn loop_disk_holds_every_file_with_its_owner_and_content() {
        if !is_root() {
            eprintln!("skipped: `via: loop` needs root");
            return;
        }
        let s = Scratch::new("loop");
        workload(&s, "workload");
        let disk = parse("size: 64M\ncontents: workload\nowner: 1000:1000\nvia: loop");
        let mut ctx = s.ctx("a", BTreeMap::new());
        disk.run(&mut ctx).unwrap();
        assert_workload_on(&s.raw_of("a"), 1000, 1000);
        let mnt = s.root.join("a/state/mnt");
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        assert!(
            !mounts.contains(mnt.to_str().unwrap()),
            "the loop mount was left behind"
        );
    }

    /// Stand-in programs that record their argv into `calls`: the ONLY fake in
    /// qflow's tests, because these machines have no nbd kernel module and
    /// `qemu-nbd --connect` cannot run. `modprobe` creates the device nodes the
    /// real module would; `cp` fails when `fail_copy` is set.
    fn nbd_standins(
        s: &Scratch,
        fail_copy: bool,
    ) -> (BTreeMap<String, String>, NbdDevices, PathBuf) {
        let bin = s.root.join("standins");
        let dev = s.root.join("dev");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&dev).unwrap();
        let calls = s.root.join("calls");
        let record = format!("echo \"$(basename \"$0\") $*\" >> '{}'\n", calls.display());
        let scripts = [
            (
                "qemu-nbd",
                "case \"$1\" in --connect=*) d=\"${1#--connect=}\"; [ -e \"$d\" ] || { echo \"qemu-nbd: Failed to open $d: No such file or directory\" >&2; exit 1; };; esac\n"
                    .to_string(),
            ),
            (
                "modprobe",
                format!(
                    "for i in 0 1 2 3 4 5 6 7; do : > '{}/nbd'$i; done\n",
                    dev.display()
                ),
            ),
            ("mkfs.ext4", String::new()),
            ("mount", String::new()),
            ("umount", String::new()),
            ("chown", String::new()),
            (
                "cp",
                if fail_copy {
                    "echo 'cp: error writing: No space left on device' >&2; exit 1\n".into()
                } else {
                    String::new()
                },
            ),
        ];
        for (name, body) in scripts {
            let p = bin.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{record}{body}exit 0\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        let env = BTreeMap::from([("PATH".to_string(), path)]);
        let devices = NbdDevices {
            dev_dir: dev,
            sys_block: s.root.join("sys-block"),
        };
        (env, devices, calls)
    }

    fn recorded(calls: &Path, s: &Scratch) -> Vec<String> {
        let root = s.root.to_string_lossy().into_owned();
        std::fs::read_to_string(calls)
            .unwrap()
            .lines()
            .map(|l| l.replace(&root, ""))
            .collect()
    }

    #[test]
    fn nbd_runs_the_seeds_sequence_and_loads_the_module_when_the_device_is_missing() {
        let s = Scratch::new("nbd");
        workload(&s, "workload");
        let (env, devices, calls) = nbd_standins(&s, false);
        let disk = parse(
            "size: 64M\ncontents: workload\nowner: 1000:1000\nvia: nbd\nuuid: 3c8e6f5a-1b2c-4d3e-8f90-123456789abc",
        );
        let mut ctx = s.ctx("a", env);
        disk.run_nbd(&mut ctx, &devices).unwrap();
        let seed = disk.hash_seed();
        assert_eq!(
            recorded(&calls, &s),
            vec![
                "qemu-nbd --connect=/dev/nbd0 --format=qcow2 /a/out/image.qcow2".to_string(),
                "modprobe nbd max_part=8".into(),
                "qemu-nbd --connect=/dev/nbd0 --format=qcow2 /a/out/image.qcow2".into(),
                format!(
                    "mkfs.ext4 -U 3c8e6f5a-1b2c-4d3e-8f90-123456789abc -E hash_seed={seed} /dev/nbd0"
                ),
                "mount /dev/nbd0 /a/state/mnt".into(),
                "cp -a /workload/. /a/state/mnt/".into(),
                "chown -R 1000:1000 /a/state/mnt".into(),
                "umount /dev/nbd0".into(),
                "qemu-nbd --disconnect /dev/nbd0".into(),
            ]
        );
    }

    #[test]
    fn nbd_unmounts_and_disconnects_after_a_failed_copy() {
        let s = Scratch::new("nbdfail");
        workload(&s, "workload");
        let (env, devices, calls) = nbd_standins(&s, true);
        for i in 0..2 {
            std::fs::write(devices.dev_dir.join(format!("nbd{i}")), "").unwrap();
        }
        // nbd0 is taken by another qemu-nbd: the first free device is nbd1.
        std::fs::create_dir_all(devices.sys_block.join("nbd0")).unwrap();
        std::fs::write(devices.sys_block.join("nbd0/pid"), "4242").unwrap();
        let disk = parse("size: 64M\ncontents: workload\nvia: nbd");
        let mut ctx = s.ctx("a", env);
        let err = disk.run_nbd(&mut ctx, &devices).unwrap_err();
        assert!(
            format!("{err:#}").contains("No space left on device"),
            "{err:#}"
        );
        let calls = recorded(&calls, &s);
        assert_eq!(
            calls[0],
            "qemu-nbd --connect=/dev/nbd1 --format=qcow2 /a/out/image.qcow2"
        );
        assert_eq!(
            &calls[2..],
            [
                "mount /dev/nbd1 /a/state/mnt",
                "cp -a /workload/. /a/state/mnt/",
                "umount /dev/nbd1",
                "qemu-nbd --disconnect /dev/nbd1"
            ]
        );
    }

    #[test]
    fn bad_fields_are_refused_before_anything_runs() {
        let s = Scratch::new("check");
        std::fs::write(s.root.join("afile"), "x").unwrap();
        let ctx = CheckContext {
            work_dir: s.root.clone(),
        };
        let check = |yaml: &str| parse(yaml).check(&ctx);
        let e = check("size: 8X").unwrap_err();
        assert_eq!(e.field, "size");
        assert!(e.message.contains("unknown unit `X`"), "{e}");
        let e = check("size: 8G\ncontents: ./missing").unwrap_err();
        assert_eq!(e.field, "contents");
        assert!(e.message.contains("does not exist"), "{e}");
        assert!(
            check("size: 8G\ncontents: afile")
                .unwrap_err()
                .message
                .contains("is not a directory")
        );
        for owner in ["alice", "1000", "1000:", ":1000", "a:b", "1000:1000:1"] {
            let e = check(&format!("size: 8G\nowner: \"{owner}\"")).unwrap_err();
            assert_eq!(e.field, "owner", "{owner}");
            assert!(e.message.contains("uid:gid"), "{e}");
        }
        assert_eq!(check("size: 8G\nuuid: nope").unwrap_err().field, "uuid");
        assert!(serde_yaml::from_str::<Disk>("size: 8G\nvia: usb").is_err());
        check("size: 8G\nowner: 1000:1000\nvia: loop").unwrap();
    }

    #[test]
    fn nbd_is_refused_without_the_module_naming_the_other_vias() {
        let disk = parse("size: 8G\nvia: nbd");
        let reqs = disk.requirements(&CheckContext {
            work_dir: PathBuf::from("/"),
        });
        let module = reqs
            .iter()
            .find(|r| r.what.contains("nbd kernel module"))
            .unwrap();
        assert!(
            module.fix.contains("via: loop") && module.fix.contains("via: mkfs"),
            "{}",
            module.fix
        );
        if std::env::var_os(NBD_DEVICE_DIR_ENV).is_none() && !Path::new("/sys/module/nbd").exists()
        {
            assert_eq!(module.present, nbd_module_available());
        }
        assert!(
            parse("size: 8G")
                .requirements(&CheckContext {
                    work_dir: PathBuf::from("/")
                })
                .is_empty()
        );
    }

    #[test]
    fn plan_shows_the_mke2fs_and_qemu_img_command_lines() {
        let plan =
            parse("size: 1G\ncontents: /w\nowner: 1:2\nuuid: 3c8e6f5a-1b2c-4d3e-8f90-123456789abc")
                .plan(&CheckContext {
                    work_dir: PathBuf::from("/"),
                });
        assert_eq!(plan[1], "qemu-img create -f raw disk.raw 1073741824");
        assert!(
            plan[2].starts_with(
                "mke2fs -q -F -t ext4 -U 3c8e6f5a-1b2c-4d3e-8f90-123456789abc -E hash_seed="
            ),
            "{plan:?}"
        );
        assert!(
            plan[2].ends_with(",root_owner=1:2 -d /w disk.raw"),
            "{plan:?}"
        );
        assert_eq!(
            plan[4],
            "qemu-img convert -f raw -O qcow2 disk.raw image.qcow2"
        );
    }
}
