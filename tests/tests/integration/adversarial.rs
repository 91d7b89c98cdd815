//! Differential suite against hostile input (issue #7): well over 100,000 seeded frames —
//! mutated headers, VLAN/QinQ, IPv4 options and fragments, IPv6 extension chains past the
//! parser's bound, every TCP flag combination, runts, jumbo frames and every truncation length —
//! run through the loaded XDP program under a policy with lists and rate-limit rules, on the
//! reference model's virtual clock. Every verdict, every global and per-rule counter, and the
//! rate-limit state itself (source and subnet buckets, admission slots, escalation windows, bans)
//! must equal the model's.
//!
//! The seed is random per run and printed; `APIFW_SEED=0x… cargo xtask test` replays a failure.
//! Needs root (CAP_BPF).

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Debug,
    hash::Hash,
    net::IpAddr,
    path::Path,
};

use apifw_tests::{
    adversarial::{Frame, Generator, Kind, MAX_LINEAR_FRAME},
    policies::RATE_LIMIT_RULES,
    support::{OneCpu, admission_slots, hex, kernel_map, tracked_entries},
    tally::Tally,
};
use aya::programs::{TestRun as _, TestRunOptions};
use firewall_common::{Action, Reason, map_names, model::Model, packet::ETH_HLEN, program_names};
use firewall_userspace::{Firewall, Loaded, Policy};
use ipnet::IpNet;
use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};

const LISTS: &str = r#"
[allow]
cidrs = ["203.0.113.7/32", "2001:db8:ffff::/48"]
[block]
cidrs = ["198.18.0.0/15", "198.51.100.128/25", "2001:db8:bad::/48"]
"#;

// HTTPS twice: its rule bans, and escalates to subnet bans when two sources of a /24 are banned.
const RULE_PORTS: [u16; 7] = [443, 443, 443, 8443, 53, 80, 22];

fn policy() -> Policy {
    Loaded::from_str(
        Path::new("adversarial.toml"),
        &format!("{LISTS}{RATE_LIMIT_RULES}"),
    )
    .unwrap_or_else(|err| panic!("{err}"))
    .policy
}

/// Sources of the traffic aimed at the rules. The three hosts of 192.0.2.0/24 come up four
/// times as often as the others, so that the HTTPS rule bans two of them within its escalation
/// window (a subnet ban) in every run, whatever the seed.
fn rule_sources() -> Vec<IpAddr> {
    [
        "192.0.2.1",
        "192.0.2.2",
        "192.0.2.3",
        "192.0.2.1",
        "192.0.2.2",
        "192.0.2.3",
        "192.0.2.1",
        "192.0.2.2",
        "192.0.2.3",
        "203.0.113.7",
        "198.18.1.1",
        "198.51.100.200",
        "192.0.2.1",
        "192.0.2.2",
        "192.0.2.3",
        "198.51.100.1",
        "198.51.100.9",
        "2001:db8:a:1::1",
        "2001:db8:a:1::2",
        "2001:db8:a:2::1",
        "2001:db8:ffff::5",
        "2001:db8:bad::1",
    ]
    .iter()
    .map(|s| s.parse().expect("address"))
    .collect()
}

/// The run's seed: `APIFW_SEED` (decimal or 0x-hex) to replay one, else a fresh one.
fn seed() -> u64 {
    let seed = match std::env::var("APIFW_SEED") {
        Ok(text) => {
            let text = text.trim();
            match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            }
            .unwrap_or_else(|err| panic!("APIFW_SEED={text}: {err}"))
        }
        Err(_) => rand::rng().random(),
    };
    eprintln!("adversarial: seed {seed:#x} (replay with APIFW_SEED={seed:#x})");
    seed
}

/// What the kernel did with one frame.
#[derive(Debug, PartialEq)]
enum Outcome {
    Verdict(Action),
    /// `BPF_PROG_TEST_RUN` refused the frame (shorter than an Ethernet header, or longer than
    /// a page for a program without multi-buffer support).
    Refused,
}

fn run(firewall: &mut Firewall, frame: &[u8]) -> Outcome {
    let program = firewall
        .program_mut(program_names::FIREWALL)
        .expect("program");
    match program.test_run(TestRunOptions {
        data_in: Some(frame),
        ..TestRunOptions::default()
    }) {
        Ok(result) => match result.return_value {
            2 => Outcome::Verdict(Action::Pass),
            1 => Outcome::Verdict(Action::Drop),
            other => panic!("XDP returned {other} for {}", hex(frame)),
        },
        Err(_) => Outcome::Refused,
    }
}

fn assert_same_map<K: Debug + Eq + Hash, V: Debug + PartialEq>(
    what: &str,
    kernel: &HashMap<K, V>,
    model: &HashMap<K, V>,
    context: &str,
) {
    if kernel != model {
        let differing = |a: &HashMap<K, V>, b: &HashMap<K, V>| -> Vec<String> {
            let mut out: Vec<String> = a
                .iter()
                .filter(|(k, v)| b.get(k) != Some(v))
                .map(|(k, v)| format!("{k:?} => {v:?}"))
                .collect();
            out.sort();
            out.truncate(5);
            out
        };
        panic!(
            "{context}: {what} differ ({} kernel entries, {} model entries); kernel-only or \
             different: {:?}; model-only or different: {:?}",
            kernel.len(),
            model.len(),
            differing(kernel, model),
            differing(model, kernel)
        );
    }
}

/// The kernel's rate-limit state equals the model's, map by map.
fn assert_same_state(firewall: &Firewall, model: &Model, cpu: usize, context: &str) {
    assert_same_map(
        "source buckets",
        &kernel_map(firewall, map_names::SOURCES),
        model.sources(),
        context,
    );
    assert_same_map(
        "subnet buckets",
        &kernel_map(firewall, map_names::SUBNETS),
        model.subnets(),
        context,
    );
    assert_same_map(
        "admission slots",
        &admission_slots(firewall, cpu),
        model.admission(),
        context,
    );
    assert_same_map(
        "tracked filter",
        &tracked_entries(firewall),
        model.tracked(),
        context,
    );
    assert_same_map(
        "escalation windows",
        &kernel_map(firewall, map_names::ESCALATION),
        model.escalation(),
        context,
    );
    assert_same_map(
        "bans",
        &kernel_map(firewall, map_names::BANS),
        &model.bans,
        context,
    );
}

/// The differential run: kernel and model side by side on the generator's frames, `truncate`
/// additionally feeding every truncation of each frame. Returns how many frames of each kind
/// and how many verdicts of each reason were compared.
struct Coverage {
    frames: u64,
    kinds: BTreeMap<Kind, u64>,
    reasons: HashMap<Reason, u64>,
    refused: u64,
}

/// How many bytes of a frame the program sees (`data_end - data`) when `BPF_PROG_TEST_RUN` is
/// handed a 9,000-byte one: learnt from the byte counter of a throwaway copy of the program.
fn linear_limit() -> usize {
    let mut firewall = Firewall::load(&Policy::default()).expect("load firewall");
    let frame = vec![0u8; 9_000];
    assert!(
        matches!(run(&mut firewall, &frame), Outcome::Verdict(_)),
        "a 9,000-byte frame was refused"
    );
    let bytes: u64 = firewall
        .stats()
        .expect("counters")
        .counters
        .iter()
        .map(|row| row.bytes)
        .sum();
    let linear = usize::try_from(bytes).expect("small");
    assert!(
        (3_000..=MAX_LINEAR_FRAME).contains(&linear),
        "the program saw {linear} bytes of a 9,000-byte frame"
    );
    linear
}

fn differential(seed: u64, count: usize, every_truncation: bool) -> Coverage {
    let linear = linear_limit();
    let policy = policy();
    let one_cpu = OneCpu::pin();
    let mut model = Model::new(policy.model());
    let mut firewall = Firewall::load(&policy).expect("load firewall");
    let near: Vec<IpNet> = policy.allow.iter().chain(&policy.block).copied().collect();
    let mut generator = Generator::new(seed, &near, &rule_sources(), &RULE_PORTS);
    let mut clock = SmallRng::seed_from_u64(seed ^ 0xC10C);
    let mut now_ns: u64 = 5_000_000_000;
    let mut tally = Tally::default();
    let mut coverage = Coverage {
        frames: 0,
        kinds: BTreeMap::new(),
        reasons: HashMap::new(),
        refused: 0,
    };
    let mut check = |frame: &Frame,
                     bytes: &[u8],
                     index: usize,
                     now_ns: u64,
                     model: &mut Model,
                     firewall: &mut Firewall| {
        let got = run(firewall, bytes);
        let context = || {
            format!(
                "seed {seed:#x}, frame {index} ({:?}{}, {} of {} bytes) at {now_ns} ns: {}",
                frame.kind,
                if frame.mutated { ", mutated" } else { "" },
                bytes.len(),
                frame.bytes.len(),
                hex(bytes)
            )
        };
        if bytes.len() < ETH_HLEN {
            // The kernel hands XDP no frame without a whole Ethernet header.
            assert_eq!(got, Outcome::Refused, "{}", context());
            coverage.refused += 1;
            return;
        }
        // Of a longer frame, a program without multi-buffer support sees the first page's
        // worth; the rest sits in fragments it cannot read, and its length is not counted.
        let bytes = &bytes[..bytes.len().min(linear)];
        let decision = model.decide(bytes, now_ns);
        assert_eq!(
            got,
            Outcome::Verdict(decision.verdict.action),
            "{}: model {decision:?}",
            context()
        );
        tally.add(decision, bytes.len());
        coverage.frames += 1;
        *coverage.reasons.entry(decision.verdict.reason).or_default() += 1;
    };
    for index in 0..count {
        // Mostly bursts (same instant or microseconds apart), sometimes long pauses.
        now_ns += match clock.random_range(0..10) {
            0..=6 => clock.random_range(0..20_000),
            7 | 8 => clock.random_range(0..5_000_000),
            _ => clock.random_range(0..50_000_000),
        };
        firewall.set_test_clock(now_ns).expect("set clock");
        let frame = generator.next_frame();
        *coverage.kinds.entry(frame.kind).or_default() += 1;
        if every_truncation {
            for len in 0..=frame.bytes.len() {
                check(
                    &frame,
                    &frame.bytes[..len],
                    index,
                    now_ns,
                    &mut model,
                    &mut firewall,
                );
            }
        } else {
            check(
                &frame,
                &frame.bytes,
                index,
                now_ns,
                &mut model,
                &mut firewall,
            );
        }
        if index % 25_000 == 24_999 {
            assert_same_state(
                &firewall,
                &model,
                one_cpu.cpu(),
                &format!("seed {seed:#x}, after frame {index}"),
            );
        }
    }
    let context = format!("seed {seed:#x}, at the end");
    assert_same_state(&firewall, &model, one_cpu.cpu(), &context);
    tally.assert_matches(&firewall, &context);
    coverage
}

#[test]
fn hundred_thousand_hostile_frames_match_the_model_with_state() {
    let seed = seed();
    let coverage = differential(seed, 120_000, false);
    eprintln!(
        "adversarial: {} frames compared, {} refused by the kernel; kinds {:?}; reasons {:?}",
        coverage.frames, coverage.refused, coverage.kinds, coverage.reasons
    );
    assert!(
        coverage.frames >= 100_000,
        "seed {seed:#x}: only {} frames compared",
        coverage.frames
    );
    for kind in [
        Kind::Mixed,
        Kind::RuleTraffic,
        Kind::LongV6Chain,
        Kind::Jumbo,
        Kind::Runt,
    ] {
        assert!(
            coverage.kinds.get(&kind).copied().unwrap_or(0) >= 1_000,
            "seed {seed:#x}: too few {kind:?} frames: {:?}",
            coverage.kinds
        );
    }
    for reason in [
        Reason::Default,
        Reason::NonIp,
        Reason::Malformed,
        Reason::Allowlist,
        Reason::Blocklist,
        Reason::RateLimited,
        Reason::SynLimited,
        Reason::WouldDrop,
        Reason::Banned,
        Reason::SubnetBanned,
    ] {
        assert!(
            coverage.reasons.get(&reason).copied().unwrap_or(0) >= 50,
            "seed {seed:#x}: the run must exercise {reason:?}: {:?}",
            coverage.reasons
        );
    }
}

#[test]
fn every_truncation_of_hostile_frames_matches_the_model() {
    let seed = seed() ^ 0x7C07;
    let coverage = differential(seed, 1_500, true);
    eprintln!(
        "adversarial truncations: {} prefixes compared, {} refused",
        coverage.frames, coverage.refused
    );
    assert!(
        coverage.frames >= 100_000,
        "seed {seed:#x}: only {} prefixes compared",
        coverage.frames
    );
}
