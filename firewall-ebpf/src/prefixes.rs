//! Allow/block prefix lookup: the longest stored prefix containing the source, found by probing
//! only the prefix lengths the source's summary says exist, longest first.

use firewall_common::prefix::{
    MAX_PROBES, PrefixV4Key, PrefixV6Key, V4_SUMMARY_BITS, V6_SUMMARY_BITS, highest_bit,
};

use crate::{V4_PREFIXES, V4_SUMMARY, V6_PREFIXES, V6_SUMMARY};

/// Resolved flags of the longest prefix containing the IPv4 `addr` (host order), or 0.
#[inline(always)]
pub fn lookup_v4(addr: u32) -> u32 {
    let Some(summary) = V4_SUMMARY.get(addr >> (32 - V4_SUMMARY_BITS)) else {
        return 0;
    };
    let mut mask = summary.longer_mask as u64;
    // At most 16 lengths (17..=32) can be present.
    for _ in 0..(32 - V4_SUMMARY_BITS) {
        if mask == 0 {
            break;
        }
        let bit = highest_bit(mask);
        mask &= !(1u64 << bit);
        let key = PrefixV4Key::new(addr, V4_SUMMARY_BITS + 1 + bit);
        if let Some(flags) = V4_PREFIXES.get_ptr(key) {
            // SAFETY: pointer from a successful lookup; a concurrent update can at worst give the
            // old or the new flags, both valid u32 values.
            return unsafe { *flags };
        }
    }
    summary.short_flags
}

/// Resolved flags of the longest prefix containing the IPv6 address `(hi, lo)`, or 0.
#[inline(always)]
pub fn lookup_v6(hi: u64, lo: u64, short_mask: u64) -> u32 {
    let top = ((hi >> 32) as u32).to_be_bytes();
    match V6_SUMMARY.get_ptr(top) {
        Some(summary) => {
            // SAFETY: pointer from a successful lookup; the value is plain integers.
            let summary = unsafe { *summary };
            let [mut low_word, mut high_word] = summary.longer_mask;
            // Lengths 97..=128 and 33..=96 live in two words; probe the high word first.
            for _ in 0..MAX_PROBES {
                let (word, base) = if high_word != 0 {
                    (&mut high_word, V6_SUMMARY_BITS + 1 + 64)
                } else if low_word != 0 {
                    (&mut low_word, V6_SUMMARY_BITS + 1)
                } else {
                    break;
                };
                let bit = highest_bit(*word);
                *word &= !(1u64 << bit);
                if let Some(flags) = V6_PREFIXES.get_ptr(PrefixV6Key::new(hi, lo, base + bit)) {
                    // SAFETY: as in `lookup_v4`.
                    return unsafe { *flags };
                }
            }
            summary.short_flags
        }
        None => {
            // No longer prefix lives in this /32: only prefixes of length <= 32 can match.
            let mut mask = short_mask;
            for _ in 0..=V6_SUMMARY_BITS {
                if mask == 0 {
                    break;
                }
                let bit = highest_bit(mask);
                mask &= !(1u64 << bit);
                if let Some(flags) = V6_PREFIXES.get_ptr(PrefixV6Key::new(hi, lo, bit)) {
                    // SAFETY: as in `lookup_v4`.
                    return unsafe { *flags };
                }
            }
            0
        }
    }
}
