//! A user edits things and applies again: exactly what depends on the edit runs.

mod common;
use common::Space;

const DEMO: &str = r#"
version: 1
name: demo
vars:
  greeting: hello
  other: unused-by-gen
steps:
  gen:
    kind: command
    run: [sh, -c, 'cat input.txt > "$QFLOW_OUT/out.txt"; echo ${{ greeting }} >> "$QFLOW_OUT/out.txt"']
    inputs: [input.txt, src/]
    outputs: [out.txt]
  use:
    kind: command
    run: [sh, -c, 'wc -l < ${{ steps.gen }}/out.txt > "$QFLOW_OUT/count.txt"']
    outputs: [count.txt]
  side:
    kind: command
    run: [sh, -c, 'echo ${{ other }} > "$QFLOW_OUT/side.txt"']
    outputs: [side.txt]
  later:
    kind: command
    run: ["true"]
    after: [use]
"#;

fn demo() -> Space {
    let s = Space::new();
    s.workflow(DEMO)
        .write("input.txt", "one\ntwo\n")
        .write("src/a.c", "int a;\n")
        .write("src/sub/b.c", "int b;\n");
    s
}

#[test]
fn the_second_apply_runs_nothing() {
    let s = demo();
    let first = s.apply();
    assert_eq!(first.ran_sorted(), ["gen", "later", "side", "use"]);
    assert_eq!(s.read("out/gen/out.txt"), "one\ntwo\nhello\n");
    assert_eq!(s.read("out/use/count.txt").trim(), "3");
    let second = s.apply();
    assert!(second.ran().is_empty(), "{}", second.stderr);
    assert_eq!(second.cached().len(), 4);
}

#[test]
fn editing_one_input_reruns_exactly_that_step_and_its_dependents() {
    let s = demo();
    s.apply();
    s.write("input.txt", "one\ntwo\nthree\n");
    let run = s.apply();
    assert_eq!(run.ran_sorted(), ["gen", "later", "use"]);
    assert_eq!(s.read("out/use/count.txt").trim(), "4");
}

#[test]
fn editing_a_file_deep_in_an_input_tree_is_seen_and_named_by_plan() {
    let s = demo();
    s.apply();
    s.write("src/sub/b.c", "int b2;\n");
    let plan = s.qflow(&["plan"]).success();
    assert!(
        plan.stdout.contains("input `src/` changed: src/sub/b.c"),
        "{}",
        plan.stdout
    );
    // `gen` does not copy src/ into its output, so its output is unchanged and
    // everything downstream stays cached (early cutoff).
    let run = s.apply();
    assert_eq!(run.ran(), ["gen"]);
    assert_eq!(run.cached().len(), 3);
}

#[test]
fn an_input_tree_left_alone_is_proven_by_its_index_and_edits_to_it_still_rerun() {
    let s = demo();
    // Past the racy window: a tree written just now is never trusted by stats alone.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert_eq!(s.apply().ran_sorted(), ["gen", "later", "side", "use"]);
    let indexes: Vec<_> = std::fs::read_dir(s.join(".qflow/tree-index"))
        .expect("the walk of src/ leaves a tree index")
        .collect();
    assert_eq!(indexes.len(), 1, "one index for the one input tree");
    assert!(
        s.apply().ran().is_empty(),
        "the index proves src/ unchanged"
    );

    s.write("src/sub/b.c", "int b2;\n");
    let plan = s.qflow(&["plan"]).success();
    assert!(
        plan.stdout.contains("input `src/` changed: src/sub/b.c"),
        "{}",
        plan.stdout
    );
    assert_eq!(s.apply().ran(), ["gen"]);

    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert!(s.apply().ran().is_empty());
    s.write("src/sub/deeper/new.c", "int n;\n");
    let run = s.apply();
    assert_eq!(run.ran(), ["gen"], "a new file deep in the tree is seen");
    std::fs::remove_file(s.join("src/sub/deeper/new.c")).unwrap();
    let plan = s.qflow(&["plan"]).success();
    assert!(
        plan.stdout.contains("-src/sub/deeper/new.c"),
        "a removed file is named: {}",
        plan.stdout
    );
}

#[test]
fn early_cutoff_keeps_dependents_cached_when_outputs_are_identical() {
    let s = Space::new();
    s.workflow(
        r#"
version: 1
steps:
  count:
    kind: command
    run: [sh, -c, 'wc -l < data.txt > "$QFLOW_OUT/n"']
    inputs: [data.txt]
    outputs: [n]
  report:
    kind: command
    run: [sh, -c, 'cp ${{ steps.count.n }} "$QFLOW_OUT/report"']
    outputs: [report]
"#,
    )
    .write("data.txt", "a\nb\n");
    s.apply();
    // Same number of lines, different content: `count` runs, its output is identical.
    s.write("data.txt", "x\ny\n");
    let run = s.apply();
    assert_eq!(run.ran(), ["count"]);
    assert_eq!(run.cached(), ["report"]);
}

#[test]
fn a_same_size_edit_within_the_same_second_is_detected() {
    let s = demo();
    s.apply();
    // Same length, immediately after the apply: only the content differs.
    s.write("input.txt", "ONE\ntwo\n");
    let run = s.apply();
    assert_eq!(run.ran_sorted(), ["gen", "use"]);
    assert_eq!(s.read("out/gen/out.txt"), "ONE\ntwo\nhello\n");
    // And the one after that trusts the stat cache again.
    assert!(s.apply().ran().is_empty());
}

#[test]
fn a_var_change_reruns_only_the_steps_that_use_it() {
    let s = demo();
    s.apply();
    let run = s.qflow(&["apply", "--set", "other=changed"]).success();
    assert_eq!(run.ran(), ["side"]);
    let plan = s.qflow(&["plan", "--set", "greeting=bye"]).success();
    assert!(
        plan.stdout
            .contains("var `greeting` changed: \"hello\" → \"bye\""),
        "{}",
        plan.stdout
    );
}

#[test]
fn a_step_with_cache_false_always_runs() {
    let s = Space::new();
    s.workflow(
        "version: 1\nsteps:\n  always:\n    kind: command\n    run: [\"true\"]\n    cache: false\n",
    );
    s.apply();
    assert_eq!(s.apply().ran(), ["always"]);
}

#[test]
fn the_lock_file_is_rewritten_byte_identical_when_nothing_changed() {
    let s = demo();
    s.apply();
    let first = s.read("qflow.lock");
    s.apply();
    assert_eq!(s.read("qflow.lock"), first);
    let lock: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(
        lock["steps"]["gen"]["inputs"]["input.txt"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    assert!(lock["steps"]["use"]["upstream"]["gen"].is_string());
    assert!(lock["steps"]["use"]["outputs"]["count.txt"].is_string());
}

#[test]
fn moving_the_workflow_and_its_cache_keeps_everything_cached() {
    let s = demo();
    s.apply();
    let moved = s.path().with_extension("moved");
    std::fs::rename(s.path(), &moved).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qflow"))
        .current_dir(&moved)
        .env("NO_COLOR", "1")
        .arg("apply")
        .output()
        .unwrap();
    let run = common::Run::from(out).success();
    std::fs::rename(&moved, s.path()).unwrap();
    assert!(run.ran().is_empty(), "{}", run.stderr);
    assert_eq!(s.read("out/use/count.txt").trim(), "3");
}
