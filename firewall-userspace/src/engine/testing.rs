//! What tests above the engine need to run one without a kernel: a clock the test moves, and an
//! engine over the in-memory dataplane with a policy of the test's own.

use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::{dataplane::bans::BanError, dataplane::fake::FakeDataplane, test_dir::TempDir};

/// Nanoseconds per second.
pub const SECOND_NS: u64 = 1_000_000_000;

/// A clock the test moves: the Unix and the monotonic clock advance together.
#[derive(Debug, Default)]
pub struct TestClock {
    unix: AtomicU64,
    monotonic_ns: AtomicU64,
}

impl TestClock {
    /// A clock at a plausible Unix time (2023-11-14) and 1000 s of uptime.
    pub fn new() -> Arc<Self> {
        let clock = Self::default();
        clock.unix.store(1_700_000_000, Ordering::SeqCst);
        clock
            .monotonic_ns
            .store(1_000 * SECOND_NS, Ordering::SeqCst);
        Arc::new(clock)
    }

    /// A clock at `unix` (a test against a real LAPI needs the real time) and 1000 s of uptime.
    pub fn at(unix: u64) -> Arc<Self> {
        let clock = Self::new();
        clock.unix.store(unix, Ordering::SeqCst);
        clock
    }

    /// Moves both clocks `secs` on.
    pub fn advance(&self, secs: u64) {
        self.unix.fetch_add(secs, Ordering::SeqCst);
        self.monotonic_ns
            .fetch_add(secs * SECOND_NS, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn unix_secs(&self) -> u64 {
        self.unix.load(Ordering::SeqCst)
    }

    fn monotonic_ns(&self) -> Result<u64, BanError> {
        Ok(self.monotonic_ns.load(Ordering::SeqCst))
    }
}

/// An engine over `kernel` with `policy` (written to `dir/apifw.toml` unless the file exists),
/// its state file and audit log in `dir`.
pub fn engine_with(
    dir: &TempDir,
    policy: &str,
    kernel: &FakeDataplane,
    clock: &Arc<TestClock>,
) -> Engine {
    let policy_path = dir.join("apifw.toml");
    if !policy_path.exists() {
        std::fs::write(&policy_path, policy).expect("write policy");
    }
    let policy = Loaded::from_file(&policy_path)
        .expect("valid policy")
        .policy;
    let state_path = dir.join("apifw.state.json");
    let clock: Arc<dyn Clock> = Arc::clone(clock) as Arc<dyn Clock>;
    Engine::new(EngineParts {
        policy_path,
        overrides: Overrides::default(),
        feeds: read_feeds(&policy).expect("no feeds"),
        runtime: RuntimeState::load(&state_path).expect("state"),
        state_path,
        dataplane: Box::new(kernel.handle()),
        clock,
        audit: AuditLog::open(&dir.join("audit.log")).expect("audit log"),
        policy_top: 10,
        policy,
    })
    .expect("engine starts")
}
