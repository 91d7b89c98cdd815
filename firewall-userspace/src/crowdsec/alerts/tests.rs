//! The alerts apifw pushes, field by field as the LAPI's swagger requires them, and the LAPI's
//! answers to a watcher, good and malformed.

use super::*;

fn jail_ban() -> BanToPush {
    BanToPush {
        prefix: "192.0.2.66/32".parse().expect("CIDR"),
        scenario: "apifw/jail-nginx-auth".into(),
        message: "apifw jail nginx-auth: 5 matches within 600s (ban #1)".into(),
        events_count: 5,
        // 2026-12-05T05:16:40Z
        started_unix: 1_796_447_800,
        duration_secs: 600,
    }
}

#[test]
fn a_host_ban_is_an_alert_with_one_ip_decision_ending_with_the_ban() {
    let body: serde_json::Value =
        serde_json::from_slice(&alerts_body(&[jail_ban()])).expect("JSON");
    let expected = serde_json::json!([{
        "scenario": "apifw/jail-nginx-auth",
        "scenario_hash": "",
        "scenario_version": env!("CARGO_PKG_VERSION"),
        "message": "apifw jail nginx-auth: 5 matches within 600s (ban #1)",
        "events_count": 5,
        "start_at": "2026-12-05T05:16:40Z",
        "stop_at": "2026-12-05T05:16:40Z",
        "capacity": 0,
        "leakspeed": "0s",
        "simulated": false,
        "remediation": true,
        "events": [],
        "source": {"scope": "Ip", "value": "192.0.2.66", "ip": "192.0.2.66"},
        "decisions": [{
            "duration": "600s",
            "origin": "apifw",
            "scenario": "apifw/jail-nginx-auth",
            "scope": "Ip",
            "type": "ban",
            "value": "192.0.2.66"
        }]
    }]);
    assert_eq!(body, expected);
    assert_eq!(jail_ban().ends_unix(), 1_796_447_800 + 600);
}

#[test]
fn a_network_ban_is_a_range_decision_and_every_ban_is_its_own_alert() {
    let mut subnet = jail_ban();
    subnet.prefix = "2001:db8:77::/48".parse().expect("CIDR");
    subnet.scenario = "apifw/rate-limit-api".into();
    subnet.events_count = u64::MAX;
    let mut v6_host = jail_ban();
    v6_host.prefix = "2001:db8::1/128".parse().expect("CIDR");
    let body: serde_json::Value =
        serde_json::from_slice(&alerts_body(&[subnet, v6_host])).expect("JSON");
    let alerts = body.as_array().expect("an array");
    assert_eq!(alerts.len(), 2);
    assert_eq!(
        alerts[0]["source"],
        serde_json::json!({"scope": "Range", "value": "2001:db8:77::/48",
                           "range": "2001:db8:77::/48"})
    );
    assert_eq!(alerts[0]["decisions"][0]["scope"], "Range");
    assert_eq!(alerts[0]["decisions"][0]["value"], "2001:db8:77::/48");
    assert_eq!(alerts[0]["scenario"], "apifw/rate-limit-api");
    assert_eq!(alerts[0]["events_count"], i32::MAX, "int32 in the swagger");
    assert_eq!(alerts[1]["decisions"][0]["value"], "2001:db8::1");
    assert_eq!(alerts[1]["source"]["ip"], "2001:db8::1");
    assert_eq!(alerts_body(&[]), b"[]");
}

#[test]
fn a_login_answer_gives_the_token_and_its_expiry() {
    let token = parse_login(
        br#"{"code":200,"expire":"2026-12-05T09:16:40Z","token":"eyJhbGciOiJIUzI1NiJ9.e30.x"}"#,
    )
    .expect("a good answer");
    assert_eq!(token.token, "eyJhbGciOiJIUzI1NiJ9.e30.x");
    assert_eq!(token.expires_unix, Some(1_796_447_800 + 4 * 3600));
    assert!(
        !format!("{token:?}").contains("eyJ"),
        "the token is redacted"
    );
    // An expiry in another form costs the expiry, not the token.
    let token = parse_login(br#"{"code":200,"expire":"tomorrow","token":"t"}"#).expect("token");
    assert_eq!(token.expires_unix, None);
}

#[test]
fn malformed_login_answers_are_errors_saying_what_was_expected() {
    for (body, says) in [
        (&b"<html>502</html>"[..], "not the JSON expected"),
        (
            br#"{"code":200,"expire":"2026-12-05T09:16:40Z"}"#,
            "missing field `token`",
        ),
        (br#"{"code":200,"token":""}"#, "no usable token"),
        (br#"{"code":200,"token":"a b\n"}"#, "no usable token"),
        (br#"[]"#, "POST /v1/watchers/login"),
    ] {
        let err = parse_login(body).expect_err(says);
        let chain = crate::errors::chain(&err);
        assert!(chain.contains(says), "{chain}");
    }
}

#[test]
fn the_created_alerts_are_read_as_ids() {
    assert_eq!(parse_created(br#"["6","7"]"#).expect("ids"), ["6", "7"]);
    assert_eq!(parse_created(b"[8]").expect("ids"), ["8"]);
    let err = parse_created(br#"{"message":"ok"}"#).expect_err("not an array");
    assert!(err.to_string().contains("an array of alert ids"), "{err}");
}

#[test]
fn rfc3339_times_are_read_with_any_offset() {
    let utc = 1_796_447_800;
    for text in [
        "2026-12-05T05:16:40Z",
        "2026-12-05T06:16:40+01:00",
        "2026-12-05T00:46:40-04:30",
        "2026-12-05T05:16:40.123456789Z",
    ] {
        assert_eq!(parse_rfc3339(text), Some(utc), "{text}");
    }
    for text in [
        "",
        "2026-12-05",
        "2026-12-05T05:16:40+0100",
        "yesterday+01:00",
    ] {
        assert_eq!(parse_rfc3339(text), None, "{text}");
    }
}
