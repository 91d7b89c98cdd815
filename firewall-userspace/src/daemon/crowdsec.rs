//! The bouncer's loop: poll the LAPI's decision stream every `crowdsec.poll_interval` and hand
//! each validated answer to the engine.
//!
//! The first request asks for every active decision (`startup=true`); later ones only for what
//! changed, except that every `crowdsec.resync_interval` (10 minutes) the whole stream is asked
//! for again: deltas can miss decisions made while a poll is answered (seen with Debian's LAPI
//! and a bulk `cscli decisions import`), and a full answer lifts and adds whatever drifted. Any failure (the LAPI unreachable, hanging, refusing the key, a malformed answer, a
//! ban map without room) is logged, counted by kind and leaves the bans in force; the next
//! request then asks for everything again, since the LAPI may count the failed answer's changes
//! as delivered. The settings are read from the engine every round, so a reload that changes
//! `[crowdsec]` takes effect at the next poll (with a full resync), and one that removes it
//! lifts the CrowdSec bans.
//!
//! The engine's lock is held only to apply an answer: fetching (bounded by `crowdsec.timeout`)
//! and parsing (on a blocking thread: 100k decisions take a moment) happen without it, so a slow
//! LAPI never delays the control socket or the one-second tick.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::{
    crowdsec::{DecisionError, DecisionFilter, LapiClient, LapiError, parse_stream},
    engine::{CrowdsecSync, Engine, EngineError},
    errors::chain,
    policy::crowdsec::CrowdsecSettings,
};

/// How often a daemon without a `[crowdsec]` section looks again (after a reload).
const IDLE: Duration = Duration::from_secs(1);

/// Why one sync failed; the bans in force stay.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The request failed.
    #[error(transparent)]
    Lapi(#[from] LapiError),
    /// The answer was refused whole.
    #[error("the LAPI's answer was refused, nothing of it was applied")]
    Answer(#[source] DecisionError),
    /// The engine could not apply it.
    #[error("cannot apply the LAPI's decisions")]
    Apply(#[source] EngineError),
    /// The parser's thread died.
    #[error("parsing the LAPI's answer failed")]
    Parser(#[source] tokio::task::JoinError),
}

impl SyncError {
    /// A short name of the error's kind, for the metrics' `kind` label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Lapi(err) => err.kind(),
            Self::Answer(err) => err.kind(),
            Self::Apply(EngineError::Full(_)) => "ban_map_full",
            Self::Apply(_) | Self::Parser(_) => "apply",
        }
    }
}

/// One request and its application: the whole stream (`startup`) or what changed.
pub async fn sync(
    engine: &Mutex<Engine>,
    settings: &CrowdsecSettings,
    startup: bool,
) -> Result<CrowdsecSync, SyncError> {
    let client = LapiClient::new(settings)?;
    let body = client.decision_stream(startup).await?;
    let filter = DecisionFilter::of(settings);
    let batch = tokio::task::spawn_blocking(move || parse_stream(&body, &filter))
        .await
        .map_err(SyncError::Parser)?
        .map_err(SyncError::Answer)?;
    engine
        .lock()
        .await
        .crowdsec_apply(batch, startup)
        .map_err(SyncError::Apply)
}

/// The loop's memory between rounds.
#[derive(Debug)]
pub struct Follower {
    /// Whether the next request asks for every decision.
    startup: bool,
    /// When the last full answer was applied.
    last_full: Option<Instant>,
    /// The settings of the last round.
    current: Option<CrowdsecSettings>,
    /// Failed rounds in a row.
    failures: u64,
    /// The last failure logged as a warning, so that an outage is not a warning every poll.
    last_warned: Option<String>,
}

impl Default for Follower {
    fn default() -> Self {
        Self {
            startup: true,
            last_full: None,
            current: None,
            failures: 0,
            last_warned: None,
        }
    }
}

/// Failed rounds in a row after which an unchanged failure is logged as a warning again.
const WARN_EVERY: u64 = 60;

impl Follower {
    /// One round; returns how long to wait before the next.
    pub async fn round(&mut self, engine: &Mutex<Engine>) -> Duration {
        let settings = engine.lock().await.crowdsec_settings().cloned();
        let Some(settings) = settings else {
            self.startup = true;
            let mut engine = engine.lock().await;
            if self.current.take().is_some() || engine.crowdsec_held() > 0 {
                match engine.crowdsec_clear() {
                    Ok(sync) => info!(
                        removed = sync.removed,
                        "the policy no longer follows a CrowdSec LAPI: its bans were lifted"
                    ),
                    Err(err) => warn!(error = %err, "cannot lift the CrowdSec bans"),
                }
            }
            return IDLE;
        };
        if self.current.as_ref() != Some(&settings) {
            if self.current.is_some() {
                info!(
                    lapi = settings.lapi_url,
                    "CrowdSec settings changed: full resync"
                );
            }
            self.startup = true;
            self.current = Some(settings.clone());
        }
        if self
            .last_full
            .is_none_or(|at| at.elapsed() >= settings.resync_interval)
        {
            self.startup = true;
        }
        let full = self.startup;
        match sync(engine, &settings, full).await {
            Ok(_) => {
                if full {
                    self.last_full = Some(Instant::now());
                }
                if self.failures > 0 {
                    info!(
                        lapi = settings.lapi_url,
                        failed_rounds = self.failures,
                        "CrowdSec sync resumed"
                    );
                }
                self.failures = 0;
                self.last_warned = None;
                self.startup = false;
            }
            Err(err) => {
                self.failures += 1;
                let message = chain(&err);
                if self.last_warned.as_ref() != Some(&message)
                    || self.failures.is_multiple_of(WARN_EVERY)
                {
                    warn!(
                        lapi = settings.lapi_url,
                        kind = err.kind(),
                        error = %message,
                        failed_rounds = self.failures,
                        "CrowdSec sync failed; the bans in force stay, the next poll asks for \
                         every decision"
                    );
                    self.last_warned = Some(message.clone());
                } else {
                    debug!(kind = err.kind(), error = %message, "CrowdSec sync failed again");
                }
                engine.lock().await.crowdsec_failed(err.kind(), message);
                self.startup = true;
            }
        }
        settings.poll_interval
    }
}

/// Follows the LAPI named by the policy, forever (the daemon aborts the task when it stops).
pub async fn follow(engine: Arc<Mutex<Engine>>) {
    let mut follower = Follower::default();
    loop {
        let wait = follower.round(&engine).await;
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
#[path = "crowdsec_tests.rs"]
mod tests;
