//! The real daemon in network namespaces with real traffic: allow/block enforcement with exact
//! counters, clean detach on SIGTERM, refusal of a second instance, and `stats` without a daemon.
//!
//! Needs root. Every test builds its own namespaces, interfaces and pin paths.

use std::{
    ffi::OsString,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    os::unix::net::UnixDatagram,
    time::{Duration, Instant},
};

use apifw_tests::{
    daemon::{Daemon, Dirs, apifw, stderr_of},
    netns::{SERVER_ADDR, VethLab, connect_from},
};
use firewall_common::{Action, Reason};
use firewall_userspace::dataplane::stats::Snapshot;
use nix::sys::signal::Signal;

const BLOCKED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);
const ALLOWED_IN_BLOCKED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const NEUTRAL: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);

const POLICY: &str = r#"
malformed = "drop"
[allow]
cidrs = ["203.0.113.7/32"]
[block]
cidrs = ["203.0.113.0/24"]
"#;

/// Per-(action, reason) packet deltas between two snapshots; pairs that did not move are left out.
fn deltas(before: &Snapshot, after: &Snapshot) -> Vec<(Action, Reason, u64)> {
    after
        .counters
        .iter()
        .map(|row| {
            let old = before.get(row.action, row.reason).packets;
            (row.action, row.reason, row.packets - old)
        })
        .filter(|(_, _, delta)| *delta > 0)
        .collect()
}

/// The counters and the client's transmit counter once the link has been quiet for a moment:
/// both read unchanged three times in a row, 100 ms apart. Phases start and end here, so a late
/// segment (a delayed ACK, a retransmission) can never fall between the two readings.
fn quiet(lab: &VethLab, dirs: &Dirs) -> (Snapshot, u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = (dirs.stats(), lab.client_tx_packets());
    let mut unchanged = 0;
    while unchanged < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = (dirs.stats(), lab.client_tx_packets());
        unchanged = if now == last { unchanged + 1 } else { 0 };
        last = now;
    }
    last
}

/// Waits for quiet after a phase, then returns how many frames the client sent in it and how the
/// counters moved.
fn settle(
    lab: &VethLab,
    dirs: &Dirs,
    before: &(Snapshot, u64),
) -> (u64, Vec<(Action, Reason, u64)>) {
    let (after, tx_after) = quiet(lab, dirs);
    (tx_after - before.1, deltas(&before.0, &after))
}

fn send_udp(lab: &VethLab, source: Ipv4Addr, count: usize) {
    lab.client.enter(move || {
        let socket = UdpSocket::bind((source, 0)).expect("bind client UDP socket");
        for i in 0..count {
            socket
                .send_to(format!("datagram {i}").as_bytes(), (SERVER_ADDR, 7000))
                .expect("send");
        }
    });
}

#[test]
fn blocked_sources_are_dropped_and_allowed_ones_pass_with_exact_counters() {
    let lab = VethLab::new("enf", &[BLOCKED, ALLOWED_IN_BLOCKED, NEUTRAL]);
    let dirs = Dirs::new("enf");
    dirs.write_policy(POLICY);
    let _daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);

    // A UDP server counting datagrams per source, and a TCP echo server.
    let udp = lab
        .server
        .enter(|| UdpSocket::bind((SERVER_ADDR, 7000)).expect("bind UDP"));
    udp.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let tcp = lab
        .server
        .enter(|| TcpListener::bind((SERVER_ADDR, 7001)).expect("bind TCP"));
    let echo = std::thread::spawn(move || {
        // Exactly one connection is expected: the allowlisted client's.
        let (mut stream, peer) = tcp.accept().expect("accept");
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).expect("read");
        stream.write_all(&buf[..n]).expect("echo");
        peer
    });

    // UDP: 20 datagrams from each source.
    let before = quiet(&lab, &dirs);
    for source in [BLOCKED, ALLOWED_IN_BLOCKED, NEUTRAL] {
        send_udp(&lab, source, 20);
    }
    let (sent, moved) = settle(&lab, &dirs, &before);
    assert_eq!(
        sent, 60,
        "client sent exactly the datagrams (no ARP/IPv6 noise)"
    );
    assert_eq!(
        moved,
        vec![
            (Action::Pass, Reason::Default, 20),
            (Action::Pass, Reason::Allowlist, 20),
            (Action::Drop, Reason::Blocklist, 20),
        ],
        "UDP counter deltas"
    );
    let mut received = std::collections::HashMap::<Ipv4Addr, u32>::new();
    let mut buf = [0u8; 64];
    while let Ok((_, SocketAddr::V4(peer))) = udp.recv_from(&mut buf) {
        *received.entry(*peer.ip()).or_default() += 1;
    }
    assert_eq!(
        received.get(&BLOCKED),
        None,
        "no datagram from the blocked source arrived"
    );
    assert_eq!(
        received.get(&ALLOWED_IN_BLOCKED),
        Some(&20),
        "allowlisted datagrams"
    );
    assert_eq!(received.get(&NEUTRAL), Some(&20), "neutral datagrams");

    // TCP from the allowlisted source inside the blocked range: a full exchange works and every
    // segment it sent is counted as pass/allowlist.
    let before = quiet(&lab, &dirs);
    let reply = lab.client.enter(|| {
        let socket = connect_from(ALLOWED_IN_BLOCKED, 7001, Duration::from_secs(5))
            .expect("allowed connect");
        let mut stream = socket;
        stream.write_all(b"hello").expect("write");
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).expect("read echo");
        buf
    });
    assert_eq!(&reply, b"hello");
    let peer = echo.join().expect("echo thread");
    assert_eq!(peer.ip(), std::net::IpAddr::V4(ALLOWED_IN_BLOCKED));
    let (sent, moved) = settle(&lab, &dirs, &before);
    assert!(
        sent >= 3,
        "a TCP exchange takes at least 3 segments, client sent {sent}"
    );
    assert_eq!(
        moved,
        vec![(Action::Pass, Reason::Allowlist, sent)],
        "TCP allowlisted deltas"
    );

    // TCP from the blocked source: the handshake never completes, every SYN is dropped.
    let before = quiet(&lab, &dirs);
    let result = lab
        .client
        .enter(|| connect_from(BLOCKED, 7001, Duration::from_millis(1500)));
    assert!(
        result.is_err(),
        "connection from a blocked source succeeded"
    );
    let (sent, moved) = settle(&lab, &dirs, &before);
    assert!(sent >= 1, "the client sent no SYN");
    assert_eq!(
        moved,
        vec![(Action::Drop, Reason::Blocklist, sent)],
        "TCP blocked deltas"
    );
}

#[test]
fn sigterm_detaches_and_unpins() {
    let lab = VethLab::new("term", &[]);
    let dirs = Dirs::new("term");
    dirs.write_policy(POLICY);
    let daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    assert!(lab.server_has_xdp(), "XDP attached while running");
    assert!(
        dirs.layout().versioned().exists(),
        "pins exist while running"
    );

    let (status, stderr) = daemon.stop(Signal::SIGTERM);
    assert!(status.success(), "daemon exit status {status}: {stderr}");
    assert!(stderr.contains("detached and unpinned"), "stderr: {stderr}");
    assert!(!lab.server_has_xdp(), "XDP still attached after SIGTERM");
    assert!(
        !dirs.layout().versioned().exists(),
        "pins left behind after SIGTERM"
    );

    let stats = apifw(&["stats", "--pin-dir", dirs.pin_dir.to_str().expect("utf-8")]);
    assert!(!stats.status.success(), "stats succeeded without a daemon");
    let stderr = String::from_utf8_lossy(&stats.stderr);
    assert!(
        stderr.contains("no apifw daemon is running"),
        "stats stderr: {stderr}"
    );
}

/// The daemon tells a service manager READY=1 exactly when it has attached and answers on its
/// control socket, and STOPPING=1 on SIGTERM: the packaged unit is `Type=notify`. No systemd runs
/// here, so the test is the service manager: it creates the notify socket and passes it in
/// `NOTIFY_SOCKET`, as systemd does.
#[test]
fn a_service_manager_hears_ready_once_the_daemon_answers_and_stopping_on_sigterm() {
    let lab = VethLab::new("ntfy", &[]);
    let dirs = Dirs::new("notify");
    dirs.write_policy(POLICY);
    let socket_path = dirs.run_dir.join("notify.sock");
    let notify = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let receive = || {
        let mut message = [0u8; 1024];
        let len = notify
            .recv(&mut message)
            .expect("a notification within 30 s");
        String::from_utf8_lossy(&message[..len]).into_owned()
    };
    let env = [
        OsString::from("env"),
        OsString::from(format!("NOTIFY_SOCKET={}", socket_path.display())),
    ];
    // A guard: a failed assertion below must not leave the daemon running.
    let daemon = Daemon::spawn_guarded(&lab.server, &dirs, &lab.server_if, &env);

    let ready = receive();
    assert!(
        ready.lines().any(|line| line == "READY=1"),
        "first notification: {ready:?}"
    );
    // Ready means ready: attached and answering, with no polling in between.
    assert!(lab.server_has_xdp(), "READY=1 before XDP was attached");
    let status = dirs.cli(&["status", "--json"]);
    assert!(
        status.status.success(),
        "READY=1 before `apifw status` answers: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("JSON");
    assert_eq!(status["pid"], daemon.pid(), "{status}");

    let (exit, stderr) = daemon.stop(Signal::SIGTERM);
    assert!(exit.success(), "exit {exit}: {stderr}");
    let stopping = receive();
    assert!(
        stopping.lines().any(|line| line == "STOPPING=1"),
        "notification after SIGTERM: {stopping:?}"
    );
}

#[test]
fn second_instance_is_refused_with_a_clear_error() {
    let lab = VethLab::new("dup", &[]);
    let first_dirs = Dirs::new("dup1");
    first_dirs.write_policy(POLICY);
    let _first = Daemon::start(&lab.server, &first_dirs, &lab.server_if);

    // Same interface, own pin and run directories: the kernel refuses the second attachment.
    let second_dirs = Dirs::new("dup2");
    second_dirs.write_policy(POLICY);
    let mut second = Daemon::spawn(&lab.server, &second_dirs, &lab.server_if);
    let status = second.wait().expect("wait");
    let stderr = stderr_of(&mut second);
    assert!(
        !status.success(),
        "second daemon on the same interface started: {stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "`{}` already has an XDP program attached",
            lab.server_if
        )),
        "stderr: {stderr}"
    );
    assert!(
        !second_dirs.layout().versioned().exists(),
        "the refused daemon left pins behind"
    );

    // Same run directory: the instance lock refuses it before anything is loaded.
    let mut third = Daemon::spawn(&lab.server, &first_dirs, &lab.server_if);
    let status = third.wait().expect("wait");
    let stderr = stderr_of(&mut third);
    assert!(!status.success(), "third daemon started: {stderr}");
    assert!(
        stderr.contains("another apifw daemon (pid"),
        "stderr: {stderr}"
    );
    assert!(
        lab.server_has_xdp(),
        "the first daemon's program must stay attached"
    );
    assert!(
        first_dirs.layout().versioned().exists(),
        "the first daemon's pins must stay"
    );
}
