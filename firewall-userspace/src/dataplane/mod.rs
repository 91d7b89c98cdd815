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
#[cfg(test)]
pub mod fake;
pub mod firewall;
pub mod interfaces;
pub mod memory;
pub mod pins;
pub mod privileges;
pub mod stats;
pub mod top;

use std::path::Path;

use firewall_common::rules::{BanEntry, BanKey};
use ipnet::IpNet;

use self::{
    bans::BanError,
    events::EventCounts,
    firewall::{Attachment, FirewallError},
    stats::{ProgramRuns, Snapshot},
};
use crate::{compile::Compiled, policy::XdpModeSetting};

/// The XDP program's log records, forwarded by the daemon.
pub type ProgramLogger = aya_log::EbpfLogger<&'static dyn log::Log>;
/// The ring buffer of drop events.
pub type EventRing = aya::maps::RingBuf<aya::maps::MapData>;

/// What the engine needs of the kernel, and nothing more: install a compiled policy (an atomic
/// swap), the ban map, counters, and the interfaces. [`firewall::Firewall`] is the real one; a
/// fake keeps the same tables in memory (`fake.rs`), so the engine's behaviour is unit-tested
/// without root or a kernel.
pub trait Dataplane: Send {
    /// Installs `compiled` into the spare generation and makes it the active one.
    fn install(&mut self, compiled: Compiled) -> Result<(), FirewallError>;
    /// The policy in force, as installed.
    fn installed(&self) -> Option<&Compiled>;
    /// The generation the program reads.
    fn active_generation(&self) -> u32;
    /// Whether the maps were adopted from a previous daemon rather than created.
    fn adopted(&self) -> bool;

    /// Adds or replaces a ban; fails when the ban map is full.
    fn insert_ban(&mut self, key: BanKey, ban: BanEntry) -> Result<(), BanError>;
    /// Removes a ban; whether there was one.
    fn remove_ban(&mut self, key: &BanKey) -> Result<bool, BanError>;
    /// Every ban in the map, expired ones included.
    fn ban_entries(&self) -> Result<Vec<(BanKey, BanEntry)>, BanError>;
    /// Removes the bans that expired by `now_ns` (CLOCK_MONOTONIC) and returns them.
    fn remove_expired_bans(&mut self, now_ns: u64) -> Result<Vec<(IpNet, BanEntry)>, BanError>;

    /// The verdict counters, summed over CPUs.
    fn stats(&self) -> Result<Snapshot, FirewallError>;
    /// The drop-event counters.
    fn event_counts(&self) -> Result<EventCounts, FirewallError>;
    /// The kernel's run statistics of the program, if it can say.
    fn program_runs(&self) -> Option<ProgramRuns>;
    /// The kernel memory of each map, in bytes (`memory::memlock`); empty when unknown.
    fn kernel_memory(&self) -> Vec<(&'static str, u64)>;
    /// Each CPU's SYN detector of `port` (`firewall_common::syncookie`); empty when unknown.
    fn syn_detectors(&self, port: u16) -> Vec<firewall_common::syncookie::SynDetector>;

    /// Attaches the program to `interface`, pinning the link at `pin`.
    fn attach(
        &mut self,
        interface: &str,
        mode: XdpModeSetting,
        pin: &Path,
    ) -> Result<Attachment, FirewallError>;
    /// Takes over the link a previous daemon pinned at `from`, pinning it at `to`.
    fn adopt(
        &mut self,
        interface: &str,
        from: &Path,
        to: &Path,
    ) -> Result<Attachment, FirewallError>;
    /// Counts the packets of `ifindex` in counter slot `slot`.
    fn set_interface_slot(&mut self, ifindex: u32, slot: u32) -> Result<(), FirewallError>;
    /// The program's log records, once.
    fn take_logger(&mut self) -> Option<ProgramLogger>;
    /// The drop-event ring buffer, once.
    fn take_events(&mut self) -> Option<EventRing>;
}
