//! `qflow check`: every problem of a workflow in one pass, sorted by line,
//! with hints where users go wrong; nothing runs.

mod common;
use common::Space;

const MANY_MISTAKES: &str = r#"version: 1
steps:
  a:
    kind: command
    run: 'echo hi'
    outpts: [x]
  b:
    kind: command
    run: [sh, -c, 'echo ${{ nope }}']
    inptus: [y]
    inputs: [missing.txt]
  c:
    kind: command
    run: [sh, -c, 'cat ${{ steps.zz.out }}']
"#;

#[test]
fn check_reports_every_problem_of_every_step_sorted_by_line() {
    let s = Space::new();
    s.workflow(MANY_MISTAKES);
    let run = s.qflow(&["check"]).failure(2);
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    let wanted = [
        ("workflow.yaml:5:", "`steps.a.run`"),
        (
            "workflow.yaml:6:",
            "unknown field `outpts` for kind `command`; did you mean `outputs`?",
        ),
        ("workflow.yaml:9:", "unknown var `nope`"),
        (
            "workflow.yaml:10:",
            "unknown field `inptus` for kind `command`; did you mean `inputs`?",
        ),
        ("workflow.yaml:11:", "input `missing.txt` does not exist"),
        ("workflow.yaml:14:", "no step named `zz`"),
    ];
    assert_eq!(lines.len(), wanted.len(), "{}", run.stderr);
    for (line, (at, what)) in lines.iter().zip(wanted) {
        assert!(
            line.contains(at) && line.contains(what),
            "{line}\nall:\n{}",
            run.stderr
        );
    }
    assert!(!s.join(".qflow").exists(), "check opens no cache");
}

#[test]
fn a_command_written_as_one_string_suggests_the_shell_form() {
    let s = Space::new();
    s.workflow("version: 1\nsteps:\n  a:\n    kind: command\n    run: 'make -j4 all'\n");
    let run = s.qflow(&["check"]).failure(2);
    assert!(
        run.stderr.contains("write `run: [sh, -c, 'make -j4 all']`"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_matrix_parameter_written_with_a_dollar_names_the_right_syntax() {
    let s = Space::new();
    s.workflow(
        "version: 1\nsteps:\n  a:\n    kind: command\n    run: [sh, -c, 'echo ${{ matrix.n }}']\n",
    );
    let run = s.qflow(&["check"]).failure(2);
    assert!(
        run.stderr
            .contains("a matrix parameter is written `{{ matrix.n }}`, without `$`"),
        "{}",
        run.stderr
    );
}

#[test]
fn check_says_ok_for_a_valid_workflow_and_runs_nothing() {
    let s = Space::new();
    s.workflow("version: 1\nsteps:\n  a:\n    kind: command\n    run: [touch, ran]\n");
    let run = s.qflow(&["check"]).success();
    assert!(
        run.stdout.contains("workflow.yaml: ok (1 step)"),
        "{}",
        run.stdout
    );
    assert!(!s.join("ran").exists());
}
