//! The agent side's payloads: this host's bans as CrowdSec alerts, and the LAPI's answers to a
//! watcher (its login, the alerts it created). No I/O and no firewall here.
//!
//! **One alert per ban, with one decision.** The LAPI keeps an alert that carries decisions as
//! sent (its profiles only decide for alerts without any), so the decision is ours: type `ban`,
//! scope `Ip` (the address alone) or `Range` (a CIDR), origin [`ORIGIN`], and a scenario naming
//! what banned (`apifw/jail-<jail>`, `apifw/rate-limit-<rule>`). Every field the LAPI's
//! swagger marks as required for `models.Alert` (1.4.x) is sent: `scenario`, `scenario_hash`,
//! `scenario_version`, `message`, `events_count`, `start_at`, `stop_at`, `capacity`,
//! `leakspeed`, `simulated`, `events` and `source`; a LAPI refuses an alert without one (422).
//!
//! **The decision ends when the ban does.** The LAPI sets a decision's end to the alert's
//! `stop_at` plus the decision's `duration` (`CreateAlertBulk` in 1.4.x), not to the time it
//! received it. So `stop_at` is when the ban was made and `duration` its whole length: a push
//! retried after an outage does not lengthen the ban anywhere, and the decision never outlasts
//! the ban on the host that made it (seconds are truncated), which is what lets that host take
//! the decision back through its own decision stream without writing anything
//! (`engine/crowdsec.rs`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[cfg(test)]
mod tests;

/// The origin of the decisions apifw pushes (a bouncer's `crowdsec.origins` can select them).
pub const ORIGIN: &str = "apifw";

/// A ban this host made, to push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanToPush {
    /// The banned host (/32, /128: scope `Ip`) or network (scope `Range`).
    pub prefix: IpNet,
    /// What banned it: `apifw/jail-<jail>` or `apifw/rate-limit-<rule>`.
    pub scenario: String,
    /// Why, in words (the alert's message).
    pub message: String,
    /// The weight of the matches that led to the ban.
    pub events_count: u64,
    /// When the ban was made (Unix seconds).
    pub started_unix: u64,
    /// How long it lasts from then, in seconds.
    pub duration_secs: u64,
}

impl BanToPush {
    /// When the ban ends (Unix seconds).
    pub fn ends_unix(&self) -> u64 {
        self.started_unix.saturating_add(self.duration_secs)
    }

    fn is_host(&self) -> bool {
        self.prefix.prefix_len() == self.prefix.max_prefix_len()
    }
}

#[derive(Serialize)]
struct Alert<'a> {
    scenario: &'a str,
    scenario_hash: &'a str,
    scenario_version: &'a str,
    message: &'a str,
    events_count: i32,
    start_at: String,
    stop_at: String,
    capacity: i32,
    leakspeed: &'a str,
    simulated: bool,
    remediation: bool,
    events: [(); 0],
    source: Source,
    decisions: [Decision<'a>; 1],
}

#[derive(Serialize)]
struct Source {
    scope: &'static str,
    value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    range: Option<String>,
}

#[derive(Serialize)]
struct Decision<'a> {
    duration: String,
    origin: &'static str,
    scenario: &'a str,
    scope: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    value: String,
}

/// RFC 3339 in UTC, to the second (`2026-12-05T05:16:40Z`).
fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// The body of `POST /v1/alerts`: a JSON array, one alert per ban.
pub fn alerts_body(bans: &[BanToPush]) -> Vec<u8> {
    let alerts: Vec<Alert<'_>> = bans
        .iter()
        .map(|ban| {
            let (scope, value) = if ban.is_host() {
                ("Ip", ban.prefix.addr().to_string())
            } else {
                ("Range", ban.prefix.trunc().to_string())
            };
            let at = rfc3339(ban.started_unix);
            Alert {
                scenario: &ban.scenario,
                scenario_hash: "",
                scenario_version: env!("CARGO_PKG_VERSION"),
                message: &ban.message,
                events_count: i32::try_from(ban.events_count).unwrap_or(i32::MAX),
                start_at: at.clone(),
                stop_at: at,
                capacity: 0,
                leakspeed: "0s",
                simulated: false,
                remediation: true,
                events: [],
                source: Source {
                    scope,
                    value: value.clone(),
                    ip: ban.is_host().then(|| value.clone()),
                    range: (!ban.is_host()).then(|| value.clone()),
                },
                decisions: [Decision {
                    duration: format!("{}s", ban.duration_secs),
                    origin: ORIGIN,
                    scenario: &ban.scenario,
                    scope,
                    kind: "ban",
                    value,
                }],
            }
        })
        .collect();
    serde_json::to_vec(&alerts).unwrap_or_else(|_| b"[]".to_vec())
}

/// Why an answer of the LAPI to a watcher cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// Not the JSON expected.
    #[error("the answer to {request} is not the JSON expected ({expected})")]
    Json {
        /// `POST /v1/watchers/login` or `POST /v1/alerts`.
        request: &'static str,
        /// What was expected.
        expected: &'static str,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// The login answer's token cannot be sent back in a header.
    #[error(
        "the answer to POST /v1/watchers/login has no usable token ({0} bytes, empty or with \
         characters an HTTP header cannot carry)"
    )]
    Token(usize),
}

/// A token of the LAPI: what a watcher sends as `Authorization: Bearer …`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The JWT.
    pub token: String,
    /// When it expires (Unix seconds), if the answer said so in a form read here.
    pub expires_unix: Option<u64>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("token", &"<redacted>")
            .field("expires_unix", &self.expires_unix)
            .finish()
    }
}

#[derive(Deserialize)]
struct LoginAnswer {
    token: String,
    #[serde(default)]
    expire: Option<String>,
}

/// Reads the answer to `POST /v1/watchers/login`: `{"code":200,"expire":"…","token":"…"}`.
pub fn parse_login(body: &[u8]) -> Result<Token, AnswerError> {
    let answer: LoginAnswer = serde_json::from_slice(body).map_err(|source| AnswerError::Json {
        request: "POST /v1/watchers/login",
        expected: r#"{"code":200,"expire":"…","token":"…"}"#,
        source,
    })?;
    let token = answer.token.trim();
    if token.is_empty() || !token.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(AnswerError::Token(answer.token.len()));
    }
    Ok(Token {
        token: token.to_owned(),
        expires_unix: answer.expire.as_deref().and_then(parse_rfc3339),
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum AlertId {
    Text(String),
    Number(i64),
}

/// Reads the answer to `POST /v1/alerts`: the ids of the alerts created (`["6","7"]`).
pub fn parse_created(body: &[u8]) -> Result<Vec<String>, AnswerError> {
    let ids: Vec<AlertId> = serde_json::from_slice(body).map_err(|source| AnswerError::Json {
        request: "POST /v1/alerts",
        expected: "an array of alert ids",
        source,
    })?;
    Ok(ids
        .into_iter()
        .map(|id| match id {
            AlertId::Text(text) => text,
            AlertId::Number(number) => number.to_string(),
        })
        .collect())
}

/// Reads an RFC 3339 time with any offset (Go's `time.RFC3339` writes the LAPI's local one:
/// `2026-12-05T09:16:40+01:00`), to Unix seconds.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let text = text.trim();
    let (local, offset_secs) = if let Some(utc) = text.strip_suffix(['Z', 'z']) {
        (utc, 0i64)
    } else {
        let sign_at = text.len().checked_sub(6)?;
        let (local, offset) = text.split_at(sign_at);
        let sign = match offset.as_bytes()[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let hours: i64 = offset.get(1..3)?.parse().ok()?;
        let minutes: i64 = offset.get(4..6)?.parse().ok()?;
        if offset.as_bytes()[3] != b':' {
            return None;
        }
        (local, sign * (hours * 3600 + minutes * 60))
    };
    let at = humantime::parse_rfc3339_weak(local).ok()?;
    let unix = i64::try_from(at.duration_since(UNIX_EPOCH).ok()?.as_secs()).ok()?;
    u64::try_from(unix - offset_secs).ok()
}

/// Now, in Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}
