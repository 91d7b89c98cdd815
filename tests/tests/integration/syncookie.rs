//! SYN cookies in XDP (issue #15) with the real daemon, real sockets and real frames in a
//! namespace lab: connections through XDP's cookie SYN-ACKs are served with their data intact,
//! a forged ACK is dropped, a spoofed SYN flood in cookie mode (IPv4, and IPv6 with every frame
//! a new source) leaves no entry in the state maps, and `auto` switches cookie mode on under a flood and off after it.
//!
//! Needs root. Each test builds its own namespaces, interfaces and pin paths.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, TcpListener},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use apifw_tests::{
    daemon::{Daemon, Dirs},
    netns::{CLIENT_ADDR, SERVER_ADDR, VethLab, connect_from},
    programs::{TestPrograms, program_names},
};
use aya::programs::XdpMode;
use etherparse::PacketBuilder;
use firewall_common::{Reason, map_names, rules::TrackKey, rules::TrackState};

const PORT: u16 = 8080;
/// A source that never completed a handshake.
const FORGER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 77);

fn policy(cookies: &str) -> String {
    format!(
        r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [{PORT}]
syn_cookies = "{cookies}"
per_source = {{ packets_per_second = 100000, burst_packets = 100000 }}
per_subnet = {{ packets_per_second = 1000000, burst_packets = 1000000 }}
"#
    )
}

/// A TCP server in the server namespace: answers each connection's first line with
/// `echo: <line>` and closes it, until dropped.
struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    fn start(lab: &VethLab) -> Self {
        Self::serve(
            lab.server
                .enter(|| TcpListener::bind((SERVER_ADDR, PORT)).expect("bind")),
        )
    }

    fn serve(listener: TcpListener) -> Self {
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((mut stream, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut line = Vec::new();
                    let mut byte = [0u8; 1];
                    while let Ok(1) = stream.read(&mut byte) {
                        if byte[0] == b'\n' {
                            break;
                        }
                        line.push(byte[0]);
                    }
                    let mut reply = b"echo: ".to_vec();
                    reply.extend_from_slice(&line);
                    let _ = stream.write_all(&reply);
                }
            })
        };
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One request over a new connection from `source`; the reply.
fn request(lab: &VethLab, source: Ipv4Addr, text: String) -> std::io::Result<String> {
    lab.client.enter(move || {
        let mut stream = connect_from(source, PORT, Duration::from_secs(3))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        stream.write_all(format!("{text}\n").as_bytes())?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Ok(reply)
    })
}

/// The kernel lets this lab's server answer every SYN with a cookie (as it does when a
/// listener's SYN queue overflows), so the cookie helper gives one for every SYN.
fn cookies_always_allowed(lab: &VethLab) {
    lab.server
        .exec(&["sysctl", "-qw", "net.ipv4.tcp_syncookies=2"]);
}

/// XDP_TX on a veth reaches the peer only when the peer runs NAPI, which an XDP program on it
/// turns on: the empty program (passes everything) on the client's side, for as long as the
/// returned object lives.
fn peer_receives_xdp_tx(lab: &VethLab) -> TestPrograms {
    let interface = lab.client_if.clone();
    lab.client.enter(move || {
        let mut programs = TestPrograms::load().expect("load the test programs");
        programs
            .program_mut(program_names::EMPTY)
            .expect("the empty program")
            .attach(&interface, XdpMode::Driver)
            .expect("attach the empty program to the client's side");
        programs
    })
}

/// Sends `frame` out of the client's interface with a packet socket.
fn send_frame(lab: &VethLab, frame: Vec<u8>) {
    send_frames(lab, vec![frame]);
}

/// Sends `frames` out of the client's interface with a packet socket, in order. Each send
/// copies its frame into a buffer of its own: a frame the firewall turns into its SYN-ACK
/// changes no later frame (the in-kernel generator's page pool would hand it out again).
fn send_frames(lab: &VethLab, frames: Vec<Vec<u8>>) {
    let interface = lab.client_if.clone();
    lab.client.enter(move || {
        let ifindex = nix::net::if_::if_nametoindex(interface.as_str()).expect("ifindex");
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: a descriptor socket(2) just returned, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; zero is a valid start.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        address.sll_ifindex = ifindex as i32;
        address.sll_halen = 6;
        for frame in frames {
            loop {
                // SAFETY: the buffer and address are valid for the lengths given.
                let sent = unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                        (&raw const address).cast(),
                        size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                if sent == frame.len() as isize {
                    break;
                }
                let err = std::io::Error::last_os_error();
                // A full transmit queue: wait for room rather than lose the frame.
                assert_eq!(err.raw_os_error(), Some(libc::ENOBUFS), "sendto: {err}");
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    });
}

/// The client's and the server's MAC addresses (each read with `ip`: once per test).
fn macs(lab: &VethLab) -> ([u8; 6], [u8; 6]) {
    (
        lab.client.mac(&lab.client_if),
        lab.server.mac(&lab.server_if),
    )
}

/// An Ethernet/IPv4/TCP frame from `source` to the server's port with `flags` set by `tcp`.
fn tcp_frame(
    (client_mac, server_mac): ([u8; 6], [u8; 6]),
    source: Ipv4Addr,
    tcp: impl FnOnce(
        etherparse::PacketBuilderStep<etherparse::TcpHeader>,
    ) -> etherparse::PacketBuilderStep<etherparse::TcpHeader>,
) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(client_mac, server_mac)
        .ipv4(source.octets(), SERVER_ADDR.octets(), 64)
        .tcp(40_000, PORT, 1000, 64_240);
    let builder = tcp(builder);
    let mut frame = Vec::new();
    builder.write(&mut frame, &[]).expect("frame");
    frame
}

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

/// The keys of the pinned LRU state map `name`.
fn state_keys(dirs: &Dirs, name: &'static str) -> Vec<TrackKey> {
    let path = dirs.layout().map(name);
    let data = aya::maps::MapData::from_pin(&path)
        .unwrap_or_else(|err| panic!("open {}: {err}", path.display()));
    let map: aya::maps::HashMap<_, TrackKey, TrackState> =
        aya::maps::HashMap::try_from(aya::maps::Map::from_map_data(data).expect("map"))
            .expect("hash map");
    map.keys().filter_map(Result::ok).collect()
}

#[test]
fn connections_through_xdp_cookies_are_served_and_a_forged_ack_is_dropped() {
    let lab = VethLab::new("sck", &[FORGER]);
    cookies_always_allowed(&lab);
    let _peer = peer_receives_xdp_tx(&lab);
    let dirs = Dirs::new("sck");
    dirs.write_policy(&policy("always"));
    let _daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    let _server = EchoServer::start(&lab);

    const CONNECTIONS: u64 = 5;
    for i in 0..CONNECTIONS {
        let text = format!("request {i} {}", "x".repeat(1000 * i as usize));
        let reply = request(&lab, CLIENT_ADDR, text.clone())
            .unwrap_or_else(|err| panic!("connection {i} through cookie mode: {err}"));
        assert_eq!(reply, format!("echo: {text}"), "connection {i}");
    }
    // An ACK that acknowledges no cookie of ours, from a source that never sent a SYN.
    send_frame(&lab, tcp_frame(macs(&lab), FORGER, |tcp| tcp.ack(12_345)));

    let stats = quiet(&dirs);
    // Every SYN was answered in XDP; the first connection's ACK proved the client (its later
    // ACKs take the rule's buckets); the forged ACK was dropped.
    assert_eq!(
        stats.rule(0, Reason::SynCookie).packets,
        CONNECTIONS,
        "{stats:?}"
    );
    assert_eq!(stats.rule(0, Reason::CookieValid).packets, 1, "{stats:?}");
    assert_eq!(stats.rule(0, Reason::BadCookie).packets, 1, "{stats:?}");
    // The proven client has state; the forger has none.
    let sources = state_keys(&dirs, map_names::SOURCES);
    assert_eq!(sources, vec![TrackKey::v4(0, u32::from(CLIENT_ADDR), 32)]);
}

#[test]
fn a_spoofed_syn_flood_in_cookie_mode_adds_no_state_entry() {
    let lab = VethLab::new("scf", &[]);
    cookies_always_allowed(&lab);
    let _peer = peer_receives_xdp_tx(&lab);
    let dirs = Dirs::new("scf");
    dirs.write_policy(&policy("always"));
    let _daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    let _server = EchoServer::start(&lab);

    // 65,536 spoofed sources of 198.18.0.0/15, each sending two SYNs: without cookies a source
    // is admitted to state on its second packet, and its subnet on the second of the subnet.
    const SOURCES: u32 = 1 << 16;
    let macs = macs(&lab);
    let round: Vec<Vec<u8>> = (0..SOURCES)
        .map(|host| {
            let source = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + host);
            tcp_frame(macs, source, |tcp| tcp.syn())
        })
        .collect();
    flood_twice_answered_without_state(&lab, &dirs, round);
}

#[test]
fn a_spoofed_ipv6_syn_flood_in_cookie_mode_adds_no_state_entry() {
    let lab = VethLab::new("scf6", &[]);
    cookies_always_allowed(&lab);
    dual_stack(&lab);
    let _peer = peer_receives_xdp_tx(&lab);
    let dirs = Dirs::new("scf6");
    dirs.write_policy(&policy("always"));
    let _daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    let server: Ipv6Addr = SERVER_V6.parse().expect("address");
    let _server = EchoServer::serve(
        lab.server
            .enter(move || TcpListener::bind((server, PORT)).expect("bind")),
    );

    // Every frame a new source, each in a /64 of its own: bits 48..63 count the frames, bits
    // 32..47 and the interface id are random, and bit 32 is set, so no source falls in the
    // lab's 2001:db8::/64. A /64 seen once would be admitted to state on its second sighting
    // without cookies; the second round sends every source again.
    const SOURCES: u16 = u16::MAX;
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(15);
    let macs = macs(&lab);
    let round: Vec<Vec<u8>> = (0..SOURCES)
        .map(|index| {
            let source = Ipv6Addr::new(
                0x2001,
                0xdb8,
                0x8000 | rand::Rng::random::<u16>(&mut rng),
                index,
                rand::Rng::random(&mut rng),
                rand::Rng::random(&mut rng),
                rand::Rng::random(&mut rng),
                rand::Rng::random(&mut rng),
            );
            tcp_frame_v6(macs, source, server)
        })
        .collect();
    flood_twice_answered_without_state(&lab, &dirs, round);
}

/// Sends every SYN of `round` twice (without cookies a key seen twice is admitted to state)
/// and checks that every one was answered in XDP, none took the rule's buckets, and neither
/// state map gained an entry.
fn flood_twice_answered_without_state(lab: &VethLab, dirs: &Dirs, round: Vec<Vec<u8>>) {
    let frames = [round.clone(), round].concat();
    let sent = frames.len() as u64;
    send_frames(lab, frames);
    let stats = quiet(dirs);
    assert_eq!(stats.rule(0, Reason::SynCookie).packets, sent, "{stats:?}");
    assert_eq!(stats.rule(0, Reason::Default).packets, 0, "{stats:?}");
    assert_eq!(stats.rule(0, Reason::RateLimited).packets, 0, "{stats:?}");
    assert_eq!(state_keys(dirs, map_names::SOURCES), Vec::new());
    assert_eq!(state_keys(dirs, map_names::SUBNETS), Vec::new());
}

/// An Ethernet/IPv6/TCP SYN from `source` to `server`'s port.
fn tcp_frame_v6(
    (client_mac, server_mac): ([u8; 6], [u8; 6]),
    source: Ipv6Addr,
    server: Ipv6Addr,
) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(client_mac, server_mac)
        .ipv6(source.octets(), server.octets(), 64)
        .tcp(40_000, PORT, 1000, 64_240)
        .syn();
    let mut frame = Vec::new();
    builder.write(&mut frame, &[]).expect("frame");
    frame
}

/// `syn_cookies = "auto"` with the kernel's default `tcp_syncookies = 1`: a spoofed SYN flood
/// switches the port's cookie mode on; SYNs go to the kernel until the listener's SYN queue is
/// full (the helper gives a cookie only then), and from then on XDP answers them; status and
/// metrics show the mode; after the grace (about 10 s without the flood) the mode is off
/// again and a client's connection is the kernel's to answer.
#[test]
fn auto_switches_cookie_mode_on_under_a_flood_and_off_after_it() {
    let lab = VethLab::new("sca", &[]);
    let _peer = peer_receives_xdp_tx(&lab);
    // Replies to the spoofed sources go to the client's side, which drops them: the lab's
    // blackhole router.
    lab.server.ip(&[
        "route",
        "add",
        "198.18.0.0/15",
        "via",
        &CLIENT_ADDR.to_string(),
    ]);
    let dirs = Dirs::new("sca");
    dirs.write_policy(&policy("auto"));
    let _daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    // A listener with a SYN queue of 16: the flood fills it at once.
    let listener = lab.server.enter(|| {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_reuse_address(true).expect("reuse");
        socket
            .bind(&std::net::SocketAddr::from((SERVER_ADDR, PORT)).into())
            .expect("bind");
        socket.listen(16).expect("listen");
        TcpListener::from(socket)
    });
    let _server = EchoServer::serve(listener);

    const SOURCES: u32 = 1 << 16;
    let macs = macs(&lab);
    let frames: Vec<Vec<u8>> = (0..SOURCES)
        .map(|host| {
            let source = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + host);
            tcp_frame(macs, source, |tcp| tcp.syn())
        })
        .collect();
    send_frames(&lab, frames);
    let stats = quiet(&dirs);
    let answered = stats.rule(0, Reason::SynCookie).packets;
    let passed = stats.rule(0, Reason::Default).packets;
    // Every SYN counted under the rule; all but those before the detector switched on and
    // those that filled the SYN queue answered in XDP.
    assert_eq!(answered + passed, u64::from(SOURCES), "{stats:?}");
    assert!(answered >= u64::from(SOURCES) - 1000, "{stats:?}");
    let cookies = |dirs: &Dirs| dirs.cli_json(&["status"])["syn_cookies"][0].clone();
    let during = cookies(&dirs);
    assert_eq!(during["port"], PORT, "{during}");
    assert!(
        during["cpus_in_cookie_mode"].as_u64() >= Some(1),
        "{during}"
    );
    assert!(during["switches"].as_u64() >= Some(1), "{during}");
    // The metrics follow the engine's tick.
    let mode = || {
        apifw_tests::traffic::scrape(&lab.server).get(
            "apifw_syn_cookie_mode",
            &[("rule", "api"), ("port", "8080")],
        )
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while mode() != Some(1.0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(mode(), Some(1.0));
    // The switch is audited (and logged) at the tick that noticed it.
    let audited = |action: &str| {
        std::fs::read_to_string(dirs.audit_log())
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(&format!("\"action\":\"{action}\"")))
            .count()
    };
    assert_eq!(audited("syncookie.on"), 1);
    assert_eq!(audited("syncookie.off"), 0);

    // The grace: 75 windows of 134 ms without the flood.
    std::thread::sleep(Duration::from_secs(11));
    let after = cookies(&dirs);
    assert_eq!(after["cpus_in_cookie_mode"], 0, "{after}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while audited("syncookie.off") == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!((audited("syncookie.on"), audited("syncookie.off")), (1, 1));
    let reply = request(&lab, CLIENT_ADDR, "after the flood".into()).expect("connection");
    assert_eq!(reply, "echo: after the flood");
    let stats = quiet(&dirs);
    assert_eq!(
        stats.rule(0, Reason::SynCookie).packets,
        answered,
        "a SYN answered in XDP after the grace: {stats:?}"
    );
}

/// The server's IPv6 address in the dual-stack lab, and the client's.
const SERVER_V6: &str = "2001:db8::1";
const CLIENT_V6: &str = "2001:db8::2";

/// Turns IPv6 on in the lab (the lab starts IPv4-only) with static neighbours: the server
/// `2001:db8::1`, the client `2001:db8::2`.
fn dual_stack(lab: &VethLab) {
    for (ns, interface, own, peer, peer_ns, peer_if) in [
        (
            &lab.server,
            &lab.server_if,
            SERVER_V6,
            CLIENT_V6,
            &lab.client,
            &lab.client_if,
        ),
        (
            &lab.client,
            &lab.client_if,
            CLIENT_V6,
            SERVER_V6,
            &lab.server,
            &lab.server_if,
        ),
    ] {
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0"]);
        ns.exec(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{interface}.disable_ipv6=0"),
        ]);
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{own}/64"),
            "dev",
            interface,
            "nodad",
        ]);
        let mac = peer_ns.mac(peer_if);
        let mac = mac.map(|byte| format!("{byte:02x}")).join(":");
        ns.ip(&[
            "-6",
            "neigh",
            "replace",
            peer,
            "lladdr",
            &mac,
            "dev",
            interface,
            "nud",
            "permanent",
        ]);
    }
}

/// A private nginx in the server namespace on port [`PORT`] of both of the lab's addresses,
/// serving `body` at `/body`; stopped on drop.
struct Nginx {
    child: std::process::Child,
}

impl Nginx {
    fn start(lab: &VethLab, dir: &std::path::Path, body: &[u8]) -> Self {
        let www = dir.join("www");
        std::fs::create_dir_all(&www).expect("www");
        std::fs::create_dir_all(dir.join("tmp")).expect("tmp");
        std::fs::write(www.join("body"), body).expect("body");
        let d = dir.display();
        let config = format!(
            "user root root;\nworker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 256; }}\nhttp {{\n\
             access_log off;\nclient_body_temp_path {d}/tmp/body;\n\
             proxy_temp_path {d}/tmp/proxy;\nfastcgi_temp_path {d}/tmp/fastcgi;\n\
             uwsgi_temp_path {d}/tmp/uwsgi;\nscgi_temp_path {d}/tmp/scgi;\n\
             server {{\nlisten {SERVER_ADDR}:{PORT};\nlisten [{SERVER_V6}]:{PORT};\n\
             root {d}/www;\n}}\n}}\n"
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config).expect("nginx.conf");
        let child = std::process::Command::new("nsenter")
            .arg(format!("--net={}", lab.server.path().display()))
            .args(["nginx", "-p"])
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn nginx (cargo xtask setup installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dir.join("nginx.pid").exists() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGQUIT);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx behind `syn_cookies = "always"` with every SYN answered in XDP, over IPv4 and IPv6:
/// curl gets every body intact, wrk's connections all work, and the counters say each of them
/// opened through an XDP cookie.
#[test]
fn nginx_serves_curl_and_wrk_through_xdp_cookies_over_ipv4_and_ipv6() {
    let lab = VethLab::new("scn", &[]);
    dual_stack(&lab);
    cookies_always_allowed(&lab);
    let _peer = peer_receives_xdp_tx(&lab);
    let dirs = Dirs::new("scn");
    dirs.write_policy(&policy("always"));
    let _daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    // 200 kB that no two offsets share: a byte out of place shows.
    let body: Vec<u8> = (0..50_000u32)
        .flat_map(|i| i.wrapping_mul(2_654_435_761).to_be_bytes())
        .collect();
    let nginx_dir = std::env::temp_dir().join(format!("apifw-scn-nginx-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&nginx_dir);
    let nginx = Nginx::start(&lab, &nginx_dir, &body);

    let curl = |url: String| {
        let output = lab
            .client
            .exec(&["curl", "-sS", "--max-time", "5", "-o", "-", &url]);
        assert!(
            output.status.success(),
            "curl {url}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    };
    // Connections the client opened (a SYN each), as its kernel counts them (IPv4 and IPv6).
    let active_opens = || {
        let snmp = lab.client.exec(&["cat", "/proc/net/snmp"]);
        let text = String::from_utf8_lossy(&snmp.stdout).into_owned();
        let mut tcp = text.lines().filter(|line| line.starts_with("Tcp:"));
        let (names, values) = (
            tcp.next().expect("Tcp names"),
            tcp.next().expect("Tcp values"),
        );
        let index = names
            .split_whitespace()
            .position(|name| name == "ActiveOpens")
            .expect("ActiveOpens");
        values
            .split_whitespace()
            .nth(index)
            .expect("value")
            .parse::<u64>()
            .expect("number")
    };
    let opened_before = active_opens();
    const REQUESTS: u64 = 4;
    for _ in 0..REQUESTS {
        assert!(
            curl(format!("http://{SERVER_ADDR}:{PORT}/body")) == body,
            "IPv4 body differs"
        );
        assert!(
            curl(format!("http://[{SERVER_V6}]:{PORT}/body")) == body,
            "IPv6 body differs"
        );
    }
    let wrk = lab.client.exec(&[
        "wrk",
        "-t1",
        "-c8",
        "-d2s",
        &format!("http://{SERVER_ADDR}:{PORT}/body"),
    ]);
    let report = String::from_utf8_lossy(&wrk.stdout).into_owned();
    assert!(
        wrk.status.success(),
        "wrk: {report}{}",
        String::from_utf8_lossy(&wrk.stderr)
    );
    assert!(!report.contains("Socket errors"), "{report}");
    assert!(!report.contains("Non-2xx"), "{report}");
    assert!(report.contains("requests in"), "{report}");
    drop(nginx);
    let _ = std::fs::remove_dir_all(&nginx_dir);

    let stats = quiet(&dirs);
    // One SYN per connection, each answered in XDP: curl's 2 × 4, and wrk's (8, and one more
    // each time nginx ends a connection after its keep-alive requests).
    let connections = active_opens() - opened_before;
    assert!(connections >= 2 * REQUESTS + 8, "{connections} connections");
    assert_eq!(
        stats.rule(0, Reason::SynCookie).packets,
        connections,
        "{stats:?}"
    );
    // The first ACK of each client address proved it (IPv4 and IPv6); the rest of their
    // packets took the buckets.
    assert_eq!(stats.rule(0, Reason::CookieValid).packets, 2, "{stats:?}");
    assert_eq!(stats.rule(0, Reason::BadCookie).packets, 0, "{stats:?}");
    let sources = state_keys(&dirs, map_names::SOURCES);
    assert_eq!(sources.len(), 2, "{sources:?}");
}

/// The cookie path against the reference model, frame by frame (`BPF_PROG_TEST_RUN` with the
/// test clock): `always`, `auto` and `off` rules on three ports, hostile TCP handshakes (SYN
/// with payload, SYN+FIN, SYN+RST, SYN+ACK, ACKs, RSTs), TCP options of every size and MSS edge
/// values, a data offset past the frame's end, VLAN tags, IPv4 fragments, IPv6 with an
/// extension header, in bursts that switch `auto` on. The test's namespace has no listener on
/// these ports, as the model's world has none: a SYN on the cookie path passes uncharged.
mod differential {
    use std::{
        net::{IpAddr, Ipv4Addr, Ipv6Addr},
        path::Path,
    };

    use etherparse::{PacketBuilder, TcpOptionElement};
    use firewall_common::{Action, Reason};
    use firewall_userspace::{Firewall, Loaded, Policy};
    use rand::{Rng as _, rngs::SmallRng};

    const ALWAYS: u16 = 7443;
    const AUTO: u16 = 7080;
    const OFF: u16 = 7022;

    fn policy() -> Policy {
        Loaded::from_str(
            Path::new("cookies.toml"),
            &format!(
                r#"
[[rule]]
name = "always"
protocol = "tcp"
ports = [{ALWAYS}]
syn_cookies = "always"
syn_per_source = {{ per_second = 1, burst = 2 }}
per_source = {{ packets_per_second = 50, burst_packets = 5 }}

[[rule]]
name = "auto"
protocol = "tcp"
ports = [{AUTO}]
syn_per_source = {{ per_second = 1, burst = 2 }}
per_subnet = {{ packets_per_second = 100, burst_packets = 10, prefix_v4 = 24, prefix_v6 = 64 }}

[[rule]]
name = "off"
protocol = "tcp"
ports = [{OFF}]
syn_cookies = "off"
syn_per_source = {{ per_second = 1, burst = 2 }}
"#
            ),
        )
        .unwrap_or_else(|err| panic!("{err}"))
        .policy
    }

    fn sources() -> Vec<IpAddr> {
        let mut sources: Vec<IpAddr> = (1..=4)
            .map(|host| IpAddr::V4(Ipv4Addr::new(198, 51, 100, host)))
            .collect();
        sources.push(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)));
        for host in [1, 2] {
            sources.push(IpAddr::V6(Ipv6Addr::new(
                0x2001, 0xdb8, 0xc, 1, 0, 0, 0, host,
            )));
        }
        sources
    }

    /// A hostile or ordinary TCP frame from `src` to one of the three ports.
    fn frame(rng: &mut SmallRng, src: IpAddr) -> Vec<u8> {
        let port = [ALWAYS, AUTO, AUTO, OFF][rng.random_range(0..4)];
        let vlan = rng.random_range(0..6) == 0;
        let ethernet = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]);
        let mut out = Vec::new();
        let payload = vec![0xAB; [0, 0, 0, 1, 100][rng.random_range(0..5)]];
        let tcp = |ip: etherparse::PacketBuilderStep<etherparse::IpHeaders>, rng: &mut SmallRng| {
            let tcp = ip.tcp(40_000 + rng.random_range(0..4), port, rng.random(), 1000);
            let tcp = match rng.random_range(0..10) {
                0..=3 => tcp.syn(),
                4 => tcp.syn().fin(),
                5 => tcp.syn().rst(),
                6 => tcp.syn().ack(rng.random()),
                7 | 8 => tcp.ack(rng.random()),
                _ => tcp.rst(),
            };
            let options: Vec<TcpOptionElement> = match rng.random_range(0..5) {
                0 => vec![],
                1 => vec![TcpOptionElement::MaximumSegmentSize(
                    [0, 1, 536, 1220, 1460, 9000, 65535][rng.random_range(0..7)],
                )],
                2 => vec![
                    TcpOptionElement::MaximumSegmentSize(1460),
                    TcpOptionElement::SelectiveAcknowledgementPermitted,
                    TcpOptionElement::Timestamp(rng.random(), 0),
                    TcpOptionElement::Noop,
                    TcpOptionElement::WindowScale(7),
                ],
                3 => vec![TcpOptionElement::WindowScale(14)],
                _ => vec![TcpOptionElement::Noop; 40],
            };
            tcp.options(&options).expect("TCP options")
        };
        let written = match (src, vlan) {
            (IpAddr::V4(src), false) => tcp(ethernet.ipv4(src.octets(), [192, 0, 2, 254], 64), rng)
                .write(&mut out, &payload),
            (IpAddr::V4(src), true) => tcp(
                ethernet
                    .single_vlan(0x123.try_into().expect("VLAN id"))
                    .ipv4(src.octets(), [192, 0, 2, 254], 64),
                rng,
            )
            .write(&mut out, &payload),
            (IpAddr::V6(src), _) => tcp(
                ethernet.ipv6(
                    src.octets(),
                    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).octets(),
                    64,
                ),
                rng,
            )
            .write(&mut out, &payload),
        };
        written.expect("write the frame");
        let l3 = if vlan { 18 } else { 14 };
        match (src, rng.random_range(0..8)) {
            // An IPv4 first fragment (more fragments): the cookie path leaves it to the buckets.
            (IpAddr::V4(_), 0) => out[l3 + 6] |= 0x20,
            // A data offset past the frame's end.
            (IpAddr::V4(_), 1) => out[l3 + 20 + 12] = 0xF0,
            // A hop-by-hop extension header before TCP.
            (IpAddr::V6(_), 0) => {
                out[l3 + 6] = 0;
                let len = u16::from_be_bytes([out[l3 + 4], out[l3 + 5]]) + 8;
                out[l3 + 4..l3 + 6].copy_from_slice(&len.to_be_bytes());
                out.splice(l3 + 40..l3 + 40, [6, 0, 1, 4, 0, 0, 0, 0]);
            }
            _ => {}
        }
        out
    }

    #[test]
    fn the_cookie_path_matches_the_model_frame_by_frame() {
        let sources = sources();
        let reasons = crate::ratelimit::replay_frames(policy(), 0xC00C_1E15, 6_000, true, |rng| {
            // Bursts at the same instant or microseconds apart (which switch `auto` on), and
            // pauses long enough for its grace to end.
            let step = match rng.random_range(0..100) {
                0..=89 => rng.random_range(0..20_000),
                90..=98 => rng.random_range(0..50_000_000),
                _ => rng.random_range(5_000_000_000..15_000_000_000),
            };
            let src = sources[rng.random_range(0..sources.len())];
            (step, src, frame(rng, src))
        });
        // The `off` rule and `auto` before it switches on refuse SYNs; the rest pass.
        for reason in [Reason::Default, Reason::SynLimited, Reason::RateLimited] {
            assert!(
                reasons.get(&reason).copied().unwrap_or(0) > 0,
                "{reason:?}: {reasons:?}"
            );
        }
    }

    /// Twenty SYNs from one source at one instant: the `off` rule passes three (the first is
    /// only sighted, admission; its SYN bucket holds two) and refuses seventeen; the `always`
    /// rule answers (here: passes, no listener) every one without charging it.
    #[test]
    fn syns_on_the_cookie_path_charge_no_bucket() {
        let _one_cpu = apifw_tests::support::OneCpu::pin();
        let mut firewall = Firewall::load(&policy()).expect("load firewall");
        firewall.set_test_clock(1_000_000_000).expect("clock");
        let syn = |port: u16| {
            let mut out = Vec::new();
            PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
                .ipv4([198, 51, 100, 7], [192, 0, 2, 254], 64)
                .tcp(40_000, port, 1, 1000)
                .syn()
                .write(&mut out, &[])
                .expect("frame");
            out
        };
        let passed = |firewall: &mut Firewall, port: u16| {
            (0..20)
                .filter(|_| crate::ratelimit::run(firewall, &syn(port)) == Action::Pass)
                .count()
        };
        assert_eq!(passed(&mut firewall, OFF), 3);
        assert_eq!(passed(&mut firewall, ALWAYS), 20);
        let stats = firewall.stats().expect("counters");
        assert_eq!(stats.rule(2, Reason::SynLimited).packets, 17);
        assert_eq!(stats.rule(0, Reason::Default).packets, 20);
        assert_eq!(stats.rule(0, Reason::SynLimited).packets, 0);
    }
}
