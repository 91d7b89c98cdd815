//! apifw's privileged integration tests, one binary with a module per area (as aya keeps its
//! `test/integration-test`): the kernel's verdicts against the model, the daemon and the CLI in
//! namespace labs, and the deployment files. All need root. Helpers live in the `apifw_tests`
//! library (`tests/src`), shared with the benchmarks (`bench`).
//!
//! One binary, so the helpers and the XDP objects are built and linked once; the tests run in
//! parallel, each in namespaces, interfaces and pin paths named for it. The soak test alone is
//! its own binary (`tests/tests/soak.rs`): it floods the machine for a minute, and cargo runs
//! test binaries one after another, so it has the machine to itself.

/// The differential suite against hostile frames (kernel vs model).
mod adversarial;
/// The control plane: the CLI against the daemon's socket.
mod control;
/// The daemon in a namespace lab: enforcement, pins, restarts, readiness.
mod daemon;
/// Rate limits with the real daemon and real traffic.
mod daemon_ratelimit;
/// The deployment files: systemd unit, Debian package, monitoring examples.
mod deploy;
/// Drop events: the per-CPU cap and the ring buffer.
mod events;
/// Faults around a running daemon: interfaces that go away, dead peers.
mod faults;
/// Fleet: two hosts following one real CrowdSec LAPI.
mod fleet;
/// The in-kernel flood generator that the benchmarks and the soak test trust.
mod generator;
/// Jails: log-driven bans against a real nginx.
mod jails;
/// Kernel memory of the maps against the limits.
mod memory;
/// The Prometheus endpoint.
mod metrics;
/// Least privilege: the daemon as an unprivileged user with capabilities.
mod privilege;
/// Kernel verdicts of the rate-limit rules, bans and escalation, with the test clock.
mod ratelimit;
/// SYN cookies in XDP with real sockets and a real flood.
mod syncookie;
/// Kernel verdicts under `BPF_PROG_TEST_RUN`: lists, parsing.
mod verdict;
