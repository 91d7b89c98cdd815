//! `apifw bans [--json]`: the running daemon's active bans with their remaining time.

use std::{path::PathBuf, process::ExitCode};

use crate::{bans, cli::Locations, paths::PinLayout};

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
    let (pin_dir, _) = args.locations.resolve(args.config.as_deref())?;
    let rows = bans::read_pinned(&PinLayout::new(&pin_dir))?;
    if args.json {
        println!("{}", serde_json::json!({ "bans": rows }));
    } else if rows.is_empty() {
        println!("no active bans");
    } else {
        println!(
            "{:<44} {:<7} {:>5} {:>12}  REASON",
            "PREFIX", "KIND", "RULE", "REMAINING"
        );
        for row in rows {
            println!(
                "{:<44} {:<7} {:>5} {:>11.1}s  {}",
                row.prefix.to_string(),
                row.kind,
                row.rule,
                row.remaining_secs,
                row.reason
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
