//! XDP programs for apifw's tests and benchmarks, never loaded by `apifw run`: the baselines
//! the benchmarks measure the firewall against ([`apifw_empty`], [`apifw_one_lookup`]), the
//! in-kernel flood generator and its sink and floor ([`flood_gen`]), and the source sprayer
//! ([`spray`]). Names are in this crate's library (`apifw_test_ebpf::{program_names,
//! map_names}`), which the harness shares.
#![no_std]
#![no_main]

mod flood_gen;
mod spray;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use firewall_common::{
    Action, Counter, Reason, Verdict,
    prefix::{FLAG_BLOCK, PrefixV4Key},
    stats::stats_index,
};

// apifw's own maps, under apifw's names: the harness loads this object with their pin paths
// (`apifw_tests::programs::TestPrograms::beside`), so that the one-lookup baseline reads the
// firewall's prefix table (same size, same contents, same cache behaviour) and counts in its
// stats. Loaded alone (for the generator), they are small maps of their own that nothing reads.
#[map(name = "APIFW_V4_PREFIXES")]
static V4_PREFIXES: HashMap<PrefixV4Key, u32> = HashMap::with_max_entries(1, 0);

#[map(name = "APIFW_STATS")]
static STATS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(firewall_common::stats::STATS_ENTRIES, 0);

/// Does nothing but pass: the floor benchmarks measure against.
#[xdp]
pub fn apifw_empty(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Benchmark reference: the least work any source lookup needs (bounds checks to the IPv4
/// source, one hash lookup of its /32, one counter update). "Close to one hash lookup" is
/// measured against this.
#[xdp]
pub fn apifw_one_lookup(ctx: XdpContext) -> u32 {
    let end = ctx.data_end();
    let start = ctx.data();
    if start + 34 > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bytes 26..30 lie inside the frame, checked just above.
    let source = u32::from_be_bytes(unsafe { *((start + 26) as *const [u8; 4]) });
    // SAFETY: pointer from a successful lookup; the value is a plain u32.
    let flags = V4_PREFIXES
        .get_ptr(PrefixV4Key::new(source, 32))
        .map_or(0, |flags| unsafe { *flags });
    let verdict = if flags & FLAG_BLOCK != 0 {
        Verdict::new(Action::Drop, Reason::Blocklist)
    } else {
        Verdict::new(Action::Pass, Reason::Default)
    };
    if let Some(counter) = STATS.get_ptr_mut(stats_index(verdict.action, verdict.reason)) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup, so it points at this
        // CPU's slot, which nothing else writes while this program runs on this CPU.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += (end - start) as u64;
        }
    }
    verdict.action.xdp_code()
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects programs that can reach a panic, so this is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
