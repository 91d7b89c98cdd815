//! The engine's side of the CrowdSec bouncer: mirroring the LAPI's ban decisions into the
//! kernel's ban map.
//!
//! **Where the bans live.** In the ban map (`APIFW_BANS`), marked with their own rule value
//! ([`CROWDSEC_BAN_RULE`]), not in the prefix tables: a ban there carries its own expiry, checked
//! in XDP to the nanosecond, so a decision lapses exactly when CrowdSec says without the daemon;
//! adding or lifting one is one map write, where a prefix-table change recompiles every list; and
//! `apifw bans` reads the marker from the pinned map and names the origin. The cost: the map is
//! preallocated to `limits.max_bans` (65,536 by default), shared with rule, jail and manual bans,
//! so a 100k community blocklist needs that limit raised (`apifw check` warns), and each
//! distinct range length is one more probe for packets that reach the ban check.
//!
//! **The LAPI is the source of truth.** CrowdSec bans are not written to the state file. A
//! restarted daemon adopts the pinned ban map, so they stay enforced (their expiry is in the
//! kernel), and the engine takes them back from the map at start (so the ban check stays on);
//! the first sync after a start, or after any failed sync, asks for every decision
//! (`startup=true`) and that answer replaces what the engine holds: decisions deleted meanwhile
//! are lifted, the rest refreshed. During a LAPI outage nothing is lifted.
//!
//! **All or nothing.** An answer is applied whole or not at all: if the ban map cannot take it
//! (checked first, and any kernel refusal half-way rolled back), nothing changes and the bans in
//! force stay. A prefix banned by several decisions is one map entry lasting as long as the
//! longest; the same decision seen twice is written once.
//!
//! **Never an allowlisted source.** A decision whose host or range lies wholly inside the
//! effective allowlist (policy, feeds, runtime) is skipped and counted. A range that only
//! overlaps it is enforced: the XDP program checks the allowlist before bans, so the allowlisted
//! part keeps passing.

use std::collections::BTreeMap;

use super::*;
use crate::{
    control::CrowdsecStatus, crowdsec::DecisionBatch, dataplane::bans::CROWDSEC_BAN_RULE,
    engine::shared::CrowdsecMetrics,
};

/// The id of a decision the LAPI gave none, or that was taken back from the kernel at start.
const UNKNOWN_ID: i64 = i64::MIN;
/// Expiries closer than this are the same decision seen again, not worth a map write.
const SAME_EXPIRY_NS: u64 = 1_000_000_000;
/// Prefixes named in one audit record, at most.
const AUDITED_PREFIXES: usize = 100;

/// What the engine holds of a LAPI.
#[derive(Debug, Default)]
pub(super) struct CrowdsecBans {
    /// Per banned prefix: the decisions banning it (by id) and when each ends (CLOCK_MONOTONIC).
    held: HashMap<IpNet, BTreeMap<i64, u64>>,
    /// Syncs that were applied.
    syncs: u64,
    /// When the last sync was applied (Unix seconds).
    last_sync_unix: Option<u64>,
    /// Why the last sync failed, if it did.
    last_error: Option<String>,
    /// Failed syncs by kind.
    errors: BTreeMap<&'static str, u64>,
    /// Decisions not taken, by reason.
    skipped: BTreeMap<&'static str, u64>,
    /// Ban-check settings a sync in progress needs on top of those of `held` (see
    /// [`ban_lengths`]); all zero between syncs.
    pub(super) extra_lengths: (bool, u64, [u64; 2]),
}

/// What one applied sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrowdsecSync {
    /// Prefixes newly banned.
    pub added: usize,
    /// Prefixes whose ban now ends at another time.
    pub updated: usize,
    /// Prefixes lifted.
    pub removed: usize,
    /// Decisions not enforced because the allowlist covers them.
    pub allowlisted: usize,
    /// Prefixes held after the sync.
    pub held: usize,
}

/// The allowlist, indexed by prefix length: whether it wholly covers a prefix costs one hash
/// probe per distinct allowlisted length (at most 33 or 129), whatever its size.
pub(super) struct AllowIndex {
    prefixes: HashSet<IpNet>,
    lengths: Vec<(bool, u8)>,
}

impl AllowIndex {
    pub(super) fn covers(&self, net: &IpNet) -> bool {
        let v4 = net.addr().is_ipv4();
        self.lengths
            .iter()
            .filter(|(family, len)| *family == v4 && *len <= net.prefix_len())
            .any(|(_, len)| {
                IpNet::new(net.addr(), *len)
                    .map(|wider| self.prefixes.contains(&wider.trunc()))
                    .unwrap_or(false)
            })
    }
}

/// The kernel's ban-check settings bans on `prefixes` need: the check itself, and the subnet
/// lengths to probe (IPv4, IPv6).
pub(super) fn ban_lengths<'a>(prefixes: impl Iterator<Item = &'a IpNet>) -> (bool, u64, [u64; 2]) {
    let (mut any, mut v4, mut v6) = (false, 0u64, [0u64; 2]);
    for prefix in prefixes {
        any = true;
        let len = u32::from(prefix.prefix_len());
        match prefix {
            IpNet::V4(_) if len < 32 => v4 |= 1 << len,
            IpNet::V6(_) if len < 128 => v6[(len / 64) as usize] |= 1 << (len % 64),
            _ => {}
        }
    }
    (any, v4, v6)
}

fn longest(ids: &BTreeMap<i64, u64>) -> u64 {
    ids.values().copied().max().unwrap_or(0)
}

impl CrowdsecBans {
    /// The prefixes held.
    pub(super) fn prefixes(&self) -> impl Iterator<Item = &IpNet> {
        self.held.keys()
    }

    /// Forgets a prefix (its ban expired or was lifted by hand).
    pub(super) fn forget(&mut self, prefix: &IpNet) {
        self.held.remove(prefix);
    }
}

impl Engine {
    /// Takes back the CrowdSec bans a previous daemon left in the (adopted) ban map, so that the
    /// ban check stays on for them until the first sync says what still holds.
    pub(super) fn adopt_crowdsec_bans(&mut self) {
        let Ok(now) = self.clock.monotonic_ns() else {
            return;
        };
        let Ok(entries) = self.dataplane.ban_entries() else {
            return;
        };
        for (key, ban) in entries {
            if ban.rule == CROWDSEC_BAN_RULE && ban.active_at(now) {
                self.crowdsec
                    .held
                    .entry(bans::prefix_of(&key))
                    .or_default()
                    .insert(UNKNOWN_ID, ban.expires_ns);
            }
        }
        if !self.crowdsec.held.is_empty() {
            info!(
                bans = self.crowdsec.held.len(),
                "CrowdSec bans kept from the pinned ban map until the first sync"
            );
        }
    }

    /// Another ban on `prefix` (a jail's, a manual or a rule's one) expired. If CrowdSec
    /// decisions ban it too, the longest takes over for what is left of it; one ending with the
    /// expired ban (the round trip of a ban this host pushed) is forgotten, so what the engine
    /// holds stays what the kernel enforces.
    pub(super) fn crowdsec_after_expiry(&mut self, prefix: &IpNet, now_ns: u64) {
        let Some(ids) = self.crowdsec.held.get(prefix) else {
            return;
        };
        let ends = longest(ids);
        if ends <= now_ns.saturating_add(SAME_EXPIRY_NS) {
            self.crowdsec.held.remove(prefix);
            self.publish_crowdsec();
            return;
        }
        let kind = if is_host(prefix) {
            BAN_HOST
        } else {
            BAN_SUBNET
        };
        let key = ban_key(prefix);
        let entry = BanEntry::new(now_ns, ends - now_ns, CROWDSEC_BAN_RULE, kind);
        match self.dataplane.insert_ban(key, entry) {
            Ok(()) => {
                self.known_bans.insert(key);
                info!(
                    %prefix,
                    remaining_secs = (ends - now_ns) / 1_000_000_000,
                    "a CrowdSec decision outlasting an expired ban takes over"
                );
            }
            // The next full sync writes it again.
            Err(err) => error!(
                %prefix,
                err = %chain(&err),
                "cannot write a CrowdSec ban outlasting an expired one"
            ),
        }
    }

    /// The `[crowdsec]` section in force.
    pub fn crowdsec_settings(&self) -> Option<&crate::policy::crowdsec::CrowdsecSettings> {
        self.policy.crowdsec.as_ref()
    }

    /// Prefixes banned by CrowdSec decisions.
    pub fn crowdsec_held(&self) -> usize {
        self.crowdsec.held.len()
    }

    /// Records a failed sync (`kind` for the metrics); the bans in force stay.
    pub fn crowdsec_failed(&mut self, kind: &'static str, message: String) {
        *self.crowdsec.errors.entry(kind).or_insert(0) += 1;
        self.crowdsec.last_error = Some(message);
        self.publish_crowdsec();
    }

    /// Applies one validated answer of the decision stream; `full` when it lists every active
    /// decision (`startup=true`), which then replaces what is held. All or nothing: on error,
    /// the ban map and what the engine holds are as before.
    pub fn crowdsec_apply(
        &mut self,
        batch: DecisionBatch,
        full: bool,
    ) -> Result<CrowdsecSync, EngineError> {
        let now_ns = self
            .clock
            .monotonic_ns()
            .map_err(|err| EngineError::internal(chain(&err)))?;
        // Most polls bring nothing new: no need to read the kernel's ban map for them.
        if !full && batch.new.is_empty() && batch.deleted.is_empty() {
            self.count_sync(&batch, 0);
            return Ok(CrowdsecSync {
                held: self.crowdsec.held.len(),
                ..CrowdsecSync::default()
            });
        }
        let mut next = if full {
            HashMap::with_capacity(batch.new.len())
        } else {
            self.crowdsec.held.clone()
        };
        for deletion in &batch.deleted {
            match deletion.id {
                Some(id) => {
                    if let Some(ids) = next.get_mut(&deletion.prefix) {
                        ids.remove(&id);
                        // Taken back from the kernel: which decision it was is unknown, so
                        // the deletion of any decision on the prefix lifts it.
                        ids.remove(&UNKNOWN_ID);
                        if ids.is_empty() {
                            next.remove(&deletion.prefix);
                        }
                    }
                }
                None => {
                    next.remove(&deletion.prefix);
                }
            }
        }
        let allow = self.allow_index();
        let mut allowlisted = Vec::new();
        for decision in &batch.new {
            if allow.covers(&decision.prefix) {
                allowlisted.push(decision.prefix);
                continue;
            }
            let ends = now_ns
                .saturating_add(u64::try_from(decision.remaining.as_nanos()).unwrap_or(u64::MAX));
            next.entry(decision.prefix)
                .or_default()
                .insert(decision.id.unwrap_or(UNKNOWN_ID), ends);
        }
        if !allowlisted.is_empty() {
            warn!(
                count = allowlisted.len(),
                first = %allowlisted[0],
                "not enforcing CrowdSec decisions on allowlisted sources"
            );
        }

        // What changes in the kernel.
        let kernel: HashMap<BanKey, BanEntry> = self
            .dataplane
            .ban_entries()
            .map_err(|err| EngineError::internal(chain(&err)))?
            .into_iter()
            .collect();
        let mut writes: Vec<(IpNet, BanKey, BanEntry)> = Vec::new();
        let mut sync = CrowdsecSync::default();
        for (prefix, ids) in &next {
            let ends = longest(ids);
            let key = ban_key(prefix);
            match kernel.get(&key).filter(|ban| ban.active_at(now_ns)) {
                // Already in force as this sync would write it (the same decision again).
                Some(ban)
                    if ban.rule == CROWDSEC_BAN_RULE
                        && ban.expires_ns.abs_diff(ends) < SAME_EXPIRY_NS =>
                {
                    continue;
                }
                // Another ban (manual, a jail's, a rule's) lasting at least as long covers it:
                // a ban this host pushed comes back ending with it, give or take the LAPI's
                // clock. When it expires first, the tick lets the decision take over
                // ([`Engine::crowdsec_after_expiry`]).
                Some(ban)
                    if ban.rule != CROWDSEC_BAN_RULE
                        && ban.expires_ns.saturating_add(SAME_EXPIRY_NS) >= ends =>
                {
                    continue;
                }
                _ => {}
            }
            if self.crowdsec.held.contains_key(prefix) {
                sync.updated += 1;
            } else {
                sync.added += 1;
            }
            let kind = if is_host(prefix) {
                BAN_HOST
            } else {
                BAN_SUBNET
            };
            writes.push((
                *prefix,
                key,
                BanEntry::new(now_ns, ends.saturating_sub(now_ns), CROWDSEC_BAN_RULE, kind),
            ));
        }
        let lifted: Vec<(IpNet, BanKey)> = self
            .crowdsec
            .held
            .keys()
            .filter(|prefix| !next.contains_key(prefix))
            .map(|prefix| (*prefix, ban_key(prefix)))
            .collect();
        // Only entries that are still CrowdSec's are removed from the kernel.
        let removals: Vec<(IpNet, BanKey)> = lifted
            .iter()
            .filter(|(_, key)| {
                kernel
                    .get(key)
                    .is_some_and(|ban| ban.rule == CROWDSEC_BAN_RULE)
            })
            .copied()
            .collect();
        sync.removed = lifted.len();
        sync.allowlisted = allowlisted.len();
        sync.held = next.len();

        // Room in the ban map, before anything is written.
        let capacity = u64::from(self.policy.limits.max_bans);
        let new_keys = writes
            .iter()
            .filter(|(_, key, _)| !kernel.contains_key(key))
            .count() as u64;
        let after = kernel.len() as u64 - removals.len() as u64 + new_keys;
        if after > capacity {
            return Err(EngineError::Full(format!(
                "the CrowdSec sync needs {new_keys} new ban map entries, and the map would hold \
                 {after} of limits.max_bans = {capacity}: raise limits.max_bans (and restart); \
                 nothing of this sync was applied, the bans in force stay"
            )));
        }

        // The ban check and its subnet lengths must cover old and new prefixes while both are
        // in the map.
        let needed = ban_lengths(next.keys().chain(self.crowdsec.held.keys()));
        self.ensure_ban_check(needed)?;

        self.write_crowdsec(&kernel, &writes, &removals)?;
        for (prefix, _) in &removals {
            // A manual or jail ban the CrowdSec ban had outlasted comes back.
            if let Some(record) = self.runtime.get_ban(prefix).cloned()
                && record.expires_at > self.clock.unix_secs()
                && let Err(err) = self.write_bans(&[record])
            {
                error!(%prefix, error = %err, "cannot restore a manual ban under a lifted CrowdSec ban");
            }
        }
        self.crowdsec.held = next;
        self.count_sync(&batch, allowlisted.len());
        if sync.added + sync.updated + sync.removed + sync.allowlisted > 0 {
            let shown = |prefixes: &mut dyn Iterator<Item = IpNet>| -> Vec<String> {
                prefixes
                    .take(AUDITED_PREFIXES)
                    .map(|prefix| prefix.to_string())
                    .collect()
            };
            let lapi = self
                .policy
                .crowdsec
                .as_ref()
                .map(|settings| settings.lapi_url.clone());
            self.record(
                "crowdsec",
                "crowdsec.sync",
                json!({
                    "lapi": lapi, "full": full, "added": sync.added, "updated": sync.updated,
                    "removed": sync.removed, "held": sync.held,
                    "banned": shown(&mut writes.iter().map(|(prefix, _, _)| *prefix)),
                    "lifted": shown(&mut lifted.iter().map(|(prefix, _)| *prefix)),
                    "allowlisted": shown(&mut allowlisted.iter().copied()),
                    "skipped": batch.skipped.iter()
                        .map(|(reason, count)| (reason.as_str(), *count))
                        .collect::<BTreeMap<_, _>>(),
                }),
            );
            info!(
                full,
                added = sync.added,
                updated = sync.updated,
                removed = sync.removed,
                held = sync.held,
                "CrowdSec decisions applied"
            );
        }
        Ok(sync)
    }

    /// Counts an applied sync and what it skipped, and publishes the figures.
    fn count_sync(&mut self, batch: &DecisionBatch, allowlisted: usize) {
        for (reason, count) in &batch.skipped {
            *self.crowdsec.skipped.entry(reason.as_str()).or_insert(0) += count;
        }
        if allowlisted > 0 {
            *self.crowdsec.skipped.entry("allowlisted").or_insert(0) += allowlisted as u64;
        }
        self.crowdsec.syncs += 1;
        self.crowdsec.last_sync_unix = Some(self.clock.unix_secs());
        self.crowdsec.last_error = None;
        self.publish_crowdsec();
    }

    /// Lifts every CrowdSec ban (the `[crowdsec]` section was removed).
    pub fn crowdsec_clear(&mut self) -> Result<CrowdsecSync, EngineError> {
        let sync = self.crowdsec_apply(DecisionBatch::default(), true)?;
        self.crowdsec = CrowdsecBans::default();
        self.publish_crowdsec();
        Ok(sync)
    }

    /// Turns the ban check on, and on the subnet lengths `needed`, if the installed policy does
    /// not already: a reinstall of the policy, rare (the first ban, a new range length).
    fn ensure_ban_check(&mut self, needed: (bool, u64, [u64; 2])) -> Result<(), EngineError> {
        let (any, v4, v6) = needed;
        let covered = self.dataplane.installed().is_some_and(|installed| {
            let config = &installed.config;
            (!any || config.flags & CONFIG_BANS != 0)
                && v4 & !config.ban_v4_lengths == 0
                && v6[0] & !config.ban_v6_lengths[0] == 0
                && v6[1] & !config.ban_v6_lengths[1] == 0
        });
        if covered {
            return Ok(());
        }
        self.crowdsec.extra_lengths = needed;
        let installed = self
            .compile(&self.policy, &self.feeds, &self.runtime)
            .and_then(|(compiled, slots)| {
                self.dataplane
                    .install(compiled)
                    .map_err(|err| {
                        EngineError::internal(format!(
                            "{}; nothing of this CrowdSec sync was applied",
                            chain(&err)
                        ))
                    })
                    .map(|()| slots)
            });
        self.crowdsec.extra_lengths = (false, 0, [0; 2]);
        let slots = installed?;
        self.commit_slots(&slots);
        self.policy_version += 1;
        self.publish();
        Ok(())
    }

    /// Writes and removes CrowdSec bans; a write the kernel refuses half-way undoes the others.
    fn write_crowdsec(
        &mut self,
        kernel: &HashMap<BanKey, BanEntry>,
        writes: &[(IpNet, BanKey, BanEntry)],
        removals: &[(IpNet, BanKey)],
    ) -> Result<(), EngineError> {
        let mut removed = Vec::new();
        let mut written = Vec::new();
        let mut failure = None;
        for (prefix, key) in removals {
            match self.dataplane.remove_ban(key) {
                Ok(_) => removed.push(*key),
                Err(err) => {
                    failure = Some(format!("cannot lift the ban of {prefix}: {}", chain(&err)));
                    break;
                }
            }
        }
        if failure.is_none() {
            for (prefix, key, entry) in writes {
                match self.dataplane.insert_ban(*key, *entry) {
                    Ok(()) => written.push(*key),
                    Err(err) => {
                        failure = Some(format!(
                            "cannot write the ban of {prefix} into the kernel ({}); the ban map \
                             may be full: raise limits.max_bans",
                            chain(&err)
                        ));
                        break;
                    }
                }
            }
        }
        let Some(failure) = failure else {
            return Ok(());
        };
        // Back to what the kernel held: entries written over get their old value, new ones go,
        // removed ones come back.
        for key in written.iter().chain(&removed) {
            let restored = match kernel.get(key) {
                Some(entry) => self.dataplane.insert_ban(*key, *entry),
                None => self.dataplane.remove_ban(key).map(|_| ()),
            };
            if let Err(err) = restored {
                error!(prefix = %bans::prefix_of(key), err = %chain(&err), "cannot roll back a ban");
            }
        }
        Err(EngineError::Full(format!(
            "{failure}; nothing of this CrowdSec sync was applied, the bans in force stay"
        )))
    }

    pub(super) fn allow_index(&self) -> AllowIndex {
        let prefixes: HashSet<IpNet> = self
            .policy
            .allow
            .iter()
            .chain(
                self.feeds
                    .allow
                    .iter()
                    .flat_map(|feed| feed.prefixes.iter()),
            )
            .copied()
            .chain(self.runtime.cidrs(ListKind::Allow))
            .map(|net| net.trunc())
            .collect();
        let mut lengths: Vec<(bool, u8)> = prefixes
            .iter()
            .map(|net| (net.addr().is_ipv4(), net.prefix_len()))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        lengths.sort_unstable();
        AllowIndex { prefixes, lengths }
    }

    /// What `apifw status` shows of the LAPI link.
    pub(super) fn crowdsec_status(&self) -> Option<CrowdsecStatus> {
        let settings = self.policy.crowdsec.as_ref()?;
        Some(CrowdsecStatus {
            lapi_url: settings.lapi_url.clone(),
            decisions: self.crowdsec.held.len() as u64,
            syncs: self.crowdsec.syncs,
            last_sync_secs_ago: self
                .crowdsec
                .last_sync_unix
                .map(|at| self.clock.unix_secs().saturating_sub(at)),
            errors: self.crowdsec.errors.values().sum(),
            last_error: self.crowdsec.last_error.clone(),
            push: self.crowdsec_push_status(),
        })
    }

    /// Publishes the link's figures for the metrics.
    pub(super) fn publish_crowdsec(&self) {
        let metrics = self.policy.crowdsec.as_ref().map(|_| CrowdsecMetrics {
            held: self.crowdsec.held.len() as u64,
            syncs: self.crowdsec.syncs,
            last_sync_unix: self.crowdsec.last_sync_unix,
            errors: self.crowdsec.errors.clone(),
            skipped: self.crowdsec.skipped.clone(),
            push: self.crowdsec_push_metrics(),
        });
        match self.shared.lock() {
            Ok(mut shared) => shared.crowdsec = metrics,
            Err(poisoned) => poisoned.into_inner().crowdsec = metrics,
        }
    }
}

#[cfg(test)]
#[path = "crowdsec_tests.rs"]
mod tests;
