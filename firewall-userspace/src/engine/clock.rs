//! The engine's clocks, injected so that its behaviour over time (TTLs, ban expiry, jail
//! windows) is tested without waiting.

use crate::dataplane::bans::{self, BanError};

/// Where the engine reads the time.
pub trait Clock: Send + Sync {
    /// Seconds since the Unix epoch: runtime-entry expiry, the state file, jails.
    fn unix_secs(&self) -> u64;
    /// CLOCK_MONOTONIC in nanoseconds, the clock the XDP program stamps bans with.
    fn monotonic_ns(&self) -> Result<u64, BanError>;
}

/// The system's clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_secs(&self) -> u64 {
        crate::store::state::unix_now()
    }

    fn monotonic_ns(&self) -> Result<u64, BanError> {
        bans::monotonic_ns()
    }
}
