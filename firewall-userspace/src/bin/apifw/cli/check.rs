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
        "{}: ok ({}, {} and {}, {}{}, {})",
        args.config.display(),
        counted(policy.interfaces.len(), "interface"),
        counted(policy.allow.len(), "allow entry"),
        counted(policy.block.len(), "block entry"),
        counted(policy.rules.len(), "rate-limit rule"),
        if policy.dry_run { " in dry run" } else { "" },
        counted(loaded.warnings.len(), "warning")
    );
    Ok(ExitCode::SUCCESS)
}

/// `1 interface`, `2 interfaces`, `0 block entries`.
fn counted(count: usize, what: &str) -> String {
    if count == 1 {
        format!("1 {what}")
    } else if let Some(stem) = what.strip_suffix('y') {
        format!("{count} {stem}ies")
    } else {
        format!("{count} {what}s")
    }
}

#[cfg(test)]
mod counted_tests {
    use super::counted;

    #[test]
    fn counts_read_as_english() {
        assert_eq!(counted(1, "interface"), "1 interface");
        assert_eq!(counted(0, "interface"), "0 interfaces");
        assert_eq!(counted(2, "block entry"), "2 block entries");
        assert_eq!(counted(1, "allow entry"), "1 allow entry");
        assert_eq!(counted(3, "warning"), "3 warnings");
    }
}
