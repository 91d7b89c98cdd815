//! `apifw status`.

use std::process::ExitCode;

use crate::cli::{ControlArgs, failed, print};
use firewall_userspace::control::{CrowdsecPushStatus, Status};

/// Arguments of `apifw status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Daemon and output.
    #[command(flatten)]
    pub control: ControlArgs,
}

/// Runs `apifw status`.
pub fn execute(args: StatusArgs) -> anyhow::Result<ExitCode> {
    match args.control.client()?.get::<Status>("/status") {
        Ok(status) => {
            print(args.control.json, &status, |status| {
                let mut out = format!(
                    "apifw {} (pid {}), up {}s\npolicy {} version {} (generation {}){}\n",
                    status.version,
                    status.pid,
                    status.uptime_secs,
                    status.policy_file.display(),
                    status.policy_version,
                    status.active_generation,
                    if status.adopted {
                        ", adopted pinned maps at start"
                    } else {
                        ""
                    }
                );
                for interface in &status.interfaces {
                    out.push_str(&format!(
                        "interface {} ({})\n",
                        interface.name, interface.mode
                    ));
                }
                out.push_str(&format!(
                    "block entries {} ({} runtime), allow entries {} ({} runtime)\n",
                    status.block_entries,
                    status.runtime_block,
                    status.allow_entries,
                    status.runtime_allow
                ));
                for map in &status.maps {
                    out.push_str(&format!(
                        "map {:<20} {:>9} / {:<9} ({:.1}%)\n",
                        map.map,
                        map.entries,
                        map.capacity,
                        100.0 * map.entries as f64 / map.capacity.max(1) as f64
                    ));
                }
                if !status.memory.is_empty() {
                    let in_use: u64 = status.memory.iter().map(|map| map.bytes).sum();
                    let full: u64 = status.memory.iter().map(|map| map.full_bytes).sum();
                    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
                    out.push_str(&format!(
                        "kernel memory {:.1} MiB in use, {:.1} MiB with every map full at these \
                         [limits] ({})\n",
                        mib(in_use),
                        mib(full),
                        status
                            .memory
                            .iter()
                            .filter(|map| map.limit.is_some())
                            .map(|map| format!(
                                "{} {:.1}/{:.1} MiB",
                                map.map,
                                mib(map.bytes),
                                mib(map.full_bytes)
                            ))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                for cookies in &status.syn_cookies {
                    out.push_str(&describe_cookies(cookies));
                    out.push('\n');
                }
                if let Some(program) = &status.program {
                    out.push_str(&program.describe());
                    out.push('\n');
                }
                if let Some(crowdsec) = &status.crowdsec {
                    out.push_str(&format!(
                        "crowdsec {}: {} decisions, {} syncs, last {}, {} errors{}\n",
                        crowdsec.lapi_url,
                        crowdsec.decisions,
                        crowdsec.syncs,
                        crowdsec
                            .last_sync_secs_ago
                            .map(|secs| format!("{secs}s ago"))
                            .unwrap_or_else(|| "never".into()),
                        crowdsec.errors,
                        crowdsec
                            .last_error
                            .as_ref()
                            .map(|err| format!(" (last: {err})"))
                            .unwrap_or_default()
                    ));
                    if let Some(push) = &crowdsec.push {
                        out.push_str(&push_line(push));
                    }
                }
                out.push_str(&format!(
                    "reloads {} ok, {} failed{}\n",
                    status.reloads,
                    status.failed_reloads,
                    status
                        .last_reload_error
                        .as_ref()
                        .map(|err| format!(" (last: {err})"))
                        .unwrap_or_default()
                ));
                if !status.audit_log.as_os_str().is_empty() {
                    out.push_str(&format!("audit log {}\n", status.audit_log.display()));
                }
                if !status.state_file.as_os_str().is_empty() {
                    out.push_str(&format!("state file {}\n", status.state_file.display()));
                }
                out
            });
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Ok(failed(&err)),
    }
}

/// A cookie port's line: `syn cookies for rule `api` on TCP 8080 (auto): on (2 CPUs), 4
/// switches`.
fn describe_cookies(cookies: &firewall_userspace::control::CookieStatus) -> String {
    let port = cookies
        .port
        .map_or("every TCP port".to_owned(), |port| format!("TCP {port}"));
    let mode = match (cookies.setting.as_str(), cookies.cpus_in_cookie_mode) {
        ("always", _) => "on".to_owned(),
        (_, 0) => "off (ready)".to_owned(),
        (_, 1) => "on (1 CPU)".to_owned(),
        (_, cpus) => format!("on ({cpus} CPUs)"),
    };
    let switches = if cookies.port.is_some() {
        format!(", {} switches", cookies.switches)
    } else {
        String::new()
    };
    format!(
        "syn cookies for rule `{}` on {port} ({}): {mode}{switches}",
        cookies.rule, cookies.setting
    )
}

/// The push side's line: `crowdsec push as apifw-web1 (jail bans): 12 bans pushed, 0 queued,
/// last 3s ago, 0 errors, 0 dropped`.
fn push_line(push: &CrowdsecPushStatus) -> String {
    let what = match (push.jail_bans, push.rate_limit_bans) {
        (true, true) => "jail and rate-limit bans",
        (true, false) => "jail bans",
        (false, true) => "rate-limit bans",
        (false, false) => "nothing",
    };
    format!(
        "crowdsec push as {} ({what}): {} bans pushed, {} queued, last {}, {} errors, {} \
         dropped{}\n",
        push.machine_id,
        push.pushed,
        push.queued,
        push.last_push_secs_ago
            .map(|secs| format!("{secs}s ago"))
            .unwrap_or_else(|| "never".into()),
        push.errors,
        push.dropped,
        push.last_error
            .as_ref()
            .map(|err| format!(" (last: {err})"))
            .unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_push_line_says_what_is_pushed_and_how_it_goes() {
        let mut push = CrowdsecPushStatus {
            machine_id: "apifw-web1".into(),
            jail_bans: true,
            rate_limit_bans: false,
            pushed: 12,
            queued: 0,
            last_push_secs_ago: Some(3),
            errors: 0,
            dropped: 0,
            last_error: None,
        };
        assert_eq!(
            push_line(&push),
            "crowdsec push as apifw-web1 (jail bans): 12 bans pushed, 0 queued, last 3s ago, 0 \
             errors, 0 dropped\n"
        );
        push.rate_limit_bans = true;
        push.last_push_secs_ago = None;
        push.errors = 2;
        push.last_error = Some("cannot connect".into());
        assert_eq!(
            push_line(&push),
            "crowdsec push as apifw-web1 (jail and rate-limit bans): 12 bans pushed, 0 queued, \
             last never, 2 errors, 0 dropped (last: cannot connect)\n"
        );
    }
}
