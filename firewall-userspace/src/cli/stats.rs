//! `apifw stats [--json]`: the running daemon's counters, read from its pinned map.

use std::{path::PathBuf, process::ExitCode};

use crate::{
    cli::Locations,
    lock::InstanceLock,
    paths::{self, PinLayout},
    stats,
};

/// Arguments of `apifw stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Print JSON: `{"counters":[{"action","reason","packets","bytes"}, ...]}`.
    #[arg(long)]
    pub json: bool,
    /// Take the pin and run directories from this policy.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Pin and lock locations (override `--config`).
    #[command(flatten)]
    pub locations: Locations,
}

/// Prints the counters.
pub fn execute(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let (pin_dir, run_dir) = args.locations.resolve(args.config.as_deref())?;

    let snapshot = stats::read_pinned(&PinLayout::new(&pin_dir))?;
    if !InstanceLock::is_held(&run_dir) {
        eprintln!(
            "warning: no daemon holds {}; these counters come from maps pinned at {}",
            paths::lock_file(&run_dir).display(),
            pin_dir.display()
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&snapshot)?);
    } else {
        print!("{}", stats::render_table(&snapshot));
    }
    Ok(ExitCode::SUCCESS)
}
