//! A user on a fresh machine asks `qflow doctor` what is missing, installs it, and
//! `qflow apply` stops before running anything when something is still missing —
//! with the same verdict doctor gave. "Missing" here is real: qflow runs with a
//! PATH of links to every program of the host except the one taken away.

mod common;

use std::path::{Path, PathBuf};

use common::{Run, Space};

/// A directory of symlinks to every program in the host's bin directories except
/// `without`, to use as PATH.
fn path_without(space: &Space, without: &[&str]) -> PathBuf {
    let dir = space.join("bin-without");
    std::fs::create_dir_all(&dir).unwrap();
    for bin in ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
        let Ok(rd) = std::fs::read_dir(bin) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            if without.iter().any(|w| name == *w) {
                continue;
            }
            let link = dir.join(&name);
            if link.symlink_metadata().is_err() {
                std::os::unix::fs::symlink(e.path(), &link).unwrap();
            }
        }
    }
    for w in without {
        assert!(!dir.join(w).exists());
    }
    dir
}

fn qflow_with_path(space: &Space, path: &Path, args: &[&str]) -> Run {
    let out = space
        .command(args)
        .env("PATH", path)
        .output()
        .expect("cannot run qflow");
    Run::from(out)
}

/// A data disk (needs qemu-img) and an independent command step that leaves a mark
/// if it ever runs.
const DISK_WORKFLOW: &str = r#"
version: 1
steps:
  mark:
    kind: command
    run: [touch, ran-marker]
  data:
    kind: disk
    size: 16M
    contents: ./workload
"#;

fn line_of<'a>(run: &'a Run, what: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(what))
        .unwrap_or_else(|| panic!("no line for `{what}`:\n{}", run.stdout))
}

#[test]
fn doctor_names_the_package_of_a_tool_missing_from_path_and_fails() {
    let s = Space::new();
    s.workflow(DISK_WORKFLOW).write("workload/a.txt", "a");
    let path = path_without(&s, &["qemu-img"]);
    let run = qflow_with_path(&s, &path, &["doctor"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let line = line_of(&run, "qemu-img");
    assert!(line.starts_with("MISSING"), "{line}");
    assert!(line.contains("apt-get install qemu-utils"), "{line}");
    assert!(
        line.contains("[data]"),
        "names the step that needs it: {line}"
    );
    assert!(line_of(&run, "mke2fs").starts_with("ok"));
    assert!(
        run.stdout
            .contains("apt-get install -y --no-install-recommends qemu-utils"),
        "{}",
        run.stdout
    );
}

#[test]
fn apply_stops_before_running_anything_when_a_tool_is_missing_and_names_the_same_package() {
    let s = Space::new();
    s.workflow(DISK_WORKFLOW).write("workload/a.txt", "a");
    let path = path_without(&s, &["qemu-img"]);
    let run = qflow_with_path(&s, &path, &["apply"]).failure(2);
    assert!(run.stderr_contains("`qemu-img`"), "{}", run.stderr);
    assert!(
        run.stderr_contains("apt-get install qemu-utils"),
        "{}",
        run.stderr
    );
    assert!(
        !s.join("ran-marker").exists(),
        "the independent step must not run"
    );
    assert!(run.ran().is_empty());
}

#[test]
fn doctor_and_apply_agree_on_a_host_that_has_everything() {
    let s = Space::new();
    s.workflow(DISK_WORKFLOW).write("workload/a.txt", "a");
    let run = s.qflow(&["doctor"]).success();
    assert!(
        line_of(&run, "qemu-img").starts_with("ok"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("MISSING"), "{}", run.stdout);
    s.apply();
    assert!(s.join("ran-marker").exists());
}

#[test]
fn doctor_and_apply_agree_that_a_disk_via_nbd_needs_the_nbd_module() {
    if Path::new("/sys/module/nbd").exists() {
        eprintln!("skipped: this host has the nbd module");
        return;
    }
    let s = Space::new();
    s.workflow(
        r#"
version: 1
steps:
  data:
    kind: disk
    size: 16M
    via: nbd
"#,
    );
    let run = s.qflow(&["doctor"]).failure(1);
    let missing: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("MISSING"))
        .collect();
    assert!(
        missing.iter().any(|l| l.contains("nbd kernel module")),
        "{}",
        run.stdout
    );
    let apply = s.qflow(&["apply"]).failure(2);
    assert!(
        apply.stderr_contains("nbd kernel module"),
        "{}",
        apply.stderr
    );
}

#[test]
fn doctor_without_a_workflow_checks_every_kinds_tools() {
    let s = Space::new();
    let path = path_without(&s, &["qemu-img", "debootstrap"]);
    let run = qflow_with_path(&s, &path, &["doctor", "--no-kvm-probe"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stdout.contains("no workflow given"), "{}", run.stdout);
    assert!(line_of(&run, "qemu-img").contains("apt-get install qemu-utils"));
    assert!(line_of(&run, "debootstrap").contains("apt-get install debootstrap"));
    for tool in [
        "qemu-system-x86_64",
        "mke2fs",
        "make",
        "gcc",
        "flex",
        "bison",
        "bc",
    ] {
        assert!(
            line_of(&run, tool).starts_with("ok") || line_of(&run, tool).starts_with("MISSING"),
            "{tool}"
        );
    }
    assert!(run.stdout.contains("KVM"), "{}", run.stdout);
    assert!(run.stdout.contains("libelf headers"), "{}", run.stdout);
}

#[test]
#[ignore = "slow: boots the host kernel under KVM for up to 10 s"]
fn doctor_tells_whether_kvm_can_boot_a_guest_not_only_whether_dev_kvm_exists() {
    let s = Space::new();
    let run = s.qflow(&["doctor"]);
    let kvm = run
        .stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("KVM"))
        .unwrap_or_else(|| panic!("no KVM line:\n{}", run.stdout));
    if Path::new("/dev/kvm").exists() {
        assert!(
            kvm.contains("printed its banner")
                || kvm.contains("printed nothing")
                || kvm.contains("cannot probe")
                || kvm.contains("probe failed"),
            "a verdict from a real boot: {kvm}"
        );
    } else {
        assert!(kvm.contains("absent"), "{kvm}");
    }
}
