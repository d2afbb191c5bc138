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
    // A job an earlier test left behind (it failed before cleaning up) must not hold
    // the node's two CPUs and starve this one: every test starts with an empty queue.
    let _ = std::process::Command::new("scancel")
        .args(["--user", "root"])
        .status();
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
            spare_dirs: None,
            upstream: Default::default(),
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
//
// The workflows boot the host's kernel with a busybox initramfs (seconds under TCG, no
// distribution image) and build the stand-in kernel tree of `fixtures/kernel` (real `make`
// and `gcc -c`, a kbuild-like Makefile): what these tests check is where steps run, their
// keys, bytes, cancellation and adoption, none of which needs a real kernel tree's
// minutes of compiling. The initramfs is built once per test binary, outside any
// workflow (its cpio archive carries the build's timestamps), so that every space
// boots the same bytes.

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// The busybox initramfs of `fixtures/boot/make-initramfs.sh`, built once per test
/// binary into one place of the target directory (replaced by the next run's).
fn initramfs() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("slurm-initramfs");
        let fresh = dir.join(format!("build-{}", std::process::id()));
        std::fs::create_dir_all(&fresh).unwrap();
        let out = std::process::Command::new("sh")
            .arg(format!("{FIXTURES}/boot/make-initramfs.sh"))
            .env("QFLOW_OUT", &fresh)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "make-initramfs.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let image = dir.join("initrd.img");
        std::fs::rename(fresh.join("initrd.img"), &image).unwrap();
        let _ = std::fs::remove_dir(&fresh);
        image
    })
}

/// A space holding the stand-in kernel tree at `linux/`, with `extra` more source
/// files in it (each compile takes a fifth of a second or more).
fn kernel_space(extra: usize) -> Space {
    let s = Space::new();
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{FIXTURES}/kernel"))
        .arg(s.join("linux"))
        .status()
        .unwrap();
    assert!(st.success());
    for i in 0..extra {
        s.write(
            &format!("linux/lib/extra{i}.c"),
            format!("int extra{i}(void) {{ return {i}; }}\n"),
        );
    }
    s
}

/// Command, kernel, disk and boot steps: a checkpoint of a booted guest, and a
/// matrix of four runs restoring it.
fn full_workflow() -> String {
    format!(
        r#"version: 1
name: onslurm
steps:
  greet:
    kind: command
    run: [sh, -c, 'echo "hello $QFLOW_JOBS" > "$QFLOW_OUT/greeting"']
    outputs: [greeting]
    resources: {{ time: 10m }}
  kernel:
    kind: kernel
    source: ./linux
    config: tinyconfig
  kcheck:
    kind: command
    run: [sh, -c, 'cksum < "$0/bzImage" > "$QFLOW_OUT/cksum"', '${{{{ steps.kernel }}}}']
    outputs: [cksum]
  data:
    kind: disk
    size: 16M
  ready:
    kind: boot
    kernel: {kernel}
    initrd: {initrd}
    disks: [data]
    append: console=ttyS0 quiet panic=-1
    memory: 256M
    accel: tcg
    checkpoint: true
    commands: [echo booted]
    timeout: 3m
  runs:
    kind: boot
    from_checkpoint: ready
    matrix: {{ n: [1, 2, 3, 4] }}
    commands: ['echo "run {{{{ matrix.n }}}} of $n" > /tmp/out.txt']
    collect: [/tmp/out.txt]
    timeout: 3m
"#,
        kernel = common::host_kernel(),
        initrd = initramfs().display(),
    )
}

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

/// step name → (output file → content hash) from a space's `qflow.lock`.
fn locked_outputs(space: &Space) -> BTreeMap<String, BTreeMap<String, String>> {
    let lock: serde_json::Value =
        serde_json::from_str(&space.read("qflow.lock")).expect("qflow.lock parses");
    lock["steps"]
        .as_object()
        .expect("steps in the lock")
        .iter()
        .map(|(name, e)| {
            let outputs = e["outputs"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(f, h)| (f.clone(), h.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            (name.clone(), outputs)
        })
        .collect()
}

#[test]
#[ignore = "slow: real Slurm cluster, TCG boots of the host kernel (about a minute)"]
fn steps_run_on_slurm_give_the_keys_and_bytes_of_a_local_apply_and_a_local_apply_then_runs_nothing()
{
    let _serial = serial();
    let _client = cluster();
    let s = kernel_space(0);
    s.workflow(&full_workflow());
    let run = s.qflow(&["apply", "--executor", "slurm"]).success();
    assert_eq!(
        run.ran_sorted(),
        ["data", "greet", "kcheck", "kernel", "ready", "runs"],
        "{}",
        run.stderr
    );
    let on_slurm = locked(&s);
    let bytes_on_slurm = locked_outputs(&s);
    // Each run of the matrix was a Slurm job of its own, restoring the checkpoint.
    let logs = std::fs::read_dir(s.join(".qflow/logs"))
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .map(|f| f.file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    for i in 0..4 {
        assert!(
            logs.contains(&format!("runs.part{i}.slurm.log")),
            "no job of its own for run {i}: {logs:?}"
        );
    }
    for n in 1..=4 {
        assert_eq!(
            s.read(&format!("out/runs/n={n}/out.txt")),
            format!("run {n} of {n}\n")
        );
    }
    let runs_log = s.read(&format!(
        ".qflow/logs/{}/runs.log",
        std::fs::read_dir(s.join(".qflow/logs"))
            .unwrap()
            .flatten()
            .next()
            .unwrap()
            .file_name()
            .to_string_lossy()
    ));
    assert!(
        runs_log.contains("[n=3] qflow: restoring checkpoint `ready`"),
        "the step's log gathers each run's: {runs_log}"
    );
    // The cluster's results are cache hits for a local apply on the same cache.
    let again = s.qflow(&["apply"]).success();
    assert!(again.ran().is_empty(), "{}", again.stderr);
    assert_eq!(again.cached().len(), 6, "{}", again.stderr);
    assert!(queued_named(&job_name_of(&s)).is_empty(), "{}", queued());
    // The same steps run here: the same keys, and the same bytes. (The checkpoint is
    // kept: a memory snapshot differs from boot to boot, and the runs' keys hold its
    // hash, so two caches could not share the runs' keys.)
    let here = s
        .qflow(&[
            "apply", "--force", "greet", "--force", "kernel", "--force", "kcheck", "--force",
            "data", "--force", "runs",
        ])
        .success();
    assert_eq!(
        here.ran_sorted(),
        ["data", "greet", "kcheck", "kernel", "runs"],
        "{}",
        here.stderr
    );
    let keys = |l: BTreeMap<String, (String, String)>| -> BTreeMap<String, String> {
        l.into_iter().map(|(k, (key, _))| (k, key)).collect()
    };
    assert_eq!(keys(locked(&s)), keys(on_slurm), "keys of a local apply");
    // Every output but machine state: a console without `icount` runs on the host's
    // timing (the boot kind says so: its role is machine state), wherever it ran.
    let here_bytes = locked_outputs(&s);
    let mut compared = 0;
    let mut differ = Vec::new();
    for (step, files) in &bytes_on_slurm {
        assert_eq!(
            here_bytes[step].keys().collect::<Vec<_>>(),
            files.keys().collect::<Vec<_>>()
        );
        for (file, hash) in files {
            if step == "ready" || file.ends_with("/console.log") {
                continue;
            }
            compared += 1;
            if here_bytes[step].get(file) != Some(hash) {
                differ.push(format!("{step}/{file}"));
            }
        }
    }
    assert!(differ.is_empty(), "differ: {differ:?}");
    assert!(compared >= 16, "{compared} outputs compared");
    assert_eq!(s.read("out/greet/greeting"), "hello 1\n");
    // `qflow plan` says where each step would run and with what.
    std::fs::write(s.join("linux/lib/string.c"), "int changed;\n").unwrap();
    let plan = s
        .qflow(&["plan", "--executor", "slurm", "--force", "runs"])
        .success();
    assert!(
        plan.stdout.contains("on slurm (cpus: 1)"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("on slurm (4 jobs, one per run, cpus: 1 each)"),
        "{}",
        plan.stdout
    );
    // A run that fails names itself and its job; the step records nothing.
    std::fs::write(
        s.join("workflow.yaml"),
        full_workflow().replace(
            "commands: ['echo \"run {{ matrix.n }} of $n\" > /tmp/out.txt']",
            "commands: ['echo \"run {{ matrix.n }} of $n\" > /tmp/out.txt', '[ $n != 3 ]']",
        ),
    )
    .unwrap();
    assert!(s.read("workflow.yaml").contains("'[ $n != 3 ]']"));
    let failed = s.qflow(&["apply", "--executor", "slurm"]).failure(1);
    assert_eq!(failed.failed(), ["runs"], "{}", failed.stderr);
    assert!(failed.stderr.contains("run n=3"), "{}", failed.stderr);
    assert!(failed.stderr.contains("Slurm job "), "{}", failed.stderr);
    assert!(
        queued_named(&job_name_of(&s)).is_empty(),
        "nothing left running: {}",
        queued()
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

/// Processes whose command line mentions `marker` (a space's path or a guest's name).
fn processes_of(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .chars()
            .all(|c| c.is_ascii_digit())
        {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        let program = cmd.split_whitespace().next().unwrap_or_default();
        let interesting = ["qemu-system", "make", "gcc", "cc1", "as"]
            .iter()
            .any(|p| program.rsplit('/').next() == Some(p) || program.contains("qemu-system"));
        if interesting && cmd.contains(marker) {
            found.push(format!(
                "{}: {}",
                entry.file_name().to_string_lossy(),
                cmd.trim()
            ));
        }
    }
    found
}

/// Jobs named `name` still queued or running: `id state comment`.
fn queued_with_comments(name: &str) -> Vec<String> {
    let out = std::process::Command::new("squeue")
        .args(["-h", "-n", name, "-o", "%i %T %k"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Whether `jobs` (see [`queued_with_comments`]) has a running job of `step`.
fn running(jobs: &[String], step: &str) -> usize {
    jobs.iter()
        .filter(|l| {
            let mut f = l.split_whitespace();
            f.nth(1) == Some("RUNNING") && f.next() == Some(step)
        })
        .count()
}

/// Whether the kernel's and both runs' jobs are queued and two of them run (the
/// node has 2 CPUs). Which two is not fixed: each job's `srun` asks for its own
/// allocation, and in one run of the whole tier both runs' jobs reached Slurm
/// first and took both CPUs while the kernel's waited.
fn three_queued_two_running(jobs: &[String]) -> bool {
    jobs.len() == 3 && running(jobs, "kernel") + running(jobs, "runs") == 2
}

/// Wait until `pred` holds of this workflow's queued jobs ([`queued_with_comments`]).
fn wait_for_jobs(name: &str, what: &str, limit: Duration, pred: impl Fn(&[String]) -> bool) {
    let t0 = Instant::now();
    while !pred(&queued_with_comments(name)) {
        assert!(t0.elapsed() < limit, "{what}: {}", queued());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A kernel build and a boot matrix of two runs side by side: the guest sleeps
/// `sleep` seconds in each run.
fn kernel_and_boots(guest: &str, sleep: u32) -> String {
    format!(
        r#"version: 1
steps:
  kernel:
    kind: kernel
    source: ./linux
    config: tinyconfig
    jobs: 1
  runs:
    kind: boot
    kernel: {kernel}
    initrd: {initrd}
    append: console=ttyS0 quiet panic=-1
    memory: 256M
    accel: tcg
    matrix: {{ n: [1, 2] }}
    commands: ['sleep {sleep}; echo "run $n" > /tmp/out.txt']
    collect: [/tmp/out.txt]
    timeout: 3m
    extra_args: [-name, {guest}]
"#,
        kernel = common::host_kernel(),
        initrd = initramfs().display(),
    )
}

#[test]
#[ignore = "slow: real Slurm cluster, TCG boots of the host kernel (about a minute)"]
fn ctrl_c_cancels_every_slurm_job_at_once_records_nothing_and_the_next_apply_finishes() {
    let _serial = serial();
    let _client = cluster();
    let s = kernel_space(60);
    let guest = format!("qflow-ctrl-c-{}", std::process::id());
    s.workflow(&kernel_and_boots(&guest, 15));
    let first = s
        .command(&["apply", "--executor", "slurm"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let name = job_name_of(&s);
    // The kernel job and both runs' jobs submitted; the 2-CPU node runs two of them
    // (the third waits in the queue); QEMU is up, and make if the kernel runs.
    wait_for_jobs(
        &name,
        "jobs did not start",
        Duration::from_secs(60),
        three_queued_two_running,
    );
    let kernel_runs = running(&queued_with_comments(&name), "kernel") == 1;
    let space = s.path().to_string_lossy().into_owned();
    let t0 = Instant::now();
    while !(processes_of(&guest)
        .iter()
        .any(|p| p.contains("qemu-system"))
        && (!kernel_runs || processes_of(&space).iter().any(|p| p.contains("make"))))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no qemu and make side by side: {:?} {:?}",
            processes_of(&guest),
            processes_of(&space)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(first.id() as i32, libc::SIGINT) };
    let t1 = Instant::now();
    let out = first.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let gone = || {
        queued_named(&name).iter().all(|l| l.ends_with("CANCELLED"))
            && processes_of(&guest).is_empty()
            && processes_of(&space).is_empty()
    };
    while !gone() && t1.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        gone(),
        "2 s after Ctrl-C: {:?} {:?} {:?}",
        queued_named(&name),
        processes_of(&guest),
        processes_of(&space)
    );
    assert!(stderr.contains("cancelled Slurm jobs"), "{stderr}");
    for what in ["(kernel)", "(runs n=1)", "(runs n=2)"] {
        assert!(stderr.contains(what), "names {what}: {stderr}");
    }
    assert!(!s.join("out/kernel").exists() && !s.join("out/runs").exists());
    assert!(!s.join("qflow.lock").exists() || locked(&s).is_empty());
    let next = s.qflow(&["apply", "--executor", "slurm"]).success();
    assert_eq!(next.ran_sorted(), ["kernel", "runs"], "{}", next.stderr);
    assert_eq!(s.read("out/runs/n=2/out.txt"), "run 2\n");
    assert!(queued_named(&name).iter().all(|l| !l.ends_with("RUNNING")));
}

#[test]
#[ignore = "slow: real Slurm cluster, TCG boots of the host kernel (about a minute)"]
fn a_killed_detached_run_s_jobs_are_shown_then_adopted_by_the_next_apply_never_run_twice() {
    let _serial = serial();
    let _client = cluster();
    let s = kernel_space(30);
    let guest = format!("qflow-detached-{}", std::process::id());
    s.workflow(&kernel_and_boots(&guest, 12));
    let detach = s
        .qflow(&["apply", "--detach", "--executor", "slurm"])
        .success();
    let record = s.read(".qflow/detached.pid");
    let pid: i32 = record.lines().next().unwrap().trim().parse().unwrap();
    let name = job_name_of(&s);
    wait_for_jobs(
        &name,
        &format!("the detached run submitted nothing: {}", detach.stderr),
        Duration::from_secs(60),
        three_queued_two_running,
    );
    // SAFETY: kill(2) on the detached qflow this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let t0 = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}/stat")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| !st.contains(") Z "))
    {
        assert!(t0.elapsed() < Duration::from_secs(10), "qflow {pid} lives");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Batch jobs outlive their coordinator; `qflow status` shows them.
    let jobs: Vec<String> = queued_named(&name);
    assert_eq!(jobs.len(), 3, "{}", queued());
    let status = s.qflow(&["status"]).success();
    assert!(status.stdout.contains("slurm jobs:"), "{}", status.stdout);
    for job in &jobs {
        let id = job.split_whitespace().next().unwrap();
        assert!(status.stdout.contains(id), "{id}: {}", status.stdout);
    }
    for what in ["kernel", "runs n=1", "runs n=2"] {
        assert!(status.stdout.contains(what), "{what}: {}", status.stdout);
    }
    // The next apply adopts them (those that completed meanwhile too) and records
    // their results: no second copy of any.
    let next = s.qflow(&["apply", "--executor", "slurm"]).success();
    assert_eq!(next.ran_sorted(), ["kernel", "runs"], "{}", next.stderr);
    assert_eq!(
        next.stderr.matches("adopting Slurm job").count(),
        3,
        "{}",
        next.stderr
    );
    let all = std::process::Command::new("squeue")
        .args(["-h", "-t", "all", "-n", &name, "-o", "%i %T"])
        .output()
        .unwrap();
    let all = String::from_utf8_lossy(&all.stdout);
    assert_eq!(all.lines().count(), 3, "no job submitted twice: {all}");
    assert!(all.lines().all(|l| l.ends_with("COMPLETED")), "{all}");
    assert_eq!(s.read("out/runs/n=1/out.txt"), "run 1\n");
    assert!(s.join("out/kernel/bzImage").exists());
    assert_eq!(locked(&s).len(), 2);
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
