//! The `apifw` binary: daemon and CLI in one. The command line lives here, one file per verb
//! ([`cli`]); everything it does is the `firewall_userspace` library's.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;
use cli::Cli;

fn main() -> ExitCode {
    match Cli::parse().execute() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
