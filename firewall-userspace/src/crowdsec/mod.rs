//! The CrowdSec bouncer's own parts: reading what the Local API (LAPI) says, without touching the
//! firewall. CrowdSec decides (its scenarios, its community blocklist, `cscli decisions add`) and
//! keeps the decisions; apifw enforces them in XDP, so the LAPI stays the source of truth and
//! apifw only mirrors it.
//!
//! - [`duration`]: Go durations, the LAPI's way of saying how long a decision lasts;
//! - [`decisions`]: an answer of the decision stream, validated whole into bans to enforce and
//!   lift (or refused whole, with the decision that spoiled it);
//! - [`client`]: the HTTP request, bounded in time and size.
//!
//! The engine applies a validated answer (`engine/crowdsec.rs`: the ban map, the allowlist, the
//! audit log) and the daemon polls (`daemon/crowdsec.rs`).

pub mod client;
pub mod decisions;
pub mod duration;
#[cfg(test)]
pub mod fake_lapi;

pub use client::{LapiClient, LapiError};
pub use decisions::{DecisionBatch, DecisionError, DecisionFilter, parse_stream};
pub use duration::GoDuration;
