//! Rate-limit rules in the kernel: find the packet's rule, then charge its buckets in the order
//! of `firewall_common::model::Model::decide`. Bucket state is shared by all CPUs and updated
//! with compare-and-exchange, so two CPUs never admit the same token twice.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use core::intrinsics::{AtomicOrdering, atomic_cxchg};
use firewall_common::{
    KernelConfig, Reason,
    config::{CONFIG_BANS, CONFIG_DRY_RUN, RULES_BY_PORT, RULES_BY_PROTOCOL, RULES_FOR_ANY},
    packet::IPPROTO_TCP,
    ratelimit::{Bucket, ticks},
    rules::{
        ADMISSION_WINDOW_NS, ANY_PORT, ANY_PROTOCOL, RuleKey, TrackKey, TrackState, rule_index,
    },
};

use crate::{
    CANDIDATES, RULE_MATCH, RULES, SOURCES, SUBNETS, bans,
    parse::{Packet, Source},
};

/// Compare-and-exchange attempts before a contended update counts as exceeding: only many
/// CPUs hammering one source's bucket at once get there, and failing closed is right then.
const CAS_ATTEMPTS: u32 = 8;

/// No rule takes the packet. (Sentinels rather than `Option`s throughout: LLVM may spill the
/// undefined payload of a `None`, which the verifier rejects as an uninitialised read.)
pub const NO_RULE: u32 = u32::MAX;

/// The rule that takes `packet` by the model's precedence, or [`NO_RULE`]. Only kinds of keys
/// that exist (`config.rule_kinds`) are looked up: a policy without rules costs no lookup.
#[inline(always)]
fn rule_for(packet: &Packet, kinds: u32, generation: u32) -> u32 {
    let lookup = |key: RuleKey| {
        // SAFETY: pointer from a successful lookup; the value is a plain u32.
        RULE_MATCH
            .get_ptr(key.in_generation(generation))
            .map_or(NO_RULE, |rule| unsafe { *rule })
    };
    let mut rule = NO_RULE;
    if kinds & RULES_BY_PORT != 0
        && let Some(port) = packet.dst_port
    {
        rule = lookup(RuleKey::new(packet.protocol, port));
    }
    if rule == NO_RULE && kinds & RULES_BY_PROTOCOL != 0 {
        rule = lookup(RuleKey::new(packet.protocol, ANY_PORT));
    }
    if rule == NO_RULE && kinds & RULES_FOR_ANY != 0 {
        rule = lookup(RuleKey::new(ANY_PROTOCOL, ANY_PORT));
    }
    rule
}

/// Charges `bucket` with `cost` on the TAT at `tat`; `false` if the packet exceeds it.
#[inline(always)]
fn charge(tat: *mut u64, bucket: &Bucket, now: u64, cost: u64) -> bool {
    for _ in 0..CAS_ATTEMPTS {
        // An aligned 8-byte load is one instruction, so it never sees a torn value (BPF v3 has
        // no atomic-load instruction for LLVM to select).
        // SAFETY: `tat` points into a map value that stays valid for this program run (the
        // kernel frees map elements only after an RCU grace period); 8-byte aligned.
        let current = unsafe { core::ptr::read_volatile(tat) };
        let Some(next) = bucket.charge(current, now, cost) else {
            return false;
        };
        if next == current {
            return true;
        }
        // SAFETY: as above.
        let (_, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                tat, current, next,
            )
        };
        if swapped {
            return true;
        }
    }
    false
}

/// The per-source state of `key`, if the source is tracked. A source that is not gets state
/// on its second packet within `ADMISSION_WINDOW_NS`; its first packet only makes it a
/// candidate, so a flood of one-packet spoofed sources churns the candidate map and never evicts
/// the state of sources that are really talking.
#[inline(always)]
fn admitted_state(key: &TrackKey, now_ns: u64) -> Option<*mut TrackState> {
    if let Some(state) = SOURCES.get_ptr_mut(key) {
        return Some(state);
    }
    // SAFETY: pointer from a successful lookup; the value is a plain u64.
    let first_seen = CANDIDATES.get_ptr(key).map_or(0, |seen| unsafe { *seen });
    if first_seen != 0 && now_ns.wrapping_sub(first_seen) <= ADMISSION_WINDOW_NS {
        state(&SOURCES, key)
    } else {
        let _ = CANDIDATES.insert(key, now_ns, 0);
        None
    }
}

/// The state of `key`, created empty when missing.
#[inline(always)]
fn state(
    map: &aya_ebpf::maps::LruHashMap<TrackKey, TrackState>,
    key: &TrackKey,
) -> Option<*mut TrackState> {
    if let Some(state) = map.get_ptr_mut(key) {
        return Some(state);
    }
    // Another CPU may insert first: then NOEXIST fails and the lookup below finds its entry.
    let _ = map.insert(key, TrackState::default(), u64::from(BPF_NOEXIST));
    map.get_ptr_mut(key)
}

/// The program's clock: `bpf_ktime_get_ns` (CLOCK_MONOTONIC), or the test hook.
#[inline(always)]
pub fn now_ns(config: &KernelConfig) -> u64 {
    if config.test_clock_ns != 0 {
        config.test_clock_ns
    } else {
        // SAFETY: a helper without arguments or preconditions.
        unsafe { bpf_ktime_get_ns() }
    }
}

/// Bans, then the rule that takes the packet: the rule ([`NO_RULE`] if none, or when a ban
/// decided) and the outcome (`Banned`/`SubnetBanned`, or that of the rule's buckets).
#[inline(always)]
pub fn check(packet: &Packet, len: u64, config: &KernelConfig) -> (u32, Reason) {
    let bans_on = config.flags & CONFIG_BANS != 0;
    let rule = rule_for(packet, config.rule_kinds, config.generation);
    if rule == NO_RULE && !bans_on {
        return (NO_RULE, Reason::Default);
    }
    let now_ns = now_ns(config);
    if bans_on {
        let banned = bans::check(packet.source, config, now_ns);
        if banned != Reason::Default {
            return (NO_RULE, banned);
        }
    }
    if rule == NO_RULE {
        return (NO_RULE, Reason::Default);
    }
    (rule, exceeded(packet, len, rule, config, now_ns))
}

/// `Reason::Default` when every bucket has room, else the reason of the first full one
/// (`WouldDrop` under dry run).
#[inline(always)]
fn exceeded(packet: &Packet, len: u64, rule: u32, config: &KernelConfig, now_ns: u64) -> Reason {
    // Borrowed from the map rather than copied: a RuleConfig is 128 bytes of a 512-byte stack.
    let Some(rule_config) = RULES.get(rule_index(config.generation, rule)) else {
        return Reason::Default;
    };
    let now = ticks(now_ns);
    let (source_key, subnet_key) = match packet.source {
        Source::V4(addr) => (
            TrackKey::v4(rule, addr, 32),
            TrackKey::v4(rule, addr, rule_config.subnet_v4_len),
        ),
        Source::V6(hi, lo) => (
            TrackKey::v6(rule, hi, lo, 128),
            TrackKey::v6(rule, hi, lo, rule_config.subnet_v6_len),
        ),
    };
    let is_syn = packet.protocol == IPPROTO_TCP
        && firewall_common::packet::opens_connection(packet.tcp_flags);

    let limits_source = (is_syn && rule_config.syn.is_limited())
        || rule_config.source_packets.is_limited()
        || rule_config.source_bytes.is_limited();
    let mut reason = Reason::Default;
    // Per-source state exists when a source bucket must be charged or bans need its history,
    // and only from a source's second packet (admission).
    let source = if limits_source || rule_config.bans() {
        admitted_state(&source_key, now_ns)
    } else {
        None
    };
    if !limits_source {
        // No per-source bucket to charge.
    } else if let Some(source) = source {
        // SAFETY: `source` is a valid map value pointer; fields are 8-byte aligned u64s.
        let (packets, bytes, syn) = unsafe {
            (
                &raw mut (*source).packets,
                &raw mut (*source).bytes,
                &raw mut (*source).syn,
            )
        };
        if is_syn && rule_config.syn.is_limited() && !charge(syn, &rule_config.syn, now, 1) {
            reason = Reason::SynLimited;
        } else if !charge(packets, &rule_config.source_packets, now, 1)
            || !charge(bytes, &rule_config.source_bytes, now, len)
        {
            reason = Reason::RateLimited;
        }
    }
    if reason == Reason::Default
        && rule_config.limits_subnets()
        && let Some(subnet) = state(&SUBNETS, &subnet_key)
    {
        // SAFETY: as above.
        let (packets, bytes) = unsafe { (&raw mut (*subnet).packets, &raw mut (*subnet).bytes) };
        if !charge(packets, &rule_config.subnet_packets, now, 1)
            || !charge(bytes, &rule_config.subnet_bytes, now, len)
        {
            reason = Reason::RateLimited;
        }
    }
    if reason == Reason::Default {
        return reason;
    }
    let dry_run = config.flags & CONFIG_DRY_RUN != 0 || rule_config.dry_run();
    let ban = rule_config.bans()
        && source.is_some_and(|source| bans::exceeding_long_enough(source, rule_config, now_ns));
    match (dry_run, ban) {
        (true, true) => Reason::WouldBan,
        (true, false) => Reason::WouldDrop,
        // The packet that triggers a ban counts as banned (per rule: the bans it made).
        (false, true) => {
            if bans::ban(rule, rule_config, &source_key, &subnet_key, now_ns) {
                Reason::SubnetBanned
            } else {
                Reason::Banned
            }
        }
        (false, false) => reason,
    }
}
