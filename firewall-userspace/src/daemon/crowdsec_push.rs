//! The agent side's loop: push the bans the engine queued (`engine/crowdsec_push.rs`) to the
//! LAPI as alerts, beside the bouncer's loop (`daemon/crowdsec.rs`).
//!
//! Every second, or as soon as the engine queues a ban, the front of the queue (up to
//! [`BATCH`] bans) is taken under the engine's lock, sent without it (login when needed, then
//! `POST /v1/alerts`, each bounded by `crowdsec.timeout`), and the outcome handed back under the
//! lock again: the bans the LAPI took leave the queue; after a failure they stay at its front
//! and the next try waits 1 s, 2 s, 4 s ... up to [`MAX_BACKOFF`], so a LAPI that is down costs
//! one request a minute, while enforcement never waits for it. Bans the LAPI refuses as invalid
//! (400, 422) are dropped, since sending them again cannot help. An outage is logged as one
//! warning (again every [`WARN_EVERY`] failures), not one per try.

use std::{sync::Arc, time::Duration};

use hyper::body::Bytes;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::{
    crowdsec::{LapiError, WatcherClient, alerts::alerts_body},
    engine::{Engine, PushBatch},
    errors::chain,
    policy::crowdsec::CrowdsecSettings,
};

/// Bans sent in one request, at most.
pub const BATCH: usize = 100;
/// The wait between two looks at an empty queue (a queued ban wakes the loop sooner).
const IDLE: Duration = Duration::from_secs(1);
/// The longest wait after failures.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Failed tries in a row after which an unchanged failure is logged as a warning again.
const WARN_EVERY: u32 = 60;

/// The loop's memory between rounds.
#[derive(Debug, Default)]
pub struct Pusher {
    /// The client, with the settings it was made for (its token stays with it).
    client: Option<(CrowdsecSettings, WatcherClient)>,
    /// Failed tries in a row.
    failures: u32,
    /// The last failure logged as a warning.
    last_warned: Option<String>,
}

/// What one round did, and how long to wait before the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Nothing to push: wait [`IDLE`] or until a ban is queued.
    Idle,
    /// Bans were pushed (or dropped as invalid); `more` wait behind them.
    Pushed {
        /// Whether to go on at once.
        more: bool,
    },
    /// The push failed: wait this long, whatever is queued meanwhile.
    Backoff(Duration),
}

impl Pusher {
    /// The backoff after `failures` failed tries in a row: 1 s, 2 s, 4 s, ... up to
    /// [`MAX_BACKOFF`].
    pub fn backoff(failures: u32) -> Duration {
        Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(MAX_BACKOFF)
    }

    fn client(&mut self, settings: &CrowdsecSettings) -> Result<&mut WatcherClient, LapiError> {
        let kept = match self.client.take() {
            Some((current, client)) if &current == settings => (current, client),
            _ => {
                let push = settings.push.as_ref().ok_or_else(|| LapiError::Url {
                    url: settings.lapi_url.clone(),
                    reason: "no machine credentials".into(),
                })?;
                (settings.clone(), WatcherClient::new(settings, push)?)
            }
        };
        let (_, client) = self.client.insert(kept);
        Ok(client)
    }

    /// One round: take the front of the queue, push it, report the outcome to the engine.
    pub async fn round(&mut self, engine: &Mutex<Engine>) -> Round {
        let batch = engine.lock().await.crowdsec_push_batch(BATCH);
        let Some(PushBatch {
            settings,
            bans,
            through,
            more,
        }) = batch
        else {
            return Round::Idle;
        };
        let body = Bytes::from(alerts_body(&bans));
        let result = match self.client(&settings) {
            Ok(client) => client.push_alerts(body).await,
            Err(err) => Err(err),
        };
        match result {
            Ok(alerts) => {
                if self.failures > 0 {
                    info!(
                        lapi = settings.lapi_url,
                        failed_tries = self.failures,
                        "CrowdSec pushes resumed"
                    );
                }
                self.failures = 0;
                self.last_warned = None;
                engine.lock().await.crowdsec_pushed(through, &alerts);
                Round::Pushed { more }
            }
            Err(err @ LapiError::Rejected { .. }) => {
                let message = chain(&err);
                warn!(
                    lapi = settings.lapi_url,
                    count = bans.len(),
                    error = %message,
                    "the LAPI refused pushed bans as invalid: they are dropped"
                );
                engine
                    .lock()
                    .await
                    .crowdsec_push_failed(err.kind(), message, Some(through));
                Round::Pushed { more }
            }
            Err(err) => {
                self.failures = self.failures.saturating_add(1);
                let wait = Self::backoff(self.failures);
                let message = chain(&err);
                if self.last_warned.as_ref() != Some(&message)
                    || self.failures.is_multiple_of(WARN_EVERY)
                {
                    warn!(
                        lapi = settings.lapi_url,
                        kind = err.kind(),
                        error = %message,
                        failed_tries = self.failures,
                        queued = bans.len() + usize::from(more),
                        retry_in = ?wait,
                        "cannot push bans to CrowdSec; they are kept and tried again"
                    );
                    self.last_warned = Some(message.clone());
                } else {
                    debug!(kind = err.kind(), error = %message, "CrowdSec push failed again");
                }
                engine
                    .lock()
                    .await
                    .crowdsec_push_failed(err.kind(), message, None);
                Round::Backoff(wait)
            }
        }
    }
}

/// Pushes what the engine queues, forever (the daemon aborts the task when it stops).
pub async fn push(engine: Arc<Mutex<Engine>>) {
    let notify = engine.lock().await.crowdsec_push_notify();
    let mut pusher = Pusher::default();
    loop {
        match pusher.round(&engine).await {
            Round::Pushed { more: true } => {}
            Round::Backoff(wait) => tokio::time::sleep(wait).await,
            Round::Idle | Round::Pushed { more: false } => {
                tokio::select! {
                    () = tokio::time::sleep(IDLE) => {}
                    () = notify.notified() => {}
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "crowdsec_push_tests.rs"]
mod tests;
