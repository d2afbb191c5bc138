//! A workflow opened against its cache: inputs digested, tools identified, the
//! last lock read. `plan`, `apply`, `graph` and `status` all start from here.
//!
//! Imports `workflow`, `dag`, `inputs`, `lockfile`, `stat_cache`, `step_key`,
//! `tool_identity`, `leftovers`, `progress` and `step`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use qflow_cache::{Cache, CacheProbe, Hash, Record};

use crate::dag::{Dag, StepId};
use crate::input_digests::InputDigests;
use crate::inputs::{self, InputDigest};
use crate::lock_source::LockSource;
use crate::lockfile::{LockFile, LockIndex, LockedStep};
use crate::stat_cache::StatCache;
use crate::step::{CheckContext, Registry};
use crate::step_key::{KeyMaterial, Sorted, sorted};
use crate::tool_identity::ToolIdentities;
use crate::workflow::Workflow;

/// Where the cache lives: `--cache`, else `QFLOW_CACHE`, else `.qflow/` beside the workflow.
pub fn cache_dir(workflow: &Workflow, flag: Option<&Path>) -> PathBuf {
    cache_dir_beside(&workflow.dir, flag)
}

/// [`cache_dir`] for a workflow in directory `workflow_dir`, before it is loaded.
pub fn cache_dir_beside(workflow_dir: &Path, flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("QFLOW_CACHE").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return std::path::absolute(&p).unwrap_or(p);
    }
    workflow_dir.join(".qflow")
}

/// The path of `qflow.lock` for a workflow: beside it, named after it for
/// non-default names (`quickstart.yaml` → `quickstart.lock`).
pub fn lock_path(workflow: &Workflow) -> PathBuf {
    let stem = workflow
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if stem == "workflow" || stem.is_empty() {
        workflow.dir.join("qflow.lock")
    } else {
        workflow.dir.join(format!("{stem}.lock"))
    }
}

/// What a step's key needs that is known before any step runs.
pub struct Prepared {
    /// Per step: input digests, once hashed.
    pub inputs: InputDigests,
    /// Per step: tool identities, or why they cannot be known (a missing tool).
    pub tools: PerStep,
    /// Per step: extra key material, or why it cannot be computed (a missing secret file).
    pub extra: PerStep,
}

/// Per step: pairs of names and values, or why they cannot be had. A step whose
/// list is empty (most: a `command` runs no tool of qflow's) keeps nothing; two
/// lists a step were 2.4 MB of a 50,000-step run.
#[derive(Debug, Default)]
pub struct PerStep(Vec<Option<Box<Pairs>>>);

/// Pairs of names and values, or why they cannot be had.
type Pairs = Result<Sorted<String>, String>;

impl PerStep {
    /// Room for `n` steps.
    fn with_capacity(n: usize) -> PerStep {
        PerStep(Vec::with_capacity(n))
    }

    /// The next step's list.
    fn push(&mut self, list: Pairs) {
        self.0.push(match list {
            Ok(pairs) if pairs.is_empty() => None,
            list => Some(Box::new(list)),
        });
    }

    /// Step `i`'s list, or why it cannot be had.
    pub fn get(&self, i: usize) -> Result<&[(String, String)], &str> {
        match self.0[i].as_deref() {
            None => Ok(&[]),
            Some(Ok(pairs)) => Ok(pairs),
            Some(Err(e)) => Err(e),
        }
    }
}

/// A workflow with its cache.
pub struct Session<'w> {
    /// The workflow.
    pub workflow: &'w Workflow,
    /// The step kinds.
    pub registry: &'w Registry,
    /// Its cache.
    pub cache: Cache,
    /// Its steps' DAG.
    pub dag: Dag,
    /// The last lock: its bytes, parsed in full only when asked ([`Session::lock`]).
    lock: LastLock,
    /// Where its lock file is.
    pub lock_path: PathBuf,
    /// Shared with running steps, which re-check their inputs when they finish.
    pub stat_cache: std::sync::Mutex<StatCache>,
    /// Tool identities, remembered by path and stat.
    pub tool_ids: ToolIdentities,
    /// Keys of steps marked started but never finished (qflow was killed).
    interrupted: std::collections::HashSet<String>,
}

impl<'w> Session<'w> {
    /// Open `workflow` against the cache in `cache_dir`, reading the last lock.
    pub fn open(
        workflow: &'w Workflow,
        registry: &'w Registry,
        cache_dir: &Path,
    ) -> anyhow::Result<Session<'w>> {
        let cache = Cache::open(cache_dir)?;
        let lock_path = lock_path(workflow);
        // The last lock, the stat cache and the DAG do not depend on each other: read
        // and built side by side (each is a few milliseconds at 10,000 steps).
        let (lock, stat_cache, dag) = std::thread::scope(|scope| {
            let lock =
                scope.spawn(|| LastLock::read(&lock_path, &cache.dir("state").join("lock-index")));
            let stat_cache = scope.spawn(|| StatCache::load(&cache.dir("statcache")));
            let dag = workflow.dag();
            (lock.join(), stat_cache.join(), dag)
        });
        let (lock, stat_cache) = match (lock, stat_cache) {
            (Ok(lock), Ok(stat_cache)) => (lock, stat_cache),
            (Err(panic), _) | (_, Err(panic)) => std::panic::resume_unwind(panic),
        };
        // Reading a large lock left megabytes free in the allocator (its bytes, its
        // index parsed): given back before the run allocates its own, they do not
        // add to its peak. A small lock's few are not worth the milliseconds.
        if lock
            .source
            .as_ref()
            .is_some_and(|s| s.size() > GIVE_BACK_AFTER_LOCK)
        {
            crate::run::give_back_free_memory();
        }
        let tool_ids = ToolIdentities::load(&cache.dir("tools.json"));
        // Read once (usually an empty directory) instead of asked per step.
        let interrupted = cache.started_keys();
        Ok(Session {
            interrupted,
            workflow,
            registry,
            dag,
            lock,
            lock_path,
            cache,
            stat_cache: std::sync::Mutex::new(stat_cache),
            tool_ids,
        })
    }

    /// The last lock (`qflow.lock`), parsed on first use.
    pub fn lock(&self) -> &LockFile {
        self.lock.full()
    }

    /// Each step's key and output in the last lock, without parsing the rest.
    pub fn lock_index(&self) -> &LockIndex {
        &self.lock.index
    }

    /// Step `name`'s entry in the last lock, parsed alone when the lock is laid
    /// out as qflow writes it (see `lockfile.rs`).
    pub fn lock_entry(&self, name: &str) -> Option<std::borrow::Cow<'_, LockedStep>> {
        use std::borrow::Cow;
        if self.lock.full.get().is_none()
            && let Some(text) = self.lock.text()
        {
            return text.entry(name).map(Cow::Owned);
        }
        self.lock().steps.get(name).map(Cow::Borrowed)
    }

    /// Whether step `name`'s entry in the last lock is `entry`: compared by the
    /// digests of their texts where the lock is read in place (no entry parsed),
    /// else field by field.
    pub fn lock_entry_is(&self, name: &str, entry: &crate::lockfile::EntryView<'_>) -> bool {
        if self.lock.full.get().is_none()
            && let Some(text) = self.lock.text()
        {
            return text.entry_written_as(name, entry).unwrap_or(false);
        }
        (self.lock().steps.get(name)).is_some_and(|old| entry.same_as(old))
    }

    /// Keep `index` as the index of the lock just written, whose bytes have blake3
    /// `digest`, so the next run reads it instead of indexing the whole lock again.
    pub fn remember_lock_index<'s>(
        &self,
        digest: Hash,
        version: u32,
        workflow: &str,
        steps: impl Iterator<Item = anyhow::Result<(&'s str, crate::lockfile::LockedIds)>>,
    ) -> anyhow::Result<()> {
        let memos = self.cache.dir("state").join("lock-index");
        let memo = memos.join(lock_memo_name(&self.lock_path));
        let _ = std::fs::create_dir_all(&memos);
        let mut failed = None;
        let written = qflow_cache::write_hint_with(&memo, |out| {
            let steps = steps.map(|s| s.inspect_err(|e| failed = Some(format!("{e:#}"))));
            LockIndex::write_memo(&digest, version, workflow, steps, out)
        });
        // A memo that cannot be written only costs the next run a parse of the lock;
        // a step that failed is an error.
        if written.is_err() {
            let _ = std::fs::remove_file(&memo);
        }
        match failed {
            Some(e) => Err(anyhow::anyhow!(e)),
            None => Ok(()),
        }
    }

    /// The last lock's bytes with each entry located, when laid out as qflow writes it.
    pub fn lock_text(&self) -> Option<&crate::lockfile::LockText> {
        self.lock.text()
    }

    /// Replace the last lock (what this session compares against and keeps).
    pub fn set_lock(&mut self, lock: LockFile) {
        self.lock = LastLock::of(lock);
    }

    /// Read the lock file again (after waiting for another run that may have rewritten it).
    pub fn reload_lock(&mut self) {
        self.lock = LastLock::read(&self.lock_path, &self.cache.dir("state").join("lock-index"));
    }

    /// Digest inputs, identify tools, compute extra key material.
    pub fn prepare(&mut self) -> anyhow::Result<Prepared> {
        let mut prepared = self.prepare_keys();
        let all: Vec<StepId> = (0..self.workflow.steps.len()).map(StepId).collect();
        prepared.inputs = InputDigests::of(self.digest_inputs(&all, &AtomicBool::new(false))?);
        Ok(prepared)
    }

    /// Identify tools and compute extra key material; the inputs are left to hash
    /// (steps without inputs have their empty digests already): see
    /// [`Session::digest_inputs`] and `input_digests.rs`.
    pub fn prepare_keys(&mut self) -> Prepared {
        let inputs = InputDigests::pending(self.workflow.steps.len());
        for (i, s) in self.workflow.steps.iter().enumerate() {
            if !s.has_inputs() {
                inputs.set(i, Ok(Vec::new()));
            }
        }
        let ctx = CheckContext {
            work_dir: self.workflow.dir.clone(),
        };
        // One each per step, kept for the whole run: made at their size.
        let mut tools = PerStep::with_capacity(self.workflow.steps.len());
        let mut extra = PerStep::with_capacity(self.workflow.steps.len());
        for s in &self.workflow.steps {
            let mut ids = BTreeMap::new();
            let mut err = None;
            for t in s.step.tools() {
                match self.tool_ids.identify(&t) {
                    Ok(id) => {
                        ids.insert(t.program.clone(), id);
                    }
                    Err(e) => {
                        err = Some(format!("{e:#}"));
                        break;
                    }
                }
            }
            tools.push(match err {
                Some(e) => Err(e),
                None => Ok(sorted(ids)),
            });
            extra.push(
                s.step
                    .extra_key(&ctx)
                    .map(sorted)
                    .map_err(|e| format!("{e:#}")),
            );
        }
        Prepared {
            inputs,
            tools,
            extra,
        }
    }

    /// The input digests of steps `steps`, in the same order, each listing kept for
    /// `qflow plan`'s diffs. Stops hashing with an error once `stop` is set.
    pub fn digest_inputs(
        &self,
        steps: &[StepId],
        stop: &AtomicBool,
    ) -> anyhow::Result<Vec<Vec<InputDigest>>> {
        let wanted: Vec<_> = (steps.iter())
            .map(|id| self.workflow.steps[id.index()].inputs())
            .collect();
        let wanted: Vec<&[crate::step::Input]> = wanted.iter().map(Vec::as_slice).collect();
        let inputs = inputs::digest_all_until(
            &self.workflow.dir,
            &self.stat_cache,
            Some(&self.cache.dir("tree-index")),
            &wanted,
            stop,
        )?;
        let listings = self.cache.dir("inputs");
        let mut inputs = inputs;
        for step in &mut inputs {
            for d in step {
                if !d.from_index
                    && (d.entries.len() > 1 || d.entries.iter().any(|(k, _)| !k.is_empty()))
                {
                    inputs::save_listing(&listings, d)?;
                } else {
                    // A single file's entry says nothing its digest does not, and
                    // the run holds every step's digests until its result is
                    // recorded: 80 bytes a step.
                    d.entries = Vec::new();
                }
            }
        }
        Ok(inputs)
    }

    /// Every input of the run is hashed: the stat cache is saved and keeps in
    /// memory only the entries of big files (see [`StatCache::save_and_trim`]).
    pub fn trim_stat_cache(&self) -> anyhow::Result<()> {
        let mut cache = self.stat_cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.save_and_trim()
    }

    /// Persist the stat cache and tool identities.
    pub fn save_caches(&mut self) -> anyhow::Result<()> {
        self.stat_cache.lock().unwrap().save()?;
        self.tool_ids.save()
    }

    /// [`Session::save_caches`] at the end of a run: the stat cache's memory is
    /// given back (it is read again from its file if needed).
    pub fn save_caches_and_forget(&mut self) -> anyhow::Result<()> {
        self.stat_cache.lock().unwrap().save_and_forget()?;
        self.tool_ids.save()
    }

    /// The key material of step `i` given its upstream outputs; `Err` when a tool
    /// or a secret is missing.
    pub fn material<'u>(
        &self,
        prepared: &Prepared,
        i: usize,
        upstream: impl IntoIterator<Item = (&'u str, Hash)>,
    ) -> Result<KeyMaterial, String> {
        let s = &self.workflow.steps[i];
        let tools = prepared.tools.get(i).map_err(str::to_string)?.to_vec();
        let extra = prepared.extra.get(i).map_err(str::to_string)?.to_vec();
        let env =
            sorted((s.env().iter().map(|(k, v)| (k.clone(), v.clone()))).chain(
                (s.env_used().iter()).map(|(k, v)| (format!("${{{{ env.{k} }}}}"), v.clone())),
            ));
        let digests = prepared.inputs.for_key(i)?;
        let digests = crate::input_digests::listed(&digests);
        Ok(KeyMaterial {
            kind: s.kind.to_string(),
            schema_version: s.schema_version,
            fields: s.canonical_fields().to_string(),
            env,
            inputs: sorted(digests.iter().map(|d| (d.label.clone(), d.digest))),
            upstream: sorted(upstream.into_iter().map(|(k, v)| (k.to_string(), v))),
            tools,
            extra,
        })
    }

    /// The key of step `i` given its upstream steps' outputs (sorted by name, as a
    /// map gives them): `material(..).key()` without building the material, which a
    /// step that is cached (most steps of most applies) never needs otherwise.
    pub fn key_of<'u>(
        &self,
        prepared: &Prepared,
        i: usize,
        upstream: impl Iterator<Item = (&'u str, Hash)>,
    ) -> Result<Hash, String> {
        let s = &self.workflow.steps[i];
        let tools = prepared.tools.get(i).map_err(str::to_string)?;
        let extra = prepared.extra.get(i).map_err(str::to_string)?;
        let digests = prepared.inputs.for_key(i)?;
        let digests = crate::input_digests::listed(&digests);
        let inputs_sorted = digests.is_sorted_by(|a, b| a.label < b.label);
        if !s.env_used().is_empty() || !inputs_sorted {
            // `${{ env.X }}` names are made, inputs sorted: the material does both.
            return Ok(self.material(prepared, i, upstream)?.key());
        }
        let mut h = blake3::Hasher::new();
        let mut put = |tag: &str, value: &[u8]| crate::step_key::put_tagged(&mut h, tag, value);
        put("version", crate::step_key::KEY_VERSION.as_bytes());
        put("kind", s.kind.as_bytes());
        put("schema", &s.schema_version.to_le_bytes());
        put("fields", s.canonical_fields().as_bytes());
        for (k, v) in s.env() {
            put("env", k.as_bytes());
            put("env-value", v.as_bytes());
        }
        for d in digests {
            put("input", d.label.as_bytes());
            put("input-digest", &d.digest.0);
        }
        for (k, v) in upstream {
            put("upstream", k.as_bytes());
            put("upstream-output", &v.0);
        }
        for (k, v) in tools {
            put("tool", k.as_bytes());
            put("tool-identity", v.as_bytes());
        }
        for (k, v) in extra {
            put("extra", k.as_bytes());
            put("extra-value", v.as_bytes());
        }
        Ok(Hash(*h.finalize().as_bytes()))
    }

    /// Kill the processes that runs interrupted by a kill of qflow left
    /// behind (see `leftovers.rs`). Call with the cache lock held.
    pub fn stop_leftovers(&self, progress: &crate::progress::Progress) {
        // The journals of ended runs fold into one (none when nothing is open).
        let _ = self.cache.compact_started();
        let marks = self.cache.started_marks();
        let found: Vec<(&str, &str)> = marks
            .iter()
            .filter_map(|(_, note)| crate::leftovers::parse_note(note))
            .collect();
        if found.is_empty() {
            return;
        }
        let tokens: Vec<&str> = found.iter().map(|(t, _)| *t).collect();
        let killed = crate::leftovers::kill_holders(&tokens);
        if !killed.is_empty() {
            let mut steps: Vec<&str> = found.iter().map(|(_, s)| *s).collect();
            steps.sort_unstable();
            steps.dedup();
            let programs: Vec<String> = killed
                .iter()
                .map(|(pid, name)| format!("{name} ({pid})"))
                .collect();
            progress.event(&format!(
                "stopped {} processes left behind by an interrupted run of {}: {}",
                killed.len(),
                steps.join(", "),
                programs.join(", ")
            ));
        }
    }

    /// Read the started marks again (after waiting for another run).
    pub fn reload_interrupted(&mut self) {
        self.interrupted = self.cache.started_keys();
    }

    /// The fast path of a no-op apply: the lock entry of step `i` has this very
    /// key, the cache still holds a record for it and the output tree it names.
    /// Then the entry is the result, without reading or parsing the record: the
    /// step's output hash comes back, and its lock entry stays as it is.
    /// `probe` is this session's cache, asked through open handles.
    ///
    /// The lock is never trusted over the record it names: the record for `key`
    /// must name the same output, and the tree must be unchanged since it was
    /// committed (a damaged tree is removed here, and the step runs again).
    pub fn cached_from_lock(&self, i: usize, key: &Hash, probe: &CacheProbe) -> Option<Hash> {
        let output = self.locked_output(i, key)?;
        (probe.has_tree(&output)
            && self.cache.record_names(key, &output)
            && (self.cache.tree_unchanged(&output) || self.cache.has_tree(&output)))
        .then_some(output)
    }

    /// Where the settled stamp of this workflow's `out/` links lives (see `out_links.rs`).
    pub fn settled_stamp(&self) -> std::path::PathBuf {
        let name = Hash::of_bytes(self.lock_path.as_os_str().as_encoded_bytes());
        self.cache.dir("state").join("settled").join(name.to_hex())
    }

    /// The blake3 of the lock file as this session read it.
    pub fn lock_digest(&self) -> Option<Hash> {
        self.lock.digest
    }

    /// The output the lock names for step `i` if its entry has this very key and
    /// the step may be cached; whether the cache still has it is not asked.
    pub fn locked_output(&self, i: usize, key: &Hash) -> Option<Hash> {
        let s = &self.workflow.steps[i];
        let (locked_key, locked_output) = (*self.lock.index.steps.get(&s.name)?)?;
        if !s.cache || locked_key != *key || self.was_interrupted(key) {
            return None;
        }
        Some(locked_output)
    }

    /// Step `i`'s kept state directory (`$QFLOW_STATE`), of this machine's cache.
    pub fn state_dir_of(&self, i: usize) -> std::path::PathBuf {
        let s = &self.workflow.steps[i];
        self.cache
            .dir("state")
            .join(&self.workflow.name)
            .join(&s.name)
    }

    /// Whether a run of step `key` was started and never finished.
    pub fn was_interrupted(&self, key: &Hash) -> bool {
        !self.interrupted.is_empty() && self.interrupted.contains(&key.to_hex())
    }

    /// A record for `key` whose output tree is present (restored from objects if needed).
    ///
    /// The tree's stamp proves it unchanged since it was committed (one `lstat`
    /// per path); a tree changed since is removed with its damaged objects, and
    /// the step runs again. `qflow verify --cache` re-hashes everything.
    pub fn usable_record(&self, key: &Hash) -> Option<Record> {
        if self.was_interrupted(key) {
            return None;
        }
        let rec = self.cache.get_record(key).ok()??;
        if self.cache.tree_unchanged(&rec.output) || self.cache.has_tree_for(&rec.manifest) {
            return Some(rec);
        }
        self.cache.restore_tree(&rec.manifest).ok().map(|_| rec)
    }

    /// Why step `i` with key `key` runs: a diff of its key material against the
    /// lock's entry. The material is made only for that diff: a step that never
    /// ran (every step of a first apply) needs none, and the material of a step
    /// below 10,000 others names each of them.
    pub fn reasons(
        &self,
        prepared: &Prepared,
        i: usize,
        key: &Hash,
        material: impl FnOnce() -> Result<KeyMaterial, String>,
    ) -> Vec<crate::run_record::Reason> {
        let s = &self.workflow.steps[i];
        let key = *key;
        let mut reasons = Vec::new();
        if !s.cache {
            reasons.push("`cache: false`: always runs".into());
        }
        if self.was_interrupted(&key) {
            reasons.push("its previous run was interrupted".into());
        }
        // The same key as its entry's: known from the index, without reading the
        // entry back (the last step of a fan of 10,000 has 10,000 upstream steps in it).
        if let Some(Some((locked, _))) = self.lock.index.steps.get(&s.name)
            && *locked == key
        {
            if reasons.is_empty() {
                reasons.push(NO_LONGER_CACHED.into());
            }
            return reasons;
        }
        let Some(old) = self.lock_entry(&s.name) else {
            if reasons.is_empty() {
                reasons.push("never ran (no entry in the lock file)".into());
            }
            return reasons;
        };
        if old.key == key.to_hex() {
            if reasons.is_empty() {
                reasons.push(NO_LONGER_CACHED.into());
            }
            return reasons;
        }
        let m = match material() {
            Ok(m) => m,
            Err(e) => {
                reasons.push(crate::run_record::Reason::Owned(format!(
                    "cannot compute its key: {e}"
                )));
                return reasons;
            }
        };
        if old.kind != m.kind || old.schema_version != m.schema_version {
            reasons.push(crate::run_record::Reason::Owned(format!(
                "kind changed: {} v{} → {} v{}",
                old.kind, old.schema_version, m.kind, m.schema_version
            )));
        }
        for (k, v) in s.vars_used() {
            match old.vars.get(k) {
                Some(ov) if ov != v => reasons.push(crate::run_record::Reason::Owned(format!(
                    "var `{k}` changed: {ov:?} → {v:?}"
                ))),
                None => reasons.push(crate::run_record::Reason::Owned(format!(
                    "now uses var `{k}` = {v:?}"
                ))),
                _ => {}
            }
        }
        let new_fields: serde_json::Value =
            crate::masking::mask_urls_in_json(&serde_json::from_str(&m.fields).unwrap_or_default());
        let mut field_diffs = Vec::new();
        diff_json("", &old.fields, &new_fields, &mut field_diffs);
        let var_values: Vec<&String> = s.vars_used().values().collect();
        for d in field_diffs {
            // A field diff fully explained by a var change was already reported.
            if s.vars_used().is_empty() || !var_values.iter().any(|v| d.contains(v.as_str())) {
                reasons.push(d.into());
            }
        }
        let listings = self.cache.dir("inputs");
        let digests = prepared.inputs.digests(i);
        let current: BTreeMap<&str, &InputDigest> = (crate::input_digests::listed(&digests).iter())
            .map(|d| (d.label.as_str(), d))
            .collect();
        for (label, d) in &current {
            match old.inputs.get(*label) {
                None => reasons.push(crate::run_record::Reason::Owned(format!(
                    "new input `{label}`"
                ))),
                Some(h) if *h != d.digest.to_hex() => {
                    reasons.push(describe_input_change(&listings, label, h, d).into());
                }
                _ => {}
            }
        }
        for label in old.inputs.keys() {
            if !current.contains_key(label.as_str()) {
                reasons.push(crate::run_record::Reason::Owned(format!(
                    "input `{label}` is no longer declared"
                )));
            }
        }
        for (k, v) in &m.env {
            if old.env.get(k).map(String::as_str) != Some(digest_text(v).as_str()) {
                reasons.push(crate::run_record::Reason::Owned(format!(
                    "env `{k}` changed"
                )));
            }
        }
        for (t, id) in &m.tools {
            match old.tools.get(t) {
                Some(o) if o != id => reasons.push(crate::run_record::Reason::Owned(format!(
                    "tool `{t}` changed: {o} → {id}"
                ))),
                None => reasons.push(crate::run_record::Reason::Owned(format!(
                    "now runs tool `{t}` ({id})"
                ))),
                _ => {}
            }
        }
        for (u, h) in &m.upstream {
            match old.upstream.get(u) {
                Some(o) if *o != h.to_hex() => {
                    reasons.push(crate::run_record::Reason::Owned(format!(
                        "output of upstream `{u}` changed: {} → {}",
                        &o[..12.min(o.len())],
                        h.short()
                    )))
                }
                None => reasons.push(crate::run_record::Reason::Owned(format!(
                    "now depends on `{u}`"
                ))),
                _ => {}
            }
        }
        if old.extra != m.extra_digest().map(|h| h.to_hex()) {
            reasons.push("a secret or derived value changed (e.g. a password file)".into());
        }
        if reasons.is_empty() {
            reasons
                .push("its key changed (qflow's key encoding or a kind's schema changed)".into());
        }
        reasons
    }

    /// The lock entry of completed step `i` with key `key` and material `m`,
    /// without its `inputs` and `upstream`: those are written through
    /// [`crate::lockfile::EntryView::with_digests`].
    pub fn locked_step_but_digests(
        &self,
        i: usize,
        m: &KeyMaterial,
        key: &Hash,
        rec: &Record,
    ) -> LockedStep {
        let s = &self.workflow.steps[i];
        let mut outputs = BTreeMap::new();
        for e in &rec.manifest.entries {
            if let qflow_cache::EntryKind::File { hash, .. } = &e.kind {
                outputs.insert(e.path.clone(), hash.to_hex());
            }
        }
        let notes = rec
            .meta
            .get("notes")
            .and_then(|n| serde_json::from_value::<BTreeMap<String, String>>(n.clone()).ok())
            .unwrap_or_default();
        LockedStep {
            kind: m.kind.clone(),
            schema_version: m.schema_version,
            key: key.to_hex(),
            // Credentials inside URLs never land in the lock (the key has them).
            fields: crate::masking::mask_urls_in_json(
                &serde_json::from_str(&m.fields).unwrap_or_default(),
            ),
            vars: s.vars_used().clone(),
            env: m
                .env
                .iter()
                .map(|(k, v)| (k.clone(), digest_text(v)))
                .collect(),
            inputs: BTreeMap::new(),
            upstream: BTreeMap::new(),
            tools: m.tools.iter().cloned().collect(),
            extra: m.extra_digest().map(|h| h.to_hex()),
            output: rec.output.to_hex(),
            outputs,
            notes,
            metrics: self.recorded_metrics(i, &rec.output),
        }
    }

    /// Step `i`'s metric values in its output tree `output`, as its lock entry
    /// keeps them; none for a step without `metrics:`.
    fn recorded_metrics(&self, i: usize, output: &Hash) -> BTreeMap<String, f64> {
        if self.workflow.steps[i].step.metrics().is_empty() {
            return BTreeMap::new();
        }
        crate::results::StepMetrics::read(&self.cache.tree_path(output))
            .map(|m| m.flat())
            .unwrap_or_default()
    }
}

/// The lock size from which the memory reading it freed is given back at once
/// (about 1,500 steps).
const GIVE_BACK_AFTER_LOCK: u64 = 1 << 20;

/// The last lock: indexed at once, parsed in full on first use. A no-op apply
/// needs only the index (each step's key and output).
struct LastLock {
    index: LockIndex,
    /// The lock file, kept open instead of its bytes (a 10,000-step lock is 6 MB,
    /// a 50,000-step one 30 MB): read again for the few entries a run asks and the
    /// unchanged entries the lock writer copies (`lock_source.rs`).
    source: Option<Arc<LockSource>>,
    /// The blake3 of the bytes.
    digest: Option<Hash>,
    full: std::sync::OnceLock<LockFile>,
    /// The entries located (when the lock is laid out as qflow writes it), while
    /// its bytes were at hand.
    text: Option<crate::lockfile::LockText>,
}

/// Why a step whose key is its lock entry's runs.
const NO_LONGER_CACHED: &str =
    "its result is no longer in the cache (removed by `qflow gc` or `qflow clean`)";

impl LastLock {
    /// Read the lock at `path`. Its index comes from the memo in `memos` when
    /// that was made from the same bytes (a 1,000-step lock is 800 KB of JSON;
    /// hashing it costs a tenth of parsing it), else from parsing, and is
    /// then kept there.
    /// The lock is hashed and its entries found a piece at a time; it is read whole
    /// only to be parsed, when the memo does not answer.
    fn read(path: &Path, memos: &Path) -> LastLock {
        let Ok(source) = LockSource::open(path) else {
            return LastLock::none();
        };
        let Ok(digest) = source.hash() else {
            return LastLock::none();
        };
        let memo = memos.join(lock_memo_name(path));
        let kept = std::fs::File::open(&memo).ok().and_then(|file| {
            let len = file.metadata().ok()?.len() as usize;
            LockIndex::read_memo(std::io::BufReader::new(file), len, &digest)
        });
        let index = match kept {
            Some(index) => index,
            None => {
                let index = LockIndex::parse_from(source.reader());
                if source.unchanged().is_err() {
                    return LastLock::none();
                }
                let _ = std::fs::create_dir_all(memos);
                let _ =
                    qflow_cache::write_hint_with(&memo, |out| index.write_memo_to(&digest, out));
                index
            }
        };
        let source = Arc::new(source);
        let text = crate::lockfile::LockText::split_from(source.clone(), &index);
        LastLock {
            index,
            source: Some(source),
            digest: Some(digest),
            full: std::sync::OnceLock::new(),
            text,
        }
    }

    /// No lock.
    fn none() -> LastLock {
        LastLock {
            index: LockIndex::default(),
            source: None,
            digest: None,
            full: std::sync::OnceLock::new(),
            text: None,
        }
    }

    fn of(lock: LockFile) -> LastLock {
        let last = LastLock {
            index: LockIndex::of(&lock),
            ..LastLock::none()
        };
        let _ = last.full.set(lock);
        last
    }

    /// The lock's bytes again, when they are still those read and hashed.
    fn bytes(&self) -> Option<Vec<u8>> {
        let bytes = self.source.as_ref()?.read_all().ok()?;
        (Some(Hash::of_bytes_parallel(&bytes)) == self.digest).then_some(bytes)
    }

    fn text(&self) -> Option<&crate::lockfile::LockText> {
        self.text.as_ref()
    }

    fn full(&self) -> &LockFile {
        self.full.get_or_init(|| {
            // Changed in place since it was read (not by qflow): as it is now.
            let bytes = (self.bytes()).or_else(|| self.source.as_ref()?.read_current().ok());
            bytes.as_deref().map(LockFile::parse).unwrap_or_default()
        })
    }
}

/// The file name of the index memo of the lock at `path`.
fn lock_memo_name(path: &Path) -> String {
    Hash::of_bytes(path.as_os_str().as_encoded_bytes()).to_hex()
}

/// Env values enter the lock as digests: they may hold secrets.
fn digest_text(v: &str) -> String {
    format!("blake3:{}", Hash::of_bytes(v.as_bytes()).short())
}

fn describe_input_change(listings: &Path, label: &str, old_hex: &str, d: &InputDigest) -> String {
    let old = old_hex
        .parse::<Hash>()
        .ok()
        .and_then(|h| inputs::load_listing(listings, &h));
    let Some(old) = old else {
        return format!("input `{label}` changed");
    };
    let Some(new) = inputs::listing(listings, d) else {
        return format!("input `{label}` changed");
    };
    let mut changed = Vec::new();
    for (rel, v) in &new {
        match old.get(rel) {
            None => changed.push(format!("+{}", show_rel(label, rel))),
            Some(o) if o != v => changed.push(show_rel(label, rel)),
            _ => {}
        }
    }
    for rel in old.keys() {
        if !new.contains_key(rel) {
            changed.push(format!("-{}", show_rel(label, rel)));
        }
    }
    let n = changed.len();
    changed.truncate(10);
    let more = if n > 10 {
        format!(" and {} more", n - 10)
    } else {
        String::new()
    };
    if changed.is_empty() {
        format!("input `{label}` changed")
    } else {
        format!("input `{label}` changed: {}{more}", changed.join(", "))
    }
}

fn show_rel(label: &str, rel: &str) -> String {
    if rel.is_empty() {
        label.to_string()
    } else {
        format!("{}/{rel}", label.trim_end_matches('/'))
    }
}

/// Field-level differences between two JSON values, as `field `a.b`: old → new`.
fn diff_json(path: &str, old: &serde_json::Value, new: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value as J;
    match (old, new) {
        (J::Object(a), J::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => diff_json(&p, x, y, out),
                    (None, Some(y)) => out.push(format!("field `{p}` added: {}", short_json(y))),
                    (Some(x), None) => {
                        out.push(format!("field `{p}` removed (was {})", short_json(x)))
                    }
                    (None, None) => {}
                }
            }
        }
        (J::Array(a), J::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff_json(&format!("{path}[{i}]"), x, y, out);
            }
        }
        (a, b) if a != b => {
            let p = if path.is_empty() {
                "fields".to_string()
            } else {
                path.to_string()
            };
            out.push(format!(
                "field `{p}` changed: {} → {}",
                short_json(a),
                short_json(b)
            ));
        }
        _ => {}
    }
}

fn short_json(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lockfile::{LOCK_VERSION, LockedStep};

    fn lock_of(steps: &[(&str, &str)]) -> LockFile {
        let mut lock = LockFile {
            version: LOCK_VERSION,
            workflow: "w".into(),
            ..Default::default()
        };
        for (name, text) in steps {
            let entry = LockedStep {
                kind: "note".into(),
                schema_version: 1,
                key: Hash::of_bytes(name.as_bytes()).to_hex(),
                fields: serde_json::json!({ "text": text }),
                output: Hash::of_bytes(text.as_bytes()).to_hex(),
                ..Default::default()
            };
            lock.steps.insert(name.to_string(), entry);
        }
        lock
    }

    #[test]
    fn the_last_lock_gives_its_entries_and_whole_file_in_either_order() {
        let dir = std::env::temp_dir().join(format!("qflow-last-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let lock = lock_of(&[("a", "one"), ("b", "two")]);
        let path = dir.join("qflow.lock");
        lock.write(&path).unwrap();
        let memos = dir.join("memos");
        // As qflow writes it: split into entries, read again from the file.
        let last = LastLock::read(&path, &memos);
        assert_eq!(
            last.text().unwrap().entry("b"),
            lock.steps.get("b").cloned()
        );
        assert_eq!(*last.full(), lock);
        let last = LastLock::read(&path, &memos);
        assert_eq!(*last.full(), lock);
        assert!(last.text().is_some());
        // Edited by hand (compact): not split, still read whole.
        std::fs::write(&path, serde_json::to_vec(&lock).unwrap()).unwrap();
        let last = LastLock::read(&path, &memos);
        assert!(last.text().is_none());
        assert_eq!(*last.full(), lock);
        assert_eq!(last.index, LockIndex::of(&lock));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
