//! The demo's traffic and what it reads back: curl from a host, the polite client and the
//! flooder (small Python peers, shipped beside this file), and parsers for the daemon's answers.

use std::{fmt, fs, process::Command, thread};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::lab::{self, Lab};

/// Where the demo's API listens.
pub const SERVICE_ADDR: &str = "192.0.2.1";
pub const SERVICE_PORT: &str = "8080";

/// curl's exit code for "operation timed out".
const CURL_TIMEOUT: i32 = 28;

/// What a host saw when it called the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP answer with this status.
    Status(u16),
    /// No answer at all: XDP dropped the packets (a refusal would mean they got in).
    Timeout,
    /// curl failed otherwise, with this exit code.
    Failed(i32),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(code) => write!(f, "{code}"),
            Self::Timeout => f.write_str("timeout"),
            Self::Failed(code) => write!(f, "curl-exit-{code}"),
        }
    }
}

/// One HTTP request to the API from `ns`, given up after `max_time_secs`.
pub fn curl(lab: &Lab, ns: &str, max_time_secs: u32) -> Result<Outcome> {
    let url = format!("http://{SERVICE_ADDR}:{SERVICE_PORT}/");
    curl_url(lab, ns, &url, None, max_time_secs)
}

/// One HTTP request to `url` from `ns`, with basic-auth `credentials` (`user:password`) if given.
pub fn curl_url(
    lab: &Lab,
    ns: &str,
    url: &str,
    credentials: Option<&str>,
    max_time_secs: u32,
) -> Result<Outcome> {
    let max_time = max_time_secs.to_string();
    let mut argv = vec![
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        &max_time,
    ];
    if let Some(credentials) = credentials {
        argv.extend(["-u", credentials]);
    }
    argv.push(url);
    let out = lab.exec(ns, &argv)?;
    // curl dies with us on Ctrl-C; report the interrupt, not a bogus result.
    lab::check_interrupted()?;
    Ok(match out.status.code() {
        Some(0) => {
            let code = String::from_utf8_lossy(&out.stdout);
            Outcome::Status(
                code.trim()
                    .parse()
                    .with_context(|| format!("curl printed no HTTP status: {code:?}"))?,
            )
        }
        Some(CURL_TIMEOUT) => Outcome::Timeout,
        code => Outcome::Failed(code.unwrap_or(-1)),
    })
}

/// `times` requests in a row.
pub fn curl_times(lab: &Lab, ns: &str, times: usize, max_time_secs: u32) -> Result<Vec<Outcome>> {
    (0..times).map(|_| curl(lab, ns, max_time_secs)).collect()
}

/// Every request was answered with 200.
pub fn all_ok(outcomes: &[Outcome]) -> bool {
    !outcomes.is_empty() && outcomes.iter().all(|o| *o == Outcome::Status(200))
}

/// `200 200 timeout`.
pub fn list(outcomes: &[Outcome]) -> String {
    outcomes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the polite client saw.
#[derive(Debug)]
pub struct Polite {
    pub requests: u64,
    pub ok: u64,
    pub failures: Vec<String>,
}

/// What the flooder saw.
#[derive(Debug)]
pub struct Flood {
    pub requests: u64,
    pub ok: u64,
    pub ok_in_last_second: u64,
}

const POLITE_PY: &str = include_str!("polite.py");
const FLOODER_PY: &str = include_str!("flooder.py");
/// Connections the flooder keeps open at once.
const FLOOD_THREADS: &str = "32";
/// The polite client's pause between requests.
const POLITE_INTERVAL_SECS: &str = "0.25";

/// Runs the flooder (from `flooder_ns`) and the polite client (from `client_ns`) side by side
/// for `secs` seconds; the client keeps going one second longer, so that it also calls while the
/// flooder is banned. `during` runs `during_after` into the flood (to look at the firewall while
/// it works); its result is returned with the peers'.
pub fn flood<T: Send>(
    lab: &Lab,
    client_ns: &str,
    flooder_ns: &str,
    secs: u32,
    during_after: std::time::Duration,
    during: impl FnOnce() -> Result<T> + Send,
) -> Result<(Polite, Flood, T)> {
    let polite_py = lab.work_dir().join("polite.py");
    let flooder_py = lab.work_dir().join("flooder.py");
    fs::write(&polite_py, POLITE_PY)?;
    fs::write(&flooder_py, FLOODER_PY)?;
    let url = format!("http://{SERVICE_ADDR}:{SERVICE_PORT}/");
    let mut polite = Command::new("ip");
    polite
        .args(["netns", "exec", client_ns, "python3"])
        .arg(&polite_py)
        .args([url.as_str(), &(secs + 1).to_string(), POLITE_INTERVAL_SECS]);
    let mut flooder = Command::new("ip");
    flooder
        .args(["netns", "exec", flooder_ns, "python3"])
        .arg(&flooder_py)
        .args([SERVICE_ADDR, SERVICE_PORT, &secs.to_string(), FLOOD_THREADS]);
    let (polite, flooder, during) = thread::scope(|scope| {
        let polite = scope.spawn(|| json_of(&mut polite));
        let flooder = scope.spawn(|| json_of(&mut flooder));
        thread::sleep(during_after);
        let during = during();
        let joined = |result: thread::Result<Result<Value>>| {
            result.unwrap_or_else(|_| bail!("a traffic thread panicked"))
        };
        (joined(polite.join()), joined(flooder.join()), during)
    });
    lab::check_interrupted()?;
    let (polite, flooder, during) = (polite?, flooder?, during?);
    let count = |value: &Value, key: &str| {
        value[key]
            .as_u64()
            .with_context(|| format!("no count `{key}` in {value}"))
    };
    Ok((
        Polite {
            requests: count(&polite, "requests")?,
            ok: count(&polite, "ok")?,
            failures: polite["failures"]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .map(|item| item.as_str().unwrap_or("?").to_owned())
                        .collect()
                })
                .unwrap_or_default(),
        },
        Flood {
            requests: count(&flooder, "requests")?,
            ok: count(&flooder, "ok")?,
            ok_in_last_second: count(&flooder, "ok_in_last_second")?,
        },
        during,
    ))
}

/// Runs a peer to completion and parses the JSON object it prints.
fn json_of(command: &mut Command) -> Result<Value> {
    let out = command
        .output()
        .with_context(|| format!("running {}", crate::cmd::display(command)))?;
    if !out.status.success() {
        bail!(
            "{} failed with {}: {}",
            crate::cmd::display(command),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{} printed no JSON: {}",
            crate::cmd::display(command),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `apifw stats --json`: `{"counters":[{"action","reason","packets",..}],"rules":[{"rule",
/// "reason","packets",..}],..}`.
pub struct Stats(Value);

impl Stats {
    pub fn parse(json: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(json).context("not JSON")?;
        if !value["counters"].is_array() {
            bail!("no `counters` array");
        }
        Ok(Self(value))
    }

    /// Packets of the (`action`, `reason`) counter; 0 when it is not listed.
    pub fn packets(&self, action: &str, reason: &str) -> u64 {
        self.sum("counters", |row| {
            row["action"] == action && row["reason"] == reason
        })
    }

    /// Packets rule number `rule` counted under `reason` (only non-zero rows are listed).
    pub fn rule_packets(&self, rule: u64, reason: &str) -> u64 {
        self.sum("rules", |row| {
            row["rule"] == rule && row["reason"] == reason
        })
    }

    fn sum(&self, table: &str, matches: impl Fn(&Value) -> bool) -> u64 {
        self.0[table]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter(|row| matches(row))
                    .filter_map(|row| row["packets"].as_u64())
                    .sum()
            })
            .unwrap_or_default()
    }
}

/// The prefixes of `apifw bans --json` (`{"bans":[{"prefix":"198.51.100.66/32",..}]}`).
pub fn banned_prefixes(json: &str) -> Result<Vec<String>> {
    let value: Value = serde_json::from_str(json).context("`apifw bans --json` is not JSON")?;
    let bans = value["bans"]
        .as_array()
        .context("`apifw bans --json` has no `bans` array")?;
    Ok(bans
        .iter()
        .filter_map(|ban| ban["prefix"].as_str().map(str::to_owned))
        .collect())
}

/// The non-zero `apifw_packets_total` series of a scrape whose action is `drop`.
pub fn drop_lines(metrics: &str) -> Vec<String> {
    metrics
        .lines()
        .filter(|line| line.starts_with("apifw_packets_total{") && line.contains("action=\"drop\""))
        .filter(|line| {
            line.rsplit(' ')
                .next()
                .and_then(|value| value.parse::<f64>().ok())
                .is_some_and(|value| value > 0.0)
        })
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATS: &str = r#"{"counters":[
        {"action":"pass","reason":"default","packets":40,"bytes":4000},
        {"action":"pass","reason":"allowlist","packets":12,"bytes":900},
        {"action":"drop","reason":"blocklist","packets":3,"bytes":180}],
        "rules":[{"rule":0,"reason":"syn_limited","packets":7,"bytes":420}]}"#;

    #[test]
    fn stats_find_counters_and_rule_rows() {
        let stats = Stats::parse(STATS).unwrap();
        assert_eq!(stats.packets("drop", "blocklist"), 3);
        assert_eq!(stats.packets("pass", "allowlist"), 12);
        assert_eq!(stats.packets("drop", "malformed"), 0);
        assert_eq!(stats.rule_packets(0, "syn_limited"), 7);
        assert_eq!(stats.rule_packets(1, "syn_limited"), 0);
        assert!(Stats::parse("{}").is_err());
        assert!(Stats::parse("not json").is_err());
    }

    #[test]
    fn drop_lines_keep_only_non_zero_drops() {
        let scrape = "# HELP apifw_packets Packets.\n\
            apifw_packets_total{action=\"drop\",reason=\"blocklist\",interface=\"x\"} 12\n\
            apifw_packets_total{action=\"drop\",reason=\"malformed\",interface=\"x\"} 0\n\
            apifw_packets_total{action=\"pass\",reason=\"default\",interface=\"x\"} 99\n";
        assert_eq!(
            drop_lines(scrape),
            ["apifw_packets_total{action=\"drop\",reason=\"blocklist\",interface=\"x\"} 12"]
        );
    }

    #[test]
    fn banned_prefixes_read_the_json() {
        let json = r#"{"bans":[{"prefix":"198.51.100.66/32","kind":"host"}]}"#;
        assert_eq!(banned_prefixes(json).unwrap(), ["198.51.100.66/32"]);
        assert!(banned_prefixes("{}").is_err());
    }
}
