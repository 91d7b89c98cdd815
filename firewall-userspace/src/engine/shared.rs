//! What the engine publishes for the daemon's `/metrics` endpoint, which reads it at scrape time
//! without taking the engine's lock.

use std::collections::HashMap;

/// Daemon-side values the endpoint exports.
#[derive(Debug, Default)]
pub struct Shared {
    /// Interface name of each counter slot.
    pub interfaces: HashMap<u32, String>,
    /// Rule name of each rule slot.
    pub rules: HashMap<u32, String>,
    /// Entries per list (`block`, `allow`).
    pub lists: Vec<(&'static str, u64)>,
    /// (map, entries, capacity) of maps whose fill the engine knows.
    pub fill: Vec<(&'static str, u64, u64)>,
    /// Capacity of maps counted at scrape time.
    pub capacity: HashMap<&'static str, u64>,
    /// Policy version.
    pub policy_version: u64,
    /// Successful reloads.
    pub reloads: u64,
    /// Failed reloads.
    pub reload_failures: u64,
    /// Control requests by (verb, result).
    pub requests: HashMap<(String, &'static str), u64>,
    /// Per jail: name, counters, bans in force.
    pub jails: Vec<(String, crate::jails::JailCounters, u64)>,
    /// The program's run statistics, as of the last tick.
    pub program: Option<crate::dataplane::stats::ProgramRuns>,
    /// Kernel memory of each map, as of the last tick.
    pub memory: Vec<crate::control::MapMemory>,
    /// SYN cookies of each cookie port, as of the last tick.
    pub syn_cookies: Vec<crate::control::CookieStatus>,
    /// The CrowdSec link, when the policy has one.
    pub crowdsec: Option<CrowdsecMetrics>,
}

/// What the metrics export of the CrowdSec link.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CrowdsecMetrics {
    /// Hosts and ranges banned by its decisions.
    pub held: u64,
    /// Syncs applied.
    pub syncs: u64,
    /// When the last sync was applied (Unix seconds).
    pub last_sync_unix: Option<u64>,
    /// Failed syncs by kind (`timeout`, `connect`, `invalid_answer`, `full`, ...).
    pub errors: std::collections::BTreeMap<&'static str, u64>,
    /// Decisions not enforced, by reason (`not_ban`, `expired`, `allowlisted`, ...).
    pub skipped: std::collections::BTreeMap<&'static str, u64>,
    /// The push side, when the policy has machine credentials.
    pub push: Option<CrowdsecPushMetrics>,
}

/// What the metrics export of the push side (this host's bans sent to the LAPI as alerts).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CrowdsecPushMetrics {
    /// Bans the LAPI took.
    pub pushed: u64,
    /// Bans waiting to be pushed.
    pub queued: u64,
    /// Failed pushes by kind (`connect`, `timeout`, `forbidden`, `rejected`, ...).
    pub errors: std::collections::BTreeMap<&'static str, u64>,
    /// Bans not pushed, by reason (`queue_full`, `expired`, `rejected`, `disabled`).
    pub dropped: std::collections::BTreeMap<&'static str, u64>,
}
