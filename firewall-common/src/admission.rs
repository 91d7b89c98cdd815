//! Admission without inserts: how a source (or subnet) that sends one packet, as every source of a
//! spoofed flood does, costs the program no write to shared state.
//!
//! Per-source and per-subnet bucket state lives in LRU hashes, and an LRU insert is the most
//! expensive thing the program does: it takes a per-CPU free list, may evict (a lock and a walk),
//! and writes a hash bucket other CPUs read. A key gets state only on its *second* sighting
//! within [`ADMISSION_WINDOW_NS`]; the first is recorded in a direct-mapped, per-CPU array of
//! [`ADMISSION_SLOTS`] words: a slot chosen by one hash of the key holds a 47-bit tag (another
//! hash, and the bits of the slot's hash that did not choose the slot) and the sighting's time. An array slot is a plain store that the JIT inlines and
//! that no other CPU touches, so a flood of one-packet sources costs two hashes and a store per
//! key and never evicts the state of sources that are really talking.
//!
//! What it gives up, and why that is acceptable:
//! - A key's first packet in a window charges no bucket of that kind (its subnet's first packet
//!   no subnet bucket): one packet per key per window.
//! - A sighting lives until its slot is taken by another key: under a flood of `R` new keys per
//!   second on a CPU, about `ADMISSION_SLOTS / R` seconds (65 ms at 10⁶/s). A key is admitted
//!   when two of its packets reach one CPU within that time: any source sending faster than
//!   `R / ADMISSION_SLOTS` packets per second on a CPU (15/s at 10⁶/s), that is, every source a
//!   rate limit has to stop. A NIC's RSS keeps a flow's packets on one CPU.
//! - Two keys sharing a slot and a tag admit each other early: a source gets state on its first
//!   packet instead of its second. Every new key is compared with the key its slot holds, so the
//!   odds are per packet of a flood: 2⁻⁴⁷, one early admission per 1.4·10¹⁴ spoofed packets
//!   (about 4.5 years of 1 Mpps on one CPU). A 31-bit tag made it one per 2·10⁹: the soak test
//!   of issue #7, 140M spoofed sources, met one at its 127,635,121st packet.
//! - Times are kept in 16 bits of 2²⁴ ns (16.8 ms), which wrap every 18 minutes: a key whose
//!   slot still holds its own sighting from a multiple of 18 minutes ago (nothing else hashed
//!   there since) is admitted on its first packet, the same harmless early admission.
//!
//! The reference model keeps one CPU's array with these same functions, so the verdict tests
//! hold the kernel to it slot by slot.

use crate::rules::{ADMISSION_WINDOW_NS, TrackKey};

/// Slots per CPU; a power of two. 512 KiB of kernel memory per CPU.
pub const ADMISSION_SLOTS: u32 = 1 << 16;
/// Seed of [`TrackKey::hash64`], whose bits give the slot (0..15), the check (16..31) and the
/// tag (32..63).
const SEED: u64 = 0x3C6E_F372_A54F_F53A;
/// Sighting times are kept in units of 2^24 ns (about 16.8 ms), in the slot's low 16 bits
/// (wrapping after 18 minutes, compared by wrapping difference).
const TIME_SHIFT: u32 = 24;
/// The slot bits that hold the time.
const TIME_MASK: u32 = (1 << 16) - 1;
/// [`ADMISSION_WINDOW_NS`] in those units.
const WINDOW_UNITS: u32 = (ADMISSION_WINDOW_NS >> TIME_SHIFT) as u32;
const _: () = assert!(
    WINDOW_UNITS < TIME_MASK / 2,
    "the window must fit the time field"
);

/// The one hash of `key` that its admission slot, its tracked-filter mark
/// (`crate::tracked::Mark::of_hash`) and its lease slot (`crate::lease::Lease::slot_of_hash`)
/// are taken from.
#[inline(always)]
pub fn key_hash(key: &TrackKey) -> u64 {
    key.hash64(SEED)
}

/// A key as the admission array sees it: its slot and its tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sighting {
    /// Index into the per-CPU array.
    pub slot: u32,
    /// What the slot's high 32 bits hold while it records this key, the lowest bit forced to 1
    /// so that an empty slot records no key.
    tag: u32,
    /// What bits 16..31 of the slot hold while it records this key (low 16 bits zero).
    check: u32,
}

impl Sighting {
    /// The sighting of `key`: slot, check and tag are disjoint bits of one 64-bit hash.
    #[inline(always)]
    pub fn of(key: &TrackKey) -> Self {
        Self::of_hash(key_hash(key))
    }

    /// The sighting of a key whose [`key_hash`] is `hash`.
    #[inline(always)]
    pub fn of_hash(hash: u64) -> Self {
        let low = hash as u32;
        Self {
            slot: low & (ADMISSION_SLOTS - 1),
            tag: (hash >> 32) as u32 | 1,
            check: low & !TIME_MASK,
        }
    }

    /// The slot's value that records this key as seen at `now_ns`.
    #[inline(always)]
    pub fn recorded_at(&self, now_ns: u64) -> u64 {
        u64::from(self.tag) << 32
            | u64::from(self.check | (now_ns >> TIME_SHIFT) as u32 & TIME_MASK)
    }

    /// Whether the slot's `value` records this key as seen within the window before `now_ns`.
    /// In 32-bit operations, which the verifier walks as cheaply as the program runs them.
    #[inline(always)]
    pub fn seen_recently(&self, value: u64, now_ns: u64) -> bool {
        let low = value as u32;
        (value >> 32) as u32 == self.tag
            && low & !TIME_MASK == self.check
            && ((now_ns >> TIME_SHIFT) as u32).wrapping_sub(low) & TIME_MASK <= WINDOW_UNITS
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_second_sighting_within_the_window_is_recent() {
        let key = TrackKey::v4(0, 0xC000_0201, 32);
        let sighting = Sighting::of(&key);
        let now = 1_000 * SECOND;
        let value = sighting.recorded_at(now);
        assert!(sighting.seen_recently(value, now));
        assert!(sighting.seen_recently(value, now + 9 * SECOND));
        // The window is kept in 1.05 ms units: 10 s less one unit is still in it, 10 s and a
        // unit are not.
        assert!(sighting.seen_recently(value, now + ADMISSION_WINDOW_NS - (1 << TIME_SHIFT)));
        assert!(!sighting.seen_recently(value, now + ADMISSION_WINDOW_NS + (1 << TIME_SHIFT)));
    }

    #[test]
    fn an_empty_slot_or_another_key_is_not_a_sighting() {
        let key = TrackKey::v4(0, 0xC000_0201, 32);
        let sighting = Sighting::of(&key);
        assert!(!sighting.seen_recently(0, 0));
        assert!(!sighting.seen_recently(0, 5 * SECOND));
        for other in [
            TrackKey::v4(1, 0xC000_0201, 32),
            TrackKey::v4(0, 0xC000_0202, 32),
            TrackKey::v4(0, 0xC000_0201, 24),
        ] {
            let value = Sighting::of(&other).recorded_at(SECOND);
            assert!(!sighting.seen_recently(value, SECOND), "{other:?}");
        }
    }

    #[test]
    fn the_clock_wrapping_its_units_keeps_the_window() {
        let key = TrackKey::v6(3, 0x2001_0db8_0000_0000, 7, 128);
        let sighting = Sighting::of(&key);
        let before_wrap = (u64::from(TIME_MASK) << TIME_SHIFT) - SECOND;
        let value = sighting.recorded_at(before_wrap);
        assert!(sighting.seen_recently(value, before_wrap + 2 * SECOND));
        assert!(!sighting.seen_recently(value, before_wrap + 11 * SECOND));
    }

    /// The soak test's flood (`test-ebpf`'s generator: source bits 32..63 are a permutation of
    /// the frame's sequence number) from frame 127,500,000 to 127,640,000 on CPU 0: with a
    /// 31-bit tag, frame 127,635,121 (2001:db8:b833:5ab9::2) found frame 127,624,850's
    /// sighting in its slot with its own tag and got state on its first packet.
    #[test]
    fn the_soak_flood_replayed_admits_no_source_early() {
        fn permute32(n: u32) -> u32 {
            let mut x = n.wrapping_mul(0x9E37_79B1);
            x ^= x >> 16;
            x = x.wrapping_mul(0x85EB_CA6B);
            x ^ (x >> 13)
        }
        let mut slots = std::vec![0u64; ADMISSION_SLOTS as usize];
        let now = 1000 * SECOND;
        let mut early = std::vec::Vec::new();
        for n in 127_500_000u32..=127_640_000 {
            let hi = 0x2001_0db8_0000_0000 | u64::from(permute32(n));
            let sighting = Sighting::of(&TrackKey::v6(0, hi, 2, 128));
            let slot = &mut slots[sighting.slot as usize];
            if sighting.seen_recently(*slot, now) {
                early.push(n);
            } else {
                *slot = sighting.recorded_at(now);
            }
        }
        assert_eq!(
            early,
            std::vec::Vec::<u32>::new(),
            "admitted on a first packet"
        );
    }

    #[test]
    fn slots_spread_keys_and_tags_are_independent_of_slots() {
        let mut used = std::vec![0u32; ADMISSION_SLOTS as usize];
        let mut same_tag_in_slot = 0;
        let mut tags = std::collections::HashMap::new();
        for host in 0..ADMISSION_SLOTS {
            let sighting = Sighting::of(&TrackKey::v4(0, 0xC612_0000 | host, 32));
            used[sighting.slot as usize] += 1;
            if tags.insert(sighting.slot, sighting.tag) == Some(sighting.tag) {
                same_tag_in_slot += 1;
            }
        }
        // N keys into N slots: about 1/e of the slots stay empty with a good hash.
        let empty = used.iter().filter(|n| **n == 0).count() as f64 / f64::from(ADMISSION_SLOTS);
        assert!((0.33..0.41).contains(&empty), "{empty} of the slots unused");
        assert_eq!(same_tag_in_slot, 0, "keys sharing a slot share a tag");
    }
}
