//! A researcher takes numbers out of what their steps printed, gets them as one
//! table, draws them, and holds them to what the paper claims.
//!
//! The fast tests use `command` steps (a real `sh` writing real files); the slow
//! ones boot real guests under TCG with `-icount`, in a 3-value matrix repeated
//! twice, and draw the figure.

mod common;
use common::{Space, host_kernel};

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
    // The regex and the file in the headline; the file's last lines in the log's tail.
    assert!(
        run.stderr.contains(
            "metric `ops`: regex `ops per s: ([0-9.]+)` matched nothing in run.txt\n  log:"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("its last lines:\n        warming up\n        ops/s: 1250.5\n        done"),
        "{}",
        run.stderr
    );
    // Nothing was recorded: the next apply runs the step again.
    assert!(!s.join("out/bench").exists());
}

#[test]
fn a_value_outside_its_expectation_is_recorded_then_fails_the_apply_naming_it() {
    let s = Space::new();
    s.workflow(&bench_workflow(", expect: { min: 2000 }"));
    let run = s.qflow(&["apply"]).failure(1);
    let named =
        "step `bench`: metric `ops` is 1250.5 ops/s, outside its expectation: at least 2000";
    assert!(run.stderr.contains(named), "{}", run.stderr);
    assert!(run.failed().is_empty(), "the step itself succeeded");
    // The values were recorded: the table shows them and nothing runs again...
    let table = s.qflow(&["results", "--format", "csv"]).success();
    assert_eq!(
        table.stdout,
        "step,run,cycles,ops (ops/s),p99 (us)\nbench,,900,1250.5,42\n"
    );
    assert_eq!(table.stdout, s.read("out/bench/metrics.csv"));
    // ...but a cached step is held to its expectation on every apply.
    let again = s.qflow(&["apply"]).failure(1);
    assert!(again.ran().is_empty(), "{}", again.stderr);
    assert!(again.stderr.contains(named), "{}", again.stderr);
    // The run record keeps what failed.
    let runs = s.join(".qflow/runs");
    let newest = std::fs::read_dir(&runs)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .max_by_key(|e| e.metadata().unwrap().modified().unwrap())
        .unwrap();
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(newest.path()).unwrap()).unwrap();
    assert_eq!(record["steps"][0]["unmet"][0], named);
    // A tolerance the value meets: the step's key changed, it runs and passes.
    s.workflow(&bench_workflow(", expect: { value: 1250, rel_tol: 0.01 }"));
    assert_eq!(s.apply().ran(), ["bench"]);
}

/// `qflow verify` with its scratch directory under the space.
fn verify(s: &Space) -> common::Run {
    let tmp = s.join("tmpdir");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = s
        .command(&["verify"])
        .env("TMPDIR", &tmp)
        .output()
        .expect("cannot run qflow");
    common::Run::from(out)
}

/// The lock with metric `name` of step `bench` set to `value`.
fn plant_in_lock(s: &Space, name: &str, value: f64) {
    let mut lock: serde_json::Value = serde_json::from_str(&s.read("qflow.lock")).unwrap();
    let metrics = &mut lock["steps"]["bench"]["metrics"];
    assert!(metrics[name].is_number(), "the lock keeps `{name}`: {lock}");
    metrics[name] = serde_json::json!(value);
    s.write("qflow.lock", serde_json::to_string_pretty(&lock).unwrap());
}

/// The metric table row of `step/metric`: reference, rebuilt, ratio and result.
fn metric_row(run: &common::Run, name: &str) -> Vec<String> {
    let line = run
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no metric row for {name}:\n{}", run.stdout));
    line.split_whitespace()
        .skip(1)
        .map(str::to_string)
        .collect()
}

#[test]
fn verify_passes_on_a_rebuild_and_fails_on_a_planted_change() {
    let s = Space::new();
    s.workflow(&bench_workflow(""));
    s.apply();
    let lock: serde_json::Value = serde_json::from_str(&s.read("qflow.lock")).unwrap();
    assert_eq!(lock["steps"]["bench"]["metrics"]["ops"], 1250.5);
    assert_eq!(lock["steps"]["bench"]["metrics"]["p99"], 42.0);

    // A rebuild of a deterministic step gives the same numbers, exactly.
    let run = verify(&s).success();
    assert_eq!(
        metric_row(&run, "bench/ops"),
        ["1250.5", "1250.5", "1.000000", "same"]
    );
    assert!(
        run.stdout.contains("all 3 metric values within tolerance"),
        "{}",
        run.stdout
    );

    // A number planted in the lock is found, with how far off it is.
    plant_in_lock(&s, "ops", 1300.0);
    let run = verify(&s).failure(1);
    assert_eq!(
        metric_row(&run, "bench/ops"),
        ["1300", "1250.5", "0.961923", "OUTSIDE", "TOLERANCE"]
    );
    assert_eq!(metric_row(&run, "bench/p99")[3], "same");
    assert!(
        run.stdout
            .contains("1 of 3 metric values outside tolerance"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_metric_with_a_tolerance_verifies_within_it_and_fails_beyond_it() {
    let s = Space::new();
    s.workflow(&bench_workflow(", tolerance: 0.05"));
    s.apply();
    plant_in_lock(&s, "ops", 1300.0);
    let run = verify(&s).success();
    assert_eq!(
        metric_row(&run, "bench/ops"),
        [
            "1300",
            "1250.5",
            "0.961923",
            "within",
            "tolerance",
            "(tolerance",
            "5%)"
        ]
    );
    plant_in_lock(&s, "ops", 1400.0);
    let run = verify(&s).failure(1);
    assert_eq!(metric_row(&run, "bench/ops")[3], "OUTSIDE");
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

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// A deterministic guest workload (a sum of squares up to `$size`) in a matrix of
/// three sizes, each run twice under TCG with `-icount`, and one figure of it.
fn sweep_workflow(title: &str, name: &str) -> String {
    format!(
        r#"version: 1
name: sweep
steps:
  initramfs:
    kind: command
    run: [sh, {FIXTURES}/results/make-initramfs.sh]
    inputs: [{FIXTURES}/results/make-initramfs.sh]
    outputs: [initrd.img]
  sweep:
    kind: boot
    kernel: {kernel}
    initrd: initramfs
    append: console=ttyS0 rdinit=/init quiet
    memory: 256M
    accel: tcg
    icount: 1
    timeout: 5m
    jobs: 2
    matrix: {{ size: [10, 100, 1000] }}
    repeat: 2
    commands:
      - 's=0; i=1; while [ $i -le $size ]; do s=$((s+i*i)); i=$((i+1)); done; echo "sum=$s" > /tmp/run.txt'
      - 'echo "run $size/$repeat done"'
    collect: [/tmp/run.txt]
    extra_args: [-name, {name}]
    metrics:
      sum: {{ from: run.txt, regex: 'sum=([0-9]+)', unit: "squares" }}
      repeat_seen: {{ from: console.log, regex: 'run [0-9]+/([0-9]+) done' }}
figures:
  sums:
    step: sweep
    x: size
    y: sum
    log_x: true
    log_y: true
    title: {title}
"#,
        kernel = host_kernel()
    )
}

#[test]
#[ignore = "slow: boots the host kernel six times under TCG"]
fn a_repeated_matrix_gives_one_row_per_run_a_figure_and_redraws_only_the_figure() {
    let s = Space::new();
    let name = s.path().file_name().unwrap().to_string_lossy().into_owned();
    s.workflow(&sweep_workflow("Sum of squares", &name));
    let first = s.apply();
    assert_eq!(first.ran_sorted(), ["figures", "initramfs", "sweep"]);

    // Six rows, one per run, with the right values.
    let csv = s.qflow(&["results", "--format", "csv"]).success().stdout;
    let records = parse_csv(&csv);
    assert_eq!(
        records[0],
        [
            "step",
            "run",
            "size",
            "repeat",
            "repeat_seen",
            "sum (squares)"
        ]
    );
    assert_eq!(records.len(), 7, "{csv}");
    let sum_of_squares = |n: u64| n * (n + 1) * (2 * n + 1) / 6;
    let mut seen = Vec::new();
    for r in &records[1..] {
        let size: u64 = r[2].parse().unwrap();
        assert_eq!(r[1], format!("size={size},repeat={}", r[3]));
        assert_eq!(r[4], r[3], "the guest saw its own repeat number");
        assert_eq!(r[5].parse::<u64>().unwrap(), sum_of_squares(size), "{r:?}");
        seen.push((size, r[3].clone()));
    }
    seen.sort();
    assert_eq!(seen.len(), 6);
    assert_eq!(seen[0], (10, "1".to_string()));
    assert_eq!(seen[5], (1000, "2".to_string()));
    // The CSV round-trips: the same cells as the JSON form.
    let json: serde_json::Value =
        serde_json::from_str(&s.qflow(&["results", "--format", "json"]).success().stdout).unwrap();
    for (i, r) in records[1..].iter().enumerate() {
        assert_eq!(json[i]["run"], r[1].as_str());
        assert_eq!(json[i]["sum (squares)"].as_f64().unwrap().to_string(), r[5]);
    }
    // Deterministic workload: the repeats agree, so the interval has no width.
    let summary = s
        .qflow(&["results", "--summary", "--format", "csv"])
        .success()
        .stdout;
    let summary = parse_csv(&summary);
    assert_eq!(summary.len(), 4, "one row per size");
    let sd = summary[0].iter().position(|h| h == "sum sd").unwrap();
    assert!(summary[1..].iter().all(|r| r[sd] == "0"), "{summary:?}");

    // The figure: one marker per size, in order of size.
    let svg = s.read("out/figures/sums.svg");
    let markers: Vec<&str> = svg
        .lines()
        .filter(|l| l.contains("<circle") && !l.contains("fill=\"none\""))
        .collect();
    assert_eq!(markers.len(), 3, "{svg}");
    assert!(svg.contains("Sum of squares"));
    let png = std::fs::read(s.join("out/figures/sums.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // Changing only the figure's title redraws it and boots nothing; the plan says why.
    s.workflow(&sweep_workflow("Squares summed", &name));
    let plan = s.qflow(&["plan"]).success();
    assert!(
        plan.stdout.contains("`sums.title`"),
        "the plan names the changed field:\n{}",
        plan.stdout
    );
    let again = s.apply();
    assert_eq!(again.ran(), ["figures"], "{}", again.stderr);
    assert!(s.read("out/figures/sums.svg").contains("Squares summed"));
}

/// RFC 4180 records (quoted fields may hold commas).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    for line in text.lines() {
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '"' if quoted && chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = !quoted,
                ',' if !quoted => fields.push(std::mem::take(&mut field)),
                c => field.push(c),
            }
        }
        fields.push(field);
        records.push(fields);
    }
    records
}
