//! Unit tests of the parent module, in a file of their own to keep the module readable.

use super::*;

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

fn nets(texts: &[&str]) -> Vec<IpNet> {
    texts.iter().map(|text| net(text)).collect()
}

/// `(line, reason)` of each bad line.
fn reasons(feed: &ParsedFeed) -> Vec<(usize, &str)> {
    feed.bad_lines
        .iter()
        .map(|bad| (bad.line, bad.reason.as_str()))
        .collect()
}

/// The single bad line of a one-line feed.
fn bad(line: &str, format: FeedFormat) -> BadLine {
    let feed = parse(line, format);
    assert!(feed.prefixes.is_empty(), "{line}: {:?}", feed.prefixes);
    assert_eq!(feed.bad_lines.len(), 1, "{line}: {:?}", feed.bad_lines);
    feed.bad_lines[0].clone()
}

#[test]
fn plain_addresses_prefixes_and_comments() {
    let text = "\
# blocklist for the API edge
192.0.2.0/24
  198.51.100.7   # scanner, seen 2024-05-01
\t203.0.113.128/25\t
2001:db8:1::/48 # IPv6 example
2001:db8::dead:beef

198.18.0.0/15#not-a-comment
   # indented comment
";
    let feed = parse(text, FeedFormat::Plain);
    assert_eq!(
        feed.prefixes,
        nets(&[
            "192.0.2.0/24",
            "198.51.100.7/32",
            "203.0.113.128/25",
            "2001:db8:1::/48",
            "2001:db8::dead:beef/128",
        ])
    );
    assert_eq!(
        reasons(&feed),
        [(
            8,
            "unexpected text `#not-a-comment` after the entry; a `#` comment must follow \
                 whitespace"
        )]
    );
    assert_eq!(feed.host_bits_cleared, 0);
}

#[test]
fn empty_and_comment_only_feeds_are_empty() {
    for text in ["", "\n\n", "# nothing yet\n", "   \r\n\t\n"] {
        assert_eq!(
            parse(text, FeedFormat::Plain),
            ParsedFeed::default(),
            "{text:?}"
        );
    }
    assert_eq!(
        parse("; nothing\n\n", FeedFormat::Spamhaus),
        ParsedFeed::default()
    );
}

#[test]
fn bare_addresses_are_host_prefixes() {
    let feed = parse(
        "192.0.2.1\n2001:db8::1\n::ffff:192.0.2.1\n",
        FeedFormat::Plain,
    );
    assert_eq!(
        feed.prefixes,
        nets(&["192.0.2.1/32", "2001:db8::1/128", "::ffff:192.0.2.1/128"])
    );
    assert!(feed.bad_lines.is_empty());
}

#[test]
fn crlf_line_endings_and_byte_order_mark() {
    let text = concat!(
        "\u{feff}# header\r\n",
        "192.0.2.0/24\r\n",
        "\r\n",
        "198.51.100.0/24 # note\r\n",
        "2001:db8::/32\r\n",
        "nope\r\n",
    );
    let feed = parse(text, FeedFormat::Plain);
    assert_eq!(
        feed.prefixes,
        nets(&["192.0.2.0/24", "198.51.100.0/24", "2001:db8::/32"])
    );
    // The bad line's text carries no `\r`, and the line count is unaffected.
    assert_eq!(
        feed.bad_lines,
        [BadLine {
            line: 6,
            text: "nope".to_owned(),
            reason: "`nope` is not an IPv4 or IPv6 address".to_owned(),
        }]
    );

    let text = "; Spamhaus DROP List\r\n192.0.2.0/24 ; SBL000001\r\n";
    let feed = parse(text, FeedFormat::Spamhaus);
    assert_eq!(feed.prefixes, nets(&["192.0.2.0/24"]));
    assert!(feed.bad_lines.is_empty());
}

#[test]
fn ipv6_spellings() {
    let text = "\
2001:db8::/32
2001:0db8:0000:0000:0000:0000:0000:0001
2001:DB8:aa::/48
2001:db8:ffff:ffff:ffff:ffff:ffff:ffff/128
::/0
";
    let feed = parse(text, FeedFormat::Plain);
    assert_eq!(
        feed.prefixes,
        nets(&[
            "2001:db8::/32",
            "2001:db8::1/128",
            "2001:db8:aa::/48",
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff/128",
            "::/0",
        ])
    );
    assert!(feed.bad_lines.is_empty());
}

#[test]
fn host_bits_are_cleared_and_counted() {
    let text = "192.0.2.77/24\n198.51.100.0/24\n2001:db8:1:2::5/32\n203.0.113.255/0\n";
    let feed = parse(text, FeedFormat::Plain);
    assert_eq!(
        feed.prefixes,
        nets(&[
            "192.0.2.0/24",
            "198.51.100.0/24",
            "2001:db8::/32",
            "0.0.0.0/0"
        ])
    );
    assert_eq!(feed.host_bits_cleared, 3);
}

#[test]
fn duplicates_are_kept_once_at_their_first_place() {
    let text = "\
198.51.100.0/24
192.0.2.0/24
198.51.100.0/24
192.0.2.9/24
2001:db8::/32
2001:db8::1:0/32
203.0.113.5
203.0.113.5/32
";
    let feed = parse(text, FeedFormat::Plain);
    assert_eq!(
        feed.prefixes,
        nets(&[
            "198.51.100.0/24",
            "192.0.2.0/24",
            "2001:db8::/32",
            "203.0.113.5/32"
        ])
    );
    // The duplicates that had host bits still count as normalised.
    assert_eq!(feed.host_bits_cleared, 2);
    assert!(feed.bad_lines.is_empty());
}

#[test]
fn the_same_prefix_length_in_both_families_is_not_a_duplicate() {
    let feed = parse("0.0.0.0/0\n::/0\n", FeedFormat::Plain);
    assert_eq!(feed.prefixes, nets(&["0.0.0.0/0", "::/0"]));
}

#[test]
fn firehol_netset() {
    let text = "\
#
# firehol_level1
#
# ipv4 hash:net ipset
#
# A firewall blacklist composed from IP lists, providing
# maximum protection with minimum false positives. Suitable
# for basic protection on all internet facing servers,
# routers and firewalls.
#
# Maintainer      : FireHOL
# Maintainer URL  : http://iplists.firehol.org/
# List source URL : https://iplists.firehol.org/files/firehol_level1.netset
# Source File Date: Mon May 13 09:12:04 UTC 2024
#
# This File Date  : Mon May 13 09:28:11 UTC 2024
# Update Frequency: 1 min
# Aggregation     : none
# Entries         : 4 subnets, 4611 unique IPs
#
# EOF
#
192.0.2.0/24
198.18.0.0/15
198.51.100.64/26
203.0.113.9
";
    let feed = parse(text, FeedFormat::Firehol);
    assert_eq!(
        feed.prefixes,
        nets(&[
            "192.0.2.0/24",
            "198.18.0.0/15",
            "198.51.100.64/26",
            "203.0.113.9/32"
        ])
    );
    assert!(feed.bad_lines.is_empty());
    // FireHOL is the plain syntax.
    assert_eq!(feed, parse(text, FeedFormat::Plain));
}

#[test]
fn spamhaus_drop_text() {
    let text = "\
; Spamhaus DROP List 2024/05/13 - (c) 2024 The Spamhaus Project SLC
; https://www.spamhaus.org/drop/drop.txt
; Last-Modified: Mon, 13 May 2024 07:23:19 GMT
; Expires: Mon, 13 May 2024 08:44:43 GMT
192.0.2.0/24 ; SBL000001
198.18.0.0/15 ; SBL000002
198.51.100.0/25;SBL000003
203.0.113.0/24 ;  SBL000004   
2001:db8:100::/40 ; SBL000005
203.0.113.7
";
    let feed = parse(text, FeedFormat::Spamhaus);
    assert_eq!(
        feed.prefixes,
        nets(&[
            "192.0.2.0/24",
            "198.18.0.0/15",
            "198.51.100.0/25",
            "203.0.113.0/24",
            "2001:db8:100::/40",
            "203.0.113.7/32",
        ])
    );
    assert!(feed.bad_lines.is_empty());
}

#[test]
fn spamhaus_json_lines() {
    let text = r#"{"cidr":"192.0.2.0/24","sblid":"SBL000001","rir":"arin"}
{"cidr":"198.18.0.0/15","sblid":"SBL000002","rir":"ripencc"}
{"cidr": "203.0.113.64/26", "sblid": "SBL000003", "rir": "apnic"}
{"cidr":"198.51.100.0\/24","sblid":"SBL000004","rir":"lacnic"}
{"cidr":"2001:db8:200::/40","sblid":"SBL000005","rir":"ripencc"}
{"type":"metadata","timestamp":1715584999,"size":412,"records":5,"copyright":"(c) 2024 The Spamhaus Project SLC","terms":"https://www.spamhaus.org/drop/terms/"}
"#;
    let feed = parse(text, FeedFormat::Spamhaus);
    assert_eq!(
        feed.prefixes,
        nets(&[
            "192.0.2.0/24",
            "198.18.0.0/15",
            "203.0.113.64/26",
            "198.51.100.0/24",
            "2001:db8:200::/40",
        ])
    );
    assert!(feed.bad_lines.is_empty(), "{:?}", feed.bad_lines);
}

#[test]
fn spamhaus_json_bad_lines() {
    let text = r#"{"cidr":"192.0.2.0/33","sblid":"SBL000001"}
{"sblid":"SBL000002","rir":"arin"}
{"cidr":null}
{"cidr":24}
{"cidr":"192.0.2.0/24"
{"cidr":"192.0.2.0/24"} trailing
{"cidr":"192.0.2.0/24 ; SBL1"}
{"type":"metadata","cidr":"not read"}
{"cidr":"2001:db8::/32"}
"#;
    let feed = parse(text, FeedFormat::Spamhaus);
    assert_eq!(feed.prefixes, nets(&["2001:db8::/32"]));
    assert_eq!(
        reasons(&feed),
        [
            (
                1,
                "`cidr`: prefix length 33 is longer than 32, the IPv4 maximum"
            ),
            (2, "JSON object without a `cidr` field"),
            (3, "JSON object without a `cidr` field"),
            (
                4,
                "invalid JSON: invalid type: integer `24`, expected a string at line 1 \
                     column 10"
            ),
            (
                5,
                "invalid JSON: EOF while parsing an object at line 1 column 22"
            ),
            (6, "invalid JSON: trailing characters at line 1 column 25"),
            (7, "`cidr`: prefix length `24 ; SBL1` is not a number"),
        ]
    );
}

#[test]
fn bad_entries_name_their_line_and_reason() {
    let text = "\
192.0.2.0/24
not-an-address
192.0.2.0/33
2001:db8::/129
192.0.2.0/
/24
192.0.2.0/x4
192.0.2.0/+24
192.0.2.0/300
192.0.2.256
2001:db8::g
010.0.2.1
192.0.2.0/24 extra words
192.0.2.0/24 ; SBL000001
192.0.2.1-192.0.2.9
{\"cidr\":\"192.0.2.0/24\"}
192.0.2.0/24/8
2001:db8::/32
";
    let feed = parse(text, FeedFormat::Plain);
    assert_eq!(feed.prefixes, nets(&["192.0.2.0/24", "2001:db8::/32"]));
    assert_eq!(
        reasons(&feed),
        [
            (2, "`not-an-address` is not an IPv4 or IPv6 address"),
            (3, "prefix length 33 is longer than 32, the IPv4 maximum"),
            (4, "prefix length 129 is longer than 128, the IPv6 maximum"),
            (5, "missing prefix length after `/`"),
            (6, "missing address before `/`"),
            (7, "prefix length `x4` is not a number"),
            (8, "prefix length `+24` is not a number"),
            (9, "prefix length 300 is longer than 32, the IPv4 maximum"),
            (10, "`192.0.2.256` is not an IPv4 or IPv6 address"),
            (11, "`2001:db8::g` is not an IPv4 or IPv6 address"),
            (
                12,
                "`010.0.2.1` has IPv4 octets with leading zeros, which some tools read as \
                     octal"
            ),
            (
                13,
                "unexpected text `extra words` after the entry; comments start with `#`"
            ),
            (
                14,
                "unexpected text `; SBL000001` after the entry; comments start with `#` \
                     (`;` comments are Spamhaus syntax: use the `spamhaus` format)"
            ),
            (
                15,
                "an address range; only addresses and CIDR prefixes are accepted"
            ),
            (
                16,
                "a JSON object; Spamhaus JSON lists need the `spamhaus` format"
            ),
            (17, "prefix length `24/8` is not a number"),
        ]
    );
    assert_eq!(feed.bad_lines[10].text, "010.0.2.1");
    assert_eq!(feed.bad_lines[11].text, "192.0.2.0/24 extra words");
}

#[test]
fn spamhaus_bad_text_lines() {
    let text = "\
; header
192.0.2.0/24 # SBL000001
192.0.2.0/24 SBL000002 ; comment
# not a Spamhaus comment
192.0.2.0/40 ; SBL000003
198.51.100.0/24 ; SBL000004
";
    let feed = parse(text, FeedFormat::Spamhaus);
    assert_eq!(feed.prefixes, nets(&["198.51.100.0/24"]));
    assert_eq!(
        reasons(&feed),
        [
            (
                2,
                "unexpected text `# SBL000001` after the entry; Spamhaus comments start \
                     with `;`"
            ),
            (
                3,
                "unexpected text `SBL000002` after the entry; Spamhaus comments start with \
                     `;`"
            ),
            (4, "a `#` comment; Spamhaus comments start with `;`"),
            (5, "prefix length 40 is longer than 32, the IPv4 maximum"),
        ]
    );
    assert_eq!(feed.bad_lines[3].text, "192.0.2.0/40 ; SBL000003");
}

#[test]
fn long_lines_are_cut() {
    let long = "é".repeat(200);
    let line = bad(&format!("  {long}  "), FeedFormat::Plain);
    assert_eq!(line.text.chars().count(), TEXT_LIMIT + 1);
    assert!(line.text.ends_with('…'));
    assert!(line.text.starts_with("éé"));
    assert_eq!(
        line.reason,
        format!(
            "`{}…` is not an IPv4 or IPv6 address",
            "é".repeat(QUOTE_LIMIT)
        )
    );
    // A line at the limit is kept whole.
    let exact = "x".repeat(TEXT_LIMIT);
    assert_eq!(bad(&exact, FeedFormat::Plain).text, exact);
}

#[test]
fn describe_names_file_line_reason_and_text() {
    let feed = parse(
        "192.0.2.0/24\n\n  192.0.2.0/33  # too long\n",
        FeedFormat::Plain,
    );
    assert_eq!(feed.bad_lines.len(), 1);
    assert_eq!(
        feed.bad_lines[0].describe(Path::new("/etc/apifw/feeds/edge.netset")),
        "/etc/apifw/feeds/edge.netset:3: prefix length 33 is longer than 32, the IPv4 \
             maximum: `192.0.2.0/33  # too long`"
    );
}

#[test]
fn formats_deserialize_from_lowercase_names() {
    #[derive(Deserialize)]
    struct Wrapper {
        format: FeedFormat,
    }
    for (name, format) in [
        ("plain", FeedFormat::Plain),
        ("firehol", FeedFormat::Firehol),
        ("spamhaus", FeedFormat::Spamhaus),
    ] {
        let wrapper: Wrapper = serde_json::from_str(&format!("{{\"format\":\"{name}\"}}")).unwrap();
        assert_eq!(wrapper.format, format);
    }
    assert_eq!(FeedFormat::default(), FeedFormat::Plain);
}

/// A file under the system temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, content: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!("apifw-feeds-{}-{name}", std::process::id()));
        std::fs::write(&path, content).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn read_parses_a_file() {
    let file = TempFile::new(
        "drop.txt",
        b"; Spamhaus DROP\n192.0.2.0/24 ; SBL000001\n2001:db8::/32 ; SBL000002\n",
    );
    let feed = read(&file.0, FeedFormat::Spamhaus).unwrap();
    assert_eq!(feed.prefixes, nets(&["192.0.2.0/24", "2001:db8::/32"]));
}

#[test]
fn read_tolerates_bytes_that_are_not_utf8() {
    // Latin-1 `é` in a comment is harmless; in an entry it makes that line bad.
    let file = TempFile::new(
        "latin1.netset",
        b"# r\xe9seau\n192.0.2.0/24\n198.51.100.\xe9\n203.0.113.0/24\n",
    );
    let feed = read(&file.0, FeedFormat::Firehol).unwrap();
    assert_eq!(feed.prefixes, nets(&["192.0.2.0/24", "203.0.113.0/24"]));
    assert_eq!(
        reasons(&feed),
        [(3, "`198.51.100.\u{fffd}` is not an IPv4 or IPv6 address")]
    );
}

#[test]
fn unreadable_file_names_the_path() {
    let err =
        read(Path::new("/nonexistent/apifw.netset"), FeedFormat::Plain).expect_err("missing file");
    assert_eq!(
        err.to_string(),
        "cannot read feed /nonexistent/apifw.netset"
    );
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn dedupe_matches_a_set_on_random_lists() {
    use rand::{Rng as _, SeedableRng as _, rngs::SmallRng, seq::SliceRandom as _};

    let mut rng = SmallRng::seed_from_u64(7);
    for round in 0..50 {
        // Few distinct values, so that duplicates are common; some rounds sorted, to take the
        // fast path (and, with duplicates, to leave it).
        let len = rng.random_range(0..300);
        let mut prefixes: Vec<IpNet> = (0..len)
            .map(|_| {
                let length = rng.random_range(20..=24);
                let net = if rng.random_bool(0.5) {
                    let addr = Ipv4Addr::new(198, 18, rng.random_range(0..4), 0);
                    IpNet::new(addr.into(), length)
                } else {
                    let addr = Ipv6Addr::new(0x2001, 0xdb8, rng.random_range(0..4), 0, 0, 0, 0, 0);
                    IpNet::new(addr.into(), length + 24)
                };
                net.unwrap().trunc()
            })
            .collect();
        match round % 3 {
            0 => prefixes.sort(),
            1 => {
                prefixes.sort();
                prefixes.dedup();
            }
            _ => prefixes.shuffle(&mut rng),
        }
        let mut seen = std::collections::HashSet::new();
        let expected: Vec<IpNet> = prefixes
            .iter()
            .copied()
            .filter(|net| seen.insert(*net))
            .collect();
        let mut deduped = prefixes.clone();
        dedupe(&mut deduped);
        assert_eq!(deduped, expected, "{prefixes:?}");
    }
}

#[test]
fn a_million_lines() {
    use std::fmt::Write as _;

    const LINES: u32 = 1_000_000;
    const V4_HOSTS: u32 = 1 << 17;
    // IPv6 /64s of 2001:db8::/32 first, then the hosts of 198.18.0.0/15 with a comment:
    // IPv4 sorts first, so the list is not sorted and `dedupe` takes its slow path.
    let mut text = String::with_capacity(LINES as usize * 26);
    for i in 0..LINES - V4_HOSTS {
        writeln!(text, "2001:db8:{:x}:{:x}::/64", i >> 16, i & 0xffff).unwrap();
    }
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 0));
    for i in 0..V4_HOSTS {
        writeln!(text, "{}  # host {i}", Ipv4Addr::from(base + i)).unwrap();
    }
    let feed = parse(&text, FeedFormat::Plain);
    assert_eq!(feed.prefixes.len(), LINES as usize);
    assert!(feed.bad_lines.is_empty());
    assert_eq!(feed.host_bits_cleared, 0);
    assert_eq!(feed.prefixes[0], net("2001:db8::/64"));
    assert_eq!(feed.prefixes[LINES as usize - 1], net("198.19.255.255/32"));
}

/// A text over the parallel threshold parses exactly as it does on one thread: same prefixes in
/// file order, same bad lines with the same line numbers, same host-bit count.
#[test]
fn a_large_feed_parses_in_parts_exactly_as_whole() {
    let mut text = String::new();
    let mut line = 0u32;
    while text.len() < 3 * PARALLEL_PARSE_BYTES + 1234 {
        line += 1;
        let [a, b, c, d] = line.wrapping_mul(2_654_435_761).to_be_bytes();
        match line % 97 {
            0 => text.push_str("not a cidr\r\n"),
            1 => text.push_str("# a comment\n"),
            2 => text.push_str(&format!("{a}.{b}.{c}.{d}/8\n")), // host bits
            3 => text.push_str(&format!("2001:db8:{a:x}{b:x}::/48\n")),
            4 => text.push('\n'),
            _ => text.push_str(&format!("{a}.{b}.{c}.{d}\n")),
        }
    }
    text.push_str("198.51.100.7/33"); // bad, and no final newline
    let whole = {
        let (mut feed, lines) = parse_lines(&text, FeedFormat::Plain);
        assert_eq!(lines, line as usize + 1);
        dedupe(&mut feed.prefixes);
        feed
    };
    assert!(whole.bad_lines.len() > 100 && whole.host_bits_cleared > 100);
    assert_eq!(parse(&text, FeedFormat::Plain), whole);
    for parts in 1..=7 {
        let pieces = split_at_lines(&text, parts);
        assert!(pieces.len() <= parts);
        assert_eq!(pieces.concat(), text, "{parts} parts");
        assert!(
            pieces[..pieces.len() - 1]
                .iter()
                .all(|piece| piece.ends_with('\n')),
            "{parts} parts"
        );
    }
}
