//! `apifw allow add|del|list`.

use std::process::ExitCode;

use crate::cli::lists::{self, AddArgs, DelArgs, ListArgs};
use firewall_userspace::store::state::ListKind;

/// Arguments of `apifw allow`.
#[derive(Debug, clap::Args)]
pub struct AllowArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: AllowAction,
}

/// `apifw allow` actions.
#[derive(Debug, clap::Subcommand)]
pub enum AllowAction {
    /// Allowlist addresses or CIDRs (exempt from blocks, rate limits and bans).
    Add(AddArgs),
    /// Remove runtime allow entries.
    Del(DelArgs),
    /// List every allow entry with its origin.
    List(ListArgs),
}

/// Runs `apifw allow`.
pub fn execute(args: AllowArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        AllowAction::Add(add) => lists::add(
            ListKind::Allow,
            &add.control,
            add.cidrs,
            add.ttl.as_deref(),
            add.comment,
        ),
        AllowAction::Del(del) => lists::del(ListKind::Allow, &del.control, del.cidrs),
        AllowAction::List(list) => lists::list(ListKind::Allow, &list.control),
    }
}
