//! `qflow plan`: what `apply` would do and why, without running anything.
//!
//! Imports `session` and `step`.

use std::collections::BTreeMap;

use qflow_cache::Hash;
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
    /// `run` or `cached`.
    pub action: String,
    /// Why it runs.
    pub reasons: Vec<String>,
    /// The command lines the step would run.
    pub commands: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Its key (hex), when known before anything runs.
    pub key: Option<String>,
}

/// Plan every step in schedule order.
pub fn plan(session: &mut Session) -> anyhow::Result<Vec<PlannedStep>> {
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
        let commands = s.step.plan(&ctx);
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
        let output = match session.cached_from_lock(i, &key, &probe) {
            Some(output) => Some(output),
            None if s.cache => session.usable_record(&key).map(|r| r.output),
            None => None,
        };
        match output {
            Some(output) => {
                outputs.insert(s.name.clone(), output);
                runs.insert(s.name.clone(), false);
                planned.push(PlannedStep {
                    name: s.name.clone(),
                    kind: s.kind.clone(),
                    action: "cached".into(),
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
                    reasons: session.reasons(&prepared, i, &material),
                    commands,
                    key: Some(key.to_hex()),
                });
            }
        }
    }
    session.save_caches()?;
    Ok(planned)
}
