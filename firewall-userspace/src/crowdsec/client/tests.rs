//! The LAPI client against the in-process fake: the request it sends, and every way a LAPI can
//! fail it, each bounded in time and size.

use std::time::Instant;

use super::*;
use crate::{
    crowdsec::fake_lapi::{Answer, FakeLapi},
    test_dir::TempDir,
};

fn settings(url: &str) -> CrowdsecSettings {
    CrowdsecSettings {
        lapi_url: url.to_owned(),
        api_key: ApiKey::Inline("s3cret".into()),
        poll_interval: Duration::from_secs(10),
        resync_interval: Duration::from_secs(600),
        timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(300),
        max_answer_bytes: 4096,
        origins: Vec::new(),
        scopes: vec![
            crate::policy::crowdsec::DecisionScope::Ip,
            crate::policy::crowdsec::DecisionScope::Range,
        ],
        push: None,
    }
}

#[tokio::test]
async fn the_stream_is_asked_for_with_the_key_and_the_startup_flag() {
    let lapi = FakeLapi::start().await;
    lapi.answer(r#"{"new":[],"deleted":null}"#);
    let client = LapiClient::new(&settings(&lapi.url())).expect("client");
    let body = client.decision_stream(true).await.expect("answer");
    assert_eq!(&body[..], br#"{"new":[],"deleted":null}"#);
    client.decision_stream(false).await.expect("answer");
    let seen = lapi.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].target, "/v1/decisions/stream?startup=true");
    assert_eq!(seen[1].target, "/v1/decisions/stream?startup=false");
    assert_eq!(seen[0].api_key.as_deref(), Some("s3cret"));
}

#[tokio::test]
async fn the_key_is_read_from_its_file_trimmed() {
    let dir = TempDir::new("lapi-key");
    let path = dir.join("key");
    std::fs::write(&path, "from-file\n").expect("write key");
    let lapi = FakeLapi::start().await;
    let mut with_file = settings(&lapi.url());
    with_file.api_key = ApiKey::File(path.clone());
    LapiClient::new(&with_file)
        .expect("client")
        .decision_stream(true)
        .await
        .expect("answer");
    assert_eq!(lapi.seen()[0].api_key.as_deref(), Some("from-file"));

    std::fs::write(&path, "  \n").expect("write key");
    let err = LapiClient::new(&with_file).expect_err("empty key file");
    assert_eq!(err.kind(), "config");
    assert!(
        crate::errors::chain(&err).contains("the file is empty"),
        "{err}"
    );
    with_file.api_key = ApiKey::File(dir.join("missing"));
    let err = LapiClient::new(&with_file).expect_err("missing key file");
    assert!(err.to_string().contains("crowdsec.api_key_file"), "{err}");
}

#[tokio::test]
async fn a_hanging_lapi_times_out_within_the_setting() {
    let lapi = FakeLapi::start().await;
    lapi.set(vec![Answer::Hang]);
    let client = LapiClient::new(&settings(&lapi.url())).expect("client");
    let started = Instant::now();
    let err = client.decision_stream(true).await.expect_err("no answer");
    let took = started.elapsed();
    assert!(matches!(err, LapiError::Timeout { .. }), "{err:?}");
    assert_eq!(err.kind(), "timeout");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(err.to_string().contains("crowdsec.timeout"), "{err}");
}

#[tokio::test]
async fn refusals_statuses_and_oversized_answers_are_errors_of_their_kind() {
    let lapi = FakeLapi::start().await;
    let client = LapiClient::new(&settings(&lapi.url())).expect("client");
    for (answer, kind, says) in [
        (
            Answer::Reply(
                StatusCode::FORBIDDEN,
                Bytes::from_static(b"{\"message\":\"access forbidden\"}"),
            ),
            "forbidden",
            "refused the API key (HTTP 403)",
        ),
        (
            Answer::Reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                Bytes::from_static(b"database is locked"),
            ),
            "status",
            "HTTP 500: database is locked",
        ),
        (
            Answer::Reply(StatusCode::OK, Bytes::from(vec![b' '; 10_000])),
            "too_large",
            "longer than 4096 bytes (crowdsec.max_answer_bytes)",
        ),
    ] {
        lapi.set(vec![answer]);
        let err = client.decision_stream(false).await.expect_err(kind);
        assert_eq!(err.kind(), kind, "{err}");
        assert!(err.to_string().contains(says), "{err}");
    }
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error() {
    // Bind and drop: the port is free, and nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port();
    let client = LapiClient::new(&settings(&format!("http://127.0.0.1:{port}"))).expect("client");
    let err = client.decision_stream(true).await.expect_err("refused");
    assert_eq!(err.kind(), "connect", "{err}");
}

#[test]
fn only_http_urls_make_a_client() {
    for url in ["https://127.0.0.1:8080", "ftp://x", "not a url"] {
        let err = LapiClient::new(&settings(url)).expect_err(url);
        assert_eq!(err.kind(), "config");
    }
    let client = LapiClient::new(&settings("http://[::1]:8080/lapi/")).expect("client");
    assert_eq!(client.endpoint.host, "::1");
    assert_eq!(client.endpoint.port, 8080);
    assert_eq!(client.endpoint.path, "/lapi");
}

/// Against a real LAPI (Debian's `crowdsec`, see `deploy/crowdsec/LAB-NOTES.md`): set
/// `APIFW_LAPI_URL` and `APIFW_LAPI_KEY` (`cscli bouncers add x -o raw`) and run with
/// `--ignored`. The startup answer must parse, whatever decisions it holds.
#[tokio::test]
#[ignore = "needs a running CrowdSec LAPI (APIFW_LAPI_URL, APIFW_LAPI_KEY)"]
async fn a_real_lapis_stream_parses() {
    let url = std::env::var("APIFW_LAPI_URL").expect("APIFW_LAPI_URL");
    let mut real = settings(&url);
    real.api_key = ApiKey::Inline(std::env::var("APIFW_LAPI_KEY").expect("APIFW_LAPI_KEY"));
    real.max_answer_bytes = 64 << 20;
    real.timeout = Duration::from_secs(30);
    let client = LapiClient::new(&real).expect("client");
    let body = client.decision_stream(true).await.expect("answer");
    let batch =
        crate::crowdsec::parse_stream(&body, &crate::crowdsec::DecisionFilter::everything())
            .unwrap_or_else(|err| panic!("{}", crate::errors::chain(&err)));
    eprintln!("{batch:#?}");
    real.api_key = ApiKey::Inline("not-the-key".into());
    let err = LapiClient::new(&real)
        .expect("client")
        .decision_stream(true)
        .await
        .expect_err("a wrong key is refused");
    assert_eq!(err.kind(), "forbidden", "{err}");
}
