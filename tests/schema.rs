//! A user's editor checks workflows against `qflow schema` (yaml-language-server):
//! the schema must accept every workflow qflow accepts, and reject what the loader
//! rejects — a misspelled field, an unknown kind, a missing required field.
//! Validation here is by an independent draft-07 validator (the `jsonschema` crate).

mod common;

use common::Space;

fn schema() -> serde_json::Value {
    let run = Space::new().qflow(&["schema"]).success();
    serde_json::from_str(&run.stdout).expect("`qflow schema` prints JSON")
}

fn yaml_to_json(text: &str) -> serde_json::Value {
    let v: serde_yaml::Value = serde_yaml::from_str(text).expect("valid YAML");
    serde_json::to_value(v).unwrap()
}

/// The validator's error messages for `yaml` (empty: valid).
fn errors(schema: &serde_json::Value, yaml: &str) -> Vec<String> {
    let validator = jsonschema::draft7::new(schema).expect("the schema is valid draft-07");
    let instance = yaml_to_json(yaml);
    validator
        .iter_errors(&instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

const EVERY_COMMON_FIELD: &str = r#"
version: 1
name: paper
vars:
  size: 16M
steps:
  prep:
    kind: command
    run: [sh, -c, 'echo hi > "$QFLOW_OUT/hi.txt"']
    outputs: [hi.txt]
    jobs: 1
    env: { LC_ALL: C }
    cache: false
  data:
    kind: disk
    size: ${{ size }}
    contents: ./workload
    after: prep
  use:
    kind: command
    run: [cat, '${{ steps.prep }}/hi.txt']
    after: [prep, data]
"#;

#[test]
fn the_schema_is_draft_07_and_selects_each_kind_by_its_kind_field() {
    let s = schema();
    assert_eq!(s["$schema"], "http://json-schema.org/draft-07/schema#");
    let kinds = s["definitions"]["step"]["properties"]["kind"]["enum"]
        .as_array()
        .unwrap();
    for k in [
        "command",
        "disk",
        "boot",
        "kernel",
        "customize",
        "debootstrap",
        "image",
        "download",
    ] {
        assert!(
            kinds.iter().any(|x| x == k),
            "kind `{k}` missing: {kinds:?}"
        );
        assert!(
            s["definitions"][format!("step.{k}")]["properties"]["kind"]["const"] == k,
            "no step schema for `{k}`"
        );
    }
}

#[test]
fn a_workflow_with_every_common_field_validates_and_qflow_accepts_it_too() {
    let s = schema();
    assert_eq!(errors(&s, EVERY_COMMON_FIELD), Vec::<String>::new());
    let space = Space::new();
    space
        .workflow(EVERY_COMMON_FIELD)
        .write("workload/a.txt", "a");
    space.qflow(&["plan"]).success();
}

#[test]
fn a_misspelled_field_fails_validation_as_it_fails_loading() {
    let s = schema();
    let bad = EVERY_COMMON_FIELD.replace("    size: ${{ size }}", "    size: 16M\n    sise: 16M");
    let errs = errors(&s, &bad);
    assert!(
        errs.iter().any(|e| e.contains("sise")),
        "the error names the misspelled field: {errs:?}"
    );
    let space = Space::new();
    space.workflow(&bad).write("workload/a.txt", "a");
    let run = space.qflow(&["plan"]).failure(2);
    assert!(run.stderr_contains("sise"), "{}", run.stderr);
}

#[test]
fn an_unknown_kind_a_missing_required_field_and_a_wrong_type_fail_validation() {
    let s = schema();
    let unknown_kind = EVERY_COMMON_FIELD.replace("kind: disk", "kind: dsik");
    assert!(!errors(&s, &unknown_kind).is_empty());
    let no_size = EVERY_COMMON_FIELD.replace("    size: ${{ size }}\n", "");
    let errs = errors(&s, &no_size);
    assert!(errs.iter().any(|e| e.contains("size")), "{errs:?}");
    let bad_jobs = EVERY_COMMON_FIELD.replace("jobs: 1", "jobs: many");
    assert!(!errors(&s, &bad_jobs).is_empty());
    let bad_top = format!("{EVERY_COMMON_FIELD}\nstpes: {{}}\n");
    assert!(!errors(&s, &bad_top).is_empty());
    let bad_name = EVERY_COMMON_FIELD.replace("  prep:\n", "  \"pr ep\":\n");
    assert!(!errors(&s, &bad_name).is_empty());
}

#[test]
fn every_example_workflow_validates_against_the_schema() {
    let s = schema();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows");
    let mut checked = Vec::new();
    for e in std::fs::read_dir(&dir).expect("workflows/ exists") {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            let errs = errors(&s, &std::fs::read_to_string(&p).unwrap());
            assert_eq!(
                errs,
                Vec::<String>::new(),
                "{} does not validate",
                p.display()
            );
            checked.push(p);
        }
    }
    assert!(!checked.is_empty(), "no workflows in {}", dir.display());
}

#[test]
fn a_committed_schema_file_is_what_qflow_schema_prints() {
    // The example workflows point yaml-language-server at `qflow.schema.json`; a
    // stale copy would flag valid fields. Regenerate with `qflow schema > qflow.schema.json`.
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("qflow.schema.json");
    if let Ok(text) = std::fs::read_to_string(&p) {
        let committed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(
            committed == schema(),
            "{} is stale: run `cargo run -- schema > qflow.schema.json`",
            p.display()
        );
    }
}
