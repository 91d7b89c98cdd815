//! The daemon's reader of the XDP program's drop events: a structured log line per event (when
//! configured) and the offender tallies behind `apifw top`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use aya::maps::{MapData, RingBuf};
use firewall_common::{Reason, events::DropEvent};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use crate::dataplane::top::{TopTracker, source_of};

fn reason_name(code: u8) -> &'static str {
    Reason::ALL
        .iter()
        .find(|reason| **reason as u8 == code)
        .map_or("unknown", |reason| reason.name())
}

/// Reads events until the task is dropped; `interfaces` names ifindexes in log lines.
pub async fn read(
    ring: RingBuf<MapData>,
    top: Arc<Mutex<TopTracker>>,
    log: bool,
    interfaces: HashMap<u32, String>,
) {
    // SAFETY: the ring buffer owns its map file descriptor for as long as the AsyncFd owns the
    // ring buffer, and `as_raw_fd` always returns that descriptor.
    let registered =
        unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(err) => {
            warn!(%err, "cannot poll the drop-event ring buffer; events are not read");
            return;
        }
    };
    let started = std::time::Instant::now();
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(guard) => guard,
            Err(err) => {
                warn!(%err, "drop-event ring buffer poll failed; events are not read");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        let second = started.elapsed().as_secs();
        while let Some(item) = ring.next() {
            if item.len() < size_of::<DropEvent>() {
                continue;
            }
            // SAFETY: the item holds at least one DropEvent written by the program (checked
            // above); read unaligned as the ring buffer only guarantees 8-byte alignment.
            let event: DropEvent =
                unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DropEvent>()) };
            if log {
                let source = source_of(&event).map(|addr| addr.to_string());
                info!(
                    target: "apifw::event",
                    source = source.as_deref().unwrap_or("-"),
                    reason = reason_name(event.reason),
                    rule = (event.rule != u32::MAX).then_some(event.rule),
                    interface = interfaces
                        .get(&event.ifindex)
                        .map_or("other", String::as_str),
                    len = event.len,
                    "packet dropped"
                );
            }
            if let Ok(mut top) = top.lock() {
                top.record(&event, second);
            }
        }
        guard.clear_ready();
    }
}

/// Forwards the XDP program's aya-log records until the task is dropped.
pub async fn forward_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer's file descriptor for as long as the AsyncFd owns
    // the logger, and `as_raw_fd` always returns that descriptor.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(err) => {
            warn!(%err, "cannot poll the XDP program's log buffer; its logs are not read");
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            warn!("XDP program log buffer poll failed; its logs are not read");
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

/// Drop events counted by the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCounts {
    /// Delivered to the daemon.
    pub emitted: u64,
    /// Over the per-second cap.
    pub suppressed: u64,
    /// Ring buffer full.
    pub lost: u64,
}
