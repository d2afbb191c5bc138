//! `qflow __run-step <description> [--part N]`: one step execution (or one of
//! its parts, a matrix run) inside a Slurm job.
//!
//! The node reads the description, takes the submitter's listed variables and the
//! step's `env:`, sizes the step's make jobserver from the job's allocation
//! (`SLURM_CPUS_PER_TASK`: without cgroups `nproc` shows every core of the node),
//! identifies its own tools and refuses to run when they differ from those in the
//! step key (a 20-minute kernel build is not wasted to find that out), runs the
//! step into the staging directory and writes its [`NodeReport`]. It records
//! nothing: the coordinator checks the outputs and the report and records them.
//!
//! Secrets: a step reading a password from `{ file: PATH }` reads that file here,
//! on the node, from the shared file system, as it would on the login node; the
//! password never travels in argv, the environment or a job script. A step whose
//! password comes from `{ env: NAME }` runs on the login node instead, since the
//! only way to carry it would be the job's environment, which Slurm keeps in its
//! state files.
//!
//! On SIGTERM (`scancel`, a time limit) every process group of the step is killed
//! before Slurm's KillWait runs out, so nothing of the step outlives the job.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, anyhow, bail};

use super::step_description::{NodeReport, StepDescription, tools_differ};
use crate::context::{NoProgress, ProcessGroups};
use crate::step::Registry;
use crate::tool_identity::ToolIdentities;

/// The CPU slots of this job: `SLURM_CPUS_PER_TASK`, else `fallback`.
pub fn allocated_cpus(fallback: usize) -> usize {
    std::env::var("SLURM_CPUS_PER_TASK")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(fallback)
        .max(1)
}

/// Run the step described at `path` (or only its part `part`: one run of a
/// matrix, logged and reported on its own); returns the exit code (0: the step,
/// or the part, succeeded). Call before any other thread starts: it sets this
/// process's environment.
pub fn run_described_step(
    path: &Path,
    registry: &Registry,
    part: Option<usize>,
) -> anyhow::Result<i32> {
    let mut desc = StepDescription::read(path)?;
    if let Some(i) = part {
        desc.report = StepDescription::part_report_path(&desc.job.out_dir, i);
        desc.job.log = StepDescription::part_log(&desc.job.log, i);
    }
    // SAFETY: called first thing in the `__run-step` command, before any thread
    // exists, so nothing reads the environment concurrently.
    unsafe {
        for (k, v) in &desc.host_env {
            std::env::set_var(k, v);
        }
    }
    let t0 = Instant::now();
    desc.job.jobs = allocated_cpus(desc.job.jobs);
    let mut report = NodeReport {
        host: host_name(),
        jobs: desc.job.jobs,
        ..Default::default()
    };
    let result = run(&desc, registry, part, &mut report);
    report.duration_ms = t0.elapsed().as_millis() as u64;
    if let Err(e) = &result {
        // The step's own log may not exist yet (a refused tool): add the reason to it.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&desc.job.log)
        {
            use std::io::Write as _;
            let _ = writeln!(f, "qflow: on node `{}`: {e:#}", report.host);
        }
        report.error = Some(format!("{e:#}"));
    }
    report.ok = result.is_ok();
    report.write(&desc.report)?;
    Ok(if report.ok { 0 } else { 1 })
}

fn run(
    desc: &StepDescription,
    registry: &Registry,
    part: Option<usize>,
    report: &mut NodeReport,
) -> anyhow::Result<()> {
    let job = &desc.job;
    let kind = registry.get(&job.kind).ok_or_else(|| {
        anyhow!(
            "this node's qflow has no kind `{}`; use the same qflow on the nodes",
            job.kind
        )
    })?;
    let step = kind.parse(&job.fields).map_err(|e| anyhow!("{e}"))?;
    // Fresh identities: the login node's memo says nothing about this node's binaries.
    let mut ids = ToolIdentities::load(Path::new("/nonexistent/qflow-node-tools.json"));
    for tool in step.tools() {
        match ids.identify(&tool) {
            Ok(id) => {
                report.tools.insert(tool.program.clone(), id);
            }
            Err(e) => bail!("on node `{}`: {e:#}", report.host),
        }
    }
    tools_differ(&report.host, &desc.tools, &report.tools).map_err(|e| anyhow!(e))?;
    let groups = ProcessGroups::new();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .context("cannot install signal handlers")?;
    {
        let groups = groups.clone();
        std::thread::spawn(move || {
            if signals.forever().next().is_some() {
                groups.cancel_all();
            }
        });
    }
    let output = match part {
        None => job.run(registry, Arc::new(NoProgress), groups)?,
        Some(i) => job.run_part(registry, Arc::new(NoProgress), groups, i)?,
    };
    report.notes = output.notes;
    Ok(())
}

/// `qflow __probe-node <file>`: prove that this node sees the file's directory
/// (the cache) and can run this qflow: append `seen by <host>` to the file.
pub fn probe(file: &Path) -> anyhow::Result<i32> {
    let nonce = std::fs::read_to_string(file).with_context(|| {
        format!(
            "this node cannot read `{}`: the cache is not on a file system it shares",
            file.display()
        )
    })?;
    let mut seen = file.as_os_str().to_os_string();
    seen.push(".seen");
    qflow_cache::write_atomic(
        Path::new(&seen),
        format!("{} seen by {}\n", nonce.trim(), host_name()).as_bytes(),
    )?;
    Ok(0)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
