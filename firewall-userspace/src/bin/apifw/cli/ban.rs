//! `apifw ban add|del|list`.

use std::process::ExitCode;

use crate::cli::{
    ControlArgs, failed,
    lists::{self, DelArgs, ListArgs},
    print,
};
use firewall_userspace::{
    control::{BanAdd, Changed, Targets},
    dataplane::bans::BanRow,
};

/// Arguments of `apifw ban`.
#[derive(Debug, clap::Args)]
pub struct BanArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: BanAction,
}

/// `apifw ban` actions.
#[derive(Debug, clap::Subcommand)]
pub enum BanAction {
    /// Ban hosts or subnets: their packets are dropped in XDP until the ban expires.
    Add {
        /// Addresses or CIDRs.
        #[arg(required = true)]
        cidrs: Vec<String>,
        /// How long.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Why.
        #[arg(long)]
        comment: Option<String>,
        /// Daemon and output.
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Lift bans (manual or automatic).
    Del(DelArgs),
    /// List active bans.
    List(ListArgs),
}

/// Runs `apifw ban`.
pub fn execute(args: BanArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        BanAction::Add {
            cidrs,
            ttl,
            comment,
            control,
        } => {
            let ttl_secs = lists::ttl_secs(Some(&ttl))?.unwrap_or(3600);
            let request = BanAdd {
                cidrs,
                ttl_secs,
                comment,
            };
            match control.client()?.post::<_, Changed>("/bans/add", &request) {
                Ok(changed) => {
                    lists::print_changed(control.json, &changed);
                    Ok(ExitCode::SUCCESS)
                }
                Err(err) => Ok(failed(&err)),
            }
        }
        BanAction::Del(DelArgs { cidrs, control }) => {
            match control
                .client()?
                .post::<_, Changed>("/bans/del", &Targets { cidrs })
            {
                Ok(changed) => {
                    lists::print_changed(control.json, &changed);
                    Ok(lists::changed_exit(&changed))
                }
                Err(err) => Ok(failed(&err)),
            }
        }
        BanAction::List(ListArgs { control }) => {
            match control.client()?.get::<Vec<BanRow>>("/bans") {
                Ok(rows) => {
                    print(control.json, &rows, |rows| {
                        let mut out = format!(
                            "{:<43} {:<7} {:>10}  REASON\n",
                            "PREFIX", "KIND", "REMAINING"
                        );
                        for row in rows {
                            out.push_str(&format!(
                                "{:<43} {:<7} {:>9.0}s  {}\n",
                                row.prefix.to_string(),
                                row.kind,
                                row.remaining_secs,
                                row.reason
                            ));
                        }
                        out
                    });
                    Ok(ExitCode::SUCCESS)
                }
                Err(err) => Ok(failed(&err)),
            }
        }
    }
}
