//! apifw userspace, as a library in layers. Each layer uses only the layers below it (a test,
//! `layers_point_down` in xtask, fails otherwise):
//!
//! | layer | what it does |
//! | --- | --- |
//! | [`daemon`] | the run loop, the control server and its request parser, `/metrics` |
//! | [`engine`] | the firewall's behaviour: lists, bans, reloads, the 1 s tick, jails, views |
//! | [`jails`], [`crowdsec`] | access logs and abuse reports to bans; CrowdSec's decisions, read and checked |
//! | [`control`] | the control API: request and answer types, and its client |
//! | [`store`] | state file, audit log, instance lock |
//! | [`dataplane`] | the kernel: loaded object, maps, batch syscalls, pins, attach, counters |
//! | [`compile`] | a policy to the maps' content, without touching the kernel |
//! | [`policy`] | the policy file: format, validation, feeds, jail settings |
//! | [`paths`], [`errors`] | filesystem locations; error chains as one line |
//!
//! The `apifw` binary (`src/bin/apifw`) is the CLI: one file per verb, over this library.

pub mod compile;
pub mod control;
pub mod crowdsec;
pub mod daemon;
pub mod dataplane;
pub mod engine;
pub mod errors;
pub mod jails;
pub mod paths;
pub mod policy;
pub mod store;
#[cfg(test)]
mod test_dir;

pub use dataplane::firewall::{EBPF_OBJECT, Firewall, FirewallError};

/// Whether this build has the test hooks (`test-hooks` feature) that the kernel tests use; the
/// shipped binary must not, and says so in `apifw --version` when it does.
pub const TEST_HOOKS: bool = cfg!(feature = "test-hooks");
pub use policy::{Loaded, Policy};
