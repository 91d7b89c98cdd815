//! `apifw bans [--json]`: the running daemon's active bans with their remaining time.

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode};

use crate::cli::Locations;
use firewall_userspace::{
    dataplane::bans::{self, MANUAL_BAN_RULE},
    paths::PinLayout,
};

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
            let rule = rule_label(row.rule, &names);
            let reason = if row.rule == MANUAL_BAN_RULE {
                row.reason
            } else if row.kind == "subnet" {
                format!("too many of its sources were banned under rule {rule}")
            } else {
                format!("kept exceeding the limits of rule {rule}")
            };
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

/// How the RULE column names a ban's rule: `manual` for an operator's (or a jail's) ban, else the
/// rule's name, or its number when the name is unknown.
fn rule_label(rule: u32, names: &BTreeMap<u32, String>) -> String {
    if rule == MANUAL_BAN_RULE {
        return "manual".to_owned();
    }
    names
        .get(&rule)
        .cloned()
        .unwrap_or_else(|| format!("#{rule}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_bans_show_no_sentinel_and_rules_show_their_names() {
        let names = BTreeMap::from([(0, "api".to_owned())]);
        assert_eq!(rule_label(MANUAL_BAN_RULE, &names), "manual");
        assert_eq!(rule_label(0, &names), "api");
        assert_eq!(rule_label(3, &names), "#3");
        assert!(!rule_label(MANUAL_BAN_RULE, &BTreeMap::new()).contains("4294967295"));
    }
}
