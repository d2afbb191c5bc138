//! The `debootstrap` kind: a bootable Debian (or Ubuntu) system disk built from a
//! package mirror, for machines that have a mirror but no way to download a cloud image.
//!
//! The root file system is built as a directory tree with `debootstrap` (in the step's
//! state directory, never an output), configured for QEMU (fstab, hostname, a serial
//! login on `ttyS0`, QEMU's user-network DNS), and written into partition 1 of a raw
//! disk without mounting anything: `sfdisk` lays out one ext4 partition at 1 MiB,
//! `mke2fs -d TREE -E offset=1048576` fills it, and `qemu-img convert` makes the
//! qcow2 output. So the recipe's `-hda image -append "root=/dev/sda1"` boots it (with a
//! kernel that has ext4 and ATA built in, or with `kernel: true` and its initrd).
//!
//! Reproducibility: two clean builds from the same mirror state give the same bytes.
//! The partition table's disk id, the file system UUID and its directory hash seed are
//! derived from the step's fields; `SOURCE_DATE_EPOCH` is the `Date:` of the suite's
//! Release file (recorded in the lock as `source_date_epoch`, beside the resolved
//! package versions, `packages`); the tree is normalized and written by
//! [`crate::root_tree`] (per-run caches and logs removed, times clamped to the epoch,
//! a layout that follows the sorted tree). Not covered: files a package makes from
//! randomness at install time (an `openssh-server` host key) and, with `kernel: true`,
//! the initrd, built before the epoch is known.
//!
//! debootstrap must run as root (chroot, device nodes); the step says so before
//! anything runs.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use qflow_engine::{
    CheckContext, FieldError, HostNeed, OutputRole, Requirement, RunContext, Step, StepFields, Tool,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::image_file::QCOW2_IMAGE;
use crate::package_name::check_packages;
use crate::qemu_img::{self, Size};
use crate::root_tree;

/// Build a partitioned, bootable Debian system image from a package mirror.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Debootstrap {
    /// The release to install: `bookworm`, `trixie`, an Ubuntu suite with an Ubuntu mirror.
    pub suite: String,
    /// The package mirror (`http://deb.debian.org/debian`). Default: the mirror of the
    /// host's own apt sources, so it works wherever the host's apt works.
    #[serde(default)]
    pub mirror: Option<String>,
    /// debootstrap's variant: `minbase` (smallest), `buildd` or `fakechroot`; default: Debian's standard base.
    #[serde(default)]
    pub variant: Option<String>,
    /// Extra packages. For a serial login under systemd include `systemd-sysv` and `udev`.
    #[serde(default)]
    pub include: Vec<String>,
    /// The disk's size (qemu-img units: `2G`, `1536M`). Default `2G`.
    #[serde(default = "default_size")]
    pub size: String,
    /// Also install Debian's kernel (`linux-image-amd64`, `initramfs-tools`) and export
    /// it as the outputs `vmlinuz` and `initrd.img`, for `-kernel vmlinuz -initrd initrd.img`.
    #[serde(default)]
    pub kernel: bool,
    /// The guest's host name. Default `qflow`.
    #[serde(default = "default_hostname")]
    pub hostname: String,
}

fn default_size() -> String {
    "2G".to_string()
}

fn default_hostname() -> String {
    "qflow".to_string()
}

impl StepFields for Debootstrap {
    const KIND: &'static str = "debootstrap";
    // 2: bit-identical images (a normalized tree written in a fixed layout).
    const SCHEMA_VERSION: u32 = 2;

    fn kind_tools() -> Vec<Tool> {
        tools()
    }

    fn kind_needs() -> Vec<HostNeed> {
        vec![HostNeed::Root]
    }
}

/// The programs every debootstrap step runs.
fn tools() -> Vec<Tool> {
    vec![
        Tool::new("debootstrap", &["--version"], "debootstrap"),
        Tool::new("mke2fs", &["-V"], "e2fsprogs"),
        Tool::new("sfdisk", &["--version"], "fdisk"),
        Tool::new("dpkg-query", &["--version"], "dpkg"),
        qemu_img::tool(),
    ]
}

const VARIANTS: [&str; 3] = ["minbase", "buildd", "fakechroot"];
const KERNEL_PACKAGES: [&str; 2] = ["linux-image-amd64", "initramfs-tools"];
/// Where partition 1 starts: 1 MiB, the usual alignment.
const PARTITION_OFFSET: u64 = 1 << 20;
/// `SOURCE_DATE_EPOCH` when the suite's Release file has no date (2024-01-01T00:00:00Z).
const DEFAULT_EPOCH: u64 = 1_704_067_200;

impl Debootstrap {
    /// The mirror to use: the field, else the host's apt source.
    fn resolved_mirror(&self) -> Option<String> {
        self.mirror.clone().or_else(host_mirror)
    }

    fn packages(&self) -> Vec<String> {
        let mut p = self.include.clone();
        if self.kernel {
            p.extend(
                KERNEL_PACKAGES
                    .iter()
                    .map(|s| s.to_string())
                    .filter(|k| !self.include.contains(k)),
            );
        }
        p
    }

    fn size(&self) -> Result<Size, FieldError> {
        let size = Size::parse(&self.size).map_err(|e| FieldError::new("size", e))?;
        if size.bytes() < 64 << 20 {
            return Err(FieldError::new(
                "size",
                format!(
                    "`{}` is too small for a system disk; use at least `512M`",
                    self.size
                ),
            ));
        }
        Ok(size)
    }

    /// A UUID that is the same for the same fields: reproducible, and distinct between
    /// different base images attached to one VM.
    fn uuid(&self, mirror: &str) -> String {
        let mut h = blake3::Hasher::new();
        h.update(b"qflow debootstrap uuid\0");
        for part in [
            &self.suite,
            mirror,
            self.variant.as_deref().unwrap_or(""),
            &self.size,
            &self.hostname,
        ] {
            h.update(part.as_bytes());
            h.update(b"\0");
        }
        h.update(self.packages().join(",").as_bytes());
        h.update(if self.kernel { b"k" } else { b"-" });
        let mut b = [0u8; 16];
        b.copy_from_slice(&h.finalize().as_bytes()[..16]);
        b[6] = (b[6] & 0x0f) | 0x40; // version 4 (random-looking)
        b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
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

    fn debootstrap_args(&self, tree: &Path, mirror: &str, debs: &Path) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(v) = &self.variant {
            args.push(format!("--variant={v}"));
        }
        let packages = self.packages();
        if !packages.is_empty() {
            args.push(format!("--include={}", packages.join(",")));
        }
        args.push(format!("--cache-dir={}", debs.display()));
        args.extend([
            self.suite.clone(),
            tree.display().to_string(),
            mirror.to_string(),
        ]);
        args
    }
}

impl Step for Debootstrap {
    fn output_roles(&self) -> Vec<(String, OutputRole)> {
        let mut o = vec![(QCOW2_IMAGE.to_string(), OutputRole::Image)];
        if self.kernel {
            o.push(("vmlinuz".to_string(), OutputRole::Artifact));
            o.push(("initrd.img".to_string(), OutputRole::Artifact));
        }
        o
    }

    fn tools(&self) -> Vec<Tool> {
        tools()
    }

    fn requirements(&self, _ctx: &CheckContext) -> Vec<Requirement> {
        vec![Requirement {
            need: HostNeed::Root,
            what: "root (debootstrap chroots and creates device nodes)".into(),
            present: crate::host::is_root(),
            fix: "run `qflow apply` as root (e.g. `sudo -E qflow apply`), or build the base image elsewhere \
                  and use it through a `download` or `image` step"
                .into(),
        }]
    }

    fn check(&self, _ctx: &CheckContext) -> Result<(), FieldError> {
        if self.suite.is_empty()
            || !self
                .suite
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b".-_".contains(&c))
        {
            return Err(FieldError::new(
                "suite",
                format!("`{}` is not a suite name; e.g. `bookworm`", self.suite),
            ));
        }
        match &self.mirror {
            Some(m) => check_mirror(m)?,
            None if host_mirror().is_none() => {
                return Err(FieldError::new(
                    "mirror",
                    "no `mirror:` given and qflow found no http(s) or file apt source in /etc/apt/sources.list \
                     or /etc/apt/sources.list.d/; set `mirror:`, e.g. `mirror: http://deb.debian.org/debian`",
                ));
            }
            None => {}
        }
        if let Some(v) = &self.variant
            && !VARIANTS.contains(&v.as_str())
        {
            return Err(FieldError::new(
                "variant",
                format!(
                    "`{v}` is not a debootstrap variant; use one of {}",
                    VARIANTS.join(", ")
                ),
            ));
        }
        check_packages("include", &self.include)?;
        self.size()?;
        let h = &self.hostname;
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        };
        if h.len() > 253 || !h.split('.').all(label_ok) {
            return Err(FieldError::new(
                "hostname",
                format!("`{h}` is not a host name (letters, digits, `-`, dots between labels)"),
            ));
        }
        Ok(())
    }

    fn extra_key(&self, _ctx: &CheckContext) -> anyhow::Result<Vec<(String, String)>> {
        // A defaulted mirror still decides what is installed: key the one resolved.
        Ok(match (&self.mirror, host_mirror()) {
            (None, Some(m)) => vec![("mirror".to_string(), m)],
            _ => Vec::new(),
        })
    }

    fn plan(&self, _ctx: &CheckContext) -> Vec<String> {
        let mirror = self.resolved_mirror().unwrap_or_else(|| "<mirror>".into());
        let args = self.debootstrap_args(Path::new("<tree>"), &mirror, Path::new("<state>/debs"));
        vec![
            format!("debootstrap {}", args.join(" ")),
            "sfdisk <disk.raw>  (one ext4 partition at 1 MiB)".to_string(),
            format!("mke2fs -t ext4 -d <tree> -E offset={PARTITION_OFFSET} <disk.raw>"),
            format!("qemu-img convert -O qcow2 <disk.raw> {QCOW2_IMAGE}"),
        ]
    }

    fn run(&self, ctx: &mut RunContext) -> anyhow::Result<()> {
        let mirror = self.resolved_mirror().context("no mirror: set `mirror:`")?;
        let size = self.size().map_err(|e| anyhow::anyhow!("{e}"))?;
        let uuid = self.uuid(&mirror);
        let state = ctx.state_dir().to_path_buf();
        let tree = state.join("tree");
        let raw = state.join("disk.raw");
        let debs = state.join("debs");
        std::fs::create_dir_all(&debs)
            .with_context(|| format!("cannot create {}", debs.display()))?;
        // A killed earlier run may have left its tree (and debootstrap's mounts in it).
        remove_tree(&tree)?;
        let _ = std::fs::remove_file(&raw);
        let _cleanup = Cleanup {
            tree: tree.clone(),
            raw: raw.clone(),
        };

        ctx.progress("debootstrap");
        let mut cmd = ctx.command("debootstrap");
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd.args(self.debootstrap_args(&tree, &mirror, &debs));
        ctx.run_lines(cmd, &mut |line| {
            line.strip_prefix("I: ").map(str::to_string)
        })?;
        unmount_under(&tree)?;

        configure_tree(&tree, &self.hostname, &uuid)?;
        let versions = package_versions(ctx, &tree)?;
        ctx.note("packages", &versions);
        ctx.note("mirror", &mirror);
        let epoch = release_epoch(&tree, &self.suite).unwrap_or(DEFAULT_EPOCH);
        ctx.note("source_date_epoch", &epoch.to_string());
        if self.kernel {
            export_kernel(&tree, ctx.out_dir())?;
        }
        ctx.progress("normalizing the tree");
        root_tree::normalize(&tree, epoch)?;

        // The partition holds the tree with room to spare, or mke2fs fails midway.
        let used = tree_bytes(&tree);
        let needed = used + used / 5 + (64 << 20) + PARTITION_OFFSET;
        if size.bytes() < needed {
            bail!(
                "`size: {}` is too small for the {} MiB tree; use at least `{}M`",
                self.size,
                used >> 20,
                needed.div_ceil(1 << 20)
            );
        }
        // Whole MiB, so the partition and the file system end together.
        let disk_bytes = size.bytes() / (1 << 20) * (1 << 20);
        ctx.progress("partitioning");
        std::fs::File::create(&raw)
            .and_then(|f| f.set_len(disk_bytes))
            .with_context(|| format!("cannot create {}", raw.display()))?;
        let script = state.join("partitions.sfdisk");
        std::fs::write(
            &script,
            format!(
                "label: dos\nlabel-id: 0x{}\nunit: sectors\n\nstart={}, type=83, bootable\n",
                &uuid[0..8],
                PARTITION_OFFSET / 512
            ),
        )
        .with_context(|| format!("cannot write {}", script.display()))?;
        // sfdisk reads its script on stdin; the shell text is fixed, the paths are argv.
        let mut cmd = ctx.command("sh");
        cmd.args([
            "-c",
            "exec sfdisk --no-reread --no-tell-kernel \"$1\" < \"$2\"",
            "sfdisk",
        ])
        .arg(&raw)
        .arg(&script);
        ctx.run(cmd)?;

        ctx.progress("writing the file system");
        let fs = root_tree::Ext4 {
            offset: PARTITION_OFFSET,
            blocks: (disk_bytes - PARTITION_OFFSET) / 4096,
            uuid: uuid.clone(),
            hash_seed: uuid.clone(),
            label: "root".to_string(),
            epoch,
        };
        root_tree::write_ext4(ctx, &tree, &raw, &fs)?;

        ctx.progress("converting to qcow2");
        let mut cmd = ctx.command("qemu-img");
        cmd.args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(ctx.out_dir().join(QCOW2_IMAGE));
        ctx.run(cmd)?;
        ctx.log(&format!(
            "root file system: partition 1 (ext4, UUID {uuid}), {} MiB of files",
            used >> 20
        ));
        Ok(())
    }
}

/// Removes the tree and the raw disk when the run ends, also on error.
struct Cleanup {
    tree: PathBuf,
    raw: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.raw);
        // Never delete through a mount point: debootstrap, killed, leaves /proc and /sys
        // (perhaps /dev) mounted in the tree. If one cannot be detached, the tree stays
        // and the next run retries.
        if unmount_under(&self.tree).is_ok() {
            let _ = std::fs::remove_dir_all(&self.tree);
        }
    }
}

fn check_mirror(m: &str) -> Result<(), FieldError> {
    let scheme_ok = ["http://", "https://", "file:/"]
        .iter()
        .any(|s| m.starts_with(s));
    if !scheme_ok || m.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(FieldError::new(
            "mirror",
            format!(
                "`{m}` is not a mirror URL; use `http://`, `https://` or `file:///`, e.g. `http://deb.debian.org/debian`"
            ),
        ));
    }
    Ok(())
}

/// The first http(s)/file `deb` source of the host's apt configuration that is not a
/// security, updates or backports archive.
pub fn host_mirror() -> Option<String> {
    let mut texts: Vec<(bool, String)> = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push((false, t));
    }
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let deb822 = f.extension().is_some_and(|e| e == "sources");
            let list = f.extension().is_some_and(|e| e == "list");
            if (deb822 || list)
                && let Ok(t) = std::fs::read_to_string(&f)
            {
                texts.push((deb822, t));
            }
        }
    }
    texts.iter().find_map(|(deb822, t)| {
        if *deb822 {
            mirror_in_deb822(t)
        } else {
            mirror_in_one_line(t)
        }
    })
}

fn is_base_source(uri: &str, suite: &str) -> bool {
    let usable = ["http://", "https://", "file:/"]
        .iter()
        .any(|s| uri.starts_with(s));
    let side = ["-security", "-updates", "-backports", "/updates"]
        .iter()
        .any(|s| suite.ends_with(s));
    usable && !side && !uri.contains("security")
}

/// `deb [options] URI SUITE COMPONENTS...` lines.
fn mirror_in_one_line(text: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut rest: Vec<&str> = words.collect();
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            let end = rest.iter().position(|w| w.ends_with(']'))?;
            rest.drain(..=end);
        }
        if let [uri, suite, ..] = rest.as_slice()
            && is_base_source(uri, suite)
        {
            return Some(uri.trim_end_matches('/').to_string());
        }
    }
    None
}

/// deb822 `.sources` paragraphs (`Types: deb`, `URIs:`, `Suites:`, `Enabled:`).
fn mirror_in_deb822(text: &str) -> Option<String> {
    let mut paragraphs = vec![Vec::new()];
    for line in text.lines() {
        if line.trim().is_empty() {
            paragraphs.push(Vec::new());
        } else if !line.starts_with('#') {
            paragraphs.last_mut().expect("one paragraph").push(line);
        }
    }
    for p in paragraphs {
        let field = |name: &str| {
            p.iter().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let types = field("Types").unwrap_or_default();
        if !types.split_whitespace().any(|t| t == "deb")
            || field("Enabled").is_some_and(|e| e == "no")
        {
            continue;
        }
        let suites = field("Suites").unwrap_or_default();
        let Some(suite) = suites.split_whitespace().next() else {
            continue;
        };
        for uri in field("URIs").unwrap_or_default().split_whitespace() {
            if is_base_source(uri, suite) {
                return Some(uri.trim_end_matches('/').to_string());
            }
        }
    }
    None
}

/// Mount points at or below `dir`, deepest first (from /proc/self/mountinfo).
fn mounts_under(dir: &Path) -> Vec<String> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let prefix = dir.to_string_lossy().into_owned();
    let mut found: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes spaces as \040.
        .map(|m| m.replace("\\040", " "))
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.len()));
    found
}

/// Detach every mount at or below `dir` (debootstrap mounts /proc, /sys and maybe
/// /dev inside its target, and cannot unmount them when it is killed). A lazy
/// unmount (`umount2(MNT_DETACH)`), so a process still inside does not block it.
fn unmount_under(dir: &Path) -> anyhow::Result<()> {
    for m in mounts_under(dir) {
        let c = std::ffi::CString::new(m.as_str()).context("a mount point with a NUL byte")?;
        // SAFETY: umount2(2) on a valid NUL-terminated path; it touches no memory of ours.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            let e = std::io::Error::last_os_error();
            bail!("cannot unmount {m}: {e}; unmount it by hand and retry");
        }
    }
    if !mounts_under(dir).is_empty() {
        bail!(
            "{} still has mounts inside; unmount them and retry",
            dir.display()
        );
    }
    Ok(())
}

/// Remove a leftover tree, unmounting first so nothing of the host is deleted through it.
fn remove_tree(tree: &Path) -> anyhow::Result<()> {
    if tree.exists() {
        unmount_under(tree)?;
        std::fs::remove_dir_all(tree)
            .with_context(|| format!("cannot remove the old tree {}", tree.display()))?;
    }
    Ok(())
}

/// Make the tree boot under QEMU: fstab, host name, DNS of QEMU's user network, a serial login.
fn configure_tree(tree: &Path, hostname: &str, uuid: &str) -> anyhow::Result<()> {
    let write = |rel: &str, content: &str| -> anyhow::Result<()> {
        let p = tree.join(rel);
        // debootstrap copies some host files (hostname, resolv.conf); replace, never follow a link.
        let _ = std::fs::remove_file(&p);
        std::fs::write(&p, content).with_context(|| format!("cannot write {}", p.display()))
    };
    write(
        "etc/fstab",
        &format!(
            "# / is partition 1 of the qflow disk (root=/dev/sda1)\nUUID={uuid} / ext4 errors=remount-ro 0 1\n"
        ),
    )?;
    write("etc/hostname", &format!("{hostname}\n"))?;
    write(
        "etc/hosts",
        &format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        ),
    )?;
    // QEMU's default user network (slirp) answers DNS at 10.0.2.3; the host's resolver is not the guest's.
    write("etc/resolv.conf", "nameserver 10.0.2.3\n")?;
    // systemd starts a getty on the console= device by itself; enabling ttyS0 also gives
    // a login there when the kernel's console is elsewhere.
    let unit = "lib/systemd/system/serial-getty@.service";
    if tree.join(unit).exists() {
        let wants = tree.join("etc/systemd/system/getty.target.wants");
        std::fs::create_dir_all(&wants)
            .with_context(|| format!("cannot create {}", wants.display()))?;
        let link = wants.join("serial-getty@ttyS0.service");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("/{unit}"), &link)
            .with_context(|| format!("cannot create {}", link.display()))?;
    }
    Ok(())
}

/// `SOURCE_DATE_EPOCH` of a tree: the `Date:` of the suite's Release file that
/// debootstrap fetched (it changes when the suite does), as seconds since 1970.
fn release_epoch(tree: &Path, suite: &str) -> Option<u64> {
    let lists = tree.join("var/lib/apt/lists");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&lists)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap_or_default().to_string_lossy();
            n.ends_with(&format!("_dists_{suite}_Release"))
                || n.ends_with(&format!("_dists_{suite}_InRelease"))
        })
        .collect();
    names.sort();
    names.iter().find_map(|p| {
        let text = std::fs::read_to_string(p).ok()?;
        let date = text.lines().find_map(|l| l.strip_prefix("Date:"))?;
        parse_release_date(date.trim())
    })
}

/// `Sat, 15 Mar 2025 10:21:41 UTC` (a Release file's `Date:`) as seconds since 1970.
pub(crate) fn parse_release_date(date: &str) -> Option<u64> {
    let rest = date.split_once(", ").map_or(date, |(_, r)| r);
    let mut w = rest.split_whitespace();
    let day: i64 = w.next()?.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| Some(*m) == w.clone().next())? as i64
        + 1;
    w.next();
    let year: i64 = w.next()?.parse().ok()?;
    let mut hms = w.next()?.split(':').map(|x| x.parse::<i64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if !matches!(w.next(), Some("UTC" | "GMT" | "+0000")) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + m * 60 + s).ok()
}

/// `name=version` of every installed package, one line each, from the tree's dpkg database.
fn package_versions(ctx: &mut RunContext, tree: &Path) -> anyhow::Result<String> {
    let mut cmd = ctx.command("dpkg-query");
    cmd.arg(format!(
        "--admindir={}",
        tree.join("var/lib/dpkg").display()
    ));
    cmd.args(["-W", "-f", "${db:Status-Abbrev} ${Package}=${Version}\\n"]);
    let out = ctx.run_capture(cmd)?;
    let mut lines: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("ii "))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.sort();
    Ok(lines.join("\n"))
}

/// Copy the tree's newest kernel and initrd to the outputs `vmlinuz` and `initrd.img`.
fn export_kernel(tree: &Path, out: &Path) -> anyhow::Result<()> {
    let boot = tree.join("boot");
    let newest = |prefix: &str| -> anyhow::Result<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&boot)
            .with_context(|| format!("cannot read {}", boot.display()))?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .map(|e| e.path())
            .collect();
        found.sort();
        found
            .pop()
            .with_context(|| format!("`kernel: true` but the tree has no /boot/{prefix}*"))
    };
    for (prefix, name) in [("vmlinuz-", "vmlinuz"), ("initrd.img-", "initrd.img")] {
        let src = newest(prefix)?;
        std::fs::copy(&src, out.join(name))
            .with_context(|| format!("cannot copy {}", src.display()))?;
    }
    Ok(())
}

/// Bytes the tree takes on disk (allocated blocks), without following mounts.
fn tree_bytes(tree: &Path) -> u64 {
    walkdir::WalkDir::new(tree)
        .same_file_system(true)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<(), FieldError> {
        use qflow_engine::StepKind as _;
        let step = qflow_engine::KindOf::<Debootstrap>::new()
            .parse(&serde_yaml::from_str(yaml).unwrap())?;
        step.check(&CheckContext {
            work_dir: std::env::temp_dir(),
        })
    }

    #[test]
    fn a_step_using_every_field_checks() {
        check(
            "suite: bookworm\nmirror: http://mirror.example.org/debian\nvariant: minbase\n\
             include: [systemd-sysv, udev, openssh-server]\nsize: 4G\n",
        )
        .unwrap();
    }

    #[test]
    fn bad_fields_are_refused_naming_the_field() {
        let base = "suite: bookworm\nmirror: http://deb.debian.org/debian\n";
        assert_eq!(
            check(&format!("{base}variant: tiny\n")).unwrap_err().field,
            "variant"
        );
        assert_eq!(
            check(&format!("{base}include: [udev, 'x; reboot']\n"))
                .unwrap_err()
                .field,
            "include[1]"
        );
        assert_eq!(
            check(&format!("{base}size: 10X\n")).unwrap_err().field,
            "size"
        );
        assert_eq!(
            check(&format!("{base}size: 1M\n")).unwrap_err().field,
            "size"
        );
        assert_eq!(
            check(&format!("{base}hostname: 'bad host'\n"))
                .unwrap_err()
                .field,
            "hostname"
        );
        assert_eq!(
            check("suite: bookworm\nmirror: 'ftp://x y'\n")
                .unwrap_err()
                .field,
            "mirror"
        );
        assert_eq!(
            check("suite: '../etc'\nmirror: http://deb.debian.org/debian\n")
                .unwrap_err()
                .field,
            "suite"
        );
    }

    #[test]
    fn the_host_mirror_is_read_from_deb822_and_one_line_sources() {
        let deb822 = "Types: deb\n# comment\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n\n\
                      Types: deb deb-src\nURIs: http://deb.debian.org/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n";
        assert_eq!(
            mirror_in_deb822(deb822).as_deref(),
            Some("http://deb.debian.org/debian")
        );
        let disabled = "Types: deb\nURIs: http://a.example/debian\nSuites: bookworm\nEnabled: no\n";
        assert_eq!(mirror_in_deb822(disabled), None);
        let list = "# x\ndeb-src http://src.example/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n";
        assert_eq!(
            mirror_in_one_line(list).as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(
            mirror_in_one_line("deb cdrom:[Debian]/ bookworm main\n"),
            None
        );
    }

    #[test]
    fn the_uuid_is_stable_and_follows_the_fields() {
        let a: Debootstrap = serde_yaml::from_str("suite: bookworm\n").unwrap();
        let b: Debootstrap = serde_yaml::from_str("suite: bookworm\ninclude: [udev]\n").unwrap();
        let u = a.uuid("http://m");
        assert_eq!(u, a.uuid("http://m"));
        assert_ne!(u, b.uuid("http://m"));
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }

    #[test]
    fn a_release_date_reads_as_seconds_since_1970() {
        assert_eq!(
            parse_release_date("Sat, 15 Mar 2025 10:21:41 UTC"),
            Some(1_742_034_101)
        );
        assert_eq!(
            parse_release_date("Mon, 01 Jan 2024 00:00:00 UTC"),
            Some(DEFAULT_EPOCH)
        );
        assert_eq!(parse_release_date("yesterday"), None);
    }

    #[test]
    fn kernel_true_adds_the_kernel_packages_and_outputs() {
        let s: Debootstrap =
            serde_yaml::from_str("suite: bookworm\nkernel: true\ninclude: [udev]\n").unwrap();
        assert_eq!(
            s.packages(),
            ["udev", "linux-image-amd64", "initramfs-tools"]
        );
        assert_eq!(s.outputs(), ["image.qcow2", "vmlinuz", "initrd.img"]);
    }
}
