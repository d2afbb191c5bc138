//! The runs of one boot step: one plan (and command line) per run, one per
//! `matrix` combination, and the pool that starts them within the slots the engine
//! gave the step (its own slot and its jobserver's tokens), drives each on a
//! thread and relays its lines to the step's log.
//!
//! The runs are also the step's parts (`Step::parts`): a cluster executor runs
//! each as a job of its own (`run_runs` with its index), every one writing its own run
//! directory of the shared staging directory and restoring the checkpoint
//! from the shared cache; the metrics that span the runs are written once all
//! of them succeeded.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use qflow_engine::RunContext;

use super::command_line::QemuCommandLine;
use super::fields::Collect;
use super::guest_run::{self, CONSOLE_LOG, Event, GuestLogin, QEMU_LOG, RunPlan};
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
                .then(|| ctx.upstream(&r.step).ok())
                .flatten();
            h.update(b"\0");
            h.update(r.step.as_bytes());
            h.update(b"=");
            let tree = tree.as_deref().and_then(Path::file_name);
            h.update(tree.map(|t| t.as_encoded_bytes()).unwrap_or_default());
        }
        for c in &self.commands {
            h.update(b"\0");
            h.update(c.as_bytes());
        }
        h.finalize().to_hex().to_string()
    }

    /// The runs as parts a cluster executor may submit as jobs of their own:
    /// their labels, or none when the step has one run.
    pub(super) fn part_labels(&self) -> Vec<String> {
        let runs = self.runs();
        if runs.len() < 2 {
            return Vec::new();
        }
        runs.into_iter().filter_map(|(label, _)| label).collect()
    }

    /// Run every run of the step, or run `only` alone as a part of its step: the
    /// same machine, plan, directory and console markers either way, so the outputs
    /// are the same; the metrics that span the runs are the caller's.
    pub(super) fn run_runs(&self, ctx: &mut RunContext, only: Option<usize>) -> anyhow::Result<()> {
        let timeout = self.timeout().map_err(|e| anyhow::anyhow!("{e}"))?;
        let login = self
            .login
            .as_ref()
            .map(|l| l.guest_login(ctx))
            .transpose()?;
        let out_dir = ctx.out_dir().to_path_buf();
        for warning in self.plugin_warnings() {
            ctx.log(&format!("qflow: {warning}"));
            ctx.progress(&warning);
        }
        let spec = self.machine(ctx, &out_dir)?;
        ctx.note("command_line", &spec.line.display());
        ctx.log(&format!("qflow: {}", spec.line.display()));
        let (plans, lines) = self.plans_of(ctx, &spec, login, timeout, only)?;
        if let Some(index) = only {
            anyhow::ensure!(!plans.is_empty(), "this step has no run {index}");
        }
        let ran = self.execute(ctx, &plans, &lines, spec.snapshot_file.as_deref());
        if self.minimal_init() {
            ran.map_err(|e| {
                let console = std::fs::read(out_dir.join(CONSOLE_LOG)).unwrap_or_default();
                super::minimal_init::explain(e, &String::from_utf8_lossy(&console))
            })
        } else {
            ran
        }
    }

    /// The plans of every run, or of run `only`.
    fn plans_of(
        &self,
        ctx: &mut RunContext,
        spec: &MachineSpec,
        login: Option<GuestLogin>,
        timeout: Duration,
        only: Option<usize>,
    ) -> anyhow::Result<(Vec<RunPlan>, Vec<QemuCommandLine>)> {
        let out_dir = ctx.out_dir().to_path_buf();
        let line = &spec.line;
        let mut plans = Vec::new();
        let mut lines = Vec::new();
        let step_seed = self.marker_seed(ctx);
        let runs = self.runs().into_iter().enumerate();
        for (_, (label, params)) in runs.filter(|(i, _)| only.is_none_or(|o| o == *i)) {
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

#[cfg(test)]
mod tests {
    use super::Boot;

    fn boot(yaml: &str) -> Boot {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn a_matrix_s_runs_are_the_step_s_parts_in_run_order_and_one_run_is_no_part() {
        let b = boot("kernel: /k\nmatrix: { size: [16, 64], mode: [a, b] }\n");
        assert_eq!(
            b.part_labels(),
            [
                "mode=a,size=16",
                "mode=a,size=64",
                "mode=b,size=16",
                "mode=b,size=64"
            ]
        );
        assert!(boot("kernel: /k\n").part_labels().is_empty());
        assert!(
            boot("kernel: /k\nmatrix: { n: [1] }\n")
                .part_labels()
                .is_empty()
        );
    }
}
