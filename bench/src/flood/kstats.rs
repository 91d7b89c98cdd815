//! The kernel's own account of what an attached XDP program costs per packet in the real
//! receive path: its BPF run statistics (`run_cnt`, `run_time_ns`), read before and after a
//! stretch of traffic while the benchmark holds a `BPF_ENABLE_STATS` descriptor (the kernel
//! counts while any is open, so the host's `kernel.bpf_stats_enabled` is never written).
//!
//! The counts are the ones `apifw status` and the metrics show
//! ([`firewall_userspace::dataplane::stats::ProgramRuns`]); here they are read by program id,
//! so that the peers (xdp-filter through libxdp's dispatcher, the test programs) are read the
//! same way as apifw.

use std::os::fd::OwnedFd;

use anyhow::Context as _;
use firewall_userspace::dataplane::stats::{ProgramRuns, bpf_stats_enabled};

use crate::netns::Netns;

/// The kernel's BPF run statistics, on while this lives.
pub struct Counting(
    #[expect(
        dead_code,
        reason = "held, not read: closing it turns the statistics off"
    )]
    OwnedFd,
);

impl Counting {
    /// Turns the statistics on (`BPF_ENABLE_STATS` with `BPF_STATS_RUN_TIME`).
    pub fn start() -> anyhow::Result<Self> {
        let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("BPF_ENABLE_STATS (kernel 5.8 or later, CAP_SYS_ADMIN)")?;
        Ok(Self(fd))
    }
}

/// An XDP program attached to an interface: its id and its name in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub id: u32,
    pub name: String,
}

/// The XDP programs attached to `interface` in `netns` (none, one, or one per mode), from
/// `ip -j link show`.
pub fn attached(netns: &Netns, interface: &str) -> anyhow::Result<Vec<Attached>> {
    let json = super::lab::command(
        "ip",
        &["-n", netns.name(), "-j", "link", "show", "dev", interface],
    )?;
    parse_attached(&json).with_context(|| format!("ip -j link show {interface}: {json}"))
}

/// The programs of `ip -j link show`'s `xdp` object: `{"mode":1,"prog":{"id":..}}` for one,
/// `{"mode":4,"attached":[{"mode":..,"prog":{..}},..]}` for several.
fn parse_attached(json: &str) -> anyhow::Result<Vec<Attached>> {
    let links: serde_json::Value = serde_json::from_str(json)?;
    let xdp = &links[0]["xdp"];
    let one = |entry: &serde_json::Value| -> Option<Attached> {
        let prog = &entry["prog"];
        Some(Attached {
            id: u32::try_from(prog["id"].as_u64()?).ok()?,
            name: prog["name"].as_str().unwrap_or("").to_owned(),
        })
    };
    Ok(match xdp["attached"].as_array() {
        Some(list) => list.iter().filter_map(one).collect(),
        None => one(xdp).into_iter().collect(),
    })
}

/// The run statistics of the programs `ids`, summed: what the kernel has counted so far.
pub fn runs(ids: &[u32]) -> anyhow::Result<ProgramRuns> {
    let mut total = ProgramRuns {
        stats_enabled: bpf_stats_enabled(),
        ..ProgramRuns::default()
    };
    let mut found = 0;
    for info in aya::programs::loaded_programs() {
        let info = info.context("list the loaded BPF programs")?;
        if ids.contains(&info.id()) {
            found += 1;
            total.runs = total.runs.wrapping_add(info.run_count());
            total.run_time_ns = total
                .run_time_ns
                .wrapping_add(u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX));
        }
    }
    anyhow::ensure!(found == ids.len(), "BPF programs {ids:?} not all loaded");
    Ok(total)
}

/// What was counted between `before` and `after`.
pub fn between(before: &ProgramRuns, after: &ProgramRuns) -> ProgramRuns {
    ProgramRuns {
        runs: after.runs.saturating_sub(before.runs),
        run_time_ns: after.run_time_ns.saturating_sub(before.run_time_ns),
        stats_enabled: after.stats_enabled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attached_programs_are_read_from_ip_link() {
        let one = r#"[{"ifindex":3,"ifname":"b","xdp":{"mode":1,"prog":{"id":42,"name":"xdp_dispatcher","tag":"ab","jited":1}}}]"#;
        assert_eq!(
            parse_attached(one).unwrap(),
            [Attached {
                id: 42,
                name: "xdp_dispatcher".into()
            }]
        );
        let several = r#"[{"xdp":{"mode":4,"attached":[{"mode":1,"prog":{"id":7,"name":"a"}},{"mode":2,"prog":{"id":8,"name":"b"}}]}}]"#;
        let ids: Vec<u32> = parse_attached(several)
            .unwrap()
            .iter()
            .map(|a| a.id)
            .collect();
        assert_eq!(ids, [7, 8]);
        assert!(
            parse_attached(r#"[{"ifindex":3,"ifname":"b"}]"#)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn the_difference_of_two_readings() {
        let before = ProgramRuns {
            runs: 10,
            run_time_ns: 1_000,
            stats_enabled: true,
        };
        let after = ProgramRuns {
            runs: 110,
            run_time_ns: 21_000,
            stats_enabled: true,
        };
        assert_eq!(between(&before, &after).ns_per_packet(), Some(200.0));
    }
}
