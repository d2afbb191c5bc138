//! `qflow plan`: what `apply` would do and why, without running anything.
//!
//! With a remote cache, a step the local cache lacks is asked there (the action entry only,
//! nothing else is downloaded): `remote hit` when a sound entry answers its key.
//!
//! In `qflow plan --json` each command is an argv array, never a shell string:
//! `{"argv": ["qemu-img", "create", ...]}`, with a `note` for what follows it on
//! the shown line (`# accel auto: ...`, `(stdin: ...)`), or a `note` alone for a
//! line that is only a comment (`# GET URL`). A kind shows each argument through
//! `quote_arg`, so the split is exact: any argument holding a space, quote, `#`,
//! `(` or `;` was quoted, and an unquoted one of these starts the note. Words in
//! angle brackets (`<disk.raw>`) are placeholders for paths known only when the
//! step runs.
//!
//! Imports `session`, `input_digests`, `dag`, `step`, `out_links` and `remote_use`.

use std::collections::{BTreeMap, HashMap};

use qflow_cache::Hash;
use qflow_cache::remote::RemoteCache;
use serde::Serialize;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::dag::StepId;
use crate::session::{Prepared, Session};
use crate::step::CheckContext;

/// One step of a plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    /// The step's name.
    pub name: String,
    /// Its `kind:`.
    pub kind: String,
    /// `run`, `cached` or `remote hit`.
    pub action: String,
    /// Why it runs.
    pub reasons: Vec<String>,
    /// The command lines the step would run, as shown (JSON: argv arrays).
    #[serde(serialize_with = "as_argv")]
    pub commands: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Its key (hex), when known before anything runs.
    pub key: Option<String>,
}

/// The slots a step that hands qflow's make jobserver on gets: what `make`'s
/// `-j` amounts to, since no `-jN` appears on its command line.
fn jobs_share(written: Option<usize>, default: usize) -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (wanted, why) = match written {
        Some(n) => (n, format!("`jobs: {n}`")),
        None => (default, format!("no `jobs:`, the kind's default {default}")),
    };
    let n = wanted.clamp(1, cores);
    let handed = if n > 1 {
        "handed on as qflow's make jobserver"
    } else {
        "one slot: no jobserver"
    };
    format!(
        "# {n} job slots ({why}; at most `qflow apply --jobs`, {cores} cores by default), \
         {handed}: make runs as with `-j{n}`"
    )
}

/// Plan every step in schedule order.
pub fn plan(session: &mut Session) -> anyhow::Result<Vec<PlannedStep>> {
    plan_with_remote(session, None)
}

/// [`plan`], asking `remote` for what the local cache lacks.
pub fn plan_with_remote(
    session: &mut Session,
    remote: Option<&RemoteCache>,
) -> anyhow::Result<Vec<PlannedStep>> {
    plan_inner(session, remote, remote.is_some())
}

/// [`plan`] for `qflow status`: a result an earlier apply left on the remote cache (its
/// entry kept here, its bytes not) is a `remote hit`, although no server is asked.
pub fn plan_knowing_remote_results(session: &mut Session) -> anyhow::Result<Vec<PlannedStep>> {
    plan_inner(session, None, true)
}

fn plan_inner(
    session: &mut Session,
    remote: Option<&RemoteCache>,
    kept: bool,
) -> anyhow::Result<Vec<PlannedStep>> {
    let prepared = session.prepare_keys();
    // Inputs are hashed on a thread, in schedule order, while the steps before are
    // planned (see `input_digests.rs`).
    let shared: &Session = session;
    let stop = AtomicBool::new(false);
    let planned = std::thread::scope(|scope| {
        let (hashed, batches) = std::sync::mpsc::channel::<()>();
        let order: Vec<StepId> = (shared.dag.order().into_iter())
            .filter(|id| !prepared.inputs.is_known(id.index()))
            .collect();
        let (inputs, stop) = (&prepared.inputs, &stop);
        scope.spawn(move || {
            crate::input_digests::hash_in_order(
                &order,
                inputs,
                // The plan keeps every step's digests (it shows what changed).
                usize::MAX,
                stop,
                |ids| shared.digest_inputs(ids, stop),
                || {
                    let _ = hashed.send(());
                },
            );
        });
        let wait_for = |i: usize| {
            // Until its batch is hashed, or the hashing thread ended.
            while !prepared.inputs.is_known(i) && batches.recv().is_ok() {}
        };
        let planned = plan_steps(shared, &prepared, remote, kept, wait_for);
        stop.store(true, Ordering::Relaxed);
        planned
    })?;
    session.save_caches()?;
    Ok(planned)
}

/// Plan every step in schedule order; `wait_for(i)` returns once step `i`'s
/// inputs are hashed.
fn plan_steps(
    session: &Session,
    prepared: &Prepared,
    remote: Option<&RemoteCache>,
    kept: bool,
    wait_for: impl Fn(usize),
) -> anyhow::Result<Vec<PlannedStep>> {
    let remote_reads = crate::remote_use::readable(session.workflow);
    let probe = session.cache.probe()?;
    let workflow = session.workflow;
    let ctx = CheckContext {
        work_dir: workflow.dir.clone(),
    };
    // As apply's first look at the lock: a settled stamp vouches for every
    // record the lock names, and each distinct output tree is checked once.
    let settled = session.lock_digest().is_some_and(|lock| {
        crate::out_links::OutLinks::settled_at(
            &workflow.dir.join("out"),
            &session.settled_stamp(),
            &lock,
            session.cache.records_generation(),
        )
    });
    let mut whole_trees: HashMap<Hash, bool> = HashMap::new();
    let mut outputs: BTreeMap<String, Hash> = BTreeMap::new();
    let mut runs: BTreeMap<String, bool> = BTreeMap::new();
    let mut planned = Vec::new();
    for i in session.dag.order().into_iter().map(|id| id.index()) {
        let s = &workflow.steps[i];
        let mask = s.mask();
        let mut commands: Vec<String> = s.step.plan(&ctx).iter().map(|c| mask.apply(c)).collect();
        // Shown for a kind that runs make wide by default (a kernel) or a step given
        // `jobs:`; a one-slot command gets no jobserver and no line.
        if s.jobs().is_none() && s.step.shares_run_slots() {
            commands.push(
                "# starts with one job slot; its make shares the run's slots \
                 (`qflow apply --jobs`) through qflow's make jobserver: idle ones while \
                 other steps need none, back to them as they do"
                    .to_string(),
            );
        } else if s.step.uses_jobserver() && (s.step.default_jobs() > 1 || s.jobs().is_some()) {
            commands.push(jobs_share(s.jobs(), s.step.default_jobs()));
        }
        let pending: Vec<&str> = (workflow.upstream_names(s))
            .filter(|u| runs.get(*u).copied().unwrap_or(true))
            .collect();
        if !pending.is_empty() {
            runs.insert(s.name.clone(), true);
            planned.push(PlannedStep {
                name: s.name.clone(),
                kind: s.kind.to_string(),
                action: "run".into(),
                reasons: std::iter::once(format!(
                    "upstream `{}` runs first (this step stays cached if their outputs come out unchanged)",
                    pending.join("`, `")
                ))
                .chain(s.step.run_note(&session.state_dir_of(i)))
                .collect(),
                commands,
                key: None,
            });
            continue;
        }
        let mut up: Vec<(&str, Hash)> = (workflow.upstream_names(s))
            .map(|u| (u, outputs[u]))
            .collect();
        up.sort_unstable_by(|a, b| a.0.cmp(b.0));
        wait_for(i);
        // The key alone; the material only for a step that runs (its reasons).
        let key = match session.key_of(prepared, i, up.iter().copied()) {
            Ok(key) => key,
            Err(e) => {
                runs.insert(s.name.clone(), true);
                planned.push(PlannedStep {
                    name: s.name.clone(),
                    kind: s.kind.to_string(),
                    action: "run".into(),
                    reasons: vec![format!("cannot compute its key: {e}")],
                    commands,
                    key: None,
                });
                continue;
            }
        };
        #[cfg(debug_assertions)]
        {
            let material = session.material(prepared, i, up.iter().copied());
            assert_eq!(
                material.map(|m| m.key()),
                Ok(key),
                "the key is its material's key"
            );
        }
        let forced = workflow.selection.is_forced(&s.name);
        let mut action = "cached";
        let from_lock = session.locked_output(i, &key).filter(|output| {
            let cache = &session.cache;
            *whole_trees.entry(*output).or_insert_with(|| {
                probe.has_tree(output) && (cache.tree_unchanged(output) || cache.has_tree(output))
            }) && (settled || cache.record_names(&key, output))
        });
        let mut output = match from_lock {
            _ if forced => None,
            Some(output) => Some(output),
            None if s.cache => session.usable_record(&key).map(|r| r.output),
            None => None,
        };
        if output.is_none()
            && s.cache
            && !forced
            && kept
            && remote_reads[i]
            && let Some(rr) = qflow_cache::remote::kept_entry(&session.cache, &key)
        {
            action = "remote hit";
            output = Some(rr.record.output);
        }
        if output.is_none()
            && s.cache
            && !forced
            && let Some(remote) = remote.filter(|_| remote_reads[i])
        {
            remote.check()?;
            action = "remote hit";
            output = remote.lookup(&key).map(|r| r.record.output);
        }
        match output {
            Some(output) => {
                outputs.insert(s.name.clone(), output);
                runs.insert(s.name.clone(), false);
                planned.push(PlannedStep {
                    name: s.name.clone(),
                    kind: s.kind.to_string(),
                    action: action.into(),
                    reasons: vec![],
                    commands,
                    key: Some(key.to_hex()),
                });
            }
            None => {
                runs.insert(s.name.clone(), true);
                planned.push(PlannedStep {
                    name: s.name.clone(),
                    kind: s.kind.to_string(),
                    action: "run".into(),
                    reasons: {
                        let mut reasons = if forced {
                            vec!["forced with --force".to_string()]
                        } else {
                            let material = || session.material(prepared, i, up.iter().copied());
                            (session.reasons(prepared, i, &key, material).into_iter())
                                .map(|r| r.into_owned())
                                .collect()
                        };
                        reasons.extend(s.step.run_note(&session.state_dir_of(i)));
                        reasons
                    },
                    commands,
                    key: Some(key.to_hex()),
                });
            }
        }
    }
    Ok(planned)
}

/// One command of a plan in JSON: its argv and what the shown line says beyond it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedCommand {
    /// The program and its arguments (empty for a line that is only a note).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
    /// What the shown line says beyond the argv (a comment, a placeholder's meaning).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl PlannedCommand {
    /// Split a shown command line (arguments quoted as `quote_arg` does) back into
    /// its argv; an unquoted `#`, `(` or `;` starts the note.
    pub fn from_line(line: &str) -> PlannedCommand {
        let mut argv = Vec::new();
        let mut word: Option<String> = None;
        let mut chars = line.char_indices().peekable();
        let mut note = None;
        while let Some((at, c)) = chars.next() {
            match c {
                ' ' | '\t' => {
                    if let Some(w) = word.take() {
                        argv.push(w);
                    }
                }
                '#' | '(' | ';' if word.is_none() || c == ';' => {
                    let rest = line[at..].trim_start_matches([';', '#']).trim();
                    note = Some(rest.to_string()).filter(|n| !n.is_empty());
                    break;
                }
                '\'' => {
                    let w = word.get_or_insert_with(String::new);
                    for (_, q) in chars.by_ref() {
                        if q == '\'' {
                            break;
                        }
                        w.push(q);
                    }
                }
                '\\' => {
                    let w = word.get_or_insert_with(String::new);
                    if let Some((_, n)) = chars.next() {
                        w.push(n);
                    }
                }
                c => word.get_or_insert_with(String::new).push(c),
            }
        }
        if let Some(w) = word.take() {
            argv.push(w);
        }
        PlannedCommand { argv, note }
    }
}

fn as_argv<S: serde::Serializer>(lines: &[String], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(lines.len()))?;
    for line in lines {
        seq.serialize_element(&PlannedCommand::from_line(line))?;
    }
    seq.end()
}

#[cfg(test)]
mod tests {
    use super::PlannedCommand;
    use crate::process::quote_arg;

    fn split(line: &str) -> (Vec<&str>, Option<&str>) {
        let c = Box::leak(Box::new(PlannedCommand::from_line(line)));
        (
            c.argv.iter().map(|s| s.as_str()).collect(),
            c.note.as_deref(),
        )
    }

    #[test]
    fn a_quoted_line_splits_back_into_the_exact_argv() {
        let argv = [
            "sh",
            "-c",
            "echo 'hi' > \"$QFLOW_OUT/a b\"; ls # x",
            "",
            "(y)",
        ];
        let line: Vec<String> = argv.iter().map(|a| quote_arg(a)).collect();
        let c = PlannedCommand::from_line(&line.join(" "));
        assert_eq!(c.argv, argv);
        assert_eq!(c.note, None);
    }

    #[test]
    fn what_follows_an_unquoted_hash_paren_or_semicolon_is_a_note() {
        assert_eq!(
            split("qemu-system-x86_64 -m 512   # accel auto: kvm"),
            (
                vec!["qemu-system-x86_64", "-m", "512"],
                Some("accel auto: kvm")
            )
        );
        assert_eq!(
            split("sfdisk <disk.raw>  (one ext4 partition at 1 MiB)"),
            (
                vec!["sfdisk", "<disk.raw>"],
                Some("(one ext4 partition at 1 MiB)")
            )
        );
        assert_eq!(
            split("qemu -hda a.qcow2; then a memory snapshot"),
            (
                vec!["qemu", "-hda", "a.qcow2"],
                Some("then a memory snapshot")
            )
        );
        assert_eq!(
            split("# GET https://x/y"),
            (vec![], Some("GET https://x/y"))
        );
    }
}
