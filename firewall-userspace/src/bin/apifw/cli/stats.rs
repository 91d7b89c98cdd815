//! `apifw stats [--json]`: the running daemon's counters, read from its pinned map.

use std::{path::PathBuf, process::ExitCode};

use crate::cli::Locations;
use firewall_userspace::{
    dataplane::stats,
    paths::{self, PinLayout},
    store::lock::InstanceLock,
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
    /// Print rates every second (packets and bytes per second by action and reason), from the
    /// daemon's control socket, until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// With --watch: stop after this many lines.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

/// Prints the counters.
pub fn execute(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let (pin_dir, run_dir) = args.locations.resolve(args.config.as_deref())?;
    if args.watch {
        return watch(&run_dir, args.json, args.count);
    }

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
        print!(
            "{}",
            stats::render_table(&snapshot, &crate::cli::rule_names(&run_dir))
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Per-second rates of every non-zero `(action, reason)` pair between two snapshots.
pub fn rates(
    before: &stats::Snapshot,
    after: &stats::Snapshot,
    seconds: f64,
) -> Vec<(String, f64, f64)> {
    after
        .counters
        .iter()
        .filter_map(|row| {
            let old = before.get(row.action, row.reason);
            let packets = row.packets.saturating_sub(old.packets) as f64 / seconds;
            let bytes = row.bytes.saturating_sub(old.bytes) as f64 / seconds;
            (packets > 0.0).then(|| {
                (
                    format!("{}/{}", row.action.name(), row.reason.name()),
                    packets,
                    bytes,
                )
            })
        })
        .collect()
}

/// Rates as JSON objects (`counter`, `packets_per_sec`, `bytes_per_sec`).
pub fn rates_json(rates: &[(String, f64, f64)]) -> Vec<serde_json::Value> {
    rates
        .iter()
        .map(|(pair, packets, bytes)| {
            serde_json::json!({"counter": pair, "packets_per_sec": packets, "bytes_per_sec": bytes})
        })
        .collect()
}

/// `--watch`: one line of rates per second.
fn watch(run_dir: &std::path::Path, json: bool, count: Option<u64>) -> anyhow::Result<ExitCode> {
    let client =
        firewall_userspace::control::Client::new(firewall_userspace::control::socket_path(run_dir));
    let fetch = || client.get::<firewall_userspace::control::StatsView>("/stats");
    let mut before = match fetch() {
        Ok(view) => view,
        Err(err) => return Ok(crate::cli::failed(&err)),
    };
    let mut taken = std::time::Instant::now();
    let mut lines = 0;
    while count.is_none_or(|count| lines < count) {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let after = match fetch() {
            Ok(view) => view,
            Err(err) => return Ok(crate::cli::failed(&err)),
        };
        let seconds = taken.elapsed().as_secs_f64().max(1e-3);
        taken = std::time::Instant::now();
        let rates = rates(&before.snapshot, &after.snapshot, seconds);
        let time = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        if json {
            let rates: Vec<_> = rates
                .iter()
                .map(|(pair, packets, bytes)| {
                    serde_json::json!({"counter": pair, "packets_per_sec": packets, "bytes_per_sec": bytes})
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({"time": time.to_string(), "rates": rates})
            );
        } else if rates.is_empty() {
            println!("{time}  idle");
        } else {
            let text: Vec<String> = rates
                .iter()
                .map(|(pair, packets, _)| format!("{pair} {packets:.0}/s"))
                .collect();
            println!("{time}  {}", text.join("  "));
        }
        before = after;
        lines += 1;
    }
    Ok(ExitCode::SUCCESS)
}
