//! The loaded firewall: the eBPF object, its maps filled from a policy, and its attachments.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{ProgramError, Xdp, XdpMode, links::FdLink},
};
use firewall_common::{
    Counter, KernelConfig,
    map_names::{
        self, CONFIG, RULE_MATCH, RULE_STATS, RULES, SOURCES, STATS, SUBNETS, V4_PREFIXES,
        V4_SUMMARY, V6_PREFIXES, V6_SUMMARY,
    },
    prefix::{PrefixV4Key, PrefixV6Key, V4Summary, V6Summary},
    program_names,
    rules::{ANY_PORT, ANY_PROTOCOL, RuleConfig, RuleKey},
};
use tracing::{info, warn};

use crate::{
    paths::PinLayout,
    policy::{Policy, XdpModeSetting},
    stats::{self, Snapshot},
    tables::{CapacityError, PrefixTables},
};

/// The eBPF object built by `build.rs` from the firewall-ebpf crate.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/firewall-ebpf"));

/// Why the firewall could not be loaded, filled, attached or pinned.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// The object or its maps could not be loaded (often: not root, or no CAP_BPF).
    #[error("loading the eBPF object failed (needs root or CAP_BPF + CAP_NET_ADMIN)")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program is missing from the object or could not be loaded or attached.
    #[error("program `{name}`: {action} failed")]
    Program {
        /// Program name.
        name: &'static str,
        /// What was attempted.
        action: &'static str,
        /// The error.
        #[source]
        source: Box<ProgramError>,
    },
    /// The object lacks a map the userspace expects (object and binary out of sync).
    #[error("map `{0}` is missing from the eBPF object")]
    MissingMap(&'static str),
    /// A map operation failed.
    #[error("map `{name}`: {action} failed")]
    Map {
        /// Map name.
        name: &'static str,
        /// What was attempted.
        action: &'static str,
        /// The error.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// The lists do not fit the maps.
    #[error(transparent)]
    Capacity(#[from] CapacityError),
    /// Attaching to an interface failed.
    #[error("cannot attach to interface `{interface}` in {mode} mode: {reason}")]
    Attach {
        /// Interface name.
        interface: String,
        /// Mode tried.
        mode: &'static str,
        /// A readable cause.
        reason: String,
        /// The error.
        #[source]
        source: Box<ProgramError>,
    },
    /// The kernel attached through netlink (no bpf_link), so the attachment cannot be pinned.
    #[error(
        "the XDP attachment on `{interface}` is not a bpf_link and cannot be pinned (kernel older than 5.9?)"
    )]
    NotPinnable {
        /// Interface name.
        interface: String,
    },
    /// Pinning failed.
    #[error("cannot pin {}", path.display())]
    Pin {
        /// Pin path.
        path: PathBuf,
        /// The error.
        #[source]
        source: Box<aya::pin::PinError>,
    },
    /// A pin directory could not be created.
    #[error("cannot create {}", path.display())]
    PinDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Reading the counters failed.
    #[error(transparent)]
    Stats(#[from] stats::StatsError),
}

/// An XDP attachment, pinned so that enforcement does not depend on the daemon's file
/// descriptors.
pub struct Attachment {
    /// The interface.
    pub interface: String,
    /// The mode the kernel accepted.
    pub mode: XdpMode,
    link: aya::programs::links::PinnedLink,
}

impl Attachment {
    /// Unpins the link and drops it, which detaches the program from the interface.
    pub fn detach(self) -> std::io::Result<()> {
        let link: FdLink = self.link.unpin()?;
        drop(link);
        Ok(())
    }
}

/// The loaded firewall.
pub struct Firewall {
    ebpf: Ebpf,
    config: KernelConfig,
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

impl Firewall {
    /// Loads the object with map sizes from `policy`, loads the firewall program and fills the
    /// maps. Nothing is attached yet.
    pub fn load(policy: &Policy) -> Result<Self, FirewallError> {
        let tables = PrefixTables::build(&policy.allow, &policy.block, &policy.limits)?;
        let limits = policy.limits;
        let ebpf = EbpfLoader::new()
            .map_max_entries(V4_PREFIXES, limits.max_v4_prefixes)
            .map_max_entries(V6_PREFIXES, limits.max_v6_prefixes)
            .map_max_entries(V6_SUMMARY, limits.max_v6_prefixes)
            .map_max_entries(SOURCES, limits.max_tracked_sources)
            .map_max_entries(SUBNETS, limits.max_tracked_subnets)
            .map_max_entries(map_names::CANDIDATES, limits.max_tracked_sources)
            .map_max_entries(map_names::ESCALATION, limits.max_tracked_subnets)
            .map_max_entries(map_names::BANS, limits.max_bans)
            .load(EBPF_OBJECT)
            .map_err(|err| FirewallError::Load(Box::new(err)))?;
        let mut firewall = Self {
            ebpf,
            config: KernelConfig::new(policy.malformed),
        };
        firewall.load_program(program_names::FIREWALL)?;
        firewall.fill(policy, &tables)?;
        Ok(firewall)
    }

    fn write_config(&mut self, config: KernelConfig) -> Result<(), FirewallError> {
        let mut array: Array<_, KernelConfig> =
            Array::try_from(self.map_mut(CONFIG)?).map_err(map_err(CONFIG, "open"))?;
        array.set(0, config, 0).map_err(map_err(CONFIG, "write"))?;
        self.config = config;
        Ok(())
    }

    /// Test hook: makes the program read `now_ns` as its clock (0: the real clock again), so
    /// that verdict tests can replay the reference model's virtual time.
    pub fn set_test_clock(&mut self, now_ns: u64) -> Result<(), FirewallError> {
        let mut config = self.config;
        config.test_clock_ns = now_ns;
        self.write_config(config)
    }

    /// Loads the program `name` into the kernel (the firewall, or the empty baseline).
    pub fn load_program(&mut self, name: &'static str) -> Result<&mut Xdp, FirewallError> {
        let program = self.program_mut(name)?;
        if program.fd().is_err() {
            program.load().map_err(|source| FirewallError::Program {
                name,
                action: "load",
                source: Box::new(source),
            })?;
        }
        Ok(program)
    }

    /// The program `name`, for attaching or `TestRun`.
    pub fn program_mut(&mut self, name: &'static str) -> Result<&mut Xdp, FirewallError> {
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

    /// The map `name` (one of `firewall_common::map_names`), for tests and benchmarks that
    /// inspect or preload kernel state.
    pub fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, FirewallError> {
        self.ebpf
            .map_mut(name)
            .ok_or(FirewallError::MissingMap(name))
    }

    /// Writes the configuration and the prefix tables into the (empty) maps.
    fn fill(&mut self, policy: &Policy, tables: &PrefixTables) -> Result<(), FirewallError> {
        let mut config = KernelConfig::new(policy.malformed);
        config.v6_short_mask = tables.v6_short_mask;
        if policy.dry_run {
            config.flags |= firewall_common::config::CONFIG_DRY_RUN;
        }
        for rule in policy.rules.iter().filter(|rule| rule.config.bans()) {
            config.flags |= firewall_common::config::CONFIG_BANS;
            if rule.config.escalate_after > 0 {
                let (v4, v6) = (rule.config.subnet_v4_len, rule.config.subnet_v6_len);
                if v4 < 32 {
                    config.ban_v4_lengths |= 1 << v4;
                }
                if v6 < 128 {
                    config.ban_v6_lengths[(v6 / 64) as usize] |= 1 << (v6 % 64);
                }
            }
        }
        for key in policy.rules.iter().flat_map(|rule| rule.keys()) {
            config.rule_kinds |= match (key.protocol, key.port) {
                (ANY_PROTOCOL, _) => firewall_common::config::RULES_FOR_ANY,
                (_, ANY_PORT) => firewall_common::config::RULES_BY_PROTOCOL,
                _ => firewall_common::config::RULES_BY_PORT,
            };
        }
        self.write_config(config)?;

        let mut rules: Array<_, RuleConfig> =
            Array::try_from(self.map_mut(RULES)?).map_err(map_err(RULES, "open"))?;
        for (index, rule) in policy.rules.iter().enumerate() {
            rules
                .set(index as u32, rule.config, 0)
                .map_err(map_err(RULES, "write"))?;
        }
        let mut matches: HashMap<_, RuleKey, u32> =
            HashMap::try_from(self.map_mut(RULE_MATCH)?).map_err(map_err(RULE_MATCH, "open"))?;
        for (index, rule) in policy.rules.iter().enumerate() {
            for key in rule.keys() {
                matches
                    .insert(key, index as u32, 0)
                    .map_err(map_err(RULE_MATCH, "insert"))?;
            }
        }

        let mut summary: Array<_, V4Summary> =
            Array::try_from(self.map_mut(V4_SUMMARY)?).map_err(map_err(V4_SUMMARY, "open"))?;
        for (index, entry) in &tables.v4_summary {
            summary
                .set(*index, entry, 0)
                .map_err(map_err(V4_SUMMARY, "write"))?;
        }
        let mut v4: HashMap<_, PrefixV4Key, u32> =
            HashMap::try_from(self.map_mut(V4_PREFIXES)?).map_err(map_err(V4_PREFIXES, "open"))?;
        for (key, flags) in &tables.v4_prefixes {
            v4.insert(key, flags, 0)
                .map_err(map_err(V4_PREFIXES, "insert"))?;
        }
        let mut v6: HashMap<_, PrefixV6Key, u32> =
            HashMap::try_from(self.map_mut(V6_PREFIXES)?).map_err(map_err(V6_PREFIXES, "open"))?;
        for (key, flags) in &tables.v6_prefixes {
            v6.insert(key, flags, 0)
                .map_err(map_err(V6_PREFIXES, "insert"))?;
        }
        let mut v6_summary: HashMap<_, [u8; 4], V6Summary> =
            HashMap::try_from(self.map_mut(V6_SUMMARY)?).map_err(map_err(V6_SUMMARY, "open"))?;
        for (key, entry) in &tables.v6_summary {
            v6_summary
                .insert(key, entry, 0)
                .map_err(map_err(V6_SUMMARY, "insert"))?;
        }
        info!(
            allow = policy.allow.len(),
            block = policy.block.len(),
            v4_hashed = tables.v4_prefixes.len(),
            v6_hashed = tables.v6_prefixes.len(),
            "policy loaded into maps"
        );
        Ok(())
    }

    /// Attaches the firewall to `interface`, pins the link at `pin` and returns it.
    ///
    /// `auto` tries native mode and falls back to generic (skb) mode only when the driver cannot
    /// do native XDP; an interface that already carries an XDP program is an error in any mode.
    pub fn attach(
        &mut self,
        interface: &str,
        setting: XdpModeSetting,
        pin: &Path,
    ) -> Result<Attachment, FirewallError> {
        let program = self.load_program(program_names::FIREWALL)?;
        let modes: &[XdpMode] = match setting {
            XdpModeSetting::Auto => &[XdpMode::Driver, XdpMode::Skb],
            XdpModeSetting::Native => &[XdpMode::Driver],
            XdpModeSetting::Skb => &[XdpMode::Skb],
        };
        let mut last_error = None;
        for (i, mode) in modes.iter().enumerate() {
            match program.attach(interface, *mode) {
                Ok(id) => {
                    let link = program
                        .take_link(id)
                        .map_err(|source| FirewallError::Program {
                            name: program_names::FIREWALL,
                            action: "take link",
                            source: Box::new(source),
                        })?;
                    let link = FdLink::try_from(link).map_err(|_| FirewallError::NotPinnable {
                        interface: interface.to_owned(),
                    })?;
                    let link = link.pin(pin).map_err(|source| FirewallError::Pin {
                        path: pin.to_owned(),
                        source: Box::new(source),
                    })?;
                    info!(interface, mode = mode_name(*mode), "attached");
                    return Ok(Attachment {
                        interface: interface.to_owned(),
                        mode: *mode,
                        link,
                    });
                }
                Err(source) => {
                    let reason = explain_attach_error(interface, &source);
                    let fallback = i + 1 < modes.len() && !is_busy(&source);
                    if fallback {
                        warn!(interface, %reason, "native XDP unavailable, falling back to skb mode");
                    }
                    last_error = Some(FirewallError::Attach {
                        interface: interface.to_owned(),
                        mode: mode_name(*mode),
                        reason,
                        source: Box::new(source),
                    });
                    if !fallback {
                        break;
                    }
                }
            }
        }
        Err(last_error.unwrap_or(FirewallError::MissingMap("none")))
    }

    /// Removes expired bans from the kernel map; returns them.
    pub fn sweep_bans(
        &mut self,
    ) -> Result<Vec<(ipnet::IpNet, firewall_common::rules::BanEntry)>, crate::bans::BanError> {
        let now = crate::bans::monotonic_ns()?;
        let map_err = |source| crate::bans::BanError::Map {
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
        let mut bans: HashMap<_, firewall_common::rules::BanKey, firewall_common::rules::BanEntry> =
            HashMap::try_from(map).map_err(map_err)?;
        crate::bans::sweep(&mut bans, now)
    }

    /// Pins every map under `layout`.
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

    /// The counters, summed over CPUs.
    pub fn stats(&self) -> Result<Snapshot, FirewallError> {
        let open = |name: &'static str| -> Result<PerCpuArray<&MapData, Counter>, FirewallError> {
            let map = self.ebpf.map(name).ok_or(FirewallError::MissingMap(name))?;
            PerCpuArray::try_from(map).map_err(map_err(name, "open"))
        };
        Ok(stats::snapshot(&open(STATS)?, &open(RULE_STATS)?)?)
    }
}

fn mode_name(mode: XdpMode) -> &'static str {
    match mode {
        XdpMode::Default => "default",
        XdpMode::Skb => "skb",
        XdpMode::Driver => "native",
        XdpMode::Hardware => "offload",
    }
}

fn os_error(err: &ProgramError) -> Option<i32> {
    match err {
        ProgramError::SyscallError(syscall) => syscall.io_error.raw_os_error(),
        _ => None,
    }
}

fn is_busy(err: &ProgramError) -> bool {
    matches!(os_error(err), Some(libc::EBUSY | libc::EEXIST))
        || matches!(err, ProgramError::UnknownInterface { .. })
}

fn explain_attach_error(interface: &str, err: &ProgramError) -> String {
    match (err, os_error(err)) {
        (ProgramError::UnknownInterface { .. }, _) => {
            format!("no interface `{interface}` in this network namespace")
        }
        (_, Some(libc::EBUSY | libc::EEXIST)) => format!(
            "`{interface}` already has an XDP program attached (another apifw daemon, or another \
             XDP program: see `ip link show {interface}`)"
        ),
        (_, Some(libc::EPERM | libc::EACCES)) => {
            "permission denied (needs CAP_NET_ADMIN and CAP_BPF)".into()
        }
        (_, Some(libc::EOPNOTSUPP)) => "the driver does not support this XDP mode".into(),
        _ => err.to_string(),
    }
}
