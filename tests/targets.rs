//! Working on part of a workflow: naming target steps, forcing a step to run
//! again, and finding the workflow file the way `cargo` and `just` do.

mod common;
use common::Space;

/// `a` → `b`, and `c` on its own: the targets' closure is easy to see.
const THREE: &str = r#"
version: 1
steps:
  a:
    kind: command
    run: [sh, -c, 'cat data.txt > "$QFLOW_OUT/a.txt"']
    inputs: [data.txt]
    outputs: [a.txt]
  b:
    kind: command
    run: [sh, -c, 'wc -c < ${{ steps.a.a.txt }} > "$QFLOW_OUT/n"']
    outputs: [n]
  c:
    kind: command
    run: [sh, -c, 'echo c > "$QFLOW_OUT/c.txt"']
    outputs: [c.txt]
"#;

fn three() -> Space {
    let s = Space::new();
    s.workflow(THREE).write("data.txt", "abc\n");
    s
}

#[test]
fn apply_with_a_target_runs_it_and_what_it_needs_nothing_else() {
    let s = three();
    let run = s.qflow(&["apply", "b"]).success();
    assert_eq!(run.ran_sorted(), ["a", "b"]);
    assert!(!s.join("out/c").exists(), "c must not run");
    // The whole workflow later runs only what is left.
    let run = s.apply();
    assert_eq!(run.ran(), ["c"]);
    assert_eq!(run.cached().len(), 2);
}

#[test]
fn a_target_run_keeps_the_lock_entries_of_the_steps_it_left_out() {
    let s = three();
    s.apply();
    let lock = s.read("qflow.lock");
    s.write("data.txt", "abcd\n");
    let run = s.qflow(&["apply", "workflow.yaml", "a"]).success();
    assert_eq!(run.ran(), ["a"]);
    let after = s.read("qflow.lock");
    assert_ne!(lock, after, "a's entry changed");
    for step in ["\"b\"", "\"c\""] {
        assert!(after.contains(step), "entry {step} kept:\n{after}");
    }
    // `b` was not looked at: the next full apply sees that `a` changed under it.
    let run = s.apply();
    assert_eq!(run.ran(), ["b"]);
}

#[test]
fn plan_and_graph_take_the_same_targets() {
    let s = three();
    let plan = s.qflow(&["plan", "b"]).success().stdout;
    assert!(plan.contains(" a (command)"), "{plan}");
    assert!(plan.contains(" b (command)"), "{plan}");
    assert!(!plan.contains(" c (command)"), "{plan}");
    let dot = s.qflow(&["graph", "b"]).success().stdout;
    assert!(dot.contains("\"a\" -> \"b\""), "{dot}");
    assert!(!dot.contains("\"c\""), "{dot}");
}

#[test]
fn force_runs_a_step_again_and_its_dependents_only_if_its_output_changed() {
    let s = three();
    s.apply();
    let run = s.qflow(&["apply", "--force", "a"]).success();
    assert_eq!(run.ran(), ["a"]);
    assert!(run.stderr.contains("forced with --force"), "{}", run.stderr);
    let mut cached = run.cached();
    cached.sort();
    assert_eq!(cached, ["b", "c"], "a's output is the same: b stays cached");
    let plan = s.qflow(&["plan", "--force", "c"]).success().stdout;
    assert!(plan.contains("run     c"), "{plan}");
    assert!(plan.contains("forced with --force"), "{plan}");
}

#[test]
fn a_mistyped_target_gets_a_did_you_mean_and_nothing_runs() {
    let s = three();
    let run = s.qflow(&["apply", "bb"]).failure(2);
    assert!(
        run.stderr.contains("target `bb`: no step of that name"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("did you mean `b`?"), "{}", run.stderr);
    assert!(
        !run.stderr.contains("cannot read workflow"),
        "{}",
        run.stderr
    );
    let run = s.qflow(&["apply", "--force", "cc"]).failure(2);
    assert!(run.stderr.contains("--force `cc`"), "{}", run.stderr);
    assert!(!s.join("out").exists());
}

#[test]
fn a_step_name_where_no_workflow_is_found_says_it_is_not_a_file() {
    let s = Space::new();
    s.write("notes.txt", "x");
    let run = s.qflow(&["apply", "build"]).failure(2);
    assert!(
        run.stderr
            .contains("`build` is not a file, and it cannot name a step: no workflow found"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_workflow_is_found_in_a_parent_directory_and_with_dash_c_and_dash_f() {
    let s = three();
    s.write("sub/dir/keep", "");
    let mut cmd = s.command(&["apply", "c"]);
    cmd.current_dir(s.join("sub/dir"));
    let run = common::Run::from(cmd.output().unwrap()).success();
    assert_eq!(run.ran(), ["c"]);
    assert!(s.join("out/c/c.txt").exists(), "out/ beside the workflow");

    let elsewhere = Space::new();
    let path = s.path().to_str().unwrap();
    let run = elsewhere.qflow(&["-C", path, "status"]).success();
    assert!(run.stdout.contains("fresh   c"), "{}", run.stdout);
    std::fs::rename(s.join("workflow.yaml"), s.join("paper.yml")).unwrap();
    let run = elsewhere
        .qflow(&["-C", path, "plan", "-f", "paper.yml", "c"])
        .success();
    assert!(run.stdout.contains("cached  c"), "{}", run.stdout);
    // A lone `*.yml` workflow is found without naming it.
    let run = elsewhere.qflow(&["-C", path, "plan", "c"]).success();
    assert!(run.stdout.contains("cached  c"), "{}", run.stdout);
}

#[test]
fn several_workflows_in_a_directory_are_listed_and_status_shows_each() {
    let s = Space::new();
    s.write("one.yaml", THREE).write("two.yaml", THREE);
    s.write("data.txt", "abc\n");
    let run = s.qflow(&["apply"]).failure(2);
    assert!(
        run.stderr.contains("`one.yaml`, `two.yaml`"),
        "{}",
        run.stderr
    );
    s.qflow(&["apply", "one.yaml"]).success();
    let status = s.qflow(&["status"]).success().stdout;
    assert!(status.contains("one.yaml"), "{status}");
    assert!(status.contains("two.yaml"), "{status}");
}

#[test]
fn status_in_the_repositorys_workflows_directory_shows_each_example() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qflow"))
        .current_dir(repo.join("workflows"))
        .env("QFLOW_CACHE", common::scratch_file("examples-cache"))
        .args(["status"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The quickstart needs inputs its set-up script makes; either way both are named.
    assert!(stdout.contains("quickstart.yaml"), "{stdout}\n{stderr}");
    assert!(stdout.contains("ubuntu-22.04.yaml"), "{stdout}\n{stderr}");
    assert!(!stderr.contains("cannot read workflow"), "{stderr}");
}
