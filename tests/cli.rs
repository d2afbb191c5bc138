//! The other commands a user reaches for: plan, graph, status, gc, clean, completions.

mod common;
use common::Space;

const TWO: &str = r#"
version: 1
steps:
  gen:
    kind: command
    run: [sh, -c, 'cat data.txt > "$QFLOW_OUT/out.txt"']
    inputs: [data.txt]
    outputs: [out.txt]
  use:
    kind: command
    run: [sh, -c, 'wc -c < ${{ steps.gen.out.txt }} > "$QFLOW_OUT/n"']
    outputs: [n]
"#;

fn two() -> Space {
    let s = Space::new();
    s.workflow(TWO).write("data.txt", "abc\n");
    s
}

#[test]
fn plan_json_says_what_runs_and_why() {
    let s = two();
    let v: serde_json::Value =
        serde_json::from_str(&s.qflow(&["plan", "--json"]).success().stdout).unwrap();
    assert_eq!(v["steps"][0]["name"], "gen");
    assert_eq!(v["steps"][0]["action"], "run");
    assert!(
        v["steps"][0]["reasons"][0]
            .as_str()
            .unwrap()
            .contains("never ran")
    );
    s.apply();
    let v: serde_json::Value =
        serde_json::from_str(&s.qflow(&["plan", "--json"]).success().stdout).unwrap();
    assert_eq!(v["steps"][0]["action"], "cached");
    assert_eq!(v["steps"][1]["action"], "cached");
    s.write("data.txt", "abcd\n");
    let v: serde_json::Value =
        serde_json::from_str(&s.qflow(&["plan", "--json"]).success().stdout).unwrap();
    assert_eq!(v["steps"][0]["reasons"][0], "input `data.txt` changed");
    assert_eq!(v["steps"][1]["action"], "run");
}

#[test]
fn plan_json_gives_each_command_as_an_argv_array_not_a_shell_string() {
    let s = Space::new();
    s.workflow(
        "version: 1\nsteps:\n  quote:\n    kind: command\n    run: [sh, -c, 'echo \"it''s here\" > \"$QFLOW_OUT/a b\"; ls # not a comment', '', '(x)']\n  img:\n    kind: image\n    size: 16M\n",
    );
    let v: serde_json::Value =
        serde_json::from_str(&s.qflow(&["plan", "--json"]).success().stdout).unwrap();
    let step = |name: &str| {
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|st| st["name"] == name)
            .unwrap_or_else(|| panic!("{v}"))
            .clone()
    };
    assert_eq!(
        step("quote")["commands"],
        serde_json::json!([{ "argv": [
            "sh",
            "-c",
            "echo \"it's here\" > \"$QFLOW_OUT/a b\"; ls # not a comment",
            "",
            "(x)"
        ] }])
    );
    assert_eq!(
        step("img")["commands"][0]["argv"],
        serde_json::json!([
            "qemu-img",
            "create",
            "-f",
            "qcow2",
            "$QFLOW_OUT/image.qcow2",
            "16777216"
        ])
    );
}

#[test]
fn plan_names_the_changed_field_of_a_step() {
    let s = two();
    s.apply();
    s.write("workflow.yaml", TWO.replace("wc -c", "wc -m"));
    let plan = s.qflow(&["plan"]).success();
    assert!(
        plan.stdout.contains("field `run[2]` changed"),
        "{}",
        plan.stdout
    );
    assert!(plan.stdout.contains("cached  gen"), "{}", plan.stdout);
}

#[test]
fn plan_runs_nothing() {
    let s = two();
    s.qflow(&["plan"]).success();
    assert!(!s.join("out").exists());
}

#[test]
fn graph_prints_dot_coloured_by_status() {
    let s = two();
    s.apply();
    s.write("workflow.yaml", TWO.replace("wc -c", "wc -m"));
    let dot = s.qflow(&["graph"]).success().stdout;
    assert!(dot.starts_with("digraph"), "{dot}");
    assert!(dot.contains("\"gen\" -> \"use\""), "{dot}");
    assert!(
        dot.contains("\"gen\" [label=\"gen\\ncommand (cached)\", fillcolor=palegreen]"),
        "{dot}"
    );
    assert!(dot.contains("fillcolor=orange"), "{dot}");
    if qflow_has_dot() {
        let svg = s.qflow(&["graph", "--format", "svg"]).success().stdout;
        assert!(svg.contains("<svg"), "{svg}");
    }
}

fn qflow_has_dot() -> bool {
    std::process::Command::new("dot")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn status_shows_fresh_and_stale_steps_and_the_last_run() {
    let s = two();
    s.apply();
    s.write("data.txt", "changed\n");
    let out = s.qflow(&["status"]).success().stdout;
    assert!(out.contains("stale   gen"), "{out}");
    assert!(out.contains("last run:") && out.contains("2 ran"), "{out}");
}

#[test]
fn clean_forgets_one_step_so_it_runs_again() {
    let s = two();
    s.apply();
    s.qflow(&["clean", "--step", "use"]).success();
    assert!(!s.join("out/use").exists());
    let run = s.apply();
    assert_eq!(run.ran(), ["use"]);
    assert_eq!(run.cached(), ["gen"]);
    s.qflow(&["clean", "--step", "nope"]).failure(2);
}

#[test]
fn gc_keeps_what_recent_runs_use_and_deletes_the_rest() {
    let s = two();
    s.apply();
    for i in 0..3 {
        s.write("data.txt", format!("version {i}\n"));
        s.apply();
    }
    let objects_before = count_files(&s.join(".qflow/objects"));
    let gc = s.qflow(&["gc", "--keep-runs", "1"]).success();
    // Sizes as people read them: `(24 B)`, `(1.3 MiB)`, never a raw byte count.
    let size = gc
        .stderr
        .rsplit_once('(')
        .and_then(|(_, r)| r.split_once(')'))
        .map(|(size, _)| size.to_string())
        .unwrap_or_else(|| panic!("{}", gc.stderr));
    let (number, unit) = size.split_once(' ').unwrap_or_else(|| panic!("{size}"));
    assert!(number.parse::<f64>().is_ok(), "{size}");
    assert!(["B", "KiB", "MiB", "GiB"].contains(&unit), "{}", gc.stderr);
    let objects_after = count_files(&s.join(".qflow/objects"));
    assert!(
        objects_after < objects_before,
        "{objects_before} -> {objects_after}"
    );
    let run = s.apply();
    assert!(
        run.ran().is_empty(),
        "gc removed the current results: {}",
        run.stderr
    );
    assert_eq!(s.read("out/gen/out.txt"), "version 2\n");
}

fn count_files(dir: &std::path::Path) -> usize {
    walk(dir).len()
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn completions_are_printed_for_bash() {
    let s = Space::new();
    let out = s.qflow(&["completions", "bash"]).success().stdout;
    assert!(out.contains("qflow") && out.contains("apply"));
}

#[test]
fn logs_hold_each_steps_full_output() {
    let s = Space::new();
    s.workflow("version: 1\nsteps:\n  talk:\n    kind: command\n    run: [sh, -c, 'echo to-stdout; echo to-stderr >&2']\n");
    s.apply();
    let logs = walk(&s.join(".qflow/logs"));
    assert_eq!(logs.len(), 1);
    let text = std::fs::read_to_string(&logs[0]).unwrap();
    assert!(logs[0].ends_with("talk.log"));
    assert!(
        text.contains("to-stdout") && text.contains("to-stderr"),
        "{text}"
    );
}

#[test]
fn a_shared_cache_given_by_qflow_cache_serves_a_second_workspace() {
    let cache = Space::new();
    let a = two().with_cache(cache.path());
    a.apply();
    let b = two().with_cache(cache.path());
    let run = b.apply();
    assert!(run.ran().is_empty(), "{}", run.stderr);
    assert_eq!(b.read("out/gen/out.txt"), "abc\n");
}

#[test]
fn apply_detach_runs_in_its_own_session_and_status_shows_it_live() {
    let s = Space::new();
    s.workflow(
        "version: 1\nsteps:\n  slow:\n    kind: command\n    run: [sh, -c, 'touch started; sleep 2; echo done > \"$QFLOW_OUT/r\"']\n    outputs: [r]\n",
    );
    let t0 = std::time::Instant::now();
    let run = s.qflow(&["apply", "--detach"]).success();
    assert!(
        t0.elapsed().as_secs_f64() < 1.5,
        "--detach waited for the run"
    );
    let pid: i32 = run
        .stderr
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{}", run.stderr));
    // A new session: the SIGHUP of a closing ssh login does not reach it.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let session: i32 = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(session, pid, "the detached qflow leads its own session");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !s.join("started").exists() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let live = s.qflow(&["status"]).success().stdout;
    assert!(
        live.contains("in progress") && live.contains("running: slow"),
        "{live}"
    );
    while !s.join("out/slow/r").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the detached run did not finish"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let done = s.qflow(&["status"]).success().stdout;
    assert!(done.contains("1 ran, 0 cached, 0 failed"), "{done}");
}

#[test]
fn attach_without_a_running_boot_says_when_it_can_attach() {
    let s = two();
    let run = s.qflow(&["attach", "gen"]).failure(2);
    assert!(
        run.stderr
            .contains("has no running console; attach while `qflow apply` runs it"),
        "{}",
        run.stderr
    );
    s.qflow(&["attach", "nope"]).failure(2);
}

#[test]
fn stop_ends_a_detached_run_as_ctrl_c_would_and_leaves_nothing_behind() {
    let s = Space::new();
    s.workflow(
        "version: 1\nsteps:\n  slow:\n    kind: command\n    run: [sh, -c, 'echo $$ > started; sleep 60; echo done > \"$QFLOW_OUT/r\"']\n    outputs: [r]\n",
    );
    let nothing = s.qflow(&["stop"]).success().stdout;
    assert!(nothing.contains("nothing to stop"), "{nothing}");
    // A recorded pid that now names another process is left alone.
    let mut other = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    std::fs::create_dir_all(s.join(".qflow")).unwrap();
    s.write(
        ".qflow/detached.pid",
        format!("{}\n1\nsome.log\n", other.id()),
    );
    let left_alone = s.qflow(&["stop"]).success().stdout;
    assert!(left_alone.contains("nothing to stop"), "{left_alone}");
    assert!(
        alive(other.id() as i32),
        "stop signalled a process not its own"
    );
    other.kill().unwrap();
    other.wait().unwrap();
    let run = s.qflow(&["apply", "--detach"]).success();
    let pid: i32 = run
        .stderr
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{}", run.stderr));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_to_string(s.join("started")).map_or(true, |t| !t.ends_with('\n')) {
        assert!(
            std::time::Instant::now() < deadline,
            "the step never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let shell: i32 = s.read("started").trim().parse().unwrap();
    assert!(
        s.read(".qflow/detached.pid")
            .starts_with(&format!("{pid}\n")),
        "the detached run is recorded where `stop` looks"
    );
    let t0 = std::time::Instant::now();
    let stop = s.qflow(&["stop"]).success().stdout;
    assert!(
        stop.contains("stopped the detached run") && stop.contains(&format!("pid {pid}")),
        "{stop}"
    );
    assert!(t0.elapsed().as_secs() < 10, "stop took {:?}", t0.elapsed());
    assert!(!alive(pid), "qflow still runs");
    assert!(!alive(shell), "the step's shell was left behind");
    assert!(!s.join("out/slow/r").exists());
    let status = s.qflow(&["status"]).success().stdout;
    assert!(!status.contains("in progress"), "{status}");
    let again = s.qflow(&["stop"]).success().stdout;
    assert!(again.contains("nothing to stop"), "{again}");
}

/// Whether `pid` is a live process (not gone, not a zombie waiting to be reaped).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

const GOOD_AND_BAD: &str = "version: 1\nsteps:\n  good:\n    kind: command\n    run: [\"true\"]\n  bad:\n    kind: command\n    run: [sh, -c, 'echo oops; exit 3']\n";

#[test]
fn quiet_prints_only_the_failure_and_nothing_when_all_is_well() {
    let s = Space::new();
    s.workflow(GOOD_AND_BAD);
    let run = s.qflow(&["apply", "-q", "--keep-going"]).failure(1);
    assert!(run.stderr.contains("FAILED bad"), "{}", run.stderr);
    assert!(run.stderr.contains("failed:\n  bad"), "{}", run.stderr);
    assert!(!run.stderr.contains("ok good"), "{}", run.stderr);
    assert!(!run.stderr.contains("run good"), "{}", run.stderr);
    assert!(!run.stderr.contains(" ran, "), "{}", run.stderr);
    let cached = s.qflow(&["-q", "apply", "good"]).success();
    assert_eq!(cached.stderr, "", "a quiet no-op says nothing");
}

#[test]
fn color_always_colours_ok_cached_and_failed_and_never_or_no_color_does_not() {
    let s = Space::new();
    s.workflow(GOOD_AND_BAD);
    let run = s
        .qflow(&["apply", "--color", "always", "--keep-going"])
        .failure(1);
    assert!(
        run.stderr.contains("qflow: \x1b[32mok\x1b[0m good"),
        "{:?}",
        run.stderr
    );
    assert!(
        run.stderr.contains("qflow: \x1b[1;31mFAILED\x1b[0m bad"),
        "{:?}",
        run.stderr
    );
    let cached = s.qflow(&["--color=always", "apply", "good"]).success();
    assert!(
        cached.stderr.contains("qflow: \x1b[36mcached\x1b[0m good"),
        "{:?}",
        cached.stderr
    );
    // Into a pipe `auto` means no colour; so do `never` and NO_COLOR.
    for run in [
        s.qflow(&["apply", "--keep-going"]),
        s.qflow(&["apply", "--color", "never", "--keep-going"]),
    ] {
        assert!(!run.stderr.contains('\x1b'), "{:?}", run.stderr);
        assert!(run.stderr.contains("FAILED bad"), "{:?}", run.stderr);
    }
    let out = s
        .command(&["apply", "--keep-going"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains('\x1b'));
    let bad = s.qflow(&["apply", "--color", "sometimes"]).failure(2);
    assert!(
        bad.stderr.contains("`auto`, `always` or `never`"),
        "{}",
        bad.stderr
    );
}

/// Two independent steps writing many long lines at once.
const CHATTY: &str = r#"
version: 1
steps:
  left:
    kind: command
    run: [sh, -c, 'i=0; while [ $i -lt 300 ]; do echo "left line $i xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx end"; i=$((i+1)); done; touch "$QFLOW_OUT/l"']
    outputs: [l]
  right:
    kind: command
    run: [sh, -c, 'i=0; while [ $i -lt 300 ]; do echo "right line $i yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy end" >&2; i=$((i+1)); done; touch "$QFLOW_OUT/r"']
    outputs: [r]
"#;

#[test]
fn verbose_streams_each_step_output_line_whole_with_the_step_name() {
    let s = Space::new();
    s.workflow(CHATTY);
    let run = s.qflow(&["apply", "-v", "-j", "2"]).success();
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    for line in run.stderr.lines().filter(|l| l.starts_with('[')) {
        let (step, text) = line[1..]
            .split_once("] ")
            .unwrap_or_else(|| panic!("{line}"));
        if text.starts_with("$ ") {
            continue;
        }
        let x = if step == "left" { 'x' } else { 'y' };
        let want = format!("{step} line ");
        let n = text
            .strip_prefix(want.as_str())
            .and_then(|t| t.split_once(' '))
            .filter(|(_, rest)| rest.trim_end_matches(" end").chars().all(|c| c == x))
            .filter(|(_, rest)| rest.ends_with(" end"));
        assert!(n.is_some(), "a line mixed with another: {line:?}");
        *seen
            .entry(if step == "left" { "left" } else { "right" })
            .or_default() += 1;
    }
    assert_eq!(seen.get("left"), Some(&300), "{seen:?}");
    assert_eq!(seen.get("right"), Some(&300), "{seen:?}");
    assert_eq!(run.ran_sorted(), ["left", "right"]);
    // Without -v the output stays in the logs.
    let quiet = s.qflow(&["apply", "--force", "left"]).success();
    assert!(
        !quiet.stderr.contains("[left] left line"),
        "{}",
        quiet.stderr
    );
}

const TIMED: &str = r#"
version: 1
steps:
  first:
    kind: command
    run: [sh, -c, 'sleep 1; touch "$QFLOW_OUT/a"']
    outputs: [a]
  second:
    kind: command
    run: [sh, -c, 'sleep 2; date +%s%N > "$QFLOW_OUT/b"; cat ${{ steps.first.a }}']
    outputs: [b]
"#;

/// The `[n/m...]` at the end of step `step`'s `ok` line.
fn counter_of(stderr: &str, step: &str) -> String {
    let prefix = format!("qflow: ok {step} ");
    let line = (stderr.lines())
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no ok line for {step}:\n{stderr}"));
    line[line.find('[').unwrap_or_else(|| panic!("{line}"))..].to_string()
}

#[test]
fn ok_lines_count_steps_and_estimate_the_time_left_from_the_previous_run() {
    let s = Space::new();
    s.workflow(TIMED);
    let first = s.apply();
    assert_eq!(
        first.ran(),
        ["first", "second"],
        "the step names still parse"
    );
    // No previous times yet: the count alone.
    assert_eq!(counter_of(&first.stderr, "first"), "[1/2]");
    assert_eq!(counter_of(&first.stderr, "second"), "[2/2]");
    let again = s
        .qflow(&["apply", "--force", "first", "--force", "second"])
        .success();
    // `second` took 2 s (a little more on a busy machine) last time and has
    // not started when `first` ends.
    let counter = counter_of(&again.stderr, "first");
    let secs: u64 = (counter.strip_prefix("[1/2, about "))
        .and_then(|c| c.strip_suffix("s left]"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{counter}"));
    assert!((2..=4).contains(&secs), "{counter}");
    assert_eq!(counter_of(&again.stderr, "second"), "[2/2]");
}

/// The JSON events of `apply --json`, each line parsed on its own.
fn events(stdout: &str) -> Vec<serde_json::Value> {
    (stdout.lines())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn apply_json_writes_one_event_per_line_for_each_step_and_the_run() {
    let s = Space::new();
    s.workflow(
        r#"
version: 1
steps:
  gen:
    kind: command
    run: [sh, -c, 'echo hi > "$QFLOW_OUT/out.txt"']
    outputs: [out.txt]
  bad:
    kind: command
    run: [sh, -c, 'exit 3']
    outputs: [x]
  after:
    kind: command
    run: [sh, -c, 'cat ${{ steps.bad.x }}']
    outputs: [y]
"#,
    );
    let run = s.qflow(&["apply", "--json", "--keep-going"]).failure(1);
    let ev = events(&run.stdout);
    let finished = |step: &str| {
        (ev.iter())
            .find(|e| e["event"] == "finished" && e["step"] == step)
            .unwrap_or_else(|| panic!("no finished event for {step}: {ev:?}"))
            .clone()
    };
    let started: Vec<&str> = (ev.iter())
        .filter(|e| e["event"] == "started")
        .map(|e| e["step"].as_str().unwrap())
        .collect();
    assert_eq!(started.len(), 2, "{ev:?}");
    assert!(
        started.contains(&"gen") && started.contains(&"bad"),
        "{ev:?}"
    );
    let gen_ = finished("gen");
    assert_eq!(gen_["state"], "ran");
    assert_eq!(gen_["key"].as_str().unwrap().len(), 64, "{gen_}");
    assert!(gen_["duration_ms"].is_u64(), "{gen_}");
    let bad = finished("bad");
    assert_eq!(bad["state"], "failed");
    assert!(bad["error"].as_str().unwrap().contains("exit"), "{bad}");
    assert!(bad["log"].as_str().unwrap().ends_with("bad.log"), "{bad}");
    let after = finished("after");
    assert_eq!(after["state"], "skipped");
    assert!(
        after["reasons"][0].as_str().unwrap().contains("bad"),
        "{after}"
    );
    let end = ev.last().unwrap();
    assert_eq!(end["event"], "run_finished", "{ev:?}");
    assert_eq!(
        (end["ran"].as_u64(), end["failed"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(end["skipped"], 1);
    // Each step is finished once, and the human lines stay on stderr.
    assert_eq!(ev.iter().filter(|e| e["event"] == "finished").count(), 3);
    assert!(run.stderr.contains("qflow: ok gen"), "{}", run.stderr);

    let cached = s.qflow(&["apply", "--json", "gen"]).success();
    let ev = events(&cached.stdout);
    assert_eq!(ev[0]["event"], "finished", "{ev:?}");
    assert_eq!(ev[0]["state"], "cached");
    assert_eq!(ev[0]["key"], gen_["key"]);
    assert_eq!(ev[1]["cached"], 1);
}

#[test]
fn the_run_record_and_apply_json_give_the_cpu_time_of_a_step_and_the_programs_it_started() {
    let s = Space::new();
    // Two programs, one in the background, each burning 300 ms of CPU (its own
    // clock ticks, from /proc); and a step that only waits.
    s.workflow(
        r#"
version: 1
steps:
  burn:
    kind: command
    run: [sh, -c, 'sh -c "$0" & sh -c "$0"; wait', 'while :; do read -r _ _ _ _ _ _ _ _ _ _ _ _ _ u s _ < /proc/$$/stat; [ $((u + s)) -ge 30 ] && exit 0; done']
  nap:
    kind: command
    run: [sleep, '0.3']
"#,
    );
    let run = s.qflow(&["apply", "--json"]).success();
    let ev = events(&run.stdout);
    let cpu_of = |step: &str| {
        (ev.iter())
            .find(|e| e["event"] == "finished" && e["step"] == step)
            .and_then(|e| e["cpu_ms"].as_u64())
            .unwrap_or_else(|| panic!("no cpu_ms for {step}: {ev:?}"))
    };
    assert!(cpu_of("burn") >= 590, "{ev:?}");
    assert!(cpu_of("nap") < 200, "{ev:?}");
    let id = ev.last().unwrap()["run"].as_str().unwrap().to_string();
    let record: serde_json::Value =
        serde_json::from_str(&s.read(&format!(".qflow/runs/{id}.json"))).unwrap();
    let burn = (record["steps"].as_array().unwrap().iter())
        .find(|st| st["name"] == "burn")
        .unwrap();
    assert_eq!(burn["cpu_ms"].as_u64(), Some(cpu_of("burn")), "{record}");
}

#[test]
fn verbose_and_quiet_together_is_a_usage_error() {
    let s = two();
    s.qflow(&["apply", "-q", "-v"]).failure(2);
}

#[test]
fn completion_offers_the_step_names_of_the_workflow_found_here() {
    let s = two();
    std::fs::create_dir(s.join("deeper")).unwrap();
    let names = |dir: &str, words: &[&str]| {
        let mut args = vec!["__complete-steps", "--"];
        args.extend(words);
        let mut cmd = s.command(&args);
        cmd.current_dir(s.join(dir));
        common::Run::from(cmd.output().unwrap())
    };
    assert_eq!(names(".", &["apply", ""]).success().stdout, "gen\nuse\n");
    assert_eq!(
        names(".", &["plan", "--force", "u"]).success().stdout,
        "gen\nuse\n"
    );
    assert_eq!(
        names(".", &["clean", "--step", ""]).success().stdout,
        "gen\nuse\n"
    );
    // From a subdirectory, the workflow of a parent, as apply finds it.
    assert_eq!(
        names("deeper", &["graph", ""]).success().stdout,
        "gen\nuse\n"
    );
    // Where no step goes, nothing.
    let none = names(".", &["apply", "--jobs", ""]).failure(1);
    assert_eq!(none.stdout, "");
    names(".", &["status", ""]).failure(1);
    // Another workflow named on the line.
    s.write(
        "other.yaml",
        "version: 1\nsteps:\n  only:\n    kind: command\n    run: [sh, -c, 'true']\n",
    );
    let other = names("deeper", &["-C", "..", "apply", "-f", "other.yaml", ""]);
    assert_eq!(other.success().stdout, "only\n");
}

#[test]
fn the_bash_completion_script_completes_step_names() {
    let s = two();
    let script = s.qflow(&["completions", "bash"]).success().stdout;
    assert!(script.contains("__complete-steps"), "{script}");
    s.write("qflow.bash", &script);
    for shell in ["zsh", "fish"] {
        let out = s.qflow(&["completions", shell]).success().stdout;
        assert!(out.contains("__complete-steps"), "{shell}: {out}");
    }
    // fish completes an option's value from that option's own line only.
    let fish = s.qflow(&["completions", "fish"]).success().stdout;
    let force = (fish.lines())
        .find(|l| l.contains("using_subcommand apply") && l.contains(" -l force "))
        .expect("apply's --force line");
    assert!(force.ends_with("-a '(__fish_qflow_steps)'"), "{force}");
    // Run bash's completion as a TAB would, with this qflow on PATH.
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_qflow"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let complete = |line: &str| {
        let words: Vec<&str> = line.split(' ').collect();
        let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let cword = words.len() - 1;
        let program = format!(
            "source ./qflow.bash; COMP_WORDS=({}); COMP_CWORD={cword}; \
             _qflow qflow '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            quoted.join(" "),
            words[cword],
            words[cword - 1],
        );
        let out = std::process::Command::new("bash")
            .args(["-c", &program])
            .current_dir(s.path())
            .env("PATH", &path)
            .output()
            .expect("bash runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(complete("qflow apply "), "gen\nuse\n");
    assert_eq!(complete("qflow apply --force u"), "use\n");
    assert_eq!(
        complete("qflow sta"),
        "status\n",
        "subcommands still complete"
    );
}

/// The commands `qflow --help` lists.
fn commands_in_help(s: &Space) -> Vec<String> {
    let help = s.qflow(&["--help"]).success().stdout;
    let list = &help[help.find("Commands:").expect("a command list")..];
    (list.lines().skip(1))
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(String::from)
        .collect()
}

#[test]
fn the_man_page_describes_every_command_with_its_options() {
    let s = Space::new();
    let page = s.qflow(&["man"]).success().stdout;
    assert!(
        page.starts_with(".ie") || page.starts_with(".TH"),
        "roff: {page}"
    );
    assert!(page.contains(".TH qflow 1"), "{page}");
    let commands = commands_in_help(&s);
    assert!(commands.len() > 15, "{commands:?}");
    for c in &commands {
        let section = format!(".SH \"QFLOW {}\"", c.to_uppercase());
        assert!(page.contains(&section), "no section {section}");
        assert!(
            page.contains(&format!("\\fBqflow {c}\\fR")),
            "{c} not listed"
        );
    }
    assert!(
        page.contains("\\-\\-keep\\-going"),
        "apply's options are there"
    );
    assert!(!page.contains("__run"), "internal commands are left out");
}

#[test]
fn the_setup_script_installs_the_man_page() {
    let s = Space::new();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install-host-deps.sh");
    let out = std::process::Command::new("bash")
        .args([script, "--man-page", env!("CARGO_BIN_EXE_qflow")])
        .env("QFLOW_MAN_DIR", s.join("man"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = s.read("man/man1/qflow.1");
    assert_eq!(installed, s.qflow(&["man"]).success().stdout);
    let quickstart = include_str!("../scripts/quickstart.sh");
    assert!(quickstart.contains("install-host-deps.sh --man-page target/release/qflow"));
}

/// The screen a terminal of `width` columns shows after `bytes` (the subset of
/// VT100 indicatif writes: text with deferred autowrap, CR, LF, cursor up and
/// down, erase line and below; colours ignored).
fn screen_after(bytes: &[u8], width: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut rows: Vec<Vec<char>> = vec![Vec::new()];
    let (mut row, mut col, mut wrap) = (0usize, 0usize, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if rows.len() <= row {
            rows.resize(row + 1, Vec::new());
        }
        match c {
            '\r' => (col, wrap) = (0, false),
            '\n' => (row, wrap) = (row + 1, false),
            '\x1b' if chars.peek() == Some(&'[') => {
                chars.next();
                let mut arg = String::new();
                let mut end = ' ';
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        end = c;
                        break;
                    }
                    arg.push(c);
                }
                let n: usize = arg.parse().unwrap_or(1);
                // Colours keep a pending wrap; moves and erases end it.
                wrap &= !matches!(end, 'A' | 'B' | 'K' | 'J');
                match end {
                    'A' => row = row.saturating_sub(n),
                    'B' => row += n,
                    'K' if arg == "2" => rows[row].clear(),
                    'K' => rows[row].truncate(col),
                    'J' => {
                        rows[row].truncate(col);
                        rows.truncate(row + 1);
                    }
                    _ => {}
                }
            }
            c if c.is_control() => {}
            c => {
                if wrap {
                    (row, col, wrap) = (row + 1, 0, false);
                    if rows.len() <= row {
                        rows.resize(row + 1, Vec::new());
                    }
                }
                let line = &mut rows[row];
                if line.len() <= col {
                    line.resize(col + 1, ' ');
                }
                line[col] = c;
                if col + 1 == width {
                    wrap = true;
                } else {
                    col += 1;
                }
            }
        }
    }
    rows.into_iter()
        .map(|r| r.into_iter().collect::<String>().trim_end().to_string())
        .filter(|r| !r.is_empty())
        .collect()
}

#[test]
fn ctrl_c_on_a_terminal_leaves_no_progress_line_behind() {
    let s = Space::new();
    s.workflow(
        r#"
version: 1
steps:
  slow:
    kind: command
    run: [sh, -c, 'echo still-working; sleep 30; touch "$QFLOW_OUT/x"']
    outputs: [x]
"#,
    );
    // `script` gives qflow a real terminal (a pty, 80 columns); a Ctrl-C typed
    // on it reaches qflow as the terminal's SIGINT.
    let line = format!(
        "stty cols 80 rows 24; exec {} apply",
        env!("CARGO_BIN_EXE_qflow")
    );
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qfec", &line, "typescript"])
        .current_dir(s.path())
        .env_remove("NO_COLOR")
        .env("TERM", "xterm")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    let mut script = cmd.spawn().expect("script (util-linux) runs");
    // Wait until the bars are drawn with the step's output.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::fs::read(s.join("typescript"))
        .is_ok_and(|t| String::from_utf8_lossy(&t).contains("still-working"))
    {
        assert!(std::time::Instant::now() < deadline, "no bar was drawn");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    use std::io::Write as _;
    let mut stdin = script.stdin.take().unwrap();
    stdin.write_all(b"\x03").unwrap();
    stdin.flush().unwrap();
    let status = script.wait().unwrap();
    drop(stdin);
    assert_eq!(status.code(), Some(130), "qflow exits 130 on Ctrl-C");
    let raw = std::fs::read(s.join("typescript")).unwrap();
    let drawn = String::from_utf8_lossy(&raw);
    assert!(
        drawn.contains("still-working"),
        "the bar showed the step's output: {drawn:?}"
    );
    // What qflow wrote: between script's own first line and its closing line.
    let start = raw.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
    let end = drawn.rfind("Script done").unwrap_or(raw.len());
    let screen = screen_after(&raw[start..end], 80);
    assert!(
        screen
            .iter()
            .all(|l| !l.contains("still-working") && !l.contains("[0/1")),
        "a progress line is left on the terminal: {screen:#?}"
    );
    assert!(
        screen
            .iter()
            .any(|l| l.starts_with("qflow: interrupted slow")),
        "{screen:#?}"
    );
}
