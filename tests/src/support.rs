//! Small helpers every kind of test uses: bounded waiting and showing frames.

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

/// The first 160 bytes of `frame` in hex (what the parser reads), and how many more there are.
pub fn hex(frame: &[u8]) -> String {
    let shown: String = frame.iter().take(160).map(|b| format!("{b:02x}")).collect();
    match frame.len().checked_sub(160) {
        Some(more) if more > 0 => format!("{shown}… (+{more} bytes)"),
        _ => shown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_shows_short_frames_whole_and_cuts_long_ones() {
        assert_eq!(hex(&[0x45, 0x00, 0xff]), "4500ff");
        let long = vec![0u8; 170];
        assert_eq!(hex(&long), format!("{}… (+10 bytes)", "00".repeat(160)));
    }
}
