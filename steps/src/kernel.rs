//! The `kernel` kind: build a Linux kernel out of tree, incrementally, with a
//! capped number of jobs, and hand `bzImage` to the steps that boot it.
//!
//! ```yaml
//! kernel:
//!   kind: kernel
//!   source: ./linux                  # or { tarball: PATH } or { url: URL, sha256: HEX }
//!   config: tinyconfig               # defconfig | tinyconfig | { oldconfig: { from: PATH } } | { file: PATH }
//!   fragments: [qemu-guest.config]   # merged with the tree's scripts/kconfig/merge_config.sh
//!   options: { EXT4_FS: y }          # on top of the fragments
//!   targets: [bzImage]
//!   clean: false                     # true: `make mrproper` in the build tree first
//! ```
//!
//! Design:
//! - **Out of tree, kept.** make runs with `O=` a build tree in the step's kept
//!   state directory, so the user's tree is never written and object files
//!   survive between runs: after a one-line edit the step costs make's own
//!   incremental build. The build tree is named by the source's identity (the
//!   tree's path, or the tarball's hash) and the compiler's version, so a
//!   different source or compiler starts from an empty tree; a configuration
//!   change reuses the tree, because kbuild tracks each object's `CONFIG_`
//!   dependencies itself (fixdep, `include/config/`), which is what makes
//!   `make olddefconfig && make` correct for kernel developers every day.
//! - **Jobs.** The step never passes `-jN` on make's command line: the engine
//!   hands make a GNU make jobserver in `MAKEFLAGS` (written as make itself
//!   writes it, see [`jobserver_flags_as_make_writes_them`]). Without `jobs:`
//!   the step starts with one slot and its make shares the run's slots
//!   (`--jobs`) through the run's jobserver: it grows into idle slots and gives
//!   them back as other steps need them (`engine/src/job_slots.rs`), unless
//!   [`safe_jobs`] (the smaller of the cores and available memory / 2 GiB) is
//!   below `--jobs`: then, as with `jobs: N`, it holds that many slots and a
//!   jobserver of its own.
//! - **Reproducible.** `KBUILD_BUILD_TIMESTAMP` (the HEAD commit's time in a git
//!   tree, else a fixed date), `KBUILD_BUILD_USER`, `KBUILD_BUILD_HOST` and
//!   `KBUILD_BUILD_VERSION` (kbuild counts builds in a tree otherwise) are
//!   pinned, unless the step's `env:` sets them.
//! - **Outputs** are `bzImage`, `vmlinux`, `System.map` and `config` (the
//!   final `.config`, named without its dot so it shows in listings). They are
//!   copies, never links into the build tree, which make rewrites in place.

mod compression;
mod config;
mod progress;
mod source;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, anyhow, bail};
use qflow_engine::context::quote_arg;
use qflow_engine::{
    CheckContext, FieldError, HostNeed, Input, OutputRole, Requirement, RunContext, Step,
    StepFields, Tool,
};
use schemars::JsonSchema;
use serde::Deserialize;

pub use config::{Config, OptionValue};
pub use source::Source;

use progress::MakeProgress;

/// `KBUILD_BUILD_TIMESTAMP` when the source is not a git checkout.
pub const FIXED_TIMESTAMP: &str = "Thu Jan  1 00:00:00 UTC 1970";
/// `KBUILD_BUILD_USER` and `KBUILD_BUILD_HOST`.
pub const BUILD_IDENTITY: &str = "qflow";

/// The step's outputs: where make leaves them in the build tree, and their names.
const OUTPUTS: [(&str, &str); 4] = [
    ("arch/x86/boot/bzImage", "bzImage"),
    ("vmlinux", "vmlinux"),
    ("System.map", "System.map"),
    (".config", "config"),
];

/// The stamp in the build tree that records the configuration's fingerprint.
const CONFIG_STAMP: &str = ".qflow-config-stamp";
/// The `options:` map, written as a fragment in the build tree.
const OPTIONS_FRAGMENT: &str = "qflow-options.config";

/// Build a Linux kernel (x86_64 `bzImage`) from a tree, a tarball or a URL.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// The kernel source: a tree (`./linux`), `{ tarball: PATH }` or `{ url: URL, sha256: HEX }`.
    pub source: Source,
    /// Where the configuration starts (default `defconfig`).
    #[serde(default)]
    pub config: Config,
    /// Kconfig fragments (`CONFIG_X=y` lines) merged onto the base, in order.
    #[serde(default)]
    pub fragments: Vec<String>,
    /// Options set last, e.g. `{ EXT4_FS: y, NR_CPUS: 4 }` (`CONFIG_` prefix optional).
    #[serde(default)]
    pub options: BTreeMap<String, OptionValue>,
    /// make targets (default `[bzImage]`); must include `bzImage` or `all`.
    #[serde(default = "default_targets")]
    pub targets: Vec<String>,
    /// `make mrproper` in the kept build tree before building: a clean build every run.
    #[serde(default)]
    pub clean: bool,
}

fn default_targets() -> Vec<String> {
    vec!["bzImage".to_string()]
}

impl StepFields for Kernel {
    const KIND: &'static str = "kernel";
    const SCHEMA_VERSION: u32 = 1;

    fn kind_tools() -> Vec<Tool> {
        let mut tools = build_tools();
        tools.extend(Source::all_tools());
        for c in compression::COMPRESSIONS {
            if !tools.contains(&c.tool()) {
                tools.push(c.tool());
            }
        }
        tools
    }

    /// libelf's headers always (objtool); OpenSSL's for configs that sign modules.
    fn kind_needs() -> Vec<HostNeed> {
        vec![
            libelf_headers(),
            HostNeed::File {
                what: "OpenSSL headers".into(),
                path: "/usr/include/openssl/ssl.h".into(),
                package: "libssl-dev".into(),
            },
        ]
    }
}

/// The toolchain every kernel build runs.
fn build_tools() -> Vec<Tool> {
    vec![
        Tool::new("make", &["--version"], "make"),
        Tool::new("gcc", &["--version"], "gcc"),
        Tool::new("ld", &["--version"], "binutils"),
        Tool::new("flex", &["--version"], "flex"),
        Tool::new("bison", &["--version"], "bison"),
        Tool::new("bc", &["--version"], "bc"),
    ]
}

/// x86_64 kernels build objtool, which needs libelf's headers.
fn libelf_headers() -> HostNeed {
    HostNeed::File {
        what: "libelf headers".into(),
        path: "/usr/include/gelf.h".into(),
        package: "libelf-dev".into(),
    }
}

/// The default job cap for a kernel build: the smaller of the CPU count and the
/// available memory in units of 2 GiB (a compile of a big kernel file can take
/// over 1 GiB; memory, not cores, makes a host unresponsive).
pub fn safe_jobs() -> usize {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let by_memory = mem_available()
        .map(|bytes| (bytes / (2 << 30)) as usize)
        .unwrap_or(cores);
    cores.min(by_memory).max(1)
}

/// `MemAvailable` from /proc/meminfo, in bytes.
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl Step for Kernel {
    fn inputs(&self) -> Vec<Input> {
        let mut inputs = self.source.inputs();
        match &self.config {
            Config::Oldconfig { from } => {
                inputs.push(Input::new("config.oldconfig.from", from.clone()))
            }
            Config::File(file) => inputs.push(Input::new("config.file", file.clone())),
            Config::Defconfig | Config::Tinyconfig => {}
        }
        for (i, f) in self.fragments.iter().enumerate() {
            inputs.push(Input::new(format!("fragments[{i}]"), f.clone()));
        }
        inputs
    }

    fn output_roles(&self) -> Vec<(String, OutputRole)> {
        OUTPUTS
            .iter()
            .map(|(_, name)| (name.to_string(), OutputRole::Artifact))
            .collect()
    }

    /// The compressor of the bzImage joins the toolchain when `options` choose
    /// one (`KERNEL_LZ4: y`): make runs it, and its version shapes the bzImage.
    fn tools(&self) -> Vec<Tool> {
        let mut tools = build_tools();
        tools.extend(self.source.tools());
        if let Some(c) = compression::chosen(&self.options)
            && !tools.contains(&c.tool())
        {
            tools.push(c.tool());
        }
        tools
    }

    fn requirements(&self, _ctx: &CheckContext) -> Vec<Requirement> {
        let need = libelf_headers();
        vec![Requirement {
            what: "libelf headers (`/usr/include/gelf.h`)".to_string(),
            present: crate::host::has(&need),
            need,
            fix: "apt-get install libelf-dev".to_string(),
        }]
    }

    fn check(&self, ctx: &CheckContext) -> Result<(), FieldError> {
        self.source.check(ctx)?;
        config::check(&self.config, &self.fragments, &self.options, ctx)?;
        check_targets(&self.targets)
    }

    fn extra_key(&self, ctx: &CheckContext) -> anyhow::Result<Vec<(String, String)>> {
        Ok(self.source.extra_key(ctx))
    }

    fn plan(&self, ctx: &CheckContext) -> Vec<String> {
        // Placeholders (`$QFLOW_STATE/...`) are shown as they are; real paths quoted.
        let shown = |path: &str| {
            if path.starts_with('$') {
                path.to_string()
            } else {
                quote_arg(path)
            }
        };
        let src = self.source.plan_dir(ctx);
        let o = "O=$QFLOW_STATE/build-<source>";
        let build = "$QFLOW_STATE/build-<source>";
        let make = |args: &[&str]| {
            let mut parts = vec![
                "make".to_string(),
                "-C".to_string(),
                shown(&src),
                o.to_string(),
            ];
            parts.extend(args.iter().map(|a| quote_arg(a)));
            parts.join(" ")
        };
        let mut lines = Vec::new();
        if self.clean {
            lines.push(make(&["mrproper"]));
        }
        match &self.config {
            Config::Defconfig => lines.push(make(&["defconfig"])),
            Config::Tinyconfig => lines.push(make(&["tinyconfig"])),
            Config::Oldconfig { from } => lines.push(format!(
                "cp {} {build}/.config",
                quote_arg(&ctx.resolve(from).display().to_string())
            )),
            Config::File(file) => lines.push(format!(
                "cp {} {build}/.config",
                quote_arg(&ctx.resolve(file).display().to_string())
            )),
        }
        if !self.fragments.is_empty() || !self.options.is_empty() {
            let mut merge = vec![
                shown(&format!("{src}/scripts/kconfig/merge_config.sh")),
                "-m".to_string(),
                "-O".to_string(),
                build.to_string(),
                format!("{build}/.config"),
            ];
            merge.extend(
                self.fragments
                    .iter()
                    .map(|f| quote_arg(&ctx.resolve(f).display().to_string())),
            );
            if !self.options.is_empty() {
                merge.push(format!("{build}/{OPTIONS_FRAGMENT}"));
            }
            lines.push(merge.join(" "));
        }
        lines.push(make(&["olddefconfig"]));
        let targets: Vec<&str> = self.targets.iter().map(String::as_str).collect();
        lines.push(make(&targets));
        lines
    }

    fn uses_jobserver(&self) -> bool {
        true
    }

    /// The kept build tree lives in this machine's state directory, never in the cache:
    /// a result from elsewhere (a remote cache) gives the kernel and its exports, so the
    /// next build here compiles the whole tree once.
    fn run_note(&self, state_dir: &Path) -> Option<String> {
        (!has_build_tree(state_dir)).then(|| "no local build tree: full build".to_string())
    }

    fn default_jobs(&self) -> usize {
        safe_jobs()
    }

    fn shares_run_slots(&self) -> bool {
        true
    }

    /// A kernel build is the longest step of most workflows: minutes.
    fn expected_ms(&self) -> u64 {
        300_000
    }

    fn run(&self, ctx: &mut RunContext) -> anyhow::Result<()> {
        let src = self.source.prepare(ctx)?;
        for (k, v) in source::notes(&src) {
            ctx.note(&k, &v);
        }
        let compiler = first_line(&ctx.run_capture({
            let mut c = ctx.command("gcc");
            c.arg("--version");
            c
        })?);
        let build = build_tree(ctx, &src.identity, &compiler)?;
        let timestamp = src
            .timestamp
            .clone()
            .unwrap_or_else(|| FIXED_TIMESTAMP.to_string());
        let make = MakeRunner {
            src: src.dir.clone(),
            build: build.clone(),
            timestamp: timestamp.clone(),
        };
        ctx.log(&format!(
            "kernel tree {}, build tree {}, {} job slot(s)",
            src.dir.display(),
            build.display(),
            ctx.jobs()
        ));

        let stamp = build.join(CONFIG_STAMP);
        if self.clean {
            let _ = std::fs::remove_file(&stamp);
            ctx.progress("make mrproper");
            make.run(ctx, &["mrproper"])?;
        }

        let fragments = self.read_fragments(ctx)?;
        let parts = self.config_parts(ctx, &src, &compiler, &fragments)?;
        let fingerprint = config::fingerprint(&parts, &config::tree_files(&src.dir, &build));
        let current = std::fs::read_to_string(&stamp).unwrap_or_default();
        if current.trim() == fingerprint && build.join(".config").is_file() {
            ctx.log("configuration inputs unchanged: keeping the build tree's .config");
        } else {
            let _ = std::fs::remove_file(&stamp);
            self.configure(ctx, &make, &fragments)?;
            write_stamp(&stamp, &fingerprint)?;
        }

        ctx.progress(&format!("make {}", self.targets.join(" ")));
        let targets: Vec<&str> = self.targets.iter().map(String::as_str).collect();
        let started = std::time::Instant::now();
        let summary = make.build(ctx, &targets)?;
        ctx.log(&format!("{summary} (make took {:.1?})", started.elapsed()));

        for (from, name) in OUTPUTS {
            let path = build.join(from);
            if !path.is_file() {
                bail!(
                    "make finished but did not produce `{from}` in {}: is `bzImage` among `targets`?",
                    build.display()
                );
            }
            std::fs::copy(&path, ctx.out_dir().join(name))
                .with_context(|| format!("cannot copy {} to the step's output", path.display()))?;
        }

        // kbuild has now listed the Kconfig files it read: fingerprint them too,
        // so the next run can skip configuration only when none changed.
        let fingerprint = config::fingerprint(&parts, &config::tree_files(&src.dir, &build));
        write_stamp(&stamp, &fingerprint)?;
        ctx.note("kbuild_build_timestamp", &timestamp);
        if let Ok(release) = std::fs::read_to_string(build.join("include/config/kernel.release")) {
            ctx.note("kernel_release", release.trim());
        }
        Ok(())
    }
}

impl Kernel {
    /// The fragments' names (as written) and contents, in order.
    fn read_fragments(&self, ctx: &RunContext) -> anyhow::Result<Vec<(String, String)>> {
        self.fragments
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(ctx.resolve(f))
                    .with_context(|| format!("cannot read fragment `{f}`"))?;
                Ok((f.clone(), text))
            })
            .collect()
    }

    /// Everything the configuration depends on besides the tree's own files.
    fn config_parts(
        &self,
        ctx: &RunContext,
        src: &source::PreparedSource,
        compiler: &str,
        fragments: &[(String, String)],
    ) -> anyhow::Result<Vec<(&'static str, String)>> {
        let base = match &self.config {
            Config::Defconfig => "defconfig".to_string(),
            Config::Tinyconfig => "tinyconfig".to_string(),
            Config::Oldconfig { from } => format!(
                "oldconfig\n{}",
                std::fs::read_to_string(ctx.resolve(from))
                    .with_context(|| format!("cannot read `{from}`"))?
            ),
            Config::File(file) => format!(
                "file\n{}",
                std::fs::read_to_string(ctx.resolve(file))
                    .with_context(|| format!("cannot read `{file}`"))?
            ),
        };
        let mut parts = vec![
            ("source", src.identity.clone()),
            ("compiler", compiler.to_string()),
            ("base", base),
        ];
        for (_, text) in fragments {
            parts.push(("fragment", text.clone()));
        }
        parts.push(("options", config::options_fragment(&self.options)));
        Ok(parts)
    }

    /// Write the build tree's `.config` from the base, fragments and options,
    /// then check that every requested value made it. When the result equals the
    /// previous `.config`, its old mtime is restored so make sees no change.
    fn configure(
        &self,
        ctx: &mut RunContext,
        make: &MakeRunner,
        fragments: &[(String, String)],
    ) -> anyhow::Result<()> {
        let dot_config = make.build.join(".config");
        let previous = std::fs::read(&dot_config).ok().zip(
            std::fs::metadata(&dot_config)
                .and_then(|m| m.modified())
                .ok(),
        );
        ctx.progress("configuring");
        match &self.config {
            Config::Defconfig => make.run(ctx, &["defconfig"])?,
            Config::Tinyconfig => make.run(ctx, &["tinyconfig"])?,
            Config::Oldconfig { from } | Config::File(from) => {
                std::fs::copy(ctx.resolve(from), &dot_config)
                    .with_context(|| format!("cannot copy `{from}` into the build tree"))?;
            }
        }
        if !self.fragments.is_empty() || !self.options.is_empty() {
            let mut merge = ctx.command(make.src.join("scripts/kconfig/merge_config.sh"));
            // merge_config.sh makes its temporary files in the current directory: the
            // build tree, never the user's source tree (an input: a file that comes and
            // goes there while the step runs voids its result).
            merge.current_dir(&make.build);
            merge.args(["-m", "-O"]).arg(&make.build).arg(&dot_config);
            for f in &self.fragments {
                merge.arg(ctx.resolve(f));
            }
            if !self.options.is_empty() {
                let path = make.build.join(OPTIONS_FRAGMENT);
                std::fs::write(&path, config::options_fragment(&self.options))
                    .with_context(|| format!("cannot write {}", path.display()))?;
                merge.arg(path);
            }
            make.pin_env(&mut merge);
            ctx.run(merge)
                .context("cannot merge the kconfig fragments")?;
        }
        make.run(ctx, &["olddefconfig"])?;

        let final_config = std::fs::read_to_string(&dot_config)
            .with_context(|| format!("configuration left no {}", dot_config.display()))?;
        let problems = config::unmet(&config::requests(fragments, &self.options), &final_config);
        if !problems.is_empty() {
            bail!(
                "the kernel configuration lacks what the step asks for (Kconfig drops an option whose `depends on` is off; \
                 add the missing dependencies to `options` or a fragment, e.g. CONFIG_64BIT=y, CONFIG_TTY=y, CONFIG_PCI=y):\n    {}",
                problems.join("\n    ")
            );
        }
        if let Some((old, mtime)) = previous
            && old == final_config.as_bytes()
        {
            let f = std::fs::File::options().write(true).open(&dot_config)?;
            f.set_modified(mtime)
                .with_context(|| format!("cannot restore the mtime of {}", dot_config.display()))?;
            ctx.log("configuration re-made and unchanged: make will see no change");
        }
        Ok(())
    }
}

/// Runs make on the kernel tree with `O=` the build tree and the pinned environment.
struct MakeRunner {
    src: PathBuf,
    build: PathBuf,
    timestamp: String,
}

impl MakeRunner {
    fn command(&self, ctx: &RunContext, targets: &[&str]) -> Command {
        let mut cmd = ctx.command("make");
        // No -j: make takes its slots from the jobserver the context put in MAKEFLAGS.
        cmd.arg("-C")
            .arg(&self.src)
            .arg(format!("O={}", self.build.display()));
        cmd.args(targets);
        self.pin_env(&mut cmd);
        jobserver_flags_as_make_writes_them(&mut cmd, ctx.jobs());
        cmd
    }

    /// Pin the KBUILD_BUILD_* identity and the C locale (so compiler messages
    /// read `error:`), leaving whatever the step's `env:` sets.
    fn pin_env(&self, cmd: &mut Command) {
        let set: Vec<String> = cmd
            .get_envs()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        let pins = [
            ("KBUILD_BUILD_TIMESTAMP", self.timestamp.as_str()),
            ("KBUILD_BUILD_USER", BUILD_IDENTITY),
            ("KBUILD_BUILD_HOST", BUILD_IDENTITY),
            ("KBUILD_BUILD_VERSION", "1"),
            ("LC_ALL", "C"),
        ];
        for (k, v) in pins {
            if !set.iter().any(|s| s == k) {
                cmd.env(k, v);
            }
        }
        // qflow owns where the configuration lives: the build tree's `.config`.
        cmd.env_remove("KCONFIG_CONFIG");
    }

    fn run(&self, ctx: &mut RunContext, targets: &[&str]) -> anyhow::Result<()> {
        let cmd = self.command(ctx, targets);
        let mut progress = MakeProgress::default();
        ctx.run_lines(cmd, &mut |line| progress.line(line))
            .map_err(|e| with_errors(e, &progress))
    }

    /// Build `targets`; the summary names what make compiled.
    fn build(&self, ctx: &mut RunContext, targets: &[&str]) -> anyhow::Result<String> {
        let cmd = self.command(ctx, targets);
        let mut progress = MakeProgress::default();
        ctx.run_lines(cmd, &mut |line| progress.line(line))
            .map_err(|e| with_errors(e, &progress))?;
        Ok(progress.summary())
    }
}

/// Rewrite the jobserver's `MAKEFLAGS` the way GNU make writes it for its own
/// sub-makes: `-jN --jobserver-auth=R,W` rather than the bare `-j` the engine's
/// jobserver client writes. Kbuild hands its `tools/` sub-make (objtool)
/// `MAKEFLAGS="$(filter --j% -j,$(MAKEFLAGS))"`: a bare `-j` survives that
/// filter and makes the sub-make drop the jobserver for unlimited jobs
/// ("-j0 forced in makefile: resetting jobserver mode"); `-jN` does not survive
/// it, and `-jN` beside `--jobserver-auth` in the environment keeps make a client.
fn jobserver_flags_as_make_writes_them(cmd: &mut Command, slots: usize) {
    let flags = cmd
        .get_envs()
        .find(|(k, _)| *k == "MAKEFLAGS")
        .and_then(|(_, v)| v)
        .map(|v| v.to_string_lossy().into_owned());
    let Some(flags) = flags.filter(|f| f.contains("--jobserver-auth=")) else {
        return;
    };
    let fixed: Vec<String> = flags
        .split_whitespace()
        .map(|w| {
            if w == "-j" {
                format!("-j{slots}")
            } else {
                w.to_string()
            }
        })
        .collect();
    let fixed = fixed.join(" ");
    cmd.env("MAKEFLAGS", &fixed);
    cmd.env("MFLAGS", &fixed);
}

/// Put the compiler's error lines in front of make's failure.
fn with_errors(e: anyhow::Error, progress: &MakeProgress) -> anyhow::Error {
    if progress.errors.is_empty() {
        e
    } else {
        anyhow!(
            "the kernel does not compile:\n    {}\n{e:#}",
            progress.errors.join("\n    ")
        )
    }
}

/// Whether the step's state directory holds a configured build tree (of any source or
/// compiler: which one `run` keeps needs the compiler's version, too slow for `plan`).
fn has_build_tree(state_dir: &Path) -> bool {
    std::fs::read_dir(state_dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            e.file_name().to_string_lossy().starts_with("build-")
                && e.path().join(".config").is_file()
        })
    })
}

/// The kept build tree for this source and compiler; other build trees of the
/// step (another source, an older compiler) are removed first.
fn build_tree(ctx: &RunContext, source_identity: &str, compiler: &str) -> anyhow::Result<PathBuf> {
    let id = blake3::hash(format!("{source_identity}\n{compiler}").as_bytes()).to_hex();
    let build = ctx.state_dir().join(format!("build-{}", &id[..16]));
    if let Ok(entries) = std::fs::read_dir(ctx.state_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("build-") && entry.path() != build {
                ctx.log(&format!(
                    "removing the build tree of another source or compiler: {}",
                    entry.path().display()
                ));
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    std::fs::create_dir_all(&build)
        .with_context(|| format!("cannot create {}", build.display()))?;
    Ok(build)
}

fn write_stamp(path: &Path, fingerprint: &str) -> anyhow::Result<()> {
    std::fs::write(path, format!("{fingerprint}\n"))
        .with_context(|| format!("cannot write {}", path.display()))
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").trim().to_string()
}

/// Targets are make goals, never flags or variable assignments: qflow owns `O=`
/// and the job count.
fn check_targets(targets: &[String]) -> Result<(), FieldError> {
    if targets.is_empty() {
        return Err(FieldError::new("targets", "give at least `bzImage`"));
    }
    for (i, t) in targets.iter().enumerate() {
        let field = format!("targets[{i}]");
        let plain = !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_./+-".contains(c));
        if !plain || t.starts_with('-') {
            return Err(FieldError::new(
                field,
                format!(
                    "`{t}` is not a make target: flags and variables are not allowed here (qflow sets `O=` and the job count itself)"
                ),
            ));
        }
        if t.ends_with("config") {
            return Err(FieldError::new(
                field,
                format!("`{t}` is a configuration target: use the `config` field"),
            ));
        }
        if ["clean", "mrproper", "distclean"].contains(&t.as_str()) {
            return Err(FieldError::new(
                field,
                format!("`{t}` wipes the build tree: use `clean: true`"),
            ));
        }
    }
    if !targets.iter().any(|t| t == "bzImage" || t == "all") {
        return Err(FieldError::new(
            "targets",
            "`targets` must include `bzImage` (or `all`): the step's output is the bzImage",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
