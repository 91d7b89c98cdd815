//! Rate limits with the real daemon and real traffic in a namespace lab: a flooder is cut to its
//! rate while a polite client is fully served, and a SYN flood is cut while the same source's
//! established connection keeps working.
//!
//! Needs root. Each test builds its own namespaces, interfaces and pin paths.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    time::{Duration, Instant},
};

use apifw_tests::{
    daemon::{Daemon, Dirs},
    netns::{SERVER_ADDR, VethLab, connect_from},
};
use firewall_common::{Action, Reason};
use socket2::{Domain, Socket, Type};

const FLOODER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 66);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);

const POLICY: &str = r#"
[[rule]]
name = "udp-api"
protocol = "udp"
ports = [7000]
per_source = { packets_per_second = 200, burst_packets = 20 }

[[rule]]
name = "tcp-api"
protocol = "tcp"
ports = [7001]
syn_per_source = { per_second = 2, burst = 3 }

[[rule]]
name = "udp-ban"
protocol = "udp"
ports = [7002]
per_source = { packets_per_second = 50, burst_packets = 5 }
on_exceed = "ban"
ban_after = "300ms"
ban_ttl = "2s"
"#;

/// Waits until the counters stop moving (three equal readings 100 ms apart).
fn quiet(dirs: &Dirs) -> firewall_userspace::dataplane::stats::Snapshot {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = dirs.stats();
    let mut unchanged = 0;
    while unchanged < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = dirs.stats();
        unchanged = if now == last { unchanged + 1 } else { 0 };
        last = now;
    }
    last
}

#[test]
fn a_flooder_is_cut_to_its_rate_and_a_polite_client_is_fully_served() {
    let lab = VethLab::new("rlu", &[FLOODER, CLIENT]);
    let dirs = Dirs::new("rlu");
    dirs.write_policy(POLICY);
    let _daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    let server = lab
        .server
        .enter(|| UdpSocket::bind((SERVER_ADDR, 7000)).expect("bind UDP"));
    server
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("timeout");
    // Read while the traffic flows: the socket buffer would overflow with the admitted flood.
    let receiver = std::thread::spawn(move || {
        let mut received = std::collections::HashMap::<Ipv4Addr, u64>::new();
        let mut buf = [0u8; 64];
        while let Ok((_, SocketAddr::V4(peer))) = server.recv_from(&mut buf) {
            *received.entry(*peer.ip()).or_default() += 1;
        }
        received
    });

    // The flooder offers about 1,000 datagrams/s for 3 s (5x its limit); the client sends 50,
    // 25 ms apart (40/s, well within the same limit), at the same time.
    let flooder = lab.client.spawn(|| {
        let socket = UdpSocket::bind((FLOODER, 0)).expect("bind flooder");
        let started = Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < Duration::from_secs(3) {
            socket.send_to(b"flood", (SERVER_ADDR, 7000)).expect("send");
            sent += 1;
            std::thread::sleep(Duration::from_micros(1000));
        }
        (sent, started.elapsed())
    });
    let client = lab.client.spawn(|| {
        let socket = UdpSocket::bind((CLIENT, 0)).expect("bind client");
        for i in 0..50 {
            socket
                .send_to(format!("request {i}").as_bytes(), (SERVER_ADDR, 7000))
                .expect("send");
            std::thread::sleep(Duration::from_millis(25));
        }
    });
    let (flood_sent, flood_span) = flooder.join().expect("flooder");
    client.join().expect("client");
    let snapshot = quiet(&dirs);

    let received = receiver.join().expect("receiver");
    assert_eq!(
        received.get(&CLIENT),
        Some(&50),
        "every client datagram arrives"
    );
    let admitted = received.get(&FLOODER).copied().unwrap_or(0);

    // A token bucket admits its burst plus the rate over the time the flood lasted; 5% covers
    // scheduling jitter at both ends of the flood.
    let expected = 20.0 + 200.0 * flood_span.as_secs_f64();
    let low = (expected * 0.95).floor() as u64;
    let high = (expected * 1.05).ceil() as u64;
    assert!(
        (low..=high).contains(&admitted),
        "flooder: {admitted} of {flood_sent} admitted over {flood_span:?}, expected {expected:.0} ±5%"
    );

    // The counters say the same: rule 0 passed the client and the admitted flood, and dropped
    // the rest of the flood; nothing else was sent.
    assert_eq!(
        snapshot.rule(0, Reason::Default).packets,
        50 + admitted,
        "rule 0 passed"
    );
    assert_eq!(
        snapshot.rule(0, Reason::RateLimited).packets,
        flood_sent - admitted,
        "rule 0 rate-limited"
    );
    assert_eq!(
        snapshot.get(Action::Drop, Reason::RateLimited).packets,
        flood_sent - admitted,
        "global drop/rate_limited"
    );
}

#[test]
fn a_syn_flood_is_cut_while_the_sources_established_connection_works() {
    let lab = VethLab::new("rls", &[FLOODER]);
    let dirs = Dirs::new("rls");
    dirs.write_policy(POLICY);
    let _daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    let listener = lab
        .server
        .enter(|| TcpListener::bind((SERVER_ADDR, 7001)).expect("bind TCP"));
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Echo every connection until told to stop.
            let mut handlers = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => handlers.push(std::thread::spawn(move || {
                        stream.set_nonblocking(false).expect("blocking stream");
                        let mut buf = [0u8; 64];
                        while let Ok(n) = stream.read(&mut buf) {
                            if n == 0 || stream.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    })),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        })
    };

    let (established, flood_attempts) = lab.client.enter(|| {
        let mut established =
            connect_from(FLOODER, 7001, Duration::from_secs(5)).expect("first connection");
        // 50 connection attempts from the same source, as fast as the stack sends them.
        let mut pending = Vec::new();
        for _ in 0..50 {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
            socket
                .bind(&SocketAddr::from((FLOODER, 0)).into())
                .expect("bind");
            socket.set_nonblocking(true).expect("nonblocking");
            let _ = socket.connect(&SocketAddr::from((SERVER_ADDR, 7001)).into());
            pending.push(socket);
        }
        // The established connection keeps working during the flood.
        let mut replies = 0;
        for i in 0..10 {
            let message = format!("ping {i}");
            established.write_all(message.as_bytes()).expect("write");
            let mut buf = vec![0u8; message.len()];
            established
                .read_exact(&mut buf)
                .expect("echo during the SYN flood");
            assert_eq!(buf, message.as_bytes());
            replies += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(pending);
        (replies, 50)
    });
    assert_eq!(established, 10, "all echoes on the established connection");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    server.join().expect("server");

    let snapshot = quiet(&dirs);
    let syn_limited = snapshot.rule(1, Reason::SynLimited).packets;
    // Burst 3 (one used by the established connection) and 2/s of refill over the ~0.3 s of the
    // flood: at most 4 of the 50 SYNs may pass.
    assert!(
        syn_limited >= flood_attempts - 4,
        "only {syn_limited} of {flood_attempts} flood SYNs were cut: {:?}",
        snapshot.rules
    );
    assert_eq!(
        snapshot.get(Action::Drop, Reason::SynLimited).packets,
        syn_limited,
        "global drop/syn_limited equals the rule's"
    );
    assert_eq!(
        snapshot.rule(1, Reason::RateLimited).packets,
        0,
        "no packet limit on this rule"
    );
}

/// Sends `count` datagrams from `source` to port 7002, `gap` apart.
fn send_7002(lab: &VethLab, source: Ipv4Addr, count: usize, gap: Duration) {
    lab.client.enter(move || {
        let socket = UdpSocket::bind((source, 0)).expect("bind");
        for _ in 0..count {
            socket.send_to(b"x", (SERVER_ADDR, 7002)).expect("send");
            std::thread::sleep(gap);
        }
    });
}

fn bans(dirs: &Dirs) -> serde_json::Value {
    let output = apifw_tests::daemon::apifw(&[
        "bans",
        "--json",
        "--pin-dir",
        dirs.pin_dir.to_str().expect("utf-8"),
    ]);
    assert!(
        output.status.success(),
        "apifw bans: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("apifw bans --json prints JSON")
}

#[test]
fn a_source_that_keeps_flooding_is_banned_in_the_kernel_and_the_ban_expires() {
    let lab = VethLab::new("rlb", &[FLOODER]);
    let dirs = Dirs::new("rlb");
    dirs.write_policy(POLICY);
    let _daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    let server = lab
        .server
        .enter(|| UdpSocket::bind((SERVER_ADDR, 7002)).expect("bind UDP"));
    server
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let received = |server: &UdpSocket| {
        let mut count = 0;
        let mut buf = [0u8; 16];
        while server.recv_from(&mut buf).is_ok() {
            count += 1;
        }
        count
    };

    // About 500 datagrams/s for 1 s: ten times the limit, for longer than ban_after.
    send_7002(&lab, FLOODER, 500, Duration::from_millis(2));
    let _ = received(&server);
    let flooded = quiet(&dirs);
    assert!(
        flooded.rule(2, Reason::RateLimited).packets > 0,
        "the flood exceeded the limit"
    );
    assert!(
        flooded.get(Action::Drop, Reason::Banned).packets > 0,
        "the flooder was banned while it kept flooding: {:?}",
        flooded.counters
    );
    let listed = bans(&dirs);
    let list = listed["bans"].as_array().expect("bans array");
    assert_eq!(list.len(), 1, "{listed}");
    assert_eq!(list[0]["prefix"], "198.51.100.66/32", "{listed}");
    assert_eq!(list[0]["kind"], "host", "{listed}");
    assert_eq!(list[0]["rule"], 2, "{listed}");
    let remaining = list[0]["remaining_secs"].as_f64().expect("remaining");
    assert!(remaining > 0.0 && remaining <= 2.0, "{listed}");

    // While banned, even one polite datagram is dropped in XDP as `banned`.
    send_7002(&lab, FLOODER, 1, Duration::ZERO);
    let during = quiet(&dirs);
    assert_eq!(received(&server), 0, "a banned source reached the socket");
    assert_eq!(
        during.get(Action::Drop, Reason::Banned).packets,
        flooded.get(Action::Drop, Reason::Banned).packets + 1,
        "the polite datagram counted as banned"
    );

    // The ban expires (XDP ignores it from then on) and the daemon sweeps it from the map.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bans(&dirs)["bans"].as_array().expect("bans").is_empty() {
        assert!(Instant::now() < deadline, "the ban was never swept");
        std::thread::sleep(Duration::from_millis(200));
    }
    send_7002(&lab, FLOODER, 1, Duration::ZERO);
    let after = quiet(&dirs);
    assert_eq!(
        received(&server),
        1,
        "after expiry the source is served again"
    );
    assert_eq!(
        after.rule(2, Reason::Default).packets,
        during.rule(2, Reason::Default).packets + 1,
        "passed under its rule again"
    );
}
