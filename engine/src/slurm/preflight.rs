//! Checks before anything is submitted: a bad cluster setup is an error up front
//! (exit 2, nothing submitted), not a job that queues forever or fails on the node.
//!
//! In order, each stopping the rest when it fails: the Slurm commands are on PATH;
//! the controller answers (`scontrol ping`); every partition named exists; every
//! account named is one of the user's (when the cluster keeps accounts); the cluster
//! can ever run each distinct request (`sbatch --test-only`: without it, a request
//! larger than any node queues forever, reason `PartitionConfig`); and a probe job
//! proves that the nodes can run this qflow and see the cache directory.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::client::SlurmClient;
use super::job_request::JobRequest;
use super::resources::{ClusterSettings, Resources};

/// How long the probe job may take, queueing included.
const PROBE_LIMIT: Duration = Duration::from_secs(120);

/// What to check.
pub struct PreflightInput<'a> {
    /// (step name, its job request) for every step that would run on the cluster.
    pub requests: &'a [(String, JobRequest)],
    /// The workflow's `slurm:` block.
    pub cluster: &'a ClusterSettings,
    /// The cache directory, which the nodes must see.
    pub cache_dir: &'a Path,
    /// The qflow binary the nodes run.
    pub qflow: &'a Path,
    /// The batch script (see [`super::batch_script`]).
    pub script: &'a Path,
    /// Submit the probe job (skipped when nothing would run).
    pub probe: bool,
}

/// Every problem found, each saying what to do; empty when the cluster is ready.
pub fn check(input: &PreflightInput) -> Vec<String> {
    let client = match SlurmClient::find() {
        Ok(c) => c,
        Err(e) => return vec![format!("{e:#}")],
    };
    if let Err(e) = client.ping() {
        return vec![format!("{e:#}")];
    }
    let mut problems = Vec::new();
    match client.partitions() {
        Ok(known) => {
            for (step, req) in input.requests {
                let field = if req.resources.partition.is_some() {
                    "resources.partition"
                } else {
                    "slurm.partition"
                };
                if let Some(p) = req
                    .resources
                    .partition
                    .as_ref()
                    .or(req.cluster.partition.as_ref())
                    && !known.contains(p)
                {
                    problems.push(format!(
                        "step `{step}`: the cluster has no partition `{p}` (it has `{}`); fix `{field}`",
                        known.join("`, `")
                    ));
                }
            }
        }
        Err(e) => problems.push(format!("{e:#}")),
    }
    if let Some(acct) = &input.cluster.account
        && let Some(accounts) = user_accounts()
        && !accounts.contains(acct)
    {
        problems.push(format!(
            "you have no Slurm account `{acct}` (yours: `{}`); fix `slurm.account`",
            accounts.into_iter().collect::<Vec<_>>().join("`, `")
        ));
    }
    if !problems.is_empty() {
        return problems;
    }
    // One `--test-only` per distinct request, not per step: a matrix of 100 alike boots asks once.
    let mut asked = BTreeSet::new();
    for (step, req) in input.requests {
        let shape = request_shape(req);
        if !asked.insert(shape.clone()) {
            continue;
        }
        match client.test_only(req, input.script) {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => problems.push(format!(
                "step `{step}` asks for what the cluster can never give ({}): Slurm says \
                 \"{reason}\"; lower its `resources` or choose another partition",
                describe(req)
            )),
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    if problems.is_empty()
        && input.probe
        && let Err(e) = probe_nodes(&client, input)
    {
        problems.push(e);
    }
    problems
}

/// The options of a request that decide whether it can run (not its name or files).
fn request_shape(req: &JobRequest) -> Vec<OsString> {
    req.options()
        .into_iter()
        .filter(|o| {
            let s = o.to_string_lossy();
            !(s.starts_with("--comment=")
                || s.starts_with("--output=")
                || s.starts_with("--chdir=")
                || s.starts_with("--job-name="))
        })
        .collect()
}

/// A request in the user's words: `cpus: 64, memory: 4G`.
pub fn describe(req: &JobRequest) -> String {
    let r = &req.resources;
    let mut parts = vec![format!("cpus: {}", req.cpus)];
    if let Some(m) = &r.memory {
        parts.push(format!("memory: {m}"));
    }
    if let Some(t) = &r.time {
        parts.push(format!("time: {t}"));
    }
    if let Some(g) = r.gpus {
        parts.push(format!("gpus: {g}"));
    }
    if let Some(c) = &r.constraint {
        parts.push(format!("constraint: {c}"));
    }
    if let Some(p) = r.partition.as_ref().or(req.cluster.partition.as_ref()) {
        parts.push(format!("partition: {p}"));
    }
    parts.join(", ")
}

/// The user's accounts, or `None` when the cluster keeps no accounting (no
/// slurmdbd: any account name is accepted then).
fn user_accounts() -> Option<BTreeSet<String>> {
    let sacctmgr = crate::tool_identity::which("sacctmgr")?;
    let user = std::env::var("USER").ok()?;
    let out = std::process::Command::new(sacctmgr)
        .args(["-nP", "show", "assoc", "format=account"])
        .arg(format!("where user={user}"))
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
    )
}

/// Run one small job that writes a nonce beside the cache; `Err` says what the nodes lack.
fn probe_nodes(client: &SlurmClient, input: &PreflightInput) -> Result<(), String> {
    let dir = input.cache_dir.join("state").join("slurm");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
    let nonce = format!(
        "probe-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let file = dir.join(&nonce);
    let seen = PathBuf::from(format!("{}.seen", file.display()));
    let log = PathBuf::from(format!("{}.log", file.display()));
    std::fs::write(&file, &nonce).map_err(|e| format!("cannot write `{}`: {e}", file.display()))?;
    let req = JobRequest {
        name: "qflow-probe".into(),
        comment: "qflow: can the nodes see the cache?".into(),
        cpus: 1,
        resources: Resources {
            time: Some("2m".into()),
            ..Default::default()
        },
        cluster: input.cluster.clone(),
        slurm_log: log.clone(),
        work_dir: input.cache_dir.to_path_buf(),
        command: vec![
            input.qflow.as_os_str().to_os_string(),
            "__probe-node".into(),
            file.as_os_str().to_os_string(),
        ],
    };
    let result = client.run_job(&req, PROBE_LIMIT);
    let answer = std::fs::read_to_string(&seen).unwrap_or_default();
    let job_log = std::fs::read_to_string(&log).unwrap_or_default();
    for f in [&file, &seen, &log] {
        let _ = std::fs::remove_file(f);
    }
    let printed = match result {
        Err(e) => return Err(format!("the probe job failed: {e:#}")),
        Ok((_, printed)) => printed,
    };
    if answer.starts_with(&nonce) {
        return Ok(());
    }
    let said = format!("{printed}{job_log}");
    let said = said.trim();
    if said.contains("execve") || said.contains("No such file") {
        Err(format!(
            "the nodes cannot run `{}` (the probe job says: {said}); put qflow on a file system \
             the nodes share, at the same path",
            input.qflow.display()
        ))
    } else {
        Err(format!(
            "the nodes cannot see the cache `{}` (the probe job wrote nothing there{}); put the \
             cache on a file system the nodes share (`--cache DIR`)",
            input.cache_dir.display(),
            if said.is_empty() {
                String::new()
            } else {
                format!("; it says: {said}")
            }
        ))
    }
}
