//! `apifw jails [--json]`: each jail's counts, current bans and last match.

use std::process::ExitCode;

use crate::cli::{ControlArgs, failed, print};
use firewall_userspace::control::JailView;

/// Arguments of `apifw jails`.
#[derive(Debug, clap::Args)]
pub struct JailsArgs {
    /// Daemon and output.
    #[command(flatten)]
    pub control: ControlArgs,
}

/// Renders the jails for people.
fn text(jails: &Vec<JailView>) -> String {
    if jails.is_empty() {
        return "no jails in the policy\n".into();
    }
    let mut out = String::new();
    for jail in jails {
        let source = match (&jail.log, jail.reports) {
            (Some(log), true) => format!("{} ({}) and reports", log.display(), jail.format),
            (Some(log), false) => format!("{} ({})", log.display(), jail.format),
            (None, _) => "reports".into(),
        };
        out.push_str(&format!(
            "jail {}: {source}\n  max_retry {} within {}s, ban {}s\n  lines {}, unparsed {}, \
             matches {}, reports {}, bans {}, not banned (allowlisted) {}, sources counting {}\n",
            jail.name,
            jail.max_retry,
            jail.find_time_secs,
            jail.ban_time_secs,
            jail.lines,
            jail.unparsed,
            jail.matches,
            jail.reports_counted,
            jail.bans,
            jail.allowlisted,
            jail.tracked,
        ));
        for ban in &jail.current_bans {
            out.push_str(&format!(
                "  banned {} for {}s more (ban #{})\n",
                ban.source, ban.remaining_secs, ban.ban_count
            ));
        }
        if let Some(last) = &jail.last_match {
            let ago = firewall_userspace::store::state::unix_now().saturating_sub(last.at_unix);
            out.push_str(&format!(
                "  last match {}s ago: {} {}\n",
                ago, last.source, last.detail
            ));
        }
    }
    out
}

/// Runs `apifw jails`.
pub fn execute(args: JailsArgs) -> anyhow::Result<ExitCode> {
    match args.control.client()?.get::<Vec<JailView>>("/jails") {
        Ok(jails) => {
            print(args.control.json, &jails, text);
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Ok(failed(&err)),
    }
}
