//! Kernel verdict tests: the loaded XDP program, run with BPF_PROG_TEST_RUN on crafted frames,
//! must reach exactly the reference model's verdict, and its counters must add up exactly.
//!
//! Needs root (CAP_BPF). Each test loads its own copy of the object, so counters are per test.

use std::{collections::HashMap, net::IpAddr, path::Path};

use apifw_tests::packets;
use apifw_tests::support::hex;
use aya::programs::{TestRun as _, TestRunOptions};
/// Reasons a policy without rate-limit rules can give.
const LIST_REASONS: usize = 5;

use firewall_common::{
    Action, Reason, Verdict,
    ablation::Stage,
    model::{self, ModelPolicy},
    program_names,
};
use firewall_userspace::{Firewall, Loaded, Policy};
use ipnet::IpNet;

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter()
        .map(|s| s.parse().unwrap_or_else(|err| panic!("{s}: {err}")))
        .collect()
}

/// Allow inside block, block inside allow, short and long prefixes of both families.
fn overlapping_policy(malformed: Action) -> Policy {
    Policy {
        allow: nets(&[
            "203.0.113.7/32",
            "198.18.0.0/15",
            "2001:db8:1::7/128",
            "2001:db8:ffff::/48",
        ]),
        block: nets(&[
            "203.0.113.0/24",
            "198.18.128.0/17",
            "198.51.100.0/25",
            "192.0.0.0/12",
            "2001:db8:1::/48",
            "2001:db8:ffff:1::/64",
            "2001:db8:2::/47",
            "2001:db8::/29",
        ]),
        malformed,
        ..Policy::default()
    }
}

fn model_of(policy: &Policy) -> ModelPolicy {
    policy.model()
}

/// Runs the firewall program once on `frame` and returns its verdict action.
fn run(firewall: &mut Firewall, frame: &[u8]) -> Action {
    let program = firewall
        .program_mut(program_names::FIREWALL)
        .expect("firewall program");
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        })
        .unwrap_or_else(|err| panic!("BPF_PROG_TEST_RUN on {} bytes: {err}", frame.len()));
    match result.return_value {
        2 => Action::Pass,
        1 => Action::Drop,
        other => panic!("XDP returned {other} for {}", hex(frame)),
    }
}

/// Expected counters: (action, reason) -> (packets, bytes).
#[derive(Default)]
struct Expected(HashMap<(Action, Reason), (u64, u64)>);

impl Expected {
    fn add(&mut self, verdict: Verdict, len: usize) {
        let entry = self.0.entry((verdict.action, verdict.reason)).or_default();
        entry.0 += 1;
        entry.1 += len as u64;
    }

    fn assert_matches(&self, firewall: &Firewall) {
        let snapshot = firewall.stats().expect("read counters");
        for row in &snapshot.counters {
            let (packets, bytes) = self
                .0
                .get(&(row.action, row.reason))
                .copied()
                .unwrap_or_default();
            assert_eq!(
                (row.packets, row.bytes),
                (packets, bytes),
                "counter {}/{}: kernel (packets, bytes) vs model",
                row.action.name(),
                row.reason.name()
            );
        }
        let expected_total: u64 = self.0.values().map(|(packets, _)| packets).sum();
        assert_eq!(snapshot.total_packets(), expected_total, "total packets");
    }
}

fn sources() -> Vec<IpAddr> {
    [
        "203.0.113.7",
        "203.0.113.66",
        "198.18.1.1",
        "198.18.200.1",
        "198.51.100.1",
        "198.51.100.200",
        "192.0.2.10",
        "2001:db8:1::7",
        "2001:db8:1::8",
        "2001:db8:ffff::1",
        "2001:db8:ffff:1::1",
        "2001:db8:3::1",
        "2001:db8:9::1",
        "2001:db9::1",
    ]
    .iter()
    .map(|s| s.parse().expect("address"))
    .collect()
}

#[test]
fn crafted_table_matches_model() {
    for malformed in Action::ALL {
        let policy = overlapping_policy(malformed);
        let model = model_of(&policy);
        let mut firewall = Firewall::load(&policy).expect("load firewall");
        let mut expected = Expected::default();
        let cases = packets::table(&sources());
        assert!(cases.len() > 100, "table has only {} cases", cases.len());
        let mut reasons_seen = std::collections::HashSet::new();
        for case in &cases {
            let want = model::verdict(&model, &case.frame);
            let got = run(&mut firewall, &case.frame);
            assert_eq!(
                got,
                want.action,
                "case {} (model: {:?}, malformed={malformed:?}): {}",
                case.name,
                want.reason,
                hex(&case.frame)
            );
            expected.add(want, case.frame.len());
            reasons_seen.insert(want.reason);
        }
        // The table exercises every reason, so a counter slot mix-up cannot go unnoticed.
        assert_eq!(
            reasons_seen.len(),
            LIST_REASONS,
            "reasons covered: {reasons_seen:?}"
        );
        expected.assert_matches(&firewall);
    }
}

#[test]
fn random_frames_and_every_truncation_match_model() {
    let policy = overlapping_policy(Action::Drop);
    let model = model_of(&policy);
    let mut firewall = Firewall::load(&policy).expect("load firewall");
    let near: Vec<IpNet> = policy.allow.iter().chain(&policy.block).copied().collect();
    let frames = packets::random_frames(0xA91F_0002, 10_000, &near);
    assert_eq!(frames.len(), 10_000);

    let mut expected = Expected::default();
    let mut mismatches = Vec::new();
    let mut runs = 0u64;
    for frame in &frames {
        for prefix in packets::truncations(frame) {
            let want = model::verdict(&model, prefix);
            let got = run(&mut firewall, prefix);
            runs += 1;
            expected.add(want, prefix.len());
            if got != want.action && mismatches.len() < 10 {
                mismatches.push(format!("kernel {got:?}, model {want:?}: {}", hex(prefix)));
            }
        }
    }
    assert!(runs > 100_000, "only {runs} frames run");
    assert!(
        mismatches.is_empty(),
        "{} mismatches, first:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    expected.assert_matches(&firewall);
}

/// Reasons are not visible in the return code, so check them one frame at a time through the
/// counters: each frame must move exactly the model's (action, reason) counter by one.
#[test]
fn each_table_case_counts_under_the_model_reason() {
    let policy = overlapping_policy(Action::Drop);
    let model = model_of(&policy);
    let mut firewall = Firewall::load(&policy).expect("load firewall");
    let mut expected = Expected::default();
    for case in packets::table(&sources()) {
        let want = model::verdict(&model, &case.frame);
        run(&mut firewall, &case.frame);
        expected.add(want, case.frame.len());
        let snapshot = firewall.stats().expect("counters");
        let row = snapshot.get(want.action, want.reason);
        let (packets, _) = expected.0[&(want.action, want.reason)];
        assert_eq!(row.packets, packets, "case {}: counter {want:?}", case.name);
        assert_eq!(
            snapshot.total_packets(),
            expected.0.values().map(|(p, _)| p).sum::<u64>(),
            "case {}: another counter moved",
            case.name
        );
    }
}

/// Thousands of random prefixes (so the summaries hold many lengths at once) against sources
/// drawn near them.
#[test]
fn large_random_lists_match_model() {
    use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};
    let mut rng = SmallRng::seed_from_u64(0xB10C);
    let mut random_net = |v4: bool| -> IpNet {
        if v4 {
            let addr = std::net::Ipv4Addr::from(
                (u32::from(rng.random_range(192u8..=203)) << 24) | rng.random_range(0..1 << 24),
            );
            IpNet::from(
                ipnet::Ipv4Net::new(addr, rng.random_range(8..=32))
                    .expect("len")
                    .trunc(),
            )
        } else {
            let addr = std::net::Ipv6Addr::from(
                (0x2001_0db8u128 << 96)
                    | (u128::from(rng.random::<u8>()) << 88)
                    | u128::from(rng.random::<u64>()),
            );
            IpNet::from(
                ipnet::Ipv6Net::new(addr, rng.random_range(16..=128))
                    .expect("len")
                    .trunc(),
            )
        }
    };
    let allow: Vec<IpNet> = (0..300).map(|i| random_net(i % 2 == 0)).collect();
    let block: Vec<IpNet> = (0..3_000).map(|i| random_net(i % 2 == 0)).collect();
    let policy = Policy {
        allow,
        block,
        ..Policy::default()
    };
    let model = model_of(&policy);
    let mut firewall = Firewall::load(&policy).expect("load firewall");
    let near: Vec<IpNet> = policy.allow.iter().chain(&policy.block).copied().collect();
    let mut expected = Expected::default();
    for frame in packets::random_frames(0xB10C_0001, 5_000, &near) {
        let want = model::verdict(&model, &frame);
        let got = run(&mut firewall, &frame);
        assert_eq!(got, want.action, "model {want:?}: {}", hex(&frame));
        expected.add(want, frame.len());
    }
    let blocked = expected
        .0
        .get(&(Action::Drop, Reason::Blocklist))
        .map_or(0, |(p, _)| *p);
    let allowed = expected
        .0
        .get(&(Action::Pass, Reason::Allowlist))
        .map_or(0, |(p, _)| *p);
    assert!(
        blocked > 500 && allowed > 50,
        "too few hits to mean anything: {blocked} blocked, {allowed} allowed"
    );
    expected.assert_matches(&firewall);
}

/// The kernel verifies the program by walking its paths, up to a budget of 1,000,000
/// instructions; a program over it does not load at all. Every feature of the data path spends
/// some (the leases took it from about 510k to about 710k): this keeps a margin for the next,
/// and shows the figure in the test output.
#[test]
fn the_program_stays_well_within_the_verifier_budget() {
    const BUDGET: u32 = 1_000_000;
    let mut firewall = Firewall::load(&Policy::default()).expect("load firewall");
    // The firewall program and the two it tail-calls are verified one by one, each against
    // the whole budget.
    for name in [
        program_names::FIREWALL,
        program_names::LIMITS,
        program_names::SYN_COOKIE,
    ] {
        let info = firewall
            .program_mut(name)
            .expect("program")
            .info()
            .expect("program info");
        let verified = info
            .verified_instruction_count()
            .expect("the kernel reports verified instructions (Linux 5.16+)");
        eprintln!("{name}: the verifier walked {verified} instructions of its {BUDGET}");
        assert!(
            verified <= BUDGET / 100 * 85,
            "{name}: the verifier walked {verified} of its {BUDGET} instructions: split or \
             simplify before the next feature tips the program over"
        );
    }
}

/// The ablation hook (`firewall_common::ablation`): a program loaded to stop after a stage
/// returns `XDP_PASS` without doing or counting what follows it, and the default load stops
/// nowhere, so the hook cannot stay on unnoticed. The drop event and the per-rule counter show
/// where each stop is: before or after them.
#[test]
fn a_stopped_program_leaves_after_its_stage_and_the_default_never_stops() {
    let policy = Loaded::from_str(
        Path::new("ablation.toml"),
        "[block]\ncidrs = [\"198.51.100.0/24\"]\n\
         [[rule]]\nname = \"dns\"\nprotocol = \"udp\"\nports = [53]\n\
         per_source = { packets_per_second = 1000000, burst_packets = 1000000 }\n",
    )
    .unwrap_or_else(|err| panic!("{err}"))
    .policy;
    let blocked = packets::udp_frame("198.51.100.1".parse().expect("address"));
    let ruled = packets::udp_frame("192.0.2.10".parse().expect("address"));
    let events = |firewall: &Firewall| {
        let counts = firewall.event_counts().expect("event counters");
        counts.emitted + counts.suppressed + counts.lost
    };

    let mut full = Firewall::load(&policy).expect("load firewall");
    assert_eq!(run(&mut full, &blocked), Action::Drop);
    assert_eq!(run(&mut full, &ruled), Action::Pass);
    let stats = full.stats().expect("counters");
    assert_eq!(
        stats.total_packets(),
        2,
        "the default load counts every packet"
    );
    assert_eq!(stats.rule(0, Reason::Default).packets, 1);
    assert_eq!(events(&full), 1, "the default load reports the drop");

    for stage in Stage::ALL {
        let mut stopped = Firewall::load_stopping_after(&policy, stage)
            .unwrap_or_else(|err| panic!("load stopping after {stage:?}: {err:?}"));
        assert_eq!(run(&mut stopped, &blocked), Action::Pass, "{stage:?}");
        assert_eq!(run(&mut stopped, &ruled), Action::Pass, "{stage:?}");
        let stats = stopped.stats().expect("counters");
        assert_eq!(
            stats.total_packets(),
            0,
            "stopped after {stage:?}, yet counted"
        );
        assert_eq!(
            stats.rule(0, Reason::Default).packets,
            u64::from(stage >= Stage::RuleCounters),
            "the rule counters against a stop after {stage:?}"
        );
        assert_eq!(
            events(&stopped),
            u64::from(stage >= Stage::Events),
            "the drop event against a stop after {stage:?}"
        );
    }

    // Loaded over the full firewall's maps, a stopped program counts in them.
    let mut sibling = full
        .stopping_after(Stage::RuleCounters)
        .expect("load over the same maps");
    assert_eq!(run(&mut sibling, &ruled), Action::Pass);
    let stats = full.stats().expect("counters");
    assert_eq!(stats.rule(0, Reason::Default).packets, 2);
    assert_eq!(stats.total_packets(), 2);
}
