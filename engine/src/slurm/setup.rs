//! Before an apply with Slurm steps: which steps go to the cluster, the checks
//! that must pass before anything is submitted, and the Slurm executor's setup.
//!
//! A step goes to the cluster when its `executor:` (else `--executor`, else the
//! workflow's) says `slurm`, unless it must run here (`Step::runs_only_here`: a
//! password from qflow's environment). The preflight runs only when some
//! cluster step is not already in place, so a no-op apply asks the controller
//! nothing; its probe job runs only when no probe passed within the hour for
//! the same qflow binary, cache and cluster settings (see [`probe_memo`]).

use std::collections::{HashMap, HashSet};

use super::client::SlurmClient;
use super::job_request::{JobRequest, job_comment, job_name};
use super::placement::{ExecutorChoice, executor_for};
use super::preflight::{self, PreflightInput};
use super::{batch_script, slurm_dir};
use crate::executor::slurm::{SlurmSetup, SlurmStep};
use crate::session::{Prepared, Session};
use crate::workflow::Workflow;

/// Where each step of `workflow` runs, with `flag` from `--executor`; a step that
/// must run here runs here, with the reason.
pub fn placements(
    workflow: &Workflow,
    flag: Option<ExecutorChoice>,
) -> Vec<(ExecutorChoice, Option<String>)> {
    workflow
        .steps
        .iter()
        .map(
            |s| match executor_for(s.placement(), &workflow.placement, flag) {
                ExecutorChoice::Slurm => match s.step.runs_only_here() {
                    Some(why) => (ExecutorChoice::Local, Some(why)),
                    None => (ExecutorChoice::Slurm, None),
                },
                local => (local, None),
            },
        )
        .collect()
}

/// The Slurm jobs one execution of `step` takes, and the CPUs each asks for:
/// one job with `resources.cpus` (else the step's `jobs`), or, for a step with
/// parts (a boot matrix), one job per part with `resources.cpus` (else 1).
pub fn jobs_of(step: &crate::workflow::StepDecl) -> (usize, usize) {
    let parts = step.step.parts().len();
    let cpus = step.placement().resources.cpus;
    if parts > 0 {
        (parts, cpus.unwrap_or(1).max(1))
    } else {
        let jobs = step.jobs().unwrap_or_else(|| step.step.default_jobs());
        (1, cpus.unwrap_or(jobs).max(1))
    }
}

/// A job request per step of `workflow` that would run on the cluster (its
/// command a placeholder): what the preflight asks `sbatch --test-only` about.
pub fn requests(
    workflow: &Workflow,
    flag: Option<ExecutorChoice>,
    cache_root: &std::path::Path,
) -> Vec<(String, JobRequest)> {
    let placed = placements(workflow, flag);
    let name = job_name(cache_root, &workflow.path);
    let dir = slurm_dir(cache_root);
    workflow
        .steps
        .iter()
        .zip(placed)
        .filter(|(_, (choice, _))| *choice == ExecutorChoice::Slurm)
        .map(|(s, _)| {
            (
                s.name.clone(),
                JobRequest {
                    name: name.clone(),
                    comment: job_comment(&s.name, &"0".repeat(64)),
                    cpus: jobs_of(s).1,
                    resources: s.placement().resources.clone(),
                    cluster: workflow.placement.slurm.clone(),
                    slurm_log: dir.join("preflight.log"),
                    work_dir: workflow.dir.clone(),
                    command: vec!["true".into()],
                },
            )
        })
        .collect()
}

/// The Slurm executor's setup and the names of the steps it runs, or `None` when
/// no step runs on the cluster. Problems come back as [`crate::HostNotReady`]
/// (exit 2, nothing submitted).
pub fn prepare<'w>(
    session: &Session<'w>,
    prepared: &Prepared,
    flag: Option<ExecutorChoice>,
    detached: bool,
    in_place: &[bool],
    progress: &crate::progress::Progress,
) -> anyhow::Result<Option<(SlurmSetup<'w>, HashSet<String>)>> {
    let workflow = session.workflow;
    let placed = placements(workflow, flag);
    let mut names = HashSet::new();
    for (i, (choice, why)) in placed.iter().enumerate() {
        let name = &workflow.steps[i].name;
        if let Some(why) = why {
            progress.event(&format!("step {name} runs here, not on Slurm: {why}"));
        }
        if *choice == ExecutorChoice::Slurm {
            names.insert(name.clone());
        }
    }
    if names.is_empty() {
        return Ok(None);
    }
    let not_ready = |problems: Vec<String>| anyhow::Error::new(crate::HostNotReady { problems });
    let client = SlurmClient::find().map_err(|e| not_ready(vec![format!("{e:#}")]))?;
    let cache_root = session.cache.root().to_path_buf();
    let dir = slurm_dir(&cache_root);
    let script = batch_script(&dir)?;
    let qflow = std::env::current_exe()?;
    let name = job_name(&cache_root, &workflow.path);
    let requests = requests(workflow, flag, &cache_root);
    let mut steps = HashMap::new();
    let mut all_in_place = true;
    for (i, s) in workflow.steps.iter().enumerate() {
        if !names.contains(&s.name) {
            continue;
        }
        all_in_place &= in_place.get(i) == Some(&true);
        steps.insert(
            s.name.clone(),
            SlurmStep {
                resources: s.placement().resources.clone(),
                retries: s.placement().retries,
                tools: (prepared.tools.get(i).into_iter().flatten().cloned()).collect(),
                parts: s.step.parts(),
            },
        );
    }
    if !all_in_place {
        let memo = probe_memo(&qflow, &cache_root, &workflow.placement.slurm);
        let memo_path = dir.join(PROBE_MEMO);
        let probe = !probe_fresh(&memo_path, &memo);
        let problems = preflight::check(&PreflightInput {
            requests: &requests,
            cluster: &workflow.placement.slurm,
            cache_dir: &cache_root,
            qflow: &qflow,
            script: &script,
            probe,
        });
        if !problems.is_empty() {
            let _ = std::fs::remove_file(&memo_path);
            return Err(not_ready(problems));
        }
        if probe {
            let now = unix_now();
            let _ = qflow_cache::write_atomic(&memo_path, format!("{memo}\n{now}\n").as_bytes());
        }
    }
    Ok(Some((
        SlurmSetup {
            registry: session.registry,
            client,
            name,
            cluster: workflow.placement.slurm.clone(),
            qflow,
            script,
            dir,
            detached,
            steps,
        },
        names,
    )))
}

/// The file remembering a probe job that passed (see [`probe_memo`]).
const PROBE_MEMO: &str = "probe-passed";

/// How long a passed probe is trusted.
const PROBE_TRUSTED_SECS: u64 = 3600;

/// What a passed probe proved, in one line: this qflow binary (path, size,
/// modification time) runs on the nodes, and they see this cache, under these
/// cluster settings. A probe job waits in the queue like any job (minutes on a
/// busy cluster), so an apply within the hour after one that passed, with the
/// same binary, cache and settings, trusts it; `qflow doctor --executor slurm`
/// always probes.
fn probe_memo(
    qflow: &std::path::Path,
    cache_root: &std::path::Path,
    cluster: &super::resources::ClusterSettings,
) -> String {
    let stamp = std::fs::metadata(qflow)
        .map(|m| {
            use std::os::unix::fs::MetadataExt as _;
            format!("{} {} {}", m.len(), m.mtime(), m.mtime_nsec())
        })
        .unwrap_or_default();
    let mut h = blake3::Hasher::new();
    for part in [
        qflow.as_os_str().as_encoded_bytes(),
        stamp.as_bytes(),
        cache_root.as_os_str().as_encoded_bytes(),
        format!("{cluster:?}").as_bytes(),
    ] {
        h.update(part);
        h.update(b"\0");
    }
    h.finalize().to_hex().to_string()
}

/// Whether the probe memo at `path` says `memo` passed within the trusted time.
fn probe_fresh(path: &std::path::Path, memo: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let mut lines = text.lines();
    lines.next() == Some(memo)
        && lines
            .next()
            .and_then(|t| t.parse::<u64>().ok())
            .is_some_and(|t| unix_now().saturating_sub(t) < PROBE_TRUSTED_SECS)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
