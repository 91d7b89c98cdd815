//! SYN cookies per packet (issue #15, item 5): what apifw's XDP programs cost to answer a SYN
//! with a cookie, to validate the ACK that comes back, and to take the first packet of a new
//! UDP source, each from a different source every packet, against the empty program run the
//! same way in the same run.
//!
//! Method. The cookie answer rewrites the frame into a SYN-ACK, so a `BPF_PROG_TEST_RUN` with
//! `repeat` would run every later repetition on the SYN-ACK: each frame runs once
//! (`repeat = 1`), with a new source written into it, and the kernel's own timing of that run
//! (`duration`, two clock reads around the program) is summed. The empty program is timed the
//! same way on the same frames, so both carry the same clock overhead; the ratio is what the
//! issue's goals are stated in. The firewall and its listener live in a private network
//! namespace with `net.ipv4.tcp_syncookies = 2`, so the kernel gives a cookie for every SYN (as
//! it does for a listener whose SYN queue overflowed): a test run's socket lookups happen in the
//! namespace of the calling thread. IPv6 sources are `2001:db8:XXXX:XXXX::1`, a new /64 each.

use std::{fmt::Write as _, net::TcpListener, path::Path};

use anyhow::{Context as _, bail};
use aya::{
    maps::{Array, PerCpuArray, PerCpuValues},
    programs::{TestRun as _, TestRunOptions},
};
use firewall_common::{
    Reason, map_names,
    program_names::FIREWALL,
    rules::{TrackKey, TrackState},
};
use firewall_userspace::{Firewall, Loaded};

use crate::{
    netns::Netns,
    programs::{TestPrograms, map_names as test_maps, program_names},
    report::BenchOptions,
    support::{OneCpu, kernel_map},
};

/// The port of the cookie rule, and of the UDP rule.
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;
/// What the programs return: `XDP_PASS` and `XDP_TX`.
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// Goals of issue #15, as ratios to the empty program.
const COOKIE_GOAL: f64 = 10.0;
const NEW_SOURCE_GOAL: f64 = 5.0;

fn policy() -> anyhow::Result<firewall_userspace::Policy> {
    let text = format!(
        r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [{TCP_PORT}]
syn_cookies = "always"
per_source = {{ packets_per_second = 1000, burst_packets = 1000 }}
per_subnet = {{ packets_per_second = 10000, burst_packets = 10000 }}

[[rule]]
name = "udp"
protocol = "udp"
ports = [{UDP_PORT}]
per_source = {{ packets_per_second = 1000, burst_packets = 1000 }}
per_subnet = {{ packets_per_second = 10000, burst_packets = 10000 }}
"#
    );
    Ok(Loaded::from_str(Path::new("syncookie-bench.toml"), &text)?.policy)
}

/// An Ethernet/IPv6 frame from `2001:db8::1` to `2001:db8::2` carrying `transport`
/// (`build` writes it); [`set_source`] then gives it its source.
fn frame(udp: bool) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ipv6(
            std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).octets(),
            std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2).octets(),
            64,
        );
    let mut out = Vec::new();
    if udp {
        builder.udp(40_000, UDP_PORT).write(&mut out, &[0; 32])
    } else {
        builder
            .tcp(40_000, TCP_PORT, 1000, 64_240)
            .syn()
            .options(&[etherparse::TcpOptionElement::MaximumSegmentSize(1460)])
            .expect("options")
            .write(&mut out, &[])
    }
    .expect("frame");
    out
}

/// Bits 32..63 of the IPv6 source (a new /64 per `n`); checksums are not what is measured.
fn set_source(frame: &mut [u8], n: u32) {
    frame[14 + 8 + 4..14 + 8 + 8].copy_from_slice(&n.to_be_bytes());
}

/// One timed run of `program` on `frame`: the kernel's duration in ns, the return value, and
/// the bytes the program left (for the SYN-ACK).
fn run_once(
    programs: &mut Runner<'_>,
    which: Which,
    frame: &[u8],
    out: &mut [u8],
) -> anyhow::Result<(u64, u32, usize)> {
    let program = match which {
        Which::Firewall => programs.firewall.program_mut(FIREWALL)?,
        Which::Empty => programs.test.program_mut(program_names::EMPTY)?,
    };
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(out),
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok((
        u64::try_from(result.duration.as_nanos()).unwrap_or(u64::MAX),
        result.return_value,
        result.data_size_out as usize,
    ))
}

#[derive(Clone, Copy)]
enum Which {
    Firewall,
    Empty,
}

struct Runner<'a> {
    firewall: &'a mut Firewall,
    test: &'a mut TestPrograms,
}

/// One measured case: ns per packet, summed over its packets.
#[derive(Default)]
struct Case {
    apifw_ns: u64,
    empty_ns: u64,
    packets: u64,
}

impl Case {
    fn apifw(&self) -> f64 {
        self.apifw_ns as f64 / self.packets.max(1) as f64
    }
    fn empty(&self) -> f64 {
        self.empty_ns as f64 / self.packets.max(1) as f64
    }
    fn ratio(&self) -> f64 {
        self.apifw_ns as f64 / self.empty_ns.max(1) as f64
    }
}

/// The first packet of a new UDP source, `packets` of them, through the sprayer
/// (`test-ebpf/src/spray.rs`: a new IPv6 /64 each packet, then a tail call) into the firewall
/// and into the empty program, one test run each with `repeat` = `packets`, as a flood arrives:
/// back to back on one CPU with the code in cache. `first` is the sprayer's first source index.
fn spray_new_sources(
    runner: &mut Runner<'_>,
    frame: &[u8],
    first: u64,
    packets: u32,
) -> anyhow::Result<Case> {
    let cpus = aya::util::nr_cpus().map_err(|(what, err)| anyhow::anyhow!("{what}: {err}"))?;
    let mut case = Case::default();
    for which in [Which::Firewall, Which::Empty] {
        let fd = match which {
            Which::Firewall => runner.firewall.program_mut(FIREWALL)?,
            Which::Empty => runner.test.program_mut(program_names::EMPTY)?,
        }
        .fd()?
        .try_clone()
        .context("clone program fd")?;
        runner.test.set_spray_target(&fd)?;
        let mut shift: Array<_, u64> =
            Array::try_from(runner.test.map_mut(test_maps::SPRAY_SHIFT)?)?;
        shift.set(0, 0, 0)?;
        let mut counter: PerCpuArray<_, u64> =
            PerCpuArray::try_from(runner.test.map_mut(test_maps::SPRAY_COUNTER)?)?;
        counter.set(0, PerCpuValues::try_from(vec![first; cpus])?, 0)?;
        let result = runner
            .test
            .program_mut(program_names::SPRAY)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat: packets,
                ..TestRunOptions::default()
            })
            .context("BPF_PROG_TEST_RUN of the sprayer")?;
        if result.return_value != XDP_PASS {
            bail!(
                "the sprayer returned {} (0: the tail call failed)",
                result.return_value
            );
        }
        let ns = u64::try_from(result.duration.as_nanos()).unwrap_or(u64::MAX) * u64::from(packets);
        match which {
            Which::Firewall => case.apifw_ns += ns,
            Which::Empty => case.empty_ns += ns,
        }
    }
    case.packets = u64::from(packets);
    Ok(case)
}

/// What the section measures.
struct Measured {
    syn: Case,
    ack: Case,
    /// The first UDP packet of a new source, each run cold (`repeat` = 1), with every SYN's
    /// source proven and tracked.
    udp: Case,
    /// Through the sprayer, no other source tracked.
    sprayed_fresh: Case,
    /// Through the sprayer, with every SYN's source proven and tracked.
    sprayed_tracked: Case,
    sprayed_packets: u32,
}

/// Sprayer runs per figure (the median is reported).
const SPRAY_ROUNDS: u64 = 3;

/// The median of [`SPRAY_ROUNDS`] sprayer runs of `packets` new sources each, fresh sources
/// every run.
fn sprayed(
    runner: &mut Runner<'_>,
    frame: &[u8],
    first: u64,
    packets: u32,
) -> anyhow::Result<Case> {
    let mut cases = Vec::new();
    for round in 0..SPRAY_ROUNDS {
        cases.push(spray_new_sources(
            runner,
            frame,
            first + round * u64::from(packets),
            packets,
        )?);
    }
    cases.sort_by(|a, b| a.ratio().total_cmp(&b.ratio()));
    Ok(cases.swap_remove(cases.len() / 2))
}

/// The measurements, in the calling thread's (private) namespace.
fn measure(sources: u32, sprayed_packets: u32) -> anyhow::Result<Measured> {
    let _pinned = OneCpu::pin_last()?;
    // The listener the cookies are for: dual-stack, any address.
    let _listener = TcpListener::bind(("::", TCP_PORT)).context("listen on [::]:8080")?;
    let policy = policy()?;
    let mut firewall = Firewall::load(&policy).context("load apifw (root needed)")?;
    let mut test = TestPrograms::load()?;
    let mut runner = Runner {
        firewall: &mut firewall,
        test: &mut test,
    };
    let udp_template = frame(true);
    // The sprayer's sources are its own range, far from the loop's below.
    let spray_first = 1 << 40;
    let sprayed_fresh = sprayed(&mut runner, &udp_template, spray_first, sprayed_packets)?;
    let (mut syn, mut ack, mut udp) = (Case::default(), Case::default(), Case::default());
    let mut out = vec![0u8; 256];
    let mut syn_frame = frame(false);
    let mut udp_frame = frame(true);
    for n in 0..sources {
        set_source(&mut syn_frame, n);
        let (empty_ns, code, _) = run_once(&mut runner, Which::Empty, &syn_frame, &mut out)?;
        if code != XDP_PASS {
            bail!("the empty program returned {code}");
        }
        let (ns, code, len) = run_once(&mut runner, Which::Firewall, &syn_frame, &mut out)?;
        if code != XDP_TX {
            bail!("the SYN of source {n} was not answered with a cookie (XDP action {code})");
        }
        syn.apifw_ns += ns;
        syn.empty_ns += empty_ns;
        syn.packets += 1;
        // The client's ACK: the cookie (the SYN-ACK's sequence number) plus one.
        let reply = &out[..len];
        let tcp = 14 + 40;
        let cookie = u32::from_be_bytes(reply[tcp + 4..tcp + 8].try_into()?);
        let ack_frame =
            etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
                .ipv6(
                    std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).octets(),
                    std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2).octets(),
                    64,
                )
                .tcp(40_000, TCP_PORT, 1001, 64_240)
                .ack(cookie.wrapping_add(1));
        let mut ack_bytes = Vec::new();
        ack_frame.write(&mut ack_bytes, &[]).context("ACK frame")?;
        set_source(&mut ack_bytes, n);
        let (empty_ns, _, _) = run_once(&mut runner, Which::Empty, &ack_bytes, &mut out)?;
        let (ns, code, _) = run_once(&mut runner, Which::Firewall, &ack_bytes, &mut out)?;
        if code != XDP_PASS {
            bail!("the ACK of source {n} was not passed (XDP action {code})");
        }
        ack.apifw_ns += ns;
        ack.empty_ns += empty_ns;
        ack.packets += 1;
        set_source(&mut udp_frame, n);
        let (empty_ns, _, _) = run_once(&mut runner, Which::Empty, &udp_frame, &mut out)?;
        let (ns, code, _) = run_once(&mut runner, Which::Firewall, &udp_frame, &mut out)?;
        if code != XDP_PASS {
            bail!("the UDP packet of source {n} was not passed (XDP action {code})");
        }
        udp.apifw_ns += ns;
        udp.empty_ns += empty_ns;
        udp.packets += 1;
    }
    // Every packet took the path it is reported under.
    let stats = runner.firewall.stats()?;
    let count = |rule, reason| stats.rule(rule, reason).packets;
    let expected = u64::from(sources);
    if count(0, Reason::SynCookie) != expected || count(0, Reason::CookieValid) != expected {
        bail!(
            "{} SYNs answered and {} ACKs validated of {expected}",
            count(0, Reason::SynCookie),
            count(0, Reason::CookieValid)
        );
    }
    let sprayed_tracked = sprayed(
        &mut runner,
        &udp_template,
        spray_first + SPRAY_ROUNDS * u64::from(sprayed_packets),
        sprayed_packets,
    )?;
    // Every UDP packet passed under its rule as a first sighting: none got per-source state.
    let stats = runner.firewall.stats()?;
    let udp_expected = expected + 2 * SPRAY_ROUNDS * u64::from(sprayed_packets);
    if stats.rule(1, Reason::Default).packets != udp_expected {
        bail!(
            "{} UDP packets passed of {udp_expected}",
            stats.rule(1, Reason::Default).packets
        );
    }
    let tracked: std::collections::HashMap<TrackKey, TrackState> =
        kernel_map(runner.firewall, map_names::SOURCES);
    let udp_tracked = tracked.keys().filter(|key| key.rule == 1).count();
    if udp_tracked != 0 {
        bail!("{udp_tracked} UDP sources got per-source state");
    }
    Ok(Measured {
        syn,
        ack,
        udp,
        sprayed_fresh,
        sprayed_tracked,
        sprayed_packets,
    })
}

/// The section, Markdown.
pub fn run(opts: &BenchOptions) -> anyhow::Result<String> {
    let sources: u32 = if opts.quick { 20_000 } else { 1_000_000 };
    let sprayed_packets: u32 = if opts.quick { 200_000 } else { 10_000_000 };
    let netns = Netns::new("bsyn");
    netns.exec(&["sysctl", "-qw", "net.ipv4.tcp_syncookies=2"]);
    let measured = netns.enter(move || measure(sources, sprayed_packets))?;
    let mut out = String::new();
    writeln!(
        out,
        "## SYN cookies and new sources per packet (issue #15)\n\n\
         `cargo xtask bench -- --only syncookie`. A rule with `syn_cookies = \"always\"` on TCP \
         {TCP_PORT}, a listener in a namespace with `net.ipv4.tcp_syncookies = 2` (so the kernel \
         gives a cookie for every SYN, as it does for a listener whose SYN queue overflowed), and \
         a UDP rule on {UDP_PORT}; both limit per source and per /64. Every packet comes from a \
         new IPv6 source (a new /64 each). Two methods:\n\n\
         - **Each packet cold** ({sources} sources): the cookie answer rewrites the frame, so \
         each frame runs once (`repeat` = 1) and the kernel's timing of the run is summed; the \
         empty program runs the same frames the same way. Every run starts after a system call, \
         with the caches the call left: this is the costlier view of both programs. The ACK \
         carries the cookie of its SYN's answer, so by the UDP row every SYN's source is proven \
         and tracked.\n\
         - **A flood, back to back** ({sprayed} distinct sources per run, median of \
         {SPRAY_ROUNDS} runs): the sprayer of the sources section rewrites the source before \
         every run of one `repeat` = N test run and tail-calls the firewall or the empty \
         program, as a NAPI poll runs a burst: the method of the issue's 73× figure. Once \
         before the cold rows (no other source tracked) and once after them (the {sources} \
         proven sources tracked, which fills the tracked filter: every unknown source then pays \
         the LRU lookup too).\n\n\
         The counters are checked: every SYN answered (`syn_cookie`), every ACK validated \
         (`cookie_valid`), every UDP packet passed as a first sighting (`default`), and no UDP \
         source got per-source state.\n",
        sprayed = measured.sprayed_packets,
    )?;
    writeln!(
        out,
        "| case | apifw ns/packet | empty program ns/packet | ratio | goal |\n|---|---:|---:|---:|---|"
    )?;
    let cold = "each packet cold";
    let flood = "a flood, back to back";
    for (label, method, case, goal) in [
        (
            "SYN answered with a cookie (XDP_TX)",
            cold,
            &measured.syn,
            Some(COOKIE_GOAL),
        ),
        (
            "ACK with a valid cookie (socket lookup, check, source proven)",
            cold,
            &measured.ack,
            None,
        ),
        (
            "first UDP packet of a new source, proven sources tracked",
            cold,
            &measured.udp,
            Some(NEW_SOURCE_GOAL),
        ),
        (
            "first UDP packet of a new source, no other source tracked",
            flood,
            &measured.sprayed_fresh,
            Some(NEW_SOURCE_GOAL),
        ),
        (
            "first UDP packet of a new source, proven sources tracked",
            flood,
            &measured.sprayed_tracked,
            Some(NEW_SOURCE_GOAL),
        ),
    ] {
        let goal = goal.map_or("—".to_owned(), |goal| {
            format!(
                "≤ {goal}×: {}",
                if case.ratio() <= goal {
                    "met"
                } else {
                    "**not met**"
                }
            )
        });
        writeln!(
            out,
            "| {label} ({method}) | {:.0} | {:.0} | {:.1}× | {goal} |",
            case.apifw(),
            case.empty(),
            case.ratio()
        )?;
    }
    writeln!(
        out,
        "\nA new source's first packet costs the parse, the prefix summary and rule lookups, \
         the coarse clock, the tail call into the limits program, and for the source and for \
         its /64 one read of the tracked filter and one admission store \
         (`firewall_common::tracked`, `firewall_common::admission`); no LRU lookup and no \
         insert, unless the filter holds the key's bit. The empty program's figure is mostly \
         `BPF_PROG_TEST_RUN`'s own cost per run, which a 5× goal leaves apifw four times over \
         for all of that. The multi-CPU figure of the issue's goal (a new source's cost on many \
         CPUs at once) is the multicore section's, which needs the 16-CPU machine.\n"
    )?;
    Ok(out)
}
