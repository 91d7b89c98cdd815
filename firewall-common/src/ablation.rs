//! The stages of the XDP program, numbered so that the benchmark can stop the program after any
//! one of them and measure what each costs (the ablation table of `docs/BENCHMARKS.md`).
//!
//! Why a load-time global rather than a build of its own: the program reads the read-only global
//! [`STOP_AFTER_GLOBAL`] after each stage and returns `XDP_PASS`, without counting, when it names
//! that stage. The global lives in `.rodata`, which aya creates read-only for programs
//! (`BPF_F_RDONLY_PROG`) and freezes before loading them, so the verifier knows its value and walks
//! only the branch it takes: the shipped program, which never sets it ([`NEVER`]), pays no
//! early return at run time, and the benchmark measures the very object that ships rather than
//! a rebuild. Only the benchmark and the kernel tests set it
//! (`Firewall::load_stopping_after`, behind firewall-userspace's `test-hooks` feature).

/// The symbol of the global in the XDP object.
pub const STOP_AFTER_GLOBAL: &str = "APIFW_STOP_AFTER";

/// The global's value in the shipped program: no stage stops it.
pub const NEVER: u32 = u32::MAX;

/// A stage of the program, in the order it runs; the program can stop after each one. What
/// follows the last ([`Stage::Events`]) is the interface slot, the debug-log flag and the
/// per-interface counters, measured as the difference to the full program.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// The active generation and its configuration read (two array lookups).
    Config = 0,
    /// Ethernet, VLAN, IPv4/IPv6 and transport header parse.
    Parse = 1,
    /// The prefix summary of the source: the per-/16 array entry (IPv4) or the /32's hash
    /// entry (IPv6).
    Summary = 2,
    /// The prefix hash probes the summary asks for, and the allow/block decision.
    Probes = 3,
    /// The rule match (up to three hash lookups, only of the kinds of keys that exist).
    Rule = 4,
    /// The clock read and the ban check (host and subnet bans, when bans are on).
    Bans = 5,
    /// The rule's configuration, the source's lease slot and, when the lease does not cover
    /// the packet, the source's state (admission, LRU lookup or insert).
    State = 6,
    /// The buckets: lease spent or refilled, subnet buckets, the ban decision.
    Bucket = 7,
    /// The per-rule counters.
    RuleCounters = 8,
    /// The drop decision and the drop-event check (the per-CPU event cap, the ring buffer).
    Events = 9,
}

impl Stage {
    /// Every stage, in the program's order.
    pub const ALL: [Stage; 10] = [
        Stage::Config,
        Stage::Parse,
        Stage::Summary,
        Stage::Probes,
        Stage::Rule,
        Stage::Bans,
        Stage::State,
        Stage::Bucket,
        Stage::RuleCounters,
        Stage::Events,
    ];

    /// A short name, for reports.
    pub const fn name(self) -> &'static str {
        match self {
            Stage::Config => "generation and config read",
            Stage::Parse => "parse",
            Stage::Summary => "prefix summary read",
            Stage::Probes => "prefix probes",
            Stage::Rule => "rule match",
            Stage::Bans => "clock and ban check",
            Stage::State => "rule config, lease slot, source state",
            Stage::Bucket => "buckets",
            Stage::RuleCounters => "rule counters",
            Stage::Events => "drop decision and event check",
        }
    }

    /// Whether a program whose global holds `stop_after` stops at or before this stage: true
    /// for no stage when it holds [`NEVER`]. The program tests this after each stage (and
    /// after a function that holds several, to leave it at once).
    #[inline(always)]
    pub const fn stops(self, stop_after: u32) -> bool {
        stop_after <= self as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_numbered_in_order_and_never_stops_none() {
        for (index, stage) in Stage::ALL.into_iter().enumerate() {
            assert_eq!(stage as u32 as usize, index);
            assert!(!stage.stops(NEVER));
            assert!(stage.stops(stage as u32));
            assert!(!stage.stops(stage as u32 + 1));
        }
    }
}
