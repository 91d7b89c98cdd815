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
use aya::programs::{TestRun as _, TestRunOptions};
use firewall_common::{Reason, program_names::FIREWALL};
use firewall_userspace::{Firewall, Loaded};

use crate::{
    netns::Netns,
    programs::{TestPrograms, program_names},
    report::BenchOptions,
    support::OneCpu,
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

/// The measurements, in the calling thread's (private) namespace.
fn measure(sources: u32) -> anyhow::Result<(Case, Case, Case)> {
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
    if count(1, Reason::Default) != expected {
        bail!(
            "{} UDP packets passed of {expected}",
            count(1, Reason::Default)
        );
    }
    Ok((syn, ack, udp))
}

/// The section, Markdown.
pub fn run(opts: &BenchOptions) -> anyhow::Result<String> {
    let sources: u32 = if opts.quick { 20_000 } else { 1_000_000 };
    let netns = Netns::new("bsyn");
    netns.exec(&["sysctl", "-qw", "net.ipv4.tcp_syncookies=2"]);
    let (syn, ack, udp) = netns.enter(move || measure(sources))?;
    let mut out = String::new();
    writeln!(
        out,
        "## SYN cookies per packet (issue #15)\n\n\
         `cargo xtask bench -- --only syncookie`. Each packet from a new IPv6 source \
         ({sources} sources, a new /64 each), each frame run once with `BPF_PROG_TEST_RUN` and \
         the kernel's timing of the run summed; the empty program runs the same frames the same \
         way (both carry the same two clock reads). A rule with `syn_cookies = \"always\"` on a \
         listener in a namespace with `net.ipv4.tcp_syncookies = 2`, so every SYN gets the \
         kernel's cookie; the ACK carries the cookie of its SYN's answer. The counters are \
         checked: every SYN answered (`syn_cookie`), every ACK validated (`cookie_valid`), \
         every UDP packet passed.\n"
    )?;
    writeln!(
        out,
        "| case | apifw ns/packet | empty program ns/packet | ratio | goal |\n|---|---:|---:|---:|---|"
    )?;
    for (label, case, goal) in [
        (
            "SYN answered with a cookie (XDP_TX)",
            &syn,
            Some(COOKIE_GOAL),
        ),
        (
            "ACK with a valid cookie (socket lookup, check, source proven)",
            &ack,
            None,
        ),
        (
            "first UDP packet of a new source (admission store)",
            &udp,
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
            "| {label} | {:.0} | {:.0} | {:.1}× | {goal} |",
            case.apifw(),
            case.empty(),
            case.ratio()
        )?;
    }
    writeln!(
        out,
        "\nThe multi-CPU figure of the issue's goal (a new source's cost on many CPUs at once) \
         is the multicore section's, which needs the 16-CPU machine.\n"
    )?;
    Ok(out)
}
