//! A researcher takes numbers out of what their steps printed, gets them as one
//! table, draws them, and holds them to what the paper claims.
//!
//! The fast tests use `command` steps (a real `sh` writing real files); the slow
//! ones boot real guests under TCG with `-icount`, in a 3-value matrix repeated
//! twice, and draw the figure.

mod common;
use common::Space;

/// A command step that prints a benchmark's lines and writes its JSON summary.
fn bench_workflow(extra: &str) -> String {
    format!(
        r#"version: 1
name: bench
steps:
  bench:
    kind: command
    run: [sh, -c, 'printf "warming up\nops/s: 1250.5\ndone\n" > "$QFLOW_OUT/run.txt"; echo "{{\"latency\": {{\"p99\": 42}}}}" > "$QFLOW_OUT/stats.json"; printf "size,cycles\n16,\"1,5\"\n64,900\n" > "$QFLOW_OUT/perf.csv"']
    outputs: [run.txt, stats.json, perf.csv]
    metrics:
      ops: {{ from: run.txt, regex: 'ops/s: ([0-9.]+)', unit: ops/s{extra} }}
      p99: {{ from: stats.json, json: /latency/p99, unit: us }}
      cycles: {{ from: perf.csv, csv: cycles }}
"#
    )
}

#[test]
fn a_steps_metrics_are_recorded_and_printed_as_a_table_in_four_forms() {
    let s = Space::new();
    s.workflow(&bench_workflow(""));
    // Before any apply there is nothing to print, and nothing runs.
    let before = s.qflow(&["results"]).failure(1);
    assert!(
        before.stderr.contains("has recorded metrics"),
        "{}",
        before.stderr
    );
    s.apply();
    let json: serde_json::Value = serde_json::from_str(&s.read("out/bench/metrics.json")).unwrap();
    assert_eq!(json["rows"][0]["values"]["ops"], 1250.5);
    assert_eq!(json["rows"][0]["values"]["p99"], 42.0);
    assert_eq!(json["rows"][0]["values"]["cycles"], 900.0);
    assert_eq!(
        s.read("out/bench/metrics.csv"),
        "step,run,cycles,ops (ops/s),p99 (us)\nbench,,900,1250.5,42\n"
    );

    let table = s.qflow(&["results"]).success();
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines[0], "step   run  cycles  ops (ops/s)  p99 (us)");
    assert_eq!(lines[2], "bench          900       1250.5        42");
    let csv = s.qflow(&["results", "--format", "csv"]).success();
    assert_eq!(csv.stdout, s.read("out/bench/metrics.csv"));
    let md = s.qflow(&["results", "--format", "markdown"]).success();
    assert!(
        md.stdout.starts_with(
            "| step | run | cycles | ops (ops/s) | p99 (us) |\n|---|---|---:|---:|---:|\n"
        ),
        "{}",
        md.stdout
    );
    let js = s
        .qflow(&["results", "--format", "json", "--step", "bench"])
        .success();
    let rows: serde_json::Value = serde_json::from_str(&js.stdout).unwrap();
    assert_eq!(rows[0]["ops (ops/s)"], 1250.5);
    // Printing the table ran nothing: the step is still cached.
    assert!(s.apply().ran().is_empty());
    let bad = s.qflow(&["results", "--format", "xls"]).failure(2);
    assert!(
        bad.stderr.contains("use table, csv, json or markdown"),
        "{}",
        bad.stderr
    );
}

#[test]
fn an_unmatched_regex_fails_the_step_showing_the_regex_the_file_and_its_last_lines() {
    let s = Space::new();
    s.workflow(&bench_workflow("").replace("ops/s: ([0-9.]+)", "ops per s: ([0-9.]+)"));
    let run = s.qflow(&["apply"]).failure(1);
    assert_eq!(run.failed(), ["bench"]);
    assert!(
        run.stderr.contains(
            "metric `ops`: regex `ops per s: ([0-9.]+)` matched nothing in run.txt; its last lines:\n    warming up\n    ops/s: 1250.5\n    done"
        ),
        "{}",
        run.stderr
    );
    // Nothing was recorded: the next apply runs the step again.
    assert!(!s.join("out/bench").exists());
}

#[test]
fn a_value_outside_its_expectation_exits_1_naming_the_metric_the_value_and_the_bound() {
    let s = Space::new();
    s.workflow(&bench_workflow(", expect: { min: 2000 }"));
    let run = s.qflow(&["apply"]).failure(1);
    assert!(
        run.stderr
            .contains("metric `ops` is 1250.5 ops/s, outside its expectation: at least 2000"),
        "{}",
        run.stderr
    );
    s.workflow(&bench_workflow(", expect: { value: 1250, rel_tol: 0.01 }"));
    s.apply();
}

#[test]
fn a_regex_without_its_capture_group_is_refused_at_its_line_before_anything_runs() {
    let s = Space::new();
    s.workflow(&bench_workflow("").replace("ops/s: ([0-9.]+)", "ops/s: [0-9.]+"));
    let run = s.qflow(&["apply"]).failure(2);
    assert!(
        run.stderr.contains("workflow.yaml:9:")
            && run.stderr.contains("`steps.bench.metrics.ops.regex`")
            && run.stderr.contains("has 0 capture groups"),
        "{}",
        run.stderr
    );
    assert!(!s.join("out").exists(), "nothing ran");
}

#[test]
fn a_metric_reading_a_file_the_step_does_not_write_is_refused() {
    let s = Space::new();
    s.workflow(&bench_workflow("").replace("from: run.txt", "from: results.txt"));
    let run = s.qflow(&["apply"]).failure(2);
    assert!(
        run.stderr
            .contains("`results.txt` is not a file of the run")
            && run.stderr.contains("declare it in `outputs`"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_figure_must_name_a_matrix_variable_and_a_metric_of_its_step() {
    let s = Space::new();
    s.workflow(&format!(
        "{}figures:\n  throughput:\n    step: bench\n    x: size\n    y: opps\n",
        bench_workflow("")
    ));
    let run = s.qflow(&["apply"]).failure(2);
    assert!(
        run.stderr.contains("workflow.yaml:15:")
            && run.stderr.contains("`figures.throughput.x`")
            && run
                .stderr
                .contains("step `bench` has no matrix variable `size`"),
        "{}",
        run.stderr
    );
    s.workflow(&format!(
        "{}figures:\n  throughput:\n    step: bnch\n    x: size\n    y: ops\n",
        bench_workflow("")
    ));
    let run = s.qflow(&["apply"]).failure(2);
    assert!(
        run.stderr.contains("`figures.throughput.step`")
            && run.stderr.contains("did you mean `bench`"),
        "{}",
        run.stderr
    );
}
