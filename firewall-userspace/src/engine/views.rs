//! What the control API and the metrics read: counters, top offenders, status, map fill.

use super::*;

impl Engine {
    /// `GET /v1/stats`.
    pub fn stats(&self) -> Result<crate::control::StatsView, EngineError> {
        let snapshot = self
            .dataplane
            .stats()
            .map_err(|err| EngineError::internal(chain(&err)))?;
        let events = self
            .dataplane
            .event_counts()
            .map_err(|err| EngineError::internal(chain(&err)))?;
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
        let maps = map_fill(self.dataplane.as_ref(), &self.policy);
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            policy_file: self.policy_path.clone(),
            policy_version: self.policy_version,
            active_generation: self.dataplane.active_generation(),
            adopted: self.dataplane.adopted(),
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
            program: self.dataplane.program_runs(),
            crowdsec: self.crowdsec_status(),
            memory: map_memory(self.dataplane.as_ref(), &self.policy),
            syn_cookies: syn_cookies(self.dataplane.as_ref(), &self.policy),
        }
    }
}

/// SYN cookies of each cookie port of the policy: how many CPUs have it in cookie mode now
/// (read the way the XDP program reads its detectors, at the kernel's monotonic clock), and
/// how often CPUs switched it.
pub(super) fn syn_cookies(dataplane: &dyn Dataplane, policy: &Policy) -> Vec<CookieStatus> {
    let now_ns = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|now| now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64)
        .unwrap_or(0);
    let mut out = Vec::new();
    for cookies in crate::policy::cookies::cookie_ports(policy) {
        if cookies.ports.is_empty() {
            out.push(CookieStatus {
                rule: cookies.rule.clone(),
                port: None,
                setting: cookies.mode.name().into(),
                cpus_in_cookie_mode: 0,
                switches: 0,
            });
        }
        for port in cookies.ports {
            let detectors = dataplane.syn_detectors(port);
            let mine = || detectors.iter().filter(|d| d.port == u32::from(port));
            out.push(CookieStatus {
                rule: cookies.rule.clone(),
                port: Some(port),
                setting: cookies.mode.name().into(),
                cpus_in_cookie_mode: mine().filter(|d| d.cookies_on(port, now_ns)).count() as u32,
                switches: mine().map(|d| u64::from(d.switches)).sum(),
            });
        }
    }
    out
}

/// Kernel memory of each map: in use (from the dataplane) next to full at the policy's limits.
pub(super) fn map_memory(dataplane: &dyn Dataplane, policy: &Policy) -> Vec<MapMemory> {
    let in_use = dataplane.kernel_memory();
    let costs = crate::dataplane::memory::costs(policy, crate::dataplane::memory::possible_cpus())
        .unwrap_or_default();
    in_use
        .into_iter()
        .map(|(map, bytes)| {
            let cost = costs.iter().find(|cost| cost.map == map);
            MapMemory {
                map: map.to_owned(),
                limit: cost.and_then(|cost| cost.limit).map(str::to_owned),
                bytes,
                full_bytes: cost.map_or(bytes, |cost| cost.full().max(bytes)),
            }
        })
        .collect()
}

/// Fill of the maps that can run full: entries of the installed policy per generation, and
/// counted entries of the ban map.
fn map_fill(dataplane: &dyn Dataplane, policy: &Policy) -> Vec<MapFill> {
    let mut fill = Vec::new();
    if let Some(installed) = dataplane.installed() {
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
    if let Ok(bans) = dataplane.ban_entries() {
        fill.push(MapFill {
            map: firewall_common::map_names::BANS.into(),
            entries: bans.len() as u64,
            capacity: u64::from(policy.limits.max_bans),
        });
    }
    fill
}
