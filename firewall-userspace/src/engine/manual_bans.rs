//! Manual bans (`apifw ban`): written to the kernel's ban map and the state file together, and
//! listed from the map.

use super::*;

impl Engine {
    /// Writes manual bans into the kernel's ban map.
    pub(super) fn write_bans(&mut self, records: &[BanRecord]) -> Result<(), EngineError> {
        let now_unix = self.clock.unix_secs();
        let now_ns = self
            .clock
            .monotonic_ns()
            .map_err(|err| EngineError::internal(chain(&err)))?;
        for record in records {
            let ttl_ns = record.expires_at.saturating_sub(now_unix) * 1_000_000_000;
            if ttl_ns == 0 {
                continue;
            }
            let kind = if is_host(&record.cidr) {
                BAN_HOST
            } else {
                BAN_SUBNET
            };
            let entry = BanEntry::new(now_ns, ttl_ns, MANUAL_BAN_RULE, kind);
            self.dataplane
                .insert_ban(ban_key(&record.cidr), entry)
                .map_err(|err| {
                    EngineError::Full(format!(
                        "cannot write the ban of {} into the kernel ({}); the ban map may be \
                         full: raise `limits.max_bans`",
                        record.cidr,
                        chain(&err)
                    ))
                })?;
        }
        Ok(())
    }

    /// Bans hosts or subnets for `ttl_secs`.
    pub fn ban_add(
        &mut self,
        nets: Vec<IpNet>,
        ttl_secs: u64,
        comment: Option<String>,
        actor: &str,
    ) -> Result<Changed, EngineError> {
        if ttl_secs == 0 {
            return Err(EngineError::bad_request(
                "a ban needs a TTL of at least 1 second",
            ));
        }
        let now = self.clock.unix_secs();
        let mut next = self.runtime.clone();
        let mut changed = Changed::default();
        let mut records = Vec::new();
        for net in &nets {
            let record = BanRecord {
                cidr: *net,
                expires_at: now.saturating_add(ttl_secs),
                comment: comment.clone(),
                added_at: now,
                added_by: actor.to_owned(),
            };
            if next.upsert_ban(record.clone()) {
                changed.added += 1;
            } else {
                changed.updated += 1;
            }
            records.push(record);
        }
        self.change_runtime(next)?;
        self.write_bans(&records)?;
        for net in &nets {
            self.known_bans.insert(ban_key(net));
        }
        changed.policy_version = self.policy_version;
        self.record(
            actor,
            "ban.add",
            json!({"cidrs": nets.iter().map(ToString::to_string).collect::<Vec<_>>(),
                   "ttl_secs": ttl_secs, "comment": comment}),
        );
        Ok(changed)
    }

    /// Lifts bans (manual or automatic).
    pub fn ban_del(&mut self, nets: Vec<IpNet>, actor: &str) -> Result<Changed, EngineError> {
        let mut next = self.runtime.clone();
        let mut changed = Changed::default();
        let mut in_state = false;
        for net in &nets {
            in_state |= next.remove_ban(net).is_some();
        }
        if in_state {
            self.change_runtime(next)?;
        }
        for net in nets.iter().filter(|net| is_host(net)) {
            self.jails.lifted(net.addr());
        }
        self.unqueue_lifted(&nets);
        for net in &nets {
            // Lifted by hand, a CrowdSec ban comes back only if the LAPI sends it again (at the
            // next full sync): `cscli decisions delete` lifts it for good.
            self.crowdsec.forget(net);
            let key = ban_key(net);
            let removed = self
                .dataplane
                .remove_ban(&key)
                .map_err(|err| EngineError::internal(chain(&err)))?;
            if removed {
                changed.removed += 1;
                self.known_bans.remove(&key);
            } else {
                changed.not_found.push(net.to_string());
            }
        }
        changed.policy_version = self.policy_version;
        if changed.removed > 0 {
            self.record(
                actor,
                "ban.del",
                json!({"cidrs": nets.iter().map(ToString::to_string).collect::<Vec<_>>(),
                       "removed": changed.removed}),
            );
        }
        Ok(changed)
    }

    /// The active bans, with the comments of manual ones.
    pub fn bans(&mut self) -> Result<Vec<bans::BanRow>, EngineError> {
        let now = self
            .clock
            .monotonic_ns()
            .map_err(|err| EngineError::internal(chain(&err)))?;
        let entries = self
            .dataplane
            .ban_entries()
            .map_err(|err| EngineError::internal(chain(&err)))?;
        let mut rows = bans::active_of(&entries, now);
        for row in &mut rows {
            if row.rule == MANUAL_BAN_RULE
                && let Some(record) = self.runtime.get_ban(&row.prefix)
            {
                row.reason = match &record.comment {
                    // A jail's comment says everything ("jail web: 5 matches within 600s").
                    Some(comment) if record.added_by.starts_with("jail ") => comment.clone(),
                    Some(comment) => format!("manual ban by {}: {comment}", record.added_by),
                    None => format!("manual ban by {}", record.added_by),
                };
            }
        }
        Ok(rows)
    }

    pub(super) fn kernel_ban_keys(&mut self) -> Result<HashSet<BanKey>, EngineError> {
        Ok(self
            .dataplane
            .ban_entries()
            .map_err(|err| EngineError::internal(chain(&err)))?
            .into_iter()
            .map(|(key, _)| key)
            .collect())
    }
}
