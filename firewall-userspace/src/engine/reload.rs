//! Reloading the policy, its feeds and the state file: everything is validated and compiled
//! before the swap; a failed reload changes nothing and is counted.

use super::*;

impl Engine {
    /// Re-reads the policy file, its feeds and the state file and swaps them in atomically.
    /// Anything invalid rejects the whole reload and changes nothing.
    pub fn reload(&mut self, actor: &str) -> Result<Changed, EngineError> {
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
                self.last_reload_error = Some(err.to_string());
                self.publish();
                self.record(actor, "reload.failed", json!({"error": err.to_string()}));
                warn!(error = %err, "reload rejected; the running policy is unchanged");
                Err(err)
            }
        }
    }

    pub(super) fn try_reload(&mut self) -> Result<Changed, EngineError> {
        let loaded = Loaded::from_file(&self.policy_path).map_err(|err| {
            EngineError::bad_request(format!(
                "the policy is invalid, nothing was changed:\n{}",
                chain(&err)
            ))
        })?;
        for warning in &loaded.warnings {
            warn!("{warning}");
        }
        for warning in loaded.host_warnings() {
            warn!("{warning}");
        }
        let mut policy = loaded.policy;
        self.overrides.apply(&mut policy);
        if policy.limits != self.policy.limits {
            return Err(EngineError::bad_request(
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
            .map_err(|err| EngineError::bad_request(format!("{err}\nnothing was changed")))?;
        let runtime = RuntimeState::load(&self.state_path)
            .map_err(|err| EngineError::bad_request(chain(&err)))?;
        let (compiled, slots) = self.compile(&policy, &feeds, &runtime)?;
        self.dataplane.install(compiled).map_err(|err| {
            EngineError::internal(format!(
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
}
