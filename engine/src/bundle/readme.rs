//! The bundle's `README.md`: what the archive holds and the exact commands that
//! check the host, reproduce the run and verify it.
//!
//! It names the secrets the evaluator must provide (the steps' own declarations,
//! never their values), the host files the workflow reads but the bundle cannot
//! carry (with their lock digests), the bundled results with their hashes, and the
//! outputs left to `qflow apply`.

use std::collections::{BTreeMap, BTreeSet};

use crate::lockfile::LockFile;
use crate::step::{SecretSource, SecretUse};
use crate::workflow::Workflow;

/// What went into the bundle (and what did not).
pub struct Listing {
    /// The workflow and lock paths inside the bundle.
    pub workflow: String,
    /// The lock's path inside the bundle.
    pub lock: String,
    /// (step, secret), a file's path relative to the bundle's root.
    pub secrets: Vec<(String, SecretUse)>,
    /// (step, input label, digest) of inputs outside the bundle.
    pub host_inputs: Vec<(String, String, String)>,
    /// (step, output, size) of bundled results.
    pub results: Vec<(String, String, u64)>,
    /// (step, output, size, hash) of outputs left to `qflow apply`.
    pub left_out: Vec<(String, String, Option<u64>, String)>,
    /// Outputs over this size that are not results are left out.
    pub small_output: u64,
    /// `--set VAR=VALUE` overrides the recorded run used (vars whose locked
    /// value differs from the workflow file's), in the order of the commands.
    pub overrides: Vec<(String, String)>,
}

/// The README text.
pub fn text(wf: &Workflow, lock: &LockFile, listing: &Listing) -> String {
    let lock_name = &listing.lock;
    // `qflow apply --set V=X workflow.yaml`: the run's overrides repeated, quoted for sh.
    let file = &{
        let mut args: Vec<String> = listing
            .overrides
            .iter()
            .map(|(k, v)| format!("--set {}", crate::context::quote_arg(&format!("{k}={v}"))))
            .collect();
        args.push(listing.workflow.clone());
        args.join(" ")
    };
    let mut r = String::new();
    let mut line = |s: &str| {
        r.push_str(s);
        r.push('\n');
    };
    line(&format!("# Artifact: `{}`", wf.name));
    line("");
    line(&format!(
        "This directory was written by `qflow bundle`. It holds the qflow workflow `{file}`, \
         its lock `{lock_name}` (the key, tool versions, input digests and output hashes of \
         every step of the run that produced the results), the workflow's local inputs, and \
         the collected results in `results/`."
    ));
    line("");
    line("## Reproduce");
    line("");
    line("With qflow installed (and, on Debian, the packages `qflow doctor` names):");
    line("");
    line("```sh");
    line(&format!(
        "qflow doctor {file}   # check the host; prints what to install"
    ));
    line(&format!(
        "qflow apply {file}    # run every step; outputs appear under out/<step>/"
    ));
    line(&format!(
        "qflow verify {file}   # rebuild from scratch and compare every output hash with {lock_name}"
    ));
    if listing
        .results
        .iter()
        .any(|(_, out, _)| out == "metrics.json")
    {
        line(&format!(
            "qflow results {file} --summary   # the metrics table from the records (apply redraws out/figures/)"
        ));
    }
    line("```");
    line("");
    line(&format!(
        "`qflow verify` leaves `{lock_name}` alone; `qflow apply` rewrites it with this \
         machine's run, so keep a copy to compare with. After an apply, `out/<step>/` holds \
         what `results/<step>/` holds here."
    ));
    if !listing.overrides.is_empty() {
        line("");
        line(&format!(
            "The recorded run overrode {} of the workflow's vars with `--set`; the commands \
             above repeat them, and every `qflow` command on this workflow needs them too.",
            listing.overrides.len()
        ));
    }
    let secrets = &listing.secrets;
    if !secrets.is_empty() {
        line("");
        line("## Secrets to provide");
        line("");
        line("Secrets are never bundled. Before applying, provide:");
        line("");
        let mut seen = BTreeSet::new();
        for (_, s) in secrets.iter().filter(|(_, s)| seen.insert(&s.source)) {
            let users: Vec<String> = secrets
                .iter()
                .filter(|(_, u)| u.source == s.source)
                .map(|(step, u)| format!("step `{step}` field `{}`", u.field))
                .collect();
            let users = users.join(", ");
            match &s.source {
                SecretSource::File(path) => line(&format!(
                    "- `{path}` ({users}): a file whose first line is the password"
                )),
                SecretSource::Env(name) => {
                    line(&format!("- environment variable `{name}` ({users})"))
                }
            }
        }
        line("");
        line(
            "A different password gives a different step key, so those steps' keys (not \
             necessarily their outputs) differ from the lock's.",
        );
    }
    if !listing.host_inputs.is_empty() {
        line("");
        line("## Host files the workflow reads (not bundled)");
        line("");
        line(
            "Install them (the same content: it enters the step keys) before applying; \
             `qflow plan` names any that differ.",
        );
        line("");
        for (step, label, digest) in &listing.host_inputs {
            if digest.is_empty() {
                line(&format!("- `{label}` (step `{step}`)"));
            } else {
                line(&format!("- `{label}` (step `{step}`), digest `{digest}`"));
            }
        }
    }
    line("");
    line("## Results in this bundle");
    line("");
    if listing.results.is_empty() {
        line("None: every output is rebuilt by `qflow apply`.");
    }
    for (step, out, size) in &listing.results {
        let hash = &lock.steps[step].outputs[out];
        line(&format!(
            "- `results/{step}/{out}` ({size} bytes, blake3 `{hash}`)"
        ));
    }
    if !listing.left_out.is_empty() {
        line("");
        line(&format!(
            "Not bundled (disk images and outputs over {} KiB: `qflow apply` rebuilds them; their \
             hashes are in `{lock_name}`):",
            listing.small_output / 1024
        ));
        line("");
        for (step, out, size, hash) in &listing.left_out {
            let size = match size {
                Some(n) => format!("{n} bytes"),
                None => "not in the cache".to_string(),
            };
            line(&format!("- `{step}/{out}` ({size}, blake3 `{hash}`)"));
        }
    }
    let mut tools: BTreeMap<&String, &String> = BTreeMap::new();
    for s in lock.steps.values() {
        tools.extend(s.tools.iter());
    }
    if !tools.is_empty() {
        line("");
        line("## Tools the recorded run used");
        line("");
        for (t, v) in tools {
            line(&format!("- `{t}`: {v}"));
        }
    }
    r
}
