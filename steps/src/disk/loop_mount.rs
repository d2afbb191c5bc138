//! `via: loop` (root): a raw image, `mkfs.<fs>`, `mount -o loop`, `cp -a`,
//! `chown -R`, `umount`, then `qemu-img convert`. Not reproducible: the kernel
//! stamps mount times, journal contents and ctimes. A mount left by a failure (or
//! a Ctrl-C landing between the kernel's mount and `mount` returning) is undone.

use std::path::Path;

use anyhow::Context as _;
use qflow_engine::RunContext;

use super::argv::{cleanup, run_argv};
use super::{Disk, RAW};

impl Disk {
    pub(super) fn run_loop(&self, ctx: &mut RunContext) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use qflow_engine::Step;

    use super::super::test_support::{Scratch, assert_workload_on, parse, workload};
    use crate::host::is_root;

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
}
