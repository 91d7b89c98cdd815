//! Helpers for apifw's privileged tests: frame crafting, namespace labs and the daemon process.

pub mod adversarial;
pub mod attack;
pub mod daemon;
pub mod flood;
pub mod loadbench;
pub mod netns;
/// The crafted frames, shared with the model's tests in `firewall-common`.
pub use apifw_test_frames as packets;
pub mod plot;
pub mod policies;
pub mod report;
pub mod sources;
pub mod support;
pub mod tally;
pub mod traffic;
pub mod xdpfilter;
