//! What `apifw block` and `apifw allow` share: adding, removing and listing runtime entries
//! through the control API.

use std::process::ExitCode;

use crate::cli::{ControlArgs, failed, print};
use firewall_userspace::{
    control::{Changed, ListAdd, ListRow, Targets},
    store::state::ListKind,
};

/// Arguments of `add`: targets, optional TTL and comment.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Addresses or CIDRs.
    #[arg(required = true)]
    pub cidrs: Vec<String>,
    /// Remove them again after this long (e.g. 30m, 1h, 7d).
    #[arg(long)]
    pub ttl: Option<String>,
    /// Why (kept in the state file and the audit log).
    #[arg(long)]
    pub comment: Option<String>,
    /// Daemon and output.
    #[command(flatten)]
    pub control: ControlArgs,
}

/// Arguments of `del`: targets.
#[derive(Debug, clap::Args)]
pub struct DelArgs {
    /// Addresses or CIDRs.
    #[arg(required = true)]
    pub cidrs: Vec<String>,
    /// Daemon and output.
    #[command(flatten)]
    pub control: ControlArgs,
}

/// Arguments of `list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Daemon and output.
    #[command(flatten)]
    pub control: ControlArgs,
}

/// `--ttl` as seconds.
pub fn ttl_secs(ttl: Option<&str>) -> anyhow::Result<Option<u64>> {
    ttl.map(|text| {
        humantime::parse_duration(text)
            .map(|duration| duration.as_secs().max(1))
            .map_err(|err| anyhow::anyhow!("invalid --ttl `{text}`: {err} (examples: 90s, 1h, 7d)"))
    })
    .transpose()
}

/// Exit code 4 when some targets of a delete were not there; 0 otherwise.
pub fn changed_exit(changed: &Changed) -> ExitCode {
    if changed.not_found.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(4)
    }
}

/// Prints a change.
pub fn print_changed(json: bool, changed: &Changed) {
    print(json, changed, |changed| {
        let mut out = format!(
            "added {}, updated {}, removed {}; policy version {}\n",
            changed.added, changed.updated, changed.removed, changed.policy_version
        );
        for missing in &changed.not_found {
            out.push_str(&format!("not found: {missing}\n"));
        }
        for skipped in &changed.skipped {
            out.push_str(&format!("skipped: {skipped}\n"));
        }
        out
    });
}

/// `add`.
pub fn add(
    kind: ListKind,
    control: &ControlArgs,
    cidrs: Vec<String>,
    ttl: Option<&str>,
    comment: Option<String>,
) -> anyhow::Result<ExitCode> {
    let request = ListAdd {
        cidrs,
        ttl_secs: ttl_secs(ttl)?,
        comment,
    };
    match control
        .client()?
        .post::<_, Changed>(&format!("/lists/{kind}/add"), &request)
    {
        Ok(changed) => {
            print_changed(control.json, &changed);
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Ok(failed(&err)),
    }
}

/// `del`.
pub fn del(kind: ListKind, control: &ControlArgs, cidrs: Vec<String>) -> anyhow::Result<ExitCode> {
    match control
        .client()?
        .post::<_, Changed>(&format!("/lists/{kind}/del"), &Targets { cidrs })
    {
        Ok(changed) => {
            print_changed(control.json, &changed);
            Ok(changed_exit(&changed))
        }
        Err(err) => Ok(failed(&err)),
    }
}

/// `list`.
pub fn list(kind: ListKind, control: &ControlArgs) -> anyhow::Result<ExitCode> {
    match control
        .client()?
        .get::<Vec<ListRow>>(&format!("/lists/{kind}"))
    {
        Ok(rows) => {
            print(control.json, &rows, |rows| {
                let mut out = format!(
                    "{:<43} {:<10} {:>10}  COMMENT\n",
                    "CIDR", "ORIGIN", "EXPIRES"
                );
                for row in rows {
                    out.push_str(&format!(
                        "{:<43} {:<10} {:>10}  {}\n",
                        row.cidr.to_string(),
                        row.origin,
                        row.expires_in_secs
                            .map_or_else(|| "never".to_owned(), |secs| format!("{secs}s")),
                        row.comment.as_deref().unwrap_or("")
                    ));
                }
                out
            });
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Ok(failed(&err)),
    }
}
