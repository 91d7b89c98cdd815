//! Types shared by the apifw XDP program and its userspace, plus the reference model.
//!
//! Everything in this crate outside of [`model`] is `no_std` and `#[repr(C)]`, because the same
//! definitions describe the bytes of kernel map keys and values on both sides. Padding is always
//! spelled out as explicit zeroed fields so that hashed keys never contain uninitialised bytes.
#![no_std]

#[cfg(feature = "user")]
extern crate std;

pub mod ablation;
pub mod admission;
pub mod config;
pub mod events;
pub mod handoff;
pub mod lease;
pub mod packet;
pub mod prefix;
pub mod ratelimit;
pub mod rules;
pub mod stats;
pub mod syncookie;
pub mod tracked;

#[cfg(feature = "user")]
pub mod model;

#[cfg(feature = "user")]
mod pod;

pub use config::KernelConfig;
pub use stats::{Action, Counter, Reason, Verdict};

/// Policy generations: how a new policy replaces the old one atomically.
///
/// Every map the policy fills (configuration, prefix tables, rules) holds two generations, told
/// apart by a generation number in the key or index. The program reads the active generation
/// from [`map_names::ACTIVE`] once per packet and uses only that generation's entries, so a
/// packet sees either the whole old policy or the whole new one. Userspace writes the inactive
/// generation, flips `ACTIVE`, and waits for every program run that may still use the old
/// generation to finish (an RCU grace period) before that generation can be rewritten.
pub mod generation {
    /// Number of generations.
    pub const COUNT: u32 = 2;

    /// The other generation.
    #[inline(always)]
    pub const fn other(generation: u32) -> u32 {
        (generation + 1) % COUNT
    }
}

/// Map names as they appear in the eBPF object and under the pin directory.
pub mod map_names {
    /// `Array<u32>` with one entry: the active policy generation.
    pub const ACTIVE: &str = "APIFW_ACTIVE";
    /// `Array<KernelConfig>` with one entry per generation.
    pub const CONFIG: &str = "APIFW_CONFIG";
    /// `PerCpuArray<Counter>` indexed by [`crate::stats::stats_index`].
    pub const STATS: &str = "APIFW_STATS";
    /// `Array<V4Summary>` indexed by [`crate::prefix::v4_summary_index`].
    pub const V4_SUMMARY: &str = "APIFW_V4_SUMMARY";
    /// `HashMap<PrefixV4Key, u32>`: IPv4 prefixes longer than /16 with resolved flags.
    pub const V4_PREFIXES: &str = "APIFW_V4_PREFIXES";
    /// `HashMap<V6SummaryKey, V6Summary>` keyed by the top 32 bits of the IPv6 source.
    pub const V6_SUMMARY: &str = "APIFW_V6_SUMMARY";
    /// `HashMap<PrefixV6Key, u32>`: every IPv6 prefix with resolved flags.
    pub const V6_PREFIXES: &str = "APIFW_V6_PREFIXES";

    /// `Array<RuleConfig>` indexed by [`crate::rules::rule_index`].
    pub const RULES: &str = "APIFW_RULES";
    /// `HashMap<RuleKey, u32>`: which rule takes a (protocol, port).
    pub const RULE_MATCH: &str = "APIFW_RULE_MATCH";
    /// `LruHashMap<TrackKey, TrackState>`: bucket state per (rule, source).
    pub const SOURCES: &str = "APIFW_SOURCES";
    /// `LruHashMap<TrackKey, TrackState>`: bucket state per (rule, source subnet).
    pub const SUBNETS: &str = "APIFW_SUBNETS";
    /// `PerCpuArray<Counter>` indexed by [`crate::rules::rule_stats_index`].
    pub const RULE_STATS: &str = "APIFW_RULE_STATS";
    /// `HashMap<BanKey, BanEntry>`: active bans (a plain hash, never evicted by traffic).
    pub const BANS: &str = "APIFW_BANS";
    /// `LruHashMap<TrackKey, EscalationState>`: banned sources per (rule, subnet).
    pub const ESCALATION: &str = "APIFW_ESCALATION";
    /// `Array<u32>` indexed by ifindex: the interface's counter slot (0: none).
    pub const IFACES: &str = "APIFW_IFACES";
    /// `RingBuf` of [`crate::events::DropEvent`]s.
    pub const EVENTS: &str = "APIFW_EVENTS";
    /// `PerCpuArray<u64>`: the event limiter's TAT (ticks) on each CPU.
    pub const EVENT_TAT: &str = "APIFW_EVENT_TAT";
    /// `PerCpuArray<u64>`: events emitted, suppressed, lost ([`crate::events`]).
    pub const EVENT_STATS: &str = "APIFW_EVENT_STATS";

    /// `PerCpuArray<Lease>` of [`crate::lease::LEASE_ENTRIES`]: each CPU's leases on hot
    /// buckets. Not pinned (see [`UNPINNED`]).
    pub const LEASES: &str = "APIFW_LEASES";

    /// `PerCpuArray<u64>` of [`crate::admission::ADMISSION_SLOTS`]: each CPU's sightings of
    /// sources and subnets not yet tracked (see [`crate::admission`]). Not pinned.
    pub const ADMISSION: &str = "APIFW_ADMISSION";

    /// `PerCpuArray<SynDetector>` of [`crate::syncookie::DETECTOR_SLOTS`]: each CPU's SYN meter
    /// per cookie port. Not pinned.
    pub const SYN_DETECTOR: &str = "APIFW_SYN_DETECTOR";
    /// `Array<u64>` of [`crate::syncookie::DETECTOR_SLOTS`]: when a cookie for each port slot
    /// last went out ([`crate::syncookie::cookie_sent`]). Not pinned.
    pub const COOKIE_SENT: &str = "APIFW_COOKIE_SENT";
    /// `Array<TrackedEntry>` of [`crate::tracked::TRACKED_ENTRIES`]: which sources and subnets
    /// may have state (see [`crate::tracked`]). Not pinned.
    pub const TRACKED: &str = "APIFW_TRACKED";
    /// `ProgramArray` of [`crate::handoff::JUMP_SLOTS`]: the programs the firewall tail-calls.
    /// Pinned, or the kernel would empty it when the daemon exits.
    pub const JUMP: &str = "APIFW_JUMP";
    /// `PerCpuArray<Handoff>` of 1: each CPU's packet between the programs
    /// ([`crate::handoff`]). Pinned, so that an attached program and its successor share it.
    pub const HANDOFF: &str = "APIFW_HANDOFF";

    /// Maps of the object the daemon does not pin: a new program starts them empty. The leases
    /// are a per-CPU cache of units already charged to the pinned buckets; losing them on a
    /// restart refuses at most a lease's worth per slot, never admits more. Losing the
    /// admission array makes each untracked source and subnet send one more packet before it is
    /// tracked, and losing the tracked filter sends each tracked one through admission once
    /// (one uncharged packet; its state is found again). The SYN detectors start every port
    /// ready.
    pub const UNPINNED: [&str; 5] = [LEASES, ADMISSION, TRACKED, SYN_DETECTOR, COOKIE_SENT];

    /// Every map the daemon pins.
    pub const ALL: [&str; 20] = [
        ACTIVE,
        CONFIG,
        STATS,
        V4_SUMMARY,
        V4_PREFIXES,
        V6_SUMMARY,
        V6_PREFIXES,
        RULES,
        RULE_MATCH,
        SOURCES,
        SUBNETS,
        RULE_STATS,
        BANS,
        ESCALATION,
        IFACES,
        EVENTS,
        EVENT_TAT,
        EVENT_STATS,
        JUMP,
        HANDOFF,
    ];
}

/// Program names in the eBPF object.
pub mod program_names {
    /// The firewall itself.
    pub const FIREWALL: &str = "apifw";
    pub const LIMITS: &str = "apifw_limits";
    pub const SYN_COOKIE: &str = "apifw_syn_cookie";
}
