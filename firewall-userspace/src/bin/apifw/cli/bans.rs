//! `apifw bans [--json]`: the running daemon's active bans with their remaining time.

use std::{path::PathBuf, process::ExitCode};

use crate::cli::Locations;
use firewall_common::rules::{BAN_HOST, BAN_SUBNET};
use firewall_userspace::{dataplane::bans, paths::PinLayout};

/// Arguments of `apifw bans`.
#[derive(Debug, clap::Args)]
pub struct BansArgs {
    /// Print JSON: `{"bans":[{"prefix","kind","rule","reason","remaining_secs","age_secs"}]}`.
    #[arg(long)]
    pub json: bool,
    /// Take the pin directory from this policy.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Pin and lock locations (override `--config`).
    #[command(flatten)]
    pub locations: Locations,
}

/// Prints the active bans.
pub fn execute(args: BansArgs) -> anyhow::Result<ExitCode> {
    let (pin_dir, run_dir) = args.locations.resolve(args.config.as_deref())?;
    let rows = bans::read_pinned(&PinLayout::new(&pin_dir))?;
    if args.json {
        println!("{}", serde_json::json!({ "bans": rows }));
    } else if rows.is_empty() {
        println!("no active bans");
    } else {
        // Rule names come from the daemon; the bans themselves are read from the pinned map, so
        // they are listed (with rule numbers) even when the daemon does not answer.
        let names = crate::cli::rule_names(&run_dir);
        println!(
            "{:<44} {:<7} {:<12} {:>10}  REASON",
            "PREFIX", "KIND", "RULE", "REMAINING"
        );
        for row in rows {
            let rule = bans::rule_label(row.rule, &names);
            let kind = if row.kind == "subnet" {
                BAN_SUBNET
            } else {
                BAN_HOST
            };
            let reason = bans::reason(row.rule, kind, &rule);
            println!(
                "{:<44} {:<7} {:<12} {:>9.1}s  {reason}",
                row.prefix.to_string(),
                row.kind,
                rule,
                row.remaining_secs,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
