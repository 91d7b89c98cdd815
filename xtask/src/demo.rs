//! `cargo xtask demo`: the real daemon protecting a real HTTP server in a namespace lab.
//!
//! Topology (all names carry our pid, so demos can run in parallel):
//!
//! ```text
//!   client   198.51.100.10 ─┐
//!   partner  203.0.113.7   ─┤  br0 in `sw`  ├─ api  192.0.2.1 (HTTP :8080, XDP here)
//!   attacker 203.0.113.66  ─┘                    also 198.51.100.1, 203.0.113.1 (gateway)
//! ```
//!
//! The policy (`examples/apifw.toml`) blocks 203.0.113.0/24 but allows 203.0.113.7/32, so the
//! partner must get through, the attacker must not, and the counters must show both.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    cmd,
    lab::{self, Lab, ProcessId},
    root, setup, target_dir, workspace_root,
};

const SERVICE_ADDR: &str = "192.0.2.1";
const SERVICE_PORT: &str = "8080";

/// What a host should see when it calls the API.
#[derive(Clone, Copy, PartialEq)]
enum Expect {
    /// HTTP 200.
    Ok,
    /// No answer at all: XDP drops the SYN, so curl times out (a refusal would mean it got in).
    Timeout,
}

/// One client host of the lab.
struct Host {
    role: &'static str,
    /// Interface name stem; with the pid suffix it stays within IFNAMSIZ (15 characters).
    stem: &'static str,
    addr: &'static str,
    gateway: &'static str,
    expect: Expect,
    attempts: usize,
    max_time_secs: u32,
}

const HOSTS: [Host; 3] = [
    Host {
        role: "client",
        stem: "cli",
        addr: "198.51.100.10",
        gateway: "198.51.100.1",
        expect: Expect::Ok,
        attempts: 5,
        max_time_secs: 3,
    },
    Host {
        role: "partner",
        stem: "par",
        addr: "203.0.113.7",
        gateway: "203.0.113.1",
        expect: Expect::Ok,
        attempts: 5,
        max_time_secs: 3,
    },
    Host {
        role: "attacker",
        stem: "atk",
        addr: "203.0.113.66",
        gateway: "203.0.113.1",
        expect: Expect::Timeout,
        attempts: 3,
        max_time_secs: 2,
    },
];

/// curl's exit code for "operation timed out".
const CURL_TIMEOUT: i32 = 28;

pub fn run() -> Result<()> {
    root::require_root("demo")?;
    setup::run()?;
    cmd::run(Command::new("cargo").current_dir(workspace_root()).args([
        "build",
        "--release",
        "-p",
        "firewall-userspace",
    ]))?;
    let apifw = target_dir().join("release/apifw");
    let config = workspace_root().join("examples/apifw.toml");
    ensure!(apifw.exists(), "{} was not built", apifw.display());
    ensure!(config.exists(), "{} is missing", config.display());

    lab::install_interrupt_handler()?;
    let name = format!("apifw-demo-{}", std::process::id());
    let mut lab = Lab::new(&name)?;
    // `lab` is dropped on every path out of here, removing namespaces, processes and pins.
    run_in_lab(&mut lab, &name, &apifw, &config)
}

fn run_in_lab(lab: &mut Lab, name: &str, apifw: &Path, config: &Path) -> Result<()> {
    let suffix = std::process::id() % 100_000;
    let api_if = format!("dapi{suffix}");

    println!("demo: building the lab ({name}-*)");
    let sw = lab.add_namespace("sw")?;
    lab.ip(&sw, &["link", "add", "br0", "type", "bridge"])?;
    lab.ip(&sw, &["link", "set", "br0", "up"])?;

    let api = lab.add_namespace("api")?;
    lab.connect(&api, &api_if, &sw, &format!("sapi{suffix}"), "br0")?;
    for addr in ["192.0.2.1/24", "198.51.100.1/24", "203.0.113.1/24"] {
        lab.ip(&api, &["addr", "add", addr, "dev", &api_if])?;
    }

    let mut host_ns = Vec::new();
    for host in &HOSTS {
        let ns = lab.add_namespace(host.role)?;
        let ifname = format!("d{}{suffix}", host.stem);
        lab.connect(&ns, &ifname, &sw, &format!("s{}{suffix}", host.stem), "br0")?;
        lab.ip(
            &ns,
            &["addr", "add", &format!("{}/24", host.addr), "dev", &ifname],
        )?;
        lab.ip(&ns, &["route", "add", "default", "via", host.gateway])?;
        host_ns.push(ns);
    }

    println!("demo: starting the API (python3 http.server on {SERVICE_ADDR}:{SERVICE_PORT})");
    let www = lab.work_dir().join("www");
    fs::create_dir_all(&www)?;
    fs::write(www.join("index.html"), "apifw demo API\n")?;
    let mut server = Command::new("ip");
    server
        .args([
            "netns",
            "exec",
            &api,
            "python3",
            "-m",
            "http.server",
            SERVICE_PORT,
        ])
        .args(["--bind", SERVICE_ADDR, "--directory"])
        .arg(&www);
    let server = lab.spawn("http-server", server)?;
    lab::wait_until(Duration::from_secs(10), "the HTTP server", || {
        lab.ensure_running(server)?;
        Ok(curl(lab, &api, 1)?.is_ok_and(|code| code == "200"))
    })?;

    println!("demo: baseline without apifw: every host reaches the API");
    for (host, ns) in HOSTS.iter().zip(&host_ns) {
        let outcome = curl(lab, ns, 3)?;
        ensure!(
            outcome.as_deref() == Ok("200"),
            "baseline: {} ({}) cannot reach the API before apifw runs: {}",
            host.role,
            host.addr,
            describe(&outcome)
        );
    }

    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{name}"));
    let run_dir = lab.work_dir().join("run");
    ensure!(
        !pin_dir.exists(),
        "{} already exists: left over from a crashed run? remove it and retry",
        pin_dir.display()
    );
    // Normally the daemon removes its pins; this is for when it dies or is killed.
    lab.own_path(&pin_dir);
    let daemon = start_daemon(lab, apifw, config, &api, &api_if, &pin_dir, &run_dir)?;

    println!("demo: sending traffic");
    let mut failures = Vec::new();
    let mut table = String::new();
    writeln!(
        table,
        "  {:<9} {:<14} {:<9} {:<40} result",
        "host", "source", "expected", "answers"
    )?;
    for (host, ns) in HOSTS.iter().zip(&host_ns) {
        let mut answers = Vec::new();
        let mut good = 0;
        for _ in 0..host.attempts {
            let outcome = curl(lab, ns, host.max_time_secs)?;
            let matched = match host.expect {
                Expect::Ok => outcome.as_deref() == Ok("200"),
                Expect::Timeout => outcome == Err(CURL_TIMEOUT),
            };
            good += usize::from(matched);
            answers.push(describe(&outcome));
        }
        let passed = good == host.attempts;
        let expected = match host.expect {
            Expect::Ok => "200",
            Expect::Timeout => "blocked",
        };
        writeln!(
            table,
            "  {:<9} {:<14} {:<9} {:<40} {} {good}/{}",
            host.role,
            host.addr,
            expected,
            answers.join(" "),
            if passed { "PASS" } else { "FAIL" },
            host.attempts
        )?;
        if !passed {
            failures.push(format!(
                "{} ({}) got {}",
                host.role,
                host.addr,
                answers.join(" ")
            ));
        }
    }
    print!("{table}");

    let stats_args = |json: bool| {
        let mut stats = Command::new(apifw);
        stats
            .args(["stats", "--pin-dir"])
            .arg(&pin_dir)
            .arg("--run-dir")
            .arg(&run_dir);
        if json {
            stats.arg("--json");
        }
        stats
    };
    println!("demo: apifw stats");
    print!("{}", cmd::output(&mut stats_args(false))?);
    let json = cmd::output(&mut stats_args(true))?;
    let (blocked, allowed) = match (
        counter_packets(&json, "drop", "blocklist"),
        counter_packets(&json, "pass", "allowlist"),
    ) {
        (Ok(blocked), Ok(allowed)) => (blocked, allowed),
        (Err(err), _) | (_, Err(err)) => {
            return Err(err.context(format!("reading `apifw stats --json` output:\n{json}")));
        }
    };
    if blocked == 0 {
        failures.push("counter drop/blocklist is 0".to_owned());
    }
    if allowed == 0 {
        failures.push("counter pass/allowlist is 0".to_owned());
    }

    println!("demo: stopping apifw with SIGTERM");
    let status = lab.terminate(daemon, Duration::from_secs(10))?;
    if !status.success() {
        failures.push(format!("apifw exited with {status}:\n{}", lab.log(daemon)));
    }
    if pin_dir.exists() {
        failures.push(format!("apifw left its pins in {}", pin_dir.display()));
    }

    if !failures.is_empty() {
        bail!("demo failed:\n  {}", failures.join("\n  "));
    }
    println!("demo: summary");
    println!("  client and partner reached the API on every request (HTTP 200)");
    println!("  the attacker's requests were dropped at XDP and timed out");
    println!("  counters: drop/blocklist {blocked} packets, pass/allowlist {allowed} packets");
    println!("  apifw exited 0 on SIGTERM and removed its pins");
    Ok(())
}

/// Starts `apifw run` inside the api namespace and waits until its XDP link is pinned.
fn start_daemon(
    lab: &mut Lab,
    apifw: &Path,
    config: &Path,
    api_ns: &str,
    api_if: &str,
    pin_dir: &Path,
    run_dir: &Path,
) -> Result<ProcessId> {
    println!("demo: starting apifw on {api_if}");
    // nsenter rather than `ip netns exec`: the latter remounts /sys, which hides bpffs.
    let mut daemon = Command::new("nsenter");
    daemon
        .arg(format!("--net=/run/netns/{api_ns}"))
        .arg(apifw)
        .arg("run")
        .arg("--config")
        .arg(config)
        .args(["--interface", api_if, "--pin-dir"])
        .arg(pin_dir)
        .arg("--run-dir")
        .arg(run_dir);
    let daemon = lab.spawn("apifw", daemon)?;
    let link = pin_dir.join("v1/links").join(api_if);
    let attached = lab::wait_until(
        Duration::from_secs(20),
        &format!("apifw to pin {}", link.display()),
        || {
            lab.ensure_running(daemon)?;
            Ok(link.exists())
        },
    );
    if let Err(err) = attached {
        // An early exit already quotes the daemon's output; a timeout does not yet.
        if lab.ensure_running(daemon).is_ok() {
            bail!("{err}; apifw's output so far:\n{}", lab.log(daemon));
        }
        return Err(err);
    }
    println!(
        "demo: apifw attached (pid {}, {})",
        lab.pid(daemon),
        link.display()
    );
    Ok(daemon)
}

/// One HTTP request to the API from `ns`: `Ok(status code)` when curl succeeded, else
/// `Err(curl exit code)`.
fn curl(lab: &Lab, ns: &str, max_time_secs: u32) -> Result<Result<String, i32>> {
    let url = format!("http://{SERVICE_ADDR}:{SERVICE_PORT}/");
    let max_time = max_time_secs.to_string();
    let out = lab.exec(
        ns,
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            &max_time,
            &url,
        ],
    )?;
    // curl dies with us on Ctrl-C; report the interrupt, not a bogus result.
    lab::check_interrupted()?;
    Ok(if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(out.status.code().unwrap_or(-1))
    })
}

fn describe(outcome: &Result<String, i32>) -> String {
    match outcome {
        Ok(code) => code.clone(),
        Err(CURL_TIMEOUT) => "timeout".to_owned(),
        Err(code) => format!("curl-exit-{code}"),
    }
}

/// Packets of the (`action`, `reason`) counter in `apifw stats --json` output, whose shape is
/// `{"counters":[{"action":"drop","reason":"blocklist","packets":N,"bytes":N}, ...]}`.
fn counter_packets(json: &str, action: &str, reason: &str) -> Result<u64> {
    let stats: serde_json::Value = serde_json::from_str(json).context("not JSON")?;
    let counters = stats["counters"]
        .as_array()
        .context("no `counters` array")?;
    let counter = counters
        .iter()
        .find(|c| c["action"] == action && c["reason"] == reason)
        .with_context(|| format!("no counter for {action}/{reason}"))?;
    counter["packets"]
        .as_u64()
        .with_context(|| format!("counter {action}/{reason} has no integer `packets`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATS: &str = r#"{"counters":[
        {"action":"pass","reason":"default","packets":40,"bytes":4000},
        {"action":"pass","reason":"allowlist","packets":12,"bytes":900},
        {"action":"drop","reason":"blocklist","packets":3,"bytes":180}
    ]}"#;

    #[test]
    fn counter_packets_finds_the_pair() {
        assert_eq!(counter_packets(STATS, "drop", "blocklist").unwrap(), 3);
        assert_eq!(counter_packets(STATS, "pass", "allowlist").unwrap(), 12);
    }

    #[test]
    fn counter_packets_reports_missing_counters_and_bad_json() {
        assert!(counter_packets(STATS, "drop", "malformed").is_err());
        assert!(counter_packets("{}", "drop", "blocklist").is_err());
        assert!(counter_packets("not json", "drop", "blocklist").is_err());
    }

    #[test]
    fn interface_names_fit_ifnamsiz() {
        let longest_suffix = 99_999;
        for stem in HOSTS.iter().map(|h| h.stem).chain(["api"]) {
            for side in ['d', 's'] {
                assert!(format!("{side}{stem}{longest_suffix}").len() <= 15);
            }
        }
    }
}
