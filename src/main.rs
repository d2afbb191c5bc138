//! The `qflow` binary: parses the command line and hands off to [`cli::run`].

mod bundle;
mod cli;
mod commands;
mod detach;
mod doctor;
mod results;
mod schema;
mod verify;

fn main() {
    std::process::exit(cli::run());
}
