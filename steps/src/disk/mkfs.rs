//! `via: mkfs`: no root, no mount, reproducible. `mke2fs -d DIR` fills the
//! filesystem as it creates it; `debugfs` then sets every inode's owner and
//! timestamps; `qemu-img convert` makes the qcow2. With a fixed filesystem UUID and
//! hash seed derived from the step's fields and `E2FSPROGS_FAKE_TIME`, two clean runs
//! with the same contents give byte-identical images.

use std::path::Path;

use anyhow::{Context as _, bail};
use qflow_engine::RunContext;

use super::argv::run_argv;
use super::owner::Owner;
use super::{Disk, OUT, RAW};

/// The fixed time every inode and the superblock get under `via: mkfs`
/// (2000-01-01T00:00:00Z), so the image does not depend on when it was built.
pub const FIXED_TIME: u64 = 946_684_800;

impl Disk {
    /// `mke2fs -d` argv: create and fill in one go (via mkfs).
    pub(super) fn mke2fs_argv(&self, contents: Option<&str>, raw: &str) -> Vec<String> {
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

    pub(super) fn run_mkfs(&self, ctx: &mut RunContext) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::process::Command as Proc;

    use qflow_engine::Step;

    use super::super::OUT;
    use super::super::test_support::{Scratch, assert_workload_on, parse, workload};

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
}
