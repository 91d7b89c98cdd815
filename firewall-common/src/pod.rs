//! `aya::Pod` for the map types: userspace reads and writes them as raw bytes.

use crate::{
    config::KernelConfig,
    events::DropEvent,
    lease::Lease,
    prefix::{PrefixV4Key, PrefixV6Key, V4Summary, V6Summary, V6SummaryKey},
    rules::{BanEntry, BanKey, EscalationState, RuleConfig, RuleKey, TrackKey, TrackState},
    stats::Counter,
};

// SAFETY: every type below is #[repr(C)], made only of integers and integer arrays, with all
// padding spelled out as explicit fields, so any bit pattern is valid and none is uninitialised.
unsafe impl aya::Pod for KernelConfig {}
// SAFETY: see above.
unsafe impl aya::Pod for Counter {}
// SAFETY: see above.
unsafe impl aya::Pod for PrefixV4Key {}
// SAFETY: see above.
unsafe impl aya::Pod for PrefixV6Key {}
// SAFETY: see above.
unsafe impl aya::Pod for V4Summary {}
// SAFETY: see above.
unsafe impl aya::Pod for V6Summary {}
// SAFETY: see above.
unsafe impl aya::Pod for V6SummaryKey {}
// SAFETY: see above.
unsafe impl aya::Pod for RuleConfig {}
// SAFETY: see above.
unsafe impl aya::Pod for RuleKey {}
// SAFETY: see above.
unsafe impl aya::Pod for TrackKey {}
// SAFETY: see above.
unsafe impl aya::Pod for TrackState {}
// SAFETY: see above.
unsafe impl aya::Pod for BanKey {}
// SAFETY: see above.
unsafe impl aya::Pod for BanEntry {}
// SAFETY: see above.
unsafe impl aya::Pod for EscalationState {}
// SAFETY: see above.
unsafe impl aya::Pod for DropEvent {}
// SAFETY: see above: a 20-byte key, a u32 and two u64 arrays, 72 bytes with no padding (the
// assertion below holds it to that).
unsafe impl aya::Pod for Lease {}
const _: () = assert!(size_of::<Lease>() == 72);
// SAFETY: see above: six u32 fields, 24 bytes with no padding.
unsafe impl aya::Pod for crate::syncookie::SynDetector {}
const _: () = assert!(size_of::<crate::syncookie::SynDetector>() == 24);
// SAFETY: see above: two u64 words, 16 bytes with no padding.
unsafe impl aya::Pod for crate::tracked::TrackedEntry {}
const _: () = assert!(size_of::<crate::tracked::TrackedEntry>() == 16);
