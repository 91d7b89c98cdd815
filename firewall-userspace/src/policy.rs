//! The policy file: TOML, parsed with serde (`deny_unknown_fields`) and validated into a
//! [`Policy`]. Every error and warning names the file, line and column and the offending value.

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    str::FromStr as _,
};

use firewall_common::Action;
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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_v4_prefixes: 1 << 20,
            max_v6_prefixes: 1 << 18,
        }
    }
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
}

impl Default for DaemonSettings {
    fn default() -> Self {
        Self {
            pin_dir: PathBuf::from(paths::DEFAULT_PIN_DIR),
            run_dir: PathBuf::from(paths::DEFAULT_RUN_DIR),
            log_format: LogFormat::default(),
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
}

fn default_malformed() -> Action {
    Action::Drop
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawList {
    #[serde(default)]
    cidrs: Vec<Spanned<String>>,
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
struct Locator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    fn at(&self, offset: usize, message: String) -> Diagnostic {
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
        for (name, value) in [
            ("max_v4_prefixes", raw.limits.max_v4_prefixes),
            ("max_v6_prefixes", raw.limits.max_v6_prefixes),
        ] {
            if value == 0 {
                errors.push(locator.at(0, format!("limits.{name} must be at least 1")));
            }
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
