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
//!
//! The contract also says what the commands around `apply` would otherwise have
//! to guess from a kind's name: the secrets a step reads ([`Step::secrets`]), the
//! role of each output ([`OutputRole`]: image, machine state, result, log,
//! artifact), its host needs as typed values ([`HostNeed`]), and, per kind,
//! every tool and need a step of it may have ([`StepFields::kind_tools`],
//! [`StepFields::kind_needs`]), from which `qflow doctor` and the host install
//! script's check derive. A step's `metrics:` ([`Step::metrics`]) and matrix
//! variables ([`Step::matrix_axes`]) are part of the contract too, so the run
//! loop, figures, `qflow results` and `qflow verify` never read a kind's raw
//! fields. So are a step's independent parts ([`Step::parts`]: a matrix's runs),
//! which a cluster executor submits as jobs of their own. Adding a kind is one
//! file and one registry line.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::PathBuf;

use serde::de::DeserializeOwned;

use crate::context::RunContext;
pub use crate::field_error::FieldError;
pub use crate::paths::{relative_to, resolve_in};
use crate::results::MetricSpec;

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

/// What a step needs of the host beyond its tools, as a typed value: doctor,
/// apply's preflight and the install script reason about these, never about a
/// kind's name or its raw fields.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostNeed {
    /// A file a Debian package installs (headers a build includes).
    File {
        /// What it is, in the user's words (`libelf headers`).
        what: String,
        path: String,
        package: String,
    },
    /// A readable Linux kernel in `/boot` (libguestfs builds its appliance from it).
    HostKernel,
    /// Root privileges (a mount, a chroot, device nodes).
    Root,
    /// The nbd kernel module (`qemu-nbd --connect`).
    NbdModule,
    /// KVM for a guest. It never stops a run unless [`KvmUse::Required`]: a boot
    /// that only prefers KVM falls back to TCG.
    Kvm(KvmUse),
}

/// How a boot uses KVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KvmUse {
    /// KVM when a probe boot shows it works, else TCG (`accel: auto`).
    Preferred,
    /// KVM or nothing (`accel: kvm`).
    Required,
}

/// One host need of one configured step, checked before anything runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The typed need.
    pub need: HostNeed,
    /// What is needed, in the user's words (`root`, `the nbd kernel module`).
    pub what: String,
    /// Whether the host has it now, as far as a cheap check tells (a KVM need is
    /// always present here: only a probe boot can tell, and `qflow doctor` runs it).
    pub present: bool,
    /// What to do when it is missing.
    pub fix: String,
}

/// Where a step reads a secret: a file or an environment variable, never its value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SecretSource {
    /// A host file, relative to the workflow's directory unless absolute.
    File(String),
    /// An environment variable of the `qflow` process.
    Env(String),
}

/// A secret one step consumes: the field that names it and where it comes from.
/// A bundle never packs a secret file, and its README asks for each of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretUse {
    /// The field path (`root_password`, `login.password`).
    pub field: String,
    pub source: SecretSource,
}

/// What an output of a step is, for the commands that treat outputs differently
/// (`qflow bundle` packs results and leaves machine state to `qflow apply`;
/// `qflow verify` compares a differing disk image file by file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputRole {
    /// A disk image (qcow2 or raw): machine state with a filesystem inside.
    Image,
    /// Other machine state (a memory snapshot, a checkpoint record): rebuilt, never bundled.
    MachineState,
    /// Data the step exists to produce for a person (what a guest run collected):
    /// bundled whatever its size.
    Result,
    /// A log of what happened (a guest's console): bundled whatever its size.
    Log,
    /// A build product (a kernel, its config, a declared file of a command):
    /// bundled when small, else rebuilt.
    Artifact,
}

impl OutputRole {
    /// Disk images and memory snapshots: `qflow apply` rebuilds them.
    pub fn is_machine_state(self) -> bool {
        matches!(self, OutputRole::Image | OutputRole::MachineState)
    }
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

    /// Whether [`Step::inputs`] has any, asked without making them (once per step
    /// of every apply).
    fn has_inputs(&self) -> bool {
        !self.inputs().is_empty()
    }

    /// Declared outputs with their roles, relative to the step's output directory.
    /// A step that exits successfully without one of them fails.
    fn output_roles(&self) -> Vec<(String, OutputRole)>;

    /// Declared outputs, relative to the step's output directory.
    fn outputs(&self) -> Vec<String> {
        self.output_roles().into_iter().map(|(o, _)| o).collect()
    }

    /// The role of an output the step wrote (as the lock records it). A kind whose
    /// outputs are named only when it runs (a download's `image.*`) says it here;
    /// an output the step never declared is an [`OutputRole::Artifact`].
    fn output_role(&self, output: &str) -> OutputRole {
        self.output_roles()
            .into_iter()
            .find(|(o, _)| o == output)
            .map(|(_, r)| r)
            .unwrap_or(OutputRole::Artifact)
    }

    /// The step's `metrics:` by name: after it is recorded, the run loop reads
    /// them from its `metrics.json` and holds them to their `expect:`; tables,
    /// figures and `qflow verify` read the same file. None by default.
    fn metrics(&self) -> BTreeMap<String, MetricSpec> {
        BTreeMap::new()
    }

    /// The names of the step's matrix variables: each run's values of them are
    /// columns of its metrics table, and a figure's `x` and `series` name them.
    /// None by default (a step that runs once).
    fn matrix_axes(&self) -> Vec<String> {
        Vec::new()
    }

    /// External programs the step runs; their versions enter the key. Each is
    /// among its kind's [`StepFields::kind_tools`].
    fn tools(&self) -> Vec<Tool> {
        Vec::new()
    }

    /// Host needs beyond tools (root, a kernel module, KVM), checked before
    /// anything runs. Each need is among its kind's [`StepFields::kind_needs`].
    fn requirements(&self, _ctx: &CheckContext) -> Vec<Requirement> {
        Vec::new()
    }

    /// The secrets the step consumes (where they are read from, never their values).
    fn secrets(&self) -> Vec<SecretUse> {
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

    /// Whether the step's outputs may hold something made from a secret (a password's
    /// hash in an image, a password in a memory snapshot): by default, whether it reads
    /// one ([`Step::secrets`]). Such a step, and every step downstream of it, is never
    /// uploaded to a remote cache unless it says `remote_cache: true` itself.
    fn consumes_secret(&self) -> bool {
        !self.secrets().is_empty()
    }

    /// What a run would do beyond its key's reasons, given what the step keeps in its state
    /// directory `state_dir` (e.g. a kernel with no kept build tree builds it whole): a
    /// reason `qflow plan` and the `run` line show.
    fn run_note(&self, _state_dir: &std::path::Path) -> Option<String> {
        None
    }

    /// The command lines the step would run, for `qflow plan` (argv joined for display).
    fn plan(&self, _ctx: &CheckContext) -> Vec<String> {
        Vec::new()
    }

    /// Why the step must run in the `qflow apply` process and never as a cluster
    /// job (a password read from qflow's environment, which would have to travel
    /// in the job's), or `None` when it may run anywhere.
    fn runs_only_here(&self) -> Option<String> {
        None
    }

    /// Whether the step hands qflow's make jobserver to the programs it runs.
    fn uses_jobserver(&self) -> bool {
        false
    }

    /// How long a run of the step is expected to take (ms) before it has ever
    /// run here: the scheduler starts the longest remaining path first. Later
    /// runs use the step's last measured duration instead. Default: one second.
    fn expected_ms(&self) -> u64 {
        1_000
    }

    /// Whether, without `jobs:`, the step's make shares the run's slots: it takes
    /// one slot to start and its make grows into idle ones through the run's
    /// jobserver (`job_slots.rs`), giving them back as other steps need them.
    fn shares_run_slots(&self) -> bool {
        false
    }

    /// CPU slots the step takes when the workflow gives no `jobs:` (default 1).
    /// A kernel build returns its safe cap here.
    fn default_jobs(&self) -> usize {
        1
    }

    /// Do the work: write the declared outputs into `ctx.out_dir()`.
    fn run(&self, ctx: &mut RunContext) -> anyhow::Result<()>;

    /// The independent parts of one run of the step, by label (a boot matrix's
    /// runs: `size=16`, `size=64`), which an executor may run as jobs of their
    /// own, side by side: each part is [`Step::run_part`] into the same staging
    /// directory, and once every part succeeded [`Step::finish_parts`] writes
    /// what spans them. Empty (the default): the step runs whole, by [`Step::run`].
    /// Running the parts and then finishing must leave the outputs `run` leaves.
    fn parts(&self) -> Vec<String> {
        Vec::new()
    }

    /// Run part `index` of [`Step::parts`]: write its outputs into `ctx.out_dir()`,
    /// touching nothing another part writes. The context holds the part's own CPU
    /// slots and log.
    fn run_part(&self, _ctx: &mut RunContext, index: usize) -> anyhow::Result<()> {
        anyhow::bail!("this step has no part {index}: it runs whole")
    }

    /// After every part succeeded: write the outputs that span the parts (a
    /// metrics table of every run) into `ctx.out_dir()`. Runs where the step's
    /// result is recorded, so it should be quick. Nothing by default.
    fn finish_parts(&self, _ctx: &mut RunContext) -> anyhow::Result<()> {
        Ok(())
    }
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
    /// Deserialize the same fields from their canonical JSON text (a loaded
    /// workflow's memo keeps them so): the step [`StepKind::parse`] gives for
    /// the value that JSON was made of. Its errors are only a reason to load
    /// the workflow in full, which says where the problem is; they name no field.
    fn parse_json(&self, fields: &str) -> Result<Box<dyn Step>, FieldError>;
    /// Every tool a step of this kind may run, whatever its fields.
    fn tools(&self) -> Vec<Tool>;
    /// Every host need a step of this kind may have, whatever its fields.
    fn needs(&self) -> Vec<HostNeed>;
}

/// Implemented by a kind's fields struct to register it with [`KindOf`].
pub trait StepFields: Step + DeserializeOwned + schemars::JsonSchema + 'static {
    const KIND: &'static str;
    const SCHEMA_VERSION: u32;

    /// Every tool a step of this kind may run, whatever its fields: what
    /// `qflow doctor` checks with no workflow, and what the host install script
    /// must provide. A configured step's [`Step::tools`] are a subset.
    fn kind_tools() -> Vec<Tool>;

    /// Every host need a step of this kind may have, whatever its fields.
    /// A configured step's [`Step::requirements`] are a subset.
    fn kind_needs() -> Vec<HostNeed>;
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

    fn parse_json(&self, fields: &str) -> Result<Box<dyn Step>, FieldError> {
        match serde_json::from_str::<T>(fields) {
            Ok(step) => Ok(Box::new(step)),
            Err(err) => Err(FieldError::new(String::new(), err.to_string())),
        }
    }

    fn tools(&self) -> Vec<Tool> {
        T::kind_tools()
    }

    fn needs(&self) -> Vec<HostNeed> {
        T::kind_needs()
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
