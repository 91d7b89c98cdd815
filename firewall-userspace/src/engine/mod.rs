//! The daemon's state and every change to it: runtime list entries, manual bans, imports,
//! reloads and expiry. Each change is validated and compiled first, persisted second and
//! installed in the kernel atomically last, so a change that fails at any step leaves the
//! enforced policy, the state file and the daemon's memory as they were.
//!
//! One file per seam: [`lists`] (runtime block/allow entries), [`manual_bans`], [`reload`],
//! [`tick`] (the one-second housekeeping), [`jail_requests`] (bans jails and reports ask for),
//! [`crowdsec`] (a LAPI's decisions as bans), [`crowdsec_push`] (this host's bans to push),
//! [`attachments`] (interfaces and their links), [`views`] (what the control API and metrics
//! read); [`inputs`] parses what the engine is given, [`error`] is how a request fails.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use firewall_common::{
    config::CONFIG_BANS,
    rules::{BAN_HOST, BAN_SUBNET, BanEntry, BanKey},
};
use ipnet::IpNet;
use serde_json::json;
use tracing::{debug, error, info, warn};

mod attachments;
pub mod clock;
mod crowdsec;
mod crowdsec_push;
mod error;
mod inputs;
mod jail_requests;
mod lists;
mod manual_bans;
mod reload;
pub mod shared;
#[cfg(test)]
pub mod testing;
mod tick;
mod views;

pub use attachments::CounterSlots;
pub use clock::{Clock, SystemClock};
pub use crowdsec::CrowdsecSync;
pub use crowdsec_push::{PUSH_QUEUE_CAPACITY, PushBatch};
pub use error::EngineError;
use inputs::is_host;
pub use inputs::{EntryMeta, Feeds, LoadedFeed, Overrides, ban_key, parse_targets, read_feeds};
pub use shared::{CrowdsecMetrics, CrowdsecPushMetrics, Shared};

use crate::{
    compile::{Compiled, assign_slots},
    control::{
        Changed, CookieStatus, InterfaceStatus, JailView, ListRow, MapFill, MapMemory,
        ReportOutcome, Status,
    },
    dataplane::bans::{self, MANUAL_BAN_RULE},
    dataplane::top::TopTracker,
    dataplane::{Dataplane, EventRing, ProgramLogger, firewall::Attachment},
    errors::chain,
    jails::{self, BanRequest, Jails, JailsState, tracker::Outcome},
    policy::feeds,
    policy::{Feed, Loaded, OnBadLine, Policy, XdpModeSetting},
    store::audit::{AuditLog, AuditRecord},
    store::state::{BanRecord, ImportRecord, ListEntry, ListKind, RuntimeState},
};

/// The running daemon.
pub struct Engine {
    policy_path: PathBuf,
    overrides: Overrides,
    /// The policy in force.
    policy: Policy,
    feeds: Feeds,
    runtime: RuntimeState,
    state_path: PathBuf,
    /// The kernel's tables (the loaded firewall, or an in-memory fake in unit tests).
    dataplane: Box<dyn Dataplane>,
    /// Where the engine reads the time.
    clock: Arc<dyn Clock>,
    /// Interfaces the firewall is attached to.
    attachments: Vec<Attachment>,
    slots: HashMap<String, u32>,
    audit: AuditLog,
    policy_version: u64,
    reloads: u64,
    failed_reloads: u64,
    last_reload_error: Option<String>,
    started: Instant,
    known_bans: HashSet<BanKey>,
    /// Each cookie port's SYN cookie mode at the last tick (on: at least one CPU), to log and
    /// audit its switches.
    cookie_modes: HashMap<(String, u16), bool>,
    /// The earliest expiry in `runtime` (unix seconds).
    next_expiry: Option<u64>,
    /// What the metrics endpoint exports.
    shared: Arc<Mutex<Shared>>,
    /// Offenders seen in drop events.
    top: Arc<Mutex<TopTracker>>,
    /// The policy's access-log jails.
    jails: Jails,
    /// Where the jails' positions and histories are kept.
    jails_path: PathBuf,
    /// Bans mirrored from a CrowdSec LAPI.
    crowdsec: crowdsec::CrowdsecBans,
    /// This host's bans waiting to be pushed to the LAPI.
    push: crowdsec_push::PushQueue,
}

/// What [`Engine::new`] needs.
pub struct EngineParts {
    /// The policy file.
    pub policy_path: PathBuf,
    /// CLI overrides.
    pub overrides: Overrides,
    /// The policy (overrides applied).
    pub policy: Policy,
    /// Its feeds.
    pub feeds: Feeds,
    /// The runtime state.
    pub runtime: RuntimeState,
    /// Where it is persisted.
    pub state_path: PathBuf,
    /// The loaded (not yet filled) firewall, or an in-memory fake.
    pub dataplane: Box<dyn Dataplane>,
    /// The clock (the system's, or a test's).
    pub clock: Arc<dyn Clock>,
    /// The audit log.
    pub audit: AuditLog,
    /// Offenders `apifw top` lists.
    pub policy_top: usize,
}

impl Engine {
    /// Installs the policy, feeds and runtime state into `parts.firewall` and restores manual
    /// bans. Nothing is attached yet.
    pub fn new(parts: EngineParts) -> Result<Self, EngineError> {
        let jails_path = jails::state_path(&parts.state_path);
        // A jail state that cannot be read costs positions and histories, never enforcement:
        // the jails start over (logs from their end) and say so.
        let saved = JailsState::load(&jails_path).unwrap_or_else(|err| {
            warn!(err = %chain(&err), "jails start over: logs are read from their end");
            JailsState::default()
        });
        let jails = Jails::new(&parts.policy.jails, &saved);
        let mut engine = Self {
            policy_path: parts.policy_path,
            overrides: parts.overrides,
            policy: parts.policy,
            feeds: parts.feeds,
            runtime: parts.runtime,
            state_path: parts.state_path,
            dataplane: parts.dataplane,
            clock: parts.clock,
            attachments: Vec::new(),
            slots: HashMap::new(),
            audit: parts.audit,
            policy_version: 0,
            reloads: 0,
            failed_reloads: 0,
            last_reload_error: None,
            started: Instant::now(),
            known_bans: HashSet::new(),
            cookie_modes: HashMap::new(),
            next_expiry: None,
            shared: Arc::new(Mutex::new(Shared::default())),
            top: Arc::new(Mutex::new(TopTracker::new(parts.policy_top))),
            jails,
            jails_path,
            crowdsec: crowdsec::CrowdsecBans::default(),
            push: crowdsec_push::PushQueue::default(),
        };
        // Before the first install: CrowdSec bans a previous daemon left in the pinned ban map
        // keep the ban check on.
        engine.adopt_crowdsec_bans();
        engine.next_expiry = engine.runtime.next_expiry();
        let (compiled, slots) = engine.compile(&engine.policy, &engine.feeds, &engine.runtime)?;
        engine
            .dataplane
            .install(compiled)
            .map_err(|err| EngineError::internal(chain(&err)))?;
        engine.commit_slots(&slots);
        engine.policy_version = 1;
        engine.publish();
        engine.publish_jails();
        engine.publish_crowdsec();
        let records: Vec<BanRecord> = engine.runtime.bans().cloned().collect();
        engine.write_bans(&records)?;
        engine.known_bans = engine.kernel_ban_keys().unwrap_or_default();
        let adopted = engine.dataplane.adopted();
        engine.record(
            "startup",
            "start",
            json!({
                "policy": engine.policy_path,
                "adopted_pinned_maps": adopted,
                "block_entries": engine.block_count(),
                "allow_entries": engine.allow_count(),
            }),
        );
        Ok(engine)
    }

    /// Refreshes what the metrics endpoint exports of the kernel's moving state: the program's
    /// run statistics and the SYN cookie mode of each port; a port whose mode switched since
    /// the last tick is logged and audited (`syncookie.on`, `syncookie.off`).
    pub(super) fn publish_program_runs(&mut self) {
        let runs = self.dataplane.program_runs();
        let syn_cookies = views::syn_cookies(self.dataplane.as_ref(), &self.policy);
        for cookies in &syn_cookies {
            let Some(port) = cookies.port else {
                continue;
            };
            let on = cookies.on();
            let was = self
                .cookie_modes
                .insert((cookies.rule.clone(), port), on)
                .unwrap_or(false);
            if on == was || cookies.setting == "always" {
                continue;
            }
            let details = json!({"rule": cookies.rule, "port": port});
            if on {
                warn!(
                    rule = cookies.rule,
                    port,
                    cpus = cookies.cpus_in_cookie_mode,
                    "SYN flood: answering SYNs with cookies in XDP"
                );
                self.record("daemon", "syncookie.on", details);
            } else {
                info!(rule = cookies.rule, port, "SYN flood over: cookies off");
                self.record("daemon", "syncookie.off", details);
            }
        }
        let mut shared = match self.shared.lock() {
            Ok(shared) => shared,
            Err(poisoned) => poisoned.into_inner(),
        };
        shared.program = runs;
        shared.syn_cookies = syn_cookies;
    }

    /// Publishes what the metrics endpoint exports.
    pub fn publish(&self) {
        let mut shared = match self.shared.lock() {
            Ok(shared) => shared,
            Err(poisoned) => poisoned.into_inner(),
        };
        shared.rules = self
            .slots
            .iter()
            .map(|(name, slot)| (*slot, name.clone()))
            .collect();
        shared.lists = vec![
            ("block", self.block_count() as u64),
            ("allow", self.allow_count() as u64),
        ];
        let limits = self.policy.limits;
        shared.fill = match self.dataplane.installed() {
            Some(installed) => vec![
                (
                    firewall_common::map_names::V4_PREFIXES,
                    installed.tables.v4_prefixes.len() as u64,
                    u64::from(limits.max_v4_prefixes),
                ),
                (
                    firewall_common::map_names::V6_PREFIXES,
                    installed.tables.v6_prefixes.len() as u64,
                    u64::from(limits.max_v6_prefixes),
                ),
            ],
            None => Vec::new(),
        };
        shared.capacity = [
            (
                firewall_common::map_names::SOURCES,
                u64::from(limits.max_tracked_sources),
            ),
            (
                firewall_common::map_names::SUBNETS,
                u64::from(limits.max_tracked_subnets),
            ),
            (firewall_common::map_names::BANS, u64::from(limits.max_bans)),
            (
                firewall_common::map_names::ESCALATION,
                u64::from(limits.max_tracked_subnets),
            ),
        ]
        .into();
        shared.policy_version = self.policy_version;
        shared.program = self.dataplane.program_runs();
        shared.memory = views::map_memory(self.dataplane.as_ref(), &self.policy);
        shared.syn_cookies = views::syn_cookies(self.dataplane.as_ref(), &self.policy);
        shared.reloads = self.reloads;
        shared.reload_failures = self.failed_reloads;
    }

    fn commit_slots(&mut self, slots: &[u32]) {
        self.slots = self
            .policy
            .rules
            .iter()
            .zip(slots)
            .map(|(rule, slot)| (rule.name.clone(), *slot))
            .collect();
    }

    /// Appends to the audit log; a failing log is reported but does not undo the change.
    fn record(&mut self, actor: &str, action: &str, object: serde_json::Value) {
        let record = AuditRecord::now(actor, action, object);
        if let Err(err) = self.audit.append(&record) {
            error!(err = %chain(&err), "cannot write the audit log");
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The XDP program's log records (aya-log), once: the daemon forwards them to its log.
    pub fn take_logger(&mut self) -> Option<ProgramLogger> {
        self.dataplane.take_logger()
    }

    /// The ring buffer of drop events, once: the daemon reads it into [`Engine::top_tracker`].
    pub fn take_events(&mut self) -> Option<EventRing> {
        self.dataplane.take_events()
    }

    /// What the metrics endpoint exports, kept current by the engine.
    pub fn shared(&self) -> Arc<Mutex<Shared>> {
        Arc::clone(&self.shared)
    }

    /// The offenders seen in drop events, which the events reader feeds.
    pub fn top_tracker(&self) -> Arc<Mutex<TopTracker>> {
        Arc::clone(&self.top)
    }

    /// The policy file.
    pub fn policy_path(&self) -> &Path {
        &self.policy_path
    }
}

#[cfg(test)]
mod tests;
