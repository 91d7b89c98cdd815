//! The decision stream: what real LAPI answers look like, what is skipped and counted, and what
//! rejects an answer whole.

use std::time::Instant;

use super::*;

fn net(text: &str) -> IpNet {
    text.parse().expect("CIDR")
}

fn parse(body: &str) -> Result<DecisionBatch, DecisionError> {
    parse_stream(body.as_bytes(), &DecisionFilter::everything())
}

/// A decision as the LAPI writes it.
fn decision(id: i64, scope: &str, kind: &str, value: &str, duration: &str) -> String {
    format!(
        r#"{{"duration":"{duration}","id":{id},"origin":"cscli","scenario":"manual 'ban' from 'x'",
            "scope":"{scope}","type":"{kind}","value":"{value}","uuid":"6f0b-{id}","simulated":false}}"#
    )
}

#[test]
fn a_startup_answer_gives_host_and_range_bans_with_their_time_left() {
    let body = format!(
        r#"{{"new":[{},{},{}],"deleted":null}}"#,
        decision(1, "Ip", "ban", "203.0.113.77", "1h59m59.84s"),
        decision(2, "Range", "ban", "198.51.100.0/24", "3h59m50.123456789s"),
        decision(3, "Ip", "ban", "2001:db8::7", "150ms"),
    );
    let batch = parse(&body).expect("valid answer");
    assert_eq!(batch.new.len(), 3);
    assert_eq!(batch.new[0].prefix, net("203.0.113.77/32"));
    assert_eq!(batch.new[0].scope, DecisionScope::Ip);
    assert_eq!(batch.new[0].origin, "cscli");
    assert_eq!(batch.new[0].id, Some(1));
    assert_eq!(batch.new[0].remaining, Duration::from_millis(7_199_840));
    assert_eq!(batch.new[1].prefix, net("198.51.100.0/24"));
    assert_eq!(batch.new[1].remaining, Duration::new(14_390, 123_456_789));
    assert_eq!(batch.new[2].prefix, net("2001:db8::7/128"));
    assert!(batch.deleted.is_empty());
    assert!(batch.skipped.is_empty());
}

#[test]
fn empty_answers_are_nothing_to_do() {
    for body in [
        r#"{"new":null,"deleted":null}"#,
        r#"{"new":[],"deleted":[]}"#,
        "{}",
        " \n{ }\n",
    ] {
        assert_eq!(parse(body).expect(body), DecisionBatch::default());
    }
}

#[test]
fn deletions_name_what_to_lift_whatever_their_duration() {
    let body = format!(
        r#"{{"new":null,"deleted":[{},{},{}]}}"#,
        decision(7, "Ip", "ban", "203.0.113.77", "-1m2s"),
        decision(8, "Range", "ban", "2001:db8::/48", "0s"),
        decision(9, "Ip", "captcha", "203.0.113.78", "-3s"),
    );
    let batch = parse(&body).expect("valid answer");
    assert_eq!(
        batch.deleted,
        vec![
            Deletion {
                id: Some(7),
                prefix: net("203.0.113.77/32")
            },
            Deletion {
                id: Some(8),
                prefix: net("2001:db8::/48")
            },
        ]
    );
}

#[test]
fn other_types_scopes_origins_and_expired_decisions_are_skipped_and_counted() {
    let body = format!(
        r#"{{"new":[{},{},{},{},{},{}]}}"#,
        decision(1, "Ip", "captcha", "203.0.113.1", "1h"),
        decision(2, "Country", "ban", "FR", "1h"),
        decision(3, "AS", "ban", "64496", "1h"),
        decision(4, "Ip", "ban", "203.0.113.4", "-1m2s"),
        decision(5, "Ip", "ban", "203.0.113.5", "0s"),
        decision(6, "Ip", "Ban", "203.0.113.6", "1h"),
    );
    let batch = parse(&body).expect("valid answer");
    assert_eq!(
        batch.new.len(),
        1,
        "only the ban of .6 is taken (type is case-blind)"
    );
    assert_eq!(batch.new[0].prefix, net("203.0.113.6/32"));
    assert_eq!(
        batch.skipped,
        BTreeMap::from([
            (SkipReason::NotBan, 1),
            (SkipReason::UnknownScope, 2),
            (SkipReason::Expired, 2),
        ])
    );
}

#[test]
fn the_policys_origin_and_scope_filters_apply() {
    let body = r#"{"new":[
        {"id":1,"origin":"CAPI","scope":"Ip","type":"ban","value":"203.0.113.1","duration":"1h"},
        {"id":2,"origin":"cscli","scope":"Ip","type":"ban","value":"203.0.113.2","duration":"1h"},
        {"id":3,"origin":"cscli","scope":"Range","type":"ban","value":"203.0.113.0/28","duration":"1h"}
    ],"deleted":[
        {"id":4,"origin":"cscli","scope":"Range","type":"ban","value":"198.51.100.0/24","duration":"-1s"}
    ]}"#;
    let filter = DecisionFilter {
        origins: vec!["cscli".into()],
        scopes: vec![DecisionScope::Ip],
    };
    let batch = parse_stream(body.as_bytes(), &filter).expect("valid answer");
    assert_eq!(batch.new.len(), 1);
    assert_eq!(batch.new[0].id, Some(2));
    assert_eq!(
        batch.skipped,
        BTreeMap::from([
            (SkipReason::ScopeFiltered, 1),
            (SkipReason::OriginFiltered, 1)
        ])
    );
    assert!(
        batch.deleted.is_empty(),
        "a Range deletion with Range filtered out"
    );
}

#[test]
fn malformed_answers_are_refused_whole_naming_the_decision() {
    let good = decision(1, "Ip", "ban", "203.0.113.77", "1h");
    for (body, kind, says) in [
        ("not json".to_owned(), "invalid_answer", "found `not json`"),
        (String::new(), "invalid_answer", "an empty answer"),
        ("<html>502</html>".to_owned(), "invalid_answer", "<html>"),
        ("[1,2]".to_owned(), "invalid_answer", "`[1,2]`"),
        (
            r#"{"new":{}}"#.to_owned(),
            "invalid_answer",
            "decision stream",
        ),
        (
            r#"{"new":[{"id":1}]}"#.to_owned(),
            "invalid_answer",
            "decision stream",
        ),
        (
            format!(
                r#"{{"new":[{good},{{"id":"x","scope":"Ip","type":"ban","value":"1.2.3.4","duration":"1h"}}]}}"#
            ),
            "invalid_answer",
            "decision stream",
        ),
        (
            format!(
                r#"{{"new":[{good},{}]}}"#,
                decision(2, "Ip", "ban", "203.0.113.78", "2days")
            ),
            "invalid_duration",
            "decision new[1] (id 2): `203.0.113.78` has an invalid duration",
        ),
        (
            format!(r#"{{"new":[{good},{{"id":3,"scope":"Ip","type":"ban","value":"1.2.3.4"}}]}}"#),
            "invalid_duration",
            "no duration",
        ),
        (
            format!(
                r#"{{"new":[{good},{}]}}"#,
                decision(4, "Ip", "ban", "203.0.113.300", "1h")
            ),
            "invalid_value",
            "scope Ip value `203.0.113.300` is not an IPv4 or IPv6 address",
        ),
        (
            format!(
                r#"{{"new":[{good},{}]}}"#,
                decision(5, "Ip", "ban", "203.0.113.0/24", "1h")
            ),
            "invalid_value",
            "not an IPv4 or IPv6 address",
        ),
        (
            format!(
                r#"{{"new":[{good},{}]}}"#,
                decision(6, "Range", "ban", "203.0.113.5/24", "1h")
            ),
            "host_bits",
            "range `203.0.113.5/24` has host bits set (the network would be 203.0.113.0/24)",
        ),
        (
            format!(
                r#"{{"new":[{good},{}]}}"#,
                decision(7, "Range", "ban", "10.0.0.0/33", "1h")
            ),
            "invalid_value",
            "not an IPv4 or IPv6 network",
        ),
        // Even a decision that would be skipped (a captcha) must be well-formed.
        (
            format!(
                r#"{{"new":[{good},{}]}}"#,
                decision(8, "Ip", "captcha", "nope", "1h")
            ),
            "invalid_value",
            "`nope`",
        ),
        (
            format!(
                r#"{{"new":[{good}],"deleted":[{}]}}"#,
                decision(9, "Ip", "ban", "x", "-1s")
            ),
            "invalid_value",
            "decision deleted[0] (id 9)",
        ),
    ] {
        let err = parse(&body).expect_err(&body);
        let message = crate::errors::chain(&err);
        assert_eq!(err.kind(), kind, "{body}: {message}");
        assert!(message.contains(says), "{body}: {message}");
    }
}

#[test]
fn a_community_blocklist_of_100k_decisions_parses_quickly() {
    let mut body = String::from(r#"{"new":["#);
    for i in 0..100_000u32 {
        if i > 0 {
            body.push(',');
        }
        let [_, b, c, d] = i.to_be_bytes();
        let (value, scope) = if i % 10 == 0 {
            (format!("1{b}.{c}.{d}.0/24"), "Range")
        } else {
            (format!("100.{b}.{c}.{d}"), "Ip")
        };
        body.push_str(&format!(
            r#"{{"duration":"167h59m{}.5s","id":{i},"origin":"CAPI","scenario":"crowdsecurity/ssh-bf","scope":"{scope}","type":"ban","value":"{value}","uuid":"u{i}","simulated":false}}"#,
            i % 60
        ));
    }
    body.push_str(r#"],"deleted":null}"#);
    let started = Instant::now();
    let batch = parse(&body).expect("valid answer");
    let took = started.elapsed();
    assert_eq!(batch.new.len(), 100_000);
    assert_eq!(batch.new[10].prefix, net("10.0.10.0/24"));
    // Generous for a debug build on a busy machine; release is about ten times faster.
    assert!(
        took < Duration::from_secs(10),
        "100k decisions took {took:?}"
    );
    eprintln!("100k decisions ({} bytes) parsed in {took:?}", body.len());
}
