//! The `customize` kind: the hand customization of a system image
//! (root password, packages, no unattended upgrades, files, guest commands) as a step.
//!
//! It never touches the upstream image: its output is a qcow2 overlay whose backing
//! file is the upstream image by a *relative* path (`../<upstream tree>/image.qcow2`,
//! valid both in the engine's temporary output dir and in the final tree, and after
//! the cache moves). When the upstream disk is one ext4 partition (what `debootstrap`
//! builds) and qflow runs as root, virt-customize works on a scratch overlay and the
//! output is rebuilt from the customized tree, so two builds give the same bytes
//! ([`rebuild`]; root's password hashed with a derived salt, [`root_password`]);
//! otherwise virt-customize works on the output overlay itself, and the log says why.
//!
//! Operations run in this order, whatever the order of the fields: `install`,
//! `uninstall`, `purge_unattended_upgrades`, `copy_in`, `write`, `commands` (so files
//! written by the user override package defaults, and the user's own commands see
//! everything else done); virt-customize sets the root password last.
//!
//! Secrets: a rebuilt image gets root's hash from the host's crypt(3), the password
//! on perl's stdin; in place, the password reaches virt-customize as
//! `--root-password file:PATH` of a 0600 file in `/dev/shm` removed afterwards
//! ([`crate::secret`]). The key holds its blake3. `write` contents are uploaded from files, never put in argv.
//!
//! libguestfs runs with `LIBGUESTFS_BACKEND=direct` and, unless the environment says
//! otherwise, `LIBGUESTFS_BACKEND_SETTINGS=force_tcg`: on hosts where KVM exists but
//! cannot boot a kernel (nested virtualization) the appliance would otherwise hang or abort.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use qflow_engine::{
    CheckContext, FieldError, HostNeed, Input, OutputRole, Requirement, RunContext, SecretUse,
    Step, StepFields, StepRef, Tool,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::image_file::{QCOW2_IMAGE, upstream_image};
use crate::package_name::check_packages;
use crate::qemu_img;
use crate::secret::{Secret, SecretValue};

mod installed_packages;
mod rebuild;
mod root_password;

use installed_packages::InstalledPackages;
use root_password::RootPassword;

/// Customize an upstream step's system image with virt-customize; the result is a new
/// qcow2 image backed by the upstream one, which stays unchanged.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Customize {
    /// The upstream step whose image is customized.
    pub image: String,
    /// Root's password: `{ file: PATH }`, `{ env: NAME }`, `locked` or `random`
    /// (`random` is kept in the step's state directory, file `root-password`).
    #[serde(default)]
    pub root_password: Option<Secret>,
    /// Debian packages to install (apt inside the guest; needs the guest's mirror).
    #[serde(default)]
    pub install: Vec<String>,
    /// Debian packages to remove (`apt-get remove`; apt must know each one).
    #[serde(default)]
    pub uninstall: Vec<String>,
    /// Purge `unattended-upgrades` and set the APT::Periodic switches to "0" in
    /// `/etc/apt/apt.conf.d/10periodic` and `20auto-upgrades`.
    #[serde(default)]
    pub purge_unattended_upgrades: bool,
    /// Host files or directories copied into guest directories (created if missing).
    #[serde(default)]
    pub copy_in: Vec<CopyIn>,
    /// Guest files written with the given content (parent directories created).
    #[serde(default)]
    pub write: Vec<WriteFile>,
    /// The user's own guest shell command lines, run by the guest's `/bin/sh` last,
    /// in order (virt-customize `--run-command`). qflow does not inspect them.
    #[serde(default)]
    pub commands: Vec<String>,
}

/// One `copy_in` entry: host path `from` into guest directory `to`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CopyIn {
    /// A host file or directory, relative to the workflow's directory.
    pub from: String,
    /// An absolute guest directory.
    pub to: String,
}

/// One `write` entry: guest file `path` gets exactly `content`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFile {
    /// An absolute guest path.
    pub path: String,
    pub content: String,
}

impl StepFields for Customize {
    const KIND: &'static str = "customize";
    // 2: bit-identical images (rebuilt from the customized, normalized tree).
    const SCHEMA_VERSION: u32 = 2;

    /// `virt-customize`, and `supermin`, which libguestfs runs to build its appliance;
    /// `guestfish`, `sfdisk` and e2fsprogs rebuild the image from its tree.
    fn kind_tools() -> Vec<Tool> {
        let mut tools = tools();
        tools.push(Tool::new("supermin", &["--version"], "supermin"));
        tools
    }

    fn kind_needs() -> Vec<HostNeed> {
        vec![HostNeed::HostKernel]
    }
}

/// The programs every customize step may run.
fn tools() -> Vec<Tool> {
    vec![
        Tool::new("virt-customize", &["--version"], "libguestfs-tools"),
        Tool::new("guestfish", &["--version"], "libguestfs-tools"),
        Tool::new("mke2fs", &["-V"], "e2fsprogs"),
        Tool::new("sfdisk", &["--version"], "fdisk"),
        qemu_img::tool(),
    ]
}

/// The guest's dpkg database, which says what is installed.
const DPKG_STATUS: &str = "/var/lib/dpkg/status";

/// What `purge_unattended_upgrades` writes: the recipe's switches, in both files it names.
const APT_PERIODIC_OFF: &str =
    "APT::Periodic::Update-Package-Lists \"0\";\nAPT::Periodic::Unattended-Upgrade \"0\";\n";
const APT_PERIODIC_FILES: [&str; 2] = [
    "/etc/apt/apt.conf.d/10periodic",
    "/etc/apt/apt.conf.d/20auto-upgrades",
];
/// Purge only when installed: `apt-get purge` of a package apt does not know fails.
const PURGE_UNATTENDED_UPGRADES: &str = "if dpkg -s unattended-upgrades >/dev/null 2>&1; then \
     DEBIAN_FRONTEND=noninteractive apt-get -y -q purge unattended-upgrades; fi";

/// virt-customize splits `--copy-in`/`--upload` arguments at the first colon.
fn check_guest_path(field: &str, path: &str) -> Result<(), FieldError> {
    if !path.starts_with('/') {
        return Err(FieldError::new(
            field,
            format!("`{path}` must be an absolute guest path (starting with `/`)"),
        ));
    }
    if path.contains('\0') || path.contains('\n') {
        return Err(FieldError::new(
            field,
            "a guest path cannot hold a NUL or newline",
        ));
    }
    Ok(())
}

impl Customize {
    /// Where a `random` root password is kept between runs.
    fn random_password_store(state_dir: &Path) -> PathBuf {
        state_dir.join("root-password")
    }

    /// The virt-customize operations, in the order they run. `upload_dir` holds the
    /// files for `write` and the APT switches; `password_file` the secret.
    fn operations(&self, upload_dir: &Path, password_file: Option<&Path>) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        match (&self.root_password, password_file) {
            (Some(Secret::Locked), _) => args.extend(["--root-password".into(), "disabled".into()]),
            (Some(_), Some(f)) => {
                args.extend(["--root-password".into(), format!("file:{}", f.display())])
            }
            _ => {}
        }
        args.extend(self.file_operations(upload_dir));
        args
    }

    /// The operations other than the root password, in the order they run.
    fn file_operations(&self, upload_dir: &Path) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        if !self.install.is_empty() {
            args.extend(["--install".into(), self.install.join(",")]);
        }
        if !self.uninstall.is_empty() {
            args.extend(["--uninstall".into(), self.uninstall.join(",")]);
        }
        if self.purge_unattended_upgrades {
            args.extend(["--run-command".into(), PURGE_UNATTENDED_UPGRADES.into()]);
            args.extend(["--mkdir".into(), "/etc/apt/apt.conf.d".into()]);
            for (i, path) in APT_PERIODIC_FILES.iter().enumerate() {
                args.extend([
                    "--upload".into(),
                    format!("{}:{path}", upload_dir.join(format!("apt-{i}")).display()),
                ]);
            }
        }
        for c in &self.copy_in {
            args.extend([
                "--mkdir".into(),
                c.to.clone(),
                "--copy-in".into(),
                format!("{}:{}", c.from, c.to),
            ]);
        }
        for (i, w) in self.write.iter().enumerate() {
            if let Some(parent) = Path::new(&w.path).parent().filter(|p| *p != Path::new("/")) {
                args.extend(["--mkdir".into(), parent.display().to_string()]);
            }
            args.extend([
                "--upload".into(),
                format!(
                    "{}:{}",
                    upload_dir.join(format!("write-{i}")).display(),
                    w.path
                ),
            ]);
        }
        for c in &self.commands {
            args.extend(["--run-command".into(), c.clone()]);
        }
        args
    }

    /// Write the files `--upload` sends: the `write` contents and the APT switches.
    fn prepare_uploads(&self, dir: &Path) -> anyhow::Result<()> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("cannot clear {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        if self.purge_unattended_upgrades {
            for i in 0..APT_PERIODIC_FILES.len() {
                write_file(&dir.join(format!("apt-{i}")), APT_PERIODIC_OFF)?;
            }
        }
        for (i, w) in self.write.iter().enumerate() {
            write_file(&dir.join(format!("write-{i}")), &w.content)?;
        }
        Ok(())
    }
}

/// Write one file that `--upload` sends into the guest.
fn write_file(path: &Path, content: &str) -> anyhow::Result<()> {
    std::fs::write(path, content).with_context(|| format!("cannot write {}", path.display()))
}

/// Removes a directory when dropped (the upload files), also on error.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Step for Customize {
    fn consumes_secret(&self) -> bool {
        // `random` too: the image holds the hash of a password only this host knows.
        self.root_password.as_ref().is_some_and(|p| p.is_read())
    }

    fn runs_only_here(&self) -> Option<String> {
        match &self.root_password {
            Some(Secret::Env(name)) => Some(format!(
                "its `root_password` comes from the environment variable `{name}`, which must not travel to a node"
            )),
            _ => None,
        }
    }

    fn references(&self) -> Vec<StepRef> {
        vec![StepRef::new("image", &self.image)]
    }

    fn inputs(&self) -> Vec<Input> {
        self.copy_in
            .iter()
            .enumerate()
            .map(|(i, c)| Input::new(format!("copy_in[{i}].from"), c.from.clone()))
            .collect()
    }

    fn output_roles(&self) -> Vec<(String, OutputRole)> {
        vec![(QCOW2_IMAGE.to_string(), OutputRole::Image)]
    }

    fn tools(&self) -> Vec<Tool> {
        tools()
    }

    fn requirements(&self, _ctx: &CheckContext) -> Vec<Requirement> {
        let need = HostNeed::HostKernel;
        vec![Requirement {
            what: "a Linux kernel in /boot for libguestfs's appliance".into(),
            present: crate::host::has(&need),
            need,
            fix: "install one: `apt-get install linux-image-amd64` (supermin builds the appliance from it)".into(),
        }]
    }

    fn secrets(&self) -> Vec<SecretUse> {
        self.root_password
            .iter()
            .filter_map(|s| s.used_as("root_password"))
            .collect()
    }

    fn check(&self, ctx: &CheckContext) -> Result<(), FieldError> {
        if self.image.is_empty() {
            return Err(FieldError::new(
                "image",
                "`image` needs the name of the step whose image is customized",
            ));
        }
        if let Some(secret) = &self.root_password {
            secret.check("root_password", ctx)?;
        }
        check_packages("install", &self.install)?;
        check_packages("uninstall", &self.uninstall)?;
        for (i, c) in self.copy_in.iter().enumerate() {
            let field = format!("copy_in[{i}].from");
            if c.from.is_empty() {
                return Err(FieldError::new(
                    field,
                    "`from` needs a host file or directory",
                ));
            }
            if c.from.contains(':') {
                return Err(FieldError::new(
                    field,
                    format!(
                        "`{}` holds a colon, which virt-customize cannot copy; rename it or link it",
                        c.from
                    ),
                ));
            }
            if !ctx.resolve(&c.from).exists() {
                return Err(FieldError::new(
                    field,
                    format!("`{}` does not exist", c.from),
                ));
            }
            check_guest_path(&format!("copy_in[{i}].to"), &c.to)?;
        }
        for (i, w) in self.write.iter().enumerate() {
            check_guest_path(&format!("write[{i}].path"), &w.path)?;
            if w.path.ends_with('/') {
                return Err(FieldError::new(
                    format!("write[{i}].path"),
                    format!("`{}` names a directory, not a file", w.path),
                ));
            }
        }
        for (i, c) in self.commands.iter().enumerate() {
            if c.trim().is_empty() {
                return Err(FieldError::new(
                    format!("commands[{i}]"),
                    "an empty guest command line",
                ));
            }
        }
        Ok(())
    }

    fn extra_key(&self, ctx: &CheckContext) -> anyhow::Result<Vec<(String, String)>> {
        match &self.root_password {
            Some(secret) => secret.key_material("root_password", &ctx.work_dir),
            None => Ok(Vec::new()),
        }
    }

    fn plan(&self, _ctx: &CheckContext) -> Vec<String> {
        let quote = |args: &[String]| {
            args.iter()
                .map(|a| qflow_engine::context::quote_arg(a))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut vc = vec![
            "virt-customize".to_string(),
            "--format".into(),
            "qcow2".into(),
            "-a".into(),
            QCOW2_IMAGE.into(),
        ];
        vc.extend(self.operations(
            Path::new("<uploads>"),
            Some(Path::new("<0600 password file>")),
        ));
        vec![
            qemu_img::overlay_argv(
                &format!("../<{}>/image.*", self.image),
                "<format>",
                QCOW2_IMAGE,
                None,
            )
            .join(" "),
            quote(&vc),
            "when the upstream disk is one ext4 partition and qflow runs as root: the above on a \
             scratch overlay, then guestfish tar-out, mke2fs -d over a copy of the upstream disk, \
             qemu-img rebase onto the upstream image"
                .to_string(),
        ]
    }

    fn run(&self, ctx: &mut RunContext) -> anyhow::Result<()> {
        let upstream = upstream_image(ctx, &self.image)?;
        let format = qemu_img::info(ctx, &upstream)?.format.name().to_string();
        let out = ctx.out_dir().join(QCOW2_IMAGE);
        let backing = PathBuf::from(qemu_img::backing_reference(ctx.out_dir(), &upstream)?);

        ctx.progress("reading the upstream disk's layout");
        let scratch = rebuild::Scratch::new(ctx.state_dir())?;
        match rebuild::probe(ctx, &upstream, &scratch.raw()) {
            Ok(layout) => {
                let rebuilt = Rebuilt {
                    upstream: &upstream,
                    format: &format,
                    out: &out,
                    backing: &backing,
                    scratch: &scratch,
                    layout: &layout,
                };
                self.run_rebuilt(ctx, &rebuilt)
            }
            Err(why) => {
                drop(scratch);
                ctx.log(&format!(
                    "customizing in place (the image will not be bit-identical between builds): {why:#}"
                ));
                self.run_in_place(ctx, &upstream)
            }
        }
    }
}

/// What a rebuilt customization works with.
struct Rebuilt<'a> {
    upstream: &'a Path,
    format: &'a str,
    out: &'a Path,
    backing: &'a Path,
    scratch: &'a rebuild::Scratch,
    layout: &'a rebuild::Layout,
}

impl Customize {
    /// Customize a scratch overlay, then rebuild the output from its tree
    /// ([`rebuild`]): the same fields and upstream image give the same bytes.
    fn run_rebuilt(&self, ctx: &mut RunContext, r: &Rebuilt) -> anyhow::Result<()> {
        ctx.progress("creating the scratch overlay");
        let work = r.scratch.overlay();
        let mut create = ctx.command("qemu-img");
        create
            .args(["create", "-q", "-f", "qcow2", "-b"])
            .arg(r.upstream)
            .args(["-F", r.format])
            .arg(&work);
        ctx.run(create)?;
        let ops = self.file_operations(&r.scratch.dir.join("upload"));
        if !ops.is_empty() {
            self.virt_customize(ctx, &work, &r.scratch.dir.join("upload"), None, false)?;
        }
        ctx.progress("exporting the customized tree");
        rebuild::export_tree(ctx, &work, r.scratch, &set_libguestfs_env)
            .map_err(explain_libguestfs_failure)?;
        let _ = std::fs::remove_file(&work);

        let tree = r.scratch.tree();
        let status = tree.join(DPKG_STATUS.trim_start_matches('/'));
        match std::fs::read_to_string(&status) {
            Ok(text) => self.note_packages(ctx, &text),
            Err(_) if self.install.is_empty() => {}
            Err(e) => bail!("cannot read the customized image's {DPKG_STATUS}: {e}"),
        }
        match &self.root_password {
            None => {}
            Some(Secret::Locked) => root_password::set(&tree, RootPassword::Locked)?,
            Some(secret) => {
                let value = self.password_value(ctx, secret)?;
                // The upstream image's tree is named by its content hash.
                let upstream_id = std::fs::canonicalize(r.upstream)
                    .ok()
                    .and_then(|p| Some(p.parent()?.file_name()?.to_string_lossy().into_owned()))
                    .unwrap_or_default();
                root_password::set(
                    &tree,
                    RootPassword::Set {
                        password: &value,
                        salt_material: &upstream_id,
                    },
                )?;
            }
        }
        ctx.progress("writing the file system");
        rebuild::write_back(ctx, r.scratch, r.layout)?;
        ctx.note("source_date_epoch", &r.layout.created.to_string());
        ctx.progress("writing the overlay");
        rebuild::overlay_onto_upstream(ctx, &r.scratch.raw(), r.out, r.backing, r.format)
    }

    /// The old way: virt-customize on the output overlay itself.
    fn run_in_place(&self, ctx: &mut RunContext, upstream: &Path) -> anyhow::Result<()> {
        ctx.progress("creating the overlay");
        let out_dir = ctx.out_dir().to_path_buf();
        let out = qemu_img::create_overlay(ctx, &out_dir, QCOW2_IMAGE, upstream)?;
        let upload_dir = ctx.state_dir().join("upload");
        self.virt_customize(ctx, &out, &upload_dir, self.root_password.as_ref(), true)?;
        // Reading the dpkg database starts the appliance once more: only when packages changed.
        if !self.install.is_empty() || !self.uninstall.is_empty() || self.purge_unattended_upgrades
        {
            ctx.progress("reading the installed packages");
            let mut cmd = ctx.command("guestfish");
            set_libguestfs_env(&mut cmd);
            cmd.args(["--ro", "--format=qcow2", "-a"]).arg(&out);
            cmd.args(["-i", "cat", DPKG_STATUS]);
            let text = ctx.run_capture(cmd).map_err(explain_libguestfs_failure)?;
            self.note_packages(ctx, &text);
        }
        Ok(())
    }

    /// Record in the lock what the image's dpkg database (`status`, its text) holds:
    /// `installed`, the `install:` entries with their versions, and `packages`, all of them.
    fn note_packages(&self, ctx: &mut RunContext, status: &str) {
        let packages = InstalledPackages::parse(status);
        if !self.install.is_empty() {
            ctx.note("installed", &packages.asked_for(&self.install));
        }
        ctx.note("packages", &packages.all());
    }

    /// The root password's value (a `random` one is kept in the state directory).
    fn password_value(&self, ctx: &RunContext, secret: &Secret) -> anyhow::Result<SecretValue> {
        let store = Self::random_password_store(ctx.state_dir());
        let value = secret
            .value(ctx.work_dir(), &store)?
            .context("the root password has no value")?;
        if matches!(secret, Secret::Random) {
            ctx.log(&format!(
                "the random root password is kept in {}",
                store.display()
            ));
        }
        Ok(value)
    }

    /// Run virt-customize on `image`: the file operations, and root's password when
    /// `password` is given (`with_password`).
    fn virt_customize(
        &self,
        ctx: &mut RunContext,
        image: &Path,
        upload_dir: &Path,
        password: Option<&Secret>,
        with_password: bool,
    ) -> anyhow::Result<()> {
        // The secret file and the upload files live only as long as this run.
        let password_file = match password.filter(|_| with_password) {
            Some(Secret::Locked) | None => None,
            Some(secret) => Some(self.password_value(ctx, secret)?.to_temp_file()?),
        };
        // virt-customize splits `--upload FILE:DEST` at the first colon: the files must live
        // at a path without one, which a cache directory does not promise.
        let mut upload_dir = upload_dir.to_path_buf();
        if upload_dir.to_string_lossy().contains(':') {
            upload_dir = std::env::temp_dir().join(format!("qflow-upload-{}", std::process::id()));
        }
        if upload_dir.to_string_lossy().contains(':') {
            bail!(
                "cannot find a directory without `:` in its path for the files to upload; set TMPDIR"
            );
        }
        let _uploads = RemoveOnDrop(upload_dir.clone());
        self.prepare_uploads(&upload_dir)?;

        let mut cmd = ctx.command("virt-customize");
        set_libguestfs_env(&mut cmd);
        // An `env:` secret stays out of the environment of the programs that do not need it.
        if let Some(Secret::Env(name)) = &self.root_password {
            cmd.env_remove(name);
        }
        cmd.args(["--format", "qcow2", "-a"]).arg(image);
        if ctx.jobs() > 1 {
            cmd.args(["--smp", &ctx.jobs().to_string()]);
        }
        if with_password {
            cmd.args(self.operations(&upload_dir, password_file.as_ref().map(|f| f.path())));
        } else {
            cmd.args(self.file_operations(&upload_dir));
        }
        let started = std::time::Instant::now();
        let result = ctx.run_lines(cmd, &mut progress_of);
        drop(password_file);
        if let Err(e) = result {
            return Err(explain_libguestfs_failure(e));
        }
        ctx.log(&format!(
            "virt-customize took {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }
}

/// Set libguestfs's backend unless the step's `env:` or qflow's environment chose one.
fn set_libguestfs_env(cmd: &mut std::process::Command) {
    for (name, value) in [
        ("LIBGUESTFS_BACKEND", "direct"),
        ("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg"),
    ] {
        let in_step_env = cmd.get_envs().any(|(k, v)| k == name && v.is_some());
        if !in_step_env && std::env::var_os(name).is_none() {
            cmd.env(name, value);
        }
    }
}

/// virt-customize's `[  12.3] Installing packages: numactl` lines become the progress text.
fn progress_of(line: &str) -> Option<String> {
    let rest = line.strip_prefix('[')?;
    let (secs, text) = rest.split_once("] ")?;
    secs.trim().parse::<f64>().ok()?;
    Some(text.trim().to_string())
}

/// Add to a virt-customize failure what libguestfs said and what to do about it.
fn explain_libguestfs_failure(err: anyhow::Error) -> anyhow::Error {
    let text = format!("{err:#}");
    let reason = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("libguestfs: error:"))
        .or_else(|| {
            text.lines()
                .map(str::trim)
                .find(|l| l.starts_with("virt-customize: error:"))
        });
    let lower = text.to_lowercase();
    let fix = if lower.contains("supermin")
        || lower.contains("suitable kernel")
        || lower.contains("/boot/vmlinuz")
    {
        Some(
            "libguestfs cannot build its appliance: install a kernel for supermin \
             (`apt-get install linux-image-amd64`) and make /boot/vmlinuz-* readable",
        )
    } else if lower.contains("kvm") || lower.contains("msr") {
        Some(
            "KVM cannot run libguestfs's appliance here: set `LIBGUESTFS_BACKEND=direct` and \
             `LIBGUESTFS_BACKEND_SETTINGS=force_tcg`",
        )
    } else if lower.contains("launch") || lower.contains("appliance") || lower.contains("qemu") {
        Some(
            "libguestfs's appliance did not start: check the `LIBGUESTFS_*` variables and run \
             `libguestfs-test-tool` to see why",
        )
    } else {
        None
    };
    match (reason, fix) {
        (Some(r), Some(f)) => err.context(format!("virt-customize failed: {r}\n  hint: {f}")),
        (Some(r), None) => err.context(format!("virt-customize failed: {r}")),
        (None, Some(f)) => err.context(format!("virt-customize failed\n  hint: {f}")),
        (None, None) => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Box<dyn Step>, FieldError> {
        use qflow_engine::StepKind as _;
        qflow_engine::KindOf::<Customize>::new().parse(&serde_yaml::from_str(yaml).unwrap())
    }

    fn check(yaml: &str) -> Result<(), FieldError> {
        let ctx = CheckContext {
            work_dir: std::env::temp_dir(),
        };
        parse(yaml)?.check(&ctx)
    }

    #[test]
    fn a_step_using_every_field_parses_and_checks() {
        let dir =
            std::env::temp_dir().join(format!("qflow-customize-check-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("bench")).unwrap();
        std::fs::write(dir.join("pw"), "hunter2\n").unwrap();
        let step = parse(
            "image: base\nroot_password: { file: pw }\ninstall: [build-essential, numactl]\nuninstall: [snapd]\n\
             purge_unattended_upgrades: true\ncopy_in: [{ from: ./bench, to: /opt }]\n\
             write: [{ path: /etc/motd, content: \"sim image\\n\" }]\ncommands: [\"systemctl disable apt-daily.timer\"]\n",
        )
        .unwrap();
        let ctx = CheckContext {
            work_dir: dir.clone(),
        };
        step.check(&ctx).unwrap();
        assert_eq!(step.references(), vec![StepRef::new("image", "base")]);
        let key = step.extra_key(&ctx).unwrap();
        assert_eq!(key[0].0, "root_password.blake3");
        assert!(!format!("{key:?}{:?}", step.plan(&ctx)).contains("hunter2"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_shell_command_as_package_name_is_refused_naming_the_entry() {
        let err = check("image: base\ninstall: [numactl, 'foo; rm -rf /']\n").unwrap_err();
        assert_eq!(err.field, "install[1]");
        let err = check("image: base\nuninstall: ['$(reboot)']\n").unwrap_err();
        assert_eq!(err.field, "uninstall[0]");
    }

    #[test]
    fn bad_guest_paths_and_unknown_fields_are_refused() {
        assert_eq!(
            check("image: base\nwrite: [{ path: etc/motd, content: x }]\n")
                .unwrap_err()
                .field,
            "write[0].path"
        );
        assert_eq!(
            check("image: base\ncopy_in: [{ from: /nonexistent-qflow, to: /opt }]\n")
                .unwrap_err()
                .field,
            "copy_in[0].from"
        );
        assert_eq!(
            check("image: base\ncommands: ['  ']\n").unwrap_err().field,
            "commands[0]"
        );
        assert!(parse("image: base\nroot_pasword: locked\n").is_err());
        assert_eq!(
            check("image: base\nroot_password: { env: QFLOW_SURELY_UNSET_VAR }\n")
                .unwrap_err()
                .field,
            "root_password.env"
        );
    }

    #[test]
    fn operations_run_in_the_documented_order_and_carry_no_content() {
        let step: Customize = serde_yaml::from_str(
            "image: base\nroot_password: locked\ninstall: [numactl]\nuninstall: [less]\npurge_unattended_upgrades: true\n\
             copy_in: [{ from: bench, to: /opt }]\nwrite: [{ path: /etc/motd, content: 'top secret motd' }]\ncommands: ['true']\n",
        )
        .unwrap();
        let ops = step.operations(Path::new("/u"), None);
        let flags: Vec<&str> = ops
            .iter()
            .filter(|a| a.starts_with("--"))
            .map(String::as_str)
            .collect();
        assert_eq!(
            flags,
            [
                "--root-password",
                "--install",
                "--uninstall",
                "--run-command",
                "--mkdir",
                "--upload",
                "--upload",
                "--mkdir",
                "--copy-in",
                "--mkdir",
                "--upload",
                "--run-command"
            ]
        );
        assert!(ops.contains(&"disabled".to_string()));
        assert!(ops.contains(&"/u/write-0:/etc/motd".to_string()));
        assert!(!ops.iter().any(|a| a.contains("top secret motd")));
    }

    #[test]
    fn progress_comes_from_the_timestamped_lines() {
        assert_eq!(
            progress_of("[  12.3] Installing packages: numactl").as_deref(),
            Some("Installing packages: numactl")
        );
        assert_eq!(progress_of("Reading package lists..."), None);
    }

    #[test]
    fn an_appliance_failure_says_what_to_install() {
        let e = explain_libguestfs_failure(anyhow::anyhow!(
            "`virt-customize` failed (exit 1); its last lines:\n    libguestfs: error: /usr/bin/supermin exited with error status 1."
        ));
        let text = format!("{e:#}");
        assert!(
            text.contains("libguestfs: error: /usr/bin/supermin"),
            "{text}"
        );
        assert!(text.contains("apt-get install linux-image-amd64"), "{text}");
    }
}
