//! The daemon's state and every change to it: runtime list entries, manual bans, imports,
//! reloads and expiry. Each change is validated and compiled first, persisted second and
//! installed in the kernel atomically last, so a change that fails at any step leaves the
//! enforced policy, the state file and the daemon's memory as they were.
//!
//! This file is over 600 lines: the engine is still one object. Splitting it along its seams
//! (lists, bans, reload, the tick, jails, views) behind a dataplane trait is the next stage of
//! issue #14.

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

pub mod shared;

pub use shared::Shared;

use crate::{
    compile::{Compiled, assign_slots},
    control::{Changed, InterfaceStatus, JailView, ListRow, MapFill, ReportOutcome, Status},
    dataplane::bans::{self, MANUAL_BAN_RULE},
    dataplane::firewall::{Attachment, Firewall, MapOrigin},
    dataplane::top::TopTracker,
    errors::chain,
    jails::{self, BanRequest, Jails, JailsState, tracker::Outcome},
    policy::feeds,
    policy::{Feed, Loaded, OnBadLine, Policy, XdpModeSetting},
    store::audit::{AuditLog, AuditRecord},
    store::state::{BanRecord, ImportRecord, ListEntry, ListKind, RuntimeState, unix_now},
};

/// A refused or failed control request: an HTTP status and a message for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    /// What went wrong.
    pub message: String,
}

impl ApiError {
    /// Bad input (400).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
        }
    }

    /// The kernel or the disk failed (500).
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: 500,
            message: message.into(),
        }
    }
}

/// Command-line settings that take precedence over the policy file, on start and on reload.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// Interfaces instead of the policy's.
    pub interfaces: Vec<String>,
    /// Attach mode instead of the policy's.
    pub xdp_mode: Option<XdpModeSetting>,
    /// Pin root.
    pub pin_dir: Option<PathBuf>,
    /// Run directory.
    pub run_dir: Option<PathBuf>,
    /// Kernel-side debug logging.
    pub ebpf_log: Option<crate::policy::EbpfLog>,
}

impl Overrides {
    /// Applies these settings to `policy`.
    pub fn apply(&self, policy: &mut Policy) {
        if !self.interfaces.is_empty() {
            policy.interfaces = self.interfaces.clone();
        }
        if let Some(mode) = self.xdp_mode {
            policy.xdp_mode = mode;
        }
        if let Some(dir) = &self.pin_dir {
            policy.daemon.pin_dir = dir.clone();
        }
        if let Some(dir) = &self.run_dir {
            policy.daemon.run_dir = dir.clone();
        }
        if let Some(level) = self.ebpf_log {
            policy.ebpf_log = level;
        }
    }
}

/// One feed's prefixes.
#[derive(Clone, Debug)]
pub struct LoadedFeed {
    /// `feed:<path>`.
    pub origin: String,
    /// Its prefixes.
    pub prefixes: Vec<IpNet>,
}

/// The allow and block feeds of a policy, read.
#[derive(Clone, Debug, Default)]
pub struct Feeds {
    /// Allow feeds.
    pub allow: Vec<LoadedFeed>,
    /// Block feeds.
    pub block: Vec<LoadedFeed>,
}

/// Reads the policy's feeds. Bad lines reject unless the feed says `on_bad_line = "skip"`;
/// skipped lines are logged.
pub fn read_feeds(policy: &Policy) -> Result<Feeds, String> {
    let read = |feeds: &[Feed]| -> Result<Vec<LoadedFeed>, String> {
        let mut loaded = Vec::new();
        for feed in feeds {
            let parsed = feeds::read(&feed.path, feed.format).map_err(|err| {
                let cause = std::error::Error::source(&err)
                    .map(|source| format!(": {source}"))
                    .unwrap_or_default();
                format!("{err}{cause}")
            })?;
            if !parsed.bad_lines.is_empty() {
                let lines: Vec<String> = parsed
                    .bad_lines
                    .iter()
                    .map(|bad| bad.describe(&feed.path))
                    .collect();
                match feed.on_bad_line {
                    OnBadLine::Reject => {
                        let shown = lines.iter().take(20).cloned().collect::<Vec<_>>();
                        let more = lines.len().saturating_sub(shown.len());
                        return Err(format!(
                            "feed {} has {} bad line(s) (set `on_bad_line = \"skip\"` on the feed \
                             to skip them):\n{}{}",
                            feed.path.display(),
                            lines.len(),
                            shown.join("\n"),
                            if more > 0 {
                                format!("\n… and {more} more")
                            } else {
                                String::new()
                            }
                        ));
                    }
                    OnBadLine::Skip => {
                        for line in &lines {
                            warn!("skipped bad feed line {line}");
                        }
                    }
                }
            }
            loaded.push(LoadedFeed {
                origin: format!("feed:{}", feed.path.display()),
                prefixes: parsed.prefixes,
            });
        }
        Ok(loaded)
    };
    Ok(Feeds {
        allow: read(&policy.allow_feeds)?,
        block: read(&policy.block_feeds)?,
    })
}

/// The ban map key of a host or subnet.
pub fn ban_key(net: &IpNet) -> BanKey {
    let net = net.trunc();
    let mut addr = [0u8; 16];
    let family = match net {
        IpNet::V4(v4) => {
            addr[..4].copy_from_slice(&v4.network().octets());
            4
        }
        IpNet::V6(v6) => {
            addr = v6.network().octets();
            6
        }
    };
    BanKey {
        family,
        prefix_len: net.prefix_len(),
        _pad: 0,
        addr,
    }
}

fn is_host(net: &IpNet) -> bool {
    net.prefix_len() == net.max_prefix_len()
}

/// Parses CIDRs or addresses given to the control API; all must be valid.
pub fn parse_targets(targets: &[String]) -> Result<Vec<IpNet>, ApiError> {
    if targets.is_empty() {
        return Err(ApiError::bad_request("no addresses or CIDRs given"));
    }
    let mut nets = Vec::new();
    let mut bad = Vec::new();
    for target in targets {
        let text = target.trim();
        match text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        {
            Ok(net) => nets.push(net.trunc()),
            Err(_) => bad.push(format!("`{target}`")),
        }
    }
    if !bad.is_empty() {
        return Err(ApiError::bad_request(format!(
            "not an IP address or CIDR: {} (nothing was changed)",
            bad.join(", ")
        )));
    }
    Ok(nets)
}

/// TTL and comment of runtime entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryMeta {
    /// Seconds until the entries lapse (none: never).
    pub ttl_secs: Option<u64>,
    /// Free text.
    pub comment: Option<String>,
}

/// The running daemon.
pub struct Engine {
    policy_path: PathBuf,
    overrides: Overrides,
    /// The policy in force.
    pub policy: Policy,
    feeds: Feeds,
    runtime: RuntimeState,
    state_path: PathBuf,
    /// The loaded firewall.
    pub firewall: Firewall,
    /// Interfaces the firewall is attached to.
    pub attachments: Vec<Attachment>,
    slots: HashMap<String, u32>,
    audit: AuditLog,
    policy_version: u64,
    reloads: u64,
    failed_reloads: u64,
    last_reload_error: Option<String>,
    started: Instant,
    known_bans: HashSet<BanKey>,
    /// The earliest expiry in `runtime` (unix seconds).
    next_expiry: Option<u64>,
    /// What the metrics endpoint exports.
    pub shared: Arc<Mutex<Shared>>,
    /// Offenders seen in drop events.
    pub top: Arc<Mutex<TopTracker>>,
    /// The policy's access-log jails.
    jails: Jails,
    /// Where the jails' positions and histories are kept.
    jails_path: PathBuf,
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
    /// The loaded (not yet filled) firewall.
    pub firewall: Firewall,
    /// The audit log.
    pub audit: AuditLog,
    /// Offenders `apifw top` lists.
    pub policy_top: usize,
}

impl Engine {
    /// Installs the policy, feeds and runtime state into `parts.firewall` and restores manual
    /// bans. Nothing is attached yet.
    pub fn new(parts: EngineParts) -> Result<Self, ApiError> {
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
            firewall: parts.firewall,
            attachments: Vec::new(),
            slots: HashMap::new(),
            audit: parts.audit,
            policy_version: 0,
            reloads: 0,
            failed_reloads: 0,
            last_reload_error: None,
            started: Instant::now(),
            known_bans: HashSet::new(),
            next_expiry: None,
            shared: Arc::new(Mutex::new(Shared::default())),
            top: Arc::new(Mutex::new(TopTracker::new(parts.policy_top))),
            jails,
            jails_path,
        };
        engine.next_expiry = engine.runtime.next_expiry();
        let (compiled, slots) = engine.compile(&engine.policy, &engine.feeds, &engine.runtime)?;
        engine
            .firewall
            .install(compiled)
            .map_err(|err| ApiError::internal(chain(&err)))?;
        engine.commit_slots(&slots);
        engine.policy_version = 1;
        engine.publish();
        engine.publish_jails();
        let records: Vec<BanRecord> = engine.runtime.bans().cloned().collect();
        engine.write_bans(&records)?;
        engine.known_bans = engine.kernel_ban_keys().unwrap_or_default();
        let adopted = engine.firewall.origin() == MapOrigin::Adopted;
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
        shared.fill = match self.firewall.installed() {
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
                firewall_common::map_names::CANDIDATES,
                u64::from(limits.max_tracked_sources),
            ),
            (
                firewall_common::map_names::ESCALATION,
                u64::from(limits.max_tracked_subnets),
            ),
        ]
        .into();
        shared.policy_version = self.policy_version;
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

    fn block_count(&self) -> usize {
        self.policy.block.len()
            + self
                .feeds
                .block
                .iter()
                .map(|f| f.prefixes.len())
                .sum::<usize>()
            + self.runtime.len(ListKind::Block)
    }

    fn allow_count(&self) -> usize {
        self.policy.allow.len()
            + self
                .feeds
                .allow
                .iter()
                .map(|f| f.prefixes.len())
                .sum::<usize>()
            + self.runtime.len(ListKind::Allow)
    }

    /// Appends to the audit log; a failing log is reported but does not undo the change.
    fn record(&mut self, actor: &str, action: &str, object: serde_json::Value) {
        let record = AuditRecord::now(actor, action, object);
        if let Err(err) = self.audit.append(&record) {
            error!(err = %chain(&err), "cannot write the audit log");
        }
    }

    /// Compiles `policy` + `feeds` + `runtime` with rule slots kept by name.
    fn compile(
        &self,
        policy: &Policy,
        feeds: &Feeds,
        runtime: &RuntimeState,
    ) -> Result<(Compiled, Vec<u32>), ApiError> {
        let mut allow: Vec<IpNet> = policy.allow.clone();
        allow.extend(feeds.allow.iter().flat_map(|f| f.prefixes.iter().copied()));
        allow.extend(runtime.cidrs(ListKind::Allow));
        let mut block: Vec<IpNet> = policy.block.clone();
        block.extend(feeds.block.iter().flat_map(|f| f.prefixes.iter().copied()));
        block.extend(runtime.cidrs(ListKind::Block));
        let slots = assign_slots(&self.slots, &policy.rules);
        let mut compiled =
            Compiled::build(policy, &allow, &block, Some(&slots)).map_err(|err| ApiError {
                status: 507,
                message: format!("{err}; nothing was changed"),
            })?;
        // Manual bans need the ban check on, and their subnet lengths probed.
        for ban in runtime.bans() {
            compiled.config.flags |= CONFIG_BANS;
            let len = u32::from(ban.cidr.prefix_len());
            match ban.cidr {
                IpNet::V4(_) if len < 32 => compiled.config.ban_v4_lengths |= 1 << len,
                IpNet::V6(_) if len < 128 => {
                    compiled.config.ban_v6_lengths[(len / 64) as usize] |= 1 << (len % 64)
                }
                _ => {}
            }
        }
        Ok((compiled, slots))
    }

    /// Validates, persists and installs `next` as the runtime state.
    fn change_runtime(&mut self, next: RuntimeState) -> Result<(), ApiError> {
        let started = Instant::now();
        let (compiled, slots) = self.compile(&self.policy, &self.feeds, &next)?;
        let compiled_at = started.elapsed();
        // Persisting and installing are independent until both are done, so they overlap: the
        // state file is written on a second thread while the kernel maps are. If either fails,
        // the other is undone: the old state file is written back, or the old policy installed
        // again (its generation is still intact, so that is cheap).
        let state_path = self.state_path.clone();
        let (saved, installed) = std::thread::scope(|scope| {
            let saver = scope.spawn(|| next.save(&state_path));
            let installed = self.firewall.install(compiled);
            let saved = saver.join().unwrap_or_else(|_| {
                Err(crate::store::state::StateError::Write {
                    path: state_path.clone(),
                    step: "write (thread panicked)",
                    source: std::io::Error::other("the state writer panicked"),
                })
            });
            (saved, installed)
        });
        debug!(
            compile_ms = compiled_at.as_millis(),
            persist_and_install_ms = (started.elapsed() - compiled_at).as_millis(),
            "runtime change applied"
        );
        match (saved, installed) {
            (Ok(()), Ok(())) => {}
            (Err(err), installed) => {
                if installed.is_ok() {
                    self.reinstall_current();
                }
                return Err(ApiError::internal(format!(
                    "{}; nothing was changed",
                    chain(&err)
                )));
            }
            (Ok(()), Err(err)) => {
                // Put the old state back on disk so that a restart enforces what the kernel does.
                if let Err(restore) = self.runtime.save(&self.state_path) {
                    error!(err = %chain(&restore), "cannot restore the previous state file");
                }
                return Err(ApiError::internal(format!(
                    "{}; the previous policy stays in force",
                    chain(&err)
                )));
            }
        }
        self.commit_slots(&slots);
        self.runtime = next;
        self.next_expiry = self.runtime.next_expiry();
        self.policy_version += 1;
        self.publish();
        Ok(())
    }

    /// Installs the policy as it was before a change that could not be persisted.
    fn reinstall_current(&mut self) {
        let restored = self
            .compile(&self.policy, &self.feeds, &self.runtime)
            .and_then(|(compiled, _)| {
                self.firewall
                    .install(compiled)
                    .map_err(|err| ApiError::internal(chain(&err)))
            });
        if let Err(err) = restored {
            error!(error = %err.message, "cannot reinstall the previous policy");
        }
    }

    /// Adds runtime entries to a list; `action` and `detail` go to the audit log.
    pub fn list_add(
        &mut self,
        kind: ListKind,
        nets: Vec<IpNet>,
        meta: EntryMeta,
        actor: &str,
        (action, extra): (&str, serde_json::Value),
    ) -> Result<Changed, ApiError> {
        let EntryMeta { ttl_secs, comment } = meta;
        if ttl_secs == Some(0) {
            return Err(ApiError::bad_request("--ttl must be at least 1 second"));
        }
        let now = unix_now();
        let mut next = self.runtime.clone();
        let mut changed = Changed::default();
        for net in &nets {
            let entry = ListEntry {
                cidr: *net,
                expires_at: ttl_secs.map(|ttl| now.saturating_add(ttl)),
                comment: comment.clone(),
                added_at: now,
                added_by: actor.to_owned(),
            };
            if next.upsert(kind, entry) {
                changed.added += 1;
            } else {
                changed.updated += 1;
            }
        }
        self.change_runtime(next)?;
        changed.policy_version = self.policy_version;
        let shown: Vec<String> = nets.iter().take(100).map(ToString::to_string).collect();
        self.record(
            actor,
            action,
            json!({
                "list": kind.as_str(), "cidrs": shown, "count": nets.len(),
                "ttl_secs": ttl_secs, "comment": comment, "added": changed.added,
                "updated": changed.updated, "detail": extra,
            }),
        );
        info!(
            list = kind.as_str(),
            count = nets.len(),
            actor,
            "runtime entries added"
        );
        Ok(changed)
    }

    /// Adds the CIDRs of a list file as one import.
    pub fn import(
        &mut self,
        kind: ListKind,
        origin: &str,
        nets: Vec<IpNet>,
        meta: EntryMeta,
        actor: &str,
        detail: serde_json::Value,
    ) -> Result<Changed, ApiError> {
        if meta.ttl_secs == Some(0) {
            return Err(ApiError::bad_request("--ttl must be at least 1 second"));
        }
        let now = unix_now();
        let count = nets.len();
        let mut next = self.runtime.clone();
        let id = next.add_import(ImportRecord {
            id: 0,
            list: kind,
            origin: origin.to_owned(),
            cidrs: nets,
            expires_at: meta.ttl_secs.map(|ttl| now.saturating_add(ttl)),
            comment: meta.comment.clone(),
            added_at: now,
            added_by: actor.to_owned(),
        });
        self.change_runtime(next)?;
        self.record(
            actor,
            "import",
            json!({"list": kind.as_str(), "origin": origin, "import_id": id, "count": count,
                   "ttl_secs": meta.ttl_secs, "comment": meta.comment, "detail": detail}),
        );
        info!(list = kind.as_str(), origin, count, actor, "list imported");
        Ok(Changed {
            added: count,
            policy_version: self.policy_version,
            ..Changed::default()
        })
    }

    /// Removes runtime entries from a list. Entries from the policy file or a feed cannot be
    /// removed at run time (edit the file and reload).
    pub fn list_del(
        &mut self,
        kind: ListKind,
        nets: Vec<IpNet>,
        actor: &str,
    ) -> Result<Changed, ApiError> {
        let mut next = self.runtime.clone();
        let mut changed = Changed::default();
        for net in &nets {
            let entry = next.remove(kind, net).is_some();
            let imported = next.remove_imported(kind, net) > 0;
            if entry || imported {
                changed.removed += 1;
            } else {
                let from_file = match kind {
                    ListKind::Block => self.policy.block.contains(net),
                    ListKind::Allow => self.policy.allow.contains(net),
                };
                changed.not_found.push(if from_file {
                    format!("{net} (from the policy file: edit it and reload)")
                } else {
                    net.to_string()
                });
            }
        }
        if changed.removed > 0 {
            self.change_runtime(next)?;
            self.record(
                actor,
                &format!("{}.del", kind.as_str()),
                json!({"cidrs": nets.iter().map(ToString::to_string).collect::<Vec<_>>(),
                       "removed": changed.removed, "not_found": changed.not_found}),
            );
        }
        changed.policy_version = self.policy_version;
        Ok(changed)
    }

    /// Every entry of a list, with where it comes from.
    pub fn list(&self, kind: ListKind) -> Vec<ListRow> {
        let now = unix_now();
        let (file, feeds) = match kind {
            ListKind::Block => (&self.policy.block, &self.feeds.block),
            ListKind::Allow => (&self.policy.allow, &self.feeds.allow),
        };
        let mut rows: Vec<ListRow> = file
            .iter()
            .map(|cidr| ListRow {
                cidr: *cidr,
                origin: "policy".into(),
                expires_in_secs: None,
                comment: None,
                added_by: None,
            })
            .collect();
        for feed in feeds {
            rows.extend(feed.prefixes.iter().map(|cidr| ListRow {
                cidr: *cidr,
                origin: feed.origin.clone(),
                expires_in_secs: None,
                comment: None,
                added_by: None,
            }));
        }
        for import in self.runtime.imports().iter().filter(|i| i.list == kind) {
            rows.extend(import.cidrs.iter().map(|cidr| ListRow {
                cidr: *cidr,
                origin: format!("import:{}", import.origin),
                expires_in_secs: import.expires_at.map(|at| at.saturating_sub(now)),
                comment: import.comment.clone(),
                added_by: Some(import.added_by.clone()),
            }));
        }
        rows.extend(self.runtime.list(kind).map(|entry| ListRow {
            cidr: entry.cidr,
            origin: "runtime".into(),
            expires_in_secs: entry.expires_at.map(|at| at.saturating_sub(now)),
            comment: entry.comment.clone(),
            added_by: Some(entry.added_by.clone()),
        }));
        rows
    }

    /// Writes manual bans into the kernel's ban map.
    fn write_bans(&mut self, records: &[BanRecord]) -> Result<(), ApiError> {
        let now_unix = unix_now();
        let now_ns = bans::monotonic_ns().map_err(|err| ApiError::internal(chain(&err)))?;
        let mut map = self
            .firewall
            .bans_mut()
            .map_err(|err| ApiError::internal(chain(&err)))?;
        for record in records {
            let ttl_ns = record.expires_at.saturating_sub(now_unix) * 1_000_000_000;
            if ttl_ns == 0 {
                continue;
            }
            let kind = if is_host(&record.cidr) {
                BAN_HOST
            } else {
                BAN_SUBNET
            };
            let entry = BanEntry::new(now_ns, ttl_ns, MANUAL_BAN_RULE, kind);
            map.insert(ban_key(&record.cidr), entry, 0)
                .map_err(|err| ApiError {
                    status: 507,
                    message: format!(
                        "cannot write the ban of {} into the kernel ({err}); the ban map may be \
                     full: raise `limits.max_bans`",
                        record.cidr
                    ),
                })?;
        }
        Ok(())
    }

    /// Bans hosts or subnets for `ttl_secs`.
    pub fn ban_add(
        &mut self,
        nets: Vec<IpNet>,
        ttl_secs: u64,
        comment: Option<String>,
        actor: &str,
    ) -> Result<Changed, ApiError> {
        if ttl_secs == 0 {
            return Err(ApiError::bad_request(
                "a ban needs a TTL of at least 1 second",
            ));
        }
        let now = unix_now();
        let mut next = self.runtime.clone();
        let mut changed = Changed::default();
        let mut records = Vec::new();
        for net in &nets {
            let record = BanRecord {
                cidr: *net,
                expires_at: now.saturating_add(ttl_secs),
                comment: comment.clone(),
                added_at: now,
                added_by: actor.to_owned(),
            };
            if next.upsert_ban(record.clone()) {
                changed.added += 1;
            } else {
                changed.updated += 1;
            }
            records.push(record);
        }
        self.change_runtime(next)?;
        self.write_bans(&records)?;
        for net in &nets {
            self.known_bans.insert(ban_key(net));
        }
        changed.policy_version = self.policy_version;
        self.record(
            actor,
            "ban.add",
            json!({"cidrs": nets.iter().map(ToString::to_string).collect::<Vec<_>>(),
                   "ttl_secs": ttl_secs, "comment": comment}),
        );
        Ok(changed)
    }

    /// Lifts bans (manual or automatic).
    pub fn ban_del(&mut self, nets: Vec<IpNet>, actor: &str) -> Result<Changed, ApiError> {
        let mut next = self.runtime.clone();
        let mut changed = Changed::default();
        let mut in_state = false;
        for net in &nets {
            in_state |= next.remove_ban(net).is_some();
        }
        if in_state {
            self.change_runtime(next)?;
        }
        for net in nets.iter().filter(|net| is_host(net)) {
            self.jails.lifted(net.addr());
        }
        let mut map = self
            .firewall
            .bans_mut()
            .map_err(|err| ApiError::internal(chain(&err)))?;
        for net in &nets {
            let key = ban_key(net);
            if map.remove(&key).is_ok() {
                changed.removed += 1;
                self.known_bans.remove(&key);
            } else {
                changed.not_found.push(net.to_string());
            }
        }
        changed.policy_version = self.policy_version;
        if changed.removed > 0 {
            self.record(
                actor,
                "ban.del",
                json!({"cidrs": nets.iter().map(ToString::to_string).collect::<Vec<_>>(),
                       "removed": changed.removed}),
            );
        }
        Ok(changed)
    }

    /// The active bans, with the comments of manual ones.
    pub fn bans(&mut self) -> Result<Vec<bans::BanRow>, ApiError> {
        let now = bans::monotonic_ns().map_err(|err| ApiError::internal(chain(&err)))?;
        let map = self
            .firewall
            .bans_mut()
            .map_err(|err| ApiError::internal(chain(&err)))?;
        let mut rows = bans::active(&map, now).map_err(|err| ApiError::internal(chain(&err)))?;
        for row in &mut rows {
            if row.rule == MANUAL_BAN_RULE
                && let Some(record) = self.runtime.get_ban(&row.prefix)
            {
                row.reason = match &record.comment {
                    // A jail's comment says everything ("jail web: 5 matches within 600s").
                    Some(comment) if record.added_by.starts_with("jail ") => comment.clone(),
                    Some(comment) => format!("manual ban by {}: {comment}", record.added_by),
                    None => format!("manual ban by {}", record.added_by),
                };
            }
        }
        Ok(rows)
    }

    /// Re-reads the policy file, its feeds and the state file and swaps them in atomically.
    /// Anything invalid rejects the whole reload and changes nothing.
    pub fn reload(&mut self, actor: &str) -> Result<Changed, ApiError> {
        match self.try_reload() {
            Ok(changed) => {
                self.reloads += 1;
                self.last_reload_error = None;
                self.publish();
                self.record(
                    actor,
                    "reload",
                    json!({"policy_version": self.policy_version,
                           "block_entries": self.block_count(),
                           "allow_entries": self.allow_count(),
                           "rules": self.policy.rules.len()}),
                );
                info!(policy_version = self.policy_version, "policy reloaded");
                Ok(changed)
            }
            Err(err) => {
                self.failed_reloads += 1;
                self.last_reload_error = Some(err.message.clone());
                self.publish();
                self.record(actor, "reload.failed", json!({"error": err.message}));
                warn!(error = %err.message, "reload rejected; the running policy is unchanged");
                Err(err)
            }
        }
    }

    fn try_reload(&mut self) -> Result<Changed, ApiError> {
        let loaded = Loaded::from_file(&self.policy_path).map_err(|err| {
            ApiError::bad_request(format!(
                "the policy is invalid, nothing was changed:\n{}",
                chain(&err)
            ))
        })?;
        for warning in &loaded.warnings {
            warn!("{warning}");
        }
        let mut policy = loaded.policy;
        self.overrides.apply(&mut policy);
        if policy.limits != self.policy.limits {
            return Err(ApiError::bad_request(
                "`[limits]` changed: they size the kernel maps, so they take effect on restart \
                 only; nothing was changed",
            ));
        }
        if policy.interfaces != self.policy.interfaces || policy.xdp_mode != self.policy.xdp_mode {
            warn!("`interfaces` and `xdp_mode` changes take effect on restart");
            policy.interfaces = self.policy.interfaces.clone();
            policy.xdp_mode = self.policy.xdp_mode;
        }
        policy.daemon = self.policy.daemon.clone();
        let feeds = read_feeds(&policy)
            .map_err(|err| ApiError::bad_request(format!("{err}\nnothing was changed")))?;
        let runtime = RuntimeState::load(&self.state_path)
            .map_err(|err| ApiError::bad_request(chain(&err)))?;
        let (compiled, slots) = self.compile(&policy, &feeds, &runtime)?;
        self.firewall.install(compiled).map_err(|err| {
            ApiError::internal(format!(
                "{}; the previous policy stays in force",
                chain(&err)
            ))
        })?;
        self.policy = policy;
        self.feeds = feeds;
        self.runtime = runtime;
        self.jails.reconfigure(&self.policy.jails);
        self.next_expiry = self.runtime.next_expiry();
        self.commit_slots(&slots);
        self.policy_version += 1;
        Ok(Changed {
            policy_version: self.policy_version,
            ..Changed::default()
        })
    }

    fn kernel_ban_keys(&mut self) -> Result<HashSet<BanKey>, ApiError> {
        let map = self
            .firewall
            .bans_mut()
            .map_err(|err| ApiError::internal(chain(&err)))?;
        let mut keys = HashSet::new();
        for key in map.keys() {
            keys.insert(key.map_err(|err| ApiError::internal(err.to_string()))?);
        }
        Ok(keys)
    }

    /// Once a second: sweeps expired kernel bans, notices automatic bans, expires runtime
    /// entries. Everything it does is audited.
    pub fn tick(&mut self) {
        self.run_jails();
        match self.firewall.sweep_bans() {
            Ok(expired) => {
                for (prefix, ban) in expired {
                    info!(%prefix, rule = ban.rule, "ban expired");
                    self.known_bans.remove(&ban_key(&prefix));
                    self.record("daemon", "ban.expire", json!({"cidr": prefix.to_string()}));
                }
            }
            Err(err) => error!(err = %chain(&err), "cannot sweep expired bans"),
        }
        if let Ok(now) = bans::monotonic_ns()
            && let Ok(map) = self.firewall.bans_mut()
            && let Ok(rows) = bans::active(&map, now)
        {
            let new: Vec<bans::BanRow> = rows
                .into_iter()
                .filter(|row| !self.known_bans.contains(&ban_key(&row.prefix)))
                .collect();
            for row in new {
                self.known_bans.insert(ban_key(&row.prefix));
                if row.rule != MANUAL_BAN_RULE {
                    let rule = self
                        .slots
                        .iter()
                        .find(|(_, slot)| **slot == row.rule)
                        .map(|(name, _)| name.clone());
                    self.record(
                        "daemon",
                        "ban.auto",
                        json!({"cidr": row.prefix.to_string(), "kind": row.kind,
                               "rule": rule, "ttl_secs": row.remaining_secs.round()}),
                    );
                }
            }
        }
        // Nothing to do before the earliest expiry (kept current by every change), so an idle
        // daemon does not scan a million imported entries every second.
        let now = unix_now();
        if self.next_expiry.is_none_or(|at| at > now) {
            return;
        }
        let mut next = self.runtime.clone();
        let expired = next.expire(now);
        if expired.is_empty() {
            self.next_expiry = self.runtime.next_expiry();
            return;
        }
        let lists_changed =
            !expired.block.is_empty() || !expired.allow.is_empty() || !expired.imports.is_empty();
        let result = if lists_changed {
            self.change_runtime(next)
        } else {
            next.save(&self.state_path)
                .map(|()| {
                    self.runtime = next;
                    self.next_expiry = self.runtime.next_expiry();
                })
                .map_err(|err| ApiError::internal(chain(&err)))
        };
        match result {
            Ok(()) => {
                for kind in [ListKind::Block, ListKind::Allow] {
                    let cidrs: Vec<String> = expired
                        .list(kind)
                        .iter()
                        .map(|entry| entry.cidr.to_string())
                        .collect();
                    if !cidrs.is_empty() {
                        info!(
                            list = kind.as_str(),
                            count = cidrs.len(),
                            "runtime entries expired"
                        );
                        self.record(
                            "daemon",
                            &format!("{}.expire", kind.as_str()),
                            json!({"cidrs": cidrs}),
                        );
                    }
                }
            }
            Err(err) => error!(error = %err.message, "cannot expire runtime entries"),
        }
        for import in &expired.imports {
            info!(
                origin = import.origin,
                count = import.cidrs.len(),
                "import expired"
            );
            self.record(
                "daemon",
                &format!("{}.expire", import.list.as_str()),
                json!({"import": import.origin, "count": import.cidrs.len()}),
            );
        }
    }

    /// Whether `source` is in the effective allowlist: policy, feeds and runtime entries.
    fn allowlisted(&self, source: IpAddr) -> bool {
        self.policy
            .allow
            .iter()
            .chain(
                self.feeds
                    .allow
                    .iter()
                    .flat_map(|feed| feed.prefixes.iter()),
            )
            .any(|net| net.contains(&source))
            || self
                .runtime
                .cidrs(ListKind::Allow)
                .any(|net| net.contains(&source))
    }

    /// Once a tick: reads the jails' logs, bans whom they ask for, persists their state.
    fn run_jails(&mut self) {
        if self.jails.is_empty() {
            return;
        }
        let requests = self.jails.poll(unix_now());
        self.carry_out(requests);
        self.save_jails();
    }

    /// Makes the bans jails asked for, through the path of `apifw ban add` (kernel, state file,
    /// audit), except for allowlisted sources. Returns the requests that were carried out.
    fn carry_out(&mut self, requests: Vec<BanRequest>) -> Vec<BanRequest> {
        let mut made = Vec::new();
        for request in requests {
            let source = request.decision.source;
            if self.allowlisted(source) {
                warn!(jail = request.jail, %source, "not banning an allowlisted source");
                self.record(
                    &format!("jail {}", request.jail),
                    "ban.skipped",
                    json!({"source": source.to_string(), "reason": "allowlisted",
                           "matches": request.decision.count}),
                );
                self.jails.refused(&request, true);
                continue;
            }
            let actor = format!("jail {}", request.jail);
            match self.ban_add(
                vec![IpNet::from(source)],
                request.decision.ttl_secs,
                Some(request.comment()),
                &actor,
            ) {
                Ok(_) => {
                    self.jails.banned(&request);
                    made.push(request);
                }
                Err(err) => {
                    error!(jail = request.jail, %source, error = %err.message, "jail ban failed");
                    self.jails.refused(&request, false);
                }
            }
        }
        self.publish_jails();
        made
    }

    /// Writes the jail state file when something changed.
    fn save_jails(&mut self) {
        if !self.jails.take_dirty() {
            return;
        }
        if let Err(err) = crate::store::state::save_json(&self.jails_path, &self.jails.state()) {
            error!(err = %chain(&err), "cannot save the jail state");
        }
    }

    fn publish_jails(&self) {
        let counters = self.jails.counters(unix_now());
        match self.shared.lock() {
            Ok(mut shared) => shared.jails = counters,
            Err(poisoned) => poisoned.into_inner().jails = counters,
        }
    }

    /// `POST /v1/reports`: counts an abuse report like jail matches of its weight, and bans the
    /// source when it reaches the jail's `max_retry` (unless it is allowlisted).
    pub fn report(
        &mut self,
        source: IpAddr,
        reason: &str,
        weight: u32,
        jail: Option<&str>,
        actor: &str,
    ) -> Result<ReportOutcome, ApiError> {
        let (counted, ban) = self
            .jails
            .report(jail, source, weight, reason, unix_now())
            .map_err(|err| ApiError::bad_request(err.to_string()))?;
        info!(jail = counted.jail, %source, weight, reason, actor, "abuse report");
        let allowlisted = self.allowlisted(source);
        let mut outcome = ReportOutcome {
            jail: counted.jail.clone(),
            source,
            count: 0,
            max_retry: counted.max_retry,
            banned: false,
            ban_ttl_secs: None,
            allowlisted,
        };
        match counted.outcome {
            Outcome::Counted { count } => outcome.count = count,
            Outcome::AlreadyBanned => outcome.banned = true,
            Outcome::Ban(decision) => {
                outcome.count = decision.count;
                let made = self.carry_out(ban.into_iter().collect());
                if let Some(request) = made.first() {
                    outcome.banned = true;
                    outcome.ban_ttl_secs = Some(request.decision.ttl_secs);
                }
            }
        }
        self.publish_jails();
        self.save_jails();
        Ok(outcome)
    }

    /// `GET /v1/jails`.
    pub fn jails(&self) -> Vec<JailView> {
        self.jails.views(unix_now())
    }

    /// `GET /v1/stats`.
    pub fn stats(&self) -> Result<crate::control::StatsView, ApiError> {
        let snapshot = self
            .firewall
            .stats()
            .map_err(|err| ApiError::internal(chain(&err)))?;
        let events = self
            .firewall
            .event_counts()
            .map_err(|err| ApiError::internal(chain(&err)))?;
        let shared = match self.shared.lock() {
            Ok(shared) => shared,
            Err(poisoned) => poisoned.into_inner(),
        };
        Ok(crate::control::StatsView {
            snapshot,
            events,
            interfaces: shared
                .interfaces
                .iter()
                .map(|(slot, name)| (*slot, name.clone()))
                .collect(),
            rules: shared
                .rules
                .iter()
                .map(|(slot, name)| (*slot, name.clone()))
                .collect(),
        })
    }

    /// `GET /v1/top`.
    pub fn top(&self) -> crate::dataplane::top::TopView {
        let second = self.started.elapsed().as_secs();
        match self.top.lock() {
            Ok(top) => top.view(second),
            Err(poisoned) => poisoned.into_inner().view(second),
        }
    }

    /// Counts a control request for the metrics.
    pub fn count_request(&self, verb: &str, result: &'static str) {
        if let Ok(mut shared) = self.shared.lock() {
            *shared
                .requests
                .entry((verb.to_owned(), result))
                .or_insert(0) += 1;
        }
    }

    /// `apifw status`.
    pub fn status(&mut self) -> Status {
        let maps = map_fill(&self.firewall, &self.policy);
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            policy_file: self.policy_path.clone(),
            policy_version: self.policy_version,
            active_generation: self.firewall.active_generation(),
            adopted: self.firewall.origin() == MapOrigin::Adopted,
            interfaces: self
                .attachments
                .iter()
                .map(|attachment| InterfaceStatus {
                    name: attachment.interface.clone(),
                    mode: attachment.mode_name().into(),
                })
                .collect(),
            maps,
            block_entries: self.block_count(),
            allow_entries: self.allow_count(),
            runtime_block: self.runtime.len(ListKind::Block),
            runtime_allow: self.runtime.len(ListKind::Allow),
            reloads: self.reloads,
            failed_reloads: self.failed_reloads,
            last_reload_error: self.last_reload_error.clone(),
            uptime_secs: self.started.elapsed().as_secs(),
            audit_log: self.policy.daemon.audit_log.clone(),
            state_file: self.state_path.clone(),
            pin_dir: self.policy.daemon.pin_dir.clone(),
        }
    }

    /// The policy file.
    pub fn policy_path(&self) -> &Path {
        &self.policy_path
    }
}

/// Fill of the maps that can run full: entries of the installed policy per generation, and
/// counted entries of the ban map.
fn map_fill(firewall: &Firewall, policy: &Policy) -> Vec<MapFill> {
    let mut fill = Vec::new();
    if let Some(installed) = firewall.installed() {
        fill.push(MapFill {
            map: firewall_common::map_names::V4_PREFIXES.into(),
            entries: installed.tables.v4_prefixes.len() as u64,
            capacity: u64::from(policy.limits.max_v4_prefixes),
        });
        fill.push(MapFill {
            map: firewall_common::map_names::V6_PREFIXES.into(),
            entries: installed.tables.v6_prefixes.len() as u64,
            capacity: u64::from(policy.limits.max_v6_prefixes),
        });
    }
    if let Ok(map) = firewall.map(firewall_common::map_names::BANS)
        && let Ok(bans) = aya::maps::HashMap::<_, BanKey, BanEntry>::try_from(map)
    {
        fill.push(MapFill {
            map: firewall_common::map_names::BANS.into(),
            entries: bans.keys().count() as u64,
            capacity: u64::from(policy.limits.max_bans),
        });
    }
    fill
}
