//! The names shared between these test programs (`src/main.rs`, built for
//! `bpfel-unknown-none` by the `apifw-tests` build script) and the harness that loads them.
//!
//! Why a crate of its own (as aya keeps `test/integration-ebpf` apart from its programs): the
//! product's object holds only the firewall, so `apifw run` creates only apifw's maps. The
//! baselines that must read apifw's own maps (`apifw_one_lookup` reads its prefix map and counts
//! in its stats; `apifw_spray` tail-calls the firewall) get them by pin and by program fd when
//! the harness loads this object beside a loaded firewall (`apifw_tests::programs`).
#![no_std]

/// Program names in the test object.
pub mod program_names {
    /// An XDP program that only returns `XDP_PASS`: the floor that benchmarks compare against.
    pub const EMPTY: &str = "apifw_empty";
    /// Bounds checks, one hash lookup of the IPv4 source's /32 in apifw's own prefix map and a
    /// counter update in apifw's stats: the least any lookup-based firewall does per packet,
    /// which benchmarks also compare against.
    pub const ONE_LOOKUP: &str = "apifw_one_lookup";
    /// The flood benchmark's generator, run with `BPF_PROG_RUN` in live-frames mode: gives each
    /// frame a new IPv4 source in 198.18.0.0/15 and sends it out with `XDP_TX`.
    pub const FLOOD_GEN: &str = "apifw_flood_gen";
    /// Drops every frame: the cheapest receiver, which shows the flood generator's own limit.
    pub const FLOOD_SINK: &str = "apifw_flood_sink";
    /// Drops IPv4 frames from 198.18.0.0/15 and passes the rest, with one compare and no map:
    /// the cheapest filter that stops the benchmarks' floods, the floor of any real one.
    pub const FLOOD_RANGE_DROP: &str = "apifw_range_drop";
    /// Drops IPv4 frames to 198.18.0.0/15 and passes the rest: the attack lab's router
    /// discarding the answers to spoofed sources.
    pub const BLACKHOLE: &str = "apifw_blackhole";
    /// Benchmark driver: writes a distinct pseudo-random source address into the frame, then
    /// tail-calls the program in [`super::map_names::SPRAY_TARGET`], so that one
    /// `BPF_PROG_TEST_RUN` with `repeat` = N offers N different sources.
    pub const SPRAY: &str = "apifw_spray";
}

/// Map names in the test object. `APIFW_V4_PREFIXES` and `APIFW_STATS` are declared there too
/// (for `apifw_one_lookup`), under apifw's names, so that the loader can point them at the
/// firewall's maps.
pub mod map_names {
    /// `ProgramArray` with one slot: the program the source sprayer ([`super::program_names::SPRAY`])
    /// tail-calls.
    pub const SPRAY_TARGET: &str = "APIFW_SPRAY_TGT";
    /// `PerCpuArray<u64>`: the sprayer's packet counter on each CPU (the next source's index).
    pub const SPRAY_COUNTER: &str = "APIFW_SPRAY_CTR";
    /// `Array<u64>` with one entry: the sprayer's shift; source `i` is written into packets
    /// `i << shift ..= ((i + 1) << shift) - 1` (0: a new source every packet).
    pub const SPRAY_SHIFT: &str = "APIFW_SPRAY_CFG";

    /// `Array<u32>` configuring the flood generator ([`super::program_names::FLOOD_GEN`]),
    /// indexed by the two constants below.
    pub const FLOOD_CONFIG: &str = "APIFW_FLOOD_CFG";
    /// [`FLOOD_CONFIG`] index: how many low source bits the generator varies (0: all 17 of
    /// 198.18.0.0/15).
    pub const FLOOD_CONFIG_SOURCE_BITS: u32 = 0;
    /// [`FLOOD_CONFIG`] index: the generator sends one burst of 64 frames in this many and
    /// drops the others (0 or 1: sends all).
    pub const FLOOD_CONFIG_SEND_EVERY: u32 = 1;
    /// [`FLOOD_CONFIG`] index: how many of the template's first bytes (from
    /// [`FLOOD_TEMPLATE`], at most [`FLOOD_TEMPLATE_BYTES`]) to write back into each frame
    /// first; 0: none.
    pub const FLOOD_CONFIG_RESTORE: u32 = 2;
    /// Entries of [`FLOOD_CONFIG`].
    pub const FLOOD_CONFIG_ENTRIES: u32 = 3;
    /// `Array<[u8; FLOOD_TEMPLATE_BYTES]>` with one entry: the template whose first bytes the
    /// generator writes back when [`FLOOD_CONFIG_RESTORE`] says so.
    pub const FLOOD_TEMPLATE: &str = "APIFW_FLOOD_TPL";
    /// The size of [`FLOOD_TEMPLATE`]'s value: room for Ethernet, IPv6 and TCP headers (74
    /// bytes).
    pub const FLOOD_TEMPLATE_BYTES: usize = 80;

    /// The firewall's maps that the test object shares (loaded from the firewall's pins).
    pub const SHARED_WITH_FIREWALL: [&str; 2] = [
        firewall_common::map_names::V4_PREFIXES,
        firewall_common::map_names::STATS,
    ];
}
