//! The kernel-side configuration record (one entry in an `Array` map).

use crate::stats::Action;

/// Settings the XDP program reads for every packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct KernelConfig {
    /// What to do with malformed IP packets: an [`Action`] as `u32`.
    pub malformed_action: u32,
    /// [`CONFIG_DRY_RUN`]: every rule only counts what it would drop.
    pub flags: u32,
    /// Bit `L` set when an IPv6 prefix of length `L` (0..=32) is present. Those short prefixes
    /// are not expanded into `V6_SUMMARY`, so a source without a summary entry walks them.
    pub v6_short_mask: u64,
    /// Test hook: when non-zero, the program's clock (ns) instead of `bpf_ktime_get_ns`, so that
    /// verdict tests can replay the reference model's virtual time. Never set in production.
    pub test_clock_ns: u64,
    /// Which kinds of rule match key exist ([`RULES_BY_PORT`], [`RULES_BY_PROTOCOL`],
    /// [`RULES_FOR_ANY`]), so that packets skip match lookups that cannot hit.
    pub rule_kinds: u32,
    /// The policy generation this record belongs to (its index in `APIFW_CONFIG`), so that
    /// everything the program looks up after reading it stays in one generation.
    pub generation: u32,
    /// Bit `L` set when subnet bans of IPv4 length `L` (0..=31) can exist.
    pub ban_v4_lengths: u64,
    /// Bit `L` (word `L / 64`) set when subnet bans of IPv6 length `L` (0..=127) can exist.
    pub ban_v6_lengths: [u64; 2],
    /// Drop events each CPU may emit: a bucket per CPU whose rates add up to the configured
    /// events per second. Unlimited (interval 0) never happens: [`CONFIG_EVENTS`] off instead.
    pub events: crate::ratelimit::Bucket,
}

/// A rule matches some `(protocol, port)`.
pub const RULES_BY_PORT: u32 = 1;
/// A rule matches some `(protocol, any port)`.
pub const RULES_BY_PROTOCOL: u32 = 2;
/// A rule matches `(any protocol, any port)`.
pub const RULES_FOR_ANY: u32 = 4;

/// Global dry run: rate limits count `would_drop` and pass.
pub const CONFIG_DRY_RUN: u32 = 1;
/// Bans can exist: the program checks the ban map.
pub const CONFIG_BANS: u32 = 2;
/// Dropped packets are reported through the event ring buffer (rate-limited by `events`).
pub const CONFIG_EVENTS: u32 = 4;
/// The program writes debug logs (aya-log) for its decisions.
pub const CONFIG_DEBUG_LOG: u32 = 8;

impl KernelConfig {
    /// The configuration of a firewall with empty lists.
    pub const fn new(malformed_action: Action) -> Self {
        Self {
            malformed_action: malformed_action as u32,
            flags: 0,
            v6_short_mask: 0,
            test_clock_ns: 0,
            rule_kinds: 0,
            generation: 0,
            ban_v4_lengths: 0,
            ban_v6_lengths: [0; 2],
            events: crate::ratelimit::Bucket::UNLIMITED,
        }
    }

    /// The configured action for malformed packets. Unknown values fail closed.
    pub const fn malformed(&self) -> Action {
        match self.malformed_action {
            0 => Action::Pass,
            _ => Action::Drop,
        }
    }
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self::new(Action::Drop)
    }
}
