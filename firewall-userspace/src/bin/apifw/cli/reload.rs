//! `apifw reload`: the same as SIGHUP, but reports the outcome.

use std::process::ExitCode;

use crate::cli::{ControlArgs, failed, lists};
use firewall_userspace::control::Changed;

/// Arguments of `apifw reload`.
#[derive(Debug, clap::Args)]
pub struct ReloadArgs {
    /// Daemon and output.
    #[command(flatten)]
    pub control: ControlArgs,
}

/// Runs `apifw reload`.
pub fn execute(args: ReloadArgs) -> anyhow::Result<ExitCode> {
    match args
        .control
        .client()?
        .post::<_, Changed>("/reload", &serde_json::json!({}))
    {
        Ok(changed) => {
            lists::print_changed(args.control.json, &changed);
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Ok(failed(&err)),
    }
}
