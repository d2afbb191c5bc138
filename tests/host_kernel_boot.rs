//! A user boots the host's own kernel with a busybox initramfs, runs a command in
//! the guest once per matrix value, and gets each run's output and collected file:
//! the one real QEMU boot of the fast tier.
//!
//! The kernel is the distribution's `/boot/vmlinuz-*` (readable as root); the
//! initramfs is built by a `command` step from `fixtures/boot/make-initramfs.sh`, and
//! its `/init` hands the serial console to a busybox shell, so no root disk is needed
//! and one boot under TCG (these machines' KVM cannot boot Linux) takes seconds. The
//! two matrix runs boot in parallel, each on a slot the engine gave the step, each
//! writing to its own qcow2 overlay of a data disk.

mod common;
use common::{Space, host_kernel};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// The log of `step` in the space's only apply so far.
fn step_log(s: &Space, step: &str) -> String {
    let logs = s.join(".qflow/logs");
    for run in std::fs::read_dir(&logs).unwrap().flatten() {
        for file in std::fs::read_dir(run.path()).unwrap().flatten() {
            if file.file_name().to_string_lossy().starts_with(step) {
                return std::fs::read_to_string(file.path()).unwrap();
            }
        }
    }
    panic!("no log of `{step}` under {}", logs.display())
}

fn commands_json(s: &Space, rel: &str) -> Vec<serde_json::Value> {
    serde_json::from_str(&s.read(rel)).unwrap()
}

#[test]
fn the_host_kernel_boots_an_initramfs_shell_and_runs_a_command_per_matrix_value() {
    let kernel = host_kernel();
    let release = kernel.trim_start_matches("/boot/vmlinuz-").to_string();
    let s = Space::new();
    let name = s.path().file_name().unwrap().to_string_lossy().into_owned();
    s.workflow(&format!(
        r#"version: 1
name: host-kernel-boot
steps:
  initramfs:
    kind: command
    run: [sh, {FIXTURES}/boot/make-initramfs.sh]
    inputs: [{FIXTURES}/boot/make-initramfs.sh]
    outputs: [initrd.img]
  data:
    kind: disk
    size: 16M
  guest:
    kind: boot
    kernel: {kernel}
    initrd: initramfs
    disks: [data]
    snapshot: false
    append: console=ttyS0 quiet panic=-1
    memory: 256M
    accel: tcg
    jobs: 2
    matrix: {{ n: [1, 2] }}
    commands:
      - uname -r
      - echo "hello {{{{ matrix.n }}}}" > /tmp/greeting.txt
    collect: [/tmp/greeting.txt]
    timeout: 3m
    extra_args: [-name, {name}]
"#
    ));
    let run = s.qflow(&["apply", "--jobs", "2"]).success();
    assert!(run.ran().contains(&"guest".to_string()), "{}", run.stderr);
    let log = step_log(&s, "guest");
    let lines: Vec<&str> = log.lines().collect();
    let at = |text: &str| lines.iter().position(|l| l.contains(text));
    let first_done = [at("qflow: run n=1 ok"), at("qflow: run n=2 ok")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or_else(|| panic!("no run ended well:\n{log}"));
    for n in [1, 2] {
        let started = at(&format!("qflow: run n={n} started"))
            .unwrap_or_else(|| panic!("run n={n} never started:\n{log}"));
        assert!(
            started < first_done,
            "the two runs did not boot side by side:\n{log}"
        );
    }
    for n in [1, 2] {
        let dir = format!("out/guest/n={n}");
        let records = commands_json(&s, &format!("{dir}/commands.json"));
        assert_eq!(records[0]["status"], 0, "{records:?}");
        assert_eq!(
            records[0]["output"].as_str().unwrap().trim(),
            release,
            "the guest runs the host's kernel"
        );
        assert_eq!(
            s.read(&format!("{dir}/greeting.txt")),
            format!("hello {n}\n")
        );
        // With `snapshot: false` each run writes to its own overlay of the data disk,
        // whose backing file is named relatively so the cache can move.
        let info = std::process::Command::new("qemu-img")
            .args(["info", "--output=json", "-U"])
            .arg(s.join(&format!("{dir}/hda.qcow2")))
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        let backing = info["backing-filename"].as_str().unwrap_or_default();
        assert!(backing.starts_with("../"), "{info}");
        assert_eq!(info["backing-filename-format"], "qcow2", "{info}");
    }
    // The run record charges the step the CPU time of its two QEMUs (TCG boots).
    let record = std::fs::read_dir(s.join(".qflow/runs"))
        .unwrap()
        .flatten()
        .next()
        .unwrap();
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(record.path()).unwrap()).unwrap();
    let guest = (record["steps"].as_array().unwrap().iter())
        .find(|st| st["name"] == "guest")
        .unwrap();
    assert!(guest["cpu_ms"].as_u64().unwrap() >= 1000, "{guest}");
    let again = s.apply();
    assert!(again.ran().is_empty(), "{}", again.stderr);
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.starts_with("qemu-system") && c.contains(&name))
        .collect();
    assert!(left.is_empty(), "QEMU left behind: {left:?}");
}
