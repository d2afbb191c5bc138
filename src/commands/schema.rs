//! `qflow schema`: print the JSON Schema (draft-07) of workflow files, for editors.

use qflow_engine::Registry;
use qflow_engine::workflow_schema::workflow_schema;

pub fn run(registry: &Registry) -> anyhow::Result<i32> {
    println!(
        "{}",
        serde_json::to_string_pretty(&workflow_schema(registry))?
    );
    Ok(0)
}
