//! The `apifw` binary: daemon and CLI in one.

use std::process::ExitCode;

use clap::Parser as _;
use firewall_userspace::cli::Cli;

fn main() -> ExitCode {
    match Cli::parse().execute() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
