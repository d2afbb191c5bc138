//! A user makes a mistake in the workflow: qflow names file:line:column and the
//! field, says what to do, exits 2, and runs nothing.

mod common;
use common::Space;

/// Apply `yaml`; it must fail with exit 2, print `needle`, and run nothing.
fn rejects(yaml: &str, needles: &[&str]) {
    let s = Space::new();
    s.workflow(yaml);
    let run = s.qflow(&["apply"]).failure(2);
    for n in needles {
        assert!(run.stderr.contains(n), "expected {n:?} in:\n{}", run.stderr);
    }
    assert!(run.stderr.contains("nothing was run"), "{}", run.stderr);
    assert!(run.ran().is_empty());
    assert!(!s.join("marker").exists(), "a step ran");
    assert!(!s.join("out").exists(), "outputs were presented");
}

const MARK: &str = "    run: [sh, -c, 'touch marker']\n";

#[test]
fn a_yaml_syntax_error_names_the_line() {
    rejects(
        "version: 1\nsteps:\n  a:\n    kind: command\n    run: [true\n",
        &["workflow.yaml:6:", "invalid YAML"],
    );
}

#[test]
fn a_wrong_type_names_the_field_and_line() {
    rejects(
        &format!(
            "version: 1\nsteps:\n  ok:\n    kind: command\n{MARK}  a:\n    kind: command\n    run: \"true\"\n"
        ),
        &["workflow.yaml:8:5", "`steps.a.run`", "expected a sequence"],
    );
}

#[test]
fn an_unknown_field_suggests_the_close_one() {
    rejects(
        &format!("version: 1\nsteps:\n  a:\n    kind: command\n{MARK}    ouputs: [x]\n"),
        &[
            "workflow.yaml:6:5",
            "unknown field `ouputs`",
            "did you mean `outputs`?",
        ],
    );
}

#[test]
fn an_unknown_kind_lists_the_valid_ones() {
    rejects(
        "version: 1\nsteps:\n  a:\n    kind: comand\n    run: [\"true\"]\n",
        &[
            "workflow.yaml:4:5",
            "unknown kind `comand`",
            "did you mean `command`?",
            "valid kinds: command",
        ],
    );
}

#[test]
fn a_reference_to_an_unknown_step_or_var_is_named() {
    rejects(
        &format!(
            "version: 1\nvars:\n  greeting: hi\nsteps:\n  gen:\n    kind: command\n{MARK}  a:\n    kind: command\n    run: [echo, '${{{{ steps.gne }}}}', '${{{{ greting }}}}']\n    after: [nope]\n"
        ),
        &[
            "no step named `gne`; did you mean `gen`?",
            "unknown var `greting`; did you mean `greeting`?",
            "no step named `nope`",
            "workflow.yaml:11:",
        ],
    );
}

#[test]
fn duplicate_step_names_are_refused() {
    rejects(
        &format!(
            "version: 1\nsteps:\n  a:\n    kind: command\n{MARK}  a:\n    kind: command\n    run: [\"true\"]\n"
        ),
        &[
            "workflow.yaml:6:3: a second step named `a` (the first is at line 3, column 3)",
            "rename or remove one",
        ],
    );
}

#[test]
fn a_duplicate_field_points_at_the_duplicate_not_the_first() {
    rejects(
        &format!("version: 1\nsteps:\n  a:\n    kind: command\n{MARK}    kind: command\n"),
        &["workflow.yaml:6:5: a second `kind` in `steps.a` (the first is at line 4, column 5)"],
    );
}

#[test]
fn a_yaml_tag_is_refused_as_a_tag_with_the_line_to_write() {
    rejects(
        &format!(
            "version: 1\nsteps:\n  d:\n    kind: disk\n    size: !!int 5G\n  a:\n    kind: command\n{MARK}"
        ),
        &[
            "workflow.yaml:5:11",
            "YAML tags (`!!int`) are not supported",
            "write the value without its tag: `size: 5G`",
        ],
    );
    rejects(
        &format!("version: 1\nsteps:\n  a:\n    kind: !foo command\n{MARK}"),
        &[
            "workflow.yaml:4:11: `steps.a.kind`: YAML tags (`!foo`) are not supported",
            "without its tag: `kind: command`",
        ],
    );
}

#[test]
fn a_nested_interpolation_says_interpolations_cannot_nest() {
    rejects(
        &format!(
            "version: 1\nvars:\n  v: a\nsteps:\n  a:\n    kind: command\n{MARK}  b:\n    kind: command\n    run: [echo, '${{{{ steps.${{{{ v }}}} }}}}']\n"
        ),
        &[
            "workflow.yaml:10:17: `steps.b.run[1]`: interpolations cannot nest",
            "`${{ v }}` is inside `${{ steps.${{ v }} }}`",
        ],
    );
}

#[test]
fn a_step_name_with_a_newline_is_printed_escaped() {
    let s = Space::new();
    s.workflow(&format!(
        "version: 1\nsteps:\n  \"a\\nb\":\n    kind: command\n{MARK}  c:\n    kind: command\n    run: ['true']\n    after: [\"x\\ny\"]\n"
    ));
    let run = s.qflow(&["apply"]).failure(2);
    for needle in [
        "workflow.yaml:3:3: `steps.a\\nb`: step name `a\\nb` must be letters",
        "no step named `x\\ny`",
    ] {
        assert!(
            run.stderr.contains(needle),
            "expected {needle:?} in:\n{}",
            run.stderr
        );
    }
    assert!(!run.stderr.contains("a\nb"), "{}", run.stderr);
    // So are a kind and a field name.
    s.workflow(&format!(
        "version: 1\nsteps:\n  a:\n    kind: \"com\\nmand\"\n{MARK}  b:\n    kind: command\n{MARK}    \"ou\\ttputs\": [x]\n"
    ));
    let run = s.qflow(&["apply"]).failure(2);
    assert!(
        run.stderr.contains("unknown kind `com\\nmand`"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("unknown field `ou\\ttputs`"),
        "{}",
        run.stderr
    );
    // A target given on the command line is printed escaped too.
    s.workflow(&format!(
        "version: 1\nsteps:\n  a:\n    kind: command\n{MARK}"
    ));
    let run = s.qflow(&["apply", "a\nb"]).failure(2);
    assert!(run.stderr.contains("target `a\\nb`"), "{}", run.stderr);
    assert!(!s.join("marker").exists());
}

#[test]
fn a_cycle_lists_its_steps_in_order() {
    rejects(
        "version: 1\nsteps:\n  a:\n    kind: command\n    run: ['true']\n    after: [c]\n  b:\n    kind: command\n    run: ['true']\n    after: [a]\n  c:\n    kind: command\n    run: ['true']\n    after: [b]\n",
        &["the steps form a cycle: a → b → c → a"],
    );
}

#[test]
fn an_output_escaping_the_output_dir_is_refused() {
    rejects(
        &format!("version: 1\nsteps:\n  a:\n    kind: command\n{MARK}    outputs: [../x]\n"),
        &[
            "workflow.yaml:6:",
            "`steps.a.outputs[0]`",
            "escapes the step's output directory",
        ],
    );
}

#[test]
fn an_input_that_does_not_exist_is_refused() {
    rejects(
        &format!("version: 1\nsteps:\n  a:\n    kind: command\n{MARK}    inputs: [missing.txt]\n"),
        &["`steps.a.inputs[0]`", "input `missing.txt` does not exist"],
    );
}

#[test]
fn an_input_that_does_not_exist_stops_the_independent_steps_too() {
    // `a` has no input and would start at once; `b`'s input is missing.
    rejects(
        &format!(
            "version: 1\nsteps:\n  a:\n    kind: command\n{MARK}  b:\n    kind: command\n    run: ['true']\n    inputs: [missing.txt]\n"
        ),
        &[
            "workflow.yaml:9:",
            "`steps.b.inputs[0]`",
            "input `missing.txt` does not exist",
        ],
    );
}

#[test]
fn an_unset_environment_variable_is_refused() {
    rejects(
        "version: 1\nsteps:\n  a:\n    kind: command\n    run: [echo, '${{ env.QFLOW_TEST_SURELY_UNSET }}']\n",
        &["workflow.yaml:5:", "`QFLOW_TEST_SURELY_UNSET` is not set"],
    );
}

#[test]
fn a_reference_to_an_undeclared_output_is_refused() {
    rejects(
        &format!(
            "version: 1\nsteps:\n  gen:\n    kind: command\n{MARK}    outputs: [out.txt]\n  use:\n    kind: command\n    run: [cat, '${{{{ steps.gen.nope.txt }}}}']\n"
        ),
        &["step `gen` declares no output `nope.txt`; its outputs are: out.txt"],
    );
}

#[test]
fn an_unknown_set_var_is_a_usage_error() {
    let s = Space::new();
    s.workflow("version: 1\nvars:\n  a: b\nsteps:\n  x:\n    kind: command\n    run: ['true']\n");
    let run = s.qflow(&["apply", "--set", "aa=1"]).failure(2);
    assert!(
        run.stderr.contains("no var `aa`; did you mean `a`?"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_missing_workflow_file_says_what_to_pass() {
    let s = Space::new();
    let run = s.qflow(&["apply"]).failure(2);
    assert!(
        run.stderr.contains("no workflow found: no `workflow.yaml`")
            && run.stderr.contains("pass `-f FILE`"),
        "{}",
        run.stderr
    );
    let run = s.qflow(&["apply", "paper.yaml"]).failure(2);
    assert!(
        run.stderr.contains("cannot read workflow `paper.yaml`"),
        "{}",
        run.stderr
    );
}

#[test]
fn malformed_files_get_a_place_and_only_the_hint_that_applies() {
    let deep = format!(
        "version: 1\nsteps:\n  a:\n    kind: command\n    run: {}{}\n",
        "[".repeat(300),
        "]".repeat(300)
    );
    let cases: [(&[u8], &[&str]); 5] = [
        (
            b"version: 1\nsteps:\n  a:\n    kind: command\n    run: [true]\n---\nversion: 1\n",
            &["workflow.yaml:6:1", "one YAML document"],
        ),
        (
            b"version: 1\nsteps:\n  a:\n\tkind: command\n",
            &["workflow.yaml:4:1", "a tab in the indentation"],
        ),
        (
            b"version: 1\nsteps:\n  a:\n    kind: command\n    run: [echo, \xff]\n",
            &["workflow.yaml:5:17", "not UTF-8", "0xff"],
        ),
        (
            b"a: &a [1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n\
              d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n\
              f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n",
            &["workflow.yaml:2:1", "aliases"],
        ),
        (deep.as_bytes(), &["workflow.yaml:5:1", "nest too deeply"]),
    ];
    for (bytes, needles) in cases {
        let s = Space::new();
        s.write("workflow.yaml", bytes);
        let run = s.qflow(&["apply"]).failure(2);
        for n in needles {
            assert!(run.stderr.contains(n), "expected {n:?} in:\n{}", run.stderr);
        }
        for wrong in [
            "is not valid YAML; quote it",
            "pass the workflow file as an argument",
        ] {
            assert!(!run.stderr.contains(wrong), "{wrong:?} in:\n{}", run.stderr);
        }
        assert!(run.ran().is_empty());
    }
    rejects(
        "version: 1\nsteps:\n  a:\n    kind: command\n    run: [${{ x }}]\n",
        &["workflow.yaml:5:", "quote the value"],
    );
}
