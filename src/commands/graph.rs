//! `qflow graph`: the step graph as Graphviz DOT (or SVG through `dot`), each
//! step coloured by whether `apply` would run it.

use anyhow::Context as _;
use qflow_engine::Registry;
use qflow_engine::plan::{PlannedStep, plan};
use qflow_engine::session::{Session, cache_dir};
use qflow_engine::workflow::Workflow;

use crate::cli::Located;
use crate::usage_error::UsageError;

pub fn run(registry: &Registry, workflow: &Located, format: &str) -> anyhow::Result<i32> {
    let wf = super::load(workflow, registry)?;
    let mut session = Session::open(&wf, registry, &cache_dir(&wf, workflow.cache.as_deref()))?;
    let steps = plan(&mut session)?;
    let dot = graph_dot(&wf, &steps);
    match format {
        "dot" => print!("{dot}"),
        "svg" => {
            use std::io::Write;
            let mut child = std::process::Command::new("dot")
                .arg("-Tsvg")
                .stdin(std::process::Stdio::piped())
                .spawn()
                .context("cannot run Graphviz `dot`; install it (apt-get install graphviz) or use --format dot")?;
            child.stdin.take().unwrap().write_all(dot.as_bytes())?;
            let status = child.wait()?;
            if !status.success() {
                anyhow::bail!("`dot -Tsvg` failed");
            }
        }
        other => {
            return Err(UsageError(format!("--format `{other}`: use `dot` or `svg`")).into());
        }
    }
    Ok(0)
}

fn graph_dot(wf: &Workflow, steps: &[PlannedStep]) -> String {
    let mut out = format!(
        "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, style=filled];\n",
        wf.name
    );
    for s in steps {
        let color = if s.action == "cached" {
            "palegreen"
        } else {
            "orange"
        };
        out.push_str(&format!(
            "  \"{}\" [label=\"{}\\n{} ({})\", fillcolor={color}];\n",
            s.name, s.name, s.kind, s.action
        ));
    }
    for s in &wf.steps {
        for u in wf.upstream_names(s) {
            out.push_str(&format!("  \"{u}\" -> \"{}\";\n", s.name));
        }
    }
    out.push_str("}\n");
    out
}
