//! `apifw report SOURCE --reason TEXT [--weight N] [--jail NAME]`: report abuse by a client, as
//! a local service (API gateway, application) would over `POST /v1/reports`.

use std::process::ExitCode;

use crate::cli::{ControlArgs, failed, print};
use firewall_userspace::control::{Report, ReportOutcome};

/// Arguments of `apifw report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The offending client's IP address.
    pub source: String,
    /// What it did (logged by the daemon).
    #[arg(long)]
    pub reason: String,
    /// How many jail matches the report counts as.
    #[arg(long, default_value_t = 1)]
    pub weight: u32,
    /// The jail to count it in (default: the first jail that takes reports).
    #[arg(long)]
    pub jail: Option<String>,
    /// Daemon and output.
    #[command(flatten)]
    pub control: ControlArgs,
}

/// Runs `apifw report`.
pub fn execute(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let report = Report {
        source: args.source,
        reason: args.reason,
        weight: args.weight,
        jail: args.jail,
    };
    match args
        .control
        .client()?
        .post::<_, ReportOutcome>("/reports", &report)
    {
        Ok(outcome) => {
            print(args.control.json, &outcome, |outcome| {
                let state = match (outcome.banned, outcome.ban_ttl_secs, outcome.allowlisted) {
                    (_, Some(ttl), _) => format!("banned for {ttl}s"),
                    (true, None, _) => "already banned".into(),
                    (false, _, true) => "allowlisted: never banned".into(),
                    (false, _, false) => "not banned".into(),
                };
                format!(
                    "jail {}: {} at {}/{}; {state}\n",
                    outcome.jail, outcome.source, outcome.count, outcome.max_retry
                )
            });
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Ok(failed(&err)),
    }
}
