//! The `ablation` section: what each stage of the XDP program costs a packet, so that the next
//! optimisation aims at the biggest one (issue #16).
//!
//! The firewall is loaded once more per stage with its read-only global set to stop right after
//! that stage (`firewall_common::ablation`, `Firewall::stopping_after`), over the maps of the
//! full firewall: the same tables, state, leases and counters. Each run interleaves the empty and
//! one-lookup programs, the stopped programs in stage order and the full program on the same
//! frame, so a stage's increment is the difference of two numbers taken moments apart. The full
//! program runs first, so the state the stopped programs would not create (admission, the
//! source's entry, its lease) exists before any of them runs; a stopped program never changes
//! what the next one sees in a way the full program does not (it only leaves out later work).

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    time::Instant,
};

use anyhow::{Context as _, bail};
use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use firewall_common::{
    ablation::Stage,
    lease::{LEASE_SOURCE, Lease},
    map_names,
    program_names::FIREWALL,
    rules::TrackKey,
};
use firewall_userspace::{Firewall, Policy};
use ipnet::{IpNet, Ipv4Net};
use rand::{SeedableRng as _, rngs::SmallRng};

use crate::{
    packet::{
        BLOCKED_HOST, BLOCKED_V6_NET_MEMBER, XDP_DROP, XDP_PASS,
        lists::{blocklist, preload_sources},
    },
    packets::udp_frame,
    programs::{TestPrograms, program_names},
    report::{BenchOptions, median},
};

/// The rate-limited source of the limiter case (as in the `packet` section).
const LIMITED_SOURCE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

/// What follows the last stage: the full program less the stop after [`Stage::Events`].
const LAST: &str = "interface slot, debug flag, counters (full program)";

/// One case: its firewall, the stopped copies over its maps, the frame and the full verdict.
struct Case<'a> {
    name: String,
    /// What the case's biggest-stage sentence adds.
    note: &'static str,
    /// The source whose lease to hold after the warm-up ([`hold_lease`]), if it has one.
    leased: Option<Ipv4Addr>,
    full: &'a mut Firewall,
    stopped: &'a mut [Firewall],
    programs: &'a mut TestPrograms,
    frame: Vec<u8>,
    verdict: u32,
}

/// A case's figures, per run: the empty and one-lookup programs, then the cumulative cost of
/// each stopped program in stage order and of the full program (the last).
struct Runs {
    name: String,
    note: &'static str,
    /// Whether the case's source has a lease (the limiter case), else it is blocked.
    leased: bool,
    floors: Vec<f64>,
    lookups: Vec<f64>,
    cumulative: Vec<Vec<f64>>,
}

/// One test run of `frame` through `program`: (mean ns per run, return value of the last run).
fn ns_per_packet(program: &mut Xdp, frame: &[u8], repeat: u32) -> anyhow::Result<(f64, u32)> {
    let result = program.test_run(TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..TestRunOptions::default()
    })?;
    // The kernel reports the mean duration of one run over `repeat` runs, in whole ns.
    Ok((result.duration.as_nanos() as f64, result.return_value))
}

/// The stopped copies of `full`, one per stage, over its maps.
fn stopped_copies(full: &Firewall) -> anyhow::Result<Vec<Firewall>> {
    Stage::ALL
        .into_iter()
        .map(|stage| {
            full.stopping_after(stage)
                .with_context(|| format!("load the firewall stopping after {stage:?}"))
        })
        .collect()
}

/// Makes this CPU's lease on `source`'s buckets (rule 0) never expire and never run out. A
/// lease lasts 1 ms (`firewall_common::lease::LEASE_NS`): the full program renews it once per ms,
/// on one packet in thousands, but a program stopped before the buckets never does, and after
/// its first ms would look the source's state up on every packet, a path the full program
/// hardly takes. With the lease held for good, every program takes the leased path.
fn hold_lease(full: &mut Firewall, source: Ipv4Addr) -> anyhow::Result<()> {
    let key = TrackKey::v4(0, u32::from(source), 32);
    let slot = Lease::slot(LEASE_SOURCE, &key);
    let mut leases: aya::maps::PerCpuArray<_, Lease> =
        aya::maps::PerCpuArray::try_from(full.map_mut(map_names::LEASES)?)?;
    let mut held = 0;
    let values: Vec<Lease> = leases
        .get(&slot, 0)?
        .iter()
        .map(|lease| {
            let mut lease = *lease;
            if lease.holds(&key) {
                held += 1;
                lease.left = [u64::MAX / 2; 3];
                lease.expires = [u64::MAX; 3];
            }
            lease
        })
        .collect();
    if held == 0 {
        bail!("no CPU holds a lease on {source} after the warm-up");
    }
    leases.set(slot, aya::maps::PerCpuValues::try_from(values)?, 0)?;
    Ok(())
}

/// Runs `case` `opts.runs` times, every program in each run, checking every verdict.
fn measure(case: Case<'_>, opts: &BenchOptions) -> anyhow::Result<Runs> {
    let Case {
        name,
        note,
        leased,
        full,
        stopped,
        programs,
        frame,
        verdict,
    } = case;
    // Warm-up with the full program: the source's admission, state and lease exist from here.
    let (_, warmed) = ns_per_packet(full.program_mut(FIREWALL)?, &frame, 1_000)?;
    if warmed != verdict {
        bail!("{name}: the full program returned {warmed}, expected {verdict}");
    }
    if let Some(source) = leased {
        hold_lease(full, source)?;
    }
    let mut runs = Runs {
        name: name.clone(),
        note,
        leased: leased.is_some(),
        floors: Vec::new(),
        lookups: Vec::new(),
        cumulative: vec![Vec::new(); stopped.len() + 1],
    };
    for _ in 0..opts.runs {
        let (floor, _) = ns_per_packet(
            programs.program_mut(program_names::EMPTY)?,
            &frame,
            opts.repeat,
        )?;
        let (lookup, _) = ns_per_packet(
            programs.program_mut(program_names::ONE_LOOKUP)?,
            &frame,
            opts.repeat,
        )?;
        runs.floors.push(floor);
        runs.lookups.push(lookup);
        for (index, firewall) in stopped.iter_mut().enumerate() {
            let (ns, returned) =
                ns_per_packet(firewall.program_mut(FIREWALL)?, &frame, opts.repeat)?;
            if returned != XDP_PASS {
                bail!(
                    "{name}: stopped after {:?}, returned {returned}",
                    Stage::ALL[index]
                );
            }
            runs.cumulative[index].push(ns);
        }
        let (ns, returned) = ns_per_packet(full.program_mut(FIREWALL)?, &frame, opts.repeat)?;
        if returned != verdict {
            bail!("{name}: the full program returned {returned}, expected {verdict}");
        }
        runs.cumulative[stopped.len()].push(ns);
    }
    Ok(runs)
}

/// The table row of one stage: its name, then the figures.
struct Row {
    stage: &'static str,
    cumulative: f64,
    increment: f64,
    increment_min: f64,
    increment_max: f64,
    lookup_ratio: f64,
    share: f64,
}

impl Runs {
    /// One row per stage and one for what follows the last: the median of the per-run figures.
    fn rows(&self) -> Vec<Row> {
        let runs = self.floors.len();
        let own = |run: usize| self.cumulative[self.cumulative.len() - 1][run] - self.floors[run];
        let names = Stage::ALL.iter().map(|stage| stage.name()).chain([LAST]);
        names
            .enumerate()
            .map(|(index, stage)| {
                let before = |run: usize| {
                    if index == 0 {
                        self.floors[run]
                    } else {
                        self.cumulative[index - 1][run]
                    }
                };
                let mut increments: Vec<f64> = (0..runs)
                    .map(|run| self.cumulative[index][run] - before(run))
                    .collect();
                let mut ratios: Vec<f64> = (0..runs)
                    .map(|run| increments[run] / self.lookups[run].max(0.5))
                    .collect();
                let mut shares: Vec<f64> = (0..runs)
                    .map(|run| increments[run] / own(run).max(0.5))
                    .collect();
                let mut cumulative = self.cumulative[index].clone();
                let min = increments.iter().copied().fold(f64::INFINITY, f64::min);
                let max = increments.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                Row {
                    stage,
                    cumulative: median(&mut cumulative),
                    increment: median(&mut increments),
                    increment_min: min,
                    increment_max: max,
                    lookup_ratio: median(&mut ratios),
                    share: median(&mut shares),
                }
            })
            .collect()
    }
}

/// The `ablation` section, Markdown.
pub fn run(args: &BenchOptions) -> anyhow::Result<String> {
    // One CPU for the whole run: no migrations between the runs that are compared, and the
    // per-CPU leases the warm-up took are the ones the measured runs find.
    let _pinned = crate::support::OneCpu::pin_last()?;
    let mut opts = args.clone();
    if opts.quick {
        opts.runs = opts.runs.min(2);
        opts.repeat = opts.repeat.min(100_000);
    }
    let (prefixes, tracked) = if opts.quick {
        (10_000, 1_000)
    } else {
        (1_000_000, 1_000_000)
    };
    let mut rng = SmallRng::seed_from_u64(0xAB1A);
    let mut measured = Vec::new();

    // The rate limiter: a passed source under a rule, among `tracked` others.
    let policy_text = format!(
        "[[rule]]\nname = \"dns\"\nprotocol = \"udp\"\nports = [53]\n\
         per_source = {{ packets_per_second = {}, burst_packets = 1000000 }}\n\
         [limits]\nmax_tracked_sources = {}\n",
        u64::MAX / 4,
        tracked + 1024
    );
    let policy =
        firewall_userspace::Loaded::from_str(std::path::Path::new("bench.toml"), &policy_text)?
            .policy;
    let mut full = Firewall::load(&policy).context("load firewall (root needed)")?;
    let started = Instant::now();
    preload_sources(&mut full, tracked, &mut rng)?;
    eprintln!(
        "bench: {tracked} tracked sources preloaded in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let mut programs = TestPrograms::beside(&full)?;
    let mut stopped = stopped_copies(&full)?;
    measured.push(measure(
        Case {
            name: format!(
                "IPv4 source under a rule, passed (lease covers it), {} tracked sources",
                thousands(tracked)
            ),
            note: "No rule of this policy bans, so the ban check is skipped: the clock and ban \
                   stage is the clock read (`bpf_ktime_get_ns`) alone. The source's state is \
                   not looked up (the lease covers the packet): that stage is the rule's \
                   configuration, the two keys, the lease slot's hash and its per-CPU read.",
            leased: Some(LIMITED_SOURCE),
            full: &mut full,
            stopped: &mut stopped,
            programs: &mut programs,
            frame: udp_frame(IpAddr::V4(LIMITED_SOURCE)),
            verdict: XDP_PASS,
        },
        &opts,
    )?);
    drop((stopped, programs, full));

    // The lists: blocked sources among `prefixes` prefixes of the `packet` section's mix.
    let block = blocklist(prefixes, &mut rng);
    let v4 = block
        .iter()
        .filter(|net| matches!(net, IpNet::V4(_)))
        .count();
    let v6 = block.len() - v4;
    let defaults = firewall_userspace::policy::Limits::default();
    let policy = Policy {
        allow: vec![IpNet::V4(Ipv4Net::new_assert(
            crate::packet::ALLOWED_HOST,
            32,
        ))],
        block,
        limits: firewall_userspace::policy::Limits {
            max_v4_prefixes: defaults.max_v4_prefixes.max(u32::try_from(v4)? + 1024),
            max_v6_prefixes: defaults.max_v6_prefixes.max(u32::try_from(v6)? + 1024),
            ..defaults
        },
        ..Policy::default()
    };
    let started = Instant::now();
    let mut full = Firewall::load(&policy).context("load firewall (root needed)")?;
    eprintln!(
        "bench: {prefixes} prefixes loaded in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let mut programs = TestPrograms::beside(&full)?;
    let mut stopped = stopped_copies(&full)?;
    for (name, source, note) in [
        (
            format!(
                "IPv4 blocked source (/32 entry), {} prefixes",
                thousands(prefixes)
            ),
            IpAddr::V4(BLOCKED_HOST),
            "The /32 is found by the first probe. The event check is the coarse clock, the \
             per-CPU event cap and the suppressed counter (past the cap's burst).",
        ),
        (
            format!(
                "IPv6 blocked source (/48 entry, found by the fourth probe), {} prefixes",
                thousands(prefixes)
            ),
            IpAddr::V6(BLOCKED_V6_NET_MEMBER),
            "The source's /32 holds four lengths, so the /128, /64 and /56 probes miss before \
             the /48 hits: four hash lookups of 20-byte keys.",
        ),
    ] {
        measured.push(measure(
            Case {
                name,
                note,
                leased: None,
                full: &mut full,
                stopped: &mut stopped,
                programs: &mut programs,
                frame: udp_frame(source),
                verdict: XDP_DROP,
            },
            &opts,
        )?);
    }
    for runs in &measured {
        for row in runs.rows() {
            eprintln!(
                "bench: {}: {}: {:.1} ns cumulative, {:+.1} ns",
                runs.name, row.stage, row.cumulative, row.increment
            );
        }
    }
    markdown(&measured, &opts)
}

/// 1000000 as "1M", 10000 as "10k".
fn thousands(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

fn markdown(measured: &[Runs], opts: &BenchOptions) -> anyhow::Result<String> {
    let mut floors: Vec<f64> = measured.iter().flat_map(|r| r.floors.clone()).collect();
    let mut lookups: Vec<f64> = measured.iter().flat_map(|r| r.lookups.clone()).collect();
    let floor = median(&mut floors);
    let lookup = median(&mut lookups);
    let mut md = String::new();
    writeln!(md, "## Stage costs (ablation)\n")?;
    if opts.quick {
        writeln!(
            md,
            "*Quick run (smaller maps, fewer runs and repeats): not for the report.*\n"
        )?;
    }
    writeln!(
        md,
        "What each stage of the XDP program costs one packet, so that the next optimisation aims \
         at the biggest. The firewall is loaded once more per stage, over the same maps (tables, \
         state, leases, counters), with its read-only global `{}` set to stop right after that \
         stage and return `XDP_PASS` uncounted (`firewall_common::ablation`; the verifier knows \
         the value, so the shipped program, which never sets it, walks and runs no stop). Each \
         of {} runs interleaves, on the same frame, the empty program, the one-lookup program, \
         the stopped programs in stage order and the full program, every one with \
         `BPF_PROG_TEST_RUN` (`repeat` = {}); the benchmark process is pinned to the last CPU. \
         Every verdict is checked (the stopped programs pass, the full one gives the case's).\n",
        firewall_common::ablation::STOP_AFTER_GLOBAL,
        opts.runs,
        opts.repeat
    )?;
    writeln!(
        md,
        "- Cumulative: the program stopped after the stage, ns/packet (median). Increment: its \
         difference to the program stopped one stage earlier in the same run (the first \
         stage's, to the empty program, so `BPF_PROG_TEST_RUN`'s own cost is in no stage), \
         median and min..max over the runs. The kernel reports whole ns, and each stopped \
         program is a JIT image of its own (the verifier drops the code after the stop, which \
         moves the rest), so a stage that does nothing for the packet reads a few ns either \
         way: the blocked cases measure how many (see their last sentence), and an increment \
         within that is no cost. The medians of the increments need not \
         add up to the median of the full program exactly.\n\
         - Share: the increment as a part of the full program's cost above the empty program \
         (median over the runs). × one lookup: the increment over the one-lookup program's whole \
         cost.\n\
         - Empty XDP program: {floor:.1} ns/packet; one-lookup program (`{}`): {lookup:.1} \
         ns/packet (medians over all runs).\n\
         - State: the full program runs first (1,000 packets), so the source's admission, its \
         state entry and this CPU's lease exist before any stopped program runs, as they do \
         for a source that keeps sending. A lease lasts 1 ms: the full program renews it on \
         one packet in thousands, a program stopped before the buckets never, and would then \
         look the source's state up on every packet, a path the full program hardly takes; so \
         after the warm-up the benchmark makes the lease never expire nor run out (it writes \
         this CPU's lease slot), and every program takes the leased path. Otherwise a stopped \
         program only leaves out later work, and changes nothing the next program sees that \
         the full program would not. Drop events are on with the default cap, as shipped: past \
         the first packets, a drop costs the per-CPU cap check and a suppressed counter.\n\
         - Cut points: the prefix summary is the per-/16 array entry (IPv4) or the /32's hash \
         entry (IPv6; stopping there runs the two probe loops empty, two tests, rather than \
         returning, because with a return there LLVM spilled an undefined register in the loops, \
         which the verifier rejects); the probes \
         include the allow/block decision; the rule, ban, state and bucket stages are the rate \
         limiter's (`ratelimit::check`) and cost a blocked packet nothing but the stop's test.\n",
        program_names::ONE_LOOKUP
    )?;
    for runs in measured {
        writeln!(md, "### {}\n", runs.name)?;
        writeln!(
            md,
            "| stage (stop after) | cumulative ns (median) | + ns (median) | + ns spread | share | + × one lookup (median) |"
        )?;
        writeln!(md, "|---|---:|---:|---:|---:|---:|")?;
        let rows = runs.rows();
        for row in &rows {
            writeln!(
                md,
                "| {} | {:.1} | {:+.1} | {:+.0}..{:+.0} | {:.0}% | {:.2} |",
                row.stage,
                row.cumulative,
                row.increment,
                row.increment_min,
                row.increment_max,
                row.share * 100.0,
                row.lookup_ratio
            )?;
        }
        let own = {
            let last = runs.cumulative.len() - 1;
            let mut own: Vec<f64> = (0..runs.floors.len())
                .map(|run| runs.cumulative[last][run] - runs.floors[run])
                .collect();
            median(&mut own)
        };
        if let Some(biggest) = rows
            .iter()
            .max_by(|a, b| a.increment.total_cmp(&b.increment))
        {
            writeln!(
                md,
                "\nBiggest stage: **{}**, {:+.1} ns of the {own:.1} ns the program costs above the \
                 empty one ({:.0}%), {:.2}× the one-lookup program. {}\n",
                biggest.stage,
                biggest.increment,
                biggest.share * 100.0,
                biggest.lookup_ratio,
                runs.note
            )?;
        }
        if !runs.leased {
            // A blocked packet skips the rate limiter: the programs stopped after its four
            // stages run the same instructions, and differ only by their JIT images.
            let same: Vec<f64> = rows[Stage::Rule as usize..=Stage::Bucket as usize]
                .iter()
                .map(|row| row.cumulative)
                .collect();
            let (low, high) = same
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), ns| {
                    (low.min(*ns), high.max(*ns))
                });
            writeln!(
                md,
                "Resolution: a blocked packet skips the rate limiter, so the programs stopped \
                 after the rule match, the ban check, the state and the buckets run the same \
                 instructions; their medians ({low:.0}..{high:.0} ns) differ by {:.0} ns, \
                 what a JIT image of its own alone does to a figure in this case: an \
                 increment within that is noise.\n",
                high - low
            )?;
        }
    }
    Ok(md)
}
