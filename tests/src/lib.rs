//! Helpers for apifw's privileged tests: frame crafting, namespace labs and the daemon process.

pub mod adversarial;
pub mod daemon;
pub mod generator;
pub mod lapi;
pub mod netns;
/// The crafted frames, shared with the model's tests in `firewall-common`.
pub use apifw_test_frames as packets;
pub mod policies;
pub mod programs;
pub mod support;
pub mod tally;
pub mod traffic;
