//! One run of a guest: from a started QEMU to its collected results.
//!
//! A run connects to the console and QMP, logs in (or resumes a checkpoint), waits
//! for a shell, turns the terminal echo off and sets its size, exports the run's
//! matrix parameters, runs the commands one by one (each framed, its output and
//! exit status recorded in `commands.json`), copies the `collect` files out over the
//! console (base64, so any file survives the tty), optionally saves a checkpoint,
//! and ends QEMU through QMP. Any failure quotes the guest's last console lines;
//! the QEMU process dies with the [`Machine`] on every path.
//!
//! Runs execute on worker threads, so they report through a channel instead of
//! touching the step's [`qflow_engine::RunContext`].

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use super::attach::{AttachPoint, Mirrors};
use super::checkpoint::{CheckpointRecord, MEMORY_SNAPSHOT, RECORD};
use super::machine::Machine;
use super::qmp::Qmp;
use super::serial_console::{SerialConsole, base64_decode};

/// What a worker tells the step's thread.
pub enum Event {
    /// A transcript line of run `index`.
    Line(usize, String),
    /// Progress text of run `index`.
    Progress(usize, String),
    /// Run `index` ended.
    Done(usize, anyhow::Result<()>),
    /// A job slot from the step's jobserver, for the next waiting run.
    Slot(std::io::Result<jobserver::Acquired>),
}

/// Everything one run does after QEMU has started.
#[derive(Debug, Clone)]
pub struct RunPlan {
    /// `param=value,...` for a matrix run; `None` for the single run.
    pub label: Option<String>,
    /// Where this run's outputs go (the step's output dir or a subdirectory).
    pub dir: PathBuf,
    /// Shell variables exported before the commands (the matrix parameters).
    pub exports: Vec<(String, String)>,
    pub commands: Vec<String>,
    pub collect: Vec<String>,
    pub login: Option<GuestLogin>,
    pub terminal: Option<(u16, u16)>,
    /// The guest resumes from a checkpoint instead of booting.
    pub restore: bool,
    /// Disk writes are kept (overlays): `sync` before QEMU ends.
    pub keep_disks: bool,
    /// Where the run's attach socket is linked (the step's state directory).
    pub attach_link: Option<PathBuf>,
    /// Save a checkpoint (memory snapshot + record) at the end.
    pub checkpoint: Option<CheckpointRecord>,
    pub timeout: Duration,
    /// What identifies this run, from which its console markers derive.
    pub marker_seed: String,
    /// The `-cpu` model, if the step chose one (named when a command dies of SIGILL).
    pub cpu: Option<String>,
    /// The guest's clock counts instructions (`icount`): qflow types only when the
    /// guest waits for input, so a deterministic run prints the same console.
    pub icount: bool,
}

/// The user name and password typed at the guest's getty. The password never
/// prints, not even in `Debug`.
#[derive(Clone)]
pub struct GuestLogin {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for GuestLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GuestLogin {{ user: {:?}, password: <secret> }}",
            self.user
        )
    }
}

/// One command's result, as written to `commands.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CommandRecord {
    pub command: String,
    pub status: i32,
    pub output: String,
}

/// The outputs every run writes, relative to its directory.
pub const CONSOLE_LOG: &str = "console.log";
/// The console from qflow's first probe on: the guest's session after its boot.
pub const SESSION_LOG: &str = "session.log";
pub const COMMANDS_JSON: &str = "commands.json";
pub const QEMU_LOG: &str = "qemu.log";

/// The name a collected guest file gets in the run's directory.
pub fn collected_name(guest_path: &str) -> String {
    guest_path
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(guest_path)
        .to_string()
}

/// Drive one started machine to the end; the caller reports the result.
pub fn drive(
    index: usize,
    plan: &RunPlan,
    mut machine: Machine,
    events: &Sender<Event>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + plan.timeout;
    let progress = |text: &str| {
        let _ = events.send(Event::Progress(index, text.to_string()));
    };
    let mut transcript =
        File::create(plan.dir.join(CONSOLE_LOG)).context("cannot create console.log")?;
    let lines = events.clone();
    let sink = Box::new(move |line: &str| {
        let _ = writeln!(transcript, "{line}");
        let _ = lines.send(Event::Line(index, line.to_string()));
    });
    let (console, qmp) = machine.connect(Duration::from_secs(30))?;
    let mirrors: Mirrors = Default::default();
    let _attach = match (&plan.attach_link, machine.take_attach()) {
        (Some(link), Some((listener, socket))) => {
            let input = console
                .input()
                .context("cannot open the console's input again")?;
            let point = AttachPoint::open(listener, &socket, link, input, mirrors.clone())?;
            let _ = events.send(Event::Line(
                index,
                format!("qflow: attach to the console: {}", point.link().display()),
            ));
            Some(point)
        }
        _ => None,
    };
    let mut session =
        File::create(plan.dir.join(SESSION_LOG)).context("cannot create session.log")?;
    let mut console = SerialConsole::new(console, sink)
        .with_marker_seed(&plan.marker_seed)
        .paced_by_the_guest(plan.icount)
        .with_session_sink(Box::new(move |line: &str| {
            let _ = writeln!(session, "{line}");
        }));
    console.set_mirrors(mirrors);
    if let Some(login) = &plan.login {
        console.add_secret(&login.password);
    }
    let result = converse(
        plan,
        &mut console,
        qmp,
        &mut machine,
        deadline,
        (index, events),
        &progress,
    );
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            console.flush_transcript();
            let mut msg = format!("{e:#}");
            // QEMU that ended by itself (a bad option, an unreadable image, a file
            // that is no kernel) closed its sockets: its own error is the headline.
            if let Some(reason) = machine.exit_reason(Duration::from_millis(500)) {
                msg = format!("{reason}\n(qflow saw: {msg})");
            } else if Instant::now() >= deadline {
                msg = format!(
                    "timed out after {} ({msg}); QEMU was killed",
                    show_duration(plan.timeout)
                );
            }
            let last = console.last_lines();
            if !last.is_empty() {
                msg.push_str("\nthe guest's last console lines:");
                for l in last {
                    msg.push_str("\n    ");
                    msg.push_str(&l);
                }
            }
            machine.child.kill();
            bail!(msg)
        }
    }
}

fn converse(
    plan: &RunPlan,
    console: &mut SerialConsole,
    qmp: std::os::unix::net::UnixStream,
    machine: &mut Machine,
    deadline: Instant,
    (index, events): (usize, &Sender<Event>),
    progress: &dyn Fn(&str),
) -> anyhow::Result<()> {
    let mut qmp = Qmp::new(qmp)?;
    if plan.restore {
        progress("restoring the checkpoint");
        qmp.finish_restore(deadline)?;
    } else if let Some(login) = &plan.login {
        progress("waiting for the login prompt");
        console.login(&login.user, &login.password, deadline)?;
    } else {
        progress("booting");
    }
    // A restored checkpoint sits at its shell's prompt, which it printed before it was saved.
    console.wait_for_shell(deadline, plan.restore)?;
    let how = if plan.restore { "restored" } else { "booted" };
    let ready = format!(
        "qflow: guest ready after {:.2}s ({how})",
        machine.started.elapsed().as_secs_f64()
    );
    let _ = events.send(Event::Line(index, ready));
    let mut setup = vec!["stty -echo".to_string()];
    if let Some((rows, cols)) = plan.terminal {
        setup.push(format!("stty rows {rows} cols {cols}"));
    }
    for (name, value) in &plan.exports {
        setup.push(format!("export {name}={}", shell_quote(value)));
    }
    for command in &setup {
        let outcome = console.run(command, deadline)?;
        if outcome.status != 0 {
            bail!(
                "setting up the guest shell: `{command}` failed (exit {}): {}",
                outcome.status,
                outcome.output.trim()
            );
        }
    }
    let mut records = Vec::new();
    for (i, command) in plan.commands.iter().enumerate() {
        progress(&format!(
            "command {}/{}: {command}",
            i + 1,
            plan.commands.len()
        ));
        let outcome = console.run(command, deadline)?;
        records.push(CommandRecord {
            command: command.clone(),
            status: outcome.status,
            output: outcome.output.clone(),
        });
        write_records(plan, &records)?;
        if outcome.status != 0 {
            let mut msg = format!("guest command `{command}` failed (exit {})", outcome.status);
            if died_of_sigill(outcome.status, &outcome.output) {
                msg.push_str(&sigill_hint(plan.cpu.as_deref()));
            }
            bail!(msg);
        }
    }
    write_records(plan, &records)?;
    for path in &plan.collect {
        progress(&format!("collecting {path}"));
        console.set_muted(true);
        let outcome = console.run(&format!("base64 {}", shell_quote(path)), deadline);
        console.set_muted(false);
        let outcome = outcome?;
        if outcome.status != 0 {
            bail!(
                "cannot collect `{path}` from the guest (exit {}): {}",
                outcome.status,
                outcome.output.trim()
            );
        }
        let bytes =
            base64_decode(&outcome.output).with_context(|| format!("collecting `{path}`"))?;
        let target = plan.dir.join(collected_name(path));
        std::fs::write(&target, &bytes)
            .with_context(|| format!("cannot write {}", target.display()))?;
        console.note(&format!("collected {path} ({} bytes)", bytes.len()));
    }
    if plan.keep_disks {
        console.run("sync", deadline)?;
    }
    if let Some(record) = &plan.checkpoint {
        // The prompt after the last command belongs in this run's console, not in
        // the first lines of every run restored from the checkpoint.
        console.settle_at_prompt(deadline)?;
        progress("saving the checkpoint");
        let size = qmp.save_memory_snapshot(&plan.dir.join(MEMORY_SNAPSHOT), deadline)?;
        record.save(&plan.dir.join(RECORD))?;
        progress(&format!("checkpoint saved ({} MiB)", size >> 20));
    }
    qmp.quit()?;
    machine.wait_exit(Duration::from_secs(10))?;
    Ok(())
}

/// Exit status 132 (128 + SIGILL) or the shell's "Illegal instruction".
pub fn died_of_sigill(status: i32, output: &str) -> bool {
    status == 128 + libc::SIGILL || output.contains("Illegal instruction")
}

/// Why a guest program dies of SIGILL under emulation, and what to do.
pub fn sigill_hint(cpu: Option<&str>) -> String {
    let model = match cpu {
        Some(m) => format!("this boot's `cpu: {m}`"),
        None => "QEMU's default CPU model (`qemu64`)".to_string(),
    };
    let try_max = if cpu == Some("max") {
        "`cpu: max` is already TCG's widest set, so the instruction is one TCG does not emulate at all"
            .to_string()
    } else {
        "set `cpu: max` on the boot step (TCG's widest instruction set; `host` under KVM)"
            .to_string()
    };
    format!(
        ": it died of SIGILL (illegal instruction): the program uses an instruction set \
         {model} does not offer, and QEMU's TCG does not emulate every one (AVX-512 never, AVX \
         only from QEMU 7.2 with `cpu: max`); {try_max}, or build the workload without those \
         flags (no `-mavx512*`, `-mavx2`, `-march=native`)"
    )
}

fn write_records(plan: &RunPlan, records: &[CommandRecord]) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(records)?;
    std::fs::write(plan.dir.join(COMMANDS_JSON), json + "\n").context("cannot write commands.json")
}

/// Quote a value for the guest's POSIX shell.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// `90s`, `5m`, `1h30m` for messages.
pub fn show_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}
