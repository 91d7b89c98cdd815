//! The `apifw` command line: one module per verb.

pub mod allow;
pub mod audit;
pub mod ban;
pub mod bans;
pub mod block;
pub mod check;
pub mod completions;
pub mod jails;
pub mod lists;
pub mod man;
pub mod reload;
pub mod report;
pub mod run;
pub mod stats;
pub mod status;
pub mod top;

use std::path::PathBuf;

use clap::{CommandFactory as _, Parser, Subcommand};

/// `apifw --version`: a build with the test hooks says so, and `cargo xtask package` refuses it.
const VERSION: &str = if firewall_userspace::TEST_HOOKS {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (built with test hooks: not for production)"
    )
} else {
    env!("CARGO_PKG_VERSION")
};

/// The binary's name, as completions and man pages call it.
pub const BIN_NAME: &str = "apifw";

/// The whole command line as clap sees it: the single definition that `--help`, the shell
/// completions and the man pages all come from.
pub fn command() -> clap::Command {
    Cli::command()
}

/// apifw: an XDP firewall for API hosts.
#[derive(Debug, Parser)]
#[command(
    name = "apifw",
    version = VERSION,
    about = "An XDP firewall for API hosts: the daemon (`apifw run`) and its command line"
)]
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
    /// List the running daemon's active bans with their remaining time (read from the pinned
    /// map; works without the control socket).
    Bans(bans::BansArgs),
    /// Add, remove, list or import blocklist entries at run time.
    Block(block::BlockArgs),
    /// Add, remove or list allowlist entries at run time.
    Allow(allow::AllowArgs),
    /// Ban or unban sources for a while, or list bans.
    Ban(ban::BanArgs),
    /// Show each jail's counts, current bans and last match.
    Jails(jails::JailsArgs),
    /// Report abuse by a client (counted in a jail like log matches; may ban it).
    Report(report::ReportArgs),
    /// Re-read the policy, its feeds and the state file, and swap them in atomically.
    Reload(reload::ReloadArgs),
    /// Show the daemon's interfaces, mode, policy version and map fill.
    Status(status::StatusArgs),
    /// Print the audit log.
    Audit(audit::AuditArgs),
    /// A live view of drop rates and the top offending sources and subnets.
    Top(top::TopArgs),
    /// Print a shell completion script (bash, zsh, fish, ...).
    Completions(completions::CompletionsArgs),
    /// Write the man pages (apifw.1 and one page per verb) into a directory.
    Man(man::ManArgs),
}

/// How a CLI verb finds the daemon's control socket.
#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// The control socket (default: `apifw.sock` in the run directory).
    #[arg(long, value_name = "PATH", env = "APIFW_SOCKET")]
    pub socket: Option<PathBuf>,
    /// The daemon's run directory.
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// The daemon's policy, to find its run directory.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

impl ControlArgs {
    /// A client of the daemon's socket.
    pub fn client(&self) -> anyhow::Result<firewall_userspace::control::Client> {
        if let Some(socket) = &self.socket {
            return Ok(firewall_userspace::control::Client::new(socket.clone()));
        }
        let run_dir = match (&self.run_dir, &self.config) {
            (Some(dir), _) => dir.clone(),
            (None, Some(config)) => {
                firewall_userspace::policy::Loaded::from_file(config)?
                    .policy
                    .daemon
                    .run_dir
            }
            (None, None) => PathBuf::from(firewall_userspace::paths::DEFAULT_RUN_DIR),
        };
        Ok(firewall_userspace::control::Client::new(
            firewall_userspace::control::socket_path(&run_dir),
        ))
    }
}

/// Prints `value` as JSON, or `text` for people.
pub fn print<T: serde::Serialize>(json: bool, value: &T, text: impl FnOnce(&T) -> String) {
    if json {
        match serde_json::to_string_pretty(value) {
            Ok(out) => println!("{out}"),
            Err(err) => eprintln!("apifw: cannot encode the answer: {err}"),
        }
    } else {
        print!("{}", text(value));
    }
}

/// The exit code of a failed control request, after printing the error.
pub fn failed(err: &firewall_userspace::control::ClientError) -> std::process::ExitCode {
    eprintln!("apifw: {err}");
    std::process::ExitCode::from(err.exit_code())
}

/// The rule names of the daemon running in `run_dir`, by rule slot; empty when it does not
/// answer (verbs that read pinned maps then show rule numbers).
pub fn rule_names(run_dir: &std::path::Path) -> std::collections::BTreeMap<u32, String> {
    firewall_userspace::control::Client::new(firewall_userspace::control::socket_path(run_dir))
        .get::<firewall_userspace::control::StatsView>("/stats")
        .map(|view| view.rules)
        .unwrap_or_default()
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
    /// table when `config` is given, else the defaults. Without `--pin-dir` and `--config`, the
    /// daemon running in the run directory is asked where it pins (so `--run-dir` finds a daemon
    /// for every verb); when none answers, the default pin directory is read.
    pub fn resolve(&self, config: Option<&std::path::Path>) -> anyhow::Result<(PathBuf, PathBuf)> {
        let daemon = match config {
            Some(config) => {
                firewall_userspace::policy::Loaded::from_file(config)?
                    .policy
                    .daemon
            }
            None => firewall_userspace::policy::DaemonSettings::default(),
        };
        let run_dir = self.run_dir.clone().unwrap_or(daemon.run_dir);
        let pin_dir = match (&self.pin_dir, config) {
            (Some(pin_dir), _) => pin_dir.clone(),
            (None, Some(_)) => daemon.pin_dir,
            (None, None) => firewall_userspace::control::Client::new(
                firewall_userspace::control::socket_path(&run_dir),
            )
            .get::<firewall_userspace::control::Status>("/status")
            .ok()
            .map(|status| status.pin_dir)
            .filter(|pin_dir| !pin_dir.as_os_str().is_empty())
            .unwrap_or(daemon.pin_dir),
        };
        Ok((pin_dir, run_dir))
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
            Command::Block(args) => block::execute(args),
            Command::Allow(args) => allow::execute(args),
            Command::Ban(args) => ban::execute(args),
            Command::Reload(args) => reload::execute(args),
            Command::Jails(args) => jails::execute(args),
            Command::Report(args) => report::execute(args),
            Command::Status(args) => status::execute(args),
            Command::Audit(args) => audit::execute(args),
            Command::Top(args) => top::execute(args),
            Command::Completions(args) => completions::execute(args),
            Command::Man(args) => man::execute(args),
        }
    }
}
