//! The push loop against the in-process fake LAPI and an engine over the in-memory dataplane:
//! a jail's ban pushed and coming back through the bouncer's stream applied once, a LAPI down
//! or refusing (kept and retried with backoff), invalid alerts dropped, and the task woken by a
//! queued ban.

use std::net::IpAddr;

use hyper::StatusCode;
use ipnet::IpNet;

use super::*;
use crate::{
    crowdsec::fake_lapi::{Answer, FakeLapi, MACHINE_ID, PASSWORD},
    daemon::crowdsec::Follower,
    dataplane::{bans::MANUAL_BAN_RULE, fake::FakeDataplane},
    engine::{
        Clock as _, ban_key,
        testing::{TestClock, engine_with},
    },
    store::audit,
    test_dir::TempDir,
};

fn policy(lapi: &str, password: &str) -> String {
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
max_bans = 256
[metrics]
listen = "off"
[[jail]]
name = "app-reports"
max_retry = 2
find_time = "10m"
ban_time = "1h"
[crowdsec]
lapi_url = "{lapi}"
api_key = "bouncer-key"
poll_interval = "1s"
timeout = "400ms"
connect_timeout = "300ms"
machine_id = "{MACHINE_ID}"
password = "{password}"
"#
    )
}

struct Lab {
    dir: TempDir,
    lapi: FakeLapi,
    kernel: FakeDataplane,
    clock: Arc<TestClock>,
    engine: Arc<Mutex<Engine>>,
    pusher: Pusher,
}

async fn lab(name: &str, password: &str) -> Lab {
    let dir = TempDir::new(name);
    let lapi = FakeLapi::start().await;
    let kernel = FakeDataplane::new(256);
    let clock = TestClock::new();
    let engine = engine_with(&dir, &policy(&lapi.url(), password), &kernel, &clock);
    Lab {
        dir,
        lapi,
        kernel,
        clock,
        engine: Arc::new(Mutex::new(engine)),
        pusher: Pusher::default(),
    }
}

impl Lab {
    async fn report(&self, source: &str) {
        let source: IpAddr = source.parse().expect("address");
        let mut engine = self.engine.lock().await;
        for _ in 0..2 {
            engine
                .report(source, "replayed JWT", 1, None, "uid 0")
                .expect("counted");
        }
    }

    async fn push_status(&self) -> crate::control::CrowdsecPushStatus {
        self.engine
            .lock()
            .await
            .status()
            .crowdsec
            .and_then(|crowdsec| crowdsec.push)
            .expect("the push side in status")
    }

    async fn push_metrics(&self) -> crate::engine::CrowdsecPushMetrics {
        let engine = self.engine.lock().await;
        let shared = engine.shared();
        let shared = shared.lock().expect("shared");
        shared
            .crowdsec
            .as_ref()
            .and_then(|crowdsec| crowdsec.push.clone())
            .expect("push metrics")
    }

    /// What the LAPI's stream says of the alerts it received, as of this host's clock: each
    /// decision ends at the alert's `stop_at` plus its `duration`.
    fn stream_of_received(&self) -> String {
        let now = self.clock.unix_secs();
        let new: Vec<serde_json::Value> = self
            .lapi
            .alerts()
            .iter()
            .zip(1..)
            .map(|(alert, id)| {
                let decision = &alert["decisions"][0];
                let stop = crate::crowdsec::alerts::parse_rfc3339(
                    alert["stop_at"].as_str().expect("stop_at"),
                )
                .expect("RFC 3339");
                let duration: u64 = decision["duration"]
                    .as_str()
                    .and_then(|text| text.strip_suffix('s'))
                    .and_then(|secs| secs.parse().ok())
                    .expect("seconds");
                serde_json::json!({
                    "id": id, "origin": decision["origin"], "scenario": decision["scenario"],
                    "scope": decision["scope"], "type": decision["type"],
                    "value": decision["value"],
                    "duration": format!("{}s", stop + duration - now),
                })
            })
            .collect();
        serde_json::json!({"new": new, "deleted": null}).to_string()
    }
}

#[tokio::test]
async fn a_jail_ban_is_pushed_and_coming_back_through_the_stream_is_applied_once() {
    let mut lab = lab("push-loop", PASSWORD).await;
    assert_eq!(lab.pusher.round(&lab.engine).await, Round::Idle);
    assert!(
        lab.lapi.seen_at("/v1/watchers/login").is_empty(),
        "no login for nothing"
    );
    lab.report("198.51.100.23").await;
    assert_eq!(
        lab.pusher.round(&lab.engine).await,
        Round::Pushed { more: false }
    );
    let alerts = lab.lapi.alerts();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["scenario"], "apifw/jail-app-reports");
    assert_eq!(
        alerts[0]["decisions"][0],
        serde_json::json!({"duration": "3600s", "origin": "apifw",
                           "scenario": "apifw/jail-app-reports", "scope": "Ip",
                           "type": "ban", "value": "198.51.100.23"})
    );
    let status = lab.push_status().await;
    assert_eq!(
        (status.pushed, status.queued, status.errors),
        (1, 0, 0),
        "{status:?}"
    );
    assert_eq!(lab.push_metrics().await.pushed, 1);

    // Back through the bouncer's stream, a few seconds later: applied once.
    let key = ban_key(&IpNet::from("198.51.100.23".parse::<IpAddr>().expect("ip")));
    let jail_ban = lab.kernel.tables().bans[&key];
    lab.clock.advance(3);
    lab.lapi.answer(lab.stream_of_received());
    let mut follower = Follower::default();
    follower.round(&lab.engine).await;
    let bans = lab.kernel.tables().bans.clone();
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[&key], jail_ban, "the jail's ban, untouched");
    assert_eq!(bans[&key].rule, MANUAL_BAN_RULE);
    let mut engine = lab.engine.lock().await;
    assert_eq!(engine.crowdsec_held(), 1);
    let crowdsec = engine.status().crowdsec.expect("link");
    assert_eq!((crowdsec.syncs, crowdsec.errors), (1, 0));
    let records = audit::read(&lab.dir.join("audit.log"), None).expect("audit log");
    assert!(
        records
            .iter()
            .any(|record| record.action == "crowdsec.push")
    );
    assert!(
        !records
            .iter()
            .any(|record| record.action == "crowdsec.sync"),
        "the sync wrote nothing"
    );
    assert_eq!(engine.crowdsec_push_queued(), 0, "nothing echoes back");
}

#[tokio::test]
async fn a_lapi_down_keeps_the_bans_and_retries_with_backoff() {
    let mut lab = lab("push-down", PASSWORD).await;
    lab.report("198.51.100.23").await;
    lab.lapi.queue_alerts(vec![
        Answer::Reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "database is locked".into(),
        ),
        Answer::Hang,
    ]);
    assert_eq!(
        lab.pusher.round(&lab.engine).await,
        Round::Backoff(Duration::from_secs(1))
    );
    assert_eq!(
        lab.pusher.round(&lab.engine).await,
        Round::Backoff(Duration::from_secs(2))
    );
    let status = lab.push_status().await;
    assert_eq!((status.queued, status.errors, status.pushed), (1, 2, 0));
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|err| err.contains("crowdsec.timeout")),
        "{status:?}"
    );
    let metrics = lab.push_metrics().await;
    assert_eq!(metrics.errors.get("status"), Some(&1));
    assert_eq!(metrics.errors.get("timeout"), Some(&1));
    // Back: the kept ban goes through, once.
    assert_eq!(
        lab.pusher.round(&lab.engine).await,
        Round::Pushed { more: false }
    );
    assert_eq!(lab.lapi.alerts().len(), 1);
    let status = lab.push_status().await;
    assert_eq!((status.queued, status.pushed), (0, 1));
    assert_eq!(status.last_error, None);
    assert_eq!(lab.pusher.failures, 0);

    // Nothing listening at all.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port();
    let dir = TempDir::new("push-refused");
    let kernel = FakeDataplane::new(256);
    let engine = Mutex::new(engine_with(
        &dir,
        &policy(&format!("http://127.0.0.1:{port}"), PASSWORD),
        &kernel,
        &TestClock::new(),
    ));
    engine
        .lock()
        .await
        .report("198.51.100.24".parse().expect("ip"), "x", 2, None, "uid 0")
        .expect("banned");
    let mut pusher = Pusher::default();
    assert!(matches!(pusher.round(&engine).await, Round::Backoff(_)));
    assert!(
        kernel
            .tables()
            .bans
            .contains_key(&ban_key(&"198.51.100.24/32".parse().expect("CIDR"))),
        "enforced here whatever the LAPI does"
    );
    assert_eq!(engine.lock().await.crowdsec_push_queued(), 1);
}

#[tokio::test]
async fn a_wrong_password_is_a_forbidden_error_and_the_bans_stay_queued() {
    let mut lab = lab("push-password", "not-the-password").await;
    lab.report("198.51.100.23").await;
    assert!(matches!(
        lab.pusher.round(&lab.engine).await,
        Round::Backoff(_)
    ));
    let status = lab.push_status().await;
    assert_eq!(status.queued, 1);
    let error = status.last_error.expect("an error");
    assert!(
        error.contains("refused the login of crowdsec.machine_id = \"apifw-test\" (HTTP 401)"),
        "{error}"
    );
    assert_eq!(lab.push_metrics().await.errors.get("forbidden"), Some(&1));
    assert!(lab.lapi.alerts().is_empty());
}

#[tokio::test]
async fn alerts_the_lapi_refuses_as_invalid_are_dropped_not_retried() {
    let mut lab = lab("push-rejected", PASSWORD).await;
    lab.report("198.51.100.23").await;
    lab.lapi.queue_alerts(vec![Answer::Reply(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation failure list: stop_at in body is required".into(),
    )]);
    assert_eq!(
        lab.pusher.round(&lab.engine).await,
        Round::Pushed { more: false }
    );
    let metrics = lab.push_metrics().await;
    assert_eq!(metrics.dropped.get("rejected"), Some(&1));
    assert_eq!(metrics.errors.get("rejected"), Some(&1));
    assert_eq!(metrics.queued, 0);
    assert_eq!(lab.pusher.round(&lab.engine).await, Round::Idle);
}

#[tokio::test]
async fn a_queued_ban_wakes_the_task_and_big_queues_go_in_batches() {
    let lab = lab("push-wake", PASSWORD).await;
    let notify = lab.engine.lock().await.crowdsec_push_notify();
    lab.report("198.51.100.23").await;
    tokio::time::timeout(Duration::from_millis(100), notify.notified())
        .await
        .expect("the queued ban woke the task");
    // The task itself, running: the ban reaches the LAPI.
    let task = tokio::spawn(push(Arc::clone(&lab.engine)));
    for source in 1..=(BATCH as u8 + 20) {
        lab.report(&format!("198.51.100.{source}")).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while lab.lapi.alerts().len() < BATCH + 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} alerts after 10 s",
            lab.lapi.alerts().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    let pushes = lab.lapi.seen_at("/v1/alerts");
    assert!(
        pushes
            .iter()
            .all(|push| serde_json::from_str::<serde_json::Value>(&push.body)
                .expect("JSON")
                .as_array()
                .is_some_and(|alerts| alerts.len() <= BATCH)),
        "at most {BATCH} alerts a request"
    );
    assert_eq!(lab.lapi.seen_at("/v1/watchers/login").len(), 1);
}

#[test]
fn the_backoff_doubles_up_to_a_minute() {
    let waits: Vec<u64> = (1..=9).map(|n| Pusher::backoff(n).as_secs()).collect();
    assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
}

/// The round trip against a real LAPI (Debian's `crowdsec`, started as
/// `deploy/crowdsec/LAB-NOTES.md` says): a jail's ban is pushed as this machine, comes back
/// through the bouncer's stream and is applied once (the jail's ban untouched in the kernel);
/// its decision is then deleted with `cscli`. Needs root (cscli), `APIFW_LAPI_URL`,
/// `APIFW_LAPI_KEY`, `APIFW_LAPI_MACHINE` and `APIFW_LAPI_PASSWORD`; run with `--ignored`.
#[tokio::test]
#[ignore = "needs a running CrowdSec LAPI and cscli (APIFW_LAPI_URL, APIFW_LAPI_KEY, \
            APIFW_LAPI_MACHINE, APIFW_LAPI_PASSWORD)"]
async fn a_real_lapi_gets_a_jail_ban_and_sends_it_back_applied_once() {
    let env = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name}"));
    let dir = TempDir::new("push-real");
    let kernel = FakeDataplane::new(1024);
    // The real time: the LAPI ends the decision at the ban's start plus its length.
    let clock = TestClock::at(crate::crowdsec::alerts::unix_now());
    let text = policy(&env("APIFW_LAPI_URL"), &env("APIFW_LAPI_PASSWORD"))
        .replace("bouncer-key", &env("APIFW_LAPI_KEY"))
        .replace(MACHINE_ID, &env("APIFW_LAPI_MACHINE"))
        .replace("400ms", "10s")
        .replace("max_bans = 256", "max_bans = 1024");
    let engine = Arc::new(Mutex::new(engine_with(&dir, &text, &kernel, &clock)));
    let mut follower = Follower::default();
    follower.round(&engine).await;
    let source: IpAddr = "192.0.2.188".parse().expect("ip");
    let key = ban_key(&IpNet::from(source));
    engine
        .lock()
        .await
        .report(source, "replayed JWT", 2, None, "uid 0")
        .expect("banned");
    let jail_ban = kernel.tables().bans[&key];
    let mut pusher = Pusher::default();
    let round = pusher.round(&engine).await;
    let status = engine.lock().await.status().crowdsec.expect("link");
    assert_eq!(round, Round::Pushed { more: false }, "{status:?}");
    follower.round(&engine).await;
    let status = engine.lock().await.status().crowdsec.expect("link");
    eprintln!("{status:?}");
    assert_eq!(status.errors, 0, "{status:?}");
    assert_eq!(kernel.tables().bans[&key], jail_ban, "applied once");
    assert!(status.decisions >= 1, "the decision is held: {status:?}");
    let output = std::process::Command::new("cscli")
        .args(["decisions", "list", "--ip", "192.0.2.188", "-o", "json"])
        .output()
        .expect("cscli");
    eprintln!("{}", String::from_utf8_lossy(&output.stdout));
    let held = engine.lock().await.crowdsec_held();
    let output = std::process::Command::new("cscli")
        .args(["decisions", "delete", "--ip", "192.0.2.188"])
        .output()
        .expect("cscli");
    assert!(output.status.success(), "cscli decisions delete");
    follower.round(&engine).await;
    assert_eq!(
        kernel.tables().bans[&key],
        jail_ban,
        "deleting the decision leaves the jail's ban"
    );
    assert_eq!(engine.lock().await.crowdsec_held(), held - 1);
}
