//! The policy file: TOML, parsed with serde (`deny_unknown_fields`) and validated into a
//! [`Policy`]. Every error and warning names the file, line and column and the offending value.

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

/// Capacity of the kernel maps. They are preallocated, so these bound kernel memory.
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
            max_v4_prefixes: 1 << 20,
            max_v6_prefixes: 1 << 18,
            max_tracked_sources: 1 << 18,
            max_tracked_subnets: 1 << 16,
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
            audit_log: PathBuf::from(crate::audit::DEFAULT_AUDIT_LOG),
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
    jails: Vec<Spanned<crate::jails::config::RawJail>>,
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
    pub format: crate::feeds::FeedFormat,
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
    pub jails: Vec<crate::jails::config::JailConfig>,
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
        let jails = crate::jails::config::parse_jails(&locator, path, &raw.jails, &mut errors);
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
            },
            warnings,
            interface_spans,
        })
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
        let validated = Rule {
            name: rule.name.clone(),
            protocol: match rule.protocol {
                RuleProtocol::Tcp => Some(IPPROTO_TCP),
                RuleProtocol::Udp => Some(IPPROTO_UDP),
                RuleProtocol::Any => None,
            },
            ports: rule.ports.clone(),
            config,
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
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Loaded, PolicyError> {
        Loaded::from_str(Path::new("policy.toml"), text)
    }

    fn errors(text: &str) -> Vec<Diagnostic> {
        match load(text) {
            Err(PolicyError::Invalid(errors)) => errors,
            Err(other) => panic!("expected validation errors, got {other}"),
            Ok(loaded) => panic!("expected errors, got {:?}", loaded.policy),
        }
    }

    fn messages(diagnostics: &[Diagnostic]) -> Vec<String> {
        diagnostics.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn empty_policy_takes_the_documented_defaults() {
        let loaded = load("").expect("empty policy is valid");
        assert_eq!(loaded.policy, Policy::default());
        assert_eq!(loaded.policy.malformed, Action::Drop);
        assert_eq!(loaded.policy.xdp_mode, XdpModeSetting::Auto);
        assert_eq!(loaded.policy.limits.max_v4_prefixes, 1 << 20);
        assert_eq!(
            loaded.policy.daemon.pin_dir,
            PathBuf::from("/sys/fs/bpf/apifw")
        );
        assert!(loaded.warnings.is_empty());
    }

    #[test]
    fn the_shipped_example_is_valid_and_clean() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/apifw.toml");
        let loaded = Loaded::from_file(&path).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(loaded.policy.interfaces, ["eth0"]);
        assert_eq!(loaded.policy.allow.len(), 2);
        assert_eq!(loaded.policy.block.len(), 3);
        assert!(
            loaded.warnings.is_empty(),
            "{:?}",
            messages(&loaded.warnings)
        );
    }

    #[test]
    fn full_policy_parses() {
        let loaded = load(
            r#"
interfaces = ["veth0", "veth1"]
xdp_mode = "skb"
malformed = "pass"
[allow]
cidrs = ["203.0.113.7", "2001:db8::7"]
[block]
cidrs = ["203.0.113.0/24", "2001:db8::/32"]
[limits]
max_v4_prefixes = 1000
max_v6_prefixes = 10
[daemon]
pin_dir = "/sys/fs/bpf/x"
run_dir = "/tmp/x"
log_format = "json"
"#,
        )
        .unwrap_or_else(|err| panic!("{err}"));
        let policy = loaded.policy;
        assert_eq!(policy.interfaces, ["veth0", "veth1"]);
        assert_eq!(policy.xdp_mode, XdpModeSetting::Skb);
        assert_eq!(policy.malformed, Action::Pass);
        assert_eq!(
            policy.allow,
            [
                "203.0.113.7/32".parse::<IpNet>().unwrap(),
                "2001:db8::7/128".parse().unwrap()
            ]
        );
        assert_eq!(policy.limits.max_v6_prefixes, 10);
        assert_eq!(policy.daemon.log_format, LogFormat::Json);
    }

    #[test]
    fn unknown_keys_are_errors_with_a_location() {
        let found = messages(&errors(
            "interfaces = []\n[block]\ncidr = [\"203.0.113.0/24\"]\n",
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("policy.toml:3:1: unknown field `cidr`"),
            "{found:?}"
        );

        let found = messages(&errors("malformed = \"reject\"\n"));
        assert!(
            found[0].starts_with("policy.toml:1:13: unknown variant `reject`"),
            "{found:?}"
        );

        let found = messages(&errors("[limits]\nmax_v4_prefixes = -1\n"));
        assert!(found[0].starts_with("policy.toml:2:19:"), "{found:?}");
    }

    #[test]
    fn every_invalid_cidr_is_reported_with_its_place_and_value() {
        let found = messages(&errors(
            "[block]\ncidrs = [\n  \"203.0.113.0/33\",\n  \"203.0.113.0/24\",\n  \"not-an-ip\",\n  \"2001:db8::/129\",\n]\n",
        ));
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            found[0].starts_with("policy.toml:3:3: block: invalid CIDR `203.0.113.0/33`"),
            "{found:?}"
        );
        assert!(
            found[1].starts_with("policy.toml:5:3: block: invalid CIDR `not-an-ip`"),
            "{found:?}"
        );
        assert!(
            found[2].starts_with("policy.toml:6:3: block: invalid CIDR `2001:db8::/129`"),
            "{found:?}"
        );
    }

    #[test]
    fn bad_interface_names_and_zero_limits_are_errors() {
        let found = messages(&errors(
            "interfaces = [\"\", \"a-name-longer-than-15\", \"eth/0\"]\n[limits]\nmax_v6_prefixes = 0\n",
        ));
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(found[0].contains("invalid interface name ``"), "{found:?}");
        assert!(found[1].contains("`a-name-longer-than-15`"), "{found:?}");
        assert!(found[2].contains("`eth/0`"), "{found:?}");
        assert!(
            found[3].contains("limits.max_v6_prefixes must be at least 1"),
            "{found:?}"
        );
    }

    #[test]
    fn overlaps_and_duplicates_are_warnings() {
        let loaded = load(
            r#"
interfaces = ["lo", "lo"]
[allow]
cidrs = ["198.51.100.0/24"]
[block]
cidrs = [
  "203.0.113.5/24",
  "203.0.113.0/24",
  "203.0.113.128/25",
  "198.51.100.0/24",
  "198.51.100.64/26",
]
"#,
        )
        .unwrap_or_else(|err| panic!("{err}"));
        let found = messages(&loaded.warnings);
        let expected = [
            "policy.toml:2:21: interface `lo` is listed twice",
            "policy.toml:7:3: block: `203.0.113.5/24` has host bits set; treated as 203.0.113.0/24",
            "policy.toml:8:3: block: duplicate entry 203.0.113.0/24 (first at line 7)",
            "policy.toml:9:3: block: 203.0.113.128/25 is redundant: 203.0.113.0/24 (line 7) already covers it",
            "policy.toml:10:3: block: 198.51.100.0/24 is also allowlisted (line 4); the allowlist wins",
            "policy.toml:11:3: block: 198.51.100.64/26 never takes effect: allowlisted 198.51.100.0/24 (line 4) covers it",
        ];
        for line in expected {
            assert!(
                found.iter().any(|f| f == line),
                "missing warning {line:?} in {found:?}"
            );
        }
        // The /26 is also redundant inside the blocked /24 of the same list.
        assert_eq!(found.len(), expected.len() + 1, "{found:?}");
        assert_eq!(loaded.policy.interfaces, ["lo"]);
        assert_eq!(
            loaded.policy.block[0],
            "203.0.113.0/24".parse::<IpNet>().unwrap()
        );
    }

    #[test]
    fn missing_interfaces_are_named_with_their_place() {
        let loaded = load("interfaces = [\"lo\", \"apifw-nope0\"]\n").expect("valid");
        let found = messages(&loaded.missing_interfaces());
        assert_eq!(
            found,
            [
                "policy.toml:1:21: unknown interface `apifw-nope0` (not present in this network namespace)"
            ]
        );
    }

    #[test]
    fn rules_compile_to_buckets_and_match_keys() {
        let loaded = load(
            r#"
dry_run = true
[[rule]]
name = "https"
protocol = "tcp"
ports = [443, 8443]
per_source = { packets_per_second = 100, bytes_per_second = 1000000, burst_bytes = 3000000 }
syn_per_source = { per_second = 5 }
[[rule]]
name = "dns"
protocol = "any"
ports = [53]
dry_run = true
per_subnet = { packets_per_second = 1000, burst_packets = 50, prefix_v4 = 20 }
[[rule]]
name = "rest"
protocol = "any"
per_source = { packets_per_second = 10 }
"#,
        )
        .unwrap_or_else(|err| panic!("{err}"));
        let policy = loaded.policy;
        assert!(policy.dry_run);
        assert_eq!(policy.rules.len(), 3);
        let https = &policy.rules[0];
        assert_eq!(
            https.config.source_packets,
            Bucket::new(100, 100),
            "burst defaults to 1 s"
        );
        assert_eq!(https.config.source_bytes, Bucket::new(1_000_000, 3_000_000));
        assert_eq!(https.config.syn, Bucket::new(5, 5));
        assert!(!https.config.subnet_packets.is_limited());
        assert!(!https.config.dry_run());
        assert_eq!(
            https.keys(),
            [
                RuleKey::new(IPPROTO_TCP, 443),
                RuleKey::new(IPPROTO_TCP, 8443)
            ]
        );
        let dns = &policy.rules[1];
        assert!(dns.config.dry_run());
        assert_eq!(
            (dns.config.subnet_v4_len, dns.config.subnet_v6_len),
            (20, 64)
        );
        assert_eq!(
            dns.keys(),
            [RuleKey::new(IPPROTO_TCP, 53), RuleKey::new(IPPROTO_UDP, 53)]
        );
        assert_eq!(
            policy.rules[2].keys(),
            [RuleKey::new(ANY_PROTOCOL, ANY_PORT)]
        );
        let model = policy.model();
        assert_eq!(model.rules.len(), 3);
        assert!(model.dry_run);
    }

    #[test]
    fn bad_rules_are_errors_naming_the_rule() {
        let rule = |body: &str| format!("[[rule]]\nname = \"r\"\nprotocol = \"tcp\"\n{body}\n");
        let cases = [
            (
                rule("ports = [0]\nper_source = { packets_per_second = 1 }"),
                "port 0",
            ),
            (
                rule("per_source = { packets_per_second = 0 }"),
                "at least 1",
            ),
            (rule(""), "sets no limit"),
            (
                rule("per_subnet = { packets_per_second = 1, prefix_v4 = 33 }"),
                "prefix_v4",
            ),
            (
                "[[rule]]\nname = \"u\"\nprotocol = \"udp\"\nsyn_per_source = { per_second = 1 }\n"
                    .to_owned(),
                "syn_per_source needs TCP",
            ),
        ];
        for (text, expected) in cases {
            let found = messages(&errors(&text));
            assert_eq!(found.len(), 1, "{text}: {found:?}");
            assert!(
                found[0].starts_with("policy.toml:1:1: rule `"),
                "{text}: {found:?}"
            );
            assert!(found[0].contains(expected), "{text}: {found:?}");
        }

        let found = messages(&errors(
            "[[rule]]\nname = \"a\"\nprotocol = \"tcp\"\nports = [443]\nper_source = { packets_per_second = 1 }\n\
             [[rule]]\nname = \"a\"\nprotocol = \"udp\"\nper_source = { packets_per_second = 1 }\n\
             [[rule]]\nname = \"b\"\nprotocol = \"any\"\nports = [443]\nper_source = { packets_per_second = 1 }\n",
        ));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].contains("rule `a`: duplicate rule name (first at line 1)"),
            "{found:?}"
        );
        assert!(
            found[1].contains("rule `b`: matches the same protocol and port as rule `a`"),
            "{found:?}"
        );

        let found = messages(&errors("[[rule]]\nname = \"x\"\nprotocol = \"icmp\"\n"));
        assert!(found[0].contains("unknown variant `icmp`"), "{found:?}");
        let found = messages(&errors(
            "[[rule]]\nname = \"x\"\nprotocol = \"tcp\"\nper_source = { pps = 1 }\n",
        ));
        assert!(found[0].contains("unknown field `pps`"), "{found:?}");
    }

    #[test]
    fn ban_settings_parse_with_defaults_and_need_on_exceed_ban() {
        let loaded = load(
            r#"
[[rule]]
name = "login"
protocol = "tcp"
ports = [443]
per_source = { packets_per_second = 100 }
on_exceed = "ban"
ban_after = "2s"
escalate_after = 5
[[rule]]
name = "api"
protocol = "tcp"
ports = [8443]
per_source = { packets_per_second = 100 }
on_exceed = "ban"
"#,
        )
        .unwrap_or_else(|err| panic!("{err}"));
        let login = loaded.policy.rules[0].config;
        assert!(login.bans());
        assert_eq!(login.ban_after_ns, 2_000_000_000);
        assert_eq!(
            login.ban_ttl_ns, 600_000_000_000,
            "ban_ttl defaults to 10 minutes"
        );
        assert_eq!(
            login.subnet_ban_ttl_ns, 3_600_000_000_000,
            "subnet_ban_ttl defaults to 1 hour"
        );
        assert_eq!(login.escalate_after, 5);
        let api = loaded.policy.rules[1].config;
        assert_eq!(api.ban_after_ns, 5_000_000_000, "ban_after defaults to 5 s");
        assert_eq!(api.escalate_after, 0, "no escalation unless asked");

        let rule = |body: &str| {
            format!(
                "[[rule]]\nname = \"r\"\nprotocol = \"tcp\"\nper_source = {{ packets_per_second = 1 }}\n{body}\n"
            )
        };
        for (body, expected) in [
            ("ban_ttl = \"1m\"", "need on_exceed = \"ban\""),
            (
                "on_exceed = \"ban\"\nban_after = \"soon\"",
                "ban_after = \"soon\"",
            ),
            (
                "on_exceed = \"ban\"\nban_ttl = \"0s\"",
                "ban_ttl must be longer than 0",
            ),
        ] {
            let found = messages(&errors(&rule(body)));
            assert_eq!(found.len(), 1, "{body}: {found:?}");
            assert!(found[0].contains(expected), "{body}: {found:?}");
        }
        let found = messages(&errors(&rule("on_exceed = \"block\"")));
        assert!(found[0].contains("unknown variant `block`"), "{found:?}");
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let err =
            Loaded::from_file(Path::new("/nonexistent/apifw.toml")).expect_err("missing file");
        assert_eq!(
            err.to_string(),
            "cannot read policy /nonexistent/apifw.toml"
        );
        assert!(std::error::Error::source(&err).is_some());
    }
}
