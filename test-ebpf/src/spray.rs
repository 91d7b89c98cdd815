//! Benchmark driver for the "many sources" benchmark: one `BPF_PROG_TEST_RUN` with
//! `repeat` = N must offer the firewall N *different* sources, not one packet N times, or the
//! LRU state maps never fill and evict. `BPF_PROG_TEST_RUN` runs the same frame buffer `repeat`
//! times, so this program rewrites the frame's source address before every run and then
//! tail-calls the program under test (the firewall, or the empty program for the floor).
//!
//! Source `i` is a bijective mix of `i`, so indices below 2^32 give pairwise different addresses
//! with no table and no state beyond a per-CPU counter. The addresses exist only inside the test
//! run: nothing is ever sent. The IPv4 header checksum is left stale: the firewall does not check
//! it (neither does the kernel's XDP path).

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use firewall_common::packet::{ETH_P_IP, ETH_P_IPV6};

/// Slot 0: the program to run on the rewritten frame (set by the benchmark).
#[map(name = "APIFW_SPRAY_TGT")]
static SPRAY_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The next packet's number on this CPU; the benchmark sets it before a run.
#[map(name = "APIFW_SPRAY_CTR")]
static SPRAY_COUNTER: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Packet `n` carries source `n >> shift`: 0 gives every packet its own source, 1 sends every
/// source twice in a row (so the firewall admits it to its state map), 63 one source throughout.
#[map(name = "APIFW_SPRAY_CFG")]
static SPRAY_SHIFT: Array<u64> = Array::with_max_entries(1, 0);

/// Offsets of the source address in an untagged Ethernet frame.
const V4_SOURCE: usize = 14 + 12;
const V6_SOURCE: usize = 14 + 8;

/// murmur3's 32-bit finaliser: xor-shifts and multiplications by odd constants, each a bijection
/// of `u32`, so distinct inputs give distinct outputs that look random.
#[inline(always)]
fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x85EB_CA6B);
    x ^= x >> 13;
    x = x.wrapping_mul(0xC2B2_AE35);
    x ^ (x >> 16)
}

/// Rewrites the source of the frame (IPv4: the whole address; IPv6: a random /64 inside
/// 2001:db8::/32 and a random interface id) and tail-calls [`SPRAY_TARGET`]. `XDP_ABORTED` when
/// the frame is not an untagged IPv4/IPv6 frame or the tail call fails (empty slot), so the
/// benchmark can tell.
#[xdp]
pub fn apifw_spray(ctx: XdpContext) -> u32 {
    let Some(counter) = SPRAY_COUNTER.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: pointer from a successful per-CPU array lookup: this CPU's slot, which nothing
    // else writes while this program runs here.
    let packet = unsafe {
        let packet = *counter;
        *counter = packet.wrapping_add(1);
        packet
    };
    let shift = SPRAY_SHIFT.get(0).map_or(0, |shift| *shift) & 63;
    // Truncation wanted: the benchmark keeps indices below 2^32.
    let index = (packet >> shift) as u32;
    let start = ctx.data();
    let end = ctx.data_end();
    if start + 14 > end {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: bytes 12..14 lie inside the frame, checked just above.
    let ether_type = u16::from_be_bytes(unsafe { *((start + 12) as *const [u8; 2]) });
    if ether_type == ETH_P_IP {
        if start + V4_SOURCE + 4 > end {
            return xdp_action::XDP_ABORTED;
        }
        // SAFETY: the four bytes lie inside the frame, checked just above; byte arrays have no
        // alignment.
        unsafe {
            *((start + V4_SOURCE) as *mut [u8; 4]) = mix32(index ^ 0x9E37_79B9).to_be_bytes();
        }
    } else if ether_type == ETH_P_IPV6 {
        if start + V6_SOURCE + 16 > end {
            return xdp_action::XDP_ABORTED;
        }
        let prefix: u32 = 0x2001_0DB8;
        let words = [
            prefix,
            mix32(index ^ 0x9E37_79B9),
            mix32(index ^ 0x7F4A_7C15),
            mix32(index ^ 0x1656_67B1),
        ];
        let base = (start + V6_SOURCE) as *mut [u8; 4];
        for (word, value) in words.iter().enumerate() {
            // SAFETY: the sixteen bytes lie inside the frame, checked above; `word` < 4.
            unsafe { *base.add(word) = value.to_be_bytes() };
        }
    } else {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: the context is this program's; on success the call does not return.
    unsafe { SPRAY_TARGET.tail_call(&ctx, 0) };
    xdp_action::XDP_ABORTED
}
