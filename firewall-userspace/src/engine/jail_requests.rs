//! The engine's side of the jails: carrying out their ban requests (never for an allowlisted
//! source), abuse reports, persisting and publishing jail state.

use super::*;

impl Engine {
    /// Whether `source` is in the effective allowlist: policy, feeds and runtime entries.
    pub(super) fn allowlisted(&self, source: IpAddr) -> bool {
        self.policy
            .allow
            .iter()
            .chain(
                self.feeds
                    .allow
                    .iter()
                    .flat_map(|feed| feed.prefixes.iter()),
            )
            .any(|net| net.contains(&source))
            || self
                .runtime
                .cidrs(ListKind::Allow)
                .any(|net| net.contains(&source))
    }

    /// Once a tick: reads the jails' logs, bans whom they ask for, persists their state.
    pub(super) fn run_jails(&mut self) {
        if self.jails.is_empty() {
            return;
        }
        let requests = self.jails.poll(self.clock.unix_secs());
        self.carry_out(requests);
        self.save_jails();
    }

    /// Makes the bans jails asked for, through the path of `apifw ban add` (kernel, state file,
    /// audit), except for allowlisted sources. Returns the requests that were carried out.
    pub(super) fn carry_out(&mut self, requests: Vec<BanRequest>) -> Vec<BanRequest> {
        let mut made = Vec::new();
        for request in requests {
            let source = request.decision.source;
            if self.allowlisted(source) {
                warn!(jail = request.jail, %source, "not banning an allowlisted source");
                self.record(
                    &format!("jail {}", request.jail),
                    "ban.skipped",
                    json!({"source": source.to_string(), "reason": "allowlisted",
                           "matches": request.decision.count}),
                );
                self.jails.refused(&request, true);
                continue;
            }
            let actor = format!("jail {}", request.jail);
            match self.ban_add(
                vec![IpNet::from(source)],
                request.decision.ttl_secs,
                Some(request.comment()),
                &actor,
            ) {
                Ok(_) => {
                    self.jails.banned(&request);
                    self.push_jail_ban(&request);
                    made.push(request);
                }
                Err(err) => {
                    error!(jail = request.jail, %source, error = %err, "jail ban failed");
                    self.jails.refused(&request, false);
                }
            }
        }
        self.publish_jails();
        made
    }

    /// Writes the jail state file when something changed.
    pub(super) fn save_jails(&mut self) {
        if !self.jails.take_dirty() {
            return;
        }
        if let Err(err) = crate::store::state::save_json(&self.jails_path, &self.jails.state()) {
            error!(err = %chain(&err), "cannot save the jail state");
        }
    }

    pub(super) fn publish_jails(&self) {
        let counters = self.jails.counters(self.clock.unix_secs());
        match self.shared.lock() {
            Ok(mut shared) => shared.jails = counters,
            Err(poisoned) => poisoned.into_inner().jails = counters,
        }
    }

    /// `POST /v1/reports`: counts an abuse report like jail matches of its weight, and bans the
    /// source when it reaches the jail's `max_retry` (unless it is allowlisted).
    pub fn report(
        &mut self,
        source: IpAddr,
        reason: &str,
        weight: u32,
        jail: Option<&str>,
        actor: &str,
    ) -> Result<ReportOutcome, EngineError> {
        let (counted, ban) = self
            .jails
            .report(jail, source, weight, reason, self.clock.unix_secs())
            .map_err(|err| EngineError::bad_request(err.to_string()))?;
        info!(jail = counted.jail, %source, weight, reason, actor, "abuse report");
        let allowlisted = self.allowlisted(source);
        let mut outcome = ReportOutcome {
            jail: counted.jail.clone(),
            source,
            count: 0,
            max_retry: counted.max_retry,
            banned: false,
            ban_ttl_secs: None,
            allowlisted,
        };
        match counted.outcome {
            Outcome::Counted { count } => outcome.count = count,
            Outcome::AlreadyBanned => outcome.banned = true,
            Outcome::Ban(decision) => {
                outcome.count = decision.count;
                let made = self.carry_out(ban.into_iter().collect());
                if let Some(request) = made.first() {
                    outcome.banned = true;
                    outcome.ban_ttl_secs = Some(request.decision.ttl_secs);
                }
            }
        }
        self.publish_jails();
        self.save_jails();
        Ok(outcome)
    }

    /// `GET /v1/jails`.
    pub fn jails(&self) -> Vec<JailView> {
        self.jails.views(self.clock.unix_secs())
    }
}
