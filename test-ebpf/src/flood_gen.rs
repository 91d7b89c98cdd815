//! The flood generator of the "Flood over veth" benchmark (issue #6), and its sink.
//!
//! The benchmark runs [`apifw_flood_gen`] with `BPF_PROG_RUN` in live-frames mode
//! (`BPF_F_TEST_XDP_LIVE_FRAMES`, as xdp-trafficgen does): the kernel feeds one template frame
//! (Ethernet/IPv4/UDP) through the program again and again from a page pool, and honours the
//! verdict. `XDP_TX` sends the frame out of the context's `ingress_ifindex`, a veth whose peer is
//! the interface under test. A userspace sender could not come near the rates this reaches.
//!
//! Every frame leaves with a different IPv4 source inside 198.18.0.0/15 (the benchmarking range
//! of RFC 2544), so that filters keyed by source see a spoofed flood rather than one hot entry
//! (`APIFW_FLOOD_CFG` can narrow the range to its first 2^n addresses).
//! The sources follow a permutation of the range: within any 2^17 consecutive frames of one CPU,
//! each source appears exactly once, which makes the per-source rate known (a rate limiter's
//! behaviour depends on it). The IPv4 header checksum is updated incrementally, so the receiving
//! stack accepts the frame and netfilter sees it; the UDP checksum is 0 (none), which IPv4
//! allows. An IPv4/TCP template (the SYN flood of the "Under attack" benchmark) also gets its TCP
//! checksum updated, since the pseudo-header holds the source: the server's stack must answer
//! each SYN as it would a real one.
//!
//! An IPv6 template (UDP or TCP) instead gets a new source per frame in bits 32..63 of its
//! address (2001:db8:XXXX:XXXX::, a 32-bit permutation, so billions of distinct /64s): the soak
//! test of issue #7 needs more distinct sources than any IPv4 documentation range holds, and
//! the IPv6 SYN flood of the SYN-cookie benchmark (issue #15) a new source in every frame.
//!
//! Page-pool pages are recycled without being rewritten, so a frame may start from a previous
//! run's bytes: the update reads the source and checksum the frame holds now, which is right
//! either way.

use apifw_test_ebpf::map_names;
use firewall_common::packet::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP};

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_get_smp_processor_id,
    macros::map,
    macros::xdp,
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

/// Frames sent by this CPU so far: the position in the source permutation.
#[map(name = "APIFW_FLOOD_SEQ")]
static FLOOD_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// At `FLOOD_CONFIG_SOURCE_BITS`: how many low bits of the source vary (1 to 17; anything else
/// means 17): the benchmark's rate-limit cases flood from fewer sources, so that each is far over
/// its limit. At `FLOOD_CONFIG_SEND_EVERY`: send one burst of [`SEND_BURST`] frames in this
/// many, drop the others (a slower flood; 0 or 1: send all).
#[map(name = "APIFW_FLOOD_CFG")]
static FLOOD_CFG: Array<u32> = Array::with_max_entries(map_names::FLOOD_CONFIG_ENTRIES, 0);

/// The template's first bytes the generator writes back into each frame when
/// `FLOOD_CONFIG_RESTORE` says how many: live-frames mode reuses page-pool pages without
/// rewriting them, and a receiver's XDP program that rewrites a frame in place and sends it
/// back (`XDP_TX` of a cookie SYN-ACK: veth passes the page itself) would otherwise make the
/// next frame from that page a SYN-ACK.
#[map(name = "APIFW_FLOOD_TPL")]
static FLOOD_TEMPLATE: Array<[u8; map_names::FLOOD_TEMPLATE_BYTES]> = Array::with_max_entries(1, 0);

/// Frames a thinned flood sends back to back (one batch of the kernel's live-frames mode).
const SEND_BURST: u32 = 64;
/// 198.18.0.0/15, host order.
const FLOOD_NET: u32 = 0xC612_0000;
/// The host bits of [`FLOOD_NET`].
const FLOOD_HOST_BITS: u32 = 17;
const FLOOD_HOST_MASK: u32 = (1 << FLOOD_HOST_BITS) - 1;

/// IPv6 offsets: next header, bits 32..63 of the source, the UDP checksum, the UDP header's end.
const V6_NEXT_HEADER: usize = ETH_HLEN + 6;
const V6_SOURCE_BITS_32: usize = ETH_HLEN + 8 + 4;
const V6_UDP_CHECK: usize = ETH_HLEN + 40 + 6;
const V6_UDP_END: usize = ETH_HLEN + 40 + 8;
/// The TCP checksum after an IPv6 header without extension headers, and the end of that field.
const V6_TCP_CHECK: usize = ETH_HLEN + 40 + 16;
const V6_TCP_CHECK_END: usize = V6_TCP_CHECK + 2;
/// The destination address of an IPv6 header.
const V6_DEST: usize = ETH_HLEN + 24;
/// Offsets in the frame (Ethernet header, then an IPv4 header without options).
const ETHERTYPE: usize = 12;
const IP_VERSION_IHL: usize = ETH_HLEN;
const IP_PROTOCOL: usize = ETH_HLEN + 9;
const IP_CHECK: usize = ETH_HLEN + 10;
const IP_SOURCE: usize = ETH_HLEN + 12;
const IP_DEST: usize = ETH_HLEN + 16;
const IP_END: usize = ETH_HLEN + 20;
/// The TCP checksum after an option-less IPv4 header, and the end of that field.
const TCP_CHECK: usize = IP_END + 16;
const TCP_CHECK_END: usize = TCP_CHECK + 2;

/// Rewrites the IPv4 source of the frame to the next address of the permutation and sends the
/// frame back out (`XDP_TX`). Anything but an option-less IPv4 frame is aborted: the benchmark
/// supplies the frame, so that would be its bug.
#[xdp]
pub fn apifw_flood_gen(ctx: XdpContext) -> u32 {
    let restore = FLOOD_CFG
        .get(map_names::FLOOD_CONFIG_RESTORE)
        .map_or(0, |restore| *restore);
    if restore != 0
        && restore as usize <= map_names::FLOOD_TEMPLATE_BYTES
        && let Some(template) = FLOOD_TEMPLATE.get_ptr_mut(0)
    {
        // The page may hold what a receiver made of the last frame sent from it (see
        // `FLOOD_TEMPLATE`).
        // SAFETY: the source is a map value of FLOOD_TEMPLATE_BYTES, of which `restore` (1 to
        // that size, checked above) are copied; the helper checks the frame's bounds itself.
        let restored =
            unsafe { aya_ebpf::helpers::bpf_xdp_store_bytes(ctx.ctx, 0, template.cast(), restore) };
        if restored != 0 {
            return xdp_action::XDP_ABORTED;
        }
    }
    let start = ctx.data();
    if start + IP_END > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: bytes 0..IP_END lie inside the frame (checked above); byte arrays have no
    // alignment requirement.
    let (ethertype, version_ihl) = unsafe {
        (
            u16::from_be_bytes(*((start + ETHERTYPE) as *const [u8; 2])),
            *((start + IP_VERSION_IHL) as *const u8),
        )
    };
    if ethertype == ETH_P_IPV6 {
        return spoof_v6(&ctx);
    }
    if ethertype != ETH_P_IP || version_ihl != 0x45 {
        return xdp_action::XDP_ABORTED;
    }
    let Some((n, cpu)) = next_sequence() else {
        return xdp_action::XDP_ABORTED;
    };
    let n = thinned(n);
    if n == NOT_SENT {
        return xdp_action::XDP_DROP;
    }
    // Each CPU starts at a different point of the permutation, so two generators on two CPUs do
    // not send the same source at the same moment.
    let bits = FLOOD_CFG
        .get(map_names::FLOOD_CONFIG_SOURCE_BITS)
        .map_or(FLOOD_HOST_BITS, |bits| *bits);
    let bits = if bits == 0 || bits > FLOOD_HOST_BITS {
        FLOOD_HOST_BITS
    } else {
        bits
    };
    // Masking a permutation of 17 bits down to `bits` still sends every source equally often.
    let mask = FLOOD_HOST_MASK >> (FLOOD_HOST_BITS - bits);
    let source = FLOOD_NET | (permute(n.wrapping_add(cpu.wrapping_mul(0x9E37))) & mask);
    let source_ptr = (start + IP_SOURCE) as *mut [u8; 4];
    let check_ptr = (start + IP_CHECK) as *mut [u8; 2];
    // SAFETY: bytes IP_CHECK..IP_SOURCE+4 lie inside the frame (checked above), and the frame is
    // this program's to rewrite.
    unsafe {
        let old = u32::from_be_bytes(*source_ptr);
        let check = u16::from_be_bytes(*check_ptr);
        *source_ptr = source.to_be_bytes();
        *check_ptr = checksum_replace(check, old, source).to_be_bytes();
        // SAFETY: the protocol byte lies inside the IPv4 header (checked above); the TCP
        // checksum is only touched after its own bounds check.
        if *((start + IP_PROTOCOL) as *const u8) == IPPROTO_TCP {
            if start + TCP_CHECK_END > ctx.data_end() {
                return xdp_action::XDP_ABORTED;
            }
            let tcp_check_ptr = (start + TCP_CHECK) as *mut [u8; 2];
            let tcp_check = u16::from_be_bytes(*tcp_check_ptr);
            *tcp_check_ptr = checksum_replace(tcp_check, old, source).to_be_bytes();
        }
    }
    xdp_action::XDP_TX
}

/// What [`thinned`] returns for a frame the generator does not send (a sentinel, not an
/// `Option`: values crossing branches in the BPF crates stay plain integers).
const NOT_SENT: u32 = u32::MAX;

/// The permutation position of this CPU's `n`-th frame when the flood is thinned, or
/// [`NOT_SENT`]. Thinned, the generator sends bursts of `SEND_BURST` consecutive frames, one
/// burst in `send_every`, as a NIC's interrupt moderation hands its driver frames in batches
/// (one frame in N would wake the receiver for every few frames). The frames sent take
/// consecutive positions of the permutation, so a thinned flood still sends every source once
/// per permutation cycle of its frames.
#[inline(always)]
fn thinned(n: u32) -> u32 {
    let send_every = FLOOD_CFG
        .get(map_names::FLOOD_CONFIG_SEND_EVERY)
        .map_or(1, |every| *every);
    if send_every <= 1 {
        return n;
    }
    let burst = n / SEND_BURST;
    if burst.checked_rem(send_every).unwrap_or(0) != 0 {
        return NOT_SENT;
    }
    burst.checked_div(send_every).unwrap_or(burst) * SEND_BURST + n % SEND_BURST
}

/// This CPU's next position in the source permutation, and the CPU.
#[inline(always)]
fn next_sequence() -> Option<(u32, u32)> {
    let seq = FLOOD_SEQ.get_ptr_mut(0)?;
    // SAFETY: the pointer comes from a successful per-CPU array lookup: this CPU's slot, which
    // nothing else touches while this program runs here.
    let n = unsafe {
        let n = (*seq).wrapping_add(1);
        *seq = n;
        n
    };
    // SAFETY: the helper has no preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    Some((n, cpu))
}

/// The IPv6 floods: far more distinct sources than any IPv4 benchmarking range holds. Bits
/// 32..63 of the source (the two hextets after `2001:db8:`) become a 32-bit permutation of the
/// sequence, so 2^32 frames of one CPU carry 2^32 different sources, each in its own /64; the
/// UDP or TCP checksum, which IPv6 requires, is updated incrementally. The template must be
/// Ethernet/IPv6/UDP or Ethernet/IPv6/TCP without extension headers. Thinned like IPv4.
#[inline(always)]
fn spoof_v6(ctx: &XdpContext) -> u32 {
    let start = ctx.data();
    if start + V6_UDP_END > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: the next-header byte lies inside the frame (checked above).
    let next_header = unsafe { *((start + V6_NEXT_HEADER) as *const u8) };
    let tcp = next_header == IPPROTO_TCP;
    if !tcp && next_header != IPPROTO_UDP {
        return xdp_action::XDP_ABORTED;
    }
    if tcp && start + V6_TCP_CHECK_END > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let Some((n, cpu)) = next_sequence() else {
        return xdp_action::XDP_ABORTED;
    };
    let n = thinned(n);
    if n == NOT_SENT {
        return xdp_action::XDP_DROP;
    }
    let source = permute32(n.wrapping_add(cpu.wrapping_mul(0x4000_0000)));
    let source_ptr = (start + V6_SOURCE_BITS_32) as *mut [u8; 4];
    // SAFETY: the source field lies inside the frame (checked above), and the frame is this
    // program's to rewrite.
    let old = unsafe {
        let old = u32::from_be_bytes(*source_ptr);
        *source_ptr = source.to_be_bytes();
        old
    };
    if tcp {
        let check_ptr = (start + V6_TCP_CHECK) as *mut [u8; 2];
        // SAFETY: the TCP checksum lies inside the frame (checked above for TCP).
        unsafe {
            let check = u16::from_be_bytes(*check_ptr);
            *check_ptr = checksum_replace(check, old, source).to_be_bytes();
        }
    } else {
        let check_ptr = (start + V6_UDP_CHECK) as *mut [u8; 2];
        // SAFETY: the UDP checksum lies inside the frame (checked above).
        unsafe {
            let check = u16::from_be_bytes(*check_ptr);
            // UDP over IPv6 sends a computed zero as all ones (RFC 8200, 8.1).
            let check = match checksum_replace(check, old, source) {
                0 => 0xFFFF,
                check => check,
            };
            *check_ptr = check.to_be_bytes();
        }
    }
    xdp_action::XDP_TX
}

/// A bijection of 32 bits that scatters consecutive values (odd multipliers and xor-shifts
/// are each invertible).
#[inline(always)]
fn permute32(n: u32) -> u32 {
    let mut x = n.wrapping_mul(0x9E37_79B1);
    x ^= x >> 16;
    x = x.wrapping_mul(0x85EB_CA6B);
    x ^ (x >> 13)
}

/// Drops every frame: on the receiving veth it is the cheapest possible receiver, so what it
/// absorbs is the most the generator can send.
#[xdp]
pub fn apifw_flood_sink(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// The floor of any filter against the floods of the benchmarks: drops IPv4 frames whose source
/// lies in 198.18.0.0/15 (one compare, no map, no counter) and passes everything else.
#[xdp]
pub fn apifw_range_drop(ctx: XdpContext) -> u32 {
    drop_in_flood_range(&ctx, IP_SOURCE)
}

/// `XDP_DROP` for an IPv4 frame whose address at `offset` (the source's or the destination's)
/// lies in 198.18.0.0/15, `XDP_PASS` for anything else: one compare, no map.
#[inline(always)]
fn drop_in_flood_range(ctx: &XdpContext, offset: usize) -> u32 {
    let start = ctx.data();
    if start + IP_END > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bytes 0..IP_END lie inside the frame (checked above), and both address offsets
    // lie below IP_END; byte arrays have no alignment requirement.
    let (ethertype, address) = unsafe {
        (
            u16::from_be_bytes(*((start + ETHERTYPE) as *const [u8; 2])),
            u32::from_be_bytes(*((start + offset) as *const [u8; 4])),
        )
    };
    if ethertype == ETH_P_IP && address & !FLOOD_HOST_MASK == FLOOD_NET {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// The attack lab's router end of the server's link: drops frames *to* the floods' spoofed
/// sources (the server's answers, which the Internet would lose) with one compare, and passes
/// the rest: IPv4 to 198.18.0.0/15, IPv6 to 2001:db8::/32 outside 2001:db8::/48 (the lab's own
/// addresses; the IPv6 flood's sources vary bits 32..63, so the few of its answers that go to
/// that /48 are left to the router's blackhole route). Attached, it also gives the veth the
/// NAPI that `XDP_TX` from its peer needs.
#[xdp]
pub fn apifw_blackhole(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + V6_DEST + 6 > ctx.data_end() {
        return drop_in_flood_range(&ctx, IP_DEST);
    }
    // SAFETY: bytes 0..V6_DEST+6 lie inside the frame (checked above); byte arrays have no
    // alignment requirement.
    let (ethertype, prefix, bits_32_47) = unsafe {
        (
            u16::from_be_bytes(*((start + ETHERTYPE) as *const [u8; 2])),
            u32::from_be_bytes(*((start + V6_DEST) as *const [u8; 4])),
            u16::from_be_bytes(*((start + V6_DEST + 4) as *const [u8; 2])),
        )
    };
    if ethertype != ETH_P_IPV6 {
        return drop_in_flood_range(&ctx, IP_DEST);
    }
    if prefix == DOCUMENTATION_V6 && bits_32_47 != 0 {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// 2001:db8::/32, the IPv6 documentation prefix, as its first 32 bits.
const DOCUMENTATION_V6: u32 = 0x2001_0db8;

/// A bijection of the low [`FLOOD_HOST_BITS`] bits of `n` that scatters consecutive values: an
/// odd multiplier (invertible modulo 2^17), then a right xor-shift (invertible too).
#[inline(always)]
fn permute(n: u32) -> u32 {
    let x = n.wrapping_mul(0x2_9A65) & FLOOD_HOST_MASK;
    (x ^ (x >> 7)) & FLOOD_HOST_MASK
}

/// The Internet checksum `check` of a header in which the 32-bit field `old` became `new`
/// (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`, over both 16-bit halves).
#[inline(always)]
fn checksum_replace(check: u16, old: u32, new: u32) -> u16 {
    let mut sum = u32::from(!check)
        + u32::from(!(old >> 16) as u16)
        + u32::from(!old as u16)
        + (new >> 16)
        + (new & 0xFFFF);
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum = (sum & 0xFFFF) + (sum >> 16);
    !(sum as u16)
}
