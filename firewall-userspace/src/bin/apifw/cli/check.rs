//! `apifw check --config FILE`: validate without loading.

use std::{path::PathBuf, process::ExitCode};

use firewall_userspace::{compile::tables::PrefixTables, policy::Loaded};

/// Arguments of `apifw check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The policy file.
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
    /// Do not require the policy's interfaces to exist here (checking a policy for another host).
    #[arg(long)]
    pub no_interfaces: bool,
}

/// Prints warnings and errors; exit code 1 when the policy is invalid.
pub fn execute(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let loaded = match Loaded::from_file(&args.config) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(ExitCode::FAILURE);
        }
    };
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    let mut errors: Vec<String> = Vec::new();
    if !args.no_interfaces {
        errors.extend(loaded.missing_interfaces().iter().map(ToString::to_string));
    }
    let policy = &loaded.policy;
    if let Err(err) = PrefixTables::build(&policy.allow, &policy.block, &policy.limits) {
        errors.push(format!("{}: {err}", args.config.display()));
    }
    for error in &errors {
        eprintln!("error: {error}");
    }
    if !errors.is_empty() {
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "{}: ok ({} interfaces, {} allow and {} block entries, {} rate-limit rules{}, {} warnings)",
        args.config.display(),
        policy.interfaces.len(),
        policy.allow.len(),
        policy.block.len(),
        policy.rules.len(),
        if policy.dry_run { " in dry run" } else { "" },
        loaded.warnings.len()
    );
    Ok(ExitCode::SUCCESS)
}
