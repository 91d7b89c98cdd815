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
}

/// A pointer to `T` at `offset` in the frame, if the whole `T` lies inside it.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, Malformed> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(Malformed);
    }
    Ok((start + offset) as *const T)
}

/// Copies `N` bytes at `offset` out of the frame.
#[inline(always)]
fn bytes_at<const N: usize>(ctx: &XdpContext, offset: usize) -> Result<[u8; N], Malformed> {
    let ptr = ptr_at::<[u8; N]>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that all N bytes lie between data and data_end; [u8; N] has
    // alignment 1, so an unaligned packet offset is fine.
    Ok(unsafe { *ptr })
}

#[inline(always)]
fn be16_at(ctx: &XdpContext, offset: usize) -> Result<u16, Malformed> {
    Ok(u16::from_be_bytes(bytes_at::<2>(ctx, offset)?))
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
    let header = bytes_at::<20>(ctx, l3)?;
    let header_len = usize::from(header[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if header[0] >> 4 != 4 || header_len < 20 || total_len < header_len {
        return Err(Malformed);
    }
    // The options must be present too.
    if ctx.data() + l3 + header_len > ctx.data_end() {
        return Err(Malformed);
    }
    let fragment_offset = u16::from_be_bytes([header[6], header[7]]) & 0x1fff;
    if fragment_offset == 0 {
        check_transport(ctx, header[9], l3 + header_len)?;
    }
    let source = u32::from_be_bytes([header[12], header[13], header[14], header[15]]);
    Ok(Packet {
        source: Source::V4(source),
    })
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3: usize) -> Result<Packet, Malformed> {
    let first = bytes_at::<8>(ctx, l3)?;
    if first[0] >> 4 != 6 {
        return Err(Malformed);
    }
    let hi = u64::from_be_bytes(bytes_at::<8>(ctx, l3 + 8)?);
    let lo = u64::from_be_bytes(bytes_at::<8>(ctx, l3 + 16)?);
    // The destination must be present as well: the fixed header is 40 bytes.
    ptr_at::<[u8; 16]>(ctx, l3 + 24)?;

    let mut next = first[6];
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
        let header = bytes_at::<8>(ctx, l3 + offset)?;
        if next == IPPROTO_FRAGMENT {
            next = header[0];
            offset += 8;
            if u16::from_be_bytes([header[2], header[3]]) >> 3 != 0 {
                first_fragment = false;
                break;
            }
        } else {
            let len = (usize::from(header[1]) + 1) * 8;
            if ctx.data() + l3 + offset + len > ctx.data_end() {
                return Err(Malformed);
            }
            next = header[0];
            offset += len;
        }
    }
    if first_fragment {
        check_transport(ctx, next, l3 + offset)?;
    }
    Ok(Packet {
        source: Source::V6(hi, lo),
    })
}

/// TCP and UDP headers must be wholly present (TCP with a data offset of at least 5 words).
#[inline(always)]
fn check_transport(ctx: &XdpContext, protocol: u8, l4: usize) -> Result<(), Malformed> {
    match protocol {
        IPPROTO_TCP => {
            let header = bytes_at::<TCP_HLEN>(ctx, l4)?;
            if header[12] >> 4 < 5 {
                return Err(Malformed);
            }
        }
        IPPROTO_UDP => {
            ptr_at::<[u8; UDP_HLEN]>(ctx, l4)?;
        }
        _ => {}
    }
    Ok(())
}
