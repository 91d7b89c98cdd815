//! The bouncer's loop: poll the LAPI's decision stream every `crowdsec.poll_interval` and hand
//! each validated answer to the engine.
//!
//! The first request asks for every active decision (`startup=true`); later ones only for what
//! changed. Any failure (the LAPI unreachable, hanging, refusing the key, a malformed answer, a
//! ban map without room) is logged, counted by kind and leaves the bans in force; the next
//! request then asks for everything again, since the LAPI may count the failed answer's changes
//! as delivered. The settings are read from the engine every round, so a reload that changes
//! `[crowdsec]` takes effect at the next poll (with a full resync), and one that removes it
//! lifts the CrowdSec bans.
//!
//! The engine's lock is held only to apply an answer: fetching (bounded by `crowdsec.timeout`)
//! and parsing (on a blocking thread: 100k decisions take a moment) happen without it, so a slow
//! LAPI never delays the control socket or the one-second tick.

use std::{sync::Arc, time::Duration};

use tokio::sync::Mutex;
use tracing::{info, warn};

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
    /// The settings of the last round.
    current: Option<CrowdsecSettings>,
    /// Failed rounds in a row.
    failures: u64,
}

impl Default for Follower {
    fn default() -> Self {
        Self {
            startup: true,
            current: None,
            failures: 0,
        }
    }
}

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
        match sync(engine, &settings, self.startup).await {
            Ok(_) => {
                if self.failures > 0 {
                    info!(
                        lapi = settings.lapi_url,
                        failed_rounds = self.failures,
                        "CrowdSec sync resumed"
                    );
                }
                self.failures = 0;
                self.startup = false;
            }
            Err(err) => {
                self.failures += 1;
                let message = chain(&err);
                warn!(
                    lapi = settings.lapi_url,
                    kind = err.kind(),
                    error = %message,
                    "CrowdSec sync failed; the bans in force stay, the next poll asks for every \
                     decision"
                );
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
