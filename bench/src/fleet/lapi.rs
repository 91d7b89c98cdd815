//! The fleet benchmark's decision source: one private CrowdSec LAPI (Debian's `crowdsec`, LAPI
//! only, [`crate::lapi::Lapi`]) in a namespace of its own, the decision lists imported into it
//! with `cscli decisions import`, and the links that join it to each bouncer's namespace.
//!
//! The decisions are bans of single IPv4 addresses from 198.18.0.0/15 (RFC 2544's benchmarking
//! range, 131 072 addresses): the blocklist takes the first `count` of them in order, a delta the
//! next ones. A delta is imported under a reason (CrowdSec's scenario) of its own and removed
//! again with `cscli alerts delete --scenario`, which deletes the alert and its decisions from
//! the database: a `startup=true` answer of the LAPI then no longer lists them, not even as
//! deleted, so every round's bouncers start from the same answer.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::Path,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};

use super::cpu::{Cpu, children_cpu, process_cpu};
use crate::{
    flood::lab::command,
    lapi::{Lapi, PORT},
    netns::Netns,
};

/// The range the decisions' addresses come from, and its size.
pub const DECISION_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
pub const DECISION_NET_SIZE: u32 = 1 << 17;

/// The tag of the LAPI's directory (`$TMPDIR/apifw-lapi-TAG-PID`).
const TAG: &str = "fleet-bench";

/// The LAPI and its namespace; stopped and removed on drop (field order: the LAPI stops before
/// its namespace goes).
pub struct Source {
    lapi: Lapi,
    /// Pid of the `crowdsec` process, for its CPU time.
    pid: Option<u32>,
    pub netns: Netns,
}

/// What one `cscli decisions import` cost.
#[derive(Clone, Copy, Debug)]
pub struct Import {
    /// Wall time of the command.
    pub seconds: f64,
    /// CPU time of the LAPI process over the command.
    pub lapi: Cpu,
    /// CPU time of `cscli` itself.
    pub cscli: Cpu,
}

impl Source {
    /// Starts the LAPI in a fresh namespace (returns once it answers).
    pub fn start() -> anyhow::Result<Self> {
        let netns = Netns::new("fleetL");
        // The test library's LAPI panics when it cannot start (its callers are tests).
        let lapi =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Lapi::start(&netns, TAG)))
                .map_err(|panic| {
                    let text = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default();
                    anyhow::anyhow!("cannot start the CrowdSec LAPI: {text}")
                })?;
        let pid = lapi_pid();
        Ok(Self { lapi, pid, netns })
    }

    /// `cscli ARGS` against the LAPI; its stdout, or an error with what it printed.
    pub fn cscli(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.lapi.cscli(args);
        if !output.status.success() {
            bail!(
                "cscli {} failed ({}): {}{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Registers a bouncer and returns its API key.
    pub fn add_bouncer(&self, name: &str) -> anyhow::Result<String> {
        let key = self.cscli(&["bouncers", "add", name, "-o", "raw"])?;
        let key = key.trim().to_owned();
        ensure!(!key.is_empty(), "cscli bouncers add {name} printed no key");
        Ok(key)
    }

    /// CPU time of the LAPI process so far (zero when its pid is unknown).
    pub fn cpu(&self) -> Cpu {
        self.pid
            .and_then(|pid| process_cpu(pid).ok())
            .unwrap_or_default()
    }

    /// `cscli decisions import -i FILE`, timed.
    pub fn import(&self, file: &Path) -> anyhow::Result<Import> {
        let path = file.to_str().context("decision file path is not UTF-8")?;
        let (lapi_before, cscli_before) = (self.cpu(), children_cpu());
        let started = Instant::now();
        self.cscli(&["decisions", "import", "-i", path])?;
        let seconds = started.elapsed().as_secs_f64();
        Ok(Import {
            seconds,
            lapi: self.cpu().since(lapi_before),
            cscli: children_cpu().since(cscli_before),
        })
    }

    /// Deletes the alerts of `reason` (the scenario `cscli decisions import --reason` gives them)
    /// and their decisions from the database.
    pub fn remove(&self, reason: &str) -> anyhow::Result<()> {
        self.cscli(&["alerts", "delete", "--scenario", reason])?;
        Ok(())
    }

    /// The LAPI's `startup=true` answer for `key`: its size in bytes and the decisions it lists
    /// as new.
    pub fn startup_answer(&self, key: &str) -> anyhow::Result<(usize, usize)> {
        let net = format!("--net={}", self.netns.path().display());
        let header = format!("X-Api-Key: {key}");
        let url = format!("http://127.0.0.1:{PORT}/v1/decisions/stream?startup=true");
        let output = Command::new("nsenter")
            .args([&net, "curl", "-sf", "--max-time", "60", "-H", &header, &url])
            .output()
            .context("run curl")?;
        ensure!(
            output.status.success(),
            "curl of the LAPI's stream failed ({})",
            output.status
        );
        let answer: serde_json::Value =
            serde_json::from_slice(&output.stdout).context("the LAPI's stream is not JSON")?;
        let new = answer["new"].as_array().map_or(0, Vec::len);
        Ok((output.stdout.len(), new))
    }
}

/// The pid of the LAPI this process started: the `crowdsec` whose command line names its
/// configuration.
fn lapi_pid() -> Option<u32> {
    let config = std::env::temp_dir()
        .join(format!("apifw-lapi-{TAG}-{}", std::process::id()))
        .join("config.yaml");
    let config = config.to_str()?.to_owned();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_crowdsec = args.first().is_some_and(|arg0| arg0.ends_with(b"crowdsec"));
            (is_crowdsec && args.contains(&config.as_bytes())).then_some(pid)
        })
}

/// A `cscli decisions import` CSV: one 24-hour ban per address, for the `count` addresses of
/// [`DECISION_NET`] from the `first`th on, under `reason`.
pub fn decisions_csv(first: u32, count: u32, reason: &str) -> anyhow::Result<String> {
    ensure!(
        first
            .checked_add(count)
            .is_some_and(|end| end <= DECISION_NET_SIZE),
        "{first}+{count} addresses do not fit in {DECISION_NET}/15"
    );
    let base = u32::from(DECISION_NET);
    let mut csv = String::with_capacity(40 * count as usize + 40);
    csv.push_str("duration,scope,type,value,reason\n");
    for n in first..first + count {
        writeln!(csv, "24h,ip,ban,{},{reason}", Ipv4Addr::from(base + n))?;
    }
    Ok(csv)
}

/// Link numbers handed out so far: each link gets interface names of its own.
static LINKS: AtomicU32 = AtomicU32::new(0);

/// A veth pair from the LAPI's namespace into a bouncer's, deleted on drop (deleting one end
/// deletes both).
pub struct Link {
    lapi_netns: String,
    lapi_if: String,
    /// The LAPI's URL as the bouncer's namespace reaches it.
    pub url: String,
}

impl Link {
    /// Joins `source`'s namespace to `netns` with the `index`th /30 of 198.51.100.0/24.
    pub fn new(source: &Source, netns: &Netns, index: u8) -> anyhow::Result<Self> {
        ensure!(index < 64, "only 64 /30s in 198.51.100.0/24");
        let n = LINKS.fetch_add(1, Ordering::Relaxed) % 1000;
        let pid = std::process::id() % 1000;
        let lapi_if = format!("fll{pid:03}{n:03}");
        let host_if = format!("flh{pid:03}{n:03}");
        let lapi_addr = Ipv4Addr::new(198, 51, 100, 4 * index + 1);
        let host_addr = Ipv4Addr::new(198, 51, 100, 4 * index + 2);
        let lapi_ns = source.netns.name();
        command(
            "ip",
            &[
                "-n",
                lapi_ns,
                "link",
                "add",
                &lapi_if,
                "type",
                "veth",
                "peer",
                "name",
                &host_if,
                "netns",
                netns.name(),
            ],
        )?;
        let link = Self {
            lapi_netns: lapi_ns.to_owned(),
            lapi_if,
            url: Lapi::url_at(lapi_addr),
        };
        command(
            "ip",
            &[
                "-n",
                lapi_ns,
                "addr",
                "add",
                &format!("{lapi_addr}/30"),
                "dev",
                &link.lapi_if,
            ],
        )?;
        command("ip", &["-n", lapi_ns, "link", "set", &link.lapi_if, "up"])?;
        command(
            "ip",
            &[
                "-n",
                netns.name(),
                "addr",
                "add",
                &format!("{host_addr}/30"),
                "dev",
                &host_if,
            ],
        )?;
        command("ip", &["-n", netns.name(), "link", "set", &host_if, "up"])?;
        Ok(link)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["-n", &self.lapi_netns, "link", "del", &self.lapi_if])
            .output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_lists_take_consecutive_addresses_of_the_range() {
        let csv = decisions_csv(255, 3, "r").unwrap();
        assert_eq!(
            csv,
            "duration,scope,type,value,reason\n24h,ip,ban,198.18.0.255,r\n\
             24h,ip,ban,198.18.1.0,r\n24h,ip,ban,198.18.1.1,r\n"
        );
        let last = decisions_csv(DECISION_NET_SIZE - 1, 1, "r").unwrap();
        assert!(last.ends_with("198.19.255.255,r\n"), "{last}");
        assert!(decisions_csv(DECISION_NET_SIZE - 1, 2, "r").is_err());
    }
}
