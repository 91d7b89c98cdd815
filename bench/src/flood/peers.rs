//! The cases of the flood benchmark: what sits on the receiving veth, how it is set up to drop
//! the 198.18.0.0/15 flood, and how many packets it says it dropped.
//!
//! Each case is installed on a fresh [`Lab`] and removed with it. apifw runs as the real daemon
//! (`apifw run` in the target namespace); the peers are configured with their own command-line
//! tools. A peer whose tool is missing or refuses the configuration fails its own row only.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use aya::programs::XdpMode;
use firewall_common::Action;
use firewall_userspace::dataplane::stats::Snapshot;

use super::lab::{FLOOD_NET, FLOOD_PORT, Lab, command, in_netns, in_netns_bpffs};
use crate::{
    daemon::Dirs,
    loadbench::{BenchDaemon, apifw_binary},
    programs::{TestPrograms, program_names},
};

/// Per-source rate of the rate-limiting cases, packets per second, and their burst.
pub const LIMIT_PER_SECOND: u32 = 100;
pub const LIMIT_BURST: u32 = 100;
/// Source bits the rate-limiting cases' flood varies: 256 sources (198.18.0.0/24), each then
/// sending thousands of packets a second, far over [`LIMIT_PER_SECOND`]. (Spread over the
/// whole /15, a flood of a million packets a second gives each source about eight a second:
/// a per-source limit does not see a flood at all.)
pub const RATE_LIMIT_SOURCE_BITS: u32 = 8;
/// Source bits of the other cases: all of 198.18.0.0/15.
pub const ALL_SOURCE_BITS: u32 = 17;

/// Name of the nftables table, the ipset set and the hashlimit table.
const NAME: &str = "apfl_flood";

/// What sits on the receiving veth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    /// An XDP program that drops everything (native): the most the generator can send.
    Sink,
    /// Nothing: the kernel stack up to the closed UDP port.
    NoFilter,
    ApifwNative,
    ApifwSkb,
    ApifwRateLimit,
    XdpFilterNative,
    XdpFilterSkb,
    NftSet,
    NftMeter,
    IptablesIpset,
    IptablesHashlimit,
}

impl Case {
    pub const ALL: [Self; 11] = [
        Self::Sink,
        Self::NoFilter,
        Self::ApifwNative,
        Self::ApifwSkb,
        Self::ApifwRateLimit,
        Self::XdpFilterNative,
        Self::XdpFilterSkb,
        Self::NftSet,
        Self::NftMeter,
        Self::IptablesIpset,
        Self::IptablesHashlimit,
    ];

    /// The row's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sink => "generator alone (XDP_DROP sink, native)",
            Self::NoFilter => "no filter (stack to a closed UDP port)",
            Self::ApifwNative => "apifw blocklist, native XDP",
            Self::ApifwSkb => "apifw blocklist, skb XDP",
            Self::ApifwRateLimit => "apifw per-source rate limit, native XDP",
            Self::XdpFilterNative => "xdp-filter, native",
            Self::XdpFilterSkb => "xdp-filter, skb",
            Self::NftSet => "nftables ingress, set of the prefix, drop",
            Self::NftMeter => "nftables ingress, per-source meter, drop over",
            Self::IptablesIpset => "iptables raw + ipset hash:net, DROP",
            Self::IptablesHashlimit => "iptables raw + hashlimit per source, DROP over",
        }
    }

    /// How the case is configured, for the report.
    pub fn setup(self) -> String {
        let rate = format!("{LIMIT_PER_SECOND}/s per source, burst {LIMIT_BURST}");
        match self {
            Self::Sink => format!(
                "`{}` (returns `XDP_DROP`) attached native",
                program_names::FLOOD_SINK
            ),
            Self::NoFilter => {
                "nothing attached; frames go up the stack to UDP port 9, closed".into()
            }
            Self::ApifwNative | Self::ApifwSkb => format!(
                "`apifw run` daemon, `xdp_mode = \"{}\"`, `[block] cidrs = [\"{FLOOD_NET}\"]`",
                if self == Self::ApifwSkb {
                    "skb"
                } else {
                    "native"
                }
            ),
            Self::ApifwRateLimit => format!(
                "`apifw run` daemon, native, one rule: UDP port {FLOOD_PORT}, `per_source` {rate}; flood from 198.18.0.0/24"
            ),
            Self::XdpFilterNative | Self::XdpFilterSkb => format!(
                "`xdp-filter load -m {} -f ipv4 -p deny` + `xdp-filter ip {} -m src` (allowed); see below",
                if self == Self::XdpFilterSkb {
                    "skb"
                } else {
                    "native"
                },
                super::lab::GENERATOR_ADDR
            ),
            Self::NftSet => format!(
                "`netdev` table, `ingress` hook: `ip saddr @flood counter drop`, set `flags interval` = {{ {FLOOD_NET} }}"
            ),
            Self::NftMeter => format!(
                "`netdev` `ingress`: `meter {NAME} size 262144 {{ ip saddr limit rate over {LIMIT_PER_SECOND}/second burst {LIMIT_BURST} packets }} counter drop`; flood from 198.18.0.0/24"
            ),
            Self::IptablesIpset => format!(
                "`ipset create {NAME} hash:net` + `add {FLOOD_NET}`; `iptables -t raw -A PREROUTING -m set --match-set {NAME} src -j DROP`"
            ),
            Self::IptablesHashlimit => format!(
                "`iptables -t raw -A PREROUTING -m hashlimit --hashlimit-mode srcip --hashlimit-above {LIMIT_PER_SECOND}/sec --hashlimit-burst {LIMIT_BURST} --hashlimit-htable-size 262144 --hashlimit-htable-max 262144 -j DROP`; flood from 198.18.0.0/24"
            ),
        }
    }

    /// How many low bits of the flood's source vary in this case.
    pub fn source_bits(self) -> u32 {
        match self {
            Self::ApifwRateLimit | Self::NftMeter | Self::IptablesHashlimit => {
                RATE_LIMIT_SOURCE_BITS
            }
            _ => ALL_SOURCE_BITS,
        }
    }

    /// Whether the case measures the generator rather than a filter.
    pub fn is_sink(self) -> bool {
        self == Self::Sink
    }

    /// Sets the case up on `lab`.
    pub fn install(self, lab: &Lab) -> anyhow::Result<Installed> {
        let b = lab.target_if.as_str();
        Ok(match self {
            Self::Sink => Installed::Sink(Box::new(attach_bench_program(
                program_names::FLOOD_SINK,
                &lab.target,
                b,
            )?)),
            Self::NoFilter => Installed::Stack,
            Self::ApifwNative => apifw(
                lab,
                "native",
                &format!("[block]\ncidrs = [\"{FLOOD_NET}\"]\n"),
            )?,
            Self::ApifwSkb => apifw(lab, "skb", &format!("[block]\ncidrs = [\"{FLOOD_NET}\"]\n"))?,
            Self::ApifwRateLimit => apifw(
                lab,
                "native",
                &format!(
                    "[[rule]]\nname = \"flood\"\nprotocol = \"udp\"\nports = [{FLOOD_PORT}]\n\
                     per_source = {{ packets_per_second = {LIMIT_PER_SECOND}, burst_packets = {LIMIT_BURST} }}\n"
                ),
            )?,
            Self::XdpFilterNative => xdp_filter(lab, "native")?,
            Self::XdpFilterSkb => xdp_filter(lab, "skb")?,
            Self::NftSet => nft(
                lab,
                &format!(
                    "table netdev {NAME} {{\n\tset flood {{\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = {{ {FLOOD_NET} }}\n\t}}\n\
                     \tchain ingress {{\n\t\ttype filter hook ingress device \"{b}\" priority 0; policy accept;\n\
                     \t\tip saddr @flood counter drop\n\t}}\n}}\n"
                ),
            )?,
            Self::NftMeter => nft(
                lab,
                &format!(
                    "table netdev {NAME} {{\n\tchain ingress {{\n\t\ttype filter hook ingress device \"{b}\" priority 0; policy accept;\n\
                     \t\tmeter {NAME} size 262144 {{ ip saddr limit rate over {LIMIT_PER_SECOND}/second burst {LIMIT_BURST} packets }} counter drop\n\t}}\n}}\n"
                ),
            )?,
            Self::IptablesIpset => {
                let t = &lab.target;
                in_netns(t, &["ipset", "create", NAME, "hash:net"])?;
                in_netns(t, &["ipset", "add", NAME, FLOOD_NET])?;
                in_netns(
                    t,
                    &[
                        "iptables",
                        "-t",
                        "raw",
                        "-A",
                        "PREROUTING",
                        "-i",
                        b,
                        "-m",
                        "set",
                        "--match-set",
                        NAME,
                        "src",
                        "-j",
                        "DROP",
                    ],
                )?;
                Installed::Iptables
            }
            Self::IptablesHashlimit => {
                let (rate, burst) = (format!("{LIMIT_PER_SECOND}/sec"), LIMIT_BURST.to_string());
                in_netns(
                    &lab.target,
                    &[
                        "iptables",
                        "-t",
                        "raw",
                        "-A",
                        "PREROUTING",
                        "-i",
                        b,
                        "-m",
                        "hashlimit",
                        "--hashlimit-name",
                        NAME,
                        "--hashlimit-mode",
                        "srcip",
                        "--hashlimit-above",
                        &rate,
                        "--hashlimit-burst",
                        &burst,
                        "--hashlimit-htable-size",
                        "262144",
                        "--hashlimit-htable-max",
                        "262144",
                        "-j",
                        "DROP",
                    ],
                )?;
                Installed::Iptables
            }
        })
    }
}

/// Loads the test program `name` and attaches it in native mode to `interface` in `netns`; it
/// stays attached as long as the returned object lives.
pub(crate) fn attach_bench_program(
    name: &'static str,
    netns: &crate::netns::Netns,
    interface: &str,
) -> anyhow::Result<TestPrograms> {
    let mut programs = TestPrograms::load()?;
    let program = programs.program_mut(name)?;
    // Attached by name from a thread inside the namespace: names and ifindexes resolve in the
    // caller's namespace.
    let path = netns.path();
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<()> {
                let file = std::fs::File::open(&path)
                    .with_context(|| format!("open {}", path.display()))?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("enter {}", path.display()))?;
                program
                    .attach(interface, XdpMode::Driver)
                    .with_context(|| format!("attach {name} to {interface}"))?;
                Ok(())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the attaching thread panicked"))?
    })?;
    Ok(programs)
}

/// An installed case, removed on drop (before its lab).
pub enum Installed {
    /// The sink program, attached while its object lives.
    Sink(
        #[expect(dead_code, reason = "held, not read: dropping it detaches the sink")]
        Box<TestPrograms>,
    ),
    Stack,
    /// Field order: the daemon stops before its directories are removed.
    Apifw {
        daemon: BenchDaemon,
        dirs: Dirs,
    },
    XdpFilter(
        #[expect(dead_code, reason = "held, not read: dropping it unloads xdp-filter")]
        XdpFilterGuard,
    ),
    Nft,
    Iptables,
}

impl Installed {
    /// What the case counts as dropped so far (the stack's UDP `NoPorts` without a filter).
    pub fn dropped(&self, lab: &Lab) -> anyhow::Result<u64> {
        let t = &lab.target;
        match self {
            Self::Sink(_) => Ok(lab.counters()?.xdp_drops),
            Self::Stack => udp_no_ports(&in_netns(t, &["cat", "/proc/net/snmp"])?),
            Self::Apifw { dirs, daemon } => {
                let json = command(
                    apifw_binary()?
                        .to_str()
                        .context("apifw path is not UTF-8")?,
                    &[
                        "stats",
                        "--json",
                        "--pin-dir",
                        dirs.pin_dir.to_str().context("pin dir is not UTF-8")?,
                        "--run-dir",
                        dirs.run_dir.to_str().context("run dir is not UTF-8")?,
                    ],
                )
                .with_context(|| format!("daemon log:\n{}", daemon.log_text()))?;
                let snapshot: Snapshot =
                    serde_json::from_str(&json).context("apifw stats --json")?;
                Ok(snapshot
                    .counters
                    .iter()
                    .filter(|row| row.action == Action::Drop)
                    .map(|row| row.packets)
                    .sum())
            }
            Self::XdpFilter(_) => xdp_filter_drops(&in_netns_bpffs(t, &["xdp-filter", "status"])?),
            Self::Nft => Ok(nft_counters(&in_netns(
                t,
                &["nft", "list", "table", "netdev", NAME],
            )?)),
            Self::Iptables => Ok(iptables_drops(&in_netns(
                t,
                &[
                    "iptables",
                    "-t",
                    "raw",
                    "-L",
                    "PREROUTING",
                    "-v",
                    "-x",
                    "-n",
                ],
            )?)),
        }
    }

    /// What [`Installed::dropped`] counts, for the report.
    pub fn counted_by(&self) -> &'static str {
        match self {
            Self::Sink(_) => "veth `xdp_drops`",
            Self::Stack => "UDP `NoPorts`",
            Self::Apifw { .. } => "`apifw stats` drops",
            Self::XdpFilter(_) => "`xdp-filter status` XDP_DROP",
            Self::Nft => "rule counter",
            Self::Iptables => "rule counter",
        }
    }
}

fn apifw(lab: &Lab, mode: &str, rules: &str) -> anyhow::Result<Installed> {
    let dirs = Dirs::new("apfl");
    let b = &lab.target_if;
    dirs.write_policy(&format!(
        "interfaces = [\"{b}\"]\nxdp_mode = \"{mode}\"\n\n{rules}\n[daemon]\npin_dir = \"{}\"\n\
         run_dir = \"{}\"\naudit_log = \"{}\"\nstate_file = \"{}\"\n",
        dirs.pin_dir.display(),
        dirs.run_dir.display(),
        dirs.run_dir.join("audit.log").display(),
        dirs.run_dir.join("state.json").display(),
    ));
    let daemon = BenchDaemon::start(&lab.target, &dirs, b, "warn")?;
    Ok(Installed::Apifw { daemon, dirs })
}

/// xdp-filter loaded on the target veth; unloaded on drop.
pub struct XdpFilterGuard {
    netns: PathBuf,
    interface: String,
}

impl Drop for XdpFilterGuard {
    fn drop(&mut self) {
        let net = format!("--net={}", self.netns.display());
        let _ = command(
            "nsenter",
            &[&net, "xdp-filter", "unload", &self.interface, "--all"],
        );
        // libxdp leaves its (then empty) state directory on bpffs; removing an empty directory
        // never takes anything from another libxdp user, which would recreate it.
        let _ = std::fs::remove_dir("/sys/fs/bpf/xdp");
    }
}

/// xdp-filter matches single addresses only (no prefixes), in a hash of at most 10 000 entries:
/// it cannot list the 131 072 sources of a /15. What drops such a flood with it is its deny
/// policy: every IPv4 packet whose source and destination are not on its list is dropped. One
/// legitimate client (the generator end's own address) is listed as an allowed source, so the
/// map is not empty; both lookups (source and destination) miss for each flood packet.
fn xdp_filter(lab: &Lab, mode: &str) -> anyhow::Result<Installed> {
    let t = &lab.target;
    let b = lab.target_if.as_str();
    in_netns_bpffs(
        t,
        &[
            "xdp-filter",
            "load",
            b,
            "-m",
            mode,
            "-f",
            "ipv4",
            "-p",
            "deny",
        ],
    )?;
    let guard = XdpFilterGuard {
        netns: t.path(),
        interface: b.to_owned(),
    };
    in_netns_bpffs(
        t,
        &["xdp-filter", "ip", super::lab::GENERATOR_ADDR, "-m", "src"],
    )?;
    Ok(Installed::XdpFilter(guard))
}

fn nft(lab: &Lab, ruleset: &str) -> anyhow::Result<Installed> {
    let path = std::env::temp_dir().join(format!("apifw-flood-{}.nft", std::process::id()));
    std::fs::write(&path, ruleset).with_context(|| format!("write {}", path.display()))?;
    let result = in_netns(
        &lab.target,
        &[
            "nft",
            "-f",
            path.to_str().context("temp path is not UTF-8")?,
        ],
    );
    let _ = std::fs::remove_file(&path);
    result?;
    Ok(Installed::Nft)
}

/// `NoPorts` of the `Udp:` lines of /proc/net/snmp.
fn udp_no_ports(snmp: &str) -> anyhow::Result<u64> {
    let mut lines = snmp.lines().filter(|line| line.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no Udp lines in /proc/net/snmp");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "NoPorts")
        .and_then(|(_, value)| value.parse().ok())
        .context("no Udp NoPorts in /proc/net/snmp")
}

/// The packets of the `XDP_DROP` line of `xdp-filter status`.
fn xdp_filter_drops(status: &str) -> anyhow::Result<u64> {
    status
        .lines()
        .map(str::split_whitespace)
        .find_map(|mut words| match (words.next(), words.next()) {
            (Some("XDP_DROP"), Some(packets)) => packets.parse().ok(),
            _ => None,
        })
        .with_context(|| format!("no XDP_DROP line in xdp-filter status:\n{status}"))
}

/// Sum of the `counter packets N` of an nftables listing.
fn nft_counters(listing: &str) -> u64 {
    listing
        .split("counter packets ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Sum of the packet counts of the DROP rules in `iptables -L -v -x -n`.
fn iptables_drops(listing: &str) -> u64 {
    listing
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let packets = words.next()?.parse::<u64>().ok()?;
            let _bytes = words.next()?;
            (words.next()? == "DROP").then_some(packets)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_parsed() {
        let snmp = "Udp: InDatagrams NoPorts InErrors\nUdp: 3 42 0\nUdpLite: InDatagrams NoPorts\nUdpLite: 0 0\n";
        assert_eq!(udp_no_ports(snmp).unwrap(), 42);
        let status = "Aggregate per-action statistics:\n  XDP_ABORTED   0 pkts   0 KiB\n  XDP_DROP   1234 pkts   77 KiB\n";
        assert_eq!(xdp_filter_drops(status).unwrap(), 1234);
        let nft = "table netdev t {\n\tchain c {\n\t\tip saddr @s counter packets 10 bytes 600 drop\n\t\tcounter packets 5 bytes 1 drop\n\t}\n}\n";
        assert_eq!(nft_counters(nft), 15);
        let ipt = "Chain PREROUTING (policy ACCEPT 7 packets, 420 bytes)\n    pkts      bytes target     prot opt in     out     source               destination\n     900    54000 DROP       all  --  b      *       0.0.0.0/0            0.0.0.0/0  match-set x src\n";
        assert_eq!(iptables_drops(ipt), 900);
    }
}
