//! The contract between the engine and the step kinds.
//!
//! A workflow step is a name, a `kind:` and that kind's typed fields. The engine
//! knows no kind: `steps/` registers one [`StepKind`] per kind, and each kind is a
//! plain `#[derive(Deserialize, JsonSchema)]` struct that implements [`Step`].
//! The engine strips the common fields (`after`, `jobs`, `env`, `cache`) before
//! the kind sees the mapping, interpolates `${{ ... }}`, and then asks the kind
//! for everything that enters the step key: its inputs, the tools it runs, the
//! steps it references and any derived key material (a secret's hash, never the
//! secret). A step has no hidden state: what it reads is declared here, what it
//! writes goes into its fresh output directory or its kept state directory.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::context::RunContext;

/// An error in one field of one step, found before anything runs.
///
/// `field` is the path inside the step's mapping (`size`, `copy_in[0].from`); the
/// engine turns it into `file:line:column` of the workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "field `{}`: {}", self.field, self.message)
    }
}

/// A reference from a typed field to another step (`image: base`): an edge of the DAG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRef {
    /// The field holding the reference, for error messages (`image`, `disks[1]`).
    pub field: String,
    /// The referenced step's name.
    pub step: String,
}

impl StepRef {
    pub fn new(field: impl Into<String>, step: impl Into<String>) -> Self {
        StepRef {
            field: field.into(),
            step: step.into(),
        }
    }
}

/// A host path whose content enters the step key: a file, a directory (its whole
/// tree) or a glob, relative to the workflow's directory unless absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The field that declared it, for error messages and `qflow plan` reasons.
    pub field: String,
    pub path: String,
    /// Path components skipped anywhere inside a directory input (`.git`, a build dir).
    pub exclude: Vec<String>,
}

impl Input {
    pub fn new(field: impl Into<String>, path: impl Into<String>) -> Self {
        Input {
            field: field.into(),
            path: path.into(),
            exclude: Vec::new(),
        }
    }

    pub fn excluding(mut self, names: &[&str]) -> Self {
        self.exclude.extend(names.iter().map(|s| s.to_string()));
        self
    }
}

/// An external program a step runs. Its identity (the first line of its version
/// output, or the whole output) enters the step key, so a tool upgrade re-runs the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    pub program: String,
    pub version_args: Vec<String>,
    /// The Debian package that provides it, for `qflow doctor` and early errors.
    pub package: String,
}

impl Tool {
    pub fn new(program: &str, version_args: &[&str], package: &str) -> Self {
        Tool {
            program: program.to_string(),
            version_args: version_args.iter().map(|s| s.to_string()).collect(),
            package: package.to_string(),
        }
    }
}

/// What a step needs of the host beyond its tools (root, a kernel module, a file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// What is needed, in the user's words (`root`, `the nbd kernel module`).
    pub what: String,
    /// Whether the host has it now.
    pub present: bool,
    /// What to do when it is missing.
    pub fix: String,
}

/// Context for validation, key material and `qflow plan`: no step has run yet.
#[derive(Debug, Clone)]
pub struct CheckContext {
    /// The directory of the workflow file; relative paths are relative to it.
    pub work_dir: PathBuf,
}

impl CheckContext {
    /// A path from a field, resolved against the workflow directory.
    pub fn resolve(&self, path: &str) -> PathBuf {
        resolve_in(&self.work_dir, path)
    }
}

/// Resolve `path` against `base` unless it is absolute.
pub fn resolve_in(base: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// `to` relative to directory `from` (both absolute, already free of `..`), e.g.
/// `../<hash>/image.qcow2` from a sibling output tree: references that survive
/// moving the cache. Shared by the engine (`out/` links) and the kinds (qcow2
/// backing files, checkpoint records).
pub fn relative_to(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to_c: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to_c).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..from.len() {
        rel.push("..");
    }
    for c in &to_c[common..] {
        rel.push(c.as_os_str());
    }
    rel
}

/// The behaviour of one step kind, implemented by its typed fields struct.
pub trait Step: std::fmt::Debug + Send + Sync {
    /// Steps named by typed reference fields (`image: base`). Each becomes an edge.
    fn references(&self) -> Vec<StepRef> {
        Vec::new()
    }

    /// Host files, trees or globs whose contents enter the key.
    fn inputs(&self) -> Vec<Input> {
        Vec::new()
    }

    /// Declared outputs, relative to the step's output directory. A step that
    /// exits successfully without one of them fails.
    fn outputs(&self) -> Vec<String>;

    /// External programs the step runs; their versions enter the key.
    fn tools(&self) -> Vec<Tool> {
        Vec::new()
    }

    /// Other host requirements (root, kernel modules), checked before anything runs.
    fn requirements(&self, _ctx: &CheckContext) -> Vec<Requirement> {
        Vec::new()
    }

    /// Semantic checks beyond types (sizes, package names, owners). Runs before anything.
    fn check(&self, _ctx: &CheckContext) -> Result<(), FieldError> {
        Ok(())
    }

    /// Key material that is not a field, an input file or a tool: e.g. the blake3
    /// of a root password read from a file. Never return a secret itself.
    fn extra_key(&self, _ctx: &CheckContext) -> anyhow::Result<Vec<(String, String)>> {
        Ok(Vec::new())
    }

    /// Whether the step reads a secret (a password), so its outputs may hold something
    /// derived from it (a password's hash in an image, a password in a memory snapshot).
    /// Such a step, and every step downstream of it, is never uploaded to a remote cache
    /// unless it says `remote_cache: true` itself.
    fn consumes_secret(&self) -> bool {
        false
    }

    /// The command lines the step would run, for `qflow plan` (argv joined for display).
    fn plan(&self, _ctx: &CheckContext) -> Vec<String> {
        Vec::new()
    }

    /// Whether the step hands qflow's make jobserver to the programs it runs.
    fn uses_jobserver(&self) -> bool {
        false
    }

    /// CPU slots the step takes when the workflow gives no `jobs:` (default 1).
    /// A kernel build returns its safe cap here.
    fn default_jobs(&self) -> usize {
        1
    }

    /// Do the work: write the declared outputs into `ctx.out_dir()`.
    fn run(&self, ctx: &mut RunContext) -> anyhow::Result<()>;
}

/// A registered step kind: parses the typed fields of a step and describes them.
pub trait StepKind: Send + Sync {
    /// The value of `kind:` that selects this kind.
    fn name(&self) -> &'static str;
    /// Bumped whenever the meaning of the kind's fields or outputs changes; enters the key.
    fn schema_version(&self) -> u32;
    /// The kind's field names, for "did you mean" on unknown fields.
    fn field_names(&self) -> Vec<String>;
    /// JSON Schema of the kind's fields (draft-07), generated from the Rust type.
    fn schema(&self) -> serde_json::Value;
    /// Deserialize the fields (common fields already removed).
    fn parse(&self, fields: &serde_yaml::Value) -> Result<Box<dyn Step>, FieldError>;
}

/// Implemented by a kind's fields struct to register it with [`KindOf`].
pub trait StepFields: Step + DeserializeOwned + schemars::JsonSchema + 'static {
    const KIND: &'static str;
    const SCHEMA_VERSION: u32;
}

/// The [`StepKind`] of a [`StepFields`] type: `registry.add(KindOf::<Command>::new())`.
pub struct KindOf<T>(PhantomData<fn() -> T>);

impl<T> KindOf<T> {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        KindOf(PhantomData)
    }
}

impl<T: StepFields> StepKind for KindOf<T> {
    fn name(&self) -> &'static str {
        T::KIND
    }

    fn schema_version(&self) -> u32 {
        T::SCHEMA_VERSION
    }

    fn field_names(&self) -> Vec<String> {
        let schema = self.schema();
        schema
            .get("properties")
            .and_then(|p| p.as_object())
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn schema(&self) -> serde_json::Value {
        let generator = schemars::generate::SchemaSettings::draft07().into_generator();
        generator.into_root_schema_for::<T>().to_value()
    }

    fn parse(&self, fields: &serde_yaml::Value) -> Result<Box<dyn Step>, FieldError> {
        match serde_path_to_error::deserialize::<_, T>(fields) {
            Ok(step) => Ok(Box::new(step)),
            Err(err) => {
                let path = err.path().to_string();
                let path = if path == "." { String::new() } else { path };
                let message = err.into_inner().to_string();
                Err(FieldError::new(path, message))
            }
        }
    }
}

/// All the step kinds the binary knows, in registration order.
#[derive(Default)]
pub struct Registry {
    kinds: Vec<Box<dyn StepKind>>,
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    pub fn add(&mut self, kind: impl StepKind + 'static) -> &mut Self {
        self.kinds.push(Box::new(kind));
        self
    }

    pub fn get(&self, name: &str) -> Option<&dyn StepKind> {
        self.kinds
            .iter()
            .find(|k| k.name() == name)
            .map(|k| k.as_ref())
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.kinds.iter().map(|k| k.name()).collect()
    }

    pub fn kinds(&self) -> impl Iterator<Item = &dyn StepKind> {
        self.kinds.iter().map(|k| k.as_ref())
    }
}
