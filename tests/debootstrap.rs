//! A user without a cloud image builds a bootable Debian base image from a package
//! mirror with the `debootstrap` kind, then reads it back without booting it.

mod common;

use common::guest_disk::GuestDisk;
use common::{Space, shared_cache};

const BASE_STEP: &str = include_str!("fixtures/customize/base-step.yaml");

fn workflow(step: &str) -> String {
    format!("version: 1\nname: debootstrap-test\nsteps:\n{step}")
}

#[test]
#[ignore = "slow: runs debootstrap against the Debian mirror (about a minute, once per test run)"]
fn a_base_image_is_one_ext4_partition_at_1mib_configured_for_qemu() {
    let s = Space::new().with_cache(&shared_cache());
    s.workflow(&workflow(BASE_STEP));
    s.apply();
    let image = std::fs::canonicalize(s.join("out/base/image.qcow2")).unwrap();

    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&image)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 1u64 << 30);

    let disk = GuestDisk::open(&image, &s.join("scratch"));
    let table = std::process::Command::new("sfdisk")
        .arg("--json")
        .arg(disk.raw())
        .output()
        .unwrap();
    let table: serde_json::Value = serde_json::from_slice(&table.stdout).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 1, "{table}");
    assert_eq!(parts[0]["start"], 2048);
    assert_eq!(parts[0]["type"], "83");

    // fstab names the file system that is really there.
    let superblock = disk.superblock();
    let uuid = superblock
        .lines()
        .find_map(|l| l.strip_prefix("Filesystem UUID:"))
        .unwrap()
        .trim()
        .to_string();
    let fstab = disk.cat("/etc/fstab").unwrap();
    assert!(
        fstab.contains(&format!("UUID={uuid} / ext4")),
        "{fstab}\n{superblock}"
    );
    assert_eq!(disk.cat("/etc/hostname").unwrap(), "qflow\n");
    assert_eq!(
        disk.cat("/etc/resolv.conf").unwrap(),
        "nameserver 10.0.2.3\n"
    );
    assert!(
        disk.cat("/etc/apt/sources.list")
            .unwrap()
            .contains(" bookworm main")
    );
    assert!(
        disk.cat("/usr/bin/less").is_some(),
        "an `include` package is missing"
    );
    // The file system's own timestamps are SOURCE_DATE_EPOCH, recorded in the lock.
    let lock: serde_json::Value = serde_json::from_str(&s.read("qflow.lock")).unwrap();
    let epoch: i64 = lock["steps"]["base"]["notes"]["source_date_epoch"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let created = superblock
        .lines()
        .find_map(|l| l.strip_prefix("Filesystem created:"))
        .unwrap()
        .trim()
        .to_string();
    // dumpe2fs prints local time; `date` reads it in the same zone.
    let date = std::process::Command::new("date")
        .args(["-d", &created, "+%s"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&date.stdout).trim(),
        epoch.to_string(),
        "{superblock}"
    );

    // The lock records what was installed, in which version, from which mirror.
    let lock: serde_json::Value = serde_json::from_str(&s.read("qflow.lock")).unwrap();
    let notes = &lock["steps"]["base"]["notes"];
    let packages = notes["packages"].as_str().unwrap();
    assert!(
        packages.lines().any(|l| l.starts_with("less=")),
        "{packages}"
    );
    assert!(
        packages
            .lines()
            .any(|l| l.starts_with("unattended-upgrades=")),
        "{packages}"
    );
    assert!(
        notes["mirror"].as_str().unwrap().starts_with("http"),
        "{notes}"
    );

    let again = s.apply();
    assert!(again.ran().is_empty(), "{}", again.stderr);
}

#[test]
fn a_misspelt_variant_is_refused_naming_the_field() {
    let s = Space::new();
    s.workflow(&workflow(
        "  base:\n    kind: debootstrap\n    suite: bookworm\n    variant: minbse\n",
    ));
    let run = s.qflow(&["apply"]).failure(2);
    assert!(run.stderr_contains("workflow.yaml:7"), "{}", run.stderr);
    assert!(
        run.stderr_contains("minbase, buildd, fakechroot"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_mirror_that_is_no_url_is_refused() {
    let s = Space::new();
    s.workflow(&workflow(
        "  base:\n    kind: debootstrap\n    suite: bookworm\n    mirror: deb.debian.org/debian\n",
    ));
    let run = s.qflow(&["apply"]).failure(2);
    assert!(
        run.stderr_contains("steps.base.mirror") && run.stderr_contains("http://"),
        "{}",
        run.stderr
    );
}

/// Mount points at or below `dir`.
fn mounts_under(dir: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(dir))
        .map(str::to_string)
        .collect()
}

#[test]
#[ignore = "slow: runs debootstrap until it has mounted /proc in its tree (about 40 s), then interrupts it"]
fn interrupting_debootstrap_leaves_no_mount_and_no_tree() {
    let cache = shared_cache();
    let s = Space::new().with_cache(&cache);
    // A definition of its own (never completed, so never cached).
    s.workflow(
        "version: 1\nname: debootstrap-interrupt\nsteps:\n  base:\n    kind: debootstrap\n    suite: bookworm\n    variant: minbase\n    size: 1100M\n",
    );
    let tree = cache
        .join("state/debootstrap-interrupt/base/tree")
        .to_string_lossy()
        .into_owned();
    let mut qflow = s
        .command(&["apply"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1800);
    while mounts_under(&tree).is_empty() {
        if std::time::Instant::now() > deadline || qflow.try_wait().unwrap().is_some() {
            // SAFETY: SIGINT to our own child.
            unsafe { libc::kill(qflow.id() as i32, libc::SIGINT) };
            let _ = qflow.wait();
            panic!("debootstrap never mounted anything in {tree}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // SAFETY: SIGINT to our own child, as Ctrl-C would.
    unsafe { libc::kill(qflow.id() as i32, libc::SIGINT) };
    assert!(!qflow.wait().unwrap().success());
    assert!(
        mounts_under(&tree).is_empty(),
        "mounts left: {:?}",
        mounts_under(&tree)
    );
    assert!(
        !std::path::Path::new(&tree).exists(),
        "the tree {tree} is still there"
    );
    assert!(!s.join("out/base").exists());
}
