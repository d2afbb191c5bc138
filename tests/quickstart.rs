//! The whole recipe as one workflow: `workflows/quickstart.yaml` end to end, as a
//! new user runs it, then the edit-one-kernel-line loop that is qflow's reason to be.
//! `workflows/ubuntu-22.04.yaml` is planned (it needs internet to apply).

mod common;
use common::Space;
use std::path::Path;
use std::time::Instant;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// A checkout-like space: the example workflows and the files they name, at the
/// same relative places as in the repository.
fn checkout() -> Space {
    let s = Space::new();
    let repo = Path::new(REPO);
    std::fs::create_dir_all(s.join("workflows")).unwrap();
    for f in ["quickstart.yaml", "ubuntu-22.04.yaml"] {
        std::fs::copy(repo.join("workflows").join(f), s.join("workflows").join(f)).unwrap();
    }
    for dir in ["quickstart", "ubuntu-22.04"] {
        copy_tree(
            &repo.join("workflows").join(dir),
            &s.join("workflows").join(dir),
        );
    }
    s.write("workflows/secrets/root-password", "quickstart-test-pw\n");
    s
}

/// The hashes the lock gives the boots' logs and results (`step/output`), not
/// their machine state (disk overlays, memory snapshot, checkpoint record, and the
/// whole console of a boot that reads a disk: its session is compared instead).
fn boot_outputs(lock: &str) -> std::collections::BTreeMap<String, String> {
    let lock: serde_json::Value = serde_json::from_str(lock).unwrap();
    let mut out = std::collections::BTreeMap::new();
    for step in ["experiment", "runs"] {
        let outputs = lock["steps"][step]["outputs"].as_object().unwrap();
        for (name, hash) in outputs {
            let file = name.rsplit('/').next().unwrap();
            let state = file.ends_with(".qcow2")
                || file == "memory.snapshot"
                || file == "checkpoint.json"
                || (step == "experiment" && file == "console.log");
            if !state {
                out.insert(format!("{step}/{name}"), hash.as_str().unwrap().to_string());
            }
        }
    }
    out
}

/// What `run.sh N` prints, computed here independently of the guest.
fn expected_result(n: u64) -> String {
    let mut acc: u64 = 0;
    for i in 0..n {
        acc = (acc * 31 + i) % 1_000_003;
    }
    format!("iterations={n} checksum={acc}")
}

#[test]
fn the_ubuntu_workflow_plans_offline_showing_every_command() {
    let s = checkout();
    // The user's kernel tree: plan needs it to exist (it is an input), not to be complete.
    s.write("workflows/linux-source-6.1/Makefile", "# a kernel tree\n")
        .write("workflows/linux-source-6.1/Kconfig", "# its Kconfig\n");
    let plan = s.qflow(&["plan", "workflows/ubuntu-22.04.yaml"]).success();
    for needle in [
        "ubuntu-22.04-server-cloudimg-amd64.img",
        "SHA256SUMS",
        "qemu-img create -f qcow2 -b",
        "virt-customize",
        "--root-password 'file:",
        "unattended-upgrades",
        "defconfig",
        "qemu-nbd --connect",
        "modprobe nbd max_part=8",
        "mkfs.ext4",
        "qemu-nbd --disconnect",
        "-hda",
        "-hdb",
        "-kernel",
        "-append 'root=/dev/sda1 console=ttyS0 nokaslr'",
        "-icount shift=1",
        "-snapshot",
    ] {
        assert!(
            plan.stdout.contains(needle),
            "plan lacks {needle:?}:\n{}",
            plan.stdout
        );
    }
    assert!(!plan.stdout.contains("quickstart-test-pw"));
}

#[test]
fn the_quickstart_plans_every_step_of_the_recipe() {
    let s = checkout();
    s.write("workflows/linux-source-6.1/Makefile", "# a kernel tree\n")
        .write("workflows/linux-source-6.1/Kconfig", "# its Kconfig\n");
    let plan = s
        .qflow(&["plan", "--json", "workflows/quickstart.yaml"])
        .success();
    let v: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    let names: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "base",
            "system",
            "kernel",
            "data",
            "experiment",
            "runs",
            "quick",
            "figures"
        ]
    );
}

#[test]
#[ignore = "slow: debootstrap, virt-customize, a kernel build and Debian boots under TCG (~18 min)"]
fn the_quickstart_runs_end_to_end_and_a_kernel_edit_reruns_only_the_kernel_and_the_boots() {
    let s = checkout().with_cache(&common::shared_cache());
    let status = std::process::Command::new("tar")
        .args(["-C"])
        .arg(s.join("workflows"))
        .args(["-xf", "/usr/src/linux-source-6.1.tar.xz"])
        .status()
        .unwrap();
    assert!(status.success());

    let t0 = Instant::now();
    let first = s.qflow(&["apply", "workflows/quickstart.yaml"]).success();
    let first_secs = t0.elapsed().as_secs_f64();
    eprintln!("quickstart first apply: {first_secs:.0} s");
    assert!(first.failed().is_empty());
    let result = s.read("workflows/out/experiment/results.txt");
    assert_eq!(result.trim(), expected_result(3000));
    // The same workload with `init: minimal`, without systemd: the same result.
    let quick = s.read("workflows/out/quick/results.txt");
    assert_eq!(quick.trim(), expected_result(3000));
    for n in [1000, 5000] {
        let run = s.read(&format!("workflows/out/runs/iterations={n}/run.txt"));
        assert_eq!(run.trim(), expected_result(n));
    }
    // A metric per run, the table and the figure.
    let table = s
        .qflow(&["results", "workflows/quickstart.yaml", "--format", "csv"])
        .success();
    assert_eq!(
        table.stdout,
        "step,run,iterations,checksum\nruns,iterations=1000,1000,729977\nruns,iterations=5000,5000,479161\n"
    );
    assert!(
        s.read("workflows/out/figures/checksum.svg")
            .contains("checksum by iterations")
    );
    let lock = s.read("workflows/quickstart.lock");
    assert!(lock.contains("\"results.txt\""), "{lock}");
    // A clean build of the user's tree is byte-identical to the slow tier's build of
    // Debian's tarball with the same configuration, though source path, build path
    // and time all differ.
    let clean_kernel = std::fs::read(s.join("workflows/out/kernel/bzImage")).unwrap();
    assert!(
        clean_kernel == std::fs::read(common::shared_kernel()).unwrap(),
        "two clean builds of the same source and configuration differ"
    );
    assert!(!lock.contains("quickstart-test-pw"));

    // The boots are reproducible under icount: the experiment booted again prints
    // the same console, results and records, and so do the runs restored from its
    // new checkpoint (whose memory and disks, machine state, differ). This is what
    // `qflow verify` judges of the boots, without rebuilding the kernel and images.
    let recorded = boot_outputs(&s.read("workflows/quickstart.lock"));
    assert!(
        recorded.contains_key("experiment/session.log")
            && recorded.contains_key("runs/iterations=5000/console.log"),
        "{recorded:?}"
    );
    let t2 = Instant::now();
    let rebooted = s
        .qflow(&[
            "apply",
            "workflows/quickstart.yaml",
            "--force",
            "experiment",
        ])
        .success();
    eprintln!(
        "quickstart boots again: {:.0} s",
        t2.elapsed().as_secs_f64()
    );
    assert_eq!(
        rebooted
            .ran_sorted()
            .into_iter()
            .filter(|s| s != "figures")
            .collect::<Vec<_>>(),
        ["experiment", "runs"],
        "{}",
        rebooted.stderr
    );
    let rebuilt = boot_outputs(&s.read("workflows/quickstart.lock"));
    for (output, hash) in &recorded {
        assert_eq!(
            rebuilt.get(output),
            Some(hash),
            "{output} differs after booting again:\n{}",
            s.read(&format!("workflows/out/{output}"))
        );
    }

    // Nothing changed: nothing runs.
    let again = s.qflow(&["apply", "workflows/quickstart.yaml"]).success();
    assert!(again.ran().is_empty(), "{}", again.stderr);

    // One line appended to a kernel source file: the kernel recompiles that file
    // and relinks; the boots run again; the image and disk steps stay cached.
    let reboot_c = s.join("workflows/linux-source-6.1/kernel/reboot.c");
    let mut text = std::fs::read_to_string(&reboot_c).unwrap();
    // Unique per run, so a shared cache kept from an earlier test run holds no
    // kernel built from this very edit.
    text.push_str(&format!(
        "int qflow_quickstart_edit_{} = 1;\n",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::write(&reboot_c, text).unwrap();
    let t1 = Instant::now();
    let edit = s.qflow(&["apply", "workflows/quickstart.yaml"]).success();
    let edit_secs = t1.elapsed().as_secs_f64();
    eprintln!("quickstart re-apply after a one-line kernel edit: {edit_secs:.0} s");
    // Kept for the README's figures (test output is captured).
    let _ = std::fs::write(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("quickstart-timings.txt"),
        format!(
            "first apply: {first_secs:.0} s\nre-apply after a one-line kernel edit: {edit_secs:.0} s\n"
        ),
    );
    // The figure is redrawn only when the runs' outputs changed (it is cheap either way).
    let ran: Vec<String> = edit
        .ran_sorted()
        .into_iter()
        .filter(|s| s != "figures")
        .collect();
    assert_eq!(
        ran,
        ["experiment", "kernel", "quick", "runs"],
        "{}",
        edit.stderr
    );
    let mut cached = edit.cached();
    cached.sort();
    cached.retain(|s| s != "figures");
    assert_eq!(cached, ["base", "data", "system"]);
    assert_eq!(
        s.read("workflows/out/experiment/results.txt").trim(),
        expected_result(3000)
    );
    // Make compiled that one file (and kbuild's link-time version objects).
    // (The newest kernel log in the shared cache: no other test of this binary builds
    // a kernel there.)
    let compiled: Vec<String> =
        common::compiled(&common::newest_log(&common::shared_cache(), "kernel"))
            .into_iter()
            .filter(|o| !o.starts_with("arch/x86/boot/") && o != "init/version-timestamp.o")
            .collect();
    assert_eq!(compiled, ["kernel/reboot.o"]);
    let edited_kernel = std::fs::read(s.join("workflows/out/kernel/bzImage")).unwrap();
    assert!(edited_kernel != clean_kernel);

    // A comment: the kernel step runs, its bzImage is unchanged, the boots stay cached.
    let mut text = std::fs::read_to_string(&reboot_c).unwrap();
    text.push_str("/* qflow: a comment compiles to nothing */\n");
    std::fs::write(&reboot_c, text).unwrap();
    let commented = s.qflow(&["apply", "workflows/quickstart.yaml"]).success();
    assert_eq!(commented.ran(), ["kernel"], "{}", commented.stderr);
    let mut cached = commented.cached();
    cached.sort();
    assert_eq!(
        cached,
        [
            "base",
            "data",
            "experiment",
            "figures",
            "quick",
            "runs",
            "system"
        ]
    );
    assert!(std::fs::read(s.join("workflows/out/kernel/bzImage")).unwrap() == edited_kernel);

    // The password is nowhere qflow writes.
    for dir in [common::shared_cache().join("logs"), s.join("workflows/out")] {
        let out = std::process::Command::new("grep")
            .args(["-rlI", "quickstart-test-pw"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.stdout.is_empty(),
            "password found in {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
