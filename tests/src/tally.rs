//! Expected counters of a kernel-vs-model replay: what the reference model decided, tallied
//! per (action, reason) and per (rule, reason), and compared with the loaded program's counters.

use std::collections::HashMap;

use firewall_common::{Action, Reason, model::Decision};
use firewall_userspace::Firewall;

/// Expected counters, global and per rule, kept as the model decides.
#[derive(Default)]
pub struct Tally {
    /// Packets and bytes per (action, reason).
    pub global: HashMap<(Action, Reason), (u64, u64)>,
    /// Packets and bytes per (rule, reason).
    pub per_rule: HashMap<(u32, Reason), (u64, u64)>,
}

impl Tally {
    /// Counts one frame of `len` bytes the way the model decided it.
    pub fn add(&mut self, decision: Decision, len: usize) {
        let len = len as u64;
        let entry = self
            .global
            .entry((decision.verdict.action, decision.verdict.reason))
            .or_default();
        *entry = (entry.0 + 1, entry.1 + len);
        if let Some(rule) = decision.rule {
            let entry = self
                .per_rule
                .entry((rule, decision.verdict.reason))
                .or_default();
            *entry = (entry.0 + 1, entry.1 + len);
        }
    }

    /// Asserts that the program's global and per-rule counters are exactly the tally.
    pub fn assert_matches(&self, firewall: &Firewall, context: &str) {
        let snapshot = firewall.stats().expect("counters");
        for row in &snapshot.counters {
            let expected = self
                .global
                .get(&(row.action, row.reason))
                .copied()
                .unwrap_or_default();
            assert_eq!(
                (row.packets, row.bytes),
                expected,
                "{context}: global counter {}/{}",
                row.action.name(),
                row.reason.name()
            );
        }
        let mut expected: Vec<_> = self
            .per_rule
            .iter()
            .map(|((rule, reason), (p, b))| (*rule, *reason as u32, *p, *b))
            .collect();
        expected.sort_unstable();
        let mut got: Vec<_> = snapshot
            .rules
            .iter()
            .map(|row| (row.rule, row.reason as u32, row.packets, row.bytes))
            .collect();
        got.sort_unstable();
        assert_eq!(
            got, expected,
            "{context}: per-rule counters (rule, reason, packets, bytes)"
        );
    }
}
