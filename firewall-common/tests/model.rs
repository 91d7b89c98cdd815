//! Unit tests of the reference model (`firewall_common::model`) on the crafted frames of
//! `apifw_test_frames`: every case has an exact expected parse result and verdict.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use apifw_test_frames::{self as packets, Case, DST_V4, DST_V6, hex};
/// Reasons a policy without rate-limit rules can give.
const LIST_REASONS: usize = 5;

use firewall_common::{
    model::{self, ModelPolicy, Parsed},
    stats::{Action, Reason, Verdict},
};
use ipnet::IpNet;

/// What a case must parse to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    NonIp,
    Malformed,
    /// Protocol and ports.
    Ip(u8, Option<(u16, u16)>),
}

use Expect::{Ip, Malformed, NonIp};

const TCP: Option<(u16, u16)> = Some((49152, 443));
const UDP: Option<(u16, u16)> = Some((49153, 53));

const LINK: &[(&str, Expect)] = &[
    ("link/arp", NonIp),
    ("link/vlan1/arp", NonIp),
    ("link/vlan2/arp", NonIp),
    ("link/lldp", NonIp),
    ("link/experimental", NonIp),
    ("link/802.3-llc", NonIp),
    ("link/vlan3-empty", NonIp),
    ("link/vlan1-truncated", Malformed),
    ("link/vlan1-empty", Malformed),
    ("link/vlan2-truncated", Malformed),
    ("link/ipv4-empty", Malformed),
    ("link/ipv6-empty", Malformed),
    ("link/vlan1/ipv4-empty", Malformed),
    ("link/vlan2/ipv6-empty", Malformed),
];

/// Cases of both families, without the `v4/` or `v6/` prefix.
const COMMON: &[(&str, Expect)] = &[
    ("tcp", Ip(6, TCP)),
    ("tcp-payload", Ip(6, TCP)),
    ("tcp-options", Ip(6, TCP)),
    ("tcp-options-cut", Ip(6, TCP)),
    ("udp", Ip(17, UDP)),
    ("udp-payload", Ip(17, UDP)),
    ("gre", Ip(47, None)),
    ("udp-trailer", Ip(17, UDP)),
    ("vlan1/tcp", Ip(6, TCP)),
    ("vlan1/udp", Ip(17, UDP)),
    ("vlan1ad/tcp", Ip(6, TCP)),
    ("vlan2/tcp", Ip(6, TCP)),
    ("vlan2/udp", Ip(17, UDP)),
    ("vlan2qq/tcp", Ip(6, TCP)),
    ("vlan3/tcp", NonIp),
    ("vlan3qqq/udp", NonIp),
    ("ip-truncated", Malformed),
    ("vlan2/ip-truncated", Malformed),
    ("bad-version", Malformed),
    ("version-0", Malformed),
    ("vlan1/bad-version", Malformed),
    ("tcp-empty", Malformed),
    ("tcp-truncated", Malformed),
    ("vlan2/tcp-truncated", Malformed),
    ("tcp-doff-4", Malformed),
    ("tcp-doff-0", Malformed),
    ("udp-empty", Malformed),
    ("udp-truncated", Malformed),
];

const V4: &[(&str, Expect)] = &[
    ("icmp", Ip(1, None)),
    ("options/tcp", Ip(6, TCP)),
    ("options/udp", Ip(17, UDP)),
    ("options-max/tcp", Ip(6, TCP)),
    ("options-max/icmp", Ip(1, None)),
    ("vlan2/options/tcp", Ip(6, TCP)),
    ("frag-first/tcp", Ip(6, TCP)),
    ("frag-first/udp", Ip(17, UDP)),
    ("frag-middle/tcp", Ip(6, None)),
    ("frag-last/udp", Ip(17, None)),
    ("frag-middle/options/tcp", Ip(6, None)),
    ("vlan2/frag-middle/tcp", Ip(6, None)),
    ("total-len-long/tcp", Ip(6, TCP)),
    ("total-len-header-only/tcp", Ip(6, TCP)),
    ("frag-first/tcp-truncated", Malformed),
    ("ihl-4", Malformed),
    ("ihl-0", Malformed),
    ("ihl-past-end", Malformed),
    ("ihl-past-end-by-4", Malformed),
    ("total-len-19", Malformed),
    ("total-len-0", Malformed),
    ("options/total-len-20", Malformed),
];

const V6: &[(&str, Expect)] = &[
    ("icmp", Ip(58, None)),
    ("hop/tcp", Ip(6, TCP)),
    ("hop-long/tcp", Ip(6, TCP)),
    ("routing/tcp", Ip(6, TCP)),
    ("dest/udp", Ip(17, UDP)),
    ("hop/no-next", Ip(59, None)),
    ("hop+routing+dest/tcp", Ip(6, TCP)),
    ("hop+dest+routing+dest/udp", Ip(17, UDP)),
    ("vlan2/hop+routing+dest/tcp", Ip(6, TCP)),
    ("frag-first/tcp", Ip(6, TCP)),
    ("frag-first/udp", Ip(17, UDP)),
    ("hop+frag-first+dest/tcp", Ip(6, TCP)),
    ("frag-middle/tcp", Ip(6, None)),
    ("frag-last/udp", Ip(17, None)),
    ("hop+frag-middle/tcp", Ip(6, None)),
    ("frag-middle/next-dest", Ip(60, None)),
    ("ext8/tcp", Ip(6, TCP)),
    ("ah/tcp", Ip(51, None)),
    ("hop-2048/tcp", Ip(6, TCP)),
    ("ext-at-2048/tcp", Ip(6, TCP)),
    ("ext-past-2048/tcp", Malformed),
    ("ext9/tcp", Malformed),
    ("frag-first/tcp-truncated", Malformed),
    ("hop/tcp-truncated", Malformed),
    ("hop-empty", Malformed),
    ("hop-truncated", Malformed),
    ("hop-past-end", Malformed),
    ("routing-past-end", Malformed),
    ("frag-truncated", Malformed),
    ("hop+dest-past-end", Malformed),
];

/// How the test policy treats a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Allowed,
    Blocked,
    Default,
}

const V4_ALLOWED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const V4_BLOCKED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const V4_DEFAULT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 5);
const V6_ALLOWED: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 7);
const V6_BLOCKED: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 9);
const V6_DEFAULT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 5);

fn sources() -> [(IpAddr, Class); 6] {
    [
        (V4_ALLOWED.into(), Class::Allowed),
        (V4_BLOCKED.into(), Class::Blocked),
        (V4_DEFAULT.into(), Class::Default),
        (V6_ALLOWED.into(), Class::Allowed),
        (V6_BLOCKED.into(), Class::Blocked),
        (V6_DEFAULT.into(), Class::Default),
    ]
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn policy(malformed: Action) -> ModelPolicy {
    ModelPolicy {
        allow: vec![net("203.0.113.7/32"), net("2001:db8:1::7/128")],
        block: vec![net("203.0.113.0/24"), net("2001:db8:1::/48")],
        malformed,
        ..ModelPolicy::default()
    }
}

/// Every expected `(kind, Expect)` for a source of `src`'s family, link-layer cases included.
fn expectations(src: IpAddr) -> Vec<(String, Expect)> {
    let (family, own) = match src {
        IpAddr::V4(_) => ("v4", V4),
        IpAddr::V6(_) => ("v6", V6),
    };
    LINK.iter()
        .map(|&(kind, expect)| (kind.to_string(), expect))
        .chain(
            COMMON
                .iter()
                .chain(own)
                .map(|&(kind, expect)| (format!("{family}/{kind}"), expect)),
        )
        .collect()
}

fn expect_for(src: IpAddr, case: &Case) -> Expect {
    expectations(src)
        .into_iter()
        .find(|(kind, _)| kind == case.kind())
        .map(|(_, expect)| expect)
        .unwrap_or_else(|| panic!("{}: no expectation for kind {:?}", case.name, case.kind()))
}

fn expected_verdict(expect: Expect, class: Class, malformed: Action) -> Verdict {
    match (expect, class) {
        (NonIp, _) => Verdict::new(Action::Pass, Reason::NonIp),
        (Malformed, _) => Verdict::new(malformed, Reason::Malformed),
        (Ip(..), Class::Allowed) => Verdict::new(Action::Pass, Reason::Allowlist),
        (Ip(..), Class::Blocked) => Verdict::new(Action::Drop, Reason::Blocklist),
        (Ip(..), Class::Default) => Verdict::new(Action::Pass, Reason::Default),
    }
}

fn check_parse(src: IpAddr, case: &Case, expect: Expect) {
    let parsed = model::parse(&case.frame);
    let context = || format!("{} (frame {})", case.name, hex(&case.frame));
    match (expect, parsed) {
        (NonIp, Parsed::NonIp) | (Malformed, Parsed::Malformed) => {}
        (Ip(protocol, ports), Parsed::Ip(packet)) => {
            let dst: IpAddr = match src {
                IpAddr::V4(_) => DST_V4.into(),
                IpAddr::V6(_) => DST_V6.into(),
            };
            assert_eq!(packet.src, src, "source of {}", context());
            assert_eq!(packet.dst, dst, "destination of {}", context());
            assert_eq!(packet.protocol, protocol, "protocol of {}", context());
            assert_eq!(packet.ports, ports, "ports of {}", context());
        }
        (expect, parsed) => panic!("{}: expected {expect:?}, parsed {parsed:?}", context()),
    }
}

#[test]
fn table_has_exactly_the_expected_cases() {
    for (src, _) in sources() {
        let cases = packets::table(&[src]);
        let got: Vec<&str> = cases.iter().map(Case::kind).collect();
        let want: Vec<String> = expectations(src)
            .into_iter()
            .map(|(kind, _)| kind)
            .collect();
        let got_set: BTreeSet<&str> = got.iter().copied().collect();
        let want_set: BTreeSet<&str> = want.iter().map(String::as_str).collect();
        assert_eq!(
            got.len(),
            got_set.len(),
            "duplicate kinds for {src}: {got:?}"
        );
        assert_eq!(
            want.len(),
            want_set.len(),
            "duplicate expectations for {src}"
        );
        let missing: Vec<_> = want_set.difference(&got_set).collect();
        let extra: Vec<_> = got_set.difference(&want_set).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{src}: cases missing from the table {missing:?}, cases without expectation {extra:?}"
        );
    }
}

#[test]
fn table_names_are_unique_and_sized_for_test_run() {
    let all: Vec<IpAddr> = sources().iter().map(|&(src, _)| src).collect();
    let cases = packets::table(&all);
    assert_eq!(
        cases.len(),
        LINK.len() + 3 * (COMMON.len() + V4.len()) + 3 * (COMMON.len() + V6.len())
    );
    let names: BTreeSet<&str> = cases.iter().map(|case| case.name.as_str()).collect();
    assert_eq!(names.len(), cases.len(), "duplicate case names");
    for case in &cases {
        // BPF_PROG_TEST_RUN takes XDP frames of 14 bytes up to a page minus head- and tailroom.
        assert!(
            (14..=3500).contains(&case.frame.len()),
            "{}: {} bytes",
            case.name,
            case.frame.len()
        );
        if case.name.starts_with("v4/") || case.name.starts_with("v6/") {
            assert!(
                case.name.contains(" from "),
                "{}: no source in the name",
                case.name
            );
        }
    }
    // IP cases name their source.
    assert!(names.contains("v4/vlan1/tcp from 203.0.113.7"), "{names:?}");
    assert!(
        names.contains("v6/ext9/tcp from 2001:db8:1::9"),
        "{names:?}"
    );
}

#[test]
fn table_parses_exactly() {
    for (src, _) in sources() {
        for case in packets::table(&[src]) {
            check_parse(src, &case, expect_for(src, &case));
        }
    }
}

#[test]
fn table_verdicts_are_exact() {
    for malformed in Action::ALL {
        let policy = policy(malformed);
        for (src, class) in sources() {
            for case in packets::table(&[src]) {
                let want = expected_verdict(expect_for(src, &case), class, malformed);
                let got = model::verdict(&policy, &case.frame);
                assert_eq!(got, want, "{} (malformed action {malformed:?})", case.name);
            }
        }
    }
}

#[test]
fn malformed_action_decides_only_malformed_frames() {
    let pass = policy(Action::Pass);
    let drop = policy(Action::Drop);
    let mut malformed = 0;
    for (src, _) in sources() {
        for case in packets::table(&[src]) {
            let (p, d) = (
                model::verdict(&pass, &case.frame),
                model::verdict(&drop, &case.frame),
            );
            if expect_for(src, &case) == Malformed {
                malformed += 1;
                assert_eq!(
                    p,
                    Verdict::new(Action::Pass, Reason::Malformed),
                    "{}",
                    case.name
                );
                assert_eq!(
                    d,
                    Verdict::new(Action::Drop, Reason::Malformed),
                    "{}",
                    case.name
                );
            } else {
                assert_eq!(
                    p, d,
                    "{}: verdict depends on the malformed action",
                    case.name
                );
                assert_ne!(p.reason, Reason::Malformed, "{}", case.name);
            }
        }
    }
    assert!(malformed > 100, "only {malformed} malformed cases");
}

#[test]
fn default_policy_drops_malformed_and_passes_the_rest() {
    let policy = ModelPolicy::default();
    let case = packets::table(&[V4_BLOCKED.into()])
        .into_iter()
        .find(|case| case.kind() == "v4/ihl-4")
        .expect("v4/ihl-4 case");
    assert_eq!(
        model::verdict(&policy, &case.frame),
        Verdict::new(Action::Drop, Reason::Malformed)
    );
    let case = packets::table(&[V4_BLOCKED.into()])
        .into_iter()
        .find(|case| case.kind() == "v4/tcp")
        .expect("v4/tcp case");
    assert_eq!(
        model::verdict(&policy, &case.frame),
        Verdict::new(Action::Pass, Reason::Default)
    );
}

/// TCP cases and the length of their headers (Ethernet through TCP).
const TCP_HEADERS: &[(&str, usize)] = &[
    ("v4/tcp", 14 + 20 + 20),
    ("v4/tcp-payload", 14 + 20 + 20),
    ("v4/vlan1/tcp", 18 + 20 + 20),
    ("v4/vlan2/tcp", 22 + 20 + 20),
    ("v4/options/tcp", 14 + 24 + 20),
    ("v4/options-max/tcp", 14 + 60 + 20),
    ("v4/frag-first/tcp", 14 + 20 + 20),
    ("v6/tcp", 14 + 40 + 20),
    ("v6/vlan2/tcp", 22 + 40 + 20),
    ("v6/hop-long/tcp", 14 + 40 + 32 + 20),
    ("v6/hop+routing+dest/tcp", 14 + 40 + 8 + 16 + 8 + 20),
    ("v6/frag-first/tcp", 14 + 40 + 8 + 20),
    (
        "v6/ext8/tcp",
        14 + 40 + (8 + 8 + 8 + 8 + 16 + 8 + 8 + 24) + 20,
    ),
];

#[test]
fn truncated_headers_are_malformed() {
    for (src, _) in sources() {
        let cases = packets::table(&[src]);
        let mut checked = 0;
        for &(kind, headers) in TCP_HEADERS {
            let Some(case) = cases.iter().find(|case| case.kind() == kind) else {
                continue; // the other family
            };
            checked += 1;
            assert!(
                case.frame.len() >= headers,
                "{}: shorter than its headers",
                case.name
            );
            let prefixes: Vec<&[u8]> = packets::truncations(&case.frame).collect();
            assert_eq!(prefixes.len(), case.frame.len() - 13, "{}", case.name);
            assert_eq!(
                *prefixes.last().expect("some prefix"),
                &case.frame[..],
                "{}",
                case.name
            );
            for prefix in prefixes {
                let parsed = model::parse(prefix);
                if prefix.len() < headers {
                    assert_eq!(
                        parsed,
                        Parsed::Malformed,
                        "{} cut to {} of {} bytes",
                        case.name,
                        prefix.len(),
                        case.frame.len()
                    );
                } else {
                    match parsed {
                        Parsed::Ip(packet) => assert_eq!(
                            (packet.src, packet.protocol, packet.ports),
                            (src, 6, TCP),
                            "{} cut to {} bytes",
                            case.name,
                            prefix.len()
                        ),
                        other => panic!("{} cut to {} bytes: {other:?}", case.name, prefix.len()),
                    }
                }
            }
        }
        assert!(checked >= 6, "{src}: only {checked} TCP cases found");
    }
}

#[test]
fn truncations_start_at_the_ethernet_header() {
    let frame: Vec<u8> = (0..60).collect();
    let lengths: Vec<usize> = packets::truncations(&frame).map(<[u8]>::len).collect();
    assert_eq!(lengths, (14..=60).collect::<Vec<_>>());
    assert!(packets::truncations(&frame).all(|prefix| frame.starts_with(prefix)));
    assert_eq!(packets::truncations(&frame[..14]).count(), 1);
    assert_eq!(packets::truncations(&frame[..13]).count(), 0);
    assert_eq!(packets::truncations(&[]).count(), 0);
}

fn near() -> Vec<IpNet> {
    vec![
        net("203.0.113.0/24"),
        net("203.0.113.7/32"),
        net("2001:db8:1::/48"),
        net("2001:db8:1::7/128"),
    ]
}

#[test]
fn random_frames_are_deterministic() {
    let near = near();
    let a = packets::random_frames(7, 2000, &near);
    assert_eq!(a.len(), 2000);
    assert_eq!(
        a,
        packets::random_frames(7, 2000, &near),
        "same seed, different frames"
    );
    assert_eq!(
        &a[..100],
        &packets::random_frames(7, 100, &near)[..],
        "prefix of a longer run"
    );
    let b = packets::random_frames(8, 2000, &near);
    assert_ne!(a, b, "seeds 7 and 8 gave the same frames");
    let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    assert!(same < 20, "{same} equal frames for different seeds");
    assert!(packets::random_frames(7, 0, &near).is_empty());
    // Without interesting prefixes, sources are fully random.
    assert_eq!(packets::random_frames(9, 100, &[]).len(), 100);
}

#[test]
fn random_frames_are_a_healthy_mix() {
    let near = near();
    let frames = packets::random_frames(0x5eed, 10_000, &near);
    let policy = policy(Action::Drop);
    let (mut non_ip, mut malformed, mut ip) = (0, 0, 0);
    let (mut v4, mut v6, mut tagged, mut double_tagged, mut in_near) = (0, 0, 0, 0, 0);
    let (mut ports, mut fragments_or_other) = (0, 0);
    let mut reasons = BTreeSet::new();
    for (i, frame) in frames.iter().enumerate() {
        assert!(
            frame.len() >= 14,
            "frame {i} has {} bytes: {}",
            frame.len(),
            hex(frame)
        );
        assert!(frame.len() <= 400, "frame {i} has {} bytes", frame.len());
        let ether_type = u16::from_be_bytes([frame[12], frame[13]]);
        if [0x8100, 0x88a8].contains(&ether_type) {
            tagged += 1;
            if frame.len() >= 18
                && [0x8100, 0x88a8].contains(&u16::from_be_bytes([frame[16], frame[17]]))
            {
                double_tagged += 1;
            }
        }
        reasons.insert(model::verdict(&policy, frame).reason);
        match model::parse(frame) {
            Parsed::NonIp => non_ip += 1,
            Parsed::Malformed => malformed += 1,
            Parsed::Ip(packet) => {
                ip += 1;
                match packet.src {
                    IpAddr::V4(_) => v4 += 1,
                    IpAddr::V6(_) => v6 += 1,
                }
                if near.iter().any(|net| net.contains(&packet.src)) {
                    in_near += 1;
                }
                if packet.ports.is_some() {
                    ports += 1;
                } else {
                    fragments_or_other += 1;
                }
            }
        }
    }
    let summary = format!(
        "non-IP {non_ip}, malformed {malformed}, IP {ip} (v4 {v4}, v6 {v6}, near {in_near}, \
         ports {ports}, no ports {fragments_or_other}), tagged {tagged} (double {double_tagged})"
    );
    println!("{summary}");
    assert!(non_ip >= 100, "{summary}");
    assert!(malformed >= 100, "{summary}");
    assert!(ip >= 100, "{summary}");
    assert!(v4 >= 1000 && v6 >= 1000, "{summary}");
    assert!(tagged >= 1000 && double_tagged >= 500, "{summary}");
    assert!(in_near * 2 >= ip && in_near * 5 <= ip * 4, "{summary}");
    assert!(ports >= 1000 && fragments_or_other >= 1000, "{summary}");
    assert_eq!(
        reasons.len(),
        LIST_REASONS,
        "reasons seen: {reasons:?}; {summary}"
    );
}

/// The IPv6 fragment header's offset and M flag, as the model reads them (RFC 8200: offset << 3 |
/// M), in frames whose fragment header directly follows the fixed header.
#[test]
fn ipv6_fragment_headers_use_the_rfc_layout() {
    let cases = packets::table(&[V6_DEFAULT.into()]);
    for (kind, word) in [
        ("v6/frag-first/tcp", 1),
        ("v6/frag-middle/tcp", (185 << 3) | 1),
        ("v6/frag-last/udp", 370 << 3),
    ] {
        let case = cases
            .iter()
            .find(|case| case.kind() == kind)
            .unwrap_or_else(|| panic!("no case {kind}"));
        let header = &case.frame[14 + 40..14 + 40 + 8];
        assert_eq!(case.frame[14 + 6], 44, "{}: next header", case.name);
        assert_eq!(
            u16::from_be_bytes([header[2], header[3]]),
            word,
            "{}: fragment offset and M flag",
            case.name
        );
    }
}
