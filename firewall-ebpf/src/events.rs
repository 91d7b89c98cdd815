//! Drop events through the ring buffer, capped per CPU so that a flood cannot turn reporting
//! into a second denial of service: past the cap an event is only counted as suppressed.

use aya_ebpf::{
    helpers::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use firewall_common::{
    KernelConfig, Reason,
    events::{
        DropEvent, EVENT_STATS_ENTRIES, EVENTS_EMITTED, EVENTS_LOST, EVENTS_SUPPRESSED, RING_BYTES,
    },
    ratelimit::ticks,
};

use crate::parse::Source;

#[map(name = "APIFW_EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

#[map(name = "APIFW_EVENT_TAT")]
static EVENT_TAT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "APIFW_EVENT_STATS")]
static EVENT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_STATS_ENTRIES, 0);

#[inline(always)]
fn bump(index: u32) {
    if let Some(counter) = EVENT_STATS.get_ptr_mut(index) {
        // SAFETY: this CPU's slot of a per-CPU array, which nothing else writes while the
        // program runs here.
        unsafe { *counter += 1 };
    }
}

/// Reports a dropped packet, unless this CPU's share of the per-second cap is used up.
#[inline(always)]
pub fn emit(
    source: &Source,
    reason: Reason,
    rule: u32,
    len: u64,
    ifindex: u32,
    config: &KernelConfig,
) {
    // The coarse clock (tick resolution) is enough to cap events per second and costs a
    // fraction of the precise one on the drop path, which a flood exercises. The test hook
    // replaces it as it does the rate limiter's clock.
    let now = if config.test_clock_ns != 0 {
        config.test_clock_ns
    } else {
        // SAFETY: a helper without arguments or preconditions.
        unsafe { bpf_ktime_get_coarse_ns() }
    };
    let Some(tat) = EVENT_TAT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot (see `bump`); a plain u64.
    let conforms = unsafe {
        match config.events.charge(*tat, ticks(now), 1) {
            Some(next) => {
                *tat = next;
                true
            }
            None => false,
        }
    };
    if !conforms {
        bump(EVENTS_SUPPRESSED);
        return;
    }
    let mut event = DropEvent {
        time_ns: now,
        reason: reason as u8,
        rule,
        ifindex,
        len: len as u32,
        ..DropEvent::default()
    };
    match *source {
        Source::V4(addr) => {
            event.family = 4;
            let bytes = addr.to_be_bytes();
            event.addr[0] = bytes[0];
            event.addr[1] = bytes[1];
            event.addr[2] = bytes[2];
            event.addr[3] = bytes[3];
        }
        Source::V6(hi, lo) => {
            event.family = 6;
            let (hi, lo) = (hi.to_be_bytes(), lo.to_be_bytes());
            let mut i = 0;
            while i < 8 {
                event.addr[i] = hi[i];
                event.addr[8 + i] = lo[i];
                i += 1;
            }
        }
    }
    match EVENTS.output::<DropEvent>(&event, 0) {
        Ok(()) => bump(EVENTS_EMITTED),
        Err(_) => bump(EVENTS_LOST),
    }
}
