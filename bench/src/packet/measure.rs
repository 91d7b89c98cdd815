//! One measurement: the firewall and its baselines on the same frame, interleaved, run after
//! run; and how a row of the report shows it.

use std::fmt::Write as _;

use anyhow::bail;
use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use firewall_userspace::Firewall;

use crate::{
    programs::{TestPrograms, program_names},
    report::{self, median},
};

/// A firewall and the baselines loaded beside it, sharing its prefix map and stats.
pub(super) struct Beside {
    pub(super) firewall: Firewall,
    pub(super) programs: TestPrograms,
}

impl Beside {
    pub(super) fn new(firewall: Firewall) -> anyhow::Result<Self> {
        let programs = TestPrograms::beside(&firewall)?;
        Ok(Self { firewall, programs })
    }

    /// The firewall, or the baseline `name`.
    fn program(&mut self, name: &'static str) -> anyhow::Result<&mut Xdp> {
        if name == firewall_common::program_names::FIREWALL {
            Ok(self.firewall.program_mut(name)?)
        } else {
            self.programs.program_mut(name)
        }
    }
}

/// One test run of `frame` through `program`: (mean ns per run, return value of the last run).
fn ns_per_packet(
    beside: &mut Beside,
    program: &'static str,
    frame: &[u8],
    repeat: u32,
) -> anyhow::Result<(f64, u32)> {
    let program = beside.program(program)?;
    let result = program.test_run(TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..TestRunOptions::default()
    })?;
    // The kernel reports the mean duration of one run over `repeat` runs.
    Ok((result.duration.as_nanos() as f64, result.return_value))
}

pub(super) struct Measurement {
    pub(super) case: String,
    pub(super) median: f64,
    pub(super) min: f64,
    pub(super) max: f64,
    pub(super) ratio: f64,
    pub(super) ratio_min: f64,
    pub(super) ratio_max: f64,
    pub(super) lookup_ratio: f64,
}

/// (min, max) of `values`.
pub(super) fn spread(values: &[f64]) -> (f64, f64) {
    (
        values.iter().copied().fold(f64::MAX, f64::min),
        values.iter().copied().fold(0.0, f64::max),
    )
}

/// The empty and one-lookup reference runs of a whole benchmark, for the report's header.
#[derive(Default)]
pub(super) struct References {
    pub(super) floors: Vec<f64>,
    pub(super) lookups: Vec<f64>,
}

/// Measures `frame` through the firewall `opts.runs` times, each run next to the empty and the
/// one-lookup programs, checks that the firewall returns `verdict`, and summarises the runs.
pub(super) fn measure(
    beside: &mut Beside,
    case: &str,
    frame: &[u8],
    verdict: u32,
    opts: &report::BenchOptions,
    references: &mut References,
) -> anyhow::Result<Measurement> {
    let (mut cost, mut ratios, mut lookup_ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..opts.runs {
        let (floor, _) = ns_per_packet(beside, program_names::EMPTY, frame, opts.repeat)?;
        let (lookup, _) = ns_per_packet(beside, program_names::ONE_LOOKUP, frame, opts.repeat)?;
        let (ns, retval) = ns_per_packet(
            beside,
            firewall_common::program_names::FIREWALL,
            frame,
            opts.repeat,
        )?;
        if retval != verdict {
            bail!("{case}: apifw returned {retval}, expected {verdict}");
        }
        references.floors.push(floor);
        references.lookups.push(lookup);
        cost.push(ns);
        ratios.push(ns / floor.max(0.5));
        lookup_ratios.push(ns / lookup.max(0.5));
    }
    let (min, max) = spread(&cost);
    let (ratio_min, ratio_max) = spread(&ratios);
    Ok(Measurement {
        case: case.to_owned(),
        median: median(&mut cost),
        min,
        max,
        ratio: median(&mut ratios),
        ratio_min,
        ratio_max,
        lookup_ratio: median(&mut lookup_ratios),
    })
}

/// A row's summary: `(row label, measurement)` lines of a Markdown table with the spread and
/// the ratios; `lookup` adds the one-lookup column.
pub(super) fn table_row(
    md: &mut String,
    first: &[String],
    m: &Measurement,
    lookup: bool,
) -> std::fmt::Result {
    for cell in first {
        write!(md, "| {cell} ")?;
    }
    write!(
        md,
        "| {} | {:.1} | {:.1}..{:.1} | {:.2} | {:.2}..{:.2} |",
        m.case, m.median, m.min, m.max, m.ratio, m.ratio_min, m.ratio_max
    )?;
    if lookup {
        write!(md, " {:.2} |", m.lookup_ratio)?;
    }
    writeln!(md)
}

/// "met" or "not met".
pub(super) fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "not met" }
}
