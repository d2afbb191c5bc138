//! Things go wrong mid-run: Ctrl-C, kill -9, a failing step, a second qflow.
//! Nothing half-done is ever taken as a result, and no child is left behind.

mod common;
use common::Space;
use std::time::{Duration, Instant};

/// Processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(format!("{}: {cmd}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

fn wait_for(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A step that signals it started, then sleeps in a grandchild for a unique time.
fn slow_workflow(s: &Space, tag: &str) {
    s.workflow(&format!(
        r#"
version: 1
steps:
  slow:
    kind: command
    run: [sh, -c, 'echo partial > "$QFLOW_OUT/result"; touch started; sleep {tag}; echo done > "$QFLOW_OUT/result"']
    outputs: [result]
  after:
    kind: command
    run: [sh, -c, 'cat ${{{{ steps.slow.result }}}} > "$QFLOW_OUT/copy"']
    outputs: [copy]
"#
    ));
}

#[test]
fn ctrl_c_leaves_no_child_and_no_record_and_the_next_apply_completes() {
    let s = Space::new();
    let tag = "31.4159";
    slow_workflow(&s, tag);
    let child = s
        .command(&["apply"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&s.join("started"));
    assert!(!processes_with(&format!("sleep {tag}")).is_empty());
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted slow (nothing recorded)"));
    assert!(
        processes_with(&format!("sleep {tag}")).is_empty(),
        "a child survived Ctrl-C"
    );
    assert!(
        !s.join("out/slow").exists(),
        "an interrupted step was presented"
    );
    let leftovers: Vec<_> = std::fs::read_dir(s.join(".qflow/trees"))
        .unwrap()
        .flatten()
        .collect();
    assert!(
        leftovers.is_empty(),
        "partial output left in the cache: {leftovers:?}"
    );
    // The next apply runs the step again and completes.
    s.write(
        "workflow.yaml",
        s.read("workflow.yaml")
            .replace(&format!("sleep {tag}"), "sleep 0"),
    );
    let run = s.apply();
    assert_eq!(run.ran(), ["slow", "after"]);
    assert_eq!(s.read("out/after/copy"), "done\n");
}

#[test]
fn kill_9_of_qflow_mid_step_then_apply_stops_what_it_left_and_gives_the_right_result() {
    let s = Space::new();
    let tag = "27.1828";
    slow_workflow(&s, tag);
    let mut child = s
        .command(&["apply"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&s.join("started"));
    // `started` is touched just before the shell forks `sleep`: wait for the sleep
    // itself, or the kill may catch the shell's child before it became `sleep`.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while processes_with(&format!("sleep {tag}")).is_empty() {
        assert!(std::time::Instant::now() < deadline, "sleep never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The step's shell and its sleeping child outlive qflow: nothing dies with it.
    assert!(
        !processes_with(&format!("sleep {tag}")).is_empty(),
        "the grandchild should still be running here"
    );
    let plan = s.qflow(&["plan"]).success();
    assert!(plan.stdout.contains("run     slow"), "{}", plan.stdout);
    s.write(
        "workflow.yaml",
        s.read("workflow.yaml")
            .replace(&format!("sleep {tag}"), "sleep 0"),
    );
    let run = s.apply();
    assert_eq!(run.ran(), ["slow", "after"]);
    assert_eq!(s.read("out/after/copy"), "done\n");
    assert!(
        run.stderr
            .contains("stopped 2 processes left behind by an interrupted run of slow: ")
            && run.stderr.contains("sh (")
            && run.stderr.contains("sleep ("),
        "{}",
        run.stderr
    );
    let left = processes_with(&format!("sleep {tag}"));
    assert!(left.is_empty(), "left behind: {left:?}");
    for p in left {
        let pid: i32 = p.split(':').next().unwrap().parse().unwrap();
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

#[test]
fn a_failed_step_stops_its_dependents_and_shows_its_log() {
    let s = Space::new();
    s.workflow(
        r#"
version: 1
steps:
  broken:
    kind: command
    run: [sh, -c, 'echo compiling; echo "error: it broke" >&2; exit 3']
  downstream:
    kind: command
    run: [touch, ran-downstream]
    after: [broken]
"#,
    );
    let run = s.qflow(&["apply"]).failure(1);
    assert_eq!(run.failed(), ["broken"]);
    assert!(run.stderr.contains("exit 3"), "{}", run.stderr);
    assert!(run.stderr.contains("error: it broke"), "{}", run.stderr);
    assert!(run.stderr.contains("log: "), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("skipped downstream (upstream `broken` failed)"),
        "{}",
        run.stderr
    );
    assert!(!s.join("ran-downstream").exists());
}

#[test]
fn keep_going_lets_independent_branches_finish() {
    let s = Space::new();
    s.workflow(
        r#"
version: 1
steps:
  broken:
    kind: command
    run: ["false"]
  independent:
    kind: command
    run: [sh, -c, 'sleep 0.3; touch "$QFLOW_OUT/x"']
    outputs: [x]
"#,
    );
    let without = s.qflow(&["apply", "--jobs", "1"]).failure(1);
    assert!(without.ran().is_empty(), "{}", without.stderr);
    let with = s
        .qflow(&["apply", "--jobs", "1", "--keep-going"])
        .failure(1);
    assert_eq!(with.ran(), ["independent"]);
}

#[test]
fn a_step_that_exits_0_without_its_declared_output_fails() {
    let s = Space::new();
    s.workflow("version: 1\nsteps:\n  lazy:\n    kind: command\n    run: ['true']\n    outputs: [result.txt]\n");
    let run = s.qflow(&["apply"]).failure(1);
    assert!(
        run.stderr
            .contains("did not create its declared output `result.txt`"),
        "{}",
        run.stderr
    );
    assert!(!s.join("out/lazy").exists());
}

#[test]
fn an_input_edited_while_its_step_runs_is_not_recorded() {
    let s = Space::new();
    s.workflow(
        "version: 1\nsteps:\n  edit:\n    kind: command\n    run: [sh, -c, 'cp data.txt \"$QFLOW_OUT/d\"; echo more >> data.txt']\n    inputs: [data.txt]\n    outputs: [d]\n",
    )
    .write("data.txt", "first\n");
    let run = s.qflow(&["apply"]).failure(1);
    assert!(
        run.stderr
            .contains("input `data.txt` changed while the step ran"),
        "{}",
        run.stderr
    );
    // Nothing was recorded: the next apply runs it again.
    s.write(
        "workflow.yaml",
        s.read("workflow.yaml")
            .replace("; echo more >> data.txt", ""),
    );
    assert_eq!(s.apply().ran(), ["edit"]);
}

#[test]
fn two_concurrent_applies_do_not_corrupt_the_cache() {
    let s = Space::new();
    let mut yaml = String::from("version: 1\nsteps:\n");
    for i in 0..6 {
        yaml.push_str(&format!(
            "  s{i}:\n    kind: command\n    run: [sh, -c, 'sleep 0.1; seq 1 {i}000 > \"$QFLOW_OUT/o\"']\n    outputs: [o]\n"
        ));
    }
    s.workflow(&yaml);
    let a = s.command(&["apply"]).output().unwrap();
    let b = s.command(&["apply"]).spawn().unwrap();
    let _ = a;
    let b = b.wait_with_output().unwrap();
    assert!(b.status.success());
    let c = s
        .command(&["apply", "--no-wait"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let d = s
        .command(&["apply"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (c, d) = (c.wait_with_output().unwrap(), d.wait_with_output().unwrap());
    assert!(d.status.success(), "{}", String::from_utf8_lossy(&d.stderr));
    // --no-wait either got the lock or failed at once saying who holds it.
    if !c.status.success() {
        assert!(
            String::from_utf8_lossy(&c.stderr).contains("lock"),
            "{}",
            String::from_utf8_lossy(&c.stderr)
        );
    }
    let run = s.apply();
    assert!(run.ran().is_empty(), "{}", run.stderr);
    for i in 1..6 {
        assert_eq!(s.read(&format!("out/s{i}/o")).lines().count(), i * 1000);
    }
}

#[test]
fn a_second_apply_waits_for_the_first_and_says_so() {
    let s = Space::new();
    s.workflow("version: 1\nsteps:\n  slow:\n    kind: command\n    run: [sh, -c, 'touch started; sleep 1.5']\n");
    let first = s.command(&["apply"]).spawn().unwrap();
    wait_for(&s.join("started"));
    let second = s.qflow(&["apply"]).success();
    assert!(
        second.stderr.contains("waiting for another qflow run"),
        "{}",
        second.stderr
    );
    assert!(
        second.ran().is_empty(),
        "the second apply should find the first one's result: {}",
        second.stderr
    );
    first.wait_with_output().unwrap();
    let busy = s.command(&["apply", "--no-wait"]).output().unwrap();
    assert!(busy.status.success());
}

#[test]
fn kill_9_of_qflow_mid_step_is_remembered_until_that_step_runs_again_then_forgotten() {
    let s = Space::new();
    // The step waits for `go`, which is not one of its inputs: its key stays the same.
    s.workflow(
        r#"
version: 1
steps:
  wait:
    kind: command
    run: [sh, -c, 'echo partial > "$QFLOW_OUT/result"; touch started; while [ ! -e go ]; do sleep 0.05; done; echo done > "$QFLOW_OUT/result"']
    outputs: [result]
"#,
    );
    let mut child = s
        .command(&["apply"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&s.join("started"));
    child.kill().unwrap();
    child.wait().unwrap();
    let plan = s.qflow(&["plan"]).success();
    assert!(
        plan.stdout.contains("its previous run was interrupted"),
        "{}",
        plan.stdout
    );
    s.write("go", "");
    let run = s.apply();
    assert_eq!(run.ran(), ["wait"]);
    assert_eq!(s.read("out/wait/result"), "done\n");
    let marks: Vec<_> = std::fs::read_dir(s.join(".qflow/tmp/started"))
        .unwrap()
        .collect();
    assert!(marks.is_empty(), "the killed run's marks stayed: {marks:?}");
    let plan = s.qflow(&["plan"]).success();
    assert!(!plan.stdout.contains("interrupted"), "{}", plan.stdout);
    assert!(s.apply().ran().is_empty());
}
