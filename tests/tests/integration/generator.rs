//! The in-kernel flood generator the benchmarks and the soak test rely on (issue #6): the
//! frames it sends must be the ones it claims. A thinned IPv4/TCP SYN flood sends exactly one
//! frame in N, and every frame it sends reaches the receiver's TCP stack with valid IPv4 and TCP
//! checksums although the generator rewrote each one's source; so does the IPv6/TCP SYN flood
//! of the SYN-cookie benchmark (issue #15).
//!
//! Needs root.

use std::{
    net::Ipv6Addr,
    time::{Duration, Instant},
};

use apifw_tests::{
    generator::Generator,
    netns::{Netns, SERVER_ADDR, VethLab},
};
use etherparse::PacketBuilder;

/// One frame in this many is sent.
const SEND_EVERY: u32 = 4;

/// The `ethtool -S` counter `tx_queue_<N>_<name>` of `interface`, summed over its queues.
fn tx_queue_counter(netns: &Netns, interface: &str, name: &str) -> u64 {
    let output = netns.exec(&["ethtool", "-S", interface]);
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.trim().split_once(':'))
        .filter(|(key, _)| {
            key.trim()
                .strip_prefix("tx_queue_")
                .and_then(|rest| rest.split_once('_'))
                .is_some_and(|(queue, counter)| {
                    queue.bytes().all(|b| b.is_ascii_digit()) && counter == name
                })
        })
        .map(|(_, value)| value.trim().parse::<u64>().expect("counter value"))
        .sum()
}

/// A counter of `/proc/net/snmp` in `netns` (`proto`: "Ip" or "Tcp").
fn snmp(netns: &Netns, proto: &str, field: &str) -> u64 {
    let output = netns.exec(&["cat", "/proc/net/snmp"]);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut rows = text
        .lines()
        .filter(|line| line.starts_with(&format!("{proto}:")));
    let (names, values) = (rows.next().expect("names"), rows.next().expect("values"));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == field)
        .unwrap_or_else(|| panic!("no {proto} {field} in /proc/net/snmp"))
        .1
        .parse()
        .expect("number")
}

#[test]
fn thinned_syn_flood_sends_one_frame_in_n_with_valid_checksums() {
    let lab = VethLab::new("gen", &[]);
    // A veth takes XDP frames only while its NAPI runs: GRO on does that without a program.
    // Spoofed sources have no route back: no reverse-path filter, so they reach TCP.
    lab.server
        .exec(&["ethtool", "-K", &lab.server_if, "gro", "on"]);
    for key in ["all", "default", lab.server_if.as_str()] {
        lab.server
            .exec(&["sysctl", "-qw", &format!("net.ipv4.conf.{key}.rp_filter=0")]);
    }
    let builder = PacketBuilder::ethernet2(
        lab.client.mac(&lab.client_if),
        lab.server.mac(&lab.server_if),
    )
    .ipv4([198, 18, 0, 1], SERVER_ADDR.octets(), 64)
    .tcp(40_000, 80, 0x1234_5678, 64_240)
    .syn();
    let mut frame = Vec::new();
    builder.write(&mut frame, &[]).expect("frame");
    let header_errors = |lab: &VethLab| snmp(&lab.server, "Ip", "InHdrErrors");
    flood_reaches_tcp_thinned(&lab, &frame, header_errors);
}

#[test]
fn thinned_ipv6_syn_flood_sends_one_frame_in_n_with_valid_checksums() {
    let lab = VethLab::new("gen6", &[]);
    lab.server
        .exec(&["ethtool", "-K", &lab.server_if, "gro", "on"]);
    for key in ["all", "default", lab.server_if.as_str()] {
        lab.server.exec(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{key}.disable_ipv6=0"),
        ]);
    }
    lab.server.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{SERVER_ADDR_V6}/64"),
        "dev",
        &lab.server_if,
        "nodad",
    ]);
    // The generator rewrites bits 32..63 of the source: 2001:db8:XXXX:XXXX::1.
    let builder = PacketBuilder::ethernet2(
        lab.client.mac(&lab.client_if),
        lab.server.mac(&lab.server_if),
    )
    .ipv6(
        Ipv6Addr::new(0x2001, 0xdb8, 0x8000, 0, 0, 0, 0, 1).octets(),
        SERVER_ADDR_V6.octets(),
        64,
    )
    .tcp(40_000, 80, 0x1234_5678, 64_240)
    .syn();
    let mut frame = Vec::new();
    builder.write(&mut frame, &[]).expect("frame");
    let header_errors = |lab: &VethLab| snmp6(&lab.server, "Ip6InHdrErrors");
    flood_reaches_tcp_thinned(&lab, &frame, header_errors);
}

/// The server's IPv6 address in the IPv6 test (the lab itself is IPv4).
const SERVER_ADDR_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

/// A counter of `/proc/net/snmp6` in `netns`.
fn snmp6(netns: &Netns, field: &str) -> u64 {
    let output = netns.exec(&["cat", "/proc/net/snmp6"]);
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once(char::is_whitespace))
        .find(|(name, _)| *name == field)
        .unwrap_or_else(|| panic!("no {field} in /proc/net/snmp6"))
        .1
        .trim()
        .parse()
        .expect("number")
}

/// Floods the server of `lab` with `frame` (a SYN to it) from the generator, thinned to one
/// frame in [`SEND_EVERY`], and checks that exactly that share was sent and that every frame
/// sent reached TCP with valid checksums (`header_errors`: the IP layer's header error
/// counter of the frame's family).
fn flood_reaches_tcp_thinned(lab: &VethLab, frame: &[u8], header_errors: impl Fn(&VethLab) -> u64) {
    let ifindex = lab.client.enter({
        let name = lab.client_if.clone();
        move || nix::net::if_::if_nametoindex(name.as_str()).expect("client ifindex")
    });

    let xmit = || {
        (
            tx_queue_counter(&lab.client, &lab.client_if, "xdp_xmit"),
            tx_queue_counter(&lab.client, &lab.client_if, "xdp_xmit_errors"),
        )
    };
    // TCP's counters are shared by IPv4 and IPv6.
    let tcp = || {
        (
            snmp(&lab.server, "Tcp", "InSegs"),
            snmp(&lab.server, "Tcp", "InCsumErrors"),
            header_errors(lab),
        )
    };
    let (xmit_before, errors_before) = xmit();
    let (segs_before, csum_before, hdr_before) = tcp();
    let generator = Generator::start(0).expect("start the generator");
    let sent = generator
        .flood_thinned(
            lab.client.path(),
            ifindex,
            frame,
            17,
            Duration::from_millis(300),
            SEND_EVERY,
        )
        .expect("flood");
    drop(generator);
    let (xmit_after, errors_after) = xmit();
    let (xmitted, refused) = (xmit_after - xmit_before, errors_after - errors_before);
    assert_eq!(
        xmitted + refused,
        sent.frames / u64::from(SEND_EVERY),
        "the generator ran {} frames and should have sent one in {SEND_EVERY}",
        sent.frames
    );
    assert!(xmitted > 0, "no frame reached the receiving ring");
    // The receiver drains its ring after the flood: wait until TCP has seen every frame.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (segs, csum, hdr) = tcp();
        assert_eq!(csum - csum_before, 0, "TCP checksum errors");
        assert_eq!(hdr - hdr_before, 0, "IP header errors");
        if segs - segs_before == xmitted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "TCP received {} segments of the {xmitted} frames on the ring",
            segs - segs_before
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
