//! Steps as Slurm jobs, against a real single-node Slurm cluster that
//! `scripts/slurm-start.sh` starts (idempotently) from the first test that needs it.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::Space;
use qflow_engine::executor::StepJob;
use qflow_engine::slurm::preflight::{self, PreflightInput};
use qflow_engine::slurm::{
    ClusterSettings, JobOutcome, JobRequest, JobState, NodeReport, Queue, Resources, SlurmClient,
    StepDescription, batch_script, job_comment, job_name,
};

/// Start the cluster once per test binary; every test after that finds it up.
/// One Slurm test at a time: the node has 2 CPUs, and tests that queue jobs side by
/// side would wait on each other's allocations (a job that "did not start" in time).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn cluster() -> SlurmClient {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-start.sh");
        let out = std::process::Command::new(script)
            .output()
            .expect("cannot run scripts/slurm-start.sh");
        assert!(
            out.status.success(),
            "scripts/slurm-start.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    SlurmClient::find().expect("Slurm commands on PATH after slurm-start.sh")
}

fn qflow_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_qflow"))
}

/// A job request for `command` in `space`, named uniquely for this test.
fn request(space: &Space, test: &str, command: &[&str]) -> JobRequest {
    JobRequest {
        name: job_name(space.path(), Path::new(test)),
        comment: job_comment(test, &"0".repeat(64)),
        cpus: 1,
        resources: Resources::default(),
        cluster: ClusterSettings::default(),
        slurm_log: space.join(&format!("{test}.slurm.log")),
        work_dir: space.path().to_path_buf(),
        command: command.iter().map(Into::into).collect(),
    }
}

/// Poll `queue` (at most once a second) until job `id` reaches a final state.
fn wait_end(client: &SlurmClient, queue: &mut Queue, id: &str, limit: Duration) -> JobState {
    let t0 = Instant::now();
    loop {
        queue.refresh(client).unwrap();
        if let Some(j) = queue.job(id)
            && !j.state.is_active()
        {
            return j.state.clone();
        }
        assert!(
            t0.elapsed() < limit,
            "job {id} did not end within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A command step's description, staged in `space/staging`.
fn describe_command(space: &Space, run: &[&str], outputs: &[&str], jobs: usize) -> StepDescription {
    let out_dir = space.join("staging");
    std::fs::create_dir_all(&out_dir).unwrap();
    let fields = serde_json::json!({ "run": run, "outputs": outputs });
    StepDescription {
        version: qflow_engine::slurm::step_description::DESCRIPTION_VERSION,
        job: StepJob {
            shared_slots: None,
            step: "hello".into(),
            kind: "command".into(),
            fields: serde_yaml::to_value(&fields).unwrap(),
            key: qflow_cache::Hash([1; 32]),
            work_dir: space.path().to_path_buf(),
            out_dir: out_dir.clone(),
            state_dir: space.join("state"),
            upstream: BTreeMap::new(),
            env: BTreeMap::from([("GREETING".to_string(), "hello from the node".to_string())]),
            jobs,
            log: space.join("hello.log"),
            run_token: String::new(),
            mask: Default::default(),
        },
        report: StepDescription::report_path(&out_dir),
        host_env: qflow_engine::slurm::step_description::passed_env(std::env::vars()),
        tools: BTreeMap::new(),
    }
}

#[test]
#[ignore = "slow: real Slurm cluster"]
fn a_batch_job_runs_a_described_step_and_the_node_reports_with_its_allocation() {
    let _serial = serial();
    let client = cluster();
    let space = Space::new();
    let desc = describe_command(
        &space,
        &[
            "sh",
            "-c",
            "echo \"$GREETING $QFLOW_JOBS\" > \"$QFLOW_OUT/greeting\"; env > \"$QFLOW_OUT/env\"",
        ],
        &["greeting"],
        // More than the job gets: the allocation must win.
        2,
    );
    let desc_path = space.join("hello.json");
    desc.write(&desc_path).unwrap();
    let script = batch_script(&space.join("slurm")).unwrap();
    let qflow = qflow_bin();
    let req = request(
        &space,
        "batch",
        &[
            qflow.to_str().unwrap(),
            "__run-step",
            desc_path.to_str().unwrap(),
        ],
    );
    let id = client.submit_batch(&req, &script).unwrap();
    let mut queue = Queue::new(&req.name);
    let state = wait_end(&client, &mut queue, &id, Duration::from_secs(60));
    assert_eq!(state, JobState::Completed, "{}", space.read("hello.log"));
    assert_eq!(state.outcome(), JobOutcome::StepFinished);
    let report = NodeReport::read(&desc.report)
        .unwrap()
        .expect("a node report");
    assert!(report.ok, "{report:?}");
    assert_eq!(report.jobs, 1, "sized from SLURM_CPUS_PER_TASK, not nproc");
    assert_eq!(
        std::fs::read_to_string(desc.job.out_dir.join("greeting")).unwrap(),
        "hello from the node 1\n"
    );
    // --export=NONE: none of the submitter's other variables reached the step.
    let env = std::fs::read_to_string(desc.job.out_dir.join("env")).unwrap();
    assert!(!env.contains("CARGO_PKG_NAME="), "{env}");
    // One squeue call per refresh, whatever the number of jobs, never more than one a second.
    assert!(queue.calls() >= 1);
}

#[test]
#[ignore = "slow: real Slurm cluster"]
fn a_node_with_other_tool_versions_refuses_to_run_the_step() {
    let _serial = serial();
    let client = cluster();
    let space = Space::new();
    let mut desc = describe_command(&space, &["touch", "ran"], &[], 1);
    // The key was computed with a qemu-img this node does not have.
    desc.tools = BTreeMap::from([("qemu-img".to_string(), "qemu-img version 0.0.1".to_string())]);
    desc.job.fields = serde_yaml::to_value(serde_json::json!({ "run": ["touch", "ran"] })).unwrap();
    let desc_path = space.join("hello.json");
    desc.write(&desc_path).unwrap();
    let qflow = qflow_bin();
    let req = request(
        &space,
        "tools",
        &[
            qflow.to_str().unwrap(),
            "__run-step",
            desc_path.to_str().unwrap(),
        ],
    );
    let (ok, _) = client.run_job(&req, Duration::from_secs(60)).unwrap();
    assert!(!ok, "the job must fail");
    let report = NodeReport::read(&desc.report)
        .unwrap()
        .expect("a node report");
    let err = report.error.unwrap();
    assert!(err.contains("`qemu-img`") && err.contains("0.0.1"), "{err}");
    assert!(!space.join("ran").exists(), "the step must not run");
}

#[test]
#[ignore = "slow: real Slurm cluster"]
fn one_scancel_cancels_a_batch_of_running_jobs() {
    let _serial = serial();
    let client = cluster();
    let space = Space::new();
    let script = batch_script(&space.join("slurm")).unwrap();
    let req = request(&space, "cancel", &["/bin/sleep", "300"]);
    let ids: Vec<String> = (0..2)
        .map(|_| client.submit_batch(&req, &script).unwrap())
        .collect();
    let mut queue = Queue::new(&req.name);
    let t0 = Instant::now();
    loop {
        queue.refresh(&client).unwrap();
        if ids.iter().all(|id| {
            queue
                .job(id)
                .is_some_and(|j| j.state == JobState::Active("RUNNING".into()))
        }) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "jobs did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(queue.active().len(), 2);
    client.cancel(&ids).unwrap();
    for id in &ids {
        let state = wait_end(&client, &mut queue, id, Duration::from_secs(30));
        assert_eq!(state, JobState::Cancelled);
        assert_eq!(state.outcome(), JobOutcome::SlurmEnded { retry: false });
    }
    // Cancelling jobs that already ended is not an error.
    client.cancel(&ids).unwrap();
}

#[test]
#[ignore = "slow: real Slurm cluster"]
fn an_srun_job_ends_when_its_submitter_dies() {
    let _serial = serial();
    let client = cluster();
    let space = Space::new();
    let req = request(&space, "srun-dies", &["/bin/sleep", "300"]);
    let mut srun = client
        .spawn_srun(&req, &space.join("srun.messages"))
        .unwrap();
    let mut queue = Queue::new(&req.name);
    let t0 = Instant::now();
    let id = loop {
        queue.refresh(&client).unwrap();
        if let Some(j) = queue.by_comment(&req.comment, &[])
            && j.state == JobState::Active("RUNNING".into())
        {
            break j.id.clone();
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "job did not start");
        std::thread::sleep(Duration::from_millis(100));
    };
    // What a kill -9 of qflow does to its srun (PR_SET_PDEATHSIG).
    srun.kill().unwrap();
    srun.wait().unwrap();
    let state = wait_end(&client, &mut queue, &id, Duration::from_secs(30));
    assert_eq!(state, JobState::Cancelled);
}

#[test]
#[ignore = "slow: real Slurm cluster"]
fn preflight_refuses_what_the_cluster_can_never_run_and_passes_a_good_setup() {
    let _serial = serial();
    let _client = cluster();
    let space = Space::new();
    let script = batch_script(&space.join("slurm")).unwrap();
    let qflow = qflow_bin();
    let cluster_settings = ClusterSettings::default();
    let mut big = request(&space, "big", &["/bin/true"]);
    big.cpus = 64;
    let mut nowhere = request(&space, "nowhere", &["/bin/true"]);
    nowhere.resources.partition = Some("gpu-a100".into());
    let t0 = Instant::now();
    let problems = preflight::check(&PreflightInput {
        requests: &[("big".into(), big.clone())],
        cluster: &cluster_settings,
        cache_dir: space.path(),
        qflow: &qflow,
        script: &script,
        probe: false,
    });
    assert!(t0.elapsed() < Duration::from_secs(10), "refused at once");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("step `big`") && problems[0].contains("cpus: 64"),
        "{problems:?}"
    );
    assert!(
        problems[0].contains("not available"),
        "Slurm's reason: {problems:?}"
    );
    let problems = preflight::check(&PreflightInput {
        requests: &[("nowhere".into(), nowhere)],
        cluster: &cluster_settings,
        cache_dir: space.path(),
        qflow: &qflow,
        script: &script,
        probe: false,
    });
    assert!(
        problems.len() == 1 && problems[0].contains("no partition `gpu-a100`"),
        "{problems:?}"
    );
    assert!(
        problems[0].contains("`main`"),
        "names the known ones: {problems:?}"
    );
    let good = request(&space, "good", &["/bin/true"]);
    let problems = preflight::check(&PreflightInput {
        requests: &[("good".into(), good)],
        cluster: &cluster_settings,
        cache_dir: space.path(),
        qflow: &qflow,
        script: &script,
        probe: true,
    });
    assert!(problems.is_empty(), "{problems:?}");
    // The probe cleans up after itself.
    let left: Vec<_> = std::fs::read_dir(space.join("state/slurm"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
#[ignore = "slow: real Slurm cluster"]
fn preflight_names_a_qflow_the_nodes_cannot_run() {
    let _serial = serial();
    let _client = cluster();
    let space = Space::new();
    let script = batch_script(&space.join("slurm")).unwrap();
    let missing = space.join("not-here/qflow");
    let good = request(&space, "good", &["/bin/true"]);
    let problems = preflight::check(&PreflightInput {
        requests: &[("good".into(), good)],
        cluster: &ClusterSettings::default(),
        cache_dir: space.path(),
        qflow: &missing,
        script: &script,
        probe: true,
    });
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("cannot run") && problems[0].contains("not-here/qflow"),
        "{problems:?}"
    );
}

// ---- `qflow apply --executor slurm`, end to end -------------------------------------------

const MIXED: &str = r#"version: 1
name: onslurm
steps:
  greet:
    kind: command
    run: [sh, -c, 'echo "hello $QFLOW_JOBS" > "$QFLOW_OUT/greeting"']
    outputs: [greeting]
    resources: { time: 10m }
  shout:
    kind: command
    run: [sh, -c, 'tr a-z A-Z < "$0/greeting" > "$QFLOW_OUT/shout"', '${{ steps.greet }}']
    outputs: [shout]
  data:
    kind: disk
    size: 16M
    contents: ./workload
"#;

/// step name → (key, output) from a space's `qflow.lock`.
fn locked(space: &Space) -> BTreeMap<String, (String, String)> {
    let lock: serde_json::Value =
        serde_json::from_str(&space.read("qflow.lock")).expect("qflow.lock parses");
    lock["steps"]
        .as_object()
        .expect("steps in the lock")
        .iter()
        .map(|(name, e)| {
            (
                name.clone(),
                (
                    e["key"].as_str().unwrap_or_default().to_string(),
                    e["output"].as_str().unwrap_or_default().to_string(),
                ),
            )
        })
        .collect()
}

/// Jobs of this user still queued or running.
fn queued() -> String {
    let out = std::process::Command::new("squeue")
        .args(["-h", "-o", "%i %j %T"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn queued_named(name: &str) -> Vec<String> {
    queued()
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(name))
        .map(str::to_string)
        .collect()
}

fn job_name_of(space: &Space) -> String {
    job_name(&space.join(".qflow"), &space.join("workflow.yaml"))
}

#[test]
#[ignore = "slow: real Slurm cluster"]
fn steps_run_on_slurm_give_the_keys_and_bytes_of_a_local_apply_and_a_local_apply_then_runs_nothing()
{
    let _serial = serial();
    let _client = cluster();
    let local = Space::new();
    local.workflow(MIXED).write("workload/hello.txt", "hello\n");
    local.apply();
    let remote = Space::new();
    remote
        .workflow(MIXED)
        .write("workload/hello.txt", "hello\n");
    let run = remote.qflow(&["apply", "--executor", "slurm"]).success();
    assert_eq!(
        run.ran_sorted(),
        ["data", "greet", "shout"],
        "{}",
        run.stderr
    );
    // A step's key does not depend on where it ran, nor do its bytes.
    assert_eq!(locked(&local), locked(&remote));
    for f in ["out/greet/greeting", "out/shout/shout"] {
        assert_eq!(local.read(f), remote.read(f), "{f}");
    }
    assert_eq!(remote.read("out/greet/greeting"), "hello 1\n");
    assert_eq!(
        std::fs::read(local.join("out/data/image.qcow2")).unwrap(),
        std::fs::read(remote.join("out/data/image.qcow2")).unwrap()
    );
    // The cluster's results are cache hits here.
    let again = remote.qflow(&["apply"]).success();
    assert!(again.ran().is_empty(), "{}", again.stderr);
    assert_eq!(again.cached().len(), 3);
    assert!(
        queued_named(&job_name_of(&remote)).is_empty(),
        "{}",
        queued()
    );
    // `qflow plan` says where each step would run and with what.
    std::fs::write(remote.join("workload/hello.txt"), "changed\n").unwrap();
    let plan = remote.qflow(&["plan", "--executor", "slurm"]).success();
    assert!(
        plan.stdout.contains("on slurm (cpus: 1)"),
        "{}",
        plan.stdout
    );
}

#[test]
#[ignore = "slow: real Slurm cluster"]
fn a_request_larger_than_any_node_is_refused_before_anything_is_submitted() {
    let _serial = serial();
    let _client = cluster();
    let s = Space::new();
    s.workflow(
        "version: 1\nsteps:\n  big:\n    kind: command\n    run: [touch, ran]\n    resources: { cpus: 64 }\n",
    );
    let t0 = Instant::now();
    let run = s.qflow(&["apply", "--executor", "slurm"]).failure(2);
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(run.stderr.contains("step `big`"), "{}", run.stderr);
    assert!(run.stderr.contains("cpus: 64"), "{}", run.stderr);
    assert!(!s.join("ran").exists());
    assert!(queued_named(&job_name_of(&s)).is_empty(), "{}", queued());
    let doctor = s
        .qflow(&["doctor", "--no-kvm-probe", "--executor", "slurm"])
        .failure(2);
    assert!(doctor.stdout.contains("cpus: 64"), "{}", doctor.stdout);
}

#[test]
#[ignore = "slow: real Slurm cluster"]
fn ctrl_c_cancels_every_slurm_job_at_once_records_nothing_and_the_next_apply_finishes() {
    let _serial = serial();
    let _client = cluster();
    let s = Space::new();
    s.workflow(
        r#"version: 1
steps:
  one:
    kind: command
    run: [sh, -c, 'sleep 2; echo one > "$QFLOW_OUT/one"']
    outputs: [one]
  two:
    kind: command
    run: [sh, -c, 'sleep 2; echo two > "$QFLOW_OUT/two"']
    outputs: [two]
"#,
    );
    let first = s
        .command(&["apply", "--executor", "slurm"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let name = job_name_of(&s);
    let t0 = Instant::now();
    while queued_named(&name)
        .iter()
        .filter(|l| l.ends_with("RUNNING"))
        .count()
        < 2
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "jobs did not start: {}",
            queued()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(first.id() as i32, libc::SIGINT) };
    let t1 = Instant::now();
    let out = first.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let mut left = queued_named(&name);
    while left.iter().any(|l| !l.ends_with("CANCELLED")) && t1.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(50));
        left = queued_named(&name);
    }
    assert!(
        t1.elapsed() < Duration::from_secs(2),
        "still there: {left:?}"
    );
    assert!(stderr.contains("cancelled Slurm jobs"), "{stderr}");
    assert!(!s.join("out/one").exists() && !s.join("out/two").exists());
    let next = s.qflow(&["apply", "--executor", "slurm"]).success();
    assert_eq!(next.ran_sorted(), ["one", "two"], "{}", next.stderr);
}

#[test]
#[ignore = "slow: real Slurm cluster; Slurm checks time limits about every 30 s"]
fn a_step_over_its_time_limit_fails_naming_timeout_and_the_job() {
    let _serial = serial();
    let _client = cluster();
    let s = Space::new();
    s.workflow(
        "version: 1\nsteps:\n  slow:\n    kind: command\n    run: [sleep, '600']\n    resources: { time: 1m }\n",
    );
    let run = s.qflow(&["apply", "--executor", "slurm"]).failure(1);
    assert!(run.stderr.contains("ended TIMEOUT"), "{}", run.stderr);
    assert!(run.stderr.contains("Slurm job "), "{}", run.stderr);
    assert!(run.stderr.contains("resources.time"), "{}", run.stderr);
    assert!(!s.join("out/slow").exists());
}

#[test]
#[ignore = "slow: real Slurm cluster"]
fn a_node_whose_qemu_img_reports_another_version_is_refused() {
    let _serial = serial();
    let _client = cluster();
    let s = Space::new();
    s.workflow("version: 1\nsteps:\n  base:\n    kind: image\n    size: 16M\n");
    // On the node (inside a Slurm job) this qemu-img claims another version.
    let real = qflow_engine::tool_identity::which("qemu-img").expect("qemu-img installed");
    s.write(
        "wrap/qemu-img",
        format!(
            "#!/bin/sh\nif [ -n \"$SLURM_JOB_ID\" ] && [ \"$1\" = --version ]; then echo 'qemu-img version 99.0.0'; exit 0; fi\nexec {} \"$@\"\n",
            real.display()
        ),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        s.join("wrap/qemu-img"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        s.join("wrap").display(),
        std::env::var("PATH").unwrap()
    );
    let out = s
        .command(&["apply", "--executor", "slurm"])
        .env("PATH", &path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("`qemu-img`"), "{stderr}");
    assert!(
        stderr.contains("99.0.0"),
        "names the node's version: {stderr}"
    );
    assert!(!s.join("out/base").exists(), "nothing recorded");
}
