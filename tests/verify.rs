//! An author (or an artifact evaluator) runs `qflow verify`: every step is rebuilt
//! from nothing in a temporary cache and each output hash is compared with the
//! lock. Deterministic steps come out identical; a step that stamps the time does
//! not, and verify says so; a data disk whose workload changed is named down to the
//! first differing file. The user's lock, cache and `out/` are left alone.

mod common;

use std::path::{Path, PathBuf};

use common::{Run, Space};

const DETERMINISTIC: &str = r#"
version: 1
name: paper
steps:
  hello:
    kind: command
    run: [sh, -c, 'echo hello > "$QFLOW_OUT/hello.txt"']
    outputs: [hello.txt]
  data:
    kind: disk
    size: 16M
    contents: ./workload
"#;

fn with_workload(s: &Space) {
    s.write("workload/bench/run.sh", "#!/bin/sh\necho run\n")
        .write("workload/data.txt", "1 2 3\n");
}

/// `qflow verify` with its scratch directory under the space (to check it is removed).
fn verify(s: &Space) -> Run {
    let tmp = s.join("tmpdir");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = s
        .command(&["verify"])
        .env("TMPDIR", &tmp)
        .output()
        .expect("cannot run qflow");
    Run::from(out)
}

/// The table row of `output` (`step/path`): its verdict.
fn verdict(run: &Run, output: &str) -> String {
    let line = run
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(output))
        .unwrap_or_else(|| panic!("no row for {output}:\n{}", run.stdout));
    line.split_whitespace()
        .skip(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_deterministic_workflow_verifies_identical_and_the_users_lock_is_untouched() {
    let s = Space::new();
    s.workflow(DETERMINISTIC);
    with_workload(&s);
    s.apply();
    let lock_before = s.read("qflow.lock");
    let out_before = std::fs::read_link(s.join("out/data")).unwrap();
    let cache_before = listing(&s.join(".qflow/trees"));

    let run = verify(&s);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(verdict(&run, "hello/hello.txt"), "identical");
    assert_eq!(verdict(&run, "data/image.qcow2"), "identical");
    assert!(
        run.stdout.contains("all 2 outputs identical"),
        "{}",
        run.stdout
    );
    // It really rebuilt: both steps ran in the scratch cache.
    assert_eq!(run.ran_sorted(), vec!["data", "hello"]);

    assert_eq!(
        s.read("qflow.lock"),
        lock_before,
        "the lock is not rewritten"
    );
    assert_eq!(std::fs::read_link(s.join("out/data")).unwrap(), out_before);
    assert_eq!(listing(&s.join(".qflow/trees")), cache_before);
    assert!(listing(&s.join("tmpdir")).is_empty(), "scratch removed");
}

#[test]
fn a_step_that_stamps_the_time_is_reported_different_and_verify_fails() {
    let s = Space::new();
    s.workflow(&format!(
        "{DETERMINISTIC}
  stamp:
    kind: command
    run: [sh, -c, 'date +%s%N > \"$QFLOW_OUT/stamp.txt\"']
    outputs: [stamp.txt]
"
    ));
    with_workload(&s);
    s.apply();
    let run = verify(&s);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(verdict(&run, "stamp/stamp.txt"), "DIFFERENT");
    assert_eq!(verdict(&run, "hello/hello.txt"), "identical");
    assert_eq!(verdict(&run, "data/image.qcow2"), "identical");
    assert!(
        run.stdout.contains("1 of 3 outputs differ"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("stamp/stamp.txt: first differing line 1: \""),
        "{}",
        run.stdout
    );
    // Same key material, different bytes: no key note for it.
    assert!(!run.stdout.contains("note: step `stamp`"), "{}", run.stdout);
}

#[test]
fn a_changed_workload_names_the_first_differing_file_of_the_data_disk() {
    let s = Space::new();
    s.workflow(DETERMINISTIC);
    with_workload(&s);
    s.apply();
    // The workload changes after the lock was written (say, a late fix).
    s.write("workload/bench/run.sh", "#!/bin/sh\necho run twice\n");
    let run = verify(&s);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(verdict(&run, "data/image.qcow2"), "DIFFERENT");
    assert!(
        run.stdout
            .contains("data/image.qcow2: first differing file: /bench/run.sh (content)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("note: step `data` was rebuilt from other key material than the lock records: input `./workload`"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_partitioned_image_is_read_at_its_first_partition() {
    // A command step makes an MBR-partitioned ext4 image (as debootstrap does:
    // the filesystem at 1 MiB) holding one file that changes on every run.
    let s = Space::new();
    s.workflow(
        r#"
version: 1
steps:
  disk:
    kind: command
    outputs: [image.raw]
    run:
      - sh
      - -ec
      - |
        d=$(mktemp -d)
        echo same > "$d/same.txt"
        date +%s%N > "$d/stamp.txt"
        img="$QFLOW_OUT/image.raw"
        truncate -s 8M "$img"
        echo 'start=2048, type=83' | sfdisk -q "$img"
        mke2fs -q -t ext4 -d "$d" -E offset=1048576 "$img" 6M
        rm -r "$d"
"#,
    );
    s.apply();
    let run = verify(&s);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("disk/image.raw: first differing file: /stamp.txt (content)"),
        "{}",
        run.stdout
    );
}

#[test]
fn verify_without_a_lock_says_to_apply_first() {
    let s = Space::new();
    s.workflow(DETERMINISTIC);
    with_workload(&s);
    let run = verify(&s).failure(2);
    assert!(run.stderr_contains("qflow apply"), "{}", run.stderr);
}

#[test]
fn a_memory_snapshot_that_differs_is_machine_state_judged_by_what_restores_it() {
    // `snap` stands for a checkpoint: its bytes differ on every build, but the run
    // restored from it (`restored`) computes the same result each time.
    let s = Space::new();
    s.workflow(
        r#"
version: 1
steps:
  snap:
    kind: command
    run: [sh, -c, 'date +%s%N > "$QFLOW_OUT/memory.snapshot"']
    outputs: [memory.snapshot]
  restored:
    kind: command
    run: [sh, -c, 'test -s ${{ steps.snap }}/memory.snapshot && echo 42 > "$QFLOW_OUT/result.txt"']
    outputs: [result.txt]
"#,
    );
    s.apply();
    let run = verify(&s);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(verdict(&run, "restored/result.txt"), "identical");
    let (images, state) = run.stdout.split_once("machine state").unwrap();
    assert!(!images.contains("snap/memory.snapshot"), "{}", run.stdout);
    assert!(
        state.contains("differs, expected; what uses it (`restored`) rebuilt identical"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("1 machine state outputs differ, as expected"),
        "{}",
        run.stdout
    );
}

#[test]
fn verify_twice_compares_two_clean_builds_without_an_earlier_apply() {
    let s = Space::new();
    s.workflow(DETERMINISTIC);
    with_workload(&s);
    let tmp = s.join("tmpdir");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = s
        .command(&["verify", "--twice"])
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    let run = Run::from(out).success();
    assert!(
        run.stdout.contains("compared with the first clean build"),
        "{}",
        run.stdout
    );
    assert_eq!(verdict(&run, "hello/hello.txt"), "identical");
    assert_eq!(verdict(&run, "data/image.qcow2"), "identical");
    assert!(!s.join("qflow.lock").exists(), "no lock is written");
    assert!(listing(&tmp).is_empty(), "both builds removed");
}

#[test]
fn verify_of_one_step_rebuilds_only_it_and_what_it_depends_on() {
    let s = Space::new();
    s.workflow(&format!(
        "{DETERMINISTIC}
  count:
    kind: command
    run: [sh, -c, 'wc -c < \"${{{{ steps.hello }}}}/hello.txt\" > \"$QFLOW_OUT/count.txt\"']
    outputs: [count.txt]
"
    ));
    with_workload(&s);
    s.apply();
    let tmp = s.join("tmpdir");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = s
        .command(&["verify", "--step", "count"])
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    let run = Run::from(out).success();
    assert_eq!(run.ran_sorted(), vec!["count", "hello"]);
    assert_eq!(verdict(&run, "count/count.txt"), "identical");
    assert!(!run.stdout.contains("data/image.qcow2"), "{}", run.stdout);
    let bad = s.qflow(&["verify", "--step", "cuont"]).failure(2);
    assert!(bad.stderr_contains("cuont"), "{}", bad.stderr);
}

#[test]
fn a_kernel_is_rebuilt_from_a_clean_build_tree_and_compared_byte_for_byte() {
    // The stand-in kernel tree (a Makefile that honours `O=` and the KBUILD_BUILD_*
    // pins like kbuild, real `gcc -c`): verify builds it again in an empty build tree
    // of its own. That a real kernel's clean builds are byte-identical is the slow
    // tier's `tests/quickstart.rs` (a user's tree against the tarball build).
    let s = Space::new();
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/kernel"
        ))
        .arg(s.join("linux"))
        .status()
        .unwrap();
    assert!(st.success());
    s.workflow(
        "version: 1\nname: kernel\nsteps:\n  kernel:\n    kind: kernel\n    source: ./linux\n    config: tinyconfig\n",
    );
    s.apply();
    let logs = invocation_logs(&s.join(".qflow"));
    assert_eq!(logs.len(), 1, "one kept build tree: {logs:?}");
    let before = std::fs::read_to_string(&logs[0]).unwrap();

    let run = verify(&s);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.ran(), vec!["kernel"], "rebuilt, not taken from a cache");
    assert_eq!(verdict(&run, "kernel/bzImage"), "identical");
    assert_eq!(
        std::fs::read_to_string(&logs[0]).unwrap(),
        before,
        "the user's kept build tree is not where verify builds"
    );
}

/// The stand-in kernel's `invocations.log` files under `dir`: one per build tree.
fn invocation_logs(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(invocation_logs(&path));
        } else if entry.file_name() == "invocations.log" {
            found.push(path);
        }
    }
    found
}

#[test]
#[ignore = "slow: four TCG boots of the host's kernel under icount (about 2 min)"]
fn an_icount_boot_and_the_runs_restored_from_it_repeat_their_console_byte_for_byte() {
    // A guest with no disk (the host's kernel and a busybox initramfs) under
    // icount, its checkpoint, and two runs restored from it, built twice from
    // nothing: the consoles are judged like results, and come out identical.
    let kernel = common::host_kernel();
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let s = Space::new();
    s.workflow(&format!(
        r#"version: 1
name: icount-console
steps:
  initramfs:
    kind: command
    run: [sh, {fixtures}/boot/make-initramfs.sh]
    inputs: [{fixtures}/boot/make-initramfs.sh]
    outputs: [initrd.img]
  guest:
    kind: boot
    kernel: {kernel}
    initrd: initramfs
    append: console=ttyS0 panic=-1
    memory: 256M
    accel: tcg
    icount: 1
    commands: [uname -r, "echo $((6 * 7)) > /tmp/answer.txt"]
    collect: [/tmp/answer.txt]
    checkpoint: true
    timeout: 5m
  runs:
    kind: boot
    from_checkpoint: guest
    matrix: {{ n: [1, 2] }}
    commands: ["echo run $n"]
    timeout: 5m
"#
    ));
    let tmp = s.join("tmpdir");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = s
        .command(&["verify", "--twice", "--jobs", "2"])
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    let run = Run::from(out);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    for output in [
        "guest/console.log",
        "guest/session.log",
        "guest/answer.txt",
        "runs/n=1/console.log",
        "runs/n=2/session.log",
    ] {
        assert_eq!(verdict(&run, output), "identical", "{}", run.stdout);
    }
    let (_, state) = run.stdout.split_once("machine state").unwrap();
    assert!(state.contains("guest/memory.snapshot"), "{}", run.stdout);
    assert!(!state.contains("console.log"), "{}", run.stdout);
}
