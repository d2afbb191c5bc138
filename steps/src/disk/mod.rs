//! The `disk` kind: the recipe's data disk — an image of a given size with a fresh
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
//! - `nbd` (root and the nbd module): the hand recipe's sequence exactly — `qemu-nbd
//!   --connect` to the first free `/dev/nbdN` (on "Failed to open /dev/nbdN" it runs
//!   `modprobe nbd max_part=8` and retries once), `mkfs.<fs>`, `mount`, `cp -a`,
//!   `chown -R`, `umount`, `qemu-nbd --disconnect`. After a failure the device is
//!   unmounted and disconnected. Not reproducible, for the same reasons as `loop`.
//!
//! Each `via` lives in its own module ([`mkfs`], [`loop_mount`], [`nbd`]). `nbd`
//! cannot run where the nbd kernel module is missing; its unit tests pass stand-in
//! device directories and programs to `run_nbd` instead.

mod argv;
mod loop_mount;
mod mkfs;
mod nbd;
mod owner;
#[cfg(test)]
mod test_support;

use std::path::{Path, PathBuf};

use anyhow::bail;
use qflow_engine::context::quote_arg;
use qflow_engine::{
    CheckContext, FieldError, HostNeed, Input, OutputRole, Requirement, RunContext, Step,
    StepFields, Tool,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::host::is_root;
use crate::qemu_img::{self, Size};

pub use mkfs::FIXED_TIME;
pub use nbd::NbdDevices;
use nbd::{nbd_connect_argv, nbd_module_available};
pub use owner::Owner;

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
    /// `uid:gid` (numbers) that owns every file and directory, the recipe's `chown -R`.
    /// Default `0:0`.
    #[serde(default)]
    pub owner: Option<String>,
    /// How the filesystem is filled: `mkfs` (default, rootless, reproducible),
    /// `loop` (root) or `nbd` (root and the nbd kernel module, the hand recipe).
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

    fn mkfs_tool(self) -> Tool {
        let package = if self.is_ext() {
            "e2fsprogs"
        } else {
            "xfsprogs"
        };
        Tool::new(&self.mkfs_program(), &["-V"], package)
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
}

/// A path with its `.` components dropped, as text for argv.
fn clean(path: &Path) -> String {
    path.components()
        .collect::<PathBuf>()
        .to_string_lossy()
        .into_owned()
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

impl StepFields for Disk {
    const KIND: &'static str = "disk";
    const SCHEMA_VERSION: u32 = 1;

    fn kind_tools() -> Vec<Tool> {
        let mut tools = vec![qemu_img::tool(), mke2fs(), debugfs()];
        tools.extend(
            [Filesystem::Ext4, Filesystem::Ext2, Filesystem::Xfs]
                .into_iter()
                .map(Filesystem::mkfs_tool),
        );
        tools.extend(mount_tools());
        tools.extend(nbd_tools());
        tools
    }

    fn kind_needs() -> Vec<HostNeed> {
        vec![HostNeed::Root, HostNeed::NbdModule]
    }
}

fn mke2fs() -> Tool {
    Tool::new("mke2fs", &["-V"], "e2fsprogs")
}

fn debugfs() -> Tool {
    Tool::new("debugfs", &["-V"], "e2fsprogs")
}

/// What `via: loop` and `via: nbd` run around a mount.
fn mount_tools() -> Vec<Tool> {
    vec![
        Tool::new("mount", &["--version"], "mount"),
        Tool::new("umount", &["--version"], "mount"),
        Tool::new("cp", &["--version"], "coreutils"),
        Tool::new("chown", &["--version"], "coreutils"),
    ]
}

/// What `via: nbd` runs to connect the image.
fn nbd_tools() -> Vec<Tool> {
    vec![
        Tool::new("qemu-nbd", &["--version"], "qemu-utils"),
        Tool::new("modprobe", &["--version"], "kmod"),
    ]
}

impl Step for Disk {
    fn inputs(&self) -> Vec<Input> {
        self.contents
            .iter()
            .map(|c| Input::new("contents", c.clone()))
            .collect()
    }

    fn output_roles(&self) -> Vec<(String, OutputRole)> {
        vec![(OUT.to_string(), OutputRole::Image)]
    }

    fn tools(&self) -> Vec<Tool> {
        let mut tools = vec![qemu_img::tool()];
        match self.via {
            Via::Mkfs if self.fs.is_ext() => {
                tools.push(mke2fs());
                tools.push(debugfs());
            }
            Via::Mkfs => tools.push(self.fs.mkfs_tool()),
            Via::Loop | Via::Nbd => {
                tools.push(self.fs.mkfs_tool());
                tools.extend(mount_tools());
                if self.via == Via::Nbd {
                    tools.extend(nbd_tools());
                }
            }
        }
        tools
    }

    fn requirements(&self, _ctx: &CheckContext) -> Vec<Requirement> {
        let mut reqs = Vec::new();
        if matches!(self.via, Via::Loop | Via::Nbd) {
            reqs.push(Requirement {
                need: HostNeed::Root,
                what: format!("root (`via: {}` mounts the image)", self.via.name()),
                present: is_root(),
                fix: "run qflow as root, or use `via: mkfs`, which needs no root and no mount"
                    .to_string(),
            });
        }
        if self.via == Via::Nbd {
            reqs.push(Requirement {
                need: HostNeed::NbdModule,
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
                self.run_nbd(ctx, &NbdDevices::host())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{Scratch, parse};
    use super::*;

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
