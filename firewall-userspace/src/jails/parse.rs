//! Access-log lines to requests: the NCSA combined format (nginx, Apache) and JSON lines with a
//! field map (envoy, traefik, caddy), and which address a request counts against when it came
//! through a trusted proxy.

use std::{net::IpAddr, sync::LazyLock};

use ipnet::IpNet;
use regex::Regex;

use crate::policy::jails::{FieldMap, JailConfig, LogFormat};

/// What a jail needs of one logged request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// The peer that sent the request (the log's client address).
    pub peer: IpAddr,
    /// Response status.
    pub status: u16,
    /// Request method.
    pub method: String,
    /// Request target as logged (path and query).
    pub path: String,
    /// User-Agent, if logged.
    pub user_agent: Option<String>,
    /// X-Forwarded-For, if logged.
    pub forwarded_for: Option<String>,
}

/// Why a line was not understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// The line does not have the combined format's shape.
    #[error("not in the combined log format")]
    NotCombined,
    /// The line is not a JSON object.
    #[error("not a JSON object: {0}")]
    NotJson(String),
    /// A field the jail needs is missing or of the wrong type.
    #[error("field `{0}` is missing or not a {1}")]
    Field(String, &'static str),
    /// The client field is not an IP address (a host name, say).
    #[error("client `{0}` is not an IP address")]
    Client(String),
}

/// `%h %l %u %t "%r" %>s %b ["%{Referer}i" "%{User-agent}i" ["%{X-Forwarded-For}i"]]`.
/// Quoted fields may hold `\"`, which nginx and Apache write for a quote in a header.
static COMBINED: LazyLock<Regex> = LazyLock::new(|| {
    let quoted = r#""((?:[^"\\]|\\.)*)""#;
    Regex::new(&format!(
        r#"^(\S+) \S+ (?:\S+|{quoted}) \[[^\]]*\] {quoted} (\d{{3}}) \S+(?: {quoted} {quoted}(?: {quoted})?)?"#
    ))
    .unwrap_or_else(|err| panic!("the combined-format pattern is valid: {err}"))
});

fn unescape(text: &str) -> String {
    if !text.contains('\\') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(next) = chars.next()
        {
            out.push(next);
        } else {
            out.push(c);
        }
    }
    out
}

/// A logged header that is absent: `-` in the combined format, empty or `-` in JSON.
fn present(value: String) -> Option<String> {
    (!value.is_empty() && value != "-").then_some(value)
}

fn parse_ip(text: &str) -> Result<IpAddr, ParseError> {
    let trimmed = text.trim();
    // `[2001:db8::1]` and `192.0.2.1:52331` appear where a log writes the peer with its port.
    let bare = trimmed
        .strip_prefix('[')
        .and_then(|rest| rest.split_once(']').map(|(ip, _)| ip))
        .unwrap_or(trimmed);
    bare.parse()
        .or_else(|_| match bare.rsplit_once(':') {
            Some((ip, port)) if !ip.contains(':') && port.parse::<u16>().is_ok() => ip.parse(),
            _ => bare.parse(),
        })
        .map_err(|_| ParseError::Client(text.to_owned()))
}

/// Parses one combined-format line.
pub fn parse_combined(line: &str) -> Result<LogRecord, ParseError> {
    let captures = COMBINED.captures(line).ok_or(ParseError::NotCombined)?;
    let text = |i: usize| captures.get(i).map(|m| m.as_str()).unwrap_or("");
    let peer = parse_ip(text(1))?;
    let request = unescape(text(3));
    // "GET /path HTTP/1.1"; a malformed request line ("-", garbage) has no method and path.
    let mut parts = request.splitn(3, ' ');
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let status = text(4).parse().map_err(|_| ParseError::NotCombined)?;
    Ok(LogRecord {
        peer,
        status,
        method,
        path,
        user_agent: present(unescape(text(6))),
        forwarded_for: present(unescape(text(7))),
    })
}

/// The value at `path` (`a.b.c`); an array yields its first element.
fn lookup<'a>(object: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    let mut value = object;
    for key in path.split('.') {
        value = value.get(key)?;
        while let serde_json::Value::Array(items) = value {
            value = items.first()?;
        }
    }
    Some(value)
}

fn string_at(object: &serde_json::Value, path: &str) -> Option<String> {
    match lookup(object, path)? {
        serde_json::Value::String(text) => Some(text.clone()),
        serde_json::Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// Parses one JSON line through `fields`.
pub fn parse_json(line: &str, fields: &FieldMap) -> Result<LogRecord, ParseError> {
    let object: serde_json::Value =
        serde_json::from_str(line).map_err(|err| ParseError::NotJson(err.to_string()))?;
    if !object.is_object() {
        return Err(ParseError::NotJson(
            "a JSON value that is not an object".into(),
        ));
    }
    let required = |path: &str, what: &'static str| {
        string_at(&object, path).ok_or_else(|| ParseError::Field(path.to_owned(), what))
    };
    let peer = parse_ip(&required(&fields.client, "string")?)?;
    let status = required(&fields.status, "number")?
        .parse()
        .map_err(|_| ParseError::Field(fields.status.clone(), "number"))?;
    Ok(LogRecord {
        peer,
        status,
        method: string_at(&object, &fields.method).unwrap_or_default(),
        path: string_at(&object, &fields.path).unwrap_or_default(),
        user_agent: string_at(&object, &fields.user_agent).and_then(present),
        forwarded_for: string_at(&object, &fields.forwarded_for).and_then(present),
    })
}

/// Parses one line in `format`.
pub fn parse_line(
    line: &str,
    format: LogFormat,
    fields: &FieldMap,
) -> Result<LogRecord, ParseError> {
    match format {
        LogFormat::Combined => parse_combined(line),
        LogFormat::Json => parse_json(line, fields),
    }
}

/// The address a request counts against. Only a peer in `trusted` (a proxy of ours) can speak
/// for someone else: then X-Forwarded-For is read from the right, skipping our own proxies,
/// and the first other address is the client. Anything a client wrote into the header itself
/// stands left of that and is never believed. A header that is unparsable, or holds only
/// trusted proxies, leaves the peer (or the leftmost proxy).
pub fn client_address(record: &LogRecord, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&record.peer) {
        return record.peer;
    }
    let Some(header) = &record.forwarded_for else {
        return record.peer;
    };
    let mut client = record.peer;
    for hop in header.rsplit(',') {
        match parse_ip(hop) {
            Ok(ip) if is_trusted(&ip) => client = ip,
            Ok(ip) => return ip,
            Err(_) => return client,
        }
    }
    client
}

/// Whether `record` is one of the requests `jail` counts.
pub fn matches(jail: &JailConfig, record: &LogRecord) -> bool {
    (jail.status.is_empty() || jail.status.contains(&record.status))
        && (jail.methods.is_empty()
            || jail
                .methods
                .iter()
                .any(|method| method.eq_ignore_ascii_case(&record.method)))
        && jail
            .path
            .as_ref()
            .is_none_or(|pattern| pattern.0.is_match(&record.path))
        && jail.user_agent.as_ref().is_none_or(|pattern| {
            pattern
                .0
                .is_match(record.user_agent.as_deref().unwrap_or(""))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn combined_lines_of_nginx_and_apache_parse() {
        let nginx = r#"198.51.100.7 - alice [12/Mar/2025:10:00:01 +0000] "POST /login?next=%2F HTTP/1.1" 401 179 "-" "curl/7.88.1""#;
        assert_eq!(
            parse_combined(nginx),
            Ok(LogRecord {
                peer: ip("198.51.100.7"),
                status: 401,
                method: "POST".into(),
                path: "/login?next=%2F".into(),
                user_agent: Some("curl/7.88.1".into()),
                forwarded_for: None,
            })
        );
        // Apache's common format (no referer, no agent), an IPv6 peer, a quoted user name.
        let apache =
            r#"2001:db8::9 - "bob smith" [12/Mar/2025:10:00:01 +0000] "GET /admin HTTP/1.0" 403 -"#;
        let record = parse_combined(apache).expect("common format");
        assert_eq!((record.peer, record.status), (ip("2001:db8::9"), 403));
        assert_eq!(record.user_agent, None);
        // nginx with "$http_x_forwarded_for" appended, and an escaped quote in the agent.
        let forwarded = r#"192.0.2.10 - - [12/Mar/2025:10:00:01 +0000] "GET / HTTP/1.1" 200 5 "https://example.com/" "evil \"bot\"" "203.0.113.5, 192.0.2.10""#;
        let record = parse_combined(forwarded).expect("with XFF");
        assert_eq!(record.user_agent.as_deref(), Some("evil \"bot\""));
        assert_eq!(
            record.forwarded_for.as_deref(),
            Some("203.0.113.5, 192.0.2.10")
        );
        // A garbage request line still has a peer and a status.
        let garbage =
            r#"203.0.113.9 - - [12/Mar/2025:10:00:01 +0000] "\x16\x03\x01" 400 157 "-" "-""#;
        let record = parse_combined(garbage).expect("garbage request");
        assert_eq!((record.status, record.path.as_str()), (400, ""));
        assert_eq!(parse_combined("hello world"), Err(ParseError::NotCombined));
        assert_eq!(
            parse_combined(r#"host.example - - [x] "GET / HTTP/1.1" 401 0 "-" "-""#),
            Err(ParseError::Client("host.example".into()))
        );
    }

    #[test]
    fn json_lines_parse_through_the_field_map() {
        let nginx = r#"{"remote_addr":"198.51.100.7","status":"401","method":"POST","path":"/login","user_agent":"x","x_forwarded_for":""}"#;
        let record = parse_json(nginx, &FieldMap::default()).expect("nginx json");
        assert_eq!(
            (record.peer, record.status, record.method.as_str()),
            (ip("198.51.100.7"), 401, "POST")
        );
        assert_eq!(record.forwarded_for, None);
        // caddy: nested objects, headers as arrays, the peer as its own field.
        let caddy = r#"{"level":"info","request":{"remote_ip":"2001:db8::5","method":"GET","uri":"/api","headers":{"User-Agent":["Go-http-client/1.1"],"X-Forwarded-For":["203.0.113.4"]}},"status":403}"#;
        let fields = FieldMap {
            client: "request.remote_ip".into(),
            status: "status".into(),
            method: "request.method".into(),
            path: "request.uri".into(),
            user_agent: "request.headers.User-Agent".into(),
            forwarded_for: "request.headers.X-Forwarded-For".into(),
        };
        let record = parse_json(caddy, &fields).expect("caddy");
        assert_eq!(
            record,
            LogRecord {
                peer: ip("2001:db8::5"),
                status: 403,
                method: "GET".into(),
                path: "/api".into(),
                user_agent: Some("Go-http-client/1.1".into()),
                forwarded_for: Some("203.0.113.4".into()),
            }
        );
        // envoy writes the peer with its port.
        let envoy = r#"{"downstream_remote_address":"198.51.100.8:40112","response_code":429}"#;
        let fields = FieldMap {
            client: "downstream_remote_address".into(),
            status: "response_code".into(),
            ..FieldMap::default()
        };
        let record = parse_json(envoy, &fields).expect("envoy");
        assert_eq!((record.peer, record.status), (ip("198.51.100.8"), 429));
        assert!(matches!(
            parse_json("{\"status\":401}", &FieldMap::default()),
            Err(ParseError::Field(field, _)) if field == "remote_addr"
        ));
        assert!(matches!(
            parse_json("not json", &FieldMap::default()),
            Err(ParseError::NotJson(_))
        ));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["192.0.2.0/28".parse().expect("net")];
        let record = |peer: &str, xff: Option<&str>| LogRecord {
            peer: ip(peer),
            status: 401,
            method: "GET".into(),
            path: "/".into(),
            user_agent: None,
            forwarded_for: xff.map(str::to_owned),
        };
        // A direct client cannot name someone else.
        assert_eq!(
            client_address(&record("198.51.100.7", Some("203.0.113.1")), &trusted),
            ip("198.51.100.7")
        );
        // Through our proxy: the address the proxy saw.
        assert_eq!(
            client_address(&record("192.0.2.3", Some("203.0.113.1")), &trusted),
            ip("203.0.113.1")
        );
        // A client-written prefix is ignored; chained trusted proxies are skipped.
        assert_eq!(
            client_address(
                &record("192.0.2.3", Some("10.9.9.9, 203.0.113.1, 192.0.2.4")),
                &trusted
            ),
            ip("203.0.113.1")
        );
        // Only proxies in the header, or none: the leftmost proxy, or the peer.
        assert_eq!(
            client_address(&record("192.0.2.3", Some("192.0.2.5")), &trusted),
            ip("192.0.2.5")
        );
        assert_eq!(
            client_address(&record("192.0.2.3", None), &trusted),
            ip("192.0.2.3")
        );
        // Garbage next to the proxy stops the walk there.
        assert_eq!(
            client_address(&record("192.0.2.3", Some("203.0.113.1, unknown")), &trusted),
            ip("192.0.2.3")
        );
        // Without trusted proxies the header is never read.
        assert_eq!(
            client_address(&record("192.0.2.3", Some("203.0.113.1")), &[]),
            ip("192.0.2.3")
        );
    }

    #[test]
    fn jails_match_on_status_method_path_and_agent() {
        let loaded = crate::policy::Loaded::from_str(
            std::path::Path::new("p.toml"),
            "[[jail]]\nname = \"j\"\nlog = \"a\"\nstatus = [401]\nmethods = [\"POST\"]\n\
             path = \"^/login\"\nuser_agent = \"(?i)python\"\n",
        )
        .unwrap_or_else(|err| panic!("{err}"));
        let jail = &loaded.policy.jails[0];
        let record = LogRecord {
            peer: ip("198.51.100.7"),
            status: 401,
            method: "post".into(),
            path: "/login?x=1".into(),
            user_agent: Some("Python-urllib/3.11".into()),
            forwarded_for: None,
        };
        assert!(matches(jail, &record));
        for changed in [
            LogRecord {
                status: 403,
                ..record.clone()
            },
            LogRecord {
                method: "GET".into(),
                ..record.clone()
            },
            LogRecord {
                path: "/api/login".into(),
                ..record.clone()
            },
            LogRecord {
                user_agent: None,
                ..record.clone()
            },
        ] {
            assert!(!matches(jail, &changed), "{changed:?}");
        }
    }
}
