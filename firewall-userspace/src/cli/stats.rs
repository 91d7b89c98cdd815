//! `apifw stats [--json]`: the running daemon's counters, read from its pinned map.

use std::{path::PathBuf, process::ExitCode};

use crate::{
    cli::Locations,
    lock::InstanceLock,
    paths::{self, PinLayout},
    policy::Loaded,
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
    let (mut pin_dir, mut run_dir) = (
        PathBuf::from(paths::DEFAULT_PIN_DIR),
        PathBuf::from(paths::DEFAULT_RUN_DIR),
    );
    if let Some(config) = &args.config {
        let daemon = Loaded::from_file(config)?.policy.daemon;
        (pin_dir, run_dir) = (daemon.pin_dir, daemon.run_dir);
    }
    pin_dir = args.locations.pin_dir.unwrap_or(pin_dir);
    run_dir = args.locations.run_dir.unwrap_or(run_dir);

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
