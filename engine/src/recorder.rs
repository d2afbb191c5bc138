//! Turning a step's finished output tree into a record: the run loop's side of
//! every executor, so all of them share it.
//!
//! An executor reports a job done when its staging directory holds the
//! complete output. Then, in this order: the step's inputs are digested again
//! (an input edited while the step ran makes its result untrustworthy, so it
//! is not recorded), the tree is committed to the cache, the record is
//! written and the started mark cleared. Only a complete, checked result is
//! ever recorded; on any error the staging directory is dropped with its
//! [`TempTree`]. Imports `inputs`, `session`, `step_job`, `dag` and `run_record`.

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
    /// Its inputs' stat fields when it was handed to the executor.
    pub input_stamps: Vec<Hash>,
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
        let inputs = decl.inputs();
        if !inputs.is_empty() {
            // The session's stat cache: files unchanged since the digest are only stat'ed.
            let now = crate::inputs::digest_all_until(
                &session.workflow.dir,
                &session.stat_cache,
                Some(&cache.dir("tree-index")),
                &[inputs.as_slice()],
                &std::sync::atomic::AtomicBool::new(false),
            )?;
            for (before, after) in before.iter().zip(&now[0]) {
                if before.digest != after.digest {
                    bail!(
                        "input `{}` changed while the step ran; its result is not recorded: apply again",
                        before.label
                    );
                }
            }
        }
        // Content back as it was is not enough: an edit undone while the step ran
        // (A, B, A) made the output from B. Stat fields show it.
        let stamps = crate::input_stamp::stamp_inputs(&session.workflow.dir, &inputs)?;
        for ((input, before), after) in inputs.iter().zip(&self.input_stamps).zip(&stamps) {
            if before != after {
                bail!(
                    "input `{}` was modified while the step ran (its content may be back, but the step may have read another); its result is not recorded: apply again",
                    input.path
                );
            }
        }
        // A step must not write into another step's output: root can, whatever the modes.
        for (up, tree) in session.workflow.upstream_names(decl).zip(&self.retains) {
            if cache.tree_unchanged(tree) {
                continue;
            }
            if let qflow_cache::TreeCheck::Damaged(path) = cache.check_tree(tree) {
                cache.discard_damaged_tree(tree)?;
                bail!(
                    "the step changed `{path}` in the output of `{up}` (`${{{{ steps.{up} }}}}`); a step must not write into another step's output: copy the file into $QFLOW_OUT first. `{up}` runs again next time"
                );
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
