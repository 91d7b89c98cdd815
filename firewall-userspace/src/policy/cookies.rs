//! What a policy's `syn_cookies` settings mean on this host: which TCP ports get SYN cookies
//! (`apifw check` prints them), and the host settings that would leave them without any
//! (`check`, `run` and `reload` warn). Warnings, not errors: the daemon starts before the
//! services it protects, so a port nothing listens on yet is normal at boot.
//!
//! Both host facts are read in the caller's network namespace: `/proc/sys/net/ipv4/` and
//! `/proc/net/` follow the namespace of the reading process.

use std::{collections::BTreeSet, path::Path};

use firewall_common::packet::IPPROTO_TCP;

use super::{Policy, SynCookies};

/// The kernel's switch for SYN cookies, per network namespace.
const SYNCOOKIES_SYSCTL: &str = "/proc/sys/net/ipv4/tcp_syncookies";
/// The kernel's TCP socket tables (IPv4, IPv6).
const TCP_TABLES: [&str; 2] = ["/proc/net/tcp", "/proc/net/tcp6"];
/// `TCP_LISTEN` as those tables print it.
const LISTEN_STATE: &str = "0A";

/// One rule's SYN cookies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookiePorts {
    /// The rule's name.
    pub rule: String,
    /// `auto` or `always`.
    pub mode: SynCookies,
    /// Its TCP ports; empty: every TCP port no earlier rule takes.
    pub ports: Vec<u16>,
}

/// The rules whose TCP ports get SYN cookies, in policy order.
pub fn cookie_ports(policy: &Policy) -> Vec<CookiePorts> {
    policy
        .rules
        .iter()
        // Under dry run a rule changes no traffic: no cookies either.
        .filter(|rule| {
            rule.syn_cookies != SynCookies::Off
                && rule.protocol.is_none_or(|p| p == IPPROTO_TCP)
                && !policy.dry_run
                && !rule.config.dry_run()
        })
        .map(|rule| CookiePorts {
            rule: rule.name.clone(),
            mode: rule.syn_cookies,
            ports: rule.ports.clone(),
        })
        .collect()
}

/// How `apifw check` describes the ports of `cookies`.
pub fn describe(cookies: &CookiePorts) -> String {
    let ports = if cookies.ports.is_empty() {
        "every TCP port no earlier rule takes".to_owned()
    } else {
        let ports: Vec<String> = cookies.ports.iter().map(u16::to_string).collect();
        format!("TCP {}", ports.join(", "))
    };
    format!(
        "SYN cookies ({}) for rule `{}`: {ports}",
        cookies.mode.name(),
        cookies.rule
    )
}

/// Warnings about this host for the policy's SYN cookies: `net.ipv4.tcp_syncookies = 0` (the
/// kernel neither sends nor takes cookies, so no port gets one), and cookie ports nothing
/// listens on now.
pub fn host_warnings(policy: &Policy) -> Vec<String> {
    host_warnings_from(
        policy,
        Path::new(SYNCOOKIES_SYSCTL),
        &TCP_TABLES.map(Path::new),
    )
}

fn host_warnings_from(policy: &Policy, sysctl: &Path, tables: &[&Path]) -> Vec<String> {
    let cookies = cookie_ports(policy);
    if cookies.is_empty() {
        return Vec::new();
    }
    let mut warnings = Vec::new();
    if std::fs::read_to_string(sysctl).is_ok_and(|value| value.trim() == "0") {
        let rules: Vec<String> = cookies.iter().map(|c| format!("`{}`", c.rule)).collect();
        warnings.push(format!(
            "syn_cookies: net.ipv4.tcp_syncookies = 0 on this host, so the kernel neither sends \
             nor accepts SYN cookies: the SYNs of rule{} {} go to the kernel as without cookies \
             (set net.ipv4.tcp_syncookies = 1, or syn_cookies = \"off\" to say so)",
            if rules.len() == 1 { "" } else { "s" },
            rules.join(", ")
        ));
    }
    let Some(listening) = listening_ports(tables) else {
        return warnings;
    };
    for rule in &cookies {
        for port in &rule.ports {
            if !listening.contains(port) {
                warnings.push(format!(
                    "rule `{}`: syn_cookies on TCP port {port}, where nothing listens now: its \
                     SYNs go to the kernel (which resets them) until something does",
                    rule.rule
                ));
            }
        }
    }
    warnings
}

/// The TCP ports with a listening socket in this namespace; None if no table could be read.
fn listening_ports(tables: &[&Path]) -> Option<BTreeSet<u16>> {
    let mut read_any = false;
    let mut ports = BTreeSet::new();
    for table in tables {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        read_any = true;
        // "sl local_address rem_address st ...": local_address is ADDR:PORT in hex.
        for line in text.lines().skip(1) {
            let mut fields = line.split_whitespace();
            let (Some(local), Some(state)) = (fields.nth(1), fields.nth(1)) else {
                continue;
            };
            if state != LISTEN_STATE {
                continue;
            }
            if let Some(port) = local
                .rsplit_once(':')
                .and_then(|(_, port)| u16::from_str_radix(port, 16).ok())
            {
                ports.insert(port);
            }
        }
    }
    read_any.then_some(ports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Loaded;

    fn policy(rules: &str) -> Policy {
        Loaded::from_str(Path::new("cookies.toml"), rules)
            .unwrap_or_else(|err| panic!("{err}"))
            .policy
    }

    const RULES: &str = r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080, 8443]
per_source = { packets_per_second = 100 }

[[rule]]
name = "dns"
protocol = "udp"
ports = [53]
per_source = { packets_per_second = 100 }

[[rule]]
name = "ssh"
protocol = "tcp"
ports = [22]
syn_cookies = "off"
syn_per_source = { per_second = 1 }

[[rule]]
name = "rest"
protocol = "any"
syn_cookies = "always"
per_source = { packets_per_second = 100 }
"#;

    #[test]
    fn tcp_rules_default_to_auto_and_udp_and_off_rules_get_none() {
        let cookies = cookie_ports(&policy(RULES));
        assert_eq!(
            cookies,
            vec![
                CookiePorts {
                    rule: "api".into(),
                    mode: SynCookies::Auto,
                    ports: vec![8080, 8443],
                },
                CookiePorts {
                    rule: "rest".into(),
                    mode: SynCookies::Always,
                    ports: vec![],
                },
            ]
        );
        assert_eq!(
            describe(&cookies[0]),
            "SYN cookies (auto) for rule `api`: TCP 8080, 8443"
        );
        assert_eq!(
            describe(&cookies[1]),
            "SYN cookies (always) for rule `rest`: every TCP port no earlier rule takes"
        );
    }

    #[test]
    fn a_rule_under_dry_run_gets_no_cookies() {
        let rules = RULES.replace("name = \"api\"\n", "name = \"api\"\ndry_run = true\n");
        let names: Vec<String> = cookie_ports(&policy(&rules))
            .into_iter()
            .map(|c| c.rule)
            .collect();
        assert_eq!(names, vec!["rest".to_owned()]);
        assert!(cookie_ports(&policy(&format!("dry_run = true\n{RULES}"))).is_empty());
    }

    #[test]
    fn cookies_on_a_udp_rule_are_an_error_naming_the_setting() {
        let err = Loaded::from_str(
            Path::new("cookies.toml"),
            "[[rule]]\nname = \"u\"\nprotocol = \"udp\"\nports = [53]\nsyn_cookies = \"always\"\n\
             per_source = { packets_per_second = 1 }\n",
        )
        .expect_err("cookies need TCP");
        let text = format!("{err:#}");
        assert!(
            text.contains("syn_cookies = \"always\" needs TCP"),
            "{text}"
        );
    }

    #[test]
    fn a_host_without_cookies_or_listeners_is_warned_about() {
        let dir = crate::test_dir::TempDir::new("cookie-host");
        let sysctl = dir.path().join("tcp_syncookies");
        let tcp = dir.path().join("tcp");
        // A listener on 8080 (0A), an established socket on 8443 (01).
        std::fs::write(
            &tcp,
            "  sl  local_address rem_address   st tx_queue rx_queue\n\
             0: 0100007F:1F90 00000000:0000 0A 00000000:00000000\n\
             1: 0100007F:20FB 0200007F:9C40 01 00000000:00000000\n",
        )
        .expect("write");
        std::fs::write(&sysctl, "0\n").expect("write");
        let warnings = host_warnings_from(&policy(RULES), &sysctl, &[tcp.as_path()]);
        assert_eq!(warnings.len(), 2, "{warnings:#?}");
        assert!(
            warnings[0].contains("net.ipv4.tcp_syncookies = 0"),
            "{}",
            warnings[0]
        );
        assert!(
            warnings[0].contains("rules `api`, `rest`"),
            "{}",
            warnings[0]
        );
        assert!(
            warnings[1].contains("TCP port 8443, where nothing listens"),
            "{}",
            warnings[1]
        );
        std::fs::write(&sysctl, "1\n").expect("write");
        let warnings = host_warnings_from(&policy(RULES), &sysctl, &[tcp.as_path()]);
        assert_eq!(warnings.len(), 1, "{warnings:#?}");
    }
}
