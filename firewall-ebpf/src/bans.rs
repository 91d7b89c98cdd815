//! Bans in the kernel: checked for every packet that is neither allowlisted nor blocklisted
//! (when any rule bans), made when a source keeps exceeding a banning rule, and escalated to the
//! subnet when enough of a subnet's sources were banned. The decisions themselves
//! (`BanEntry::active_at`, `TrackState::record_refusal`, `EscalationState::count_ban`) live in
//! `firewall-common`, shared with the reference model; this module only finds the map entries.

use firewall_common::{
    KernelConfig, Reason,
    prefix::highest_bit,
    rules::{
        BAN_HOST, BAN_SUBNET, BanEntry, BanKey, EscalationState, RuleConfig, TrackKey, TrackState,
    },
};

use crate::{BANS, ESCALATION, parse::Source};

/// Whether `key` has an unexpired ban at `now_ns`.
#[inline(always)]
fn active(key: &TrackKey, now_ns: u64) -> bool {
    // SAFETY: pointer from a successful lookup; a concurrent update gives an old or new expiry,
    // both valid u64 values.
    BANS.get_ptr(BanKey::of(key))
        .is_some_and(|ban| unsafe { (*ban).active_at(now_ns) })
}

/// `Reason::Banned` / `Reason::SubnetBanned` if the source is banned, else `Reason::Default`.
#[inline(always)]
pub fn check(source: Source, config: &KernelConfig, now_ns: u64) -> Reason {
    match source {
        Source::V4(addr) => {
            if active(&TrackKey::v4(0, addr, 32), now_ns) {
                return Reason::Banned;
            }
            let mut lengths = config.ban_v4_lengths;
            for _ in 0..32 {
                if lengths == 0 {
                    break;
                }
                let len = highest_bit(lengths);
                lengths &= !(1u64 << len);
                if active(&TrackKey::v4(0, addr, len), now_ns) {
                    return Reason::SubnetBanned;
                }
            }
        }
        Source::V6(hi, lo) => {
            if active(&TrackKey::v6(0, hi, lo, 128), now_ns) {
                return Reason::Banned;
            }
            let [mut low, mut high] = config.ban_v6_lengths;
            for _ in 0..64 {
                if high == 0 {
                    break;
                }
                let bit = highest_bit(high);
                high &= !(1u64 << bit);
                if active(&TrackKey::v6(0, hi, lo, 64 + bit), now_ns) {
                    return Reason::SubnetBanned;
                }
            }
            for _ in 0..64 {
                if low == 0 {
                    break;
                }
                let bit = highest_bit(low);
                low &= !(1u64 << bit);
                if active(&TrackKey::v6(0, hi, lo, bit), now_ns) {
                    return Reason::SubnetBanned;
                }
            }
        }
    }
    Reason::Default
}

/// Records a refusal of the source whose state is `state`; whether it has now been exceeding for
/// the rule's `ban_after_ns` (the clock then starts again).
///
/// Plain reads and writes: two CPUs racing here can only shift the moment of the ban by a packet.
#[inline(always)]
pub fn exceeding_long_enough(state: *mut TrackState, config: &RuleConfig, now_ns: u64) -> bool {
    // SAFETY: `state` is a valid map value pointer (see `ratelimit::state`), aligned and live
    // for the program's run.
    unsafe { (*state).record_refusal(config.ban_after_ns, now_ns) }
}

/// Bans the source, and its subnet when enough of the subnet's sources were banned lately;
/// `true` when the subnet was banned.
#[inline(always)]
pub fn ban(
    rule: u32,
    config: &RuleConfig,
    source: &TrackKey,
    subnet: &TrackKey,
    now_ns: u64,
) -> bool {
    let entry = BanEntry::new(now_ns, config.ban_ttl_ns, rule, BAN_HOST);
    // A full ban map refuses the insert; the packet is dropped as rate-limited all the same.
    let _ = BANS.insert(BanKey::of(source), entry, 0);
    if config.escalate_after == 0 {
        return false;
    }
    if ESCALATION.get_ptr_mut(subnet).is_none() {
        let _ = ESCALATION.insert(subnet, EscalationState::default(), 0);
    }
    let Some(state) = ESCALATION.get_ptr_mut(subnet) else {
        return false;
    };
    // SAFETY: valid map value pointer from a successful lookup, aligned and live for the
    // program's run.
    let escalate = unsafe { (*state).count_ban(config.escalate_after, config.ban_ttl_ns, now_ns) };
    if escalate {
        let entry = BanEntry::new(now_ns, config.subnet_ban_ttl_ns, rule, BAN_SUBNET);
        let _ = BANS.insert(BanKey::of(subnet), entry, 0);
    }
    escalate
}
