//! Blocklist feed files: plain address lists, FireHOL `.netset`/`.ipset` lists and Spamhaus
//! DROP/EDROP lists (text or JSON lines), parsed into normalised, de-duplicated prefixes.
//!
//! Feeds come from third parties and are refreshed unattended, so parsing never fails on
//! content: every line that is not an entry or a comment becomes a [`BadLine`] with its line
//! number and the precise reason, and the caller decides whether to apply the rest. Only reading
//! the file can fail ([`FeedError`]).
//!
//! Feeds can be large (FireHOL level lists run to hundreds of thousands of lines), so the good
//! path borrows `&str` slices of the text and allocates nothing per line except the prefix
//! itself; strings are only built for bad lines.

use std::{
    borrow::Cow,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::Deserialize;

/// Format of a feed file.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum FeedFormat {
    /// One IPv4/IPv6 address or CIDR prefix per line; `#` starts a comment (a whole line, or
    /// after whitespace at the end of an entry). A bare address is a /32 or /128.
    #[default]
    Plain,
    /// FireHOL `.netset`/`.ipset` lists: the plain syntax, with the header in `#` comments.
    Firehol,
    /// Spamhaus DROP/EDROP lists: `CIDR ; SBLnnn` lines with `;` comments, or the JSON-lines
    /// lists (`drop_v4.json`, `drop_v6.json`) with one `{"cidr": …}` object per line.
    Spamhaus,
}

/// Longest [`BadLine::text`] kept, in characters: enough to recognise the line in a message
/// without copying a runaway line (a feed that is really an HTML error page, say) whole.
const TEXT_LIMIT: usize = 80;

/// Longest piece of a line quoted inside a [`BadLine::reason`], in characters.
const QUOTE_LIMIT: usize = 40;

/// A line of a feed that is neither an entry nor a comment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLine {
    /// Line number, from 1.
    pub line: usize,
    /// The line without surrounding whitespace, cut to about 80 characters (`…` marks a cut).
    pub text: String,
    /// Why the line was rejected.
    pub reason: String,
}

impl BadLine {
    /// The line as a message, ``FILE:LINE: REASON: `TEXT` ``, with `origin` naming the feed.
    pub fn describe(&self, origin: &Path) -> String {
        format!(
            "{}:{}: {}: `{}`",
            origin.display(),
            self.line,
            self.reason,
            self.text
        )
    }
}

/// The content of a feed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedFeed {
    /// The prefixes, host bits cleared, in file order; a prefix listed again (or normalising to
    /// one already listed) is kept only at its first place.
    pub prefixes: Vec<IpNet>,
    /// Lines rejected, in file order.
    pub bad_lines: Vec<BadLine>,
    /// Entries that had host bits set (such as `10.0.0.1/8`) and were normalised, counted per
    /// line, including those whose normalised prefix turned out to be a duplicate.
    pub host_bits_cleared: usize,
}

/// Why a feed could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The file could not be read.
    #[error("cannot read feed {}", path.display())]
    Read {
        /// The feed file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Reads and parses the feed at `path`.
///
/// Bytes that are not UTF-8 are replaced (U+FFFD) rather than rejecting the file: in a comment
/// they are harmless, and in an entry they make just that line bad.
pub fn read(path: &Path, format: FeedFormat) -> Result<ParsedFeed, FeedError> {
    let bytes = std::fs::read(path).map_err(|source| FeedError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(parse(&String::from_utf8_lossy(&bytes), format))
}

/// Texts longer than this are parsed by several threads at once.
const PARALLEL_PARSE_BYTES: usize = 1 << 20;

/// At most this many threads parse one text.
const PARALLEL_PARSE_THREADS: usize = 4;

/// Parses feed `text` in `format`. Never fails: lines that are not entries or comments are
/// reported in [`ParsedFeed::bad_lines`].
///
/// A large text (a million-line blocklist is 16 MiB) is cut at line ends into one part per CPU
/// (up to 4), parsed side by side and joined in file order: parsing is a third of the daemon's
/// own work on a million-CIDR import, and the result is the same as parsing it whole.
pub fn parse(text: &str, format: FeedFormat) -> ParsedFeed {
    // Editors on Windows save UTF-8 with a byte-order mark, which `trim` does not remove and
    // which would otherwise make the first entry bad.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(PARALLEL_PARSE_THREADS);
    let mut feed = if text.len() < PARALLEL_PARSE_BYTES || threads < 2 {
        parse_lines(text, format).0
    } else {
        let parts = split_at_lines(text, threads);
        let parsed: Vec<(ParsedFeed, usize)> = std::thread::scope(|scope| {
            let workers: Vec<_> = parts
                .iter()
                .map(|part| scope.spawn(move || parse_lines(part, format)))
                .collect();
            workers
                .into_iter()
                .zip(&parts)
                .map(|(worker, part)| {
                    // A parser thread cannot panic on any input; should it, parse here.
                    worker.join().unwrap_or_else(|_| parse_lines(part, format))
                })
                .collect()
        });
        let mut feed = ParsedFeed::default();
        let mut lines_before = 0;
        for (part, lines) in parsed {
            feed.prefixes.extend(part.prefixes);
            feed.bad_lines
                .extend(part.bad_lines.into_iter().map(|bad| BadLine {
                    line: bad.line + lines_before,
                    ..bad
                }));
            feed.host_bits_cleared += part.host_bits_cleared;
            lines_before += lines;
        }
        feed
    };
    dedupe(&mut feed.prefixes);
    feed
}

/// Cuts `text` into at most `parts` pieces, each ending just after a `\n` (the last one at
/// the end of the text), so that their lines are exactly the text's lines.
fn split_at_lines(text: &str, parts: usize) -> Vec<&str> {
    let mut pieces = Vec::with_capacity(parts);
    let mut rest = text;
    for left in (1..=parts).rev() {
        if left == 1 || rest.is_empty() {
            pieces.push(rest);
            break;
        }
        let target = rest.len() / left;
        let cut = rest.as_bytes()[target..]
            .iter()
            .position(|&byte| byte == b'\n')
            .map_or(rest.len(), |at| target + at + 1);
        let (piece, tail) = rest.split_at(cut);
        pieces.push(piece);
        rest = tail;
    }
    pieces
}

/// Parses the lines of `text` (no dedup), numbering them from 1; also returns how many lines
/// it had.
fn parse_lines(text: &str, format: FeedFormat) -> (ParsedFeed, usize) {
    let mut feed = ParsedFeed::default();
    let mut count = 0;
    // `lines` also drops the `\r` of CRLF line endings.
    for (index, raw) in text.lines().enumerate() {
        count = index + 1;
        let line = raw.trim();
        let entry = match format {
            FeedFormat::Plain | FeedFormat::Firehol => plain_entry(line),
            FeedFormat::Spamhaus => spamhaus_entry(line),
        };
        match entry {
            Ok(None) => {}
            Ok(Some(net)) => {
                let normal = net.trunc();
                if normal != net {
                    feed.host_bits_cleared += 1;
                }
                feed.prefixes.push(normal);
            }
            Err(reason) => feed.bad_lines.push(BadLine {
                line: index + 1,
                text: quote(line, TEXT_LIMIT),
                reason,
            }),
        }
    }
    (feed, count)
}

/// Drops repeated prefixes, keeping each at its first place.
///
/// Sorting beats a `HashSet`: on a million unsorted prefixes it takes half the time of a set
/// (even with a fast hasher; the set's random accesses miss the cache), and no crafted feed can
/// make it degrade the way hash collisions can. Published feeds (FireHOL, Spamhaus) are sorted
/// already, and a strictly increasing list has no duplicates, so they cost one sequential pass.
fn dedupe(prefixes: &mut Vec<IpNet>) {
    if prefixes.is_sorted_by(|a, b| a < b) {
        return;
    }
    // Sorting by (key, place) puts the first place of each prefix at the head of its run.
    let mut order: Vec<(u128, u8, usize)> = prefixes
        .iter()
        .enumerate()
        .map(|(at, net)| {
            let (bits, tag) = sort_key(net);
            (bits, tag, at)
        })
        .collect();
    order.sort_unstable();
    let mut keep = vec![false; prefixes.len()];
    for run in order.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
        if let Some(&(_, _, at)) = run.first() {
            keep[at] = true;
        }
    }
    let mut keep = keep.into_iter();
    prefixes.retain(|_| keep.next().unwrap_or(true));
}

/// A key equal for equal prefixes and plain integers to compare, which sorts faster than `IpNet`
/// itself (whose IPv6 comparison goes through address segments): the network bits and a tag for
/// the family and length (IPv6 `0..=128`, IPv4 `129..=161`).
fn sort_key(net: &IpNet) -> (u128, u8) {
    match net {
        IpNet::V4(net) => (u128::from(u32::from(net.network())), 129 + net.prefix_len()),
        IpNet::V6(net) => (u128::from(net.network()), net.prefix_len()),
    }
}

/// One trimmed line of a plain or FireHOL list: `Ok(None)` for a blank or comment line.
fn plain_entry(line: &str) -> Result<Option<IpNet>, String> {
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    if line.starts_with('{') {
        return Err("a JSON object; Spamhaus JSON lists need the `spamhaus` format".to_owned());
    }
    let (token, rest) = split_token(line);
    if !rest.is_empty() && !rest.starts_with('#') {
        let hint = if rest.starts_with(';') {
            "comments start with `#` (`;` comments are Spamhaus syntax: use the `spamhaus` format)"
        } else {
            "comments start with `#`"
        };
        return Err(format!(
            "unexpected text `{}` after the entry; {hint}",
            quote(rest, QUOTE_LIMIT)
        ));
    }
    parse_token(token)
        .map(Some)
        .map_err(|reason| refine(token, reason, true))
}

/// One trimmed line of a Spamhaus list, text or JSON: `Ok(None)` for a blank, comment or
/// metadata line.
fn spamhaus_entry(line: &str) -> Result<Option<IpNet>, String> {
    if line.is_empty() || line.starts_with(';') {
        return Ok(None);
    }
    if line.starts_with('{') {
        return json_entry(line);
    }
    if line.starts_with('#') {
        return Err("a `#` comment; Spamhaus comments start with `;`".to_owned());
    }
    // `1.10.16.0/20 ; SBL256894`: everything from `;` on is the comment.
    let entry = match line.bytes().position(|byte| byte == b';') {
        Some(at) => line[..at].trim_end(),
        None => line,
    };
    let (token, rest) = split_token(entry);
    if !rest.is_empty() {
        return Err(format!(
            "unexpected text `{}` after the entry; Spamhaus comments start with `;`",
            quote(rest, QUOTE_LIMIT)
        ));
    }
    parse_token(token)
        .map(Some)
        .map_err(|reason| refine(token, reason, false))
}

/// A JSON string, borrowed from the line unless it has escapes (`"1.10.16.0\/20"` is valid JSON
/// and some encoders write it), so that the usual line costs no allocation.
struct JsonText<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for JsonText<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a str>);

        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = JsonText<'a>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Self::Value, E> {
                Ok(JsonText(Cow::Borrowed(value)))
            }

            fn visit_str<E>(self, value: &str) -> Result<Self::Value, E> {
                Ok(JsonText(Cow::Owned(value.to_owned())))
            }
        }

        deserializer.deserialize_str(Visitor(std::marker::PhantomData))
    }
}

/// The fields of a Spamhaus JSON line this module uses; the others (`sblid`, `rir`, and the
/// metadata's `timestamp`, `records`, …) are ignored.
#[derive(Deserialize)]
struct JsonLine<'a> {
    #[serde(borrow)]
    cidr: Option<JsonText<'a>>,
    /// `"metadata"` on the last line of the list.
    #[serde(borrow, rename = "type")]
    kind: Option<JsonText<'a>>,
}

/// One line of a Spamhaus JSON list: `Ok(None)` for the metadata line.
fn json_entry(line: &str) -> Result<Option<IpNet>, String> {
    let parsed: JsonLine<'_> =
        serde_json::from_str(line).map_err(|err| format!("invalid JSON: {err}"))?;
    if parsed
        .kind
        .as_ref()
        .is_some_and(|kind| kind.0 == "metadata")
    {
        return Ok(None);
    }
    let Some(cidr) = parsed.cidr else {
        return Err("JSON object without a `cidr` field".to_owned());
    };
    parse_token(&cidr.0)
        .map(Some)
        .map_err(|reason| format!("`cidr`: {reason}"))
}

/// Splits a trimmed line into its first word and the rest, itself without leading whitespace.
///
/// Only ASCII whitespace separates: a byte search is much faster than decoding characters, and
/// the ends of the line, where other whitespace could stray in, are already trimmed.
fn split_token(line: &str) -> (&str, &str) {
    match line.bytes().position(|byte| byte.is_ascii_whitespace()) {
        // An ASCII byte is a character boundary, so these slices cannot panic.
        Some(at) => (&line[..at], line[at..].trim_start()),
        None => (line, ""),
    }
}

/// Parses `ADDR/LEN` or a bare `ADDR` (a host prefix).
///
/// The two halves are parsed separately, rather than with `IpNet::from_str`, to say which one is
/// wrong, and because `ipnet` accepts IPv4 octets with leading zeros (`010.0.0.1`) that the
/// standard library rightly rejects: other tools read them as octal, so their meaning is unclear.
fn parse_token(token: &str) -> Result<IpNet, String> {
    // Byte searches: `str::split_once` with a `char` pattern costs more than these short tokens.
    let Some(slash) = token.bytes().position(|byte| byte == b'/') else {
        return parse_address(token).map(IpNet::from);
    };
    let (addr, length) = (&token[..slash], &token[slash + 1..]);
    if addr.is_empty() {
        return Err("missing address before `/`".to_owned());
    }
    let addr = parse_address(addr)?;
    if length.is_empty() {
        return Err("missing prefix length after `/`".to_owned());
    }
    // `u8::from_str` would also take a sign (`+24`).
    if !length.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(format!(
            "prefix length `{}` is not a number",
            quote(length, QUOTE_LIMIT)
        ));
    }
    let too_long = || {
        let (max, family) = match addr {
            IpAddr::V4(_) => (32, "IPv4"),
            IpAddr::V6(_) => (128, "IPv6"),
        };
        format!(
            "prefix length {} is longer than {max}, the {family} maximum",
            quote(length, QUOTE_LIMIT)
        )
    };
    let length: u8 = length.parse().map_err(|_| too_long())?;
    IpNet::new(addr, length).map_err(|_| too_long())
}

/// Parses an IPv4 or IPv6 address.
fn parse_address(addr: &str) -> Result<IpAddr, String> {
    // `IpAddr::from_str` tries IPv4 and then IPv6; a colon tells which one to try.
    let parsed = if addr.bytes().any(|byte| byte == b':') {
        addr.parse::<Ipv6Addr>().map(IpAddr::from)
    } else {
        addr.parse::<Ipv4Addr>().map(IpAddr::from)
    };
    parsed.map_err(|_| bad_address(addr))
}

/// The reason for an address that does not parse.
fn bad_address(addr: &str) -> String {
    let octets: Vec<&str> = addr.split('.').collect();
    let leading_zero = octets.len() == 4
        && octets
            .iter()
            .all(|octet| !octet.is_empty() && octet.bytes().all(|byte| byte.is_ascii_digit()))
        && octets
            .iter()
            .any(|octet| octet.len() > 1 && octet.starts_with('0'));
    if leading_zero {
        format!(
            "`{}` has IPv4 octets with leading zeros, which some tools read as octal",
            quote(addr, QUOTE_LIMIT)
        )
    } else {
        format!(
            "`{}` is not an IPv4 or IPv6 address",
            quote(addr, QUOTE_LIMIT)
        )
    }
}

/// A better reason than `reason` for two common mistakes in `token`: a `#` comment without
/// whitespace before it (when `hash_comments`), and an address range.
fn refine(token: &str, reason: String, hash_comments: bool) -> String {
    if hash_comments && let Some(at) = token.find('#') {
        return format!(
            "unexpected text `{}` after the entry; a `#` comment must follow whitespace",
            quote(&token[at..], QUOTE_LIMIT)
        );
    }
    if let Some((first, last)) = token.split_once('-')
        && first.parse::<IpAddr>().is_ok()
        && last.parse::<IpAddr>().is_ok()
    {
        return "an address range; only addresses and CIDR prefixes are accepted".to_owned();
    }
    reason
}

/// `text` cut to `limit` characters, `…` marking a cut.
fn quote(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
#[path = "feeds_tests.rs"]
mod tests;
