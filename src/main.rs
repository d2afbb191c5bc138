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
    quiet_on_closed_output();
    grow_the_heap_in_large_steps();
    std::process::exit(cli::run());
}

/// Two settings of glibc's allocator, made before any other thread starts:
///
/// - It grows the heap of each thread's arena (the threads that parse a large
///   workflow's memo and hash its inputs) a few pages at a time, one `mprotect`
///   each: about 5,800 calls in a no-op apply of 10,000 steps. A top pad of
///   16 MiB makes that about 650 and cuts the page faults by a tenth; pages are
///   reserved, not touched, so the resident size does not grow.
/// - By default each thread that allocates gets its own arena (up to eight per
///   core). What the hashing thread allocates (input digests, stat entries) is
///   freed into its arena, where the run loop's own allocations cannot reuse
///   it: a first apply of 50,000 steps peaked 6 MB higher. Two arenas, the main
///   thread's and one the other threads share, keep that memory in use; the
///   other threads allocate little, so they seldom wait for each other.
fn grow_the_heap_in_large_steps() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets tuning parameters of the allocator; nothing
    // has been allocated by another thread yet.
    unsafe {
        libc::mallopt(libc::M_TOP_PAD, 16 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
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
