//! Go durations, as CrowdSec's Local API writes a decision's remaining time: `1h59m59.84s`,
//! `3h59m50.123456789s`, `150ms`, and for a decision that has already expired a negative one
//! (`-1m2s`). The format is Go's `time.Duration.String()` and `time.ParseDuration()`: an optional
//! sign, then one or more decimal numbers (with an optional fraction), each followed by a unit
//! (`ns`, `us` or `µs`, `ms`, `s`, `m`, `h`); `0` alone is zero. The value is a signed count of
//! nanoseconds that must fit an `i64` (about 292 years), as in Go.
//!
//! humantime (the policy's durations) reads a different language (`1h 2m`, `2days`) and no
//! negative or fractional values, so the LAPI's own format gets its own parser: what the network
//! sends is checked exactly, and anything else is refused with the text and the reason.

use std::time::Duration;

#[cfg(test)]
mod tests;

/// Why a text is not a Go duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing to parse.
    #[error("empty duration (expected a Go duration such as \"1h2m3.5s\")")]
    Empty,
    /// A number was expected at `at` (a byte offset).
    #[error("`{text}` is not a Go duration: expected a number at byte {at}")]
    ExpectedNumber {
        /// The whole text.
        text: String,
        /// Byte offset of the problem.
        at: usize,
    },
    /// A number lacks its unit, or the unit is not one of Go's.
    #[error(
        "`{text}` is not a Go duration: unknown or missing unit `{unit}` (expected ns, us, µs, \
         ms, s, m or h)"
    )]
    Unit {
        /// The whole text.
        text: String,
        /// What stood where the unit should be.
        unit: String,
    },
    /// The value does not fit 64-bit nanoseconds.
    #[error("`{text}` is out of range: a Go duration is at most about 292 years")]
    Overflow {
        /// The whole text.
        text: String,
    },
}

/// A Go duration: signed nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoDuration {
    nanos: i64,
}

/// Nanoseconds per unit, longest unit names first where one is a prefix of another.
const UNITS: [(&str, u64); 7] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

impl GoDuration {
    /// A duration of `nanos` nanoseconds (negative: in the past).
    pub const fn from_nanos(nanos: i64) -> Self {
        Self { nanos }
    }

    /// Signed nanoseconds.
    pub const fn as_nanos(self) -> i64 {
        self.nanos
    }

    /// The time left, or `None` when the duration is zero or negative (a decision that has
    /// expired: not a ban).
    pub fn remaining(self) -> Option<Duration> {
        u64::try_from(self.nanos)
            .ok()
            .filter(|nanos| *nanos > 0)
            .map(Duration::from_nanos)
    }

    /// Parses Go's duration syntax (see the module docs).
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        if text.is_empty() {
            return Err(DurationError::Empty);
        }
        let bytes = text.as_bytes();
        let mut at = 0;
        let negative = match bytes[0] {
            b'-' => {
                at = 1;
                true
            }
            b'+' => {
                at = 1;
                false
            }
            _ => false,
        };
        if &text[at..] == "0" {
            return Ok(Self { nanos: 0 });
        }
        let overflow = || DurationError::Overflow {
            text: text.to_owned(),
        };
        if at == text.len() {
            return Err(DurationError::ExpectedNumber {
                text: text.to_owned(),
                at,
            });
        }
        // Accumulated in u128 so that one component can be checked against the i64 range after
        // the fact; magnitudes stop growing once they pass it.
        let limit = u128::from(i64::MAX.unsigned_abs()) + u128::from(negative);
        let mut total: u128 = 0;
        while at < text.len() {
            let start = at;
            let mut whole: u128 = 0;
            while at < bytes.len() && bytes[at].is_ascii_digit() {
                whole = (whole * 10 + u128::from(bytes[at] - b'0')).min(limit + 1);
                at += 1;
            }
            let had_whole = at > start;
            // The fraction: digits past nanosecond precision of the unit still have to be
            // digits, but no longer change the value (Go drops them the same way).
            let mut fraction: u128 = 0;
            let mut scale: u128 = 1;
            let mut had_fraction = false;
            if at < bytes.len() && bytes[at] == b'.' {
                at += 1;
                while at < bytes.len() && bytes[at].is_ascii_digit() {
                    had_fraction = true;
                    if scale < 10u128.pow(30) {
                        fraction = fraction * 10 + u128::from(bytes[at] - b'0');
                        scale *= 10;
                    }
                    at += 1;
                }
            }
            if !had_whole && !had_fraction {
                return Err(DurationError::ExpectedNumber {
                    text: text.to_owned(),
                    at: start,
                });
            }
            let unit_start = at;
            while at < bytes.len() && bytes[at] != b'.' && !bytes[at].is_ascii_digit() {
                at += 1;
            }
            let unit = &text[unit_start..at];
            let Some((_, per_unit)) = UNITS.iter().find(|(name, _)| *name == unit) else {
                return Err(DurationError::Unit {
                    text: text.to_owned(),
                    unit: unit.to_owned(),
                });
            };
            let per_unit = u128::from(*per_unit);
            total = total
                .checked_add(whole.checked_mul(per_unit).ok_or_else(overflow)?)
                .and_then(|total| total.checked_add(fraction * per_unit / scale))
                .ok_or_else(overflow)?;
            if total > limit {
                return Err(overflow());
            }
        }
        let magnitude = i128::try_from(total).map_err(|_| overflow())?;
        let signed = if negative { -magnitude } else { magnitude };
        let nanos = i64::try_from(signed).map_err(|_| overflow())?;
        Ok(Self { nanos })
    }
}

impl std::str::FromStr for GoDuration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// Writes the duration as Go's `Duration.String()` does: `1h2m3.5s`, `150ms`, `1.5µs`, `0s`.
impl std::fmt::Display for GoDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.nanos < 0 { "-" } else { "" };
        let magnitude = self.nanos.unsigned_abs();
        // A fraction without trailing zeros, or nothing when it is zero.
        let fraction = |value: u64, digits: usize| {
            let text = format!("{value:0digits$}");
            let text = text.trim_end_matches('0');
            if text.is_empty() {
                String::new()
            } else {
                format!(".{text}")
            }
        };
        if magnitude == 0 {
            return f.write_str("0s");
        }
        if magnitude < 1_000 {
            return write!(f, "{sign}{magnitude}ns");
        }
        if magnitude < 1_000_000 {
            let (whole, rest) = (magnitude / 1_000, magnitude % 1_000);
            return write!(f, "{sign}{whole}{}µs", fraction(rest, 3));
        }
        if magnitude < 1_000_000_000 {
            let (whole, rest) = (magnitude / 1_000_000, magnitude % 1_000_000);
            return write!(f, "{sign}{whole}{}ms", fraction(rest, 6));
        }
        let secs = magnitude / 1_000_000_000;
        let nanos = magnitude % 1_000_000_000;
        let (hours, minutes, secs) = (secs / 3600, secs / 60 % 60, secs % 60);
        f.write_str(sign)?;
        if hours > 0 {
            write!(f, "{hours}h")?;
        }
        if hours > 0 || minutes > 0 {
            write!(f, "{minutes}m")?;
        }
        write!(f, "{secs}{}s", fraction(nanos, 9))
    }
}
