//! `via: nbd` (root and the nbd module): the recipe's sequence exactly —
//! `qemu-nbd --connect` to the first free `/dev/nbdN` (on "Failed to open
//! /dev/nbdN" it runs `modprobe nbd max_part=8` and retries once), `mkfs.<fs>`,
//! `mount`, `cp -a`, `chown -R`, `umount`, `qemu-nbd --disconnect`. After a failure
//! the device is unmounted and disconnected. Not reproducible, for the same reasons
//! as `loop`.

use std::path::PathBuf;

use anyhow::Context as _;
use qflow_engine::RunContext;

use super::argv::{cleanup, run_argv};
use super::{Disk, OUT};

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
            // `qemu-nbd` says "Failed to open /dev/nbd0" when the nbd module is not loaded.
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

/// Where nbd devices are looked for: `/dev` and `/sys/block` on the host; the unit
/// tests below pass stand-in directories.
#[derive(Debug, Clone)]
pub struct NbdDevices {
    pub dev_dir: PathBuf,
    pub sys_block: PathBuf,
}

impl NbdDevices {
    /// The host's `/dev` and `/sys/block`.
    pub fn host() -> NbdDevices {
        NbdDevices {
            dev_dir: PathBuf::from("/dev"),
            sys_block: PathBuf::from("/sys/block"),
        }
    }

    /// The first `nbdN` with no connected process (`/sys/block/nbdN/pid` absent).
    /// With no nbd device at all it returns `nbd0`, whose connect then fails with
    /// qemu-nbd's "Failed to open" and triggers the modprobe retry.
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

/// Whether nbd devices can be had: the host's nbd module ([`crate::host::nbd_module`]).
pub(super) fn nbd_module_available() -> bool {
    crate::host::nbd_module()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

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
        nbd_standins_with_cp(
            s,
            if fail_copy {
                "echo 'cp: error writing: No space left on device' >&2; exit 1\n"
            } else {
                ""
            },
        )
    }

    /// The stand-ins, with `cp` running `cp_body`.
    fn nbd_standins_with_cp(
        s: &Scratch,
        cp_body: &str,
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
            ("cp", cp_body.to_string()),
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
    fn nbd_runs_the_recipes_sequence_and_loads_the_module_when_the_device_is_missing() {
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
    fn ctrl_c_during_the_copy_over_nbd_still_unmounts_and_disconnects() {
        let s = Scratch::new("nbdint");
        workload(&s, "workload");
        let (env, devices, calls) = nbd_standins_with_cp(&s, "sleep 30\n");
        let disk = parse("size: 64M\ncontents: workload\nvia: nbd");
        let groups = qflow_engine::context::ProcessGroups::new();
        let mut ctx = s.ctx_in("a", env, groups.clone());
        let watched = calls.clone();
        let interrupter = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while !std::fs::read_to_string(&watched)
                .unwrap_or_default()
                .contains("cp -a")
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the copy never started"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            groups.cancel_all();
        });
        let started = std::time::Instant::now();
        assert!(disk.run_nbd(&mut ctx, &devices).is_err());
        interrupter.join().unwrap();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the copy was not interrupted"
        );
        let calls = recorded(&calls, &s);
        let n = calls.len();
        assert!(calls[n - 3].starts_with("cp -a"), "{calls:?}");
        assert_eq!(
            calls[n - 2..],
            ["umount /dev/nbd0", "qemu-nbd --disconnect /dev/nbd0"]
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
        if !Path::new("/sys/module/nbd").exists() {
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
