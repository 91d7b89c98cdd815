//! The bouncer's loop against an in-process fake LAPI (hyper on 127.0.0.1) and an engine over
//! the in-memory dataplane: the stream's startup and delta requests, deletes, TTLs, a 100k
//! answer, and every failure (malformed, hanging, unreachable) leaving enforcement as it was.

use std::time::Instant;

use firewall_common::rules::BanEntry;
use hyper::{StatusCode, body::Bytes};
use ipnet::IpNet;

use super::*;
use crate::{
    crowdsec::fake_lapi::{Answer, FakeLapi},
    dataplane::{bans::CROWDSEC_BAN_RULE, fake::FakeDataplane},
    engine::Clock as _,
    engine::{
        ban_key,
        testing::{SECOND_NS, TestClock, engine_with},
    },
    test_dir::TempDir,
};

fn policy(lapi: &str, max_bans: u32) -> String {
    format!(
        r#"
interfaces = ["lo"]
[allow]
cidrs = ["203.0.113.7/32"]
[limits]
max_v4_prefixes = 64
max_v6_prefixes = 64
max_tracked_sources = 64
max_tracked_subnets = 64
max_bans = {max_bans}
[metrics]
listen = "off"
[crowdsec]
lapi_url = "{lapi}"
api_key = "bouncer-key"
poll_interval = "1s"
timeout = "400ms"
connect_timeout = "300ms"
"#
    )
}

struct Lab {
    _dir: TempDir,
    lapi: FakeLapi,
    kernel: FakeDataplane,
    clock: Arc<TestClock>,
    engine: Mutex<Engine>,
    follower: Follower,
}

async fn lab(name: &str, max_bans: u32) -> Lab {
    let dir = TempDir::new(name);
    let lapi = FakeLapi::start().await;
    let kernel = FakeDataplane::new(max_bans as usize);
    let clock = TestClock::new();
    let engine = engine_with(&dir, &policy(&lapi.url(), max_bans), &kernel, &clock);
    Lab {
        _dir: dir,
        lapi,
        kernel,
        clock,
        engine: Mutex::new(engine),
        follower: Follower::default(),
    }
}

impl Lab {
    async fn round(&mut self) -> Duration {
        self.follower.round(&self.engine).await
    }

    fn ban(&self, cidr: &str) -> Option<BanEntry> {
        let net: IpNet = cidr.parse().expect("CIDR");
        self.kernel.tables().bans.get(&ban_key(&net)).copied()
    }

    fn bans(&self) -> std::collections::HashMap<firewall_common::rules::BanKey, BanEntry> {
        self.kernel.tables().bans.clone()
    }

    async fn status(&self) -> crate::control::CrowdsecStatus {
        self.engine
            .lock()
            .await
            .status()
            .crowdsec
            .expect("LAPI link in status")
    }

    async fn errors(&self) -> std::collections::BTreeMap<&'static str, u64> {
        let engine = self.engine.lock().await;
        let shared = engine.shared();
        let shared = shared.lock().expect("shared");
        shared.crowdsec.as_ref().expect("metrics").errors.clone()
    }
}

fn decision(id: i64, scope: &str, value: &str, duration: &str) -> String {
    format!(
        r#"{{"duration":"{duration}","id":{id},"origin":"cscli","scenario":"manual 'ban' from 'host'","scope":"{scope}","type":"ban","value":"{value}","uuid":"u{id}","simulated":false}}"#
    )
}

fn stream(new: &[String], deleted: &[String]) -> String {
    let list = |items: &[String]| {
        if items.is_empty() {
            "null".to_owned()
        } else {
            format!("[{}]", items.join(","))
        }
    };
    format!(r#"{{"new":{},"deleted":{}}}"#, list(new), list(deleted))
}

#[tokio::test]
async fn the_stream_is_followed_from_startup_through_deltas_and_deletes() {
    let mut lab = lab("cs-follow", 16).await;
    let now = lab.clock.monotonic_ns().expect("clock");
    lab.lapi.answer(stream(
        &[
            decision(1, "Ip", "203.0.113.77", "1h59m59.84s"),
            decision(2, "Range", "2001:db8:77::/48", "3h59m50.123456789s"),
        ],
        &[],
    ));
    assert_eq!(lab.round().await, Duration::from_secs(1), "poll_interval");
    let host = lab.ban("203.0.113.77/32").expect("banned");
    assert_eq!(host.rule, CROWDSEC_BAN_RULE);
    assert_eq!(host.expires_ns - now, 7_199_840_000_000);
    let range = lab.ban("2001:db8:77::/48").expect("banned");
    assert_eq!(range.expires_ns - now, 14_390 * SECOND_NS + 123_456_789);

    lab.lapi.answer(stream(
        &[decision(3, "Ip", "198.51.100.3", "10m")],
        &[decision(1, "Ip", "203.0.113.77", "-2s")],
    ));
    lab.round().await;
    assert!(lab.ban("203.0.113.77/32").is_none(), "deleted");
    assert!(lab.ban("198.51.100.3/32").is_some(), "added");
    assert!(lab.ban("2001:db8:77::/48").is_some(), "untouched");

    let seen = lab.lapi.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].startup() && !seen[1].startup(), "{seen:?}");
    assert!(
        seen.iter()
            .all(|request| request.api_key.as_deref() == Some("bouncer-key"))
    );
    let status = lab.status().await;
    assert_eq!((status.decisions, status.syncs, status.errors), (2, 2, 0));
}

#[tokio::test]
async fn a_malformed_answer_changes_nothing_and_the_next_poll_resyncs() {
    let mut lab = lab("cs-malformed", 16).await;
    lab.lapi
        .answer(stream(&[decision(1, "Ip", "203.0.113.77", "1h")], &[]));
    lab.round().await;
    let before = lab.bans();
    for (body, kind) in [
        "{\"new\":[".to_owned(),
        stream(
            &[
                decision(2, "Ip", "203.0.113.78", "1h"),
                decision(3, "Ip", "203.0.113.999", "1h"),
            ],
            &[],
        ),
        stream(&[decision(4, "Range", "198.51.100.1/24", "1h")], &[]),
        stream(&[decision(5, "Ip", "203.0.113.79", "forever")], &[]),
        stream(&[], &[decision(1, "Ip", "not-an-ip", "-1s")]),
    ]
    .into_iter()
    .zip([
        "invalid_answer",
        "invalid_value",
        "host_bits",
        "invalid_duration",
        "invalid_value",
    ]) {
        lab.lapi.answer(body.clone());
        lab.round().await;
        assert_eq!(lab.bans(), before, "{body}: nothing applied");
        assert!(lab.errors().await.contains_key(kind), "{body}: {kind}");
        let status = lab.status().await;
        assert!(status.last_error.is_some_and(|err| err.contains("refused")));
    }
    // The first malformed answer was a delta; every poll after a failure asks for the whole
    // stream again.
    let seen = lab.lapi.seen();
    assert!(!seen[1].startup(), "{seen:?}");
    assert!(
        seen[2..].iter().all(|request| request.startup()),
        "{seen:?}"
    );
    // A good answer clears the error and resumes deltas.
    lab.lapi.answer(stream(&[], &[]));
    lab.round().await;
    lab.round().await;
    let seen = lab.lapi.seen();
    assert!(!seen[seen.len() - 1].startup());
    assert_eq!(lab.status().await.last_error, None);
}

#[tokio::test]
async fn a_hanging_lapi_times_out_without_holding_up_the_engine() {
    let mut lab = lab("cs-hang", 16).await;
    lab.lapi
        .answer(stream(&[decision(1, "Ip", "203.0.113.77", "1h")], &[]));
    lab.round().await;
    let before = lab.bans();
    lab.lapi.set(vec![Answer::Hang]);
    let started = Instant::now();
    {
        let Lab {
            engine, follower, ..
        } = &mut lab;
        let engine = &*engine;
        let round = follower.round(engine);
        tokio::pin!(round);
        // While the request hangs, the engine answers (the control socket and the tick need it).
        tokio::select! {
            _ = &mut round => panic!("the round ended before the engine was asked"),
            status = async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                engine.lock().await.status()
            } => assert!(status.crowdsec.is_some()),
        }
        round.await;
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(lab.bans(), before, "enforcement unchanged");
    assert_eq!(lab.errors().await.get("timeout"), Some(&1));
    let status = lab.status().await;
    assert!(
        status
            .last_error
            .is_some_and(|err| err.contains("crowdsec.timeout")),
    );
}

#[tokio::test]
async fn bans_outlive_a_lapi_outage_and_sync_resumes_with_a_full_resync() {
    let mut lab = lab("cs-outage", 16).await;
    lab.lapi.answer(stream(
        &[
            decision(1, "Ip", "203.0.113.77", "1h"),
            decision(2, "Ip", "203.0.113.78", "1h"),
        ],
        &[],
    ));
    lab.round().await;
    lab.lapi.set(vec![Answer::Reply(
        StatusCode::SERVICE_UNAVAILABLE,
        Bytes::from_static(b"restarting"),
    )]);
    lab.round().await;
    lab.round().await;
    assert!(lab.ban("203.0.113.77/32").is_some() && lab.ban("203.0.113.78/32").is_some());
    assert_eq!(lab.errors().await.get("status"), Some(&2));
    // Back, and decision 2 was deleted meanwhile: the full answer no longer lists it.
    lab.lapi
        .answer(stream(&[decision(1, "Ip", "203.0.113.77", "59m")], &[]));
    lab.round().await;
    assert!(lab.ban("203.0.113.77/32").is_some());
    assert!(lab.ban("203.0.113.78/32").is_none());
    assert!(lab.lapi.seen().last().expect("a request").startup());
}

#[tokio::test]
async fn a_decision_the_deltas_missed_is_healed_by_the_periodic_full_resync() {
    let mut lab = lab("cs-resync-interval", 16).await;
    lab.lapi
        .answer(stream(&[decision(1, "Ip", "203.0.113.77", "1h")], &[]));
    lab.round().await;
    // Decision 2 is made, but the delta does not carry it (as a LAPI under a bulk import can).
    lab.lapi.answer(stream(&[], &[]));
    lab.round().await;
    assert!(lab.ban("203.0.113.78/32").is_none());
    // The next poll within crowdsec.resync_interval (10 min) is a delta; the first after it asks
    // for everything.
    lab.lapi.answer(stream(
        &[
            decision(1, "Ip", "203.0.113.77", "59m"),
            decision(2, "Ip", "203.0.113.78", "1h"),
        ],
        &[],
    ));
    lab.follower.last_full = Some(Instant::now() - Duration::from_secs(599));
    lab.round().await;
    assert!(!lab.lapi.seen().last().expect("a request").startup());
    lab.follower.last_full = Some(Instant::now() - Duration::from_secs(600));
    lab.round().await;
    assert!(lab.lapi.seen().last().expect("a request").startup());
    assert!(lab.ban("203.0.113.78/32").is_some(), "healed");
    assert!(lab.ban("203.0.113.77/32").is_some());
}

#[tokio::test]
async fn allowlisted_sources_are_skipped_and_the_rest_applied() {
    let mut lab = lab("cs-allowlisted", 16).await;
    lab.lapi.answer(stream(
        &[
            decision(1, "Ip", "203.0.113.7", "1h"),
            decision(2, "Ip", "203.0.113.8", "1h"),
        ],
        &[],
    ));
    lab.round().await;
    assert!(lab.ban("203.0.113.7/32").is_none());
    assert!(lab.ban("203.0.113.8/32").is_some());
}

#[tokio::test]
async fn a_community_blocklist_of_100k_decisions_is_applied_in_one_sync() {
    let mut lab = lab("cs-100k", 200_000).await;
    // Make the fake LAPI's timeout generous for a debug build.
    {
        let dir_policy = policy(&lab.lapi.url(), 200_000).replace("400ms", "30s");
        let engine = lab.engine.get_mut();
        std::fs::write(engine.policy_path(), dir_policy).expect("policy");
        engine.reload("test").expect("reload");
    }
    let decisions: Vec<String> = (0..100_000u32)
        .map(|i| {
            let [_, b, c, d] = i.to_be_bytes();
            if i % 100 == 0 {
                decision(
                    i64::from(i),
                    "Range",
                    &format!("1{b}.{c}.{d}.0/24"),
                    "167h59m58.5s",
                )
            } else {
                decision(
                    i64::from(i),
                    "Ip",
                    &format!("100.{b}.{c}.{d}"),
                    "167h59m58.5s",
                )
            }
        })
        .collect();
    let body = stream(&decisions, &[]);
    lab.lapi.answer(body.clone());
    let started = Instant::now();
    lab.round().await;
    let took = started.elapsed();
    assert_eq!(lab.errors().await, Default::default());
    assert_eq!(lab.bans().len(), 100_000);
    assert_eq!(lab.status().await.decisions, 100_000);
    eprintln!(
        "100k decisions ({} bytes) fetched, checked and applied in {took:?} (debug build, \
         in-memory dataplane)",
        body.len()
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
    // The same answer again (a resync) writes nothing.
    let before = lab.bans();
    lab.follower = Follower::default();
    lab.round().await;
    assert_eq!(lab.bans(), before);
    // `cscli decisions delete --all`: a delta deleting every one.
    let deleted: Vec<String> = decisions
        .iter()
        .map(|decision| decision.replace("167h59m58.5s", "-1s"))
        .collect();
    lab.lapi.answer(stream(&[], &deleted));
    let started = Instant::now();
    lab.round().await;
    eprintln!("100k deletions applied in {:?}", started.elapsed());
    assert_eq!(lab.errors().await, Default::default());
    assert!(lab.bans().is_empty());
    assert_eq!(lab.status().await.decisions, 0);
}

#[tokio::test]
async fn removing_the_section_lifts_the_crowdsec_bans() {
    let mut lab = lab("cs-removed", 16).await;
    lab.lapi
        .answer(stream(&[decision(1, "Ip", "203.0.113.77", "1h")], &[]));
    lab.round().await;
    assert!(lab.ban("203.0.113.77/32").is_some());
    {
        let engine = lab.engine.get_mut();
        let text = std::fs::read_to_string(engine.policy_path()).expect("policy");
        let without = text.split("[crowdsec]").next().expect("head").to_owned();
        std::fs::write(engine.policy_path(), without).expect("policy");
        engine.reload("test").expect("reload");
    }
    assert_eq!(lab.round().await, IDLE);
    assert!(lab.ban("203.0.113.77/32").is_none());
    assert_eq!(lab.engine.lock().await.crowdsec_held(), 0);
}

/// `cscli` with `args`, which must succeed.
fn cscli(args: &[&str]) {
    let output = std::process::Command::new("cscli")
        .args(args)
        .output()
        .expect("run cscli");
    assert!(
        output.status.success(),
        "cscli {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The loop against a real LAPI on this machine (Debian's `crowdsec`, started as
/// `deploy/crowdsec/LAB-NOTES.md` says), driven with `cscli`: a decision added is banned for its
/// duration, a range too, a deleted one lifted. Needs root (cscli), `APIFW_LAPI_URL` and
/// `APIFW_LAPI_KEY`; run with `--ignored`.
#[tokio::test]
#[ignore = "needs a running CrowdSec LAPI and cscli (APIFW_LAPI_URL, APIFW_LAPI_KEY)"]
async fn a_real_lapi_is_followed() {
    let url = std::env::var("APIFW_LAPI_URL").expect("APIFW_LAPI_URL");
    let key = std::env::var("APIFW_LAPI_KEY").expect("APIFW_LAPI_KEY");
    let dir = TempDir::new("cs-real");
    let kernel = FakeDataplane::new(1024);
    let clock = TestClock::new();
    let text = policy(&url, 1024)
        .replace("bouncer-key", &key)
        .replace("400ms", "10s");
    let engine = Mutex::new(engine_with(&dir, &text, &kernel, &clock));
    let mut follower = Follower::default();
    let banned = |cidr: &str| {
        let net: IpNet = cidr.parse().expect("CIDR");
        kernel.tables().bans.get(&ban_key(&net)).copied()
    };
    follower.round(&engine).await;
    cscli(&[
        "decisions",
        "add",
        "--ip",
        "192.0.2.177",
        "--duration",
        "2h",
    ]);
    cscli(&[
        "decisions",
        "add",
        "--range",
        "2001:db8:177::/48",
        "--duration",
        "30m",
    ]);
    let started = Instant::now();
    follower.round(&engine).await;
    eprintln!("decisions applied {:?} after cscli", started.elapsed());
    let host = banned("192.0.2.177/32").expect("the added decision is banned");
    let ttl = host.expires_ns - host.banned_at_ns;
    assert!(
        (7_100 * SECOND_NS..=7_200 * SECOND_NS).contains(&ttl),
        "TTL {ttl} ns"
    );
    assert!(banned("2001:db8:177::/48").is_some(), "the range is banned");
    cscli(&["decisions", "delete", "--ip", "192.0.2.177"]);
    cscli(&["decisions", "delete", "--range", "2001:db8:177::/48"]);
    follower.round(&engine).await;
    assert!(banned("192.0.2.177/32").is_none(), "deleted: lifted");
    assert!(banned("2001:db8:177::/48").is_none(), "deleted: lifted");
    let status = engine.lock().await.status().crowdsec.expect("status");
    assert_eq!(status.errors, 0, "{status:?}");
}
