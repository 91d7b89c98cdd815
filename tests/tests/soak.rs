//! Soak under a spoofed flood (issue #7): more than 10 million distinct IPv6 sources (each a
//! different /64 of 2001:db8::/32, sent by the in-kernel generator of the flood benchmark) over
//! at least 60 seconds at the running daemon, while a legitimate client keeps making requests.
//!
//! The daemon must not crash, its memory must stay bounded, the legitimate requests must keep
//! succeeding (the rate is printed), the spoofed sources must leave the state map alone (a
//! source gets rate-limit state only from its second packet; its first is a sighting in the
//! per-CPU admission array) so the legitimate client's state stays, and the manual ban and the allowlist entry made before the flood must
//! still be listed and enforced afterwards: an LRU of spoofed sources may forget sources, never
//! a ban or an allow entry.
//!
//! Needs root. Runs about 70 seconds.

use std::{
    net::{Ipv4Addr, Ipv6Addr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use apifw_tests::{
    daemon::{Daemon, Dirs},
    generator::Generator,
    netns::{SERVER_ADDR, VethLab},
    traffic,
};
use etherparse::PacketBuilder;
use firewall_common::{Action, Reason};

/// Sources the flood may not reach: its frames go to this UDP port.
const FLOOD_PORT: u16 = 9999;
/// The legitimate service: a UDP echo.
const ECHO_PORT: u16 = 7200;
const BANNED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 66);
const ALLOWED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 77);
const SOAK_SECONDS: u64 = 62;
const SOURCES_WANTED: u64 = 10_000_000;

/// The flood's template: IPv6/UDP from 2001:db8::2 (the generator rewrites bits 32..63 of the
/// source per frame) to the server.
fn flood_frame(lab: &VethLab) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(
        lab.client.mac(&lab.client_if),
        lab.server.mac(&lab.server_if),
    )
    .ipv6(
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2).octets(),
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).octets(),
        64,
    )
    .udp(40_000, FLOOD_PORT);
    let payload = [0u8; 18];
    let mut frame = Vec::new();
    builder.write(&mut frame, &payload).expect("frame");
    frame
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A UDP echo in the server namespace, until dropped.
struct Echo {
    stop: Arc<AtomicBool>,
    /// Requests the echo received (each reached the socket, so XDP passed it).
    received: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Echo {
    fn start(lab: &VethLab) -> Self {
        let socket = lab
            .server
            .enter(|| UdpSocket::bind((SERVER_ADDR, ECHO_PORT)).expect("bind echo"));
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, received) = (stop.clone(), received.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((len, peer)) = socket.recv_from(&mut buf) {
                        received.fetch_add(1, Ordering::Relaxed);
                        let _ = socket.send_to(&buf[..len], peer);
                    }
                }
            })
        };
        Self {
            stop,
            received,
            thread: Some(thread),
        }
    }

    /// Stops the echo and returns how many requests it received.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The legitimate client: one request every 10 ms from the client's own address, each answered
/// within a second or counted as failed.
struct Client {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn start(lab: &VethLab) -> Self {
        let socket = lab.client.enter(|| {
            let socket = UdpSocket::bind(("192.0.2.2", 0)).expect("bind client");
            socket.connect((SERVER_ADDR, ECHO_PORT)).expect("connect");
            socket
        });
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        let (stop, ok, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let thread = {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                let mut n: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let request = n.to_be_bytes();
                    let answered = socket.send(&request).is_ok()
                        && loop {
                            match socket.recv(&mut buf) {
                                // A late answer to an earlier request: keep waiting for ours.
                                Ok(len) if buf[..len] != request => continue,
                                Ok(_) => break true,
                                Err(_) => break false,
                            }
                        };
                    if answered {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Self {
            stop,
            ok,
            failed,
            thread: Some(thread),
        }
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Entries in the pinned LRU map `name` (keyed by `TrackKey`), and its capacity.
fn fill<V: aya::Pod>(dirs: &Dirs, name: &'static str) -> (u64, u64) {
    let (keys, capacity) = keys_of::<V>(dirs, name);
    (keys.len() as u64, capacity)
}

/// The keys of the pinned LRU map `name` (keyed by `TrackKey`), and its capacity.
fn keys_of<V: aya::Pod>(
    dirs: &Dirs,
    name: &'static str,
) -> (Vec<firewall_common::rules::TrackKey>, u64) {
    use firewall_common::rules::TrackKey;
    let path = dirs.layout().map(name);
    let data = aya::maps::MapData::from_pin(&path)
        .unwrap_or_else(|err| panic!("open {}: {err}", path.display()));
    let capacity = u64::from(data.info().expect("map info").max_entries());
    let map: aya::maps::HashMap<_, TrackKey, V> =
        aya::maps::HashMap::try_from(aya::maps::Map::from_map_data(data).expect("map"))
            .expect("hash map");
    (map.keys().filter_map(Result::ok).collect(), capacity)
}

#[test]
fn ten_million_spoofed_sources_for_a_minute_break_nothing() {
    let lab = VethLab::new("soak", &[BANNED, ALLOWED]);
    let dirs = Dirs::new("soak");
    dirs.write_policy(&format!(
        r#"xdp_mode = "native"
[allow]
cidrs = ["{ALLOWED}/32"]
[block]
cidrs = ["{ALLOWED}/32"]

# The worst case for the state map: every spoofed source is tracked on its own, and none of
# them exceeds its limit (one packet each), so nothing but LRU eviction makes room.
[[rule]]
name = "flooded"
protocol = "udp"
ports = [{FLOOD_PORT}]
per_source = {{ packets_per_second = 100, burst_packets = 10 }}

[[rule]]
name = "echo"
protocol = "udp"
ports = [{ECHO_PORT}]
per_source = {{ packets_per_second = 1000, burst_packets = 100 }}

[limits]
max_tracked_sources = 65536
"#
    ));
    let daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    let output = dirs.cli(&["ban", "add", &BANNED.to_string(), "--ttl", "2h"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let receiver = traffic::Receiver::start(&lab);
    let echo = Echo::start(&lab);
    let client = Client::start(&lab);

    let generator = Generator::start(0).expect("start the flood generator");
    let frame = flood_frame(&lab);
    let ifindex = lab.client.enter({
        let name = lab.client_if.clone();
        move || nix::net::if_::if_nametoindex(name.as_str()).expect("client ifindex")
    });
    let rss_start = rss_kib(daemon.pid());
    let mut rss_peak = rss_start;
    let started = Instant::now();
    let mut frames = 0u64;
    let mut answered_before = 0u64;
    // Two-second floods back to back, until a minute has passed and 10M sources were sent.
    while started.elapsed() < Duration::from_secs(SOAK_SECONDS) || frames < SOURCES_WANTED {
        assert!(
            started.elapsed() < Duration::from_secs(SOAK_SECONDS * 3),
            "the generator sent only {frames} frames in {:?}",
            started.elapsed()
        );
        let sent = generator
            .flood(
                lab.client.path(),
                ifindex,
                &frame,
                32,
                Duration::from_secs(2),
            )
            .expect("flood");
        frames += sent.frames;
        rss_peak = rss_peak.max(rss_kib(daemon.pid()));
        // The client keeps working all along, not only before and after the flood.
        let (answered, _) = client.counts();
        assert!(
            answered > answered_before,
            "no legitimate request answered between {:?} and {:?}",
            started.elapsed() - Duration::from_secs(2),
            started.elapsed()
        );
        answered_before = answered;
        assert!(
            dirs.cli(&["status"]).status.success(),
            "the daemon stopped answering after {:?}",
            started.elapsed()
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(generator);
    let (ok, failed) = client.counts();
    drop(client);
    let served = echo.stop();
    let (sources, _) =
        fill::<firewall_common::rules::TrackState>(&dirs, firewall_common::map_names::SOURCES);
    let stats = dirs.stats();
    let total = stats.total_packets();
    // Rule 1 ("echo") sees only the legitimate client's requests.
    let echo_passed = stats.rule(1, Reason::Default).packets;
    let echo_dropped: u64 = [
        Reason::RateLimited,
        Reason::SynLimited,
        Reason::Banned,
        Reason::SubnetBanned,
    ]
    .iter()
    .map(|&reason| stats.rule(1, reason).packets)
    .sum();
    let sent = ok + failed;
    eprintln!(
        "soak: {frames} spoofed sources in {seconds:.0} s ({:.0}/s); XDP saw {total} packets; \
         legitimate requests {ok} ok, {failed} failed ({:.2}% succeeded, {:.0}/s): of {sent} \
         sent, {} were lost before XDP (the veth ring under the flood), {echo_passed} passed by \
         XDP, {echo_dropped} dropped by it, {served} served; daemon RSS {} KiB at start, {} KiB \
         peak; source state map {sources}",
        frames as f64 / seconds,
        100.0 * ok as f64 / sent.max(1) as f64,
        ok as f64 / seconds,
        sent.saturating_sub(echo_passed + echo_dropped),
        rss_start,
        rss_peak
    );
    assert!(frames >= SOURCES_WANTED && seconds >= 60.0);
    assert!(
        total >= SOURCES_WANTED,
        "XDP saw only {total} of {frames} frames"
    );
    // A one-packet source is only sighted in the per-CPU admission array (state comes with its
    // second packet): the state map holds exactly the one source that really talked, the
    // legitimate client.
    if sources != 1 {
        // Seen once (CI, 140M frames): name the keys, so that the next run that fails says who
        // got state.
        let (keys, _) = keys_of::<firewall_common::rules::TrackState>(
            &dirs,
            firewall_common::map_names::SOURCES,
        );
        panic!("state map: the legitimate client and nothing else, found {keys:?}");
    }
    // Memory: the daemon's maps are preallocated; its own heap must not follow the flood.
    assert!(
        rss_peak <= rss_start + 64 * 1024,
        "daemon RSS grew from {rss_start} KiB to {rss_peak} KiB"
    );
    // The legitimate client kept working. The firewall dropped none of its requests and every
    // one it passed was served; of the requests that reached XDP at most 1% went unanswered.
    // Requests the veth lost before XDP (its ring overflows when the generator outruns the
    // receiving CPU, which depends on the machine) are reported above, not the firewall's doing.
    assert!(ok > 1_000, "only {ok} legitimate requests answered");
    assert_eq!(echo_dropped, 0, "the firewall dropped legitimate requests");
    assert_eq!(
        served, echo_passed,
        "requests passed by XDP and requests the echo received differ"
    );
    assert!(
        echo_passed.saturating_sub(ok) * 100 <= echo_passed,
        "{} of the {echo_passed} legitimate requests that reached the firewall went unanswered",
        echo_passed.saturating_sub(ok)
    );
    // Bans and allow entries are not evicted: still listed, still enforced.
    let bans = dirs.cli_json(&["ban", "list"]).to_string();
    assert!(bans.contains(&BANNED.to_string()), "ban gone: {bans}");
    let allowed = dirs.cli_json(&["allow", "list"]).to_string();
    assert!(
        allowed.contains(&ALLOWED.to_string()),
        "allow entry gone: {allowed}"
    );
    let before = dirs.stats();
    traffic::send(&lab, BANNED, 10);
    traffic::send(&lab, ALLOWED, 10);
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.from(ALLOWED) < 10 {
        assert!(Instant::now() < deadline, "allowed source not served");
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = dirs.stats();
    let banned = |s: &firewall_userspace::dataplane::stats::Snapshot| {
        s.get(Action::Drop, Reason::Banned).packets
    };
    assert_eq!(
        banned(&after) - banned(&before),
        10,
        "ban not enforced after the flood"
    );
    assert_eq!(receiver.from(BANNED), 0, "a banned source got through");
    drop(daemon);
}
