//! CrowdSec decisions applied by the engine over the in-memory dataplane: TTLs from durations,
//! deltas and full resyncs, the allowlist, a full ban map, restarts, and manual bans under
//! CrowdSec ones.

use super::*;
use crate::{
    crowdsec::{DecisionFilter, parse_stream},
    dataplane::fake::FakeDataplane,
    engine::testing::{SECOND_NS, TestClock, engine_with},
    test_dir::TempDir,
};

const POLICY: &str = r#"
interfaces = ["lo"]
[allow]
cidrs = ["203.0.113.7/32", "192.0.2.0/24"]
[limits]
max_v4_prefixes = 64
max_v6_prefixes = 64
max_tracked_sources = 64
max_tracked_subnets = 64
max_bans = 6
[metrics]
listen = "off"
[crowdsec]
lapi_url = "http://127.0.0.1:8080"
api_key = "k"
"#;

fn net(text: &str) -> IpNet {
    text.parse().expect("CIDR")
}

/// A stream answer: `new` and `deleted` as (id, scope, value, duration).
fn answer(new: &[(i64, &str, &str, &str)], deleted: &[(i64, &str, &str)]) -> DecisionBatch {
    let list = |items: Vec<String>| format!("[{}]", items.join(","));
    let body = format!(
        r#"{{"new":{},"deleted":{}}}"#,
        list(
            new.iter()
                .map(|(id, scope, value, duration)| format!(
                    r#"{{"id":{id},"origin":"cscli","scope":"{scope}","type":"ban","value":"{value}","duration":"{duration}"}}"#
                ))
                .collect()
        ),
        list(
            deleted
                .iter()
                .map(|(id, scope, value)| format!(
                    r#"{{"id":{id},"origin":"cscli","scope":"{scope}","type":"ban","value":"{value}","duration":"-1s"}}"#
                ))
                .collect()
        ),
    );
    parse_stream(body.as_bytes(), &DecisionFilter::everything()).expect("valid answer")
}

fn setup(name: &str) -> (TempDir, FakeDataplane, Arc<TestClock>, Engine) {
    let dir = TempDir::new(name);
    let kernel = FakeDataplane::new(6);
    let clock = TestClock::new();
    let engine = engine_with(&dir, POLICY, &kernel, &clock);
    (dir, kernel, clock, engine)
}

fn ban(kernel: &FakeDataplane, cidr: &str) -> Option<BanEntry> {
    kernel.tables().bans.get(&ban_key(&net(cidr))).copied()
}

fn installed_config(kernel: &FakeDataplane) -> firewall_common::config::KernelConfig {
    kernel
        .tables()
        .installed
        .as_ref()
        .expect("installed")
        .config
}

#[test]
fn decisions_become_bans_lasting_their_duration_marked_as_crowdsecs() {
    let (dir, kernel, clock, mut engine) = setup("cs-apply");
    assert_eq!(installed_config(&kernel).flags & CONFIG_BANS, 0);
    let now = clock.monotonic_ns().expect("clock");
    let sync = engine
        .crowdsec_apply(
            answer(
                &[
                    (1, "Ip", "203.0.113.77", "1h59m59.84s"),
                    (2, "Range", "198.51.100.0/24", "4h"),
                    (3, "Ip", "2001:db8::1", "150ms"),
                ],
                &[],
            ),
            true,
        )
        .expect("applied");
    assert_eq!(
        sync,
        CrowdsecSync {
            added: 3,
            held: 3,
            ..CrowdsecSync::default()
        }
    );
    let host = ban(&kernel, "203.0.113.77/32").expect("host banned");
    assert_eq!(host.rule, CROWDSEC_BAN_RULE);
    assert_eq!(host.kind, BAN_HOST);
    assert_eq!(
        host.expires_ns - now,
        7_199_840_000_000,
        "TTL from the duration"
    );
    let range = ban(&kernel, "198.51.100.0/24").expect("range banned");
    assert_eq!(range.kind, BAN_SUBNET);
    assert_eq!(range.expires_ns - now, 4 * 3600 * SECOND_NS);
    assert_eq!(
        ban(&kernel, "2001:db8::1/128").expect("v6").expires_ns - now,
        150_000_000
    );
    // The ban check is on, and probes /24.
    let config = installed_config(&kernel);
    assert_ne!(config.flags & CONFIG_BANS, 0);
    assert_eq!(config.ban_v4_lengths, 1 << 24);
    // `apifw bans` says where they come from; the audit log has the sync; no state file entry.
    let rows = engine.bans().expect("bans");
    assert!(
        rows.iter()
            .all(|row| row.rule == CROWDSEC_BAN_RULE && row.reason == "CrowdSec decision"),
        "{rows:?}"
    );
    let audit = std::fs::read_to_string(dir.join("audit.log")).expect("audit");
    assert!(audit.contains("\"crowdsec.sync\""), "{audit}");
    assert!(audit.contains("203.0.113.77/32"), "{audit}");
    let state = std::fs::read_to_string(dir.join("apifw.state.json")).unwrap_or_default();
    assert!(
        !state.contains("203.0.113.77"),
        "CrowdSec bans are not persisted"
    );
    let status = engine.status().crowdsec.expect("LAPI link in status");
    assert_eq!(status.decisions, 3);
    assert_eq!(status.syncs, 1);
    assert_eq!(status.last_sync_secs_ago, Some(0));

    // Expiry in XDP is exact; the tick's sweep then forgets it, in one audit record.
    clock.advance(1);
    engine.tick();
    assert!(ban(&kernel, "2001:db8::1/128").is_none());
    assert_eq!(engine.crowdsec_held(), 2);
    let audit = std::fs::read_to_string(dir.join("audit.log")).expect("audit");
    assert!(
        audit.contains("\"crowdsec.expire\"") && audit.contains("2001:db8::1/128"),
        "{audit}"
    );
    assert!(!audit.contains("\"ban.expire\""), "{audit}");
}

#[test]
fn deltas_add_and_lift_and_a_decision_seen_twice_is_written_once() {
    let (dir, kernel, _clock, mut engine) = setup("cs-deltas");
    engine
        .crowdsec_apply(answer(&[(1, "Ip", "203.0.113.77", "1h")], &[]), true)
        .expect("applied");
    let first = ban(&kernel, "203.0.113.77/32").expect("banned");
    // The same decision again (a startup answer after a LAPI outage), and a second decision on
    // the same address with a shorter time: nothing to write.
    let sync = engine
        .crowdsec_apply(
            answer(
                &[
                    (1, "Ip", "203.0.113.77", "59m59.9s"),
                    (2, "Ip", "203.0.113.77", "10m"),
                ],
                &[],
            ),
            false,
        )
        .expect("applied");
    assert_eq!(sync.added + sync.updated, 0, "{sync:?}");
    assert_eq!(ban(&kernel, "203.0.113.77/32"), Some(first));
    // Deleting decision 1 leaves decision 2's ban, now ending with it.
    let sync = engine
        .crowdsec_apply(answer(&[], &[(1, "Ip", "203.0.113.77")]), false)
        .expect("applied");
    assert_eq!(sync.updated, 1);
    let shorter = ban(&kernel, "203.0.113.77/32").expect("still banned");
    assert_eq!(shorter.expires_ns - shorter.banned_at_ns, 600 * SECOND_NS);
    // Deleting decision 2 lifts it.
    let sync = engine
        .crowdsec_apply(answer(&[], &[(2, "Ip", "203.0.113.77")]), false)
        .expect("applied");
    assert_eq!(sync.removed, 1);
    assert!(ban(&kernel, "203.0.113.77/32").is_none());
    assert_eq!(engine.crowdsec_held(), 0);
    let audit = std::fs::read_to_string(dir.join("audit.log")).expect("audit");
    assert_eq!(audit.matches("\"crowdsec.sync\"").count(), 3, "{audit}");
}

#[test]
fn a_full_resync_lifts_what_the_lapi_no_longer_has() {
    let (_dir, kernel, _clock, mut engine) = setup("cs-resync");
    engine
        .crowdsec_apply(
            answer(
                &[
                    (1, "Ip", "203.0.113.77", "1h"),
                    (2, "Ip", "203.0.113.78", "1h"),
                ],
                &[],
            ),
            true,
        )
        .expect("applied");
    // Decision 2 was deleted while the LAPI was unreachable: the startup answer lacks it.
    let sync = engine
        .crowdsec_apply(answer(&[(1, "Ip", "203.0.113.77", "1h")], &[]), true)
        .expect("applied");
    assert_eq!(sync.removed, 1);
    assert!(ban(&kernel, "203.0.113.77/32").is_some());
    assert!(ban(&kernel, "203.0.113.78/32").is_none());
}

#[test]
fn allowlisted_sources_are_never_banned() {
    let (dir, kernel, _clock, mut engine) = setup("cs-allow");
    let sync = engine
        .crowdsec_apply(
            answer(
                &[
                    (1, "Ip", "203.0.113.7", "1h"),
                    (2, "Range", "192.0.2.128/25", "1h"),
                    (3, "Ip", "192.0.2.9", "1h"),
                    // Overlaps the allowlisted 203.0.113.7 without lying inside it: enforced,
                    // and the program's allowlist-first order keeps .7 passing.
                    (4, "Range", "203.0.113.0/24", "1h"),
                ],
                &[],
            ),
            true,
        )
        .expect("applied");
    assert_eq!(sync.allowlisted, 3);
    assert_eq!(sync.added, 1);
    assert!(ban(&kernel, "203.0.113.7/32").is_none());
    assert!(ban(&kernel, "192.0.2.128/25").is_none());
    assert!(ban(&kernel, "203.0.113.0/24").is_some());
    let allowlisted = engine.shared().lock().expect("shared").crowdsec.clone();
    assert_eq!(
        allowlisted.expect("metrics").skipped.get("allowlisted"),
        Some(&3)
    );
    // A runtime allow entry counts too.
    engine
        .list_add(
            ListKind::Allow,
            vec![net("198.51.100.5/32")],
            EntryMeta::default(),
            "uid 0",
            ("allow.add", json!({})),
        )
        .expect("allowed");
    let sync = engine
        .crowdsec_apply(answer(&[(5, "Ip", "198.51.100.5", "1h")], &[]), false)
        .expect("applied");
    assert_eq!(sync.allowlisted, 1);
    assert!(ban(&kernel, "198.51.100.5/32").is_none());
    let audit = std::fs::read_to_string(dir.join("audit.log")).expect("audit");
    assert!(
        audit.contains("\"allowlisted\":[\"198.51.100.5/32\"]"),
        "{audit}"
    );
}

#[test]
fn a_sync_the_ban_map_cannot_hold_changes_nothing() {
    let (_dir, kernel, _clock, mut engine) = setup("cs-full");
    engine
        .crowdsec_apply(answer(&[(1, "Ip", "203.0.113.1", "1h")], &[]), true)
        .expect("applied");
    let before = kernel.tables().bans.clone();
    let config = installed_config(&kernel);
    // Six entries fit; this answer would make seven, with a new range length too.
    let err = engine
        .crowdsec_apply(
            answer(
                &[
                    (2, "Ip", "203.0.113.2", "1h"),
                    (3, "Ip", "203.0.113.3", "1h"),
                    (4, "Ip", "203.0.113.4", "1h"),
                    (5, "Ip", "203.0.113.5", "1h"),
                    (6, "Ip", "203.0.113.6", "1h"),
                    (7, "Range", "10.0.0.0/8", "1h"),
                ],
                &[],
            ),
            false,
        )
        .expect_err("does not fit");
    assert!(matches!(err, EngineError::Full(_)), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("limits.max_bans = 6"), "{message}");
    assert!(
        message.contains("nothing of this sync was applied"),
        "{message}"
    );
    assert_eq!(kernel.tables().bans, before);
    assert_eq!(installed_config(&kernel), config);
    assert_eq!(engine.crowdsec_held(), 1);
}

#[test]
fn a_kernel_refusal_half_way_is_rolled_back() {
    let (_dir, kernel, _clock, mut engine) = setup("cs-rollback");
    engine
        .crowdsec_apply(answer(&[(1, "Ip", "203.0.113.1", "1h")], &[]), true)
        .expect("applied");
    let before = kernel.tables().bans.clone();
    // The kernel's map shrinks behind the engine's back (a rule ban fills it meanwhile).
    kernel.tables().max_bans = 2;
    let err = engine
        .crowdsec_apply(
            answer(
                &[
                    (1, "Ip", "203.0.113.1", "2h"),
                    (2, "Ip", "203.0.113.2", "1h"),
                    (3, "Ip", "203.0.113.3", "1h"),
                ],
                &[],
            ),
            false,
        )
        .expect_err("the kernel refuses the third");
    assert!(matches!(err, EngineError::Full(_)), "{err:?}");
    assert_eq!(
        kernel.tables().bans,
        before,
        "the refreshed ban is restored too"
    );
    assert_eq!(engine.crowdsec_held(), 1);
}

#[test]
fn a_restarted_daemon_keeps_enforcing_until_the_first_sync_says_otherwise() {
    let (dir, kernel, clock, mut engine) = setup("cs-restart");
    engine
        .crowdsec_apply(
            answer(
                &[
                    (1, "Range", "198.51.100.0/24", "1h"),
                    (2, "Ip", "203.0.113.9", "1h"),
                ],
                &[],
            ),
            true,
        )
        .expect("applied");
    drop(engine);
    // The pinned ban map outlives the daemon; the new one takes the bans back and keeps the
    // ban check (with /24) on before it has reached the LAPI.
    kernel.tables().installed = None;
    let mut engine = engine_with(&dir, POLICY, &kernel, &clock);
    assert_eq!(engine.crowdsec_held(), 2);
    let config = installed_config(&kernel);
    assert_ne!(config.flags & CONFIG_BANS, 0);
    assert_eq!(config.ban_v4_lengths, 1 << 24);
    // The startup answer still has the range; the host's decision was deleted meanwhile.
    let sync = engine
        .crowdsec_apply(answer(&[(1, "Range", "198.51.100.0/24", "1h")], &[]), true)
        .expect("applied");
    assert_eq!(
        (sync.added, sync.updated, sync.removed),
        (0, 0, 1),
        "{sync:?}"
    );
    assert!(ban(&kernel, "198.51.100.0/24").is_some());
    assert!(ban(&kernel, "203.0.113.9/32").is_none());
}

#[test]
fn a_manual_ban_outlasting_a_crowdsec_one_is_kept() {
    let (_dir, kernel, _clock, mut engine) = setup("cs-manual");
    engine
        .ban_add(vec![net("203.0.113.50/32")], 7200, None, "uid 0")
        .expect("manual ban");
    let manual = ban(&kernel, "203.0.113.50/32").expect("banned");
    engine
        .crowdsec_apply(
            answer(
                &[
                    (1, "Ip", "203.0.113.50", "1h"),
                    (2, "Ip", "203.0.113.51", "1h"),
                ],
                &[],
            ),
            true,
        )
        .expect("applied");
    assert_eq!(
        ban(&kernel, "203.0.113.50/32"),
        Some(manual),
        "the longer manual ban stays as it was"
    );
    // Lifting the CrowdSec decision leaves the manual ban.
    engine
        .crowdsec_apply(answer(&[], &[(1, "Ip", "203.0.113.50")]), false)
        .expect("applied");
    assert_eq!(ban(&kernel, "203.0.113.50/32"), Some(manual));
    // A CrowdSec ban outlasting a manual one takes over, and when it is lifted the manual ban
    // comes back.
    engine
        .ban_add(vec![net("203.0.113.52/32")], 60, None, "uid 0")
        .expect("manual ban");
    engine
        .crowdsec_apply(answer(&[(3, "Ip", "203.0.113.52", "1h")], &[]), false)
        .expect("applied");
    assert_eq!(
        ban(&kernel, "203.0.113.52/32").expect("banned").rule,
        CROWDSEC_BAN_RULE
    );
    engine
        .crowdsec_apply(answer(&[], &[(3, "Ip", "203.0.113.52")]), false)
        .expect("applied");
    let restored = ban(&kernel, "203.0.113.52/32").expect("the manual ban is back");
    assert_eq!(restored.rule, MANUAL_BAN_RULE);
    assert_eq!(restored.expires_ns - restored.banned_at_ns, 60 * SECOND_NS);
    // A shorter manual ban written over a CrowdSec one (`apifw ban add` replaces the entry) is
    // lengthened again by the next sync that carries the decision.
    engine
        .ban_add(vec![net("203.0.113.51/32")], 60, None, "uid 0")
        .expect("manual ban");
    let sync = engine
        .crowdsec_apply(answer(&[(2, "Ip", "203.0.113.51", "1h")], &[]), true)
        .expect("applied");
    assert_eq!(sync.updated, 1, "{sync:?}");
    assert_eq!(
        ban(&kernel, "203.0.113.51/32").expect("banned").rule,
        CROWDSEC_BAN_RULE
    );
}
