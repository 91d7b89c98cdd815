//! The dataplane layer: everything that touches the kernel. The loaded XDP object and its maps
//! ([`firewall`]), the batch syscalls and the RCU barrier that make a policy swap atomic
//! ([`batch`], [`barrier`]), pins ([`pins`]), the privileges the kernel asks for
//! ([`privileges`]), attaching to interfaces ([`interfaces`]), and what is read back: counters
//! ([`stats`]), bans ([`bans`]), drop events ([`events`]) and the top offenders built from them
//! ([`top`]).
//!
//! It depends only on `policy` and `compile` (what to install) and on `paths`; nothing here knows
//! about the daemon, the engine or the control API.

pub mod bans;
pub mod barrier;
pub mod batch;
pub mod events;
pub mod firewall;
pub mod interfaces;
pub mod pins;
pub mod privileges;
pub mod stats;
pub mod top;
