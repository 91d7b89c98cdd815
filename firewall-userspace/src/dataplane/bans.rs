//! Bans as userspace sees them: listing the active ones (`apifw bans`) and sweeping the expired
//! ones out of the kernel map (the daemon, once a second). The XDP program already ignores an
//! expired ban; sweeping frees its slot.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use aya::maps::{HashMap, Map, MapData};
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
}

/// The `rule` of a ban made by an operator (`apifw ban add`) rather than by a rule.
pub const MANUAL_BAN_RULE: u32 = u32::MAX;

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

fn row(key: &BanKey, ban: &BanEntry, now_ns: u64) -> BanRow {
    let subnet = ban.kind == BAN_SUBNET;
    BanRow {
        prefix: prefix_of(key),
        kind: if subnet { "subnet" } else { "host" }.to_owned(),
        rule: ban.rule,
        reason: if ban.rule == MANUAL_BAN_RULE {
            "manual ban".to_owned()
        } else if subnet {
            format!(
                "too many sources of this subnet were banned under rule {}",
                ban.rule
            )
        } else {
            format!("kept exceeding the limits of rule {}", ban.rule)
        },
        remaining_secs: ban.expires_ns.saturating_sub(now_ns) as f64 / 1e9,
        age_secs: now_ns.saturating_sub(ban.banned_at_ns) as f64 / 1e9,
    }
}

/// The active bans of a ban map, soonest expiry first.
pub fn active<T: std::borrow::Borrow<MapData>>(
    map: &HashMap<T, BanKey, BanEntry>,
    now_ns: u64,
) -> Result<Vec<BanRow>, BanError> {
    let mut rows = Vec::new();
    for item in map.iter() {
        let (key, ban) = item.map_err(|source| BanError::Map {
            action: "iteration",
            source: Box::new(source),
        })?;
        if ban.active_at(now_ns) {
            rows.push(row(&key, &ban, now_ns));
        }
    }
    rows.sort_by(|a, b| a.remaining_secs.total_cmp(&b.remaining_secs));
    Ok(rows)
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
    let mut expired = Vec::new();
    for key in map.keys() {
        let key = key.map_err(|source| BanError::Map {
            action: "iteration",
            source: Box::new(source),
        })?;
        if let Ok(ban) = map.get(&key, 0)
            && ban.expires_ns <= now_ns
        {
            expired.push((key, ban));
        }
    }
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
    active(&map, monotonic_ns()?)
}
