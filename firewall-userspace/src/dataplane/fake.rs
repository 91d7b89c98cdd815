//! An in-memory [`Dataplane`]: the kernel's tables as plain maps, for the engine's unit tests
//! (no root, no kernel, milliseconds). It keeps what the engine can observe of the kernel: the
//! installed policy and its generation, the ban map with its capacity, the interface slots. It
//! attaches to no interface and has no counters to read (all zero).
//!
//! The tables live behind a shared handle ([`FakeDataplane::tables`]) so that a test can look at
//! them (or make the next install fail) after handing the dataplane to an engine.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
};

use firewall_common::rules::{BanEntry, BanKey};
use ipnet::IpNet;

use super::{
    Dataplane, EventRing, ProgramLogger,
    bans::{BanError, prefix_of},
    events::EventCounts,
    firewall::{Attachment, FirewallError},
    stats::Snapshot,
};
use crate::{compile::Compiled, policy::XdpModeSetting};

/// What the fake kernel holds.
#[derive(Debug, Default)]
pub struct FakeTables {
    /// The policy in force.
    pub installed: Option<Compiled>,
    /// Successful installs so far (the generation flips with each).
    pub installs: u32,
    /// The ban map.
    pub bans: HashMap<BanKey, BanEntry>,
    /// The ban map's capacity (`limits.max_bans`).
    pub max_bans: usize,
    /// Counter slot per ifindex.
    pub interface_slots: HashMap<u32, u32>,
    /// Refuse the next install, as a kernel that cannot write a map would: to test rollback.
    pub refuse_next_install: bool,
    /// What the kernel's BPF statistics say of the program (None: it cannot say).
    pub program_runs: Option<crate::dataplane::stats::ProgramRuns>,
}

/// The in-memory dataplane.
#[derive(Clone, Debug)]
pub struct FakeDataplane {
    tables: Arc<Mutex<FakeTables>>,
    /// A copy of the installed policy, so that [`Dataplane::installed`] can lend it out.
    installed: Option<Compiled>,
}

impl FakeDataplane {
    /// An empty kernel whose ban map holds `max_bans` entries.
    pub fn new(max_bans: usize) -> Self {
        Self {
            tables: Arc::new(Mutex::new(FakeTables {
                max_bans,
                ..FakeTables::default()
            })),
            installed: None,
        }
    }

    /// The tables, for a test to look at or change.
    pub fn tables(&self) -> MutexGuard<'_, FakeTables> {
        self.tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A second handle on the same tables.
    pub fn handle(&self) -> Self {
        self.clone()
    }
}

fn refused(action: &'static str) -> FirewallError {
    FirewallError::Map {
        name: firewall_common::map_names::CONFIG,
        action,
        source: Box::new(aya::maps::MapError::KeyNotFound),
    }
}

impl Dataplane for FakeDataplane {
    fn install(&mut self, compiled: Compiled) -> Result<(), FirewallError> {
        let mut tables = self.tables();
        if std::mem::take(&mut tables.refuse_next_install) {
            return Err(refused("write"));
        }
        tables.installed = Some(compiled.clone());
        tables.installs += 1;
        drop(tables);
        self.installed = Some(compiled);
        Ok(())
    }

    fn installed(&self) -> Option<&Compiled> {
        self.installed.as_ref()
    }

    fn active_generation(&self) -> u32 {
        self.tables().installs % 2
    }

    fn adopted(&self) -> bool {
        false
    }

    fn insert_ban(&mut self, key: BanKey, ban: BanEntry) -> Result<(), BanError> {
        let mut tables = self.tables();
        if tables.bans.len() >= tables.max_bans && !tables.bans.contains_key(&key) {
            // What the kernel answers when a preallocated hash map is full.
            return Err(BanError::Map {
                action: "insert",
                source: Box::new(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_update_elem",
                    io_error: std::io::Error::from_raw_os_error(libc::E2BIG),
                })),
            });
        }
        tables.bans.insert(key, ban);
        Ok(())
    }

    fn remove_ban(&mut self, key: &BanKey) -> Result<bool, BanError> {
        Ok(self.tables().bans.remove(key).is_some())
    }

    fn ban_entries(&self) -> Result<Vec<(BanKey, BanEntry)>, BanError> {
        Ok(self
            .tables()
            .bans
            .iter()
            .map(|(key, ban)| (*key, *ban))
            .collect())
    }

    fn remove_expired_bans(&mut self, now_ns: u64) -> Result<Vec<(IpNet, BanEntry)>, BanError> {
        let mut tables = self.tables();
        let expired: Vec<BanKey> = tables
            .bans
            .iter()
            .filter(|(_, ban)| !ban.active_at(now_ns))
            .map(|(key, _)| *key)
            .collect();
        Ok(expired
            .into_iter()
            .filter_map(|key| tables.bans.remove(&key).map(|ban| (prefix_of(&key), ban)))
            .collect())
    }

    fn stats(&self) -> Result<Snapshot, FirewallError> {
        Ok(Snapshot {
            counters: Vec::new(),
            rules: Vec::new(),
            slots: Vec::new(),
        })
    }

    fn event_counts(&self) -> Result<EventCounts, FirewallError> {
        Ok(EventCounts::default())
    }

    fn program_runs(&self) -> Option<crate::dataplane::stats::ProgramRuns> {
        self.tables().program_runs
    }

    fn kernel_memory(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    fn syn_detectors(&self, _port: u16) -> Vec<firewall_common::syncookie::SynDetector> {
        Vec::new()
    }

    fn attach(
        &mut self,
        _interface: &str,
        _mode: XdpModeSetting,
        _pin: &Path,
    ) -> Result<Attachment, FirewallError> {
        Err(refused(
            "attach (the in-memory dataplane has no interfaces)",
        ))
    }

    fn adopt(
        &mut self,
        _interface: &str,
        _from: &Path,
        _to: &Path,
    ) -> Result<Attachment, FirewallError> {
        Err(refused("adopt (the in-memory dataplane has no interfaces)"))
    }

    fn set_interface_slot(&mut self, ifindex: u32, slot: u32) -> Result<(), FirewallError> {
        self.tables().interface_slots.insert(ifindex, slot);
        Ok(())
    }

    fn take_logger(&mut self) -> Option<ProgramLogger> {
        None
    }

    fn take_events(&mut self) -> Option<EventRing> {
        None
    }
}
