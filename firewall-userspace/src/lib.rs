//! apifw userspace: policy, map compilation, loading and attaching, statistics, the daemon and
//! the CLI verbs. The `apifw` binary is a thin shell over [`cli`].

pub mod audit;
pub mod bans;
pub mod barrier;
pub mod batch;
pub mod cli;
pub mod compile;
pub mod control;
pub mod daemon;
pub mod engine;
pub mod events;
pub mod feeds;
pub mod firewall;
pub mod interfaces;
pub mod jails;
pub mod lock;
pub mod metrics;
pub mod paths;
pub mod pins;
pub mod policy;
pub mod privileges;
pub mod request;
pub mod server;
pub mod state;
pub mod stats;
pub mod tables;
pub mod top;

pub use firewall::{EBPF_OBJECT, Firewall, FirewallError};
pub use policy::{Loaded, Policy};
