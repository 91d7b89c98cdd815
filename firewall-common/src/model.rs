//! The reference model: what the XDP program must decide for a frame, written as plain, obviously
//! correct Rust over byte slices and lists of prefixes (no hashing, no summaries).
//!
//! Kernel verdict tests run the loaded program on crafted frames and compare every result with
//! [`verdict`]. The rules, in order:
//!
//! 1. Ethernet, then up to [`MAX_VLAN_TAGS`] 802.1Q/802.1ad tags. A truncated tag is malformed;
//!    a further tag or any EtherType other than IPv4/IPv6 passes as non-IP.
//! 2. IPv4: 20 bytes present, version 4, IHL >= 5, the IHL*4 header present, total length >= the
//!    header. Non-first fragments carry no transport header.
//! 3. IPv6: 40 bytes present, version 6; hop-by-hop, routing, destination-options and fragment
//!    headers are skipped (at most [`MAX_IPV6_EXT_HEADERS`], each wholly present, starting within
//!    [`MAX_IPV6_CHAIN`] bytes). A non-first fragment ends the walk and carries no transport header.
//! 4. TCP needs its 20-byte header with data offset >= 5, UDP its 8 bytes; otherwise malformed.
//! 5. Malformed frames get the configured action. Then: source allowlisted → pass; blocklisted →
//!    drop; otherwise pass.

use std::{net::IpAddr, vec::Vec};

use ipnet::IpNet;

use crate::{
    packet::*,
    stats::{Action, Reason, Verdict},
};

/// The parts of a policy that decide a verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelPolicy {
    /// Allowlisted prefixes.
    pub allow: Vec<IpNet>,
    /// Blocklisted prefixes.
    pub block: Vec<IpNet>,
    /// Action for malformed IP packets.
    pub malformed: Action,
}

impl Default for ModelPolicy {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            block: Vec::new(),
            malformed: Action::Drop,
        }
    }
}

/// An IP packet as far as the firewall reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpPacket {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Transport protocol (after IPv6 extension headers).
    pub protocol: u8,
    /// Source and destination port of TCP/UDP, when the transport header is in this packet.
    pub ports: Option<(u16, u16)>,
}

/// What a frame is, to the firewall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not IPv4 or IPv6.
    NonIp,
    /// An IP packet (or VLAN framing) the parser rejects.
    Malformed,
    /// A well-formed IP packet.
    Ip(IpPacket),
}

fn be16(frame: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]))
}

/// Parses a frame the way the XDP program must.
pub fn parse(frame: &[u8]) -> Parsed {
    let Some(mut ethertype) = be16(frame, 12) else {
        return Parsed::Malformed;
    };
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        // Tag control information (2 bytes), then the inner EtherType.
        let Some(inner) = be16(frame, offset + 2) else {
            return Parsed::Malformed;
        };
        ethertype = inner;
        offset += VLAN_HLEN;
    }
    let l3 = &frame[offset..];
    match ethertype {
        ETH_P_IP => parse_ipv4(l3),
        ETH_P_IPV6 => parse_ipv6(l3),
        _ => Parsed::NonIp,
    }
}

fn parse_ipv4(l3: &[u8]) -> Parsed {
    if l3.len() < 20 {
        return Parsed::Malformed;
    }
    let version = l3[0] >> 4;
    let header_len = usize::from(l3[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([l3[2], l3[3]]));
    if version != 4 || header_len < 20 || l3.len() < header_len || total_len < header_len {
        return Parsed::Malformed;
    }
    let fragment_offset = u16::from_be_bytes([l3[6], l3[7]]) & 0x1fff;
    let protocol = l3[9];
    let src = IpAddr::from([l3[12], l3[13], l3[14], l3[15]]);
    let dst = IpAddr::from([l3[16], l3[17], l3[18], l3[19]]);
    transport(src, dst, protocol, fragment_offset == 0, &l3[header_len..])
}

fn parse_ipv6(l3: &[u8]) -> Parsed {
    if l3.len() < IPV6_HLEN || l3[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&l3[8..24]);
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&l3[24..40]);
    let (src, dst) = (IpAddr::from(src), IpAddr::from(dst));

    let mut next = l3[6];
    let mut offset = IPV6_HLEN;
    let mut first_fragment = true;
    let mut headers = 0;
    loop {
        let is_extension = matches!(
            next,
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT
        );
        if !is_extension {
            break;
        }
        if headers == MAX_IPV6_EXT_HEADERS || offset > MAX_IPV6_CHAIN || l3.len() < offset + 8 {
            return Parsed::Malformed;
        }
        headers += 1;
        let header = &l3[offset..offset + 8];
        if next == IPPROTO_FRAGMENT {
            next = header[0];
            offset += 8;
            if u16::from_be_bytes([header[2], header[3]]) >> 3 != 0 {
                // What follows a non-first fragment header is payload, not headers.
                first_fragment = false;
                break;
            }
        } else {
            let len = (usize::from(header[1]) + 1) * 8;
            if l3.len() < offset + len {
                return Parsed::Malformed;
            }
            next = header[0];
            offset += len;
        }
    }
    transport(src, dst, next, first_fragment, &l3[offset..])
}

fn transport(src: IpAddr, dst: IpAddr, protocol: u8, has_l4: bool, l4: &[u8]) -> Parsed {
    let ports = if !has_l4 {
        None
    } else {
        match protocol {
            IPPROTO_TCP => {
                if l4.len() < TCP_HLEN || l4[12] >> 4 < 5 {
                    return Parsed::Malformed;
                }
                Some((be16(l4, 0).unwrap_or(0), be16(l4, 2).unwrap_or(0)))
            }
            IPPROTO_UDP => {
                if l4.len() < UDP_HLEN {
                    return Parsed::Malformed;
                }
                Some((be16(l4, 0).unwrap_or(0), be16(l4, 2).unwrap_or(0)))
            }
            _ => None,
        }
    };
    Parsed::Ip(IpPacket {
        src,
        dst,
        protocol,
        ports,
    })
}

/// The verdict for a parsed packet.
pub fn decide(policy: &ModelPolicy, parsed: &Parsed) -> Verdict {
    match parsed {
        Parsed::NonIp => Verdict::new(Action::Pass, Reason::NonIp),
        Parsed::Malformed => Verdict::new(policy.malformed, Reason::Malformed),
        Parsed::Ip(packet) => {
            if policy.allow.iter().any(|net| net.contains(&packet.src)) {
                Verdict::new(Action::Pass, Reason::Allowlist)
            } else if policy.block.iter().any(|net| net.contains(&packet.src)) {
                Verdict::new(Action::Drop, Reason::Blocklist)
            } else {
                Verdict::new(Action::Pass, Reason::Default)
            }
        }
    }
}

/// The verdict the XDP program must reach for `frame`.
pub fn verdict(policy: &ModelPolicy, frame: &[u8]) -> Verdict {
    decide(policy, &parse(frame))
}
