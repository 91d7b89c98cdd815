//! Compiles a policy (plus runtime list entries and feeds) into the content of one policy
//! generation of the kernel maps, and diffs two compilations so that a swap writes only what
//! changed.

pub mod tables;

use std::collections::{BTreeMap, HashMap};

use firewall_common::{
    KernelConfig,
    config::{
        CONFIG_BANS, CONFIG_DEBUG_LOG, CONFIG_DRY_RUN, CONFIG_EVENTS, RULES_BY_PORT,
        RULES_BY_PROTOCOL, RULES_FOR_ANY,
    },
    ratelimit::{Bucket, TICKS_PER_SECOND},
    rules::{ANY_PORT, ANY_PROTOCOL, MAX_RULES, RuleConfig, RuleKey},
};
use ipnet::IpNet;

use crate::{
    compile::tables::{CapacityError, PrefixTables},
    policy::{Policy, Rule},
};

/// Everything a policy puts into one generation of the kernel maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// The configuration record (its `generation` is set when written).
    pub config: KernelConfig,
    /// The allow/block prefix tables.
    pub tables: PrefixTables,
    /// Rule configurations by slot.
    pub rules: BTreeMap<u32, RuleConfig>,
    /// Which slot takes a (protocol, port) key.
    pub matches: HashMap<RuleKey, u32>,
}

/// Assigns each rule a kernel slot, keeping the slot a rule of the same name had before, so
/// that a reload keeps rate-limit state and per-rule counters with their rule. New rules take
/// the lowest free slots.
pub fn assign_slots(previous: &HashMap<String, u32>, rules: &[Rule]) -> Vec<u32> {
    let mut taken: Vec<bool> = vec![false; MAX_RULES as usize];
    let mut slots: Vec<Option<u32>> = rules
        .iter()
        .map(|rule| previous.get(&rule.name).copied())
        .collect();
    for slot in slots.iter_mut() {
        if let Some(index) = *slot {
            match taken.get_mut(index as usize) {
                Some(used) if !*used => *used = true,
                _ => *slot = None,
            }
        }
    }
    let mut free = (0..MAX_RULES).filter(|slot| !taken[*slot as usize]);
    slots
        .into_iter()
        .map(|slot| slot.or_else(|| free.next()).unwrap_or(MAX_RULES - 1))
        .collect()
}

impl Compiled {
    /// Compiles `policy` with the allow and block lists `allow` and `block` (the policy's own
    /// lists plus whatever the daemon adds), its rules in `slots` (see [`assign_slots`]; the
    /// file order when `None`).
    pub fn build(
        policy: &Policy,
        allow: &[IpNet],
        block: &[IpNet],
        slots: Option<&[u32]>,
    ) -> Result<Self, CapacityError> {
        let tables = PrefixTables::build(allow, block, &policy.limits)?;
        let mut config = KernelConfig::new(policy.malformed);
        config.v6_short_mask = tables.v6_short_mask;
        if policy.dry_run {
            config.flags |= CONFIG_DRY_RUN;
        }
        if policy.events.max_per_second > 0 {
            config.flags |= CONFIG_EVENTS;
            config.events = per_cpu_event_bucket(
                policy.events.max_per_second,
                policy.events.burst,
                possible_cpus(),
            );
        }
        if policy.ebpf_log == crate::policy::EbpfLog::Debug {
            config.flags |= CONFIG_DEBUG_LOG;
        }
        let mut rules = BTreeMap::new();
        let mut matches = HashMap::new();
        for (index, rule) in policy.rules.iter().enumerate() {
            let slot = slots
                .and_then(|slots| slots.get(index).copied())
                .unwrap_or(index as u32);
            rules.insert(slot, rule.config);
            for key in rule.keys() {
                matches.insert(key, slot);
                config.rule_kinds |= match (key.protocol, key.port) {
                    (ANY_PROTOCOL, _) => RULES_FOR_ANY,
                    (_, ANY_PORT) => RULES_BY_PROTOCOL,
                    _ => RULES_BY_PORT,
                };
            }
            if rule.config.bans() {
                config.flags |= CONFIG_BANS;
                if rule.config.escalate_after > 0 {
                    let (v4, v6) = (rule.config.subnet_v4_len, rule.config.subnet_v6_len);
                    if v4 < 32 {
                        config.ban_v4_lengths |= 1 << v4;
                    }
                    if v6 < 128 {
                        config.ban_v6_lengths[(v6 / 64) as usize] |= 1 << (v6 % 64);
                    }
                }
            }
        }
        Ok(Self {
            config,
            tables,
            rules,
            matches,
        })
    }
}

/// CPUs the kernel may run the program on (the per-CPU maps' width).
pub fn possible_cpus() -> u32 {
    aya::util::nr_cpus()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(1)
        .max(1)
}

/// One CPU's event bucket: `cpus` of them add up to `per_second` events per second, with the
/// burst shared out (at least one event per CPU).
pub fn per_cpu_event_bucket(per_second: u32, burst: u32, cpus: u32) -> Bucket {
    let cpus = u64::from(cpus.max(1));
    let interval = (TICKS_PER_SECOND.saturating_mul(cpus) / u64::from(per_second.max(1))).max(1);
    let burst = (u64::from(burst) / cpus).max(1);
    Bucket {
        interval,
        tolerance: interval.saturating_mul(burst),
    }
}

/// What turns one hash map's content into another's.
#[derive(Debug, PartialEq, Eq)]
pub struct HashDiff<K, V> {
    /// Entries to insert or overwrite.
    pub upserts: Vec<(K, V)>,
    /// Keys to delete.
    pub deletes: Vec<K>,
}

/// The entries of `new` that differ from `old`, and the keys of `old` that `new` lacks.
pub fn diff_hash<K, V, S>(old: &HashMap<K, V, S>, new: &HashMap<K, V, S>) -> HashDiff<K, V>
where
    K: Copy + Eq + std::hash::Hash,
    V: Copy + PartialEq,
    S: std::hash::BuildHasher,
{
    HashDiff {
        upserts: new
            .iter()
            .filter(|(key, value)| old.get(key) != Some(value))
            .map(|(key, value)| (*key, *value))
            .collect(),
        deletes: old
            .keys()
            .filter(|key| !new.contains_key(key))
            .copied()
            .collect(),
    }
}

/// Array slots whose value differs between `old` and `new` (absent means `V::default()`), with
/// their new value.
pub fn diff_array<V, S>(old: &HashMap<u32, V, S>, new: &HashMap<u32, V, S>) -> Vec<(u32, V)>
where
    V: Copy + PartialEq + Default,
    S: std::hash::BuildHasher,
{
    let mut changed: Vec<(u32, V)> = new
        .iter()
        .filter(|(index, value)| old.get(index) != Some(value))
        .map(|(index, value)| (*index, *value))
        .collect();
    changed.extend(
        old.keys()
            .filter(|index| !new.contains_key(index))
            .map(|index| (*index, V::default())),
    );
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_cover_changes_additions_and_removals() {
        let old: HashMap<u32, u32> = [(1, 1), (2, 2), (3, 3)].into();
        let new: HashMap<u32, u32> = [(1, 1), (2, 20), (4, 4)].into();
        let mut diff = diff_hash(&old, &new);
        diff.upserts.sort_unstable();
        assert_eq!(diff.upserts, vec![(2, 20), (4, 4)]);
        assert_eq!(diff.deletes, vec![3]);
        let mut slots = diff_array(&old, &new);
        slots.sort_unstable();
        assert_eq!(slots, vec![(2, 20), (3, 0), (4, 4)]);
    }
}
