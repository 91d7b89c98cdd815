//! Property-based fuzzing of everything that parses untrusted text (issue #7): the policy
//! parser and compiler, the list importers (plain, FireHOL, Spamhaus text and JSON lines), the
//! control API's request parser, and a CrowdSec LAPI's decision stream (issue #17).
//!
//! Inputs are the seed corpus in `fuzz/corpus/` (kept in the repository, one file per
//! interesting shape) mutated by proptest: bits flipped, chunks deleted or duplicated, hostile
//! tokens spliced in. The properties: no parser panics; a refusal is an error with a message; a
//! parser that accepts something returns values that hold up (compiled tables, normalised
//! prefixes, addresses that really were in the input). proptest keeps failing cases in
//! `proptest-regressions/fuzz.txt`, which is committed with the fix.
//!
//! `PROPTEST_CASES=100000 cargo test -p firewall-userspace --test fuzz` fuzzes longer.

use std::path::{Path, PathBuf};

use firewall_userspace::{
    Loaded,
    compile::Compiled,
    crowdsec::{DecisionFilter, parse_stream},
    daemon::request,
    engine::EngineError,
    policy::feeds::{self, FeedFormat},
};
use hyper::Method;
use ipnet::IpNet;
use proptest::prelude::*;

fn corpus(kind: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(kind);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("corpus {}: {err}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let bytes =
                std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
            (path, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    files
}

/// Tokens that break parsers: limits, separators, odd numbers, odd characters.
const TOKENS: &[&str] = &[
    "0.0.0.0/0",
    "::/0",
    "/33",
    "/129",
    "/-1",
    "255.255.255.255",
    "1.2.3.4.5",
    "::ffff:192.0.2.1",
    "2001:db8::1%eth0",
    "-1",
    "18446744073709551616",
    "4294967296",
    "1e309",
    "\"",
    "'",
    "=",
    "[[rule]]",
    "[limits]",
    "{",
    "}",
    "[",
    "]",
    ",",
    ";",
    "#",
    "\n",
    "\r\n",
    "\0",
    "\u{feff}",
    "é",
    "\\u0000",
    "ports = [0, 65535, 65536]",
    "per_source = { packets_per_second = 0 }",
    "ban_ttl = \"0s\"",
    "ban_ttl = \"99999999999d\"",
    "max_v4_prefixes = 0",
    "{\"cidr\":",
    "null",
    "true",
];

/// One edit of an input.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit { at: usize, bit: u8 },
    Delete { at: usize, len: usize },
    Duplicate { at: usize, len: usize },
    Insert { at: usize, token: usize },
    Byte { at: usize, value: u8 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, token)| Mutation::Insert { at, token }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Byte { at, value }),
    ]
}

fn apply(seed: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for mutation in mutations {
        let len = bytes.len();
        let at = |at: usize| if len == 0 { 0 } else { at % (len + 1) };
        match *mutation {
            Mutation::FlipBit { at: i, bit } if len > 0 => bytes[i % len] ^= 1 << bit,
            Mutation::Delete { at: i, len: n } => {
                let start = at(i);
                let end = (start + n).min(len);
                bytes.drain(start..end);
            }
            Mutation::Duplicate { at: i, len: n } => {
                let start = at(i);
                let end = (start + n).min(len);
                let chunk = bytes[start..end].to_vec();
                bytes.splice(end..end, chunk);
            }
            Mutation::Insert { at: i, token } => {
                let start = at(i);
                bytes.splice(start..start, TOKENS[token].bytes());
            }
            Mutation::Byte { at: i, value } if len > 0 => bytes[i % len] = value,
            _ => {}
        }
    }
    bytes
}

/// A corpus entry, mutated.
fn mutated(kind: &'static str) -> impl Strategy<Value = (PathBuf, Vec<u8>)> {
    let seeds = corpus(kind);
    (0..seeds.len(), prop::collection::vec(mutation(), 0..12)).prop_map(move |(pick, mutations)| {
        let (path, bytes) = &seeds[pick];
        (path.clone(), apply(bytes, &mutations))
    })
}

/// Parses a policy and, if it is valid, compiles its tables as the daemon would.
fn policy_holds_up(path: &Path, text: &str) -> Result<(), String> {
    match Loaded::from_str(path, text) {
        Ok(loaded) => {
            let policy = loaded.policy;
            // Compiling may refuse a list over its limit, with a message; it must not panic.
            if let Err(err) = Compiled::build(&policy, &policy.allow, &policy.block, None) {
                assert!(!err.to_string().is_empty(), "empty capacity error");
            }
            let _ = policy.model();
            Ok(())
        }
        Err(err) => {
            let message = err.to_string();
            assert!(!message.trim().is_empty(), "policy error without a message");
            Err(message)
        }
    }
}

fn format_of(path: &Path) -> FeedFormat {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.starts_with("spamhaus") {
        FeedFormat::Spamhaus
    } else if name.ends_with(".netset") {
        FeedFormat::Firehol
    } else {
        FeedFormat::Plain
    }
}

/// Parses a list; every prefix it returns is normalised, and there are never more results than
/// lines.
fn feed_holds_up(text: &str, format: FeedFormat) {
    let parsed = feeds::parse(text, format);
    let lines = text.lines().count().max(1);
    assert!(
        parsed.prefixes.len() + parsed.bad_lines.len() <= lines,
        "{} prefixes and {} bad lines from {lines} lines",
        parsed.prefixes.len(),
        parsed.bad_lines.len()
    );
    for prefix in &parsed.prefixes {
        assert_eq!(*prefix, prefix.trunc(), "{prefix} kept host bits");
    }
    for bad in &parsed.bad_lines {
        assert!(
            !bad.describe(Path::new("list")).is_empty(),
            "bad line without a description"
        );
    }
}

/// `METHOD PATH\nBODY` of a control corpus file.
fn split_request(bytes: &[u8]) -> (Method, String, Vec<u8>) {
    let newline = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len());
    let head = String::from_utf8_lossy(&bytes[..newline]).into_owned();
    let body = bytes.get(newline + 1..).unwrap_or_default().to_vec();
    let (method, path) = head.split_once(' ').unwrap_or((head.as_str(), ""));
    let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
    (method, path.to_owned(), body)
}

#[test]
fn the_seed_corpus_is_valid() {
    for (path, bytes) in corpus("policy") {
        let text = String::from_utf8(bytes).expect("UTF-8 seed");
        if let Err(err) = policy_holds_up(&path, &text) {
            panic!("{}: {err}", path.display());
        }
    }
    for (path, bytes) in corpus("feeds") {
        let text = String::from_utf8(bytes).expect("UTF-8 seed");
        let parsed = feeds::parse(&text, format_of(&path));
        assert!(
            parsed.bad_lines.is_empty() && !parsed.prefixes.is_empty(),
            "{}: {} prefixes, bad lines {:?}",
            path.display(),
            parsed.prefixes.len(),
            parsed.bad_lines
        );
    }
    for (path, bytes) in corpus("crowdsec") {
        let batch = parse_stream(&bytes, &DecisionFilter::everything())
            .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        assert!(
            !batch.new.is_empty(),
            "{}: no decision taken",
            path.display()
        );
    }
    for (path, bytes) in corpus("control") {
        let (method, route, body) = split_request(&bytes);
        let parsed = request::parse(&method, &route, &body);
        assert!(
            parsed.request.is_ok() && parsed.verb != "unknown",
            "{}: {:?} as {}",
            path.display(),
            parsed.request,
            parsed.verb
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 3_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_policy_parser_never_panics((path, bytes) in mutated("policy")) {
        let _ = policy_holds_up(&path, &String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn the_list_importers_never_panic((path, bytes) in mutated("feeds"), format in 0..3u8) {
        let text = String::from_utf8_lossy(&bytes);
        // Each seed through its own format and through a random one.
        feed_holds_up(&text, format_of(&path));
        feed_holds_up(&text, [FeedFormat::Plain, FeedFormat::Firehol, FeedFormat::Spamhaus][format as usize]);
    }

    /// Generated lists of valid entries come back exactly, normalised, first occurrence kept.
    #[test]
    fn the_plain_importer_returns_exactly_the_listed_prefixes(
        entries in prop::collection::vec((any::<u32>(), 0u8..=32, any::<u128>(), 0u8..=128, any::<bool>()), 0..200)
    ) {
        let mut text = String::new();
        let mut expected: Vec<IpNet> = Vec::new();
        for (v4, len4, v6, len6, is_v4) in entries {
            let net: IpNet = if is_v4 {
                ipnet::Ipv4Net::new(v4.into(), len4).expect("len").into()
            } else {
                ipnet::Ipv6Net::new(v6.into(), len6).expect("len").into()
            };
            text.push_str(&format!("{net}  # entry\n"));
            if !expected.contains(&net.trunc()) {
                expected.push(net.trunc());
            }
        }
        let parsed = feeds::parse(&text, FeedFormat::Plain);
        prop_assert!(parsed.bad_lines.is_empty(), "{:?}", parsed.bad_lines);
        prop_assert_eq!(parsed.prefixes, expected);
    }

    /// What a LAPI sends is checked whole: an accepted answer holds only normalised prefixes of
    /// the scope's kind and time left; a refused one says why.
    #[test]
    fn the_decision_stream_parser_never_panics((_, bytes) in mutated("crowdsec")) {
        match parse_stream(&bytes, &DecisionFilter::everything()) {
            Ok(batch) => {
                for decision in &batch.new {
                    prop_assert_eq!(decision.prefix, decision.prefix.trunc());
                    prop_assert!(!decision.remaining.is_zero());
                }
                for deletion in &batch.deleted {
                    prop_assert_eq!(deletion.prefix, deletion.prefix.trunc());
                }
            }
            Err(err) => prop_assert!(!err.to_string().is_empty() && !err.kind().is_empty()),
        }
    }

    #[test]
    fn the_control_request_parser_never_panics(
        (_, bytes) in mutated("control"),
        method in prop::sample::select(vec![Method::GET, Method::POST, Method::DELETE, Method::PUT]),
        keep_method in any::<bool>(),
    ) {
        let (seed_method, path, body) = split_request(&bytes);
        let method = if keep_method { seed_method } else { method };
        let parsed = request::parse(&method, &path, &body);
        prop_assert!(parsed.verb.len() <= 32 && parsed.verb.chars().all(|c| c.is_ascii_lowercase() || c == '.'));
        match parsed.request {
            Ok(request::ControlRequest::ListAdd { nets, .. })
            | Ok(request::ControlRequest::ListDel { nets, .. })
            | Ok(request::ControlRequest::BanAdd { nets, .. })
            | Ok(request::ControlRequest::BanDel { nets }) => {
                prop_assert!(!nets.is_empty());
                for net in nets {
                    prop_assert_eq!(net, net.trunc());
                }
            }
            Ok(request::ControlRequest::Import { prefixes, .. }) => prop_assert!(!prefixes.is_empty()),
            Ok(_) => {}
            Err(err) => prop_assert!(
                matches!(err, EngineError::Invalid(_) | EngineError::NotFound(_))
                    && !err.to_string().is_empty()
            ),
        }
    }
}
