//! An author packs a paper's artifact with `qflow bundle`; an evaluator unpacks it
//! on another machine (here: another directory and a fresh cache), verifies, and
//! applies, and gets the very output hashes the author's lock records. Secrets
//! never travel; a bundle whose inputs no longer match its lock is refused.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use common::Space;

const PAPER: &str = r#"
version: 1
name: paper
steps:
  prep:
    kind: command
    run: [sh, -c, 'tr a-z A-Z < data/input.txt > "$QFLOW_OUT/upper.txt"']
    inputs: [data/input.txt]
    outputs: [upper.txt]
  data:
    kind: disk
    size: 16M
    contents: ./workload
  table:
    kind: command
    run: [sh, -c, 'wc -c < "${{ steps.prep }}/upper.txt" > "$QFLOW_OUT/table.txt"']
    outputs: [table.txt]
"#;

fn paper_space() -> Space {
    let s = Space::new();
    s.workflow(PAPER)
        .write("data/input.txt", "measurements\n")
        .write("workload/bench/run.sh", "#!/bin/sh\necho run\n")
        .write("workload/data.txt", "1 2 3\n")
        // Ordinary content that happens to sit in a deeper `secrets` directory.
        .write(
            "workload/docs/secrets/about.txt",
            "how the benchmark keeps keys\n",
        );
    let run_sh = s.join("workload/bench/run.sh");
    std::fs::set_permissions(&run_sh, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(s.join("workload/empty")).unwrap();
    std::os::unix::fs::symlink("data.txt", s.join("workload/latest")).unwrap();
    s.write("notes.txt", "not an input: stays out of the bundle");
    s
}

fn lock_outputs(lock: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(lock).unwrap();
    let mut outs = serde_json::Map::new();
    for (step, e) in v["steps"].as_object().unwrap() {
        outs.insert(step.clone(), e["outputs"].clone());
    }
    serde_json::Value::Object(outs)
}

fn unpack(archive: &Path, into: &Path) {
    let st = Command::new("tar")
        .arg("xzf")
        .arg(archive)
        .arg("-C")
        .arg(into)
        .status()
        .unwrap();
    assert!(st.success());
}

fn archive_listing(archive: &Path) -> Vec<String> {
    let out = Command::new("tar")
        .arg("tzf")
        .arg(archive)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_bundle_unpacked_elsewhere_verifies_and_applies_to_the_same_outputs() {
    let author = paper_space();
    author.apply();
    let lock = author.read("qflow.lock");
    let archive = author.join("paper.tar.gz");
    author
        .qflow(&["bundle", "-o", archive.to_str().unwrap()])
        .success();

    let listing = archive_listing(&archive);
    for want in [
        "paper-artifact/workflow.yaml",
        "paper-artifact/qflow.lock",
        "paper-artifact/README.md",
        "paper-artifact/data/input.txt",
        "paper-artifact/workload/bench/run.sh",
        "paper-artifact/workload/empty/",
        "paper-artifact/workload/latest",
        "paper-artifact/workload/docs/secrets/about.txt",
        "paper-artifact/results/prep/upper.txt",
        "paper-artifact/results/table/table.txt",
    ] {
        assert!(
            listing.iter().any(|l| l == want),
            "{want} missing: {listing:?}"
        );
    }
    for never in ["notes.txt", ".qflow", "out/", "image.qcow2"] {
        assert!(
            !listing.iter().any(|l| l.contains(never)),
            "{never} must not be bundled: {listing:?}"
        );
    }

    let evaluator = Space::new();
    unpack(&archive, evaluator.path());
    let dir = evaluator.join("paper-artifact");
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(readme.contains("qflow apply workflow.yaml"), "{readme}");
    assert!(readme.contains("qflow verify workflow.yaml"), "{readme}");
    assert!(readme.contains("data/image.qcow2"), "{readme}");

    let qflow = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_qflow"))
            .current_dir(&dir)
            .args(args)
            .env_remove("QFLOW_CACHE")
            .output()
            .unwrap();
        common::Run::from(out).success()
    };
    // The evaluator first verifies against the shipped lock, then applies.
    let v = qflow(&["verify"]);
    assert!(v.stdout.contains("all 3 outputs identical"), "{}", v.stdout);
    let applied = qflow(&["apply"]);
    assert_eq!(applied.ran_sorted(), vec!["data", "prep", "table"]);
    let relock = std::fs::read_to_string(dir.join("qflow.lock")).unwrap();
    assert_eq!(lock_outputs(&relock), lock_outputs(&lock));
    // The shipped results are what the apply produced.
    assert_eq!(
        std::fs::read(dir.join("results/prep/upper.txt")).unwrap(),
        std::fs::read(dir.join("out/prep/upper.txt")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("out/prep/upper.txt")).unwrap(),
        "MEASUREMENTS\n"
    );
}

#[test]
fn the_same_run_bundles_to_the_same_bytes() {
    let s = paper_space();
    s.apply();
    s.qflow(&["bundle", "-o", "a.tar.gz"]).success();
    s.qflow(&["bundle", "-o", "b.tar.gz"]).success();
    assert_eq!(
        std::fs::read(s.join("a.tar.gz")).unwrap(),
        std::fs::read(s.join("b.tar.gz")).unwrap()
    );
}

#[test]
fn an_input_carrying_a_secrets_directory_is_refused() {
    let s = paper_space();
    s.write("workload/secrets/token", "hunter2\n");
    s.apply();
    let run = s.qflow(&["bundle", "-o", "paper.tar.gz"]).failure(2);
    assert!(
        run.stderr_contains("workload/secrets/token"),
        "names the file: {}",
        run.stderr
    );
    assert!(!run.stderr_contains("hunter2"));
    assert!(!s.join("paper.tar.gz").exists(), "no archive written");
}

#[test]
fn an_input_changed_since_the_lock_is_refused() {
    let s = paper_space();
    s.apply();
    s.write("data/input.txt", "other measurements\n");
    let run = s.qflow(&["bundle"]).failure(2);
    assert!(
        run.stderr_contains("changed since the lock"),
        "{}",
        run.stderr
    );
    assert!(run.stderr_contains("qflow apply"), "{}", run.stderr);
}

#[test]
fn bundle_without_a_lock_says_to_apply_first() {
    let s = paper_space();
    let run = s.qflow(&["bundle"]).failure(2);
    assert!(run.stderr_contains("qflow apply"), "{}", run.stderr);
}

#[test]
fn an_input_beside_the_workflow_directory_is_packed_and_the_workflow_keeps_its_place() {
    // Like the quickstart: `workflows/quickstart.yaml` reads `../tests/fixtures/...`.
    let author = Space::new();
    author
        .write(
            "workflows/paper.yaml",
            r#"
version: 1
steps:
  prep:
    kind: command
    run: [sh, -c, 'cat ../fixtures/guest.config > "$QFLOW_OUT/config"']
    inputs: [../fixtures/guest.config]
    outputs: [config]
"#,
        )
        .write("fixtures/guest.config", "CONFIG_SERIAL_8250=y\n")
        .write("unrelated/big.bin", "not an input");
    author.qflow(&["apply", "workflows/paper.yaml"]).success();
    author
        .qflow(&["bundle", "workflows/paper.yaml", "-o", "paper.tar.gz"])
        .success();
    let listing = archive_listing(&author.join("paper.tar.gz"));
    for want in [
        "paper-artifact/workflows/paper.yaml",
        "paper-artifact/workflows/paper.lock",
        "paper-artifact/fixtures/guest.config",
        "paper-artifact/results/prep/config",
    ] {
        assert!(
            listing.iter().any(|l| l == want),
            "{want} missing: {listing:?}"
        );
    }
    assert!(
        !listing.iter().any(|l| l.contains("unrelated")),
        "{listing:?}"
    );

    let evaluator = Space::new();
    unpack(&author.join("paper.tar.gz"), evaluator.path());
    let dir = evaluator.join("paper-artifact");
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(
        readme.contains("qflow apply workflows/paper.yaml"),
        "{readme}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_qflow"))
        .current_dir(&dir)
        .args(["verify", "workflows/paper.yaml"])
        .env_remove("QFLOW_CACHE")
        .output()
        .unwrap();
    let run = common::Run::from(out).success();
    assert!(
        run.stdout.contains("all 1 outputs identical"),
        "{}",
        run.stdout
    );
}
