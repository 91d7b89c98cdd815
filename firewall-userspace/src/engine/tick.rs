//! The daemon's one-second tick: expired runtime entries and bans are removed, new automatic
//! bans are audited, jails read their logs.

use super::*;

impl Engine {
    /// Once a second: sweeps expired kernel bans, notices automatic bans, expires runtime
    /// entries (everything it does is audited), and refreshes the program's run statistics and the
    /// SYN cookie modes for the metrics.
    pub fn tick(&mut self) {
        self.run_jails();
        self.publish_program_runs();
        let swept = self.clock.monotonic_ns().and_then(|now| {
            self.dataplane
                .remove_expired_bans(now)
                .map(|expired| (now, expired))
        });
        match swept {
            Ok((now, expired)) => {
                // CrowdSec bans lapse by the thousand when a blocklist expires together: one
                // line and one audit record for all of them.
                let mut crowdsec_expired = Vec::new();
                for (prefix, ban) in expired {
                    self.known_bans.remove(&ban_key(&prefix));
                    if ban.rule == bans::CROWDSEC_BAN_RULE {
                        self.crowdsec.forget(&prefix);
                        crowdsec_expired.push(prefix);
                        continue;
                    }
                    info!(%prefix, rule = ban.rule, "ban expired");
                    self.record("daemon", "ban.expire", json!({"cidr": prefix.to_string()}));
                    self.crowdsec_after_expiry(&prefix, now);
                }
                if !crowdsec_expired.is_empty() {
                    info!(
                        count = crowdsec_expired.len(),
                        first = %crowdsec_expired[0],
                        "CrowdSec bans expired"
                    );
                    self.record(
                        "daemon",
                        "crowdsec.expire",
                        json!({"count": crowdsec_expired.len(),
                               "cidrs": crowdsec_expired.iter().take(100)
                                   .map(ToString::to_string).collect::<Vec<_>>()}),
                    );
                    self.publish_crowdsec();
                }
            }
            Err(err) => error!(err = %chain(&err), "cannot sweep expired bans"),
        }
        if let Ok(now) = self.clock.monotonic_ns()
            && let Ok(entries) = self.dataplane.ban_entries()
        {
            // Only the bans not seen before become rows: the map may hold 100k CrowdSec bans,
            // which must not cost a row (and its strings) every second.
            let unseen: Vec<(BanKey, BanEntry)> = entries
                .into_iter()
                .filter(|(key, ban)| ban.active_at(now) && !self.known_bans.contains(key))
                .collect();
            self.known_bans.extend(unseen.iter().map(|(key, _)| *key));
            let mut automatic = Vec::new();
            for row in bans::active_of(&unseen, now) {
                self.known_bans.insert(ban_key(&row.prefix));
                // Manual and CrowdSec bans are audited where they are made.
                if row.rule != MANUAL_BAN_RULE && row.rule != bans::CROWDSEC_BAN_RULE {
                    let rule = self
                        .slots
                        .iter()
                        .find(|(_, slot)| **slot == row.rule)
                        .map(|(name, _)| name.clone());
                    self.record(
                        "daemon",
                        "ban.auto",
                        json!({"cidr": row.prefix.to_string(), "kind": row.kind,
                               "rule": rule, "ttl_secs": row.remaining_secs.round()}),
                    );
                    automatic.push((row, rule));
                }
            }
            self.push_rate_limit_bans(&automatic);
        }
        // Nothing to do before the earliest expiry (kept current by every change), so an idle
        // daemon does not scan a million imported entries every second.
        let now = self.clock.unix_secs();
        if self.next_expiry.is_none_or(|at| at > now) {
            return;
        }
        let mut next = self.runtime.clone();
        let expired = next.expire(now);
        if expired.is_empty() {
            self.next_expiry = self.runtime.next_expiry();
            return;
        }
        let lists_changed =
            !expired.block.is_empty() || !expired.allow.is_empty() || !expired.imports.is_empty();
        let result = if lists_changed {
            self.change_runtime(next)
        } else {
            next.save(&self.state_path)
                .map(|()| {
                    self.runtime = next;
                    self.next_expiry = self.runtime.next_expiry();
                })
                .map_err(|err| EngineError::internal(chain(&err)))
        };
        match result {
            Ok(()) => {
                for kind in [ListKind::Block, ListKind::Allow] {
                    let cidrs: Vec<String> = expired
                        .list(kind)
                        .iter()
                        .map(|entry| entry.cidr.to_string())
                        .collect();
                    if !cidrs.is_empty() {
                        info!(
                            list = kind.as_str(),
                            count = cidrs.len(),
                            "runtime entries expired"
                        );
                        self.record(
                            "daemon",
                            &format!("{}.expire", kind.as_str()),
                            json!({"cidrs": cidrs}),
                        );
                    }
                }
            }
            Err(err) => error!(error = %err, "cannot expire runtime entries"),
        }
        for import in &expired.imports {
            info!(
                origin = import.origin,
                count = import.cidrs.len(),
                "import expired"
            );
            self.record(
                "daemon",
                &format!("{}.expire", import.list.as_str()),
                json!({"import": import.origin, "count": import.cidrs.len()}),
            );
        }
    }
}
