//! Per-CPU token leases: how a bucket that every CPU charges (one hot source, one hot subnet)
//! scales with the CPUs.
//!
//! A GCRA bucket is one shared word (its TAT). Charged by compare-and-exchange on every packet,
//! its cache line moves between CPUs on every packet, and at 16 CPUs a hot source costs 15× what
//! it costs on one. So a CPU takes units in batches: with one compare-and-exchange on the TAT it
//! charges the packet's cost plus a *lease* of [`crate::ratelimit::Bucket::lease_units`] (what
//! the rate refills in [`LEASE_NS`], at most a quarter of the burst, and only when the bucket
//! has room for both), and spends the lease in its own slot of a per-CPU array without touching
//! shared memory. A drop reads the TAT and writes nothing when the bucket has no room.
//!
//! Bounds, per bucket, for K CPUs and a lease of L units:
//! - Leased units are charged to the TAT when taken, so the units admitted since a bucket was
//!   created never exceed `burst + rate × t`, however the CPUs interleave: no unit is spent
//!   twice.
//! - What a lease changes is *when*: units leased before a moment can be spent after it, so a
//!   window that starts later may see up to `K × L` more than `burst + rate × t`, and units
//!   parked in other CPUs' leases may refuse a packet that exact GCRA would pass (at most `K × L`
//!   at any moment).
//! - A lease expires [`LEASE_NS`] after it was taken, or when `now` passes the TAT its refill
//!   left, whichever is first. Until then its unspent units go back to the bucket at the slot's
//!   next refill, as do those of a slot that passes to another key; after, they are lost. Past
//!   that TAT the bucket may have refilled completely and another CPU charged it afresh, which
//!   forgave the lease's units: given back then, they would be credited twice.
//! - Below 1,000 units/s L is 0: every unit is its own compare-and-exchange, exactly as GCRA
//!   (a SYN limit of 20/s stays exact). At 10⁶ packets/s with a burst of 4,000 or more, L is
//!   1,000: 16 CPUs may be 16,000 packets (16 ms of the rate) off at a moment, 0.16% of ten
//!   seconds.
//!
//! The reference model keeps the leases of one CPU with these same functions, so the verdict
//! tests (one CPU, the test clock) hold the kernel to leases exactly; the two-CPU tests hold it
//! to the bounds.

use crate::{ratelimit::ticks, rules::TrackKey};

/// How long a lease lasts, and the time whose worth of the rate it holds.
pub const LEASE_NS: u64 = 1_000_000;
/// [`LEASE_NS`] in ticks.
pub const LEASE_TICKS: u64 = ticks(LEASE_NS);
/// Lease slots per CPU for each kind of key ([`LEASE_SOURCE`], [`LEASE_SUBNET`]); a power of
/// two. Keys share a slot by hash: the hottest keys of a CPU keep theirs.
pub const LEASE_SLOTS: u32 = 256;
/// The slots of per-source buckets.
pub const LEASE_SOURCE: u32 = 0;
/// The slots of per-subnet buckets.
pub const LEASE_SUBNET: u32 = 1;
/// Entries of the per-CPU lease array: the slots of both kinds.
pub const LEASE_ENTRIES: u32 = 2 * LEASE_SLOTS;
/// The bits of a key's hash ([`crate::admission::key_hash`]) that pick its lease slot: 16..24,
/// apart from those of its admission slot (0..16) and its tracked-filter entry and bit
/// (32..45, 59..64), so the three are independent.
const SLOT_SHIFT: u32 = 16;

/// A bucket of [`crate::rules::TrackState`]: which TAT a lease's units come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// `packets`.
    Packets,
    /// `bytes`.
    Bytes,
    /// `syn`.
    Syn,
}

impl Field {
    /// Every field, in the order a slot given away returns them.
    pub const ALL: [Self; 3] = [Self::Packets, Self::Bytes, Self::Syn];
}

/// One CPU's lease on the buckets of one key. A value of the per-CPU lease array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    /// The key the units belong to (when `held`).
    pub key: TrackKey,
    /// Non-zero when the slot holds a lease of `key`.
    pub held: u32,
    /// Units left, by field (packets, bytes, SYN).
    pub left: [u64; 3],
    /// When each field's units expire (ticks).
    pub expires: [u64; 3],
}

impl Lease {
    /// The index of `key`'s slot in the lease array (`kind`: [`LEASE_SOURCE`] or
    /// [`LEASE_SUBNET`]).
    #[inline(always)]
    pub fn slot(kind: u32, key: &TrackKey) -> u32 {
        Self::slot_of_hash(kind, crate::admission::key_hash(key))
    }

    /// [`Lease::slot`] of the key whose [`crate::admission::key_hash`] is `hash`: the XDP
    /// program hashes a key once for its tracked-filter mark, its admission slot and its lease
    /// slot.
    #[inline(always)]
    pub fn slot_of_hash(kind: u32, hash: u64) -> u32 {
        (kind & 1) * LEASE_SLOTS + ((hash >> SLOT_SHIFT) as u32 & (LEASE_SLOTS - 1))
    }

    /// Whether the slot holds a lease of `key` (compared field by field: no `memcmp` in BPF).
    #[inline(always)]
    pub fn holds(&self, key: &TrackKey) -> bool {
        self.held != 0
            && self.key.rule == key.rule
            && self.key.family == key.family
            && self.key.prefix_len == key.prefix_len
            && self.key.addr == key.addr
    }

    /// Units of `field` left.
    #[inline(always)]
    pub fn left(&self, field: Field) -> u64 {
        match field {
            Field::Packets => self.left[0],
            Field::Bytes => self.left[1],
            Field::Syn => self.left[2],
        }
    }

    /// Whether `cost` units of `field` at `now` (ticks) come out of this lease, which must
    /// hold the key: unexpired and enough left.
    #[inline(always)]
    pub fn covers(&self, field: Field, now: u64, cost: u64) -> bool {
        let (left, expires) = match field {
            Field::Packets => (self.left[0], self.expires[0]),
            Field::Bytes => (self.left[1], self.expires[1]),
            Field::Syn => (self.left[2], self.expires[2]),
        };
        left >= cost && now < expires
    }

    /// Spends `cost` units of `field` (after [`Self::covers`]).
    #[inline(always)]
    pub fn spend(&mut self, field: Field, cost: u64) {
        let left = match field {
            Field::Packets => &mut self.left[0],
            Field::Bytes => &mut self.left[1],
            Field::Syn => &mut self.left[2],
        };
        *left = left.saturating_sub(cost);
    }

    /// After a refill at `now` that left the bucket's TAT at `tat`: `left` units of `field`,
    /// for [`LEASE_TICKS`] or until `tat`, whichever comes first.
    ///
    /// Why until `tat`: the lease's units lie in the TAT before `tat`, and once `now` passes it
    /// the bucket may have refilled completely (another CPU's charge then starts afresh from
    /// `now`), which forgives them. Given back after that, they would be credited a second time
    /// (seen: a lease left over from before an idle second returned 100 units on top of a full
    /// bucket). Before `tat` no refill can have forgotten them, so giving them back is exact.
    #[inline(always)]
    pub fn refilled(&mut self, field: Field, now: u64, left: u64, tat: u64) {
        let (slot_left, expires) = match field {
            Field::Packets => (&mut self.left[0], &mut self.expires[0]),
            Field::Bytes => (&mut self.left[1], &mut self.expires[1]),
            Field::Syn => (&mut self.left[2], &mut self.expires[2]),
        };
        *slot_left = left;
        let lasts = now.saturating_add(LEASE_TICKS);
        *expires = if tat < lasts { tat } else { lasts };
    }

    /// The units of `field` that may go back to the bucket at `now`: those left, while the
    /// lease has not expired; none after (see [`Self::refilled`]: they may be forgiven already,
    /// and a unit lost can only refuse a packet later, never admit one).
    #[inline(always)]
    pub fn returnable(&self, field: Field, now: u64) -> u64 {
        let (left, expires) = match field {
            Field::Packets => (self.left[0], self.expires[0]),
            Field::Bytes => (self.left[1], self.expires[1]),
            Field::Syn => (self.left[2], self.expires[2]),
        };
        if now < expires { left } else { 0 }
    }

    /// The slot, empty, for `key` (the units of the key it held have been given back).
    #[inline(always)]
    pub fn claim(&mut self, key: &TrackKey) {
        self.key = *key;
        self.held = 1;
        self.left = [0; 3];
        self.expires = [0; 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::Bucket;

    #[test]
    fn slots_spread_keys_and_keep_the_kinds_apart() {
        let mut used = [0u32; LEASE_SLOTS as usize];
        for host in 0..=255u32 {
            let key = TrackKey::v4(0, 0xC000_0200 | host, 32);
            let slot = Lease::slot(LEASE_SOURCE, &key);
            assert!(slot < LEASE_SLOTS);
            used[slot as usize] += 1;
            let subnet = Lease::slot(LEASE_SUBNET, &key);
            assert!((LEASE_SLOTS..LEASE_ENTRIES).contains(&subnet));
        }
        // 256 keys into 256 slots: a decent hash leaves about 1/e of them empty, a bad one
        // (using only some bytes) most of them.
        let empty = used.iter().filter(|n| **n == 0).count();
        assert!(empty < 120, "{empty} of 256 slots unused");
    }

    #[test]
    fn a_slot_holds_only_its_key() {
        let key = TrackKey::v4(1, 0xC000_0201, 32);
        let other_rule = TrackKey::v4(2, 0xC000_0201, 32);
        let other_len = TrackKey::v4(1, 0xC000_0201, 24);
        let mut lease = Lease::default();
        assert!(!lease.holds(&key));
        lease.claim(&key);
        assert!(lease.holds(&key));
        assert!(!lease.holds(&other_rule));
        assert!(!lease.holds(&other_len));
    }

    #[test]
    fn units_expire_with_the_lease() {
        let key = TrackKey::v4(0, 1, 32);
        let mut lease = Lease::default();
        lease.claim(&key);
        lease.refilled(Field::Bytes, 1_000, 500, u64::MAX);
        assert!(lease.covers(Field::Bytes, 1_000, 500));
        assert!(!lease.covers(Field::Bytes, 1_000, 501));
        assert!(
            !lease.covers(Field::Packets, 1_000, 1),
            "other fields hold nothing"
        );
        assert!(lease.covers(Field::Bytes, 1_000 + LEASE_TICKS - 1, 1));
        assert!(!lease.covers(Field::Bytes, 1_000 + LEASE_TICKS, 1));
        lease.spend(Field::Bytes, 200);
        assert_eq!(lease.left(Field::Bytes), 300);
    }

    /// A lease taken before the bucket refilled completely gives nothing back: its units were
    /// forgiven by the refill, and crediting them again let two CPUs admit a lease more than
    /// `burst + rate × t` from the full bucket (the two-CPU kernel test saw 30,500 of 30,400).
    #[test]
    fn a_lease_older_than_a_full_refill_gives_nothing_back() {
        const SECOND: u64 = crate::ratelimit::TICKS_PER_SECOND;
        let bucket = Bucket::new(100_000, 500);
        let units = bucket.lease_units();
        assert_eq!(units, 100);
        let key = TrackKey::v4(0, 1, 32);
        let (mut a, mut b) = (Lease::default(), Lease::default());
        a.claim(&key);
        b.claim(&key);
        let t0 = 7 * SECOND;
        let (tat, left) = bucket
            .refill(0, t0, a.returnable(Field::Packets, t0), 1)
            .expect("room");
        a.refilled(Field::Packets, t0, left, tat);
        assert_eq!(
            a.returnable(Field::Packets, t0 + 1),
            units,
            "fresh: all of it"
        );
        // A second later the bucket is full again; another CPU charges it from scratch.
        let t1 = t0 + SECOND;
        let (tat_b, left_b) = bucket
            .refill(tat, t1, b.returnable(Field::Packets, t1), 1)
            .expect("room");
        b.refilled(Field::Packets, t1, left_b, tat_b);
        assert_eq!(tat_b, t1 + bucket.interval * (1 + units));
        assert_eq!(
            a.returnable(Field::Packets, t1),
            0,
            "forgiven by the refill"
        );
        let (tat_a, _) = bucket
            .refill(tat_b, t1, a.returnable(Field::Packets, t1), 1)
            .expect("room");
        assert_eq!(tat_a, tat_b + bucket.interval * (1 + units));
    }

    /// `K` CPUs, each with a lease, charging one bucket in random interleavings at moments
    /// that move forward: admitted units since the bucket was created never exceed
    /// `burst + rate × t`, and a CPU refused for lack of units leaves at most `K × lease`
    /// units unspent in the others' leases.
    #[test]
    fn leases_keep_the_gcra_bound_on_many_cpus() {
        const SECOND: u64 = crate::ratelimit::TICKS_PER_SECOND;
        for (rate, burst, cpus) in [
            (1_000u64, 10u64, 2usize),
            (1_000_000, 1_000, 16),
            (20, 2, 16),
        ] {
            let bucket = Bucket::new(rate, burst);
            let lease_units = bucket.lease_units();
            let key = TrackKey::v4(0, 1, 32);
            let mut all = [Lease::default(); 16];
            let leases = &mut all[..cpus];
            let mut tat = 0u64;
            let mut seed = 0x1234_5678_9ABC_DEF0u64 ^ rate;
            let mut next = || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            let start = 7 * SECOND;
            let mut now = start;
            let mut admitted = 0u64;
            for _ in 0..200_000 {
                now += next() % (SECOND / rate / 4 + 1);
                let cpu = (next() % cpus as u64) as usize;
                let lease = &mut leases[cpu];
                if !lease.holds(&key) {
                    lease.claim(&key);
                }
                if lease.covers(Field::Packets, now, 1) {
                    lease.spend(Field::Packets, 1);
                    admitted += 1;
                } else if let Some((next_tat, left)) =
                    bucket.refill(tat, now, lease.returnable(Field::Packets, now), 1)
                {
                    tat = next_tat;
                    lease.refilled(Field::Packets, now, left, next_tat);
                    admitted += 1;
                } else {
                    let parked: u64 = leases.iter().map(|l| l.left(Field::Packets)).sum();
                    assert!(parked <= cpus as u64 * lease_units, "{parked} parked");
                }
                let elapsed = now - start;
                // The bucket starts full: `burst` at once, then the rate.
                let bound = burst + (elapsed as u128 * rate as u128 / SECOND as u128) as u64;
                assert!(
                    admitted <= bound + 1,
                    "rate {rate}, {cpus} CPUs: admitted {admitted} > bound {bound}"
                );
            }
            let elapsed = now - start;
            let allowed = burst + (elapsed as u128 * rate as u128 / SECOND as u128) as u64;
            // Offered at about four times the rate: all but the parked units are admitted.
            assert!(
                admitted + cpus as u64 * lease_units + 1 >= allowed,
                "rate {rate}, {cpus} CPUs: admitted {admitted} of {allowed}"
            );
        }
    }
}
