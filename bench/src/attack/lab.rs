//! The attack lab: a server with one public interface behind an upstream router, a legitimate
//! client behind that router, and the attacker injecting at the router's port towards the server.
//!
//! ```text
//!  client ns                     edge ns (upstream router)                server ns
//!  apatcN 198.51.100.1/24 <-> apateN 198.51.100.254/24
//!                                 apatuN 192.0.2.254/24  <-> apatsN 192.0.2.1/24 (filter, nginx)
//!                                   ^ SYN flood written here (198.18.0.0/15 sources)
//! ```
//!
//! A dual-stack lab ([`Lab::dual_stack`]) adds IPv6: the server 2001:db8::1/64, the client
//! 2001:db8:0:1::1/64, the router ::fe in both; the IPv6 flood comes from 2001:db8::/32 (every
//! frame a new source), whose answers the router drops.
//!
//! So the server's one interface carries both the flood and the legitimate traffic, as on a
//! real host. Its veth receives in NAPI (GRO on, and TSO off on the sending end, so that every
//! frame takes that path), and NAPI is threaded: all the server's receive work (XDP, netfilter's
//! ingress hook, the IP and TCP stack, SYN cookies) runs in one kernel thread, pinned to the
//! server's CPU. A frame that finds the NAPI ring full is dropped and counted, as a NIC drops
//! what its full rx ring cannot hold. SYN-ACKs to spoofed sources go back to the router, which
//! discards them (blackhole route), as the Internet would lose them.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

use crate::netns::Netns;

/// The server's address.
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The legitimate client's address.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The attacker's source range.
pub const ATTACK_RANGE: &str = "198.18.0.0/15";
/// The server's IPv6 address (dual-stack lab).
pub const SERVER_ADDR_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// The legitimate client's IPv6 address (dual-stack lab).
pub const CLIENT_ADDR_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 1);
/// The IPv6 attacker's source range: any of 2001:db8::/32 (the generator rewrites bits 32..63,
/// so one source in 65,536 falls in the lab's own 2001:db8::/48; the router drops answers to
/// the rest in XDP and to those with its blackhole route).
pub const ATTACK_RANGE_V6: &str = "2001:db8::/32";

/// An address family of the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The server's address in this family.
    pub fn server_addr(self) -> IpAddr {
        match self {
            Family::V4 => SERVER_ADDR.into(),
            Family::V6 => SERVER_ADDR_V6.into(),
        }
    }

    /// The family's name in the report.
    pub fn label(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// The three namespaces and their links, removed on drop.
pub struct Lab {
    /// The server's public interface, where filters attach.
    pub server_if: String,
    /// The router's end of the server's link, where the flood is written.
    pub upstream_if: String,
    /// The client's interface.
    pub client_if: String,
    /// MAC of `server_if`.
    pub server_mac: [u8; 6],
    /// MAC of `upstream_if`.
    pub upstream_mac: [u8; 6],
    /// Server: the filter, nginx.
    pub server: Netns,
    /// Upstream router; the attacker writes into its port towards the server.
    pub edge: Netns,
    /// The legitimate client.
    pub client: Netns,
    /// Whether the lab has IPv6 ([`Lab::dual_stack`]).
    pub ipv6: bool,
}

/// `ip netns exec NS ARGS`, failing with what the command printed.
pub fn exec(netns: &Netns, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let output = Command::new("ip")
        .args(["netns", "exec", netns.name()])
        .args(args)
        .output()
        .with_context(|| format!("run {args:?} in {}", netns.name()))?;
    ensure!(
        output.status.success(),
        "{args:?} in {} failed ({}): {}",
        netns.name(),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(output)
}

fn ip(netns: &Netns, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let mut full = vec!["ip"];
    full.extend_from_slice(args);
    exec(netns, &full)
}

fn mac_of(netns: &Netns, interface: &str) -> anyhow::Result<[u8; 6]> {
    let output = ip(netns, &["-j", "link", "show", "dev", interface])?;
    let links: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let text = links[0]["address"]
        .as_str()
        .with_context(|| format!("no MAC for {interface}"))?;
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next().context("short MAC")?, 16)?;
    }
    Ok(mac)
}

/// Counters of one interface.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkCounters {
    /// Socket buffers and XDP frames veth could not put on the peer's ring (it was full): veth
    /// counts an XDP frame without room here as well as in `xdp_xmit_errors`.
    pub tx_dropped: u64,
    /// XDP frames (`ndo_xdp_xmit`) veth put on the peer's ring.
    pub xdp_xmit: u64,
    /// XDP frames veth had no room for on the peer's ring.
    pub xdp_xmit_errors: u64,
}

impl Lab {
    /// Builds the lab, IPv4 only (IPv6 off in every namespace: no neighbour discovery or
    /// router solicitations on the links); names carry this process's id.
    pub fn new() -> anyhow::Result<Self> {
        Self::build(false)
    }

    /// Builds the lab with IPv6 as well (addresses in the module docs, no duplicate address
    /// detection, so they are usable at once).
    pub fn dual_stack() -> anyhow::Result<Self> {
        Self::build(true)
    }

    fn build(ipv6: bool) -> anyhow::Result<Self> {
        let suffix = std::process::id() % 100_000;
        let lab = Self {
            server_if: format!("apats{suffix}"),
            upstream_if: format!("apatu{suffix}"),
            client_if: format!("apatc{suffix}"),
            server_mac: [0; 6],
            upstream_mac: [0; 6],
            server: Netns::new("apat-srv"),
            edge: Netns::new("apat-edge"),
            client: Netns::new("apat-cli"),
            ipv6,
        };
        let edge_client_if = format!("apate{suffix}");
        let (s, e, c) = (&lab.server, &lab.edge, &lab.client);
        let disable_ipv6 = if ipv6 { "0" } else { "1" };
        for ns in [s, e, c] {
            for scope in ["all", "default"] {
                exec(
                    ns,
                    &[
                        "sysctl",
                        "-qw",
                        &format!("net.ipv6.conf.{scope}.disable_ipv6={disable_ipv6}"),
                    ],
                )?;
                if ipv6 {
                    exec(
                        ns,
                        &[
                            "sysctl",
                            "-qw",
                            &format!("net.ipv6.conf.{scope}.accept_dad=0"),
                        ],
                    )?;
                }
            }
        }
        exec(e, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        if ipv6 {
            exec(e, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
        }
        let add_veth = |ours: &Netns, name: &str, theirs: &Netns, peer: &str| {
            ip(
                ours,
                &[
                    "link",
                    "add",
                    name,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    peer,
                    "netns",
                    theirs.name(),
                ],
            )
        };
        add_veth(s, &lab.server_if, e, &lab.upstream_if)?;
        add_veth(c, &lab.client_if, e, &edge_client_if)?;
        let client = format!("{CLIENT_ADDR}/24");
        for (ns, interface, address) in [
            (s, lab.server_if.as_str(), "192.0.2.1/24"),
            (e, lab.upstream_if.as_str(), "192.0.2.254/24"),
            (e, edge_client_if.as_str(), "198.51.100.254/24"),
            (c, lab.client_if.as_str(), client.as_str()),
        ] {
            ip(ns, &["addr", "add", address, "dev", interface])?;
            ip(ns, &["link", "set", interface, "up"])?;
        }
        ip(s, &["route", "add", "default", "via", "192.0.2.254"])?;
        ip(c, &["route", "add", "default", "via", "198.51.100.254"])?;
        ip(e, &["route", "add", "blackhole", ATTACK_RANGE])?;
        if ipv6 {
            let (server, client) = (
                format!("{SERVER_ADDR_V6}/64"),
                format!("{CLIENT_ADDR_V6}/64"),
            );
            for (ns, interface, address) in [
                (s, lab.server_if.as_str(), server.as_str()),
                (e, lab.upstream_if.as_str(), "2001:db8::fe/64"),
                (e, edge_client_if.as_str(), "2001:db8:0:1::fe/64"),
                (c, lab.client_if.as_str(), client.as_str()),
            ] {
                ip(
                    ns,
                    &["-6", "addr", "add", address, "dev", interface, "nodad"],
                )?;
            }
            ip(s, &["-6", "route", "add", "default", "via", "2001:db8::fe"])?;
            ip(
                c,
                &["-6", "route", "add", "default", "via", "2001:db8:0:1::fe"],
            )?;
            // The flood's sources: everything of 2001:db8::/32 but the two links above.
            ip(e, &["-6", "route", "add", "blackhole", "2001:db8::/32"])?;
        }
        // NAPI on the server's veth (GRO), taken by every frame (no TSO on the sending end),
        // in a kernel thread of its own.
        exec(s, &["ethtool", "-K", &lab.server_if, "gro", "on"])?;
        exec(
            e,
            &[
                "ethtool",
                "-K",
                &lab.upstream_if,
                "tso",
                "off",
                "gso",
                "off",
            ],
        )?;
        exec(
            s,
            &[
                "sh",
                "-c",
                &format!("echo 1 > /sys/class/net/{}/threaded", lab.server_if),
            ],
        )?;
        let server_mac = mac_of(s, &lab.server_if)?;
        let upstream_mac = mac_of(e, &lab.upstream_if)?;
        Ok(Self {
            server_mac,
            upstream_mac,
            ..lab
        })
    }

    /// The NAPI kernel threads of the server's interface (`napi/<if>-<id>`, cut to the 15
    /// characters a thread name keeps).
    pub fn napi_threads(&self) -> anyhow::Result<Vec<i32>> {
        crate::flood::lab::napi_threads(&self.server_if)
    }

    /// Pins the server's NAPI threads to `cpu` and makes them real-time (`SCHED_FIFO`): on a
    /// real host the receive path runs in softirq context, ahead of every task, and a NAPI
    /// thread competing with nginx as an equal would let its ring overflow while nginx runs.
    pub fn pin_napi(&self, cpu: usize) -> anyhow::Result<()> {
        pin_realtime(&self.server_if, cpu)
    }

    /// NAPI on the router's end of the server's link, in a real-time kernel thread pinned to
    /// `cpu`: veth delivers the frames the server's XDP program sends back (`XDP_TX`: SYN-ACKs
    /// with cookies) only to a peer with NAPI, which an XDP program turns on. The program is
    /// `apifw_blackhole`, which drops what goes to the spoofed range (the blackhole route's job,
    /// done before a socket buffer exists, as the Internet loses those answers at no cost to
    /// the server) and passes the rest; it is held by the returned object. Real-time, or the
    /// flood generator on the same CPU starves it and the server's answers to the client are
    /// lost in its ring.
    pub fn router_napi(&self, cpu: usize) -> anyhow::Result<crate::programs::TestPrograms> {
        let programs = crate::flood::peers::attach_bench_program(
            crate::programs::program_names::BLACKHOLE,
            &self.edge,
            &self.upstream_if,
        )?;
        exec(
            &self.edge,
            &[
                "sh",
                "-c",
                &format!("echo 1 > /sys/class/net/{}/threaded", self.upstream_if),
            ],
        )?;
        pin_realtime(&self.upstream_if, cpu)?;
        Ok(programs)
    }

    /// Run time of the server's NAPI threads so far, nanoseconds (`/proc/PID/schedstat`).
    pub fn napi_ns(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        for pid in self.napi_threads()? {
            let text = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
            total += text
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .context("schedstat")?;
        }
        Ok(total)
    }

    /// Counters of the router's end of the server's link. Its `tx_dropped` is the frames the
    /// server's receive ring had no room for (veth counts them on the sending side),
    /// `xdp_xmit_errors` the XDP frames among them.
    pub fn upstream_counters(&self) -> anyhow::Result<LinkCounters> {
        counters(&self.edge, &self.upstream_if)
    }

    /// How XDP is attached to the server's interface: `native`, `generic`, `offload`, or `None`.
    pub fn server_xdp_mode(&self) -> anyhow::Result<Option<&'static str>> {
        let output = ip(
            &self.server,
            &["-j", "link", "show", "dev", &self.server_if],
        )?;
        let links: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        // XDP_ATTACHED_* of include/uapi/linux/if_link.h.
        Ok(match links[0]["xdp"]["mode"].as_u64() {
            None => None,
            Some(1) => Some("native"),
            Some(2) => Some("generic"),
            Some(3) => Some("offload"),
            Some(_) => Some("multiple"),
        })
    }

    /// Whether an XDP program is attached to the server's interface.
    pub fn server_has_xdp(&self) -> anyhow::Result<bool> {
        let output = ip(
            &self.server,
            &["-j", "link", "show", "dev", &self.server_if],
        )?;
        let links: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        Ok(!links[0]["xdp"].is_null())
    }
}

/// `ip -s link` counters of `interface` in `netns`.
fn counters(netns: &Netns, interface: &str) -> anyhow::Result<LinkCounters> {
    let output = ip(netns, &["-j", "-s", "link", "show", "dev", interface])?;
    let links: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let stats = &links[0]["stats64"];
    let get = |dir: &str, name: &str| {
        stats[dir][name]
            .as_u64()
            .with_context(|| format!("no {dir}.{name} in {links}"))
    };
    let ethtool = exec(netns, &["ethtool", "-S", interface])?;
    let ethtool = String::from_utf8_lossy(&ethtool.stdout);
    Ok(LinkCounters {
        tx_dropped: get("tx", "dropped")?,
        xdp_xmit: crate::flood::lab::ethtool_sum(&ethtool, "_xdp_xmit"),
        xdp_xmit_errors: crate::flood::lab::ethtool_sum(&ethtool, "_xdp_xmit_errors"),
    })
}

/// Pins the NAPI threads of `interface` to `cpu` and makes them real-time (`SCHED_FIFO`).
fn pin_realtime(interface: &str, cpu: usize) -> anyhow::Result<()> {
    let threads = crate::flood::lab::napi_threads(interface)?;
    if threads.is_empty() {
        bail!("no NAPI thread for {interface} (threaded NAPI not enabled?)");
    }
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    for pid in threads {
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(pid), &set)
            .with_context(|| format!("pin NAPI thread {pid}"))?;
        let param = libc::sched_param { sched_priority: 50 };
        // SAFETY: sched_setscheduler reads `param` during the call; the result is checked.
        let rc = unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &param) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .context(format!("make NAPI thread {pid} SCHED_FIFO"));
        }
    }
    Ok(())
}
