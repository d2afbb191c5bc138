//! What a user sees when a step fails: one headline, the log's last lines once
//! and in the order the program wrote them, and at the end a block naming each
//! failed step and each step not started with why.

mod common;
use common::Space;

const FAILING: &str = r#"
version: 1
steps:
  build:
    kind: command
    run: [sh, -c, 'echo out1; echo err1 >&2; echo out2; echo "error: the real reason" >&2; exit 3']
    outputs: [x]
  use:
    kind: command
    run: [sh, -c, 'cat ${{ steps.build.x }} > "$QFLOW_OUT/y"']
    outputs: [y]
  other:
    kind: command
    run: [sh, -c, 'touch "$QFLOW_OUT/z"']
    outputs: [z]
"#;

#[test]
fn a_failed_commands_log_keeps_stdout_and_stderr_in_the_order_written() {
    let s = Space::new();
    s.workflow(FAILING);
    let run = s.qflow(&["apply", "-j", "1"]).failure(1);
    let log_line = run
        .stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("log: "))
        .expect("a log path");
    let log = std::fs::read_to_string(log_line).unwrap();
    let body: Vec<&str> = log.lines().filter(|l| !l.starts_with('$')).collect();
    assert_eq!(body, ["out1", "err1", "out2", "error: the real reason"]);
}

#[test]
fn a_failure_prints_the_tail_once_and_ends_with_a_block_of_what_failed_and_what_did_not_start() {
    let s = Space::new();
    s.workflow(FAILING);
    let run = s.qflow(&["apply", "-j", "1"]).failure(1);
    let e = &run.stderr;
    let quoted = e.lines().filter(|l| l.trim() == "error: the real reason");
    assert_eq!(quoted.count(), 1, "the tail is printed once: {e}");
    assert!(e.contains("FAILED build after"), "{e}");
    assert!(e.contains("failed (exit 3)"), "{e}");
    let block = &e[e.find("qflow: failed:").expect("a failure block")..];
    assert!(block.contains("build  exit 3  log: "), "{block}");
    assert!(block.contains("not started:"), "{block}");
    assert!(block.contains("use    upstream `build` failed"), "{block}");
    assert!(
        block.contains(
            "other  not started: the run stopped at the first failure; `--keep-going` would run it"
        ),
        "{block}"
    );
    // With --keep-going the independent step runs and only the dependent one waits.
    let run = s.qflow(&["apply", "--keep-going"]).failure(1);
    assert_eq!(run.ran(), ["other"]);
    assert!(!run.stderr.contains("would run it"), "{}", run.stderr);
}

#[test]
fn a_step_that_failed_normally_is_not_called_interrupted_next_time() {
    let s = Space::new();
    s.workflow(FAILING);
    s.qflow(&["apply"]).failure(1);
    let plan = s.qflow(&["plan"]).success().stdout;
    assert!(!plan.contains("interrupted"), "{plan}");
    let run = s.qflow(&["apply"]).failure(1);
    assert!(!run.stderr.contains("interrupted"), "{}", run.stderr);
}

#[test]
fn no_wait_on_a_busy_cache_exits_2_and_runs_nothing() {
    let s = Space::new();
    s.workflow("version: 1\nsteps:\n  slow:\n    kind: command\n    run: [sh, -c, 'touch started; sleep 2']\n  quick:\n    kind: command\n    run: [sh, -c, 'touch quick-ran']\n");
    let mut first = s.command(&["apply", "slow"]).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !s.join("started").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first apply never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let busy = s.qflow(&["apply", "--no-wait", "quick"]).failure(2);
    assert!(
        busy.stderr.contains("holds the cache lock"),
        "{}",
        busy.stderr
    );
    assert!(!s.join("quick-ran").exists());
    assert!(first.wait().unwrap().success());
}
