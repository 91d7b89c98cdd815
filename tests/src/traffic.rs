//! Traffic and observation helpers for the namespace labs: a counting UDP receiver, datagram
//! senders, a flood, a minimal HTTP/1.1 client (for `/metrics` and Prometheus' API) and a parser
//! of the Prometheus text exposition.

use std::{
    collections::{BTreeMap, HashMap},
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::netns::{Netns, SERVER_ADDR, VethLab};

/// The UDP port the receiver listens on and the senders aim at.
pub const PORT: u16 = 7100;

/// A UDP server in the lab's server namespace counting datagrams per source; stopped on drop.
#[derive(Debug)]
pub struct Receiver {
    counts: Arc<Mutex<HashMap<IpAddr, u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    /// Listens on [`SERVER_ADDR`]:[`PORT`] in the lab's server namespace.
    pub fn start(lab: &VethLab) -> Self {
        let socket = lab
            .server
            .enter(|| UdpSocket::bind((SERVER_ADDR, PORT)).expect("bind UDP receiver"));
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (counts, stop) = (counts.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                        *counts.lock().expect("counts").entry(peer.ip()).or_insert(0) += 1;
                    }
                }
            })
        };
        Self {
            counts,
            stop,
            thread: Some(thread),
        }
    }

    /// Datagrams received from `source` so far.
    pub fn from(&self, source: Ipv4Addr) -> u64 {
        self.counts
            .lock()
            .expect("counts")
            .get(&IpAddr::V4(source))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends `count` datagrams from `source` (an address of the lab's client) to the server's
/// [`PORT`], without waiting for them to arrive.
pub fn send(lab: &VethLab, source: Ipv4Addr, count: usize) {
    lab.client.enter(move || {
        let socket = UdpSocket::bind((source, 0)).expect("bind client socket");
        for i in 0..count {
            socket
                .send_to(format!("packet {i}").as_bytes(), (SERVER_ADDR, PORT))
                .expect("send");
        }
    });
}

/// A flood from `sources` in the client namespace until stopped or dropped.
#[derive(Debug)]
pub struct Flood {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Flood {
    /// Starts sending datagrams from each of `sources` in turn, as fast as the socket takes them.
    pub fn start(lab: &VethLab, sources: &[Ipv4Addr]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sources = sources.to_vec();
        let flag = stop.clone();
        let thread = lab.client.spawn(move || {
            let sockets: Vec<UdpSocket> = sources
                .iter()
                .map(|source| UdpSocket::bind((*source, 0)).expect("bind flood socket"))
                .collect();
            let mut sent = 0u64;
            while !flag.load(Ordering::Relaxed) {
                for socket in &sockets {
                    if socket.send_to(b"flood", (SERVER_ADDR, PORT)).is_ok() {
                        sent += 1;
                    }
                }
            }
            sent
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the flood; returns how many datagrams it sent.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map_or(0, |thread| thread.join().expect("flood thread"))
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An HTTP response.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header fields, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked), as text.
    pub body: String,
}

impl HttpResponse {
    /// The first header field called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(field, _)| *field == name)
            .map(|(_, value)| value.as_str())
    }
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// Decodes a chunked body.
fn dechunk(mut raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| invalid("chunk size line without CRLF".into()))?;
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|err| invalid(format!("chunk size {size_text:?}: {err}")))?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if raw.len() < size + 2 {
            return Err(invalid(format!(
                "chunk of {size} bytes cut short ({} left)",
                raw.len()
            )));
        }
        body.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// Sends one `GET target` with `Connection: close` over `stream` and reads the whole response.
pub fn http_get_over<S: Read + Write>(
    mut stream: S,
    host: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.flush()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid(format!("no end of headers in {} bytes", raw.len())))?;
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let rest = &raw[head_end + 4..];
    let field = |name: &str| {
        headers
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.clone())
    };
    let body = if field("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        dechunk(rest)?
    } else if let Some(length) = field("content-length") {
        let length: usize = length
            .parse()
            .map_err(|err| invalid(format!("content-length {length:?}: {err}")))?;
        if rest.len() < length {
            return Err(invalid(format!(
                "body cut short: {} of {length} bytes",
                rest.len()
            )));
        }
        rest[..length].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8(body).map_err(|err| invalid(format!("body: {err}")))?,
    })
}

/// `GET http://ADDRESS TARGET` from inside `netns` (so that its loopback is the one reached).
pub fn http_get(
    netns: &Netns,
    address: SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    let target = target.to_owned();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    netns.enter(move || {
        let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        http_get_over(stream, &address.to_string(), &target, &headers)
    })
}

/// Percent-encodes a URL query component (everything but unreserved characters).
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The daemon's default metrics address, inside its namespace.
pub const METRICS_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);

/// One sample of an exposition.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Label pairs.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// The samples of one scrape in the Prometheus text format (classic or OpenMetrics).
#[derive(Clone, Debug)]
pub struct Exposition {
    /// The samples in order.
    pub samples: Vec<Sample>,
    /// The text they came from.
    pub text: String,
}

fn parse_labels(mut rest: &str, line: &str) -> (BTreeMap<String, String>, String) {
    let mut labels = BTreeMap::new();
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return (labels, after.to_owned());
        }
        let (name, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad label in {line:?}"));
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => panic!("dangling escape in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        labels.insert(name.trim().to_owned(), value);
        rest = &after[end + 1..];
    }
}

impl Exposition {
    /// Parses `text`; panics on a line it does not understand.
    pub fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = line[..name_end].to_owned();
            let (labels, rest) = if line[name_end..].starts_with('{') {
                parse_labels(&line[name_end + 1..], line)
            } else {
                (BTreeMap::new(), line[name_end..].to_owned())
            };
            let value_text = rest
                .split_whitespace()
                .next()
                .unwrap_or_else(|| panic!("no value in {line:?}"));
            let value = match value_text {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                "NaN" => f64::NAN,
                other => other
                    .parse()
                    .unwrap_or_else(|err| panic!("value {other:?} in {line:?}: {err}")),
            };
            samples.push(Sample {
                name,
                labels,
                value,
            });
        }
        Self {
            samples,
            text: text.to_owned(),
        }
    }

    /// Samples of `name` whose labels include every pair of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |sample| {
            sample.name == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(value))
        })
    }

    /// The value of the one series of `name` with `labels` (others may exist as well), or `None`
    /// when there is none; panics when several match.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self.matching(name, labels).collect();
        assert!(
            found.len() <= 1,
            "{} series of {name} match {labels:?}: {found:?}",
            found.len()
        );
        found.first().map(|sample| sample.value)
    }

    /// Like [`Exposition::get`], with an absent counter series read as 0 (the exporter omits
    /// counters that never moved).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let value = self.get(name, labels).unwrap_or(0.0);
        assert!(
            value >= 0.0 && value.fract() == 0.0,
            "{name}{labels:?} = {value}"
        );
        value as u64
    }
}

/// One scrape of the daemon's `/metrics` in `netns`, as an ordinary client (no Accept header)
/// makes it: HTTP 200 and the classic text format, parsed.
pub fn scrape(netns: &Netns) -> Exposition {
    let response = http_get(netns, METRICS_ADDR, "/metrics", &[])
        .unwrap_or_else(|err| panic!("GET http://{METRICS_ADDR}/metrics: {err}"));
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8"),
        "the classic text format for clients that do not ask for OpenMetrics"
    );
    Exposition::parse(&response.body)
}
