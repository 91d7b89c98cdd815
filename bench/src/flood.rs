//! Flood over veth (issue #6): how many packets per second a filter on a veth absorbs while a
//! fast in-kernel generator floods it with spoofed sources, and what each packet costs the
//! receiving CPU, for apifw and its peers (xdp-filter, nftables, iptables with ipset and
//! hashlimit) and for no filter at all.
//!
//! Topology ([`lab`]): a generator namespace and a target namespace joined by a veth pair. The
//! generator ([`generator`]) runs `apifw_flood_gen` with `BPF_PROG_RUN` in live-frames mode on a
//! thread pinned to the first CPU: every frame gets a new source in 198.18.0.0/15 and is sent
//! out of the generator's veth end with `XDP_TX`. The receiving end's NAPI runs in a kernel
//! thread pinned to the last CPU: everything the receiver does (veth receive, XDP, GRO,
//! netfilter, the IP and UDP stack) is that thread's CPU time, and the generator's work is not.
//!
//! Every case ([`peers::Case`]) is measured on a fresh lab, `runs` times, interleaved with the
//! other cases, after a short warm-up flood (which fills rate-limit tables and the page pool).
//! Per flood: packets absorbed = frames the receiving NAPI took off its ring (the veth's rx
//! counter), lost = frames the generator's end could not put on that ring because it was full
//! (the veth's rx_dropped), receiving CPU = the NAPI thread's run time. If nothing is lost, the
//! receiver kept up and the absorbed rate is the generator's, not the filter's: the report says
//! so rather than publishing it as the filter's limit, and the CPU time per packet (which does
//! not depend on the rate) is then the comparable figure.
//!
//! Where an XDP program sits on the receiving veth, a second, shorter flood follows the measured
//! one on the same lab with the kernel's BPF statistics on ([`kstats`]): the program's own
//! run time per packet in the real receive path, as the kernel counts it. The statistics cost
//! each run two clock reads, so the measured flood runs without them.

pub(crate) mod kstats;
pub(crate) mod lab;
pub(crate) mod peers;

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context as _, ensure};
use firewall_userspace::dataplane::stats::ProgramRuns;

use self::{
    lab::Lab,
    peers::{Case, LIMIT_BURST, LIMIT_PER_SECOND},
};
use crate::{
    generator::Generator,
    report::{BenchOptions, Spread, tool_version},
};

/// Share of the offered frames lost at the veth ring above which the generator outran the
/// receiver.
const RECEIVER_BOUND_LOSS: f64 = 0.02;
/// Share of the flood's duration the receiving thread must have run for its absorbed rate to
/// be its limit. Below it, frames were lost while the thread was not running: it had emptied
/// its ring and gone to sleep, and was woken too late for the next frames (on a shared VM,
/// waking a vCPU takes long).
const SATURATED_BUSY: f64 = 0.85;
/// The goal of issue #16 item 3: apifw's XDP program per dropped packet, native, in the real
/// receive path (kernel BPF statistics), at most this share of xdp-filter's in the same run.
const GOAL_VS_XDP_FILTER: f64 = 0.8;

/// One flood of one case.
#[derive(Clone, Copy, Debug)]
struct Sample {
    seconds: f64,
    /// Frames the generator sent.
    offered: u64,
    /// Frames the receiver took off its ring.
    absorbed: u64,
    /// Frames that found the ring full.
    lost: u64,
    /// The case's own drop count (see [`peers::Installed::dropped`]).
    dropped: u64,
    /// Receiving NAPI thread CPU time, ns.
    receiver_ns: u64,
    /// Generator thread CPU time, ns.
    generator_ns: u64,
    /// What the kernel counted for the XDP program(s) on the receiving veth over the flood
    /// with BPF statistics on; `None` without an XDP program.
    kernel: Option<ProgramRuns>,
}

impl Sample {
    fn absorbed_pps(&self) -> f64 {
        self.absorbed as f64 / self.seconds
    }
    fn offered_pps(&self) -> f64 {
        self.offered as f64 / self.seconds
    }
    fn lost_share(&self) -> f64 {
        self.lost as f64 / (self.offered as f64).max(1.0)
    }
    /// Receiving CPU per packet, ns (= ms per million packets).
    fn receiver_ns_per_packet(&self) -> f64 {
        self.receiver_ns as f64 / (self.absorbed as f64).max(1.0)
    }
    fn receiver_busy(&self) -> f64 {
        self.receiver_ns as f64 / (self.seconds * 1e9)
    }
    fn generator_ns_per_packet(&self) -> f64 {
        self.generator_ns as f64 / (self.offered as f64).max(1.0)
    }
    fn dropped_share(&self) -> f64 {
        self.dropped as f64 / (self.absorbed as f64).max(1.0)
    }
    /// The XDP program's run time per run, ns, as the kernel counted it.
    fn kernel_ns_per_packet(&self) -> Option<f64> {
        self.kernel.as_ref().and_then(ProgramRuns::ns_per_packet)
    }
}

/// A case's floods, or why it could not be measured.
struct Row {
    case: Case,
    samples: Vec<Sample>,
    counted_by: &'static str,
    /// Names of the XDP programs the kernel statistics count (empty without one).
    programs: String,
    error: Option<String>,
}

/// How long each flood lasts.
struct Timing {
    warm_up: Duration,
    flood: Duration,
    /// The flood with the kernel's BPF statistics on, after the measured one.
    stats_flood: Duration,
    runs: usize,
}

/// Measures every case and returns the report's section.
pub fn run(opts: &BenchOptions) -> anyhow::Result<String> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    ensure!(
        cpus >= 2,
        "the flood needs two CPUs: one generates, one receives"
    );
    let (generator_cpu, receiver_cpu) = (0, cpus - 1);
    // This thread, and the daemons and tools it starts, stay off the receiving CPU (an earlier
    // section may have pinned the process elsewhere); the sections after this one, and the
    // report's header (which counts the CPUs this thread may use), get the old affinity back.
    let _affinity = Affinity::pin(generator_cpu)?;
    let timing = if opts.quick {
        Timing {
            warm_up: Duration::from_millis(200),
            flood: Duration::from_secs(1),
            stats_flood: Duration::from_millis(500),
            runs: 1,
        }
    } else {
        Timing {
            warm_up: Duration::from_millis(500),
            flood: Duration::from_secs(3),
            stats_flood: Duration::from_secs(1),
            runs: opts.runs,
        }
    };
    let generator = Generator::start(generator_cpu).context("start the flood generator")?;
    // A debugging aid: `APIFW_FLOOD_CASES=apifw,nft` measures only the cases whose name
    // contains one of the words.
    let only = std::env::var("APIFW_FLOOD_CASES").unwrap_or_default();
    let wanted = |case: &Case| {
        only.is_empty()
            || only
                .split(',')
                .any(|word| case.name().contains(word.trim()))
    };
    let mut rows: Vec<Row> = Case::ALL
        .iter()
        .filter(|case| wanted(case))
        .map(|case| Row {
            case: *case,
            samples: Vec::new(),
            counted_by: "",
            programs: String::new(),
            error: None,
        })
        .collect();
    for run in 0..timing.runs {
        for row in &mut rows {
            if row.error.is_some() {
                continue;
            }
            match measure(row.case, &generator, &timing, receiver_cpu) {
                Ok(Measured {
                    sample,
                    counted_by,
                    programs,
                }) => {
                    eprintln!(
                        "bench: flood run {run}, {}: absorbed {:.0} pps of {:.0} offered ({:.1}% lost), \
                         receiver {:.0} ns/packet ({:.0}% busy), dropped {:.1}%, XDP program {} \
                         (kernel stats, {} runs)",
                        row.case.name(),
                        sample.absorbed_pps(),
                        sample.offered_pps(),
                        sample.lost_share() * 100.0,
                        sample.receiver_ns_per_packet(),
                        sample.receiver_busy() * 100.0,
                        sample.dropped_share() * 100.0,
                        sample
                            .kernel_ns_per_packet()
                            .map_or("–".to_owned(), |ns| format!("{ns:.0} ns/packet")),
                        sample.kernel.map_or(0, |kernel| kernel.runs)
                    );
                    row.samples.push(sample);
                    row.counted_by = counted_by;
                    row.programs = programs;
                }
                Err(err) => {
                    eprintln!("bench: flood {}: not measured: {err:#}", row.case.name());
                    row.error = Some(format!("{err:#}"));
                }
            }
        }
    }
    drop(generator);
    Ok(markdown(&rows, &timing)?)
}

/// The calling thread's CPU affinity, restored on drop.
struct Affinity(nix::sched::CpuSet);

impl Affinity {
    /// Pins the calling thread to `cpu`.
    fn pin(cpu: usize) -> anyhow::Result<Self> {
        let this = nix::unistd::Pid::from_raw(0);
        let old = nix::sched::sched_getaffinity(this)?;
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu)?;
        nix::sched::sched_setaffinity(this, &set)?;
        Ok(Self(old))
    }
}

impl Drop for Affinity {
    fn drop(&mut self) {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &self.0);
    }
}

/// What one flood of a case gave.
struct Measured {
    sample: Sample,
    counted_by: &'static str,
    /// Names of the XDP programs on the receiving veth, comma-separated.
    programs: String,
}

/// One flood of `case` on a fresh lab (and, with an XDP program on the receiving veth, a
/// shorter one with the kernel's BPF statistics on).
fn measure(
    case: Case,
    generator: &Generator,
    timing: &Timing,
    receiver_cpu: usize,
) -> anyhow::Result<Measured> {
    let lab = Lab::new()?;
    let installed = case.install(&lab)?;
    // After the install: attaching XDP may have given the veth a new NAPI instance.
    lab.pin_napi(receiver_cpu)?;
    let netns = lab.generator.path();
    let bits = case.source_bits();
    generator.flood(
        netns.clone(),
        lab.generator_ifindex,
        &lab.frame,
        bits,
        timing.warm_up,
    )?;
    let before = lab.counters()?;
    let dropped_before = installed.dropped(&lab)?;
    let sent = generator.flood(
        netns.clone(),
        lab.generator_ifindex,
        &lab.frame,
        bits,
        timing.flood,
    )?;
    let after = lab.counters()?;
    let dropped_after = installed.dropped(&lab)?;
    let counted_by = installed.counted_by();
    // The program's own cost, as the kernel counts it, over a flood of its own: the statistics
    // add two clock reads to every run, which the measured flood above does not pay.
    let attached = kstats::attached(&lab.target, &lab.target_if)?;
    let kernel = if attached.is_empty() {
        None
    } else {
        let ids: Vec<u32> = attached.iter().map(|program| program.id).collect();
        let counting = kstats::Counting::start()?;
        let start = kstats::runs(&ids)?;
        generator.flood(
            netns,
            lab.generator_ifindex,
            &lab.frame,
            bits,
            timing.stats_flood,
        )?;
        let end = kstats::runs(&ids)?;
        drop(counting);
        Some(kstats::between(&start, &end))
    };
    drop(installed);
    drop(lab);
    Ok(Measured {
        sample: Sample {
            seconds: sent.seconds,
            offered: sent.frames,
            absorbed: after.rx_packets.saturating_sub(before.rx_packets),
            lost: after.rx_dropped.saturating_sub(before.rx_dropped),
            dropped: dropped_after.saturating_sub(dropped_before),
            receiver_ns: after.napi_ns.saturating_sub(before.napi_ns),
            generator_ns: sent.cpu_ns,
            kernel,
        },
        counted_by,
        programs: attached
            .iter()
            .map(|program| program.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

fn spread_of(samples: &[Sample], value: fn(&Sample) -> f64) -> Spread {
    Spread::of(&samples.iter().map(value).collect::<Vec<_>>())
}

/// The XDP program's ns per packet by the kernel's count, over the runs that have it.
fn kernel_spread(samples: &[Sample]) -> Option<Spread> {
    let values: Vec<f64> = samples
        .iter()
        .filter_map(Sample::kernel_ns_per_packet)
        .collect();
    (!values.is_empty()).then(|| Spread::of(&values))
}

/// Per-run ratios of `a`'s kernel figure to `b`'s (runs are interleaved, so run i of one case
/// was measured next to run i of the other).
fn kernel_ratios(a: &[Sample], b: &[Sample]) -> Option<Spread> {
    let ratios: Vec<f64> = a
        .iter()
        .zip(b)
        .filter_map(|(a, b)| Some(a.kernel_ns_per_packet()? / b.kernel_ns_per_packet()?.max(1e-9)))
        .collect();
    (!ratios.is_empty()).then(|| Spread::of(&ratios))
}

/// `1234567` as `1.23 M`, `45600` as `45.6 k`.
fn rate(pps: f64) -> String {
    if pps >= 1e6 {
        format!("{:.2} M", pps / 1e6)
    } else if pps >= 1e3 {
        format!("{:.1} k", pps / 1e3)
    } else {
        format!("{pps:.0}")
    }
}

fn markdown(rows: &[Row], timing: &Timing) -> Result<String, std::fmt::Error> {
    let mut md = String::new();
    writeln!(md, "## Flood over veth\n")?;
    writeln!(
        md,
        "A flood of 60-byte UDP frames (64 on the wire) from spoofed sources spread evenly over \
         198.18.0.0/15 (each of the 131 072 sources once every 131 072 frames) to 192.0.2.1:9 \
         (closed) arrives on a veth in a namespace of its own; each case sits on that veth and \
         should drop the flood. The generator is apifw's `{}` XDP program run with \
         `BPF_PROG_RUN` in live-frames mode (as xdp-trafficgen does): it rewrites the source \
         (and the IPv4 header checksum) of each frame and returns `XDP_TX`, which sends the frame \
         out of the peer veth end. Generator and receiver each have a CPU of their own: the \
         generator thread is pinned to the first CPU, the receiving veth's NAPI runs threaded, \
         pinned to the last one, so everything the receiver does (veth receive, XDP program, \
         GRO, netfilter, IP and UDP stack up to the drop) runs in that one kernel thread.\n",
        crate::programs::program_names::FLOOD_GEN
    )?;
    writeln!(
        md,
        "Each case is measured {} times, interleaved with the others, each time on a fresh pair \
         of namespaces, after a {:.1} s warm-up flood, for {:.0} s; the table gives the median \
         and the spread (min..max) over the runs.\n",
        timing.runs,
        timing.warm_up.as_secs_f64(),
        timing.flood.as_secs_f64()
    )?;
    writeln!(
        md,
        "- **absorbed**: frames per second the receiving veth's NAPI took off its ring (its rx \
         counter), whatever the case then did with them. **offered**: frames per second the \
         generator sent. **lost**: share of the offered frames that found the veth's 256-frame \
         ring full (its rx_dropped): the receiver could not keep up.\n\
         - **CPU ms per Mpkt**: run time of the receiving NAPI thread (`/proc/TID/schedstat`) \
         divided by the frames absorbed, in milliseconds per million packets (= ns per packet). \
         Not counted: the generator's CPU, and deferred work outside that thread (garbage \
         collection of rate-limit tables, the ICMP errors the stack sends, rate-limited, without \
         a filter). **1 CPU at this cost**: 10⁹ / that figure, the rate one CPU would absorb \
         at this cost per packet.\n\
         - **XDP program ns per packet (kernel stats)**: for the cases with an XDP program on \
         the receiving veth, that program's own run time per run as the kernel counts it \
         (`run_time_ns` / `run_cnt` of its BPF statistics, the figures `apifw status` shows), \
         over a {:.1} s flood of its own on the same lab right after the measured one, with \
         the statistics on (a `BPF_ENABLE_STATS` descriptor held for that flood only: they add \
         two clock reads to every run, which the measured flood and its CPU column do not \
         pay). This is the real receive path: each frame comes off the ring with a new source, \
         not one test frame repeated in warm caches as in the per-packet section. Each figure \
         includes what the counting itself adds (the clock reads around the run, and the call \
         into the program): the sink's row, a program that only returns `XDP_DROP`, is about \
         that much. The program counted is named under each case's setup below (the kernel \
         keeps 15 characters of a program's name).\n\
         - **busy**: the NAPI thread's run time over the flood's duration.\n\
         - **dropped**: the case's own drop count over the frames absorbed, as a check that it \
         does drop the flood (without a filter: the share that reached UDP and was refused, \
         `NoPorts`).\n\
         - **limited by**: *generator* when at most {:.0}% of the offered frames were lost: the \
         case kept up with everything the generator could send, so absorbed is the generator's \
         rate, not the case's limit. *receiver* when more were lost and the receiving thread ran \
         at least {:.0}% of the time: absorbed is the case's limit on one CPU. *wake-ups* when \
         frames were lost although the receiving thread ran less than that: it kept emptying \
         its ring and going to sleep, and was woken too late for the next frames (waking a vCPU \
         of this shared VM takes long), so absorbed understates the case; its CPU cost per \
         packet (and the rate one CPU would absorb at that cost) is then the figure that \
         compares the cases.\n",
        timing.stats_flood.as_secs_f64(),
        RECEIVER_BOUND_LOSS * 100.0,
        SATURATED_BUSY * 100.0
    )?;
    writeln!(
        md,
        "| case | absorbed pps (median) | spread | offered pps | lost | busy | CPU ms per Mpkt (median) | spread | XDP program ns per packet, kernel stats (median) | spread | 1 CPU at this cost | dropped | limited by |"
    )?;
    writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )?;
    for row in rows {
        if row.samples.is_empty() {
            writeln!(
                md,
                "| {} | not measured: {} | | | | | | | | | | | |",
                row.case.name(),
                row.error
                    .as_deref()
                    .unwrap_or("no runs")
                    .replace('|', "\\|")
                    .replace('\n', " ")
            )?;
            continue;
        }
        let absorbed = spread_of(&row.samples, Sample::absorbed_pps);
        let offered = spread_of(&row.samples, Sample::offered_pps);
        let lost = spread_of(&row.samples, Sample::lost_share);
        let busy = spread_of(&row.samples, Sample::receiver_busy);
        let cost = spread_of(&row.samples, Sample::receiver_ns_per_packet);
        let dropped = spread_of(&row.samples, Sample::dropped_share);
        let limit = if row.case.is_sink() {
            "generator (by design)"
        } else if lost.median <= RECEIVER_BOUND_LOSS {
            "**generator**"
        } else if busy.median >= SATURATED_BUSY {
            "receiver"
        } else {
            "wake-ups"
        };
        let (kernel, kernel_range) = kernel_spread(&row.samples).map_or_else(
            || ("–".to_owned(), String::new()),
            |ns| {
                (
                    format!("{:.0}", ns.median),
                    format!("{:.0}..{:.0}", ns.min, ns.max),
                )
            },
        );
        writeln!(
            md,
            "| {} | {} | {}..{} | {} | {:.1}% | {:.0}% | {:.0} | {:.0}..{:.0} | {kernel} | {kernel_range} | {} | {:.1}% ({}) | {limit} |",
            row.case.name(),
            rate(absorbed.median),
            rate(absorbed.min),
            rate(absorbed.max),
            rate(offered.median),
            lost.median * 100.0,
            busy.median * 100.0,
            cost.median,
            cost.min,
            cost.max,
            rate(1e9 / cost.median.max(1.0)),
            dropped.median * 100.0,
            row.counted_by
        )?;
    }
    writeln!(md, "\n### Setup of each case\n")?;
    for case in Case::ALL {
        let counted = rows
            .iter()
            .find(|row| row.case == case && !row.programs.is_empty())
            .map_or(String::new(), |row| {
                format!("; kernel statistics of `{}`", row.programs)
            });
        writeln!(md, "- {}: {}{counted}", case.name(), case.setup())?;
    }
    writeln!(md, "\n### Reading the numbers\n")?;
    let find = |case: Case| {
        rows.iter()
            .find(|row| row.case == case && !row.samples.is_empty())
    };
    if let Some(sink) = find(Case::Sink) {
        let offered = spread_of(&sink.samples, Sample::offered_pps);
        let generator = spread_of(&sink.samples, Sample::generator_ns_per_packet);
        writeln!(
            md,
            "- The generator alone (into the cheapest receiver, an `XDP_DROP` program) sends {} \
             pps (spread {}..{}) and costs its CPU {:.0} ns per frame: no case on this machine \
             can be shown absorbing more than that. Cases marked *generator* absorbed every frame \
             the generator sent; their absorbed rate is not their limit, and the CPU column is \
             the comparison that holds.",
            rate(offered.median),
            rate(offered.min),
            rate(offered.max),
            generator.median
        )?;
    }
    let measured = || {
        rows.iter()
            .filter(|row| !row.samples.is_empty() && !row.case.is_sink())
    };
    let generator_bound: Vec<&str> = measured()
        .filter(|row| spread_of(&row.samples, Sample::lost_share).median <= RECEIVER_BOUND_LOSS)
        .map(|row| row.case.name())
        .collect();
    let saturated: Vec<&str> = measured()
        .filter(|row| spread_of(&row.samples, Sample::lost_share).median > RECEIVER_BOUND_LOSS)
        .filter(|row| spread_of(&row.samples, Sample::receiver_busy).median >= SATURATED_BUSY)
        .map(|row| row.case.name())
        .collect();
    if generator_bound.is_empty() {
        writeln!(
            md,
            "- No case kept up with the whole flood: the generator outran all of them."
        )?;
    } else {
        writeln!(
            md,
            "- Generator-bound (the generator cannot outrun them here; their absorbed rate is the \
             generator's, not theirs): {}.",
            generator_bound.join("; ")
        )?;
    }
    if saturated.is_empty() {
        writeln!(
            md,
            "- No case saturated the receiving CPU: the absorbed rates of the cases that lost \
             frames are bounded by wake-up latency, not by their cost, so compare the CPU cost \
             per packet and the rate one CPU would absorb at that cost."
        )?;
    } else {
        writeln!(
            md,
            "- Saturated the receiving CPU (absorbed is their limit on one CPU): {}.",
            saturated.join("; ")
        )?;
    }
    if let (Some(apifw), Some(nothing)) = (find(Case::ApifwNative), find(Case::NoFilter)) {
        let a = spread_of(&apifw.samples, Sample::receiver_ns_per_packet).median;
        let n = spread_of(&nothing.samples, Sample::receiver_ns_per_packet).median;
        let program = kernel_spread(&apifw.samples).map_or(String::new(), |ns| {
            format!(
                "; of that, its XDP program itself takes {:.0} ns by the kernel's count",
                ns.median
            )
        });
        writeln!(
            md,
            "- apifw in native mode spends {a:.0} ns of the receiving CPU per flood packet, \
             {:.2}× what the unfiltered stack spends taking the packet up to the closed port \
             ({n:.0} ns){program}.",
            a / n.max(1.0)
        )?;
    }
    let goal = format!(
        "Goal (apifw's XDP program per dropped packet ≤ {GOAL_VS_XDP_FILTER}× xdp-filter's, both \
         native, kernel BPF statistics, same run)"
    );
    match (find(Case::ApifwNative), find(Case::XdpFilterNative)) {
        (Some(apifw), Some(filter)) => match (
            kernel_spread(&apifw.samples),
            kernel_spread(&filter.samples),
            kernel_ratios(&apifw.samples, &filter.samples),
        ) {
            (Some(a), Some(f), Some(ratio)) => writeln!(
                md,
                "- {goal}: **{}** — apifw {:.0} ns (spread {:.0}..{:.0}), xdp-filter {:.0} ns \
                 (spread {:.0}..{:.0}): {:.2}× (median of the per-run ratios; runs \
                 {:.2}..{:.2}×){}.",
                if ratio.median <= GOAL_VS_XDP_FILTER {
                    "met"
                } else {
                    "not met"
                },
                a.median,
                a.min,
                a.max,
                f.median,
                f.min,
                f.max,
                ratio.median,
                ratio.min,
                ratio.max,
                find(Case::Sink)
                    .and_then(|sink| kernel_spread(&sink.samples))
                    .map_or(String::new(), |sink| format!(
                        ". Less the sink's {:.0} ns (the counting and the call, which both pay), \
                         the programs themselves: apifw {:.0} ns, xdp-filter {:.0} ns",
                        sink.median,
                        a.median - sink.median,
                        f.median - sink.median
                    ))
            )?,
            _ => writeln!(
                md,
                "- {goal}: not measured (the kernel counted no run of one of the programs)."
            )?,
        },
        _ => writeln!(
            md,
            "- {goal}: not measured (apifw or xdp-filter, native, was not measured)."
        )?,
    }
    writeln!(
        md,
        "- xdp-filter matches single addresses only (no prefixes), in a hash of at most 10 000 \
         entries: it cannot list the 131 072 sources of the flood. Its supported way to drop \
         such a flood is its deny policy (drop every IPv4 packet whose source and destination \
         are not on its allow list), which is what these rows measure; apifw instead blocks the \
         prefix and passes everything else. xdp-filter is loaded by its own tool, through \
         libxdp{}.\n\
         - The rate-limit cases allow {LIMIT_PER_SECOND} packets/s per source (burst \
         {LIMIT_BURST}) and are flooded from 256 sources (198.18.0.0/24): each source then sends \
         thousands of packets a second, nearly all over the limit, and the cost is the \
         per-source state lookup and update. Spread over the whole /15, the same flood gives \
         each source a few packets a second: a per-source limit does not see it at all.\n\
         - iptables is `{}`: rules go through nftables' compatibility layer, as on a stock \
         Debian; the rules sit in the `raw` table, before connection tracking.\n\
         - Drop events of the apifw daemon stay at their default cap (100/s), as deployed; the \
         daemon's own CPU time (draining them) is not counted.",
        dispatcher_note(rows),
        tool_version("iptables", &[])
    )?;
    Ok(md)
}

/// How xdp-filter's kernel statistics are counted: through libxdp's dispatcher when that is
/// what the veth holds.
fn dispatcher_note(rows: &[Row]) -> String {
    let programs = rows
        .iter()
        .find(|row| row.case == Case::XdpFilterNative && !row.programs.is_empty())
        .map(|row| row.programs.as_str());
    match programs {
        Some(name) if name.contains("dispatcher") => format!(
            ", which put its multi-program dispatcher on the veth: the program the kernel runs \
             for each packet and counts is the dispatcher (`{name}`), and xdp-filter's own \
             program runs inside that run as an extension (`freplace`), which the kernel does \
             not count apart. xdp-filter's kernel-statistics figure is the dispatcher's, \
             xdp-filter's program included: what the kernel runs per packet as deployed"
        ),
        Some(name) => format!(
            ", which on this machine attached xdp-filter's program (`{name}`) to the veth \
             itself, without its multi-program dispatcher: the kernel statistics count \
             xdp-filter's program alone, as they count apifw's"
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flood whose XDP program ran `ns` per packet by the kernel's count (`None`: no
    /// program).
    fn sample(ns: Option<u64>) -> Sample {
        Sample {
            seconds: 1.0,
            offered: 1_000_000,
            absorbed: 900_000,
            lost: 100_000,
            dropped: 900_000,
            receiver_ns: 200_000_000,
            generator_ns: 100_000_000,
            kernel: ns.map(|ns| ProgramRuns {
                runs: 1_000,
                run_time_ns: ns * 1_000,
                stats_enabled: false,
            }),
        }
    }

    fn row(case: Case, programs: &str, ns: &[Option<u64>]) -> Row {
        Row {
            case,
            samples: ns.iter().map(|ns| sample(*ns)).collect(),
            counted_by: "counter",
            programs: programs.to_owned(),
            error: None,
        }
    }

    #[test]
    fn the_kernel_figure_is_a_column_and_the_goal_is_marked() {
        let timing = Timing {
            warm_up: Duration::from_millis(500),
            flood: Duration::from_secs(3),
            stats_flood: Duration::from_secs(1),
            runs: 3,
        };
        let rows = [
            row(Case::Sink, "apifw_flood_sin", &[Some(40); 3]),
            row(Case::NoFilter, "", &[None; 3]),
            row(
                Case::ApifwNative,
                "apifw",
                &[Some(100), Some(90), Some(120)],
            ),
            row(
                Case::XdpFilterNative,
                "xdpfilt_dny_ip",
                &[Some(100), Some(100), Some(100)],
            ),
        ];
        let md = markdown(&rows, &timing).unwrap();
        assert!(
            md.contains("| apifw blocklist, native XDP | 900.0 k | 900.0 k..900.0 k | 1.00 M | 10.0% | 20% | 222 | 222..222 | 100 | 90..120 |"),
            "{md}"
        );
        assert!(md.contains("| 222 | 222..222 | – |  |"), "{md}");
        assert!(
            md.contains("**not met** — apifw 100 ns (spread 90..120), xdp-filter 100 ns (spread 100..100): 1.00× (median of the per-run ratios; runs 0.90..1.20×). Less the sink's 40 ns"),
            "{md}"
        );
        assert!(md.contains("kernel statistics of `xdpfilt_dny_ip`"), "{md}");
        assert!(md.contains("without its multi-program dispatcher"), "{md}");
        let faster = [
            row(Case::ApifwNative, "apifw", &[Some(70); 3]),
            row(Case::XdpFilterNative, "xdp_dispatcher", &[Some(100); 3]),
        ];
        let md = markdown(&faster, &timing).unwrap();
        assert!(md.contains("same run): **met** — apifw 70 ns"), "{md}");
        assert!(md.contains("is the dispatcher (`xdp_dispatcher`)"), "{md}");
    }

    #[test]
    fn rates_are_short() {
        assert_eq!(rate(2_345_678.0), "2.35 M");
        assert_eq!(rate(45_600.0), "45.6 k");
        assert_eq!(rate(12.0), "12");
    }
}
