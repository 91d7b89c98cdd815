//! The agent side in the engine, over the in-memory dataplane: which bans are queued for the
//! LAPI (a jail's and a report's, the rate limiter's only with its setting; never CrowdSec's,
//! a manual one or an allowlisted source), the bounded queue, failures, and a pushed ban that
//! comes back through the decision stream applied once.

use super::*;
use crate::{
    crowdsec::{DecisionBatch, DecisionFilter, alerts::alerts_body, parse_stream},
    dataplane::{bans::CROWDSEC_BAN_RULE, fake::FakeDataplane},
    engine::testing::{SECOND_NS, TestClock, engine_with},
    store::audit,
    test_dir::TempDir,
};

fn policy(push: &str) -> String {
    format!(
        r#"
interfaces = ["lo"]
[allow]
cidrs = ["203.0.113.7/32", "198.18.0.0/16"]
[limits]
max_v4_prefixes = 64
max_v6_prefixes = 64
max_tracked_sources = 64
max_tracked_subnets = 64
max_bans = 16
[metrics]
listen = "off"
[[rule]]
name = "api"
protocol = "tcp"
ports = [443]
per_source = {{ packets_per_second = 100, burst_packets = 200 }}
on_exceed = "ban"
ban_after = "5s"
ban_ttl = "10m"
[[jail]]
name = "reports"
max_retry = 2
find_time = "10m"
ban_time = "1h"
[crowdsec]
lapi_url = "http://127.0.0.1:8080"
api_key = "k"
{push}
"#
    )
}

const CREDENTIALS: &str = "machine_id = \"apifw-test\"\npassword = \"pw\"";

fn setup(name: &str, push: &str) -> (TempDir, FakeDataplane, Arc<TestClock>, Engine) {
    let dir = TempDir::new(name);
    let kernel = FakeDataplane::new(16);
    let clock = TestClock::new();
    let engine = engine_with(&dir, &policy(push), &kernel, &clock);
    (dir, kernel, clock, engine)
}

fn net(text: &str) -> IpNet {
    text.parse().expect("CIDR")
}

fn report(engine: &mut Engine, source: &str) {
    let source: IpAddr = source.parse().expect("address");
    for _ in 0..2 {
        engine
            .report(source, "bad token", 1, Some("reports"), "uid 0")
            .expect("counted");
    }
}

fn queued(engine: &mut Engine) -> Vec<BanToPush> {
    engine
        .crowdsec_push_batch(usize::MAX)
        .map(|batch| batch.bans)
        .unwrap_or_default()
}

fn push_metrics(engine: &Engine) -> CrowdsecPushMetrics {
    let shared = engine.shared();
    let shared = shared.lock().expect("shared");
    shared
        .crowdsec
        .as_ref()
        .and_then(|crowdsec| crowdsec.push.clone())
        .expect("push metrics")
}

/// A rate limiter's ban, as the XDP program writes it: the rule's slot, made `age` seconds ago,
/// lasting `ttl` seconds.
fn rate_limit_ban(engine: &Engine, kernel: &FakeDataplane, clock: &TestClock, cidr: &str) {
    let slot = *engine.slots.get("api").expect("the rule's slot");
    let now = clock.monotonic_ns().expect("clock");
    let prefix = net(cidr);
    let kind = if is_host(&prefix) {
        BAN_HOST
    } else {
        BAN_SUBNET
    };
    kernel.tables().bans.insert(
        ban_key(&prefix),
        BanEntry::new(now - 20 * SECOND_NS, 600 * SECOND_NS, slot, kind),
    );
}

/// What the LAPI's stream answers for pushed bans: a decision ending at `stop_at + duration`
/// (`CreateAlertBulk`), its remaining time as of `now_unix` plus `skew_ms` (the LAPI's clock
/// ahead of this host's when positive).
fn stream_of(bans: &[BanToPush], now_unix: u64, skew_ms: i64, first_id: i64) -> DecisionBatch {
    let alerts: serde_json::Value =
        serde_json::from_slice(&alerts_body(bans)).expect("the pushed JSON");
    let new: Vec<serde_json::Value> = alerts
        .as_array()
        .expect("alerts")
        .iter()
        .zip(first_id..)
        .map(|(alert, id)| {
            let decision = &alert["decisions"][0];
            let stop =
                crate::crowdsec::alerts::parse_rfc3339(alert["stop_at"].as_str().expect("stop_at"))
                    .expect("RFC 3339");
            let duration: i64 = decision["duration"]
                .as_str()
                .and_then(|text| text.strip_suffix('s'))
                .and_then(|secs| secs.parse().ok())
                .expect("a duration in seconds");
            let left_ms = (stop as i64 + duration - now_unix as i64) * 1000 - skew_ms;
            serde_json::json!({
                "id": id, "origin": decision["origin"], "scenario": decision["scenario"],
                "scope": decision["scope"], "type": decision["type"],
                "value": decision["value"], "duration": format!("{left_ms}ms"),
            })
        })
        .collect();
    let body = serde_json::json!({"new": new, "deleted": null}).to_string();
    parse_stream(body.as_bytes(), &DecisionFilter::everything()).expect("a valid answer")
}

#[test]
fn a_jail_ban_is_queued_ending_when_it_does_but_never_an_allowlisted_source() {
    let (_dir, _kernel, clock, mut engine) = setup("push-jail", CREDENTIALS);
    report(&mut engine, "198.51.100.23");
    report(&mut engine, "203.0.113.7");
    let bans = queued(&mut engine);
    assert_eq!(
        bans,
        [BanToPush {
            prefix: net("198.51.100.23/32"),
            scenario: "apifw/jail-reports".into(),
            message: "apifw jail reports: 2 matches within 600s (ban #1)".into(),
            events_count: 2,
            started_unix: clock.unix_secs(),
            duration_secs: 3600,
        }],
        "the allowlisted source was neither banned nor queued"
    );
    let record = engine
        .runtime
        .get_ban(&net("198.51.100.23/32"))
        .expect("the jail's ban");
    assert_eq!(bans[0].ends_unix(), record.expires_at);
    assert_eq!(push_metrics(&engine).queued, 1);
}

#[test]
fn crowdsec_and_manual_bans_are_never_queued_nor_anything_without_the_setting() {
    let (_dir, _kernel, _clock, mut engine) = setup("push-not", CREDENTIALS);
    let answer = br#"{"new":[{"id":1,"origin":"apifw","scenario":"apifw/jail-web","scope":"Ip","type":"ban","value":"192.0.2.50","duration":"1h"}],"deleted":null}"#;
    engine
        .crowdsec_apply(
            parse_stream(answer, &DecisionFilter::everything()).expect("answer"),
            true,
        )
        .expect("applied");
    engine
        .ban_add(vec![net("192.0.2.51/32")], 600, None, "uid 0")
        .expect("manual ban");
    engine.tick();
    assert!(queued(&mut engine).is_empty());

    let (_dir, _kernel, _clock, mut engine) = setup(
        "push-off",
        &format!("{CREDENTIALS}\npush_jail_bans = false"),
    );
    report(&mut engine, "198.51.100.23");
    assert!(queued(&mut engine).is_empty(), "push_jail_bans = false");

    let (_dir, _kernel, _clock, mut engine) = setup("push-none", "");
    report(&mut engine, "198.51.100.23");
    assert!(queued(&mut engine).is_empty(), "no machine credentials");
    assert_eq!(engine.status().crowdsec.expect("link").push, None);
}

#[test]
fn rate_limit_bans_are_queued_only_with_their_setting() {
    let (_dir, kernel, clock, mut engine) = setup("push-rl-off", CREDENTIALS);
    rate_limit_ban(&engine, &kernel, &clock, "192.0.2.60/32");
    engine.tick();
    assert!(queued(&mut engine).is_empty(), "off by default");

    let (_dir, kernel, clock, mut engine) = setup(
        "push-rl-on",
        &format!("{CREDENTIALS}\npush_rate_limit_bans = true"),
    );
    rate_limit_ban(&engine, &kernel, &clock, "192.0.2.60/32");
    rate_limit_ban(&engine, &kernel, &clock, "2001:db8:60::/64");
    // Wholly inside the allowlist (added after the ban was made): not pushed.
    rate_limit_ban(&engine, &kernel, &clock, "198.18.5.0/24");
    engine.tick();
    let mut bans = queued(&mut engine);
    bans.sort_by_key(|ban| ban.prefix);
    let now = clock.unix_secs();
    assert_eq!(bans.len(), 2, "{bans:?}");
    assert_eq!(bans[0].prefix, net("192.0.2.60/32"));
    assert_eq!(bans[0].scenario, "apifw/rate-limit-api");
    assert_eq!(
        bans[0].message,
        "apifw rule api: host banned by the XDP rate limiter"
    );
    // Made 20 s ago for 600 s: it ends where the kernel's ban does.
    assert_eq!(
        (bans[0].started_unix, bans[0].duration_secs),
        (now - 20, 600)
    );
    assert_eq!(bans[1].prefix, net("2001:db8:60::/64"));
    // Seen once: the next tick queues nothing more.
    engine.tick();
    assert_eq!(queued(&mut engine).len(), 2);
}

#[test]
fn the_queue_is_bounded_and_its_overflow_counted_never_refusing_a_ban() {
    let (_dir, kernel, clock, mut engine) = setup("push-full", CREDENTIALS);
    let ban = |n: u32| BanToPush {
        prefix: IpNet::from(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n))),
        scenario: "apifw/jail-web".into(),
        message: "m".into(),
        events_count: 1,
        started_unix: clock.unix_secs(),
        duration_secs: 60,
    };
    for n in 0..PUSH_QUEUE_CAPACITY as u32 + 5 {
        engine.queue_push(ban(n));
    }
    assert_eq!(engine.crowdsec_push_queued(), PUSH_QUEUE_CAPACITY);
    let metrics = push_metrics(&engine);
    assert_eq!(metrics.dropped.get("queue_full"), Some(&5));
    assert_eq!(metrics.queued, PUSH_QUEUE_CAPACITY as u64);
    // A jail still bans with the queue full.
    report(&mut engine, "198.51.100.23");
    assert!(
        kernel
            .tables()
            .bans
            .contains_key(&ban_key(&net("198.51.100.23/32")))
    );
    assert_eq!(push_metrics(&engine).dropped.get("queue_full"), Some(&6));
    // The oldest go first; what the LAPI took leaves the queue.
    let batch = engine.crowdsec_push_batch(100).expect("a batch");
    assert_eq!(batch.bans[0], ban(0));
    assert_eq!(batch.bans.len(), 100);
    assert!(batch.more);
    engine.crowdsec_pushed(batch.through, &["1".into()]);
    assert_eq!(engine.crowdsec_push_queued(), PUSH_QUEUE_CAPACITY - 100);
    let next = engine.crowdsec_push_batch(1).expect("a batch");
    assert_eq!(next.bans, [ban(100)]);
    let metrics = push_metrics(&engine);
    assert_eq!(metrics.pushed, 100);
    // With room again, a new ban is queued.
    engine.queue_push(ban(99_999));
    assert_eq!(engine.crowdsec_push_queued(), PUSH_QUEUE_CAPACITY - 99);
}

#[test]
fn a_failed_push_keeps_its_bans_a_rejected_one_drops_them_and_expired_ones_go() {
    let (dir, _kernel, clock, mut engine) = setup("push-fail", CREDENTIALS);
    report(&mut engine, "198.51.100.23");
    report(&mut engine, "198.51.100.24");
    let batch = engine.crowdsec_push_batch(1).expect("a batch");
    for _ in 0..3 {
        engine.crowdsec_push_failed("connect", "cannot connect".into(), None);
    }
    assert_eq!(engine.crowdsec_push_queued(), 2, "kept for the next try");
    let status = engine.status().crowdsec.expect("link").push.expect("push");
    assert_eq!(
        (status.errors, status.queued, status.pushed),
        (3, 2, 0),
        "{status:?}"
    );
    assert_eq!(status.last_error.as_deref(), Some("cannot connect"));
    assert_eq!(status.machine_id, "apifw-test");
    let again = engine.crowdsec_push_batch(1).expect("a batch");
    assert_eq!(again.bans, batch.bans, "the same ban is tried again");
    // Refused as invalid: dropped, counted.
    engine.crowdsec_push_failed("rejected", "HTTP 422".into(), Some(again.through));
    assert_eq!(engine.crowdsec_push_queued(), 1);
    assert_eq!(push_metrics(&engine).dropped.get("rejected"), Some(&1));
    // One audit record per distinct failure, not per retry.
    let records = audit::read(&dir.join("audit.log"), None).expect("audit log");
    let failures: Vec<_> = records
        .iter()
        .filter(|record| record.action == "crowdsec.push_failed")
        .collect();
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert_eq!(failures[1].object["dropped_cidrs"][0], "198.51.100.23/32");
    // A ban that ran out while queued is dropped, not pushed.
    clock.advance(3600);
    assert!(engine.crowdsec_push_batch(10).is_none());
    assert_eq!(engine.crowdsec_push_queued(), 0);
    assert_eq!(push_metrics(&engine).dropped.get("expired"), Some(&1));
}

#[test]
fn a_push_is_audited_and_unbans_and_a_reload_without_credentials_empty_the_queue() {
    let (dir, _kernel, _clock, mut engine) = setup("push-audit", CREDENTIALS);
    report(&mut engine, "198.51.100.23");
    let batch = engine.crowdsec_push_batch(10).expect("a batch");
    engine.crowdsec_pushed(batch.through, &["7".into()]);
    let records = audit::read(&dir.join("audit.log"), None).expect("audit log");
    let push = records
        .iter()
        .find(|record| record.action == "crowdsec.push")
        .expect("a crowdsec.push record");
    assert_eq!(push.object["count"], 1);
    assert_eq!(push.object["cidrs"][0], "198.51.100.23/32");
    assert_eq!(push.object["machine_id"], "apifw-test");
    let status = engine.status().crowdsec.expect("link").push.expect("push");
    assert_eq!((status.pushed, status.last_push_secs_ago), (1, Some(0)));

    // Lifted by hand before it was pushed: not pushed.
    report(&mut engine, "198.51.100.25");
    engine
        .ban_del(vec![net("198.51.100.25/32")], "uid 0")
        .expect("lifted");
    assert_eq!(engine.crowdsec_push_queued(), 0);
    assert_eq!(push_metrics(&engine).dropped.get("lifted"), Some(&1));

    report(&mut engine, "198.51.100.24");
    assert_eq!(engine.crowdsec_push_queued(), 1);
    std::fs::write(dir.join("apifw.toml"), policy("")).expect("write policy");
    engine.reload("test").expect("reloaded");
    assert!(engine.crowdsec_push_batch(10).is_none());
    assert_eq!(engine.crowdsec_push_queued(), 0);
}

#[test]
fn a_pushed_jail_ban_coming_back_through_the_stream_is_applied_once() {
    let (dir, kernel, clock, mut engine) = setup("push-roundtrip", CREDENTIALS);
    report(&mut engine, "198.51.100.23");
    let key = ban_key(&net("198.51.100.23/32"));
    let jail_ban = kernel.tables().bans[&key];
    let pushed = queued(&mut engine);
    clock.advance(5);
    // Back from the LAPI 5 s later, its clock up to a second ahead or behind this host's.
    for (skew_ms, full) in [(0, true), (-900, false), (900, true)] {
        let sync = engine
            .crowdsec_apply(stream_of(&pushed, clock.unix_secs(), skew_ms, 1), full)
            .expect("applied");
        assert_eq!(
            (sync.added, sync.updated, sync.held),
            (0, 0, 1),
            "skew {skew_ms} ms: {sync:?}"
        );
        assert_eq!(
            kernel.tables().bans[&key],
            jail_ban,
            "the jail's ban is neither doubled nor overwritten nor shortened"
        );
    }
    assert_eq!(kernel.tables().bans.len(), 1);
    // The jail's ban expires: nothing of the decision lingers, in the kernel or the engine.
    clock.advance(3600 - 5);
    engine.tick();
    assert!(!kernel.tables().bans.contains_key(&key));
    assert_eq!(engine.crowdsec_held(), 0);
    let records = audit::read(&dir.join("audit.log"), None).expect("audit log");
    assert!(
        records
            .iter()
            .any(|record| record.action == "ban.expire"
                && record.object["cidr"] == "198.51.100.23/32")
    );
    assert!(
        !records
            .iter()
            .any(|record| record.action == "crowdsec.sync"),
        "nothing was written for the decision"
    );
    // Its later deletion in the LAPI changes nothing.
    let deleted = br#"{"new":null,"deleted":[{"id":1,"origin":"apifw","scenario":"apifw/jail-reports","scope":"Ip","type":"ban","value":"198.51.100.23","duration":"-1s"}]}"#;
    let sync = engine
        .crowdsec_apply(
            parse_stream(deleted, &DecisionFilter::everything()).expect("answer"),
            false,
        )
        .expect("applied");
    assert_eq!((sync.added, sync.removed, sync.held), (0, 0, 0));
}

#[test]
fn a_crowdsec_decision_outlasting_a_shorter_jail_ban_takes_over_when_it_expires() {
    let (_dir, kernel, clock, mut engine) = setup("push-outlast", CREDENTIALS);
    let answer = br#"{"new":[{"id":4,"origin":"crowdsec","scenario":"crowdsecurity/ssh-bf","scope":"Ip","type":"ban","value":"198.51.100.23","duration":"2h"}],"deleted":null}"#;
    engine
        .crowdsec_apply(
            parse_stream(answer, &DecisionFilter::everything()).expect("answer"),
            true,
        )
        .expect("applied");
    let key = ban_key(&net("198.51.100.23/32"));
    let decision_ends = kernel.tables().bans[&key].expires_ns;
    // The jail's one-hour ban replaces the entry (as `apifw ban add` does).
    report(&mut engine, "198.51.100.23");
    assert_eq!(kernel.tables().bans[&key].rule, MANUAL_BAN_RULE);
    clock.advance(3600);
    engine.tick();
    let back = kernel.tables().bans[&key];
    assert_eq!(back.rule, CROWDSEC_BAN_RULE, "the decision takes over");
    assert_eq!(back.expires_ns, decision_ends, "for what is left of it");
    assert_eq!(engine.crowdsec_held(), 1);
    // And lapses on its own, forgotten.
    clock.advance(3600);
    engine.tick();
    assert!(!kernel.tables().bans.contains_key(&key));
    assert_eq!(engine.crowdsec_held(), 0);
}
