//! Bans as userspace sees them: listing the active ones (`apifw bans`) and sweeping the expired
//! ones out of the kernel map (the daemon, once a second). The XDP program already ignores an
//! expired ban; sweeping frees its slot.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use aya::maps::{HashMap, IterableMap as _, Map, MapData};
use firewall_common::rules::{BAN_SUBNET, BanEntry, BanKey};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::paths::PinLayout;

/// Why bans could not be read or swept.
#[derive(Debug, thiserror::Error)]
pub enum BanError {
    /// Nothing is pinned where the daemon would pin its ban map.
    #[error("no apifw daemon is running: no ban map pinned at {}", path.display())]
    NotRunning {
        /// The expected pin path.
        path: PathBuf,
    },
    /// A map operation failed.
    #[error("ban map {action} failed")]
    Map {
        /// What was attempted.
        action: &'static str,
        /// The error.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// The clock could not be read.
    #[error("cannot read CLOCK_MONOTONIC")]
    Clock(#[source] nix::Error),
    /// A batched read of the map failed.
    #[error("ban map read failed")]
    Read(#[source] crate::dataplane::batch::BatchError),
}

/// The `rule` of a ban made by an operator (`apifw ban add`) rather than by a rule.
pub const MANUAL_BAN_RULE: u32 = u32::MAX;

/// The `rule` of a ban mirrored from a CrowdSec decision (the daemon's bouncer), so that the
/// pinned map itself says where a ban comes from.
pub const CROWDSEC_BAN_RULE: u32 = u32::MAX - 1;

/// One active ban.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BanRow {
    /// The banned host (/32, /128) or subnet.
    pub prefix: IpNet,
    /// `host` or `subnet`.
    pub kind: String,
    /// Index of the rule whose limit was exceeded.
    pub rule: u32,
    /// Why, in words.
    pub reason: String,
    /// Seconds until the ban expires.
    pub remaining_secs: f64,
    /// Seconds since the ban was made.
    pub age_secs: f64,
}

/// Now on the clock the XDP program uses (`bpf_ktime_get_ns` is CLOCK_MONOTONIC).
pub fn monotonic_ns() -> Result<u64, BanError> {
    let now =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_err(BanError::Clock)?;
    Ok(now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64)
}

/// The prefix a ban key stands for.
pub fn prefix_of(key: &BanKey) -> IpNet {
    let addr = if key.family == 4 {
        IpAddr::V4(Ipv4Addr::new(
            key.addr[0],
            key.addr[1],
            key.addr[2],
            key.addr[3],
        ))
    } else {
        IpAddr::V6(Ipv6Addr::from(key.addr))
    };
    IpNet::new(addr, key.prefix_len).unwrap_or_else(|_| IpNet::from(addr))
}

/// How a ban's rule is named for people: `manual` for an operator's (or a jail's) ban, else the
/// rule's name from `names` (rule slot → name), or `#N` when the name is unknown.
pub fn rule_label(rule: u32, names: &std::collections::BTreeMap<u32, String>) -> String {
    if rule == MANUAL_BAN_RULE {
        return "manual".to_owned();
    }
    if rule == CROWDSEC_BAN_RULE {
        return "crowdsec".to_owned();
    }
    names
        .get(&rule)
        .cloned()
        .unwrap_or_else(|| format!("#{rule}"))
}

/// Why a ban of `kind` made by `rule` exists, in words, naming the rule by `rule_label`.
pub fn reason(rule: u32, kind: u32, rule_label: &str) -> String {
    if rule == MANUAL_BAN_RULE {
        "manual ban".to_owned()
    } else if rule == CROWDSEC_BAN_RULE {
        "CrowdSec decision".to_owned()
    } else if kind == BAN_SUBNET {
        format!("too many sources of this subnet were banned under rule {rule_label}")
    } else {
        format!("kept exceeding the limits of rule {rule_label}")
    }
}

fn row(key: &BanKey, ban: &BanEntry, now_ns: u64) -> BanRow {
    let subnet = ban.kind == BAN_SUBNET;
    BanRow {
        prefix: prefix_of(key),
        kind: if subnet { "subnet" } else { "host" }.to_owned(),
        rule: ban.rule,
        reason: reason(ban.rule, ban.kind, &ban.rule.to_string()),
        remaining_secs: ban.expires_ns.saturating_sub(now_ns) as f64 / 1e9,
        age_secs: now_ns.saturating_sub(ban.banned_at_ns) as f64 / 1e9,
    }
}

/// Every entry of a ban map, expired ones included: in a few batched calls where the kernel
/// can (the daemon reads its ban map every second, and it may hold 100k CrowdSec bans), else by
/// iterating its keys.
pub fn entries<T: std::borrow::Borrow<MapData>>(
    map: &HashMap<T, BanKey, BanEntry>,
) -> Result<Vec<(BanKey, BanEntry)>, BanError> {
    if let Some(all) = crate::dataplane::batch::lookup_all(map.map()).map_err(BanError::Read)? {
        return Ok(all);
    }
    map.iter()
        .map(|item| {
            item.map_err(|source| BanError::Map {
                action: "iteration",
                source: Box::new(source),
            })
        })
        .collect()
}

/// The active bans among `entries` (a ban map's content), soonest expiry first.
pub fn active_of(entries: &[(BanKey, BanEntry)], now_ns: u64) -> Vec<BanRow> {
    let mut rows: Vec<BanRow> = entries
        .iter()
        .filter(|(_, ban)| ban.active_at(now_ns))
        .map(|(key, ban)| row(key, ban, now_ns))
        .collect();
    rows.sort_by(|a, b| a.remaining_secs.total_cmp(&b.remaining_secs));
    rows
}

/// Removes the bans that expired by `now_ns`; returns what was removed.
pub fn sweep<T: std::borrow::BorrowMut<MapData>>(
    map: &mut HashMap<T, BanKey, BanEntry>,
    now_ns: u64,
) -> Result<Vec<(IpNet, BanEntry)>, BanError> {
    let expired: Vec<(BanKey, BanEntry)> = entries(map)?
        .into_iter()
        .filter(|(_, ban)| !ban.active_at(now_ns))
        .collect();
    let mut removed = Vec::new();
    for (key, ban) in expired {
        // Gone already (another sweeper, or the daemon restarted) is fine.
        if map.remove(&key).is_ok() {
            removed.push((prefix_of(&key), ban));
        }
    }
    Ok(removed)
}

/// The active bans a daemon pinned under `layout`.
pub fn read_pinned(layout: &PinLayout) -> Result<Vec<BanRow>, BanError> {
    let path = layout.map(firewall_common::map_names::BANS);
    if !path.exists() {
        return Err(BanError::NotRunning { path });
    }
    let map_err = |source| BanError::Map {
        action: "open",
        source: Box::new(source),
    };
    let data = MapData::from_pin(&path).map_err(map_err)?;
    let map: HashMap<_, BanKey, BanEntry> =
        HashMap::try_from(Map::HashMap(data)).map_err(map_err)?;
    Ok(active_of(&entries(&map)?, monotonic_ns()?))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use firewall_common::rules::BAN_HOST;

    use super::*;

    /// The daemon reads its ban map every second (sweep, then the new bans): with 100k CrowdSec
    /// bans that must stay cheap. Needs root (creates a map); prints the time.
    #[test]
    fn a_100k_ban_map_is_read_and_swept_in_a_few_calls() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: creating BPF maps needs root");
            return;
        }
        let mut map: HashMap<MapData, BanKey, BanEntry> =
            HashMap::create(131_072, 0).expect("create the ban map");
        let keys: Vec<BanKey> = (0..100_000u32)
            .map(|i| {
                let mut addr = [0u8; 16];
                addr[..4].copy_from_slice(&i.to_be_bytes());
                BanKey {
                    family: 4,
                    prefix_len: 32,
                    _pad: 0,
                    addr,
                }
            })
            .collect();
        // Every tenth ban has expired at 2 s.
        let values: Vec<BanEntry> = (0..100_000u64)
            .map(|i| {
                let ttl = if i % 10 == 0 { 1 } else { 3_600_000_000_000 };
                BanEntry::new(1, ttl, CROWDSEC_BAN_RULE, BAN_HOST)
            })
            .collect();
        crate::dataplane::batch::update(map.map(), &keys, &values).expect("fill");
        let started = std::time::Instant::now();
        let swept = sweep(&mut map, 2).expect("sweep");
        let swept_in = started.elapsed();
        let started = std::time::Instant::now();
        let left = entries(&map).expect("entries");
        let read_in = started.elapsed();
        eprintln!("100k bans: swept 10k in {swept_in:?}, read 90k in {read_in:?}");
        assert_eq!(swept.len(), 10_000);
        assert_eq!(left.len(), 90_000);
        assert!(left.iter().all(|(_, ban)| ban.active_at(2)));
        assert_eq!(active_of(&left, 2).len(), 90_000);
    }

    #[test]
    fn manual_bans_show_no_sentinel_and_rules_show_their_names() {
        let names = BTreeMap::from([(0, "api".to_owned())]);
        assert_eq!(rule_label(MANUAL_BAN_RULE, &names), "manual");
        assert_eq!(rule_label(0, &names), "api");
        assert_eq!(rule_label(3, &names), "#3");
        assert!(!rule_label(MANUAL_BAN_RULE, &BTreeMap::new()).contains("4294967295"));
    }

    #[test]
    fn reasons_name_the_rule_and_the_kind() {
        assert_eq!(reason(MANUAL_BAN_RULE, BAN_HOST, "manual"), "manual ban");
        assert_eq!(
            reason(0, BAN_HOST, "api"),
            "kept exceeding the limits of rule api"
        );
        assert_eq!(
            reason(0, BAN_SUBNET, "api"),
            "too many sources of this subnet were banned under rule api"
        );
    }
}
