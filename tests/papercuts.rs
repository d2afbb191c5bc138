//! What a new user of the hand recipe runs into, told in qflow's own words: QEMU's
//! own error when QEMU refuses to start, boot's local files checked, named and
//! bundled like any input, plugin arguments as a mapping, the CPU model and SIGILL,
//! the bundle's `--set` overrides, a tampered lock, and messages for malformed files.
//!
//! QEMU start-up failures are fast (QEMU exits at once); the one real boot boots the
//! host's kernel with a busybox initramfs under TCG, which takes seconds.

mod common;
use common::{Space, host_kernel};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// A boot of `./bzImage` with `fields` added, under TCG.
fn local_kernel_boot(fields: &str) -> String {
    format!(
        "version: 1\nname: papercuts\nsteps:\n  guest:\n    kind: boot\n    kernel: ./bzImage\n    \
         accel: tcg\n    memory: 128M\n    commands: ['true']\n    timeout: 1m\n{fields}"
    )
}

#[test]
fn a_kernel_field_pointing_at_no_kernel_fails_with_qemus_own_error() {
    let s = Space::new();
    s.write("bzImage", "this is not a kernel\n");
    s.workflow(&local_kernel_boot(""));
    let run = s.qflow(&["apply"]).failure(1);
    assert!(
        run.stderr
            .contains("QEMU exited (exit 1): qemu: invalid kernel header"),
        "{}",
        run.stderr
    );
    // What qflow saw of the socket may follow (when QEMU's exit raced the QMP
    // handshake), never in the headline.
    let headline = run
        .stderr
        .lines()
        .find(|l| l.contains("FAILED guest"))
        .unwrap_or_default();
    assert!(
        headline.contains("qemu: invalid kernel header"),
        "{}",
        run.stderr
    );
    assert!(
        !headline.contains("QMP") && !headline.contains("Broken pipe"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_bad_extra_argument_fails_with_qemus_own_error() {
    let s = Space::new();
    s.write("bzImage", "this is not a kernel\n");
    s.workflow(&local_kernel_boot("    extra_args: [-no-such-option]\n"));
    let run = s.qflow(&["apply"]).failure(1);
    assert!(
        run.stderr
            .contains("QEMU exited (exit 1): qemu-system-x86_64: -no-such-option: invalid option"),
        "{}",
        run.stderr
    );
}

#[test]
fn missing_local_boot_files_are_refused_at_load_time_with_their_line() {
    let s = Space::new();
    s.workflow(
        "version: 1\nsteps:\n  guest:\n    kind: boot\n    kernel: ./bzImage\n    initrd: ./initrd.img\n    \
         system: ./x.qcow2\n    plugins: [{ path: ./libinsn.so }]\n",
    );
    let run = s.qflow(&["plan"]).failure(2);
    for needle in [
        "workflow.yaml:5:5: `steps.guest.kernel`: input `./bzImage` does not exist",
        "workflow.yaml:6:5: `steps.guest.initrd`: input `./initrd.img` does not exist",
        "workflow.yaml:7:5: `steps.guest.system`: input `./x.qcow2` does not exist",
        "`steps.guest.plugins[0].path`: input `./libinsn.so` does not exist",
    ] {
        assert!(
            run.stderr.contains(needle),
            "{needle:?} in:\n{}",
            run.stderr
        );
    }
    assert!(!s.join("out").exists());
}

#[test]
fn a_bare_file_name_for_an_image_says_a_path_needs_a_slash() {
    let s = Space::new();
    s.write("base.qcow2", "");
    s.workflow("version: 1\nsteps:\n  guest:\n    kind: boot\n    system: base.qcow2\n");
    let run = s.qflow(&["plan"]).failure(2);
    assert!(
        run.stderr.contains("no step named `base.qcow2`")
            && run
                .stderr
                .contains("a local file needs a `/` in its path: write `./base.qcow2`"),
        "{}",
        run.stderr
    );
}

#[test]
fn plugin_arguments_given_by_name_reach_the_plugin_as_name_value_and_a_bare_value_warns() {
    let s = Space::new();
    let so = s.join("libinsn.so");
    let cc = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&so)
        .arg(format!("{FIXTURES}/boot/insn-plugin.c"))
        .status()
        .expect("cc installed");
    assert!(cc.success());
    s.write("bzImage", "x");
    s.workflow(&local_kernel_boot(
        "    plugins:\n      - { path: ./libinsn.so, args: { inline: on, filter: 42 } }\n      \
         - { path: ./libinsn.so, args: ['42'] }\n",
    ));
    let plan = s.qflow(&["plan"]).success();
    let text = format!("{}{}", plan.stdout, plan.stderr);
    assert!(
        text.contains("-plugin ./libinsn.so,filter=42,inline=on -plugin ./libinsn.so,arg=42"),
        "{text}"
    );
    assert!(
        text.contains("warning: `plugins[1].args`: the plugin receives `42` as `42=on`"),
        "{text}"
    );
    // What the plugin sees: QEMU 7.2 itself, on the options the plan shows.
    let option = text
        .split_whitespace()
        .skip_while(|w| *w != "-plugin")
        .nth(1)
        .unwrap()
        .to_string();
    assert_eq!(
        plugin_sees(&s, &option),
        "insn-plugin: argc=2 argv[0]=filter=42 argv[1]=inline=on"
    );
    assert_eq!(
        plugin_sees(&s, "./libinsn.so,arg=42"),
        "insn-plugin: argc=1 argv[0]=42=on"
    );
}

/// The arguments line the test plugin prints when QEMU loads it with `option`.
fn plugin_sees(s: &Space, option: &str) -> String {
    let log = s.join("plugin-stderr.txt");
    let mut qemu = std::process::Command::new("qemu-system-x86_64")
        .current_dir(s.path())
        .args(["-machine", "none", "-accel", "tcg", "-display", "none"])
        .args(["-monitor", "none", "-S", "-plugin", option])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.starts_with("insn-plugin: argc")) {
            break l.to_string();
        }
        if std::time::Instant::now() > deadline || qemu.try_wait().unwrap().is_some() {
            break format!("no arguments line; QEMU printed: {text}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = qemu.kill();
    let _ = qemu.wait();
    line
}

#[test]
fn a_tampered_lock_is_named_as_the_lock_not_as_filesystem_metadata() {
    let s = Space::new();
    s.workflow("version: 1\nsteps:\n  data:\n    kind: disk\n    size: 16M\n");
    s.apply();
    let lock = s.read("qflow.lock");
    let hash = lock
        .lines()
        .find(|l| l.contains("image.raw") || l.contains("image.qcow2"))
        .and_then(|l| l.split('"').rev().nth(1))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no image hash in:\n{lock}"));
    let forged = format!("{}{}", &hash[..hash.len() - 4], "0000");
    s.write("qflow.lock", lock.replace(&hash, &forged));
    let run = s.qflow(&["verify"]).failure(1);
    assert!(
        run.stdout
            .contains("the lock does not match the run it records"),
        "{}{}",
        run.stdout,
        run.stderr
    );
    assert!(
        run.stdout
            .contains("the rebuild is identical to the file the run recorded"),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("filesystem metadata"),
        "{}",
        run.stdout
    );
}

/// The files in a `.tar.gz`, by their path inside it.
fn archive_listing(archive: &std::path::Path) -> Vec<String> {
    let out = std::process::Command::new("tar")
        .arg("-tzf")
        .arg(archive)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// One real boot (the host's kernel copied to `./bzImage`, a busybox initramfs,
/// a local TCG plugin, `cpu: max`, a var overridden with `--set`), then what the
/// user does with it: bundle it, change the kernel, and run a program that dies
/// of SIGILL.
#[test]
fn a_local_kernel_and_plugin_are_bundled_named_when_changed_and_sigill_is_explained() {
    let s = Space::new();
    std::fs::copy(host_kernel(), s.join("bzImage")).unwrap();
    let cc = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(s.join("libinsn.so"))
        .arg(format!("{FIXTURES}/boot/insn-plugin.c"))
        .status()
        .expect("cc installed");
    assert!(cc.success());
    let workflow = |cpu: &str, command: &str| {
        format!(
            r#"version: 1
name: local-boot
vars:
  greeting: hi
steps:
  initramfs:
    kind: command
    run: [sh, {FIXTURES}/boot/make-initramfs.sh]
    inputs: [{FIXTURES}/boot/make-initramfs.sh]
    outputs: [initrd.img]
  guest:
    kind: boot
    kernel: ./bzImage
    initrd: initramfs
    append: console=ttyS0 quiet panic=-1
    memory: 256M
    accel: tcg
{cpu}    plugins: [{{ path: ./libinsn.so, args: {{ mode: counting }} }}]
    commands: ['echo ${{{{ greeting }}}}', {command}]
    timeout: 3m
"#
        )
    };
    s.workflow(&workflow("    cpu: max\n", "'grep -c avx2 /proc/cpuinfo'"));
    let run = s.qflow(&["apply", "--set", "greeting=hello"]).success();
    assert!(run.ran().contains(&"guest".to_string()), "{}", run.stderr);
    let qemu_log = s.read("out/guest/qemu.log");
    assert!(
        qemu_log.contains("insn-plugin: argc=1 argv[0]=mode=counting"),
        "{qemu_log}"
    );
    let records: serde_json::Value =
        serde_json::from_str(&s.read("out/guest/commands.json")).unwrap();
    assert_eq!(records[0]["output"].as_str().unwrap().trim(), "hello");
    assert_eq!(
        records[1]["status"], 0,
        "`cpu: max` offers AVX2 under TCG: {records}"
    );

    // The bundle carries the local kernel and plugin, and repeats the override.
    s.qflow(&["bundle", "--set", "greeting=hello", "-o", "a.tar.gz"])
        .success();
    let listing = archive_listing(&s.join("a.tar.gz"));
    for file in [
        "local-boot-artifact/bzImage",
        "local-boot-artifact/libinsn.so",
    ] {
        assert!(listing.iter().any(|l| l == file), "{file} in {listing:?}");
    }
    let unpacked = s.join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    let tar = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(s.join("a.tar.gz"))
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(tar.success());
    let readme = std::fs::read_to_string(unpacked.join("local-boot-artifact/README.md")).unwrap();
    assert!(
        readme.contains("qflow apply --set greeting=hello workflow.yaml"),
        "{readme}"
    );

    // A changed local kernel is named by the plan.
    let mut kernel = std::fs::OpenOptions::new()
        .append(true)
        .open(s.join("bzImage"))
        .unwrap();
    std::io::Write::write_all(&mut kernel, b"\0").unwrap();
    drop(kernel);
    let plan = s.qflow(&["plan", "--set", "greeting=hello"]).success();
    let text = format!("{}{}", plan.stdout, plan.stderr);
    assert!(text.contains("./bzImage"), "{text}");
    assert!(!text.contains("a secret or derived value"), "{text}");

    // A program that dies of SIGILL is explained, with the CPU model to try.
    s.workflow(&workflow("", r#""sh -c 'kill -ILL $$'""#));
    let run = s.qflow(&["apply", "--set", "greeting=hello"]).failure(1);
    for needle in [
        "SIGILL",
        "TCG does not emulate",
        "set `cpu: max`",
        "-mavx512",
    ] {
        assert!(
            run.stderr.contains(needle),
            "{needle:?} in:\n{}",
            run.stderr
        );
    }
}

#[test]
fn the_plan_shows_the_kernel_builds_share_of_job_slots() {
    let s = Space::new();
    s.workflow(
        "version: 1\nsteps:\n  kernel:\n    kind: kernel\n    source: { tarball: /usr/src/linux-source-6.1.tar.xz }\n    \
         config: tinyconfig\n    jobs: 1\n",
    );
    let plan = s.qflow(&["plan"]).success();
    assert!(
        plan.stdout.contains("# 1 job slots (`jobs: 1`;")
            && plan.stdout.contains("make runs as with `-j1`"),
        "{}",
        plan.stdout
    );
}
