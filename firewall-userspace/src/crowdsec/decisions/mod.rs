//! The LAPI's decision stream (`GET /v1/decisions/stream`), read into decisions the engine can
//! enforce. An answer is `{"new": [...] | null, "deleted": [...] | null}`, each decision
//! `{"id": 1, "origin": "cscli", "scope": "Ip", "type": "ban", "value": "203.0.113.77",
//! "duration": "1h59m59.84s", "scenario": "...", ...}`.
//!
//! What the network sends is input like any other, so an answer is checked whole before anything
//! is enforced: invalid JSON, a wrong shape, a duration that is not a Go duration, a value that is
//! not an address (scope `Ip`) or a network (scope `Range`), or a range with host bits set
//! (`203.0.113.5/24`: which network was meant is a guess, so it is refused, not masked) reject the
//! whole answer with an error naming the decision, and nothing of it is applied. What is valid but
//! not for this bouncer is skipped and counted: other types than `ban` (`captcha`, `throttle`),
//! other scopes (`Country`, `AS`, `Username`), scopes and origins the policy leaves out, and
//! decisions that have already expired (a zero or negative duration).

use std::{collections::BTreeMap, net::IpAddr, str::FromStr as _, time::Duration};

use ipnet::IpNet;
use serde::Deserialize;

use super::duration::{DurationError, GoDuration};
use crate::policy::crowdsec::{CrowdsecSettings, DecisionScope};

#[cfg(test)]
mod tests;

/// Which part of the answer a decision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamList {
    /// `new`: decisions to enforce.
    New,
    /// `deleted`: decisions to lift.
    Deleted,
}

impl std::fmt::Display for StreamList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::New => "new",
            Self::Deleted => "deleted",
        })
    }
}

/// Where a decision stands in the answer, for error messages: `new[3] (id 42)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The list.
    pub list: StreamList,
    /// Index in the list.
    pub index: usize,
    /// The decision's id, when it has one.
    pub id: Option<i64>,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "decision {}[{}]", self.list, self.index)?;
        if let Some(id) = self.id {
            write!(f, " (id {id})")?;
        }
        Ok(())
    }
}

/// Why an answer of the decision stream was refused; nothing of it is applied.
#[derive(Debug, thiserror::Error)]
pub enum DecisionError {
    /// Not JSON, or not the stream's shape (a field of the wrong type, a missing `value`).
    #[error(
        "the LAPI's answer is not a decision stream (`{{\"new\": [...], \"deleted\": [...]}}`)"
    )]
    Json(#[source] serde_json::Error),
    /// Valid JSON, but not an object.
    #[error(
        "the LAPI's answer is not a decision stream: expected a JSON object \
         `{{\"new\": [...], \"deleted\": [...]}}`, found {found}"
    )]
    Shape {
        /// What the answer starts with.
        found: String,
    },
    /// A decision to enforce has no duration.
    #[error("{at}: `{value}` has no duration")]
    MissingDuration {
        /// The decision.
        at: Position,
        /// Its value.
        value: String,
    },
    /// A duration is not a Go duration.
    #[error("{at}: `{value}` has an invalid duration")]
    Duration {
        /// The decision.
        at: Position,
        /// Its value.
        value: String,
        /// The parser's reason.
        #[source]
        source: DurationError,
    },
    /// A value is not an address (scope `Ip`) or a network (scope `Range`).
    #[error("{at}: scope {scope} value `{value}` is not {expected}")]
    Value {
        /// The decision.
        at: Position,
        /// Its scope.
        scope: &'static str,
        /// Its value.
        value: String,
        /// What the scope needs.
        expected: &'static str,
    },
    /// A range has host bits set.
    #[error(
        "{at}: range `{value}` has host bits set (the network would be {network}); refused rather \
         than guessed"
    )]
    HostBits {
        /// The decision.
        at: Position,
        /// Its value.
        value: String,
        /// The network with the host bits cleared.
        network: IpNet,
    },
}

impl DecisionError {
    /// A short name of the error's kind, for the metrics' `kind` label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Json(_) | Self::Shape { .. } => "invalid_answer",
            Self::MissingDuration { .. } | Self::Duration { .. } => "invalid_duration",
            Self::Value { .. } => "invalid_value",
            Self::HostBits { .. } => "host_bits",
        }
    }
}

/// Why a valid decision was not taken, for logs and the metrics' `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// A type other than `ban`.
    NotBan,
    /// A scope apifw cannot enforce (`Country`, `AS`, ...).
    UnknownScope,
    /// A scope the policy's `scopes` leaves out.
    ScopeFiltered,
    /// An origin the policy's `origins` leaves out.
    OriginFiltered,
    /// Already expired: a zero or negative duration.
    Expired,
}

impl SkipReason {
    /// The label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotBan => "not_ban",
            Self::UnknownScope => "unknown_scope",
            Self::ScopeFiltered => "scope_filtered",
            Self::OriginFiltered => "origin_filtered",
            Self::Expired => "expired",
        }
    }
}

/// A ban to enforce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The LAPI's id (every LAPI decision has one; `None` only from odd sources).
    pub id: Option<i64>,
    /// The banned host (/32, /128) or network.
    pub prefix: IpNet,
    /// Its scope.
    pub scope: DecisionScope,
    /// Who made it (`cscli`, `crowdsec`, `CAPI`, `lists`).
    pub origin: String,
    /// Why (`crowdsecurity/ssh-bf`), when the LAPI says.
    pub scenario: String,
    /// Time left when the LAPI answered.
    pub remaining: Duration,
}

/// A ban to lift.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    /// The LAPI's id of the deleted decision.
    pub id: Option<i64>,
    /// The host or network it banned.
    pub prefix: IpNet,
}

/// One answer of the stream, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecisionBatch {
    /// Bans to enforce.
    pub new: Vec<Decision>,
    /// Bans to lift.
    pub deleted: Vec<Deletion>,
    /// Decisions of `new` not taken, by reason.
    pub skipped: BTreeMap<SkipReason, u64>,
}

/// Which decisions the policy takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionFilter {
    /// Origins taken (empty: all).
    pub origins: Vec<String>,
    /// Scopes taken.
    pub scopes: Vec<DecisionScope>,
}

impl DecisionFilter {
    /// The filter of a `[crowdsec]` section.
    pub fn of(settings: &CrowdsecSettings) -> Self {
        Self {
            origins: settings.origins.clone(),
            scopes: settings.scopes.clone(),
        }
    }

    /// Every origin, both scopes.
    pub fn everything() -> Self {
        Self {
            origins: Vec::new(),
            scopes: vec![DecisionScope::Ip, DecisionScope::Range],
        }
    }

    fn takes_origin(&self, origin: &str) -> bool {
        self.origins.is_empty()
            || self
                .origins
                .iter()
                .any(|taken| taken.eq_ignore_ascii_case(origin))
    }
}

#[derive(Debug, Deserialize)]
struct RawStream {
    #[serde(default)]
    new: Option<Vec<RawDecision>>,
    #[serde(default)]
    deleted: Option<Vec<RawDecision>>,
}

#[derive(Debug, Deserialize)]
struct RawDecision {
    #[serde(default)]
    id: Option<i64>,
    #[serde(default)]
    origin: Option<String>,
    scope: String,
    #[serde(rename = "type")]
    kind: String,
    value: String,
    #[serde(default)]
    duration: Option<String>,
    #[serde(default)]
    scenario: Option<String>,
}

/// Reads a decision's value in its scope: an address (`Ip`) or a network without host bits
/// (`Range`; a bare address there is its host network).
fn prefix_of(at: Position, scope: DecisionScope, value: &str) -> Result<IpNet, DecisionError> {
    let text = value.trim();
    match scope {
        DecisionScope::Ip => {
            IpAddr::from_str(text)
                .map(IpNet::from)
                .map_err(|_| DecisionError::Value {
                    at,
                    scope: scope.as_str(),
                    value: value.to_owned(),
                    expected: "an IPv4 or IPv6 address",
                })
        }
        DecisionScope::Range => {
            let net = IpNet::from_str(text)
                .or_else(|_| IpAddr::from_str(text).map(IpNet::from))
                .map_err(|_| DecisionError::Value {
                    at,
                    scope: scope.as_str(),
                    value: value.to_owned(),
                    expected: "an IPv4 or IPv6 network (ADDR/LEN)",
                })?;
            if net.trunc() != net {
                return Err(DecisionError::HostBits {
                    at,
                    value: value.to_owned(),
                    network: net.trunc(),
                });
            }
            Ok(net)
        }
    }
}

/// Validates one answer of the decision stream against `filter`: everything or nothing.
pub fn parse_stream(body: &[u8], filter: &DecisionFilter) -> Result<DecisionBatch, DecisionError> {
    // serde reads a struct from a JSON array too; the stream is an object, and anything else
    // (an array, a string, an HTML error page) is refused as such.
    let first = body.iter().find(|byte| !byte.is_ascii_whitespace());
    if first != Some(&b'{') {
        let shown: String = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
        return Err(DecisionError::Shape {
            found: if shown.trim().is_empty() {
                "an empty answer".to_owned()
            } else {
                format!("`{}`", shown.trim())
            },
        });
    }
    let raw: RawStream = serde_json::from_slice(body).map_err(DecisionError::Json)?;
    let mut batch = DecisionBatch::default();
    let new = raw.new.unwrap_or_default();
    batch.new.reserve(new.len());
    for (index, decision) in new.into_iter().enumerate() {
        let at = Position {
            list: StreamList::New,
            index,
            id: decision.id,
        };
        // Validity first: a malformed decision rejects the answer even if it would be skipped.
        let scope = DecisionScope::parse(&decision.scope);
        let prefix = scope
            .map(|scope| prefix_of(at, scope, &decision.value))
            .transpose()?;
        let duration = match &decision.duration {
            Some(text) => GoDuration::parse(text).map_err(|source| DecisionError::Duration {
                at,
                value: decision.value.clone(),
                source,
            })?,
            None => {
                return Err(DecisionError::MissingDuration {
                    at,
                    value: decision.value,
                });
            }
        };
        let origin = decision.origin.unwrap_or_default();
        let skip = if !decision.kind.eq_ignore_ascii_case("ban") {
            Some(SkipReason::NotBan)
        } else if scope.is_none() {
            Some(SkipReason::UnknownScope)
        } else if !scope.is_some_and(|scope| filter.scopes.contains(&scope)) {
            Some(SkipReason::ScopeFiltered)
        } else if !filter.takes_origin(&origin) {
            Some(SkipReason::OriginFiltered)
        } else {
            None
        };
        let remaining = duration.remaining();
        match (skip, scope, prefix, remaining) {
            (None, Some(scope), Some(prefix), Some(remaining)) => batch.new.push(Decision {
                id: decision.id,
                prefix,
                scope,
                origin,
                scenario: decision.scenario.unwrap_or_default(),
                remaining,
            }),
            (Some(reason), ..) => *batch.skipped.entry(reason).or_insert(0) += 1,
            _ => *batch.skipped.entry(SkipReason::Expired).or_insert(0) += 1,
        }
    }
    for (index, decision) in raw.deleted.unwrap_or_default().into_iter().enumerate() {
        let at = Position {
            list: StreamList::Deleted,
            index,
            id: decision.id,
        };
        let scope = DecisionScope::parse(&decision.scope);
        let prefix = scope
            .map(|scope| prefix_of(at, scope, &decision.value))
            .transpose()?;
        if let Some(text) = &decision.duration {
            GoDuration::parse(text).map_err(|source| DecisionError::Duration {
                at,
                value: decision.value.clone(),
                source,
            })?;
        }
        // A deletion lifts only what this bouncer may have enforced: bans of its scopes.
        if let (true, Some(scope), Some(prefix)) =
            (decision.kind.eq_ignore_ascii_case("ban"), scope, prefix)
            && filter.scopes.contains(&scope)
        {
            batch.deleted.push(Deletion {
                id: decision.id,
                prefix,
            });
        }
    }
    Ok(batch)
}
