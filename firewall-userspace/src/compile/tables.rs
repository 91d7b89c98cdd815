//! Compiles allow/block lists into the kernel's prefix tables (layout in
//! `firewall_common::prefix` and `docs/DESIGN.md`).
//!
//! Each prefix gets *resolved* flags: allowlisted if it or any shorter allowlisted prefix covers
//! it, and likewise for the blocklist. The kernel then needs only the longest stored prefix that
//! contains a source to know its verdict.

use std::collections::BTreeSet;

/// Hash maps and sets with a fast, per-process seeded hasher: compiling a million prefixes
/// spends most of its time hashing, and SipHash's extra strength buys nothing here.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// See [`FastMap`].
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

use firewall_common::prefix::{
    self, FLAG_ALLOW, FLAG_BLOCK, PrefixV4Key, PrefixV6Key, V4_SUMMARY_BITS, V4Summary,
    V6_SUMMARY_BITS, V6Summary,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::policy::Limits;

/// The lists do not fit the configured map sizes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{count} {what} exceed the limit of {limit}; raise `limits.{setting}` in the policy \
     (kernel memory grows with it)"
)]
pub struct CapacityError {
    /// What overflowed.
    pub what: &'static str,
    /// How many entries are needed.
    pub count: usize,
    /// The configured capacity.
    pub limit: u32,
    /// The policy setting that raises it.
    pub setting: &'static str,
}

/// The content of the prefix maps for one policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrefixTables {
    /// Non-empty entries of the IPv4 summary array, by /16 index.
    pub v4_summary: FastMap<u32, V4Summary>,
    /// IPv4 prefixes longer than /16.
    pub v4_prefixes: FastMap<PrefixV4Key, u32>,
    /// IPv6 /32s that contain prefixes longer than /32.
    pub v6_summary: FastMap<[u8; 4], V6Summary>,
    /// Every IPv6 prefix.
    pub v6_prefixes: FastMap<PrefixV6Key, u32>,
    /// Lengths (0..=32) of the IPv6 prefixes that are not expanded into summaries.
    pub v6_short_mask: u64,
}

fn v4_key(net: &Ipv4Net) -> PrefixV4Key {
    PrefixV4Key::new(u32::from(net.network()), u32::from(net.prefix_len()))
}

fn v6_halves(addr: std::net::Ipv6Addr) -> (u64, u64) {
    let bits = u128::from(addr);
    ((bits >> 64) as u64, bits as u64)
}

fn v6_key(net: &Ipv6Net) -> PrefixV6Key {
    let (hi, lo) = v6_halves(net.network());
    PrefixV6Key::new(hi, lo, u32::from(net.prefix_len()))
}

/// Resolved flags of every prefix of one family.
fn resolve<N: Copy + Eq + std::hash::Hash + Ord>(
    allow: &FastSet<N>,
    block: &FastSet<N>,
    len: impl Fn(&N) -> u8,
    widen: impl Fn(&N, u8) -> N,
) -> Vec<(N, u32)> {
    let lengths = |set: &FastSet<N>| set.iter().map(&len).collect::<BTreeSet<u8>>();
    let (allow_lengths, block_lengths) = (lengths(allow), lengths(block));
    let covered = |net: &N, set: &FastSet<N>, lengths: &BTreeSet<u8>| {
        set.contains(net)
            || lengths
                .range(..len(net))
                .any(|shorter| set.contains(&widen(net, *shorter)))
    };
    // Sorted and deduplicated in a vector: a BTreeSet of a million prefixes costs far more.
    let mut all: Vec<N> = allow.iter().chain(block.iter()).copied().collect();
    all.sort_unstable();
    all.dedup();
    all.into_iter()
        .map(|net| {
            let mut flags = 0;
            if covered(&net, allow, &allow_lengths) {
                flags |= FLAG_ALLOW;
            }
            if covered(&net, block, &block_lengths) {
                flags |= FLAG_BLOCK;
            }
            (net, flags)
        })
        .collect()
}

impl PrefixTables {
    /// Compiles normalised (host bits clear) lists, checking them against `limits`.
    pub fn build(allow: &[IpNet], block: &[IpNet], limits: &Limits) -> Result<Self, CapacityError> {
        let split = |list: &[IpNet]| {
            let mut v4 = FastSet::default();
            let mut v6 = FastSet::default();
            for net in list {
                match net.trunc() {
                    IpNet::V4(net) => v4.insert(net),
                    IpNet::V6(net) => v6.insert(net),
                };
            }
            (v4, v6)
        };
        let (allow_v4, allow_v6) = split(allow);
        let (block_v4, block_v6) = split(block);
        let mut tables = Self::default();

        // IPv4: prefixes up to /16 are expanded into the summary array, shortest first, so that
        // a longer prefix overwrites the flags of a shorter one it lies in.
        let mut v4 = resolve(
            &allow_v4,
            &block_v4,
            |net| net.prefix_len(),
            |net, len| {
                Ipv4Net::new(net.network(), len)
                    .map(|n| n.trunc())
                    .unwrap_or(*net)
            },
        );
        v4.sort_by_key(|(net, _)| net.prefix_len());
        let long_v4 = v4
            .iter()
            .filter(|(net, _)| u32::from(net.prefix_len()) > V4_SUMMARY_BITS)
            .count();
        if long_v4 > limits.max_v4_prefixes as usize {
            return Err(CapacityError {
                what: "IPv4 prefixes longer than /16",
                count: long_v4,
                limit: limits.max_v4_prefixes,
                setting: "max_v4_prefixes",
            });
        }
        tables.v4_prefixes.reserve(long_v4);
        for (net, flags) in &v4 {
            let len = u32::from(net.prefix_len());
            let top = u32::from(net.network()) >> (32 - V4_SUMMARY_BITS);
            if len <= V4_SUMMARY_BITS {
                let span = 1u32 << (V4_SUMMARY_BITS - len);
                for index in top..top + span {
                    tables.v4_summary.entry(index).or_default().short_flags = *flags;
                }
            } else {
                tables.v4_prefixes.insert(v4_key(net), *flags);
                tables.v4_summary.entry(top).or_default().longer_mask |=
                    1 << (len - V4_SUMMARY_BITS - 1);
            }
        }

        // IPv6: every prefix is hashed; /32s holding longer prefixes get a summary carrying the
        // flags of the longest short prefix covering them.
        let v6 = resolve(
            &allow_v6,
            &block_v6,
            |net| net.prefix_len(),
            |net, len| {
                Ipv6Net::new(net.network(), len)
                    .map(|n| n.trunc())
                    .unwrap_or(*net)
            },
        );
        if v6.len() > limits.max_v6_prefixes as usize {
            return Err(CapacityError {
                what: "IPv6 prefixes",
                count: v6.len(),
                limit: limits.max_v6_prefixes,
                setting: "max_v6_prefixes",
            });
        }
        for (net, flags) in &v6 {
            let len = u32::from(net.prefix_len());
            tables.v6_prefixes.insert(v6_key(net), *flags);
            if len <= V6_SUMMARY_BITS {
                tables.v6_short_mask |= 1 << len;
            } else {
                let bit = len - V6_SUMMARY_BITS - 1;
                let top: [u8; 4] = net.network().octets()[..4].try_into().unwrap_or_default();
                tables.v6_summary.entry(top).or_default().longer_mask[(bit / 64) as usize] |=
                    1 << (bit % 64);
            }
        }
        let short_mask = tables.v6_short_mask;
        let v6_prefixes = &tables.v6_prefixes;
        for (top, summary) in tables.v6_summary.iter_mut() {
            let hi = u64::from(u32::from_be_bytes(*top)) << 32;
            summary.short_flags =
                prefix::lookup_v6(&V6Summary::default(), false, short_mask, hi, 0, |key| {
                    v6_prefixes.get(key).copied().unwrap_or(prefix::NO_HIT)
                });
        }
        Ok(tables)
    }

    /// Resolved flags for `addr`, computed exactly as the XDP program does over its maps.
    pub fn lookup(&self, addr: std::net::IpAddr) -> u32 {
        match addr {
            std::net::IpAddr::V4(addr) => {
                let addr = u32::from(addr);
                let summary = self
                    .v4_summary
                    .get(&(addr >> (32 - V4_SUMMARY_BITS)))
                    .copied()
                    .unwrap_or_default();
                prefix::lookup_v4(&summary, addr, |key| {
                    self.v4_prefixes.get(key).copied().unwrap_or(prefix::NO_HIT)
                })
            }
            std::net::IpAddr::V6(addr) => {
                let (hi, lo) = v6_halves(addr);
                let top = ((hi >> 32) as u32).to_be_bytes();
                let summary = self.v6_summary.get(&top);
                prefix::lookup_v6(
                    &summary.copied().unwrap_or_default(),
                    summary.is_some(),
                    self.v6_short_mask,
                    hi,
                    lo,
                    |key| self.v6_prefixes.get(key).copied().unwrap_or(prefix::NO_HIT),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use firewall_common::{
        Action, Reason,
        model::{self, IpPacket, ModelPolicy, Parsed},
    };
    use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|err| panic!("{s}: {err}"))
    }

    fn reason_of(tables: &PrefixTables, addr: IpAddr) -> Reason {
        let flags = tables.lookup(addr);
        if flags & FLAG_ALLOW != 0 {
            Reason::Allowlist
        } else if flags & FLAG_BLOCK != 0 {
            Reason::Blocklist
        } else {
            Reason::Default
        }
    }

    fn model_reason(policy: &ModelPolicy, addr: IpAddr) -> Reason {
        let packet = Parsed::Ip(IpPacket {
            src: addr,
            dst: addr,
            protocol: 0,
            ports: None,
            tcp_flags: None,
        });
        model::decide(policy, &packet).reason
    }

    #[test]
    fn allow_inside_block_and_block_inside_allow() {
        let allow = [
            net("203.0.113.7/32"),
            net("198.18.0.0/15"),
            net("2001:db8:1::7/128"),
        ];
        let block = [
            net("203.0.113.0/24"),
            net("198.18.5.0/24"),
            net("2001:db8:1::/48"),
            net("192.0.0.0/8"),
        ];
        let tables = PrefixTables::build(&allow, &block, &Limits::default()).expect("fits");
        let cases: [(&str, Reason); 9] = [
            ("203.0.113.7", Reason::Allowlist),
            ("203.0.113.8", Reason::Blocklist),
            ("198.18.5.1", Reason::Allowlist),
            ("198.19.255.255", Reason::Allowlist),
            ("192.0.2.1", Reason::Blocklist),
            ("198.51.100.1", Reason::Default),
            ("2001:db8:1::7", Reason::Allowlist),
            ("2001:db8:1::8", Reason::Blocklist),
            ("2001:db8:2::1", Reason::Default),
        ];
        for (addr, expected) in cases {
            let addr: IpAddr = addr.parse().expect("address");
            assert_eq!(reason_of(&tables, addr), expected, "{addr}");
        }
        // /8 expands into 256 summary entries; nothing longer than /16 is hashed for it.
        assert_eq!(tables.v4_prefixes.len(), 3);
    }

    #[test]
    fn capacity_errors_name_the_setting() {
        let block: Vec<IpNet> = (0..10u8)
            .map(|i| IpNet::from(IpAddr::from([203, 0, 113, i])))
            .collect();
        let limits = Limits {
            max_v4_prefixes: 5,
            ..Limits::default()
        };
        let err = PrefixTables::build(&[], &block, &limits).expect_err("over capacity");
        assert_eq!(err.setting, "max_v4_prefixes");
        assert_eq!(err.count, 10);
        assert!(err.to_string().contains("limits.max_v4_prefixes"), "{err}");
    }

    fn random_net(rng: &mut SmallRng) -> IpNet {
        if rng.random_bool(0.5) {
            // Cluster IPv4 prefixes in few /8s so that they overlap often.
            let addr = Ipv4Addr::from(
                (u32::from(rng.random_range(198u8..=203)) << 24) | rng.random_range(0..1 << 24),
            );
            IpNet::from(
                Ipv4Net::new(addr, rng.random_range(0..=32))
                    .expect("len")
                    .trunc(),
            )
        } else {
            let addr = Ipv6Addr::from(
                (0x2001_0db8u128 << 96)
                    | u128::from(rng.random::<u16>()) << 80
                    | u128::from(rng.random::<u64>()),
            );
            let len = *[0u8, 16, 29, 32, 33, 48, 56, 64, 96, 127, 128]
                .get(rng.random_range(0..11))
                .unwrap_or(&128);
            IpNet::from(Ipv6Net::new(addr, len).expect("len").trunc())
        }
    }

    fn random_addr_near(rng: &mut SmallRng, nets: &[IpNet]) -> IpAddr {
        let base = nets[rng.random_range(0..nets.len())];
        match base {
            IpNet::V4(n) => {
                let host = rng.random::<u32>() & !u32::from(n.netmask());
                IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | host))
            }
            IpNet::V6(n) => {
                let host = rng.random::<u128>() & !u128::from(n.netmask());
                IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | host))
            }
        }
    }

    /// The compiled tables, probed like the kernel probes them, agree with the reference model's
    /// linear scan for random overlapping lists.
    #[test]
    fn tables_agree_with_model_on_random_lists() {
        let mut rng = SmallRng::seed_from_u64(0x5eed);
        for round in 0..200 {
            let allow: Vec<IpNet> = (0..rng.random_range(0..8))
                .map(|_| random_net(&mut rng))
                .collect();
            let block: Vec<IpNet> = (1..rng.random_range(2..24))
                .map(|_| random_net(&mut rng))
                .collect();
            let tables = PrefixTables::build(&allow, &block, &Limits::default()).expect("fits");
            let policy = ModelPolicy {
                allow: allow.clone(),
                block: block.clone(),
                malformed: Action::Drop,
                ..ModelPolicy::default()
            };
            let all: Vec<IpNet> = allow.iter().chain(&block).copied().collect();
            for _ in 0..200 {
                let addr = random_addr_near(&mut rng, &all);
                assert_eq!(
                    reason_of(&tables, addr),
                    model_reason(&policy, addr),
                    "round {round}: {addr} with allow {allow:?} block {block:?}"
                );
            }
        }
    }
}

#[cfg(test)]
mod timing {
    use std::net::Ipv4Addr;

    use ipnet::{IpNet, Ipv4Net};
    use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};

    use super::*;

    /// How long compiling a million-prefix blocklist takes; no assertion on time.
    #[test]
    #[ignore = "a measurement, not a check: run with --release -- --ignored --nocapture"]
    fn measure_one_million() {
        let mut rng = SmallRng::seed_from_u64(7);
        let block: Vec<IpNet> = (0..1_000_000)
            .map(|i| {
                let len = match i % 20 {
                    0 => 16,
                    1..=5 => 24,
                    _ => 32,
                };
                IpNet::V4(
                    Ipv4Net::new(Ipv4Addr::from(rng.random::<u32>()), len)
                        .expect("len")
                        .trunc(),
                )
            })
            .collect();
        let limits = Limits {
            max_v4_prefixes: 2_000_000,
            ..Limits::default()
        };
        for _ in 0..3 {
            let start = std::time::Instant::now();
            let tables = PrefixTables::build(&[], &block, &limits).expect("fits");
            eprintln!(
                "build: {:?} for {} hashed",
                start.elapsed(),
                tables.v4_prefixes.len()
            );
        }
    }
}
