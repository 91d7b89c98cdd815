//! Verdicts and the per-CPU counter layout.
//!
//! Counters live in one `PerCpuArray<Counter>` of [`STATS_ENTRIES`] slots, indexed by
//! `action * REASON_SLOTS + reason`. New reasons take a new number below [`REASON_SLOTS`]; the
//! layout, the map size and every reader stay as they are.

/// What the XDP program does with a packet.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(
    feature = "user",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum Action {
    /// `XDP_PASS`: hand the packet to the network stack.
    Pass = 0,
    /// `XDP_DROP`: discard the packet in the driver.
    Drop = 1,
}

impl Action {
    /// Every action, in counter-index order.
    pub const ALL: [Action; 2] = [Action::Pass, Action::Drop];

    /// The XDP return code for this action.
    pub const fn xdp_code(self) -> u32 {
        match self {
            // Values of enum xdp_action in include/uapi/linux/bpf.h.
            Action::Pass => 2,
            Action::Drop => 1,
        }
    }

    /// Lower-case name, as used in policies, JSON and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Action::Pass => "pass",
            Action::Drop => "drop",
        }
    }
}

/// Why the XDP program chose its action.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(
    feature = "user",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum Reason {
    /// No rule matched an IP packet.
    Default = 0,
    /// The source is inside an allowlisted prefix.
    Allowlist = 1,
    /// The source is inside a blocklisted prefix (and no allowlisted one).
    Blocklist = 2,
    /// The IP packet could not be parsed (truncated, bad version, bad header length).
    Malformed = 3,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): always passed.
    NonIp = 4,
    /// A rule's per-source or per-subnet packet or byte limit was exceeded.
    RateLimited = 5,
    /// A rule's per-source TCP SYN limit was exceeded.
    SynLimited = 6,
    /// A limit was exceeded under dry run: counted, passed.
    WouldDrop = 7,
    /// The source is banned.
    Banned = 8,
    /// The source's subnet is banned.
    SubnetBanned = 9,
    /// Under dry run, the source would have been banned now: counted, passed.
    WouldBan = 10,
    /// A SYN to a port in cookie mode, answered in XDP with a cookie SYN-ACK (`XDP_TX`): counted
    /// under `drop`, since the network stack never sees it.
    SynCookie = 11,
    /// An ACK to a port in cookie mode that carried a valid cookie: passed, and its source is
    /// proven (it gets per-source state).
    CookieValid = 12,
    /// An ACK to a listener in cookie mode whose cookie is not valid: dropped.
    BadCookie = 13,
}

impl Reason {
    /// Every reason defined so far, in counter-index order.
    pub const ALL: [Reason; 14] = [
        Reason::Default,
        Reason::Allowlist,
        Reason::Blocklist,
        Reason::Malformed,
        Reason::NonIp,
        Reason::RateLimited,
        Reason::SynLimited,
        Reason::WouldDrop,
        Reason::Banned,
        Reason::SubnetBanned,
        Reason::WouldBan,
        Reason::SynCookie,
        Reason::CookieValid,
        Reason::BadCookie,
    ];

    /// Snake-case name, as used in JSON and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Default => "default",
            Reason::Allowlist => "allowlist",
            Reason::Blocklist => "blocklist",
            Reason::Malformed => "malformed",
            Reason::NonIp => "non_ip",
            Reason::RateLimited => "rate_limited",
            Reason::SynLimited => "syn_limited",
            Reason::WouldDrop => "would_drop",
            Reason::Banned => "banned",
            Reason::SubnetBanned => "subnet_banned",
            Reason::WouldBan => "would_ban",
            Reason::SynCookie => "syn_cookie",
            Reason::CookieValid => "cookie_valid",
            Reason::BadCookie => "bad_cookie",
        }
    }
}

/// Room for reasons per action. Fixed so that adding a reason never changes the map layout.
pub const REASON_SLOTS: u32 = 32;
/// Counters per interface slot: one per `(action, reason)`.
pub const SLOT_ENTRIES: u32 = 2 * REASON_SLOTS;
/// Interface slots: the daemon gives each protected interface one (1..); slot 0 counts packets
/// of interfaces without a slot (and `BPF_PROG_TEST_RUN`).
pub const INTERFACE_SLOTS: u32 = 16;
/// Number of slots in the statistics map.
pub const STATS_ENTRIES: u32 = INTERFACE_SLOTS * SLOT_ENTRIES;
/// Entries of the ifindex → slot array: interfaces with a larger ifindex count in slot 0.
pub const IFINDEX_ENTRIES: u32 = 1 << 16;

/// Index of the counter for `(action, reason)` in interface slot 0 of the statistics map.
pub const fn stats_index(action: Action, reason: Reason) -> u32 {
    action as u32 * REASON_SLOTS + reason as u32
}

/// Index of the counter for `(action, reason)` in interface slot `slot`.
#[inline(always)]
pub const fn stats_index_at(slot: u32, action: Action, reason: Reason) -> u32 {
    (slot % INTERFACE_SLOTS) * SLOT_ENTRIES + stats_index(action, reason)
}

/// A decision of the firewall: the action and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct Verdict {
    /// What happens to the packet.
    pub action: Action,
    /// Why.
    pub reason: Reason,
}

impl Verdict {
    /// Builds a verdict.
    pub const fn new(action: Action, reason: Reason) -> Self {
        Self { action, reason }
    }
}

/// Packets and bytes seen for one `(action, reason)` pair on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct Counter {
    /// Number of packets.
    pub packets: u64,
    /// Sum of the frame lengths (Ethernet header included) of those packets.
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_has_its_own_slot() {
        let mut seen = [false; STATS_ENTRIES as usize];
        for action in Action::ALL {
            for reason in Reason::ALL {
                let index = stats_index(action, reason) as usize;
                assert!(
                    index < seen.len(),
                    "{action:?}/{reason:?} -> {index} out of range"
                );
                assert!(!seen[index], "{action:?}/{reason:?} -> {index} used twice");
                seen[index] = true;
            }
        }
    }
}
