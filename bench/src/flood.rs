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

pub(crate) mod lab;
pub(crate) mod peers;

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context as _, ensure};

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
}

/// A case's floods, or why it could not be measured.
struct Row {
    case: Case,
    samples: Vec<Sample>,
    counted_by: &'static str,
    error: Option<String>,
}

/// How long each flood lasts.
struct Timing {
    warm_up: Duration,
    flood: Duration,
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
            runs: 1,
        }
    } else {
        Timing {
            warm_up: Duration::from_millis(500),
            flood: Duration::from_secs(3),
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
            error: None,
        })
        .collect();
    for run in 0..timing.runs {
        for row in &mut rows {
            if row.error.is_some() {
                continue;
            }
            match measure(row.case, &generator, &timing, receiver_cpu) {
                Ok((sample, counted_by)) => {
                    eprintln!(
                        "bench: flood run {run}, {}: absorbed {:.0} pps of {:.0} offered ({:.1}% lost), \
                         receiver {:.0} ns/packet ({:.0}% busy), dropped {:.1}%",
                        row.case.name(),
                        sample.absorbed_pps(),
                        sample.offered_pps(),
                        sample.lost_share() * 100.0,
                        sample.receiver_ns_per_packet(),
                        sample.receiver_busy() * 100.0,
                        sample.dropped_share() * 100.0
                    );
                    row.samples.push(sample);
                    row.counted_by = counted_by;
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

/// One flood of `case` on a fresh lab.
fn measure(
    case: Case,
    generator: &Generator,
    timing: &Timing,
    receiver_cpu: usize,
) -> anyhow::Result<(Sample, &'static str)> {
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
    let sent = generator.flood(netns, lab.generator_ifindex, &lab.frame, bits, timing.flood)?;
    let after = lab.counters()?;
    let dropped_after = installed.dropped(&lab)?;
    let counted_by = installed.counted_by();
    drop(installed);
    drop(lab);
    Ok((
        Sample {
            seconds: sent.seconds,
            offered: sent.frames,
            absorbed: after.rx_packets.saturating_sub(before.rx_packets),
            lost: after.rx_dropped.saturating_sub(before.rx_dropped),
            dropped: dropped_after.saturating_sub(dropped_before),
            receiver_ns: after.napi_ns.saturating_sub(before.napi_ns),
            generator_ns: sent.cpu_ns,
        },
        counted_by,
    ))
}

fn spread_of(samples: &[Sample], value: fn(&Sample) -> f64) -> Spread {
    Spread::of(&samples.iter().map(value).collect::<Vec<_>>())
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
        RECEIVER_BOUND_LOSS * 100.0,
        SATURATED_BUSY * 100.0
    )?;
    writeln!(
        md,
        "| case | absorbed pps (median) | spread | offered pps | lost | busy | CPU ms per Mpkt (median) | spread | 1 CPU at this cost | dropped | limited by |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")?;
    for row in rows {
        if row.samples.is_empty() {
            writeln!(
                md,
                "| {} | not measured: {} | | | | | | | | | |",
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
        writeln!(
            md,
            "| {} | {} | {}..{} | {} | {:.1}% | {:.0}% | {:.0} | {:.0}..{:.0} | {} | {:.1}% ({}) | {limit} |",
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
        writeln!(md, "- {}: {}", case.name(), case.setup())?;
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
        writeln!(
            md,
            "- apifw in native mode spends {a:.0} ns of the receiving CPU per flood packet, \
             {:.2}× what the unfiltered stack spends taking the packet up to the closed port \
             ({n:.0} ns).",
            a / n.max(1.0)
        )?;
    }
    writeln!(
        md,
        "- xdp-filter matches single addresses only (no prefixes), in a hash of at most 10 000 \
         entries: it cannot list the 131 072 sources of the flood. Its supported way to drop \
         such a flood is its deny policy (drop every IPv4 packet whose source and destination \
         are not on its allow list), which is what these rows measure; apifw instead blocks the \
         prefix and passes everything else. xdp-filter is loaded through libxdp's dispatcher, \
         as its tool does.\n\
         - The rate-limit cases allow {LIMIT_PER_SECOND} packets/s per source (burst \
         {LIMIT_BURST}) and are flooded from 256 sources (198.18.0.0/24): each source then sends \
         thousands of packets a second, nearly all over the limit, and the cost is the \
         per-source state lookup and update. Spread over the whole /15, the same flood gives \
         each source a few packets a second: a per-source limit does not see it at all.\n\
         - iptables is `{}`: rules go through nftables' compatibility layer, as on a stock \
         Debian; the rules sit in the `raw` table, before connection tracking.\n\
         - Drop events of the apifw daemon stay at their default cap (100/s), as deployed; the \
         daemon's own CPU time (draining them) is not counted.",
        tool_version("iptables", &[])
    )?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_short() {
        assert_eq!(rate(2_345_678.0), "2.35 M");
        assert_eq!(rate(45_600.0), "45.6 k");
        assert_eq!(rate(12.0), "12");
    }
}
