//! Under attack (issue #6): a real HTTP API (nginx) in a namespace, served to a legitimate
//! closed-loop client (wrk) while a spoofed TCP SYN flood hits the same interface; goodput and p99
//! latency with no flood, with the flood and no protection, with an nftables rule and with apifw.
//! Goal: apifw keeps at least 90% of the no-flood goodput.
//!
//! [`lab`] builds the topology (the server's one public interface carries the flood and the
//! legitimate traffic), [`http`] runs nginx and wrk. There are two attackers sending the same
//! flood: [`xdpflood`] hands the server's veth XDP frames, as a NIC driver hands its native XDP
//! hook frames straight from its ring, and [`synflood`] writes socket buffers with an
//! `AF_PACKET` socket, which native XDP on a veth only sees after they exist. Every run
//! measures every case once, in a rotating order, so machine noise spreads over all of them; the
//! report gives the median of the runs and their spread, and each case's share of the no-flood
//! goodput measured in the same run.
//!
//! With no flood, one more case runs apifw with one rate-limit rule on the API's port (issue #16
//! item 6): the kernel's BPF statistics of its attached program over wrk's run give its own cost
//! per packet in the real path, next to `BPF_PROG_TEST_RUN` of the same program on one of the
//! client's request frames.
//!
//! CPUs: on this two-CPU machine the first CPU is the attacker's (the flood generator, the
//! router's forwarding of the flood, the daemon's control plane) and the last one is the
//! server's: nginx, the server's receive path (its NAPI thread) and, since it needs a CPU too,
//! the client. The flood then costs the legitimate traffic exactly what the server spends on it.

pub mod cookies;
mod http;
mod lab;
mod synflood;
mod xdpflood;

use std::{
    fmt::Write as _,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use firewall_common::stats::Action;
use firewall_userspace::dataplane::stats::ProgramRuns;

use self::{
    http::{Load, Nginx},
    lab::{ATTACK_RANGE, Lab},
    synflood::{SynFlood, Target},
    xdpflood::XdpSynFlood,
};
use crate::{
    daemon::{Daemon, Dirs},
    flood::kstats,
    generator::Generator,
    report::{BenchOptions, Spread, tool_version},
};

/// The attacker's CPU.
const ATTACK_CPU: usize = 0;
/// Name of the nftables table of the nft case.
const NFT_TABLE: &str = "apat_bench";
/// The goal: share of the no-flood goodput apifw keeps under the flood.
const GOAL: f64 = 0.9;
/// The rate-limit rule of the no-flood apifw case: per source, a rate and a burst the client
/// stays within (as the per-packet section's "tracked source within its limit" row).
const RULE_RATE: u64 = 1_000_000;
/// `XDP_PASS`, as `bpftool prog run` reports it.
const XDP_PASS: u64 = 2;

/// The measured cases, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    NoFlood,
    /// No flood, apifw with one rate-limit rule on the API's port: its own cost in the real
    /// path (kernel BPF statistics).
    ApifwRateLimit,
    Unprotected,
    Nft,
    Apifw,
    /// The cheapest XDP filter that stops this flood (`apifw_range_drop`: one compare, no
    /// map): the floor of any XDP filter in this lab.
    Floor,
}

impl Case {
    fn label(self) -> &'static str {
        match self {
            Case::NoFlood => "no flood",
            Case::ApifwRateLimit => "no flood, apifw (rate-limit rule on port 80)",
            Case::Unprotected => "flood, no protection",
            Case::Nft => "flood, nftables (netdev ingress drop)",
            Case::Apifw => "flood, apifw (blocklist)",
            Case::Floor => "flood, floor: one-compare XDP drop",
        }
    }
}

/// The paced XDP attacker's rate: about what the socket attacker reaches, so that the two
/// compare at the same load.
const PACED_RATE: f64 = 1_000_000.0;

/// How the flood reaches the server's link, and how fast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attacker {
    /// XDP frames from the in-kernel generator (what a NIC driver hands its native XDP hook),
    /// at [`PACED_RATE`].
    XdpPaced,
    /// The same, as fast as the generator's CPU goes: far more than the server's CPU takes.
    XdpFull,
    /// Socket buffers written with an `AF_PACKET` socket, as fast as its CPU goes.
    Socket,
}

impl Attacker {
    const ALL: [Attacker; 3] = [Attacker::XdpPaced, Attacker::XdpFull, Attacker::Socket];

    fn label(self) -> &'static str {
        match self {
            Attacker::XdpPaced => "XDP frames at 1 Mpps",
            Attacker::XdpFull => "XDP frames at full speed",
            Attacker::Socket => "socket buffers at full speed",
        }
    }
}

/// One row of the table: a case under one attacker (none for the no-flood baseline).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Row {
    case: Case,
    attacker: Option<Attacker>,
}

impl Row {
    const fn new(case: Case, attacker: Attacker) -> Self {
        Self {
            case,
            attacker: Some(attacker),
        }
    }

    /// A row without a flood.
    const fn quiet(case: Case) -> Self {
        Self {
            case,
            attacker: None,
        }
    }

    fn label(self) -> String {
        match self.attacker {
            None => self.case.label().to_owned(),
            Some(attacker) => format!("{}: {}", attacker.label(), self.case.label()),
        }
    }
}

/// The rows in report order; the first is the baseline of every "% of no flood".
const ROWS: [Row; 14] = [
    Row::quiet(Case::NoFlood),
    Row::quiet(Case::ApifwRateLimit),
    Row::new(Case::Unprotected, Attacker::XdpPaced),
    Row::new(Case::Nft, Attacker::XdpPaced),
    Row::new(Case::Apifw, Attacker::XdpPaced),
    Row::new(Case::Floor, Attacker::XdpPaced),
    Row::new(Case::Unprotected, Attacker::XdpFull),
    Row::new(Case::Nft, Attacker::XdpFull),
    Row::new(Case::Apifw, Attacker::XdpFull),
    Row::new(Case::Floor, Attacker::XdpFull),
    Row::new(Case::Unprotected, Attacker::Socket),
    Row::new(Case::Nft, Attacker::Socket),
    Row::new(Case::Apifw, Attacker::Socket),
    Row::new(Case::Floor, Attacker::Socket),
];

/// A running flood of either attacker.
enum Flood {
    XdpFrames(XdpSynFlood),
    Socket(SynFlood),
}

impl Flood {
    fn start(
        attacker: Attacker,
        lab: &Lab,
        target: &Target,
        generator: &Arc<Mutex<Generator>>,
    ) -> anyhow::Result<Self> {
        Ok(match attacker {
            Attacker::XdpPaced => Flood::XdpFrames(XdpSynFlood::start(
                generator,
                &lab.edge,
                target,
                Some(PACED_RATE),
            )?),
            Attacker::XdpFull => {
                Flood::XdpFrames(XdpSynFlood::start(generator, &lab.edge, target, None)?)
            }
            Attacker::Socket => Flood::Socket(SynFlood::start(&lab.edge, target)),
        })
    }

    /// Stops the flood; the frames it sent (the generator's own count, or what the socket
    /// accepted).
    fn stop(self) -> anyhow::Result<u64> {
        match self {
            Flood::XdpFrames(flood) => flood.stop(),
            Flood::Socket(flood) => flood.stop(),
        }
    }
}

/// One case measured once.
#[derive(Clone, Copy, Debug)]
struct Sample {
    load: Load,
    /// Flood frames that reached the server's link, per second.
    offered: f64,
    /// Frames veth dropped because the server's receive ring was full, per second.
    lost: f64,
    /// Packets the filter dropped, per second.
    filtered: f64,
    /// Share of one CPU the server's NAPI thread used.
    napi_cpu: f64,
    /// How XDP was attached to the server's interface during the measurement.
    xdp_mode: Option<&'static str>,
    /// What the kernel's BPF statistics counted for apifw's program over wrk's run (the
    /// rate-limit case only).
    kernel: Option<ProgramRuns>,
    /// `BPF_PROG_TEST_RUN` of the same program on one of the client's request frames, ns per
    /// run (the rate-limit case only).
    test_run_ns: Option<f64>,
}

/// Pins the calling thread (and what it spawns from now on) to `cpus`; gives it back the CPUs
/// it had on drop, since the sections of one bench run share the process. (Restoring "every
/// CPU" as `available_parallelism` counts them, which reads the pinned set, left the next
/// section one CPU.)
struct Affinity {
    previous: nix::sched::CpuSet,
}

impl Affinity {
    fn pin(cpus: &[usize]) -> anyhow::Result<Self> {
        let this_thread = nix::unistd::Pid::from_raw(0);
        let previous = nix::sched::sched_getaffinity(this_thread)?;
        let mut set = nix::sched::CpuSet::new();
        for cpu in cpus {
            set.set(*cpu)?;
        }
        nix::sched::sched_setaffinity(this_thread, &set)?;
        Ok(Self { previous })
    }
}

impl Drop for Affinity {
    fn drop(&mut self) {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &self.previous);
    }
}

/// The nftables rule of the nft case: the earliest hook nftables has (netdev ingress, before
/// the IP stack and conntrack), on the server's interface; deleted on drop.
struct NftTable<'a> {
    lab: &'a Lab,
    /// The table's family and name.
    family: &'static str,
    name: &'static str,
}

impl<'a> NftTable<'a> {
    fn rules(interface: &str) -> String {
        format!(
            "table netdev {NFT_TABLE} {{\n  chain ingress {{\n    type filter hook ingress \
             device \"{interface}\" priority -500; policy accept;\n    ip saddr {ATTACK_RANGE} \
             counter drop\n  }}\n}}\n"
        )
    }

    fn install(lab: &'a Lab, dir: &Path) -> anyhow::Result<Self> {
        Self::install_rules(lab, dir, "netdev", NFT_TABLE, &Self::rules(&lab.server_if))
    }

    /// Installs `rules` (one table, `family` `name`) in the server's namespace.
    fn install_rules(
        lab: &'a Lab,
        dir: &Path,
        family: &'static str,
        name: &'static str,
        rules: &str,
    ) -> anyhow::Result<Self> {
        let path = dir.join("rules.nft");
        std::fs::write(&path, rules)?;
        lab::exec(
            &lab.server,
            &["nft", "-f", path.to_str().context("UTF-8 path")?],
        )?;
        Ok(Self { lab, family, name })
    }

    /// Packets the rule's counter has dropped.
    fn dropped(&self) -> anyhow::Result<u64> {
        let output = lab::exec(
            &self.lab.server,
            &["nft", "-j", "list", "table", self.family, self.name],
        )?;
        let listing: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        let packets = listing["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| item["rule"]["expr"].as_array())
            .flatten()
            .filter_map(|expr| expr["counter"]["packets"].as_u64())
            .sum();
        Ok(packets)
    }
}

impl Drop for NftTable<'_> {
    fn drop(&mut self) {
        let _ = lab::exec(
            &self.lab.server,
            &["nft", "delete", "table", self.family, self.name],
        );
    }
}

/// apifw's policy of the apifw case: the attacker's range on the blocklist, nothing else.
fn apifw_policy() -> String {
    format!("[block]\ncidrs = [\"{ATTACK_RANGE}\"]\n\n[metrics]\nlisten = \"off\"\n")
}

/// apifw's policy of the no-flood rate-limit case: one rule on the API's port.
fn rate_limit_policy() -> String {
    format!(
        "[[rule]]\nname = \"api\"\nprotocol = \"tcp\"\nports = [80]\n\
         per_source = {{ packets_per_second = {RULE_RATE}, burst_packets = {RULE_RATE} }}\n\n\
         [metrics]\nlisten = \"off\"\n"
    )
}

/// One of the client's requests as it reaches the server (wrk's `GET`, a TCP segment with
/// ACK and PSH from the client's address to port 80), for `BPF_PROG_TEST_RUN`.
fn request_frame(router_mac: [u8; 6], server_mac: [u8; 6]) -> anyhow::Result<Vec<u8>> {
    let request = request();
    let builder = etherparse::PacketBuilder::ethernet2(router_mac, server_mac)
        .ipv4(lab::CLIENT_ADDR.octets(), lab::SERVER_ADDR.octets(), 63)
        .tcp(40_000, 80, 1, 64_240)
        .ack(1)
        .psh();
    let mut frame = Vec::with_capacity(builder.size(request.len()));
    builder
        .write(&mut frame, request.as_bytes())
        .context("build the request frame")?;
    Ok(frame)
}

/// The filter of one case, while it is installed.
enum Protection<'a> {
    None,
    Nft(NftTable<'a>),
    Apifw {
        // Field order: the daemon stops before its directories go.
        _daemon: Daemon,
        dirs: Dirs,
    },
    /// A test program attached (the floor, or the empty program).
    Floor(
        #[expect(dead_code, reason = "held, not read: dropping it detaches the program")]
        Box<crate::programs::TestPrograms>,
    ),
}

impl Protection<'_> {
    /// Packets the filter has dropped so far.
    fn dropped(&self) -> anyhow::Result<u64> {
        match self {
            // The floor program counts nothing: no filter column for it.
            Protection::None | Protection::Floor(_) => Ok(0),
            Protection::Nft(table) => table.dropped(),
            Protection::Apifw { dirs, .. } => Ok(dirs
                .stats()
                .counters
                .iter()
                .filter(|row| row.action == Action::Drop)
                .map(|row| row.packets)
                .sum()),
        }
    }
}

/// Timing of one measurement.
struct Timing {
    /// wrk's run, seconds.
    seconds: u64,
    /// Flood before wrk starts (SYN queue full, cookies on, rings busy).
    warmup: Duration,
}

struct Snapshot {
    at: Instant,
    sent: u64,
    lost: u64,
    filtered: u64,
    napi_ns: u64,
}

fn snapshot(lab: &Lab, flood: Option<&Flood>, protection: &Protection) -> anyhow::Result<Snapshot> {
    let upstream = lab.upstream_counters()?;
    // Whatever the attacker, `lost` also holds the few legitimate packets the full ring cost.
    // veth counts an XDP frame without room both in its XDP counters and in `tx_dropped`, so
    // `tx_dropped` alone holds every loss (the sum of both counted XDP frames twice).
    let lost = upstream.tx_dropped;
    let sent = match flood {
        None => 0,
        // veth counts the XDP frames it put on the server's ring.
        Some(Flood::XdpFrames(_)) => upstream.xdp_xmit,
        Some(Flood::Socket(flood)) => flood.sent(),
    };
    Ok(Snapshot {
        at: Instant::now(),
        sent,
        lost,
        filtered: protection.dropped()?,
        napi_ns: lab.napi_ns()?,
    })
}

/// What a measurement needs besides the row.
struct Setup<'a> {
    lab: &'a Lab,
    target: &'a Target,
    generator: &'a Arc<Mutex<Generator>>,
    timing: &'a Timing,
    scratch: &'a Path,
    server_cpu: usize,
    /// `repeat` of the rate-limit case's `BPF_PROG_TEST_RUN`.
    repeat: u32,
}

fn measure(setup: &Setup, row: Row) -> anyhow::Result<Sample> {
    let (lab, scratch) = (setup.lab, setup.scratch);
    let protection = match row.case {
        Case::NoFlood | Case::Unprotected => Protection::None,
        Case::ApifwRateLimit => {
            let dirs = Dirs::new("apat");
            dirs.write_policy(&rate_limit_policy());
            let daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
            Protection::Apifw {
                _daemon: daemon,
                dirs,
            }
        }
        Case::Nft => Protection::Nft(NftTable::install(lab, scratch)?),
        Case::Apifw => {
            let dirs = Dirs::new("apat");
            dirs.write_policy(&apifw_policy());
            let daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
            Protection::Apifw {
                _daemon: daemon,
                dirs,
            }
        }
        Case::Floor => Protection::Floor(Box::new(crate::flood::peers::attach_bench_program(
            crate::programs::program_names::FLOOD_RANGE_DROP,
            &lab.server,
            &lab.server_if,
        )?)),
    };
    measure_under(
        setup,
        protection,
        row.attacker,
        &row.label(),
        row.case == Case::ApifwRateLimit,
    )
}

/// One measurement with `protection` installed (dropped at the end) under a flood from
/// `attacker` (none: no flood); `count_kernel`: with the kernel's BPF statistics of the attached
/// program over wrk's run and a test run after it.
fn measure_under(
    setup: &Setup,
    protection: Protection<'_>,
    attacker: Option<Attacker>,
    label: &str,
    count_kernel: bool,
) -> anyhow::Result<Sample> {
    let Setup {
        lab,
        target,
        generator,
        timing,
        scratch,
        server_cpu,
        repeat,
    } = *setup;
    let xdp_mode = lab.server_xdp_mode()?;
    // Attaching or detaching XDP may restart the veth's NAPI: pin whatever thread it has now.
    lab.pin_napi(server_cpu)?;
    // When the flood started and veth's counters then, for the log line after it.
    let flood_started = match attacker {
        Some(_) => Some((Instant::now(), lab.upstream_counters()?)),
        None => None,
    };
    let flood = attacker
        .map(|attacker| Flood::start(attacker, lab, target, generator))
        .transpose()?;
    std::thread::sleep(timing.warmup);
    // apifw's own cost over wrk's run, as the kernel counts it (the rate-limit case only).
    let counted: Vec<u32> = if count_kernel {
        let attached = kstats::attached(&lab.server, &lab.server_if)?;
        ensure!(!attached.is_empty(), "apifw attached no XDP program");
        attached.iter().map(|program| program.id).collect()
    } else {
        Vec::new()
    };
    let counting = if counted.is_empty() {
        None
    } else {
        Some(kstats::Counting::start()?)
    };
    let kernel_before = counting
        .as_ref()
        .map(|_| kstats::runs(&counted))
        .transpose()?;
    let before = snapshot(lab, flood.as_ref(), &protection)?;
    let load = http::run_wrk(lab, server_cpu, timing.seconds, target.dest)?;
    let after = snapshot(lab, flood.as_ref(), &protection)?;
    let kernel = match kernel_before {
        Some(start) => Some(kstats::between(&start, &kstats::runs(&counted)?)),
        None => None,
    };
    // Off before the test run: the statistics would add their clock reads to it.
    drop(counting);
    let test_run_ns = match counted.first() {
        Some(id) => Some(test_run(lab, *id, scratch, repeat)?),
        None => None,
    };
    if let (Some(flood), Some((at, start))) = (flood, flood_started) {
        let frames = flood.stop().context("the flood generator failed")?;
        // The flood's own count next to what veth counted over the same time, for the log.
        let (seconds, end) = (at.elapsed().as_secs_f64(), lab.upstream_counters()?);
        eprintln!(
            "bench: {label}: the attacker sent {:.0} frames/s; veth: {:.0}/s XDP frames put on \
             the ring, {:.0}/s XDP frames without room, {:.0}/s frames without room in all \
             (`tx_dropped`: those XDP frames and socket buffers)",
            frames as f64 / seconds,
            end.xdp_xmit.saturating_sub(start.xdp_xmit) as f64 / seconds,
            end.xdp_xmit_errors.saturating_sub(start.xdp_xmit_errors) as f64 / seconds,
            end.tx_dropped.saturating_sub(start.tx_dropped) as f64 / seconds,
        );
    }
    // What apifw made of the packets, for the log: which path the flood took.
    if let Protection::Apifw { dirs, .. } = &protection {
        for row in dirs.stats().counters.iter().filter(|row| row.packets > 0) {
            eprintln!(
                "bench: {label}: apifw {:?} {:?}: {} packets",
                row.action, row.reason, row.packets
            );
        }
    }
    drop(protection);
    ensure!(
        !lab.server_has_xdp()?,
        "an XDP program is still attached to {} after the {label} case",
        lab.server_if,
    );
    let wall = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
    let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / wall;
    Ok(Sample {
        load,
        // veth's drops are frames it had no room for, not counted in `sent`: both reached the
        // link.
        offered: rate(before.sent + before.lost, after.sent + after.lost),
        lost: rate(before.lost, after.lost),
        filtered: rate(before.filtered, after.filtered),
        napi_cpu: rate(before.napi_ns, after.napi_ns) / 1e9,
        xdp_mode,
        kernel,
        test_run_ns,
    })
}

/// `BPF_PROG_TEST_RUN` of the attached program `id` on one of the client's requests
/// (`bpftool prog run ... repeat N`), ns per run; the verdict must be a pass. The client's
/// source is tracked by then and its bucket full again (wrk stays far below the rule's rate),
/// so this is the path its real packets took.
fn test_run(lab: &Lab, id: u32, scratch: &Path, repeat: u32) -> anyhow::Result<f64> {
    let path = scratch.join("request.bin");
    std::fs::write(&path, request_frame(lab.upstream_mac, lab.server_mac)?)
        .context("write the request frame")?;
    let (verdict, ns) = crate::xdpfilter::prog_run(id, &path, repeat)?;
    ensure!(
        verdict == XDP_PASS,
        "apifw returned {verdict} on the client's request, expected XDP_PASS"
    );
    Ok(ns)
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

const HEADING: &str = "## Under attack: HTTP API goodput";

/// The section under `heading`, saying what is missing, when a program the lab runs is not
/// installed.
fn missing_tools(heading: &str) -> Option<String> {
    let missing: Vec<&str> = ["nginx", "wrk", "ethtool", "nft", "taskset", "nice"]
        .into_iter()
        .filter(|program| !which(program))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{heading}\n\nNot measured: `{}` missing (`cargo xtask bench` installs nginx, wrk, \
             ethtool and nftables).",
            missing.join("`, `")
        )
    })
}

/// What the attackers flood: the server's port 80, written into the router's end of its link
/// from the attacker's CPU.
fn target_of(lab: &Lab, family: lab::Family) -> Target {
    Target {
        interface: lab.upstream_if.clone(),
        source_mac: lab.upstream_mac,
        dest_mac: lab.server_mac,
        dest: family.server_addr(),
        port: 80,
        cpu: ATTACK_CPU,
    }
}

/// Measures the section and returns it as Markdown, starting with its `##` heading.
pub fn run(opts: &BenchOptions) -> anyhow::Result<String> {
    if let Some(missing) = missing_tools(HEADING) {
        return Ok(missing);
    }
    let apifw_missing = match std::env::var_os("APIFW_BIN") {
        Some(path) if Path::new(&path).is_file() => None,
        Some(path) => Some(format!(
            "APIFW_BIN={} does not exist",
            path.to_string_lossy()
        )),
        None => Some("APIFW_BIN is not set (`cargo xtask bench` sets it)".to_owned()),
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    ensure!(
        cpus >= 2,
        "the attack benchmark needs two CPUs, this machine has {cpus}"
    );
    let server_cpu = cpus - 1;
    let (runs, timing) = if opts.quick {
        (
            1,
            Timing {
                seconds: 2,
                warmup: Duration::from_millis(500),
            },
        )
    } else {
        (
            opts.runs,
            Timing {
                seconds: 8,
                warmup: Duration::from_secs(1),
            },
        )
    };
    // This thread (and the daemon, nft and ip commands it starts) on the attacker's CPU.
    let _affinity = Affinity::pin(&[ATTACK_CPU])?;
    let scratch = crate::loadbench::TempDir::new("apifw-attack")?;
    let lab = Lab::new().context("build the attack lab")?;
    lab.pin_napi(server_cpu)?;
    let _nginx = Nginx::start(&lab, &scratch.0, server_cpu)?;
    let target = target_of(&lab, lab::Family::V4);
    // The XDP attacker's generator, on the attacker's CPU, loaded once for every run.
    let generator = Arc::new(Mutex::new(
        Generator::start(ATTACK_CPU).context("start the XDP flood generator")?,
    ));
    // Warm-up: connections, page cache, nginx's first requests.
    http::run_wrk(&lab, server_cpu, 1, target.dest)?;
    let rows: Vec<Row> = ROWS
        .into_iter()
        .filter(|row| {
            !matches!(row.case, Case::Apifw | Case::ApifwRateLimit) || apifw_missing.is_none()
        })
        .collect();
    let setup = Setup {
        lab: &lab,
        target: &target,
        generator: &generator,
        timing: &timing,
        scratch: &scratch.0,
        server_cpu,
        repeat: opts.repeat,
    };
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); ROWS.len()];
    for run in 0..runs {
        for offset in 0..rows.len() {
            let row = rows[(run + offset) % rows.len()];
            let sample =
                measure(&setup, row).with_context(|| format!("case {}, run {run}", row.label()))?;
            eprintln!(
                "bench: attack run {run}: {}: {:.0} responses/s, p99 {:.2} ms, flood {:.0} pkt/s \
                 offered, {:.0} lost at the ring, {:.0} filtered, NAPI CPU {:.0}%",
                row.label(),
                sample.load.goodput(),
                sample.load.p99_ms,
                sample.offered,
                sample.lost,
                sample.filtered,
                sample.napi_cpu * 100.0
            );
            if let (Some(kernel), Some(test_run)) = (sample.kernel, sample.test_run_ns) {
                eprintln!(
                    "bench: attack run {run}: apifw's program {} ns per packet over {} packets \
                     (kernel BPF statistics), {test_run:.0} ns by BPF_PROG_TEST_RUN",
                    kernel
                        .ns_per_packet()
                        .map_or("–".to_owned(), |ns| format!("{ns:.0}")),
                    kernel.runs
                );
            }
            let index = ROWS.iter().position(|r| *r == row).unwrap_or(0);
            samples[index].push(sample);
        }
    }
    Ok(markdown(
        opts,
        runs,
        &timing,
        &samples,
        apifw_missing.as_deref(),
    )?)
}

/// The subsection on apifw's own cost in the real path: the kernel's BPF statistics of its
/// program over wrk's run in the rate-limit case, next to `BPF_PROG_TEST_RUN` of the same
/// program on one of the client's requests, both from the same measurement.
fn real_path(md: &mut String, opts: &BenchOptions, samples: &[Vec<Sample>]) -> std::fmt::Result {
    let index = ROWS
        .iter()
        .position(|row| *row == Row::quiet(Case::ApifwRateLimit))
        .unwrap_or(0);
    let runs: Vec<&Sample> = samples
        .get(index)
        .into_iter()
        .flatten()
        .filter(|s| s.kernel.and_then(|k| k.ns_per_packet()).is_some() && s.test_run_ns.is_some())
        .collect();
    let real: Vec<f64> = runs
        .iter()
        .filter_map(|s| s.kernel?.ns_per_packet())
        .collect();
    let test: Vec<f64> = runs.iter().filter_map(|s| s.test_run_ns).collect();
    let packets: Vec<f64> = runs
        .iter()
        .filter_map(|s| s.kernel.map(|k| k.runs as f64))
        .collect();
    writeln!(md, "### apifw's own cost in the real path\n")?;
    if real.is_empty() {
        return writeln!(
            md,
            "Not measured: the rate-limit case did not run, or the kernel counted no packet.\n"
        );
    }
    writeln!(
        md,
        "The no-flood rate-limit case above: while wrk runs, the kernel's BPF statistics \
         (`run_time_ns` / `run_cnt` of the program attached to the server's veth, as `apifw \
         status` shows them; on through a `BPF_ENABLE_STATS` descriptor held for wrk's run) \
         count every packet that reaches the server: the client's TCP segments to port 80, \
         all through the rule, one run each. After wrk, with the statistics off again, the \
         same program (same maps, the client's source tracked and its bucket full) runs one of \
         the client's requests (a {}-byte frame, a TCP segment to port 80 carrying `GET {}`) \
         with `BPF_PROG_TEST_RUN` (`bpftool prog run`, `repeat` = {}). Both figures per \
         measurement, median and spread over the {} runs; \"× TestRun\" is each run's ratio. \
         The test run repeats one frame in warm caches; real packets arrive one by one, \
         between nginx's and wrk's work on the same CPU, and miss them. The kernel's figure \
         also holds what the counting adds (clock reads around each run; the flood section's \
         sink row is about that much), which the test run does not pay. The per-packet \
         section's \"tracked source within its limit (passed)\" row measures the same rule \
         path with `BPF_PROG_TEST_RUN` on a UDP frame.\n",
        request_len(),
        http::API_PATH,
        opts.repeat,
        real.len()
    )?;
    let ratios: Vec<f64> = real
        .iter()
        .zip(&test)
        .map(|(r, t)| r / t.max(1e-9))
        .collect();
    let (real, test, ratio) = (Spread::of(&real), Spread::of(&test), Spread::of(&ratios));
    writeln!(
        md,
        "| apifw, one rate-limit rule, no flood | ns/packet (median) | spread | × TestRun (median) | × TestRun spread |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|")?;
    writeln!(
        md,
        "| real path: nginx + wrk over the veth, kernel BPF statistics ({:.0} packets per run) | {:.0} | {:.0}..{:.0} | {:.2} | {:.2}..{:.2} |",
        Spread::of(&packets).median,
        real.median,
        real.min,
        real.max,
        ratio.median,
        ratio.min,
        ratio.max
    )?;
    writeln!(
        md,
        "| TestRun: one of the client's requests, repeated | {:.0} | {:.0}..{:.0} | 1.00 | |",
        test.median, test.min, test.max
    )?;
    writeln!(md)
}

/// The client's request, as wrk sends it.
fn request() -> String {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\n\r\n",
        http::API_PATH,
        lab::SERVER_ADDR
    )
}

/// The length of [`request_frame`]'s frame: Ethernet, IPv4 and TCP headers and the request.
fn request_len() -> usize {
    14 + 20 + 20 + request().len()
}

/// Milliseconds with two decimals; "n/a" when no request completed (wrk gives no latency).
fn ms(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.2}")
    } else {
        "n/a".to_owned()
    }
}

fn markdown(
    opts: &BenchOptions,
    runs: usize,
    timing: &Timing,
    samples: &[Vec<Sample>],
    apifw_missing: Option<&str>,
) -> Result<String, std::fmt::Error> {
    let mut md = String::new();
    writeln!(md, "{HEADING}\n")?;
    writeln!(
        md,
        "Goal: under a flood, apifw keeps ≥ {:.0}% of the no-flood goodput of a real HTTP API.\n",
        GOAL * 100.0
    )?;
    if opts.quick {
        writeln!(
            md,
            "*Quick smoke run: 1 run of 2 s per case; not for the report.*\n"
        )?;
    }
    writeln!(
        md,
        "Method: nginx ({}) in a server namespace answers `GET {}` with a small JSON body \
         (`{{\"ok\":true}}`), one worker. The legitimate client, wrk ({}), runs closed-loop in \
         its own namespace: 1 thread, {} keep-alive connections, {} s per measurement, p99 from \
         `--latency` (completed requests; `--timeout 2s`). Both reach each other through an \
         upstream router namespace; the server has one interface (a veth), which carries the \
         legitimate traffic and the flood alike. The attacker writes a TCP SYN flood to port 80 \
         with spoofed sources from {ATTACK_RANGE} and valid checksums into the router's end of \
         that link in one of three ways (each case is measured under each):\n\n\
         - **XDP frames** at 1 Mpps (about the socket attacker's rate, so the two compare at \
         the same load) and **at full speed** (several Mpps, far more than the server's CPU can \
         take in: its ring overflows whatever the filter): the in-kernel generator of the flood section (`BPF_PROG_RUN` of \
         `apifw_flood_gen` in live-frames mode, `XDP_TX` out of the router's port) rewrites \
         the source of one template SYN per frame, every address of the range once per \
         131,072 frames, fixing both checksums; at 1 Mpps it sends one burst of 64 frames \
         in N (N set every 100 ms from the rate the generator runs at) and drops the rest \
         before they leave: the receiver gets the flood in batches, as a NIC's interrupt \
         moderation delivers it (frame by frame, the receiving NAPI thread would be woken for \
         every few frames, which costs more than the frames). The server's veth gets XDP frames, and its \
         native XDP hook runs on them before any socket buffer exists, as on a NIC driver \
         with XDP support; without XDP (or on `XDP_PASS`) veth builds the socket buffer.\n\
         - **socket buffers**, as fast as one CPU sends: an `AF_PACKET` socket writes a cycled pool of 65,536 frames \
         (random sources, ports and sequence numbers; `trafgen` was tried: it stops at the \
         first full ring). The server's veth gets socket buffers, so even its native XDP hook \
         runs after the buffer exists (on a copy with XDP's headroom): what XDP can save is \
         smaller than on a NIC.\n\n\
         The server's veth receives in threaded NAPI; a frame that finds its ring full is \
         dropped (\"lost at the ring\", as a NIC's full rx ring drops), legitimate or not. \
         SYN-ACKs to the spoofed sources go back to the router, which discards them. The flood \
         starts {:.1} s before wrk (SYN queue full, SYN cookies on).\n",
        tool_version("nginx", &["-v"]),
        http::API_PATH,
        tool_version("wrk", &["-v"])
            .split(" Copyright")
            .next()
            .unwrap_or("wrk"),
        http::CONNECTIONS,
        timing.seconds,
        timing.warmup.as_secs_f64(),
    )?;
    writeln!(
        md,
        "CPUs: this machine has two, shared by everything, so the generator competes for CPU \
         time like everything else. CPU 0 is the attacker's: the flood generator, the router, \
         the apifw daemon's control plane. CPU 1 is the server's: nginx, the server's whole \
         receive path (its NAPI thread: XDP, nftables' ingress hook, IP, TCP, SYN cookies) and, \
         for lack of a third CPU, wrk. So whatever the server spends on the flood is taken from \
         the legitimate traffic, as on a real server, and the generator does not starve the \
         client. The NAPI thread is `SCHED_FIFO`, ahead of every task, as the receive path runs \
         in softirq context on a real host (a NAPI thread competing with nginx as an equal lets \
         its ring overflow while nginx runs); nginx, wrk and the socket attacker run at nice -19 \
         (the XDP attacker's generator thread at -20), so that other load on the machine skews \
         the cases less. At full speed, how many flood packets per second are offered depends on \
         how fast the attacker's CPU gets them onto the link, which differs between cases (a \
         ring that drains faster takes more).\n"
    )?;
    writeln!(
        md,
        "Cases, all in the same run, each measured {runs} times in rotating order (median, \
         spread min..max; \"% of no flood\" is each run's ratio to the no-flood goodput of the \
         same run):\n"
    )?;
    writeln!(md, "- **no flood**: the client alone.")?;
    writeln!(
        md,
        "- **no flood, apifw (rate-limit rule on port 80)**: a fresh daemon per measurement \
         with one rule, `protocol = \"tcp\"`, `ports = [80]`, `per_source = {{ \
         packets_per_second = {RULE_RATE}, burst_packets = {RULE_RATE} }}` (a limit the client \
         stays within, so every request passes the rule's bucket), and the kernel's BPF \
         statistics on for wrk's run: apifw's own cost per packet in the real path (below)."
    )?;
    writeln!(
        md,
        "- **flood, no protection**: the kernel's defaults (SYN cookies)."
    )?;
    writeln!(
        md,
        "- **nftables**: the best nft rule an operator would write against a known source \
         range: a `netdev` table with an `ingress` chain on the server's interface (the earliest \
         hook, before the IP stack and conntrack) — `ip saddr {ATTACK_RANGE} counter drop`."
    )?;
    writeln!(
        md,
        "- **floor: one-compare XDP drop**: `apifw_range_drop` (test-ebpf/src/flood_gen.rs) \
         in native mode: drops IPv4 frames from {ATTACK_RANGE} with one compare, no map, no \
         counter, passes the rest. No real filter costs less per frame, so this row is the best \
         any XDP filter could do in this lab; the gap between it and no flood is what the \
         lab's receive path itself (veth, NAPI, the CPU shared with nginx) costs."
    )?;
    writeln!(
        md,
        "- **apifw**: a fresh daemon (`apifw run`, XDP on the server's interface) per \
         measurement, policy `[block] cidrs = [\"{ATTACK_RANGE}\"]`. A rate-limit-only policy \
         that does not know the range is not a row: a per-source SYN limit only bites as long \
         as spoofed sources repeat faster than the limit (this generator cycles a pool, a real \
         attacker need not), and per-subnet limits cannot tell the attacker's /16s from the \
         client's without a limit below the client's own rate.\n"
    )?;
    if let Some(reason) = apifw_missing {
        writeln!(md, "apifw not measured: {reason}.\n")?;
    }
    writeln!(
        md,
        "| case | goodput (responses/s) | spread | % of no flood | p99 latency (ms) | spread | \
         errors/run | flood sent (pkt/s) | lost at the ring (pkt/s) | dropped by the filter \
         (pkt/s) | server NAPI CPU |"
    )?;
    writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    let baseline: Vec<f64> = samples[0].iter().map(|s| s.load.goodput()).collect();
    let mut apifw_shares = Vec::new();
    let mut floor_shares = Vec::new();
    for (row, runs) in ROWS.iter().zip(samples) {
        let case = &row.case;
        if runs.is_empty() {
            writeln!(md, "| {} | not measured | | | | | | | | | |", row.label())?;
            continue;
        }
        let field = |f: fn(&Sample) -> f64| Spread::of(&runs.iter().map(f).collect::<Vec<_>>());
        let goodput = field(|s| s.load.goodput());
        let ratios: Vec<f64> = runs
            .iter()
            .zip(&baseline)
            .map(|(s, base)| s.load.goodput() / base.max(1e-9))
            .collect();
        let share = Spread::of(&ratios);
        match (case, row.attacker) {
            (Case::Apifw, Some(attacker)) => apifw_shares.push((attacker, share)),
            (Case::Floor, Some(attacker)) => floor_shares.push((attacker, share)),
            _ => {}
        }
        let p99 = field(|s| s.load.p99_ms);
        let errors = field(|s| s.load.errors as f64);
        let flood = row.attacker.is_some();
        let dash_or = |value: f64| {
            if flood {
                format!("{value:.0}")
            } else {
                "–".to_owned()
            }
        };
        writeln!(
            md,
            "| {} | {:.0} | {:.0}..{:.0} | {:.0}% ({:.0}..{:.0}) | {} | {}..{} | {:.0} \
             | {} | {} | {} | {:.0}% |",
            row.label(),
            goodput.median,
            goodput.min,
            goodput.max,
            share.median * 100.0,
            share.min * 100.0,
            share.max * 100.0,
            ms(p99.median),
            ms(p99.min),
            ms(p99.max),
            errors.median,
            dash_or(field(|s| s.offered).median),
            dash_or(field(|s| s.lost).median),
            if matches!(case, Case::Nft | Case::Apifw | Case::ApifwRateLimit) {
                format!("{:.0}", field(|s| s.filtered).median)
            } else {
                "–".to_owned()
            },
            field(|s| s.napi_cpu).median * 100.0,
        )?;
    }
    writeln!(md)?;
    if apifw_shares.is_empty() {
        writeln!(md, "- Goal: not measured (apifw was not run).")?;
    }
    for (attacker, share) in &apifw_shares {
        // What the cheapest possible XDP filter kept under the same flood: the most any XDP
        // filter can keep in this lab.
        let floor = floor_shares
            .iter()
            .find(|(other, _)| other == attacker)
            .map_or(String::new(), |(_, floor)| {
                format!(
                    "; the floor kept {:.1}%{}",
                    floor.median * 100.0,
                    if floor.median < GOAL {
                        ", so no XDP filter can meet the goal in this lab"
                    } else {
                        ""
                    }
                )
            });
        writeln!(
            md,
            "- Goal (apifw ≥ {:.0}% of no-flood goodput), flood of {}: **{}** — {:.1}% \
             (median; runs {:.1}..{:.1}%){floor}.",
            GOAL * 100.0,
            attacker.label(),
            if share.median >= GOAL {
                "met"
            } else {
                "not met"
            },
            share.median * 100.0,
            share.min * 100.0,
            share.max * 100.0
        )?;
    }
    let goodput_of = |case: Case, attacker: Attacker| -> Vec<f64> {
        let row = Row::new(case, attacker);
        let index = ROWS.iter().position(|r| *r == row).unwrap_or(0);
        samples[index].iter().map(|s| s.load.goodput()).collect()
    };
    for attacker in Attacker::ALL {
        let apifw = goodput_of(Case::Apifw, attacker);
        for (other, name) in [(Case::Nft, "nftables"), (Case::Floor, "the floor")] {
            let other = goodput_of(other, attacker);
            if apifw.is_empty() || apifw.len() != other.len() {
                continue;
            }
            let ratios: Vec<f64> = apifw
                .iter()
                .zip(&other)
                .map(|(a, n)| a / n.max(1e-9))
                .collect();
            let versus = Spread::of(&ratios);
            writeln!(
                md,
                "- apifw ÷ {name} goodput, flood of {}, same run: {:.2}× (median; runs \
                 {:.2}..{:.2}×).",
                attacker.label(),
                versus.median,
                versus.min,
                versus.max
            )?;
        }
    }
    let mode = ROWS
        .iter()
        .zip(samples)
        .find(|(row, _)| row.case == Case::Apifw)
        .and_then(|(_, runs)| runs.first())
        .and_then(|s| s.xdp_mode)
        .unwrap_or("unknown");
    writeln!(
        md,
        "- apifw's XDP program was attached in {mode} mode. With the flood of socket buffers \
         even native XDP on a veth runs after each buffer was built (and copies it to give XDP \
         its headroom), so there the margin of dropping in XDP over nftables' ingress hook is \
         a lower bound; the flood of XDP frames shows the order a NIC driver gives: XDP first, \
         the socket buffer only for what it passes."
    )?;
    writeln!(
        md,
        "- The no-flood baseline is not an upper bound here: with no flood the server's NAPI \
         thread sleeps and is woken (preempting nginx) for almost every legitimate packet, \
         while under a filtered flood it is always running and takes the legitimate packets in \
         batches, so a filtered flood can show more than 100% of the no-flood goodput. What \
         the flood costs the legitimate traffic shows in the lost frames (a legitimate packet \
         lost at the ring stalls its connection for a retransmission timeout, ≥ 200 ms: the \
         p99 column) and in the server's CPU."
    )?;
    writeln!(
        md,
        "- \"flood sent\" counts the frames that reached the server's link (veth took them \
         onto the ring, or dropped them for lack of room: \"lost at the ring\", which also \
         holds the few legitimate packets lost there). While the ring is full veth may also \
         stop its queue and refuse the socket attacker's sends: those are not counted. \"server \
         NAPI CPU\" is the share of CPU 1 the server's receive thread used, for the flood and \
         the legitimate traffic together."
    )?;
    writeln!(md)?;
    real_path(&mut md, opts, samples)?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kernel_ns: Option<u64>, test_run_ns: Option<f64>) -> Sample {
        Sample {
            load: Load {
                requests: 400_000,
                seconds: 8.0,
                non_2xx: 0,
                errors: 0,
                p99_ms: 1.0,
            },
            offered: 0.0,
            lost: 0.0,
            filtered: 0.0,
            napi_cpu: 0.2,
            xdp_mode: Some("native"),
            kernel: kernel_ns.map(|ns| ProgramRuns {
                runs: 400_000,
                run_time_ns: ns * 400_000,
                stats_enabled: false,
            }),
            test_run_ns,
        }
    }

    #[test]
    fn the_real_path_next_to_the_test_run() {
        let opts = BenchOptions {
            runs: 3,
            repeat: 1_000_000,
            quick: false,
        };
        let mut samples = vec![Vec::new(); ROWS.len()];
        samples[1] = vec![
            sample(Some(460), Some(230.0)),
            sample(Some(400), Some(250.0)),
            sample(Some(500), Some(200.0)),
        ];
        let mut md = String::new();
        real_path(&mut md, &opts, &samples).unwrap();
        assert!(
            md.contains("| real path: nginx + wrk over the veth, kernel BPF statistics (400000 packets per run) | 460 | 400..500 | 2.00 | 1.60..2.50 |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| TestRun: one of the client's requests, repeated | 230 | 200..250 | 1.00 | |"
            ),
            "{md}"
        );
        let mut none = String::new();
        real_path(&mut none, &opts, &vec![Vec::new(); ROWS.len()]).unwrap();
        assert!(none.contains("Not measured"), "{none}");
    }

    #[test]
    fn the_request_frame_is_the_clients_get() {
        let frame = request_frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]).unwrap();
        assert_eq!(frame.len(), request_len());
        let packet = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &packet.net else {
            panic!("not IPv4");
        };
        assert_eq!(ip.header().source_addr(), lab::CLIENT_ADDR);
        assert_eq!(ip.header().destination_addr(), lab::SERVER_ADDR);
        let Some(etherparse::TransportSlice::Tcp(tcp)) = &packet.transport else {
            panic!("not TCP");
        };
        assert_eq!(tcp.destination_port(), 80);
        assert!(tcp.ack() && tcp.psh() && !tcp.syn());
        assert!(tcp.payload().starts_with(b"GET /api HTTP/1.1\r\n"));
    }
}
