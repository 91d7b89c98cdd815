//! Under a random-source SYN flood (issue #15, items 5 and 6): the attack section's lab (nginx,
//! wrk, the in-kernel XDP flood generator, spoofed SYNs to port 80), dual-stack: an IPv4 flood
//! from 198.18.0.0/15 and an IPv6 flood from 2001:db8::/32 with every frame a new source, each
//! against wrk over the same family. The defences do not know the attacker's range, as against
//! a real random-source flood:
//! the kernel alone (its own SYN cookies), the receive path's own cost (an empty XDP program),
//! apifw without rules, apifw with the rate-limit rule of the lab (cookies off, `auto`,
//! `always`) and nftables `synproxy` with conntrack, the peer an operator would deploy.
//!
//! One change to the attack section's lab: the router's end of the server's link gets NAPI (in a
//! thread on the attacker's CPU), because veth delivers what the server's XDP program sends
//! back (`XDP_TX`, the cookie SYN-ACKs) only to a peer with NAPI. Every case runs in that lab,
//! so the cases compare; the attack section's figures are from its own lab.

use std::{
    fmt::Write as _,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, ensure};

use super::{
    ATTACK_CPU, Affinity, Attacker, NftTable, Protection, Sample, Setup, Timing,
    http::{self, Nginx},
    lab::{self, ATTACK_RANGE, ATTACK_RANGE_V6, Family, Lab},
    measure_under, missing_tools, ms, target_of,
};
use crate::{
    daemon::{Daemon, Dirs},
    generator::Generator,
    report::{BenchOptions, Spread, tool_version},
};

const HEADING: &str = "## Under a random-source SYN flood: SYN cookies (issue #15)";
/// The nftables table of the synproxy case.
const SYNPROXY_TABLE: &str = "apat_synproxy";
/// Goals of issue #15 at 1 Mpps: apifw in cookie mode against the empty program and against
/// synproxy; item 6: apifw with its rule against apifw without rules.
const EMPTY_GOAL: f64 = 0.9;
const SYNPROXY_GOAL: f64 = 1.5;
const NO_RULES_GOAL: f64 = 0.9;
/// The floods of this section: XDP frames, as a NIC driver hands them to its XDP hook.
const ATTACKERS: [Attacker; 2] = [Attacker::XdpPaced, Attacker::XdpFull];

/// What protects the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Defence {
    /// No flood: the baseline of every share.
    NoFlood,
    /// The kernel's defaults (`net.ipv4.tcp_syncookies = 1`).
    Kernel,
    /// The empty XDP program (`apifw_empty`), which passes everything: the receive path's own
    /// cost in the same XDP mode.
    Empty,
    /// apifw with no rule and no list: everything passes through its program.
    ApifwNoRules,
    /// apifw with the rule of the lab and `syn_cookies = "off"`.
    ApifwLimits,
    /// The same rule with the default, `syn_cookies = "auto"`.
    ApifwAuto,
    /// The same rule with `syn_cookies = "always"`.
    ApifwAlways,
    /// nftables `synproxy` with conntrack, set up as its documentation does.
    Synproxy,
}

impl Defence {
    const UNDER_FLOOD: [Defence; 7] = [
        Defence::Kernel,
        Defence::Empty,
        Defence::ApifwNoRules,
        Defence::ApifwLimits,
        Defence::ApifwAuto,
        Defence::ApifwAlways,
        Defence::Synproxy,
    ];

    fn label(self) -> &'static str {
        match self {
            Defence::NoFlood => "no flood",
            Defence::Kernel => "no protection (the kernel's SYN cookies)",
            Defence::Empty => "empty XDP program (passes everything)",
            Defence::ApifwNoRules => "apifw without rules",
            Defence::ApifwLimits => "apifw, rate-limit rule, syn_cookies = \"off\"",
            Defence::ApifwAuto => "apifw, rate-limit rule, syn_cookies = \"auto\" (default)",
            Defence::ApifwAlways => "apifw, rate-limit rule, syn_cookies = \"always\"",
            Defence::Synproxy => "nftables synproxy (conntrack)",
        }
    }

    /// apifw's policy in apifw's cases.
    fn policy(self) -> Option<String> {
        let cookies = match self {
            Defence::ApifwNoRules => {
                return Some("[metrics]\nlisten = \"off\"\n".to_owned());
            }
            Defence::ApifwLimits => "off",
            Defence::ApifwAuto => "auto",
            Defence::ApifwAlways => "always",
            _ => return None,
        };
        Some(format!("{}\n[metrics]\nlisten = \"off\"\n", rule(cookies)))
    }

    /// Whether the filter column holds what the defence answered or dropped.
    fn counts(self) -> bool {
        self.policy().is_some() || self == Defence::Synproxy
    }
}

/// The rule of the lab: limits no client reaches (the client is one source).
fn rule(cookies: &str) -> String {
    format!(
        "[[rule]]\nname = \"api\"\nprotocol = \"tcp\"\nports = [80]\nsyn_cookies = \"{cookies}\"\n\
         per_source = {{ packets_per_second = 200000, burst_packets = 200000 }}\n\
         per_subnet = {{ packets_per_second = 400000, burst_packets = 400000, prefix_v4 = 24, \
         prefix_v6 = 64 }}\n"
    )
}

/// The nftables family of `family`'s synproxy table.
fn nft_family(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

/// nftables' synproxy for port 80 as the nftables wiki sets it up: SYNs untracked at the raw
/// priority, answered by synproxy, whose validated ACKs it hands to the listener with conntrack;
/// invalid packets dropped. For the family of the flood (`ip` or `ip6`).
fn synproxy_rules(family: Family) -> String {
    let nft_family = nft_family(family);
    format!(
        "table {nft_family} {SYNPROXY_TABLE} {{\n\
         \x20 chain prerouting {{\n\
         \x20   type filter hook prerouting priority raw; policy accept;\n\
         \x20   tcp dport 80 tcp flags syn notrack\n\
         \x20 }}\n\
         \x20 chain input {{\n\
         \x20   type filter hook input priority filter; policy accept;\n\
         \x20   tcp dport 80 ct state invalid,untracked counter synproxy mss 1460 wscale 7 timestamp sack-perm\n\
         \x20   ct state invalid drop\n\
         \x20 }}\n\
         }}\n"
    )
}

/// One row of the table: a defence under a flood (none: the baseline) of one family, with wrk
/// over the same family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SynRow {
    family: Family,
    defence: Defence,
    attacker: Option<Attacker>,
}

impl SynRow {
    fn label(self) -> String {
        match self.attacker {
            None => format!("{}: {}", self.family.label(), self.defence.label()),
            Some(attacker) => format!(
                "{}, {}: {}",
                self.family.label(),
                attacker.label(),
                self.defence.label()
            ),
        }
    }

    /// The row whose goodput this row's share is of: no flood, same family.
    fn baseline(self) -> SynRow {
        SynRow {
            family: self.family,
            defence: Defence::NoFlood,
            attacker: None,
        }
    }
}

/// The rows in report order: per family, no flood first (the baseline of the family's shares).
fn rows() -> Vec<SynRow> {
    let mut rows = Vec::new();
    for family in [Family::V4, Family::V6] {
        rows.push(SynRow {
            family,
            defence: Defence::NoFlood,
            attacker: None,
        });
        for attacker in ATTACKERS {
            for defence in Defence::UNDER_FLOOD {
                rows.push(SynRow {
                    family,
                    defence,
                    attacker: Some(attacker),
                });
            }
        }
    }
    rows
}

/// Installs the defence of `row`.
fn install<'a>(setup: &Setup<'a>, row: SynRow) -> anyhow::Result<Protection<'a>> {
    let lab = setup.lab;
    let defence = row.defence;
    if let Some(policy) = defence.policy() {
        let dirs = Dirs::new("apsc");
        dirs.write_policy(&policy);
        let daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
        return Ok(Protection::Apifw {
            _daemon: daemon,
            dirs,
        });
    }
    Ok(match defence {
        Defence::Empty => Protection::Floor(Box::new(crate::flood::peers::attach_bench_program(
            crate::programs::program_names::EMPTY,
            &lab.server,
            &lab.server_if,
        )?)),
        Defence::Synproxy => {
            let table = NftTable::install_rules(
                lab,
                setup.scratch,
                nft_family(row.family),
                SYNPROXY_TABLE,
                &synproxy_rules(row.family),
            )?;
            // The wiki's setting: conntrack must not pick up connections from their ACK.
            lab::exec(
                &lab.server,
                &["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0"],
            )?;
            Protection::Nft(table)
        }
        _ => Protection::None,
    })
}

/// Measures the section and returns it as Markdown, starting with its `##` heading.
pub fn run(opts: &BenchOptions) -> anyhow::Result<String> {
    if let Some(missing) = missing_tools(HEADING) {
        return Ok(missing);
    }
    ensure!(
        std::env::var_os("APIFW_BIN").is_some_and(|path| Path::new(&path).is_file()),
        "APIFW_BIN must name the apifw binary (`cargo xtask bench` sets it)"
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    ensure!(
        cpus >= 2,
        "the SYN flood benchmark needs two CPUs, this machine has {cpus}"
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
            // Twice the rows of one family: 3 runs keep the section near half an hour.
            opts.runs.min(3),
            Timing {
                seconds: 8,
                warmup: Duration::from_secs(1),
            },
        )
    };
    let _affinity = Affinity::pin(&[ATTACK_CPU])?;
    let scratch = crate::loadbench::TempDir::new("apifw-synflood")?;
    let lab = Lab::dual_stack().context("build the attack lab")?;
    let _router_napi = lab.router_napi(ATTACK_CPU)?;
    lab.pin_napi(server_cpu)?;
    let _nginx = Nginx::start(&lab, &scratch.0, server_cpu)?;
    let targets = [target_of(&lab, Family::V4), target_of(&lab, Family::V6)];
    let mut generator = Generator::start(ATTACK_CPU).context("start the XDP flood generator")?;
    // apifw's cookie SYN-ACKs rewrite the generator's pages in place.
    generator.restoring_template(true);
    let generator = Arc::new(Mutex::new(generator));
    for target in &targets {
        http::run_wrk(&lab, server_cpu, 1, target.dest)?;
    }
    let setup_of = |family: Family| Setup {
        lab: &lab,
        target: &targets[usize::from(family == Family::V6)],
        generator: &generator,
        timing: &timing,
        scratch: &scratch.0,
        server_cpu,
        repeat: opts.repeat,
    };
    let rows = rows();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); rows.len()];
    for run in 0..runs {
        for offset in 0..rows.len() {
            let index = (run + offset) % rows.len();
            let row = rows[index];
            let setup = setup_of(row.family);
            let protection =
                install(&setup, row).with_context(|| format!("install {}", row.label()))?;
            let sample = measure_under(&setup, protection, row.attacker, &row.label(), false)
                .with_context(|| format!("case {}, run {run}", row.label()))?;
            eprintln!(
                "bench: synflood run {run}: {}: {:.0} responses/s, p99 {:.2} ms, errors {}, \
                 flood {:.0} pkt/s offered, {:.0} lost at the ring, {:.0} filtered, NAPI CPU \
                 {:.0}%",
                row.label(),
                sample.load.goodput(),
                sample.load.p99_ms,
                sample.load.errors,
                sample.offered,
                sample.lost,
                sample.filtered,
                sample.napi_cpu * 100.0
            );
            samples[index].push(sample);
        }
    }
    Ok(markdown(opts, runs, &timing, &rows, &samples)?)
}

/// Per-run ratios of the goodput of `row` to that of `base` (runs measured in the same round).
fn ratios(rows: &[SynRow], samples: &[Vec<Sample>], row: SynRow, base: SynRow) -> Option<Spread> {
    let of = |wanted: SynRow| {
        rows.iter()
            .position(|r| *r == wanted)
            .map(|index| &samples[index])
    };
    let (ours, theirs) = (of(row)?, of(base)?);
    if ours.is_empty() || ours.len() != theirs.len() {
        return None;
    }
    let values: Vec<f64> = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| a.load.goodput() / b.load.goodput().max(1e-9))
        .collect();
    Some(Spread::of(&values))
}

fn markdown(
    opts: &BenchOptions,
    runs: usize,
    timing: &Timing,
    rows: &[SynRow],
    samples: &[Vec<Sample>],
) -> Result<String, std::fmt::Error> {
    let mut md = String::new();
    writeln!(md, "{HEADING}\n")?;
    if opts.quick {
        writeln!(
            md,
            "*Quick smoke run: 1 run of 2 s per case; not for the report.*\n"
        )?;
    }
    writeln!(
        md,
        "`cargo xtask bench -- --only synflood`. The lab of the attack section below (nginx \
         ({}), wrk with {} keep-alive connections for {} s per measurement, the server's one \
         veth in threaded NAPI on CPU 1 with nginx and wrk, the attacker on CPU 0), with a \
         random-source SYN flood no defence knows the range of: XDP frames from the in-kernel \
         generator at 1 Mpps and at full speed, SYNs to port 80. IPv4: from {ATTACK_RANGE} \
         (each address once per 131,072 frames: at 1 Mpps a source repeats every 0.13 s, which \
         the admission array of 65,536 slots per CPU mostly forgets in between, so the flood \
         looks like new sources to apifw's rule, and like a repeat to nothing else). IPv6: from \
         {ATTACK_RANGE_V6}, bits 32..63 of the source a permutation, so every frame is a new \
         source and a new /64 (2^32 frames before one repeats). wrk uses the flood's family. \
         The flood starts {:.1} s before wrk. SYN-ACKs to the spoofed sources go back to the \
         router, which discards them; here the router's end of the link has NAPI (a thread on \
         CPU 0), without which veth drops what the server's XDP sends back (`XDP_TX`): an XDP \
         program on it turns NAPI on, `apifw_blackhole`, which drops what goes to the spoofed \
         ranges (the blackhole's job, before a socket buffer exists) and passes the rest; its \
         NAPI thread is real-time, or the generator starves it and the server's answers to the \
         client are lost in its ring.\n",
        tool_version("nginx", &["-v"]),
        http::CONNECTIONS,
        timing.seconds,
        timing.warmup.as_secs_f64(),
    )?;
    writeln!(
        md,
        "Cases, all in the same run, {runs} runs in rotating order (median, spread min..max): \
         the kernel alone (`net.ipv4.tcp_syncookies = 1`, its default: cookies when the SYN \
         queue overflows); the empty XDP program in native mode (the receive path's own cost \
         in the mode apifw runs in); apifw without rules; apifw with the rule of the issue's \
         lab, `protocol = \"tcp\"`, `ports = [80]`, `per_source` 200k packets/s, `per_subnet` \
         (/24, /64) 400k packets/s (limits the client never reaches), once with each `syn_cookies` \
         setting; nftables synproxy for port 80 as the nftables wiki sets it up (SYNs \
         `notrack` at the raw priority, `ct state invalid,untracked synproxy mss 1460 wscale 7 \
         timestamp sack-perm`, `ct state invalid drop`, `nf_conntrack_tcp_loose = 0`; an `ip6` \
         table for the IPv6 flood). Shares are of the same family's no-flood row. \
         \"answered or dropped\" is apifw's drop counters (a SYN answered with a cookie counts \
         there) or the packets synproxy took.\n"
    )?;
    writeln!(
        md,
        "| case | goodput (responses/s) | spread | % of no flood | p99 latency (ms) | spread | \
         errors/run | flood sent (pkt/s) | lost at the ring (pkt/s) | answered or dropped \
         (pkt/s) | server NAPI CPU |"
    )?;
    writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for (row, runs) in rows.iter().zip(samples) {
        if runs.is_empty() {
            writeln!(md, "| {} | not measured | | | | | | | | | |", row.label())?;
            continue;
        }
        let field = |f: fn(&Sample) -> f64| Spread::of(&runs.iter().map(f).collect::<Vec<_>>());
        let goodput = field(|s| s.load.goodput());
        let share = ratios(rows, samples, *row, row.baseline()).unwrap_or(Spread {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        });
        let p99 = field(|s| s.load.p99_ms);
        let flood = row.attacker.is_some();
        let dash_or = |value: f64, shown: bool| {
            if shown {
                format!("{value:.0}")
            } else {
                "–".to_owned()
            }
        };
        writeln!(
            md,
            "| {} | {:.0} | {:.0}..{:.0} | {:.0}% ({:.0}..{:.0}) | {} | {}..{} | {:.0} | {} | {} \
             | {} | {:.0}% |",
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
            field(|s| s.load.errors as f64).median,
            dash_or(field(|s| s.offered).median, flood),
            dash_or(field(|s| s.lost).median, flood),
            dash_or(field(|s| s.filtered).median, row.defence.counts()),
            field(|s| s.napi_cpu).median * 100.0,
        )?;
    }
    writeln!(md)?;
    let verdict = |met: bool| if met { "met" } else { "**not met**" };
    let goal =
        |md: &mut String, what: &str, row: SynRow, base: SynRow, goal: f64| -> std::fmt::Result {
            match ratios(rows, samples, row, base) {
                Some(ratio) => writeln!(
                    md,
                    "- {what}: {:.2}× (median of the runs' ratios; {:.2}..{:.2}×), goal ≥ {goal}×: \
                     {}.",
                    ratio.median,
                    ratio.min,
                    ratio.max,
                    verdict(ratio.median >= goal)
                ),
                None => writeln!(md, "- {what}: not measured."),
            }
        };
    for family in [Family::V4, Family::V6] {
        goals(&mut md, family, &goal)?;
    }
    writeln!(
        md,
        "Where each loses (the columns above say how much): every case loses legitimate \
         packets where the flood outruns the server's one receive CPU, at its ring (a lost \
         packet stalls its connection for a retransmission timeout, ≥ 200 ms: the p99 column). \
         The kernel alone, the empty program and apifw without rules (or with its rule and \
         cookies off: the flood's sources are first sightings, which pass uncharged) send every \
         SYN up the stack, which answers it with the kernel's own cookie in the receive \
         thread: that thread is then busiest and the ring loses most. nftables synproxy adds \
         conntrack and netfilter's own SYN-ACK to each SYN: the most per SYN, the least \
         goodput. apifw in cookie mode answers each SYN in XDP (a socket lookup, the kernel's \
         cookie, the reply written over the frame and sent back), before a socket buffer \
         exists: at 1 Mpps the ring loses a fraction of what it loses without it; at full \
         speed the offered rate (several Mpps) is beyond any per-packet cost on one CPU, every \
         case loses most of the flood at the ring, and what cookie mode keeps over the kernel's \
         own cookies is the CPU it does not spend on the frames it does take. The IPv6 flood \
         makes every frame a new source and a new /64, so apifw's rule with cookies off sends \
         both keys of every frame through admission; the IPv6 stack's own cookies cost about \
         what IPv4's do. \
         The goodput figures of this two-CPU machine move by 2× between runs (the \
         no-flood rows' spread); the ratios are taken run by run.\n"
    )?;
    Ok(md)
}

/// The goals' lines of `family`'s rows; `goal` writes one (what, row, base row, goal).
fn goals(
    md: &mut String,
    family: Family,
    goal: &dyn Fn(&mut String, &str, SynRow, SynRow, f64) -> std::fmt::Result,
) -> std::fmt::Result {
    let at = |defence: Defence, attacker: Attacker| SynRow {
        family,
        defence,
        attacker: Some(attacker),
    };
    let family = family.label();
    for cookies in [Defence::ApifwAuto, Defence::ApifwAlways] {
        let name = if cookies == Defence::ApifwAuto {
            "`auto`"
        } else {
            "`always`"
        };
        goal(
            md,
            &format!("Goal, {family}, 1 Mpps: apifw with cookies ({name}) ÷ the empty XDP program"),
            at(cookies, Attacker::XdpPaced),
            at(Defence::Empty, Attacker::XdpPaced),
            EMPTY_GOAL,
        )?;
        goal(
            md,
            &format!("Goal, {family}, 1 Mpps: apifw with cookies ({name}) ÷ nftables synproxy"),
            at(cookies, Attacker::XdpPaced),
            at(Defence::Synproxy, Attacker::XdpPaced),
            SYNPROXY_GOAL,
        )?;
    }
    for attacker in ATTACKERS {
        for with_rule in [Defence::ApifwAuto, Defence::ApifwLimits] {
            goal(
                md,
                &format!(
                    "Goal (never worse than no rule), {family}, {}: {} ÷ apifw without rules",
                    attacker.label(),
                    with_rule.label()
                ),
                at(with_rule, attacker),
                at(Defence::ApifwNoRules, attacker),
                NO_RULES_GOAL,
            )?;
        }
        goal(
            md,
            &format!(
                "{family}, {}: apifw with cookies (`always`) ÷ the kernel's own SYN cookies",
                attacker.label()
            ),
            at(Defence::ApifwAlways, attacker),
            at(Defence::Kernel, attacker),
            1.0,
        )?;
    }
    Ok(())
}
