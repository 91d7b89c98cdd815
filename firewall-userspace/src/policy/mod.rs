//! The policy file: TOML, parsed with serde (`deny_unknown_fields`) and validated into a
//! [`Policy`]. Every error and warning names the file, line and column and the offending value.
//!
//! This file is over 600 lines (its tests are in `tests.rs`): the raw TOML types and their
//! validation into `Policy` are one pass with one error list, so that every problem of a file is
//! reported at once with its location; the jail and feed settings are already their own files.

pub mod cookies;
pub mod crowdsec;
pub mod feeds;
pub mod jails;

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    str::FromStr as _,
};

use firewall_common::{
    Action,
    model::{ModelPolicy, ModelRule},
    packet::{IPPROTO_TCP, IPPROTO_UDP},
    ratelimit::Bucket,
    rules::{ANY_PORT, ANY_PROTOCOL, MAX_RULES, RULE_BAN, RULE_DRY_RUN, RuleConfig, RuleKey},
    syncookie::{RULE_SYN_COOKIES_ALWAYS, RULE_SYN_COOKIES_AUTO},
};
use ipnet::IpNet;
use serde::Deserialize;
use serde_spanned::Spanned;

use crate::paths;

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeSetting {
    /// Native (driver) mode, falling back to generic (skb) mode when the driver lacks XDP.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode only.
    Skb,
}

/// Log line format of the daemon.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Capacity of the kernel maps, and so their kernel memory (`dataplane::memory`; `apifw check`
/// prints it). The defaults fit a small host (about 22 MiB plus 0.6 MiB per CPU for the shipped
/// example policy): the prefix and ban maps cost 16 bytes per entry of capacity and grow with the
/// entries held, the tracking maps (LRU) cost their full size from the start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// IPv4 prefixes longer than /16 (shorter ones cost no map entries).
    pub max_v4_prefixes: u32,
    /// IPv6 prefixes of any length.
    pub max_v6_prefixes: u32,
    /// (rule, source) pairs whose buckets are tracked; least recently used ones are evicted.
    pub max_tracked_sources: u32,
    /// (rule, subnet) pairs whose buckets are tracked; least recently used ones are evicted.
    pub max_tracked_subnets: u32,
    /// Active bans (hosts and subnets). Bans are never evicted; when the map is full, a source
    /// that should be banned is only rate-limited.
    pub max_bans: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_v4_prefixes: 1 << 17,
            max_v6_prefixes: 1 << 15,
            max_tracked_sources: 1 << 16,
            max_tracked_subnets: 1 << 14,
            max_bans: 1 << 16,
        }
    }
}

/// Protocol a rule takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleProtocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// Every IP protocol (with `ports`: TCP and UDP).
    Any,
}

/// When a rule's TCP ports answer SYNs with cookies in XDP (`firewall_common::syncookie`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SynCookies {
    /// When this CPU's SYN-rate detector of the port says the port is flooded, and the kernel
    /// would send cookies itself (the listener's SYN queue is full, or
    /// `net.ipv4.tcp_syncookies = 2`).
    #[default]
    Auto,
    /// Every SYN to the port takes the cookie path (still only answered with a cookie when the
    /// kernel would send one).
    Always,
    /// Never: SYNs take the rule's buckets and go to the kernel.
    Off,
}

impl SynCookies {
    /// The policy's spelling.
    pub const fn name(self) -> &'static str {
        match self {
            SynCookies::Auto => "auto",
            SynCookies::Always => "always",
            SynCookies::Off => "off",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSourceLimit {
    packets_per_second: Option<u64>,
    burst_packets: Option<u64>,
    bytes_per_second: Option<u64>,
    burst_bytes: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubnetLimit {
    packets_per_second: Option<u64>,
    burst_packets: Option<u64>,
    bytes_per_second: Option<u64>,
    burst_bytes: Option<u64>,
    #[serde(default = "default_subnet_v4")]
    prefix_v4: u8,
    #[serde(default = "default_subnet_v6")]
    prefix_v6: u8,
}

fn default_subnet_v4() -> u8 {
    24
}

fn default_subnet_v6() -> u8 {
    64
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSynLimit {
    per_second: u64,
    burst: Option<u64>,
}

/// What a rule does with a source that exceeds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExceed {
    /// Drop the packets over the limit.
    #[default]
    Drop,
    /// Drop them, and ban a source that keeps exceeding for `ban_after`.
    Ban,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    protocol: RuleProtocol,
    #[serde(default)]
    ports: Vec<u16>,
    #[serde(default)]
    dry_run: bool,
    per_source: Option<RawSourceLimit>,
    per_subnet: Option<RawSubnetLimit>,
    syn_per_source: Option<RawSynLimit>,
    syn_cookies: Option<SynCookies>,
    #[serde(default)]
    on_exceed: OnExceed,
    ban_after: Option<String>,
    ban_ttl: Option<String>,
    escalate_after: Option<u32>,
    subnet_ban_ttl: Option<String>,
}

/// A validated rate-limit rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Unique name, used in logs and statistics.
    pub name: String,
    /// IP protocol number, `None` for any.
    pub protocol: Option<u8>,
    /// Destination ports; empty for any.
    pub ports: Vec<u16>,
    /// The kernel's view: buckets, subnet lengths, dry-run flag.
    pub config: RuleConfig,
    /// SYN cookies on the rule's TCP ports (`Off` for a UDP rule).
    pub syn_cookies: SynCookies,
}

impl Rule {
    /// The (protocol, port) keys this rule takes in the kernel's match table.
    pub fn keys(&self) -> Vec<RuleKey> {
        let protocols: Vec<u8> = match (self.protocol, self.ports.is_empty()) {
            (Some(protocol), _) => vec![protocol],
            (None, true) => vec![ANY_PROTOCOL],
            (None, false) => vec![IPPROTO_TCP, IPPROTO_UDP],
        };
        let ports: Vec<u16> = if self.ports.is_empty() {
            vec![ANY_PORT]
        } else {
            self.ports.clone()
        };
        protocols
            .iter()
            .flat_map(|protocol| ports.iter().map(|port| RuleKey::new(*protocol, *port)))
            .collect()
    }
}

/// A bucket from a rate and an optional burst (default: one second's worth).
fn bucket(rate: Option<u64>, burst: Option<u64>) -> Bucket {
    match rate {
        Some(rate) => Bucket::new(rate, burst.unwrap_or(rate)),
        None => Bucket::UNLIMITED,
    }
}

/// The Prometheus endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Address of the `/metrics` HTTP endpoint; `"off"` disables it. Loopback by default, so
    /// that the counters are not served on a public interface unless configured.
    pub listen: String,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

impl MetricsSettings {
    /// The address to listen on, or `None` when disabled.
    pub fn address(&self) -> Result<Option<std::net::SocketAddr>, String> {
        if self.listen == "off" || self.listen.is_empty() {
            return Ok(None);
        }
        self.listen.parse().map(Some).map_err(|err| {
            format!(
                "metrics.listen `{}` is not an address:port or \"off\": {err}",
                self.listen
            )
        })
    }
}

/// Drop events and the offender view built from them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventSettings {
    /// Events (dropped packets reported to the daemon) per second, enforced in the kernel over
    /// all CPUs; the excess is only counted. 0 turns events off.
    pub max_per_second: u32,
    /// Events allowed at once above the rate.
    pub burst: u32,
    /// Log every event received (structured, at info level).
    pub log: bool,
    /// Offending sources and subnets kept for `apifw top`.
    pub top: u32,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            max_per_second: 100,
            burst: 200,
            log: true,
            top: 20,
        }
    }
}

/// Kernel-side debug logging.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EbpfLog {
    /// Nothing (the program only tests one flag).
    #[default]
    Off,
    /// A line per decision through aya-log (for debugging; costly under load).
    Debug,
}

/// Where the daemon keeps its runtime state.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonSettings {
    /// Root of the pinned maps and links on bpffs.
    pub pin_dir: PathBuf,
    /// Directory of the lock file.
    pub run_dir: PathBuf,
    /// Log format.
    pub log_format: LogFormat,
    /// Group whose members may use the control socket besides root (none: root only).
    pub control_group: Option<String>,
    /// The audit log (one JSON object per change).
    pub audit_log: PathBuf,
    /// The runtime state file (default: next to the policy, `<policy stem>.state.json`).
    pub state_file: Option<PathBuf>,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        Self {
            pin_dir: PathBuf::from(paths::DEFAULT_PIN_DIR),
            run_dir: PathBuf::from(paths::DEFAULT_RUN_DIR),
            log_format: LogFormat::default(),
            control_group: None,
            audit_log: PathBuf::from(paths::DEFAULT_AUDIT_LOG),
            state_file: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    interfaces: Vec<Spanned<String>>,
    #[serde(default)]
    xdp_mode: XdpModeSetting,
    #[serde(default = "default_malformed")]
    malformed: Action,
    #[serde(default)]
    allow: RawList,
    #[serde(default)]
    block: RawList,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    daemon: DaemonSettings,
    #[serde(default)]
    metrics: MetricsSettings,
    #[serde(default)]
    events: EventSettings,
    #[serde(default)]
    ebpf_log: EbpfLog,
    #[serde(default)]
    dry_run: bool,
    #[serde(default, rename = "rule")]
    rules: Vec<Spanned<RawRule>>,
    #[serde(default, rename = "jail")]
    jails: Vec<Spanned<jails::RawJail>>,
    crowdsec: Option<Spanned<crowdsec::RawCrowdsec>>,
}

fn default_malformed() -> Action {
    Action::Drop
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawList {
    #[serde(default)]
    cidrs: Vec<Spanned<String>>,
    #[serde(default)]
    feeds: Vec<Spanned<Feed>>,
}

/// What to do with a line of a feed that is not an address or CIDR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBadLine {
    /// Refuse the policy (and so the start or reload), naming every bad line.
    #[default]
    Reject,
    /// Log the bad lines and use the rest.
    Skip,
}

/// A list file (blocklist feed) the policy includes; re-read on every reload.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feed {
    /// The file; relative paths are relative to the policy file's directory.
    pub path: PathBuf,
    /// Its format.
    #[serde(default)]
    pub format: feeds::FeedFormat,
    /// Bad lines reject the policy (default) or are skipped.
    #[serde(default)]
    pub on_bad_line: OnBadLine,
}

/// A validated policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Interfaces to protect.
    pub interfaces: Vec<String>,
    /// Attach mode.
    pub xdp_mode: XdpModeSetting,
    /// Action for malformed IP packets.
    pub malformed: Action,
    /// Allowlisted prefixes (normalised: host bits cleared).
    pub allow: Vec<IpNet>,
    /// Blocklisted prefixes (normalised: host bits cleared).
    pub block: Vec<IpNet>,
    /// Map capacities.
    pub limits: Limits,
    /// Runtime locations and logging.
    pub daemon: DaemonSettings,
    /// The Prometheus endpoint.
    pub metrics: MetricsSettings,
    /// Drop events.
    pub events: EventSettings,
    /// Kernel-side debug logging.
    pub ebpf_log: EbpfLog,
    /// Every rule only counts what it would drop.
    pub dry_run: bool,
    /// Rate-limit rules, in file order (the index is the kernel's rule number).
    pub rules: Vec<Rule>,
    /// Feeds added to the allowlist (paths resolved against the policy's directory).
    pub allow_feeds: Vec<Feed>,
    /// Feeds added to the blocklist (paths resolved against the policy's directory).
    pub block_feeds: Vec<Feed>,
    /// Access-log jails, in file order (log paths resolved against the policy's directory).
    pub jails: Vec<jails::JailConfig>,
    /// The CrowdSec Local API whose decisions are enforced, if any.
    pub crowdsec: Option<crowdsec::CrowdsecSettings>,
}

impl Policy {
    /// The reference model of this policy.
    pub fn model(&self) -> ModelPolicy {
        ModelPolicy {
            allow: self.allow.clone(),
            block: self.block.clone(),
            malformed: self.malformed,
            rules: self
                .rules
                .iter()
                .map(|rule| ModelRule {
                    protocol: rule.protocol,
                    ports: rule.ports.clone(),
                    config: rule.config,
                })
                .collect(),
            dry_run: self.dry_run,
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            xdp_mode: XdpModeSetting::default(),
            malformed: default_malformed(),
            allow: Vec::new(),
            block: Vec::new(),
            limits: Limits::default(),
            daemon: DaemonSettings::default(),
            metrics: MetricsSettings::default(),
            events: EventSettings::default(),
            ebpf_log: EbpfLog::default(),
            dry_run: false,
            rules: Vec::new(),
            allow_feeds: Vec::new(),
            block_feeds: Vec::new(),
            jails: Vec::new(),
            crowdsec: None,
        }
    }
}

/// A message tied to a place in the policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The policy file.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            path,
            line,
            column,
            message,
        } = self;
        write!(f, "{}:{line}:{column}: {message}", path.display())
    }
}

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy {}", path.display())]
    Read {
        /// The policy file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file has errors; each names its place.
    #[error("{}", Errors(.0))]
    Invalid(Vec<Diagnostic>),
}

struct Errors<'a>(&'a [Diagnostic]);

impl fmt::Display for Errors<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

/// A policy with the warnings found while validating it.
#[derive(Debug)]
pub struct Loaded {
    /// The policy.
    pub policy: Policy,
    /// Suspicious but valid entries (duplicates, overlaps, host bits set).
    pub warnings: Vec<Diagnostic>,
    /// Where each interface name stands in the file, for later checks.
    interface_spans: Vec<(String, Diagnostic)>,
}

/// Turns byte offsets into line and column numbers.
pub(crate) struct Locator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    pub(crate) fn at(&self, offset: usize, message: String) -> Diagnostic {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.chars().rev().take_while(|c| *c != '\n').count() + 1;
        Diagnostic {
            path: self.path.to_owned(),
            line,
            column,
            message,
        }
    }
}

impl Loaded {
    /// Reads and validates the policy file at `path`.
    pub fn from_file(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_str(path, &text)
    }

    /// Validates policy `text`; `path` is only used in messages.
    pub fn from_str(path: &Path, text: &str) -> Result<Self, PolicyError> {
        let locator = Locator { path, text };
        let raw: RawPolicy = toml::from_str(text).map_err(|err| {
            let offset = err.span().map_or(0, |span| span.start);
            PolicyError::Invalid(vec![locator.at(offset, err.message().trim().to_owned())])
        })?;

        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let allow = parse_list(
            &locator,
            "allow",
            &raw.allow.cidrs,
            &mut errors,
            &mut warnings,
        );
        let block = parse_list(
            &locator,
            "block",
            &raw.block.cidrs,
            &mut errors,
            &mut warnings,
        );

        let mut interface_spans = Vec::new();
        let mut seen = BTreeSet::new();
        for name in &raw.interfaces {
            let diagnostic = |message| locator.at(name.span().start, message);
            let value = name.get_ref();
            if value.is_empty() || value.len() >= libc::IFNAMSIZ || value.contains(['/', ' ']) {
                errors.push(diagnostic(format!("invalid interface name `{value}`")));
            } else if !seen.insert(value.clone()) {
                warnings.push(diagnostic(format!("interface `{value}` is listed twice")));
            } else {
                interface_spans.push((value.clone(), diagnostic(String::new())));
            }
        }
        let rules = parse_rules(&locator, &raw.rules, &mut errors);
        let jails = jails::parse_jails(&locator, path, &raw.jails, &mut errors);
        let crowdsec = crowdsec::parse_crowdsec(&locator, path, raw.crowdsec.as_ref(), &mut errors);
        for (name, value) in [
            ("max_v4_prefixes", raw.limits.max_v4_prefixes),
            ("max_v6_prefixes", raw.limits.max_v6_prefixes),
            ("max_tracked_sources", raw.limits.max_tracked_sources),
            ("max_tracked_subnets", raw.limits.max_tracked_subnets),
            ("max_bans", raw.limits.max_bans),
        ] {
            if value == 0 {
                errors.push(locator.at(0, format!("limits.{name} must be at least 1")));
            }
        }
        if let Err(message) = raw.metrics.address() {
            errors.push(locator.at(0, message));
        }
        if !errors.is_empty() {
            return Err(PolicyError::Invalid(errors));
        }
        warnings.extend(overlap_warnings(&locator, &allow, &block));
        if let Some(section) = &raw.crowdsec
            && raw.limits.max_bans < crowdsec::COMMUNITY_BLOCKLIST_BANS
        {
            warnings.push(locator.at(
                section.span().start,
                format!(
                    "crowdsec: limits.max_bans = {} is smaller than a community blocklist (about \
                     100,000 decisions); a sync that does not fit the ban map is refused whole, \
                     so raise limits.max_bans (e.g. 262144) if this LAPI serves one",
                    raw.limits.max_bans
                ),
            ));
        }

        Ok(Self {
            policy: Policy {
                interfaces: interface_spans
                    .iter()
                    .map(|(name, _)| name.clone())
                    .collect(),
                xdp_mode: raw.xdp_mode,
                malformed: raw.malformed,
                allow: allow.into_iter().map(|(net, _)| net).collect(),
                block: block.into_iter().map(|(net, _)| net).collect(),
                limits: raw.limits,
                daemon: raw.daemon,
                metrics: raw.metrics,
                events: raw.events,
                ebpf_log: raw.ebpf_log,
                dry_run: raw.dry_run,
                rules,
                allow_feeds: resolve_feeds(path, &raw.allow.feeds),
                block_feeds: resolve_feeds(path, &raw.block.feeds),
                jails,
                crowdsec,
            },
            warnings,
            interface_spans,
        })
    }

    /// Warnings about this host for the policy's SYN cookies (see [`cookies::host_warnings`]).
    pub fn host_warnings(&self) -> Vec<String> {
        cookies::host_warnings(&self.policy)
    }

    /// Errors for configured interfaces that do not exist in this network namespace.
    pub fn missing_interfaces(&self) -> Vec<Diagnostic> {
        self.interface_spans
            .iter()
            .filter(|(name, _)| nix::net::if_::if_nametoindex(name.as_str()).is_err())
            .map(|(name, at)| Diagnostic {
                message: format!(
                    "unknown interface `{name}` (not present in this network namespace)"
                ),
                ..at.clone()
            })
            .collect()
    }
}

/// Feed paths relative to the policy's directory.
fn resolve_feeds(policy: &Path, feeds: &[Spanned<Feed>]) -> Vec<Feed> {
    let base = policy.parent().unwrap_or(Path::new("."));
    feeds
        .iter()
        .map(|feed| {
            let mut feed = feed.get_ref().clone();
            feed.path = base.join(&feed.path);
            feed
        })
        .collect()
}

/// Validates the `[[rule]]` tables.
fn parse_rules(
    locator: &Locator<'_>,
    raw: &[Spanned<RawRule>],
    errors: &mut Vec<Diagnostic>,
) -> Vec<Rule> {
    if raw.len() > MAX_RULES as usize {
        errors.push(locator.at(
            raw[MAX_RULES as usize].span().start,
            format!(
                "at most {MAX_RULES} rules are supported, found {}",
                raw.len()
            ),
        ));
        return Vec::new();
    }
    let mut rules = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut taken: HashMap<RuleKey, String> = HashMap::new();
    for spanned in raw {
        let offset = spanned.span().start;
        let rule = spanned.get_ref();
        let mut fail = |message: String| {
            errors.push(locator.at(offset, format!("rule `{}`: {message}", rule.name)))
        };
        if let Some(first) = names.insert(rule.name.clone(), offset) {
            fail(format!(
                "duplicate rule name (first at line {})",
                locator.at(first, String::new()).line
            ));
            continue;
        }
        if rule.ports.contains(&0) {
            fail("port 0 is not a valid destination port".into());
            continue;
        }
        let source = rule.per_source.unwrap_or_default();
        let subnet = rule.per_subnet.unwrap_or_default();
        let values = [
            source.packets_per_second,
            source.burst_packets,
            source.bytes_per_second,
            source.burst_bytes,
            subnet.packets_per_second,
            subnet.burst_packets,
            subnet.bytes_per_second,
            subnet.burst_bytes,
            rule.syn_per_source.map(|syn| syn.per_second),
            rule.syn_per_source.and_then(|syn| syn.burst),
        ];
        if values.iter().flatten().any(|value| *value == 0) {
            fail("rates and bursts must be at least 1".into());
            continue;
        }
        if subnet.prefix_v4 > 32 || subnet.prefix_v6 > 128 {
            fail("per_subnet prefix_v4 must be 0..=32 and prefix_v6 0..=128".into());
            continue;
        }
        let duration = |field: &str, value: &Option<String>, default: &str| {
            let text = value.as_deref().unwrap_or(default);
            humantime::parse_duration(text)
                .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
                .map_err(|err| {
                    format!("{field} = \"{text}\": {err} (e.g. \"5s\", \"10m\", \"1h\")")
                })
        };
        let bans = rule.on_exceed == OnExceed::Ban;
        if !bans
            && (rule.ban_after.is_some()
                || rule.ban_ttl.is_some()
                || rule.escalate_after.is_some()
                || rule.subnet_ban_ttl.is_some())
        {
            fail(
                "ban_after, ban_ttl, escalate_after and subnet_ban_ttl need on_exceed = \"ban\""
                    .into(),
            );
            continue;
        }
        let timing = (|| {
            Ok::<_, String>((
                duration("ban_after", &rule.ban_after, "5s")?,
                duration("ban_ttl", &rule.ban_ttl, "10m")?,
                duration("subnet_ban_ttl", &rule.subnet_ban_ttl, "1h")?,
            ))
        })();
        let (ban_after_ns, ban_ttl_ns, subnet_ban_ttl_ns) = match timing {
            Ok(timing) => timing,
            Err(message) => {
                fail(message);
                continue;
            }
        };
        if bans && ban_ttl_ns == 0 {
            fail("ban_ttl must be longer than 0".into());
            continue;
        }
        let config = RuleConfig {
            source_packets: bucket(source.packets_per_second, source.burst_packets),
            source_bytes: bucket(source.bytes_per_second, source.burst_bytes),
            subnet_packets: bucket(subnet.packets_per_second, subnet.burst_packets),
            subnet_bytes: bucket(subnet.bytes_per_second, subnet.burst_bytes),
            syn: rule.syn_per_source.map_or(Bucket::UNLIMITED, |syn| {
                bucket(Some(syn.per_second), syn.burst)
            }),
            subnet_v4_len: u32::from(subnet.prefix_v4),
            subnet_v6_len: u32::from(subnet.prefix_v6),
            flags: if rule.dry_run { RULE_DRY_RUN } else { 0 } | if bans { RULE_BAN } else { 0 },
            escalate_after: if bans {
                rule.escalate_after.unwrap_or(0)
            } else {
                0
            },
            ban_after_ns,
            ban_ttl_ns,
            subnet_ban_ttl_ns,
        };
        let limited = [
            config.source_packets,
            config.source_bytes,
            config.subnet_packets,
            config.subnet_bytes,
            config.syn,
        ]
        .iter()
        .any(Bucket::is_limited);
        if !limited {
            fail("sets no limit: give per_source, per_subnet or syn_per_source a rate".into());
            continue;
        }
        if rule.syn_per_source.is_some() && rule.protocol == RuleProtocol::Udp {
            fail("syn_per_source needs TCP: set protocol = \"tcp\" or \"any\"".into());
            continue;
        }
        let syn_cookies = match (rule.syn_cookies, rule.protocol) {
            (Some(SynCookies::Off), _) | (None, RuleProtocol::Udp) => SynCookies::Off,
            (Some(cookies), RuleProtocol::Udp) => {
                fail(format!(
                    "syn_cookies = \"{}\" needs TCP: set protocol = \"tcp\" or \"any\", or \
                     remove it",
                    cookies.name()
                ));
                continue;
            }
            (Some(cookies), _) => cookies,
            (None, _) => SynCookies::default(),
        };
        let mut config = config;
        config.flags |= match syn_cookies {
            SynCookies::Auto => RULE_SYN_COOKIES_AUTO,
            SynCookies::Always => RULE_SYN_COOKIES_ALWAYS,
            SynCookies::Off => 0,
        };
        let validated = Rule {
            name: rule.name.clone(),
            protocol: match rule.protocol {
                RuleProtocol::Tcp => Some(IPPROTO_TCP),
                RuleProtocol::Udp => Some(IPPROTO_UDP),
                RuleProtocol::Any => None,
            },
            ports: rule.ports.clone(),
            config,
            syn_cookies,
        };
        let mut clash = None;
        for key in validated.keys() {
            if let Some(other) = taken.insert(key, rule.name.clone()) {
                clash = Some(other);
            }
        }
        if let Some(other) = clash {
            fail(format!(
                "matches the same protocol and port as rule `{other}`; each packet takes one rule"
            ));
            continue;
        }
        rules.push(validated);
    }
    rules
}

/// Parses `ADDR/LEN` or a bare address (a host prefix).
pub fn parse_cidr(value: &str) -> Result<IpNet, String> {
    let value = value.trim();
    IpNet::from_str(value)
        .or_else(|_| IpAddr::from_str(value).map(IpNet::from))
        .map_err(|_| format!("invalid CIDR `{value}`: expected ADDR/LEN or ADDR (e.g. 203.0.113.0/24, 2001:db8::/32)"))
}

type Entry = (IpNet, usize);

fn parse_list(
    locator: &Locator<'_>,
    list: &str,
    values: &[Spanned<String>],
    errors: &mut Vec<Diagnostic>,
    warnings: &mut Vec<Diagnostic>,
) -> Vec<Entry> {
    let mut entries = Vec::with_capacity(values.len());
    for value in values {
        let offset = value.span().start;
        match parse_cidr(value.get_ref()) {
            Err(message) => errors.push(locator.at(offset, format!("{list}: {message}"))),
            Ok(net) => {
                let normal = net.trunc();
                if normal != net {
                    warnings.push(locator.at(
                        offset,
                        format!("{list}: `{net}` has host bits set; treated as {normal}"),
                    ));
                }
                entries.push((normal, offset));
            }
        }
    }
    entries
}

/// Warnings for duplicates and for entries that another entry makes pointless.
fn overlap_warnings(locator: &Locator<'_>, allow: &[Entry], block: &[Entry]) -> Vec<Diagnostic> {
    let index = |entries: &[Entry]| {
        let mut map: HashMap<IpNet, usize> = HashMap::with_capacity(entries.len());
        let mut lengths = BTreeSet::new();
        for (net, offset) in entries {
            map.entry(*net).or_insert(*offset);
            lengths.insert((net.addr().is_ipv4(), net.prefix_len()));
        }
        (map, lengths)
    };
    let (allow_index, allow_lengths) = index(allow);
    let (block_index, block_lengths) = index(block);
    let line_of = |offset: usize| locator.at(offset, String::new()).line;
    // The shortest entry of `index` strictly containing `net`, if any.
    let covering = |net: &IpNet, index: &HashMap<IpNet, usize>, lengths: &BTreeSet<(bool, u8)>| {
        lengths
            .iter()
            .filter(|(v4, len)| *v4 == net.addr().is_ipv4() && *len < net.prefix_len())
            .find_map(|(_, len)| {
                let wider = IpNet::new(net.addr(), *len).ok()?.trunc();
                index.get(&wider).map(|offset| (wider, *offset))
            })
    };

    let mut warnings = Vec::new();
    for (list, entries, own, own_lengths) in [
        ("allow", allow, &allow_index, &allow_lengths),
        ("block", block, &block_index, &block_lengths),
    ] {
        for (net, offset) in entries {
            let first = own[net];
            if first != *offset {
                warnings.push(locator.at(
                    *offset,
                    format!(
                        "{list}: duplicate entry {net} (first at line {})",
                        line_of(first)
                    ),
                ));
            } else if let Some((wider, at)) = covering(net, own, own_lengths) {
                warnings.push(locator.at(
                    *offset,
                    format!(
                        "{list}: {net} is redundant: {wider} (line {}) already covers it",
                        line_of(at)
                    ),
                ));
            }
        }
    }
    for (net, offset) in block {
        if let Some(at) = allow_index.get(net) {
            warnings.push(locator.at(
                *offset,
                format!(
                    "block: {net} is also allowlisted (line {}); the allowlist wins",
                    line_of(*at)
                ),
            ));
        } else if let Some((wider, at)) = covering(net, &allow_index, &allow_lengths) {
            warnings.push(locator.at(
                *offset,
                format!(
                    "block: {net} never takes effect: allowlisted {wider} (line {}) covers it",
                    line_of(at)
                ),
            ));
        }
    }
    warnings
}

#[cfg(test)]
mod tests;
