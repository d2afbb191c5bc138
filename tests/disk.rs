//! A user makes the recipe's data disk: a filesystem of a given size, filled from a
//! host directory and owned by the guest's user, via `mkfs` (rootless, the
//! default), `loop` (root) or `nbd` (root and the nbd module, the hand recipe).
//! Every test reads the disk back with debugfs and checks each file's content and
//! owner.
//!
//! `via: nbd` cannot run on these machines: `qemu-nbd --connect` needs the nbd
//! kernel module, which they lack. Here it is only refused before anything runs;
//! its sequence, the `modprobe` retry and the cleanup after a failure or Ctrl-C are
//! tested in `steps/src/disk/nbd.rs` with stand-in programs that record their calls
//! and a stand-in device directory handed to the step. Those stand-ins are the ONLY
//! fake in qflow's tests; everything else here is the real mke2fs, debugfs,
//! qemu-img and loop mounts.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::Space;

/// The output directory of `step` after an apply, from `qflow.lock`.
fn output_dir(s: &Space, cache: &Path, step: &str) -> PathBuf {
    let lock: serde_json::Value = serde_json::from_str(&s.read("qflow.lock")).unwrap();
    let hash = lock["steps"][step]["output"]
        .as_str()
        .unwrap_or_else(|| panic!("no output for {step}"));
    cache.join("trees").join(hash)
}

/// The disk image of `step`, converted to raw in the space for debugfs.
fn raw_disk(s: &Space, cache: &Path, step: &str) -> PathBuf {
    let qcow2 = output_dir(s, cache, step).join("image.qcow2");
    let raw = s.join(&format!("{step}.raw"));
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&qcow2)
        .arg(&raw)
        .status()
        .unwrap();
    assert!(st.success(), "cannot convert {}", qcow2.display());
    raw
}

/// `(uid, gid, content)` of `path` inside an ext filesystem image.
fn read_back(raw: &Path, path: &str) -> (u32, u32, Vec<u8>) {
    let stat = Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat \"{path}\""))
        .arg(raw)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&stat.stdout).into_owned();
    let field = |name: &str| -> u32 {
        let rest = text
            .split(name)
            .nth(1)
            .unwrap_or_else(|| panic!("{path} is not on the disk: {text}"));
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    let cat = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat \"{path}\""))
        .arg(raw)
        .output()
        .unwrap();
    (field("User:"), field("Group:"), cat.stdout)
}

fn blob() -> Vec<u8> {
    (0..=255u8).cycle().take(300_000).collect()
}

/// A workload directory: a script, a file with a space in its name, a nested binary.
fn write_workload(s: &Space) {
    s.write("workload/run.sh", "#!/bin/sh\necho running the benchmark\n");
    s.write("workload/inputs/small input.txt", "42\n");
    s.write("workload/inputs/deep/data.bin", blob());
    std::fs::set_permissions(
        s.join("workload/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
}

fn assert_workload(raw: &Path, uid: u32, gid: u32) {
    let files: [(&str, Vec<u8>); 3] = [
        (
            "/run.sh",
            b"#!/bin/sh\necho running the benchmark\n".to_vec(),
        ),
        ("/inputs/small input.txt", b"42\n".to_vec()),
        ("/inputs/deep/data.bin", blob()),
    ];
    for (path, content) in files {
        let (u, g, bytes) = read_back(raw, path);
        assert_eq!((u, g), (uid, gid), "owner of {path}");
        assert!(
            bytes == content,
            "{path}: {} bytes read back, {} expected",
            bytes.len(),
            content.len()
        );
    }
    for dir in ["/", "/inputs", "/inputs/deep"] {
        assert_eq!(read_back(raw, dir).0, uid, "owner of {dir}");
    }
}

fn disk_workflow(via: &str) -> String {
    format!(
        "version: 1\nsteps:\n  data:\n    kind: disk\n    size: 64M\n    contents: ./workload\n    owner: 1000:1000\n    via: {via}\n"
    )
}

#[test]
fn a_mkfs_disk_holds_every_file_with_its_content_and_owner() {
    let s = Space::new();
    write_workload(&s);
    s.workflow(&disk_workflow("mkfs"));
    let run = s.apply();
    assert_eq!(run.ran(), ["data"]);
    let cache = s.join(".qflow");
    assert_workload(&raw_disk(&s, &cache, "data"), 1000, 1000);
    let info = Command::new("qemu-img")
        .arg("info")
        .arg(output_dir(&s, &cache, "data").join("image.qcow2"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&info.stdout).contains("file format: qcow2"));
    assert_eq!(s.apply().cached(), ["data"]);
}

#[test]
fn two_clean_runs_of_the_same_contents_give_byte_identical_disks() {
    let one = Space::new();
    write_workload(&one);
    one.workflow(&disk_workflow("mkfs"));
    one.apply();
    // A second checkout a second later: same bytes, other timestamps and inodes.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let two = Space::new();
    write_workload(&two);
    two.workflow(&disk_workflow("mkfs"));
    two.apply();
    let a =
        std::fs::read(output_dir(&one, &one.join(".qflow"), "data").join("image.qcow2")).unwrap();
    let b =
        std::fs::read(output_dir(&two, &two.join(".qflow"), "data").join("image.qcow2")).unwrap();
    assert!(a == b, "the two disks differ");
}

#[test]
fn editing_a_workload_file_rebuilds_the_disk_with_the_new_content() {
    let s = Space::new();
    write_workload(&s);
    s.workflow(&disk_workflow("mkfs"));
    s.apply();
    s.write("workload/inputs/small input.txt", "43\n");
    assert_eq!(s.apply().ran(), ["data"]);
    let raw = raw_disk(&s, &s.join(".qflow"), "data");
    assert_eq!(read_back(&raw, "/inputs/small input.txt").2, b"43\n");
}

#[test]
fn a_loop_disk_holds_every_file_with_its_content_and_owner() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: `via: loop` needs root");
        return;
    }
    let s = Space::new();
    write_workload(&s);
    s.workflow(&disk_workflow("loop"));
    assert_eq!(s.apply().ran(), ["data"]);
    assert_workload(&raw_disk(&s, &s.join(".qflow"), "data"), 1000, 1000);
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        !mounts.contains(s.path().to_str().unwrap()),
        "a mount was left behind:\n{mounts}"
    );
}

#[test]
fn a_loop_copy_that_does_not_fit_unmounts_and_keeps_nothing() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: `via: loop` needs root");
        return;
    }
    let s = Space::new();
    s.write("workload/big.bin", vec![7u8; 24 << 20]);
    s.workflow(&disk_workflow("loop").replace("size: 64M", "size: 16M"));
    let run = s.qflow(&["apply"]).failure(1);
    assert_eq!(run.failed(), ["data"]);
    assert!(
        run.stderr_contains("No space left on device"),
        "{}",
        run.stderr
    );
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        !mounts.contains(s.path().to_str().unwrap()),
        "a mount was left behind:\n{mounts}"
    );
    let loops = Command::new("losetup").arg("-a").output().unwrap();
    assert!(
        !String::from_utf8_lossy(&loops.stdout).contains(s.path().to_str().unwrap()),
        "a loop device was left attached"
    );
    assert!(!s.join("qflow.lock").exists() || !s.read("qflow.lock").contains("\"data\""));
}

#[test]
fn an_xfs_loop_disk_holds_every_file_with_its_owner() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || Command::new("mkfs.xfs").arg("-V").output().is_err() {
        eprintln!("skipped: an xfs disk via loop needs root and xfsprogs");
        return;
    }
    let s = Space::new();
    write_workload(&s);
    s.workflow(&disk_workflow("loop").replace("size: 64M", "size: 320M\n    fs: xfs"));
    assert_eq!(s.apply().ran(), ["data"]);
    let raw = raw_disk(&s, &s.join(".qflow"), "data");
    let mnt = s.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-o", "loop,ro"])
        .arg(&raw)
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success());
    let check = || -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        for (rel, content) in [
            (
                "run.sh",
                b"#!/bin/sh\necho running the benchmark\n".to_vec(),
            ),
            ("inputs/small input.txt", b"42\n".to_vec()),
            ("inputs/deep/data.bin", blob()),
        ] {
            let p = mnt.join(rel);
            let meta = std::fs::metadata(&p).map_err(|e| format!("{rel}: {e}"))?;
            if (meta.uid(), meta.gid()) != (1000, 1000) {
                return Err(format!("{rel} is owned by {}:{}", meta.uid(), meta.gid()));
            }
            if std::fs::read(&p).map_err(|e| e.to_string())? != content {
                return Err(format!("{rel} has other content"));
            }
        }
        Ok(())
    };
    let result = check();
    let _ = Command::new("umount").arg(&mnt).status();
    result.unwrap();
}

/// Stand-ins for the programs of the nbd recipe, recording their argv into
/// `calls` (version queries excepted). `modprobe` creates the `nbdN` nodes the
/// real module would; `cp` fails when `fail_copy` is set.
fn nbd_standins(s: &Space, fail_copy: bool) -> (String, PathBuf) {
    nbd_standins_with_cp(
        s,
        if fail_copy {
            "echo 'cp: error writing: No space left on device' >&2; exit 1\n"
        } else {
            ""
        },
    )
}

fn nbd_standins_with_cp(s: &Space, cp: &str) -> (String, PathBuf) {
    let bin = s.join("standins");
    let dev = s.join("fake-dev");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&dev).unwrap();
    let calls = s.join("calls");
    std::fs::write(&calls, "").unwrap();
    let head = format!(
        "#!/bin/sh\ncase \"$1\" in --version|-V) echo \"$(basename \"$0\") stand-in 1.0\"; exit 0;; esac\necho \"$(basename \"$0\") $*\" >> '{}'\n",
        calls.display()
    );
    let connect = "case \"$1\" in --connect=*) d=\"${1#--connect=}\"; [ -e \"$d\" ] || { echo \"qemu-nbd: Failed to open $d: No such file or directory\" >&2; exit 1; };; esac\n";
    let modprobe = format!("for i in 0 1 2 3; do : > '{}/nbd'$i; done\n", dev.display());
    for (name, body) in [
        ("qemu-nbd", connect.to_string()),
        ("modprobe", modprobe),
        ("mkfs.ext4", String::new()),
        ("mount", String::new()),
        ("umount", String::new()),
        ("chown", String::new()),
        ("cp", cp.to_string()),
    ] {
        let p = bin.join(name);
        std::fs::write(&p, format!("{head}{body}exit 0\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    (path, dev)
}

#[test]
fn nbd_without_the_module_is_refused_before_anything_runs() {
    if Path::new("/sys/module/nbd").exists() || Path::new("/dev/nbd0").exists() {
        eprintln!("skipped: this host has the nbd module");
        return;
    }
    let s = Space::new();
    write_workload(&s);
    s.workflow(&disk_workflow("nbd"));
    let (path, _dev) = nbd_standins(&s, false);
    let out = s.command(&["apply"]).env("PATH", &path).output().unwrap();
    let run = common::Run::from(out);
    assert_ne!(run.code, 0);
    assert!(run.ran().is_empty());
    assert!(run.stderr_contains("nbd kernel module"), "{}", run.stderr);
    assert!(
        run.stderr_contains("via: loop") && run.stderr_contains("via: mkfs"),
        "{}",
        run.stderr
    );
    assert_eq!(s.read("calls"), "", "a program ran before the refusal");
}

#[test]
fn bad_disk_fields_name_the_field_and_nothing_runs() {
    let s = Space::new();
    write_workload(&s);
    let cases = [
        ("size: 8X", "size", "unknown unit `X`"),
        (
            "size: 8G\n    contents: ./nowhere",
            "contents",
            "does not exist",
        ),
        ("size: 8G\n    owner: alice", "owner", "uid:gid"),
        ("size: 8G\n    via: usb", "via", "usb"),
    ];
    for (fields, field, message) in cases {
        s.workflow(&format!(
            "version: 1\nsteps:\n  data:\n    kind: disk\n    {fields}\n"
        ));
        let run = s.qflow(&["apply"]).failure(2);
        assert!(run.stderr_contains("workflow.yaml:"), "{}", run.stderr);
        assert!(
            run.stderr_contains(field) && run.stderr_contains(message),
            "{field}: {}",
            run.stderr
        );
        assert!(run.ran().is_empty());
    }
}
