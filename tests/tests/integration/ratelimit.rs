//! Kernel verdict tests of the rate-limit rules: the loaded program, driven by the test clock,
//! must reach the reference model's verdict for every frame of a long mixed sequence, and its
//! global and per-rule counters must match the model's exactly.
//!
//! Needs root (CAP_BPF). Each test loads its own copy of the object.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use apifw_tests::{
    policies::RATE_LIMIT_RULES,
    support::{BpffsDir, OneCpu, admission_slots, kernel_map, tracked_entries},
    tally::Tally,
};
use aya::programs::{TestRun as _, TestRunOptions};
use etherparse::PacketBuilder;
use firewall_common::{
    Action, Reason, map_names,
    model::Model,
    program_names,
    rules::{TrackKey, TrackState},
};
use firewall_userspace::{Firewall, Loaded, Policy};
use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};

const LISTS: &str = r#"
[allow]
cidrs = ["203.0.113.7/32"]
[block]
cidrs = ["198.18.0.0/15"]
"#;

fn policy(dry_run: bool) -> Policy {
    let mut policy = Loaded::from_str(
        Path::new("ratelimit.toml"),
        &format!("{LISTS}{RATE_LIMIT_RULES}"),
    )
    .unwrap_or_else(|err| panic!("{err}"))
    .policy;
    policy.dry_run = dry_run;
    policy
}

fn sources() -> Vec<IpAddr> {
    let mut sources: Vec<IpAddr> = vec![
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
        IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1)),
    ];
    for host in [1, 2, 3, 200] {
        sources.push(IpAddr::V4(Ipv4Addr::new(192, 0, 2, host)));
    }
    for host in [1, 9] {
        sources.push(IpAddr::V4(Ipv4Addr::new(198, 51, 100, host)));
    }
    for (subnet, host) in [(1, 1), (1, 2), (2, 1)] {
        sources.push(IpAddr::V6(Ipv6Addr::new(
            0x2001, 0xdb8, 0xa, subnet, 0, 0, 0, host,
        )));
    }
    sources
}

/// A frame from `src` of one of a few kinds that the rules above treat differently.
fn frame(rng: &mut SmallRng, src: IpAddr) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]);
    let builder = match src {
        IpAddr::V4(src) => builder.ipv4(src.octets(), [192, 0, 2, 254], 64),
        IpAddr::V6(src) => builder.ipv6(
            src.octets(),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).octets(),
            64,
        ),
    };
    let payload = vec![0u8; rng.random_range(0..200)];
    let mut out = Vec::new();
    let kind = rng.random_range(0..7);
    let written = match kind {
        0..=2 => {
            let port = [443, 8443, 80, 22][rng.random_range(0..4)];
            let tcp = builder.tcp(40000, port, 1, 1000);
            let tcp = match rng.random_range(0..3) {
                0 => tcp.syn(),
                1 => tcp.syn().ack(1),
                _ => tcp.ack(1),
            };
            tcp.write(&mut out, &payload)
        }
        3 | 4 => builder
            .udp(40000, [53, 123, 5353][rng.random_range(0..3)])
            .write(&mut out, &payload),
        _ => builder.icmpv4_echo_request(1, 1).write(&mut out, &payload),
    };
    // ICMPv4 over IPv6 is not a thing etherparse builds; fall back to UDP for those.
    if written.is_err() || out.is_empty() {
        out.clear();
        let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]);
        let builder = match src {
            IpAddr::V4(src) => builder.ipv4(src.octets(), [192, 0, 2, 254], 64),
            IpAddr::V6(src) => builder.ipv6(
                src.octets(),
                Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).octets(),
                64,
            ),
        };
        builder
            .udp(40000, 5353)
            .write(&mut out, &payload)
            .expect("write UDP");
    }
    out
}

pub(crate) fn run(firewall: &mut Firewall, frame: &[u8]) -> Action {
    let program = firewall
        .program_mut(program_names::FIREWALL)
        .expect("program");
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        })
        .unwrap_or_else(|err| panic!("BPF_PROG_TEST_RUN: {err}"));
    match result.return_value {
        2 => Action::Pass,
        1 => Action::Drop,
        other => panic!("XDP returned {other}"),
    }
}

/// Replays `count` frames at random moments through kernel and model; returns how often each
/// reason came up.
fn replay(dry_run: bool, seed: u64, count: usize, check_reasons: bool) -> HashMap<Reason, u64> {
    let sources = sources();
    replay_frames(policy(dry_run), seed, count, check_reasons, |rng| {
        // Mostly bursts (same instant or microseconds apart), sometimes long pauses.
        let step = match rng.random_range(0..10) {
            0..=6 => rng.random_range(0..20_000),
            7 | 8 => rng.random_range(0..5_000_000),
            _ => rng.random_range(0..50_000_000),
        };
        let src = sources[rng.random_range(0..sources.len())];
        (step, src, frame(rng, src))
    })
}

/// Replays `count` frames through kernel and model, `next` giving each one's delay (ns after
/// the previous), source and bytes; returns how often each reason came up. Every verdict must
/// match, every counter at the end, and with `check_reasons` each frame's counter as it goes.
pub(crate) fn replay_frames(
    policy: Policy,
    seed: u64,
    count: usize,
    check_reasons: bool,
    mut next: impl FnMut(&mut SmallRng) -> (u64, IpAddr, Vec<u8>),
) -> HashMap<Reason, u64> {
    let _one_cpu = OneCpu::pin();
    let mut model = Model::new(policy.model());
    let mut firewall = Firewall::load(&policy).expect("load firewall");
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut now_ns: u64 = 5_000_000_000;
    let mut tally = Tally::default();
    let mut reasons: HashMap<Reason, u64> = HashMap::new();
    for i in 0..count {
        let (step, src, frame) = next(&mut rng);
        now_ns += step;
        firewall.set_test_clock(now_ns).expect("set clock");
        let decision = model.decide(&frame, now_ns);
        let got = run(&mut firewall, &frame);
        assert_eq!(
            got, decision.verdict.action,
            "frame {i} from {src} at {now_ns} ns: model {decision:?}"
        );
        tally.add(decision, frame.len());
        *reasons.entry(decision.verdict.reason).or_default() += 1;
        if check_reasons {
            let snapshot = firewall.stats().expect("counters");
            let counter = snapshot.get(decision.verdict.action, decision.verdict.reason);
            assert_eq!(
                counter.packets,
                tally.global[&(decision.verdict.action, decision.verdict.reason)].0,
                "frame {i} from {src}: kernel counted another reason than the model's {decision:?}"
            );
        }
    }
    tally.assert_matches(&firewall, "after the replay");
    reasons
}

#[test]
fn rate_limits_match_the_model_frame_by_frame() {
    let reasons = replay(false, 0x7A7E_0003, 4_000, false);
    for reason in [
        Reason::Default,
        Reason::Allowlist,
        Reason::Blocklist,
        Reason::RateLimited,
        Reason::SynLimited,
        Reason::WouldDrop,
        Reason::Banned,
        Reason::SubnetBanned,
    ] {
        assert!(
            reasons.get(&reason).copied().unwrap_or(0) >= 20,
            "the sequence must exercise {reason:?}: {reasons:?}"
        );
    }
}

#[test]
fn each_frame_counts_under_the_model_reason() {
    replay(false, 0x7A7E_0004, 600, true);
}

#[test]
fn global_dry_run_passes_everything_and_counts_would_drop() {
    let reasons = replay(true, 0x7A7E_0003, 3_000, false);
    assert_eq!(reasons.get(&Reason::RateLimited), None, "{reasons:?}");
    assert_eq!(reasons.get(&Reason::SynLimited), None, "{reasons:?}");
    assert!(
        reasons.get(&Reason::WouldDrop).copied().unwrap_or(0) >= 100,
        "{reasons:?}"
    );
}

/// A UDP datagram from `src` to the mDNS rule's port, with 0-199 bytes of payload.
fn mdns_frame(rng: &mut SmallRng, src: IpAddr) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]);
    let builder = match src {
        IpAddr::V4(src) => builder.ipv4(src.octets(), [192, 0, 2, 254], 64),
        IpAddr::V6(src) => builder.ipv6(
            src.octets(),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).octets(),
            64,
        ),
    };
    let mut out = Vec::new();
    builder
        .udp(40000, 5353)
        .write(&mut out, &vec![0u8; rng.random_range(0..200)])
        .expect("write UDP");
    out
}

/// Leases (`firewall_common::lease`): bursts from a few hot sources (two of one /24) to the
/// mDNS rule, whose rates lease 2 packets and 300 bytes per source, 400 bytes per subnet, spent within a lease's
/// life and across its expiry, among hundreds of other sources whose slots collide with the hot
/// ones' (their units go back when a slot changes hands). Kernel and model agree frame by frame
/// and in every counter.
#[test]
fn leases_match_the_model_frame_by_frame() {
    let hot = [
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xa, 1, 0, 0, 0, 1)),
    ];
    // 203.0.113.7 is allowlisted (LISTS): skipped.
    let cold: Vec<IpAddr> = (1..=254u8)
        .map(|host| IpAddr::V4(Ipv4Addr::new(198, 51, 100, host)))
        .chain(
            (1..=254u8)
                .filter(|host| *host != 7)
                .map(|host| IpAddr::V4(Ipv4Addr::new(203, 0, 113, host))),
        )
        .collect();
    let reasons = replay_frames(policy(false), 0x1EA5_E500, 20_000, false, |rng| {
        // Mostly within a lease's millisecond, sometimes past its expiry, rarely long pauses.
        let step = match rng.random_range(0..100) {
            0..=89 => rng.random_range(0..30_000),
            90..=97 => rng.random_range(0..1_500_000),
            _ => rng.random_range(0..20_000_000),
        };
        let src = if rng.random_bool(0.7) {
            hot[rng.random_range(0..hot.len())]
        } else {
            cold[rng.random_range(0..cold.len())]
        };
        (step, src, mdns_frame(rng, src))
    });
    for reason in [Reason::Default, Reason::RateLimited] {
        assert!(
            reasons.get(&reason).copied().unwrap_or(0) >= 1_000,
            "the sequence must exercise {reason:?} often: {reasons:?}"
        );
    }
}

/// What two CPUs hammering one source's bucket admitted: (admitted, offered).
///
/// Both CPUs run `per_thread` packets at each of `steps` instants `step_ns` apart of the test
/// clock, after a warm-up one second before (the source's first packet only makes it a
/// sighted, the second gives it state; the bucket is full again by the first step).
fn two_cpus_hammer(per_source: &str, steps: u64, step_ns: u64, per_thread: u32) -> (u64, u64) {
    use std::sync::{Arc, Barrier};

    use aya::programs::Xdp;
    use aya_obj::programs::XdpAttachType;

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let policy = Loaded::from_str(
        Path::new("cas.toml"),
        &format!(
            "[[rule]]\nname = \"dns\"\nprotocol = \"udp\"\nports = [53]\nper_source = {per_source}\n"
        ),
    )
    .unwrap_or_else(|err| panic!("{err}"))
    .policy;
    let mut firewall = Firewall::load(&policy).expect("load firewall");
    let pin = BpffsDir::create("test-cas").expect("pin dir");
    let program_pin = pin.join("apifw");
    firewall
        .program_mut(program_names::FIREWALL)
        .expect("program")
        .pin(&program_pin)
        .expect("pin program");

    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ipv4([192, 0, 2, 10], [192, 0, 2, 254], 64)
        .udp(40000, 53)
        .write(&mut out, &[0u8; 18])
        .expect("frame");
    let frame = Arc::new(out);

    let start_ns = 10_000_000_000u64;
    let threads = cpus.min(2);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|cpu| {
            let (barrier, frame, program_pin) =
                (barrier.clone(), frame.clone(), program_pin.clone());
            std::thread::spawn(move || {
                let mut set = nix::sched::CpuSet::new();
                set.set(cpu).expect("cpu set");
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                    .expect("affinity");
                let program = Xdp::from_pin(&program_pin, XdpAttachType::Interface)
                    .expect("open pinned program");
                for _ in 0..steps {
                    barrier.wait();
                    program
                        .test_run(TestRunOptions {
                            data_in: Some(&frame),
                            repeat: per_thread,
                            ..TestRunOptions::default()
                        })
                        .expect("test run");
                    barrier.wait();
                }
            })
        })
        .collect();
    for _ in 0..2 {
        firewall
            .set_test_clock(start_ns - 1_000_000_000)
            .expect("clock");
        firewall
            .program_mut(program_names::FIREWALL)
            .expect("program")
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                ..TestRunOptions::default()
            })
            .expect("warm-up run");
    }
    let warm = firewall
        .stats()
        .expect("counters")
        .rule(0, Reason::Default)
        .packets;
    assert_eq!(warm, 2, "both warm-up packets pass");
    for step in 0..steps {
        firewall
            .set_test_clock(start_ns + step * step_ns)
            .expect("clock");
        barrier.wait(); // go
        barrier.wait(); // both CPUs done with this instant
    }
    for worker in workers {
        worker.join().expect("worker");
    }

    let snapshot = firewall.stats().expect("counters");
    let admitted = snapshot.rule(0, Reason::Default).packets - warm;
    let limited = snapshot.rule(0, Reason::RateLimited).packets;
    let offered = steps * threads as u64 * u64::from(per_thread);
    assert_eq!(admitted + limited, offered, "every packet counted once");
    (admitted, offered)
}

/// Both CPUs hammer one source's bucket at the same instants of the test clock. A bucket whose
/// update is not atomic lets both CPUs spend the same token; the compare-and-exchange update must
/// admit exactly what the rate allows, however the CPUs interleave. (Below 1,000 units/s a bucket
/// leases nothing beyond the packet, so every one of these units is its own compare-and-exchange
/// on the shared TAT.)
#[test]
fn one_bucket_shared_by_two_cpus_admits_exactly_the_rate() {
    // Three times what the rate allows in a 1 s step, so that both CPUs spend tokens at the
    // same moments for most of each step. A full bucket holds 999 packets and refills
    // completely in each step: exactly 999 packets per instant.
    let (admitted, offered) = two_cpus_hammer(
        "{ packets_per_second = 999, burst_packets = 999 }",
        200,
        1_000_000_000,
        1_500,
    );
    assert_eq!(admitted, 999 * 200, "admitted {admitted} of {offered}");
}

/// The bound of leases (`firewall_common::lease`) on two CPUs: at 100,000 packets/s a lease is
/// 100 packets, and the units admitted since the bucket was created never exceed
/// `burst + rate × t`, nor fall short of it by more than the units two CPUs can hold in their
/// leases (2 × 100), however the CPUs interleave.
#[test]
fn two_cpus_with_leases_stay_within_the_stated_bound() {
    const STEPS: u64 = 300;
    // 1 ms steps: 100 units each; 500 in the full bucket at the first step.
    let allowed = 500 + 100 * (STEPS - 1);
    let (admitted, offered) = two_cpus_hammer(
        "{ packets_per_second = 100000, burst_packets = 500 }",
        STEPS,
        1_000_000,
        300,
    );
    assert!(
        admitted <= allowed,
        "admitted {admitted} of {offered}: more than burst + rate × t = {allowed}"
    );
    assert!(
        admitted + 2 * 100 >= allowed,
        "admitted {admitted} of {offered}: short of {allowed} by more than two leases"
    );
}

/// A low rate (20 packets/s, as a SYN limit) leases nothing beyond the packet, so two CPUs
/// admit exactly `burst + rate × t`.
#[test]
fn a_low_rate_stays_exact_on_two_cpus() {
    const STEPS: u64 = 100;
    // 50 ms steps: one unit each; 2 in the full bucket at the first step.
    let (admitted, offered) = two_cpus_hammer(
        "{ packets_per_second = 20, burst_packets = 2 }",
        STEPS,
        50_000_000,
        50,
    );
    assert_eq!(
        admitted,
        2 + (STEPS - 1),
        "admitted {admitted} of {offered}"
    );
}

/// A flood of one-packet spoofed sources, far more than the source map holds, evicts neither
/// the bucket state of a source that is really talking nor a ban.
#[test]
fn one_packet_spoofed_sources_evict_neither_client_state_nor_bans() {
    let policy = Loaded::from_str(
        Path::new("spoof.toml"),
        r#"
[[rule]]
name = "ntp"
protocol = "udp"
ports = [123]
per_source = { packets_per_second = 1, burst_packets = 2 }

[[rule]]
name = "dns"
protocol = "udp"
ports = [53]
per_source = { packets_per_second = 1, burst_packets = 2 }
on_exceed = "ban"
ban_after = "0s"
ban_ttl = "1h"

[limits]
max_tracked_sources = 64
max_tracked_subnets = 64
"#,
    )
    .unwrap_or_else(|err| panic!("{err}"))
    .policy;
    let one_cpu = OneCpu::pin();
    let mut model = Model::new(policy.model());
    let mut firewall = Firewall::load(&policy).expect("load firewall");
    let udp = |src: Ipv4Addr, port: u16| {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
            .ipv4(src.octets(), [192, 0, 2, 254], 64)
            .udp(40000, port)
            .write(&mut out, &[0u8; 8])
            .expect("frame");
        out
    };
    let now = 7_000_000_000u64;
    firewall.set_test_clock(now).expect("clock");
    // Runs one frame through kernel and model; returns the model's reason after checking that
    // the kernel counted the same one.
    let step = |firewall: &mut Firewall, model: &mut Model, frame: &[u8]| {
        let before = firewall.stats().expect("counters");
        let decision = model.decide(frame, now);
        let got = run(firewall, frame);
        let after = firewall.stats().expect("counters");
        let reason = decision.verdict.reason;
        assert_eq!(got, decision.verdict.action, "{decision:?}");
        assert_eq!(
            after.get(decision.verdict.action, reason).packets,
            before.get(decision.verdict.action, reason).packets + 1,
            "kernel reason differs from the model's {decision:?}"
        );
        reason
    };

    // A talking client empties its NTP bucket: sighted, then two tokens, then refused.
    let client = Ipv4Addr::new(192, 0, 2, 10);
    let reasons: Vec<Reason> = (0..4)
        .map(|_| step(&mut firewall, &mut model, &udp(client, 123)))
        .collect();
    assert_eq!(
        reasons,
        [
            Reason::Default,
            Reason::Default,
            Reason::Default,
            Reason::RateLimited
        ]
    );
    // An abuser of DNS is banned at its first refusal (that packet already counts as banned).
    let abuser = Ipv4Addr::new(192, 0, 2, 66);
    let reasons: Vec<Reason> = (0..5)
        .map(|_| step(&mut firewall, &mut model, &udp(abuser, 53)))
        .collect();
    assert_eq!(
        reasons,
        [
            Reason::Default,
            Reason::Default,
            Reason::Default,
            Reason::Banned,
            Reason::Banned
        ]
    );

    // 20,000 distinct one-packet sources, 300 times the source map's capacity (an odd multiplier
    // is a bijection of the /15's 2^17 addresses).
    let tracked_before: HashMap<TrackKey, TrackState> = kernel_map(&firewall, map_names::SOURCES);
    assert_eq!(tracked_before.len(), 2, "the client and the abuser");
    for index in 0..20_000u32 {
        let spoofed = Ipv4Addr::from((198u32 << 24) | (18 << 16) | (index * 40_503) & 0x1_FFFF);
        let frame = udp(spoofed, 123);
        assert_eq!(
            run(&mut firewall, &frame),
            Action::Pass,
            "one-packet sources are not limited"
        );
        model.decide(&frame, now);
    }
    // The flood inserted nothing into the source map: it only wrote this CPU's admission slots,
    // the very ones the model wrote.
    let tracked: HashMap<TrackKey, TrackState> = kernel_map(&firewall, map_names::SOURCES);
    assert_eq!(tracked, tracked_before);
    assert_eq!(&tracked, model.sources());
    let sighted = admission_slots(&firewall, one_cpu.cpu());
    assert_eq!(&sighted, model.admission());
    assert!(sighted.len() > 10_000, "{} slots sighted", sighted.len());
    // Nor did it set a bit of the tracked filter: only the sources with state hold one.
    assert_eq!(&tracked_entries(&firewall), model.tracked());

    // The client's state survived (its bucket is still empty) and so did the ban.
    assert_eq!(
        step(&mut firewall, &mut model, &udp(client, 123)),
        Reason::RateLimited
    );
    assert_eq!(
        step(&mut firewall, &mut model, &udp(abuser, 123)),
        Reason::Banned
    );
}

/// A spoofed flood whose every packet comes from a new /64 inserts nothing into the LRU maps, under
/// a rule with per-source and per-subnet limits: sources and subnets are sighted in the per-CPU
/// admission array, and only a source that sends again gets state (with its subnet).
#[test]
fn a_spoofed_flood_inserts_nothing_into_the_lru_maps() {
    let policy = Loaded::from_str(
        Path::new("spoof6.toml"),
        r#"
[[rule]]
name = "dns"
protocol = "udp"
ports = [53]
per_source = { packets_per_second = 1000, burst_packets = 100 }
per_subnet = { packets_per_second = 5000, burst_packets = 500, prefix_v6 = 64 }
"#,
    )
    .unwrap_or_else(|err| panic!("{err}"))
    .policy;
    let one_cpu = OneCpu::pin();
    let mut model = Model::new(policy.model());
    let mut firewall = Firewall::load(&policy).expect("load firewall");
    let udp = |src: Ipv6Addr| {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
            .ipv6(
                src.octets(),
                Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).octets(),
                64,
            )
            .udp(40000, 53)
            .write(&mut out, &[0u8; 8])
            .expect("frame");
        out
    };
    let now = 9_000_000_000u64;
    firewall.set_test_clock(now).expect("clock");
    let source = |index: u32| {
        // A distinct /64 of 2001:db8::/32 per index, and an interface id of its own.
        Ipv6Addr::new(
            0x2001,
            0xdb8,
            (index >> 16) as u16,
            index as u16,
            0,
            0,
            0,
            0x5000 + (index as u16 & 0xff),
        )
    };
    for index in 0..20_000 {
        let frame = udp(source(index));
        let decision = model.decide(&frame, now);
        assert_eq!(decision.verdict.reason, Reason::Default);
        assert_eq!(run(&mut firewall, &frame), Action::Pass);
    }
    let sources: HashMap<TrackKey, TrackState> = kernel_map(&firewall, map_names::SOURCES);
    let subnets: HashMap<TrackKey, TrackState> = kernel_map(&firewall, map_names::SUBNETS);
    assert_eq!(sources.len(), 0, "a one-packet source got state");
    assert_eq!(subnets.len(), 0, "a one-packet subnet got state");
    assert_eq!(model.sources().len() + model.subnets().len(), 0);
    assert_eq!(
        &admission_slots(&firewall, one_cpu.cpu()),
        model.admission()
    );
    assert!(
        tracked_entries(&firewall).is_empty(),
        "a one-packet key was marked tracked"
    );
    assert!(model.tracked().is_empty());

    // A source that sends again (its first packet was the flood's last) gets state, and so
    // does its /64: exactly one entry each, charged as the model charges them.
    let again = udp(source(19_999));
    let decision = model.decide(&again, now);
    assert_eq!(run(&mut firewall, &again), decision.verdict.action);
    let sources: HashMap<TrackKey, TrackState> = kernel_map(&firewall, map_names::SOURCES);
    let subnets: HashMap<TrackKey, TrackState> = kernel_map(&firewall, map_names::SUBNETS);
    assert_eq!(sources.len(), 1);
    assert_eq!(subnets.len(), 1);
    assert_eq!(&sources, model.sources());
    assert_eq!(&subnets, model.subnets());
    // Both keys are now in the tracked filter, where the model put them.
    let marked = tracked_entries(&firewall);
    assert!(!marked.is_empty());
    assert_eq!(&marked, model.tracked());

    // Its next packet finds its state through the filter (here its lease covers it).
    let charged = |firewall: &Firewall| {
        let sources: HashMap<TrackKey, TrackState> = kernel_map(firewall, map_names::SOURCES);
        sources.values().next().expect("the source's state").packets
    };
    let decision = model.decide(&again, now);
    assert_eq!(run(&mut firewall, &again), decision.verdict.action);
    assert_eq!(&kernel_map(&firewall, map_names::SOURCES), model.sources());
    assert_eq!(&tracked_entries(&firewall), model.tracked());

    // Silent for two epochs of the filter (17 s), the source is forgotten by the filter but not
    // by the state map: its next packet is a first sighting (uncharged), the one after finds
    // the state again, timestamps intact, and marks it anew. Packet by packet as the model.
    let later = now + 2 * (1 << firewall_common::tracked::EPOCH_SHIFT);
    firewall.set_test_clock(later).expect("clock");
    let tat = charged(&firewall);
    for (packet, charges) in [(1, false), (2, true)] {
        let before = charged(&firewall);
        let decision = model.decide(&again, later);
        assert_eq!(run(&mut firewall, &again), decision.verdict.action);
        assert_eq!(
            charged(&firewall) != before,
            charges,
            "packet {packet} after the gap"
        );
        assert_eq!(&kernel_map(&firewall, map_names::SOURCES), model.sources());
        assert_eq!(&kernel_map(&firewall, map_names::SUBNETS), model.subnets());
        assert_eq!(
            &admission_slots(&firewall, one_cpu.cpu()),
            model.admission()
        );
        assert_eq!(&tracked_entries(&firewall), model.tracked());
    }
    assert!(charged(&firewall) > tat);
}
