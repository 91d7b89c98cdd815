//! `apifw allow add|del|list`.

use std::process::ExitCode;

use crate::{
    cli::{ControlArgs, lists},
    state::ListKind,
};

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
    Add {
        /// Addresses or CIDRs.
        #[arg(required = true)]
        cidrs: Vec<String>,
        /// Remove them again after this long.
        #[arg(long)]
        ttl: Option<String>,
        /// Why.
        #[arg(long)]
        comment: Option<String>,
        /// Daemon and output.
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Remove runtime allow entries.
    Del {
        /// Addresses or CIDRs.
        #[arg(required = true)]
        cidrs: Vec<String>,
        /// Daemon and output.
        #[command(flatten)]
        control: ControlArgs,
    },
    /// List every allow entry with its origin.
    List {
        /// Daemon and output.
        #[command(flatten)]
        control: ControlArgs,
    },
}

/// Runs `apifw allow`.
pub fn execute(args: AllowArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        AllowAction::Add {
            cidrs,
            ttl,
            comment,
            control,
        } => lists::add(ListKind::Allow, &control, cidrs, ttl.as_deref(), comment),
        AllowAction::Del { cidrs, control } => lists::del(ListKind::Allow, &control, cidrs),
        AllowAction::List { control } => lists::list(ListKind::Allow, &control),
    }
}
