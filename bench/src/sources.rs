//! Many sources (issue #6): the per-packet cost when every packet comes from a different source,
//! and the kernel memory the default map sizes take, with the state maps full and evicting.
//!
//! `BPF_PROG_TEST_RUN` repeats one frame, so the firewall would see one source. The sprayer
//! (`program_names::SPRAY`, test-ebpf/src/spray.rs) rewrites the frame's source before every
//! run from a per-CPU counter through a bijective mixer and tail-calls the program in its
//! one-slot program array: the firewall, or the empty program (the floor, paying the same
//! rewrite and tail call). One test run with `repeat` = N thus offers N distinct sources, and the
//! difference of the two runs is what the firewall itself costs. That the tail call really
//! reaches the firewall is checked: its counters must grow by exactly the packets sent.
//!
//! The policy is `examples/apifw.toml`, the example an operator starts from: its `[limits]` are
//! the built-in defaults, and its `api` rule (TCP 443/8080/8443, per-source and per-/24 buckets,
//! bans, subnet escalation) gives every sprayed source per-source and per-subnet state. The frames
//! are TCP ACKs to port 443, so every one takes that rule.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
};

use anyhow::{Context as _, bail};
use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues},
    programs::{TestRun as _, TestRunOptions},
};
use firewall_common::{
    map_names,
    prefix::{PrefixV4Key, PrefixV6Key, V6Summary, V6SummaryKey},
    program_names::FIREWALL,
    rules::{BanEntry, BanKey, EscalationState, RuleKey, TrackKey, TrackState},
};
use firewall_userspace::{Firewall, Loaded};

use crate::{
    packets::{DST_V4, DST_V6},
    programs::{TestPrograms, map_names as test_maps, program_names},
    report::{BenchOptions, Spread},
    support::{OneCpu, map_data},
};

/// The policy the measurement runs under (see the module documentation).
const POLICY: &str = include_str!("../../examples/apifw.toml");

/// What the sprayer may return (its `XDP_ABORTED`, 0, means the tail call did not happen).
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// How the sprayer spreads sources over the packets of one run.
#[derive(Clone, Copy)]
struct Mode {
    label: &'static str,
    /// Packet `n` carries source `n >> shift`.
    shift: u64,
}

const MODES: [Mode; 3] = [
    Mode {
        label: "a new source every packet",
        shift: 0,
    },
    Mode {
        label: "every source twice in a row (admitted to per-source state)",
        shift: 1,
    },
    Mode {
        label: "one source, the same packet repeated",
        shift: 63,
    },
];

/// One mode of one family: the runs through the firewall and the empty program.
struct Row {
    family: &'static str,
    mode: Mode,
    /// Distinct sources per run.
    sources: u64,
    packets: u64,
    apifw: Spread,
    empty: Spread,
    /// apifw − empty, ns per packet.
    difference: Spread,
    ratio: Spread,
    /// Verdicts over all runs of this row, from the firewall's counters.
    verdicts: Vec<(String, u64)>,
}

/// One map after a family's runs.
struct MapRow {
    name: &'static str,
    kind: String,
    capacity: u64,
    memlock: u64,
    /// Entries in use (hash maps only).
    used: Option<u64>,
}

/// The section: `## Many sources: 10M distinct random sources`.
pub fn run(opts: &BenchOptions) -> anyhow::Result<String> {
    let _pinned = OneCpu::pin_last()?;
    let sources: u64 = if opts.quick { 100_000 } else { 10_000_000 };
    let runs = if opts.quick {
        opts.runs.min(2)
    } else {
        opts.runs
    };
    let policy = Loaded::from_str(std::path::Path::new("examples/apifw.toml"), POLICY)
        .context("parse examples/apifw.toml")?
        .policy;

    let mut rows = Vec::new();
    let mut maps = Vec::new();
    let mut offered = Vec::new();
    for (family, frame) in [
        (
            "IPv4",
            tcp_ack_frame(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10))),
        ),
        (
            "IPv6",
            tcp_ack_frame(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 10))),
        ),
    ] {
        // A fresh firewall per family, so the map fill below is this family's.
        let mut firewall = Firewall::load(&policy).context("load apifw (root needed)")?;
        let mut sprayer = Sprayer::new()?;
        for mode in MODES {
            let packets = sources;
            let repeat = u32::try_from(packets).context("too many packets for one test run")?;
            let (mut apifw, mut empty, mut difference, mut ratio) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let before = firewall.stats()?;
            let mut sent_to_apifw = 0u64;
            for _ in 0..runs {
                let floor =
                    sprayer.run(&mut firewall, program_names::EMPTY, mode, &frame, repeat)?;
                let ns = sprayer.run(&mut firewall, FIREWALL, mode, &frame, repeat)?;
                sent_to_apifw += packets;
                empty.push(floor);
                apifw.push(ns);
                difference.push(ns - floor);
                ratio.push(ns / floor.max(0.5));
            }
            let after = firewall.stats()?;
            let counted = after.total_packets() - before.total_packets();
            if counted != sent_to_apifw {
                bail!(
                    "{family}, {}: apifw counted {counted} packets, {sent_to_apifw} were sent: the \
                     tail call did not reach it for every packet",
                    mode.label
                );
            }
            let verdicts = after
                .counters
                .iter()
                .zip(&before.counters)
                .filter_map(|(now, then)| {
                    let packets = now.packets - then.packets;
                    (packets > 0).then(|| {
                        (
                            format!("{} {}", now.action.name(), now.reason.name()),
                            packets,
                        )
                    })
                })
                .collect();
            let row = Row {
                family,
                mode,
                // Every mode sends the same packets per run.
                sources: (packets >> mode.shift).max(1),
                packets,
                apifw: Spread::of(&apifw),
                empty: Spread::of(&empty),
                difference: Spread::of(&difference),
                ratio: Spread::of(&ratio),
                verdicts,
            };
            eprintln!(
                "bench: {family}, {}: {:.1} ns/packet (empty {:.1}), +{:.1} ns, {:.2}x",
                mode.label,
                row.apifw.median,
                row.empty.median,
                row.difference.median,
                row.ratio.median
            );
            rows.push(row);
        }
        offered.push((family, sprayer.offered, sprayer.admitted));
        maps.push((family, map_rows(&mut firewall)?));
    }
    markdown(opts, runs, sources, &rows, &maps, &offered)
}

/// A TCP ACK (no SYN: the connection exists) from `src` to port 443, 60 bytes over IPv4.
fn tcp_ack_frame(src: IpAddr) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]);
    let builder = match src {
        IpAddr::V4(src) => builder.ipv4(src.octets(), DST_V4.octets(), 64),
        IpAddr::V6(src) => builder.ipv6(src.octets(), DST_V6.octets(), 64),
    };
    let builder = builder.tcp(49152, 443, 1, 64240).ack(1);
    let payload = [0u8; 6];
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut frame, &payload)
        .expect("writing to a Vec cannot fail");
    frame
}

/// Drives the sprayer's maps and remembers which sources were used.
struct Sprayer {
    /// The sprayer and the empty program (the test object alone: the sprayer reaches the
    /// firewall by its program fd).
    programs: TestPrograms,
    cpus: usize,
    /// The next source index no run has used yet (index 0 is the repeated mode's one source).
    next_index: u64,
    /// Distinct sources sent to apifw so far.
    offered: u64,
    /// Of those, the ones sent twice in a row (admitted to per-source state).
    admitted: u64,
}

impl Sprayer {
    fn new() -> anyhow::Result<Self> {
        let cpus = aya::util::nr_cpus().map_err(|(what, err)| anyhow::anyhow!("{what}: {err}"))?;
        Ok(Self {
            programs: TestPrograms::load()?,
            cpus,
            next_index: 1,
            offered: 0,
            admitted: 0,
        })
    }

    /// One test run of `packets` packets through the sprayer into `target`; mean ns per packet.
    fn run(
        &mut self,
        firewall: &mut Firewall,
        target: &'static str,
        mode: Mode,
        frame: &[u8],
        repeat: u32,
    ) -> anyhow::Result<f64> {
        let program = if target == FIREWALL {
            firewall.program_mut(target)?
        } else {
            self.programs.program_mut(target)?
        };
        let fd = program.fd()?.try_clone().context("clone program fd")?;
        self.programs.set_spray_target(&fd)?;
        let mut shift: Array<_, u64> =
            Array::try_from(self.programs.map_mut(test_maps::SPRAY_SHIFT)?)?;
        shift.set(0, mode.shift, 0)?;
        // Every CPU starts at this run's first fresh source: the run executes on one of them.
        let start = if mode.shift == 63 {
            0
        } else {
            self.next_index << mode.shift
        };
        let mut counter: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.programs.map_mut(test_maps::SPRAY_COUNTER)?)?;
        counter.set(0, PerCpuValues::try_from(vec![start; self.cpus])?, 0)?;
        let result = self
            .programs
            .program_mut(program_names::SPRAY)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                ..TestRunOptions::default()
            })?;
        let expected: &[u32] = if target == program_names::EMPTY {
            &[XDP_PASS]
        } else {
            &[XDP_PASS, XDP_DROP]
        };
        if !expected.contains(&result.return_value) {
            bail!(
                "the sprayer into {target} returned {} (0: the tail call failed)",
                result.return_value
            );
        }
        // Exactly one CPU ran the whole run: its counter moved by `repeat`, no other moved.
        let counter: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.programs.map_mut(test_maps::SPRAY_COUNTER)?)?;
        let moved: Vec<u64> = counter
            .get(&0, 0)?
            .iter()
            .map(|value| value - start)
            .filter(|moved| *moved > 0)
            .collect();
        if moved != [u64::from(repeat)] {
            bail!("the sprayer's counters moved by {moved:?}, expected one CPU by {repeat}");
        }
        if mode.shift != 63 {
            let used = u64::from(repeat) >> mode.shift;
            self.next_index += used;
            if target == FIREWALL {
                self.offered += used;
                if mode.shift == 1 {
                    self.admitted += used;
                }
            }
        }
        Ok(result.duration.as_nanos() as f64)
    }
}

/// Every map of the firewall (the pinned ones, then the per-CPU ones it does not pin): kind,
/// capacity and `bytes_memlock` (bpftool), and the entries of the hash maps.
fn map_rows(firewall: &mut Firewall) -> anyhow::Result<Vec<MapRow>> {
    let mut rows = Vec::new();
    for name in map_names::ALL.into_iter().chain(map_names::UNPINNED) {
        let map = firewall.map(name)?;
        let id = map_data(map)
            .with_context(|| format!("{name}: unexpected map kind"))?
            .info()?
            .id();
        let output = Command::new("bpftool")
            .args(["-j", "map", "show", "id", &id.to_string()])
            .output()
            .context("run bpftool map show")?;
        if !output.status.success() {
            bail!("bpftool map show id {id}: {}", output.status);
        }
        let info: serde_json::Value =
            serde_json::from_slice(&output.stdout).context("bpftool map show output")?;
        let used = match name {
            map_names::V4_PREFIXES => Some(count::<PrefixV4Key, u32>(map)?),
            map_names::V6_PREFIXES => Some(count::<PrefixV6Key, u32>(map)?),
            map_names::V6_SUMMARY => Some(count::<V6SummaryKey, V6Summary>(map)?),
            map_names::RULE_MATCH => Some(count::<RuleKey, u32>(map)?),
            map_names::SOURCES | map_names::SUBNETS => Some(count::<TrackKey, TrackState>(map)?),
            map_names::ESCALATION => Some(count::<TrackKey, EscalationState>(map)?),
            map_names::BANS => Some(count::<BanKey, BanEntry>(map)?),
            _ => None,
        };
        rows.push(MapRow {
            name,
            kind: info["type"].as_str().unwrap_or("?").to_owned(),
            capacity: info["max_entries"].as_u64().unwrap_or(0),
            memlock: info["bytes_memlock"].as_u64().unwrap_or(0),
            used,
        });
    }
    Ok(rows)
}

/// Entries of a hash map, by walking its keys.
fn count<K: aya::Pod, V: aya::Pod>(map: &Map) -> anyhow::Result<u64> {
    let map: HashMap<&MapData, K, V> = HashMap::try_from(map)?;
    let mut entries = 0;
    for key in map.keys() {
        key?;
        entries += 1;
    }
    Ok(entries)
}

/// Kernel memory the shipped example policy may take at idle.
const MEMORY_GOAL_BYTES: u64 = 32 << 20;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn markdown(
    opts: &BenchOptions,
    runs: usize,
    sources: u64,
    rows: &[Row],
    maps: &[(&str, Vec<MapRow>)],
    offered: &[(&str, u64, u64)],
) -> anyhow::Result<String> {
    let mut md = String::new();
    writeln!(
        md,
        "## Many sources: {}M distinct random sources\n",
        sources as f64 / 1e6
    )?;
    if opts.quick {
        writeln!(
            md,
            "*Quick run: 100k sources per run, not for the report.*\n"
        )?;
    }
    writeln!(
        md,
        "Every packet from a different source, not one packet repeated. `BPF_PROG_TEST_RUN` repeats \
         one frame, so a small XDP program (`{spray}`, test-ebpf/src/spray.rs) rewrites the \
         frame's source before each run — a bijective mix of a per-CPU packet counter, so N runs \
         give N distinct addresses, each run of the benchmark continuing where the last one \
         stopped — and tail-calls either apifw or the empty program through a one-slot program \
         array. Both paths pay the same rewrite and tail call, so `apifw − empty` is what the \
         firewall itself costs. Nothing is sent: the addresses exist only inside the test run. \
         apifw's counters are checked to grow by exactly the packets sent, so every packet \
         reached it.\n",
        spray = program_names::SPRAY
    )?;
    writeln!(
        md,
        "- Policy: `examples/apifw.toml` as shipped (the example an operator starts from; its \
         `[limits]` are the built-in defaults). Its rule `api` (TCP 443/8080/8443: 500 packets/s \
         per source, 5,000/s per /24 or /64, SYN limit, bans after 5 s, subnet escalation) takes \
         every packet: the frame is a 60-byte TCP ACK to port 443 (IPv6: 80 bytes).\n\
         - Sources: IPv4 over the whole address space; IPv6 a random /64 inside 2001:db8::/32 with \
         a random interface id. A source's first packet is only sighted in the per-CPU admission \
         array (`APIFW_ADMISSION`, a store, no LRU insert); per-source state (`APIFW_SOURCES`) \
         comes with its second packet within the window, hence the mode with every source twice \
         in a row. Its /24 (/64) is admitted to `APIFW_SUBNETS` the same way: the whole address \
         space has 16M /24s, so few of them are sighted twice.\n\
         - {runs} runs per row, each a test run of `repeat` = the packet count, interleaved with \
         the empty program; median and spread (min..max) over the runs; process pinned to one CPU."
    )?;
    writeln!(md, "\n### Cost per packet\n")?;
    writeln!(
        md,
        "| family | sources | packets per run | apifw ns/packet | spread | empty ns/packet | \
         apifw − empty (ns) | × empty | × empty spread | verdicts (all runs) |"
    )?;
    writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|")?;
    for row in rows {
        let total: u64 = row.verdicts.iter().map(|(_, n)| n).sum();
        let verdicts: Vec<String> = row
            .verdicts
            .iter()
            .map(|(what, n)| {
                let share = *n as f64 * 100.0 / total.max(1) as f64;
                if share < 0.01 {
                    format!("{what} {n} packets")
                } else {
                    format!("{what} {share:.2}%")
                }
            })
            .collect();
        writeln!(
            md,
            "| {} | {} ({}) | {} | {:.1} | {:.1}..{:.1} | {:.1} | {:.1} | {:.2} | {:.2}..{:.2} | {} |",
            row.family,
            row.mode.label,
            row.sources,
            row.packets,
            row.apifw.median,
            row.apifw.min,
            row.apifw.max,
            row.empty.median,
            row.difference.median,
            row.ratio.median,
            row.ratio.min,
            row.ratio.max,
            verdicts.join(", ")
        )?;
    }
    writeln!(md, "\n### Kernel memory and map fill\n")?;
    writeln!(
        md,
        "Every map of the daemon (`bpftool map show`: type, `max_entries`, `bytes_memlock`) and, \
         for the hash maps, the entries in use after all runs of a family (a fresh firewall per \
         family). Maps are preallocated, so memory is fixed by the limits, not by the traffic.\n"
    )?;
    write!(md, "| map | type | capacity | bytes_memlock |")?;
    for (family, _) in maps {
        write!(md, " entries after {family} |")?;
    }
    writeln!(md)?;
    write!(md, "|---|---|---:|---:|")?;
    for _ in maps {
        write!(md, "---:|")?;
    }
    writeln!(md)?;
    if let Some((_, first)) = maps.first() {
        for (i, map) in first.iter().enumerate() {
            write!(
                md,
                "| `{}` | {} | {} | {:.2} MiB |",
                map.name,
                map.kind,
                map.capacity,
                mib(map.memlock)
            )?;
            for (_, family) in maps {
                match family.get(i).and_then(|row| row.used) {
                    Some(used) if map.capacity > 0 => write!(
                        md,
                        " {used} ({:.1}%) |",
                        used as f64 * 100.0 / map.capacity as f64
                    )?,
                    Some(used) => write!(md, " {used} |")?,
                    None => write!(md, " — |")?,
                }
            }
            writeln!(md)?;
        }
        let total: u64 = first.iter().map(|map| map.memlock).sum();
        writeln!(md, "| **all** | | | **{:.1} MiB** |", mib(total))?;
        // The tracking maps are preallocated and the prefix and ban maps hold the policy's few
        // entries, so after the flood the total is the policy's idle figure.
        let met = total <= MEMORY_GOAL_BYTES;
        writeln!(
            md,
            "\n- Goal: the shipped example policy takes at most {} MiB of kernel memory at idle \
             ({} CPUs; per-CPU maps grow with the CPUs): {:.1} MiB — **{}**",
            MEMORY_GOAL_BYTES >> 20,
            crate::report::online_cpus(),
            mib(total),
            if met { "met" } else { "not met" },
        )?;
    }
    writeln!(md)?;
    for ((family, offered, admitted), (_, family_maps)) in offered.iter().zip(maps) {
        let used = |name: &str| {
            family_maps
                .iter()
                .find(|map| map.name == name)
                .map_or((0, 0), |map| (map.used.unwrap_or(0), map.capacity))
        };
        let (tracked, tracked_cap) = used(map_names::SOURCES);
        let (subnets, subnet_cap) = used(map_names::SUBNETS);
        writeln!(
            md,
            "- {family}: {offered} distinct sources sent to apifw, {admitted} of them twice; \
             `APIFW_SOURCES` holds {tracked} of {tracked_cap} (at least {} tracked sources were \
             evicted, LRU, along the way) and `APIFW_SUBNETS` {subnets} of {subnet_cap}.",
            admitted.saturating_sub(tracked),
        )?;
    }
    Ok(md)
}
