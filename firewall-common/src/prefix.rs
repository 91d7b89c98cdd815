//! Map layout of the allow/block prefix tables (see `docs/DESIGN.md`, "Prefix lookup").
//!
//! Every allow and block prefix is stored once, in an exact-match hash keyed by
//! `(prefix length, masked address)`, with *resolved* flags: whether the prefix is allowlisted or
//! covered by a shorter allowlisted prefix, and the same for the blocklist. The verdict of a
//! source then only needs the longest stored prefix that contains it, and a summary per source
//! block (/16 for IPv4, /32 for IPv6) says which longer lengths exist there, so a lookup probes
//! only lengths that can match, longest first, and stops at the first hit.

/// Resolved flag: the prefix is allowlisted, or lies inside an allowlisted prefix.
pub const FLAG_ALLOW: u32 = 1;
/// Resolved flag: the prefix is blocklisted, or lies inside a blocklisted prefix.
pub const FLAG_BLOCK: u32 = 2;

/// IPv4 prefixes up to this length are expanded into [`V4Summary::short_flags`].
pub const V4_SUMMARY_BITS: u32 = 16;
/// Entries of the IPv4 summary array per policy generation: one per /16.
pub const V4_SUMMARY_ENTRIES: u32 = 1 << V4_SUMMARY_BITS;

/// Index of the summary of the /16 `top` in generation `generation`.
#[inline(always)]
pub const fn v4_summary_index(generation: u32, top: u32) -> u32 {
    (generation << V4_SUMMARY_BITS) | top
}
/// IPv6 sources are summarised per /32.
pub const V6_SUMMARY_BITS: u32 = 32;

/// Hash key of an IPv4 prefix longer than /16.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PrefixV4Key {
    /// Prefix length, 17..=32.
    pub prefix_len: u16,
    /// Policy generation the entry belongs to (see [`crate::generation`]).
    pub generation: u16,
    /// Masked address in network byte order.
    pub addr: [u8; 4],
}

/// Hash key of an IPv6 prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PrefixV6Key {
    /// Prefix length, 0..=128.
    pub prefix_len: u16,
    /// Policy generation the entry belongs to (see [`crate::generation`]).
    pub generation: u16,
    /// Masked address in network byte order.
    pub addr: [u8; 16],
}

/// What is known about one IPv4 /16.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V4Summary {
    /// Bit `i` set when a prefix of length `17 + i` exists inside this /16.
    pub longer_mask: u32,
    /// Resolved flags of the longest prefix of length <= 16 covering this /16 (0: none).
    pub short_flags: u32,
}

/// What is known about one IPv6 /32 that contains longer prefixes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V6Summary {
    /// Bit `i` (word `i / 64`) set when a prefix of length `33 + i` exists inside this /32.
    pub longer_mask: [u64; 2],
    /// Resolved flags of the longest prefix of length <= 32 covering this /32 (0: none).
    pub short_flags: u32,
    /// Explicit padding; always zero.
    pub _pad: u32,
}

/// `addr` (host order) with only its first `len` bits kept.
#[inline(always)]
pub const fn mask_v4(addr: u32, len: u32) -> u32 {
    if len == 0 {
        0
    } else if len >= 32 {
        addr
    } else {
        addr & (u32::MAX << (32 - len))
    }
}

/// `(hi, lo)` halves of an IPv6 address (host order) with only the first `len` bits kept.
#[inline(always)]
pub const fn mask_v6(hi: u64, lo: u64, len: u32) -> (u64, u64) {
    if len == 0 {
        (0, 0)
    } else if len < 64 {
        (hi & (u64::MAX << (64 - len)), 0)
    } else if len == 64 {
        (hi, 0)
    } else if len < 128 {
        (hi, lo & (u64::MAX << (128 - len)))
    } else {
        (hi, lo)
    }
}

/// Index of the highest set bit of a non-zero `x` (63 for `1 << 63`).
///
/// Binary search without branches: each step turns "is anything set in the upper half" into 0 or
/// 1 by carrying into the next bit. BPF has no count-leading-zeros instruction, and a branchy
/// search multiplies the paths the verifier must walk in the probe loops.
#[inline(always)]
pub const fn highest_bit(x: u64) -> u32 {
    let mut x = x;
    let mut n = 0;
    // (half + ones) >> width is 1 exactly when `half` (which is below 2^width) is non-zero.
    let step = (((x >> 32) + 0xFFFF_FFFF) >> 32) << 5;
    x >>= step;
    n += step;
    let step = (((x >> 16) + 0xFFFF) >> 16) << 4;
    x >>= step;
    n += step;
    let step = (((x >> 8) + 0xFF) >> 8) << 3;
    x >>= step;
    n += step;
    let step = (((x >> 4) + 0xF) >> 4) << 2;
    x >>= step;
    n += step;
    let step = (((x >> 2) + 0x3) >> 2) << 1;
    x >>= step;
    n += step;
    n += x >> 1;
    n as u32
}

impl PrefixV4Key {
    /// Key of the `len`-bit prefix containing `addr` (host order).
    #[inline(always)]
    pub const fn new(addr: u32, len: u32) -> Self {
        Self {
            prefix_len: len as u16,
            generation: 0,
            addr: mask_v4(addr, len).to_be_bytes(),
        }
    }

    /// The same key in policy generation `generation`.
    #[inline(always)]
    pub const fn in_generation(mut self, generation: u32) -> Self {
        self.generation = generation as u16;
        self
    }
}

impl PrefixV6Key {
    /// Key of the `len`-bit prefix containing the address `(hi, lo)` (host order halves).
    #[inline(always)]
    pub const fn new(hi: u64, lo: u64, len: u32) -> Self {
        let (hi, lo) = mask_v6(hi, lo, len);
        let hi = hi.to_be_bytes();
        let lo = lo.to_be_bytes();
        Self {
            prefix_len: len as u16,
            generation: 0,
            addr: [
                hi[0], hi[1], hi[2], hi[3], hi[4], hi[5], hi[6], hi[7], lo[0], lo[1], lo[2], lo[3],
                lo[4], lo[5], lo[6], lo[7],
            ],
        }
    }

    /// The same key in policy generation `generation`.
    #[inline(always)]
    pub const fn in_generation(mut self, generation: u32) -> Self {
        self.generation = generation as u16;
        self
    }
}

/// Key of the IPv6 summary hash: the top 32 bits of a source in one policy generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct V6SummaryKey {
    /// Policy generation (see [`crate::generation`]).
    pub generation: u32,
    /// The /32, network byte order.
    pub top: [u8; 4],
}

/// What a probe returns for a missing key, and [`probe_longest_first`] when no length hit. Flags are small bit sets, so this
/// value never collides with real flags. (A sentinel rather than `Option`: LLVM may spill the
/// undefined payload of a `None`, and the verifier rejects reading uninitialised registers.)
pub const NO_HIT: u32 = u32::MAX;

/// Probes the lengths `base + bit` for the set bits of `mask`, highest first, and returns the
/// flags of the first hit, or [`NO_HIT`]. `bound` is the number of bits `mask` may have set, so
/// that the verifier sees a bounded loop.
#[inline(always)]
fn probe_longest_first<K>(
    mut mask: u64,
    base: u32,
    bound: u32,
    key: impl Fn(u32) -> K,
    probe: &impl Fn(&K) -> u32,
) -> u32 {
    for _ in 0..bound {
        if mask == 0 {
            break;
        }
        let bit = highest_bit(mask);
        mask &= !(1u64 << bit);
        let flags = probe(&key(base + bit));
        if flags != NO_HIT {
            return flags;
        }
    }
    NO_HIT
}

/// `found` unless it is [`NO_HIT`], else `fallback`.
#[inline(always)]
fn or_fallback(found: u32, fallback: u32) -> u32 {
    if found == NO_HIT { fallback } else { found }
}

/// Resolved flags of the longest prefix containing the IPv4 `addr` (host order), or 0.
///
/// `summary` is the entry of the source's /16; `probe` looks a key up in the IPv4 prefix hash
/// and returns its flags or [`NO_HIT`].
/// The XDP program and the userspace tests run this same function over their own maps.
#[inline(always)]
pub fn lookup_v4(summary: &V4Summary, addr: u32, probe: impl Fn(&PrefixV4Key) -> u32) -> u32 {
    let found = probe_longest_first(
        u64::from(summary.longer_mask),
        V4_SUMMARY_BITS + 1,
        32 - V4_SUMMARY_BITS,
        |len| PrefixV4Key::new(addr, len),
        &probe,
    );
    or_fallback(found, summary.short_flags)
}

/// Resolved flags of the longest prefix containing the IPv6 address `(hi, lo)`, or 0.
///
/// `summary` is the entry of the source's /32 when `has_summary`; `short_mask` is
/// [`crate::KernelConfig::v6_short_mask`]; `probe` looks a key up in the IPv6 prefix hash and
/// returns its flags or [`NO_HIT`].
#[inline(always)]
pub fn lookup_v6(
    summary: &V6Summary,
    has_summary: bool,
    short_mask: u64,
    hi: u64,
    lo: u64,
    probe: impl Fn(&PrefixV6Key) -> u32,
) -> u32 {
    let key = |len| PrefixV6Key::new(hi, lo, len);
    // One path for both cases, with data-dependent inputs: with a summary, probe lengths
    // 97..=128 (word 1), then 33..=96 (word 0), then fall back to its short flags; without one,
    // only the short lengths 0..=32 can match. (Two code paths let LLVM merge the loops with an
    // undefined input on one side, which the verifier rejects.)
    let (first, second, second_base, fallback) = if has_summary {
        (
            summary.longer_mask[1],
            summary.longer_mask[0],
            V6_SUMMARY_BITS + 1,
            summary.short_flags,
        )
    } else {
        (0, short_mask, 0, 0)
    };
    let mut found = probe_longest_first(first, V6_SUMMARY_BITS + 1 + 64, 32, key, &probe);
    if found == NO_HIT {
        found = probe_longest_first(second, second_base, 64, key, &probe);
    }
    or_fallback(found, fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_bit_matches_leading_zeros() {
        for shift in 0..64 {
            let x = 1u64 << shift;
            assert_eq!(highest_bit(x), shift, "1 << {shift}");
            assert_eq!(highest_bit(x | 1), shift, "(1 << {shift}) | 1");
            assert_eq!(highest_bit(x | (x >> 1)), shift, "two bits at {shift}");
        }
        assert_eq!(highest_bit(u64::MAX), 63);
    }

    #[test]
    fn masks_keep_exactly_len_bits() {
        assert_eq!(mask_v4(0xC000_0201, 24), 0xC000_0200);
        assert_eq!(mask_v4(0xFFFF_FFFF, 0), 0);
        assert_eq!(mask_v4(0xFFFF_FFFF, 32), 0xFFFF_FFFF);
        assert_eq!(mask_v4(0xFFFF_FFFF, 17), 0xFFFF_8000);
        let all = u64::MAX;
        assert_eq!(mask_v6(all, all, 0), (0, 0));
        assert_eq!(mask_v6(all, all, 1), (1 << 63, 0));
        assert_eq!(mask_v6(all, all, 64), (all, 0));
        assert_eq!(mask_v6(all, all, 65), (all, 1 << 63));
        assert_eq!(mask_v6(all, all, 128), (all, all));
    }

    #[test]
    fn keys_are_network_order_without_padding() {
        assert_eq!(size_of::<PrefixV4Key>(), 8);
        assert_eq!(size_of::<PrefixV6Key>(), 20);
        assert_eq!(size_of::<V4Summary>(), 8);
        assert_eq!(size_of::<V6Summary>(), 24);
        let key = PrefixV4Key::new(0xCB00_7142, 24);
        assert_eq!(key.addr, [203, 0, 113, 0]);
        let key = PrefixV6Key::new(0x2001_0db8_0000_0001, 0xFFFF, 48);
        assert_eq!(&key.addr[..6], &[0x20, 0x01, 0x0d, 0xb8, 0, 0]);
        assert!(key.addr[6..].iter().all(|b| *b == 0));
    }
}
