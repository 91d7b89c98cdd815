//! Scale, side by side (issue #17 item 5): a community blocklist's worth of CrowdSec decisions
//! (100k bans) from one LAPI, applied by apifw and by Debian's `crowdsec-firewall-bouncer` in
//! nftables mode: how long each takes from a fresh start, what CPU it spends, what a delta of 10k
//! new decisions costs while both run, and what a flood from the banned sources costs the
//! receiving CPU with each.
//!
//! Topology: one LAPI ([`lapi::Source`]) in a namespace of its own, holding the decisions; per
//! bouncer and round a flood lab ([`crate::flood::lab::Lab`]: a generator and a target namespace
//! joined by a veth) whose target namespace runs the bouncer and is joined to the LAPI by a link
//! of its own ([`lapi::Link`]). Every round starts both bouncers fresh (a new namespace, process
//! and bouncer key, so the first request is the full `startup=true` pull, as on every bouncer
//! start), one after the other in alternating order, then measures both at rest, then imports the
//! delta while both run, then floods each, then removes everything (and the delta from the
//! LAPI's database).
//!
//! The flood reuses the flood benchmark's lab (built under namespace names of the fleet's, since
//! both bouncers' labs live at once: [`lab`]) and generator (`apifw_flood_gen`, pinned to the
//! first CPU; the receiving veth's NAPI thread pinned to the last) without changing them; the
//! flood's sources are 2^16 of the banned addresses (the generator varies the low bits of
//! 198.18.0.0/15, and the blocklist starts at 198.18.0.0), each once per 65 536 frames.

pub(crate) mod bouncer;
mod cpu;
pub(crate) mod lapi;

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use self::{
    bouncer::{Held, Kind, Reached, Running, Settle, Wait, wait_held},
    cpu::Cpu,
    lapi::{Import, Link, Source},
};
use crate::{
    flood::lab::Lab,
    generator::Generator,
    loadbench::TempDir,
    report::{BenchOptions, Spread, tool_version},
};

/// The goal: this many seconds from a fresh start to every decision held.
const GOAL_SECONDS: f64 = 5.0;
/// When a bouncer counts as done with a delta short of all of it (the LAPI's delta answers can
/// miss decisions of a bulk import: see [`bouncer::Settle`]).
const SETTLE: Settle = Settle {
    quiet: Duration::from_secs(3),
    busy: 0.3,
};
/// The scenario (`reason`) of the imports.
const BLOCKLIST_REASON: &str = "apifw-bench-blocklist";
const DELTA_REASON: &str = "apifw-bench-delta";

/// How much and how long.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    decisions: u32,
    delta: u32,
    runs: usize,
    /// Both bouncers at rest, holding every decision.
    idle: Duration,
    warm_up: Duration,
    flood: Duration,
    /// Hang guards: apifw's apply, the firewall bouncer's, a delta.
    apifw_deadline: Duration,
    nftables_deadline: Duration,
    delta_deadline: Duration,
}

impl Sizes {
    fn new(opts: &BenchOptions, runs: usize) -> Self {
        if opts.quick {
            Self {
                decisions: 5_000,
                delta: 500,
                runs: 1,
                idle: Duration::from_secs(1),
                warm_up: Duration::from_millis(200),
                flood: Duration::from_secs(1),
                apifw_deadline: Duration::from_secs(60),
                nftables_deadline: Duration::from_secs(300),
                delta_deadline: Duration::from_secs(120),
            }
        } else {
            Self {
                decisions: 100_000,
                delta: 10_000,
                runs,
                idle: Duration::from_secs(5),
                warm_up: Duration::from_millis(500),
                flood: Duration::from_secs(3),
                apifw_deadline: Duration::from_secs(120),
                nftables_deadline: Duration::from_secs(1800),
                delta_deadline: Duration::from_secs(900),
            }
        }
    }

    fn deadline(&self, kind: Kind) -> Duration {
        match kind {
            Kind::Apifw => self.apifw_deadline,
            Kind::Nftables => self.nftables_deadline,
        }
    }

    /// Low bits of the flood's sources: at most 16, and every source banned.
    fn flood_bits(&self) -> u32 {
        (u32::BITS - 1 - self.decisions.leading_zeros()).min(16)
    }
}

/// One fresh start.
#[derive(Clone, Copy, Debug)]
struct Apply {
    seconds: f64,
    cpu: Cpu,
    /// The bouncer's own start within that: seconds and CPU until its log said it was up.
    start: Option<(f64, Cpu)>,
    /// The LAPI's CPU over the same time.
    lapi: Cpu,
    rss_mib: Option<f64>,
    held: Held,
}

/// One delta.
#[derive(Clone, Copy, Debug)]
struct Delta {
    /// From the start of the import to the bouncer holding it (or holding all it will get
    /// from the LAPI's delta answers).
    seconds: f64,
    cpu: Cpu,
    /// New decisions the LAPI's delta answers brought it (its log's count).
    received: u64,
    held: Held,
}

/// One flood.
#[derive(Clone, Copy, Debug)]
struct Flood {
    seconds: f64,
    offered: u64,
    absorbed: u64,
    lost: u64,
    dropped: u64,
    receiver_ns: u64,
}

impl Flood {
    fn ns_per_packet(&self) -> f64 {
        self.receiver_ns as f64 / (self.absorbed as f64).max(1.0)
    }
    fn absorbed_pps(&self) -> f64 {
        self.absorbed as f64 / self.seconds
    }
    fn lost_share(&self) -> f64 {
        self.lost as f64 / (self.offered as f64).max(1.0)
    }
    fn dropped_share(&self) -> f64 {
        self.dropped as f64 / (self.absorbed as f64).max(1.0)
    }
}

/// Everything measured of one bouncer.
struct Row {
    kind: Kind,
    applies: Vec<Apply>,
    /// Share of one CPU at rest, holding every decision.
    idle: Vec<f64>,
    deltas: Vec<Delta>,
    floods: Vec<Flood>,
    /// Why the bouncer was not measured (further), if it was not.
    stopped: Option<String>,
    /// Errors of single deltas or floods (the bouncer went on).
    errors: Vec<String>,
}

impl Row {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            applies: Vec::new(),
            idle: Vec::new(),
            deltas: Vec::new(),
            floods: Vec::new(),
            stopped: None,
            errors: Vec::new(),
        }
    }
}

/// A bouncer running in its lab. Field order: the bouncer stops, then its link to the LAPI and
/// its namespaces go.
struct Live {
    row: usize,
    running: Running,
    _link: Link,
    lab: Lab,
}

/// What the section says about its setup, measured once.
struct Setup {
    import: Import,
    answer_bytes: usize,
    deltas: Vec<Import>,
    ruleset: Option<String>,
    flood_bits: u32,
}

/// Measures both bouncers and returns the report's section.
pub fn run(opts: &BenchOptions, runs: usize) -> anyhow::Result<String> {
    let sizes = Sizes::new(opts, runs);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    ensure!(
        cpus >= 2,
        "the flood needs two CPUs: one generates, one receives"
    );
    let (generator_cpu, receiver_cpu) = (0, cpus - 1);
    let mut rows = [Row::new(Kind::Apifw), Row::new(Kind::Nftables)];
    if let Err(err) = bouncer::firewall_bouncer_installed() {
        rows[1].stopped = Some(format!("{err:#}"));
    }

    let files = TempDir::new("apifw-fleet-decisions")?;
    let blocklist = files.0.join("blocklist.csv");
    let delta = files.0.join("delta.csv");
    std::fs::write(
        &blocklist,
        lapi::decisions_csv(0, sizes.decisions, BLOCKLIST_REASON)?,
    )?;
    std::fs::write(
        &delta,
        lapi::decisions_csv(sizes.decisions, sizes.delta, DELTA_REASON)?,
    )?;
    let source = Source::start()?;
    let import = source.import(&blocklist).context("import the blocklist")?;
    eprintln!(
        "bench: fleet: {} decisions imported in {:.2} s (LAPI CPU {:.2} s)",
        sizes.decisions,
        import.seconds,
        import.lapi.total()
    );
    let probe = source.add_bouncer("apifw-bench-probe")?;
    let (answer_bytes, listed) = source.startup_answer(&probe)?;
    ensure!(
        listed == sizes.decisions as usize,
        "the LAPI lists {listed} decisions after importing {}",
        sizes.decisions
    );
    let generator = Generator::start(generator_cpu).context("start the flood generator")?;
    let mut setup = Setup {
        import,
        answer_bytes,
        deltas: Vec::new(),
        ruleset: None,
        flood_bits: sizes.flood_bits(),
    };

    for round in 0..sizes.runs {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut live: Vec<Live> = Vec::new();
        for index in order {
            let row = &mut rows[index];
            if row.stopped.is_some() {
                continue;
            }
            match apply(&source, row.kind, round, index, &sizes) {
                Ok((running, link, lab, sample)) => {
                    eprintln!(
                        "bench: fleet round {round}, {}: {} decisions held after {:.2} s, CPU {:.2} s \
                         (sys {:.2} s)",
                        row.kind.tag(),
                        sizes.decisions,
                        sample.seconds,
                        sample.cpu.total(),
                        sample.cpu.sys
                    );
                    if row.kind == Kind::Nftables && setup.ruleset.is_none() {
                        setup.ruleset = running.nft_ruleset().ok();
                    }
                    row.applies.push(sample);
                    live.push(Live {
                        row: index,
                        running,
                        _link: link,
                        lab,
                    });
                }
                Err(err) => {
                    eprintln!("bench: fleet {}: not measured: {err:#}", row.kind.tag());
                    row.stopped = Some(format!("{err:#}"));
                }
            }
        }
        if live.is_empty() {
            continue;
        }
        idle(&mut live, &mut rows, sizes.idle)?;
        let imported = delta_round(&source, &delta, &mut live, &mut rows, &sizes);
        // Whatever happened to the delta, the next round's bouncers must find the blocklist alone.
        source
            .remove(DELTA_REASON)
            .context("remove the delta from the LAPI")?;
        setup.deltas.push(imported?);
        for bouncer in &live {
            let row = &mut rows[bouncer.row];
            match flood(
                bouncer,
                &generator,
                &sizes,
                generator_cpu,
                receiver_cpu,
                setup.flood_bits,
            ) {
                Ok(sample) => {
                    eprintln!(
                        "bench: fleet round {round}, {} under flood: {:.0} ns/packet, dropped {:.1}%",
                        row.kind.tag(),
                        sample.ns_per_packet(),
                        sample.dropped_share() * 100.0
                    );
                    row.floods.push(sample);
                }
                Err(err) => row.errors.push(format!("flood: {err:#}")),
            }
        }
        drop(live);
    }
    drop(generator);
    Ok(markdown(&rows, &setup, &sizes)?)
}

/// Starts `kind` fresh against `source` and waits until it holds every decision.
fn apply(
    source: &Source,
    kind: Kind,
    round: usize,
    index: usize,
    sizes: &Sizes,
) -> anyhow::Result<(Running, Link, Lab, Apply)> {
    let lab = Lab::named(&format!("fleetG{index}"), &format!("fleetT{index}"))?;
    let link = Link::new(source, &lab.target, u8::try_from(index)?)?;
    let key = source.add_bouncer(&format!("{}-{round}", kind.tag()))?;
    let lapi_before = source.cpu();
    let mut running = Running::start(kind, &lab, &link.url, &key)?;
    let target = u64::from(sizes.decisions);
    let deadline = running.started + sizes.deadline(kind);
    let reached = wait_held(&mut [&mut running], target, deadline, None)?;
    let lapi = source.cpu().since(lapi_before);
    let (reached, _) = settled(&reached[0], &running, target, sizes.deadline(kind))?;
    let held = running.held_in_kernel()?;
    ensure!(
        held.decisions >= target && held.kernel >= target,
        "{} says it holds {target} decisions, the kernel has {held:?}",
        kind.tag()
    );
    let sample = Apply {
        seconds: reached.at.duration_since(running.started).as_secs_f64(),
        cpu: reached.cpu,
        start: running.start_done.map(|done| {
            (
                done.at.duration_since(running.started).as_secs_f64(),
                done.cpu,
            )
        }),
        lapi,
        rss_mib: running.rss_mib(),
        held,
    };
    Ok((running, link, lab, sample))
}

/// The outcome of a wait (when, and what the bouncer held by its log), or why there is none.
fn settled(
    wait: &Wait,
    running: &Running,
    target: u64,
    within: Duration,
) -> anyhow::Result<(Reached, u64)> {
    match wait {
        Wait::Reached(reached) => Ok((*reached, target)),
        Wait::Settled(reached, held) => Ok((*reached, *held)),
        Wait::Failed(err) => bail!("{err}"),
        Wait::Pending(held) => bail!(
            "held {held} of {target} decisions after {:.0} s (hang guard); log:\n{}",
            within.as_secs_f64(),
            running.log_tail()
        ),
    }
}

/// Both bouncers at rest, every decision held: their CPU over `window`, as a share of one CPU.
fn idle(live: &mut [Live], rows: &mut [Row], window: Duration) -> anyhow::Result<()> {
    let before: Vec<Cpu> = live
        .iter()
        .map(|bouncer| bouncer.running.cpu())
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    std::thread::sleep(window);
    let seconds = started.elapsed().as_secs_f64();
    for (bouncer, before) in live.iter().zip(before) {
        let spent = bouncer.running.cpu()?.since(before);
        rows[bouncer.row].idle.push(spent.total() / seconds);
    }
    Ok(())
}

/// Imports the delta while every bouncer of `live` runs and waits until each holds it; a
/// bouncer that fails or times out is stopped (removed from `live`).
fn delta_round(
    source: &Source,
    file: &std::path::Path,
    live: &mut Vec<Live>,
    rows: &mut [Row],
    sizes: &Sizes,
) -> anyhow::Result<Import> {
    let before: Vec<Cpu> = live
        .iter()
        .map(|bouncer| bouncer.running.cpu())
        .collect::<Result<_, _>>()?;
    let target = u64::from(sizes.decisions + sizes.delta);
    let started = Instant::now();
    // The import runs on a thread of its own while the bouncers' logs are read here: a bouncer
    // may apply part of the delta before the import has finished.
    let (import, outcomes) = std::thread::scope(|scope| {
        let import = scope.spawn(|| source.import(file));
        let mut running: Vec<&mut Running> = live
            .iter_mut()
            .map(|bouncer| &mut bouncer.running)
            .collect();
        let outcomes = wait_held(
            &mut running,
            target,
            started + sizes.delta_deadline,
            Some(SETTLE),
        );
        let import = import
            .join()
            .map_err(|_| anyhow::anyhow!("the import thread panicked"));
        (import, outcomes)
    });
    let import = import?.context("import the delta")?;
    let outcomes = outcomes?;
    let mut failed = Vec::new();
    for (i, ((bouncer, before), outcome)) in live.iter().zip(before).zip(&outcomes).enumerate() {
        let row = &mut rows[bouncer.row];
        let result = settled(outcome, &bouncer.running, target, sizes.delta_deadline).and_then(
            |(reached, logged)| {
                let held = bouncer.running.held_in_kernel()?;
                ensure!(
                    held.decisions >= logged && held.kernel >= logged,
                    "{} says it holds {logged} decisions, the kernel has {held:?}",
                    row.kind.tag()
                );
                Ok(Delta {
                    seconds: reached.at.duration_since(started).as_secs_f64(),
                    cpu: reached.cpu.since(before),
                    received: logged.saturating_sub(u64::from(sizes.decisions)),
                    held,
                })
            },
        );
        match result {
            Ok(sample) => {
                eprintln!(
                    "bench: fleet delta, {}: {} of {} more held after {:.2} s, CPU {:.2} s",
                    row.kind.tag(),
                    sample.received,
                    sizes.delta,
                    sample.seconds,
                    sample.cpu.total()
                );
                row.deltas.push(sample);
            }
            Err(err) => {
                eprintln!("bench: fleet delta, {}: {err:#}", row.kind.tag());
                row.stopped = Some(format!("delta: {err:#}"));
                failed.push(i);
            }
        }
    }
    for i in failed.into_iter().rev() {
        live.remove(i);
    }
    Ok(import)
}

/// A flood from banned sources at `bouncer`'s veth: what its receiving NAPI thread spends.
fn flood(
    bouncer: &Live,
    generator: &Generator,
    sizes: &Sizes,
    generator_cpu: usize,
    receiver_cpu: usize,
    bits: u32,
) -> anyhow::Result<Flood> {
    let lab = &bouncer.lab;
    lab.pin_napi(receiver_cpu)?;
    // The bouncer (still polling the LAPI every second) stays off the receiving CPU.
    bouncer.running.pin(generator_cpu)?;
    let netns = lab.generator.path();
    let ifindex = lab.generator_ifindex;
    generator.flood(netns.clone(), ifindex, &lab.frame, bits, sizes.warm_up)?;
    let before = lab.counters()?;
    let dropped_before = bouncer.running.dropped()?;
    let sent = generator.flood(netns, ifindex, &lab.frame, bits, sizes.flood)?;
    let after = lab.counters()?;
    let dropped_after = bouncer.running.dropped()?;
    Ok(Flood {
        seconds: sent.seconds,
        offered: sent.frames,
        absorbed: after.rx_packets.saturating_sub(before.rx_packets),
        lost: after.rx_dropped.saturating_sub(before.rx_dropped),
        dropped: dropped_after.saturating_sub(dropped_before),
        receiver_ns: after.napi_ns.saturating_sub(before.napi_ns),
    })
}

fn spread<T>(samples: &[T], value: impl Fn(&T) -> f64) -> Spread {
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

/// A ratio with the digits it deserves: `93×`, `4.2×`, `0.18×`.
fn ratio(value: f64) -> String {
    if value >= 10.0 {
        format!("{value:.0}")
    } else if value >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// `100000` as `100,000`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A table cell for a row without samples.
fn not_measured(row: &Row) -> String {
    let why = row
        .stopped
        .as_deref()
        .or(row.errors.first().map(String::as_str))
        .unwrap_or("no runs");
    format!(
        "not measured: {}",
        why.lines()
            .next()
            .unwrap_or_default()
            .replace('|', "\\|")
            .chars()
            .take(200)
            .collect::<String>()
    )
}

fn markdown(rows: &[Row], setup: &Setup, sizes: &Sizes) -> Result<String, std::fmt::Error> {
    let mut md = String::new();
    let n = thousands(u64::from(sizes.decisions));
    let delta = thousands(u64::from(sizes.delta));
    let bouncer_version = tool_version(
        "dpkg-query",
        &["-W", "-f=${Version}", "crowdsec-firewall-bouncer"],
    );
    let lapi_version = tool_version("dpkg-query", &["-W", "-f=${Version}", "crowdsec"]);
    let last = u32::from(lapi::DECISION_NET) + sizes.decisions - 1;
    writeln!(
        md,
        "## Scale: {n} CrowdSec decisions, side by side (issue #17)\n"
    )?;
    writeln!(
        md,
        "The same {n} decisions from the same CrowdSec LAPI, applied by apifw and by Debian's \
         `crowdsec-firewall-bouncer` {bouncer_version} in nftables mode: the time from a fresh \
         start until all of them are enforced, the CPU that costs, a delta of {delta} new \
         decisions while both run, and what a flood from the banned sources costs the receiving \
         CPU with each. Each bouncer runs in a network namespace of its own, on a veth of a flood \
         lab like the `flood` section's, and reaches the LAPI over a second veth; both poll it \
         every second. {} round{}; in each, both bouncers start fresh one after the other (the \
         order alternates), then both are measured at rest for {:.0} s, then the delta is \
         imported while both run, then each is flooded. Tables give the median and the spread \
         (min..max) over the rounds.\n",
        sizes.runs,
        if sizes.runs == 1 { "" } else { "s" },
        sizes.idle.as_secs_f64()
    )?;
    writeln!(
        md,
        "- LAPI: Debian's `crowdsec` {lapi_version}, LAPI only (`crowdsec -no-cs`), with a \
         configuration and sqlite database of its own, in its own namespace.\n\
         - Decisions: {n} bans of single addresses (scope `Ip`, type `ban`, 24 h), the first {n} \
         addresses of 198.18.0.0/15 (RFC 2544's benchmarking range, 131,072 addresses: \
         198.18.0.0 to {}), imported once with `cscli decisions import -i FILE` from a CSV \
         (`duration,scope,type,value,reason`): **{:.2} s** wall, {:.2} s of the LAPI's CPU and \
         {:.2} s of `cscli`'s. That is the LAPI's cost, paid once whatever the bouncers. Its \
         answer to a bouncer's `startup=true` request then lists {n} decisions in {:.1} MB of \
         JSON. No `Range` decisions: a community blocklist is single addresses.\n\
         - apifw: `apifw run` (release build) on the lab's veth, native XDP, `[limits] max_bans \
         = 262144`, `[crowdsec] poll_interval = \"1s\"` and `resync_interval = \"1h\"` (no full \
         resync inside a round, where it would land in the other bouncer's measurement; the \
         firewall bouncer has no resync at all), defaults otherwise.\n\
         - crowdsec-firewall-bouncer: Debian's configuration template \
         (`/etc/crowdsec/bouncers/crowdsec-firewall-bouncer.yaml`) with `mode: nftables`, \
         `update_frequency: 1s` (the template's 10 s would only add waiting), `daemonize: false` \
         and the lab's LAPI, key and log directory; IPv6 on as in the template.",
        std::net::Ipv4Addr::from(last),
        setup.import.seconds,
        setup.import.lapi.total(),
        setup.import.cscli.total(),
        setup.answer_bytes as f64 / 1e6
    )?;
    if let Some(ruleset) = &setup.ruleset {
        let ruleset: String = ruleset
            .lines()
            .map(|line| format!("  {}\n", line.replace('\t', "    ")))
            .collect();
        writeln!(
            md,
            "  What it installs, as `nft list chain` and `nft -t list set` show it in its \
             namespace:\n\n  ```text\n{ruleset}  ```"
        )?;
    }

    // Time to apply.
    writeln!(md, "\n### Time to apply {n} decisions from a fresh start\n")?;
    writeln!(
        md,
        "Timed from spawning the bouncer's process until its log says it holds all {n} (its log \
         file read every 10 ms: apifw's `CrowdSec decisions applied ... held={}`, the firewall \
         bouncer's `{} decisions added`), then checked in the kernel: apifw's `status` (CrowdSec \
         decisions held, entries of its ban map), the firewall bouncer's set counted in `nft -j \
         list set`. The start is included: apifw loads and attaches its XDP program, the \
         firewall bouncer creates its table; both then make the `startup=true` request that every \
         bouncer start (and every refresh of a community list) makes.\n",
        sizes.decisions, sizes.decisions
    )?;
    writeln!(
        md,
        "- **CPU s**: user + system CPU time of the bouncer's process (`/proc/PID/stat`, all its \
         threads) over the apply. The kernel's work on its syscalls is its system time: the \
         netlink messages that fill the nftables set, the `bpf()` calls that fill the ban map. \
         **sys**: the system part.\n\
         - **start**, **start CPU**: the part of the seconds and of the CPU time that the \
         bouncer's own start took, until its log says it is up and about to ask the LAPI \
         (apifw: `apifw running`, its XDP program loaded, verified and attached; the firewall \
         bouncer: `nftables initiated`, its table made).\n\
         - **LAPI CPU s**: the LAPI's CPU time over the same interval (building and sending the \
         answer).\n\
         - **RSS**: the bouncer's resident memory right after (kernel memory of the set or map \
         not included).\n\
         - **at rest**: the bouncer's CPU over {:.0} s holding all {n} (and the delta not yet \
         there), as a share of one CPU.\n",
        sizes.idle.as_secs_f64()
    )?;
    writeln!(
        md,
        "| bouncer | seconds (median) | spread | start | CPU s (median) | CPU spread | sys | start CPU | LAPI CPU s | RSS | at rest | held in kernel |"
    )?;
    writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )?;
    for row in rows {
        if row.applies.is_empty() {
            writeln!(
                md,
                "| {} | {} | | | | | | | | | | |",
                row.kind.name(),
                not_measured(row)
            )?;
            continue;
        }
        let seconds = spread(&row.applies, |a| a.seconds);
        let cpu = spread(&row.applies, |a| a.cpu.total());
        let sys = spread(&row.applies, |a| a.cpu.sys);
        let lapi = spread(&row.applies, |a| a.lapi.total());
        let start = spread(&row.applies, |a| a.start.map_or(f64::NAN, |(s, _)| s));
        let start_cpu = spread(&row.applies, |a| {
            a.start.map_or(f64::NAN, |(_, c)| c.total())
        });
        let rss = spread(&row.applies, |a| a.rss_mib.unwrap_or(f64::NAN));
        let rest = if row.idle.is_empty() {
            "–".to_owned()
        } else {
            format!("{:.1}%", Spread::of(&row.idle).median * 100.0)
        };
        let held = row
            .applies
            .last()
            .map_or(String::new(), |a| held_text(row.kind, a.held));
        writeln!(
            md,
            "| {} | {:.2} | {:.2}..{:.2} | {:.2} | {:.2} | {:.2}..{:.2} | {:.2} | {:.2} | {:.2} | {:.0} MiB | {rest} | {held} |",
            row.kind.name(),
            seconds.median,
            seconds.min,
            seconds.max,
            start.median,
            cpu.median,
            cpu.min,
            cpu.max,
            sys.median,
            start_cpu.median,
            lapi.median,
            rss.median,
        )?;
    }
    writeln!(md, "\n{}", crate::plot::goal_marker(GOAL_SECONDS))?;
    let median_of = |kind: Kind, value: fn(&Apply) -> f64| {
        rows.iter()
            .find(|row| row.kind == kind && !row.applies.is_empty())
            .map(|row| spread(&row.applies, value).median)
    };
    match median_of(Kind::Apifw, |a| a.seconds) {
        Some(apifw) => {
            let verdict = if apifw <= GOAL_SECONDS {
                "**met**"
            } else {
                "**not met**"
            };
            write!(
                md,
                "- Goal ({n} decisions applied within seconds: at most {GOAL_SECONDS:.0} s from a \
                 fresh start): {verdict} — apifw {apifw:.2} s"
            )?;
            match (
                median_of(Kind::Nftables, |a| a.seconds),
                median_of(Kind::Apifw, |a| a.cpu.total()),
                median_of(Kind::Nftables, |a| a.cpu.total()),
            ) {
                (Some(nft), Some(apifw_cpu), Some(nft_cpu)) => writeln!(
                    md,
                    "; crowdsec-firewall-bouncer {nft:.1} s, {}× as long, with {}× the CPU \
                     ({nft_cpu:.1} s against {apifw_cpu:.2} s).",
                    ratio(nft / apifw.max(1e-3)),
                    ratio(nft_cpu / apifw_cpu.max(1e-3))
                )?,
                _ => writeln!(md, "; the firewall bouncer was not measured.")?,
            }
        }
        None => writeln!(
            md,
            "- Goal ({n} decisions applied within seconds: at most {GOAL_SECONDS:.0} s): \
             **not met** — apifw was not measured."
        )?,
    }
    if let (Some(seconds), Some(cpu), Some(start), Some(start_cpu)) = (
        median_of(Kind::Apifw, |a| a.seconds),
        median_of(Kind::Apifw, |a| a.cpu.total()),
        median_of(Kind::Apifw, |a| a.start.map_or(f64::NAN, |(s, _)| s)),
        median_of(Kind::Apifw, |a| {
            a.start.map_or(f64::NAN, |(_, c)| c.total())
        }),
    ) && start.is_finite()
    {
        writeln!(
            md,
            "- Of apifw's {seconds:.2} s, {start:.2} s ({start_cpu:.2} s of CPU) are its own start, \
             before its first request to the LAPI; from there to all {n} held (fetching, parsing \
             and writing them into the ban map): {:.2} s and {:.2} s of CPU (differences of the \
             medians).",
            seconds - start,
            cpu - start_cpu
        )?;
    }
    if let Some(nft_sys) = median_of(Kind::Nftables, |a| a.cpu.sys) {
        let total = median_of(Kind::Nftables, |a| a.cpu.total()).unwrap_or(f64::NAN);
        writeln!(
            md,
            "- The firewall bouncer's time is CPU time, {:.0}% of it system time ({nft_sys:.1} s): \
             nftables work in the kernel on its netlink requests. Its nftables backend (upstream's \
             source of this version: `commitAddedDecisions`, `getCurrentState`) adds the \
             decisions in batches of 200 and, before each batch, reads the whole set back from the \
             kernel to skip what it holds already, so every batch costs more than the one before: \
             the cost grows with the square of the list.",
            nft_sys / total.max(1e-9) * 100.0
        )?;
    }

    // Delta.
    writeln!(md, "\n### {delta} new decisions while both run\n")?;
    writeln!(
        md,
        "With both bouncers holding the {n} decisions, {delta} more (the next addresses of \
         198.18.0.0/15, same format) are imported with `cscli decisions import`; timed from the \
         start of the import until each bouncer's log says it holds all {} (checked in the kernel \
         as above). Both bouncers poll every second and work at the same time, as two hosts of \
         one fleet would. The import itself took {} s (median; wall time, the LAPI's work). After \
         each round the delta's alert and decisions are deleted from the LAPI's database \
         (`cscli alerts delete --scenario`), so that the next round starts from the same {n}.\n",
        thousands(u64::from(sizes.decisions + sizes.delta)),
        if setup.deltas.is_empty() {
            "–".to_owned()
        } else {
            format!("{:.2}", spread(&setup.deltas, |i| i.seconds).median)
        }
    )?;
    writeln!(
        md,
        "- **CPU s**: the bouncer's CPU time over that interval.\n\
         - **received**: how many of the {delta} the LAPI's delta answers brought the bouncer in \
         each round, by its log (apifw's `held=`, the sum of the firewall bouncer's `decisions \
         added`). Debian's LAPI can leave decisions of a bulk import out of its delta answers \
         when a poll falls inside the import (deploy/crowdsec/LAB-NOTES.md): a bouncer then \
         holds them only after its next full `startup=true` pull (apifw: its `resync_interval`, \
         10 minutes by default; the firewall bouncer: its next restart). A bouncer whose log \
         stops short of all {delta} and that then stays quiet for {:.0} s (no change, under \
         {:.0}% of a CPU) is timed to its last change: the time it took to apply what it got.\n",
        SETTLE.quiet.as_secs_f64(),
        SETTLE.busy * 100.0
    )?;
    writeln!(
        md,
        "| bouncer | seconds (median) | spread | CPU s (median) | CPU spread | received | held in kernel |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|---|---|")?;
    for row in rows {
        if row.deltas.is_empty() {
            writeln!(
                md,
                "| {} | {} | | | | | |",
                row.kind.name(),
                not_measured(row)
            )?;
            continue;
        }
        let seconds = spread(&row.deltas, |d| d.seconds);
        let cpu = spread(&row.deltas, |d| d.cpu.total());
        let received = row
            .deltas
            .iter()
            .map(|d| thousands(d.received))
            .collect::<Vec<_>>()
            .join(", ");
        let held = row
            .deltas
            .last()
            .map_or(String::new(), |d| held_text(row.kind, d.held));
        writeln!(
            md,
            "| {} | {:.2} | {:.2}..{:.2} | {:.2} | {:.2}..{:.2} | {received} | {held} (last round) |",
            row.kind.name(),
            seconds.median,
            seconds.min,
            seconds.max,
            cpu.median,
            cpu.min,
            cpu.max
        )?;
    }
    let missed: u64 = rows
        .iter()
        .flat_map(|row| &row.deltas)
        .map(|d| u64::from(sizes.delta).saturating_sub(d.received))
        .sum();
    if missed > 0 {
        writeln!(
            md,
            "\n- The LAPI's delta answers missed {missed} decisions over all rounds and both \
             bouncers (each bouncer applied every decision it was sent)."
        )?;
    }

    // Flood.
    let sources = 1u64 << setup.flood_bits;
    writeln!(md, "\n### A flood from banned sources\n")?;
    writeln!(
        md,
        "Once the delta is held, each bouncer's veth takes the `flood` section's flood (60-byte \
         UDP frames to 192.0.2.1:9 from the `apifw_flood_gen` generator, pinned to the first CPU; \
         the receiving veth's NAPI thread pinned to the last) for {:.0} s after a {:.1} s warm-up, \
         from {} sources: the first {} addresses of 198.18.0.0/15, all banned, each once every {} \
         frames, so every frame is a lookup among the bouncer's {n} and more entries (the \
         blocklist and what it got of the delta). The bouncer process itself is moved to the \
         generator's CPU for the flood.\n",
        sizes.flood.as_secs_f64(),
        sizes.warm_up.as_secs_f64(),
        thousands(sources),
        thousands(sources),
        thousands(sources),
    )?;
    writeln!(
        md,
        "- **CPU ms per Mpkt**: run time of the receiving NAPI thread (`/proc/TID/schedstat`) \
         over the frames it took off its ring, in ms per million packets (= ns per packet): \
         everything the receiving side does with a frame up to the drop. **1 CPU at this cost**: \
         the rate one CPU would absorb at that cost.\n\
         - **absorbed**: frames per second the NAPI thread took off its ring; **lost**: share of \
         the generator's frames that found that ring full. **dropped**: the bouncer's own count \
         (apifw's drop counters, the firewall bouncer's rule counter) over the frames absorbed.\n\
         - apifw drops in XDP, in the veth's receive path before a socket buffer exists. The \
         firewall bouncer's rule sits in its own table's chain on the `input` hook: a frame is \
         turned into a socket buffer, goes through GRO, IP receive and the routing decision \
         (it is for a local address) before its source is looked up in the set (a hash set with \
         timeouts). Nothing in the namespace uses connection tracking (the bouncer's rule does \
         not), so none is paid here; on a host whose ruleset tracks connections, each frame of \
         the flood would also pay a conntrack lookup before the input hook.\n\
         - Unlike the `flood` section's apifw rows, where every frame matches the same single \
         prefix, here each frame's source has an entry of its own in a table of over {n} \
         (apifw's ban map, the firewall bouncer's set), and successive frames touch different \
         entries.\n"
    )?;
    writeln!(
        md,
        "| bouncer | drops at | CPU ms per Mpkt (median) | spread | 1 CPU at this cost | absorbed pps | lost | dropped |"
    )?;
    writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|")?;
    for row in rows {
        let place = match row.kind {
            Kind::Apifw => "XDP (native), ban map",
            Kind::Nftables => "nftables input hook, set",
        };
        if row.floods.is_empty() {
            writeln!(
                md,
                "| {} | {place} | {} | | | | | |",
                row.kind.name(),
                not_measured(row)
            )?;
            continue;
        }
        let cost = spread(&row.floods, Flood::ns_per_packet);
        writeln!(
            md,
            "| {} | {place} | {:.0} | {:.0}..{:.0} | {} | {} | {:.1}% | {:.1}% |",
            row.kind.name(),
            cost.median,
            cost.min,
            cost.max,
            rate(1e9 / cost.median.max(1.0)),
            rate(spread(&row.floods, Flood::absorbed_pps).median),
            spread(&row.floods, Flood::lost_share).median * 100.0,
            spread(&row.floods, Flood::dropped_share).median * 100.0
        )?;
    }
    let cost_of = |kind: Kind| {
        rows.iter()
            .find(|row| row.kind == kind && !row.floods.is_empty())
            .map(|row| spread(&row.floods, Flood::ns_per_packet).median)
    };
    writeln!(md)?;
    if let (Some(apifw), Some(nft)) = (cost_of(Kind::Apifw), cost_of(Kind::Nftables)) {
        writeln!(
            md,
            "- A flood frame from a banned source costs the receiving CPU {apifw:.0} ns with \
             apifw and {nft:.0} ns with the firewall bouncer's set: {}× as much.",
            ratio(nft / apifw.max(1.0))
        )?;
    }
    for row in rows {
        for error in &row.errors {
            writeln!(
                md,
                "- {}: {}",
                row.kind.name(),
                error.lines().next().unwrap_or_default()
            )?;
        }
        if let (Some(stopped), false) = (&row.stopped, row.applies.is_empty()) {
            writeln!(
                md,
                "- {}: stopped after {} rounds: {}",
                row.kind.name(),
                row.applies.len(),
                stopped.lines().next().unwrap_or_default()
            )?;
        }
    }
    Ok(md)
}

/// "100000 decisions, 100000 in the ban map" / "100000 set elements".
fn held_text(kind: Kind, held: Held) -> String {
    match kind {
        Kind::Apifw => format!(
            "{} decisions, {} ban map entries",
            thousands(held.decisions),
            thousands(held.kernel)
        ),
        Kind::Nftables => format!("{} set elements", thousands(held.kernel)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_for_reading() {
        assert_eq!(thousands(100_000), "100,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(rate(2_345_678.0), "2.35 M");
        assert_eq!(ratio(93.4), "93");
        assert_eq!(ratio(4.24), "4.2");
        assert_eq!(ratio(0.181), "0.18");
    }

    #[test]
    fn every_flood_source_is_banned() {
        let opts = BenchOptions {
            runs: 3,
            repeat: 1,
            quick: false,
        };
        let full = Sizes::new(&opts, 3);
        assert_eq!(full.flood_bits(), 16);
        assert!(1u32 << full.flood_bits() <= full.decisions);
        let quick = Sizes::new(
            &BenchOptions {
                quick: true,
                ..opts
            },
            3,
        );
        assert!(1u32 << quick.flood_bits() <= quick.decisions);
        assert_eq!(quick.flood_bits(), 12);
    }
}
