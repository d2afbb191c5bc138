//! `via: nbd` (root and the nbd module): the recipe's sequence exactly —
//! `qemu-nbd --connect` to the first free `/dev/nbdN` (on "Failed to open
//! /dev/nbdN" it runs `modprobe nbd max_part=8` and retries once), `mkfs.<fs>`,
//! `mount`, `cp -a`, `chown -R`, `umount`, `qemu-nbd --disconnect`. After a failure
//! the device is unmounted and disconnected. Not reproducible, for the same reasons
//! as `loop`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use qflow_engine::RunContext;

use super::argv::{cleanup, run_argv};
use super::{Disk, OUT};

/// Test-only: a directory standing in for `/dev` when looking for nbd devices.
pub const NBD_DEVICE_DIR_ENV: &str = "QFLOW_NBD_DEVICE_DIR";

impl Disk {
    pub(super) fn run_nbd(&self, ctx: &mut RunContext, devices: &NbdDevices) -> anyhow::Result<()> {
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

pub(super) fn nbd_connect_argv(dev: &str, image: &str) -> Vec<String> {
    vec![
        "qemu-nbd".into(),
        format!("--connect={dev}"),
        "--format=qcow2".into(),
        image.to_string(),
    ]
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

/// Whether the nbd module is loaded, has devices, or can be loaded.
pub(super) fn nbd_module_available() -> bool {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    use qflow_engine::{CheckContext, Step};

    use super::super::test_support::{Scratch, parse, workload};
    use super::*;

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
}
