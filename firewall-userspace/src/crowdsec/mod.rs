//! The CrowdSec bouncer's own parts: reading what the Local API (LAPI) says, without touching the
//! firewall. CrowdSec decides (its scenarios, its community blocklist, `cscli decisions add`) and
//! keeps the decisions; apifw enforces them in XDP, so the LAPI stays the source of truth and
//! apifw only mirrors it.
//!
//! - [`duration`]: Go durations, the LAPI's way of saying how long a decision lasts;
//! - [`decisions`]: an answer of the decision stream, validated whole into bans to enforce and
//!   lift (or refused whole, with the decision that spoiled it);
//! - [`client`]: the HTTP requests, bounded in time and size: the bouncer's stream, and the
//!   agent side's login and alerts;
//! - [`alerts`]: the agent side's payloads: this host's bans as alerts with a decision, and the
//!   LAPI's answers to a watcher.
//!
//! The engine applies a validated answer (`engine/crowdsec.rs`: the ban map, the allowlist, the
//! audit log) and queues the bans to push (`engine/crowdsec_push.rs`); the daemon polls
//! (`daemon/crowdsec.rs`) and pushes (`daemon/crowdsec_push.rs`).

pub mod alerts;
pub mod client;
pub mod decisions;
pub mod duration;
#[cfg(test)]
pub mod fake_lapi;

pub use alerts::BanToPush;
pub use client::{LapiClient, LapiError, watcher::WatcherClient};
pub use decisions::{DecisionBatch, DecisionError, DecisionFilter, parse_stream};
pub use duration::GoDuration;
