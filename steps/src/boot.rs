//! The `boot` kind: boot a kernel and images in QEMU, run commands on the serial
//! console, and keep what they produced.
//!
//! This is the hand recipe's "Booting QEMU with the New Kernel" through "Memory Snapshots"
//! as one declarative step: the QEMU command line comes from typed fields in the
//! recipe's own order ([`command_line`]), the console is automated through a socket
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
mod check;
pub mod checkpoint;
mod collect;
pub mod command_line;
pub mod console_pipe;
pub mod duration;
pub mod fields;
pub mod guest_run;
pub mod machine;
mod machine_spec;
pub mod matrix;
pub mod minimal_init;
mod overlays;
pub mod qmp;
mod run_pool;
pub mod serial_console;
mod source;

use std::collections::BTreeMap;
use std::time::Duration;

use qflow_engine::results::MetricSpec;
use qflow_engine::{
    CheckContext, FieldError, HostNeed, Input, KvmUse, OutputRole, Requirement, RunContext,
    SecretUse, Step, StepFields, StepRef, Tool,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::qemu_img;
use checkpoint::{MEMORY_SNAPSHOT, RECORD};
use command_line::AccelName;
use guest_run::{COMMANDS_JSON, CONSOLE_LOG, QEMU_LOG, SESSION_LOG, collected_name};
use matrix::Params;
use source::{Source, source};

pub use duration::parse_duration;
pub use fields::{AccelChoice, Collect, DiskFile, Login, Plugin, PluginArgs, Scalar, Terminal};
pub use minimal_init::InitChoice;

/// The hand recipe's kernel command line.
pub const DEFAULT_APPEND: &str = "root=/dev/sda1 console=ttyS0 nokaslr";
const DEFAULT_MEMORY: &str = "512";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Boot a guest and run commands in it.
///
/// What the guest must provide: a console on its first serial port, `ttyS0` (with
/// `kernel:`, `append:` must keep `console=ttyS0`, as its default does). On it,
/// either a getty that prints `login:` and then `Password:` (give `login:`, and qflow
/// types the user and the password), or a shell already running there (autologin, or
/// `init=/bin/sh`, or `init: minimal`, whose shell qflow starts itself; leave `login:` out). That shell must be a POSIX shell with `echo`,
/// `eval`, `base64` (coreutils or busybox) and `stty`: qflow types `echo` probes
/// until one is answered, turns the echo off (`stty -echo`) and sets the size from
/// `terminal:`, then types each of `commands` base64-encoded and runs it with `eval`
/// in that shell, between `echo` markers that carry its exit status; a command that
/// exits non-zero fails the step. Each `collect:` file is read back as `base64 FILE`.
/// The guest need not power off: once the commands and the collection are done,
/// qflow runs `sync` when the disks' writes are kept (`snapshot: false`,
/// `checkpoint: true`) and ends QEMU through its QMP socket (`quit`). A step with
/// `from_checkpoint:` skips the login: the restored shell is used as it was saved.
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
    /// With `init: minimal` its files join qflow's initramfs (e.g. the kernel's modules
    /// under `/lib/modules/RELEASE/`, from which the disk and ext4 drivers are loaded).
    #[serde(default)]
    pub initrd: Option<String>,
    /// Which init the guest runs: `system` (default: the system disk's own, e.g.
    /// systemd, with `login` at its getty) or `minimal`: qflow's initramfs mounts the
    /// `system` disk as root (`root=` of `append`, read-write unless `ro`; the disks'
    /// writes are discarded or kept as configured) and runs the commands in a root
    /// shell on the console, skipping the system's boot (seconds instead of a minute
    /// under TCG). Needs `kernel` with its disk driver, the root's file system,
    /// devtmpfs and initramfs support built in, and busybox-static on the host.
    #[serde(default)]
    pub init: Option<InitChoice>,
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
    /// The CPU model (`-cpu`): `max` gives TCG's widest instruction set (a
    /// workload built for AVX dies of SIGILL on the default model); `host` under KVM.
    #[serde(default)]
    pub cpu: Option<String>,
    /// TCG plugins: `-plugin PATH,NAME=VALUE,...` from `args: { NAME: VALUE }`
    /// (the plugin's `argv` holds `NAME=VALUE`), or `-plugin PATH,arg=A` from a list.
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
    /// Run each matrix point (or the one run) this many times, each in
    /// `<point>,repeat=K/` with `$repeat` set in the guest; tables give the mean,
    /// standard deviation and 95% confidence interval of the repeats.
    #[serde(default)]
    pub repeat: Option<u32>,
    /// Numbers taken from each run's files after the runs, by name:
    /// `{ from: FILE, regex: '...(one group)...' | json: /pointer | csv: column, unit, expect }`.
    /// `FILE` is `console.log`, `commands.json`, `qemu.log` or a collected file's name.
    #[serde(default)]
    pub metrics: BTreeMap<String, MetricSpec>,
}

impl StepFields for Boot {
    const KIND: &'static str = "boot";
    const SCHEMA_VERSION: u32 = 2;

    fn kind_tools() -> Vec<Tool> {
        vec![qemu(), qemu_img::tool(), debugfs(), minimal_init::busybox()]
    }

    fn kind_needs() -> Vec<HostNeed> {
        vec![
            HostNeed::Kvm(KvmUse::Preferred),
            HostNeed::Kvm(KvmUse::Required),
        ]
    }
}

fn qemu() -> Tool {
    Tool::new(command_line::QEMU, &["--version"], "qemu-system-x86")
}

/// `debugfs`, which reads collected files out of a disk image.
fn debugfs() -> Tool {
    Tool::new("debugfs", &["-V"], "e2fsprogs")
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

    /// The runs: one, or one per matrix combination, each `repeat` times.
    fn runs(&self) -> Vec<(Option<String>, Params)> {
        let points = matrix::expand(&self.matrix);
        let n = self.repeat.unwrap_or(1);
        if n <= 1 {
            return points;
        }
        points
            .into_iter()
            .flat_map(|(label, params)| {
                (1..=n).map(move |k| {
                    let label = match &label {
                        Some(l) => format!("{l},{}={k}", matrix::REPEAT),
                        None => format!("{}={k}", matrix::REPEAT),
                    };
                    let mut params = params.clone();
                    params.push((matrix::REPEAT.to_string(), k.to_string()));
                    (Some(label), params)
                })
            })
            .collect()
    }

    /// The runs as the metrics see them: matrix values apart from the repeat number.
    fn metric_runs(&self, out_dir: &std::path::Path) -> Vec<crate::metrics::RunDir> {
        self.runs()
            .into_iter()
            .map(|(label, params)| {
                let repeat = params
                    .iter()
                    .find(|(k, _)| k == matrix::REPEAT && self.repeat.unwrap_or(1) > 1)
                    .and_then(|(_, v)| v.parse().ok());
                let params = params
                    .into_iter()
                    .filter(|(k, _)| !(k == matrix::REPEAT && repeat.is_some()))
                    .collect();
                crate::metrics::RunDir {
                    dir: match &label {
                        Some(l) => out_dir.join(l),
                        None => out_dir.to_path_buf(),
                    },
                    run: label.unwrap_or_default(),
                    params,
                    repeat,
                }
            })
            .collect()
    }

    /// The outputs of one run, relative to that run's directory.
    fn run_outputs(&self) -> Vec<String> {
        self.run_output_roles()
            .into_iter()
            .map(|(o, _)| o)
            .collect()
    }

    /// The outputs of one run with their roles: the console and QEMU logs and the
    /// commands' record, what `collect:` copied out (the run's results), the kept
    /// disk overlays and a checkpoint's memory and record (machine state).
    ///
    /// The session (the console from qflow's first probe on) is a log under
    /// `icount` and in a run restored from a checkpoint (which prints no boot, only
    /// the answers to qflow's commands, typed with the echo off); without `icount`
    /// the guest's timing is the host's, so it is machine state. The whole console
    /// is a log only where the boot repeats too: under `icount` with no disk (a
    /// guest that reads a disk waits for the host's reads, which the instruction
    /// count does not pace, and its boot messages follow them).
    fn run_output_roles(&self) -> Vec<(String, OutputRole)> {
        let restored = self.from_checkpoint.is_some();
        let diskless = self.system.is_none() && self.disks.is_empty();
        let role = |log: bool| {
            if log {
                OutputRole::Log
            } else {
                OutputRole::MachineState
            }
        };
        let console = role(restored || (self.icount.is_some() && diskless));
        let session = role(restored || self.icount.is_some());
        let mut out = vec![
            (CONSOLE_LOG.to_string(), console),
            (SESSION_LOG.to_string(), session),
            (COMMANDS_JSON.to_string(), OutputRole::Log),
            (QEMU_LOG.to_string(), OutputRole::Log),
        ];
        out.extend(
            self.collect
                .iter()
                .map(|c| (collected_name(c.path()), OutputRole::Result)),
        );
        if self.writes_kept() {
            out.extend(
                // A disk the guest wrote: its bytes depend on the guest's timing.
                self.overlay_names()
                    .into_iter()
                    .map(|o| (o, OutputRole::MachineState)),
            );
        }
        if self.checkpoint {
            out.push((MEMORY_SNAPSHOT.to_string(), OutputRole::MachineState));
            out.push((RECORD.to_string(), OutputRole::MachineState));
        }
        out
    }

    /// How this boot may use KVM: not at all when it asks for TCG, needs a
    /// TCG-only feature (`icount`, `plugins`) or restores a checkpoint (which runs
    /// under its checkpoint's accelerator).
    fn kvm_use(&self) -> Option<KvmUse> {
        match self.accel {
            Some(AccelChoice::Kvm) => Some(KvmUse::Required),
            Some(AccelChoice::Tcg) => None,
            Some(AccelChoice::Auto) | None => (self.needs_tcg().is_none()
                && self.from_checkpoint.is_none())
            .then_some(KvmUse::Preferred),
        }
    }

    /// The fields naming a host file (a value with a `/`), with their paths. A
    /// plugin path built from an upstream step (`${{ steps.x }}/lib.so`) or a
    /// matrix value is not a host file: the step keys those by the upstream output.
    fn local_files(&self) -> Vec<(String, String)> {
        let mut fields: Vec<(String, &String)> = Vec::new();
        for (field, value) in [
            ("system", &self.system),
            ("kernel", &self.kernel),
            ("initrd", &self.initrd),
        ] {
            if let Some(v) = value {
                fields.push((field.to_string(), v));
            }
        }
        for (i, d) in self.disks.iter().enumerate() {
            fields.push((format!("disks[{i}]"), d));
        }
        for (i, p) in self.plugins.iter().enumerate() {
            fields.push((format!("plugins[{i}].path"), &p.path));
        }
        fields
            .into_iter()
            .filter(|(_, v)| matches!(source(v), Source::Path(_)) && !v.contains("{{"))
            .map(|(f, v)| (f, v.clone()))
            .collect()
    }

    fn disk_count(&self) -> usize {
        usize::from(self.system.is_some()) + self.disks.len()
    }
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

    fn metrics(&self) -> BTreeMap<String, MetricSpec> {
        self.metrics.clone()
    }

    fn matrix_axes(&self) -> Vec<String> {
        self.matrix.keys().cloned().collect()
    }

    fn output_roles(&self) -> Vec<(String, OutputRole)> {
        let per_run = self.run_output_roles();
        let mut out = Vec::new();
        for (label, _) in self.runs() {
            for (o, role) in &per_run {
                out.push((
                    match &label {
                        Some(l) => format!("{l}/{o}"),
                        None => o.clone(),
                    },
                    *role,
                ));
            }
        }
        if self.minimal_init() {
            out.push((minimal_init::INITRAMFS.to_string(), OutputRole::Artifact));
        }
        out.extend(crate::metrics::outputs(&self.metrics));
        out
    }

    fn tools(&self) -> Vec<Tool> {
        let mut tools = vec![qemu()];
        if self.writes_kept() {
            tools.push(qemu_img::tool());
        }
        if self.collect.iter().any(|c| matches!(c, Collect::Disk(_))) {
            tools.push(debugfs());
        }
        if self.minimal_init() {
            tools.push(minimal_init::busybox());
        }
        tools
    }

    /// KVM, when the boot may use it: `qflow doctor` probes it; it never stops a
    /// run here (a preferred KVM falls back to TCG; a required one fails when QEMU
    /// starts).
    fn requirements(&self, _ctx: &CheckContext) -> Vec<Requirement> {
        self.kvm_use()
            .map(|kvm| {
                let need = HostNeed::Kvm(kvm);
                Requirement {
                    what: "KVM".into(),
                    present: crate::host::has(&need),
                    need,
                    fix:
                        "use `accel: auto` or `accel: tcg` on a host where KVM cannot boot a guest"
                            .into(),
                }
            })
            .into_iter()
            .collect()
    }

    fn secrets(&self) -> Vec<SecretUse> {
        self.login
            .iter()
            .filter_map(|l| l.password.used_as("login.password"))
            .collect()
    }

    fn check(&self, ctx: &CheckContext) -> Result<(), FieldError> {
        self.check_fields(ctx)?;
        self.check_init()
    }

    /// The host files the boot reads (a local kernel, initrd, image or plugin):
    /// inputs like any other, so a missing one is refused at load time, a
    /// changed one is named by `qflow plan`, and `qflow bundle` packs it.
    fn inputs(&self) -> Vec<Input> {
        self.local_files()
            .into_iter()
            .map(|(field, path)| Input::new(field, path))
            .collect()
    }

    fn extra_key(&self, ctx: &CheckContext) -> anyhow::Result<Vec<(String, String)>> {
        let mut key = Vec::new();
        if self.minimal_init() {
            key.push(minimal_init::key_material());
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
                l.push_str(&format!(" -plugin {}", command_line::plugin_option(&p)));
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
        let mut lines = if runs.len() > 1 {
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
        };
        lines.extend(self.plugin_warnings());
        lines
    }

    /// A matrix's runs beyond the first take their slots as tokens of the
    /// jobserver the engine gives the step.
    fn uses_jobserver(&self) -> bool {
        self.runs().len() > 1
    }

    fn default_jobs(&self) -> usize {
        self.runs().len().clamp(1, 2)
    }

    fn parts(&self) -> Vec<String> {
        self.part_labels()
    }

    fn run_part(&self, ctx: &mut RunContext, index: usize) -> anyhow::Result<()> {
        self.run_runs(ctx, Some(index))
    }

    fn finish_parts(&self, ctx: &mut RunContext) -> anyhow::Result<()> {
        let runs = self.metric_runs(ctx.out_dir());
        crate::metrics::record(ctx, &self.metrics, &runs)
    }

    fn run(&self, ctx: &mut RunContext) -> anyhow::Result<()> {
        self.run_runs(ctx, None)?;
        let out_dir = ctx.out_dir().to_path_buf();
        let runs = self.metric_runs(&out_dir);
        crate::metrics::record(ctx, &self.metrics, &runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use matrix::substitute;
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
    fn repeat_runs_each_matrix_point_again_in_its_own_directory() {
        let fields: serde_yaml::Value = serde_yaml::from_str(
            "kernel: /k\nmatrix: { size: [16, 64] }\nrepeat: 2\n\
             metrics: { ops: { from: console.log, regex: 'ops=([0-9]+)' } }",
        )
        .unwrap();
        let boot: Boot = serde_yaml::from_value(fields).unwrap();
        let labels: Vec<String> = boot.runs().into_iter().filter_map(|r| r.0).collect();
        assert_eq!(
            labels,
            [
                "size=16,repeat=1",
                "size=16,repeat=2",
                "size=64,repeat=1",
                "size=64,repeat=2"
            ]
        );
        let runs = boot.metric_runs(std::path::Path::new("/out"));
        assert_eq!(
            runs[3].params,
            BTreeMap::from([("size".into(), "64".into())])
        );
        assert_eq!(runs[3].repeat, Some(2));
        assert_eq!(runs[3].dir, std::path::Path::new("/out/size=64,repeat=2"));
        let outputs = boot.outputs();
        assert!(outputs.contains(&"size=64,repeat=2/console.log".to_string()));
        assert!(outputs.ends_with(&["metrics.json".into(), "metrics.csv".into()]));
    }

    #[test]
    fn a_metric_must_read_a_file_the_run_keeps() {
        let e = refused(
            "kernel: /k\ncollect: [/mnt/run.txt]\nmetrics: { ops: { from: results.txt, regex: '([0-9]+)' } }",
        );
        assert_eq!(e.field, "metrics.ops.from");
        assert!(e.message.contains("collect it"), "{}", e.message);
        let e = refused("kernel: /k\nmetrics: { ops: { from: console.log, regex: '[0-9]+' } }");
        assert_eq!(e.field, "metrics.ops.regex");
        let e = refused("kernel: /k\nrepeat: 0");
        assert_eq!(e.field, "repeat");
        let e = refused("kernel: /k\ncheckpoint: true\nrepeat: 3");
        assert!(
            e.message.contains("put `repeat` on the runs"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_step_using_every_field_parses_checks_keys_and_plans() {
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
            [
                "console.log",
                "session.log",
                "commands.json",
                "qemu.log",
                "results.txt"
            ]
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
        assert_eq!(outputs.len(), 4 * 5);
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
}
