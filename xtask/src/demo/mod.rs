//! `cargo xtask demo`: the real daemon protecting a real HTTP API in a namespace lab, with real
//! traffic, in about a minute.
//!
//! Topology (all names carry our pid, so demos can run in parallel):
//!
//! ```text
//!   client   198.51.100.10 ─┐
//!   flooder  198.51.100.66 ─┤
//!   guesser  198.51.100.77 ─┤  br0 in `sw`  ├─ api  192.0.2.1 (HTTP :8080, nginx :8081, XDP here)
//!   partner  203.0.113.7   ─┤                    also 198.51.100.1, 203.0.113.1 (gateway)
//!   attacker 203.0.113.66  ─┘
//! ```
//!
//! The policy (`examples/demo.toml`) blocks 203.0.113.0/24 but allows 203.0.113.7/32, and holds
//! port 8080 to per-source limits that ban a source which keeps exceeding them. The demo shows,
//! and checks, each thing an operator relies on: the lists, a flooder rate-limited and then banned
//! while a polite client of the same network keeps getting HTTP 200, a runtime block and unblock
//! on live traffic, a jail banning a password guesser on a real nginx, the metrics and `apifw
//! top` naming the flooder, and a clean stop. Every claim
//! is checked against real answers and counters ([`claims`]); one that does not hold makes the
//! demo exit non-zero, naming it.
//!
//! Everything the daemon writes (pins, control socket, state file, audit log) lives in the lab
//! and goes with it: the demo's policy is a copy of `examples/demo.toml` with a `[daemon]` table
//! pointing into the lab.

mod claims;
mod nginx;
mod traffic;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    cmd,
    lab::{self, Lab, ProcessId},
    root, setup, target_dir, workspace_root,
};
use claims::Claims;
use traffic::{Outcome, SERVICE_ADDR, SERVICE_PORT};

/// The demo's policy, shipped beside the example policy.
const DEMO_POLICY: &str = "examples/demo.toml";

/// One client host of the lab.
struct Host {
    role: &'static str,
    /// Interface name stem; with the pid suffix it stays within IFNAMSIZ (15 characters).
    stem: &'static str,
    addr: &'static str,
    gateway: &'static str,
}

const CLIENT: Host = Host {
    role: "client",
    stem: "cli",
    addr: "198.51.100.10",
    gateway: "198.51.100.1",
};
const FLOODER: Host = Host {
    role: "flooder",
    stem: "fld",
    addr: "198.51.100.66",
    gateway: "198.51.100.1",
};
const PARTNER: Host = Host {
    role: "partner",
    stem: "par",
    addr: "203.0.113.7",
    gateway: "203.0.113.1",
};
const ATTACKER: Host = Host {
    role: "attacker",
    stem: "atk",
    addr: "203.0.113.66",
    gateway: "203.0.113.1",
};
const GUESSER: Host = Host {
    role: "guesser",
    stem: "gss",
    addr: "198.51.100.77",
    gateway: "198.51.100.1",
};
const HOSTS: [&Host; 5] = [&CLIENT, &FLOODER, &PARTNER, &ATTACKER, &GUESSER];

/// How long the flooder floods; the rule bans after 2 s of continuous refusal.
const FLOOD_SECS: u32 = 6;
/// When the demo runs `apifw top --once` (which samples for a second): the flooder is banned by
/// then and still flooding.
const TOP_DURING_FLOOD: Duration = Duration::from_secs(3);

pub fn run() -> Result<()> {
    root::require_root("demo")?;
    let started = Instant::now();
    println!(
        "demo: step 1 of 3: setup (first run on a fresh machine: nightly Rust, bpf-linker built \
         from source, Debian tools; about 8 minutes on 2 CPUs, then seconds)"
    );
    setup::run()?;
    println!(
        "demo: step 2 of 3: building apifw in release mode (first time: the XDP program and about \
         250 crates, 4-6 minutes on 2 CPUs; then seconds)"
    );
    let build_started = Instant::now();
    cmd::run(Command::new("cargo").current_dir(workspace_root()).args([
        "build",
        "--release",
        "-p",
        "firewall-userspace",
    ]))?;
    println!("demo: built in {} s", build_started.elapsed().as_secs());
    let apifw = target_dir().join("release/apifw");
    ensure!(apifw.exists(), "{} was not built", apifw.display());
    let policy = fs::read_to_string(workspace_root().join(DEMO_POLICY))
        .with_context(|| format!("reading {DEMO_POLICY}"))?;

    println!("demo: step 3 of 3: the lab (about a minute)");
    lab::install_interrupt_handler()?;
    let name = format!("apifw-demo-{}", std::process::id());
    let mut lab = Lab::new(&name)?;
    // `lab` is dropped on every path out of here, removing namespaces, processes, pins and files.
    let lab_started = Instant::now();
    run_in_lab(&mut lab, &name, &apifw, &policy)?;
    println!(
        "demo: done in {} s (the lab took {} s); the lab and everything apifw wrote are removed",
        started.elapsed().as_secs(),
        lab_started.elapsed().as_secs()
    );
    Ok(())
}

/// The lab's namespaces, by role.
struct Hosts {
    api: String,
    client: String,
    flooder: String,
    partner: String,
    attacker: String,
    guesser: String,
}

fn run_in_lab(lab: &mut Lab, name: &str, apifw: &Path, policy: &str) -> Result<()> {
    let suffix = std::process::id() % 100_000;
    let api_if = format!("dapi{suffix}");
    println!("demo: building the lab ({name}-*): a bridge, the API host and four clients");
    let hosts = build_topology(lab, suffix, &api_if)?;

    println!("demo: starting the API (python3 http.server on {SERVICE_ADDR}:{SERVICE_PORT})");
    let www = lab.work_dir().join("www");
    fs::create_dir_all(&www)?;
    fs::write(www.join("index.html"), "apifw demo API\n")?;
    let mut server = Command::new("ip");
    server
        .args(["netns", "exec", &hosts.api, "python3", "-m", "http.server"])
        .arg(SERVICE_PORT)
        .args(["--bind", SERVICE_ADDR, "--directory"])
        .arg(&www);
    let server = lab.spawn("http-server", server)?;
    lab::wait_until(Duration::from_secs(10), "the HTTP server", || {
        lab.ensure_running(server)?;
        Ok(traffic::curl(lab, &hosts.api, 1)? == Outcome::Status(200))
    })?;

    println!(
        "demo: starting nginx with a basic-auth admin page on {SERVICE_ADDR}:{} (its access log is \
         the jail's)",
        nginx::PORT
    );
    let work_dir = lab.work_dir().to_owned();
    nginx::start(lab, &hosts.api, &work_dir)?;

    let mut claims = Claims::default();
    println!("demo: before apifw, every host reaches the API");
    for (host, ns) in [
        (&CLIENT, &hosts.client),
        (&FLOODER, &hosts.flooder),
        (&PARTNER, &hosts.partner),
        (&ATTACKER, &hosts.attacker),
        (&GUESSER, &hosts.guesser),
    ] {
        let outcome = traffic::curl(lab, ns, 3)?;
        ensure!(
            outcome == Outcome::Status(200),
            "the lab is broken: {} ({}) cannot reach the API before apifw runs: {outcome}",
            host.role,
            host.addr,
        );
    }

    let daemon = Daemon::start(lab, name, apifw, policy, &hosts.api, &api_if)?;
    show_lists(lab, &daemon, &hosts, &mut claims)?;
    show_rate_limit(lab, &daemon, &hosts, &mut claims)?;
    show_runtime_block(lab, &daemon, &hosts, &mut claims)?;
    show_jail(lab, &daemon, &hosts, &mut claims)?;
    show_metrics(lab, &hosts, &mut claims)?;

    println!("\ndemo: apifw stats");
    print!("{}", indent(&daemon.cli(&["stats"])?));
    println!("\ndemo: stopping apifw with SIGTERM");
    let status = lab.terminate(daemon.process, Duration::from_secs(10))?;
    claims.check(
        "apifw exits 0 on SIGTERM",
        status.success(),
        status.to_string(),
    );
    if !status.success() {
        println!("{}", lab.log(daemon.process));
    }
    claims.check(
        "apifw removes its pins on exit",
        !daemon.pin_dir.join("v4").exists(),
        format!("{} after exit", describe_dir(&daemon.pin_dir.join("v4"))),
    );
    claims.finish()
}

/// Creates the bridge, the API host (with one address per client network, as their gateway) and
/// the client hosts.
fn build_topology(lab: &mut Lab, suffix: u32, api_if: &str) -> Result<Hosts> {
    let sw = lab.add_namespace("sw")?;
    lab.ip(&sw, &["link", "add", "br0", "type", "bridge"])?;
    lab.ip(&sw, &["link", "set", "br0", "up"])?;
    let api = lab.add_namespace("api")?;
    lab.connect(&api, api_if, &sw, &format!("sapi{suffix}"), "br0")?;
    for addr in ["192.0.2.1/24", "198.51.100.1/24", "203.0.113.1/24"] {
        lab.ip(&api, &["addr", "add", addr, "dev", api_if])?;
    }
    let mut namespaces = Vec::new();
    for host in HOSTS {
        let ns = lab.add_namespace(host.role)?;
        let ifname = format!("d{}{suffix}", host.stem);
        lab.connect(&ns, &ifname, &sw, &format!("s{}{suffix}", host.stem), "br0")?;
        let addr = format!("{}/24", host.addr);
        lab.ip(&ns, &["addr", "add", &addr, "dev", &ifname])?;
        lab.ip(&ns, &["route", "add", "default", "via", host.gateway])?;
        namespaces.push(ns);
    }
    let [client, flooder, partner, attacker, guesser] = <[String; 5]>::try_from(namespaces)
        .map_err(|_| anyhow::anyhow!("one namespace per host"))?;
    Ok(Hosts {
        api,
        client,
        flooder,
        partner,
        attacker,
        guesser,
    })
}

/// The running daemon and where its files are.
struct Daemon {
    process: ProcessId,
    apifw: PathBuf,
    pin_dir: PathBuf,
    run_dir: PathBuf,
}

impl Daemon {
    /// Writes the lab's policy, starts `apifw run` in the API namespace and waits until it is
    /// ready: `apifw status` answers once it has attached and bound its control socket (the
    /// same point at which it tells systemd READY=1).
    fn start(
        lab: &mut Lab,
        name: &str,
        apifw: &Path,
        policy: &str,
        api_ns: &str,
        api_if: &str,
    ) -> Result<Self> {
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{name}"));
        ensure!(
            !pin_dir.exists(),
            "{} already exists: left over from a crashed run? remove it and retry",
            pin_dir.display()
        );
        // Normally the daemon removes its pins; this is for when it dies or is killed.
        lab.own_path(&pin_dir);
        let run_dir = lab.work_dir().join("run");
        let config = lab.work_dir().join("apifw.toml");
        fs::write(
            &config,
            lab_policy(policy, api_if, &pin_dir, &run_dir, lab.work_dir())?,
        )?;

        println!(
            "\ndemo: apifw check --config {DEMO_POLICY} (validates without loading; the lab's copy \
             names {api_if})"
        );
        print!(
            "{}",
            indent(&cmd::output(
                Command::new("nsenter")
                    .arg(format!("--net=/run/netns/{api_ns}"))
                    .arg(apifw)
                    .arg("check")
                    .arg("--config")
                    .arg(&config)
            )?)
        );
        println!("demo: starting `apifw run --config` on {api_if}");
        // nsenter rather than `ip netns exec`: the latter remounts /sys, which hides bpffs.
        let mut run = Command::new("nsenter");
        run.arg(format!("--net=/run/netns/{api_ns}"))
            .arg(apifw)
            .arg("run")
            .arg("--config")
            .arg(&config);
        let process = lab.spawn("apifw", run)?;
        let daemon = Self {
            process,
            apifw: apifw.to_owned(),
            pin_dir,
            run_dir,
        };
        let ready = lab::wait_until(
            Duration::from_secs(30),
            "apifw to answer `apifw status`",
            || {
                lab.ensure_running(process)?;
                Ok(cmd::succeeds(&mut daemon.command(&["status"])))
            },
        );
        if let Err(err) = ready {
            // An early exit already quotes the daemon's output; a timeout does not yet.
            if lab.ensure_running(process).is_ok() {
                bail!("{err}; apifw's output so far:\n{}", lab.log(process));
            }
            return Err(err);
        }
        println!("demo: apifw is ready; apifw status:");
        print!("{}", indent(&daemon.cli(&["status"])?));
        Ok(daemon)
    }

    /// `apifw ARGS --run-dir <lab>`: a CLI verb against this daemon.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.apifw);
        command.args(args).arg("--run-dir").arg(&self.run_dir);
        command
    }

    /// Runs a CLI verb and returns its output; fails when it fails.
    fn cli(&self, args: &[&str]) -> Result<String> {
        cmd::output(&mut self.command(args))
    }

    /// `apifw stats --json`, parsed.
    fn stats(&self) -> Result<traffic::Stats> {
        let json = self.cli(&["stats", "--json"])?;
        traffic::Stats::parse(&json)
            .with_context(|| format!("reading `apifw stats --json`:\n{json}"))
    }
}

/// The demo policy for the lab: protecting `interface`, with a `[daemon]` table that keeps every
/// file the daemon writes in the lab.
fn lab_policy(
    policy: &str,
    interface: &str,
    pin_dir: &Path,
    run_dir: &Path,
    work_dir: &Path,
) -> Result<String> {
    ensure!(
        !policy.lines().any(|line| line.trim() == "[daemon]"),
        "{DEMO_POLICY} must not have a [daemon] table: the demo adds one that keeps the daemon's \
         files inside the lab"
    );
    ensure!(
        !policy
            .lines()
            .any(|line| line.trim_start().starts_with("interfaces")),
        "{DEMO_POLICY} must not set `interfaces`: the demo names its lab's interface"
    );
    let quoted = |path: &Path| -> Result<String> {
        let text = path
            .to_str()
            .with_context(|| format!("{} is not UTF-8", path.display()))?;
        Ok(toml_string(text))
    };
    Ok(format!(
        "# Added by `cargo xtask demo`: the lab's interface.\ninterfaces = [{}]\n\n{policy}\n\
         # Added by `cargo xtask demo`: every file of the daemon lives in the lab.\n\
         [daemon]\npin_dir = {}\nrun_dir = {}\naudit_log = {}\nstate_file = {}\n",
        toml_string(interface),
        quoted(pin_dir)?,
        quoted(run_dir)?,
        quoted(&work_dir.join("audit.log"))?,
        quoted(&work_dir.join("apifw.state.json"))?,
    ))
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::from('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The blocklist drops the attacker; the allow entry inside it lets the partner through.
fn show_lists(lab: &Lab, daemon: &Daemon, hosts: &Hosts, claims: &mut Claims) -> Result<()> {
    println!("\ndemo: 1. block and allow lists (203.0.113.0/24 blocked, 203.0.113.7 allowed)");
    let before = daemon.stats()?;
    let partner = traffic::curl_times(lab, &hosts.partner, 3, 3)?;
    let client = traffic::curl_times(lab, &hosts.client, 3, 3)?;
    let attacker = traffic::curl_times(lab, &hosts.attacker, 2, 2)?;
    let after = daemon.stats()?;
    let blocked = after.packets("drop", "blocklist") - before.packets("drop", "blocklist");
    let allowed = after.packets("pass", "allowlist") - before.packets("pass", "allowlist");
    claims.check(
        "the partner inside the blocked network gets HTTP 200",
        traffic::all_ok(&partner),
        format!(
            "{} ({}): {}",
            PARTNER.role,
            PARTNER.addr,
            traffic::list(&partner)
        ),
    );
    claims.check(
        "a client outside the lists gets HTTP 200",
        traffic::all_ok(&client),
        format!(
            "{} ({}): {}",
            CLIENT.role,
            CLIENT.addr,
            traffic::list(&client)
        ),
    );
    claims.check(
        "the blocked attacker's requests time out (dropped in XDP)",
        attacker.iter().all(|o| *o == Outcome::Timeout),
        format!(
            "{} ({}): {}",
            ATTACKER.role,
            ATTACKER.addr,
            traffic::list(&attacker)
        ),
    );
    claims.check(
        "the counters show both lists at work",
        blocked > 0 && allowed > 0,
        format!("drop/blocklist +{blocked} packets, pass/allowlist +{allowed} packets"),
    );
    Ok(())
}

/// A flooder is rate-limited and then banned while a polite client of the same /24 keeps
/// getting HTTP 200.
fn show_rate_limit(lab: &Lab, daemon: &Daemon, hosts: &Hosts, claims: &mut Claims) -> Result<()> {
    println!(
        "\ndemo: 2. rate limit: the flooder ({}) floods port {SERVICE_PORT} for {FLOOD_SECS} s \
         with 32 connections at a time; the polite client ({}, same /24) makes 4 requests a second",
        FLOODER.addr, CLIENT.addr
    );
    let before = daemon.stats()?;
    let (polite, flood, top) = traffic::flood(
        lab,
        &hosts.client,
        &hosts.flooder,
        FLOOD_SECS,
        TOP_DURING_FLOOD,
        || daemon.cli(&["top", "--once"]),
    )?;
    let after = daemon.stats()?;
    let rule = |reason| after.rule_packets(0, reason) - before.rule_packets(0, reason);
    let (syn_limited, rate_limited) = (rule("syn_limited"), rule("rate_limited"));
    let ban_drops = after.packets("drop", "banned") - before.packets("drop", "banned");
    claims.check(
        "the polite client gets HTTP 200 on every request during the flood",
        polite.requests >= 10 && polite.ok == polite.requests,
        format!(
            "{} of {} requests answered 200{}",
            polite.ok,
            polite.requests,
            if polite.failures.is_empty() {
                String::new()
            } else {
                format!(" (failures: {})", polite.failures.join(", "))
            }
        ),
    );
    claims.check(
        "the flooder is cut off: only its burst gets through, nothing in the last second",
        flood.ok < flood.requests / 2 && flood.ok_in_last_second == 0,
        format!(
            "{} of {} flood requests answered, {} in the last second",
            flood.ok, flood.requests, flood.ok_in_last_second
        ),
    );
    claims.check(
        "the counters show the flooder limited, then banned",
        syn_limited + rate_limited > 0 && ban_drops > 0,
        format!(
            "rule api: syn_limited +{syn_limited}, rate_limited +{rate_limited} packets; \
             drop/banned +{ban_drops} packets"
        ),
    );
    println!(
        "demo: apifw top --once, {}s into the flood",
        TOP_DURING_FLOOD.as_secs()
    );
    print!("{}", indent(&top));
    claims.check(
        "`apifw top --once` names the flooder",
        top.contains(FLOODER.addr),
        format!(
            "{} {} among the top sources",
            FLOODER.addr,
            if top.contains(FLOODER.addr) {
                "is"
            } else {
                "is not"
            }
        ),
    );

    println!("demo: apifw bans");
    print!("{}", indent(&daemon.cli(&["bans"])?));
    let bans = daemon.cli(&["bans", "--json"])?;
    let banned = traffic::banned_prefixes(&bans)?;
    let flooder = format!("{}/32", FLOODER.addr);
    claims.check(
        "the flooder is banned automatically and listed by `apifw bans`",
        banned.contains(&flooder) && !banned.contains(&format!("{}/32", CLIENT.addr)),
        format!("banned: {}", banned.join(", ")),
    );
    let after_ban = traffic::curl(lab, &hosts.flooder, 2)?;
    let client = traffic::curl(lab, &hosts.client, 3)?;
    claims.check(
        "while banned the flooder gets nothing, the client still gets HTTP 200",
        after_ban == Outcome::Timeout && client == Outcome::Status(200),
        format!("flooder: {after_ban}, client: {client}"),
    );
    Ok(())
}

/// `apifw block add` and `del` take effect on live traffic, and are audited.
fn show_runtime_block(
    lab: &Lab,
    daemon: &Daemon,
    hosts: &Hosts,
    claims: &mut Claims,
) -> Result<()> {
    let target = CLIENT.addr;
    println!("\ndemo: 3. runtime changes: apifw block add {target} --comment \"demo\"");
    print!(
        "{}",
        indent(&daemon.cli(&["block", "add", target, "--comment", "demo"])?)
    );
    let blocked = traffic::curl(lab, &hosts.client, 2)?;
    println!("demo: apifw block del {target}");
    print!("{}", indent(&daemon.cli(&["block", "del", target])?));
    let unblocked = traffic::curl(lab, &hosts.client, 3)?;
    claims.check(
        "`apifw block add` drops a live client at once, `del` lets it back in",
        blocked == Outcome::Timeout && unblocked == Outcome::Status(200),
        format!("after add: {blocked}, after del: {unblocked}"),
    );
    println!("demo: apifw audit (who changed what, read from the daemon's audit log)");
    let audit = daemon.cli(&["audit"])?;
    print!("{}", indent(&audit));
    claims.check(
        "`apifw audit` records both changes",
        audit.lines().filter(|line| line.contains(target)).count() >= 2,
        format!(
            "{} audit lines name {target}",
            audit.lines().filter(|line| line.contains(target)).count()
        ),
    );
    Ok(())
}

/// A jail bans a client that keeps failing nginx's basic auth, in XDP.
fn show_jail(lab: &Lab, daemon: &Daemon, hosts: &Hosts, claims: &mut Claims) -> Result<()> {
    let url = nginx::admin_url();
    println!(
        "\ndemo: 4. jail: the guesser ({}) tries wrong passwords on {url}; the jail `nginx-auth` \
         bans after 3 failures",
        GUESSER.addr
    );
    let guesses: Vec<Outcome> = (1..=3)
        .map(|n| {
            let credentials = format!("demo:guess{n}");
            traffic::curl_url(lab, &hosts.guesser, &url, Some(&credentials), 3)
        })
        .collect::<Result<_>>()?;
    let guesser = format!("{}/32", GUESSER.addr);
    let waited = Instant::now();
    let banned = lab::wait_until(Duration::from_secs(10), "the jail's ban", || {
        Ok(traffic::banned_prefixes(&daemon.cli(&["bans", "--json"])?)?.contains(&guesser))
    })
    .is_ok();
    claims.check(
        "nginx answers wrong passwords with 401, and the jail bans the guesser in XDP",
        guesses.iter().all(|o| *o == Outcome::Status(401)) && banned,
        format!(
            "answers {}; {}",
            traffic::list(&guesses),
            if banned {
                format!(
                    "banned {:.1} s after the third failure",
                    waited.elapsed().as_secs_f64()
                )
            } else {
                "not banned within 10 s".to_owned()
            }
        ),
    );
    let right_password = Some(nginx::GOOD_CREDENTIALS);
    let guesser_now = traffic::curl_url(lab, &hosts.guesser, &url, right_password, 2)?;
    let client_now = traffic::curl_url(lab, &hosts.client, &url, right_password, 3)?;
    claims.check(
        "the banned guesser gets nothing even with the right password; the client logs in",
        guesser_now == Outcome::Timeout && client_now == Outcome::Status(200),
        format!("guesser: {guesser_now}, client: {client_now}"),
    );
    println!("demo: apifw jails");
    print!("{}", indent(&daemon.cli(&["jails"])?));
    Ok(())
}

/// A Prometheus scrape shows the drops.
fn show_metrics(lab: &Lab, hosts: &Hosts, claims: &mut Claims) -> Result<()> {
    println!("\ndemo: 5. metrics: curl http://127.0.0.1:9464/metrics (the drop counters)");
    let scrape = lab.exec(
        &hosts.api,
        &[
            "curl",
            "-s",
            "--max-time",
            "5",
            "http://127.0.0.1:9464/metrics",
        ],
    )?;
    let metrics = String::from_utf8_lossy(&scrape.stdout);
    let drops = traffic::drop_lines(&metrics);
    for line in &drops {
        println!("  {line}");
    }
    claims.check(
        "a /metrics scrape shows the blocklist and rate-limit drops",
        drops
            .iter()
            .any(|line| line.contains("reason=\"blocklist\""))
            && drops
                .iter()
                .any(|line| line.contains("reason=\"banned\"") || line.contains("_limited\"")),
        format!("{} non-zero drop series", drops.len()),
    );
    Ok(())
}

/// Indents every line by two spaces, so that command output stands apart from the demo's own.
fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}

fn describe_dir(path: &Path) -> String {
    if path.exists() {
        format!("{} still exists", path.display())
    } else {
        format!("{} is gone", path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_ifnamsiz() {
        let longest_suffix = 99_999;
        for stem in HOSTS.iter().map(|h| h.stem).chain(["api"]) {
            for side in ['d', 's'] {
                assert!(format!("{side}{stem}{longest_suffix}").len() <= 15);
            }
        }
    }

    #[test]
    fn the_lab_policy_keeps_the_daemons_files_in_the_lab() {
        let shipped =
            fs::read_to_string(workspace_root().join(DEMO_POLICY)).expect("the demo policy");
        let policy = lab_policy(
            &shipped,
            "dapi1",
            Path::new("/sys/fs/bpf/apifw-demo-1"),
            Path::new("/tmp/apifw-demo-1/run"),
            Path::new("/tmp/apifw-demo-1"),
        )
        .expect("a policy without [daemon]");
        let parsed: toml::Table = toml::from_str(&policy).expect("valid TOML");
        assert_eq!(
            parsed["interfaces"].as_array().expect("interfaces"),
            &[toml::Value::from("dapi1")]
        );
        let daemon = parsed["daemon"].as_table().expect("[daemon]");
        for key in ["pin_dir", "run_dir", "audit_log", "state_file"] {
            let path = daemon[key].as_str().expect("a path");
            assert!(
                path.contains("apifw-demo-1"),
                "{key} = {path} is outside the lab"
            );
        }
        assert!(
            lab_policy(
                "[daemon]\n",
                "dapi1",
                Path::new("/a"),
                Path::new("/b"),
                Path::new("/c")
            )
            .is_err()
        );
        assert!(
            lab_policy(
                "interfaces = [\"eth0\"]\n",
                "dapi1",
                Path::new("/a"),
                Path::new("/b"),
                Path::new("/c")
            )
            .is_err()
        );
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string(r#"/tmp/a"b\c"#), r#""/tmp/a\"b\\c""#);
    }
}
