//! Where steps run, for `qflow plan` and `qflow doctor --executor slurm`: each
//! step's executor and Slurm resources, and the cluster checks an apply would make
//! before submitting anything; and, for `qflow status`, the workflow's Slurm jobs
//! still queued or running (a detached run's, or a killed coordinator's).

use std::collections::BTreeMap;
use std::path::Path;

use qflow_engine::plan::PlannedStep;
use qflow_engine::slurm::placement::ExecutorChoice;
use qflow_engine::slurm::preflight::{self, PreflightInput};
use qflow_engine::slurm::resources::Resources;
use qflow_engine::workflow::Workflow;

/// Where one step would run.
pub struct Placed {
    pub executor: ExecutorChoice,
    /// Why a step meant for the cluster runs here.
    pub here_because: Option<String>,
    /// CPUs of each job.
    pub cpus: usize,
    /// Jobs per execution: one per part (a matrix's runs), else one.
    pub jobs: usize,
    pub resources: Resources,
    pub retries: u32,
}

impl Placed {
    /// `slurm (cpus: 2, time: 10m)` or `local`.
    pub fn describe(&self) -> String {
        match (self.executor, &self.here_because) {
            (ExecutorChoice::Local, Some(why)) => format!("local ({why})"),
            (ExecutorChoice::Local, None) => "local".to_string(),
            (ExecutorChoice::Slurm, _) => {
                let r = &self.resources;
                let mut parts = if self.jobs > 1 {
                    vec![format!(
                        "{} jobs, one per run, cpus: {} each",
                        self.jobs, self.cpus
                    )]
                } else {
                    vec![format!("cpus: {}", self.cpus)]
                };
                for (k, v) in [
                    ("memory", &r.memory),
                    ("time", &r.time),
                    ("constraint", &r.constraint),
                    ("partition", &r.partition),
                ] {
                    if let Some(v) = v {
                        parts.push(format!("{k}: {v}"));
                    }
                }
                if let Some(g) = r.gpus {
                    parts.push(format!("gpus: {g}"));
                }
                if self.retries > 0 {
                    parts.push(format!("retries: {}", self.retries));
                }
                format!("slurm ({})", parts.join(", "))
            }
        }
    }
}

/// Each step's placement, by name.
pub fn placements(wf: &Workflow, flag: Option<ExecutorChoice>) -> BTreeMap<String, Placed> {
    let placed = qflow_engine::slurm::setup::placements(wf, flag);
    wf.steps
        .iter()
        .zip(placed)
        .map(|(s, (executor, here_because))| {
            let (jobs, cpus) = qflow_engine::slurm::setup::jobs_of(s);
            (
                s.name.clone(),
                Placed {
                    executor,
                    here_because,
                    cpus,
                    jobs,
                    resources: s.placement().resources.clone(),
                    retries: s.placement().retries,
                },
            )
        })
        .collect()
}

/// A planned step as JSON with `executor` and `resources`.
pub fn with_placement(s: &PlannedStep, p: &Placed) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(s)?;
    v["executor"] = serde_json::json!(p.executor.name());
    if p.executor == ExecutorChoice::Slurm {
        let mut r = serde_json::to_value(&p.resources)?;
        r["cpus"] = serde_json::json!(p.cpus);
        v["resources"] = r;
        v["slurm_jobs"] = serde_json::json!(p.jobs);
    }
    Ok(v)
}

/// `qflow doctor --executor slurm`: the checks an apply makes before submitting
/// anything, for every step of `wf` (or one small job without a workflow).
pub fn doctor(wf: Option<&Workflow>, cache: Option<&Path>) -> anyhow::Result<i32> {
    let cache_root = match (cache, wf) {
        (Some(c), _) => c.to_path_buf(),
        (None, Some(wf)) => qflow_engine::session::cache_dir(wf, None),
        (None, None) => std::env::current_dir()?.join(".qflow"),
    };
    std::fs::create_dir_all(&cache_root)?;
    let dir = qflow_engine::slurm::slurm_dir(&cache_root);
    let script = qflow_engine::slurm::batch_script(&dir)?;
    let qflow = std::env::current_exe()?;
    let cluster = wf.map(|w| w.placement.slurm.clone()).unwrap_or_default();
    let requests = match wf {
        Some(wf) => {
            qflow_engine::slurm::setup::requests(wf, Some(ExecutorChoice::Slurm), &cache_root)
        }
        None => Vec::new(),
    };
    let problems = preflight::check(&PreflightInput {
        requests: &requests,
        cluster: &cluster,
        cache_dir: &cache_root,
        qflow: &qflow,
        script: &script,
        probe: true,
    });
    if problems.is_empty() {
        println!(
            "ok      slurm: the controller answers, {} step(s) fit the cluster, the nodes run `{}` and see the cache `{}`",
            requests.len(),
            qflow.display(),
            cache_root.display()
        );
        Ok(0)
    } else {
        for p in &problems {
            println!("MISSING slurm: {p}");
        }
        Ok(2)
    }
}

/// `qflow status`: the workflow's Slurm jobs still queued or running, one line
/// each (`1234 RUNNING  runs n=2`), from one `squeue` call. Nothing when the cache
/// never held a Slurm job or Slurm's commands are not here.
pub fn status_lines(wf: &Workflow, cache_root: &Path) -> Vec<String> {
    if !qflow_engine::slurm::slurm_dir(cache_root).is_dir() {
        return Vec::new();
    }
    let Ok(client) = qflow_engine::slurm::SlurmClient::find() else {
        return Vec::new();
    };
    let name = qflow_engine::slurm::job_name(cache_root, &wf.path);
    let mut queue = qflow_engine::slurm::Queue::new(&name);
    if let Err(e) = queue.refresh(&client) {
        return vec![format!("cannot list its Slurm jobs: {e:#}")];
    }
    let parts: BTreeMap<&str, Vec<String>> = wf
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.step.parts()))
        .collect();
    queue
        .active()
        .into_iter()
        .map(|j| {
            let what = match qflow_engine::slurm::parse_comment(&j.comment) {
                Some((step, execution)) => {
                    let run = execution
                        .split_once('#')
                        .and_then(|(_, i)| i.parse::<usize>().ok())
                        .and_then(|i| parts.get(step)?.get(i).cloned());
                    match run {
                        Some(label) => format!("{step} {label}"),
                        None => step.to_string(),
                    }
                }
                None => j.comment.clone(),
            };
            format!("{} {}  {what}", j.id, j.state.name())
        })
        .collect()
}
