//! The `command` kind: run an argv, never a shell string built by qflow.
//!
//! The program runs in the workflow's directory with `QFLOW_OUT` set to its fresh
//! output directory, and with qflow's make jobserver in `MAKEFLAGS`, so a `make`
//! it starts stays within the step's `jobs` slots. Its `metrics:` are read from
//! its outputs after it exits.

use std::collections::BTreeMap;

use anyhow::Context as _;
use qflow_engine::results::{MetricSpec, check_metrics, check_metrics_read};
use qflow_engine::str_list::StrList;
use qflow_engine::{
    CheckContext, FieldError, HostNeed, Input, OutputRole, RunContext, Step, StepFields, Tool,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// Run a program with arguments. A user who wants a shell writes `[sh, -c, '...']`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// The argv to run: program first.
    pub run: StrList,
    /// Host files, directories (whole trees) or globs whose content enters the key.
    #[serde(default)]
    pub inputs: StrList,
    /// Files or directories the program must create under `$QFLOW_OUT`.
    #[serde(default)]
    pub outputs: StrList,
    /// Numbers taken from the outputs after the program exits, by name:
    /// `{ from: FILE, regex: '...(one group)...' | json: /pointer | csv: column, unit, expect }`.
    #[serde(default)]
    pub metrics: BTreeMap<String, MetricSpec>,
}

impl StepFields for Command {
    const KIND: &'static str = "command";
    const SCHEMA_VERSION: u32 = 1;

    /// A command runs the user's own programs: qflow provides none.
    fn kind_tools() -> Vec<Tool> {
        Vec::new()
    }

    fn kind_needs() -> Vec<HostNeed> {
        Vec::new()
    }
}

/// The role of an output a user named: a command can write anything, so a disk
/// image or a memory snapshot is told by its conventional name (`image.*`,
/// `*.qcow2`, `*.raw`, `*.img`; `*.snapshot`), and everything else is an artifact.
fn role_by_name(output: &str) -> OutputRole {
    let name = output.rsplit('/').next().unwrap_or(output);
    if name.starts_with("image.")
        || [".qcow2", ".raw", ".img"]
            .iter()
            .any(|ext| name.ends_with(ext))
    {
        OutputRole::Image
    } else if name.ends_with(".snapshot") {
        OutputRole::MachineState
    } else {
        OutputRole::Artifact
    }
}

impl Step for Command {
    fn inputs(&self) -> Vec<Input> {
        self.inputs
            .iter()
            .enumerate()
            .map(|(i, p)| Input::new(format!("inputs[{i}]"), p.to_string()))
            .collect()
    }

    fn has_inputs(&self) -> bool {
        !self.inputs.is_empty()
    }

    fn metrics(&self) -> BTreeMap<String, MetricSpec> {
        self.metrics.clone()
    }

    fn output_roles(&self) -> Vec<(String, OutputRole)> {
        let mut out: Vec<(String, OutputRole)> = self
            .outputs
            .iter()
            .map(|o| (o.to_string(), role_by_name(o)))
            .collect();
        out.extend(crate::metrics::outputs(&self.metrics));
        out
    }

    fn check(&self, _ctx: &CheckContext) -> Result<(), FieldError> {
        if self.run.first().is_none_or(str::is_empty) {
            return Err(FieldError::new(
                "run",
                "`run` needs at least a program name, e.g. `run: [make, all]`",
            ));
        }
        check_metrics(&self.metrics)?;
        check_metrics_read(
            &self.metrics,
            &self.outputs.to_vec(),
            "declare it in `outputs` and write it under $QFLOW_OUT",
        )?;
        Ok(())
    }

    fn plan(&self, _ctx: &CheckContext) -> Vec<String> {
        vec![
            self.run
                .iter()
                .map(qflow_engine::context::quote_arg)
                .collect::<Vec<_>>()
                .join(" "),
        ]
    }

    fn uses_jobserver(&self) -> bool {
        true
    }

    fn run(&self, ctx: &mut RunContext) -> anyhow::Result<()> {
        let mut argv = self.run.iter();
        let program = argv.next().context("`run` names no program")?;
        let mut cmd = ctx.command(program);
        cmd.args(argv);
        ctx.run(cmd)?;
        let run = crate::metrics::RunDir {
            run: String::new(),
            params: BTreeMap::new(),
            repeat: None,
            dir: ctx.out_dir().to_path_buf(),
        };
        crate::metrics::record(ctx, &self.metrics, &[run])
    }
}
