//! A seeded generator of hostile frames for the differential suite (issue #7): everything
//! [`crate::packets::random_frames`] makes (VLAN/QinQ, IPv4 options and fragments, IPv6 extension
//! headers, TCP/UDP/ICMP), plus traffic aimed at the rate-limit rules with every TCP flag
//! combination, IPv6 extension chains around and past the parser's bound, jumbo frames up to
//! what `BPF_PROG_TEST_RUN` takes, frames shorter than an Ethernet header, and mutations of all
//! of them (bytes flipped, tag types and header fields overwritten, cuts at random lengths).
//!
//! The same seed gives the same frames, so a failure is replayed with the seed it prints.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use firewall_common::packet::{
    ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP, MAX_IPV6_EXT_HEADERS,
};
use ipnet::IpNet;
use rand::{Rng as _, RngCore as _, SeedableRng as _, rngs::SmallRng};

use crate::packets;

/// The largest frame `BPF_PROG_TEST_RUN` copies into one page for a program without
/// multi-buffer support: a 4 KiB page less the XDP headroom (256) and the tail room kept for
/// `skb_shared_info` (320 on x86-64). Longer frames are what a jumbo MTU would deliver.
pub const MAX_LINEAR_FRAME: usize = 4096 - 256 - 320;

/// What a generated frame was made as, for failure messages and coverage checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// From [`packets::random_frames`].
    Mixed,
    /// TCP or UDP from a rule-traffic source to a rule port; TCP with random flags.
    RuleTraffic,
    /// IPv6 with a chain of extension headers around [`MAX_IPV6_EXT_HEADERS`].
    LongV6Chain,
    /// A frame longer than usual, up to and past [`MAX_LINEAR_FRAME`].
    Jumbo,
    /// Shorter than an Ethernet header (the kernel refuses these).
    Runt,
}

/// One generated frame.
#[derive(Clone, Debug)]
pub struct Frame {
    pub kind: Kind,
    /// Whether a mutation was applied after building.
    pub mutated: bool,
    pub bytes: Vec<u8>,
}

/// The generator: a seed, prefixes to draw sources near, and the sources and ports the
/// rate-limit rules of the policy under test care about.
pub struct Generator {
    rng: SmallRng,
    near: Vec<IpNet>,
    rule_sources: Vec<IpAddr>,
    rule_ports: Vec<u16>,
}

const MAC_DST: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_SRC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const DST_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
const DST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

impl Generator {
    pub fn new(seed: u64, near: &[IpNet], rule_sources: &[IpAddr], rule_ports: &[u16]) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed),
            near: near.to_vec(),
            rule_sources: rule_sources.to_vec(),
            rule_ports: rule_ports.to_vec(),
        }
    }

    /// The next frame.
    pub fn next_frame(&mut self) -> Frame {
        let roll = self.rng.random_range(0..100);
        let (kind, mut bytes) = match roll {
            0..=39 => (Kind::Mixed, self.mixed()),
            40..=74 => (Kind::RuleTraffic, self.rule_traffic()),
            75..=89 => (Kind::LongV6Chain, self.long_v6_chain()),
            90..=96 => (Kind::Jumbo, self.jumbo()),
            _ => (Kind::Runt, self.runt()),
        };
        let mutated = kind != Kind::Runt && self.rng.random_range(0..100) < 30;
        if mutated {
            self.mutate(&mut bytes);
        }
        Frame {
            kind,
            mutated,
            bytes,
        }
    }

    fn mixed(&mut self) -> Vec<u8> {
        let seed = self.rng.next_u64();
        packets::random_frames(seed, 1, &self.near)
            .pop()
            .expect("one frame asked, one made")
    }

    fn source(&mut self) -> IpAddr {
        self.rule_sources[self.rng.random_range(0..self.rule_sources.len())]
    }

    fn rule_traffic(&mut self) -> Vec<u8> {
        let src = self.source();
        let port = if self.rng.random_range(0..4) == 0 {
            self.rng.random()
        } else {
            self.rule_ports[self.rng.random_range(0..self.rule_ports.len())]
        };
        let payload = vec![0x5a; self.rng.random_range(0..300)];
        let tags = self.tags();
        let l4 = if self.rng.random_range(0..3) == 0 {
            udp(port, &payload)
        } else {
            // Every flag combination, CWR and ECE included.
            tcp(port, self.rng.random(), &payload)
        };
        let (protocol, segment) = l4;
        ip_frame(&tags, src, protocol, &[], &segment)
    }

    fn long_v6_chain(&mut self) -> Vec<u8> {
        let src = match self.source() {
            IpAddr::V6(v6) => v6,
            IpAddr::V4(_) => Ipv6Addr::new(0x2001, 0xdb8, 0xa, 1, 0, 0, 0, 1),
        };
        // Around the bound: from well inside it to a few headers past it.
        let count = self
            .rng
            .random_range(MAX_IPV6_EXT_HEADERS - 3..=MAX_IPV6_EXT_HEADERS + 4);
        let mut exts = Vec::with_capacity(count);
        for _ in 0..count {
            let number = [
                IPPROTO_HOPOPTS,
                IPPROTO_ROUTING,
                IPPROTO_DSTOPTS,
                IPPROTO_FRAGMENT,
            ][self.rng.random_range(0..4)];
            // Fragments: mostly first fragments (offset 0), sometimes a later one.
            let len_or_offset = if number == IPPROTO_FRAGMENT {
                if self.rng.random_range(0..5) == 0 {
                    self.rng.random_range(1..8000)
                } else {
                    0
                }
            } else {
                self.rng.random_range(0..3)
            };
            exts.push((number, len_or_offset));
        }
        let port = self.rule_ports[self.rng.random_range(0..self.rule_ports.len())];
        let (protocol, segment) = if self.rng.random() {
            udp(port, &[1, 2, 3])
        } else {
            tcp(port, self.rng.random(), &[])
        };
        let tags = self.tags();
        ip_frame(&tags, IpAddr::V6(src), protocol, &exts, &segment)
    }

    fn jumbo(&mut self) -> Vec<u8> {
        let src = self.source();
        let port = self.rule_ports[self.rng.random_range(0..self.rule_ports.len())];
        // Mostly frames the kernel takes whole, some that only a jumbo MTU would carry.
        let total = if self.rng.random_range(0..4) == 0 {
            self.rng.random_range(MAX_LINEAR_FRAME + 1..=9_018)
        } else {
            self.rng.random_range(1_515..=MAX_LINEAR_FRAME)
        };
        let overhead = match src {
            IpAddr::V4(_) => ETH_HLEN + 20 + 8,
            IpAddr::V6(_) => ETH_HLEN + 40 + 8,
        };
        let payload = vec![0xa5; total.saturating_sub(overhead)];
        let (protocol, segment) = udp(port, &payload);
        ip_frame(&[], src, protocol, &[], &segment)
    }

    fn runt(&mut self) -> Vec<u8> {
        let len = self.rng.random_range(0..ETH_HLEN);
        (0..len).map(|_| self.rng.random()).collect()
    }

    /// 0-2 VLAN tags, 802.1Q or 802.1ad each.
    fn tags(&mut self) -> Vec<u16> {
        (0..self.rng.random_range(0..3))
            .map(|_| {
                if self.rng.random() {
                    ETH_P_8021Q
                } else {
                    ETH_P_8021AD
                }
            })
            .collect()
    }

    /// One hostile change: flipped bytes, a tag or EtherType swapped, an IP header field
    /// overwritten, or a cut at a random length.
    fn mutate(&mut self, frame: &mut Vec<u8>) {
        let len = frame.len();
        match self.rng.random_range(0..6) {
            0 if len > 0 => {
                for _ in 0..self.rng.random_range(1..=4) {
                    let at = self.rng.random_range(0..len.min(128));
                    frame[at] ^= 1 << self.rng.random_range(0..8);
                }
            }
            1 if len >= ETH_HLEN => {
                // The EtherType (or the first tag's type) becomes another L3 or tag type.
                let ether_type = [ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD, 0x88cc]
                    [self.rng.random_range(0..5)];
                frame[12..14].copy_from_slice(&ether_type.to_be_bytes());
            }
            2 => {
                // Version/IHL, total or payload length, or fragment field of the IP header
                // (wherever it starts after 0-2 tags).
                let l3 = ETH_HLEN + 4 * self.rng.random_range(0..3);
                let field = l3 + [0usize, 2, 3, 4, 5, 6, 7][self.rng.random_range(0..7)];
                if field < len {
                    frame[field] = self.rng.random();
                }
            }
            3 if len > ETH_HLEN => {
                // A byte of the IP header or what follows it: IPv4 options, IPv6 next header.
                let at = self.rng.random_range(ETH_HLEN..len.min(ETH_HLEN + 80));
                frame[at] = self.rng.random();
            }
            _ => {
                let cut = self.rng.random_range(ETH_HLEN.min(len)..=len);
                frame.truncate(cut);
            }
        }
    }
}

/// A UDP datagram (checksum zero, legal for IPv4 and irrelevant to the firewall).
fn udp(port: u16, payload: &[u8]) -> (u8, Vec<u8>) {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&40_000u16.to_be_bytes());
    out.extend_from_slice(&port.to_be_bytes());
    let len = u16::try_from(8 + payload.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(payload);
    (IPPROTO_UDP, out)
}

/// A TCP segment with the given flags byte.
fn tcp(port: u16, flags: u8, payload: &[u8]) -> (u8, Vec<u8>) {
    let mut out = Vec::with_capacity(20 + payload.len());
    out.extend_from_slice(&40_000u16.to_be_bytes());
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.push(5 << 4);
    out.push(flags);
    out.extend_from_slice(&64_240u16.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
    (IPPROTO_TCP, out)
}

/// Ethernet (+ tags) + IPv4 or IPv6 (+ extension headers `(number, len or fragment offset)`)
/// + the transport bytes.
fn ip_frame(
    tags: &[u16],
    src: IpAddr,
    protocol: u8,
    exts: &[(u8, u16)],
    segment: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(80 + segment.len());
    out.extend_from_slice(&MAC_DST);
    out.extend_from_slice(&MAC_SRC);
    let ether_type = match src {
        IpAddr::V4(_) => ETH_P_IP,
        IpAddr::V6(_) => ETH_P_IPV6,
    };
    // The type field chain: the first tag's type (or the EtherType), then per tag its TCI and
    // the next type.
    let first = tags.first().copied().unwrap_or(ether_type);
    out.extend_from_slice(&first.to_be_bytes());
    for i in 0..tags.len() {
        let next = tags.get(i + 1).copied().unwrap_or(ether_type);
        out.extend_from_slice(&(100 + i as u16).to_be_bytes());
        out.extend_from_slice(&next.to_be_bytes());
    }
    match src {
        IpAddr::V4(src) => {
            let total = u16::try_from(20 + segment.len()).unwrap_or(u16::MAX);
            let mut header = [0u8; 20];
            header[0] = 0x45;
            header[2..4].copy_from_slice(&total.to_be_bytes());
            header[8] = 64;
            header[9] = protocol;
            header[12..16].copy_from_slice(&src.octets());
            header[16..20].copy_from_slice(&DST_V4.octets());
            let checksum = ipv4_checksum(&header);
            header[10..12].copy_from_slice(&checksum.to_be_bytes());
            out.extend_from_slice(&header);
        }
        IpAddr::V6(src) => {
            let mut chain = Vec::new();
            for (i, (_, len_or_offset)) in exts.iter().enumerate() {
                let next = exts.get(i + 1).map_or(protocol, |(number, _)| *number);
                let (number, _) = exts[i];
                if number == IPPROTO_FRAGMENT {
                    chain.push(next);
                    chain.push(0);
                    chain.extend_from_slice(&(len_or_offset << 3).to_be_bytes());
                    chain.extend_from_slice(&0x0bad_cafeu32.to_be_bytes());
                } else {
                    let units = u8::try_from(*len_or_offset).unwrap_or(0);
                    chain.push(next);
                    chain.push(units);
                    // PadN filling the rest of the header: 6 + 8 * units bytes.
                    let data = 6 + 8 * usize::from(units);
                    chain.push(1);
                    chain.push(u8::try_from(data - 2).unwrap_or(0));
                    chain.resize(chain.len() + data - 2, 0);
                }
            }
            let first = exts.first().map_or(protocol, |(number, _)| *number);
            let payload_len = u16::try_from(chain.len() + segment.len()).unwrap_or(u16::MAX);
            let mut header = [0u8; 40];
            header[0] = 0x60;
            header[4..6].copy_from_slice(&payload_len.to_be_bytes());
            header[6] = first;
            header[7] = 64;
            header[8..24].copy_from_slice(&src.octets());
            header[24..40].copy_from_slice(&DST_V6.octets());
            out.extend_from_slice(&header);
            out.extend_from_slice(&chain);
        }
    }
    out.extend_from_slice(segment);
    out
}

fn ipv4_checksum(header: &[u8; 20]) -> u16 {
    let mut sum: u32 = header
        .chunks_exact(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use firewall_common::model::{self, Parsed};

    fn generator(seed: u64) -> Generator {
        Generator::new(
            seed,
            &["192.0.2.0/24".parse().unwrap()],
            &[
                "192.0.2.1".parse().unwrap(),
                "2001:db8:a:1::1".parse().unwrap(),
            ],
            &[443, 53],
        )
    }

    #[test]
    fn same_seed_same_frames() {
        let (mut a, mut b) = (generator(5), generator(5));
        for _ in 0..2_000 {
            assert_eq!(a.next_frame().bytes, b.next_frame().bytes);
        }
    }

    #[test]
    fn built_frames_parse_as_meant() {
        let mut tcp_flags = std::collections::HashSet::new();
        let (mut past_bound, mut within_bound) = (0, 0);
        let mut generator = generator(9);
        for _ in 0..20_000 {
            let frame = generator.next_frame();
            if frame.mutated {
                continue;
            }
            match (frame.kind, model::parse(&frame.bytes)) {
                (Kind::RuleTraffic, Parsed::Ip(packet)) => {
                    if let Some(flags) = packet.tcp_flags {
                        tcp_flags.insert(flags);
                    }
                }
                (Kind::RuleTraffic, other) => panic!("rule traffic parsed as {other:?}"),
                (Kind::LongV6Chain, Parsed::Ip(_)) => within_bound += 1,
                (Kind::LongV6Chain, Parsed::Malformed) => past_bound += 1,
                (Kind::Jumbo, parsed) => {
                    assert!(matches!(parsed, Parsed::Ip(_)), "jumbo: {parsed:?}")
                }
                _ => {}
            }
        }
        assert!(
            past_bound > 100 && within_bound > 100,
            "{past_bound} past the bound, {within_bound} within"
        );
        assert_eq!(tcp_flags.len(), 256, "every TCP flag combination");
    }
}
