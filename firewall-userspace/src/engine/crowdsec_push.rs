//! The engine's side of the CrowdSec agent: which of this host's bans go to the LAPI, queued for
//! the daemon's push task (`daemon/crowdsec_push.rs`), which sends them without the engine's
//! lock.
//!
//! **What is pushed.** Only bans that were made: a jail's (abuse reports included, since they
//! ban through the jails) once it is in the kernel, with `crowdsec.push_jail_bans` (on by
//! default with machine credentials); and the XDP rate limiter's own, noticed by the tick, with
//! `crowdsec.push_rate_limit_bans` (off by default: they answer this host's traffic and limits,
//! often a burst of a client behind NAT, and other hosts have limits of their own). Manual bans
//! (`apifw ban add`, the fail2ban action) are not pushed: an operator bans fleet-wide with
//! `cscli decisions add`. CrowdSec's own bans never reach this queue, so nothing echoes back.
//! Allowlisted sources are never banned by jails; a rate-limit ban wholly inside the allowlist
//! is not pushed either.
//!
//! **Bounded, never in the way.** The queue holds [`PUSH_QUEUE_CAPACITY`] bans; beyond that a
//! ban is enforced here but not pushed, counted (`queue_full`) and logged once per burst. The
//! push task peeks at the front and pops what the LAPI took, by sequence number, so a failed
//! push keeps its bans where they were for the next try; a ban that ran out meanwhile is dropped
//! (`expired`) rather than pushed, and one lifted by hand before it was sent (`apifw ban del`)
//! is not sent (`lifted`). Nothing of it is persisted: a restart loses what was queued.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
};

use tokio::sync::Notify;

use super::*;
use crate::{
    control::CrowdsecPushStatus,
    crowdsec::BanToPush,
    engine::shared::CrowdsecPushMetrics,
    policy::crowdsec::{CrowdsecSettings, PushSettings},
};

/// Bans waiting to be pushed, at most.
pub const PUSH_QUEUE_CAPACITY: usize = 10_000;
/// Prefixes named in one audit record, at most.
const AUDITED_PREFIXES: usize = 100;

/// What the engine keeps of the agent side.
#[derive(Debug, Default)]
pub(super) struct PushQueue {
    /// Bans to push, oldest first, each with its sequence number.
    queue: VecDeque<(u64, BanToPush)>,
    /// The next sequence number.
    next_seq: u64,
    /// Bans the LAPI took.
    pushed: u64,
    /// When the LAPI last took some (Unix seconds).
    last_push_unix: Option<u64>,
    /// Failed pushes by kind.
    errors: BTreeMap<&'static str, u64>,
    /// Bans not pushed, by reason.
    dropped: BTreeMap<&'static str, u64>,
    /// Why the last push failed, until one succeeds.
    last_error: Option<String>,
    /// Whether the queue overflowed since it last had room (one warning per burst).
    overflowing: bool,
    /// Wakes the push task.
    notify: Arc<Notify>,
}

/// The front of the queue, for the push task.
#[derive(Debug, Clone)]
pub struct PushBatch {
    /// The settings in force (the LAPI, the machine).
    pub settings: CrowdsecSettings,
    /// The bans, oldest first.
    pub bans: Vec<BanToPush>,
    /// The sequence number of the last of them: what [`Engine::crowdsec_pushed`] pops through.
    pub through: u64,
    /// Whether more bans wait behind them.
    pub more: bool,
}

impl Engine {
    fn push_settings(&self) -> Option<&PushSettings> {
        self.policy.crowdsec.as_ref()?.push.as_ref()
    }

    /// Queues a ban to push; never blocks and never fails (a full queue drops it, counted).
    fn queue_push(&mut self, ban: BanToPush) {
        let push = &mut self.push;
        if push.queue.len() >= PUSH_QUEUE_CAPACITY {
            *push.dropped.entry("queue_full").or_insert(0) += 1;
            if !push.overflowing {
                push.overflowing = true;
                warn!(
                    capacity = PUSH_QUEUE_CAPACITY,
                    first = %ban.prefix,
                    "the CrowdSec push queue is full (the LAPI is down or slow): new bans are \
                     enforced here but not pushed until it drains"
                );
            }
        } else {
            push.queue.push_back((push.next_seq, ban));
            push.next_seq += 1;
            push.notify.notify_one();
        }
        self.publish_crowdsec();
    }

    /// Queues a jail's ban that was just made, if the policy pushes them. The ban's start and
    /// end come from its record in the state file, so the decision ends when the ban does.
    pub(super) fn push_jail_ban(&mut self, request: &BanRequest) {
        if !self.push_settings().is_some_and(|push| push.jail_bans) {
            return;
        }
        let prefix = IpNet::from(request.decision.source);
        let Some(record) = self.runtime.get_ban(&prefix) else {
            return;
        };
        let ban = BanToPush {
            prefix,
            scenario: format!("apifw/jail-{}", request.jail),
            message: format!("apifw {}", request.comment()),
            events_count: request.decision.count,
            started_unix: record.added_at,
            duration_secs: record.expires_at.saturating_sub(record.added_at),
        };
        self.queue_push(ban);
    }

    /// Queues the rate limiter's new bans (`rows` the tick has not seen before), if the policy
    /// pushes them.
    pub(super) fn push_rate_limit_bans(&mut self, rows: &[(bans::BanRow, Option<String>)]) {
        if rows.is_empty()
            || !self
                .push_settings()
                .is_some_and(|push| push.rate_limit_bans)
        {
            return;
        }
        let allow = self.allow_index();
        let now = self.clock.unix_secs();
        for (row, rule) in rows {
            if allow.covers(&row.prefix) {
                continue;
            }
            // Whole seconds, truncated: the decision never outlasts the kernel's ban.
            let age = row.age_secs.max(0.0).round() as u64;
            let left = row.remaining_secs.max(0.0).floor() as u64;
            if left == 0 {
                continue;
            }
            let rule = rule.as_deref().unwrap_or("unknown");
            self.queue_push(BanToPush {
                prefix: row.prefix,
                scenario: format!("apifw/rate-limit-{rule}"),
                message: format!(
                    "apifw rule {rule}: {} banned by the XDP rate limiter",
                    row.kind
                ),
                events_count: 1,
                started_unix: now.saturating_sub(age),
                duration_secs: age + left,
            });
        }
    }

    /// What the push task is to woken by.
    pub fn crowdsec_push_notify(&self) -> Arc<Notify> {
        Arc::clone(&self.push.notify)
    }

    /// The front of the queue (at most `max` bans), with the settings to push them with; `None`
    /// when there is nothing to push. Bans that ran out are dropped first, and a queue the policy
    /// no longer pushes (a reload removed the credentials) is emptied.
    pub fn crowdsec_push_batch(&mut self, max: usize) -> Option<PushBatch> {
        if self.push_settings().is_none() {
            if !self.push.queue.is_empty() {
                let count = self.push.queue.len() as u64;
                self.push.queue.clear();
                *self.push.dropped.entry("disabled").or_insert(0) += count;
                info!(
                    count,
                    "the policy no longer pushes bans to CrowdSec: the queue was emptied"
                );
                self.publish_crowdsec();
            }
            return None;
        }
        if self.push.queue.is_empty() {
            return None;
        }
        let now = self.clock.unix_secs();
        let before = self.push.queue.len();
        self.push.queue.retain(|(_, ban)| ban.ends_unix() > now);
        let expired = (before - self.push.queue.len()) as u64;
        if expired > 0 {
            *self.push.dropped.entry("expired").or_insert(0) += expired;
            self.publish_crowdsec();
        }
        let bans: Vec<BanToPush> = self
            .push
            .queue
            .iter()
            .take(max)
            .map(|(_, ban)| ban.clone())
            .collect();
        let through = self.push.queue.get(bans.len().checked_sub(1)?)?.0;
        Some(PushBatch {
            settings: self.policy.crowdsec.clone()?,
            more: self.push.queue.len() > bans.len(),
            bans,
            through,
        })
    }

    /// Bans lifted by hand before they were pushed are not pushed (`lifted`). One already
    /// pushed stays in the LAPI: `cscli decisions delete` lifts it there.
    pub(super) fn unqueue_lifted(&mut self, nets: &[IpNet]) {
        let before = self.push.queue.len();
        self.push
            .queue
            .retain(|(_, ban)| !nets.contains(&ban.prefix));
        let lifted = (before - self.push.queue.len()) as u64;
        if lifted > 0 {
            *self.push.dropped.entry("lifted").or_insert(0) += lifted;
            self.publish_crowdsec();
        }
    }

    /// Pops the bans through sequence number `through`.
    fn pop_through(&mut self, through: u64) -> Vec<BanToPush> {
        let mut popped = Vec::new();
        while self
            .push
            .queue
            .front()
            .is_some_and(|(seq, _)| *seq <= through)
        {
            if let Some((_, ban)) = self.push.queue.pop_front() {
                popped.push(ban);
            }
        }
        if self.push.queue.len() < PUSH_QUEUE_CAPACITY {
            self.push.overflowing = false;
        }
        popped
    }

    /// The LAPI took the batch through `through`: it leaves the queue, counted and audited.
    pub fn crowdsec_pushed(&mut self, through: u64, alerts: &[String]) {
        let pushed = self.pop_through(through);
        self.push.pushed += pushed.len() as u64;
        self.push.last_push_unix = Some(self.clock.unix_secs());
        if self.push.last_error.take().is_some() {
            info!("CrowdSec pushes resumed");
        }
        let lapi = self.policy.crowdsec.as_ref().map(|s| s.lapi_url.clone());
        let machine = self.push_settings().map(|push| push.machine_id.clone());
        info!(
            count = pushed.len(),
            first = %pushed.first().map(|ban| ban.prefix.to_string()).unwrap_or_default(),
            "bans pushed to CrowdSec"
        );
        self.record(
            "crowdsec",
            "crowdsec.push",
            json!({
                "lapi": lapi, "machine_id": machine, "count": pushed.len(),
                "cidrs": pushed.iter().take(AUDITED_PREFIXES)
                    .map(|ban| ban.prefix.to_string()).collect::<Vec<_>>(),
                "alerts": alerts.iter().take(AUDITED_PREFIXES).collect::<Vec<_>>(),
            }),
        );
        self.publish_crowdsec();
    }

    /// A push failed (`kind` for the metrics). The bans stay queued for the next try, unless
    /// `drop_through` says the LAPI refused them as invalid (sending them again cannot help):
    /// then they are dropped and counted (`rejected`). A failure is audited when it differs from
    /// the last one, so an outage is one record, not one per retry.
    pub fn crowdsec_push_failed(
        &mut self,
        kind: &'static str,
        message: String,
        drop_through: Option<u64>,
    ) {
        *self.push.errors.entry(kind).or_insert(0) += 1;
        let dropped = drop_through.map_or(Vec::new(), |through| self.pop_through(through));
        if !dropped.is_empty() {
            *self.push.dropped.entry("rejected").or_insert(0) += dropped.len() as u64;
        }
        if self.push.last_error.as_ref() != Some(&message) || !dropped.is_empty() {
            let lapi = self.policy.crowdsec.as_ref().map(|s| s.lapi_url.clone());
            self.record(
                "crowdsec",
                "crowdsec.push_failed",
                json!({
                    "lapi": lapi, "kind": kind, "error": message,
                    "queued": self.push.queue.len(), "dropped": dropped.len(),
                    "dropped_cidrs": dropped.iter().take(AUDITED_PREFIXES)
                        .map(|ban| ban.prefix.to_string()).collect::<Vec<_>>(),
                }),
            );
        }
        self.push.last_error = Some(message);
        self.publish_crowdsec();
    }

    /// Bans waiting to be pushed.
    pub fn crowdsec_push_queued(&self) -> usize {
        self.push.queue.len()
    }

    /// What `apifw status` shows of the push side.
    pub(super) fn crowdsec_push_status(&self) -> Option<CrowdsecPushStatus> {
        let push = self.push_settings()?;
        Some(CrowdsecPushStatus {
            machine_id: push.machine_id.clone(),
            jail_bans: push.jail_bans,
            rate_limit_bans: push.rate_limit_bans,
            pushed: self.push.pushed,
            queued: self.push.queue.len() as u64,
            last_push_secs_ago: self
                .push
                .last_push_unix
                .map(|at| self.clock.unix_secs().saturating_sub(at)),
            errors: self.push.errors.values().sum(),
            dropped: self.push.dropped.values().sum(),
            last_error: self.push.last_error.clone(),
        })
    }

    /// The push side's figures for the metrics.
    pub(super) fn crowdsec_push_metrics(&self) -> Option<CrowdsecPushMetrics> {
        self.push_settings()?;
        Some(CrowdsecPushMetrics {
            pushed: self.push.pushed,
            queued: self.push.queue.len() as u64,
            errors: self.push.errors.clone(),
            dropped: self.push.dropped.clone(),
        })
    }
}

#[cfg(test)]
#[path = "crowdsec_push_tests.rs"]
mod tests;
