//! A demanding user's trials: kill -9 and signals at awkward moments, a damaged
//! cache, a hand-edited lock, inputs that are not files, secrets in fields and
//! URLs. qflow never serves a wrong result, leaves no process behind and never
//! writes a secret in plain text.

mod common;
use common::Space;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn processes_with(needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let zombie = std::fs::read_to_string(entry.path().join("stat"))
                .is_ok_and(|s| s.contains(") Z "));
            if cmd.contains(needle) && !zombie {
                found.push(pid);
            }
        }
    }
    found
}

fn kill_all(pids: &[i32]) {
    for pid in pids {
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
}

fn wait_for(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(Instant::now() < deadline, "timed out waiting for {path:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// The state directory of `step` in the space's default cache.
fn state_dir(s: &Space, step: &str) -> std::path::PathBuf {
    let root = s.join(".qflow/state");
    for wf in std::fs::read_dir(&root).unwrap().flatten() {
        let p = wf.path().join(step);
        if p.is_dir() {
            return p;
        }
    }
    panic!("no state directory for {step} under {root:?}");
}

// ---------------------------------------------------------------- processes

#[test]
fn ctrl_c_with_a_setsid_child_holding_stdout_exits_130_within_a_second_and_leaves_nothing() {
    let s = Space::new();
    let tag = "41.2718";
    s.workflow(&format!(
        r#"
version: 1
steps:
  hold:
    kind: command
    run: [sh, -c, 'setsid sleep {tag} & touch started; wait']
    outputs: [never]
"#
    ));
    let child = s
        .command(&["apply"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&s.join("started"));
    std::thread::sleep(Duration::from_millis(100));
    assert!(!processes_with(&format!("sleep {tag}")).is_empty());
    let sent = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let took = sent.elapsed();
    let left = processes_with(&format!("sleep {tag}"));
    kill_all(&left);
    assert_eq!(out.status.code(), Some(130));
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert!(
        left.is_empty(),
        "the setsid child outlived Ctrl-C: {left:?}"
    );
}

#[test]
fn kill_9_of_qflow_then_apply_stops_a_setsid_grandchild_started_with_env_i() {
    if !is_root() {
        eprintln!(
            "needs root for a cgroup: the session and token cannot follow `env -i` after `setsid`"
        );
        return;
    }
    let s = Space::new();
    let tag = "43.1415";
    s.workflow(&format!(
        r#"
version: 1
steps:
  escape:
    kind: command
    run: [sh, -c, 'setsid env -i sleep {tag} >/dev/null 2>&1 & touch started; sleep 300']
    outputs: [never]
"#
    ));
    let mut child = s.command(&["apply"]).stderr(Stdio::null()).spawn().unwrap();
    wait_for(&s.join("started"));
    std::thread::sleep(Duration::from_millis(100));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!processes_with(&format!("sleep {tag}")).is_empty());
    s.write(
        "workflow.yaml",
        s.read("workflow.yaml")
            .replace("sleep 300", "touch \"$QFLOW_OUT/never\""),
    );
    let run = s.apply();
    std::thread::sleep(Duration::from_millis(100));
    let left = processes_with(&format!("sleep {tag}"));
    kill_all(&left);
    assert!(left.is_empty(), "left behind: {left:?}\n{}", run.stderr);
    assert!(run.stderr.contains("stopped"), "{}", run.stderr);
}

/// The half-written target, the `started` mark and the long wait are one recipe line,
/// so `make` has a child running whenever the test signals it: make deletes the target
/// of a recipe it is running, not one it is between lines of.
const MAKEFILE: &str =
    "target:\n\techo half > $@; touch $(STARTED); sleep 30\n\techo whole >> $@\n";

fn make_workflow(s: &Space) {
    s.write("Makefile", MAKEFILE);
    s.workflow(
        r#"
version: 1
steps:
  build:
    kind: command
    run: [sh, -c, 'cp Makefile "$QFLOW_STATE/" && make -s -C "$QFLOW_STATE" STARTED="$PWD/started" && cp "$QFLOW_STATE/target" "$QFLOW_OUT/"']
    inputs: [Makefile]
    outputs: [target]
"#,
    );
}

/// Every step log of the space's cache, for a failure's message.
fn step_logs(s: &Space) -> String {
    let mut text = String::new();
    for run in std::fs::read_dir(s.join(".qflow/logs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for log in std::fs::read_dir(run.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            text.push_str(&format!("{}:\n", log.path().display()));
            text.push_str(&std::fs::read_to_string(log.path()).unwrap_or_default());
        }
    }
    text
}

/// Apply in `s`, press Ctrl-C once its step has touched `started`, and wait:
/// qflow exits 130. What it printed.
fn ctrl_c_once_started(s: &Space) -> std::process::Output {
    let child = s
        .command(&["apply"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&s.join("started"));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    out
}

#[test]
fn ctrl_c_gives_make_time_to_delete_its_half_written_target() {
    let s = Space::new();
    make_workflow(&s);
    let out = ctrl_c_once_started(&s);
    let state = state_dir(&s, "build");
    assert!(
        !state.join("target").exists(),
        "make did not get SIGTERM before SIGKILL: its half-written target stayed; qflow said:\n{}\nthe step's log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        step_logs(&s)
    );
    assert!(
        !qflow_engine::state_dir::StateDir::is_marked(&state),
        "a clean stop keeps the state directory for the next run"
    );
}

/// The shell a step runs dies of SIGTERM at once; a program it started (make, here a
/// shell with a trap) cleans up for a while and writes to its output meanwhile
/// (dash says "Terminated", make which target it deletes). Killing the group as soon
/// as the step's own program ended, or closing the pipe it writes to (SIGPIPE), cut
/// that clean-up short (the make test above lost that race now and then); the
/// clean-up gets the whole grace period.
#[test]
fn ctrl_c_lets_a_program_clean_up_after_the_steps_own_shell_has_died() {
    let s = Space::new();
    s.workflow(
        r#"
version: 1
steps:
  build:
    kind: command
    run: [sh, -c, 'sh -c "trap \"sleep 0.4; touch cleaned; exit 0\" TERM; touch started; while :; do sleep 0.05; done" & wait']
    outputs: [never]
"#,
    );
    let out = ctrl_c_once_started(&s);
    assert!(
        s.join("cleaned").exists(),
        "the program's clean-up was killed before its grace period ended; qflow said:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_state_directory_left_by_kill_9_is_emptied_so_a_half_written_file_is_never_recorded() {
    let s = Space::new();
    make_workflow(&s);
    let mut child = s.command(&["apply"]).stderr(Stdio::null()).spawn().unwrap();
    wait_for(&s.join("started"));
    child.kill().unwrap();
    child.wait().unwrap();
    let state = state_dir(&s, "build");
    assert_eq!(
        std::fs::read_to_string(state.join("target")).unwrap(),
        "half\n"
    );
    s.write("Makefile", MAKEFILE.replace("sleep 30", "true"));
    let run = s.apply();
    assert!(
        run.stderr
            .contains("the state directory of `build` was left by a killed run"),
        "{}",
        run.stderr
    );
    assert_eq!(s.read("out/build/target"), "half\nwhole\n");
}

#[test]
fn sigterm_while_waiting_for_the_workspace_lock_exits_130() {
    let s = Space::new();
    s.workflow(
        r#"
version: 1
steps:
  slow:
    kind: command
    run: [sh, -c, 'touch started; sleep 3; touch "$QFLOW_OUT/x"']
    outputs: [x]
"#,
    );
    let first = s.command(&["apply"]).stderr(Stdio::null()).spawn().unwrap();
    wait_for(&s.join("started"));
    let second = s
        .command(&["apply"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(second.id() as i32, libc::SIGTERM) };
    let out = second.wait_with_output().unwrap();
    let mut first = first;
    first.wait().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("waiting for another qflow run"));
}

#[test]
fn status_doctor_and_completions_piped_into_head_and_a_full_stderr_exit_quietly() {
    let s = Space::new();
    s.workflow("version: 1\nsteps:\n  a: {kind: command, run: [\"true\"]}\n");
    for args in [&["status"][..], &["doctor"], &["completions", "bash"]] {
        let mut cmd = s.command(args);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader went away, as `| head -0` does
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_ne!(out.status.code(), Some(101), "{args:?}: {err}");
    }
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = s.command(&["status"]).stderr(full).output().unwrap();
    assert_ne!(out.status.code(), Some(101));
}

// ---------------------------------------------------------------- secrets

#[test]
fn an_env_value_in_a_field_appears_nowhere_in_lock_log_plan_or_bundle() {
    let s = Space::new();
    let secret = "hunter2-9f8e7d";
    s.workflow(
        r#"
version: 1
steps:
  login:
    kind: command
    run: [sh, -c, 'v="${{ env.QFLOW_TEST_TOKEN }}"; echo "token is $v"; [ ${#v} -eq 14 ] && echo ok > "$QFLOW_OUT/ok"']
    outputs: [ok]
"#,
    );
    let run = |args: &[&str]| {
        let out = s
            .command(args)
            .env("QFLOW_TEST_TOKEN", secret)
            .output()
            .unwrap();
        common::Run::from(out)
    };
    let plan = run(&["plan"]).success();
    assert!(!plan.stdout.contains(secret), "{}", plan.stdout);
    assert!(
        plan.stdout.contains("${{ env.QFLOW_TEST_TOKEN }}"),
        "{}",
        plan.stdout
    );
    let applied = run(&["apply"]).success();
    assert!(!applied.stderr.contains(secret));
    assert_eq!(
        s.read("out/login/ok"),
        "ok\n",
        "the step got the real value"
    );
    let lock = s.read("qflow.lock");
    assert!(!lock.contains(secret), "{lock}");
    assert!(lock.contains("${{ env.QFLOW_TEST_TOKEN }}"));
    let logs = walk(&s.join(".qflow/logs"));
    assert!(!logs.is_empty());
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!text.contains(secret), "{log:?}: {text}");
    }
    run(&["bundle", "-o", "b.tar.gz"]).success();
    let tar = std::process::Command::new("tar")
        .args(["-xOzf", "b.tar.gz"])
        .current_dir(s.path())
        .output()
        .unwrap();
    assert!(tar.status.success());
    assert!(!String::from_utf8_lossy(&tar.stdout).contains(secret));
}

#[test]
fn credentials_in_a_url_are_masked_in_lock_log_and_plan() {
    let s = Space::new();
    s.workflow(
        r#"
version: 1
steps:
  fetch:
    kind: command
    run: [sh, -c, 'echo "$0" > "$QFLOW_OUT/url"', 'https://alice:pw-77x@example.org/i.img?x=1&access_token=tok-55y']
    outputs: [url]
"#,
    );
    let plan = s.qflow(&["plan"]).success();
    s.apply();
    let mut shown = vec![plan.stdout, s.read("qflow.lock")];
    for log in walk(&s.join(".qflow/logs")) {
        shown.push(std::fs::read_to_string(log).unwrap());
    }
    for text in &shown {
        assert!(
            !text.contains("pw-77x") && !text.contains("tok-55y"),
            "{text}"
        );
    }
    assert!(shown[1].contains("https://example.org/i.img?x=1&access_token=***"));
    assert_eq!(
        s.read("out/fetch/url"),
        "https://alice:pw-77x@example.org/i.img?x=1&access_token=tok-55y\n",
        "the step itself gets the real URL"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            files.extend(walk(&e.path()));
        } else {
            files.push(e.path());
        }
    }
    files
}

// ---------------------------------------------------------------- inputs

#[test]
fn a_fifo_or_a_device_as_input_is_refused_before_anything_runs() {
    for input in ["pipe", "/dev/zero"] {
        let s = Space::new();
        let path = std::ffi::CString::new(s.join("pipe").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o644) }, 0);
        s.workflow(&format!(
            "version: 1\nsteps:\n  first:\n    kind: command\n    run: [touch, ran]\n  a:\n    kind: command\n    run: [\"true\"]\n    inputs: [{input}]\n"
        ));
        for cmd in ["plan", "apply"] {
            let started = Instant::now();
            let run = s.qflow(&[cmd]).failure(2);
            assert!(started.elapsed() < Duration::from_secs(10));
            assert!(
                run.stderr.contains("is not a regular file or directory"),
                "{}",
                run.stderr
            );
            assert!(run.stderr.contains(input), "{}", run.stderr);
        }
        assert!(!s.join("ran").exists(), "a step ran");
    }
}

#[test]
fn a_300_character_step_name_is_refused_at_load_naming_the_maximum() {
    let s = Space::new();
    let name = "n".repeat(300);
    s.workflow(&format!(
        "version: 1\nsteps:\n  first:\n    kind: command\n    run: [touch, ran]\n  {name}:\n    kind: command\n    run: [\"true\"]\n"
    ));
    let run = s.qflow(&["apply"]).failure(2);
    assert!(
        run.stderr.contains("maximum is 200 bytes"),
        "{}",
        run.stderr
    );
    assert!(!s.join("ran").exists(), "a step ran");
}

// ---------------------------------------------------------------- the cache

fn two_steps(s: &Space) {
    s.workflow(
        r#"
version: 1
steps:
  a:
    kind: command
    run: [sh, -c, 'echo apple > "$QFLOW_OUT/a.txt"; mkdir "$QFLOW_OUT/d"; echo x > "$QFLOW_OUT/d/x"']
    outputs: [a.txt, d]
  b:
    kind: command
    run: [sh, -c, 'cat ${{ steps.a }}/a.txt > "$QFLOW_OUT/b.txt"; echo banana >> "$QFLOW_OUT/b.txt"']
    outputs: [b.txt]
"#,
    );
}

/// Every file under `out/` with its bytes, through the links.
fn out_bytes(s: &Space) -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<(String, Vec<u8>)> = walk(&s.join("out"))
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(s.join("out")).unwrap().display().to_string();
            (rel, std::fs::read(&p).unwrap())
        })
        .collect();
    all.sort();
    all
}

fn clean_run_out() -> Vec<(String, Vec<u8>)> {
    let clean = Space::new();
    two_steps(&clean);
    clean.apply();
    out_bytes(&clean)
}

fn writable(path: &std::path::Path) -> std::fs::File {
    let mut perms = std::fs::metadata(path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    let _ = std::fs::set_permissions(path, perms);
    std::fs::OpenOptions::new()
        .write(true)
        .mode(0o644)
        .open(path)
        .unwrap()
}

#[test]
fn a_downstream_step_appending_to_an_upstream_output_fails_and_the_next_apply_repairs_out() {
    let s = Space::new();
    two_steps(&s);
    s.apply();
    s.write(
        "workflow.yaml",
        s.read("workflow.yaml")
            .replace("echo banana", "echo x >> ${{ steps.a }}/a.txt; echo banana"),
    );
    let run = s.qflow(&["apply"]).failure(1);
    assert!(run.failed().contains(&"b".to_string()), "{}", run.stderr);
    assert!(
        run.stderr.contains("`a`"),
        "names the upstream: {}",
        run.stderr
    );
    s.write(
        "workflow.yaml",
        s.read("workflow.yaml")
            .replace("echo x >> ${{ steps.a }}/a.txt; ", ""),
    );
    let run = s.apply();
    assert!(run.ran().contains(&"a".to_string()), "{}", run.stderr);
    assert_eq!(s.read("out/a/a.txt"), "apple\n");
    assert_eq!(out_bytes(&s), clean_run_out());
}

#[test]
fn a_truncated_object_is_noticed_and_its_step_runs_again() {
    let s = Space::new();
    two_steps(&s);
    s.apply();
    writable(&s.join("out/a/a.txt")).set_len(2).unwrap();
    let run = s.apply();
    assert!(
        run.stderr.contains("warning: a cached output changed"),
        "{}",
        run.stderr
    );
    assert!(run.ran().contains(&"a".to_string()), "{}", run.stderr);
    assert_eq!(out_bytes(&s), clean_run_out());
}

/// The objects are intact: the tree is rebuilt from them (a step whose object was
/// damaged runs again, as above). Either way `out/` is what a clean run gives.
#[test]
fn a_file_deleted_from_or_added_to_a_cached_tree_is_noticed_and_the_tree_rebuilt() {
    for damage in ["delete", "add"] {
        let s = Space::new();
        two_steps(&s);
        s.apply();
        let tree = std::fs::canonicalize(s.join("out/a")).unwrap();
        let _ = std::process::Command::new("chmod")
            .args(["-R", "u+w"])
            .arg(&tree)
            .status();
        if damage == "delete" {
            std::fs::remove_file(tree.join("d/x")).unwrap();
        } else {
            std::fs::File::create(tree.join("d/extra"))
                .unwrap()
                .write_all(b"intruder")
                .unwrap();
        }
        let run = s.apply();
        assert!(
            run.stderr.contains("warning: a cached output changed"),
            "{damage}: {}",
            run.stderr
        );
        assert_eq!(out_bytes(&s), clean_run_out(), "{damage}");
        let again = s.apply();
        assert!(again.ran().is_empty(), "{damage}: {}", again.stderr);
    }
}

#[test]
fn swapping_two_steps_outputs_in_the_lock_never_links_one_step_to_the_others_tree() {
    let s = Space::new();
    two_steps(&s);
    s.apply();
    let mut lock: serde_json::Value = serde_json::from_str(&s.read("qflow.lock")).unwrap();
    let a = lock["steps"]["a"]["output"].clone();
    let b = lock["steps"]["b"]["output"].clone();
    lock["steps"]["a"]["output"] = b;
    lock["steps"]["b"]["output"] = a;
    s.write("qflow.lock", serde_json::to_string_pretty(&lock).unwrap());
    s.apply();
    assert_eq!(s.read("out/a/a.txt"), "apple\n");
    assert_eq!(s.read("out/b/b.txt"), "apple\nbanana\n");
}

#[test]
fn an_input_edited_a_b_a_while_its_step_runs_is_not_recorded() {
    let s = Space::new();
    s.write("in.txt", "A\n");
    s.workflow(
        r#"
version: 1
steps:
  copy:
    kind: command
    run: [sh, -c, 'touch started; while [ ! -e go ]; do sleep 0.02; done; cat in.txt > "$QFLOW_OUT/out.txt"']
    inputs: [in.txt]
    outputs: [out.txt]
"#,
    );
    let child = s
        .command(&["apply"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&s.join("started"));
    s.write("in.txt", "B\n");
    s.write("go", "");
    std::thread::sleep(Duration::from_millis(300));
    s.write("in.txt", "A\n");
    let out = child.wait_with_output().unwrap();
    assert_ne!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(s.join("go")).unwrap();
    std::fs::remove_file(s.join("started")).unwrap();
    s.write("go", "");
    let run = s.apply();
    assert_eq!(
        run.ran(),
        ["copy"],
        "the B result was recorded: {}",
        run.stderr
    );
    assert_eq!(s.read("out/copy/out.txt"), "A\n");
}

#[test]
fn output_symlinks_leaving_the_output_dir_or_dangling_are_refused_naming_step_and_link() {
    for (target, why) in [("/etc/hostname", "outside"), ("missing", "dangl")] {
        let s = Space::new();
        s.workflow(&format!(
            "version: 1\nsteps:\n  linker:\n    kind: command\n    run: [ln, -s, {target}, out-link]\n    outputs: []\n"
        ));
        s.write(
            "workflow.yaml",
            format!(
                "version: 1\nsteps:\n  linker:\n    kind: command\n    run: [sh, -c, 'ln -s {target} \"$QFLOW_OUT/link\"']\n    outputs: [link]\n"
            ),
        );
        let run = s.qflow(&["apply"]).failure(1);
        assert!(run.stderr.contains("linker"), "{}", run.stderr);
        assert!(run.stderr.contains("link"), "{}", run.stderr);
        assert!(run.stderr.contains(why), "{target}: {}", run.stderr);
        assert!(!s.join("out/linker").exists());
    }
}
