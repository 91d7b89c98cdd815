//! Multi-core: the same frames through apifw on K CPUs at once, for K = 1, 2, 4, ... up to every
//! CPU this process may use.
//!
//! A NIC's RSS spreads one client's flows, and an attacking network's sources, over all receive
//! queues, so one hot source or one hot subnet is charged from every CPU at the same moment. A
//! cost that grows with K means the CPUs serialise on something they share (a bucket's cache
//! line); the blocked-source row, which touches only per-CPU counters, shows what is possible.
//!
//! Each of K threads is pinned to its own CPU and runs `BPF_PROG_TEST_RUN` of the firewall (one
//! loaded program, opened from a pin) with `repeat` packets; the threads start together at a
//! barrier. The kernel reports each thread's mean ns per packet; a run's figure is the median over
//! its K threads, and the report gives the median and spread of `runs` runs. Every thread's
//! verdict is checked, and after the passing cases the rule's `rate_limited` counter must still be
//! 0 (the limits are set so high that every packet charges the buckets and passes: the case this
//! measures is the charge, not the drop).
//!
//! The new-source row runs the sprayer (`test-ebpf/src/spray.rs`) on every CPU, each CPU
//! counting from its own range, so every packet on every CPU comes from a source never seen
//! before (the spoofed flood of the spoofed-floods issue).

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    path::Path,
    sync::{Arc, Barrier},
};

use anyhow::{Context as _, bail, ensure};
use aya::{
    maps::{Array, PerCpuArray, PerCpuValues},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use aya_obj::programs::XdpAttachType;
use firewall_common::{Reason, program_names::FIREWALL};
use firewall_userspace::{Firewall, Loaded};

use crate::{
    packets::udp_frame,
    plot::goal_marker,
    programs::{TestPrograms, map_names as test_maps, program_names},
    report::{BenchOptions, Spread, online_cpus},
    support::BpffsDir,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// A blocked network, a rule on UDP 53 whose per-source and per-/24 limits no case reaches.
const POLICY: &str = r#"
[block]
cidrs = ["198.51.100.0/24"]

[[rule]]
name = "dns"
protocol = "udp"
ports = [53]
per_source = { packets_per_second = 1000000000, burst_packets = 1000000 }
per_subnet = { packets_per_second = 1000000000, burst_packets = 1000000, prefix_v4 = 24 }

[limits]
max_tracked_sources = 4194304
"#;

/// What one row sends: the source of the thread on the `i`th CPU of a run, or the sprayer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sources {
    /// A blocked source on every CPU (per-CPU counters only).
    Blocked,
    /// One source on every CPU: one source bucket and one subnet bucket shared by all.
    OneSource,
    /// CPU `i` sends 192.0.2.(10 + i): one subnet bucket shared by all.
    OneSubnet,
    /// CPU `i` sends 198.18.i.10: nothing shared.
    SeparateSubnets,
    /// Every packet a new source (the sprayer), each CPU from its own range.
    NewEveryPacket,
}

const ROWS: [(&str, Sources); 5] = [
    ("blocked source (per-CPU counters only)", Sources::Blocked),
    ("one source on every CPU (hot source)", Sources::OneSource),
    (
        "one source per CPU, all in one /24 (hot subnet)",
        Sources::OneSubnet,
    ),
    (
        "one source per CPU, each in its own /24 (nothing shared)",
        Sources::SeparateSubnets,
    ),
    (
        "every packet a new source (sprayer)",
        Sources::NewEveryPacket,
    ),
];

impl Sources {
    /// The source the thread on the `i`th CPU of a run sends (the sprayer rewrites it).
    fn source(self, i: usize) -> IpAddr {
        let i = u8::try_from(i % 200).unwrap_or(0);
        IpAddr::V4(match self {
            Self::Blocked => Ipv4Addr::new(198, 51, 100, 10),
            Self::OneSource | Self::NewEveryPacket => Ipv4Addr::new(192, 0, 2, 10),
            Self::OneSubnet => Ipv4Addr::new(192, 0, 2, 10 + i),
            Self::SeparateSubnets => Ipv4Addr::new(198, 18, i, 10),
        })
    }

    fn verdict(self) -> u32 {
        match self {
            Self::Blocked => XDP_DROP,
            _ => XDP_PASS,
        }
    }
}

/// One row's figures by K.
struct Row {
    label: &'static str,
    /// (K, ns per packet over the runs).
    by_cpus: Vec<(usize, Spread)>,
}

/// The section: `## Multi-core`.
pub fn run(opts: &BenchOptions) -> anyhow::Result<String> {
    let cpus = allowed_cpus()?;
    let counts = cpu_counts(cpus.len());
    let runs = if opts.quick { 1 } else { opts.runs };
    ensure!(
        u64::from(opts.repeat) <= SPRAY_RANGE,
        "--repeat above {SPRAY_RANGE} would give two CPUs the same sprayed sources"
    );
    let repeat = if opts.quick {
        opts.repeat.min(100_000)
    } else {
        opts.repeat
    };
    let policy = Loaded::from_str(Path::new("multicore.toml"), POLICY)
        .context("the multi-core policy")?
        .policy;
    let mut firewall = Firewall::load(&policy).context("load apifw (root needed)")?;
    let mut programs = TestPrograms::load()?;
    let apifw_fd = firewall
        .program_mut(FIREWALL)?
        .fd()?
        .try_clone()
        .context("clone the firewall's fd")?;
    programs.set_spray_target(&apifw_fd)?;
    let pins = BpffsDir::create("bench-multicore")?;
    let apifw_pin = pins.join("apifw");
    firewall
        .program_mut(FIREWALL)?
        .pin(&apifw_pin)
        .context("pin the firewall")?;
    let spray_pin = pins.join("spray");
    programs
        .program_mut(program_names::SPRAY)?
        .pin(&spray_pin)
        .context("pin the sprayer")?;
    // Every source gets its state (its second packet admits it) before anything is measured.
    for (_, sources) in ROWS {
        for i in 0..cpus.len() {
            let frame = udp_frame(sources.source(i));
            let run = firewall.program_mut(FIREWALL)?.test_run(TestRunOptions {
                data_in: Some(&frame),
                repeat: 2,
                ..TestRunOptions::default()
            })?;
            ensure!(run.return_value == sources.verdict(), "warm-up verdict");
        }
    }
    let mut sprayed_runs = 0u64;
    let mut rows = Vec::new();
    for (label, sources) in ROWS {
        let mut by_cpus = Vec::new();
        for &k in &counts {
            let mut medians = Vec::new();
            for _ in 0..runs {
                let frames: Vec<Vec<u8>> = (0..k).map(|i| udp_frame(sources.source(i))).collect();
                let pin = if matches!(sources, Sources::NewEveryPacket) {
                    start_spray(&mut programs, sprayed_runs)?;
                    sprayed_runs += 1;
                    &spray_pin
                } else {
                    &apifw_pin
                };
                let per_thread = on_cpus(pin, &frames, &cpus[..k], repeat, sources.verdict())?;
                medians.push(crate::report::median(&mut per_thread.clone()));
            }
            let spread = Spread::of(&medians);
            eprintln!(
                "bench: multi-core, {label}, {k} CPUs: {:.1} ns/packet",
                spread.median
            );
            by_cpus.push((k, spread));
        }
        rows.push(Row { label, by_cpus });
    }
    let limited = firewall.stats()?.rule(0, Reason::RateLimited).packets;
    ensure!(
        limited == 0,
        "{limited} packets were rate-limited: the limits must stay out of reach"
    );
    markdown(opts, runs, repeat, &cpus, &rows)
}

/// The CPUs this process may run on.
fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))?;
    let cpus: Vec<usize> = (0..nix::sched::CpuSet::count())
        .filter(|cpu| set.is_set(*cpu).unwrap_or(false))
        .collect();
    ensure!(!cpus.is_empty(), "no CPU to run on");
    Ok(cpus)
}

/// 1, 2, 4, ... up to `n`, and `n` itself.
fn cpu_counts(n: usize) -> Vec<usize> {
    let mut counts: Vec<usize> = std::iter::successors(Some(1usize), |k| Some(k * 2))
        .take_while(|k| *k <= n)
        .collect();
    if counts.last() != Some(&n) {
        counts.push(n);
    }
    counts
}

/// Indices of the sprayer one CPU uses in one run: more than one run's packets.
const SPRAY_RANGE: u64 = 1 << 22;

/// Sets the sprayer to a new source every packet, each CPU counting from its own range of
/// indices (so no two packets of any CPU share a source), after the ranges of earlier runs.
fn start_spray(programs: &mut TestPrograms, run: u64) -> anyhow::Result<()> {
    let mut shift: Array<_, u64> = Array::try_from(programs.map_mut(test_maps::SPRAY_SHIFT)?)?;
    shift.set(0, 0, 0)?;
    let possible = aya::util::nr_cpus().map_err(|(what, err)| anyhow::anyhow!("{what}: {err}"))?;
    // A range of SPRAY_RANGE indices per CPU and run, 1,024 ranges below 2^32 (where the
    // sprayer's indices wrap) used in turn: a source comes back only after 4G packets, long after
    // the state maps have forgotten it.
    let starts: Vec<u64> = (0..possible as u64)
        .map(|cpu| ((run * possible as u64 + cpu) % 1024) * SPRAY_RANGE)
        .collect();
    let mut counter: PerCpuArray<_, u64> =
        PerCpuArray::try_from(programs.map_mut(test_maps::SPRAY_COUNTER)?)?;
    counter.set(0, PerCpuValues::try_from(starts)?, 0)?;
    Ok(())
}

/// Runs `frames[i]` on `cpus[i]`, all threads at once; each thread's mean ns per packet.
fn on_cpus(
    program: &Path,
    frames: &[Vec<u8>],
    cpus: &[usize],
    repeat: u32,
    verdict: u32,
) -> anyhow::Result<Vec<f64>> {
    let barrier = Arc::new(Barrier::new(cpus.len()));
    std::thread::scope(|scope| {
        let threads: Vec<_> = cpus
            .iter()
            .zip(frames)
            .map(|(&cpu, frame)| {
                let barrier = barrier.clone();
                scope.spawn(move || -> anyhow::Result<f64> {
                    let mut set = nix::sched::CpuSet::new();
                    set.set(cpu)?;
                    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                        .with_context(|| format!("pin to CPU {cpu}"))?;
                    let xdp = Xdp::from_pin(program, XdpAttachType::Interface)
                        .with_context(|| format!("open {}", program.display()))?;
                    barrier.wait();
                    let run = xdp.test_run(TestRunOptions {
                        data_in: Some(frame),
                        repeat,
                        ..TestRunOptions::default()
                    })?;
                    if run.return_value != verdict {
                        bail!(
                            "CPU {cpu}: returned {}, expected {verdict}",
                            run.return_value
                        );
                    }
                    Ok(run.duration.as_nanos() as f64)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| {
                thread
                    .join()
                    .map_err(|_| anyhow::anyhow!("a measuring thread panicked"))?
            })
            .collect()
    })
}

/// Rows whose K-CPU cost the goal bounds (≤ 1.3 × their 1-CPU cost): the hot rows (the
/// multi-core issue) and a new source on every packet (issue #15, item 5: a spoofed flood's
/// cost on many CPUs at once).
const GOAL_ROWS: [Sources; 3] = [
    Sources::OneSource,
    Sources::OneSubnet,
    Sources::NewEveryPacket,
];
const GOAL: f64 = 1.3;

fn markdown(
    opts: &BenchOptions,
    runs: usize,
    repeat: u32,
    cpus: &[usize],
    rows: &[Row],
) -> anyhow::Result<String> {
    let mut md = String::new();
    writeln!(md, "## Multi-core\n")?;
    if opts.quick {
        writeln!(md, "*Quick run: not for the report.*\n")?;
    }
    writeln!(
        md,
        "The same 64-byte UDP frames through apifw on K CPUs at once: K threads, each pinned to its \
         own CPU, run `BPF_PROG_TEST_RUN` of the one loaded firewall (`repeat` = {repeat}) and \
         start together. ns per packet is the median over the K threads of a run; the table gives \
         the median (and min..max) of {runs} runs, and each K column's ratio to the 1-CPU figure \
         of its row. Policy: a blocklist, and one rule on UDP port 53 with `per_source` and \
         `per_subnet` (/24) limits of 10⁹ packets/s, which no case reaches (checked: the rule's \
         `rate_limited` counter stays 0), so every passing packet charges both buckets. CPUs \
         used: {} (this machine's {} online CPUs).\n",
        cpus.len(),
        online_cpus()
    )?;
    if cpus.len() < 16 {
        writeln!(
            md,
            "*The 16-CPU curve is pending: this run had {} CPUs. `bench/device/prepare.sh` packs \
             this benchmark for a many-CPU machine without a toolchain and \
             `bench/device/multicore.sh` runs it there (DEVELOPERS.md: the device machine). \
             Before the leases, the issue that asked for them measured on 16 CPUs (kernel 6.18, \
             `bpftool prog run` of the attached program): one hot source 153 ns on 1 CPU and \
             2,300 ns on 16, a hot /24 205 and 2,022 ns, sources in separate /24s 212 and 207 ns, \
             a blocked source 45 and 72 ns.*\n",
            cpus.len()
        )?;
    }
    let ks: Vec<usize> = rows
        .first()
        .map(|row| row.by_cpus.iter().map(|(k, _)| *k).collect())
        .unwrap_or_default();
    write!(md, "| frames |")?;
    for k in &ks {
        write!(md, " {k} CPU{} |", if *k == 1 { "" } else { "s" })?;
    }
    writeln!(md)?;
    write!(md, "|---|")?;
    for _ in &ks {
        write!(md, "---:|")?;
    }
    writeln!(md)?;
    for row in rows {
        write!(md, "| {} |", row.label)?;
        let one = row.by_cpus.first().map_or(f64::NAN, |(_, s)| s.median);
        for (k, spread) in &row.by_cpus {
            if *k == 1 {
                write!(
                    md,
                    " {:.0} ({:.0}..{:.0}) |",
                    spread.median, spread.min, spread.max
                )?;
            } else {
                write!(
                    md,
                    " {:.0} ({:.0}..{:.0}), {:.2}× |",
                    spread.median,
                    spread.min,
                    spread.max,
                    spread.median / one
                )?;
            }
        }
        writeln!(md)?;
    }
    writeln!(md)?;
    let k_max = ks.last().copied().unwrap_or(1);
    if k_max > 1 {
        writeln!(
            md,
            "The curve's end, each row's cost on {k_max} CPUs against its cost on one:\n"
        )?;
        writeln!(
            md,
            "| frames | ns/packet, 1 CPU | ns/packet, {k_max} CPUs | {k_max} CPUs ÷ 1 CPU |"
        )?;
        writeln!(md, "|---|---:|---:|---:|")?;
        for row in rows {
            let one = row.by_cpus.first().map_or(f64::NAN, |(_, s)| s.median);
            let most = row.by_cpus.last().map_or(f64::NAN, |(_, s)| s.median);
            writeln!(
                md,
                "| {} | {one:.0} | {most:.0} | {:.2} |",
                row.label,
                most / one
            )?;
        }
        writeln!(md, "\n{}\n", goal_marker(GOAL))?;
    }
    for (label, sources) in ROWS {
        if !GOAL_ROWS.contains(&sources) {
            continue;
        }
        let Some(row) = rows.iter().find(|row| row.label == label) else {
            continue;
        };
        let one = row.by_cpus.first().map_or(f64::NAN, |(_, s)| s.median);
        let most = row.by_cpus.last().map_or(f64::NAN, |(_, s)| s.median);
        let ratio = most / one;
        writeln!(
            md,
            "- Goal: {label}, {k_max} CPUs ≤ {GOAL}× 1 CPU: {ratio:.2}× — **{}**",
            if ratio <= GOAL { "met" } else { "not met" }
        )?;
    }
    Ok(md)
}
