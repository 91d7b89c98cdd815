//! What the engine is given: command-line overrides, the policy's feeds read from disk, and
//! the addresses of control requests, parsed and validated.

use super::*;

/// Command-line settings that take precedence over the policy file, on start and on reload.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// Interfaces instead of the policy's.
    pub interfaces: Vec<String>,
    /// Attach mode instead of the policy's.
    pub xdp_mode: Option<XdpModeSetting>,
    /// Pin root.
    pub pin_dir: Option<PathBuf>,
    /// Run directory.
    pub run_dir: Option<PathBuf>,
    /// Kernel-side debug logging.
    pub ebpf_log: Option<crate::policy::EbpfLog>,
}

impl Overrides {
    /// Applies these settings to `policy`.
    pub fn apply(&self, policy: &mut Policy) {
        if !self.interfaces.is_empty() {
            policy.interfaces = self.interfaces.clone();
        }
        if let Some(mode) = self.xdp_mode {
            policy.xdp_mode = mode;
        }
        if let Some(dir) = &self.pin_dir {
            policy.daemon.pin_dir = dir.clone();
        }
        if let Some(dir) = &self.run_dir {
            policy.daemon.run_dir = dir.clone();
        }
        if let Some(level) = self.ebpf_log {
            policy.ebpf_log = level;
        }
    }
}

/// One feed's prefixes.
#[derive(Clone, Debug)]
pub struct LoadedFeed {
    /// `feed:<path>`.
    pub origin: String,
    /// Its prefixes.
    pub prefixes: Vec<IpNet>,
}

/// The allow and block feeds of a policy, read.
#[derive(Clone, Debug, Default)]
pub struct Feeds {
    /// Allow feeds.
    pub allow: Vec<LoadedFeed>,
    /// Block feeds.
    pub block: Vec<LoadedFeed>,
}

/// Reads the policy's feeds. Bad lines reject unless the feed says `on_bad_line = "skip"`;
/// skipped lines are logged.
pub fn read_feeds(policy: &Policy) -> Result<Feeds, String> {
    let read = |feeds: &[Feed]| -> Result<Vec<LoadedFeed>, String> {
        let mut loaded = Vec::new();
        for feed in feeds {
            let parsed = feeds::read(&feed.path, feed.format).map_err(|err| {
                let cause = std::error::Error::source(&err)
                    .map(|source| format!(": {source}"))
                    .unwrap_or_default();
                format!("{err}{cause}")
            })?;
            if !parsed.bad_lines.is_empty() {
                let lines: Vec<String> = parsed
                    .bad_lines
                    .iter()
                    .map(|bad| bad.describe(&feed.path))
                    .collect();
                match feed.on_bad_line {
                    OnBadLine::Reject => {
                        let shown = lines.iter().take(20).cloned().collect::<Vec<_>>();
                        let more = lines.len().saturating_sub(shown.len());
                        return Err(format!(
                            "feed {} has {} bad line(s) (set `on_bad_line = \"skip\"` on the feed \
                             to skip them):\n{}{}",
                            feed.path.display(),
                            lines.len(),
                            shown.join("\n"),
                            if more > 0 {
                                format!("\n… and {more} more")
                            } else {
                                String::new()
                            }
                        ));
                    }
                    OnBadLine::Skip => {
                        for line in &lines {
                            warn!("skipped bad feed line {line}");
                        }
                    }
                }
            }
            loaded.push(LoadedFeed {
                origin: format!("feed:{}", feed.path.display()),
                prefixes: parsed.prefixes,
            });
        }
        Ok(loaded)
    };
    Ok(Feeds {
        allow: read(&policy.allow_feeds)?,
        block: read(&policy.block_feeds)?,
    })
}

/// The ban map key of a host or subnet.
pub fn ban_key(net: &IpNet) -> BanKey {
    let net = net.trunc();
    let mut addr = [0u8; 16];
    let family = match net {
        IpNet::V4(v4) => {
            addr[..4].copy_from_slice(&v4.network().octets());
            4
        }
        IpNet::V6(v6) => {
            addr = v6.network().octets();
            6
        }
    };
    BanKey {
        family,
        prefix_len: net.prefix_len(),
        _pad: 0,
        addr,
    }
}

pub(super) fn is_host(net: &IpNet) -> bool {
    net.prefix_len() == net.max_prefix_len()
}

/// Parses CIDRs or addresses given to the control API; all must be valid.
pub fn parse_targets(targets: &[String]) -> Result<Vec<IpNet>, EngineError> {
    if targets.is_empty() {
        return Err(EngineError::bad_request("no addresses or CIDRs given"));
    }
    let mut nets = Vec::new();
    let mut bad = Vec::new();
    for target in targets {
        let text = target.trim();
        match text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        {
            Ok(net) => nets.push(net.trunc()),
            Err(_) => bad.push(format!("`{target}`")),
        }
    }
    if !bad.is_empty() {
        return Err(EngineError::bad_request(format!(
            "not an IP address or CIDR: {} (nothing was changed)",
            bad.join(", ")
        )));
    }
    Ok(nets)
}

/// TTL and comment of runtime entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryMeta {
    /// Seconds until the entries lapse (none: never).
    pub ttl_secs: Option<u64>,
    /// Free text.
    pub comment: Option<String>,
}
