//! Jails: layer-7 evidence to kernel bans. Each `[[jail]]` of the policy follows an access log
//! (and/or takes abuse reports from local services), counts the requests it matches per source
//! over `find_time`, and when a source reaches `max_retry` asks the engine to ban it — through
//! the same path as `apifw ban add`, so the ban is in the kernel's ban map, in the state file, in
//! the audit log and in `apifw bans`. The engine never bans an allowlisted source.
//!
//! * [`crate::policy::jails`]: the policy section (validated with the rest of the policy);
//! * [`parse`]: access-log lines to requests, and the client address behind trusted proxies;
//! * [`logfile`]: following a log across rotation;
//! * [`tracker`]: windows, ban decisions, repeat offenders.
//!
//! What a jail must remember across restarts (log positions, windows, ban history) lives in a
//! file of its own beside the state file ([`JailsState`]): following a busy log changes it
//! every second, which must not rewrite a state file holding a million imported entries.

pub mod logfile;
pub mod parse;
pub mod tracker;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use self::{
    logfile::{Follower, Position},
    tracker::{BanDecision, Outcome, Tracker},
};
use crate::{
    control::{JailBan, JailView, LastMatch},
    policy::jails::{JailConfig, LogFormat},
};

/// Version of the jail state file.
pub const JAILS_STATE_VERSION: u32 = 1;

/// What one jail keeps across restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedJail {
    /// The log the position belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
    /// Where the follower was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
    /// Windows and ban history.
    #[serde(default)]
    pub tracker: Tracker,
}

/// The jail state file (`<state file stem>.jails.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailsState {
    /// [`JAILS_STATE_VERSION`].
    pub version: u32,
    /// By jail name.
    #[serde(default)]
    pub jails: BTreeMap<String, PersistedJail>,
}

impl Default for JailsState {
    fn default() -> Self {
        Self {
            version: JAILS_STATE_VERSION,
            jails: BTreeMap::new(),
        }
    }
}

/// Why the jail state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JailsStateError {
    /// Unreadable.
    #[error("cannot read jail state {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Not a jail state of this version.
    #[error("jail state {} is corrupt or of another version", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
}

impl JailsState {
    /// Reads the jail state; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<Self, JailsStateError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(JailsStateError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let state: Self =
            serde_json::from_slice(&bytes).map_err(|source| JailsStateError::Corrupt {
                path: path.to_owned(),
                source,
            })?;
        if state.version != JAILS_STATE_VERSION {
            return Err(JailsStateError::Corrupt {
                path: path.to_owned(),
                source: serde::de::Error::custom(format!(
                    "version {} (this apifw reads {JAILS_STATE_VERSION})",
                    state.version
                )),
            });
        }
        Ok(state)
    }
}

/// Where the jail state of the daemon whose state file is `state_file` lives:
/// `apifw.state.json` → `apifw.jails.json`.
pub fn state_path(state_file: &Path) -> PathBuf {
    let name = state_file
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "apifw".into());
    let stem = name
        .strip_suffix(".state.json")
        .or_else(|| name.strip_suffix(".json"))
        .unwrap_or(&name);
    state_file.with_file_name(format!("{stem}.jails.json"))
}

/// Counters of one jail since the daemon started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JailCounters {
    /// Log lines read.
    pub lines: u64,
    /// Log lines that could not be parsed.
    pub unparsed: u64,
    /// Log lines that matched.
    pub matches: u64,
    /// Abuse reports counted.
    pub reports: u64,
    /// Bans made.
    pub bans: u64,
    /// Bans not made because the source is allowlisted.
    pub allowlisted: u64,
}

/// A jail at run time.
#[derive(Debug)]
struct Jail {
    config: JailConfig,
    follower: Option<Follower>,
    tracker: Tracker,
    counters: JailCounters,
    last_match: Option<LastMatch>,
    /// The last read error was logged (logged again only after a success).
    read_error_logged: bool,
}

/// A ban a jail asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanRequest {
    /// The jail.
    pub jail: String,
    /// The decision.
    pub decision: BanDecision,
    /// The jail's `find_time`, for the ban's comment.
    pub find_time_secs: u64,
}

impl BanRequest {
    /// The comment the ban carries in the state file, `apifw bans` and the audit log.
    pub fn comment(&self) -> String {
        format!(
            "jail {}: {} matches within {}s (ban #{})",
            self.jail, self.decision.count, self.find_time_secs, self.decision.nth
        )
    }
}

/// Where an abuse report was counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counted {
    /// The jail.
    pub jail: String,
    /// What the tracker did.
    pub outcome: Outcome,
    /// The jail's `max_retry`.
    pub max_retry: u32,
}

/// Why a report could not be counted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    /// It names a jail the policy does not have.
    #[error("no jail `{0}` in the policy")]
    UnknownJail(String),
    /// It names none, and no jail takes reports.
    #[error(
        "no jail takes abuse reports: add a `[[jail]]` without a `log` (or with `reports = \
         true`) to the policy, or name a jail in the report"
    )]
    NoReportJail,
}

/// Every jail of the policy.
#[derive(Debug, Default)]
pub struct Jails {
    jails: Vec<Jail>,
    /// Something worth persisting changed since [`Jails::take_dirty`].
    dirty: bool,
}

fn make_jail(config: &JailConfig, saved: Option<&PersistedJail>) -> Jail {
    let position = saved
        .filter(|saved| saved.log == config.log)
        .and_then(|saved| saved.position);
    Jail {
        follower: config
            .log
            .as_deref()
            .map(|log| Follower::new(log, position)),
        tracker: saved.map(|saved| saved.tracker.clone()).unwrap_or_default(),
        config: config.clone(),
        counters: JailCounters::default(),
        last_match: None,
        read_error_logged: false,
    }
}

impl Jails {
    /// The jails of `configs`, resuming from `saved`.
    pub fn new(configs: &[JailConfig], saved: &JailsState) -> Self {
        Self {
            jails: configs
                .iter()
                .map(|config| make_jail(config, saved.jails.get(&config.name)))
                .collect(),
            // Positions of logs that existed at start are worth saving at once.
            dirty: !configs.is_empty(),
        }
    }

    /// Takes a new policy's jails. A jail keeps its counters and history by name, and its
    /// follower when it follows the same log.
    pub fn reconfigure(&mut self, configs: &[JailConfig]) {
        let mut old: BTreeMap<String, Jail> = self
            .jails
            .drain(..)
            .map(|jail| (jail.config.name.clone(), jail))
            .collect();
        for config in configs {
            let jail = match old.remove(&config.name) {
                Some(mut jail) => {
                    if jail.config.log != config.log {
                        let saved = PersistedJail {
                            log: None,
                            position: None,
                            tracker: jail.tracker.clone(),
                        };
                        jail.follower = make_jail(config, Some(&saved)).follower;
                    }
                    jail.config = config.clone();
                    jail
                }
                None => make_jail(config, None),
            };
            self.jails.push(jail);
        }
        self.dirty = true;
    }

    /// Whether the policy has jails.
    pub fn is_empty(&self) -> bool {
        self.jails.is_empty()
    }

    /// Reads every log, counts matches at `now` (unix seconds) and returns the bans to make.
    pub fn poll(&mut self, now: u64) -> Vec<BanRequest> {
        let mut bans = Vec::new();
        for jail in &mut self.jails {
            self.dirty |= jail.tracker.prune(&jail.config, now);
            let Some(follower) = &mut jail.follower else {
                continue;
            };
            let before = follower.position();
            let lines = match follower.poll() {
                Ok(lines) => {
                    jail.read_error_logged = false;
                    lines
                }
                Err(err) => {
                    if !jail.read_error_logged {
                        warn!(jail = jail.config.name, err = %crate::errors::chain(&err), "cannot follow the access log; retrying every second");
                        jail.read_error_logged = true;
                    }
                    Vec::new()
                }
            };
            self.dirty |= follower.position() != before;
            for line in lines {
                jail.counters.lines += 1;
                let record = match parse::parse_line(&line, jail.config.format, &jail.config.fields)
                {
                    Ok(record) => record,
                    Err(err) => {
                        jail.counters.unparsed += 1;
                        if jail.counters.unparsed <= 10 {
                            warn!(jail = jail.config.name, %err, line, "access-log line not understood");
                        }
                        continue;
                    }
                };
                if !parse::matches(&jail.config, &record) {
                    continue;
                }
                let source = parse::client_address(&record, &jail.config.trusted_proxies);
                jail.counters.matches += 1;
                jail.last_match = Some(LastMatch {
                    source,
                    at_unix: now,
                    detail: format!("{} {} {}", record.method, record.path, record.status),
                });
                let outcome = jail.tracker.record(&jail.config, source, now, 1);
                self.dirty = true;
                if let Outcome::Ban(decision) = outcome {
                    bans.push(BanRequest {
                        jail: jail.config.name.clone(),
                        decision,
                        find_time_secs: jail.config.find_time_secs,
                    });
                }
            }
        }
        bans
    }

    /// Counts an abuse report against `source` in the named jail, or in the first jail that
    /// takes reports.
    pub fn report(
        &mut self,
        jail: Option<&str>,
        source: IpAddr,
        weight: u32,
        reason: &str,
        now: u64,
    ) -> Result<(Counted, Option<BanRequest>), ReportError> {
        let found = match jail {
            Some(name) => self
                .jails
                .iter_mut()
                .find(|jail| jail.config.name == name)
                .ok_or_else(|| ReportError::UnknownJail(name.to_owned()))?,
            None => self
                .jails
                .iter_mut()
                .find(|jail| jail.config.reports)
                .ok_or(ReportError::NoReportJail)?,
        };
        found.counters.reports += 1;
        found.last_match = Some(LastMatch {
            source,
            at_unix: now,
            detail: format!("report (weight {weight}): {reason}"),
        });
        let outcome = found.tracker.record(&found.config, source, now, weight);
        self.dirty = true;
        let ban = match outcome {
            Outcome::Ban(decision) => Some(BanRequest {
                jail: found.config.name.clone(),
                decision,
                find_time_secs: found.config.find_time_secs,
            }),
            _ => None,
        };
        Ok((
            Counted {
                jail: found.config.name.clone(),
                outcome,
                max_retry: found.config.max_retry,
            },
            ban,
        ))
    }

    /// A ban the jail asked for was made.
    pub fn banned(&mut self, request: &BanRequest) {
        if let Some(jail) = self.find_mut(&request.jail) {
            jail.counters.bans += 1;
            info!(
                jail = request.jail,
                source = %request.decision.source,
                ttl_secs = request.decision.ttl_secs,
                nth = request.decision.nth,
                "jail banned a source"
            );
        }
    }

    /// A ban the jail asked for was not made: the source is allowlisted (`allowlisted`), or the
    /// engine failed. The source counts again from now, and its history is as before.
    pub fn refused(&mut self, request: &BanRequest, allowlisted: bool) {
        if let Some(jail) = self.find_mut(&request.jail) {
            jail.tracker.unban(request.decision.source);
            if allowlisted {
                jail.counters.allowlisted += 1;
            }
        }
        self.dirty = true;
    }

    /// The ban of `source` was lifted by an operator: every jail counts it again.
    pub fn lifted(&mut self, source: IpAddr) {
        for jail in &mut self.jails {
            jail.tracker.lifted(source);
        }
        self.dirty = true;
    }

    fn find_mut(&mut self, name: &str) -> Option<&mut Jail> {
        self.jails.iter_mut().find(|jail| jail.config.name == name)
    }

    /// Whether anything worth persisting changed since the last call.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// What the jail state file holds.
    pub fn state(&self) -> JailsState {
        JailsState {
            version: JAILS_STATE_VERSION,
            jails: self
                .jails
                .iter()
                .map(|jail| {
                    (
                        jail.config.name.clone(),
                        PersistedJail {
                            log: jail.config.log.clone(),
                            position: jail.follower.as_ref().and_then(Follower::position),
                            tracker: jail.tracker.clone(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// Counters per jail, for the metrics.
    pub fn counters(&self, now: u64) -> Vec<(String, JailCounters, u64)> {
        self.jails
            .iter()
            .map(|jail| {
                (
                    jail.config.name.clone(),
                    jail.counters,
                    jail.tracker.banned(now).count() as u64,
                )
            })
            .collect()
    }

    /// `GET /v1/jails`.
    pub fn views(&self, now: u64) -> Vec<JailView> {
        self.jails
            .iter()
            .map(|jail| {
                let config = &jail.config;
                JailView {
                    name: config.name.clone(),
                    log: config.log.clone(),
                    format: match config.format {
                        LogFormat::Combined => "combined",
                        LogFormat::Json => "json",
                    }
                    .into(),
                    reports: config.reports,
                    max_retry: config.max_retry,
                    find_time_secs: config.find_time_secs,
                    ban_time_secs: config.ban_time_secs,
                    lines: jail.counters.lines,
                    unparsed: jail.counters.unparsed,
                    matches: jail.counters.matches,
                    reports_counted: jail.counters.reports,
                    bans: jail.counters.bans,
                    allowlisted: jail.counters.allowlisted,
                    tracked: jail.tracker.tracked(),
                    current_bans: jail
                        .tracker
                        .banned(now)
                        .map(|(source, record)| JailBan {
                            source: *source,
                            remaining_secs: record.banned_until.saturating_sub(now),
                            ban_count: record.bans,
                        })
                        .collect(),
                    last_match: jail.last_match.clone(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
