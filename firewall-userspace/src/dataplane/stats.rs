//! Reading the per-CPU verdict counters, from a loaded firewall or from the pinned map.

use std::path::PathBuf;

use aya::maps::{Map, MapData, PerCpuArray};
use firewall_common::{
    Action, Counter, Reason,
    rules::{MAX_RULES, rule_stats_index},
    stats::{INTERFACE_SLOTS, stats_index_at},
};
use serde::{Deserialize, Serialize};

use crate::paths::PinLayout;

/// Why counters could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// Nothing is pinned where the daemon would pin its counters.
    #[error(
        "no apifw daemon is running: no counters pinned at {} (start one with `apifw run --config FILE`, \
         or pass the daemon's --pin-dir)",
        path.display()
    )]
    NotRunning {
        /// The expected pin path.
        path: PathBuf,
    },
    /// The pinned map could not be opened.
    #[error("cannot open pinned counters at {}", path.display())]
    Open {
        /// The pin path.
        path: PathBuf,
        /// The error.
        #[source]
        source: aya::maps::MapError,
    },
    /// A counter could not be read.
    #[error("cannot read counter {index}")]
    Read {
        /// Index in the map.
        index: u32,
        /// The error.
        #[source]
        source: aya::maps::MapError,
    },
}

/// One `(action, reason)` counter, summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterRow {
    /// Action.
    pub action: Action,
    /// Reason.
    pub reason: Reason,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// One rule's counter for one reason, summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRow {
    /// Rule index (order in the policy file).
    pub rule: u32,
    /// `default` (taken and passed), `rate_limited`, `syn_limited`, `would_drop` or `would_ban`.
    pub reason: Reason,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// One interface slot's counter for one `(action, reason)`, summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRow {
    /// Interface slot (0: interfaces without one).
    pub slot: u32,
    /// Action.
    pub action: Action,
    /// Reason.
    pub reason: Reason,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Every counter at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// One row per `(action, reason)` pair, summed over interfaces, zero rows included.
    pub counters: Vec<CounterRow>,
    /// Per-rule counters, non-zero rows only.
    #[serde(default)]
    pub rules: Vec<RuleRow>,
    /// Per-interface-slot counters, non-zero rows only.
    #[serde(default)]
    pub slots: Vec<SlotRow>,
}

/// Reasons a rule counts under (banned / subnet_banned: the bans it made).
const RULE_REASONS: [Reason; 10] = [
    Reason::Default,
    Reason::RateLimited,
    Reason::SynLimited,
    Reason::WouldDrop,
    Reason::WouldBan,
    Reason::Banned,
    Reason::SubnetBanned,
    Reason::SynCookie,
    Reason::CookieValid,
    Reason::BadCookie,
];

impl Snapshot {
    /// The counter of one pair.
    pub fn get(&self, action: Action, reason: Reason) -> Counter {
        self.counters
            .iter()
            .find(|row| row.action == action && row.reason == reason)
            .map(|row| Counter {
                packets: row.packets,
                bytes: row.bytes,
            })
            .unwrap_or_default()
    }

    /// A rule's counter for `reason`.
    pub fn rule(&self, rule: u32, reason: Reason) -> Counter {
        self.rules
            .iter()
            .find(|row| row.rule == rule && row.reason == reason)
            .map(|row| Counter {
                packets: row.packets,
                bytes: row.bytes,
            })
            .unwrap_or_default()
    }

    /// Packets over every pair.
    pub fn total_packets(&self) -> u64 {
        self.counters.iter().map(|row| row.packets).sum()
    }
}

/// The sum over CPUs of slot `index`.
fn sum<T: std::borrow::Borrow<MapData>>(
    map: &PerCpuArray<T, Counter>,
    index: u32,
) -> Result<Counter, StatsError> {
    let per_cpu = map
        .get(&index, 0)
        .map_err(|source| StatsError::Read { index, source })?;
    Ok(per_cpu.iter().fold(Counter::default(), |total, c| Counter {
        packets: total.packets.wrapping_add(c.packets),
        bytes: total.bytes.wrapping_add(c.bytes),
    }))
}

/// Sums every `(action, reason)` counter and every per-rule counter over CPUs.
pub fn snapshot<T: std::borrow::Borrow<MapData>>(
    map: &PerCpuArray<T, Counter>,
    rule_map: &PerCpuArray<T, Counter>,
) -> Result<Snapshot, StatsError> {
    let mut counters = Vec::new();
    let mut slots = Vec::new();
    for action in Action::ALL {
        for reason in Reason::ALL {
            let mut total = Counter::default();
            for slot in 0..INTERFACE_SLOTS {
                let Counter { packets, bytes } = sum(map, stats_index_at(slot, action, reason))?;
                total.packets = total.packets.wrapping_add(packets);
                total.bytes = total.bytes.wrapping_add(bytes);
                if packets > 0 {
                    slots.push(SlotRow {
                        slot,
                        action,
                        reason,
                        packets,
                        bytes,
                    });
                }
            }
            counters.push(CounterRow {
                action,
                reason,
                packets: total.packets,
                bytes: total.bytes,
            });
        }
    }
    let mut rules = Vec::new();
    for rule in 0..MAX_RULES {
        for reason in RULE_REASONS {
            let Counter { packets, bytes } = sum(rule_map, rule_stats_index(rule, reason))?;
            if packets > 0 {
                rules.push(RuleRow {
                    rule,
                    reason,
                    packets,
                    bytes,
                });
            }
        }
    }
    Ok(Snapshot {
        counters,
        rules,
        slots,
    })
}

/// Reads the counters a daemon pinned under `layout`.
pub fn read_pinned(layout: &PinLayout) -> Result<Snapshot, StatsError> {
    let open = |name: &str| {
        let path = layout.map(name);
        if !path.exists() {
            return Err(StatsError::NotRunning { path });
        }
        let open_err = |source| StatsError::Open {
            path: path.clone(),
            source,
        };
        let data = MapData::from_pin(&path).map_err(open_err)?;
        PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(open_err)
    };
    snapshot(
        &open(firewall_common::map_names::STATS)?,
        &open(firewall_common::map_names::RULE_STATS)?,
    )
}

/// A fixed-width table of the non-zero counters (all of them if every one is zero).
pub fn render_table(
    snapshot: &Snapshot,
    rule_names: &std::collections::BTreeMap<u32, String>,
) -> String {
    let mut out = format!(
        "{:<6} {:<10} {:>14} {:>16}\n",
        "ACTION", "REASON", "PACKETS", "BYTES"
    );
    let rows: Vec<_> = snapshot
        .counters
        .iter()
        .filter(|row| row.packets > 0)
        .collect();
    let rows = if rows.is_empty() {
        snapshot.counters.iter().collect()
    } else {
        rows
    };
    for row in rows {
        out.push_str(&format!(
            "{:<6} {:<10} {:>14} {:>16}\n",
            row.action.name(),
            row.reason.name(),
            row.packets,
            row.bytes
        ));
    }
    if !snapshot.rules.is_empty() {
        let rule_width = rule_names
            .values()
            .map(|name| name.chars().count())
            .chain([6])
            .max()
            .unwrap_or(6);
        out.push_str(&format!(
            "\n{:<rule_width$} {:<12} {:>14} {:>16}\n",
            "RULE", "OUTCOME", "PACKETS", "BYTES"
        ));
        for row in &snapshot.rules {
            let rule = rule_names
                .get(&row.rule)
                .cloned()
                .unwrap_or_else(|| format!("#{}", row.rule));
            out.push_str(&format!(
                "{rule:<rule_width$} {:<12} {:>14} {:>16}\n",
                match row.reason {
                    Reason::Default => "passed",
                    // A rule counts the bans it made (packets dropped by a ban count under the
                    // source's own `banned` counter above, not the rule's).
                    Reason::Banned => "bans_made",
                    Reason::SubnetBanned => "subnet_bans",
                    reason => reason.name(),
                },
                row.packets,
                row.bytes
            ));
        }
    }
    out
}

/// What the kernel's BPF statistics say about the loaded firewall program: how often it ran and
/// how long it took in all. The kernel counts only while its statistics are on
/// (`kernel.bpf_stats_enabled = 1`, or a process holding a `BPF_ENABLE_STATS` descriptor): each
/// run then costs two clock reads, which is why they are off by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramRuns {
    /// Runs counted (packets, one run each).
    pub runs: u64,
    /// Time spent in those runs, in nanoseconds.
    pub run_time_ns: u64,
    /// Whether `kernel.bpf_stats_enabled` is 1 now.
    pub stats_enabled: bool,
}

impl ProgramRuns {
    /// The sysctl that turns the kernel's BPF statistics on.
    pub const SYSCTL: &str = "kernel.bpf_stats_enabled";

    /// Mean nanoseconds per run over what was counted, if anything was.
    pub fn ns_per_packet(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.run_time_ns as f64 / self.runs as f64)
    }

    /// One line for `apifw status`: the cost, or how to get it.
    pub fn describe(&self) -> String {
        match self.ns_per_packet() {
            Some(ns) => format!(
                "program {ns:.0} ns per packet over {} packets (kernel BPF statistics{})",
                self.runs,
                if self.stats_enabled { "" } else { ", now off" }
            ),
            None if self.stats_enabled => {
                "program cost: no packet counted yet (kernel BPF statistics on)".to_owned()
            }
            None => format!(
                "program cost: unknown, the kernel's BPF statistics are off (`sysctl -w {}=1` \
                 turns them on; each packet then pays two clock reads)",
                Self::SYSCTL
            ),
        }
    }
}

/// Whether `kernel.bpf_stats_enabled` is 1.
pub fn bpf_stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .is_ok_and(|value| value.trim() == "1")
}

#[cfg(test)]
mod program_runs_tests {
    use super::ProgramRuns;

    #[test]
    fn the_cost_per_packet_or_how_to_get_it() {
        let counted = ProgramRuns {
            runs: 4,
            run_time_ns: 1_000,
            stats_enabled: true,
        };
        assert_eq!(counted.ns_per_packet(), Some(250.0));
        assert!(
            counted
                .describe()
                .starts_with("program 250 ns per packet over 4 packets")
        );
        let off = ProgramRuns::default();
        assert_eq!(off.ns_per_packet(), None);
        assert!(
            off.describe()
                .contains("sysctl -w kernel.bpf_stats_enabled=1"),
            "{}",
            off.describe()
        );
    }
}
