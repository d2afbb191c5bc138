//! Turning a step's finished output tree into a record: the run loop's side of
//! every executor, so all of them share it.
//!
//! An executor reports a job done when its staging directory holds the
//! complete output. Then, in this order: the step's inputs are digested again
//! (an input edited while the step ran makes its result untrustworthy, so it
//! is not recorded), the tree is committed to the cache, the record is
//! written and the started mark cleared. Only a complete, checked result is
//! ever recorded; on any error the staging directory is dropped with its
//! [`TempTree`]. Imports `inputs`, `session` and `step_job`.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::bail;
use qflow_cache::{Hash, Record, TempTree};

use crate::dag::StepId;
use crate::inputs::InputDigest;
use crate::session::Session;
use crate::step_job::StepOutput;

/// One executed step waiting to be recorded.
pub struct Recording {
    /// Which step.
    pub step: StepId,
    /// Its key.
    pub key: Hash,
    /// The staging directory the executor filled.
    pub staging: TempTree,
    /// Output trees of its upstream steps, kept alive by its record.
    pub retains: Vec<Hash>,
    /// What the step noted.
    pub output: StepOutput,
    /// When it was handed to the executor.
    pub submitted: Instant,
}

impl Recording {
    /// Check and record the step's output; `before` are its input digests
    /// from before the run.
    pub fn record(self, session: &Session, before: &[InputDigest]) -> anyhow::Result<Record> {
        let decl = &session.workflow.steps[self.step.index()];
        let cache = &session.cache;
        let inputs = decl.step.inputs();
        if !inputs.is_empty() {
            // The session's stat cache: files unchanged since the digest are only stat'ed.
            let mut stat = session.stat_cache.lock().unwrap();
            let now = crate::inputs::digest_all(
                &session.workflow.dir,
                &mut stat,
                Some(&cache.dir("tree-index")),
                &[inputs],
            )?;
            drop(stat);
            for (before, after) in before.iter().zip(&now[0]) {
                if before.digest != after.digest {
                    bail!(
                        "input `{}` changed while the step ran; its result is not recorded: apply again",
                        before.label
                    );
                }
            }
        }
        let manifest = cache.commit_tree(self.staging)?;
        let mut meta = BTreeMap::new();
        meta.insert("step".to_string(), serde_json::json!(decl.name));
        meta.insert("kind".to_string(), serde_json::json!(decl.kind));
        meta.insert(
            "notes".to_string(),
            serde_json::to_value(&self.output.notes)?,
        );
        let rec = Record {
            key: self.key,
            output: manifest.hash,
            manifest,
            retains: self.retains,
            created_unix: crate::run_record::unix_now(),
            duration_ms: self.submitted.elapsed().as_millis() as u64,
            meta,
        };
        cache.put_record(&self.key, &rec)?;
        cache.clear_started(&self.key)?;
        Ok(rec)
    }
}
