//! A peer for the per-packet bench (issue #6): xdp-filter from xdp-tools on the same frame as
//! apifw's blocked-source case, all three programs (empty, apifw, xdp-filter) measured with one
//! method, `bpftool prog run ... repeat N`, interleaved run by run.
//!
//! xdp-filter is loaded in skb mode on a veth inside a throwaway namespace and unloaded on drop
//! (deleting the namespace detaches it too). Its commands run under `nsenter --net=`, not
//! `ip netns exec`: the latter remounts `/sys`, which hides the bpffs at `/sys/fs/bpf` where
//! libxdp and xdp-filter keep their pinned maps.

use std::{
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use firewall_common::program_names;
use firewall_userspace::{Firewall, Policy};
use ipnet::{IpNet, Ipv4Net};

use crate::{netns::Netns, packets::udp_frame};

/// The source both firewalls block; the bench's blocked /32.
pub const BLOCKED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);

/// `XDP_DROP` and `XDP_PASS`, as `bpftool prog run` reports them.
const XDP_DROP: u64 = 1;
const XDP_PASS: u64 = 2;

/// One program's per-run cost over the runs.
#[derive(Debug, Clone)]
pub struct Row {
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

/// xdp-filter loaded (skb mode) on a veth in its own namespace, blocking [`BLOCKED`].
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
        filter.run(&["xdp-filter", "ip", &BLOCKED.to_string(), "--mode", "src"])?;
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

/// The median of `values` (sorted in place); the benchmarks' one definition of it.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn summarise(program: &str, mut ns: Vec<f64>, mut ratios: Vec<f64>) -> Row {
    let min = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    Row {
        program: program.to_owned(),
        min: min(&ns),
        max: max(&ns),
        median: median(&mut ns),
        ratio_min: min(&ratios),
        ratio_max: max(&ratios),
        ratio: median(&mut ratios),
    }
}

/// Removes the frame file on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Measures the empty program, apifw (blocking [`BLOCKED`]/32) and xdp-filter (blocking
/// [`BLOCKED`] as a source) on the bench's 64-byte frame from [`BLOCKED`], `runs` times each,
/// interleaved, with `bpftool prog run ... repeat <repeat>`. Rows: empty, apifw, xdp-filter.
pub fn compare(runs: usize, repeat: u32) -> anyhow::Result<Vec<Row>> {
    let frame =
        TempFile(std::env::temp_dir().join(format!("apifw-xdpfilter-{}.bin", std::process::id())));
    std::fs::write(&frame.0, udp_frame(IpAddr::V4(BLOCKED))).context("write frame")?;

    let policy = Policy {
        block: vec![IpNet::V4(Ipv4Net::new(BLOCKED, 32)?)],
        ..Policy::default()
    };
    let mut firewall = Firewall::load(&policy).context("load apifw (root needed)")?;
    let empty_id = firewall.load_program(program_names::EMPTY)?.info()?.id();
    let apifw_id = firewall.program_mut(program_names::FIREWALL)?.info()?.id();
    let filter = XdpFilter::load()?;

    let programs = [
        ("empty XDP program", empty_id, XDP_PASS),
        ("apifw", apifw_id, XDP_DROP),
        ("xdp-filter", filter.program_id(), XDP_DROP),
    ];
    let mut ns = vec![Vec::new(); programs.len()];
    let mut ratios = vec![Vec::new(); programs.len()];
    for _ in 0..runs {
        let mut floor = 0.0;
        for (i, (name, id, expected)) in programs.iter().enumerate() {
            let (retval, duration) = prog_run(*id, &frame.0, repeat)?;
            if retval != *expected {
                bail!("{name} (id {id}) returned {retval}, expected {expected}");
            }
            if i == 0 {
                floor = duration;
            }
            ns[i].push(duration);
            ratios[i].push(duration / floor.max(0.5));
        }
    }
    drop(filter);
    Ok(programs
        .iter()
        .zip(ns.into_iter().zip(ratios))
        .map(|((name, _, _), (ns, ratios))| summarise(name, ns, ratios))
        .collect())
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
                "{}: {:.1} ns ({:.1}..{:.1}), {:.2}x empty ({:.2}..{:.2})",
                row.program, row.median, row.min, row.max, row.ratio, row.ratio_min, row.ratio_max
            );
        }
        assert_eq!(rows.len(), 3);
    }
}
