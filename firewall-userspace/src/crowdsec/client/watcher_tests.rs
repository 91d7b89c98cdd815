//! The watcher's client against the in-process fake LAPI: login, the token kept and renewed on
//! a refusal, wrong credentials, and every malformed or refusing answer as an error of its kind.

use std::time::Duration;

use hyper::{StatusCode, body::Bytes};

use super::{LapiError, watcher::WatcherClient};
use crate::{
    crowdsec::{
        alerts::{BanToPush, alerts_body},
        fake_lapi::{Answer, FakeLapi, MACHINE_ID, PASSWORD},
    },
    policy::crowdsec::{ApiKey, CrowdsecSettings, DecisionScope, Password, PushSettings},
    test_dir::TempDir,
};

fn settings(url: &str) -> (CrowdsecSettings, PushSettings) {
    let push = PushSettings {
        machine_id: MACHINE_ID.into(),
        password: Password::Inline(PASSWORD.into()),
        jail_bans: true,
        rate_limit_bans: false,
    };
    let settings = CrowdsecSettings {
        lapi_url: url.to_owned(),
        api_key: ApiKey::Inline("bouncer-key".into()),
        poll_interval: Duration::from_secs(10),
        resync_interval: Duration::from_secs(600),
        timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(300),
        max_answer_bytes: 4096,
        origins: Vec::new(),
        scopes: vec![DecisionScope::Ip, DecisionScope::Range],
        push: Some(push.clone()),
    };
    (settings, push)
}

fn client(url: &str) -> WatcherClient {
    let (settings, push) = settings(url);
    WatcherClient::new(&settings, &push).expect("client")
}

fn body(host: &str) -> Bytes {
    Bytes::from(alerts_body(&[BanToPush {
        prefix: format!("{host}/32").parse().expect("CIDR"),
        scenario: "apifw/jail-web".into(),
        message: "apifw jail web: 5 matches within 600s (ban #1)".into(),
        events_count: 5,
        started_unix: 1_700_000_000,
        duration_secs: 600,
    }]))
}

#[tokio::test]
async fn a_push_logs_in_once_and_sends_the_alerts_with_the_token() {
    let lapi = FakeLapi::start().await;
    let mut client = client(&lapi.url());
    assert!(!client.has_token());
    let ids = client
        .push_alerts(body("192.0.2.66"))
        .await
        .expect("pushed");
    assert_eq!(ids, ["1"]);
    assert!(
        !format!("{client:?}").contains("token-1"),
        "the token never shows in Debug"
    );
    client
        .push_alerts(body("192.0.2.67"))
        .await
        .expect("pushed");
    assert_eq!(client.logins(), 1, "the token is kept");
    let logins = lapi.seen_at("/v1/watchers/login");
    assert_eq!(logins.len(), 1);
    assert_eq!(logins[0].method, "POST");
    let sent: serde_json::Value = serde_json::from_str(&logins[0].body).expect("JSON");
    assert_eq!(
        sent,
        serde_json::json!({"machine_id": MACHINE_ID, "password": PASSWORD, "scenarios": []})
    );
    let pushes = lapi.seen_at("/v1/alerts");
    assert_eq!(pushes.len(), 2);
    assert!(
        pushes
            .iter()
            .all(|push| push.authorization.as_deref() == Some("Bearer token-1")),
        "{pushes:?}"
    );
    let alerts = lapi.alerts();
    assert_eq!(alerts.len(), 2);
    assert_eq!(alerts[1]["decisions"][0]["value"], "192.0.2.67");
}

#[tokio::test]
async fn a_wrong_password_is_a_refused_login_naming_the_machine() {
    let lapi = FakeLapi::start().await;
    let (settings, mut push) = settings(&lapi.url());
    push.password = Password::Inline("not-the-password".into());
    let mut client = WatcherClient::new(&settings, &push).expect("client");
    let err = client
        .push_alerts(body("192.0.2.66"))
        .await
        .expect_err("refused");
    assert!(
        matches!(err, LapiError::LoginRefused { status: 401, .. }),
        "{err:?}"
    );
    assert_eq!(err.kind(), "forbidden");
    assert!(
        err.to_string()
            .contains("crowdsec.machine_id = \"apifw-test\""),
        "{err}"
    );
    assert!(lapi.alerts().is_empty());
    assert!(lapi.seen_at("/v1/alerts").is_empty(), "nothing pushed");
    // A machine not validated yet is refused with 403.
    lapi.queue_login(vec![Answer::Reply(
        StatusCode::FORBIDDEN,
        Bytes::from_static(b"{\"message\":\"machine not validated\"}"),
    )]);
    let err = client.login().await.expect_err("refused");
    assert!(
        matches!(err, LapiError::LoginRefused { status: 403, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_expired_token_costs_one_more_login_and_the_push_goes_through() {
    let lapi = FakeLapi::start().await;
    let mut client = client(&lapi.url());
    client
        .push_alerts(body("192.0.2.66"))
        .await
        .expect("pushed");
    lapi.expire_tokens();
    client
        .push_alerts(body("192.0.2.67"))
        .await
        .expect("pushed after a new login");
    assert_eq!(client.logins(), 2);
    let pushes = lapi.seen_at("/v1/alerts");
    let tokens: Vec<_> = pushes
        .iter()
        .map(|push| push.authorization.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        tokens,
        ["Bearer token-1", "Bearer token-1", "Bearer token-2"],
        "refused once, sent again with the new token"
    );
    assert_eq!(lapi.alerts().len(), 2, "each alert once");
    // A token refused right after its login is an error, not a loop.
    lapi.queue_alerts(vec![
        Answer::Reply(
            StatusCode::UNAUTHORIZED,
            Bytes::from_static(b"{}"),
        );
        3
    ]);
    lapi.expire_tokens();
    let err = client
        .push_alerts(body("192.0.2.68"))
        .await
        .expect_err("refused twice");
    assert!(matches!(err, LapiError::TokenRefused { .. }), "{err:?}");
    assert_eq!(client.logins(), 3);
    assert!(!client.has_token(), "a refused token is not kept");
}

#[tokio::test]
async fn malformed_answers_are_clear_errors() {
    let lapi = FakeLapi::start().await;
    let mut client = client(&lapi.url());
    lapi.queue_login(vec![Answer::Reply(
        StatusCode::OK,
        Bytes::from_static(b"{\"code\":200,\"expire\":\"2030-01-01T00:00:00Z\"}"),
    )]);
    let err = client.login().await.expect_err("no token");
    assert_eq!(err.kind(), "invalid_answer");
    let chain = crate::errors::chain(&err);
    assert!(
        chain.contains("POST /v1/watchers/login") && chain.contains("missing field `token`"),
        "{chain}"
    );
    assert!(!client.has_token());
    lapi.queue_alerts(vec![Answer::Reply(
        StatusCode::CREATED,
        Bytes::from_static(b"<html>created</html>"),
    )]);
    let err = client
        .push_alerts(body("192.0.2.66"))
        .await
        .expect_err("not JSON");
    assert_eq!(err.kind(), "invalid_answer");
    assert!(
        crate::errors::chain(&err).contains("an array of alert ids"),
        "{}",
        crate::errors::chain(&err)
    );
}

#[tokio::test]
async fn invalid_alerts_are_rejected_and_server_errors_are_statuses() {
    let lapi = FakeLapi::start().await;
    let mut client = client(&lapi.url());
    // As Debian's LAPI 1.4.6 answers an alert without `stop_at`: 500, not 422.
    let invalid = r#"{"message":"validation failure list:\n0.stop_at in body is required"}"#;
    for (status, answer, kind) in [
        (StatusCode::UNPROCESSABLE_ENTITY, invalid, "rejected"),
        (
            StatusCode::BAD_REQUEST,
            r#"{"message":"json: cannot unmarshal"}"#,
            "rejected",
        ),
        (StatusCode::INTERNAL_SERVER_ERROR, invalid, "rejected"),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"message":"database is locked"}"#,
            "status",
        ),
    ] {
        lapi.queue_alerts(vec![Answer::Reply(status, Bytes::from(answer))]);
        let err = client
            .push_alerts(body("192.0.2.66"))
            .await
            .expect_err(kind);
        assert_eq!(err.kind(), kind, "{err}");
        let shown = answer.get(12..24).expect("a message");
        assert!(err.to_string().contains(shown), "{err}");
    }
}

#[tokio::test]
async fn the_password_file_is_read_at_each_login() {
    let dir = TempDir::new("watcher-password");
    let path = dir.join("password");
    std::fs::write(&path, format!("{PASSWORD}\n")).expect("write");
    let lapi = FakeLapi::start().await;
    let (settings, mut push) = settings(&lapi.url());
    push.password = Password::File(path.clone());
    let mut client = WatcherClient::new(&settings, &push).expect("client");
    client
        .login()
        .await
        .expect("logged in with the file's password");
    std::fs::write(&path, " \n").expect("write");
    let err = client.login().await.expect_err("empty file");
    assert_eq!(err.kind(), "config");
    assert!(err.to_string().contains("crowdsec.password_file"), "{err}");
}

#[tokio::test]
async fn a_lapi_down_or_hanging_is_a_connect_or_timeout_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port();
    let mut down = client(&format!("http://127.0.0.1:{port}"));
    let err = down
        .push_alerts(body("192.0.2.66"))
        .await
        .expect_err("down");
    assert_eq!(err.kind(), "connect", "{err}");
    let lapi = FakeLapi::start().await;
    lapi.queue_login(vec![Answer::Hang]);
    let err = client(&lapi.url())
        .push_alerts(body("192.0.2.66"))
        .await
        .expect_err("hangs");
    assert_eq!(err.kind(), "timeout", "{err}");
}

/// Against a real LAPI (Debian's `crowdsec`, see `deploy/crowdsec/LAB-NOTES.md`): set
/// `APIFW_LAPI_URL`, `APIFW_LAPI_KEY` (a bouncer's key), `APIFW_LAPI_MACHINE` and
/// `APIFW_LAPI_PASSWORD` (`cscli machines add NAME --password PW`) and run with `--ignored`. A
/// pushed ban comes back through the bouncer's stream as a decision of origin `apifw`, ending
/// when the ban does; a wrong password is refused.
#[tokio::test]
#[ignore = "needs a running CrowdSec LAPI (APIFW_LAPI_URL, APIFW_LAPI_KEY, APIFW_LAPI_MACHINE, \
            APIFW_LAPI_PASSWORD)"]
async fn a_real_lapi_takes_pushed_alerts() {
    let env = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name}"));
    let (mut settings, mut push) = settings(&env("APIFW_LAPI_URL"));
    settings.api_key = ApiKey::Inline(env("APIFW_LAPI_KEY"));
    settings.max_answer_bytes = 64 << 20;
    settings.timeout = Duration::from_secs(30);
    push.machine_id = env("APIFW_LAPI_MACHINE");
    push.password = Password::Inline(env("APIFW_LAPI_PASSWORD"));
    let bouncer = super::LapiClient::new(&settings).expect("bouncer");
    bouncer.decision_stream(true).await.expect("stream");
    let now = crate::crowdsec::alerts::unix_now();
    // Made 100 s ago for 600 s: the decision has about 500 s left.
    let bans = [
        BanToPush {
            prefix: "192.0.2.199/32".parse().expect("CIDR"),
            scenario: "apifw/jail-real-lapi".into(),
            message: "apifw jail real-lapi: 5 matches within 600s (ban #1)".into(),
            events_count: 5,
            started_unix: now - 100,
            duration_secs: 600,
        },
        BanToPush {
            prefix: "2001:db8:199::/48".parse().expect("CIDR"),
            scenario: "apifw/rate-limit-api".into(),
            message: "apifw rule api: subnet banned by the XDP rate limiter".into(),
            events_count: 1,
            started_unix: now,
            duration_secs: 300,
        },
    ];
    let body = alerts_body(&bans);
    eprintln!("{}", String::from_utf8_lossy(&body));
    let mut client = WatcherClient::new(&settings, &push).expect("client");
    let ids = client
        .push_alerts(Bytes::from(body))
        .await
        .unwrap_or_else(|err| panic!("{}", crate::errors::chain(&err)));
    eprintln!("created alerts {ids:?}");
    assert_eq!(ids.len(), 2);
    let answer = bouncer.decision_stream(false).await.expect("stream");
    eprintln!("{}", String::from_utf8_lossy(&answer));
    let batch =
        crate::crowdsec::parse_stream(&answer, &crate::crowdsec::DecisionFilter::everything())
            .unwrap_or_else(|err| panic!("{}", crate::errors::chain(&err)));
    for (cidr, left) in [("192.0.2.199/32", 500), ("2001:db8:199::/48", 300)] {
        let decision = batch
            .new
            .iter()
            .find(|decision| decision.prefix.to_string() == cidr)
            .unwrap_or_else(|| panic!("{cidr} comes back through the stream"));
        assert_eq!(decision.origin, "apifw");
        assert!(decision.scenario.starts_with("apifw/"), "{decision:?}");
        let secs = decision.remaining.as_secs();
        assert!(
            (left - 5..=left).contains(&secs),
            "{cidr}: {secs} s left, expected about {left}"
        );
    }
    push.password = Password::Inline("not-the-password".into());
    let err = WatcherClient::new(&settings, &push)
        .expect("client")
        .login()
        .await
        .expect_err("a wrong password is refused");
    eprintln!("{err}");
    assert_eq!(err.kind(), "forbidden", "{err}");
}
