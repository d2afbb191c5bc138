//! `qflow gc` and `qflow fsck`: space comes back when it is needed most (a full
//! disk), what nothing uses goes, and the full check finds what stat fields cannot.

mod common;
use common::Space;

fn one_step(s: &Space, text: &str) {
    s.workflow(&format!(
        r#"version: 1
name: gc
steps:
  a:
    kind: command
    run: [sh, -c, 'head -c 2000000 /dev/urandom > "$QFLOW_OUT/big"; echo {text} > "$QFLOW_OUT/a.txt"']
    inputs: [src/]
    outputs: [big, a.txt]
"#
    ));
}

#[test]
fn fsck_finds_an_object_changed_with_its_time_put_back_and_repair_makes_the_step_run_again() {
    let s = Space::new();
    s.write("src/x", "x");
    one_step(&s, "apple");
    s.apply();
    let file = std::fs::canonicalize(s.join("out/a/a.txt")).unwrap();
    let before = std::fs::metadata(&file).unwrap();
    let mut perms = before.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(&file, perms).unwrap();
    std::fs::write(&file, "grape\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_modified(before.modified().unwrap()))
        .unwrap();

    let check = s.qflow(&["fsck"]).failure(1);
    assert!(check.stdout.contains("damaged object"), "{}", check.stdout);
    assert!(check.stdout.contains("`a.txt`"), "{}", check.stdout);
    s.qflow(&["fsck", "--repair"]).failure(1);
    s.qflow(&["fsck"]).success();
    let run = s.apply();
    assert_eq!(run.ran(), vec!["a".to_string()], "{}", run.stderr);
    assert_eq!(s.read("out/a/a.txt"), "apple\n");
}

#[test]
fn gc_removes_the_tree_indexes_no_input_uses() {
    let s = Space::new();
    s.write("src/x", "x");
    s.write("old/y", "y");
    one_step(&s, "apple");
    s.write(
        "workflow.yaml",
        s.read("workflow.yaml")
            .replace("inputs: [src/]", "inputs: [old/]"),
    );
    s.apply();
    one_step(&s, "apple");
    s.apply();
    let indexes = || {
        std::fs::read_dir(s.join(".qflow/tree-index"))
            .unwrap()
            .count()
    };
    assert_eq!(indexes(), 2, "one index per input tree walked");
    let gc = s.qflow(&["gc"]).success();
    assert!(gc.stderr.contains("1 tree indexes"), "{}", gc.stderr);
    assert_eq!(indexes(), 1);
    assert!(
        s.apply().ran().is_empty(),
        "the kept index still proves src/"
    );
}

/// A cache on a small file system filled to the last block: `gc` must still free
/// space. Needs root (a tmpfs mount); CI runs as root.
#[test]
fn gc_frees_space_on_a_full_disk() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("gc_frees_space_on_a_full_disk: needs root to mount a tmpfs; not run");
        return;
    }
    let mnt = common::scratch_file("full-disk");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(mounted.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _unmount = Unmount(mnt.clone());
    let s = Space::new().with_cache(&mnt.join("cache"));
    s.write("src/x", "x");
    for text in ["one", "two", "three"] {
        one_step(&s, text);
        s.apply();
    }
    // Fill the file system to the last byte.
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k", "status=none"])
        .arg(format!("of={}", mnt.join("filler").display()))
        .status();
    let free = |p: &std::path::Path| {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st.f_bavail as u64 * st.f_frsize as u64
    };
    assert!(free(&mnt) < 64 * 1024, "the disk is full");
    let gc = s.qflow(&["gc", "--keep-runs", "1"]);
    assert_eq!(gc.code, 0, "gc on a full disk: {}", gc.stderr);
    assert!(free(&mnt) > 3_000_000, "gc freed the two older results");
    assert!(s.apply().ran().is_empty(), "the kept result is intact");
}
