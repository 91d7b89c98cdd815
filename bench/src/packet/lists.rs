//! The per-packet benchmark's lists and state: random realistic blocklists, preloaded tracked
//! sources, a manual ban.

use std::net::Ipv4Addr;

use firewall_userspace::{Firewall, Policy};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rand::{Rng as _, rngs::SmallRng};

use super::*;

/// The benchmark's own block entries; every list holds them.
fn fixed_entries() -> Vec<IpNet> {
    vec![
        IpNet::V4(Ipv4Net::new_assert(BLOCKED_HOST, 32)),
        IpNet::V4(Ipv4Net::new_assert(BLOCKED_NET, 24)),
        IpNet::V6(Ipv6Net::new_assert(BLOCKED_V6_HOST, 128)),
        IpNet::V6(Ipv6Net::new_assert(BLOCKED_V6_NET_MEMBER, 48).trunc()),
    ]
}

/// One random prefix of the realistic mix, or `None` when it falls where the benchmark's own
/// sources live: 85% IPv4 (70% /32, 25% /24, 5% /16) anywhere in the IPv4 space, 15% IPv6
/// (30% /48, 20% /56, 35% /64, 15% /128), of which 2% inside 2001:db8::/32 and the rest in
/// random /32s of 2000::/3.
fn random_prefix(rng: &mut SmallRng) -> Option<IpNet> {
    if rng.random_range(0..100) < 85 {
        let roll = rng.random_range(0..100);
        let len = if roll < 70 {
            32
        } else if roll < 95 {
            24
        } else {
            16
        };
        let addr = Ipv4Addr::from(rng.random::<u32>());
        if addr.octets()[..2] == [203, 0] || addr.octets()[..2] == [192, 0] {
            return None;
        }
        return Some(IpNet::V4(Ipv4Net::new(addr, len).ok()?.trunc()));
    }
    let roll = rng.random_range(0..100);
    let len = if roll < 30 {
        48
    } else if roll < 50 {
        56
    } else if roll < 85 {
        64
    } else {
        128
    };
    let top: u32 = if rng.random_range(0..100) < 2 {
        0x2001_0db8
    } else {
        0x2000_0000 | (rng.random::<u32>() & 0x1fff_ffff)
    };
    let addr = (u128::from(top) << 96) | (rng.random::<u128>() >> 32);
    let third = (addr >> 80) as u16;
    if (top == 0x2001_0db8 && third >= 0xfe00) || top == 0x2001_0db9 {
        return None;
    }
    Some(IpNet::V6(
        Ipv6Net::new(Ipv6Addr::from(addr), len).ok()?.trunc(),
    ))
}

/// The benchmark's own entries plus random ones up to `size` prefixes (at least the own ones).
pub(crate) fn blocklist(size: usize, rng: &mut SmallRng) -> Vec<IpNet> {
    let mut list = fixed_entries();
    let mut seen: std::collections::HashSet<IpNet> = list.iter().copied().collect();
    while list.len() < size {
        if let Some(net) = random_prefix(rng)
            && seen.insert(net)
        {
            list.push(net);
        }
    }
    list
}

/// Fills the source-state map with `count` random IPv4 sources of rule 0.
pub(crate) fn preload_sources(
    firewall: &mut Firewall,
    count: usize,
    rng: &mut SmallRng,
) -> anyhow::Result<()> {
    use firewall_common::rules::{TrackKey, TrackState};
    let map = firewall.map_mut(firewall_common::map_names::SOURCES)?;
    let mut sources: aya::maps::HashMap<_, TrackKey, TrackState> =
        aya::maps::HashMap::try_from(map)?;
    for _ in 0..count {
        let key = TrackKey::v4(0, rng.random::<u32>(), 32);
        sources.insert(key, TrackState::default(), 0)?;
    }
    Ok(())
}

/// Bans `source` (its /32) the way `apifw ban add` does: the ban check switched on in the
/// installed configuration (`Engine::compile`) and a manual ban written into the ban map
/// (`Engine::write_bans`), for an hour.
pub(super) fn ban(
    firewall: &mut Firewall,
    policy: &Policy,
    source: Ipv4Addr,
) -> anyhow::Result<()> {
    use firewall_common::rules::{BAN_HOST, BanEntry};
    use firewall_userspace::dataplane::bans;
    let mut compiled =
        firewall_userspace::compile::Compiled::build(policy, &policy.allow, &policy.block, None)?;
    compiled.config.flags |= firewall_common::config::CONFIG_BANS;
    firewall.install(compiled)?;
    let entry = BanEntry::new(
        bans::monotonic_ns()?,
        3_600_000_000_000,
        bans::MANUAL_BAN_RULE,
        BAN_HOST,
    );
    let key = firewall_userspace::engine::ban_key(&IpNet::V4(Ipv4Net::new_assert(source, 32)));
    firewall.bans_mut()?.insert(key, entry, 0)?;
    Ok(())
}
