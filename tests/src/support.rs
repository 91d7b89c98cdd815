//! Small helpers every kind of test uses: bounded waiting, showing frames (from
//! `apifw-test-frames`), and a thread's priority.

use std::time::{Duration, Instant};

use anyhow::Context as _;

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

/// Gives thread `tid` (0: the calling thread) the highest nice level, so that on a shared
/// machine whatever else runs on its CPU barely slows it (it still runs under the normal
/// scheduler, so nothing else starves).
pub fn raise_priority(tid: i32) -> anyhow::Result<()> {
    let who = libc::id_t::try_from(tid).context("thread id")?;
    // SAFETY: setpriority only reads its integer arguments.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, who, -20) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("renice thread {tid}"));
    }
    Ok(())
}
