//! Runtime block and allow lists: add, import, delete, list; every change is compiled and
//! installed before it is saved and audited, and rolled back when the kernel refuses it.

use super::*;

impl Engine {
    pub(super) fn block_count(&self) -> usize {
        self.policy.block.len()
            + self
                .feeds
                .block
                .iter()
                .map(|f| f.prefixes.len())
                .sum::<usize>()
            + self.runtime.len(ListKind::Block)
    }

    pub(super) fn allow_count(&self) -> usize {
        self.policy.allow.len()
            + self
                .feeds
                .allow
                .iter()
                .map(|f| f.prefixes.len())
                .sum::<usize>()
            + self.runtime.len(ListKind::Allow)
    }

    /// Compiles `policy` + `feeds` + `runtime` with rule slots kept by name.
    pub(super) fn compile(
        &self,
        policy: &Policy,
        feeds: &Feeds,
        runtime: &RuntimeState,
    ) -> Result<(Compiled, Vec<u32>), EngineError> {
        let mut allow: Vec<IpNet> = policy.allow.clone();
        allow.extend(feeds.allow.iter().flat_map(|f| f.prefixes.iter().copied()));
        allow.extend(runtime.cidrs(ListKind::Allow));
        let mut block: Vec<IpNet> = policy.block.clone();
        block.extend(feeds.block.iter().flat_map(|f| f.prefixes.iter().copied()));
        block.extend(runtime.cidrs(ListKind::Block));
        let slots = assign_slots(&self.slots, &policy.rules);
        let mut compiled = Compiled::build(policy, &allow, &block, Some(&slots))
            .map_err(|err| EngineError::Full(format!("{err}; nothing was changed")))?;
        // Manual and CrowdSec bans need the ban check on, and their subnet lengths probed.
        let manual = runtime.bans().map(|ban| &ban.cidr);
        let (held, held_v4, held_v6) = crowdsec::ban_lengths(self.crowdsec.prefixes());
        let (manual_any, manual_v4, manual_v6) = crowdsec::ban_lengths(manual);
        let (extra, extra_v4, extra_v6) = self.crowdsec.extra_lengths;
        if held || manual_any || extra {
            compiled.config.flags |= CONFIG_BANS;
        }
        compiled.config.ban_v4_lengths |= held_v4 | manual_v4 | extra_v4;
        for (half, lengths) in compiled.config.ban_v6_lengths.iter_mut().enumerate() {
            *lengths |= held_v6[half] | manual_v6[half] | extra_v6[half];
        }
        Ok((compiled, slots))
    }

    /// Validates, persists and installs `next` as the runtime state.
    pub(super) fn change_runtime(&mut self, next: RuntimeState) -> Result<(), EngineError> {
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
            let installed = self.dataplane.install(compiled);
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
                return Err(EngineError::internal(format!(
                    "{}; nothing was changed",
                    chain(&err)
                )));
            }
            (Ok(()), Err(err)) => {
                // Put the old state back on disk so that a restart enforces what the kernel does.
                if let Err(restore) = self.runtime.save(&self.state_path) {
                    error!(err = %chain(&restore), "cannot restore the previous state file");
                }
                return Err(EngineError::internal(format!(
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
    pub(super) fn reinstall_current(&mut self) {
        let restored = self
            .compile(&self.policy, &self.feeds, &self.runtime)
            .and_then(|(compiled, _)| {
                self.dataplane
                    .install(compiled)
                    .map_err(|err| EngineError::internal(chain(&err)))
            });
        if let Err(err) = restored {
            error!(error = %err, "cannot reinstall the previous policy");
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
    ) -> Result<Changed, EngineError> {
        let EntryMeta { ttl_secs, comment } = meta;
        if ttl_secs == Some(0) {
            return Err(EngineError::bad_request("--ttl must be at least 1 second"));
        }
        let now = self.clock.unix_secs();
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
    ) -> Result<Changed, EngineError> {
        if meta.ttl_secs == Some(0) {
            return Err(EngineError::bad_request("--ttl must be at least 1 second"));
        }
        let now = self.clock.unix_secs();
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
    ) -> Result<Changed, EngineError> {
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
        let now = self.clock.unix_secs();
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
}
