//! A user in the edit-compile-boot loop boots with `init: minimal`: qflow's own
//! initramfs mounts the system disk and runs the commands in a root shell, without
//! the system's init; commands, `collect` and metrics work as after a login.
//!
//! The kernel is the host's `/boot/vmlinuz-*`, whose disk and ext4 drivers are
//! modules: a `command` step packs them into an initrd
//! (`fixtures/boot/make-modules-initrd.sh`) that joins qflow's initramfs. The
//! system disk is an ext4 image made by the `disk` kind holding the host's static
//! busybox, so one boot under TCG takes seconds. The host kernel's disk driver
//! probes its disks in parallel, so which of them is `/dev/sda` varies: the disks
//! are named by their file systems' UUIDs.

mod common;
use common::{Space, host_kernel};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const ROOT_UUID: &str = "6c1a3d6e-0b9f-4c55-9a57-0d6f1f6c2a01";
const DATA_UUID: &str = "6c1a3d6e-0b9f-4c55-9a57-0d6f1f6c2a02";

/// A root file system of the host's static busybox and its applets, a data file
/// and the mount points, in `rootfs/` of the space.
fn busybox_root(s: &Space) {
    let busybox = std::fs::canonicalize("/bin/busybox")
        .expect("needs /bin/busybox: apt-get install busybox-static");
    let bin = s.join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(&busybox, bin.join("busybox")).unwrap();
    let applets = std::process::Command::new(&busybox)
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8(applets.stdout).unwrap().lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
    }
    for dir in ["proc", "sys", "dev", "run", "root", "mnt", "tmp"] {
        std::fs::create_dir_all(s.join(&format!("rootfs/{dir}"))).unwrap();
    }
    s.write("data/numbers.txt", "1\n2\n3\n5\n8\n");
}

fn workflow(kernel: &str, initrd: bool) -> String {
    let release = kernel.trim_start_matches("/boot/vmlinuz-");
    let initrd_step = if initrd {
        format!(
            r#"  modules:
    kind: command
    run: [sh, {FIXTURES}/boot/make-modules-initrd.sh, {release}]
    inputs: [{FIXTURES}/boot/make-modules-initrd.sh]
    outputs: [initrd.img]
"#
        )
    } else {
        String::new()
    };
    let initrd_field = if initrd { "    initrd: modules\n" } else { "" };
    // The booted guest saved and resumed, as after a login.
    let (checkpoint, resumed) = if initrd {
        (
            "true",
            "  resumed:\n    kind: boot\n    from_checkpoint: quick\n    \
             commands: ['cat /proc/1/comm /root/count.txt']\n    timeout: 3m\n",
        )
    } else {
        ("false", "")
    };
    format!(
        r#"version: 1
name: quick-boot
steps:
{initrd_step}  root:
    kind: disk
    size: 16M
    fs: ext4
    contents: rootfs
    owner: "0:0"
    via: mkfs
    uuid: {ROOT_UUID}
  data:
    kind: disk
    size: 8M
    fs: ext4
    contents: data
    owner: "0:0"
    via: mkfs
    uuid: {DATA_UUID}
  quick:
    kind: boot
    init: minimal
    system: root
    disks: [data]
    kernel: {kernel}
{initrd_field}    append: root=UUID={ROOT_UUID} console=ttyS0
    memory: 256M
    accel: tcg
    commands:
      - uname -r
      - cat /proc/1/comm
      - grep ' / ' /proc/mounts
      - mount "$(findfs UUID={DATA_UUID})" /mnt && wc -l < /mnt/numbers.txt > /root/count.txt
    collect: [/root/count.txt]
    metrics:
      lines: {{ from: count.txt, regex: '([0-9]+)' }}
    checkpoint: {checkpoint}
    timeout: 3m
{resumed}"#
    )
}

fn commands_json(s: &Space, rel: &str) -> Vec<serde_json::Value> {
    serde_json::from_str(&s.read(rel)).unwrap()
}

#[test]
fn a_minimal_init_boot_runs_the_commands_on_the_system_disk_without_its_init() {
    let kernel = host_kernel();
    let release = kernel.trim_start_matches("/boot/vmlinuz-").to_string();
    let s = Space::new();
    busybox_root(&s);
    s.workflow(&workflow(&kernel, true));
    let plan = s.qflow(&["plan"]).success();
    assert!(
        plan.stdout
            .contains(&format!("-initrd initramfs.cpio -append 'root=UUID={ROOT_UUID} console=ttyS0 rdinit=/qflow/init init=/qflow/init'")),
        "{}",
        plan.stdout
    );
    let started = std::time::Instant::now();
    let run = s.apply().success();
    assert!(run.ran().contains(&"quick".to_string()), "{}", run.stderr);
    eprintln!("apply with a minimal-init boot: {:?}", started.elapsed());

    let records = commands_json(&s, "out/quick/commands.json");
    let output = |i: usize| records[i]["output"].as_str().unwrap().trim().to_string();
    assert!(records.iter().all(|r| r["status"] == 0), "{records:#?}");
    assert_eq!(output(0), release, "the guest runs the host's kernel");
    // PID 1 is the root shell qflow's init handed the console to, not an init system.
    assert_eq!(output(1), "sh", "{records:#?}");
    assert!(
        output(2).starts_with("/dev/sd") && output(2).contains(" / ext4 rw"),
        "the system disk is the root, read-write: {records:#?}"
    );
    assert_eq!(s.read("out/quick/count.txt"), "5\n");
    let metrics: serde_json::Value =
        serde_json::from_str(&s.read("out/quick/metrics.json")).unwrap();
    assert!(metrics.to_string().contains("\"lines\""), "{metrics}");
    assert!(metrics.to_string().contains('5'), "{metrics}");
    let console = s.read("out/quick/console.log");
    assert!(
        console.contains("(ext4, rw) mounted; starting /bin/sh"),
        "{console}"
    );
    assert!(s.join("out/quick/initramfs.cpio").is_file());
    let resumed = commands_json(&s, "out/resumed/commands.json");
    assert_eq!(resumed[0]["output"], "sh\n5\n", "{resumed:#?}");

    // Keyed like any other step: nothing changed, nothing runs.
    let again = s.apply().success();
    assert!(again.ran().is_empty(), "{}", again.stderr);
}

#[test]
fn a_kernel_that_cannot_mount_the_root_disk_says_which_driver_to_build_in() {
    // Without the modules initrd the host kernel has no disk driver at all.
    let s = Space::new();
    busybox_root(&s);
    s.workflow(&workflow(&host_kernel(), false));
    let run = s.qflow(&["apply"]).failure(1);
    assert_eq!(run.failed(), ["quick"], "{}", run.stderr);
    assert!(
        run.stderr_contains(&format!(
            "the kernel cannot mount the root disk: it found no UUID={ROOT_UUID}"
        )),
        "{}",
        run.stderr
    );
    assert!(run.stderr_contains("CONFIG_ATA_PIIX"), "{}", run.stderr);
}
