//! The `boot` kind: boot a kernel and images in QEMU, run commands on the serial
//! console, and keep what they produced.
//!
//! This is the seed's "Booting QEMU with the New Kernel" through "Memory Snapshots"
//! as one declarative step: the QEMU command line comes from typed fields in the
//! seed's own order ([`command_line`]), the console is automated through a socket
//! with framed commands ([`serial_console`]), QEMU is controlled over QMP ([`qmp`]),
//! `accel: auto` probes KVM instead of trusting `/dev/kvm` ([`accel`]), and a
//! booted guest can be saved as a cached checkpoint that many runs restore in
//! parallel ([`checkpoint`]).
//!
//! ```yaml
//! ready:                              # boot once, save the booted guest
//!   kind: boot
//!   system: system                    # -hda: a step's image.* (or a path)
//!   disks: [data]                     # -hdb ...
//!   kernel: kernel                    # -kernel <its output>/bzImage
//!   append: root=/dev/sda1 console=ttyS0 nokaslr    # the default
//!   memory: 512M
//!   accel: auto                       # auto | kvm | tcg
//!   login: { user: root, password: { file: secrets/root-password } }
//!   commands: [mount /dev/sdb /mnt]
//!   checkpoint: true
//! experiment:                         # many runs from it, in parallel within `jobs`
//!   kind: boot
//!   from_checkpoint: ready            # -incoming (memory.snapshot) + -snapshot
//!   jobs: 2
//!   matrix: { size: [16, 64] }        # out/experiment/size=16/, size=64/
//!   plugins: [{ path: "${{ steps.plugin }}/libinsn.so", args: ["size={{ matrix.size }}"] }]
//!   terminal: { rows: 50, cols: 200 }
//!   commands: ['/mnt/run.sh $size > /mnt/results.txt']
//!   collect: [/mnt/results.txt]
//!   timeout: 30m
//! ```
//!
//! Outputs of a run: `console.log` (the whole transcript, secrets masked),
//! `commands.json` (each command's output and exit status), `qemu.log` (QEMU's own
//! output: warnings, a plugin's prints) and the collected files. A `matrix` runs
//! once per parameter combination, each run in `<param=value,...>/` with the same
//! files; the engine schedules steps, not runs, so the matrix is expanded inside the
//! step and its runs share the step's `jobs` slots.
//!
//! Disks: by default (`snapshot: true`) QEMU discards writes, so the upstream
//! images, which are read-only cache objects, are shared by any number of runs.
//! With `snapshot: false` (and always for a checkpoint) each run writes to qcow2
//! overlays in its output whose backing files are the upstream images, named by a
//! relative path so they survive moving the cache. The system disk's overlay is
//! `image.qcow2`, so such a step is itself an image-producing step: a later step
//! can boot (or customize) the system as this boot left it.

pub mod accel;
pub mod attach;
pub mod checkpoint;
pub mod command_line;
pub mod guest_run;
pub mod machine;
pub mod matrix;
pub mod qmp;
pub mod serial_console;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use qflow_engine::{CheckContext, FieldError, RunContext, Step, StepFields, StepRef, Tool};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::secret::Secret;
use checkpoint::{CheckpointRecord, MEMORY_SNAPSHOT, RECORD};
use command_line::{AccelName, DISK_OPTIONS, PluginArg, QemuCommandLine, relative_path};
use guest_run::{COMMANDS_JSON, CONSOLE_LOG, Event, GuestLogin, QEMU_LOG, RunPlan, collected_name};
use matrix::{Params, substitute};

/// The seed's kernel command line.
pub const DEFAULT_APPEND: &str = "root=/dev/sda1 console=ttyS0 nokaslr";
const DEFAULT_MEMORY: &str = "512";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// A command travels base64-encoded on one tty line, which holds 4095 bytes.
const MAX_COMMAND_BYTES: usize = 2900;

/// Boot a guest and run commands in it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    /// The system disk (`-hda`): a step producing an image, or an image path.
    #[serde(default)]
    pub system: Option<String>,
    /// Data disks (`-hdb`, `-hdc`, `-hdd`): steps producing images, or image paths.
    #[serde(default)]
    pub disks: Vec<String>,
    /// The kernel (`-kernel`): a step whose output holds `bzImage`, or a kernel path.
    #[serde(default)]
    pub kernel: Option<String>,
    /// An initrd (`-initrd`): a step whose output holds `initrd.img` (or one file), or a path.
    #[serde(default)]
    pub initrd: Option<String>,
    /// The kernel command line (`-append`); default `root=/dev/sda1 console=ttyS0 nokaslr`.
    #[serde(default)]
    pub append: Option<String>,
    /// Emulated CPUs (`-smp`), default 1.
    #[serde(default)]
    pub smp: Option<u32>,
    /// Guest memory (`-m`): `512`, `512M`, `2G`; default 512 (MiB).
    #[serde(default)]
    pub memory: Option<Scalar>,
    /// `-icount shift=N`: virtual time from executed instructions (TCG only).
    #[serde(default)]
    pub icount: Option<u32>,
    /// `-snapshot` (default true): disk writes are discarded and images shared.
    /// `false` keeps them in qcow2 overlays in the step's output.
    #[serde(default)]
    pub snapshot: Option<bool>,
    /// `auto` (default: KVM if a probe boot prints, else TCG), `kvm` or `tcg`.
    #[serde(default)]
    pub accel: Option<AccelChoice>,
    /// TCG plugins: `-plugin PATH,arg=A,arg=B`.
    #[serde(default)]
    pub plugins: Vec<Plugin>,
    /// Log in on the serial getty first; the password is read at run time.
    #[serde(default)]
    pub login: Option<Login>,
    /// `stty rows R cols C` in the guest.
    #[serde(default)]
    pub terminal: Option<Terminal>,
    /// Guest shell command lines, run in order; a non-zero exit fails the step.
    #[serde(default)]
    pub commands: Vec<String>,
    /// Files copied into the step's output under their base names: a guest path
    /// (read over the console while the guest runs), or `{ disk: STEP, path: P }`
    /// (read with debugfs from that data disk's overlay after QEMU ends: fast for
    /// large files; needs `snapshot: false`).
    #[serde(default)]
    pub collect: Vec<Collect>,
    /// Wall-clock limit of each run: seconds, or `90s`, `30m`, `2h`; default 10m.
    #[serde(default)]
    pub timeout: Option<Scalar>,
    /// More QEMU arguments, appended last.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// Save the ready guest (after `commands`) as a checkpoint for `from_checkpoint`.
    #[serde(default)]
    pub checkpoint: bool,
    /// Resume a checkpoint step's guest instead of booting (`-incoming` + `-snapshot`).
    #[serde(default)]
    pub from_checkpoint: Option<String>,
    /// Run once per combination of these parameters: exported as guest shell variables
    /// (`$NAME`) and substituted for `{{ matrix.NAME }}` in commands, plugin arguments
    /// and extra arguments.
    #[serde(default)]
    pub matrix: BTreeMap<String, Vec<Scalar>>,
}

/// One `collect` entry.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Collect {
    /// A guest path, read over the console.
    Console(String),
    /// A file on a data disk's ext4 file system, read after QEMU ends.
    Disk(DiskFile),
}

/// A file on one of the `disks`, by that entry and the path inside its file system.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskFile {
    /// The `disks` entry holding it.
    pub disk: String,
    /// Its absolute path in the disk's (unpartitioned ext4) file system.
    pub path: String,
}

impl Collect {
    fn path(&self) -> &str {
        match self {
            Collect::Console(p) => p,
            Collect::Disk(d) => &d.path,
        }
    }
}

/// A YAML scalar taken as text (`512`, `2G`, `true`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Scalar {
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(String),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Text(s) => f.write_str(s),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

/// A TCG plugin and the arguments its `qemu_plugin_install` receives.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Plugin {
    pub path: String,
    #[serde(default)]
    pub args: Vec<Scalar>,
}

/// Serial console login.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    #[serde(default = "root")]
    pub user: String,
    /// `{ file: PATH }` or `{ env: NAME }`; never in argv, logs or the lock.
    pub password: Secret,
}

fn root() -> String {
    "root".to_string()
}

/// Guest terminal size.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Terminal {
    pub rows: u16,
    pub cols: u16,
}

impl StepFields for Boot {
    const KIND: &'static str = "boot";
    const SCHEMA_VERSION: u32 = 1;
}

/// An image/kernel field: another step's output, or a host path.
enum Source<'a> {
    Step(&'a str),
    Path(&'a str),
}

fn source(value: &str) -> Source<'_> {
    if value.contains('/') {
        Source::Path(value)
    } else {
        Source::Step(value)
    }
}

impl Boot {
    fn timeout(&self) -> Result<Duration, FieldError> {
        match &self.timeout {
            None => Ok(DEFAULT_TIMEOUT),
            Some(t) => parse_duration(&t.to_string()).ok_or_else(|| {
                FieldError::new(
                    "timeout",
                    format!("`{t}` is not a duration: write seconds or `90s`, `30m`, `2h`"),
                )
            }),
        }
    }

    fn memory(&self) -> String {
        self.memory
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_else(|| DEFAULT_MEMORY.to_string())
    }

    fn writes_kept(&self) -> bool {
        self.checkpoint || self.snapshot == Some(false)
    }

    /// The runs: one, or one per matrix combination.
    fn runs(&self) -> Vec<(Option<String>, Params)> {
        matrix::expand(&self.matrix)
    }

    /// The outputs of one run, relative to that run's directory.
    fn run_outputs(&self) -> Vec<String> {
        let mut out = vec![
            CONSOLE_LOG.to_string(),
            COMMANDS_JSON.to_string(),
            QEMU_LOG.to_string(),
        ];
        out.extend(self.collect.iter().map(|c| collected_name(c.path())));
        if self.writes_kept() {
            out.extend(self.overlay_names());
        }
        if self.checkpoint {
            out.push(MEMORY_SNAPSHOT.to_string());
            out.push(RECORD.to_string());
        }
        out
    }

    /// The qcow2 overlays a run writes to when writes are kept: the system disk's is
    /// `image.qcow2`, so the step hands it on like any image-producing step; data
    /// disks' are named by their option (`hdb.qcow2`, ...).
    fn overlay_names(&self) -> Vec<String> {
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

    fn disk_count(&self) -> usize {
        usize::from(self.system.is_some()) + self.disks.len()
    }

    fn needs_tcg(&self) -> Option<&'static str> {
        if self.icount.is_some() {
            Some("icount")
        } else if !self.plugins.is_empty() {
            Some("plugins")
        } else {
            None
        }
    }

    fn plugin_args(&self) -> Vec<PluginArg> {
        self.plugins
            .iter()
            .map(|p| PluginArg {
                path: p.path.clone(),
                args: p.args.iter().map(|a| a.to_string()).collect(),
            })
            .collect()
    }

    /// The command line with images and kernel given by `resolve` (paths or placeholders).
    fn command_line(
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
        let initrd = self
            .initrd
            .as_ref()
            .map(|k| resolve("initrd", k))
            .transpose()?;
        let append = match (&self.append, &kernel) {
            (Some(a), _) => Some(a.clone()),
            (None, Some(_)) => Some(DEFAULT_APPEND.to_string()),
            (None, None) => None,
        };
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
            control: None,
            incoming: None,
            extra_args: self.extra_args.clone(),
        })
    }

    fn read_password(&self, ctx: &RunContext) -> anyhow::Result<Option<GuestLogin>> {
        let Some(login) = &self.login else {
            return Ok(None);
        };
        let Some(secret) = login.password.read(ctx.work_dir())? else {
            bail!(
                "`login.password` must be `{{ file: PATH }}` or `{{ env: NAME }}`: qflow types it at the prompt"
            );
        };
        let password = String::from_utf8(secret.expose().to_vec())
            .context("the login password is not UTF-8")?;
        Ok(Some(GuestLogin {
            user: login.user.clone(),
            password,
        }))
    }

    /// Every `{{ matrix.NAME }}` names a parameter of this step's matrix.
    fn check_matrix_references(&self) -> Result<(), FieldError> {
        let mut texts: Vec<(String, &str)> = Vec::new();
        for (i, p) in self.plugins.iter().enumerate() {
            texts.push((format!("plugins[{i}].path"), &p.path));
            for (j, a) in p.args.iter().enumerate() {
                if let Scalar::Text(t) = a {
                    texts.push((format!("plugins[{i}].args[{j}]"), t));
                }
            }
        }
        for (i, a) in self.extra_args.iter().enumerate() {
            texts.push((format!("extra_args[{i}]"), a));
        }
        for (i, c) in self.commands.iter().enumerate() {
            texts.push((format!("commands[{i}]"), c));
        }
        matrix::check(&self.matrix, &texts)
    }

    fn check_fields(&self, ctx: &CheckContext) -> Result<(), FieldError> {
        self.timeout()?;
        if let Some(cp) = &self.from_checkpoint {
            let machine_fields: [(&str, bool); 10] = [
                ("system", self.system.is_some()),
                ("disks", !self.disks.is_empty()),
                ("kernel", self.kernel.is_some()),
                ("initrd", self.initrd.is_some()),
                ("append", self.append.is_some()),
                ("smp", self.smp.is_some()),
                ("memory", self.memory.is_some()),
                ("icount", self.icount.is_some()),
                ("accel", self.accel.is_some()),
                ("login", self.login.is_some()),
            ];
            for (field, set) in machine_fields {
                if set {
                    return Err(FieldError::new(
                        field,
                        format!(
                            "`{field}` comes from the checkpoint `{cp}` (the restored machine must be the saved one); remove it here"
                        ),
                    ));
                }
            }
            if self.snapshot == Some(false) {
                return Err(FieldError::new(
                    "snapshot",
                    "a run from a checkpoint always discards its disk writes; remove `snapshot: false`",
                ));
            }
            if self.checkpoint {
                return Err(FieldError::new(
                    "checkpoint",
                    "a run from a checkpoint cannot save another checkpoint; boot a new one instead",
                ));
            }
            if cp.is_empty() || cp.contains('/') {
                return Err(FieldError::new(
                    "from_checkpoint",
                    "`from_checkpoint` names a boot step with `checkpoint: true`",
                ));
            }
        } else if self.system.is_none() && self.kernel.is_none() {
            return Err(FieldError::new(
                "system",
                "a boot needs a `system` image or a `kernel` (or `from_checkpoint`)",
            ));
        }
        if self.disks.len() > DISK_OPTIONS.len() - 1 {
            return Err(FieldError::new(
                "disks",
                format!(
                    "at most {} data disks (`-hdb` to `-hdd`)",
                    DISK_OPTIONS.len() - 1
                ),
            ));
        }
        if self.append.is_some() && self.kernel.is_none() {
            return Err(FieldError::new(
                "append",
                "`append` needs a `kernel` (QEMU passes it to `-kernel` only)",
            ));
        }
        if self.initrd.is_some() && self.kernel.is_none() {
            return Err(FieldError::new("initrd", "`initrd` needs a `kernel`"));
        }
        if let Some(m) = &self.memory {
            let m = m.to_string();
            let digits = m.trim_end_matches(['M', 'G', 'm', 'g']);
            if digits.is_empty()
                || !digits.bytes().all(|b| b.is_ascii_digit())
                || m.len() - digits.len() > 1
            {
                return Err(FieldError::new(
                    "memory",
                    format!("`{m}` is not a memory size: write `512`, `512M` or `2G`"),
                ));
            }
        }
        if self.smp == Some(0) {
            return Err(FieldError::new("smp", "`smp` must be at least 1"));
        }
        if let Some(shift) = self.icount
            && shift > 10
        {
            return Err(FieldError::new(
                "icount",
                format!("`icount: {shift}`: QEMU accepts shifts 0 to 10"),
            ));
        }
        if self.accel == Some(AccelChoice::Kvm)
            && let Some(field) = self.needs_tcg()
        {
            return Err(FieldError::new(
                "accel",
                format!("`{field}` works only under TCG; use `accel: tcg` or `auto`"),
            ));
        }
        for (i, p) in self.plugins.iter().enumerate() {
            if p.path.is_empty() {
                return Err(FieldError::new(
                    format!("plugins[{i}].path"),
                    "a plugin needs the path of its `.so`",
                ));
            }
        }
        for (i, c) in self.commands.iter().enumerate() {
            if c.trim().is_empty() {
                return Err(FieldError::new(
                    format!("commands[{i}]"),
                    "an empty command",
                ));
            }
            if c.len() > MAX_COMMAND_BYTES {
                return Err(FieldError::new(
                    format!("commands[{i}]"),
                    format!(
                        "a command may hold {MAX_COMMAND_BYTES} bytes (one tty line); put longer ones in a script on a disk"
                    ),
                ));
            }
        }
        let mut names = BTreeMap::new();
        for (i, entry) in self.collect.iter().enumerate() {
            let field = format!("collect[{i}]");
            let c = entry.path();
            if let Collect::Disk(d) = entry {
                if !self.disks.contains(&d.disk) {
                    return Err(FieldError::new(
                        format!("{field}.disk"),
                        format!("`{}` is not one of this step's `disks`", d.disk),
                    ));
                }
                if !self.writes_kept() {
                    return Err(FieldError::new(
                        field,
                        "collecting from a disk needs `snapshot: false` (with `-snapshot` QEMU discards \
                         the writes); or collect the guest path over the console",
                    ));
                }
                if c.contains(|ch: char| ch.is_whitespace() || ch == '"' || ch == '\'') {
                    return Err(FieldError::new(
                        format!("{field}.path"),
                        format!("`{c}`: debugfs reads paths without spaces or quotes"),
                    ));
                }
            }
            if !c.starts_with('/') {
                return Err(FieldError::new(
                    field,
                    format!("`{c}` must be an absolute guest path"),
                ));
            }
            let name = collected_name(c);
            if name.is_empty()
                || name == "."
                || name == ".."
                || self.run_outputs()[..3].contains(&name)
            {
                return Err(FieldError::new(
                    field,
                    format!("`{c}` cannot be collected under the name `{name}`"),
                ));
            }
            if let Some(other) = names.insert(name.clone(), c.to_string()) {
                return Err(FieldError::new(
                    field,
                    format!("`{c}` and `{other}` would both be collected as `{name}`"),
                ));
            }
        }
        if let Some(login) = &self.login {
            login.password.check("login.password", ctx)?;
            if matches!(login.password, Secret::Locked | Secret::Random) {
                return Err(FieldError::new(
                    "login.password",
                    "a login password is `{ file: PATH }` or `{ env: NAME }`",
                ));
            }
            if login.user.is_empty() || login.user.contains(char::is_whitespace) {
                return Err(FieldError::new(
                    "login.user",
                    format!("`{}` is not a user name", login.user),
                ));
            }
        }
        if let Some(t) = self.terminal
            && (t.rows == 0 || t.cols == 0)
        {
            return Err(FieldError::new(
                "terminal",
                "`rows` and `cols` must be positive",
            ));
        }
        self.check_matrix_references()?;
        if !self.matrix.is_empty() && self.checkpoint {
            return Err(FieldError::new(
                "matrix",
                "a checkpoint is one guest; put the `matrix` on the runs from it",
            ));
        }
        Ok(())
    }
}

/// `600`, `90s`, `30m`, `2h`, `1h30m`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = 0u64;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            let n: u64 = digits.parse().ok()?;
            digits.clear();
            total += n * match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                _ => return None,
            };
        }
    }
    (digits.is_empty() && total > 0).then(|| Duration::from_secs(total))
}

/// The kernel in a kernel step's output: `bzImage`, `arch/x86/boot/bzImage`, or its only file.
fn kernel_in(dir: &Path) -> anyhow::Result<PathBuf> {
    for candidate in ["bzImage", "arch/x86/boot/bzImage", "vmlinuz"] {
        let p = dir.join(candidate);
        if p.is_file() {
            return Ok(p);
        }
    }
    only_file_in(dir).with_context(|| format!("{} holds no `bzImage`", dir.display()))
}

/// The initrd in a step's output: `initrd.img` (the debootstrap kind's), `initrd`, or its only file.
fn initrd_in(dir: &Path) -> anyhow::Result<PathBuf> {
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

impl Step for Boot {
    fn runs_only_here(&self) -> Option<String> {
        match self.login.as_ref().map(|l| &l.password) {
            Some(crate::secret::Secret::Env(name)) => Some(format!(
                "its `login.password` comes from the environment variable `{name}`, which must not travel to a node"
            )),
            _ => None,
        }
    }

    fn references(&self) -> Vec<StepRef> {
        let mut refs = Vec::new();
        let mut add = |field: String, value: &Option<String>| {
            if let Some(v) = value
                && let Source::Step(s) = source(v)
            {
                refs.push(StepRef::new(field, s));
            }
        };
        add("system".into(), &self.system);
        for (i, d) in self.disks.iter().enumerate() {
            add(format!("disks[{i}]"), &Some(d.clone()));
        }
        add("kernel".into(), &self.kernel);
        add("initrd".into(), &self.initrd);
        add("from_checkpoint".into(), &self.from_checkpoint);
        refs
    }

    fn outputs(&self) -> Vec<String> {
        let per_run = self.run_outputs();
        let mut out = Vec::new();
        for (label, _) in self.runs() {
            for o in &per_run {
                out.push(match &label {
                    Some(l) => format!("{l}/{o}"),
                    None => o.clone(),
                });
            }
        }
        out
    }

    fn tools(&self) -> Vec<Tool> {
        let mut tools = vec![Tool::new(
            command_line::QEMU,
            &["--version"],
            "qemu-system-x86",
        )];
        if self.writes_kept() {
            tools.push(Tool::new("qemu-img", &["--version"], "qemu-utils"));
        }
        if self.collect.iter().any(|c| matches!(c, Collect::Disk(_))) {
            tools.push(Tool::new("debugfs", &["-V"], "e2fsprogs"));
        }
        tools
    }

    fn check(&self, ctx: &CheckContext) -> Result<(), FieldError> {
        self.check_fields(ctx)
    }

    fn extra_key(&self, ctx: &CheckContext) -> anyhow::Result<Vec<(String, String)>> {
        let mut key = Vec::new();
        // Host paths (not step outputs, whose hashes the engine already keys) by content.
        let mut paths: Vec<(String, String)> = Vec::new();
        for (field, value) in [
            ("system", &self.system),
            ("kernel", &self.kernel),
            ("initrd", &self.initrd),
        ] {
            if let Some(v) = value {
                paths.push((field.to_string(), v.clone()));
            }
        }
        for (i, d) in self.disks.iter().enumerate() {
            paths.push((format!("disks[{i}]"), d.clone()));
        }
        for (i, p) in self.plugins.iter().enumerate() {
            paths.push((format!("plugins[{i}].path"), p.path.clone()));
        }
        for (field, value) in paths {
            if let Source::Path(p) = source(&value) {
                let mut hasher = blake3::Hasher::new();
                let hash = match hasher.update_mmap_rayon(ctx.resolve(p)) {
                    Ok(h) => h.finalize().to_hex().to_string(),
                    Err(_) => "missing".to_string(),
                };
                key.push((format!("{field}.content"), hash));
            }
        }
        if let Some(login) = &self.login {
            // Its blake3: a password change re-runs the step; the lock never holds it.
            key.extend(
                login
                    .password
                    .key_material("login.password", &ctx.work_dir)?,
            );
        }
        Ok(key)
    }

    fn plan(&self, _ctx: &CheckContext) -> Vec<String> {
        let line = if let Some(cp) = &self.from_checkpoint {
            let mut l = format!(
                "{} <machine of checkpoint `{cp}`> -snapshot -incoming fd:0 (stdin: {cp}/{MEMORY_SNAPSHOT})",
                command_line::QEMU
            );
            for p in self.plugin_args() {
                l.push_str(&format!(" -plugin {}", p.path));
                for a in p.args {
                    l.push_str(&format!(",arg={a}"));
                }
            }
            l
        } else {
            let mut placeholder = |field: &str, v: &str| -> anyhow::Result<String> {
                Ok(match source(v) {
                    Source::Path(p) => p.to_string(),
                    Source::Step(s) if field == "kernel" => format!("${{{{ steps.{s} }}}}/bzImage"),
                    Source::Step(s) if field == "initrd" => {
                        format!("${{{{ steps.{s} }}}}/initrd.img")
                    }
                    Source::Step(s) => format!("${{{{ steps.{s} }}}}/image.*"),
                })
            };
            match self.command_line(&mut placeholder) {
                Ok(mut l) => {
                    if l.accel.is_none() {
                        l.accel = Some(if self.needs_tcg().is_some() {
                            AccelName::Tcg
                        } else {
                            AccelName::Kvm
                        });
                    }
                    let mut shown = l.display();
                    if self.accel.unwrap_or(AccelChoice::Auto) == AccelChoice::Auto
                        && self.needs_tcg().is_none()
                    {
                        shown.push_str("   # accel auto: kvm if a probe boot prints, else tcg");
                    }
                    if self.writes_kept() {
                        shown.push_str("   # disks: qcow2 overlays in the output");
                    }
                    if self.checkpoint {
                        shown.push_str("; then a memory snapshot by migration to memory.snapshot");
                    }
                    shown
                }
                Err(e) => format!("cannot show the command line: {e}"),
            }
        };
        let runs = self.runs();
        if runs.len() > 1 {
            vec![format!(
                "{line}   # x{} runs: {}",
                runs.len(),
                runs.iter()
                    .filter_map(|r| r.0.clone())
                    .collect::<Vec<_>>()
                    .join(" ")
            )]
        } else {
            vec![line]
        }
    }

    fn default_jobs(&self) -> usize {
        self.runs().len().clamp(1, 2)
    }

    fn run(&self, ctx: &mut RunContext) -> anyhow::Result<()> {
        let timeout = self.timeout().map_err(|e| anyhow::anyhow!("{e}"))?;
        let login = self.read_password(ctx)?;
        let out_dir = ctx.out_dir().to_path_buf();

        // The machine: rebuilt from a checkpoint, or from this step's fields.
        let (line, snapshot_file, record) = if let Some(cp) = &self.from_checkpoint {
            let dir = ctx.upstream(cp)?.to_path_buf();
            let record = CheckpointRecord::load(&dir)?;
            let mut line = record.command_line(&dir)?;
            line.plugins = self.plugin_args();
            line.extra_args.extend(self.extra_args.iter().cloned());
            ctx.log(&format!(
                "qflow: restoring checkpoint `{cp}` (accel {} as saved)",
                record.accel
            ));
            (line, Some(dir.join(MEMORY_SNAPSHOT)), None)
        } else {
            let mut resolve = |field: &str, v: &str| -> anyhow::Result<String> {
                let path = match source(v) {
                    Source::Path(p) => ctx.resolve(p),
                    Source::Step(s) if field == "kernel" => kernel_in(ctx.upstream(s)?)?,
                    Source::Step(s) if field == "initrd" => initrd_in(ctx.upstream(s)?)?,
                    Source::Step(s) => crate::image_file::upstream_image(ctx, s)?,
                };
                Ok(path.to_string_lossy().into_owned())
            };
            let mut line = self.command_line(&mut resolve)?;
            if line.accel.is_none() {
                let (accel, why) = accel::choose(ctx, &line, self.needs_tcg());
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
                    relative_path(&out_dir, Path::new(k))
                        .to_string_lossy()
                        .into_owned()
                }),
                initrd: line.initrd.as_ref().map(|k| {
                    relative_path(&out_dir, Path::new(k))
                        .to_string_lossy()
                        .into_owned()
                }),
                append: line.append.clone(),
                icount: line.icount,
                accel: accel.as_str().to_string(),
                extra_args: self.extra_args.clone(),
            });
            (line, None, record)
        };
        ctx.note("command_line", &line.display());
        ctx.log(&format!("qflow: {}", line.display()));

        // One plan (and machine command line) per run.
        let mut plans = Vec::new();
        let mut lines = Vec::new();
        for (label, params) in self.runs() {
            let attach_link = ctx.state_dir().join(match &label {
                Some(l) => format!("console-{l}.sock"),
                None => "console.sock".to_string(),
            });
            let dir = match &label {
                Some(l) => out_dir.join(l),
                None => out_dir.clone(),
            };
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let mut run_line = line.clone();
            if self.writes_kept() {
                run_line.disks = self.overlays(ctx, &line.disks, &dir)?;
            }
            for plugin in &mut run_line.plugins {
                plugin.path = substitute(&plugin.path, &params);
                plugin.args = plugin.args.iter().map(|a| substitute(a, &params)).collect();
            }
            run_line.extra_args = run_line
                .extra_args
                .iter()
                .map(|a| substitute(a, &params))
                .collect();
            let commands = self
                .commands
                .iter()
                .map(|c| substitute(c, &params))
                .collect();
            plans.push(RunPlan {
                label,
                dir,
                exports: params,
                commands,
                collect: self
                    .collect
                    .iter()
                    .filter_map(|c| match c {
                        Collect::Console(p) => Some(p.clone()),
                        Collect::Disk(_) => None,
                    })
                    .collect(),
                login: login.clone(),
                terminal: self.terminal.map(|t| (t.rows, t.cols)),
                restore: snapshot_file.is_some(),
                keep_disks: self.writes_kept(),
                attach_link: Some(attach_link),
                checkpoint: record.clone(),
                timeout,
            });
            lines.push(run_line);
        }
        self.execute(ctx, &plans, &lines, snapshot_file.as_deref())
    }
}

impl Boot {
    /// qcow2 overlays in `dir` over `disks`, backing files named relatively.
    fn overlays(
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

    /// After a run's QEMU has ended: copy the `{ disk, path }` entries of `collect`
    /// out of the data disks' overlays (converted to raw in a private scratch dir,
    /// read with debugfs: no mount, no root).
    fn collect_from_disks(
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

    /// Start the runs within the step's `jobs` slots and drive each on a thread.
    fn execute(
        &self,
        ctx: &mut RunContext,
        plans: &[RunPlan],
        lines: &[QemuCommandLine],
        snapshot: Option<&Path>,
    ) -> anyhow::Result<()> {
        let slots = ctx.jobs().max(1);
        let (tx, rx) = mpsc::channel::<Event>();
        let mut next = 0;
        let mut running = 0;
        let mut failures: Vec<String> = Vec::new();
        let many = plans.len() > 1;
        let name = |i: usize| plans[i].label.clone().unwrap_or_default();
        std::thread::scope(|scope| {
            loop {
                while running < slots
                    && next < plans.len()
                    && failures.is_empty()
                    && !ctx.is_cancelled()
                {
                    let i = next;
                    next += 1;
                    let stdin = match snapshot.map(std::fs::File::open).transpose() {
                        Ok(f) => f,
                        Err(e) => {
                            failures
                                .push(format!("cannot open the checkpoint's memory snapshot: {e}"));
                            break;
                        }
                    };
                    let log = plans[i].dir.join(QEMU_LOG);
                    match machine::Machine::start(ctx, &lines[i], stdin, &log) {
                        Ok(m) => {
                            if many {
                                ctx.log(&format!("qflow: run {} started", name(i)));
                            }
                            let tx = tx.clone();
                            let plan = &plans[i];
                            scope.spawn(move || {
                                let r = guest_run::drive(i, plan, m, &tx);
                                let _ = tx.send(Event::Done(i, r));
                            });
                            running += 1;
                        }
                        Err(e) => failures.push(format!("{}{e:#}", prefix(many, &name(i)))),
                    }
                }
                if running == 0 {
                    break;
                }
                match rx.recv() {
                    Ok(Event::Line(i, l)) => {
                        if many {
                            ctx.log(&format!("[{}] {l}", name(i)));
                        } else {
                            ctx.log(&l);
                        }
                    }
                    Ok(Event::Progress(i, t)) => {
                        ctx.progress(&format!("{}{t}", prefix(many, &name(i))))
                    }
                    Ok(Event::Done(i, r)) => {
                        running -= 1;
                        let qemu_log = std::fs::read_to_string(plans[i].dir.join(QEMU_LOG))
                            .unwrap_or_default();
                        for l in qemu_log.lines() {
                            ctx.log(&format!("{}qemu: {l}", prefix(many, &name(i))));
                        }
                        let r = r.and_then(|()| self.collect_from_disks(ctx, &plans[i], &lines[i]));
                        match r {
                            Ok(()) => {
                                if many {
                                    ctx.log(&format!("qflow: run {} ok", name(i)));
                                }
                            }
                            Err(e) => failures.push(format!("{}{e:#}", prefix(many, &name(i)))),
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        if ctx.is_cancelled() {
            bail!("interrupted");
        }
        if let Some(first) = failures.first() {
            let more = if failures.len() > 1 {
                format!(" (and {} more failed runs)", failures.len() - 1)
            } else {
                String::new()
            };
            bail!("{first}{more}");
        }
        Ok(())
    }
}

fn prefix(many: bool, label: &str) -> String {
    if many {
        format!("run {label}: ")
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qflow_engine::{KindOf, StepKind};

    fn parse(yaml: &str) -> Result<Box<dyn Step>, FieldError> {
        let fields: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        KindOf::<Boot>::new().parse(&fields)
    }

    fn check(yaml: &str) -> Result<(), FieldError> {
        let ctx = CheckContext {
            work_dir: std::env::temp_dir(),
        };
        parse(yaml)?.check(&ctx)
    }

    fn refused(yaml: &str) -> FieldError {
        check(yaml).expect_err(yaml)
    }

    #[test]
    fn the_issues_example_parses_and_checks() {
        let dir = std::env::temp_dir().join(format!("qflow-boot-check-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("secrets")).unwrap();
        std::fs::write(dir.join("secrets/root-password"), "pw\n").unwrap();
        let step = parse(
            r#"
system: system
disks: [data]
kernel: kernel
append: root=/dev/sda1 console=ttyS0 nokaslr
smp: 1
memory: 512M
icount: 1
snapshot: true
accel: auto
plugins: [{ path: "/cache/trees/abc/libinsn.so", args: [inline=on, "42"] }]
login: { user: root, password: { file: secrets/root-password } }
terminal: { rows: 50, cols: 200 }
commands:
  - mount /dev/sdb /mnt
  - /mnt/run.sh > /mnt/results.txt
collect: [/mnt/results.txt]
timeout: 30m
"#,
        )
        .unwrap();
        step.check(&CheckContext {
            work_dir: dir.clone(),
        })
        .unwrap();
        let refs: Vec<String> = step.references().into_iter().map(|r| r.step).collect();
        assert_eq!(refs, ["system", "data", "kernel"]);
        assert_eq!(
            step.outputs(),
            ["console.log", "commands.json", "qemu.log", "results.txt"]
        );
        let key = step
            .extra_key(&CheckContext {
                work_dir: dir.clone(),
            })
            .unwrap();
        assert!(
            key.iter().any(|(k, _)| k.starts_with("login.password")),
            "{key:?}"
        );
        assert!(key.iter().all(|(_, v)| !v.contains("pw")), "{key:?}");
        let plan = step
            .plan(&CheckContext {
                work_dir: dir.clone(),
            })
            .join("\n");
        assert!(plan.contains("-m 512M -nographic -hda"), "{plan}");
        assert!(
            plan.contains("-plugin /cache/trees/abc/libinsn.so,arg=inline=on,arg=42 -accel tcg"),
            "{plan}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn contradictions_are_refused_naming_the_field() {
        let cases = [
            ("{commands: [ls]}", "system"),
            ("{kernel: k, memory: 12X}", "memory"),
            ("{kernel: k, smp: 0}", "smp"),
            ("{kernel: k, icount: 11}", "icount"),
            ("{kernel: k, accel: kvm, plugins: [{path: /p.so}]}", "accel"),
            ("{system: s, append: quiet}", "append"),
            ("{kernel: k, disks: [a, b, c, d]}", "disks"),
            ("{kernel: k, collect: [/a/x, /b/x]}", "collect[1]"),
            ("{kernel: k, collect: [/a/console.log]}", "collect[0]"),
            (
                "{kernel: k, disks: [d], collect: [{disk: d, path: /x}]}",
                "collect[0]",
            ),
            (
                "{kernel: k, disks: [d], snapshot: false, collect: [{disk: e, path: /x}]}",
                "collect[0].disk",
            ),
            (
                "{kernel: k, disks: [d], snapshot: false, collect: [{disk: d, path: '/a b'}]}",
                "collect[0].path",
            ),
            ("{kernel: k, timeout: soon}", "timeout"),
            ("{kernel: k, checkpoint: true, matrix: {n: [1]}}", "matrix"),
            ("{kernel: k, matrix: {2n: [1]}}", "matrix.2n"),
            ("{kernel: k, matrix: {n: [a/b]}}", "matrix.n"),
            ("{kernel: k, matrix: {n: []}}", "matrix.n"),
            ("{from_checkpoint: cp, kernel: k}", "kernel"),
            ("{from_checkpoint: cp, snapshot: false}", "snapshot"),
            ("{from_checkpoint: cp, checkpoint: true}", "checkpoint"),
            (
                "{kernel: k, login: {password: {file: /no/such/file}}}",
                "login.password",
            ),
            ("{kernel: k, login: {password: locked}}", "login.password"),
            ("{kernel: k, terminal: {rows: 0, cols: 80}}", "terminal"),
            (
                "{kernel: k, commands: ['echo {{ matrix.x }}']}",
                "commands[0]",
            ),
            (
                "{kernel: k, matrix: {n: [1]}, plugins: [{path: /p.so, args: ['a={{matrix.m}}']}]}",
                "plugins[0].args[0]",
            ),
        ];
        for (yaml, field) in cases {
            let err = refused(yaml);
            assert!(
                err.field.starts_with(field),
                "{yaml}: expected field `{field}`, got {err}"
            );
        }
        let unknown = parse("{kernel: k, kernal: k}").unwrap_err();
        assert!(unknown.message.contains("kernal"), "{unknown}");
    }

    #[test]
    fn a_matrix_expands_into_runs_named_by_their_parameters() {
        let step =
            parse("{kernel: k, matrix: {size: [1, 2], mode: [a, b]}, collect: [/r.txt]}").unwrap();
        check("{kernel: k, matrix: {size: [1, 2], mode: [a, b]}}").unwrap();
        let outputs = step.outputs();
        assert_eq!(outputs.len(), 4 * 4);
        for run in [
            "mode=a,size=1",
            "mode=a,size=2",
            "mode=b,size=1",
            "mode=b,size=2",
        ] {
            assert!(outputs.contains(&format!("{run}/r.txt")), "{outputs:?}");
            assert!(
                outputs.contains(&format!("{run}/commands.json")),
                "{outputs:?}"
            );
        }
        assert_eq!(step.default_jobs(), 2);
    }

    #[test]
    fn matrix_values_replace_their_references() {
        let params = vec![
            ("n".to_string(), "4".to_string()),
            ("mode".to_string(), "fast".to_string()),
        ];
        assert_eq!(
            substitute("size={{ matrix.n }},{{matrix.mode}}", &params),
            "size=4,fast"
        );
        assert_eq!(
            substitute("${{ steps.x }} {{ other }}", &params),
            "${{ steps.x }} {{ other }}"
        );
        check("{kernel: k, matrix: {n: [1, 2]}, commands: ['echo {{ matrix.n }}'], extra_args: ['{{ matrix.n }}']}")
            .unwrap();
    }

    #[test]
    fn a_file_on_a_kept_data_disk_can_be_collected_after_shutdown() {
        let yaml = "{kernel: k, disks: [data], snapshot: false, collect: [/etc/os-release, {disk: data, path: /r/out.csv}]}";
        check(yaml).unwrap();
        let step = parse(yaml).unwrap();
        assert!(step.outputs().contains(&"out.csv".to_string()));
        assert!(step.outputs().contains(&"os-release".to_string()));
        assert!(step.tools().iter().any(|t| t.program == "debugfs"));
    }

    #[test]
    fn durations_read_like_a_person_writes_them() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2x"), None);
        assert_eq!(parse_duration("m"), None);
        assert_eq!(parse_duration("5m3"), None);
    }
}
