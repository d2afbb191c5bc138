//! A user reads `docs/kinds.md` to write a step: it must be exactly what
//! `qflow reference` prints from the kinds' own types, or it lies about a field.

mod common;

use common::Space;

fn reference() -> String {
    Space::new().qflow(&["reference"]).success().stdout
}

#[test]
fn the_committed_kind_reference_is_what_qflow_reference_prints() {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/kinds.md");
    let committed = std::fs::read_to_string(&p).expect("docs/kinds.md is committed");
    assert!(
        committed == reference(),
        "{} is stale: run `cargo run -- reference > docs/kinds.md`",
        p.display()
    );
}

#[test]
fn the_reference_lists_every_kind_with_its_fields_defaults_and_outputs() {
    let md = reference();
    let schema: serde_json::Value =
        serde_json::from_str(&Space::new().qflow(&["schema"]).success().stdout).unwrap();
    let kinds = schema["definitions"]["step"]["properties"]["kind"]["enum"]
        .as_array()
        .unwrap();
    assert!(kinds.len() >= 8, "{kinds:?}");
    for k in kinds {
        let k = k.as_str().unwrap();
        let section = md
            .split(&format!("## `{k}`\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("no section for kind `{k}`"));
        let section = section.split("\n## ").next().unwrap();
        // Every field of the kind's schema has a row.
        for field in schema["definitions"][format!("step.{k}")]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|f| {
                !["kind", "after", "cache", "env", "executor", "jobs"].contains(&f.as_str())
            })
            .filter(|f| !["remote_cache", "resources", "retries"].contains(&f.as_str()))
        {
            assert!(
                section.contains(&format!("| `{field}` |")),
                "kind `{k}` lacks a row for `{field}`"
            );
        }
        assert!(section.contains("### Outputs"), "kind `{k}` has no outputs");
    }
    // Defaults and outputs come from the kinds' own code.
    assert!(
        md.contains("| `fs` | `ext4` \\| `ext2` \\| `xfs` | `\"ext4\"` |"),
        "{md}"
    );
    assert!(md.contains("| `image.qcow2` | image |"));
    assert!(md.contains("| `bzImage` | artifact |"));
    assert!(md.contains("| `memory.snapshot` | machine state |"));
    assert!(md.contains("| `results.txt` | result |"));
}

/// The outputs the reference lists for kind `kind` (every example's rows).
fn listed_outputs(md: &str, kind: &str) -> Vec<String> {
    let section = md.split(&format!("## `{kind}`\n")).nth(1).unwrap();
    let section = section.split("\n## ").next().unwrap();
    let outputs = section.split("### Outputs").nth(1).unwrap();
    (outputs.lines())
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once("` |"))
        .map(|(name, _)| name.to_string())
        .collect()
}

#[test]
fn every_file_a_step_writes_is_an_output_its_kind_lists() {
    let md = reference();
    let s = Space::new();
    s.write("workload/run.sh", "echo hi\n").workflow(
        r#"
version: 1
steps:
  report:
    kind: command
    run: [sh, -c, 'echo 1 > "$QFLOW_OUT/report.txt"; echo 2 > "$QFLOW_OUT/plot.svg"']
    outputs: [report.txt, plot.svg]
  bench:
    kind: command
    run: [sh, -c, 'echo ops=42 > "$QFLOW_OUT/run.txt"']
    outputs: [run.txt]
    metrics:
      ops: { from: run.txt, regex: 'ops=([0-9]+)' }
  blank:
    kind: image
    size: 16M
  data:
    kind: disk
    size: 16M
    contents: ./workload
"#,
    );
    s.apply();
    for (step, kind) in [
        ("report", "command"),
        ("bench", "command"),
        ("blank", "image"),
        ("data", "disk"),
    ] {
        let listed = listed_outputs(&md, kind);
        let dir = s.join(&format!("out/{step}"));
        let written: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!written.is_empty(), "{step} wrote nothing");
        for file in written {
            assert!(
                listed.contains(&file),
                "`{step}` ({kind}) wrote `{file}`, which docs/kinds.md does not list: {listed:?}"
            );
        }
    }
    // Boot's section says what a guest must provide.
    let boot = md.split("## `boot`\n").nth(1).unwrap();
    let needs = boot
        .split("### What the guest must provide\n")
        .nth(1)
        .expect("boot says what a guest must provide")
        .split("\n### ")
        .next()
        .unwrap();
    for fact in ["ttyS0", "login:", "Password:", "base64", "stty", "QMP"] {
        assert!(
            needs.contains(fact),
            "the guest's needs omit {fact}: {needs}"
        );
    }
}
