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
