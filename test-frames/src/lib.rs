//! Frames for apifw's verdict tests, crafted with `etherparse`: the reference model's tests
//! (`firewall-common/tests/model.rs`) and the kernel's (`tests/`) run the same frames.
//!
//! - [`table`]: named frames covering every parse path of the reference model
//!   (`firewall_common::model`), for each given source address.
//! - [`random_frames`]: deterministic pseudo-random frames (valid, odd, corrupted and truncated).
//! - [`truncations`]: every prefix of a frame that `BPF_PROG_TEST_RUN` accepts for XDP.
//! - [`hex`]: a frame as test failures show it.
//!
//! Headers are built with `etherparse`; malformed frames are valid frames with a field set out of
//! range or cut short. Only documentation addresses appear in [`table`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{
    ArpEthIpv4Packet, ArpOperation, EtherType, Ethernet2Header, IcmpEchoHeader, Icmpv4Header,
    Icmpv4Type, Icmpv6Header, Icmpv6Type, IpAuthHeader, IpFragOffset, IpNumber, Ipv4Header,
    Ipv4Options, Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader, SingleVlanHeader, TcpHeader,
    TcpOptionElement, UdpHeader, VlanId, VlanPcp,
};
use firewall_common::packet::{
    ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP, IPV6_HLEN, TCP_HLEN, UDP_HLEN,
    VLAN_HLEN,
};
use ipnet::IpNet;
use rand::{Rng, SeedableRng, rngs::SmallRng, seq::IndexedRandom};

/// Destination of every IPv4 frame in [`table`] and [`random_frames`].
pub const DST_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Destination of every IPv6 frame in [`table`] and [`random_frames`].
pub const DST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// Source and destination port of the TCP segments in [`table`].
pub const TCP_PORTS: (u16, u16) = (49152, 443);
/// Source and destination port of the UDP datagrams in [`table`].
pub const UDP_PORTS: (u16, u16) = (49153, 53);

/// Locally administered MAC addresses.
const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// Nearest-bridge multicast address, where LLDP goes.
const LLDP_MAC: [u8; 6] = [0x01, 0x80, 0xc2, 0, 0, 0x0e];
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_LLDP: u16 = 0x88cc;
/// IEEE 802 local experimental EtherType.
const ETH_P_EXPERIMENTAL: u16 = 0x88b5;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_GRE: u8 = 47;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_NONE: u8 = 59;
/// Documentation address used as the ARP sender.
const ARP_SENDER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// A named frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    /// `<kind>` for link-layer cases, `<kind> from <source>` for IP cases, e.g.
    /// `v4/vlan1/tcp from 203.0.113.7`.
    pub name: String,
    /// The Ethernet frame.
    pub frame: Vec<u8>,
}

impl Case {
    /// The name without the ` from <source>` suffix, e.g. `v4/vlan1/tcp`.
    pub fn kind(&self) -> &str {
        self.name.split(" from ").next().unwrap_or(&self.name)
    }
}

/// Frames covering every parse path of the reference model.
///
/// Link-layer cases (`link/...`: non-IP EtherTypes, truncated VLAN tags, empty IP payloads) come
/// once; then, for each source, the IP cases of its family (`v4/...` or `v6/...`), sent to
/// [`DST_V4`] or [`DST_V6`].
pub fn table(sources: &[IpAddr]) -> Vec<Case> {
    let mut cases: Vec<Case> = link_cases()
        .into_iter()
        .map(|(kind, frame)| Case {
            name: kind.to_string(),
            frame,
        })
        .collect();
    for &src in sources {
        let ip = match src {
            IpAddr::V4(src) => v4_cases(src),
            IpAddr::V6(src) => v6_cases(src),
        };
        cases.extend(ip.into_iter().map(|(kind, frame)| Case {
            name: format!("{kind} from {src}"),
            frame,
        }));
    }
    cases
}

/// A plain UDP datagram (64-byte frame class) from `src` to [`DST_V4`] or [`DST_V6`]: the packet
/// benchmarks repeat.
pub fn udp_frame(src: IpAddr) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]);
    let builder = match src {
        IpAddr::V4(src) => builder.ipv4(src.octets(), DST_V4.octets(), 64),
        IpAddr::V6(src) => builder.ipv6(src.octets(), DST_V6.octets(), 64),
    };
    let builder = builder.udp(UDP_PORTS.0, UDP_PORTS.1);
    let payload = [0u8; 18];
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut frame, &payload)
        .expect("writing to a Vec cannot fail");
    frame
}

/// `count` pseudo-random frames, the same for the same `seed` and `near`.
///
/// About 3% are non-IP (random EtherType). The rest are IPv4 or IPv6 with 0-2 VLAN tags
/// (802.1Q or 802.1ad each), TCP, UDP, ICMP or another protocol with random ports and 0-64 bytes of
/// payload; IPv4 with random options and occasional fragments; IPv6 with 0-3 extension headers
/// (hop-by-hop, routing, destination options with small random lengths, fragment headers with
/// offset 0 or not). Sources: with probability 2/3 a random address inside a random prefix of
/// `near` (when `near` is not empty), otherwise a fully random IPv4 or IPv6 address. Then about 5%
/// of frames get one random byte of their first 80 changed, and about 6% are cut at a random
/// length. Every frame is at least [`ETH_HLEN`] bytes long.
pub fn random_frames(seed: u64, count: usize, near: &[IpNet]) -> Vec<Vec<u8>> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..count).map(|_| random_frame(&mut rng, near)).collect()
}

/// Every prefix of `frame` from [`ETH_HLEN`] bytes (the least `BPF_PROG_TEST_RUN` accepts for
/// XDP) up to the whole frame; nothing when the frame is shorter.
pub fn truncations(frame: &[u8]) -> impl Iterator<Item = &[u8]> {
    (ETH_HLEN..=frame.len()).map(move |len| &frame[..len])
}

// ----------------------------------------------------------------------------------------------
// Building blocks.

/// An IPv6 extension header: `(hdr_ext_len)` for the variable-length ones.
#[derive(Clone, Copy, Debug)]
enum Ext {
    HopByHop(u8),
    Routing(u8),
    DestOpts(u8),
    Fragment { offset: u16, more: bool },
}

impl Ext {
    fn number(self) -> u8 {
        match self {
            Ext::HopByHop(_) => IPPROTO_HOPOPTS,
            Ext::Routing(_) => IPPROTO_ROUTING,
            Ext::DestOpts(_) => IPPROTO_DSTOPTS,
            Ext::Fragment { .. } => IPPROTO_FRAGMENT,
        }
    }

    fn to_bytes(self, next: u8) -> Vec<u8> {
        let raw = |len: u8, payload: Vec<u8>| {
            debug_assert_eq!(payload.len(), 6 + 8 * usize::from(len));
            Ipv6RawExtHeader::new_raw(IpNumber(next), &payload)
                .expect("extension header payload of 6 + 8n bytes")
                .to_bytes()
                .to_vec()
        };
        match self {
            Ext::HopByHop(len) | Ext::DestOpts(len) => {
                raw(len, pad_options(6 + 8 * usize::from(len)))
            }
            Ext::Routing(len) => {
                // Experimental routing type 253 (RFC 4727), no segments left: ignored by nodes.
                let mut payload = vec![0; 6 + 8 * usize::from(len)];
                payload[0] = 253;
                raw(len, payload)
            }
            Ext::Fragment { offset, more } => {
                let mut bytes = Ipv6FragmentHeader::new(
                    IpNumber(next),
                    IpFragOffset::try_new(offset).expect("13-bit fragment offset"),
                    more,
                    0x0bad_cafe,
                )
                .to_bytes();
                // etherparse 0.19 puts the offset's low 5 bits and the M flag in the wrong places
                // (JulianSchmid/etherparse#150, fixed in 0.20): write the RFC 8200 layout,
                // offset << 3 | M.
                bytes[2..4].copy_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
                bytes.to_vec()
            }
        }
    }
}

/// Hop-by-hop/destination options data of `len` bytes: Pad1/PadN options only.
fn pad_options(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let left = len - out.len();
        if left == 1 {
            out.push(0); // Pad1
        } else {
            let n = left.min(257);
            out.push(1); // PadN
            out.push(u8::try_from(n - 2).expect("PadN length"));
            out.resize(out.len() + n - 2, 0);
        }
    }
    out
}

/// The transport part of a packet.
#[derive(Clone, Debug)]
enum L4 {
    Tcp(u16, u16),
    Udp(u16, u16),
    /// ICMP echo request (ICMPv6 for IPv6).
    Icmp,
    /// Protocol number and raw bytes (a cut or altered header, a fragment's data, ...).
    Raw(u8, Vec<u8>),
}

/// What a frame carries; built with [`Spec::build`].
#[derive(Clone, Debug)]
struct Spec {
    /// Tag protocol identifiers, outermost first.
    tags: Vec<u16>,
    src: IpAddr,
    dst: IpAddr,
    /// IPv4 options (a multiple of 4 bytes, at most 40).
    v4_options: Vec<u8>,
    /// IPv4 fragment offset (8-byte units) and MF flag.
    v4_fragment: (u16, bool),
    /// IPv4 total length, when not the real one.
    v4_total_len: Option<u16>,
    /// IPv6 extension headers, in order.
    v6_exts: Vec<Ext>,
    l4: L4,
    /// Data after the transport header.
    payload: Vec<u8>,
    /// Bytes after the IP packet (Ethernet padding or trailer).
    trailer: Vec<u8>,
}

impl Spec {
    fn new(src: IpAddr, l4: L4) -> Self {
        let dst = match src {
            IpAddr::V4(_) => IpAddr::V4(DST_V4),
            IpAddr::V6(_) => IpAddr::V6(DST_V6),
        };
        Self {
            tags: Vec::new(),
            src,
            dst,
            v4_options: Vec::new(),
            v4_fragment: (0, false),
            v4_total_len: None,
            v6_exts: Vec::new(),
            l4,
            payload: Vec::new(),
            trailer: Vec::new(),
        }
    }

    fn tags(mut self, tags: &[u16]) -> Self {
        self.tags = tags.to_vec();
        self
    }

    fn exts(mut self, exts: &[Ext]) -> Self {
        self.v6_exts = exts.to_vec();
        self
    }

    fn options(mut self, options: &[u8]) -> Self {
        self.v4_options = options.to_vec();
        self
    }

    fn fragment(mut self, offset: u16, more: bool) -> Self {
        self.v4_fragment = (offset, more);
        self
    }

    fn total_len(mut self, total_len: u16) -> Self {
        self.v4_total_len = Some(total_len);
        self
    }

    fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    fn trailer(mut self, trailer: &[u8]) -> Self {
        self.trailer = trailer.to_vec();
        self
    }

    /// Offset of the IP header in the frame.
    fn l3_offset(&self) -> usize {
        ETH_HLEN + VLAN_HLEN * self.tags.len()
    }

    fn build(&self) -> Vec<u8> {
        let (protocol, segment) = transport(self.src, self.dst, &self.l4, &self.payload);
        let (ether_type, mut packet) = match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                (ETH_P_IP, ipv4(src, dst, self, protocol, &segment))
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => (
                ETH_P_IPV6,
                ipv6(src, dst, &self.v6_exts, protocol, &segment),
            ),
            _ => panic!(
                "source {} and destination {} differ in family",
                self.src, self.dst
            ),
        };
        packet.extend_from_slice(&self.trailer);
        ethernet(DST_MAC, &self.tags, ether_type, &packet)
    }
}

/// An Ethernet frame with `tags` (tag protocol identifiers, outermost first) and `ether_type`.
fn ethernet(destination: [u8; 6], tags: &[u16], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ETH_HLEN + VLAN_HLEN * tags.len() + payload.len());
    let first = tags.first().copied().unwrap_or(ether_type);
    out.extend_from_slice(
        &Ethernet2Header {
            source: SRC_MAC,
            destination,
            ether_type: EtherType(first),
        }
        .to_bytes(),
    );
    for (i, _) in tags.iter().enumerate() {
        let next = tags.get(i + 1).copied().unwrap_or(ether_type);
        let vlan_id = 100 + u16::try_from(i).expect("few tags");
        out.extend_from_slice(
            &SingleVlanHeader {
                pcp: VlanPcp::ZERO,
                drop_eligible_indicator: false,
                vlan_id: VlanId::try_new(vlan_id).expect("12-bit VLAN id"),
                ether_type: EtherType(next),
            }
            .to_bytes(),
        );
    }
    out.extend_from_slice(payload);
    out
}

fn v4_pair(src: IpAddr, dst: IpAddr) -> Option<([u8; 4], [u8; 4])> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Some((s.octets(), d.octets())),
        _ => None,
    }
}

fn v6_pair(src: IpAddr, dst: IpAddr) -> ([u8; 16], [u8; 16]) {
    let v6 = |addr: IpAddr| match addr {
        IpAddr::V4(addr) => addr.to_ipv6_mapped(),
        IpAddr::V6(addr) => addr,
    };
    (v6(src).octets(), v6(dst).octets())
}

/// A TCP segment with checksum.
fn tcp_segment(
    src: IpAddr,
    dst: IpAddr,
    (sport, dport): (u16, u16),
    options: &[TcpOptionElement],
    payload: &[u8],
) -> Vec<u8> {
    let mut header = TcpHeader::new(sport, dport, 0x0102_0304, 64240);
    header.syn = true;
    header.set_options(options).expect("TCP options fit");
    header.checksum = match v4_pair(src, dst) {
        Some((s, d)) => header.calc_checksum_ipv4_raw(s, d, payload),
        None => {
            let (s, d) = v6_pair(src, dst);
            header.calc_checksum_ipv6_raw(s, d, payload)
        }
    }
    .expect("small segment");
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// A UDP datagram with checksum.
fn udp_datagram(src: IpAddr, dst: IpAddr, (sport, dport): (u16, u16), payload: &[u8]) -> Vec<u8> {
    let mut header = UdpHeader::without_ipv4_checksum(sport, dport, payload.len()).expect("small");
    header.checksum = match v4_pair(src, dst) {
        Some((s, d)) => header.calc_checksum_ipv4_raw(s, d, payload),
        None => {
            let (s, d) = v6_pair(src, dst);
            header.calc_checksum_ipv6_raw(s, d, payload)
        }
    }
    .expect("small datagram");
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// Protocol number and bytes of the transport part.
fn transport(src: IpAddr, dst: IpAddr, l4: &L4, payload: &[u8]) -> (u8, Vec<u8>) {
    match l4 {
        L4::Tcp(sport, dport) => (
            IPPROTO_TCP,
            tcp_segment(src, dst, (*sport, *dport), &[], payload),
        ),
        L4::Udp(sport, dport) => (
            IPPROTO_UDP,
            udp_datagram(src, dst, (*sport, *dport), payload),
        ),
        L4::Icmp => {
            let echo = IcmpEchoHeader { id: 0x4242, seq: 1 };
            let (protocol, header) = match v4_pair(src, dst) {
                Some(_) => (
                    IPPROTO_ICMP,
                    Icmpv4Header::with_checksum(Icmpv4Type::EchoRequest(echo), payload)
                        .to_bytes()
                        .to_vec(),
                ),
                None => {
                    let (s, d) = v6_pair(src, dst);
                    (
                        IPPROTO_ICMPV6,
                        Icmpv6Header::with_checksum(Icmpv6Type::EchoRequest(echo), s, d, payload)
                            .expect("small message")
                            .to_bytes()
                            .to_vec(),
                    )
                }
            };
            let mut out = header;
            out.extend_from_slice(payload);
            (protocol, out)
        }
        L4::Raw(protocol, bytes) => {
            let mut out = bytes.clone();
            out.extend_from_slice(payload);
            (*protocol, out)
        }
    }
}

/// An IPv4 packet (header checksum computed over the header as given).
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, spec: &Spec, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let mut header = Ipv4Header::new(0, 64, IpNumber(protocol), src.octets(), dst.octets())
        .expect("empty payload");
    header.identification = 0x1234;
    header.options = Ipv4Options::try_from(spec.v4_options.as_slice())
        .expect("IPv4 options: a multiple of 4 bytes, at most 40");
    let (offset, more) = spec.v4_fragment;
    header.dont_fragment = offset == 0 && !more;
    header.more_fragments = more;
    header.fragment_offset = IpFragOffset::try_new(offset).expect("13-bit fragment offset");
    header.set_payload_len(payload.len()).expect("small packet");
    if let Some(total_len) = spec.v4_total_len {
        header.total_len = total_len;
    }
    header.header_checksum = header.calc_header_checksum();
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// An IPv6 packet with extension headers `exts` before `protocol`.
fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, exts: &[Ext], protocol: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, ext) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(protocol, |ext| ext.number());
        body.extend_from_slice(&ext.to_bytes(next));
    }
    body.extend_from_slice(payload);
    let header = Ipv6Header {
        traffic_class: 0,
        flow_label: Default::default(),
        payload_length: u16::try_from(body.len()).expect("small packet"),
        next_header: IpNumber(exts.first().map_or(protocol, |ext| ext.number())),
        hop_limit: 64,
        source: src.octets(),
        destination: dst.octets(),
    };
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn arp_request(sender: Ipv4Addr) -> Vec<u8> {
    ArpEthIpv4Packet {
        operation: ArpOperation::REQUEST,
        sender_mac: SRC_MAC,
        sender_ipv4: sender.octets(),
        target_mac: [0; 6],
        target_ipv4: DST_V4.octets(),
    }
    .to_bytes()
    .to_vec()
}

/// An LLDPDU: chassis ID, port ID, TTL, end (etherparse has no LLDP support).
fn lldpdu() -> Vec<u8> {
    let tlv = |kind: u16, value: &[u8]| {
        let len = u16::try_from(value.len()).expect("short TLV");
        let mut out = ((kind << 9) | len).to_be_bytes().to_vec();
        out.extend_from_slice(value);
        out
    };
    let mut chassis = vec![4]; // MAC address subtype
    chassis.extend_from_slice(&SRC_MAC);
    [
        tlv(1, &chassis),
        tlv(2, b"\x07eth0"), // locally assigned port ID
        tlv(3, &120u16.to_be_bytes()),
        tlv(0, &[]),
    ]
    .concat()
}

/// TCP options making a 32-byte header: MSS, SACK permitted, window scale, NOPs.
fn tcp_options() -> [TcpOptionElement; 5] {
    [
        TcpOptionElement::MaximumSegmentSize(1460),
        TcpOptionElement::SelectiveAcknowledgementPermitted,
        TcpOptionElement::Noop,
        TcpOptionElement::Noop,
        TcpOptionElement::WindowScale(7),
    ]
}

// ----------------------------------------------------------------------------------------------
// The table.

const Q: u16 = ETH_P_8021Q;
const AD: u16 = ETH_P_8021AD;

/// Cases that do not depend on a source address.
fn link_cases() -> Vec<(&'static str, Vec<u8>)> {
    let arp = arp_request(ARP_SENDER);
    let lldp = lldpdu();
    // An 802.3 frame: the type field is a length (< 0x0600), then LLC (STP BPDU SAPs).
    let llc = [0x42, 0x42, 0x03, 0, 0, 0, 0, 0];
    let length = u16::try_from(llc.len()).expect("short");
    vec![
        ("link/arp", ethernet([0xff; 6], &[], ETH_P_ARP, &arp)),
        ("link/vlan1/arp", ethernet([0xff; 6], &[Q], ETH_P_ARP, &arp)),
        (
            "link/vlan2/arp",
            ethernet([0xff; 6], &[AD, Q], ETH_P_ARP, &arp),
        ),
        ("link/lldp", ethernet(LLDP_MAC, &[], ETH_P_LLDP, &lldp)),
        (
            "link/experimental",
            ethertype_frame(ETH_P_EXPERIMENTAL, &[0; 46]),
        ),
        ("link/802.3-llc", ethertype_frame(length, &llc)),
        // A third tag is not parsed: non-IP, however short.
        ("link/vlan3-empty", ethernet(DST_MAC, &[AD, Q], Q, &[])),
        // Only the TCI of the tag: the inner EtherType is missing.
        (
            "link/vlan1-truncated",
            cut(ethernet(DST_MAC, &[Q], ETH_P_IP, &[]), 16),
        ),
        ("link/vlan1-empty", ethernet(DST_MAC, &[], Q, &[])),
        (
            "link/vlan2-truncated",
            cut(ethernet(DST_MAC, &[AD, Q], ETH_P_IP, &[]), 20),
        ),
        ("link/ipv4-empty", ethertype_frame(ETH_P_IP, &[])),
        ("link/ipv6-empty", ethertype_frame(ETH_P_IPV6, &[])),
        (
            "link/vlan1/ipv4-empty",
            ethernet(DST_MAC, &[Q], ETH_P_IP, &[]),
        ),
        (
            "link/vlan2/ipv6-empty",
            ethernet(DST_MAC, &[AD, Q], ETH_P_IPV6, &[]),
        ),
    ]
}

fn ethertype_frame(ether_type: u16, payload: &[u8]) -> Vec<u8> {
    ethernet(DST_MAC, &[], ether_type, payload)
}

fn cut(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    assert!(
        len <= frame.len(),
        "cutting a {}-byte frame to {len}",
        frame.len()
    );
    frame.truncate(len);
    frame
}

/// Applies `f` to the frame of `spec` at the offset of the IP header.
fn with_l3(spec: &Spec, f: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut frame = spec.build();
    let at = spec.l3_offset();
    f(&mut frame[at..]);
    frame
}

/// Cases built the same way for both families (`f` is `v4` or `v6`).
fn common_cases(src: IpAddr) -> Vec<(String, Vec<u8>)> {
    let (family, ip_hlen) = match src {
        IpAddr::V4(_) => ("v4", 20),
        IpAddr::V6(_) => ("v6", IPV6_HLEN),
    };
    let dst = Spec::new(src, L4::Icmp).dst;
    let tcp = Spec::new(src, L4::Tcp(TCP_PORTS.0, TCP_PORTS.1));
    let udp = Spec::new(src, L4::Udp(UDP_PORTS.0, UDP_PORTS.1));
    let raw = |protocol: u8, bytes: Vec<u8>| Spec::new(src, L4::Raw(protocol, bytes));
    let tcp_bytes = |options: &[TcpOptionElement]| tcp_segment(src, dst, TCP_PORTS, options, &[]);
    let udp_bytes = udp_datagram(src, dst, UDP_PORTS, &[]);
    let tcp_with_offset = |data_offset: u8| {
        let mut bytes = tcp_bytes(&[]);
        bytes[12] = (data_offset << 4) | (bytes[12] & 0x0f);
        raw(IPPROTO_TCP, bytes).build()
    };
    let bad_version = if family == "v4" { 6 } else { 4 };

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("tcp", tcp.build()),
        (
            "tcp-payload",
            tcp.clone()
                .payload(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
                .build(),
        ),
        (
            "tcp-options",
            raw(IPPROTO_TCP, tcp_bytes(&tcp_options())).build(),
        ),
        // Data offset 8, but only the fixed 20 bytes present: the model reads only those.
        (
            "tcp-options-cut",
            raw(IPPROTO_TCP, tcp_bytes(&tcp_options())[..TCP_HLEN].to_vec()).build(),
        ),
        ("udp", udp.build()),
        ("udp-payload", udp.clone().payload(&[0xab; 12]).build()),
        (
            "icmp",
            Spec::new(src, L4::Icmp).payload(&[0x5a; 16]).build(),
        ),
        ("gre", raw(IPPROTO_GRE, vec![0, 0, 0x08, 0]).build()),
        // Bytes after the IP packet (Ethernet padding, trailers) are ignored.
        ("udp-trailer", udp.clone().trailer(&[0; 18]).build()),
        ("vlan1/tcp", tcp.clone().tags(&[Q]).build()),
        ("vlan1/udp", udp.clone().tags(&[Q]).build()),
        ("vlan1ad/tcp", tcp.clone().tags(&[AD]).build()),
        ("vlan2/tcp", tcp.clone().tags(&[AD, Q]).build()),
        ("vlan2/udp", udp.clone().tags(&[AD, Q]).build()),
        ("vlan2qq/tcp", tcp.clone().tags(&[Q, Q]).build()),
        ("vlan3/tcp", tcp.clone().tags(&[AD, Q, Q]).build()),
        ("vlan3qqq/udp", udp.clone().tags(&[Q, Q, Q]).build()),
        // Malformed.
        ("ip-truncated", cut(tcp.build(), ETH_HLEN + ip_hlen - 1)),
        (
            "vlan2/ip-truncated",
            cut(tcp.clone().tags(&[AD, Q]).build(), 22 + ip_hlen - 1),
        ),
        (
            "bad-version",
            with_l3(&tcp, |l3| l3[0] = (bad_version << 4) | (l3[0] & 0x0f)),
        ),
        ("version-0", with_l3(&udp, |l3| l3[0] &= 0x0f)),
        (
            "vlan1/bad-version",
            with_l3(&tcp.clone().tags(&[Q]), |l3| l3[0] = 0xf0 | (l3[0] & 0x0f)),
        ),
        ("tcp-empty", raw(IPPROTO_TCP, Vec::new()).build()),
        (
            "tcp-truncated",
            raw(IPPROTO_TCP, tcp_bytes(&[])[..TCP_HLEN - 1].to_vec()).build(),
        ),
        (
            "vlan2/tcp-truncated",
            raw(IPPROTO_TCP, tcp_bytes(&[])[..TCP_HLEN - 1].to_vec())
                .tags(&[AD, Q])
                .build(),
        ),
        ("tcp-doff-4", tcp_with_offset(4)),
        ("tcp-doff-0", tcp_with_offset(0)),
        ("udp-empty", raw(IPPROTO_UDP, Vec::new()).build()),
        (
            "udp-truncated",
            raw(IPPROTO_UDP, udp_bytes[..UDP_HLEN - 1].to_vec()).build(),
        ),
    ];
    cases
        .into_iter()
        .map(|(kind, frame)| (format!("{family}/{kind}"), frame))
        .collect()
}

fn v4_cases(src: Ipv4Addr) -> Vec<(String, Vec<u8>)> {
    let src = IpAddr::V4(src);
    let tcp = Spec::new(src, L4::Tcp(TCP_PORTS.0, TCP_PORTS.1));
    let udp = Spec::new(src, L4::Udp(UDP_PORTS.0, UDP_PORTS.1));
    let raw = |protocol: u8, bytes: Vec<u8>| Spec::new(src, L4::Raw(protocol, bytes));
    let tcp_bytes = tcp_segment(src, IpAddr::V4(DST_V4), TCP_PORTS, &[], &[]);
    // Router alert (RFC 2113): IHL 6.
    let router_alert = [0x94, 0x04, 0, 0];
    // NOPs and an end of options list: IHL 15.
    let mut max_options = [1u8; 40];
    max_options[39] = 0;
    // A non-first fragment's data: zeros, which as a TCP header would have data offset 0.
    let fragment_data = vec![0u8; 8];
    let set_ihl = |ihl: u8| move |l3: &mut [u8]| l3[0] = (l3[0] & 0xf0) | ihl;

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("options/tcp", tcp.clone().options(&router_alert).build()),
        ("options/udp", udp.clone().options(&router_alert).build()),
        ("options-max/tcp", tcp.clone().options(&max_options).build()),
        (
            "options-max/icmp",
            Spec::new(src, L4::Icmp).options(&max_options).build(),
        ),
        (
            "vlan2/options/tcp",
            tcp.clone().options(&router_alert).tags(&[AD, Q]).build(),
        ),
        (
            "frag-first/tcp",
            tcp.clone().fragment(0, true).payload(&[0x11; 24]).build(),
        ),
        (
            "frag-first/udp",
            udp.clone().fragment(0, true).payload(&[0x22; 24]).build(),
        ),
        (
            "frag-middle/tcp",
            raw(IPPROTO_TCP, fragment_data.clone())
                .fragment(185, true)
                .build(),
        ),
        (
            "frag-last/udp",
            raw(IPPROTO_UDP, vec![0; 4]).fragment(370, false).build(),
        ),
        (
            "frag-middle/options/tcp",
            raw(IPPROTO_TCP, fragment_data.clone())
                .options(&router_alert)
                .fragment(1, true)
                .build(),
        ),
        (
            "vlan2/frag-middle/tcp",
            raw(IPPROTO_TCP, fragment_data)
                .tags(&[AD, Q])
                .fragment(185, true)
                .build(),
        ),
        // The total length is not compared with the frame, only with the header length.
        ("total-len-long/tcp", tcp.clone().total_len(1500).build()),
        (
            "total-len-header-only/tcp",
            tcp.clone().total_len(20).build(),
        ),
        // Malformed.
        (
            "frag-first/tcp-truncated",
            raw(IPPROTO_TCP, tcp_bytes[..12].to_vec())
                .fragment(0, true)
                .build(),
        ),
        ("ihl-4", with_l3(&tcp, set_ihl(4))),
        ("ihl-0", with_l3(&tcp, set_ihl(0))),
        // IHL 15 (60 bytes) in a 28-byte packet whose total length claims 60.
        (
            "ihl-past-end",
            with_l3(&Spec::new(src, L4::Icmp).total_len(60), set_ihl(15)),
        ),
        // IHL 6 (24 bytes) when the frame ends right after 20.
        (
            "ihl-past-end-by-4",
            with_l3(&raw(IPPROTO_NONE, Vec::new()).total_len(24), set_ihl(6)),
        ),
        ("total-len-19", tcp.clone().total_len(19).build()),
        ("total-len-0", tcp.clone().total_len(0).build()),
        (
            "options/total-len-20",
            tcp.clone().options(&router_alert).total_len(20).build(),
        ),
    ];
    let mut out = common_cases(src);
    out.extend(
        cases
            .into_iter()
            .map(|(kind, frame)| (format!("v4/{kind}"), frame)),
    );
    out
}

fn v6_cases(src: Ipv6Addr) -> Vec<(String, Vec<u8>)> {
    use Ext::*;
    let src = IpAddr::V6(src);
    let dst = IpAddr::V6(DST_V6);
    let tcp = Spec::new(src, L4::Tcp(TCP_PORTS.0, TCP_PORTS.1));
    let udp = Spec::new(src, L4::Udp(UDP_PORTS.0, UDP_PORTS.1));
    let raw = |protocol: u8, bytes: Vec<u8>| Spec::new(src, L4::Raw(protocol, bytes));
    let tcp_bytes = tcp_segment(src, dst, TCP_PORTS, &[], &[]);
    let first = Fragment {
        offset: 0,
        more: true,
    };
    let middle = Fragment {
        offset: 185,
        more: true,
    };
    let last = Fragment {
        offset: 370,
        more: false,
    };
    let fragment_data = vec![0u8; 8];
    let chain8 = [
        HopByHop(0),
        DestOpts(0),
        Routing(0),
        first,
        DestOpts(1),
        DestOpts(0),
        DestOpts(0),
        DestOpts(2),
    ];
    let mut chain9 = chain8.to_vec();
    chain9.push(DestOpts(0));
    let hop_ext = |len: u8| HopByHop(len).to_bytes(IPPROTO_TCP);
    let ah = IpAuthHeader::new(IpNumber(IPPROTO_TCP), 0x100, 1, &[0; 12])
        .expect("12-byte ICV")
        .to_bytes()
        .to_vec();

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("hop/tcp", tcp.clone().exts(&[HopByHop(0)]).build()),
        ("hop-long/tcp", tcp.clone().exts(&[HopByHop(3)]).build()),
        ("routing/tcp", tcp.clone().exts(&[Routing(2)]).build()),
        ("dest/udp", udp.clone().exts(&[DestOpts(0)]).build()),
        (
            "hop/no-next",
            raw(IPPROTO_NONE, Vec::new()).exts(&[HopByHop(0)]).build(),
        ),
        (
            "hop+routing+dest/tcp",
            tcp.clone()
                .exts(&[HopByHop(0), Routing(1), DestOpts(0)])
                .build(),
        ),
        (
            "hop+dest+routing+dest/udp",
            udp.clone()
                .exts(&[HopByHop(1), DestOpts(0), Routing(0), DestOpts(3)])
                .build(),
        ),
        (
            "vlan2/hop+routing+dest/tcp",
            tcp.clone()
                .exts(&[HopByHop(0), Routing(1), DestOpts(0)])
                .tags(&[AD, Q])
                .build(),
        ),
        (
            "frag-first/tcp",
            tcp.clone().exts(&[first]).payload(&[0x11; 24]).build(),
        ),
        (
            "frag-first/udp",
            udp.clone().exts(&[first]).payload(&[0x22; 24]).build(),
        ),
        (
            "hop+frag-first+dest/tcp",
            tcp.clone().exts(&[HopByHop(0), first, DestOpts(0)]).build(),
        ),
        (
            "frag-middle/tcp",
            raw(IPPROTO_TCP, fragment_data.clone())
                .exts(&[middle])
                .build(),
        ),
        (
            "frag-last/udp",
            raw(IPPROTO_UDP, vec![0; 4]).exts(&[last]).build(),
        ),
        (
            "hop+frag-middle/tcp",
            raw(IPPROTO_TCP, fragment_data.clone())
                .exts(&[HopByHop(0), middle])
                .build(),
        ),
        // After a non-first fragment header, even an extension header number is the protocol.
        (
            "frag-middle/next-dest",
            raw(IPPROTO_DSTOPTS, fragment_data.clone())
                .exts(&[middle])
                .build(),
        ),
        ("ext8/tcp", tcp.clone().exts(&chain8).build()),
        // AH is not an extension header the firewall skips: it ends the walk.
        (
            "ah/tcp",
            raw(IPPROTO_AH, [ah, tcp_bytes.clone()].concat()).build(),
        ),
        // Hop-by-hop of 2048 bytes: TCP at 2088; only extension headers must start by 2048.
        ("hop-2048/tcp", tcp.clone().exts(&[HopByHop(255)]).build()),
        // 40 + 2008: a destination options header starting at exactly 2048.
        (
            "ext-at-2048/tcp",
            tcp.clone().exts(&[HopByHop(250), DestOpts(0)]).build(),
        ),
        // Malformed.
        (
            "ext-past-2048/tcp",
            tcp.clone().exts(&[HopByHop(251), DestOpts(0)]).build(),
        ),
        ("ext9/tcp", tcp.clone().exts(&chain9).build()),
        (
            "frag-first/tcp-truncated",
            raw(IPPROTO_TCP, tcp_bytes[..12].to_vec())
                .exts(&[first])
                .build(),
        ),
        (
            "hop/tcp-truncated",
            raw(IPPROTO_TCP, tcp_bytes[..TCP_HLEN - 1].to_vec())
                .exts(&[HopByHop(0)])
                .build(),
        ),
        ("hop-empty", raw(IPPROTO_HOPOPTS, Vec::new()).build()),
        (
            "hop-truncated",
            raw(IPPROTO_HOPOPTS, hop_ext(0)[..4].to_vec()).build(),
        ),
        // Hop-by-hop claiming 16 bytes, 8 present.
        (
            "hop-past-end",
            raw(IPPROTO_HOPOPTS, hop_ext(1)[..8].to_vec()).build(),
        ),
        (
            "routing-past-end",
            raw(
                IPPROTO_ROUTING,
                Routing(3).to_bytes(IPPROTO_TCP)[..24].to_vec(),
            )
            .build(),
        ),
        (
            "frag-truncated",
            raw(IPPROTO_FRAGMENT, first.to_bytes(IPPROTO_TCP)[..7].to_vec()).build(),
        ),
        (
            "hop+dest-past-end",
            raw(
                IPPROTO_HOPOPTS,
                [
                    HopByHop(0).to_bytes(IPPROTO_DSTOPTS),
                    DestOpts(2).to_bytes(IPPROTO_TCP)[..16].to_vec(),
                ]
                .concat(),
            )
            .build(),
        ),
    ];
    let mut out = common_cases(src);
    out.extend(
        cases
            .into_iter()
            .map(|(kind, frame)| (format!("v6/{kind}"), frame)),
    );
    out
}

// ----------------------------------------------------------------------------------------------
// Random frames.

fn random_frame(rng: &mut SmallRng, near: &[IpNet]) -> Vec<u8> {
    let tags: Vec<u16> = (0..rng.random_range(0..=2))
        .map(|_| if rng.random_bool(0.5) { Q } else { AD })
        .collect();
    let mut frame = if rng.random_ratio(3, 100) {
        let ether_type = loop {
            let candidate: u16 = rng.random();
            if ![ETH_P_IP, ETH_P_IPV6, Q, AD].contains(&candidate) {
                break candidate;
            }
        };
        let payload = random_bytes(rng, 0..=64);
        ethernet(DST_MAC, &tags, ether_type, &payload)
    } else {
        random_ip_spec(rng, near).tags(&tags).build()
    };
    if rng.random_ratio(5, 100) {
        let at = rng.random_range(0..frame.len().min(80));
        frame[at] ^= rng.random_range(1..=255u8);
    }
    if rng.random_ratio(6, 100) && frame.len() > ETH_HLEN {
        let len = rng.random_range(ETH_HLEN..frame.len());
        frame.truncate(len);
    }
    frame
}

fn random_bytes(rng: &mut SmallRng, len: std::ops::RangeInclusive<usize>) -> Vec<u8> {
    let mut bytes = vec![0; rng.random_range(len)];
    rng.fill(bytes.as_mut_slice());
    bytes
}

fn random_source(rng: &mut SmallRng, near: &[IpNet]) -> IpAddr {
    if let Some(net) = near.choose(rng).filter(|_| rng.random_ratio(2, 3)) {
        match net {
            IpNet::V4(net) => {
                let host = u32::from(net.hostmask()) & rng.random::<u32>();
                IpAddr::V4(Ipv4Addr::from(u32::from(net.network()) | host))
            }
            IpNet::V6(net) => {
                let host = u128::from(net.hostmask()) & rng.random::<u128>();
                IpAddr::V6(Ipv6Addr::from(u128::from(net.network()) | host))
            }
        }
    } else if rng.random_bool(0.5) {
        IpAddr::V4(Ipv4Addr::from(rng.random::<u32>()))
    } else {
        IpAddr::V6(Ipv6Addr::from(rng.random::<u128>()))
    }
}

fn random_ip_spec(rng: &mut SmallRng, near: &[IpNet]) -> Spec {
    let src = random_source(rng, near);
    let l4 = match rng.random_range(0..4) {
        0 => L4::Tcp(rng.random(), rng.random()),
        1 => L4::Udp(rng.random(), rng.random()),
        2 => L4::Icmp,
        _ => {
            let protocol = loop {
                let candidate: u8 = rng.random();
                let skipped = [
                    IPPROTO_HOPOPTS,
                    IPPROTO_ROUTING,
                    IPPROTO_FRAGMENT,
                    IPPROTO_DSTOPTS,
                ];
                if ![IPPROTO_TCP, IPPROTO_UDP].contains(&candidate) && !skipped.contains(&candidate)
                {
                    break candidate;
                }
            };
            L4::Raw(protocol, Vec::new())
        }
    };
    let mut spec = Spec::new(src, l4).payload(&random_bytes(rng, 0..=64));
    match src {
        IpAddr::V4(_) => {
            if rng.random_ratio(1, 4) {
                let words = rng.random_range(1..=10);
                spec.v4_options = vec![1; 4 * words]; // NOPs
            }
            if rng.random_ratio(1, 8) {
                spec.v4_fragment = (rng.random_range(1..=0x1fff), rng.random_bool(0.5));
            } else if rng.random_ratio(1, 10) {
                spec.v4_fragment = (0, true);
            }
        }
        IpAddr::V6(_) => {
            spec.v6_exts = (0..rng.random_range(0..=3))
                .map(|_| match rng.random_range(0..4) {
                    0 => Ext::HopByHop(rng.random_range(0..=3)),
                    1 => Ext::Routing(rng.random_range(0..=3)),
                    2 => Ext::DestOpts(rng.random_range(0..=3)),
                    _ => Ext::Fragment {
                        offset: if rng.random_bool(0.5) {
                            0
                        } else {
                            rng.random_range(1..=0x1fff)
                        },
                        more: rng.random_bool(0.5),
                    },
                })
                .collect();
        }
    }
    spec
}

/// The first 160 bytes of `frame` in hex (what the parser reads), and how many more there are.
pub fn hex(frame: &[u8]) -> String {
    let shown: String = frame.iter().take(160).map(|b| format!("{b:02x}")).collect();
    match frame.len().checked_sub(160) {
        Some(more) if more > 0 => format!("{shown}… (+{more} bytes)"),
        _ => shown,
    }
}

#[cfg(test)]
mod hex_tests {
    use super::hex;

    #[test]
    fn hex_shows_short_frames_whole_and_cuts_long_ones() {
        assert_eq!(hex(&[0x45, 0x00, 0xff]), "4500ff");
        let long = vec![0u8; 170];
        assert_eq!(hex(&long), format!("{}… (+10 bytes)", "00".repeat(160)));
    }
}
