//! `apifw check --config FILE`: validate without loading.

use std::{path::PathBuf, process::ExitCode};

use firewall_userspace::{
    compile::tables::PrefixTables,
    dataplane::memory::{self, MapCost},
    policy::{Loaded, Policy, cookies},
};

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
    // What this host would do with the policy's SYN cookies, unless it is for another host.
    let host_warnings = if args.no_interfaces {
        Vec::new()
    } else {
        loaded.host_warnings()
    };
    for warning in &host_warnings {
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
        counted(loaded.warnings.len() + host_warnings.len(), "warning")
    );
    for cookies in cookies::cookie_ports(policy) {
        println!("{}", cookies::describe(&cookies));
    }
    match memory::costs(policy, memory::possible_cpus()) {
        Ok(costs) => print!(
            "{}",
            describe_memory(policy, &costs, memory::possible_cpus())
        ),
        Err(err) => eprintln!("warning: kernel memory unknown: {err}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// What the policy's `[limits]` cost in kernel memory: the total at idle and full, then each
/// limit's maps.
fn describe_memory(policy: &Policy, costs: &[MapCost], cpus: u32) -> String {
    let idle: u64 = costs.iter().map(|cost| cost.idle_bytes).sum();
    let full: u64 = costs.iter().map(MapCost::full).sum();
    let mut out = format!(
        "kernel memory on this host ({cpus} CPUs): {} at idle, {} with every map full\n",
        mib(idle),
        mib(full)
    );
    let limits = policy.limits;
    for (limit, value) in [
        ("max_v4_prefixes", limits.max_v4_prefixes),
        ("max_v6_prefixes", limits.max_v6_prefixes),
        ("max_tracked_sources", limits.max_tracked_sources),
        ("max_tracked_subnets", limits.max_tracked_subnets),
        ("max_bans", limits.max_bans),
    ] {
        let maps: Vec<&MapCost> = costs
            .iter()
            .filter(|cost| cost.limit == Some(limit))
            .collect();
        let idle: u64 = maps.iter().map(|cost| cost.idle_bytes).sum();
        let full: u64 = maps.iter().map(|cost| cost.full()).sum();
        let per_entry: u64 = maps.iter().map(|cost| cost.entry_bytes).sum();
        let names: Vec<&str> = maps.iter().map(|cost| cost.map).collect();
        let growth = if per_entry == 0 {
            "preallocated".to_owned()
        } else {
            format!("+{per_entry} B per entry held, {} full", mib(full))
        };
        out.push_str(&format!(
            "  limits.{limit} = {value}: {} at idle, {growth} ({})\n",
            mib(idle),
            names.join(", ")
        ));
    }
    let others: u64 = costs
        .iter()
        .filter(|cost| cost.limit.is_none())
        .map(|cost| cost.idle_bytes)
        .sum();
    out.push_str(&format!("  fixed maps: {}\n", mib(others)));
    out
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
