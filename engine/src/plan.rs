//! `qflow plan`: what `apply` would do and why, without running anything.
//!
//! With a remote cache, a step the local cache lacks is asked there (the action entry only,
//! nothing else is downloaded): `remote hit` when a sound entry answers its key.
//!
//! Imports `session`, `step` and `remote_use`.

use std::collections::BTreeMap;

use qflow_cache::Hash;
use qflow_cache::remote::RemoteCache;
use serde::Serialize;

use crate::session::Session;
use crate::step::CheckContext;

/// One step of a plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    /// The step's name.
    pub name: String,
    /// Its `kind:`.
    pub kind: String,
    /// `run`, `cached` or `remote hit`.
    pub action: String,
    /// Why it runs.
    pub reasons: Vec<String>,
    /// The command lines the step would run.
    pub commands: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Its key (hex), when known before anything runs.
    pub key: Option<String>,
}

/// The slots a step that hands qflow's make jobserver on gets: what `make`'s
/// `-j` amounts to, since no `-jN` appears on its command line.
fn jobs_share(written: Option<usize>, default: usize) -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (wanted, why) = match written {
        Some(n) => (n, format!("`jobs: {n}`")),
        None => (default, format!("no `jobs:`, the kind's default {default}")),
    };
    let n = wanted.clamp(1, cores);
    format!(
        "# {n} job slots ({why}; at most `qflow apply --jobs`, {cores} cores by default), \
         handed on as qflow's make jobserver: make runs as with `-j{n}`"
    )
}

/// Plan every step in schedule order.
pub fn plan(session: &mut Session) -> anyhow::Result<Vec<PlannedStep>> {
    plan_with_remote(session, None)
}

/// [`plan`], asking `remote` for what the local cache lacks.
pub fn plan_with_remote(
    session: &mut Session,
    remote: Option<&RemoteCache>,
) -> anyhow::Result<Vec<PlannedStep>> {
    let remote_reads = crate::remote_use::readable(session.workflow);
    let prepared = session.prepare()?;
    let probe = session.cache.probe()?;
    let workflow = session.workflow;
    let ctx = CheckContext {
        work_dir: workflow.dir.clone(),
    };
    let mut outputs: BTreeMap<String, Hash> = BTreeMap::new();
    let mut runs: BTreeMap<String, bool> = BTreeMap::new();
    let mut planned = Vec::new();
    for i in session.dag.order().into_iter().map(|id| id.index()) {
        let s = &workflow.steps[i];
        let mask = s.mask();
        let mut commands: Vec<String> = s.step.plan(&ctx).iter().map(|c| mask.apply(c)).collect();
        if s.step.uses_jobserver() {
            commands.push(jobs_share(s.jobs, s.step.default_jobs()));
        }
        let pending: Vec<&str> = s
            .upstream_names()
            .filter(|u| runs.get(*u).copied().unwrap_or(true))
            .collect();
        if !pending.is_empty() {
            runs.insert(s.name.clone(), true);
            planned.push(PlannedStep {
                name: s.name.clone(),
                kind: s.kind.clone(),
                action: "run".into(),
                reasons: vec![format!(
                    "upstream `{}` runs first (this step stays cached if their outputs come out unchanged)",
                    pending.join("`, `")
                )],
                commands,
                key: None,
            });
            continue;
        }
        let up: BTreeMap<String, Hash> = s
            .upstream_names()
            .map(|u| (u.to_string(), outputs[u]))
            .collect();
        let material = match session.material(&prepared, i, &up) {
            Ok(m) => m,
            Err(e) => {
                runs.insert(s.name.clone(), true);
                planned.push(PlannedStep {
                    name: s.name.clone(),
                    kind: s.kind.clone(),
                    action: "run".into(),
                    reasons: vec![format!("cannot compute its key: {e}")],
                    commands,
                    key: None,
                });
                continue;
            }
        };
        let key = material.key();
        let forced = workflow.selection.is_forced(&s.name);
        let mut action = "cached";
        let mut output = match session.cached_from_lock(i, &key, &probe) {
            _ if forced => None,
            Some(output) => Some(output),
            None if s.cache => session.usable_record(&key).map(|r| r.output),
            None => None,
        };
        if output.is_none()
            && s.cache
            && !forced
            && let Some(remote) = remote.filter(|_| remote_reads[i])
        {
            remote.check()?;
            action = "remote hit";
            output = remote.lookup(&key).map(|r| r.record.output);
        }
        match output {
            Some(output) => {
                outputs.insert(s.name.clone(), output);
                runs.insert(s.name.clone(), false);
                planned.push(PlannedStep {
                    name: s.name.clone(),
                    kind: s.kind.clone(),
                    action: action.into(),
                    reasons: vec![],
                    commands,
                    key: Some(key.to_hex()),
                });
            }
            None => {
                runs.insert(s.name.clone(), true);
                planned.push(PlannedStep {
                    name: s.name.clone(),
                    kind: s.kind.clone(),
                    action: "run".into(),
                    reasons: if forced {
                        vec!["forced with --force".to_string()]
                    } else {
                        session.reasons(&prepared, i, &material)
                    },
                    commands,
                    key: Some(key.to_hex()),
                });
            }
        }
    }
    session.save_caches()?;
    Ok(planned)
}
