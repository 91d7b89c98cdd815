//! Flood labs that can exist side by side: the flood benchmark's [`Lab`] (a generator and a
//! target namespace joined by one veth pair), built here under namespace names of the fleet's.
//!
//! `Lab::new` in `flood/lab.rs` names its namespaces once per process (`apfl-gen`, `apfl-tgt`),
//! so a second lab made while the first lives takes over the first one's names (and deletes
//! them): the fleet needs both bouncers' labs at once. Its build steps are private, so this is a
//! local copy of them (from `flood/lab.rs`, which belongs to another section: keep the two alike).
//! The result is the flood benchmark's own `Lab`, so its counters and NAPI pinning are reused as
//! they are.

use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, bail};

use crate::{
    flood::lab::{FLOOD_NET, GENERATOR_ADDR, Lab, TARGET_ADDR, command, flood_frame, in_netns},
    netns::Netns,
};

/// Labs made by this process so far: each gets interface names of its own, so that the NAPI
/// thread of a lab cannot be confused with one of a lab still being torn down.
static LABS: AtomicU32 = AtomicU32::new(0);

/// A flood lab whose namespaces are named after `slot` (one slot per lab alive at a time).
pub fn new(slot: usize) -> anyhow::Result<Lab> {
    let n = LABS.fetch_add(1, Ordering::Relaxed) % 1000;
    let pid = std::process::id() % 100;
    // 10 characters: `napi/<name>` is exactly the 15 characters a thread's comm keeps.
    let mut lab = Lab {
        generator_if: format!("apfq{pid:02}{n:03}a"),
        target_if: format!("apfq{pid:02}{n:03}b"),
        generator_ifindex: 0,
        frame: Vec::new(),
        target: Netns::new(&format!("fleetT{slot}")),
        generator: Netns::new(&format!("fleetG{slot}")),
    };
    build(&mut lab)?;
    Ok(lab)
}

/// `Lab::build` of `flood/lab.rs`: the veth pair, addresses, the route back to the flood's
/// sources, GRO and threaded NAPI on the receiving end.
fn build(lab: &mut Lab) -> anyhow::Result<()> {
    let (g, t) = (&lab.generator, &lab.target);
    let (a, b) = (lab.generator_if.as_str(), lab.target_if.as_str());
    for ns in [g, t] {
        in_netns(ns, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        in_netns(
            ns,
            &["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"],
        )?;
    }
    for setting in ["all", "default"] {
        in_netns(
            t,
            &[
                "sysctl",
                "-qw",
                &format!("net.ipv4.conf.{setting}.rp_filter=0"),
            ],
        )?;
    }
    let (gn, tn) = (g.name(), t.name());
    command(
        "ip",
        &[
            "-n", gn, "link", "add", a, "type", "veth", "peer", "name", b, "netns", tn,
        ],
    )?;
    in_netns(
        t,
        &["sysctl", "-qw", &format!("net.ipv4.conf.{b}.rp_filter=0")],
    )?;
    let generator_cidr = format!("{GENERATOR_ADDR}/24");
    let target_cidr = format!("{TARGET_ADDR}/24");
    command("ip", &["-n", gn, "addr", "add", &generator_cidr, "dev", a])?;
    command("ip", &["-n", tn, "addr", "add", &target_cidr, "dev", b])?;
    command("ip", &["-n", gn, "link", "set", a, "up"])?;
    command("ip", &["-n", tn, "link", "set", b, "up"])?;
    let (generator_mac, generator_ifindex) = address_and_index(g, a)?;
    let (target_mac, _) = address_and_index(t, b)?;
    command(
        "ip",
        &[
            "-n",
            tn,
            "route",
            "add",
            FLOOD_NET,
            "via",
            GENERATOR_ADDR,
            "dev",
            b,
        ],
    )?;
    command(
        "ip",
        &[
            "-n",
            tn,
            "neigh",
            "replace",
            GENERATOR_ADDR,
            "lladdr",
            &generator_mac,
            "dev",
            b,
            "nud",
            "permanent",
        ],
    )?;
    // NAPI on the receiving end, so that it accepts XDP frames without an XDP program of its
    // own; threaded, so that its work runs in a thread that can be pinned and measured.
    in_netns(t, &["ethtool", "-K", b, "gro", "on"])?;
    in_netns(
        t,
        &["sh", "-c", &format!("echo 1 > /sys/class/net/{b}/threaded")],
    )?;
    lab.generator_ifindex = generator_ifindex;
    lab.frame = flood_frame(&parse_mac(&generator_mac)?, &parse_mac(&target_mac)?)?;
    Ok(())
}

/// The MAC address and ifindex of `interface` in `netns`.
fn address_and_index(netns: &Netns, interface: &str) -> anyhow::Result<(String, u32)> {
    let json = command(
        "ip",
        &["-n", netns.name(), "-j", "link", "show", "dev", interface],
    )?;
    let links: serde_json::Value =
        serde_json::from_str(&json).with_context(|| format!("ip -j link show {interface}"))?;
    let mac = links[0]["address"]
        .as_str()
        .with_context(|| format!("no MAC address on {interface}"))?
        .to_owned();
    let index = links[0]["ifindex"]
        .as_u64()
        .and_then(|index| u32::try_from(index).ok())
        .with_context(|| format!("no ifindex for {interface}"))?;
    Ok((mac, index))
}

fn parse_mac(text: &str) -> anyhow::Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|part| u8::from_str_radix(part, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC address {text}"))?;
    match <[u8; 6]>::try_from(bytes) {
        Ok(mac) => Ok(mac),
        Err(_) => bail!("MAC address {text} is not 6 bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_parsed() {
        assert_eq!(
            parse_mac("02:00:0a:ff:00:01").unwrap(),
            [2, 0, 10, 255, 0, 1]
        );
        assert!(parse_mac("02:00").is_err());
    }
}
