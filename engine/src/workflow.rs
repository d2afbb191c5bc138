//! The workflow file: parsing, interpolation and validation.
//!
//! Loading does all the checking that can happen before anything runs: YAML
//! syntax, types, unknown fields (with "did you mean"), unknown kinds, unknown
//! steps and vars, outputs escaping the output directory, inputs that do not
//! exist, cycles. Every problem is collected with its `file:line:column`, so a
//! user fixes them all in one pass.
//!
//! Imports `dag`, `diagnostic`, `yaml_error`, `interpolate`, `source_map`, `glob`, `paths`,
//! `step_key`, `timings` and `step`; not `workflow_memo`, which imports it (and
//! holds `Workflow::load`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use serde_yaml::Value;

use crate::dag::{Dag, StepId};
use crate::diagnostic::{Diagnostics, did_you_mean, escaped};
use crate::interpolate::{self, Expr};
use crate::step::{CheckContext, Input, Registry, Step};
use crate::yaml_pieces;

const TOP_LEVEL_FIELDS: &[&str] = &[
    "version", "name", "vars", "steps", "executor", "slurm", "figures",
];
/// The fields every step has whatever its kind: the engine's, never passed to the kind.
pub const COMMON_FIELDS: &[&str] = &[
    "kind",
    "after",
    "jobs",
    "env",
    "cache",
    "remote_cache",
    "executor",
    "resources",
    "retries",
];
/// The step (and kind) the workflow's `figures:` section becomes.
pub const FIGURES: &str = "figures";

/// Why one step depends on another.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum EdgeReason {
    /// `after: [x]`
    After,
    /// `${{ steps.x }}` in a string field.
    Interpolation,
    /// A typed reference field (`image: x`).
    Field(String),
}

/// A loaded, valid workflow.
#[derive(Debug)]
pub struct Workflow {
    /// The workflow file.
    pub path: PathBuf,
    /// Its directory: the working directory of steps and the base of relative paths.
    pub dir: PathBuf,
    /// Its name (`name:`, else the file's stem).
    pub name: String,
    /// `vars:` after `--set` overrides.
    pub vars: BTreeMap<String, String>,
    /// The steps in file order.
    pub steps: Vec<StepDecl>,
    /// `executor:` and `slurm:` (not in any step key).
    pub placement: crate::slurm::placement::WorkflowPlacement,
    /// The steps this command works on (see `selection.rs`): all, unless targets were named.
    pub selection: crate::selection::Selection,
}

/// A step's `remote_cache:` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RemoteUse {
    /// Not written: read, and write unless the step consumes a secret.
    Default,
    /// `true`: read and write, a step that consumes a secret included.
    On,
    /// `pull`: read, never write.
    Pull,
    /// `false`: neither.
    Off,
}

/// One step of a workflow, validated.
#[derive(Debug)]
pub struct StepDecl {
    /// The step's name.
    pub name: String,
    /// Its `kind:` (the registered kind's own name: no copy per step).
    pub kind: &'static str,
    /// The kind's schema version.
    pub schema_version: u32,
    /// Upstream steps (their places in [`Workflow::steps`]) and why (a reference
    /// rather than `after:` when both), in first-mention order, without
    /// duplicates: a place, not a copy of the name (a fan-in below 10,000 steps
    /// held 1.6 MB of names).
    pub upstream: Vec<(u32, EdgeReason)>,
    /// `jobs:`, `env:`, and the vars and environment variables the step reads;
    /// none when all are empty, as for most steps of a large workflow (see
    /// [`StepDecl::jobs`], [`StepDecl::env`], [`StepDecl::vars_used`],
    /// [`StepDecl::env_used`]).
    pub(crate) settings: Option<Box<Settings>>,
    /// `cache: false` makes the step always run.
    pub cache: bool,
    /// `remote_cache:` as written: whether a remote cache is read and written for it.
    pub remote_cache: RemoteUse,
    /// `executor:`, `resources:`, `retries:` (not in the step key); none when
    /// all are at their defaults, as for most steps (see [`StepDecl::placement`]).
    pub(crate) placement: Option<Box<crate::slurm::placement::StepPlacement>>,
    /// The kind's fields after interpolating vars, `${{ env.* }}` and
    /// `${{ steps.* }}` kept as written (resolved by [`StepDecl::resolved_fields`]),
    /// as canonical JSON: what enters the key. A workflow of 10,000 steps keeps
    /// this text, not a YAML value per step; [`StepDecl::fields`] makes the value
    /// again for the few that need it.
    pub(crate) canonical_fields: String,
    /// The fields as a value, kept only when [`StepDecl::canonical_fields`] could not
    /// give them back (a key that is not a string, an infinite float).
    pub(crate) fields_value: Option<Box<Value>>,
    /// The parsed fields (step references unresolved): inputs, outputs, tools, plan.
    pub step: Box<dyn Step>,
}

/// What a step sets or reads beyond its kind's fields.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Settings {
    /// `jobs:` as written (None: the kind's default).
    pub jobs: Option<usize>,
    /// `env:` after interpolation.
    pub env: BTreeMap<String, String>,
    /// Vars the step reads, with their values (they enter the key through `fields`).
    pub vars_used: BTreeMap<String, String>,
    /// Environment variables the step reads through `${{ env.X }}`.
    pub env_used: BTreeMap<String, String>,
}

impl Settings {
    /// These settings, or none when all are empty.
    pub(crate) fn boxed(self) -> Option<Box<Settings>> {
        (self != Settings::default()).then(|| Box::new(self))
    }
}

/// How many inputs a load gathers before checking that they exist (together,
/// so that many files of one directory are found in one listing of it).
const INPUTS_CHECKED_TOGETHER: usize = 4096;

/// No variables.
static NONE: BTreeMap<String, String> = BTreeMap::new();

impl StepDecl {
    /// `jobs:` as written (None: the kind's default).
    pub fn jobs(&self) -> Option<usize> {
        self.settings.as_ref().and_then(|s| s.jobs)
    }

    /// `env:` after interpolation.
    pub fn env(&self) -> &BTreeMap<String, String> {
        self.settings.as_ref().map_or(&NONE, |s| &s.env)
    }

    /// Vars this step reads, with their values (they enter the key through `fields`).
    pub fn vars_used(&self) -> &BTreeMap<String, String> {
        self.settings.as_ref().map_or(&NONE, |s| &s.vars_used)
    }

    /// Environment variables this step reads through `${{ env.X }}`.
    pub fn env_used(&self) -> &BTreeMap<String, String> {
        self.settings.as_ref().map_or(&NONE, |s| &s.env_used)
    }

    /// `executor:`, `resources:` and `retries:` as written.
    pub fn placement(&self) -> &crate::slurm::placement::StepPlacement {
        static DEFAULT: std::sync::LazyLock<crate::slurm::placement::StepPlacement> =
            std::sync::LazyLock::new(Default::default);
        self.placement.as_deref().unwrap_or(&DEFAULT)
    }

    /// The step's declared inputs ([`Step::inputs`]), made on each call: an apply
    /// asks a few times a step, and a workflow of 10,000 steps that kept them held
    /// 1.7 MB of them.
    pub fn inputs(&self) -> Vec<crate::step::Input> {
        self.step.inputs()
    }

    /// Whether the step declares inputs, without making them.
    pub fn has_inputs(&self) -> bool {
        self.step.has_inputs()
    }

    /// The fields as canonical JSON (keys sorted, no spaces), the form that enters the step key.
    pub fn canonical_fields(&self) -> &str {
        &self.canonical_fields
    }

    /// The kind's fields after interpolating vars; `${{ env.* }}` and
    /// `${{ steps.* }}` kept as written (resolved by [`StepDecl::resolved_fields`]).
    /// Made from the canonical JSON on each call (mappings in key order), unless
    /// that JSON could not give them back.
    pub fn fields(&self) -> std::borrow::Cow<'_, Value> {
        match &self.fields_value {
            Some(v) => std::borrow::Cow::Borrowed(v),
            None => std::borrow::Cow::Owned(
                serde_json::from_str(&self.canonical_fields).unwrap_or(Value::Null),
            ),
        }
    }

    /// Keep `fields` (made at load) as canonical JSON, and as a value only
    /// when that JSON cannot give them back.
    pub(crate) fn stored_fields(fields: Value) -> (String, Option<Box<Value>>) {
        let canonical = crate::step_key::canonical_json(&fields);
        let value = (!json_gives_back(&fields)).then(|| Box::new(fields));
        (canonical, value)
    }

    /// The places of its upstream steps in [`Workflow::steps`].
    pub fn upstream_ids(&self) -> impl Iterator<Item = usize> + '_ {
        self.upstream.iter().map(|&(i, _)| i as usize)
    }

    /// The places of the upstream steps whose outputs it uses (referenced by a
    /// field or `${{ steps.X }}`, not only ordered by `after:`).
    pub fn used_upstream_ids(&self) -> impl Iterator<Item = usize> + '_ {
        (self.upstream.iter())
            .filter(|(_, why)| *why != EdgeReason::After)
            .map(|&(i, _)| i as usize)
    }

    /// What hides this step's `${{ env.X }}` values and URL credentials in
    /// text shown or stored (see `masking.rs`).
    pub fn mask(&self) -> crate::masking::Mask {
        crate::masking::Mask::of_env(self.env_used())
    }

    /// Fields with every `${{ steps.X[.OUT] }}` replaced by `dirs[X][/OUT]`
    /// and every `${{ env.X }}` by the value read when the workflow was loaded.
    pub fn resolved_fields(&self, dirs: &crate::context::UpstreamDirs) -> anyhow::Result<Value> {
        map_strings(&self.fields(), &mut |s| {
            interpolate::substitute(s, &mut |e| match e {
                Expr::Env(name) => Ok(self.env_used().get(name).cloned()),
                Expr::Step { name, output } => {
                    let dir = dirs
                        .get(name)
                        .ok_or_else(|| format!("no output for step `{name}`"))?;
                    let p = match output {
                        Some(o) => dir.join(o),
                        None => dir,
                    };
                    Ok(Some(p.to_string_lossy().into_owned()))
                }
                _ => Ok(None),
            })
        })
        .map_err(|e| anyhow::anyhow!(e))
    }
}

/// Whether `v` comes back equal from its canonical JSON, but for the order of
/// mapping keys (no kind's fields depend on it): no tags, every mapping key a
/// string, every float finite.
fn json_gives_back(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(_) | Value::String(_) => true,
        Value::Number(n) => !n.is_f64() || n.as_f64().is_some_and(f64::is_finite),
        Value::Sequence(items) => items.iter().all(json_gives_back),
        Value::Mapping(m) => m
            .iter()
            .all(|(k, v)| matches!(k, Value::String(_)) && json_gives_back(v)),
        Value::Tagged(_) => false,
    }
}

/// Apply `f` to every string (not mapping keys) of a YAML value.
fn map_strings(
    v: &Value,
    f: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => Value::String(f(s)?),
        Value::Sequence(items) => Value::Sequence(
            items
                .iter()
                .map(|i| map_strings(i, f))
                .collect::<Result<_, _>>()?,
        ),
        Value::Mapping(m) => {
            let mut out = serde_yaml::Mapping::new();
            for (k, val) in m {
                out.insert(k.clone(), map_strings(val, f)?);
            }
            Value::Mapping(out)
        }
        Value::Tagged(t) => map_strings(&t.value, f)?,
        other => other.clone(),
    })
}

/// Rebuild a YAML value, replacing each string by `f(path, string)`.
fn map_strings_at(v: &Value, path: &str, f: &mut dyn FnMut(&str, &str) -> String) -> Value {
    match v {
        Value::String(s) => Value::String(f(path, s)),
        Value::Sequence(items) => Value::Sequence(
            items
                .iter()
                .enumerate()
                .map(|(i, it)| map_strings_at(it, &format!("{path}[{i}]"), f))
                .collect(),
        ),
        Value::Mapping(m) => {
            let mut out = serde_yaml::Mapping::new();
            for (k, val) in m {
                let p = format!("{path}.{}", key_text(k));
                out.insert(k.clone(), map_strings_at(val, &p, f));
            }
            Value::Mapping(out)
        }
        Value::Tagged(t) => map_strings_at(&t.value, path, f),
        other => other.clone(),
    }
}

/// Visit every string with its path (for interpolation errors at the right line).
fn visit_strings(v: &Value, path: &str, f: &mut dyn FnMut(&str, &str)) {
    match v {
        Value::String(s) => f(path, s),
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                visit_strings(item, &format!("{path}[{i}]"), f);
            }
        }
        Value::Mapping(m) => {
            for (k, val) in m {
                let key = key_text(k);
                visit_strings(val, &format!("{path}.{key}"), f);
            }
        }
        Value::Tagged(t) => visit_strings(&t.value, path, f),
        _ => {}
    }
}

fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Options that change how a workflow loads.
#[derive(Debug, Default, Clone)]
pub struct LoadOptions {
    /// `--set VAR=VALUE` overrides, in command-line order.
    pub set: Vec<(String, String)>,
    /// The cache directory that may hold a memo of this load (see `workflow_memo`).
    pub memo_cache: Option<PathBuf>,
}

impl Workflow {
    /// Parse and validate `text`, the content of the workflow at `path`
    /// (absolute). [`Workflow::load`] (in `workflow_memo.rs`) reads the file
    /// and asks the memo first.
    pub fn load_text(
        path: PathBuf,
        text: &str,
        registry: &Registry,
        options: &LoadOptions,
    ) -> anyhow::Result<Workflow> {
        if text.len() > yaml_pieces::CUT_ABOVE
            && let Some(pieces) = yaml_pieces::cut(text)
        {
            match Self::load_doc(path.clone(), text, Some(&pieces), registry, options) {
                Err(e) if e.is::<yaml_pieces::Uncut>() => {}
                loaded => return loaded,
            }
        }
        Self::load_doc(path, text, None, registry, options)
    }

    /// [`Self::load_text`] of the whole document, or of its `pieces`
    /// ([`yaml_pieces::Uncut`] when they do not parse as the whole would).
    pub(crate) fn load_doc(
        path: PathBuf,
        text: &str,
        pieces: Option<&yaml_pieces::Pieces<'_>>,
        registry: &Registry,
        options: &LoadOptions,
    ) -> anyhow::Result<Workflow> {
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let shown = crate::paths::shown(&path);
        let mut diags = Diagnostics::new(&shown, text);

        let doc: Value = match pieces {
            Some(pieces) => Value::Mapping(yaml_pieces::top_mapping(pieces)?),
            None => match serde_yaml::from_str(text) {
                Ok(v) => v,
                Err(e) => {
                    let (position, msg) = crate::yaml_error::explain(&e, text);
                    diags.at_position(position, msg);
                    return Err(diags.finish().unwrap_err().into());
                }
            },
        };
        let tagged = crate::yaml_error::tagged_values(&doc, text);
        if !tagged.is_empty() {
            for t in tagged {
                diags.at_place(&t.path, t.position, t.message);
            }
            return Err(diags.finish().unwrap_err().into());
        }
        crate::timings::mark("yaml parse");
        let Value::Mapping(top) = &doc else {
            diags.at_position(
                None,
                "a workflow is a mapping with `version: 1`, `name`, `vars` and `steps`",
            );
            return Err(diags.finish().unwrap_err().into());
        };
        for k in top.keys() {
            let k = key_text(k);
            if !TOP_LEVEL_FIELDS.contains(&k.as_str()) {
                diags.at(
                    &k,
                    format!(
                        "unknown field `{}`{}",
                        escaped(&k),
                        hint(&k, TOP_LEVEL_FIELDS)
                    ),
                );
            }
        }
        match top.get("version") {
            Some(Value::Number(n)) if n.as_u64() == Some(1) => {}
            Some(v) => diags.at(
                "version",
                format!(
                    "unsupported version {}; this qflow reads `version: 1`",
                    short(v)
                ),
            ),
            None => diags.at_position(None, "missing `version: 1` at the top of the workflow"),
        }
        let name = match top.get("name") {
            None => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "workflow".into()),
            Some(Value::String(s)) if valid_name(s) => s.clone(),
            Some(v) => {
                diags.at(
                    "name",
                    format!(
                        "`name` must be a word of letters, digits, `-` or `_`, not {}",
                        short(v)
                    ),
                );
                String::new()
            }
        };

        // vars, then --set overrides.
        let mut vars = BTreeMap::new();
        match top.get("vars") {
            None | Some(Value::Null) => {}
            Some(Value::Mapping(m)) => {
                for (k, v) in m {
                    let k = key_text(k);
                    match scalar_text(v) {
                        Some(s) => {
                            vars.insert(k, s);
                        }
                        None => diags.at(
                            &format!("vars.{k}"),
                            format!("a var is a string or number, not {}", type_name(v)),
                        ),
                    }
                }
            }
            Some(v) => diags.at(
                "vars",
                format!(
                    "`vars` is a mapping of names to values, not {}",
                    type_name(v)
                ),
            ),
        }
        for (k, v) in &options.set {
            if !vars.contains_key(k) {
                let known: Vec<&str> = vars.keys().map(|s| s.as_str()).collect();
                diags.at_position(
                    None,
                    format!(
                        "--set {k}: the workflow has no var `{k}`{}; declare it under `vars:`",
                        did_you_mean(k, known)
                    ),
                );
            } else {
                vars.insert(k.clone(), v.clone());
            }
        }

        let no_steps = serde_yaml::Mapping::new();
        let steps_value = match top.get("steps") {
            Some(Value::Mapping(m)) => m,
            Some(v) => {
                diags.at(
                    "steps",
                    format!(
                        "`steps` is a mapping of step names to steps, not {}",
                        type_name(v)
                    ),
                );
                &no_steps
            }
            None => {
                diags.at_position(None, "the workflow has no `steps:`");
                &no_steps
            }
        };
        let step_names = StepNames::new(match pieces {
            Some(pieces) => pieces.steps.iter().map(|p| p.key.to_string()).collect(),
            None => steps_value.keys().map(key_text).collect(),
        });
        let ctx = CheckContext {
            work_dir: dir.clone(),
        };
        let step_count = pieces.map_or(steps_value.len(), |p| p.steps.len());
        // The workflow keeps its steps for the whole run: no room to spare.
        let mut steps = Vec::with_capacity(step_count + usize::from(top.contains_key(FIGURES)));
        // Every step's inputs, with the field that declares each.
        let mut inputs = Vec::new();
        let mut load_one = |sname: String, v: &Value| {
            let base = format!("steps.{sname}");
            if !valid_name(&sname) {
                diags.at(
                    &base,
                    format!(
                        "step name `{}` must be letters, digits, `-` or `_`",
                        escaped(&sname)
                    ),
                );
                return;
            }
            if sname.len() > MAX_STEP_NAME {
                diags.at(
                    &base,
                    format!(
                        "step name `{}...` is {} bytes long; the maximum is {MAX_STEP_NAME} bytes (a step name becomes a file name): shorten it",
                        &sname[..24],
                        sname.len()
                    ),
                );
                return;
            }
            let Value::Mapping(fields) = v else {
                diags.at(
                    &base,
                    format!("a step is a mapping with a `kind:`, not {}", type_name(v)),
                );
                return;
            };
            if sname == FIGURES && top.contains_key(FIGURES) {
                diags.at(
                    &base,
                    "a step named `figures` would clash with the workflow's `figures:` (drawn into out/figures/); rename the step",
                );
                return;
            }
            if fields.get("kind") == Some(&Value::String(FIGURES.into())) {
                diags.at(
                    &format!("{base}.kind"),
                    "figures are declared in the workflow's top-level `figures:` section, not as a step",
                );
                return;
            }
            if let Some(decl) = load_step(
                &sname,
                &base,
                fields,
                registry,
                &vars,
                &step_names,
                &ctx,
                &mut diags,
                &mut inputs,
            ) {
                steps.push(decl);
            }
            // Checked a few thousand at a time: held for every step of a large
            // workflow, they were the peak of its first apply (2 MB at 10,000).
            if inputs.len() >= INPUTS_CHECKED_TOGETHER {
                check_inputs(&inputs, &ctx, &mut diags);
                inputs.clear();
            }
        };
        match pieces {
            // Each step's value is parsed, checked and dropped in turn.
            Some(pieces) => yaml_pieces::parse_each(&pieces.steps, text, |name, v| {
                load_one(name.to_string(), &v);
                Ok(())
            })?,
            None => {
                for (k, v) in steps_value {
                    load_one(key_text(k), v);
                }
            }
        }
        check_inputs(&inputs, &ctx, &mut diags);
        drop(inputs);
        // Each step's upstream places are its upstream steps' places in file order.
        if diags.is_empty() && steps.len() != step_names.all.len() {
            anyhow::bail!(
                "{}: {} steps were named but {} loaded; this is a bug in qflow",
                path.display(),
                step_names.all.len(),
                steps.len()
            );
        }
        if let Some(figures) = top.get(FIGURES)
            && let Some(decl) = load_figures(
                figures,
                &steps,
                registry,
                &vars,
                &step_names,
                &ctx,
                &mut diags,
            )
        {
            steps.push(decl);
        }
        let placement = crate::slurm::placement::parse_workflow(top, &mut diags);
        let workflow = Workflow {
            path,
            dir,
            name,
            vars,
            steps,
            placement,
            selection: Default::default(),
        };
        if diags.is_empty() {
            workflow.check_outputs_referenced(&mut diags);
            workflow.check_cycles(&mut diags);
        }
        diags.finish().map_err(anyhow::Error::from)?;
        Ok(workflow)
    }

    /// The names of step `s`'s upstream steps.
    pub fn upstream_names<'w>(&'w self, s: &'w StepDecl) -> impl Iterator<Item = &'w str> + 'w {
        s.upstream_ids().map(|i| self.steps[i].name.as_str())
    }

    /// Keep only the steps `keep` says, with every upstream step of each (their
    /// upstream places are renumbered).
    pub fn keep_steps(&mut self, keep: impl Fn(&StepDecl) -> bool) {
        let mut place = vec![u32::MAX; self.steps.len()];
        let mut kept = 0;
        for (i, s) in self.steps.iter().enumerate() {
            if keep(s) {
                place[i] = kept;
                kept += 1;
            }
        }
        let mut i = 0;
        self.steps.retain(|_| {
            i += 1;
            place[i - 1] != u32::MAX
        });
        for s in &mut self.steps {
            for (up, _) in &mut s.upstream {
                *up = place[*up as usize];
                assert_ne!(*up, u32::MAX, "an upstream step of a kept step is kept");
            }
        }
    }

    /// The step named `name`.
    pub fn step(&self, name: &str) -> Option<&StepDecl> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// The index of the step named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }

    /// The DAG of the steps: edges from `after`, `${{ steps.X }}` and typed
    /// reference fields.
    pub fn dag(&self) -> Dag {
        // By name, not `Workflow::index_of`: a scan per edge is quadratic in steps.
        let edges = (self.steps.iter().enumerate())
            .flat_map(|(i, s)| s.upstream_ids().map(move |j| (StepId(j), StepId(i))));
        Dag::new(self.steps.len(), edges)
    }

    /// Report each cycle, naming its steps in order (`a → b → c → a`).
    fn check_cycles(&self, diags: &mut Diagnostics) {
        for cycle in self.dag().cycles() {
            let names: Vec<&str> = cycle
                .iter()
                .map(|i| self.steps[i.index()].name.as_str())
                .collect();
            diags.at(
                &format!("steps.{}", names[0]),
                format!(
                    "the steps form a cycle: {}; remove one of these dependencies",
                    names.join(" → ")
                ),
            );
        }
    }

    /// `${{ steps.X.OUT }}` must name one of X's declared outputs (or a path inside one).
    fn check_outputs_referenced(&self, diags: &mut Diagnostics) {
        // Only a step whose fields hold a `${{` can reference an output.
        for s in self
            .steps
            .iter()
            .filter(|s| s.canonical_fields.contains("${{"))
        {
            visit_strings(
                &s.fields(),
                &format!("steps.{}", s.name),
                &mut |path, text| {
                    let Ok(exprs) = interpolate::expressions(text) else {
                        return;
                    };
                    for e in exprs {
                        if let Expr::Step {
                            name,
                            output: Some(out),
                        } = e
                            && let Some(up) = self.step(&name)
                        {
                            let outs = up.step.outputs();
                            let ok = outs.iter().any(|o| {
                                out == *o
                                    || out.starts_with(&format!("{}/", o.trim_end_matches('/')))
                            });
                            if !ok {
                                diags.at(
                                path,
                                format!(
                                    "step `{name}` declares no output `{out}`; its outputs are: {}",
                                    if outs.is_empty() { "none".to_string() } else { outs.join(", ") }
                                ),
                            );
                            }
                        }
                    }
                },
            );
        }
    }
}

fn hint(word: &str, candidates: &[&str]) -> String {
    let dym = did_you_mean(word, candidates.iter().copied());
    if dym.is_empty() {
        format!("; valid fields: {}", candidates.join(", "))
    } else {
        dym
    }
}

fn short(v: &Value) -> String {
    let s = serde_yaml::to_string(v).unwrap_or_default();
    let s = s.trim();
    if s.len() > 40 {
        format!("{}…", &s[..40])
    } else {
        s.to_string()
    }
}

/// The longest step name, in bytes: a step name becomes a file name
/// (`out/<step>`, `<step>.log`, `<step>.slurm.log`), and file names end at 255 bytes.
pub const MAX_STEP_NAME: usize = 200;

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The workflow's step names, in file order and as a set: every edge is checked
/// against them, so a lookup must not scan 1,000 names.
struct StepNames {
    /// In file order: a step's place in [`Workflow::steps`] once every step loaded.
    all: Vec<String>,
    places: std::collections::HashMap<String, u32>,
}

impl StepNames {
    fn new(all: Vec<String>) -> StepNames {
        let places = (all.iter().enumerate())
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
        StepNames { all, places }
    }

    /// Step `name`'s place, when there is such a step.
    fn place(&self, name: &str) -> Option<u32> {
        self.places.get(name).copied()
    }
}

/// The workflow's `figures:` section as the step `figures` (kind `figures`): its
/// entries are that step's fields, so errors point at `figures.NAME.FIELD`, and
/// each figure's `step` is an edge. Each figure's axes are checked against the
/// step it draws: the x and series variables are keys of that step's `matrix`,
/// the y metric a key of its `metrics`.
fn load_figures(
    figures: &Value,
    steps: &[StepDecl],
    registry: &Registry,
    vars: &BTreeMap<String, String>,
    step_names: &StepNames,
    ctx: &CheckContext,
    diags: &mut Diagnostics,
) -> Option<StepDecl> {
    let entries = match figures {
        Value::Null => return None,
        Value::Mapping(m) if m.is_empty() => return None,
        Value::Mapping(m) => m,
        v => {
            diags.at(
                FIGURES,
                format!(
                    "`figures` is a mapping of figure names to figures, not {}",
                    type_name(v)
                ),
            );
            return None;
        }
    };
    let mut fields = serde_yaml::Mapping::new();
    fields.insert(Value::String("kind".into()), Value::String(FIGURES.into()));
    for (k, v) in entries {
        let name = key_text(k);
        if COMMON_FIELDS.contains(&name.as_str()) {
            diags.at(
                &format!("{FIGURES}.{name}"),
                format!("`{name}` cannot name a figure (it is a step field); rename it"),
            );
            return None;
        }
        fields.insert(k.clone(), v.clone());
    }
    let before = diags.len();
    let mut inputs = Vec::new();
    let decl = load_step(
        FIGURES,
        FIGURES,
        &fields,
        registry,
        vars,
        step_names,
        ctx,
        diags,
        &mut inputs,
    );
    check_inputs(&inputs, ctx, diags);
    let decl = decl?;
    if diags.len() > before {
        return None;
    }
    for (k, v) in entries {
        let name = key_text(k);
        let Ok(spec) = serde_yaml::from_value::<crate::results::FigureSpec>(v.clone()) else {
            continue;
        };
        let Some(target) = steps.iter().find(|s| s.name == spec.step) else {
            continue;
        };
        let metrics: Vec<String> = target.step.metrics().into_keys().collect();
        if metrics.is_empty() {
            diags.at(
                &format!("{FIGURES}.{name}.step"),
                format!(
                    "step `{}` has no `metrics:` to draw; declare `{}` there",
                    spec.step, spec.y
                ),
            );
            continue;
        }
        if let Err(e) = spec.check_against(&target.step.matrix_axes(), &metrics) {
            diags.at(
                &format!("{FIGURES}.{name}.{}", e.field),
                format!("figure `{name}`: {}", e.message),
            );
        }
    }
    Some(decl)
}

#[allow(clippy::too_many_arguments)]
fn load_step(
    name: &str,
    base: &str,
    fields: &serde_yaml::Mapping,
    registry: &Registry,
    vars: &BTreeMap<String, String>,
    step_names: &StepNames,
    ctx: &CheckContext,
    diags: &mut Diagnostics,
    inputs: &mut Vec<(String, Input)>,
) -> Option<StepDecl> {
    let kind_name = match fields.get("kind") {
        Some(Value::String(k)) => k.clone(),
        Some(v) => {
            diags.at(
                &format!("{base}.kind"),
                format!("`kind` is a string, not {}", type_name(v)),
            );
            return None;
        }
        None => {
            diags.at(
                base,
                format!(
                    "step `{name}` has no `kind:`; valid kinds: {}",
                    registry.names().join(", ")
                ),
            );
            return None;
        }
    };
    let Some(kind) = registry.get(&kind_name) else {
        diags.at(
            &format!("{base}.kind"),
            format!(
                "unknown kind `{}`{}; valid kinds: {}",
                escaped(&kind_name),
                did_you_mean(&kind_name, registry.names()),
                registry.names().join(", ")
            ),
        );
        return None;
    };

    let mut upstream: Vec<(u32, EdgeReason)> = Vec::new();
    let mut add_edge = |up: &str, reason: EdgeReason, at: &str, diags: &mut Diagnostics| {
        let Some(place) = step_names.place(up) else {
            // `system: base.qcow2` meant a file: a path is told from a step name by its `/`.
            let path_hint = if matches!(reason, EdgeReason::Field(_))
                && (up.contains('.') || ctx.resolve(up).exists())
            {
                format!("; a local file needs a `/` in its path: write `./{up}`")
            } else {
                String::new()
            };
            diags.at(
                at,
                format!(
                    "no step named `{}`{}{path_hint}",
                    escaped(up),
                    did_you_mean(
                        up,
                        step_names
                            .all
                            .iter()
                            .map(|s| s.as_str())
                            .filter(|s| *s != name)
                    )
                ),
            );
            return;
        };
        match upstream.iter_mut().find(|(n, _)| *n == place) {
            None => upstream.push((place, reason)),
            // A step named in `after:` and referenced too: its output is used.
            Some(edge) if edge.1 == EdgeReason::After => edge.1 = reason,
            Some(_) => {}
        }
    };

    // Common fields.
    let mut after = Vec::new();
    match fields.get("after") {
        None => {}
        Some(Value::Sequence(items)) => {
            for (i, it) in items.iter().enumerate() {
                match it {
                    Value::String(s) => after.push((s.clone(), format!("{base}.after[{i}]"))),
                    v => diags.at(
                        &format!("{base}.after[{i}]"),
                        format!("`after` lists step names, not {}", type_name(v)),
                    ),
                }
            }
        }
        Some(Value::String(s)) => after.push((s.clone(), format!("{base}.after"))),
        Some(v) => diags.at(
            &format!("{base}.after"),
            format!("`after` is a list of step names, not {}", type_name(v)),
        ),
    }
    for (up, at) in &after {
        add_edge(up, EdgeReason::After, at, diags);
    }
    let jobs = match fields.get("jobs") {
        None => None,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|j| j >= 1) => {
            Some(n.as_u64().unwrap() as usize)
        }
        Some(v) => {
            diags.at(
                &format!("{base}.jobs"),
                format!(
                    "`jobs` is a whole number of CPU slots, at least 1, not {}",
                    short(v)
                ),
            );
            None
        }
    };
    let cache = match fields.get("cache") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            diags.at(
                &format!("{base}.cache"),
                format!("`cache` is true or false, not {}", short(v)),
            );
            true
        }
    };
    let remote_cache = match fields.get("remote_cache") {
        None => RemoteUse::Default,
        Some(Value::Bool(true)) => RemoteUse::On,
        Some(Value::Bool(false)) => RemoteUse::Off,
        Some(Value::String(s)) if s == "pull" => RemoteUse::Pull,
        Some(v) => {
            diags.at(
                &format!("{base}.remote_cache"),
                format!("`remote_cache` is true, false or pull, not {}", short(v)),
            );
            RemoteUse::Default
        }
    };

    // Interpolate vars and env in the kind's fields and in `env:`.
    let mut vars_used = BTreeMap::new();
    let mut env_used = BTreeMap::new();
    let mut interpolation_edges: Vec<(String, String)> = Vec::new();
    // How many `${{ env.X }}` were read, to tell whether the kind's fields read one.
    let env_reads = std::cell::Cell::new(0usize);
    let mut interp = |path: &str, text: &str, diags: &mut Diagnostics| -> String {
        let result = interpolate::substitute(text, &mut |e| match e {
            Expr::Var(v) => match vars.get(v) {
                Some(val) => {
                    vars_used.insert(v.clone(), val.clone());
                    Ok(Some(val.clone()))
                }
                None => Err(format!(
                    "unknown var `{v}`{}; declare it under `vars:` or pass `--set {v}=VALUE`",
                    did_you_mean(v, vars.keys().map(|s| s.as_str()))
                )),
            },
            Expr::Env(v) => match std::env::var(v) {
                Ok(val) => {
                    env_reads.set(env_reads.get() + 1);
                    env_used.insert(v.clone(), val.clone());
                    Ok(Some(val))
                }
                Err(_) => Err(format!(
                    "environment variable `{v}` is not set; export it before running qflow"
                )),
            },
            Expr::Step { name: up, .. } => {
                interpolation_edges.push((up.clone(), path.to_string()));
                Ok(None)
            }
        });
        match result {
            Ok(s) => s,
            Err(mut msg) => {
                if let Some(name) = matrix_reference_with_dollar(text) {
                    msg.push_str(&format!(
                        "; a matrix parameter is written `{{{{ matrix.{name} }}}}`, without `$` (it is replaced per run, after the workflow's `${{{{ ... }}}}`)"
                    ));
                }
                diags.at(path, msg);
                text.to_string()
            }
        }
    };

    let mut env = BTreeMap::new();
    match fields.get("env") {
        None => {}
        Some(Value::Mapping(m)) => {
            for (k, v) in m {
                let k = key_text(k);
                let at = format!("{base}.env.{k}");
                match scalar_text(v) {
                    Some(s) => {
                        let s = interp(&at, &s, diags);
                        env.insert(k, s);
                    }
                    None => diags.at(
                        &at,
                        format!("an env value is a string, not {}", type_name(v)),
                    ),
                }
            }
        }
        Some(v) => diags.at(
            &format!("{base}.env"),
            format!("`env` is a mapping of NAME: value, not {}", type_name(v)),
        ),
    }

    let mut kind_fields = serde_yaml::Mapping::new();
    for (k, v) in fields {
        let key = key_text(k);
        if COMMON_FIELDS.contains(&key.as_str()) {
            continue;
        }
        kind_fields.insert(k.clone(), v.clone());
    }
    let mut failed = false;
    let written_fields = Value::Mapping(kind_fields);
    let env_reads_before = env_reads.get();
    let kind_fields = map_strings_at(&written_fields, base, &mut |path, text| {
        let before = diags.len();
        let out = interp(path, text, diags);
        failed |= diags.len() > before;
        out
    });
    // What enters the key, the lock and plan output: vars interpolated, but
    // `${{ env.X }}` kept as written (the value enters the key as a digest,
    // see `session.rs`, and the job gets it in `resolved_fields`). Without an
    // `${{ env.X }}` that is the interpolated fields themselves.
    let template_fields = if env_reads.get() == env_reads_before {
        None
    } else {
        Some(
            map_strings(&written_fields, &mut |text| {
                interpolate::substitute(text, &mut |e| match e {
                    Expr::Var(v) => Ok(vars.get(v).cloned()),
                    _ => Ok(None),
                })
            })
            .unwrap_or(Value::Null),
        )
    };
    drop(written_fields);
    for (up, at) in interpolation_edges {
        add_edge(&up, EdgeReason::Interpolation, &at, diags);
    }

    // Every unknown field is reported, not just the first: each one serde
    // names is reported and taken out, and the fields parsed again. Only a step
    // that does not parse needs the kind's field names, and making them means
    // making the kind's JSON schema: not once for each of 10,000 steps.
    let mut field_names: Option<Vec<String>> = None;
    let mut kind_fields = kind_fields;
    let mut parse_failed = false;
    let parsed = loop {
        match kind.parse(&kind_fields) {
            Ok(s) => break Some(s),
            Err(e) => {
                let field_names = field_names.get_or_insert_with(|| kind.field_names());
                let unknown = report_field_error(&e, base, &kind_name, field_names, fields, diags);
                let removed = match (unknown, kind_fields.as_mapping_mut()) {
                    (Some(key), Some(m)) => m.remove(key.as_str()).is_some(),
                    _ => false,
                };
                parse_failed = true;
                if !removed {
                    // Another error ends the parse: name the other keys
                    // the kind does not have, too.
                    if let Some(m) = kind_fields.as_mapping()
                        && !field_names.is_empty()
                    {
                        for k in m.keys().map(key_text) {
                            if !field_names.contains(&k) {
                                diags.at(
                                    &format!("{base}.{k}"),
                                    unknown_field_message(&k, &kind_name, field_names),
                                );
                            }
                        }
                    }
                    break None;
                }
            }
        }
    };
    let step = parsed?;
    for r in step.references() {
        add_edge(
            &r.step,
            EdgeReason::Field(r.field.clone()),
            &format!("{base}.{}", r.field),
            diags,
        );
    }
    if let Err(e) = step.check(ctx) {
        let at = if e.field.is_empty() {
            base.to_string()
        } else {
            format!("{base}.{}", e.field)
        };
        diags.at(&at, e.message);
    }
    for (i, out) in step.outputs().iter().enumerate() {
        if let Err(msg) = check_output_path(out) {
            diags.at(&format!("{base}.outputs[{i}]"), msg);
        }
    }
    // Checked together once every step is loaded (see `check_inputs`).
    inputs.extend(
        (step.inputs().into_iter()).map(|input| (format!("{base}.{}", input.field), input)),
    );
    let placement = crate::slurm::placement::parse_step(fields, base, diags);
    if failed || parse_failed {
        return None;
    }
    let (canonical_fields, fields_value) =
        StepDecl::stored_fields(template_fields.unwrap_or(kind_fields));
    upstream.shrink_to_fit();
    Some(StepDecl {
        name: name.to_string(),
        kind: kind.name(),
        schema_version: kind.schema_version(),
        upstream,
        settings: Settings {
            jobs,
            env,
            vars_used,
            env_used,
        }
        .boxed(),
        cache,
        remote_cache,
        placement: placement.boxed(),
        canonical_fields,
        fields_value,
        step,
    })
}

/// Report a kind's parse error at its field, with "did you mean" for an
/// unknown field and a hint for a command written as one string; returns the
/// unknown top-level field's name, if that was the error.
fn report_field_error(
    e: &crate::step::FieldError,
    base: &str,
    kind_name: &str,
    field_names: &[String],
    fields: &serde_yaml::Mapping,
    diags: &mut Diagnostics,
) -> Option<String> {
    let mut msg = e.message.clone();
    let mut at = if e.field.is_empty() {
        base.to_string()
    } else {
        format!("{base}.{}", e.field)
    };
    let mut top_level_unknown = None;
    if let Some(unknown) = unknown_field_name(&e.message) {
        // serde_path_to_error's path already ends with the unknown key.
        let parent = e
            .field
            .strip_suffix(unknown.as_str())
            .map(|p| p.trim_end_matches('.'))
            .unwrap_or(&e.field)
            .to_string();
        at = if parent.is_empty() {
            format!("{base}.{unknown}")
        } else {
            format!("{base}.{parent}.{unknown}")
        };
        let dym = did_you_mean(&unknown, field_names.iter().map(|s| s.as_str()));
        msg = if parent.is_empty() {
            top_level_unknown = Some(unknown.clone());
            unknown_field_message(&unknown, kind_name, field_names)
        } else {
            format!(
                "unknown field `{}`{}",
                escaped(&unknown),
                strip_expected(&e.message, &dym)
            )
        };
    } else if e.message.contains("invalid type: string")
        && e.message.contains("expected a sequence")
        && let Some(Value::String(text)) = fields.get(e.field.as_str())
    {
        msg = format!(
            "{msg}; a command is a list of arguments (no shell runs it): write `{}: [sh, -c, '{}']` for a shell line, or split it into words",
            e.field,
            text.replace('\'', "''")
        );
    }
    diags.at(&at, msg);
    top_level_unknown
}

/// `unknown field `x` for kind `k`; did you mean ...; its fields: ...`.
fn unknown_field_message(unknown: &str, kind_name: &str, field_names: &[String]) -> String {
    let dym = did_you_mean(unknown, field_names.iter().map(|s| s.as_str()));
    let mut all: Vec<String> = field_names.to_vec();
    all.extend(COMMON_FIELDS.iter().map(|s| s.to_string()));
    format!(
        "unknown field `{}` for kind `{kind_name}`{dym}; its fields: {}",
        escaped(unknown),
        all.join(", ")
    )
}

/// The NAME of a `${{ matrix.NAME }}` in `text`: the workflow syntax where a
/// step's matrix syntax `{{ matrix.NAME }}` was meant.
fn matrix_reference_with_dollar(text: &str) -> Option<String> {
    let at = text.find("${{")?;
    let rest = text[at + 3..].trim_start().strip_prefix("matrix.")?;
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
    Some(rest[..end].to_string())
}

fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

fn strip_expected(message: &str, dym: &str) -> String {
    match message.find(", expected") {
        Some(i) if dym.is_empty() => message[i..].replacen(", expected", "; expected", 1),
        _ => dym.to_string(),
    }
}

/// A declared output must stay inside the step's output directory.
pub fn check_output_path(out: &str) -> Result<(), String> {
    let p = Path::new(out);
    if out.is_empty() {
        return Err("an output path is empty".into());
    }
    if p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!(
            "output `{out}` escapes the step's output directory; write a path relative to `$QFLOW_OUT` without `..`"
        ));
    }
    Ok(())
}

pub(crate) fn check_input_exists(input: &Input, ctx: &CheckContext) -> Result<(), String> {
    if input.path.contains("${{") {
        return Ok(());
    }
    if crate::glob::is_glob(&input.path) {
        let matches = crate::glob::expand(&ctx.work_dir, &input.path).map_err(|e| e.to_string())?;
        if matches.is_empty() {
            return Err(format!(
                "input glob `{}` matches no file in {}",
                input.path,
                ctx.work_dir.display()
            ));
        }
        return Ok(());
    }
    let p = ctx.resolve(&input.path);
    if std::fs::symlink_metadata(&p).is_err() {
        return Err(format!(
            "input `{}` does not exist ({}); create it or fix the path",
            input.path,
            p.display()
        ));
    }
    // A FIFO would block hashing for ever, a device never end: refused here.
    if let Ok(meta) = std::fs::metadata(&p)
        && !meta.is_file()
        && !meta.is_dir()
    {
        use std::os::unix::fs::FileTypeExt as _;
        let t = meta.file_type();
        let what = if t.is_fifo() {
            "a FIFO"
        } else if t.is_socket() {
            "a socket"
        } else {
            "a device"
        };
        return Err(format!(
            "input `{}` is not a regular file or directory ({what}); an input is hashed, so give a file or a directory",
            input.path
        ));
    }
    Ok(())
}

/// Report each input of `inputs` (with the field path that declares it) that does
/// not exist or cannot be hashed. Most workflows have none: all are looked up
/// together first (see [`inputs_exist`]), each on its own only when that fails.
fn check_inputs(inputs: &[(String, Input)], ctx: &CheckContext, diags: &mut Diagnostics) {
    if inputs_exist(inputs.iter().map(|(_, i)| i), ctx) {
        return;
    }
    for (at, input) in inputs {
        if let Err(msg) = check_input_exists(input, ctx) {
            diags.at(at, msg);
        }
    }
}

/// Whether every input exists, as [`check_input_exists`] decides. Many plain
/// inputs in one directory (1,000 `src/fN`) are looked up in one listing of it
/// instead of a stat each; a listing much longer than the inputs it answers for
/// is given up, and those inputs are stat'ed.
pub(crate) fn inputs_exist<'a>(
    inputs: impl Iterator<Item = &'a Input>,
    ctx: &CheckContext,
) -> bool {
    const MIN_SHARED: usize = 32;
    let mut by_dir: HashMap<&str, Vec<&Input>> = HashMap::new();
    let mut alone = Vec::new();
    for input in inputs {
        match plain_split(&input.path) {
            Some((dir, _)) => by_dir.entry(dir).or_default().push(input),
            None => alone.push(input),
        }
    }
    for (dir, group) in by_dir {
        if group.len() < MIN_SHARED {
            alone.extend(group);
            continue;
        }
        let names: HashSet<&[u8]> = (group.iter())
            .filter_map(|i| plain_split(&i.path).map(|(_, name)| name.as_bytes()))
            .collect();
        match all_listed(&ctx.work_dir.join(dir), &names, 4 * group.len()) {
            Some(true) => {}
            Some(false) => return false,
            None => alone.extend(group),
        }
    }
    alone.iter().all(|i| check_input_exists(i, ctx).is_ok())
}

/// A plain relative input path split at its last `/` (`src/f1` → `src`, `f1`;
/// `f1` → ``, `f1`): no glob, no interpolation, no `.`, `..` or empty component,
/// no leading or trailing `/`. `None` for anything else.
fn plain_split(path: &str) -> Option<(&str, &str)> {
    if path.contains("${{") || crate::glob::is_glob(path) {
        return None;
    }
    if !(path.split('/')).all(|c| !c.is_empty() && c != "." && c != "..") {
        return None;
    }
    Some(match path.rfind('/') {
        Some(at) => (&path[..at], &path[at + 1..]),
        None => ("", path),
    })
}

/// Whether directory `dir` holds every one of `names`, each a file or a directory,
/// if it can be both listed and searched (so that a listed name is one `lstat` would
/// find) and holds at most `limit` entries before the last of them is seen. `None`
/// when that cannot tell (then each is stat'ed): a name listed as anything else, a
/// symbolic link included, may be one the full load refuses (a FIFO).
fn all_listed(dir: &Path, names: &HashSet<&[u8]>, limit: usize) -> Option<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: a valid C string; `faccessat` only reads it.
    let searchable =
        unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::X_OK, libc::AT_EACCESS) } == 0;
    if !searchable {
        return None;
    }
    let (mut seen, mut found) = (0, 0);
    for entry in std::fs::read_dir(dir).ok()? {
        seen += 1;
        if seen > limit {
            return None;
        }
        let entry = entry.ok()?;
        // A directory lists each name once.
        if names.contains(entry.file_name().as_bytes()) {
            let t = entry.file_type().ok()?;
            if !(t.is_file() || t.is_dir()) {
                return None;
            }
            found += 1;
            if found == names.len() {
                return Some(true);
            }
        }
    }
    Some(found == names.len())
}
