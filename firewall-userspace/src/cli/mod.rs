//! The `apifw` command line: one module per verb.

pub mod audit;
pub mod bans;
pub mod check;
pub mod run;
pub mod stats;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// apifw: an XDP firewall for API hosts.
#[derive(Debug, Parser)]
#[command(name = "apifw", version, about)]
pub struct Cli {
    /// The verb.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the policy, attach to its interfaces and enforce it until SIGINT/SIGTERM.
    Run(run::RunArgs),
    /// Validate a policy file without loading anything.
    Check(check::CheckArgs),
    /// Print the verdict counters of the running daemon.
    Stats(stats::StatsArgs),
    /// List the running daemon's active bans with their remaining time.
    Bans(bans::BansArgs),
}

/// Where a daemon keeps its pins and lock, overriding the policy's `[daemon]` table.
#[derive(Debug, clap::Args)]
pub struct Locations {
    /// Root of the pinned maps and links on bpffs.
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Directory of the daemon's lock file.
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
}

impl Locations {
    /// The pin and run directories for a reading verb: the flags, else the policy's `[daemon]`
    /// table when `config` is given, else the defaults.
    pub fn resolve(&self, config: Option<&std::path::Path>) -> anyhow::Result<(PathBuf, PathBuf)> {
        let daemon = match config {
            Some(config) => crate::policy::Loaded::from_file(config)?.policy.daemon,
            None => crate::policy::DaemonSettings::default(),
        };
        Ok((
            self.pin_dir.clone().unwrap_or(daemon.pin_dir),
            self.run_dir.clone().unwrap_or(daemon.run_dir),
        ))
    }
}

impl Cli {
    /// Runs the chosen verb; the result is the process exit code.
    pub fn execute(self) -> anyhow::Result<std::process::ExitCode> {
        match self.command {
            Command::Run(args) => run::execute(args),
            Command::Check(args) => check::execute(args),
            Command::Stats(args) => stats::execute(args),
            Command::Bans(args) => bans::execute(args),
        }
    }
}
