//! The limits program: a rule's buckets (`ratelimit::exceeded`), its counters and the verdict,
//! for a packet the firewall program found a rule for. Tail-called, so that the verifier walks
//! the buckets once from one entry state instead of once per state the parser and the prefix
//! probes leave behind (about 3,000): with them inline the firewall program was at 800k of the
//! verifier's 1M instructions, and no feature could be added to the rule path. The packet's
//! parsed fields travel in this CPU's slot of `APIFW_HANDOFF`.
//!
//! Both maps are pinned: the kernel empties a program array when its last user reference goes,
//! and an attached program that survives its daemon must still reach its limits program; the
//! hand-off slot must be the one the attached program writes, also while a new daemon takes
//! over.

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use firewall_common::{
    KernelConfig,
    ablation::Stage,
    handoff::{Handoff, JUMP_COOKIE, JUMP_LIMITS, JUMP_SLOTS},
    rules::rule_index,
};

use crate::{
    CONFIG, RULES, finish,
    parse::{Packet, Source},
    ratelimit, stops, syncookie, verdict_of,
};

/// [`JUMP_LIMITS`]: [`apifw_limits`]; [`JUMP_COOKIE`]: `syncookie::apifw_syn_cookie`. Filled
/// by the loader.
#[map(name = "APIFW_JUMP")]
static JUMP: ProgramArray = ProgramArray::with_max_entries(JUMP_SLOTS, 0);

/// This CPU's packet in flight between the programs (`firewall_common::handoff`).
#[map(name = "APIFW_HANDOFF")]
static HANDOFF: PerCpuArray<Handoff> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's hand-off slot (None only if the map is missing, which the loader rules out).
#[inline(always)]
pub fn handoff() -> Option<&'static mut Handoff> {
    let slot = HANDOFF.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot of a per-CPU array: only the firewall's programs touch it, one at a
    // time on this CPU (a packet's programs run back to back), and it lives as long as the map.
    Some(unsafe { &mut *slot })
}

/// Tail-calls `slot` of the jump array; returns only if the slot is empty.
#[inline(always)]
pub fn jump(ctx: &XdpContext, slot: u32) {
    // SAFETY: a tail call with the program's own context; on success it does not return.
    unsafe { JUMP.tail_call(ctx, slot) };
}

/// Hands the packet and its rule to the limits program. Returns only if that program is not in
/// the jump array.
#[inline(always)]
pub fn hand_over(
    ctx: &XdpContext,
    packet: &Packet,
    len: u64,
    rule: u32,
    config: &KernelConfig,
    now_ns: u64,
) {
    let Some(handoff) = handoff() else {
        return;
    };
    handoff.rule = rule;
    handoff.generation = config.generation;
    handoff.len = len;
    handoff.now_ns = now_ns;
    handoff.protocol = u32::from(packet.protocol);
    handoff.tcp_flags = u32::from(packet.tcp_flags);
    handoff.port = packet.dst_port.map_or(NO_PORT, u32::from);
    match packet.source {
        Source::V4(addr) => {
            handoff.family = 4;
            handoff.hi = u64::from(addr);
            handoff.lo = 0;
        }
        Source::V6(hi, lo) => {
            handoff.family = 6;
            handoff.hi = hi;
            handoff.lo = lo;
        }
    }
    handoff.returned = 0;
    jump(ctx, JUMP_LIMITS);
}

/// [`Handoff::port`] of a packet without a port.
const NO_PORT: u32 = u32::MAX;

/// The packet [`hand_over`] stored.
#[inline(always)]
pub fn packet_of(handoff: &Handoff) -> Packet {
    Packet {
        source: if handoff.family == 6 {
            Source::V6(handoff.hi, handoff.lo)
        } else {
            Source::V4(handoff.hi as u32)
        },
        protocol: handoff.protocol as u8,
        dst_port: if handoff.port == NO_PORT {
            None
        } else {
            Some(handoff.port as u16)
        },
        tcp_flags: handoff.tcp_flags as u8,
    }
}

/// The limits program: the SYN cookie path when the rule has one and the packet is for it,
/// else the rule's buckets, its counters and the verdict.
#[xdp]
pub fn apifw_limits(ctx: XdpContext) -> u32 {
    let Some(handoff) = handoff() else {
        return xdp_action::XDP_PASS;
    };
    let Some(config) = CONFIG.get(handoff.generation) else {
        return xdp_action::XDP_PASS;
    };
    let rule = handoff.rule;
    let Some(rule_config) = RULES.get(rule_index(config.generation, rule)) else {
        return xdp_action::XDP_PASS;
    };
    let packet = packet_of(handoff);
    if handoff.returned == 0 && syncookie::wants(&packet, rule_config, config) {
        jump(&ctx, JUMP_COOKIE);
        // No cookie program: the rule's buckets, as without cookies.
    }
    handoff.returned = 0;
    let len = handoff.len;
    let reason = ratelimit::exceeded(&packet, len, rule, config, handoff.now_ns);
    if stops(Stage::Bucket) {
        return xdp_action::XDP_PASS;
    }
    let verdict = verdict_of(&ctx, config, &packet.source, rule, reason, len);
    finish(&ctx, verdict)
}
