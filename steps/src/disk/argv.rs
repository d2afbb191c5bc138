//! Running a `disk` step's host programs: one argv in the output directory, and
//! the cleanup (unmount, disconnect) that must run after a failure even while the
//! run is being cancelled.

use std::path::Path;

use qflow_engine::RunContext;
use qflow_engine::context::quote_arg;

pub(super) fn run_argv(
    ctx: &mut RunContext,
    argv: &[String],
    dir: &Path,
    env: &[(&str, &str)],
) -> anyhow::Result<()> {
    let mut cmd = ctx.command(&argv[0]);
    cmd.args(&argv[1..]).current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    ctx.run(cmd)
}

/// Undo a mount or an nbd connection after a failure. Runs even when the run is
/// being cancelled: `RunContext::run` refuses to start programs then, so this
/// falls back to running the program directly (it is short and waited for).
pub(super) fn cleanup(ctx: &mut RunContext, argv: &[String]) {
    let shown = argv
        .iter()
        .map(|a| quote_arg(a))
        .collect::<Vec<_>>()
        .join(" ");
    ctx.log(&format!("cleanup after failure: {shown}"));
    if !ctx.is_cancelled() {
        let mut cmd = ctx.command(&argv[0]);
        cmd.args(&argv[1..]);
        if let Err(e) = ctx.run(cmd) {
            ctx.log(&format!("cleanup failed: {e:#}"));
        }
        return;
    }
    let mut cmd = ctx.command(&argv[0]);
    cmd.args(&argv[1..]).stdin(std::process::Stdio::null());
    match cmd.output() {
        Ok(out) => ctx.log(&format!(
            "$ {shown} ({})",
            qflow_engine::context::describe_status(out.status)
        )),
        Err(e) => ctx.log(&format!("cleanup `{shown}` could not run: {e}")),
    }
}
