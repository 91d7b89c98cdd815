//! The control API's request parser: method, path and body in, a validated [`ControlRequest`]
//! (or the error to answer with) out. It has no side effects, so the server only executes what
//! this module accepted, and the parser can be fuzzed on its own (`tests/fuzz.rs`).

use hyper::Method;
use ipnet::IpNet;
use serde::de::DeserializeOwned;

use crate::{
    control::{API_PREFIX, BanAdd, Import, ListAdd, Report, Targets},
    engine::{EngineError, EntryMeta, parse_targets},
    policy::feeds,
    store::state::ListKind,
};

/// A request the daemon can carry out, with every address already parsed.
#[derive(Clone, Debug, PartialEq)]
pub enum ControlRequest {
    /// `GET /v1/status`.
    Status,
    /// `GET /v1/stats`.
    Stats,
    /// `GET /v1/top`.
    Top,
    /// `GET /v1/lists/{block,allow}`.
    List(ListKind),
    /// `POST /v1/lists/{block,allow}/add`.
    ListAdd {
        kind: ListKind,
        nets: Vec<IpNet>,
        meta: EntryMeta,
    },
    /// `POST /v1/lists/{block,allow}/del`.
    ListDel { kind: ListKind, nets: Vec<IpNet> },
    /// `POST /v1/lists/{block,allow}/import`: the file already parsed.
    Import {
        kind: ListKind,
        origin: String,
        prefixes: Vec<IpNet>,
        /// Bad lines skipped (`file:line: reason`), when the caller asked to skip them.
        skipped: Vec<String>,
        meta: EntryMeta,
        /// What the audit log records of the import.
        detail: serde_json::Value,
    },
    /// `GET /v1/bans`.
    Bans,
    /// `POST /v1/bans/add`.
    BanAdd {
        nets: Vec<IpNet>,
        ttl_secs: u64,
        comment: Option<String>,
    },
    /// `POST /v1/bans/del`.
    BanDel { nets: Vec<IpNet> },
    /// `POST /v1/reload`.
    Reload,
    /// `GET /v1/jails`.
    Jails,
    /// `POST /v1/reports`: abuse by `source`, counted in a jail with `weight`.
    Report {
        source: std::net::IpAddr,
        reason: String,
        weight: u32,
        jail: Option<String>,
    },
}

/// Largest weight of one report: enough to ban at once under any sane `max_retry`, small
/// enough that sums over a window cannot overflow.
pub const MAX_REPORT_WEIGHT: u32 = 1_000_000;

/// Longest reason of a report (it is logged).
pub const MAX_REPORT_REASON: usize = 512;

/// Validates an abuse report: one address (a report is about a client, not a network), a
/// reason, a weight of at least 1.
fn report_request(report: Report) -> Result<ControlRequest, EngineError> {
    let source = report.source.trim().parse().map_err(|_| {
        EngineError::bad_request(format!(
            "report source `{}` is not an IP address (a report names one client)",
            report.source
        ))
    })?;
    if report.reason.trim().is_empty() || report.reason.len() > MAX_REPORT_REASON {
        return Err(EngineError::bad_request(format!(
            "a report needs a reason of 1 to {MAX_REPORT_REASON} bytes"
        )));
    }
    if !(1..=MAX_REPORT_WEIGHT).contains(&report.weight) {
        return Err(EngineError::bad_request(format!(
            "report weight {} is out of range 1..={MAX_REPORT_WEIGHT}",
            report.weight
        )));
    }
    Ok(ControlRequest::Report {
        source,
        reason: report.reason,
        weight: report.weight,
        jail: report.jail,
    })
}

/// A parsed request: the verb it is counted under in the metrics (bounded, so a client cannot
/// create label values at will) and what to do.
#[derive(Debug)]
pub struct Parsed {
    pub verb: String,
    pub request: Result<ControlRequest, EngineError>,
}

fn body<T: DeserializeOwned>(body: &[u8]) -> Result<T, EngineError> {
    serde_json::from_slice(body)
        .map_err(|err| EngineError::bad_request(format!("invalid request body: {err}")))
}

fn list_kind(name: &str) -> Option<ListKind> {
    match name {
        "block" => Some(ListKind::Block),
        "allow" => Some(ListKind::Allow),
        _ => None,
    }
}

/// The metrics verb of a route: `block.add`, `ban.list`, `status`, or `unknown`.
fn verb_of(segments: &[&str]) -> String {
    let verb = match segments {
        ["lists", list] => format!("{list}.list"),
        ["lists", list, action] => format!("{list}.{action}"),
        ["bans"] => "ban.list".to_owned(),
        ["bans", action] => format!("ban.{action}"),
        [one] => (*one).to_owned(),
        _ => "unknown".to_owned(),
    };
    if verb.len() > 32 || !verb.chars().all(|c| c.is_ascii_lowercase() || c == '.') {
        "unknown".to_owned()
    } else {
        verb
    }
}

/// Parses one request.
pub fn parse(method: &Method, path: &str, request_body: &[u8]) -> Parsed {
    let Some(route) = path.strip_prefix(API_PREFIX) else {
        return Parsed {
            verb: "unknown".to_owned(),
            request: Err(EngineError::NotFound(format!(
                "unknown path {path}: this daemon speaks the {API_PREFIX} API"
            ))),
        };
    };
    let segments: Vec<&str> = route.trim_matches('/').split('/').collect();
    let verb = verb_of(&segments);
    let request = match (method, segments.as_slice()) {
        (&Method::GET, ["status"]) => Ok(ControlRequest::Status),
        (&Method::GET, ["stats"]) => Ok(ControlRequest::Stats),
        (&Method::GET, ["top"]) => Ok(ControlRequest::Top),
        (&Method::GET, ["lists", list]) if list_kind(list).is_some() => Ok(ControlRequest::List(
            list_kind(list).unwrap_or(ListKind::Block),
        )),
        (&Method::POST, ["lists", list, "add"]) if list_kind(list).is_some() => {
            let kind = list_kind(list).unwrap_or(ListKind::Block);
            body::<ListAdd>(request_body).and_then(|add| {
                Ok(ControlRequest::ListAdd {
                    kind,
                    nets: parse_targets(&add.cidrs)?,
                    meta: EntryMeta {
                        ttl_secs: add.ttl_secs,
                        comment: add.comment,
                    },
                })
            })
        }
        (&Method::POST, ["lists", list, "del"]) if list_kind(list).is_some() => {
            let kind = list_kind(list).unwrap_or(ListKind::Block);
            body::<Targets>(request_body).and_then(|targets| {
                Ok(ControlRequest::ListDel {
                    kind,
                    nets: parse_targets(&targets.cidrs)?,
                })
            })
        }
        (&Method::POST, ["lists", list, "import"]) if list_kind(list).is_some() => {
            let kind = list_kind(list).unwrap_or(ListKind::Block);
            body::<Import>(request_body).and_then(|import| import_request(kind, import))
        }
        (&Method::GET, ["bans"]) => Ok(ControlRequest::Bans),
        (&Method::POST, ["bans", "add"]) => body::<BanAdd>(request_body).and_then(|ban| {
            Ok(ControlRequest::BanAdd {
                nets: parse_targets(&ban.cidrs)?,
                ttl_secs: ban.ttl_secs,
                comment: ban.comment,
            })
        }),
        (&Method::POST, ["bans", "del"]) => body::<Targets>(request_body).and_then(|targets| {
            Ok(ControlRequest::BanDel {
                nets: parse_targets(&targets.cidrs)?,
            })
        }),
        (&Method::POST, ["reload"]) => Ok(ControlRequest::Reload),
        (&Method::GET, ["jails"]) => Ok(ControlRequest::Jails),
        (&Method::POST, ["reports"]) => body::<Report>(request_body).and_then(report_request),
        _ => Err(EngineError::NotFound(format!(
            "no such request: {method} {path} (see docs/CONTROL-API.md)"
        ))),
    };
    Parsed { verb, request }
}

/// An import: the file parsed in its format; bad lines refuse the whole import unless the
/// caller asked to skip them.
fn import_request(kind: ListKind, import: Import) -> Result<ControlRequest, EngineError> {
    let parsed = feeds::parse(&import.content, import.format);
    let origin = std::path::Path::new(&import.origin);
    let bad: Vec<String> = parsed
        .bad_lines
        .iter()
        .map(|line| line.describe(origin))
        .collect();
    if !bad.is_empty() && !import.skip_bad_lines {
        let shown: Vec<String> = bad.iter().take(20).cloned().collect();
        return Err(EngineError::bad_request(format!(
            "{} bad line(s) in {}; nothing was imported (pass --skip-bad-lines to import the \
             rest):\n{}",
            bad.len(),
            import.origin,
            shown.join("\n")
        )));
    }
    if parsed.prefixes.is_empty() {
        return Err(EngineError::bad_request(format!(
            "{} holds no addresses or CIDRs; nothing was imported",
            import.origin
        )));
    }
    let detail = serde_json::json!({
        "file": import.origin, "format": import.format, "skipped_lines": bad.len(),
    });
    Ok(ControlRequest::Import {
        kind,
        origin: import.origin,
        prefixes: parsed.prefixes,
        skipped: bad,
        meta: EntryMeta {
            ttl_secs: import.ttl_secs,
            comment: import.comment,
        },
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_bodies() {
        let parsed = parse(
            &Method::POST,
            "/v1/lists/block/add",
            br#"{"cidrs": ["192.0.2.7", "2001:db8::/33"], "ttl_secs": 60}"#,
        );
        assert_eq!(parsed.verb, "block.add");
        assert_eq!(
            parsed.request.expect("valid"),
            ControlRequest::ListAdd {
                kind: ListKind::Block,
                nets: vec![
                    "192.0.2.7/32".parse().expect("net"),
                    "2001:db8::/33".parse().expect("net")
                ],
                meta: EntryMeta {
                    ttl_secs: Some(60),
                    comment: None
                },
            }
        );
        let bad = parse(
            &Method::POST,
            "/v1/bans/add",
            br#"{"cidrs": ["nope"], "ttl_secs": 1}"#,
        );
        assert!(matches!(
            bad.request.expect_err("invalid"),
            EngineError::Invalid(_)
        ));
        let report = parse(
            &Method::POST,
            "/v1/reports",
            br#"{"source": "198.51.100.7", "reason": "replayed JWT", "weight": 3}"#,
        );
        assert_eq!(report.verb, "reports");
        assert_eq!(
            report.request.expect("valid"),
            ControlRequest::Report {
                source: "198.51.100.7".parse().expect("ip"),
                reason: "replayed JWT".into(),
                weight: 3,
                jail: None,
            }
        );
        for bad in [
            &br#"{"source": "198.51.100.0/24", "reason": "x"}"#[..],
            br#"{"source": "198.51.100.7", "reason": " "}"#,
            br#"{"source": "198.51.100.7", "reason": "x", "weight": 0}"#,
            br#"{"source": "198.51.100.7", "reason": "x", "wieght": 2}"#,
        ] {
            let parsed = parse(&Method::POST, "/v1/reports", bad);
            assert!(
                matches!(
                    parsed.request.expect_err("invalid"),
                    EngineError::Invalid(_)
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse(&Method::GET, "/v1/jails", b"")
                .request
                .expect("valid"),
            ControlRequest::Jails
        );
        let unknown = parse(&Method::DELETE, "/v1/lists/../../etc", b"");
        assert_eq!(unknown.verb, "unknown");
        assert!(matches!(
            unknown.request.expect_err("no route"),
            EngineError::NotFound(_)
        ));
    }
}
