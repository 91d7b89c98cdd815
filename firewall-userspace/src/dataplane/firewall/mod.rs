//! The loaded firewall: the eBPF object and its maps filled from a policy (here), its errors
//! (`errors.rs`), its attachments to interfaces (`attach.rs`), and the engine's view of it, the
//! [`super::Dataplane`] trait (`seam.rs`).

mod attach;
mod errors;
mod seam;

pub use attach::Attachment;
pub use errors::FirewallError;
use errors::explain;

use std::path::PathBuf;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, ProgramArray},
    programs::{ProgramError, ProgramFd, Xdp},
};
#[cfg(feature = "test-hooks")]
use firewall_common::ablation::{self, Stage};
use firewall_common::{
    Counter, KernelConfig,
    admission::ADMISSION_SLOTS,
    generation,
    handoff::{JUMP_COOKIE, JUMP_LIMITS},
    map_names::{
        self, ACTIVE, CONFIG, RULE_MATCH, RULE_STATS, RULES, SOURCES, STATS, SUBNETS, V4_PREFIXES,
        V4_SUMMARY, V6_PREFIXES, V6_SUMMARY,
    },
    prefix::{V4_SUMMARY_ENTRIES, V4Summary, V6Summary, V6SummaryKey, v4_summary_index},
    program_names,
    rules::{MAX_RULES, RuleConfig, rule_index},
};
use tracing::debug;

use crate::{
    compile::tables::PrefixTables,
    compile::{Compiled, diff_array, diff_hash},
    dataplane::barrier::RcuBarrier,
    dataplane::batch,
    dataplane::memory,
    dataplane::stats::{self, Snapshot},
    paths::PinLayout,
    policy::Policy,
};

/// The eBPF object built by `build.rs` from the firewall-ebpf crate.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/firewall-ebpf"));

/// Whether the maps were found pinned (and reused) or created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapOrigin {
    /// Created empty (and pinned, for a pinned firewall).
    Created,
    /// Reused from the pins of a previous daemon, with their bans, counters and state.
    Adopted,
}

/// The loaded firewall.
pub struct Firewall {
    ebpf: Ebpf,
    /// The generation the program reads.
    active: u32,
    /// What each generation holds, when known (`None` after adopting maps or after a failed
    /// write: the next write of that generation rewrites it completely).
    held: [Option<Compiled>; generation::COUNT as usize],
    test_clock_ns: u64,
    barrier: RcuBarrier,
    origin: MapOrigin,
}

fn map_err(
    name: &'static str,
    action: &'static str,
) -> impl FnOnce(aya::maps::MapError) -> FirewallError {
    move |source| FirewallError::Map {
        name,
        action,
        source: Box::new(source),
    }
}

/// The capacity the policy gives the map `name`, for maps sized by `[limits]`. Maps holding
/// two policy generations get room for both.
pub fn max_entries(policy: &Policy, name: &str) -> Option<u32> {
    let limits = policy.limits;
    let twice = |n: u32| n.saturating_mul(generation::COUNT);
    Some(match name {
        V4_PREFIXES => twice(limits.max_v4_prefixes),
        V6_PREFIXES | V6_SUMMARY => twice(limits.max_v6_prefixes),
        SOURCES => limits.max_tracked_sources,
        SUBNETS | map_names::ESCALATION => limits.max_tracked_subnets,
        map_names::BANS => limits.max_bans,
        map_names::ADMISSION => admission_entries(memory::possible_cpus()),
        _ => return None,
    })
}

/// The admission array's capacity on a host with `cpus` possible CPUs: each CPU has its range
/// of [`ADMISSION_SLOTS`] (`firewall_common::admission`).
pub fn admission_entries(cpus: u32) -> u32 {
    ADMISSION_SLOTS.saturating_mul(cpus.max(1))
}

/// The loader with the policy's map sizes.
fn loader<'a>(policy: &Policy) -> EbpfLoader<'a> {
    let mut loader = EbpfLoader::new();
    for name in map_names::ALL.into_iter().chain(map_names::UNPINNED) {
        if let Some(entries) = max_entries(policy, name) {
            loader.map_max_entries(name, entries);
        }
    }
    loader
}

impl Firewall {
    /// Loads the object with map sizes from `policy` into fresh, unpinned maps, loads the
    /// firewall program and installs the policy (rules in file order). Nothing is attached.
    pub fn load(policy: &Policy) -> Result<Self, FirewallError> {
        Self::load_unexplained(policy).map_err(explain)
    }

    fn load_unexplained(policy: &Policy) -> Result<Self, FirewallError> {
        Self::load_with(policy, loader(policy))
    }

    fn load_with(policy: &Policy, mut loader: EbpfLoader<'_>) -> Result<Self, FirewallError> {
        let compiled = Compiled::build(policy, &policy.allow, &policy.block, None)?;
        let ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|err| FirewallError::Load(Box::new(err)))?;
        let mut firewall = Self::new(ebpf, MapOrigin::Created)?;
        firewall.install(compiled)?;
        Ok(firewall)
    }

    /// Test hook: [`Firewall::load`], with a program that stops after `stage` and returns
    /// `XDP_PASS` without counting (`firewall_common::ablation`), for the benchmark's ablation
    /// table and the tests that hold the stops to their place. Only with the `test-hooks`
    /// feature, which the shipped binary is built without.
    #[cfg(feature = "test-hooks")]
    pub fn load_stopping_after(policy: &Policy, stage: Stage) -> Result<Self, FirewallError> {
        let stop_after = stage as u32;
        let mut loader = loader(policy);
        loader.override_global(ablation::STOP_AFTER_GLOBAL, &stop_after, true);
        Self::load_with(policy, loader).map_err(explain)
    }

    /// Test hook: the firewall program loaded again over every map of this firewall (the
    /// unpinned ones too: same tables, state, leases and counters), stopping after `stage` as
    /// in [`Firewall::load_stopping_after`]; nothing is installed. aya shares a map between
    /// loads by pin only, so the maps are pinned in a directory of this process for the moment
    /// of loading. Only with the `test-hooks` feature.
    #[cfg(feature = "test-hooks")]
    pub fn stopping_after(&self, stage: Stage) -> Result<Self, FirewallError> {
        self.stopping_after_unexplained(stage).map_err(explain)
    }

    #[cfg(feature = "test-hooks")]
    fn stopping_after_unexplained(&self, stage: Stage) -> Result<Self, FirewallError> {
        let pins = TempPins::create()?;
        // Every map but the jump array and its hand-off slot: the stopped object fills its own
        // jump array with its own limits and cookie programs, which must not replace this
        // firewall's.
        let names = || {
            map_names::ALL
                .into_iter()
                .chain(map_names::UNPINNED)
                .filter(|name| ![map_names::JUMP, map_names::HANDOFF].contains(name))
        };
        let mut paths = Vec::new();
        for name in names() {
            let path = pins.0.join(name);
            self.map(name)?
                .pin(&path)
                .map_err(|source| FirewallError::Pin {
                    path: path.clone(),
                    source: Box::new(source),
                })?;
            paths.push((name, path));
        }
        let stop_after = stage as u32;
        let mut loader = EbpfLoader::new();
        loader.override_global(ablation::STOP_AFTER_GLOBAL, &stop_after, true);
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|err| FirewallError::Load(Box::new(err)))?;
        drop(pins);
        let stopped = Self::new(ebpf, MapOrigin::Adopted)?;
        // aya creates a map where a pin path holds none: make sure each is this firewall's,
        // or the stopped program would silently read empty tables.
        for name in names() {
            if map_id(stopped.map(name)?, name)? != map_id(self.map(name)?, name)? {
                return Err(FirewallError::NotShared(name));
            }
        }
        Ok(stopped)
    }

    /// Loads the object with every map pinned under `layout`: maps already pinned there (by a
    /// previous daemon of the same layout, see [`crate::dataplane::pins::inspect`]) are reused with
    /// their content, missing ones are created and pinned. Nothing is installed or attached.
    pub fn load_pinned(policy: &Policy, layout: &PinLayout) -> Result<Self, FirewallError> {
        Self::load_pinned_unexplained(policy, layout).map_err(explain)
    }

    fn load_pinned_unexplained(policy: &Policy, layout: &PinLayout) -> Result<Self, FirewallError> {
        let maps_dir = layout.maps_dir();
        std::fs::create_dir_all(&maps_dir).map_err(|source| FirewallError::PinDir {
            path: maps_dir.clone(),
            source,
        })?;
        let adopted = map_names::ALL.iter().all(|name| layout.map(name).exists());
        let paths: Vec<(&'static str, PathBuf)> = map_names::ALL
            .iter()
            .map(|name| (*name, layout.map(name)))
            .collect();
        let mut loader = loader(policy);
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|err| FirewallError::Load(Box::new(err)))?;
        let origin = if adopted {
            MapOrigin::Adopted
        } else {
            MapOrigin::Created
        };
        Self::new(ebpf, origin)
    }

    fn new(ebpf: Ebpf, origin: MapOrigin) -> Result<Self, FirewallError> {
        let mut firewall = Self {
            ebpf,
            active: 0,
            held: match origin {
                MapOrigin::Created => [Some(Compiled::default()), Some(Compiled::default())],
                MapOrigin::Adopted => [None, None],
            },
            test_clock_ns: 0,
            barrier: RcuBarrier::new()?,
            origin,
        };
        firewall.active = firewall.read_active()?;
        firewall.load_program(program_names::FIREWALL)?;
        firewall.install_programs()?;
        Ok(firewall)
    }

    /// Loads the programs the firewall program tail-calls (the limits and the SYN cookie
    /// programs, `firewall_common::handoff`) and puts them in its jump array, which is pinned
    /// with the other maps: an attached program that outlives the daemon still reaches them.
    fn install_programs(&mut self) -> Result<(), FirewallError> {
        let limits = self.program_fd(program_names::LIMITS)?;
        let cookie = self.program_fd(program_names::SYN_COOKIE)?;
        let jump = map_names::JUMP;
        let mut array = ProgramArray::try_from(self.kernel_map_mut(jump)?).map_err(|source| {
            FirewallError::Map {
                name: jump,
                action: "open",
                source: Box::new(source),
            }
        })?;
        for (slot, fd) in [(JUMP_LIMITS, &limits), (JUMP_COOKIE, &cookie)] {
            array
                .set(slot, fd, 0)
                .map_err(|source| FirewallError::Map {
                    name: jump,
                    action: "fill",
                    source: Box::new(source),
                })?;
        }
        Ok(())
    }

    /// The program `name`, loaded: a descriptor of it.
    fn program_fd(&mut self, name: &'static str) -> Result<ProgramFd, FirewallError> {
        self.load_program(name)?
            .fd()
            .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
            .map_err(|source| FirewallError::Program {
                name,
                action: "get the descriptor of",
                source: Box::new(source),
            })
    }

    /// Whether the maps were created or adopted.
    pub fn origin(&self) -> MapOrigin {
        self.origin
    }

    /// The generation the program currently reads.
    pub fn active_generation(&self) -> u32 {
        self.active
    }

    fn read_active(&mut self) -> Result<u32, FirewallError> {
        let array: Array<_, u32> =
            Array::try_from(self.kernel_map_mut(ACTIVE)?).map_err(map_err(ACTIVE, "open"))?;
        Ok(array.get(&0, 0).map_err(map_err(ACTIVE, "read"))? % generation::COUNT)
    }

    /// Installs `compiled` atomically: writes it into the inactive generation (only what
    /// differs from what that generation holds), makes that generation active, and waits until
    /// no packet can still be using the old one, which then stays as it is until it is the target
    /// of the next install. A failure before the flip leaves the running policy untouched.
    pub fn install(&mut self, compiled: Compiled) -> Result<(), FirewallError> {
        let next = generation::other(self.active);
        let index = next as usize % self.held.len();
        let held = self.held[index].take();
        self.write_generation(next, held.as_ref(), &compiled)?;
        let mut active: Array<_, u32> =
            Array::try_from(self.kernel_map_mut(ACTIVE)?).map_err(map_err(ACTIVE, "open"))?;
        active.set(0, next, 0).map_err(map_err(ACTIVE, "write"))?;
        self.active = next;
        self.held[index] = Some(compiled);
        // The next install writes the generation that was active until now: no packet may
        // still be reading it by then.
        self.barrier.wait()?;
        Ok(())
    }

    /// The compiled policy the active generation holds, when known.
    pub fn installed(&self) -> Option<&Compiled> {
        self.held[self.active as usize % self.held.len()].as_ref()
    }

    /// Makes generation `generation` hold `new`, given that it holds `old` (`None`: unknown,
    /// so everything of that generation is rewritten).
    fn write_generation(
        &mut self,
        generation: u32,
        old: Option<&Compiled>,
        new: &Compiled,
    ) -> Result<(), FirewallError> {
        let mut config = new.config;
        config.generation = generation;
        config.test_clock_ns = self.test_clock_ns;
        let mut configs: Array<_, KernelConfig> =
            Array::try_from(self.kernel_map_mut(CONFIG)?).map_err(map_err(CONFIG, "open"))?;
        configs
            .set(generation, config, 0)
            .map_err(map_err(CONFIG, "write"))?;

        let mut rules: Array<_, RuleConfig> =
            Array::try_from(self.kernel_map_mut(RULES)?).map_err(map_err(RULES, "open"))?;
        for slot in 0..MAX_RULES {
            let value = new.rules.get(&slot).copied().unwrap_or_default();
            let before = old.map(|old| old.rules.get(&slot).copied().unwrap_or_default());
            if before != Some(value) {
                rules
                    .set(rule_index(generation, slot), value, 0)
                    .map_err(map_err(RULES, "write"))?;
            }
        }

        let summary_changes: Vec<(u32, V4Summary)> = match old {
            Some(old) => diff_array(&old.tables.v4_summary, &new.tables.v4_summary),
            None => (0..V4_SUMMARY_ENTRIES)
                .map(|top| {
                    (
                        top,
                        new.tables.v4_summary.get(&top).copied().unwrap_or_default(),
                    )
                })
                .collect(),
        };
        // One batch, not a syscall per /16: a large list changes most of the 65,536 entries,
        // and one `bpf()` each cost a tenth of a second of a million-prefix import.
        let (indexes, values): (Vec<u32>, Vec<V4Summary>) = summary_changes
            .into_iter()
            .map(|(top, value)| (v4_summary_index(generation, top), value))
            .unzip();
        let summary = self.kernel_map_mut(V4_SUMMARY)?;
        let data = map_data(&*summary).ok_or(FirewallError::MissingMap(V4_SUMMARY))?;
        batch::update(data, &indexes, &values).map_err(|source| FirewallError::Batch {
            name: V4_SUMMARY,
            source,
        })?;

        self.write_hash(
            RULE_MATCH,
            generation,
            old.map(|old| &old.matches),
            &new.matches,
            |key, generation| key.in_generation(generation),
            |key| u32::from(key.generation),
        )?;
        self.write_hash(
            V4_PREFIXES,
            generation,
            old.map(|old| &old.tables.v4_prefixes),
            &new.tables.v4_prefixes,
            |key, generation| key.in_generation(generation),
            |key| u32::from(key.generation),
        )?;
        self.write_hash(
            V6_PREFIXES,
            generation,
            old.map(|old| &old.tables.v6_prefixes),
            &new.tables.v6_prefixes,
            |key, generation| key.in_generation(generation),
            |key| u32::from(key.generation),
        )?;
        let summaries =
            |tables: &PrefixTables| -> std::collections::HashMap<V6SummaryKey, V6Summary> {
                tables
                    .v6_summary
                    .iter()
                    .map(|(top, value)| {
                        (
                            V6SummaryKey {
                                generation: 0,
                                top: *top,
                            },
                            *value,
                        )
                    })
                    .collect()
            };
        self.write_hash(
            V6_SUMMARY,
            generation,
            old.map(|old| summaries(&old.tables)).as_ref(),
            &summaries(&new.tables),
            |mut key, generation| {
                key.generation = generation;
                key
            },
            |key| key.generation,
        )?;
        debug!(
            generation,
            full = old.is_none(),
            v4_hashed = new.tables.v4_prefixes.len(),
            v6_hashed = new.tables.v6_prefixes.len(),
            "policy generation written"
        );
        Ok(())
    }

    /// Makes the generation-`generation` entries of the hash `name` equal `new` (keys stored
    /// generation-less in userspace), given they equal `old` (`None`: unknown, so every entry of
    /// that generation is deleted first).
    fn write_hash<K, V, S>(
        &mut self,
        name: &'static str,
        generation: u32,
        old: Option<&std::collections::HashMap<K, V, S>>,
        new: &std::collections::HashMap<K, V, S>,
        with_generation: impl Fn(K, u32) -> K,
        generation_of: impl Fn(&K) -> u32,
    ) -> Result<(), FirewallError>
    where
        K: aya::Pod + Eq + std::hash::Hash + Sync,
        V: aya::Pod + PartialEq + Sync,
        S: std::hash::BuildHasher,
    {
        let map = self.kernel_map_mut(name)?;
        let (upserts, deletes) = match old {
            Some(old) => {
                let diff = diff_hash(old, new);
                let deletes: Vec<K> = diff
                    .deletes
                    .into_iter()
                    .map(|key| with_generation(key, generation))
                    .collect();
                (diff.upserts, deletes)
            }
            None => {
                let hash: HashMap<&MapData, K, V> =
                    HashMap::try_from(&*map).map_err(map_err(name, "open"))?;
                let mut stale = Vec::new();
                for key in hash.keys() {
                    let key = key.map_err(map_err(name, "iterate"))?;
                    if generation_of(&key) == generation {
                        stale.push(key);
                    }
                }
                (new.iter().map(|(k, v)| (*k, *v)).collect(), stale)
            }
        };
        let data = map_data(&*map).ok_or(FirewallError::MissingMap(name))?;
        let batch_err = |source| FirewallError::Batch { name, source };
        batch::delete(data, &deletes).map_err(batch_err)?;
        let (keys, values): (Vec<K>, Vec<V>) = upserts
            .into_iter()
            .map(|(key, value)| (with_generation(key, generation), value))
            .unzip();
        // A million-prefix list is mostly the kernel's inserts: spread them over the CPUs.
        batch::update_parallel(data, &keys, &values).map_err(batch_err)?;
        Ok(())
    }

    /// Test hook: makes the program read `now_ns` as its clock (0: the real clock again), so
    /// that verdict tests can replay the reference model's virtual time. Only with the
    /// `test-hooks` feature, which the shipped binary is built without.
    #[cfg(feature = "test-hooks")]
    pub fn set_test_clock(&mut self, now_ns: u64) -> Result<(), FirewallError> {
        self.test_clock_ns = now_ns;
        let active = self.active;
        let mut configs: Array<_, KernelConfig> =
            Array::try_from(self.kernel_map_mut(CONFIG)?).map_err(map_err(CONFIG, "open"))?;
        let mut config = configs.get(&active, 0).map_err(map_err(CONFIG, "read"))?;
        config.test_clock_ns = now_ns;
        configs
            .set(active, config, 0)
            .map_err(map_err(CONFIG, "write"))
    }

    /// Loads the program `name` into the kernel (once).
    fn load_program(&mut self, name: &'static str) -> Result<&mut Xdp, FirewallError> {
        let program = self.xdp_program(name)?;
        if program.fd().is_err() {
            program.load().map_err(|source| FirewallError::Program {
                name,
                action: "load",
                source: Box::new(source),
            })?;
        }
        Ok(program)
    }

    /// Test hook: the loaded program `name` (the firewall), for `BPF_PROG_TEST_RUN` and for
    /// the test programs that tail-call it. Only with the `test-hooks` feature.
    #[cfg(feature = "test-hooks")]
    pub fn program_mut(&mut self, name: &'static str) -> Result<&mut Xdp, FirewallError> {
        self.load_program(name)
    }

    /// The program `name` of the object, loaded or not.
    fn xdp_program(&mut self, name: &'static str) -> Result<&mut Xdp, FirewallError> {
        let missing = |source| FirewallError::Program {
            name,
            action: "lookup",
            source: Box::new(source),
        };
        self.ebpf
            .program_mut(name)
            .ok_or(missing(ProgramError::NotLoaded))?
            .try_into()
            .map_err(missing)
    }

    /// Test hook: the map `name` (one of `firewall_common::map_names`), writable, for tests and
    /// benchmarks that preload or inspect kernel state. Only with the `test-hooks` feature.
    #[cfg(feature = "test-hooks")]
    pub fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, FirewallError> {
        self.kernel_map_mut(name)
    }

    /// The map `name`, writable: for the firewall's own writes.
    fn kernel_map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, FirewallError> {
        self.ebpf
            .map_mut(name)
            .ok_or(FirewallError::MissingMap(name))
    }

    /// The kernel's run statistics of the firewall program (see
    /// [`crate::dataplane::stats::ProgramRuns`]); None when the program cannot be read.
    pub fn program_runs(&self) -> Option<stats::ProgramRuns> {
        let program: &Xdp = self
            .ebpf
            .program(program_names::FIREWALL)?
            .try_into()
            .ok()?;
        let info = program.info().ok()?;
        Some(stats::ProgramRuns {
            runs: info.run_count(),
            run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
            stats_enabled: stats::bpf_stats_enabled(),
        })
    }

    /// The kernel's account of each map of the object (pinned ones, then the others), in
    /// bytes; maps it cannot read are left out.
    pub fn kernel_memory(&self) -> Vec<(&'static str, u64)> {
        use std::os::fd::AsFd as _;
        map_names::ALL
            .into_iter()
            .chain(map_names::UNPINNED)
            .filter_map(|name| {
                let data = map_data(self.ebpf.map(name)?)?;
                memory::memlock(name, data.fd().as_fd())
                    .map(|bytes| (name, bytes))
                    .ok()
            })
            .collect()
    }

    /// Each CPU's SYN detector of `port` (`firewall_common::syncookie`).
    pub fn syn_detectors(
        &self,
        port: u16,
    ) -> Result<Vec<firewall_common::syncookie::SynDetector>, FirewallError> {
        let name = map_names::SYN_DETECTOR;
        let map = |source| FirewallError::Map {
            name,
            action: "read",
            source: Box::new(source),
        };
        let array: PerCpuArray<&MapData, firewall_common::syncookie::SynDetector> =
            PerCpuArray::try_from(self.map(name)?).map_err(map)?;
        let values = array
            .get(&firewall_common::syncookie::detector_slot(port), 0)
            .map_err(map)?;
        Ok(values.iter().copied().collect())
    }

    /// The map `name`, read-only.
    pub fn map(&self, name: &'static str) -> Result<&aya::maps::Map, FirewallError> {
        self.ebpf.map(name).ok_or(FirewallError::MissingMap(name))
    }

    /// The kernel's ban map.
    pub fn bans_mut(
        &mut self,
    ) -> Result<
        HashMap<&mut MapData, firewall_common::rules::BanKey, firewall_common::rules::BanEntry>,
        crate::dataplane::bans::BanError,
    > {
        let map_err = |source| crate::dataplane::bans::BanError::Map {
            action: "open",
            source: Box::new(source),
        };
        let map = self
            .ebpf
            .map_mut(map_names::BANS)
            .ok_or(aya::maps::MapError::InvalidName {
                name: map_names::BANS.to_owned(),
            })
            .map_err(map_err)?;
        HashMap::try_from(map).map_err(map_err)
    }

    /// Pins every map under `layout` (for a firewall from [`Firewall::load`]).
    pub fn pin_maps(&self, layout: &PinLayout) -> Result<(), FirewallError> {
        for dir in [layout.maps_dir(), layout.links_dir()] {
            std::fs::create_dir_all(&dir).map_err(|source| FirewallError::PinDir {
                path: dir.clone(),
                source,
            })?;
        }
        for name in map_names::ALL {
            let map = self.ebpf.map(name).ok_or(FirewallError::MissingMap(name))?;
            let path = layout.map(name);
            map.pin(&path).map_err(|source| FirewallError::Pin {
                path,
                source: Box::new(source),
            })?;
        }
        Ok(())
    }

    /// Counts packets arriving on `ifindex` in counter slot `slot` (1.. for protected
    /// interfaces). Interfaces with an ifindex beyond the map count in slot 0.
    pub fn set_interface_slot(&mut self, ifindex: u32, slot: u32) -> Result<(), FirewallError> {
        let mut slots: Array<_, u32> = Array::try_from(self.kernel_map_mut(map_names::IFACES)?)
            .map_err(map_err(map_names::IFACES, "open"))?;
        if ifindex < slots.len() {
            slots
                .set(ifindex, slot, 0)
                .map_err(map_err(map_names::IFACES, "write"))?;
        }
        Ok(())
    }

    /// The drop-event counters (emitted, suppressed, lost), summed over CPUs.
    pub fn event_counts(&self) -> Result<crate::dataplane::events::EventCounts, FirewallError> {
        use firewall_common::events::{EVENTS_EMITTED, EVENTS_LOST, EVENTS_SUPPRESSED};
        let name = map_names::EVENT_STATS;
        let map = self.ebpf.map(name).ok_or(FirewallError::MissingMap(name))?;
        let counts: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(map_err(name, "open"))?;
        let sum = |index: u32| -> Result<u64, FirewallError> {
            Ok(counts
                .get(&index, 0)
                .map_err(map_err(name, "read"))?
                .iter()
                .copied()
                .fold(0u64, u64::wrapping_add))
        };
        Ok(crate::dataplane::events::EventCounts {
            emitted: sum(EVENTS_EMITTED)?,
            suppressed: sum(EVENTS_SUPPRESSED)?,
            lost: sum(EVENTS_LOST)?,
        })
    }

    /// Takes the program's aya-log ring buffer, for a task that forwards its records to the
    /// `log` facade (and so to tracing). The program only logs when the policy enables it.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).ok()
    }

    /// Takes the drop-event ring buffer out of the firewall, for a reader task.
    pub fn take_events(&mut self) -> Option<aya::maps::RingBuf<MapData>> {
        self.ebpf
            .take_map(map_names::EVENTS)
            .and_then(|map| aya::maps::RingBuf::try_from(map).ok())
    }

    /// The counters, summed over CPUs.
    pub fn stats(&self) -> Result<Snapshot, FirewallError> {
        let open = |name: &'static str| -> Result<PerCpuArray<&MapData, Counter>, FirewallError> {
            let map = self.ebpf.map(name).ok_or(FirewallError::MissingMap(name))?;
            PerCpuArray::try_from(map).map_err(map_err(name, "open"))
        };
        Ok(stats::snapshot(&open(STATS)?, &open(RULE_STATS)?)?)
    }
}

/// A directory of pins under /sys/fs/bpf for the moment of a load (test hooks only), removed
/// when dropped: the loaded object holds the maps by file descriptor from then on.
#[cfg(feature = "test-hooks")]
struct TempPins(PathBuf);

#[cfg(feature = "test-hooks")]
impl TempPins {
    fn create() -> Result<Self, FirewallError> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let path = PathBuf::from(format!(
            "/sys/fs/bpf/apifw-stopped-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir(&path).map_err(|source| FirewallError::PinDir {
            path: path.clone(),
            source,
        })?;
        Ok(Self(path))
    }
}

#[cfg(feature = "test-hooks")]
impl Drop for TempPins {
    fn drop(&mut self) {
        // Best effort: a pin left behind only keeps a test's maps alive until it is removed.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The kernel's id of the map `name`, which tells two handles of one map from two maps.
#[cfg(feature = "test-hooks")]
fn map_id(map: &aya::maps::Map, name: &'static str) -> Result<u32, FirewallError> {
    let data = map_data(map).ok_or(FirewallError::MissingMap(name))?;
    Ok(data.info().map_err(map_err(name, "read info"))?.id())
}

/// The map data behind any kind of map this program has.
fn map_data(map: &aya::maps::Map) -> Option<&MapData> {
    use aya::maps::Map;
    match map {
        Map::Array(data)
        | Map::HashMap(data)
        | Map::LruHashMap(data)
        | Map::PerCpuArray(data)
        | Map::PerCpuHashMap(data)
        | Map::ProgramArray(data)
        | Map::RingBuf(data) => Some(data),
        _ => None,
    }
}
