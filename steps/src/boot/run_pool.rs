//! The runs of one boot step: one plan (and command line) per run, one per
//! `matrix` combination, and the pool that starts them within the slots the engine
//! gave the step (its own slot and its jobserver's tokens), drives each on a
//! thread and relays its lines to the step's log.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use qflow_engine::RunContext;

use super::command_line::QemuCommandLine;
use super::fields::Collect;
use super::guest_run::{self, Event, GuestLogin, QEMU_LOG, RunPlan};
use super::machine_spec::MachineSpec;
use super::matrix::substitute;
use super::{Boot, machine};

impl Boot {
    /// The step's identity for its console markers: its name, the content hash of
    /// every upstream output it uses (a tree's name; a checkpoint's by name only)
    /// and its commands.
    fn marker_seed(&self, ctx: &RunContext) -> String {
        use qflow_engine::Step as _;
        let mut h = blake3::Hasher::new();
        h.update(ctx.step().as_bytes());
        for r in self.references() {
            // Not a checkpoint's tree: its memory snapshot differs every time it is
            // saved, and a restored run's markers differ from the checkpoint's by step.
            let tree = (self.from_checkpoint.as_ref() != Some(&r.step))
                .then(|| ctx.upstream(&r.step).ok().and_then(|p| p.file_name()))
                .flatten();
            h.update(b"\0");
            h.update(r.step.as_bytes());
            h.update(b"=");
            h.update(tree.map(|t| t.as_encoded_bytes()).unwrap_or_default());
        }
        for c in &self.commands {
            h.update(b"\0");
            h.update(c.as_bytes());
        }
        h.finalize().to_hex().to_string()
    }

    /// One plan (and machine command line) per run.
    pub(super) fn run_plans(
        &self,
        ctx: &mut RunContext,
        spec: &MachineSpec,
        login: Option<GuestLogin>,
        timeout: Duration,
    ) -> anyhow::Result<(Vec<RunPlan>, Vec<QemuCommandLine>)> {
        let out_dir = ctx.out_dir().to_path_buf();
        let line = &spec.line;
        let mut plans = Vec::new();
        let mut lines = Vec::new();
        let step_seed = self.marker_seed(ctx);
        for (label, params) in self.runs() {
            let attach_link = ctx.state_dir().join(match &label {
                Some(l) => format!("console-{l}.sock"),
                None => "console.sock".to_string(),
            });
            let dir = match &label {
                Some(l) => out_dir.join(l),
                None => out_dir.clone(),
            };
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let mut run_line = line.clone();
            if self.writes_kept() {
                run_line.disks = self.overlays(ctx, &line.disks, &dir)?;
            }
            for plugin in &mut run_line.plugins {
                plugin.path = substitute(&plugin.path, &params);
                plugin.args = plugin.args.iter().map(|a| substitute(a, &params)).collect();
                for (_, value) in &mut plugin.named {
                    *value = substitute(value, &params);
                }
            }
            run_line.extra_args = run_line
                .extra_args
                .iter()
                .map(|a| substitute(a, &params))
                .collect();
            let commands = self
                .commands
                .iter()
                .map(|c| substitute(c, &params))
                .collect();
            let marker_seed = format!("{step_seed}\0{}", label.as_deref().unwrap_or(""));
            plans.push(RunPlan {
                label,
                dir,
                exports: params,
                commands,
                collect: self
                    .collect
                    .iter()
                    .filter_map(|c| match c {
                        Collect::Console(p) => Some(p.clone()),
                        Collect::Disk(_) => None,
                    })
                    .collect(),
                login: login.clone(),
                terminal: self.terminal.map(|t| (t.rows, t.cols)),
                restore: spec.snapshot_file.is_some(),
                keep_disks: self.writes_kept(),
                attach_link: Some(attach_link),
                checkpoint: spec.record.clone(),
                timeout,
                marker_seed,
                cpu: run_line.cpu.clone(),
                icount: run_line.icount.is_some(),
            });
            lines.push(run_line);
        }
        Ok((plans, lines))
    }

    /// Start the runs within the step's slots and drive each on a thread.
    ///
    /// The slots are the engine's: the first run takes the slot the step holds by
    /// running at all, every further run at once takes a token of the jobserver the
    /// engine gave the step (`jobs - 1` tokens), and gives it back when it ends. A
    /// context without a jobserver (one run) runs them one after another.
    pub(super) fn execute(
        &self,
        ctx: &mut RunContext,
        plans: &[RunPlan],
        lines: &[QemuCommandLine],
        snapshot: Option<&Path>,
    ) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::channel::<Event>();
        let helper = match ctx.jobserver().cloned() {
            Some(client) if plans.len() > 1 => {
                let tx = tx.clone();
                let helper = client
                    .into_helper_thread(move |token| {
                        // After the step's loop ended, the token drops here: released.
                        let _ = tx.send(Event::Slot(token));
                    })
                    .context("cannot take job slots from the jobserver")?;
                Some(helper)
            }
            _ => None,
        };
        let mut next = 0;
        let mut running = 0;
        let mut own_slot_free = true;
        let mut tokens: Vec<Option<jobserver::Acquired>> = plans.iter().map(|_| None).collect();
        let mut requested = 0;
        let mut failures: Vec<String> = Vec::new();
        let many = plans.len() > 1;
        let name = |i: usize| plans[i].label.clone().unwrap_or_default();
        std::thread::scope(|scope| {
            let start = |ctx: &mut RunContext, i: usize| -> Result<(), String> {
                let stdin = snapshot
                    .map(std::fs::File::open)
                    .transpose()
                    .map_err(|e| format!("cannot open the checkpoint's memory snapshot: {e}"))?;
                let log = plans[i].dir.join(QEMU_LOG);
                let m = machine::Machine::start(ctx, &lines[i], stdin, &log)
                    .map_err(|e| format!("{}{e:#}", prefix(many, &name(i))))?;
                if many {
                    ctx.log(&format!("qflow: run {} started", name(i)));
                }
                let tx = tx.clone();
                let plan = &plans[i];
                scope.spawn(move || {
                    let r = guest_run::drive(i, plan, m, &tx);
                    let _ = tx.send(Event::Done(i, r));
                });
                Ok(())
            };
            loop {
                let may_start = |next: usize, failures: &Vec<String>, ctx: &RunContext| {
                    next < plans.len() && failures.is_empty() && !ctx.is_cancelled()
                };
                if own_slot_free && may_start(next, &failures, ctx) {
                    let i = next;
                    next += 1;
                    match start(ctx, i) {
                        Ok(()) => {
                            own_slot_free = false;
                            running += 1;
                        }
                        Err(e) => failures.push(e),
                    }
                }
                if let Some(helper) = &helper {
                    while may_start(next, &failures, ctx) && requested < plans.len() - next {
                        helper.request_token();
                        requested += 1;
                    }
                }
                if running == 0 {
                    break;
                }
                match rx.recv() {
                    Ok(Event::Slot(token)) => {
                        requested -= 1;
                        match token {
                            Ok(token) if may_start(next, &failures, ctx) => {
                                let i = next;
                                next += 1;
                                match start(ctx, i) {
                                    Ok(()) => {
                                        tokens[i] = Some(token);
                                        running += 1;
                                    }
                                    Err(e) => failures.push(e),
                                }
                            }
                            // Not needed any more: dropping it gives it back.
                            Ok(_) => {}
                            Err(e) => failures.push(format!("cannot take a job slot: {e}")),
                        }
                    }
                    Ok(Event::Line(i, l)) => {
                        if many {
                            ctx.log(&format!("[{}] {l}", name(i)));
                        } else {
                            ctx.log(&l);
                        }
                    }
                    Ok(Event::Progress(i, t)) => {
                        ctx.progress(&format!("{}{t}", prefix(many, &name(i))))
                    }
                    Ok(Event::Done(i, r)) => {
                        running -= 1;
                        // The run's slot goes back: its token, or the step's own slot.
                        if tokens[i].take().is_none() {
                            own_slot_free = true;
                        }
                        let qemu_log = std::fs::read_to_string(plans[i].dir.join(QEMU_LOG))
                            .unwrap_or_default();
                        for l in qemu_log.lines() {
                            ctx.log(&format!("{}qemu: {l}", prefix(many, &name(i))));
                        }
                        let r = r.and_then(|()| self.collect_from_disks(ctx, &plans[i], &lines[i]));
                        match r {
                            Ok(()) => {
                                if many {
                                    ctx.log(&format!("qflow: run {} ok", name(i)));
                                }
                            }
                            Err(e) => failures.push(format!("{}{e:#}", prefix(many, &name(i)))),
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        drop(helper);
        if ctx.is_cancelled() {
            bail!("interrupted");
        }
        if let Some(first) = failures.first() {
            if many {
                bail!(
                    "{} of {} matrix runs failed; the first: {first}",
                    failures.len(),
                    plans.len()
                );
            }
            bail!("{first}");
        }
        Ok(())
    }
}

fn prefix(many: bool, label: &str) -> String {
    if many {
        format!("run {label}: ")
    } else {
        String::new()
    }
}
