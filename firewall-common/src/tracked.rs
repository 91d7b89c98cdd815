//! The tracked filter: whether a source (or subnet) may have bucket state, told by one read of
//! an array the JIT inlines instead of a lookup in an LRU hash.
//!
//! Why: admission ([`crate::admission`]) spares a never-seen source the LRU *insert*, but the
//! program still had to *look* the source up in `APIFW_SOURCES` (and its subnet in
//! `APIFW_SUBNETS`) before it knew the source was new: a jhash of the key, a call, and a walk of
//! a hash bucket in a table of up to millions of entries, which misses the cache. Under a
//! random-source flood every packet paid two such misses (the syncookie benchmark: 584 ns per
//! first packet with a million tracked sources, 17× the empty program).
//!
//! The filter is a Bloom filter with one hash, shared by all CPUs, in [`TRACKED_ENTRIES`]
//! entries of two 64-bit words: a key owns one bit ([`Mark::bit`]) of one entry
//! ([`Mark::entry`]). A word's high 32 bits hold the epoch (the clock in units of
//! 2^[`EPOCH_SHIFT`] ns, about 8.6 s) its low 32 bits were set in; word `epoch & 1` is the
//! current epoch's, the other the previous one's. A key is *present* when its bit is set in the
//! current word or in the previous one (each with the right epoch): bits older than that count
//! as clear, so the filter forgets keys without anyone clearing it, and a key that keeps
//! sending keeps its bit, because the program sets the bit in the current word each time it
//! finds the key's state through the filter (a read when it is already set: a tracked source
//! costs no shared write per packet).
//!
//! What the program concludes:
//! - Absent: the key has no state worth a lookup. It goes straight to admission: a first
//!   sighting is recorded and charges nothing; a second gets state (found if it still exists,
//!   inserted otherwise) and sets the bit.
//! - Present: look the state up as before. Bits are shared by keys (false positives), which
//!   only cost the lookup that was always made.
//! - A key with state whose bit was forgotten (no packet for two epochs, 8.6 to 17 s, or a
//!   restart, which starts the filter empty) is treated as new: its first packet after the gap
//!   is a first sighting, which charges no bucket, then its state is found again with its
//!   timestamps intact. One uncharged packet per key per idle gap of seconds: nothing a rate
//!   limit measures. Two CPUs setting bits of one word at once retry their compare-and-exchange
//!   once; a bit lost after that is such a gap.
//!
//! The reference model keeps the filter with these same functions, so the differential tests
//! hold the kernel to it entry by entry.

/// Entries of the filter (a power of two): 128 KiB, 2^18 bits per epoch, shared by all CPUs.
/// Small on purpose: the read is random, and on the benchmark machine a read of a 1 MiB array
/// cost 78 ns (cache and TLB misses, most of a new source's whole cost), of a 512 KiB one 45, of
/// this one 5. With 10k keys tracked within two epochs, 4% of unknown keys find a bit set (and
/// pay the LRU lookup they paid before); with 100k, 32%; with a million most do, and the filter
/// saves nothing (nor costs more than its 5 ns).
pub const TRACKED_ENTRIES: u32 = 1 << 13;

/// An epoch lasts 2^33 ns (8.6 s): a key keeps its bit while it sends at least once per epoch.
pub const EPOCH_SHIFT: u32 = 33;

/// One entry of the filter: the words of the two latest epochs, by epoch parity.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackedEntry {
    /// `epoch << 32 | bits`, at index `epoch & 1`.
    pub words: [u64; 2],
}

/// A key's place in the filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    /// Index of the entry.
    pub entry: u32,
    /// The key's bit in a word's low 32 bits.
    pub bit: u32,
}

/// The epoch of `now_ns`.
#[inline(always)]
pub const fn epoch(now_ns: u64) -> u32 {
    (now_ns >> EPOCH_SHIFT) as u32
}

/// The index of the current epoch's word at `now_ns`.
#[inline(always)]
pub const fn current_word(now_ns: u64) -> usize {
    (epoch(now_ns) & 1) as usize
}

impl Mark {
    /// The mark of a key whose [`crate::admission::key_hash`] is `hash`: the entry from bits
    /// 32..47 and the bit from bits 59..63 (the admission slot takes bits 0..15).
    #[inline(always)]
    pub const fn of_hash(hash: u64) -> Self {
        Self {
            entry: (hash >> 32) as u32 & (TRACKED_ENTRIES - 1),
            bit: 1 << (hash >> 59),
        }
    }

    /// Whether `entry` holds this key's bit in the current or the previous epoch.
    #[inline(always)]
    pub fn present(&self, entry: &TrackedEntry, now_ns: u64) -> bool {
        let epoch = epoch(now_ns);
        let current = entry.words[(epoch & 1) as usize];
        let previous = entry.words[(epoch & 1 ^ 1) as usize];
        self.in_word(current, epoch) || self.in_word(previous, epoch.wrapping_sub(1))
    }

    /// Whether `word` is `epoch`'s and holds the bit.
    #[inline(always)]
    fn in_word(&self, word: u64, epoch: u32) -> bool {
        (word >> 32) as u32 == epoch && word as u32 & self.bit != 0
    }

    /// What the current epoch's word (now `word`) becomes with this key's bit set, or `None`
    /// when it already holds it. A word of an older epoch starts over with the bit alone.
    #[inline(always)]
    pub fn marked(&self, word: u64, now_ns: u64) -> Option<u64> {
        let epoch = epoch(now_ns);
        if self.in_word(word, epoch) {
            return None;
        }
        let bits = if (word >> 32) as u32 == epoch {
            word as u32
        } else {
            0
        };
        Some(u64::from(epoch) << 32 | u64::from(bits | self.bit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPOCH_NS: u64 = 1 << EPOCH_SHIFT;

    fn marked(entry: &mut TrackedEntry, mark: Mark, now_ns: u64) {
        let word = &mut entry.words[current_word(now_ns)];
        if let Some(next) = mark.marked(*word, now_ns) {
            *word = next;
        }
    }

    #[test]
    fn a_marked_key_stays_present_through_the_next_epoch_and_no_longer() {
        let mark = Mark::of_hash(0xDEAD_BEEF_1234_5678);
        let mut entry = TrackedEntry::default();
        let t = 100 * EPOCH_NS + 5;
        assert!(!mark.present(&entry, t));
        marked(&mut entry, mark, t);
        assert!(mark.present(&entry, t));
        assert!(mark.present(&entry, t + EPOCH_NS));
        assert!(!mark.present(&entry, t + 2 * EPOCH_NS));
        // Marked again in the next epoch, it lives one epoch longer.
        marked(&mut entry, mark, t + EPOCH_NS);
        assert!(mark.present(&entry, t + 2 * EPOCH_NS));
        assert!(!mark.present(&entry, t + 3 * EPOCH_NS));
    }

    #[test]
    fn an_old_word_starts_over_and_other_bits_stay() {
        let one = Mark::of_hash(1 << 59);
        let two = Mark::of_hash(2 << 59);
        assert_eq!(one.entry, two.entry);
        assert_ne!(one.bit, two.bit);
        let mut entry = TrackedEntry::default();
        let t = 7 * EPOCH_NS;
        marked(&mut entry, one, t);
        marked(&mut entry, two, t);
        assert!(one.present(&entry, t) && two.present(&entry, t));
        // Two epochs later the same word is reused: `one`'s bit is gone, `two` starts it over.
        marked(&mut entry, two, t + 2 * EPOCH_NS);
        assert!(!one.present(&entry, t + 2 * EPOCH_NS));
        assert!(two.present(&entry, t + 2 * EPOCH_NS));
        assert_eq!(
            entry.words[current_word(t)],
            u64::from(epoch(t + 2 * EPOCH_NS)) << 32 | u64::from(two.bit)
        );
        // Setting a bit that is set writes nothing.
        assert_eq!(two.marked(entry.words[1], t + 2 * EPOCH_NS), None);
    }

    #[test]
    fn an_empty_filter_holds_no_key_even_in_epoch_zero() {
        let entry = TrackedEntry::default();
        for hash in [0, u64::MAX, 0x0123_4567_89AB_CDEF] {
            let mark = Mark::of_hash(hash);
            assert!(mark.entry < TRACKED_ENTRIES);
            assert!(!mark.present(&entry, 0));
            assert!(!mark.present(&entry, EPOCH_NS));
        }
    }
}
