//! Counting matches per source over a sliding window and deciding bans: pure logic on unix
//! seconds, so that it can be tested without clocks and persisted across restarts.

use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
};

use serde::{Deserialize, Serialize};

use crate::policy::jails::JailConfig;

/// One counted match (or report) of a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hit {
    /// When, in unix seconds.
    pub at: u64,
    /// How much it counts (1 for a log line, the report's weight for a report).
    pub weight: u32,
}

/// What the jail knows about one source; persisted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// Matches within the window, oldest first.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub hits: VecDeque<Hit>,
    /// Bans so far (for the increment), while the history is kept.
    #[serde(default)]
    pub bans: u32,
    /// When the last ban was made, in unix seconds.
    #[serde(default)]
    pub last_ban_at: u64,
    /// Until when the current ban lasts, in unix seconds (0: not banned).
    #[serde(default)]
    pub banned_until: u64,
}

/// A ban the tracker decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BanDecision {
    /// The source.
    pub source: IpAddr,
    /// Duration, in seconds.
    pub ttl_secs: u64,
    /// The source's ban number (1 for its first).
    pub nth: u32,
    /// The weight within the window that reached `max_retry`.
    pub count: u64,
}

/// What recording a hit did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Counted; the source's weight within the window is now `count`.
    Counted {
        /// Weight within the window.
        count: u64,
    },
    /// Counted, and the source reached `max_retry`.
    Ban(BanDecision),
    /// The source is banned by this jail already: nothing counted.
    AlreadyBanned,
}

/// Per-source windows and ban history of one jail.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracker {
    /// By source.
    pub sources: BTreeMap<IpAddr, SourceRecord>,
}

impl Tracker {
    /// Counts a hit of `source` at `now` and decides whether to ban it.
    pub fn record(&mut self, jail: &JailConfig, source: IpAddr, now: u64, weight: u32) -> Outcome {
        let record = self.sources.entry(source).or_default();
        if record.banned_until > now {
            return Outcome::AlreadyBanned;
        }
        forget_history(record, jail, now);
        let window_start = now.saturating_sub(jail.find_time_secs);
        while record
            .hits
            .front()
            .is_some_and(|hit| hit.at <= window_start)
        {
            record.hits.pop_front();
        }
        record.hits.push_back(Hit { at: now, weight });
        let count: u64 = record.hits.iter().map(|hit| u64::from(hit.weight)).sum();
        if count < u64::from(jail.max_retry) {
            return Outcome::Counted { count };
        }
        let ttl_secs = jail.ban_secs(record.bans);
        record.bans = record.bans.saturating_add(1);
        record.last_ban_at = now;
        record.banned_until = now.saturating_add(ttl_secs);
        record.hits.clear();
        Outcome::Ban(BanDecision {
            source,
            ttl_secs,
            nth: record.bans,
            count,
        })
    }

    /// The ban of `source` was lifted (by an operator, or refused): count it again from now.
    pub fn lifted(&mut self, source: IpAddr) {
        if let Some(record) = self.sources.get_mut(&source) {
            record.banned_until = 0;
        }
    }

    /// A ban decision that was not carried out (an allowlisted source): undo its history.
    pub fn unban(&mut self, source: IpAddr) {
        if let Some(record) = self.sources.get_mut(&source) {
            record.banned_until = 0;
            record.bans = record.bans.saturating_sub(1);
        }
    }

    /// Drops what no longer matters at `now`: hits out of the window, lapsed bans and ban
    /// histories older than the jail keeps them. Returns whether anything changed.
    pub fn prune(&mut self, jail: &JailConfig, now: u64) -> bool {
        let before = self.sources.len();
        let mut changed = false;
        let window_start = now.saturating_sub(jail.find_time_secs);
        for record in self.sources.values_mut() {
            let hits = record.hits.len();
            record.hits.retain(|hit| hit.at > window_start);
            changed |= hits != record.hits.len();
            if record.banned_until != 0 && record.banned_until <= now {
                record.banned_until = 0;
                changed = true;
            }
            changed |= forget_history(record, jail, now);
        }
        self.sources.retain(|_, record| {
            !record.hits.is_empty() || record.bans > 0 || record.banned_until > 0
        });
        changed || before != self.sources.len()
    }

    /// Sources banned by this jail at `now`, with their records.
    pub fn banned(&self, now: u64) -> impl Iterator<Item = (&IpAddr, &SourceRecord)> {
        self.sources
            .iter()
            .filter(move |(_, record)| record.banned_until > now)
    }

    /// Sources with hits in the window.
    pub fn tracked(&self) -> usize {
        self.sources
            .values()
            .filter(|record| !record.hits.is_empty())
            .count()
    }
}

/// Forgets the ban count of a source whose last ban is older than the jail remembers.
fn forget_history(record: &mut SourceRecord, jail: &JailConfig, now: u64) -> bool {
    let forget_at = record
        .last_ban_at
        .saturating_add(jail.forget_after_secs())
        .max(record.banned_until);
    if record.bans > 0 && forget_at <= now {
        record.bans = 0;
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jail(text: &str) -> JailConfig {
        crate::policy::Loaded::from_str(
            std::path::Path::new("p.toml"),
            &format!("[[jail]]\nname = \"j\"\n{text}\n"),
        )
        .unwrap_or_else(|err| panic!("{err}"))
        .policy
        .jails
        .remove(0)
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 8));

    #[test]
    fn bans_after_exactly_max_retry_within_find_time() {
        let jail = jail("max_retry = 3\nfind_time = \"60s\"\nban_time = \"100s\"");
        let mut tracker = Tracker::default();
        assert_eq!(
            tracker.record(&jail, A, 1000, 1),
            Outcome::Counted { count: 1 }
        );
        assert_eq!(
            tracker.record(&jail, B, 1000, 1),
            Outcome::Counted { count: 1 }
        );
        assert_eq!(
            tracker.record(&jail, A, 1030, 1),
            Outcome::Counted { count: 2 }
        );
        // The first hit leaves the window at 1060.
        assert_eq!(
            tracker.record(&jail, A, 1060, 1),
            Outcome::Counted { count: 2 }
        );
        assert_eq!(
            tracker.record(&jail, A, 1061, 1),
            Outcome::Ban(BanDecision {
                source: A,
                ttl_secs: 100,
                nth: 1,
                count: 3
            })
        );
        // Lines of a banned source that were already in the log count for nothing.
        assert_eq!(tracker.record(&jail, A, 1062, 1), Outcome::AlreadyBanned);
        assert_eq!(tracker.banned(1100).count(), 1);
        assert_eq!(tracker.banned(1161).count(), 0);
        assert_eq!(
            tracker.record(&jail, A, 1161, 1),
            Outcome::Counted { count: 1 }
        );
    }

    #[test]
    fn weights_count_like_several_matches() {
        let jail = jail("max_retry = 10");
        let mut tracker = Tracker::default();
        assert_eq!(
            tracker.record(&jail, A, 5, 4),
            Outcome::Counted { count: 4 }
        );
        assert!(matches!(
            tracker.record(&jail, A, 6, 6),
            Outcome::Ban(BanDecision { count: 10, .. })
        ));
    }

    #[test]
    fn repeat_offenders_get_longer_bans_until_their_history_is_forgotten() {
        let jail = jail(
            "max_retry = 1\nban_time = \"10s\"\n\
             ban_time_increment = { factor = 2, max = \"35s\", forget_after = \"100s\" }",
        );
        let mut tracker = Tracker::default();
        let mut now = 0;
        let mut ttls = Vec::new();
        for _ in 0..4 {
            match tracker.record(&jail, A, now, 1) {
                Outcome::Ban(decision) => {
                    ttls.push((decision.nth, decision.ttl_secs));
                    now += decision.ttl_secs;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(ttls, [(1, 10), (2, 20), (3, 35), (4, 35)]);
        // The history survives a restart (it is serialized) …
        let restored: Tracker =
            serde_json::from_str(&serde_json::to_string(&tracker).expect("encode"))
                .expect("decode");
        assert_eq!(restored, tracker);
        // … and is forgotten 100 s after the last ban.
        let mut tracker = restored;
        now += 100;
        assert!(tracker.prune(&jail, now));
        assert!(tracker.sources.is_empty(), "{tracker:?}");
        assert!(matches!(
            tracker.record(&jail, A, now, 1),
            Outcome::Ban(BanDecision {
                nth: 1,
                ttl_secs: 10,
                ..
            })
        ));
    }

    #[test]
    fn a_refused_or_lifted_ban_counts_again() {
        let jail = jail("max_retry = 1\nban_time = \"10s\"\nban_time_increment = { factor = 3 }");
        let mut tracker = Tracker::default();
        assert!(matches!(tracker.record(&jail, A, 0, 1), Outcome::Ban(_)));
        tracker.unban(A);
        assert!(matches!(
            tracker.record(&jail, A, 1, 1),
            Outcome::Ban(BanDecision {
                nth: 1,
                ttl_secs: 10,
                ..
            })
        ));
        tracker.lifted(A);
        assert!(matches!(
            tracker.record(&jail, A, 2, 1),
            Outcome::Ban(BanDecision {
                nth: 2,
                ttl_secs: 30,
                ..
            })
        ));
    }
}
