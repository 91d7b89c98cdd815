//! Token buckets as GCRA (generic cell rate algorithm): one `u64` of state per bucket, the
//! "theoretical arrival time" (TAT), so that CPUs share a bucket by compare-and-exchange on a
//! single word. The XDP program and the reference model call the same [`Bucket::charge`].
//!
//! A bucket of `rate` units per second and `burst` units behaves exactly like a token bucket of
//! capacity `burst` refilled at `rate`: a unit costs `interval = 1 s / rate`, and a packet of
//! `cost` units conforms when `max(TAT, now) + cost * interval - now <= burst * interval`.
//!
//! Time is counted in ticks of 1/16 ns so that high byte rates (10 Gbit/s is 0.8 ns per byte)
//! keep their precision; a `u64` of ticks lasts 36 years of uptime. All arithmetic saturates.

/// Ticks per nanosecond (`ticks` shifts by 4).
pub const TICKS_PER_NS: u64 = 16;
/// Ticks per second.
pub const TICKS_PER_SECOND: u64 = 1_000_000_000 * TICKS_PER_NS;

/// One limit: `interval` ticks per unit and a tolerance of `burst` units. `interval == 0` means
/// no limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct Bucket {
    /// Ticks one unit (packet or byte) costs: `TICKS_PER_SECOND / rate`, at least 1.
    pub interval: u64,
    /// `interval * burst`: how far ahead of `now` the TAT may run.
    pub tolerance: u64,
}

impl Bucket {
    /// No limit.
    pub const UNLIMITED: Self = Self {
        interval: 0,
        tolerance: 0,
    };

    /// `rate` units per second with a burst of `burst` units (both at least 1).
    pub const fn new(rate: u64, burst: u64) -> Self {
        let rate = if rate == 0 { 1 } else { rate };
        let interval = TICKS_PER_SECOND / rate;
        let interval = if interval == 0 { 1 } else { interval };
        Self {
            interval,
            tolerance: {
                let product = interval as u128 * burst as u128;
                if product > u64::MAX as u128 {
                    u64::MAX
                } else {
                    product as u64
                }
            },
        }
    }

    /// Whether this bucket limits anything.
    pub const fn is_limited(&self) -> bool {
        self.interval != 0
    }

    /// The new TAT if a packet costing `cost` units at `now` (ticks) conforms given the stored
    /// `tat`, or `None` if it exceeds the limit (the state is then left as it is).
    #[inline(always)]
    pub const fn charge(&self, tat: u64, now: u64, cost: u64) -> Option<u64> {
        if !self.is_limited() {
            return Some(tat);
        }
        let start = if tat > now { tat } else { now };
        // Bounded factors keep the product far from overflow without a 128-bit multiply (which
        // BPF lacks): interval <= 1 s in ticks (< 2^34), cost < 2^16 (a frame) → product < 2^50.
        let interval = if self.interval < TICKS_PER_SECOND {
            self.interval
        } else {
            TICKS_PER_SECOND
        };
        let cost = if cost < MAX_COST { cost } else { MAX_COST };
        let next = start.saturating_add(interval * cost);
        if next - now > self.tolerance {
            None
        } else {
            Some(next)
        }
    }
}

impl Bucket {
    /// Units a lease of this bucket holds beyond the packet that takes it: what the rate
    /// refills in [`crate::lease::LEASE_NS`], at most a quarter of the burst (a lease must fit
    /// in the bucket, next to other CPUs' leases); 0 below 1,000 units/s, and for an unlimited
    /// bucket.
    #[inline(always)]
    pub const fn lease_units(&self) -> u64 {
        let Some(units) = crate::lease::LEASE_TICKS.checked_div(self.interval) else {
            return 0;
        };
        let quarter = match (self.tolerance / 4).checked_div(self.interval) {
            Some(quarter) => quarter,
            None => 0,
        };
        if units < quarter { units } else { quarter }
    }

    /// The TAT `tat` with `left` unspent leased units given back at `now`. A bucket that has
    /// refilled completely meanwhile stays full: units beyond the burst are lost, as they are
    /// for a bucket nobody charges.
    #[inline(always)]
    pub const fn give_back(&self, tat: u64, now: u64, left: u64) -> u64 {
        let back = self.clamped_interval() * if left < MAX_LEASE { left } else { MAX_LEASE };
        if tat > now.saturating_add(back) {
            tat - back
        } else if tat > now {
            now
        } else {
            tat
        }
    }

    /// A new lease for a packet of `cost` units at `now`, with the `left` unspent units of the
    /// old one given back first: the next TAT and the units left after this packet, or `None`
    /// when the bucket has no room for `cost` (nothing changes then). The lease holds
    /// `cost + lease_units` when the bucket has room for that, else just `cost` (exactly
    /// [`Self::charge`] on the TAT with the units given back). Few branches on purpose: the
    /// verifier walks every path of this once per bucket of the XDP program.
    #[inline(always)]
    pub const fn refill(&self, tat: u64, now: u64, left: u64, cost: u64) -> Option<(u64, u64)> {
        if !self.is_limited() {
            return Some((tat, 0));
        }
        let interval = self.clamped_interval();
        let cost = if cost < MAX_COST { cost } else { MAX_COST };
        let lease = self.lease_units();
        let back = interval * if left < MAX_LEASE { left } else { MAX_LEASE };
        // Where charging starts: the TAT without the units given back, at least now.
        let base = if tat > now.saturating_add(back) {
            tat - back
        } else {
            now
        };
        let leased = base.saturating_add(interval * (cost + lease));
        if leased - now <= self.tolerance {
            return Some((leased, lease));
        }
        let exact = base.saturating_add(interval * cost);
        if exact - now <= self.tolerance {
            Some((exact, 0))
        } else {
            None
        }
    }

    /// The interval, at most one second in ticks (see `charge`).
    #[inline(always)]
    const fn clamped_interval(&self) -> u64 {
        if self.interval < TICKS_PER_SECOND {
            self.interval
        } else {
            TICKS_PER_SECOND
        }
    }
}

/// Largest number of units a lease gives back at once: a lease never holds more than
/// `lease_units <= LEASE_TICKS` after its packet.
const MAX_LEASE: u64 = crate::lease::LEASE_TICKS + MAX_COST;

/// Largest cost one packet is charged: a frame is shorter than 64 KiB.
pub const MAX_COST: u64 = 0xFFFF;

/// Nanoseconds to ticks, saturating (by shifts: BPF has no 128-bit multiply for
/// `saturating_mul`'s overflow check).
#[inline(always)]
pub const fn ticks(ns: u64) -> u64 {
    if ns >> 60 != 0 { u64::MAX } else { ns << 4 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = TICKS_PER_SECOND;

    /// Charges `count` packets of `cost` at `now`; returns how many conformed.
    fn burst(bucket: &Bucket, tat: &mut u64, now: u64, count: u64, cost: u64) -> u64 {
        let mut admitted = 0;
        for _ in 0..count {
            if let Some(next) = bucket.charge(*tat, now, cost) {
                *tat = next;
                admitted += 1;
            }
        }
        admitted
    }

    #[test]
    fn a_fresh_bucket_admits_exactly_its_burst() {
        let bucket = Bucket::new(100, 20);
        let mut tat = 0;
        assert_eq!(burst(&bucket, &mut tat, 5 * SECOND, 100, 1), 20);
    }

    #[test]
    fn refill_follows_the_rate_and_caps_at_the_burst() {
        let bucket = Bucket::new(100, 20);
        let mut tat = 0;
        let start = 10 * SECOND;
        assert_eq!(burst(&bucket, &mut tat, start, 20, 1), 20);
        assert_eq!(
            burst(&bucket, &mut tat, start, 1, 1),
            0,
            "empty right after the burst"
        );
        // 100 ms later: 10 tokens back.
        assert_eq!(burst(&bucket, &mut tat, start + SECOND / 10, 50, 1), 10);
        // A long idle period refills to the burst, never beyond.
        assert_eq!(burst(&bucket, &mut tat, start + 3600 * SECOND, 50, 1), 20);
    }

    #[test]
    fn steady_rate_over_time_matches_the_limit() {
        // 1,000 packets/s offered at 3x the limit for 10 s (one packet every 333 us).
        let bucket = Bucket::new(1_000, 10);
        let mut tat = 0;
        let mut admitted = 0;
        let step = SECOND / 3_000;
        for i in 0..30_000 {
            admitted += burst(&bucket, &mut tat, SECOND + i * step, 1, 1);
        }
        // 10 s at 1,000/s plus the initial burst, give or take one interval of rounding.
        assert!((10_000..=10_011).contains(&admitted), "admitted {admitted}");
    }

    #[test]
    fn byte_limits_charge_the_packet_length() {
        let bucket = Bucket::new(10_000, 3_000); // 10 kB/s, 3 kB burst
        let mut tat = 0;
        let now = 2 * SECOND;
        assert_eq!(burst(&bucket, &mut tat, now, 10, 1_000), 3);
        assert_eq!(
            burst(&bucket, &mut tat, now, 1, 1),
            0,
            "not even one byte left"
        );
        assert_eq!(burst(&bucket, &mut tat, now + SECOND / 10, 10, 1_000), 1);
        assert_eq!(
            bucket.charge(0, now, 3_001),
            None,
            "larger than the burst never fits"
        );
    }

    #[test]
    fn extreme_values_saturate_instead_of_overflowing() {
        let fast = Bucket::new(u64::MAX, u64::MAX);
        assert_eq!(fast.interval, 1);
        assert_eq!(fast.tolerance, u64::MAX);
        assert_eq!(fast.charge(0, u64::MAX, u64::MAX), Some(u64::MAX));
        let slow = Bucket::new(1, 1);
        assert_eq!(slow.interval, SECOND);
        assert_eq!(slow.charge(u64::MAX, 0, u64::MAX), None);
        assert_eq!(slow.charge(0, u64::MAX - 1, 1), Some(u64::MAX));
        // Costs are capped at one maximal frame.
        let bytes = Bucket::new(1_000_000, 1_000_000);
        assert_eq!(
            bytes.charge(0, SECOND, u64::MAX),
            bytes.charge(0, SECOND, MAX_COST)
        );
        assert_eq!(
            Bucket::new(0, 0).interval,
            SECOND,
            "rate 0 is treated as 1/s"
        );
        assert_eq!(Bucket::UNLIMITED.charge(7, 9, 1_000_000), Some(7));
        assert_eq!(ticks(u64::MAX), u64::MAX);
    }

    #[test]
    fn a_refill_without_a_lease_to_spare_is_a_charge() {
        // Rates below 1,000/s lease nothing beyond the packet: refilling is charging, for any
        // state.
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..100_000 {
            let bucket = Bucket::new(next() % 999 + 1, next() % 50 + 1);
            assert_eq!(bucket.lease_units(), 0);
            let now = next() % (100 * SECOND);
            let tat = now
                .saturating_add(next() % (2 * SECOND))
                .saturating_sub(SECOND);
            let cost = next() % 3 + 1;
            assert_eq!(
                bucket.refill(tat, now, 0, cost),
                bucket.charge(tat, now, cost).map(|next| (next, 0)),
                "{bucket:?} tat {tat} now {now} cost {cost}"
            );
        }
    }

    #[test]
    fn a_lease_holds_a_millisecond_of_the_rate_when_there_is_room() {
        let bucket = Bucket::new(1_000_000, 5_000);
        assert_eq!(bucket.lease_units(), 1_000);
        let now = 10 * SECOND;
        // Full bucket: the packet and a whole lease.
        let (tat, left) = bucket.refill(0, now, 0, 1).expect("room");
        assert_eq!(left, 1_000);
        assert_eq!(tat, now + 1_001 * bucket.interval);
        // Room for 3 units only: just the packet.
        let tight = now + bucket.tolerance - 3 * bucket.interval;
        assert_eq!(
            bucket.refill(tight, now, 0, 1),
            Some((tight + bucket.interval, 0))
        );
        // No room: nothing changes, unless the units given back make room.
        let full = now + bucket.tolerance;
        assert_eq!(bucket.refill(full, now, 0, 1), None);
        assert_eq!(
            bucket.refill(full, now, 1, 1),
            Some((full, 0)),
            "one unit given back pays for this packet"
        );
        // A byte bucket: the lease covers the packet and a millisecond of bytes.
        let bytes = Bucket::new(10_000_000, 100_000);
        assert_eq!(bytes.lease_units(), 10_000);
        assert_eq!(
            bytes.refill(0, now, 0, 1_500).map(|(_, left)| left),
            Some(10_000)
        );
        assert_eq!(Bucket::UNLIMITED.lease_units(), 0);
        assert_eq!(Bucket::UNLIMITED.refill(7, now, 3, 9), Some((7, 0)));
    }

    #[test]
    fn units_given_back_refill_the_bucket_up_to_full() {
        let bucket = Bucket::new(1_000, 10);
        let now = 5 * SECOND;
        let tat = now + 4 * bucket.interval;
        assert_eq!(bucket.give_back(tat, now, 3), now + bucket.interval);
        assert_eq!(bucket.give_back(tat, now, 10), now, "never beyond full");
        assert_eq!(bucket.give_back(now - 1, now, 5), now - 1, "already full");
        assert_eq!(bucket.give_back(tat, now, 0), tat);
    }
}
