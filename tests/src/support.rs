//! Small helpers every kind of test uses: bounded waiting, and showing frames (from
//! `apifw-test-frames`).

use std::time::{Duration, Instant};

/// Waits until `done` holds, checking every 100 ms; panics naming `what` after `timeout`. The
/// bound is a hang guard, never a timing assertion: callers give it generous room.
pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub use apifw_test_frames::hex;
