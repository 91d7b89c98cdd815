//! Go durations: the LAPI's examples, Go's own edge cases, garbage, and round trips through
//! Go's formatting.

use proptest::prelude::*;

use super::*;

const SECOND: i64 = 1_000_000_000;

fn nanos(text: &str) -> i64 {
    GoDuration::parse(text)
        .unwrap_or_else(|err| panic!("{text}: {err}"))
        .as_nanos()
}

#[test]
fn the_lapis_durations_parse_to_nanoseconds() {
    assert_eq!(nanos("1h59m59.84s"), 7_199 * SECOND + 840_000_000);
    assert_eq!(nanos("1h2m3.5s"), 3_723 * SECOND + 500_000_000);
    assert_eq!(nanos("3h59m50.123456789s"), 14_390 * SECOND + 123_456_789);
    assert_eq!(nanos("150ms"), 150_000_000);
    assert_eq!(nanos("-1m2s"), -62 * SECOND);
    assert_eq!(nanos("+5s"), 5 * SECOND);
    assert_eq!(nanos("0"), 0);
    assert_eq!(nanos("-0"), 0);
    assert_eq!(nanos("0s"), 0);
    assert_eq!(nanos("1.5µs"), 1_500);
    assert_eq!(nanos("1.5us"), 1_500);
    assert_eq!(nanos("7ns"), 7);
    assert_eq!(nanos(".5s"), 500_000_000);
    assert_eq!(nanos("1.s"), SECOND);
    // Go adds components in any order and repeats.
    assert_eq!(nanos("1s1h"), 3_601 * SECOND);
    // Digits past nanosecond precision are read and dropped, as Go does.
    assert_eq!(nanos("1.0000000009s"), SECOND);
    assert_eq!(nanos("2562047h47m16.854775807s"), i64::MAX);
    assert_eq!(nanos("-2562047h47m16.854775808s"), i64::MIN);
}

#[test]
fn only_a_positive_duration_is_time_left() {
    assert_eq!(
        GoDuration::parse("1h59m59.84s").expect("valid").remaining(),
        Some(Duration::from_millis(7_199_840))
    );
    assert_eq!(GoDuration::parse("-1m2s").expect("valid").remaining(), None);
    assert_eq!(GoDuration::parse("0s").expect("valid").remaining(), None);
}

#[test]
fn garbage_is_refused_saying_what_is_wrong() {
    for (text, expected) in [
        ("", DurationError::Empty),
        (
            "-",
            DurationError::ExpectedNumber {
                text: "-".into(),
                at: 1,
            },
        ),
        (
            "1",
            DurationError::Unit {
                text: "1".into(),
                unit: String::new(),
            },
        ),
        (
            "10d",
            DurationError::Unit {
                text: "10d".into(),
                unit: "d".into(),
            },
        ),
        (
            "1h 2m",
            DurationError::Unit {
                text: "1h 2m".into(),
                unit: "h ".into(),
            },
        ),
        (
            "h",
            DurationError::ExpectedNumber {
                text: "h".into(),
                at: 0,
            },
        ),
        (
            "1h.m",
            DurationError::ExpectedNumber {
                text: "1h.m".into(),
                at: 2,
            },
        ),
        (
            "--1s",
            DurationError::ExpectedNumber {
                text: "--1s".into(),
                at: 1,
            },
        ),
        (
            "2562047h47m16.854775808s",
            DurationError::Overflow {
                text: "2562047h47m16.854775808s".into(),
            },
        ),
        (
            "99999999999999999999999999999999999999999h",
            DurationError::Overflow {
                text: "99999999999999999999999999999999999999999h".into(),
            },
        ),
    ] {
        assert_eq!(GoDuration::parse(text), Err(expected.clone()), "{text:?}");
        // Every refusal quotes the text (or says it is empty).
        let message = expected.to_string();
        assert!(
            message.contains(&format!("`{text}`")) || text.is_empty(),
            "{message}"
        );
    }
}

#[test]
fn formatting_follows_go() {
    for (nanos, text) in [
        (0, "0s"),
        (1, "1ns"),
        (1_100, "1.1µs"),
        (2_200_000, "2.2ms"),
        (3_300_000_000, "3.3s"),
        (-(4 * 60 * SECOND + 5 * SECOND), "-4m5s"),
        (3_723 * SECOND + 500_000_000, "1h2m3.5s"),
        (3_600 * SECOND, "1h0m0s"),
        (i64::MAX, "2562047h47m16.854775807s"),
        (i64::MIN, "-2562047h47m16.854775808s"),
    ] {
        assert_eq!(GoDuration::from_nanos(nanos).to_string(), text);
    }
}

proptest! {
    /// What Go writes, Go (and we) read back exactly.
    #[test]
    fn go_formatting_round_trips(nanos in any::<i64>()) {
        let duration = GoDuration::from_nanos(nanos);
        prop_assert_eq!(GoDuration::parse(&duration.to_string()), Ok(duration));
    }

    /// Hours, minutes, seconds and a nanosecond fraction written by hand, as the LAPI does.
    #[test]
    fn components_add_up(hours in 0i64..100_000, minutes in 0i64..60, secs in 0i64..60,
                         fraction in 0i64..1_000_000_000, negative in any::<bool>()) {
        let text = format!("{}{hours}h{minutes}m{secs}.{fraction:09}s",
                           if negative { "-" } else { "" });
        let magnitude = ((hours * 60 + minutes) * 60 + secs) * SECOND + fraction;
        let expected = if negative { -magnitude } else { magnitude };
        prop_assert_eq!(GoDuration::parse(&text).map(GoDuration::as_nanos), Ok(expected));
    }

    /// Nothing panics, whatever the bytes.
    #[test]
    fn arbitrary_text_is_parsed_or_refused(text in "[-+0-9.hmsuµnx ]{0,24}") {
        let _ = GoDuration::parse(&text);
    }
}
