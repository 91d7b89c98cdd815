//! The two bouncers of the fleet benchmark, each run as its own process inside a bouncer
//! namespace and stopped on drop: apifw's daemon (`apifw run`, XDP on the namespace's flood
//! veth, its ban map filled from the LAPI) and Debian's `crowdsec-firewall-bouncer` in nftables
//! mode (its own `ip crowdsec` table, an input-hook chain and a set it fills from the LAPI).
//!
//! Progress is read from each bouncer's own log, which costs the bouncer nothing: apifw logs
//! `CrowdSec decisions applied ... held=N` after each sync it applied to the kernel, the
//! firewall bouncer `N decisions added` after each batch it committed to nftables. What the log
//! says is checked afterwards in the kernel: apifw's `status` (decisions held and the fill of its
//! ban map), the firewall bouncer's set listed with `nft -j`.

use std::{
    fs::File,
    io::{Read as _, Seek as _, SeekFrom},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use firewall_common::{Action, map_names};
use firewall_userspace::control::{Client, StatsView, Status, socket_path};

use super::cpu::{Cpu, pin_process, process_cpu, rss_mib};
use crate::{
    daemon::Dirs,
    flood::lab::Lab,
    loadbench::{TempDir, apifw_binary},
};

/// The firewall bouncer's nftables names, as its configuration template has them.
pub const NFT_TABLE: &str = "crowdsec";
pub const NFT_CHAIN: &str = "crowdsec-chain";
pub const NFT_SET: &str = "crowdsec-blacklists";

/// Which bouncer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Apifw,
    Nftables,
}

impl Kind {
    /// The row's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Apifw => "apifw (XDP ban map)",
            Self::Nftables => "crowdsec-firewall-bouncer (nftables set)",
        }
    }

    /// The log line that ends the bouncer's own start, before its first request to the LAPI:
    /// apifw has loaded, attached and started serving; the firewall bouncer has made its table.
    pub fn start_marker(self) -> &'static str {
        match self {
            Self::Apifw => "apifw running",
            Self::Nftables => "nftables initiated",
        }
    }

    /// A short name, for bouncer registrations and logs.
    pub fn tag(self) -> &'static str {
        match self {
            Self::Apifw => "apifw",
            Self::Nftables => "fwbouncer",
        }
    }
}

/// A running bouncer, stopped on drop. Field order: the process stops before its directories
/// go.
pub struct Running {
    pub kind: Kind,
    child: Child,
    /// When the process was spawned.
    pub started: Instant,
    log: LogWatch,
    /// Decisions held as the log says: apifw's last `held=`, the firewall bouncer's sum of
    /// `decisions added`.
    held: u64,
    /// When the log last changed `held`, and the bouncer's CPU time then.
    last_change: Option<Reached>,
    /// When the log said the bouncer's own start was done (see [`Kind::start_marker`]), and its
    /// CPU time then.
    pub start_done: Option<Reached>,
    netns_name: String,
    dirs: Option<Dirs>,
    _dir: TempDir,
}

/// When a bouncer was seen holding what it was waited for, and its CPU time then.
#[derive(Clone, Copy, Debug)]
pub struct Reached {
    pub at: Instant,
    pub cpu: Cpu,
}

impl Running {
    /// Starts `kind` in `lab`'s target namespace, following the LAPI at `lapi_url` with `key`
    /// (poll interval 1 s).
    pub fn start(kind: Kind, lab: &Lab, lapi_url: &str, key: &str) -> anyhow::Result<Self> {
        let dir = TempDir::new(&format!("apifw-fleet-{}", kind.tag()))?;
        let net = format!("--net={}", lab.target.path().display());
        let (mut command, log, dirs) = match kind {
            Kind::Apifw => {
                let dirs = Dirs::new("fleet");
                dirs.write_policy(&apifw_policy(&lab.target_if, lapi_url, key, &dirs));
                let mut command = Command::new("nsenter");
                command
                    .arg(&net)
                    .arg(apifw_binary()?)
                    .arg("run")
                    .arg("--config")
                    .arg(&dirs.policy)
                    .env("APIFW_LOG", "info")
                    .env("NO_COLOR", "1");
                let log = dir.0.join("apifw.log");
                let file = File::create(&log)?;
                command.stderr(file);
                (command, log, Some(dirs))
            }
            Kind::Nftables => {
                let config = dir.0.join("crowdsec-firewall-bouncer.yaml");
                std::fs::write(&config, firewall_bouncer_config(&dir.0, lapi_url, key))?;
                let mut command = Command::new("nsenter");
                command
                    .arg(&net)
                    .arg("crowdsec-firewall-bouncer")
                    .arg("-c")
                    .arg(&config);
                command.stderr(File::create(dir.0.join("stderr.log"))?);
                (command, dir.0.join("crowdsec-firewall-bouncer.log"), None)
            }
        };
        command.stdin(Stdio::null()).stdout(Stdio::null());
        let started = Instant::now();
        // nsenter without --fork execs the bouncer in place: the child's pid is the bouncer's.
        let child = command
            .spawn()
            .with_context(|| format!("spawn {}", kind.tag()))?;
        Ok(Self {
            kind,
            child,
            started,
            log: LogWatch::new(log),
            held: 0,
            last_change: None,
            start_done: None,
            netns_name: lab.target.name().to_owned(),
            dirs,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn cpu(&self) -> anyhow::Result<Cpu> {
        process_cpu(self.pid())
    }

    pub fn rss_mib(&self) -> Option<f64> {
        rss_mib(self.pid())
    }

    /// Reads the log's new lines; returns the decisions held as the log says now.
    fn poll(&mut self) -> anyhow::Result<u64> {
        let before = self.held;
        for line in self.log.new_lines()? {
            if self.start_done.is_none() && line.contains(self.kind.start_marker()) {
                self.start_done = Some(Reached {
                    at: Instant::now(),
                    cpu: self.cpu()?,
                });
            }
            match self.kind {
                Kind::Apifw => {
                    if let Some(held) = apifw_held(&line) {
                        self.held = held;
                    }
                }
                Kind::Nftables => self.held += firewall_bouncer_added(&line).unwrap_or(0),
            }
        }
        if self.held != before {
            self.last_change = Some(Reached {
                at: Instant::now(),
                cpu: self.cpu()?,
            });
        }
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited with {status}: {}",
                self.kind.tag(),
                self.log_tail()
            );
        }
        Ok(self.held)
    }

    /// The last lines of the bouncer's log, for errors.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log.path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// What the kernel holds for this bouncer: apifw's decisions and ban map entries (from its
    /// status), or the entries of the firewall bouncer's set.
    pub fn held_in_kernel(&self) -> anyhow::Result<Held> {
        match self.kind {
            Kind::Apifw => {
                let status: Status = self.control()?.get("/status").context("apifw status")?;
                let decisions = status
                    .crowdsec
                    .context("apifw status has no crowdsec link")?
                    .decisions;
                let ban_map = status
                    .maps
                    .iter()
                    .find(|fill| fill.map == map_names::BANS)
                    .map(|fill| fill.entries)
                    .context("apifw status lists no ban map")?;
                Ok(Held {
                    decisions,
                    kernel: ban_map,
                })
            }
            Kind::Nftables => {
                let count = nft_set_elements(&in_netns_named(
                    &self.netns_name,
                    &["nft", "-j", "list", "set", "ip", NFT_TABLE, NFT_SET],
                )?)?;
                Ok(Held {
                    decisions: count,
                    kernel: count,
                })
            }
        }
    }

    /// Packets the bouncer has dropped: apifw's drop counters, the firewall bouncer's rule
    /// counter.
    pub fn dropped(&self) -> anyhow::Result<u64> {
        match self.kind {
            Kind::Apifw => {
                let stats: StatsView = self.control()?.get("/stats").context("apifw stats")?;
                Ok(stats
                    .snapshot
                    .counters
                    .iter()
                    .filter(|row| row.action == Action::Drop)
                    .map(|row| row.packets)
                    .sum())
            }
            Kind::Nftables => Ok(nft_counters(&in_netns_named(
                &self.netns_name,
                &["nft", "list", "chain", "ip", NFT_TABLE, NFT_CHAIN],
            )?)),
        }
    }

    /// The firewall bouncer's chain and the head of its set, as `nft` lists them.
    pub fn nft_ruleset(&self) -> anyhow::Result<String> {
        let chain = in_netns_named(
            &self.netns_name,
            &["nft", "list", "chain", "ip", NFT_TABLE, NFT_CHAIN],
        )?;
        let set = in_netns_named(
            &self.netns_name,
            &["nft", "-t", "list", "set", "ip", NFT_TABLE, NFT_SET],
        )?;
        Ok(format!("{}\n{}", chain.trim_end(), set.trim_end()))
    }

    /// Moves every thread of the bouncer to `cpu`.
    pub fn pin(&self, cpu: usize) -> anyhow::Result<()> {
        pin_process(self.pid(), cpu)
    }

    fn control(&self) -> anyhow::Result<Client> {
        let dirs = self.dirs.as_ref().context("not apifw")?;
        Ok(Client::new(socket_path(&dirs.run_dir)))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Decisions a bouncer holds, and the entries of its kernel table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub decisions: u64,
    pub kernel: u64,
}

/// How a wait for a bouncer ended.
#[derive(Clone, Debug)]
pub enum Wait {
    Reached(Reached),
    /// Settled short of the target (see [`Settle`]): when it last changed, and what it held.
    Settled(Reached, u64),
    /// The bouncer exited, or its log could not be read.
    Failed(String),
    /// Not there by the deadline; what it held by its log then.
    Pending(u64),
}

/// When a wait may end short of its target: the bouncer's log changed since the wait began,
/// then stayed unchanged for `quiet` while the bouncer used less than `busy` of a CPU (so it is
/// not still working through a batch whose log line comes at its end). The LAPI's delta answers
/// can miss decisions (deploy/crowdsec/LAB-NOTES.md): such a bouncer would otherwise be waited
/// for until the hang guard.
#[derive(Clone, Copy, Debug)]
pub struct Settle {
    pub quiet: Duration,
    pub busy: f64,
}

/// Waits until every bouncer of `running` holds `target` decisions by its log (polling the logs
/// every 10 ms), has settled short of it (`settle`), or `deadline` passes.
pub fn wait_held(
    running: &mut [&mut Running],
    target: u64,
    deadline: Instant,
    settle: Option<Settle>,
) -> anyhow::Result<Vec<Wait>> {
    let began = Instant::now();
    let mut waits: Vec<Wait> = vec![Wait::Pending(0); running.len()];
    loop {
        let now = Instant::now();
        for (bouncer, wait) in running.iter_mut().zip(waits.iter_mut()) {
            if !matches!(wait, Wait::Pending(_)) {
                continue;
            }
            *wait = match bouncer.poll() {
                // CPU first: reading it is what stops the clock for this bouncer.
                Ok(held) if held >= target => match bouncer.cpu() {
                    Ok(cpu) => Wait::Reached(Reached {
                        at: Instant::now(),
                        cpu,
                    }),
                    Err(err) => Wait::Failed(format!("{err:#}")),
                },
                Ok(held) => match (settle, bouncer.last_change) {
                    (Some(settle), Some(change))
                        if change.at >= began && now.duration_since(change.at) >= settle.quiet =>
                    {
                        match bouncer.cpu() {
                            Ok(cpu) => {
                                let idle = cpu.since(change.cpu).total()
                                    < settle.busy * now.duration_since(change.at).as_secs_f64();
                                if idle {
                                    Wait::Settled(change, held)
                                } else {
                                    Wait::Pending(held)
                                }
                            }
                            Err(err) => Wait::Failed(format!("{err:#}")),
                        }
                    }
                    _ => Wait::Pending(held),
                },
                Err(err) => Wait::Failed(format!("{err:#}")),
            };
        }
        if !waits.iter().any(|wait| matches!(wait, Wait::Pending(_))) || now > deadline {
            return Ok(waits);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// apifw's policy: the flood veth in native XDP mode, room for 256k bans, the LAPI polled every
/// second, no full resync within a round (its 10-minute default could fall into the other
/// bouncer's measurement; the firewall bouncer has none), everything it writes in the
/// benchmark's directories.
fn apifw_policy(interface: &str, lapi_url: &str, key: &str, dirs: &Dirs) -> String {
    format!(
        "interfaces = [\"{interface}\"]\nxdp_mode = \"native\"\n\n[limits]\nmax_bans = 262144\n\n\
         [crowdsec]\nlapi_url = \"{lapi_url}\"\napi_key = \"{key}\"\npoll_interval = \"1s\"\n\
         resync_interval = \"1h\"\n\n\
         [daemon]\npin_dir = \"{}\"\nrun_dir = \"{}\"\naudit_log = \"{}\"\nstate_file = \"{}\"\n",
        dirs.pin_dir.display(),
        dirs.run_dir.display(),
        dirs.run_dir.join("audit.log").display(),
        dirs.run_dir.join("state.json").display(),
    )
}

/// The firewall bouncer's configuration: Debian's template
/// (`/etc/crowdsec/bouncers/crowdsec-firewall-bouncer.yaml`) with `mode: nftables`, the LAPI and
/// key, a 1 s poll (the template has 10 s), in the foreground, logging to `dir`.
pub fn firewall_bouncer_config(dir: &std::path::Path, lapi_url: &str, key: &str) -> String {
    let dir = dir.display();
    format!(
        "mode: nftables
pid_dir: {dir}/
update_frequency: 1s
daemonize: false
log_mode: file
log_dir: {dir}/
log_level: info
log_compression: true
log_max_size: 100
log_max_backups: 3
log_max_age: 30
api_url: {lapi_url}/
api_key: {key}
insecure_skip_verify: false
disable_ipv6: false
deny_action: DROP
deny_log: false
supported_decisions_types:
  - ban
blacklists_ipv4: {NFT_SET}
blacklists_ipv6: crowdsec6-blacklists
ipset_type: nethash
iptables_chains:
  - INPUT
nftables:
  ipv4:
    enabled: true
    set-only: false
    table: {NFT_TABLE}
    chain: {NFT_CHAIN}
  ipv6:
    enabled: true
    set-only: false
    table: crowdsec6
    chain: crowdsec6-chain
pf:
  anchor_name: \"\"
prometheus:
  enabled: true
  listen_addr: 127.0.0.1
  listen_port: 60601
"
    )
}

/// `ip netns exec NAME ARGS`.
fn in_netns_named(netns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["netns", "exec", netns];
    full.extend_from_slice(args);
    crate::flood::lab::command("ip", &full)
}

/// Follows a growing log file, line by line.
struct LogWatch {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl LogWatch {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            partial: String::new(),
        }
    }

    /// The complete lines written since the last call (none while the file does not exist).
    fn new_lines(&mut self) -> anyhow::Result<Vec<String>> {
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(err).with_context(|| format!("open {}", self.path.display())),
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let mut lines: Vec<String> = self.partial.split('\n').map(str::to_owned).collect();
        // The last piece has no newline yet (or is empty).
        self.partial = lines.pop().unwrap_or_default();
        Ok(lines)
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `held=N` of apifw's `CrowdSec decisions applied` line.
fn apifw_held(line: &str) -> Option<u64> {
    let line = strip_ansi(line);
    if !line.contains("CrowdSec decisions applied") {
        return None;
    }
    let rest = &line[line.find("held=")? + "held=".len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// `N` of the firewall bouncer's `msg="N decisions added"` line.
fn firewall_bouncer_added(line: &str) -> Option<u64> {
    let message = &line[line.find("msg=\"")? + "msg=\"".len()..];
    message
        .strip_suffix('"')
        .unwrap_or(message)
        .strip_suffix(" decisions added")?
        .trim()
        .parse()
        .ok()
}

/// Elements of the set in `nft -j list set` output.
fn nft_set_elements(json: &str) -> anyhow::Result<u64> {
    let listing: serde_json::Value = serde_json::from_str(json).context("nft -j list set")?;
    let set = listing["nftables"]
        .as_array()
        .and_then(|items| items.iter().find_map(|item| item.get("set")))
        .context("no set in nft's listing")?;
    Ok(set["elem"].as_array().map_or(0, Vec::len) as u64)
}

/// Sum of the `counter packets N` of an nftables listing. (A copy of the flood benchmark's
/// private helper in `flood/peers.rs`, which belongs to another section.)
fn nft_counters(listing: &str) -> u64 {
    listing
        .split("counter packets ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Checks that the firewall bouncer and `nft` are installed.
pub fn firewall_bouncer_installed() -> anyhow::Result<()> {
    ensure!(
        which("crowdsec-firewall-bouncer"),
        "crowdsec-firewall-bouncer is not installed (`cargo xtask bench` installs it)"
    );
    ensure!(which("nft"), "nft is not installed");
    Ok(())
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_read_from_both_logs() {
        let apifw = "2026-12-05T08:00:01.5Z  INFO firewall_userspace::engine::crowdsec: CrowdSec \
                     decisions applied full=true added=100000 updated=0 removed=0 held=100000";
        assert_eq!(apifw_held(apifw), Some(100_000));
        let coloured = "\u{1b}[32m INFO\u{1b}[0m CrowdSec decisions applied \u{1b}[3mheld\u{1b}[0m\u{1b}[2m=\u{1b}[0m42";
        assert_eq!(apifw_held(coloured), Some(42));
        assert_eq!(apifw_held("INFO other held=5"), None);
        let bouncer = "time=\"05-12-2026 08:12:58\" level=info msg=\"100000 decisions added\"";
        assert_eq!(firewall_bouncer_added(bouncer), Some(100_000));
        assert_eq!(
            firewall_bouncer_added("level=info msg=\"3 decisions deleted\""),
            None
        );
    }

    #[test]
    fn log_lines_are_read_once_and_whole() {
        let dir = TempDir::new("apifw-fleet-logwatch").unwrap();
        let path = dir.0.join("log");
        let mut watch = LogWatch::new(path.clone());
        assert!(watch.new_lines().unwrap().is_empty());
        std::fs::write(&path, "one\ntw").unwrap();
        assert_eq!(watch.new_lines().unwrap(), vec!["one".to_owned()]);
        std::fs::write(&path, "one\ntwo\nthree\n").unwrap();
        assert_eq!(
            watch.new_lines().unwrap(),
            vec!["two".to_owned(), "three".to_owned()]
        );
    }

    #[test]
    fn nft_listings_are_counted() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"set": {"family": "ip", "name": "crowdsec-blacklists", "table": "crowdsec", "type": "ipv4_addr", "flags": ["timeout"], "elem": [{"elem": {"val": "198.18.0.0", "timeout": 86389, "expires": 86099}}, {"elem": {"val": "198.18.0.1", "timeout": 86389, "expires": 86224}}]}}]}"#;
        assert_eq!(nft_set_elements(json).unwrap(), 2);
        let empty = r#"{"nftables": [{"set": {"name": "s"}}]}"#;
        assert_eq!(nft_set_elements(empty).unwrap(), 0);
        let chain = "table ip crowdsec {\n\tchain crowdsec-chain {\n\t\ttype filter hook input priority filter; policy accept;\n\t\tip saddr @crowdsec-blacklists counter packets 1234 bytes 74040 drop\n\t}\n}\n";
        assert_eq!(nft_counters(chain), 1234);
    }
}
