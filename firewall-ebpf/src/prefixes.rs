//! Allow/block prefix lookup over the kernel maps; the algorithm itself is
//! `firewall_common::prefix::{lookup_v4, lookup_v6}`, shared with userspace tests.

use firewall_common::{
    ablation::Stage,
    prefix::{self, V4_SUMMARY_BITS, V6Summary, V6SummaryKey, v4_summary_index},
};

use crate::{V4_PREFIXES, V4_SUMMARY, V6_PREFIXES, V6_SUMMARY, stops};

/// Resolved flags of the longest prefix containing the IPv4 `addr` (host order) in policy
/// generation `generation`, or 0.
#[inline(always)]
pub fn lookup_v4(addr: u32, generation: u32) -> u32 {
    let Some(summary) =
        V4_SUMMARY.get(v4_summary_index(generation, addr >> (32 - V4_SUMMARY_BITS)))
    else {
        return 0;
    };
    if stops(Stage::Summary) {
        return 0;
    }
    prefix::lookup_v4(summary, addr, |key| {
        // SAFETY: pointer from a successful lookup; a concurrent update can at worst give the old
        // or the new flags, both valid u32 values.
        V4_PREFIXES
            .get_ptr(key.in_generation(generation))
            .map_or(prefix::NO_HIT, |flags| unsafe { *flags })
    })
}

/// Resolved flags of the longest prefix containing the IPv6 address `(hi, lo)` in policy
/// generation `generation`, or 0.
///
/// A BPF subprogram (not inlined): LLVM's register allocation of its probe loops inside the
/// caller spilled a register that one path never set (`R2 !read_ok`), which the verifier
/// rejects; on its own it has a clean frame, and the caller's state does not multiply its walk.
#[inline(never)]
pub fn lookup_v6(hi: u64, lo: u64, short_mask: u64, generation: u32) -> u32 {
    let top = V6SummaryKey {
        generation,
        top: ((hi >> 32) as u32).to_be_bytes(),
    };
    // A plain value and a flag rather than an `Option<V6Summary>`: LLVM may spill the undefined
    // payload of a `None`, which the verifier rejects.
    let (summary, has_summary) = match V6_SUMMARY.get_ptr(top) {
        // SAFETY: pointer from a successful lookup; the value is plain integers, so a torn read
        // during an update gives a stale but valid summary.
        Some(summary) => (unsafe { *summary }, true),
        None => (V6Summary::default(), false),
    };
    // Stopping after the summary leaves nothing to probe rather than returning: with an early
    // return here LLVM spilled an undefined register in the probe loops (see
    // `prefix::lookup_v6`), which the verifier rejects. The empty loops cost two tests.
    let stopped = stops(Stage::Summary);
    let has_summary = has_summary && !stopped;
    let short_mask = if stopped { 0 } else { short_mask };
    prefix::lookup_v6(&summary, has_summary, short_mask, hi, lo, |key| {
        // SAFETY: as in `lookup_v4`.
        V6_PREFIXES
            .get_ptr(key.in_generation(generation))
            .map_or(prefix::NO_HIT, |flags| unsafe { *flags })
    })
}
