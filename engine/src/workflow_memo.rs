//! A memo of a loaded workflow, so a no-op apply of a large workflow does not
//! parse and validate its YAML again (for 1,000 steps that was most of the run).
//!
//! What loading depends on, and so what the memo is keyed on (blake3, each item
//! length-prefixed): the memo format version; the qflow version and the identity
//! of the running executable (its size, mtime, inode and device, so a rebuilt
//! binary with changed validation misses); the workflow's absolute path (its
//! directory is the base of relative paths, its stem the default name); the
//! file's bytes; every `--set VAR=VALUE` in order. A workflow that reads the
//! environment (`${{ env.X }}`) is never memoized: its values would be key
//! material and could be secrets, which must not be written to disk.
//!
//! What loading checks against the host is not memoized but checked again on
//! every hit: each step's fields are parsed by its kind again (the typed step,
//! straight from the canonical JSON of its fields, which the memo keeps and
//! which enters the step key; no YAML value is made),
//! the kind's own `check`, declared outputs, and that every input exists (many
//! inputs in one directory by one listing of it). If any
//! of those fails, the memo is ignored and the full load reports the problem
//! with its `file:line:column`.
//!
//! The memo sits in the cache (`<cache>/workflows/<blake3 of the path>.json`, JSON
//! lines: the key and what is not a step first, then a line per step, parsed across
//! the cores), one per workflow file, replaced on every miss; only a cache directory that
//! already exists gets one. It is written only when it reads back equal to what
//! it memoizes (fields JSON cannot give back, such as a key that is not a
//! string, are never memoized).
//!
//! [`Workflow::load`] lives here: read the file, recall its memo, else parse
//! and validate it (`workflow.rs`) and remember the result. Imports
//! `workflow`, `step`, `step_key` and `glob`; `workflow.rs` does not import it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::step::{CheckContext, Registry};
use crate::workflow::{
    EdgeReason, LoadOptions, RemoteUse, StepDecl, Workflow, check_output_path, inputs_exist,
};

impl Workflow {
    /// Load and validate `path`. Problems in the workflow come back as an
    /// [`InvalidWorkflow`](crate::diagnostic::InvalidWorkflow) inside the error (the binary exits 2 on it).
    pub fn load(
        path: &Path,
        registry: &Registry,
        options: &LoadOptions,
    ) -> anyhow::Result<Workflow> {
        let text = match std::fs::read(path).map(String::from_utf8) {
            Ok(Ok(t)) => t,
            result => {
                let (position, message) = match result {
                    Ok(Err(e)) => {
                        // Not text in UTF-8: say where, not how to pass the file.
                        let bytes = e.as_bytes();
                        let at = e.utf8_error().valid_up_to();
                        let before = &bytes[..at];
                        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
                        let column = at
                            - before
                                .iter()
                                .rposition(|b| *b == b'\n')
                                .map_or(0, |i| i + 1)
                            + 1;
                        (
                            Some(crate::source_map::Position { line, column }),
                            format!(
                                "the workflow is not UTF-8 text: byte 0x{:02x} cannot start a character; \
                                 save the file as UTF-8",
                                bytes[at]
                            ),
                        )
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
                        None,
                        format!(
                            "cannot read workflow `{}` ({e}); pass the workflow file as an argument",
                            path.display()
                        ),
                    ),
                    Err(e) => (
                        None,
                        format!("cannot read workflow `{}` ({e})", path.display()),
                    ),
                    Ok(Ok(_)) => unreachable!("handled above"),
                };
                let d = crate::diagnostic::Diagnostic {
                    file: path.to_path_buf(),
                    position,
                    field: String::new(),
                    message,
                };
                return Err(crate::diagnostic::InvalidWorkflow {
                    diagnostics: vec![d],
                }
                .into());
            }
        };
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let memo = options.memo_cache.as_ref().map(|cache| {
            (
                memo_path(cache, &path),
                MemoKey::new(&path, &text, &options.set),
            )
        });
        if let Some((memo, key)) = &memo
            && let Some(workflow) = recall(memo, key, &path, registry)
        {
            crate::timings::mark("recall workflow memo");
            return Ok(workflow);
        }
        let workflow = Self::load_text(path, &text, registry, options)?;
        if let Some((memo, key)) = &memo {
            remember(memo, key, &workflow);
        }
        // Parsing a large workflow's YAML left megabytes free in the allocator
        // (5.7 MB at 10,000 steps): given back, they do not add to the run's peak.
        if text.len() > crate::yaml_pieces::CUT_ABOVE {
            drop(text);
            crate::run::give_back_free_memory();
        }
        Ok(workflow)
    }
}

/// Bump when the memo's content or meaning changes.
const MEMO_VERSION: &str = "qflow-workflow-memo 8";

/// The key of one load: everything a loaded workflow depends on besides the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoKey(String);

impl MemoKey {
    /// The key of loading `path` (absolute) with content `text` and these `--set` values.
    pub fn new(path: &Path, text: &str, set: &[(String, String)]) -> MemoKey {
        let mut h = blake3::Hasher::new();
        let mut put = |tag: &str, value: &[u8]| crate::step_key::put_tagged(&mut h, tag, value);
        put("version", MEMO_VERSION.as_bytes());
        put("qflow", env!("CARGO_PKG_VERSION").as_bytes());
        put("executable", executable_identity().as_bytes());
        put("path", path.as_os_str().as_encoded_bytes());
        put("text", text.as_bytes());
        for (k, v) in set {
            put("set", k.as_bytes());
            put("set-value", v.as_bytes());
        }
        MemoKey(h.finalize().to_hex().to_string())
    }
}

/// The running executable as built: a rebuild changes its mtime (and usually its size).
fn executable_identity() -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(exe) = std::env::current_exe() else {
        return String::new();
    };
    match std::fs::metadata(&exe) {
        Ok(m) => format!(
            "{} {} {}.{} {} {}",
            exe.display(),
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ino(),
            m.dev()
        ),
        Err(_) => String::new(),
    }
}

/// The memo file of the workflow at `path` in cache directory `cache`.
pub fn memo_path(cache: &Path, path: &Path) -> PathBuf {
    let id = blake3::hash(path.as_os_str().as_encoded_bytes()).to_hex();
    cache.join("workflows").join(format!("{}.json", &id[..32]))
}

/// A loaded workflow as stored: the steps as validated, without their typed form.
/// On disk, JSON lines: the head (all but the steps), then one line per step, so
/// a recall checks the key before reading any step and parses the steps across
/// the cores.
#[derive(Debug, PartialEq)]
struct WorkflowMemo {
    head: MemoHead,
    steps: Vec<MemoStep>,
}

/// The memo's first line.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct MemoHead {
    key: String,
    name: String,
    vars: BTreeMap<String, String>,
    #[serde(default)]
    placement: crate::slurm::placement::WorkflowPlacement,
}

impl WorkflowMemo {
    /// The memo as JSON lines (JSON escapes every line break inside a string).
    #[cfg(test)]
    fn to_lines(&self) -> Option<Vec<u8>> {
        let mut out = serde_json::to_vec(&self.head).ok()?;
        out.push(b'\n');
        for step in &self.steps {
            serde_json::to_writer(&mut out, step).ok()?;
            out.push(b'\n');
        }
        Some(out)
    }

    /// The head of memo `bytes` and the lines of its steps.
    fn split(bytes: &[u8]) -> Option<(MemoHead, Vec<&[u8]>)> {
        let mut lines = bytes.split(|b| *b == b'\n');
        let head = serde_json::from_slice(lines.next()?).ok()?;
        let steps: Vec<&[u8]> = lines.collect();
        // Written with a line break after every line: the last piece is empty.
        let (last, steps) = steps.split_last()?;
        last.is_empty().then_some((head, steps.to_vec()))
    }

    /// Memo `bytes` read back whole, on one core.
    #[cfg(test)]
    fn from_lines(bytes: &[u8]) -> Option<WorkflowMemo> {
        let (head, lines) = Self::split(bytes)?;
        let steps = (lines.iter())
            .map(|l| serde_json::from_slice(l).ok())
            .collect::<Option<_>>()?;
        Some(WorkflowMemo { head, steps })
    }
}

/// Fields at their defaults are left out: a memo of 10,000 steps is read on every
/// no-op, and most steps have no `env:`, `jobs:` or placement.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct MemoStep {
    name: String,
    kind: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    upstream: Vec<(u32, EdgeReason)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jobs: Option<usize>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    env: BTreeMap<String, String>,
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    cache: bool,
    #[serde(default = "remote_default", skip_serializing_if = "is_remote_default")]
    remote_cache: RemoteUse,
    #[serde(default, skip_serializing_if = "is_default")]
    placement: crate::slurm::placement::StepPlacement,
    /// The kind's fields as canonical JSON, parsed by the kind on every recall.
    fields: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    vars_used: BTreeMap<String, String>,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn yes() -> bool {
    true
}

fn is_yes(value: &bool) -> bool {
    *value
}

fn remote_default() -> RemoteUse {
    RemoteUse::Default
}

fn is_remote_default(value: &RemoteUse) -> bool {
    *value == RemoteUse::Default
}

/// The workflow memoized at `memo` under `key`, with the host checks passed again;
/// `None` on any miss or failed check (then load it fully).
pub fn recall(memo: &Path, key: &MemoKey, path: &Path, registry: &Registry) -> Option<Workflow> {
    let bytes = std::fs::read(memo).ok()?;
    let (head, lines) = WorkflowMemo::split(&bytes)?;
    if head.key != key.0 {
        return None;
    }
    let dir = path.parent()?.to_path_buf();
    let ctx = CheckContext {
        work_dir: dir.clone(),
    };
    // Each step's parse, typed parse and checks are independent: split across the
    // cores, each written into its place in one vector made at its full length (a
    // vector grown piece by piece copied 10,000 steps of 400 bytes several times).
    let failed = std::sync::atomic::AtomicBool::new(false);
    let mut parsed: Vec<Option<StepDecl>> = Vec::new();
    {
        use rayon::prelude::*;
        (lines.into_par_iter().with_min_len(256))
            .map(|line| {
                if failed.load(std::sync::atomic::Ordering::Relaxed) {
                    return None;
                }
                let decl = recall_step(line, registry, &ctx);
                if decl.is_none() {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                decl
            })
            .collect_into_vec(&mut parsed);
    }
    // In place: `Option<StepDecl>` is as large as a `StepDecl`.
    let steps: Vec<StepDecl> = parsed.into_iter().collect::<Option<_>>()?;
    // Upstream steps are named by their places: a memo naming one that is not there
    // is not this workflow's.
    if (steps.iter()).any(|s| s.upstream_ids().any(|u| u >= steps.len())) {
        return None;
    }
    let inputs: Vec<Vec<crate::step::Input>> = steps.iter().map(StepDecl::inputs).collect();
    if !inputs_exist(inputs.iter().flatten(), &ctx) {
        return None;
    }
    drop(inputs);
    Some(Workflow {
        path: path.to_path_buf(),
        dir,
        name: head.name,
        vars: head.vars,
        steps,
        placement: head.placement,
        selection: Default::default(),
    })
}

/// The step memoized on `line`, with its typed parse and checks passed again.
fn recall_step(line: &[u8], registry: &Registry, ctx: &CheckContext) -> Option<StepDecl> {
    let mut s: MemoStep = serde_json::from_slice(line).ok()?;
    s.upstream.shrink_to_fit();
    let kind = registry.get(&s.kind)?;
    let step = kind.parse_json(&s.fields).ok()?;
    step.check(ctx).ok()?;
    if step.outputs().iter().any(|o| check_output_path(o).is_err()) {
        return None;
    }
    Some(StepDecl {
        name: s.name,
        kind: kind.name(),
        schema_version: kind.schema_version(),
        upstream: s.upstream,
        settings: crate::workflow::Settings {
            jobs: s.jobs,
            env: s.env,
            vars_used: s.vars_used,
            env_used: BTreeMap::new(),
        }
        .boxed(),
        cache: s.cache,
        remote_cache: s.remote_cache,
        placement: s.placement.boxed(),
        canonical_fields: s.fields,
        fields_value: None,
        step,
    })
}

/// Memoize `workflow`, loaded under `key`, at `memo`. Does nothing for a workflow
/// that reads the environment or holds values JSON cannot carry; errors are ignored
/// (the memo only saves time).
pub fn remember(memo: &Path, key: &MemoKey, workflow: &Workflow) {
    // A step whose fields JSON cannot give back (a key that is not a string, an
    // infinite float) keeps them as a value: not memoized.
    if (workflow.steps.iter()).any(|s| !s.env_used().is_empty() || s.fields_value.is_some()) {
        return;
    }
    let head = MemoHead {
        key: key.0.clone(),
        name: workflow.name.clone(),
        vars: workflow.vars.clone(),
        placement: workflow.placement.clone(),
    };
    let Some(dir) = memo.parent() else { return };
    // Only inside a cache that exists: loading alone never creates `.qflow/`.
    if !(dir.parent().is_some_and(Path::is_dir) && std::fs::create_dir_all(dir).is_ok()) {
        return;
    }
    // Line by line, each read back before it counts: a memo of 10,000 steps is
    // never held whole, and one that would not give back its workflow is not kept.
    let _ = qflow_cache::write_atomic_with(memo, |out| {
        let mut line = Vec::new();
        write_line(out, &mut line, &head)?;
        for s in &workflow.steps {
            let step = MemoStep {
                name: s.name.clone(),
                kind: s.kind.to_string(),
                upstream: s.upstream.clone(),
                jobs: s.jobs(),
                env: s.env().clone(),
                cache: s.cache,
                remote_cache: s.remote_cache,
                placement: s.placement().clone(),
                fields: s.canonical_fields.clone(),
                vars_used: s.vars_used().clone(),
            };
            write_line(out, &mut line, &step)?;
        }
        Ok(())
    });
}

/// Writes `value` as one JSON line to `out` (through `line`, reused), once it
/// reads back as itself.
fn write_line<T>(out: &mut dyn std::io::Write, line: &mut Vec<u8>, value: &T) -> std::io::Result<()>
where
    T: Serialize + serde::de::DeserializeOwned + PartialEq,
{
    line.clear();
    serde_json::to_writer(&mut *line, value)?;
    match serde_json::from_slice::<T>(line) {
        Ok(back) if back == *value => {}
        _ => {
            return Err(std::io::Error::other(
                "the memo would not read back as written",
            ));
        }
    }
    line.push(b'\n');
    out.write_all(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::LoadOptions;

    /// A kind for these tests: `copy` takes `from` (an input) and `to` (an output).
    #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Copy {
        from: String,
        to: String,
        /// A float, so a test can write one JSON has no form for (`.inf`).
        #[serde(default)]
        #[expect(dead_code, reason = "the tests read it through `Debug` and `fields()`")]
        weight: Option<f64>,
    }

    impl crate::step::Step for Copy {
        fn inputs(&self) -> Vec<crate::step::Input> {
            vec![crate::step::Input::new("from", self.from.clone())]
        }
        fn output_roles(&self) -> Vec<(String, crate::OutputRole)> {
            vec![(self.to.clone(), crate::OutputRole::Artifact)]
        }
        fn run(&self, _ctx: &mut crate::RunContext) -> anyhow::Result<()> {
            anyhow::bail!("these tests only load workflows")
        }
    }

    impl crate::step::StepFields for Copy {
        const KIND: &'static str = "copy";
        const SCHEMA_VERSION: u32 = 1;
        fn kind_tools() -> Vec<crate::Tool> {
            Vec::new()
        }
        fn kind_needs() -> Vec<crate::HostNeed> {
            Vec::new()
        }
    }

    fn registry() -> Registry {
        let mut r = Registry::new();
        r.add(crate::step::KindOf::<Copy>::new());
        r
    }

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn space(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!(
            "qflow-memo-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(d.join(".qflow")).unwrap();
        Dir(d)
    }

    fn options(dir: &Path, set: &[(&str, &str)]) -> LoadOptions {
        LoadOptions {
            set: set
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            memo_cache: Some(dir.join(".qflow")),
        }
    }

    const WORKFLOW: &str = "version: 1\nname: memo\nvars:\n  who: world\nsteps:\n  a:\n    kind: copy\n    from: in.txt\n    to: 'out-${{ who }}.txt'\n  b:\n    kind: copy\n    from: in.txt\n    to: b.txt\n    after: [a]\n";

    fn to_field(w: &Workflow, step: &str) -> String {
        w.step(step).unwrap().fields()["to"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Overwrite the memo's `a.to` with `forged`, keeping its key: a load that returns
    /// `forged` came from the memo.
    fn forge(dir: &Path, workflow: &Path, forged: &str) {
        let memo = memo_path(&dir.join(".qflow"), &std::path::absolute(workflow).unwrap());
        let mut m = WorkflowMemo::from_lines(&std::fs::read(&memo).unwrap()).unwrap();
        let mut fields: serde_json::Value = serde_json::from_str(&m.steps[0].fields).unwrap();
        fields["to"] = serde_json::Value::String(forged.into());
        m.steps[0].fields = fields.to_string();
        std::fs::write(&memo, m.to_lines().unwrap()).unwrap();
    }

    /// The memo file's inode: a load that wrote the memo again replaced the file.
    fn memo_inode(dir: &Path, workflow: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let memo = memo_path(&dir.join(".qflow"), &std::path::absolute(workflow).unwrap());
        std::fs::metadata(memo).unwrap().ino()
    }

    /// A workflow of `n` `copy` steps large enough to be parsed in pieces, in the
    /// forms a person writes: comments between steps, `vars:` after `steps:`, a
    /// step in flow style on its name's line, a block scalar, quoted values.
    fn large_workflow(n: usize) -> String {
        let mut text = String::from("# generated\nversion: 1\nname: big\nsteps:\n");
        for i in 0..n {
            if i % 7 == 0 {
                text.push_str(&format!("  # step {i}\n\n"));
            }
            if i % 11 == 5 {
                text.push_str(&format!(
                    "  s{i}: {{kind: copy, from: in.txt, to: \"o{i}.txt\"}}\n"
                ));
                continue;
            }
            text.push_str(&format!("  s{i}:\n    kind: copy\n    from: 'in.txt'\n"));
            if i % 13 == 3 {
                text.push_str(&format!(
                    "    to: >-\n      o{i}-${{{{ who }}}}\n      .txt\n"
                ));
            } else {
                text.push_str(&format!("    to: o{i}.txt\n"));
            }
            if i > 0 {
                text.push_str(&format!("    after: [s{}]\n", i / 2));
            }
        }
        text.push_str("vars:\n  who: world # a comment\n");
        text
    }

    fn same_steps(a: &Workflow, b: &Workflow) {
        assert_eq!((&a.name, &a.vars), (&b.name, &b.vars));
        assert_eq!(a.steps.len(), b.steps.len());
        for (a, b) in a.steps.iter().zip(&b.steps) {
            assert_eq!(
                (&a.name, &a.kind, &a.upstream),
                (&b.name, &b.kind, &b.upstream)
            );
            assert_eq!(a.canonical_fields(), b.canonical_fields());
            assert_eq!(a.vars_used(), b.vars_used());
            assert_eq!(format!("{:?}", a.step), format!("{:?}", b.step));
        }
    }

    /// Where a workflow reading `in.txt` goes in `d` (absolute, as `load_text` takes it).
    fn beside_its_input(d: &Dir) -> PathBuf {
        std::fs::write(d.0.join("in.txt"), "x").unwrap();
        std::path::absolute(d.0.join("workflow.yaml")).unwrap()
    }

    #[test]
    fn a_large_workflow_parsed_in_pieces_loads_as_it_does_whole() {
        let d = space("pieces");
        let wf = beside_its_input(&d);
        let text = large_workflow(4000);
        assert!(text.len() > crate::yaml_pieces::CUT_ABOVE, "{}", text.len());
        let pieces = crate::yaml_pieces::cut(&text).expect("a block-style workflow is cut");
        assert_eq!(pieces.steps.len(), 4000);
        let r = registry();
        let o = LoadOptions::default();
        let cut = Workflow::load_doc(wf.clone(), &text, Some(&pieces), &r, &o).unwrap();
        let whole = Workflow::load_doc(wf.clone(), &text, None, &r, &o).unwrap();
        same_steps(&cut, &whole);
        assert_eq!(to_field(&cut, "s3"), "o3-world .txt");
        assert_eq!(to_field(&cut, "s5"), "o5.txt");
        // `load_text` takes the pieces for a workflow this large.
        same_steps(&Workflow::load_text(wf, &text, &r, &o).unwrap(), &whole);
    }

    #[test]
    fn an_alias_to_another_steps_anchor_is_read_from_the_whole_document() {
        let d = space("alias");
        let wf = beside_its_input(&d);
        let text = large_workflow(4000)
            .replace(
                "  s1:\n    kind: copy\n    from: 'in.txt'\n",
                "  s1:\n    kind: copy\n    from: &input 'in.txt'\n",
            )
            .replace(
                "  s3999:\n    kind: copy\n    from: 'in.txt'\n",
                "  s3999:\n    kind: copy\n    from: *input\n",
            );
        assert!(text.contains("*input"));
        let pieces = crate::yaml_pieces::cut(&text).unwrap();
        let r = registry();
        let o = LoadOptions::default();
        let err = Workflow::load_doc(wf.clone(), &text, Some(&pieces), &r, &o).unwrap_err();
        assert!(err.is::<crate::yaml_pieces::Uncut>(), "{err:#}");
        let loaded = Workflow::load_text(wf.clone(), &text, &r, &o).unwrap();
        same_steps(
            &loaded,
            &Workflow::load_doc(wf, &text, None, &r, &o).unwrap(),
        );
        assert!(format!("{:?}", loaded.step("s3999").unwrap().step).contains("in.txt"));
    }

    #[test]
    fn a_yaml_error_deep_in_a_large_workflow_is_told_as_for_a_small_one() {
        let d = space("pieces-error");
        let wf = beside_its_input(&d);
        let text = large_workflow(4000).replace("    to: o3000.txt\n", "    to: [o3000.txt\n");
        let r = registry();
        let o = LoadOptions::default();
        let err = format!(
            "{:#}",
            Workflow::load_text(wf.clone(), &text, &r, &o).unwrap_err()
        );
        let whole = format!(
            "{:#}",
            Workflow::load_doc(wf, &text, None, &r, &o).unwrap_err()
        );
        assert_eq!(err, whole);
        let line = 1 + text[..text.find("[o3000.txt").unwrap()]
            .matches('\n')
            .count();
        assert!(
            err.contains(&format!("workflow.yaml:{line}"))
                || err.contains(&format!(":{}:", line + 1)),
            "{err}"
        );
    }

    #[test]
    fn a_mistake_in_one_step_of_a_large_workflow_names_its_line_and_field() {
        let d = space("pieces-field");
        let wf = beside_its_input(&d);
        let text = large_workflow(4000).replace(
            "  s2500:\n    kind: copy\n",
            "  s2500:\n    kind: copy\n    form: x\n",
        );
        let r = registry();
        let o = LoadOptions::default();
        let err = format!(
            "{:#}",
            Workflow::load_text(wf.clone(), &text, &r, &o).unwrap_err()
        );
        let whole = format!(
            "{:#}",
            Workflow::load_doc(wf, &text, None, &r, &o).unwrap_err()
        );
        assert_eq!(err, whole);
        let line = 1 + text[..text.find("    form: x").unwrap()]
            .matches('\n')
            .count();
        assert!(err.contains(&format!("workflow.yaml:{line}:")), "{err}");
        assert!(err.contains("form"), "{err}");
    }

    #[test]
    fn a_memo_hit_gives_the_same_steps_as_a_fresh_load() {
        let d = space("same");
        std::fs::write(d.0.join("in.txt"), "x").unwrap();
        let wf = d.0.join("workflow.yaml");
        let text = WORKFLOW.replace("to: b.txt", "to: b.txt\n    weight: 0.5");
        std::fs::write(&wf, &text).unwrap();
        let r = registry();
        let fresh = Workflow::load(&wf, &r, &LoadOptions::default()).unwrap();
        Workflow::load(&wf, &r, &options(&d.0, &[])).unwrap();
        let written = memo_inode(&d.0, &wf);
        let hit = Workflow::load(&wf, &r, &options(&d.0, &[])).unwrap();
        assert_eq!(memo_inode(&d.0, &wf), written, "the second load missed");
        assert_eq!(hit.steps.len(), fresh.steps.len());
        for (a, b) in fresh.steps.iter().zip(&hit.steps) {
            assert_eq!(a.name, b.name);
            assert_eq!(a.kind, b.kind);
            assert_eq!(a.upstream, b.upstream);
            assert_eq!(a.canonical_fields(), b.canonical_fields());
            assert_eq!(a.fields(), b.fields());
            assert_eq!(format!("{:?}", a.step), format!("{:?}", b.step));
        }
        assert!(format!("{:?}", hit.step("b").unwrap().step).contains("0.5"));
    }

    #[test]
    fn a_memo_whose_fields_no_longer_parse_is_ignored() {
        let d = space("unparsed");
        std::fs::write(d.0.join("in.txt"), "x").unwrap();
        let wf = d.0.join("workflow.yaml");
        std::fs::write(&wf, WORKFLOW).unwrap();
        let r = registry();
        Workflow::load(&wf, &r, &options(&d.0, &[])).unwrap();
        // `to` a number: `copy` takes a string.
        let memo = memo_path(&d.0.join(".qflow"), &std::path::absolute(&wf).unwrap());
        let mut m = WorkflowMemo::from_lines(&std::fs::read(&memo).unwrap()).unwrap();
        m.steps[0].fields = r#"{"from":"in.txt","to":7}"#.to_string();
        std::fs::write(&memo, m.to_lines().unwrap()).unwrap();
        let again = Workflow::load(&wf, &r, &options(&d.0, &[])).unwrap();
        assert_eq!(to_field(&again, "a"), "out-world.txt");
        // The full load wrote the memo again; with the input gone, it reports that.
        m.steps[0].fields = r#"{"from":"in.txt","to":7}"#.to_string();
        std::fs::write(&memo, m.to_lines().unwrap()).unwrap();
        std::fs::remove_file(d.0.join("in.txt")).unwrap();
        let err = Workflow::load(&wf, &r, &options(&d.0, &[])).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("input `in.txt` does not exist"), "{text}");
        assert!(text.contains("workflow.yaml:8:"), "{text}");
    }

    #[test]
    fn fields_json_cannot_give_back_are_kept_as_written_and_not_memoized() {
        let d = space("inf");
        std::fs::write(d.0.join("in.txt"), "x").unwrap();
        let wf = d.0.join("workflow.yaml");
        std::fs::write(
            &wf,
            WORKFLOW.replace("to: b.txt", "to: b.txt\n    weight: .inf"),
        )
        .unwrap();
        let w = Workflow::load(&wf, &registry(), &options(&d.0, &[])).unwrap();
        let weight = w.step("b").unwrap().fields()["weight"].as_f64();
        assert_eq!(weight, Some(f64::INFINITY));
        let resolved = w
            .step("b")
            .unwrap()
            .resolved_fields(&Default::default())
            .unwrap();
        assert_eq!(resolved["weight"].as_f64(), Some(f64::INFINITY));
        let memo = memo_path(&d.0.join(".qflow"), &std::path::absolute(&wf).unwrap());
        assert!(!memo.exists());
    }

    #[test]
    fn an_unchanged_workflow_loads_from_its_memo() {
        let d = space("hit");
        std::fs::write(d.0.join("in.txt"), "x").unwrap();
        let wf = d.0.join("workflow.yaml");
        std::fs::write(&wf, WORKFLOW).unwrap();
        let r = registry();
        let first = Workflow::load(&wf, &r, &options(&d.0, &[])).unwrap();
        assert_eq!(to_field(&first, "a"), "out-world.txt");
        forge(&d.0, &wf, "from-memo.txt");
        let again = Workflow::load(&wf, &r, &options(&d.0, &[])).unwrap();
        assert_eq!(to_field(&again, "a"), "from-memo.txt");
        assert_eq!(
            again
                .upstream_names(again.step("b").unwrap())
                .collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(again.name, "memo");
    }

    #[test]
    fn an_edited_workflow_misses_the_memo() {
        let d = space("edit");
        std::fs::write(d.0.join("in.txt"), "x").unwrap();
        let wf = d.0.join("workflow.yaml");
        std::fs::write(&wf, WORKFLOW).unwrap();
        let r = registry();
        Workflow::load(&wf, &r, &options(&d.0, &[])).unwrap();
        forge(&d.0, &wf, "from-memo.txt");
        // One byte changed: the var's value.
        std::fs::write(&wf, WORKFLOW.replace("who: world", "who: worle")).unwrap();
        let edited = Workflow::load(&wf, &r, &options(&d.0, &[])).unwrap();
        assert_eq!(to_field(&edited, "a"), "out-worle.txt");
    }

    #[test]
    fn a_changed_set_value_misses_the_memo() {
        let d = space("set");
        std::fs::write(d.0.join("in.txt"), "x").unwrap();
        let wf = d.0.join("workflow.yaml");
        std::fs::write(&wf, WORKFLOW).unwrap();
        let r = registry();
        Workflow::load(&wf, &r, &options(&d.0, &[("who", "moon")])).unwrap();
        forge(&d.0, &wf, "from-memo.txt");
        let other = Workflow::load(&wf, &r, &options(&d.0, &[("who", "mars")])).unwrap();
        assert_eq!(to_field(&other, "a"), "out-mars.txt");
        let none = Workflow::load(&wf, &r, &options(&d.0, &[])).unwrap();
        assert_eq!(to_field(&none, "a"), "out-world.txt");
    }

    #[test]
    fn a_deleted_input_is_reported_even_with_a_memo() {
        let d = space("input");
        std::fs::write(d.0.join("in.txt"), "x").unwrap();
        let wf = d.0.join("workflow.yaml");
        std::fs::write(&wf, WORKFLOW).unwrap();
        let r = registry();
        Workflow::load(&wf, &r, &options(&d.0, &[])).unwrap();
        std::fs::remove_file(d.0.join("in.txt")).unwrap();
        let err = Workflow::load(&wf, &r, &options(&d.0, &[])).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("input `in.txt` does not exist"), "{text}");
        assert!(text.contains("workflow.yaml:8:"), "{text}");
    }

    /// A workflow of 40 `copy` steps, each reading its own file of `src/`.
    fn forty_inputs_in_one_directory(d: &Dir) -> PathBuf {
        std::fs::create_dir_all(d.0.join("src")).unwrap();
        let mut text = String::from("version: 1\nsteps:\n");
        for i in 0..40 {
            std::fs::write(d.0.join(format!("src/f{i}")), "x").unwrap();
            text.push_str(&format!(
                "  s{i}:\n    kind: copy\n    from: src/f{i}\n    to: f{i}\n"
            ));
        }
        let wf = d.0.join("workflow.yaml");
        std::fs::write(&wf, &text).unwrap();
        wf
    }

    #[test]
    fn a_deleted_input_among_many_in_one_directory_is_reported_even_with_a_memo() {
        let d = space("many");
        let wf = forty_inputs_in_one_directory(&d);
        let r = registry();
        Workflow::load(&wf, &r, &options(&d.0, &[])).unwrap();
        forge(&d.0, &wf, "from-memo");
        let again = Workflow::load(&wf, &r, &options(&d.0, &[])).unwrap();
        assert_eq!(to_field(&again, "s0"), "from-memo");
        std::fs::remove_file(d.0.join("src/f17")).unwrap();
        let err = Workflow::load(&wf, &r, &options(&d.0, &[])).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("input `src/f17` does not exist"), "{text}");
    }

    #[test]
    fn a_fifo_among_many_inputs_in_one_directory_is_refused_even_with_a_memo() {
        let d = space("fifo");
        let wf = forty_inputs_in_one_directory(&d);
        let r = registry();
        Workflow::load(&wf, &r, &options(&d.0, &[])).unwrap();
        let fifo = d.0.join("src/f17");
        std::fs::remove_file(&fifo).unwrap();
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = Workflow::load(&wf, &r, &options(&d.0, &[])).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("input `src/f17` is not a regular file or directory (a FIFO)"),
            "{text}"
        );
    }

    #[test]
    fn a_workflow_reading_the_environment_is_not_memoized() {
        let d = space("env");
        std::fs::write(d.0.join("in.txt"), "x").unwrap();
        let wf = d.0.join("workflow.yaml");
        // PATH is set wherever tests run.
        std::fs::write(&wf, WORKFLOW.replace("${{ who }}", "${{ env.PATH }}")).unwrap();
        let r = registry();
        Workflow::load(&wf, &r, &options(&d.0, &[])).unwrap();
        let memo = memo_path(&d.0.join(".qflow"), &std::path::absolute(&wf).unwrap());
        assert!(!memo.exists());
    }

    #[test]
    fn loading_without_a_cache_directory_writes_no_memo() {
        let d = space("nocache");
        std::fs::remove_dir_all(d.0.join(".qflow")).unwrap();
        std::fs::write(d.0.join("in.txt"), "x").unwrap();
        let wf = d.0.join("workflow.yaml");
        std::fs::write(&wf, WORKFLOW).unwrap();
        Workflow::load(&wf, &registry(), &options(&d.0, &[])).unwrap();
        assert!(!d.0.join(".qflow").exists());
    }
}
