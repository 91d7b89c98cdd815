//! Packet parsing with explicit bounds checks: Ethernet, VLAN tags, IPv4/IPv6 and the transport
//! header. Mirrors `firewall_common::model::parse`, bound for bound.

use aya_ebpf::programs::XdpContext;
use firewall_common::packet::*;

/// The frame is not a well-formed IP packet: the policy's `malformed` action applies.
pub struct Malformed;

/// Source address of an IP packet, in host order (IPv6 as two halves).
#[derive(Clone, Copy)]
pub enum Source {
    V4(u32),
    V6(u64, u64),
}

/// What the firewall needs from a well-formed IP packet.
pub struct Packet {
    pub source: Source,
    /// Transport protocol (after IPv6 extension headers).
    pub protocol: u8,
    /// TCP/UDP destination port, when the transport header is in this packet.
    pub dst_port: Option<u16>,
    /// TCP flags, 0 when not TCP or no TCP header.
    pub tcp_flags: u8,
}

/// What the transport header says, once checked.
struct Transport {
    dst_port: Option<u16>,
    tcp_flags: u8,
}

const NO_TRANSPORT: Transport = Transport {
    dst_port: None,
    tcp_flags: 0,
};

/// `N` bytes of the frame at a checked offset. Fields are read straight from packet memory, one
/// at a time, rather than copying the whole header onto the 512-byte stack first.
#[derive(Clone, Copy)]
struct Header<const N: usize> {
    ptr: *const u8,
}

impl<const N: usize> Header<N> {
    /// The `N` bytes at `offset`, if they all lie inside the frame.
    #[inline(always)]
    fn at(ctx: &XdpContext, offset: usize) -> Result<Self, Malformed> {
        let start = ctx.data();
        if start + offset + N > ctx.data_end() {
            return Err(Malformed);
        }
        Ok(Self {
            ptr: (start + offset) as *const u8,
        })
    }

    #[inline(always)]
    fn u8(self, index: usize) -> u8 {
        // Callers pass constant indices below N; this keeps an out-of-range index harmless
        // (and the verifier would reject it anyway).
        let index = if index < N { index } else { N - 1 };
        // SAFETY: `at` checked that ptr..ptr+N lies between data and data_end, and index < N.
        unsafe { *self.ptr.add(index) }
    }

    #[inline(always)]
    fn be16(self, index: usize) -> u16 {
        u16::from_be_bytes([self.u8(index), self.u8(index + 1)])
    }

    #[inline(always)]
    fn be32(self, index: usize) -> u32 {
        u32::from_be_bytes([
            self.u8(index),
            self.u8(index + 1),
            self.u8(index + 2),
            self.u8(index + 3),
        ])
    }

    #[inline(always)]
    fn be64(self, index: usize) -> u64 {
        (u64::from(self.be32(index)) << 32) | u64::from(self.be32(index + 4))
    }
}

#[inline(always)]
fn be16_at(ctx: &XdpContext, offset: usize) -> Result<u16, Malformed> {
    Ok(Header::<2>::at(ctx, offset)?.be16(0))
}

/// `Ok(None)` for non-IP frames, `Ok(Some(_))` for well-formed IP packets.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Option<Packet>, Malformed> {
    let mut ethertype = be16_at(ctx, 12)?;
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = be16_at(ctx, offset + 2)?;
        offset += VLAN_HLEN;
    }
    match ethertype {
        ETH_P_IP => parse_ipv4(ctx, offset).map(Some),
        ETH_P_IPV6 => parse_ipv6(ctx, offset).map(Some),
        _ => Ok(None),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3: usize) -> Result<Packet, Malformed> {
    let header = Header::<20>::at(ctx, l3)?;
    let first = header.u8(0);
    let header_len = usize::from(first & 0x0f) * 4;
    let total_len = usize::from(header.be16(2));
    if first >> 4 != 4 || header_len < 20 || total_len < header_len {
        return Err(Malformed);
    }
    // The options must be present too.
    if ctx.data() + l3 + header_len > ctx.data_end() {
        return Err(Malformed);
    }
    let fragment_offset = header.be16(6) & 0x1fff;
    let protocol = header.u8(9);
    let transport = if fragment_offset == 0 {
        transport(ctx, protocol, l3 + header_len)?
    } else {
        NO_TRANSPORT
    };
    Ok(Packet {
        source: Source::V4(header.be32(12)),
        protocol,
        dst_port: transport.dst_port,
        tcp_flags: transport.tcp_flags,
    })
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3: usize) -> Result<Packet, Malformed> {
    let header = Header::<IPV6_HLEN>::at(ctx, l3)?;
    if header.u8(0) >> 4 != 6 {
        return Err(Malformed);
    }
    let (hi, lo) = (header.be64(8), header.be64(16));

    let mut next = header.u8(6);
    let mut offset = IPV6_HLEN;
    let mut first_fragment = true;
    let mut headers = 0;
    loop {
        let is_extension = next == IPPROTO_HOPOPTS
            || next == IPPROTO_ROUTING
            || next == IPPROTO_DSTOPTS
            || next == IPPROTO_FRAGMENT;
        if !is_extension {
            break;
        }
        if headers == MAX_IPV6_EXT_HEADERS || offset > MAX_IPV6_CHAIN {
            return Err(Malformed);
        }
        headers += 1;
        let header = Header::<8>::at(ctx, l3 + offset)?;
        if next == IPPROTO_FRAGMENT {
            next = header.u8(0);
            offset += 8;
            if header.be16(2) >> 3 != 0 {
                first_fragment = false;
                break;
            }
        } else {
            let len = (usize::from(header.u8(1)) + 1) * 8;
            if ctx.data() + l3 + offset + len > ctx.data_end() {
                return Err(Malformed);
            }
            next = header.u8(0);
            offset += len;
        }
    }
    let transport = if first_fragment {
        transport(ctx, next, l3 + offset)?
    } else {
        NO_TRANSPORT
    };
    Ok(Packet {
        source: Source::V6(hi, lo),
        protocol: next,
        dst_port: transport.dst_port,
        tcp_flags: transport.tcp_flags,
    })
}

/// TCP and UDP headers must be wholly present (TCP with a data offset of at least 5 words).
#[inline(always)]
fn transport(ctx: &XdpContext, protocol: u8, l4: usize) -> Result<Transport, Malformed> {
    Ok(match protocol {
        IPPROTO_TCP => {
            let header = Header::<TCP_HLEN>::at(ctx, l4)?;
            if header.u8(12) >> 4 < 5 {
                return Err(Malformed);
            }
            Transport {
                dst_port: Some(header.be16(2)),
                tcp_flags: header.u8(13),
            }
        }
        IPPROTO_UDP => Transport {
            dst_port: Some(Header::<UDP_HLEN>::at(ctx, l4)?.be16(2)),
            tcp_flags: 0,
        },
        _ => NO_TRANSPORT,
    })
}
