//! `apifw top`: a live view of drop rates by reason and the top offending sources and subnets,
//! refreshed every second from the daemon's control socket.

use std::{io::Write as _, process::ExitCode, time::Duration};

use crate::cli::{
    ControlArgs, failed,
    stats::{rates, rates_json},
};
use firewall_userspace::{control::StatsView, dataplane::top::TopView};

/// Arguments of `apifw top`.
#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Print one frame and exit (with --json: one JSON object).
    #[arg(long)]
    pub once: bool,
    /// Daemon and output.
    #[command(flatten)]
    pub control: ControlArgs,
}

fn render(rates: &[(String, f64, f64)], top: &TopView, events_lost: u64) -> String {
    let mut out = format!(
        "apifw top — {}  events {:.1}/s (sampled, {}s window), lost {}\n\n",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        top.events_per_sec,
        top.window_secs,
        events_lost
    );
    out.push_str(&format!(
        "{:<28} {:>12} {:>14}\n",
        "VERDICT", "PACKETS/S", "BYTES/S"
    ));
    if rates.is_empty() {
        out.push_str("(no traffic)\n");
    }
    for (pair, packets, bytes) in rates {
        out.push_str(&format!("{pair:<28} {packets:>12.0} {bytes:>14.0}\n"));
    }
    for (title, rows) in [("TOP SOURCES", &top.sources), ("TOP SUBNETS", &top.subnets)] {
        out.push_str(&format!(
            "\n{title:<43} {:>10} {:>10}  LAST REASON\n",
            "EVENTS/S", "EVENTS"
        ));
        for row in rows.iter() {
            out.push_str(&format!(
                "{:<43} {:>10.1} {:>10}  {}\n",
                row.prefix.to_string(),
                row.rate,
                row.events,
                row.last_reason
            ));
        }
    }
    out
}

/// Runs `apifw top`.
pub fn execute(args: TopArgs) -> anyhow::Result<ExitCode> {
    let client = args.control.client()?;
    let stats = || client.get::<StatsView>("/stats");
    let mut before = match stats() {
        Ok(view) => view,
        Err(err) => return Ok(failed(&err)),
    };
    let mut taken = std::time::Instant::now();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let (after, top) = match (stats(), client.get::<TopView>("/top")) {
            (Ok(after), Ok(top)) => (after, top),
            (Err(err), _) | (_, Err(err)) => return Ok(failed(&err)),
        };
        let seconds = taken.elapsed().as_secs_f64().max(1e-3);
        taken = std::time::Instant::now();
        let rates = rates(&before.snapshot, &after.snapshot, seconds);
        if args.control.json {
            println!(
                "{}",
                serde_json::json!({"rates": rates_json(&rates), "top": top, "events": after.events})
            );
        } else {
            let frame = render(&rates, &top, after.events.lost);
            if args.once {
                print!("{frame}");
            } else {
                // Clear the screen and home the cursor: a refreshing view, like top(1).
                print!("\x1b[2J\x1b[H{frame}");
                let _ = std::io::stdout().flush();
            }
        }
        if args.once {
            return Ok(ExitCode::SUCCESS);
        }
        before = after;
    }
}
