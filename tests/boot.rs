//! A user boots a kernel they built with a busybox root file system and a data disk,
//! runs commands in the guest, keeps the results, and restores a checkpoint many times.
//!
//! Everything runs real QEMU under TCG (these machines' KVM cannot boot Linux). The
//! kernel is the kernel kind's tinyconfig + `qemu-guest.config` build of the Debian
//! linux-source tarball, built once per test run on the shared cache
//! (`common::shared_kernel`); each test boots it from a cache of its own, so the
//! tests boot side by side instead of waiting for the shared cache in turn. The
//! images come from `bench/guest/make-rootfs.sh`. Each test names its QEMU with
//! `-name <its space>` and checks at the end that no such process is left.

mod common;
use common::Space;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
/// The busybox guest images the boot benchmark boots.
const GUEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/guest");

/// The kernel, system image and data disk every boot test uses, then `steps`. The
/// `kernel` step copies the slow tier's kernel into this workspace's cache.
fn workflow(steps: &str) -> String {
    workflow_with(&common::shared_kernel(), steps)
}

/// `workflow` for the fast tests, which plan or refuse and never boot: the host's
/// kernel stands in, so they build no kernel.
fn planned_workflow(steps: &str) -> String {
    workflow_with(std::path::Path::new(&common::host_kernel()), steps)
}

fn workflow_with(kernel: &std::path::Path, steps: &str) -> String {
    format!(
        r#"version: 1
name: boot-test
steps:
  kernel:
    kind: command
    run: [sh, -c, 'cp "$1" "$QFLOW_OUT/bzImage"', sh, {kernel}]
    inputs: [{kernel}]
    outputs: [bzImage]
  system:
    kind: command
    run: [sh, {GUEST}/make-rootfs.sh, system]
    inputs: [{GUEST}/make-rootfs.sh]
    outputs: [image.raw]
  data:
    kind: command
    run: [sh, {GUEST}/make-rootfs.sh, data, {GUEST}/run.sh]
    inputs: [{GUEST}/make-rootfs.sh, {GUEST}/run.sh]
    outputs: [image.raw]
{steps}"#,
        kernel = kernel.display()
    )
}

/// A space with a cache of its own whose QEMU processes carry `-name <unique>`.
fn space() -> (Space, String) {
    let s = Space::new();
    let name = s.path().file_name().unwrap().to_string_lossy().into_owned();
    (s, name)
}

/// QEMU processes whose command line mentions `needle`.
fn qemu_processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.starts_with("qemu-system") && cmdline.contains(needle) {
            found.push(cmdline);
        }
    }
    found
}

fn assert_no_qemu_left(name: &str) {
    let left = qemu_processes_with(name);
    assert!(left.is_empty(), "QEMU processes left behind: {left:?}");
}

fn commands_json(s: &Space, rel: &str) -> Vec<serde_json::Value> {
    serde_json::from_str(&s.read(rel)).unwrap()
}

#[test]
fn the_plan_shows_the_recipes_qemu_command_line() {
    let s = Space::new();
    s.workflow(&planned_workflow(
        "  experiment:\n    kind: boot\n    system: system\n    disks: [data]\n    kernel: kernel\n    icount: 1\n    \
         plugins: [{ path: ./libinsn.so, args: [inline=on] }]\n    commands: [uname -a]\n",
    ));
    s.write("libinsn.so", "");
    let plan = s.qflow(&["plan"]).success();
    let text = format!("{}{}", plan.stdout, plan.stderr);
    assert!(
        text.contains(
            "qemu-system-x86_64 -smp 1 -m 512 -nographic -hda '${{ steps.system }}/image.*' \
             -hdb '${{ steps.data }}/image.*' -kernel '${{ steps.kernel }}/bzImage' \
             -append 'root=/dev/sda1 console=ttyS0 nokaslr' -icount shift=1 \
             -rtc base=2024-01-01T00:00:00,clock=vm -snapshot \
             -plugin ./libinsn.so,arg=inline=on -accel tcg"
        ),
        "{text}"
    );
}

#[test]
fn contradictory_boot_fields_are_refused_before_anything_runs() {
    let s = Space::new();
    s.workflow(&planned_workflow(
        "  experiment:\n    kind: boot\n    system: system\n    kernel: kernel\n    accel: kvm\n    icount: 1\n",
    ));
    let run = s.qflow(&["apply"]).failure(2);
    assert!(run.stderr.contains("accel"), "{}", run.stderr);
    assert!(run.stderr.contains("only under TCG"), "{}", run.stderr);
    assert!(run.ran().is_empty());

    s.workflow(&planned_workflow(
        "  experiment:\n    kind: boot\n    from_checkpoint: system\n    memory: 1G\n    commands: [\"true\"]\n",
    ));
    let run = s.qflow(&["apply"]).failure(2);
    assert!(
        run.stderr.contains("`memory` comes from the checkpoint"),
        "{}",
        run.stderr
    );

    s.workflow(&planned_workflow(
        "  experiment:\n    kind: boot\n    kernel: kernel\n    collect: [results.txt]\n",
    ));
    let run = s.qflow(&["apply"]).failure(2);
    assert!(
        run.stderr.contains("must be an absolute guest path"),
        "{}",
        run.stderr
    );
}

#[test]
#[ignore = "slow: builds a kernel (once per shared cache) and boots it under TCG"]
fn commands_run_in_the_guest_and_a_result_file_comes_back_from_the_data_disk() {
    let (s, name) = space();
    s.workflow(&workflow(&format!(
        r#"  experiment:
    kind: boot
    system: system
    disks: [data]
    kernel: kernel
    memory: 128M
    icount: 1
    terminal: {{ rows: 50, cols: 200 }}
    commands:
      - uname -r
      - stty size
      - mount /dev/sdb /mnt
      - sh /mnt/run.sh > /mnt/results.txt
      - |
        echo "multi
        line" | wc -l
      - cd /mnt && pwd
    collect: [/mnt/results.txt]
    extra_args: [-name, {name}]
"#
    )));
    let run = s.apply();
    assert!(
        run.ran().contains(&"experiment".to_string()),
        "{}",
        run.stderr
    );
    let records = commands_json(&s, "out/experiment/commands.json");
    let outputs: Vec<(&str, i64)> = records
        .iter()
        .map(|r| (r["output"].as_str().unwrap(), r["status"].as_i64().unwrap()))
        .collect();
    assert_eq!(outputs[0].1, 0);
    assert!(outputs[0].0.starts_with("6.1."), "{outputs:?}");
    assert_eq!(outputs[1], ("50 200\n", 0));
    assert_eq!(outputs[3], ("", 0));
    assert_eq!(outputs[4], ("2\n", 0));
    assert_eq!(outputs[5], ("/mnt\n", 0));
    assert_eq!(
        s.read("out/experiment/results.txt"),
        "hello from the data disk\nsum=5050\n"
    );
    let lock = s.read("qflow.lock");
    assert!(lock.contains("-icount shift=1"), "{lock}");
    assert!(
        s.read("out/experiment/console.log")
            .contains("Linux version")
    );
    assert_no_qemu_left(&name);
}

#[test]
#[ignore = "slow: builds a kernel (once per shared cache) and boots it under TCG"]
fn a_failing_guest_command_fails_the_step_with_the_guests_last_lines() {
    let (s, name) = space();
    s.workflow(&workflow(&format!(
        r#"  experiment:
    kind: boot
    system: system
    kernel: kernel
    memory: 128M
    accel: tcg
    commands: [echo before, ls /no/such/file, echo never]
    extra_args: [-name, {name}]
"#
    )));
    let run = s.qflow(&["apply"]).failure(1);
    assert_eq!(run.failed(), ["experiment"], "{}", run.stderr);
    assert!(
        run.stderr
            .contains("guest command `ls /no/such/file` failed (exit 1)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("No such file or directory"),
        "{}",
        run.stderr
    );
    assert!(
        !s.join("out/experiment").exists(),
        "a failed step leaves no output"
    );
    assert_no_qemu_left(&name);
}

#[test]
#[ignore = "slow: builds a kernel (once per shared cache) and boots it under TCG"]
fn a_timeout_fails_the_step_and_kills_qemu() {
    let (s, name) = space();
    s.workflow(&workflow(&format!(
        r#"  experiment:
    kind: boot
    system: system
    kernel: kernel
    memory: 128M
    accel: tcg
    timeout: 20s
    commands: [echo sleeping, sleep 1000]
    extra_args: [-name, {name}]
"#
    )));
    let run = s.qflow(&["apply"]).failure(1);
    // The step's own time: `qflow apply` may first wait for another test's cache lock.
    let took = failed_after(&run, "experiment");
    assert!(took < 60.0, "the step took {took}s");
    assert!(run.stderr.contains("timed out after 20s"), "{}", run.stderr);
    assert!(run.stderr.contains("QEMU was killed"), "{}", run.stderr);
    assert!(run.stderr.contains("sleeping"), "{}", run.stderr);
    assert_no_qemu_left(&name);
}

#[test]
#[ignore = "slow: builds a kernel (once per shared cache) and boots it under TCG"]
fn two_runs_restore_one_checkpoint_in_parallel_without_booting() {
    let (s, name) = space();
    s.workflow(&workflow(&format!(
        r#"  ready:
    kind: boot
    system: system
    disks: [data]
    kernel: kernel
    memory: 128M
    accel: tcg
    checkpoint: true
    commands: ['mount /dev/sdb /mnt', 'echo warm > /root/state']
    extra_args: [-name, {name}]
  from_ready:
    kind: boot
    from_checkpoint: ready
    jobs: 2
    matrix: {{ n: [1, 2] }}
    commands: ['cat /root/state', 'echo "run $n" > /mnt/out.txt', 'sh /mnt/run.sh']
    collect: [/mnt/out.txt]
    extra_args: [-name, {name}]
"#
    )));
    let run = s.apply();
    assert!(
        run.ran().contains(&"from_ready".to_string()),
        "{}",
        run.stderr
    );
    for n in ["1", "2"] {
        let dir = format!("out/from_ready/n={n}");
        let records = commands_json(&s, &format!("{dir}/commands.json"));
        assert_eq!(
            records[0]["output"], "warm\n",
            "the guest's memory comes from the checkpoint"
        );
        assert_eq!(records[2]["output"], "hello from the data disk\nsum=5050\n");
        assert_eq!(s.read(&format!("{dir}/out.txt")), format!("run {n}\n"));
        let console = s.read(&format!("{dir}/console.log"));
        assert!(
            !console.contains("Linux version"),
            "a restored run does not boot:\n{console}"
        );
    }
    // Both runs were started before either ended.
    let log = common::newest_log(&s.join(".qflow"), "from_ready");
    let events: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("qflow: run "))
        .collect();
    assert_eq!(events.len(), 4, "{log}");
    assert!(
        events[0].ends_with("started") && events[1].ends_with("started"),
        "{events:?}"
    );
    // The checkpoint itself was not changed by the runs (-snapshot).
    let again = s.apply();
    assert!(again.ran().is_empty(), "{}", again.stderr);
    assert_no_qemu_left(&name);
}

#[test]
#[ignore = "slow: builds a kernel (once per shared cache) and boots it under TCG"]
fn a_tcg_plugin_receives_its_arguments() {
    let (s, name) = space();
    s.workflow(&workflow(&format!(
        r#"  plugin:
    kind: command
    run: [sh, -c, 'exec cc -shared -fPIC -O2 -o "$QFLOW_OUT/libinsn.so" "$1"', sh, {FIXTURES}/boot/insn-plugin.c]
    inputs: [{FIXTURES}/boot/insn-plugin.c]
    outputs: [libinsn.so]
  experiment:
    kind: boot
    system: system
    kernel: kernel
    memory: 128M
    plugins: [{{ path: "${{{{ steps.plugin }}}}/libinsn.so", args: [inline=on, "42"] }}]
    commands: [uname -r]
    extra_args: [-name, {name}]
"#
    )));
    s.apply();
    let qemu_log = s.read("out/experiment/qemu.log");
    // QEMU 7.2 deprecates the hand recipe's `arg=` form: `key=value` arrives as written, a
    // bare value as `value=on`.
    assert!(
        qemu_log.contains("insn-plugin: argc=2 argv[0]=inline=on argv[1]=42=on"),
        "{qemu_log}"
    );
    let count: u64 = qemu_log
        .lines()
        .find_map(|l| l.strip_prefix("insn-plugin: instructions="))
        .unwrap_or_else(|| panic!("no instruction count in:\n{qemu_log}"))
        .parse()
        .unwrap();
    assert!(
        count > 1_000_000,
        "a boot runs millions of instructions, got {count}"
    );
    assert_no_qemu_left(&name);
}

#[test]
#[ignore = "slow: builds a kernel (once per shared cache) and boots it under TCG"]
fn a_serial_login_never_shows_the_password() {
    let (s, name) = space();
    let password = format!("pw-{name}");
    s.write("secrets/root-password", format!("{password}\n"));
    s.workflow(&workflow(&format!(
        r#"  system_login:
    kind: command
    run: [sh, {GUEST}/make-rootfs.sh, system, secrets/root-password]
    inputs: [{GUEST}/make-rootfs.sh, secrets/root-password]
    outputs: [image.raw]
  experiment:
    kind: boot
    system: system_login
    kernel: kernel
    memory: 128M
    accel: tcg
    login: {{ user: root, password: {{ file: secrets/root-password }} }}
    commands: [id -u, echo typed-after-login]
    extra_args: [-name, {name}]
"#
    )));
    let run = s.apply();
    let records = commands_json(&s, "out/experiment/commands.json");
    assert_eq!(records[0]["output"], "0\n");
    let console = s.read("out/experiment/console.log");
    assert!(console.contains("login:"), "{console}");
    assert!(console.contains("qflow> ********"), "{console}");
    let mut leaks = Vec::new();
    let mut places = vec![s.join("out"), s.join("qflow.lock"), s.join(".qflow/logs")];
    places.retain(|p| p.exists());
    for place in places {
        let out = std::process::Command::new("grep")
            .args(["-rlF", &password])
            .arg(&place)
            .output()
            .unwrap();
        leaks.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string),
        );
    }
    assert!(leaks.is_empty(), "the password leaked into {leaks:?}");
    assert!(!run.stderr.contains(&password));
    assert_no_qemu_left(&name);
}

#[test]
#[ignore = "slow: builds a kernel (once per shared cache) and boots it under TCG"]
fn with_snapshot_off_disk_writes_land_in_overlays_the_next_step_can_boot() {
    let (s, name) = space();
    s.workflow(&workflow(&format!(
        r#"  experiment:
    kind: boot
    system: system
    disks: [data]
    kernel: kernel
    memory: 128M
    accel: tcg
    snapshot: false
    commands: ['mount /dev/sdb /mnt', 'sh /mnt/run.sh > /mnt/kept.txt', 'echo provisioned > /root/marker']
    collect: [{{ disk: data, path: /kept.txt }}]
    extra_args: [-name, {name}]
  next:
    kind: boot
    system: experiment
    kernel: kernel
    memory: 128M
    accel: tcg
    commands: [cat /root/marker]
    extra_args: [-name, {name}]
"#
    )));
    s.apply();
    // The data disk's overlay holds the file; its backing file is the data step's image.
    let overlay = s.join("out/experiment/hdb.qcow2");
    let raw = s.join("hdb.raw");
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&overlay)
        .arg(&raw)
        .status()
        .unwrap();
    assert!(st.success());
    let kept = debugfs_cat(&raw, "/kept.txt");
    assert_eq!(kept, "hello from the data disk\nsum=5050\n");
    // ... and `collect: [{ disk, path }]` read it from there after QEMU ended.
    assert_eq!(s.read("out/experiment/kept.txt"), kept);
    let base = s.join("out/data/image.raw");
    assert_eq!(
        debugfs_cat(&base, "/kept.txt"),
        "",
        "the upstream image is unchanged"
    );
    let info = std::process::Command::new("qemu-img")
        .args(["info", "-U"])
        .arg(&overlay)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains("backing file: ../"),
        "backing file named relatively:\n{info}"
    );
    // The booted system disk is the next step's system image.
    assert_eq!(
        commands_json(&s, "out/next/commands.json")[0]["output"],
        "provisioned\n"
    );
    assert_no_qemu_left(&name);
}

/// A file's content in an ext4 image, or "" if it is absent.
fn debugfs_cat(image: &std::path::Path, path: &str) -> String {
    let out = std::process::Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "slow: debootstrap with Debian's kernel (about 3 minutes), customize, boot its own kernel under TCG"]
fn a_debian_image_boots_its_own_kernel_and_initrd_to_a_serial_login() {
    // `kernel: true` exports the image's vmlinuz and initrd.img; the image comes up to a
    // systemd getty on ttyS0 with udev, and root logs in there.
    let (s, name) = space();
    s.write("secrets/root-password", "debian-boot-test\n");
    s.workflow(&format!(
        r#"version: 1
name: boot-debian-test
steps:
{kbase}
  kpw:
    kind: customize
    image: kbase
    root_password: {{ file: secrets/root-password }}
  debian:
    kind: boot
    system: kpw
    kernel: kbase
    initrd: kbase
    append: root=/dev/sda1 console=ttyS0
    memory: 1G
    accel: auto
    login: {{ user: root, password: {{ file: secrets/root-password }} }}
    terminal: {{ rows: 40, cols: 120 }}
    commands: [cat /etc/debian_version, id -un, stty size]
    timeout: 10m
    extra_args: [-name, {name}]
"#,
        kbase = include_str!("fixtures/customize/kernel-base-step.yaml"),
    ));
    let run = s.apply();
    let records = commands_json(&s, "out/debian/commands.json");
    assert!(
        records[0]["output"].as_str().unwrap().starts_with("12."),
        "{records:?}"
    );
    assert_eq!(records[1]["output"], "root\n");
    assert_eq!(records[2]["output"], "40 120\n");
    let log = common::newest_log(&s.join(".qflow"), "debian");
    // `accel: auto` says what it chose; here KVM cannot boot Linux, so TCG ran.
    assert!(log.contains("qflow: accel auto -> "), "{log}");
    let lock = s.read("qflow.lock");
    assert!(lock.contains("\"accel\""), "{lock}");
    assert!(!run.stderr.contains("debian-boot-test"));
    assert!(
        !log.contains("debian-boot-test"),
        "the password is in the step log"
    );
    assert_no_qemu_left(&name);
}

#[test]
#[ignore = "slow: builds a kernel (once per shared cache) and boots it under TCG"]
fn a_kernel_panic_fails_the_step_at_once_instead_of_waiting_for_the_timeout() {
    let (s, name) = space();
    s.workflow(&workflow(&format!(
        r#"  experiment:
    kind: boot
    system: system
    kernel: kernel
    append: root=/dev/sdz9 console=ttyS0
    memory: 128M
    accel: tcg
    timeout: 5m
    commands: [uname -r]
    extra_args: [-name, {name}]
"#
    )));
    let run = s.qflow(&["apply"]).failure(1);
    // The step's own time: `qflow apply` may first wait for another test's cache lock.
    let took = failed_after(&run, "experiment");
    assert!(took < 60.0, "the step took {took}s");
    assert!(
        run.stderr.contains("the guest kernel panicked"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("Unable to mount root fs"),
        "{}",
        run.stderr
    );
    assert_no_qemu_left(&name);
}

#[test]
#[ignore = "slow: builds a kernel (once per shared cache) and boots it under TCG"]
fn a_person_can_attach_to_a_running_boots_console_and_type_into_it() {
    use std::io::{Read, Write};
    let (s, name) = space();
    s.workflow(&workflow(&format!(
        r#"  attached:
    kind: boot
    system: system
    kernel: kernel
    memory: 128M
    accel: tcg
    commands: [sleep 6, cat /tmp/mark]
    extra_args: [-name, {name}]
"#
    )));
    let link = s.join(".qflow/state/boot-test/attached/console.sock");
    let _ = std::fs::remove_file(&link);
    let apply = s
        .command(&["apply"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let socket = loop {
        if let Ok(target) = std::fs::read_link(&link) {
            break target;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no attach socket at {}",
            link.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut client = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    // Wait until the guest runs `sleep 6` (the third framed command), then type.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&seen).matches("qflow-b-").count() < 3 {
        let n = client.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the console closed:\n{}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).contains("[qflow: attached"));
    client.write_all(b"echo user-typed > /tmp/mark\n").unwrap();
    let out = apply.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = commands_json(&s, "out/attached/commands.json");
    assert_eq!(records[1]["output"], "user-typed\n");
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "the attach link outlived the run"
    );
    assert_no_qemu_left(&name);
}

#[test]
#[ignore = "slow: builds a kernel (once per shared cache) and boots it under TCG"]
fn a_plugin_parameter_sweep_restores_one_checkpoint_per_value() {
    let (s, name) = space();
    s.workflow(&workflow(&format!(
        r#"  plugin:
    kind: command
    run: [sh, -c, 'exec cc -shared -fPIC -O2 -o "$QFLOW_OUT/libinsn.so" "$1"', sh, {FIXTURES}/boot/insn-plugin.c]
    inputs: [{FIXTURES}/boot/insn-plugin.c]
    outputs: [libinsn.so]
  booted:
    kind: boot
    system: system
    disks: [data]
    kernel: kernel
    memory: 128M
    accel: tcg
    checkpoint: true
    commands: ['mount /dev/sdb /mnt']
    extra_args: [-name, {name}]
  sweep:
    kind: boot
    from_checkpoint: booted
    matrix: {{ size: [16, 64] }}
    plugins: [{{ path: "${{{{ steps.plugin }}}}/libinsn.so", args: ["size={{{{ matrix.size }}}}"] }}]
    commands: ['sh /mnt/run.sh', 'echo "size is $size"']
    extra_args: [-name, {name}]
"#
    )));
    s.apply();
    for size in ["16", "64"] {
        let dir = format!("out/sweep/size={size}");
        let qemu_log = s.read(&format!("{dir}/qemu.log"));
        assert!(
            qemu_log.contains(&format!("argc=1 argv[0]=size={size}")),
            "{qemu_log}"
        );
        assert!(
            qemu_log.contains("insn-plugin: instructions="),
            "{qemu_log}"
        );
        let records = commands_json(&s, &format!("{dir}/commands.json"));
        assert_eq!(records[0]["output"], "hello from the data disk\nsum=5050\n");
        assert_eq!(records[1]["output"], format!("size is {size}\n"));
    }
    assert_no_qemu_left(&name);
}

#[test]
#[ignore = "slow: builds a kernel (once per shared cache) and boots it under TCG"]
fn interrupting_apply_during_a_boot_leaves_no_qemu_behind() {
    let (s, name) = space();
    s.workflow(&workflow(&format!(
        r#"  experiment:
    kind: boot
    system: system
    kernel: kernel
    memory: 128M
    accel: tcg
    commands: [sleep 600]
    extra_args: [-name, {name}]
"#
    )));
    let mut apply = s
        .command(&["apply"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while qemu_processes_with(&name).is_empty() {
        assert!(std::time::Instant::now() < deadline, "QEMU never started");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_secs(3));
    // SAFETY: signalling a child process we own.
    unsafe {
        libc::kill(apply.id() as i32, libc::SIGINT);
    }
    let interrupted = std::time::Instant::now();
    let status = apply.wait().unwrap();
    assert!(!status.success());
    assert!(
        interrupted.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        interrupted.elapsed()
    );
    assert_no_qemu_left(&name);
    assert!(
        !s.join("out/experiment").exists(),
        "an interrupted boot leaves no output"
    );
}

/// How long step `step` ran before it failed, from `qflow: FAILED STEP after 3.4s: ...`.
fn failed_after(run: &common::Run, step: &str) -> f64 {
    let prefix = format!("qflow: FAILED {step} after ");
    run.stderr
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split('s').next())
        .and_then(|secs| secs.parse().ok())
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{}", run.stderr))
}
