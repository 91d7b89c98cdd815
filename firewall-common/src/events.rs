//! Drop events: what the XDP program tells the daemon about the packets it drops, through a
//! ring buffer, at most `KernelConfig::events` per second (the excess is only counted).

/// One dropped packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    /// When (CLOCK_MONOTONIC_COARSE, ns: tick resolution; or the test clock).
    pub time_ns: u64,
    /// Source address, network order (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// 4, 6, or 0 when the packet had no usable source (malformed).
    pub family: u8,
    /// `Reason` as `u8`.
    pub reason: u8,
    /// Explicit padding; always zero.
    pub _pad: u16,
    /// Rule slot that dropped it, or `u32::MAX`.
    pub rule: u32,
    /// Interface it arrived on.
    pub ifindex: u32,
    /// Frame length.
    pub len: u32,
}

/// Index in `APIFW_EVENT_STATS` of events written to the ring buffer.
pub const EVENTS_EMITTED: u32 = 0;
/// Index of events not written because the per-second cap was reached.
pub const EVENTS_SUPPRESSED: u32 = 1;
/// Index of events not written because the ring buffer was full (the daemon is behind).
pub const EVENTS_LOST: u32 = 2;
/// Entries of `APIFW_EVENT_STATS`.
pub const EVENT_STATS_ENTRIES: u32 = 3;
/// Size of the ring buffer in bytes (a power of two, a multiple of the page size).
pub const RING_BYTES: u32 = 1 << 18;
