//! Rate-limit rules as the XDP program sees them: which packets a rule takes (protocol and
//! destination port), its buckets, and the per-source / per-subnet state keys and values.

use crate::ratelimit::Bucket;

/// Most rules a policy may have (size of the rule array and of the per-rule counter blocks).
pub const MAX_RULES: u32 = 64;
/// `RuleKey::protocol` of a rule that takes every IP protocol.
pub const ANY_PROTOCOL: u8 = 0;
/// `RuleKey::port` of a rule that takes every port (and packets without ports).
pub const ANY_PORT: u16 = 0;

/// Rule flag: count "would drop" but pass.
pub const RULE_DRY_RUN: u32 = 1;
/// Rule flag: a source that keeps exceeding for `ban_after_ns` is banned.
pub const RULE_BAN: u32 = 2;
/// A source (a subnet) gets per-source (per-subnet) state on its second packet under a rule
/// within this window; its first packet is only recorded ([`crate::admission`]).
pub const ADMISSION_WINDOW_NS: u64 = 10_000_000_000;
/// A source stops "exceeding" when it has not been refused for this long: a new refusal after
/// the gap restarts the `ban_after` clock.
pub const EXCEED_GAP_NS: u64 = 1_000_000_000;

/// What a rule matches: `(protocol, destination port)`, either possibly "any". A packet takes the
/// rule of `(protocol, port)`, else `(protocol, ANY_PORT)`, else `(ANY_PROTOCOL, ANY_PORT)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleKey {
    /// IP protocol number, or [`ANY_PROTOCOL`].
    pub protocol: u8,
    /// Policy generation (see [`crate::generation`]).
    pub generation: u8,
    /// Destination port (host order), or [`ANY_PORT`].
    pub port: u16,
}

impl RuleKey {
    /// Builds a key (generation 0).
    pub const fn new(protocol: u8, port: u16) -> Self {
        Self {
            protocol,
            generation: 0,
            port,
        }
    }

    /// The same key in policy generation `generation`.
    #[inline(always)]
    pub const fn in_generation(mut self, generation: u32) -> Self {
        self.generation = generation as u8;
        self
    }
}

/// Index in `APIFW_RULES` of rule slot `rule` in policy generation `generation`.
#[inline(always)]
pub const fn rule_index(generation: u32, rule: u32) -> u32 {
    generation * MAX_RULES + rule
}

/// The limits of one rule. An unlimited bucket has `interval == 0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct RuleConfig {
    /// Packets per source.
    pub source_packets: Bucket,
    /// Bytes per source.
    pub source_bytes: Bucket,
    /// Packets per source subnet.
    pub subnet_packets: Bucket,
    /// Bytes per source subnet.
    pub subnet_bytes: Bucket,
    /// TCP SYN (without ACK) per source.
    pub syn: Bucket,
    /// Prefix length of an IPv4 source's subnet.
    pub subnet_v4_len: u32,
    /// Prefix length of an IPv6 source's subnet.
    pub subnet_v6_len: u32,
    /// [`RULE_DRY_RUN`], [`RULE_BAN`].
    pub flags: u32,
    /// Banned sources of one subnet (within one `ban_ttl_ns`) that ban the whole subnet; 0: never.
    pub escalate_after: u32,
    /// How long a source must keep exceeding before it is banned.
    pub ban_after_ns: u64,
    /// How long a source ban lasts.
    pub ban_ttl_ns: u64,
    /// How long a subnet ban (escalation) lasts.
    pub subnet_ban_ttl_ns: u64,
}

impl RuleConfig {
    /// Whether the rule only counts what it would drop.
    pub const fn dry_run(&self) -> bool {
        self.flags & RULE_DRY_RUN != 0
    }

    /// Whether exceeding sources get banned.
    pub const fn bans(&self) -> bool {
        self.flags & RULE_BAN != 0
    }

    /// Whether any per-subnet limit is set.
    pub const fn limits_subnets(&self) -> bool {
        self.subnet_packets.is_limited() || self.subnet_bytes.is_limited()
    }
}

/// Key of per-source and per-subnet state: the rule, and the source address masked to
/// `prefix_len` (32/128 for a source, the rule's subnet length for a subnet).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TrackKey {
    /// Rule index.
    pub rule: u16,
    /// 4 or 6.
    pub family: u8,
    /// Prefix length of `addr`.
    pub prefix_len: u8,
    /// Masked address, network order (IPv4 in the first 4 bytes, the rest zero).
    pub addr: [u8; 16],
}

impl TrackKey {
    /// A 64-bit hash of the key from `seed`, in one pass: the key's 20 bytes as three words, each
    /// mixed in by a multiply and a rotation, then murmur3's 64-bit finalizer (every input bit
    /// moves every output bit). Half the instructions of two 32-bit hashes, and one hash is all
    /// a key needs: its admission slot and tag, its tracked-filter mark and its lease slot are
    /// taken from separate bits of it (`crate::admission::key_hash`); the verifier walks that
    /// code thousands of times.
    #[inline(always)]
    pub fn hash64(&self, seed: u64) -> u64 {
        let a = &self.addr;
        let words = [
            u64::from(self.rule)
                | u64::from(self.family) << 16
                | u64::from(self.prefix_len) << 24
                | u64::from(u32::from_ne_bytes([a[0], a[1], a[2], a[3]])) << 32,
            u64::from_ne_bytes([a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11]]),
            u64::from(u32::from_ne_bytes([a[12], a[13], a[14], a[15]])),
        ];
        let mut hash = seed;
        for word in words {
            hash = (hash ^ word)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(29);
        }
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
        hash ^ (hash >> 33)
    }
}

/// Bucket state (TATs, in ticks) of one source or subnet for one rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackState {
    /// Packet bucket.
    pub packets: u64,
    /// Byte bucket.
    pub bytes: u64,
    /// SYN bucket (sources only).
    pub syn: u64,
    /// When the current run of refusals began (ns; 0: not exceeding). Sources only.
    pub exceed_since: u64,
    /// When the source was last refused (ns). Sources only.
    pub last_exceed: u64,
}

impl TrackState {
    /// Records a refusal of this source at `now_ns`: whether it has now been refused continuously
    /// (no gap over [`EXCEED_GAP_NS`]) for `ban_after_ns`, in which case the run starts over (one
    /// ban, or would-ban, per run of refusals).
    ///
    /// Shared by the XDP program and the reference model, so the two cannot drift. Clock
    /// differences wrap: a clock read on another CPU may be a little behind `last_exceed`, and
    /// the kernel must neither trap nor treat that as a gap.
    #[inline(always)]
    pub fn record_refusal(&mut self, ban_after_ns: u64, now_ns: u64) -> bool {
        if self.exceed_since == 0 || now_ns.wrapping_sub(self.last_exceed) > EXCEED_GAP_NS {
            self.exceed_since = now_ns;
        }
        self.last_exceed = now_ns;
        if now_ns.wrapping_sub(self.exceed_since) >= ban_after_ns {
            self.exceed_since = 0;
            true
        } else {
            false
        }
    }
}

impl EscalationState {
    /// Counts one more ban of a source in this subnet at `now_ns`: whether the subnet has now
    /// had `escalate_after` bans within one `window_ns` (the rule's `ban_ttl`) and is to be
    /// banned itself, in which case the count starts over. Shared by the XDP program and the
    /// reference model; clock differences wrap as in [`TrackState::record_refusal`].
    #[inline(always)]
    pub fn count_ban(&mut self, escalate_after: u32, window_ns: u64, now_ns: u64) -> bool {
        if self.window_start == 0 || now_ns.wrapping_sub(self.window_start) > window_ns {
            self.banned = 0;
            self.window_start = now_ns;
        }
        self.banned += 1;
        if self.banned >= u64::from(escalate_after) {
            self.banned = 0;
            self.window_start = now_ns;
            true
        } else {
            false
        }
    }
}

/// Escalation state of one (rule, subnet): sources banned in the current window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EscalationState {
    /// Sources banned since `window_start`.
    pub banned: u64,
    /// Start of the counting window (ns); the window lasts the rule's `ban_ttl_ns`.
    pub window_start: u64,
}

/// Key of a ban: a host (/32, /128) or a subnet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BanKey {
    /// 4 or 6.
    pub family: u8,
    /// Prefix length of `addr`.
    pub prefix_len: u8,
    /// Explicit padding; always zero.
    pub _pad: u16,
    /// Masked address, network order (IPv4 in the first 4 bytes, the rest zero).
    pub addr: [u8; 16],
}

impl BanKey {
    /// The ban key of a tracked source or subnet.
    #[inline(always)]
    pub const fn of(track: &TrackKey) -> Self {
        Self {
            family: track.family,
            prefix_len: track.prefix_len,
            _pad: 0,
            addr: track.addr,
        }
    }
}

impl BanEntry {
    /// Whether the ban is still in force at `now_ns` (an expired one is ignored until the daemon
    /// sweeps it). Shared by the XDP program, the model and userspace.
    #[inline(always)]
    pub const fn active_at(&self, now_ns: u64) -> bool {
        self.expires_ns > now_ns
    }

    /// A ban of `kind` made at `now_ns` by `rule`, lasting `ttl_ns` (saturating).
    #[inline(always)]
    pub const fn new(now_ns: u64, ttl_ns: u64, rule: u32, kind: u32) -> Self {
        Self {
            expires_ns: now_ns.saturating_add(ttl_ns),
            banned_at_ns: now_ns,
            rule,
            kind,
        }
    }
}

/// Ban kind: one host.
pub const BAN_HOST: u32 = 1;
/// Ban kind: a whole subnet (escalation).
pub const BAN_SUBNET: u32 = 2;

/// A ban with its expiry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct BanEntry {
    /// Expiry on the program's clock (CLOCK_MONOTONIC ns); the ban is void from then on.
    pub expires_ns: u64,
    /// When it was made.
    pub banned_at_ns: u64,
    /// The rule whose limit the source kept exceeding.
    pub rule: u32,
    /// [`BAN_HOST`] or [`BAN_SUBNET`].
    pub kind: u32,
}

/// Index of a rule's counter for `reason` in the per-rule statistics map.
pub const fn rule_stats_index(rule: u32, reason: crate::Reason) -> u32 {
    rule * crate::stats::REASON_SLOTS + reason as u32
}

/// Entries of the per-rule statistics map.
pub const RULE_STATS_ENTRIES: u32 = MAX_RULES * crate::stats::REASON_SLOTS;

impl TrackKey {
    /// Key of the IPv4 source `addr` (host order) masked to `prefix_len`.
    #[inline(always)]
    pub const fn v4(rule: u32, addr: u32, prefix_len: u32) -> Self {
        let masked = crate::prefix::mask_v4(addr, prefix_len).to_be_bytes();
        Self {
            rule: rule as u16,
            family: 4,
            prefix_len: prefix_len as u8,
            addr: [
                masked[0], masked[1], masked[2], masked[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        }
    }

    /// Key of the IPv6 source `(hi, lo)` (host order halves) masked to `prefix_len`.
    #[inline(always)]
    pub const fn v6(rule: u32, hi: u64, lo: u64, prefix_len: u32) -> Self {
        let key = crate::prefix::PrefixV6Key::new(hi, lo, prefix_len);
        Self {
            rule: rule as u16,
            family: 6,
            prefix_len: prefix_len as u8,
            addr: key.addr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_source_is_banned_after_refusals_without_a_gap_for_ban_after() {
        let mut state = TrackState::default();
        let start = 10 * SECOND;
        // Refused every half second: the run holds; banned at exactly 2 s, then it starts over.
        let bans: [bool; 7] = core::array::from_fn(|i| {
            state.record_refusal(2 * SECOND, start + i as u64 * SECOND / 2)
        });
        assert_eq!(bans, [false, false, false, false, true, false, false]);
        assert_eq!(state.exceed_since, start + 5 * SECOND / 2);
    }

    #[test]
    fn a_gap_over_one_second_starts_the_run_again() {
        let mut state = TrackState::default();
        assert!(!state.record_refusal(2 * SECOND, 10 * SECOND));
        assert!(!state.record_refusal(2 * SECOND, 11 * SECOND));
        // 1 s + 1 ns later: a gap, so the run restarts here rather than banning at 12 s.
        let restart = 12 * SECOND + 1;
        assert!(!state.record_refusal(2 * SECOND, restart));
        assert_eq!(state.exceed_since, restart);
        assert!(!state.record_refusal(2 * SECOND, restart + SECOND));
        assert!(state.record_refusal(2 * SECOND, restart + 2 * SECOND));
    }

    #[test]
    fn a_clock_slightly_behind_the_last_refusal_neither_traps_nor_counts_as_a_gap() {
        // Another CPU's clock read can trail `last_exceed`; the kernel wraps, so the model must.
        let mut state = TrackState {
            exceed_since: 10 * SECOND,
            last_exceed: 11 * SECOND,
            ..TrackState::default()
        };
        let behind = 11 * SECOND - 1_000;
        // Wrapping makes the difference huge, which reads as a gap: the run restarts. What
        // matters is that kernel and model now agree (and nothing panics in a debug build).
        assert!(!state.record_refusal(2 * SECOND, behind));
        assert_eq!(state.exceed_since, behind);
    }

    #[test]
    fn a_subnet_escalates_at_escalate_after_bans_within_one_window() {
        let mut state = EscalationState::default();
        let window = 60 * SECOND;
        let start = 5 * SECOND;
        let escalations: [bool; 4] =
            core::array::from_fn(|i| state.count_ban(3, window, start + i as u64 * SECOND));
        assert_eq!(escalations, [false, false, true, false]);
        // The window lapsed: counting starts over.
        assert!(!state.count_ban(3, window, start + 3 * SECOND + window + 1));
        assert_eq!(state.banned, 1);
    }

    #[test]
    fn a_ban_is_active_until_its_expiry() {
        let ban = BanEntry::new(100, 50, 0, BAN_HOST);
        assert!(ban.active_at(149));
        assert!(!ban.active_at(150));
        assert!(BanEntry::new(1, u64::MAX, 0, BAN_HOST).active_at(u64::MAX - 1));
    }
}
