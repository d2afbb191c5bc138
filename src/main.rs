//! The `qflow` binary: parses the command line and hands off to [`cli::run`].
//!
//! It is wiring only: each subcommand is a file under [`commands`] that loads the
//! workflow, calls the library (`qflow-engine`, `qflow-steps`) and prints.

mod cli;
mod commands;
mod detach;
mod local_time;
mod slurm_plan;
mod usage_error;
mod workflow_file;

fn main() {
    fewer_malloc_arenas();
    quiet_on_closed_output();
    std::process::exit(cli::run());
}

/// `qflow status | head` closes qflow's stdout early, and a stderr on a full
/// disk (`2>/dev/full`) cannot be written: `println!`/`eprintln!` then panic.
/// Exit quietly instead, as other Unix tools do: 0 when the reader of stdout
/// went away (it read what it wanted), 1 when output was lost. Nothing is
/// printed, since there is nowhere to print it. Any other panic is reported
/// as usual.
fn quiet_on_closed_output() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("Broken pipe") {
            std::process::exit(0);
        }
        if message.starts_with("failed printing to std") {
            std::process::exit(1);
        }
        default(info);
    }));
}

/// At most two glibc malloc arenas, unless `MALLOC_ARENA_MAX` says otherwise.
///
/// A run starts a thread per step it runs and one per result it records, and
/// glibc gives the threads of a process up to eight arenas per core, each keeping
/// the memory its threads freed: a first apply of 10,000 steps held a fifth
/// more memory than it used. Two arenas keep it close to what it uses, with no
/// time lost (the threads mostly wait on the programs they run).
fn fewer_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called first in `main`, before any other thread exists; it
        // only sets an allocator parameter.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
