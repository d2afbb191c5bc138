//! A no-op apply takes shortcuts (a memo of the loaded workflow, the lock's index,
//! one listing of the cache's trees, held `cached` lines); each story below is one
//! thing a user changes between two applies, and the shortcut must still see it.
//! Every story applies twice first: the second apply writes the memo, so the one
//! under test loads from it.

mod common;
use common::Space;

const WORKFLOW: &str = r#"
version: 1
name: noop
vars:
  greeting: hello
steps:
  gen:
    kind: command
    run: [sh, -c, 'cat input.txt > "$QFLOW_OUT/out.txt"; echo ${{ greeting }} >> "$QFLOW_OUT/out.txt"']
    inputs: [input.txt]
    outputs: [out.txt]
  use:
    kind: command
    run: [sh, -c, 'wc -l < ${{ steps.gen }}/out.txt > "$QFLOW_OUT/count.txt"']
    outputs: [count.txt]
"#;

/// A workspace applied twice, so its cache holds a memo of the workflow.
fn applied() -> Space {
    let s = Space::new();
    s.workflow(WORKFLOW).write("input.txt", "one\n");
    s.apply();
    s.apply();
    assert!(
        std::fs::read_dir(s.join(".qflow/workflows"))
            .map(|d| d.count() == 1)
            .unwrap_or(false),
        "the second apply memoizes the workflow"
    );
    s
}

#[test]
fn a_no_op_from_the_memo_runs_nothing_and_says_each_step_is_cached_in_order() {
    let s = applied();
    let run = s.apply();
    assert!(run.ran().is_empty(), "{}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stderr);
    assert_eq!(lines[..2], ["qflow: cached gen", "qflow: cached use"]);
    assert!(lines[2].starts_with("qflow: 0 ran, 2 cached, 0 failed, 0 skipped in "));
}

#[test]
fn an_edited_workflow_is_loaded_again_not_taken_from_the_memo() {
    let s = applied();
    s.workflow(&WORKFLOW.replace("greeting: hello", "greeting: bye"));
    let run = s.apply();
    assert_eq!(run.ran_sorted(), ["gen", "use"]);
    assert_eq!(s.read("out/gen/out.txt"), "one\nbye\n");
}

#[test]
fn a_set_value_is_seen_when_the_workflow_comes_from_the_memo() {
    let s = applied();
    let run = s.qflow(&["apply", "--set", "greeting=bye"]).success();
    assert_eq!(run.ran_sorted(), ["gen", "use"]);
    assert_eq!(s.read("out/gen/out.txt"), "one\nbye\n");
}

#[test]
fn an_edited_input_is_seen_when_the_workflow_comes_from_the_memo() {
    let s = applied();
    s.write("input.txt", "one\ntwo\n");
    let run = s.apply();
    assert_eq!(run.ran_sorted(), ["gen", "use"]);
    assert_eq!(s.read("out/use/count.txt").trim(), "3");
}

#[test]
fn a_deleted_input_is_bad_input_at_its_line_even_with_a_memo() {
    let s = applied();
    std::fs::remove_file(s.join("input.txt")).unwrap();
    let run = s.qflow(&["apply"]).failure(2);
    assert!(
        run.stderr_contains("workflow.yaml:10:") && run.stderr_contains("input `input.txt`"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_deleted_out_link_is_made_again_without_running_anything() {
    let s = applied();
    std::fs::remove_file(s.join("out/gen")).unwrap();
    let run = s.apply();
    assert!(run.ran().is_empty(), "{}", run.stderr);
    assert_eq!(s.read("out/gen/out.txt"), "one\nhello\n");
}

#[test]
fn a_deleted_output_tree_is_not_taken_as_cached() {
    let s = applied();
    let tree = std::fs::canonicalize(s.join("out/gen")).unwrap();
    common::make_writable_and_remove(&tree).unwrap();
    let run = s.apply();
    // Restored from the cache's objects or run again, but present either way.
    assert_eq!(s.read("out/gen/out.txt"), "one\nhello\n");
    assert!(tree.is_dir(), "{}", run.stderr);
}

#[test]
fn a_corrupt_lock_file_is_rewritten_by_a_no_op() {
    let s = applied();
    let good = s.read("qflow.lock");
    s.write(
        "qflow.lock",
        good.replace("\"kind\": \"command\"", "\"kind\": 7"),
    );
    let run = s.apply();
    assert!(run.ran().is_empty(), "{}", run.stderr);
    assert_eq!(s.read("qflow.lock"), good);
}

#[test]
fn a_no_op_of_many_steps_still_sees_a_deleted_link_and_a_deleted_tree() {
    // Enough steps that the lock entries are checked on several threads.
    let s = Space::new();
    let mut yaml = String::from("version: 1\nname: many\nsteps:\n");
    for i in 0..80 {
        yaml.push_str(&format!(
            "  s{i}:\n    kind: command\n    run: [sh, -c, 'echo {i} > \"$QFLOW_OUT/n\"']\n    outputs: [n]\n"
        ));
    }
    s.workflow(&yaml);
    s.apply();
    s.apply();
    std::fs::remove_file(s.join("out/s7")).unwrap();
    let tree = std::fs::canonicalize(s.join("out/s70")).unwrap();
    common::make_writable_and_remove(&tree).unwrap();
    let run = s.apply();
    assert_eq!(run.cached().len() + run.ran().len(), 80, "{}", run.stderr);
    assert_eq!(s.read("out/s7/n"), "7\n");
    assert_eq!(s.read("out/s70/n"), "70\n");
    let again = s.apply();
    assert!(again.ran().is_empty(), "{}", again.stderr);
}

#[test]
fn a_link_replaced_by_hand_after_a_settled_no_op_is_put_back() {
    let s = applied();
    // Past the racy window, a no-op notes that every link is right (the settled
    // stamp), and the next no-op trusts it without reading each link.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    s.apply();
    let stamps = std::fs::read_dir(s.join(".qflow/state/settled"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(stamps, 1, "a settled no-op leaves its stamp");
    assert!(s.apply().ran().is_empty());

    let right = std::fs::read_link(s.join("out/gen")).unwrap();
    std::fs::remove_file(s.join("out/gen")).unwrap();
    std::os::unix::fs::symlink("/tmp", s.join("out/gen")).unwrap();
    let run = s.apply();
    assert!(run.ran().is_empty(), "{}", run.stderr);
    assert_eq!(std::fs::read_link(s.join("out/gen")).unwrap(), right);
    assert_eq!(s.read("out/gen/out.txt"), "one\nhello\n");
}

#[test]
fn a_lock_edited_by_hand_is_read_again_not_taken_from_its_index_memo() {
    let s = applied();
    let lock = s.read("qflow.lock");
    let v: serde_json::Value = serde_json::from_str(&lock).unwrap();
    let key = v["steps"]["gen"]["key"].as_str().unwrap().to_string();
    s.write("qflow.lock", lock.replace(&key, &"0".repeat(64)));
    let run = s.apply();
    assert!(
        run.ran().is_empty(),
        "the record for the real key is reused"
    );
    assert!(
        s.read("qflow.lock").contains(&key),
        "the lock holds the real key again"
    );
}
