//! A peer for the per-packet bench (issue #6): xdp-filter from xdp-tools on the same frames as
//! apifw ([`FRAMES`]: a blocked and a passed source, IPv4 and IPv6), all three programs (empty,
//! apifw, xdp-filter) measured with one method, `bpftool prog run ... repeat N`, interleaved run
//! by run.
//!
//! xdp-filter is loaded in skb mode on a veth inside a throwaway namespace and unloaded on drop
//! (deleting the namespace detaches it too). Its commands run under `nsenter --net=`, not
//! `ip netns exec`: the latter remounts `/sys`, which hides the bpffs at `/sys/fs/bpf` where
//! libxdp and xdp-filter keep their pinned maps.

use std::{
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use firewall_userspace::{Firewall, Policy};
use ipnet::IpNet;

use crate::{
    netns::Netns,
    packets::udp_frame,
    programs::{TestPrograms, program_names},
};

/// The source both firewalls block; the bench's blocked /32.
pub const BLOCKED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);
/// The IPv6 source both firewalls block; the bench's blocked /128.
pub const BLOCKED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff00, 0, 0, 0, 0, 0x66);
/// A source neither blocks: the bench's default-pass IPv4 source.
pub const PASSED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// An IPv6 source neither blocks, in the same /32 as [`BLOCKED_V6`].
pub const PASSED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xfe00, 0, 0, 0, 0, 1);

/// The frames both firewalls are measured on: label, source, and the verdict both give.
pub const FRAMES: [(&str, IpAddr, u64); 4] = [
    ("IPv4, blocked source", IpAddr::V4(BLOCKED), XDP_DROP),
    ("IPv4, passed source", IpAddr::V4(PASSED), XDP_PASS),
    ("IPv6, blocked source", IpAddr::V6(BLOCKED_V6), XDP_DROP),
    ("IPv6, passed source", IpAddr::V6(PASSED_V6), XDP_PASS),
];

/// `XDP_DROP` and `XDP_PASS`, as `bpftool prog run` reports them.
const XDP_DROP: u64 = 1;
const XDP_PASS: u64 = 2;

/// One program's per-run cost on one frame over the runs.
#[derive(Debug, Clone)]
pub struct Row {
    /// The label of the frame in [`FRAMES`].
    pub frame: String,
    pub program: String,
    /// ns per run, median over the runs.
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Median of the per-run ratios to the empty program measured next to it.
    pub ratio: f64,
    pub ratio_min: f64,
    pub ratio_max: f64,
}

/// Why the peer could not be measured without it being an error (a tool is not installed).
pub fn missing_tool() -> Option<&'static str> {
    ["xdp-filter", "bpftool", "nsenter"]
        .into_iter()
        .find(|tool| {
            matches!(
                Command::new(tool).arg("--version").output(),
                Err(err) if err.kind() == ErrorKind::NotFound
            )
        })
}

/// xdp-filter loaded (skb mode) on a veth in its own namespace, blocking [`BLOCKED`] and
/// [`BLOCKED_V6`] as sources.
pub struct XdpFilter {
    interface: String,
    program_id: u32,
    // Dropped after `drop` has unloaded the program.
    netns: Netns,
}

impl XdpFilter {
    pub fn load() -> anyhow::Result<Self> {
        let netns = Netns::new("xdpfilter");
        let pid = std::process::id();
        let (interface, peer) = (format!("xf{pid}a"), format!("xf{pid}b"));
        netns.ip(&[
            "link", "add", &interface, "type", "veth", "peer", "name", &peer,
        ]);
        netns.ip(&["link", "set", &interface, "up"]);
        netns.ip(&["link", "set", &peer, "up"]);
        let mut filter = Self {
            interface,
            program_id: 0,
            netns,
        };
        filter.run(&["xdp-filter", "load", &filter.interface, "--mode", "skb"])?;
        for blocked in [IpAddr::V4(BLOCKED), IpAddr::V6(BLOCKED_V6)] {
            filter.run(&["xdp-filter", "ip", &blocked.to_string(), "--mode", "src"])?;
        }
        filter.program_id = filter.attached_id()?;
        Ok(filter)
    }

    /// The id of the XDP program attached to the veth.
    pub fn program_id(&self) -> u32 {
        self.program_id
    }

    /// Runs `args` in the namespace (with the host's bpffs).
    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let net = format!("--net={}", self.netns.path().display());
        let output = Command::new("nsenter")
            .arg(&net)
            .args(args)
            .output()
            .with_context(|| format!("run {args:?}"))?;
        if !output.status.success() {
            bail!(
                "{args:?} in {}: {}\n{}{}",
                self.netns.name(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `bpftool -j net show` in the namespace: the XDP program on our veth.
    fn attached_id(&self) -> anyhow::Result<u32> {
        let json = self.run(&["bpftool", "-j", "net", "show"])?;
        let value: serde_json::Value = serde_json::from_str(&json).context("bpftool net show")?;
        value
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|entry| entry["xdp"].as_array())
            .flatten()
            .find(|xdp| xdp["devname"] == self.interface.as_str())
            .and_then(|xdp| xdp["id"].as_u64())
            .and_then(|id| u32::try_from(id).ok())
            .with_context(|| format!("no XDP program on {} in {json}", self.interface))
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        let _ = self.run(&["xdp-filter", "unload", &self.interface, "--all"]);
        // libxdp leaves its (then empty) state directory on bpffs; removing an empty directory
        // never takes anything from another libxdp user, which would recreate it.
        let _ = std::fs::remove_dir("/sys/fs/bpf/xdp");
    }
}

/// `bpftool prog run id ID data_in FRAME repeat N`: (return value, mean ns per run).
pub fn prog_run(id: u32, frame: &Path, repeat: u32) -> anyhow::Result<(u64, f64)> {
    let output = Command::new("bpftool")
        .args(["-j", "prog", "run", "id", &id.to_string(), "data_in"])
        .arg(frame)
        .args(["repeat", &repeat.to_string()])
        .output()
        .context("run bpftool prog run")?;
    if !output.status.success() {
        bail!(
            "bpftool prog run id {id}: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_prog_run(&String::from_utf8_lossy(&output.stdout))
}

/// Parses `bpftool -j prog run`'s `{"retval":1,"duration":165}`.
fn parse_prog_run(json: &str) -> anyhow::Result<(u64, f64)> {
    let value: serde_json::Value =
        serde_json::from_str(json.trim()).with_context(|| format!("bpftool output {json:?}"))?;
    let retval = value["retval"].as_u64().context("no retval")?;
    let duration = value["duration"].as_f64().context("no duration")?;
    Ok((retval, duration))
}

fn summarise(frame: &str, program: &str, mut ns: Vec<f64>, mut ratios: Vec<f64>) -> Row {
    let min = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    Row {
        frame: frame.to_owned(),
        program: program.to_owned(),
        min: min(&ns),
        max: max(&ns),
        median: crate::report::median(&mut ns),
        ratio_min: min(&ratios),
        ratio_max: max(&ratios),
        ratio: crate::report::median(&mut ratios),
    }
}

/// Removes the frame file on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Measures the empty program, apifw (blocking [`BLOCKED`]/32 and [`BLOCKED_V6`]/128) and
/// xdp-filter (blocking both as sources) on each of [`FRAMES`] (the bench's 64-byte UDP frame
/// from that source), `runs` times each, interleaved, with `bpftool prog run ... repeat
/// <repeat>`; each program's verdict is checked. Rows: for each frame, empty, apifw, xdp-filter.
pub fn compare(runs: usize, repeat: u32) -> anyhow::Result<Vec<Row>> {
    let pid = std::process::id();
    let mut files = Vec::new();
    for (i, (_, source, _)) in FRAMES.iter().enumerate() {
        let file = TempFile(std::env::temp_dir().join(format!("apifw-xdpfilter-{pid}-{i}.bin")));
        std::fs::write(&file.0, udp_frame(*source)).context("write frame")?;
        files.push(file);
    }

    let policy = Policy {
        block: vec![
            IpNet::from(IpAddr::V4(BLOCKED)),
            IpNet::from(IpAddr::V6(BLOCKED_V6)),
        ],
        ..Policy::default()
    };
    let mut firewall = Firewall::load(&policy).context("load apifw (root needed)")?;
    let mut baselines = TestPrograms::load()?;
    let empty_id = baselines.program_mut(program_names::EMPTY)?.info()?.id();
    let apifw_id = firewall
        .program_mut(firewall_common::program_names::FIREWALL)?
        .info()?
        .id();
    let filter = XdpFilter::load()?;

    let programs = [
        ("empty XDP program", empty_id),
        ("apifw", apifw_id),
        ("xdp-filter", filter.program_id()),
    ];
    // [frame][program]: ns and ratios of every run.
    let mut ns = vec![vec![Vec::new(); programs.len()]; FRAMES.len()];
    let mut ratios = ns.clone();
    for _ in 0..runs {
        for (f, ((label, _, verdict), file)) in FRAMES.iter().zip(&files).enumerate() {
            let mut floor = 0.0;
            for (p, (name, id)) in programs.iter().enumerate() {
                let expected = if p == 0 { XDP_PASS } else { *verdict };
                let (retval, duration) = prog_run(*id, &file.0, repeat)?;
                if retval != expected {
                    bail!("{name} (id {id}) returned {retval} on {label}, expected {expected}");
                }
                if p == 0 {
                    floor = duration;
                }
                ns[f][p].push(duration);
                ratios[f][p].push(duration / floor.max(0.5));
            }
        }
    }
    drop(filter);
    let mut rows = Vec::new();
    for ((label, _, _), (ns, ratios)) in FRAMES.iter().zip(ns.into_iter().zip(ratios)) {
        for ((name, _), (ns, ratios)) in programs.iter().zip(ns.into_iter().zip(ratios)) {
            rows.push(summarise(label, name, ns, ratios));
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bpftool_prog_run() {
        let (retval, ns) = parse_prog_run("{\"retval\":1,\"duration\":165}\n").unwrap();
        assert_eq!((retval, ns), (1, 165.0));
        assert!(parse_prog_run("Return value: 1, duration (average): 134ns").is_err());
    }

    /// `cargo test -p apifw-tests --lib xdpfilter -- --ignored --nocapture` (root).
    #[test]
    #[ignore = "needs root, xdp-tools and bpftool"]
    fn measures_xdp_filter_next_to_apifw() {
        if let Some(tool) = missing_tool() {
            eprintln!("{tool} not installed");
            return;
        }
        let rows = compare(5, 1_000_000).unwrap();
        for row in &rows {
            eprintln!(
                "{}, {}: {:.1} ns ({:.1}..{:.1}), {:.2}x empty ({:.2}..{:.2})",
                row.frame,
                row.program,
                row.median,
                row.min,
                row.max,
                row.ratio,
                row.ratio_min,
                row.ratio_max
            );
        }
        assert_eq!(rows.len(), 3 * FRAMES.len());
    }
}
