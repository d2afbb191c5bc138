//! A researcher builds a Debian base image and its customization, and an artifact
//! evaluator builds them again from nothing (a second, clean cache): the images come
//! out byte for byte the same, and the rebuilt customization still logs root in with
//! the password and is still an overlay of the base image.

mod common;

use std::path::{Path, PathBuf};

use common::guest_disk::{GuestDisk, crypt_verifies, dpkg_installed};
use common::{Space, shared_cache};

const BASE_STEP: &str = include_str!("fixtures/customize/base-step.yaml");
const PASSWORD: &str = "reproducible root: 'pw'";

fn workflow() -> String {
    format!(
        r#"version: 1
name: reproducible
steps:
{BASE_STEP}
  sys:
    kind: customize
    image: base
    root_password: {{ file: secrets/root-password }}
    install: [numactl]
    uninstall: [less]
    purge_unattended_upgrades: true
    write: [{{ path: /etc/motd, content: "built twice\n" }}]
"#
    )
}

fn image_of(s: &Space, step: &str) -> PathBuf {
    std::fs::canonicalize(s.join(&format!("out/{step}/image.qcow2"))).unwrap()
}

/// The first byte offset at which two files differ, if they do.
fn first_difference(a: &Path, b: &Path) -> Option<u64> {
    use std::io::Read as _;
    let (mut a, mut b) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut offset = 0u64;
    loop {
        let n = a.read(&mut x).unwrap();
        let mut m = 0;
        while m < n {
            let k = b.read(&mut y[m..n]).unwrap();
            if k == 0 {
                return Some(offset + m as u64);
            }
            m += k;
        }
        if n == 0 {
            return (b.read(&mut y[..1]).unwrap() != 0).then_some(offset);
        }
        if let Some(i) = x[..n].iter().zip(&y[..n]).position(|(p, q)| p != q) {
            return Some(offset + i as u64);
        }
        offset += n as u64;
    }
}

#[test]
#[ignore = "slow: debootstrap and virt-customize, each twice from a clean cache (about 10 minutes)"]
fn two_clean_builds_give_bit_identical_base_and_customized_images() {
    let first = Space::new().with_cache(&shared_cache());
    let second_cache = common::scratch_file("second-cache");
    let second = Space::new().with_cache(&second_cache);
    for s in [&first, &second] {
        s.write("secrets/root-password", format!("{PASSWORD}\n"));
        s.workflow(&workflow());
    }
    first.apply();
    let run = second.apply();
    assert_eq!(run.ran_sorted(), ["base", "sys"], "{}", run.stderr);

    for step in ["base", "sys"] {
        let (a, b) = (image_of(&first, step), image_of(&second, step));
        assert_eq!(
            first_difference(&a, &b),
            None,
            "the two builds of `{step}` differ: {} and {}",
            a.display(),
            b.display()
        );
    }

    // Both recorded the same SOURCE_DATE_EPOCH, and it is the file system's time.
    let epoch = |s: &Space, step: &str| {
        let lock: serde_json::Value = serde_json::from_str(&s.read("qflow.lock")).unwrap();
        lock["steps"][step]["notes"]["source_date_epoch"]
            .as_str()
            .unwrap_or_else(|| panic!("no source_date_epoch for `{step}`: {lock}"))
            .parse::<i64>()
            .unwrap()
    };
    assert_eq!(epoch(&first, "base"), epoch(&second, "base"));
    assert_eq!(epoch(&first, "sys"), epoch(&first, "base"));

    // The rebuilt customization is what was asked for, and an overlay of the base.
    let disk = GuestDisk::open(&image_of(&second, "sys"), &second.join("scratch"));
    let shadow = disk.cat("/etc/shadow").unwrap();
    let root_hash = shadow
        .lines()
        .find_map(|l| l.strip_prefix("root:"))
        .unwrap()
        .split(':')
        .next()
        .unwrap();
    assert!(crypt_verifies(root_hash, PASSWORD), "{root_hash}");
    let status = disk.cat("/var/lib/dpkg/status").unwrap();
    assert!(dpkg_installed(&status, "numactl"));
    assert!(!dpkg_installed(&status, "less"));
    assert_eq!(disk.cat("/etc/motd").unwrap(), "built twice\n");
    // systemd makes a fresh machine id on first boot (minbase without systemd has none).
    let machine_id = disk.cat("/etc/machine-id");
    assert!(
        matches!(machine_id.as_deref(), None | Some("")),
        "{machine_id:?}"
    );
    assert!(disk.stat("/var/cache/ldconfig/aux-cache").is_none());
    drop(disk);
    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(image_of(&second, "sys"))
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let backing = info["backing-filename"].as_str().unwrap();
    assert!(backing.starts_with("../"), "backing file {backing}");

    drop(second);
    let _ = common::make_writable_and_remove(&second_cache);
}
