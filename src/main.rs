//! The `qflow` binary: parses the command line and hands off to [`cli::run`].

mod cli;
mod commands;

fn main() {
    std::process::exit(cli::run());
}
