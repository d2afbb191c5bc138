//! A user builds a Linux kernel with qflow, edits it, and boots the result.
//!
//! The fast tier uses the stand-in kernel tree in `fixtures/kernel` (a Makefile
//! that honours `O=` like kbuild, real `make` and `gcc -c`): it checks what the
//! step asks of make through the real binary and engine. The slow tier builds the
//! real thing: Debian's `linux-source-6.1` tarball with the quickstart's kernel
//! configuration (`common::shared_kernel_step`, built once per test run on the
//! shared cache). Editing a real tree of the user's, and its clean build coming out
//! byte-identical to this one, is the quickstart's story (`tests/quickstart.rs`).

mod common;
use std::path::{Path, PathBuf};

use common::{Space, shared_cache};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
/// The quickstart's kernel config fragment: the kernel tests build the same guest kernel.
const QUICKSTART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/workflows/quickstart");

/// A space holding a copy of the stand-in kernel tree at `linux/`.
fn stand_in_space() -> Space {
    let s = Space::new();
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{FIXTURES}/kernel"))
        .arg(s.join("linux"))
        .status()
        .unwrap();
    assert!(st.success());
    s
}

/// A workflow: the kernel step with `extra` fields, and a step that uses its bzImage.
fn workflow(source: &str, extra: &str) -> String {
    format!(
        r#"version: 1
name: kernel-test
steps:
  kernel:
    kind: kernel
    source: {source}
    config: tinyconfig
{extra}  boot:
    kind: command
    run: [sh, -c, 'cksum < "${{{{ steps.kernel }}}}/bzImage" > "$QFLOW_OUT/cksum"']
    outputs: [cksum]
"#
    )
}

/// Files named `name` anywhere under `dir`.
fn find(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            found.extend(find(&p, name));
        } else if e.file_name() == name {
            found.push(p);
        }
    }
    found
}

/// The most compiles the stand-in saw running at once.
fn max_concurrent_compiles(s: &Space) -> i32 {
    let logs = find(&s.join(".qflow/state"), "concurrency.log");
    assert_eq!(logs.len(), 1, "{logs:?}");
    let (mut now, mut max) = (0, 0);
    for l in std::fs::read_to_string(&logs[0]).unwrap().lines() {
        now += if l.starts_with('+') { 1 } else { -1 };
        max = max.max(now);
    }
    max
}

#[test]
fn applying_twice_builds_the_kernel_once() {
    let s = stand_in_space();
    s.workflow(&workflow("./linux", ""));
    assert_eq!(s.apply().ran_sorted(), ["boot", "kernel"]);
    for name in ["bzImage", "vmlinux", "System.map", "config"] {
        assert!(
            s.join("out/kernel").join(name).is_file(),
            "missing output {name}"
        );
    }
    let again = s.apply();
    assert!(again.ran().is_empty(), "{}", again.stderr);
    assert_eq!(again.cached().len(), 2);
}

#[test]
fn editing_one_kernel_file_rebuilds_only_that_file_the_kernel_and_its_dependents() {
    let s = stand_in_space();
    s.workflow(&workflow("./linux", ""));
    s.apply();
    let mut reboot = s.read("linux/kernel/reboot.c");
    reboot.push_str("int reboot_marker = 1;\n");
    s.write("linux/kernel/reboot.c", &reboot);
    let run = s.apply();
    assert_eq!(run.ran_sorted(), ["boot", "kernel"]);
    assert!(
        run.stderr.contains("linux/kernel/reboot.c"),
        "the rebuild names the changed file: {}",
        run.stderr
    );
    assert_eq!(
        common::compiled(&common::newest_log(&s.join(".qflow"), "kernel")),
        ["kernel/reboot.o"]
    );
}

#[test]
fn a_comment_only_edit_reruns_the_kernel_but_keeps_the_boot_step_cached() {
    let s = stand_in_space();
    s.workflow(&workflow("./linux", ""));
    s.apply();
    let before = std::fs::read(s.join("out/kernel/bzImage")).unwrap();
    let mut reboot = s.read("linux/kernel/reboot.c");
    reboot.push_str("/* a comment changes no object code */\n");
    s.write("linux/kernel/reboot.c", &reboot);
    let run = s.apply();
    assert_eq!(run.ran(), ["kernel"]);
    assert_eq!(run.cached(), ["boot"]);
    assert_eq!(std::fs::read(s.join("out/kernel/bzImage")).unwrap(), before);
}

#[test]
fn the_jobs_field_caps_how_many_files_make_compiles_at_once() {
    for jobs in [1, 2] {
        let s = stand_in_space();
        s.workflow(&workflow("./linux", &format!("    jobs: {jobs}\n")));
        s.qflow(&["apply", "--jobs", "2"]).success();
        assert_eq!(max_concurrent_compiles(&s), jobs, "with `jobs: {jobs}`");
        let log = common::newest_log(&s.join(".qflow"), "kernel");
        for l in log.lines().filter(|l| l.starts_with("$ make")) {
            assert!(
                !l.split(' ').any(|a| a.starts_with("-j")),
                "make got a job count: {l}"
            );
        }
    }
}

#[test]
fn a_compile_error_fails_the_step_with_the_compiler_lines() {
    let s = stand_in_space();
    s.write(
        "linux/kernel/reboot.c",
        "int reboot_init(void)\n{\n\treturn 6\n}\n",
    );
    s.workflow(&workflow("./linux", ""));
    let run = s.qflow(&["apply"]).failure(1);
    assert_eq!(run.failed(), ["kernel"]);
    assert!(
        run.stderr
            .contains("the kernel does not compile:\n    kernel/reboot.c:3:"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("error: expected ';'"), "{}", run.stderr);
    assert!(
        !s.join("out/kernel").exists(),
        "a failed build leaves no output"
    );
}

#[test]
fn a_make_flag_among_the_targets_is_refused_before_anything_runs() {
    let s = stand_in_space();
    s.workflow(&workflow("./linux", "    targets: [bzImage, -j64]\n"));
    let run = s.qflow(&["apply"]).failure(2);
    assert!(run.stderr.contains("workflow.yaml:"), "{}", run.stderr);
    assert!(
        run.stderr.contains("`-j64` is not a make target"),
        "{}",
        run.stderr
    );
    assert!(
        !s.join(".qflow/state").exists()
            || find(&s.join(".qflow/state"), "invocations.log").is_empty()
    );
}

#[test]
fn an_option_kconfig_drops_fails_naming_the_option() {
    let s = stand_in_space();
    s.workflow(&workflow("./linux", "    options: { VIRTIO_BLK: y }\n"));
    let run = s.qflow(&["apply"]).failure(1);
    assert!(
        run.stderr
            .contains("`CONFIG_VIRTIO_BLK=y` (from options.VIRTIO_BLK) is not set"),
        "{}",
        run.stderr
    );
}

#[test]
fn plan_shows_the_make_command_lines() {
    let s = stand_in_space();
    s.write("guest.config", "CONFIG_64BIT=y\n");
    s.workflow(&workflow("./linux", "    fragments: [guest.config]\n"));
    let run = s.qflow(&["plan"]).success();
    let linux = s.join("linux").display().to_string();
    assert!(
        run.stdout.contains(&format!(
            "$ make -C {linux} O=$QFLOW_STATE/build-<source> tinyconfig"
        )),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("merge_config.sh -m -O"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(&format!(
            "$ make -C {linux} O=$QFLOW_STATE/build-<source> bzImage"
        )),
        "{}",
        run.stdout
    );
}

// ---- slow tier: the real kernel ------------------------------------------------

#[test]
#[ignore = "slow: builds a real kernel from the Debian tarball (once per shared cache, ~5 min)"]
fn a_real_kernel_builds_from_the_debian_tarball_boots_and_is_then_cached() {
    let bzimage = common::shared_kernel();
    let s = Space::new().with_cache(&shared_cache());
    s.workflow(&format!(
        "version: 1\nname: kernel-shared\nsteps:\n{}",
        common::shared_kernel_step()
    ));
    let again = s.apply();
    assert!(
        again.ran().is_empty(),
        "a second apply runs nothing: {}",
        again.stderr
    );
    assert_eq!(
        std::fs::read(s.join("out/kernel/bzImage")).unwrap(),
        std::fs::read(&bzimage).unwrap()
    );
    let config = s.read("out/kernel/config");
    for fragment in ["qemu-guest.config", "systemd.config"] {
        for line in std::fs::read_to_string(format!("{QUICKSTART}/{fragment}"))
            .unwrap()
            .lines()
        {
            if line.starts_with("CONFIG_") {
                assert!(
                    config.lines().any(|l| l == line),
                    "{line} of {fragment} is not in the built .config"
                );
            }
        }
    }
    assert!(config.lines().any(|l| l == "CONFIG_KERNEL_LZ4=y"));
    // It is a kernel: QEMU boots it to the point where it looks for a root file system.
    let out = std::process::Command::new("timeout")
        .args([
            "60",
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-nographic",
            "-no-reboot",
            "-m",
            "256",
            "-kernel",
        ])
        .arg(s.join("out/kernel/bzImage"))
        .args(["-append", "console=ttyS0 panic=-1"])
        .output()
        .expect("qemu-system-x86_64 is needed for the slow tier");
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(console.contains("Linux version 6.1"), "{console}");
    assert!(
        console.contains("(qflow@qflow)"),
        "the build identity is pinned: {console}"
    );
    assert!(
        console.contains("VFS: Unable to mount root fs"),
        "{console}"
    );
}
