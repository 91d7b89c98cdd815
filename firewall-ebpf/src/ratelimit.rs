//! Rate-limit rules in the kernel: find the packet's rule, then charge its buckets in the order
//! of `firewall_common::model::Model::decide`. Bucket state is shared by all CPUs and updated
//! with compare-and-exchange, so two CPUs never admit the same token twice; each CPU takes the
//! units of a hot bucket in leases (`firewall_common::lease`) and spends them in its own slot of
//! `APIFW_LEASES`, so a hot source or subnet costs no shared write per packet.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    maps::LruHashMap,
};
use core::intrinsics::{AtomicOrdering, atomic_cxchg};
use firewall_common::{
    KernelConfig, Reason,
    ablation::Stage,
    admission::{ADMISSION_SLOTS, Sighting, key_hash},
    config::{CONFIG_BANS, CONFIG_DRY_RUN, RULES_BY_PORT, RULES_BY_PROTOCOL, RULES_FOR_ANY},
    lease::{Field, LEASE_SOURCE, LEASE_SUBNET, Lease},
    packet::IPPROTO_TCP,
    ratelimit::{Bucket, ticks},
    rules::{ANY_PORT, ANY_PROTOCOL, RuleConfig, RuleKey, TrackKey, TrackState, rule_index},
    tracked::{Mark, current_word},
};

use crate::{
    ADMISSION, LEASES, RULE_MATCH, RULES, SOURCES, SUBNETS, TRACKED, bans,
    parse::{Packet, Source},
    stops,
};

/// Compare-and-exchange attempts before a contended refill counts as exceeding: with leases a
/// CPU writes a bucket's TAT once per lease, so contention is rare, and failing closed is right
/// then. Each attempt is walked by the verifier at every bucket (8 attempts cost 150k of its 1M
/// instructions; 4 keep the program at about 710k).
const CAS_ATTEMPTS: u32 = 4;

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

/// What [`refill`] returns as units left when the bucket has no room (nothing was written).
const NO_ROOM: u64 = u64::MAX;

/// Refills a lease from the TAT at `tat`: gives its `left` units back and takes a new lease for a
/// packet of `cost` (`Bucket::refill`, shared with the model), by compare-and-exchange. The TAT
/// after it and the units left after this packet, or [`NO_ROOM`] as the units. A bucket without
/// room is only read.
#[inline(always)]
fn refill(tat: *mut u64, bucket: &Bucket, now: u64, left: u64, cost: u64) -> (u64, u64) {
    for _ in 0..CAS_ATTEMPTS {
        // An aligned 8-byte load is one instruction, so it never sees a torn value (BPF v3 has
        // no atomic-load instruction for LLVM to select).
        // SAFETY: `tat` points into a map value that stays valid for this program run (the
        // kernel frees map elements only after an RCU grace period); 8-byte aligned.
        let current = unsafe { core::ptr::read_volatile(tat) };
        let (next, left_after) = match bucket.refill(current, now, left, cost) {
            Some(refilled) => refilled,
            None => return (current, NO_ROOM),
        };
        if next == current {
            return (next, left_after);
        }
        // SAFETY: as above.
        let (_, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                tat, current, next,
            )
        };
        if swapped {
            return (next, left_after);
        }
    }
    (0, NO_ROOM)
}

/// Gives `left` unspent units back to the TAT at `tat` (a slot changing hands), with one
/// compare-and-exchange: if another CPU changed the TAT meanwhile, the units are lost, which
/// can only refuse a packet later, never admit one (and keeps the verifier's paths few).
#[inline(always)]
fn give_back(tat: *mut u64, bucket: &Bucket, now: u64, left: u64) {
    if left == 0 || !bucket.is_limited() {
        return;
    }
    // SAFETY: as in `refill`.
    let current = unsafe { core::ptr::read_volatile(tat) };
    let next = bucket.give_back(current, now, left);
    if next != current {
        // SAFETY: as in `refill`.
        unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                tat, current, next,
            )
        };
    }
}

/// The TAT of `field` in the state at `state`.
#[inline(always)]
fn tat_of(state: *mut TrackState, field: Field) -> *mut u64 {
    // SAFETY: `state` is a valid map value pointer; only a field address is taken.
    unsafe {
        match field {
            Field::Packets => &raw mut (*state).packets,
            Field::Bytes => &raw mut (*state).bytes,
            Field::Syn => &raw mut (*state).syn,
        }
    }
}

/// Charges `cost` units of `bucket`'s `field` through `lease`, which holds the key of `state`
/// (non-null): from the lease when it covers them, else by a refill from the state's TAT.
/// `false` when the bucket has no room.
#[inline(always)]
fn charge(
    lease: &mut Lease,
    state: *mut TrackState,
    bucket: &Bucket,
    field: Field,
    now: u64,
    cost: u64,
) -> bool {
    if !bucket.is_limited() {
        return true;
    }
    if lease.covers(field, now, cost) {
        lease.spend(field, cost);
        return true;
    }
    let (next, left) = refill(
        tat_of(state, field),
        bucket,
        now,
        lease.returnable(field, now),
        cost,
    );
    if left == NO_ROOM {
        return false;
    }
    lease.refilled(field, now, left, next);
    true
}

/// Makes `lease` the slot of `key`: if it held another key, that key's units go back first.
#[inline(always)]
fn claim(lease: &mut Lease, key: &TrackKey, kind: u32, now: u64, generation: u32) {
    if !lease.holds(key) {
        give_back_slot(lease, kind, now, generation);
        lease.claim(key);
    }
}

/// Gives the units a slot holds back to the buckets of the key it held (if that key still has
/// state), before the slot goes to another key.
#[inline(always)]
fn give_back_slot(lease: &Lease, kind: u32, now: u64, generation: u32) {
    if lease.held == 0 {
        return;
    }
    let Some(config) = RULES.get(rule_index(generation, u32::from(lease.key.rule))) else {
        return;
    };
    let map: &LruHashMap<TrackKey, TrackState> = if kind == LEASE_SUBNET {
        &SUBNETS
    } else {
        &SOURCES
    };
    let Some(state) = map.get_ptr_mut(lease.key) else {
        return;
    };
    let subnet = kind == LEASE_SUBNET;
    for field in Field::ALL {
        let bucket = match (subnet, field) {
            (false, Field::Packets) => config.source_packets,
            (false, Field::Bytes) => config.source_bytes,
            (false, Field::Syn) => config.syn,
            (true, Field::Packets) => config.subnet_packets,
            (true, Field::Bytes) => config.subnet_bytes,
            (true, Field::Syn) => Bucket::UNLIMITED,
        };
        give_back(
            tat_of(state, field),
            &bucket,
            now,
            lease.returnable(field, now),
        );
    }
}

/// The state of `key` in `map` (sources or subnets), if the key is tracked. `known`: whether
/// the tracked filter holds the key (`is_tracked`); only then is the map looked at first. A key
/// the filter does not hold gets state on its second sighting within `ADMISSION_WINDOW_NS` on
/// this CPU (found again if it still has some); its first is a store into this CPU's admission
/// array (`firewall_common::admission`), so a flood of one-packet spoofed sources looks nothing
/// up and inserts nothing into the LRU maps, and evicts no state of sources that are really
/// talking. A key whose state is found or made gets its bit in the filter.
#[inline(always)]
fn admitted_state(
    map: &LruHashMap<TrackKey, TrackState>,
    key: &TrackKey,
    hash: u64,
    known: bool,
    now_ns: u64,
) -> Option<*mut TrackState> {
    let mark = Mark::of_hash(hash);
    if known && let Some(state) = map.get_ptr_mut(key) {
        mark_tracked(&mark, now_ns);
        return Some(state);
    }
    let sighting = Sighting::of_hash(hash);
    // SAFETY: a helper without arguments or preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let slot = ADMISSION.get_ptr_mut(cpu.wrapping_mul(ADMISSION_SLOTS) | sighting.slot)?;
    // SAFETY: a slot in this CPU's range of the array: no other CPU writes it, and nothing else
    // on this CPU while this program runs here; it lives for the whole run; a plain u64.
    let slot = unsafe { &mut *slot };
    if sighting.seen_recently(*slot, now_ns) {
        let state = state(map, key)?;
        mark_tracked(&mark, now_ns);
        Some(state)
    } else {
        *slot = sighting.recorded_at(now_ns);
        None
    }
}

/// Whether the tracked filter holds the key of `mark` at `now_ns`.
#[inline(always)]
fn is_tracked(mark: &Mark, now_ns: u64) -> bool {
    TRACKED
        .get(mark.entry)
        .is_some_and(|entry| mark.present(entry, now_ns))
}

/// Sets the bit of `mark` in the current epoch's word of its entry (a read only, when it is
/// set). Other CPUs set bits of the same word: compare-and-exchange, tried twice; a bit lost
/// after that sends its key through admission once (`firewall_common::tracked`).
#[inline(always)]
pub fn mark_tracked(mark: &Mark, now_ns: u64) {
    let Some(entry) = TRACKED.get_ptr_mut(mark.entry) else {
        return;
    };
    // SAFETY: `entry` points at an array element, valid for the program's run; only the
    // address of one of its two words is taken.
    let word: *mut u64 = unsafe {
        if current_word(now_ns) == 0 {
            &raw mut (*entry).words[0]
        } else {
            &raw mut (*entry).words[1]
        }
    };
    for _ in 0..2 {
        // SAFETY: an aligned 8-byte load of the word above (one instruction, never torn).
        let current = unsafe { core::ptr::read_volatile(word) };
        let Some(next) = mark.marked(current, now_ns) else {
            return;
        };
        // SAFETY: as above.
        let (_, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                word, current, next,
            )
        };
        if swapped {
            return;
        }
    }
}

/// The state of `key`, created empty when missing.
#[inline(always)]
fn state(map: &LruHashMap<TrackKey, TrackState>, key: &TrackKey) -> Option<*mut TrackState> {
    if let Some(state) = map.get_ptr_mut(key) {
        return Some(state);
    }
    // Another CPU may insert first: then NOEXIST fails and the lookup below finds its entry.
    let _ = map.insert(key, TrackState::default(), u64::from(BPF_NOEXIST));
    map.get_ptr_mut(key)
}

/// The buckets' clock: `bpf_ktime_get_ns` (CLOCK_MONOTONIC), or the test hook. Read only when
/// a bucket is charged: on a virtual machine it costs as much as the rest of a new source's
/// first packet.
#[inline(always)]
pub fn now_ns(config: &KernelConfig) -> u64 {
    if config.test_clock_ns != 0 {
        config.test_clock_ns
    } else {
        // SAFETY: a helper without arguments or preconditions.
        unsafe { bpf_ktime_get_ns() }
    }
}

/// The clock of everything measured in seconds or milliseconds (bans, admission, the tracked
/// filter's epochs, the SYN detectors): `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE, one
/// scheduler tick behind at most, read without touching the clock source), or the test hook.
#[inline(always)]
pub fn coarse_now_ns(config: &KernelConfig) -> u64 {
    if config.test_clock_ns != 0 {
        config.test_clock_ns
    } else {
        // SAFETY: a helper without arguments or preconditions.
        unsafe { bpf_ktime_get_coarse_ns() }
    }
}

/// What [`check`] found: a verdict, or a rule whose buckets decide.
pub struct Checked {
    /// The rule ([`NO_RULE`] if none, or when a ban decided).
    pub rule: u32,
    /// `Banned`/`SubnetBanned`, or `Default`.
    pub reason: Reason,
    /// Whether the rule's buckets decide ([`exceeded`], in the limits program).
    pub limits: bool,
    /// The coarse clock (`coarse_now_ns`) when `limits`, read once for all programs.
    pub now_ns: u64,
}

/// Bans, then the rule that takes the packet: a ban's verdict, no rule, or the rule whose
/// buckets decide next.
#[inline(always)]
pub fn check(packet: &Packet, config: &KernelConfig) -> Checked {
    const NOTHING: Checked = Checked {
        rule: NO_RULE,
        reason: Reason::Default,
        limits: false,
        now_ns: 0,
    };
    let bans_on = config.flags & CONFIG_BANS != 0;
    let rule = rule_for(packet, config.rule_kinds, config.generation);
    if stops(Stage::Rule) {
        return NOTHING;
    }
    if rule == NO_RULE && !bans_on {
        return NOTHING;
    }
    let now_ns = coarse_now_ns(config);
    if bans_on {
        let banned = bans::check(packet.source, config, now_ns);
        if banned != Reason::Default {
            return Checked {
                rule: NO_RULE,
                reason: banned,
                limits: false,
                now_ns: 0,
            };
        }
    }
    if stops(Stage::Bans) || rule == NO_RULE {
        return NOTHING;
    }
    Checked {
        rule,
        reason: Reason::Default,
        limits: true,
        now_ns,
    }
}

/// What charging needs to know of the packet.
struct Charged {
    /// The buckets' clock, in ticks.
    now: u64,
    /// The frame's length: the cost in byte buckets.
    len: u64,
    /// The policy generation (for the rule of a key whose slot is taken over).
    generation: u32,
    /// 1 when the packet is a SYN the rule limits.
    syn: u32,
}

/// The buckets' clock in ticks, read on first use: `*now` is 0 until then (a sentinel, not an
/// `Option`: see `NO_RULE`; a clock at tick 0 is read again, to the same value). A never-seen
/// source's first packet charges no bucket and never reads it.
#[inline(always)]
fn bucket_clock(now: &mut u64, config: &KernelConfig) -> u64 {
    if *now == 0 {
        *now = ticks(now_ns(config));
    }
    *now
}

/// Charges the source buckets of a packet that this CPU's lease does not cover: takes the
/// slot for `key` and refills what it lacks from the source's `state`. `Default`, or the
/// reason of the first bucket without room. (Inlined, as everything here: a BPF subprogram
/// would need its own stack frame, and the program's already takes most of the 512 bytes.)
#[inline(always)]
fn charge_source(
    lease: &mut Lease,
    key: &TrackKey,
    state: *mut TrackState,
    rule_config: &RuleConfig,
    packet: &Charged,
) -> Reason {
    let now = packet.now;
    claim(lease, key, LEASE_SOURCE, now, packet.generation);
    if packet.syn != 0 && !charge(lease, state, &rule_config.syn, Field::Syn, now, 1) {
        return Reason::SynLimited;
    }
    if !charge(
        lease,
        state,
        &rule_config.source_packets,
        Field::Packets,
        now,
        1,
    ) || !charge(
        lease,
        state,
        &rule_config.source_bytes,
        Field::Bytes,
        now,
        packet.len,
    ) {
        return Reason::RateLimited;
    }
    Reason::Default
}

/// Charges the subnet buckets of `key` (the rule limits subnets): from this CPU's lease when it
/// covers the packet, else by a refill from the subnet's state (an untracked subnet's first
/// packet in a window charges nothing: admission). The lease slot is read only for a subnet
/// the tracked filter holds. `Default`, or `RateLimited`.
#[inline(always)]
fn charge_subnet(
    key: &TrackKey,
    rule_config: &RuleConfig,
    config: &KernelConfig,
    now: &mut u64,
    len: u64,
    now_ns: u64,
) -> Reason {
    let hash = key_hash(key);
    let known = is_tracked(&Mark::of_hash(hash), now_ns);
    let packets_limited = rule_config.subnet_packets.is_limited();
    let bytes_limited = rule_config.subnet_bytes.is_limited();
    if known {
        let Some(lease) = LEASES.get_ptr_mut(Lease::slot_of_hash(LEASE_SUBNET, hash)) else {
            return Reason::Default;
        };
        // SAFETY: this CPU's slot of a per-CPU array: nothing else writes it while this
        // program runs here, and it lives for the whole run.
        let lease = unsafe { &mut *lease };
        let ticks = bucket_clock(now, config);
        if lease.holds(key)
            && (!packets_limited || lease.covers(Field::Packets, ticks, 1))
            && (!bytes_limited || lease.covers(Field::Bytes, ticks, len))
        {
            if packets_limited {
                lease.spend(Field::Packets, 1);
            }
            if bytes_limited {
                lease.spend(Field::Bytes, len);
            }
            return Reason::Default;
        }
    }
    let Some(state) = admitted_state(&SUBNETS, key, hash, known, now_ns) else {
        return Reason::Default;
    };
    let Some(lease) = LEASES.get_ptr_mut(Lease::slot_of_hash(LEASE_SUBNET, hash)) else {
        return Reason::Default;
    };
    // SAFETY: as above.
    let lease = unsafe { &mut *lease };
    let ticks = bucket_clock(now, config);
    claim(lease, key, LEASE_SUBNET, ticks, config.generation);
    if !charge(
        lease,
        state,
        &rule_config.subnet_packets,
        Field::Packets,
        ticks,
        1,
    ) || !charge(
        lease,
        state,
        &rule_config.subnet_bytes,
        Field::Bytes,
        ticks,
        len,
    ) {
        return Reason::RateLimited;
    }
    Reason::Default
}

/// `Reason::Default` when every bucket has room, else the reason of the first full one
/// (`WouldDrop` under dry run). `now_ns` is the coarse clock (`coarse_now_ns`); the buckets
/// read the fine one when they are charged.
#[inline(always)]
pub fn exceeded(
    packet: &Packet,
    len: u64,
    rule: u32,
    config: &KernelConfig,
    now_ns: u64,
) -> Reason {
    // Borrowed from the map rather than copied: a RuleConfig is 128 bytes of a 512-byte stack.
    let Some(rule_config) = RULES.get(rule_index(config.generation, rule)) else {
        return Reason::Default;
    };
    let mut now = 0;
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

    let syn_limited = is_syn && rule_config.syn.is_limited();
    let packets_limited = rule_config.source_packets.is_limited();
    let bytes_limited = rule_config.source_bytes.is_limited();
    let limits_source = syn_limited || packets_limited || bytes_limited;
    let needs_source = limits_source || rule_config.bans();
    let source_hash = key_hash(&source_key);
    // Whether the source may have state: a source the filter does not hold costs no lease slot
    // read and no LRU lookup, only admission.
    let source_known = needs_source && is_tracked(&Mark::of_hash(source_hash), now_ns);
    // This CPU's lease slot of the source, looked up only when a source bucket is charged and
    // the source may have state (a null sentinel otherwise, not an `Option`: see `NO_RULE`).
    let mut source_lease = if limits_source && source_known {
        LEASES
            .get_ptr_mut(Lease::slot_of_hash(LEASE_SOURCE, source_hash))
            .unwrap_or_default()
    } else {
        core::ptr::null_mut()
    };
    // A lease of this CPU that covers the packet's source buckets: spending it touches no
    // shared state, and proves the source has state (a lease is only taken from it).
    let leased = !source_lease.is_null() && {
        let ticks = bucket_clock(&mut now, config);
        // SAFETY: a non-null `source_lease` is this CPU's slot of a per-CPU array: nothing else
        // writes it while this program runs here, and it lives for the whole run.
        let lease = unsafe { &*source_lease };
        lease.holds(&source_key)
            && (!syn_limited || lease.covers(Field::Syn, ticks, 1))
            && (!packets_limited || lease.covers(Field::Packets, ticks, 1))
            && (!bytes_limited || lease.covers(Field::Bytes, ticks, len))
    };
    // Per-source state exists when a source bucket must be charged or bans need its history,
    // and only from a source's second packet (admission).
    let source = if rule_config.bans() || (limits_source && !leased) {
        admitted_state(&SOURCES, &source_key, source_hash, source_known, now_ns)
    } else {
        None
    };
    if stops(Stage::State) {
        return Reason::Default;
    }
    let mut reason = Reason::Default;
    if leased {
        // SAFETY: as above.
        let lease = unsafe { &mut *source_lease };
        if syn_limited {
            lease.spend(Field::Syn, 1);
        }
        if packets_limited {
            lease.spend(Field::Packets, 1);
        }
        if bytes_limited {
            lease.spend(Field::Bytes, len);
        }
    } else if limits_source && let Some(source) = source {
        if source_lease.is_null() {
            // Admitted now: the filter did not hold the source when the slot would be read.
            source_lease = LEASES
                .get_ptr_mut(Lease::slot_of_hash(LEASE_SOURCE, source_hash))
                .unwrap_or_default();
        }
        if !source_lease.is_null() {
            let packet = Charged {
                now: bucket_clock(&mut now, config),
                len,
                generation: config.generation,
                syn: u32::from(syn_limited),
            };
            // SAFETY: as above.
            let lease = unsafe { &mut *source_lease };
            reason = charge_source(lease, &source_key, source, rule_config, &packet);
        }
    }
    if reason == Reason::Default && rule_config.limits_subnets() {
        reason = charge_subnet(&subnet_key, rule_config, config, &mut now, len, now_ns);
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
