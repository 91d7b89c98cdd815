//! The apifw XDP program: parse, decide from the allow/block prefix tables, count, act. The
//! programs the tests and benchmarks measure it against live in their own crate (`test-ebpf`), so
//! that `apifw run` loads and creates only what the firewall uses.
//!
//! The rules are those of `firewall_common::model`, which the verdict tests hold this program to.
#![no_std]
#![no_main]
// Compare-and-exchange on map values: core's atomic types are not available for BPF targets.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "core::intrinsics atomics, see above")]

mod bans;
mod events;
mod limits;
mod parse;
mod prefixes;
mod ratelimit;
mod syncookie;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, xdp_action},
    macros::{map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use firewall_common::{
    Action, Counter, KernelConfig, Reason, Verdict,
    ablation::{self, Stage},
    admission::ADMISSION_SLOTS,
    config::{CONFIG_DEBUG_LOG, CONFIG_EVENTS},
    generation,
    lease::{LEASE_ENTRIES, Lease},
    prefix::{
        FLAG_ALLOW, FLAG_BLOCK, PrefixV4Key, PrefixV6Key, V4_SUMMARY_ENTRIES, V4Summary, V6Summary,
        V6SummaryKey,
    },
    rules::{
        BanEntry, BanKey, EscalationState, MAX_RULES, RULE_STATS_ENTRIES, RuleConfig, RuleKey,
        TrackKey, TrackState, rule_stats_index,
    },
    stats::{IFINDEX_ENTRIES, STATS_ENTRIES, stats_index_at},
    tracked::{TRACKED_ENTRIES, TrackedEntry},
};

use crate::parse::{Malformed, Source};

// The active policy generation (see `firewall_common::generation`).
#[map(name = "APIFW_ACTIVE")]
static ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "APIFW_CONFIG")]
static CONFIG: Array<KernelConfig> = Array::with_max_entries(generation::COUNT, 0);

#[map(name = "APIFW_STATS")]
static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STATS_ENTRIES, 0);

// The counter slot of each interface, by ifindex; filled by the daemon.
#[map(name = "APIFW_IFACES")]
static IFACES: Array<u32> = Array::with_max_entries(IFINDEX_ENTRIES, 0);

#[map(name = "APIFW_V4_SUMMARY")]
static V4_SUMMARY: Array<V4Summary> =
    Array::with_max_entries(generation::COUNT * V4_SUMMARY_ENTRIES, 0);

// Sizes of the prefix maps are set by the loader from the policy's `[limits]`. The plain hashes
// are not preallocated (`BPF_F_NO_PREALLOC`): their kernel memory follows the entries held (plus
// 16 bytes of bucket per entry of capacity), not the limits.
#[map(name = "APIFW_V4_PREFIXES")]
static V4_PREFIXES: HashMap<PrefixV4Key, u32> = HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

#[map(name = "APIFW_V6_SUMMARY")]
static V6_SUMMARY: HashMap<V6SummaryKey, V6Summary> =
    HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

#[map(name = "APIFW_V6_PREFIXES")]
static V6_PREFIXES: HashMap<PrefixV6Key, u32> = HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

#[map(name = "APIFW_RULES")]
static RULES: Array<RuleConfig> = Array::with_max_entries(generation::COUNT * MAX_RULES, 0);

#[map(name = "APIFW_RULE_MATCH")]
static RULE_MATCH: HashMap<RuleKey, u32> =
    HashMap::with_max_entries(generation::COUNT * 4 * MAX_RULES * 64, BPF_F_NO_PREALLOC);

// Sizes set by the loader from `[limits] max_tracked_sources` / `max_tracked_subnets`.
#[map(name = "APIFW_SOURCES")]
static SOURCES: LruHashMap<TrackKey, TrackState> = LruHashMap::with_max_entries(1, 0);

#[map(name = "APIFW_SUBNETS")]
static SUBNETS: LruHashMap<TrackKey, TrackState> = LruHashMap::with_max_entries(1, 0);

// Sizes set by the loader from `[limits] max_bans`. A plain hash: bans are never evicted by
// traffic, only removed when they expire.
#[map(name = "APIFW_BANS")]
static BANS: HashMap<BanKey, BanEntry> = HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

#[map(name = "APIFW_ESCALATION")]
static ESCALATION: LruHashMap<TrackKey, EscalationState> = LruHashMap::with_max_entries(1, 0);

// This CPU's leases on hot buckets (`firewall_common::lease`). Not pinned
// (`map_names::UNPINNED`): a new program starts with empty slots.
#[map(name = "APIFW_LEASES")]
static LEASES: PerCpuArray<Lease> = PerCpuArray::with_max_entries(LEASE_ENTRIES, 0);

// Each CPU's sightings of sources and subnets not yet tracked (`firewall_common::admission`):
// a first packet is a store here, not an LRU insert. A plain array of `ADMISSION_SLOTS` per
// possible CPU (sized by the loader), each CPU in its own range: a per-CPU array keeps every
// element in an allocation of its own, so a random slot cost two dependent cache misses (the
// element's pointer, then the element), the largest part of a new source's first packet. Not
// pinned.
#[map(name = "APIFW_ADMISSION")]
static ADMISSION: Array<u64> = Array::with_max_entries(ADMISSION_SLOTS, 0);

// Which sources and subnets may have state (`firewall_common::tracked`): an unknown key is told
// by one read here instead of an LRU lookup. Shared by all CPUs. Not pinned.
#[map(name = "APIFW_TRACKED")]
static TRACKED: Array<TrackedEntry> = Array::with_max_entries(TRACKED_ENTRIES, 0);

#[map(name = "APIFW_RULE_STATS")]
static RULE_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(RULE_STATS_ENTRIES, 0);

// The stage after which the program stops (`firewall_common::ablation`, whose
// `STOP_AFTER_GLOBAL` is this symbol's name): set only by the loader of the benchmark and the
// tests. In `.rodata`, frozen before the program loads, so the verifier knows the value and walks
// only the branches it takes; the shipped value stops nowhere.
#[unsafe(no_mangle)]
static APIFW_STOP_AFTER: u32 = ablation::NEVER;

/// Whether the program stops at or before `stage` (see `firewall_common::ablation`). Marked
/// unlikely so that LLVM lays the stops out of the packet's way: without it, it spilled an
/// undefined register in the IPv6 probe loops, which the verifier rejects.
#[inline(always)]
fn stops(stage: Stage) -> bool {
    // SAFETY: a read of a static `u32` through a valid, aligned pointer. Volatile, or LLVM would
    // fold the initial value in and the loader's value would never be read.
    let stop_after = unsafe { core::ptr::read_volatile(&raw const APIFW_STOP_AFTER) };
    core::intrinsics::unlikely(stage.stops(stop_after))
}

/// What a stage that stops the program returns to the rest of it: the caller leaves at once
/// (`stops` again), so the verdict is never used or counted.
const STOPPED: Verdict = Verdict::new(Action::Pass, Reason::Default);

/// The firewall.
#[xdp]
pub fn apifw(ctx: XdpContext) -> u32 {
    // Read once: everything below uses this generation's configuration and tables, so a policy
    // swap in the middle of this packet cannot mix old and new entries.
    let active = ACTIVE.get(0).map_or(0, |generation| *generation) % generation::COUNT;
    // Both generations of an array map always exist; the check is for the verifier. Borrowed,
    // not copied: the 512-byte stack is shared with everything below.
    let Some(config) = CONFIG.get(active) else {
        return xdp_action::XDP_PASS;
    };
    if stops(Stage::Config) {
        return xdp_action::XDP_PASS;
    }
    let verdict = match try_apifw(&ctx, config) {
        Ok(verdict) => verdict,
        Err(Malformed) => Verdict::new(config.malformed(), Reason::Malformed),
    };
    finish_logged(&ctx, config, verdict)
}

/// Counts the verdict under the receiving interface and turns it into the XDP action, with the
/// debug log when it is on: the last stage of the firewall program.
#[inline(always)]
fn finish_logged(ctx: &XdpContext, config: &KernelConfig, verdict: Verdict) -> u32 {
    // Every stage up to here: what follows (interface slot, debug log, counters) is the last.
    if stops(Stage::Events) {
        return xdp_action::XDP_PASS;
    }
    // Off by default: one test of a flag in a record already loaded.
    if config.flags & CONFIG_DEBUG_LOG != 0 {
        aya_log_ebpf::debug!(
            ctx,
            "apifw: ifindex {} len {} -> action {} reason {}",
            ctx.ingress_ifindex() as u32,
            ctx.data_end() - ctx.data(),
            verdict.action as u32,
            verdict.reason as u32
        );
    }
    finish(ctx, verdict)
}

/// Counts the verdict under the receiving interface and turns it into the XDP action: the last
/// stage of the firewall program and of the limits and cookie programs it tail-calls (those
/// without the debug log: its formatting code, called from three programs, becomes a BPF
/// subprogram whose stack frame the limits program has no room for).
#[inline(always)]
fn finish(ctx: &XdpContext, verdict: Verdict) -> u32 {
    if stops(Stage::Events) {
        return xdp_action::XDP_PASS;
    }
    let ifindex = ctx.ingress_ifindex() as u32;
    let slot = IFACES.get(ifindex).map_or(0, |slot| *slot);
    count_in(
        &STATS,
        stats_index_at(slot, verdict.action, verdict.reason),
        ctx.data_end() - ctx.data(),
    );
    match verdict.action {
        Action::Pass => xdp_action::XDP_PASS,
        Action::Drop => xdp_action::XDP_DROP,
    }
}

#[inline(always)]
fn try_apifw(ctx: &XdpContext, config: &KernelConfig) -> Result<Verdict, Malformed> {
    let packet = match parse::parse(ctx)? {
        Some(packet) => packet,
        None => return Ok(Verdict::new(Action::Pass, Reason::NonIp)),
    };
    if stops(Stage::Parse) {
        return Ok(STOPPED);
    }
    let flags = match packet.source {
        Source::V4(addr) => prefixes::lookup_v4(addr, config.generation),
        Source::V6(hi, lo) => prefixes::lookup_v6(hi, lo, config.v6_short_mask, config.generation),
    };
    // The summary stage stops inside the lookups.
    if stops(Stage::Probes) {
        return Ok(STOPPED);
    }
    if flags & FLAG_ALLOW != 0 {
        return Ok(Verdict::new(Action::Pass, Reason::Allowlist));
    }
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (rule, reason) = if flags & FLAG_BLOCK != 0 {
        (ratelimit::NO_RULE, Reason::Blocklist)
    } else {
        let checked = ratelimit::check(&packet, config);
        if checked.limits {
            limits::hand_over(ctx, &packet, len, checked.rule, config, checked.now_ns);
            // Not reached while the limits program is in its (pinned) array: if it is not,
            // the packet passes under its rule, uncharged.
        }
        (checked.rule, checked.reason)
    };
    // The state, bucket and later stages stop in the limits program.
    if stops(Stage::Bucket) {
        return Ok(STOPPED);
    }
    Ok(verdict_of(ctx, config, &packet.source, rule, reason, len))
}

/// The verdict of `reason` under `rule` (none: [`ratelimit::NO_RULE`]): counted under the rule,
/// and reported when it drops.
#[inline(always)]
fn verdict_of(
    ctx: &XdpContext,
    config: &KernelConfig,
    source: &Source,
    rule: u32,
    reason: Reason,
    len: u64,
) -> Verdict {
    if rule != ratelimit::NO_RULE {
        count_in(&RULE_STATS, rule_stats_index(rule, reason), len as usize);
    }
    if stops(Stage::RuleCounters) {
        return STOPPED;
    }
    let action = match reason {
        Reason::Blocklist
        | Reason::RateLimited
        | Reason::SynLimited
        | Reason::Banned
        | Reason::SubnetBanned
        | Reason::SynCookie
        | Reason::BadCookie => Action::Drop,
        _ => Action::Pass,
    };
    // A SYN answered with a cookie is no source's misdeed: a flood would only fill the ring.
    if action == Action::Drop && reason != Reason::SynCookie && config.flags & CONFIG_EVENTS != 0 {
        events::emit(
            source,
            reason,
            rule,
            len,
            ctx.ingress_ifindex() as u32,
            config,
        );
    }
    Verdict::new(action, reason)
}

#[inline(always)]
fn count_in(map: &PerCpuArray<Counter>, index: u32, len: usize) {
    if let Some(counter) = map.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup, so it points at this
        // CPU's slot, which nothing else writes while this program runs on this CPU.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += len as u64;
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects programs that can reach a panic, so this is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
