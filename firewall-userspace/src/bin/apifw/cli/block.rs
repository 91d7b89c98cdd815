//! `apifw block add|del|list|import`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;

use crate::cli::{
    ControlArgs, failed,
    lists::{self, AddArgs, DelArgs, ListArgs},
};
use firewall_userspace::{
    control::{Changed, Import},
    policy::feeds::FeedFormat,
    store::state::ListKind,
};

/// Arguments of `apifw block`.
#[derive(Debug, clap::Args)]
pub struct BlockArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: BlockAction,
}

/// `apifw block` actions.
#[derive(Debug, clap::Subcommand)]
pub enum BlockAction {
    /// Block addresses or CIDRs.
    Add(AddArgs),
    /// Remove runtime block entries (also single entries of an import).
    Del(DelArgs),
    /// List every block entry with its origin.
    List(ListArgs),
    /// Block every entry of a list file.
    Import {
        /// The file.
        file: PathBuf,
        /// Its format.
        #[arg(long, value_enum, default_value = "plain")]
        format: FeedFormat,
        /// Import the good lines of a file with bad ones (default: refuse the file).
        #[arg(long)]
        skip_bad_lines: bool,
        /// Remove the entries again after this long.
        #[arg(long)]
        ttl: Option<String>,
        /// Why.
        #[arg(long)]
        comment: Option<String>,
        /// Daemon and output.
        #[command(flatten)]
        control: ControlArgs,
    },
}

/// Runs `apifw block`.
pub fn execute(args: BlockArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        BlockAction::Add(add) => lists::add(
            ListKind::Block,
            &add.control,
            add.cidrs,
            add.ttl.as_deref(),
            add.comment,
        ),
        BlockAction::Del(del) => lists::del(ListKind::Block, &del.control, del.cidrs),
        BlockAction::List(list) => lists::list(ListKind::Block, &list.control),
        BlockAction::Import {
            file,
            format,
            skip_bad_lines,
            ttl,
            comment,
            control,
        } => {
            let content = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let request = Import {
                origin: file.display().to_string(),
                format,
                content,
                skip_bad_lines,
                ttl_secs: lists::ttl_secs(ttl.as_deref())?,
                comment,
            };
            match control
                .client()?
                .post::<_, Changed>("/lists/block/import", &request)
            {
                Ok(changed) => {
                    lists::print_changed(control.json, &changed);
                    Ok(ExitCode::SUCCESS)
                }
                Err(err) => Ok(failed(&err)),
            }
        }
    }
}
