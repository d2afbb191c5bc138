//! `qflow status` says what happened to each step: failed with its exit status
//! and when, running while a run is in progress, cleaned after `qflow clean`,
//! with local wall-clock times.

mod common;
use common::Space;

const TWO: &str = r#"
version: 1
steps:
  build:
    kind: command
    run: [sh, -c, 'test -e ok || exit 3; touch "$QFLOW_OUT/x"']
    outputs: [x]
  slow:
    kind: command
    run: [sh, -c, 'touch started; while [ ! -e go ]; do sleep 0.05; done; touch "$QFLOW_OUT/y"']
    outputs: [y]
"#;

fn state_of(status: &str, step: &str) -> String {
    status
        .lines()
        .find(|l| l.trim_end().ends_with(&format!(" {step}")))
        .map(|l| l.trim().trim_end_matches(step).trim().to_string())
        .unwrap_or_else(|| panic!("no line for `{step}`:\n{status}"))
}

fn is_clock(text: &str) -> bool {
    let b = text.as_bytes();
    text.len() == 5
        && b[2] == b':'
        && text[..2].parse::<u8>().is_ok()
        && text[3..].parse::<u8>().is_ok()
}

#[test]
fn status_says_a_step_failed_with_its_exit_status_and_the_local_time() {
    let s = Space::new();
    s.workflow(TWO).write("go", "");
    s.qflow(&["apply", "build"]).failure(1);
    let status = s.qflow(&["status"]).success().stdout;
    let state = state_of(&status, "build");
    let time = state
        .strip_prefix("failed (exit 3) at ")
        .unwrap_or_else(|| panic!("{status}"));
    assert!(is_clock(time), "{status}");
    assert!(!status.contains("interrupted"), "{status}");
    assert!(
        status.contains("last run: ") && status.contains("(run "),
        "{status}"
    );
    s.write("ok", "");
    s.qflow(&["apply", "build"]).success();
    assert_eq!(
        state_of(&s.qflow(&["status"]).success().stdout, "build"),
        "fresh"
    );
}

#[test]
fn status_says_running_while_a_run_is_in_progress_and_cleaned_after_clean() {
    let s = Space::new();
    s.workflow(TWO).write("ok", "");
    let mut first = s.command(&["apply", "slow"]).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !s.join("started").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The live run record is written at most every 250 ms.
    std::thread::sleep(std::time::Duration::from_millis(400));
    let live = s.qflow(&["status"]).success().stdout;
    assert_eq!(state_of(&live, "slow"), "running", "{live}");
    s.write("go", "");
    assert!(first.wait().unwrap().success());
    assert_eq!(
        state_of(&s.qflow(&["status"]).success().stdout, "slow"),
        "fresh"
    );
    s.qflow(&["clean", "--step", "slow"]).success();
    let after = s.qflow(&["status"]).success().stdout;
    let state = state_of(&after, "slow");
    let time = state
        .strip_prefix("cleaned at ")
        .unwrap_or_else(|| panic!("{after}"));
    assert!(is_clock(time), "{after}");
}

#[test]
fn status_json_gives_each_steps_state_with_the_exit_status_and_time_of_a_failure() {
    let s = Space::new();
    s.workflow(TWO).write("go", "");
    s.qflow(&["apply", "--keep-going"]).failure(1);
    let out = s.qflow(&["status", "--json"]).success().stdout;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["busy"], false);
    assert!(v["cache"].as_str().unwrap().ends_with(".qflow"), "{v}");
    assert!(v["last_run"]["id"].is_string(), "{v}");
    let step = |name: &str| {
        (v["steps"].as_array().unwrap().iter())
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no `{name}` in {v}"))
            .clone()
    };
    let build = step("build");
    assert_eq!(build["state"], "failed", "{v}");
    assert_eq!(build["exit"], "exit 3", "{v}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let at = build["at_unix"].as_u64().unwrap();
    assert!(at <= now && now - at < 120, "{v}");
    assert_eq!(step("slow")["state"], "fresh", "{v}");
}
