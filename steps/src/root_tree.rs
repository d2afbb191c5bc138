//! A Debian root file system tree made reproducible, and written into an ext4
//! partition whose bytes depend only on the tree: what Debian's reproducible-builds
//! work, mmdebstrap and mkosi do for a system image.
//!
//! [`normalize`] removes what differs between two installs of the same packages
//! (ldconfig's `aux-cache`, apt's binary caches, debconf's and dpkg's `*-old`
//! backups, every log under `/var/log` emptied, `/tmp` emptied, D-Bus's machine
//! id), leaves
//! `/etc/machine-id` empty so systemd makes a fresh one on first boot, sets the
//! "last password change" day of `/etc/shadow` to the epoch's day, and clamps every
//! modification time to `SOURCE_DATE_EPOCH` (files from packages keep their older
//! times, everything made at install time gets the epoch).
//!
//! [`write_ext4`] fills the file system with `mke2fs -d`, which adds each
//! directory's entries in `alphasort` order (scandir), so with `LC_ALL=C` the inode
//! numbers and block layout follow the sorted tree, never the order files were
//! written or a directory lists them; the UUID and directory hash seed are given and
//! `E2FSPROGS_FAKE_TIME` fixes the superblock's times. `mke2fs -d` copies each file's
//! ctime, which no program can set on the host, so `debugfs` then sets the access,
//! change and creation time of every used inode to the epoch.

use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use qflow_engine::RunContext;

/// Files whose content differs between two otherwise identical installs; removed.
const PER_RUN_FILES: [&str; 4] = [
    "var/cache/ldconfig/aux-cache",
    "var/cache/apt/pkgcache.bin",
    "var/cache/apt/srcpkgcache.bin",
    "var/lib/dbus/machine-id",
];

/// Directories whose `*-old` backups (of the previous database state) are removed.
const OLD_BACKUP_DIRS: [&str; 2] = ["var/cache/debconf", "var/lib/dpkg"];

/// Shadow files whose third field is the day of the last password change.
const SHADOW_FILES: [&str; 2] = ["etc/shadow", "etc/shadow-"];

/// Make `tree` (a root file system) independent of when and in what order it was
/// built; see the module header for what changes.
pub fn normalize(tree: &Path, epoch: u64) -> anyhow::Result<()> {
    for rel in PER_RUN_FILES {
        remove_file_if_there(&tree.join(rel))?;
    }
    for dir in OLD_BACKUP_DIRS {
        let dir = tree.join(dir);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let regular = e.file_type().is_ok_and(|t| t.is_file());
            if regular && e.file_name().as_bytes().ends_with(b"-old") {
                remove_file_if_there(&e.path())?;
            }
        }
    }
    empty_logs(&tree.join("var/log"))?;
    empty_dir(&tree.join("tmp"))?;
    let machine_id = tree.join("etc/machine-id");
    if machine_id.symlink_metadata().is_ok_and(|m| m.is_file()) {
        std::fs::write(&machine_id, "")
            .with_context(|| format!("cannot empty {}", machine_id.display()))?;
    }
    for rel in SHADOW_FILES {
        let path = tree.join(rel);
        if path.symlink_metadata().is_ok_and(|m| m.is_file()) {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            std::fs::write(&path, shadow_with_change_day(&text, epoch / 86_400))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    clamp_times(tree, epoch)
}

fn remove_file_if_there(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Remove everything inside `dir` (the build's `/tmp`: virt-customize leaves its
/// `builder.log` there, with download speeds in it), keeping `dir` itself.
fn empty_dir(dir: &Path) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let path = e.path();
        let removed = if e.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(())
}

/// Empty every regular file under `dir` (logs keep their names, owners and modes,
/// which some packages expect, but not what one install wrote into them).
fn empty_logs(dir: &Path) -> anyhow::Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in walkdir::WalkDir::new(dir).same_file_system(true) {
        let entry = entry.with_context(|| format!("cannot walk {}", dir.display()))?;
        if entry.file_type().is_file() {
            std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(entry.path())
                .with_context(|| format!("cannot empty {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// `/etc/shadow` with each set "last change" day replaced by `day`.
fn shadow_with_change_day(text: &str, day: u64) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, end) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        let mut fields: Vec<&str> = body.split(':').collect();
        let day = day.to_string();
        if fields.len() >= 3 && !fields[2].is_empty() {
            fields[2] = &day;
            out.push_str(&fields.join(":"));
        } else {
            out.push_str(body);
        }
        out.push_str(end);
    }
    out
}

/// Set every entry's modification time to at most `epoch` and its access time to
/// `epoch` (symlinks themselves, never their targets; one file system only).
fn clamp_times(tree: &Path, epoch: u64) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    for entry in walkdir::WalkDir::new(tree)
        .same_file_system(true)
        .contents_first(true)
    {
        let entry = entry.with_context(|| format!("cannot walk {}", tree.display()))?;
        let meta = entry
            .metadata()
            .with_context(|| format!("cannot stat {}", entry.path().display()))?;
        let mtime = u64::try_from(meta.mtime()).unwrap_or(0).min(epoch);
        set_times(entry.path(), epoch, mtime)?;
    }
    Ok(())
}

fn set_times(path: &Path, atime: u64, mtime: u64) -> anyhow::Result<()> {
    let c =
        std::ffi::CString::new(path.as_os_str().as_bytes()).context("a path with a NUL byte")?;
    let stamp = |secs: u64| libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: 0,
    };
    let times = [stamp(atime), stamp(mtime)];
    // SAFETY: utimensat(2) reads a NUL-terminated path and two timespecs we own.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        bail!("cannot set the times of {}: {e}", path.display());
    }
    Ok(())
}

/// How one ext4 file system is laid out in a raw disk.
pub struct Ext4 {
    /// Byte offset of the partition in the raw disk.
    pub offset: u64,
    /// The file system's size in 4 KiB blocks.
    pub blocks: u64,
    pub uuid: String,
    pub hash_seed: String,
    pub label: String,
    /// `SOURCE_DATE_EPOCH`: the superblock's and every inode's time.
    pub epoch: u64,
}

/// Fill the partition at `fs.offset` of `raw` with an ext4 file system holding
/// `tree`, then fix every inode's access, change and creation time.
pub fn write_ext4(ctx: &mut RunContext, tree: &Path, raw: &Path, fs: &Ext4) -> anyhow::Result<()> {
    let epoch = fs.epoch.to_string();
    let mut cmd = ctx.command("mke2fs");
    // `alphasort` follows LC_COLLATE: pin it, so every host lays out the same inodes.
    cmd.env("E2FSPROGS_FAKE_TIME", &epoch).env("LC_ALL", "C");
    cmd.args(["-F", "-q", "-t", "ext4", "-b", "4096", "-L", &fs.label]);
    cmd.args(["-U", &fs.uuid]);
    cmd.arg("-E").arg(format!(
        "offset={},hash_seed={},root_owner=0:0",
        fs.offset, fs.hash_seed
    ));
    cmd.arg("-d").arg(tree).arg(raw).arg(fs.blocks.to_string());
    ctx.run(cmd)?;

    // e2fsprogs reads `FILE?offset=N` as the file system at byte N of FILE.
    let device = format!("{}?offset={}", raw.display(), fs.offset);
    // Both print a line per group or per command: into a file, not the step's log.
    // The shell text is fixed; the paths are argv.
    let listing = raw.with_extension("dumpe2fs");
    let mut cmd = ctx.command("sh");
    cmd.args(["-c", "exec dumpe2fs \"$1\" > \"$2\"", "dumpe2fs"])
        .arg(&device)
        .arg(&listing);
    ctx.run_lines(cmd, &mut |_| None)?;
    let groups = std::fs::read_to_string(&listing)
        .with_context(|| format!("cannot read {}", listing.display()));
    let _ = std::fs::remove_file(&listing);
    let inodes = used_inodes(&groups?)?;
    let script = raw.with_extension("debugfs");
    std::fs::write(&script, debugfs_script(&inodes, fs.epoch))
        .with_context(|| format!("cannot write {}", script.display()))?;
    let mut cmd = ctx.command("sh");
    cmd.env("E2FSPROGS_FAKE_TIME", &epoch);
    cmd.args([
        "-c",
        "exec debugfs -w -f \"$1\" \"$2\" > /dev/null",
        "debugfs",
    ])
    .arg(&script)
    .arg(&device);
    let mut errors = Vec::new();
    let result = ctx.run_lines(cmd, &mut |line| {
        // debugfs exits 0 even when a command fails: anything on stderr but its
        // banner is an error.
        if !(line.starts_with("debugfs ") || line.starts_with("debugfs:") || line.trim().is_empty())
        {
            errors.push(line.to_string());
        }
        None
    });
    let _ = std::fs::remove_file(&script);
    result?;
    if !errors.is_empty() {
        errors.truncate(5);
        bail!(
            "debugfs could not set the inode times: {}",
            errors.join("; ")
        );
    }
    Ok(())
}

/// The inodes that hold files: the root (2) and every used inode from the first
/// non-reserved one, read from `dumpe2fs`'s per-group "Free inodes:" ranges.
fn used_inodes(dumpe2fs: &str) -> anyhow::Result<Vec<u64>> {
    let field = |name: &str| -> anyhow::Result<u64> {
        dumpe2fs
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("dumpe2fs printed no `{name}`"))
    };
    let per_group = field("Inodes per group:")?;
    let first = field("First inode:")?;
    let mut used = vec![2];
    let mut group = 0u64;
    for line in dumpe2fs.lines() {
        // Per group, indented; the superblock's unindented total is not a range.
        let Some(ranges) = line.strip_prefix("  Free inodes:") else {
            continue;
        };
        let start = group * per_group + 1;
        let end = start + per_group; // exclusive
        let mut free = Vec::new();
        for r in ranges.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            let (a, b): (u64, u64) = (
                a.parse().context("a free inode range")?,
                b.parse().context("a free inode range")?,
            );
            free.push(a..=b);
        }
        used.extend((start.max(first)..end).filter(|i| !free.iter().any(|r| r.contains(i))));
        group += 1;
    }
    if group == 0 {
        bail!("dumpe2fs listed no block groups");
    }
    Ok(used)
}

/// debugfs commands setting the access, change and creation time of `inodes`.
fn debugfs_script(inodes: &[u64], epoch: u64) -> String {
    let mut s = String::new();
    for i in inodes {
        for field in ["atime", "ctime", "crtime"] {
            s.push_str(&format!("sif <{i}> {field} @{epoch}\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_change_day_of_every_password_is_the_epochs() {
        let text = "root:$6$x$y:19700:0:99999:7:::\nnobody:*:19701:0:99999:7:::\nodd:!::0:\n";
        assert_eq!(
            shadow_with_change_day(text, 19723),
            "root:$6$x$y:19723:0:99999:7:::\nnobody:*:19723:0:99999:7:::\nodd:!::0:\n"
        );
    }

    #[test]
    fn used_inodes_are_the_complement_of_the_free_ranges() {
        let text = "Inodes per group:         10\nFirst inode:              11\nFree inodes:              13\n\
                    Group 0:\n  Free inodes: \nGroup 1:\n  Free inodes: 13-14, 17-20\nGroup 2:\n  Free inodes: 21-30\n";
        assert_eq!(used_inodes(text).unwrap(), vec![2, 11, 12, 15, 16]);
    }

    #[test]
    fn normalizing_removes_per_run_files_and_clamps_times() {
        use std::os::unix::fs::MetadataExt as _;
        let tree = std::env::temp_dir().join(format!("qflow-root-tree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tree);
        for d in [
            "var/cache/ldconfig",
            "var/lib/dpkg",
            "var/log/apt",
            "etc",
            "tmp/d",
        ] {
            std::fs::create_dir_all(tree.join(d)).unwrap();
        }
        std::fs::write(tree.join("var/cache/ldconfig/aux-cache"), "x").unwrap();
        std::fs::write(tree.join("var/lib/dpkg/status-old"), "x").unwrap();
        std::fs::write(tree.join("var/lib/dpkg/status"), "kept").unwrap();
        std::fs::write(tree.join("var/log/apt/history.log"), "today").unwrap();
        std::fs::write(tree.join("etc/machine-id"), "0123\n").unwrap();
        let old = tree.join("etc/old");
        std::fs::write(&old, "package file").unwrap();
        set_times(&old, 1000, 1000).unwrap();

        normalize(&tree, 1_700_000_000).unwrap();
        // Times first: reading a file below moves its access time.
        for e in walkdir::WalkDir::new(&tree) {
            let m = e.unwrap().metadata().unwrap();
            assert!(m.mtime() <= 1_700_000_000);
            assert_eq!(m.atime(), 1_700_000_000);
        }
        assert!(!tree.join("var/cache/ldconfig/aux-cache").exists());
        assert!(tree.join("tmp").is_dir() && !tree.join("tmp/d").exists());
        assert!(!tree.join("var/lib/dpkg/status-old").exists());
        assert_eq!(
            std::fs::read_to_string(tree.join("var/lib/dpkg/status")).unwrap(),
            "kept"
        );
        assert_eq!(
            std::fs::metadata(tree.join("var/log/apt/history.log"))
                .unwrap()
                .len(),
            0
        );
        assert_eq!(
            std::fs::read_to_string(tree.join("etc/machine-id")).unwrap(),
            ""
        );
        assert_eq!(std::fs::metadata(&old).unwrap().mtime(), 1000);
        std::fs::remove_dir_all(&tree).unwrap();
    }
}
