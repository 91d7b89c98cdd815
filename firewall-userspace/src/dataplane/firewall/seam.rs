//! The real [`Dataplane`]: the engine's view of the loaded firewall.

use std::path::Path;

use aya::maps::HashMap;
use firewall_common::map_names;

use super::{Attachment, Firewall, FirewallError, MapOrigin};
use crate::{
    compile::Compiled,
    dataplane::{Dataplane, stats::Snapshot},
    policy::XdpModeSetting,
};

impl Dataplane for Firewall {
    fn install(&mut self, compiled: Compiled) -> Result<(), FirewallError> {
        Firewall::install(self, compiled)
    }

    fn installed(&self) -> Option<&Compiled> {
        Firewall::installed(self)
    }

    fn active_generation(&self) -> u32 {
        Firewall::active_generation(self)
    }

    fn adopted(&self) -> bool {
        self.origin() == MapOrigin::Adopted
    }

    fn insert_ban(
        &mut self,
        key: firewall_common::rules::BanKey,
        ban: firewall_common::rules::BanEntry,
    ) -> Result<(), crate::dataplane::bans::BanError> {
        self.bans_mut()?.insert(key, ban, 0).map_err(|source| {
            crate::dataplane::bans::BanError::Map {
                action: "insert",
                source: Box::new(source),
            }
        })
    }

    fn remove_ban(
        &mut self,
        key: &firewall_common::rules::BanKey,
    ) -> Result<bool, crate::dataplane::bans::BanError> {
        // The kernel answers a missing key with ENOENT: not there is not an error here.
        Ok(self.bans_mut()?.remove(key).is_ok())
    }

    fn ban_entries(
        &self,
    ) -> Result<
        Vec<(
            firewall_common::rules::BanKey,
            firewall_common::rules::BanEntry,
        )>,
        crate::dataplane::bans::BanError,
    > {
        let map = self
            .ebpf
            .map(map_names::BANS)
            .ok_or(aya::maps::MapError::InvalidName {
                name: map_names::BANS.to_owned(),
            })
            .and_then(HashMap::try_from)
            .map_err(|source| crate::dataplane::bans::BanError::Map {
                action: "open",
                source: Box::new(source),
            })?;
        crate::dataplane::bans::entries(&map)
    }

    fn remove_expired_bans(
        &mut self,
        now_ns: u64,
    ) -> Result<
        Vec<(ipnet::IpNet, firewall_common::rules::BanEntry)>,
        crate::dataplane::bans::BanError,
    > {
        crate::dataplane::bans::sweep(&mut self.bans_mut()?, now_ns)
    }

    fn stats(&self) -> Result<Snapshot, FirewallError> {
        Firewall::stats(self)
    }

    fn program_runs(&self) -> Option<crate::dataplane::stats::ProgramRuns> {
        Firewall::program_runs(self)
    }

    fn kernel_memory(&self) -> Vec<(&'static str, u64)> {
        Firewall::kernel_memory(self)
    }

    fn syn_detectors(&self, port: u16) -> Vec<firewall_common::syncookie::SynDetector> {
        Firewall::syn_detectors(self, port).unwrap_or_default()
    }

    fn event_counts(&self) -> Result<crate::dataplane::events::EventCounts, FirewallError> {
        Firewall::event_counts(self)
    }

    fn attach(
        &mut self,
        interface: &str,
        mode: XdpModeSetting,
        pin: &Path,
    ) -> Result<Attachment, FirewallError> {
        Firewall::attach(self, interface, mode, pin)
    }

    fn adopt(
        &mut self,
        interface: &str,
        from: &Path,
        to: &Path,
    ) -> Result<Attachment, FirewallError> {
        Firewall::adopt(self, interface, from, to)
    }

    fn set_interface_slot(&mut self, ifindex: u32, slot: u32) -> Result<(), FirewallError> {
        Firewall::set_interface_slot(self, ifindex, slot)
    }

    fn take_logger(&mut self) -> Option<crate::dataplane::ProgramLogger> {
        Firewall::take_logger(self)
    }

    fn take_events(&mut self) -> Option<crate::dataplane::EventRing> {
        Firewall::take_events(self)
    }
}
