//! The `qflow` binary: parses the command line and hands off to [`cli::run`].
//!
//! It is wiring only: each subcommand is a file under [`commands`] that loads the
//! workflow, calls the library (`qflow-engine`, `qflow-steps`) and prints.

mod cli;
mod commands;
mod detach;
mod usage_error;

fn main() {
    std::process::exit(cli::run());
}
