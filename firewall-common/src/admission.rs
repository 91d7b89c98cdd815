//! Admission without inserts: how a source (or subnet) that sends one packet, as every source of a
//! spoofed flood does, costs the program no write to shared state.
//!
//! Per-source and per-subnet bucket state lives in LRU hashes, and an LRU insert is the most
//! expensive thing the program does: it takes a per-CPU free list, may evict (a lock and a walk),
//! and writes a hash bucket other CPUs read. A key gets state only on its *second* sighting
//! within [`ADMISSION_WINDOW_NS`]; the first is recorded in a direct-mapped, per-CPU array of
//! [`ADMISSION_SLOTS`] words: a slot chosen by one hash of the key holds a 32-bit tag from
//! another hash and the sighting's time. An array slot is a plain store that the JIT inlines and
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
//! - Two keys sharing a slot and a tag (odds 2⁻³² per collision) admit each other early: a
//!   source gets state on its first packet instead of its second.
//!
//! The reference model keeps one CPU's array with these same functions, so the verdict tests
//! hold the kernel to it slot by slot.

use crate::rules::{ADMISSION_WINDOW_NS, TrackKey};

/// Slots per CPU; a power of two. 512 KiB of kernel memory per CPU.
pub const ADMISSION_SLOTS: u32 = 1 << 16;
/// Seed of [`TrackKey::hash`] for the slot.
const SLOT_SEED: u32 = 0x3C6E_F372;
/// Seed of [`TrackKey::hash`] for the tag (independent of the slot's).
const TAG_SEED: u32 = 0xA54F_F53A;
/// Sighting times are kept in units of 2^20 ns (about 1.05 ms), in 32 bits (wrapping after
/// 52 days, compared by wrapping difference).
const TIME_SHIFT: u32 = 20;
/// [`ADMISSION_WINDOW_NS`] in those units.
const WINDOW_UNITS: u32 = (ADMISSION_WINDOW_NS >> TIME_SHIFT) as u32;

/// A key as the admission array sees it: its slot and its tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sighting {
    /// Index into the per-CPU array.
    pub slot: u32,
    /// What the slot holds (high 32 bits) while it records this key; never 0, so an empty
    /// slot records no key.
    tag: u32,
}

impl Sighting {
    /// The sighting of `key`.
    #[inline(always)]
    pub fn of(key: &TrackKey) -> Self {
        Self {
            slot: key.hash(SLOT_SEED) & (ADMISSION_SLOTS - 1),
            tag: key.hash(TAG_SEED) | 1,
        }
    }

    /// The slot's value that records this key as seen at `now_ns`.
    #[inline(always)]
    pub fn recorded_at(&self, now_ns: u64) -> u64 {
        u64::from(self.tag) << 32 | u64::from((now_ns >> TIME_SHIFT) as u32)
    }

    /// Whether the slot's `value` records this key as seen within the window before `now_ns`.
    #[inline(always)]
    pub fn seen_recently(&self, value: u64, now_ns: u64) -> bool {
        let seen = value as u32;
        (value >> 32) as u32 == self.tag
            && ((now_ns >> TIME_SHIFT) as u32).wrapping_sub(seen) <= WINDOW_UNITS
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
        let before_wrap = (u64::from(u32::MAX) << TIME_SHIFT) - SECOND;
        let value = sighting.recorded_at(before_wrap);
        assert!(sighting.seen_recently(value, before_wrap + 2 * SECOND));
        assert!(!sighting.seen_recently(value, before_wrap + 11 * SECOND));
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
