//! The flood's topology: a generator namespace and a target namespace joined by one veth pair,
//! and the counters read around a flood.
//!
//! The target end (`B`, 192.0.2.1/24) is where every filter sits. It receives the generator's
//! `XDP_TX` frames through `ndo_xdp_xmit`, which a veth accepts only when its peer runs NAPI:
//! GRO is switched on for that (an XDP program on `B` would also do, but the cases without one
//! must receive too). NAPI is threaded, and the benchmark pins that thread to its own CPU, so
//! all of the receiving side's work (veth receive, XDP, GRO, netfilter hooks, the IP and UDP
//! stack up to the drop) runs in one kernel thread whose CPU time can be read, away from the
//! generator's CPU.
//!
//! Frames carry spoofed sources from 198.18.0.0/15, so `B` has a route back to that range (via
//! the generator's end, with a static neighbour) and reverse-path filtering off: the stack then
//! treats them as it would a real flood, and iptables sees them in PREROUTING.

use std::{
    path::Path,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};

use crate::{netns::Netns, support::raise_priority};

/// The target's address, the flood's destination.
pub const TARGET_ADDR: &str = "192.0.2.1";
/// The generator end's address (the next hop of the route back to the flood's sources).
pub const GENERATOR_ADDR: &str = "192.0.2.2";
/// Where the flood's sources lie (RFC 2544's benchmarking range).
pub const FLOOD_NET: &str = "198.18.0.0/15";
/// A UDP port nothing listens on (discard).
pub const FLOOD_PORT: u16 = 9;

/// Runs a command and returns its stdout, or an error carrying what it printed.
pub fn command(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `ip netns exec NS ARGS`: a fresh mount of /sys for the namespace, so /sys/class/net is its
/// own (but /sys/fs/bpf is hidden; see [`in_netns_bpffs`]).
pub fn in_netns(netns: &Netns, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["netns", "exec", netns.name()];
    full.extend_from_slice(args);
    command("ip", &full)
}

/// `nsenter --net=NS ARGS`: the namespace's network with the host's mounts, for tools that keep
/// state on bpffs (xdp-filter, the apifw CLI).
pub fn in_netns_bpffs(netns: &Netns, args: &[&str]) -> anyhow::Result<String> {
    let net = format!("--net={}", netns.path().display());
    let mut full = vec![net.as_str()];
    full.extend_from_slice(args);
    command("nsenter", &full)
}

/// One flood's topology, removed on drop (deleting the namespaces deletes the veth pair, and
/// every nftables table, iptables rule and ipset set made inside them).
pub struct Lab {
    /// The generator's end, in `generator`.
    pub generator_if: String,
    /// The target's end, in `target`: the interface under test.
    pub target_if: String,
    /// ifindex of `generator_if` in `generator`, for the generator's `xdp_md`.
    pub generator_ifindex: u32,
    /// The frame the generator starts from.
    pub frame: Vec<u8>,
    pub target: Netns,
    pub generator: Netns,
}

/// Labs made by this process so far: each gets interface names of its own, so that the NAPI
/// thread of a lab cannot be confused with one of a previous lab still being torn down.
static LABS: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// The flood benchmark's lab (namespaces `apfl-gen`, `apfl-tgt`): one at a time per process.
    pub fn new() -> anyhow::Result<Self> {
        Self::named("apfl-gen", "apfl-tgt")
    }

    /// A lab whose namespaces are tagged `generator_tag` and `target_tag`: labs with tags of
    /// their own can exist side by side (the fleet benchmark floods two bouncers at once).
    pub fn named(generator_tag: &str, target_tag: &str) -> anyhow::Result<Self> {
        let n = LABS.fetch_add(1, Ordering::Relaxed) % 1000;
        let pid = std::process::id() % 100;
        // 10 characters: `napi/<name>` is exactly the 15 characters a thread's comm keeps.
        let (generator_if, target_if) = (
            format!("apfl{pid:02}{n:03}a"),
            format!("apfl{pid:02}{n:03}b"),
        );
        let generator = Netns::new(generator_tag);
        let target = Netns::new(target_tag);
        let mut lab = Self {
            generator_if,
            target_if,
            generator_ifindex: 0,
            frame: Vec::new(),
            target,
            generator,
        };
        lab.build()?;
        Ok(lab)
    }

    fn build(&mut self) -> anyhow::Result<()> {
        let (g, t) = (&self.generator, &self.target);
        let (a, b) = (self.generator_if.as_str(), self.target_if.as_str());
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
        let gn = g.name();
        command(
            "ip",
            &[
                "-n",
                gn,
                "link",
                "add",
                a,
                "type",
                "veth",
                "peer",
                "name",
                b,
                "netns",
                t.name(),
            ],
        )?;
        in_netns(
            t,
            &["sysctl", "-qw", &format!("net.ipv4.conf.{b}.rp_filter=0")],
        )?;
        command(
            "ip",
            &[
                "-n",
                gn,
                "addr",
                "add",
                &format!("{GENERATOR_ADDR}/24"),
                "dev",
                a,
            ],
        )?;
        command(
            "ip",
            &[
                "-n",
                t.name(),
                "addr",
                "add",
                &format!("{TARGET_ADDR}/24"),
                "dev",
                b,
            ],
        )?;
        command("ip", &["-n", gn, "link", "set", a, "up"])?;
        command("ip", &["-n", t.name(), "link", "set", b, "up"])?;
        let generator_mac = link(g, a)?["address"].as_str().map(str::to_owned);
        let target_mac = link(t, b)?["address"].as_str().map(str::to_owned);
        let (Some(generator_mac), Some(target_mac)) = (generator_mac, target_mac) else {
            bail!("no MAC address on {a} or {b}");
        };
        command(
            "ip",
            &[
                "-n",
                t.name(),
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
                t.name(),
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
        // NAPI on the receiving end, so that it accepts XDP frames without an XDP program of
        // its own; threaded, so that its work runs in a thread we can pin and measure.
        in_netns(t, &["ethtool", "-K", b, "gro", "on"])?;
        in_netns(
            t,
            &["sh", "-c", &format!("echo 1 > /sys/class/net/{b}/threaded")],
        )?;
        self.generator_ifindex = link(g, a)?["ifindex"]
            .as_u64()
            .and_then(|index| u32::try_from(index).ok())
            .with_context(|| format!("no ifindex for {a}"))?;
        self.frame = flood_frame(&parse_mac(&generator_mac)?, &parse_mac(&target_mac)?)?;
        Ok(())
    }

    /// The receiving end's counters now.
    pub fn counters(&self) -> anyhow::Result<Counters> {
        let stats = link_stats(&self.target, &self.target_if)?;
        let rx = &stats["stats64"]["rx"];
        let field = |name: &str| {
            rx[name]
                .as_u64()
                .with_context(|| format!("no rx {name} counter for {}", self.target_if))
        };
        let ethtool = in_netns(&self.target, &["ethtool", "-S", &self.target_if])?;
        Ok(Counters {
            rx_packets: field("packets")?,
            rx_dropped: field("dropped")?,
            xdp_drops: ethtool_sum(&ethtool, "_xdp_drops"),
            napi_ns: napi_threads(&self.target_if)?
                .iter()
                .map(|tid| thread_cpu_ns(*tid))
                .sum(),
        })
    }

    /// Pins the NAPI thread(s) of the interface under test to `cpu`.
    pub fn pin_napi(&self, cpu: usize) -> anyhow::Result<()> {
        let threads = napi_threads(&self.target_if)?;
        if threads.is_empty() {
            bail!(
                "no NAPI thread for {} (threaded NAPI not enabled?)",
                self.target_if
            );
        }
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu)?;
        for tid in threads {
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set)
                .with_context(|| format!("pin NAPI thread {tid} to CPU {cpu}"))?;
            raise_priority(tid)?;
        }
        Ok(())
    }
}

/// Counters of the receiving end at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// Frames the veth's NAPI took from its ring (whatever happened to them next).
    pub rx_packets: u64,
    /// Frames the generator's end could not put on that ring because it was full, plus
    /// receive drops.
    pub rx_dropped: u64,
    /// Frames an XDP program on the veth dropped in native mode.
    pub xdp_drops: u64,
    /// CPU time of the NAPI thread(s), ns.
    pub napi_ns: u64,
}

/// Sum of the `ethtool -S` counters whose name ends with `suffix`.
pub(crate) fn ethtool_sum(text: &str, suffix: &str) -> u64 {
    text.lines()
        .filter_map(|line| line.trim().split_once(':'))
        .filter(|(name, _)| name.trim().ends_with(suffix))
        .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
        .sum()
}

fn link(netns: &Netns, interface: &str) -> anyhow::Result<serde_json::Value> {
    let json = command(
        "ip",
        &["-n", netns.name(), "-j", "link", "show", "dev", interface],
    )?;
    let mut links: serde_json::Value =
        serde_json::from_str(&json).with_context(|| format!("ip -j link show {interface}"))?;
    Ok(links[0].take())
}

fn link_stats(netns: &Netns, interface: &str) -> anyhow::Result<serde_json::Value> {
    let json = command(
        "ip",
        &[
            "-n",
            netns.name(),
            "-j",
            "-s",
            "link",
            "show",
            "dev",
            interface,
        ],
    )?;
    let mut links: serde_json::Value =
        serde_json::from_str(&json).with_context(|| format!("ip -j -s link show {interface}"))?;
    Ok(links[0].take())
}

fn parse_mac(text: &str) -> anyhow::Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|part| u8::from_str_radix(part, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC address {text}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("MAC address {text} is not 6 bytes"))
}

/// The generator's template: a 60-byte Ethernet/IPv4/UDP frame (64 on the wire) from the
/// generator's end to the target's MAC, 198.18.0.1 → [`TARGET_ADDR`]:[`FLOOD_PORT`], with a
/// valid IPv4 header checksum (the generator keeps it valid) and no UDP checksum (0), since
/// the generator changes the source the UDP checksum covers.
pub fn flood_frame(source_mac: &[u8; 6], target_mac: &[u8; 6]) -> anyhow::Result<Vec<u8>> {
    let target: std::net::Ipv4Addr = TARGET_ADDR.parse()?;
    let builder = etherparse::PacketBuilder::ethernet2(*source_mac, *target_mac)
        .ipv4([198, 18, 0, 1], target.octets(), 64)
        .udp(40_000, FLOOD_PORT);
    let payload = [0u8; 18];
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut frame, &payload)
        .context("build the flood frame")?;
    // The UDP checksum field: Ethernet (14) + IPv4 (20) + 6.
    frame
        .get_mut(40..42)
        .context("flood frame too short")?
        .fill(0);
    Ok(frame)
}

/// The NAPI threads of `interface`: kernel threads named `napi/<interface>-<id>` (the name is
/// cut to the 15 characters a comm holds, which [`Lab::new`]'s names are made for).
pub(crate) fn napi_threads(interface: &str) -> anyhow::Result<Vec<i32>> {
    let wanted: String = format!("napi/{interface}-").chars().take(15).collect();
    let mut threads = Vec::new();
    for entry in std::fs::read_dir("/proc").context("read /proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(&wanted) {
            threads.push(pid);
        }
    }
    Ok(threads)
}

/// CPU time a thread has run, ns (`/proc/TID/schedstat`, first field); 0 once it is gone.
fn thread_cpu_ns(tid: i32) -> u64 {
    read_schedstat(&Path::new("/proc").join(tid.to_string()).join("schedstat"))
}

/// The first field of a `schedstat` file.
pub fn read_schedstat(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_ipv4_udp_without_udp_checksum() {
        let frame = flood_frame(&[2, 0, 0, 0, 0, 1], &[2, 0, 0, 0, 0, 2]).unwrap();
        assert_eq!(frame.len(), 60);
        let packet = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = packet.net else {
            panic!("not IPv4");
        };
        assert_eq!(ip.header().source(), [198, 18, 0, 1]);
        assert_eq!(&frame[40..42], &[0, 0]);
        assert_eq!(
            ip.header().header_checksum(),
            ip.header().to_header().calc_header_checksum()
        );
    }

    #[test]
    fn ethtool_counters_are_summed() {
        let text = "NIC statistics:\n     rx_queue_0_xdp_drops: 5\n     rx_queue_1_xdp_drops: 7\n     rx_queue_0_drops: 9\n";
        assert_eq!(ethtool_sum(text, "_xdp_drops"), 12);
        assert_eq!(
            parse_mac("02:00:0a:ff:00:01").unwrap(),
            [2, 0, 10, 255, 0, 1]
        );
        assert!(parse_mac("02:00").is_err());
    }
}
